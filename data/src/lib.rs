//! Data for depthshrink: CIFAR-10 binaries, class-folder image sets and a built-in synthetic
//! set behind one [`Dataset`] trait; torchvision-compatible augmentation; and a [`Loader`]
//! that decodes and augments in parallel on a background thread, deterministically per
//! (seed, epoch, index) so a killed run resumes with the very same batches.
//!
//! Typical use:
//! ```no_run
//! # use std::sync::Arc;
//! # use depthshrink_data::*;
//! let splits = open_or_synthetic(None)?;
//! let (train_tf, _eval_tf) = splits.default_transforms(224)?;
//! let loader = Loader::new(
//!     Arc::clone(&splits.train),
//!     Transform::new(train_tf)?,
//!     LoaderConfig::new(128),
//! )?;
//! for batch in loader.epoch(0) {
//!     let batch = batch?; // batch.images: N×3×H×W, batch.labels
//! #   let _ = batch;
//! }
//! # Ok::<(), DataError>(())
//! ```

#![warn(missing_docs)]

mod cifar;
mod dataset;
mod error;
mod folder;
mod inspect;
mod loader;
mod open;
mod resize;
mod rng;
pub mod synthetic;
mod transform;

#[cfg(test)]
mod testutil;

pub use cifar::{CIFAR10_CLASSES, CifarBinary, RECORD_BYTES, TEST_FILE, TRAIN_FILES};
pub use dataset::{Dataset, Image, Sample, Subset};
pub use error::{DataError, Result};
pub use folder::{ImageFolder, decode_file};
pub use inspect::{
    ImageSizes, InspectOptions, InspectReport, MAX_DISTINCT_SIZES, SplitReport, Unreadable, inspect,
};
pub use loader::{Batch, Epoch, Loader, LoaderConfig, Skipped};
pub use open::{Augment, Format, Splits, open, open_or_synthetic, open_synthetic};
pub use resize::{Interpolation, crop, resize};
pub use synthetic::{SYNTHETIC_CLASSES, SYNTHETIC_SEED, Synthetic};
pub use transform::{
    CIFAR10_MEAN, CIFAR10_STD, Chw, CropBox, IMAGENET_MEAN, IMAGENET_STD, RandomCrop,
    RandomErasing, RandomResizedCrop, Transform, TransformConfig, augment_rng, erasing_box,
    random_resized_crop_box, shorter_side_size,
};
