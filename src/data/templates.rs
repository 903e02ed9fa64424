//! Instruction templates per task (`presets/tasks.yaml`, built into the binary): several
//! phrasings per task in the paper's template style, with `{slot}`s filled from a pair's
//! metadata. `{image}`, `{image1}`, ... are ACE's references to the input images and stay as
//! they are.

use crate::{Error, Result};
use rand::Rng;
use std::collections::BTreeMap;

/// The templates shipped with `ace`.
pub const BUILTIN: &str = include_str!("../../presets/tasks.yaml");

/// Task name -> phrasings.
#[derive(Debug, Clone)]
pub struct Templates {
    tasks: BTreeMap<String, Vec<String>>,
}

impl Templates {
    /// The built-in templates.
    pub fn builtin() -> Result<Self> {
        Self::parse(BUILTIN, std::path::Path::new("presets/tasks.yaml"))
    }

    /// Parses a YAML map of task name to a non-empty list of phrasings; `path` names the source
    /// in errors.
    pub fn parse(text: &str, path: &std::path::Path) -> Result<Self> {
        let bad = |message: String| Error::Config {
            path: path.to_path_buf(),
            message,
        };
        let tasks: BTreeMap<String, Vec<String>> =
            serde_yaml::from_str(text).map_err(|e| bad(e.to_string()))?;
        if let Some((task, _)) = tasks.iter().find(|(_, p)| p.is_empty()) {
            return Err(bad(format!("task '{task}' has no phrasing")));
        }
        Ok(Templates { tasks })
    }

    /// The task names, sorted.
    pub fn tasks(&self) -> impl Iterator<Item = &str> {
        self.tasks.keys().map(String::as_str)
    }

    /// The phrasings of `task`; an unknown task is an error listing the known ones.
    pub fn phrasings(&self, task: &str) -> Result<&[String]> {
        self.tasks.get(task).map(Vec::as_slice).ok_or_else(|| {
            Error::invalid(
                "task",
                format!(
                    "'{task}' (known: {})",
                    self.tasks().collect::<Vec<_>>().join(", ")
                ),
            )
        })
    }

    /// A phrasing of `task` drawn at random among those whose slots `slots` all fill, filled.
    /// `Ok(None)` when no phrasing can be filled; the error for an unknown task.
    pub fn render(
        &self,
        task: &str,
        slots: &BTreeMap<String, String>,
        rng: &mut impl Rng,
    ) -> Result<Option<String>> {
        self.draw(task, slots, rng, |p| {
            slot_names(p).iter().all(|s| slots.contains_key(*s))
        })
    }

    /// A phrasing of `task` that uses every slot of `slots` and no other, drawn at random,
    /// filled: what a command wants when the user's own words (a caption, an object name) must
    /// reach the instruction. `Ok(None)` when no phrasing has exactly these slots.
    pub fn render_exact(
        &self,
        task: &str,
        slots: &BTreeMap<String, String>,
        rng: &mut impl Rng,
    ) -> Result<Option<String>> {
        self.draw(task, slots, rng, |p| {
            let mut names = slot_names(p);
            names.sort_unstable();
            names.dedup();
            names.len() == slots.len() && names.iter().all(|s| slots.contains_key(*s))
        })
    }

    /// A phrasing of `task` that `usable` accepts, drawn at random, filled.
    fn draw(
        &self,
        task: &str,
        slots: &BTreeMap<String, String>,
        rng: &mut impl Rng,
        usable: impl Fn(&str) -> bool,
    ) -> Result<Option<String>> {
        let usable: Vec<&String> = self.phrasings(task)?.iter().filter(|p| usable(p)).collect();
        if usable.is_empty() {
            return Ok(None);
        }
        let phrasing = usable[rng.gen_range(0..usable.len())];
        Ok(Some(fill(phrasing, slots)))
    }
}

/// Whether a slot name is an image reference (`image`, `image1`, ...), kept verbatim.
fn is_image_ref(name: &str) -> bool {
    name.strip_prefix("image")
        .is_some_and(|d| d.chars().all(|c| c.is_ascii_digit()))
}

/// The `{slot}` names of a phrasing other than image references.
pub fn slot_names(phrasing: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = phrasing;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let name = &rest[open + 1..open + close];
        if !is_image_ref(name) {
            names.push(name);
        }
        rest = &rest[open + close + 1..];
    }
    names
}

/// Replaces every `{slot}` found in `slots` by its value (image references stay).
fn fill(phrasing: &str, slots: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(phrasing.len());
    let mut rest = phrasing;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let name = &rest[open + 1..open + close];
        out.push_str(&rest[..open]);
        match slots.get(name) {
            Some(v) if !is_image_ref(name) => out.push_str(v.trim()),
            _ => out.push_str(&rest[open..=open + close]),
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn builtin_covers_the_paper_tasks() {
        let t = Templates::builtin().unwrap();
        for task in [
            "analysis.canny",
            "analysis.gray",
            "analysis.mosaic",
            "analysis.depth",
            "analysis.pose",
            "control.canny",
            "control.segment",
            "inpainting",
            "outpainting",
            "edit.style",
            "edit.semantic",
            "object.add",
            "object.remove",
            "text.render",
            "text.remove",
            "layer.decouple",
            "layer.fuse",
            "reference",
            "face",
            "tryon",
        ] {
            assert!(t.phrasings(task).unwrap().len() >= 3, "{task}");
        }
        assert!(t
            .phrasings("nope")
            .unwrap_err()
            .to_string()
            .contains("analysis.canny"));
    }

    #[test]
    fn no_phrasing_doubles_an_article_or_a_place() {
        let t = Templates::builtin().unwrap();
        for task in t.tasks() {
            for p in t.phrasings(task).unwrap() {
                for slot in slot_names(p) {
                    for article in ["the ", "a ", "an "] {
                        let doubled = format!("{article}{{{slot}}}");
                        assert!(!p.to_lowercase().contains(&doubled), "{task}: {p}");
                    }
                }
                assert!(
                    !p.contains("{looks} on") && !p.contains("{looks} to"),
                    "{task}: {p}"
                );
            }
        }
    }

    #[test]
    fn slots_fill_and_missing_slots_exclude_a_phrasing() {
        let t = Templates::parse(
            "object.add:\n  - 'Add {object_name} to {image}.'\n  - 'Add something to {image1}.'\n",
            std::path::Path::new("t.yaml"),
        )
        .unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let mut slots = BTreeMap::new();
        for _ in 0..10 {
            assert_eq!(
                t.render("object.add", &slots, &mut rng).unwrap().unwrap(),
                "Add something to {image1}."
            );
        }
        slots.insert("object_name".to_string(), "a red kite".to_string());
        let seen: std::collections::BTreeSet<String> = (0..40)
            .map(|_| t.render("object.add", &slots, &mut rng).unwrap().unwrap())
            .collect();
        assert!(seen.contains("Add a red kite to {image}."), "{seen:?}");
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn exact_rendering_uses_every_given_slot() {
        let t = Templates::parse(
            "inpainting:\n  - 'Fill {image}.'\n  - 'Fill {image} with {caption}.'\n",
            std::path::Path::new("t.yaml"),
        )
        .unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut slots = BTreeMap::new();
        for _ in 0..10 {
            assert_eq!(
                t.render_exact("inpainting", &slots, &mut rng)
                    .unwrap()
                    .unwrap(),
                "Fill {image}."
            );
        }
        slots.insert("caption".to_string(), "roses".to_string());
        for _ in 0..10 {
            assert_eq!(
                t.render_exact("inpainting", &slots, &mut rng)
                    .unwrap()
                    .unwrap(),
                "Fill {image} with roses."
            );
        }
        slots.insert("text".to_string(), "x".to_string());
        assert!(t
            .render_exact("inpainting", &slots, &mut rng)
            .unwrap()
            .is_none());
    }

    #[test]
    fn empty_task_is_a_config_error() {
        let e = Templates::parse("inpainting: []\n", std::path::Path::new("x.yaml")).unwrap_err();
        assert!(e.to_string().contains("x.yaml") && e.to_string().contains("inpainting"));
    }
}
