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
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use depthshrink_tensor::Tensor;
use half::{bf16, f16};
use safetensors::{Dtype, SafeTensorError, SafeTensors, View};
use serde_json::Value;

use crate::module::{Entry, Module, state_dict};

mod atomic;
pub mod timm;

pub use atomic::write_atomic;

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
mod tests;
