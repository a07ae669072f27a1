use std::path::PathBuf;

use depthshrink_tensor::TensorError;
use thiserror::Error;

/// Everything that can go wrong while opening, decoding or batching data.
///
/// Variants about a file carry its path (and, for CIFAR batches, the byte offset), so a bad
/// sample in a 50,000-image set can be found without a debugger.
#[derive(Debug, Error)]
pub enum DataError {
    /// A file or directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cannot decode image: {detail}", path.display())]
    /// An image file could not be decoded.
    Decode {
        /// The image file.
        path: PathBuf,
        /// The decoder's message.
        detail: String,
    },
    #[error(
        "{}: truncated CIFAR-10 batch: the record at byte offset {offset} has {available} of {record} bytes",
        path.display()
    )]
    /// A CIFAR-10 batch file ends inside a record.
    TruncatedCifar {
        /// The batch file.
        path: PathBuf,
        /// Byte offset of the incomplete record.
        offset: u64,
        /// Bytes present from `offset` on.
        available: u64,
        /// Bytes per record ([`RECORD_BYTES`](crate::RECORD_BYTES)).
        record: u64,
    },
    #[error("{}: CIFAR-10 label {label} at byte offset {offset} is not a class index 0..=9", path.display())]
    /// A CIFAR-10 record's label byte is not a class index.
    CifarLabel {
        /// The batch file.
        path: PathBuf,
        /// Byte offset of the record.
        offset: u64,
        /// The label byte read.
        label: u8,
    },
    #[error("{}: directory not found", path.display())]
    /// The data directory does not exist.
    Missing {
        /// The directory asked for.
        path: PathBuf,
    },
    #[error("{}: class folder holds no JPEG or PNG images", path.display())]
    /// A class folder holds no image.
    EmptyClass {
        /// The class folder.
        path: PathBuf,
    },
    #[error(
        "{}: class folders {found:?} differ from the train split's {expected:?}",
        path.display()
    )]
    /// The test (or val) split's class folders differ from the train split's.
    ClassMismatch {
        /// The test split's directory.
        path: PathBuf,
        /// The train split's class names, sorted.
        expected: Vec<String>,
        /// The test split's class names, sorted.
        found: Vec<String>,
    },
    #[error("{}: unrecognised dataset layout: {detail}", path.display())]
    /// A directory is neither a CIFAR-10 binary set nor a train/test class-folder set.
    Layout {
        /// The directory.
        path: PathBuf,
        /// What was found, and what was expected.
        detail: String,
    },
    #[error("sample index {index} is out of range for a dataset of {len} samples")]
    /// A sample index past the end of a dataset.
    Index {
        /// The index asked for.
        index: usize,
        /// The dataset's length.
        len: usize,
    },
    /// Raised by the loader inside [`DataError::Sample`], which names the sample.
    #[error("label {label} is out of range for {classes} classes")]
    Label {
        /// The sample's index in its dataset.
        index: usize,
        /// The label it carries.
        label: usize,
        /// The dataset's number of classes.
        classes: usize,
    },
    #[error("an image of {width}×{height} is smaller than the {size}×{size} crop")]
    /// A random crop larger than the (padded) image.
    TooSmall {
        /// The image's width in pixels, before padding.
        width: usize,
        /// The image's height in pixels, before padding.
        height: usize,
        /// The crop's side in pixels.
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
        /// The batch's index within its epoch.
        batch: usize,
        /// The odd image, as [`Dataset::describe`](crate::Dataset::describe) names it.
        sample: String,
        /// Its `[C, H, W]`.
        dims: [usize; 3],
        /// An image of the batch's most common size.
        reference: String,
        /// That size, `[C, H, W]`.
        reference_dims: [usize; 3],
    },
    /// A failure to read, decode, check or transform one sample, named by
    /// [`Dataset::describe`](crate::Dataset::describe) (a file path for class folders, the batch
    /// file and record for CIFAR-10). The loader reports every per-sample error this way, except
    /// read and decode errors that already name the very same file.
    #[error("{sample}: {error}")]
    Sample {
        /// The sample's index in its dataset.
        index: usize,
        /// The sample's description.
        sample: String,
        /// What went wrong.
        #[source]
        error: Box<DataError>,
    },
    /// An invalid setting or argument (loader, transform, image buffer); the text names it.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A loader worker thread panicked or could not be started.
    #[error("data loader worker failed: {0}")]
    Worker(String),
    /// A tensor operation failed (e.g. stacking a batch).
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

/// `Result` with [`DataError`].
pub type Result<T> = std::result::Result<T, DataError>;
