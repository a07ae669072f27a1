//! depthshrink: DepthShrinker (ICML 2022) reproduced end to end in pure Rust.
//!
//! This facade re-exports the workspace crates; each has one job:
//! [`tensor`] (storage and kernels), [`autograd`] (tape), [`nn`] (layers, models,
//! optimisers, checkpoints), [`data`] (datasets and loader), [`shrinker`] (the three stages),
//! [`onnx`] (ONNX export).
//!
//! The method through the library, as the README shows it (compiled by the doc tests, so the
//! README's snippet cannot drift from the API unnoticed):
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # const TOML: &str = "epochs = 1";
//! use depthshrink::shrinker::{finetune, merge, search, train};
//! let config = depthshrink::shrinker::config::TrainConfig::from_toml(TOML, &[])?;
//! let pretrained = train::train(config.clone(), "runs/base".as_ref(), false, &mut train::Silent)?;
//! let found = search::search(config.clone(), pretrained.clone(), None, "runs/search".as_ref(), false, &mut train::Silent)?;
//! let tuned = finetune::finetune(config, (&pretrained).into(), &found.keep, "runs/ft".as_ref(), false, &mut train::Silent)?;
//! let merged = merge::merge_and_verify(&tuned, merge::blocks_to_merge(&tuned, false, None), 32)?;
//! # let _ = merged;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub use depthshrink_autograd as autograd;
pub use depthshrink_data as data;
pub use depthshrink_nn as nn;
pub use depthshrink_onnx as onnx;
pub use depthshrink_shrinker as shrinker;
pub use depthshrink_tensor as tensor;
