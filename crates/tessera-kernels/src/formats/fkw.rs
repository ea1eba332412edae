//! FKW (filter-kernel-weight) storage and the pattern convolution kernel (PatDNN).
//!
//! For pattern + connectivity pruned 3x3 convolutions: every kept kernel holds 4 weights in
//! one of the library's patterns. Arrays, as PatDNN describes them:
//! * `reorder[F]`: filters sorted by kept-kernel count, heaviest first (filter kernel reorder:
//!   similar work sits together and threads get balanced shares);
//! * `offset[F + 1]`: first kernel of each reordered filter;
//! * `stride[F][P + 1]`: inside a filter, kernels are grouped by pattern; pattern `p`'s kernels
//!   are `offset[f] + stride[f][p] .. offset[f] + stride[f][p + 1]`;
//! * `index[kernels]`: the input channel of each kernel (`u16`);
//! * `weights[kernels][4]`: the 4 kept weights in the pattern's tap order;
//! * the pattern table (`P` 9-bit masks).
//!
//! Index cost: 2 bytes per kernel (4 weights) against CSR's 4 bytes per weight.
//!
//! Kernel (channel-major, register-level load reuse): binding transposes the kernels to input-
//! channel order, grouped by pattern. For an output tile, each input channel's 9 tap vectors
//! (x 2 vectors wide on AVX-512) are loaded into registers **once**, and every kept kernel on
//! that channel, whatever its filter, is computed from those registers: 4 broadcasts and 8
//! FMAs, plus a read-modify-write of its filter's partial sums in an L1-resident tile buffer.
//! The per-pattern specialized loop is real: the kernel body is instantiated for each of the
//! 56 possible 4-tap patterns (a const generic), so the 4 register selections are compile-time
//! constants, and a run of same-pattern kernels dispatches once. The tile buffer starts on a
//! 64-byte boundary (see [`ConvScratch`]) so each read-modify-write touches whole cache lines:
//! that alone measured 1.15-1.3x faster at 8x. Measured and rejected (conv3x3 at 8x, 1
//! thread): the filter-major loop (one filter at a time), which reloads each input vector for
//! every filter that uses it, about 2x slower; a pattern-major order (one dispatch per pattern
//! per tile, 4 tap rows in registers, 4 vectors wide), 2.6-4.1x against 3.2-4.4x, because each
//! channel's taps were reloaded once per pattern; staging the 9 tap rows in L1 and reading
//! each kernel's taps by index instead of dispatching, 1.9-2.3x (load-bound); a fixed
//! per-channel pattern order so the dispatch jumps repeat periodically, and weight broadcasts
//! by register shuffles instead of loads, both within noise.

#![allow(unsafe_op_in_unsafe_fn)]

use tessera_sparsity::{Layer, LayerGeometry, Mask, PatternLibrary};

use crate::conv::{ConvShape, InputLayout};
use crate::error::{KernelError, Result};
use crate::formats::{ByteSize, check_lengths, structure_error};
use crate::isa::Isa;
use crate::rowgroup::{ConvScratch, Out, Seg, TilePlan, check_len, store_row};
use crate::simd::{Simd, simd_entry};
use crate::threads::{SendPtr, run_parallel};

/// Pattern + connectivity weights of a 3x3 convolution.
#[derive(Debug, Clone, PartialEq)]
pub struct Fkw {
    rows: usize,
    in_per_group: usize,
    out_per_group: usize,
    patterns: Vec<u16>,
    reorder: Vec<u32>,
    offset: Vec<u32>,
    stride: Vec<u32>,
    index: Vec<u16>,
    weights: Vec<f32>,
}

fn taps(pattern: u16) -> [usize; 4] {
    let mut out = [0; 4];
    let mut k = 0;
    for t in 0..9 {
        if pattern >> t & 1 == 1 && k < 4 {
            out[k] = t;
            k += 1;
        }
    }
    out
}

impl Fkw {
    /// Encodes a 3x3 convolution whose every kernel is either pruned or one pattern of
    /// `library` (what `pattern:K[+connectivity]` projections produce).
    pub fn encode(
        layer: &Layer,
        weights: &[f32],
        mask: &Mask,
        library: &PatternLibrary,
    ) -> Result<Self> {
        check_lengths(layer, weights, mask)?;
        let LayerGeometry::Conv2d { kh: 3, kw: 3, .. } = layer.geometry else {
            return Err(structure_error(
                layer,
                "FKW".into(),
                "FKW stores 3x3 2-D convolution kernels".into(),
            ));
        };
        let g = &layer.geometry;
        let (rows, ipg) = (g.rows(), g.in_per_group());
        if ipg > u16::MAX as usize + 1 {
            return Err(KernelError::InvalidShape {
                reason: format!("{ipg} input channels exceed u16 indices"),
            });
        }
        let patterns = library.patterns().to_vec();
        let np = patterns.len();
        // Per filter: (pattern id, channel) of every kept kernel.
        let mut kernels: Vec<Vec<(usize, usize)>> = vec![Vec::new(); rows];
        for (r, ks) in kernels.iter_mut().enumerate() {
            for c in 0..ipg {
                let base = (r * ipg + c) * 9;
                let bits = (0..9).fold(0u16, |b, t| b | u16::from(mask.get(base + t)) << t);
                if bits == 0 {
                    continue;
                }
                let Some(p) = patterns.iter().position(|&q| q == bits) else {
                    return Err(structure_error(
                        layer,
                        format!("FKW with library {library}"),
                        format!(
                            "kernel (filter {r}, channel {c}) keeps taps {bits:#05x}, which is not a library pattern"
                        ),
                    ));
                };
                ks.push((p, c));
            }
            ks.sort_unstable();
        }
        let mut reorder: Vec<u32> = (0..rows as u32).collect();
        reorder.sort_by_key(|&r| (std::cmp::Reverse(kernels[r as usize].len()), r));
        let mut out = Fkw {
            rows,
            in_per_group: ipg,
            out_per_group: g.out_per_group(),
            patterns,
            reorder,
            offset: vec![0],
            stride: Vec::with_capacity(rows * (np + 1)),
            index: Vec::new(),
            weights: Vec::new(),
        };
        for &r in &out.reorder {
            let ks = &kernels[r as usize];
            let mut counts = vec![0u32; np + 1];
            for &(p, c) in ks {
                counts[p + 1] += 1;
                out.index.push(c as u16);
                let base = (r as usize * ipg + c) * 9;
                out.weights.extend(taps(out.patterns[p]).iter().map(|&t| weights[base + t]));
            }
            for p in 0..np {
                counts[p + 1] += counts[p];
            }
            out.stride.extend_from_slice(&counts);
            out.offset.push(out.index.len() as u32);
        }
        Ok(out)
    }

    /// Kept kernels.
    pub fn kernels(&self) -> usize {
        self.index.len()
    }

    /// The dense OIHW weight.
    pub fn decode(&self) -> Vec<f32> {
        let np = self.patterns.len();
        let mut out = vec![0.0; self.rows * self.in_per_group * 9];
        for (f, &r) in self.reorder.iter().enumerate() {
            let k0 = self.offset[f] as usize;
            for p in 0..np {
                let t = taps(self.patterns[p]);
                for k in k0 + self.stride[f * (np + 1) + p] as usize
                    ..k0 + self.stride[f * (np + 1) + p + 1] as usize
                {
                    let base = (r as usize * self.in_per_group + self.index[k] as usize) * 9;
                    for (j, &tap) in t.iter().enumerate() {
                        out[base + tap] = self.weights[4 * k + j];
                    }
                }
            }
        }
        out
    }

    /// Size: values; `u16` channel per kernel; `u32` reorder, offsets and per-pattern strides;
    /// the pattern table.
    pub fn bytes(&self) -> ByteSize {
        ByteSize {
            values: 4 * self.weights.len(),
            index: 2 * self.index.len()
                + 4 * (self.reorder.len() + self.offset.len() + self.stride.len())
                + 2 * self.patterns.len(),
        }
    }

    /// Binds the weights to a 3x3 convolution.
    pub fn bind(self, shape: ConvShape) -> Result<FkwConv> {
        FkwConv::new(self, shape)
    }
}

/// The 56 candidate patterns in increasing mask order (as `tessera_sparsity::all_pattern_candidates`).
const CANDIDATES: [u16; 56] = candidates();

const fn candidates() -> [u16; 56] {
    let mut out = [0u16; 56];
    let (mut m, mut k) = (0u16, 0usize);
    while m < 512 {
        if m.count_ones() == 4 && m & 16 != 0 {
            out[k] = m;
            k += 1;
        }
        m += 1;
    }
    out
}

const fn taps_of(m: u16) -> [usize; 4] {
    let mut out = [0usize; 4];
    let (mut t, mut k) = (0, 0);
    while t < 9 {
        if m >> t & 1 == 1 && k < 4 {
            out[k] = t;
            k += 1;
        }
        t += 1;
    }
    out
}

/// A run of kernels on one input channel sharing a pattern (index into [`CANDIDATES`]).
#[derive(Debug, Clone, Copy)]
struct Run {
    pattern: u8,
    start: u32,
    end: u32,
}

/// An [`Fkw`] bound to a convolution, in channel-major execution order.
#[derive(Debug, Clone)]
pub struct FkwConv {
    f: Fkw,
    shape: ConvShape,
    layout: InputLayout,
    /// Offset of each of the 9 taps (channel 0).
    tap_offsets: [usize; 9],
    channel_stride: usize,
    /// Per input channel (all groups): first run.
    chan_run_ptr: Vec<u32>,
    runs: Vec<Run>,
    /// Output row and 4 weights of each kernel, in execution order.
    k_row: Vec<u32>,
    k_w: Vec<[f32; 4]>,
    /// Tiles of 1 x 8 lanes and 2 x 16 lanes.
    plans: [TilePlan; 2],
}

/// Vectors per tile row at `lanes` (9 tap vectors each must stay in registers).
fn vectors(lanes: usize) -> usize {
    if lanes == 16 { 2 } else { 1 }
}

impl FkwConv {
    /// Binds `f` to `shape`, which must be a 3x3 2-D convolution of matching channels.
    pub fn new(f: Fkw, shape: ConvShape) -> Result<Self> {
        if shape.kernel != [1, 3, 3]
            || !shape.is_2d()
            || f.rows != shape.out_channels
            || f.in_per_group != shape.in_per_group()
        {
            return Err(KernelError::InvalidShape {
                reason: format!(
                    "FKW weights of {} filters x {} channels do not fit {shape:?}",
                    f.rows, f.in_per_group
                ),
            });
        }
        let layout = shape.layout();
        let tap_offsets: [usize; 9] = std::array::from_fn(|t| layout.offset(0, [0, t / 3, t % 3]));
        let channel_stride = layout.channel_stride();
        // Transpose: (global channel, candidate pattern, filter) for every kernel.
        let np = f.patterns.len();
        let cand: Vec<u8> = f
            .patterns
            .iter()
            .map(|p| CANDIDATES.iter().position(|c| c == p).map(|i| i as u8))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| KernelError::InvalidShape {
                reason: "pattern outside the 56 4-tap candidates".into(),
            })?;
        let mut items: Vec<(usize, u8, u32, [f32; 4])> = Vec::with_capacity(f.index.len());
        for (fi, &row) in f.reorder.iter().enumerate() {
            let group_base = (row as usize / f.out_per_group) * f.in_per_group;
            let k0 = f.offset[fi] as usize;
            for (p, &cp) in cand.iter().enumerate() {
                for k in k0 + f.stride[fi * (np + 1) + p] as usize
                    ..k0 + f.stride[fi * (np + 1) + p + 1] as usize
                {
                    let w = [
                        f.weights[4 * k],
                        f.weights[4 * k + 1],
                        f.weights[4 * k + 2],
                        f.weights[4 * k + 3],
                    ];
                    items.push((group_base + f.index[k] as usize, cp, row, w));
                }
            }
        }
        items.sort_by_key(|it| (it.0, it.1, it.2));
        let mut chan_run_ptr = vec![0u32; shape.in_channels + 1];
        let mut runs: Vec<Run> = Vec::new();
        let mut k_row = Vec::with_capacity(items.len());
        let mut k_w = Vec::with_capacity(items.len());
        let mut c_prev = 0usize;
        for (i, &(c, p, row, w)) in items.iter().enumerate() {
            while c_prev < c {
                c_prev += 1;
                chan_run_ptr[c_prev] = runs.len() as u32;
            }
            match runs.last_mut() {
                Some(r) if r.pattern == p && i > 0 && items[i - 1].0 == c => r.end += 1,
                _ => runs.push(Run { pattern: p, start: i as u32, end: i as u32 + 1 }),
            }
            k_row.push(row);
            k_w.push(w);
        }
        while c_prev < shape.in_channels {
            c_prev += 1;
            chan_run_ptr[c_prev] = runs.len() as u32;
        }
        let plans = [
            TilePlan::with_vectors(&layout, 8, vectors(8)),
            TilePlan::with_vectors(&layout, 16, vectors(16)),
        ];
        Ok(FkwConv {
            f,
            shape,
            layout,
            tap_offsets,
            channel_stride,
            chan_run_ptr,
            runs,
            k_row,
            k_w,
            plans,
        })
    }

    /// The weights.
    pub fn weights(&self) -> &Fkw {
        &self.f
    }

    /// Floats of partial-sum tile buffer one thread needs.
    fn acc_len(&self) -> usize {
        self.f.rows * 32
    }

    /// Scratch for [`FkwConv::run`] with up to `threads` threads: the packed input and one
    /// partial-sum tile buffer per thread.
    pub fn scratch_for(&self, threads: usize) -> ConvScratch {
        ConvScratch::with_lengths((self.layout.packed_len(), threads.max(1) * self.acc_len()))
    }

    /// Scratch for up to two threads.
    pub fn scratch(&self) -> ConvScratch {
        self.scratch_for(2)
    }

    /// Runs the convolution on one sample.
    pub fn run(
        &self,
        isa: Isa,
        input: &[f32],
        output: &mut [f32],
        scratch: &mut ConvScratch,
        threads: usize,
    ) -> Result<()> {
        let s = &self.shape;
        let threads = threads.max(1);
        check_len("input", s.in_channels * s.input_plane(), input.len())?;
        check_len("output", s.out_channels * s.output_positions(), output.len())?;
        let (packed, acc) = scratch.parts();
        check_len("packed-input scratch", self.layout.packed_len(), packed.len())?;
        // The scratch starts on a 64-byte boundary and rows are 128 bytes, so every
        // read-modify-write of a partial-sum row touches whole cache lines.
        if acc.len() < threads * self.acc_len() {
            return Err(KernelError::BufferLength {
                what: "FKW tile scratch",
                expected: threads * self.acc_len(),
                found: acc.len(),
            });
        }
        self.layout.pack_with(isa, input, packed);
        let x = if self.layout.in_place() { input.as_ptr() } else { packed.as_ptr() };
        let plan = &self.plans[usize::from(isa.lanes() == 16)];
        let job = FkwJob {
            c: self,
            x,
            y: SendPtr(output.as_mut_ptr()),
            ystride: s.output_positions(),
            plan,
            direct: self.layout.flat_is_output(),
            acc: SendPtr(acc.as_mut_ptr()),
        };
        let n_tiles = plan.tiles.len();
        let chunk = n_tiles.div_ceil(threads);
        run_parallel(threads, |t| {
            fkw_tiles(isa, &job, t, (t * chunk).min(n_tiles), ((t + 1) * chunk).min(n_tiles))
        });
        Ok(())
    }
}

struct FkwJob<'a> {
    c: &'a FkwConv,
    x: *const f32,
    y: SendPtr,
    ystride: usize,
    plan: &'a TilePlan,
    direct: bool,
    acc: SendPtr,
}

// SAFETY: `x` is only read; each thread writes disjoint positions of `y` and its own part of
// `acc`.
unsafe impl Sync for FkwJob<'_> {}

simd_entry! {
    fn fkw_tiles(job: &FkwJob<'_>, thread: usize, t0: usize, t1: usize) => fkw_tiles_generic;
}

#[inline(always)]
fn fkw_tiles_generic<S: Simd>(job: &FkwJob<'_>, thread: usize, t0: usize, t1: usize) {
    if S::LANES == 16 {
        fkw_tiles_v::<S, 2>(job, thread, t0, t1)
    } else {
        fkw_tiles_v::<S, 1>(job, thread, t0, t1)
    }
}

macro_rules! dispatch_pattern {
    ($pattern:expr, $f:ident, $s:ty, $v:expr, $args:tt; $($n:literal)*) => {
        match $pattern {
            $($n => $f::<$s, $n, $v> $args,)*
            _ => {}
        }
    };
}

#[inline(always)]
fn fkw_tiles_v<S: Simd, const V: usize>(job: &FkwJob<'_>, thread: usize, t0: usize, t1: usize) {
    // SAFETY: thread `thread` owns acc[thread * rows * 32 ..][.. rows * 32] (checked in run).
    let acc = unsafe { job.acc.0.add(thread * job.c.acc_len()) };
    for ti in t0..t1 {
        // A run's short last tile computes one vector, not V (an 8x8 map with shared row
        // padding is 71 positions: 32 + 32 + 7).
        if V > 1 && job.plan.tiles[ti].1 <= S::LANES {
            fkw_tile::<S, 1>(job, acc, ti);
        } else {
            fkw_tile::<S, V>(job, acc, ti);
        }
    }
}

/// Tile `ti`, `V` vectors wide (the tile's positions fit them), accumulated in `acc`.
#[inline(always)]
fn fkw_tile<S: Simd, const V: usize>(job: &FkwJob<'_>, acc: *mut f32, ti: usize) {
    let c = job.c;
    let l = S::LANES;
    let width = V * l;
    let rows = c.f.rows;
    let plan = job.plan;
    let (p0, n) = plan.tiles[ti];
    let segs: &[Seg] = if job.direct {
        &[]
    } else {
        &plan.segs[plan.seg_ptr[ti] as usize..plan.seg_ptr[ti + 1] as usize]
    };
    let full = n == width;
    // SAFETY: the tile buffer holds rows x width floats; loads stay inside the input for
    // valid positions (layout); stores follow the tile plan.
    unsafe {
        std::ptr::write_bytes(acc, 0, rows * width);
        for ch in 0..c.shape.in_channels {
            let (r0, r1) = (c.chan_run_ptr[ch] as usize, c.chan_run_ptr[ch + 1] as usize);
            if r0 == r1 {
                continue;
            }
            let base = job.x.add(ch * c.channel_stride + p0);
            // Plain loops, not `array::from_fn`: closures are separate functions without
            // the caller's target features, and their intrinsics would not inline.
            let mut xs = [[S::zero(); V]; 9];
            for (t, xt) in xs.iter_mut().enumerate() {
                let p = base.add(c.tap_offsets[t]);
                for (v, xv) in xt.iter_mut().enumerate() {
                    let rem = n.saturating_sub(v * l);
                    *xv = if full || rem >= l {
                        S::load(p.add(v * l))
                    } else if rem > 0 {
                        S::load_partial(p.add(v * l), rem)
                    } else {
                        S::zero()
                    };
                }
            }
            for run in &c.runs[r0..r1] {
                let (k0, k1) = (run.start as usize, run.end as usize);
                let (krows, kw) = (&c.k_row[k0..k1], &c.k_w[k0..k1]);
                dispatch_pattern!(run.pattern, pattern_run, S, V, (&xs, krows, kw, acc, width);
                    0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27
                    28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55);
            }
        }
        for r in 0..rows {
            let mut a = [S::zero(); V];
            for (v, av) in a.iter_mut().enumerate() {
                *av = S::load(acc.add(r * width + v * l));
            }
            let y = job.y.0.add(r * job.ystride).wrapping_add(p0);
            let out = Out { y, stride: 0, n, segs, step: S::LANES as isize };
            if full {
                store_row::<S, V, true>(&out, 0, &a);
            } else {
                store_row::<S, V, false>(&out, 0, &a);
            }
        }
    }
}

/// Adds every kernel of a same-pattern run into its filter's partial sums. `P` is the
/// pattern's index among the 56 candidates, so the 4 tap registers are compile-time choices.
///
/// # Safety
/// `acc` holds `width`-float rows for every row in `rows`.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // `v` indexes four arrays at once
unsafe fn pattern_run<S: Simd, const P: usize, const V: usize>(
    xs: &[[S::V; V]; 9],
    rows: &[u32],
    ws: &[[f32; 4]],
    acc: *mut f32,
    width: usize,
) {
    let t = const { taps_of(CANDIDATES[P]) };
    let l = S::LANES;
    for (&row, w) in rows.iter().zip(ws) {
        let a = acc.add(row as usize * width);
        let (w0, w1, w2, w3) = (S::splat(w[0]), S::splat(w[1]), S::splat(w[2]), S::splat(w[3]));
        // Four chained FMAs into the loaded partial sums: every FP op is a useful MAC. (The
        // tree form, two products and three adds, measured the same or slower.)
        for v in 0..V {
            let mut s = S::load(a.add(v * l));
            s = S::fma(w0, xs[t[0]][v], s);
            s = S::fma(w1, xs[t[1]][v], s);
            s = S::fma(w2, xs[t[2]][v], s);
            s = S::fma(w3, xs[t[3]][v], s);
            S::store(a.add(v * l), s);
        }
    }
}
