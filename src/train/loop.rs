//! The training loop. Each optimizer step draws `ACCU_STEP` micro-batches of `BATCH_SIZE`
//! examples from the stage's training stream; micro-batch k draws its timesteps (uniform in
//! `[0, NUM_TIMESTEPS)`) and noise from random stream k of `ENV.SEED`, so the randomness of a
//! step depends only on its position: a run resumed from a checkpoint (weights, EMA, AdamW
//! moments, stream positions) logs exactly the numbers of an uninterrupted one. Gradients of
//! the micro-batches are averaged, optionally clipped, AdamW updates, the EMA follows. The
//! validation loss uses fixed timesteps and noise per validation example. Checkpoints are
//! written every `CheckpointHook.INTERVAL` steps, at the end, on `--max-steps` and on Ctrl-C.
//!
//! A fresh run refuses a `WORK_DIR` that holds an earlier run unless told to move it aside
//! (`force`). A non-finite loss, gradient norm or weight stops the run at once
//! ([`Finish::Diverged`]): that step is neither logged nor saved, so the log stays parseable and
//! the newest checkpoint, the last finite one, resumes.

use super::cache::Encoder;
use super::checkpointing::{self, Checkpoint, LoraInfo, TrainState};
use super::config::{Stage, TrainConfig};
use super::dataset::{self, Example};
use super::ema::Ema;
use super::model::{diffusion_loss, Encoded, Frozen};
use super::optimizer::{clip_grad_norm, grad_norm, AdamW};
use super::plot;
use super::weights::DitWeights;
use crate::kernels;
use crate::model::segments;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The JSONL log of a run, in `WORK_DIR`.
pub const LOG_JSONL: &str = "train_log.jsonl";
/// The loss plot, in `WORK_DIR`.
pub const PLOT_FILE: &str = "loss.png";
/// Seed offset of the validation randomness (kept apart from the training streams).
const VAL_SEED_OFFSET: u64 = 0x0005_eed0_f7a1;

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A checkpoint (or a `WORK_DIR`) to continue from.
    pub resume: Option<PathBuf>,
    /// Stop after this many optimizer steps in all (a checkpoint is written).
    pub max_steps: Option<u64>,
    /// Where prompt embeddings are looked up and kept (none: encoded afresh, kept in memory).
    pub prompt_cache: Option<crate::model::text::PromptCache>,
    /// Start afresh in a `WORK_DIR` that holds an earlier run, moving that run's files into a
    /// subfolder `earlier-run-SECONDS` first.
    pub force: bool,
}

/// One line of `train_log.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub it_per_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// Every stage ran to its MAX_STEPS.
    Completed,
    /// `--max-steps` was reached.
    Stopped,
    /// Ctrl-C (or SIGTERM, SIGHUP).
    Interrupted,
    /// A non-finite loss, gradient norm or weight at this step (nothing of it was kept).
    Diverged { step: u64, what: String },
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Summary {
    pub finish: Finish,
    /// Optimizer steps done in all.
    pub step: u64,
    pub total_steps: u64,
    /// The newest checkpoint (none when a run diverged before its first save).
    pub checkpoint: Option<PathBuf>,
    /// Where an earlier run in `WORK_DIR` was moved to (`force`).
    pub moved_aside: Option<PathBuf>,
    pub log: PathBuf,
    pub plot: PathBuf,
}

/// Called after every step with its log line and the total number of steps.
pub type Progress<'a> = &'a mut dyn FnMut(&LogLine, u64);

/// The stage's model settings that the frozen models and the encodings depend on.
fn salt(stage: &Stage) -> Result<String> {
    let files = stage.model.model_files(None)?;
    let m = &stage.model.model;
    Ok(format!(
        "{files:?}|{}|{}|{}|{}|{}",
        m.cond_stage_model.length,
        m.cond_stage_model.clean,
        m.scale_factor,
        m.size_factor,
        stage.data.max_seq_len
    ))
}

/// The appended-to logs of a run.
struct Logs {
    jsonl: PathBuf,
    text: PathBuf,
}

impl Logs {
    fn append(path: &Path, line: &str) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        writeln!(f, "{line}").map_err(|e| Error::io(path, e))
    }

    fn read(&self) -> Result<Vec<LogLine>> {
        if !self.jsonl.is_file() {
            return Ok(Vec::new());
        }
        let text = std::fs::read_to_string(&self.jsonl).map_err(|e| Error::io(&self.jsonl, e))?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| Error::Config {
                    path: self.jsonl.clone(),
                    message: format!("line {}: {e}", i + 1),
                })
            })
            .collect()
    }

    /// Keeps the lines of steps up to `step` (a resumed run rewrites what came after).
    fn truncate(&self, step: u64) -> Result<()> {
        let kept: String = self
            .read()?
            .into_iter()
            .filter(|l| l.step <= step)
            .map(|l| format!("{}\n", json(&l)))
            .collect();
        crate::output::write(&self.jsonl, kept.as_bytes())
    }
}

fn json(line: &LogLine) -> String {
    serde_json::to_string(line).unwrap_or_default()
}

/// The state of a run between steps.
struct Run<'a> {
    cfg: &'a TrainConfig,
    weights: DitWeights,
    optimizer: AdamW,
    ema: Option<Ema>,
    state: TrainState,
    work_dir: PathBuf,
    device: Device,
    /// Whether this stage's linear layers take bf16 products ([`mixed_precision`]).
    amp: bool,
}

impl Run<'_> {
    fn checkpoint(&self) -> Result<PathBuf> {
        let weights = self
            .weights
            .trainable()
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().detach().copy()?)))
            .collect::<Result<_>>()?;
        let (optimizer, _) = self.optimizer.state();
        let mut state = self.state.clone();
        state.optimizer_steps = self.optimizer.steps_done();
        checkpointing::save(
            &self.work_dir,
            &Checkpoint {
                state,
                weights,
                ema: self.ema.as_ref().map(|e| e.weights().clone()),
                optimizer,
            },
        )
    }

    /// One micro-batch's examples, timesteps and noise, advancing the stream positions.
    fn draw(
        &mut self,
        encoder: &Encoder,
        train: &[Example],
        batch_size: usize,
        num_timesteps: usize,
    ) -> Result<(Vec<Encoded>, Vec<usize>, Vec<Tensor>)> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.cfg.seed);
        rng.set_stream(self.state.rng_stream);
        self.state.rng_stream += 1;
        let mut batch = Vec::with_capacity(batch_size);
        let mut ts = Vec::with_capacity(batch_size);
        let mut noises = Vec::with_capacity(batch_size);
        for _ in 0..batch_size {
            let i = dataset::stream_index(train.len(), self.state.data_position, self.cfg.seed);
            self.state.data_position += 1;
            let ex = encoder.encode(&train[i])?;
            ts.push(rng.gen_range(0..num_timesteps));
            noises.push(normal(&mut rng, ex.target.dims(), &self.device)?);
            batch.push(ex);
        }
        Ok((batch, ts, noises))
    }

    /// One optimizer step over `accu_step` micro-batches; returns the mean loss. A non-finite
    /// loss or gradient norm is [`Error::Diverged`] before anything changes; a non-finite
    /// weight after the update is too (the caller keeps nothing of the step).
    fn step(
        &mut self,
        stage: &Stage,
        frozen: &Frozen,
        encoder: &Encoder,
        train: &[Example],
    ) -> Result<f64> {
        // Nothing of a step that failed part-way is kept.
        self.weights.take_gradients()?;
        let mut loss_sum = 0f64;
        let num_timesteps = frozen.schedule().num_timesteps();
        for _ in 0..stage.accu_step {
            let (batch, ts, noises) =
                self.draw(encoder, train, stage.data.batch_size, num_timesteps)?;
            let model = self.weights.model()?;
            let forward = || {
                diffusion_loss(
                    &model,
                    frozen.text_position_embeddings(),
                    frozen.schedule(),
                    &batch,
                    &ts,
                    &noises,
                )
            };
            let recorded = || segments::record(forward);
            let (loss, segments) = if self.amp {
                kernels::autocast_bf16(recorded)
            } else {
                recorded()
            };
            let loss = loss?;
            let value = f64::from(loss.to_scalar::<f32>()?);
            self.finite(value, "the loss")?;
            loss_sum += value;
            self.weights
                .accumulate((loss / stage.accu_step as f64)?, segments)?;
        }
        let mut grads = self.weights.take_gradients()?;
        let norm = match stage.grad_clip {
            Some(max_norm) => clip_grad_norm(&mut grads, max_norm)?,
            None => grad_norm(&grads)?,
        };
        self.finite(norm, "the gradient norm")?;
        self.optimizer.step(self.weights.trainable(), &grads)?;
        for (name, v) in self.weights.trainable() {
            let sum = v.as_tensor().sum_all()?.to_dtype(candle_core::DType::F32)?;
            self.finite(
                f64::from(sum.to_scalar::<f32>()?),
                &format!("weight {name}"),
            )?;
        }
        if let Some(ema) = &mut self.ema {
            ema.update(self.weights.trainable())?;
        }
        Ok(loss_sum / stage.accu_step as f64)
    }

    /// [`Error::Diverged`] at the step being made unless `value` is finite.
    fn finite(&self, value: f64, what: &str) -> Result<()> {
        if value.is_finite() {
            Ok(())
        } else {
            Err(Error::Diverged {
                step: self.state.step + 1,
                what: what.to_string(),
            })
        }
    }

    /// Mean loss over the validation examples, each at its own fixed timestep and noise.
    fn validate(&self, frozen: &Frozen, val: &[Encoded]) -> Result<f64> {
        let model = self.weights.frozen_model()?;
        let mut total = 0f64;
        for (j, ex) in val.iter().enumerate() {
            let mut rng = ChaCha8Rng::seed_from_u64(self.cfg.seed ^ VAL_SEED_OFFSET);
            rng.set_stream(j as u64);
            let t = rng.gen_range(0..frozen.schedule().num_timesteps());
            let noise = normal(&mut rng, ex.target.dims(), &self.device)?;
            let loss = diffusion_loss(
                &model,
                frozen.text_position_embeddings(),
                frozen.schedule(),
                std::slice::from_ref(ex),
                &[t],
                &[noise],
            )?;
            total += f64::from(loss.to_scalar::<f32>()?);
        }
        let mean = total / val.len() as f64;
        // Validation runs after the step is counted.
        if !mean.is_finite() {
            return Err(Error::Diverged {
                step: self.state.step,
                what: "the validation loss".into(),
            });
        }
        Ok(mean)
    }
}

/// Standard normal float32 noise of `shape`.
fn normal(rng: &mut ChaCha8Rng, shape: &[usize], device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
    Ok(Tensor::from_vec(v, shape, device)?)
}

/// Checks what must stay the same across stages (one work folder, one way of training).
fn check_stages(cfg: &TrainConfig) -> Result<()> {
    let first = &cfg.stages[0];
    for (i, s) in cfg.stages.iter().enumerate().skip(1) {
        let same = s.work_dir == first.work_dir
            && s.lora == first.lora
            && s.ema_decay == first.ema_decay
            && s.pretrained == first.pretrained
            && s.model.model_files(None)?.dit == first.model.model_files(None)?.dit;
        if !same {
            return Err(Error::Config {
                path: PathBuf::from(&cfg.origin),
                message: format!(
                    "STAGES[{i}] changes WORK_DIR, TUNER, USE_EMA/EMA_DECAY or the DiT weights; \
                     stages may change the data, optimizer, steps and hooks only"
                ),
            });
        }
    }
    Ok(())
}

/// The files of a run in `WORK_DIR`: the logs, the plot and the checkpoints.
fn run_files(work_dir: &Path, logs: &Logs) -> Vec<PathBuf> {
    [
        logs.jsonl.clone(),
        logs.text.clone(),
        work_dir.join(PLOT_FILE),
        work_dir.join(checkpointing::CHECKPOINTS),
    ]
    .into_iter()
    .filter(|p| p.exists())
    .collect()
}

/// Makes `work_dir` ready for a fresh run: refuses one that holds an earlier run, unless
/// `force`, which moves that run's files into `earlier-run-SECONDS/` (returned).
fn clear_for_fresh_run(work_dir: &Path, logs: &Logs, force: bool) -> Result<Option<PathBuf>> {
    let earlier = run_files(work_dir, logs);
    if earlier.is_empty() {
        return Ok(None);
    }
    if !force {
        return Err(Error::Output {
            path: work_dir.to_path_buf(),
            message: "holds an earlier run (train_log.jsonl, checkpoints/); continue it with \
                      --resume, or start over with --force (which moves it into \
                      earlier-run-SECONDS/)"
                .into(),
        });
    }
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = work_dir.join(format!("earlier-run-{seconds}"));
    crate::output::create_dir(&aside)?;
    for p in earlier {
        let dest = aside.join(p.file_name().unwrap_or_default());
        std::fs::rename(&p, &dest).map_err(|e| Error::io(&p, e))?;
    }
    Ok(Some(aside))
}

/// Whether the stage's DiT linear layers take bf16 products (`USE_AMP`): on CPUs with bf16
/// instructions; elsewhere the stage trains in f32 and a warning says why.
fn mixed_precision(stage: &Stage, device: &Device) -> bool {
    if !stage.use_amp {
        return false;
    }
    let why = if device.is_cpu() {
        match kernels::cpu_bf16_support() {
            Ok(()) => return true,
            Err(why) => why,
        }
    } else {
        "mixed precision is implemented for the CPU only".to_string()
    };
    log::warn!("USE_AMP: {why}; training in float32");
    false
}

/// Trains as `cfg` says; `progress` sees every step.
pub fn run(
    cfg: &TrainConfig,
    opts: &Options,
    device: &Device,
    progress: Progress,
) -> Result<Summary> {
    check_stages(cfg)?;
    let first = &cfg.stages[0];
    let work_dir = first.work_dir.clone();
    crate::output::create_dir(&work_dir)?;
    let logs = Logs {
        jsonl: work_dir.join(LOG_JSONL),
        text: work_dir.join(&first.log_file),
    };
    let base_model = match &first.pretrained {
        Some(p) => p.clone(),
        None => first.model.model_files(None)?.dit,
    };
    let dit_cfg = first.model.dit_config()?;
    let mut init_rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let weights = DitWeights::load(
        &dit_cfg,
        &base_model,
        first.lora.as_ref(),
        &mut init_rng,
        device,
    )?;
    let mut optimizer = AdamW::new(first.optimizer)?;
    let mut moved_aside = None;
    let mut ema = first
        .ema_decay
        .map(|d| Ema::new(d, weights.trainable()))
        .transpose()?;
    let state = match &opts.resume {
        Some(path) => {
            let ck = checkpointing::load(path, device)?;
            let source = path.display().to_string();
            if ck.state.seed != cfg.seed || ck.state.lora.is_some() != first.lora.is_some() {
                return Err(Error::invalid(
                    "--resume",
                    format!(
                        "{source}: the checkpoint was made with another seed or tuner than {}",
                        cfg.origin
                    ),
                ));
            }
            weights.load_trainable(&ck.weights, &source)?;
            optimizer.load_state(&ck.optimizer, ck.state.optimizer_steps, &source)?;
            if let (Some(e), Some(saved)) = (&mut ema, &ck.ema) {
                e.load(saved, &source)?;
            }
            logs.truncate(ck.state.step)?;
            ck.state
        }
        None => {
            moved_aside = clear_for_fresh_run(&work_dir, &logs, opts.force)?;
            TrainState {
                step: 0,
                stage: 0,
                data_position: 0,
                seed: cfg.seed,
                rng_stream: 0,
                optimizer_steps: 0,
                base_model: std::path::absolute(&base_model).unwrap_or(base_model.clone()),
                lora: first.lora.as_ref().map(|l| LoraInfo {
                    rank: l.rank,
                    alpha: l.alpha,
                    targets: l.targets.clone(),
                }),
            }
        }
    };
    let total_steps = cfg.total_steps();
    let stop_at = opts.max_steps.map_or(total_steps, |m| m.min(total_steps));
    let mut run = Run {
        cfg,
        weights,
        optimizer,
        ema,
        state,
        work_dir: work_dir.clone(),
        device: device.clone(),
        amp: false,
    };
    let mut finish = Finish::Completed;
    let mut last_saved = None;
    'stages: while run.state.step < stop_at {
        let Some((stage_index, _)) = cfg.stage_of(run.state.step) else {
            break;
        };
        if stage_index != run.state.stage {
            run.state.stage = stage_index;
            run.state.data_position = 0;
        }
        let stage = &cfg.stages[stage_index];
        run.optimizer.set_params(stage.optimizer);
        run.amp = mixed_precision(stage, device);
        let stage_end: u64 = cfg.stages[..=stage_index].iter().map(|s| s.max_steps).sum();
        let examples = dataset::read_list(&stage.data.list)?;
        dataset::check_files(&examples, &stage.data.list)?;
        let files = stage.model.model_files(None)?;
        let frozen = Frozen::load(
            &stage.model,
            &files,
            stage.data.max_seq_len,
            device,
            &examples,
            opts.prompt_cache.clone(),
        )?;
        let encoder = Encoder::new(&frozen, stage.data.cache_dir.clone(), salt(stage)?, device);
        let (train, val) = dataset::split(examples, stage.data.val_fraction, cfg.seed)?;
        let val: Vec<Encoded> = val
            .iter()
            .map(|e| encoder.encode(e))
            .collect::<Result<_>>()?;
        while run.state.step < stage_end.min(stop_at) {
            if crate::cancel::requested() {
                finish = Finish::Interrupted;
                break 'stages;
            }
            let start = Instant::now();
            let loss = match run.step(stage, &frozen, &encoder, &train) {
                Ok(loss) => loss,
                Err(Error::Diverged { step, what }) => {
                    finish = Finish::Diverged { step, what };
                    break 'stages;
                }
                Err(e) => return Err(e),
            };
            let elapsed = start.elapsed().as_secs_f64();
            run.state.step += 1;
            let step = run.state.step;
            let eval_now = !val.is_empty()
                && (step == stage_end
                    || (stage.eval_interval > 0 && step.is_multiple_of(stage.eval_interval)));
            let val_loss = match eval_now.then(|| run.validate(&frozen, &val)).transpose() {
                Ok(v) => v,
                Err(Error::Diverged { step, what }) => {
                    finish = Finish::Diverged { step, what };
                    break 'stages;
                }
                Err(e) => return Err(e),
            };
            let line = LogLine {
                step,
                loss,
                lr: stage.optimizer.lr,
                it_per_s: if elapsed > 0.0 { 1.0 / elapsed } else { 0.0 },
                val_loss,
            };
            Logs::append(&logs.jsonl, &json(&line))?;
            if step.is_multiple_of(stage.log_interval) || line.val_loss.is_some() {
                let val_text = line
                    .val_loss
                    .map(|v| format!(" val_loss {v:.6}"))
                    .unwrap_or_default();
                Logs::append(
                    &logs.text,
                    &format!(
                        "step {step}/{total_steps} loss {:.6} lr {:e} it/s {:.3}{val_text}",
                        line.loss, line.lr, line.it_per_s
                    ),
                )?;
            }
            progress(&line, total_steps);
            if step.is_multiple_of(stage.checkpoint_interval) {
                last_saved = Some((step, run.checkpoint()?));
            }
        }
        if run.state.step >= stage_end && stage_index + 1 < cfg.stages.len() {
            run.state.stage = stage_index + 1;
            run.state.data_position = 0;
        }
    }
    if finish == Finish::Completed && run.state.step < total_steps {
        finish = Finish::Stopped;
    }
    let checkpoint = match (&finish, last_saved) {
        // Nothing of a diverged run after its last save is kept: that save stays the newest.
        (Finish::Diverged { .. }, _) => checkpointing::resolve(&work_dir).ok(),
        (_, Some((step, path))) if step == run.state.step => Some(path),
        _ => Some(run.checkpoint()?),
    };
    let lines = logs.read()?;
    let train_points: Vec<(u64, f64)> = lines.iter().map(|l| (l.step, l.loss)).collect();
    let val_points: Vec<(u64, f64)> = lines
        .iter()
        .filter_map(|l| l.val_loss.map(|v| (l.step, v)))
        .collect();
    let plot_path = work_dir.join(PLOT_FILE);
    plot::save(&train_points, &val_points, &plot_path)?;
    Ok(Summary {
        finish,
        step: run.state.step,
        total_steps,
        checkpoint,
        moved_aside,
        log: logs.jsonl,
        plot: plot_path,
    })
}
