//! Dense and grouped 2-D convolution over NCHW tensors, forward and both backward passes.
//!
//! Dispatch: 1×1 with stride 1 and no padding → one GEMM per image (`[Cout,Cin]·[Cin,HW]`);
//! groups == channels → the direct kernels in [`crate::depthwise`]; everything else → tiled
//! im2col + GEMM. (Implementation: issue 2.)

use crate::{Result, TensorError};

/// Stride, zero padding (same on all four sides) and groups of a square-kernel convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvParams {
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
}

impl ConvParams {
    pub fn new(stride: usize, pad: usize, groups: usize) -> Self {
        ConvParams {
            stride,
            pad,
            groups,
        }
    }
}

/// The full geometry of one convolution call: what every kernel needs, checked once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub n: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
}

impl ConvGeom {
    /// Checks the input shape `[n, cin, h, w]` against the weight shape `[cout, cin/groups, k, k]`.
    pub fn new(
        op: &'static str,
        x: [usize; 4],
        weight: &[usize],
        p: ConvParams,
    ) -> Result<ConvGeom> {
        let [n, cin, h, w] = x;
        let &[cout, cin_g, kh, kw] = weight else {
            return Err(TensorError::shape(
                op,
                format!("weight must be Cout×Cin/g×k×k, got {weight:?}"),
            ));
        };
        if kh != kw {
            return Err(TensorError::shape(
                op,
                format!("only square kernels are supported, got {kh}×{kw}"),
            ));
        }
        if p.stride == 0 || p.groups == 0 || kh == 0 {
            return Err(TensorError::argument(
                op,
                format!("stride, groups and kernel size must be ≥ 1 ({p:?}, k={kh})"),
            ));
        }
        if cin % p.groups != 0 || cout % p.groups != 0 || cin / p.groups != cin_g {
            return Err(TensorError::shape(
                op,
                format!(
                    "input has {cin} channels, weight {weight:?} with groups={} needs {}",
                    p.groups,
                    cin_g * p.groups
                ),
            ));
        }
        if h + 2 * p.pad < kh || w + 2 * p.pad < kw {
            return Err(TensorError::shape(
                op,
                format!(
                    "{h}×{w} input with padding {} is smaller than the {kh}×{kw} kernel",
                    p.pad
                ),
            ));
        }
        Ok(ConvGeom {
            n,
            cin,
            h,
            w,
            cout,
            k: kh,
            stride: p.stride,
            pad: p.pad,
            groups: p.groups,
        })
    }

    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }

    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }

    pub fn is_depthwise(&self) -> bool {
        self.groups == self.cin && self.groups == self.cout && self.groups > 1
    }

    pub fn weight_shape(&self) -> [usize; 4] {
        [self.cout, self.cin / self.groups, self.k, self.k]
    }

    pub fn output_shape(&self) -> [usize; 4] {
        [self.n, self.cout, self.out_h(), self.out_w()]
    }

    /// Multiply-adds of the forward pass (the backward passes cost the same each).
    pub fn macs(&self) -> u64 {
        let per_out = (self.cin / self.groups * self.k * self.k) as u64;
        (self.n * self.cout * self.out_h() * self.out_w()) as u64 * per_out
    }
}
