//! Tile plans: the tiles of output positions a convolution's flat grid is computed in (whole
//! output rows, stacked rows of one vector, or runs of the flat grid), and where each tile's
//! lanes are stored: plain stores at one shift, or masked stores per segment. The row-group
//! engine, the BCR kernel and the pattern (FKW) kernel share them.

use crate::conv::{InputLayout, OutputTarget};

/// A masked store of one vector of a tile: lanes `mask` go to `output + p + delta`, and a
/// fused residual is read at `residual + p + rdelta` (`delta` unless the residual has a
/// layout of its own: [`TilePlan::set_residual`]), `p` the flat position of each lane. A
/// `compress` store (a phase-split target, [`crate::PhaseSplit`]) writes the selected lanes
/// packed together instead: the `k`-th of them to `output + p_v + delta + k`, `p_v` the
/// flat position of the vector's first lane (its residual is still read lane by lane).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seg {
    pub(crate) v: u8,
    pub(crate) compress: bool,
    pub(crate) mask: u16,
    pub(crate) delta: i32,
    pub(crate) rdelta: i32,
}

/// The tiles of a layout for one vector width, and where each tile's lanes are stored: the
/// flat grid's positions map to the output with a per-row shift (`(Wq - Wo)` per row), so a
/// vector that straddles a row end is written with one masked store per row it touches. This
/// writes the final NCDHW output directly: no flat buffer, no compaction pass.
#[derive(Debug, Clone, Default)]
pub(crate) struct TilePlan {
    /// Vectors per tile (tiles are `vectors * lanes` positions wide).
    pub(crate) vectors: usize,
    pub(crate) tiles: Vec<Tile>,
    pub(crate) seg_ptr: Vec<u32>,
    pub(crate) segs: Vec<Seg>,
    /// Per tile, the one store shift of a tile whose every lane is stored with it (one
    /// whole-vector segment per vector): such tiles take plain stores at `p + shift`.
    pub(crate) uniform: Vec<Option<i32>>,
    /// Per tile, the flat distance between its vectors and, for a uniform tile, the output
    /// distance: `(lanes, lanes)` but for stacked rows (see [`stacked_rows`]).
    pub(crate) steps: Vec<(u32, i32)>,
    /// Per uniform tile, where a fused residual's vector `v` is read: `residual + p0 +
    /// shift + v * step` (the store's shift and step unless the residual has a layout of
    /// its own: [`TilePlan::set_residual`]; unused for other tiles).
    pub(crate) residual: Vec<(i32, i32)>,
    /// Per tile, for a phase-split target ([`crate::PhaseSplit`]): `(even, odd)` when the
    /// tile is one or two whole vectors of consecutive positions of one output row whose even
    /// lanes go to `p0 + even + k` and odd lanes to `p0 + odd + k` (`k`-th of each): one
    /// deinterleave (two permutes) and two stores (half-vector masked stores for one
    /// vector), where the segments take a compress and a masked store per phase and vector.
    /// Its residual is read as a uniform tile's (`residual`). Kernels without this store use
    /// the segments.
    pub(crate) pairs: Vec<Option<Split>>,
}

/// Where a tile of a phase-split target stores its even and odd lanes (see
/// [`TilePlan::pairs`]): a tile of one output row (`rows` false: its one or two vectors
/// deinterleaved, the even lanes to `even[0] + k` from the tile's store base, the odd ones to
/// `odd[0] + k`), or two stacked rows of one vector each (`rows` true: vector `v`'s halves to
/// `even[v]` and `odd[v]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Split {
    pub(crate) even: [i32; 2],
    pub(crate) odd: [i32; 2],
    pub(crate) rows: bool,
}

impl TilePlan {
    /// A plan storing to `target` (NCDHW: [`OutputTarget::dense`]) with `vectors` vectors per
    /// tile, stacking rows of one vector (see [`stacked_rows`]) where they fit.
    pub(crate) fn with_target(
        layout: &InputLayout,
        lanes: usize,
        vectors: usize,
        target: &OutputTarget,
    ) -> Self {
        let delta_of = target_delta(layout, target);
        let compress = target.phases.is_some();
        let stacked = if compress {
            Self::stacked_split(layout, lanes, vectors, &delta_of)
        } else {
            Self::stacked(layout, lanes, vectors, &delta_of)
        };
        stacked.unwrap_or_else(|| Self::build(layout, lanes, vectors, &delta_of, compress))
    }

    /// For a phase-split target, with two vectors per tile: output rows of exactly one vector
    /// stacked two per tile (each row's halves stored by [`Split`]), as [`stacked_rows`]
    /// stacks them for plain targets; `None` where rows are not all one vector.
    fn stacked_split(
        layout: &InputLayout,
        lanes: usize,
        vectors: usize,
        delta_of: &dyn Fn(usize) -> Option<isize>,
    ) -> Option<Self> {
        let rows = row_runs(layout);
        if vectors != 2 || rows.is_empty() || rows.iter().any(|&(_, len)| len != lanes) {
            return None;
        }
        let mut plan = TilePlan { vectors, seg_ptr: vec![0], ..TilePlan::default() };
        for pair in rows.chunks(2) {
            let (p0, x_step) = (pair[0].0, pair.get(1).map_or(lanes, |r| r.0 - pair[0].0));
            let n = pair.len() * lanes;
            plan.push_tile(p0, n, lanes, vectors, pair.len(), delta_of, true, x_step);
        }
        Some(plan)
    }

    /// [`with_target`](Self::with_target) without stacked rows: tiles of contiguous vectors,
    /// for kernels that do not read [`steps`](Self::steps).
    pub(crate) fn with_vectors_to(
        layout: &InputLayout,
        lanes: usize,
        vectors: usize,
        target: &OutputTarget,
    ) -> Self {
        Self::build(layout, lanes, vectors, &target_delta(layout, target), target.phases.is_some())
    }

    /// A plan of stacked rows, when [`stacked_rows`] finds them.
    fn stacked(
        layout: &InputLayout,
        lanes: usize,
        vectors: usize,
        delta_of: &dyn Fn(usize) -> Option<isize>,
    ) -> Option<Self> {
        let tiles = stacked_rows(layout, lanes, vectors, delta_of)?;
        let count = tiles.len();
        Some(TilePlan {
            vectors,
            tiles: tiles.iter().map(|t| (t.first, t.rows * lanes)).collect(),
            seg_ptr: vec![0; count + 1],
            segs: Vec::new(),
            uniform: tiles.iter().map(|t| Some(t.shift)).collect(),
            steps: tiles.iter().map(|t| (t.x_step, t.y_step)).collect(),
            residual: tiles.iter().map(|t| (t.shift, t.y_step)).collect(),
            pairs: vec![None; count],
        })
    }

    /// Tiles and, per tile vector, masked stores to `p + delta(p)` for each kept flat
    /// position `p` (compress stores with `compress`).
    fn build(
        layout: &InputLayout,
        lanes: usize,
        vectors: usize,
        delta_of: &dyn Fn(usize) -> Option<isize>,
        compress: bool,
    ) -> Self {
        // A phase split's tiles run within output rows, so that two-vector tiles pair up.
        let rows = if compress {
            Some(row_runs(layout)).filter(|rows| vectors == 2 && !rows.is_empty())
        } else {
            output_rows(layout, lanes, vectors, delta_of)
        };
        let all = match rows {
            Some(rows) => tiles(&rows, vectors * lanes),
            None => tiles(layout.runs(), vectors * lanes),
        };
        let mut plan = TilePlan { vectors, seg_ptr: vec![0], ..TilePlan::default() };
        for &(p0, n) in &all {
            // A tile of at most one vector is computed one vector wide (`tile_group`).
            let computed = if n <= lanes { 1 } else { vectors };
            plan.push_tile(p0, n, lanes, vectors, computed, delta_of, compress, lanes);
        }
        plan
    }

    /// A plan of the given tiles (each at most `vectors` vectors, computed `ceil(n / lanes)`
    /// wide) storing to `target`: the BCR kernel's tiles, dealt evenly over the runs.
    pub(crate) fn from_tiles(
        layout: &InputLayout,
        lanes: usize,
        vectors: usize,
        tiles: &[Tile],
        target: &OutputTarget,
    ) -> Self {
        let delta_of = target_delta(layout, target);
        let compress = target.phases.is_some();
        let mut plan = TilePlan { vectors, seg_ptr: vec![0], ..TilePlan::default() };
        for &(p0, n) in tiles {
            plan.push_tile(p0, n, lanes, vectors, n.div_ceil(lanes), &delta_of, compress, lanes);
        }
        plan
    }

    /// Appends tile `(p0, n)`: per vector, masked stores to `p + delta(p)` for each kept flat
    /// position `p` (with `compress`, compress stores of the lanes whose destinations follow
    /// one another: a phase-split row's lanes of one phase); uniform when its `computed`
    /// vectors are stored whole at one shift. A tile of discarded positions only (the gap
    /// between output rows of a strongly dilated, padded convolution can span a whole tile)
    /// stores nothing: it is dropped, since an empty store list means plain stores to the
    /// kernels.
    #[allow(clippy::too_many_arguments)]
    fn push_tile(
        &mut self,
        p0: usize,
        n: usize,
        lanes: usize,
        vectors: usize,
        computed: usize,
        delta_of: &dyn Fn(usize) -> Option<isize>,
        compress: bool,
        x_step: usize,
    ) {
        let whole = ((1u32 << lanes) - 1) as u16;
        let first = self.segs.len();
        // Where lane i of vector v stores (compress tiles), by flat position p0 + v x_step + i.
        let dest = |v: usize, i: usize| {
            let p = p0 + v * x_step + i;
            (v * lanes + i < n).then(|| delta_of(p).map(|d| p as isize + d)).flatten()
        };
        for v in 0..vectors {
            if compress {
                // Open stores with the destination their next lane must have.
                let mut open: Vec<(Seg, isize)> = Vec::new();
                for i in 0..lanes {
                    let Some(to) = dest(v, i) else { continue };
                    match open.iter_mut().find(|(_, next)| *next == to) {
                        Some((seg, next)) => {
                            seg.mask |= 1 << i;
                            *next += 1;
                        }
                        None => {
                            // The first lane's destination relative to the vector's store
                            // base, p0 + v lanes.
                            let delta = (to - (p0 + v * lanes) as isize) as i32;
                            let rdelta = (to - (p0 + v * x_step + i) as isize) as i32;
                            let seg = Seg { v: v as u8, compress, mask: 1 << i, delta, rdelta };
                            open.push((seg, to + 1));
                        }
                    }
                }
                self.segs.extend(open.into_iter().map(|(seg, _)| seg));
                continue;
            }
            let mut current: Option<Seg> = None;
            for i in 0..lanes {
                let k = v * lanes + i;
                let delta = if k < n { delta_of(p0 + k) } else { None };
                match (delta, current.as_mut()) {
                    (Some(d), Some(seg)) if seg.delta == d as i32 => seg.mask |= 1 << i,
                    (Some(d), _) => {
                        if let Some(seg) = current.take() {
                            self.segs.push(seg);
                        }
                        let delta = d as i32;
                        current =
                            Some(Seg { v: v as u8, compress, mask: 1 << i, delta, rdelta: delta });
                    }
                    (None, _) => {}
                }
            }
            if let Some(seg) = current {
                self.segs.push(seg);
            }
        }
        if self.segs.len() == first {
            return;
        }
        // Even and odd lanes of `count` consecutive lanes from lane `i0` of vector `v`: their
        // first destinations (from the tile's store base p0) when each half is consecutive.
        let halves = |v: usize, i0: usize, count: usize| -> Option<(i32, i32)> {
            let lane = |k: usize| dest(v + (i0 + k) / lanes, (i0 + k) % lanes);
            let (e, o) = (lane(0)?, lane(1)?);
            (0..count / 2)
                .all(|k| {
                    lane(2 * k) == Some(e + k as isize) && lane(2 * k + 1) == Some(o + k as isize)
                })
                .then_some(())?;
            let base = p0 as isize;
            Some((i32::try_from(e - base).ok()?, i32::try_from(o - base).ok()?))
        };
        let full = n == computed * lanes && lanes.is_multiple_of(2);
        let pair = if !compress || !full {
            None
        } else if x_step == lanes && computed <= 2 {
            halves(0, 0, n).map(|(e, o)| Split { even: [e, e], odd: [o, o], rows: false })
        } else if computed == 2 {
            match (halves(0, 0, lanes), halves(1, 0, lanes)) {
                (Some((e0, o0)), Some((e1, o1))) => {
                    Some(Split { even: [e0, e1], odd: [o0, o1], rows: true })
                }
                _ => None,
            }
        } else {
            None
        };
        self.pairs.push(pair);
        let segs = &self.segs[first..];
        let uniform = (segs.len() == computed
            && segs
                .iter()
                .enumerate()
                .all(|(v, s)| s.v as usize == v && s.mask == whole && s.delta == segs[0].delta))
        .then_some(segs[0].delta);
        self.uniform.push(uniform);
        self.steps.push((x_step as u32, lanes as i32));
        self.residual.push((uniform.unwrap_or(0), lanes as i32));
        self.tiles.push((p0, n));
        self.seg_ptr.push(self.segs.len() as u32);
    }
}

impl TilePlan {
    /// Reads a fused residual from `residual` (a layout of the output's extent, e.g. the
    /// padded input layout a producer wrote for another convolution) instead of from where
    /// each output is stored: per segment its own delta, per uniform tile its own shift and
    /// vector step. A segment whose lanes lie in different rows of the residual (a flat tile
    /// crossing row ends shares one store delta in a padded output) is split, and a uniform
    /// tile whose residual is not evenly spaced becomes segments. `false` (nothing changed)
    /// for a position the residual layout does not hold or an offset beyond 32 bits.
    pub(crate) fn set_residual(
        &mut self,
        layout: &InputLayout,
        lanes: usize,
        residual: &OutputTarget,
    ) -> bool {
        let rdelta = target_delta(layout, residual);
        let mut segs: Vec<Seg> = Vec::with_capacity(self.segs.len());
        let mut seg_ptr = vec![0u32];
        let mut uniform = self.uniform.clone();
        let mut shifts = self.residual.clone();
        let mut pairs = self.pairs.clone();
        for (ti, &(p0, n)) in self.tiles.iter().enumerate() {
            let (x_step, y_step) = (self.steps[ti].0 as usize, self.steps[ti].1 as isize);
            let lane = |v: usize, i: usize| p0 + v * x_step + i;
            // The residual's offset of lane (v, i) from `p0 + v * lanes + i`, where segment
            // stores address it.
            let seg_rdelta = |v: usize, i: usize| {
                let p = lane(v, i);
                rdelta(p).map(|d| p as isize + d - (p0 + v * lanes + i) as isize)
            };
            let own = &self.segs[self.seg_ptr[ti] as usize..self.seg_ptr[ti + 1] as usize];
            let mut stores = own.to_vec();
            if self.pairs[ti].is_some() {
                // Read as a uniform tile's residual, or through the segments.
                match affine_residual(n, lanes, &seg_rdelta) {
                    Some(affine) => shifts[ti] = affine,
                    None => pairs[ti] = None,
                }
            }
            if let Some(shift) = self.uniform[ti] {
                match affine_residual(n, lanes, &seg_rdelta) {
                    Some(affine) => shifts[ti] = affine,
                    None => {
                        // Read through segments instead; a stacked tile has none yet: they
                        // store what its uniform stores did, vector v at p0 + shift + v *
                        // y_step.
                        uniform[ti] = None;
                        if stores.is_empty() {
                            for v in 0..n.div_ceil(lanes) {
                                let valid = (n - v * lanes).min(lanes);
                                let delta = shift as isize + v as isize * (y_step - lanes as isize);
                                let Ok(delta) = i32::try_from(delta) else { return false };
                                let mask = ((1u32 << valid) - 1) as u16;
                                let v = v as u8;
                                stores.push(Seg { v, compress: false, mask, delta, rdelta: 0 });
                            }
                        }
                    }
                }
            }
            for seg in stores {
                let v = seg.v as usize;
                let mut current: Option<Seg> = None;
                for (k, i) in (0..lanes).filter(|&i| seg.mask >> i & 1 == 1).enumerate() {
                    let Some(d) = seg_rdelta(v, i).and_then(|d| i32::try_from(d).ok()) else {
                        return false;
                    };
                    match current.as_mut() {
                        Some(c) if c.rdelta == d => c.mask |= 1 << i,
                        _ => {
                            segs.extend(current.take());
                            // A compress store's later part starts `k` floats further on.
                            let delta = if seg.compress { seg.delta + k as i32 } else { seg.delta };
                            current = Some(Seg { mask: 1 << i, rdelta: d, delta, ..seg });
                        }
                    }
                }
                segs.extend(current);
            }
            seg_ptr.push(segs.len() as u32);
        }
        self.segs = segs;
        self.seg_ptr = seg_ptr;
        self.uniform = uniform;
        self.residual = shifts;
        self.pairs = pairs;
        true
    }

    /// Whether tile `ti` is stored without segments: plainly at one shift, or as deinterleaved
    /// pairs.
    pub(crate) fn plain(&self, ti: usize) -> bool {
        self.uniform[ti].is_some() || self.pairs[ti].is_some()
    }
}

/// A uniform tile's residual as `(shift, step)`: lane `(v, i)` read at `p0 + shift + v * step
/// + i`, given each lane's offset from `p0 + v * lanes + i`; `None` when not evenly spaced.
fn affine_residual(
    n: usize,
    lanes: usize,
    seg_rdelta: &dyn Fn(usize, usize) -> Option<isize>,
) -> Option<(i32, i32)> {
    let first = seg_rdelta(0, 0)?;
    let step = if n > lanes { lanes as isize + seg_rdelta(1, 0)? - first } else { lanes as isize };
    for k in 0..n {
        let (v, i) = (k / lanes, k % lanes);
        // Lane (v, i) is at p0 + v * lanes + i + its offset; wanted at p0 + first + v * step + i.
        if (v * lanes) as isize + seg_rdelta(v, i)? != first + v as isize * step {
            return None;
        }
    }
    Some((i32::try_from(first).ok()?, i32::try_from(step).ok()?))
}

/// Where flat position `p` of `layout` is stored in `target`, relative to `p` (`None` for a
/// discarded position).
fn target_delta<'a>(
    layout: &'a InputLayout,
    target: &'a OutputTarget,
) -> impl Fn(usize) -> Option<isize> + 'a {
    move |p| layout.flat_coords(p).map(|c| target.index(c) as isize - p as isize)
}

/// Maximal runs of the layout's flat positions kept with one store shift: (first, length,
/// shift). Output rows, when the flat grid has padding columns.
fn shifted_runs(
    layout: &InputLayout,
    delta_of: &dyn Fn(usize) -> Option<isize>,
) -> Vec<(usize, usize, isize)> {
    let mut rows = Vec::new();
    for &(start, len) in layout.runs() {
        let end = start + len;
        let mut p = start;
        while p < end {
            let Some(d) = delta_of(p) else {
                p += 1;
                continue;
            };
            let first = p;
            while p < end && delta_of(p) == Some(d) {
                p += 1;
            }
            rows.push((first, p - first, d));
        }
    }
    rows
}

/// The length every output row of `layout` stored to `target` has (rows: runs of flat
/// positions kept with one store shift; for a phase-split target, the output rows), or
/// `None` when they differ or there are none.
pub(crate) fn uniform_row_length(layout: &InputLayout, target: &OutputTarget) -> Option<usize> {
    let rows: Vec<usize> = if target.phases.is_some() {
        row_runs(layout).iter().map(|&(_, len)| len).collect()
    } else {
        shifted_runs(layout, &target_delta(layout, target)).iter().map(|r| r.1).collect()
    };
    let first = *rows.first()?;
    rows.iter().all(|&len| len == first).then_some(first)
}

/// The output rows of `layout`'s flat grid: maximal runs of kept flat positions in one
/// output row.
fn row_runs(layout: &InputLayout) -> Vec<(usize, usize)> {
    let mut rows: Vec<(usize, usize)> = Vec::new();
    let mut current: Option<(usize, usize, [usize; 2])> = None;
    for &(start, len) in layout.runs() {
        for p in start..start + len {
            let Some([z, y, _]) = layout.flat_coords(p) else {
                rows.extend(current.take().map(|(f, n, _)| (f, n)));
                continue;
            };
            match current.as_mut() {
                Some((f, n, row)) if *row == [z, y] && *f + *n == p => *n += 1,
                _ => {
                    rows.extend(current.take().map(|(f, n, _)| (f, n)));
                    current = Some((p, 1, [z, y]));
                }
            }
        }
        rows.extend(current.take().map(|(f, n, _)| (f, n)));
    }
    rows
}

/// Rows of a stacked tile: `rows` output rows of exactly one vector, the first at flat
/// position `first` stored at `first + shift`, each next one `x_step` further in the flat grid
/// and `y_step` further in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StackedTile {
    first: usize,
    rows: usize,
    x_step: u32,
    y_step: i32,
    shift: i32,
}

/// With 8 lanes (16 with two vectors per tile), when every output row is exactly one vector
/// (8x8 maps; 16x16 on AVX-512) apart from padding
/// columns in the flat grid: tiles of `vectors` such rows, each vector one whole row. Flat
/// tiles there straddle row ends (rows of 8 in a grid of 9), so every vector is stored in
/// masked parts, which AVX2 has no instruction for; stacked rows store whole vectors with
/// plain stores and compute no padding column. `None` when rows are not all one vector, or
/// a step does not fit.
fn stacked_rows(
    layout: &InputLayout,
    lanes: usize,
    vectors: usize,
    delta_of: &dyn Fn(usize) -> Option<isize>,
) -> Option<Vec<StackedTile>> {
    if !(lanes == 8 && vectors >= 2 || lanes == 16 && vectors == 2) {
        return None;
    }
    let rows = shifted_runs(layout, delta_of);
    if rows.is_empty() || rows.iter().any(|&(_, len, _)| len != lanes) {
        return None;
    }
    let mut tiles: Vec<StackedTile> = Vec::new();
    for &(first, _, d) in &rows {
        let shift = i32::try_from(d).ok()?;
        let out = first as i64 + i64::from(shift);
        if let Some(t) = tiles.last_mut().filter(|t| t.rows < vectors) {
            // A tile's rows are evenly spaced in the grid and in the output.
            let last = t.first + (t.rows - 1) * t.x_step as usize;
            let last_out =
                t.first as i64 + i64::from(t.shift) + (t.rows as i64 - 1) * i64::from(t.y_step);
            let x_step = first.checked_sub(last).and_then(|x| u32::try_from(x).ok());
            let y_step = i32::try_from(out - last_out).ok();
            if let (Some(x_step), Some(y_step)) = (x_step, y_step)
                && (t.rows == 1 || (x_step == t.x_step && y_step == t.y_step))
            {
                t.x_step = x_step;
                t.y_step = y_step;
                t.rows += 1;
                continue;
            }
        }
        tiles.push(StackedTile {
            first,
            rows: 1,
            x_step: lanes as u32,
            y_step: lanes as i32,
            shift,
        });
    }
    Some(tiles)
}

/// With 8 lanes, the runs of flat positions cut at output row ends (maximal runs of positions
/// kept with one store shift), when those rows average at least two vectors; `None` otherwise.
///
/// Tiles over the flat grid straddle row ends: a straddling vector is stored in two parts
/// under varying masks, and without native masked stores (AVX2) each part is a chain of
/// data-dependent branches. Tiles within rows store whole vectors but the last of a row, and
/// skip the padding columns the flat grid computes. Measured on Zen 3 (AVX2, 1 thread, min of
/// runs, flat -> row tiles): block-punched 8x 3x3 16@32x32 18.6 -> 15.8 us, 32@16x16 14.1 ->
/// 11.4 us, 128@16x16 151 -> 134 us; dense 16@32x32 65.6 -> 59.7 us; pattern 8x 128@16x16
/// 326 -> 278 us. On AVX-512 the masked stores are single instructions and the flat tiling
/// is kept, but for two-vector plans on rows of exactly two vectors (32-wide maps): there the
/// tiles are whole rows, stored plainly (block-punched 8x 16@32x32 9.0 -> 7.8 us on a Xeon,
/// with 16-wide maps stacked: 32@16x16 7.0 -> 5.8, 128@16x16 75 -> 67).
fn output_rows(
    layout: &InputLayout,
    lanes: usize,
    vectors: usize,
    delta_of: &dyn Fn(usize) -> Option<isize>,
) -> Option<Vec<(usize, usize)>> {
    if !(lanes == 8 || lanes == 16 && vectors == 2) {
        return None;
    }
    let rows: Vec<(usize, usize)> =
        shifted_runs(layout, delta_of).into_iter().map(|(first, len, _)| (first, len)).collect();
    let kept: usize = rows.iter().map(|&(_, len)| len).sum();
    let fits = if lanes == 8 {
        kept >= 2 * lanes * rows.len()
    } else {
        rows.iter().all(|&(_, len)| len == 2 * lanes)
    };
    (!rows.is_empty() && fits).then_some(rows)
}

/// A tile of output positions: start and number of valid positions.
pub(crate) type Tile = (usize, usize);

/// `runs` cut into tiles of at most `width` positions (a run's last one shorter).
fn tiles(runs: &[(usize, usize)], width: usize) -> Vec<Tile> {
    let mut out = Vec::new();
    for &(start, len) in runs {
        let mut p = 0;
        while p < len {
            out.push((start + p, width.min(len - p)));
            p += width;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::ConvShape;

    /// An 8x8 map padded by 1 is a grid of rows 9 apart (one padding column shared between
    /// neighbours) holding 8 outputs each: 8-lane plans stack them two per tile (vectors 9
    /// apart in the grid, 8 in the output); a 7-row map
    /// ends on a one-row tile; rows of 9 are not stacked, nor are 16-lane plans.
    #[test]
    fn rows_of_one_vector_are_stacked_two_per_tile() {
        let shape = ConvShape::conv2d(4, 8, [8, 8], [3, 3], 1, 1).unwrap();
        let layout = shape.layout();
        let plan = TilePlan::with_target(&layout, 8, 2, &OutputTarget::dense(shape.output()));
        assert_eq!(plan.tiles.len(), 4);
        assert!(plan.tiles.iter().all(|&(_, n)| n == 16));
        assert!(plan.steps.iter().all(|&s| s == (9, 8)), "{:?}", plan.steps);
        assert!(plan.segs.is_empty() && plan.uniform.iter().all(Option::is_some));
        // Tile t's first row is output row 2t: flat `p + shift` is its first output.
        for (t, (&(p0, _), &shift)) in plan.tiles.iter().zip(&plan.uniform).enumerate() {
            assert_eq!(p0 as i64 + i64::from(shift.unwrap()), 16 * t as i64);
        }

        let odd_shape = ConvShape::conv2d(4, 8, [7, 8], [3, 3], 1, 1).unwrap();
        let odd = odd_shape.layout();
        let plan = TilePlan::with_target(&odd, 8, 2, &OutputTarget::dense(odd_shape.output()));
        let rows: Vec<usize> = plan.tiles.iter().map(|&(_, n)| n / 8).collect();
        assert_eq!(rows, [2, 2, 2, 1]);

        let wide = ConvShape::conv2d(4, 8, [8, 9], [3, 3], 1, 1).unwrap().layout();
        assert!(stacked_rows(&wide, 8, 2, &|p| wide.output_delta(p)).is_none());
        assert!(stacked_rows(&layout, 16, 2, &|p| layout.output_delta(p)).is_none());
    }

    /// 16-lane plans of two vectors: a 16-wide map's rows are stacked two per tile (vectors 17
    /// apart in the grid, one padding column shared, 16 in the output), a 32-wide map's tiles are its rows (plain stores at
    /// one shift each), and other widths keep the flat tiles with masked stores.
    #[test]
    fn wide_vectors_stack_rows_of_16_and_tile_rows_of_32() {
        let plan_of = |w: usize| {
            let shape = ConvShape::conv2d(4, 16, [6, w], [3, 3], 1, 1).unwrap();
            TilePlan::with_target(&shape.layout(), 16, 2, &OutputTarget::dense(shape.output()))
        };
        let sixteen = plan_of(16);
        assert_eq!(sixteen.tiles.len(), 3);
        assert!(sixteen.steps.iter().all(|&s| s == (17, 16)), "{:?}", sixteen.steps);
        assert!(sixteen.segs.is_empty() && sixteen.uniform.iter().all(Option::is_some));

        let thirty_two = plan_of(32);
        assert_eq!(thirty_two.tiles.len(), 6);
        assert!(thirty_two.tiles.iter().all(|&(_, n)| n == 32));
        assert!(thirty_two.uniform.iter().all(Option::is_some));
        for (t, (&(p0, _), &shift)) in thirty_two.tiles.iter().zip(&thirty_two.uniform).enumerate()
        {
            assert_eq!(p0 as i64 + i64::from(shift.unwrap()), 32 * t as i64);
        }

        let twenty_eight = plan_of(28);
        assert!(twenty_eight.uniform.iter().any(Option::is_none));
    }
}
