//! Progress as it happens ([`Observer`]) and as it is kept (`metrics.jsonl`).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use depthshrink_nn::checkpoint;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::io_err;
use super::{Position, RunSummary, TrainError, Trainer};

/// After each training batch.
#[derive(Clone, Debug)]
pub struct BatchProgress {
    /// The epoch, from 0.
    pub epoch: usize,
    /// The batch's position in the epoch, from 0.
    pub batch: usize,
    /// Batches per epoch.
    pub batches: usize,
    /// This batch's training loss.
    pub loss: f32,
    /// Top-1 of this batch, in [0, 1].
    pub acc: f64,
    /// This batch's images over the time since the previous batch finished (data wait included).
    pub images_per_s: f64,
    /// The learning rate this step used.
    pub lr: f32,
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based: the number of completed epochs.
    pub epoch: usize,
    /// Mean training loss over the epoch's images (as the objective computes it).
    pub train_loss: f64,
    /// Top-1 accuracy of the training forward passes, in [0, 1].
    pub train_acc: f64,
    /// Test-split cross-entropy; absent when this epoch was not evaluated (`eval_every`).
    pub val_loss: Option<f64>,
    /// Test-split top-1 accuracy in [0, 1], when evaluated.
    pub val_acc: Option<f64>,
    /// Test-split top-5 accuracy in [0, 1], when evaluated.
    pub val_top5: Option<f64>,
    /// The learning rate of the epoch's last step.
    pub lr: f64,
    /// Training time of the epoch (data waits, steps, mid-epoch checkpoints; across resumes).
    pub seconds: f64,
    /// Time of the evaluation after the epoch (0 when not evaluated).
    pub eval_seconds: f64,
    /// Training images per second.
    pub images_per_s: f64,
    /// Training images seen in the epoch.
    pub images: usize,
}

/// Receives progress; every method defaults to nothing, so tests pass [`Silent`].
pub trait Observer {
    /// Before the first epoch of a stage run through [`Trainer::run_stage`]: `what` it does
    /// (e.g. "searching"), on which trainer (its model, data, config, output, position).
    fn run_start(&mut self, _what: &str, _trainer: &Trainer) {}
    /// After the last epoch of a stage run through [`Trainer::run_stage`].
    fn run_done(&mut self, _summary: &RunSummary, _trainer: &Trainer) {}
    /// `start_batch > 0` when resuming mid-epoch.
    fn epoch_start(&mut self, _epoch: usize, _epochs: usize, _start_batch: usize, _batches: usize) {
    }
    /// After each training step.
    fn batch_done(&mut self, _progress: &BatchProgress) {}
    /// Before evaluating after epoch `epoch` (0-based).
    fn evaluating(&mut self, _epoch: usize) {}
    /// After each epoch, with the line written to `metrics.jsonl`.
    fn epoch_done(&mut self, _metrics: &EpochMetrics) {}
    /// A free-form message for the user.
    fn note(&mut self, _message: &str) {}
}

/// An observer that reports nothing.
pub struct Silent;
impl Observer for Silent {}

/// Keeps only the lines of epochs `≤ completed` (all of them on a fresh start: none).
pub(super) fn rewrite_metrics(path: &Path, position: &Position) -> Result<(), TrainError> {
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
    checkpoint::write_atomic(path, kept.as_bytes()).map_err(io_err(path))
}

/// The `step` of a per-step record of `metrics.jsonl` (None for an epoch line).
fn step_of(line: &str) -> Option<usize> {
    let v: Value = serde_json::from_str(line).ok()?;
    v.get("step")?.as_u64().map(|s| s as usize)
}

/// Appends one JSON line and flushes it to disk.
pub(super) fn append_line(path: &Path, value: &impl Serialize) -> Result<(), TrainError> {
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
