//! Layers, models, losses, optimisers and checkpoints.

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
