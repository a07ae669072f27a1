//! `depthshrink prune`: the channel-pruning baseline; the pruned network is then finetuned
//! like any other (`finetune --pretrained PRUNED --keep` with every activation kept).

use std::path::PathBuf;

use clap::Args;
use depthshrink_nn::checkpoint;
use depthshrink_nn::keep::KeepList;
use depthshrink_nn::module::{num_params, state_dict};
use depthshrink_nn::network::Network;
use depthshrink_shrinker::prune::prune_channels;

use crate::args::{ArchArgs, load_model, refuse_overwriting_inputs};

#[derive(Args)]
pub struct PruneArgs {
    /// The trained network to prune (every activation still in place).
    #[arg(long, value_name = "FILE")]
    weights: PathBuf,
    /// Keep this fraction of every expanding block's hidden channels, those whose expand
    /// filters have the largest L1 norm (0 < R ≤ 1).
    #[arg(long, value_name = "R")]
    channels: f32,
    /// Where to write the pruned network (its architecture records the ratio).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    #[command(flatten)]
    arch: ArchArgs,
}

pub fn run(args: &PruneArgs) -> Result<(), String> {
    refuse_overwriting_inputs("--out", &args.out, &[("--weights", &args.weights)])?;
    if !(args.channels > 0.0 && args.channels <= 1.0) {
        return Err(format!(
            "--channels must be in (0, 1], got {}",
            args.channels
        ));
    }
    let net = load_model(&args.weights, &args.arch, None)?;
    let mut pruned = prune_channels(&net, args.channels).map_err(|e| e.to_string())?;
    let all = KeepList::all(net.num_acts());
    let res = if net.arch.cifar { 32 } else { 224 };
    let macs = |n: &Network| n.spec.flops(res, &all).macs as f64 / 1e6;
    let (before, after) = (macs(&net), macs(&pruned));
    let params = (num_params(&mut net.clone()), num_params(&mut pruned));
    println!(
        "{}: {} → {} parameters, {before:.2} → {after:.2} M multiply-adds at {res}×{res}",
        pruned.arch, params.0, params.1
    );
    checkpoint::save(&args.out, &state_dict(&mut pruned), &pruned.metadata())
        .map_err(|e| e.to_string())?;
    println!("wrote {}", args.out.display());
    Ok(())
}
