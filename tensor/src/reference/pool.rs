//! Reference twin of `crate::pool`.
