use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

use crate::error::{DataError, Result};

/// A decoded RGB image, row-major HWC with 8-bit channels.
///
/// Datasets hand out u8 HWC because that is what decoders produce and what the in-memory cache
/// stores (CIFAR-10 train fits in ~150 MB); conversion to normalised CHW f32 happens in the
/// transform, once per sample and epoch. Grey and RGBA sources are converted to RGB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

impl Image {
    /// Wraps `width × height × 3` bytes, checking the length.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Image> {
        if data.len() != width * height * 3 {
            return Err(DataError::Config(format!(
                "a {width}×{height} RGB image needs {} bytes, got {}",
                width * height * 3,
                data.len()
            )));
        }
        Ok(Image {
            width,
            height,
            data,
        })
    }

    /// An all-black image.
    pub fn zeros(width: usize, height: usize) -> Image {
        Image {
            width,
            height,
            data: vec![0; width * height * 3],
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The HWC bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The HWC bytes, writable (the size stays fixed).
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// The RGB value at column `x`, row `y`; panics outside the image.
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }
}

/// One labelled image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The decoded image.
    pub image: Image,
    /// Class index into [`Dataset::class_names`].
    pub label: usize,
}

/// A random-access labelled image collection (one split of a data set).
///
/// `get` may do I/O and decoding, so it returns `Result`; it must be callable from many threads
/// at once, which is how the loader decodes in parallel.
pub trait Dataset: Send + Sync {
    /// Number of samples; valid indices are `0..len()`.
    fn len(&self) -> usize;

    /// True when the set has no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decodes sample `index`.
    fn get(&self, index: usize) -> Result<Sample>;

    /// The label of sample `index` without decoding its image (for class counts).
    fn label(&self, index: usize) -> Result<usize>;

    /// Class names; labels index into this list.
    fn class_names(&self) -> &[String];

    /// Where sample `index` comes from, for error messages: a file path for class folders, the
    /// batch file and record for CIFAR-10 binaries. Must not fail or panic, whatever `index`;
    /// the default is "sample INDEX". Wrappers over another data set should forward it.
    fn describe(&self, index: usize) -> String {
        format!("sample {index}")
    }
}

/// The error for an index past the end, shared by the implementations.
pub(crate) fn check_index(index: usize, len: usize) -> Result<()> {
    if index < len {
        Ok(())
    } else {
        Err(DataError::Index { index, len })
    }
}

/// Some samples of a data set, drawn once at random over all of it.
pub struct Subset {
    inner: Arc<dyn Dataset>,
    /// Indices into `inner`, ascending.
    indices: Vec<usize>,
}

impl Subset {
    /// `limit` samples of `inner` (all of them when it has fewer): a fixed random draw (the
    /// same every time), in the inner order. Neither a data set stored class by class (image
    /// folders) nor one whose labels cycle (the synthetic set) loses classes, as the first
    /// `limit` or every k-th sample would.
    pub fn new(inner: Arc<dyn Dataset>, limit: usize) -> Subset {
        let n = inner.len();
        let mut indices: Vec<usize> = (0..n).collect();
        if limit < n {
            indices.shuffle(&mut ChaCha8Rng::seed_from_u64(0x5u64));
            indices.truncate(limit);
            indices.sort_unstable();
        }
        Subset { inner, indices }
    }

    fn inner_index(&self, index: usize) -> Result<usize> {
        self.indices.get(index).copied().ok_or(DataError::Index {
            index,
            len: self.indices.len(),
        })
    }
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn get(&self, index: usize) -> Result<Sample> {
        self.inner.get(self.inner_index(index)?)
    }
    fn label(&self, index: usize) -> Result<usize> {
        self.inner.label(self.inner_index(index)?)
    }
    fn describe(&self, index: usize) -> String {
        match self.inner_index(index) {
            Ok(i) => self.inner.describe(i),
            Err(_) => format!("sample {index}"),
        }
    }
    fn class_names(&self) -> &[String] {
        self.inner.class_names()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::Synthetic;

    /// A subset keeps every class of a set whose labels cycle (the synthetic set: every 10th
    /// sample is one class) in proportion, reads in the inner order, and is the same each time.
    #[test]
    fn a_subset_is_a_fixed_draw_over_the_whole_set() {
        let inner: Arc<dyn Dataset> = Arc::new(Synthetic::test(1));
        let subset = Subset::new(Arc::clone(&inner), 200);
        assert_eq!(subset.len(), 200);
        let mut counts = [0usize; 10];
        for i in 0..subset.len() {
            counts[subset.label(i).unwrap()] += 1;
        }
        assert!(counts.iter().all(|&c| (8..=32).contains(&c)), "{counts:?}");
        assert!(subset.indices.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(subset.indices, Subset::new(Arc::clone(&inner), 200).indices);
        assert!(subset.get(200).is_err());
        assert_eq!(Subset::new(Arc::clone(&inner), 5000).len(), inner.len());
    }
}
