//! A textual form of a graph for reading and snapshot tests: one line per node with its
//! attributes, parameters (shape, scheme, kept fraction) and inferred output shape.

use std::fmt::Write;

use crate::graph::Graph;
use crate::op::Op;

fn dims(v: &[usize]) -> String {
    v.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x")
}

/// The graph as text. Shapes are inferred for the declared inputs; if validation fails the
/// error is printed in place of the shapes.
pub fn dump(g: &Graph) -> String {
    let shapes = g.validate().ok();
    let mut s = String::new();
    let inputs: Vec<String> =
        g.inputs.iter().map(|i| format!("%{} [{}]", i.name, dims(&i.shape))).collect();
    let _ = writeln!(s, "graph {}({})", g.name, inputs.join(", "));
    for n in &g.nodes {
        let attrs = match &n.op {
            Op::Conv { stride, padding, dilation, groups, activation, .. } => format!(
                "[s{} p{} d{} g{groups}{}]",
                dims(stride),
                dims(padding),
                dims(dilation),
                activation.map(|a| format!(" +{}", a.name())).unwrap_or_default()
            ),
            Op::Linear { activation, .. } | Op::Add { activation } => {
                activation.map(|a| format!("[+{}]", a.name())).unwrap_or_default()
            }
            Op::Act { kind } => format!("[{}]", kind.name()),
            Op::MaxPool { kernel, stride, padding } | Op::AvgPool { kernel, stride, padding } => {
                format!("[k{} s{} p{}]", dims(kernel), dims(stride), dims(padding))
            }
            Op::Concat { axis } | Op::Softmax { axis } => format!("[axis {axis}]"),
            Op::Reshape { shape } => format!("[{shape:?}]"),
            Op::Flatten { start } => format!("[from {start}]"),
            Op::Transpose { perm } => format!("[{perm:?}]"),
            Op::Scale { factor } => format!("[x{factor}]"),
            Op::BatchNorm { eps, .. } | Op::LayerNorm { eps, .. } => format!("[eps {eps}]"),
            Op::Gru { hidden, return_sequences, .. }
            | Op::Lstm { hidden, return_sequences, .. } => {
                format!("[h{hidden}{}]", if *return_sequences { " seq" } else { "" })
            }
            _ => String::new(),
        };
        let params: Vec<String> =
            n.op.params()
                .iter()
                .map(|p| match g.params.get(*p) {
                    Some(param) => {
                        let sp = param
                            .sparsity
                            .as_ref()
                            .map(|sp| format!(" {} {:.1}%", sp.scheme, 100.0 * sp.mask.density()))
                            .unwrap_or_default();
                        format!("{p}[{}]{sp}", dims(&param.tensor.shape))
                    }
                    None => format!("{p}[missing]"),
                })
                .collect();
        let ins: Vec<String> = n.inputs.iter().map(|i| format!("%{i}")).collect();
        let shape = shapes
            .as_ref()
            .and_then(|s| s.get(&n.output))
            .map(|v| dims(v))
            .unwrap_or_else(|| "?".into());
        let params =
            if params.is_empty() { String::new() } else { format!("; {}", params.join(", ")) };
        let _ = writeln!(
            s,
            "  %{} = {}{attrs}({}{params}) -> [{shape}]",
            n.output,
            n.op.name(),
            ins.join(", ")
        );
    }
    let outs: Vec<String> = g.outputs.iter().map(|o| format!("%{o}")).collect();
    let _ = writeln!(s, "  return {}", outs.join(", "));
    s
}
