//! LeNet-5 (LeCun et al. 1998) with ReLU and max pooling, the seeds' MNIST model: two 5x5
//! convolutions (6 and 16 filters) and three fully connected layers (120, 84, classes).

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

/// LeNet-5 settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lenet5Config {
    /// Input channels.
    pub in_channels: usize,
    /// Input height and width (the first conv pads by 2, so 28 gives the classic 5x5x16).
    pub image: usize,
    /// Classes.
    pub classes: usize,
}

impl Default for Lenet5Config {
    fn default() -> Self {
        Lenet5Config { in_channels: 1, image: 28, classes: 10 }
    }
}

/// LeNet-5.
#[derive(Module, Debug)]
pub struct Lenet5 {
    /// 5x5, 6 filters, padding 2.
    pub conv1: Conv2d,
    /// 5x5, 16 filters.
    pub conv2: Conv2d,
    /// 2x2 max pooling.
    pub pool: MaxPool2d,
    /// Fully connected layers.
    pub fc1: Linear,
    /// Second fully connected layer.
    pub fc2: Linear,
    /// Classifier.
    pub fc3: Linear,
}

impl Lenet5Config {
    /// Side of the feature map entering `fc1`.
    fn final_side(&self) -> Result<usize> {
        let s = self.image / 2;
        if s < 8 {
            return Err(ModelError::Config {
                field: "image",
                reason: format!("LeNet-5 needs images of at least 16 pixels, got {}", self.image),
            });
        }
        Ok((s - 4) / 2)
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
        Ok(Lenet5 {
            conv1: Conv2dConfig::new([self.in_channels, 6], [5, 5])
                .with_padding(PaddingConfig2d::Explicit(2, 2, 2, 2))
                .init(device),
            conv2: Conv2dConfig::new([6, 16], [5, 5]).init(device),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            fc1: LinearConfig::new(16 * side * side, 120).init(device),
            fc2: LinearConfig::new(120, 84).init(device),
            fc3: LinearConfig::new(84, self.classes).init(device),
        })
    }
}

impl Classifier for Lenet5 {
    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.pool.forward(relu(self.conv1.forward(x)));
        let x = self.pool.forward(relu(self.conv2.forward(x)));
        let x = x.flatten::<2>(1, 3);
        let x = relu(self.fc1.forward(x));
        let x = relu(self.fc2.forward(x));
        self.fc3.forward(x)
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
        let r4 = e.act("relu4", Activation::Relu, &f2);
        let f3 = e.linear("fc3", &self.fc3, &r4)?;
        e.finish(&f3)
    }
}
