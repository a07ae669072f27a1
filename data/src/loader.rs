//! Batching with parallel decode/augmentation, background prefetch and exact resume.
//!
//! An epoch's order is a pure function of (seed, epoch) and each sample's augmentation of
//! (seed, epoch, index), so [`Loader::epoch_from`] at batch `b` yields exactly the batches an
//! uninterrupted epoch would have yielded from `b` on.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use depthshrink_tensor::Tensor;
use rand::seq::SliceRandom;
use rayon::prelude::*;

use crate::dataset::{Dataset, Sample};
use crate::error::{DataError, Result};
use crate::rng::{Purpose, keyed};
use crate::transform::{Chw, Transform};

/// How batches are formed.
#[derive(Clone, Debug, PartialEq)]
pub struct LoaderConfig {
    /// Samples per batch, ≥ 1.
    pub batch_size: usize,
    /// Reshuffle every epoch (from seed and epoch); off gives index order.
    pub shuffle: bool,
    /// Drop the final partial batch of each epoch.
    pub drop_last: bool,
    /// Seeds the shuffle and the augmentation.
    pub seed: u64,
    /// Batches prepared ahead of the consumer (the bounded queue's capacity, ≥ 1).
    pub prefetch: usize,
    /// Keep decoded images in memory after their first use (CIFAR-10 train: ~150 MB).
    pub cache: bool,
    /// Skip samples whose file cannot be read or decoded, instead of failing; they are recorded
    /// in [`Batch::skipped`] and [`Loader::skipped`], and their batch is that much smaller.
    pub skip_bad: bool,
}

impl LoaderConfig {
    /// Shuffled, keep-last, seed 0, two batches of prefetch, no cache, fail on bad files.
    pub fn new(batch_size: usize) -> LoaderConfig {
        LoaderConfig {
            batch_size,
            shuffle: true,
            drop_last: false,
            seed: 0,
            prefetch: 2,
            cache: false,
            skip_bad: false,
        }
    }
}

/// A sample left out under `skip_bad`, with the reason (which names the file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The sample's index in the data set.
    pub index: usize,
    /// The error's message.
    pub reason: String,
}

/// One batch: NCHW images, their labels and data-set indices.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Position of this batch in its epoch.
    pub position: usize,
    /// The transformed images, `[N, 3, H, W]`.
    pub images: Tensor,
    /// Class index of each image.
    pub labels: Vec<usize>,
    /// Data-set index of each image.
    pub indices: Vec<usize>,
    /// Samples of this batch left out by `skip_bad` (plus those of any preceding batch that
    /// had no good sample at all, which is not yielded).
    pub skipped: Vec<Skipped>,
}

/// Produces epochs of batches from a data set and a transform. Cheap to share: epochs run on
/// their own background thread and the cache lives as long as the loader.
pub struct Loader {
    shared: Arc<Shared>,
}

struct Shared {
    dataset: Arc<dyn Dataset>,
    transform: Transform,
    config: LoaderConfig,
    cache: Option<Vec<OnceLock<Sample>>>,
    skipped: Mutex<BTreeMap<usize, String>>,
}

impl Loader {
    /// A loader over `dataset`; errors when `batch_size` or `prefetch` is 0.
    pub fn new(
        dataset: Arc<dyn Dataset>,
        transform: Transform,
        config: LoaderConfig,
    ) -> Result<Loader> {
        if config.batch_size == 0 || config.prefetch == 0 {
            return Err(DataError::Config(
                "loader batch_size and prefetch must be at least 1".into(),
            ));
        }
        let cache = config
            .cache
            .then(|| (0..dataset.len()).map(|_| OnceLock::new()).collect());
        Ok(Loader {
            shared: Arc::new(Shared {
                dataset,
                transform,
                config,
                cache,
                skipped: Mutex::new(BTreeMap::new()),
            }),
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &LoaderConfig {
        &self.shared.config
    }

    /// The data set it draws from.
    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.shared.dataset
    }

    /// Batches per epoch, honouring `drop_last`.
    pub fn batches_per_epoch(&self) -> usize {
        let (n, bs) = (self.shared.dataset.len(), self.shared.config.batch_size);
        if self.shared.config.drop_last {
            n / bs
        } else {
            n.div_ceil(bs)
        }
    }

    /// The order in which `epoch` visits the data set.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.shared.dataset.len()).collect();
        if self.shared.config.shuffle {
            order.shuffle(&mut keyed(
                Purpose::Shuffle,
                self.shared.config.seed,
                epoch,
                0,
            ));
        }
        order
    }

    /// All batches of `epoch`.
    pub fn epoch(&self, epoch: u64) -> Epoch {
        self.start(epoch, 0)
    }

    /// The batches of `epoch` from position `start` on, identical to those an uninterrupted
    /// epoch yields there; `start == batches_per_epoch()` gives an empty epoch.
    pub fn epoch_from(&self, epoch: u64, start: usize) -> Result<Epoch> {
        let total = self.batches_per_epoch();
        if start > total {
            return Err(DataError::Config(format!(
                "cannot start at batch {start}: an epoch has {total} batches"
            )));
        }
        Ok(self.start(epoch, start))
    }

    /// Every sample skipped so far (by any epoch), by data-set index.
    pub fn skipped(&self) -> Vec<Skipped> {
        let log = self
            .shared
            .skipped
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        log.iter()
            .map(|(&index, reason)| Skipped {
                index,
                reason: reason.clone(),
            })
            .collect()
    }

    fn start(&self, epoch: u64, start: usize) -> Epoch {
        let shared = Arc::clone(&self.shared);
        let order = self.epoch_order(epoch);
        let end = self.batches_per_epoch();
        let (tx, rx) = sync_channel(shared.config.prefetch);
        let stop = Arc::new(AtomicBool::new(false));
        let finished = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, finished) = (Arc::clone(&stop), Arc::clone(&finished));
            std::thread::Builder::new()
                .name("depthshrink-loader".into())
                .spawn(move || {
                    shared.produce(epoch, &order, start..end, &tx, &stop);
                    finished.store(true, Ordering::Release);
                })
        };
        match thread {
            Ok(handle) => Epoch {
                end,
                remaining: end - start,
                rx: Some(rx),
                thread: Some(handle),
                stop,
                finished,
                done: false,
            },
            Err(e) => Epoch::failed(DataError::Worker(format!(
                "cannot spawn loader thread: {e}"
            ))),
        }
    }
}

impl Shared {
    /// The background thread's loop: build each batch (in parallel) and queue it, until the
    /// epoch ends, an error is sent, or the consumer hangs up.
    fn produce(
        &self,
        epoch: u64,
        order: &[usize],
        positions: std::ops::Range<usize>,
        tx: &SyncSender<Result<Batch>>,
        stop: &AtomicBool,
    ) {
        let bs = self.config.batch_size;
        let mut pending = Vec::new();
        for position in positions {
            if stop.load(Ordering::Acquire) {
                return;
            }
            let indices = &order[position * bs..((position + 1) * bs).min(order.len())];
            let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.batch(epoch, position, indices, &mut pending)
            }))
            .unwrap_or_else(|panic| Err(DataError::Worker(panic_message(&*panic))));
            let item = match built {
                Ok(Some(batch)) => Ok(batch),
                Ok(None) => continue,
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            if tx.send(item).is_err() || failed {
                return;
            }
        }
    }

    /// Decodes and transforms `indices` in parallel. Skipped samples accumulate in `pending`
    /// and go out with the next batch; `None` when `skip_bad` dropped every sample.
    fn batch(
        &self,
        epoch: u64,
        position: usize,
        indices: &[usize],
        pending: &mut Vec<Skipped>,
    ) -> Result<Option<Batch>> {
        let results: Vec<Result<(Chw, usize)>> =
            indices.par_iter().map(|&i| self.sample(epoch, i)).collect();
        let mut images: Vec<Chw> = Vec::with_capacity(indices.len());
        let mut labels = Vec::with_capacity(indices.len());
        let mut kept = Vec::with_capacity(indices.len());
        for (&index, result) in indices.iter().zip(results) {
            match result {
                Ok((image, label)) => {
                    images.push(image);
                    labels.push(label);
                    kept.push(index);
                }
                Err(e) if self.config.skip_bad && e.is_bad_sample() => {
                    let reason = e.to_string();
                    self.skipped
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(index, reason.clone());
                    pending.push(Skipped { index, reason });
                }
                Err(e) => return Err(e),
            }
        }
        let Some(first) = images.first() else {
            return Ok(None);
        };
        let dims = [3, first.height, first.width];
        if let Some(error) = self.mixed_sizes(position, &images, &kept) {
            return Err(error);
        }
        let mut data = Vec::with_capacity(images.len() * first.data.len());
        for image in &images {
            data.extend_from_slice(&image.data);
        }
        Ok(Some(Batch {
            position,
            images: Tensor::from_vec(&[images.len(), dims[0], dims[1], dims[2]], data)?,
            labels,
            indices: kept,
            skipped: std::mem::take(pending),
        }))
    }

    /// `None` when `images` (of samples `indices`) share one size, else the error naming the
    /// first image not of the most common size (ties go to the earliest size).
    fn mixed_sizes(&self, position: usize, images: &[Chw], indices: &[usize]) -> Option<DataError> {
        let dims = |image: &Chw| [3, image.height, image.width];
        let first = dims(images.first()?);
        if images.iter().all(|image| dims(image) == first) {
            return None;
        }
        let count = |d: [usize; 3]| images.iter().filter(|image| dims(image) == d).count();
        let mut common = (first, count(first));
        for image in images {
            let n = count(dims(image));
            if n > common.1 {
                common = (dims(image), n);
            }
        }
        let reference = images.iter().position(|image| dims(image) == common.0)?;
        let odd = images.iter().position(|image| dims(image) != common.0)?;
        Some(DataError::MixedSizes {
            batch: position,
            sample: self.dataset.describe(indices[odd]),
            dims: dims(&images[odd]),
            reference: self.dataset.describe(indices[reference]),
            reference_dims: common.0,
        })
    }

    /// One sample, decoded (or taken from the cache), label-checked and transformed; any
    /// failure, a panic included, comes back naming the sample (see [`DataError::in_sample`]).
    fn sample(&self, epoch: u64, index: usize) -> Result<(Chw, usize)> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.sample_unnamed(epoch, index)
        }))
        .unwrap_or_else(|panic| Err(DataError::Worker(panic_message(&*panic))))
        .map_err(|e| e.in_sample(index, self.dataset.describe(index)))
    }

    fn sample_unnamed(&self, epoch: u64, index: usize) -> Result<(Chw, usize)> {
        let fresh;
        let sample = match self.cache.as_ref().map(|c| &c[index]) {
            Some(cell) => match cell.get() {
                Some(sample) => sample,
                None => {
                    let decoded = self.dataset.get(index)?;
                    cell.get_or_init(|| decoded)
                }
            },
            None => {
                fresh = self.dataset.get(index)?;
                &fresh
            }
        };
        let classes = self.dataset.class_names().len();
        if sample.label >= classes {
            return Err(DataError::Label {
                index,
                label: sample.label,
                classes,
            });
        }
        let image = self
            .transform
            .apply_keyed(&sample.image, self.config.seed, epoch, index)?;
        Ok((image, sample.label))
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-string payload".into())
}

/// The batches of one epoch, produced on a background thread. Iteration stops after the first
/// error. Dropping it mid-epoch stops and joins the thread.
pub struct Epoch {
    end: usize,
    remaining: usize,
    rx: Option<Receiver<Result<Batch>>>,
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    finished: Arc<AtomicBool>,
    done: bool,
}

impl Epoch {
    fn failed(error: DataError) -> Epoch {
        let (tx, rx) = sync_channel(1);
        let _ = tx.send(Err(error));
        Epoch {
            end: 1,
            remaining: 1,
            rx: Some(rx),
            thread: None,
            stop: Arc::new(AtomicBool::new(true)),
            finished: Arc::new(AtomicBool::new(true)),
            done: false,
        }
    }

    /// Batch positions after the last one yielded (with `skip_bad`, a position whose samples
    /// were all bad is counted but never yielded).
    pub fn remaining(&self) -> usize {
        self.remaining
    }
}

impl Iterator for Epoch {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.done {
            return None;
        }
        let received = self.rx.as_ref()?.recv();
        match received {
            Ok(Ok(batch)) => {
                self.remaining = self.end - batch.position - 1;
                Some(Ok(batch))
            }
            Ok(Err(e)) => {
                self.done = true;
                Some(Err(e))
            }
            Err(_) => {
                self.done = true;
                // The channel closes early only if the thread died outside the per-batch guard.
                (!self.finished.load(Ordering::Acquire)).then(|| {
                    Err(DataError::Worker(
                        "loader thread ended before the epoch did".into(),
                    ))
                })
            }
        }
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Hanging up first wakes a producer blocked on a full queue.
        drop(self.rx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Fake, TempDir, write_folder};
    use crate::transform::{RandomCrop, TransformConfig};
    use std::time::{Duration, Instant};

    fn loader(dataset: Fake, config: LoaderConfig) -> (Arc<Fake>, Loader) {
        let dataset = Arc::new(dataset);
        let transform = Transform::new(TransformConfig {
            random_crop: Some(RandomCrop {
                size: 4,
                padding: 2,
            }),
            hflip: 0.5,
            ..TransformConfig::normalize([0.0; 3], [1.0; 3])
        })
        .unwrap();
        let loader = Loader::new(dataset.clone(), transform, config).unwrap();
        (dataset, loader)
    }

    fn collect(epoch: Epoch) -> Vec<Batch> {
        epoch.map(|b| b.unwrap()).collect()
    }

    #[test]
    fn every_sample_once_per_epoch_with_matching_labels() {
        let (_, loader) = loader(Fake::new(50), LoaderConfig::new(8));
        assert_eq!(loader.batches_per_epoch(), 7);
        let batches = collect(loader.epoch(0));
        assert_eq!(batches.len(), 7);
        assert_eq!(batches[6].labels.len(), 2);
        let mut seen: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
        assert_ne!(seen, (0..50).collect::<Vec<_>>(), "shuffled");
        seen.sort();
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
        for (position, batch) in batches.iter().enumerate() {
            assert_eq!(batch.position, position);
            assert_eq!(batch.images.shape(), [batch.labels.len(), 3, 4, 4]);
            for (k, (&index, &label)) in batch.indices.iter().zip(&batch.labels).enumerate() {
                assert_eq!(label, index % 3);
                // Every non-padding pixel of sample `index` is index / 255.
                let img = &batch.images.data()[k * 48..(k + 1) * 48];
                assert!(img.iter().all(|&v| v == 0.0 || v == index as f32 / 255.0));
            }
        }
    }

    #[test]
    fn drop_last_and_unshuffled_order() {
        let config = LoaderConfig {
            drop_last: true,
            shuffle: false,
            ..LoaderConfig::new(4)
        };
        let (_, loader) = loader(Fake::new(10), config);
        let batches = collect(loader.epoch(3));
        assert_eq!(loader.batches_per_epoch(), 2);
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[1].indices, [4, 5, 6, 7]);
    }

    #[test]
    fn same_seed_and_epoch_give_identical_batches() {
        let config = LoaderConfig {
            seed: 11,
            ..LoaderConfig::new(6)
        };
        let (_, a) = loader(Fake::new(30), config.clone());
        let (_, b) = loader(Fake::new(30), config);
        let first = collect(a.epoch(2));
        for (x, y) in first.iter().zip(collect(b.epoch(2))) {
            assert_eq!((&x.indices, &x.labels), (&y.indices, &y.labels));
            assert_eq!(x.images, y.images);
        }
        let other = collect(a.epoch(3));
        assert_ne!(first[0].indices, other[0].indices);
        assert_ne!(a.epoch_order(2), a.epoch_order(3));
    }

    #[test]
    fn starting_at_a_batch_resumes_exactly() {
        let config = LoaderConfig {
            seed: 5,
            ..LoaderConfig::new(7)
        };
        let (_, loader) = loader(Fake::new(40), config);
        let full = collect(loader.epoch(1));
        let resumed = collect(loader.epoch_from(1, 3).unwrap());
        assert_eq!(resumed.len(), full.len() - 3);
        for (x, y) in full[3..].iter().zip(&resumed) {
            assert_eq!(x.position, y.position);
            assert_eq!(x.indices, y.indices);
            assert_eq!(x.images, y.images);
        }
        assert_eq!(loader.epoch_from(1, 6).unwrap().count(), 0);
        assert!(loader.epoch_from(1, 7).is_err());
    }

    #[test]
    fn dropping_an_epoch_early_stops_the_producer() {
        let config = LoaderConfig {
            prefetch: 1,
            ..LoaderConfig::new(4)
        };
        let (dataset, loader) = loader(Fake::new(100_000), config);
        let mut epoch = loader.epoch(0);
        assert_eq!(epoch.next().unwrap().unwrap().labels.len(), 4);
        let started = Instant::now();
        drop(epoch);
        assert!(started.elapsed() < Duration::from_secs(5));
        let gets = dataset.gets.load(Ordering::SeqCst);
        // One batch consumed, one queued, at most one in progress when it was told to stop.
        assert!(gets <= 4 * 4, "{gets} samples decoded");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            dataset.gets.load(Ordering::SeqCst),
            gets,
            "thread still running"
        );
    }

    #[test]
    fn worker_errors_reach_the_consumer_and_end_the_epoch() {
        let mut bad = Fake::new(20);
        bad.bad = vec![13];
        let (_, l) = loader(bad, LoaderConfig::new(5));
        let results: Vec<Result<Batch>> = l.epoch(0).collect();
        let err = results.last().unwrap().as_ref().err().unwrap();
        assert!(err.to_string().contains("fake/13.jpg"), "{err}");
        assert!(results[..results.len() - 1].iter().all(|r| r.is_ok()));

        let mut panics = Fake::new(20);
        panics.panics = vec![2];
        let (_, l) = loader(panics, LoaderConfig::new(5));
        let err = l.epoch(0).find_map(|r| r.err()).unwrap();
        assert!(
            matches!(&err, DataError::Sample { index: 2, sample, error }
                if sample == "sample 2"
                    && matches!(&**error, DataError::Worker(m) if m.contains("fake panic at 2"))),
            "{err}"
        );
        assert!(err.to_string().starts_with("sample 2: "), "{err}");

        let mut wrong = Fake::new(20);
        wrong.wrong_label = vec![4];
        let (_, l) = loader(wrong, LoaderConfig::new(5));
        let err = l.epoch(0).find_map(|r| r.err()).unwrap();
        assert!(
            matches!(
                &err,
                DataError::Sample { index: 4, error, .. } if matches!(
                    **error,
                    DataError::Label {
                        index: 4,
                        label: 3,
                        classes: 3
                    }
                )
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "sample 4: label 3 is out of range for 3 classes"
        );

        let mut odd = Fake::new(20);
        odd.odd_size = Some(9);
        let cfg = LoaderConfig {
            shuffle: false,
            ..LoaderConfig::new(5)
        };
        let dataset = Arc::new(odd);
        let plain = Transform::new(TransformConfig::normalize([0.0; 3], [1.0; 3])).unwrap();
        let l = Loader::new(dataset, plain, cfg).unwrap();
        let err = l.epoch(0).find_map(|r| r.err()).unwrap();
        assert!(
            matches!(
                &err,
                DataError::MixedSizes { batch: 1, sample, dims: [3, 4, 5], reference, reference_dims: [3, 4, 4] }
                    if sample == "sample 9" && reference == "sample 5"
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "batch 1: sample 9 is 3×4×5 (C×H×W) but sample 5 is 3×4×4; \
             add a resize or crop to the transform"
        );
    }

    #[test]
    fn mixed_sizes_names_the_odd_image_even_when_it_comes_first() {
        let mut odd = Fake::new(6);
        odd.odd_size = Some(3);
        let cfg = LoaderConfig {
            shuffle: false,
            ..LoaderConfig::new(3)
        };
        let plain = Transform::new(TransformConfig::normalize([0.0; 3], [1.0; 3])).unwrap();
        let l = Loader::new(Arc::new(odd), plain, cfg).unwrap();
        let err = l.epoch(0).find_map(|r| r.err()).unwrap();
        assert!(
            matches!(&err, DataError::MixedSizes { batch: 1, sample, reference, .. }
                if sample == "sample 3" && reference == "sample 4"),
            "{err}"
        );
    }

    #[test]
    fn transform_errors_name_the_sample() {
        // The fake's 4×4 images cannot give an 8×8 crop without padding.
        let plain = Transform::new(TransformConfig {
            random_crop: Some(RandomCrop {
                size: 8,
                padding: 0,
            }),
            ..TransformConfig::normalize([0.0; 3], [1.0; 3])
        })
        .unwrap();
        let cfg = LoaderConfig {
            shuffle: false,
            ..LoaderConfig::new(4)
        };
        let l = Loader::new(Arc::new(Fake::new(8)), plain, cfg).unwrap();
        let err = l.epoch(0).find_map(|r| r.err()).unwrap();
        assert!(
            matches!(&err, DataError::Sample { index: 0, error, .. }
                if matches!(**error, DataError::TooSmall { width: 4, height: 4, size: 8 })),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "sample 0: an image of 4×4 is smaller than the 8×8 crop"
        );
        assert!(!err.is_bad_sample());
    }

    #[test]
    fn skip_bad_drops_and_reports_bad_samples() {
        let mut fake = Fake::new(20);
        fake.bad = vec![3, 4, 5, 6, 7, 15];
        let config = LoaderConfig {
            skip_bad: true,
            shuffle: false,
            ..LoaderConfig::new(5)
        };
        let (_, loader) = loader(fake, config);
        let batches = collect(loader.epoch(0));
        let kept: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
        assert_eq!(kept, [0, 1, 2, 8, 9, 10, 11, 12, 13, 14, 16, 17, 18, 19]);
        assert_eq!(batches[0].images.shape()[0], 3);
        let skipped: Vec<usize> = batches
            .iter()
            .flat_map(|b| &b.skipped)
            .map(|s| s.index)
            .collect();
        assert_eq!(skipped, [3, 4, 5, 6, 7, 15]);
        let log = loader.skipped();
        assert_eq!(log.len(), 6);
        assert!(log[0].reason.contains("fake/3.jpg"));
    }

    #[test]
    fn corrupt_files_in_a_folder_fail_or_are_skipped_by_path() {
        let dir = TempDir::new("loader-corrupt");
        write_folder(dir.path(), "train", &["a", "b"], 4, 32);
        let corrupt = dir.path().join("train/b/001.jpg");
        std::fs::write(&corrupt, b"\xff\xd8 not really").unwrap();
        let folder: Arc<dyn Dataset> =
            Arc::new(crate::folder::ImageFolder::open(&dir.path().join("train")).unwrap());
        let transform = || Transform::new(TransformConfig::cifar_train()).unwrap();
        let strict = Loader::new(folder.clone(), transform(), LoaderConfig::new(3)).unwrap();
        let err = strict.epoch(0).find_map(|b| b.err()).unwrap();
        // Named once: the decode error already carries the path `describe` gives.
        let path = corrupt.display().to_string();
        assert_eq!(err.to_string().matches(&path).count(), 1, "{err}");
        assert!(
            err.to_string()
                .starts_with(&format!("{path}: cannot decode")),
            "{err}"
        );

        let config = LoaderConfig {
            skip_bad: true,
            ..LoaderConfig::new(3)
        };
        let lenient = Loader::new(folder, transform(), config).unwrap();
        let batches = collect(lenient.epoch(0));
        assert_eq!(batches.iter().map(|b| b.labels.len()).sum::<usize>(), 7);
        let skipped = lenient.skipped();
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].index, 5);
        assert!(skipped[0].reason.contains("001.jpg"));
    }

    #[test]
    fn cache_decodes_each_sample_once() {
        let config = LoaderConfig {
            cache: true,
            ..LoaderConfig::new(8)
        };
        let (dataset, loader) = loader(Fake::new(30), config);
        let first = collect(loader.epoch(0));
        let again = collect(loader.epoch(0));
        collect(loader.epoch(1));
        assert_eq!(dataset.gets.load(Ordering::SeqCst), 30);
        for (x, y) in first.iter().zip(&again) {
            assert_eq!(x.images, y.images);
        }
    }

    #[test]
    fn zero_batch_size_is_rejected() {
        let dataset: Arc<dyn Dataset> = Arc::new(Fake::new(3));
        let t = Transform::new(TransformConfig::cifar_eval()).unwrap();
        assert!(Loader::new(dataset, t, LoaderConfig::new(0)).is_err());
    }
}
