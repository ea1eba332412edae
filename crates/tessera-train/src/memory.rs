//! Training memory as a sparse trainer stores it, next to dense.
//!
//! A sparse-to-sparse trainer (MEST's premise) keeps each sparse layer in a compressed format:
//! one index structure, and value arrays for the weights, their gradients and every optimizer
//! slot (momentum for SGD, two moments for Adam) that share it. The index bytes come from
//! tessera-kernels' encoders of the layer's actual mask (CSR for unstructured, BSR for block,
//! the block-punched format, FKW for pattern + connectivity), so a structured scheme's smaller
//! index shows up. Dense layers (stem, shortcuts, classifier, batch norm) are dense in both
//! columns. Our burn training keeps dense tensors with masks, so these are the footprints a
//! sparse trainer *would* have, computed exactly from the masks; the process's measured peak
//! RSS is reported separately ([`peak_rss_bytes`]).

use serde::{Deserialize, Serialize};
use tessera_kernels::formats::ByteSize;
use tessera_kernels::formats::block_punched::BlockPunched;
use tessera_kernels::formats::bsr::Bsr;
use tessera_kernels::formats::csr::Csr;
use tessera_kernels::formats::fkw::Fkw;
use tessera_models::train::OptimizerConfig;
use tessera_sparsity::{Mask, PatternScheme, Scheme};

use crate::error::Result;
use crate::mutation::SparseLayer;

const F32: usize = 4;

/// One sparse layer's storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerFootprint {
    /// Weight path.
    pub path: String,
    /// Dense weight count.
    pub weights: usize,
    /// Kept weights.
    pub kept: usize,
    /// Storage format.
    pub format: String,
    /// One copy of the values plus the index.
    pub storage: ByteSize,
    /// Weights + gradients + optimizer state, sparse.
    pub sparse_bytes: usize,
    /// The same, dense.
    pub dense_bytes: usize,
}

/// The whole model's training footprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Footprint {
    /// Sparse layers.
    pub layers: Vec<LayerFootprint>,
    /// Parameters outside the sparse layers (dense in both columns).
    pub other_params: usize,
    /// Optimizer values per weight (SGD momentum 1, Adam 2, plain SGD 0).
    pub optimizer_slots: usize,
    /// Weights + gradients + optimizer state of the whole model, dense.
    pub dense_bytes: usize,
    /// The same with the sparse layers stored sparse.
    pub sparse_bytes: usize,
}

impl Footprint {
    /// `sparse_bytes / dense_bytes`.
    pub fn ratio(&self) -> f64 {
        self.sparse_bytes as f64 / self.dense_bytes.max(1) as f64
    }
}

/// Values kept per weight by `optimizer`.
pub fn optimizer_slots(optimizer: &OptimizerConfig) -> usize {
    match optimizer {
        OptimizerConfig::Sgd { momentum, .. } => usize::from(*momentum > 0.0),
        OptimizerConfig::Adam { .. } => 2,
    }
}

/// One copy of `mask`'s layer in the format its scheme runs in.
pub fn storage(layer: &SparseLayer, mask: &Mask) -> Result<(String, ByteSize)> {
    let g = &layer.layer.geometry;
    // Byte counts depend only on the structure: encode the mask itself.
    let ones = mask.to_f32();
    Ok(match &layer.scheme {
        Scheme::Block { block, .. } => (
            format!("bsr {}x{}", block.rows(), block.cols()),
            Bsr::encode(&layer.layer, &ones, mask, block.rows(), block.cols())?.bytes(),
        ),
        Scheme::BlockPunched { block, .. } => (
            format!("block-punched {}x{}", block.rows(), block.cols()),
            BlockPunched::encode(&layer.layer, &ones, mask, block.rows(), block.cols())?.bytes(),
        ),
        Scheme::Pattern(PatternScheme { library: Some(library), .. }) => {
            ("fkw".into(), Fkw::encode(&layer.layer, &ones, mask, library)?.bytes())
        }
        _ => ("csr".into(), Csr::encode(g.rows(), g.cols(), &ones, mask)?.bytes()),
    })
}

/// The footprint of a model with `total_params` parameters whose `layers` have `masks`.
pub fn footprint(
    layers: &[SparseLayer],
    masks: &[Mask],
    total_params: usize,
    optimizer_slots: usize,
) -> Result<Footprint> {
    let copies = 2 + optimizer_slots;
    let mut out = Vec::with_capacity(layers.len());
    let mut sparse_weights = 0;
    for (l, m) in layers.iter().zip(masks) {
        let (format, storage) = storage(l, m)?;
        sparse_weights += l.len();
        out.push(LayerFootprint {
            path: l.path.clone(),
            weights: l.len(),
            kept: m.count(),
            format,
            storage,
            sparse_bytes: storage.index + storage.values * copies,
            dense_bytes: l.len() * F32 * copies,
        });
    }
    let other = total_params.saturating_sub(sparse_weights);
    Ok(Footprint {
        other_params: other,
        optimizer_slots,
        dense_bytes: total_params * F32 * copies,
        sparse_bytes: out.iter().map(|l| l.sparse_bytes).sum::<usize>() + other * F32 * copies,
        layers: out,
    })
}

/// The process's peak resident set size (Linux `VmHWM`), if the platform reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use tessera_sparsity::Layer;

    use super::*;

    /// Hand count: a 16 x 36 linear layer, unstructured, 58 kept. CSR stores 58 values
    /// (232 bytes) and 58 column indices + 17 row pointers (u32: 300 bytes). With SGD momentum
    /// the sparse layer holds 3 x 232 + 300 = 996 bytes against 3 x 576 x 4 = 6912 dense; 100
    /// other parameters add 1200 bytes to both.
    #[test]
    fn csr_footprint_by_hand() -> anyhow::Result<()> {
        let layer = Layer::linear("fc", 16, 36)?;
        let l = SparseLayer::new("fc", layer, Scheme::Unstructured)?;
        let mask = Mask::from_indices(576, (0..58).map(|i| i * 9))?;
        let (format, s) = storage(&l, &mask)?;
        assert_eq!(format, "csr");
        assert_eq!(s.values, 232);
        let f = footprint(&[l], &[mask], 676, 1)?;
        assert_eq!(f.layers[0].sparse_bytes, 3 * 232 + s.index);
        assert_eq!(f.dense_bytes, 676 * 12);
        assert_eq!(f.sparse_bytes, 3 * 232 + s.index + 1200);
        assert_eq!(s.index, 4 * (17 + 58));
        Ok(())
    }

    /// Block storage needs far less index than CSR for the same kept count.
    #[test]
    fn block_index_is_smaller_than_csr() -> anyhow::Result<()> {
        let layer = Layer::conv2d("c", 16, 16, 3, 3)?;
        let w: Vec<f32> =
            (0..layer.geometry.len()).map(|i| ((i * 37 % 101) as f32) - 50.0).collect();
        let block = SparseLayer::new("c", layer.clone(), "block:4x1".parse()?)?;
        let m = block.keep_top(&w, block.units_at(0.1)?)?;
        let unstructured = SparseLayer::new("c", layer, Scheme::Unstructured)?;
        let (_, b) = storage(&block, &m)?;
        let (_, c) = storage(&unstructured, &m)?;
        assert_eq!(b.values, c.values);
        assert!(b.index * 2 < c.index, "bsr {b:?} csr {c:?}");
        Ok(())
    }

    #[test]
    fn reads_peak_rss_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes().is_some_and(|b| b > 1 << 20));
        }
    }
}
