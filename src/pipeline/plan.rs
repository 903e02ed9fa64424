//! The part of a request that needs no model weights: the prompts and per-frame contexts, the
//! prepared input frames and masks, and the target frame's size and mask. `Ace::generate` runs
//! from a plan, and `--dry-run` prints one ([`Plan::describe`]) without loading the model, so
//! what is shown is exactly what the model would see.

use super::{
    check_references, frame_contexts, frame_prompts, negative_contexts, prepare_image, Noise,
    PreparedImage, Request,
};
use crate::config::AceConfig;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};

/// One prepared input frame with what names it.
#[derive(Debug, Clone)]
pub struct PlannedFrame {
    /// The image's name (usually its file).
    pub name: String,
    pub task: String,
    /// `(H, W)` of the image as given.
    pub source_size: (usize, usize),
    pub prepared: PreparedImage,
}

/// Everything of a request short of the model: frames, masks, contexts.
#[derive(Debug, Clone)]
pub struct Plan {
    /// One prompt per input image (history first), or the single text-to-image prompt.
    pub prompts: Vec<String>,
    /// The per-frame contexts, target frame first.
    pub contexts: Vec<String>,
    /// The negative contexts (used when guidance needs the unconditional pass).
    pub negative_contexts: Vec<String>,
    /// The input frames, history first.
    pub frames: Vec<PlannedFrame>,
    /// `(H, W)` of the output.
    pub target_size: (usize, usize),
    /// The target frame's mask `[1, H, W]`.
    pub target_mask: Tensor,
    /// The input the target takes its size and mask from (`None` for text-to-image).
    pub target_from: Option<usize>,
}

/// The prompts a request needs encoded: its frames' contexts, and the negative contexts when
/// guidance runs the unconditional pass. The same as [`Plan::new`] computes, without preparing
/// any image.
pub fn request_prompts(req: &Request, cfg: &AceConfig) -> Result<Vec<String>> {
    let (contexts, negative) = contexts(req, cfg)?;
    let mut out = contexts;
    if req.guidance.needs_unconditional() {
        out.extend(negative);
    }
    Ok(out)
}

/// The per-frame prompts, contexts and negative contexts of a request.
fn contexts(req: &Request, cfg: &AceConfig) -> Result<(Vec<String>, Vec<String>)> {
    let (prompts, has_images) = prompts(req)?;
    let negative = req
        .negative
        .clone()
        .unwrap_or_else(|| cfg.model.default_n_prompt.clone());
    Ok((
        frame_contexts(&prompts, has_images),
        negative_contexts(&prompts, &negative, has_images),
    ))
}

/// One prompt per input image (history first), checked against the images they refer to, and
/// whether there are input images.
fn prompts(req: &Request) -> Result<(Vec<String>, bool)> {
    let history: Vec<String> = req.history.iter().map(|t| t.instruction.clone()).collect();
    let n_inputs = req.history.len() + req.images.len();
    let prompts = frame_prompts(&history, &req.instruction, req.images.len());
    check_references(&prompts, n_inputs)?;
    Ok((prompts, n_inputs > 0))
}

impl Plan {
    /// Plans `req` under `cfg` (token budget, default size and negative prompt); tensors are
    /// made on `device`.
    pub fn new(req: &Request, cfg: &AceConfig, device: &Device) -> Result<Self> {
        let inputs: Vec<_> = req
            .history
            .iter()
            .map(|t| &t.input)
            .chain(req.images.iter())
            .collect();
        let (prompts, has_images) = prompts(req)?;
        let (contexts, negative_contexts) = contexts(req, cfg)?;
        if has_images && req.tar_index >= inputs.len() {
            return Err(Error::invalid(
                "target index",
                format!(
                    "{} (there are {} input images)",
                    req.tar_index,
                    inputs.len()
                ),
            ));
        }
        let max_seq_len = cfg.max_seq_len()?;
        let frames = inputs
            .iter()
            .map(|i| {
                Ok(PlannedFrame {
                    name: i.name.clone(),
                    task: i.task.clone(),
                    source_size: (i.image.height() as usize, i.image.width() as usize),
                    prepared: prepare_image(
                        &i.image,
                        i.mask.as_ref(),
                        &i.task,
                        max_seq_len,
                        &i.name,
                        device,
                    )?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let (target_size, target_mask, target_from) = if has_images {
            let t = &frames[req.tar_index].prepared;
            (t.size()?, t.mask.clone(), Some(req.tar_index))
        } else {
            let input = &cfg.default_paras.input;
            let (h, w) = req
                .size
                .unwrap_or((input.output_height, input.output_width));
            if h == 0 || w == 0 || h % 16 != 0 || w % 16 != 0 {
                return Err(Error::invalid(
                    "output size",
                    format!("{w}x{h} (width and height must be positive multiples of 16)"),
                ));
            }
            // As the reference, a text-to-image target may exceed the token budget of input
            // frames; only the sizes no image of ace may have are refused before allocating.
            crate::limits::check_size("output size", w as u64, h as u64)?;
            ((h, w), Tensor::ones((1, h, w), DType::F32, device)?, None)
        };
        Ok(Plan {
            contexts,
            negative_contexts,
            prompts,
            frames,
            target_size,
            target_mask,
            target_from,
        })
    }

    /// The DiT's tokens of one sample: the target frame's and every input frame's patches of
    /// `patch` pixels a side.
    pub fn tokens(&self, patch: usize) -> usize {
        let patches = |(h, w): (usize, usize)| (h / patch.max(1)) * (w / patch.max(1));
        patches(self.target_size)
            + self
                .frames
                .iter()
                .map(|f| f.prepared.size().map_or(0, patches))
                .sum::<usize>()
    }

    /// The plan as one JSON document: the output size, every frame's size after the token
    /// budget, its mask (pixel count, bounding box) and how many masked pixels are black (all of
    /// them when the task blanks the mask), tasks, prompts and
    /// contexts, and the sampling settings of `req`.
    pub fn describe(&self, req: &Request, cfg: &AceConfig) -> Result<serde_json::Value> {
        let factor = cfg.model.size_factor;
        let frames = self
            .frames
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let (h, w) = f.prepared.size()?;
                let pixels = f.prepared.pixels.flatten_all()?.to_vec1::<f32>()?;
                let mask = f.prepared.mask.flatten_all()?.to_vec1::<f32>()?;
                let plane = h * w;
                let blanked = (0..plane)
                    .filter(|&p| mask[p] > 0.5 && (0..3).all(|c| pixels[c * plane + p] == -1.0))
                    .count();
                Ok(serde_json::json!({
                    "index": i,
                    "reference": identifier(i),
                    "name": f.name,
                    "task": f.task,
                    "source_size": [f.source_size.0, f.source_size.1],
                    "size": [h, w],
                    "latent_size": [h / factor, w / factor],
                    "mask": describe_mask(&f.prepared.mask)?,
                    "masked_black_pixels": blanked,
                    "prompt": self.prompts.get(i),
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        let noise = match &req.noise {
            Noise::Seed(s) => serde_json::json!({ "seed": s }),
            Noise::File { path, tensor } => serde_json::json!({ "file": path, "tensor": tensor }),
        };
        let (h, w) = self.target_size;
        Ok(serde_json::json!({
            "instruction": req.instruction,
            "target": {
                "size": [h, w],
                "latent_size": [h / factor, w / factor],
                "from_input": self.target_from,
                "mask": describe_mask(&self.target_mask)?,
            },
            "frames": frames,
            "prompts": self.prompts,
            "contexts": self.contexts,
            "negative_contexts": self.negative_contexts,
            "unconditional_pass": req.guidance.needs_unconditional(),
            "steps": req.steps,
            "sampler": req.sampler.kind.name(),
            "schedule": req.sampler.spacing.name(),
            "strength": req.sampler.strength,
            "guide_scale": req.guidance.scale,
            "guide_rescale": req.guidance.rescale,
            "noise": noise,
            "max_seq_len": cfg.max_seq_len()?,
        }))
    }
}

/// The image indicator of input `i`: `{image}`, `{image1}`, ...
fn identifier(i: usize) -> String {
    if i == 0 {
        "{image}".to_string()
    } else {
        format!("{{image{i}}}")
    }
}

/// Ones of a `[1, H, W]` 0/1 mask: count, whether all, and their bounding box `[x0, y0, x1, y1]`
/// (exclusive ends).
fn describe_mask(mask: &Tensor) -> Result<serde_json::Value> {
    let (_, h, w) = mask.dims3()?;
    let v = mask.flatten_all()?.to_vec1::<f32>()?;
    let mut ones = 0usize;
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for (i, &m) in v.iter().enumerate() {
        if m > 0.5 {
            ones += 1;
            let (y, x) = (i / w, i % w);
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x + 1);
            y1 = y1.max(y + 1);
        }
    }
    let bbox = (ones > 0).then_some([x0, y0, x1, y1]);
    Ok(serde_json::json!({
        "ones": ones,
        "all": ones == h * w,
        "bbox": bbox,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_summary_counts_and_bounds() {
        let dev = Device::Cpu;
        let mut v = vec![0f32; 4 * 6];
        for (y, x) in [(1, 2), (2, 4)] {
            v[y * 6 + x] = 1.0;
        }
        let m = Tensor::from_vec(v, (1, 4, 6), &dev).unwrap();
        let d = describe_mask(&m).unwrap();
        assert_eq!(d["ones"], 2);
        assert_eq!(d["all"], false);
        assert_eq!(d["bbox"], serde_json::json!([2, 1, 5, 3]));
        let d = describe_mask(&Tensor::zeros((1, 2, 2), DType::F32, &dev).unwrap()).unwrap();
        assert!(d["bbox"].is_null());
        assert_eq!(identifier(0), "{image}");
        assert_eq!(identifier(3), "{image3}");
    }
}
