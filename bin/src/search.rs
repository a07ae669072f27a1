//! `depthshrink search`: stage 1, learn which activations to remove (or draw the random
//! baseline), and write the gate scores with keep lists for every count as JSON.

use std::path::{Path, PathBuf};

use clap::Args;
use depthshrink_nn::checkpoint;
use depthshrink_nn::network::Network;
use depthshrink_shrinker::latency::LatencyTable;
use depthshrink_shrinker::search::{self, SEARCH_JSON, SearchOutput};

use crate::args::stage_error;
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
    /// `search.latency_weight`).
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
    let latency = args
        .latency
        .as_deref()
        .map(|p| LatencyTable::read(p, None, None))
        .transpose()
        .map_err(stage_error)?;
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
