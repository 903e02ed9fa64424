//! The image encoders that score and embed images: CLIP (its image and text towers) and DINO,
//! both over one ViT, with the preprocessing of their Hugging Face image processors and the
//! finding of their folders in the Hugging Face layout. `ace eval` scores benchmarks with them,
//! `ace data` embeds and pairs images with them: they are models, so they live here, below both.

pub mod clip;
pub mod dino;
pub mod locate;
pub mod preprocess;
pub mod vit;
