//! `depthshrink finetune`: stage 2, remove the activations a keep list drops and finetune from
//! the pretrained weights, optionally distilling from the pretrained network.

use std::path::PathBuf;

use clap::Args;
use depthshrink_shrinker::finetune::{Pretrained, finetune};

use crate::args::{parse_keep, stage_error};
use crate::search::load_pretrained;
use crate::train::{Progress, RunArgs, config_threads, load_config};

#[derive(Args)]
pub struct FinetuneArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// The pretrained network (the original one, not the search's weights).
    #[arg(long, value_name = "FILE")]
    pub pretrained: PathBuf,
    /// Activations to keep: comma-separated 0/1 per activation index (stem, blocks, head;
    /// 1 = keep), or a file holding the list (e.g. a search's search.json; `search.json:N` picks
    /// its list keeping N).
    #[arg(long, value_name = "LIST|FILE")]
    pub keep: String,
    /// Self-distillation from the pretrained network, with the config's `[distill]` parameters
    /// (default α = 0.7, T = 1); without this flag there is none, whatever the config holds.
    #[arg(long)]
    pub distill: bool,
    /// Weight of the distillation term (implies --distill).
    #[arg(long, value_name = "A")]
    pub alpha: Option<f64>,
    /// Distillation temperature (implies --distill).
    #[arg(long, value_name = "T")]
    pub temperature: Option<f64>,
}

pub fn run(args: &FinetuneArgs, cli_threads: Option<usize>) -> Result<(), String> {
    let (mut config, stem) = load_config(&args.run.setup)?;
    // The flag decides; a config's `[distill]` table only holds the parameters, so a shipped
    // config with one can still finetune without distillation (and the run's config.toml then
    // has no `[distill]`).
    config.distill = if args.distill || args.alpha.is_some() || args.temperature.is_some() {
        let mut d = config.distill.take().unwrap_or_default();
        if let Some(a) = args.alpha {
            d.alpha = a;
        }
        if let Some(t) = args.temperature {
            d.temperature = t;
        }
        d.validate()?;
        Some(d)
    } else {
        None
    };
    config_threads(&config, cli_threads)?;
    let out = args.run.setup.out_dir(&stem, "-finetune");
    let pretrained = load_pretrained(&args.pretrained)?;
    let keep = parse_keep(&args.keep)?;
    finetune(
        config,
        Pretrained {
            network: &pretrained,
            file: Some(&args.pretrained),
            teacher: None,
        },
        &keep,
        &out,
        args.run.resume,
        &mut Progress::new(),
    )
    .map_err(stage_error)?;
    Ok(())
}
