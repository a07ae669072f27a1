//! Reference twin of `crate::conv`.
