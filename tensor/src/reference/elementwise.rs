//! Reference twin of `crate::elementwise`: PyTorch's broadcasting rule applied index by index,
//! activations from their definitions, plus the property tests.

/// `f(a[i], b[broadcast(i)])` with `b`'s shape right-aligned against `a`'s and size-1 dimensions
/// repeated, by unravelling every output index.
pub(crate) fn broadcast_binary(
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    f: impl Fn(f64, f64) -> f64,
) -> Vec<f32> {
    let pad = a_shape.len() - b_shape.len();
    (0..a.len())
        .map(|flat| {
            // Unravel `flat` over a's shape, then ravel the matching index of b.
            let (mut rest, mut bi, mut b_stride) = (flat, 0, 1);
            for d in (0..a_shape.len()).rev() {
                let coord = rest % a_shape[d];
                rest /= a_shape[d];
                if d >= pad {
                    let bd = b_shape[d - pad];
                    if bd != 1 {
                        bi += coord * b_stride;
                    }
                    b_stride *= bd;
                }
            }
            f(a[flat] as f64, b[bi] as f64) as f32
        })
        .collect()
}

/// `dy` where `lo < x < hi`, from the definition of the clamp's derivative away from its kinks.
pub(crate) fn clamp_backward(x: &[f32], dy: &[f32], lo: f32, hi: f32) -> Vec<f32> {
    x.iter()
        .zip(dy)
        .map(|(&x, &g)| if x > lo && x < hi { g } else { 0.0 })
        .collect()
}

/// `(a + (b − a)·t, Σ dy·(b − a))`: lerp and the gradient of its weight.
pub(crate) fn lerp(a: &[f32], b: &[f32], t: f64, dy: &[f32]) -> (Vec<f32>, f64) {
    let y = a
        .iter()
        .zip(b)
        .map(|(&a, &b)| (a as f64 + (b as f64 - a as f64) * t) as f32)
        .collect();
    let mut dt = 0.0;
    for i in 0..a.len() {
        dt += dy[i] as f64 * (b[i] as f64 - a[i] as f64);
    }
    (y, dt)
}

#[cfg(test)]
mod tests {
    use crate::Tensor;
    use crate::elementwise as ew;
    use crate::testutil::{assert_close, rand_vec, rng};

    type Op = fn(&Tensor, &Tensor) -> crate::Result<Tensor>;
    type Exact = fn(f64, f64) -> f64;

    #[test]
    fn broadcasting_matches_reference() {
        let cases: &[(&[usize], &[usize])] = &[
            (&[3, 7, 5, 5], &[3, 7, 5, 5]),
            (&[3, 7, 5, 5], &[1, 7, 1, 1]),
            (&[1, 13, 9, 9], &[13, 1, 1]),
            (&[3, 7, 5, 5], &[]),
            (&[3, 7, 5, 5], &[1]),
            (&[3, 7, 5, 5], &[5, 5]),
            (&[3, 7, 5, 5], &[3, 1, 1, 1]),
            (&[2, 3, 1, 1], &[1, 3, 1, 1]),
            (&[13, 9], &[9]),
            (&[13, 9], &[1, 9]),
            (&[13, 9], &[13, 1]),
            (&[1, 1], &[1]),
            (&[4, 13, 33, 33], &[1, 13, 1, 1]),
            (&[4, 13, 33, 33], &[1, 1, 1, 1]),
            (&[300, 130], &[130]),
            (&[3, 5, 7, 1000], &[5, 7, 1]),
        ];
        let ops: [(&str, Op, Exact); 3] = [
            ("add", ew::add, |x, y| x + y),
            ("sub", ew::sub, |x, y| x - y),
            ("mul", ew::mul, |x, y| x * y),
        ];
        let mut r = rng(21);
        for &(sa, sb) in cases {
            let a = Tensor::from_vec(sa, rand_vec(&mut r, sa.iter().product())).unwrap();
            let b = Tensor::from_vec(sb, rand_vec(&mut r, sb.iter().product())).unwrap();
            for (name, fast, exact) in ops {
                let y = fast(&a, &b).unwrap();
                assert_eq!(y.shape(), sa);
                let want = super::broadcast_binary(a.data(), sa, b.data(), sb, exact);
                assert_close(y.data(), &want, 1e-6, &format!("{name} {sa:?} {sb:?}"));
            }
        }
    }

    #[test]
    fn activations_and_accumulation_match_reference() {
        let mut r = rng(22);
        for n in [1, 7, 1000, 70_001] {
            // Values in [-8, 8) with the kinks 0 and 6 planted exactly.
            let mut xv: Vec<f32> = rand_vec(&mut r, n).iter().map(|v| v * 8.0).collect();
            for (i, v) in xv.iter_mut().enumerate().step_by(5) {
                *v = [0.0, 6.0][i % 2];
            }
            let x = Tensor::from_vec(&[n], xv.clone()).unwrap();
            let dy = Tensor::from_vec(&[n], rand_vec(&mut r, n)).unwrap();
            let clamp = |lo: f32, hi: f32| xv.iter().map(|v| v.max(lo).min(hi)).collect::<Vec<_>>();
            assert_eq!(ew::relu(&x).data(), clamp(0.0, f32::INFINITY));
            assert_eq!(ew::relu6(&x).data(), clamp(0.0, 6.0));
            assert_eq!(ew::clamp(&x, -2.5, 1.0).unwrap().data(), clamp(-2.5, 1.0));
            let mut inplace = x.clone();
            ew::clamp_in_place(&mut inplace, -2.5, 1.0).unwrap();
            assert_eq!(inplace.data(), clamp(-2.5, 1.0));
            let grad = |lo, hi| super::clamp_backward(&xv, dy.data(), lo, hi);
            assert_eq!(ew::relu6_backward(&x, &dy).unwrap().data(), grad(0.0, 6.0));
            assert_eq!(
                ew::relu_backward(&x, &dy).unwrap().data(),
                grad(0.0, f32::INFINITY)
            );
            assert_eq!(
                ew::clamp_backward(&x, &dy, -2.5, 1.0).unwrap().data(),
                grad(-2.5, 1.0)
            );
            // The forward output works in place of the input for relu6's backward.
            assert_eq!(
                ew::relu6_backward(&ew::relu6(&x), &dy).unwrap().data(),
                grad(0.0, 6.0)
            );

            let mut acc = x.clone();
            ew::axpy(&mut acc, -0.75, &dy).unwrap();
            let want: Vec<f32> = xv
                .iter()
                .zip(dy.data())
                .map(|(&a, &b)| (a as f64 - 0.75 * b as f64) as f32)
                .collect();
            assert_close(acc.data(), &want, 1e-6, "axpy");
            let mut scaled = x.clone();
            ew::scale_in_place(&mut scaled, 0.5);
            assert_eq!(scaled, ew::scale(&x, 0.5));
            let shifted: Vec<f32> = xv.iter().map(|v| v + 2.0).collect();
            assert_eq!(ew::add_scalar(&x, 2.0).data(), shifted);

            let (y, dt) = super::lerp(&xv, dy.data(), 0.3, dy.data());
            assert_close(ew::lerp(&x, &dy, 0.3).unwrap().data(), &y, 1e-6, "lerp");
            let (da, db, fast_dt) = ew::lerp_backward(&x, &dy, 0.3, &dy).unwrap();
            assert_close(&[fast_dt], &[dt as f32], 1e-5, "lerp dt");
            assert_eq!(da, ew::scale(&dy, 1.0 - 0.3));
            assert_eq!(db, ew::scale(&dy, 0.3));
        }
    }
}
