//! The ACE pipeline: from instruction, input images, masks and history to the frames, contexts
//! and noise the DiT samples from, and from the final latent to the output image.

mod ace;
pub mod finish;
mod noise;
mod plan;
mod prepare;
mod prompts;

pub use ace::{
    encode_prompts_first, text_embedder, text_position_embeddings, Ace, Generated, InputImage,
    Loras, Progress, Request, Turn,
};
pub use finish::{Finish, ResizeFilter};
pub use noise::Noise;
pub use plan::{request_prompts, Plan, PlannedFrame};
pub use prepare::{budget_size, luma_pil, mask_to_latent, prepare_image, PreparedImage};
pub use prompts::{
    check_references, frame_contexts, frame_prompts, negative_contexts, MAX_INPUT_IMAGES,
};
