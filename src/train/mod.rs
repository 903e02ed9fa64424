//! `ace train`: fine-tuning ACE's DiT on instruction/image pairs. T5 and the VAE stay frozen;
//! the DiT trains fully or through LoRA adapters, with AdamW (PyTorch semantics), gradient
//! accumulation and clipping, an EMA of the trained weights, a held-out validation split,
//! atomic checkpoints that resume bit for bit, and a JSONL log with a loss plot.

pub mod cache;
pub mod checkpointing;
pub mod config;
pub mod dataset;
pub mod ema;
pub mod font;
pub mod r#loop;
pub mod lora;
pub mod model;
pub mod optimizer;
pub mod plot;
pub mod weights;

pub use r#loop::{run, Finish, LogLine, Options, Summary};
