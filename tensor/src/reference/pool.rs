//! Reference twin of `crate::pool`: every window walked over the zero-padded input, plus the
//! property tests. Geometry is `[n, c, h, w]` with `(k, stride, pad)`.

/// Output size along one axis (floor mode).
fn out_len(len: usize, k: usize, s: usize, p: usize) -> usize {
    (len + 2 * p - k) / s + 1
}

/// The in-bounds input positions `(iy, ix)` of window `(oy, ox)`.
fn window(
    oy: usize,
    ox: usize,
    (h, w): (usize, usize),
    (k, s, p): (usize, usize, usize),
) -> Vec<(usize, usize)> {
    let mut at = Vec::new();
    for u in 0..k {
        for v in 0..k {
            let (iy, ix) = (
                (oy * s + u) as isize - p as isize,
                (ox * s + v) as isize - p as isize,
            );
            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                at.push((iy as usize, ix as usize));
            }
        }
    }
    at
}

/// Average pool with count_include_pad: window sum / k².
pub(crate) fn avg_pool2d(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    kp: (usize, usize, usize),
) -> Vec<f32> {
    let (k, s, p) = kp;
    let (oh, ow) = (out_len(h, k, s, p), out_len(w, k, s, p));
    let mut y = Vec::new();
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let sum: f64 = window(oy, ox, (h, w), kp)
                    .iter()
                    .map(|&(iy, ix)| x[plane * h * w + iy * w + ix] as f64)
                    .sum();
                y.push((sum / (k * k) as f64) as f32);
            }
        }
    }
    y
}

/// Backward of the average pool: each window's dy/k² added to its input positions.
pub(crate) fn avg_pool2d_backward(
    dy: &[f32],
    [n, c, h, w]: [usize; 4],
    kp: (usize, usize, usize),
) -> Vec<f32> {
    let (k, s, p) = kp;
    let (oh, ow) = (out_len(h, k, s, p), out_len(w, k, s, p));
    let mut dx = vec![0f64; n * c * h * w];
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let g = dy[(plane * oh + oy) * ow + ox] as f64 / (k * k) as f64;
                for (iy, ix) in window(oy, ox, (h, w), kp) {
                    dx[plane * h * w + iy * w + ix] += g;
                }
            }
        }
    }
    dx.into_iter().map(|v| v as f32).collect()
}

/// Max pool: values and plane-local argmax positions (first maximum in row-major window order).
pub(crate) fn max_pool2d(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    kp: (usize, usize, usize),
) -> (Vec<f32>, Vec<u32>) {
    let (k, s, p) = kp;
    let (oh, ow) = (out_len(h, k, s, p), out_len(w, k, s, p));
    let (mut y, mut idx) = (Vec::new(), Vec::new());
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best: Option<(f32, usize)> = None;
                for (iy, ix) in window(oy, ox, (h, w), kp) {
                    let v = x[plane * h * w + iy * w + ix];
                    if best.is_none_or(|(b, _)| v > b) {
                        best = Some((v, iy * w + ix));
                    }
                }
                let (v, i) = best.expect("every window overlaps the input");
                y.push(v);
                idx.push(i as u32);
            }
        }
    }
    (y, idx)
}

/// Backward of the max pool: each dy added at its window's argmax.
pub(crate) fn max_pool2d_backward(dy: &[f32], idx: &[u32], [n, c, h, w]: [usize; 4]) -> Vec<f32> {
    let per_plane = dy.len() / (n * c);
    let mut dx = vec![0f64; n * c * h * w];
    for (o, (&g, &i)) in dy.iter().zip(idx).enumerate() {
        dx[o / per_plane * h * w + i as usize] += g as f64;
    }
    dx.into_iter().map(|v| v as f32).collect()
}

/// Global average pool: the mean of each plane.
pub(crate) fn global_avg_pool(x: &[f32], [n, c, h, w]: [usize; 4]) -> Vec<f32> {
    (0..n * c)
        .map(|plane| {
            let s: f64 = x[plane * h * w..(plane + 1) * h * w]
                .iter()
                .map(|&v| v as f64)
                .sum();
            (s / (h * w) as f64) as f32
        })
        .collect()
}

/// Backward of the global average pool: dy / (h·w) over each plane.
pub(crate) fn global_avg_pool_backward(dy: &[f32], [_, _, h, w]: [usize; 4]) -> Vec<f32> {
    let mut dx = Vec::new();
    for &g in dy {
        for _ in 0..h * w {
            dx.push((g as f64 / (h * w) as f64) as f32);
        }
    }
    dx
}

#[cfg(test)]
mod tests {
    use crate::Tensor;
    use crate::pool::{self, PoolParams};
    use crate::testutil::{assert_close, rand_vec, rng};

    /// `(shape, (k, stride, pad))`.
    type Case = ([usize; 4], (usize, usize, usize));

    /// 1×1 maps, odd sizes, non-square inputs, stride > k, maximal padding, and sizes past the
    /// parallel threshold.
    const CASES: &[Case] = &[
        ([1, 1, 1, 1], (1, 1, 0)),
        ([2, 3, 5, 5], (3, 2, 1)),
        ([1, 7, 7, 7], (2, 2, 0)),
        ([3, 13, 9, 9], (3, 1, 1)),
        ([2, 3, 9, 7], (3, 2, 1)),
        ([1, 2, 8, 8], (5, 3, 2)),
        ([2, 1, 6, 6], (4, 2, 2)),
        ([1, 3, 7, 7], (2, 3, 0)),
        ([1, 1, 2, 2], (3, 1, 1)),
        ([4, 16, 32, 32], (3, 2, 1)),
    ];

    #[test]
    fn pools_match_reference() {
        let mut r = rng(31);
        for &(shape, kp @ (k, s, p)) in CASES {
            let x = Tensor::from_vec(&shape, rand_vec(&mut r, shape.iter().product())).unwrap();
            let pp = PoolParams::new(k, s, p);
            let what = |op: &str| format!("{op} {shape:?} k{k} s{s} p{p}");

            let y = pool::avg_pool2d(&x, pp).unwrap();
            assert_close(
                y.data(),
                &super::avg_pool2d(x.data(), shape, kp),
                1e-5,
                &what("avg"),
            );
            let dy = Tensor::from_vec(y.shape(), rand_vec(&mut r, y.numel())).unwrap();
            let dx = pool::avg_pool2d_backward(&dy, &shape, pp).unwrap();
            let want = super::avg_pool2d_backward(dy.data(), shape, kp);
            assert_close(dx.data(), &want, 1e-5, &what("avg backward"));

            let (y, idx) = pool::max_pool2d(&x, pp).unwrap();
            let (ry, ridx) = super::max_pool2d(x.data(), shape, kp);
            assert_eq!((y.data(), &idx), (&ry[..], &ridx), "{}", what("max"));
            let dx = pool::max_pool2d_backward(&dy, &idx, &shape, pp).unwrap();
            let want = super::max_pool2d_backward(dy.data(), &ridx, shape);
            assert_close(dx.data(), &want, 1e-6, &what("max backward"));

            let gap = pool::global_avg_pool(&x).unwrap();
            assert_close(
                gap.data(),
                &super::global_avg_pool(x.data(), shape),
                1e-6,
                &what("gap"),
            );
            let g = Tensor::from_vec(gap.shape(), rand_vec(&mut r, gap.numel())).unwrap();
            let dx = pool::global_avg_pool_backward(&g, &shape).unwrap();
            let want = super::global_avg_pool_backward(g.data(), shape);
            assert_close(dx.data(), &want, 1e-6, &what("gap backward"));
        }
    }
}
