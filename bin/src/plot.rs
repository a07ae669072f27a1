//! `depthshrink plot`: the figures a person would rather look at than read, as one SVG.
//! Training curves (test and train top-1, loss) of one or more runs, overlaid; the gate scores
//! of a search run over its steps, kept and removed activations in two colours; a latency
//! table's per-block times, unmerged against merged. `demo` writes the same figure for its run.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use clap::Args;
use depthshrink_nn::checkpoint::write_atomic;
use depthshrink_shrinker::latency::LatencyTable;
use depthshrink_shrinker::train::{EpochMetrics, METRICS};
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use serde::Deserialize;
use serde_json::Value;

use crate::args::refuse_overwriting_inputs;

#[derive(Args)]
pub struct PlotArgs {
    /// Run directories of train, search or finetune (or their metrics.jsonl), whose curves
    /// are overlaid, and latency tables (`.json`, from `depthshrink latency --out`).
    #[arg(required = true, value_name = "RUN|TABLE")]
    inputs: Vec<PathBuf>,
    /// The SVG to write [default: plot.svg in the first run directory, or beside the table].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Draw a horizontal line at this test top-1 (percent, 0-100), e.g. the pretrained
    /// network's.
    #[arg(long, value_name = "PCT", value_parser = percent)]
    reference: Option<f64>,
    /// Legend names for the inputs, in their order (default: their paths); e.g.
    /// `--label searched --label random`. Fewer labels than inputs leave the rest as paths.
    #[arg(long, value_name = "NAME")]
    label: Vec<String>,
}

/// One search step's record in `metrics.jsonl` (written every `search.log_every` steps).
#[derive(Clone, Debug, Deserialize)]
pub struct GateRecord {
    pub step: usize,
    pub gates: Vec<f32>,
    pub keep: Vec<u8>,
}

/// What one run directory's `metrics.jsonl` holds.
pub struct Run {
    pub label: String,
    pub epochs: Vec<EpochMetrics>,
    pub gates: Vec<GateRecord>,
}

/// A finite percentage in [0, 100] (clap's parser for `--reference`).
fn percent(arg: &str) -> Result<f64, String> {
    match arg.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err("must be a percentage from 0 to 100".into()),
    }
}

/// The `metrics.jsonl` a run input names: the file itself, or the one in a run directory.
fn metrics_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(METRICS)
    } else {
        path.to_path_buf()
    }
}

/// Reads a run directory (or a `metrics.jsonl` path). A record repeated by a resumed run
/// (same epoch or step) counts once, the later one. A line that is not complete JSON (the last
/// line of a run still writing it) is skipped, with a warning on stderr naming it.
pub fn read_run(path: &Path, label: &str) -> Result<Run, String> {
    let file = metrics_file(path);
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let mut epochs = BTreeMap::new();
    let mut gates = BTreeMap::new();
    let mut torn = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{} line {}", file.display(), i + 1);
        let Ok(value) = serde_json::from_str::<Value>(line) else {
            torn.push(i + 1);
            continue;
        };
        if value.get("gates").is_some() {
            let r: GateRecord =
                serde_json::from_value(value).map_err(|e| format!("{}: {e}", at()))?;
            gates.insert(r.step, r);
        } else {
            let m: EpochMetrics =
                serde_json::from_value(value).map_err(|e| format!("{}: {e}", at()))?;
            epochs.insert(m.epoch, m);
        }
    }
    if !torn.is_empty() {
        eprintln!("warning: {}", skipped_lines(&file, &torn));
    }
    if epochs.is_empty() && gates.is_empty() {
        return Err(format!("{} holds no records yet", file.display()));
    }
    Ok(Run {
        label: label.to_string(),
        epochs: epochs.into_values().collect(),
        gates: gates.into_values().collect(),
    })
}

/// "F: skipped 2 incomplete lines (7, 9); plotting the complete ones", for the warning.
fn skipped_lines(file: &Path, lines: &[usize]) -> String {
    const SHOWN: usize = 5;
    let mut list: Vec<String> = lines.iter().take(SHOWN).map(usize::to_string).collect();
    if lines.len() > SHOWN {
        list.push("…".into());
    }
    let s = if lines.len() == 1 { "" } else { "s" };
    format!(
        "{}: skipped {} incomplete line{s} ({}); plotting the complete ones",
        file.display(),
        lines.len(),
        list.join(", ")
    )
}

/// A latency table among the inputs (else a run).
fn is_table(path: &Path) -> bool {
    path.is_file() && path.extension().is_some_and(|e| e == "json")
}

pub fn run(args: &PlotArgs) -> Result<(), String> {
    let out = match &args.out {
        Some(out) => out.clone(),
        None => {
            let first = &args.inputs[0];
            let dir = if first.is_dir() {
                first.as_path()
            } else {
                first.parent().unwrap_or(Path::new("."))
            };
            dir.join("plot.svg")
        }
    };
    let read: Vec<PathBuf> = args
        .inputs
        .iter()
        .map(|p| {
            if is_table(p) {
                p.clone()
            } else {
                metrics_file(p)
            }
        })
        .collect();
    let inputs: Vec<(&str, &Path)> = read.iter().map(|p| ("input", p.as_path())).collect();
    refuse_overwriting_inputs("--out", &out, &inputs)?;
    let mut runs = Vec::new();
    let mut tables = Vec::new();
    for (path, label) in args
        .inputs
        .iter()
        .zip(legend_names(&args.inputs, &args.label)?)
    {
        if is_table(path) {
            tables.push((
                label,
                LatencyTable::read(path, None, None).map_err(|e| e.to_string())?,
            ));
        } else {
            runs.push(read_run(path, &label)?);
        }
    }
    let reference = args.reference.map(|p| ("reference".to_string(), p / 100.0));
    write(&out, &render(&runs, &tables, reference.as_ref())?)?;
    println!("wrote {}", out.display());
    Ok(())
}

/// Each input's legend name: its `--label` if given, else its path (a run's `metrics.jsonl`
/// dropped).
fn legend_names(inputs: &[PathBuf], labels: &[String]) -> Result<Vec<String>, String> {
    if labels.len() > inputs.len() {
        return Err(format!(
            "--label given {} times for {} input(s)",
            labels.len(),
            inputs.len()
        ));
    }
    let path_name = |path: &PathBuf| {
        let name = path.to_string_lossy();
        name.trim_end_matches(METRICS)
            .trim_end_matches('/')
            .to_string()
    };
    Ok(inputs
        .iter()
        .enumerate()
        .map(|(i, path)| labels.get(i).cloned().unwrap_or_else(|| path_name(path)))
        .collect())
}

/// Writes a rendered figure atomically.
pub fn write(path: &Path, svg: &str) -> Result<(), String> {
    write_atomic(path, svg.as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

pub const WIDTH: u32 = 960;
pub const ROW: u32 = 340;
pub const FONT: &str = "sans-serif";
/// Tableau's ten colours: distinguishable, and readable on white.
pub const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
const KEPT: RGBColor = COLOURS[0];
const REMOVED: RGBColor = COLOURS[1];

/// The whole figure, one row per kind: curves (top-1 | loss), then one row per search run's
/// gate scores, then one per latency table. `reference` is a labelled test top-1 (0-1).
pub fn render(
    runs: &[Run],
    tables: &[(String, LatencyTable)],
    reference: Option<&(String, f64)>,
) -> Result<String, String> {
    let curves = runs.iter().any(|r| !r.epochs.is_empty());
    let searches: Vec<&Run> = runs.iter().filter(|r| !r.gates.is_empty()).collect();
    let rows = usize::from(curves) + searches.len() + tables.len();
    if rows == 0 {
        return Err("nothing to plot".into());
    }
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (WIDTH, ROW * rows as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let areas = root.split_evenly((rows, 1));
        let mut areas = areas.iter();
        if curves {
            let halves = areas.next().expect("one area per row").split_evenly((1, 2));
            accuracy_chart(&halves[0], runs, reference)?;
            loss_chart(&halves[1], runs)?;
        }
        for run in searches {
            gate_chart(areas.next().expect("one area per row"), run)?;
        }
        for (name, table) in tables {
            latency_chart(areas.next().expect("one area per row"), name, table)?;
        }
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

pub fn draw_err(e: impl std::fmt::Display) -> String {
    format!("drawing the figure: {e}")
}

/// The smallest and largest of `values`.
pub fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

/// `lo..hi` widened by `pad` of its span on both sides (never empty).
pub fn padded(lo: f64, hi: f64, pad: f64) -> Range<f64> {
    let span = (hi - lo).max(1e-3);
    (lo - pad * span)..(hi + pad * span)
}

fn epoch_range(runs: &[Run]) -> Range<f64> {
    let last = runs
        .iter()
        .filter_map(|r| r.epochs.last())
        .map(|m| m.epoch)
        .max()
        .unwrap_or(1);
    0.0..(last.max(1) as f64 + 0.5)
}

/// A chart over the runs' epochs, at most one tick per epoch (whole-epoch labels never repeat).
fn epoch_chart<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, Shift>,
    caption: &str,
    runs: &[Run],
    y: Range<f64>,
    y_desc: &str,
) -> Result<Chart<'a, 'b>, String> {
    let x = epoch_range(runs);
    let ticks = (x.end as usize + 1).min(12);
    let mut chart = new_chart(area, caption, x, y)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .x_labels(ticks)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc(y_desc)
        .light_line_style(WHITE)
        .draw()
        .map_err(draw_err)?;
    Ok(chart)
}

/// A titled chart with room for axis labels: every panel of the figure.
pub fn new_chart<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, Shift>,
    caption: impl AsRef<str>,
    x: Range<f64>,
    y: Range<f64>,
) -> Result<Chart<'a, 'b>, String> {
    ChartBuilder::on(area)
        .caption(caption, (FONT, 17))
        .margin(12)
        .x_label_area_size(34)
        .y_label_area_size(50)
        .build_cartesian_2d(x, y)
        .map_err(draw_err)
}

pub type Chart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

pub fn series_label<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    position: SeriesLabelPosition,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font((FONT, 13))
        .draw()
        .map_err(draw_err)
}

/// Each run's training values (faint) and test values (bold, labelled with the last one) per
/// epoch, one colour per run.
fn draw_curves(
    chart: &mut Chart<'_, '_>,
    runs: &[Run],
    train: fn(&EpochMetrics) -> f64,
    test: fn(&EpochMetrics) -> Option<f64>,
    show: fn(f64) -> String,
) -> Result<(), String> {
    for (i, run) in runs.iter().filter(|r| !r.epochs.is_empty()).enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let faint = run.epochs.iter().map(|m| (m.epoch as f64, train(m)));
        chart
            .draw_series(LineSeries::new(faint, colour.mix(0.35).stroke_width(1)))
            .map_err(draw_err)?;
        let bold: Vec<(f64, f64)> = run
            .epochs
            .iter()
            .filter_map(|m| Some((m.epoch as f64, test(m)?)))
            .collect();
        let last = bold
            .last()
            .map_or(String::new(), |p| format!(" ({})", show(p.1)));
        chart
            .draw_series(LineSeries::new(bold, colour.stroke_width(2)).point_size(2))
            .map_err(draw_err)?
            .label(format!("{}{last}", run.label))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
            });
    }
    Ok(())
}

/// Test top-1 (bold) and training top-1 (faint; augmented, dropout on) per epoch.
fn accuracy_chart(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    runs: &[Run],
    reference: Option<&(String, f64)>,
) -> Result<(), String> {
    let values = runs
        .iter()
        .flat_map(|r| &r.epochs)
        .flat_map(|m| [Some(m.train_acc), m.val_acc])
        .flatten()
        .chain(reference.map(|r| r.1));
    let (lo, hi) = bounds(values);
    let y = padded(100.0 * lo, 100.0 * hi, 0.08);
    let y = y.start.max(0.0)..y.end.min(100.0);
    let mut chart = epoch_chart(area, "top-1 (test bold, train faint)", runs, y, "%")?;
    draw_curves(
        &mut chart,
        runs,
        |m| 100.0 * m.train_acc,
        |m| m.val_acc.map(|a| 100.0 * a),
        |a| format!("{a:.2}%"),
    )?;
    if let Some((name, top1)) = reference {
        let x = epoch_range(runs);
        let line = vec![(x.start, 100.0 * top1), (x.end, 100.0 * top1)];
        chart
            .draw_series(LineSeries::new(line, BLACK.mix(0.6).stroke_width(1)))
            .map_err(draw_err)?
            .label(format!("{name} ({:.2}%)", 100.0 * top1))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.6)));
    }
    series_label(&mut chart, SeriesLabelPosition::LowerRight)
}

/// Test loss (bold) and training loss (faint) per epoch.
fn loss_chart(area: &DrawingArea<SVGBackend<'_>, Shift>, runs: &[Run]) -> Result<(), String> {
    let hi = runs
        .iter()
        .flat_map(|r| &r.epochs)
        .flat_map(|m| [Some(m.train_loss), m.val_loss])
        .flatten()
        .fold(0.0, f64::max);
    let y = 0.0..(hi * 1.05).max(1e-3);
    let mut chart = epoch_chart(area, "loss (test bold, train faint)", runs, y, "")?;
    draw_curves(
        &mut chart,
        runs,
        |m| m.train_loss,
        |m| m.val_loss,
        |l| format!("{l:.3}"),
    )?;
    series_label(&mut chart, SeriesLabelPosition::UpperRight)
}

/// Each activation index's gate score over the search's steps, coloured by the final decision.
fn gate_chart(area: &DrawingArea<SVGBackend<'_>, Shift>, run: &Run) -> Result<(), String> {
    let last = run.gates.last().expect("a search run has gate records");
    let kept = last.keep.iter().filter(|&&k| k == 1).count();
    let (lo, hi) = bounds(run.gates.iter().flat_map(|r| &r.gates).map(|&g| g as f64));
    let steps = padded(0.0, last.step as f64, 0.0);
    let mut chart = new_chart(
        area,
        format!(
            "gate scores of {} ({kept} of {} activations kept)",
            run.label,
            last.keep.len()
        ),
        steps.start..steps.end * 1.04,
        padded(lo, hi, 0.05),
    )?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("score")
        .light_line_style(WHITE)
        .draw()
        .map_err(draw_err)?;
    for index in 0..last.gates.len() {
        let colour = if last.keep.get(index) == Some(&1) {
            KEPT
        } else {
            REMOVED
        };
        let points = run
            .gates
            .iter()
            .filter_map(|r| Some((r.step as f64, *r.gates.get(index)? as f64)));
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(1)))
            .map_err(draw_err)?;
        let end = (last.step as f64, last.gates[index] as f64);
        chart
            .draw_series([Text::new(
                index.to_string(),
                (end.0 * 1.005, end.1),
                (FONT, 11).into_font().color(&colour),
            )])
            .map_err(draw_err)?;
    }
    for (name, colour) in [("kept", KEPT), ("removed", REMOVED)] {
        chart
            .draw_series(LineSeries::new(std::iter::empty(), colour))
            .map_err(draw_err)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
            });
    }
    series_label(&mut chart, SeriesLabelPosition::UpperLeft)
}

/// Per-block latency, unmerged and merged side by side, labelled by activation index.
fn latency_chart(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    name: &str,
    table: &LatencyTable,
) -> Result<(), String> {
    let hi = table
        .blocks
        .iter()
        .map(|b| b.unmerged_ms.max(b.merged_ms))
        .fold(0.0, f64::max);
    let first = table.blocks.first().map_or(0, |b| b.index) as f64;
    let last = table.blocks.last().map_or(0, |b| b.index) as f64;
    let mut chart = new_chart(
        area,
        format!(
            "{name}: batch {}, {}², network {:.2} ms unmerged, {:.2} ms every block merged",
            table.batch, table.res, table.network_ms, table.merged_network_ms
        ),
        (first - 0.6)..(last + 0.6),
        0.0..(hi * 1.08).max(1e-6),
    )?;
    chart
        .configure_mesh()
        .x_desc("block (activation index)")
        .y_desc("ms")
        .x_labels(table.blocks.len() + 2)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .disable_x_mesh()
        .light_line_style(WHITE)
        .draw()
        .map_err(draw_err)?;
    for (label, colour, merged) in [("unmerged", COLOURS[7], false), ("merged", KEPT, true)] {
        let bars = table.blocks.iter().map(|b| {
            let (x, ms) = if merged {
                (b.index as f64, b.merged_ms)
            } else {
                (b.index as f64 - 0.38, b.unmerged_ms)
            };
            Rectangle::new([(x, 0.0), (x + 0.38, ms)], colour.filled())
        });
        chart
            .draw_series(bars)
            .map_err(draw_err)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
    }
    series_label(&mut chart, SeriesLabelPosition::UpperRight)
}

#[cfg(test)]
mod tests {
    use super::*;
    use depthshrink_nn::arch::ArchConfig;
    use depthshrink_shrinker::latency::BlockLatency;

    fn epoch_line(epoch: usize, val_acc: f64) -> String {
        format!(
            r#"{{"epoch":{epoch},"train_loss":1.5,"train_acc":0.4,"val_loss":1.2,"val_acc":{val_acc},"val_top5":0.9,"lr":0.1,"seconds":3.0,"eval_seconds":0.5,"images_per_s":100.0,"images":300}}"#
        )
    }

    fn write(name: &str, lines: &[String]) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("depthshrink-plot-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(METRICS), lines.join("\n") + "\n").unwrap();
        dir
    }

    #[test]
    fn a_run_reads_epochs_and_gates_and_a_resumed_record_counts_once() {
        let gate = |step: usize, g: f32| {
            format!(r#"{{"step":{step},"epoch":1,"gates":[{g},0.5,0.1],"keep":[1,0,1]}}"#)
        };
        let dir = write(
            "read",
            &[
                gate(2, 0.9),
                gate(4, 0.8),
                epoch_line(1, 0.5),
                gate(4, 0.7),
                epoch_line(1, 0.6),
            ],
        );
        let run = read_run(&dir, "search").unwrap();
        assert_eq!(run.epochs.len(), 1);
        assert_eq!(run.epochs[0].val_acc, Some(0.6));
        assert_eq!(run.gates.len(), 2);
        assert_eq!(run.gates[1].gates[0], 0.7);
    }

    #[test]
    fn labels_name_the_inputs_in_order_and_paths_name_the_rest() {
        let inputs = ["runs/a/metrics.jsonl", "runs/b/", "t.json"].map(PathBuf::from);
        let names = legend_names(&inputs, &["searched".into()]).unwrap();
        assert_eq!(names, ["searched", "runs/b", "t.json"]);
        let err = legend_names(&inputs[..1], &["x".into(), "y".into()]).unwrap_err();
        assert!(err.contains("--label given 2 times for 1 input"), "{err}");
    }

    #[test]
    fn a_half_written_line_is_skipped_and_the_complete_ones_are_read() {
        let dir = write("torn", &[epoch_line(1, 0.5), epoch_line(2, 0.6)]);
        let file = dir.join(METRICS);
        let mut text = std::fs::read_to_string(&file).unwrap();
        text.push_str(r#"{"epoch": 3, "train_loss": 1."#);
        std::fs::write(&file, text).unwrap();
        let run = read_run(&dir, "live").unwrap();
        assert_eq!(run.epochs.len(), 2);
        assert_eq!(
            skipped_lines(&file, &[3]),
            format!(
                "{}: skipped 1 incomplete line (3); plotting the complete ones",
                file.display()
            )
        );
        let many = skipped_lines(&file, &[1, 2, 3, 4, 5, 6, 7]);
        assert!(many.contains("skipped 7 incomplete lines (1, 2, 3, 4, 5, …)"));
    }

    #[test]
    fn a_reference_is_a_finite_percentage() {
        assert_eq!(percent("82.5"), Ok(82.5));
        assert_eq!(percent("0"), Ok(0.0));
        for bad in ["nan", "inf", "1e308", "-1", "100.5", "x"] {
            assert!(percent(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bad_record_is_named_by_file_and_line() {
        let dir = write(
            "bad",
            &[
                epoch_line(1, 0.5),
                r#"{"epoch": 2, "train_loss": "x"}"#.into(),
            ],
        );
        let err = read_run(&dir, "x").err().unwrap();
        assert!(err.contains("metrics.jsonl line 2"), "{err}");
        let err = read_run(&dir.join("missing"), "x").err().unwrap();
        assert!(
            err.contains("cannot read") && err.contains("missing"),
            "{err}"
        );
        assert!(render(&[], &[], None).is_err());
    }

    #[test]
    fn the_figure_draws_every_run_gate_and_block() {
        let gates = (1..=3).map(|s| GateRecord {
            step: 2 * s,
            gates: vec![0.1 * s as f32, -0.2, 0.3],
            keep: vec![1, 0, 1],
        });
        let runs = [
            Run {
                label: "finetune".into(),
                epochs: (1..=4)
                    .map(|e| serde_json::from_str(&epoch_line(e, 0.1 * e as f64)).unwrap())
                    .collect(),
                gates: Vec::new(),
            },
            Run {
                label: "search".into(),
                epochs: Vec::new(),
                gates: gates.collect(),
            },
        ];
        let block = |index, unmerged_ms, merged_ms| BlockLatency {
            index,
            cin: 16,
            cout: 24,
            k: 3,
            stride: 1,
            size: 8,
            unmerged_ms,
            merged_ms,
        };
        let table = LatencyTable {
            arch: ArchConfig::mobilenet_v2(0.5, 10, true),
            res: 32,
            batch: 64,
            threads: 2,
            blocks: vec![block(1, 2.0, 3.0), block(2, 4.0, 1.5)],
            network_ms: 9.0,
            merged_network_ms: 7.0,
        };
        let reference = ("pretrained".to_string(), 0.42);
        let svg = render(&runs, &[("table".into(), table)], Some(&reference)).unwrap();
        for text in [
            "finetune (40.00%)",
            "pretrained (42.00%)",
            "gate scores of search (2 of 3 activations kept)",
            "table: batch 64, 32², network 9.00 ms unmerged",
            ">\nremoved\n<",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
        // Three rows: curves, gates, latency.
        assert!(svg.starts_with(&format!(r#"<svg width="{WIDTH}" height="{}""#, 3 * ROW)));
    }
}
