//! Reverse-mode automatic differentiation on a tape.
//!
//! A [`Tape`] is a list of recorded operations in execution order; [`Var::backward`] walks it
//! in reverse, so no graph search is needed. Values that are not on a tape ([`Var::constant`])
//! record nothing: inference runs the same op functions with no bookkeeping.
//!
//! One file per op family, forward and backward side by side; each op's backward struct keeps
//! the tensors it saved as fields. [`gradcheck`] compares every op against finite differences.

mod tape;

pub mod gradcheck;

pub use tape::{Backward, Gradients, Tape, Var, VarId};
