//! Shape inference and checking, one rule per op. Errors name the node and say what did not
//! fit.

use std::collections::BTreeMap;

use crate::error::{IrError, Result};
use crate::graph::Node;
use crate::op::Op;
use crate::tensor::Param;

fn bad(node: &Node, reason: String) -> IrError {
    IrError::ShapeMismatch { node: node.name.clone(), reason }
}

fn shape_of<'a>(params: &'a BTreeMap<String, Param>, name: &str) -> &'a [usize] {
    params.get(name).map(|p| p.tensor.shape.as_slice()).unwrap_or(&[])
}

fn expect_param(
    node: &Node,
    params: &BTreeMap<String, Param>,
    name: &str,
    want: &[usize],
) -> Result<()> {
    let got = shape_of(params, name);
    if got == want {
        Ok(())
    } else {
        Err(bad(node, format!("parameter `{name}` has shape {got:?}, expected {want:?}")))
    }
}

/// Output size of a window op along one dimension, or an error when the window does not fit.
fn window(
    node: &Node,
    d: usize,
    input: usize,
    k: usize,
    s: usize,
    p: usize,
    dil: usize,
) -> Result<usize> {
    if s == 0 || dil == 0 || k == 0 {
        return Err(bad(
            node,
            format!("dimension {d}: kernel, stride and dilation must be non-zero"),
        ));
    }
    let span = dil * (k - 1) + 1;
    if input + 2 * p < span {
        return Err(bad(
            node,
            format!("dimension {d}: window {span} exceeds padded input {}", input + 2 * p),
        ));
    }
    Ok((input + 2 * p - span) / s + 1)
}

fn check_attrs(node: &Node, rank: usize, attrs: &[(&str, &Vec<usize>)]) -> Result<()> {
    for (what, v) in attrs {
        if v.len() != rank {
            return Err(bad(
                node,
                format!(
                    "`{what}` has {} entries, the input has {rank} spatial dimensions",
                    v.len()
                ),
            ));
        }
    }
    Ok(())
}

/// The output shape of `node` for input shapes `ins` (already checked for arity).
pub(crate) fn infer(
    node: &Node,
    ins: &[&[usize]],
    params: &BTreeMap<String, Param>,
) -> Result<Vec<usize>> {
    let x = ins[0];
    match &node.op {
        Op::Conv { weight, bias, stride, padding, dilation, groups, .. } => {
            let r = stride.len();
            if !(r == 2 || r == 3) || x.len() != r + 2 {
                return Err(bad(
                    node,
                    format!(
                        "conv input {x:?} must be [N, C, spatial...] with 2 or 3 spatial dims matching `stride`"
                    ),
                ));
            }
            check_attrs(node, r, &[("padding", padding), ("dilation", dilation)])?;
            let w = shape_of(params, weight);
            if w.len() != r + 2 {
                return Err(bad(
                    node,
                    format!(
                        "weight `{weight}` has shape {w:?}, expected [O, I/groups, k...] with {r} kernel dims"
                    ),
                ));
            }
            if *groups == 0 || x[1] != w[1] * groups || !w[0].is_multiple_of(*groups) {
                return Err(bad(
                    node,
                    format!(
                        "input has {} channels; weight {w:?} with {groups} groups expects {}",
                        x[1],
                        w[1] * groups
                    ),
                ));
            }
            if let Some(b) = bias {
                expect_param(node, params, b, &[w[0]])?;
            }
            let mut out = vec![x[0], w[0]];
            for d in 0..r {
                out.push(window(node, d, x[2 + d], w[2 + d], stride[d], padding[d], dilation[d])?);
            }
            Ok(out)
        }
        Op::Linear { weight, bias, .. } => {
            let w = shape_of(params, weight);
            if w.len() != 2 || x.is_empty() || x[x.len() - 1] != w[1] {
                return Err(bad(
                    node,
                    format!(
                        "input {x:?} does not end in the {} features weight `{weight}` {w:?} expects",
                        w.get(1).copied().unwrap_or(0)
                    ),
                ));
            }
            if let Some(b) = bias {
                expect_param(node, params, b, &[w[0]])?;
            }
            let mut out = x.to_vec();
            let last = out.len() - 1;
            out[last] = w[0];
            Ok(out)
        }
        Op::MatMul => {
            let y = ins[1];
            let n = x.len();
            if n < 2 || y.len() != n || x[..n - 2] != y[..n - 2] || x[n - 1] != y[n - 2] {
                return Err(bad(node, format!("cannot multiply {x:?} by {y:?}")));
            }
            let mut out = x.to_vec();
            out[n - 1] = y[n - 1];
            Ok(out)
        }
        Op::BatchNorm { gamma, beta, mean, var, eps } => {
            if x.len() < 2 {
                return Err(bad(node, format!("batch norm needs [N, C, ...], got {x:?}")));
            }
            if !(eps.is_finite() && *eps >= 0.0) {
                return Err(bad(node, format!("eps {eps} must be finite and non-negative")));
            }
            for p in [gamma, beta, mean, var] {
                expect_param(node, params, p, &[x[1]])?;
            }
            Ok(x.to_vec())
        }
        Op::LayerNorm { gamma, beta, .. } => {
            let f = *x
                .last()
                .ok_or_else(|| bad(node, "layer norm needs at least one dimension".into()))?;
            expect_param(node, params, gamma, &[f])?;
            expect_param(node, params, beta, &[f])?;
            Ok(x.to_vec())
        }
        Op::Act { .. } | Op::Scale { .. } => Ok(x.to_vec()),
        Op::MaxPool { kernel, stride, padding } | Op::AvgPool { kernel, stride, padding } => {
            let r = kernel.len();
            if x.len() != r + 2 {
                return Err(bad(
                    node,
                    format!("pooling input {x:?} must have {r} spatial dims after [N, C]"),
                ));
            }
            check_attrs(node, r, &[("stride", stride), ("padding", padding)])?;
            let mut out = vec![x[0], x[1]];
            for d in 0..r {
                if padding[d] * 2 > kernel[d] {
                    return Err(bad(
                        node,
                        format!(
                            "dimension {d}: padding {} exceeds half the window {}",
                            padding[d], kernel[d]
                        ),
                    ));
                }
                out.push(window(node, d, x[2 + d], kernel[d], stride[d], padding[d], 1)?);
            }
            Ok(out)
        }
        Op::GlobalAvgPool => {
            if x.len() < 3 {
                return Err(bad(
                    node,
                    format!("global pooling needs [N, C, spatial...], got {x:?}"),
                ));
            }
            Ok(vec![x[0], x[1]])
        }
        Op::Add { .. } | Op::Mul => {
            if x != ins[1] {
                return Err(bad(node, format!("operands {x:?} and {:?} differ", ins[1])));
            }
            Ok(x.to_vec())
        }
        Op::Concat { axis } => {
            if *axis >= x.len() {
                return Err(bad(node, format!("axis {axis} out of range for {x:?}")));
            }
            let mut out = x.to_vec();
            for y in &ins[1..] {
                if y.len() != x.len() || (0..x.len()).any(|d| d != *axis && y[d] != x[d]) {
                    return Err(bad(
                        node,
                        format!("cannot concatenate {x:?} and {y:?} along {axis}"),
                    ));
                }
                out[*axis] += y[*axis];
            }
            Ok(out)
        }
        Op::Reshape { shape } => {
            let total: usize = x.iter().product();
            let known: i64 = shape.iter().filter(|&&d| d != -1).product();
            let holes = shape.iter().filter(|&&d| d == -1).count();
            if holes > 1 || shape.iter().any(|&d| d == 0 || d < -1) || known <= 0 {
                return Err(bad(
                    node,
                    format!("reshape target {shape:?}: dims must be positive, at most one -1"),
                ));
            }
            let fill = if holes == 1 { total as i64 / known } else { 1 };
            let out: Vec<usize> =
                shape.iter().map(|&d| if d == -1 { fill as usize } else { d as usize }).collect();
            if out.iter().product::<usize>() != total {
                return Err(bad(
                    node,
                    format!("cannot reshape {x:?} ({total} values) to {shape:?}"),
                ));
            }
            Ok(out)
        }
        Op::Flatten { start } => {
            if *start >= x.len() {
                return Err(bad(node, format!("flatten start {start} out of range for {x:?}")));
            }
            let mut out = x[..*start].to_vec();
            out.push(x[*start..].iter().product());
            Ok(out)
        }
        Op::Transpose { perm } => {
            let mut seen = vec![false; x.len()];
            if perm.len() != x.len()
                || perm.iter().any(|&p| p >= x.len() || std::mem::replace(&mut seen[p], true))
            {
                return Err(bad(
                    node,
                    format!("{perm:?} is not a permutation of {} dims", x.len()),
                ));
            }
            Ok(perm.iter().map(|&p| x[p]).collect())
        }
        Op::Softmax { axis } => {
            if *axis >= x.len() {
                return Err(bad(node, format!("axis {axis} out of range for {x:?}")));
            }
            Ok(x.to_vec())
        }
        Op::Embedding { table } => {
            let t = shape_of(params, table);
            if t.len() != 2 || x.len() != 2 {
                return Err(bad(
                    node,
                    format!("embedding needs ids [N, T] and a table [V, D]; got {x:?} and {t:?}"),
                ));
            }
            Ok(vec![x[0], x[1], t[1]])
        }
        Op::Gru { w_ih, w_hh, b_ih, b_hh, hidden, return_sequences }
        | Op::Lstm { w_ih, w_hh, b_ih, b_hh, hidden, return_sequences } => {
            let gates = if matches!(node.op, Op::Gru { .. }) { 3 } else { 4 };
            if x.len() != 3 {
                return Err(bad(node, format!("recurrent input must be [N, T, I], got {x:?}")));
            }
            expect_param(node, params, w_ih, &[gates * hidden, x[2]])?;
            expect_param(node, params, w_hh, &[gates * hidden, *hidden])?;
            expect_param(node, params, b_ih, &[gates * hidden])?;
            expect_param(node, params, b_hh, &[gates * hidden])?;
            Ok(if *return_sequences { vec![x[0], x[1], *hidden] } else { vec![x[0], *hidden] })
        }
    }
}
