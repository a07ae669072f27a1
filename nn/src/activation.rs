//! Per-site activations: ReLU6, identity, and the gated activation of DepthShrinker's search.

use depthshrink_autograd::{Var, ops};
use depthshrink_tensor::{Result, TensorError};
use serde::{Deserialize, Serialize};

use crate::module::Ctx;

/// What one activation site computes. Every site has an activation index (stem 0, blocks
/// 1..=B, head B+1); an inverted-residual block's two sites share their block's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Act {
    Relu6,
    Identity,
    /// ReLU6 or identity as this step's [`Gates`] decide for `index`, with the
    /// straight-through gradient to the gate.
    Gated {
        index: usize,
    },
}

/// The search stage's state for one forward pass: one gate per activation index and the hard
/// decision of this iteration (`removed[i]`: site i runs as identity).
pub struct Gates {
    pub vars: Vec<Var>,
    pub removed: Vec<bool>,
}

impl Act {
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
