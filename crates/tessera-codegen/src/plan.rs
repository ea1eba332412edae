//! The execution plan: a graph lowered once to a list of steps over one preallocated arena.
//!
//! [`Plan::compile`] validates the graph for the batch size, lowers every node (weighted
//! layers through [`crate::lower`], the rest to plain loops), packs the weights, places every
//! value in the arena by liveness and allocates each kernel's scratch. [`Plan::run`] then only
//! copies the input in, runs the steps and copies the output out: no allocation.

use std::collections::HashMap;

use serde::Serialize;
use tessera_ir::{Graph, Node, Op};
use tessera_kernels::{Isa, OutputTarget};

use crate::buffers::{Slot, is_view, layout_values};
use crate::error::{CodegenError, Result, unsupported};
use crate::exec::{Io, Pool2d, Repack, Step, clamp_of, conv_once, linear_once, run_step};
use crate::lower::{self, Choice, shape_of};
use crate::tune::{Pick, PlanThreads, TuneCache, Tuner, Tuning, cpu_name, time_ms};

/// How to compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileOptions {
    /// Samples per run (the graph's declared batch is replaced).
    pub batch: usize,
    /// Worker threads for the kernels (1 = the calling thread only); with tuning, the most
    /// any layer may use.
    pub threads: usize,
    /// Instruction set; `None` = the best this CPU has ([`Isa::detect`]).
    pub isa: Option<Isa>,
    /// How kernels are chosen.
    pub tuning: Tuning,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions { batch: 1, threads: 1, isa: None, tuning: Tuning::Default }
    }
}

/// One lowered layer, for reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerReport {
    /// Node name.
    pub node: String,
    /// Op name.
    pub op: &'static str,
    /// Kernel (`direct`, `row-groups`, `pattern`, `bcr-blocks`, `gemv`, ...).
    pub kernel: &'static str,
    /// Weight storage format (`dense`, `CSR`, `block-punched`, `FKW`, `BCR-compact`, ...).
    pub format: &'static str,
    /// The weight's scheme, when pruned.
    pub scheme: Option<String>,
    /// Multiply-adds of the dense layer per sample.
    pub dense_macs: u64,
    /// Multiply-adds with the pruned weights per sample.
    pub kept_macs: u64,
    /// Threads the layer runs on.
    pub threads: usize,
    /// The tuner's measured milliseconds per sample (None without tuning).
    pub tuned_ms: Option<f64>,
    /// Whether the decision came from the tuning cache.
    pub cached: bool,
    /// Input floats per sample.
    pub input_floats: u64,
    /// Output floats per sample.
    pub output_floats: u64,
    /// Register tiles per sample (groups of 8 filters x blocks of 32 positions).
    pub tiles: u64,
    /// The layer stores its output straight into the next convolution's padded input
    /// layout, which then skips packing.
    pub stores_packed: bool,
    /// The layer reads its input already packed by the previous convolution.
    pub reads_packed: bool,
    /// Vector lanes (f32) the layer runs at: the plan's instruction set's, or 8 where a
    /// convolution runs faster at 8 lanes on an AVX-512 CPU (see the crate docs).
    pub lanes: usize,
}

impl LayerReport {
    /// The kernel family, `kernel / format`, as the latency model names it.
    pub fn family(&self) -> String {
        format!("{} / {}", self.kernel, self.format)
    }
}

/// A compiled model.
#[derive(Debug)]
pub struct Plan {
    steps: Vec<Step>,
    /// Node of each step.
    step_nodes: Vec<String>,
    arena: Vec<f32>,
    input: Slot,
    output: Slot,
    output_shape: Vec<usize>,
    input_shape: Vec<usize>,
    isa: Isa,
    layers: Vec<LayerReport>,
    /// Floats of the padded conv -> conv edge buffers at the end of the arena.
    edge_len: usize,
    /// The thread budget the kernels were bound for (no step may use more).
    max_threads: usize,
    /// See [`Plan::kernels_tuned`].
    kernels_tuned: bool,
}

fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

impl Plan {
    /// Compiles `graph` (one input, one output; run the IR passes first to fold batch norms
    /// and fuse activations) for `options`.
    ///
    /// With [`Tuning::Measure`], the plan of the tuner's per-layer picks and the plan of the
    /// table's kernels are both compiled (on more than one thread each with its thread counts
    /// refined in context, see `refine_threads`), timed as whole plans in alternating rounds,
    /// and the faster is returned ([`Plan::kernels_tuned`] says which): a layer timed alone
    /// does not see what its kernel costs its neighbours (the table's kernels store into the
    /// next convolution's packed input, which then skips packing), and MobileNetV2's
    /// block-punched 8x plan of per-layer picks ran 0.639 ms against the table's 0.531. The
    /// outcome is cached with the per-layer decisions.
    pub fn compile(graph: &Graph, options: &CompileOptions) -> Result<Plan> {
        let Tuning::Measure { cache } = &options.tuning else {
            return Ok(Self::lower_graph(graph, options, None)?.0);
        };
        let isa = options.isa.unwrap_or_else(Isa::detect);
        let mut tuner = Tuner {
            cache: match cache {
                Some(p) => TuneCache::load(p)?,
                None => TuneCache::default(),
            },
            path: cache.clone(),
            prefix: format!(
                "{} | {isa} | batch {} | threads {}",
                cpu_name(),
                options.batch,
                options.threads
            ),
        };
        let (mut tuned, layer_keys) = Self::lower_graph(graph, options, Some(&mut tuner))?;
        tuned.kernels_tuned = true;
        let key = tuner.plan_key(&layer_keys);
        // Both plans have the same weighted steps and thread budget, so the tuned one can
        // vet a cached decision for either; the table's plan is lowered only when needed.
        let cached =
            tuner.cache.plans.get(&key).filter(|d| tuned.accepts_step_threads(&d.threads)).cloned();
        let plan = match cached {
            Some(d) => {
                let mut plan =
                    if d.table { Self::lower_graph(graph, options, None)?.0 } else { tuned };
                plan.apply_step_threads(&d.threads);
                plan
            }
            None => {
                let (mut table, _) = Self::lower_graph(graph, options, None)?;
                let mut threads = Vec::new();
                for plan in [&mut tuned, &mut table] {
                    threads.push(if options.threads > 1 {
                        plan.refine_threads(options.threads)?.threads
                    } else {
                        plan.step_thread_counts()
                    });
                }
                let ms = compare_plans(&mut [&mut tuned, &mut table])?;
                let use_table = ms[1] < ms[0];
                tracing::debug!(?ms, use_table, "tuned plan against the table's");
                let pick = usize::from(use_table);
                tuner.cache.plans.insert(
                    key,
                    PlanThreads {
                        threads: threads.swap_remove(pick),
                        ms: ms[pick],
                        table: use_table,
                    },
                );
                if use_table { table } else { tuned }
            }
        };
        if let Some(path) = &tuner.path {
            tuner.cache.save(path)?;
        }
        Ok(plan)
    }

    /// Lowers `graph` for `options`, with `tuner` choosing each weighted layer's kernel (and
    /// thread count) by timing it alone, or the table's kernels on the whole thread budget
    /// without one; returns the plan and, when tuning, its weighted layers' cache keys.
    fn lower_graph(
        graph: &Graph,
        options: &CompileOptions,
        mut tuner: Option<&mut Tuner>,
    ) -> Result<(Plan, Vec<String>)> {
        if options.batch == 0 || options.threads == 0 {
            return Err(CodegenError::Options {
                field: "batch/threads",
                reason: "must be at least 1".into(),
            });
        }
        let [input] = graph.inputs.as_slice() else {
            return Err(CodegenError::Options {
                field: "graph",
                reason: format!("plans take one input, the graph has {}", graph.inputs.len()),
            });
        };
        let [output] = graph.outputs.as_slice() else {
            return Err(CodegenError::Options {
                field: "graph",
                reason: format!("plans return one output, the graph has {}", graph.outputs.len()),
            });
        };
        let mut input_shape = input.shape.clone();
        if let Some(n) = input_shape.first_mut() {
            *n = options.batch;
        }
        let shapes = graph.infer_shapes(std::slice::from_ref(&input_shape))?;
        let isa = options.isa.unwrap_or_else(Isa::detect);

        // The plan's structure: the graph's nodes with residual adds fused into the
        // convolutions that feed them (parameters stay in `graph`).
        let structure = fuse_residual_adds(graph);
        let values =
            layout_values(&structure, &shapes, &input.name, numel(&input_shape), output.as_str())?;
        let slot = |name: &str| values.slot(name);

        let mut steps = Vec::new();
        let mut layer_keys = Vec::new();
        let mut step_nodes = Vec::new();
        let mut layers = Vec::new();
        for node in &structure.nodes {
            if !is_view(&node.op) {
                step_nodes.push(node.name.clone());
            }
            let x_shape = shape_of(&shapes, node, &node.inputs[0])?;
            let y_shape = shape_of(&shapes, node, &node.output)?;
            let io = Io {
                x: slot(&node.inputs[0]),
                y: slot(&node.output),
                x_len: numel(x_shape) / options.batch,
                y_len: numel(y_shape) / options.batch,
            };
            match &node.op {
                Op::Conv { weight, bias, activation, .. } => {
                    let param = graph.param(weight)?;
                    let shape = lower::conv_shape(node, param, x_shape)?;
                    let bias = bias_of(graph, bias.as_deref())?;
                    let positions = shape.output_positions();
                    let macs = shape.flops() / 2;
                    let (kernel, choice, pick) = match tuner.as_mut() {
                        None => {
                            let (k, c) = lower::conv_kernel(node, param, shape, options.threads)?;
                            (k, c, Pick::untuned(options.threads))
                        }
                        Some(t) => {
                            let key = t.key(param, &format!("conv {shape:?}"));
                            layer_keys.push(key.clone());
                            let candidates =
                                lower::conv_candidates(node, param, shape, options.threads)?;
                            let (x_len, y_len) = (io.x_len, io.y_len);
                            let act = *activation;
                            // Both lane widths on an AVX-512 CPU (see `lower::conv_isa`).
                            let mut lanes = vec![isa.lanes(), isa.at_most_8_lanes().lanes()];
                            lanes.dedup();
                            t.choose(key, candidates, options.threads, &lanes, |k, threads, l| {
                                let x = crate::tune_input(x_len);
                                let mut y = vec![0.0f32; y_len];
                                let isa = isa_of_lanes(isa, l);
                                time_ms(|| {
                                    conv_once(
                                        k,
                                        isa,
                                        &x,
                                        &mut y,
                                        threads,
                                        bias.as_deref(),
                                        act,
                                        positions,
                                        None,
                                    )
                                    .map_err(|source| {
                                        CodegenError::Kernel { node: node.name.clone(), source }
                                    })
                                })
                            })?
                        }
                    };
                    let tiles = crate::latency::tiles(shape.out_channels, positions) as u64;
                    let step_isa = match pick.lanes {
                        Some(l) => isa_of_lanes(isa, l),
                        None => lower::conv_isa(&kernel, isa),
                    };
                    let lanes = step_isa.lanes();
                    layers.push(report(node, param, &choice, macs, &pick, &io, (tiles, lanes)));
                    steps.push(Step::Conv {
                        isa: step_isa,
                        node: node.name.clone(),
                        io,
                        threads: pick.threads,
                        kernel,
                        bias,
                        act: *activation,
                        positions,
                        y_used: io.y_len,
                        prepacked: false,
                        residual: node.inputs.get(1).map(|r| slot(r)),
                        residual_len: io.y_len,
                        repack: None,
                    });
                }
                Op::Linear { weight, bias, activation } => {
                    let param = graph.param(weight)?;
                    let (out_f, in_f) = (param.tensor.shape[0], param.tensor.shape[1]);
                    let rows = io.x_len / in_f.max(1);
                    let bias = bias_of(graph, bias.as_deref())?;
                    let (kernel, choice, pick) = match tuner.as_mut() {
                        None => {
                            let (k, c) = lower::linear_kernel(node, param, isa)?;
                            (k, c, Pick::untuned(options.threads))
                        }
                        Some(t) => {
                            let key = t.key(param, &format!("linear {out_f}x{in_f} rows {rows}"));
                            layer_keys.push(key.clone());
                            let candidates = lower::linear_candidates(node, param, isa)?;
                            let act = *activation;
                            let lanes = [isa.lanes()];
                            t.choose(key, candidates, options.threads, &lanes, |k, threads, _| {
                                let x = crate::tune_input(in_f);
                                let mut y = vec![0.0f32; out_f];
                                time_ms(|| {
                                    linear_once(k, isa, &x, &mut y, threads, bias.as_deref(), act)
                                        .map_err(|source| CodegenError::Kernel {
                                            node: node.name.clone(),
                                            source,
                                        })
                                })
                            })?
                        }
                    };
                    let macs = (rows * in_f * out_f) as u64;
                    let tiles = (out_f.div_ceil(8) * rows) as u64;
                    let at = (tiles, isa.lanes());
                    layers.push(report(node, param, &choice, macs, &pick, &io, at));
                    steps.push(Step::Linear {
                        node: node.name.clone(),
                        io,
                        threads: pick.threads,
                        kernel,
                        bias,
                        act: *activation,
                        rows,
                        in_f,
                        out_f,
                    });
                }
                Op::BatchNorm { gamma, beta, mean, var, eps } => {
                    let get = |p: &str| graph.param(p).map(|p| p.tensor.data.clone());
                    let (g, b, m, v) = (get(gamma)?, get(beta)?, get(mean)?, get(var)?);
                    let scale: Vec<f32> =
                        g.iter().zip(&v).map(|(g, v)| g / (v + eps).sqrt()).collect();
                    let shift = b.iter().zip(&m).zip(&scale).map(|((b, m), s)| b - m * s).collect();
                    let positions = numel(&x_shape[2..]);
                    steps.push(Step::Affine { io, scale, shift, positions });
                }
                Op::Act { kind } => steps.push(Step::Act { io, kind: *kind }),
                Op::Add { activation } => steps.push(Step::Add {
                    a: slot(&node.inputs[0]),
                    b: slot(&node.inputs[1]),
                    y: slot(&node.output),
                    act: *activation,
                }),
                Op::MaxPool { kernel, stride, padding }
                | Op::AvgPool { kernel, stride, padding } => {
                    if x_shape.len() != 4 {
                        return Err(unsupported(node, "only 2-D pooling is lowered"));
                    }
                    let pool = Pool2d {
                        max: matches!(node.op, Op::MaxPool { .. }),
                        channels: x_shape[1],
                        in_hw: [x_shape[2], x_shape[3]],
                        out_hw: [y_shape[2], y_shape[3]],
                        kernel: [kernel[0], kernel[1]],
                        stride: [stride[0], stride[1]],
                        padding: [padding[0], padding[1]],
                    };
                    steps.push(Step::Pool { io, pool });
                }
                Op::GlobalAvgPool => steps.push(Step::GlobalAvg {
                    io,
                    channels: x_shape[1],
                    positions: numel(&x_shape[2..]),
                }),
                Op::Flatten { .. } | Op::Reshape { .. } => {}
                other => {
                    return Err(unsupported(
                        node,
                        format!(
                            "`{}` has no plan lowering yet (use tessera_ir::interp)",
                            other.name()
                        ),
                    ));
                }
            }
        }
        let arena_len = fuse_conv_edges(
            &structure,
            &mut steps,
            &step_nodes,
            &mut layers,
            values.arena_len,
            options.batch,
        )?;
        let plan = Plan {
            steps,
            step_nodes,
            arena: vec![0.0; arena_len],
            edge_len: arena_len - values.arena_len.next_multiple_of(16).min(arena_len),
            input: values.input,
            output: values.output,
            output_shape: shapes.get(output.as_str()).cloned().unwrap_or_default(),
            input_shape,
            isa,
            layers,
            max_threads: options.threads,
            kernels_tuned: false,
        };
        Ok((plan, layer_keys))
    }

    /// Whether the weighted layers run the tuner's per-layer picks (false: the table's
    /// kernels, with [`Tuning::Default`] or where [`Tuning::Measure`] found the table's plan
    /// faster as a whole).
    pub fn kernels_tuned(&self) -> bool {
        self.kernels_tuned
    }

    /// The thread count of every weighted step, in execution order.
    fn step_thread_counts(&mut self) -> Vec<usize> {
        let weighted = self.weighted_steps();
        weighted.iter().map(|&i| step_threads(&mut self.steps[i]).map_or(1, |t| *t)).collect()
    }

    /// Thread counts of the weighted steps, chosen in the plan's own context (the tuner's
    /// per-layer timings run each layer alone, on warm caches).
    ///
    /// On a small layer a second thread mostly moves data: its half of the input was written
    /// by the other core in the previous step (or its output is read there in the next), and
    /// lines cross between the cores' private caches at about 12 GB/s here (32 KB written on
    /// one core and read on the other: 2.8 us on top of 4.8), as much time as the halved
    /// arithmetic saves; timed alone, the layer looks faster on two threads. ResNet-20's
    /// block-punched 8x layers (0.3 M kept multiply-adds, 5 us) each ran 1.3x slower on two
    /// threads inside the plan.
    ///
    /// So: every step's time is measured inside whole runs with every weighted step on one
    /// thread, then on `max_threads`, and each step takes the faster; that mix, the tuner's
    /// own picks and the two uniform settings are then timed as whole plans in alternating
    /// rounds, and the fastest is kept. Kernels were bound for `max_threads`, so any count
    /// in `1..=max_threads` is valid for every step.
    fn refine_threads(&mut self, max_threads: usize) -> Result<PlanThreads> {
        let weighted = self.weighted_steps();
        if weighted.is_empty() {
            return Ok(PlanThreads { threads: Vec::new(), ms: 0.0, table: false });
        }
        let tuned = self.step_thread_counts();
        let x = crate::tune_input(self.input.len);
        let mut y = vec![0.0f32; self.output.len];
        let one = vec![1; weighted.len()];
        let all = vec![max_threads; weighted.len()];
        let mut step_ms = Vec::new();
        for config in [&one, &all] {
            self.set_step_threads(&weighted, config);
            let mut secs = vec![0.0; self.steps.len()];
            let runs = plan_runs(self, &x, &mut y, REFINE_SECONDS)?;
            for _ in 0..runs {
                self.run_timed(&x, &mut y, &mut secs)?;
            }
            step_ms.push(secs);
        }
        let mixed: Vec<usize> = weighted
            .iter()
            .map(|&i| if step_ms[0][i] <= step_ms[1][i] { 1 } else { max_threads })
            .collect();
        let mut configs = vec![tuned, mixed, one, all];
        let mut seen = Vec::new();
        configs.retain(|c| {
            let new = !seen.contains(c);
            seen.push(c.clone());
            new
        });
        let medians = alternating_medians(configs.len(), |c| {
            self.set_step_threads(&weighted, &configs[c]);
            time_runs(self, &x, &mut y)
        })?;
        let best =
            (0..configs.len()).min_by(|&a, &b| medians[a].total_cmp(&medians[b])).unwrap_or(0);
        tracing::debug!(?medians, best, "plan thread counts refined in context");
        let threads = configs.swap_remove(best);
        self.apply_step_threads(&threads);
        Ok(PlanThreads { threads, ms: medians[best], table: false })
    }

    /// Indices of the steps that run a kernel on threads (convolutions and linear layers).
    fn weighted_steps(&mut self) -> Vec<usize> {
        (0..self.steps.len()).filter(|&i| step_threads(&mut self.steps[i]).is_some()).collect()
    }

    /// Whether `threads` gives every weighted step a count its kernel was bound for.
    fn accepts_step_threads(&mut self, threads: &[usize]) -> bool {
        let max = self.max_threads;
        threads.len() == self.weighted_steps().len()
            && threads.iter().all(|t| (1..=max).contains(t))
    }

    /// Sets the weighted steps' thread counts (in execution order) and their layers' reports.
    fn apply_step_threads(&mut self, threads: &[usize]) {
        let weighted = self.weighted_steps();
        self.set_step_threads(&weighted, threads);
        for (&i, &t) in weighted.iter().zip(threads) {
            let node = &self.step_nodes[i];
            if let Some(l) = self.layers.iter_mut().find(|l| &l.node == node) {
                l.threads = t;
            }
        }
    }

    /// Sets the thread count of the weighted steps `weighted` to `threads` (same order).
    fn set_step_threads(&mut self, weighted: &[usize], threads: &[usize]) {
        for (&i, &t) in weighted.iter().zip(threads) {
            if let Some(n) = step_threads(&mut self.steps[i]) {
                *n = t;
            }
        }
    }

    /// Input shape (batch first).
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// Output shape (batch first).
    pub fn output_shape(&self) -> &[usize] {
        &self.output_shape
    }

    /// The lowered weighted layers.
    pub fn layers(&self) -> &[LayerReport] {
        &self.layers
    }

    /// Floats of activation memory (the arena), for every value of the batch.
    pub fn arena_len(&self) -> usize {
        self.arena.len()
    }

    /// Floats of the arena taken by conv -> conv edges stored in the consumer's padded layout
    /// (one buffer per distinct layout whose edges are live at once; see
    /// [`LayerReport::stores_packed`]).
    pub fn edge_buffer_len(&self) -> usize {
        self.edge_len
    }

    /// The node each step runs, in execution order (views have no step).
    pub fn step_nodes(&self) -> &[String] {
        &self.step_nodes
    }

    /// Runs the plan on `input` (the whole batch, row-major) into `output`. Allocates
    /// nothing.
    pub fn run(&mut self, input: &[f32], output: &mut [f32]) -> Result<()> {
        self.run_inner(input, output, None)
    }

    /// [`Plan::run`], adding each step's wall time in seconds to `seconds` (one entry per
    /// [`Plan::step_nodes`]).
    pub fn run_timed(
        &mut self,
        input: &[f32],
        output: &mut [f32],
        seconds: &mut [f64],
    ) -> Result<()> {
        if seconds.len() != self.steps.len() {
            return Err(CodegenError::BufferLength {
                what: "step times",
                expected: self.steps.len(),
                found: seconds.len(),
            });
        }
        self.run_inner(input, output, Some(seconds))
    }

    fn run_inner(
        &mut self,
        input: &[f32],
        output: &mut [f32],
        mut seconds: Option<&mut [f64]>,
    ) -> Result<()> {
        if input.len() != self.input.len {
            return Err(CodegenError::BufferLength {
                what: "input",
                expected: self.input.len,
                found: input.len(),
            });
        }
        if output.len() != self.output.len {
            return Err(CodegenError::BufferLength {
                what: "output",
                expected: self.output.len,
                found: output.len(),
            });
        }
        let batch = self.input_shape.first().copied().unwrap_or(1);
        self.arena[self.input.offset..self.input.offset + self.input.len].copy_from_slice(input);
        let isa = self.isa;
        for (i, step) in self.steps.iter_mut().enumerate() {
            let start = seconds.is_some().then(std::time::Instant::now);
            run_step(step, &mut self.arena, batch, isa)?;
            if let (Some(t), Some(s)) = (seconds.as_deref_mut(), start) {
                t[i] += s.elapsed().as_secs_f64();
            }
        }
        output
            .copy_from_slice(&self.arena[self.output.offset..self.output.offset + self.output.len]);
        Ok(())
    }
}

/// Seconds of whole-plan runs per configuration when refining thread counts (split over the
/// rounds when whole plans are compared).
const REFINE_SECONDS: f64 = 0.1;

/// Rounds of the whole-plan comparison (the configurations alternate within a round; each
/// keeps its median round).
const REFINE_ROUNDS: usize = 5;

/// The thread count of a weighted step.
fn step_threads(step: &mut Step) -> Option<&mut usize> {
    match step {
        Step::Conv { threads, .. } | Step::Linear { threads, .. } => Some(threads),
        _ => None,
    }
}

/// Median milliseconds per run of each of `plans` (same input and output sizes) over
/// [`REFINE_ROUNDS`] rounds that alternate them.
fn compare_plans(plans: &mut [&mut Plan]) -> Result<Vec<f64>> {
    let Some(first) = plans.first() else { return Ok(Vec::new()) };
    let x = crate::tune_input(first.input.len);
    let mut y = vec![0.0f32; first.output.len];
    alternating_medians(plans.len(), |i| time_runs(plans[i], &x, &mut y))
}

/// The median of [`REFINE_ROUNDS`] rounds of `time(option)` for each of `options`, the
/// options alternating within a round (a load spike on this shared host then has to hit one
/// option in most rounds to mislead the choice).
fn alternating_medians(
    options: usize,
    mut time: impl FnMut(usize) -> Result<f64>,
) -> Result<Vec<f64>> {
    let mut rounds = vec![Vec::new(); options];
    for _ in 0..REFINE_ROUNDS {
        for (o, times) in rounds.iter_mut().enumerate() {
            times.push(time(o)?);
        }
    }
    Ok(rounds
        .into_iter()
        .map(|mut r| {
            r.sort_by(f64::total_cmp);
            r[r.len() / 2]
        })
        .collect())
}

/// Milliseconds per run of `plan` over about `REFINE_SECONDS / REFINE_ROUNDS` of runs.
fn time_runs(plan: &mut Plan, x: &[f32], y: &mut [f32]) -> Result<f64> {
    let runs = plan_runs(plan, x, y, REFINE_SECONDS / REFINE_ROUNDS as f64)?;
    let start = std::time::Instant::now();
    for _ in 0..runs {
        plan.run(x, y)?;
    }
    Ok(start.elapsed().as_secs_f64() * 1e3 / runs as f64)
}

/// How many runs of `plan` take about `seconds` (at least 3), from a warm-up run timed.
fn plan_runs(plan: &mut Plan, x: &[f32], y: &mut [f32], seconds: f64) -> Result<usize> {
    plan.run(x, y)?;
    let start = std::time::Instant::now();
    plan.run(x, y)?;
    let once = start.elapsed().as_secs_f64().max(1e-6);
    Ok(((seconds / once) as usize).clamp(3, 100_000))
}

/// Residual adds fused into convolutions: where an `Add` reads the output of a convolution
/// that has no activation and no other reader, and its other operand is computed before that
/// convolution, the convolution takes the other operand as a second input (added in the
/// kernel's epilogue, before the add's activation, which becomes the convolution's), writes
/// the add's output, and the add disappears. ResNet's `conv2 -> add -> relu` becomes one
/// step: the add's pass over three tensors (1.6 us of a 32x32 block's ~14 us at 8x) is gone.
/// Returns the nodes of the rewritten graph (no parameters: they stay in `graph`).
fn fuse_residual_adds(graph: &Graph) -> Graph {
    let mut nodes = graph.nodes.clone();
    let producer: HashMap<&str, usize> =
        graph.nodes.iter().enumerate().map(|(i, n)| (n.output.as_str(), i)).collect();
    let mut removed = vec![false; nodes.len()];
    for (a, add) in graph.nodes.iter().enumerate() {
        let Op::Add { activation } = &add.op else { continue };
        let [p, q] = add.inputs.as_slice() else { continue };
        for (conv_out, other) in [(p, q), (q, p)] {
            let Some(&c) = producer.get(conv_out.as_str()) else { continue };
            let conv = &graph.nodes[c];
            let Op::Conv { activation: None, .. } = conv.op else { continue };
            // The other operand exists when the convolution runs (the graph input, or an
            // earlier node's output), the convolution has no other reader, and both are
            // different values.
            let ready = producer.get(other.as_str()).is_none_or(|&o| o < c);
            let only = graph.consumers(conv_out) == [a] && !graph.is_output(conv_out);
            if !ready || !only || removed[c] || conv_out == other || conv.inputs.len() != 1 {
                continue;
            }
            let fused = &mut nodes[c];
            fused.inputs.push(other.clone());
            fused.output = add.output.clone();
            if let Op::Conv { activation: act, .. } = &mut fused.op {
                *act = *activation;
            }
            removed[a] = true;
            break;
        }
    }
    let mut keep = removed.iter().map(|r| !r);
    nodes.retain(|_| keep.next().unwrap_or(true));
    Graph {
        name: graph.name.clone(),
        inputs: graph.inputs.clone(),
        nodes,
        outputs: graph.outputs.clone(),
        params: Default::default(),
    }
}

/// Conv -> conv edges without packing: where a row-group, BCR or pattern convolution's output
/// is read by one of them (or by the channel-vector kernel) as its input with a stride-1
/// padded layout, the producer stores straight into that layout (its padding zero) and the
/// consumer skips packing. A depthwise producer takes part where the layout keeps each
/// channel's outputs contiguous: a 1x1 consumer whose input is copied with a gap after each
/// channel (against 4 KiB aliasing on 16x16 and larger maps). MobileNetV2's depthwise ->
/// project edges on 32x32 inputs, two A/B runs alternating the builds (`bench models --only
/// mobilenet --rates 8`): block-punched 8x 0.76 -> 0.67-0.70 ms on 1 thread, 0.72-0.75 ->
/// 0.62-0.66 ms on 2; the dense plan 1.32-1.36 -> 1.21-1.26 ms on 2 threads, within the
/// run-to-run noise (1.64-1.77 ms) on 1. Other readers
/// are allowed only as fused residuals of row-group, BCR or pattern convolutions, which read the
/// residual in that layout ([`ConvKernel::set_residual_target`]): the block input of a
/// residual network feeds the block's first convolution and the residual add of its second,
/// and used to be stored plainly, its first convolution packing it. A producer that fuses a
/// residual itself keeps reading it where it is (pinned before its output moves). The padded
/// buffers live after the liveness arena, zeroed once and written only at their interiors,
/// so their padding stays zero; edges of the same layout share one buffer when their
/// lifetimes do not overlap. Returns the new arena length.
#[allow(clippy::too_many_arguments)]
fn fuse_conv_edges(
    graph: &Graph,
    steps: &mut [Step],
    step_nodes: &[String],
    layers: &mut [LayerReport],
    arena_len: usize,
    batch: usize,
) -> Result<usize> {
    let step_of: HashMap<&str, usize> =
        step_nodes.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
    // (offset, floats, layout key, last step using it)
    let mut regions: Vec<(usize, usize, (usize, OutputTarget), usize)> = Vec::new();
    let mut end = arena_len.next_multiple_of(16);
    let mut repacked = Vec::new();
    for node in &graph.nodes {
        let Some(&i) = step_of.get(node.name.as_str()) else { continue };
        if graph.is_output(&node.output) {
            continue;
        }
        // One reader takes the value as its convolution input; any others only as their
        // fused residual (the second input of a convolution step).
        let mut input_readers = Vec::new();
        let mut residual_readers = Vec::new();
        let mut fits = true;
        for c in graph.consumers(&node.output) {
            let consumer = &graph.nodes[c];
            let as_input = consumer.inputs.first() == Some(&node.output);
            let as_residual = consumer.inputs[1..].contains(&node.output);
            let step = step_of.get(consumer.name.as_str()).copied();
            match (as_input, as_residual, step) {
                (true, false, Some(j)) => input_readers.push((c, j)),
                (false, true, Some(k)) if matches!(steps[k], Step::Conv { .. }) => {
                    residual_readers.push(k)
                }
                _ => fits = false,
            }
        }
        // The consumer applies its activation in the kernel's epilogue (a pre-packed input has
        // no separate epilogue pass).
        let target_of = |step: &Step| match step {
            Step::Conv { kernel, act, .. } if clamp_of(*act).is_some() => {
                kernel.prepackable_layout().and_then(|l| l.as_target().map(|t| (t, l.packed_len())))
            }
            _ => None,
        };
        // The reader whose layout the producer stores (the first that has one).
        let chosen =
            input_readers.iter().find_map(|&(c, j)| target_of(&steps[j]).map(|t| (c, j, t)));
        let (Some((c, j, (target, packed_len))), true) = (chosen, fits) else { continue };
        // Other input readers read one phase plane of it in place, or pack their own input
        // from it (`Repack`): only for a phase-split one (a downsampling block's input, also
        // read by its 1x1 stride-2 shortcut), which they could not read plainly any more.
        let others: Vec<usize> =
            input_readers.iter().map(|&(_, k)| k).filter(|&k| k != j).collect();
        let repackable = |step: &Step| match step {
            Step::Conv { kernel, act, .. } => {
                clamp_of(*act).is_some()
                    && kernel
                        .prepackable_layout()
                        .is_some_and(|l| !l.in_place() && l.shape().is_2d())
            }
            _ => false,
        };
        if !others.is_empty()
            && (target.phases.is_none() || !others.iter().all(|&k| repackable(&steps[k])))
        {
            continue;
        }
        let consumer = &graph.nodes[c];
        match &steps[i] {
            Step::Conv { act, .. } if clamp_of(*act).is_some() => {}
            _ => continue,
        }
        // The residual readers read the value in the consumer's layout (undone if any of
        // them, or the producer, cannot).
        let mut moved: Vec<(usize, OutputTarget)> = Vec::new();
        let undo = |steps: &mut [Step], moved: &[(usize, OutputTarget)]| {
            for &(k, before) in moved {
                if let Step::Conv { kernel, .. } = &mut steps[k] {
                    kernel.set_residual_target(before);
                }
            }
        };
        for &k in &residual_readers {
            let Step::Conv { kernel, .. } = &mut steps[k] else { continue };
            match kernel.residual_target() {
                Some(before) if kernel.set_residual_target(target) => moved.push((k, before)),
                _ => break,
            }
        }
        if moved.len() != residual_readers.len() {
            undo(steps, &moved);
            continue;
        }
        let Step::Conv { kernel, residual, isa, .. } = &mut steps[i] else { continue };
        let isa = *isa;
        // A producer with a fused residual keeps reading it where it is.
        let pinned = match (residual.is_some(), kernel.residual_target()) {
            (false, _) => true,
            (true, Some(here)) => kernel.set_residual_target(here),
            (true, None) => false,
        };
        let used = if pinned { kernel.retarget(target, isa) } else { None };
        let Some(used) = used else {
            undo(steps, &moved);
            continue;
        };
        let key = (packed_len, target);
        let len = batch * packed_len;
        let last = residual_readers.iter().chain(&others).copied().fold(j, usize::max);
        let offset = match regions.iter_mut().find(|r| r.2 == key && r.3 < i) {
            Some(r) => {
                r.3 = last;
                r.0
            }
            None => {
                let at = end;
                regions.push((at, len, key, last));
                end = (at + len).next_multiple_of(16);
                at
            }
        };
        let slot = Slot { offset, len };
        if let Step::Conv { io, y_used, .. } = &mut steps[i] {
            io.y = slot;
            io.y_len = packed_len;
            *y_used = used;
        }
        if let Step::Conv { io, prepacked, .. } = &mut steps[j] {
            io.x = slot;
            io.x_len = packed_len;
            *prepacked = true;
        }
        for &k in &residual_readers {
            if let Step::Conv { residual, residual_len, .. } = &mut steps[k] {
                *residual = Some(slot);
                *residual_len = packed_len;
            }
        }
        for &k in &others {
            if let Step::Conv { io, prepacked, kernel, .. } = &mut steps[k]
                && kernel.read_phase_plane(&target, packed_len)
            {
                // A 1x1 strided reader (a downsampling block's shortcut) reads its phase
                // plane where the producer stored it: no copy.
                io.x = slot;
                io.x_len = packed_len;
                *prepacked = true;
                if let Some(l) = layers.iter_mut().find(|l| l.node == step_nodes[k]) {
                    l.reads_packed = true;
                }
                continue;
            }
            if let Step::Conv { io, prepacked, repack, kernel, .. } = &mut steps[k] {
                // Its own packed input, written whole (padding included) by every run; placed
                // after the edges (below).
                let own = kernel.prepackable_layout().map_or(0, |l| l.packed_len());
                *repack =
                    Some(Box::new(Repack { from: slot, from_len: packed_len, source: target }));
                io.x = Slot { offset: 0, len: batch * own };
                io.x_len = own;
                *prepacked = true;
                repacked.push(k);
            }
        }
        if let Some(l) = layers.iter_mut().find(|l| l.node == node.name) {
            l.stores_packed = true;
        }
        if let Some(l) = layers.iter_mut().find(|l| l.node == consumer.name) {
            l.reads_packed = true;
        }
    }
    // The repacking readers' own inputs last, so that the edges keep the places (and 4 KiB
    // offsets) they have without them.
    for k in repacked {
        if let Step::Conv { io, .. } = &mut steps[k] {
            io.x.offset = end;
            end = (end + io.x.len).next_multiple_of(16);
        }
    }
    Ok(end)
}

/// `isa`, or its 8-lane level when `lanes` is narrower than its vectors.
fn isa_of_lanes(isa: Isa, lanes: usize) -> Isa {
    if lanes < isa.lanes() { isa.at_most_8_lanes() } else { isa }
}

fn bias_of(graph: &Graph, bias: Option<&str>) -> Result<Option<Vec<f32>>> {
    Ok(match bias {
        Some(b) => Some(graph.param(b)?.tensor.data.clone()),
        None => None,
    })
}

fn report(
    node: &Node,
    param: &tessera_ir::Param,
    choice: &Choice,
    dense_macs: u64,
    pick: &Pick,
    io: &Io,
    (tiles, lanes): (u64, usize),
) -> LayerReport {
    let total = param.tensor.len().max(1) as u64;
    let kept = param.kept() as u64;
    LayerReport {
        node: node.name.clone(),
        op: node.op.name(),
        kernel: choice.kernel,
        format: choice.format,
        scheme: param.sparsity.as_ref().map(|s| s.scheme.to_string()),
        dense_macs,
        kept_macs: dense_macs * kept / total,
        threads: pick.threads,
        tuned_ms: pick.ms,
        cached: pick.cached,
        input_floats: io.x_len as u64,
        output_floats: io.y_len as u64,
        tiles,
        stores_packed: false,
        reads_packed: false,
        lanes,
    }
}
