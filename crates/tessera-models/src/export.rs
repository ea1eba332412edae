//! Export of burn modules to the tessera IR.
//!
//! Each zoo model writes its own graph (it knows its structure) through an [`Exporter`], which
//! turns burn layers into IR nodes whose names are the modules' paths, so parameter names are
//! the same on both sides (`layer1.0.conv1.weight`). Linear weights are transposed from burn's
//! `[in, out]` to the IR's `[out, in]`; batch norms export their running statistics; masks
//! and schemes travel with the weights.

use std::collections::BTreeMap;

use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::nn::{BatchNorm, Linear, PaddingConfig2d};
use tessera_ir::{Activation, Graph, GraphBuilder, Op, Tensor as IrTensor};
use tessera_sparsity::{Mask, Scheme};

use crate::error::{ModelError, Result, to_vec};

/// Pruning state of a model: per weight path, its scheme and mask (GEMM view: `[out, in]` for
/// linear layers, OIHW for convolutions).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Masks {
    map: BTreeMap<String, (Scheme, Mask)>,
}

impl Masks {
    /// No pruning.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the mask of weight `path`.
    pub fn insert(&mut self, path: impl Into<String>, scheme: Scheme, mask: Mask) {
        self.map.insert(path.into(), (scheme, mask));
    }

    /// The scheme and mask of weight `path`.
    pub fn get(&self, path: &str) -> Option<&(Scheme, Mask)> {
        self.map.get(path)
    }

    /// Every masked weight.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &(Scheme, Mask))> {
        self.map.iter()
    }

    /// How many weights are masked.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no weight is masked.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Builds an IR graph from burn layers.
#[derive(Debug)]
pub struct Exporter<'a> {
    b: GraphBuilder,
    masks: &'a Masks,
}

fn symmetric_padding(
    path: &str,
    p: &PaddingConfig2d,
    kernel: [usize; 2],
    dilation: [usize; 2],
) -> Result<usize> {
    match *p {
        PaddingConfig2d::Valid => Ok(0),
        PaddingConfig2d::Explicit(t, l, b, r) if t == l && l == b && b == r => Ok(t),
        PaddingConfig2d::Same
            if kernel[0] == kernel[1] && kernel[0] % 2 == 1 && dilation[0] == dilation[1] =>
        {
            Ok(dilation[0] * (kernel[0] - 1) / 2)
        }
        ref other => Err(ModelError::Config {
            field: "padding",
            reason: format!("layer `{path}`: {other:?} has no symmetric IR form"),
        }),
    }
}

impl<'a> Exporter<'a> {
    /// A graph named `name` with one input of `shape` (NCHW).
    pub fn new(name: &str, input: &str, shape: &[usize], masks: &'a Masks) -> Self {
        let mut b = GraphBuilder::new(name);
        b.input(input, shape);
        Exporter { b, masks }
    }

    fn weight(&mut self, path: &str, shape: Vec<usize>, data: Vec<f32>) -> Result<String> {
        let name = format!("{path}.weight");
        self.b.param(&name, IrTensor::new(shape, data));
        if let Some((scheme, mask)) = self.masks.get(&name) {
            self.b.set_sparsity(&name, scheme.clone(), mask.clone())?;
        }
        Ok(name)
    }

    /// A 2-D convolution module at `path`.
    pub fn conv(&mut self, path: &str, conv: &Conv2d, x: &str) -> Result<String> {
        let w = conv.weight.val();
        let shape = w.dims().to_vec();
        let weight = self.weight(path, shape, to_vec(path, w)?)?;
        let bias = match &conv.bias {
            Some(b) => {
                let v = b.val();
                let n = format!("{path}.bias");
                self.b.param(&n, IrTensor::new(v.dims().to_vec(), to_vec(path, v)?));
                Some(n)
            }
            None => None,
        };
        let pad = symmetric_padding(path, &conv.padding, conv.kernel_size, conv.dilation)?;
        if conv.stride[0] != conv.stride[1] || conv.dilation[0] != conv.dilation[1] {
            return Err(ModelError::Config {
                field: "stride",
                reason: format!("layer `{path}`: unequal strides or dilations"),
            });
        }
        let op = Op::Conv {
            weight,
            bias,
            stride: conv.stride.to_vec(),
            padding: vec![pad; 2],
            dilation: conv.dilation.to_vec(),
            groups: conv.groups,
            activation: None,
        };
        Ok(self.b.node(path, op, &[x]))
    }

    /// A batch norm at `path` (inference form: running statistics).
    pub fn batch_norm(&mut self, path: &str, bn: &BatchNorm, x: &str) -> Result<String> {
        let mut names = Vec::new();
        for (field, t) in [
            ("gamma", bn.gamma.val()),
            ("beta", bn.beta.val()),
            ("mean", bn.running_mean.value()),
            ("var", bn.running_var.value()),
        ] {
            let n = format!("{path}.{field}");
            self.b.param(&n, IrTensor::new(t.dims().to_vec(), to_vec(&n, t)?));
            names.push(n);
        }
        let op = Op::BatchNorm {
            gamma: names[0].clone(),
            beta: names[1].clone(),
            mean: names[2].clone(),
            var: names[3].clone(),
            eps: bn.epsilon as f32,
        };
        Ok(self.b.node(path, op, &[x]))
    }

    /// A linear layer at `path` (weight transposed to `[out, in]`).
    pub fn linear(&mut self, path: &str, lin: &Linear, x: &str) -> Result<String> {
        let w = lin.weight.val();
        let [inp, out] = w.dims();
        let weight = self.weight(path, vec![out, inp], to_vec(path, w.transpose())?)?;
        let bias = match &lin.bias {
            Some(b) => {
                let n = format!("{path}.bias");
                self.b.param(&n, IrTensor::new(vec![out], to_vec(&n, b.val())?));
                Some(n)
            }
            None => None,
        };
        Ok(self.b.node(path, Op::Linear { weight, bias, activation: None }, &[x]))
    }

    /// An activation node.
    pub fn act(&mut self, name: &str, kind: Activation, x: &str) -> String {
        self.b.node(name, Op::Act { kind }, &[x])
    }

    /// A max-pool module.
    pub fn max_pool(&mut self, name: &str, pool: &MaxPool2d, x: &str) -> Result<String> {
        let pad = symmetric_padding(name, &pool.padding, pool.kernel_size, pool.dilation)?;
        let op = Op::MaxPool {
            kernel: pool.kernel_size.to_vec(),
            stride: pool.stride.to_vec(),
            padding: vec![pad; 2],
        };
        Ok(self.b.node(name, op, &[x]))
    }

    /// Any other node.
    pub fn node(&mut self, name: &str, op: Op, inputs: &[&str]) -> String {
        self.b.node(name, op, inputs)
    }

    /// Finishes the graph with `output` as its result.
    pub fn finish(mut self, output: &str) -> Result<Graph> {
        self.b.output(output);
        Ok(self.b.build()?)
    }
}
