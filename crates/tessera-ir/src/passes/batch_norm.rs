//! Batch-norm folding: `BN(conv(x))` becomes one convolution with scaled weights and a new
//! bias, `w'[o] = w[o] * g[o] / sqrt(v[o] + eps)`, `b'[o] = (b[o] - m[o]) * that + beta[o]`.
//! Applies to a conv or a rank-2 linear layer without a fused activation whose output only the
//! batch norm reads. Pruned weights stay pruned: a scaled zero is zero, and the mask is kept.

use crate::error::Result;
use crate::graph::Graph;
use crate::op::Op;
use crate::passes::{Pass, fresh_param_name, param_users};
use crate::tensor::{Param, Tensor};

/// Folds batch norms into the preceding conv or linear layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct FoldBatchNorm;

impl Pass for FoldBatchNorm {
    fn name(&self) -> &'static str {
        "fold-batch-norm"
    }

    fn run(&self, graph: &Graph) -> Result<Option<Graph>> {
        let mut g = graph.clone();
        let mut changed = false;
        let mut k = 0;
        while k < g.nodes.len() {
            if fold_one(&mut g, k)? {
                changed = true;
            } else {
                k += 1;
            }
        }
        if changed {
            g.drop_unused_params();
        }
        Ok(changed.then_some(g))
    }
}

/// Folds node `k` if it is a foldable batch norm; returns whether it did.
fn fold_one(g: &mut Graph, k: usize) -> Result<bool> {
    let Op::BatchNorm { gamma, beta, mean, var, eps } = g.nodes[k].op.clone() else {
        return Ok(false);
    };
    let input = g.nodes[k].inputs[0].clone();
    let Some(pi) = g.producer(&input) else { return Ok(false) };
    if g.consumers(&input).len() != 1 || g.is_output(&input) {
        return Ok(false);
    }
    let shapes = g.validate()?;
    let (weight, bias) = match &g.nodes[pi].op {
        Op::Conv { weight, bias, activation: None, .. } => (weight.clone(), bias.clone()),
        Op::Linear { weight, bias, activation: None } if shapes[&input].len() == 2 => {
            (weight.clone(), bias.clone())
        }
        _ => return Ok(false),
    };
    if param_users(g, &weight) != 1 || bias.as_ref().is_some_and(|b| param_users(g, b) != 1) {
        return Ok(false);
    }
    let get = |g: &Graph, n: &str| g.params[n].tensor.data.clone();
    let (gm, bt, mn, vr) = (get(g, &gamma), get(g, &beta), get(g, &mean), get(g, &var));
    let old_bias = bias.as_ref().map(|b| get(g, b)).unwrap_or_else(|| vec![0.0; gm.len()]);
    let scale: Vec<f64> = gm
        .iter()
        .zip(&vr)
        .map(|(&g, &v)| f64::from(g) / (f64::from(v) + f64::from(eps)).sqrt())
        .collect();
    let w = g.params.get_mut(&weight).map(|p| &mut p.tensor);
    let Some(w) = w else { return Ok(false) };
    let per_out = w.len() / w.shape[0];
    for (o, s) in scale.iter().enumerate() {
        for v in &mut w.data[o * per_out..(o + 1) * per_out] {
            *v = (f64::from(*v) * s) as f32;
        }
    }
    let new_bias: Vec<f32> = (0..scale.len())
        .map(|o| ((f64::from(old_bias[o]) - f64::from(mn[o])) * scale[o] + f64::from(bt[o])) as f32)
        .collect();
    let bias_name = match bias {
        Some(b) => b,
        None => fresh_param_name(g, &format!("{}.bias", g.nodes[pi].name)),
    };
    g.params.insert(bias_name.clone(), Param::dense(Tensor::new(vec![new_bias.len()], new_bias)));
    match &mut g.nodes[pi].op {
        Op::Conv { bias, .. } | Op::Linear { bias, .. } => *bias = Some(bias_name),
        _ => return Ok(false),
    }
    // The folded layer now produces the batch norm's value.
    let bn_out = g.nodes[k].output.clone();
    g.nodes[pi].output = bn_out;
    g.nodes.remove(k);
    Ok(true)
}
