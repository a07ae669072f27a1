//! depthshrink: DepthShrinker (ICML 2022) reproduced end to end in pure Rust.
//!
//! This facade re-exports the workspace crates; each has one job:
//! [`tensor`] (storage and kernels), [`autograd`] (tape), [`nn`] (layers, models,
//! optimisers, checkpoints), [`data`] (datasets and loader), [`shrinker`] (the three stages),
//! [`onnx`] (ONNX export).

#![warn(missing_docs)]

pub use depthshrink_autograd as autograd;
pub use depthshrink_data as data;
pub use depthshrink_nn as nn;
pub use depthshrink_onnx as onnx;
pub use depthshrink_shrinker as shrinker;
pub use depthshrink_tensor as tensor;
