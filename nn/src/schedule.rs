//! Learning-rate schedules as pure functions of the global iteration, so resuming needs no
//! scheduler state.
//!
//! The formulas are timm's (`CosineLRScheduler` / `StepLRScheduler` with `t_in_epochs=False`,
//! `warmup_prefix=False`, one cycle), which the official DepthShrinker code steps per iteration.
//! With `W = ⌊warmup_epochs · iters_per_epoch⌋` warm-up and `T = epochs · iters_per_epoch` total
//! iterations, the rate at iteration `it` is:
//!
//! - warm-up, `it < W`: `warmup_lr + it · (lr − warmup_lr) / W`
//! - `cosine`: `min_lr + ½ (lr − min_lr) (1 + cos(π · it / T))` for `it < T`, then `min_lr`
//! - `step`: `lr · gamma^⌊it / S⌋`, `S = step_epochs · iters_per_epoch`
//! - `multistep`: `lr · gamma^k`, `k` = number of milestones (in epochs) `≤ it / iters_per_epoch`
//! - `constant`: `lr`
//!
//! As in timm, the decay is a function of `it` from 0, not of the time since warm-up ended: the
//! warm-up overwrites the first `W` values of the curve, so with `W > 0` the peak is slightly
//! below `lr`. The trainer runs iteration `it` at `lr(it)`. The official loop sets the rate
//! after the update of iteration `i`, so there iteration `i` trains with `lr(i − 1)` (and
//! iteration 0 with `lr(0)`): `lr(it.saturating_sub(1))` gives that sequence, one step behind.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A schedule as written in training configs, in epochs, e.g.
/// `schedule = "cosine"`, `lr = 0.1`, `warmup_epochs = 5`, `warmup_lr = 5e-7`, `min_lr = 5e-6`.
/// Each kind accepts only its own fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "schedule", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScheduleConfig {
    /// Cosine decay from `lr` to `min_lr` over the run.
    Cosine {
        /// Peak learning rate.
        lr: f64,
        /// The rate at the end of the run, in [0, `lr`]; default 0.
        #[serde(default)]
        min_lr: f64,
        /// Warm-up length in epochs (fractions allowed), at most `epochs`; default 0.
        #[serde(default)]
        warmup_epochs: f64,
        /// The rate the linear warm-up starts from; default 0.
        #[serde(default)]
        warmup_lr: f64,
    },
    /// Multiply by `gamma` every `step_epochs` epochs.
    Step {
        /// Peak learning rate.
        lr: f64,
        /// Epochs between decays, at least 1.
        step_epochs: usize,
        /// Decay factor, positive; default 0.1.
        #[serde(default = "default_gamma")]
        gamma: f64,
        /// Warm-up length in epochs (fractions allowed), at most `epochs`; default 0.
        #[serde(default)]
        warmup_epochs: f64,
        /// The rate the linear warm-up starts from; default 0.
        #[serde(default)]
        warmup_lr: f64,
    },
    /// Multiply by `gamma` at each milestone epoch.
    #[serde(rename = "multistep")]
    MultiStep {
        /// Peak learning rate.
        lr: f64,
        /// Epochs at which the rate decays, strictly increasing.
        milestones: Vec<usize>,
        /// Decay factor, positive; default 0.1.
        #[serde(default = "default_gamma")]
        gamma: f64,
        /// Warm-up length in epochs (fractions allowed), at most `epochs`; default 0.
        #[serde(default)]
        warmup_epochs: f64,
        /// The rate the linear warm-up starts from; default 0.
        #[serde(default)]
        warmup_lr: f64,
    },
    /// `lr` throughout (after the warm-up).
    Constant {
        /// Peak learning rate.
        lr: f64,
        /// Warm-up length in epochs (fractions allowed), at most `epochs`; default 0.
        #[serde(default)]
        warmup_epochs: f64,
        /// The rate the linear warm-up starts from; default 0.
        #[serde(default)]
        warmup_lr: f64,
    },
}

/// PyTorch `StepLR`'s and the official recipe's decay rate.
fn default_gamma() -> f64 {
    0.1
}

/// A schedule that cannot be built; the text names the offending field.
#[derive(Debug, Error, Clone, PartialEq)]
#[error("invalid learning-rate schedule: {0}")]
pub struct ScheduleError(String);

/// A schedule resolved to iterations; [`LrSchedule::lr`] gives the rate of any iteration.
#[derive(Clone, Debug, PartialEq)]
pub struct LrSchedule {
    lr: f64,
    warmup_lr: f64,
    warmup_iters: usize,
    total_iters: usize,
    decay: Decay,
}

#[derive(Clone, Debug, PartialEq)]
enum Decay {
    Cosine { min_lr: f64 },
    Step { every: usize, gamma: f64 },
    MultiStep { milestones: Vec<usize>, gamma: f64 },
    Constant,
}

impl ScheduleConfig {
    /// The peak learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            ScheduleConfig::Cosine { lr, .. }
            | ScheduleConfig::Step { lr, .. }
            | ScheduleConfig::MultiStep { lr, .. }
            | ScheduleConfig::Constant { lr, .. } => *lr,
        }
    }

    /// Sets the peak learning rate.
    pub fn set_lr(&mut self, value: f64) {
        match self {
            ScheduleConfig::Cosine { lr, .. }
            | ScheduleConfig::Step { lr, .. }
            | ScheduleConfig::MultiStep { lr, .. }
            | ScheduleConfig::Constant { lr, .. } => *lr = value,
        }
    }

    /// Resolves epochs to iterations for a run of `epochs` epochs of `iters_per_epoch` steps.
    pub fn build(
        &self,
        epochs: usize,
        iters_per_epoch: usize,
    ) -> Result<LrSchedule, ScheduleError> {
        if epochs == 0 || iters_per_epoch == 0 {
            return Err(ScheduleError(format!(
                "need at least one epoch and one iteration per epoch, got {epochs} × {iters_per_epoch}"
            )));
        }
        // First: the other checks compare against lr, and would blame them for a bad lr.
        let lr = self.lr();
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(ScheduleError(format!(
                "lr must be finite and non-negative, got {lr}"
            )));
        }
        let (lr, warmup_epochs, warmup_lr, decay) = match self {
            ScheduleConfig::Cosine {
                lr,
                min_lr,
                warmup_epochs,
                warmup_lr,
            } => {
                if !(min_lr.is_finite() && (0.0..=*lr).contains(min_lr)) {
                    return Err(ScheduleError(format!(
                        "min_lr must be in [0, lr = {lr}], got {min_lr}"
                    )));
                }
                (
                    *lr,
                    *warmup_epochs,
                    *warmup_lr,
                    Decay::Cosine { min_lr: *min_lr },
                )
            }
            ScheduleConfig::Step {
                lr,
                step_epochs,
                gamma,
                warmup_epochs,
                warmup_lr,
            } => {
                if *step_epochs == 0 {
                    return Err(ScheduleError("step_epochs must be at least 1".into()));
                }
                let decay = Decay::Step {
                    every: step_epochs * iters_per_epoch,
                    gamma: check_gamma(*gamma)?,
                };
                (*lr, *warmup_epochs, *warmup_lr, decay)
            }
            ScheduleConfig::MultiStep {
                lr,
                milestones,
                gamma,
                warmup_epochs,
                warmup_lr,
            } => {
                if !milestones.windows(2).all(|w| w[0] < w[1]) {
                    return Err(ScheduleError(format!(
                        "milestones must be strictly increasing, got {milestones:?}"
                    )));
                }
                let decay = Decay::MultiStep {
                    milestones: milestones.iter().map(|m| m * iters_per_epoch).collect(),
                    gamma: check_gamma(*gamma)?,
                };
                (*lr, *warmup_epochs, *warmup_lr, decay)
            }
            ScheduleConfig::Constant {
                lr,
                warmup_epochs,
                warmup_lr,
            } => (*lr, *warmup_epochs, *warmup_lr, Decay::Constant),
        };
        if !(warmup_lr.is_finite() && warmup_lr >= 0.0) {
            return Err(ScheduleError(format!(
                "warmup_lr must be finite and non-negative, got {warmup_lr}"
            )));
        }
        if !(warmup_epochs.is_finite() && (0.0..=epochs as f64).contains(&warmup_epochs)) {
            return Err(ScheduleError(format!(
                "warmup_epochs must be in [0, epochs = {epochs}], got {warmup_epochs}"
            )));
        }
        Ok(LrSchedule {
            lr,
            warmup_lr,
            // timm/official: int(warmup_epochs * iters_per_epoch).
            warmup_iters: (warmup_epochs * iters_per_epoch as f64) as usize,
            total_iters: epochs * iters_per_epoch,
            decay,
        })
    }
}

fn check_gamma(gamma: f64) -> Result<f64, ScheduleError> {
    if gamma.is_finite() && gamma > 0.0 {
        Ok(gamma)
    } else {
        Err(ScheduleError(format!(
            "gamma must be finite and positive, got {gamma}"
        )))
    }
}

impl LrSchedule {
    /// The learning rate of global iteration `it` (0-based), by the formulas in the module doc.
    pub fn lr(&self, it: usize) -> f32 {
        if it < self.warmup_iters {
            let slope = (self.lr - self.warmup_lr) / self.warmup_iters as f64;
            return (self.warmup_lr + it as f64 * slope) as f32;
        }
        let lr = match &self.decay {
            Decay::Cosine { min_lr } if it < self.total_iters => {
                let phase = std::f64::consts::PI * it as f64 / self.total_iters as f64;
                min_lr + 0.5 * (self.lr - min_lr) * (1.0 + phase.cos())
            }
            Decay::Cosine { min_lr } => *min_lr,
            Decay::Step { every, gamma } => self.lr * gamma.powi((it / every) as i32),
            Decay::MultiStep { milestones, gamma } => {
                let passed = milestones.partition_point(|&m| m <= it);
                self.lr * gamma.powi(passed as i32)
            }
            Decay::Constant => self.lr,
        };
        lr as f32
    }

    /// Warm-up length in iterations: ⌊`warmup_epochs` · `iters_per_epoch`⌋.
    pub fn warmup_iters(&self) -> usize {
        self.warmup_iters
    }

    /// Iterations in the run: `epochs` · `iters_per_epoch`.
    pub fn total_iters(&self) -> usize {
        self.total_iters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine() -> LrSchedule {
        ScheduleConfig::Cosine {
            lr: 0.1,
            min_lr: 1e-3,
            warmup_epochs: 2.0,
            warmup_lr: 1e-4,
        }
        .build(10, 100)
        .unwrap()
    }

    /// Expected values from a transcription of timm's `CosineLRScheduler._get_lr`
    /// (`t_in_epochs=False`, `warmup_prefix=False`, `cycle_limit=1`) with
    /// base 0.1, lr_min 1e-3, warmup_t 200, warmup_lr_init 1e-4, t_initial 1000:
    ///
    /// ```python
    /// if t < warmup_t: lr = warmup_lr_init + t * (base - warmup_lr_init) / warmup_t
    /// elif t < t_initial: lr = lr_min + 0.5 * (base - lr_min) * (1 + math.cos(math.pi * t / t_initial))
    /// else: lr = lr_min
    /// ```
    #[test]
    fn cosine_matches_timm_at_key_points() {
        let s = cosine();
        assert_eq!((s.warmup_iters(), s.total_iters()), (200, 1000));
        let want = [
            (0, 0.0001),
            (100, 0.05005000000000001),
            (199, 0.09950050000000002),
            (200, 0.0905463412215599),
            (500, 0.0505),
            (999, 0.0010002442725080185),
            (1000, 0.001),
            (5000, 0.001),
        ];
        for (it, lr) in want {
            assert_eq!(s.lr(it), lr as f32, "iteration {it}");
        }
    }

    #[test]
    fn cosine_rises_through_warm_up_then_never_rises() {
        let s = cosine();
        let lrs: Vec<f32> = (0..=1000).map(|it| s.lr(it)).collect();
        assert!(lrs[..200].windows(2).all(|w| w[0] < w[1]));
        assert!(lrs[200..].windows(2).all(|w| w[0] >= w[1]));
        assert!(lrs.iter().all(|&lr| (1e-4..=0.1).contains(&lr)));
    }

    #[test]
    fn cosine_without_warm_up_starts_at_lr() {
        let config: ScheduleConfig =
            serde_json::from_str(r#"{"schedule": "cosine", "lr": 0.2}"#).unwrap();
        let s = config.build(4, 25).unwrap();
        assert_eq!(s.lr(0), 0.2);
        assert_eq!(s.lr(50), 0.1);
        assert_eq!(s.lr(100), 0.0);
    }

    #[test]
    fn fractional_warm_up_truncates_like_the_official_code() {
        let config: ScheduleConfig =
            serde_json::from_str(r#"{"schedule": "constant", "lr": 0.4, "warmup_epochs": 0.5}"#)
                .unwrap();
        let s = config.build(3, 7).unwrap();
        // int(0.5 * 7) = 3 iterations from 0 to 0.4.
        assert_eq!(s.warmup_iters(), 3);
        let lrs: Vec<f32> = (0..5).map(|it| s.lr(it)).collect();
        assert_eq!(lrs, [0.0, 0.4 / 3.0, 0.8 / 3.0, 0.4, 0.4]);
    }

    #[test]
    fn step_and_multistep_decay_at_epoch_boundaries() {
        let step: ScheduleConfig = serde_json::from_str(
            r#"{"schedule": "step", "lr": 1.0, "step_epochs": 30, "warmup_epochs": 1}"#,
        )
        .unwrap();
        let s = step.build(90, 10).unwrap();
        let at = |epoch: usize| s.lr(epoch * 10);
        assert_eq!(s.lr(0), 0.0);
        assert_eq!(s.lr(5), 0.5);
        assert_eq!((at(1), at(29), s.lr(299)), (1.0, 1.0, 1.0));
        assert_eq!((at(30), at(59), at(60)), (0.1, 0.1, 0.01f64 as f32));

        let multi: ScheduleConfig = serde_json::from_str(
            r#"{"schedule": "multistep", "lr": 1.0, "milestones": [2, 5], "gamma": 0.5}"#,
        )
        .unwrap();
        let s = multi.build(8, 4).unwrap();
        let lrs: Vec<f32> = (0..32).step_by(4).map(|it| s.lr(it)).collect();
        assert_eq!(lrs, [1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25]);
        assert_eq!((s.lr(7), s.lr(8)), (1.0, 0.5));
    }

    #[test]
    fn configs_reject_unknown_fields_and_bad_values() {
        let unknown = serde_json::from_str::<ScheduleConfig>(
            r#"{"schedule": "cosine", "lr": 0.1, "gamma": 0.5}"#,
        )
        .unwrap_err();
        assert!(unknown.to_string().contains("gamma"), "{unknown}");
        let bad = [
            r#"{"schedule": "cosine", "lr": 0.1, "min_lr": 0.2}"#,
            r#"{"schedule": "cosine", "lr": 0.1, "warmup_epochs": 11}"#,
            r#"{"schedule": "step", "lr": 0.1, "step_epochs": 0}"#,
            r#"{"schedule": "multistep", "lr": 0.1, "milestones": [3, 3]}"#,
            r#"{"schedule": "constant", "lr": -1}"#,
        ];
        for json in bad {
            let config: ScheduleConfig = serde_json::from_str(json).unwrap();
            assert!(config.build(10, 5).is_err(), "{json}");
        }
        let constant: ScheduleConfig =
            serde_json::from_str(r#"{"schedule": "constant", "lr": 0.1}"#).unwrap();
        assert!(constant.build(0, 5).is_err());
    }

    #[test]
    fn a_negative_lr_is_blamed_on_lr_not_min_lr() {
        let config: ScheduleConfig =
            serde_json::from_str(r#"{"schedule": "cosine", "lr": -0.1}"#).unwrap();
        let err = config.build(10, 5).unwrap_err().to_string();
        assert!(err.contains(": lr must be finite"), "{err}");
        assert!(!err.contains("min_lr"), "{err}");
    }
}
