//! `depthshrink merge`: stage 3, compile linearised blocks into dense convs, verified.

use std::path::PathBuf;

use clap::Args;
use depthshrink_nn::checkpoint;
use depthshrink_nn::keep::KeepList;
use depthshrink_nn::module::state_dict;
use depthshrink_shrinker::StageError;
use depthshrink_shrinker::latency::LatencyTable;
use depthshrink_shrinker::merge::{MERGE_TOLERANCE, blocks_to_merge, merge_and_verify};

use crate::args::{ArchArgs, load_model, refuse_overwriting_inputs, stage_error};

#[derive(Args)]
pub struct MergeArgs {
    /// Weights of the finetuned (or any) network.
    #[arg(long, value_name = "FILE")]
    weights: PathBuf,
    /// Activations to keep: comma-separated 0/1 per activation index (stem, blocks, head;
    /// 1 = keep), or a file holding the list (`search.json:N`: a search's list keeping N).
    /// Every block with 0 is merged [default: the list a finetuned checkpoint carries; a
    /// different list is an error].
    #[arg(long, value_name = "LIST|FILE")]
    keep: Option<String>,
    /// Where to write the merged network (safetensors, architecture in its metadata).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Also merge the depthwise-separable first block when its activation is removed (a dense
    /// 3×3 conv usually costs several times its multiply-adds, so by default it stays unmerged).
    #[arg(long)]
    merge_ds: bool,
    /// Latency table from `depthshrink latency --out` for this architecture (for
    /// --only-if-faster).
    #[arg(long, value_name = "FILE")]
    latency: Option<PathBuf>,
    /// Merge exactly the removed blocks whose merge the latency table says pays: IR blocks
    /// whose merged conv is slower stay unmerged, the DS block is merged when it is faster.
    #[arg(long, requires = "latency")]
    only_if_faster: bool,
    #[command(flatten)]
    arch: ArchArgs,
}

pub fn run(args: &MergeArgs) -> Result<(), String> {
    let keep = args.keep.as_deref().and_then(KeepList::source_file);
    let mut inputs = vec![("--weights", args.weights.as_path())];
    inputs.extend(keep.as_deref().map(|k| ("--keep", k)));
    inputs.extend(args.latency.as_deref().map(|l| ("--latency", l)));
    refuse_overwriting_inputs("--out", &args.out, &inputs)?;
    let net = load_model(&args.weights, &args.arch, args.keep.as_deref())?;
    if net.variant().keep.keeps_all() {
        return Err(format!(
            "{} keeps every activation, so no block can merge: give --keep (the activations to keep)",
            args.weights.display()
        ));
    }
    let table = args
        .latency
        .as_deref()
        .map(|p| LatencyTable::read(p, Some(&net.arch), None))
        .transpose()
        .map_err(stage_error)?;
    let plan = blocks_to_merge(
        &net,
        args.merge_ds,
        table.as_ref().filter(|_| args.only_if_faster),
    );
    let res = if net.arch.cifar { 32 } else { 224 };
    let mut merged = match merge_and_verify(&net, plan, res) {
        Err(StageError::MergeMismatch { max_rel }) => {
            return Err(format!(
                "the merged network differs from the unmerged one (relative error {max_rel:.2e} > {MERGE_TOLERANCE:e}); nothing written"
            ));
        }
        result => result.map_err(stage_error)?,
    };
    println!(
        "merged {} of {} blocks; verified on random inputs, as stored and as run for inference \
         (dense 3×3 stride-1 convs with ≥ 48 input channels on maps ≥ 8×8 as Winograd \
         F(2×2, 3×3)): max abs error {:.2e}, max relative error {:.2e}",
        merged.count(),
        merged.plan.len(),
        merged.deviation.max_abs,
        merged.deviation.max_rel
    );
    let network = &mut merged.network;
    checkpoint::save(&args.out, &state_dict(network), &network.metadata())
        .map_err(|e| e.to_string())?;
    println!("wrote {}", args.out.display());
    Ok(())
}
