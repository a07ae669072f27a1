//! Parameters, the forward context, and the [`Module`] trait.
//!
//! Modules own plain tensors. A forward pass in training binds each parameter to a leaf on the
//! context's tape; after `backward`, [`collect_grads`] moves each leaf's gradient into its
//! [`Param`]. Names are hierarchical and follow torchvision (`features.1.conv.0.0.weight`), so
//! checkpoints interoperate with PyTorch without a translation table.

use depthshrink_autograd::{Gradients, Tape, Var};
use depthshrink_tensor::Tensor;

use crate::activation::Gates;

/// A trainable tensor, its gradient after a backward pass, and whether weight decay applies.
#[derive(Clone, Debug)]
pub struct Param {
    /// The current value.
    pub value: Tensor,
    /// The gradient from the last backward pass ([`collect_grads`]), same shape as `value`;
    /// `None` before one, after `zero_grad`, or when the loss did not depend on it.
    pub grad: Option<Tensor>,
    /// False for BN affine parameters and biases (the no-decay group).
    pub decay: bool,
    bound: Option<Var>,
}

impl Param {
    /// A parameter with no gradient yet.
    pub fn new(value: Tensor, decay: bool) -> Param {
        Param {
            value,
            grad: None,
            decay,
            bound: None,
        }
    }

    /// The parameter as an input to ops: a leaf on the tape when training, a constant otherwise.
    pub fn bind(&mut self, ctx: &Ctx) -> Var {
        match &ctx.tape {
            Some(tape) => {
                let var = Var::leaf(tape, self.value.clone());
                self.bound = Some(var.clone());
                var
            }
            None => Var::constant(self.value.clone()),
        }
    }
}

/// Whether a forward pass trains (batch statistics, dropout, a tape) or evaluates.
pub struct Ctx {
    /// True in training mode (batch statistics, dropout).
    pub train: bool,
    tape: Option<Tape>,
    /// Seed of this step's dropout masks.
    pub dropout_seed: u64,
    /// The search stage's gates, read by [`crate::activation::Act::Gated`] sites.
    pub gates: Option<Gates>,
}

impl Ctx {
    /// Training mode: records on a fresh tape, BN uses and updates batch statistics.
    pub fn train(dropout_seed: u64) -> Ctx {
        Ctx {
            train: true,
            tape: Some(Tape::new()),
            dropout_seed,
            gates: None,
        }
    }

    /// Evaluation mode: no tape, BN uses running statistics, dropout is off.
    pub fn eval() -> Ctx {
        Ctx {
            train: false,
            tape: None,
            dropout_seed: 0,
            gates: None,
        }
    }

    /// Training-mode layers but no tape: e.g. recomputing BN statistics without gradients.
    pub fn train_no_grad(dropout_seed: u64) -> Ctx {
        Ctx {
            train: true,
            tape: None,
            dropout_seed,
            gates: None,
        }
    }

    /// The tape parameters are bound on; `None` in evaluation and [`Ctx::train_no_grad`].
    pub fn tape(&self) -> Option<&Tape> {
        self.tape.as_ref()
    }
}

/// Mutable access to one named tensor of a module.
pub enum Entry<'a> {
    /// A trainable parameter.
    Param(&'a mut Param),
    /// Non-trainable state saved in checkpoints (BN running statistics).
    Buffer(&'a mut Tensor),
}

/// A network component with named parameters and buffers.
pub trait Module {
    /// Calls `f` with every parameter and buffer, named `prefix` + the local name.
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, Entry<'_>));
}

/// Joins a hierarchical name: `join("features.1", "conv")` = `features.1.conv`.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Moves the gradient of every parameter bound in the last training forward into `Param::grad`.
pub fn collect_grads(module: &mut dyn Module, grads: &mut Gradients) {
    module.visit("", &mut |_, entry| {
        if let Entry::Param(p) = entry {
            p.grad = p.bound.take().and_then(|var| grads.remove(&var));
        }
    });
}

/// Names and tensors of every parameter and buffer, in visiting order.
pub fn state_dict(module: &mut dyn Module) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    module.visit("", &mut |name, entry| {
        let t = match entry {
            Entry::Param(p) => p.value.clone(),
            Entry::Buffer(b) => b.clone(),
        };
        out.push((name.to_string(), t));
    });
    out
}

/// Total number of trainable scalars.
pub fn num_params(module: &mut dyn Module) -> usize {
    let mut n = 0;
    module.visit("", &mut |_, entry| {
        if let Entry::Param(p) = entry {
            n += p.value.numel();
        }
    });
    n
}
