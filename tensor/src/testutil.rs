//! Helpers shared by the kernel tests.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A deterministic RNG for a test, so a failure reproduces.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `n` values uniform in [-1, 1).
pub fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// max |a − e| / max(max |e|, 1e-6): the error relative to the expected values' scale, which stays
/// meaningful where individual expected values cross zero.
pub fn rel_err(actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(actual.len(), expected.len(), "length mismatch");
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let diff = actual
        .iter()
        .zip(expected)
        .fold(0f32, |m, (a, e)| m.max((a - e).abs()));
    diff / scale
}

/// Panics with `what` and the error when `rel_err(actual, expected) > tol` (or on NaN).
#[track_caller]
pub fn assert_close(actual: &[f32], expected: &[f32], tol: f32, what: &str) {
    let err = rel_err(actual, expected);
    assert!(err <= tol, "{what}: relative error {err:e} > {tol:e}");
}

/// Runs `f` once at each SIMD level kernels can run at here (lowest first), with that level set
/// for the kernels called from this thread ([`crate::simd::with_level`]).
pub fn for_each_level(mut f: impl FnMut(crate::simd::Level)) {
    for level in crate::simd::supported_levels() {
        crate::simd::with_level(level, || f(level));
    }
}
