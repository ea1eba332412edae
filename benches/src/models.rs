//! The whole-model benchmark behind `cargo xtask bench models`: zoo models exported to the IR,
//! compiled by tessera-codegen dense and pruned under each scheme, timed at batch 1 on 1 and
//! 2 threads, with per-layer times, and burn's dense forward (flex and ndarray) for the same
//! model in the same run.
//!
//! Weights are the zoo's seeded initialization and masks come from tessera-sparsity's
//! projections of them (speed depends on structure, not values; the issue allows this when
//! no pruned model is at hand). Pruned: every convolution except the stem and depthwise
//! convolutions (one input channel per group has nothing to share); pattern schemes prune the
//! 3x3 ones. Fully connected layers stay dense (under 1% of these models' FLOPs).

use burn::prelude::*;
use burn::tensor::TensorData;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use tessera_codegen::latency::median;
use tessera_codegen::{CompileOptions, LatencyModel, LatencySample, Plan, Tuning};
use tessera_ir::passes::Pipeline;
use tessera_ir::{Graph, Op, Tensor as IrTensor};
use tessera_models::zoo::{
    Classifier, Lenet5Config, MobileNetV2Config, ResNetConfig, VggConfig, WithModel, ZooConfig,
};
use tessera_models::{Backend, Masks};
use tessera_sparsity::{Scheme, Target};

/// What the suite runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelSuiteConfig {
    /// Only models whose name contains one of these (all when empty).
    pub only: Vec<String>,
    /// Thread counts.
    pub threads: Vec<usize>,
    /// Compression rates.
    pub rates: Vec<f64>,
    /// Schemes.
    pub schemes: Vec<String>,
    /// Minimum measured time per point, seconds.
    pub min_time: f64,
    /// Let tessera-codegen's tuner pick each layer's kernel and thread count (else the
    /// scheme's kernel on every thread).
    #[serde(default)]
    pub tune: bool,
    /// Time ONNX Runtime on each dense model in rounds interleaved with our dense plan (see
    /// [`OrtPeer`]).
    #[serde(default)]
    pub ort: Option<OrtPeer>,
}

/// ONNX Runtime as a peer: each dense model (after the IR passes) is saved as an IR directory
/// with a seeded input and our plan's output, and `tools/ort_models.py` converts it to ONNX,
/// checks ORT's output against ours and times it at the suite's thread counts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrtPeer {
    /// A Python with numpy, onnx and onnxruntime.
    pub python: String,
    /// The converter and timer script (`tools/ort_models.py`).
    pub script: std::path::PathBuf,
    /// Where the IR directories and ORT's JSON go (one subdirectory per model).
    pub dir: std::path::PathBuf,
}

/// Rounds in which ONNX Runtime and our dense plan are timed side by side.
const ORT_ROUNDS: usize = 5;

/// ONNX Runtime against our dense plans at one thread count: medians over [`ORT_ROUNDS`]
/// rounds that time the two back to back.
struct OrtTiming {
    threads: usize,
    /// ORT's ms and ours (medians of the rounds' medians).
    ort_ms: f64,
    ours_ms: f64,
    /// Median of the rounds' ours / ORT ratios (below 1: ORT is slower).
    ratio: f64,
}

/// Saves `graph` for the ORT script with a seeded input and our plan's output on it, starts
/// the script as a server (it converts the model, checks ORT's output against ours and builds
/// one session per thread count), then times ORT and each of our `dense` plans (threads, plan)
/// in interleaved rounds: this machine's speed drifts by tens of percent within seconds, and
/// two medians taken a minute apart drifted with it. Returns ORT's version and the timings.
fn time_ort(
    peer: &OrtPeer,
    name: &str,
    graph: &Graph,
    dense: &mut [(usize, &mut Plan)],
    min_time: f64,
) -> anyhow::Result<(String, Vec<OrtTiming>)> {
    use anyhow::Context;
    use std::io::{BufRead, Write};
    let dir = peer.dir.join(name);
    tessera_ir::io::save(graph, &dir)?;
    let mut plan = Plan::compile(graph, &CompileOptions::default())?;
    let x = IrTensor::uniform(plan.input_shape().to_vec(), 1.0, 11).data;
    let mut y = vec![0.0; plan.output_shape().iter().product()];
    plan.run(&x, &mut y)?;
    let bytes = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
    std::fs::write(dir.join("input.bin"), bytes(&x))?;
    std::fs::write(dir.join("reference.bin"), bytes(&y))?;
    let list: Vec<String> = dense.iter().map(|(t, _)| t.to_string()).collect();
    let mut child = std::process::Command::new(&peer.python)
        .arg(&peer.script)
        .arg("--ir")
        .arg(&dir)
        .arg("--out")
        .arg(dir.join("ort.json"))
        .args(["--threads", &list.join(","), "--serve"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {} {}", peer.python, peer.script.display()))?;
    let (Some(mut to), Some(from)) = (child.stdin.take(), child.stdout.take()) else {
        anyhow::bail!("{}: no pipes to the ORT script", peer.script.display());
    };
    let mut from = std::io::BufReader::new(from);
    let mut line = String::new();
    let mut reply = |line: &mut String| -> anyhow::Result<String> {
        line.clear();
        from.read_line(line)?;
        Ok(line.trim().to_string())
    };
    let ready = reply(&mut line)?;
    let Some(version) = ready.strip_prefix("ready ") else {
        let status = child.wait()?;
        anyhow::bail!(
            "{} on {}: expected 'ready', got {ready:?} ({status})",
            peer.script.display(),
            dir.display()
        );
    };
    let version = version.to_string();
    let window = min_time / ORT_ROUNDS as f64;
    let mut rounds = vec![Vec::new(); dense.len()];
    for _ in 0..ORT_ROUNDS {
        for ((threads, plan), r) in dense.iter_mut().zip(&mut rounds) {
            let ours = median_ms(window, || {
                let _ = plan.run(&x, &mut y);
            });
            writeln!(to, "time {threads} {window}")?;
            to.flush()?;
            let text = reply(&mut line)?;
            let ort: f64 = text
                .parse()
                .with_context(|| format!("{}: expected ms, got {text:?}", peer.script.display()))?;
            r.push((ort, ours));
        }
    }
    writeln!(to, "quit")?;
    drop(to);
    let status = child.wait()?;
    anyhow::ensure!(
        status.success(),
        "{} failed on {} ({status})",
        peer.script.display(),
        dir.display()
    );
    let timings = dense
        .iter()
        .zip(&rounds)
        .map(|((threads, _), r)| OrtTiming {
            threads: *threads,
            ort_ms: median(&r.iter().map(|p| p.0).collect::<Vec<_>>()),
            ours_ms: median(&r.iter().map(|p| p.1).collect::<Vec<_>>()),
            ratio: median(&r.iter().map(|p| p.1 / p.0).collect::<Vec<_>>()),
        })
        .collect();
    Ok((version, timings))
}

impl Default for ModelSuiteConfig {
    fn default() -> Self {
        ModelSuiteConfig {
            only: Vec::new(),
            threads: vec![1, 2],
            rates: vec![4.0, 8.0, 16.0],
            schemes: ["block-punched:8x4", "bcr:8x32", "pattern:8+connectivity", "unstructured"]
                .map(String::from)
                .to_vec(),
            min_time: 0.3,
            tune: false,
            ort: None,
        }
    }
}

/// One whole-model measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelPoint {
    /// Model.
    pub model: String,
    /// `dense`, a scheme, or `burn-flex` / `burn-ndarray`.
    pub scheme: String,
    /// Compression of the pruned layers (1 for dense).
    pub rate: f64,
    /// Threads.
    pub threads: usize,
    /// Median milliseconds per batch-1 inference.
    pub median_ms: f64,
    /// Our dense plan's time / this time (same threads, same run).
    pub speedup: f64,
    /// Dense multiply-adds / kept multiply-adds, whole model.
    pub flop_reduction: f64,
}

/// One layer of a pruned plan against the same layer of the dense plan (1 thread).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerPoint {
    /// Model.
    pub model: String,
    /// Scheme.
    pub scheme: String,
    /// Rate.
    pub rate: f64,
    /// Node.
    pub node: String,
    /// Kernel and format.
    pub kernel: String,
    /// Kernel size (`3x3`, `1x1`, ...).
    pub kernel_size: String,
    /// Vector lanes the pruned layer runs at (8 where an AVX-512 plan runs it at AVX2's
    /// width; 0 in results written before this field).
    #[serde(default)]
    pub lanes: usize,
    /// The dense layer's ms.
    pub dense_ms: f64,
    /// The pruned layer's ms.
    pub ms: f64,
    /// Dense layer ms / pruned layer ms.
    pub speedup: f64,
    /// Dense MACs / kept MACs of the layer.
    pub flop_reduction: f64,
}

/// One step of a plan (1 thread).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanStep {
    /// Model.
    pub model: String,
    /// Scheme (`dense` for the dense plan).
    pub scheme: String,
    /// Rate (1 for the dense plan).
    pub rate: f64,
    /// Node.
    pub node: String,
    /// Kernel and format of a weighted layer (empty for other steps).
    pub kernel: String,
    /// Milliseconds per sample.
    pub ms: f64,
}

/// The latency model calibrated on this run's 1-thread layer times.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LatencyReport {
    /// Fitted on every other sample (by family and size).
    pub model: LatencyModel,
    /// Median |predicted - measured| / measured on the held-out samples.
    pub held_out_median_error: f64,
    /// Per family: (held-out samples, median error).
    pub per_family: BTreeMap<String, (usize, f64)>,
    /// Every sample.
    pub samples: Vec<LatencySample>,
}

/// Everything measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ModelResults {
    /// Whole-model points.
    pub models: Vec<ModelPoint>,
    /// Per-layer points.
    pub layers: Vec<LayerPoint>,
    /// Every step of each plan on 1 thread (dense and pruned): node, kernel / format, ms.
    #[serde(default)]
    pub steps: Vec<PlanStep>,
    /// The latency model and its error.
    pub latency: LatencyReport,
}

fn zoo() -> Vec<(&'static str, ZooConfig, [usize; 4])> {
    vec![
        ("lenet5", ZooConfig::Lenet5(Lenet5Config::default()), [1, 1, 28, 28]),
        ("vgg11", ZooConfig::Vgg(VggConfig::default()), [1, 3, 32, 32]),
        ("resnet20", ZooConfig::Resnet(ResNetConfig::default()), [1, 3, 32, 32]),
        ("mobilenet_v2", ZooConfig::MobileNetV2(MobileNetV2Config::default()), [1, 3, 32, 32]),
    ]
}

/// Exports the model and times burn's dense forward on `backends`.
struct ExportAndTime {
    input: [usize; 4],
    device: burn::prelude::Device,
    time: bool,
    min_time: f64,
}

impl WithModel for ExportAndTime {
    type Output = anyhow::Result<(Graph, Option<f64>)>;
    fn run<M: Classifier>(self, model: M) -> Self::Output {
        let graph = model.export(self.input, &Masks::new())?;
        if !self.time {
            return Ok((graph, None));
        }
        let n: usize = self.input.iter().product();
        let x = IrTensor::uniform(self.input.to_vec(), 1.0, 5).data;
        // burn's own convolutions: the zoo routes them to tessera-kernels otherwise.
        tessera_models::conv::set_kernels_enabled(false);
        let ms = median_ms(self.min_time, || {
            let t = Tensor::<4>::from_data(TensorData::new(x.clone(), self.input), &self.device);
            let y = model.forward(t);
            // Reading the result back makes the (possibly lazy) backend finish.
            let _ = y.into_data();
        });
        tessera_models::conv::set_kernels_enabled(true);
        let _ = n;
        Ok((graph, Some(ms)))
    }
}

fn median_ms(min_time: f64, f: impl FnMut()) -> f64 {
    crate::timing::median_ms(min_time, 10, 2000, f)
}

/// Prunes the convolutions of `g` as described in the module docs; returns how many.
fn prune_convs(g: &mut Graph, scheme: &Scheme, pattern: bool, rate: f64) -> anyhow::Result<usize> {
    let convs: Vec<(String, String)> = g
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| match &n.op {
            Op::Conv { weight, groups, .. } => {
                let s = &g.params[weight].tensor.shape;
                let depthwise = *groups > 1 && s[1] == 1;
                let three = s.len() == 4 && s[2] == 3 && s[3] == 3;
                (i > 0 && !depthwise && (!pattern || three))
                    .then(|| (n.name.clone(), weight.clone()))
            }
            _ => None,
        })
        .collect();
    for (node, weight) in &convs {
        g.prune(node, weight, scheme, Target::Compression(rate))?;
    }
    Ok(convs.len())
}

struct Timed {
    ms: f64,
    per_step: Vec<(String, f64)>,
}

fn time_plan(
    graph: &Graph,
    threads: usize,
    min_time: f64,
    per_layer: bool,
    tune: bool,
    whole: bool,
) -> anyhow::Result<(Plan, Timed)> {
    let tuning = if tune { Tuning::Measure { cache: None } } else { Tuning::Default };
    let mut plan = Plan::compile(graph, &CompileOptions { batch: 1, threads, isa: None, tuning })?;
    let x = IrTensor::uniform(plan.input_shape().to_vec(), 1.0, 7).data;
    let mut y = vec![0.0; plan.output_shape().iter().product()];
    // Without `whole`, the caller times the plan itself (beside its baseline); 10 runs here
    // only size the per-layer repetitions.
    let ms = median_ms(if whole { min_time } else { 0.0 }, || {
        let _ = plan.run(&x, &mut y);
    });
    let mut per_step = Vec::new();
    if per_layer {
        // Each step's median over the runs, as the whole plans' times are medians (the mean
        // took every interruption into the step it fell on, which weighs most on the
        // smallest, pruned, layers). It moved little: ResNet-20's stride-2 layer
        // 16->32@32x32, block-punched 8x, reads 8.9 us in its plan against 5.6 us alone in
        // `cargo run --release -p tessera-kernels --example in_plan_conv` (same target and
        // epilogue), a gap not yet explained.
        let steps = plan.step_nodes().len();
        let reps = ((min_time / (ms / 1e3)).ceil() as usize).clamp(11, 1001);
        let mut samples = vec![Vec::with_capacity(reps); steps];
        let mut secs = vec![0.0; steps];
        for _ in 0..reps {
            secs.fill(0.0);
            plan.run_timed(&x, &mut y, &mut secs)?;
            for (v, &s) in samples.iter_mut().zip(&secs) {
                v.push(s);
            }
        }
        per_step = plan
            .step_nodes()
            .iter()
            .zip(&mut samples)
            .map(|(n, v)| {
                v.sort_by(f64::total_cmp);
                (n.clone(), v[v.len() / 2] * 1e3)
            })
            .collect();
    }
    Ok((plan, Timed { ms, per_step }))
}

fn macs(plan: &Plan) -> (u64, u64) {
    plan.layers().iter().fold((0, 0), |(d, k), l| (d + l.dense_macs, k + l.kept_macs))
}

/// The IR interpreter's output for a graph on a seeded input: the reference every plan of
/// that graph (each thread count) is checked against by [`check_plan`].
struct Reference {
    x: IrTensor,
    want: Vec<f32>,
}

impl Reference {
    fn of(graph: &Graph, input_shape: &[usize]) -> anyhow::Result<Self> {
        let x = IrTensor::uniform(input_shape.to_vec(), 1.0, 12);
        let want = tessera_ir::interp::run(graph, std::slice::from_ref(&x))?;
        let want = want.into_iter().next().map(|t| t.data).unwrap_or_default();
        Ok(Reference { x, want })
    }
}

/// The plan's output against the graph's reference (computed on first use; max difference
/// within 1e-4 of the output's largest magnitude): a benchmark times only plans that compute
/// the model.
fn check_plan(
    name: &str,
    graph: &Graph,
    plan: &mut Plan,
    reference: &mut Option<Reference>,
) -> anyhow::Result<()> {
    let r = match reference {
        Some(r) => r,
        None => reference.insert(Reference::of(graph, plan.input_shape())?),
    };
    let mut got = vec![0.0; r.want.len()];
    plan.run(&r.x.data, &mut got)?;
    let scale = r.want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    let diff = got.iter().zip(&r.want).fold(0.0f32, |m, (g, w)| m.max((g - w).abs()));
    anyhow::ensure!(
        diff <= 1e-4 * scale,
        "{name}: the plan's output differs from the interpreter's by {diff} (scale {scale})"
    );
    Ok(())
}

/// Runs the suite.
pub fn run_models(cfg: &ModelSuiteConfig) -> anyhow::Result<ModelResults> {
    let mut out = ModelResults::default();
    let mut samples = Vec::new();
    for (name, config, input) in zoo() {
        if !cfg.only.is_empty() && !cfg.only.iter().any(|o| name.contains(o.as_str())) {
            continue;
        }
        let mut graph = None;
        for backend in [Backend::Flex, Backend::NdArray] {
            let device = backend.device();
            let act =
                ExportAndTime { input, device: device.clone(), time: true, min_time: cfg.min_time };
            let (g, ms) = config.build(&device, 0, act)??;
            let label = match backend {
                Backend::Flex => "burn-flex",
                Backend::NdArray => "burn-ndarray",
            };
            tracing::info!(model = name, backend = label, ms = ?ms, "burn forward");
            out.models.push(ModelPoint {
                model: name.into(),
                scheme: label.into(),
                rate: 1.0,
                threads: 0,
                median_ms: ms.unwrap_or(f64::NAN),
                speedup: f64::NAN,
                flop_reduction: 1.0,
            });
            graph.get_or_insert(g);
        }
        let Some(graph) = graph else { continue };
        let (dense_graph, _) = Pipeline::standard().run(graph.clone())?;
        // Dense at every thread count, then each pruned graph (projected once) at each.
        let mut dense = Vec::new();
        let mut dense_reference = None;
        for &threads in &cfg.threads {
            let (mut dense_plan, t) =
                time_plan(&dense_graph, threads, cfg.min_time, threads == 1, cfg.tune, true)?;
            tracing::info!(model = name, threads, ms = t.ms, "dense plan");
            out.models.push(ModelPoint {
                model: name.into(),
                scheme: "dense".into(),
                rate: 1.0,
                threads,
                median_ms: t.ms,
                speedup: 1.0,
                flop_reduction: 1.0,
            });
            if threads == 1 {
                samples.extend(latency_samples(&dense_plan, &t));
                out.steps.extend(plan_steps(name, "dense", 1.0, &dense_plan, &t));
            }
            check_plan(name, &dense_graph, &mut dense_plan, &mut dense_reference)?;
            dense.push((threads, macs(&dense_plan).0, t, dense_plan));
        }
        if let Some(peer) = &cfg.ort {
            let mut plans: Vec<(usize, &mut Plan)> =
                dense.iter_mut().map(|d| (d.0, &mut d.3)).collect();
            let (version, times) = time_ort(peer, name, &dense_graph, &mut plans, cfg.min_time)?;
            for t in times {
                let (threads, ms, ours) = (t.threads, t.ort_ms, t.ours_ms);
                tracing::info!(
                    model = name,
                    threads,
                    ms,
                    ours,
                    ours_over_ort = t.ratio,
                    "onnxruntime {version}"
                );
                out.models.push(ModelPoint {
                    model: name.into(),
                    scheme: format!("onnxruntime {version}"),
                    rate: 1.0,
                    threads,
                    median_ms: ms,
                    speedup: t.ratio,
                    flop_reduction: 1.0,
                });
            }
        }
        for scheme_text in &cfg.schemes {
            let scheme: Scheme = scheme_text.parse()?;
            let pattern = scheme_text.starts_with("pattern");
            for &rate in &cfg.rates {
                let mut g = graph.clone();
                prune_convs(&mut g, &scheme, pattern, rate)?;
                let (g, _) = Pipeline::standard().run(g)?;
                let mut reference = None;
                for (threads, dense_macs, d, dense_plan) in &mut dense {
                    let threads = *threads;
                    let (mut plan, t) =
                        time_plan(&g, threads, cfg.min_time, threads == 1, cfg.tune, false)?;
                    let what = format!("{name} {scheme_text} {rate}x");
                    check_plan(&what, &g, &mut plan, &mut reference)?;
                    let (_, kept) = macs(&plan);
                    // The speed-up from rounds interleaved with the dense plan (see
                    // `timing::paired_speedup`), not from two medians taken apart.
                    let x = IrTensor::uniform(plan.input_shape().to_vec(), 1.0, 7).data;
                    let (mut y, mut yd) = (
                        vec![0.0; plan.output_shape().iter().product()],
                        vec![0.0; dense_plan.output_shape().iter().product()],
                    );
                    let (ms, speedup) = crate::timing::paired_speedup(
                        cfg.min_time,
                        || {
                            let _ = plan.run(&x, &mut y);
                        },
                        || {
                            let _ = dense_plan.run(&x, &mut yd);
                        },
                    );
                    let point = ModelPoint {
                        model: name.into(),
                        scheme: scheme_text.clone(),
                        rate,
                        threads,
                        median_ms: ms,
                        speedup,
                        flop_reduction: *dense_macs as f64 / kept.max(1) as f64,
                    };
                    tracing::info!(model = name, scheme = %scheme_text, rate, threads, ms, speedup = point.speedup, "pruned plan");
                    out.models.push(point);
                    if threads == 1 {
                        out.layers.extend(layer_points(name, scheme_text, rate, &g, &plan, d, &t));
                        out.steps.extend(plan_steps(name, scheme_text, rate, &plan, &t));
                        samples.extend(latency_samples(&plan, &t));
                    }
                }
            }
        }
    }
    out.latency = calibrate(samples);
    Ok(out)
}

/// Latency samples of a plan's weighted layers from its per-step times.
fn latency_samples(plan: &Plan, t: &Timed) -> Vec<LatencySample> {
    plan.layers()
        .iter()
        .filter_map(|l| {
            let ms = t.per_step.iter().find(|(n, _)| n == &l.node)?.1;
            Some(LatencySample {
                family: l.family(),
                kept_macs: l.kept_macs as f64,
                // A layer reading its input pre-packed by the previous one does no packing.
                input_floats: if l.reads_packed { 0.0 } else { l.input_floats as f64 },
                output_floats: l.output_floats as f64,
                tiles: l.tiles as f64,
                ms,
            })
        })
        .collect()
}

/// Fits the latency model on every other sample (ordered by family and size) and measures
/// its error on the rest.
fn calibrate(mut samples: Vec<LatencySample>) -> LatencyReport {
    samples.sort_by(|a, b| {
        (a.family.as_str(), a.kept_macs, a.output_floats)
            .partial_cmp(&(b.family.as_str(), b.kept_macs, b.output_floats))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let (fit, test): (Vec<_>, Vec<_>) =
        samples.iter().cloned().enumerate().partition(|(i, _)| i % 2 == 0);
    let fit: Vec<LatencySample> = fit.into_iter().map(|(_, s)| s).collect();
    let test: Vec<LatencySample> = test.into_iter().map(|(_, s)| s).collect();
    let model = LatencyModel::fit(&fit);
    let mut per_family = BTreeMap::new();
    for family in model.families.keys() {
        let group: Vec<LatencySample> =
            test.iter().filter(|s| &s.family == family).cloned().collect();
        per_family.insert(family.clone(), (group.len(), median(&model.errors(&group))));
    }
    let held_out_median_error = median(&model.errors(&test));
    tracing::info!(samples = samples.len(), held_out_median_error, "latency model");
    LatencyReport { model, held_out_median_error, per_family, samples }
}

/// Every timed step of `plan` with its kernel.
fn plan_steps(model: &str, scheme: &str, rate: f64, plan: &Plan, t: &Timed) -> Vec<PlanStep> {
    t.per_step
        .iter()
        .map(|(node, ms)| PlanStep {
            model: model.into(),
            scheme: scheme.into(),
            rate,
            node: node.clone(),
            kernel: plan
                .layers()
                .iter()
                .find(|l| &l.node == node)
                .map(|l| format!("{} / {}", l.kernel, l.format))
                .unwrap_or_default(),
            ms: *ms,
        })
        .collect()
}

/// Per-layer points of a pruned plan against the dense plan's times.
fn layer_points(
    model: &str,
    scheme: &str,
    rate: f64,
    g: &Graph,
    plan: &Plan,
    dense: &Timed,
    pruned: &Timed,
) -> Vec<LayerPoint> {
    let mut out = Vec::new();
    for l in plan.layers().iter().filter(|l| l.scheme.is_some()) {
        let find = |steps: &[(String, f64)]| steps.iter().find(|(n, _)| n == &l.node).map(|s| s.1);
        let (Some(d), Some(s)) = (find(&dense.per_step), find(&pruned.per_step)) else {
            continue;
        };
        let size = g
            .nodes
            .iter()
            .find(|n| n.name == l.node)
            .and_then(|n| match &n.op {
                Op::Conv { weight, .. } => {
                    let s = &g.params[weight].tensor.shape;
                    Some(format!("{}x{}", s[2], s.get(3).copied().unwrap_or(1)))
                }
                _ => None,
            })
            .unwrap_or_default();
        out.push(LayerPoint {
            model: model.into(),
            scheme: scheme.into(),
            rate,
            node: l.node.clone(),
            kernel: format!("{} / {}", l.kernel, l.format),
            kernel_size: size,
            lanes: l.lanes,
            dense_ms: d,
            ms: s,
            speedup: d / s,
            flop_reduction: l.dense_macs as f64 / l.kept_macs.max(1) as f64,
        });
    }
    out
}

/// The Markdown report.
pub fn markdown(r: &ModelResults) -> String {
    let mut s = String::from(
        "# Whole-model benchmark\n\nBatch 1, f32. `speedup` = our dense plan / this plan, same \
         threads, same run, the median ratio over 5 rounds that time the two plans side by side \
         (a pruned plan's `ms` is its median over those rounds); `FLOP red.` = dense / kept multiply-adds over the whole model. burn \
         rows: its dense forward on the same model (threads: burn's own pool). onnxruntime \
         rows (with `--ort`): the same dense graph exported to ONNX, timed in 5 rounds \
         interleaved with our dense plan (`ms`: ORT's median over the rounds); its speedup is \
         the median of the rounds' ours / ORT ratios, below 1 when ORT is slower.\n\n",
    );
    s.push_str("| model | scheme | rate | threads | ms | speedup | FLOP red. |\n|---|---|---|---|---|---|---|\n");
    for p in &r.models {
        s.push_str(&format!(
            "| {} | {} | {:.0}x | {} | {:.3} | {:.2}x | {:.2}x |\n",
            p.model, p.scheme, p.rate, p.threads, p.median_ms, p.speedup, p.flop_reduction
        ));
    }
    s.push_str(&format!(
        "\n## Latency model\n\nPer kernel family `ms = c0 + c1 MACs + c2 inputs + c3 outputs + c4 tiles`, \
         fitted (non-negative least squares on relative error) on every other 1-thread layer \
         time of this run and tested on the rest: median |error| **{:.1}%** over {} held-out \
         layers.\n\n| family | c0 ms | ms per M MACs | ms per M inputs | ms per M outputs | ms per k tiles | fitted on | held out | median error |\n|---|---|---|---|---|---|---|---|---|\n",
        100.0 * r.latency.held_out_median_error,
        r.latency.samples.len() / 2
    ));
    for (family, c) in &r.latency.model.families {
        let (n, e) = r.latency.per_family.get(family).copied().unwrap_or((0, f64::NAN));
        s.push_str(&format!(
            "| {family} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {} | {n} | {:.1}% |\n",
            c.per_call,
            c.per_mmac,
            c.per_minput,
            c.per_moutput,
            c.per_ktile,
            c.samples,
            100.0 * e
        ));
    }
    s.push_str("\n## Dense plans per step (1 thread; every plan's steps are in results.json)\n\n| model | step | kernel | ms |\n|---|---|---|---|\n");
    for d in r.steps.iter().filter(|d| d.scheme == "dense") {
        s.push_str(&format!("| {} | {} | {} | {:.4} |\n", d.model, d.node, d.kernel, d.ms));
    }
    s.push_str(
        "\n## Per layer (1 thread): speed-up over the same layer dense vs its FLOP reduction\n\nEach layer's time is its step's median over the plan's timed runs.\n\n",
    );
    s.push_str("| model | scheme | rate | layer | kernel | lanes | size | dense ms | ms | speedup | FLOP red. | ratio |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for l in &r.layers {
        s.push_str(&format!(
            "| {} | {} | {:.0}x | {} | {} | {} | {} | {:.4} | {:.4} | {:.2}x | {:.2}x | {:.0}% |\n",
            l.model,
            l.scheme,
            l.rate,
            l.node,
            l.kernel,
            l.lanes,
            l.kernel_size,
            l.dense_ms,
            l.ms,
            l.speedup,
            l.flop_reduction,
            100.0 * l.speedup / l.flop_reduction
        ));
    }
    s
}
