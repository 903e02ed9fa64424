//! Building training pairs the way the ACE paper does (appendices B and E): random masks for
//! repainting, pair mining over image embeddings (k-means, then union-find over pairs in a
//! similarity band), template instructions per task, and low-level analysis / controllable
//! generation pairs made with the analysis operations.
//!
//! # Dataset format
//!
//! A dataset is a folder holding `data.jsonl`, one JSON object per training pair:
//!
//! ```json
//! {"id": "inpainting-0000001", "task": "inpainting", "instruction": "Fill in the masked region of {image}.",
//!  "inputs": ["images/0001.png"], "masks": ["masks/0001.png"], "target": "images/0001.png",
//!  "caption": "a red car in the snow"}
//! ```
//!
//! - `inputs`: the input images (ACE's edit images), paths relative to the folder;
//! - `masks`: one entry per input, a mask path (255 = the region to edit) or `null` (no mask:
//!   the whole image);
//! - `target`: the image to produce, relative to the folder;
//! - `instruction`: the prompt; `{image}`, `{image1}`, ... refer to the inputs as in ACE;
//! - `caption` (optional): a description of the target.
//!
//! Pair files written by `ace data pairs` are JSON lines too: `{"set": K, "members": [ids]}`
//! for each disjoint set of two or more, `{"a": id, "b": id, "sim": S}` for each candidate pair.

pub mod dataset;
pub mod embed;
pub mod embeddings;
pub mod instructions;
pub mod kmeans;
pub mod lowlevel;
pub mod masks;
pub mod pairs;
pub mod templates;
pub mod unionfind;

/// Whether `path` is a finished JSON-lines file: it exists, ends with a newline and every line
/// parses (outputs are written atomically, so this only fails on foreign or damaged files).
pub fn jsonl_complete(path: &std::path::Path) -> bool {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            text.ends_with('\n')
                && text
                    .lines()
                    .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
        }
        Err(_) => false,
    }
}

/// Whether `path` is an image that decodes at `width` x `height` (a restart keeps it).
pub fn image_complete(path: &std::path::Path, width: u32, height: u32) -> bool {
    path.is_file()
        && crate::imageio::load(path).is_ok_and(|m| (m.width(), m.height()) == (width, height))
}
