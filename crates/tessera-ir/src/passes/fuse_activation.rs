//! Activation fusion: an activation reading the output of a conv, linear or add node (and
//! nothing else reading it) becomes that node's fused activation, so kernels apply it while
//! the result is still in registers (a residual block's `relu(x + shortcut)` is one pass).

use crate::error::Result;
use crate::graph::Graph;
use crate::op::Op;
use crate::passes::Pass;

/// Fuses activations into the preceding conv, linear or add node.
#[derive(Debug, Clone, Copy, Default)]
pub struct FuseActivation;

impl Pass for FuseActivation {
    fn name(&self) -> &'static str {
        "fuse-activation"
    }

    fn run(&self, graph: &Graph) -> Result<Option<Graph>> {
        let mut g = graph.clone();
        let mut changed = false;
        let mut k = 0;
        while k < g.nodes.len() {
            let Op::Act { kind } = g.nodes[k].op else {
                k += 1;
                continue;
            };
            let input = g.nodes[k].inputs[0].clone();
            let fusable = g.producer(&input).filter(|&p| {
                matches!(
                    g.nodes[p].op,
                    Op::Conv { activation: None, .. }
                        | Op::Linear { activation: None, .. }
                        | Op::Add { activation: None }
                ) && g.consumers(&input).len() == 1
                    && !g.is_output(&input)
            });
            let Some(p) = fusable else {
                k += 1;
                continue;
            };
            if let Op::Conv { activation, .. }
            | Op::Linear { activation, .. }
            | Op::Add { activation } = &mut g.nodes[p].op
            {
                *activation = Some(kind);
            }
            g.nodes[p].output = g.nodes[k].output.clone();
            g.nodes.remove(k);
            changed = true;
        }
        Ok(changed.then_some(g))
    }
}
