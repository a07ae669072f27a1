use thiserror::Error;

/// Errors from the tensor API: every shape or argument problem is reported, never panicked on.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum TensorError {
    #[error("{op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },
    #[error("{op}: invalid argument: {detail}")]
    Argument { op: &'static str, detail: String },
}

pub type Result<T> = std::result::Result<T, TensorError>;

impl TensorError {
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        TensorError::Shape {
            op,
            detail: detail.into(),
        }
    }
    pub fn argument(op: &'static str, detail: impl Into<String>) -> Self {
        TensorError::Argument {
            op,
            detail: detail.into(),
        }
    }
}
