//! Which instruction set the kernels use, chosen at run time.
//!
//! [`Isa::detect`] picks the best level this CPU supports (AVX-512F, else AVX2 + FMA, else
//! portable code), once per process, and logs the choice. The environment variable
//! `TESSERA_KERNELS_ISA` (`portable`, `avx2`, `avx512`) overrides it, e.g. to force the
//! portable path in tests. An [`Isa`] value can only be obtained for a level the CPU supports,
//! which is what makes dispatching to `#[target_feature]` code sound.
//!
//! Rejected alternative: compile-time `target-cpu=native`. Binaries would crash on older
//! CPUs, and tests could not exercise every level on one machine.

use std::fmt;
use std::sync::OnceLock;

use crate::error::{KernelError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Level {
    Portable,
    Avx2,
    Avx512,
}

/// An instruction-set level supported by this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Isa(pub(crate) Level);

impl Isa {
    /// Plain Rust, auto-vectorized for the baseline target; always available.
    pub const PORTABLE: Isa = Isa(Level::Portable);

    /// The level the kernels use by default: `TESSERA_KERNELS_ISA` if set (an unsupported
    /// value falls back to detection, with a warning), else the best supported level. Detected
    /// and logged once per process.
    pub fn detect() -> Isa {
        static CHOSEN: OnceLock<Isa> = OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let best = *Isa::available().last().unwrap_or(&Isa::PORTABLE);
            let chosen = match std::env::var("TESSERA_KERNELS_ISA") {
                Ok(name) => match Isa::from_name(&name) {
                    Ok(isa) => isa,
                    Err(e) => {
                        tracing::warn!(%e, "ignoring TESSERA_KERNELS_ISA");
                        best
                    }
                },
                Err(_) => best,
            };
            tracing::info!(isa = %chosen, best = %best, "tessera-kernels instruction set");
            chosen
        })
    }

    /// Every level this CPU supports, lowest first.
    pub fn available() -> Vec<Isa> {
        let mut out = vec![Isa::PORTABLE];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                out.push(Isa(Level::Avx2));
                if std::arch::is_x86_feature_detected!("avx512f") {
                    out.push(Isa(Level::Avx512));
                }
            }
        }
        out
    }

    /// The level named `name` (`portable`, `avx2`, `avx512`), if this CPU supports it.
    pub fn from_name(name: &str) -> Result<Isa> {
        let level = match name.trim().to_ascii_lowercase().as_str() {
            "portable" | "generic" => Level::Portable,
            "avx2" => Level::Avx2,
            "avx512" | "avx512f" => Level::Avx512,
            other => {
                return Err(KernelError::UnsupportedIsa {
                    name: other.to_string(),
                    reason: "expected portable, avx2 or avx512".into(),
                });
            }
        };
        Isa::available().into_iter().find(|i| i.0 == level).ok_or_else(|| {
            KernelError::UnsupportedIsa {
                name: name.to_string(),
                reason: "this CPU does not support it".into(),
            }
        })
    }

    /// The level whose vectors hold at most 8 f32 lanes: AVX2 for AVX-512 (a CPU with AVX-512
    /// is only reported as such when it has AVX2 and FMA too, see [`Isa::available`]), else
    /// this one. For kernels whose layout is built around 8-lane vectors.
    pub fn at_most_8_lanes(self) -> Isa {
        match self.0 {
            Level::Avx512 => Isa(Level::Avx2),
            level => Isa(level),
        }
    }

    /// Whether a 16-lane FMA issues at the rate of an 8-lane one here (two 512-bit FMA
    /// pipes: Intel's AVX-512 server cores, Zen 5), so that 16-lane kernels do twice the
    /// arithmetic per cycle; `false` where AVX-512 runs as two 256-bit halves (Zen 4: one
    /// 16-lane FMA per cycle, two 8-lane ones) and below AVX-512. Measured once per process
    /// ([`fma_width_ratio`]: throughput-bound FMA loops at both widths; full rate when a
    /// 16-lane loop takes under 1.5x the 8-lane loop's time, which reads about 1.08 on a Xeon
    /// with AVX-512; about 2 is expected on Zen 4, not measured here). The environment
    /// variable `TESSERA_KERNELS_FMA512` (`full` or `half`) overrides it.
    pub fn full_width_fma(self) -> bool {
        static FULL: OnceLock<bool> = OnceLock::new();
        if self.0 != Level::Avx512 {
            return false;
        }
        *FULL.get_or_init(|| {
            let value = std::env::var("TESSERA_KERNELS_FMA512").ok();
            let forced = match value.as_deref().map(|v| v.trim().to_ascii_lowercase()) {
                Some(v) if v == "full" => Some(true),
                Some(v) if v == "half" => Some(false),
                Some(other) => {
                    tracing::warn!(value = other, "ignoring TESSERA_KERNELS_FMA512 (full or half)");
                    None
                }
                None => None,
            };
            let ratio = if forced.is_some() { None } else { Some(fma_width_ratio(self)) };
            let full = forced.unwrap_or_else(|| ratio.is_some_and(|r| r < 1.5));
            tracing::info!(full, ?ratio, forced = forced.is_some(), "AVX-512 FMA rate");
            full
        })
    }

    /// f32 lanes of one vector register at this level.
    pub fn lanes(self) -> usize {
        match self.0 {
            Level::Portable | Level::Avx2 => 8,
            Level::Avx512 => 16,
        }
    }
}

/// Time of a throughput-bound 16-lane FMA loop over the same loop at 8 lanes: about 1.0 with
/// two 512-bit FMA pipes, 2.0 where a 16-lane FMA takes both 256-bit halves of the pipes.
/// Each loop is timed in 5 rounds after a discarded warm-up round (the clock and the AVX-512
/// units settle), the two alternating in either order, and keeps its fastest round: 12 loops
/// of about 50 us each on a Xeon, once per process. `f64::INFINITY` below AVX-512.
pub fn fma_width_ratio(isa: Isa) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if isa.0 == Level::Avx512 {
        const ITERS: usize = 30_000;
        let (mut wide, mut narrow) = (f64::INFINITY, f64::INFINITY);
        for round in 0..6 {
            // SAFETY: an `Isa` at `Avx512` exists only on a CPU with AVX-512F, AVX2 and FMA
            // (`Isa::available`).
            let (w, n) = unsafe {
                if round % 2 == 0 {
                    (fma_loop_seconds_512(ITERS), fma_loop_seconds_256(ITERS))
                } else {
                    let n = fma_loop_seconds_256(ITERS);
                    (fma_loop_seconds_512(ITERS), n)
                }
            };
            if round > 0 {
                (wide, narrow) = (wide.min(w), narrow.min(n));
            }
        }
        return if narrow > 0.0 { wide / narrow } else { f64::INFINITY };
    }
    let _ = isa;
    f64::INFINITY
}

/// `fn $name(iters) -> f64`: seconds for `iters` rounds of 12 independent FMAs at one vector
/// width (12 chains: enough to keep two pipes of 4-cycle latency busy).
macro_rules! fma_loop_seconds {
    ($name:ident, $width:literal, $features:literal, $fma:ident, $set1:ident) => {
        #[doc = concat!("Seconds for `iters` rounds of 12 independent ", $width, " FMAs.")]
        ///
        /// # Safety
        #[doc = concat!("The CPU must support ", $width, " FMAs (`", $features, "`).")]
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name(iters: usize) -> f64 {
            use std::arch::x86_64::{$fma, $set1};
            let (a, b) = ($set1(std::hint::black_box(0.999)), $set1(1e-3));
            let mut acc = [$set1(std::hint::black_box(1.0)); 12];
            // Opaque before the clock starts, so no FMA can be hoisted above it.
            std::hint::black_box(&mut acc);
            let start = std::time::Instant::now();
            for _ in 0..iters {
                for x in acc.iter_mut() {
                    *x = $fma(*x, a, b);
                }
            }
            let seconds = start.elapsed().as_secs_f64();
            std::hint::black_box(acc);
            seconds
        }
    };
}

fma_loop_seconds!(fma_loop_seconds_512, "16-lane", "avx512f", _mm512_fmadd_ps, _mm512_set1_ps);
fma_loop_seconds!(fma_loop_seconds_256, "8-lane", "avx2,fma", _mm256_fmadd_ps, _mm256_set1_ps);

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Level::Portable => "portable",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_for_available_levels() {
        for isa in Isa::available() {
            assert_eq!(Isa::from_name(&isa.to_string()).unwrap(), isa);
        }
        assert!(Isa::from_name("sse9").is_err());
        assert!(!Isa::PORTABLE.full_width_fma());
        assert_eq!(Isa::available()[0], Isa::PORTABLE);
        assert!(
            Isa::available().contains(&Isa::detect())
                || std::env::var("TESSERA_KERNELS_ISA").is_ok()
        );
    }

    #[test]
    fn fma_width_ratio_is_finite_exactly_on_avx512() {
        for isa in Isa::available() {
            let ratio = fma_width_ratio(isa);
            if isa.lanes() == 16 {
                // Same instruction count at both widths: from equal time (two 512-bit pipes)
                // to twice the time (256-bit halves), with room for a noisy round.
                assert!((0.5..4.0).contains(&ratio), "{isa}: {ratio}");
            } else {
                assert!(ratio.is_infinite(), "{isa}: {ratio}");
                assert!(!isa.full_width_fma());
            }
        }
    }
}
