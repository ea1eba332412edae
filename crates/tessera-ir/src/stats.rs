//! Per-layer and total statistics: parameters, FLOPs dense vs kept, and bytes dense vs CSR.

use serde::{Deserialize, Serialize};
use tessera_sparsity::{LayerStats, Mask};

use crate::error::Result;
use crate::graph::Graph;
use crate::op::Op;

/// Statistics of one weight (conv, linear or RNN gate matrix).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightStats {
    /// Node name.
    pub node: String,
    /// Parameter name.
    pub weight: String,
    /// Scheme, when pruned.
    pub scheme: Option<String>,
    /// Counts from tessera-sparsity (params and FLOPs dense / kept).
    pub counts: LayerStats,
    /// Bytes as dense f32.
    pub bytes_dense: usize,
    /// Bytes as CSR (4-byte values, 4-byte column indices, 4-byte row pointers).
    pub bytes_csr: usize,
}

/// Statistics of every weight of `g`, and their total (FLOPs for the declared input shapes;
/// an RNN weight's FLOPs count every time step).
pub fn weight_stats(g: &Graph) -> Result<(Vec<WeightStats>, LayerStats)> {
    let shapes = g.validate()?;
    let mut out = Vec::new();
    for n in &g.nodes {
        let weights: Vec<&str> = match &n.op {
            Op::Conv { weight, .. } | Op::Linear { weight, .. } => vec![weight],
            Op::Gru { w_ih, w_hh, .. } | Op::Lstm { w_ih, w_hh, .. } => vec![w_ih, w_hh],
            _ => continue,
        };
        for w in weights {
            let Some(layer) = g.weight_layer(n, w, &shapes) else { continue };
            let p = &g.params[w];
            let mask = p
                .sparsity
                .as_ref()
                .map(|s| s.mask.clone())
                .unwrap_or_else(|| Mask::support_of(&p.tensor.data));
            let mut counts = LayerStats::of(&layer, &mask)?;
            let batch = shapes[&n.output][0] as u64;
            counts.flops_dense *= batch;
            counts.flops_kept *= batch;
            let rows = layer.geometry.rows();
            out.push(WeightStats {
                node: n.name.clone(),
                weight: w.to_string(),
                scheme: p.sparsity.as_ref().map(|s| s.scheme.to_string()),
                counts,
                bytes_dense: 4 * p.tensor.len(),
                bytes_csr: 8 * counts.params_kept + 4 * (rows + 1),
            });
        }
    }
    let total = LayerStats::total(out.iter().map(|s| &s.counts));
    Ok((out, total))
}
