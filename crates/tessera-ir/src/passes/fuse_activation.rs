//! Activation fusion: an activation reading the output of a conv, linear or add node (and
//! nothing else reading it) becomes that node's fused activation, so kernels apply it while
//! the result is still in registers (a residual block's `relu(x + shortcut)` is one pass).
//! An activation that cannot change its input (a ReLU or ReLU6 of a value some ReLU6 or
//! ReLU already bounded the same way, e.g. left behind where a residual branch was removed)
//! is dropped.

use crate::error::Result;
use crate::graph::Graph;
use crate::op::{Activation, Op};
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
            let before = g.producer(&input).and_then(|p| produced_activation(&g.nodes[p].op));
            if before.is_some_and(|b| is_identity_after(kind, b)) {
                let output = g.nodes[k].output.clone();
                g.nodes.remove(k);
                g.rename_uses(&output, &input);
                changed = true;
                continue;
            }
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

/// The activation a node applies last, if any.
fn produced_activation(op: &Op) -> Option<Activation> {
    match op {
        Op::Act { kind } => Some(*kind),
        Op::Conv { activation, .. } | Op::Linear { activation, .. } | Op::Add { activation } => {
            *activation
        }
        _ => None,
    }
}

/// Whether `after` leaves every output of `before` unchanged: ReLU after ReLU or ReLU6 (the
/// values are >= 0), ReLU6 after ReLU6 (they are in [0, 6]).
fn is_identity_after(after: Activation, before: Activation) -> bool {
    matches!(
        (after, before),
        (Activation::Relu, Activation::Relu | Activation::Relu6)
            | (Activation::Relu6, Activation::Relu6)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Conv2d, GraphBuilder};
    use crate::interp;
    use crate::tensor::Tensor;

    #[test]
    fn a_relu_of_a_bounded_value_is_dropped_and_others_stay() {
        // conv -> relu6 -> relu (dropped) -> relu6 (dropped) ; conv -> relu -> relu6 (kept).
        let mut b = GraphBuilder::new("bounded");
        let x = b.input("x", &[1, 2, 5, 5]);
        let c = Conv2d { padding: 1, ..Default::default() };
        let a = b.conv2d("a", &x, Tensor::uniform([3, 2, 3, 3], 4.0, 1), None, c);
        let a6 = b.act("a6", &a, Activation::Relu6);
        let ar = b.act("ar", &a6, Activation::Relu);
        let ar6 = b.act("ar6", &ar, Activation::Relu6);
        let d = b.conv2d("d", &ar6, Tensor::uniform([3, 3, 3, 3], 4.0, 2), None, c);
        let dr = b.act("dr", &d, Activation::Relu);
        let d6 = b.act("d6", &dr, Activation::Relu6);
        b.output(&d6);
        let g = b.build().unwrap();
        let input = Tensor::uniform([1, 2, 5, 5], 2.0, 3);
        let mut now = g.clone();
        while let Some(next) = FuseActivation.run(&now).unwrap() {
            now = next;
        }
        let kinds: Vec<String> = now.nodes.iter().map(|n| format!("{:?}", n.op)).collect();
        // a (relu6 fused), d (relu fused), relu6 after relu stays.
        assert_eq!(now.nodes.len(), 3, "{kinds:?}");
        assert_eq!(now.nodes[2].op, Op::Act { kind: Activation::Relu6 });
        assert_eq!(
            interp::run(&now, std::slice::from_ref(&input)).unwrap(),
            interp::run(&g, &[input]).unwrap()
        );
    }
}
