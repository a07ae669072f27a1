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
    /// The trainer failed (configuration, data, checkpoint, non-finite loss, …).
    #[error(transparent)]
    Train(#[from] TrainError),
    /// A tensor operation failed (shapes, arguments).
    #[error(transparent)]
    Tensor(#[from] TensorError),
    /// A checkpoint could not be read, written or loaded into the network.
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
    MergeMismatch {
        /// The relative error measured ([`Deviation::max_rel`](crate::merge::Deviation::max_rel)).
        max_rel: f32,
    },
    /// An output file or directory could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
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
