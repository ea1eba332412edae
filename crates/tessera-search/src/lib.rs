//! tessera-search: which sparsity scheme, block size and rate every layer should get.
//!
//! - [`space`]: the per-layer choices tessera-sparsity can actually apply (validity rules).
//! - [`latency`]: per-layer, per-option milliseconds (filled by the caller from measurements).
//! - [`rule`]: the rule-based mapper (pattern for 3x3, the smallest block within a few
//!   percent of the best measured speedup for 1x1 and linear layers, rates from a latency
//!   target).
//! - [`qlearn`]: the Q-learning meta-model (epsilon-greedy schedule, experience replay).
//! - [`gp`] and [`acquisition`]: a Gaussian process with a per-layer categorical kernel, and
//!   Expected Improvement.
//! - [`search`]: NPAS (agent proposes, mutations of the best join the pool, GP + EI picks,
//!   evaluator measures; optionally warm-started from measured baselines), random search and
//!   fixed baselines, over an [`Evaluator`], with a resumable evaluation log.
//!
//! The crate is burn-free: the concrete evaluators (one-shot prune + short fine-tune for
//! accuracy, compiled-plan timing for latency) are wired in tessera-experiments.

pub mod acquisition;
pub mod error;
pub mod gp;
pub mod latency;
pub mod qlearn;
pub mod rule;
pub mod search;
pub mod space;

pub use acquisition::expected_improvement;
pub use error::{EvalError, Result, SearchError};
pub use gp::{
    CompressionTrend, Encoder, Feature, GaussianProcess, GpGrid, Kernel, LayerwiseKernel,
};
pub use latency::LatencyTable;
pub use qlearn::{EpsilonSchedule, QAgent, QConfig};
pub use rule::{RuleConfig, RuleMapping, RuleScheme, rule_rates, rule_schemes};
pub use search::{
    Evaluated, Evaluator, Measurement, NpasConfig, Reward, SearchOutcome, evaluate_list, npas,
    npas_with_prior, random_feasible_search, random_search,
};
pub use space::{Excluded, LayerChoice, LayerRole, SearchLayer, SearchSpace, SpaceSpec};
