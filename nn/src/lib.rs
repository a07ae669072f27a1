//! Layers, models, losses, optimisers and checkpoints.

pub mod arch;
pub mod checkpoint;
pub mod module;
pub mod optim;
pub mod schedule;

pub use module::{Ctx, Entry, Module, Param};
