//! Per-sample errors from the loader name the sample's file: a class folder holding an image too
//! small for the transform, opened and loaded the way training does it (`open`, the default
//! transforms, `Loader`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use depthshrink_data::{DataError, Loader, LoaderConfig, Transform, open};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("depthshrink-data-it-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn png(path: &Path, side: u32, shade: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(side, side, image::Rgb([shade, 128, 255 - shade]))
        .save(path)
        .unwrap();
}

/// `root/{train,test}/{a,b}/`: 32×32 PNGs (so the CIFAR transforms are chosen) plus one 1×1
/// PNG in class `b` of `split`, whose path is returned.
fn folder_with_tiny_image(root: &Path, split: &str) -> PathBuf {
    for s in ["train", "test"] {
        for (c, class) in ["a", "b"].iter().enumerate() {
            for k in 0..3 {
                png(
                    &root.join(s).join(class).join(format!("{k:03}.png")),
                    32,
                    (c * 50 + k * 10) as u8,
                );
            }
        }
    }
    let tiny = root.join(split).join("b").join("tiny.png");
    png(&tiny, 1, 7);
    tiny
}

fn first_error(loader: &Loader) -> DataError {
    loader
        .epoch(0)
        .find_map(|batch| batch.err())
        .expect("an epoch over a 1×1 image should fail")
}

#[test]
fn too_small_image_error_names_its_file() {
    let dir = TempDir::new("too-small");
    let tiny = folder_with_tiny_image(&dir.0, "train");
    let splits = open(&dir.0).unwrap();
    let (train_tf, _) = splits.default_transforms(224).unwrap();
    let loader = Loader::new(
        Arc::clone(&splits.train),
        Transform::new(train_tf).unwrap(),
        LoaderConfig::new(4),
    )
    .unwrap();
    let err = first_error(&loader);
    let msg = err.to_string();
    let path = tiny.display().to_string();
    assert_eq!(
        msg,
        format!("{path}: an image of 1×1 is smaller than the 32×32 crop")
    );
    assert!(
        matches!(&err, DataError::Sample { sample, error, .. }
            if *sample == path && matches!(**error, DataError::TooSmall { width: 1, height: 1, size: 32 })),
        "{err}"
    );
    assert_eq!(
        splits.train.describe(splits.train.len() - 1),
        path,
        "tiny.png sorts last"
    );
    // Not a bad file: skip_bad does not hide it.
    let lenient = Loader::new(
        Arc::clone(&splits.train),
        Transform::new(splits.default_transforms(224).unwrap().0).unwrap(),
        LoaderConfig {
            skip_bad: true,
            ..LoaderConfig::new(4)
        },
    )
    .unwrap();
    assert!(first_error(&lenient).to_string().contains(&path));
}

#[test]
fn mixed_sizes_error_names_the_odd_image() {
    let dir = TempDir::new("mixed");
    let tiny = folder_with_tiny_image(&dir.0, "test");
    let splits = open(&dir.0).unwrap();
    let (_, eval_tf) = splits.default_transforms(224).unwrap();
    let config = LoaderConfig {
        shuffle: false,
        ..LoaderConfig::new(16)
    };
    let loader = Loader::new(
        Arc::clone(&splits.test),
        Transform::new(eval_tf).unwrap(),
        config,
    )
    .unwrap();
    let err = first_error(&loader);
    let first = dir.0.join("test").join("a").join("000.png");
    assert_eq!(
        err.to_string(),
        format!(
            "batch 0: {} is 3×1×1 (C×H×W) but {} is 3×32×32; add a resize or crop to the transform",
            tiny.display(),
            first.display()
        )
    );
}
