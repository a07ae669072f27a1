//! `depthshrink strip`: a training checkpoint without its optimiser state, for shipping.

use std::path::PathBuf;

use clap::Args;
use depthshrink_nn::checkpoint;
use depthshrink_shrinker::train::OPTIM_PREFIX;

#[derive(Args)]
pub struct StripArgs {
    /// A checkpoint written by train, search or finetune (e.g. a run's last.safetensors).
    #[arg(value_name = "CHECKPOINT")]
    input: PathBuf,
    /// Where to write the network alone: its tensors and metadata, no `optim.…` tensors (may be
    /// the input itself; the file is replaced atomically).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

pub fn run(args: &StripArgs) -> Result<(), String> {
    let ckpt = checkpoint::load(&args.input).map_err(|e| e.to_string())?;
    let total = ckpt.tensors.len();
    let kept: Vec<_> = ckpt
        .tensors
        .into_iter()
        .filter(|(name, _)| !name.starts_with(OPTIM_PREFIX))
        .collect();
    checkpoint::save(&args.out, &kept, &ckpt.metadata).map_err(|e| e.to_string())?;
    println!(
        "{}: {} tensors kept, {} optimiser tensors dropped",
        args.out.display(),
        kept.len(),
        total - kept.len()
    );
    Ok(())
}
