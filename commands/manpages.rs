//! The man pages in `man/` are generated from the clap definition (clap_mangen), one page for
//! `ace` and one for every subcommand at any depth. This test fails when they are stale;
//! `ACE_UPDATE_MAN=1 cargo test --bin ace man_pages` rewrites them.

#[cfg(test)]
mod tests {
    use crate::cli::Cli;
    use clap::CommandFactory;
    use std::collections::BTreeMap;
    use std::path::Path;

    /// Every page as (file name, roff text).
    fn render() -> BTreeMap<String, Vec<u8>> {
        let mut cmd = Cli::command();
        cmd.build();
        let mut pages = BTreeMap::new();
        add_pages(&cmd, &mut pages);
        pages
    }

    /// Renders `cmd` and its subcommands; after `build`, clap names each subcommand
    /// `ace-<sub>[-<subsub>]`, which is also the page's file name.
    fn add_pages(cmd: &clap::Command, pages: &mut BTreeMap<String, Vec<u8>>) {
        let name = cmd.get_display_name().unwrap_or(cmd.get_name()).to_string();
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .render(&mut buf)
            .expect("render man page");
        pages.insert(format!("{name}.1"), buf);
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            add_pages(sub, pages);
        }
    }

    #[test]
    fn man_pages_are_current() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
        let pages = render();
        if std::env::var_os("ACE_UPDATE_MAN").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            for old in std::fs::read_dir(&dir).unwrap().flatten() {
                if old.path().extension().is_some_and(|e| e == "1") {
                    std::fs::remove_file(old.path()).unwrap();
                }
            }
            for (file, text) in &pages {
                std::fs::write(dir.join(file), text).unwrap();
            }
            return;
        }
        let stale = "man/ is stale: run `ACE_UPDATE_MAN=1 cargo test --bin ace man_pages`";
        for (file, text) in &pages {
            let on_disk = std::fs::read(dir.join(file)).unwrap_or_default();
            assert!(on_disk == *text, "{stale} ({file} differs or is missing)");
        }
        let on_disk: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".1"))
                    .collect()
            })
            .unwrap_or_default();
        for file in on_disk {
            assert!(
                pages.contains_key(&file),
                "{stale} ({file} has no subcommand)"
            );
        }
    }
}
