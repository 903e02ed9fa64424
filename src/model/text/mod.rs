//! The text side of ACE: prompt cleaning, the T5 tokenizer (from `tokenizer.json` or a bare
//! `spiece.model`), the T5-v1.1 encoder, and the text embedder that turns prompts into per-frame
//! context rows and identifiers into image indicator embeddings.

pub mod cache;
pub mod clean;
mod embedder;
pub mod spiece;
pub mod t5;
pub mod tokenizer;

pub use cache::{PromptCache, PromptKey};
pub use clean::Clean;
pub use embedder::{TextEmbedder, TextReport, TokenizedPrompt};
pub use t5::T5Encoder;
pub use tokenizer::{T5Tokenizer, Tokens};

/// The image identifiers of ACE (`TEXT_IDENTIFIER`), in order: `{image}`, `{image1}` ...
/// `{image9}`.
pub fn image_identifiers() -> Vec<String> {
    std::iter::once("{image}".to_string())
        .chain((1..10).map(|i| format!("{{image{i}}}")))
        .collect()
}
