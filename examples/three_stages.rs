//! DepthShrinker's three stages on a tiny network, through the library API (no CLI).
//!
//! What it teaches: how the pieces of `depthshrink::shrinker` fit together, in the order the
//! method runs them (depthshrinker.md §3-§5):
//!
//! 0. (before the method) train a baseline (`train::train`), here a width-0.25 MobileNetV2 for two short epochs on
//!    a few hundred images of the built-in synthetic set;
//! 1. measure every block's latency on this machine, unmerged and merged (`latency::measure`),
//!    and search which activations to remove, weighing each block's measured saving
//!    (`search::search`);
//! 2. remove them and finetune from the baseline's weights, distilling from the baseline
//!    (`finetune::finetune` with a `config::DistillConfig`);
//! 3. merge every linearised block into one dense conv and check the merged network computes
//!    the same function (`merge::blocks_to_merge`, `merge::merge_and_verify`), then evaluate it
//!    (`train::evaluate`) and time it against the original network
//!    (`latency::compare_with_original`).
//!
//! The runs are far too short to give a good network (expect near-chance accuracy); the point
//! is the flow of data between the stages. `cargo run --release -- demo` runs the same stages
//! at a useful scale. Each stage writes its run directory (config, metrics.jsonl, checkpoints)
//! under the system's temporary directory; the last line says where.
//!
//! Run it with:
//!
//! ```sh
//! cargo run --release --example three_stages
//! ```

use depthshrink::nn::network::Network;
use depthshrink::shrinker::config::DistillConfig;
use depthshrink::shrinker::finetune::finetune;
use depthshrink::shrinker::latency::{compare_with_original, measure};
use depthshrink::shrinker::merge::{blocks_to_merge, merge_and_verify};
use depthshrink::shrinker::search::search;
use depthshrink::shrinker::train::{
    EpochMetrics, EvalStats, Observer, TrainConfig, Trainer, evaluate, train,
};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The whole run's configuration, as a TOML file would hold it (see `configs/` for real ones).
/// The `[search]` and `[distill]` tables are read only by their stages.
const CONFIG: &str = r#"
epochs = 2
seed = 1
[model]
width = 0.25            # 8-80 channels per block: small enough to train in seconds
cifar = true            # 32×32 inputs stay 32×32 through the first stages: merging pays
dropout = 0.0
[data]                  # no `dir`: the built-in synthetic 10-class set of 32×32 images
batch_size = 32
limit_train = 320       # 10 batches per epoch
limit_test = 256
cache = true            # render each synthetic image once
[optim]
optimizer = "sgd"
momentum = 0.9
nesterov = true
weight_decay = 5e-4
[lr]
schedule = "cosine"
lr = 0.05
[search]
keep_ratio = 0.5        # keep 9 of the 19 activation indices
latency_weight = 10.0   # λ of the latency term: favour removing blocks whose merge saves most
searchable = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]  # not stem (0), head (18)
"#;

/// Timed passes per network when measuring latency (medians; a few suffice at this size).
const TIMING_RUNS: usize = 9;

/// Prints one line when a stage starts and one per finished epoch.
struct EpochPrinter;

impl Observer for EpochPrinter {
    fn run_start(&mut self, what: &str, trainer: &Trainer) {
        println!(
            "  {what}: {} epoch(s) of {} batches, output in {}",
            trainer.config.epochs,
            trainer.batches_per_epoch(),
            trainer.out.display()
        );
    }

    fn epoch_done(&mut self, m: &EpochMetrics) {
        let test = m
            .val_acc
            .map_or("-".to_string(), |acc| format!("{:.1}%", 100.0 * acc));
        println!(
            "    epoch {}: train loss {:.3}, train top-1 {:.1}%, test top-1 {test}, {:.0} images/s",
            m.epoch,
            m.train_loss,
            100.0 * m.train_acc,
            m.images_per_s
        );
    }
}

fn main() -> Result<()> {
    // Every stage refuses to start a fresh run over an earlier one's checkpoint, so start clean.
    let out = std::env::temp_dir().join("depthshrink-three-stages");
    if let Err(e) = std::fs::remove_dir_all(&out)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Err(e.into());
    }
    let config = TrainConfig::from_toml(CONFIG, &[])?;
    let mut printer = EpochPrinter;

    println!("Before the stages - train a baseline: the network the method starts from.");
    let pretrained = train(config.clone(), &out.join("pretrain"), false, &mut printer)?;
    // The same test split the trainer evaluates on, for our own before/after figures.
    let data = config.data.open(config.seed)?;
    let res = data.input_res()?;
    let pretrained_eval = evaluate(&pretrained, &data.test)?;
    println!("  {}: {}", pretrained.arch, accuracy(&pretrained_eval));

    println!("\nLatency table - time every block on this machine, as it is and merged (batch 1).");
    let table = measure(&pretrained.arch, res, 1, TIMING_RUNS, |_, _| {})?;
    let mut by_saving: Vec<_> = table.blocks.iter().collect();
    by_saving.sort_by(|a, b| b.saving_ms().total_cmp(&a.saving_ms()));
    for b in by_saving.iter().take(3) {
        println!(
            "  block {:>2} ({}→{}, {}×{} maps): {:.3} ms unmerged, {:.3} ms merged",
            b.index, b.cin, b.cout, b.size, b.size, b.unmerged_ms, b.merged_ms
        );
    }
    println!(
        "  ... {} blocks; the whole network {:.2} ms, every block merged {:.2} ms",
        table.blocks.len(),
        table.network_ms,
        table.merged_network_ms
    );

    println!("\nStage 1 - search: learn one gate per activation index, the latency term pushing");
    println!("  towards removing the blocks whose merge saves the most.");
    let mut search_config = config.clone();
    search_config.epochs = 1;
    search_config.lr.set_lr(0.01); // the weights are already trained: small steps
    let found = search(
        search_config,
        pretrained.clone(),
        Some(&table),
        &out.join("search"),
        false,
        &mut printer,
    )?;
    if let Some(gates) = &found.gates {
        let scores: Vec<String> = gates.iter().map(|s| format!("{s:.3}")).collect();
        println!("  gate scores by activation index: {}", scores.join(" "));
        println!(
            "  kept: the stem (0) and head (18), which are not searchable, and the smallest others"
        );
    }
    // The latency term weighs this run's timings, so the list can differ from run to run.
    println!(
        "  keep list (1 = keep the ReLU6): {} ({} of {} kept)",
        found.keep,
        found.keep.kept(),
        found.keep.len()
    );

    println!("\nStage 2 - finetune: remove the other activations (pad-first blocks with one");
    println!("  output ReLU6) and train from the baseline's weights, distilling from the baseline");
    println!("  (the training loss is now the distillation objective, on another scale).");
    let mut finetune_config = config.clone();
    finetune_config.lr.set_lr(0.01);
    finetune_config.distill = Some(DistillConfig {
        alpha: 0.7,       // weight of the teacher's soft labels (official 0.7)
        temperature: 4.0, // softened teacher outputs carry more than the top class
    });
    let finetuned = finetune(
        finetune_config,
        (&pretrained).into(),
        &found.keep,
        &out.join("finetune"),
        false,
        &mut printer,
    )?;
    let finetuned_eval = evaluate(&finetuned, &data.test)?;
    println!("  finetuned, unmerged: {}", accuracy(&finetuned_eval));

    println!("\nStage 3 - merge: compile every linearised block into one dense conv and check");
    println!("  that the merged network computes the same logits on random inputs.");
    // `false`: leave the depthwise-separable block alone (a dense 3×3 rarely beats dw + pw);
    // `None`: merge every removed block. Passing the table instead would skip the blocks whose
    // measured merged time is not lower.
    let plan = blocks_to_merge(&finetuned, false, None);
    let merged = merge_and_verify(&finetuned, plan, res)?;
    let merged_eval = evaluate(&merged.network, &data.test)?;
    println!(
        "  {} of {} blocks merged; largest logit difference {:.1e} (relative {:.1e})",
        merged.count(),
        merged.plan.len(),
        merged.deviation.max_abs,
        merged.deviation.max_rel
    );
    println!("  merged: {}", accuracy(&merged_eval));

    println!("\nSpeed - the original network (same weights, every ReLU6, ordinary padding), the");
    println!("  finetuned one and the merged one, timed interleaved at batch 1.");
    let speed = compare_with_original(&finetuned, &merged.network, res, 1, TIMING_RUNS)?;

    let spec = pretrained.arch.spec();
    let all = vec![true; spec.num_acts()];
    let mmacs = |keep: &[bool]| format!("{:.2}", spec.flops(res, keep).macs as f64 / 1e6);
    println!(
        "\nSummary ({} images at {res}×{res}, test split):",
        merged_eval.images
    );
    println!(
        "  {:<22} {:>6} {:>7} {:>7} {:>7} {:>9}",
        "network", "ReLU6s", "merged", "MMACs", "top-1", "images/s"
    );
    let row = |name: &str, net: &Network, macs: String, eval: &EvalStats, ips: f64| {
        let variant = net.variant();
        println!(
            "  {name:<22} {:>3}/{:<2} {:>7} {macs:>7} {:>6.1}% {ips:>9.0}",
            variant.keep.kept(),
            variant.keep.len(),
            variant.merged.iter().filter(|&&m| m).count(),
            100.0 * eval.top1
        );
    };
    // The original architecture's speed does not depend on its weights, so its row pairs the
    // timed original (the finetuned weights, every ReLU6 back) with the pretrained network's
    // accuracy: the network the method started from.
    row(
        "original (pretrained)",
        &pretrained,
        mmacs(&all),
        &pretrained_eval,
        speed.original,
    );
    // Pad-first runs each removed block's expand conv on its padded map: a little more work.
    let padded = format!("{}+", mmacs(&all));
    row(
        "finetuned, unmerged",
        &finetuned,
        padded,
        &finetuned_eval,
        speed.unmerged,
    );
    row(
        "finetuned, merged",
        &merged.network,
        mmacs(&found.keep),
        &merged_eval,
        speed.merged,
    );
    println!("  (+: pad-first runs each removed block's expand conv on its padded map)");
    println!(
        "  merged vs original: {:.2}× the images/s (merging alone: {:.2}×)",
        speed.speedup_vs_original, speed.speedup_vs_unmerged
    );
    println!(
        "\nRun directories (config.toml, metrics.jsonl, checkpoints): {}",
        out.display()
    );
    Ok(())
}

/// "top-1 42.2%, loss 1.234 on 256 images".
fn accuracy(eval: &EvalStats) -> String {
    format!(
        "top-1 {:.1}%, loss {:.3} on {} test images",
        100.0 * eval.top1,
        eval.loss,
        eval.images
    )
}
