//! Plain-loop twins of every fast kernel, accumulating in f64. Compiled for tests only.
//! One file per kernel family, mirroring the fast modules.
mod gemm;
mod conv;
pub(crate) mod depthwise;
mod batchnorm;
mod elementwise;
mod pool;
mod reduce;
mod softmax;
