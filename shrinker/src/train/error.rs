//! Everything that can stop a run.

use std::path::{Path, PathBuf};

use depthshrink_data::DataError;
use depthshrink_nn::checkpoint::CheckpointError;
use depthshrink_nn::optim::OptimError;
use depthshrink_tensor::TensorError;
use thiserror::Error;

use super::LOCK;

/// Why a training run stopped or could not start.
#[derive(Debug, Error)]
pub enum TrainError {
    /// A configuration value the run cannot use (also data that does not fit it, e.g. an
    /// empty test split).
    #[error("invalid config: {0}")]
    Config(String),
    /// Opening, decoding or batching the data failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A checkpoint could not be read, written or loaded.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] TensorError),
    /// The optimiser refused a step or its saved state.
    #[error(transparent)]
    Optim(#[from] OptimError),
    /// A file in the run directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Resuming found no usable run: no checkpoint, one of another configuration or network,
    /// or a position that does not fit the data.
    #[error("cannot resume from {}: {detail}", path.display())]
    Resume {
        /// The checkpoint resumed from (`last.safetensors`).
        path: PathBuf,
        /// What does not match.
        detail: String,
    },
    /// Another run holds the output directory's [`LOCK`](super::LOCK).
    #[error(
        "{} is in use by another run (it holds {}); wait for that run to end or choose another output directory",
        dir.display(),
        dir.join(LOCK).display()
    )]
    Busy {
        /// The output directory.
        dir: PathBuf,
    },
    /// From [`train_step`](super::train_step): the step was not applied.
    #[error("non-finite {what} ({value})")]
    NonFinite {
        /// `"loss"` or `"gradient norm"`.
        what: &'static str,
        /// The value.
        value: f32,
    },
    /// Training stopped: `epoch` and `batch` are 1-based.
    #[error(
        "training diverged at epoch {epoch}, batch {batch}: non-finite {what} ({value}); stopped without saving, the last good checkpoint is kept{}",
        last.as_ref().map(|p| format!(" ({})", p.display())).unwrap_or_default()
    )]
    Diverged {
        /// The epoch, from 1.
        epoch: usize,
        /// The batch within the epoch, from 1.
        batch: usize,
        /// What was non-finite: loss, gradient norm, weights or batch-norm statistics.
        what: &'static str,
        /// The value (NaN when weights or statistics are reported).
        value: f32,
        /// The last checkpoint written, if any.
        last: Option<PathBuf>,
    },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}
