//! CIFAR-10 "binary version": records of one label byte then 1024 R, 1024 G and 1024 B bytes.

use std::path::{Path, PathBuf};

use crate::dataset::{Dataset, Image, Sample, check_index};
use crate::error::{DataError, Result};

/// Class names in label order, as in the set's `batches.meta.txt`.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// The train split's batch files (10,000 records each).
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// The test split's batch file (10,000 records).
pub const TEST_FILE: &str = "test_batch.bin";

const SIDE: usize = 32;
const PLANE: usize = SIDE * SIDE;
/// Bytes per record: the label and three 32×32 planes.
pub const RECORD_BYTES: usize = 1 + 3 * PLANE;

/// One CIFAR-10 split held in memory as raw records (~150 MB for train), validated on load.
pub struct CifarBinary {
    records: Vec<u8>,
    /// Each batch file and its number of records, in `records` order (for `describe`).
    files: Vec<(PathBuf, usize)>,
    classes: Vec<String>,
}

impl CifarBinary {
    /// Reads and concatenates the given batch files, checking record framing and labels.
    pub fn open(files: &[PathBuf]) -> Result<CifarBinary> {
        let mut records = Vec::new();
        let mut sources = Vec::with_capacity(files.len());
        for path in files {
            let bytes = std::fs::read(path).map_err(|source| DataError::Io {
                path: path.clone(),
                source,
            })?;
            validate(path, &bytes)?;
            records.extend_from_slice(&bytes);
            sources.push((path.clone(), bytes.len() / RECORD_BYTES));
        }
        Ok(CifarBinary {
            records,
            files: sources,
            classes: CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn record(&self, index: usize) -> Result<&[u8]> {
        check_index(index, self.len())?;
        Ok(&self.records[index * RECORD_BYTES..(index + 1) * RECORD_BYTES])
    }
}

/// Rejects a file that is empty, does not hold whole records, or has a label outside 0..=9.
fn validate(path: &Path, bytes: &[u8]) -> Result<()> {
    let whole = bytes.len() / RECORD_BYTES * RECORD_BYTES;
    if bytes.is_empty() || whole != bytes.len() {
        return Err(DataError::TruncatedCifar {
            path: path.to_path_buf(),
            offset: whole as u64,
            available: (bytes.len() - whole) as u64,
            record: RECORD_BYTES as u64,
        });
    }
    for (i, record) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        if record[0] as usize >= CIFAR10_CLASSES.len() {
            return Err(DataError::CifarLabel {
                path: path.to_path_buf(),
                offset: (i * RECORD_BYTES) as u64,
                label: record[0],
            });
        }
    }
    Ok(())
}

impl Dataset for CifarBinary {
    fn len(&self) -> usize {
        self.records.len() / RECORD_BYTES
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let record = self.record(index)?;
        let (r, rest) = record[1..].split_at(PLANE);
        let (g, b) = rest.split_at(PLANE);
        let mut data = Vec::with_capacity(3 * PLANE);
        for i in 0..PLANE {
            data.extend_from_slice(&[r[i], g[i], b[i]]);
        }
        Ok(Sample {
            image: Image::new(SIDE, SIDE, data)?,
            label: record[0] as usize,
        })
    }

    fn label(&self, index: usize) -> Result<usize> {
        Ok(self.record(index)?[0] as usize)
    }

    fn class_names(&self) -> &[String] {
        &self.classes
    }

    /// "FILE record K (byte offset B)": the batch file and the record's place in it, or
    /// "sample INDEX" past the end.
    fn describe(&self, index: usize) -> String {
        let mut k = index;
        for (path, records) in &self.files {
            if k < *records {
                return format!(
                    "{} record {k} (byte offset {})",
                    path.display(),
                    k * RECORD_BYTES
                );
            }
            k -= records;
        }
        format!("sample {index}")
    }
}

/// The directory holding the batch files: `dir` itself or its `cifar-10-batches-bin/`
/// (the archive's own folder name), if either has any of them.
pub(crate) fn find_batches(dir: &Path) -> Option<PathBuf> {
    [dir.to_path_buf(), dir.join("cifar-10-batches-bin")]
        .into_iter()
        .find(|d| {
            TRAIN_FILES
                .iter()
                .chain([&TEST_FILE])
                .any(|f| d.join(f).is_file())
        })
}

/// Opens train (all five `data_batch_N.bin`) and test (`test_batch.bin`) from `dir`, naming any
/// missing file rather than training on part of the set.
pub(crate) fn open_splits(dir: &Path) -> Result<(CifarBinary, CifarBinary)> {
    let missing: Vec<&str> = TRAIN_FILES
        .iter()
        .chain([&TEST_FILE])
        .filter(|f| !dir.join(f).is_file())
        .copied()
        .collect();
    if !missing.is_empty() {
        return Err(DataError::Layout {
            path: dir.to_path_buf(),
            detail: format!(
                "CIFAR-10 binary batches incomplete: missing {}",
                missing.join(", ")
            ),
        });
    }
    let train: Vec<PathBuf> = TRAIN_FILES.iter().map(|f| dir.join(f)).collect();
    Ok((
        CifarBinary::open(&train)?,
        CifarBinary::open(&[dir.join(TEST_FILE)])?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{TempDir, cifar_record, write_cifar};

    #[test]
    fn reads_records_as_hwc_with_labels() {
        let dir = TempDir::new("cifar-read");
        write_cifar(dir.path(), 3, 4);
        let (train, test) = open_splits(dir.path()).unwrap();
        assert_eq!((train.len(), test.len()), (15, 4));
        assert_eq!(train.class_names()[0], "airplane");
        let sample = train.get(13).unwrap();
        assert_eq!(sample.label, 3);
        assert_eq!(train.label(13).unwrap(), 3);
        assert_eq!((sample.image.width(), sample.image.height()), (32, 32));
        // Red pixel (0, y) holds y; everything else the planes' fill values.
        assert_eq!(sample.image.pixel(0, 7), [7, 14, 15]);
        assert_eq!(sample.image.pixel(5, 7), [13, 14, 15]);
        assert!(matches!(
            train.get(15),
            Err(DataError::Index { index: 15, len: 15 })
        ));
    }

    #[test]
    fn truncated_batch_names_file_and_offset() {
        let dir = TempDir::new("cifar-trunc");
        write_cifar(dir.path(), 2, 2);
        let path = dir.path().join("data_batch_3.bin");
        let mut bytes: Vec<u8> = (0..2).flat_map(cifar_record).collect();
        bytes.truncate(RECORD_BYTES + 100);
        std::fs::write(&path, bytes).unwrap();
        let err = open_splits(dir.path()).err().unwrap();
        assert!(matches!(
            err,
            DataError::TruncatedCifar {
                offset: 3073,
                available: 100,
                ..
            }
        ));
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("byte offset 3073"), "{msg}");
    }

    #[test]
    fn label_out_of_range_is_reported_with_offset() {
        let dir = TempDir::new("cifar-label");
        write_cifar(dir.path(), 2, 2);
        let mut bytes: Vec<u8> = (0..2).flat_map(cifar_record).collect();
        bytes[RECORD_BYTES] = 10;
        std::fs::write(dir.path().join(TEST_FILE), bytes).unwrap();
        let err = open_splits(dir.path()).err().unwrap();
        assert!(
            matches!(
                err,
                DataError::CifarLabel {
                    offset: 3073,
                    label: 10,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn describe_names_batch_file_record_and_offset() {
        let dir = TempDir::new("cifar-describe");
        write_cifar(dir.path(), 3, 4);
        let (train, test) = open_splits(dir.path()).unwrap();
        let file = |name: &str| dir.path().join(name).display().to_string();
        assert_eq!(
            train.describe(0),
            format!("{} record 0 (byte offset 0)", file("data_batch_1.bin"))
        );
        // Sample 7 is the second record of the third file (three records per file).
        assert_eq!(
            train.describe(7),
            format!("{} record 1 (byte offset 3073)", file("data_batch_3.bin"))
        );
        assert_eq!(
            train.describe(14),
            format!("{} record 2 (byte offset 6146)", file("data_batch_5.bin"))
        );
        assert_eq!(
            test.describe(3),
            format!("{} record 3 (byte offset 9219)", file(TEST_FILE))
        );
        assert_eq!(train.describe(15), "sample 15");
        assert_eq!(test.describe(usize::MAX), format!("sample {}", usize::MAX));
    }

    #[test]
    fn missing_batch_files_are_listed() {
        let dir = TempDir::new("cifar-missing");
        write_cifar(dir.path(), 1, 1);
        std::fs::remove_file(dir.path().join("data_batch_4.bin")).unwrap();
        let msg = open_splits(dir.path()).err().unwrap().to_string();
        assert!(msg.contains("data_batch_4.bin"), "{msg}");
    }
}
