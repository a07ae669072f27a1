//! Per-site activations: ReLU6, identity, and the gated activation of DepthShrinker's search.

use depthshrink_autograd::{Var, ops};
use depthshrink_tensor::{Result, TensorError};
use serde::{Deserialize, Serialize};

use crate::module::{Ctx, Param};

/// What one activation site computes. Every site has an activation index (stem 0, blocks
/// 1..=B, head B+1); an inverted-residual block's two sites share their block's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Act {
    /// min(max(x, 0), 6).
    Relu6,
    /// The input unchanged (a removed activation).
    Identity,
    /// ReLU6 or identity as this step's [`Gates`] decide for `index`, with the
    /// straight-through gradient to the gate.
    Gated {
        /// The site's activation index.
        index: usize,
    },
}

/// The search stage's state for one forward pass: one gate per activation index and the hard
/// decision of this iteration (`removed[i]`: site i runs as identity).
pub struct Gates {
    /// One one-element gate per activation index, on the step's tape.
    pub vars: Vec<Var>,
    /// Per activation index: true when its sites run as identity this iteration.
    pub removed: Vec<bool>,
}

impl Act {
    /// Applies the activation to `x`; [`Act::Gated`] errors when `ctx` carries no gates.
    pub fn apply(self, x: &Var, ctx: &Ctx) -> Result<Var> {
        match self {
            Act::Relu6 => ops::relu6(x),
            Act::Identity => Ok(x.clone()),
            Act::Gated { index } => {
                let gates = ctx.gates.as_ref().ok_or_else(|| {
                    TensorError::argument(
                        "gated activation",
                        "the forward context carries no gates",
                    )
                })?;
                ops::gated_relu6(x, &gates.vars[index], gates.removed[index])
            }
        }
    }
}

/// The search stage's learnable gate scores, one per activation index (depthshrinker.md §3):
/// each iteration keeps the `keep` indices with the smallest score (ties by index); indices that
/// are not `searchable` are always kept. Held by the network (as parameter `search.gates`) so
/// the optimiser, checkpoints and exact resume treat the scores like any weight.
#[derive(Clone, Debug)]
pub struct SearchGates {
    /// One score per activation index, shape `[num_acts]`; smaller scores are kept first.
    pub scores: Param,
    /// Per activation index: false for indices that are always kept.
    pub searchable: Vec<bool>,
    /// Activation indices kept per iteration (searchable or not).
    pub keep: usize,
    /// Where a score receives the task's gradient.
    pub gradient: GateGradient,
}

/// Where the straight-through estimator passes the task's gradient to a gate score s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateGradient {
    /// At every score: the gate is s itself. A score that leaves [0, 1] keeps learning, so a
    /// block whose removal hurts is pulled back to "keep" however far the latency term or an
    /// early step pushed it.
    #[default]
    Everywhere,
    /// Only strictly inside 0 < s < 1, the gate being clip(s, 0, 1) as the paper and the
    /// official code write it (PyTorch's clamp passes no gradient at the bounds). From the
    /// official initial score 0 the task's gradient never reaches a score until the latency
    /// term has moved it into (0, 1), and a score pushed below 0 stops learning for good.
    Clipped,
}

impl SearchGates {
    /// Scores initialised to 0 (official), weight decay on (official: gates included), the
    /// gradient everywhere.
    pub fn new(keep: usize, searchable: Vec<bool>) -> SearchGates {
        SearchGates {
            scores: Param::new(depthshrink_tensor::Tensor::zeros(&[searchable.len()]), true),
            searchable,
            keep,
            gradient: GateGradient::default(),
        }
    }

    /// This iteration's keep list (true = ReLU6 kept).
    pub fn decision(&self) -> Vec<bool> {
        keep_smallest(self.scores.value.data(), self.keep, &self.searchable)
    }

    /// The gates of one forward pass: this iteration's hard decision, and one gate per index
    /// picked from the bound scores (so every site's gradient reaches the one score tensor).
    pub fn bind(&mut self, ctx: &Ctx) -> Result<Gates> {
        let removed = self.decision().into_iter().map(|k| !k).collect();
        let mut scores = self.scores.bind(ctx);
        if self.gradient == GateGradient::Clipped {
            scores = ops::clamp(&scores, 0.0, 1.0)?;
        }
        let vars = (0..self.searchable.len())
            .map(|i| ops::pick(&scores, i))
            .collect::<Result<_>>()?;
        Ok(Gates { vars, removed })
    }
}

/// Keeps every non-searchable index, then the smallest-scored searchable ones (ties by index)
/// until `keep` indices are kept in all.
pub fn keep_smallest(scores: &[f32], keep: usize, searchable: &[bool]) -> Vec<bool> {
    let mut kept: Vec<bool> = searchable.iter().map(|&s| !s).collect();
    let fixed = kept.iter().filter(|&&k| k).count();
    let mut order: Vec<usize> = (0..scores.len()).filter(|&i| searchable[i]).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    for &i in order.iter().take(keep.saturating_sub(fixed)) {
        kept[i] = true;
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_smallest_breaks_ties_by_index_and_keeps_fixed_sites() {
        let all = [true; 5];
        let scores = [0.5, 0.1, 0.5, 0.1, 0.9];
        assert_eq!(
            keep_smallest(&scores, 3, &all),
            [true, true, false, true, false]
        );
        // All tied (the initial state): the first k.
        assert_eq!(
            keep_smallest(&[0.0; 5], 2, &all),
            [true, true, false, false, false]
        );
        // Index 4 is not searchable: always kept, and it takes one of the k places.
        let searchable = [true, true, true, true, false];
        assert_eq!(
            keep_smallest(&scores, 3, &searchable),
            [false, true, false, true, true]
        );
        // k smaller than the fixed sites: only those.
        assert_eq!(
            keep_smallest(&scores, 0, &searchable),
            [false, false, false, false, true]
        );
        assert_eq!(keep_smallest(&scores, 9, &all), [true; 5]);
    }

    /// The gradient a score gets through one removed site, under each [`GateGradient`]: the
    /// STE's Σ (x − ReLU6(x))·dy everywhere, or only strictly inside (0, 1) when clipped.
    #[test]
    fn clipped_gates_learn_only_inside_the_unit_interval() {
        use crate::module::{Entry, Module, collect_grads};
        use depthshrink_tensor::Tensor;
        struct Scores<'a>(&'a mut Param);
        impl Module for Scores<'_> {
            fn visit(&mut self, _: &str, f: &mut dyn FnMut(&str, Entry<'_>)) {
                f("scores", Entry::Param(self.0));
            }
        }
        let x = Tensor::from_vec(&[1, 1, 1, 2], vec![-1.0, 8.0]).unwrap();
        for (gradient, score, want) in [
            (GateGradient::Everywhere, -0.5, 1.0),
            (GateGradient::Everywhere, 0.0, 1.0),
            (GateGradient::Everywhere, 0.5, 1.0),
            (GateGradient::Clipped, 0.5, 1.0),
            (GateGradient::Clipped, 0.0, 0.0),
            (GateGradient::Clipped, -0.5, 0.0),
            (GateGradient::Clipped, 1.5, 0.0),
        ] {
            let mut gates = SearchGates::new(0, vec![true]);
            gates.gradient = gradient;
            gates.scores.value = Tensor::from_vec(&[1], vec![score]).unwrap();
            let ctx = Ctx::train(0);
            let bound = gates.bind(&ctx).unwrap();
            assert_eq!(bound.removed, [true]);
            let xv = Var::constant(x.clone());
            let y = ops::gated_relu6(&xv, &bound.vars[0], true).unwrap();
            let mut grads = y.backward_with(Tensor::full(&[1, 1, 1, 2], 1.0)).unwrap();
            drop((y, bound, ctx));
            collect_grads(&mut Scores(&mut gates.scores), &mut grads);
            // (−1 − 0)·1 + (8 − 6)·1 = 1.
            let got = gates.scores.grad.as_ref().map_or(0.0, |g| g.data()[0]);
            assert_eq!(got, want, "{gradient:?} at s = {score}");
        }
    }
}
