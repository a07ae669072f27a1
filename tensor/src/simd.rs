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
        if std::env::var_os("DEPTHSHRINK_NO_SIMD").is_some_and(|v| v != "0") {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}
