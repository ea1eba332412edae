//! Running an experiment: options, scale presets, the run directory, the context handed to
//! the experiment, and the record, report and plots written at the end.
//!
//! Layout: `<out>/<name>/<run-id>/` with `run.json` (written first: what was asked for),
//! `checkpoints/` (training state, per model), the plots, `report.md` and `record.json`
//! (written last, atomically). A run directory without `record.json` is unfinished; `resume`
//! picks the newest unfinished one with the same experiment, scale, seed and config and
//! continues from its checkpoints. `<out>/<name>/latest` names the newest finished run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use burn::prelude::Device;
use serde::{Deserialize, Serialize};
use tessera_data::{Dataset, KnownSet, Normalization, Source, Split};
use tessera_models::Backend;
use tessera_models::train::Checkpoints;

use crate::config_override::{ConfigOverride, apply_overrides};
use crate::env::Environment;
use crate::error::{ExperimentError, Result};
use crate::plot::Plot;

/// How big a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scale {
    /// Seconds, on the committed fixtures: what `cargo test` runs.
    Smoke,
    /// Minutes to an hour on two cores, on full data when cached: the README's numbers.
    #[default]
    Default,
    /// The published setting (hours on a CPU; meant for bigger machines).
    Paper,
}

impl Scale {
    /// Every scale.
    pub const ALL: [Scale; 3] = [Scale::Smoke, Scale::Default, Scale::Paper];

    /// `smoke`, `default` or `paper`.
    pub fn name(self) -> &'static str {
        match self {
            Scale::Smoke => "smoke",
            Scale::Default => "default",
            Scale::Paper => "paper",
        }
    }
}

impl std::fmt::Display for Scale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Scale {
    type Err = ExperimentError;
    fn from_str(s: &str) -> Result<Self> {
        Scale::ALL.into_iter().find(|x| x.name() == s).ok_or_else(|| {
            ExperimentError::config("scale", format!("`{s}` is not one of smoke, default, paper"))
        })
    }
}

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOptions {
    /// The scale preset.
    pub scale: Scale,
    /// Seed of every random choice (init, data order, augmentation, ...).
    pub seed: u64,
    /// Directory of full data sets (cache layout); `None` = the default cache when it holds
    /// the complete set, else the fixtures. Smoke runs always use the fixtures.
    pub data_dir: Option<PathBuf>,
    /// Root of the results (`results` by default).
    pub out_root: PathBuf,
    /// Continue the newest unfinished run with the same settings.
    pub resume: bool,
    /// Training backend.
    pub backend: Backend,
    /// Experiment-specific filter (for dense-baselines: run-name prefixes such as `lenet5`);
    /// empty = everything.
    pub only: Vec<String>,
    /// Where pruning experiments take their dense models from: a `dense-baselines` run
    /// directory (or a directory of saved models); `None` = train them inside the run.
    #[serde(default)]
    pub dense_from: Option<PathBuf>,
    /// `--set KEY=VALUE` changes applied to the preset config, in order (see
    /// [`crate::config_override`]).
    #[serde(default)]
    pub overrides: Vec<ConfigOverride>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            scale: Scale::Default,
            seed: 0,
            data_dir: None,
            out_root: PathBuf::from("results"),
            resume: false,
            backend: Backend::Flex,
            only: Vec::new(),
            dense_from: None,
            overrides: Vec::new(),
        }
    }
}

/// A named experiment.
pub trait Experiment: Send + Sync {
    /// Registry name (kebab-case), also the results subdirectory.
    fn name(&self) -> &'static str;
    /// One sentence on what it measures.
    fn description(&self) -> &'static str;
    /// The full config the options select (scale preset, filtered), as recorded.
    fn config(&self, options: &RunOptions) -> Result<serde_json::Value>;
    /// Runs it. Long parts should checkpoint under [`RunContext::checkpoints`].
    fn run(&self, ctx: &RunContext) -> Result<Outcome>;
}

/// What an experiment hands back to the runner.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Every figure, machine-readable (goes into `record.json`).
    pub figures: serde_json::Value,
    /// The body of `report.md` (Markdown; the runner adds the header and the plots).
    pub report: String,
    /// SVG plots.
    pub plots: Vec<Plot>,
}

/// What a run sees: its options, config and directory, and helpers that record provenance.
#[derive(Debug)]
pub struct RunContext {
    /// The options.
    pub options: RunOptions,
    /// The config from [`Experiment::config`].
    pub config: serde_json::Value,
    /// The run directory.
    pub dir: PathBuf,
    data_used: Mutex<BTreeMap<String, String>>,
}

impl RunContext {
    /// A context for unit tests that call an experiment's parts directly.
    #[cfg(test)]
    pub(crate) fn for_test(options: RunOptions, config: serde_json::Value, dir: PathBuf) -> Self {
        RunContext { options, config, dir, data_used: Mutex::new(BTreeMap::new()) }
    }

    /// Where `key`'s training checkpoints live, resuming when the run resumes.
    pub fn checkpoints(&self, key: &str) -> Checkpoints {
        Checkpoints::new(self.dir.join("checkpoints").join(key), self.options.resume)
    }

    /// A training device of the chosen backend, seeded with the run's seed.
    pub fn train_device(&self) -> Device {
        self.options.backend.train_device(self.options.seed)
    }

    /// Where `set` comes from: fixtures for smoke runs; the `--data` directory (which must
    /// hold the complete set); else the cache when complete, else the fixtures.
    pub fn source(&self, set: KnownSet) -> Result<Source> {
        if self.options.scale == Scale::Smoke {
            return Ok(Source::Fixtures);
        }
        match &self.options.data_dir {
            Some(dir) if set.is_complete_in(dir) => Ok(Source::Dir(dir.clone())),
            Some(dir) => Err(ExperimentError::config(
                "--data",
                format!(
                    "{} does not hold the complete {} set; run `cargo xtask data fetch {} --dir {}`",
                    dir.display(),
                    set.dir_name(),
                    set.dir_name(),
                    dir.display()
                ),
            )),
            None => Ok(Source::auto(set)),
        }
    }

    /// Whether `set` is read from the full data (not the fixtures).
    pub fn full_data(&self, set: KnownSet) -> bool {
        matches!(self.source(set), Ok(Source::Dir(_)))
    }

    /// Loads `split` of `set` (see [`RunContext::source`]) and records where it came from.
    pub fn load(
        &self,
        set: KnownSet,
        split: Split,
        normalization: Normalization,
    ) -> Result<Dataset> {
        let source = self.source(set)?;
        let d = tessera_data::load(set, split, &source, Some(normalization))?;
        let origin = match &source {
            Source::Fixtures => "fixtures".to_string(),
            Source::Dir(dir) => format!("full set in {}", dir.display()),
        };
        let key = format!("{}/{}", set.dir_name(), split.name());
        if let Ok(mut used) = self.data_used.lock() {
            used.insert(key, format!("{} images, {origin}", d.len()));
        }
        Ok(d)
    }
}

/// `run.json`: what a run was asked to do (the identity `resume` matches on).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunStart {
    experiment: String,
    scale: Scale,
    seed: u64,
    backend: Backend,
    config: serde_json::Value,
    started_utc: String,
}

/// `record.json`: everything about a finished run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Experiment name.
    pub experiment: String,
    /// Its description.
    pub description: String,
    /// Scale preset.
    pub scale: Scale,
    /// Seed.
    pub seed: u64,
    /// Training backend.
    pub backend: Backend,
    /// The config that ran.
    pub config: serde_json::Value,
    /// Start (RFC 3339 UTC) of the first attempt.
    pub started_utc: String,
    /// End (RFC 3339 UTC).
    pub finished_utc: String,
    /// Wall time of the last attempt, seconds (a resumed run counts only its own part; the
    /// per-model figures carry the full training times).
    pub wall_seconds: f64,
    /// Whether this attempt resumed an interrupted run.
    pub resumed: bool,
    /// Where each data split came from.
    pub data: BTreeMap<String, String>,
    /// Machine, versions, git revision.
    pub environment: Environment,
    /// Every figure the experiment produced.
    pub figures: serde_json::Value,
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Its directory.
    pub dir: PathBuf,
    /// Its record.
    pub record: Record,
}

pub(crate) fn now_utc() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

pub(crate) fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    tessera_data::file::write_atomic(path, bytes).map_err(|e| ExperimentError::io(path, e))
}

fn read_start(dir: &Path) -> Option<RunStart> {
    serde_json::from_slice(&std::fs::read(dir.join("run.json")).ok()?).ok()
}

/// The newest unfinished run directory under `base` started with the same settings.
fn unfinished_run(base: &Path, want: &RunStart) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(base)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.into_iter().rev().find(|d| {
        !d.join("record.json").exists()
            && read_start(d).is_some_and(|s| {
                s.experiment == want.experiment
                    && s.scale == want.scale
                    && s.seed == want.seed
                    && s.backend == want.backend
                    && s.config == want.config
            })
    })
}

/// A fresh run directory named by the UTC start time (`20261129T043547Z`, `-2`, ... on clashes).
pub(crate) fn new_run_dir(base: &Path, started: &str) -> Result<PathBuf> {
    let stamp: String = started.chars().filter(|c| !matches!(c, '-' | ':')).collect();
    std::fs::create_dir_all(base).map_err(|e| ExperimentError::io(base, e))?;
    for k in 1.. {
        let name = if k == 1 { stamp.clone() } else { format!("{stamp}-{k}") };
        let dir = base.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(ExperimentError::io(&dir, e)),
        }
    }
    unreachable!("the loop returns")
}

/// Runs `exp` with `options`: picks (or resumes) the run directory, runs, and writes the
/// plots, `report.md` and finally `record.json`.
pub fn run(exp: &dyn Experiment, options: &RunOptions) -> Result<Finished> {
    let mut config = exp.config(options)?;
    apply_overrides(&mut config, &options.overrides)?;
    let base = options.out_root.join(exp.name());
    let mut start = RunStart {
        experiment: exp.name().to_string(),
        scale: options.scale,
        seed: options.seed,
        backend: options.backend,
        config: config.clone(),
        started_utc: now_utc(),
    };
    let resumed_dir = if options.resume { unfinished_run(&base, &start) } else { None };
    let dir = match &resumed_dir {
        Some(d) => {
            if let Some(s) = read_start(d) {
                start.started_utc = s.started_utc;
            }
            tracing::info!(dir = %d.display(), "resuming unfinished run");
            d.clone()
        }
        None => {
            if options.resume {
                tracing::info!(base = %base.display(), "no unfinished run with these settings; starting a new one");
            }
            let d = new_run_dir(&base, &start.started_utc)?;
            write(&d.join("run.json"), &to_json(&start)?)?;
            d
        }
    };
    let ctx = RunContext {
        options: RunOptions { resume: resumed_dir.is_some(), ..options.clone() },
        config,
        dir: dir.clone(),
        data_used: Mutex::new(BTreeMap::new()),
    };
    let _span = tracing::info_span!("experiment", name = exp.name(), scale = %options.scale, seed = options.seed).entered();
    let t0 = Instant::now();
    let outcome = exp.run(&ctx)?;
    let record = Record {
        experiment: exp.name().to_string(),
        description: exp.description().to_string(),
        scale: options.scale,
        seed: options.seed,
        backend: options.backend,
        config: ctx.config.clone(),
        started_utc: start.started_utc,
        finished_utc: now_utc(),
        wall_seconds: t0.elapsed().as_secs_f64(),
        resumed: resumed_dir.is_some(),
        data: ctx.data_used.lock().map(|m| m.clone()).unwrap_or_default(),
        environment: Environment::capture(),
        figures: outcome.figures,
    };
    for p in &outcome.plots {
        write(&dir.join(&p.file), p.svg.as_bytes())?;
    }
    write(
        &dir.join("report.md"),
        report_markdown(&record, &outcome.report, &outcome.plots).as_bytes(),
    )?;
    write(&dir.join("record.json"), &to_json(&record)?)?;
    if let Some(id) = dir.file_name().and_then(|n| n.to_str()) {
        write(&base.join("latest"), format!("{id}\n").as_bytes())?;
    }
    tracing::info!(dir = %dir.display(), seconds = record.wall_seconds, "experiment finished");
    Ok(Finished { dir, record })
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(v).map_err(|e| ExperimentError::io("record", e))?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn report_markdown(r: &Record, body: &str, plots: &[Plot]) -> String {
    let mut md = format!("# {}\n\n{}\n\n", r.experiment, r.description);
    md.push_str(&format!(
        "- scale `{}`, seed {}, backend {}{}\n",
        r.scale,
        r.seed,
        r.backend,
        if r.resumed { ", resumed from checkpoints" } else { "" }
    ));
    md.push_str(&format!(
        "- started {}, finished {}, wall time {:.1} s\n",
        r.started_utc, r.finished_utc, r.wall_seconds
    ));
    md.push_str(&format!("- machine: {}\n", r.environment.summary()));
    md.push_str(&format!(
        "- build: {}, opt-level {}, {}\n",
        r.environment.rustc,
        r.environment.opt_level,
        r.environment
            .versions
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for (k, v) in &r.data {
        md.push_str(&format!("- data `{k}`: {v}\n"));
    }
    md.push('\n');
    md.push_str(body.trim_end());
    md.push('\n');
    for p in plots {
        md.push_str(&format!("\n![{}]({})\n", p.caption, p.file));
    }
    md
}
