//! `tessera-experiments`: named experiments, their scale presets, and the records they leave.
//!
//! An [`Experiment`] has a name, a description and a config per [`Scale`] (`smoke` for tests,
//! `default` for the README, `paper` for the published setting); [`run`] gives it a run
//! directory `results/<name>/<run-id>/` and, when it returns, writes its SVG plots,
//! `report.md` and `record.json` (config, seed, git revision, crate versions, CPU, wall time,
//! every figure), each atomically, the record last. Training inside an experiment
//! checkpoints every epoch, so an interrupted run resumes (`RunOptions::resume`) where it
//! stopped. `cargo xtask experiment ...` is the command line over [`registry`].
//!
//! ```no_run
//! use tessera_experiments::{RunOptions, Scale, find, run};
//!
//! let exp = find("dense-baselines")?;
//! let done = run(exp, &RunOptions { scale: Scale::Smoke, ..RunOptions::default() })?;
//! println!("{}", done.dir.join("report.md").display());
//! # Ok::<(), tessera_experiments::ExperimentError>(())
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod all;
pub mod config_override;
mod crossbar_study;
pub mod dense_baselines;
mod env;
mod error;
pub mod forms;
pub mod npas;
pub mod plot;
pub mod privacy_prune;
pub mod prune_schemes;
pub mod quickstart;
pub mod report;
pub mod reram_faults;
mod run;
pub mod scheme_mapping;
pub mod scheme_search;
pub mod sparse_training;
mod study;

pub use all::{IndexEntry, run_all};
pub use env::Environment;
pub use error::{ExperimentError, Result};
pub use run::{Experiment, Finished, Outcome, Record, RunContext, RunOptions, Scale, run};
pub use study::{Pretrain, RateCap};

/// Every registered experiment, in listing order.
pub fn registry() -> Vec<&'static dyn Experiment> {
    vec![
        &quickstart::Quickstart,
        &dense_baselines::DenseBaselines,
        &prune_schemes::PruneSchemes,
        &privacy_prune::PrivacyPrune,
        &reram_faults::ReramFaults,
        &forms::Forms,
        &sparse_training::SparseTraining,
        &scheme_mapping::SchemeMapping,
        &npas::Npas,
    ]
}

/// The experiment called `name`.
pub fn find(name: &str) -> Result<&'static dyn Experiment> {
    registry().into_iter().find(|e| e.name() == name).ok_or_else(|| {
        ExperimentError::UnknownExperiment {
            name: name.to_string(),
            known: registry().iter().map(|e| e.name()).collect::<Vec<_>>().join(", "),
        }
    })
}
