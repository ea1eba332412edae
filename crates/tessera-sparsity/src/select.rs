//! Deterministic top-n selection, the workhorse of every exact projection.
//!
//! When all candidate groups have the same size, the Euclidean projection onto "keep at most n
//! groups" keeps the n groups with the largest energy (sum of squares): the error is the total
//! energy minus the kept energy. Ties are broken by the lower index so results never depend
//! on the sort algorithm. Selection is O(len) (`select_nth_unstable_by`), not a full sort.

use std::cmp::Ordering;

/// Orders candidates by descending score, then ascending index.
#[inline]
fn better(scores: &[f64], a: u32, b: u32) -> Ordering {
    scores[b as usize].partial_cmp(&scores[a as usize]).unwrap_or(Ordering::Equal).then(a.cmp(&b))
}

/// Indices of the `n` best candidates (largest score, lowest index on ties), in increasing index
/// order. `n` larger than the candidate count keeps all.
pub(crate) fn top_n(scores: &[f64], n: usize) -> Vec<u32> {
    let len = scores.len();
    if n >= len {
        return (0..len as u32).collect();
    }
    if n == 0 {
        return Vec::new();
    }
    let mut idx: Vec<u32> = (0..len as u32).collect();
    idx.select_nth_unstable_by(n - 1, |&a, &b| better(scores, a, b));
    idx.truncate(n);
    idx.sort_unstable();
    idx
}

/// Like [`top_n`], but among the candidates `range` of `scores` only, returning indices
/// relative to the start of the range. Used for per-bucket (balanced) selection.
pub(crate) fn top_n_in(scores: &[f64], n: usize, buf: &mut Vec<u32>) {
    buf.clear();
    let len = scores.len();
    buf.extend(0..len as u32);
    if n < len {
        if n == 0 {
            buf.clear();
            return;
        }
        buf.select_nth_unstable_by(n - 1, |&a, &b| better(scores, a, b));
        buf.truncate(n);
    }
    buf.sort_unstable();
}

/// Sum of squares in f64 (energies are accumulated in f64 so that large groups do not lose
/// the small contributions that decide close calls).
#[inline]
pub(crate) fn energy(values: impl IntoIterator<Item = f32>) -> f64 {
    values.into_iter().map(|v| f64::from(v) * f64::from(v)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_largest_with_index_tiebreak() {
        let s = [1.0, 5.0, 3.0, 5.0, 0.0];
        assert_eq!(top_n(&s, 2), vec![1, 3]);
        assert_eq!(top_n(&s, 3), vec![1, 2, 3]);
        assert_eq!(top_n(&[2.0, 2.0, 2.0], 2), vec![0, 1]);
        assert_eq!(top_n(&s, 0), Vec::<u32>::new());
        assert_eq!(top_n(&s, 9), vec![0, 1, 2, 3, 4]);
        let mut buf = Vec::new();
        top_n_in(&s[1..4], 1, &mut buf);
        assert_eq!(buf, vec![0]);
    }
}
