//! Item 10: a config naming a component class ace does not implement, and a checkpoint with
//! no tensors, are errors naming the field or file and what was expected.

use crate::common::*;

/// The tiny config with absolute weight paths, `edit` applied to its text.
fn config(
    dir: &std::path::Path,
    name: &str,
    edit: impl Fn(String) -> String,
) -> std::path::PathBuf {
    let models = tiny().join("model/models");
    let text = std::fs::read_to_string(tiny_config())
        .unwrap()
        .replace(": models/", &format!(": {}/", models.display()));
    let path = dir.join(name);
    std::fs::write(&path, edit(text)).unwrap();
    path
}

#[test]
fn unknown_component_names_and_empty_checkpoints_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (from, to, field) in [
        ("NAME: LdmACE", "NAME: LdmACEPlus", "MODEL.NAME"),
        ("NAME: DiTACE", "NAME: DiTX", "MODEL.DIFFUSION_MODEL.NAME"),
        (
            "NAME: ACETextEmbedder",
            "NAME: T5Embedder",
            "MODEL.COND_STAGE_MODEL.NAME",
        ),
    ] {
        let path = config(dir.path(), "named.yaml", |t| t.replace(from, to));
        let run = code(
            ace()
                .args(["generate", "--instruction", "x", "--dry-run", "--config"])
                .arg(&path),
            2,
        );
        let expected = from.trim_start_matches("NAME: ");
        one_line_naming(&run, &["named.yaml", field, expected]);
    }

    let empty = dir.path().join("empty.safetensors");
    let mut bytes = 2u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&empty, bytes).unwrap();
    let dit = tiny().join("model/models/dit/ace_tiny.pth");
    let path = config(dir.path(), "empty.yaml", |t| {
        t.replace(&dit.display().to_string(), &empty.display().to_string())
    });
    let run = code(ace().args(["model", "info", "--config"]).arg(&path), 2);
    one_line_naming(&run, &["empty.safetensors", "no tensors", "dit"]);
}
