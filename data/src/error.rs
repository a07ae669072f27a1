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
    /// Raised by the loader inside [`DataError::Sample`], which names the sample.
    #[error("label {label} is out of range for {classes} classes")]
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
    /// A transformed batch whose images differ in size. `sample` (of `dims`, C×H×W) is the
    /// first image not of the batch's most common size, `reference` an image of that size.
    #[error(
        "batch {batch}: {sample} is {}×{}×{} (C×H×W) but {reference} is {}×{}×{}; add a resize or crop to the transform",
        .dims[0],
        .dims[1],
        .dims[2],
        .reference_dims[0],
        .reference_dims[1],
        .reference_dims[2]
    )]
    MixedSizes {
        batch: usize,
        sample: String,
        dims: [usize; 3],
        reference: String,
        reference_dims: [usize; 3],
    },
    /// A failure to read, decode, check or transform one sample, named by
    /// [`Dataset::describe`](crate::Dataset::describe) (a file path for class folders, the batch
    /// file and record for CIFAR-10). The loader reports every per-sample error this way, except
    /// read and decode errors that already name the very same file.
    #[error("{sample}: {error}")]
    Sample {
        index: usize,
        sample: String,
        #[source]
        error: Box<DataError>,
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
        match self {
            DataError::Io { .. } | DataError::Decode { .. } => true,
            DataError::Sample { error, .. } => error.is_bad_sample(),
            _ => false,
        }
    }

    /// This error of sample `index` as a [`DataError::Sample`] naming it by `sample` (its
    /// [`Dataset::describe`](crate::Dataset::describe)), unless it already names it: an error
    /// that is already wrapped, or a read or decode error of the file `sample` names, is
    /// returned as it is.
    pub fn in_sample(self, index: usize, sample: String) -> DataError {
        let named = match &self {
            DataError::Sample { .. } => true,
            DataError::Io { path, .. } | DataError::Decode { path, .. } => {
                path.display().to_string() == sample
            }
            _ => false,
        };
        if named {
            self
        } else {
            DataError::Sample {
                index,
                sample,
                error: Box::new(self),
            }
        }
    }
}

pub type Result<T> = std::result::Result<T, DataError>;
