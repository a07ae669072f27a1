//! DepthShrinker's stages as library functions, on top of the framework crates.
//!
//! - [`train::train`]: trains a network from scratch (the pretrained starting point). Every
//!   stage runs through the same [`train::Trainer`]: epochs, evaluation, `metrics.jsonl`,
//!   checkpoints and exact resume.
//! - Stage 1, [`search::search`]: learns which activations to remove (gate scores, optionally
//!   with a latency term) and writes `search.json`; [`search::random_search`] is the
//!   random-removal baseline.
//! - Stage 2, [`finetune::finetune`]: removes the chosen activations and finetunes from the
//!   pretrained weights, optionally distilling from the pretrained network.
//! - Stage 3, [`merge::merge_and_verify`]: merges the planned activation-free blocks
//!   ([`merge::blocks_to_merge`]) into one dense conv each and checks that the merged network
//!   computes the same function.
//! - [`latency::LatencyTable::read`] and [`latency::measure`]: the per-block latency table
//!   that the search's latency term and the merge plan read.
//!
//! A run is configured by one TOML file ([`config`]: [`config::TrainConfig`] and the sections
//! of each stage); every stage reports failure as a [`StageError`].

#![warn(missing_docs)]

pub mod config;
mod error;
pub mod finetune;
pub mod latency;
pub mod merge;
pub mod prune;
pub mod search;
pub mod study;
pub mod train;

pub use error::{StageError, write_json};
