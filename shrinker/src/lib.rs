//! DepthShrinker's stages on top of the framework: the training loop every stage shares,
//! stage 1 (gate search), stage 2 (finetuning with self-distillation), on-machine latency
//! tables, and stage 3, the verified merge compiler.

pub mod config;
mod error;
pub mod finetune;
pub mod latency;
pub mod merge;
pub mod search;
pub mod study;
pub mod train;

pub use error::{StageError, write_json};
