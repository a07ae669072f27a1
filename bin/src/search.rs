//! `depthshrink search`: stage 1, learn which activations to remove (or draw the random
//! baseline), and write the gate scores with keep lists for every count as JSON.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use depthshrink_nn::arch::ArchConfig;
use depthshrink_nn::checkpoint;
use depthshrink_nn::mobilenet::MobileNet;
use depthshrink_shrinker::latency::LatencyTable;
use depthshrink_shrinker::search::{GateSearch, SearchOutput, install_gates};
use depthshrink_shrinker::train::{TrainConfig, Trainer};

use crate::args::write_json;
use crate::train::{RunArgs, config_threads, load_config, run_stage};

/// The search's output file, in the run directory.
pub const SEARCH_JSON: &str = "search.json";

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

/// Reads a latency table and checks it was measured for `arch` (at `res`, when given).
pub fn read_latency(
    path: &Path,
    arch: &ArchConfig,
    res: Option<usize>,
) -> Result<LatencyTable, String> {
    let table = crate::latency::read_table(path).map_err(|e| format!("--latency {e}"))?;
    table
        .check(arch, res)
        .map_err(|e| format!("--latency {}: {e}", path.display()))?;
    Ok(table)
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
    config.search = Some(search.clone());
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
    let latency = match (&args.latency, &pretrained) {
        (None, _) => None,
        // The search checks the input size too, once its data is open.
        (Some(path), Some(net)) => Some(read_latency(path, &net.arch, None)?),
        (Some(path), None) => {
            let table = crate::latency::read_table(path).map_err(|e| format!("--latency {e}"))?;
            let arch = config.model.arch(table.arch.num_classes);
            Some(read_latency(path, &arch, None)?)
        }
    };
    let n = match &pretrained {
        Some(net) => net.num_acts(),
        None => config.model.arch(10).spec().blocks.len() + 2,
    };
    let output = match pretrained {
        None => {
            let searchable = search.searchable(n)?;
            let output = SearchOutput::random(
                &searchable,
                search.keep_ratio,
                config.seed,
                latency.as_ref(),
            );
            write_output(&out, &output)?;
            output
        }
        Some(net) => search_stage(config, net, latency.as_ref(), &out, args.run.resume)?,
    };
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
pub fn load_pretrained(path: &Path) -> Result<MobileNet, String> {
    let ckpt = checkpoint::load(path).map_err(|e| e.to_string())?;
    MobileNet::from_checkpoint(&ckpt, None).map_err(|e| e.to_string())
}

/// Stage 1 on `pretrained` per `config` (its `[search]` table), in `out`; writes and returns
/// the search output.
pub fn search_stage(
    config: TrainConfig,
    mut net: MobileNet,
    latency: Option<&LatencyTable>,
    out: &Path,
    resume: bool,
) -> Result<SearchOutput, String> {
    let search = config.search.clone().unwrap_or_default();
    let n = net.num_acts();
    let searchable = search.searchable(n)?;
    install_gates(&mut net, &search)?;
    let smoothing = config.label_smoothing as f32;
    let start = Instant::now();
    let mut trainer =
        Trainer::with_model(config, out, resume, Some(net)).map_err(|e| e.to_string())?;
    if let Some(table) = latency {
        let res = trainer.data.input_res().map_err(|e| e.to_string())?;
        table
            .check(&trainer.model.arch, Some(res))
            .map_err(|e| format!("--latency: {e}"))?;
    }
    // Also on resume: the checkpoint holds the scores, the config the rest.
    install_gates(&mut trainer.model, &search)?;
    let mut objective = GateSearch::new(&search, latency, n, smoothing);
    run_stage("searching", &mut trainer, &mut objective, resume, start)?;
    let gates = trainer.model.search.as_ref().expect("installed above");
    let output = SearchOutput::from_scores(
        gates.scores.value.data(),
        &searchable,
        search.keep_ratio,
        latency,
    );
    write_output(out, &output)?;
    Ok(output)
}

fn write_output(out: &Path, output: &SearchOutput) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    write_json(&out.join(SEARCH_JSON), output)
}

pub fn print_output(output: &SearchOutput) {
    if let Some(gates) = &output.gates {
        let scores: Vec<String> = gates.iter().map(|g| format!("{g:.3}")).collect();
        println!("gate scores (small = keep): {}", scores.join(" "));
    }
    let kept = output.keep.iter().filter(|&&k| k == 1).count();
    let list: Vec<String> = output.keep.iter().map(u8::to_string).collect();
    println!(
        "keep {kept} of {} ({}): {}",
        output.keep.len(),
        output.method,
        list.join(",")
    );
}
