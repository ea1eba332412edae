//! Training convolutions on tessera-kernels: [`forward`] runs a burn `Conv2d` through a burn
//! backend extension whose flex implementation is [`tessera_kernels::BatchConv2d`] (im2col +
//! GEMM per image, images split across threads) and whose autodiff implementation has a
//! handwritten backward pass calling the same kernels for the input and weight gradients.
//!
//! Why: burn 0.22's flex backend computes a convolution's input gradient as a transposed
//! convolution and its weight gradient as a convolution over the batch, both generic; on the
//! 3x3 layers of a CIFAR ResNet they ran at 10-35 GMAC/s (two threads), which made training
//! the slowest part of every pruning experiment. The kernels here reach 40-60 GMAC/s on the
//! same layers.
//!
//! What is routed: ungrouped 2-D convolutions with explicit symmetric (or no) padding on f32 flex tensors.
//! Everything else (grouped and depthwise convolutions, asymmetric or "same" padding, other dtypes, the
//! ndarray backend) runs burn's own `conv2d` and its default backward, so results never
//! depend on which path ran beyond float rounding. The bias is added by an ordinary
//! broadcast, which autodiff differentiates itself.

// burn-ndarray is deprecated upstream but still a backend users select here
// ([`crate::Backend::NdArray`]); the extension macro names it in code it generates.
#![allow(deprecated)]

use burn::backend::TensorMetadata;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::{ConvOptions, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Dispatch, Flex, NdArray, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::prelude::Tensor;
use burn::tensor::{Bytes, DType, Shape};
use burn_flex::{FlexTensor, Layout};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tessera_kernels::{BatchConv2d, ConvShape};

static KERNEL_RUNS: AtomicUsize = AtomicUsize::new(0);
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the tessera-kernels route on or off for the whole process (on by default), for
/// convolutions and for [`crate::batch_norm`]. Off, [`forward`] is exactly `Conv2d::forward`
/// (and batch norm `BatchNorm::forward`): benchmarks use it to time both in one run.
pub fn set_kernels_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether [`forward`] routes qualifying layers to tessera-kernels.
pub fn kernels_enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// How many forward, input-gradient and weight-gradient computations have run on
/// tessera-kernels (rather than burn's fallback) since the process started.
pub fn kernel_runs() -> usize {
    KERNEL_RUNS.load(Ordering::Relaxed)
}

/// `conv(x)` for a burn `Conv2d`, with the same padding, stride, dilation, groups and bias
/// handling as `Conv2d::forward`, on tessera-kernels where the layer qualifies (module docs).
pub fn forward(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    // "Same" padding (burn computes it per input size) keeps burn's path.
    let ((top, bottom), (left, right)) = match conv.padding {
        PaddingConfig2d::Valid => ((0, 0), (0, 0)),
        PaddingConfig2d::Explicit(top, left, bottom, right) => ((top, bottom), (left, right)),
        PaddingConfig2d::Same => return conv.forward(x),
    };
    let options = ConvOptions::new_with_padding(
        conv.stride,
        [(top, bottom), (left, right)],
        conv.dilation,
        conv.groups,
    );
    if conv.groups != 1 || options.is_asymmetric() || !kernels_enabled() {
        return conv.forward(x);
    }
    let y = Tensor::<4>::from_dispatch(<Dispatch as TrainingConv>::training_conv2d(
        x.into_dispatch(),
        conv.weight.val().into_dispatch(),
        options,
    ));
    match &conv.bias {
        Some(bias) => {
            let channels = bias.dims()[0];
            y + bias.val().reshape([1, channels, 1, 1])
        }
        None => y,
    }
}

/// The three computations of a training convolution on one (non-autodiff) backend. The
/// defaults are burn's own; flex overrides them with tessera-kernels.
pub trait TrainingConvKernels: burn::backend::Backend {
    /// `conv(x, weight)` without bias.
    fn conv_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d(x, weight, None, options)
    }

    /// The gradient with respect to `x`, given the output gradient.
    fn conv_input_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d_x_backward(x, weight, output_grad, options)
    }

    /// The gradient with respect to `weight`, given the output gradient.
    fn conv_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d_weight_backward(x, weight, output_grad, options)
    }
}

impl TrainingConvKernels for NdArray {}

impl TrainingConvKernels for Flex {
    fn conv_forward(x: FlexTensor, weight: FlexTensor, options: ConvOptions<2>) -> FlexTensor {
        let fast = problem(&x, &weight, &options).and_then(|conv| {
            let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
            let mut y = vec![0.0f32; conv.output_len()];
            conv.forward(x.as_slice()?, weight.as_slice()?, None, &mut y, threads()).ok()?;
            let [_, oh, ow] = conv.shape().output();
            Some(flex_f32(y, [conv.batch(), conv.shape().out_channels, oh, ow]))
        });
        fast.unwrap_or_else(|| Flex::conv2d(x, weight, None, options))
    }

    fn conv_input_grad(
        x: FlexTensor,
        weight: FlexTensor,
        output_grad: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        let fast = problem(&x, &weight, &options).and_then(|conv| {
            let (weight, dy) = (weight.to_contiguous(), output_grad.to_contiguous());
            let mut dx = vec![0.0f32; conv.input_len()];
            conv.backward_data(weight.as_slice()?, dy.as_slice()?, &mut dx, threads()).ok()?;
            let [_, h, w] = conv.shape().input;
            Some(flex_f32(dx, [conv.batch(), conv.shape().in_channels, h, w]))
        });
        fast.unwrap_or_else(|| Flex::conv2d_x_backward(x, weight, output_grad, options))
    }

    fn conv_weight_grad(
        x: FlexTensor,
        weight: FlexTensor,
        output_grad: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        let fast = problem(&x, &weight, &options).and_then(|conv| {
            let (xc, dy) = (x.to_contiguous(), output_grad.to_contiguous());
            let mut dw = vec![0.0f32; conv.weight_len()];
            conv.backward_weights(xc.as_slice()?, dy.as_slice()?, &mut dw, None, threads()).ok()?;
            let s = conv.shape();
            Some(flex_f32(dw, [s.out_channels, s.in_channels, s.kernel[1], s.kernel[2]]))
        });
        fast.unwrap_or_else(|| Flex::conv2d_weight_backward(x, weight, output_grad, options))
    }
}

/// The kernel problem for an f32, ungrouped, symmetrically padded 2-D convolution, or `None`
/// when burn's own implementation must run.
fn problem(x: &FlexTensor, weight: &FlexTensor, options: &ConvOptions<2>) -> Option<BatchConv2d> {
    if x.dtype() != DType::F32
        || weight.dtype() != DType::F32
        || options.groups != 1
        || options.is_asymmetric()
    {
        return None;
    }
    let (xs, ws) = (x.shape(), weight.shape());
    let (&[batch, channels, h, w], &[out, in_channels, kh, kw]) = (&xs[..], &ws[..]) else {
        return None;
    };
    if in_channels != channels {
        return None;
    }
    let [ph, pw] = options.padding_begin();
    let shape = ConvShape {
        in_channels,
        out_channels: out,
        groups: 1,
        input: [1, h, w],
        kernel: [1, kh, kw],
        stride: [1, options.stride[0], options.stride[1]],
        padding: [0, ph, pw],
        dilation: [1, options.dilation[0], options.dilation[1]],
    };
    BatchConv2d::new(batch, shape).ok()
}

fn flex_f32(values: Vec<f32>, dims: [usize; 4]) -> FlexTensor {
    KERNEL_RUNS.fetch_add(1, Ordering::Relaxed);
    FlexTensor::new(Bytes::from_elems(values), Layout::contiguous(Shape::new(dims)), DType::F32)
}

/// Threads for the kernels: rayon's pool size, as burn's flex backend uses.
fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// The backend extension behind [`forward`]: one differentiable operation, `conv(x, weight)`
/// without bias, routed by burn's `Dispatch` to flex, ndarray or their autodiff wrappers.
#[backend_extension(Flex, NdArray, Autodiff)]
pub trait TrainingConv: burn::backend::Backend {
    /// `conv(x, weight)`: `x` is `[N, C, H, W]`, `weight` `[O, C, kh, kw]`.
    fn training_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;
}

impl TrainingConv for Flex {
    fn training_conv2d(x: FlexTensor, weight: FlexTensor, options: ConvOptions<2>) -> FlexTensor {
        Flex::conv_forward(x, weight, options)
    }
}

impl TrainingConv for NdArray {
    fn training_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        NdArray::conv_forward(x, weight, options)
    }
}

/// The backward step recorded for one training convolution.
#[derive(Debug)]
struct TrainingConvBackward;

impl<B: TrainingConvKernels> Backward<B, 2> for TrainingConvBackward {
    type State = (NodeId, NodeId, ConvOptions<2>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_weight] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_state, weight_state, options) = ops.state;
        let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x_state);
        let weight = checkpointer.retrieve_node_output::<FloatTensor<B>>(weight_state);
        if let Some(node) = node_x {
            let dx = B::conv_input_grad(x.clone(), weight.clone(), grad.clone(), options.clone());
            grads.register::<B>(node.id, dx);
        }
        if let Some(node) = node_weight {
            grads.register::<B>(node.id, B::conv_weight_grad(x, weight, grad, options));
        }
    }
}

impl<B: TrainingConvKernels, C: CheckpointStrategy> TrainingConv for Autodiff<B, C> {
    fn training_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        match TrainingConvBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let weight_state = prep.checkpoint(&weight);
                let y =
                    B::conv_forward(x.into_primitive(), weight.into_primitive(), options.clone());
                prep.finish((x_state, weight_state, options), y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::conv_forward(x.into_primitive(), weight.into_primitive(), options))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2dConfig;
    use burn::prelude::Device;
    use burn::tensor::{Distribution, TensorData};

    fn values(t: Tensor<4>) -> Vec<f32> {
        t.into_data().try_into_vec::<f32>().unwrap()
    }

    fn assert_close(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!((a - b).abs() <= 2e-5 * scale, "{what}[{i}]: {a} vs burn's {b}");
        }
    }

    /// Runs `config` on `input`-shaped data through burn's `Conv2d::forward` and through
    /// [`forward`], and compares outputs and the gradients of a random linear loss with
    /// respect to the input, the weight and the bias.
    fn matches_burn(device: &Device, config: Conv2dConfig, input: [usize; 4]) {
        let conv = crate::with_seed(device, 5, || Ok::<_, ()>(config.init(device))).unwrap();
        let x = Tensor::<4>::random(input, Distribution::Uniform(-1.0, 1.0), device);
        let data: TensorData = x.into_data();
        let run = |fast: bool| {
            let x = Tensor::<4>::from_data(data.clone(), device).require_grad();
            let y = if fast { forward(&conv, x.clone()) } else { conv.forward(x.clone()) };
            let r = Tensor::<4>::from_data(
                TensorData::new(
                    (0..y.shape().num_elements())
                        .map(|i| ((i * 7919) % 13) as f32 / 6.0 - 1.0)
                        .collect(),
                    y.shape(),
                ),
                device,
            );
            let out = values(y.clone());
            let grads = (y * r).sum().backward();
            let dx = x.grad(&grads).map(|g| g.into_data().try_into_vec::<f32>().unwrap());
            let dw = conv.weight.grad(&grads).map(|g| g.into_data().try_into_vec::<f32>().unwrap());
            let db = conv
                .bias
                .as_ref()
                .and_then(|b| b.grad(&grads))
                .map(|g| g.into_data().try_into_vec::<f32>().unwrap());
            (out, dx, dw, db)
        };
        let (y, dx, dw, db) = run(true);
        let (y_ref, dx_ref, dw_ref, db_ref) = run(false);
        assert_close("output", &y, &y_ref);
        assert_close("input gradient", &dx.unwrap(), &dx_ref.unwrap());
        assert_close("weight gradient", &dw.unwrap(), &dw_ref.unwrap());
        assert_eq!(db.is_some(), db_ref.is_some());
        if let (Some(db), Some(db_ref)) = (db, db_ref) {
            assert_close("bias gradient", &db, &db_ref);
        }
    }

    #[test]
    fn kernels_match_burns_convolution_and_gradients_on_flex() {
        let device = Device::flex().autodiff();
        let before = kernel_runs();
        let same = |cin, cout, k, stride| {
            Conv2dConfig::new([cin, cout], [k, k])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
                .with_bias(false)
        };
        matches_burn(&device, same(4, 6, 3, 1), [3, 4, 9, 9]); // ResNet 3x3
        matches_burn(&device, same(4, 8, 3, 2).with_bias(true), [2, 4, 9, 9]); // downsampling
        matches_burn(&device, same(4, 8, 1, 2), [2, 4, 8, 8]); // 1x1 shortcut
        matches_burn(&device, Conv2dConfig::new([3, 5], [5, 5]), [2, 3, 12, 12]); // LeNet, bias
        // Three passes per layer went through tessera-kernels (other tests may add more).
        assert!(kernel_runs() >= before + 12, "{} kernel runs", kernel_runs() - before);
    }

    #[test]
    fn layers_the_kernels_do_not_take_fall_back_to_burn() {
        let device = Device::flex().autodiff();
        // Depthwise (grouped) and "same" padding with an even kernel (asymmetric).
        matches_burn(
            &device,
            Conv2dConfig::new([4, 4], [3, 3])
                .with_groups(4)
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)),
            [2, 4, 7, 7],
        );
        matches_burn(
            &device,
            Conv2dConfig::new([3, 4], [2, 2]).with_padding(PaddingConfig2d::Same),
            [2, 3, 6, 6],
        );
    }

    #[test]
    fn ndarray_and_inference_devices_route_too() {
        matches_burn(
            &Device::ndarray().autodiff(),
            Conv2dConfig::new([3, 4], [3, 3]),
            [2, 3, 7, 7],
        );
        // Without autodiff: the plain flex implementation.
        let device = Device::flex();
        let conv = Conv2dConfig::new([3, 4], [3, 3]).init(&device);
        let x = Tensor::<4>::random([2, 3, 7, 7], Distribution::Uniform(-1.0, 1.0), &device);
        assert_close(
            "inference output",
            &values(forward(&conv, x.clone())),
            &values(conv.forward(x)),
        );
    }
}
