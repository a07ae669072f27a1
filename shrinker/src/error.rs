//! What can stop a stage.

use std::path::PathBuf;

use depthshrink_nn::checkpoint::CheckpointError;
use depthshrink_nn::keep::KeepError;
use depthshrink_tensor::TensorError;
use thiserror::Error;

use crate::merge::MERGE_TOLERANCE;
use crate::train::TrainError;

/// Why a stage stopped. The variants that concern one input ([`Keep`](StageError::Keep),
/// [`Latency`](StageError::Latency), [`Pretrained`](StageError::Pretrained)) let a front end
/// name the argument that gave it.
#[derive(Debug, Error)]
pub enum StageError {
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Tensor(#[from] TensorError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A `[search]` or `[distill]` setting the network cannot use.
    #[error("{0}")]
    Config(String),
    /// A keep list that does not fit the network, or not the one of the run being resumed.
    #[error("{0}")]
    Keep(String),
    /// A latency table that cannot be read, or was measured for another network.
    #[error("{0}")]
    Latency(String),
    /// A pretrained network other than the one the resumed run started from.
    #[error("{0}")]
    Pretrained(String),
    /// The merged network does not compute the unmerged one's function: nothing is written.
    #[error(
        "the merged network differs from the unmerged one (relative error {max_rel:.2e} > {MERGE_TOLERANCE:e})"
    )]
    MergeMismatch { max_rel: f32 },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl From<KeepError> for StageError {
    fn from(e: KeepError) -> StageError {
        StageError::Keep(e.to_string())
    }
}

/// Writes `value` as pretty JSON, atomically (the one atomic writer: temp file, fsync, rename).
pub fn write_json(path: &std::path::Path, value: &impl serde::Serialize) -> Result<(), StageError> {
    let json = serde_json::to_vec_pretty(value).expect("our outputs serialise to JSON");
    depthshrink_nn::checkpoint::write_atomic(path, &json).map_err(|source| StageError::Write {
        path: path.to_path_buf(),
        source,
    })
}
