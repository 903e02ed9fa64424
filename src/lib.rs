//! `ace`: a native re-implementation of ACE, the All-round Creator and Editor.
//!
//! The library holds everything that computes: image input/output, the low-level visual
//! analysis operations of the paper (appendix B.2), the ACE model core (DiT, T5 text encoder,
//! VAE, sampler), the pipeline that turns instructions and images into frames, and the HTTP
//! server of `ace serve` over a loaded model. The `ace` binary in `commands/` is a thin layer
//! of argument parsing over this crate.

pub mod analyze;
pub mod batch;
pub mod cache;
pub mod cancel;
pub mod config;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod hub;
pub mod imageio;
pub mod inputs;
pub mod kernels;
pub mod limits;
pub mod memory;
pub mod model;
pub mod output;
pub mod pipeline;
pub mod resize;
pub mod sampler;
pub mod serve;
pub mod tasks;
pub mod textfile;
pub mod train;

pub use error::{Error, Result};
