//! Test fixtures: unique temp directories and tiny data sets written with the `image` crate.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::cifar::{RECORD_BYTES, TEST_FILE, TRAIN_FILES};
use crate::dataset::{Dataset, Image, Sample, check_index};
use crate::error::{DataError, Result};

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("depthshrink-data-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The CIFAR record of sample `i`: label `i % 10`, planes filled with `i`, `i + 1`, `i + 2`
/// except pixel (x, y) of the red plane, which is `x + y`.
pub fn cifar_record(i: usize) -> Vec<u8> {
    let mut record = vec![(i % 10) as u8];
    for c in 0..3 {
        record.extend((0..1024).map(|p| {
            if c == 0 && p % 32 == 0 {
                (p / 32) as u8
            } else {
                (i + c) as u8
            }
        }));
    }
    assert_eq!(record.len(), RECORD_BYTES);
    record
}

/// Five train batches of `per_file` records and a test batch of `test` records.
pub fn write_cifar(dir: &Path, per_file: usize, test: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for (f, name) in TRAIN_FILES.iter().enumerate() {
        let bytes: Vec<u8> = (0..per_file)
            .flat_map(|k| cifar_record(f * per_file + k))
            .collect();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let bytes: Vec<u8> = (0..test).flat_map(cifar_record).collect();
    std::fs::write(dir.join(TEST_FILE), bytes).unwrap();
}

/// A solid-colour image whose colour encodes `seed`.
pub fn solid(width: usize, height: usize, seed: usize) -> image::RgbImage {
    let colour = [
        (seed * 37) as u8,
        (seed * 11 + 5) as u8,
        (seed * 3 + 200) as u8,
    ];
    image::RgbImage::from_pixel(width as u32, height as u32, image::Rgb(colour))
}

/// `split/<class>/<k>.png` (even k) or `.jpg` (odd k), `per_class` images per class.
pub fn write_folder(root: &Path, split: &str, classes: &[&str], per_class: usize, size: usize) {
    for (c, class) in classes.iter().enumerate() {
        let dir = root.join(split).join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for k in 0..per_class {
            let ext = if k % 2 == 0 { "png" } else { "jpg" };
            solid(size, size, c * 100 + k)
                .save(dir.join(format!("{k:03}.{ext}")))
                .unwrap();
        }
    }
}

/// An in-memory data set for loader tests: image `i` is 4×4 with every byte `i % 256`, label
/// `i % classes`. Listed indices fail with a decode error or panic; every `get` is counted.
pub struct Fake {
    pub len: usize,
    pub classes: Vec<String>,
    pub bad: Vec<usize>,
    pub panics: Vec<usize>,
    pub wrong_label: Vec<usize>,
    pub gets: AtomicUsize,
    /// Index whose image is 5×4 instead of 4×4.
    pub odd_size: Option<usize>,
}

impl Fake {
    pub fn new(len: usize) -> Fake {
        Fake {
            len,
            classes: (0..3).map(|c| format!("c{c}")).collect(),
            bad: vec![],
            panics: vec![],
            wrong_label: vec![],
            gets: AtomicUsize::new(0),
            odd_size: None,
        }
    }
}

impl Dataset for Fake {
    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, index: usize) -> Result<Sample> {
        check_index(index, self.len)?;
        self.gets.fetch_add(1, Ordering::SeqCst);
        if self.bad.contains(&index) {
            return Err(DataError::Decode {
                path: PathBuf::from(format!("fake/{index}.jpg")),
                detail: "corrupt".into(),
            });
        }
        assert!(!self.panics.contains(&index), "fake panic at {index}");
        let width = if self.odd_size == Some(index) { 5 } else { 4 };
        let label = if self.wrong_label.contains(&index) {
            self.classes.len()
        } else {
            index % self.classes.len()
        };
        Ok(Sample {
            image: Image::new(width, 4, vec![(index % 256) as u8; width * 4 * 3])?,
            label,
        })
    }

    fn label(&self, index: usize) -> Result<usize> {
        check_index(index, self.len)?;
        Ok(index % self.classes.len())
    }

    fn class_names(&self) -> &[String] {
        &self.classes
    }
}
