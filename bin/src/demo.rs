//! `depthshrink demo`: the whole method in one command. Pretrained network → latency table →
//! search → finetune with self-distillation → merge → verify → benchmark, then one summary
//! table and a figure (`plot.svg`). With no flags it runs on the built-in synthetic set with
//! the built-in config, from the shipped pretrained network (pretraining MobileNetV2 on that
//! set takes longer than the demo's budget); `--data` and `--pretrained` run it on real data
//! from a real checkpoint.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use depthshrink_nn::checkpoint;
use depthshrink_nn::keep::KeepList;
use depthshrink_nn::module::state_dict;
use depthshrink_nn::network::Network;
use depthshrink_shrinker::config::DistillConfig;
use depthshrink_shrinker::finetune::finetune;
use depthshrink_shrinker::latency::{LatencyTable, Throughput, compare_with_original};
use depthshrink_shrinker::merge::{MERGE_TOLERANCE, Merged, blocks_to_merge, merge_and_verify};
use depthshrink_shrinker::search;
use depthshrink_shrinker::train::{LAST, TrainConfig, evaluate, train};
use serde::Serialize;

use crate::args::{stage_error, write_json};
use crate::latency::measure_table;
use crate::plot;
use crate::search::{load_pretrained, print_output};
use crate::train::{ConfigArgs, Progress, config_threads, load_config, pct};

#[derive(Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub setup: ConfigArgs,
    /// Start from this pretrained network (its architecture must match the config's model)
    /// [default: on the synthetic set with the built-in config, the shipped
    /// models/synthetic-mbv2-w0.5.safetensors when present, else --pretrain-epochs].
    #[arg(long, value_name = "FILE", conflicts_with = "pretrain_epochs")]
    pub pretrained: Option<PathBuf>,
    /// Pretrain from scratch for this many epochs instead of loading a pretrained network
    /// (MobileNetV2 learns the synthetic set slowly: see RESULTS.md).
    #[arg(long, value_name = "N")]
    pub pretrain_epochs: Option<usize>,
    /// Learning rate of the search and finetuning stages (they start from a trained network)
    /// [default: the config's lr / 5].
    #[arg(long, value_name = "LR")]
    pub stage_lr: Option<f64>,
    /// Fraction of activation indices kept [default: the config's `search.keep_ratio`].
    #[arg(long, value_name = "R")]
    pub keep_ratio: Option<f64>,
    /// Epochs of the search (stage 1).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub search_epochs: usize,
    /// Epochs of finetuning (stage 2).
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub finetune_epochs: usize,
    /// Use this latency table (from `depthshrink latency --out` or an earlier demo's
    /// latency.json) instead of measuring one: the search then repeats exactly, where a fresh
    /// table carries this machine's timing noise into the latency term.
    #[arg(long, value_name = "FILE")]
    pub latency: Option<PathBuf>,
    /// Batch size of the latency table and the final benchmark.
    #[arg(long, value_name = "B", default_value_t = 64)]
    pub bench_batch: usize,
}

/// Everything the demo measured (also written as `summary.json`).
#[derive(Serialize)]
struct Summary {
    pretrained_top1: f64,
    finetuned_top1: f64,
    merged_top1: f64,
    activations: usize,
    kept: usize,
    keep: KeepList,
    merged_blocks: usize,
    blocks: usize,
    max_abs_error: f32,
    max_rel_error: f32,
    res: usize,
    /// Original, pad-first unmerged and merged images/s at batch 1 and the bench batch.
    throughput: Vec<Throughput>,
    seconds: f64,
}

/// The pretrained network the demo starts from by default (built-in config, synthetic set).
const SHIPPED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../models/synthetic-mbv2-w0.5.safetensors"
);

/// Timed passes per network and batch size in the final benchmark (the median is reported).
const BENCH_RUNS: usize = 21;

/// A stage's header and, for a reader following along, one line on what it does.
fn stage(n: usize, title: &str, what: &str) {
    println!("\n== [{n}/6] {title}\n   {what}");
}

/// A stage's run directory already holding a checkpoint is resumed (a finished stage just
/// reloads), so running the demo again picks up where it stopped.
fn resumable(dir: &Path) -> bool {
    dir.join(LAST).exists()
}

fn pretrain_stage(config: &TrainConfig, out: &Path) -> Result<Network, String> {
    train(config.clone(), out, resumable(out), &mut Progress::new()).map_err(|e| e.to_string())
}

pub fn run(args: &DemoArgs, cli_threads: Option<usize>) -> Result<(), String> {
    let started = Instant::now();
    let (config, stem) = load_config(&args.setup)?;
    config_threads(&config, cli_threads)?;
    if args.search_epochs == 0 || args.finetune_epochs == 0 || args.bench_batch == 0 {
        return Err(
            "--search-epochs, --finetune-epochs and --bench-batch must be at least 1".into(),
        );
    }
    if let Some(lr) = args.stage_lr
        && !(lr.is_finite() && lr > 0.0)
    {
        return Err(format!("--stage-lr must be a positive number, got {lr}"));
    }
    let mut search = config.search.clone().unwrap_or_default();
    if let Some(r) = args.keep_ratio {
        search.keep_ratio = r;
    }
    search
        .validate()
        .map_err(|e| format!("--keep-ratio: {e}"))?;
    let out = args.setup.out_dir(&stem, "-demo");

    stage(
        1,
        "pretrained network",
        "the compact CNN the method starts from, with every ReLU6 in place",
    );
    let shipped = Path::new(SHIPPED);
    let default_setup = args.setup.config.is_none() && args.setup.data.is_none();
    let pretrained = match (&args.pretrained, args.pretrain_epochs) {
        (Some(path), _) => {
            println!("loading {}", path.display());
            load_pretrained(path)?
        }
        (None, None) if default_setup && shipped.exists() => {
            println!(
                "loading the shipped {} (trained with `depthshrink train`, see RESULTS.md; --pretrain-epochs N trains one here instead)",
                shipped.display()
            );
            load_pretrained(shipped)?
        }
        (None, epochs) => {
            let mut c = config.clone();
            c.epochs = epochs.unwrap_or(config.epochs);
            if c.epochs == 0 {
                return Err("--pretrain-epochs must be at least 1".into());
            }
            pretrain_stage(&c, &out.join("pretrain"))?
        }
    };
    let data = config.data.open(config.seed).map_err(|e| e.to_string())?;
    let res = data.input_res().map_err(|e| e.to_string())?;
    let before = evaluate(&pretrained, &data.test).map_err(|e| e.to_string())?;
    println!("pretrained: top-1 {}", pct(Some(before.top1)));

    stage(
        2,
        "latency table",
        "times every block on this machine as it is and merged into one dense conv: the saving ΔL the search weighs",
    );
    let table = match &args.latency {
        Some(path) => {
            println!("reading {}", path.display());
            LatencyTable::read(path, Some(&pretrained.arch), Some(res)).map_err(stage_error)?
        }
        None => measure_table(&pretrained.arch, res, args.bench_batch, &out)?,
    };

    stage(
        3,
        "search: which activations are redundant",
        "learns one score per activation while training with the highest-scored ones removed; the latency term pushes blocks whose merge saves the most towards removal",
    );
    if search.only_if_merge_pays {
        println!(
            "   only blocks whose merge the table says saves time may lose their activations (search.only_if_merge_pays)"
        );
    }
    let stage_lr = args.stage_lr.unwrap_or(config.lr.lr() / 5.0);
    let mut search_config = config.clone();
    search_config.lr.set_lr(stage_lr);
    search_config.epochs = args.search_epochs;
    search_config.search = Some(search.clone());
    let search_dir = out.join("search");
    let found = search::search(
        search_config.clone(),
        pretrained.clone(),
        Some(&table),
        &search_dir,
        resumable(&search_dir),
        &mut Progress::new(),
    )
    .map_err(stage_error)?;
    print_output(&found);
    let keep = found.keep;

    stage(
        4,
        "finetune without them",
        "removes the activations the search dropped (one ReLU6 stays after each linearised block) and finetunes from the pretrained weights, distilling from the pretrained network",
    );
    let mut finetune_config = search_config.clone();
    finetune_config.search = None;
    finetune_config.epochs = args.finetune_epochs;
    finetune_config.distill = Some(
        config
            .distill
            .clone()
            .unwrap_or_else(DistillConfig::default),
    );
    let finetune_dir = out.join("finetune");
    let finetuned = finetune(
        finetune_config,
        (&pretrained).into(),
        &keep,
        &finetune_dir,
        resumable(&finetune_dir),
        &mut Progress::new(),
    )
    .map_err(stage_error)?;
    let after = evaluate(&finetuned, &data.test).map_err(|e| e.to_string())?;

    stage(
        5,
        "merge and verify",
        "folds batch norm and composes each linearised block (1×1 → depthwise → 1×1, skip) into one dense conv, then checks merged == unmerged on random inputs",
    );
    let plan = blocks_to_merge(&finetuned, false, Some(&table));
    let Merged {
        network: mut merged,
        plan,
        deviation: err,
    } = merge_and_verify(&finetuned, plan, res).map_err(stage_error)?;
    let merged_blocks = plan.iter().filter(|&&m| m).count();
    println!(
        "merged {merged_blocks} of {} blocks (those whose merge the latency table says pays); max abs error {:.2e}, max relative error {:.2e}",
        plan.len(),
        err.max_abs,
        err.max_rel
    );
    let merged_path = out.join("merged.safetensors");
    checkpoint::save(&merged_path, &state_dict(&mut merged), &merged.metadata())
        .map_err(|e| e.to_string())?;
    println!("wrote {}", merged_path.display());
    let merged_eval = evaluate(&merged, &data.test).map_err(|e| e.to_string())?;

    stage(
        6,
        "benchmark: original vs merged inference",
        "times the original network (every activation, the same weights), the finetuned one before merging and the merged one, interleaved in this process",
    );
    let mut throughput = Vec::new();
    for batch in [1, args.bench_batch] {
        let t = compare_with_original(&finetuned, &merged, res, batch, BENCH_RUNS)
            .map_err(|e| e.to_string())?;
        println!(
            "batch {batch}: original {:.1} images/s, merged {:.1} images/s: {:.2}× faster (unmerged, pad-first: {:.1} images/s)",
            t.original, t.merged, t.speedup_vs_original, t.unmerged
        );
        throughput.push(t);
    }

    let summary = Summary {
        pretrained_top1: before.top1,
        finetuned_top1: after.top1,
        merged_top1: merged_eval.top1,
        activations: keep.len(),
        kept: keep.kept(),
        keep,
        merged_blocks,
        blocks: plan.len(),
        max_abs_error: err.max_abs,
        max_rel_error: err.max_rel,
        res,
        throughput,
        seconds: started.elapsed().as_secs_f64(),
    };
    print_summary(&summary);
    let path = out.join("summary.json");
    write_json(&path, &summary)?;
    let figure = write_figure(&out, &search_dir, &finetune_dir, &table, before.top1)?;
    println!(
        "wrote {} and {} (every stage's run is in {})",
        path.display(),
        figure.display(),
        out.display()
    );
    Ok(())
}

/// `plot.svg`: the search and finetuning curves against the pretrained top-1, the gate
/// scores, and the latency table.
fn write_figure(
    out: &Path,
    search_dir: &Path,
    finetune_dir: &Path,
    table: &LatencyTable,
    pretrained_top1: f64,
) -> Result<PathBuf, String> {
    let runs = [
        plot::read_run(search_dir, "search")?,
        plot::read_run(finetune_dir, "finetune")?,
    ];
    let tables = [("latency table".to_string(), table.clone())];
    let reference = ("pretrained".to_string(), pretrained_top1);
    let path = out.join("plot.svg");
    plot::write(&path, &plot::render(&runs, &tables, Some(&reference))?)?;
    Ok(path)
}

fn print_summary(s: &Summary) {
    println!("\n== summary ({:.0} s)", s.seconds);
    println!("{:<34} {:>8} {:>12}", "network", "top-1", "activations");
    let acts = format!("{}/{}", s.kept, s.activations);
    let all = format!("{}/{}", s.activations, s.activations);
    println!(
        "{:<34} {:>8} {:>12}",
        "pretrained",
        pct(Some(s.pretrained_top1)),
        all
    );
    println!(
        "{:<34} {:>8} {:>12}",
        "finetuned, unmerged",
        pct(Some(s.finetuned_top1)),
        acts
    );
    println!(
        "{:<34} {:>8} {:>12}",
        format!("merged ({} of {} blocks)", s.merged_blocks, s.blocks),
        pct(Some(s.merged_top1)),
        acts
    );
    println!(
        "merge verified: max abs error {:.2e}, max relative error {:.2e} (limit {MERGE_TOLERANCE:e})",
        s.max_abs_error, s.max_rel_error
    );
    println!(
        "{:<7} {:>15} {:>13} {:>22} {:>23}",
        "batch", "original img/s", "merged img/s", "speed-up vs original", "unmerged (pad-first)"
    );
    for t in &s.throughput {
        println!(
            "{:<7} {:>15.1} {:>13.1} {:>21.2}× {:>14.1} img/s {:.2}×",
            t.batch, t.original, t.merged, t.speedup_vs_original, t.unmerged, t.speedup_vs_unmerged
        );
    }
}
