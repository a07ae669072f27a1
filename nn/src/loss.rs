//! Training losses built from the autograd ops.

use depthshrink_autograd::{Var, ops};
use depthshrink_tensor::{Result, elementwise, softmax};

/// Self-distillation (depthshrinker.md §4):
/// α·T²·KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − α)·CE(student, labels) with label
/// smoothing. The KL term has the gradient of the soft cross-entropy (they differ by the
/// teacher's entropy, a constant) but reads 0 when the student matches the teacher, so the
/// logged loss is comparable across temperatures. The teacher's logits are constants: no
/// gradient flows to the teacher.
pub fn distillation(
    student: &Var,
    teacher_logits: &depthshrink_tensor::Tensor,
    labels: &[usize],
    alpha: f32,
    temperature: f32,
    smoothing: f32,
) -> Result<Var> {
    let t = temperature;
    let teacher_probs = softmax::softmax(&elementwise::scale(teacher_logits, 1.0 / t))?;
    let soft = ops::kl_divergence(&ops::scale(student, 1.0 / t)?, &teacher_probs)?;
    let hard = ops::cross_entropy(student, labels, smoothing)?;
    ops::add(
        &ops::scale(&soft, alpha * t * t)?,
        &ops::scale(&hard, 1.0 - alpha)?,
    )
}
