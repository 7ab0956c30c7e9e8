//! Loss curves and the learning-rate schedule of a run, and several runs' evaluation curves side by
//! side, drawn from `metrics.jsonl` to SVG and PNG: lines, axes, ticks, a title and a legend, the
//! PNG's text in the public-domain 8 × 8 font of `font8x8` (every printable ASCII character).
//! A plotting library (plotters) would add a TrueType font and its rasterizer for the same
//! 800 × 500 line charts; this stays a few hundred lines with no system font needed.

use std::path::{Path, PathBuf};

use crate::error::{io_err, Result, TrainError};
use crate::metrics::{MetricRecord, MetricsLog};

/// One named polyline.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// (x, y) points.
    pub points: Vec<(f64, f64)>,
    /// RGB color.
    pub color: [u8; 3],
}

/// A chart: title, axis labels and series.
#[derive(Debug, Clone)]
pub struct Chart {
    /// Title.
    pub title: String,
    /// x-axis label.
    pub x_label: String,
    /// y-axis label.
    pub y_label: String,
    /// The lines.
    pub series: Vec<Series>,
}

const W: usize = 800;
const H: usize = 500;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

fn bounds(c: &Chart) -> (f64, f64, f64, f64) {
    let pts = c.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in pts.filter(|p| p.1.is_finite()) {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        return (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-12);
    (x0, x1, (y0 - pad).min(y0), y1 + pad)
}

fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = hi - lo;
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = vec![];
    while t <= hi + 1e-9 * span {
        out.push(t);
        t += step;
    }
    out
}

fn label(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-2 || v.abs() >= 1e5) {
        format!("{v:.1e}")
    } else if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

struct Frame {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Frame {
    fn px(&self, x: f64, y: f64) -> (f64, f64) {
        let pw = W as f64 - LEFT - RIGHT;
        let ph = H as f64 - TOP - BOTTOM;
        (
            LEFT + (x - self.x0) / (self.x1 - self.x0) * pw,
            TOP + (1.0 - (y - self.y0) / (self.y1 - self.y0)) * ph,
        )
    }
}

/// The chart as an SVG document.
pub fn svg(c: &Chart) -> String {
    let (x0, x1, y0, y1) = bounds(c);
    let f = Frame { x0, x1, y0, y1 };
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    s += &format!(
        "<text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"16\">{}</text>\n",
        W / 2,
        c.title
    );
    let (bx, by) = f.px(x0, y0);
    let (tx, ty) = f.px(x1, y1);
    s += &format!(
        "<rect x=\"{bx}\" y=\"{ty}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"black\"/>\n",
        tx - bx,
        by - ty
    );
    for t in ticks(x0, x1) {
        let (x, _) = f.px(t, y0);
        s += &format!("<line x1=\"{x}\" y1=\"{by}\" x2=\"{x}\" y2=\"{}\" stroke=\"black\"/><text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", by + 5.0, by + 18.0, label(t));
    }
    for t in ticks(y0, y1) {
        let (_, y) = f.px(x0, t);
        s += &format!("<line x1=\"{}\" y1=\"{y}\" x2=\"{bx}\" y2=\"{y}\" stroke=\"black\"/><line x1=\"{bx}\" y1=\"{y}\" x2=\"{tx}\" y2=\"{y}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n", bx - 5.0, bx - 8.0, y + 4.0, label(t));
    }
    s += &format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
        (bx + tx) / 2.0,
        H as f64 - 15.0,
        c.x_label
    );
    s += &format!("<text x=\"18\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {})\">{}</text>\n", (by + ty) / 2.0, (by + ty) / 2.0, c.y_label);
    for (i, se) in c.series.iter().enumerate() {
        let col = format!("rgb({},{},{})", se.color[0], se.color[1], se.color[2]);
        let pts: Vec<String> = se
            .points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|&(x, y)| {
                let (a, b) = f.px(x, y);
                format!("{a:.1},{b:.1}")
            })
            .collect();
        s += &format!(
            "<polyline fill=\"none\" stroke=\"{col}\" stroke-width=\"2\" points=\"{}\"/>\n",
            pts.join(" ")
        );
        let ly = ty + 15.0 + 18.0 * i as f64;
        s += &format!("<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{col}\" stroke-width=\"3\"/><text x=\"{}\" y=\"{}\">{}</text>\n", tx - 130.0, tx - 105.0, tx - 100.0, ly + 4.0, se.name);
    }
    s + "</svg>\n"
}

/// The 8 × 8 bitmap of a printable ASCII character (font8x8's public-domain Basic Latin; row
/// bytes, bit 0 the leftmost pixel); `None` for characters outside it.
pub fn glyph(c: char) -> Option<[u8; 8]> {
    let code = c as usize;
    (c == ' ' || (c.is_ascii_graphic() && code < 128)).then(|| font8x8::legacy::BASIC_LEGACY[code])
}

struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn new() -> Self {
        Self {
            px: vec![255; W * H * 3],
        }
    }

    fn dot(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if (0..W as i64).contains(&x) && (0..H as i64).contains(&y) {
            let i = (y as usize * W + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3], width: i64) {
        let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as i64).max(1);
        for k in 0..=n {
            let t = k as f64 / n as f64;
            let (x, y) = (
                (x0 + (x1 - x0) * t).round() as i64,
                (y0 + (y1 - y0) * t).round() as i64,
            );
            for dx in 0..width {
                for dy in 0..width {
                    self.dot(x + dx - width / 2, y + dy - width / 2, c);
                }
            }
        }
    }

    /// Draws `s` with its top-left corner at (x, y) (or its top-right with `anchor_right`), in
    /// 8 × 8 glyphs enlarged `scale / 2` times (`scale` 2: 8 pixels per character). A character
    /// without a glyph is drawn as `?`.
    fn text(&mut self, s: &str, x: f64, y: f64, scale: i64, anchor_right: bool) {
        let px = (scale / 2).max(1);
        let advance = 8 * px;
        let w = s.chars().count() as i64 * advance;
        let x0 = if anchor_right { x as i64 - w } else { x as i64 };
        for (i, ch) in s.chars().enumerate() {
            let g = glyph(ch).or_else(|| glyph('?')).unwrap_or([0; 8]);
            for (r, row) in g.iter().enumerate() {
                for col in 0..8 {
                    if row >> col & 1 == 1 {
                        for a in 0..px {
                            for b in 0..px {
                                self.dot(
                                    x0 + i as i64 * advance + col * px + a,
                                    y as i64 + r as i64 * px + b,
                                    [0, 0, 0],
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The chart as PNG bytes.
pub fn png(c: &Chart) -> Result<Vec<u8>> {
    let (x0, x1, y0, y1) = bounds(c);
    let f = Frame { x0, x1, y0, y1 };
    let mut cv = Canvas::new();
    let (bx, by) = f.px(x0, y0);
    let (tx, ty) = f.px(x1, y1);
    for t in ticks(y0, y1) {
        let (_, y) = f.px(x0, t);
        cv.line((bx, y), (tx, y), [230, 230, 230], 1);
        cv.line((bx - 5.0, y), (bx, y), [0, 0, 0], 1);
        cv.text(&label(t), bx - 8.0, y - 5.0, 2, true);
    }
    for t in ticks(x0, x1) {
        let (x, _) = f.px(t, y0);
        cv.line((x, by), (x, by + 5.0), [0, 0, 0], 1);
        let l = label(t);
        cv.text(&l, x - (l.len() as f64 * 4.0), by + 10.0, 2, false);
    }
    for (a, b) in [
        ((bx, by), (tx, by)),
        ((bx, ty), (tx, ty)),
        ((bx, by), (bx, ty)),
        ((tx, by), (tx, ty)),
    ] {
        cv.line(a, b, [0, 0, 0], 1);
    }
    cv.text(
        &c.x_label,
        (bx + tx) / 2.0 - 20.0,
        H as f64 - 25.0,
        2,
        false,
    );
    let title_x = W as f64 / 2.0 - c.title.chars().count() as f64 * 4.0;
    cv.text(&c.title, title_x, 6.0, 2, false);
    cv.text(&c.y_label, 10.0, 22.0, 2, false);
    for (i, s) in c.series.iter().enumerate() {
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|&(x, y)| f.px(x, y))
            .collect();
        for w in pts.windows(2) {
            cv.line(w[0], w[1], s.color, 2);
        }
        if pts.len() == 1 {
            cv.line(pts[0], pts[0], s.color, 5);
        }
        // The legend, in the top-right corner, wide enough for the longest name.
        let longest = c
            .series
            .iter()
            .map(|s| s.name.chars().count())
            .max()
            .unwrap_or(0);
        let lx = tx - 16.0 - 8.0 * longest as f64;
        let ly = ty + 12.0 + 16.0 * i as f64;
        cv.line((lx - 32.0, ly + 4.0), (lx - 7.0, ly + 4.0), s.color, 3);
        cv.text(&s.name, lx, ly, 2, false);
    }
    let mut out = Vec::new();
    {
        let mut enc = ::png::Encoder::new(&mut out, W as u32, H as u32);
        enc.set_color(::png::ColorType::Rgb);
        enc.set_depth(::png::BitDepth::Eight);
        let err = |e: ::png::EncodingError| TrainError::Corpus {
            corpus: "plot".into(),
            problem: format!("PNG encoding: {e}"),
        };
        let mut w = enc.write_header().map_err(err)?;
        w.write_image_data(&cv.px).map_err(err)?;
    }
    Ok(out)
}

/// The loss chart (training loss, evaluation train and validation loss) and the learning-rate
/// chart of a run's metrics.
pub fn charts(records: &[MetricRecord]) -> (Chart, Chart) {
    let train: Vec<(f64, f64)> = records
        .iter()
        .filter(|r| r.val_loss.is_none())
        .map(|r| (r.step as f64, r.train_loss as f64))
        .collect();
    let eval_train: Vec<(f64, f64)> = records
        .iter()
        .filter(|r| r.val_loss.is_some())
        .map(|r| (r.step as f64, r.train_loss as f64))
        .collect();
    let val: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| r.val_loss.map(|v| (r.step as f64, v as f64)))
        .collect();
    // The logged steps' rates, and the first evaluation's at step 0 (the schedule's start: a
    // warmup's 0). Later evaluations record the next step's rate, which would zig-zag the line.
    let lr: Vec<(f64, f64)> = records
        .iter()
        .filter(|r| r.val_loss.is_none() || r.step == 0)
        .map(|r| (r.step as f64, r.lr))
        .collect();
    let loss = Chart {
        title: "Loss".into(),
        x_label: "step".into(),
        y_label: "loss".into(),
        series: vec![
            Series {
                name: "train".into(),
                points: train,
                color: [31, 119, 180],
            },
            Series {
                name: "eval train".into(),
                points: eval_train,
                color: [44, 160, 44],
            },
            Series {
                name: "val".into(),
                points: val,
                color: [214, 39, 40],
            },
        ],
    };
    let lr = Chart {
        title: "Learning rate".into(),
        x_label: "step".into(),
        y_label: "lr".into(),
        series: vec![Series {
            name: "lr".into(),
            points: lr,
            color: [148, 103, 189],
        }],
    };
    (loss, lr)
}

/// Draws `loss.{svg,png}` and `lr.{svg,png}` into `run_dir` from its `metrics.jsonl`.
pub fn plot_run(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let records = MetricsLog::read(&run_dir.join("metrics.jsonl"))?;
    if records.is_empty() {
        return Err(TrainError::Checkpoint {
            path: run_dir.join("metrics.jsonl"),
            problem: "no metrics to plot".into(),
        });
    }
    let (loss, lr) = charts(&records);
    let mut out = vec![];
    for (name, chart) in [("loss", &loss), ("lr", &lr)] {
        let svg_path = run_dir.join(format!("{name}.svg"));
        std::fs::write(&svg_path, svg(chart)).map_err(io_err(&svg_path))?;
        let png_path = run_dir.join(format!("{name}.png"));
        std::fs::write(&png_path, png(chart)?).map_err(io_err(&png_path))?;
        out.extend([svg_path, png_path]);
    }
    Ok(out)
}

/// The evaluation metrics `plot --compare` draws from `records`: `val_loss`, then each task
/// metric in order of appearance. Each is the TensorBoard tag `eval/<metric>` of the same run
/// (the charts' y axis is labelled with it).
pub fn compare_metrics<'a>(records: impl IntoIterator<Item = &'a MetricRecord>) -> Vec<String> {
    let mut metrics: Vec<String> = vec!["val_loss".into()];
    for r in records {
        for k in r.metrics.keys() {
            if !metrics.contains(k) {
                metrics.push(k.clone());
            }
        }
    }
    metrics
}

/// Draws the runs in `dirs` on shared charts, one per evaluation metric that any of them logged
/// (`val_loss`, and a fine-tuning task's `val_accuracy`, `val_token_f1`, …), each line named by
/// its run directory: `<out>-<metric>.svg` and `.png` (the folder of `out` is created).
pub fn plot_compare(dirs: &[PathBuf], out: &Path) -> Result<Vec<PathBuf>> {
    const COLORS: [[u8; 3]; 6] = [
        [214, 39, 40],
        [31, 119, 180],
        [44, 160, 44],
        [148, 103, 189],
        [255, 127, 14],
        [140, 86, 75],
    ];
    let mut runs = vec![];
    for d in dirs {
        let records = MetricsLog::read(&d.join("metrics.jsonl"))?;
        if records.is_empty() {
            return Err(TrainError::Checkpoint {
                path: d.join("metrics.jsonl"),
                problem: "no metrics to plot".into(),
            });
        }
        let name = d.file_name().map_or_else(
            || d.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        runs.push((name, records));
    }
    let metrics = compare_metrics(runs.iter().flat_map(|(_, r)| r));
    if let Some(dir) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let mut written = vec![];
    for metric in metrics {
        let series: Vec<Series> = runs
            .iter()
            .enumerate()
            .map(|(i, (name, records))| Series {
                name: name.clone(),
                points: records
                    .iter()
                    .filter_map(|r| {
                        let v = if metric == "val_loss" {
                            r.val_loss.map(f64::from)
                        } else {
                            r.metrics.get(&metric).copied()
                        };
                        v.map(|v| (r.step as f64, v))
                    })
                    .collect(),
                color: COLORS[i % COLORS.len()],
            })
            .collect();
        let chart = Chart {
            title: format!(
                "Validation {}",
                metric.trim_start_matches("val_").replace('_', " ")
            ),
            x_label: "step".into(),
            y_label: format!("eval/{metric}"),
            series,
        };
        let stem = out
            .file_name()
            .map_or("compare".into(), |s| s.to_string_lossy().into_owned());
        let base = out.with_file_name(format!("{stem}-{metric}"));
        let (svg_path, png_path) = (base.with_extension("svg"), base.with_extension("png"));
        std::fs::write(&svg_path, svg(&chart)).map_err(io_err(&svg_path))?;
        std::fs::write(&png_path, png(&chart)?).map_err(io_err(&png_path))?;
        written.extend([svg_path, png_path]);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every character of every label the plots draw has a non-empty glyph (the old font lacked
    /// `f`, `c`, `u`, `y`, `_`, capitals…).
    #[test]
    fn every_label_character_has_a_glyph() {
        let labels = [
            "Loss",
            "Learning rate",
            "step",
            "loss",
            "lr",
            "train",
            "eval train",
            "val",
            "Validation token f1",
            "val_token_f1",
            "val_accuracy",
            "Validation accuracy",
            "val_exact_match",
            "val_macro_f1",
            "pretrained",
            "from scratch",
            "1.0e-4",
            "0.25",
            "bert-finetune-pairs",
            "runs/T5-X_2",
        ];
        for l in labels {
            for ch in l.chars() {
                let g = glyph(ch).unwrap_or_else(|| panic!("{ch:?} of {l:?} has no glyph"));
                assert!(
                    ch == ' ' || g.iter().any(|&row| row != 0),
                    "{ch:?} is blank"
                );
            }
        }
        // And they are drawn: the title's pixels appear in the PNG's first rows.
        let chart = Chart {
            title: "Validation token f1".into(),
            x_label: "step".into(),
            y_label: "val_token_f1".into(),
            series: vec![],
        };
        let bytes = png(&chart).unwrap();
        let mut reader = ::png::Decoder::new(std::io::Cursor::new(&bytes))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        reader.next_frame(&mut buf).unwrap();
        let dark_in_title_rows = buf[..W * 3 * 16].chunks(3).filter(|p| p[0] < 128).count();
        assert!(dark_in_title_rows > 50, "{dark_in_title_rows}");
    }

    /// The learning-rate chart starts at step 0 (the first evaluation's record) and otherwise
    /// follows the logged steps, not the evaluations' records.
    #[test]
    fn the_lr_chart_starts_at_step_0() {
        let rec = |step: u64, lr: f64, val: Option<f32>| MetricRecord {
            step,
            lr,
            train_loss: 2.0,
            tokens_per_sec: 0.0,
            elapsed_s: 0.0,
            val_loss: val,
            grad_norm: None,
            mfu: None,
            peak_rss_mib: None,
            metrics: Default::default(),
        };
        let records = [
            rec(0, 0.0, Some(4.0)),
            rec(10, 9e-5, None),
            rec(20, 1.9e-4, None),
            rec(20, 2e-4, Some(3.0)),
        ];
        let (_, lr) = charts(&records);
        assert_eq!(
            lr.series[0].points,
            vec![(0.0, 0.0), (10.0, 9e-5), (20.0, 1.9e-4)]
        );
    }

    /// `plot --compare`: one chart per evaluation metric, lines named by run directory, the
    /// output folder created.
    #[test]
    fn compare_names_the_runs_and_draws_each_metric() {
        let tmp = tempfile::tempdir().unwrap();
        for (run, acc) in [("pretrained-run", 0.6), ("scratch-run", 0.5)] {
            let dir = tmp.path().join(run);
            std::fs::create_dir_all(&dir).unwrap();
            let log = MetricsLog::new(&dir.join("metrics.jsonl"));
            for step in [0u64, 10] {
                log.append(&MetricRecord {
                    step,
                    lr: 1e-3,
                    train_loss: 2.0,
                    tokens_per_sec: 0.0,
                    elapsed_s: 0.0,
                    val_loss: Some(2.0 - step as f32 / 100.0),
                    grad_norm: None,
                    mfu: None,
                    peak_rss_mib: None,
                    metrics: [("val_accuracy".to_string(), acc)].into(),
                })
                .unwrap();
            }
        }
        let out = tmp.path().join("new/folder/cmp");
        let files = plot_compare(
            &[
                tmp.path().join("pretrained-run"),
                tmp.path().join("scratch-run"),
            ],
            &out,
        )
        .unwrap();
        assert_eq!(files.len(), 4, "{files:?}");
        let svg =
            std::fs::read_to_string(tmp.path().join("new/folder/cmp-val_accuracy.svg")).unwrap();
        assert!(svg.contains("pretrained-run") && svg.contains("scratch-run"));
        assert!(tmp.path().join("new/folder/cmp-val_loss.png").exists());
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 2000.0), vec![0.0, 500.0, 1000.0, 1500.0, 2000.0]);
        assert_eq!(label(0.0001), "1.0e-4");
        assert_eq!(label(250.0), "250");
    }
}
