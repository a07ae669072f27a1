//! Reference twin of `crate::reduce`.
