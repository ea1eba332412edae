//! Dead-channel removal after filter or channel pruning: actually shrinks the layers.
//!
//! A producer `A` (ungrouped conv or linear layer) feeds a consumer `B` (ungrouped conv, or a
//! linear layer after a flatten or a global pooling) through a chain of channel-wise ops that
//! map zero to zero (ReLU-like activations, max / average pooling, global average pooling,
//! flatten). Output channel `c` of `A` is dead when
//! * `A`'s weights for `c` are all zero and its bias is zero (after batch-norm folding), so
//!   the channel is zero everywhere and contributes nothing to `B` (filter pruning), or
//! * `B`'s weights reading `c` are all zero, so nothing uses it (channel pruning of `B`).
//!
//! Dead channels are removed from `A`'s weight, bias and mask and from `B`'s input columns (a
//! block of `spatial` columns per channel after a flatten); every value on the chain loses the
//! channel too, since shapes are inferred. At least one channel always remains.
//!
//! Block-structured schemes constrain which channels may go: removal works on aligned groups
//! of channels that are whole row tiles of `A`'s scheme and whole column tiles of `B`'s
//! ([`tessera_sparsity::Scheme::gemm_tile`]), and a group goes only when all of its channels
//! are dead. Removing one dead filter from inside a block-punched block would shift every
//! later block, the mask would no longer be block-punched, and codegen would have to fall back
//! from the block format to masked row groups.

use std::collections::BTreeSet;

use crate::error::Result;
use crate::graph::Graph;
use crate::op::Op;
use crate::passes::{Pass, param_users};
use crate::tensor::{Param, Sparsity};

/// Removes channels that filter or channel pruning left dead.
#[derive(Debug, Clone, Copy, Default)]
pub struct RemoveDeadChannels;

impl Pass for RemoveDeadChannels {
    fn name(&self) -> &'static str {
        "remove-dead-channels"
    }

    fn run(&self, graph: &Graph) -> Result<Option<Graph>> {
        let mut g = graph.clone();
        let mut changed = false;
        for a in 0..g.nodes.len() {
            changed |= shrink(&mut g, a)?;
        }
        Ok(changed.then_some(g))
    }
}

/// How consumer `B` reads `A`'s channels.
struct Link {
    b: usize,
    /// Columns of `B`'s weight per channel of `A` (kernel volume for a conv, spatial size after
    /// a flatten, 1 after global pooling or directly from a linear layer).
    span: usize,
}

/// Follows `A`'s output through zero-preserving channel-wise ops to a single consumer.
fn link(g: &Graph, a: usize) -> Result<Option<Link>> {
    let shapes = g.validate()?;
    match &g.nodes[a].op {
        Op::Conv { groups: 1, activation, .. } | Op::Linear { activation, .. }
            if activation.is_none_or(|f| f.preserves_zero()) => {}
        _ => return Ok(None),
    }
    let a_is_linear = matches!(g.nodes[a].op, Op::Linear { .. });
    let mut value = g.nodes[a].output.clone();
    let mut span_after_flatten = None;
    loop {
        let cons = g.consumers(&value);
        if cons.len() != 1 || g.is_output(&value) {
            return Ok(None);
        }
        let c = cons[0];
        let node = &g.nodes[c];
        match &node.op {
            Op::Act { kind } if kind.preserves_zero() => {}
            Op::MaxPool { .. } | Op::AvgPool { .. } | Op::GlobalAvgPool if !a_is_linear => {}
            Op::Flatten { start: 1 } if !a_is_linear && span_after_flatten.is_none() => {
                span_after_flatten = Some(shapes[&value][2..].iter().product::<usize>());
            }
            Op::Conv { groups: 1, weight, .. } if !a_is_linear && span_after_flatten.is_none() => {
                let w = &g.params[weight].tensor.shape;
                return Ok(Some(Link { b: c, span: w[2..].iter().product() }));
            }
            Op::Linear { .. } if shapes[&value].len() == 2 => {
                return Ok(Some(Link { b: c, span: span_after_flatten.unwrap_or(1) }));
            }
            _ => return Ok(None),
        }
        value = node.output.clone();
    }
}

fn shrink(g: &mut Graph, a: usize) -> Result<bool> {
    let Some(Link { b, span }) = link(g, a)? else { return Ok(false) };
    let (a_w, a_b) = match &g.nodes[a].op {
        Op::Conv { weight, bias, .. } | Op::Linear { weight, bias, .. } => {
            (weight.clone(), bias.clone())
        }
        _ => return Ok(false),
    };
    let b_w = match &g.nodes[b].op {
        Op::Conv { weight, .. } | Op::Linear { weight, .. } => weight.clone(),
        _ => return Ok(false),
    };
    if param_users(g, &a_w) != 1
        || param_users(g, &b_w) != 1
        || a_b.as_ref().is_some_and(|p| param_users(g, p) != 1)
    {
        return Ok(false);
    }
    let aw = &g.params[&a_w].tensor;
    let channels = aw.shape[0];
    let per_out = aw.len() / channels;
    let bw = &g.params[&b_w].tensor;
    let (b_rows, b_cols) = (bw.shape[0], bw.len() / bw.shape[0]);
    if b_cols != channels * span {
        return Ok(false);
    }
    let bias = a_b.as_ref().map(|p| g.params[p].tensor.data.clone());
    let is_dead = |c: usize| {
        let filter_dead = aw.data[c * per_out..(c + 1) * per_out].iter().all(|&v| v == 0.0)
            && bias.as_ref().is_none_or(|b| b[c] == 0.0);
        let unused = (0..b_rows).all(|r| {
            bw.data[r * b_cols + c * span..r * b_cols + (c + 1) * span].iter().all(|&v| v == 0.0)
        });
        filter_dead || unused
    };
    // Channels go in aligned groups that are whole tiles of both sparsity schemes, so a
    // block-structured mask stays block-structured (and its block format still encodes it).
    let period = channel_period(
        g.params[&a_w].sparsity.as_ref(),
        g.params[&b_w].sparsity.as_ref(),
        &bw.shape,
        span,
    );
    let mut dead: BTreeSet<usize> = BTreeSet::new();
    for start in (0..channels).step_by(period) {
        let group = start..(start + period).min(channels);
        if group.clone().all(is_dead) {
            dead.extend(group);
        }
    }
    if dead.len() == channels {
        // Keep one group so no tensor becomes empty.
        let keep = dead.iter().take(period).copied().collect::<Vec<_>>();
        for c in keep {
            dead.remove(&c);
        }
    }
    if dead.is_empty() {
        return Ok(false);
    }
    // A: drop rows (output channels) of the weight, bias and mask.
    keep_blocks(
        g.params.get_mut(&a_w),
        |i| !dead.contains(&(i / per_out)),
        |shape| shape[0] -= dead.len(),
    );
    if let Some(p) = &a_b {
        keep_blocks(g.params.get_mut(p), |i| !dead.contains(&i), |shape| shape[0] -= dead.len());
    }
    // B: drop the columns reading dead channels.
    keep_blocks(
        g.params.get_mut(&b_w),
        |i| !dead.contains(&((i % b_cols) / span)),
        |shape| {
            if shape.len() == 2 {
                shape[1] -= dead.len() * span;
            } else {
                shape[1] -= dead.len();
            }
        },
    );
    tracing::debug!(node = %g.nodes[a].name, removed = dead.len(), "dead channels");
    Ok(true)
}

/// The channel granularity of removal: the least number of `A`'s output channels that is a
/// whole number of `A`'s row tiles and, read by `B` as `span` GEMM columns each, a whole
/// number of `B`'s column tiles ([`tessera_sparsity::Scheme::gemm_tile`]); 1 without schemes.
fn channel_period(
    a: Option<&Sparsity>,
    b: Option<&Sparsity>,
    b_shape: &[usize],
    span: usize,
) -> usize {
    let b_kernel_volume = b_shape.iter().skip(2).product::<usize>();
    let a_rows = a.map_or(1, |s| s.scheme.gemm_tile(1).0).max(1);
    let b_cols = b.map_or(1, |s| s.scheme.gemm_tile(b_kernel_volume).1).max(1);
    // The fewest channels whose `span` columns each fill whole tiles of `b_cols` columns.
    let b_channels = b_cols / gcd(b_cols, span.max(1));
    a_rows / gcd(a_rows, b_channels) * b_channels
}

/// Greatest common divisor.
fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Keeps the values (and mask positions) at indices where `keep` holds, then fixes the shape.
fn keep_blocks(
    p: Option<&mut Param>,
    keep: impl Fn(usize) -> bool,
    reshape: impl FnOnce(&mut Vec<usize>),
) {
    let Some(p) = p else { return };
    let kept: Vec<usize> = (0..p.tensor.len()).filter(|&i| keep(i)).collect();
    p.tensor.data = kept.iter().map(|&i| p.tensor.data[i]).collect();
    reshape(&mut p.tensor.shape);
    if let Some(s) = &mut p.sparsity {
        let bits: Vec<bool> = kept.iter().map(|&i| s.mask.get(i)).collect();
        s.mask = tessera_sparsity::Mask::from_bools(&bits);
    }
}
