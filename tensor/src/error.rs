use thiserror::Error;

/// Errors from the tensor API: every shape or argument problem is reported, never panicked on.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum TensorError {
    /// Operands whose shapes do not fit the operation.
    #[error("{op}: shape mismatch: {detail}")]
    Shape {
        /// The operation, e.g. `conv2d`.
        op: &'static str,
        /// What does not fit.
        detail: String,
    },
    /// A value the operation cannot use (a label out of range, a zero stride…).
    #[error("{op}: invalid argument: {detail}")]
    Argument {
        /// The operation.
        op: &'static str,
        /// What is wrong with the value.
        detail: String,
    },
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, TensorError>;

impl TensorError {
    /// A [`TensorError::Shape`] of `op`.
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        TensorError::Shape {
            op,
            detail: detail.into(),
        }
    }

    /// A [`TensorError::Argument`] of `op`.
    pub fn argument(op: &'static str, detail: impl Into<String>) -> Self {
        TensorError::Argument {
            op,
            detail: detail.into(),
        }
    }
}
