//! Training batch norm on tessera-kernels: [`forward`] runs a burn `BatchNorm` in training
//! mode through a backend extension whose flex implementation is
//! [`tessera_kernels::training::batch_norm`] (one pass per statistic, no axis swaps) and
//! whose autodiff implementation has a handwritten backward pass on the same kernels.
//!
//! Same semantics as `BatchNorm::forward`: in training mode (autodiff device and the layer's
//! training flag on) it normalizes with the batch's mean and biased variance and moves the
//! running statistics by `momentum`; otherwise it is exactly `BatchNorm::forward` (inference
//! normalization with the running statistics). Non-f32 tensors and the ndarray backend run
//! burn's own batch-norm operations. [`crate::conv::set_kernels_enabled`] turns this route
//! off too.

// burn-ndarray is deprecated upstream but still a backend users select here
// ([`crate::Backend::NdArray`]); the extension macro names it in code it generates.
#![allow(deprecated)]

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, AutodiffBackend, Dispatch, Flex, NdArray, TensorMetadata, backend_extension,
};
use burn::nn::BatchNorm;
use burn::prelude::Tensor;
use burn::tensor::{Bytes, DType, Shape};
use burn_flex::{FlexTensor, Layout};
use tessera_kernels::training::batch_norm::{
    BatchNormShape, batch_norm_backward, batch_norm_forward, batch_norm_statistics,
};

/// `bn(x)` for an NCHW batch, on tessera-kernels in training mode (module docs).
pub fn forward(bn: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
    let device = x.device();
    if !(device.is_autodiff() && bn.training.is_enabled() && crate::conv::kernels_enabled()) {
        return bn.forward(x);
    }
    let channels = x.dims()[1];
    let stats = Tensor::<2>::from_dispatch(<Dispatch as TrainingBatchNorm>::batch_norm_statistics(
        x.clone().detach().into_dispatch(),
    ));
    let mean = stats.clone().slice([0..1, 0..channels]).reshape([channels]);
    let var = stats.slice([1..2, 0..channels]).reshape([channels]);
    // The running statistics move exactly as in burn's `BatchNorm::forward`.
    let momentum = bn.momentum;
    let running_mean = bn.running_mean.value_sync().to_device(&device);
    let running_var = bn.running_var.value_sync().to_device(&device);
    bn.running_mean.update(
        running_mean.mul_scalar(1.0 - momentum).add(mean.clone().mul_scalar(momentum)).detach(),
    );
    bn.running_var.update(
        running_var.mul_scalar(1.0 - momentum).add(var.clone().mul_scalar(momentum)).detach(),
    );
    Tensor::<4>::from_dispatch(<Dispatch as TrainingBatchNorm>::training_batch_norm(
        x.into_dispatch(),
        bn.gamma.val().into_dispatch(),
        bn.beta.val().into_dispatch(),
        mean.into_dispatch(),
        var.into_dispatch(),
        bn.epsilon,
    ))
}

/// The three computations of a training batch norm on one (non-autodiff) backend. The
/// defaults are burn's own operations; flex overrides them with tessera-kernels.
pub trait TrainingBatchNormKernels: burn::backend::Backend {
    /// Per-channel `[mean; biased variance]` of an NCHW `x`, as a `[2, C]` tensor.
    fn bn_statistics(x: FloatTensor<Self>) -> FloatTensor<Self> {
        statistics_by_burn::<Self>(x)
    }

    /// `gamma * (x - mean) / sqrt(var + eps) + beta`.
    fn bn_forward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        Self::batch_norm(x, gamma, beta, mean, var, epsilon)
    }

    /// `(dx, dgamma, dbeta)` given the output gradient, with `mean` and `var` the batch
    /// statistics of `x`.
    fn bn_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        epsilon: f64,
        output_grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let r = Self::batch_norm_train_backward(x, gamma, mean, var, epsilon, output_grad);
        (r.x_grad, r.gamma_grad, r.beta_grad)
    }
}

impl TrainingBatchNormKernels for NdArray {}

impl TrainingBatchNormKernels for Flex {
    fn bn_statistics(x: FlexTensor) -> FlexTensor {
        let fast = shape_of(&x).and_then(|s| {
            let xc = x.to_contiguous();
            let (mut mean, mut var) = (vec![0.0f32; s.channels()], vec![0.0f32; s.channels()]);
            batch_norm_statistics(&s, xc.as_slice()?, &mut mean, &mut var, threads()).ok()?;
            mean.extend(var);
            Some(flex_f32(mean, &[2, s.channels()]))
        });
        fast.unwrap_or_else(|| statistics_by_burn::<Flex>(x))
    }

    fn bn_forward(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        var: FlexTensor,
        epsilon: f64,
    ) -> FlexTensor {
        let fast = shape_of(&x).and_then(|s| {
            let c = [&x, &gamma, &beta, &mean, &var].map(|t| t.to_contiguous());
            let mut y = vec![0.0f32; s.len()];
            let [x, g, b, m, v] = [&c[0], &c[1], &c[2], &c[3], &c[4]];
            batch_norm_forward(
                &s,
                x.as_slice()?,
                g.as_slice()?,
                b.as_slice()?,
                m.as_slice()?,
                v.as_slice()?,
                epsilon,
                &mut y,
                threads(),
            )
            .ok()?;
            Some(flex_f32(y, &x.shape()[..]))
        });
        fast.unwrap_or_else(|| Flex::batch_norm(x, gamma, beta, mean, var, epsilon))
    }

    fn bn_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        mean: FlexTensor,
        var: FlexTensor,
        epsilon: f64,
        output_grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let fast = shape_of(&x).and_then(|s| {
            let c = [&x, &gamma, &mean, &var, &output_grad].map(|t| t.to_contiguous());
            let [xc, g, m, v, dy] = [&c[0], &c[1], &c[2], &c[3], &c[4]];
            let mut dx = vec![0.0f32; s.len()];
            let (mut dg, mut db) = (vec![0.0f32; s.channels()], vec![0.0f32; s.channels()]);
            batch_norm_backward(
                &s,
                xc.as_slice()?,
                dy.as_slice()?,
                g.as_slice()?,
                m.as_slice()?,
                v.as_slice()?,
                epsilon,
                &mut dx,
                &mut dg,
                &mut db,
                threads(),
            )
            .ok()?;
            let shape = xc.shape();
            Some((
                flex_f32(dx, &shape[..]),
                flex_f32(dg, &[s.channels()]),
                flex_f32(db, &[s.channels()]),
            ))
        });
        fast.unwrap_or_else(|| {
            let r = Flex::batch_norm_train_backward(x, gamma, mean, var, epsilon, output_grad);
            (r.x_grad, r.gamma_grad, r.beta_grad)
        })
    }
}

/// `[mean; biased variance]` by burn's own training batch norm (unit gamma, zero beta).
fn statistics_by_burn<B: burn::backend::Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let channels = x.shape()[1];
    let gamma = B::float_ones(Shape::new([channels]), &x.device(), x.dtype().into());
    let beta = B::float_zeros(Shape::new([channels]), &x.device(), x.dtype().into());
    let r = B::batch_norm_train(x, gamma, beta, 1e-5);
    let row = |t| B::float_reshape(t, Shape::new([1, channels]));
    B::float_cat(vec![row(r.mean), row(r.variance)], 0)
}

/// The batch-norm shape of an f32 NCHW tensor (any rank >= 2: trailing dims are the plane).
fn shape_of(x: &FlexTensor) -> Option<BatchNormShape> {
    if x.dtype() != DType::F32 {
        return None;
    }
    let dims = x.shape();
    if dims.num_dims() < 2 {
        return None;
    }
    let plane = dims[2..].iter().product();
    BatchNormShape::new(dims[0], dims[1], plane).ok()
}

fn flex_f32(values: Vec<f32>, dims: &[usize]) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(Shape::from(dims.to_vec())),
        DType::F32,
    )
}

fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// The backend extension behind [`forward`].
#[backend_extension(Flex, NdArray, Autodiff)]
pub trait TrainingBatchNorm: burn::backend::Backend {
    /// Per-channel `[mean; biased variance]` of `x` (no gradient), `[2, C]`.
    fn batch_norm_statistics(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Batch norm with the given batch statistics of `x`; its gradient with respect to `x`
    /// includes the statistics' dependence on `x`. `mean` and `var` take no gradient.
    fn training_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;
}

impl TrainingBatchNorm for Flex {
    fn batch_norm_statistics(x: FlexTensor) -> FlexTensor {
        Flex::bn_statistics(x)
    }
    fn training_batch_norm(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        var: FlexTensor,
        epsilon: f64,
    ) -> FlexTensor {
        Flex::bn_forward(x, gamma, beta, mean, var, epsilon)
    }
}

impl TrainingBatchNorm for NdArray {
    fn batch_norm_statistics(x: FloatTensor<Self>) -> FloatTensor<Self> {
        NdArray::bn_statistics(x)
    }
    fn training_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        NdArray::bn_forward(x, gamma, beta, mean, var, epsilon)
    }
}

/// The backward step recorded for one training batch norm.
#[derive(Debug)]
struct TrainingBatchNormBackward;

impl<B: TrainingBatchNormKernels> Backward<B, 3> for TrainingBatchNormBackward {
    type State = (NodeId, NodeId, FloatTensor<B>, FloatTensor<B>, f64);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_state, gamma_state, mean, var, epsilon) = ops.state;
        let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x_state);
        let gamma = checkpointer.retrieve_node_output::<FloatTensor<B>>(gamma_state);
        let (dx, dgamma, dbeta) = B::bn_backward(x, gamma, mean, var, epsilon, grad);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, dx);
        }
        if let Some(node) = node_gamma {
            grads.register::<B>(node.id, dgamma);
        }
        if let Some(node) = node_beta {
            grads.register::<B>(node.id, dbeta);
        }
    }
}

impl<B: TrainingBatchNormKernels, C: CheckpointStrategy> TrainingBatchNorm for Autodiff<B, C> {
    fn batch_norm_statistics(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::from_inner(B::bn_statistics(Self::inner(x)))
    }

    fn training_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let (mean, var) = (Self::inner(mean), Self::inner(var));
        match TrainingBatchNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let gamma_state = prep.checkpoint(&gamma);
                let y = B::bn_forward(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    mean.clone(),
                    var.clone(),
                    epsilon,
                );
                prep.finish((x_state, gamma_state, mean, var, epsilon), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::bn_forward(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                mean,
                var,
                epsilon,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::nn::BatchNormConfig;
    use burn::prelude::Device;
    use burn::tensor::{Distribution, TensorData};

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec::<f32>().unwrap()
    }

    fn assert_close(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!((a - b).abs() <= 5e-5 * scale, "{what}[{i}]: {a} vs burn's {b}");
        }
    }

    /// Output, input/gamma/beta gradients and the updated running statistics against burn's
    /// `BatchNorm::forward` on the same data, on `device`.
    fn matches_burn(device: &Device) {
        // Non-trivial gamma / beta; a fresh layer (fresh running statistics) per run.
        let make = || {
            let bn = BatchNormConfig::new(3).with_momentum(0.3).init(device);
            BatchNorm {
                gamma: Param::from_tensor(bn.gamma.val().mul_scalar(1.5).add_scalar(-0.2).detach()),
                beta: Param::from_tensor(bn.beta.val().add_scalar(0.4).detach()),
                ..bn
            }
        };
        let x = Tensor::<4>::random([4, 3, 5, 6], Distribution::Uniform(-2.0, 3.0), device);
        let data = x.into_data();
        let run = |fast: bool| {
            let bn = make();
            let x = Tensor::<4>::from_data(data.clone(), device).require_grad();
            let y = if fast { forward(&bn, x.clone()) } else { bn.forward(x.clone()) };
            let r = Tensor::<4>::from_data(
                TensorData::new(
                    (0..y.shape().num_elements())
                        .map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0)
                        .collect(),
                    y.shape(),
                ),
                device,
            );
            let out = values(y.clone());
            let grads = (y * r).sum().backward();
            let grad = |t: Option<Tensor<1>>| values(t.unwrap());
            (
                out,
                values(x.grad(&grads).unwrap()),
                grad(bn.gamma.grad(&grads)),
                grad(bn.beta.grad(&grads)),
                values(bn.running_mean.value()),
                values(bn.running_var.value()),
            )
        };
        let fast = run(true);
        let slow = run(false);
        assert_close("output", &fast.0, &slow.0);
        assert_close("input gradient", &fast.1, &slow.1);
        assert_close("gamma gradient", &fast.2, &slow.2);
        assert_close("beta gradient", &fast.3, &slow.3);
        assert_close("running mean", &fast.4, &slow.4);
        assert_close("running variance", &fast.5, &slow.5);
    }

    #[test]
    fn training_batch_norm_matches_burn_on_flex_and_ndarray() {
        matches_burn(&Device::flex().autodiff());
        matches_burn(&Device::ndarray().autodiff());
    }

    #[test]
    fn inference_and_frozen_layers_are_burns_forward() {
        let device = Device::flex();
        let bn = BatchNormConfig::new(2).init(&device);
        let x = Tensor::<4>::random([2, 2, 3, 3], Distribution::Uniform(-1.0, 1.0), &device);
        assert_eq!(values(forward(&bn, x.clone())), values(bn.forward(x)));
    }
}
