//! `depthshrink finetune`: stage 2, remove the activations a keep list drops and finetune from
//! the pretrained weights, optionally distilling from the pretrained network.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use depthshrink_nn::mobilenet::MobileNet;
use depthshrink_nn::module::state_dict;
use depthshrink_shrinker::finetune::{Distill, student};
use depthshrink_shrinker::train::{CrossEntropy, Objective, TrainConfig, Trainer};
use serde_json::Value;

use crate::args::parse_keep;
use crate::search::load_pretrained;
use crate::train::{RunArgs, config_threads, load_config, run_stage};

#[derive(Args)]
pub struct FinetuneArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// The pretrained network (the original one, not the search's weights).
    #[arg(long, value_name = "FILE")]
    pub pretrained: PathBuf,
    /// Activations to keep: comma-separated 0/1 per activation index (stem, blocks, head;
    /// 1 = keep), or a file holding the list (e.g. a search's search.json; `search.json:N` picks
    /// its list keeping N).
    #[arg(long, value_name = "LIST|FILE")]
    pub keep: String,
    /// Self-distillation from the pretrained network, with the config's `[distill]` parameters
    /// (default α = 0.7, T = 1); without this flag there is none, whatever the config holds.
    #[arg(long)]
    pub distill: bool,
    /// Weight of the distillation term (implies --distill).
    #[arg(long, value_name = "A")]
    pub alpha: Option<f64>,
    /// Distillation temperature (implies --distill).
    #[arg(long, value_name = "T")]
    pub temperature: Option<f64>,
}

pub fn run(args: &FinetuneArgs, cli_threads: Option<usize>) -> Result<(), String> {
    let (mut config, stem) = load_config(&args.run.setup)?;
    // The flag decides; a config's `[distill]` table only holds the parameters, so a shipped
    // config with one can still finetune without distillation (and the run's config.toml then
    // has no `[distill]`).
    config.distill = if args.distill || args.alpha.is_some() || args.temperature.is_some() {
        let mut d = config.distill.take().unwrap_or_default();
        if let Some(a) = args.alpha {
            d.alpha = a;
        }
        if let Some(t) = args.temperature {
            d.temperature = t;
        }
        d.validate()?;
        Some(d)
    } else {
        None
    };
    config_threads(&config, cli_threads)?;
    let out = args.run.setup.out_dir(&stem, "-finetune");
    let pretrained = load_pretrained(&args.pretrained)?;
    let keep = parse_keep(&args.keep)?;
    finetune_from(
        config,
        &pretrained,
        Some(&args.pretrained),
        &keep,
        &out,
        args.run.resume,
    )?;
    Ok(())
}

/// Stage 2: `pretrained` with the activations `keep` drops removed, finetuned per `config`
/// (distilled from `pretrained` when it has a `[distill]` table), in `out`. Returns the
/// finetuned network.
pub fn finetune_stage(
    config: TrainConfig,
    pretrained: &MobileNet,
    keep: &[bool],
    out: &Path,
    resume: bool,
) -> Result<MobileNet, String> {
    finetune_from(config, pretrained, None, keep, out, resume)
}

/// [`finetune_stage`], naming the file `pretrained` was read from (if any) in the run's
/// metadata beside its fingerprint.
fn finetune_from(
    config: TrainConfig,
    pretrained: &MobileNet,
    pretrained_path: Option<&Path>,
    keep: &[bool],
    out: &Path,
    resume: bool,
) -> Result<MobileNet, String> {
    let net = student(pretrained, keep).map_err(|e| format!("--keep: {e}"))?;
    let smoothing = config.label_smoothing as f32;
    let mut objective: Box<dyn Objective> = match &config.distill {
        Some(d) => Box::new(Distill::new(pretrained, d, smoothing).map_err(|e| e.to_string())?),
        None => Box::new(CrossEntropy { smoothing }),
    };
    let start = Instant::now();
    let mut trainer =
        Trainer::with_model(config, out, resume, Some(net)).map_err(|e| e.to_string())?;
    if trainer.model.variant().keep != keep {
        return Err(format!(
            "--keep differs from the keep list of the run being resumed in {}",
            out.display()
        ));
    }
    record_teacher(&mut trainer, pretrained, pretrained_path, resume)?;
    let kept = keep.iter().filter(|&&k| k).count();
    let what = format!(
        "finetuning ({kept} of {} activations kept{})",
        keep.len(),
        if trainer.config.distill.is_some() {
            ", distilled"
        } else {
            ""
        }
    );
    run_stage(&what, &mut trainer, objective.as_mut(), resume, start)?;
    Ok(trainer.model)
}

/// Where the run's metadata records the pretrained network (its `extra` object).
const TEACHER_KEY: &str = "pretrained";

/// Records the pretrained network (file and fingerprint) in the run's metadata; on resume,
/// refuses one that differs from the recorded one: the checkpoint would then name a teacher
/// (and a starting point) the run did not have. Runs recorded before fingerprints existed are
/// resumed as they are, without one.
fn record_teacher(
    trainer: &mut Trainer,
    pretrained: &MobileNet,
    path: Option<&Path>,
    resume: bool,
) -> Result<(), String> {
    let fingerprint = fingerprint(pretrained);
    let name = |path: Option<&Value>| {
        path.and_then(Value::as_str).map_or(
            "a network from an earlier stage".to_string(),
            str::to_string,
        )
    };
    let new_path = path.map(|p| Value::String(p.display().to_string()));
    let recorded = trainer.extra_metadata.get(TEACHER_KEY);
    if resume {
        let Some(recorded) = recorded else {
            return Ok(());
        };
        if recorded.get("fingerprint").and_then(Value::as_str) != Some(fingerprint.as_str()) {
            return Err(format!(
                "--pretrained: {} (fingerprint {fingerprint}) is not the pretrained network the run in {} was started from: {} (fingerprint {}); resume with that one or start a new run in another directory",
                name(new_path.as_ref()),
                trainer.out.display(),
                name(recorded.get("path")),
                recorded
                    .get("fingerprint")
                    .and_then(Value::as_str)
                    .unwrap_or("none"),
            ));
        }
    }
    let mut record = serde_json::Map::new();
    if let Some(p) = new_path {
        record.insert("path".into(), p);
    }
    record.insert("fingerprint".into(), Value::String(fingerprint));
    trainer
        .extra_metadata
        .insert(TEACHER_KEY.into(), Value::Object(record));
    Ok(())
}

/// A fingerprint of a network's tensors (names, shapes and values): FNV-1a, 64 bits, in hex.
/// The same weights saved to another file or path give the same fingerprint.
fn fingerprint(net: &MobileNet) -> String {
    let mut net = net.clone();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for (name, tensor) in state_dict(&mut net) {
        eat(name.as_bytes());
        for &d in tensor.shape() {
            eat(&(d as u64).to_le_bytes());
        }
        for v in tensor.data() {
            eat(&v.to_le_bytes());
        }
    }
    format!("fnv1a64:{hash:016x}")
}
