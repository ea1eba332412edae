//! Compact masks: one bit per weight, `1` = kept.
//!
//! A mask is a bitset over the flat GEMM-view index of a weight (`row * cols + col`). Bits past
//! `len` in the last word are always zero, so counting and equality need no special cases.

use serde::{Deserialize, Serialize};

use crate::error::{Result, SparsityError};

/// A set of kept weight positions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Mask {
    len: usize,
    words: Vec<u64>,
}

impl Mask {
    /// A mask of `len` positions, all pruned.
    pub fn zeros(len: usize) -> Self {
        Mask { len, words: vec![0; len.div_ceil(64)] }
    }

    /// A mask of `len` positions, all kept.
    pub fn ones(len: usize) -> Self {
        let mut m = Mask { len, words: vec![u64::MAX; len.div_ceil(64)] };
        m.clear_tail();
        m
    }

    /// A mask from booleans.
    pub fn from_bools(bits: &[bool]) -> Self {
        let mut m = Self::zeros(bits.len());
        for (i, &b) in bits.iter().enumerate() {
            if b {
                m.words[i / 64] |= 1 << (i % 64);
            }
        }
        m
    }

    /// The non-zero positions of `values` (the support).
    pub fn support_of(values: &[f32]) -> Self {
        let mut m = Self::zeros(values.len());
        for (i, &v) in values.iter().enumerate() {
            if v != 0.0 {
                m.words[i / 64] |= 1 << (i % 64);
            }
        }
        m
    }

    /// A mask with the given kept positions; positions `>= len` are an error.
    pub fn from_indices(len: usize, kept: impl IntoIterator<Item = usize>) -> Result<Self> {
        let mut m = Self::zeros(len);
        for i in kept {
            if i >= len {
                return Err(SparsityError::MaskLength { left: len, right: i + 1 });
            }
            m.words[i / 64] |= 1 << (i % 64);
        }
        Ok(m)
    }

    fn clear_tail(&mut self) {
        let r = self.len % 64;
        if r != 0
            && let Some(last) = self.words.last_mut()
        {
            *last &= (1u64 << r) - 1;
        }
    }

    /// Number of positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mask has no positions.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether position `i` is kept. Panics if `i >= len()`, like slice indexing.
    #[inline]
    pub fn get(&self, i: usize) -> bool {
        assert!(i < self.len, "mask index {i} out of range for length {}", self.len);
        self.words[i / 64] >> (i % 64) & 1 == 1
    }

    /// Keeps (`true`) or prunes position `i`. Panics if `i >= len()`.
    #[inline]
    pub fn set(&mut self, i: usize, kept: bool) {
        assert!(i < self.len, "mask index {i} out of range for length {}", self.len);
        let bit = 1u64 << (i % 64);
        if kept {
            self.words[i / 64] |= bit;
        } else {
            self.words[i / 64] &= !bit;
        }
    }

    /// Number of kept positions.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Fraction kept (1 for an empty mask).
    pub fn density(&self) -> f64 {
        if self.len == 0 { 1.0 } else { self.count() as f64 / self.len as f64 }
    }

    /// Fraction pruned.
    pub fn sparsity(&self) -> f64 {
        1.0 - self.density()
    }

    /// Kept positions in increasing order.
    pub fn iter_ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            let mut bits = w;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let t = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                Some(wi * 64 + t)
            })
        })
    }

    /// Positions kept in both masks.
    pub fn intersection(&self, other: &Mask) -> Result<Mask> {
        self.zip(other, |a, b| a & b)
    }

    /// Positions kept in either mask.
    pub fn union(&self, other: &Mask) -> Result<Mask> {
        self.zip(other, |a, b| a | b)
    }

    fn zip(&self, other: &Mask, f: impl Fn(u64, u64) -> u64) -> Result<Mask> {
        if self.len != other.len {
            return Err(SparsityError::MaskLength { left: self.len, right: other.len });
        }
        let words = self.words.iter().zip(&other.words).map(|(&a, &b)| f(a, b)).collect();
        Ok(Mask { len: self.len, words })
    }

    /// Whether every kept position of `self` is kept in `other`.
    pub fn is_subset_of(&self, other: &Mask) -> bool {
        self.len == other.len && self.words.iter().zip(&other.words).all(|(&a, &b)| a & !b == 0)
    }

    /// Zeroes the pruned positions of `values` in place.
    pub fn apply(&self, values: &mut [f32]) -> Result<()> {
        if values.len() != self.len {
            return Err(SparsityError::MaskLength { left: self.len, right: values.len() });
        }
        for (i, v) in values.iter_mut().enumerate() {
            if self.words[i / 64] >> (i % 64) & 1 == 0 {
                *v = 0.0;
            }
        }
        Ok(())
    }

    /// The mask as 0.0 / 1.0 floats (for multiplying tensors).
    pub fn to_f32(&self) -> Vec<f32> {
        (0..self.len).map(|i| if self.get(i) { 1.0 } else { 0.0 }).collect()
    }

    /// The raw words (bit `i % 64` of word `i / 64` is position `i`).
    pub fn words(&self) -> &[u64] {
        &self.words
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn basics() {
        let mut m = Mask::zeros(70);
        m.set(0, true);
        m.set(64, true);
        m.set(69, true);
        assert_eq!(m.count(), 3);
        assert_eq!(m.iter_ones().collect::<Vec<_>>(), vec![0, 64, 69]);
        m.set(64, false);
        assert_eq!(m.count(), 2);
        assert_eq!(Mask::ones(70).count(), 70);
        assert_eq!(Mask::ones(70).words()[1], (1 << 6) - 1);
        let mut v = vec![1.0f32; 70];
        m.apply(&mut v).unwrap();
        assert_eq!(v.iter().sum::<f32>(), 2.0);
        assert_eq!(Mask::support_of(&v), m);
        assert!(Mask::from_indices(3, [3]).is_err());
    }

    #[test]
    fn set_operations_check_lengths() {
        let a = Mask::from_bools(&[true, true, false]);
        let b = Mask::from_bools(&[false, true, true]);
        assert_eq!(a.intersection(&b).unwrap(), Mask::from_bools(&[false, true, false]));
        assert_eq!(a.union(&b).unwrap(), Mask::ones(3));
        assert!(a.union(&Mask::zeros(4)).is_err());
        assert!(a.intersection(&b).unwrap().is_subset_of(&a));
        assert!(!a.is_subset_of(&b));
    }

    #[test]
    fn serde_round_trip() {
        let m = Mask::from_bools(&[true, false, true, true]);
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Mask>(&json).unwrap(), m);
    }

    proptest! {
        #[test]
        fn matches_a_bool_vector(bits in proptest::collection::vec(any::<bool>(), 0..300)) {
            let m = Mask::from_bools(&bits);
            prop_assert_eq!(m.count(), bits.iter().filter(|&&b| b).count());
            for (i, &b) in bits.iter().enumerate() {
                prop_assert_eq!(m.get(i), b);
            }
            let ones: Vec<usize> = bits.iter().enumerate().filter(|(_, b)| **b).map(|(i, _)| i).collect();
            prop_assert_eq!(m.iter_ones().collect::<Vec<_>>(), ones);
        }
    }
}
