//! Stage 2 (depthshrinker.md §4): remove the activations a search chose and finetune from the
//! original pretrained weights, optionally distilling from the pretrained network.

use std::path::Path;

use depthshrink_autograd::Var;
use depthshrink_data::Batch;
use depthshrink_nn::Ctx;
use depthshrink_nn::keep::KeepList;
use depthshrink_nn::loss::distillation;
use depthshrink_nn::module::state_dict;
use depthshrink_nn::network::Network;
use depthshrink_tensor::Tensor;
use serde_json::Value;

use crate::config::DistillConfig;
use crate::error::StageError;
use crate::train::{CrossEntropy, Objective, Observer, TrainConfig, Trainer};

/// The student for finetuning: the pretrained network with the activations `keep` drops
/// removed (identity sites; pad-first plus one output ReLU6 for removed IR blocks).
pub fn student(pretrained: &Network, keep: &[bool]) -> depthshrink_tensor::Result<Network> {
    let mut net = pretrained.clone();
    net.search = None;
    net.apply_keep(keep)?;
    Ok(net)
}

/// Distillation ([`distillation`]): α·T²·KL(teacher/T ‖ student/T) + (1 − α)·CE(student,
/// labels), the teacher in evaluation mode (BN folded, running statistics).
pub struct Distill {
    teacher: Network,
    alpha: f32,
    temperature: f32,
    smoothing: f32,
}

impl Distill {
    /// Distils from `teacher` (copied for inference) with `config`'s α and T; `smoothing` is
    /// the label smoothing of the hard term.
    pub fn new(
        teacher: &Network,
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
        model: &mut Network,
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

/// The network finetuning starts from, and the one it distils from.
#[derive(Clone, Copy)]
pub struct Pretrained<'a> {
    /// The starting weights; the keep list removes their activations.
    pub network: &'a Network,
    /// The file `network` was read from, recorded in the run beside its fingerprint.
    pub file: Option<&'a Path>,
    /// The distillation teacher when it is not `network` itself (a pruned network distils
    /// from the unpruned one).
    pub teacher: Option<&'a Network>,
}

impl<'a> From<&'a Network> for Pretrained<'a> {
    fn from(network: &'a Network) -> Pretrained<'a> {
        Pretrained {
            network,
            file: None,
            teacher: None,
        }
    }
}

/// Stage 2: the pretrained network with the activations `keep` drops removed, finetuned per
/// `config` in `out` (distilled from the teacher, by default the pretrained network itself,
/// when the config has a `[distill]` table). `resume` continues the run in `out`, which must
/// have the same keep list and pretrained network. Returns the finetuned network (also in
/// `out`'s `last.safetensors`).
pub fn finetune(
    config: TrainConfig,
    from: Pretrained<'_>,
    keep: &KeepList,
    out: &Path,
    resume: bool,
    observer: &mut dyn Observer,
) -> Result<Network, StageError> {
    let pretrained = from.network;
    let pretrained_file = from.file;
    let mut net = student(pretrained, keep).map_err(|e| StageError::Keep(e.to_string()))?;
    net.set_free_relu6(config.model.free_relu6);
    let smoothing = config.label_smoothing as f32;
    let mut objective: Box<dyn Objective> = match &config.distill {
        Some(d) => Box::new(Distill::new(
            from.teacher.unwrap_or(pretrained),
            d,
            smoothing,
        )?),
        None => Box::new(CrossEntropy { smoothing }),
    };
    let mut trainer = Trainer::with_model(config, out, resume, Some(net))?;
    let stored = trainer.model.variant().keep;
    if stored != *keep {
        return Err(StageError::Keep(format!(
            "{keep} differs from the keep list {stored} of the run being resumed in {}",
            out.display()
        )));
    }
    record_teacher(&mut trainer, pretrained, pretrained_file)?;
    let what = format!(
        "finetuning ({} of {} activations kept{})",
        keep.kept(),
        keep.len(),
        if trainer.config.distill.is_some() {
            ", distilled"
        } else {
            ""
        }
    );
    trainer.run_stage(&what, observer, objective.as_mut())?;
    Ok(trainer.model)
}

/// Where the run's metadata records the pretrained network (its `extra` object).
const TEACHER_KEY: &str = "pretrained";

/// Records the pretrained network (file and fingerprint) in the run's metadata; on resume,
/// refuses one that differs from the recorded one: the checkpoint would then name a teacher
/// (and a starting point) the run did not have. Runs recorded before fingerprints existed are
/// resumed as they are, without one.
fn record_teacher(
    trainer: &mut Trainer,
    pretrained: &Network,
    path: Option<&Path>,
) -> Result<(), StageError> {
    let fingerprint = fingerprint(pretrained);
    let name = |path: Option<&Value>| {
        path.and_then(Value::as_str).map_or(
            "a network from an earlier stage".to_string(),
            str::to_string,
        )
    };
    let new_path = path.map(|p| Value::String(p.display().to_string()));
    let recorded = trainer.extra_metadata.get(TEACHER_KEY);
    if trainer.resumed {
        let Some(recorded) = recorded else {
            return Ok(());
        };
        if recorded.get("fingerprint").and_then(Value::as_str) != Some(fingerprint.as_str()) {
            return Err(StageError::Pretrained(format!(
                "{} (fingerprint {fingerprint}) is not the pretrained network the run in {} was started from: {} (fingerprint {}); resume with that one or start a new run in another directory",
                name(new_path.as_ref()),
                trainer.out.display(),
                name(recorded.get("path")),
                recorded
                    .get("fingerprint")
                    .and_then(Value::as_str)
                    .unwrap_or("none"),
            )));
        }
    }
    let mut record = serde_json::Map::new();
    if let Some(p) = new_path {
        record.insert("path".into(), p);
    }
    record.insert("fingerprint".into(), Value::String(fingerprint));
    trainer
        .extra_metadata
        .insert(TEACHER_KEY.into(), Value::Object(record));
    Ok(())
}

/// A fingerprint of a network's tensors (names, shapes and values): FNV-1a, 64 bits, in hex.
/// The same weights saved to another file or path give the same fingerprint.
pub fn fingerprint(net: &Network) -> String {
    let mut net = net.clone();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for (name, tensor) in state_dict(&mut net) {
        eat(name.as_bytes());
        for &d in tensor.shape() {
            eat(&(d as u64).to_le_bytes());
        }
        for v in tensor.data() {
            eat(&v.to_le_bytes());
        }
    }
    format!("fnv1a64:{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use depthshrink_nn::activation::Act;
    use depthshrink_nn::arch::ArchConfig;
    use depthshrink_nn::network::Block;

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

    fn loss(obj: &mut dyn Objective, net: &mut Network) -> f32 {
        let (loss, _) = obj.loss(net, &mut Ctx::train(0), &batch()).unwrap();
        loss.value().item().unwrap()
    }

    #[test]
    fn student_removes_what_the_keep_list_drops() {
        let teacher = Network::new(&ArchConfig::mobilenet_v2(0.35, 10, true), 1);
        let mut keep = vec![true; teacher.num_acts()];
        keep[0] = false;
        keep[3] = false;
        let s = student(&teacher, &keep).unwrap();
        assert_eq!(*s.variant().keep, keep[..]);
        assert_eq!(s.stem_act, Act::Identity);
        let Block::Ir(b) = &s.blocks[2] else { panic!() };
        assert!(b.linearised);
    }

    /// A removed block runs its expand conv on a zero-padded input; in training its BN must
    /// still see the statistics of the unpadded map, or finetuning starts from shifted
    /// normalisations (16 of 36 values are interior on a 4×4 map).
    #[test]
    fn linearised_blocks_keep_their_training_statistics() {
        let teacher = Network::new(&ArchConfig::mobilenet_v2(0.35, 10, true), 1);
        let mut keep = vec![true; teacher.num_acts()];
        keep[3] = false;
        let (mut a, mut b) = (teacher.clone(), student(&teacher, &keep).unwrap());
        let x = Var::constant(batch().images);
        a.forward(&x, &Ctx::train(0)).unwrap();
        b.forward(&x, &Ctx::train(0)).unwrap();
        let expand_bn = |net: &Network| match &net.blocks[2] {
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
        let teacher = Network::new(&arch, 1);
        let mut student_net = Network::new(&arch, 2);
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
