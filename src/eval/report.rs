//! The HTML report of a run: one self-contained file (images as data URIs, no server, no
//! network) with the means overall and per task / turn, a histogram of each metric (SVG, with
//! labelled axes), and one row per sample with thumbnails of the input, generated and
//! ground-truth images and its scores, worst first; clicking a column header sorts by it.

use super::results::{Evaluation, Means, Metric};
use base64::Engine;
use image::RgbImage;

/// A JPEG thumbnail of `img` whose longer side is `side`.
pub fn thumbnail(img: &RgbImage, side: u32) -> Vec<u8> {
    let (w, h) = img.dimensions();
    let scale = f64::from(side) / f64::from(w.max(h).max(1));
    let (tw, th) = (
        ((f64::from(w) * scale).round() as u32).max(1),
        ((f64::from(h) * scale).round() as u32).max(1),
    );
    let small = crate::resize::resize_bicubic(img, tw, th);
    let mut out = Vec::new();
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85);
    // Encoding an in-memory RGB buffer into a Vec cannot fail; an empty thumbnail is shown
    // as missing if it ever did.
    if small.write_with_encoder(encoder).is_err() {
        out.clear();
    }
    out
}

fn data_uri(mime: &str, bytes: &[u8]) -> String {
    format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An SVG bar chart of the distribution of `values` in 20 bins, with labelled axes: the
/// metric `name` and its range along x, the number of samples along y.
pub fn histogram(values: &[f64], name: &str) -> String {
    const BINS: usize = 20;
    const BAR: f64 = 13.0;
    let (left, right, top, bottom) = (48.0, 12.0, 10.0, 40.0);
    let plot_w = BINS as f64 * BAR;
    let plot_h = 90.0;
    let (w, h) = (left + plot_w + right, top + plot_h + bottom);
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut counts = [0usize; BINS];
    for v in values {
        let t = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
        counts[((t * BINS as f64) as usize).min(BINS - 1)] += 1;
    }
    let top_count = counts.iter().copied().max().unwrap_or(0).max(1);
    let base = top + plot_h;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"10\">\n"
    );
    for (b, &c) in counts.iter().enumerate() {
        let bar = c as f64 / top_count as f64 * plot_h;
        svg.push_str(&format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bar:.1}\" fill=\"#466eb4\"/>\n",
            left + b as f64 * BAR + 1.0,
            base - bar,
            BAR - 2.0,
        ));
    }
    let axis = |x1: f64, y1: f64, x2: f64, y2: f64| {
        format!("<line x1=\"{x1}\" y1=\"{y1}\" x2=\"{x2}\" y2=\"{y2}\" stroke=\"black\"/>\n")
    };
    let text = |x: f64, y: f64, anchor: &str, t: &str| {
        format!(
            "<text x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"{anchor}\">{}</text>\n",
            escape(t)
        )
    };
    svg.push_str(&axis(left, top, left, base));
    svg.push_str(&axis(left, base, left + plot_w, base));
    let (lo_text, hi_text) = if values.is_empty() {
        ("–".to_string(), "–".to_string())
    } else {
        (format!("{lo:.4}"), format!("{hi:.4}"))
    };
    svg.push_str(&text(left, base + 13.0, "start", &lo_text));
    svg.push_str(&text(left + plot_w, base + 13.0, "end", &hi_text));
    svg.push_str(&text(left + plot_w / 2.0, base + 30.0, "middle", name));
    svg.push_str(&text(left - 4.0, base, "end", "0"));
    svg.push_str(&text(left - 4.0, top + 8.0, "end", &top_count.to_string()));
    svg.push_str(&format!(
        "<text transform=\"translate(12 {:.1}) rotate(-90)\" text-anchor=\"middle\">samples</text>\n",
        top + plot_h / 2.0
    ));
    svg.push_str("</svg>\n");
    svg
}

/// The metric the samples are ordered by, worst first: the first present of CLIP-I, DINO,
/// CLIP-T, SSIM, L1, then any other.
pub fn default_sort_metric(e: &Evaluation) -> Option<Metric> {
    let present = e.present_metrics();
    [
        Metric::ClipI,
        Metric::Dino,
        Metric::ClipT,
        Metric::Ssim,
        Metric::L1,
    ]
    .into_iter()
    .find(|m| present.contains(m))
    .or_else(|| present.first().copied())
}

fn fmt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "–".into())
}

fn means_rows(label: &str, means: &Means, metrics: &[Metric]) -> String {
    let cells: String = metrics
        .iter()
        .map(|m| format!("<td>{}</td>", fmt(means.get(m).copied().flatten())))
        .collect();
    format!("<tr><th>{}</th>{cells}</tr>\n", escape(label))
}

/// The whole report as one HTML document.
pub fn html(e: &Evaluation, title: &str) -> String {
    let metrics = e.present_metrics();
    let sort = default_sort_metric(e);
    let mut order: Vec<usize> = (0..e.samples.len()).collect();
    if let Some(m) = sort {
        // Worst first; samples without the value last.
        order.sort_by(|&a, &b| {
            let (va, vb) = (e.samples[a].get(m), e.samples[b].get(m));
            match (va, vb) {
                (Some(x), Some(y)) if m.higher_is_better() => x.total_cmp(&y),
                (Some(x), Some(y)) => y.total_cmp(&x),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => a.cmp(&b),
            }
        });
    }
    let head: String = metrics
        .iter()
        .map(|m| format!("<th>{}</th>", m.key()))
        .collect();
    let summary: String = e
        .labelled_means()
        .iter()
        .map(|(label, means)| means_rows(label, means, &metrics))
        .collect();
    let histograms: String = metrics
        .iter()
        .map(|&m| {
            let values: Vec<f64> = e.samples.iter().filter_map(|s| s.get(m)).collect();
            format!(
                "<figure><img alt=\"histogram of {k}\" src=\"{}\"><figcaption>{k} ({} samples)</figcaption></figure>\n",
                data_uri("image/svg+xml", histogram(&values, m.key()).as_bytes()),
                values.len(),
                k = m.key()
            )
        })
        .collect();
    let mut rows = String::new();
    for &i in &order {
        let s = &e.samples[i];
        let thumb = |slot: usize| match s.thumbnails.get(slot).cloned().flatten() {
            Some(b) if !b.is_empty() => format!("<img src=\"{}\">", data_uri("image/jpeg", &b)),
            _ => "–".into(),
        };
        let cells: String = metrics
            .iter()
            .map(|&m| {
                let v = s.get(m);
                let key = v.map(|v| v.to_string()).unwrap_or_default();
                format!("<td data-v=\"{key}\">{}</td>", fmt(v))
            })
            .collect();
        let caption = s
            .sample
            .instruction
            .as_deref()
            .or(s.sample.output_caption.as_deref())
            .unwrap_or("");
        rows.push_str(&format!(
            "<tr class=\"sample\" data-index=\"{idx}\"><td data-v=\"{idx}\">{idx}</td><td>{name}<br><small>{task}{caption}</small>{errors}</td><td>{}</td><td>{}</td><td>{}</td>{cells}</tr>\n",
            thumb(2),
            thumb(0),
            thumb(1),
            idx = s.sample.index,
            name = escape(&s.name()),
            task = s.sample.task.as_deref().map(|t| format!("[{}] ", escape(t))).unwrap_or_default(),
            caption = escape(caption),
            errors = s
                .errors
                .iter()
                .map(|m| format!("<div class=\"error\">{}</div>", escape(m)))
                .collect::<String>(),
        ));
    }
    let sorted_by = sort.map(|m| m.key()).unwrap_or("index");
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right;vertical-align:top}}
td:nth-child(2){{text-align:left;max-width:20em}} th.sortable{{cursor:pointer;background:#eef}}
img{{max-width:128px}} figure{{display:inline-block;margin:0.5em}} .error{{color:#b00}}
</style></head><body>
<h1>{title}</h1>
<p id="count">{n} samples, {failed} with errors; sorted by <span id="sorted-by">{sorted_by}</span>, worst first. Click a column to sort.</p>
<h2>Means</h2>
<table id="means"><tr><th></th>{head}</tr>
{summary}</table>
<h2>Distributions</h2>
{histograms}
<h2>Samples</h2>
<table id="samples"><thead><tr><th class="sortable">index</th><th>sample</th><th>input</th><th>generated</th><th>ground truth</th>{sortable_head}</tr></thead>
<tbody>
{rows}</tbody></table>
<script>
(function () {{
  var table = document.getElementById('samples');
  var heads = table.tHead.rows[0].cells;
  var dir = {{}};
  Array.prototype.forEach.call(heads, function (th, col) {{
    if (!th.classList.contains('sortable')) return;
    th.addEventListener('click', function () {{
      dir[col] = -(dir[col] || -1);
      var rows = Array.prototype.slice.call(table.tBodies[0].rows);
      rows.sort(function (a, b) {{
        var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
        if (x === '' && y === '') return 0;
        if (x === '') return 1;
        if (y === '') return -1;
        return dir[col] * (parseFloat(x) - parseFloat(y));
      }});
      rows.forEach(function (r) {{ table.tBodies[0].appendChild(r); }});
      document.getElementById('sorted-by').textContent = th.textContent;
    }});
  }});
  document.body.dataset.ready = 'yes';
}})();
</script>
</body></html>
"#,
        title = escape(title),
        n = e.samples.len(),
        failed = e.failed(),
        sortable_head = metrics
            .iter()
            .map(|m| format!("<th class=\"sortable\">{}</th>", m.key()))
            .collect::<String>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{Sample, SampleScores};

    #[test]
    fn samples_are_ordered_worst_first_and_escaped() {
        let mk = |i: usize, v: f64| {
            let mut s = SampleScores::new(&Sample {
                index: i,
                instruction: Some("<b>make it red</b>".into()),
                ..Sample::default()
            });
            s.set(Metric::ClipI, Some(v));
            s
        };
        let e = Evaluation::new(vec![mk(0, 0.9), mk(1, 0.2), mk(2, 0.5)]);
        let page = html(&e, "run");
        let pos = |i: usize| page.find(&format!("data-index=\"{i}\"")).unwrap();
        assert!(pos(1) < pos(2) && pos(2) < pos(0));
        assert!(page.contains("&lt;b&gt;make it red"));
        assert!(page.contains("data:image/svg+xml;base64,"));
    }

    #[test]
    fn histogram_has_labelled_axes_and_thumbnail_is_an_image() {
        let svg = histogram(&[0.1, 0.2, 0.2, 0.9], "clip_i");
        assert_eq!(svg.matches("<rect").count(), 20);
        assert_eq!(svg.matches("<line").count(), 2);
        for label in [
            ">0.1000<",
            ">0.9000<",
            ">clip_i<",
            ">samples<",
            ">2<",
            ">0<",
        ] {
            assert!(svg.contains(label), "{label} missing: {svg}");
        }
        let t = thumbnail(&RgbImage::new(64, 32), 16);
        let img = image::load_from_memory(&t).unwrap();
        assert_eq!((img.width(), img.height()), (16, 8));
    }
}
