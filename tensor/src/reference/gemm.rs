//! Reference twin of `crate::gemm`.
