//! Layer geometry and the GEMM view every scheme is defined on.
//!
//! A weight is always seen as a row-major GEMM matrix `W[rows = out, cols = in_per_group x
//! kernel volume]`: a conv weight in PyTorch order (OIHW / OIDHW) is already that matrix, with
//! column `c * K + k` for in-group channel `c` and kernel position `k` (K = kh * kw or
//! kt * kh * kw). A linear layer is `[out, in]`. Grouped convolutions are `groups` independent
//! GEMMs stacked by rows: rows `g * out_per_group ..` only ever meet the input channels of group
//! `g`, so every scheme tiles each group's rows separately.

use serde::{Deserialize, Serialize};

use crate::error::{Result, SparsityError};

/// The shape of one prunable weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LayerGeometry {
    /// Fully connected: `W[out, in]` (also RNN gate matrices and attention projections).
    Linear {
        /// Output features.
        out_features: usize,
        /// Input features.
        in_features: usize,
    },
    /// 2-D convolution: `W[out, in / groups, kh, kw]`.
    Conv2d {
        /// Output channels.
        out_channels: usize,
        /// Input channels (all groups).
        in_channels: usize,
        /// Kernel height.
        kh: usize,
        /// Kernel width.
        kw: usize,
        /// Channel groups (1 = ordinary, `in_channels` = depthwise).
        groups: usize,
    },
    /// 3-D convolution: `W[out, in, kt, kh, kw]`.
    Conv3d {
        /// Output channels.
        out_channels: usize,
        /// Input channels.
        in_channels: usize,
        /// Kernel depth (time).
        kt: usize,
        /// Kernel height.
        kh: usize,
        /// Kernel width.
        kw: usize,
    },
}

impl LayerGeometry {
    /// Output channels / features: the GEMM rows.
    pub fn rows(&self) -> usize {
        match *self {
            LayerGeometry::Linear { out_features, .. } => out_features,
            LayerGeometry::Conv2d { out_channels, .. }
            | LayerGeometry::Conv3d { out_channels, .. } => out_channels,
        }
    }

    /// GEMM columns: input channels per group times the kernel volume.
    pub fn cols(&self) -> usize {
        self.in_per_group() * self.kernel_volume()
    }

    /// Number of weights.
    pub fn len(&self) -> usize {
        self.rows() * self.cols()
    }

    /// Whether the weight is empty (never true for a validated geometry).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Channel groups (1 except for grouped 2-D convolutions).
    pub fn groups(&self) -> usize {
        match *self {
            LayerGeometry::Conv2d { groups, .. } => groups,
            _ => 1,
        }
    }

    /// Input channels (features) seen by each group.
    pub fn in_per_group(&self) -> usize {
        match *self {
            LayerGeometry::Linear { in_features, .. } => in_features,
            LayerGeometry::Conv2d { in_channels, groups, .. } => in_channels / groups.max(1),
            LayerGeometry::Conv3d { in_channels, .. } => in_channels,
        }
    }

    /// Output channels in each group.
    pub fn out_per_group(&self) -> usize {
        self.rows() / self.groups().max(1)
    }

    /// Kernel positions per (filter, channel) pair: 1, kh*kw or kt*kh*kw.
    pub fn kernel_volume(&self) -> usize {
        match *self {
            LayerGeometry::Linear { .. } => 1,
            LayerGeometry::Conv2d { kh, kw, .. } => kh * kw,
            LayerGeometry::Conv3d { kt, kh, kw, .. } => kt * kh * kw,
        }
    }

    /// Multiply-accumulates per output position (per token for linear layers): `rows * cols`.
    pub fn macs_per_position(&self) -> u64 {
        self.len() as u64
    }

    /// Dense FLOPs (2 per MAC) for `positions` output positions.
    pub fn flops(&self, positions: u64) -> u64 {
        2 * self.macs_per_position() * positions
    }

    /// Checks the dimensions; `layer` names the layer in the error.
    pub fn validate(&self, layer: &str) -> Result<()> {
        let bad =
            |reason: String| Err(SparsityError::InvalidGeometry { layer: layer.into(), reason });
        let dims: Vec<usize> = match *self {
            LayerGeometry::Linear { out_features, in_features } => vec![out_features, in_features],
            LayerGeometry::Conv2d { out_channels, in_channels, kh, kw, groups } => {
                if groups == 0 {
                    return bad("groups must be at least 1".into());
                }
                if in_channels % groups != 0 || out_channels % groups != 0 {
                    return bad(format!(
                        "{in_channels} input and {out_channels} output channels must both be divisible by {groups} groups"
                    ));
                }
                vec![out_channels, in_channels, kh, kw]
            }
            LayerGeometry::Conv3d { out_channels, in_channels, kt, kh, kw } => {
                vec![out_channels, in_channels, kt, kh, kw]
            }
        };
        if dims.contains(&0) {
            return bad(format!("every dimension must be non-zero, got {self:?}"));
        }
        if self.len() > u32::MAX as usize {
            return bad(format!("{} weights exceed the 2^32 index range", self.len()));
        }
        Ok(())
    }
}

/// A named layer: its geometry and, for FLOP counts, how many output positions it computes
/// per input (H_out * W_out for a 2-D conv, T * H * W for 3-D, tokens for linear layers).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Layer {
    /// Path of the layer in its model, e.g. `"features.3.conv"`; errors name it.
    pub name: String,
    /// Shape of the weight.
    pub geometry: LayerGeometry,
    /// Output positions per inference (1 for a linear layer applied once).
    pub output_positions: u64,
}

impl Layer {
    /// A validated layer.
    pub fn new(name: impl Into<String>, geometry: LayerGeometry) -> Result<Self> {
        let name = name.into();
        geometry.validate(&name)?;
        Ok(Layer { name, geometry, output_positions: 1 })
    }

    /// A linear layer `W[out, in]`.
    pub fn linear(
        name: impl Into<String>,
        out_features: usize,
        in_features: usize,
    ) -> Result<Self> {
        Self::new(name, LayerGeometry::Linear { out_features, in_features })
    }

    /// An ungrouped 2-D convolution `W[out, in, kh, kw]`.
    pub fn conv2d(
        name: impl Into<String>,
        out_channels: usize,
        in_channels: usize,
        kh: usize,
        kw: usize,
    ) -> Result<Self> {
        Self::new(name, LayerGeometry::Conv2d { out_channels, in_channels, kh, kw, groups: 1 })
    }

    /// A 3-D convolution `W[out, in, kt, kh, kw]`.
    pub fn conv3d(
        name: impl Into<String>,
        out_channels: usize,
        in_channels: usize,
        kt: usize,
        kh: usize,
        kw: usize,
    ) -> Result<Self> {
        Self::new(name, LayerGeometry::Conv3d { out_channels, in_channels, kt, kh, kw })
    }

    /// The same layer with `groups` channel groups (2-D convolutions only).
    pub fn with_groups(self, groups: usize) -> Result<Self> {
        match self.geometry {
            LayerGeometry::Conv2d { out_channels, in_channels, kh, kw, .. } => Self::new(
                self.name,
                LayerGeometry::Conv2d { out_channels, in_channels, kh, kw, groups },
            )
            .map(|l| Layer { output_positions: self.output_positions, ..l }),
            _ => Err(SparsityError::InvalidGeometry {
                layer: self.name,
                reason: "only 2-D convolutions have channel groups".into(),
            }),
        }
    }

    /// The same layer computing `positions` output positions per inference.
    pub fn with_output_positions(mut self, positions: u64) -> Self {
        self.output_positions = positions;
        self
    }

    /// Dense FLOPs per inference.
    pub fn dense_flops(&self) -> u64 {
        self.geometry.flops(self.output_positions)
    }

    /// Checks that `weights` has one value per weight of the layer, all finite.
    pub fn check_weights(&self, weights: &[f32]) -> Result<()> {
        let expected = self.geometry.len();
        if weights.len() != expected {
            return Err(SparsityError::LengthMismatch {
                layer: self.name.clone(),
                what: "weights",
                expected,
                found: weights.len(),
            });
        }
        if let Some((index, &value)) = weights.iter().enumerate().find(|(_, w)| !w.is_finite()) {
            return Err(SparsityError::NonFinite { layer: self.name.clone(), index, value });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_view_of_each_kind() {
        let fc = Layer::linear("fc", 10, 84).unwrap();
        assert_eq!((fc.geometry.rows(), fc.geometry.cols()), (10, 84));
        let conv = Layer::conv2d("c", 64, 32, 3, 3).unwrap().with_output_positions(56 * 56);
        assert_eq!((conv.geometry.rows(), conv.geometry.cols()), (64, 288));
        assert_eq!(conv.dense_flops(), 2 * 64 * 288 * 56 * 56);
        let dw = Layer::conv2d("dw", 32, 32, 3, 3).unwrap().with_groups(32).unwrap();
        assert_eq!(
            (dw.geometry.rows(), dw.geometry.cols(), dw.geometry.out_per_group()),
            (32, 9, 1)
        );
        let c3 = Layer::conv3d("c3", 128, 64, 3, 3, 3).unwrap();
        assert_eq!((c3.geometry.cols(), c3.geometry.kernel_volume()), (64 * 27, 27));
    }

    #[test]
    fn invalid_geometries_name_the_layer() {
        let err = Layer::conv2d("bad", 30, 32, 3, 3).unwrap().with_groups(4).unwrap_err();
        assert!(err.to_string().contains("`bad`"), "{err}");
        assert!(Layer::linear("z", 0, 3).is_err());
        assert!(Layer::linear("fc", 3, 3).unwrap().with_groups(2).is_err());
        let l = Layer::linear("fc", 2, 2).unwrap();
        assert!(matches!(l.check_weights(&[0.0; 3]), Err(SparsityError::LengthMismatch { .. })));
        assert!(matches!(
            l.check_weights(&[0.0, f32::NAN, 1.0, 2.0]),
            Err(SparsityError::NonFinite { index: 1, .. })
        ));
    }
}
