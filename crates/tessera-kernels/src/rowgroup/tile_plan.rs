//! Tile plans: the tiles of output positions a convolution's flat grid is computed in (whole
//! output rows, stacked rows of one vector, or runs of the flat grid), and where each tile's
//! lanes are stored: plain stores at one shift, or masked stores per segment. The row-group
//! engine, the BCR kernel and the pattern (FKW) kernel share them.

use crate::conv::{InputLayout, OutputTarget};

/// A masked store of one vector of a tile: lanes `mask` go to `output + p + delta`, and a
/// fused residual is read at `residual + p + rdelta` (`delta` unless the residual has a
/// layout of its own: [`TilePlan::set_residual`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seg {
    pub(crate) v: u8,
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
        Self::stacked(layout, lanes, vectors, &delta_of)
            .unwrap_or_else(|| Self::build(layout, lanes, vectors, &delta_of))
    }

    /// [`with_target`](Self::with_target) without stacked rows: tiles of contiguous vectors,
    /// for kernels that do not read [`steps`](Self::steps).
    pub(crate) fn with_vectors_to(
        layout: &InputLayout,
        lanes: usize,
        vectors: usize,
        target: &OutputTarget,
    ) -> Self {
        Self::build(layout, lanes, vectors, &target_delta(layout, target))
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
        })
    }

    /// Tiles and, per tile vector, masked stores to `p + delta(p)` for each kept flat
    /// position `p`.
    fn build(
        layout: &InputLayout,
        lanes: usize,
        vectors: usize,
        delta_of: &dyn Fn(usize) -> Option<isize>,
    ) -> Self {
        let all = match output_rows(layout, lanes, vectors, delta_of) {
            Some(rows) => tiles(&rows, vectors * lanes),
            None => tiles(layout.runs(), vectors * lanes),
        };
        let mut plan = TilePlan { vectors, seg_ptr: vec![0], ..TilePlan::default() };
        for &(p0, n) in &all {
            // A tile of at most one vector is computed one vector wide (`tile_group`).
            let computed = if n <= lanes { 1 } else { vectors };
            plan.push_tile(p0, n, lanes, vectors, computed, delta_of);
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
        let mut plan = TilePlan { vectors, seg_ptr: vec![0], ..TilePlan::default() };
        for &(p0, n) in tiles {
            plan.push_tile(p0, n, lanes, vectors, n.div_ceil(lanes), &delta_of);
        }
        plan
    }

    /// Appends tile `(p0, n)`: per vector, masked stores to `p + delta(p)` for each kept flat
    /// position `p`; uniform when its `computed` vectors are stored whole at one shift. A tile
    /// of discarded positions only (the gap between output rows of a strongly dilated, padded
    /// convolution can span a whole tile) stores nothing: it is dropped, since an empty store
    /// list means plain stores to the kernels.
    fn push_tile(
        &mut self,
        p0: usize,
        n: usize,
        lanes: usize,
        vectors: usize,
        computed: usize,
        delta_of: &dyn Fn(usize) -> Option<isize>,
    ) {
        let whole = ((1u32 << lanes) - 1) as u16;
        let first = self.segs.len();
        for v in 0..vectors {
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
                        current = Some(Seg { v: v as u8, mask: 1 << i, delta, rdelta: delta });
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
        let segs = &self.segs[first..];
        let uniform = (segs.len() == computed
            && segs
                .iter()
                .enumerate()
                .all(|(v, s)| s.v as usize == v && s.mask == whole && s.delta == segs[0].delta))
        .then_some(segs[0].delta);
        self.uniform.push(uniform);
        self.steps.push((lanes as u32, lanes as i32));
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
                                stores.push(Seg { v: v as u8, mask, delta, rdelta: 0 });
                            }
                        }
                    }
                }
            }
            for seg in stores {
                let v = seg.v as usize;
                let mut current: Option<Seg> = None;
                for i in (0..lanes).filter(|&i| seg.mask >> i & 1 == 1) {
                    let Some(d) = seg_rdelta(v, i).and_then(|d| i32::try_from(d).ok()) else {
                        return false;
                    };
                    match current.as_mut() {
                        Some(c) if c.rdelta == d => c.mask |= 1 << i,
                        _ => {
                            segs.extend(current.take());
                            current = Some(Seg { mask: 1 << i, rdelta: d, ..seg });
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
        true
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
/// positions kept with one store shift), or `None` when they differ or there are none.
pub(crate) fn uniform_row_length(layout: &InputLayout, target: &OutputTarget) -> Option<usize> {
    let rows = shifted_runs(layout, &target_delta(layout, target));
    let first = rows.first()?.1;
    rows.iter().all(|&(_, len, _)| len == first).then_some(first)
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
