//! The trainer: a run's state, its epochs, checkpoints and exact resume.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Instant;

use depthshrink_nn::checkpoint;
use depthshrink_nn::module;
use depthshrink_nn::network::Network;
use depthshrink_nn::optim::Optimizer;
use depthshrink_nn::schedule::LrSchedule;
use depthshrink_tensor::Tensor;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::io_err;
use super::metrics::{append_line, rewrite_metrics};
use super::{
    BEST, BatchProgress, CONFIG, CrossEntropy, Data, EpochMetrics, LAST, LOCK, METRICS,
    OPTIM_PREFIX, Objective, Observer, TrainConfig, TrainError, dropout_seed, evaluate, train_step,
};

/// Where the run is: the next step is batch `batch` of epoch `epoch` (both 0-based).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The epoch, from 0.
    pub epoch: usize,
    /// The next batch within the epoch, from 0.
    pub batch: usize,
    /// Steps applied since the run started: `epoch · batches_per_epoch + batch`.
    pub global_step: usize,
}

/// Running sums of the epoch in progress (saved in mid-epoch checkpoints).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
struct EpochSums {
    loss_sum: f64,
    correct: usize,
    images: usize,
    seconds: f64,
}

/// The end of a run.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// Metrics of the last epoch run by this call (None if there was nothing left to do).
    pub last: Option<EpochMetrics>,
    /// Best test top-1 of the run so far, in [0, 1] (None before the first evaluation).
    pub best_val_acc: Option<f64>,
    /// Where the run ended.
    pub position: Position,
}

/// A training run: model, optimiser, schedule, data and the output directory.
pub struct Trainer {
    /// The run's configuration (as recorded in `config.toml`).
    pub config: TrainConfig,
    /// The output directory.
    pub out: PathBuf,
    /// The network being trained.
    pub model: Network,
    /// The optimiser, with its state.
    pub optimizer: Box<dyn Optimizer>,
    /// The learning rate of every global step.
    pub schedule: LrSchedule,
    /// The data and its loaders.
    pub data: Data,
    /// The next step.
    pub position: Position,
    /// Best test top-1 so far, in [0, 1] (None before the first evaluation).
    pub best_val_acc: Option<f64>,
    /// Merged into every checkpoint's metadata (later stages record their own fields here).
    pub extra_metadata: serde_json::Map<String, Value>,
    /// This run continues one from its checkpoint.
    pub resumed: bool,
    sums: EpochSums,
    /// The output directory's lock, held while the trainer lives.
    _lock: fs::File,
}

impl Trainer {
    /// A fresh run (initial weights from `config.seed`) or, with `resume`, the continuation of
    /// the one in `out`. A fresh run refuses an `out` that already holds a checkpoint.
    pub fn new(config: TrainConfig, out: &Path, resume: bool) -> Result<Trainer, TrainError> {
        Trainer::with_model(config, out, resume, None)
    }

    /// As [`Trainer::new`], starting a fresh run from `model` (e.g. pretrained weights with
    /// some activations removed) instead of a seeded initialisation.
    pub fn with_model(
        config: TrainConfig,
        out: &Path,
        resume: bool,
        model: Option<Network>,
    ) -> Result<Trainer, TrainError> {
        config.validate()?;
        let last = out.join(LAST);
        if !resume && last.exists() {
            return Err(already_a_run(out));
        }
        if resume && !last.exists() {
            let detail = if out.is_dir() {
                format!(
                    "the run in {} has no checkpoint yet (it stopped before its first save); start it without --resume",
                    out.display()
                )
            } else {
                format!(
                    "there is no run in {}; start one without --resume",
                    out.display()
                )
            };
            return Err(TrainError::Resume { path: last, detail });
        }
        let data = config.data.open(config.seed)?;
        let classes = data.splits.class_names().len();
        let arch = config.model.arch(classes);
        if arch.num_classes != classes {
            return Err(TrainError::Config(format!(
                "model.num_classes = {} but the data set has {classes} classes",
                arch.num_classes
            )));
        }
        let bpe = data.train.batches_per_epoch();
        let schedule = config
            .lr
            .build(config.epochs, bpe)
            .map_err(|e| TrainError::Config(format!("lr: {e}")))?;
        let mut optimizer = config.optim.build()?;
        fs::create_dir_all(out).map_err(io_err(out))?;
        let lock = lock_dir(out)?;
        remove_stale_temps(out);
        // Checked again under the lock: a run that held it may have saved since.
        if !resume && last.exists() {
            return Err(already_a_run(out));
        }

        let mut trainer_model;
        let mut position = Position::default();
        let mut best_val_acc = None;
        let mut sums = EpochSums::default();
        let mut extra_metadata = serde_json::Map::new();
        if resume {
            let ckpt = checkpoint::load(&last)?;
            let bad = |detail: String| TrainError::Resume {
                path: last.clone(),
                detail,
            };
            if let Some(recorded) = ckpt.metadata.get("config") {
                let changes = config_changes(recorded, &config);
                if !changes.is_empty() {
                    return Err(bad(format!(
                        "it was started with other settings: {}; resume with the settings it was started with (its {CONFIG}) or start a new run in another directory",
                        changes.join("; ")
                    )));
                }
            }
            trainer_model = Network::from_checkpoint(&ckpt, None)?;
            if trainer_model.arch != arch {
                return Err(bad(format!(
                    "it holds a {}, the config describes a {}",
                    trainer_model.arch, arch
                )));
            }
            let meta = &ckpt.metadata;
            position = serde_json::from_value(json!({
                "epoch": meta.get("epoch"), "batch": meta.get("batch"), "global_step": meta.get("global_step"),
            }))
            .map_err(|e| bad(format!("no valid position in its metadata: {e}")))?;
            if position.batch > bpe || position.global_step != position.epoch * bpe + position.batch
            {
                return Err(bad(format!(
                    "its position (epoch {}, batch {}, step {}) does not fit {bpe} batches per epoch: was the batch size or data changed?",
                    position.epoch, position.batch, position.global_step
                )));
            }
            best_val_acc = meta.get("best_val_acc").and_then(Value::as_f64);
            if let Some(s) = meta.get("epoch_sums") {
                sums = serde_json::from_value(s.clone())
                    .map_err(|e| bad(format!("epoch_sums: {e}")))?;
            }
            if let Some(Value::Object(extra)) = meta.get("extra") {
                extra_metadata = extra.clone();
            }
            let state: Vec<(String, Tensor)> = ckpt
                .tensors
                .iter()
                .filter_map(|(k, v)| {
                    k.strip_prefix(OPTIM_PREFIX)
                        .map(|k| (k.to_string(), v.clone()))
                })
                .collect();
            optimizer
                .load_state(state)
                .map_err(|e| bad(e.to_string()))?;
        } else {
            trainer_model = model.unwrap_or_else(|| Network::new(&arch, config.seed));
            if trainer_model.arch != arch {
                return Err(TrainError::Config(format!(
                    "the given model is a {}, the config describes a {}",
                    trainer_model.arch, arch
                )));
            }
        }
        trainer_model.dropout = config.model.dropout as f32;

        let config_path = out.join(CONFIG);
        checkpoint::write_atomic(&config_path, config.to_toml().as_bytes())
            .map_err(io_err(&config_path))?;
        rewrite_metrics(&out.join(METRICS), &position)?;

        Ok(Trainer {
            config,
            out: out.to_path_buf(),
            model: trainer_model,
            optimizer,
            schedule,
            data,
            position,
            best_val_acc,
            extra_metadata,
            resumed: resume,
            sums,
            _lock: lock,
        })
    }

    /// Training batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.data.train.batches_per_epoch()
    }

    /// [`run_with`](Trainer::run_with) between the observer's
    /// [`run_start`](Observer::run_start) and [`run_done`](Observer::run_done): a stage's run,
    /// `what` naming it for the observer (e.g. "training", "searching").
    pub fn run_stage(
        &mut self,
        what: &str,
        observer: &mut dyn Observer,
        objective: &mut dyn Objective,
    ) -> Result<RunSummary, TrainError> {
        observer.run_start(what, self);
        let summary = self.run_with(observer, objective)?;
        observer.run_done(&summary, self);
        Ok(summary)
    }

    /// Trains with cross-entropy (the configured label smoothing) to the last epoch.
    pub fn run(&mut self, observer: &mut dyn Observer) -> Result<RunSummary, TrainError> {
        let mut objective = CrossEntropy {
            smoothing: self.config.label_smoothing as f32,
        };
        self.run_with(observer, &mut objective)
    }

    /// Trains with `objective` from the current position to the last epoch.
    pub fn run_with(
        &mut self,
        observer: &mut dyn Observer,
        objective: &mut dyn Objective,
    ) -> Result<RunSummary, TrainError> {
        let bpe = self.batches_per_epoch();
        let epochs = self.config.epochs;
        let grad_clip = self.config.grad_clip.map(|c| c as f32);
        let mut last = None;
        while self.position.epoch < epochs {
            let epoch = self.position.epoch;
            observer.epoch_start(epoch, epochs, self.position.batch, bpe);
            let batches = self
                .data
                .train
                .epoch_from(epoch as u64, self.position.batch)?;
            let mut lr = self
                .schedule
                .lr(self.position.global_step.saturating_sub(1));
            let mut tick = Instant::now();
            for batch in batches {
                let batch = batch?;
                let step = self.position.global_step;
                lr = self.schedule.lr(step);
                let seed = dropout_seed(self.config.seed, step as u64);
                let stats = match train_step(
                    &mut self.model,
                    self.optimizer.as_mut(),
                    objective,
                    &batch,
                    lr,
                    seed,
                    grad_clip,
                ) {
                    Ok(s) => s,
                    Err(TrainError::NonFinite { what, value }) => {
                        let last = self.out.join(LAST);
                        return Err(TrainError::Diverged {
                            epoch: epoch + 1,
                            batch: batch.position + 1,
                            what,
                            value,
                            last: last.exists().then_some(last),
                        });
                    }
                    Err(e) => return Err(e),
                };
                self.position.batch = batch.position + 1;
                self.position.global_step += 1;
                if let Some(record) = objective.step_log(&self.model, self.position.global_step) {
                    let mut line = serde_json::Map::new();
                    line.insert("step".into(), json!(self.position.global_step));
                    line.insert("epoch".into(), json!(epoch + 1));
                    if let Value::Object(fields) = record {
                        line.extend(fields);
                    }
                    append_line(&self.out.join(METRICS), &Value::Object(line))?;
                }
                let now = Instant::now();
                let dt = now.duration_since(tick).as_secs_f64();
                tick = now;
                self.sums.loss_sum += stats.loss as f64 * stats.images as f64;
                self.sums.correct += stats.correct;
                self.sums.images += stats.images;
                self.sums.seconds += dt;
                observer.batch_done(&BatchProgress {
                    epoch,
                    batch: batch.position,
                    batches: bpe,
                    loss: stats.loss,
                    acc: stats.correct as f64 / stats.images.max(1) as f64,
                    images_per_s: stats.images as f64 / dt.max(1e-9),
                    lr,
                });
                let every = self.config.checkpoint_every;
                if every > 0
                    && self.position.batch.is_multiple_of(every)
                    && self.position.batch < bpe
                {
                    let path = self.out.join(LAST);
                    self.save(&path)?;
                    // Saving is part of the loop's cost.
                    let now = Instant::now();
                    self.sums.seconds += now.duration_since(tick).as_secs_f64();
                    tick = now;
                }
            }
            // The epoch is complete.
            let evaluate_now =
                (epoch + 1).is_multiple_of(self.config.eval_every) || epoch + 1 == epochs;
            let eval_start = Instant::now();
            let eval = if evaluate_now {
                observer.evaluating(epoch);
                Some(evaluate(&self.model, &self.data.test)?)
            } else {
                None
            };
            let eval_seconds = eval_start.elapsed().as_secs_f64();
            let n = self.sums.images.max(1) as f64;
            let metrics = EpochMetrics {
                epoch: epoch + 1,
                train_loss: self.sums.loss_sum / n,
                train_acc: self.sums.correct as f64 / n,
                val_loss: eval.as_ref().map(|e| e.loss),
                val_acc: eval.as_ref().map(|e| e.top1),
                val_top5: eval.as_ref().map(|e| e.top5),
                lr: lr as f64,
                seconds: self.sums.seconds,
                eval_seconds,
                images_per_s: self.sums.images as f64 / self.sums.seconds.max(1e-9),
                images: self.sums.images,
            };
            self.position = Position {
                epoch: epoch + 1,
                batch: 0,
                global_step: self.position.global_step,
            };
            self.sums = EpochSums::default();
            let improved = metrics
                .val_acc
                .is_some_and(|acc| self.best_val_acc.is_none_or(|best| acc > best));
            if improved {
                self.best_val_acc = metrics.val_acc;
            }
            append_line(&self.out.join(METRICS), &metrics)?;
            let (last_path, best_path) = (self.out.join(LAST), self.out.join(BEST));
            self.save(&last_path)?;
            if improved {
                self.save(&best_path)?;
            }
            observer.epoch_done(&metrics);
            last = Some(metrics);
        }
        Ok(RunSummary {
            last,
            best_val_acc: self.best_val_acc,
            position: self.position,
        })
    }

    /// The checkpoint metadata at the current position.
    pub fn metadata(&self) -> Value {
        let mut meta = match self.model.metadata() {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        let config = serde_json::to_value(&self.config).expect("a train config serialises to JSON");
        meta.insert("config".into(), config);
        meta.insert("epoch".into(), json!(self.position.epoch));
        meta.insert("batch".into(), json!(self.position.batch));
        meta.insert("global_step".into(), json!(self.position.global_step));
        meta.insert("batches_per_epoch".into(), json!(self.batches_per_epoch()));
        meta.insert("best_val_acc".into(), json!(self.best_val_acc));
        meta.insert("epoch_sums".into(), json!(self.sums));
        if !self.extra_metadata.is_empty() {
            meta.insert("extra".into(), Value::Object(self.extra_metadata.clone()));
        }
        Value::Object(meta)
    }

    /// Writes model + optimiser state + metadata to `path` atomically. Refuses (as a
    /// divergence) to write non-finite weights.
    pub fn save(&mut self, path: &Path) -> Result<(), TrainError> {
        let mut tensors = module::state_dict(&mut self.model);
        if let Some((name, _)) = tensors
            .iter()
            .find(|(_, t)| t.data().iter().any(|v| !v.is_finite()))
        {
            let last = self.out.join(LAST);
            return Err(TrainError::Diverged {
                epoch: self.position.epoch + usize::from(self.position.batch > 0),
                batch: self.position.batch,
                what: if name.contains("running_") {
                    "batch-norm statistics"
                } else {
                    "weights"
                },
                value: f32::NAN,
                last: last.exists().then_some(last),
            });
        }
        tensors.extend(
            self.optimizer
                .state()
                .into_iter()
                .map(|(k, v)| (format!("{OPTIM_PREFIX}{k}"), v)),
        );
        checkpoint::save(path, &tensors, &self.metadata())?;
        Ok(())
    }
}

fn already_a_run(out: &Path) -> TrainError {
    TrainError::Config(format!(
        "{} already holds a run ({LAST}); resume it with --resume or choose another output directory",
        out.display()
    ))
}

/// Takes the output directory's lock file, so two runs never write one directory at once. The
/// lock goes with the returned file (and with the process, however it ends).
fn lock_dir(out: &Path) -> Result<fs::File, TrainError> {
    let path = out.join(LOCK);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(TrainError::Busy {
            dir: out.to_path_buf(),
        }),
        Err(fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
    }
}

/// Removes the temp files a killed writer of this directory left behind: the atomic writer's
/// `.<file>.<pid>.<n>.tmp` for the checkpoints, `config.toml` and `metrics.jsonl`. Called under
/// the directory's lock, so no live run owns them.
fn remove_stale_temps(out: &Path) {
    let Ok(entries) = fs::read_dir(out) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let temp = [LAST, BEST, CONFIG, METRICS]
            .iter()
            .any(|f| name.starts_with(&format!(".{f}.")) && name.ends_with(".tmp"));
        if temp {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Config keys a resumed run may change: where the data lives (when it moved) and how fast the
/// run is fed, evaluated or saved. None changes what the run computes beyond float rounding
/// (the thread count and evaluation batch size can move the last bits). Everything else
/// (epochs, lr, optimiser, data limits, search and distillation...) would make the
/// checkpoint's metadata and `config.toml` misstate the run, so it is refused.
const MAY_CHANGE_ON_RESUME: [&str; 6] = [
    "threads",
    "checkpoint_every",
    "data.dir",
    "data.prefetch",
    "data.cache",
    "data.eval_batch_size",
];

/// The keys whose values differ between the config a run recorded and `config`, as
/// "`key` was OLD, now NEW", sorted by key.
fn config_changes(recorded: &Value, config: &TrainConfig) -> Vec<String> {
    // Read through today's config type first, so a key added since with its default value
    // (e.g. `search.gate_gradient`) is not a change; a config that no longer reads is compared
    // as it was written.
    let recorded = serde_json::from_value::<TrainConfig>(recorded.clone())
        .ok()
        .and_then(|c| serde_json::to_value(c).ok())
        .unwrap_or_else(|| recorded.clone());
    let mut old = std::collections::BTreeMap::new();
    let mut new = std::collections::BTreeMap::new();
    flatten("", &recorded, &mut old);
    let current = serde_json::to_value(config).expect("a train config serialises to JSON");
    flatten("", &current, &mut new);
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let show = |v: Option<&Value>| v.map_or("absent".to_string(), Value::to_string);
    keys.into_iter()
        .filter(|key| {
            let (a, b) = (old.get(*key), new.get(*key));
            // A moved data directory, not a switch between the synthetic set and a directory.
            let allowed = MAY_CHANGE_ON_RESUME.contains(&key.as_str())
                && (key.as_str() != "data.dir" || (a.is_some() && b.is_some()));
            !allowed && !same_value(a, b)
        })
        .map(|key| {
            format!(
                "`{key}` was {}, now {}",
                show(old.get(key)),
                show(new.get(key))
            )
        })
        .collect()
}

/// Dotted keys to leaf values (arrays are leaves).
fn flatten(prefix: &str, value: &Value, out: &mut std::collections::BTreeMap<String, Value>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_string(), value.clone());
        }
    }
}

/// Equal values, floats to 1e-12 relative: serde_json's default float parsing may be off by an
/// ulp from what was written.
fn same_value(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a, b) {
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(Some(x), Some(y)))
        }
        (Some(x), Some(y)) if x.is_f64() || y.is_f64() => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
            _ => false,
        },
        (a, b) => a == b,
    }
}

/// Trains a network from scratch per `config` in `out` (or, with `resume`, continues the run
/// there) with cross-entropy: the baseline the other stages start from.
pub fn train(
    config: TrainConfig,
    out: &Path,
    resume: bool,
    observer: &mut dyn Observer,
) -> Result<Network, TrainError> {
    let mut trainer = Trainer::new(config, out, resume)?;
    let mut objective = CrossEntropy {
        smoothing: trainer.config.label_smoothing as f32,
    };
    trainer.run_stage("training", observer, &mut objective)?;
    Ok(trainer.model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GateGradient;

    const BASE: &str = crate::config::TEST_CONFIG;

    #[test]
    fn resume_changes_name_each_key_and_spare_speed_settings() {
        let c = TrainConfig::from_toml(BASE, &[]).unwrap();
        let recorded = serde_json::to_value(&c).unwrap();
        let mut other = c.clone();
        other.epochs = 3;
        other.lr.set_lr(0.2);
        other.threads = Some(1);
        other.data.prefetch = 5;
        assert_eq!(
            config_changes(&recorded, &other),
            ["`epochs` was 2, now 3", "`lr.lr` was 0.1, now 0.2"]
        );
        // A moved directory is fine; switching from the synthetic set to a directory is not.
        other = c.clone();
        other.data.dir = Some("elsewhere".into());
        assert_eq!(
            config_changes(&recorded, &other),
            ["`data.dir` was absent, now \"elsewhere\""]
        );
        let mut moved = other.clone();
        moved.data.dir = Some("moved".into());
        let recorded_dir = serde_json::to_value(&other).unwrap();
        assert!(config_changes(&recorded_dir, &moved).is_empty());
        // An ulp of JSON parsing is not a change.
        let mut close = recorded.clone();
        close["lr"]["lr"] = json!(0.1f64.next_up());
        assert!(config_changes(&close, &c).is_empty());
        // A key added since, at its default, is no change; at another value it is.
        let mut older = recorded.clone();
        older["search"] = json!({ "keep_ratio": 0.4 });
        let mut searching = c.clone();
        searching.search = Some(crate::config::SearchConfig::default());
        assert!(config_changes(&older, &searching).is_empty());
        searching.search.as_mut().unwrap().gate_gradient = GateGradient::Clipped;
        assert_eq!(
            config_changes(&older, &searching),
            ["`search.gate_gradient` was \"everywhere\", now \"clipped\""]
        );
    }
}
