//! Groups of weight positions: the index sets a scheme prunes together.
//!
//! [`Groups`] is a CSR-style list of index sets over the flat GEMM-view weight index. It serves
//! two purposes: group-lasso style regularizers iterate over it, and the selection schemes
//! (everything from filter to KGS) project by keeping the groups with the most energy. All
//! groups of a selection scheme have the same *nominal* size (padding included), which is what
//! makes greedy top-n selection the exact projection onto "keep at most n groups".

use crate::geometry::LayerGeometry;

/// Index sets over a weight's flat positions, optionally assigned to buckets (a balanced
/// scheme keeps the same number of groups in every bucket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Groups {
    offsets: Vec<usize>,
    indices: Vec<u32>,
    nominal_size: usize,
    buckets: Option<Vec<u32>>,
    num_buckets: usize,
}

impl Groups {
    pub(crate) fn with_capacity(groups: usize, indices: usize, nominal_size: usize) -> Self {
        let mut offsets = Vec::with_capacity(groups + 1);
        offsets.push(0);
        Groups {
            offsets,
            indices: Vec::with_capacity(indices),
            nominal_size,
            buckets: None,
            num_buckets: 0,
        }
    }

    /// Appends a group with the given positions.
    pub(crate) fn push(&mut self, positions: impl IntoIterator<Item = usize>) {
        self.indices.extend(positions.into_iter().map(|p| p as u32));
        self.offsets.push(self.indices.len());
    }

    /// Appends a group and records its bucket.
    pub(crate) fn push_in_bucket(
        &mut self,
        bucket: usize,
        positions: impl IntoIterator<Item = usize>,
    ) {
        self.push(positions);
        let b = self.buckets.get_or_insert_with(Vec::new);
        b.push(bucket as u32);
        self.num_buckets = self.num_buckets.max(bucket + 1);
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Whether there are no groups.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The positions of group `i`. Panics if `i >= len()`.
    pub fn group(&self, i: usize) -> &[u32] {
        &self.indices[self.offsets[i]..self.offsets[i + 1]]
    }

    /// Every group in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u32]> + '_ {
        self.offsets.windows(2).map(|w| &self.indices[w[0]..w[1]])
    }

    /// Size a group counts for against a budget: the full block size, even for edge blocks
    /// shortened by padding.
    pub fn nominal_size(&self) -> usize {
        self.nominal_size
    }

    /// Bucket of each group, for balanced schemes.
    pub fn buckets(&self) -> Option<&[u32]> {
        self.buckets.as_deref()
    }

    /// Number of buckets (0 when the scheme is not balanced).
    pub fn num_buckets(&self) -> usize {
        self.num_buckets
    }

    /// Energy (sum of squares) of every group of `weights`.
    pub(crate) fn energies(&self, weights: &[f32]) -> Vec<f64> {
        self.iter().map(|g| crate::select::energy(g.iter().map(|&i| weights[i as usize]))).collect()
    }

    /// L2 norm of every group of `weights`.
    pub fn norms(&self, weights: &[f32]) -> Vec<f32> {
        self.energies(weights).into_iter().map(|e| e.sqrt() as f32).collect()
    }
}

/// Row ranges of the GEMM view split into blocks of `br` rows that never cross a channel-group
/// boundary. Edge blocks are shorter when `out_per_group % br != 0` (padding).
pub(crate) fn row_blocks(g: &LayerGeometry, br: usize) -> Vec<(usize, std::ops::Range<usize>)> {
    let opg = g.out_per_group();
    let mut out = Vec::new();
    for group in 0..g.groups() {
        let base = group * opg;
        let mut r = 0;
        while r < opg {
            let end = (r + br).min(opg);
            out.push((group, base + r..base + end));
            r = end;
        }
    }
    out
}

/// Ranges `[0, n)` split into chunks of `size` (the last one shorter when padding).
pub(crate) fn chunks(n: usize, size: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..n.div_ceil(size)).map(move |i| i * size..((i + 1) * size).min(n))
}
