//! `quickstart`: the main job, end to end in a few minutes on two cores.
//!
//! Train Caffe LeNet-5 on MNIST (the full set from the cache when fetched, else the committed
//! fixtures), map a sparsity scheme to every layer with the rule-based mapper, prune with ADMM
//! and retrain with the masks fixed, export both models to the IR, compile dense and sparse
//! execution plans and time them, and run both models on simulated ReRAM chips with stuck-at
//! faults under the two-column and the differential mapping. One screen of `report.md` says
//! what happened; the plots sit beside it.
//!
//! The trained models are cached under `<results>/quickstart/cache/<key>/`, keyed by the
//! config, the data source and the seed, so a second run skips training and pruning.
//!
//! The mapping is tessera-search's rule-based mapper (DESIGN §8): the classifier stays dense,
//! 3x3 convolutions would get patterns (LeNet-5 has none), every other layer gets the smallest
//! block whose *measured* speedup on this CPU at the target rate is within 3% of the best
//! (block-punched 4x4 / 8x4 / 16x4 here, one compiled plan per candidate block). The
//! mapping is stored in the cache directory, so a rerun prunes with the same one; the pruned
//! model's directory is keyed by the mapping.

use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tessera_codegen::{CompileOptions, Plan};
use tessera_ir::Graph;
use tessera_reram::{CrossbarConfig, FaultModel, MappedGraph, Mapping};
use tessera_search::{LatencyTable, LayerRole, RuleConfig, SearchSpace, SpaceSpec, rule_schemes};
use tessera_sparsity::{LayerGeometry, Scheme};

use crate::crossbar_study::{CrossbarStudy, FaultPoint, sim_inputs, summarize, tolerated, top1};
use crate::error::{ExperimentError, Result};
use crate::plot::{Band, Plot, band_chart, bar_chart};
use crate::prune_schemes::SchemeSpec;
use crate::report::Table;
use crate::run::{Experiment, Outcome, RunContext, RunOptions, Scale};
use crate::scheme_search::{LayerNode, Timing, measure_table, search_layers, timing_input};
use crate::study::{RateCap, load_splits, train_dense};

/// The experiment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quickstart;

/// The quickstart's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuickstartConfig {
    /// Model, data, training and pruning budgets.
    pub study: CrossbarStudy,
    /// Whole-model compression of the pruned model.
    pub compression: f64,
    /// Seconds each plan is timed for (median of repeated single-image runs).
    pub bench_seconds: f64,
    /// Stuck-at rates simulated (SA0 : SA1 = 1 : 5.2).
    pub fault_rates: Vec<f64>,
    /// Chips per fault rate.
    pub seeds: usize,
    /// Block schemes the mapper chooses among for the layers that are not 3x3.
    #[serde(default = "default_mapping_schemes")]
    pub mapping_schemes: Vec<Scheme>,
    /// How the mapper times its candidate plans.
    #[serde(default = "default_mapping_timing")]
    pub mapping_timing: Timing,
}

fn default_mapping_schemes() -> Vec<Scheme> {
    ["block-punched:4x4", "block-punched:8x4", "block-punched:16x4"]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn default_mapping_timing() -> Timing {
    Timing { threads: 1, seconds: 0.2, min_runs: 20 }
}

/// One mapped layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MappedLayer {
    /// Node name.
    pub layer: String,
    /// Weight path.
    #[serde(default)]
    pub weight: String,
    /// Kernel shape or "linear".
    pub shape: String,
    /// The scheme the rule picked (`dense` for the classifier).
    pub scheme: String,
    /// Why (the mapper's reason).
    #[serde(default)]
    pub reason: String,
}

/// One model's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelNumbers {
    /// Test top-1 (float).
    pub top1: f64,
    /// Weights kept / total.
    pub weights: (usize, usize),
    /// FLOPs per image kept / dense.
    pub flops: (u64, u64),
    /// Median latency of one image, ms (1 thread).
    pub latency_ms: f64,
    /// Top-1 on ReRAM per mapping, one point per fault rate.
    pub reram: Vec<(String, Vec<FaultPoint>)>,
}

/// What the quickstart measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuickstartResult {
    /// Where the models came from.
    pub cache: PathBuf,
    /// Whether training was skipped (models found in the cache).
    pub cached: bool,
    /// Train / test images.
    pub images: (usize, usize),
    /// The scheme per layer.
    pub mapping: Vec<MappedLayer>,
    /// Dense model.
    pub dense: ModelNumbers,
    /// Pruned model.
    pub pruned: ModelNumbers,
    /// Seconds: training + pruning (0 when cached), benchmark, ReRAM.
    pub seconds: (f64, f64, f64),
    /// The pruned model emitted as standalone Rust source (file in the run directory, bytes,
    /// weights stored).
    #[serde(default)]
    pub emitted: Option<(String, usize, usize)>,
}

impl QuickstartConfig {
    /// The preset of `scale`.
    pub fn preset(scale: Scale, seed: u64) -> Self {
        let mut study = CrossbarStudy::lenet(scale, [32, 1000, 10_000]).seeded(seed);
        study.caps = vec![RateCap { layers: "conv1.*".into(), max_rate: 2.0 }];
        if scale != Scale::Smoke {
            // A few minutes on two cores: 6 dense epochs, 2 + 2 for ADMM and retraining.
            study.pretrain.train.epochs = 6;
            study.admm_train.epochs = 2;
            study.retrain.epochs = 2;
        }
        QuickstartConfig {
            study,
            compression: 8.0,
            bench_seconds: if scale == Scale::Smoke { 0.05 } else { 1.0 },
            fault_rates: vec![0.0, 1e-2, 5e-2, 1e-1],
            seeds: if scale == Scale::Smoke { 2 } else { 5 },
            mapping_schemes: default_mapping_schemes(),
            mapping_timing: if scale == Scale::Smoke {
                Timing { threads: 1, seconds: 0.005, min_runs: 3 }
            } else {
                default_mapping_timing()
            },
        }
    }
}

impl Experiment for Quickstart {
    fn name(&self) -> &'static str {
        "quickstart"
    }

    fn description(&self) -> &'static str {
        "The main job: train LeNet-5, map schemes per layer, ADMM-prune, compile and time dense vs sparse plans, simulate ReRAM faults"
    }

    fn config(&self, options: &RunOptions) -> Result<serde_json::Value> {
        serde_json::to_value(QuickstartConfig::preset(options.scale, options.seed))
            .map_err(|e| ExperimentError::config("config", e))
    }

    fn run(&self, ctx: &RunContext) -> Result<Outcome> {
        let cfg: QuickstartConfig = serde_json::from_value(ctx.config.clone())
            .map_err(|e| ExperimentError::config("config", e))?;
        let r = run_quickstart(ctx, &cfg)?;
        let bands: Vec<Band> = [("dense", &r.dense), ("pruned", &r.pruned)]
            .iter()
            .flat_map(|(name, m)| {
                m.reram.iter().map(move |(mapping, pts)| Band {
                    name: format!("{name}, {mapping}"),
                    points: pts
                        .iter()
                        .map(|p| {
                            let pct = |v: f64| 100.0 * v;
                            (pct(p.rate), pct(p.mean), pct(p.mean - p.ci95), pct(p.mean + p.ci95))
                        })
                        .collect(),
                })
            })
            .collect();
        let plots = vec![
            Plot {
                file: "reram-faults.svg".into(),
                caption: "Top-1 on simulated ReRAM chips vs stuck-at fault rate".into(),
                svg: band_chart(
                    "LeNet-5 on ReRAM under stuck-at faults",
                    "fault rate (%), SA0 : SA1 = 1 : 5.2",
                    "top-1 (%)",
                    &bands,
                )?,
            },
            Plot {
                file: "latency.svg".into(),
                caption: "Latency of one image, compiled plans, 1 thread".into(),
                svg: bar_chart(
                    "LeNet-5 latency (ms, batch 1, 1 thread)",
                    "ms",
                    &[
                        ("dense".to_string(), r.dense.latency_ms),
                        ("pruned".to_string(), r.pruned.latency_ms),
                    ],
                )?,
            },
        ];
        Ok(Outcome {
            figures: serde_json::to_value(&r).map_err(|e| ExperimentError::config("figures", e))?,
            report: report(&cfg, &r),
            plots,
        })
    }
}

fn run_quickstart(ctx: &RunContext, cfg: &QuickstartConfig) -> Result<QuickstartResult> {
    let study = &cfg.study;
    let (train, test) =
        load_splits(ctx, study.dataset, study.train_limit, study.eval_limit, ctx.options.seed)?;
    let key_source = serde_json::json!({
        "config": cfg.study,
        "compression": cfg.compression,
        "full_data": ctx.full_data(study.dataset),
        "seed": ctx.options.seed,
        "backend": ctx.options.backend,
    });
    let key = tessera_data::checksum::sha256_hex(key_source.to_string().as_bytes());
    let cache = ctx.options.out_root.join("quickstart").join("cache").join(&key[..16]);
    let dense_dir = cache.join("dense");
    // The pruned model's directory is keyed by the mapping, known once the dense model is.
    let mapping_path = cache.join("mapping.json");
    let pruned_dir_of = |mapping: &[MappedLayer]| -> PathBuf {
        let text: Vec<String> =
            mapping.iter().map(|m| format!("{}={}", m.weight, m.scheme)).collect();
        let h = tessera_data::checksum::sha256_hex(text.join(",").as_bytes());
        cache.join(format!("pruned-{}", &h[..12]))
    };
    let cached = dense_dir.join("card.json").is_file()
        && std::fs::read(&mapping_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<MappedLayer>>(&b).ok())
            .is_some_and(|m| pruned_dir_of(&m).join("card.json").is_file());
    let started = Instant::now();
    let checkpoints = |name: &str| {
        tessera_models::train::Checkpoints::new(cache.join("checkpoints").join(name), true)
    };
    train_dense(
        ctx,
        &dense_dir,
        checkpoints("dense"),
        &study.name,
        &study.model,
        study.dataset,
        &study.pretrain,
        &train,
        &test,
    )?;
    let device = ctx.train_device();
    let open = crate::study::OpenStudy {
        train,
        test,
        validation: None,
        dense_dir: dense_dir.clone(),
        dense_top1: 0.0,
        device,
    };
    let dense_graph = tessera_ir::io::load(&dense_dir.join("ir"))?;
    let mapping = map_layers(&dense_graph, cfg, &open.test, &cache)?;
    let spec = spec_of(&mapping)?;
    let pruned_dir = pruned_dir_of(&mapping);
    let job = study.prune_job(&open);
    if !pruned_dir.join("card.json").is_file() {
        job.prune_into(ctx, &spec, cfg.compression, None, &pruned_dir, checkpoints("pruned"))?;
    }
    let train_seconds = if cached { 0.0 } else { started.elapsed().as_secs_f64() };
    let pruned_graph = tessera_ir::io::load(&pruned_dir.join("ir"))?;
    // The deployable form: one Rust file with the kept weights and a stdin -> stdout main.
    let file = "lenet5-pruned.rs";
    let emitted = tessera_codegen::write_rust(
        &pruned_graph,
        &tessera_codegen::EmitOptions { batch: 1, main: true },
        &ctx.dir.join(file),
    )
    .map_err(|e| ExperimentError::config("emit", e))?;
    let stored = emitted.layers.iter().map(|l| l.stored).sum();

    let bench_start = Instant::now();
    let mut dense = numbers(&dense_graph, &open.test, cfg)?;
    let mut pruned = numbers(&pruned_graph, &open.test, cfg)?;
    let bench_seconds = bench_start.elapsed().as_secs_f64();
    let reram_start = Instant::now();
    dense.reram = reram(ctx, &dense_graph, &open.test, cfg)?;
    pruned.reram = reram(ctx, &pruned_graph, &open.test, cfg)?;
    Ok(QuickstartResult {
        cache,
        cached,
        images: (open.train.len(), open.test.len()),
        mapping,
        dense,
        pruned,
        seconds: (train_seconds, bench_seconds, reram_start.elapsed().as_secs_f64()),
        emitted: Some((file.to_string(), emitted.source.len(), stored)),
    })
}

/// The rule-based mapping of `graph` (module docs): reloaded from `cache/mapping.json`, else
/// measured and stored there.
fn map_layers(
    graph: &Graph,
    cfg: &QuickstartConfig,
    test: &tessera_data::Dataset,
    cache: &std::path::Path,
) -> Result<Vec<MappedLayer>> {
    let path = cache.join("mapping.json");
    if let Ok(bytes) = std::fs::read(&path)
        && let Ok(m) = serde_json::from_slice::<Vec<MappedLayer>>(&bytes)
    {
        return Ok(m);
    }
    let (nodes, space) = mapping_space(graph, cfg)?;
    let (_, table) =
        measure_table(graph, &nodes, &space, &cfg.mapping_timing, timing_input(test)?)?;
    let mapping = mapping_from(&nodes, &space, &table, cfg.compression)?;
    let bytes = serde_json::to_vec_pretty(&mapping).map_err(|e| ExperimentError::io(&path, e))?;
    tessera_data::file::write_atomic(&path, &bytes).map_err(|e| ExperimentError::io(&path, e))?;
    Ok(mapping)
}

/// The mapper's space: the configured block schemes at the quickstart's rate, padded (Caffe
/// LeNet-5's 20 / 50 / 500 rows are not multiples of 8), the classifier dense.
fn mapping_space(graph: &Graph, cfg: &QuickstartConfig) -> Result<(Vec<LayerNode>, SearchSpace)> {
    let (nodes, layers) = search_layers(graph)?;
    let space = SearchSpace::new(
        layers,
        &SpaceSpec {
            schemes: cfg.mapping_schemes.clone(),
            rates: vec![cfg.compression],
            dense_roles: vec![LayerRole::Classifier],
            pad: true,
            skip: false,
            separable: false,
        },
    )?;
    Ok((nodes, space))
}

/// The rule's scheme per layer, priced by `table`.
fn mapping_from(
    nodes: &[LayerNode],
    space: &SearchSpace,
    table: &LatencyTable,
    rate: f64,
) -> Result<Vec<MappedLayer>> {
    let rules =
        rule_schemes(space, table, &RuleConfig { reference_rate: rate, ..RuleConfig::default() })?;
    Ok(nodes
        .iter()
        .zip(space.layers())
        .zip(rules)
        .map(|((n, l), r)| MappedLayer {
            layer: n.node.clone(),
            weight: n.weight.clone(),
            shape: match l.layer.geometry {
                LayerGeometry::Linear { .. } => "linear".into(),
                LayerGeometry::Conv2d { kh, kw, .. } => format!("conv {kh}x{kw}"),
                LayerGeometry::Conv3d { kt, kh, kw, .. } => format!("conv {kt}x{kh}x{kw}"),
            },
            scheme: r.scheme.as_ref().map_or("dense".into(), Scheme::to_string),
            reason: r.reason,
        })
        .collect())
}

/// The pruning spec of a mapping: each mapped layer its scheme, the rest dense.
fn spec_of(mapping: &[MappedLayer]) -> Result<SchemeSpec> {
    let per_layer: Vec<(String, Scheme)> = mapping
        .iter()
        .filter(|m| m.scheme != "dense")
        .map(|m| Ok((m.weight.clone(), crate::prune_schemes::scheme(&m.scheme)?)))
        .collect::<Result<_>>()?;
    let scheme = per_layer
        .first()
        .map(|p| p.1.clone())
        .ok_or_else(|| ExperimentError::config("mapping", "no prunable layer"))?;
    Ok(SchemeSpec {
        scheme,
        pad: true,
        skip: mapping.iter().filter(|m| m.scheme == "dense").map(|m| m.weight.clone()).collect(),
        per_layer,
    })
}

/// Top-1 on the whole test split (the compiled plan), counts, and median single-image latency.
fn numbers(
    graph: &Graph,
    test: &tessera_data::Dataset,
    cfg: &QuickstartConfig,
) -> Result<ModelNumbers> {
    let (_, totals) = tessera_ir::stats::weight_stats(graph)?;
    let codegen = |e: tessera_codegen::CodegenError| ExperimentError::config("codegen", e);
    let mut plan = Plan::compile(graph, &CompileOptions::default()).map_err(codegen)?;
    let classes: usize = graph.validate()?[&graph.outputs[0]].iter().skip(1).product();
    let mut out = vec![0.0f32; classes];
    let mut right = 0usize;
    for i in 0..test.len() {
        plan.run(test.image(i), &mut out).map_err(codegen)?;
        let best = out
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |b, (j, &v)| if v > b.1 { (j, v) } else { b });
        right += usize::from(best.0 == usize::from(test.label(i)));
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < cfg.bench_seconds || times.len() < 5 {
        let t = Instant::now();
        plan.run(test.image(times.len() % test.len()), &mut out).map_err(codegen)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(ModelNumbers {
        top1: right as f64 / test.len().max(1) as f64,
        weights: (totals.params_kept, totals.params_total),
        flops: (totals.flops_kept, totals.flops_dense),
        latency_ms: 1e3 * times[times.len() / 2],
        reram: Vec::new(),
    })
}

fn reram(
    ctx: &RunContext,
    graph: &Graph,
    test: &tessera_data::Dataset,
    cfg: &QuickstartConfig,
) -> Result<Vec<(String, Vec<FaultPoint>)>> {
    let (images, labels) = sim_inputs(test, cfg.study.sim_images)?;
    let mut out = Vec::new();
    for mapping in [Mapping::TwoColumn, Mapping::Differential] {
        let mapped = MappedGraph::new(graph, &CrossbarConfig::with_mapping(mapping))?;
        let mut points = Vec::new();
        for &rate in &cfg.fault_rates {
            let chips = if rate == 0.0 { 1 } else { cfg.seeds };
            let mut accs = Vec::new();
            for seed in 0..chips as u64 {
                let chip = mapped
                    .chip(&FaultModel::from_rate(rate), ctx.options.seed * 1_000_003 + seed)?;
                accs.push(top1(&chip.run(std::slice::from_ref(&images))?[0], &labels));
            }
            points.push(summarize(rate, &accs));
        }
        out.push((mapping.to_string(), points));
    }
    Ok(out)
}

fn report(cfg: &QuickstartConfig, r: &QuickstartResult) -> String {
    let pct = |v: f64| format!("{:.2}%", 100.0 * v);
    let (d, p) = (&r.dense, &r.pruned);
    let mut md = format!(
        "Caffe LeNet-5 on MNIST ({} training / {} test images), pruned to {}x with ADMM \
         after a rule-based scheme mapping, compiled to CPU plans and run on simulated ReRAM crossbars.\n\n",
        r.images.0, r.images.1, cfg.compression
    );
    let mut t = Table::new(&["", "dense", "pruned", "change"]);
    t.row(vec![
        "test top-1".into(),
        pct(d.top1),
        pct(p.top1),
        format!("{:+.2} points", 100.0 * (p.top1 - d.top1)),
    ]);
    t.row(vec![
        "weights".into(),
        d.weights.0.to_string(),
        p.weights.0.to_string(),
        format!("{:.1}x fewer", d.weights.0 as f64 / p.weights.0.max(1) as f64),
    ]);
    t.row(vec![
        "FLOPs / image".into(),
        d.flops.0.to_string(),
        p.flops.0.to_string(),
        format!("{:.1}x fewer", d.flops.0 as f64 / p.flops.0.max(1) as f64),
    ]);
    t.row(vec![
        "latency (1 image, 1 thread)".into(),
        format!("{:.3} ms", d.latency_ms),
        format!("{:.3} ms", p.latency_ms),
        format!("{:.2}x faster", d.latency_ms / p.latency_ms.max(1e-12)),
    ]);
    for (i, (mapping, pts)) in d.reram.iter().enumerate() {
        for (k, pt) in pts.iter().enumerate().filter(|(_, pt)| pt.rate > 0.0) {
            let q = p.reram.get(i).and_then(|(_, v)| v.get(k)).map_or(f64::NAN, |x| x.mean);
            t.row(vec![
                format!("ReRAM top-1, {mapping}, {:.0}% stuck cells", 100.0 * pt.rate),
                pct(pt.mean),
                pct(q),
                String::new(),
            ]);
        }
    }
    md.push_str(&t.to_markdown());
    let tol = |m: &ModelNumbers, i: usize| -> String {
        let Some((_, pts)) = m.reram.get(i) else { return "-".into() };
        let Some(clean) = pts.first().map(|p| p.mean) else { return "-".into() };
        let floor = clean - 0.01;
        match tolerated(pts, floor) {
            None => "< smallest".into(),
            // The largest rate simulated still passed: a lower bound.
            Some(v) if pts.last().is_some_and(|p| p.mean >= floor) => {
                format!(">= {:.1}%", 100.0 * v)
            }
            Some(v) => format!("{:.1}%", 100.0 * v),
        }
    };
    md.push_str(&format!(
        "\nFault rate tolerated at a 1-point drop: two-column {} (dense) / {} (pruned); differential {} / {}.\n\n",
        tol(d, 0),
        tol(p, 0),
        tol(d, 1),
        tol(p, 1)
    ));
    md.push_str("Schemes per layer (tessera-search's rule-based mapper, block sizes timed on this CPU):\n\n");
    let mut t = Table::new(&["layer", "shape", "scheme", "why"]);
    for m in &r.mapping {
        t.row(vec![m.layer.clone(), m.shape.clone(), m.scheme.clone(), m.reason.clone()]);
    }
    md.push_str(&t.to_markdown());
    md.push_str(&format!(
        "\nModels: `{}` ({}). Time: training and pruning {:.0} s, compiling and timing {:.1} s, ReRAM {:.1} s.\n\n",
        r.cache.display(),
        if r.cached { "found in the cache, nothing trained" } else { "trained now, cached for the next run" },
        r.seconds.0,
        r.seconds.1,
        r.seconds.2
    ));
    if let Some((file, bytes, stored)) = &r.emitted {
        md.push_str(&format!(
            "Standalone source of the pruned model: `{file}` ({:.0} KiB, {stored} weights, no \
             dependencies); `rustc -O {file}` builds a program that reads f32 images from stdin \
             and writes the 10 logits of each to stdout.\n\n",
            *bytes as f64 / 1024.0
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mapper_keeps_the_classifier_dense_and_takes_the_smallest_fast_block() {
        let g = tessera_ir::examples::lenet5().unwrap();
        let cfg = QuickstartConfig::preset(Scale::Smoke, 0);
        let (nodes, space) = mapping_space(&g, &cfg).unwrap();
        // Hand-made times: 16x4 the fastest, 8x4 within 3% of it, 4x4 10% slower.
        let table = LatencyTable {
            other_ms: 0.01,
            per_layer: (0..space.len())
                .map(|l| {
                    space
                        .options(l)
                        .iter()
                        .map(|c| match c.scheme_name().as_str() {
                            "dense" => 1.0,
                            "block-punched:4x4" => 0.2,
                            "block-punched:8x4" => 0.185,
                            _ => 0.18,
                        })
                        .collect()
                })
                .collect(),
        };
        let m = mapping_from(&nodes, &space, &table, cfg.compression).unwrap();
        assert!(m.len() >= 3);
        assert_eq!(m.last().unwrap().scheme, "dense");
        assert!(m[..m.len() - 1].iter().all(|l| l.scheme == "block-punched:8x4"), "{m:?}");
        let spec = spec_of(&m).unwrap();
        assert_eq!(spec.skip, vec![m.last().unwrap().weight.clone()]);
        assert_eq!(spec.per_layer.len(), m.len() - 1);
    }
}
