//! Helpers shared by the integration tests.

use tessera_ir::{Graph, Op};
use tessera_sparsity::{Scheme, Target};

/// Every conv and linear weight of `g` pruned with `scheme` at `target` where the scheme
/// applies (pattern schemes only on 3x3 convolutions).
pub(crate) fn prune_all(g: &mut Graph, scheme: &str, target: f64) -> usize {
    let s: Scheme = scheme.parse().unwrap();
    let nodes: Vec<(String, String, bool)> = g
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::Conv { weight, .. } => {
                let shape = &g.params[weight].tensor.shape;
                let three = shape.len() == 4 && shape[2] == 3 && shape[3] == 3 && shape[1] > 1;
                Some((n.name.clone(), weight.clone(), three))
            }
            Op::Linear { weight, .. } => Some((n.name.clone(), weight.clone(), false)),
            _ => None,
        })
        .collect();
    let mut pruned = 0;
    for (node, weight, three) in nodes {
        if scheme.starts_with("pattern") && !three {
            continue;
        }
        g.prune(&node, &weight, &s, Target::Compression(target)).unwrap();
        pruned += 1;
    }
    pruned
}
