//! `ace eval`: scores generated or edited images against a benchmark (manifest or paired
//! folders) and prints a table, JSON or CSV, optionally writing an HTML report.

use crate::Outcome;
use ace::eval::{self, Models, Options};
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("samples").required(true).args(["manifest", "generated"])))]
pub struct Args {
    /// Manifest of samples: JSON lines or CSV (.csv) with the fields input, generated,
    /// ground_truth, input_caption, output_caption, instruction, task, turn, final_turn, text,
    /// recognized_text (any may be absent); paths are relative to the manifest's folder. -
    /// reads it from standard input (CSV unless it starts with '{'; paths relative to the
    /// current folder). Rows that cannot be read are reported and the others scored (exit 1).
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// Folder of generated images: paired with --reference by file stem, with --magicbrush in
    /// MagicBrush's layout (<id>/*_1.png, inde_<i>.png, iter_<i>.png), or with --emu-edit as
    /// <idx>.png.
    #[arg(long, value_name = "DIR", conflicts_with = "manifest")]
    pub generated: Option<PathBuf>,
    /// Folder of ground-truth images for --generated.
    #[arg(
        long,
        value_name = "DIR",
        requires = "generated",
        conflicts_with_all = ["magicbrush", "emu_edit"]
    )]
    pub reference: Option<PathBuf>,
    /// The MagicBrush test folder (images/<id>/, global_descriptions.json) for --generated;
    /// means are reported for the final turn and all turns.
    #[arg(
        long,
        value_name = "DIR",
        requires = "generated",
        conflicts_with = "emu_edit"
    )]
    pub magicbrush: Option<PathBuf>,
    /// The Emu Edit test set (facebook/emu_edit_test_set): a parquet file or a folder of them,
    /// for --generated. Input images are extracted once into ACE_CACHE_DIR (default
    /// ~/.cache/ace); L1, CLIP-I and DINO compare each edit with its input, as Emu Edit does.
    #[arg(long, value_name = "FILE|DIR", requires = "generated")]
    pub emu_edit: Option<PathBuf>,
    /// CLIP model (Hugging Face layout): a folder or a cached hub id such as
    /// openai/clip-vit-base-patch32. Without it the CLIP metrics are left out.
    #[arg(long, value_name = "DIR|REPO")]
    pub clip_model: Option<String>,
    /// DINO model (Hugging Face ViTModel layout): a folder or a cached hub id such as
    /// facebook/dino-vits16. Without it the DINO metric is left out.
    #[arg(long, value_name = "DIR|REPO")]
    pub dino_model: Option<String>,
    /// Face detector (ONNX, OpenCV res10 SSD layout) for the face similarity of Table 7.
    #[arg(long, value_name = "FILE", requires = "face_model")]
    pub face_detector: Option<PathBuf>,
    /// ArcFace embedder (ONNX, 112×112 input) for the face similarity of Table 7.
    #[arg(long, value_name = "FILE", requires = "face_detector")]
    pub face_model: Option<PathBuf>,
    /// Text recogniser (ONNX CRNN, 100×32 grey input, CTC output) for the text scores of
    /// Table 8; used for samples with a `text` and no `recognized_text`.
    #[arg(long, value_name = "FILE", requires = "ocr_charset")]
    pub ocr_model: Option<PathBuf>,
    /// The recogniser's symbols, one a line (class i + 1 is line i; class 0 is the blank).
    #[arg(long, value_name = "FILE", requires = "ocr_model")]
    pub ocr_charset: Option<PathBuf>,
    /// Print one JSON document: {"samples": [...], "mean": {...}, "mean_by_task", "mean_by_turn"}.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV: one row per sample, then the means.
    #[arg(long)]
    pub csv: bool,
    /// Write a self-contained HTML report (report.html) into this folder.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Samples read and embedded together.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub batch_size: usize,
}

pub fn run(args: Args, global: &crate::cli::Global) -> anyhow::Result<Outcome> {
    let mut bad_rows = Vec::new();
    let samples = match (
        &args.manifest,
        &args.generated,
        &args.reference,
        &args.magicbrush,
        &args.emu_edit,
    ) {
        (Some(m), ..) => {
            let manifest = eval::manifest::read_manifest(m)?;
            bad_rows = manifest.problems;
            manifest.samples
        }
        (None, Some(g), Some(r), None, None) => eval::manifest::pair_folders(g, r)?,
        (None, Some(g), None, Some(test), None) => eval::magicbrush::samples(g, test)?,
        (None, Some(g), None, None, Some(test)) => eval::emu_edit::samples(g, test)?,
        _ => anyhow::bail!(
            "give --manifest FILE, or --generated DIR with --reference DIR, --magicbrush DIR \
             or --emu-edit FILE|DIR"
        ),
    };
    let device = ace::device::open(global.device)?;
    let mut models = Models::default();
    if let Some(spec) = &args.clip_model {
        let dir = ace::model::vision::locate::model_dir(spec, "CLIP")?;
        models.clip = Some(ace::model::vision::clip::Clip::load(&dir, &device)?);
    }
    if let Some(spec) = &args.dino_model {
        let dir = ace::model::vision::locate::model_dir(spec, "DINO")?;
        models.dino = Some(ace::model::vision::dino::Dino::load(&dir, &device)?);
    }
    if let (Some(detector), Some(embedder)) = (&args.face_detector, &args.face_model) {
        models.faces = Some(eval::faces::FaceModels::new(detector, embedder)?);
    }
    if let (Some(model), Some(charset)) = (&args.ocr_model, &args.ocr_charset) {
        models.ocr = Some(eval::ocr::TextRecognizer::new(model, charset)?);
    }
    let options = Options {
        batch_size: args.batch_size.max(1),
        thumbnail: args.report.as_ref().map(|_| 128),
    };
    for e in &bad_rows {
        eprintln!("ace: {e}");
    }
    let bar = crate::ui::progress_bar(global, samples.len() as u64, "eval", "samples");
    let evaluation = eval::evaluate(&samples, &models, &options, &|n| {
        if let Some(b) = &bar {
            b.inc(n as u64)
        }
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    for s in &evaluation.samples {
        for e in &s.errors {
            eprintln!("ace: sample {}: {e}", s.sample.index);
        }
    }
    if let Some(dir) = &args.report {
        ace::output::create_dir(dir)?;
        let title = args
            .manifest
            .as_ref()
            .or(args.generated.as_ref())
            .map(|p| format!("ace eval: {}", p.display()))
            .unwrap_or_else(|| "ace eval".into());
        let page = eval::report::html(&evaluation, &title);
        ace::output::write(&dir.join("report.html"), page.as_bytes())?;
    }
    let text = if args.json {
        format!("{}\n", serde_json::to_string_pretty(&evaluation.to_json())?)
    } else if args.csv {
        evaluation.to_csv()
    } else {
        evaluation.to_table()
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(if evaluation.samples.len() < samples.len() {
        Outcome::Interrupted
    } else if evaluation.failed() > 0 || !bad_rows.is_empty() {
        Outcome::SomeFailed
    } else {
        Outcome::Success
    })
}
