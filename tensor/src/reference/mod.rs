//! Plain-loop twins of every fast kernel, accumulating in f64. Compiled for tests only.
//! One file per kernel family, mirroring the fast modules.
mod batchnorm;
pub(crate) mod conv;
mod depthwise;
mod elementwise;
pub(crate) mod gemm;
mod pool;
mod reduce;
mod softmax;
