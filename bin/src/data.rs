//! `depthshrink data inspect`: what a dataset directory holds and how fast it loads.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use depthshrink_data::{InspectOptions, InspectReport, inspect, open_or_synthetic};
use serde_json::json;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Per-split class counts, image sizes, channel mean/std and loader throughput.
    Inspect(InspectArgs),
}

#[derive(Args)]
pub struct InspectArgs {
    /// Dataset directory: CIFAR-10 binaries, or train/ and test/ (or val/) class folders
    /// [default: the built-in synthetic set].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Print one JSON object (keys: format, splits, classes, counts, images_per_s, ...).
    #[arg(long)]
    json: bool,
    /// Decode at most this many images per split for sizes and statistics [default: all].
    #[arg(long, value_name = "N")]
    max_images: Option<usize>,
    /// Images pushed through the training loader to measure throughput (0: skip).
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    throughput_images: usize,
    /// Exit with an error when any scanned image is unreadable (after the report).
    #[arg(long)]
    strict: bool,
}

/// Unreadable files listed per split; the rest are counted.
const MAX_LISTED: usize = 20;

pub fn run(cmd: DataCommand) -> Result<(), String> {
    let DataCommand::Inspect(args) = cmd;
    let splits = open_or_synthetic(args.data.as_deref()).map_err(|e| e.to_string())?;
    let (train_tf, _) = splits.default_transforms(224).map_err(|e| e.to_string())?;
    let options = InspectOptions {
        max_images: args.max_images,
        throughput_images: args.throughput_images,
        ..Default::default()
    };
    let r = inspect(&splits, train_tf, &options).map_err(|e| e.to_string())?;
    if args.json {
        let splits: Vec<_> = r
            .splits
            .iter()
            .map(|s| {
                json!({
                    "name": s.name, "images": s.len, "scanned": s.scanned,
                    "bad": s.bad.iter().map(|b| json!({"index": b.index, "path": b.path.as_ref().map(|p| p.display().to_string()), "reason": b.reason})).collect::<Vec<_>>(),
                    "sizes": s.sizes.as_ref().map(|z| json!({"min": z.min, "max": z.max, "distinct": z.distinct_count})),
                    "mean": s.mean, "std": s.std,
                })
            })
            .collect();
        let counts: serde_json::Map<String, serde_json::Value> = r
            .splits
            .iter()
            .map(|s| (s.name.clone(), json!(s.counts)))
            .collect();
        let report = json!({
            "format": r.format.name(), "root": r.root, "splits": splits, "classes": r.classes,
            "counts": counts, "images_per_s": r.images_per_s,
        });
        println!("{report}");
        return strict_check(&r, args.strict);
    }
    let root = r
        .root
        .as_ref()
        .map_or("built-in".to_string(), |p| p.display().to_string());
    println!(
        "{} dataset at {root}, {} classes",
        r.format.name(),
        r.classes.len()
    );
    for s in &r.splits {
        let sizes = s.sizes.as_ref().map_or("none decoded".to_string(), |z| {
            if z.min == z.max {
                format!("all {}×{}", z.min.0, z.min.1)
            } else {
                format!(
                    "{}×{} to {}×{} ({} sizes)",
                    z.min.0, z.min.1, z.max.0, z.max.1, z.distinct_count
                )
            }
        });
        println!("\n{}: {} images, {sizes}", s.name, s.len);
        println!(
            "  mean RGB {:.4} {:.4} {:.4}   std {:.4} {:.4} {:.4}",
            s.mean[0], s.mean[1], s.mean[2], s.std[0], s.std[1], s.std[2]
        );
        if !s.bad.is_empty() {
            println!("  {} unreadable images:", s.bad.len());
            for bad in s.bad.iter().take(MAX_LISTED) {
                println!("    {bad}");
            }
            if s.bad.len() > MAX_LISTED {
                println!("    and {} more", s.bad.len() - MAX_LISTED);
            }
        }
        let width = r.classes.iter().map(String::len).max().unwrap_or(0);
        for (class, count) in r.classes.iter().zip(&s.counts) {
            println!("  {class:<width$}  {count}");
        }
    }
    if let Some(ips) = r.images_per_s {
        println!("\ntraining loader with augmentation: {ips:.0} images/s");
    }
    strict_check(&r, args.strict)
}

/// With `--strict`, an error when any split has unreadable images.
fn strict_check(r: &InspectReport, strict: bool) -> Result<(), String> {
    let bad: usize = r.splits.iter().map(|s| s.bad.len()).sum();
    if !strict || bad == 0 {
        return Ok(());
    }
    let root = r
        .root
        .as_ref()
        .map_or("the data set".to_string(), |p| p.display().to_string());
    Err(format!(
        "{root}: {bad} unreadable images (listed above); --strict refuses them"
    ))
}
