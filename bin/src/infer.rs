//! `depthshrink infer`: logits for a batch of images stored in a safetensors file.

use std::ops::Range;
use std::path::{Path, PathBuf};

use clap::Args;
use depthshrink_autograd::Var;
use depthshrink_nn::Ctx;
use depthshrink_nn::checkpoint::{self, CheckpointError};
use depthshrink_nn::keep::KeepList;
use depthshrink_tensor::Tensor;
use serde_json::Value;

use crate::args::{ArchArgs, load_model, refuse_overwriting_inputs};

#[derive(Args)]
pub struct InferArgs {
    /// Weights (safetensors): a depthshrink checkpoint, a merged network or a torchvision export.
    #[arg(long, value_name = "FILE")]
    weights: PathBuf,
    /// Input file (safetensors) holding a tensor `input` of shape N×3×H×W (f32).
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// Output file (safetensors) to write the tensor `logits` (N×classes, f32) to.
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    /// Images per forward pass: the input runs in chunks of at most this many, so its size is
    /// not bounded by the memory of one pass over all of it. The logits are exactly those of one
    /// pass: an image is never alone in a chunk unless the input holds just one (a single image
    /// takes another kernel path, whose logits differ in the last bits), so a lone last image
    /// joins the chunk before it and 1 counts as 2.
    #[arg(long, default_value_t = 256, value_name = "N")]
    batch: usize,
    /// Run with these activations removed (comma-separated 0/1 per activation index, 1 = keep,
    /// or a file holding the list): the unmerged linearised network. A finetuned or merged
    /// checkpoint carries its own list, and a different one is an error.
    #[arg(long, value_name = "LIST|FILE")]
    keep: Option<String>,
    #[command(flatten)]
    arch: ArchArgs,
}

pub fn run(args: &InferArgs) -> Result<(), String> {
    if args.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    let keep = args.keep.as_deref().and_then(KeepList::source_file);
    let mut inputs = vec![
        ("--weights", args.weights.as_path()),
        ("--input", args.input.as_path()),
    ];
    inputs.extend(keep.as_deref().map(|k| ("--keep", k)));
    refuse_overwriting_inputs("--output", &args.output, &inputs)?;

    let net = load_model(&args.weights, &args.arch, args.keep.as_deref())?;
    let file = checkpoint::load(&args.input).map_err(|e| input_error(&args.input, e))?;
    let x = file.tensors.get("input").ok_or_else(|| {
        let names: Vec<&str> = file.tensors.keys().map(String::as_str).collect();
        format!(
            "{} has no tensor named `input` (it has: {})",
            args.input.display(),
            names.join(", ")
        )
    })?;
    let &[n, 3, h, w] = x.shape() else {
        return Err(format!(
            "{}: `input` must be N×3×H×W, got {:?}",
            args.input.display(),
            x.shape()
        ));
    };
    // ReLU6's clamp turns NaN into finite logits, so a bad value would go unnoticed.
    if let Some(i) = x.data().iter().position(|v| !v.is_finite()) {
        let (plane, image) = (h * w, 3 * h * w);
        return Err(format!(
            "{}: `input` holds {} at [{}, {}, {}, {}] (flat index {i}); inputs must be finite",
            args.input.display(),
            x.data()[i],
            i / image,
            i % image / plane,
            i % plane / w,
            i % w
        ));
    }

    let mut net = net.for_inference().map_err(|e| e.to_string())?;
    let image = 3 * h * w;
    let mut logits = Vec::new();
    for Range { start, end } in chunks(n, args.batch) {
        let chunk = Tensor::from_vec(
            &[end - start, 3, h, w],
            x.data()[start * image..end * image].to_vec(),
        )
        .map_err(|e| e.to_string())?;
        let out = net
            .forward(&Var::constant(chunk), &Ctx::eval())
            .map_err(|e| format!("{}: {e}", args.input.display()))?;
        logits.extend_from_slice(out.value().data());
    }
    let logits = Tensor::from_vec(&[n, net.spec.num_classes], logits).map_err(|e| e.to_string())?;
    checkpoint::save(
        &args.output,
        &[("logits".to_string(), logits)],
        &Value::Null,
    )
    .map_err(|e| e.to_string())
}

/// The image ranges of the forward passes over `n` images: at most `batch` each, but none of a
/// single image when `n` > 1 (see `--batch`).
fn chunks(n: usize, batch: usize) -> Vec<Range<usize>> {
    let size = batch.max(2);
    let mut starts: Vec<usize> = (0..n).step_by(size).collect();
    if n > 1 && n % size == 1 {
        starts.pop();
    }
    let ends = starts.iter().skip(1).copied().chain([n]);
    starts.iter().zip(ends).map(|(&s, e)| s..e).collect()
}

/// A failure to read the input file, worded for an input (not a checkpoint).
fn input_error(path: &Path, err: CheckpointError) -> String {
    match err {
        CheckpointError::Read { source, .. } => {
            format!("cannot read --input {}: {source}", path.display())
        }
        CheckpointError::UnsupportedDtype { name, dtype, .. } => format!(
            "--input {}: tensor `{name}` holds {dtype:?} values; an input must be f32 (f16 and \
             bf16 are converted)",
            path.display()
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::chunks;

    #[test]
    fn chunks_cover_the_input_and_never_leave_an_image_alone() {
        assert_eq!(chunks(7, 3), [0..3, 3..7]);
        assert_eq!(chunks(7, 2), [0..2, 2..4, 4..7]);
        assert_eq!(chunks(7, 1), chunks(7, 2));
        assert_eq!(chunks(6, 256), vec![0..6]);
        assert_eq!(chunks(1, 256), vec![0..1]);
        assert_eq!(chunks(513, 256), [0..256, 256..513]);
        assert!(chunks(0, 256).is_empty());
    }
}
