//! Softmax and log-softmax over the last dimension (max-subtracted, so large logits cannot
//! overflow), their backward passes, and the fused classification losses: cross-entropy with
//! integer labels and label smoothing, and soft-target cross-entropy for distillation. The losses
//! return `(mean loss over the batch, d loss / d logits)`, so no N×K probability tensor has to be
//! kept for backward.

use crate::elementwise::for_units;
use crate::{Result, Tensor, TensorError};

/// `(rows, k)` of a tensor viewed as rows of its last dimension.
fn rows_of(op: &'static str, x: &Tensor) -> Result<(usize, usize)> {
    match x.shape().last() {
        Some(&k) if k > 0 => Ok((x.numel() / k, k)),
        _ => Err(TensorError::shape(
            op,
            format!("need a non-empty last dimension, got {:?}", x.shape()),
        )),
    }
}

/// `(n, k)` of an N×K logits tensor with N ≥ 1 (the losses average over the batch).
fn batch_of(op: &'static str, logits: &Tensor) -> Result<(usize, usize)> {
    match *logits.shape() {
        [n, k] if n > 0 && k > 0 => Ok((n, k)),
        _ => Err(TensorError::shape(
            op,
            format!("logits must be N×K with N, K ≥ 1, got {:?}", logits.shape()),
        )),
    }
}

fn row_max(row: &[f32]) -> f32 {
    row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

/// Log-softmax of each `k`-row of `x` into a new vector, as `(x − max) − log Σ exp(x − max)`
/// (adding the max back first would round large logits to the f32 spacing at the max).
fn log_softmax_rows(x: &[f32], k: usize) -> Vec<f32> {
    let mut out = x.to_vec();
    for_units(&mut out, k, |_, run| {
        for row in run.chunks_mut(k) {
            let m = row_max(row);
            let s: f64 = row.iter().map(|&v| ((v - m) as f64).exp()).sum();
            let ls = s.ln() as f32;
            for v in row {
                *v = (*v - m) - ls;
            }
        }
    });
    out
}

/// `exp(x − max) / Σ exp(x − max)` over the last dimension.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let (_, k) = rows_of("softmax", x)?;
    let mut out = x.data().to_vec();
    for_units(&mut out, k, |_, run| {
        for row in run.chunks_mut(k) {
            let m = row_max(row);
            let mut s = 0f64;
            for v in row.iter_mut() {
                *v = (*v - m).exp();
                s += *v as f64;
            }
            let inv = (1.0 / s) as f32;
            for v in row {
                *v *= inv;
            }
        }
    });
    Tensor::from_vec(x.shape(), out)
}

/// `x − max − log Σ exp(x − max)` over the last dimension.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let (_, k) = rows_of("log_softmax", x)?;
    Tensor::from_vec(x.shape(), log_softmax_rows(x.data(), k))
}

/// `dx = y·(dy − Σ dy·y)` per row, from the softmax output `y`.
pub fn softmax_backward(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let (_, k) = rows_of("softmax_backward", y)?;
    y.expect_same_shape("softmax_backward", dy)?;
    let mut dx = dy.data().to_vec();
    let yd = y.data();
    for_units(&mut dx, k, |r0, run| {
        for (g, yr) in run.chunks_mut(k).zip(yd[r0 * k..].chunks(k)) {
            let dot: f64 = g.iter().zip(yr).map(|(&a, &b)| a as f64 * b as f64).sum();
            for (g, &p) in g.iter_mut().zip(yr) {
                *g = p * (*g - dot as f32);
            }
        }
    });
    Tensor::from_vec(y.shape(), dx)
}

/// `dx = dy − softmax·Σ dy` per row, from the log-softmax output `y` (softmax = exp y).
pub fn log_softmax_backward(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let (_, k) = rows_of("log_softmax_backward", y)?;
    y.expect_same_shape("log_softmax_backward", dy)?;
    let mut dx = dy.data().to_vec();
    let yd = y.data();
    for_units(&mut dx, k, |r0, run| {
        for (g, yr) in run.chunks_mut(k).zip(yd[r0 * k..].chunks(k)) {
            let total = g.iter().map(|&v| v as f64).sum::<f64>() as f32;
            for (g, &ly) in g.iter_mut().zip(yr) {
                *g -= ly.exp() * total;
            }
        }
    });
    Tensor::from_vec(y.shape(), dx)
}

/// Cross-entropy of N×K logits against integer labels with label smoothing `ε` (PyTorch's
/// `F.cross_entropy(logits, labels, label_smoothing=ε)`): the target distribution is
/// `q = (1−ε)·onehot(label) + ε/K`, the loss `mean_n Σ_k −q_k·log p_k`
/// `= mean_n [(1−ε)·NLL + ε·mean_k(−log p_k)]`, and the gradient `(softmax − q) / N`.
pub fn cross_entropy(logits: &Tensor, labels: &[usize], smoothing: f32) -> Result<(f32, Tensor)> {
    const OP: &str = "cross_entropy";
    let (n, k) = batch_of(OP, logits)?;
    if labels.len() != n {
        return Err(TensorError::shape(
            OP,
            format!("{n} rows of logits but {} labels", labels.len()),
        ));
    }
    if let Some((i, &y)) = labels.iter().enumerate().find(|&(_, &y)| y >= k) {
        return Err(TensorError::argument(
            OP,
            format!("label {y} at row {i} is out of range for {k} classes"),
        ));
    }
    if !(0.0..=1.0).contains(&smoothing) {
        return Err(TensorError::argument(
            OP,
            format!("label smoothing must be in [0, 1], got {smoothing}"),
        ));
    }
    let mut g = log_softmax_rows(logits.data(), k);
    let (eps, kf) = (smoothing as f64, k as f64);
    let loss: f64 = g
        .chunks(k)
        .zip(labels)
        .map(|(lp, &y)| {
            let mean_nll = -lp.iter().map(|&v| v as f64).sum::<f64>() / kf;
            (1.0 - eps) * -(lp[y] as f64) + eps * mean_nll
        })
        .sum();
    let (off, on, inv_n) = (smoothing / k as f32, 1.0 - smoothing, 1.0 / n as f32);
    for_units(&mut g, k, |r0, run| {
        for (row, &y) in run.chunks_mut(k).zip(&labels[r0..]) {
            for v in row.iter_mut() {
                *v = (v.exp() - off) * inv_n;
            }
            row[y] -= on * inv_n;
        }
    });
    Ok(((loss / n as f64) as f32, Tensor::from_vec(&[n, k], g)?))
}

/// Mean over the rows of `probs` `[N, K]` of their entropy `−Σ_k p_k·ln p_k` (0·ln 0 = 0).
pub fn mean_entropy(probs: &Tensor) -> Result<f32> {
    let (n, _) = batch_of("mean_entropy", probs)?;
    let sum: f64 = probs
        .data()
        .iter()
        .filter(|&&p| p > 0.0)
        .map(|&p| -(p as f64) * (p as f64).ln())
        .sum();
    Ok((sum / n as f64) as f32)
}

/// Cross-entropy against target distributions (distillation): loss `mean_n Σ_k −t_k·log p_k`,
/// gradient `(softmax·Σ_k t_k − t) / N` (= `(softmax − t)/N` when each target row sums to 1).
/// For temperature-scaled distillation, divide both logit tensors by T first.
pub fn soft_cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<(f32, Tensor)> {
    const OP: &str = "soft_cross_entropy";
    let (n, k) = batch_of(OP, logits)?;
    logits.expect_same_shape(OP, targets)?;
    let mut g = log_softmax_rows(logits.data(), k);
    let td = targets.data();
    let loss: f64 = g
        .iter()
        .zip(td)
        .map(|(&lp, &t)| -(t as f64) * lp as f64)
        .sum();
    let inv_n = 1.0 / n as f32;
    for_units(&mut g, k, |r0, run| {
        for (row, tr) in run.chunks_mut(k).zip(td[r0 * k..].chunks(k)) {
            let mass = tr.iter().map(|&t| t as f64).sum::<f64>() as f32;
            for (v, &t) in row.iter_mut().zip(tr) {
                *v = (v.exp() * mass - t) * inv_n;
            }
        }
    });
    Ok(((loss / n as f64) as f32, Tensor::from_vec(&[n, k], g)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::assert_close;

    const TORCH_LOSS: f32 = 2.6064816;
    const TORCH_GRAD: [f32; 6] = [
        -0.073868155,
        0.0028896183,
        0.07097853,
        0.006895039,
        0.4565829,
        -0.46347794,
    ];

    /// Against PyTorch 2.15 CPU (float32): the constants above are pasted from this script.
    /// ```python
    /// import numpy as np, torch, torch.nn.functional as F
    /// z = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]], requires_grad=True)
    /// loss = F.cross_entropy(z, torch.tensor([0, 2]), label_smoothing=0.1)
    /// loss.backward()
    /// print(np.float32(loss.item()), [np.float32(v) for v in z.grad.flatten().tolist()])
    /// ```
    #[test]
    fn cross_entropy_matches_pytorch() {
        let z = Tensor::from_vec(&[2, 3], vec![2.0, -1.0, 0.5, 0.0, 3.0, -2.0]).unwrap();
        let (loss, g) = cross_entropy(&z, &[0, 2], 0.1).unwrap();
        assert_close(&[loss], &[TORCH_LOSS], 1e-6, "loss");
        assert_close(g.data(), &TORCH_GRAD, 1e-6, "grad");
    }

    /// Label smoothing by hand: equal logits give p = 1/K, so −log p = log K for every class and
    /// the loss is log K whatever ε is; the gradient is (1/K − q)/N.
    #[test]
    fn label_smoothing_by_hand() {
        let z = Tensor::zeros(&[1, 4]);
        let (loss, g) = cross_entropy(&z, &[1], 0.2).unwrap();
        assert_close(&[loss], &[4f32.ln()], 1e-7, "loss");
        // q = 0.8·onehot(1) + 0.05
        assert_close(g.data(), &[0.2, -0.6, 0.2, 0.2], 1e-6, "grad");
        // Two classes, logits (0, ln 3): p = (1/4, 3/4); label 0, ε = 0.5 → q = (3/4, 1/4);
        // loss = −(3/4)·ln(1/4) − (1/4)·ln(3/4).
        let z = Tensor::from_vec(&[1, 2], vec![0.0, 3f32.ln()]).unwrap();
        let (loss, g) = cross_entropy(&z, &[0], 0.5).unwrap();
        let expected = -(0.75 * 0.25f64.ln() + 0.25 * 0.75f64.ln()) as f32;
        assert_close(&[loss], &[expected], 1e-6, "loss");
        assert_close(g.data(), &[-0.5, 0.5], 1e-6, "grad");
    }

    #[test]
    fn softmax_is_stable_and_soft_targets_agree_with_labels() {
        let z = Tensor::from_vec(&[2, 3], vec![1000.0, 1000.0, -1000.0, 1.0, 2.0, 3.0]).unwrap();
        let p = softmax(&z).unwrap();
        assert_close(&p.data()[..3], &[0.5, 0.5, 0.0], 1e-7, "huge logits");
        let lp = log_softmax(&z).unwrap();
        assert!(lp.data().iter().all(|v| v.is_finite()));
        // A one-hot soft target is the hard label with ε = 0.
        let onehot = Tensor::from_vec(&[2, 3], vec![0.0, 1.0, 0.0, 0.0, 0.0, 1.0]).unwrap();
        let (l1, g1) = soft_cross_entropy(&z, &onehot).unwrap();
        let (l2, g2) = cross_entropy(&z, &[1, 2], 0.0).unwrap();
        assert_close(&[l1], &[l2], 1e-6, "loss");
        assert_close(g1.data(), g2.data(), 1e-6, "grad");
    }

    #[test]
    fn entropy_of_uniform_and_one_hot_rows() {
        let p =
            Tensor::from_vec(&[2, 4], vec![0.25, 0.25, 0.25, 0.25, 0.0, 1.0, 0.0, 0.0]).unwrap();
        // Row means: (ln 4 + 0) / 2.
        assert_close(
            &[mean_entropy(&p).unwrap()],
            &[4f32.ln() / 2.0],
            1e-7,
            "entropy",
        );
        assert!(mean_entropy(&Tensor::zeros(&[6])).is_err());
    }

    #[test]
    fn errors() {
        let z = Tensor::zeros(&[2, 3]);
        assert!(cross_entropy(&z, &[0, 3], 0.0).is_err(), "label ≥ K");
        assert!(cross_entropy(&z, &[0], 0.0).is_err(), "label count");
        assert!(cross_entropy(&z, &[0, 1], 1.5).is_err(), "smoothing");
        assert!(
            cross_entropy(&Tensor::zeros(&[6]), &[0], 0.0).is_err(),
            "not N×K"
        );
        assert!(
            cross_entropy(&Tensor::zeros(&[0, 3]), &[], 0.0).is_err(),
            "empty batch"
        );
        assert!(soft_cross_entropy(&z, &Tensor::zeros(&[3, 2])).is_err());
        assert!(softmax(&Tensor::zeros(&[2, 0])).is_err());
        assert!(softmax(&Tensor::scalar(1.0)).is_err());
        assert!(softmax_backward(&z, &Tensor::zeros(&[6])).is_err());
        assert!(log_softmax_backward(&z, &Tensor::zeros(&[3, 2])).is_err());
    }
}
