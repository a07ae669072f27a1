//! DepthShrinker's stages on top of the framework: the training loop every stage shares,
//! on-machine latency tables, and stage 3, the verified merge compiler.

pub mod latency;
pub mod merge;
pub mod train;
