//! Reference twin of `crate::batchnorm`.
