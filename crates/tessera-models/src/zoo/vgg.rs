//! A CIFAR-style VGG: 3x3 conv + batch norm + ReLU layers with 2x2 max pooling between stages,
//! global average pooling and one linear classifier; channel counts scaled by a width
//! multiplier.

use burn::module::Module;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;
use serde::{Deserialize, Serialize};
use tessera_ir::{Activation, Graph, Op};

use crate::error::{ModelError, Result};
use crate::export::{Exporter, Masks};
use crate::zoo::{Classifier, ConvBn, check_width, global_avg_pool, scaled};

/// VGG settings. `plan` lists conv widths; `0` is a 2x2 max pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VggConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Classes.
    pub classes: usize,
    /// Width multiplier.
    pub width: f32,
    /// Layer plan (VGG-11-like by default: 64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512).
    pub plan: Vec<usize>,
}

impl Default for VggConfig {
    fn default() -> Self {
        VggConfig {
            in_channels: 3,
            classes: 10,
            width: 1.0,
            plan: vec![64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512],
        }
    }
}

/// The VGG network.
#[derive(Module, Debug)]
pub struct Vgg {
    /// Conv + batch-norm layers in order.
    pub layers: Vec<ConvBn>,
    /// Whether a max pool follows each layer.
    #[module(skip)]
    pub pool_after: Vec<bool>,
    /// The pooling module.
    pub pool: MaxPool2d,
    /// Classifier.
    pub fc: Linear,
}

impl VggConfig {
    /// A randomly initialized model.
    pub fn init(&self, device: &Device) -> Result<Vgg> {
        check_width(self.width)?;
        if self.plan.first().is_none_or(|&c| c == 0) {
            return Err(ModelError::Config {
                field: "plan",
                reason: "must start with a conv width".into(),
            });
        }
        let mut layers = Vec::new();
        let mut pool_after = Vec::new();
        let mut cin = self.in_channels;
        for &c in &self.plan {
            if c == 0 {
                if let Some(last) = pool_after.last_mut() {
                    *last = true;
                }
                continue;
            }
            let cout = scaled(c, self.width);
            layers.push(ConvBn::new(cin, cout, 3, 1, 1, device));
            pool_after.push(false);
            cin = cout;
        }
        Ok(Vgg {
            layers,
            pool_after,
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            fc: LinearConfig::new(cin, self.classes).init(device),
        })
    }
}

impl Classifier for Vgg {
    fn batch_norms_mut(&mut self) -> Vec<&mut burn::nn::BatchNorm> {
        self.layers.iter_mut().map(|l| &mut l.bn).collect()
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = x;
        for (layer, &pool) in self.layers.iter().zip(&self.pool_after) {
            x = relu(layer.forward(x));
            if pool {
                x = self.pool.forward(x);
            }
        }
        self.fc.forward(global_avg_pool(x))
    }

    fn export(&self, input: [usize; 4], masks: &Masks) -> Result<Graph> {
        let mut e = Exporter::new("vgg", "x", &input, masks);
        let mut v = "x".to_string();
        for (i, (layer, &pool)) in self.layers.iter().zip(&self.pool_after).enumerate() {
            let y = layer.export(&mut e, &format!("layers.{i}"), &v)?;
            v = e.act(&format!("relu{i}"), Activation::Relu, &y);
            if pool {
                v = e.max_pool(&format!("pool{i}"), &self.pool, &v)?;
            }
        }
        let g = e.node("gap", Op::GlobalAvgPool, &[&v]);
        let fc = e.linear("fc", &self.fc, &g)?;
        e.finish(&fc)
    }
}
