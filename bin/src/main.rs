//! `depthshrink`: the command-line program. Each subcommand lives in its own module; this file
//! only parses arguments, sets up the thread pool and reports errors.

mod args;
mod bench;
mod data;
mod demo;
mod eval;
mod export;
mod finetune;
mod flops;
mod infer;
mod latency;
mod merge;
mod plot;
mod prune;
mod report;
mod search;
mod strip;
mod study;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "depthshrink",
    version,
    about = "DepthShrinker (ICML 2022) on the CPU: train a compact CNN, remove redundant activations, merge blocks",
    long_about = None
)]
struct Cli {
    /// Worker threads for kernels and data loading, 1 to 4 × this machine's cores (default:
    /// RAYON_NUM_THREADS, else all cores).
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole method in one command on the built-in synthetic data (no flags needed):
    /// pretrain → latency table → search → finetune → merge → verify → benchmark. The config
    /// is every stage's (they override `epochs`); stages already in the output directory are
    /// resumed or, when finished, reused.
    Demo(demo::DemoArgs),
    /// Train a network from a TOML config, with exact resume (see configs/).
    Train(train::TrainArgs),
    /// Stage 1: learn which activations to remove (gated search, optional latency term), or
    /// draw the random-removal baseline; writes gate scores and keep lists as JSON.
    Search(search::SearchArgs),
    /// Stage 2: remove the activations of a keep list and finetune from the pretrained
    /// weights, optionally with self-distillation.
    Finetune(finetune::FinetuneArgs),
    /// Top-1, top-5 and loss of a weights file on a test split (confusion matrix optional).
    Eval(eval::EvalArgs),
    /// Logits for a batch of images (safetensors in, safetensors out), evaluation mode.
    Infer(infer::InferArgs),
    /// The network of a weights file as an ONNX model (original, pad-first or merged; batch
    /// norm folded, ReLU6 as Clip), for ONNX Runtime, TensorRT, OpenVINO, tract and the like.
    Export(export::ExportArgs),
    /// Stage 3: merge every block whose activations are removed into one dense conv (verified).
    Merge(merge::MergeArgs),
    /// The channel-pruning baseline: keep a fraction of every block's hidden channels.
    Prune(prune::PruneArgs),
    /// Per-block latency, unmerged vs merged, measured on this machine (JSON for the search).
    Latency(latency::LatencyArgs),
    /// Multiply-adds and fvcore-convention MFLOPs, with removed blocks counted as merged.
    Flops(flops::FlopsArgs),
    /// Run a study plan (the networks the paper compares, at one budget), resumably.
    Study(study::StudyArgs),
    /// One self-contained HTML page for a study folder: top-1 against measured latency for
    /// every method, per-block latency and memory, gate trajectories, curves and a table.
    Report(report::ReportArgs),
    /// Copy a checkpoint without its optimiser state (half the size; what models/ ships).
    Strip(strip::StripArgs),
    /// Draw training curves, search gate scores and latency tables as one SVG figure.
    Plot(plot::PlotArgs),
    /// Inspect a dataset directory (or the built-in synthetic set).
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Time kernels, training steps or inference against their targets.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    if let Err(err) = run(cli) {
        eprintln!("error: {err}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.threads {
        Some(n) => {
            train::check_threads(n, &format!("--threads {n}"))?;
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global()
                .map_err(|e| format!("cannot start {n} threads: {e}"))?;
        }
        // Rayon would start this many on first use (0 or text: its own default).
        None => {
            if let Ok(text) = std::env::var("RAYON_NUM_THREADS")
                && let Ok(n) = text.trim().parse::<usize>()
                && n > 0
            {
                train::check_threads(n, &format!("RAYON_NUM_THREADS={n}"))?;
            }
        }
    }
    match cli.command {
        Command::Bench(cmd) => bench::run(cmd),
        Command::Infer(args) => infer::run(&args),
        Command::Data(cmd) => data::run(cmd),
        Command::Merge(args) => merge::run(&args),
        Command::Export(args) => export::run(&args),
        Command::Flops(args) => flops::run(&args),
        Command::Latency(args) => latency::run(&args),
        Command::Demo(args) => demo::run(&args, cli.threads),
        Command::Train(args) => train::run(&args, cli.threads),
        Command::Search(args) => search::run(&args, cli.threads),
        Command::Finetune(args) => finetune::run(&args, cli.threads),
        Command::Eval(args) => eval::run(&args),
        Command::Plot(args) => plot::run(&args),
        Command::Strip(args) => strip::run(&args),
        Command::Report(args) => report::run(&args),
        Command::Study(args) => study::run(&args),
        Command::Prune(args) => prune::run(&args),
    }
}

/// Activations of a training step are tens of MB each. glibc serves such blocks with fresh
/// mmaps and unmaps them on free, so every step would page-fault (and zero) all of them again:
/// ~15% of a training step, measured. Keeping freed memory in the heap lets the next step
/// reuse it.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
