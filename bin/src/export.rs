//! `depthshrink export`: a network as an ONNX model, for the runtimes it is deployed with.

use std::path::PathBuf;

use clap::Args;
use depthshrink_nn::keep::KeepList;
use depthshrink_nn::network::Block;
use depthshrink_onnx::{OPSET, save, to_model};
use depthshrink_shrinker::merge::{blocks_to_merge, merge_and_verify};

use crate::args::{ArchArgs, load_model, random_model, refuse_overwriting_inputs, stage_error};

#[derive(Args)]
pub struct ExportArgs {
    /// Weights (safetensors): a depthshrink checkpoint (original, finetuned or merged) or a
    /// torchvision export.
    #[arg(long, value_name = "FILE", required_unless_present = "random_init")]
    weights: Option<PathBuf>,
    /// Export a freshly initialised network of the architecture flags instead of --weights
    /// (for timing in another runtime).
    #[arg(long, conflicts_with = "weights")]
    random_init: bool,
    /// Where to write the ONNX model (opset 13; input `input` N×3×RES×RES, output `logits`).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Input height and width in pixels; the batch size stays free [default: 32 with the CIFAR
    /// layout, else 224].
    #[arg(long, value_name = "PIXELS")]
    res: Option<usize>,
    /// Export with these activations removed (comma-separated 0/1 per activation index, 1 =
    /// keep, or a file holding the list): the unmerged linearised network, pad-first. A
    /// finetuned or merged checkpoint carries its own list, and a different one is an error.
    #[arg(long, value_name = "LIST|FILE")]
    keep: Option<String>,
    /// Merge the blocks whose activations are removed before exporting, as `depthshrink merge`
    /// does by default (verified against the unmerged network).
    #[arg(long)]
    merged: bool,
    #[command(flatten)]
    arch: ArchArgs,
}

pub fn run(args: &ExportArgs) -> Result<(), String> {
    if args.res == Some(0) {
        return Err("--res must be at least 1".into());
    }
    let keep = args.keep.as_deref().and_then(KeepList::source_file);
    let mut inputs: Vec<_> = args
        .weights
        .iter()
        .map(|w| ("--weights", w.as_path()))
        .collect();
    inputs.extend(keep.as_deref().map(|k| ("--keep", k)));
    refuse_overwriting_inputs("--out", &args.out, &inputs)?;

    let mut net = match &args.weights {
        Some(w) => load_model(w, &args.arch, args.keep.as_deref())?,
        None => random_model(&args.arch, args.keep.as_deref())?,
    };
    let res = args.res.unwrap_or(if net.arch.cifar { 32 } else { 224 });
    if args.merged {
        let plan = blocks_to_merge(&net, false, None);
        if !plan.contains(&true) {
            return Err(
                "--merged: no block has its activations removed (give --keep, or the \
                        weights of a finetuned network)"
                    .into(),
            );
        }
        net = merge_and_verify(&net, plan, res)
            .map_err(stage_error)?
            .network;
    }
    let model = to_model(&net, res, res).map_err(|e| e.to_string())?;
    let bytes = save(&model, &args.out).map_err(|e| e.to_string())?;

    let merged = net.variant().merged.iter().filter(|&&m| m).count();
    let pad_first = net
        .blocks
        .iter()
        .filter(|b| matches!(b, Block::Ir(b) if b.linearised && b.expand.is_some()))
        .count();
    let nodes = model.graph.as_ref().map_or(0, |g| g.node.len());
    println!(
        "{}: {merged} merged and {pad_first} pad-first of {} blocks; {nodes} nodes, opset {OPSET}, \
         input N×3×{res}×{res}",
        net.arch,
        net.blocks.len()
    );
    println!(
        "wrote {} ({:.1} MB)",
        args.out.display(),
        bytes as f64 / 1e6
    );
    Ok(())
}
