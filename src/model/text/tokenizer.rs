//! The T5 tokenizer as ACE calls it: `tokenizer.json` through the `tokenizers` crate, or, when a
//! folder holds only `spiece.model`, the same tokenizer built from the SentencePiece model. Each
//! prompt becomes exactly `length` ids: truncated so that `</s>` still closes it (a long prompt
//! keeps its first `length - 1` pieces), then padded with id 0; the attention mask marks the real
//! tokens.

use super::spiece::SentencePieceModel;
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

/// T5's padding id.
pub const PAD_ID: u32 = 0;
/// The number of sentinel tokens `<extra_id_N>` of a T5 tokenizer when its config does not say.
const DEFAULT_EXTRA_IDS: usize = 100;

/// Token ids and attention mask of one prompt, both `length` long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    pub mask: Vec<u32>,
}

impl Tokens {
    /// The number of real tokens (the attention-mask sum, `</s>` included).
    pub fn len(&self) -> usize {
        self.mask.iter().filter(|&&m| m != 0).count()
    }

    /// Whether no token is real (never the case for a T5 prompt, which always has `</s>`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ids of the real tokens.
    pub fn real_ids(&self) -> &[u32] {
        &self.ids[..self.len()]
    }
}

/// A T5 tokenizer that truncates and pads to a fixed length.
#[derive(Clone)]
pub struct T5Tokenizer {
    inner: Tokenizer,
    length: usize,
    source: PathBuf,
}

impl T5Tokenizer {
    /// Loads the tokenizer of folder `dir` (`tokenizer.json`, else `spiece.model`); `length` is
    /// the fixed sequence length (`LENGTH` of the model YAML).
    pub fn from_dir(dir: &Path, length: usize) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let spiece = dir.join("spiece.model");
        if json.is_file() {
            Self::from_tokenizer_json(&json, length)
        } else if spiece.is_file() {
            Self::from_spiece(&spiece, extra_ids(dir)?, length)
        } else {
            Err(Error::Model {
                path: dir.to_path_buf(),
                message: "tokenizer folder holds neither tokenizer.json nor spiece.model".into(),
            })
        }
    }

    /// Loads a `tokenizer.json`.
    pub fn from_tokenizer_json(path: &Path, length: usize) -> Result<Self> {
        let inner = Tokenizer::from_file(path).map_err(|e| Error::Model {
            path: path.to_path_buf(),
            message: format!("cannot read tokenizer: {e}"),
        })?;
        Self::with_length(inner, length, path)
    }

    /// Builds the tokenizer from a SentencePiece `spiece.model` with `extra_ids` sentinels.
    pub fn from_spiece(path: &Path, extra_ids: usize, length: usize) -> Result<Self> {
        let inner = SentencePieceModel::read(path)?
            .t5_tokenizer(extra_ids)
            .map_err(|message| Error::Model {
                path: path.to_path_buf(),
                message,
            })?;
        Self::with_length(inner, length, path)
    }

    fn with_length(mut inner: Tokenizer, length: usize, source: &Path) -> Result<Self> {
        if length == 0 {
            return Err(Error::invalid("text LENGTH", "must be at least 1"));
        }
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| Error::invalid("text LENGTH", e.to_string()))?;
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id: PAD_ID,
            pad_type_id: 0,
            pad_token: "<pad>".into(),
        }));
        Ok(T5Tokenizer {
            inner,
            length,
            source: source.to_path_buf(),
        })
    }

    /// The fixed sequence length.
    pub fn length(&self) -> usize {
        self.length
    }

    /// Tokenises one (already cleaned) prompt.
    pub fn encode(&self, text: &str) -> Result<Tokens> {
        let encoding = self.inner.encode(text, true).map_err(|e| Error::Model {
            path: self.source.clone(),
            message: format!("cannot tokenise {text:?}: {e}"),
        })?;
        Ok(Tokens {
            ids: encoding.get_ids().to_vec(),
            mask: encoding.get_attention_mask().to_vec(),
        })
    }
}

/// `extra_ids` of the folder's `tokenizer_config.json`, else T5's 100. A config that asks for
/// the non-legacy T5 tokenisation (`"legacy": false`) is refused: only the legacy scheme, which
/// the T5-v1.1 tokenizers use, is built here.
fn extra_ids(dir: &Path) -> Result<usize> {
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(DEFAULT_EXTRA_IDS);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Config {
        path: path.clone(),
        message: format!("invalid JSON: {e}"),
    })?;
    if json.get("legacy") == Some(&serde_json::Value::Bool(false)) {
        return Err(Error::Config {
            path,
            message: "\"legacy\": false T5 tokenisation is not supported without tokenizer.json"
                .into(),
        });
    }
    match json.get("extra_ids") {
        None => Ok(DEFAULT_EXTRA_IDS),
        Some(v) => v.as_u64().map(|n| n as usize).ok_or_else(|| Error::Config {
            path,
            message: format!("extra_ids is {v}, not a count"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ace-tiny/model/models/tokenizer/t5-tiny")
    }

    const STRINGS: &[&str] = &[
        "make the boy cry, his eyes filled with tears",
        "{image}",
        "Adapt {image} into a mosaic.",
        "",
        "{image1} {image9} and {image10}",
        "Let {image} be in the style of {image2}, with a \u{2018}quote\u{2019} & caf\u{e9}",
        "UPPER lower 12345 \u{ff21}\u{ff22} \u{fb01}",
        "</s> <pad> <extra_id_0> <extra_id_99> literal specials",
        "tabs\tand\nnew lines   and  spaces",
        "\u{4e2d}\u{6587} emoji \u{1f600} \u{e9}\u{301}",
        "a very long prompt that goes on and on, with many words so that it needs truncation at \
         twenty four tokens for sure, and then some more words to be certain",
    ];

    #[test]
    fn spiece_model_tokenizes_like_tokenizer_json() {
        let dir = fixture_dir();
        let json = T5Tokenizer::from_tokenizer_json(&dir.join("tokenizer.json"), 24).unwrap();
        let spm = T5Tokenizer::from_spiece(&dir.join("spiece.model"), 100, 24).unwrap();
        for text in STRINGS {
            assert_eq!(
                json.encode(text).unwrap(),
                spm.encode(text).unwrap(),
                "{text:?}"
            );
        }
        let long = T5Tokenizer::from_tokenizer_json(&dir.join("tokenizer.json"), 512).unwrap();
        let long_spm = T5Tokenizer::from_spiece(&dir.join("spiece.model"), 100, 512).unwrap();
        for text in STRINGS {
            assert_eq!(
                long.encode(text).unwrap(),
                long_spm.encode(text).unwrap(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn truncation_keeps_closing_eos_and_pads_with_zero() {
        let tok = T5Tokenizer::from_dir(&fixture_dir(), 6).unwrap();
        let t = tok.encode(STRINGS[10]).unwrap();
        assert_eq!(t.ids.len(), 6);
        assert_eq!(t.mask, vec![1; 6]);
        assert_eq!(t.ids[5], 1, "the last id is </s>");
        let full = T5Tokenizer::from_dir(&fixture_dir(), 512).unwrap();
        let f = full.encode(STRINGS[10]).unwrap();
        assert_eq!(&t.ids[..5], &f.ids[..5]);
        let e = tok.encode("").unwrap();
        assert_eq!(e.ids, vec![1, 0, 0, 0, 0, 0]);
        assert_eq!(e.mask, vec![1, 0, 0, 0, 0, 0]);
        assert_eq!(e.len(), 1);
        assert_eq!(e.real_ids(), &[1]);
    }

    #[test]
    fn folder_without_tokenizer_json_uses_spiece_model() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            fixture_dir().join("spiece.model"),
            dir.path().join("spiece.model"),
        )
        .unwrap();
        let spm = T5Tokenizer::from_dir(dir.path(), 24).unwrap();
        let json = T5Tokenizer::from_dir(&fixture_dir(), 24).unwrap();
        let text = "{image} <extra_id_0> make it red";
        assert_eq!(spm.encode(text).unwrap(), json.encode(text).unwrap());
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"legacy": false}"#,
        )
        .unwrap();
        let err = T5Tokenizer::from_dir(dir.path(), 24)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("tokenizer_config.json"), "{err}");
    }

    #[test]
    fn missing_files_are_named() {
        let err = T5Tokenizer::from_dir(Path::new("/nonexistent/tok"), 24)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("/nonexistent/tok"), "{err}");
        assert!(T5Tokenizer::from_dir(&fixture_dir(), 0).is_err());
    }
}
