//! The model zoo: LeNet-5, a CIFAR-style VGG, ResNet-20/32/56 and MobileNetV2, each a burn
//! `#[derive(Module)]` with a serde config taking input channels, image size and classes.
//!
//! Every model implements [`Classifier`]: `forward` for training and evaluation, `export` to
//! the tessera IR (with masks). Layers share small building blocks ([`ConvBn`]).

mod lenet;
mod mobilenet;
mod resnet;
mod vgg;

pub use lenet::{Lenet5, Lenet5Config, Lenet5Variant};
pub use mobilenet::{MobileNetV2, MobileNetV2Config};
pub use resnet::{ResNet, ResNetConfig};
pub use vgg::{Vgg, VggConfig};

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use tessera_ir::Graph;

use crate::error::{ModelError, Result};
use crate::export::{Exporter, Masks};

/// An image classifier of the zoo.
pub trait Classifier: Module {
    /// Logits `[N, classes]` for images `[N, C, H, W]`.
    fn forward(&self, x: Tensor<4>) -> Tensor<2>;

    /// The model as an IR graph for inputs of `input` shape (NCHW), with `masks` attached.
    fn export(&self, input: [usize; 4], masks: &Masks) -> Result<Graph>;

    /// Every batch norm of the model, in forward order (for
    /// [`recalibrate_batch_norm`](crate::train::recalibrate_batch_norm)); empty for a model
    /// without batch norm.
    fn batch_norms_mut(&mut self) -> Vec<&mut BatchNorm>;
}

/// Marks blocks `skip` of `blocks` as skipped (`set`), refusing an index out of range or a
/// block `can_skip` rejects (`why` says what a skippable block is).
pub(crate) fn mark_skipped<B>(
    blocks: &mut [B],
    skip: &[usize],
    can_skip: impl Fn(&B) -> bool,
    set: impl Fn(&mut B),
    why: &str,
) -> Result<()> {
    let count = blocks.len();
    for &i in skip {
        let b = blocks.get_mut(i).ok_or_else(|| ModelError::Config {
            field: "skip_blocks",
            reason: format!("block {i} does not exist ({count} blocks)"),
        })?;
        if !can_skip(b) {
            return Err(ModelError::Config {
                field: "skip_blocks",
                reason: format!("block {i} cannot be skipped: {why}"),
            });
        }
        set(b);
    }
    Ok(())
}

/// Any zoo model's configuration (what experiments and checkpoints record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "snake_case")]
pub enum ZooConfig {
    /// LeNet-5.
    Lenet5(Lenet5Config),
    /// CIFAR-style VGG.
    Vgg(VggConfig),
    /// CIFAR-style ResNet.
    Resnet(ResNetConfig),
    /// MobileNetV2.
    MobileNetV2(MobileNetV2Config),
}

/// Something to do with a freshly built zoo model of any type (Rust has no generic
/// closures): [`ZooConfig::build`] initializes the model and hands it to [`WithModel::run`].
pub trait WithModel {
    /// What the action returns.
    type Output;
    /// The action, generic over the model type.
    fn run<M: Classifier>(self, model: M) -> Self::Output;
}

impl ZooConfig {
    /// Short name (`lenet5`, `vgg`, `resnet20`, `mobilenet_v2`).
    pub fn name(&self) -> String {
        match self {
            ZooConfig::Lenet5(_) => "lenet5".into(),
            ZooConfig::Vgg(_) => "vgg".into(),
            ZooConfig::Resnet(c) => format!("resnet{}", c.depth),
            ZooConfig::MobileNetV2(_) => "mobilenet_v2".into(),
        }
    }

    /// The same architecture with the residual blocks `blocks` skipped (see
    /// [`ResNetConfig::skip_blocks`], [`MobileNetV2Config::skip_blocks`]); the parameters are
    /// unchanged, so the same weights load. Models without residual blocks accept only an
    /// empty list.
    pub fn with_skip_blocks(&self, blocks: Vec<usize>) -> Result<ZooConfig> {
        Ok(match self {
            ZooConfig::Resnet(c) => {
                ZooConfig::Resnet(ResNetConfig { skip_blocks: blocks, ..c.clone() })
            }
            ZooConfig::MobileNetV2(c) => {
                ZooConfig::MobileNetV2(MobileNetV2Config { skip_blocks: blocks, ..c.clone() })
            }
            other if blocks.is_empty() => other.clone(),
            other => {
                return Err(ModelError::Config {
                    field: "skip_blocks",
                    reason: format!("{} has no residual blocks to skip", other.name()),
                });
            }
        })
    }

    /// Initializes the model on `device` from `seed` (see [`crate::with_seed`]) and runs
    /// `action` on it.
    pub fn build<A: WithModel>(&self, device: &Device, seed: u64, action: A) -> Result<A::Output> {
        Ok(match self {
            ZooConfig::Lenet5(c) => action.run(crate::with_seed(device, seed, || c.init(device))?),
            ZooConfig::Vgg(c) => action.run(crate::with_seed(device, seed, || c.init(device))?),
            ZooConfig::Resnet(c) => action.run(crate::with_seed(device, seed, || c.init(device))?),
            ZooConfig::MobileNetV2(c) => {
                action.run(crate::with_seed(device, seed, || c.init(device))?)
            }
        })
    }
}

/// Scales a channel count by a width multiplier (at least 1 channel, rounded to nearest).
pub(crate) fn scaled(channels: usize, width: f32) -> usize {
    ((channels as f32 * width).round() as usize).max(1)
}

pub(crate) fn check_width(width: f32) -> Result<()> {
    if width.is_finite() && width > 0.0 {
        Ok(())
    } else {
        Err(ModelError::Config { field: "width", reason: format!("must be positive, got {width}") })
    }
}

/// A convolution followed by batch norm (no bias on the conv).
#[derive(Module, Debug)]
pub struct ConvBn {
    /// The convolution.
    pub conv: Conv2d,
    /// Its batch norm.
    pub bn: BatchNorm,
}

impl ConvBn {
    /// A `k x k` convolution `cin -> cout` with the given stride and groups, "same" padding.
    pub fn new(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        groups: usize,
        device: &Device,
    ) -> Self {
        let p = k / 2;
        ConvBn {
            conv: Conv2dConfig::new([cin, cout], [k, k])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                .with_groups(groups)
                .with_bias(false)
                .init(device),
            bn: BatchNormConfig::new(cout).init(device),
        }
    }

    /// `bn(conv(x))`, on tessera-kernels where they qualify ([`crate::conv`],
    /// [`crate::batch_norm`]).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        crate::batch_norm::forward(&self.bn, crate::conv::forward(&self.conv, x))
    }

    /// Exports the pair at `path` (`path.conv`, `path.bn`).
    pub fn export(&self, e: &mut Exporter<'_>, path: &str, x: &str) -> Result<String> {
        let c = e.conv(&format!("{path}.conv"), &self.conv, x)?;
        e.batch_norm(&format!("{path}.bn"), &self.bn, &c)
    }
}

/// Global average pooling `[N, C, H, W] -> [N, C]`.
pub(crate) fn global_avg_pool(x: Tensor<4>) -> Tensor<2> {
    let [n, c, _, _] = x.dims();
    x.mean_dim(3).mean_dim(2).reshape([n, c])
}
