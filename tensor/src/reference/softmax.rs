//! Reference twin of `crate::softmax`.
