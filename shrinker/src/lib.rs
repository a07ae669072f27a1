//! DepthShrinker's stages on top of the framework: stage 3, the verified merge compiler.

pub mod merge;
