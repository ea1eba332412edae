//! Depthwise-separable replacement of a convolution (the search's "separable" operator
//! choice), initialized by network decoupling.
//!
//! A `k x k` convolution `W [O, I, k...]` is rewritten as a depthwise convolution
//! `D [I, 1, k...]` (same stride, padding and dilation, one group per input channel) followed
//! by a pointwise one `P [O, I, 1...]` (the original bias and fused activation). With no
//! nonlinearity in between, the pair computes the convolution with the weights
//! `W'[o, i, :] = P[o, i] * D[i, :]`: per input channel `i` a rank-1 matrix. The best such
//! weights in the Frobenius norm (Eckart-Young) come from the top singular triple of each
//! `A_i = W[:, i, :]` (`O x k^2`): `D[i] = v_1`, `P[:, i] = A_i v_1 = s_1 u_1` ("network
//! decoupling", Guo et al. 2018, keeps the first term of the exact decomposition). `v_1` is
//! the top eigenvector of the small symmetric matrix `A_i^T A_i` (`k^2 x k^2`), found by
//! cyclic Jacobi rotations in f64; its sign is fixed so that its largest entry is positive,
//! so the result is deterministic.
//!
//! The multiply-adds fall from `O I k^2` to `I k^2 + O I` per output position: 5.8x for a
//! 16-channel 3x3 convolution, 7.9x at 64 channels.

use crate::error::{IrError, Result};
use crate::graph::{Graph, Node};
use crate::op::Op;
use crate::tensor::{Param, Tensor};

/// The rank-1-per-input-channel factorization of a convolution weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoupled {
    /// Depthwise weight `[I, 1, k...]`.
    pub depthwise: Tensor,
    /// Pointwise weight `[O, I, 1...]`.
    pub pointwise: Tensor,
    /// `||W - W'||_F / ||W||_F` (0 for an all-zero weight).
    pub relative_error: f64,
}

/// Eigenvalues and eigenvectors (columns of the returned row-major `n x n` matrix) of the
/// symmetric row-major `n x n` matrix `a`, by cyclic Jacobi rotations.
fn symmetric_eigen(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let scale: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    for _sweep in 0..64 {
        let off: f64 = (0..n)
            .flat_map(|p| (0..n).filter(move |&q| q != p).map(move |q| (p, q)))
            .map(|(p, q)| a[p * n + q].powi(2))
            .sum();
        if off.sqrt() <= 1e-15 * scale || scale == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                // The rotation that zeroes a[p][q] (Golub & Van Loan, Algorithm 8.4.1).
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// The best rank-1-per-input-channel factorization of a dense convolution weight
/// `[O, I, k...]` (module docs). Grouped weights are not supported: the caller passes an
/// ungrouped convolution's weight.
pub fn decouple(weight: &Tensor) -> Result<Decoupled> {
    let bad = |reason: String| IrError::BadParam { param: "weight".into(), reason };
    if weight.shape.len() < 3 {
        return Err(bad(format!(
            "expected a convolution weight [O, I, k...], got {:?}",
            weight.shape
        )));
    }
    let (o, i) = (weight.shape[0], weight.shape[1]);
    let kvol: usize = weight.shape[2..].iter().product();
    if weight.data.len() != o * i * kvol {
        return Err(bad(format!("{} values for shape {:?}", weight.data.len(), weight.shape)));
    }
    let mut dw = vec![0.0f32; i * kvol];
    let mut pw = vec![0.0f32; o * i];
    let (mut err2, mut total2) = (0.0f64, 0.0f64);
    for c in 0..i {
        let a = |r: usize, j: usize| f64::from(weight.data[(r * i + c) * kvol + j]);
        // G = A^T A (kvol x kvol).
        let mut g = vec![0.0f64; kvol * kvol];
        for r in 0..o {
            for p in 0..kvol {
                let ap = a(r, p);
                for q in 0..kvol {
                    g[p * kvol + q] += ap * a(r, q);
                }
            }
        }
        let norm2: f64 = (0..kvol).map(|p| g[p * kvol + p]).sum();
        let (values, vectors) = symmetric_eigen(g, kvol);
        let top = (0..kvol).max_by(|&x, &y| values[x].total_cmp(&values[y])).unwrap_or(0);
        let mut v: Vec<f64> = (0..kvol).map(|p| vectors[p * kvol + top]).collect();
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let big = v.iter().copied().fold(0.0f64, |m, x| if x.abs() > m.abs() { x } else { m });
        let sign = if big < 0.0 { -1.0 } else { 1.0 };
        v.iter_mut().for_each(|x| *x *= sign / norm.max(f64::MIN_POSITIVE));
        for (p, &x) in v.iter().enumerate() {
            dw[c * kvol + p] = x as f32;
        }
        for r in 0..o {
            let s: f64 = (0..kvol).map(|p| a(r, p) * v[p]).sum();
            pw[r * i + c] = s as f32;
        }
        // The error of the stored (f32) factors, directly (not ||A||^2 - ||A v||^2, which
        // cancels to noise when A is nearly rank 1).
        for r in 0..o {
            let s = f64::from(pw[r * i + c]);
            err2 +=
                (0..kvol).map(|p| (a(r, p) - s * f64::from(dw[c * kvol + p])).powi(2)).sum::<f64>();
        }
        total2 += norm2;
    }
    let mut dw_shape = vec![i, 1];
    dw_shape.extend(&weight.shape[2..]);
    let mut pw_shape = vec![o, i];
    pw_shape.extend(std::iter::repeat_n(1, weight.shape.len() - 2));
    Ok(Decoupled {
        depthwise: Tensor::new(dw_shape, dw),
        pointwise: Tensor::new(pw_shape, pw),
        relative_error: if total2 > 0.0 { (err2 / total2).sqrt() } else { 0.0 },
    })
}

impl Graph {
    /// Replaces the ungrouped convolution `node` by a depthwise convolution `{prefix}.depthwise`
    /// and a pointwise one `{prefix}.pointwise` (weights `{prefix}.depthwise.weight` and
    /// `{prefix}.pointwise.weight`), initialized by [`decouple`]; the pointwise node takes the
    /// original bias, fused activation and output value, so consumers are untouched. Returns
    /// the factorization's relative error. A pruned weight, a grouped or 1x1 convolution, or
    /// a name already taken is an error naming the node.
    pub fn separate_conv(&mut self, node: &str, prefix: &str) -> Result<f64> {
        let bad = |reason: String| IrError::BadNode { node: node.into(), reason };
        let k = self
            .nodes
            .iter()
            .position(|n| n.name == node)
            .ok_or_else(|| bad("no such node".into()))?;
        let n = self.nodes[k].clone();
        let Op::Conv { weight, bias, stride, padding, dilation, groups, activation } = &n.op else {
            return Err(bad("not a convolution".into()));
        };
        if *groups != 1 {
            return Err(bad(format!(
                "has {groups} channel groups; only ungrouped convolutions are separated"
            )));
        }
        let p = self
            .params
            .get(weight)
            .ok_or_else(|| IrError::MissingParam { node: node.into(), param: weight.clone() })?;
        if p.sparsity.is_some() {
            return Err(bad(format!("`{weight}` is pruned; separate the dense convolution")));
        }
        if p.tensor.shape.len() < 3 || p.tensor.shape[2..].iter().product::<usize>() < 2 {
            return Err(bad(format!("kernel {:?} has nothing to separate", p.tensor.shape)));
        }
        let d = decouple(&p.tensor)?;
        let (dw_node, pw_node) = (format!("{prefix}.depthwise"), format!("{prefix}.pointwise"));
        let (dw_w, pw_w) = (format!("{dw_node}.weight"), format!("{pw_node}.weight"));
        for name in [&dw_node, &pw_node] {
            if self.nodes.iter().any(|m| &m.name == name || &m.output == name) {
                return Err(bad(format!("`{name}` is already a node or value of the graph")));
            }
        }
        for name in [&dw_w, &pw_w] {
            if self.params.contains_key(name) {
                return Err(bad(format!("parameter `{name}` already exists")));
            }
        }
        let channels = d.depthwise.shape[0];
        let dims = stride.len();
        let depthwise = Node {
            name: dw_node.clone(),
            op: Op::Conv {
                weight: dw_w.clone(),
                bias: None,
                stride: stride.clone(),
                padding: padding.clone(),
                dilation: dilation.clone(),
                groups: channels,
                activation: None,
            },
            inputs: n.inputs.clone(),
            output: dw_node.clone(),
        };
        let pointwise = Node {
            name: pw_node,
            op: Op::Conv {
                weight: pw_w.clone(),
                bias: bias.clone(),
                stride: vec![1; dims],
                padding: vec![0; dims],
                dilation: vec![1; dims],
                groups: 1,
                activation: *activation,
            },
            inputs: vec![dw_node],
            output: n.output.clone(),
        };
        self.nodes.splice(k..=k, [depthwise, pointwise]);
        self.params.insert(dw_w, Param::dense(d.depthwise));
        self.params.insert(pw_w, Param::dense(d.pointwise));
        self.drop_unused_params();
        self.validate()?;
        Ok(d.relative_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Conv2d, GraphBuilder};
    use crate::interp;
    use crate::op::Activation;
    use rand::rngs::ChaCha8Rng;
    use rand::{RngExt, SeedableRng};

    /// `||A - A u u^T||_F^2` for a unit vector u (the best rank-1 error of A with right factor u).
    fn rank_one_error(a: &[Vec<f64>], u: &[f64]) -> f64 {
        a.iter()
            .map(|row| {
                let s: f64 = row.iter().zip(u).map(|(x, y)| x * y).sum();
                row.iter().zip(u).map(|(x, y)| (x - s * y).powi(2)).sum::<f64>()
            })
            .sum()
    }

    #[test]
    fn jacobi_diagonalizes_a_hand_made_matrix() {
        // [[2, 1], [1, 2]]: eigenvalues 1 and 3, eigenvectors (1, -1) / sqrt 2, (1, 1) / sqrt 2.
        let (values, vectors) = symmetric_eigen(vec![2.0, 1.0, 1.0, 2.0], 2);
        let top = if values[0] > values[1] { 0 } else { 1 };
        assert!((values[top] - 3.0).abs() < 1e-12 && (values[1 - top] - 1.0).abs() < 1e-12);
        let r = std::f64::consts::FRAC_1_SQRT_2;
        assert!(
            (vectors[top].abs() - r).abs() < 1e-12 && (vectors[2 + top].abs() - r).abs() < 1e-12
        );
        assert!(vectors[top] * vectors[2 + top] > 0.0);
    }

    #[test]
    fn decoupling_is_exact_on_rank_one_weights_and_optimal_on_others() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        // Exact: W[o, i, :] = p[o, i] * d[i, :].
        let (o, i, kv) = (5, 3, 9);
        let d: Vec<f32> = (0..i * kv).map(|_| rng.random_range(-1.0..1.0)).collect();
        let p: Vec<f32> = (0..o * i).map(|_| rng.random_range(-1.0..1.0)).collect();
        let w: Vec<f32> =
            (0..o * i * kv).map(|x| p[x / kv] * d[(x / kv % i) * kv + x % kv]).collect();
        let dec = decouple(&Tensor::new([o, i, 3, 3], w.clone())).unwrap();
        assert_eq!(dec.depthwise.shape, [i, 1, 3, 3]);
        assert_eq!(dec.pointwise.shape, [o, i, 1, 1]);
        assert!(dec.relative_error < 1e-5, "{}", dec.relative_error);
        for (x, &want) in w.iter().enumerate() {
            let (r, c, j) = (x / (i * kv), x / kv % i, x % kv);
            let rebuilt = dec.pointwise.data[r * i + c] * dec.depthwise.data[c * kv + j];
            assert!((rebuilt - want).abs() < 1e-5, "{x}: {rebuilt} vs {want}");
        }
        // Random weights: no unit vector beats the chosen one (Eckart-Young), and the reported
        // error matches the rebuilt weights.
        let (o, i) = (8, 4);
        let w: Vec<f32> = (0..o * i * kv).map(|_| rng.random_range(-1.0..1.0)).collect();
        let dec = decouple(&Tensor::new([o, i, 3, 3], w.clone())).unwrap();
        let (mut err, mut total) = (0.0, 0.0);
        for c in 0..i {
            let a: Vec<Vec<f64>> = (0..o)
                .map(|r| (0..kv).map(|j| f64::from(w[(r * i + c) * kv + j])).collect())
                .collect();
            let v: Vec<f64> = (0..kv).map(|j| f64::from(dec.depthwise.data[c * kv + j])).collect();
            assert!((v.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-6);
            assert!(
                v.iter().copied().fold(0.0f64, |m, x| if x.abs() > m.abs() { x } else { m }) > 0.0
            );
            let best = rank_one_error(&a, &v);
            for _ in 0..2000 {
                let u: Vec<f64> = (0..kv).map(|_| rng.random_range(-1.0..1.0)).collect();
                let n = u.iter().map(|x| x * x).sum::<f64>().sqrt();
                let u: Vec<f64> = u.iter().map(|x| x / n).collect();
                assert!(rank_one_error(&a, &u) >= best - 1e-9);
            }
            for (r, row) in a.iter().enumerate() {
                for (j, x) in row.iter().enumerate() {
                    let rebuilt = f64::from(dec.pointwise.data[r * i + c]) * v[j];
                    err += (x - rebuilt).powi(2);
                    total += x * x;
                }
            }
        }
        assert!(((err / total).sqrt() - dec.relative_error).abs() < 1e-5);
        assert!(dec.relative_error > 0.1, "random weights are far from rank 1");
        // All zeros: nothing to keep, no NaN.
        let z = decouple(&Tensor::zeros([2, 2, 3, 3])).unwrap();
        assert_eq!(z.relative_error, 0.0);
        assert!(z.pointwise.data.iter().all(|&x| x == 0.0));
        assert!(z.depthwise.data.iter().all(|x| x.is_finite()));
    }

    fn conv_graph(w: Tensor, stride: usize) -> Graph {
        let mut b = GraphBuilder::new("one");
        let x = b.input("x", &[2, 3, 7, 7]);
        let c = Conv2d { padding: 1, stride, ..Default::default() };
        let y = b.conv2d("conv", &x, w, Some(Tensor::uniform([4], 0.5, 3)), c);
        let r = b.act("relu", &y, Activation::Relu);
        b.output(&r);
        b.build().unwrap()
    }

    #[test]
    fn a_separated_graph_computes_the_rank_one_convolution() {
        for stride in [1, 2] {
            let w = Tensor::uniform([4, 3, 3, 3], 0.5, 11);
            let g = conv_graph(w.clone(), stride);
            let mut s = g.clone();
            let err = s.separate_conv("conv", "sep").unwrap();
            assert_eq!(s.nodes.len(), 3);
            assert_eq!(s.nodes[0].name, "sep.depthwise");
            assert!(matches!(s.nodes[0].op, Op::Conv { groups: 3, .. }));
            assert!(matches!(&s.nodes[1].op, Op::Conv { bias: Some(_), groups: 1, .. }));
            assert!(!s.params.contains_key("conv.weight"));
            // Reference: the original graph with the rebuilt rank-1 weight.
            let d = decouple(&w).unwrap();
            assert!((err - d.relative_error).abs() < 1e-12);
            let rebuilt: Vec<f32> = (0..w.data.len())
                .map(|x| d.pointwise.data[x / 9] * d.depthwise.data[(x / 9 % 3) * 9 + x % 9])
                .collect();
            let mut reference = g.clone();
            reference.params.get_mut("conv.weight").unwrap().tensor.data = rebuilt;
            let x = Tensor::uniform([2, 3, 7, 7], 1.0, 5);
            let got = interp::run(&s, std::slice::from_ref(&x)).unwrap();
            let want = interp::run(&reference, &[x]).unwrap();
            assert_eq!(got[0].shape, want[0].shape);
            for (a, b) in got[0].data.iter().zip(&want[0].data) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn separating_refuses_what_it_cannot_separate() {
        let g = conv_graph(Tensor::uniform([4, 3, 3, 3], 0.5, 11), 1);
        let e = |g: &Graph, node: &str, prefix: &str| {
            g.clone().separate_conv(node, prefix).unwrap_err().to_string()
        };
        assert!(e(&g, "relu", "p").contains("not a convolution"));
        assert!(e(&g, "nope", "p").contains("no such node"));
        // A second convolution separated under the same prefix would reuse the names.
        let mut b = GraphBuilder::new("two");
        let x = b.input("x", &[1, 3, 5, 5]);
        let c = Conv2d { padding: 1, ..Default::default() };
        let y = b.conv2d("a", &x, Tensor::uniform([3, 3, 3, 3], 0.5, 1), None, c);
        let y = b.conv2d("b", &y, Tensor::uniform([3, 3, 3, 3], 0.5, 2), None, c);
        b.output(&y);
        let mut two = b.build().unwrap();
        two.separate_conv("a", "p").unwrap();
        assert!(e(&two, "b", "p").contains("already"), "{}", e(&two, "b", "p"));
        two.separate_conv("b", "q").unwrap();
        two.validate().unwrap();
        let one = conv_graph(Tensor::uniform([4, 3, 1, 1], 0.5, 11), 1);
        assert!(e(&one, "conv", "p").contains("nothing to separate"));
        let mut pruned = g.clone();
        pruned
            .prune(
                "conv",
                "conv.weight",
                &tessera_sparsity::Scheme::Unstructured,
                tessera_sparsity::Target::Compression(2.0),
            )
            .unwrap();
        assert!(e(&pruned, "conv", "p").contains("pruned"));
    }
}
