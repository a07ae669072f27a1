//! Reference twin of `crate::reduce`: straight f64 loops, plus the property tests.

/// Σ x and Σ x².
pub(crate) fn sum_and_sq(x: &[f32]) -> (f64, f64) {
    let (mut s, mut q) = (0.0, 0.0);
    for &v in x {
        s += v as f64;
        q += v as f64 * v as f64;
    }
    (s, q)
}

/// Σ over rows of an `n`×`f` matrix.
pub(crate) fn sum_rows(x: &[f32], n: usize, f: usize) -> Vec<f32> {
    (0..f)
        .map(|j| (0..n).map(|i| x[i * f + j] as f64).sum::<f64>() as f32)
        .collect()
}

/// Σ over n and the `hw` plane positions for each of `c` channels.
pub(crate) fn channel_sum(x: &[f32], n: usize, c: usize, hw: usize) -> Vec<f32> {
    let mut out = vec![0f64; c];
    for i in 0..n {
        for (ch, o) in out.iter_mut().enumerate() {
            for j in 0..hw {
                *o += x[(i * c + ch) * hw + j] as f64;
            }
        }
    }
    out.into_iter().map(|v| v as f32).collect()
}

#[cfg(test)]
mod tests {
    use crate::Tensor;
    use crate::reduce;
    use crate::testutil::{assert_close, rand_vec, rng};

    #[test]
    fn reductions_match_reference() {
        let mut r = rng(41);
        let shapes: &[&[usize]] = &[
            &[1, 1],
            &[1, 3, 5, 5],
            &[3, 7, 7, 7],
            &[2, 13, 9, 9],
            &[13, 1],
            &[128, 10],
            &[7, 300],
            &[64, 1280],
            &[8, 13, 23, 23],
            &[2, 4, 1, 1],
        ];
        for &shape in shapes {
            let numel: usize = shape.iter().product();
            let xv: Vec<f32> = rand_vec(&mut r, numel).iter().map(|v| v + 0.25).collect();
            let x = Tensor::from_vec(shape, xv.clone()).unwrap();
            let (s, q) = super::sum_and_sq(&xv);
            let what = |op: &str| format!("{op} {shape:?}");
            assert_close(&[reduce::sum(&x)], &[s as f32], 1e-6, &what("sum"));
            assert_close(
                &[reduce::mean(&x).unwrap()],
                &[(s / numel as f64) as f32],
                1e-6,
                &what("mean"),
            );
            assert_close(&[reduce::l2_norm_sq(&x)], &[q as f32], 1e-6, &what("l2"));
            let m = xv.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_eq!(reduce::max_abs(&x), m, "{}", what("max_abs"));
            let (n, c) = (shape[0], shape[1]);
            let hw = numel / (n * c);
            let cs = reduce::channel_sum(&x).unwrap();
            assert_close(
                cs.data(),
                &super::channel_sum(&xv, n, c, hw),
                1e-6,
                &what("channel_sum"),
            );
            if let &[n, f] = shape {
                let rs = reduce::sum_rows(&x).unwrap();
                assert_close(
                    rs.data(),
                    &super::sum_rows(&xv, n, f),
                    1e-6,
                    &what("sum_rows"),
                );
                let am = reduce::argmax_rows(&x).unwrap();
                for (row, &a) in xv.chunks(f).zip(&am) {
                    assert!(row.iter().all(|&v| v <= row[a]), "{}", what("argmax"));
                    assert!(row[..a].iter().all(|&v| v < row[a]), "first of ties");
                }
            }
        }
    }
}
