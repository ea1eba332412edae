//! The execution plan: a graph lowered once to a list of steps over one preallocated arena.
//!
//! [`Plan::compile`] validates the graph for the batch size, lowers every node (weighted
//! layers through [`crate::lower`], the rest to plain loops), packs the weights, places every
//! value in the arena by liveness and allocates each kernel's scratch. [`Plan::run`] then only
//! copies the input in, runs the steps and copies the output out: no allocation.

use std::collections::HashMap;

use serde::Serialize;
use tessera_ir::{Activation, Graph, Node, Op};
use tessera_kernels::{Clamp, Epilogue, Isa};

use crate::buffers::{Interval, Slot, allocate};
use crate::error::{CodegenError, Result, unsupported};
use crate::lower::{self, Choice, ConvKernel, LinearKernel, shape_of};
use crate::tune::{Decision, TuneCache, Tuning, cpu_name, mask_hash, time_ms};

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
}

/// Per-sample sizes of a step's operands.
#[derive(Debug, Clone, Copy)]
struct Io {
    x: Slot,
    y: Slot,
    /// Floats per sample of x and y.
    x_len: usize,
    y_len: usize,
}

#[derive(Debug)]
enum Step {
    Conv {
        node: String,
        io: Io,
        threads: usize,
        kernel: ConvKernel,
        bias: Option<Vec<f32>>,
        act: Option<Activation>,
        positions: usize,
    },
    Linear {
        node: String,
        io: Io,
        threads: usize,
        kernel: LinearKernel,
        bias: Option<Vec<f32>>,
        act: Option<Activation>,
        /// Rows of the input (all dims but the last) per sample.
        rows: usize,
        in_f: usize,
        out_f: usize,
    },
    /// Per-channel `y = x * scale + shift` (an unfolded batch norm).
    Affine {
        io: Io,
        scale: Vec<f32>,
        shift: Vec<f32>,
        positions: usize,
    },
    Act {
        io: Io,
        kind: Activation,
    },
    Add {
        a: Slot,
        b: Slot,
        y: Slot,
    },
    Pool {
        io: Io,
        pool: Pool2d,
    },
    GlobalAvg {
        io: Io,
        channels: usize,
        positions: usize,
    },
}

#[derive(Debug, Clone, Copy)]
struct Pool2d {
    max: bool,
    channels: usize,
    in_hw: [usize; 2],
    out_hw: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
}

fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

impl Plan {
    /// Compiles `graph` (one input, one output; run the IR passes first to fold batch norms
    /// and fuse activations) for `options`.
    pub fn compile(graph: &Graph, options: &CompileOptions) -> Result<Plan> {
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
        let mut tuner = match &options.tuning {
            Tuning::Default => None,
            Tuning::Measure { cache } => Some(Tuner {
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
            }),
        };

        // Values: the input (time 0), then node i's output (time i + 1). Views share their
        // source's value.
        let n = graph.nodes.len();
        let mut value_of: HashMap<&str, usize> = HashMap::new();
        let mut intervals: Vec<Interval> = Vec::new();
        value_of.insert(&input.name, 0);
        intervals.push(Interval { len: numel(&input_shape), def: 0, last_use: 0 });
        for (i, node) in graph.nodes.iter().enumerate() {
            let time = i + 1;
            for x in &node.inputs {
                let v = *value_of.get(x.as_str()).ok_or_else(|| {
                    unsupported(node, format!("reads `{x}`, which is not computed before it"))
                })?;
                intervals[v].last_use = intervals[v].last_use.max(time);
            }
            if matches!(node.op, Op::Flatten { .. } | Op::Reshape { .. }) {
                let v = value_of[node.inputs[0].as_str()];
                value_of.insert(&node.output, v);
            } else {
                let len = numel(shape_of(&shapes, node, &node.output)?);
                value_of.insert(&node.output, intervals.len());
                intervals.push(Interval { len, def: time, last_use: time });
            }
        }
        let out_value = *value_of.get(output.as_str()).ok_or_else(|| CodegenError::Options {
            field: "graph",
            reason: format!("output `{output}` is never computed"),
        })?;
        intervals[out_value].last_use = n + 1;
        let (slots, arena_len) = allocate(&intervals);
        let slot = |name: &str| slots[value_of[name]];

        let mut steps = Vec::new();
        let mut step_nodes = Vec::new();
        let mut layers = Vec::new();
        for node in &graph.nodes {
            if !matches!(node.op, Op::Flatten { .. } | Op::Reshape { .. }) {
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
                            let (k, c) = lower::conv_kernel(node, param, shape)?;
                            (k, c, Pick { threads: options.threads, ms: None, cached: false })
                        }
                        Some(t) => {
                            let key = t.key(node, param, &format!("conv {shape:?}"));
                            let candidates = lower::conv_candidates(node, param, shape)?;
                            let (x_len, y_len) = (io.x_len, io.y_len);
                            let act = *activation;
                            t.choose(key, candidates, options.threads, |k, threads| {
                                let x = crate::tune_input(x_len);
                                let mut y = vec![0.0f32; y_len];
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
                                    )
                                    .map_err(|source| {
                                        CodegenError::Kernel { node: node.name.clone(), source }
                                    })
                                })
                            })?
                        }
                    };
                    let tiles = crate::latency::tiles(shape.out_channels, positions) as u64;
                    layers.push(report(node, param, &choice, macs, &pick, &io, tiles));
                    steps.push(Step::Conv {
                        node: node.name.clone(),
                        io,
                        threads: pick.threads,
                        kernel,
                        bias,
                        act: *activation,
                        positions,
                    });
                }
                Op::Linear { weight, bias, activation } => {
                    let param = graph.param(weight)?;
                    let (out_f, in_f) = (param.tensor.shape[0], param.tensor.shape[1]);
                    let rows = io.x_len / in_f.max(1);
                    let bias = bias_of(graph, bias.as_deref())?;
                    let (kernel, choice, pick) = match tuner.as_mut() {
                        None => {
                            let (k, c) = lower::linear_kernel(node, param)?;
                            (k, c, Pick { threads: options.threads, ms: None, cached: false })
                        }
                        Some(t) => {
                            let key =
                                t.key(node, param, &format!("linear {out_f}x{in_f} rows {rows}"));
                            let candidates = lower::linear_candidates(node, param)?;
                            let act = *activation;
                            t.choose(key, candidates, options.threads, |k, threads| {
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
                    layers.push(report(node, param, &choice, macs, &pick, &io, tiles));
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
                Op::Add => steps.push(Step::Add {
                    a: slot(&node.inputs[0]),
                    b: slot(&node.inputs[1]),
                    y: slot(&node.output),
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
        if let Some(Tuner { cache, path: Some(path), .. }) = &tuner {
            cache.save(path)?;
        }
        Ok(Plan {
            steps,
            step_nodes,
            arena: vec![0.0; arena_len],
            input: slots[0],
            output: slots[out_value],
            output_shape: shapes.get(output.as_str()).cloned().unwrap_or_default(),
            input_shape,
            isa,
            layers,
        })
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
    tiles: u64,
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
    }
}

/// The tuner's pick for one layer.
struct Pick {
    threads: usize,
    ms: Option<f64>,
    cached: bool,
}

/// Tuning state of one compile.
struct Tuner {
    cache: TuneCache,
    path: Option<std::path::PathBuf>,
    /// CPU, instruction set, batch and thread budget.
    prefix: String,
}

impl Tuner {
    fn key(&self, node: &Node, param: &tessera_ir::Param, signature: &str) -> String {
        let scheme = match &param.sparsity {
            Some(s) => format!("{} mask {:016x}", s.scheme, mask_hash(s.mask.words())),
            None => "dense".into(),
        };
        let _ = node;
        format!("{} | {signature} | {scheme}", self.prefix)
    }

    /// The cached decision for `key` when one matches a candidate, else the fastest
    /// candidate x thread count by `time` (recorded in the cache).
    fn choose<K>(
        &mut self,
        key: String,
        candidates: Vec<(K, Choice)>,
        max_threads: usize,
        mut time: impl FnMut(&mut K, usize) -> Result<f64>,
    ) -> Result<(K, Choice, Pick)> {
        let mut thread_options = vec![1, max_threads];
        thread_options.dedup();
        if let Some(d) = self.cache.entries.get(&key)
            && thread_options.contains(&d.threads)
            && let Some(i) =
                candidates.iter().position(|(_, c)| c.kernel == d.kernel && c.format == d.format)
        {
            let (ms, threads) = (d.ms, d.threads);
            let (k, c) = candidates.into_iter().nth(i).ok_or_else(|| CodegenError::Options {
                field: "tuning",
                reason: "cached candidate vanished".into(),
            })?;
            return Ok((k, c, Pick { threads, ms: Some(ms), cached: true }));
        }
        let mut best: Option<(usize, usize, f64)> = None;
        let mut candidates = candidates;
        for (i, (k, _)) in candidates.iter_mut().enumerate() {
            for &t in &thread_options {
                let ms = time(k, t)?;
                if best.is_none_or(|(_, _, b)| ms < b) {
                    best = Some((i, t, ms));
                }
            }
        }
        let (i, threads, ms) = best.ok_or_else(|| CodegenError::Options {
            field: "tuning",
            reason: "no candidate kernel".into(),
        })?;
        let (k, c) = candidates.into_iter().nth(i).ok_or_else(|| CodegenError::Options {
            field: "tuning",
            reason: "candidate vanished".into(),
        })?;
        self.cache.entries.insert(
            key,
            Decision { kernel: c.kernel.into(), format: c.format.into(), threads, ms },
        );
        Ok((k, c, Pick { threads, ms: Some(ms), cached: false }))
    }
}

/// Splits the arena around the written slot `y`: (everything before, y, everything after).
fn split(arena: &mut [f32], y: Slot) -> (&[f32], &mut [f32], &[f32]) {
    let (before, rest) = arena.split_at_mut(y.offset);
    let (y, after) = rest.split_at_mut(y.len);
    (before, y, after)
}

/// A read slot, which the allocator keeps disjoint from the written one.
fn read<'a>(before: &'a [f32], after: &'a [f32], y: Slot, x: Slot) -> &'a [f32] {
    if x.offset + x.len <= y.offset {
        &before[x.offset..x.offset + x.len]
    } else {
        let start = x.offset - (y.offset + y.len);
        &after[start..start + x.len]
    }
}

fn apply_act(y: &mut [f32], act: Activation) {
    match act {
        Activation::Relu => y.iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::Relu6 => y.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0)),
        other => y.iter_mut().for_each(|v| *v = other.apply(*v)),
    }
}

/// Bias per channel, then the activation, over `[channels, positions]`.
fn epilogue(y: &mut [f32], positions: usize, bias: Option<&[f32]>, act: Option<Activation>) {
    if let Some(b) = bias {
        for (row, &bv) in y.chunks_exact_mut(positions.max(1)).zip(b) {
            row.iter_mut().for_each(|v| *v += bv);
        }
    }
    if let Some(a) = act {
        apply_act(y, a);
    }
}

/// One sample of a convolution, bias and activation included (fused into the row-group
/// kernels' stores when they can).
#[allow(clippy::too_many_arguments)]
fn conv_once(
    kernel: &mut ConvKernel,
    isa: Isa,
    x: &[f32],
    y: &mut [f32],
    threads: usize,
    bias: Option<&[f32]>,
    act: Option<Activation>,
    positions: usize,
) -> std::result::Result<(), tessera_kernels::KernelError> {
    let clamp = match act {
        None => Some(Clamp::None),
        Some(Activation::Relu) => Some(Clamp::Relu),
        Some(Activation::Relu6) => Some(Clamp::Relu6),
        Some(_) => None,
    };
    if let (ConvKernel::Rows { conv, scratch }, Some(clamp)) = (&mut *kernel, clamp) {
        return conv.run_fused(isa, x, y, scratch, threads, Epilogue { bias, clamp });
    }
    match kernel {
        ConvKernel::Rows { conv, scratch } => conv.run(isa, x, y, scratch, threads)?,
        // The pattern kernel's scratch holds one thread's tile buffer.
        ConvKernel::Fkw { conv, scratch } => conv.run(isa, x, y, scratch, 1)?,
        ConvKernel::Bcr { conv, scratch } => conv.run(isa, x, y, scratch, threads)?,
    }
    epilogue(y, positions, bias, act);
    Ok(())
}

/// One vector through a fully connected layer, bias and activation included.
fn linear_once(
    kernel: &LinearKernel,
    isa: Isa,
    x: &[f32],
    y: &mut [f32],
    threads: usize,
    bias: Option<&[f32]>,
    act: Option<Activation>,
) -> std::result::Result<(), tessera_kernels::KernelError> {
    match kernel {
        LinearKernel::Dense { weights, rows, cols } => {
            tessera_kernels::dense::sgemv(isa, *rows, *cols, weights, x, y, threads)?
        }
        LinearKernel::Rows(m) => tessera_kernels::rowgroup::gemv(isa, m, x, y, threads)?,
        LinearKernel::Bcr(c) => c.gemv(isa, x, y, threads)?,
    }
    if let Some(b) = bias {
        y.iter_mut().zip(b).for_each(|(v, b)| *v += b);
    }
    if let Some(a) = act {
        apply_act(y, a);
    }
    Ok(())
}

fn run_step(step: &mut Step, arena: &mut [f32], batch: usize, isa: Isa) -> Result<()> {
    match step {
        Step::Conv { node, io, threads, kernel, bias, act, positions } => {
            let (before, y_all, after) = split(arena, io.y);
            let x_all = read(before, after, io.y, io.x);
            for n in 0..batch {
                let x = &x_all[n * io.x_len..(n + 1) * io.x_len];
                let y = &mut y_all[n * io.y_len..(n + 1) * io.y_len];
                conv_once(kernel, isa, x, y, *threads, bias.as_deref(), *act, *positions)
                    .map_err(|source| CodegenError::Kernel { node: node.clone(), source })?;
            }
        }
        Step::Linear { node, io, threads, kernel, bias, act, rows, in_f, out_f } => {
            let (before, y_all, after) = split(arena, io.y);
            let x_all = read(before, after, io.y, io.x);
            for r in 0..batch * *rows {
                let x = &x_all[r * *in_f..(r + 1) * *in_f];
                let y = &mut y_all[r * *out_f..(r + 1) * *out_f];
                linear_once(kernel, isa, x, y, *threads, bias.as_deref(), *act)
                    .map_err(|source| CodegenError::Kernel { node: node.clone(), source })?;
            }
        }
        Step::Affine { io, scale, shift, positions } => {
            let (before, y_all, after) = split(arena, io.y);
            let x_all = read(before, after, io.y, io.x);
            let p = (*positions).max(1);
            for (k, (yr, xr)) in y_all.chunks_exact_mut(p).zip(x_all.chunks_exact(p)).enumerate() {
                let c = k % scale.len().max(1);
                let (s, t) = (scale[c], shift[c]);
                yr.iter_mut().zip(xr).for_each(|(y, x)| *y = x * s + t);
            }
        }
        Step::Act { io, kind } => {
            let (before, y, after) = split(arena, io.y);
            y.copy_from_slice(read(before, after, io.y, io.x));
            apply_act(y, *kind);
        }
        Step::Add { a, b, y } => {
            let (before, out, after) = split(arena, *y);
            let (xa, xb) = (read(before, after, *y, *a), read(before, after, *y, *b));
            out.iter_mut().zip(xa.iter().zip(xb)).for_each(|(o, (p, q))| *o = p + q);
        }
        Step::Pool { io, pool } => {
            let (before, y_all, after) = split(arena, io.y);
            let x_all = read(before, after, io.y, io.x);
            for n in 0..batch {
                pool2d(
                    pool,
                    &x_all[n * io.x_len..(n + 1) * io.x_len],
                    &mut y_all[n * io.y_len..(n + 1) * io.y_len],
                );
            }
        }
        Step::GlobalAvg { io, channels, positions } => {
            let (before, y_all, after) = split(arena, io.y);
            let x_all = read(before, after, io.y, io.x);
            let p = (*positions).max(1);
            for (y, xr) in y_all.iter_mut().zip(x_all.chunks_exact(p)).take(batch * *channels) {
                *y = xr.iter().sum::<f32>() / p as f32;
            }
        }
    }
    Ok(())
}

fn pool2d(p: &Pool2d, x: &[f32], y: &mut [f32]) {
    let [h, w] = p.in_hw;
    let [oh, ow] = p.out_hw;
    let area = (p.kernel[0] * p.kernel[1]) as f32;
    for c in 0..p.channels {
        let xc = &x[c * h * w..(c + 1) * h * w];
        let yc = &mut y[c * oh * ow..(c + 1) * oh * ow];
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = if p.max { f32::NEG_INFINITY } else { 0.0 };
                for ky in 0..p.kernel[0] {
                    let iy = (oy * p.stride[0] + ky).wrapping_sub(p.padding[0]);
                    if iy >= h {
                        continue;
                    }
                    for kx in 0..p.kernel[1] {
                        let ix = (ox * p.stride[1] + kx).wrapping_sub(p.padding[1]);
                        if ix >= w {
                            continue;
                        }
                        let v = xc[iy * w + ix];
                        acc = if p.max { acc.max(v) } else { acc + v };
                    }
                }
                yc[oy * ow + ox] = if p.max { acc } else { acc / area };
            }
        }
    }
}
