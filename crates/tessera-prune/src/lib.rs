//! `tessera-prune`: the pruning optimizers of the compression-compilation co-design papers,
//! every one driven by tessera-sparsity schemes and configurable per layer
//! ([`tessera_sparsity::SparsityConfig`]: scheme and target per weight path).
//!
//! * [`magnitude`]: one-shot, iterative and gradual (cubic schedule) magnitude pruning.
//! * [`admm`]: ADMM with one or several constraint sets per layer (pattern + connectivity,
//!   polarization + pruning), primal / dual residuals logged at every Z/U update.
//! * [`lasso`]: reweighted group lasso over the scheme's groups, its gradient applied
//!   explicitly and tested against finite differences.
//! * [`distill`]: knowledge distillation from the dense model.
//! * [`pipeline::prune`]: plan, method phase, hard pruning, masked retraining, each phase
//!   checkpointed and resumable; the masks travel into the model's IR export.
//! * [`privacy`]: the privacy-preserving flow, designer (synthetic inputs + distillation only)
//!   and client (masked retraining on private data) as separate steps.
//!
//! All methods are [`tessera_models::train::Hooks`] on the one training loop, so they compose
//! with each other and with sparse training.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod admm;
pub mod distill;
mod error;
pub mod lasso;
pub mod magnitude;
pub mod pipeline;
pub mod plan;
pub mod privacy;
pub mod retrain;

pub use admm::AdmmConfig;
pub use distill::DistillConfig;
pub use error::{PruneError, Result};
pub use lasso::GroupLassoConfig;
pub use pipeline::{Method, PruneConfig, PruneOutcome, Recalibration, prune, save_outcome};
pub use plan::{Constraint, LayerPlan, PrunePlan};
