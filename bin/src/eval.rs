//! `depthshrink eval`: top-1, top-5 and loss of a weights file on a test split, optionally
//! with a confusion matrix.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use depthshrink_data::Subset;
use depthshrink_data::open_or_synthetic;
use depthshrink_nn::checkpoint::{self, write_atomic};
use depthshrink_nn::keep::KeepList;
use depthshrink_shrinker::train::{DataConfig, TrainConfig, eval_loader, evaluate};

use crate::args::{ArchArgs, load_model, refuse_overwriting_inputs};

#[derive(Args)]
pub struct EvalArgs {
    /// Weights (safetensors): a depthshrink checkpoint, a merged network or a torchvision export.
    #[arg(long, value_name = "FILE")]
    weights: PathBuf,
    /// Data directory [default: the training config's `data.dir` recorded in the checkpoint,
    /// else the built-in synthetic set].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Print one JSON object (`top1`, `top5` as fractions, `loss`, `images`).
    #[arg(long)]
    json: bool,
    /// Evaluate with these activations removed (comma-separated 0/1 per activation index,
    /// 1 = keep, or a file holding the list) from a network that keeps them all; a finetuned
    /// or merged checkpoint carries its own list, and a different one is an error.
    #[arg(long, value_name = "LIST|FILE")]
    keep: Option<String>,
    /// Write the confusion matrix here as CSV (rows: true class, columns: predicted class).
    #[arg(long, value_name = "FILE.csv")]
    confusion: Option<PathBuf>,
    /// Images per batch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Only the first N test images.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Resolution of the ImageNet-style eval transform, for files without a training config.
    #[arg(long, default_value_t = 224)]
    res: usize,
    #[command(flatten)]
    arch: ArchArgs,
}

pub fn run(args: &EvalArgs) -> Result<(), String> {
    if args.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    if args.limit == Some(0) {
        return Err("--limit must be at least 1".into());
    }
    if let Some(path) = &args.confusion {
        let keep = args.keep.as_deref().and_then(KeepList::source_file);
        let mut inputs = vec![("--weights", args.weights.as_path())];
        inputs.extend(keep.as_deref().map(|k| ("--keep", k)));
        refuse_overwriting_inputs("--confusion", path, &inputs)?;
    }
    // The training config recorded in the checkpoint decides the eval transform (and the data
    // directory when --data is absent).
    let ckpt_config: Option<DataConfig> = checkpoint::load(&args.weights)
        .ok()
        .and_then(|c| c.metadata.get("config").cloned())
        .and_then(|v| serde_json::from_value::<TrainConfig>(v).ok())
        .map(|c| c.data);
    let net = load_model(&args.weights, &args.arch, args.keep.as_deref())?;
    let dir = args
        .data
        .clone()
        .or_else(|| ckpt_config.as_ref().and_then(|d| d.dir.clone()));
    if let Some(dir) = &dir
        && !dir.is_dir()
    {
        return Err(format!("{}: data directory not found", dir.display()));
    }
    let mut splits = open_or_synthetic(dir.as_deref()).map_err(|e| e.to_string())?;
    if let Some(n) = args.limit {
        splits.test = Arc::new(Subset::new(Arc::clone(&splits.test), n));
    }
    let eval_tf = match &ckpt_config {
        Some(d) => {
            splits
                .transforms(d.augment, d.res, d.random_erasing)
                .map_err(|e| e.to_string())?
                .1
        }
        None => {
            splits
                .default_transforms(args.res)
                .map_err(|e| e.to_string())?
                .1
        }
    };
    let classes = splits.class_names().to_vec();
    if classes.len() != net.spec.num_classes {
        return Err(format!(
            "{} has {} classes, the data set {}",
            args.weights.display(),
            net.spec.num_classes,
            classes.len()
        ));
    }
    let loader =
        eval_loader(&splits.test, eval_tf, args.batch, false).map_err(|e| e.to_string())?;
    let stats = evaluate(&net, &loader).map_err(|e| e.to_string())?;
    if let Some(path) = &args.confusion {
        let field = |s: &str| {
            if s.contains([',', '"', '\n']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        };
        let mut csv = String::from("true\\predicted");
        for c in &classes {
            write!(csv, ",{}", field(c)).expect("writing to a String");
        }
        csv.push('\n');
        for (c, row) in classes.iter().zip(&stats.confusion) {
            csv.push_str(&field(c));
            for n in row {
                write!(csv, ",{n}").expect("writing to a String");
            }
            csv.push('\n');
        }
        write_atomic(path, csv.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if args.json {
        let record = serde_json::json!({
            "top1": stats.top1, "top5": stats.top5, "loss": stats.loss, "images": stats.images,
        });
        println!("{record}");
    } else {
        println!(
            "{}: top-1 {:.2}%, top-5 {:.2}%, loss {:.4} on {} {} images",
            args.weights.display(),
            100.0 * stats.top1,
            100.0 * stats.top5,
            stats.loss,
            stats.images,
            splits.test_name
        );
    }
    Ok(())
}
