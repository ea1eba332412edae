//! The operations of the IR and their attributes.
//!
//! Activations are batch-first: `[N, C, H, W]` (or `[N, C, D, H, W]`) for images, `[N, F]` or
//! `[N, T, F]` for features and sequences. Weights are referenced by parameter name and stored
//! in PyTorch order: conv `[O, I / groups, (kt,) kh, kw]`, linear `[out, in]`, RNN gates
//! `[gates * hidden, in]` (GRU gates r, z, n; LSTM gates i, f, g, o).

use serde::{Deserialize, Serialize};

/// Element-wise activation functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
    /// `x * relu6(x + 3) / 6`.
    HardSwish,
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
    /// `x * Phi(x)` with the exact normal CDF (erf form).
    Gelu,
}

impl Activation {
    /// Applies the function.
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Relu => x.max(0.0),
            Activation::Relu6 => x.clamp(0.0, 6.0),
            Activation::HardSwish => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Activation::Tanh => x.tanh(),
            Activation::Gelu => {
                (0.5 * f64::from(x) * (1.0 + erf(f64::from(x) / std::f64::consts::SQRT_2))) as f32
            }
        }
    }

    /// Whether `f(0) == 0` (needed to remove an all-zero channel).
    pub fn preserves_zero(self) -> bool {
        !matches!(self, Activation::Sigmoid)
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Relu6 => "relu6",
            Activation::HardSwish => "hard_swish",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
            Activation::Gelu => "gelu",
        }
    }
}

/// The error function (Abramowitz & Stegun 7.1.26 refined by a Taylor series near zero; absolute
/// error below 1e-12 over the real line, far below f32 resolution).
fn erf(x: f64) -> f64 {
    if x.abs() < 2.0 {
        // Maclaurin series: erf x = 2/sqrt(pi) sum (-1)^n x^(2n+1) / (n! (2n+1)).
        let mut term = x;
        let mut sum = x;
        let x2 = x * x;
        for n in 1..60 {
            term *= -x2 / n as f64;
            let add = term / (2 * n + 1) as f64;
            sum += add;
            if add.abs() < 1e-17 {
                break;
            }
        }
        return sum * 2.0 / std::f64::consts::PI.sqrt();
    }
    // Continued fraction for erfc in the tails.
    let t = x.abs();
    let mut f = 0.0f64;
    for n in (1..=60).rev() {
        f = (n as f64 / 2.0) / (t + f);
    }
    let erfc = (-t * t).exp() / std::f64::consts::PI.sqrt() / (t + f);
    if x > 0.0 { 1.0 - erfc } else { erfc - 1.0 }
}

/// An operation. Attribute vectors (`stride`, `padding`, ...) have one entry per spatial
/// dimension (2 for images, 3 for volumes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// N-d convolution (2-D or 3-D), with an optional fused activation.
    Conv {
        /// Weight parameter `[O, I/groups, k...]`.
        weight: String,
        /// Bias parameter `[O]`.
        #[serde(default)]
        bias: Option<String>,
        /// Stride per spatial dimension.
        stride: Vec<usize>,
        /// Zero padding per spatial dimension (both sides).
        padding: Vec<usize>,
        /// Dilation per spatial dimension.
        dilation: Vec<usize>,
        /// Channel groups.
        groups: usize,
        /// Activation applied to the output (set by activation fusion).
        #[serde(default)]
        activation: Option<Activation>,
    },
    /// `y = x W^T + b` over the last dimension, with an optional fused activation.
    Linear {
        /// Weight parameter `[out, in]`.
        weight: String,
        /// Bias parameter `[out]`.
        #[serde(default)]
        bias: Option<String>,
        /// Activation applied to the output.
        #[serde(default)]
        activation: Option<Activation>,
    },
    /// Batched matrix product of two activations: `[.., m, k] x [.., k, n]`.
    MatMul,
    /// Batch normalization (inference) over dimension 1.
    BatchNorm {
        /// Scale `[C]`.
        gamma: String,
        /// Shift `[C]`.
        beta: String,
        /// Running mean `[C]`.
        mean: String,
        /// Running variance `[C]`.
        var: String,
        /// Added to the variance.
        eps: f32,
    },
    /// Layer normalization over the last dimension.
    LayerNorm {
        /// Scale `[F]`.
        gamma: String,
        /// Shift `[F]`.
        beta: String,
        /// Added to the variance.
        eps: f32,
    },
    /// Element-wise activation.
    Act {
        /// The function.
        kind: Activation,
    },
    /// Max pooling over the spatial dimensions (padding counts as minus infinity).
    MaxPool {
        /// Window per spatial dimension.
        kernel: Vec<usize>,
        /// Stride per spatial dimension.
        stride: Vec<usize>,
        /// Padding per spatial dimension.
        padding: Vec<usize>,
    },
    /// Average pooling; the divisor is the full window (padding counts as zeros, PyTorch's
    /// default `count_include_pad`).
    AvgPool {
        /// Window per spatial dimension.
        kernel: Vec<usize>,
        /// Stride per spatial dimension.
        stride: Vec<usize>,
        /// Padding per spatial dimension.
        padding: Vec<usize>,
    },
    /// Mean over all spatial dimensions: `[N, C, ...] -> [N, C]`.
    GlobalAvgPool,
    /// Element-wise sum of two tensors of the same shape, with an optional fused activation
    /// (a residual block's `relu(x + shortcut)` in one pass).
    Add {
        /// Activation applied to the sum (set by activation fusion).
        #[serde(default)]
        activation: Option<Activation>,
    },
    /// Element-wise product of two tensors of the same shape.
    Mul,
    /// Concatenation along `axis`.
    Concat {
        /// The axis.
        axis: usize,
    },
    /// Reshape; one entry may be `-1` (inferred). The batch dimension is included.
    Reshape {
        /// The new shape.
        shape: Vec<i64>,
    },
    /// Flattens dimensions `start..` into one.
    Flatten {
        /// First dimension flattened.
        start: usize,
    },
    /// Permutes dimensions.
    Transpose {
        /// `output dim i = input dim perm[i]`.
        perm: Vec<usize>,
    },
    /// Softmax along `axis`.
    Softmax {
        /// The axis.
        axis: usize,
    },
    /// Multiplies by a constant (attention's `1 / sqrt(d)`).
    Scale {
        /// The factor.
        factor: f32,
    },
    /// Table lookup: `[N, T]` ids (stored as f32) -> `[N, T, D]`.
    Embedding {
        /// Table `[vocab, D]`.
        table: String,
    },
    /// GRU over a batch-first sequence `[N, T, I]` (PyTorch gate order r, z, n).
    Gru {
        /// `[3H, I]`.
        w_ih: String,
        /// `[3H, H]`.
        w_hh: String,
        /// `[3H]`.
        b_ih: String,
        /// `[3H]`.
        b_hh: String,
        /// Hidden size H.
        hidden: usize,
        /// Output every step `[N, T, H]` instead of the last `[N, H]`.
        return_sequences: bool,
    },
    /// LSTM over a batch-first sequence `[N, T, I]` (PyTorch gate order i, f, g, o).
    Lstm {
        /// `[4H, I]`.
        w_ih: String,
        /// `[4H, H]`.
        w_hh: String,
        /// `[4H]`.
        b_ih: String,
        /// `[4H]`.
        b_hh: String,
        /// Hidden size H.
        hidden: usize,
        /// Output every step `[N, T, H]` instead of the last `[N, H]`.
        return_sequences: bool,
    },
}

impl Op {
    /// The op's name as written in files.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Conv { .. } => "conv",
            Op::Linear { .. } => "linear",
            Op::MatMul => "mat_mul",
            Op::BatchNorm { .. } => "batch_norm",
            Op::LayerNorm { .. } => "layer_norm",
            Op::Act { .. } => "act",
            Op::MaxPool { .. } => "max_pool",
            Op::AvgPool { .. } => "avg_pool",
            Op::GlobalAvgPool => "global_avg_pool",
            Op::Add { .. } => "add",
            Op::Mul => "mul",
            Op::Concat { .. } => "concat",
            Op::Reshape { .. } => "reshape",
            Op::Flatten { .. } => "flatten",
            Op::Transpose { .. } => "transpose",
            Op::Softmax { .. } => "softmax",
            Op::Scale { .. } => "scale",
            Op::Embedding { .. } => "embedding",
            Op::Gru { .. } => "gru",
            Op::Lstm { .. } => "lstm",
        }
    }

    /// Every op name, for error messages.
    pub const NAMES: [&'static str; 20] = [
        "conv",
        "linear",
        "mat_mul",
        "batch_norm",
        "layer_norm",
        "act",
        "max_pool",
        "avg_pool",
        "global_avg_pool",
        "add",
        "mul",
        "concat",
        "reshape",
        "flatten",
        "transpose",
        "softmax",
        "scale",
        "embedding",
        "gru",
        "lstm",
    ];

    /// Parameter names the op reads, in a fixed order.
    pub fn params(&self) -> Vec<&str> {
        match self {
            Op::Conv { weight, bias, .. } | Op::Linear { weight, bias, .. } => {
                std::iter::once(weight.as_str()).chain(bias.as_deref()).collect()
            }
            Op::BatchNorm { gamma, beta, mean, var, .. } => vec![gamma, beta, mean, var],
            Op::LayerNorm { gamma, beta, .. } => vec![gamma, beta],
            Op::Embedding { table } => vec![table],
            Op::Gru { w_ih, w_hh, b_ih, b_hh, .. } | Op::Lstm { w_ih, w_hh, b_ih, b_hh, .. } => {
                vec![w_ih, w_hh, b_ih, b_hh]
            }
            _ => Vec::new(),
        }
    }

    /// Number of activation inputs the op takes.
    pub fn arity(&self) -> usize {
        match self {
            Op::MatMul | Op::Add { .. } | Op::Mul => 2,
            Op::Concat { .. } => usize::MAX,
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_at_known_points() {
        assert_eq!(Activation::Relu.apply(-1.0), 0.0);
        assert_eq!(Activation::Relu6.apply(7.0), 6.0);
        assert_eq!(Activation::HardSwish.apply(1.0), 1.0 * 4.0 / 6.0);
        assert_eq!(Activation::HardSwish.apply(-4.0), 0.0);
        assert!((Activation::Sigmoid.apply(0.0) - 0.5).abs() < 1e-7);
        // GELU(1) = 0.5 (1 + erf(1/sqrt 2)) = 0.8413447460685429.
        assert!((Activation::Gelu.apply(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((Activation::Gelu.apply(-3.0) - (-0.004_049_83)).abs() < 1e-6);
        assert!((erf(0.5) - 0.520_499_877_813_046_5).abs() < 1e-12);
        assert!((erf(2.5) - 0.999_593_047_982_555).abs() < 1e-12);
        assert!((erf(-3.0) + 0.999_977_909_503_001).abs() < 1e-12);
        assert!(Activation::Tanh.preserves_zero() && !Activation::Sigmoid.preserves_zero());
    }

    #[test]
    fn ops_serialize_with_their_names() {
        let op = Op::Conv {
            weight: "w".into(),
            bias: None,
            stride: vec![1, 1],
            padding: vec![1, 1],
            dilation: vec![1, 1],
            groups: 1,
            activation: Some(Activation::Relu),
        };
        let json = serde_json::to_value(&op).unwrap();
        assert_eq!(json["op"], "conv");
        assert_eq!(serde_json::from_value::<Op>(json).unwrap(), op);
        for name in Op::NAMES {
            assert!(Op::NAMES.contains(&name));
        }
        assert_eq!(Op::Add { activation: None }.arity(), 2);
    }
}
