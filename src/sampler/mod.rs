//! The diffusion sampler of ACE's inference: the linear noise schedule, DDIM with "trailing"
//! timesteps and eta 0 (and the k-diffusion samplers a run may pick instead, [`method`]), and
//! classifier-free guidance with rescale. All the schedule arithmetic
//! is float32, in the order the reference (scepter) does it, so that the timesteps and sigmas
//! match it to the last bit.

mod ddim;
mod guidance;
mod k_diffusion;
mod method;
mod schedule;

pub use ddim::Ddim;
pub use guidance::Guidance;
pub use k_diffusion::Spacing;
pub use method::{plan, Sampler, SamplerKind, SamplerSettings};
pub use schedule::LinearSchedule;
