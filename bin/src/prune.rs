//! `depthshrink prune`: the channel- and block-pruning baselines; the pruned network is then
//! finetuned like any other (`finetune --pretrained PRUNED --keep` with every activation kept,
//! `--set model.hidden_ratio=R` or `--set model.dropped_blocks=[…]` as its architecture says).

use std::path::PathBuf;

use clap::Args;
use depthshrink_nn::checkpoint;
use depthshrink_nn::keep::KeepList;
use depthshrink_nn::module::{num_params, state_dict};
use depthshrink_nn::network::Network;
use depthshrink_shrinker::prune::{prune_blocks, prune_channels};

use crate::args::{ArchArgs, load_model, refuse_overwriting_inputs};

#[derive(Args)]
pub struct PruneArgs {
    /// The trained network to prune (every activation still in place).
    #[arg(long, value_name = "FILE")]
    weights: PathBuf,
    /// Keep this fraction of every expanding block's hidden channels, those whose expand
    /// filters have the largest L1 norm (0 < R ≤ 1).
    #[arg(long, value_name = "R", required_unless_present = "blocks")]
    channels: Option<f32>,
    /// Drop these residual blocks, by activation index (1 = the DS block, as in keep lists and
    /// latency tables), e.g. `--blocks 3,5,6`: the layer-pruning baseline.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    blocks: Vec<usize>,
    /// Where to write the pruned network (its architecture records the ratio).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    #[command(flatten)]
    arch: ArchArgs,
}

pub fn run(args: &PruneArgs) -> Result<(), String> {
    refuse_overwriting_inputs("--out", &args.out, &[("--weights", &args.weights)])?;
    if let Some(r) = args.channels
        && !(r > 0.0 && r <= 1.0)
    {
        return Err(format!("--channels must be in (0, 1], got {r}"));
    }
    if args.blocks.contains(&0) {
        return Err("--blocks: activation index 0 is the stem, not a block".into());
    }
    let net = load_model(&args.weights, &args.arch, None)?;
    let mut pruned = net.clone();
    if !args.blocks.is_empty() {
        let positions: Vec<usize> = args.blocks.iter().map(|i| i - 1).collect();
        pruned = prune_blocks(&pruned, &positions).map_err(|e| format!("--blocks: {e}"))?;
    }
    if let Some(r) = args.channels {
        pruned = prune_channels(&pruned, r).map_err(|e| format!("--channels: {e}"))?;
    }
    let res = if net.arch.cifar { 32 } else { 224 };
    let macs = |n: &Network| n.spec.flops(res, &KeepList::all(n.num_acts())).macs as f64 / 1e6;
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
