//! The one SIMD switch every hand-vectorised kernel honours, plus cache-line prefetch hints.
//!
//! A [`Level`] names an instruction set: [`Level::Portable`] (plain loops, any CPU),
//! [`Level::Avx2`] (AVX2 + FMA) or [`Level::Avx512`] (AVX-512 F on top). The level kernels run at
//! is the highest this CPU supports, capped by the environment variable
//! `DEPTHSHRINK_SIMD=portable|avx2|avx512` (`DEPTHSHRINK_NO_SIMD=1` is an alias of `portable`),
//! and on one thread, for the length of a call, lowered further by [`with_level`] (the tests run
//! every kernel at each of [`supported_levels`] that way).
//!
//! Each public kernel reads [`level`] once, on the calling thread, and hands that value down to
//! every task it runs on the rayon pool, so one call runs at one level throughout, whichever
//! threads do the work. Below AVX-512 the GEMM runs the backend crate (`gemm`), which picks its
//! own instructions; the level decides which of this crate's kernels run.

use std::cell::Cell;
use std::sync::OnceLock;

/// An instruction-set level of the hand-vectorised kernels, ordered from lowest to highest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Plain loops that LLVM vectorises for the target's baseline (SSE2 on x86-64).
    Portable,
    /// AVX2 and FMA: 8-lane kernels.
    Avx2,
    /// AVX-512 F (with AVX2 and FMA): 16-lane kernels, this crate's own GEMM kernel.
    Avx512,
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 3] = [Level::Portable, Level::Avx2, Level::Avx512];

    /// The name `DEPTHSHRINK_SIMD` takes for this level.
    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    /// The level called `name` (as [`Level::name`] spells it, any case), if there is one.
    pub fn parse(name: &str) -> Option<Level> {
        Level::ALL
            .into_iter()
            .find(|l| l.name().eq_ignore_ascii_case(name.trim()))
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The highest level this CPU supports, whatever the environment says.
pub fn host_level() -> Level {
    static HOST: OnceLock<Level> = OnceLock::new();
    *HOST.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Level {
    let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    if avx2 && is_x86_feature_detected!("avx512f") {
        Level::Avx512
    } else if avx2 {
        Level::Avx2
    } else {
        Level::Portable
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Level {
    Level::Portable
}

/// The level kernels run at unless [`with_level`] lowers it: [`host_level`] capped by
/// `DEPTHSHRINK_SIMD` (and `DEPTHSHRINK_NO_SIMD`), read once per process.
pub fn default_level() -> Level {
    static DEFAULT: OnceLock<Level> = OnceLock::new();
    *DEFAULT.get_or_init(|| {
        let cap = env_cap(
            std::env::var("DEPTHSHRINK_SIMD").ok().as_deref(),
            std::env::var_os("DEPTHSHRINK_NO_SIMD").is_some_and(|v| v != "0"),
        );
        host_level().min(cap)
    })
}

/// The cap the two environment variables set; an unknown `DEPTHSHRINK_SIMD` value sets none and
/// is reported once on stderr.
fn env_cap(simd: Option<&str>, no_simd: bool) -> Level {
    let named = match simd.filter(|v| !v.trim().is_empty()) {
        None => Level::Avx512,
        Some(v) => Level::parse(v).unwrap_or_else(|| {
            eprintln!(
                "warning: DEPTHSHRINK_SIMD={v:?} is not one of portable, avx2, avx512; ignored"
            );
            Level::Avx512
        }),
    };
    if no_simd { Level::Portable } else { named }
}

thread_local! {
    /// The level [`with_level`] set for calls made on this thread, if any.
    static OVERRIDE: Cell<Option<Level>> = const { Cell::new(None) };
}

/// The level a kernel called on this thread runs at: [`default_level`], or what [`with_level`]
/// lowered it to. Public kernels read it once per call and pass it to their tasks.
pub fn level() -> Level {
    let default = default_level();
    OVERRIDE.get().map_or(default, |l| l.min(default))
}

/// Runs `f` with kernels called from this thread at `level`, capped at [`default_level`] (an
/// override can lower the level, never raise it past what the CPU and the environment allow).
/// The previous level comes back when `f` returns or panics; nested calls nest.
pub fn with_level<R>(level: Level, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Level>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.set(self.0);
        }
    }
    let _restore = Restore(OVERRIDE.replace(Some(level.min(default_level()))));
    f()
}

/// The levels kernels can run at here, lowest first: every level up to [`default_level`].
pub fn supported_levels() -> impl Iterator<Item = Level> {
    Level::ALL.into_iter().filter(|&l| l <= default_level())
}

/// True when kernels called here now run AVX2 + FMA code: `level() >= Level::Avx2`.
pub fn avx2_fma() -> bool {
    level() >= Level::Avx2
}

/// True when kernels called here now run AVX-512 code: `level() >= Level::Avx512`.
pub fn avx512() -> bool {
    level() >= Level::Avx512
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_order() {
        for l in Level::ALL {
            assert_eq!(Level::parse(l.name()), Some(l));
            assert_eq!(
                Level::parse(&format!(" {} ", l.name().to_uppercase())),
                Some(l)
            );
        }
        assert_eq!(Level::parse("sse"), None);
        assert!(Level::Portable < Level::Avx2 && Level::Avx2 < Level::Avx512);
    }

    #[test]
    fn the_environment_caps_the_level() {
        assert_eq!(env_cap(None, false), Level::Avx512);
        assert_eq!(env_cap(Some("avx2"), false), Level::Avx2);
        assert_eq!(env_cap(Some("portable"), false), Level::Portable);
        assert_eq!(env_cap(Some("avx512"), true), Level::Portable);
        assert_eq!(env_cap(Some(""), false), Level::Avx512);
        // Unknown: a warning, no cap.
        assert_eq!(env_cap(Some("avx1024"), false), Level::Avx512);
        assert!(default_level() <= host_level());
    }

    #[test]
    fn with_level_lowers_scoped_and_nested() {
        let default = level();
        for l in supported_levels() {
            with_level(l, || {
                assert_eq!(level(), l);
                // Never raised past the default, restored after a nested override.
                with_level(Level::Avx512, || assert_eq!(level(), default));
                assert_eq!(level(), l);
                // Another thread is not affected.
                let there = std::thread::spawn(level).join().unwrap();
                assert_eq!(there, default);
            });
        }
        assert_eq!(level(), default);
        let _ = std::panic::catch_unwind(|| with_level(Level::Portable, || panic!("inside")));
        assert_eq!(level(), default, "restored after a panic");
        assert_eq!(supported_levels().last(), Some(default));
        assert_eq!(avx2_fma(), default >= Level::Avx2);
        assert_eq!(avx512(), default >= Level::Avx512);
    }
}
