//! `depthshrink latency`: per-block latency table, unmerged vs merged, measured here.

use std::path::{Path, PathBuf};

use clap::Args;
use depthshrink_nn::arch::ArchConfig;
use depthshrink_shrinker::latency::{LatencyTable, measure};
use depthshrink_shrinker::study::{self, STUDY_LATENCY, Study};
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::{ArchArgs, write_json};

#[derive(Args)]
pub struct LatencyArgs {
    #[command(flatten)]
    arch: ArchArgs,
    /// Input resolution [default: 32 with --cifar, else 224].
    #[arg(long)]
    res: Option<usize>,
    /// Images per batch.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Timed runs per block (the median is kept).
    #[arg(long, default_value_t = 7, value_name = "N")]
    runs: usize,
    /// Write the table as JSON (what `search --latency` reads).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Instead of one architecture's blocks: time every network of a study folder (each
    /// summary.json with an `arch`) interleaved in this process at batch 1 and 64, and write
    /// DIR/latency.json for `depthshrink report`.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["out", "batch"])]
    study: Option<PathBuf>,
}

/// Timed runs per block of the tables `demo` and `search` measure for themselves: medians of
/// this many keep the load of a shared machine out of the ΔL the search weighs.
const OWN_TABLE_RUNS: usize = 15;

/// Measures the per-block latency table of `arch` at `res`² and batch `batch` (a progress bar
/// while it runs, one line of summary after) and writes it to `out/latency.json`.
pub fn measure_table(
    arch: &ArchConfig,
    res: usize,
    batch: usize,
    out: &Path,
) -> Result<LatencyTable, String> {
    let bar = ProgressBar::new(arch.spec().blocks.len() as u64).with_style(
        ProgressStyle::with_template("timing blocks {bar:30} {pos}/{len} {elapsed}")
            .expect("valid template"),
    );
    let table = measure(arch, res, batch, OWN_TABLE_RUNS, |done, _| {
        bar.set_position(done as u64)
    })
    .map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    let pays = table.blocks.iter().filter(|b| b.saving_ms() > 0.0).count();
    println!(
        "batch {batch}, {res}²: network {:.2} ms unmerged, {:.2} ms with every block merged; merging pays for {pays} of {} blocks",
        table.network_ms,
        table.merged_network_ms,
        table.blocks.len()
    );
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    write_json(&out.join(OWN_TABLE), &table)?;
    Ok(table)
}

/// Where [`measure_table`] writes its table in a run's directory.
pub const OWN_TABLE: &str = "latency.json";

/// The batch sizes a study is timed at (the report's two Pareto plots).
const STUDY_BATCHES: [usize; 2] = [1, 64];

fn time_study(dir: &Path, res: Option<usize>, runs: usize) -> Result<(), String> {
    let study = Study::read(dir).map_err(|e| e.to_string())?;
    let res = res.unwrap_or_else(|| {
        let cifar = study
            .runs
            .iter()
            .any(|(_, r)| r.arch.as_ref().is_some_and(|a| a.cifar));
        if cifar { 32 } else { 224 }
    });
    println!(
        "timing {} networks interleaved at batch {:?}, {res}², {runs} rounds…",
        study.runs.len(),
        STUDY_BATCHES
    );
    let table = study::time_study(&study, res, &STUDY_BATCHES, runs).map_err(|e| e.to_string())?;
    for n in &table.networks {
        let ms: Vec<String> = n.ms.iter().map(|m| format!("{m:.3} ms")).collect();
        println!("{:<24} {}", n.name, ms.join("  "));
    }
    let path = dir.join(STUDY_LATENCY);
    write_json(&path, &table)?;
    println!("wrote {}", path.display());
    Ok(())
}

pub fn run(args: &LatencyArgs) -> Result<(), String> {
    if args.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    if args.runs == 0 {
        return Err("--runs must be at least 1 (the median of no timings is undefined)".into());
    }
    if let Some(dir) = &args.study {
        return time_study(dir, args.res, args.runs);
    }
    let arch = args.arch.arch()?;
    let res = args.res.unwrap_or(if arch.cifar { 32 } else { 224 });
    let bar = ProgressBar::new(arch.spec().blocks.len() as u64).with_style(
        ProgressStyle::with_template("timing blocks {bar:30} {pos}/{len} {elapsed}")
            .expect("valid template"),
    );
    let table = measure(&arch, res, args.batch, args.runs, |done, _| {
        bar.set_position(done as u64)
    })
    .map_err(|e| e.to_string())?;
    bar.finish_and_clear();

    println!(
        "{:>5} {:>11} {:>3} {:>2} {:>5} {:>12} {:>10} {:>10} {:>8}",
        "index", "channels", "k", "s", "size", "unmerged ms", "merged ms", "saving ms", "speed-up"
    );
    for b in &table.blocks {
        println!(
            "{:>5} {:>11} {:>3} {:>2} {:>5} {:>12.3} {:>10.3} {:>10.3} {:>7.2}×",
            b.index,
            format!("{}→{}", b.cin, b.cout),
            b.k,
            b.stride,
            b.size,
            b.unmerged_ms,
            b.merged_ms,
            b.saving_ms(),
            b.unmerged_ms / b.merged_ms
        );
    }
    println!(
        "network: {:.3} ms unmerged, {:.3} ms with every block merged ({:.2}×), batch {}, {}², {} threads",
        table.network_ms,
        table.merged_network_ms,
        table.network_ms / table.merged_network_ms,
        table.batch,
        table.res,
        table.threads
    );
    if let Some(out) = &args.out {
        write_json(out, &table)?;
        println!("wrote {}", out.display());
    }
    Ok(())
}
