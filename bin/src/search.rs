//! `depthshrink search`: stage 1, learn which activations to remove (or draw the random
//! baseline), and write the gate scores with keep lists for every count as JSON.

use std::path::{Path, PathBuf};

use clap::Args;
use depthshrink_nn::checkpoint;
use depthshrink_nn::network::Network;
use depthshrink_shrinker::latency::LatencyTable;
use depthshrink_shrinker::search::{self, SEARCH_JSON, SearchOutput};
use depthshrink_shrinker::train::TrainConfig;

use crate::args::stage_error;
use crate::latency::{OWN_TABLE, measure_table};
use crate::train::{Progress, RunArgs, config_threads, load_config};

#[derive(Args)]
pub struct SearchArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// The pretrained network whose activations are searched (its architecture must match
    /// the config's model). Not needed with --random.
    #[arg(long, value_name = "FILE")]
    pub pretrained: Option<PathBuf>,
    /// Fraction of activation indices kept (overrides `search.keep_ratio`; official 0.4).
    #[arg(long, value_name = "R")]
    pub keep_ratio: Option<f64>,
    /// Latency table from `depthshrink latency --out` (enables the latency term, weight
    /// `search.latency_weight`). Without it, a config with `search.only_if_merge_pays` (the
    /// built-in one) has the search time the blocks itself, at batch 64, into OUT/latency.json
    /// (reused by --resume).
    #[arg(long, value_name = "FILE")]
    pub latency: Option<PathBuf>,
    /// The random-removal baseline: the same number of kept activations, drawn at random
    /// (seeded by the config's `seed`); no training.
    #[arg(long)]
    pub random: bool,
}

pub fn run(args: &SearchArgs, cli_threads: Option<usize>) -> Result<(), String> {
    let (mut config, stem) = load_config(&args.run.setup)?;
    let mut search = config.search.clone().unwrap_or_default();
    if let Some(r) = args.keep_ratio {
        search.keep_ratio = r;
    }
    search
        .validate()
        .map_err(|e| format!("--keep-ratio: {e}"))?;
    config.search = Some(search);
    config_threads(&config, cli_threads)?;
    let out = args
        .run
        .setup
        .out_dir(&stem, if args.random { "-random" } else { "-search" });
    let pretrained = match &args.pretrained {
        Some(path) => Some(load_pretrained(path)?),
        None if args.random => None,
        None => return Err("--pretrained FILE is required (or --random for the baseline)".into()),
    };
    // The search checks the architecture (and the input size, once its data is open).
    let needs_table = config.search.as_ref().is_some_and(|s| s.only_if_merge_pays);
    let latency = match (&args.latency, &pretrained) {
        (Some(path), _) => Some(LatencyTable::read(path, None, None).map_err(stage_error)?),
        (None, Some(net)) if needs_table => Some(own_table(&config, net, &out, args.run.resume)?),
        (None, _) => None,
    };
    let output = match pretrained {
        None => search::random_search(&config, latency.as_ref(), &out),
        Some(net) => search::search(
            config,
            net,
            latency.as_ref(),
            &out,
            args.run.resume,
            &mut Progress::new(),
        ),
    }
    .map_err(stage_error)?;
    print_output(&output);
    let path = out.join(SEARCH_JSON);
    println!(
        "wrote {} (finetune with --keep {})",
        path.display(),
        path.display()
    );
    Ok(())
}

/// Batch size of the latency table a search measures for itself (as `demo`'s default).
const OWN_TABLE_BATCH: usize = 64;

/// The latency table `search.only_if_merge_pays` reads when no --latency is given: measured
/// here into `out`, or on --resume the one measured when the search started (a new one would
/// carry other timing noise into the latency term).
fn own_table(
    config: &TrainConfig,
    net: &Network,
    out: &Path,
    resume: bool,
) -> Result<LatencyTable, String> {
    let path = out.join(OWN_TABLE);
    if resume && path.exists() {
        println!("reading the search's own latency table {}", path.display());
        return LatencyTable::read(&path, Some(&net.arch), None).map_err(stage_error);
    }
    let data = config.data.open(config.seed).map_err(|e| e.to_string())?;
    let res = data.input_res().map_err(|e| e.to_string())?;
    println!(
        "search.only_if_merge_pays and no --latency: timing the blocks on this machine ({} {res}², batch {OWN_TABLE_BATCH})",
        net.arch
    );
    measure_table(&net.arch, res, OWN_TABLE_BATCH, out)
}

/// Loads a pretrained network from a depthshrink checkpoint.
pub fn load_pretrained(path: &Path) -> Result<Network, String> {
    let ckpt = checkpoint::load(path).map_err(|e| e.to_string())?;
    Network::from_checkpoint(&ckpt, None).map_err(|e| e.to_string())
}

pub fn print_output(output: &SearchOutput) {
    if let Some(gates) = &output.gates {
        let scores: Vec<String> = gates.iter().map(|g| format!("{g:.3}")).collect();
        println!("gate scores (small = keep): {}", scores.join(" "));
    }
    println!(
        "keep {} of {} ({}): {}",
        output.keep.kept(),
        output.keep.len(),
        output.method,
        output.keep
    );
}
