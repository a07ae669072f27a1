use std::path::PathBuf;

use depthshrink_tensor::TensorError;
use thiserror::Error;

/// Everything that can go wrong while opening, decoding or batching data.
///
/// Variants about a file carry its path (and, for CIFAR batches, the byte offset), so a bad
/// sample in a 50,000-image set can be found without a debugger.
#[derive(Debug, Error)]
pub enum DataError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cannot decode image: {detail}", path.display())]
    Decode { path: PathBuf, detail: String },
    #[error(
        "{}: truncated CIFAR-10 batch: the record at byte offset {offset} has {available} of {record} bytes",
        path.display()
    )]
    TruncatedCifar {
        path: PathBuf,
        offset: u64,
        available: u64,
        record: u64,
    },
    #[error("{}: CIFAR-10 label {label} at byte offset {offset} is not a class index 0..=9", path.display())]
    CifarLabel {
        path: PathBuf,
        offset: u64,
        label: u8,
    },
    #[error("{}: directory not found", path.display())]
    Missing { path: PathBuf },
    #[error("{}: class folder holds no JPEG or PNG images", path.display())]
    EmptyClass { path: PathBuf },
    #[error(
        "{}: class folders {found:?} differ from the train split's {expected:?}",
        path.display()
    )]
    ClassMismatch {
        path: PathBuf,
        expected: Vec<String>,
        found: Vec<String>,
    },
    #[error("{}: unrecognised dataset layout: {detail}", path.display())]
    Layout { path: PathBuf, detail: String },
    #[error("sample index {index} is out of range for a dataset of {len} samples")]
    Index { index: usize, len: usize },
    #[error("sample {index}: label {label} is out of range for {classes} classes")]
    Label {
        index: usize,
        label: usize,
        classes: usize,
    },
    #[error("an image of {width}×{height} is smaller than the {size}×{size} crop")]
    TooSmall {
        width: usize,
        height: usize,
        size: usize,
    },
    #[error(
        "batch {batch}: images of different sizes ({first:?} and {other:?} as C×H×W); add a resize or crop to the transform"
    )]
    MixedSizes {
        batch: usize,
        first: [usize; 3],
        other: [usize; 3],
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("data loader worker failed: {0}")]
    Worker(String),
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

impl DataError {
    /// True for problems confined to one sample's file, which `skip_bad` may skip over.
    pub fn is_bad_sample(&self) -> bool {
        matches!(self, DataError::Io { .. } | DataError::Decode { .. })
    }
}

pub type Result<T> = std::result::Result<T, DataError>;
