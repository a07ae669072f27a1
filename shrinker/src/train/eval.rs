//! Evaluation on a test split.

use depthshrink_autograd::Var;
use depthshrink_data::Loader;
use depthshrink_nn::module::Ctx;
use depthshrink_nn::network::Network;
use depthshrink_tensor::reduce::argmax_rows;
use depthshrink_tensor::softmax::cross_entropy;

use super::TrainError;

/// Test-split figures.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalStats {
    /// Images evaluated.
    pub images: usize,
    /// Mean cross-entropy (no smoothing).
    pub loss: f64,
    /// Top-1 accuracy, a fraction in [0, 1].
    pub top1: f64,
    /// Top-5 accuracy, a fraction in [0, 1].
    pub top5: f64,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
}

/// Evaluates `model` (BN folded, eval mode) on every batch of `loader`.
pub fn evaluate(model: &Network, loader: &Loader) -> Result<EvalStats, TrainError> {
    let mut net = model.for_inference()?;
    let classes = model.spec.num_classes;
    let ctx = Ctx::eval();
    let mut stats = EvalStats {
        images: 0,
        loss: 0.0,
        top1: 0.0,
        top5: 0.0,
        confusion: vec![vec![0; classes]; classes],
    };
    let (mut loss_sum, mut hits1, mut hits5) = (0f64, 0usize, 0usize);
    for batch in loader.epoch(0) {
        let batch = batch?;
        let logits = net
            .forward(&Var::constant(batch.images), &ctx)?
            .into_value();
        if let Some(&label) = batch.labels.iter().find(|&&l| l >= classes) {
            return Err(TrainError::Config(format!(
                "label {label} is out of range for a network with {classes} classes"
            )));
        }
        let (mean_loss, _) = cross_entropy(&logits, &batch.labels, 0.0)?;
        loss_sum += mean_loss as f64 * batch.labels.len() as f64;
        let preds = argmax_rows(&logits)?;
        for ((row, &label), pred) in logits
            .data()
            .chunks_exact(classes)
            .zip(&batch.labels)
            .zip(preds)
        {
            stats.confusion[label][pred] += 1;
            hits1 += usize::from(pred == label);
            let above = row.iter().filter(|&&v| v > row[label]).count();
            hits5 += usize::from(above < 5);
        }
        stats.images += batch.labels.len();
    }
    if stats.images > 0 {
        let n = stats.images as f64;
        stats.loss = loss_sum / n;
        stats.top1 = hits1 as f64 / n;
        stats.top5 = hits5 as f64 / n;
    }
    Ok(stats)
}
