//! Running an IR graph on simulated crossbars.
//!
//! [`MappedGraph::new`] folds batch norms and fuses activations (the deployed weights), then maps
//! every 2-D convolution (per channel group, as im2col rows `C/g * kh * kw`) and every linear
//! layer onto crossbars, fault-free. [`MappedGraph::chip`] draws one chip instance: stuck-at
//! faults and variation from a seed, independently per matrix. [`Chip::run`] executes the graph:
//! convolutions and linear layers as crossbar MVMs, everything else with the reference
//! interpreter ([`tessera_ir::interp::eval_node`]).
//!
//! Inputs of every crossbar layer are quantized per sample to `input_bits` (unsigned when the
//! sample has no negative value, as after a ReLU; two's complement otherwise, MSB weighted
//! negative). A layer whose ADC is lossless runs as one dense GEMM over the folded effective
//! weights ([`MappedMatrix::effective_weights`]); otherwise every MVM runs bit-serially, in
//! parallel over MVMs with per-thread scratch (no allocation per MVM).

use std::collections::HashMap;
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tessera_ir::passes::{FoldBatchNorm, FoldReshapes, FuseActivation, Pipeline};
use tessera_ir::{Activation, Graph, Op, Tensor, interp};

use crate::config::{CrossbarConfig, bits_for};
use crate::crossbar::{MappedMatrix, MvmScratch};
use crate::error::{ReramError, Result};
use crate::fault::{FaultMap, FaultModel, stream_rng, variation};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Conv {
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        kernel: [usize; 2],
        groups: usize,
    },
    Linear,
}

#[derive(Debug, Clone)]
struct MappedLayer {
    node: usize,
    kind: Kind,
    /// One matrix per channel group.
    matrices: Vec<MappedMatrix>,
    bias: Option<Vec<f32>>,
    activation: Option<Activation>,
}

/// Size of one mapped layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// Node name.
    pub name: String,
    /// Outputs x inputs of the GEMM view (per group: `out / groups` x `k`).
    pub out: usize,
    /// Inputs per MVM.
    pub k: usize,
    /// Channel groups (one matrix each).
    pub groups: usize,
    /// Crossbars occupied.
    pub crossbars: usize,
    /// Cells in use.
    pub cells: usize,
    /// Non-zero weights.
    pub nonzero_weights: usize,
}

/// A graph mapped onto crossbars, before faults.
#[derive(Debug, Clone)]
pub struct MappedGraph {
    config: CrossbarConfig,
    graph: Graph,
    layers: Vec<MappedLayer>,
    info: Vec<LayerInfo>,
}

impl MappedGraph {
    /// Folds batch norms and activations into the weighted layers and maps every 2-D
    /// convolution and linear layer of `graph` under `config`. Dead channels are removed
    /// first (fewer crossbars) when `config.compact`, except under a polarized mapping:
    /// removing an input channel shifts the weight columns after it, which would move the
    /// fragment boundaries the weights were polarized for.
    pub fn new(graph: &Graph, config: &CrossbarConfig) -> Result<Self> {
        config.validate()?;
        let polarized = matches!(config.mapping, crate::Mapping::Polarized { .. });
        let pipeline = if config.compact && !polarized {
            Pipeline::standard()
        } else {
            Pipeline::new(vec![
                Box::new(FoldBatchNorm),
                Box::new(FuseActivation),
                Box::new(FoldReshapes),
            ])
        };
        let (graph, _) = pipeline.run(graph.clone())?;
        let mut layers = Vec::new();
        let mut info = Vec::new();
        for (i, node) in graph.nodes.iter().enumerate() {
            let (weight, bias, activation, kind) = match &node.op {
                Op::Conv { weight, bias, stride, padding, dilation, groups, activation } => {
                    let w = &graph.param(weight)?.tensor;
                    if w.shape.len() != 4 {
                        return Err(ReramError::Layer {
                            layer: node.name.clone(),
                            reason: format!(
                                "only 2-D convolutions are mapped onto crossbars (weight shape {:?})",
                                w.shape
                            ),
                        });
                    }
                    let kind = Kind::Conv {
                        stride: [stride[0], stride[1]],
                        padding: [padding[0], padding[1]],
                        dilation: [dilation[0], dilation[1]],
                        kernel: [w.shape[2], w.shape[3]],
                        groups: *groups,
                    };
                    (weight, bias, *activation, kind)
                }
                Op::Linear { weight, bias, activation } => {
                    (weight, bias, *activation, Kind::Linear)
                }
                _ => continue,
            };
            let w = &graph.param(weight)?.tensor;
            let groups = match kind {
                Kind::Conv { groups, .. } => groups,
                Kind::Linear => 1,
            };
            let out = w.shape[0];
            let k = w.len() / out;
            let per = out / groups;
            let matrices = (0..groups)
                .map(|g| {
                    let name = if groups == 1 {
                        node.name.clone()
                    } else {
                        format!("{}[group {g}]", node.name)
                    };
                    MappedMatrix::encode(
                        config,
                        &name,
                        &w.data[g * per * k..(g + 1) * per * k],
                        per,
                        k,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            info.push(LayerInfo {
                name: node.name.clone(),
                out: per,
                k,
                groups,
                crossbars: matrices.iter().map(MappedMatrix::crossbars).sum(),
                cells: matrices.iter().map(MappedMatrix::cells).sum(),
                nonzero_weights: w.data.iter().filter(|v| **v != 0.0).count(),
            });
            let bias = match bias {
                Some(b) => Some(graph.param(b)?.tensor.data.clone()),
                None => None,
            };
            layers.push(MappedLayer { node: i, kind, matrices, bias, activation });
        }
        Ok(MappedGraph { config: config.clone(), graph, layers, info })
    }

    /// The settings.
    pub fn config(&self) -> &CrossbarConfig {
        &self.config
    }

    /// The graph as deployed (batch norms folded, activations fused).
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Per-layer sizes.
    pub fn layers(&self) -> &[LayerInfo] {
        &self.info
    }

    /// Crossbars of the whole model.
    pub fn crossbars(&self) -> usize {
        self.info.iter().map(|l| l.crossbars).sum()
    }

    /// Draws the stuck-at faults of chip `seed`: one map per matrix, in layer order.
    pub fn sample_faults(&self, model: &FaultModel, seed: u64) -> Result<Vec<FaultMap>> {
        model.validate()?;
        Ok(self
            .matrices()
            .enumerate()
            .map(|(i, m)| {
                let mut rng = stream_rng(seed, i as u64);
                FaultMap::sample(model, m.k(), m.columns(), m.crossbar_shape(), &mut rng)
            })
            .collect())
    }

    /// Chip instance `seed`: stuck-at faults and variation drawn from `model`.
    pub fn chip(&self, model: &FaultModel, seed: u64) -> Result<Chip<'_>> {
        let maps = self.sample_faults(model, seed)?;
        self.chip_with(&maps, model.variation_sigma, seed)
    }

    /// A chip with the given fault maps (one per matrix, as [`Self::sample_faults`] returns)
    /// and log-normal variation `sigma` drawn from `seed` (streams apart from the faults').
    pub fn chip_with(&self, faults: &[FaultMap], sigma: f64, seed: u64) -> Result<Chip<'_>> {
        let count = self.matrices().count();
        if faults.len() != count {
            return Err(ReramError::Config {
                field: "faults".into(),
                reason: format!("{} fault maps for {count} mapped matrices", faults.len()),
            });
        }
        let mut chips = Vec::with_capacity(count);
        for (i, (m, f)) in self.matrices().zip(faults).enumerate() {
            let mut m = m.clone();
            m.inject(f)?;
            if sigma > 0.0 {
                let mut rng = stream_rng(seed, (1u64 << 32) + i as u64);
                m.vary(&variation(sigma, m.cells(), &mut rng))?;
            }
            let effective = m.lossless().then(|| m.effective_weights());
            chips.push(ChipMatrix { matrix: m, effective });
        }
        let mut it = chips.into_iter();
        let layers = self
            .layers
            .iter()
            .map(|l| l.matrices.iter().map(|_| it.next()).collect::<Option<Vec<_>>>())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ReramError::Config {
                field: "faults".into(),
                reason: "matrix count".into(),
            })?;
        Ok(Chip { base: self, matrices: layers })
    }

    fn matrices(&self) -> impl Iterator<Item = &MappedMatrix> {
        self.layers.iter().flat_map(|l| l.matrices.iter())
    }
}

#[derive(Debug, Clone)]
struct ChipMatrix {
    matrix: MappedMatrix,
    /// Folded weights `[k][out]` when the ADC is lossless for this matrix.
    effective: Option<Vec<f32>>,
}

/// One simulated chip: a mapped graph with its faults and variation in place.
#[derive(Debug, Clone)]
pub struct Chip<'a> {
    base: &'a MappedGraph,
    matrices: Vec<Vec<ChipMatrix>>,
}

/// What one crossbar layer did during [`Chip::run_profiled`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LayerProfile {
    /// Node name.
    pub name: String,
    /// Matrix-vector products (one input vector through one group's matrix).
    pub mvms: u64,
    /// Whether the layer ran bit-serially (the ADC could round or saturate).
    pub bit_serial: bool,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Rows per ADC segment the skipping statistics use.
    pub segment_rows: usize,
    /// Segment activations without skipping: MVMs x segments x input bits.
    pub cycles_full: u64,
    /// With leading-zero skipping: each segment runs for the bit length of its largest input.
    pub cycles_leading_zero: u64,
    /// With all-zero bit-plane skipping: each segment runs for the bit planes that have a 1.
    pub cycles_nonzero_planes: u64,
}

impl<'a> Chip<'a> {
    /// Runs every layer bit-serially, even where the folded weights would be exact (to check
    /// the two engines against each other, or to time the bit-serial one).
    pub fn force_bit_serial(&mut self) {
        for m in self.matrices.iter_mut().flatten() {
            m.effective = None;
        }
    }

    /// Runs the graph on `inputs` (batch first) and returns its outputs.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        self.execute(inputs, None)
    }

    /// [`Self::run`], also counting MVMs, time and input zero-skipping per crossbar layer
    /// (appended to `profile`, one entry per layer, summed over calls by the caller).
    pub fn run_profiled(
        &self,
        inputs: &[Tensor],
        profile: &mut Vec<LayerProfile>,
    ) -> Result<Vec<Tensor>> {
        self.execute(inputs, Some(profile))
    }

    fn execute(
        &self,
        inputs: &[Tensor],
        mut profile: Option<&mut Vec<LayerProfile>>,
    ) -> Result<Vec<Tensor>> {
        let by_node: HashMap<usize, usize> =
            self.base.layers.iter().enumerate().map(|(li, l)| (l.node, li)).collect();
        interp::run_with(&self.base.graph, inputs, |k, node, ins, out_shape| {
            let &li = by_node.get(&k)?;
            let start = Instant::now();
            let mut prof = LayerProfile { name: node.name.clone(), ..Default::default() };
            let y =
                self.crossbar_layer(li, ins[0], out_shape, profile.is_some().then_some(&mut prof));
            if let Some(p) = profile.as_deref_mut() {
                prof.seconds = start.elapsed().as_secs_f64();
                p.push(prof);
            }
            Some(y)
        })
    }

    fn crossbar_layer(
        &self,
        li: usize,
        x: &Tensor,
        out_shape: &[usize],
        mut prof: Option<&mut LayerProfile>,
    ) -> Result<Vec<f32>> {
        let layer = &self.base.layers[li];
        let cfg = &self.base.config;
        let n = x.shape[0];
        let (codes, scales, signed) = quantize_inputs(x, cfg.input_bits);
        let out_len: usize = out_shape.iter().product();
        let mut y = vec![0.0f32; out_len];
        // MVMs per sample: output positions of a convolution, rows of a linear layer's input.
        let positions = match layer.kind {
            Kind::Conv { .. } => out_shape[2..].iter().product(),
            Kind::Linear => x.len() / layer.matrices[0].k() / n.max(1),
        };
        let rows = n * positions;
        let total_out: usize = self.matrices[li].iter().map(|m| m.matrix.out()).sum();
        let mut unfolded = Vec::new();
        let mut prod = Vec::new();
        for (g, cm) in self.matrices[li].iter().enumerate() {
            let m = &cm.matrix;
            let (k, og) = (m.k(), m.out());
            // MVM inputs, one row of `k` codes each: unfolded for a convolution, the codes
            // themselves for a linear layer.
            let cols: &[f32] = match layer.kind {
                Kind::Conv { stride, padding, dilation, kernel, groups } => {
                    im2col(
                        &codes,
                        &x.shape,
                        g,
                        groups,
                        kernel,
                        stride,
                        padding,
                        dilation,
                        out_shape,
                        &mut unfolded,
                    );
                    &unfolded
                }
                Kind::Linear => &codes,
            };
            prod.clear();
            prod.resize(rows * og, 0.0f32);
            match &cm.effective {
                Some(w) => {
                    tessera_kernels::dense::sgemm(
                        rows,
                        k,
                        og,
                        cols,
                        w,
                        &mut prod,
                        rayon::current_num_threads(),
                    )?;
                }
                None => {
                    let bits = cfg.input_bits;
                    prod.par_chunks_mut(og).enumerate().for_each_init(
                        || (MvmScratch::default(), vec![0i32; k], vec![0.0f64; og]),
                        |(scratch, xq, yr), (row, out)| {
                            for (q, &c) in xq.iter_mut().zip(&cols[row * k..(row + 1) * k]) {
                                *q = c as i32;
                            }
                            m.mvm_bit_serial(xq, bits, signed[row / positions], scratch, yr);
                            for (o, v) in out.iter_mut().zip(yr.iter()) {
                                *o = *v as f32;
                            }
                        },
                    );
                }
            }
            if let Some(p) = prof.as_deref_mut() {
                p.mvms += rows as u64;
                p.bit_serial |= cm.effective.is_none();
                p.segment_rows = m.segment_rows();
                skip_stats(cols, k, m.segment_rows(), cfg.input_bits, &signed, positions, p);
            }
            // Scatter to the output layout, rescale by the sample's input step, add the bias.
            for row in 0..rows {
                let (s, pos) = (row / positions, row % positions);
                let scale = scales[s];
                for o in 0..og {
                    let oc = g * og + o;
                    let v = prod[row * og + o] * scale + layer.bias.as_ref().map_or(0.0, |b| b[oc]);
                    let idx = match layer.kind {
                        Kind::Conv { .. } => (s * total_out + oc) * positions + pos,
                        Kind::Linear => row * og + o,
                    };
                    y[idx] = v;
                }
            }
        }
        if let Some(a) = layer.activation {
            for v in &mut y {
                *v = a.apply(*v);
            }
        }
        Ok(y)
    }
}

/// Per-sample input quantization: integer codes (as f32, exact), the step per sample, and
/// whether each sample is signed (two's complement) or unsigned.
fn quantize_inputs(x: &Tensor, bits: u32) -> (Vec<f32>, Vec<f32>, Vec<bool>) {
    let n = x.shape[0].max(1);
    let per = x.len() / n;
    let mut codes = vec![0.0f32; x.len()];
    let mut scales = Vec::with_capacity(n);
    let mut signed = Vec::with_capacity(n);
    for (src, dst) in x.data.chunks(per.max(1)).zip(codes.chunks_mut(per.max(1))).take(n) {
        let neg = src.iter().any(|&v| v < 0.0);
        let max_abs = src.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
        let qmax = if neg { (1i64 << (bits - 1)) - 1 } else { (1i64 << bits) - 1 } as f32;
        let step = if max_abs > 0.0 { max_abs / qmax } else { 1.0 };
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = (v / step).round().clamp(-qmax, qmax);
        }
        scales.push(step);
        signed.push(neg);
    }
    (codes, scales, signed)
}

/// Unfolds group `g` of an NCHW tensor into rows `[n * positions][k]`, `k = C/g * kh * kw`.
#[allow(clippy::too_many_arguments)]
fn im2col(
    x: &[f32],
    shape: &[usize],
    g: usize,
    groups: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    out_shape: &[usize],
    cols: &mut Vec<f32>,
) {
    let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
    let (oh, ow) = (out_shape[2], out_shape[3]);
    let cg = c / groups;
    let k = cg * kernel[0] * kernel[1];
    cols.clear();
    cols.resize(n * oh * ow * k, 0.0);
    cols.par_chunks_mut(oh * ow * k).enumerate().for_each(|(s, dst)| {
        for oy in 0..oh {
            for ox in 0..ow {
                let row = &mut dst[(oy * ow + ox) * k..(oy * ow + ox + 1) * k];
                let mut j = 0;
                for ci in 0..cg {
                    let plane =
                        &x[((s * c) + g * cg + ci) * h * w..((s * c) + g * cg + ci + 1) * h * w];
                    for ky in 0..kernel[0] {
                        let iy = (oy * stride[0] + ky * dilation[0]) as isize - padding[0] as isize;
                        for kx in 0..kernel[1] {
                            let ix =
                                (ox * stride[1] + kx * dilation[1]) as isize - padding[1] as isize;
                            row[j] = if iy >= 0 && (iy as usize) < h && ix >= 0 && (ix as usize) < w
                            {
                                plane[iy as usize * w + ix as usize]
                            } else {
                                0.0
                            };
                            j += 1;
                        }
                    }
                }
            }
        }
    });
}

/// Zero-skipping statistics of MVM inputs `cols` (`[mvms][k]` codes) over segments of `seg`
/// rows. Signed (two's complement) samples cannot skip leading bits, so they count in full.
fn skip_stats(
    cols: &[f32],
    k: usize,
    seg: usize,
    bits: u32,
    signed: &[bool],
    rows_per_sample: usize,
    p: &mut LayerProfile,
) {
    let segments = k.div_ceil(seg) as u64;
    for (row, x) in cols.chunks(k).enumerate() {
        p.cycles_full += segments * u64::from(bits);
        if signed[row / rows_per_sample] {
            p.cycles_leading_zero += segments * u64::from(bits);
            p.cycles_nonzero_planes += segments * u64::from(bits);
            continue;
        }
        for frag in x.chunks(seg) {
            let (mut max, mut or) = (0u64, 0u64);
            for &v in frag {
                let c = v as u64;
                max = max.max(c);
                or |= c;
            }
            if max > 0 {
                p.cycles_leading_zero += u64::from(bits_for(max));
            }
            p.cycles_nonzero_planes += u64::from(or.count_ones());
        }
    }
}
