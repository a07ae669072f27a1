//! Reference twin of `crate::batchnorm`: the definitions as plain f64 loops over `[n, c, hw]`,
//! plus the property tests comparing the fast kernels against them. `inside[j]` says whether
//! element j of a plane enters the batch statistics (all of them unless a border is excluded).

/// Biased batch mean and variance per channel, over the elements `inside` marks.
fn stats(x: &[f32], [n, c, hw]: [usize; 3], inside: &[bool]) -> (Vec<f64>, Vec<f64>) {
    let count = (n * inside.iter().filter(|&&v| v).count()) as f64;
    let mut mean = vec![0f64; c];
    let mut var = vec![0f64; c];
    for ch in 0..c {
        for i in 0..n {
            for j in (0..hw).filter(|&j| inside[j]) {
                mean[ch] += x[(i * c + ch) * hw + j] as f64;
            }
        }
        mean[ch] /= count;
        for i in 0..n {
            for j in (0..hw).filter(|&j| inside[j]) {
                let d = x[(i * c + ch) * hw + j] as f64 - mean[ch];
                var[ch] += d * d;
            }
        }
        var[ch] /= count;
    }
    (mean, var)
}

/// Training forward: `(y, batch mean, biased variance, unbiased variance)`.
pub(crate) fn forward_train(
    x: &[f32],
    dims: [usize; 3],
    inside: &[bool],
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
) -> (Vec<f32>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let [n, c, hw] = dims;
    let (mean, var) = stats(x, dims, inside);
    let count = (n * inside.iter().filter(|&&v| v).count()) as f64;
    let unbiased = var.iter().map(|v| v * count / (count - 1.0)).collect();
    let mut y = vec![0f32; x.len()];
    for i in 0..n {
        for ch in 0..c {
            for j in 0..hw {
                let at = (i * c + ch) * hw + j;
                let xhat = (x[at] as f64 - mean[ch]) / (var[ch] + eps).sqrt();
                y[at] = (gamma[ch] as f64 * xhat + beta[ch] as f64) as f32;
            }
        }
    }
    (y, mean, var, unbiased)
}

/// Training backward by the chain rule through var and mean (the textbook derivation, not the
/// simplified closed form the fast kernel uses): `(dx, dgamma, dbeta)`. Every output depends on
/// the statistics; only the elements `inside` marks determine them.
pub(crate) fn backward_train(
    dy: &[f32],
    x: &[f32],
    dims: [usize; 3],
    inside: &[bool],
    gamma: &[f32],
    eps: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let [n, c, hw] = dims;
    let (mean, var) = stats(x, dims, inside);
    let m = (n * inside.iter().filter(|&&v| v).count()) as f64;
    let mut dx = vec![0f32; x.len()];
    let (mut dgamma, mut dbeta) = (vec![0f32; c], vec![0f32; c]);
    for ch in 0..c {
        let inv = 1.0 / (var[ch] + eps).sqrt();
        let g = gamma[ch] as f64;
        let at = |i: usize, j: usize| (i * c + ch) * hw + j;
        let (mut dvar, mut dmean, mut dg, mut db, mut sum_dev) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for i in 0..n {
            for j in 0..hw {
                let (d, g_out) = (x[at(i, j)] as f64 - mean[ch], dy[at(i, j)] as f64);
                let dxhat = g_out * g;
                dvar += dxhat * d * -0.5 * inv.powi(3);
                dmean += -dxhat * inv;
                if inside[j] {
                    sum_dev += -2.0 * d;
                }
                dg += g_out * d * inv;
                db += g_out;
            }
        }
        dmean += dvar * sum_dev / m;
        for i in 0..n {
            for j in 0..hw {
                let d = x[at(i, j)] as f64 - mean[ch];
                let dxhat = dy[at(i, j)] as f64 * g;
                let through_stats = if inside[j] {
                    dvar * 2.0 * d / m + dmean / m
                } else {
                    0.0
                };
                dx[at(i, j)] = (dxhat * inv + through_stats) as f32;
            }
        }
        dgamma[ch] = dg as f32;
        dbeta[ch] = db as f32;
    }
    (dx, dgamma, dbeta)
}

/// Eval forward with running statistics.
pub(crate) fn forward_eval(
    x: &[f32],
    [n, c, hw]: [usize; 3],
    gamma: &[f32],
    beta: &[f32],
    running: (&[f32], &[f32]),
    eps: f64,
) -> Vec<f32> {
    let (rm, rv) = running;
    let mut y = vec![0f32; x.len()];
    for i in 0..n {
        for ch in 0..c {
            for j in 0..hw {
                let at = (i * c + ch) * hw + j;
                let xhat = (x[at] as f64 - rm[ch] as f64) / (rv[ch] as f64 + eps).sqrt();
                y[at] = (gamma[ch] as f64 * xhat + beta[ch] as f64) as f32;
            }
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use crate::Tensor;
    use crate::batchnorm::{self, BnOptions};
    use crate::testutil::{assert_close, rand_vec, rng};

    /// Awkward shapes: 1, 3, 7, 13 channels; 1×1 … 9×9 maps; batch 1; an N×C input; and sizes
    /// past the parallel threshold.
    const SHAPES: &[&[usize]] = &[
        &[2, 1, 1, 1],
        &[1, 3, 5, 5],
        &[3, 7, 7, 7],
        &[1, 13, 9, 9],
        &[4, 13, 1, 1],
        &[5, 3, 1, 7],
        &[8, 13],
        &[4096, 13],
        &[6, 13, 23, 23],
        &[3, 2, 120, 100],
    ];

    /// Statistics from the interior only: (shape, border), odd and non-square planes included.
    const BORDERED: &[(&[usize], usize)] = &[
        (&[3, 7, 7, 7], 1),
        (&[2, 3, 5, 5], 2),
        (&[2, 5, 9, 6], 1),
        (&[4, 3, 3, 3], 1),
        (&[6, 13, 23, 23], 2),
    ];

    fn dims(shape: &[usize]) -> [usize; 3] {
        match *shape {
            [n, c] => [n, c, 1],
            [n, c, h, w] => [n, c, h * w],
            _ => unreachable!(),
        }
    }

    /// Which elements of a plane are inside a `border`-wide frame.
    fn interior(shape: &[usize], border: usize) -> Vec<bool> {
        let (h, w) = match *shape {
            [_, _, h, w] => (h, w),
            _ => (1, 1),
        };
        let inner = |i: usize, n: usize| i >= border && i < n - border;
        (0..h * w)
            .map(|j| inner(j / w, h) && inner(j % w, w))
            .collect()
    }

    /// With `relu6` the reference is BN, then ReLU6, then the two backwards in turn.
    #[test]
    fn training_matches_reference() {
        let mut r = rng(11);
        let shapes = SHAPES
            .iter()
            .map(|&s| (s, 0))
            .chain(BORDERED.iter().copied());
        let cases = shapes.flat_map(|s| [(s, false), (s, true)]);
        for (t, ((shape, border), relu6)) in cases.enumerate() {
            let d @ [_, c, _] = dims(shape);
            let inside = interior(shape, border);
            let numel = shape.iter().product();
            // An offset mean stresses the variance computation. (Far larger offsets are tested
            // below: there the f32 mean handed to backward, as in PyTorch, limits dx and dγ.)
            let offset = if t / 2 % 2 == 0 { 0.0 } else { 8.0 };
            let xv: Vec<f32> = rand_vec(&mut r, numel).iter().map(|v| v + offset).collect();
            let x = Tensor::from_vec(shape, xv.clone()).unwrap();
            let dy = Tensor::from_vec(shape, rand_vec(&mut r, numel)).unwrap();
            // γ up to ±4 sends outputs past both ends of the clamp.
            let gv = rand_vec(&mut r, c).iter().map(|v| 4.0 * v).collect();
            let gamma = Tensor::from_vec(&[c], gv).unwrap();
            let beta = Tensor::from_vec(&[c], rand_vec(&mut r, c)).unwrap();
            let rm0 = rand_vec(&mut r, c);
            let rv0: Vec<f32> = rand_vec(&mut r, c).iter().map(|v| v + 1.5).collect();
            let mut rm = Tensor::from_vec(&[c], rm0.clone()).unwrap();
            let mut rv = Tensor::from_vec(&[c], rv0.clone()).unwrap();
            let opts = BnOptions {
                eps: 1e-3,
                momentum: 0.3,
                relu6,
                border,
            };
            let (y, stats) =
                batchnorm::forward_train(&x, &gamma, &beta, &mut rm, &mut rv, opts).unwrap();
            let (mut ry, mean, var, unbiased) =
                super::forward_train(&xv, d, &inside, gamma.data(), beta.data(), 1e-3);
            let mut rdy = dy.data().to_vec();
            if relu6 {
                for (v, g) in ry.iter_mut().zip(&mut rdy) {
                    if !(0.0 < *v && *v < 6.0) {
                        *g = 0.0;
                    }
                    *v = v.clamp(0.0, 6.0);
                }
            }
            let what = |s: &str| format!("{s} {shape:?} border {border} relu6 {relu6}");
            assert_close(y.data(), &ry, 1e-5, &what("y"));
            let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<_>>();
            assert_close(stats.mean.data(), &f32s(mean.clone()), 1e-6, &what("mean"));
            let inv: Vec<f64> = var.iter().map(|v| 1.0 / (v + 1e-3).sqrt()).collect();
            assert_close(stats.inv_std.data(), &f32s(inv), 1e-5, &what("inv_std"));
            let blend = |old: &[f32], new: &[f64]| {
                f32s(
                    old.iter()
                        .zip(new)
                        .map(|(&o, &b)| 0.7 * o as f64 + 0.3 * b)
                        .collect(),
                )
            };
            assert_close(rm.data(), &blend(&rm0, &mean), 1e-6, &what("running_mean"));
            assert_close(
                rv.data(),
                &blend(&rv0, &unbiased),
                1e-5,
                &what("running_var"),
            );

            let g = batchnorm::backward_train(&dy, &x, &gamma, &stats).unwrap();
            let (rdx, rdg, rdb) = super::backward_train(&rdy, &xv, d, &inside, gamma.data(), 1e-3);
            assert_close(g.dx.data(), &rdx, 1e-5, &what("dx"));
            assert_close(g.dgamma.data(), &rdg, 1e-5, &what("dgamma"));
            assert_close(g.dbeta.data(), &rdb, 1e-5, &what("dbeta"));
        }
    }

    #[test]
    fn eval_matches_reference() {
        let mut r = rng(12);
        for &shape in SHAPES {
            let d @ [_, c, _] = dims(shape);
            let numel = shape.iter().product();
            let x = Tensor::from_vec(shape, rand_vec(&mut r, numel)).unwrap();
            let vec_c = |r: &mut _, add: f32| {
                let v = rand_vec(r, c).iter().map(|v| v + add).collect();
                Tensor::from_vec(&[c], v).unwrap()
            };
            let (gamma, beta, rm, rv) = (
                vec_c(&mut r, 0.0),
                vec_c(&mut r, 0.0),
                vec_c(&mut r, 0.0),
                vec_c(&mut r, 1.5),
            );
            let y = batchnorm::forward_eval(&x, &gamma, &beta, &rm, &rv, 1e-5).unwrap();
            let running = (rm.data(), rv.data());
            let ry = super::forward_eval(x.data(), d, gamma.data(), beta.data(), running, 1e-5);
            assert_close(y.data(), &ry, 1e-5, &format!("eval y {shape:?}"));
            let (scale, shift) = batchnorm::fold_to_affine(&gamma, &beta, &rm, &rv, 1e-5).unwrap();
            let folded = batchnorm::channel_affine(&x, &scale, &shift).unwrap();
            assert_close(folded.data(), &ry, 1e-5, &format!("folded {shape:?}"));
            // Frozen BN is affine in x, so its backward is the forward's slope: dy·γ/sqrt(rv+eps).
            let dx = batchnorm::backward_eval(&x, &gamma, &rv, 1e-5).unwrap();
            let zeros = vec![0.0; c];
            let slope =
                super::forward_eval(x.data(), d, gamma.data(), &zeros, (&zeros, rv.data()), 1e-5);
            assert_close(dx.data(), &slope, 1e-5, &format!("eval dx {shape:?}"));
        }
    }

    /// |mean| = 10⁴·std: a one-pass E[x²] − E[x]² in f32 would lose every digit of the variance.
    #[test]
    fn variance_is_stable_under_large_offsets() {
        let mut r = rng(13);
        let shape = [4, 3, 17, 17];
        let numel = shape.iter().product();
        let xv: Vec<f32> = rand_vec(&mut r, numel).iter().map(|v| 1e4 + v).collect();
        let x = Tensor::from_vec(&shape, xv.clone()).unwrap();
        let ones = Tensor::full(&[3], 1.0);
        let (mut rm, mut rv) = (Tensor::zeros(&[3]), Tensor::zeros(&[3]));
        let opts = BnOptions {
            eps: 0.0,
            momentum: 1.0,
            ..Default::default()
        };
        let (_, stats) =
            batchnorm::forward_train(&x, &ones, &ones, &mut rm, &mut rv, opts).unwrap();
        let inside = interior(&shape, 0);
        let (_, _, var, unbiased) =
            super::forward_train(&xv, dims(&shape), &inside, ones.data(), ones.data(), 0.0);
        let inv: Vec<f32> = var.iter().map(|v| (1.0 / v.sqrt()) as f32).collect();
        assert_close(stats.inv_std.data(), &inv, 1e-5, "inv_std");
        let unbiased: Vec<f32> = unbiased.iter().map(|&v| v as f32).collect();
        assert_close(rv.data(), &unbiased, 1e-5, "running_var");
    }
}
