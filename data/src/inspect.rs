//! A data set's vital signs: class counts, image sizes, channel statistics and how fast the
//! training loader can feed a model.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::loader::{Loader, LoaderConfig};
use crate::open::{Format, Splits};
use crate::transform::{Transform, TransformConfig};

/// What [`inspect`] scans and measures.
#[derive(Clone, Debug, PartialEq)]
pub struct InspectOptions {
    /// Decode at most this many evenly spaced images per split for sizes and statistics
    /// (`None`: all of them).
    pub max_images: Option<usize>,
    /// Images to push through the training loader for `images_per_s` (0: don't measure).
    pub throughput_images: usize,
    /// Batch size of the throughput measurement.
    pub batch_size: usize,
    /// Loader seed of the throughput measurement.
    pub seed: u64,
}

impl Default for InspectOptions {
    fn default() -> Self {
        InspectOptions {
            max_images: None,
            throughput_images: 10_000,
            batch_size: 128,
            seed: 0,
        }
    }
}

/// Image sizes seen, as (width, height).
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSizes {
    /// Smallest width and smallest height (possibly of different images).
    pub min: (usize, usize),
    /// Largest width and largest height.
    pub max: (usize, usize),
    /// The distinct sizes, smallest first, at most [`MAX_DISTINCT_SIZES`] of them.
    pub distinct: Vec<(usize, usize)>,
    /// How many distinct sizes there were in all.
    pub distinct_count: usize,
}

/// How many distinct sizes an [`ImageSizes`] lists.
pub const MAX_DISTINCT_SIZES: usize = 16;

/// What [`inspect`] found in one split.
#[derive(Clone, Debug, PartialEq)]
pub struct SplitReport {
    /// `"train"`, `"test"` or `"val"`.
    pub name: String,
    /// Number of samples.
    pub len: usize,
    /// Samples per class, indexed like the class names.
    pub counts: Vec<usize>,
    /// Images decoded for `sizes`, `mean` and `std` (all of them unless `max_images` is set).
    pub scanned: usize,
    /// `None` when no scanned image decoded.
    pub sizes: Option<ImageSizes>,
    /// Per-channel (RGB) pixel mean over the scanned images, in [0, 1].
    pub mean: [f64; 3],
    /// Per-channel (RGB) pixel standard deviation (population) over the scanned images, in
    /// [0, 1].
    pub std: [f64; 3],
    /// Scanned images that could not be read or decoded, by index.
    pub bad: Vec<Unreadable>,
}

/// A scanned image that could not be read or decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct Unreadable {
    /// The sample's index in its split.
    pub index: usize,
    /// The file, when the sample has one (class folders).
    pub path: Option<PathBuf>,
    /// Why, without the path.
    pub reason: String,
}

impl Unreadable {
    fn new(index: usize, error: &DataError) -> Unreadable {
        let (path, reason) = match error {
            DataError::Io { path, source } => (Some(path.clone()), source.to_string()),
            DataError::Decode { path, detail } => {
                (Some(path.clone()), format!("cannot decode image: {detail}"))
            }
            other => (None, other.to_string()),
        };
        Unreadable {
            index,
            path,
            reason,
        }
    }
}

impl std::fmt::Display for Unreadable {
    /// "PATH: REASON", or "sample INDEX: REASON" without a file.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.path {
            Some(path) => write!(f, "{}: {}", path.display(), self.reason),
            None => write!(f, "sample {}: {}", self.index, self.reason),
        }
    }
}

/// What [`inspect`] found in a data set.
#[derive(Clone, Debug, PartialEq)]
pub struct InspectReport {
    /// The data set's layout.
    pub format: Format,
    /// The directory it was opened from (`None` for the synthetic set).
    pub root: Option<PathBuf>,
    /// Class names, in label order.
    pub classes: Vec<String>,
    /// Train first, then test or val.
    pub splits: Vec<SplitReport>,
    /// Training-loader throughput (decode + the given train transform, no cache, skipping bad
    /// files), or `None` when not measured.
    pub images_per_s: Option<f64>,
}

/// Scans both splits (in parallel) and measures the training loader.
pub fn inspect(
    splits: &Splits,
    train_transform: TransformConfig,
    options: &InspectOptions,
) -> Result<InspectReport> {
    let reports = splits
        .named()
        .into_iter()
        .map(|(name, dataset)| split_report(name, dataset.as_ref(), options.max_images))
        .collect::<Result<Vec<_>>>()?;
    let images_per_s = if options.throughput_images == 0 || splits.train.is_empty() {
        None
    } else {
        Some(throughput(&splits.train, train_transform, options)?)
    };
    Ok(InspectReport {
        format: splits.format,
        root: splits.root.clone(),
        classes: splits.class_names().to_vec(),
        splits: reports,
        images_per_s,
    })
}

/// Running sums over scanned images; exact integer sums so the statistics don't drift.
#[derive(Default)]
struct Scan {
    images: usize,
    pixels: u64,
    sum: [u64; 3],
    sum_sq: [u64; 3],
    sizes: BTreeSet<(usize, usize)>,
    bad: Vec<Unreadable>,
}

impl Scan {
    fn merge(mut self, other: Scan) -> Scan {
        self.images += other.images;
        self.pixels += other.pixels;
        for c in 0..3 {
            self.sum[c] += other.sum[c];
            self.sum_sq[c] += other.sum_sq[c];
        }
        self.sizes.extend(other.sizes);
        self.bad.extend(other.bad);
        self
    }
}

fn split_report(
    name: &str,
    dataset: &dyn Dataset,
    max_images: Option<usize>,
) -> Result<SplitReport> {
    let len = dataset.len();
    let mut counts = vec![0; dataset.class_names().len()];
    for i in 0..len {
        let label = dataset.label(i)?;
        if let Some(count) = counts.get_mut(label) {
            *count += 1;
        }
    }
    let scanned = max_images.map_or(len, |m| m.min(len));
    let scan = (0..scanned)
        .into_par_iter()
        .map(|k| k * len / scanned.max(1))
        .fold(Scan::default, |mut scan, index| {
            match dataset.get(index) {
                Ok(sample) => {
                    let img = &sample.image;
                    scan.images += 1;
                    scan.pixels += (img.width() * img.height()) as u64;
                    for px in img.data().chunks_exact(3) {
                        for (c, &v) in px.iter().enumerate() {
                            scan.sum[c] += v as u64;
                            scan.sum_sq[c] += v as u64 * v as u64;
                        }
                    }
                    scan.sizes.insert((img.width(), img.height()));
                }
                Err(e) => scan.bad.push(Unreadable::new(index, &e)),
            }
            scan
        })
        .reduce(Scan::default, Scan::merge);
    let n = scan.pixels.max(1) as f64;
    let mean: [f64; 3] = std::array::from_fn(|c| scan.sum[c] as f64 / n / 255.0);
    let std: [f64; 3] = std::array::from_fn(|c| {
        let m2 = scan.sum_sq[c] as f64 / n / (255.0 * 255.0);
        (m2 - mean[c] * mean[c]).max(0.0).sqrt()
    });
    let mut bad = scan.bad;
    bad.sort_by_key(|s| s.index);
    let sizes = (!scan.sizes.is_empty()).then(|| ImageSizes {
        min: (
            scan.sizes.iter().map(|s| s.0).min().unwrap_or(0),
            scan.sizes.iter().map(|s| s.1).min().unwrap_or(0),
        ),
        max: (
            scan.sizes.iter().map(|s| s.0).max().unwrap_or(0),
            scan.sizes.iter().map(|s| s.1).max().unwrap_or(0),
        ),
        distinct: scan
            .sizes
            .iter()
            .take(MAX_DISTINCT_SIZES)
            .copied()
            .collect(),
        distinct_count: scan.sizes.len(),
    });
    Ok(SplitReport {
        name: name.to_string(),
        len,
        counts,
        scanned,
        sizes,
        mean,
        std,
        bad,
    })
}

/// Images per second through a fresh (uncached) training loader, over as many epochs as it
/// takes to reach `throughput_images`.
fn throughput(
    train: &Arc<dyn Dataset>,
    transform: TransformConfig,
    options: &InspectOptions,
) -> Result<f64> {
    let config = LoaderConfig {
        seed: options.seed,
        skip_bad: true,
        ..LoaderConfig::new(options.batch_size)
    };
    let loader = Loader::new(Arc::clone(train), Transform::new(transform)?, config)?;
    let started = Instant::now();
    let mut images = 0;
    'epochs: for epoch in 0.. {
        for batch in loader.epoch(epoch) {
            images += batch?.labels.len();
            if images >= options.throughput_images {
                break 'epochs;
            }
        }
        if loader.skipped().len() == train.len() {
            break;
        }
    }
    Ok(images as f64 / started.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::open::open;
    use crate::testutil::{TempDir, write_folder};

    #[test]
    fn reports_counts_sizes_statistics_and_bad_files() {
        let dir = TempDir::new("inspect");
        write_folder(dir.path(), "train", &["a", "b"], 3, 8);
        write_folder(dir.path(), "test", &["a", "b"], 1, 6);
        // A wider, pure-black PNG in test and a corrupt file in train.
        image::RgbImage::new(10, 6)
            .save(dir.path().join("test/b/wide.png"))
            .unwrap();
        let bad = dir.path().join("train/b/bad.png");
        std::fs::write(&bad, b"broken").unwrap();
        let splits = open(dir.path()).unwrap();
        let options = InspectOptions {
            throughput_images: 20,
            batch_size: 4,
            ..InspectOptions::default()
        };
        let report = inspect(&splits, TransformConfig::cifar_eval(), &options).unwrap();
        assert_eq!(report.format, Format::ImageFolder);
        assert_eq!(report.classes, ["a", "b"]);
        let [train, test] = &report.splits[..] else {
            panic!("two splits")
        };
        assert_eq!((train.name.as_str(), test.name.as_str()), ("train", "test"));
        assert_eq!(train.counts, [3, 4]);
        assert_eq!(test.counts, [1, 2]);
        assert_eq!(train.bad.len(), 1);
        assert_eq!(train.bad[0].path.as_deref(), Some(bad.as_path()));
        assert!(train.bad[0].reason.contains("cannot decode"));
        assert!(train.bad[0].to_string().contains("bad.png: cannot decode"));
        assert_eq!(train.scanned, 7);
        let sizes = test.sizes.as_ref().unwrap();
        assert_eq!((sizes.min, sizes.max), ((6, 6), (10, 6)));
        assert_eq!(sizes.distinct, [(6, 6), (10, 6)]);
        // PNG "a/000" (seed 0) is [0, 5, 200]; JPEGs are close to their colours.
        let only_png = inspect(
            &open(dir.path()).unwrap(),
            TransformConfig::cifar_eval(),
            &InspectOptions {
                max_images: Some(1),
                throughput_images: 0,
                ..options.clone()
            },
        )
        .unwrap();
        let first = &only_png.splits[0];
        assert_eq!(first.scanned, 1);
        assert!((first.mean[2] - 200.0 / 255.0).abs() < 1e-9 && first.std[2] < 1e-6);
        assert_eq!(only_png.images_per_s, None);
        assert!(report.images_per_s.unwrap() > 0.0);
    }
}
