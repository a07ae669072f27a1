use std::fmt;
use std::sync::Arc;

use half::{bf16, f16};

use crate::{Result, TensorError};

/// An f32 tensor: a shape and contiguous row-major storage shared through an `Arc`.
///
/// Cloning is O(1); the first mutation of shared storage copies it (copy-on-write), so a tensor
/// handed to the autograd tape can never be changed behind its back.
#[derive(Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Arc<Vec<f32>>,
}

impl Tensor {
    /// Builds a tensor, checking that `data` holds exactly `shape.iter().product()` values.
    pub fn from_vec(shape: &[usize], data: Vec<f32>) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        if numel != data.len() {
            return Err(TensorError::shape(
                "Tensor::from_vec",
                format!("shape {shape:?} needs {numel} values, got {}", data.len()),
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            data: Arc::new(data),
        })
    }

    /// A tensor of `shape` filled with 0.
    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor::full(shape, 0.0)
    }

    /// A tensor of `shape` filled with `value`.
    pub fn full(shape: &[usize], value: f32) -> Tensor {
        let numel = shape.iter().product();
        Tensor {
            shape: shape.to_vec(),
            data: Arc::new(vec![value; numel]),
        }
    }

    /// A 0-dimensional tensor holding `value`.
    pub fn scalar(value: f32) -> Tensor {
        Tensor {
            shape: vec![],
            data: Arc::new(vec![value]),
        }
    }

    /// Converts half-precision storage (as found in checkpoints) to f32.
    pub fn from_f16(shape: &[usize], data: &[f16]) -> Result<Tensor> {
        Tensor::from_vec(shape, data.iter().map(|v| v.to_f32()).collect())
    }

    /// Converts bfloat16 storage (as found in checkpoints) to f32.
    pub fn from_bf16(shape: &[usize], data: &[bf16]) -> Result<Tensor> {
        Tensor::from_vec(shape, data.iter().map(|v| v.to_f32()).collect())
    }

    /// The values rounded to half precision (for checkpoints stored as F16).
    pub fn to_f16(&self) -> Vec<f16> {
        self.data.iter().map(|&v| f16::from_f32(v)).collect()
    }

    /// The values rounded to bfloat16 (for checkpoints stored as BF16).
    pub fn to_bf16(&self) -> Vec<bf16> {
        self.data.iter().map(|&v| bf16::from_f32(v)).collect()
    }

    /// The dimensions, outermost first (NCHW for images).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The number of dimensions.
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    /// The number of elements (the product of the dimensions).
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Dimension `i`, or an error naming `op` when the tensor has fewer dimensions.
    pub fn dim(&self, op: &'static str, i: usize) -> Result<usize> {
        self.shape.get(i).copied().ok_or_else(|| {
            TensorError::shape(
                op,
                format!("tensor of shape {:?} has no dimension {i}", self.shape),
            )
        })
    }

    /// The four dimensions of an NCHW tensor, or an error naming `op`.
    pub fn nchw(&self, op: &'static str) -> Result<[usize; 4]> {
        match self.shape[..] {
            [n, c, h, w] => Ok([n, c, h, w]),
            _ => Err(TensorError::shape(
                op,
                format!("expected N×C×H×W, got {:?}", self.shape),
            )),
        }
    }

    /// The values, row-major (contiguous).
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Mutable access; copies the storage first if another tensor shares it.
    pub fn data_mut(&mut self) -> &mut [f32] {
        Arc::make_mut(&mut self.data).as_mut_slice()
    }

    /// The storage, without a copy when this is its only owner.
    pub fn into_vec(self) -> Vec<f32> {
        Arc::try_unwrap(self.data).unwrap_or_else(|shared| (*shared).clone())
    }

    /// Same storage, new shape (O(1)); the element count must not change.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        if numel != self.numel() {
            return Err(TensorError::shape(
                "reshape",
                format!(
                    "cannot view {:?} ({} values) as {shape:?}",
                    self.shape,
                    self.numel()
                ),
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            data: self.data.clone(),
        })
    }

    /// True when both tensors point at the same storage (no copy was made).
    pub fn shares_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.data, &other.data)
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        match self.data[..] {
            [v] => Ok(v),
            _ => Err(TensorError::shape(
                "item",
                format!("tensor of shape {:?} is not a scalar", self.shape),
            )),
        }
    }

    /// Errors unless `other` has exactly this tensor's shape.
    pub fn expect_same_shape(&self, op: &'static str, other: &Tensor) -> Result<()> {
        if self.shape != other.shape {
            return Err(TensorError::shape(
                op,
                format!("{:?} vs {:?}", self.shape, other.shape),
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head: Vec<f32> = self.data.iter().take(8).copied().collect();
        let more = if self.numel() > 8 { ", …" } else { "" };
        write!(f, "Tensor{:?} {head:?}{more}", self.shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_vec_checks_length() {
        assert!(Tensor::from_vec(&[2, 3], vec![0.0; 6]).is_ok());
        let err = Tensor::from_vec(&[2, 3], vec![0.0; 5]).unwrap_err();
        assert!(
            err.to_string().contains("[2, 3] needs 6 values, got 5"),
            "{err}"
        );
    }

    #[test]
    fn clone_shares_and_mutation_copies() {
        let a = Tensor::full(&[4], 1.0);
        let mut b = a.clone();
        assert!(a.shares_storage(&b));
        b.data_mut()[0] = 5.0;
        assert!(!a.shares_storage(&b));
        assert_eq!(a.data(), &[1.0; 4]);
        assert_eq!(b.data(), &[5.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn reshape_is_a_view_and_checks_count() {
        let a = Tensor::zeros(&[2, 6]);
        let b = a.reshape(&[3, 4]).unwrap();
        assert!(a.shares_storage(&b));
        assert!(a.reshape(&[5]).is_err());
    }

    #[test]
    fn half_round_trip() {
        let a = Tensor::from_vec(&[3], vec![0.5, -2.0, 1024.0]).unwrap();
        assert_eq!(Tensor::from_f16(&[3], &a.to_f16()).unwrap(), a);
        assert_eq!(Tensor::from_bf16(&[3], &a.to_bf16()).unwrap(), a);
    }

    #[test]
    fn nchw_and_item_report_errors() {
        assert!(Tensor::zeros(&[2, 3]).nchw("op").is_err());
        assert_eq!(
            Tensor::zeros(&[1, 2, 3, 4]).nchw("op").unwrap(),
            [1, 2, 3, 4]
        );
        assert_eq!(Tensor::scalar(3.0).item().unwrap(), 3.0);
        assert!(Tensor::zeros(&[2]).item().is_err());
    }
}
