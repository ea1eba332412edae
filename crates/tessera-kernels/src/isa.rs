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

    /// f32 lanes of one vector register at this level.
    pub fn lanes(self) -> usize {
        match self.0 {
            Level::Portable | Level::Avx2 => 8,
            Level::Avx512 => 16,
        }
    }
}

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
        assert_eq!(Isa::available()[0], Isa::PORTABLE);
        assert!(
            Isa::available().contains(&Isa::detect())
                || std::env::var("TESSERA_KERNELS_ISA").is_ok()
        );
    }
}
