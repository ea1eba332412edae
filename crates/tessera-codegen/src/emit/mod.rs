//! Emission: one compiled model as a standalone Rust source file.
//!
//! [`emit_rust`] writes a graph (after the IR passes) as a single `.rs` file with no
//! dependencies: weights embedded as `static` arrays (only the kept ones), one function per
//! layer with its shape, strides, padding, block shapes and pattern offsets as constants (see
//! [`weighted`](self) for the two forms of weighted layers), activations placed in one arena
//! by the same liveness allocation as [`crate::Plan`], and a `run(input, output, arena)` entry
//! point that allocates nothing. With [`EmitOptions::main`] the file is a program: it reads
//! little-endian f32 inputs from stdin (any number of whole inputs) and writes the outputs to
//! stdout the same way, so `rustc -O model.rs` gives a self-contained executable.
//!
//! Emitted ops: convolution (2-D, 3-D, grouped, depthwise), linear, batch norm, the
//! activations, max and average pooling (2-D and 3-D), global average pooling, add, flatten
//! and reshape (views). Others are refused naming the node, as by the planner. The weights
//! are written as decimal literals that parse back to the same f32 bits; a non-finite weight
//! is refused naming the parameter.
//!
//! The generated code is portable scalar Rust that the compiler auto-vectorizes (unit-stride
//! inner loops over output rows); it is for deployment where the tessera runtime cannot
//! go, not a replacement for the plan's hand-vectorized kernels.

mod weighted;

use std::path::Path;

use tessera_ir::{Activation, Graph, Node, Op, Shapes};

pub use weighted::EmittedLayer;

use crate::buffers::{Slot, ValueLayout, is_view, layout_values};
use crate::error::{CodegenError, Result, unsupported};
use crate::lower::{conv_shape, shape_of};

/// How to emit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmitOptions {
    /// Samples per run (the graph's declared batch is replaced); fixed in the source.
    pub batch: usize,
    /// Add a `main` that maps stdin inputs to stdout outputs (f32 little-endian).
    pub main: bool,
}

impl Default for EmitOptions {
    fn default() -> Self {
        EmitOptions { batch: 1, main: false }
    }
}

/// An emitted model.
#[derive(Debug, Clone)]
pub struct EmittedModel {
    /// The Rust source.
    pub source: String,
    /// Input shape (batch first).
    pub input_shape: Vec<usize>,
    /// Output shape (batch first).
    pub output_shape: Vec<usize>,
    /// Floats of the activation arena.
    pub arena_len: usize,
    /// How each weighted layer was emitted.
    pub layers: Vec<EmittedLayer>,
}

/// A source text under construction, indented by block.
#[derive(Debug, Default)]
pub(crate) struct Source {
    text: String,
    indent: usize,
}

impl Source {
    /// One line at the current indentation.
    pub(crate) fn line(&mut self, line: impl AsRef<str>) {
        let line = line.as_ref();
        if !line.is_empty() {
            for _ in 0..self.indent {
                self.text.push_str("    ");
            }
        }
        self.text.push_str(line);
        self.text.push('\n');
    }

    /// `head {` and one level deeper.
    pub(crate) fn open(&mut self, head: impl AsRef<str>) {
        let head = head.as_ref();
        self.line(if head.is_empty() { "{".to_string() } else { format!("{head} {{") });
        self.indent += 1;
    }

    /// `}` one level up.
    pub(crate) fn close(&mut self) {
        self.indent = self.indent.saturating_sub(1);
        self.line("}");
    }

    /// `static NAME: [ty; n] = [...];`, 16 values a line.
    pub(crate) fn array<T: std::fmt::Display>(&mut self, name: &str, ty: &str, vals: &[T]) {
        self.list(name, ty, vals.iter().map(ToString::to_string), 16);
    }

    /// `static NAME: [f32; n] = [...];` with literals that parse back to the same bits.
    pub(crate) fn floats(&mut self, name: &str, vals: &[f32]) {
        // `{:?}` prints the shortest decimal that round-trips (`0.1`, `-0.0`, `1e-7`).
        self.list(name, "f32", vals.iter().map(|v| format!("{v:?}")), 8);
    }

    fn list(
        &mut self,
        name: &str,
        ty: &str,
        vals: impl ExactSizeIterator<Item = String>,
        per_line: usize,
    ) {
        let n = vals.len();
        if n == 0 {
            self.line(format!("static {name}: [{ty}; 0] = [];"));
            return;
        }
        self.line(format!("static {name}: [{ty}; {n}] = ["));
        self.indent += 1;
        let vals: Vec<String> = vals.collect();
        for chunk in vals.chunks(per_line) {
            self.line(format!("{},", chunk.join(", ")));
        }
        self.indent = self.indent.saturating_sub(1);
        self.line("];");
    }
}

fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

/// A Rust identifier from a node name: `l{index}_` and the name's alphanumerics.
fn fn_name(index: usize, node: &str) -> String {
    let clean: String = node
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .collect();
    format!("l{index}_{clean}")
}

/// Refuses a parameter with a non-finite value (it has no literal).
fn check_finite(graph: &Graph, node: &Node, name: &str) -> Result<()> {
    let p = graph.param(name)?;
    if let Some(i) = p.tensor.data.iter().position(|v| !v.is_finite()) {
        return Err(unsupported(
            node,
            format!(
                "parameter `{name}` holds {} at index {i}; only finite weights can be emitted",
                p.tensor.data[i]
            ),
        ));
    }
    Ok(())
}

/// Emits `graph` as standalone Rust source (see the module docs).
pub fn emit_rust(graph: &Graph, options: &EmitOptions) -> Result<EmittedModel> {
    if options.batch == 0 {
        return Err(CodegenError::Options { field: "batch", reason: "must be at least 1".into() });
    }
    let [input] = graph.inputs.as_slice() else {
        return Err(CodegenError::Options {
            field: "graph",
            reason: format!("emitted models take one input, the graph has {}", graph.inputs.len()),
        });
    };
    let [output] = graph.outputs.as_slice() else {
        return Err(CodegenError::Options {
            field: "graph",
            reason: format!(
                "emitted models return one output, the graph has {}",
                graph.outputs.len()
            ),
        });
    };
    let mut input_shape = input.shape.clone();
    if let Some(n) = input_shape.first_mut() {
        *n = options.batch;
    }
    let shapes = graph.infer_shapes(std::slice::from_ref(&input_shape))?;
    let values = layout_values(graph, &shapes, &input.name, numel(&input_shape), output)?;
    let output_shape = shapes.get(output.as_str()).cloned().unwrap_or_default();

    // Layer functions first (they decide which helpers the file needs), then the header.
    let mut body = Source::default();
    let mut calls = Source { indent: 1, ..Default::default() };
    let mut layers = Vec::new();
    let mut acts: Vec<Activation> = Vec::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        if is_view(&node.op) {
            continue;
        }
        let name = fn_name(i, &node.name);
        if let Some(layer) =
            emit_node(&mut body, &name, graph, node, &shapes, options.batch, &mut acts)?
        {
            layers.push(layer);
        }
        body.line("");
        call(&mut calls, &name, node, &values)?;
    }

    let mut src = Source::default();
    header(&mut src, graph, options, &input_shape, &output_shape, &values, &layers);
    // `run`'s body: the calls (indented for it already), then the output copy.
    src.text.push_str(&calls.text);
    src.line(format!(
        "output.copy_from_slice(&arena[{}..{}]);",
        values.output.offset,
        values.output.offset + values.output.len
    ));
    src.line("Ok(())");
    src.close();
    src.line("");
    helpers(&mut src, &acts);
    src.text.push_str(&body.text);
    if options.main {
        main_fn(&mut src);
    }
    Ok(EmittedModel {
        source: src.text,
        input_shape,
        output_shape,
        arena_len: values.arena_len,
        layers,
    })
}

/// [`emit_rust`], then writes the source to `path` atomically (a temporary file beside it,
/// renamed into place).
pub fn write_rust(graph: &Graph, options: &EmitOptions, path: &Path) -> Result<EmittedModel> {
    let model = emit_rust(graph, options)?;
    let io = |source: std::io::Error| CodegenError::Io { path: path.to_path_buf(), source };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, &model.source).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(model)
}

/// The file header, the public API and the opening of `run` (left open for the calls).
#[allow(clippy::too_many_arguments)] // the header states everything about the model
fn header(
    src: &mut Source,
    graph: &Graph,
    options: &EmitOptions,
    input_shape: &[usize],
    output_shape: &[usize],
    values: &ValueLayout,
    layers: &[EmittedLayer],
) {
    let stored: usize = layers.iter().map(|l| l.stored).sum();
    let dense: usize = layers.iter().map(|l| l.dense).sum();
    src.line(format!(
        "//! `{}`: inference for one model, generated by tessera-codegen {}. Do not edit.",
        graph.name,
        env!("CARGO_PKG_VERSION")
    ));
    src.line("//!");
    src.line(format!(
        "//! Input {input_shape:?}, output {output_shape:?} (batch {}), f32, row-major. Standalone: no",
        options.batch
    ));
    src.line(format!(
        "//! dependencies; {stored} of {dense} weights stored (the kept ones); {} floats of activations.",
        values.arena_len
    ));
    src.line("//! Every layer's loops are specialized to its shape and sparsity structure.");
    src.line("#![allow(dead_code, unused_parens, clippy::all, clippy::pedantic)]");
    src.line("");
    src.line(format!(
        "/// Input shape (batch first).\npub const INPUT_SHAPE: [usize; {}] = {input_shape:?};",
        input_shape.len()
    ));
    src.line(format!(
        "/// Output shape (batch first).\npub const OUTPUT_SHAPE: [usize; {}] = {output_shape:?};",
        output_shape.len()
    ));
    src.line(format!(
        "/// Floats of the input.\npub const INPUT_LEN: usize = {};",
        numel(input_shape)
    ));
    src.line(format!(
        "/// Floats of the output.\npub const OUTPUT_LEN: usize = {};",
        numel(output_shape)
    ));
    src.line(format!(
        "/// Floats of activation memory [`run`] needs.\npub const ARENA_LEN: usize = {};",
        values.arena_len
    ));
    src.line("");
    src.line(
        r#"/// A buffer of the wrong length was passed to [`run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LengthError {
    /// `input`, `output` or `arena`.
    pub buffer: &'static str,
    /// Floats expected.
    pub expected: usize,
    /// Floats given.
    pub found: usize,
}

impl std::fmt::Display for LengthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: expected {} floats, found {}", self.buffer, self.expected, self.found)
    }
}

impl std::error::Error for LengthError {}

/// The model with its activation memory, allocated once.
pub struct Model {
    arena: Vec<f32>,
}

impl Default for Model {
    fn default() -> Self {
        Model::new()
    }
}

impl Model {
    /// Allocates the activation memory.
    pub fn new() -> Model {
        Model { arena: vec![0.0; ARENA_LEN] }
    }

    /// Runs the model on `input` (`INPUT_LEN` floats) into `output` (`OUTPUT_LEN`).
    pub fn run(&mut self, input: &[f32], output: &mut [f32]) -> Result<(), LengthError> {
        run(input, output, &mut self.arena)
    }
}

fn check(buffer: &'static str, expected: usize, found: usize) -> Result<(), LengthError> {
    if expected == found { Ok(()) } else { Err(LengthError { buffer, expected, found }) }
}

/// Runs the model on `input` into `output` with `arena` (`ARENA_LEN` floats) as activation
/// memory. Allocates nothing."#,
    );
    src.open("pub fn run(input: &[f32], output: &mut [f32], arena: &mut [f32]) -> Result<(), LengthError>");
    src.line("check(\"input\", INPUT_LEN, input.len())?;");
    src.line("check(\"output\", OUTPUT_LEN, output.len())?;");
    src.line("check(\"arena\", ARENA_LEN, arena.len())?;");
    src.line(format!(
        "arena[{}..{}].copy_from_slice(input);",
        values.input.offset,
        values.input.offset + values.input.len
    ));
}

/// The call of one step inside `run`: the arena split around the written range, each read
/// range taken from the part it lies in (the allocator never overlaps them).
fn call(calls: &mut Source, name: &str, node: &Node, values: &ValueLayout) -> Result<()> {
    let y = values.slot(&node.output);
    let mut args = Vec::new();
    for x in &node.inputs {
        let s: Slot = values.slot(x);
        if s.offset + s.len <= y.offset {
            args.push(format!("&lo[{}..{}]", s.offset, s.offset + s.len));
        } else if s.offset >= y.offset + y.len {
            let at = s.offset - y.offset - y.len;
            args.push(format!("&hi[{at}..{}]", at + s.len));
        } else {
            return Err(unsupported(node, format!("input `{x}` overlaps the output in the arena")));
        }
    }
    args.push("y".to_string());
    calls.open("");
    calls.line(format!("let (lo, rest) = arena.split_at_mut({});", y.offset));
    calls.line(format!("let (y, hi) = rest.split_at_mut({});", y.len));
    calls.line("let _ = (&lo, &hi);");
    calls.line(format!("{name}({});", args.join(", ")));
    calls.close();
    Ok(())
}

/// Emits one node's function; returns the weighted layer's report.
#[allow(clippy::too_many_arguments)] // one node and its context
fn emit_node(
    src: &mut Source,
    name: &str,
    graph: &Graph,
    node: &Node,
    shapes: &Shapes,
    batch: usize,
    acts: &mut Vec<Activation>,
) -> Result<Option<EmittedLayer>> {
    let x_shape = shape_of(shapes, node, &node.inputs[0])?;
    let y_shape = shape_of(shapes, node, &node.output)?;
    let mut need = |a: Option<Activation>| {
        if let Some(a) = a
            && !acts.contains(&a)
        {
            acts.push(a);
        }
    };
    match &node.op {
        Op::Conv { weight, bias, activation, .. } => {
            check_finite(graph, node, weight)?;
            let param = graph.param(weight)?;
            let shape = conv_shape(node, param, x_shape)?;
            let bias = bias_values(graph, node, bias.as_deref())?;
            need(*activation);
            Ok(Some(weighted::emit_conv(
                src,
                name,
                &node.name,
                batch,
                &shape,
                param,
                bias,
                *activation,
            )))
        }
        Op::Linear { weight, bias, activation } => {
            check_finite(graph, node, weight)?;
            let param = graph.param(weight)?;
            let in_f = param.tensor.shape.get(1).copied().unwrap_or(1).max(1);
            let bias = bias_values(graph, node, bias.as_deref())?;
            need(*activation);
            Ok(Some(weighted::emit_linear(
                src,
                name,
                &node.name,
                numel(x_shape) / in_f,
                param,
                bias,
                *activation,
            )))
        }
        Op::BatchNorm { gamma, beta, mean, var, eps } => {
            for p in [gamma, beta, mean, var] {
                check_finite(graph, node, p)?;
            }
            let get = |p: &str| graph.param(p).map(|p| p.tensor.data.as_slice());
            let (g, b, m, v) = (get(gamma)?, get(beta)?, get(mean)?, get(var)?);
            let scale: Vec<f32> = g.iter().zip(v).map(|(g, v)| g / (v + eps).sqrt()).collect();
            let shift: Vec<f32> =
                b.iter().zip(m).zip(&scale).map(|((b, m), s)| b - m * s).collect();
            src.line(format!(
                "/// `{}`: batch norm over {} channels (folded to scale and shift).",
                node.name, x_shape[1]
            ));
            src.open(format!("fn {name}(x: &[f32], y: &mut [f32])"));
            src.line(format!(
                "const N: usize = {}; const C: usize = {}; const P: usize = {};",
                x_shape[0],
                x_shape[1],
                numel(&x_shape[2..])
            ));
            src.floats("SCALE", &scale);
            src.floats("SHIFT", &shift);
            src.open("for (i, (y, x)) in y.chunks_exact_mut(P).zip(x.chunks_exact(P)).enumerate().take(N * C)");
            src.line("let (s, t) = (SCALE[i % C], SHIFT[i % C]);");
            src.line("for (y, &x) in y.iter_mut().zip(x) { *y = x * s + t; }");
            src.close();
            src.close();
            Ok(None)
        }
        Op::Act { kind } => {
            need(Some(*kind));
            src.line(format!("/// `{}`: {kind:?}.", node.name));
            src.open(format!("fn {name}(x: &[f32], y: &mut [f32])"));
            src.line(format!(
                "for (y, &v) in y.iter_mut().zip(x) {{ *y = {}; }}",
                weighted::act_expr(Some(*kind), "v")
            ));
            src.close();
            Ok(None)
        }
        Op::Add { activation } => {
            need(*activation);
            src.line(format!(
                "/// `{}`: element-wise sum{}.",
                node.name,
                activation.map_or(String::new(), |a| format!(", then {a:?}"))
            ));
            src.open(format!("fn {name}(a: &[f32], b: &[f32], y: &mut [f32])"));
            src.line(format!(
                "for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {{ *y = {}; }}",
                weighted::act_expr(*activation, "a + b")
            ));
            src.close();
            Ok(None)
        }
        Op::GlobalAvgPool => {
            let p = numel(&x_shape[2..]);
            src.line(format!("/// `{}`: global average pooling over {p} positions.", node.name));
            src.open(format!("fn {name}(x: &[f32], y: &mut [f32])"));
            src.line(format!("const P: usize = {p};"));
            src.line("for (y, x) in y.iter_mut().zip(x.chunks_exact(P)) { *y = x.iter().sum::<f32>() / P as f32; }");
            src.close();
            Ok(None)
        }
        Op::MaxPool { kernel, stride, padding } | Op::AvgPool { kernel, stride, padding } => {
            let max = matches!(node.op, Op::MaxPool { .. });
            if !(x_shape.len() == 4 || x_shape.len() == 5) {
                return Err(unsupported(node, "only 2-D and 3-D pooling is emitted"));
            }
            let lift = |v: &[usize], fill: usize| -> [usize; 3] {
                if v.len() == 2 { [fill, v[0], v[1]] } else { [v[0], v[1], v[2]] }
            };
            let (i, o) = (lift(&x_shape[2..], 1), lift(&y_shape[2..], 1));
            let (k, s, p) = (lift(kernel, 1), lift(stride, 1), lift(padding, 0));
            src.line(format!(
                "/// `{}`: {} pooling, window {kernel:?}, stride {stride:?}, padding {padding:?}.",
                node.name,
                if max { "max" } else { "average (padding counted)" }
            ));
            src.open(format!("fn {name}(x: &[f32], y: &mut [f32])"));
            src.line(format!("const PLANES: usize = {};", x_shape[0] * x_shape[1]));
            for (d, n) in ["D", "H", "W"].iter().enumerate() {
                src.line(format!(
                    "const {n}: usize = {}; const O{n}: usize = {}; const K{n}: usize = {}; const S{n}: usize = {}; const P{n}: usize = {};",
                    i[d], o[d], k[d], s[d], p[d]
                ));
            }
            src.open("for (x, y) in x.chunks_exact(D * H * W).zip(y.chunks_exact_mut(OD * OH * OW)).take(PLANES)");
            src.open("for od in 0..OD");
            src.open("for oh in 0..OH");
            src.open("for ow in 0..OW");
            src.line("let (mut best, mut sum) = (f32::NEG_INFINITY, 0.0f32);");
            src.open("for kd in 0..KD");
            src.line("let id = (od * SD + kd) as isize - PD as isize;");
            src.line("if id < 0 || id >= D as isize { continue; }");
            src.open("for kh in 0..KH");
            src.line("let ih = (oh * SH + kh) as isize - PH as isize;");
            src.line("if ih < 0 || ih >= H as isize { continue; }");
            src.open("for kw in 0..KW");
            src.line("let iw = (ow * SW + kw) as isize - PW as isize;");
            src.line("if iw < 0 || iw >= W as isize { continue; }");
            src.line("let v = x[(id as usize * H + ih as usize) * W + iw as usize];");
            src.line("best = best.max(v);");
            src.line("sum += v;");
            src.close();
            src.close();
            src.close();
            src.line(if max {
                "y[(od * OH + oh) * OW + ow] = best; let _ = sum;"
            } else {
                "y[(od * OH + oh) * OW + ow] = sum / (KD * KH * KW) as f32; let _ = best;"
            });
            src.close();
            src.close();
            src.close();
            src.close();
            src.close();
            Ok(None)
        }
        other => Err(unsupported(
            node,
            format!(
                "`{}` has no emitted form (emitted ops: conv, linear, batch_norm, activations, pooling, add, flatten, reshape)",
                other.name()
            ),
        )),
    }
}

fn bias_values<'g>(graph: &'g Graph, node: &Node, bias: Option<&str>) -> Result<Option<&'g [f32]>> {
    match bias {
        None => Ok(None),
        Some(b) => {
            check_finite(graph, node, b)?;
            Ok(Some(graph.param(b)?.tensor.data.as_slice()))
        }
    }
}

/// File-level helpers: the dot product of dense linear layers and the activations used.
fn helpers(src: &mut Source, acts: &[Activation]) {
    src.line(
        r#"/// Dot product with 8 independent partial sums (vectorizable).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}
"#,
    );
    if acts.contains(&Activation::HardSwish) {
        src.line("#[inline(always)]\nfn hard_swish(v: f32) -> f32 {\n    v * (v + 3.0).clamp(0.0, 6.0) / 6.0\n}\n");
    }
    if acts.contains(&Activation::Sigmoid) {
        src.line(
            "#[inline(always)]\nfn sigmoid(v: f32) -> f32 {\n    1.0 / (1.0 + (-v).exp())\n}\n",
        );
    }
    if acts.contains(&Activation::Gelu) {
        src.line(
            r#"/// `x Phi(x)` with the exact normal CDF.
fn gelu(v: f32) -> f32 {
    (0.5 * f64::from(v) * (1.0 + erf(f64::from(v) / std::f64::consts::SQRT_2))) as f32
}

/// The error function: Maclaurin series near 0, continued fraction for the tails.
fn erf(x: f64) -> f64 {
    if x.abs() < 2.0 {
        let (mut term, mut sum, x2) = (x, x, x * x);
        for n in 1..60 {
            term *= -x2 / n as f64;
            let add = term / (2 * n + 1) as f64;
            sum += add;
            if add.abs() < 1e-17 {
                break;
            }
        }
        return sum * 2.0 / std::f64::consts::PI.sqrt();
    }
    let t = x.abs();
    let mut f = 0.0f64;
    for n in (1..=60).rev() {
        f = (n as f64 / 2.0) / (t + f);
    }
    let erfc = (-t * t).exp() / std::f64::consts::PI.sqrt() / (t + f);
    if x > 0.0 { 1.0 - erfc } else { erfc - 1.0 }
}
"#,
        );
    }
}

fn main_fn(src: &mut Source) {
    src.line(
        r#"/// Reads whole inputs (`INPUT_LEN` f32, little-endian) from stdin until it ends and writes
/// each output the same way to stdout.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    use std::io::{Read, Write};
    let mut bytes = Vec::new();
    std::io::stdin().read_to_end(&mut bytes)?;
    if bytes.len() % (4 * INPUT_LEN) != 0 {
        return Err(format!("stdin holds {} bytes, not a multiple of one input ({} bytes)", bytes.len(), 4 * INPUT_LEN).into());
    }
    let mut model = Model::new();
    let (mut input, mut output) = (vec![0.0f32; INPUT_LEN], vec![0.0f32; OUTPUT_LEN]);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for chunk in bytes.chunks_exact(4 * INPUT_LEN) {
        for (v, b) in input.iter_mut().zip(chunk.chunks_exact(4)) {
            *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        model.run(&input, &mut output)?;
        for v in &output {
            out.write_all(&v.to_le_bytes())?;
        }
    }
    out.flush()?;
    Ok(())
}"#,
    );
}
