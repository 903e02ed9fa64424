//! The results of a run: per-sample scores, means (overall, per task, per turn) that leave
//! out missing values, and their JSON, CSV and plain-table forms.

use super::manifest::Sample;
use super::metrics::mean_of_present;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The metrics, in output order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    L1,
    L2,
    Psnr,
    Ssim,
    ClipI,
    ClipT,
    ClipDir,
    ClipImg,
    Dino,
    FaceSimilarity,
    FaceEffective,
    SentenceAccuracy,
    NormalizedEditSimilarity,
}

impl Metric {
    pub const ALL: [Metric; 13] = [
        Metric::L1,
        Metric::L2,
        Metric::Psnr,
        Metric::Ssim,
        Metric::ClipI,
        Metric::ClipT,
        Metric::ClipDir,
        Metric::ClipImg,
        Metric::Dino,
        Metric::FaceSimilarity,
        Metric::FaceEffective,
        Metric::SentenceAccuracy,
        Metric::NormalizedEditSimilarity,
    ];

    /// The key in JSON and CSV output.
    pub fn key(self) -> &'static str {
        match self {
            Metric::L1 => "l1",
            Metric::L2 => "l2",
            Metric::Psnr => "psnr",
            Metric::Ssim => "ssim",
            Metric::ClipI => "clip_i",
            Metric::ClipT => "clip_t",
            Metric::ClipDir => "clip_dir",
            Metric::ClipImg => "clip_img",
            Metric::Dino => "dino",
            Metric::FaceSimilarity => "face_sim",
            Metric::FaceEffective => "face_effective",
            Metric::SentenceAccuracy => "sentence_acc",
            Metric::NormalizedEditSimilarity => "ned",
        }
    }

    /// Whether a larger value is better (L1 and L2 are distances).
    pub fn higher_is_better(self) -> bool {
        !matches!(self, Metric::L1 | Metric::L2)
    }

    fn position(self) -> usize {
        Metric::ALL.iter().position(|m| *m == self).unwrap_or(0)
    }
}

/// The scores of one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleScores {
    pub sample: Sample,
    values: [Option<f64>; Metric::ALL.len()],
    /// Files that were missing or unreadable, one message each.
    pub errors: Vec<String>,
    /// PNG thumbnails of the generated, ground-truth and input image (report only).
    pub thumbnails: Vec<Option<Vec<u8>>>,
}

impl SampleScores {
    pub fn new(sample: &Sample) -> Self {
        SampleScores {
            sample: sample.clone(),
            values: [None; Metric::ALL.len()],
            errors: Vec::new(),
            thumbnails: Vec::new(),
        }
    }

    pub fn get(&self, m: Metric) -> Option<f64> {
        self.values[m.position()]
    }

    pub fn set(&mut self, m: Metric, v: Option<f64>) {
        self.values[m.position()] = v.filter(|v| v.is_finite());
    }

    /// A short name: the generated file's name, else the index.
    pub fn name(&self) -> String {
        self.sample
            .generated
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("#{}", self.sample.index))
    }
}

/// Means of each metric over a group of samples.
pub type Means = BTreeMap<Metric, Option<f64>>;

/// A whole run.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub samples: Vec<SampleScores>,
    /// Means over all samples; `None` when the samples score some edits twice (MagicBrush:
    /// final-turn samples beside the all-turn ones), whose means are then only per turn.
    pub mean: Option<Means>,
    /// Means per task, by task name.
    pub by_task: BTreeMap<String, Means>,
    /// Means per turn ("1", "2", …), over final turns ("final") and over all turns ("all").
    pub by_turn: BTreeMap<String, Means>,
}

fn means<'a>(group: impl Iterator<Item = &'a SampleScores> + Clone) -> Means {
    Metric::ALL
        .iter()
        .map(|&m| (m, mean_of_present(group.clone().map(|s| s.get(m)))))
        .collect()
}

impl Evaluation {
    pub fn new(samples: Vec<SampleScores>) -> Self {
        let mut tasks: BTreeMap<String, Vec<&SampleScores>> = BTreeMap::new();
        let mut turns: BTreeMap<String, Vec<&SampleScores>> = BTreeMap::new();
        for s in &samples {
            if let Some(t) = &s.sample.task {
                tasks.entry(t.clone()).or_default().push(s);
            }
            if let Some(turn) = s.sample.turn {
                turns.entry(turn.to_string()).or_default().push(s);
                turns.entry("all".into()).or_default().push(s);
            }
            if s.sample.final_turn == Some(true) {
                turns.entry("final".into()).or_default().push(s);
            }
        }
        let group = |g: BTreeMap<String, Vec<&SampleScores>>| {
            g.into_iter()
                .map(|(k, v)| (k, means(v.into_iter())))
                .collect()
        };
        Evaluation {
            mean: (!scores_twice(&samples)).then(|| means(samples.iter())),
            by_task: group(tasks),
            by_turn: group(turns),
            samples,
        }
    }

    /// The metrics that have a value for at least one sample.
    pub fn present_metrics(&self) -> Vec<Metric> {
        Metric::ALL
            .into_iter()
            .filter(|m| self.samples.iter().any(|s| s.get(*m).is_some()))
            .collect()
    }

    /// The labelled means: overall (when there is one), per task, per turn.
    pub fn labelled_means(&self) -> Vec<(String, &Means)> {
        let mut rows: Vec<(String, &Means)> =
            self.mean.iter().map(|m| ("mean".to_string(), m)).collect();
        rows.extend(self.by_task.iter().map(|(k, v)| (format!("task {k}"), v)));
        rows.extend(self.by_turn.iter().map(|(k, v)| (format!("turn {k}"), v)));
        rows
    }

    /// Number of samples with at least one error.
    pub fn failed(&self) -> usize {
        self.samples.iter().filter(|s| !s.errors.is_empty()).count()
    }

    /// The JSON document: `{"samples": [...], "mean": {...}, "mean_by_task", "mean_by_turn"}`.
    pub fn to_json(&self) -> Value {
        let opt =
            |p: &Option<std::path::PathBuf>| json!(p.as_ref().map(|p| p.display().to_string()));
        let samples: Vec<Value> = self
            .samples
            .iter()
            .map(|s| {
                let mut o = Map::new();
                o.insert("index".into(), json!(s.sample.index));
                o.insert("generated".into(), opt(&s.sample.generated));
                o.insert("ground_truth".into(), opt(&s.sample.ground_truth));
                o.insert("input".into(), opt(&s.sample.input));
                o.insert("task".into(), json!(s.sample.task));
                o.insert("turn".into(), json!(s.sample.turn));
                for m in Metric::ALL {
                    o.insert(m.key().into(), json!(s.get(m)));
                }
                o.insert("errors".into(), json!(s.errors));
                Value::Object(o)
            })
            .collect();
        let group = |g: &BTreeMap<String, Means>| -> Value {
            g.iter()
                .map(|(k, v)| (k.clone(), means_json(v)))
                .collect::<Map<_, _>>()
                .into()
        };
        json!({
            "samples": samples,
            "mean": self.mean.as_ref().map(means_json),
            "mean_by_task": group(&self.by_task),
            "mean_by_turn": group(&self.by_turn),
        })
    }

    /// CSV: one row per sample, then one row per mean (`index` = `mean`, `task:NAME`,
    /// `turn:NAME`).
    pub fn to_csv(&self) -> String {
        let mut out = String::from("index,generated,task,turn");
        for m in Metric::ALL {
            out.push(',');
            out.push_str(m.key());
        }
        out.push_str(",errors\n");
        let num = |v: Option<f64>| v.map(|v| format!("{v}")).unwrap_or_default();
        for s in &self.samples {
            let gen = s.sample.generated.as_ref().map(|p| p.display().to_string());
            let fields = [
                s.sample.index.to_string(),
                csv_field(&gen.unwrap_or_default()),
                csv_field(s.sample.task.as_deref().unwrap_or("")),
                s.sample.turn.map(|t| t.to_string()).unwrap_or_default(),
            ];
            out.push_str(&fields.join(","));
            for m in Metric::ALL {
                out.push(',');
                out.push_str(&num(s.get(m)));
            }
            out.push(',');
            out.push_str(&csv_field(&s.errors.join("; ")));
            out.push('\n');
        }
        let mut mean_row = |label: String, means: &Means| {
            out.push_str(&csv_field(&label));
            out.push_str(",,,");
            for m in Metric::ALL {
                out.push(',');
                out.push_str(&num(means.get(&m).copied().flatten()));
            }
            out.push_str(",\n");
        };
        if let Some(m) = &self.mean {
            mean_row("mean".into(), m);
        }
        for (k, v) in &self.by_task {
            mean_row(format!("task:{k}"), v);
        }
        for (k, v) in &self.by_turn {
            mean_row(format!("turn:{k}"), v);
        }
        out
    }

    /// A plain table of the means (overall, per task, per turn) for a terminal.
    pub fn to_table(&self) -> String {
        let metrics = self.present_metrics();
        let rows = self.labelled_means();
        let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(4).max(7);
        let mut out = format!("{:<width$}", "samples");
        for m in &metrics {
            out.push_str(&format!(" {:>10}", m.key()));
        }
        out.push('\n');
        for (label, means) in rows {
            out.push_str(&format!("{label:<width$}"));
            for m in &metrics {
                let v = means.get(m).copied().flatten();
                out.push_str(&match v {
                    Some(v) => format!(" {v:>10.4}"),
                    None => format!(" {:>10}", "-"),
                });
            }
            out.push('\n');
        }
        out.push_str(&format!(
            "{} samples, {} with errors\n",
            self.samples.len(),
            self.failed()
        ));
        out
    }
}

/// Whether some edits are scored twice: final-turn samples that are not turn samples, beside
/// turn samples (MagicBrush's layout).
fn scores_twice(samples: &[SampleScores]) -> bool {
    let final_only = samples
        .iter()
        .any(|s| s.sample.final_turn == Some(true) && s.sample.turn.is_none());
    final_only && samples.iter().any(|s| s.sample.turn.is_some())
}

fn means_json(m: &Means) -> Value {
    m.iter()
        .map(|(k, v)| (k.key().to_string(), json!(v)))
        .collect::<Map<_, _>>()
        .into()
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(index: usize, task: &str, turn: u32, clip_i: Option<f64>) -> SampleScores {
        let sample = Sample {
            index,
            task: Some(task.into()),
            turn: Some(turn),
            final_turn: Some(turn == 2),
            ..Sample::default()
        };
        let mut s = SampleScores::new(&sample);
        s.set(Metric::ClipI, clip_i);
        s.set(Metric::L1, Some(index as f64));
        s
    }

    #[test]
    fn means_by_group_leave_missing_values_out() {
        let e = Evaluation::new(vec![
            scored(0, "style", 1, Some(0.5)),
            scored(1, "style", 2, None),
            scored(2, "add", 2, Some(0.9)),
        ]);
        let mean = e.mean.as_ref().unwrap();
        assert_eq!(mean[&Metric::ClipI], Some(0.7));
        assert_eq!(mean[&Metric::L1], Some(1.0));
        assert_eq!(mean[&Metric::Dino], None);
        assert_eq!(e.by_task["style"][&Metric::ClipI], Some(0.5));
        assert_eq!(e.by_turn["final"][&Metric::L1], Some(1.5));
        assert_eq!(e.by_turn["1"][&Metric::L1], Some(0.0));
        assert_eq!(e.by_turn["all"][&Metric::L1], Some(1.0));
        let j = e.to_json();
        assert_eq!(j["samples"][1]["clip_i"], Value::Null);
        assert_eq!(j["mean"]["clip_i"], json!(0.7));
        assert_eq!(e.present_metrics(), vec![Metric::L1, Metric::ClipI]);
        let csv = e.to_csv();
        assert!(csv.lines().any(|l| l.starts_with("task:add,")), "{csv}");
        assert_eq!(csv.lines().count(), 1 + 3 + 1 + 2 + 4);
    }

    #[test]
    fn final_turn_samples_beside_turn_samples_have_no_overall_mean() {
        let mut last = scored(3, "style", 2, Some(0.1));
        last.sample.turn = None;
        let e = Evaluation::new(vec![scored(0, "style", 1, Some(0.5)), last]);
        assert!(e.mean.is_none());
        assert_eq!(e.by_turn["final"][&Metric::ClipI], Some(0.1));
        assert_eq!(e.by_turn["all"][&Metric::ClipI], Some(0.5));
        assert_eq!(e.to_json()["mean"], Value::Null);
        assert!(!e.to_csv().contains("\nmean,"));
        assert!(!e.to_table().contains("\nmean "));
    }

    #[test]
    fn non_finite_values_are_missing() {
        let mut s = SampleScores::new(&Sample::default());
        s.set(Metric::Psnr, Some(f64::INFINITY));
        assert_eq!(s.get(Metric::Psnr), None);
        assert_eq!(csv_field("a,\"b\""), "\"a,\"\"b\"\"\"");
    }
}
