//! Reshape folding: reshapes and flattens that do not change the shape are removed, and a
//! reshape or flatten reading another one reads the original value instead (the inner one
//! disappears when nothing else reads it). Reshapes move no data in the interpreter, but each
//! is a node the compiler would otherwise have to plan.

use crate::error::Result;
use crate::graph::Graph;
use crate::op::Op;
use crate::passes::Pass;

/// Removes identity reshapes and collapses chains of reshapes.
#[derive(Debug, Clone, Copy, Default)]
pub struct FoldReshapes;

fn is_reshape(op: &Op) -> bool {
    matches!(op, Op::Reshape { .. } | Op::Flatten { .. })
}

impl Pass for FoldReshapes {
    fn name(&self) -> &'static str {
        "fold-reshapes"
    }

    fn run(&self, graph: &Graph) -> Result<Option<Graph>> {
        let mut g = graph.clone();
        let mut changed = false;
        loop {
            let shapes = g.validate()?;
            let mut step = false;
            for k in 0..g.nodes.len() {
                if !is_reshape(&g.nodes[k].op) {
                    continue;
                }
                let (input, output) = (g.nodes[k].inputs[0].clone(), g.nodes[k].output.clone());
                // Identity: the shape does not change.
                if shapes[&input] == shapes[&output] && !g.is_output(&output) {
                    g.rename_uses(&output, &input);
                    g.nodes.remove(k);
                    step = true;
                    break;
                }
                // Chain: read through an inner reshape when the outer result does not depend on
                // the inner one's shape.
                if let Some(p) = g.producer(&input).filter(|&p| is_reshape(&g.nodes[p].op)) {
                    let source = g.nodes[p].inputs[0].clone();
                    let independent = match &g.nodes[k].op {
                        Op::Reshape { .. } => true,
                        Op::Flatten { start } => {
                            shapes[&source].get(..*start) == shapes[&input].get(..*start)
                        }
                        _ => false,
                    };
                    if independent {
                        g.nodes[k].inputs[0] = source;
                        if g.consumers(&input).is_empty() && !g.is_output(&input) {
                            g.nodes.remove(p);
                        }
                        step = true;
                        break;
                    }
                }
            }
            if !step {
                break;
            }
            changed = true;
        }
        Ok(changed.then_some(g))
    }
}
