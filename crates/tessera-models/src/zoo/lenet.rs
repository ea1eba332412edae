//! LeNet-5 with ReLU and max pooling, the seeds' MNIST model, in its two common forms: LeCun
//! et al. 1998 (two 5x5 convolutions with 6 and 16 filters, fully connected 120, 84, classes;
//! 61.7K weights) and Caffe's `lenet_train_test.prototxt` (20 and 50 filters, unpadded, fully
//! connected 500, classes; 430.5K weights), the one ADMM-NN's "71.2x on LeNet-5" was measured on.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use serde::{Deserialize, Serialize};
use tessera_ir::{Activation, Graph, Op};

use crate::error::{ModelError, Result};
use crate::export::{Exporter, Masks};
use crate::zoo::Classifier;

/// Which LeNet-5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lenet5Variant {
    /// LeCun et al. 1998: conv 6 (padded by 2) and 16, fully connected 120 and 84.
    #[default]
    Classic,
    /// Caffe's LeNet: conv 20 and 50 (unpadded), fully connected 500; the pruning papers'
    /// LeNet-5 (430.5K weights on MNIST).
    Caffe,
}

impl Lenet5Variant {
    /// (conv1 padding, conv1 filters, conv2 filters, hidden fully connected widths).
    fn shape(self) -> (usize, usize, usize, &'static [usize]) {
        match self {
            Lenet5Variant::Classic => (2, 6, 16, &[120, 84]),
            Lenet5Variant::Caffe => (0, 20, 50, &[500]),
        }
    }
}

/// LeNet-5 settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lenet5Config {
    /// Input channels.
    pub in_channels: usize,
    /// Input height and width (28 gives the classic 5x5x16 or Caffe's 4x4x50 into `fc1`).
    pub image: usize,
    /// Classes.
    pub classes: usize,
    /// Layer widths (absent in older configs: the classic LeNet-5).
    #[serde(default)]
    pub variant: Lenet5Variant,
}

impl Default for Lenet5Config {
    fn default() -> Self {
        Lenet5Config { in_channels: 1, image: 28, classes: 10, variant: Lenet5Variant::Classic }
    }
}

impl Lenet5Config {
    /// Caffe's LeNet-5 (20-50-500) for `image`-sized single-channel inputs and 10 classes.
    pub fn caffe() -> Self {
        Lenet5Config { variant: Lenet5Variant::Caffe, ..Default::default() }
    }
}

/// LeNet-5.
#[derive(Module, Debug)]
pub struct Lenet5 {
    /// 5x5, 6 filters padded by 2 (Caffe: 20 filters, unpadded).
    pub conv1: Conv2d,
    /// 5x5, 16 filters (Caffe: 50).
    pub conv2: Conv2d,
    /// 2x2 max pooling.
    pub pool: MaxPool2d,
    /// First fully connected layer (120 wide; Caffe: 500).
    pub fc1: Linear,
    /// Second fully connected layer (84 wide; Caffe: the classifier).
    pub fc2: Linear,
    /// The classic model's classifier; absent in Caffe's.
    pub fc3: Option<Linear>,
}

impl Lenet5Config {
    /// Side of the feature map entering `fc1`.
    fn final_side(&self) -> Result<usize> {
        let (pad, ..) = self.variant.shape();
        // conv1 (5x5, padded), pool, conv2 (5x5), pool.
        let after_pool1 = (self.image + 2 * pad).saturating_sub(4) / 2;
        if after_pool1 < 6 {
            return Err(ModelError::Config {
                field: "image",
                reason: format!(
                    "LeNet-5 ({:?}) needs images of at least {} pixels, got {}",
                    self.variant,
                    16 - 2 * pad,
                    self.image
                ),
            });
        }
        Ok((after_pool1 - 4) / 2)
    }

    /// A randomly initialized model (burn's default init, seeded by the device).
    pub fn init(&self, device: &Device) -> Result<Lenet5> {
        let side = self.final_side()?;
        if self.in_channels == 0 || self.classes == 0 {
            return Err(ModelError::Config {
                field: "in_channels/classes",
                reason: "must be non-zero".into(),
            });
        }
        let (pad, c1, c2, hidden) = self.variant.shape();
        let (fc2, fc3) = match hidden {
            [h1, h2] => (
                LinearConfig::new(*h1, *h2).init(device),
                Some(LinearConfig::new(*h2, self.classes).init(device)),
            ),
            _ => (LinearConfig::new(hidden[0], self.classes).init(device), None),
        };
        Ok(Lenet5 {
            conv1: Conv2dConfig::new([self.in_channels, c1], [5, 5])
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                .init(device),
            conv2: Conv2dConfig::new([c1, c2], [5, 5]).init(device),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            fc1: LinearConfig::new(c2 * side * side, hidden[0]).init(device),
            fc2,
            fc3,
        })
    }
}

impl Classifier for Lenet5 {
    fn batch_norms_mut(&mut self) -> Vec<&mut burn::nn::BatchNorm> {
        Vec::new()
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.pool.forward(relu(crate::conv::forward(&self.conv1, x)));
        let x = self.pool.forward(relu(crate::conv::forward(&self.conv2, x)));
        let x = x.flatten::<2>(1, 3);
        let x = relu(self.fc1.forward(x));
        match &self.fc3 {
            Some(fc3) => fc3.forward(relu(self.fc2.forward(x))),
            None => self.fc2.forward(x),
        }
    }

    fn export(&self, input: [usize; 4], masks: &Masks) -> Result<Graph> {
        let mut e = Exporter::new("lenet5", "x", &input, masks);
        let c1 = e.conv("conv1", &self.conv1, "x")?;
        let r1 = e.act("relu1", Activation::Relu, &c1);
        let p1 = e.max_pool("pool1", &self.pool, &r1)?;
        let c2 = e.conv("conv2", &self.conv2, &p1)?;
        let r2 = e.act("relu2", Activation::Relu, &c2);
        let p2 = e.max_pool("pool2", &self.pool, &r2)?;
        let f = e.node("flatten", Op::Flatten { start: 1 }, &[&p2]);
        let f1 = e.linear("fc1", &self.fc1, &f)?;
        let r3 = e.act("relu3", Activation::Relu, &f1);
        let f2 = e.linear("fc2", &self.fc2, &r3)?;
        match &self.fc3 {
            Some(fc3) => {
                let r4 = e.act("relu4", Activation::Relu, &f2);
                let f3 = e.linear("fc3", fc3, &r4)?;
                e.finish(&f3)
            }
            None => e.finish(&f2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_without_a_variant_are_the_classic_model() {
        let old: Lenet5Config =
            serde_json::from_str(r#"{"in_channels":1,"image":28,"classes":10}"#).unwrap();
        assert_eq!(old, Lenet5Config::default());
        let caffe: Lenet5Config =
            serde_json::from_str(r#"{"in_channels":1,"image":28,"classes":10,"variant":"caffe"}"#)
                .unwrap();
        assert_eq!(caffe, Lenet5Config::caffe());
    }
}
