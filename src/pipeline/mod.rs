//! The ACE pipeline: from instruction, input images, masks and history to the frames, contexts
//! and noise the DiT samples from, and from the final latent to the output image.

mod resize;

pub use resize::{resize_bicubic, resize_nearest};
