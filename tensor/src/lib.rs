//! f32 tensors (NCHW, contiguous, cheaply shared) and every compute kernel depthshrink uses.
//!
//! Layout: [`Tensor`] is a shape plus `Arc`-shared contiguous storage with copy-on-write.
//! Kernels work on plain slices with an explicit geometry; the tensor-level functions in each
//! module check shapes and return [`TensorError`] instead of panicking. Every fast kernel has a
//! plain-loop twin in `reference` (compiled for tests only) that the property tests compare against,
//! at every SIMD level the CPU has ([`simd`]: one switch every hand-vectorised kernel honours).

#![warn(missing_docs)]

mod error;
mod geometry;
mod tensor;

pub mod batchnorm;
pub mod conv;
pub mod depthwise;
pub mod elementwise;
pub mod gemm;
pub mod pad;
pub mod parallel;
pub mod pool;
pub mod reduce;
pub mod simd;
pub mod softmax;

#[cfg(test)]
mod reference;
#[cfg(test)]
mod testutil;

pub use error::{Result, TensorError};
pub use tensor::Tensor;
