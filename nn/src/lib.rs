//! Layers, models, losses, optimisers and checkpoints.

pub mod arch;
pub mod module;

pub use module::{Ctx, Entry, Module, Param};
