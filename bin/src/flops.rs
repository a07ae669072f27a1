//! `depthshrink flops`: multiply-adds and fvcore-convention MFLOPs of a (merged) network.

use std::path::PathBuf;

use clap::Args;
use depthshrink_nn::arch::ArchConfig;
use depthshrink_nn::keep::KeepList;
use serde::Deserialize;
use serde_json::json;

use crate::args::{ArchArgs, parse_keep};

#[derive(Args)]
pub struct FlopsArgs {
    /// Activations kept (0/1 per activation index, 1 = keep); removed IR blocks count as merged.
    #[arg(long, value_name = "LIST|FILE", conflicts_with = "config")]
    keep: Option<String>,
    /// A TOML file with `keep = [...]` and optionally a `[model]` table (e.g. configs/mbv2-140-D.toml).
    /// With a `[model]` table, an architecture flag that contradicts it is an error.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Input resolution, at least 1 [default: 32 with --cifar, else 224].
    #[arg(long)]
    res: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    arch: ArchArgs,
}

/// The parts of a config file this command reads; other keys are left to other commands.
#[derive(Deserialize)]
struct KeepConfig {
    keep: Vec<u8>,
    model: Option<ArchConfig>,
}

pub fn run(args: &FlopsArgs) -> Result<(), String> {
    let (arch, keep) = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--config: cannot read {}: {e}", path.display()))?;
            let cfg: KeepConfig =
                toml::from_str(&text).map_err(|e| format!("--config {}: {e}", path.display()))?;
            let keep = cfg
                .keep
                .iter()
                .enumerate()
                .map(|(i, &b)| match b {
                    0 => Ok(false),
                    1 => Ok(true),
                    _ => Err(format!(
                        "--config {}: keep[{i}] = {b} is not 0 or 1",
                        path.display()
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?
                .into();
            let arch = match cfg.model {
                Some(model) => {
                    // The table describes the network: a flag saying otherwise is refused,
                    // not silently ignored.
                    args.arch.check_stored(&model, path)?;
                    model
                }
                None => args.arch.arch()?,
            };
            (arch, Some(keep))
        }
        None => (
            args.arch.arch()?,
            args.keep.as_deref().map(parse_keep).transpose()?,
        ),
    };
    let spec = arch.spec();
    let keep: KeepList = keep.unwrap_or_else(|| KeepList::all(spec.num_acts()));
    if keep.len() != spec.num_acts() {
        return Err(format!(
            "the keep list has {} entries; this network has {} activation indices",
            keep.len(),
            spec.num_acts()
        ));
    }
    let res = args.res.unwrap_or(if arch.cifar { 32 } else { 224 });
    if res == 0 {
        return Err("--res must be at least 1".into());
    }
    // Checked: absurd widths, resolutions or class counts overflow 64-bit counts.
    let too_large = || {
        format!(
            "{arch} at {res}×{res} is too large to count: its multiply-adds or parameters overflow 64-bit integers (check --width, --res and --num-classes)"
        )
    };
    let f = spec.checked_flops(res, &keep).ok_or_else(too_large)?;
    let params = spec.checked_num_params().ok_or_else(too_large)?;
    let (macs, fvcore) = (f.macs as f64 / 1e6, f.fvcore as f64 / 1e6);
    if args.json {
        println!(
            "{}",
            json!({"res": res, "params": params, "macs_m": macs, "fvcore_mflops": fvcore, "keep": keep})
        );
    } else {
        let removed = keep.len() - keep.kept();
        println!(
            "{res}×{res}, {} activations removed: {macs:.2} M multiply-adds, {fvcore:.2} MFLOPs (fvcore convention), {params} parameters unmerged",
            removed
        );
    }
    Ok(())
}
