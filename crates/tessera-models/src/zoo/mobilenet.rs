//! MobileNetV2 (Sandler et al. 2018) for small images: inverted residual blocks (1x1 expand,
//! 3x3 depthwise, 1x1 linear projection; ReLU6), the paper's (t, c, n, s) table with the first
//! two downsamplings removed, as CIFAR adaptations do; widths scaled by a multiplier.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use tessera_ir::{Activation, Graph, Op};

use crate::error::Result;
use crate::export::{Exporter, Masks};
use crate::zoo::{Classifier, ConvBn, check_width, global_avg_pool, mark_skipped, scaled};

/// MobileNetV2 settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MobileNetV2Config {
    /// Input channels.
    pub in_channels: usize,
    /// Classes.
    pub classes: usize,
    /// Width multiplier.
    pub width: f32,
    /// Indices of residual blocks (stride 1, same channels) that are skipped: their
    /// parameters stay (the same checkpoint loads), they compute `y = x` and are left out of
    /// the exported graph (the search's "skip" operator choice).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip_blocks: Vec<usize>,
}

impl Default for MobileNetV2Config {
    fn default() -> Self {
        MobileNetV2Config { in_channels: 3, classes: 10, width: 1.0, skip_blocks: Vec::new() }
    }
}

/// (expansion t, channels c, repeats n, stride s) of the paper's Table 2, strides adapted to
/// 28-32 pixel inputs.
const TABLE: [(usize, usize, usize, usize); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

fn relu6(x: Tensor<4>) -> Tensor<4> {
    x.clamp(0.0, 6.0)
}

/// An inverted residual block.
#[derive(Module, Debug)]
pub struct InvertedResidual {
    /// 1x1 expansion (absent when t = 1).
    pub expand: Option<ConvBn>,
    /// 3x3 depthwise.
    pub depthwise: ConvBn,
    /// 1x1 linear projection.
    pub project: ConvBn,
    /// Residual connection (stride 1, same channels).
    #[module(skip)]
    pub residual: bool,
    /// Skipped: `y = x` (only residual blocks).
    #[module(skip)]
    pub skipped: bool,
}

impl InvertedResidual {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        if self.skipped {
            return x;
        }
        let mut y = x.clone();
        if let Some(e) = &self.expand {
            y = relu6(e.forward(y));
        }
        let y = self.project.forward(relu6(self.depthwise.forward(y)));
        if self.residual { y + x } else { y }
    }

    fn export(&self, e: &mut Exporter<'_>, path: &str, x: &str) -> Result<String> {
        if self.skipped {
            return Ok(x.to_string());
        }
        let mut v = x.to_string();
        if let Some(ex) = &self.expand {
            let y = ex.export(e, &format!("{path}.expand"), &v)?;
            v = e.act(&format!("{path}.expand_relu6"), Activation::Relu6, &y);
        }
        let y = self.depthwise.export(e, &format!("{path}.depthwise"), &v)?;
        let y = e.act(&format!("{path}.dw_relu6"), Activation::Relu6, &y);
        let y = self.project.export(e, &format!("{path}.project"), &y)?;
        Ok(if self.residual {
            e.node(&format!("{path}.add"), Op::Add { activation: None }, &[&y, x])
        } else {
            y
        })
    }
}

/// MobileNetV2.
#[derive(Module, Debug)]
pub struct MobileNetV2 {
    /// 3x3 stem, stride 1.
    pub stem: ConvBn,
    /// Inverted residual blocks.
    pub blocks: Vec<InvertedResidual>,
    /// 1x1 head conv.
    pub head: ConvBn,
    /// Classifier.
    pub fc: Linear,
}

impl MobileNetV2Config {
    /// A randomly initialized model.
    pub fn init(&self, device: &Device) -> Result<MobileNetV2> {
        check_width(self.width)?;
        let stem_c = scaled(32, self.width);
        let stem = ConvBn::new(self.in_channels, stem_c, 3, 1, 1, device);
        let mut blocks = Vec::new();
        let mut cin = stem_c;
        for (t, c, n, s) in TABLE {
            let cout = scaled(c, self.width);
            for i in 0..n {
                let stride = if i == 0 { s } else { 1 };
                let hidden = cin * t;
                blocks.push(InvertedResidual {
                    expand: (t != 1).then(|| ConvBn::new(cin, hidden, 1, 1, 1, device)),
                    depthwise: ConvBn::new(hidden, hidden, 3, stride, hidden, device),
                    project: ConvBn::new(hidden, cout, 1, 1, 1, device),
                    residual: stride == 1 && cin == cout,
                    skipped: false,
                });
                cin = cout;
            }
        }
        mark_skipped(
            &mut blocks,
            &self.skip_blocks,
            |b| b.residual,
            |b| b.skipped = true,
            "it has no residual connection; only residual blocks can be skipped",
        )?;
        let head_c = scaled(1280, self.width.max(1.0));
        let head = ConvBn::new(cin, head_c, 1, 1, 1, device);
        Ok(MobileNetV2 {
            stem,
            blocks,
            head,
            fc: LinearConfig::new(head_c, self.classes).init(device),
        })
    }
}

impl Classifier for MobileNetV2 {
    fn batch_norms_mut(&mut self) -> Vec<&mut burn::nn::BatchNorm> {
        let mut out = vec![&mut self.stem.bn];
        for b in &mut self.blocks {
            if let Some(e) = &mut b.expand {
                out.push(&mut e.bn);
            }
            out.push(&mut b.depthwise.bn);
            out.push(&mut b.project.bn);
        }
        out.push(&mut self.head.bn);
        out
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = relu6(self.stem.forward(x));
        for b in &self.blocks {
            x = b.forward(x);
        }
        let x = relu6(self.head.forward(x));
        self.fc.forward(global_avg_pool(x))
    }

    fn export(&self, input: [usize; 4], masks: &Masks) -> Result<Graph> {
        let mut e = Exporter::new("mobilenet_v2", "x", &input, masks);
        let s = self.stem.export(&mut e, "stem", "x")?;
        let mut v = e.act("stem.relu6", Activation::Relu6, &s);
        for (i, b) in self.blocks.iter().enumerate() {
            v = b.export(&mut e, &format!("blocks.{i}"), &v)?;
        }
        let h = self.head.export(&mut e, "head", &v)?;
        let h = e.act("head.relu6", Activation::Relu6, &h);
        let g = e.node("gap", Op::GlobalAvgPool, &[&h]);
        let fc = e.linear("fc", &self.fc, &g)?;
        e.finish(&fc)
    }
}
