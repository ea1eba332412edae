//! CIFAR-style ResNet-20/32/56 (He et al. 2016): a 3x3 stem, three stages of `n` basic blocks
//! (widths w, 2w, 4w; the 2nd and 3rd stages start with stride 2), depth = 6n + 2. Shortcuts
//! that change shape use a 1x1 convolution + batch norm (option B of the paper).
//!
//! `skip_blocks` removes blocks with an identity shortcut (the search's "skip" operator
//! choice): a skipped block keeps its parameters (the same checkpoint loads) but computes
//! `y = x` and is left out of the exported graph. `separable` computes chosen block
//! convolutions depthwise-separable (the "separable" operator choice): the dense weights
//! stay, and loading a dense checkpoint initializes the pair from them
//! ([`Classifier::decouple_separable`]).

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;
use serde::{Deserialize, Serialize};
use tessera_ir::{Activation, Graph, Op};

use crate::error::{ModelError, Result};
use crate::export::{Exporter, Masks};
use crate::zoo::{Classifier, ConvBn, check_width, global_avg_pool, mark_skipped, scaled};

/// ResNet settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResNetConfig {
    /// 20, 32, 56 (any 6n + 2).
    pub depth: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Classes.
    pub classes: usize,
    /// Width multiplier on the base widths 16, 32, 64.
    pub width: f32,
    /// Indices (over all stages, from 0) of identity-shortcut blocks that are skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip_blocks: Vec<usize>,
    /// Paths of the block convolutions computed depthwise-separable (`blocks.3.conv1`; the
    /// search's "separable" operator choice, [`crate::zoo::ConvBn::separable`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub separable: Vec<String>,
}

impl Default for ResNetConfig {
    fn default() -> Self {
        ResNetConfig {
            depth: 20,
            in_channels: 3,
            classes: 10,
            width: 1.0,
            skip_blocks: Vec::new(),
            separable: Vec::new(),
        }
    }
}

/// Two 3x3 conv + BN layers with a shortcut.
#[derive(Module, Debug)]
pub struct BasicBlock {
    /// First conv (carries the stride).
    pub conv1: ConvBn,
    /// Second conv.
    pub conv2: ConvBn,
    /// 1x1 projection when the shape changes.
    pub shortcut: Option<ConvBn>,
    /// Skipped: `y = x` (the input is a ReLU output, so `relu(x + 0) = x`).
    #[module(skip)]
    pub skipped: bool,
}

impl BasicBlock {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        if self.skipped {
            return x;
        }
        let skip = match &self.shortcut {
            Some(s) => s.forward(x.clone()),
            None => x.clone(),
        };
        let y = relu(self.conv1.forward(x));
        relu(self.conv2.forward(y) + skip)
    }

    fn export(&self, e: &mut Exporter<'_>, path: &str, x: &str) -> Result<String> {
        if self.skipped {
            return Ok(x.to_string());
        }
        let a = self.conv1.export(e, &format!("{path}.conv1"), x)?;
        let a = e.act(&format!("{path}.relu1"), Activation::Relu, &a);
        let b = self.conv2.export(e, &format!("{path}.conv2"), &a)?;
        let skip = match &self.shortcut {
            Some(s) => s.export(e, &format!("{path}.shortcut"), x)?,
            None => x.to_string(),
        };
        let sum = e.node(&format!("{path}.add"), Op::Add { activation: None }, &[&b, &skip]);
        Ok(e.act(&format!("{path}.relu2"), Activation::Relu, &sum))
    }
}

/// The ResNet.
#[derive(Module, Debug)]
pub struct ResNet {
    /// 3x3 stem.
    pub stem: ConvBn,
    /// Blocks of all stages in order.
    pub blocks: Vec<BasicBlock>,
    /// Classifier.
    pub fc: Linear,
}

impl ResNetConfig {
    /// A randomly initialized model.
    pub fn init(&self, device: &Device) -> Result<ResNet> {
        check_width(self.width)?;
        if self.depth < 8 || !(self.depth - 2).is_multiple_of(6) {
            return Err(ModelError::Config {
                field: "depth",
                reason: format!("must be 6n + 2 (20, 32, 56, ...), got {}", self.depth),
            });
        }
        let n = (self.depth - 2) / 6;
        let w = [scaled(16, self.width), scaled(32, self.width), scaled(64, self.width)];
        let stem = ConvBn::new(self.in_channels, w[0], 3, 1, 1, device);
        let mut blocks = Vec::new();
        let mut cin = w[0];
        for (stage, &cout) in w.iter().enumerate() {
            for i in 0..n {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let shortcut = (stride != 1 || cin != cout)
                    .then(|| ConvBn::new(cin, cout, 1, stride, 1, device));
                blocks.push(BasicBlock {
                    conv1: ConvBn::new(cin, cout, 3, stride, 1, device),
                    conv2: ConvBn::new(cout, cout, 3, 1, 1, device),
                    shortcut,
                    skipped: false,
                });
                cin = cout;
            }
        }
        let count = blocks.len();
        for path in &self.separable {
            let conv = path
                .strip_prefix("blocks.")
                .and_then(|r| r.split_once('.'))
                .and_then(|(i, which)| Some((i.parse::<usize>().ok()?, which)))
                .and_then(|(i, which)| {
                    let b = blocks.get_mut(i)?;
                    match which {
                        "conv1" => Some(&mut b.conv1),
                        "conv2" => Some(&mut b.conv2),
                        _ => None,
                    }
                })
                .ok_or_else(|| ModelError::Config {
                    field: "separable",
                    reason: format!(
                        "`{path}` is not a block convolution (`blocks.<i>.conv1` or `.conv2`, {count} blocks)"
                    ),
                })?;
            conv.make_separable(path)?;
        }
        mark_skipped(
            &mut blocks,
            &self.skip_blocks,
            |b| b.shortcut.is_none(),
            |b| b.skipped = true,
            "it has a projection shortcut; only identity blocks can be skipped",
        )?;
        Ok(ResNet { stem, blocks, fc: LinearConfig::new(cin, self.classes).init(device) })
    }
}

impl Classifier for ResNet {
    fn batch_norms_mut(&mut self) -> Vec<&mut burn::nn::BatchNorm> {
        let mut out = vec![&mut self.stem.bn];
        for b in &mut self.blocks {
            out.push(&mut b.conv1.bn);
            out.push(&mut b.conv2.bn);
            if let Some(s) = &mut b.shortcut {
                out.push(&mut s.bn);
            }
        }
        out
    }

    fn decouple_separable(mut self) -> Result<(Self, Vec<(String, f64)>)> {
        let mut errors = Vec::new();
        for (i, b) in self.blocks.iter_mut().enumerate() {
            for (name, conv) in [("conv1", &mut b.conv1), ("conv2", &mut b.conv2)] {
                if conv.separable.is_some() {
                    let path = format!("blocks.{i}.{name}");
                    let err = conv.decouple(&path)?;
                    errors.push((path, err));
                }
            }
        }
        Ok((self, errors))
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = relu(self.stem.forward(x));
        for b in &self.blocks {
            x = b.forward(x);
        }
        self.fc.forward(global_avg_pool(x))
    }

    fn export(&self, input: [usize; 4], masks: &Masks) -> Result<Graph> {
        let mut e = Exporter::new("resnet", "x", &input, masks);
        let s = self.stem.export(&mut e, "stem", "x")?;
        let mut v = e.act("stem.relu", Activation::Relu, &s);
        for (i, b) in self.blocks.iter().enumerate() {
            v = b.export(&mut e, &format!("blocks.{i}"), &v)?;
        }
        let g = e.node("gap", Op::GlobalAvgPool, &[&v]);
        let fc = e.linear("fc", &self.fc, &g)?;
        e.finish(&fc)
    }
}
