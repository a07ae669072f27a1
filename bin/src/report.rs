//! `depthshrink report`: one self-contained HTML page (inline SVG, no network access) for a
//! study folder: top-1 against measured latency for every method (the Pareto plot, batch 1 and
//! 64), per-block latency and activation memory before and after merging, the searches' gate
//! trajectories, training curves, and a table of every network with the command that made it.
//! `--markdown` prints the table for RESULTS.md instead.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;
use depthshrink_shrinker::latency::LatencyTable;
use depthshrink_shrinker::study::{
    BLOCK_LATENCY, Method, RunRecord, SEARCH_METRICS, Study, StudyLatency, block_memory,
};
use depthshrink_shrinker::train::METRICS;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::plot::{self, COLOURS, FONT, draw_err, new_chart, padded, series_label};

#[derive(Args)]
pub struct ReportArgs {
    /// A study folder (e.g. results/cifar10): one directory per network with a summary.json,
    /// metrics.jsonl and, after a search, search-metrics.jsonl; latency.json (every network
    /// timed interleaved) and blocks.json (a per-block latency table) at its root.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// The HTML file to write [default: DIR/report.html].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Print the table of every network as Markdown (for RESULTS.md) instead of writing HTML.
    #[arg(long)]
    markdown: bool,
}

pub fn run(args: &ReportArgs) -> Result<(), String> {
    let study = Study::read(&args.dir).map_err(|e| e.to_string())?;
    if args.markdown {
        print!("{}", markdown_table(&study));
        return Ok(());
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.dir.join("report.html"));
    let html = render(&study)?;
    plot::write(&out, &html)?;
    let n = study.runs.len();
    let s = if n == 1 { "" } else { "s" };
    println!("wrote {} ({n} network{s})", out.display());
    Ok(())
}

/// The batch sizes the Pareto plots show, where the latency table has them.
const PARETO_BATCHES: [usize; 2] = [1, 64];

/// The whole page.
pub fn render(study: &Study) -> Result<String, String> {
    let mut html = String::new();
    let title = format!("depthshrink study: {}", study.dir.display());
    write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\n<style>{STYLE}</style></head><body>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    )
    .expect("writing to a String");
    let methods: Vec<&str> = Method::ALL
        .iter()
        .filter(|m| study.runs.iter().any(|r| r.1.method == **m))
        .map(|m| m.label())
        .collect();
    html += &format!(
        "<p>{} networks: {}. Every latency is the median of one process timing every network interleaved, merged networks merged; top-1 is the last epoch's on the test split.</p>\n",
        study.runs.len(),
        methods.join(", ")
    );

    html += "<h2>Top-1 against measured latency</h2>\n";
    match &study.latency {
        Some(latency) => {
            html += &format!(
                "<p>{}×{} inputs, {} threads, median of {} rounds. Runs sharing a group (seeds of one configuration) are joined by their spread.</p>\n",
                latency.res, latency.res, latency.threads, latency.runs
            );
            for batch in PARETO_BATCHES {
                if latency.batches.contains(&batch) {
                    html += &figure(&pareto_svg(study, latency, batch)?);
                }
            }
        }
        None => {
            html += "<p class=\"note\">No latency.json in the study folder yet: the Pareto plot needs every network timed interleaved.</p>\n";
        }
    }

    let blocks = study.dir.join(BLOCK_LATENCY);
    if blocks.is_file() {
        let table = LatencyTable::read(&blocks, None, None).map_err(|e| e.to_string())?;
        html += "<h2>Per block: latency and activation memory, original vs merged</h2>\n";
        let svg = plot::render(&[], &[("per-block latency".into(), table.clone())], None)?;
        html += &figure(&svg);
        html += &figure(&memory_svg(&table)?);
    }

    let searches: Vec<(String, PathBuf)> = study
        .runs
        .iter()
        .map(|(dir, r)| (r.name.clone(), dir.join(SEARCH_METRICS)))
        .filter(|(_, p)| p.is_file())
        .collect();
    if !searches.is_empty() {
        html += "<h2>Search: gate scores over the steps</h2>\n";
        for (name, path) in searches {
            let run = plot::read_run(&path, &name)?;
            if !run.gates.is_empty() {
                html += &figure(&plot::render(&[run], &[], None)?);
            }
        }
    }

    let baseline = study
        .runs
        .iter()
        .find(|r| r.1.method == Method::Baseline)
        .map(|r| (r.1.name.clone(), r.1.top1 / 100.0));
    let mut curves = String::new();
    for method in Method::ALL {
        let runs: Vec<plot::Run> = study
            .runs
            .iter()
            .filter(|(dir, r)| r.method == method && dir.join(METRICS).is_file())
            .map(|(dir, r)| plot::read_run(dir, &r.name))
            .collect::<Result<_, _>>()?;
        if runs.iter().any(|r| !r.epochs.is_empty()) {
            curves += &format!("<h3>{}</h3>\n", method.label());
            curves += &figure(&plot::render(&runs, &[], baseline.as_ref())?);
        }
    }
    if !curves.is_empty() {
        html += "<h2>Training curves</h2>\n";
        html += &curves;
    }

    html += "<h2>Every network</h2>\n";
    html += &html_table(study);
    html += "</body></html>\n";
    Ok(html)
}

const STYLE: &str = "body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}\
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}\
td.l,th.l{text-align:left}code{font-size:12px}figure{margin:1em 0}.note{color:#a33}";

fn figure(svg: &str) -> String {
    format!("<figure>{svg}</figure>\n")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The columns of both tables, one row per network.
fn rows(study: &Study) -> Vec<[String; 11]> {
    let ms = |r: &RunRecord, batch| {
        study
            .latency
            .as_ref()
            .and_then(|l| l.ms(&r.name, batch))
            .map_or("–".into(), |ms| format!("{ms:.2}"))
    };
    let opt = |v: Option<String>| v.unwrap_or_else(|| "–".into());
    study
        .runs
        .iter()
        .map(|(_, r)| {
            [
                r.name.clone(),
                r.method.label().into(),
                opt(r.keep.as_ref().map(|k| format!("{}/{}", k.kept(), k.len()))),
                opt(r.params.map(|p| format!("{:.3} M", p as f64 / 1e6))),
                opt(r.macs_m.map(|m| format!("{m:.1}"))),
                opt(r.fvcore_mflops.map(|m| format!("{m:.1}"))),
                ms(r, 1),
                ms(r, 64),
                format!("{:.2}", r.top1),
                format!("{} (seed {})", r.epochs, r.seed),
                r.command.clone(),
            ]
        })
        .collect()
}

const HEADERS: [&str; 11] = [
    "network",
    "method",
    "kept",
    "params",
    "MMACs",
    "MFLOPs (fvcore)",
    "ms, batch 1",
    "ms, batch 64",
    "top-1 %",
    "epochs",
    "command",
];

fn html_table(study: &Study) -> String {
    let left = |i: usize| i < 2 || i == 10;
    let mut html = String::from("<table>\n<tr>");
    for (i, h) in HEADERS.iter().enumerate() {
        let class = if left(i) { " class=\"l\"" } else { "" };
        html += &format!("<th{class}>{h}</th>");
    }
    html += "</tr>\n";
    for row in rows(study) {
        html += "<tr>";
        for (i, cell) in row.iter().enumerate() {
            let class = if left(i) { " class=\"l\"" } else { "" };
            let cell = if i == 10 {
                format!("<code>{}</code>", escape(cell))
            } else {
                escape(cell)
            };
            html += &format!("<td{class}>{cell}</td>");
        }
        html += "</tr>\n";
    }
    html + "</table>\n"
}

/// The table of every network as Markdown.
pub fn markdown_table(study: &Study) -> String {
    let mut md = format!("| {} |\n", HEADERS.join(" | "));
    let align: Vec<&str> = (0..HEADERS.len())
        .map(|i| if i < 2 || i == 10 { "---" } else { "---:" })
        .collect();
    md += &format!("|{}|\n", align.join("|"));
    for mut row in rows(study) {
        row[10] = format!("`{}`", row[10].replace('|', "\\|"));
        md += &format!("| {} |\n", row.join(" | "));
    }
    md
}

const PARETO_SIZE: (u32, u32) = (960, 440);

/// Top-1 against latency at `batch`, one colour per method; groups of seeds as min-max bars
/// at their mean latency.
fn pareto_svg(study: &Study, latency: &StudyLatency, batch: usize) -> Result<String, String> {
    let points: Vec<(&RunRecord, f64)> = study
        .runs
        .iter()
        .filter_map(|(_, r)| Some((r, latency.ms(&r.name, batch)?)))
        .collect();
    if points.is_empty() {
        return Ok(format!(
            "<p class=\"note\">No network of the study was timed at batch {batch}.</p>"
        ));
    }
    let (x_lo, x_hi) = plot::bounds(points.iter().map(|p| p.1));
    let (y_lo, y_hi) = plot::bounds(points.iter().map(|p| p.0.top1));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, PARETO_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let mut chart = new_chart(
            &root,
            format!("top-1 against latency, batch {batch} (up and left is better)"),
            padded(x_lo, x_hi, 0.08),
            padded(y_lo, y_hi, 0.12),
        )?;
        chart
            .configure_mesh()
            .x_desc("ms per forward pass (median)")
            .y_desc("top-1 %")
            .light_line_style(WHITE)
            .draw()
            .map_err(draw_err)?;
        for (i, method) in Method::ALL.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let mine: Vec<&(&RunRecord, f64)> =
                points.iter().filter(|p| p.0.method == *method).collect();
            if mine.is_empty() {
                continue;
            }
            chart
                .draw_series(mine.iter().map(|(r, ms)| {
                    EmptyElement::at((*ms, r.top1))
                        + Circle::new((0, 0), 5, colour.filled())
                        + Text::new(r.name.clone(), (7, -12), (FONT, 11).into_font())
                }))
                .map_err(draw_err)?
                .label(method.label())
                .legend(move |(x, y)| Circle::new((x + 6, y), 5, colour.filled()));
            let mut groups: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
            for (r, ms) in &mine {
                if let Some(g) = &r.group {
                    groups.entry(g).or_default().push((*ms, r.top1));
                }
            }
            for members in groups.values().filter(|m| m.len() > 1) {
                let x = members.iter().map(|m| m.0).sum::<f64>() / members.len() as f64;
                let (lo, hi) = plot::bounds(members.iter().map(|m| m.1));
                chart
                    .draw_series(LineSeries::new([(x, lo), (x, hi)], colour.stroke_width(2)))
                    .map_err(draw_err)?;
            }
        }
        series_label(&mut chart, SeriesLabelPosition::LowerRight)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// Peak activation memory per block (batch 1), original against merged.
fn memory_svg(table: &LatencyTable) -> Result<String, String> {
    let mem = block_memory(&table.arch.spec(), table.res);
    let kib = |b: u64| b as f64 / 1024.0;
    let hi = mem
        .iter()
        .map(|m| kib(m.unmerged_bytes))
        .fold(0.0, f64::max);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (plot::WIDTH, plot::ROW)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        memory_chart(&root, &mem, kib, hi, table)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

fn memory_chart(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    mem: &[depthshrink_shrinker::study::BlockMemory],
    kib: impl Fn(u64) -> f64,
    hi: f64,
    table: &LatencyTable,
) -> Result<(), String> {
    let last = mem.len() as f64;
    let mut chart = new_chart(
        area,
        format!(
            "peak activation memory per block, batch 1, {}²: the merged conv keeps no expanded map",
            table.res
        ),
        0.4..(last + 0.6),
        0.0..(hi * 1.08).max(1e-6),
    )?;
    chart
        .configure_mesh()
        .x_desc("block (activation index)")
        .y_desc("KiB")
        .x_labels(mem.len() + 2)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .disable_x_mesh()
        .light_line_style(WHITE)
        .draw()
        .map_err(draw_err)?;
    for (label, colour, merged) in [
        ("original", COLOURS[7], false),
        ("merged", COLOURS[0], true),
    ] {
        let bars = mem.iter().map(|m| {
            let (x, v) = if merged {
                (m.index as f64, kib(m.merged_bytes))
            } else {
                (m.index as f64 - 0.38, kib(m.unmerged_bytes))
            };
            Rectangle::new([(x, 0.0), (x + 0.38, v)], colour.filled())
        });
        chart
            .draw_series(bars)
            .map_err(draw_err)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
    }
    series_label(&mut chart, SeriesLabelPosition::UpperRight)
}
