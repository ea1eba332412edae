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

use burn::module::{Module, Param};
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

    /// Sets every depthwise-separable pair from the dense convolution it stands in for
    /// ([`ConvBn::decouple`]); returns each pair's path and the factorization's relative
    /// error. Models without separable layers return themselves and no pairs.
    fn decouple_separable(self) -> Result<(Self, Vec<(String, f64)>)>
    where
        Self: Sized,
    {
        Ok((self, Vec::new()))
    }
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

    /// The same architecture with the block convolutions `paths` computed
    /// depthwise-separable (see [`ResNetConfig::separable`]); only ResNets have them, other
    /// models accept only an empty list.
    pub fn with_separable(&self, paths: Vec<String>) -> Result<ZooConfig> {
        Ok(match self {
            ZooConfig::Resnet(c) => {
                ZooConfig::Resnet(ResNetConfig { separable: paths, ..c.clone() })
            }
            other if paths.is_empty() => other.clone(),
            other => {
                return Err(ModelError::Config {
                    field: "separable",
                    reason: format!("{} has no separable operator choice", other.name()),
                });
            }
        })
    }

    /// The separable convolutions of the configuration (empty for models without them).
    pub fn separable(&self) -> &[String] {
        match self {
            ZooConfig::Resnet(c) => &c.separable,
            _ => &[],
        }
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
    /// Set: the convolution is computed depthwise-separable instead (the search's
    /// "separable" operator choice). `conv` keeps its weights, unused, so the dense
    /// checkpoint still loads and initializes the pair ([`ConvBn::decouple`]).
    pub separable: Option<SeparableConv>,
}

/// A depthwise-separable stand-in for a convolution: a depthwise convolution (the
/// original's kernel, stride and padding, one group per input channel) then a pointwise
/// 1x1 one, with nothing in between (so the pair is one linear map, the convolution with
/// per-input-channel rank-1 weights; [`tessera_ir::decouple`]).
#[derive(Module, Debug)]
pub struct SeparableConv {
    /// Depthwise `[I, 1, k, k]`.
    pub depthwise: Conv2d,
    /// Pointwise `[O, I, 1, 1]`.
    pub pointwise: Conv2d,
}

impl SeparableConv {
    /// The pair standing in for `conv` (randomly initialized; see [`ConvBn::decouple`]).
    fn like(conv: &Conv2d, device: &Device) -> Self {
        let [o, i_per_group, kh, kw] = conv.weight.dims();
        let i = i_per_group * conv.groups;
        SeparableConv {
            depthwise: Conv2dConfig::new([i, i], [kh, kw])
                .with_stride(conv.stride)
                .with_padding(conv.padding.clone())
                .with_dilation(conv.dilation)
                .with_groups(i)
                .with_bias(false)
                .init(device),
            pointwise: Conv2dConfig::new([i, o], [1, 1])
                .with_bias(conv.bias.is_some())
                .init(device),
        }
    }
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
            separable: None,
        }
    }

    /// Computes the layer depthwise-separable from now on (a randomly initialized pair; see
    /// [`ConvBn::decouple`]). A grouped or 1x1 convolution is refused.
    pub fn make_separable(&mut self, path: &str) -> Result<()> {
        let [_, _, kh, kw] = self.conv.weight.dims();
        if self.conv.groups != 1 || kh * kw < 2 {
            return Err(ModelError::Config {
                field: "separable",
                reason: format!(
                    "`{path}` is a {kh}x{kw} convolution with {} groups; only ungrouped convolutions with a spatial kernel can be separated",
                    self.conv.groups
                ),
            });
        }
        let device = self.conv.weight.device();
        self.separable = Some(SeparableConv::like(&self.conv, &device));
        Ok(())
    }

    /// Sets the depthwise-separable pair from `conv`'s weights by network decoupling (per
    /// input channel the best rank-1 factorization, [`tessera_ir::decouple`]); returns the
    /// relative Frobenius error of that factorization. Without a pair, nothing changes (0).
    pub fn decouple(&mut self, path: &str) -> Result<f64> {
        let Some(sep) = self.separable.as_mut() else { return Ok(0.0) };
        let w = self.conv.weight.val();
        let dims = w.dims().to_vec();
        let values = crate::error::to_vec(path, w)?;
        let d = tessera_ir::decouple(&tessera_ir::Tensor::new(dims, values)).map_err(|e| {
            ModelError::Config { field: "separable", reason: format!("`{path}`: {e}") }
        })?;
        let device = sep.depthwise.weight.device();
        let param = |t: tessera_ir::Tensor| -> Param<Tensor<4>> {
            let dims: [usize; 4] = [t.shape[0], t.shape[1], t.shape[2], t.shape[3]];
            Param::from_tensor(Tensor::<4>::from_data(TensorData::new(t.data, dims), &device))
        };
        sep.depthwise.weight = param(d.depthwise);
        sep.pointwise.weight = param(d.pointwise);
        Ok(d.relative_error)
    }

    /// `bn(conv(x))` (or `bn(pointwise(depthwise(x)))` when separable), on tessera-kernels
    /// where they qualify ([`crate::conv`], [`crate::batch_norm`]).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = match &self.separable {
            Some(s) => crate::conv::forward(&s.pointwise, crate::conv::forward(&s.depthwise, x)),
            None => crate::conv::forward(&self.conv, x),
        };
        crate::batch_norm::forward(&self.bn, y)
    }

    /// Exports the pair at `path` (`path.conv`, `path.bn`; separable:
    /// `path.separable.depthwise`, `path.separable.pointwise`, `path.bn`).
    pub fn export(&self, e: &mut Exporter<'_>, path: &str, x: &str) -> Result<String> {
        let c = match &self.separable {
            Some(s) => {
                let d = e.conv(&format!("{path}.separable.depthwise"), &s.depthwise, x)?;
                e.conv(&format!("{path}.separable.pointwise"), &s.pointwise, &d)?
            }
            None => e.conv(&format!("{path}.conv"), &self.conv, x)?,
        };
        e.batch_norm(&format!("{path}.bn"), &self.bn, &c)
    }
}

/// Global average pooling `[N, C, H, W] -> [N, C]`.
pub(crate) fn global_avg_pool(x: Tensor<4>) -> Tensor<2> {
    let [n, c, _, _] = x.dims();
    x.mean_dim(3).mean_dim(2).reshape([n, c])
}
