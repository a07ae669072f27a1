//! Everything that can stop a run.

use std::path::{Path, PathBuf};

use depthshrink_data::DataError;
use depthshrink_nn::checkpoint::CheckpointError;
use depthshrink_nn::optim::OptimError;
use depthshrink_tensor::TensorError;
use thiserror::Error;

use super::LOCK;

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

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}
