//! `depthshrink infer`: logits for a batch of images stored in a safetensors file.

use std::path::PathBuf;

use clap::Args;
use depthshrink_autograd::Var;
use depthshrink_nn::Ctx;
use depthshrink_nn::checkpoint;
use serde_json::Value;

use crate::args::{ArchArgs, load_model};

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
    /// Run with these activations removed (comma-separated 0/1 per activation index, 1 = keep,
    /// or a file holding the list): the unmerged linearised network. A finetuned or merged
    /// checkpoint carries its own list, and a different one is an error.
    #[arg(long, value_name = "LIST|FILE")]
    keep: Option<String>,
    #[command(flatten)]
    arch: ArchArgs,
}

pub fn run(args: &InferArgs) -> Result<(), String> {
    let net = load_model(&args.weights, &args.arch, args.keep.as_deref())?;
    let inputs = checkpoint::load(&args.input).map_err(|e| e.to_string())?;
    let x = inputs.tensors.get("input").ok_or_else(|| {
        let names: Vec<&str> = inputs.tensors.keys().map(String::as_str).collect();
        format!(
            "{} has no tensor named `input` (it has: {})",
            args.input.display(),
            names.join(", ")
        )
    })?;
    match x.shape() {
        [_, 3, _, _] => {}
        s => {
            return Err(format!(
                "{}: `input` must be N×3×H×W, got {s:?}",
                args.input.display()
            ));
        }
    }
    let mut net = net.for_inference().map_err(|e| e.to_string())?;
    let logits = net
        .forward(&Var::constant(x.clone()), &Ctx::eval())
        .map_err(|e| format!("{}: {e}", args.input.display()))?;
    checkpoint::save(
        &args.output,
        &[("logits".to_string(), logits.into_value())],
        &Value::Null,
    )
    .map_err(|e| e.to_string())
}
