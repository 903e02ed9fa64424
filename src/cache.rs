//! ace's own cache folder: `ACE_CACHE_DIR`, else `$XDG_CACHE_HOME/ace`, else `~/.cache/ace`.
//! What is kept there can always be made again: prompt embeddings (`prompts/`), the
//! identities of weight files (`identity/`), the Emu Edit test set's extracted inputs
//! (`emu-edit/`), the full-size benches' random snapshot (`bench/`). `ace cache info` and
//! `ace cache clear` show and empty it.

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// The parts of the cache, by folder name, with what each holds.
pub const SECTIONS: &[(&str, &str)] = &[
    ("prompts", "T5 prompt embeddings"),
    ("identity", "identities of weight files"),
    ("emu-edit", "Emu Edit inputs extracted from parquet"),
    ("bench", "the full-size benches' random model snapshot"),
];

/// The cache folder (not created).
pub fn root() -> Result<PathBuf> {
    let env = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("ACE_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("ace")))
        .or_else(|| env("HOME").map(|d| d.join(".cache/ace")))
        .ok_or_else(|| Error::invalid("cache", "set ACE_CACHE_DIR: there is no HOME to hold it"))
}

/// Files and bytes under a folder (recursively); a missing folder holds nothing.
pub fn usage(dir: &Path) -> (u64, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    entries
        .filter_map(|e| e.ok())
        .fold((0, 0), |(files, bytes), e| match e.file_type() {
            Ok(t) if t.is_dir() => {
                let (f, b) = usage(&e.path());
                (files + f, bytes + b)
            }
            Ok(_) => (files + 1, bytes + e.metadata().map_or(0, |m| m.len())),
            Err(_) => (files, bytes),
        })
}
