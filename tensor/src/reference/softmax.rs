//! Reference twin of `crate::softmax`: definitions in f64 (losses on f64 logits so that their
//! gradients can be taken by central differences), plus the property tests.

/// Softmax of one row.
pub(crate) fn softmax_row(z: &[f64]) -> Vec<f64> {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// Mean over rows of `−Σ_k q_k·log p_k` with `q = (1−ε)·onehot + ε/K`.
pub(crate) fn cross_entropy(z: &[f64], k: usize, labels: &[usize], eps: f64) -> f64 {
    let rows = z.len() / k;
    let mut total = 0.0;
    for (row, &y) in z.chunks(k).zip(labels) {
        let p = softmax_row(row);
        for (j, pj) in p.iter().enumerate() {
            let q = eps / k as f64 + if j == y { 1.0 - eps } else { 0.0 };
            total -= q * pj.ln();
        }
    }
    total / rows as f64
}

/// Mean over rows of `−Σ_k t_k·log p_k`.
pub(crate) fn soft_cross_entropy(z: &[f64], k: usize, t: &[f32]) -> f64 {
    let rows = z.len() / k;
    let mut total = 0.0;
    for (row, tr) in z.chunks(k).zip(t.chunks(k)) {
        for (p, &tj) in softmax_row(row).iter().zip(tr) {
            total -= tj as f64 * p.ln();
        }
    }
    total / rows as f64
}

/// `∂loss/∂z` by central differences on f64 logits.
pub(crate) fn numeric_grad(z: &[f32], loss: impl Fn(&[f64]) -> f64) -> Vec<f32> {
    let mut zz: Vec<f64> = z.iter().map(|&v| v as f64).collect();
    let h = 1e-6;
    (0..z.len())
        .map(|i| {
            let v = zz[i];
            zz[i] = v + h;
            let up = loss(&zz);
            zz[i] = v - h;
            let down = loss(&zz);
            zz[i] = v;
            ((up - down) / (2.0 * h)) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::Tensor;
    use crate::softmax as sm;
    use crate::testutil::{assert_close, rand_vec, rng};

    const SHAPES: &[(usize, usize)] = &[(1, 1), (1, 3), (3, 7), (13, 10), (5, 1000), (40, 1000)];

    fn logits(r: &mut rand::rngs::StdRng, n: usize, k: usize) -> Tensor {
        Tensor::from_vec(
            &[n, k],
            rand_vec(r, n * k).iter().map(|v| v * 6.0).collect(),
        )
        .unwrap()
    }

    #[test]
    fn softmax_and_backward_match_reference() {
        let mut r = rng(51);
        for &(n, k) in SHAPES {
            let z = logits(&mut r, n, k);
            let dy = Tensor::from_vec(&[n, k], rand_vec(&mut r, n * k)).unwrap();
            let (mut p, mut lp, mut dp, mut dlp) = (vec![], vec![], vec![], vec![]);
            for (row, g) in z.data().chunks(k).zip(dy.data().chunks(k)) {
                let zr: Vec<f64> = row.iter().map(|&v| v as f64).collect();
                let pr = super::softmax_row(&zr);
                // The Jacobians: ∂p_j/∂z_i = p_j(δ_ij − p_i), ∂log p_j/∂z_i = δ_ij − p_i.
                for i in 0..k {
                    let (mut a, mut b) = (0.0, 0.0);
                    for j in 0..k {
                        let delta = if i == j { 1.0 } else { 0.0 };
                        a += g[j] as f64 * pr[j] * (delta - pr[i]);
                        b += g[j] as f64 * (delta - pr[i]);
                    }
                    dp.push(a as f32);
                    dlp.push(b as f32);
                }
                p.extend(pr.iter().map(|&v| v as f32));
                lp.extend(pr.iter().map(|&v| v.ln() as f32));
            }
            let what = |op: &str| format!("{op} {n}×{k}");
            let y = sm::softmax(&z).unwrap();
            assert_close(y.data(), &p, 1e-6, &what("softmax"));
            let ly = sm::log_softmax(&z).unwrap();
            assert_close(ly.data(), &lp, 1e-6, &what("log_softmax"));
            let dx = sm::softmax_backward(&y, &dy).unwrap();
            assert_close(dx.data(), &dp, 1e-5, &what("softmax_backward"));
            let dx = sm::log_softmax_backward(&ly, &dy).unwrap();
            assert_close(dx.data(), &dlp, 1e-5, &what("log_softmax_backward"));
        }
    }

    #[test]
    fn losses_match_reference() {
        let mut r = rng(52);
        for &(n, k) in SHAPES {
            let z = logits(&mut r, n, k);
            let labels: Vec<usize> = (0..n).map(|i| (i * 7 + 3) % k).collect();
            let what = |op: &str| format!("{op} {n}×{k}");
            let check_grad = n * k <= 200; // central differences cost two losses per logit
            for eps in [0.0, 0.1, 1.0] {
                let (loss, g) = sm::cross_entropy(&z, &labels, eps).unwrap();
                let want = super::cross_entropy(&z_f64(&z), k, &labels, eps as f64);
                assert_close(&[loss], &[want as f32], 1e-6, &what("ce"));
                if check_grad {
                    let num = super::numeric_grad(z.data(), |zz| {
                        super::cross_entropy(zz, k, &labels, eps as f64)
                    });
                    assert_close(g.data(), &num, 1e-5, &what("ce grad"));
                }
            }
            // Random target rows, normalised for the loss test, and unnormalised for the gradient
            // (the general formula p·Σt − t).
            let raw: Vec<f32> = rand_vec(&mut r, n * k).iter().map(|v| v + 1.0).collect();
            for normalise in [true, false] {
                let mut t = raw.clone();
                if normalise {
                    for row in t.chunks_mut(k) {
                        let s: f32 = row.iter().sum();
                        row.iter_mut().for_each(|v| *v /= s);
                    }
                }
                let targets = Tensor::from_vec(&[n, k], t.clone()).unwrap();
                let (loss, g) = sm::soft_cross_entropy(&z, &targets).unwrap();
                let want = super::soft_cross_entropy(&z_f64(&z), k, &t);
                assert_close(&[loss], &[want as f32], 1e-6, &what("soft ce"));
                if check_grad {
                    let num =
                        super::numeric_grad(z.data(), |zz| super::soft_cross_entropy(zz, k, &t));
                    assert_close(g.data(), &num, 1e-5, &what("soft ce grad"));
                }
            }
        }
    }

    fn z_f64(z: &Tensor) -> Vec<f64> {
        z.data().iter().map(|&v| v as f64).collect()
    }
}
