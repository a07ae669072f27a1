//! Checkpoints as safetensors files: named tensors plus one JSON metadata document.
//!
//! Layout on disk: every tensor under its module name (`features.1.conv.0.0.weight`, optimiser
//! state under whatever names the trainer chooses, e.g. `optim.…`), and safetensors'
//! `__metadata__` string map holding `format` = `pt` (the tensors use PyTorch's layout, which
//! Hugging Face tooling checks for) and, unless it is `null`, `depthshrink` = the trainer's
//! metadata serialised as one JSON document (architecture, config, epoch, RNG state, …).
//!
//! Writes are atomic (temp file in the same directory, fsync, rename), so a crash or a full disk
//! never leaves a half-written file under the final name. Loading accepts files written by
//! PyTorch (`safetensors.torch.save_file(model.state_dict(), …)`), and
//! [`export_torchvision`] writes files that torchvision loads with `strict=True`.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use depthshrink_tensor::Tensor;
use half::{bf16, f16};
use safetensors::{Dtype, SafeTensorError, SafeTensors, View};
use serde_json::Value;

use crate::module::{Entry, Module, state_dict};

/// Key of the trainer's JSON document in safetensors' `__metadata__` map.
pub const METADATA_KEY: &str = "depthshrink";

/// Last name component of torchvision's BatchNorm step counters: integer tensors we don't keep.
pub const COUNTER_NAME: &str = "num_batches_tracked";

/// Element type of the floating-point tensors on disk. Loading converts every type back to f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StorageDtype {
    /// Exact; the default for training checkpoints.
    #[default]
    F32,
    /// Half the size, for shipping; values beyond ±65504 cannot be stored (saving errors).
    F16,
    /// Half the size with f32's range but only 8 mantissa bits.
    BF16,
}

/// Everything that can go wrong reading or writing a checkpoint; every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file could not be read.
    #[error("cannot read checkpoint {path}: {source}")]
    Read {
        /// The checkpoint file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file (or its temporary sibling) could not be written, synced or renamed.
    #[error("cannot write checkpoint {path}: {source}")]
    Write {
        /// The checkpoint file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The bytes are not a safetensors file.
    #[error("{path} is not a valid safetensors file (corrupt or truncated?): {source}")]
    Format {
        /// The checkpoint file.
        path: PathBuf,
        /// The parser's error.
        source: SafeTensorError,
    },
    /// safetensors refused to serialise the tensors.
    #[error("cannot encode checkpoint {path}: {source}")]
    Encode {
        /// The checkpoint file.
        path: PathBuf,
        /// The serialiser's error.
        source: SafeTensorError,
    },
    /// The [`METADATA_KEY`] entry is not valid JSON.
    #[error(
        "checkpoint {path}: metadata `{}` is not valid JSON: {source}",
        METADATA_KEY
    )]
    Metadata {
        /// The checkpoint file.
        path: PathBuf,
        /// The JSON parser's error.
        source: serde_json::Error,
    },
    /// A tensor's element type is neither a float type nor a BatchNorm step counter.
    #[error(
        "checkpoint {path}: tensor `{name}` has unsupported dtype {dtype:?} (F32, F16 and BF16 \
         are supported; I64/I32 only for `{}` counters)",
        COUNTER_NAME
    )]
    UnsupportedDtype {
        /// The checkpoint file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The element type found.
        dtype: Dtype,
    },
    /// The metadata does not describe a network that can be built.
    #[error("checkpoint {path}: {detail}")]
    Architecture {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong, as a sentence fragment.
        detail: String,
    },
    /// A tensor holds a non-finite value, or a running variance is negative.
    #[error("checkpoint {path}: tensor `{name}` {detail}")]
    BadValue {
        /// The checkpoint file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// Which value, and where.
        detail: String,
    },
    /// Saving was asked to write two tensors under one name.
    #[error("checkpoint {path}: tensor name `{name}` appears twice")]
    DuplicateName {
        /// The checkpoint file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
    },
    /// A tensor has values the storage type cannot represent (e.g. beyond ±65504 in f16).
    #[error("checkpoint {path}: tensor `{name}` has values outside the {dtype:?} range")]
    OutOfRange {
        /// The checkpoint file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The storage type asked for.
        dtype: StorageDtype,
    },
    /// The file's tensors do not match the module's.
    #[error(
        "checkpoint {path} does not match the model, {} problem(s):{}",
        .problems.len(),
        .problems.iter().map(|p| format!("\n  {p}")).collect::<String>()
    )]
    Mismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// Every disagreement, in module order, then the unexpected file tensors.
        problems: Vec<Mismatch>,
    },
}

/// One disagreement between a checkpoint and a module, by tensor name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// The module has this tensor, the file does not.
    Missing(String),
    /// The file has this tensor, the module does not (and no option allows it).
    Unexpected(String),
    /// Both have it, with different shapes.
    Shape {
        /// The tensor's name.
        name: String,
        /// Its shape in the file.
        file: Vec<usize>,
        /// Its shape in the module.
        model: Vec<usize>,
    },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Missing(name) => write!(f, "missing in file: {name}"),
            Mismatch::Unexpected(name) => write!(f, "unexpected in file: {name}"),
            Mismatch::Shape { name, file, model } => {
                write!(f, "shape mismatch: {name}: file {file:?}, model {model:?}")
            }
        }
    }
}

/// A loaded checkpoint: every tensor as f32, and the trainer's metadata.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// Where it was read from, for error messages.
    pub path: PathBuf,
    /// F16/BF16 are widened to f32. Integer `num_batches_tracked` counters (from PyTorch files)
    /// are kept as f32 scalars (exact below 2^24); [`LoadOptions::default`] ignores them.
    pub tensors: BTreeMap<String, Tensor>,
    /// The `depthshrink` metadata document, or `Null` when the file has none.
    pub metadata: Value,
}

/// What [`load_into`] tolerates.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Names skipped on both sides: a pattern matches a name equal to it or ending in
    /// `.pattern`. The default ignores torchvision's `num_batches_tracked`.
    pub ignore: Vec<String>,
    /// File tensors under these prefixes are not the model's (e.g. `optim.` for optimiser
    /// state) and are skipped instead of reported as unexpected.
    pub extra_prefixes: Vec<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            ignore: vec![COUNTER_NAME.to_string()],
            extra_prefixes: Vec::new(),
        }
    }
}

impl LoadOptions {
    fn ignores(&self, name: &str) -> bool {
        self.ignore.iter().any(|pat| {
            name == pat
                || name
                    .strip_suffix(pat.as_str())
                    .is_some_and(|head| head.ends_with('.'))
        })
    }

    fn is_extra(&self, name: &str) -> bool {
        self.extra_prefixes.iter().any(|p| name.starts_with(p))
    }
}

/// What [`load_into`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadReport {
    /// Number of module tensors overwritten.
    pub loaded: usize,
    /// File tensors left unused because of [`LoadOptions`], sorted by name.
    pub skipped: Vec<String>,
}

/// Saves `tensors` and `metadata` atomically with f32 storage.
pub fn save(
    path: impl AsRef<Path>,
    tensors: &[(String, Tensor)],
    metadata: &Value,
) -> Result<(), CheckpointError> {
    save_as(path, tensors, metadata, StorageDtype::F32)
}

/// Saves `tensors` and `metadata` atomically, storing every tensor as `dtype`.
pub fn save_as(
    path: impl AsRef<Path>,
    tensors: &[(String, Tensor)],
    metadata: &Value,
    dtype: StorageDtype,
) -> Result<(), CheckpointError> {
    let path = path.as_ref();
    let stored = tensors
        .iter()
        .map(|(name, t)| (name.as_str(), Stored::Float(t, dtype)))
        .collect();
    write(path, stored, metadata)
}

/// Writes the module's state as torchvision's `state_dict` has it: our tensors plus a zero I64
/// `num_batches_tracked` scalar beside every BatchNorm (every `.running_mean`), so the file has
/// exactly torchvision's keys and dtypes and `load_state_dict(safetensors.torch.load_file(path))`
/// succeeds with `strict=True`.
pub fn export_torchvision(
    path: impl AsRef<Path>,
    module: &mut dyn Module,
) -> Result<(), CheckpointError> {
    let state = state_dict(module);
    let counters: Vec<String> = state
        .iter()
        .filter_map(|(name, _)| name.strip_suffix(".running_mean"))
        .map(|bn| format!("{bn}.{COUNTER_NAME}"))
        .collect();
    let stored = state
        .iter()
        .map(|(name, t)| (name.as_str(), Stored::Float(t, StorageDtype::F32)))
        .chain(counters.iter().map(|name| (name.as_str(), Stored::Counter)))
        .collect();
    write(path.as_ref(), stored, &Value::Null)
}

/// Reads a checkpoint, converting every tensor to f32.
pub fn load(path: impl AsRef<Path>) -> Result<Checkpoint, CheckpointError> {
    let path = path.as_ref();
    let bytes = fs::read(path).map_err(|source| CheckpointError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let format = |source| CheckpointError::Format {
        path: path.to_path_buf(),
        source,
    };
    // `deserialize` keeps the tensor index but drops `__metadata__`, hence the second parse.
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(format)?;
    let file = SafeTensors::deserialize(&bytes).map_err(format)?;

    let metadata = match header.metadata().as_ref().and_then(|m| m.get(METADATA_KEY)) {
        Some(json) => serde_json::from_str(json).map_err(|source| CheckpointError::Metadata {
            path: path.to_path_buf(),
            source,
        })?,
        None => Value::Null,
    };

    let mut tensors = BTreeMap::new();
    for (name, view) in file.iter() {
        let tensor = decode(name, &view).ok_or_else(|| CheckpointError::UnsupportedDtype {
            path: path.to_path_buf(),
            name: name.to_string(),
            dtype: view.dtype(),
        })?;
        tensors.insert(name.to_string(), tensor);
    }
    Ok(Checkpoint {
        path: path.to_path_buf(),
        tensors,
        metadata,
    })
}

/// Copies the checkpoint's tensors into `module`, by name.
///
/// Nothing is written unless every name and shape matches; otherwise one
/// [`CheckpointError::Mismatch`] lists every problem.
pub fn load_into(
    module: &mut dyn Module,
    ckpt: &Checkpoint,
    opts: &LoadOptions,
) -> Result<LoadReport, CheckpointError> {
    let mut problems = Vec::new();
    let mut wanted = HashSet::new();
    module.visit("", &mut |name, entry| {
        if opts.ignores(name) {
            return;
        }
        let model = match entry {
            Entry::Param(p) => p.value.shape().to_vec(),
            Entry::Buffer(b) => b.shape().to_vec(),
        };
        match ckpt.tensors.get(name) {
            None => problems.push(Mismatch::Missing(name.to_string())),
            Some(t) if t.shape() != model => problems.push(Mismatch::Shape {
                name: name.to_string(),
                file: t.shape().to_vec(),
                model,
            }),
            Some(_) => {}
        }
        wanted.insert(name.to_string());
    });

    let mut skipped = Vec::new();
    for name in ckpt.tensors.keys().filter(|n| !wanted.contains(*n)) {
        if opts.ignores(name) || opts.is_extra(name) {
            skipped.push(name.clone());
        } else {
            problems.push(Mismatch::Unexpected(name.clone()));
        }
    }
    if !problems.is_empty() {
        return Err(CheckpointError::Mismatch {
            path: ckpt.path.clone(),
            problems,
        });
    }

    // A NaN weight or a negative running variance loads without complaint and then poisons
    // every output (ReLU6's clamp even turns NaN into finite logits), so refuse them by name.
    for (name, t) in ckpt.tensors.iter().filter(|(n, _)| wanted.contains(*n)) {
        if let Some(detail) = bad_values(name, t) {
            return Err(CheckpointError::BadValue {
                path: ckpt.path.clone(),
                name: name.clone(),
                detail,
            });
        }
    }

    let mut loaded = 0;
    module.visit("", &mut |name, entry| {
        if wanted.contains(name) {
            let t = &ckpt.tensors[name];
            match entry {
                Entry::Param(p) => p.value = t.clone(),
                Entry::Buffer(b) => *b = t.clone(),
            }
            loaded += 1;
        }
    });
    Ok(LoadReport { loaded, skipped })
}

/// What is wrong with a network tensor's values: a non-finite value, or a negative BatchNorm
/// running variance; `None` when they are usable.
fn bad_values(name: &str, t: &Tensor) -> Option<String> {
    let data = t.data();
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Some(format!(
            "holds {} at flat index {i} of {} (a diverged or damaged network)",
            data[i],
            data.len()
        ));
    }
    if name.ends_with(".running_var")
        && let Some(i) = data.iter().position(|&v| v < 0.0)
    {
        return Some(format!(
            "holds the negative running variance {} at index {i} (a variance is never negative)",
            data[i]
        ));
    }
    None
}

/// One tensor as it goes to disk, encoded only when safetensors asks for its bytes.
enum Stored<'a> {
    Float(&'a Tensor, StorageDtype),
    /// torchvision's `num_batches_tracked`: an I64 scalar, written as 0.
    Counter,
}

impl View for Stored<'_> {
    fn dtype(&self) -> Dtype {
        match self {
            Stored::Float(_, StorageDtype::F32) => Dtype::F32,
            Stored::Float(_, StorageDtype::F16) => Dtype::F16,
            Stored::Float(_, StorageDtype::BF16) => Dtype::BF16,
            Stored::Counter => Dtype::I64,
        }
    }

    fn shape(&self) -> &[usize] {
        match self {
            Stored::Float(t, _) => t.shape(),
            Stored::Counter => &[],
        }
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let bytes = match self {
            Stored::Float(t, StorageDtype::F32) => {
                t.data().iter().flat_map(|v| v.to_le_bytes()).collect()
            }
            Stored::Float(t, StorageDtype::F16) => t
                .data()
                .iter()
                .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                .collect(),
            Stored::Float(t, StorageDtype::BF16) => t
                .data()
                .iter()
                .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                .collect(),
            Stored::Counter => 0i64.to_le_bytes().to_vec(),
        };
        Cow::Owned(bytes)
    }

    fn data_len(&self) -> usize {
        let numel = match self {
            Stored::Float(t, _) => t.numel(),
            Stored::Counter => 1,
        };
        numel * self.dtype().bitsize() / 8
    }
}

impl Stored<'_> {
    /// False when narrowing to f16/bf16 would turn a finite value into an infinity.
    fn in_range(&self) -> bool {
        match self {
            Stored::Float(t, StorageDtype::F16) => t
                .data()
                .iter()
                .all(|&v| !v.is_finite() || f16::from_f32(v).is_finite()),
            Stored::Float(t, StorageDtype::BF16) => t
                .data()
                .iter()
                .all(|&v| !v.is_finite() || bf16::from_f32(v).is_finite()),
            Stored::Float(_, StorageDtype::F32) | Stored::Counter => true,
        }
    }
}

/// The serialised file with its JSON header's keys sorted: the crate writes the `__metadata__`
/// map in `HashMap` order, which changes from run to run, and the same checkpoint should always
/// be the same bytes. Same content, so the same length; the padding stays spaces.
fn sorted_header(mut bytes: Vec<u8>) -> Vec<u8> {
    let len = u64::from_le_bytes(bytes[..8].try_into().expect("8-byte length prefix")) as usize;
    let header = &mut bytes[8..8 + len];
    let value: Value = serde_json::from_slice(header).expect("safetensors writes valid JSON");
    // serde_json's map is a BTreeMap (no `preserve_order`): keys come out sorted.
    let sorted = value.to_string();
    assert!(sorted.len() <= len, "re-serialised header grew");
    header[..sorted.len()].copy_from_slice(sorted.as_bytes());
    header[sorted.len()..].fill(b' ');
    bytes
}

/// Validates, serialises and atomically writes one file.
fn write(
    path: &Path,
    stored: Vec<(&str, Stored<'_>)>,
    metadata: &Value,
) -> Result<(), CheckpointError> {
    let mut names = HashSet::new();
    for (name, t) in &stored {
        if !names.insert(*name) {
            return Err(CheckpointError::DuplicateName {
                path: path.to_path_buf(),
                name: name.to_string(),
            });
        }
        match t {
            Stored::Float(_, dtype) if !t.in_range() => {
                return Err(CheckpointError::OutOfRange {
                    path: path.to_path_buf(),
                    name: name.to_string(),
                    dtype: *dtype,
                });
            }
            _ => {}
        }
    }
    let mut info = HashMap::from([("format".to_string(), "pt".to_string())]);
    if !metadata.is_null() {
        info.insert(METADATA_KEY.to_string(), metadata.to_string());
    }
    let bytes =
        safetensors::serialize(stored, Some(info)).map_err(|source| CheckpointError::Encode {
            path: path.to_path_buf(),
            source,
        })?;
    write_atomic(path, &sorted_header(bytes)).map_err(|source| CheckpointError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Distinguishes temp files of concurrent saves within one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Removes the temp file on every exit (error or panic) before it was renamed into place.
struct TempFile {
    path: PathBuf,
    renamed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Writes `bytes` to a sibling temp file, fsyncs it, and renames it over `path`: readers see
/// either the old file or the complete new one, never a prefix.
///
/// A destination that exists and is not a regular file (a symbolic link, a directory, a device)
/// is refused: the rename would replace it with a regular file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Ok(meta) = fs::symlink_metadata(path)
        && !meta.file_type().is_file()
    {
        let what = if meta.file_type().is_symlink() {
            "a symbolic link"
        } else if meta.is_dir() {
            "a directory"
        } else {
            "a device or other special file"
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("it exists and is {what}, not a regular file: refusing to replace it"),
        ));
    }
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path does not name a file"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let temp_path = dir.join(temp_name);

    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp_path)?;
    let mut temp = TempFile {
        path: temp_path,
        renamed: false,
    };
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temp.path, path)?;
    temp.renamed = true;
    // Persist the rename itself. Best effort: some filesystems refuse fsync on a directory, and
    // the file's contents are already durable.
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Converts one stored tensor to f32, or `None` for a dtype we don't accept under this name.
fn decode(name: &str, view: &safetensors::tensor::TensorView<'_>) -> Option<Tensor> {
    let bytes = view.data();
    let values: Vec<f32> = match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(le(b)))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes(le(b)).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes(le(b)).to_f32())
            .collect(),
        Dtype::I64 if is_counter(name) => bytes
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(le(b)) as f32)
            .collect(),
        Dtype::I32 if is_counter(name) => bytes
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes(le(b)) as f32)
            .collect(),
        _ => return None,
    };
    Some(
        Tensor::from_vec(view.shape(), values)
            .expect("safetensors checked the byte count against the shape"),
    )
}

fn is_counter(name: &str) -> bool {
    name.rsplit('.').next() == Some(COUNTER_NAME)
}

/// A chunk from `chunks_exact(N)` as an array.
fn le<const N: usize>(chunk: &[u8]) -> [u8; N] {
    chunk.try_into().expect("chunks_exact yields N bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::ArchConfig;
    use crate::module::{Param, join};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use serde_json::json;

    /// A scratch directory under the system temp dir, removed when the test ends.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!(
                "depthshrink-checkpoint-{}-{tag}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn file(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }

        /// Sorted names of the directory's entries, temp files included.
        fn entries(&self) -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(&self.0)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    enum Slot {
        Param(Param),
        Buffer(Tensor),
    }

    /// A module given by its flat state, standing in for the real networks.
    struct Flat(Vec<(String, Slot)>);

    impl Module for Flat {
        fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, Entry<'_>)) {
            for (name, slot) in &mut self.0 {
                let name = join(prefix, name);
                match slot {
                    Slot::Param(p) => f(&name, Entry::Param(p)),
                    Slot::Buffer(b) => f(&name, Entry::Buffer(b)),
                }
            }
        }
    }

    impl Flat {
        /// BN running statistics become buffers, everything else parameters.
        fn from_state<'a>(state: impl IntoIterator<Item = (&'a String, &'a Tensor)>) -> Flat {
            Flat(
                state
                    .into_iter()
                    .map(|(name, t)| {
                        let slot =
                            if name.ends_with(".running_mean") || name.ends_with(".running_var") {
                                Slot::Buffer(t.clone())
                            } else {
                                Slot::Param(Param::new(t.clone(), true))
                            };
                        (name.clone(), slot)
                    })
                    .collect(),
            )
        }
    }

    fn random(rng: &mut ChaCha8Rng, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec(shape, (0..n).map(|_| rng.random_range(-2.0..2.0)).collect()).unwrap()
    }

    /// Stem conv + BN, the first block's depthwise conv + BN, and the classifier, named as in
    /// torchvision's `mobilenet_v2`.
    fn tiny(seed: u64) -> Flat {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let shapes: [(&str, &[usize]); 12] = [
            ("features.0.0.weight", &[4, 3, 3, 3]),
            ("features.0.1.weight", &[4]),
            ("features.0.1.bias", &[4]),
            ("features.0.1.running_mean", &[4]),
            ("features.0.1.running_var", &[4]),
            ("features.1.conv.0.0.weight", &[4, 1, 3, 3]),
            ("features.1.conv.0.1.weight", &[4]),
            ("features.1.conv.0.1.bias", &[4]),
            ("features.1.conv.0.1.running_mean", &[4]),
            ("features.1.conv.0.1.running_var", &[4]),
            ("classifier.1.weight", &[10, 4]),
            ("classifier.1.bias", &[10]),
        ];
        let mut state: Vec<(String, Tensor)> = shapes
            .iter()
            .map(|(name, shape)| (name.to_string(), random(&mut rng, shape)))
            .collect();
        // Variances are never negative (loading refuses them).
        for (name, t) in &mut state {
            if name.ends_with(".running_var") {
                t.data_mut().iter_mut().for_each(|v| *v = v.abs());
            }
        }
        Flat::from_state(state.iter().map(|(n, t)| (n, t)))
    }

    fn metadata() -> Value {
        json!({
            "arch": ArchConfig::mobilenet_v2(0.5, 10, true),
            "epoch": 7,
            "rng": [u64::MAX, 3],
            "config": {"lr": 0.05, "schedule": "cosine"},
        })
    }

    #[test]
    fn round_trip_in_every_storage_dtype() {
        let dir = Scratch::new("round-trip");
        let state = state_dict(&mut tiny(1));
        let numel: usize = state.iter().map(|(_, t)| t.numel()).sum();
        for (dtype, narrow) in [
            (StorageDtype::F32, (|v| v) as fn(f32) -> f32),
            (StorageDtype::F16, |v| f16::from_f32(v).to_f32()),
            (StorageDtype::BF16, |v| bf16::from_f32(v).to_f32()),
        ] {
            let path = dir.file(&format!("{dtype:?}.safetensors"));
            save_as(&path, &state, &metadata(), dtype).unwrap();
            let ckpt = load(&path).unwrap();
            assert_eq!(ckpt.path, path);
            assert_eq!(ckpt.metadata, metadata());
            let arch: ArchConfig = serde_json::from_value(ckpt.metadata["arch"].clone()).unwrap();
            assert_eq!(arch, ArchConfig::mobilenet_v2(0.5, 10, true));
            assert_eq!(ckpt.tensors.len(), state.len());
            for (name, t) in &state {
                let got = &ckpt.tensors[name];
                assert_eq!(got.shape(), t.shape(), "{name}");
                let want: Vec<f32> = t.data().iter().map(|&v| narrow(v)).collect();
                assert_eq!(got.data(), want, "{name} stored as {dtype:?}");
            }
            let bytes = fs::read(&path).unwrap();
            let data_len = SafeTensors::read_metadata(&bytes).unwrap().1.data_len();
            let width = if dtype == StorageDtype::F32 { 4 } else { 2 };
            assert_eq!(data_len, numel * width, "{dtype:?}");
        }
    }

    /// The same checkpoint is the same bytes every time (the safetensors crate alone writes its
    /// two metadata keys in a random order), and the sorted header still loads.
    #[test]
    fn saving_twice_gives_the_same_bytes() {
        let dir = Scratch::new("same-bytes");
        let state = state_dict(&mut tiny(2));
        let path = dir.file("a.safetensors");
        let mut files = (0..16).map(|_| {
            save(&path, &state, &metadata()).unwrap();
            fs::read(&path).unwrap()
        });
        let first = files.next().unwrap();
        assert!(files.all(|f| f == first));
        assert_eq!(load(&path).unwrap().metadata, metadata());
    }

    #[test]
    fn null_metadata_round_trips() {
        let dir = Scratch::new("null-metadata");
        let path = dir.file("a.safetensors");
        save(&path, &[("x".into(), Tensor::scalar(1.5))], &Value::Null).unwrap();
        let ckpt = load(&path).unwrap();
        assert_eq!(ckpt.metadata, Value::Null);
        assert_eq!(ckpt.tensors["x"].shape(), &[] as &[usize]);
        assert_eq!(ckpt.tensors["x"].data(), &[1.5]);
    }

    #[test]
    fn successful_saves_leave_only_the_final_file() {
        let dir = Scratch::new("atomic-ok");
        let path = dir.file("ckpt.safetensors");
        save(&path, &state_dict(&mut tiny(1)), &json!({"epoch": 1})).unwrap();
        save(&path, &state_dict(&mut tiny(2)), &json!({"epoch": 2})).unwrap();
        assert_eq!(dir.entries(), ["ckpt.safetensors"]);
        let ckpt = load(&path).unwrap();
        assert_eq!(ckpt.metadata, json!({"epoch": 2}));
        let want = state_dict(&mut tiny(2));
        assert_eq!(ckpt.tensors["classifier.1.bias"], want[11].1);
    }

    #[test]
    fn failed_saves_leave_no_file_and_name_the_path() {
        let dir = Scratch::new("atomic-fail");
        let state = state_dict(&mut tiny(1));

        let missing = dir.file("no-such-dir").join("ckpt.safetensors");
        let err = save(&missing, &state, &Value::Null).unwrap_err();
        assert!(matches!(err, CheckpointError::Write { .. }), "{err}");
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
        assert!(!missing.exists());

        // A directory in the way is refused before any temp file is written.
        let occupied = dir.file("occupied");
        fs::create_dir(&occupied).unwrap();
        fs::write(occupied.join("keep"), b"x").unwrap();
        let err = save(&occupied, &state, &Value::Null).unwrap_err();
        assert!(
            err.to_string().contains(&occupied.display().to_string()),
            "{err}"
        );
        assert_eq!(dir.entries(), ["occupied"]);
        assert!(occupied.is_dir());
    }

    /// The rename would replace a symlink (or a FIFO, a device) with a regular file.
    #[cfg(unix)]
    #[test]
    fn a_destination_that_is_not_a_regular_file_is_refused_and_kept() {
        let dir = Scratch::new("not-regular");
        let target = dir.file("target.safetensors");
        fs::write(&target, b"precious").unwrap();
        let link = dir.file("link.safetensors");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = save(&link, &state_dict(&mut tiny(1)), &Value::Null).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&link.display().to_string()), "{msg}");
        assert!(msg.contains("a symbolic link, not a regular file"), "{msg}");
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(&target).unwrap(), b"precious");

        let fifo = dir.file("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let err = write_atomic(&fifo, b"x").unwrap_err();
            assert!(err.to_string().contains("special file"), "{err}");
            assert!(!fs::symlink_metadata(&fifo).unwrap().is_file());
        }
        let mut entries = dir.entries();
        entries.retain(|e| e != "fifo");
        assert_eq!(entries, ["link.safetensors", "target.safetensors"]);
    }

    #[test]
    fn non_finite_weights_and_negative_variances_are_refused_by_name() {
        let dir = Scratch::new("bad-values");
        for (name, index, value, needle) in [
            (
                "features.0.0.weight",
                5,
                f32::NAN,
                "holds NaN at flat index 5 of 108",
            ),
            (
                "classifier.1.bias",
                2,
                f32::INFINITY,
                "holds inf at flat index 2",
            ),
            (
                "features.1.conv.0.1.running_var",
                1,
                -0.5,
                "negative running variance -0.5 at index 1",
            ),
        ] {
            let mut state = state_dict(&mut tiny(1));
            let slot = state.iter_mut().find(|(n, _)| n == name).unwrap();
            slot.1.data_mut()[index] = value;
            let path = dir.file("bad.safetensors");
            save(&path, &state, &Value::Null).unwrap();
            let mut model = tiny(2);
            let before = state_dict(&mut model);
            let err =
                load_into(&mut model, &load(&path).unwrap(), &LoadOptions::default()).unwrap_err();
            assert!(matches!(err, CheckpointError::BadValue { .. }), "{err}");
            let msg = err.to_string();
            assert!(msg.contains(&format!("`{name}`")), "{msg}");
            assert!(msg.contains(needle), "{msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert_eq!(state_dict(&mut model), before);
        }
    }

    #[cfg(unix)]
    #[test]
    fn save_into_a_read_only_directory_fails_cleanly() {
        use std::os::unix::fs::PermissionsExt;
        let dir = Scratch::new("read-only");
        let locked = dir.file("locked");
        fs::create_dir(&locked).unwrap();
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o555)).unwrap();
        // Root ignores directory permissions; then there is nothing to test.
        let writable = File::create(locked.join("probe")).is_ok();
        let path = locked.join("ckpt.safetensors");
        let result = save(&path, &state_dict(&mut tiny(1)), &Value::Null);
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
        if writable {
            return;
        }
        let err = result.unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert_eq!(fs::read_dir(&locked).unwrap().count(), 0);
    }

    #[test]
    fn missing_truncated_and_random_files_are_rejected_by_name() {
        let dir = Scratch::new("corrupt");
        let good = dir.file("good.safetensors");
        save(&good, &state_dict(&mut tiny(1)), &metadata()).unwrap();
        let bytes = fs::read(&good).unwrap();

        let missing = dir.file("missing.safetensors");
        let err = load(&missing).unwrap_err();
        assert!(matches!(err, CheckpointError::Read { .. }), "{err}");
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );

        let mut noise = vec![0u8; 256];
        ChaCha8Rng::seed_from_u64(9).fill(&mut noise[..]);
        for (name, contents) in [
            ("truncated-data", &bytes[..bytes.len() - 7]),
            ("truncated-header", &bytes[..40]),
            ("too-short", &bytes[..5]),
            ("empty", &[][..]),
            ("random", &noise[..]),
        ] {
            let path = dir.file(name);
            fs::write(&path, contents).unwrap();
            let err = load(&path).unwrap_err();
            assert!(
                matches!(err, CheckpointError::Format { .. }),
                "{name}: {err}"
            );
            let msg = err.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains("not a valid safetensors file"), "{msg}");
        }
    }

    /// Writes a raw safetensors file with arbitrary dtypes and metadata.
    fn write_raw(path: &Path, tensors: &[(&str, Dtype, &[usize], Vec<u8>)], meta: &[(&str, &str)]) {
        let views: Vec<_> = tensors
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                let view =
                    safetensors::tensor::TensorView::new(*dtype, shape.to_vec(), bytes).unwrap();
                (name.to_string(), view)
            })
            .collect();
        let meta = meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
    }

    #[test]
    fn bad_metadata_json_is_rejected() {
        let dir = Scratch::new("bad-json");
        let path = dir.file("a.safetensors");
        write_raw(&path, &[], &[(METADATA_KEY, "{\"epoch\": ")]);
        let err = load(&path).unwrap_err();
        assert!(matches!(err, CheckpointError::Metadata { .. }), "{err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn integers_are_accepted_only_for_counters() {
        let dir = Scratch::new("integers");
        let path = dir.file("counters.safetensors");
        write_raw(
            &path,
            &[
                (
                    "bn.num_batches_tracked",
                    Dtype::I64,
                    &[],
                    12i64.to_le_bytes().to_vec(),
                ),
                (
                    "bn2.num_batches_tracked",
                    Dtype::I32,
                    &[],
                    5i32.to_le_bytes().to_vec(),
                ),
            ],
            &[],
        );
        let ckpt = load(&path).unwrap();
        assert_eq!(ckpt.tensors["bn.num_batches_tracked"].data(), &[12.0]);
        assert_eq!(ckpt.tensors["bn2.num_batches_tracked"].data(), &[5.0]);

        for (name, dtype, bytes) in [
            ("conv.weight", Dtype::I64, 1i64.to_le_bytes().to_vec()),
            ("steps", Dtype::I32, 1i32.to_le_bytes().to_vec()),
            (
                "bn.num_batches_tracked",
                Dtype::F64,
                1f64.to_le_bytes().to_vec(),
            ),
        ] {
            let path = dir.file("bad.safetensors");
            write_raw(&path, &[(name, dtype, &[], bytes)], &[]);
            let err = load(&path).unwrap_err();
            assert!(
                matches!(err, CheckpointError::UnsupportedDtype { .. }),
                "{err}"
            );
            let msg = err.to_string();
            assert!(msg.contains(&format!("`{name}`")), "{msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
    }

    #[test]
    fn load_into_reports_every_mismatch_and_changes_nothing() {
        let dir = Scratch::new("mismatch");
        let path = dir.file("a.safetensors");
        let mut state = state_dict(&mut tiny(1));
        state.retain(|(name, _)| name != "features.0.1.bias");
        state.push((
            "features.2.conv.0.0.weight".into(),
            Tensor::zeros(&[8, 4, 1, 1]),
        ));
        let classifier = state
            .iter_mut()
            .find(|(n, _)| n == "classifier.1.weight")
            .unwrap();
        classifier.1 = Tensor::zeros(&[5, 4]);
        save(&path, &state, &Value::Null).unwrap();

        let mut model = tiny(2);
        let before = state_dict(&mut model);
        let err =
            load_into(&mut model, &load(&path).unwrap(), &LoadOptions::default()).unwrap_err();
        let CheckpointError::Mismatch { problems, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(
            problems,
            &[
                Mismatch::Missing("features.0.1.bias".into()),
                Mismatch::Shape {
                    name: "classifier.1.weight".into(),
                    file: vec![5, 4],
                    model: vec![10, 4],
                },
                Mismatch::Unexpected("features.2.conv.0.0.weight".into()),
            ]
        );
        assert_eq!(
            err.to_string(),
            format!(
                "checkpoint {} does not match the model, 3 problem(s):\n  \
                 missing in file: features.0.1.bias\n  \
                 shape mismatch: classifier.1.weight: file [5, 4], model [10, 4]\n  \
                 unexpected in file: features.2.conv.0.0.weight",
                path.display()
            )
        );
        assert_eq!(state_dict(&mut model), before);
    }

    #[test]
    fn load_into_copies_values_and_skips_allowed_extras() {
        let dir = Scratch::new("load-into");
        let path = dir.file("a.safetensors");
        let mut state = state_dict(&mut tiny(1));
        let optim: Vec<(String, Tensor)> = state
            .iter()
            .map(|(name, t)| (format!("optim.momentum.{name}"), t.clone()))
            .collect();
        let model_state = state.clone();
        state.extend(optim);
        save(&path, &state, &Value::Null).unwrap();
        let ckpt = load(&path).unwrap();

        let mut model = tiny(2);
        let err = load_into(&mut model, &ckpt, &LoadOptions::default()).unwrap_err();
        assert!(err.to_string().contains("12 problem(s)"), "{err}");

        let opts = LoadOptions {
            extra_prefixes: vec!["optim.".into()],
            ..LoadOptions::default()
        };
        let report = load_into(&mut model, &ckpt, &opts).unwrap();
        assert_eq!(report.loaded, 12);
        assert_eq!(report.skipped.len(), 12);
        assert!(
            report
                .skipped
                .iter()
                .all(|n| n.starts_with("optim.momentum."))
        );
        assert_eq!(state_dict(&mut model), model_state);
    }

    #[test]
    fn ignored_names_are_skipped_on_both_sides() {
        let opts = LoadOptions::default();
        assert!(opts.ignores("features.0.1.num_batches_tracked"));
        assert!(opts.ignores("num_batches_tracked"));
        assert!(!opts.ignores("features.0.1.xnum_batches_tracked"));

        // Ignoring a name the model has but the file lacks is not an error either.
        let mut state = state_dict(&mut tiny(1));
        state.retain(|(n, _)| !n.ends_with("running_var"));
        let ckpt = Checkpoint {
            path: "in-memory".into(),
            tensors: state.into_iter().collect(),
            metadata: Value::Null,
        };
        let opts = LoadOptions {
            ignore: vec!["running_var".into()],
            ..LoadOptions::default()
        };
        let report = load_into(&mut tiny(2), &ckpt, &opts).unwrap();
        assert_eq!(report.loaded, 10);
        assert!(report.skipped.is_empty());
    }

    #[test]
    fn torchvision_export_adds_i64_counters_that_loading_ignores() {
        let dir = Scratch::new("export");
        let path = dir.file("tv.safetensors");
        let mut model = tiny(1);
        export_torchvision(&path, &mut model).unwrap();

        let bytes = fs::read(&path).unwrap();
        let raw = SafeTensors::deserialize(&bytes).unwrap();
        let mut counters: Vec<&str> = raw
            .iter()
            .filter(|(_, v)| v.dtype() == Dtype::I64)
            .map(|(name, v)| {
                assert!(v.shape().is_empty());
                assert_eq!(v.data(), &[0; 8]);
                name
            })
            .collect();
        counters.sort();
        assert_eq!(
            counters,
            [
                "features.0.1.num_batches_tracked",
                "features.1.conv.0.1.num_batches_tracked"
            ]
        );

        let ckpt = load(&path).unwrap();
        let mut other = tiny(2);
        let report = load_into(&mut other, &ckpt, &LoadOptions::default()).unwrap();
        assert_eq!(report.loaded, 12);
        assert_eq!(report.skipped, counters);
        assert_eq!(state_dict(&mut other), state_dict(&mut model));

        let strict = LoadOptions {
            ignore: Vec::new(),
            ..LoadOptions::default()
        };
        let err = load_into(&mut other, &ckpt, &strict).unwrap_err();
        assert!(
            err.to_string()
                .contains("unexpected in file: features.0.1.num_batches_tracked")
        );
    }

    #[test]
    fn values_beyond_half_range_are_refused_and_the_old_file_survives() {
        let dir = Scratch::new("range");
        let path = dir.file("a.safetensors");
        save(&path, &[("w".into(), Tensor::scalar(1.0))], &Value::Null).unwrap();
        let big = [(
            "w".to_string(),
            Tensor::from_vec(&[2], vec![1.0, 1e6]).unwrap(),
        )];
        let err = save_as(&path, &big, &Value::Null, StorageDtype::F16).unwrap_err();
        assert!(matches!(err, CheckpointError::OutOfRange { .. }), "{err}");
        assert!(err.to_string().contains("`w`"), "{err}");
        assert_eq!(load(&path).unwrap().tensors["w"].data(), &[1.0]);
        save_as(&path, &big, &Value::Null, StorageDtype::BF16).unwrap();
    }

    #[test]
    fn duplicate_names_are_refused() {
        let dir = Scratch::new("duplicates");
        let path = dir.file("a.safetensors");
        let t = Tensor::scalar(1.0);
        let err = save(
            &path,
            &[("w".into(), t.clone()), ("w".into(), t)],
            &Value::Null,
        )
        .unwrap_err();
        assert!(
            matches!(err, CheckpointError::DuplicateName { .. }),
            "{err}"
        );
        assert!(!path.exists());
    }

    /// The full torchvision round trip, against a real PyTorch install:
    /// `DEPTHSHRINK_PYTHON=/path/to/python cargo test -p depthshrink-nn -- --ignored torchvision`
    /// (the interpreter needs torch, torchvision and safetensors).
    #[test]
    #[ignore = "needs PyTorch; set DEPTHSHRINK_PYTHON"]
    fn torchvision_mobilenet_v2_round_trip() {
        let python = std::env::var("DEPTHSHRINK_PYTHON")
            .expect("set DEPTHSHRINK_PYTHON to a python with torch, torchvision, safetensors");
        let run = |script: &str, args: &[&Path]| {
            let out = std::process::Command::new(&python)
                .arg("-c")
                .arg(script)
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let dir = Scratch::new("torchvision");
        let theirs = dir.file("theirs.safetensors");
        let ours = dir.file("ours.safetensors");
        run(
            "import sys, torch, torchvision, safetensors.torch as st\n\
             torch.manual_seed(0)\n\
             m = torchvision.models.mobilenet_v2(width_mult=0.5, num_classes=10)\n\
             m.train(); m(torch.randn(2, 3, 32, 32))  # non-trivial running stats and counters\n\
             st.save_file(m.state_dict(), sys.argv[1])",
            &[&theirs],
        );

        let ckpt = load(&theirs).unwrap();
        let counters = ckpt.tensors.keys().filter(|n| is_counter(n)).count();
        assert_eq!((ckpt.tensors.len(), counters), (314, 52));
        assert!(ckpt.tensors["features.0.1.num_batches_tracked"].data() == [1.0]);
        let mut model = Flat::from_state(ckpt.tensors.iter().filter(|(n, _)| !is_counter(n)));
        let report = load_into(&mut model, &ckpt, &LoadOptions::default()).unwrap();
        assert_eq!((report.loaded, report.skipped.len()), (262, 52));

        // Shift every value so the check below sees our tensors, not torchvision's init.
        model.visit("", &mut |_, entry| {
            let t = match entry {
                Entry::Param(p) => &mut p.value,
                Entry::Buffer(b) => b,
            };
            t.data_mut().iter_mut().for_each(|v| *v += 1.0);
        });
        export_torchvision(&ours, &mut model).unwrap();
        run(
            "import sys, torch, torchvision, safetensors.torch as st\n\
             theirs, ours = st.load_file(sys.argv[1]), st.load_file(sys.argv[2])\n\
             m = torchvision.models.mobilenet_v2(width_mult=0.5, num_classes=10)\n\
             m.load_state_dict(ours, strict=True)\n\
             for k, v in m.state_dict().items():\n\
             \x20   if k.endswith('num_batches_tracked'):\n\
             \x20       assert v.dtype == torch.int64 and v.item() == 0, k\n\
             \x20   else:\n\
             \x20       assert torch.equal(v, theirs[k] + 1), k",
            &[&theirs, &ours],
        );
    }
}
