//! The training-step benchmark behind `cargo xtask bench train`: one SGD step's forward and
//! backward pass (cross-entropy on seeded random inputs and labels) of each zoo model on
//! flex + autodiff, with its convolutions and batch norms on tessera-kernels
//! ([`tessera_models::conv`], [`tessera_models::batch_norm`]) and on burn's own flex
//! operations, timed in interleaved rounds in the same run, plus the three passes of each
//! distinct convolution shape alone (kernels vs burn).
//!
//! The step does not apply an optimizer (its cost is the same either way and it would change
//! the weights between rounds). Threads: rayon's pool (set `RAYON_NUM_THREADS`), which both
//! burn and the kernels use.

use burn::backend::Flex;
use burn::backend::ops::{ConvOptions, ModuleOps};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::tensor::{Int, TensorData};
use burn_flex::FlexTensor;
use serde::{Deserialize, Serialize};

use crate::timing::{ROUNDS, paired_speedup};
use tessera_ir::Tensor as IrTensor;
use tessera_models::conv::{TrainingConvKernels, set_kernels_enabled};
use tessera_models::zoo::{
    Classifier, Lenet5Config, MobileNetV2Config, ResNetConfig, VggConfig, WithModel, ZooConfig,
};

/// What the suite runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainingSuiteConfig {
    /// Only models whose name contains one of these strings (all when empty).
    pub only: Vec<String>,
    /// Images per step.
    pub batch: usize,
    /// Minimum measured seconds per point (split over the rounds).
    pub min_time: f64,
}

/// One model's training step, both ways.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepPoint {
    /// Zoo model.
    pub model: String,
    /// Input shape `[batch, C, H, W]`.
    pub input: [usize; 4],
    /// rayon threads.
    pub threads: usize,
    /// Median ms per step, convolutions on tessera-kernels.
    pub kernels_ms: f64,
    /// Median over the rounds of burn's ms / ours.
    pub speedup: f64,
    /// Images per second with the kernels.
    pub images_per_s: f64,
}

/// One convolution shape's three passes, kernels vs burn's flex.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConvPoint {
    /// `cin->cout kxk /stride @HxW`.
    pub layer: String,
    /// Multiply-adds of one pass over the batch.
    pub macs: u64,
    /// Pass: forward, input-grad, weight-grad.
    pub pass: String,
    /// Median ms with the kernels.
    pub kernels_ms: f64,
    /// GMAC/s with the kernels.
    pub gmacs: f64,
    /// burn ms / kernels ms (median over the rounds).
    pub speedup: f64,
}

/// Everything the suite measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainingResults {
    /// Whole training steps.
    pub steps: Vec<StepPoint>,
    /// Single convolution passes.
    pub convs: Vec<ConvPoint>,
}

fn zoo() -> Vec<(&'static str, ZooConfig, [usize; 3])> {
    vec![
        ("lenet5", ZooConfig::Lenet5(Lenet5Config::default()), [1, 28, 28]),
        ("vgg11", ZooConfig::Vgg(VggConfig::default()), [3, 32, 32]),
        ("resnet20", ZooConfig::Resnet(ResNetConfig::default()), [3, 32, 32]),
        ("mobilenet_v2", ZooConfig::MobileNetV2(MobileNetV2Config::default()), [3, 32, 32]),
    ]
}

struct TimeStep {
    device: Device,
    input: [usize; 4],
    min_time: f64,
}

impl WithModel for TimeStep {
    type Output = (f64, f64);
    fn run<M: Classifier>(self, model: M) -> Self::Output {
        let x = IrTensor::uniform(self.input.to_vec(), 1.0, 5).data;
        let ce = CrossEntropyLossConfig::new().init(&self.device);
        let step = |kernels: bool| {
            set_kernels_enabled(kernels);
            let t = Tensor::<4>::from_data(TensorData::new(x.clone(), self.input), &self.device);
            let logits = model.forward(t);
            let classes = logits.dims()[1] as i64;
            let labels: Vec<i64> = (0..self.input[0] as i64).map(|i| (i * 7) % classes).collect();
            let y = Tensor::<1, Int>::from_data(TensorData::from(&labels[..]), &self.device);
            let grads = ce.forward(logits, y).backward();
            drop(std::hint::black_box(grads));
        };
        let r = paired_speedup(self.min_time, || step(true), || step(false));
        set_kernels_enabled(true);
        r
    }
}

/// Runs the suite: every selected model's step, then each distinct convolution shape of
/// ResNet-20 and VGG-11 (CIFAR sizes) alone.
pub fn run_training(cfg: &TrainingSuiteConfig) -> anyhow::Result<TrainingResults> {
    let device = Device::flex().autodiff();
    let threads = rayon::current_num_threads();
    let mut steps = Vec::new();
    for (name, config, chw) in zoo() {
        if !cfg.only.is_empty() && !cfg.only.iter().any(|o| name.contains(o.as_str())) {
            continue;
        }
        let input = [cfg.batch, chw[0], chw[1], chw[2]];
        let _span = tracing::info_span!("train-step", model = name).entered();
        let (ms, speedup) = config.build(
            &device,
            3,
            TimeStep { device: device.clone(), input, min_time: cfg.min_time },
        )?;
        tracing::info!(model = name, ms, speedup, "training step");
        steps.push(StepPoint {
            model: name.into(),
            input,
            threads,
            kernels_ms: ms,
            speedup,
            images_per_s: cfg.batch as f64 / (ms / 1e3),
        });
    }
    let mut convs = Vec::new();
    // (cin, cout, k, stride, side): ResNet-20's stages and downsampling, VGG's wide layers.
    let shapes = [
        (16, 16, 3, 1, 32),
        (16, 32, 3, 2, 32),
        (16, 32, 1, 2, 32),
        (32, 32, 3, 1, 16),
        (64, 64, 3, 1, 8),
        (128, 256, 3, 1, 8),
        (512, 512, 3, 1, 2),
    ];
    for (cin, cout, k, stride, side) in shapes {
        convs.extend(time_conv(cfg, cin, cout, k, stride, side)?);
    }
    Ok(TrainingResults { steps, convs })
}

fn time_conv(
    cfg: &TrainingSuiteConfig,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    side: usize,
) -> anyhow::Result<Vec<ConvPoint>> {
    type Prim = FlexTensor;
    let prim = |shape: [usize; 4], seed: u64| -> Prim {
        FlexTensor::from_data(TensorData::new(
            IrTensor::uniform(shape.to_vec(), 1.0, seed).data,
            shape,
        ))
    };
    let pad = k / 2;
    let options = ConvOptions::new([stride, stride], [pad, pad], [1, 1], 1);
    let out_side = (side + 2 * pad - k) / stride + 1;
    let x = prim([cfg.batch, cin, side, side], 1);
    let w = prim([cout, cin, k, k], 2);
    let dy = prim([cfg.batch, cout, out_side, out_side], 3);
    let macs = (cfg.batch * cout * cin * k * k * out_side * out_side) as u64;
    let layer = format!("{cin}->{cout} {k}x{k} /{stride} @{side}x{side}");
    let mut points = Vec::new();
    let o = options.clone();
    type Pass = Box<dyn Fn() -> Prim>;
    let passes: [(&str, Pass, Pass); 3] = [
        (
            "forward",
            Box::new({
                let (x, w, o) = (x.clone(), w.clone(), o.clone());
                move || Flex::conv_forward(x.clone(), w.clone(), o.clone())
            }),
            Box::new({
                let (x, w, o) = (x.clone(), w.clone(), o.clone());
                move || Flex::conv2d(x.clone(), w.clone(), None, o.clone())
            }),
        ),
        (
            "input-grad",
            Box::new({
                let (x, w, dy, o) = (x.clone(), w.clone(), dy.clone(), o.clone());
                move || Flex::conv_input_grad(x.clone(), w.clone(), dy.clone(), o.clone())
            }),
            Box::new({
                let (x, w, dy, o) = (x.clone(), w.clone(), dy.clone(), o.clone());
                move || Flex::conv2d_x_backward(x.clone(), w.clone(), dy.clone(), o.clone())
            }),
        ),
        (
            "weight-grad",
            Box::new({
                let (x, w, dy, o) = (x.clone(), w.clone(), dy.clone(), o.clone());
                move || Flex::conv_weight_grad(x.clone(), w.clone(), dy.clone(), o.clone())
            }),
            Box::new({
                let (x, w, dy, o) = (x.clone(), w.clone(), dy.clone(), o.clone());
                move || Flex::conv2d_weight_backward(x.clone(), w.clone(), dy.clone(), o.clone())
            }),
        ),
    ];
    for (pass, ours, theirs) in passes {
        let (ms, speedup) = paired_speedup(
            cfg.min_time / 3.0,
            || drop(std::hint::black_box(ours())),
            || drop(std::hint::black_box(theirs())),
        );
        tracing::info!(layer = %layer, pass, ms, speedup, "convolution pass");
        points.push(ConvPoint {
            layer: layer.clone(),
            macs,
            pass: pass.into(),
            kernels_ms: ms,
            gmacs: macs as f64 / (ms * 1e6),
            speedup,
        });
    }
    Ok(points)
}

/// The suite's report.
pub fn markdown(cfg: &TrainingSuiteConfig, r: &TrainingResults) -> String {
    let mut s = format!(
        "# Training-step benchmark\n\nflex + autodiff, f32, batch {}, forward + backward of a \
         cross-entropy loss (no optimizer). `speedup` = burn's own convolutions and batch norms / \
         tessera-kernels' (`tessera_models::conv`, `tessera_models::batch_norm`), the median ratio of {ROUNDS} interleaved rounds \
         in the same run; `ms` is the kernels' median.\n\n\
         | model | input | threads | ms / step | images/s | speedup |\n|---|---|---|---|---|---|\n",
        cfg.batch
    );
    for p in &r.steps {
        s.push_str(&format!(
            "| {} | {:?} | {} | {:.1} | {:.0} | {:.2}x |\n",
            p.model, p.input, p.threads, p.kernels_ms, p.images_per_s, p.speedup
        ));
    }
    s.push_str(
        "\n## Convolution passes\n\nOne pass over the batch; `GMAC/s` with the kernels; \
         `speedup` over burn's flex implementation of the same pass.\n\n\
         | layer | pass | ms | GMAC/s | speedup |\n|---|---|---|---|---|\n",
    );
    for c in &r.convs {
        s.push_str(&format!(
            "| {} | {} | {:.2} | {:.1} | {:.2}x |\n",
            c.layer, c.pass, c.kernels_ms, c.gmacs, c.speedup
        ));
    }
    s
}
