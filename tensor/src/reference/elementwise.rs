//! Reference twin of `crate::elementwise`.
