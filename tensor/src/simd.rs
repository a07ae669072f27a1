//! Runtime CPU feature detection for the hand-vectorised kernels.
//!
//! Kernels check [`avx2_fma`] once per call and otherwise run their portable path, so the crate
//! builds and passes its tests on any CPU. `DEPTHSHRINK_NO_SIMD=1` forces the portable paths
//! (used to test them on machines that do have AVX2).

use std::sync::OnceLock;

/// True when AVX2 and FMA are available and not disabled by `DEPTHSHRINK_NO_SIMD`.
pub fn avx2_fma() -> bool {
    static DETECTED: OnceLock<bool> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            enabled() && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// True when AVX-512 F is available and not disabled by `DEPTHSHRINK_NO_SIMD`.
pub fn avx512() -> bool {
    static DETECTED: OnceLock<bool> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            enabled() && is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Floats per 64-byte cache line: the step at which passes issue [`prefetch_ahead`].
pub(crate) const LINE_FLOATS: usize = 16;

/// How far ahead of each stream [`prefetch_ahead`] fetches, in floats: 2 KiB, about the latency
/// of a DRAM read at an elementwise loop's pace. The hardware prefetchers stop at every 4 KiB
/// page, which is one 32×32 plane of f32: a pass that walks plane by plane would otherwise start
/// each page cold.
const PREFETCH_AHEAD: usize = 512;

/// Hints into L1 the cache line [`PREFETCH_AHEAD`] floats past the start of each stream (once
/// per distinct stream: callers may pass one slice in several roles).
#[inline(always)]
pub(crate) fn prefetch_ahead(streams: &[&[f32]]) {
    for (i, s) in streams.iter().enumerate() {
        if !streams[..i].iter().any(|t| t.as_ptr() == s.as_ptr()) {
            prefetch_line::<true>(s.as_ptr().wrapping_add(PREFETCH_AHEAD));
        }
    }
}

/// Hints the cache line at `p` into L1 (`INTO_L1`) or L2. Only a hint: `p` may lie past the end
/// of its allocation, nothing is read through it.
#[inline(always)]
pub(crate) fn prefetch_line<const INTO_L1: bool>(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _MM_HINT_T1, _mm_prefetch};
        // SAFETY: prefetching never faults, whatever the address.
        unsafe {
            if INTO_L1 {
                _mm_prefetch::<_MM_HINT_T0>(p.cast())
            } else {
                _mm_prefetch::<_MM_HINT_T1>(p.cast())
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(target_arch = "x86_64")]
/// False when `DEPTHSHRINK_NO_SIMD` is set (to anything but 0).
fn enabled() -> bool {
    std::env::var_os("DEPTHSHRINK_NO_SIMD").is_none_or(|v| v == "0")
}
