//! Emission of the weighted layers: convolutions and fully connected layers as Rust functions
//! with the layer's shape, strides, padding, block shapes and pattern offsets as constants.
//!
//! Two forms, both exact for any mask:
//!
//! * **Row groups** (every scheme): the filters of a channel group that keep the *same*
//!   columns are grouped (up to [`MAX_GROUP_ROWS`] per group, in order of first appearance,
//!   so rows need not be adjacent: the same-structure reorder of the seeds, with the output
//!   row listed per filter as the inverse permutation). Block-punched, BSR and KGS blocks, a
//!   dense layer's chunks of 8 filters and column- or channel-pruned layers become groups of
//!   several filters that reuse every input row they load; unstructured rows are groups of
//!   one (CSR). Only kept weights are stored. A convolution accumulates one output row of
//!   every filter of the group at a time, so each input row loaded is reused by all of them.
//! * **Pattern** (pattern schemes on ungrouped 2-D convolutions with at most
//!   [`MAX_PATTERNS`] distinct kept-tap sets): one specialized function per pattern with its
//!   taps' offsets as const generics, a kernel table of (channel, pattern, first value), and a
//!   `match` per kernel, so each pattern's loop body is straight-line code.

use std::collections::HashMap;

use tessera_ir::{Activation, Param};
use tessera_kernels::ConvShape;
use tessera_sparsity::Scheme;

use super::Source;

/// Most filters per row group.
pub(crate) const MAX_GROUP_ROWS: usize = 8;
/// Most distinct kept-tap sets for the pattern form.
pub(crate) const MAX_PATTERNS: usize = 32;

/// How a weighted layer was emitted, for reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EmittedLayer {
    /// Node name.
    pub node: String,
    /// `row-groups` or `pattern`.
    pub form: &'static str,
    /// Row groups, or distinct patterns for the pattern form.
    pub groups: usize,
    /// Weights stored in the source (the kept ones).
    pub stored: usize,
    /// Weights of the dense layer.
    pub dense: usize,
}

/// Filters of one layer grouped by identical kept columns.
#[derive(Debug, Default)]
pub(crate) struct RowGroups {
    /// Output row of each grouped filter, group after group.
    pub rows: Vec<u32>,
    /// `rows[row_start[g]..row_start[g + 1]]` are group g's filters.
    pub row_start: Vec<u32>,
    /// Kept columns, group after group (relative to the filter's channel group).
    pub cols: Vec<u32>,
    /// `cols[col_start[g]..col_start[g + 1]]` are group g's columns.
    pub col_start: Vec<u32>,
    /// Group g's weights, `[rows][cols]` row-major, from `val_start[g]`.
    pub vals: Vec<f32>,
    /// First weight of each group.
    pub val_start: Vec<u32>,
    /// Most filters in a group.
    pub max_rows: usize,
}

impl RowGroups {
    /// Groups the `rows x cols` weight `w` (kept entries: `keep(i)` for flat index i); rows
    /// are grouped only inside blocks of `rows_per_group` consecutive rows (channel groups).
    pub(crate) fn build(
        rows: usize,
        rows_per_group: usize,
        cols: usize,
        w: &[f32],
        keep: &dyn Fn(usize) -> bool,
    ) -> RowGroups {
        let mut out = RowGroups {
            row_start: vec![0],
            col_start: vec![0],
            val_start: vec![0],
            ..Default::default()
        };
        let block = rows_per_group.max(1);
        for first in (0..rows).step_by(block) {
            // Column set -> filters keeping exactly it, in order of first appearance.
            let mut order: Vec<(Vec<u32>, Vec<u32>)> = Vec::new();
            let mut index: HashMap<Vec<u32>, usize> = HashMap::new();
            for r in first..(first + block).min(rows) {
                let kept: Vec<u32> =
                    (0..cols).filter(|&c| keep(r * cols + c)).map(|c| c as u32).collect();
                match index.get(&kept) {
                    Some(&i) => order[i].1.push(r as u32),
                    None => {
                        index.insert(kept.clone(), order.len());
                        order.push((kept, vec![r as u32]));
                    }
                }
            }
            for (kept, members) in order {
                for chunk in members.chunks(MAX_GROUP_ROWS) {
                    out.rows.extend_from_slice(chunk);
                    out.cols.extend_from_slice(&kept);
                    for &r in chunk {
                        let base = r as usize * cols;
                        out.vals.extend(kept.iter().map(|&c| w[base + c as usize]));
                    }
                    out.max_rows = out.max_rows.max(chunk.len());
                    out.row_start.push(out.rows.len() as u32);
                    out.col_start.push(out.cols.len() as u32);
                    out.val_start.push(out.vals.len() as u32);
                }
            }
        }
        out
    }

    /// Number of groups.
    pub(crate) fn len(&self) -> usize {
        self.row_start.len() - 1
    }

    /// Whether every group has the same number of filters.
    fn uniform_rows(&self) -> Option<usize> {
        let first = self.row_start.get(1).copied()? as usize;
        self.row_start.windows(2).all(|w| (w[1] - w[0]) as usize == first).then_some(first)
    }

    /// Inside a `for g in 0..G` loop: group g's filters, columns and weights.
    fn write_group_slices(src: &mut Source) {
        src.line("let rows = &ROWS[ROW_START[g] as usize..ROW_START[g + 1] as usize];");
        src.line("let cols = &COLS[COL_START[g] as usize..COL_START[g + 1] as usize];");
        src.line("let vals = &VALS[VAL_START[g] as usize..VAL_START[g + 1] as usize];");
    }

    fn write_tables(&self, src: &mut Source) {
        src.array("ROWS", "u32", &self.rows);
        src.array("ROW_START", "u32", &self.row_start);
        src.array("COLS", "u32", &self.cols);
        src.array("COL_START", "u32", &self.col_start);
        src.floats("VALS", &self.vals);
        src.array("VAL_START", "u32", &self.val_start);
    }
}

/// The expression applying `act` to `v` (an f32 expression).
pub(crate) fn act_expr(act: Option<Activation>, v: &str) -> String {
    match act {
        None => v.to_string(),
        Some(Activation::Relu) => format!("({v}).max(0.0)"),
        Some(Activation::Relu6) => format!("({v}).clamp(0.0, 6.0)"),
        Some(Activation::HardSwish) => format!("hard_swish({v})"),
        Some(Activation::Sigmoid) => format!("sigmoid({v})"),
        Some(Activation::Tanh) => format!("({v}).tanh()"),
        Some(Activation::Gelu) => format!("gelu({v})"),
    }
}

/// The kept-tap sets of a 2-D convolution weight with a pattern scheme, and each kernel's
/// pattern, when the pattern form applies.
struct Patterns {
    /// Distinct kept-tap sets (bit t = tap t of the kh x kw window), ascending.
    sets: Vec<u64>,
    /// Per filter, its kept kernels: (input channel, index into `sets`).
    kernels: Vec<Vec<(u32, u8)>>,
}

fn patterns_of(param: &Param, shape: &ConvShape) -> Option<Patterns> {
    let sp = param.sparsity.as_ref()?;
    if !matches!(sp.scheme, Scheme::Pattern(_))
        || shape.groups != 1
        || shape.kernel[0] != 1
        || shape.input[0] != 1
    {
        return None;
    }
    let taps = shape.kernel[1] * shape.kernel[2];
    if taps > 64 {
        return None;
    }
    let (o, c) = (shape.out_channels, shape.in_channels);
    let mut bits = Vec::with_capacity(o * c);
    for k in 0..o * c {
        bits.push((0..taps).fold(0u64, |b, t| b | u64::from(sp.mask.get(k * taps + t)) << t));
    }
    let mut sets: Vec<u64> = bits.iter().copied().filter(|&b| b != 0).collect();
    sets.sort_unstable();
    sets.dedup();
    if sets.len() > MAX_PATTERNS {
        return None;
    }
    let kernels = (0..o)
        .map(|f| {
            (0..c)
                .filter(|&ch| bits[f * c + ch] != 0)
                .map(|ch| {
                    let set = bits[f * c + ch];
                    (ch as u32, sets.iter().position(|&s| s == set).unwrap_or(0) as u8)
                })
                .collect()
        })
        .collect();
    Some(Patterns { sets, kernels })
}

/// Writes the layer's shape constants (3-D lifted: depth 1 for 2-D).
fn shape_consts(src: &mut Source, batch: usize, s: &ConvShape) {
    let o = s.output();
    let names = ["D", "H", "W"];
    src.line(format!("const N: usize = {batch};"));
    src.line(format!("const C: usize = {};", s.in_channels));
    src.line(format!("const O: usize = {};", s.out_channels));
    src.line(format!("const GROUPS: usize = {};", s.groups));
    src.line("const CPG: usize = C / GROUPS;");
    src.line("const OPG: usize = O / GROUPS;");
    for (i, n) in names.iter().enumerate() {
        src.line(format!(
            "const {n}: usize = {}; const O{n}: usize = {}; const K{n}: usize = {}; const S{n}: usize = {}; const P{n}: usize = {}; const D{n}: usize = {};",
            s.input[i], o[i], s.kernel[i], s.stride[i], s.padding[i], s.dilation[i]
        ));
    }
}

/// The statement adding `w * input[ow * SW + kw * DW - PW]` to `acc[lo..hi]` for one input
/// row `row` (`kw` an expression), vectorizable when the stride is 1.
fn row_update(stride_w: usize, acc: &str, w: &str, kw: &str) -> Vec<String> {
    let mut out = vec![
        format!("let lo = (PW.saturating_sub({kw} * DW) + SW - 1) / SW;"),
        format!(
            "let hi = if W + PW > {kw} * DW {{ ((W + PW - {kw} * DW - 1) / SW + 1).min(OW) }} else {{ 0 }};"
        ),
        "if lo < hi {".to_string(),
        format!("    let start = lo * SW + {kw} * DW - PW;"),
    ];
    if stride_w == 1 {
        out.push(format!(
            "    for (a, &v) in {acc}[lo..hi].iter_mut().zip(&row[start..start + (hi - lo)]) {{ *a += {w} * v; }}"
        ));
    } else {
        out.push(format!(
            "    for (a, &v) in {acc}[lo..hi].iter_mut().zip(row[start..].iter().step_by(SW)) {{ *a += {w} * v; }}"
        ));
    }
    out.push("}".to_string());
    out
}

/// Emits `fn {name}(x: &[f32], y: &mut [f32])` computing a convolution.
#[allow(clippy::too_many_arguments)] // a layer's whole description
pub(crate) fn emit_conv(
    src: &mut Source,
    name: &str,
    node: &str,
    batch: usize,
    shape: &ConvShape,
    param: &Param,
    bias: Option<&[f32]>,
    act: Option<Activation>,
) -> EmittedLayer {
    let dense = param.tensor.len();
    let scheme = param.sparsity.as_ref().map_or("dense".to_string(), |s| s.scheme.to_string());
    if let Some(p) = patterns_of(param, shape) {
        return emit_pattern_conv(src, name, node, batch, shape, param, bias, act, &p, &scheme);
    }
    let cols = shape.cols();
    let keep = |i: usize| param.sparsity.as_ref().is_none_or(|s| s.mask.get(i));
    let groups = RowGroups::build(
        shape.out_channels,
        shape.out_per_group(),
        cols,
        &param.tensor.data,
        &keep,
    );
    src.line(format!(
        "/// `{node}`: {}x{}x{:?} conv ({scheme}), {} row groups of <= {} filters sharing kept columns, {} of {dense} weights kept.",
        shape.out_channels,
        shape.in_channels / shape.groups,
        shape.kernel,
        groups.len(),
        groups.max_rows,
        groups.vals.len()
    ));
    src.open(format!("fn {name}(x: &[f32], y: &mut [f32])"));
    shape_consts(src, batch, shape);
    src.line(format!("const G: usize = {};", groups.len()));
    let rows_const = groups.uniform_rows();
    src.line(format!("const R: usize = {};", groups.max_rows.max(1)));
    groups.write_tables(src);
    write_bias(src, bias);
    src.line("let mut acc = [[0.0f32; OW]; R];");
    src.open("for n in 0..N");
    src.line("let x = &x[n * C * D * H * W..(n + 1) * C * D * H * W];");
    src.line("let y = &mut y[n * O * OD * OH * OW..(n + 1) * O * OD * OH * OW];");
    src.open("for g in 0..G");
    RowGroups::write_group_slices(src);
    src.line("let base = rows[0] as usize / OPG * CPG;");
    // A constant filter count lets the compiler unroll the loop over the group's filters.
    let nr = match rows_const {
        Some(r) => {
            src.line(format!("const NR: usize = {r};"));
            "NR"
        }
        None => {
            src.line("let nr = rows.len();");
            "nr"
        }
    };
    src.open("for od in 0..OD");
    src.open("for oh in 0..OH");
    src.line(format!("for a in acc.iter_mut().take({nr}) {{ *a = [0.0; OW]; }}"));
    src.open("for (j, &col) in cols.iter().enumerate()");
    src.line("let col = col as usize;");
    src.line("let c = base + col / (KD * KH * KW);");
    src.line("let (kd, kh, kw) = (col / (KH * KW) % KD, col / KW % KH, col % KW);");
    src.line("let id = (od * SD + kd * DD) as isize - PD as isize;");
    src.line("let ih = (oh * SH + kh * DH) as isize - PH as isize;");
    src.line("if id < 0 || id >= D as isize || ih < 0 || ih >= H as isize { continue; }");
    src.line("let row = &x[((c * D + id as usize) * H + ih as usize) * W..][..W];");
    src.open(format!("for r in 0..{nr}"));
    src.line("let w = vals[r * cols.len() + j];");
    src.line("let acc = &mut acc[r];");
    for l in row_update(shape.stride[2], "acc", "w", "kw") {
        src.line(l);
    }
    src.close();
    src.close();
    src.open(format!("for r in 0..{nr}"));
    src.line("let o = rows[r] as usize;");
    src.line(format!("let b = {};", if bias.is_some() { "BIAS[o]" } else { "0.0" }));
    src.line("let out = &mut y[((o * OD + od) * OH + oh) * OW..][..OW];");
    src.line(format!(
        "for (v, a) in out.iter_mut().zip(&acc[r]) {{ *v = {}; }}",
        act_expr(act, "a + b")
    ));
    src.close();
    src.close();
    src.close();
    src.close();
    src.close();
    src.close();
    EmittedLayer {
        node: node.to_string(),
        form: "row-groups",
        groups: groups.len(),
        stored: groups.vals.len(),
        dense,
    }
}

fn write_bias(src: &mut Source, bias: Option<&[f32]>) {
    if let Some(b) = bias {
        src.floats("BIAS", b);
    }
}

#[allow(clippy::too_many_arguments)] // a layer's whole description
fn emit_pattern_conv(
    src: &mut Source,
    name: &str,
    node: &str,
    batch: usize,
    shape: &ConvShape,
    param: &Param,
    bias: Option<&[f32]>,
    act: Option<Activation>,
    p: &Patterns,
    scheme: &str,
) -> EmittedLayer {
    let (kh, kw) = (shape.kernel[1], shape.kernel[2]);
    let taps = kh * kw;
    let c = shape.in_channels;
    // Kernel table: start per filter, channel, pattern and first value per kernel.
    let mut kstart = vec![0u32];
    let (mut kch, mut kpat, mut kval, mut vals) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (f, kernels) in p.kernels.iter().enumerate() {
        for &(ch, pat) in kernels {
            kch.push(ch);
            kpat.push(u32::from(pat));
            kval.push(vals.len() as u32);
            let set = p.sets[pat as usize];
            let base = (f * c + ch as usize) * taps;
            vals.extend(
                (0..taps).filter(|t| set >> t & 1 == 1).map(|t| param.tensor.data[base + t]),
            );
        }
        kstart.push(kch.len() as u32);
    }
    src.line(format!(
        "/// `{node}`: {}x{c}x{kh}x{kw} conv ({scheme}), {} kernels of {} patterns (one specialized function each), {} of {} weights kept.",
        shape.out_channels,
        kch.len(),
        p.sets.len(),
        vals.len(),
        param.tensor.len()
    ));
    src.open(format!("fn {name}(x: &[f32], y: &mut [f32])"));
    shape_consts(src, batch, shape);
    src.array("KSTART", "u32", &kstart);
    src.array("KCH", "u32", &kch);
    src.array("KPAT", "u32", &kpat);
    src.array("KVAL", "u32", &kval);
    src.floats("VALS", &vals);
    write_bias(src, bias);
    // One tap: a const (row, column) offset in the window.
    src.line("#[inline(always)]");
    src.open("fn tap<const TH: usize, const TW: usize>(acc: &mut [f32; OW], plane: &[f32], oh: usize, w: f32)");
    src.line("let ih = (oh * SH + TH * DH) as isize - PH as isize;");
    src.line("if ih < 0 || ih >= H as isize { return; }");
    src.line("let row = &plane[ih as usize * W..][..W];");
    for l in row_update(shape.stride[2], "acc", "w", "TW") {
        src.line(l);
    }
    src.close();
    for (i, set) in p.sets.iter().enumerate() {
        let kept: Vec<usize> = (0..taps).filter(|t| set >> t & 1 == 1).collect();
        src.line(format!("/// Pattern {i}: taps {kept:?} of the {kh}x{kw} window."));
        src.line("#[inline(always)]");
        src.open(format!(
            "fn pattern{i}(acc: &mut [f32; OW], plane: &[f32], oh: usize, w: &[f32])"
        ));
        for (j, t) in kept.iter().enumerate() {
            src.line(format!("tap::<{}, {}>(acc, plane, oh, w[{j}]);", t / kw, t % kw));
        }
        src.close();
    }
    src.line("let mut acc = [0.0f32; OW];");
    src.open("for n in 0..N");
    src.line("let x = &x[n * C * H * W..(n + 1) * C * H * W];");
    src.line("let y = &mut y[n * O * OH * OW..(n + 1) * O * OH * OW];");
    src.open("for o in 0..O");
    src.line(format!("let b = {};", if bias.is_some() { "BIAS[o]" } else { "0.0" }));
    src.open("for oh in 0..OH");
    src.line("acc = [0.0; OW];");
    src.open("for k in KSTART[o] as usize..KSTART[o + 1] as usize");
    src.line("let plane = &x[KCH[k] as usize * H * W..][..H * W];");
    src.line("let w = &VALS[KVAL[k] as usize..];");
    src.open("match KPAT[k]");
    let last = p.sets.len().saturating_sub(1);
    for i in 0..p.sets.len() {
        let arm = if i == last { "_".to_string() } else { i.to_string() };
        src.line(format!("{arm} => pattern{i}(&mut acc, plane, oh, w),"));
    }
    src.close();
    src.close();
    src.line("let out = &mut y[(o * OH + oh) * OW..][..OW];");
    src.line(format!(
        "for (v, a) in out.iter_mut().zip(&acc) {{ *v = {}; }}",
        act_expr(act, "a + b")
    ));
    src.close();
    src.close();
    src.close();
    src.close();
    EmittedLayer {
        node: node.to_string(),
        form: "pattern",
        groups: p.sets.len(),
        stored: vals.len(),
        dense: param.tensor.len(),
    }
}

/// Emits `fn {name}(x: &[f32], y: &mut [f32])` computing `y = act(x W^T + b)` over `m` rows.
#[allow(clippy::too_many_arguments)] // a layer's whole description
pub(crate) fn emit_linear(
    src: &mut Source,
    name: &str,
    node: &str,
    m: usize,
    param: &Param,
    bias: Option<&[f32]>,
    act: Option<Activation>,
) -> EmittedLayer {
    let (out_f, in_f) = (param.tensor.shape[0], param.tensor.shape[1]);
    let dense = param.tensor.len();
    let scheme = param.sparsity.as_ref().map_or("dense".to_string(), |s| s.scheme.to_string());
    let b = if bias.is_some() { "BIAS[o]" } else { "0.0" };
    match &param.sparsity {
        None => {
            src.line(format!(
                "/// `{node}`: {out_f}x{in_f} fully connected (dense), {dense} weights."
            ));
            src.open(format!("fn {name}(x: &[f32], y: &mut [f32])"));
            src.line(format!(
                "const M: usize = {m}; const IN: usize = {in_f}; const OUT: usize = {out_f};"
            ));
            src.floats("WEIGHT", &param.tensor.data);
            write_bias(src, bias);
            src.open("for i in 0..M");
            src.line("let x = &x[i * IN..(i + 1) * IN];");
            src.line("let y = &mut y[i * OUT..(i + 1) * OUT];");
            src.open("for o in 0..OUT");
            src.line(format!("let s = dot(&WEIGHT[o * IN..(o + 1) * IN], x) + {b};"));
            src.line(format!("y[o] = {};", act_expr(act, "s")));
            src.close();
            src.close();
            src.close();
            EmittedLayer {
                node: node.to_string(),
                form: "dense",
                groups: out_f.div_ceil(MAX_GROUP_ROWS),
                stored: dense,
                dense,
            }
        }
        Some(sp) => {
            let keep = |i: usize| sp.mask.get(i);
            let groups = RowGroups::build(out_f, out_f, in_f, &param.tensor.data, &keep);
            src.line(format!(
                "/// `{node}`: {out_f}x{in_f} fully connected ({scheme}), {} row groups sharing kept columns, {} of {dense} weights kept.",
                groups.len(),
                groups.vals.len()
            ));
            src.open(format!("fn {name}(x: &[f32], y: &mut [f32])"));
            src.line(format!(
                "const M: usize = {m}; const IN: usize = {in_f}; const OUT: usize = {out_f};"
            ));
            src.line(format!("const G: usize = {};", groups.len()));
            groups.write_tables(src);
            write_bias(src, bias);
            src.open("for i in 0..M");
            src.line("let x = &x[i * IN..(i + 1) * IN];");
            src.line("let y = &mut y[i * OUT..(i + 1) * OUT];");
            src.open("for g in 0..G");
            RowGroups::write_group_slices(src);
            src.open("for (r, &o) in rows.iter().enumerate()");
            src.line("let o = o as usize;");
            src.line("let w = &vals[r * cols.len()..(r + 1) * cols.len()];");
            src.line("let mut s = 0.0f32;");
            src.line("for (w, &c) in w.iter().zip(cols) { s += w * x[c as usize]; }");
            src.line(format!("let s = s + {b};"));
            src.line(format!("y[o] = {};", act_expr(act, "s")));
            src.close();
            src.close();
            src.close();
            src.close();
            EmittedLayer {
                node: node.to_string(),
                form: "row-groups",
                groups: groups.len(),
                stored: groups.vals.len(),
                dense,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_rows_group_together_and_empty_rows_stay() {
        // 5 rows x 4 cols: rows 0, 2 and 4 keep {0, 3}; row 1 keeps {1}; row 3 nothing.
        let kept = [[1, 0, 0, 1], [0, 1, 0, 0], [1, 0, 0, 1], [0, 0, 0, 0], [1, 0, 0, 1]];
        let w: Vec<f32> = (0..20).map(|i| i as f32).collect();
        let keep = |i: usize| kept[i / 4][i % 4] == 1;
        let g = RowGroups::build(5, 5, 4, &w, &keep);
        assert_eq!(g.rows, [0, 2, 4, 1, 3]);
        assert_eq!(g.row_start, [0, 3, 4, 5]);
        assert_eq!(g.cols, [0, 3, 1]);
        assert_eq!(g.col_start, [0, 2, 3, 3]);
        assert_eq!(g.vals, [0.0, 3.0, 8.0, 11.0, 16.0, 19.0, 5.0]);
        assert_eq!(g.val_start, [0, 6, 7, 7]);
        assert_eq!(g.max_rows, 3);
        assert_eq!(g.uniform_rows(), None);
    }

    #[test]
    fn groups_never_cross_channel_groups_or_exceed_eight_rows() {
        // 20 dense rows in channel groups of 10: groups of 8 + 2, twice.
        let w = vec![1.0f32; 20 * 3];
        let g = RowGroups::build(20, 10, 3, &w, &|_| true);
        assert_eq!(g.row_start, [0, 8, 10, 18, 20]);
        assert!(g.rows[..10].iter().all(|&r| r < 10));
        assert_eq!(g.vals.len(), 60);
    }
}
