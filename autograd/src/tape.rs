use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use depthshrink_tensor::{Result, Tensor, TensorError, elementwise};

/// Index of a value on its tape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VarId(usize);

/// The backward half of a recorded op: given the gradient of its output, the gradients of its
/// inputs (in the order they were recorded). `needs[i]` is false for inputs off the tape, whose
/// gradient the op may skip computing (e.g. a conv's input gradient for the first layer).
pub trait Backward: Send {
    /// `dy` has the op's output shape; the result holds one entry per recorded input, `None`
    /// where `needs` is false or the input gets no gradient.
    fn backward(&self, dy: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>>;
}

struct Node {
    output: VarId,
    inputs: Vec<Option<VarId>>,
    op: Box<dyn Backward>,
}

#[derive(Default)]
struct Inner {
    nodes: Vec<Node>,
    is_leaf: Vec<bool>,
}

/// The record of one forward pass. Cheap to clone (shared handle); make a new one per step.
#[derive(Clone, Default)]
pub struct Tape(Arc<Mutex<Inner>>);

impl Tape {
    /// An empty tape.
    pub fn new() -> Tape {
        Tape::default()
    }

    /// The record; a panic while it was held leaves it usable (it is only ever appended to).
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn new_id(&self, leaf: bool) -> VarId {
        let mut inner = self.inner();
        inner.is_leaf.push(leaf);
        VarId(inner.is_leaf.len() - 1)
    }

    /// Number of recorded ops (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.inner().nodes.len()
    }

    /// True when no op has been recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A tensor, optionally tracked on a tape.
#[derive(Clone)]
pub struct Var {
    value: Tensor,
    tracked: Option<(Tape, VarId)>,
}

impl Var {
    /// A value no gradient flows to (inputs, labels, inference).
    pub fn constant(value: Tensor) -> Var {
        Var {
            value,
            tracked: None,
        }
    }

    /// A value whose gradient [`Var::backward`] reports (parameters, or inputs under test).
    pub fn leaf(tape: &Tape, value: Tensor) -> Var {
        Var {
            value,
            tracked: Some((tape.clone(), tape.new_id(true))),
        }
    }

    /// The tensor this value holds.
    pub fn value(&self) -> &Tensor {
        &self.value
    }

    /// The tensor, dropping the tape handle.
    pub fn into_value(self) -> Tensor {
        self.value
    }

    /// The tensor's shape.
    pub fn shape(&self) -> &[usize] {
        self.value.shape()
    }

    /// The value's index on its tape; `None` for a constant or an op result off any tape.
    pub fn id(&self) -> Option<VarId> {
        self.tracked.as_ref().map(|(_, id)| *id)
    }

    /// True when the value is on a tape (a leaf, or computed from one).
    pub fn is_tracked(&self) -> bool {
        self.tracked.is_some()
    }

    /// The result of an op: records `make_backward()` on the tape of the first tracked input,
    /// or returns an untracked value (without calling `make_backward`) when no input is tracked.
    pub fn from_op<B: Backward + 'static>(
        value: Tensor,
        inputs: &[&Var],
        make_backward: impl FnOnce() -> B,
    ) -> Var {
        let Some(tape) = inputs
            .iter()
            .find_map(|v| v.tracked.as_ref().map(|(t, _)| t.clone()))
        else {
            return Var::constant(value);
        };
        let output = tape.new_id(false);
        let node = Node {
            output,
            inputs: inputs.iter().map(|v| v.id()).collect(),
            op: Box::new(make_backward()),
        };
        tape.inner().nodes.push(node);
        Var {
            value,
            tracked: Some((tape, output)),
        }
    }

    /// Backpropagates from a one-element value (a loss), seeding its gradient with 1.
    pub fn backward(&self) -> Result<Gradients> {
        if self.value.numel() != 1 {
            return Err(TensorError::shape(
                "backward",
                format!("needs a scalar, got shape {:?}", self.shape()),
            ));
        }
        self.backward_with(Tensor::full(self.shape(), 1.0))
    }

    /// Backpropagates an explicit upstream gradient `dy` (of this value's shape).
    pub fn backward_with(&self, dy: Tensor) -> Result<Gradients> {
        self.value.expect_same_shape("backward_with", &dy)?;
        let Some((tape, root)) = &self.tracked else {
            return Err(TensorError::argument(
                "backward",
                "the value is not on a tape (no input was a leaf)",
            ));
        };
        let inner = tape.inner();
        let mut grads: Vec<Option<Tensor>> = vec![None; inner.is_leaf.len()];
        grads[root.0] = Some(dy);
        for node in inner.nodes.iter().rev() {
            // An op's output is never a leaf, so its gradient can be dropped once consumed.
            let Some(dy) = grads[node.output.0].take() else {
                continue;
            };
            let needs: Vec<bool> = node.inputs.iter().map(Option::is_some).collect();
            let dxs = node.op.backward(&dy, &needs)?;
            for (input, dx) in node.inputs.iter().zip(dxs) {
                if let (Some(id), Some(dx)) = (input, dx) {
                    accumulate(&mut grads[id.0], dx)?;
                }
            }
        }
        let leaves = grads
            .into_iter()
            .enumerate()
            .filter_map(|(i, g)| g.filter(|_| inner.is_leaf[i]).map(|g| (VarId(i), g)))
            .collect();
        Ok(Gradients(leaves))
    }
}

fn accumulate(slot: &mut Option<Tensor>, dx: Tensor) -> Result<()> {
    match slot {
        None => *slot = Some(dx),
        Some(sum) => elementwise::add_assign(sum, &dx)?,
    }
    Ok(())
}

/// The gradients of the leaves a backward pass reached.
#[derive(Default)]
pub struct Gradients(HashMap<VarId, Tensor>);

impl Gradients {
    /// The gradient of `leaf`, or `None` when the loss does not depend on it.
    pub fn get(&self, leaf: &Var) -> Option<&Tensor> {
        leaf.id().and_then(|id| self.0.get(&id))
    }

    /// Takes the gradient of `leaf` out (no copy).
    pub fn remove(&mut self, leaf: &Var) -> Option<Tensor> {
        leaf.id().and_then(|id| self.0.remove(&id))
    }
}

impl std::fmt::Debug for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Var")
            .field("id", &self.id())
            .field("value", &self.value)
            .finish()
    }
}
