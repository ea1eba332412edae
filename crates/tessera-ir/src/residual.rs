//! Identity-shortcut residual branches: finding them and removing them.
//!
//! A *residual branch* is the `f` of a block `y = act(x + f(x))`: an `Add` node one of whose
//! operands is a value `x` (the shortcut) and whose other operand is computed by nodes that
//! read nothing but `x`, parameters and each other, and whose values nobody else reads.
//! Removing the branch leaves `y = act(x)` (the add's fused activation, if any, stays as an
//! activation node): the "skip" operator choice of an architecture search, valid exactly
//! where the residual allows it. A block whose shortcut is a projection (a 1x1 convolution
//! on a strided path) has no identity operand and is not a residual branch here.

use std::collections::BTreeSet;

use crate::error::{IrError, Result};
use crate::graph::Graph;
use crate::op::Op;

/// One removable residual branch of a graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResidualBranch {
    /// The `Add` node that closes the block.
    pub add: String,
    /// The shortcut value `x`.
    pub shortcut: String,
    /// The branch's nodes, in graph order.
    pub nodes: Vec<String>,
}

impl Graph {
    /// Every identity-shortcut residual branch, in the order of their `Add` nodes.
    pub fn residual_branches(&self) -> Vec<ResidualBranch> {
        let mut found = Vec::new();
        for (k, n) in self.nodes.iter().enumerate() {
            if !matches!(n.op, Op::Add { .. }) || n.inputs.len() != 2 {
                continue;
            }
            for (out, shortcut) in [(&n.inputs[0], &n.inputs[1]), (&n.inputs[1], &n.inputs[0])] {
                if let Some(nodes) = self.branch_nodes(k, out, shortcut) {
                    found.push(ResidualBranch {
                        add: n.name.clone(),
                        shortcut: shortcut.clone(),
                        nodes: nodes.iter().map(|&i| self.nodes[i].name.clone()).collect(),
                    });
                    break;
                }
            }
        }
        found
    }

    /// The nodes computing `out` from `shortcut` alone, read by nothing outside them but the
    /// add at `add`; `None` when `out` is not such a branch.
    fn branch_nodes(&self, add: usize, out: &str, shortcut: &str) -> Option<BTreeSet<usize>> {
        if out == shortcut {
            return None;
        }
        let mut nodes = BTreeSet::new();
        let mut reads_shortcut = false;
        let mut stack = vec![out.to_string()];
        while let Some(v) = stack.pop() {
            if v == shortcut {
                reads_shortcut = true;
                continue;
            }
            // A graph input other than the shortcut: the branch reads something else.
            let p = self.producer(&v)?;
            if p >= add || !nodes.insert(p) {
                continue;
            }
            stack.extend(self.nodes[p].inputs.iter().cloned());
        }
        let exclusive = nodes.iter().all(|&p| {
            let value = &self.nodes[p].output;
            !self.is_output(value)
                && self.consumers(value).iter().all(|c| *c == add || nodes.contains(c))
        });
        (reads_shortcut && exclusive && !nodes.is_empty()).then_some(nodes)
    }

    /// Removes the residual branch closed by the add node `add`: the add's output becomes its
    /// shortcut (through the add's fused activation, if it has one); parameters only the
    /// branch used are dropped.
    pub fn skip_residual(&mut self, add: &str) -> Result<()> {
        let branch =
            self.residual_branches().into_iter().find(|b| b.add == add).ok_or_else(|| {
                IrError::BadNode {
                    node: add.into(),
                    reason: "not the add of an identity-shortcut residual branch".into(),
                }
            })?;
        let k = self
            .nodes
            .iter()
            .position(|n| n.name == add)
            .ok_or_else(|| IrError::BadNode { node: add.into(), reason: "no such node".into() })?;
        match self.nodes[k].op {
            Op::Add { activation: Some(kind) } => {
                self.nodes[k].op = Op::Act { kind };
                self.nodes[k].inputs = vec![branch.shortcut.clone()];
            }
            _ => {
                let out = self.nodes[k].output.clone();
                self.nodes.remove(k);
                self.rename_uses(&out, &branch.shortcut);
            }
        }
        self.nodes.retain(|n| !branch.nodes.contains(&n.name));
        self.drop_unused_params();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::examples;
    use crate::graph::{Conv2d, GraphBuilder};
    use crate::interp;
    use crate::op::{Activation, Op};
    use crate::passes::Pipeline;
    use crate::tensor::Tensor;

    #[test]
    fn finds_the_identity_branches_of_the_zoo_blocks() {
        let g = examples::resnet_block().unwrap();
        let b = g.residual_branches();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].add, "add");
        assert_eq!(b[0].shortcut, "x");
        assert_eq!(b[0].nodes, ["conv1", "bn1", "relu1", "conv2", "bn2"]);
        let g = examples::mobilenet_block().unwrap();
        let b = g.residual_branches();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].nodes.len(), 8, "{:?}", b[0].nodes);
        // No adds, no branches.
        assert!(examples::lenet5().unwrap().residual_branches().is_empty());
    }

    /// x -> stem -> relu; a = conv(relu) [projection]; branch = conv2(conv1(relu)); add(branch, a).
    fn projection_block() -> crate::Graph {
        let mut b = GraphBuilder::new("projection");
        let x = b.input("x", &[1, 2, 6, 6]);
        let c = Conv2d { padding: 1, ..Default::default() };
        let s = b.conv2d("stem", &x, Tensor::uniform([4, 2, 3, 3], 0.5, 1), None, c);
        let r = b.act("relu", &s, Activation::Relu);
        let p =
            b.conv2d("proj", &r, Tensor::uniform([4, 4, 1, 1], 0.5, 2), None, Conv2d::default());
        let c1 = b.conv2d("c1", &r, Tensor::uniform([4, 4, 3, 3], 0.5, 3), None, c);
        let a = b.node("add", Op::Add { activation: Some(Activation::Relu) }, &[&c1, &p]);
        b.output(&a);
        b.build().unwrap()
    }

    #[test]
    fn a_projection_shortcut_or_a_shared_value_is_not_a_branch() {
        let g = projection_block();
        assert!(g.residual_branches().is_empty());
        let e = g.clone().skip_residual("add").unwrap_err().to_string();
        assert!(e.contains("add") && e.contains("identity-shortcut"), "{e}");
        // A branch value read elsewhere (here: also a graph output) cannot be removed.
        let mut g = examples::resnet_block().unwrap();
        g.outputs.push("relu1".into());
        assert!(g.residual_branches().is_empty());
    }

    #[test]
    fn skipping_computes_the_block_without_its_branch() {
        // ResNet block: relu(x + f(x)) -> relu(x), with f's parameters gone.
        let g = examples::resnet_block().unwrap();
        let x = Tensor::uniform([1, 16, 8, 8], 1.0, 5);
        let mut skipped = g.clone();
        skipped.skip_residual("add").unwrap();
        skipped.validate().unwrap();
        assert!(skipped.params.keys().all(|p| p.starts_with("fc")), "{:?}", skipped.params.keys());
        // Reference: the head alone on relu(x).
        let relu_x = Tensor::new(x.shape.clone(), x.data.iter().map(|v| v.max(0.0)).collect());
        let mut head = g.clone();
        let gap = head.nodes.iter().position(|n| n.name == "gap").unwrap();
        head.nodes.drain(..gap);
        head.nodes[0].inputs = vec!["x".into()];
        head.drop_unused_params();
        assert_eq!(
            interp::run(&skipped, std::slice::from_ref(&x)).unwrap(),
            interp::run(&head, &[relu_x]).unwrap()
        );
        // A fused add keeps its activation as an activation node; the pipeline runs it too.
        let (fused, _) = Pipeline::standard().run(g).unwrap();
        let add = fused.residual_branches()[0].add.clone();
        let mut fused_skipped = fused.clone();
        fused_skipped.skip_residual(&add).unwrap();
        assert!(fused_skipped.nodes.iter().any(|n| n.op == Op::Act { kind: Activation::Relu }));
        assert_eq!(
            interp::run(&fused_skipped, std::slice::from_ref(&x)).unwrap(),
            interp::run(&skipped, std::slice::from_ref(&x)).unwrap()
        );
        // MobileNetV2: x + f(x) -> x.
        let g = examples::mobilenet_block().unwrap();
        let mut s = g.clone();
        s.skip_residual("add").unwrap();
        assert_eq!(s.nodes.len(), 2, "gap and fc remain");
        assert_eq!(s.nodes[0].inputs, ["x"]);
    }
}
