//! Stores of an output tile: the epilogue (bias, fused residual, clamp activation) applied in
//! registers, then plain stores or the tile plan's masked stores per segment.

use super::tile_plan::{Seg, Split};
use crate::simd::Simd;

/// What a kernel applies to each output value before storing it:
/// `act(y + bias[row] + residual[same index])`. Fusing bias and activation saves a pass over
/// the output (measured within noise on ResNet-20's layers at 8x, whose time goes to the
/// tile loop and masked stores, not to that pass); fusing a residual add saves a whole
/// elementwise step (read two tensors, write one).
#[derive(Debug, Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// One value per output channel.
    pub bias: Option<&'a [f32]>,
    /// The activation.
    pub clamp: Clamp,
    /// A tensor laid out as the output (the row-group engine, BCR and FKW: as the output
    /// target, or as the residual layout set on the kernel, e.g.
    /// `RowGroupConv::set_residual_layout`; plain `[out, positions]` elsewhere), added
    /// before the activation. Kernels that cannot add it refuse it with an error.
    pub residual: Option<&'a [f32]>,
}

/// Activations a kernel can fuse (the piecewise-linear ones: a max and a min).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Clamp {
    /// None.
    #[default]
    None,
    /// `max(y, 0)`.
    Relu,
    /// `min(max(y, 0), 6)`.
    Relu6,
}

impl Clamp {
    /// The activation of one value.
    pub fn apply(self, v: f32) -> f32 {
        match self {
            Clamp::None => v,
            Clamp::Relu => v.max(0.0),
            Clamp::Relu6 => v.clamp(0.0, 6.0),
        }
    }

    /// `(lo, hi)` with `apply_vec(v) = min(max(v, lo), hi)` for a clamping activation
    /// (`Relu`, `Relu6`; with `max(v, lo)` first, a NaN becomes `lo` in both).
    #[inline(always)]
    pub(crate) unsafe fn bounds<S: Simd>(self) -> (S::V, S::V) {
        let (lo, hi) = match self {
            Clamp::None => (f32::NEG_INFINITY, f32::INFINITY),
            Clamp::Relu => (0.0, f32::INFINITY),
            Clamp::Relu6 => (0.0, 6.0),
        };
        // SAFETY: register arithmetic at the caller's instruction set.
        unsafe { (S::splat(lo), S::splat(hi)) }
    }

    /// The clamp as a const parameter of a store ([`clamp_as`]): 0 none, 1 `max` only (ReLU),
    /// 2 `max` then `min` (ReLU6).
    #[inline(always)]
    pub(crate) fn kind(self) -> u8 {
        match self {
            Clamp::None => 0,
            Clamp::Relu => 1,
            Clamp::Relu6 => 2,
        }
    }

    /// The activation of a vector (a plain function of the kernels' instruction set, so it
    /// inlines into their loops).
    #[inline(always)]
    pub(crate) unsafe fn apply_vec<S: Simd>(self, v: S::V) -> S::V {
        // SAFETY: register arithmetic at the caller's instruction set.
        unsafe {
            match self {
                Clamp::None => v,
                Clamp::Relu => S::max(v, S::zero()),
                Clamp::Relu6 => S::min(S::max(v, S::zero()), S::splat(6.0)),
            }
        }
    }
}

/// `min(max(x, lo), hi)` with clamp kind `K` ([`Clamp::kind`]) and `(lo, hi)` from
/// [`Clamp::bounds`]: ReLU's `min` with +inf is left out, since every vector op of an epilogue
/// takes an AVX-512 FMA port (a `min` a vector was 16 of a 16@32x32 block-punched tile's ~50
/// epilogue ops). The same value as the full clamp (`max(NaN, lo)` is `lo` either way).
///
/// # Safety
/// Register arithmetic at the caller's instruction set.
#[inline(always)]
pub(crate) unsafe fn clamp_as<S: Simd, const K: u8>(x: S::V, lo: S::V, hi: S::V) -> S::V {
    // SAFETY: caller's contract.
    unsafe {
        match K {
            0 => x,
            1 => S::max(x, lo),
            _ => S::min(S::max(x, lo), hi),
        }
    }
}

/// `RT` rows of `V` whole vectors to a plain output (`out.y`, rows `out.stride` apart, vectors
/// `ys` apart): `clamp(acc + residual)` (the micro-kernel starts its accumulators at the
/// bias), each part only with its flag, in the order and with the operations of
/// [`store_row_residual`], so the bits are its (the residual from `res`, rows `out.rstride`
/// and vectors `out.rstep` apart).
///
/// # Safety
/// As [`super::micro`]'s plain-store path: every stored vector is writable; with `RES`, `res` is
/// readable wherever a vector is stored.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn store_whole<
    S: Simd,
    const RT: usize,
    const V: usize,
    const RES: bool,
    const CLAMP: u8,
>(
    acc: &[[S::V; V]; RT],
    out: &Out<'_>,
    ys: isize,
    res: *const f32,
    clamp: Clamp,
) {
    // SAFETY: caller's contract.
    unsafe {
        let (lo, hi) = clamp.bounds::<S>();
        for (rr, a) in acc.iter().enumerate() {
            let yp = out.y.add(rr * out.stride);
            let rp = res.wrapping_add(rr * out.rstride);
            for (v, &av) in a.iter().enumerate() {
                let at = v as isize * ys;
                let x =
                    if RES { S::add(av, S::load(rp.offset(v as isize * out.rstep))) } else { av };
                let x = clamp_as::<S, CLAMP>(x, lo, hi);
                S::store(yp.offset(at), x);
            }
        }
    }
}

/// An [`Epilogue`] positioned at a tile's first row.
pub(crate) struct RowEpilogue {
    pub(crate) bias: Option<*const f32>,
    pub(crate) clamp: Clamp,
    /// The residual at the tile's first row and position (addressed as `Out::rstride`,
    /// `Out::rstep` and the segments' `rdelta` say).
    pub(crate) residual: Option<*const f32>,
}

impl RowEpilogue {
    /// Applies bias and activation to row `rr`'s accumulators (the activation only without a
    /// residual: then [`store_row_residual`] adds it and clamps at the store).
    ///
    /// # Safety
    /// `bias` (when present) must hold a value for row `rr`.
    #[inline(always)]
    pub(crate) unsafe fn apply<S: Simd, const V: usize>(&self, rr: usize, a: &mut [S::V; V]) {
        if let Some(b) = self.bias {
            let bv = S::splat(*b.add(rr));
            for av in a.iter_mut() {
                *av = S::add(*av, bv);
            }
        }
        if self.residual.is_some() {
            return;
        }
        for av in a.iter_mut() {
            *av = self.clamp.apply_vec::<S>(*av);
        }
    }
}

/// Stores one output row of a tile, `a`, with `ep` applied: the bias of output row `row`,
/// then the residual and the clamp. The residual's row starts `roffset` floats from its start
/// (where the output's is, unless the kernel has a residual layout of its own), its vectors
/// and segments as `out` says. For kernels that keep their tile outside registers (BCR's band
/// tile, FKW's partial sums) and store it a row at a time.
///
/// # Safety
/// As [`store_row`] for row 0 of `out`; `ep`'s bias holds a value for `row` and its residual
/// is readable wherever `out` writes.
#[inline(always)]
pub(crate) unsafe fn store_row_fused<S: Simd, const V: usize, const FULL: bool>(
    out: &Out<'_>,
    roffset: isize,
    row: usize,
    a: &[S::V; V],
    ep: &Epilogue<'_>,
) {
    let mut a = *a;
    let row_ep = RowEpilogue {
        bias: ep.bias.map(|b| b.as_ptr().add(row)),
        clamp: ep.clamp,
        residual: ep.residual.map(|r| r.as_ptr().wrapping_offset(roffset)),
    };
    row_ep.apply::<S, V>(0, &mut a);
    match row_ep.residual {
        Some(res) => store_row_residual::<S, V, FULL>(out, 0, &a, res, ep.clamp),
        None => store_row::<S, V, FULL>(out, 0, &a),
    }
}

/// Stores row `rr` of a tile: plain stores when `out` has no segments (the flat grid is the
/// output), the tile plan's masked (or compress) stores otherwise.
///
/// # Safety
/// Every address `out` selects for row `rr` must be writable.
#[inline(always)]
pub(crate) unsafe fn store_row<S: Simd, const V: usize, const FULL: bool>(
    out: &Out<'_>,
    rr: usize,
    a: &[S::V; V],
) {
    let l = S::LANES;
    let n = out.n;
    let yp = out.y.wrapping_add(rr * out.stride);
    if let Some(pair) = out.pair {
        store_pair::<S>(yp, a[0], a[V - 1], V == 2, pair);
    } else if out.segs.is_empty() {
        for (v, &av) in a.iter().enumerate() {
            let at = yp.offset(v as isize * out.step);
            if FULL {
                S::store(at, av);
            } else {
                let rem = n.saturating_sub(v * l);
                if rem > 0 {
                    S::store_partial(at, av, rem.min(l));
                }
            }
        }
    } else {
        // Static vector indices only: indexing `a` at run time would force the accumulators
        // out of registers for the whole entry loop. Segments are in vector order (the plan
        // builds them so), so one walk serves all vectors (filtering all segments per vector
        // cost O(V x segments): most of an 8-vector depthwise tile's time).
        let mut k = 0;
        for (v, &av) in a.iter().enumerate() {
            while let Some(seg) = out.segs.get(k).filter(|s| s.v as usize == v) {
                let p = yp.wrapping_offset(seg.delta as isize).wrapping_add(v * l);
                if seg.compress {
                    S::store_compressed(p, av, seg.mask);
                } else {
                    S::store_masked(p, av, seg.mask);
                }
                k += 1;
            }
        }
    }
}

/// [`store_row`] adding the residual (`res` at the tile's first row and position, rows
/// `out.rstride`, vectors `out.rstep` apart, segments at their `rdelta`) and clamping, per
/// stored vector or segment: each segment's residual is a masked load under the segment's
/// store mask.
///
/// # Safety
/// As [`store_row`]; the residual must be readable wherever `out` writes row `rr`.
#[inline(always)]
pub(crate) unsafe fn store_row_residual<S: Simd, const V: usize, const FULL: bool>(
    out: &Out<'_>,
    rr: usize,
    a: &[S::V; V],
    res: *const f32,
    clamp: Clamp,
) {
    let l = S::LANES;
    let n = out.n;
    let yp = out.y.wrapping_add(rr * out.stride);
    let rp = res.wrapping_add(rr * out.rstride);
    if let Some(pair) = out.pair {
        let r1 = rp.offset((V - 1) as isize * out.rstep);
        let a0 = clamp.apply_vec::<S>(S::add(a[0], S::load(rp)));
        let a1 = clamp.apply_vec::<S>(S::add(a[V - 1], S::load(r1)));
        store_pair::<S>(yp, a0, a1, V == 2, pair);
    } else if out.segs.is_empty() {
        for (v, &av) in a.iter().enumerate() {
            let (at, rat) = (yp.offset(v as isize * out.step), rp.offset(v as isize * out.rstep));
            if FULL {
                S::store(at, clamp.apply_vec::<S>(S::add(av, S::load(rat))));
            } else {
                let rem = n.saturating_sub(v * l);
                if rem > 0 {
                    let r = S::load_partial(rat, rem.min(l));
                    S::store_partial(at, clamp.apply_vec::<S>(S::add(av, r)), rem.min(l));
                }
            }
        }
    } else {
        let mut k = 0;
        for (v, &av) in a.iter().enumerate() {
            while let Some(seg) = out.segs.get(k).filter(|s| s.v as usize == v) {
                let p = yp.wrapping_offset(seg.delta as isize).wrapping_add(v * l);
                let rat = rp.wrapping_offset(seg.rdelta as isize).wrapping_add(v * l);
                let r = S::load_masked(rat, seg.mask);
                let sum = clamp.apply_vec::<S>(S::add(av, r));
                if seg.compress {
                    S::store_compressed(p, sum, seg.mask);
                } else {
                    S::store_masked(p, sum, seg.mask);
                }
                k += 1;
            }
        }
    }
}

/// A tile's row to a phase-split target (see `TilePlan::pairs`): one output row of one
/// vector (`a0`) or two (`a0`, `a1`: `two`) deinterleaved, its even lanes to `yp + even[0] + k`
/// and its odd lanes to `yp + odd[0] + k`, or (`split.rows`) two stacked output rows, vector
/// `a0`'s halves to `even[0]` and `odd[0]` and (with `two`) `a1`'s to `even[1]` and `odd[1]`.
/// Vectors by value, not an array: copies of a tile's rows as arrays, in every instance of
/// the micro-kernels, made LLVM's register promotion take minutes to compile the crate.
///
/// # Safety
/// Every half (or whole vector, for a two-vector row) stored is writable.
#[inline(always)]
unsafe fn store_pair<S: Simd>(yp: *mut f32, a0: S::V, a1: S::V, two: bool, split: Split) {
    let half = S::LANES / 2;
    let at = |o: i32| yp.wrapping_offset(o as isize);
    // SAFETY: caller's contract.
    unsafe {
        if split.rows {
            let (e, o) = S::deinterleave(a0, a0);
            S::store_partial(at(split.even[0]), e, half);
            S::store_partial(at(split.odd[0]), o, half);
            if two {
                let (e, o) = S::deinterleave(a1, a1);
                S::store_partial(at(split.even[1]), e, half);
                S::store_partial(at(split.odd[1]), o, half);
            }
            return;
        }
        if two {
            let (e, o) = S::deinterleave(a0, a1);
            S::store(at(split.even[0]), e);
            S::store(at(split.odd[0]), o);
        } else {
            let (e, o) = S::deinterleave(a0, a0);
            S::store_partial(at(split.even[0]), e, half);
            S::store_partial(at(split.odd[0]), o, half);
        }
    }
}

/// `RT` rows of one or two whole vectors to a phase-split target (`split`, see
/// `TilePlan::pairs`): the epilogue of [`store_whole`] (the same operations in the same
/// order, chosen by run-time flags: a tile's rows are straight-line code either way; the bias
/// is already in the accumulators), then [`store_pair`] per row.
///
/// # Safety
/// As [`store_whole`] (with `res` present when given).
#[inline(always)]
pub(super) unsafe fn store_pair_rows<S: Simd, const RT: usize, const V: usize>(
    acc: &[[S::V; V]; RT],
    out: &Out<'_>,
    split: Split,
    res: Option<*const f32>,
    clamp: Clamp,
) {
    // SAFETY: caller's contract.
    unsafe {
        let clamps = !matches!(clamp, Clamp::None);
        // ReLU's +inf bound needs no `min` (see `clamp_as`).
        let relu6 = matches!(clamp, Clamp::Relu6);
        let (lo, hi) = clamp.bounds::<S>();
        for (rr, a) in acc.iter().enumerate() {
            let (mut a0, mut a1) = (a[0], a[V - 1]);
            if let Some(r) = res {
                let rp = r.wrapping_add(rr * out.rstride);
                a0 = S::add(a0, S::load(rp));
                a1 = S::add(a1, S::load(rp.offset((V - 1) as isize * out.rstep)));
            }
            if clamps {
                a0 = S::max(a0, lo);
                a1 = S::max(a1, lo);
            }
            if relu6 {
                a0 = S::min(a0, hi);
                a1 = S::min(a1, hi);
            }
            store_pair::<S>(out.y.add(rr * out.stride), a0, a1, V == 2, split);
        }
    }
}

/// Where a micro-kernel stores its tile: `y` points at flat position `p0` of the first row
/// (possibly outside the buffer: only plan-selected lanes are written).
pub(crate) struct Out<'a> {
    /// A tile of a phase-split target stored as deinterleaved halves at these offsets from
    /// `y` (`segs` then empty; the residual read as for plain stores).
    pub(crate) pair: Option<Split>,
    pub(crate) y: *mut f32,
    pub(crate) stride: usize,
    pub(crate) n: usize,
    pub(crate) segs: &'a [Seg],
    /// Distance between the tile's vectors in the output when `segs` is empty (`LANES` but
    /// for stacked rows).
    pub(crate) step: isize,
    /// A fused residual's distance between rows and, when `segs` is empty, between vectors
    /// (`stride` and `step` when it is laid out as the output).
    pub(crate) rstride: usize,
    pub(crate) rstep: isize,
}
