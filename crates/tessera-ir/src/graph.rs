//! The graph: inputs, nodes in topological order, outputs and named parameters; validation
//! with shape inference; and a builder for writing graphs by hand.
//!
//! Every node produces exactly one value, named by the node's `output`; values are read by
//! name. Validation checks that every read value exists earlier (which also rules out
//! cycles), that names are unique, that parameters exist with consistent data and masks, and
//! infers every value's shape, naming the node at the first problem.

use std::collections::{BTreeMap, HashMap, HashSet};

use tessera_sparsity::{Layer, LayerGeometry, Mask, Scheme, Target};

use crate::error::{IrError, Result};
use crate::op::{Activation, Op};
use crate::tensor::{Param, Sparsity, Tensor};

/// One operation in the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Unique name (also used in error messages and by passes).
    pub name: String,
    /// The operation.
    pub op: Op,
    /// Values read, in the op's order.
    pub inputs: Vec<String>,
    /// Value produced.
    pub output: String,
}

/// A graph input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// Value name.
    pub name: String,
    /// Shape, batch dimension first.
    pub shape: Vec<usize>,
}

/// An inference graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    /// Model name.
    pub name: String,
    /// Inputs.
    pub inputs: Vec<Input>,
    /// Nodes, each reading only values produced before it.
    pub nodes: Vec<Node>,
    /// Values returned.
    pub outputs: Vec<String>,
    /// Parameters by name.
    pub params: BTreeMap<String, Param>,
}

/// Shapes of every value of a graph.
pub type Shapes = HashMap<String, Vec<usize>>;

impl Graph {
    /// Validates the graph and infers every value's shape for the declared input shapes.
    pub fn validate(&self) -> Result<Shapes> {
        let inputs: Vec<Vec<usize>> = self.inputs.iter().map(|i| i.shape.clone()).collect();
        self.infer_shapes(&inputs)
    }

    /// Validates the graph for the given input shapes (batch sizes may differ from the
    /// declared ones) and returns every value's shape.
    pub fn infer_shapes(&self, input_shapes: &[Vec<usize>]) -> Result<Shapes> {
        for (name, p) in &self.params {
            if !p.tensor.is_consistent() {
                return Err(IrError::BadParam {
                    param: name.clone(),
                    reason: format!(
                        "shape {:?} needs {} values, found {}",
                        p.tensor.shape,
                        p.tensor.shape.iter().product::<usize>(),
                        p.tensor.len()
                    ),
                });
            }
            if let Some(s) = &p.sparsity
                && s.mask.len() != p.tensor.len()
            {
                return Err(IrError::BadParam {
                    param: name.clone(),
                    reason: format!(
                        "mask of {} positions for {} weights",
                        s.mask.len(),
                        p.tensor.len()
                    ),
                });
            }
        }
        if input_shapes.len() != self.inputs.len() {
            return Err(IrError::BadInput {
                input: self.inputs.first().map(|i| i.name.clone()).unwrap_or_default(),
                reason: format!(
                    "graph has {} inputs, {} shapes given",
                    self.inputs.len(),
                    input_shapes.len()
                ),
            });
        }
        let mut shapes: Shapes = HashMap::new();
        for (input, shape) in self.inputs.iter().zip(input_shapes) {
            if shapes.insert(input.name.clone(), shape.clone()).is_some() {
                return Err(IrError::DuplicateValue { name: input.name.clone() });
            }
        }
        let mut names = HashSet::new();
        for node in &self.nodes {
            if !names.insert(node.name.as_str()) {
                return Err(IrError::BadNode {
                    node: node.name.clone(),
                    reason: "duplicate node name".into(),
                });
            }
            let mut ins = Vec::with_capacity(node.inputs.len());
            for i in &node.inputs {
                let s = shapes.get(i).ok_or_else(|| IrError::DanglingInput {
                    node: node.name.clone(),
                    input: i.clone(),
                })?;
                ins.push(s.as_slice());
            }
            let arity = node.op.arity();
            if (arity == usize::MAX && ins.is_empty())
                || (arity != usize::MAX && ins.len() != arity)
            {
                return Err(IrError::BadNode {
                    node: node.name.clone(),
                    reason: format!(
                        "`{}` takes {} input(s), got {}",
                        node.op.name(),
                        if arity == usize::MAX {
                            "1 or more".to_string()
                        } else {
                            arity.to_string()
                        },
                        ins.len()
                    ),
                });
            }
            for p in node.op.params() {
                if !self.params.contains_key(p) {
                    return Err(IrError::MissingParam {
                        node: node.name.clone(),
                        param: p.to_string(),
                    });
                }
            }
            let out = crate::shape::infer(node, &ins, &self.params)?;
            if shapes.insert(node.output.clone(), out).is_some() {
                return Err(IrError::DuplicateValue { name: node.output.clone() });
            }
        }
        for o in &self.outputs {
            if !shapes.contains_key(o) {
                return Err(IrError::DanglingOutput { name: o.clone() });
            }
        }
        Ok(shapes)
    }

    /// The node producing `value`, if any.
    pub fn producer(&self, value: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.output == value)
    }

    /// Indices of the nodes reading `value`.
    pub fn consumers(&self, value: &str) -> Vec<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.inputs.iter().any(|i| i == value))
            .map(|(k, _)| k)
            .collect()
    }

    /// Whether `value` is a graph output.
    pub fn is_output(&self, value: &str) -> bool {
        self.outputs.iter().any(|o| o == value)
    }

    /// Replaces every read of `from` (by nodes and graph outputs) with `to`.
    pub fn rename_uses(&mut self, from: &str, to: &str) {
        for n in &mut self.nodes {
            for i in &mut n.inputs {
                if i == from {
                    *i = to.to_string();
                }
            }
        }
        for o in &mut self.outputs {
            if o == from {
                *o = to.to_string();
            }
        }
    }

    /// Removes parameters no node reads.
    pub fn drop_unused_params(&mut self) {
        let used: HashSet<String> =
            self.nodes.iter().flat_map(|n| n.op.params().into_iter().map(String::from)).collect();
        self.params.retain(|k, _| used.contains(k));
    }

    /// A parameter by name.
    pub fn param(&self, name: &str) -> Result<&Param> {
        self.params
            .get(name)
            .ok_or_else(|| IrError::MissingParam { node: String::new(), param: name.to_string() })
    }

    /// The tessera-sparsity view of a conv, linear or RNN weight: the layer geometry the
    /// schemes are defined on (`output_positions` from `shapes`).
    pub fn weight_layer(&self, node: &Node, weight: &str, shapes: &Shapes) -> Option<Layer> {
        let p = self.params.get(weight)?;
        let s = &p.tensor.shape;
        let out_shape = shapes.get(&node.output)?;
        let (geometry, positions) = match &node.op {
            Op::Conv { groups, .. } if s.len() == 4 => (
                LayerGeometry::Conv2d {
                    out_channels: s[0],
                    in_channels: s[1] * groups,
                    kh: s[2],
                    kw: s[3],
                    groups: *groups,
                },
                out_shape[2..].iter().product::<usize>(),
            ),
            Op::Conv { .. } if s.len() == 5 => (
                LayerGeometry::Conv3d {
                    out_channels: s[0],
                    in_channels: s[1],
                    kt: s[2],
                    kh: s[3],
                    kw: s[4],
                },
                out_shape[2..].iter().product::<usize>(),
            ),
            Op::Linear { .. } => (
                LayerGeometry::Linear { out_features: s[0], in_features: s[1] },
                out_shape[1..out_shape.len() - 1].iter().product::<usize>().max(1),
            ),
            // A recurrent weight runs once per time step.
            Op::Gru { .. } | Op::Lstm { .. } => (
                LayerGeometry::Linear { out_features: s[0], in_features: s[1] },
                *shapes.get(&node.inputs[0])?.get(1)?,
            ),
            _ => return None,
        };
        Layer::new(format!("{}:{weight}", node.name), geometry)
            .ok()
            .map(|l| l.with_output_positions(positions as u64))
    }

    /// Prunes weight `weight` (read by `node`) with `scheme` at `target`, storing the projection
    /// and its mask. Tessera-sparsity decides what the scheme means.
    pub fn prune(
        &mut self,
        node: &str,
        weight: &str,
        scheme: &Scheme,
        target: Target,
    ) -> Result<()> {
        let shapes = self.validate()?;
        let n = self
            .nodes
            .iter()
            .find(|n| n.name == node)
            .ok_or_else(|| IrError::BadNode { node: node.into(), reason: "no such node".into() })?;
        let layer = self.weight_layer(n, weight, &shapes).ok_or_else(|| IrError::BadNode {
            node: node.into(),
            reason: format!("`{weight}` is not a prunable weight of this node"),
        })?;
        let p = self
            .params
            .get_mut(weight)
            .ok_or_else(|| IrError::MissingParam { node: node.into(), param: weight.into() })?;
        let proj =
            scheme.project_with(&layer, &p.tensor.data, target, tessera_sparsity::Tiling::Pad)?;
        p.tensor.data = proj.values;
        p.sparsity = Some(Sparsity { scheme: scheme.clone(), mask: proj.mask });
        Ok(())
    }
}

/// Builds graphs by hand; every method returns the name of the value it produces.
#[derive(Debug, Clone)]
pub struct GraphBuilder {
    g: Graph,
}

/// Attributes of a 2-D convolution for [`GraphBuilder::conv2d`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2d {
    /// Stride (both dimensions).
    pub stride: usize,
    /// Padding (both dimensions).
    pub padding: usize,
    /// Dilation (both dimensions).
    pub dilation: usize,
    /// Channel groups.
    pub groups: usize,
}

impl Default for Conv2d {
    fn default() -> Self {
        Conv2d { stride: 1, padding: 0, dilation: 1, groups: 1 }
    }
}

impl GraphBuilder {
    /// An empty graph.
    pub fn new(name: impl Into<String>) -> Self {
        GraphBuilder {
            g: Graph {
                name: name.into(),
                inputs: Vec::new(),
                nodes: Vec::new(),
                outputs: Vec::new(),
                params: BTreeMap::new(),
            },
        }
    }

    /// Declares an input.
    pub fn input(&mut self, name: &str, shape: &[usize]) -> String {
        self.g.inputs.push(Input { name: name.into(), shape: shape.to_vec() });
        name.to_string()
    }

    /// Adds a parameter.
    pub fn param(&mut self, name: &str, tensor: Tensor) -> String {
        self.g.params.insert(name.into(), Param::dense(tensor));
        name.to_string()
    }

    /// Adds a node whose output is named after it.
    pub fn node(&mut self, name: &str, op: Op, inputs: &[&str]) -> String {
        self.g.nodes.push(Node {
            name: name.into(),
            op,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            output: name.into(),
        });
        name.to_string()
    }

    /// A 2-D convolution with weight `[O, I/g, kh, kw]` and optional bias.
    pub fn conv2d(
        &mut self,
        name: &str,
        x: &str,
        weight: Tensor,
        bias: Option<Tensor>,
        a: Conv2d,
    ) -> String {
        let w = self.param(&format!("{name}.weight"), weight);
        let b = bias.map(|b| self.param(&format!("{name}.bias"), b));
        let op = Op::Conv {
            weight: w,
            bias: b,
            stride: vec![a.stride; 2],
            padding: vec![a.padding; 2],
            dilation: vec![a.dilation; 2],
            groups: a.groups,
            activation: None,
        };
        self.node(name, op, &[x])
    }

    /// A 3-D convolution (stride and padding equal in every dimension).
    pub fn conv3d(
        &mut self,
        name: &str,
        x: &str,
        weight: Tensor,
        bias: Option<Tensor>,
        stride: usize,
        padding: usize,
    ) -> String {
        let w = self.param(&format!("{name}.weight"), weight);
        let b = bias.map(|b| self.param(&format!("{name}.bias"), b));
        let op = Op::Conv {
            weight: w,
            bias: b,
            stride: vec![stride; 3],
            padding: vec![padding; 3],
            dilation: vec![1; 3],
            groups: 1,
            activation: None,
        };
        self.node(name, op, &[x])
    }

    /// A linear layer with weight `[out, in]`.
    pub fn linear(&mut self, name: &str, x: &str, weight: Tensor, bias: Option<Tensor>) -> String {
        let w = self.param(&format!("{name}.weight"), weight);
        let b = bias.map(|b| self.param(&format!("{name}.bias"), b));
        self.node(name, Op::Linear { weight: w, bias: b, activation: None }, &[x])
    }

    /// Batch normalization over channels with the given statistics.
    pub fn batch_norm(
        &mut self,
        name: &str,
        x: &str,
        gamma: Tensor,
        beta: Tensor,
        mean: Tensor,
        var: Tensor,
    ) -> String {
        let op = Op::BatchNorm {
            gamma: self.param(&format!("{name}.gamma"), gamma),
            beta: self.param(&format!("{name}.beta"), beta),
            mean: self.param(&format!("{name}.mean"), mean),
            var: self.param(&format!("{name}.var"), var),
            eps: 1e-5,
        };
        self.node(name, op, &[x])
    }

    /// An activation.
    pub fn act(&mut self, name: &str, x: &str, kind: Activation) -> String {
        self.node(name, Op::Act { kind }, &[x])
    }

    /// 2-D max pooling with a square window.
    pub fn max_pool2d(
        &mut self,
        name: &str,
        x: &str,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> String {
        self.node(
            name,
            Op::MaxPool {
                kernel: vec![kernel; 2],
                stride: vec![stride; 2],
                padding: vec![padding; 2],
            },
            &[x],
        )
    }

    /// Marks `value` as a graph output.
    pub fn output(&mut self, value: &str) {
        self.g.outputs.push(value.to_string());
    }

    /// Sets a parameter's sparsity annotation (its values outside the mask are zeroed).
    pub fn set_sparsity(&mut self, param: &str, scheme: Scheme, mask: Mask) -> Result<()> {
        let p = self
            .g
            .params
            .get_mut(param)
            .ok_or_else(|| IrError::MissingParam { node: String::new(), param: param.into() })?;
        *p = Param::pruned(p.tensor.clone(), scheme, mask);
        Ok(())
    }

    /// The graph, validated.
    pub fn build(self) -> Result<Graph> {
        self.g.validate()?;
        Ok(self.g)
    }
}
