//! Reference twin of `crate::depthwise`.
