//! Opening a run's data: the splits, limited per the config, and their loaders.

use std::sync::Arc;

use depthshrink_data::{
    Dataset, Loader, LoaderConfig, Splits, Subset, Transform, TransformConfig, open_or_synthetic,
};

use super::TrainError;
use crate::config::DataConfig;

/// The opened data of a run: splits (limited per the config) and their loaders.
pub struct Data {
    /// The data set, with `limit_train` / `limit_test` applied.
    pub splits: Splits,
    /// Shuffled training batches, augmented.
    pub train: Loader,
    /// Evaluation batches in index order.
    pub test: Loader,
}

impl Data {
    /// The side of the evaluation images (what the network runs at), read off the first test
    /// batch.
    pub fn input_res(&self) -> Result<usize, TrainError> {
        match self.test.epoch(0).next() {
            Some(batch) => Ok(batch?.images.shape()[2]),
            None => Err(TrainError::Config("the test split is empty".into())),
        }
    }
}

impl DataConfig {
    /// Opens the data set and builds the loaders (train: shuffled from `seed`).
    pub fn open(&self, seed: u64) -> Result<Data, TrainError> {
        let mut splits = open_or_synthetic(self.dir.as_deref())?;
        if let Some(n) = self.limit_train {
            splits.train = Arc::new(Subset::new(Arc::clone(&splits.train), n));
        }
        if let Some(n) = self.limit_test {
            splits.test = Arc::new(Subset::new(Arc::clone(&splits.test), n));
        }
        let (train_tf, eval_tf) = splits.transforms(self.augment, self.res, self.random_erasing)?;
        let train = Loader::new(
            Arc::clone(&splits.train),
            Transform::new(train_tf)?,
            LoaderConfig {
                seed,
                cache: self.cache,
                drop_last: self.drop_last,
                prefetch: self.prefetch,
                ..LoaderConfig::new(self.batch_size)
            },
        )?;
        let test = eval_loader(
            &splits.test,
            eval_tf,
            self.eval_batch_size.unwrap_or(self.batch_size),
            self.cache,
        )?;
        if train.batches_per_epoch() == 0 {
            return Err(TrainError::Config(format!(
                "the training split has {} images: not one batch of {} (drop_last)",
                splits.train.len(),
                self.batch_size
            )));
        }
        Ok(Data {
            splits,
            train,
            test,
        })
    }
}

/// An evaluation loader: index order, every sample.
pub fn eval_loader(
    dataset: &Arc<dyn Dataset>,
    transform: TransformConfig,
    batch_size: usize,
    cache: bool,
) -> Result<Loader, TrainError> {
    Ok(Loader::new(
        Arc::clone(dataset),
        Transform::new(transform)?,
        LoaderConfig {
            shuffle: false,
            cache,
            ..LoaderConfig::new(batch_size)
        },
    )?)
}
