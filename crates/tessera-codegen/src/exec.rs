//! Executing a plan's steps: the kernels of weighted layers with their bias and activation,
//! and the plain loops of the other ops, over disjoint ranges of the plan's arena.

use tessera_ir::Activation;
use tessera_kernels::{Clamp, Epilogue, Isa, OutputTarget};

use crate::buffers::Slot;
use crate::error::{CodegenError, Result};
use crate::lower::{ConvKernel, LinearKernel};

/// Per-sample sizes of a step's operands.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Io {
    pub(crate) x: Slot,
    pub(crate) y: Slot,
    /// Floats per sample of x and y.
    pub(crate) x_len: usize,
    pub(crate) y_len: usize,
}

/// Where a convolution packs its input from: a value stored in another convolution's packed
/// layout (`source`, `from_len` floats per sample), e.g. a residual block's input that its
/// producer stored phase-split for the block's 3x3 stride-2 convolution, read by a 1x1
/// stride-2 shortcut whose kernel cannot read that phase plane in place
/// (`ConvKernel::read_phase_plane`: FKW, the channel-vector kernel).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Repack {
    pub(crate) from: Slot,
    pub(crate) from_len: usize,
    pub(crate) source: OutputTarget,
}

#[derive(Debug)]
pub(crate) enum Step {
    Conv {
        node: String,
        io: Io,
        threads: usize,
        kernel: ConvKernel,
        bias: Option<Vec<f32>>,
        act: Option<Activation>,
        positions: usize,
        /// Floats of each sample's output the kernel writes (`io.y_len` unless the output
        /// is the next convolution's padded layout, whose slack it leaves alone).
        y_used: usize,
        /// The input is already in the kernel's packed layout (written by the previous
        /// convolution): no packing.
        prepacked: bool,
        /// A residual added before the activation (a fused `Add`), laid out as the output or
        /// as the kernel's residual layout (a conv -> conv edge's packed layout, see
        /// `fuse_conv_edges`), and its floats per sample.
        residual: Option<Slot>,
        residual_len: usize,
        /// The input is packed by this step from another convolution's packed layout
        /// (`io.x` then holds this kernel's own packed input; see `fuse_conv_edges`).
        repack: Option<Box<Repack>>,
        /// The instruction set this step runs at (the plan's, or 8 lanes where they are
        /// faster: [`crate::lower::conv_isa`]).
        isa: Isa,
    },
    Linear {
        node: String,
        io: Io,
        threads: usize,
        kernel: LinearKernel,
        bias: Option<Vec<f32>>,
        act: Option<Activation>,
        /// Rows of the input (all dims but the last) per sample.
        rows: usize,
        in_f: usize,
        out_f: usize,
    },
    /// Per-channel `y = x * scale + shift` (an unfolded batch norm).
    Affine {
        io: Io,
        scale: Vec<f32>,
        shift: Vec<f32>,
        positions: usize,
    },
    Act {
        io: Io,
        kind: Activation,
    },
    Add {
        a: Slot,
        b: Slot,
        y: Slot,
        act: Option<Activation>,
    },
    Pool {
        io: Io,
        pool: Pool2d,
    },
    GlobalAvg {
        io: Io,
        channels: usize,
        positions: usize,
    },
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Pool2d {
    pub(crate) max: bool,
    pub(crate) channels: usize,
    pub(crate) in_hw: [usize; 2],
    pub(crate) out_hw: [usize; 2],
    pub(crate) kernel: [usize; 2],
    pub(crate) stride: [usize; 2],
    pub(crate) padding: [usize; 2],
}

/// Splits the arena around the written slot `y`: (everything before, y, everything after).
fn split(arena: &mut [f32], y: Slot) -> (&[f32], &mut [f32], &[f32]) {
    let (before, rest) = arena.split_at_mut(y.offset);
    let (y, after) = rest.split_at_mut(y.len);
    (before, y, after)
}

/// A read slot, which the allocator keeps disjoint from the written one.
fn read<'a>(before: &'a [f32], after: &'a [f32], y: Slot, x: Slot) -> &'a [f32] {
    if x.offset + x.len <= y.offset {
        &before[x.offset..x.offset + x.len]
    } else {
        let start = x.offset - (y.offset + y.len);
        &after[start..start + x.len]
    }
}

fn apply_act(y: &mut [f32], act: Activation) {
    match act {
        Activation::Relu => y.iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::Relu6 => y.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0)),
        other => y.iter_mut().for_each(|v| *v = other.apply(*v)),
    }
}

/// Bias per channel, the residual, then the activation, over `[channels, positions]`.
fn epilogue(
    y: &mut [f32],
    positions: usize,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    act: Option<Activation>,
) {
    if let Some(b) = bias {
        for (row, &bv) in y.chunks_exact_mut(positions.max(1)).zip(b) {
            row.iter_mut().for_each(|v| *v += bv);
        }
    }
    if let Some(r) = residual {
        y.iter_mut().zip(r).for_each(|(v, r)| *v += r);
    }
    if let Some(a) = act {
        apply_act(y, a);
    }
}

/// The activation as a kernel epilogue, when it is one the kernels fuse.
pub(crate) fn clamp_of(act: Option<Activation>) -> Option<Clamp> {
    match act {
        None => Some(Clamp::None),
        Some(Activation::Relu) => Some(Clamp::Relu),
        Some(Activation::Relu6) => Some(Clamp::Relu6),
        Some(_) => None,
    }
}

/// One sample of a convolution, bias and activation included (fused into the row-group
/// kernels' stores when they can).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_once(
    kernel: &mut ConvKernel,
    isa: Isa,
    x: &[f32],
    y: &mut [f32],
    threads: usize,
    bias: Option<&[f32]>,
    act: Option<Activation>,
    positions: usize,
    residual: Option<&[f32]>,
) -> std::result::Result<(), tessera_kernels::KernelError> {
    let clamp = clamp_of(act);
    // What the kernel fuses: the row-group, BCR, pattern and channel-vector kernels take
    // bias, residual and a clamp activation; the depthwise kernel bias and a clamp (not a
    // residual). The rest runs after the store.
    let ep = Epilogue { bias, clamp: clamp.unwrap_or_default(), residual };
    let (bias_done, residual_done, act_done) = match kernel {
        ConvKernel::Rows { conv, scratch } => {
            conv.run_fused(isa, x, y, scratch, threads, ep)?;
            (true, true, clamp.is_some())
        }
        ConvKernel::ChannelVector { conv, scratch } => {
            conv.run(isa, x, y, scratch, threads, ep)?;
            (true, true, clamp.is_some())
        }
        ConvKernel::Depthwise { conv, scratch } => {
            let clamp = if residual.is_none() { clamp } else { None };
            let ep = Epilogue { bias, clamp: clamp.unwrap_or_default(), residual: None };
            conv.run(isa, x, y, scratch, threads, ep)?;
            (true, false, clamp.is_some())
        }
        // The pattern kernel's scratch holds a tile buffer per thread of the plan.
        ConvKernel::Fkw { conv, scratch } => {
            conv.run_fused(isa, x, y, scratch, threads, ep)?;
            (true, true, clamp.is_some())
        }
        ConvKernel::Bcr { conv, scratch } => {
            conv.run_fused(isa, x, y, scratch, threads, ep)?;
            (true, true, clamp.is_some())
        }
    };
    if !(bias_done && residual_done && act_done) {
        epilogue(
            y,
            positions,
            bias.filter(|_| !bias_done),
            residual.filter(|_| !residual_done),
            act.filter(|_| !act_done),
        );
    }
    Ok(())
}

/// One vector through a fully connected layer, bias and activation included.
pub(crate) fn linear_once(
    kernel: &LinearKernel,
    isa: Isa,
    x: &[f32],
    y: &mut [f32],
    threads: usize,
    bias: Option<&[f32]>,
    act: Option<Activation>,
) -> std::result::Result<(), tessera_kernels::KernelError> {
    match kernel {
        LinearKernel::Dense { weights, rows, cols } => {
            tessera_kernels::dense::sgemv(isa, *rows, *cols, weights, x, y, threads)?
        }
        LinearKernel::Rows(m) => tessera_kernels::rowgroup::gemv(isa, m, x, y, threads)?,
        LinearKernel::Bcr(conv) => conv.gemv(isa, x, y, threads)?,
    }
    if let Some(b) = bias {
        y.iter_mut().zip(b).for_each(|(v, b)| *v += b);
    }
    if let Some(a) = act {
        apply_act(y, a);
    }
    Ok(())
}

pub(crate) fn run_step(step: &mut Step, arena: &mut [f32], batch: usize, isa: Isa) -> Result<()> {
    match step {
        Step::Conv {
            node,
            io,
            threads,
            kernel,
            bias,
            act,
            positions,
            y_used,
            prepacked,
            residual,
            residual_len,
            repack,
            isa,
        } => {
            let isa = *isa;
            if let Some(rp) = repack {
                let layout =
                    kernel.prepackable_layout().ok_or_else(|| CodegenError::Unsupported {
                        node: node.clone(),
                        op: "conv",
                        reason: "this kernel packs its own input".into(),
                    })?;
                let (before, x_all, after) = split(arena, io.x);
                let src = read(before, after, io.x, rp.from);
                for n in 0..batch {
                    let from = &src[n * rp.from_len..(n + 1) * rp.from_len];
                    let to = &mut x_all[n * io.x_len..(n + 1) * io.x_len];
                    layout
                        .pack_from(isa, &rp.source, from, to)
                        .map_err(|source| CodegenError::Kernel { node: node.clone(), source })?;
                }
            }
            let (before, y_all, after) = split(arena, io.y);
            let x_all = read(before, after, io.y, io.x);
            let r_all = residual.map(|r| read(before, after, io.y, r));
            for n in 0..batch {
                let x = &x_all[n * io.x_len..(n + 1) * io.x_len];
                let y = &mut y_all[n * io.y_len..n * io.y_len + *y_used];
                let res = r_all.map(|r| &r[n * *residual_len..(n + 1) * *residual_len]);
                let done = match (&mut *kernel, *prepacked) {
                    (kernel, true) => {
                        let clamp = clamp_of(*act).ok_or_else(|| CodegenError::Unsupported {
                            node: node.clone(),
                            op: "conv",
                            reason: "a pre-packed input needs a fusable activation".into(),
                        })?;
                        let ep = Epilogue { bias: bias.as_deref(), clamp, residual: res };
                        kernel.run_prepacked(isa, x, y, *threads, ep)
                    }
                    _ => conv_once(
                        kernel,
                        isa,
                        x,
                        y,
                        *threads,
                        bias.as_deref(),
                        *act,
                        *positions,
                        res,
                    ),
                };
                done.map_err(|source| CodegenError::Kernel { node: node.clone(), source })?;
            }
        }
        Step::Linear { node, io, threads, kernel, bias, act, rows, in_f, out_f } => {
            let (before, y_all, after) = split(arena, io.y);
            let x_all = read(before, after, io.y, io.x);
            for r in 0..batch * *rows {
                let x = &x_all[r * *in_f..(r + 1) * *in_f];
                let y = &mut y_all[r * *out_f..(r + 1) * *out_f];
                linear_once(kernel, isa, x, y, *threads, bias.as_deref(), *act)
                    .map_err(|source| CodegenError::Kernel { node: node.clone(), source })?;
            }
        }
        Step::Affine { io, scale, shift, positions } => {
            let (before, y_all, after) = split(arena, io.y);
            let x_all = read(before, after, io.y, io.x);
            let p = (*positions).max(1);
            for (k, (yr, xr)) in y_all.chunks_exact_mut(p).zip(x_all.chunks_exact(p)).enumerate() {
                let c = k % scale.len().max(1);
                let (s, t) = (scale[c], shift[c]);
                yr.iter_mut().zip(xr).for_each(|(y, x)| *y = x * s + t);
            }
        }
        Step::Act { io, kind } => {
            let (before, y, after) = split(arena, io.y);
            y.copy_from_slice(read(before, after, io.y, io.x));
            apply_act(y, *kind);
        }
        Step::Add { a, b, y, act } => {
            let (before, out, after) = split(arena, *y);
            let (xa, xb) = (read(before, after, *y, *a), read(before, after, *y, *b));
            let pairs = out.iter_mut().zip(xa.iter().zip(xb));
            // One pass for the sum and its activation.
            match act {
                None => pairs.for_each(|(o, (p, q))| *o = p + q),
                Some(Activation::Relu) => pairs.for_each(|(o, (p, q))| *o = (p + q).max(0.0)),
                Some(Activation::Relu6) => {
                    pairs.for_each(|(o, (p, q))| *o = (p + q).clamp(0.0, 6.0));
                }
                Some(other) => pairs.for_each(|(o, (p, q))| *o = other.apply(p + q)),
            }
        }
        Step::Pool { io, pool } => {
            let (before, y_all, after) = split(arena, io.y);
            let x_all = read(before, after, io.y, io.x);
            for n in 0..batch {
                pool2d(
                    pool,
                    &x_all[n * io.x_len..(n + 1) * io.x_len],
                    &mut y_all[n * io.y_len..(n + 1) * io.y_len],
                );
            }
        }
        Step::GlobalAvg { io, channels, positions } => {
            let (before, y_all, after) = split(arena, io.y);
            let x_all = read(before, after, io.y, io.x);
            let p = (*positions).max(1);
            for (y, xr) in y_all.iter_mut().zip(x_all.chunks_exact(p)).take(batch * *channels) {
                *y = sum_lanes(xr) / p as f32;
            }
        }
    }
    Ok(())
}

/// The sum of `xs` in 16 interleaved partial sums (vectorized, and 16 independent chains
/// where `iter().sum()` was one chain of dependent adds: ResNet-20's global average pool of
/// 64 channels x 64 positions took 1.3 us of its 0.17 ms plan at 8x that way).
fn sum_lanes(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let mut chunks = xs.chunks_exact(16);
    for c in chunks.by_ref() {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

fn pool2d(p: &Pool2d, x: &[f32], y: &mut [f32]) {
    let [h, w] = p.in_hw;
    let [oh, ow] = p.out_hw;
    let ([kh, kw], [sh, sw], [ph, pw]) = (p.kernel, p.stride, p.padding);
    let area = (kh * kw) as f32;
    let plain_2x2 = p.max
        && p.kernel == [2, 2]
        && p.stride == [2, 2]
        && p.padding == [0, 0]
        && 2 * oh <= h
        && 2 * ow <= w;
    for (xc, yc) in x.chunks_exact(h * w).zip(y.chunks_exact_mut(oh * ow)).take(p.channels) {
        for (oy, yr) in yc.chunks_exact_mut(ow).enumerate() {
            if plain_2x2 {
                // The common case (VGG, LeNet): two rows, pairs of columns, no bounds.
                let r0 = &xc[2 * oy * w..2 * oy * w + w];
                let r1 = &xc[(2 * oy + 1) * w..(2 * oy + 1) * w + w];
                for (o, (a, b)) in yr.iter_mut().zip(r0.chunks_exact(2).zip(r1.chunks_exact(2))) {
                    *o = a[0].max(a[1]).max(b[0].max(b[1]));
                }
                continue;
            }
            yr.fill(if p.max { f32::NEG_INFINITY } else { 0.0 });
            for ky in 0..kh {
                let Some(iy) = (oy * sh + ky).checked_sub(ph).filter(|&iy| iy < h) else {
                    continue;
                };
                let row = &xc[iy * w..(iy + 1) * w];
                for kx in 0..kw {
                    // Output columns whose input column ox * sw + kx - pw lies inside the row.
                    let lo = pw.saturating_sub(kx).div_ceil(sw);
                    let hi = ((w + pw).saturating_sub(kx)).div_ceil(sw).min(ow);
                    if lo >= hi {
                        continue;
                    }
                    let first = lo * sw + kx - pw;
                    let taps = row[first..].iter().step_by(sw);
                    if p.max {
                        yr[lo..hi].iter_mut().zip(taps).for_each(|(o, &v)| *o = o.max(v));
                    } else {
                        yr[lo..hi].iter_mut().zip(taps).for_each(|(o, &v)| *o += v);
                    }
                }
            }
            if !p.max {
                yr.iter_mut().for_each(|o| *o /= area);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sum_lanes;

    #[test]
    fn sum_lanes_matches_a_double_precision_sum_at_every_length() {
        for n in [0usize, 1, 7, 15, 16, 17, 31, 32, 33, 64, 100, 1000] {
            let xs: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
            let want: f64 = xs.iter().map(|&v| f64::from(v)).sum();
            let got = f64::from(sum_lanes(&xs));
            assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "n {n}: {got} vs {want}");
        }
    }
}
