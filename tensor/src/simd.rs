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

#[cfg(target_arch = "x86_64")]
/// False when `DEPTHSHRINK_NO_SIMD` is set (to anything but 0).
fn enabled() -> bool {
    std::env::var_os("DEPTHSHRINK_NO_SIMD").is_none_or(|v| v == "0")
}
