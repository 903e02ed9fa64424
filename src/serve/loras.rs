//! The LoRA adapters a request may ask for. `ace serve --lora` folds adapters into the DiT for
//! every request that names none; `--lora-dir DIR` lets a request name others (`"lora":
//! ["style:0.8"]`) by their file or folder name inside DIR, never by a path, so that no request
//! reaches a file outside it. The worker folds a job's adapters in before it runs (a reload of
//! the DiT when they differ from the last job's).

use super::error::{ApiError, ApiResult};
use crate::model::lora::LoraSpec;
use std::path::{Component, Path, PathBuf};

/// The adapters of a server: its default, and the folder requests may choose from.
#[derive(Debug, Clone, Default)]
pub struct LoraLibrary {
    /// Adapters for requests that name none (`--lora`).
    pub default: Vec<LoraSpec>,
    /// Folder whose adapters requests may name (`--lora-dir`).
    pub dir: Option<PathBuf>,
}

/// Whether `name` is one plain file or folder name (no separator, not `.` or `..`).
fn is_plain_name(name: &Path) -> bool {
    let mut parts = name.components();
    matches!(
        (parts.next(), parts.next()),
        (Some(Component::Normal(_)), None)
    )
}

impl LoraLibrary {
    /// The adapters of a request: `asked` resolved inside the folder, or the default when the
    /// request names none. An empty list asks for none.
    pub fn resolve(&self, asked: Option<&[LoraSpec]>) -> ApiResult<Vec<(PathBuf, f64)>> {
        let Some(asked) = asked else {
            return Ok(LoraSpec::list(&self.default));
        };
        if asked.is_empty() {
            return Ok(Vec::new());
        }
        let Some(dir) = &self.dir else {
            return Err(ApiError::bad_param(
                "lora",
                "this server takes no LoRA by request (it was started without --lora-dir)",
            ));
        };
        let root = dir
            .canonicalize()
            .map_err(|e| ApiError::internal(format!("LoRA folder {}: {e}", dir.display())))?;
        asked
            .iter()
            .map(|spec| {
                let name = spec.path.display().to_string();
                let unknown =
                    || ApiError::bad_param("lora", format!("'{name}' is not in the LoRA folder"));
                if !is_plain_name(&spec.path) {
                    return Err(unknown());
                }
                let path = root
                    .join(&spec.path)
                    .canonicalize()
                    .map_err(|_| unknown())?;
                // A link inside the folder may not lead out of it.
                if path.parent() != Some(root.as_path()) {
                    return Err(unknown());
                }
                Ok((path, spec.scale))
            })
            .collect()
    }

    /// The names requests may use, sorted.
    pub fn available(&self) -> Vec<String> {
        let Some(dir) = &self.dir else {
            return Vec::new();
        };
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        names
    }
}

/// Reads the `lora` of a JSON request: a list of `NAME[:SCALE]`, or one string of them
/// separated by commas.
pub fn deserialize<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<LoraSpec>>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Given {
        One(String),
        Many(Vec<String>),
    }
    let items = match <Option<Given> as serde::Deserialize>::deserialize(d)? {
        None => return Ok(None),
        Some(Given::One(s)) => split(&s),
        Some(Given::Many(v)) => v,
    };
    items
        .iter()
        .map(|s| s.trim().parse().map_err(serde::de::Error::custom))
        .collect::<Result<_, _>>()
        .map(Some)
}

/// `NAME[:SCALE]` items of a comma-separated list; `none` is the empty list.
pub fn split(list: &str) -> Vec<String> {
    if list.trim() == "none" {
        return Vec::new();
    }
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_inside_the_folder_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("loras");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("style.safetensors"), b"x").unwrap();
        std::fs::write(tmp.path().join("secret.safetensors"), b"x").unwrap();
        let library = LoraLibrary {
            default: vec!["/d.safetensors:0.5".parse().unwrap()],
            dir: Some(dir.clone()),
        };
        let spec = |s: &str| -> LoraSpec { s.parse().unwrap() };
        assert_eq!(
            library.resolve(None).unwrap(),
            vec![(PathBuf::from("/d.safetensors"), 0.5)]
        );
        assert!(library.resolve(Some(&[])).unwrap().is_empty());
        let got = library
            .resolve(Some(&[spec("style.safetensors:0.8")]))
            .unwrap();
        assert_eq!(got[0].1, 0.8);
        assert!(got[0].0.ends_with("loras/style.safetensors"));
        for bad in [
            "../secret.safetensors",
            "missing.safetensors",
            "/etc/passwd",
            ".",
        ] {
            let e = library.resolve(Some(&[spec(bad)])).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("lora"), "{bad}");
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(
                tmp.path().join("secret.safetensors"),
                dir.join("link.safetensors"),
            )
            .unwrap();
            assert!(library.resolve(Some(&[spec("link.safetensors")])).is_err());
        }
        let closed = LoraLibrary::default();
        assert!(closed.resolve(Some(&[spec("style.safetensors")])).is_err());
        assert!(library
            .available()
            .contains(&"style.safetensors".to_string()));
    }

    #[test]
    fn lists_parse_from_json_and_text() {
        #[derive(serde::Deserialize)]
        struct S {
            #[serde(default, deserialize_with = "deserialize")]
            lora: Option<Vec<LoraSpec>>,
        }
        let s: S = serde_json::from_str(r#"{"lora": ["a:0.5", "b"]}"#).unwrap();
        assert_eq!(s.lora.unwrap()[0].scale, 0.5);
        let s: S = serde_json::from_str(r#"{"lora": "a, b:2"}"#).unwrap();
        assert_eq!(s.lora.unwrap()[1].scale, 2.0);
        let s: S = serde_json::from_str(r#"{"lora": "none"}"#).unwrap();
        assert!(s.lora.unwrap().is_empty());
        let s: S = serde_json::from_str(r#"{}"#).unwrap();
        assert!(s.lora.is_none());
        assert!(serde_json::from_str::<S>(r#"{"lora": "a:inf"}"#).is_err());
    }
}
