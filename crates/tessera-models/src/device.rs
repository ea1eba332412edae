//! Choosing the backend at run time.
//!
//! In burn 0.22 the backend is a property of the [`Device`], not a type: every model and loop
//! in tessera is written once over `Tensor<D>`, and the device picks flex (burn's own CPU
//! backend, the default: measured here ~3x faster than ndarray on a 3x3 conv layer and ~60x
//! on conv3d) or ndarray (named by the design card, deprecated upstream). CUDA / ROCm / wgpu
//! devices work the same way when burn is built with those features.

use std::sync::Mutex;

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// The CPU backends tessera builds with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// burn-flex (default).
    #[default]
    Flex,
    /// burn-ndarray.
    NdArray,
}

impl Backend {
    /// An inference device.
    pub fn device(self) -> Device {
        match self {
            Backend::Flex => Device::flex(),
            // burn-ndarray is deprecated upstream in favour of flex; kept because the design card
            // names it and the cross-backend test compares the two.
            #[allow(deprecated)]
            Backend::NdArray => Device::ndarray(),
        }
    }

    /// A training device (autodiff), its backend RNG seeded (under the [`with_seed`] lock).
    /// Model weights should still be initialized inside [`with_seed`]: the RNG is global.
    pub fn train_device(self, seed: u64) -> Device {
        let d = self.device().autodiff();
        drop(seed_locked(&d, seed));
        d
    }
}

impl Backend {
    /// `flex` or `ndarray`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Flex => "flex",
            Backend::NdArray => "ndarray",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "flex" => Ok(Backend::Flex),
            "ndarray" => Ok(Backend::NdArray),
            other => Err(format!("unknown backend {other:?}; expected flex or ndarray")),
        }
    }
}

/// Serializes seeded initializations: burn's CPU backends draw every random tensor from one
/// process-wide RNG, so two threads seeding and initializing at once would interleave draws.
static SEEDED_INIT: Mutex<()> = Mutex::new(());

fn seed_locked(device: &Device, seed: u64) -> std::sync::MutexGuard<'static, ()> {
    let guard = SEEDED_INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    device.seed(seed);
    guard
}

/// Touches every parameter: burn initializes parameters lazily, on first use, so without
/// this the random draws would happen later, outside the lock, in whatever order use comes.
struct Materialize;

impl ModuleVisitor for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
    }
}

/// Builds a model with `init` (typically a config's `init(device)`) with the backend RNG of
/// `device` seeded to `seed`, and materializes every parameter before returning, all under a
/// process-wide lock: the same seed gives the same weights even while other threads
/// (parallel tests, other runs) initialize models.
pub fn with_seed<M: Module, E>(
    device: &Device,
    seed: u64,
    init: impl FnOnce() -> Result<M, E>,
) -> Result<M, E> {
    let _guard = seed_locked(device, seed);
    let model = init()?;
    model.visit(&mut Materialize);
    Ok(model)
}
