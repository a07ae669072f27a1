//! Running one network of a study plan through the stages, resumably.

use std::path::Path;

use depthshrink_nn::checkpoint;
use depthshrink_nn::keep::KeepList;
use depthshrink_nn::module::num_params;
use depthshrink_nn::network::Network;

use super::{Ablation, Method, NetworkPlan, RunRecord, SEARCH_METRICS, SUMMARY, StudyPlan};
use crate::config::TrainConfig;
use crate::finetune::{Pretrained, finetune};
use crate::latency::{LatencyTable, measure};
use crate::merge::{blocks_to_merge, merge_and_verify};
use crate::prune::{prune_blocks, prune_channels};
use crate::search::{SEARCH_JSON, random_search, search};
use crate::train::{CrossEntropy, LAST, METRICS, Observer, Trainer, evaluate, read_metrics, train};
use crate::{StageError, write_json};

/// Timed passes per block of the search's latency table.
const LATENCY_RUNS: usize = 15;

/// Runs network `net` of `plan` (read from `plan_path`) unless its record exists: its stages in
/// `plan.work/<name>/` (each resumed from its checkpoint when one is there), then its record,
/// metrics and search output in `plan.out/<name>/`. Returns the record.
pub fn run_network(
    plan: &StudyPlan,
    plan_path: &Path,
    net: &NetworkPlan,
    observer: &mut dyn Observer,
) -> Result<RunRecord, StageError> {
    let out = plan.out.join(&net.name);
    let summary = out.join(SUMMARY);
    if summary.is_file() {
        let text = std::fs::read_to_string(&summary).map_err(|e| write_err(&summary, e))?;
        return serde_json::from_str(&text)
            .map_err(|e| StageError::Config(format!("{}: {e}", summary.display())));
    }
    let text = std::fs::read_to_string(&plan.config).map_err(|e| write_err(&plan.config, e))?;
    let overrides: Vec<(String, String)> = net
        .set
        .iter()
        .map(|(key, value)| (key.clone(), value.to_string()))
        .collect();
    let mut base = TrainConfig::from_toml(&text, &overrides)
        .map_err(|e| StageError::Config(format!("network `{}`: {e}", net.name)))?;
    base.seed = net.seed;
    let work = plan.work.join(&net.name);
    let resume = |dir: &Path| dir.join(LAST).exists();
    let data = base.data.open(base.seed)?;
    let res = data.input_res()?;
    std::fs::create_dir_all(&out).map_err(|e| write_err(&out, e))?;

    let (deployed, keep, merged, epochs) = match net.method {
        Method::Baseline => (load(&plan.pretrained)?, None, None, base.epochs),
        Method::Width => {
            let mut config = base.clone();
            config.model.width = net.width.expect("checked by StudyPlan::read");
            let trained = train(config, &work, resume(&work), observer)?;
            copy(&work.join(METRICS), &out.join(METRICS))?;
            (trained, None, None, base.epochs)
        }
        Method::Depthshrinker | Method::Random => {
            let kept = net.keep.expect("checked by StudyPlan::read");
            let pretrained = load(&plan.pretrained)?;
            let table = search_latency(plan, &pretrained, res)?;
            let mut config = base.clone();
            config.epochs = plan.search_epochs;
            config.lr.set_lr(plan.stage_lr);
            let search_config = config.search.get_or_insert_with(Default::default);
            search_config.keep_ratio = kept as f64 / pretrained.num_acts() as f64;
            if let Some(indices) = &plan.searchable {
                search_config.searchable = Some(indices.clone());
            }
            let search_dir = work.join("search");
            let found = if net.method == Method::Depthshrinker {
                let found = search(
                    config,
                    pretrained.clone(),
                    Some(&table),
                    &search_dir,
                    resume(&search_dir),
                    observer,
                )?;
                copy(&search_dir.join(METRICS), &out.join(SEARCH_METRICS))?;
                found
            } else {
                random_search(&config, Some(&table), &search_dir)?
            };
            copy(&search_dir.join(SEARCH_JSON), &out.join(SEARCH_JSON))?;
            let keep = found
                .keep_lists
                .iter()
                .find(|c| c.kept == kept)
                .map(|c| c.keep.clone())
                .ok_or_else(|| {
                    StageError::Keep(format!(
                        "network `{}`: the search has no list keeping {kept}",
                        net.name
                    ))
                })?;
            let from = Pretrained {
                network: &pretrained,
                file: Some(&plan.pretrained),
                teacher: None,
            };
            let config = finetune_config(plan, &base, true);
            let finetuned = finetune_in(&work, &out, config, from, &keep, observer)?;
            let merge_plan = blocks_to_merge(&finetuned, false, Some(&table));
            let merged = merge_and_verify(&finetuned, merge_plan, res)?;
            observer.note(&format!(
                "{}: merged {} of {} blocks, max relative error {:.1e}",
                net.name,
                merged.count(),
                merged.plan.len(),
                merged.deviation.max_rel
            ));
            (
                merged.network,
                Some(keep),
                Some(merged.plan),
                plan.finetune_epochs,
            )
        }
        Method::ChannelPruning | Method::BlockPruning => {
            let pretrained = load(&plan.pretrained)?;
            let pruned = match (net.channels, &net.blocks) {
                (Some(ratio), _) => prune_channels(&pretrained, ratio as f32)?,
                (None, Some(blocks)) => {
                    let positions: Vec<usize> = blocks.iter().map(|i| i - 1).collect();
                    prune_blocks(&pretrained, &positions)?
                }
                (None, None) => unreachable!("checked by StudyPlan::read"),
            };
            let mut config = finetune_config(plan, &base, true);
            config.model.hidden_ratio = pruned.arch.hidden_ratio.map(f64::from);
            config.model.dropped_blocks = pruned.arch.dropped_blocks.clone();
            let from = Pretrained {
                network: &pruned,
                file: None,
                teacher: Some(&pretrained),
            };
            let keep = KeepList::all(pruned.num_acts());
            let tuned = finetune_in(&work, &out, config, from, &keep, observer)?;
            (tuned, None, None, plan.finetune_epochs)
        }
        Method::Ablation => {
            let source_name = net.keep_from.as_ref().expect("checked by StudyPlan::read");
            let source = plan
                .networks
                .iter()
                .find(|n| &n.name == source_name)
                .expect("checked by StudyPlan::read");
            let source = run_network(plan, plan_path, source, observer)?;
            let keep = source.keep.clone().ok_or_else(|| {
                StageError::Keep(format!("network `{source_name}` records no keep list"))
            })?;
            let merge_plan = source.merged.clone().unwrap_or_default();
            let pretrained = load(&plan.pretrained)?;
            let (trained, epochs) = match net.ablation.expect("checked by StudyPlan::read") {
                ablation @ (Ablation::NoDistill | Ablation::NoFreeRelu6) => {
                    let from = Pretrained {
                        network: &pretrained,
                        file: Some(&plan.pretrained),
                        teacher: None,
                    };
                    let mut config = finetune_config(plan, &base, ablation != Ablation::NoDistill);
                    config.model.free_relu6 = ablation != Ablation::NoFreeRelu6;
                    let tuned = finetune_in(&work, &out, config, from, &keep, observer)?;
                    (tuned, plan.finetune_epochs)
                }
                Ablation::FromScratch => {
                    let mut fresh = Network::new(&pretrained.arch, base.seed);
                    fresh.apply_keep(&keep)?;
                    let mut trainer =
                        Trainer::with_model(base.clone(), &work, resume(&work), Some(fresh))?;
                    let mut objective = CrossEntropy {
                        smoothing: base.label_smoothing as f32,
                    };
                    trainer.run_stage("training from scratch", observer, &mut objective)?;
                    copy(&work.join(METRICS), &out.join(METRICS))?;
                    (trainer.model, base.epochs)
                }
            };
            let merged = merge_and_verify(&trained, merge_plan, res)?;
            (merged.network, Some(keep), Some(merged.plan), epochs)
        }
    };
    let top1 = 100.0 * evaluate(&deployed, &data.test)?.top1;
    let spec = deployed.arch.spec();
    let all = KeepList::all(spec.num_acts());
    let flops = spec.flops(res, keep.as_ref().unwrap_or(&all));
    let mut counted = deployed.clone();
    let record = RunRecord {
        name: net.name.clone(),
        method: net.method,
        top1,
        keep,
        seed: net.seed,
        epochs,
        command: net.command.clone().unwrap_or_else(|| {
            format!(
                "depthshrink study {} --only {}",
                plan_path.display(),
                net.name
            )
        }),
        weights: None,
        group: net.group.clone(),
        params: Some(num_params(&mut counted) as u64),
        macs_m: Some(flops.macs as f64 / 1e6),
        fvcore_mflops: Some(flops.fvcore as f64 / 1e6),
        wall_seconds: wall_seconds(&work),
        arch: Some(deployed.arch.clone()),
        merged,
        free_relu6: deployed.variant().free_relu6,
    };
    write_json(&summary, &record)?;
    Ok(record)
}

/// The plan's finetuning budget on the baseline recipe: its epochs and learning rate, no
/// search, distillation from the plan unless `distill` is false.
fn finetune_config(plan: &StudyPlan, base: &TrainConfig, distill: bool) -> TrainConfig {
    let mut config = base.clone();
    config.epochs = plan.finetune_epochs;
    config.lr.set_lr(plan.stage_lr);
    config.search = None;
    config.distill = distill.then(|| plan.distill.clone());
    config
}

/// Finetunes in `work/finetune` (resuming a run there) and copies its metrics to `out`.
fn finetune_in(
    work: &Path,
    out: &Path,
    config: TrainConfig,
    from: Pretrained<'_>,
    keep: &KeepList,
    observer: &mut dyn Observer,
) -> Result<Network, StageError> {
    let dir = work.join("finetune");
    let resume = dir.join(LAST).exists();
    let tuned = finetune(config, from, keep, &dir, resume, observer)?;
    copy(&dir.join(METRICS), &out.join(METRICS))?;
    Ok(tuned)
}

fn write_err(path: &Path, e: std::io::Error) -> StageError {
    StageError::Write {
        path: path.to_path_buf(),
        source: e,
    }
}

fn load(path: &Path) -> Result<Network, StageError> {
    Ok(Network::from_checkpoint(&checkpoint::load(path)?, None)?)
}

fn copy(from: &Path, to: &Path) -> Result<(), StageError> {
    let bytes = std::fs::read(from).map_err(|e| write_err(from, e))?;
    checkpoint::write_atomic(to, &bytes).map_err(|e| write_err(to, e))
}

/// The latency table every search of the study weighs: `<out>/search-latency.json`, measured
/// once (at `plan.latency_batch`) and then read, so every search sees the same ΔL.
fn search_latency(plan: &StudyPlan, net: &Network, res: usize) -> Result<LatencyTable, StageError> {
    let path = plan.out.join("search-latency.json");
    if path.is_file() {
        return LatencyTable::read(&path, Some(&net.arch), Some(res));
    }
    let table = measure(&net.arch, res, plan.latency_batch, LATENCY_RUNS, |_, _| {})?;
    std::fs::create_dir_all(&plan.out).map_err(|e| write_err(&plan.out, e))?;
    write_json(&path, &table)?;
    Ok(table)
}

/// Training and evaluation seconds of every run under `work` (from their metrics, so resumed
/// runs count each epoch once).
fn wall_seconds(work: &Path) -> Option<f64> {
    let dirs = [
        work.to_path_buf(),
        work.join("search"),
        work.join("finetune"),
    ];
    let total: f64 = dirs
        .iter()
        .filter_map(|d| read_metrics(&d.join(METRICS)).ok())
        .flatten()
        .map(|m| m.seconds + m.eval_seconds)
        .sum();
    (total > 0.0).then_some(total)
}
