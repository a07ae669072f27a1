//! Plain-loop twins of every fast kernel, accumulating in f64. Compiled for tests only.
//! One file per kernel family, mirroring the fast modules.
pub(crate) mod batchnorm;
pub(crate) mod conv;
pub(crate) mod depthwise;
pub(crate) mod elementwise;
pub(crate) mod gemm;
pub(crate) mod pool;
pub(crate) mod reduce;
pub(crate) mod softmax;
