//! `sparse-training`: sparse-from-scratch training of ResNet-20 on Fashion-MNIST — static,
//! SET, RigL, MEST (EM) and MEST (EM&S), each with unstructured and block (MEST's 4x1 column
//! blocks) masks at 90% and 95% sparsity — then MEST (EM&S) and dense training with
//! forgetting-based data removal (in the preset's [`Ranking`]: at smoke/default scale the
//! forgetting count with ties by margin, at paper scale MEST's order), and control cells that
//! remove as many examples from dense training in another order (a seeded random sample).
//!
//! Every cell trains from the same seeded initialization with the same recipe (SGD momentum
//! 0.9, cosine) and the same data order; the sparse layers are the 18 3x3 block convolutions
//! (stem, 1x1 shortcuts and classifier dense, as MEST's ResNet yaml files). Forgetting
//! statistics are recorded in every cell, so the report shows how many examples each
//! method's training never forgot. Memory is what a sparse trainer stores (tessera-train's
//! [`tessera_train::footprint`]) at the final masks and at the soft bound's peak, next to the
//! process's peak RSS. Results per cell are cached under `cells/` so an interrupted run
//! resumes.

use std::time::Instant;

use burn::module::Module;
use serde::{Deserialize, Serialize};
use tessera_data::{Dataset, KnownSet};
use tessera_models::train::{Both, TrainConfig, train};
use tessera_models::with_seed;
use tessera_models::zoo::ResNetConfig;
use tessera_train::{
    Distribution, DropGrowConfig, Forgetting, InitMask, Interval, LayerFootprint, MestConfig,
    Method, Ranking, Removal, RemovalAmount, RemovalReport, RunLength, SparseTrainer,
    SparseTrainingConfig, footprint, optimizer_slots, peak_rss_bytes,
};

use crate::error::{ExperimentError, Result};
use crate::plot::{Plot, Series, bar_chart, line_chart};
use crate::report::Table;
use crate::run::{Experiment, Outcome, RunContext, RunOptions, Scale};
use crate::study::{cached_cell, file_safe, load_splits, select, sgd, store_cell};
use tessera_models::train::Schedule;

/// The experiment.
#[derive(Debug, Clone, Copy, Default)]
pub struct SparseTraining;

/// Data removal of the data-efficiency cells.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataEfficiency {
    /// Sparse method given data efficiency (besides dense).
    pub method: String,
    /// Its scheme.
    pub scheme: String,
    /// Its sparsity.
    pub sparsity: f64,
    /// When, how much, and in which order (the ranking of both cells).
    pub removal: Removal,
    /// Controls: dense cells removing as many examples at the same epoch in another order (a
    /// seeded random sample says whether the forgetting statistics matter at all).
    #[serde(default)]
    pub controls: Vec<Ranking>,
}

impl DataEfficiency {
    /// The controls that get a cell: each once, none in the main order (it would share the
    /// main cell's key).
    fn distinct_controls(&self) -> Vec<Ranking> {
        let mut out: Vec<Ranking> = Vec::new();
        for &r in &self.controls {
            if r != self.removal.ranking && !out.contains(&r) {
                out.push(r);
            }
        }
        out
    }
}

/// One model on one data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SparseTrainingStudy {
    /// Name.
    pub name: String,
    /// The model.
    pub model: ResNetConfig,
    /// The data set.
    pub dataset: KnownSet,
    /// Seeded random subset of this many training images (`None` = all).
    pub train_limit: Option<usize>,
    /// First this many test images (`None` = all).
    pub eval_limit: Option<usize>,
    /// The recipe every cell trains with.
    pub train: TrainConfig,
    /// Weight paths trained sparse (wildcards).
    pub sparse_layers: Vec<String>,
    /// Sparsities.
    pub sparsities: Vec<f64>,
    /// Schemes (textual form).
    pub schemes: Vec<String>,
    /// Methods: `static`, `set`, `rigl`, `mest-em`, `mest-ems`.
    pub methods: Vec<String>,
    /// Mask updates of SET and MEST over the run (MEST's code: 32 over 160 epochs).
    pub mutations: usize,
    /// RigL's update interval in steps (RigL: 100).
    pub rigl_every: usize,
    /// The data-efficiency cells (`None` = skip them).
    pub data_efficiency: Option<DataEfficiency>,
}

/// The experiment's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SparseTrainingConfigFile {
    /// The studies.
    pub studies: Vec<SparseTrainingStudy>,
}

/// What one cell measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Method (`dense` for the dense baseline).
    pub method: String,
    /// Scheme (`-` for dense).
    pub scheme: String,
    /// Target sparsity over the sparse layers (0 for dense).
    pub sparsity: f64,
    /// Whether data removal was on.
    pub data_efficiency: bool,
    /// The removal's order, in data-efficiency cells (absent in runs before rankings: MEST's).
    #[serde(default)]
    pub ranking: Option<Ranking>,
    /// Top-1 after the last epoch.
    pub top1: f64,
    /// Best top-1 over the epochs (reported by MEST's code; not used for claims).
    pub best_top1: f64,
    /// Optimizer steps taken.
    pub iterations: usize,
    /// Training wall time (s), all epochs.
    pub seconds: f64,
    /// Mask updates.
    pub updates: usize,
    /// Measured sparsity of the sparse layers at the end.
    pub final_sparsity: f64,
    /// Kept weights of the sparse layers at the soft bound's peak, as a fraction.
    pub peak_density: f64,
    /// Weights + gradients + optimizer state, dense (bytes).
    pub dense_bytes: usize,
    /// The same as a sparse trainer stores it, at the final masks.
    pub sparse_bytes: usize,
    /// The same at the peak masks.
    pub peak_sparse_bytes: usize,
    /// Process peak RSS after this cell (bytes; the process trains every cell in turn).
    pub peak_rss: Option<u64>,
    /// Examples learned and never forgotten, by the end of training.
    pub unforgettable: usize,
    /// Training examples.
    pub examples: usize,
    /// The removal, in data-efficiency cells.
    pub removal: Option<RemovalReport>,
    /// Top-1 per epoch.
    pub curve: Vec<f64>,
    /// Weights grown over all mask updates (each one trained from zero).
    #[serde(default)]
    pub grown: usize,
    /// Per sparse layer storage at the peak masks.
    #[serde(default)]
    pub layers: Vec<LayerFootprint>,
}

/// A study's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyResult {
    /// Study name.
    pub name: String,
    /// Every cell (dense first).
    pub cells: Vec<Cell>,
    /// The targets, evaluated.
    pub checks: Vec<Check>,
}

/// One target and whether the run met it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// What is checked.
    pub target: String,
    /// The measured value(s).
    pub measured: String,
    /// Met / not met (None when the cells it needs did not run).
    pub met: Option<bool>,
}

fn fashion_resnet(scale: Scale) -> SparseTrainingStudy {
    let smoke = scale == Scale::Smoke;
    let (epochs, limit, eval, batch) = match scale {
        Scale::Smoke => (2, None, Some(64), 16),
        Scale::Default => (5, Some(6000), Some(2000), 64),
        Scale::Paper => (160, None, None, 64),
    };
    let mut train = sgd(epochs, batch, 0.1, 1e-4, Schedule::Cosine { min_lr: 0.0 });
    // MEST's recipe: plain momentum (not Nesterov).
    if let tessera_models::train::OptimizerConfig::Sgd { nesterov, .. } = &mut train.optimizer {
        *nesterov = false;
    }
    train.max_steps_per_epoch = smoke.then_some(3);
    SparseTrainingStudy {
        name: "resnet20-fashion".into(),
        model: ResNetConfig {
            depth: 20,
            in_channels: 1,
            classes: 10,
            width: if smoke { 0.25 } else { 1.0 },
            ..Default::default()
        },
        dataset: KnownSet::FashionMnist,
        train_limit: limit,
        eval_limit: eval,
        train,
        sparse_layers: vec!["blocks.*.conv*.conv.weight".into()],
        sparsities: if smoke { vec![0.9] } else { vec![0.9, 0.95] },
        schemes: if smoke {
            vec!["unstructured".into()]
        } else {
            vec!["unstructured".into(), "block:4x1".into()]
        },
        methods: ["static", "set", "rigl", "mest-em", "mest-ems"].map(String::from).to_vec(),
        mutations: match scale {
            Scale::Smoke => 3,
            Scale::Default => 10,
            Scale::Paper => 32,
        },
        rigl_every: match scale {
            Scale::Smoke => 1,
            Scale::Default => 25,
            Scale::Paper => 100,
        },
        data_efficiency: Some(DataEfficiency {
            method: "mest-ems".into(),
            scheme: "unstructured".into(),
            sparsity: 0.9,
            removal: Removal {
                // MEST: epoch 70 of 160, 12,000 of 50,000 (24%).
                epoch: match scale {
                    Scale::Smoke => 1,
                    Scale::Default => 2,
                    Scale::Paper => 70,
                },
                amount: RemovalAmount::Fraction { f: 0.24 },
                // Short runs leave most examples tied at zero forgetting events, which MEST's
                // order (then index) removes as a random sample; the margin ranks the ties.
                ranking: match scale {
                    Scale::Paper => Ranking::Forgetting,
                    _ => Ranking::ForgettingThenMargin,
                },
            },
            controls: vec![Ranking::Random { seed: 0x5eed }],
        }),
    }
}

/// The method `name` at `sparsity` with the study's update intervals.
fn method(
    study: &SparseTrainingStudy,
    name: &str,
    sparsity: f64,
    run: RunLength,
) -> Result<Method> {
    let every = Interval::Steps((run.total_steps() / study.mutations.max(1)).max(1));
    Ok(match name {
        "static" => Method::Static { init: InitMask::Magnitude },
        "set" => Method::Set(DropGrowConfig { every, ..DropGrowConfig::set() }),
        "rigl" => Method::Rigl(DropGrowConfig {
            every: Interval::Steps(study.rigl_every.max(1)),
            ..DropGrowConfig::rigl()
        }),
        "mest-em" => Method::Mest(MestConfig { every, ..MestConfig::elastic_mutation(sparsity) }),
        "mest-ems" => Method::Mest(MestConfig { every, ..MestConfig::soft_memory_bound(sparsity) }),
        other => {
            return Err(ExperimentError::config(
                "methods",
                format!("`{other}` is not one of static, set, rigl, mest-em, mest-ems"),
            ));
        }
    })
}

/// What one cell trains.
struct CellSpec {
    method: Option<String>,
    scheme: String,
    sparsity: f64,
    removal: Option<Removal>,
}

impl CellSpec {
    fn key(&self) -> String {
        let m = self.method.as_deref().unwrap_or("dense");
        let de = match self.removal.map(|r| r.ranking) {
            None => String::new(),
            Some(r) => format!("-de{}", ranking_suffix(r)),
        };
        file_safe(&format!("{m}{de}-{}-{}", self.scheme, self.sparsity))
    }
}

/// A ranking's part of a cell key and of its label (MEST's: none, as before rankings).
fn ranking_suffix(r: Ranking) -> String {
    match r {
        Ranking::Forgetting => String::new(),
        Ranking::ForgettingThenMargin => "-margin".into(),
        Ranking::Random { seed } => format!("-random{seed}"),
    }
}

/// A ranking in words.
fn ranking_name(r: Ranking) -> String {
    match r {
        Ranking::Forgetting => "forgetting count".into(),
        Ranking::ForgettingThenMargin => "forgetting count, then margin".into(),
        Ranking::Random { seed } => format!("random (seed {seed})"),
    }
}

fn run_cell(
    ctx: &RunContext,
    study: &SparseTrainingStudy,
    spec: &CellSpec,
    train_set: &Dataset,
    test: &Dataset,
) -> Result<Cell> {
    let key = spec.key();
    if let Some(c) = cached_cell::<Cell>(ctx, &study.name, &key) {
        return Ok(c);
    }
    let _span = tracing::info_span!("cell", study = %study.name, cell = %key).entered();
    let device = ctx.train_device();
    let seed = ctx.options.seed;
    let model = with_seed(&device, seed, || study.model.init(&device))?;
    let total_params = model.num_params();
    let s = train_set.sample_shape();
    let input = [1, s.channels, s.height, s.width];
    let run = RunLength::of(train_set.len(), &study.train);
    let (model, trainer) = match &spec.method {
        None => (model, None),
        Some(name) => {
            let cfg = SparseTrainingConfig {
                method: method(study, name, spec.sparsity, run)?,
                sparsity: spec.sparsity,
                distribution: Distribution::Uniform,
                scheme: spec.scheme.parse().map_err(|e| ExperimentError::config("schemes", e))?,
                layers: study.sparse_layers.clone(),
                seed,
            };
            let (m, t) = SparseTrainer::init(model, input, cfg, run)
                .map_err(|e| ExperimentError::config(format!("cell {key}"), e))?;
            (m, Some(t))
        }
    };
    let forgetting = Forgetting::new(train_set.len(), spec.removal)
        .map_err(|e| ExperimentError::config("data_efficiency", e))?;
    // The trainer (when sparse) and the forgetting statistics, on the one loop.
    let mut hooks = Both(trainer, forgetting);
    let t0 = Instant::now();
    let checkpoints = ctx.checkpoints(&format!("{}/{key}", study.name));
    let (_model, history) =
        train(model, train_set, Some(test), &study.train, &device, &mut hooks, Some(&checkpoints))?;
    tracing::info!(cell = %key, seconds = t0.elapsed().as_secs_f64(), "cell trained");
    let curve: Vec<f64> = history.iter().filter_map(|m| m.eval.map(|e| e.1)).collect();
    let slots = optimizer_slots(&study.train.optimizer);
    let (grown, layers) = match &hooks.0 {
        Some(t) => (
            t.events().iter().map(|e| e.grown).sum(),
            footprint(t.layers(), t.peak_masks(), total_params, slots)
                .map_err(|e| ExperimentError::config(format!("cell {key}"), e))?
                .layers,
        ),
        None => (0, Vec::new()),
    };
    let (updates, final_sparsity, peak_density, sparse_bytes, peak_sparse_bytes, dense_bytes) =
        match &hooks.0 {
            Some(t) => {
                let f = footprint(t.layers(), t.masks(), total_params, slots)
                    .map_err(|e| ExperimentError::config(format!("cell {key}"), e))?;
                let p = footprint(t.layers(), t.peak_masks(), total_params, slots)
                    .map_err(|e| ExperimentError::config(format!("cell {key}"), e))?;
                let n = t.sparse_weights() as f64;
                (
                    t.events().len(),
                    1.0 - t.live() as f64 / n,
                    t.peak_live() as f64 / n,
                    f.sparse_bytes,
                    p.sparse_bytes,
                    f.dense_bytes,
                )
            }
            None => {
                let dense = footprint(&[], &[], total_params, slots)
                    .map_err(|e| ExperimentError::config(format!("cell {key}"), e))?
                    .dense_bytes;
                (0, 0.0, 1.0, dense, dense, dense)
            }
        };
    let cell = Cell {
        method: spec.method.clone().unwrap_or_else(|| "dense".into()),
        scheme: spec.scheme.clone(),
        sparsity: spec.sparsity,
        data_efficiency: spec.removal.is_some(),
        ranking: spec.removal.map(|r| r.ranking),
        top1: curve.last().copied().unwrap_or(0.0),
        best_top1: curve.iter().copied().fold(0.0, f64::max),
        iterations: history.iter().map(|m| m.steps).sum(),
        seconds: history.iter().map(|m| m.seconds).sum(),
        updates,
        final_sparsity,
        peak_density,
        dense_bytes,
        sparse_bytes,
        peak_sparse_bytes,
        peak_rss: peak_rss_bytes(),
        unforgettable: hooks.1.unforgettable(),
        examples: train_set.len(),
        removal: hooks.1.report().cloned(),
        curve,
        grown,
        layers,
    };
    store_cell(ctx, &study.name, &key, &cell)?;
    Ok(cell)
}

fn run_study(ctx: &RunContext, study: &SparseTrainingStudy) -> Result<StudyResult> {
    let (train_set, test) =
        load_splits(ctx, study.dataset, study.train_limit, study.eval_limit, ctx.options.seed)?;
    let mut specs =
        vec![CellSpec { method: None, scheme: "-".into(), sparsity: 0.0, removal: None }];
    for &sparsity in &study.sparsities {
        for scheme in &study.schemes {
            for m in &study.methods {
                specs.push(CellSpec {
                    method: Some(m.clone()),
                    scheme: scheme.clone(),
                    sparsity,
                    removal: None,
                });
            }
        }
    }
    if let Some(de) = &study.data_efficiency {
        specs.push(CellSpec {
            method: None,
            scheme: "-".into(),
            sparsity: 0.0,
            removal: Some(de.removal),
        });
        specs.push(CellSpec {
            method: Some(de.method.clone()),
            scheme: de.scheme.clone(),
            sparsity: de.sparsity,
            removal: Some(de.removal),
        });
        for ranking in de.distinct_controls() {
            specs.push(CellSpec {
                method: None,
                scheme: "-".into(),
                sparsity: 0.0,
                removal: Some(Removal { ranking, ..de.removal }),
            });
        }
    }
    let bar = indicatif::ProgressBar::new(specs.len() as u64);
    let mut cells = Vec::with_capacity(specs.len());
    for spec in &specs {
        bar.set_message(spec.key());
        cells.push(run_cell(ctx, study, spec, &train_set, &test)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let checks = checks(study, &cells);
    Ok(StudyResult { name: study.name.clone(), cells, checks })
}

/// The cell of `method` / `scheme` / `sparsity`, without data removal or with removal in
/// `ranking`'s order.
fn find<'a>(
    cells: &'a [Cell],
    method: &str,
    scheme: &str,
    sparsity: f64,
    removal: Option<Ranking>,
) -> Option<&'a Cell> {
    cells.iter().find(|c| {
        c.method == method
            && c.scheme == scheme
            && (c.sparsity - sparsity).abs() < 1e-9
            && c.data_efficiency == removal.is_some()
            && removal.is_none_or(|r| c.ranking.unwrap_or_default() == r)
    })
}

fn pct(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

/// The targets against the cells that ran.
fn checks(study: &SparseTrainingStudy, cells: &[Cell]) -> Vec<Check> {
    let mut out = Vec::new();
    let dense = find(cells, "dense", "-", 0.0, None);
    for &s in &study.sparsities {
        for scheme in &study.schemes {
            let ems = find(cells, "mest-ems", scheme, s, None);
            for rival in ["set", "static"] {
                let r = find(cells, rival, scheme, s, None);
                out.push(Check {
                    target: format!("MEST (EM&S) >= {rival}, {scheme} at {}", pct(s)),
                    measured: match (ems, r) {
                        (Some(a), Some(b)) => format!("{} vs {}", pct(a.top1), pct(b.top1)),
                        _ => "not run".into(),
                    },
                    met: ems.zip(r).map(|(a, b)| a.top1 >= b.top1),
                });
            }
        }
    }
    for scheme in &study.schemes {
        let ems = find(cells, "mest-ems", scheme, 0.9, None);
        out.push(Check {
            target: format!("MEST (EM&S) {scheme} at 90% within 1.5 points of dense"),
            measured: match (ems, dense) {
                (Some(a), Some(d)) => format!("{} vs dense {}", pct(a.top1), pct(d.top1)),
                _ => "not run".into(),
            },
            met: ems.zip(dense).map(|(a, d)| d.top1 - a.top1 <= 0.015),
        });
    }
    if let Some(de) = &study.data_efficiency {
        for (m, scheme, s) in
            [("dense", "-", 0.0), (de.method.as_str(), de.scheme.as_str(), de.sparsity)]
        {
            let base = find(cells, m, scheme, s, None);
            let with = find(cells, m, scheme, s, Some(de.removal.ranking));
            out.push(Check {
                target: format!(
                    "data efficiency ({m}, {}): >= 10% fewer iterations, <= 0.3 points change",
                    ranking_name(de.removal.ranking)
                ),
                measured: match (base, with) {
                    (Some(b), Some(w)) => format!(
                        "{} fewer iterations ({} -> {}), top-1 {} -> {}",
                        pct(1.0 - w.iterations as f64 / b.iterations.max(1) as f64),
                        b.iterations,
                        w.iterations,
                        pct(b.top1),
                        pct(w.top1)
                    ),
                    _ => "not run".into(),
                },
                met: base.zip(with).map(|(b, w)| {
                    1.0 - w.iterations as f64 / b.iterations.max(1) as f64 >= 0.10
                        && (b.top1 - w.top1).abs() <= 0.003
                }),
            });
        }
        let base = find(cells, "dense", "-", 0.0, None);
        let ranked = find(cells, "dense", "-", 0.0, Some(de.removal.ranking));
        for r in de.distinct_controls() {
            let with = find(cells, "dense", "-", 0.0, Some(r));
            out.push(Check {
                target: format!(
                    "control (dense): as many examples removed at the same epoch, {} instead of {}",
                    ranking_name(r),
                    ranking_name(de.removal.ranking)
                ),
                measured: match (base, ranked, with) {
                    (Some(b), Some(k), Some(w)) => format!(
                        "top-1 {} without removal, {} ranked, {} {}",
                        pct(b.top1),
                        pct(k.top1),
                        pct(w.top1),
                        ranking_name(r)
                    ),
                    _ => "not run".into(),
                },
                met: None,
            });
        }
    }
    for scheme in &study.schemes {
        let c = find(cells, "mest-ems", scheme, 0.9, None);
        out.push(Check {
            target: format!("sparse footprint at 90% ({scheme}, MEST EM&S) <= 0.35x dense"),
            measured: c.map_or("not run".into(), |c| {
                format!(
                    "{:.3}x at the target, {:.3}x at the soft bound's peak",
                    c.sparse_bytes as f64 / c.dense_bytes as f64,
                    c.peak_sparse_bytes as f64 / c.dense_bytes as f64
                )
            }),
            met: c.map(|c| c.peak_sparse_bytes as f64 <= 0.35 * c.dense_bytes as f64),
        });
    }
    out
}

fn kib(b: usize) -> String {
    format!("{:.1}", b as f64 / 1024.0)
}

fn report(study: &SparseTrainingStudy, r: &StudyResult, full_data: bool) -> String {
    let mut s = format!(
        "## {}\n\nResNet-{} (width {}) on {}, {} training images{}, top-1 on {} test images; {} epochs, batch {}, SGD momentum 0.9, lr {} cosine, wd 1e-4. Sparse layers: `{}` (stem, shortcuts, classifier dense). SET and MEST update every total/{} steps (MEST also at each phase start), RigL every {} steps until 75%; the data-efficiency cells schedule updates on the steps they take, so they may get one update fewer. The memory column counts sparse gradients; RigL's update steps also need the dense gradient of the sparse layers, transiently.\n\n",
        r.name,
        study.model.depth,
        study.model.width,
        study.dataset.dir_name(),
        r.cells.first().map_or(0, |c| c.examples),
        if full_data { "" } else { " (fixtures: smoke scale)" },
        study.eval_limit.map_or("all".into(), |n| n.to_string()),
        study.train.epochs,
        study.train.batch_size,
        study.train.optimizer.lr(),
        study.sparse_layers.join(", "),
        study.mutations,
        study.rigl_every,
    );
    let mut t = Table::new(&[
        "method",
        "scheme",
        "#sparsity",
        "#top-1",
        "#best",
        "#iterations",
        "#train s",
        "#updates",
        "#peak density",
        "#train memory KiB (dense)",
        "#at peak KiB",
        "#unforgettable",
    ]);
    for c in &r.cells {
        t.row(vec![
            match (c.data_efficiency, c.ranking) {
                (false, _) => c.method.clone(),
                (true, r) => {
                    format!("{} + data eff. ({})", c.method, ranking_name(r.unwrap_or_default()))
                }
            },
            c.scheme.clone(),
            format!("{:.3}", c.final_sparsity),
            pct(c.top1),
            pct(c.best_top1),
            c.iterations.to_string(),
            format!("{:.0}", c.seconds),
            c.updates.to_string(),
            format!("{:.3}", c.peak_density),
            format!("{} ({})", kib(c.sparse_bytes), kib(c.dense_bytes)),
            kib(c.peak_sparse_bytes),
            format!("{} / {}", c.unforgettable, c.examples),
        ]);
    }
    s.push_str(&t.to_markdown());
    if let Some(d) = r.cells.first() {
        let n = study.eval_limit.unwrap_or(10_000).max(1) as f64;
        let se = (d.top1 * (1.0 - d.top1) / n).sqrt();
        s.push_str(&format!(
            "\nOne seed. The standard error of a top-1 near {} on {n} test images is {:.2} points: differences below about twice that are not resolved by this run.\n",
            pct(d.top1),
            100.0 * se
        ));
    }
    s.push_str("\n\"train memory\": weights + gradients + momentum as a sparse trainer stores them (tessera-kernels CSR / BSR index shared by the three value arrays; dense layers dense), at the final masks; \"at peak\": at the most weights the run ever held (the soft bound). \"best\" is the best epoch's top-1, shown because MEST's code reports it; the claims use the final top-1. \"unforgettable\": examples learned and never forgotten over the run (data-efficiency cells: counted up to the removal and after it, on the kept examples).\n\n");
    for c in r.cells.iter().filter(|c| c.removal.is_some()) {
        if let Some(rm) = &c.removal {
            s.push_str(&format!(
                "Removal ({}, {}): at epoch {}, {} of {} examples removed ({} of them unforgettable; {} unforgettable, {} never learned at that point){}; forgetting-count histogram {:?}.\n\n",
                c.method,
                ranking_name(c.ranking.unwrap_or_default()),
                rm.epoch,
                rm.removed,
                c.examples,
                rm.removed_unforgettable,
                rm.unforgettable,
                rm.never_learned,
                rm.mean_margin.map_or(String::new(), |(a, b)| format!(
                    "; mean margin {a:.2} removed, {b:.2} kept"
                )),
                rm.histogram
            ));
        }
    }
    for c in r.cells.iter().filter(|c| {
        c.method == "mest-ems"
            && !c.data_efficiency
            && !c.layers.is_empty()
            && (c.sparsity - 0.9).abs() < 1e-9
    }) {
        s.push_str(&format!(
            "Per-layer training memory, MEST (EM&S) {} at 90%, at the soft bound's peak ({} weights grown over {} updates):\n\n",
            c.scheme, c.grown, c.updates
        ));
        let mut t = Table::new(&[
            "layer",
            "#weights",
            "#kept",
            "format",
            "#values B",
            "#index B",
            "#w+g+m B",
            "#dense B",
        ]);
        for l in &c.layers {
            t.row(vec![
                l.path.clone(),
                l.weights.to_string(),
                l.kept.to_string(),
                l.format.clone(),
                l.storage.values.to_string(),
                l.storage.index.to_string(),
                l.sparse_bytes.to_string(),
                l.dense_bytes.to_string(),
            ]);
        }
        s.push_str(&t.to_markdown());
        s.push('\n');
    }
    if let Some(rss) = r.cells.iter().filter_map(|c| c.peak_rss).max() {
        s.push_str(&format!(
            "Process peak RSS over the study: {:.0} MiB (one process trains every cell; burn trains dense tensors with masks, so this is not the sparse footprint above).\n\n",
            rss as f64 / (1024.0 * 1024.0)
        ));
    }
    let mut checks = Table::new(&["target", "measured", "met"]);
    for c in &r.checks {
        checks.row(vec![
            c.target.clone(),
            c.measured.clone(),
            match c.met {
                Some(true) => "yes".into(),
                Some(false) => "**no**".into(),
                None => "-".into(),
            },
        ]);
    }
    s.push_str("### Targets\n\n");
    s.push_str(&checks.to_markdown());
    s
}

impl Experiment for SparseTraining {
    fn name(&self) -> &'static str {
        "sparse-training"
    }

    fn description(&self) -> &'static str {
        "Sparse-from-scratch training (static, SET, RigL, MEST EM and EM&S; unstructured and block) of ResNet-20 on Fashion-MNIST at 90/95%, with forgetting-based data efficiency and sparse-trainer memory"
    }

    fn config(&self, options: &RunOptions) -> Result<serde_json::Value> {
        let mut study = fashion_resnet(options.scale);
        study.train.seed = options.seed;
        let cfg =
            SparseTrainingConfigFile { studies: select(vec![study], &options.only, |s| &s.name)? };
        serde_json::to_value(cfg).map_err(|e| ExperimentError::config("config", e))
    }

    fn run(&self, ctx: &RunContext) -> Result<Outcome> {
        let cfg: SparseTrainingConfigFile = serde_json::from_value(ctx.config.clone())
            .map_err(|e| ExperimentError::config("config", e))?;
        let mut results = Vec::new();
        let mut report_md = String::new();
        let mut plots = Vec::new();
        for study in &cfg.studies {
            let _span = tracing::info_span!("study", name = %study.name).entered();
            let mut r = run_study(ctx, study)?;
            let full = ctx.full_data(study.dataset);
            if !full {
                // Fixture runs claim nothing.
                for c in &mut r.checks {
                    c.met = None;
                }
            }
            report_md.push_str(&report(study, &r, full));
            report_md.push('\n');
            let mut series = Vec::new();
            for scheme in &study.schemes {
                for m in &study.methods {
                    let points: Vec<(f64, f64)> = r
                        .cells
                        .iter()
                        .filter(|c| &c.method == m && &c.scheme == scheme && !c.data_efficiency)
                        .map(|c| (100.0 * c.sparsity, 100.0 * c.top1))
                        .collect();
                    if !points.is_empty() {
                        series.push(Series { name: format!("{m} {scheme}"), points });
                    }
                }
            }
            if let Some(d) = find(&r.cells, "dense", "-", 0.0, None) {
                let xs: Vec<f64> = study.sparsities.iter().map(|s| 100.0 * s).collect();
                series.push(Series {
                    name: "dense".into(),
                    points: xs.iter().map(|&x| (x, 100.0 * d.top1)).collect(),
                });
            }
            plots.push(Plot {
                file: format!("{}-accuracy.svg", r.name),
                caption: format!("{}: final top-1 vs sparsity per method and scheme", r.name),
                svg: line_chart(
                    &format!("{}: top-1 vs sparsity", r.name),
                    "sparsity (%)",
                    "top-1 (%)",
                    &series,
                )?,
            });
            let mem: Vec<(String, f64)> = r
                .cells
                .iter()
                .filter(|c| {
                    !c.data_efficiency && (c.method == "dense" || (c.sparsity - 0.9).abs() < 1e-9)
                })
                .map(|c| {
                    (format!("{} {}", c.method, c.scheme), c.peak_sparse_bytes as f64 / 1024.0)
                })
                .collect();
            plots.push(Plot {
                file: format!("{}-memory.svg", r.name),
                caption: format!("{}: training memory at the peak (KiB) at 90%", r.name),
                svg: bar_chart(&format!("{}: train memory at peak, 90%", r.name), "KiB", &mem)?,
            });
            results.push(r);
        }
        Ok(Outcome { figures: serde_json::json!({ "studies": results }), report: report_md, plots })
    }
}
