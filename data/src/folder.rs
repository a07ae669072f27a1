//! Class-folder data sets: `<split>/<class>/<image>.{jpg,jpeg,png}`, decoded lazily.

use std::path::{Path, PathBuf};

use crate::dataset::{Dataset, Image, Sample, check_index};
use crate::error::{DataError, Result};

/// One split of a class-folder tree. Only paths are kept; images decode on `get`, so any image
/// size and any number of images work. Class names are the sorted sub-folder names (hidden
/// folders skipped); files are sorted within a class, so indices are stable across runs.
/// Files with other extensions are ignored, and class folders are not searched recursively.
pub struct ImageFolder {
    files: Vec<PathBuf>,
    labels: Vec<usize>,
    classes: Vec<String>,
}

impl ImageFolder {
    /// Lists the class folders and image files under `split_dir` (nothing is decoded); errors
    /// when there are no class folders or one is empty.
    pub fn open(split_dir: &Path) -> Result<ImageFolder> {
        let classes = class_dirs(split_dir)?;
        if classes.is_empty() {
            return Err(DataError::Layout {
                path: split_dir.to_path_buf(),
                detail: "no class folders (expected one sub-folder of images per class)".into(),
            });
        }
        let mut files = Vec::new();
        let mut labels = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let class_dir = split_dir.join(class);
            let images = image_files(&class_dir)?;
            if images.is_empty() {
                return Err(DataError::EmptyClass { path: class_dir });
            }
            labels.extend(std::iter::repeat_n(label, images.len()));
            files.extend(images);
        }
        Ok(ImageFolder {
            files,
            labels,
            classes,
        })
    }

    /// The file behind sample `index`.
    pub fn path(&self, index: usize) -> Option<&Path> {
        self.files.get(index).map(PathBuf::as_path)
    }
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        check_index(index, self.len())?;
        Ok(Sample {
            image: decode_file(&self.files[index])?,
            label: self.labels[index],
        })
    }

    fn label(&self, index: usize) -> Result<usize> {
        check_index(index, self.len())?;
        Ok(self.labels[index])
    }

    fn class_names(&self) -> &[String] {
        &self.classes
    }

    /// The image's path (as in its read and decode errors), or "sample INDEX" past the end.
    fn describe(&self, index: usize) -> String {
        match self.path(index) {
            Some(path) => path.display().to_string(),
            None => format!("sample {index}"),
        }
    }
}

/// Reads and decodes one JPEG or PNG (format from its content, not its name) to RGB.
pub fn decode_file(path: &Path) -> Result<Image> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let decoded = image::load_from_memory(&bytes).map_err(|e| DataError::Decode {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let rgb = decoded.into_rgb8();
    let (width, height) = (rgb.width() as usize, rgb.height() as usize);
    Image::new(width, height, rgb.into_raw())
}

/// Sorted names of the non-hidden sub-directories of `dir`.
pub(crate) fn class_dirs(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in read_dir(dir)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && file_type(&entry).is_some_and(|t| t.is_dir()) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    // Sorting bare names is much cheaper than comparing whole paths component by component.
    let mut names: Vec<std::ffi::OsString> = read_dir(dir)?
        .into_iter()
        .filter(|entry| {
            let path = entry.path();
            let ext = path.extension().and_then(|e| e.to_str());
            ext.is_some_and(|e| ["jpg", "jpeg", "png"].contains(&e.to_ascii_lowercase().as_str()))
                && file_type(entry).is_some_and(|t| t.is_file())
        })
        .map(|entry| entry.file_name())
        .collect();
    names.sort();
    Ok(names.into_iter().map(|name| dir.join(name)).collect())
}

/// The entry's type, following symlinks, without a `stat` call for plain entries (listing
/// ImageNet's 1.28 M files should not cost 1.28 M system calls).
fn file_type(entry: &std::fs::DirEntry) -> Option<std::fs::FileType> {
    let t = entry.file_type().ok()?;
    if t.is_symlink() {
        std::fs::metadata(entry.path()).ok().map(|m| m.file_type())
    } else {
        Some(t)
    }
}

fn read_dir(dir: &Path) -> Result<Vec<std::fs::DirEntry>> {
    let io = |source| DataError::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::read_dir(dir)
        .map_err(io)?
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{TempDir, solid, write_folder};

    #[test]
    fn lists_sorted_classes_and_decodes_png_and_jpeg() {
        let dir = TempDir::new("folder-read");
        write_folder(dir.path(), "train", &["zebra", "ant"], 3, 8);
        std::fs::write(dir.path().join("train/ant/notes.txt"), "not an image").unwrap();
        std::fs::create_dir_all(dir.path().join("train/.hidden")).unwrap();
        let ds = ImageFolder::open(&dir.path().join("train")).unwrap();
        assert_eq!(ds.class_names(), ["ant", "zebra"]);
        assert_eq!(ds.len(), 6);
        assert_eq!(ds.label(0).unwrap(), 0);
        assert_eq!(ds.label(5).unwrap(), 1);
        assert!(ds.path(3).unwrap().ends_with("zebra/000.png"));
        assert_eq!(ds.describe(3), ds.path(3).unwrap().display().to_string());
        assert_eq!(ds.describe(6), "sample 6");
        // PNG is lossless: exact colour back ("ant" was written as class 1 → seed 100 + k).
        let png = ds.get(2).unwrap();
        assert_eq!(png.image.pixel(3, 3), solid(1, 1, 102).get_pixel(0, 0).0);
        assert_eq!((png.image.width(), png.image.height()), (8, 8));
        // JPEG is lossy: close to the colour.
        let jpg = ds.get(1).unwrap();
        let want = solid(1, 1, 101).get_pixel(0, 0).0;
        for (a, b) in jpg.image.pixel(4, 4).iter().zip(want) {
            assert!((*a as i32 - b as i32).abs() <= 6, "{a} vs {b}");
        }
    }

    #[test]
    fn corrupt_and_truncated_images_name_their_file() {
        let dir = TempDir::new("folder-bad");
        write_folder(dir.path(), "train", &["a"], 2, 16);
        let garbage = dir.path().join("train/a/garbage.jpg");
        std::fs::write(&garbage, b"definitely not a jpeg").unwrap();
        let png = std::fs::read(dir.path().join("train/a/000.png")).unwrap();
        let cut_png = dir.path().join("train/a/cut.png");
        std::fs::write(&cut_png, &png[..png.len() / 2]).unwrap();
        let jpg = std::fs::read(dir.path().join("train/a/001.jpg")).unwrap();
        let cut_jpg = dir.path().join("train/a/cut.jpg");
        std::fs::write(&cut_jpg, &jpg[..jpg.len() / 2]).unwrap();
        for path in [garbage, cut_png, cut_jpg] {
            let err = decode_file(&path).err().unwrap();
            assert!(matches!(err, DataError::Decode { .. }), "{err}");
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{err}"
            );
        }
        let missing = dir.path().join("train/a/nope.png");
        let err = decode_file(&missing).err().unwrap();
        assert!(err.to_string().contains("nope.png"), "{err}");
    }

    #[test]
    fn empty_class_folder_is_an_error() {
        let dir = TempDir::new("folder-empty");
        write_folder(dir.path(), "train", &["a"], 1, 4);
        std::fs::create_dir_all(dir.path().join("train/b")).unwrap();
        let err = ImageFolder::open(&dir.path().join("train")).err().unwrap();
        assert!(matches!(&err, DataError::EmptyClass { path } if path.ends_with("train/b")));
        assert!(err.to_string().contains("no JPEG or PNG"), "{err}");
    }
}
