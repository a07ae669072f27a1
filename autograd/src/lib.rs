//! Reverse-mode automatic differentiation on a tape.
//!
//! A [`Tape`] is a list of recorded operations in execution order; [`Var::backward`] walks it
//! in reverse, so no graph search is needed. Values that are not on a tape ([`Var::constant`])
//! record nothing: inference runs the same op functions with no bookkeeping.
//!
//! One file per op family, forward and backward side by side; each op's backward struct keeps
//! the tensors it saved as fields. [`gradcheck`] compares every op against finite differences.

#![warn(missing_docs)]

mod tape;

mod activation;
mod batchnorm;
mod conv;
mod elementwise;
mod linear;
mod loss;
mod pool;

pub mod gradcheck;

pub use tape::{Backward, Gradients, Tape, Var, VarId};

/// Every differentiable op, in one namespace.
pub mod ops {
    pub use crate::activation::{gated_relu6, relu6};
    pub use crate::batchnorm::{batch_norm_eval, batch_norm_train};
    pub use crate::conv::{conv2d, conv2d_act, pad2d};
    pub use crate::elementwise::{add, clamp, pick, reshape, scale};
    pub use crate::linear::linear;
    pub use crate::loss::{cross_entropy, kl_divergence, soft_cross_entropy};
    pub use crate::pool::{dropout, global_avg_pool};
}
