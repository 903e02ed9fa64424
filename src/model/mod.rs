//! The ACE model core: the DiT (DiTACE), the T5 text encoder and tokenizer, the ldm VAE, the
//! image encoders that score and embed images (CLIP, DINO), and loading of the official
//! checkpoints in their release layouts.

pub mod checkpoint;
pub mod cpu_bf16;
pub mod dit;
pub mod identity;
pub mod linear;
pub mod lora;
pub mod mapped;
pub mod recorder;
pub mod segments;
pub mod text;
pub mod vae;
pub mod vision;
