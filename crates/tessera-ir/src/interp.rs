//! The reference interpreter: plain loops that define what every op computes. Slow on
//! purpose and easy to check; products are accumulated in f64. The compiler's plans and the
//! ReRAM simulator are tested against it.

use std::collections::HashMap;

use crate::error::{IrError, Result};
use crate::graph::Graph;
use crate::op::{Activation, Op};
use crate::tensor::Tensor;

/// Runs `graph` on `inputs` (one tensor per graph input, any batch size) and returns the
/// graph's outputs.
pub fn run(graph: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
    run_with(graph, inputs, |_, _, _, _| None)
}

/// [`run`], letting `replace` compute any node itself: it gets the node's index, the node, its
/// input tensors and output shape, and returns `Some(output data)` to replace the
/// interpreter or `None` to let it run ([`eval_node`]). Simulators use this to run some ops
/// their own way (the ReRAM crossbar: convolutions and linear layers) and the rest as defined.
pub fn run_with<E: From<IrError>>(
    graph: &Graph,
    inputs: &[Tensor],
    mut replace: impl FnMut(
        usize,
        &crate::graph::Node,
        &[&Tensor],
        &[usize],
    ) -> Option<std::result::Result<Vec<f32>, E>>,
) -> std::result::Result<Vec<Tensor>, E> {
    if inputs.len() != graph.inputs.len() {
        return Err(IrError::BadInput {
            input: graph.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", "),
            reason: format!("{} tensors for {} graph inputs", inputs.len(), graph.inputs.len()),
        }
        .into());
    }
    for (i, t) in graph.inputs.iter().zip(inputs) {
        if !t.is_consistent() {
            return Err(IrError::BadInput {
                input: i.name.clone(),
                reason: "data length does not match the shape".into(),
            }
            .into());
        }
        if t.shape.len() != i.shape.len() || t.shape[1..] != i.shape[1..] {
            return Err(IrError::BadInput {
                input: i.name.clone(),
                reason: format!(
                    "shape {:?} does not match the declared {:?} (only the batch size may differ)",
                    t.shape, i.shape
                ),
            }
            .into());
        }
    }
    let shapes = graph.infer_shapes(&inputs.iter().map(|t| t.shape.clone()).collect::<Vec<_>>())?;
    // Last use of every value, so memory is released as soon as possible.
    let mut last_use: HashMap<&str, usize> = HashMap::new();
    for (k, n) in graph.nodes.iter().enumerate() {
        for i in &n.inputs {
            last_use.insert(i.as_str(), k);
        }
    }
    let mut values: HashMap<String, Tensor> = HashMap::new();
    for (i, t) in graph.inputs.iter().zip(inputs) {
        values.insert(i.name.clone(), t.clone());
    }
    for (k, node) in graph.nodes.iter().enumerate() {
        let ins: Vec<&Tensor> = node.inputs.iter().map(|i| &values[i]).collect();
        let out_shape = shapes[&node.output].clone();
        let data = match replace(k, node, &ins, &out_shape) {
            Some(data) => data?,
            None => eval_node(graph, node, &ins, &out_shape)?,
        };
        values.insert(node.output.clone(), Tensor::new(out_shape, data));
        for i in &node.inputs {
            if last_use.get(i.as_str()) == Some(&k) && !graph.is_output(i) {
                values.remove(i);
            }
        }
    }
    Ok(graph.outputs.iter().map(|o| values[o].clone()).collect())
}

/// Computes one node's output (`out_shape`, as shape inference gives it) from its input
/// tensors, in the node's input order. [`run`] is this in a loop; simulators that replace some
/// ops (the ReRAM crossbar runs convolutions and linear layers itself) call it for the rest.
pub fn eval_node(
    graph: &Graph,
    node: &crate::graph::Node,
    ins: &[&Tensor],
    out_shape: &[usize],
) -> Result<Vec<f32>> {
    let p = |name: &str| &graph.params[name].tensor;
    Ok(match &node.op {
        Op::Conv { weight, bias, stride, padding, dilation, groups, activation } => {
            let mut y = conv(
                ins[0],
                p(weight),
                bias.as_deref().map(p),
                stride,
                padding,
                dilation,
                *groups,
                out_shape,
            );
            apply(&mut y, *activation);
            y
        }
        Op::Linear { weight, bias, activation } => {
            let mut y = linear(ins[0], p(weight), bias.as_deref().map(p));
            apply(&mut y, *activation);
            y
        }
        Op::MatMul => matmul(ins[0], ins[1]),
        Op::BatchNorm { gamma, beta, mean, var, eps } => {
            batch_norm(ins[0], p(gamma), p(beta), p(mean), p(var), *eps)
        }
        Op::LayerNorm { gamma, beta, eps } => layer_norm(ins[0], p(gamma), p(beta), *eps),
        Op::Act { kind } => ins[0].data.iter().map(|&v| kind.apply(v)).collect(),
        Op::MaxPool { kernel, stride, padding } => {
            pool(ins[0], kernel, stride, padding, out_shape, true)
        }
        Op::AvgPool { kernel, stride, padding } => {
            pool(ins[0], kernel, stride, padding, out_shape, false)
        }
        Op::GlobalAvgPool => {
            let x = ins[0];
            let inner: usize = x.shape[2..].iter().product();
            x.data
                .chunks(inner)
                .map(|c| (c.iter().map(|&v| f64::from(v)).sum::<f64>() / inner as f64) as f32)
                .collect()
        }
        Op::Add { activation } => {
            let mut y: Vec<f32> =
                ins[0].data.iter().zip(&ins[1].data).map(|(a, b)| a + b).collect();
            apply(&mut y, *activation);
            y
        }
        Op::Mul => ins[0].data.iter().zip(&ins[1].data).map(|(a, b)| a * b).collect(),
        Op::Concat { axis } => concat(ins, *axis),
        Op::Reshape { .. } | Op::Flatten { .. } => ins[0].data.clone(),
        Op::Transpose { perm } => transpose(ins[0], perm),
        Op::Softmax { axis } => softmax(ins[0], *axis),
        Op::Scale { factor } => ins[0].data.iter().map(|&v| v * factor).collect(),
        Op::Embedding { table } => embedding(&node.name, ins[0], p(table))?,
        Op::Gru { w_ih, w_hh, b_ih, b_hh, hidden, return_sequences } => {
            recurrent(ins[0], p(w_ih), p(w_hh), p(b_ih), p(b_hh), *hidden, *return_sequences, false)
        }
        Op::Lstm { w_ih, w_hh, b_ih, b_hh, hidden, return_sequences } => {
            recurrent(ins[0], p(w_ih), p(w_hh), p(b_ih), p(b_hh), *hidden, *return_sequences, true)
        }
    })
}

fn apply(y: &mut [f32], act: Option<Activation>) {
    if let Some(a) = act {
        for v in y {
            *v = a.apply(*v);
        }
    }
}

/// N-d convolution (2-D is 3-D with depth 1).
#[allow(clippy::too_many_arguments)]
fn conv(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: &[usize],
    padding: &[usize],
    dilation: &[usize],
    groups: usize,
    out: &[usize],
) -> Vec<f32> {
    let lift = |v: &[usize], fill: usize| -> [usize; 3] {
        if v.len() == 2 { [fill, v[0], v[1]] } else { [v[0], v[1], v[2]] }
    };
    let (n, c) = (x.shape[0], x.shape[1]);
    let id = lift(&x.shape[2..], 1);
    let k = lift(&w.shape[2..], 1);
    let od = lift(&out[2..], 1);
    let (s, pd, dl) = (lift(stride, 1), lift(padding, 0), lift(dilation, 1));
    let o = w.shape[0];
    let (ipg, opg) = (c / groups, o / groups);
    let kv = k[0] * k[1] * k[2];
    let ipos = id[0] * id[1] * id[2];
    let opos = od[0] * od[1] * od[2];
    let mut y = vec![0.0f32; n * o * opos];
    for b_ in 0..n {
        for oc in 0..o {
            let g = oc / opg;
            for z in 0..od[0] {
                for yy in 0..od[1] {
                    for xx in 0..od[2] {
                        let mut acc = b.map_or(0.0, |b| f64::from(b.data[oc]));
                        for ci in 0..ipg {
                            let ch = g * ipg + ci;
                            for t0 in 0..k[0] {
                                let iz = (z * s[0] + t0 * dl[0]) as isize - pd[0] as isize;
                                if iz < 0 || iz >= id[0] as isize {
                                    continue;
                                }
                                for t1 in 0..k[1] {
                                    let iy = (yy * s[1] + t1 * dl[1]) as isize - pd[1] as isize;
                                    if iy < 0 || iy >= id[1] as isize {
                                        continue;
                                    }
                                    for t2 in 0..k[2] {
                                        let ix = (xx * s[2] + t2 * dl[2]) as isize - pd[2] as isize;
                                        if ix < 0 || ix >= id[2] as isize {
                                            continue;
                                        }
                                        let wv = w.data
                                            [(oc * ipg + ci) * kv + (t0 * k[1] + t1) * k[2] + t2];
                                        let xv = x.data[(b_ * c + ch) * ipos
                                            + (iz as usize * id[1] + iy as usize) * id[2]
                                            + ix as usize];
                                        acc += f64::from(wv) * f64::from(xv);
                                    }
                                }
                            }
                        }
                        y[(b_ * o + oc) * opos + (z * od[1] + yy) * od[2] + xx] = acc as f32;
                    }
                }
            }
        }
    }
    y
}

fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Vec<f32> {
    let (out, inp) = (w.shape[0], w.shape[1]);
    let rows = x.data.len() / inp;
    let mut y = vec![0.0f32; rows * out];
    for r in 0..rows {
        let xr = &x.data[r * inp..(r + 1) * inp];
        for o in 0..out {
            let wr = &w.data[o * inp..(o + 1) * inp];
            let acc: f64 =
                xr.iter().zip(wr).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum::<f64>()
                    + b.map_or(0.0, |b| f64::from(b.data[o]));
            y[r * out + o] = acc as f32;
        }
    }
    y
}

fn matmul(a: &Tensor, b: &Tensor) -> Vec<f32> {
    let n = a.shape.len();
    let (m, k, p) = (a.shape[n - 2], a.shape[n - 1], b.shape[n - 1]);
    let batch: usize = a.shape[..n - 2].iter().product();
    let mut y = vec![0.0f32; batch * m * p];
    for bt in 0..batch {
        for i in 0..m {
            for j in 0..p {
                let acc: f64 = (0..k)
                    .map(|t| {
                        f64::from(a.data[(bt * m + i) * k + t])
                            * f64::from(b.data[(bt * k + t) * p + j])
                    })
                    .sum();
                y[(bt * m + i) * p + j] = acc as f32;
            }
        }
    }
    y
}

fn batch_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f32,
) -> Vec<f32> {
    let c = x.shape[1];
    let inner: usize = x.shape[2..].iter().product();
    x.data
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = (i / inner) % c;
            let scale =
                f64::from(gamma.data[ch]) / (f64::from(var.data[ch]) + f64::from(eps)).sqrt();
            ((f64::from(v) - f64::from(mean.data[ch])) * scale + f64::from(beta.data[ch])) as f32
        })
        .collect()
}

fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Vec<f32> {
    let f = *x.shape.last().unwrap_or(&1);
    let mut y = Vec::with_capacity(x.data.len());
    for row in x.data.chunks(f) {
        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / f as f64;
        let var = row.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / f as f64;
        let inv = 1.0 / (var + f64::from(eps)).sqrt();
        y.extend(row.iter().enumerate().map(|(j, &v)| {
            ((f64::from(v) - mean) * inv * f64::from(gamma.data[j]) + f64::from(beta.data[j]))
                as f32
        }));
    }
    y
}

fn pool(
    x: &Tensor,
    kernel: &[usize],
    stride: &[usize],
    padding: &[usize],
    out: &[usize],
    max: bool,
) -> Vec<f32> {
    let lift = |v: &[usize], fill: usize| -> [usize; 3] {
        if v.len() == 2 { [fill, v[0], v[1]] } else { [v[0], v[1], v[2]] }
    };
    let (n, c) = (x.shape[0], x.shape[1]);
    let id = lift(&x.shape[2..], 1);
    let (k, s, p) = (lift(kernel, 1), lift(stride, 1), lift(padding, 0));
    let od = lift(&out[2..], 1);
    let ipos = id[0] * id[1] * id[2];
    let opos = od[0] * od[1] * od[2];
    let window = (k[0] * k[1] * k[2]) as f64;
    let mut y = vec![0.0f32; n * c * opos];
    for plane in 0..n * c {
        for z in 0..od[0] {
            for yy in 0..od[1] {
                for xx in 0..od[2] {
                    let (mut best, mut sum) = (f32::NEG_INFINITY, 0.0f64);
                    for t0 in 0..k[0] {
                        for t1 in 0..k[1] {
                            for t2 in 0..k[2] {
                                let iz = (z * s[0] + t0) as isize - p[0] as isize;
                                let iy = (yy * s[1] + t1) as isize - p[1] as isize;
                                let ix = (xx * s[2] + t2) as isize - p[2] as isize;
                                if iz < 0
                                    || iy < 0
                                    || ix < 0
                                    || iz >= id[0] as isize
                                    || iy >= id[1] as isize
                                    || ix >= id[2] as isize
                                {
                                    continue;
                                }
                                let v = x.data[plane * ipos
                                    + (iz as usize * id[1] + iy as usize) * id[2]
                                    + ix as usize];
                                best = best.max(v);
                                sum += f64::from(v);
                            }
                        }
                    }
                    y[plane * opos + (z * od[1] + yy) * od[2] + xx] =
                        if max { best } else { (sum / window) as f32 };
                }
            }
        }
    }
    y
}

fn concat(ins: &[&Tensor], axis: usize) -> Vec<f32> {
    let outer: usize = ins[0].shape[..axis].iter().product();
    let mut y = Vec::with_capacity(ins.iter().map(|t| t.data.len()).sum());
    for o in 0..outer {
        for t in ins {
            let chunk: usize = t.shape[axis..].iter().product();
            y.extend_from_slice(&t.data[o * chunk..(o + 1) * chunk]);
        }
    }
    y
}

fn transpose(x: &Tensor, perm: &[usize]) -> Vec<f32> {
    let n = x.shape.len();
    let out_shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let mut in_strides = vec![1usize; n];
    for d in (0..n.saturating_sub(1)).rev() {
        in_strides[d] = in_strides[d + 1] * x.shape[d + 1];
    }
    let mut y = vec![0.0f32; x.data.len()];
    let mut idx = vec![0usize; n];
    for v in y.iter_mut() {
        let src: usize = (0..n).map(|d| idx[d] * in_strides[perm[d]]).sum();
        *v = x.data[src];
        for d in (0..n).rev() {
            idx[d] += 1;
            if idx[d] < out_shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    y
}

fn softmax(x: &Tensor, axis: usize) -> Vec<f32> {
    let len = x.shape[axis];
    let inner: usize = x.shape[axis + 1..].iter().product();
    let outer: usize = x.shape[..axis].iter().product();
    let mut y = x.data.clone();
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * len + j) * inner + i;
            let m = (0..len).map(|j| x.data[at(j)]).fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = (0..len).map(|j| f64::from(x.data[at(j)] - m).exp()).sum();
            for j in 0..len {
                y[at(j)] = (f64::from(x.data[at(j)] - m).exp() / sum) as f32;
            }
        }
    }
    y
}

fn embedding(node: &str, ids: &Tensor, table: &Tensor) -> Result<Vec<f32>> {
    let (vocab, d) = (table.shape[0], table.shape[1]);
    let mut y = Vec::with_capacity(ids.data.len() * d);
    for &id in &ids.data {
        let k = id.round();
        if !(0.0..vocab as f32).contains(&k) || (id - k).abs() > 1e-3 {
            return Err(IrError::BadInput {
                input: node.to_string(),
                reason: format!("token id {id} is not an integer in 0..{vocab}"),
            });
        }
        let k = k as usize;
        y.extend_from_slice(&table.data[k * d..(k + 1) * d]);
    }
    Ok(y)
}

fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

/// GRU (gates r, z, n) or LSTM (gates i, f, g, o), PyTorch semantics, batch first.
#[allow(clippy::too_many_arguments)]
fn recurrent(
    x: &Tensor,
    w_ih: &Tensor,
    w_hh: &Tensor,
    b_ih: &Tensor,
    b_hh: &Tensor,
    h: usize,
    seq: bool,
    lstm: bool,
) -> Vec<f32> {
    let (n, t, inp) = (x.shape[0], x.shape[1], x.shape[2]);
    let gates = if lstm { 4 } else { 3 };
    let mut y = Vec::with_capacity(if seq { n * t * h } else { n * h });
    let matvec = |w: &Tensor, cols: usize, v: &[f64], b: &Tensor| -> Vec<f64> {
        (0..gates * h)
            .map(|r| {
                f64::from(b.data[r])
                    + (0..cols).map(|c| f64::from(w.data[r * cols + c]) * v[c]).sum::<f64>()
            })
            .collect()
    };
    for b in 0..n {
        let mut hs = vec![0.0f64; h];
        let mut cs = vec![0.0f64; h];
        let mut seq_out = Vec::with_capacity(t * h);
        for step in 0..t {
            let xs: Vec<f64> = x.data[(b * t + step) * inp..(b * t + step + 1) * inp]
                .iter()
                .map(|&v| f64::from(v))
                .collect();
            let gi = matvec(w_ih, inp, &xs, b_ih);
            let gh = matvec(w_hh, h, &hs, b_hh);
            if lstm {
                for j in 0..h {
                    let i = sigmoid(gi[j] + gh[j]);
                    let f = sigmoid(gi[h + j] + gh[h + j]);
                    let g = (gi[2 * h + j] + gh[2 * h + j]).tanh();
                    let o = sigmoid(gi[3 * h + j] + gh[3 * h + j]);
                    cs[j] = f * cs[j] + i * g;
                    hs[j] = o * cs[j].tanh();
                }
            } else {
                for j in 0..h {
                    let r = sigmoid(gi[j] + gh[j]);
                    let z = sigmoid(gi[h + j] + gh[h + j]);
                    let nn = (gi[2 * h + j] + r * gh[2 * h + j]).tanh();
                    hs[j] = (1.0 - z) * nn + z * hs[j];
                }
            }
            seq_out.extend(hs.iter().map(|&v| v as f32));
        }
        if seq {
            y.extend_from_slice(&seq_out);
        } else {
            y.extend(hs.iter().map(|&v| v as f32));
        }
    }
    y
}
