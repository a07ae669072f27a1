//! Recognising a data directory's layout and opening its train and test splits.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cifar;
use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::folder::{ImageFolder, class_dirs};
use crate::synthetic::Synthetic;
use crate::transform::{RandomErasing, TransformConfig};
use serde::{Deserialize, Serialize};

/// Which kind of data set a [`Splits`] came from (it decides the default transforms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// CIFAR-10's binary batches ([`CifarBinary`](crate::CifarBinary)).
    CifarBinary,
    /// `train/` and `test/` (or `val/`) class folders ([`ImageFolder`](crate::ImageFolder)).
    ImageFolder,
    /// The built-in generated set ([`Synthetic`](crate::Synthetic)).
    Synthetic,
}

impl Format {
    /// The name reports print: `cifar10-binary`, `image-folder` or `synthetic`.
    pub fn name(self) -> &'static str {
        match self {
            Format::CifarBinary => "cifar10-binary",
            Format::ImageFolder => "image-folder",
            Format::Synthetic => "synthetic",
        }
    }
}

/// Augmentation presets: the `augment` key of a config's `[data]` table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Augment {
    /// The data set's own (synthetic / CIFAR: pad-4 crop + flip; ImageNet-like folders:
    /// RandomResizedCrop at `res` + flip).
    #[default]
    Default,
    /// None: train on the evaluation transform.
    None,
    /// Pad-4 random crop + flip with CIFAR-10 statistics.
    Cifar,
    /// RandomResizedCrop at `res` + flip; eval: resize to res/0.875, centre crop.
    Imagenet,
}

/// The train and evaluation splits of one data set, sharing class names.
#[derive(Clone)]
pub struct Splits {
    /// The layout it was opened from.
    pub format: Format,
    /// The directory it was opened from (`None` for the synthetic set).
    pub root: Option<PathBuf>,
    /// The training split.
    pub train: Arc<dyn Dataset>,
    /// The evaluation split.
    pub test: Arc<dyn Dataset>,
    /// `"test"` or `"val"`: the evaluation split's folder name, for reports.
    pub test_name: &'static str,
}

impl Splits {
    /// Class names, in label order (shared by both splits).
    pub fn class_names(&self) -> &[String] {
        self.train.class_names()
    }

    /// The (train, eval) transforms of the preset `augment` for this data set: ImageNet's at
    /// `res`, and random erasing with probability `random_erasing` on training images (0 = off).
    pub fn transforms(
        &self,
        augment: Augment,
        res: usize,
        random_erasing: f64,
    ) -> Result<(TransformConfig, TransformConfig)> {
        let (mut train, eval) = match augment {
            Augment::Default => self.default_transforms(res)?,
            Augment::None => {
                let eval = self.default_transforms(res)?.1;
                (eval.clone(), eval)
            }
            Augment::Cifar => (
                TransformConfig::cifar_train(),
                TransformConfig::cifar_eval(),
            ),
            Augment::Imagenet => (
                TransformConfig::imagenet_train(res),
                TransformConfig::imagenet_eval(res),
            ),
        };
        if random_erasing > 0.0 {
            train.random_erasing = Some(RandomErasing {
                p: random_erasing,
                ..Default::default()
            });
        }
        Ok((train, eval))
    }

    /// The preset (train, eval) transforms for this data set: the synthetic set's own, CIFAR's
    /// for CIFAR binaries and for class folders of 32×32 images (judged by the first train
    /// image), ImageNet's at `imagenet_res` otherwise.
    pub fn default_transforms(
        &self,
        imagenet_res: usize,
    ) -> Result<(TransformConfig, TransformConfig)> {
        let cifar_like = match self.format {
            Format::Synthetic => {
                return Ok((
                    TransformConfig::synthetic_train(),
                    TransformConfig::synthetic_eval(),
                ));
            }
            Format::CifarBinary => true,
            Format::ImageFolder => {
                let first = self.train.get(0)?.image;
                (first.width(), first.height()) == (32, 32)
            }
        };
        Ok(if cifar_like {
            (
                TransformConfig::cifar_train(),
                TransformConfig::cifar_eval(),
            )
        } else {
            (
                TransformConfig::imagenet_train(imagenet_res),
                TransformConfig::imagenet_eval(imagenet_res),
            )
        })
    }

    /// The splits as (name, data set) pairs, train first.
    pub fn named(&self) -> [(&'static str, &Arc<dyn Dataset>); 2] {
        [("train", &self.train), (self.test_name, &self.test)]
    }
}

/// The built-in synthetic set (see [`crate::synthetic`]).
pub fn open_synthetic(seed: u64) -> Splits {
    Splits {
        format: Format::Synthetic,
        root: None,
        train: Arc::new(Synthetic::train(seed)),
        test: Arc::new(Synthetic::test(seed)),
        test_name: "test",
    }
}

/// Opens `dir` if given, else the synthetic set with its default seed: the rule wherever a data
/// set is optional.
pub fn open_or_synthetic(dir: Option<&Path>) -> Result<Splits> {
    match dir {
        Some(dir) => open(dir),
        None => Ok(open_synthetic(crate::synthetic::SYNTHETIC_SEED)),
    }
}

/// Opens a data directory, recognising its layout:
/// - CIFAR-10 binary: `data_batch_1..5.bin` and `test_batch.bin`, in `dir` or in
///   `dir/cifar-10-batches-bin/`;
/// - class folders: `dir/train/<class>/*.{jpg,png}` and `dir/test/…` (or `dir/val/…`), whose class
///   names must match train's.
pub fn open(dir: &Path) -> Result<Splits> {
    if !dir.exists() {
        return Err(DataError::Missing {
            path: dir.to_path_buf(),
        });
    }
    if !dir.is_dir() {
        return Err(DataError::Layout {
            path: dir.to_path_buf(),
            detail: "not a directory".into(),
        });
    }
    if let Some(batches) = cifar::find_batches(dir) {
        let (train, test) = cifar::open_splits(&batches)?;
        return Ok(Splits {
            format: Format::CifarBinary,
            root: Some(dir.to_path_buf()),
            train: Arc::new(train),
            test: Arc::new(test),
            test_name: "test",
        });
    }
    let train_dir = dir.join("train");
    if !train_dir.is_dir() {
        return Err(DataError::Layout {
            path: dir.to_path_buf(),
            detail: layout_hint(dir),
        });
    }
    let (test_dir, test_name) = match ["test", "val"].into_iter().find(|s| dir.join(s).is_dir()) {
        Some(name) => (dir.join(name), name),
        None => {
            return Err(DataError::Layout {
                path: dir.to_path_buf(),
                detail: "has train/ but neither test/ nor val/".into(),
            });
        }
    };
    let train = ImageFolder::open(&train_dir)?;
    let test = ImageFolder::open(&test_dir)?;
    if test.class_names() != train.class_names() {
        return Err(DataError::ClassMismatch {
            path: test_dir,
            expected: train.class_names().to_vec(),
            found: test.class_names().to_vec(),
        });
    }
    Ok(Splits {
        format: Format::ImageFolder,
        root: Some(dir.to_path_buf()),
        train: Arc::new(train),
        test: Arc::new(test),
        test_name,
    })
}

/// What was expected, plus a pointer to the parent when `dir` itself looks like one split.
fn layout_hint(dir: &Path) -> String {
    let expected = "expected CIFAR-10 binary batches (data_batch_1..5.bin, test_batch.bin) \
                    or class folders under train/ and test/ (or val/)";
    let looks_like_split = class_dirs(dir).is_ok_and(|classes| !classes.is_empty());
    if looks_like_split {
        format!("{expected}; it holds sub-folders, so if they are classes pass its parent")
    } else {
        expected.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{TempDir, write_cifar, write_folder};

    #[test]
    fn recognises_cifar_binaries_in_place_or_in_their_archive_folder() {
        let dir = TempDir::new("open-cifar");
        write_cifar(&dir.path().join("cifar-10-batches-bin"), 2, 3);
        let splits = open(dir.path()).unwrap();
        assert_eq!(splits.format, Format::CifarBinary);
        assert_eq!((splits.train.len(), splits.test.len()), (10, 3));
        assert_eq!(splits.class_names().len(), 10);
        let direct = open(&dir.path().join("cifar-10-batches-bin")).unwrap();
        assert_eq!(direct.format, Format::CifarBinary);
        let (train, eval) = splits.default_transforms(224).unwrap();
        assert_eq!(
            (train, eval),
            (
                TransformConfig::cifar_train(),
                TransformConfig::cifar_eval()
            )
        );
    }

    #[test]
    fn recognises_class_folders_with_test_or_val() {
        let dir = TempDir::new("open-folder");
        write_folder(dir.path(), "train", &["cat", "dog"], 2, 32);
        write_folder(dir.path(), "val", &["cat", "dog"], 1, 32);
        let splits = open(dir.path()).unwrap();
        assert_eq!(splits.format, Format::ImageFolder);
        assert_eq!(splits.test_name, "val");
        assert_eq!(splits.class_names(), ["cat", "dog"]);
        assert_eq!((splits.train.len(), splits.test.len()), (4, 2));
        assert_eq!(
            splits.default_transforms(224).unwrap().0,
            TransformConfig::cifar_train()
        );

        let big = TempDir::new("open-folder-big");
        write_folder(big.path(), "train", &["a"], 1, 40);
        write_folder(big.path(), "test", &["a"], 1, 40);
        let splits = open(big.path()).unwrap();
        assert_eq!(splits.test_name, "test");
        assert_eq!(
            splits.default_transforms(160).unwrap().1,
            TransformConfig::imagenet_eval(160)
        );
    }

    #[test]
    fn class_names_must_match_across_splits() {
        let dir = TempDir::new("open-mismatch");
        write_folder(dir.path(), "train", &["cat", "dog"], 1, 8);
        write_folder(dir.path(), "test", &["cat", "dgo"], 1, 8);
        let err = open(dir.path()).err().unwrap();
        let msg = err.to_string();
        assert!(matches!(err, DataError::ClassMismatch { .. }));
        assert!(
            msg.contains("dgo") && msg.contains("\"dog\"") && msg.contains("test"),
            "{msg}"
        );
    }

    #[test]
    fn unusable_directories_get_clear_messages() {
        let dir = TempDir::new("open-bad");
        let missing = dir.path().join("nowhere");
        let err = open(&missing).err().unwrap();
        assert!(matches!(err, DataError::Missing { .. }));
        assert!(err.to_string().contains("nowhere") && err.to_string().contains("not found"));

        let msg = open(dir.path()).err().unwrap().to_string();
        assert!(
            msg.contains("data_batch_1..5.bin") && msg.contains("train/"),
            "{msg}"
        );

        write_folder(dir.path(), "train", &["a"], 1, 8);
        let msg = open(dir.path()).err().unwrap().to_string();
        assert!(msg.contains("neither test/ nor val/"), "{msg}");
        let msg = open(&dir.path().join("train")).err().unwrap().to_string();
        assert!(msg.contains("pass its parent"), "{msg}");

        let file = dir.path().join("file.txt");
        std::fs::write(&file, "x").unwrap();
        assert!(
            open(&file)
                .err()
                .unwrap()
                .to_string()
                .contains("not a directory")
        );
    }

    #[test]
    fn no_directory_means_the_synthetic_set() {
        let splits = open_or_synthetic(None).unwrap();
        assert_eq!(splits.format, Format::Synthetic);
        assert_eq!(
            splits.default_transforms(224).unwrap().0,
            TransformConfig::synthetic_train()
        );
    }

    /// The real CIFAR-10 JPEG tree, when this checkout has `shared/` beside it.
    #[test]
    fn opens_the_shared_cifar10_jpegs() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/cifar10");
        if !root.is_dir() {
            println!("skipped: {} is absent", root.display());
            return;
        }
        let splits = open(&root).unwrap();
        assert_eq!(splits.format, Format::ImageFolder);
        assert_eq!((splits.train.len(), splits.test.len()), (50_000, 10_000));
        assert_eq!(splits.class_names(), crate::cifar::CIFAR10_CLASSES);
        let sample = splits.test.get(9_999).unwrap();
        assert_eq!(
            (sample.image.width(), sample.image.height(), sample.label),
            (32, 32, 9)
        );
    }
}
