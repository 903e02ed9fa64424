//! What a job asks of the model and how the worker does it: the images of an OpenAI call (`n`
//! of them, seeds counting up from the first), or a chat turn, which is resolved only when it
//! runs, so that it sees every turn recorded before it (by this server or by `ace edit
//! --session`): its history, and the previous output as its image when none was uploaded. As
//! in the reference's chat, the history is the last five turns, and a turn whose image was
//! edited first (a mask painted on it, borders added) starts without one: the reference's
//! target frame is the first frame, history included, so an old frame would set the size and
//! mask of the new image. A turn's result is recorded in the session file; a retry replaces the
//! last turn.

use super::error::{ApiError, ApiResult};
use super::jobs::{Event, Job, Output, OutputImage};
use super::loras::LoraLibrary;
use super::settings::Settings;
use super::store::Store;
use crate::pipeline::{Ace, InputImage, Request, Turn, MAX_INPUT_IMAGES};
use crate::tasks::outpaint::{self, Extend};
use crate::tasks::session::{self, SessionTurn};
use image::{DynamicImage, RgbImage};
use std::path::PathBuf;
use std::sync::Arc;

/// A job's work.
#[derive(Debug)]
pub enum Work {
    Images(ImagesWork),
    Turn(TurnWork),
}

/// The images of an OpenAI call.
#[derive(Debug)]
pub struct ImagesWork {
    pub instruction: String,
    /// Input images (an edit), the first with its mask.
    pub images: Vec<InputImage>,
    pub settings: Settings,
    pub n: usize,
    /// `(width, height)` the images are resized to (an edit's `size`).
    pub resize: Option<(u32, u32)>,
    /// Whether the images are written under `images/` to be fetched by URL.
    pub keep: bool,
}

/// A chat turn.
#[derive(Debug)]
pub struct TurnWork {
    pub session: String,
    /// Uploaded images (saved in the session's folder); none takes the previous output.
    pub images: Vec<PathBuf>,
    /// Per image, its uploaded mask.
    pub masks: Vec<Option<PathBuf>>,
    /// Per image, its task.
    pub tasks: Vec<String>,
    /// The instruction; `None` only for an outpainting turn, which then draws a phrasing.
    pub instruction: Option<String>,
    /// Borders (left, right, top, bottom) to outpaint the first image by.
    pub outpaint: Option<(u32, u32, u32, u32)>,
    pub settings: Settings,
    /// Whether the earlier turns are the model's history.
    pub use_history: bool,
    /// Make the last turn again (its images, masks, tasks and instruction) and replace it.
    pub retry: bool,
}

/// Runs `job` on `model` with the LoRA adapters it asks for, recording its outcome as the job's
/// final event; returns the seconds it ran.
pub fn run(model: &Ace, store: &Store, loras: &LoraLibrary, job: &Job<Work>) -> f64 {
    let Some(work) = job.take_work() else {
        return 0.0;
    };
    job.push(Event::Started);
    let start = std::time::Instant::now();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::cancel::with_token(&job.token, || {
            use_loras(model, loras, &work)?;
            match work {
                Work::Images(w) => images(model, store, job, w),
                Work::Turn(w) => turn(model, store, job, w),
            }
        })
    }));
    let event = match result {
        Ok(Ok(output)) => Event::Done { output },
        _ if job.token.is_cancelled() || crate::cancel::requested() => Event::Cancelled,
        Ok(Err(e)) => Event::Failed {
            status: e.status.as_u16(),
            message: e.message,
        },
        Err(_) => {
            let e = ApiError::internal(format!("job {} panicked", job.id));
            Event::Failed {
                status: e.status.as_u16(),
                message: e.message,
            }
        }
    };
    let seconds = start.elapsed().as_secs_f64();
    log::info!(
        "job {} ({}): {} in {seconds:.2} s",
        job.id,
        job.kind,
        event.name()
    );
    job.push(event);
    seconds
}

/// Folds the adapters `work` asks for into the model (nothing to do when the last job's were
/// the same).
fn use_loras(model: &Ace, loras: &LoraLibrary, work: &Work) -> ApiResult<()> {
    let settings = match work {
        Work::Images(w) => &w.settings,
        Work::Turn(w) => &w.settings,
    };
    let wanted = loras.resolve(settings.lora.as_deref())?;
    if model.loras() != wanted {
        let names: Vec<String> = wanted
            .iter()
            .map(|(path, scale)| format!("{}:{scale}", path.display()))
            .collect();
        log::info!("LoRA adapters now: [{}]", names.join(", "));
    }
    model.use_loras(&wanted).map_err(|e| {
        log::error!("{e}");
        let names: Vec<String> = match &settings.lora {
            Some(asked) => asked.iter().map(|l| l.path.display().to_string()).collect(),
            None => vec!["the server's --lora".to_string()],
        };
        ApiError::bad_param(
            "lora",
            format!(
                "{} cannot be applied to this model (the server's log says why)",
                names.join(", ")
            ),
        )
    })
}

/// Generates image `index` of `count` for `request`, each step a progress event; the seconds
/// it took are added to `seconds`.
fn generate(
    model: &Ace,
    job: &Job<Work>,
    request: &Request,
    (index, count): (usize, usize),
    seconds: &mut f64,
) -> ApiResult<RgbImage> {
    let start = std::time::Instant::now();
    let generated = model.generate(request, &mut |step, steps| {
        job.push(Event::Progress {
            image: index,
            images: count,
            step: step + 1,
            steps,
        })
    });
    *seconds += start.elapsed().as_secs_f64();
    let generated = generated?;
    let sum = generated
        .latent
        .sum_all()
        .and_then(|s| s.to_scalar::<f32>());
    if !sum.map_err(crate::Error::from)?.is_finite() {
        return Err(ApiError::internal(
            "the sampled latent holds NaN or infinite values (the model weights are not finite)",
        ));
    }
    Ok(generated.to_rgb8()?)
}

/// An output image: its PNG and what describes it.
fn output_image(rgb: RgbImage, url: String, seed: u64) -> ApiResult<OutputImage> {
    let (width, height) = rgb.dimensions();
    Ok(OutputImage {
        url,
        seed,
        width,
        height,
        png: Arc::new(super::upload::png(&DynamicImage::ImageRgb8(rgb))?),
    })
}

fn images(model: &Ace, store: &Store, job: &Job<Work>, w: ImagesWork) -> ApiResult<Output> {
    let mut output = Output::default();
    let first = w.settings.seed();
    for i in 0..w.n {
        let seed = first.wrapping_add(i as u64);
        let request = w.settings.request(
            model.config(),
            &w.instruction,
            w.images.clone(),
            Vec::new(),
            seed,
        )?;
        let mut rgb = generate(model, job, &request, (i, w.n), &mut output.model_seconds)?;
        if let Some((width, height)) = w.resize {
            if rgb.dimensions() != (width, height) {
                rgb = crate::resize::resize_bicubic(&rgb, width, height);
            }
        }
        let name = format!("{}-{i}.png", job.id);
        let image = output_image(rgb, format!("/ace/images/{name}"), seed)?;
        if w.keep {
            crate::output::write(&store.image(&name)?, &image.png)?;
            store.prune_images();
        }
        output.images.push(image);
    }
    Ok(output)
}

/// The first input of a turn extended by `borders` on a new canvas, saved with its mask.
fn outpainted(
    store: &Store,
    job: &Job<Work>,
    w: &TurnWork,
    image: &std::path::Path,
    (left, right, top, bottom): (u32, u32, u32, u32),
) -> ApiResult<(PathBuf, PathBuf)> {
    let rgb = crate::imageio::load_rgb(image)?;
    let extend = Extend::Borders {
        left,
        right,
        top,
        bottom,
    };
    let (canvas, mask) = outpaint::canvas(&rgb, extend)?;
    let png = |img: DynamicImage| super::upload::png(&img);
    let tag = &job.id[..12];
    let canvas = store.save(
        &w.session,
        &format!("outpaint-{tag}.png"),
        &png(DynamicImage::ImageRgb8(canvas))?,
    )?;
    let mask = store.save(
        &w.session,
        &format!("outpaint-mask-{tag}.png"),
        &png(DynamicImage::ImageLuma8(mask))?,
    )?;
    Ok((canvas, mask))
}

/// Most earlier turns a turn sees (the reference's chat keeps five).
const HISTORY_TURNS: usize = 5;

/// The last turns of the history (at most [`HISTORY_TURNS`], and leaving room for `current`
/// input images among the model's image slots), their images read.
fn history(turns: &[SessionTurn], current: usize) -> ApiResult<Vec<Turn>> {
    let items = session::history(turns);
    let room = MAX_INPUT_IMAGES.saturating_sub(current).min(HISTORY_TURNS);
    items[items.len().saturating_sub(room)..]
        .iter()
        .map(|h| {
            Ok(Turn {
                input: crate::tasks::read_input(&h.image, h.mask.as_deref(), &h.task)?,
                instruction: h.instruction.clone(),
            })
        })
        .collect()
}

fn turn(model: &Ace, store: &Store, job: &Job<Work>, w: TurnWork) -> ApiResult<Output> {
    let cfg = model.config();
    let mut turns = store.turns(&w.session)?;
    let (mut inputs, mut masks, mut tasks, mut instruction) = if w.retry {
        let last = turns
            .pop()
            .ok_or_else(|| ApiError::bad_request("the chat has no turn to retry"))?;
        (last.inputs, last.masks, last.tasks, Some(last.instruction))
    } else {
        let inputs = match (w.images.is_empty(), session::previous_output(&turns)) {
            (true, Some(previous)) => vec![previous.to_path_buf()],
            _ => w.images.clone(),
        };
        (
            inputs,
            w.masks.clone(),
            w.tasks.clone(),
            w.instruction.clone(),
        )
    };
    masks.resize(inputs.len(), None);
    tasks.resize(inputs.len(), String::new());
    if let Some(borders) = w.outpaint.filter(|_| !w.retry) {
        let first = inputs
            .first()
            .ok_or_else(|| ApiError::bad_param("outpaint", "there is no image to extend"))?;
        let (canvas, mask) = outpainted(store, job, &w, first, borders)?;
        inputs[0] = canvas;
        masks[0] = Some(mask);
        tasks[0] = crate::tasks::inpaint::TASK.to_string();
        if instruction.is_none() {
            instruction = Some(crate::tasks::instruction(
                outpaint::TASK,
                &[("caption", None)],
                w.settings.seed(),
                None,
            )?);
        }
    }
    let instruction = instruction.ok_or_else(|| ApiError::bad_param("instruction", "missing"))?;
    let images = inputs
        .iter()
        .zip(&masks)
        .zip(&tasks)
        .map(|((image, mask), task)| crate::tasks::read_input(image, mask.as_deref(), task))
        .collect::<crate::Result<Vec<_>>>()?;
    let history = if w.use_history && masks.iter().all(Option::is_none) {
        history(&turns, images.len())?
    } else {
        Vec::new()
    };
    let seed = w.settings.seed();
    let request = w
        .settings
        .request(cfg, &instruction, images, history, seed)?;
    let mut model_seconds = 0.0;
    let rgb = generate(model, job, &request, (0, 1), &mut model_seconds)?;
    let index = turns.len();
    let url = format!("/ace/sessions/{}/turns/{index}/image", w.session);
    let mut image = output_image(rgb, url, seed)?;
    let output = store.save(
        &w.session,
        &format!("out-{}.png", &job.id[..12]),
        &image.png,
    )?;
    // Served from the file from now on.
    image.png = Arc::default();
    let record = SessionTurn {
        inputs,
        masks,
        tasks,
        instruction,
        output,
        seed: Some(seed),
    };
    store.record(&w.session, &record, w.retry)?;
    Ok(Output {
        images: vec![image],
        session: Some(w.session),
        turn: Some(index),
        model_seconds,
    })
}
