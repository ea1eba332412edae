//! Hand-computed cases for every op of the interpreter. Each case builds a one-node graph,
//! runs it, and compares with values worked out by hand in the comments.
#![allow(clippy::cloned_ref_to_slice_refs)] // `&[x.clone()]` reads better here; the copies are tiny

use tessera_ir::{Activation, Graph, GraphBuilder, Op, Tensor, interp};

fn t(shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::new(shape.to_vec(), data.to_vec())
}

/// Runs a one-node graph `op` on `inputs` with `params`; returns the output.
fn run1(op: Op, inputs: &[Tensor], params: &[(&str, Tensor)]) -> Tensor {
    let mut b = GraphBuilder::new("op");
    let names: Vec<String> =
        inputs.iter().enumerate().map(|(i, x)| b.input(&format!("x{i}"), &x.shape)).collect();
    for (n, p) in params {
        b.param(n, p.clone());
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let y = b.node("y", op, &refs);
    b.output(&y);
    let g: Graph = b.build().unwrap();
    interp::run(&g, inputs).unwrap().remove(0)
}

fn check(got: &Tensor, shape: &[usize], want: &[f32]) {
    assert_eq!(got.shape, shape, "shape");
    assert_eq!(got.data.len(), want.len());
    for (i, (a, b)) in got.data.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
            "element {i}: got {a}, want {b}; all {:?}",
            got.data
        );
    }
}

fn conv(stride: usize, padding: usize, dilation: usize, groups: usize) -> Op {
    Op::Conv {
        weight: "w".into(),
        bias: Some("b".into()),
        stride: vec![stride; 2],
        padding: vec![padding; 2],
        dilation: vec![dilation; 2],
        groups,
        activation: None,
    }
}

#[test]
fn conv2d_cases() {
    // 3x3 input 1..9, 2x2 kernel [[1,0],[0,-1]], bias 10: out(y,x) = in(y,x) - in(y+1,x+1) + 10
    // = 1-5, 2-6, 4-8, 5-9 -> -4 + 10 = 6 everywhere.
    let x = t(&[1, 1, 3, 3], &[1., 2., 3., 4., 5., 6., 7., 8., 9.]);
    let w = t(&[1, 1, 2, 2], &[1., 0., 0., -1.]);
    check(
        &run1(conv(1, 0, 1, 1), &[x.clone()], &[("w", w.clone()), ("b", t(&[1], &[10.]))]),
        &[1, 1, 2, 2],
        &[6., 6., 6., 6.],
    );
    // Padding 1, stride 2: outputs at (0,0): -in(0,0) = -1 (others padded); (0,1): in(-1,1)=0
    // - in(0,2) = -3; (1,0): in(1,-1)=0 - in(2,0)=-7; (1,1): in(1,1) - in(2,2) = 5-9 = -4.
    check(
        &run1(conv(2, 1, 1, 1), &[x.clone()], &[("w", w.clone()), ("b", t(&[1], &[0.]))]),
        &[1, 1, 2, 2],
        &[-1., -3., -7., -4.],
    );
    // Dilation 2 on 3x3 with 2x2 kernel: one output, in(0,0) - in(2,2) = 1 - 9 = -8.
    check(
        &run1(conv(1, 0, 2, 1), &[x.clone()], &[("w", w), ("b", t(&[1], &[0.]))]),
        &[1, 1, 1, 1],
        &[-8.],
    );
    // Groups: 2 channels, 2 groups, 1x1 kernels [2], [3]: channel c scaled independently.
    let x2 = t(&[1, 2, 1, 2], &[1., 2., 3., 4.]);
    check(
        &run1(
            conv(1, 0, 1, 2),
            &[x2],
            &[("w", t(&[2, 1, 1, 1], &[2., 3.])), ("b", t(&[2], &[0., 1.]))],
        ),
        &[1, 2, 1, 2],
        &[2., 4., 10., 13.],
    );
}

#[test]
fn conv3d_case() {
    // 2x2x2 input 1..8, 2x2x2 kernel of ones: one output = 36.
    let x = t(&[1, 1, 2, 2, 2], &[1., 2., 3., 4., 5., 6., 7., 8.]);
    let op = Op::Conv {
        weight: "w".into(),
        bias: None,
        stride: vec![1; 3],
        padding: vec![0; 3],
        dilation: vec![1; 3],
        groups: 1,
        activation: Some(Activation::Relu),
    };
    check(&run1(op, &[x], &[("w", t(&[1, 1, 2, 2, 2], &[1.; 8]))]), &[1, 1, 1, 1, 1], &[36.]);
}

#[test]
fn linear_and_matmul() {
    // [1, 2] . W^T with W = [[1, 2], [3, 4], [5, 6]], b = [1, 1, 1]: [6, 12, 18].
    let op = Op::Linear { weight: "w".into(), bias: Some("b".into()), activation: None };
    let w = t(&[3, 2], &[1., 2., 3., 4., 5., 6.]);
    check(
        &run1(op, &[t(&[1, 2], &[1., 2.])], &[("w", w), ("b", t(&[3], &[1., 1., 1.]))]),
        &[1, 3],
        &[6., 12., 18.],
    );
    // [[1,2],[3,4]] x [[5,6],[7,8]] = [[19,22],[43,50]].
    check(
        &run1(
            Op::MatMul,
            &[t(&[1, 2, 2], &[1., 2., 3., 4.]), t(&[1, 2, 2], &[5., 6., 7., 8.])],
            &[],
        ),
        &[1, 2, 2],
        &[19., 22., 43., 50.],
    );
}

#[test]
fn normalizations() {
    // BN on channel 0: (x - 1) / sqrt(4 + eps) * 2 + 3 -> x = 5: 4/2*2+3 = 7.
    let op = Op::BatchNorm {
        gamma: "g".into(),
        beta: "b".into(),
        mean: "m".into(),
        var: "v".into(),
        eps: 0.0,
    };
    let p = [
        ("g", t(&[1], &[2.])),
        ("b", t(&[1], &[3.])),
        ("m", t(&[1], &[1.])),
        ("v", t(&[1], &[4.])),
    ];
    check(&run1(op, &[t(&[1, 1, 1, 2], &[5., 1.])], &p), &[1, 1, 1, 2], &[7., 3.]);
    // LN of [1, 3]: mean 2, var 1 -> [-1, 1]; gamma [1, 2], beta [0, 1] -> [-1, 3].
    let op = Op::LayerNorm { gamma: "g".into(), beta: "b".into(), eps: 0.0 };
    check(
        &run1(
            op,
            &[t(&[1, 2], &[1., 3.])],
            &[("g", t(&[2], &[1., 2.])), ("b", t(&[2], &[0., 1.]))],
        ),
        &[1, 2],
        &[-1., 3.],
    );
}

#[test]
fn activations_and_scale() {
    let x = t(&[1, 4], &[-2., -0.5, 1., 7.]);
    check(&run1(Op::Act { kind: Activation::Relu }, &[x.clone()], &[]), &[1, 4], &[0., 0., 1., 7.]);
    check(
        &run1(Op::Act { kind: Activation::Relu6 }, &[x.clone()], &[]),
        &[1, 4],
        &[0., 0., 1., 6.],
    );
    // hard-swish: x * clamp(x+3, 0, 6) / 6: -2 -> -2*1/6, -0.5 -> -0.5*2.5/6, 1 -> 4/6, 7 -> 7.
    check(
        &run1(Op::Act { kind: Activation::HardSwish }, &[x.clone()], &[]),
        &[1, 4],
        &[-1. / 3., -0.5 * 2.5 / 6., 4. / 6., 7.],
    );
    check(&run1(Op::Scale { factor: 0.5 }, &[x], &[]), &[1, 4], &[-1., -0.25, 0.5, 3.5]);
    let s = run1(Op::Act { kind: Activation::Sigmoid }, &[t(&[1, 1], &[0.])], &[]);
    check(&s, &[1, 1], &[0.5]);
    let th = run1(Op::Act { kind: Activation::Tanh }, &[t(&[1, 1], &[0.5])], &[]);
    check(&th, &[1, 1], &[0.462_117_16]);
}

#[test]
fn pooling() {
    let x = t(&[1, 1, 2, 4], &[1., 5., 2., 0., 3., 4., 8., 6.]);
    let mp = Op::MaxPool { kernel: vec![2, 2], stride: vec![2, 2], padding: vec![0, 0] };
    check(&run1(mp, &[x.clone()], &[]), &[1, 1, 1, 2], &[5., 8.]);
    let ap = Op::AvgPool { kernel: vec![2, 2], stride: vec![2, 2], padding: vec![0, 0] };
    check(&run1(ap, &[x.clone()], &[]), &[1, 1, 1, 2], &[13. / 4., 16. / 4.]);
    // Padded average counts padding as zeros: window at (0,0) with padding 1 covers only x(0,0).
    let ap = Op::AvgPool { kernel: vec![2, 2], stride: vec![2, 2], padding: vec![1, 1] };
    let y = run1(ap, &[x.clone()], &[]);
    assert_eq!(y.shape, vec![1, 1, 2, 3]);
    assert_eq!(y.data[0], 1. / 4.);
    check(&run1(Op::GlobalAvgPool, &[x], &[]), &[1, 1], &[29. / 8.]);
}

#[test]
fn structure_ops() {
    let a = t(&[1, 2, 2], &[1., 2., 3., 4.]);
    let b = t(&[1, 1, 2], &[5., 6.]);
    check(
        &run1(Op::Concat { axis: 1 }, &[a.clone(), b], &[]),
        &[1, 3, 2],
        &[1., 2., 3., 4., 5., 6.],
    );
    check(
        &run1(Op::Add { activation: None }, &[a.clone(), a.clone()], &[]),
        &[1, 2, 2],
        &[2., 4., 6., 8.],
    );
    check(&run1(Op::Mul, &[a.clone(), a.clone()], &[]), &[1, 2, 2], &[1., 4., 9., 16.]);
    check(&run1(Op::Reshape { shape: vec![1, -1] }, &[a.clone()], &[]), &[1, 4], &[1., 2., 3., 4.]);
    check(&run1(Op::Flatten { start: 1 }, &[a.clone()], &[]), &[1, 4], &[1., 2., 3., 4.]);
    check(
        &run1(Op::Transpose { perm: vec![0, 2, 1] }, &[a.clone()], &[]),
        &[1, 2, 2],
        &[1., 3., 2., 4.],
    );
    // softmax([1, 2]) = [e/(e+e^2), e^2/(e+e^2)] = [0.268941, 0.731059].
    check(
        &run1(Op::Softmax { axis: 2 }, &[a], &[]),
        &[1, 2, 2],
        &[0.268_941_4, 0.731_058_6, 0.268_941_4, 0.731_058_6],
    );
    let table = t(&[3, 2], &[0., 1., 10., 11., 20., 21.]);
    check(
        &run1(Op::Embedding { table: "e".into() }, &[t(&[1, 2], &[2., 0.])], &[("e", table)]),
        &[1, 2, 2],
        &[20., 21., 0., 1.],
    );
}

fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

#[test]
fn gru_matches_hand_computation() {
    // I = 1, H = 1, T = 2, inputs 1 then -1; gate weights (r, z, n).
    let (wi, wh, bi, bh) = ([0.5, -0.3, 0.8], [0.2, 0.4, -0.6], [0.1, 0.0, -0.1], [0.0, 0.2, 0.3]);
    let mut h = 0.0f64;
    let mut seq = Vec::new();
    for x in [1.0f64, -1.0] {
        let r = sigmoid(wi[0] * x + bi[0] + wh[0] * h + bh[0]);
        let z = sigmoid(wi[1] * x + bi[1] + wh[1] * h + bh[1]);
        let n = (wi[2] * x + bi[2] + r * (wh[2] * h + bh[2])).tanh();
        h = (1.0 - z) * n + z * h;
        seq.push(h as f32);
    }
    let f = |v: [f64; 3]| v.iter().map(|&a| a as f32).collect::<Vec<_>>();
    let params = [
        ("wi", t(&[3, 1], &f(wi))),
        ("wh", t(&[3, 1], &f(wh))),
        ("bi", t(&[3], &f(bi))),
        ("bh", t(&[3], &f(bh))),
    ];
    let op = |ret| Op::Gru {
        w_ih: "wi".into(),
        w_hh: "wh".into(),
        b_ih: "bi".into(),
        b_hh: "bh".into(),
        hidden: 1,
        return_sequences: ret,
    };
    let x = t(&[1, 2, 1], &[1., -1.]);
    check(&run1(op(true), &[x.clone()], &params), &[1, 2, 1], &seq);
    check(&run1(op(false), &[x], &params), &[1, 1], &seq[1..]);
}

#[test]
fn lstm_matches_hand_computation() {
    // Gates (i, f, g, o).
    let (wi, wh, bi, bh) = (
        [0.5, -0.3, 0.8, 0.1],
        [0.2, 0.4, -0.6, 0.3],
        [0.1, 0.0, -0.1, 0.2],
        [0.0, 0.2, 0.3, -0.1],
    );
    let (mut h, mut c) = (0.0f64, 0.0f64);
    for x in [0.5f64, 2.0] {
        let g = |k: usize| wi[k] * x + bi[k] + wh[k] * h + bh[k];
        let (i, f, gg, o) = (sigmoid(g(0)), sigmoid(g(1)), g(2).tanh(), sigmoid(g(3)));
        c = f * c + i * gg;
        h = o * c.tanh();
    }
    let f = |v: [f64; 4]| v.iter().map(|&a| a as f32).collect::<Vec<_>>();
    let params = [
        ("wi", t(&[4, 1], &f(wi))),
        ("wh", t(&[4, 1], &f(wh))),
        ("bi", t(&[4], &f(bi))),
        ("bh", t(&[4], &f(bh))),
    ];
    let op = Op::Lstm {
        w_ih: "wi".into(),
        w_hh: "wh".into(),
        b_ih: "bi".into(),
        b_hh: "bh".into(),
        hidden: 1,
        return_sequences: false,
    };
    check(&run1(op, &[t(&[1, 2, 1], &[0.5, 2.])], &params), &[1, 1], &[h as f32]);
}

#[test]
fn batch_size_may_differ_from_the_declaration() {
    let op = Op::Linear { weight: "w".into(), bias: None, activation: None };
    let mut b = GraphBuilder::new("g");
    let x = b.input("x", &[1, 2]);
    b.param("w", t(&[1, 2], &[1., 1.]));
    let y = b.node("y", op, &[&x]);
    b.output(&y);
    let g = b.build().unwrap();
    let out = interp::run(&g, &[t(&[3, 2], &[1., 2., 3., 4., 5., 6.])]).unwrap();
    check(&out[0], &[3, 1], &[3., 7., 11.]);
    assert!(interp::run(&g, &[t(&[1, 3], &[1., 2., 3.])]).is_err());
    // Bad token ids are input errors, not panics.
    let mut b = GraphBuilder::new("e");
    let x = b.input("ids", &[1, 1]);
    b.param("e", t(&[2, 1], &[0., 1.]));
    let y = b.node("y", Op::Embedding { table: "e".into() }, &[&x]);
    b.output(&y);
    let g = b.build().unwrap();
    assert!(interp::run(&g, &[t(&[1, 1], &[5.])]).is_err());
}
