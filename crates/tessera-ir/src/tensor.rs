//! Dense f32 tensors (row-major) and graph parameters with their sparsity annotations.

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use tessera_sparsity::{Mask, Scheme};

/// A row-major f32 tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values.
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor; `data.len()` must equal the product of `shape` (checked by graph validation).
    pub fn new(shape: impl Into<Vec<usize>>, data: Vec<f32>) -> Self {
        Tensor { shape: shape.into(), data }
    }

    /// All zeros.
    pub fn zeros(shape: impl Into<Vec<usize>>) -> Self {
        let shape = shape.into();
        let n = shape.iter().product();
        Tensor { shape, data: vec![0.0; n] }
    }

    /// Seeded uniform values in `[-scale, scale)` (ChaCha8: the same seed gives the same bits).
    pub fn uniform(shape: impl Into<Vec<usize>>, scale: f32, seed: u64) -> Self {
        let shape = shape.into();
        let n: usize = shape.iter().product();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Tensor { shape, data: (0..n).map(|_| rng.random_range(-scale..scale)).collect() }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the tensor holds no values.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Whether `data` matches `shape`.
    pub fn is_consistent(&self) -> bool {
        self.shape.iter().product::<usize>() == self.data.len()
    }
}

/// How a weight is pruned: its scheme and the mask of kept positions (GEMM view, row-major,
/// which for OIHW conv weights and `[out, in]` linear weights is the tensor's own order).
#[derive(Debug, Clone, PartialEq)]
pub struct Sparsity {
    /// The scheme that produced the mask.
    pub scheme: Scheme,
    /// Kept positions.
    pub mask: Mask,
}

/// A named parameter of a graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// The values.
    pub tensor: Tensor,
    /// Present for pruned weights.
    pub sparsity: Option<Sparsity>,
}

impl Param {
    /// A dense parameter.
    pub fn dense(tensor: Tensor) -> Self {
        Param { tensor, sparsity: None }
    }

    /// A pruned parameter; values outside the mask are zeroed.
    pub fn pruned(mut tensor: Tensor, scheme: Scheme, mask: Mask) -> Self {
        for (i, v) in tensor.data.iter_mut().enumerate() {
            if i < mask.len() && !mask.get(i) {
                *v = 0.0;
            }
        }
        Param { tensor, sparsity: Some(Sparsity { scheme, mask }) }
    }

    /// Kept values: the mask's count, or the non-zeros of a dense parameter.
    pub fn kept(&self) -> usize {
        match &self.sparsity {
            Some(s) => s.mask.count(),
            None => self.tensor.data.iter().filter(|v| **v != 0.0).count(),
        }
    }
}
