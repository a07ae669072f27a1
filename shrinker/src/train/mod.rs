//! The training loop shared by every stage: baseline training, finetuning with distillation and
//! the gated search all run through [`Trainer`] (epochs, evaluation, metrics, checkpoints, exact
//! resume) and differ only in their [`Objective`].
//!
//! A run is configured by a [`TrainConfig`] (TOML, unknown keys rejected) and writes to its
//! output directory:
//! - `config.toml`: the resolved configuration;
//! - `metrics.jsonl`: one [`EpochMetrics`] JSON object per completed epoch;
//! - `last.safetensors`: model + optimiser state (under `optim.`) + metadata, at every epoch end
//!   and every `checkpoint_every` batches;
//! - `best.safetensors`: the same, for the best validation top-1 so far;
//! - `.lock`: locked while a run writes the directory, so a second one is refused.
//!
//! Exact resume: every random stream is a function of the seed and the position: the loader's
//! order and augmentation of (seed, epoch, index), dropout masks of (seed, global step), the
//! learning rate of the global step. A checkpoint therefore only records the position (`epoch`,
//! next `batch`, `global_step`) beside the weights, BN statistics and optimiser state, and a run
//! killed at any point and resumed from `last.safetensors` ends with the same bits as an
//! uninterrupted one (given the same thread count).

mod data;
mod error;
mod eval;
mod metrics;
mod step;
mod trainer;

pub use data::{Data, eval_loader};
pub use error::TrainError;
pub use eval::{EvalStats, evaluate};
pub use metrics::{BatchProgress, EpochMetrics, Observer, Silent, read_metrics};
pub use step::{CrossEntropy, Objective, StepStats, count_correct, dropout_seed, train_step};
pub use trainer::{Position, RunSummary, Trainer, train};

pub use crate::config::{DataConfig, ModelConfig, TrainConfig};

/// The latest checkpoint in a run's output directory.
pub const LAST: &str = "last.safetensors";
/// The checkpoint of the best test top-1 so far.
pub const BEST: &str = "best.safetensors";
/// One [`EpochMetrics`] JSON line per completed epoch (and the search's step logs).
pub const METRICS: &str = "metrics.jsonl";
/// The resolved configuration of the run.
pub const CONFIG: &str = "config.toml";
/// Locked by the run writing the directory (see [`Trainer::with_model`]).
pub const LOCK: &str = ".lock";
/// Prefix of the optimiser state's tensors in checkpoints.
pub const OPTIM_PREFIX: &str = "optim.";
