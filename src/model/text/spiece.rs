//! The T5 tokenizer built from a bare SentencePiece model (`spiece.model`), for release folders
//! that lack `tokenizer.json`. It reads the `ModelProto` protobuf directly (pieces with scores
//! and types, the trainer's unknown id and byte fallback, the normaliser's precompiled
//! character map) and assembles what Hugging Face's T5 converter builds from it: a Unigram
//! model whose vocabulary is the pieces followed by `<extra_id_N>` for N from `extra_ids - 1`
//! down to 0, the `Precompiled` normaliser, `WhitespaceSplit` then `Metaspace` pre-tokenisation,
//! and the template `$A </s>`.

use crate::{Error, Result};
use std::path::Path;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::Precompiled;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

/// The SentencePiece piece types (`SentencePiece.Type`) that matter here.
const TYPE_UNKNOWN: u64 = 2;
const TYPE_CONTROL: u64 = 3;
const TYPE_USER_DEFINED: u64 = 4;
/// `TrainerSpec.ModelType.UNIGRAM`.
const MODEL_UNIGRAM: u64 = 1;

/// One vocabulary entry of a SentencePiece model.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: u64,
}

/// The fields of a SentencePiece `ModelProto` that the T5 tokenizer needs.
#[derive(Debug, Clone, PartialEq)]
pub struct SentencePieceModel {
    pub pieces: Vec<Piece>,
    pub model_type: u64,
    pub unk_id: usize,
    pub byte_fallback: bool,
    pub precompiled_charsmap: Vec<u8>,
    pub add_dummy_prefix: bool,
}

impl SentencePieceModel {
    /// Reads `spiece.model`.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&bytes).map_err(|message| Error::Model {
            path: path.to_path_buf(),
            message: format!("not a SentencePiece model: {message}"),
        })
    }

    /// Parses the protobuf bytes of a `ModelProto`.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let mut model = SentencePieceModel {
            pieces: Vec::new(),
            model_type: MODEL_UNIGRAM,
            unk_id: 0,
            byte_fallback: false,
            precompiled_charsmap: Vec::new(),
            add_dummy_prefix: true,
        };
        for field in Fields::new(bytes) {
            match field? {
                (1, Value::Bytes(b)) => model.pieces.push(parse_piece(b)?),
                (2, Value::Bytes(b)) => {
                    for f in Fields::new(b) {
                        match f? {
                            (3, Value::Varint(v)) => model.model_type = v,
                            (35, Value::Varint(v)) => model.byte_fallback = v != 0,
                            (40, Value::Varint(v)) => model.unk_id = v as usize,
                            _ => {}
                        }
                    }
                }
                (3, Value::Bytes(b)) => {
                    for f in Fields::new(b) {
                        match f? {
                            (2, Value::Bytes(map)) => model.precompiled_charsmap = map.to_vec(),
                            (3, Value::Varint(v)) => model.add_dummy_prefix = v != 0,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if model.pieces.is_empty() {
            return Err("it holds no pieces".into());
        }
        if model.unk_id >= model.pieces.len() {
            return Err(format!(
                "unknown-piece id {} is out of the vocabulary",
                model.unk_id
            ));
        }
        Ok(model)
    }

    /// The T5 tokenizer of this model with `extra_ids` sentinel tokens, as Hugging Face's
    /// `T5Converter` builds it.
    pub fn t5_tokenizer(&self, extra_ids: usize) -> Result<Tokenizer, String> {
        if self.model_type != MODEL_UNIGRAM {
            return Err(format!(
                "model type {} is not Unigram, which T5 uses",
                self.model_type
            ));
        }
        let mut vocab: Vec<(String, f64)> = self
            .pieces
            .iter()
            .map(|p| (p.piece.clone(), f64::from(p.score)))
            .collect();
        let extra: Vec<String> = (0..extra_ids)
            .rev()
            .map(|i| format!("<extra_id_{i}>"))
            .collect();
        vocab.extend(extra.iter().map(|t| (t.clone(), 0.0)));
        let eos = self
            .pieces
            .iter()
            .position(|p| p.piece == "</s>")
            .ok_or("the model has no </s> piece")?;
        let model = Unigram::from(vocab, Some(self.unk_id), self.byte_fallback)
            .map_err(|e| format!("cannot build the Unigram model: {e}"))?;
        let mut tokenizer = Tokenizer::new(model);
        if !self.precompiled_charsmap.is_empty() {
            let normalizer = Precompiled::from(&self.precompiled_charsmap)
                .map_err(|e| format!("bad precompiled_charsmap: {e}"))?;
            tokenizer.with_normalizer(Some(normalizer));
        }
        let prepend = if self.add_dummy_prefix {
            PrependScheme::Always
        } else {
            PrependScheme::Never
        };
        let metaspace = Metaspace::new('\u{2581}', prepend, true);
        tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
            WhitespaceSplit.into(),
            metaspace.clone().into(),
        ])));
        tokenizer.with_decoder(Some(metaspace));
        let template = TemplateProcessing::builder()
            .try_single("$A </s>")
            .and_then(|b| b.try_pair("$A </s> $B </s>"))
            .map_err(|e| format!("bad template: {e}"))?
            .special_tokens(vec![("</s>", eos as u32)])
            .build()
            .map_err(|e| format!("bad template: {e}"))?;
        tokenizer.with_post_processor(Some(template));
        let special: Vec<AddedToken> = self
            .pieces
            .iter()
            .filter(|p| matches!(p.kind, TYPE_UNKNOWN | TYPE_CONTROL | TYPE_USER_DEFINED))
            .map(|p| p.piece.as_str())
            .chain(extra.iter().map(String::as_str))
            .map(|t| AddedToken::from(t, true).normalized(false))
            .collect();
        tokenizer.add_special_tokens(&special);
        Ok(tokenizer)
    }
}

fn parse_piece(bytes: &[u8]) -> Result<Piece, String> {
    let mut piece = Piece {
        piece: String::new(),
        score: 0.0,
        kind: 1,
    };
    for field in Fields::new(bytes) {
        match field? {
            (1, Value::Bytes(b)) => {
                piece.piece = String::from_utf8(b.to_vec())
                    .map_err(|_| "a piece is not valid UTF-8".to_string())?
            }
            (2, Value::Fixed32(v)) => piece.score = f32::from_bits(v),
            (3, Value::Varint(v)) => piece.kind = v,
            _ => {}
        }
    }
    Ok(piece)
}

/// One protobuf field value, by wire type.
enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// Iterates over the `(field number, value)` pairs of one protobuf message.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Fields { rest: bytes }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.rest.split_first().ok_or("truncated varint")?;
            self.rest = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.rest.len() {
            return Err("truncated field".into());
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn field(&mut self) -> Result<(u64, Value<'a>), String> {
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "field too long")?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                let b = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            other => return Err(format!("unsupported wire type {other}")),
        };
        Ok((key >> 3, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Value<'a>), String>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let item = self.field();
        if item.is_err() {
            self.rest = &[];
        }
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hand_made_message() {
        // pieces: {"<unk>", 0.0, UNKNOWN}, {"▁a", -1.5}; trainer_spec: unk_id 0;
        // normalizer_spec: add_dummy_prefix false.
        let mut bytes = vec![0x0a, 0x0e, 0x0a, 0x05];
        bytes.extend(b"<unk>");
        bytes.extend([0x15, 0, 0, 0, 0, 0x18, 0x02]);
        bytes.extend([0x0a, 0x0b, 0x0a, 0x04]);
        bytes.extend("\u{2581}a".as_bytes());
        bytes.push(0x15);
        bytes.extend((-1.5f32).to_le_bytes());
        bytes.extend([0x12, 0x03, 0xc0, 0x02, 0x00]);
        bytes.extend([0x1a, 0x02, 0x18, 0x00]);
        let model = SentencePieceModel::parse(&bytes).unwrap();
        assert_eq!(model.pieces.len(), 2);
        assert_eq!(model.pieces[0].kind, TYPE_UNKNOWN);
        assert_eq!(model.pieces[1].piece, "\u{2581}a");
        assert_eq!(model.pieces[1].score, -1.5);
        assert_eq!(model.pieces[1].kind, 1);
        assert_eq!(model.unk_id, 0);
        assert!(!model.add_dummy_prefix);
        assert!(model.precompiled_charsmap.is_empty());
    }

    #[test]
    fn rejects_truncated_and_empty_input() {
        assert!(SentencePieceModel::parse(&[0x0a, 0x05, 0x0a]).is_err());
        assert!(SentencePieceModel::parse(&[]).is_err());
    }
}
