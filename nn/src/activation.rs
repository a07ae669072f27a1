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
}

impl SearchGates {
    /// Scores initialised to 0 (official), weight decay on (official: gates included).
    pub fn new(keep: usize, searchable: Vec<bool>) -> SearchGates {
        SearchGates {
            scores: Param::new(depthshrink_tensor::Tensor::zeros(&[searchable.len()]), true),
            searchable,
            keep,
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
        let scores = self.scores.bind(ctx);
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
}
