//! The geometry of a square-kernel 2-D convolution ([`ConvParams`], [`ConvGeom`]), shared by the
//! dense and grouped kernels (`conv`, which re-exports it as part of its API) and the depthwise
//! ones (`depthwise`, which `conv` dispatches to), so neither module imports the other for it.

use crate::{Result, TensorError};

/// Stride, zero padding (same on all four sides) and groups of a square-kernel convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvParams {
    /// Step between output positions, in input pixels (both directions).
    pub stride: usize,
    /// Zero rows and columns added on every side of the input.
    pub pad: usize,
    /// Channel groups: each group's outputs see only its share of the input channels.
    pub groups: usize,
}

impl ConvParams {
    /// The parameters by name, in this order.
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
    /// Images in the batch.
    pub n: usize,
    /// Input channels.
    pub cin: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel size (square).
    pub k: usize,
    /// See [`ConvParams::stride`].
    pub stride: usize,
    /// See [`ConvParams::pad`].
    pub pad: usize,
    /// See [`ConvParams::groups`].
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

    /// Output height.
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }

    /// Output width.
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }

    /// One input and one output channel per group (and more than one group): the depthwise
    /// kernels' case.
    pub fn is_depthwise(&self) -> bool {
        self.groups == self.cin && self.groups == self.cout && self.groups > 1
    }

    /// `[cout, cin/groups, k, k]`.
    pub fn weight_shape(&self) -> [usize; 4] {
        [self.cout, self.cin / self.groups, self.k, self.k]
    }

    /// `[n, cout, out_h, out_w]`.
    pub fn output_shape(&self) -> [usize; 4] {
        [self.n, self.cout, self.out_h(), self.out_w()]
    }

    /// Multiply-adds of the forward pass (the backward passes cost the same each).
    pub fn macs(&self) -> u64 {
        let per_out = (self.cin / self.groups * self.k * self.k) as u64;
        (self.n * self.cout * self.out_h() * self.out_w()) as u64 * per_out
    }
}
