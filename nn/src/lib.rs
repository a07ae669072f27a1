//! Layers, models, losses, optimisers and checkpoints: modules with named parameters
//! ([`module`]), layers ([`layers`]), per-site activations and the search's gates
//! ([`activation`]), MobileNetV2 and EfficientNet-Lite0 as one [`network::Network`] described
//! by [`arch`], keep lists ([`keep`]), [`loss`], [`optim`], learning-rate [`schedule`]s and
//! safetensors [`checkpoint`]s with PyTorch's parameter names.

#![warn(missing_docs)]

pub mod activation;
pub mod arch;
pub mod checkpoint;
pub mod keep;
pub mod layers;
pub mod loss;
pub mod module;
pub mod network;
pub mod optim;
pub mod schedule;

pub use module::{Ctx, Entry, Module, Param};
