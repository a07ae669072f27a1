//! Keyed random streams: every random choice in this crate is a pure function of its key, which
//! is what makes shuffles, augmentations and the synthetic set reproducible and resumable.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Streams for different purposes never collide because the purpose is part of the key.
#[derive(Clone, Copy)]
pub(crate) enum Purpose {
    Shuffle = 1,
    Augment = 2,
    SyntheticTrain = 3,
    SyntheticTest = 4,
}

/// A ChaCha8 generator keyed by (purpose, a, b, c); ChaCha is a PRF, so distinct keys give
/// independent streams without any seed mixing.
pub(crate) fn keyed(purpose: Purpose, a: u64, b: u64, c: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    for (chunk, word) in key.chunks_exact_mut(8).zip([purpose as u64, a, b, c]) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}
