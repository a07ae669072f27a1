//! Stage 2 (depthshrinker.md §4): remove the activations a search chose and finetune from the
//! original pretrained weights, optionally distilling from the pretrained network.

use depthshrink_autograd::Var;
use depthshrink_data::Batch;
use depthshrink_nn::Ctx;
use depthshrink_nn::loss::distillation;
use depthshrink_nn::mobilenet::MobileNet;
use depthshrink_tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::train::Objective;

/// The `[distill]` table of a config: self-distillation from the pretrained network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// Weight of the soft (teacher) term; official 0.7.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Softmax temperature T; official 1.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
}

fn default_alpha() -> f64 {
    0.7
}
fn default_temperature() -> f64 {
    1.0
}

impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig {
            alpha: default_alpha(),
            temperature: default_temperature(),
        }
    }
}

impl DistillConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(format!(
                "distill.alpha must be in [0, 1], got {}",
                self.alpha
            ));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(format!(
                "distill.temperature must be a positive number, got {}",
                self.temperature
            ));
        }
        Ok(())
    }
}

/// The student for finetuning: the pretrained network with the activations `keep` drops
/// removed (identity sites; pad-first plus one output ReLU6 for removed IR blocks).
pub fn student(pretrained: &MobileNet, keep: &[bool]) -> depthshrink_tensor::Result<MobileNet> {
    let mut net = pretrained.clone();
    net.search = None;
    net.apply_keep(keep)?;
    Ok(net)
}

/// Distillation: α·T²·softCE(student/T, teacher/T) + (1 − α)·CE(student, labels), the teacher
/// in evaluation mode (BN folded, running statistics).
pub struct Distill {
    teacher: MobileNet,
    alpha: f32,
    temperature: f32,
    smoothing: f32,
}

impl Distill {
    pub fn new(
        teacher: &MobileNet,
        config: &DistillConfig,
        smoothing: f32,
    ) -> depthshrink_tensor::Result<Distill> {
        Ok(Distill {
            teacher: teacher.for_inference()?,
            alpha: config.alpha as f32,
            temperature: config.temperature as f32,
            smoothing,
        })
    }
}

impl Objective for Distill {
    fn loss(
        &mut self,
        model: &mut MobileNet,
        ctx: &mut Ctx,
        batch: &Batch,
    ) -> depthshrink_tensor::Result<(Var, Tensor)> {
        let images = Var::constant(batch.images.clone());
        let teacher = self.teacher.forward(&images, &Ctx::eval())?.into_value();
        let logits = model.forward(&images, ctx)?;
        let loss = distillation(
            &logits,
            &teacher,
            &batch.labels,
            self.alpha,
            self.temperature,
            self.smoothing,
        )?;
        Ok((loss, logits.value().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::CrossEntropy;
    use depthshrink_nn::activation::Act;
    use depthshrink_nn::arch::ArchConfig;
    use depthshrink_nn::mobilenet::Block;

    fn batch() -> Batch {
        let n = 2 * 3 * 16 * 16;
        Batch {
            position: 0,
            images: Tensor::from_vec(
                &[2, 3, 16, 16],
                (0..n)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                    .collect(),
            )
            .unwrap(),
            labels: vec![1, 4],
            indices: vec![0, 1],
            skipped: Vec::new(),
        }
    }

    fn loss(obj: &mut dyn Objective, net: &mut MobileNet) -> f32 {
        let (loss, _) = obj.loss(net, &mut Ctx::train(0), &batch()).unwrap();
        loss.value().item().unwrap()
    }

    #[test]
    fn student_removes_what_the_keep_list_drops() {
        let teacher = MobileNet::new(&ArchConfig::mobilenet_v2(0.35, 10, true), 1);
        let mut keep = vec![true; teacher.num_acts()];
        keep[0] = false;
        keep[3] = false;
        let s = student(&teacher, &keep).unwrap();
        assert_eq!(s.variant().keep, keep);
        assert_eq!(s.stem_act, Act::Identity);
        let Block::Ir(b) = &s.blocks[2] else { panic!() };
        assert!(b.linearised);
    }

    /// A removed block runs its expand conv on a zero-padded input; in training its BN must
    /// still see the statistics of the unpadded map, or finetuning starts from shifted
    /// normalisations (16 of 36 values are interior on a 4×4 map).
    #[test]
    fn linearised_blocks_keep_their_training_statistics() {
        let teacher = MobileNet::new(&ArchConfig::mobilenet_v2(0.35, 10, true), 1);
        let mut keep = vec![true; teacher.num_acts()];
        keep[3] = false;
        let (mut a, mut b) = (teacher.clone(), student(&teacher, &keep).unwrap());
        let x = Var::constant(batch().images);
        a.forward(&x, &Ctx::train(0)).unwrap();
        b.forward(&x, &Ctx::train(0)).unwrap();
        let expand_bn = |net: &MobileNet| match &net.blocks[2] {
            Block::Ir(block) => block.expand.as_ref().unwrap().bn.clone(),
            Block::Merged(_) => panic!("block 2 is not merged"),
        };
        let (bn_a, bn_b) = (expand_bn(&a), expand_bn(&b));
        assert_ne!(bn_a.running_mean, expand_bn(&teacher).running_mean);
        for (u, v) in [
            (&bn_a.running_mean, &bn_b.running_mean),
            (&bn_a.running_var, &bn_b.running_var),
        ] {
            for (p, q) in u.data().iter().zip(v.data()) {
                assert!((p - q).abs() <= 1e-5 * (1.0 + p.abs()), "{p} vs {q}");
            }
        }
    }

    /// α = 0 is plain cross-entropy; α = 1 is the (different) soft term alone.
    #[test]
    fn distillation_blends_the_teacher_in() {
        let arch = ArchConfig::mobilenet_v2(0.35, 10, true);
        let teacher = MobileNet::new(&arch, 1);
        let mut student_net = MobileNet::new(&arch, 2);
        let config = |alpha| DistillConfig {
            alpha,
            temperature: 2.0,
        };
        let ce = loss(
            &mut CrossEntropy { smoothing: 0.1 },
            &mut student_net.clone(),
        );
        let mut plain = Distill::new(&teacher, &config(0.0), 0.1).unwrap();
        assert!((loss(&mut plain, &mut student_net.clone()) - ce).abs() < 1e-6);
        let mut soft = Distill::new(&teacher, &config(1.0), 0.1).unwrap();
        let l = loss(&mut soft, &mut student_net);
        assert!(
            l.is_finite() && l > 0.0 && (l - ce).abs() > 1e-4,
            "{l} vs {ce}"
        );
    }
}
