//! Which weights a set of files holds, as one SHA-256: what the prompt cache keys its entries
//! on, so that changed weight files never serve stale embeddings. Hashing 9 GB of T5 takes
//! seconds, so each file's hash is remembered in the cache (`identity/`) under its path,
//! size, modification time, inode and device, and computed again only when one of them
//! changes.

use crate::{Error, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// What a remembered hash is valid for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    path: PathBuf,
    size: u64,
    modified_ns: i128,
    inode: u64,
    device: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Remembered {
    stamp: Stamp,
    sha256: String,
}

fn stamp(path: &Path) -> Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let path = path.canonicalize().map_err(|e| Error::io(path, e))?;
    let m = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
    Ok(Stamp {
        size: m.len(),
        modified_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        inode: m.ino(),
        device: m.dev(),
        path,
    })
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file's bytes, read in large blocks.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// One file's hash, from `memo` (a folder of remembered hashes) when its stamp still matches,
/// else computed and remembered there.
fn file_hash(path: &Path, memo: Option<&Path>) -> Result<String> {
    let stamp = stamp(path)?;
    let entry = memo.map(|dir| {
        let name = hex(&Sha256::digest(stamp.path.to_string_lossy().as_bytes()));
        dir.join(format!("{name}.json"))
    });
    if let Some(entry) = &entry {
        let remembered = std::fs::read(entry)
            .ok()
            .and_then(|b| serde_json::from_slice::<Remembered>(&b).ok());
        if let Some(r) = remembered.filter(|r| r.stamp == stamp) {
            return Ok(r.sha256);
        }
    }
    let sha256 = sha256_file(path)?;
    // Stat again: a file that changed while it was read is not remembered.
    if let (Some(entry), true) = (&entry, self::stamp(path)? == stamp) {
        let r = Remembered {
            stamp,
            sha256: sha256.clone(),
        };
        let bytes =
            serde_json::to_vec(&r).map_err(|e| Error::invalid("identity", e.to_string()))?;
        if let Err(e) = crate::output::atomic::write(entry, &bytes) {
            log::warn!("cannot remember the hash of {}: {e}", path.display());
        }
    }
    Ok(sha256)
}

/// The identity of the weights in `files`: SHA-256 over each file's name and SHA-256, in name
/// order (the folder they are in does not count). `memo` remembers per-file hashes.
pub fn weights_identity(files: &[PathBuf], memo: Option<&Path>) -> Result<String> {
    let mut hashes: Vec<(String, String)> = files
        .par_iter()
        .map(|f| {
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok((name, file_hash(f, memo)?))
        })
        .collect::<Result<_>>()?;
    hashes.sort();
    let mut hasher = Sha256::new();
    for (name, hash) in hashes {
        hasher.update(format!("{name} {hash}\n").as_bytes());
    }
    Ok(hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest_and_remembered_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let memo = dir.path().join("memo");
        std::fs::create_dir(&memo).unwrap();
        let f = dir.path().join("w.bin");
        std::fs::write(&f, b"abc").unwrap();
        assert_eq!(
            sha256_file(&f).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let first = weights_identity(std::slice::from_ref(&f), Some(&memo)).unwrap();
        assert_eq!(std::fs::read_dir(&memo).unwrap().count(), 1);
        assert_eq!(
            weights_identity(std::slice::from_ref(&f), Some(&memo)).unwrap(),
            first
        );
        // New bytes (and so a new size and time) give a new identity, memo or not.
        std::fs::write(&f, b"abcd").unwrap();
        let changed = weights_identity(std::slice::from_ref(&f), Some(&memo)).unwrap();
        assert_ne!(changed, first);
        assert_eq!(
            changed,
            weights_identity(std::slice::from_ref(&f), None).unwrap()
        );
        // A corrupt memo entry is recomputed, not trusted.
        for e in std::fs::read_dir(&memo).unwrap() {
            std::fs::write(e.unwrap().path(), b"{not json").unwrap();
        }
        assert_eq!(
            weights_identity(std::slice::from_ref(&f), Some(&memo)).unwrap(),
            changed
        );
        let err = weights_identity(&[dir.path().join("none")], None).unwrap_err();
        assert!(err.to_string().contains("none"), "{err}");
    }
}
