//! Elementwise arithmetic with the broadcasts a CNN needs, in-place gradient accumulation, and the
//! clamp-family activations (relu, relu6, clamp) with their backward passes.
//!
//! Every pass walks contiguous slices, one rayon task per run of ≥ `CHUNK` elements once the
//! tensor has `PAR_MIN` elements, so the fork pays. Outputs are written exactly once into fresh,
//! uninitialised storage: an out-of-place op costs one read per input plus one write, the
//! memory-bandwidth floor (zero-filling first would add a whole extra write pass).
//!
//! Broadcasting: the right operand `b` of [`add`], [`sub`] and [`mul`] may have `a`'s shape, be a
//! scalar (any shape of 1s), or — with PyTorch's right-aligned rules — vary along one contiguous run
//! of `a`'s dimensions: `[1,C,1,1]` or `[C,1,1]` over N×C×H×W (per-channel), `[F]` or `[1,F]` over
//! N×F (bias over rows). The left operand fixes the output shape. A bare `[C]` over N×C×H×W
//! would align with W in PyTorch, so it is refused there; [`add_channel`] / [`mul_channel`] take
//! `[C]` explicitly.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::reduce::{lane_sum2, par_sum};
use crate::simd::{LINE_FLOATS, prefetch_ahead};
use crate::{Result, Tensor, TensorError};

/// Elements per rayon task: 64 KiB of f32, large enough that scheduling costs vanish next to the
/// memory traffic, small enough that two cores stay balanced.
pub(crate) const CHUNK: usize = 1 << 14;

/// Below this many elements a pass runs on the calling thread (waking the pool costs more).
pub(crate) const PAR_MIN: usize = 1 << 15;

/// Calls `f(first_unit, run)` over `out` split into runs of whole `unit`-element units (each run
/// at least [`CHUNK`] elements when units allow), one rayon task per run when `out` is large.
/// `first_unit` is the index of the run's first unit, so `f` can find its slice of the inputs.
pub(crate) fn for_units<T: Send>(
    out: &mut [T],
    unit: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    let unit = unit.max(1);
    let per_task = CHUNK.div_ceil(unit) * unit;
    if out.len() >= PAR_MIN && out.len() > per_task {
        out.par_chunks_mut(per_task)
            .enumerate()
            .for_each(|(i, run)| f(i * (per_task / unit), run));
    } else if !out.is_empty() {
        f(0, out);
    }
}

/// A fresh `len`-element vector filled through [`for_units`].
///
/// Contract: `fill` writes every element of each run it is given. Every fill in this crate does
/// so through [`write1`] / [`write2`], which check that the run and their inputs have one length.
pub(crate) fn build(
    len: usize,
    unit: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    for_units(&mut v.spare_capacity_mut()[..len], unit, fill);
    // SAFETY: `for_units` hands each of the first `len` slots to exactly one `fill` call, and
    // every fill writes all the slots of its run (see the contract above).
    unsafe { v.set_len(len) };
    v
}

/// An initialised buffer viewed as write-only slots, for kernels that fill possibly
/// uninitialised outputs. Only ever written with valid f32s, so `v` stays initialised.
pub(crate) fn as_uninit(v: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: MaybeUninit<f32> has f32's layout; the crate's callers write only f32 values
    // through the view (never `MaybeUninit::uninit()`), so `v` remains initialised.
    unsafe { &mut *(v as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// `out[i] = f(a[i])`; panics (a kernel bug, not a user error) if the lengths differ.
#[inline]
pub(crate) fn write1(out: &mut [MaybeUninit<f32>], a: &[f32], f: impl Fn(f32) -> f32) {
    assert_eq!(out.len(), a.len());
    for (o, a) in out.chunks_mut(LINE_FLOATS).zip(a.chunks(LINE_FLOATS)) {
        prefetch_ahead(&[a]);
        for (o, &x) in o.iter_mut().zip(a) {
            o.write(f(x));
        }
    }
}

/// `out[i] = f(a[i], b[i])`; panics (a kernel bug, not a user error) if the lengths differ.
#[inline]
pub(crate) fn write2(
    out: &mut [MaybeUninit<f32>],
    a: &[f32],
    b: &[f32],
    f: impl Fn(f32, f32) -> f32,
) {
    assert!(out.len() == a.len() && out.len() == b.len());
    let lines = out.chunks_mut(LINE_FLOATS).zip(a.chunks(LINE_FLOATS));
    for ((o, a), b) in lines.zip(b.chunks(LINE_FLOATS)) {
        prefetch_ahead(&[a, b]);
        for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
            o.write(f(x, y));
        }
    }
}

/// A new tensor of `x`'s shape with `f` applied to every element.
fn map(x: &Tensor, f: impl Fn(f32) -> f32 + Copy + Sync + Send) -> Tensor {
    let xd = x.data();
    let out = build(xd.len(), 1, |off, o| write1(o, &xd[off..off + o.len()], f));
    Tensor::from_vec(x.shape(), out).expect("output has the input's element count")
}

/// Applies `f` to every element of `x` in place (copying first only if the storage is shared).
fn map_in_place(x: &mut Tensor, f: impl Fn(f32) -> f32 + Copy + Sync + Send) {
    for_units(x.data_mut(), 1, |_, run| {
        for v in run {
            *v = f(*v);
        }
    });
}

/// `f(a[i], b[i])` over two tensors of one shape.
fn zip_same(
    op: &'static str,
    a: &Tensor,
    b: &Tensor,
    f: impl Fn(f32, f32) -> f32 + Copy + Sync + Send,
) -> Result<Tensor> {
    a.expect_same_shape(op, b)?;
    let (ad, bd) = (a.data(), b.data());
    let out = build(ad.len(), 1, |off, o| {
        let r = off..off + o.len();
        write2(o, &ad[r.clone()], &bd[r], f)
    });
    Tensor::from_vec(a.shape(), out)
}

/// How `b` lines up with `a` when `a` is viewed as `[outer, mid, inner]` and `b` as `[mid]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Broadcast {
    /// Same element count and layout: a plain zip.
    Same,
    /// One value for everything.
    Scalar,
    /// `inner == 1`: `b` is added to each contiguous row of `mid` elements.
    Rows { mid: usize },
    /// `inner > 1`: one `b` value per contiguous plane of `inner` elements, cycling with period `mid`.
    Planes { mid: usize, inner: usize },
}

impl Broadcast {
    fn resolve(op: &'static str, a: &[usize], b: &[usize]) -> Result<Broadcast> {
        if a == b {
            return Ok(Broadcast::Same);
        }
        let refuse = || {
            TensorError::shape(
                op,
                format!(
                    "cannot broadcast {b:?} onto {a:?}: the right operand must match, be a \
                     scalar, or vary along one contiguous run of dimensions (e.g. [1,C,1,1] \
                     over N×C×H×W, [F] over N×F)"
                ),
            )
        };
        if b.len() > a.len() {
            return Err(refuse());
        }
        let pad = a.len() - b.len();
        let bdim = |i: usize| if i < pad { 1 } else { b[i - pad] };
        let varying: Vec<usize> = (0..a.len()).filter(|&i| bdim(i) != 1).collect();
        let (Some(&first), Some(&last)) = (varying.first(), varying.last()) else {
            return Ok(Broadcast::Scalar);
        };
        if (first..=last).any(|i| bdim(i) != a[i]) {
            return Err(refuse());
        }
        let outer: usize = a[..first].iter().product();
        let mid: usize = a[first..=last].iter().product();
        let inner: usize = a[last + 1..].iter().product();
        Ok(match (outer, inner) {
            (1, 1) => Broadcast::Same,
            (_, 1) => Broadcast::Rows { mid },
            _ => Broadcast::Planes { mid, inner },
        })
    }
}

/// `f(a, b)` with `b` broadcast onto `a` (see the module docs).
fn binary(
    op: &'static str,
    a: &Tensor,
    b: &Tensor,
    f: impl Fn(f32, f32) -> f32 + Copy + Sync + Send,
) -> Result<Tensor> {
    let (ad, bd) = (a.data(), b.data());
    let out = match Broadcast::resolve(op, a.shape(), b.shape())? {
        Broadcast::Same => build(ad.len(), 1, |off, o| {
            let r = off..off + o.len();
            write2(o, &ad[r.clone()], &bd[r], f)
        }),
        Broadcast::Scalar => {
            let s = bd[0];
            build(ad.len(), 1, |off, o| {
                write1(o, &ad[off..off + o.len()], |x| f(x, s))
            })
        }
        Broadcast::Rows { mid } => build(ad.len(), mid, |row0, o| {
            let a_run = &ad[row0 * mid..row0 * mid + o.len()];
            for (o, a) in o.chunks_mut(mid).zip(a_run.chunks(mid)) {
                write2(o, a, bd, f);
            }
        }),
        Broadcast::Planes { mid, inner } => build(ad.len(), inner, |p0, o| {
            let a_run = &ad[p0 * inner..p0 * inner + o.len()];
            for (p, (o, a)) in o.chunks_mut(inner).zip(a_run.chunks(inner)).enumerate() {
                let s = bd[(p0 + p) % mid];
                write1(o, a, |x| f(x, s));
            }
        }),
    };
    Tensor::from_vec(a.shape(), out)
}

/// `a + b`, `b` broadcast onto `a` (same shape, scalar, `[1,C,1,1]`, `[F]` over N×F, …).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("add", a, b, |x, y| x + y)
}

/// `a − b`, `b` broadcast onto `a` as in [`add`].
pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("sub", a, b, |x, y| x - y)
}

/// `a · b` (elementwise), `b` broadcast onto `a` as in [`add`].
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("mul", a, b, |x, y| x * y)
}

/// Views a per-channel vector (`[C]` or `[1,C,1,1]`) as `[1,C,1,1]` for an N×C×H×W `x`.
fn as_channel_vector(op: &'static str, x: &Tensor, v: &Tensor) -> Result<Tensor> {
    let [_, c, _, _] = x.nchw(op)?;
    if v.shape() != [c] && v.shape() != [1, c, 1, 1] {
        return Err(TensorError::shape(
            op,
            format!(
                "per-channel vector must be [{c}] or [1,{c},1,1] for {:?}, got {:?}",
                x.shape(),
                v.shape()
            ),
        ));
    }
    v.reshape(&[1, c, 1, 1])
}

/// `x[n,c,h,w] + v[c]` for N×C×H×W `x` and `v` of shape `[C]` or `[1,C,1,1]`.
pub fn add_channel(x: &Tensor, v: &Tensor) -> Result<Tensor> {
    add(x, &as_channel_vector("add_channel", x, v)?)
}

/// `x[n,c,h,w] · v[c]` for N×C×H×W `x` and `v` of shape `[C]` or `[1,C,1,1]`.
pub fn mul_channel(x: &Tensor, v: &Tensor) -> Result<Tensor> {
    mul(x, &as_channel_vector("mul_channel", x, v)?)
}

/// `x + s` for a scalar `s`.
pub fn add_scalar(x: &Tensor, s: f32) -> Tensor {
    map(x, |v| v + s)
}

/// `s · x` for a scalar `s`.
pub fn scale(x: &Tensor, s: f32) -> Tensor {
    map(x, |v| v * s)
}

/// `x ← s · x` (gradient clipping, loss scaling) without a new allocation.
pub fn scale_in_place(x: &mut Tensor, s: f32) {
    map_in_place(x, |v| v * s);
}

/// `acc ← acc + b` for tensors of one shape: gradient accumulation.
pub fn add_assign(acc: &mut Tensor, b: &Tensor) -> Result<()> {
    axpy(acc, 1.0, b)
}

/// `acc ← acc + alpha · b` for tensors of one shape (BLAS axpy): weighted gradient accumulation,
/// SGD updates.
pub fn axpy(acc: &mut Tensor, alpha: f32, b: &Tensor) -> Result<()> {
    acc.expect_same_shape("axpy", b)?;
    let bd = b.data();
    for_units(acc.data_mut(), 1, |off, run| {
        let b_run = &bd[off..off + run.len()];
        for (a, &y) in run.iter_mut().zip(b_run) {
            *a += alpha * y;
        }
    });
    Ok(())
}

/// Checks clamp bounds: `lo ≤ hi`, neither NaN.
fn check_bounds(op: &'static str, lo: f32, hi: f32) -> Result<()> {
    if lo <= hi {
        Ok(())
    } else {
        Err(TensorError::argument(
            op,
            format!("need lo ≤ hi, got lo={lo}, hi={hi}"),
        ))
    }
}

/// `max(x, 0)`; NaN stays NaN, as in PyTorch.
pub fn relu(x: &Tensor) -> Tensor {
    map(x, |v| v.clamp(0.0, f32::INFINITY))
}

/// `dy` where `x > 0`, else 0. `x` may be the forward input or output (both are > 0 at the same
/// places); at `x == 0` the gradient is 0, as in PyTorch.
pub fn relu_backward(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    zip_same("relu_backward", x, dy, |x, g| if x > 0.0 { g } else { 0.0 })
}

/// `min(max(x, 0), 6)`, MobileNetV2's activation.
pub fn relu6(x: &Tensor) -> Tensor {
    map(x, |v| v.clamp(0.0, 6.0))
}

/// `dy` where `0 < x < 6`, else 0; `x` may be the forward input or output. See [`clamp_backward`]
/// for the boundary convention.
pub fn relu6_backward(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    clamp_backward(x, dy, 0.0, 6.0)
}

/// `min(max(x, lo), hi)`; errors unless `lo ≤ hi`.
pub fn clamp(x: &Tensor, lo: f32, hi: f32) -> Result<Tensor> {
    check_bounds("clamp", lo, hi)?;
    Ok(map(x, move |v| v.clamp(lo, hi)))
}

/// [`clamp`] in place (inference, where the pre-activation is not kept).
pub fn clamp_in_place(x: &mut Tensor, lo: f32, hi: f32) -> Result<()> {
    check_bounds("clamp_in_place", lo, hi)?;
    map_in_place(x, move |v| v.clamp(lo, hi));
    Ok(())
}

/// `dy` where `lo < x < hi` strictly, else 0 — PyTorch's convention: torch 2.15's relu6, hardtanh
/// and clamp backward all give gradient 0 at x = lo and x = hi exactly (checked: x = [-1, 0, 3, 6,
/// 7] → grad [0, 0, 1, 0, 0] for each). `x` may be the forward input, or the output when
/// `lo < hi` (the strict interior is the same set).
pub fn clamp_backward(x: &Tensor, dy: &Tensor, lo: f32, hi: f32) -> Result<Tensor> {
    check_bounds("clamp_backward", lo, hi)?;
    zip_same("clamp_backward", x, dy, move |x, g| {
        if lo < x && x < hi { g } else { 0.0 }
    })
}

/// `a + (b − a) · t` for tensors of one shape and a scalar weight `t`: the soft gate between an
/// activation's input and output while searching which activations to remove.
pub fn lerp(a: &Tensor, b: &Tensor, t: f32) -> Result<Tensor> {
    zip_same("lerp", a, b, move |x, y| x + (y - x) * t)
}

/// Gradients of [`lerp`]: `(da, db, dt) = (dy·(1−t), dy·t, Σ dy·(b−a))`.
pub fn lerp_backward(a: &Tensor, b: &Tensor, t: f32, dy: &Tensor) -> Result<(Tensor, Tensor, f32)> {
    a.expect_same_shape("lerp_backward", b)?;
    a.expect_same_shape("lerp_backward", dy)?;
    let (g, ad, bd) = (dy.data(), a.data(), b.data());
    // Σ dy·(b − a), with b − a formed per element (summing dy·b and dy·a separately would
    // cancel badly where the gate's two inputs agree) into a small stack buffer.
    let dt = par_sum(g.len(), |r| {
        let mut diff = [0f32; 256];
        let runs = g[r.clone()].chunks(256).zip(ad[r.clone()].chunks(256));
        runs.zip(bd[r].chunks(256))
            .map(|((gs, xs), ys)| {
                let d = &mut diff[..gs.len()];
                for ((d, &x), &y) in d.iter_mut().zip(xs).zip(ys) {
                    *d = y - x;
                }
                lane_sum2(gs, d, |u, v| u * v)
            })
            .sum()
    });
    Ok((scale(dy, 1.0 - t), scale(dy, t), dt as f32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_vec(shape, v.to_vec()).unwrap()
    }

    #[test]
    fn broadcast_layouts() {
        use Broadcast::*;
        let r = |a: &[usize], b: &[usize]| Broadcast::resolve("t", a, b);
        assert_eq!(r(&[2, 3, 4, 5], &[2, 3, 4, 5]), Ok(Same));
        assert_eq!(r(&[2, 3, 4, 5], &[]), Ok(Scalar));
        assert_eq!(r(&[2, 3, 4, 5], &[1, 1]), Ok(Scalar));
        assert_eq!(
            r(&[2, 3, 4, 5], &[1, 3, 1, 1]),
            Ok(Planes { mid: 3, inner: 20 })
        );
        assert_eq!(
            r(&[2, 3, 4, 5], &[3, 1, 1]),
            Ok(Planes { mid: 3, inner: 20 })
        );
        assert_eq!(r(&[2, 3, 4, 5], &[3, 4, 5]), Ok(Rows { mid: 60 }));
        assert_eq!(
            r(&[2, 3, 4, 5], &[2, 1, 1, 1]),
            Ok(Planes { mid: 2, inner: 60 })
        );
        assert_eq!(r(&[1, 3, 4, 5], &[3, 4, 5]), Ok(Same));
        assert_eq!(r(&[8, 10], &[10]), Ok(Rows { mid: 10 }));
        assert_eq!(r(&[8, 10], &[1, 10]), Ok(Rows { mid: 10 }));
        assert_eq!(r(&[8, 10], &[8, 1]), Ok(Planes { mid: 8, inner: 10 }));
        // Refused: a bare [C] over NCHW aligns with W; gaps; wrong sizes; b larger than a.
        assert!(r(&[2, 3, 4, 5], &[3]).is_err());
        assert!(r(&[2, 3, 4, 5], &[1, 3, 1, 5]).is_err());
        assert!(r(&[8, 10], &[9]).is_err());
        assert!(r(&[10], &[1, 10]).is_err());
    }

    #[test]
    fn small_cases_by_hand() {
        let x = t(&[1, 2, 1, 2], &[1.0, 2.0, 3.0, 4.0]);
        let v = t(&[2], &[10.0, -1.0]);
        assert_eq!(add_channel(&x, &v).unwrap().data(), &[11.0, 12.0, 2.0, 3.0]);
        assert_eq!(
            mul_channel(&x, &v).unwrap().data(),
            &[10.0, 20.0, -3.0, -4.0]
        );
        let rows = t(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let bias = t(&[2], &[0.5, -0.5]);
        assert_eq!(add(&rows, &bias).unwrap().data(), &[1.5, 1.5, 3.5, 3.5]);
        assert_eq!(
            sub(&rows, &Tensor::scalar(1.0)).unwrap().data(),
            &[0.0, 1.0, 2.0, 3.0]
        );
        let mut acc = rows.clone();
        axpy(&mut acc, -2.0, &rows).unwrap();
        assert_eq!(acc.data(), &[-1.0, -2.0, -3.0, -4.0]);
        assert_eq!(
            rows.data(),
            &[1.0, 2.0, 3.0, 4.0],
            "copy-on-write kept the original"
        );
        add_assign(&mut acc, &rows).unwrap();
        assert_eq!(acc.data(), &[0.0; 4]);
        let l = lerp(&rows, &t(&[2, 2], &[3.0, 2.0, 1.0, 0.0]), 0.25).unwrap();
        assert_eq!(l.data(), &[1.5, 2.0, 2.5, 3.0]);
    }

    /// Boundary gradients against PyTorch 2.15 (values pasted from this run):
    /// ```python
    /// x = torch.tensor([-1., 0., 3., 6., 7.], requires_grad=True)
    /// F.relu6(x).backward(torch.ones(5)); x.grad   # [0, 0, 1, 0, 0]
    /// # F.hardtanh(x, 0, 6) and x.clamp(0, 6) give the same; torch.relu gives [0, 0, 1, 1, 1]
    /// ```
    #[test]
    fn activation_boundaries_match_pytorch() {
        let x = t(&[5], &[-1.0, 0.0, 3.0, 6.0, 7.0]);
        let ones = Tensor::full(&[5], 1.0);
        assert_eq!(relu6(&x).data(), &[0.0, 0.0, 3.0, 6.0, 6.0]);
        assert_eq!(
            relu6_backward(&x, &ones).unwrap().data(),
            &[0.0, 0.0, 1.0, 0.0, 0.0]
        );
        assert_eq!(
            clamp_backward(&x, &ones, 0.0, 6.0).unwrap().data(),
            &[0.0, 0.0, 1.0, 0.0, 0.0]
        );
        assert_eq!(
            relu_backward(&x, &ones).unwrap().data(),
            &[0.0, 0.0, 1.0, 1.0, 1.0]
        );
        assert_eq!(relu(&x).data(), &[0.0, 0.0, 3.0, 6.0, 7.0]);
        assert!(relu(&t(&[1], &[f32::NAN])).data()[0].is_nan());
    }

    #[test]
    fn errors() {
        let a = Tensor::zeros(&[2, 3]);
        assert!(add(&a, &Tensor::zeros(&[3, 2])).is_err());
        assert!(mul(&a, &Tensor::zeros(&[2])).is_err());
        assert!(add_channel(&a, &Tensor::zeros(&[3])).is_err(), "not NCHW");
        assert!(add_channel(&Tensor::zeros(&[1, 3, 2, 2]), &Tensor::zeros(&[4])).is_err());
        assert!(axpy(&mut a.clone(), 1.0, &Tensor::zeros(&[6])).is_err());
        assert!(clamp(&a, 1.0, 0.0).is_err());
        assert!(clamp(&a, f32::NAN, 0.0).is_err());
        assert!(clamp_in_place(&mut a.clone(), 0.0, f32::NAN).is_err());
        assert!(relu_backward(&a, &Tensor::zeros(&[3, 2])).is_err());
        assert!(lerp_backward(&a, &a, 0.5, &Tensor::zeros(&[6])).is_err());
    }
}
