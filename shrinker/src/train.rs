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

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use depthshrink_autograd::{Gradients, Var};
use depthshrink_data::{
    Batch, DataError, Dataset, Loader, LoaderConfig, Sample, Splits, Transform, TransformConfig,
    open_or_synthetic,
};
use depthshrink_nn::arch::{ArchConfig, Family};
use depthshrink_nn::checkpoint::{self, CheckpointError};
use depthshrink_nn::mobilenet::MobileNet;
use depthshrink_nn::module::{self, Ctx};
use depthshrink_nn::optim::{self, OptimError, Optimizer, OptimizerConfig};
use depthshrink_nn::schedule::{LrSchedule, ScheduleConfig};
use depthshrink_tensor::{Tensor, TensorError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use thiserror::Error;

use crate::finetune::DistillConfig;
use crate::search::SearchConfig;

/// File names inside a run's output directory.
pub const LAST: &str = "last.safetensors";
pub const BEST: &str = "best.safetensors";
pub const METRICS: &str = "metrics.jsonl";
pub const CONFIG: &str = "config.toml";
/// Locked by the run writing the directory (see [`Trainer::with_model`]).
pub const LOCK: &str = ".lock";
/// Prefix of the optimiser state's tensors in checkpoints.
pub const OPTIM_PREFIX: &str = "optim.";

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// A training run, as written in a TOML file (see `configs/`). Scalars first, then the tables
/// `[model]`, `[data]`, `[optim]` (an [`OptimizerConfig`]) and `[lr]` (a [`ScheduleConfig`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: usize,
    /// Seeds the initial weights, the data order and augmentation, and dropout.
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub label_smoothing: f64,
    /// Global gradient-norm clip (PyTorch `clip_grad_norm_`); absent = no clipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_clip: Option<f64>,
    /// Worker threads (the CLI's `--threads` wins); absent = all cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Evaluate on the test split every this many epochs (and always after the last).
    #[serde(default = "one")]
    pub eval_every: usize,
    /// Also write `last.safetensors` every this many batches within an epoch (0 = only at
    /// epoch ends).
    #[serde(default)]
    pub checkpoint_every: usize,
    pub model: ModelConfig,
    pub data: DataConfig,
    pub optim: OptimizerConfig,
    pub lr: ScheduleConfig,
    /// Stage 1 (`depthshrink search`): keep ratio, latency term, logging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchConfig>,
    /// Stage 2 (`depthshrink finetune --distill`): self-distillation weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<DistillConfig>,
}

fn one() -> usize {
    1
}

/// The network to train.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    #[serde(default = "default_family")]
    pub family: Family,
    /// Channel width multiplier (MobileNetV2).
    #[serde(default = "default_width")]
    pub width: f64,
    /// Absent = the data set's number of classes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<usize>,
    /// CIFAR layout (32×32 inputs).
    #[serde(default)]
    pub cifar: bool,
    /// Dropout before the classifier.
    #[serde(default = "default_dropout")]
    pub dropout: f64,
}

fn default_family() -> Family {
    Family::MobilenetV2
}
fn default_width() -> f64 {
    1.0
}
fn default_dropout() -> f64 {
    0.2
}

impl ModelConfig {
    pub fn arch(&self, num_classes: usize) -> ArchConfig {
        let classes = self.num_classes.unwrap_or(num_classes);
        match self.family {
            Family::MobilenetV2 => ArchConfig::mobilenet_v2(self.width as f32, classes, self.cifar),
            Family::EfficientnetLite0 => ArchConfig::efficientnet_lite0(classes, self.cifar),
        }
    }
}

/// Augmentation presets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Augment {
    /// The data set's own (synthetic / CIFAR: pad-4 crop + flip; ImageNet-like folders:
    /// RandomResizedCrop at `res` + flip).
    #[default]
    Default,
    /// None: train on the evaluation transform.
    None,
    /// Pad-4 random crop + flip with CIFAR-10 statistics.
    Cifar,
    /// RandomResizedCrop at `res` + flip; eval: resize to res/0.875, centre crop.
    Imagenet,
}

/// Where the data comes from and how it is batched.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Data directory (CIFAR-10 binaries or class folders), relative to the working directory;
    /// absent = the built-in synthetic set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    pub batch_size: usize,
    /// Evaluation batch size (absent = `batch_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_batch_size: Option<usize>,
    /// Keep decoded images in memory.
    #[serde(default)]
    pub cache: bool,
    #[serde(default)]
    pub augment: Augment,
    /// Input resolution of the ImageNet-style transforms.
    #[serde(default = "default_res")]
    pub res: usize,
    /// Random-erasing probability on training images (0 = off).
    #[serde(default)]
    pub random_erasing: f64,
    /// Drop each epoch's final partial training batch.
    #[serde(default = "yes")]
    pub drop_last: bool,
    /// Batches prepared ahead of the training loop.
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    /// Use only the first N training / test images (quick experiments and tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_train: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_test: Option<usize>,
}

fn default_res() -> usize {
    224
}
fn yes() -> bool {
    true
}
fn default_prefetch() -> usize {
    2
}

impl TrainConfig {
    /// Parses a TOML config, then applies `overrides` (dotted keys, e.g. `optim.momentum`, with
    /// TOML values; a value that does not parse as TOML is taken as a string). Unknown keys,
    /// wrong types and invalid values are errors naming the key.
    pub fn from_toml(
        text: &str,
        overrides: &[(String, String)],
    ) -> Result<TrainConfig, TrainError> {
        let config: TrainConfig = if overrides.is_empty() {
            toml::from_str(text).map_err(|e| TrainError::Config(e.to_string()))?
        } else {
            let mut table: toml::Table =
                toml::from_str(text).map_err(|e| TrainError::Config(e.to_string()))?;
            for (key, value) in overrides {
                set_dotted(&mut table, key, parse_value(value))?;
            }
            TrainConfig::deserialize(toml::Value::Table(table))
                .map_err(|e| TrainError::Config(e.to_string().trim().to_string()))?
        };
        config.validate()?;
        Ok(config)
    }

    /// The config as TOML (what `config.toml` holds).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a train config serialises to TOML")
    }

    /// Checks every value that deserialisation accepts but training cannot use, and that the
    /// data directory exists: everything that can be known before any work starts.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |msg: String| Err(TrainError::Config(msg));
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if self.data.batch_size == 0 {
            return bad("data.batch_size must be at least 1".into());
        }
        if self.data.eval_batch_size == Some(0) {
            return bad("data.eval_batch_size must be at least 1".into());
        }
        if self.data.prefetch == 0 {
            return bad("data.prefetch must be at least 1".into());
        }
        if self.data.res == 0 {
            return bad("data.res must be at least 1".into());
        }
        if self.data.limit_train == Some(0) || self.data.limit_test == Some(0) {
            return bad("data.limit_train and data.limit_test must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.data.random_erasing) {
            return bad(format!(
                "data.random_erasing is a probability in [0, 1], got {}",
                self.data.random_erasing
            ));
        }
        if !(self.model.width.is_finite() && self.model.width > 0.0) {
            return bad(format!(
                "model.width must be a positive number, got {}",
                self.model.width
            ));
        }
        if self.model.num_classes == Some(0) {
            return bad("model.num_classes must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.model.dropout) {
            return bad(format!(
                "model.dropout must be in [0, 1), got {}",
                self.model.dropout
            ));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad(format!(
                "label_smoothing must be in [0, 1), got {}",
                self.label_smoothing
            ));
        }
        if let Some(c) = self.grad_clip
            && !(c.is_finite() && c > 0.0)
        {
            return bad(format!("grad_clip must be a positive number, got {c}"));
        }
        if self.threads == Some(0) {
            return bad("threads must be at least 1".into());
        }
        if self.eval_every == 0 {
            return bad("eval_every must be at least 1".into());
        }
        self.optim
            .build()
            .map_err(|e| TrainError::Config(format!("optim: {e}")))?;
        // Before the schedule's own checks, which compare other keys (min_lr) against lr.
        let lr = self.lr.lr();
        if !(lr.is_finite() && lr >= 0.0) {
            return bad(format!(
                "lr.lr must be a finite non-negative number, got {lr}"
            ));
        }
        self.lr
            .build(self.epochs, 1)
            .map_err(|e| TrainError::Config(format!("lr: {e}")))?;
        if let Some(search) = &self.search {
            search.validate().map_err(TrainError::Config)?;
        }
        if let Some(distill) = &self.distill {
            distill.validate().map_err(TrainError::Config)?;
        }
        if let Some(dir) = &self.data.dir
            && !dir.is_dir()
        {
            return bad(format!("data.dir: {}: directory not found", dir.display()));
        }
        Ok(())
    }
}

/// A `--set` value: a TOML value if it parses as one, else the text as a string.
fn parse_value(text: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

fn set_dotted(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), TrainError> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(TrainError::Config(format!(
            "--set: `{key}` is not a dotted key"
        )));
    }
    let mut t = table;
    for (i, part) in parts[..parts.len() - 1].iter().enumerate() {
        let entry = t
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry.as_table_mut().ok_or_else(|| {
            TrainError::Config(format!(
                "--set {key}: `{}` is not a table",
                parts[..=i].join(".")
            ))
        })?;
    }
    t.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Error)]
pub enum TrainError {
    #[error("invalid config: {0}")]
    Config(String),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Tensor(#[from] TensorError),
    #[error(transparent)]
    Optim(#[from] OptimError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot resume from {}: {detail}", path.display())]
    Resume { path: PathBuf, detail: String },
    #[error(
        "{} is in use by another run (it holds {}); wait for that run to end or choose another output directory",
        dir.display(),
        dir.join(LOCK).display()
    )]
    Busy { dir: PathBuf },
    /// From [`train_step`]: the step was not applied.
    #[error("non-finite {what} ({value})")]
    NonFinite { what: &'static str, value: f32 },
    /// Training stopped: `epoch` and `batch` are 1-based.
    #[error(
        "training diverged at epoch {epoch}, batch {batch}: non-finite {what} ({value}); stopped without saving, the last good checkpoint is kept{}",
        last.as_ref().map(|p| format!(" ({})", p.display())).unwrap_or_default()
    )]
    Diverged {
        epoch: usize,
        batch: usize,
        what: &'static str,
        value: f32,
        last: Option<PathBuf>,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

// ---------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------

/// The first `len` samples of a data set.
pub struct Subset {
    inner: Arc<dyn Dataset>,
    len: usize,
}

impl Subset {
    pub fn new(inner: Arc<dyn Dataset>, limit: usize) -> Subset {
        let len = limit.min(inner.len());
        Subset { inner, len }
    }
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.len
    }
    fn get(&self, index: usize) -> depthshrink_data::Result<Sample> {
        if index >= self.len {
            return Err(DataError::Index {
                index,
                len: self.len,
            });
        }
        self.inner.get(index)
    }
    fn label(&self, index: usize) -> depthshrink_data::Result<usize> {
        if index >= self.len {
            return Err(DataError::Index {
                index,
                len: self.len,
            });
        }
        self.inner.label(index)
    }
    fn describe(&self, index: usize) -> String {
        self.inner.describe(index)
    }
    fn class_names(&self) -> &[String] {
        self.inner.class_names()
    }
}

/// The opened data of a run: splits (limited per the config) and their loaders.
pub struct Data {
    pub splits: Splits,
    pub train: Loader,
    pub test: Loader,
}

impl Data {
    /// The side of the evaluation images (what the network runs at), read off the first test
    /// batch.
    pub fn input_res(&self) -> Result<usize, TrainError> {
        match self.test.epoch(0).next() {
            Some(batch) => Ok(batch?.images.shape()[2]),
            None => Err(TrainError::Config("the test split is empty".into())),
        }
    }
}

impl DataConfig {
    /// The (train, eval) transforms of this config for `splits`.
    pub fn transforms(
        &self,
        splits: &Splits,
    ) -> Result<(TransformConfig, TransformConfig), TrainError> {
        let (mut train, eval) = match self.augment {
            Augment::Default => splits.default_transforms(self.res)?,
            Augment::None => {
                let eval = splits.default_transforms(self.res)?.1;
                (eval.clone(), eval)
            }
            Augment::Cifar => (
                TransformConfig::cifar_train(),
                TransformConfig::cifar_eval(),
            ),
            Augment::Imagenet => (
                TransformConfig::imagenet_train(self.res),
                TransformConfig::imagenet_eval(self.res),
            ),
        };
        if self.random_erasing > 0.0 {
            train.random_erasing = Some(depthshrink_data::RandomErasing {
                p: self.random_erasing,
                ..Default::default()
            });
        }
        Ok((train, eval))
    }

    /// Opens the data set and builds the loaders (train: shuffled from `seed`).
    pub fn open(&self, seed: u64) -> Result<Data, TrainError> {
        let mut splits = open_or_synthetic(self.dir.as_deref())?;
        if let Some(n) = self.limit_train {
            splits.train = Arc::new(Subset::new(Arc::clone(&splits.train), n));
        }
        if let Some(n) = self.limit_test {
            splits.test = Arc::new(Subset::new(Arc::clone(&splits.test), n));
        }
        let (train_tf, eval_tf) = self.transforms(&splits)?;
        let train = Loader::new(
            Arc::clone(&splits.train),
            Transform::new(train_tf)?,
            LoaderConfig {
                seed,
                cache: self.cache,
                drop_last: self.drop_last,
                prefetch: self.prefetch,
                ..LoaderConfig::new(self.batch_size)
            },
        )?;
        let test = eval_loader(
            &splits.test,
            eval_tf,
            self.eval_batch_size.unwrap_or(self.batch_size),
            self.cache,
        )?;
        if train.batches_per_epoch() == 0 {
            return Err(TrainError::Config(format!(
                "the training split has {} images: not one batch of {} (drop_last)",
                splits.train.len(),
                self.batch_size
            )));
        }
        Ok(Data {
            splits,
            train,
            test,
        })
    }
}

/// An evaluation loader: index order, every sample.
pub fn eval_loader(
    dataset: &Arc<dyn Dataset>,
    transform: TransformConfig,
    batch_size: usize,
    cache: bool,
) -> Result<Loader, TrainError> {
    Ok(Loader::new(
        Arc::clone(dataset),
        Transform::new(transform)?,
        LoaderConfig {
            shuffle: false,
            cache,
            ..LoaderConfig::new(batch_size)
        },
    )?)
}

// ---------------------------------------------------------------------------------------------
// One step
// ---------------------------------------------------------------------------------------------

/// What a training step optimises. The baseline uses [`CrossEntropy`]; finetuning plugs in
/// distillation and the search its gated forward pass and latency term. Any closure
/// `FnMut(&mut MobileNet, &mut Ctx, &Batch) -> Result<(Var, Tensor)>` is an objective.
pub trait Objective {
    /// The forward pass and the scalar loss; returns (loss, logits `[N, classes]`).
    /// `ctx` is a fresh training context (set `ctx.gates` here if needed).
    fn loss(
        &mut self,
        model: &mut MobileNet,
        ctx: &mut Ctx,
        batch: &Batch,
    ) -> depthshrink_tensor::Result<(Var, Tensor)>;

    /// Called after the model's gradients were collected, before clipping and the update:
    /// take the gradients of anything else the loss depended on.
    fn after_backward(&mut self, _model: &mut MobileNet, _grads: &mut Gradients) {}

    /// Called after global step `step` (1-based) was applied: a JSON object to record in
    /// `metrics.jsonl` as `{"step": step, "epoch": e, ...}` (the search logs its gates here).
    fn step_log(&mut self, _model: &MobileNet, _step: usize) -> Option<Value> {
        None
    }
}

impl<F> Objective for F
where
    F: FnMut(&mut MobileNet, &mut Ctx, &Batch) -> depthshrink_tensor::Result<(Var, Tensor)>,
{
    fn loss(
        &mut self,
        model: &mut MobileNet,
        ctx: &mut Ctx,
        batch: &Batch,
    ) -> depthshrink_tensor::Result<(Var, Tensor)> {
        self(model, ctx, batch)
    }
}

/// Cross-entropy with label smoothing.
pub struct CrossEntropy {
    pub smoothing: f32,
}

impl Objective for CrossEntropy {
    fn loss(
        &mut self,
        model: &mut MobileNet,
        ctx: &mut Ctx,
        batch: &Batch,
    ) -> depthshrink_tensor::Result<(Var, Tensor)> {
        let logits = model.forward(&Var::constant(batch.images.clone()), ctx)?;
        let loss =
            depthshrink_autograd::ops::cross_entropy(&logits, &batch.labels, self.smoothing)?;
        Ok((loss, logits.value().clone()))
    }
}

/// What one step measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    pub loss: f32,
    /// Top-1 hits of the training forward pass.
    pub correct: usize,
    pub images: usize,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
}

/// The dropout seed of global step `step`: a mix of both, so resume reproduces the masks.
pub fn dropout_seed(seed: u64, step: u64) -> u64 {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One training step: forward + loss, backward, gradient collection, optional clipping, update.
/// A non-finite loss or gradient norm returns [`TrainError::NonFinite`] without touching the
/// weights or the optimiser state.
pub fn train_step(
    model: &mut MobileNet,
    optimizer: &mut dyn Optimizer,
    objective: &mut dyn Objective,
    batch: &Batch,
    lr: f32,
    dropout_seed: u64,
    grad_clip: Option<f32>,
) -> Result<StepStats, TrainError> {
    let (loss, correct) = {
        let mut ctx = Ctx::train(dropout_seed);
        let (loss_var, logits) = objective.loss(model, &mut ctx, batch)?;
        let loss = loss_var.value().item()?;
        if !loss.is_finite() {
            return Err(TrainError::NonFinite {
                what: "loss",
                value: loss,
            });
        }
        let mut grads = loss_var.backward()?;
        // Everything referring to the tape goes before the update, so the optimiser writes
        // the parameters in place instead of copying shared storage.
        drop(loss_var);
        drop(ctx);
        module::collect_grads(model, &mut grads);
        objective.after_backward(model, &mut grads);
        (loss, count_correct(&logits, &batch.labels))
    };
    let grad_norm = optim::clip_grad_norm(model, grad_clip.unwrap_or(f32::INFINITY));
    if !grad_norm.is_finite() {
        optim::zero_grad(model);
        return Err(TrainError::NonFinite {
            what: "gradient norm",
            value: grad_norm,
        });
    }
    optimizer.step(model, lr)?;
    optim::zero_grad(model);
    Ok(StepStats {
        loss,
        correct,
        images: batch.labels.len(),
        grad_norm,
    })
}

/// Top-1 hits of `logits` `[N, C]` against `labels`.
pub fn count_correct(logits: &Tensor, labels: &[usize]) -> usize {
    let c = logits.shape().last().copied().unwrap_or(1).max(1);
    logits
        .data()
        .chunks_exact(c)
        .zip(labels)
        .filter(|(row, label)| argmax(row) == **label)
        .count()
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

// ---------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------

/// Test-split figures.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalStats {
    pub images: usize,
    /// Mean cross-entropy (no smoothing).
    pub loss: f64,
    /// Fractions in [0, 1].
    pub top1: f64,
    pub top5: f64,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
}

/// Evaluates `model` (BN folded, eval mode) on every batch of `loader`.
pub fn evaluate(model: &MobileNet, loader: &Loader) -> Result<EvalStats, TrainError> {
    let mut net = model.for_inference()?;
    let classes = model.spec.num_classes;
    let ctx = Ctx::eval();
    let mut stats = EvalStats {
        images: 0,
        loss: 0.0,
        top1: 0.0,
        top5: 0.0,
        confusion: vec![vec![0; classes]; classes],
    };
    let (mut loss_sum, mut hits1, mut hits5) = (0f64, 0usize, 0usize);
    for batch in loader.epoch(0) {
        let batch = batch?;
        let logits = net
            .forward(&Var::constant(batch.images), &ctx)?
            .into_value();
        for (row, &label) in logits.data().chunks_exact(classes).zip(&batch.labels) {
            if label >= classes {
                return Err(TrainError::Config(format!(
                    "label {label} is out of range for a network with {classes} classes"
                )));
            }
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&v| (v as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            loss_sum += lse - row[label] as f64;
            let pred = argmax(row);
            stats.confusion[label][pred] += 1;
            hits1 += usize::from(pred == label);
            let above = row.iter().filter(|&&v| v > row[label]).count();
            hits5 += usize::from(above < 5);
        }
        stats.images += batch.labels.len();
    }
    if stats.images > 0 {
        let n = stats.images as f64;
        stats.loss = loss_sum / n;
        stats.top1 = hits1 as f64 / n;
        stats.top5 = hits5 as f64 / n;
    }
    Ok(stats)
}

// ---------------------------------------------------------------------------------------------
// Progress reporting
// ---------------------------------------------------------------------------------------------

/// After each training batch.
#[derive(Clone, Debug)]
pub struct BatchProgress {
    /// 0-based epoch and batch position.
    pub epoch: usize,
    pub batch: usize,
    pub batches: usize,
    pub loss: f32,
    /// Top-1 of this batch, in [0, 1].
    pub acc: f64,
    /// This batch's images over the time since the previous batch finished (data wait included).
    pub images_per_s: f64,
    pub lr: f32,
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based: the number of completed epochs.
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    /// Absent when this epoch was not evaluated (`eval_every`).
    pub val_loss: Option<f64>,
    pub val_acc: Option<f64>,
    pub val_top5: Option<f64>,
    /// The learning rate of the epoch's last step.
    pub lr: f64,
    /// Training time of the epoch (data waits, steps, mid-epoch checkpoints; across resumes).
    pub seconds: f64,
    pub eval_seconds: f64,
    /// Training images per second.
    pub images_per_s: f64,
    pub images: usize,
}

/// Receives progress; every method defaults to nothing, so tests pass [`Silent`].
pub trait Observer {
    /// `start_batch > 0` when resuming mid-epoch.
    fn epoch_start(&mut self, _epoch: usize, _epochs: usize, _start_batch: usize, _batches: usize) {
    }
    fn batch_done(&mut self, _progress: &BatchProgress) {}
    fn evaluating(&mut self, _epoch: usize) {}
    fn epoch_done(&mut self, _metrics: &EpochMetrics) {}
    fn note(&mut self, _message: &str) {}
}

/// An observer that reports nothing.
pub struct Silent;
impl Observer for Silent {}

// ---------------------------------------------------------------------------------------------
// The trainer
// ---------------------------------------------------------------------------------------------

/// Where the run is: the next step is batch `batch` of epoch `epoch` (both 0-based).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub epoch: usize,
    pub batch: usize,
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
    pub best_val_acc: Option<f64>,
    pub position: Position,
}

/// A training run: model, optimiser, schedule, data and the output directory.
pub struct Trainer {
    pub config: TrainConfig,
    pub out: PathBuf,
    pub model: MobileNet,
    pub optimizer: Box<dyn Optimizer>,
    pub schedule: LrSchedule,
    pub data: Data,
    pub position: Position,
    pub best_val_acc: Option<f64>,
    /// Merged into every checkpoint's metadata (later stages record their own fields here).
    pub extra_metadata: serde_json::Map<String, Value>,
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
        model: Option<MobileNet>,
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
            trainer_model = MobileNet::from_checkpoint(&ckpt, None)?;
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
            trainer_model = model.unwrap_or_else(|| MobileNet::new(&arch, config.seed));
            if trainer_model.arch != arch {
                return Err(TrainError::Config(format!(
                    "the given model is a {}, the config describes a {}",
                    trainer_model.arch, arch
                )));
            }
        }
        trainer_model.dropout = config.model.dropout as f32;

        let config_path = out.join(CONFIG);
        write_atomic(&config_path, config.to_toml().as_bytes())?;
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
            sums,
            _lock: lock,
        })
    }

    pub fn batches_per_epoch(&self) -> usize {
        self.data.train.batches_per_epoch()
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
    let mut old = std::collections::BTreeMap::new();
    let mut new = std::collections::BTreeMap::new();
    flatten("", recorded, &mut old);
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

/// The one atomic writer (unique temp file, fsync, rename), with this module's error type.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    checkpoint::write_atomic(path, bytes).map_err(io_err(path))
}

/// Keeps only the lines of epochs `≤ completed` (all of them on a fresh start: none).
fn rewrite_metrics(path: &Path, position: &Position) -> Result<(), TrainError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_err(path)(e)),
    };
    let kept: String =
        text.lines()
            .filter(|line| match step_of(line) {
                Some(step) => step <= position.global_step,
                None => serde_json::from_str::<EpochMetrics>(line)
                    .is_ok_and(|m| m.epoch <= position.epoch),
            })
            .map(|line| format!("{line}\n"))
            .collect();
    write_atomic(path, kept.as_bytes())
}

/// The `step` of a per-step record of `metrics.jsonl` (None for an epoch line).
fn step_of(line: &str) -> Option<usize> {
    let v: Value = serde_json::from_str(line).ok()?;
    v.get("step")?.as_u64().map(|s| s as usize)
}

/// Appends one JSON line and flushes it to disk.
fn append_line(path: &Path, value: &impl Serialize) -> Result<(), TrainError> {
    let line = format!(
        "{}\n",
        serde_json::to_string(value).expect("metrics serialise")
    );
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all(line.as_bytes()).map_err(io_err(path))?;
    file.sync_data().map_err(io_err(path))
}

/// Reads the per-epoch lines of `metrics.jsonl` (per-step records are skipped).
pub fn read_metrics(path: &Path) -> Result<Vec<EpochMetrics>, TrainError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    text.lines()
        .filter(|l| step_of(l).is_none())
        .map(|l| {
            serde_json::from_str(l)
                .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
epochs = 2
[model]
width = 0.25
cifar = true
[data]
batch_size = 16
[optim]
optimizer = "sgd"
momentum = 0.9
weight_decay = 1e-4
[lr]
schedule = "cosine"
lr = 0.1
"#;

    #[test]
    fn config_parses_with_defaults_and_round_trips() {
        let c = TrainConfig::from_toml(BASE, &[]).unwrap();
        assert_eq!(c.eval_every, 1);
        assert_eq!(c.model.dropout, 0.2);
        assert!(c.data.drop_last);
        let again = TrainConfig::from_toml(&c.to_toml(), &[]).unwrap();
        assert_eq!(c, again);
    }

    #[test]
    fn overrides_set_dotted_keys_with_toml_values() {
        let sets = |kv: &[(&str, &str)]| -> Vec<(String, String)> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let c = TrainConfig::from_toml(
            BASE,
            &sets(&[
                ("epochs", "3"),
                ("optim.momentum", "0.8"),
                ("data.augment", "none"),
                ("grad_clip", "5"),
            ]),
        )
        .unwrap();
        assert_eq!(c.epochs, 3);
        assert_eq!(c.data.augment, Augment::None);
        assert_eq!(c.grad_clip, Some(5.0));
        match &c.optim {
            OptimizerConfig::Sgd(s) => assert_eq!(s.momentum, 0.8),
            other => panic!("{other:?}"),
        }
        let err = TrainConfig::from_toml(BASE, &sets(&[("data.bogus", "1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
        let err = TrainConfig::from_toml(BASE, &sets(&[("epochs", "many")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("epochs") || err.contains("invalid type"),
            "{err}"
        );
        let err = TrainConfig::from_toml(BASE, &sets(&[("epochs.x", "1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a table"), "{err}");
    }

    #[test]
    fn invalid_values_are_rejected_by_name() {
        let bad = |k: &str, v: &str| {
            TrainConfig::from_toml(BASE, &[(k.to_string(), v.to_string())])
                .unwrap_err()
                .to_string()
        };
        assert!(bad("data.batch_size", "0").contains("data.batch_size"));
        assert!(bad("epochs", "0").contains("epochs"));
        assert!(bad("model.width", "-1").contains("model.width"));
        assert!(bad("label_smoothing", "1.5").contains("label_smoothing"));
        assert!(bad("data.dir", "/nonexistent/dir").contains("/nonexistent/dir"));
    }

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
    }

    #[test]
    fn dropout_seeds_differ_per_step_and_seed() {
        assert_ne!(dropout_seed(0, 0), dropout_seed(0, 1));
        assert_ne!(dropout_seed(0, 1), dropout_seed(1, 0));
        assert_eq!(dropout_seed(3, 7), dropout_seed(3, 7));
    }

    #[test]
    fn correct_counts_and_top5() {
        let logits = Tensor::from_vec(&[2, 3], vec![0.1, 0.9, 0.0, 2.0, 1.0, 0.0]).unwrap();
        assert_eq!(count_correct(&logits, &[1, 1]), 1);
    }
}
