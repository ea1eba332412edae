//! Small reference graphs of the zoo's shapes (LeNet-5, a VGG-style CIFAR net, a ResNet basic
//! block, a MobileNetV2 inverted residual, a GRU classifier, an attention block), with seeded
//! weights: for tests of everything that consumes graphs (passes, interpreter, compiler) and
//! for examples.
#![allow(clippy::too_many_arguments)] // small layer builders take their hyper-parameters

use crate::error::Result;
use crate::graph::{Conv2d, Graph, GraphBuilder};
use crate::op::{Activation, Op};
use crate::tensor::Tensor;

fn bn(b: &mut GraphBuilder, name: &str, x: &str, c: usize, seed: u64) -> String {
    let gamma = Tensor::new(
        vec![c],
        Tensor::uniform([c], 0.5, seed).data.iter().map(|v| v + 1.0).collect(),
    );
    let var = Tensor::new(
        vec![c],
        Tensor::uniform([c], 0.5, seed + 1).data.iter().map(|v| v + 1.0).collect(),
    );
    b.batch_norm(
        name,
        x,
        gamma,
        Tensor::uniform([c], 0.1, seed + 2),
        Tensor::uniform([c], 0.1, seed + 3),
        var,
    )
}

fn conv(
    b: &mut GraphBuilder,
    name: &str,
    x: &str,
    cin: usize,
    cout: usize,
    k: usize,
    pad: usize,
    seed: u64,
) -> String {
    let scale = (1.0 / (cin * k * k) as f32).sqrt();
    b.conv2d(
        name,
        x,
        Tensor::uniform([cout, cin, k, k], scale, seed),
        Some(Tensor::uniform([cout], 0.1, seed + 1)),
        Conv2d { padding: pad, ..Default::default() },
    )
}

fn linear(b: &mut GraphBuilder, name: &str, x: &str, cin: usize, cout: usize, seed: u64) -> String {
    let scale = (1.0 / cin as f32).sqrt();
    b.linear(
        name,
        x,
        Tensor::uniform([cout, cin], scale, seed),
        Some(Tensor::uniform([cout], 0.1, seed + 1)),
    )
}

/// LeNet-5 (LeCun) for 28x28 single-channel inputs: 5x5 convolutions, max pooling, three
/// fully connected layers.
pub fn lenet5() -> Result<Graph> {
    let mut b = GraphBuilder::new("lenet5");
    let x = b.input("x", &[1, 1, 28, 28]);
    let c1 = conv(&mut b, "conv1", &x, 1, 6, 5, 2, 1);
    let r1 = b.act("relu1", &c1, Activation::Relu);
    let p1 = b.max_pool2d("pool1", &r1, 2, 2, 0);
    let c2 = conv(&mut b, "conv2", &p1, 6, 16, 5, 0, 3);
    let r2 = b.act("relu2", &c2, Activation::Relu);
    let p2 = b.max_pool2d("pool2", &r2, 2, 2, 0);
    let f = b.node("flatten", Op::Flatten { start: 1 }, &[&p2]);
    let f1 = linear(&mut b, "fc1", &f, 400, 120, 5);
    let r3 = b.act("relu3", &f1, Activation::Relu);
    let f2 = linear(&mut b, "fc2", &r3, 120, 84, 7);
    let r4 = b.act("relu4", &f2, Activation::Relu);
    let f3 = linear(&mut b, "fc3", &r4, 84, 10, 9);
    b.output(&f3);
    b.build()
}

/// A VGG-style CIFAR net: four 3x3 conv + batch norm + ReLU layers, two max pools, global
/// average pooling, a classifier.
pub fn vgg_cifar() -> Result<Graph> {
    let mut b = GraphBuilder::new("vgg-cifar");
    let x = b.input("x", &[1, 3, 32, 32]);
    let mut v = x;
    let mut cin = 3;
    for (i, (cout, pool)) in
        [(16, false), (16, true), (32, false), (32, true)].into_iter().enumerate()
    {
        let c = conv(&mut b, &format!("conv{i}"), &v, cin, cout, 3, 1, 10 + 4 * i as u64);
        let n = bn(&mut b, &format!("bn{i}"), &c, cout, 50 + 4 * i as u64);
        v = b.act(&format!("relu{i}"), &n, Activation::Relu);
        if pool {
            v = b.max_pool2d(&format!("pool{i}"), &v, 2, 2, 0);
        }
        cin = cout;
    }
    let g = b.node("gap", Op::GlobalAvgPool, &[&v]);
    let fc = linear(&mut b, "fc", &g, 32, 10, 99);
    b.output(&fc);
    b.build()
}

/// One ResNet basic block (two 3x3 conv + batch norm, identity shortcut, ReLU after the
/// add) and a classifier head.
pub fn resnet_block() -> Result<Graph> {
    let mut b = GraphBuilder::new("resnet-block");
    let x = b.input("x", &[1, 16, 8, 8]);
    let c1 = conv(&mut b, "conv1", &x, 16, 16, 3, 1, 21);
    let n1 = bn(&mut b, "bn1", &c1, 16, 23);
    let r1 = b.act("relu1", &n1, Activation::Relu);
    let c2 = conv(&mut b, "conv2", &r1, 16, 16, 3, 1, 27);
    let n2 = bn(&mut b, "bn2", &c2, 16, 29);
    let s = b.node("add", Op::Add { activation: None }, &[&n2, &x]);
    let r2 = b.act("relu2", &s, Activation::Relu);
    let g = b.node("gap", Op::GlobalAvgPool, &[&r2]);
    let fc = linear(&mut b, "fc", &g, 16, 10, 31);
    b.output(&fc);
    b.build()
}

/// A GRU over 6 steps of 12 features and a classifier on the last state.
pub fn gru_classifier() -> Result<Graph> {
    let mut b = GraphBuilder::new("gru-classifier");
    let x = b.input("x", &[1, 6, 12]);
    let h = 16;
    let s = (1.0 / h as f32).sqrt();
    b.param("gru.w_ih", Tensor::uniform([3 * h, 12], s, 41));
    b.param("gru.w_hh", Tensor::uniform([3 * h, h], s, 42));
    b.param("gru.b_ih", Tensor::uniform([3 * h], s, 43));
    b.param("gru.b_hh", Tensor::uniform([3 * h], s, 44));
    let op = Op::Gru {
        w_ih: "gru.w_ih".into(),
        w_hh: "gru.w_hh".into(),
        b_ih: "gru.b_ih".into(),
        b_hh: "gru.b_hh".into(),
        hidden: h,
        return_sequences: false,
    };
    let r = b.node("gru", op, &[&x]);
    let fc = linear(&mut b, "fc", &r, h, 9, 45);
    b.output(&fc);
    b.build()
}

/// Single-head self-attention with a residual add, layer norm and a linear head.
pub fn attention_block() -> Result<Graph> {
    let mut b = GraphBuilder::new("attention");
    let d = 8;
    let x = b.input("x", &[1, 4, d]);
    let q = linear(&mut b, "q", &x, d, d, 61);
    let k = linear(&mut b, "k", &x, d, d, 63);
    let v = linear(&mut b, "v", &x, d, d, 65);
    let kt = b.node("kt", Op::Transpose { perm: vec![0, 2, 1] }, &[&k]);
    let scores = b.node("scores", Op::MatMul, &[&q, &kt]);
    let scaled = b.node("scaled", Op::Scale { factor: 1.0 / (d as f32).sqrt() }, &[&scores]);
    let attn = b.node("attn", Op::Softmax { axis: 2 }, &[&scaled]);
    let ctx = b.node("ctx", Op::MatMul, &[&attn, &v]);
    let o = linear(&mut b, "o", &ctx, d, d, 67);
    let res = b.node("res", Op::Add { activation: None }, &[&o, &x]);
    b.param("ln.gamma", Tensor::new(vec![d], vec![1.0; d]));
    b.param("ln.beta", Tensor::zeros([d]));
    let ln = b.node(
        "ln",
        Op::LayerNorm { gamma: "ln.gamma".into(), beta: "ln.beta".into(), eps: 1e-5 },
        &[&res],
    );
    let r = b.node("flat", Op::Reshape { shape: vec![-1, 4, d as i64] }, &[&ln]);
    let r2 = b.node("flat2", Op::Reshape { shape: vec![-1, 4 * d as i64] }, &[&r]);
    let fc = linear(&mut b, "head", &r2, 4 * d, 2, 69);
    b.output(&fc);
    b.build()
}

/// A MobileNetV2 inverted residual: 1x1 expansion (x4) + ReLU6, 3x3 depthwise + ReLU6, 1x1
/// projection, identity shortcut; then global average pooling and a classifier.
pub fn mobilenet_block() -> Result<Graph> {
    let mut b = GraphBuilder::new("mobilenet-block");
    let c = 8;
    let e = 4 * c;
    let x = b.input("x", &[1, c, 10, 10]);
    let expand = conv(&mut b, "expand", &x, c, e, 1, 0, 71);
    let n1 = bn(&mut b, "bn1", &expand, e, 73);
    let r1 = b.act("relu1", &n1, Activation::Relu6);
    let dw = b.conv2d(
        "depthwise",
        &r1,
        Tensor::uniform([e, 1, 3, 3], 0.3, 75),
        None,
        Conv2d { padding: 1, groups: e, ..Default::default() },
    );
    let n2 = bn(&mut b, "bn2", &dw, e, 77);
    let r2 = b.act("relu2", &n2, Activation::Relu6);
    let project = conv(&mut b, "project", &r2, e, c, 1, 0, 79);
    let n3 = bn(&mut b, "bn3", &project, c, 81);
    let s = b.node("add", Op::Add { activation: None }, &[&n3, &x]);
    let g = b.node("gap", Op::GlobalAvgPool, &[&s]);
    let fc = linear(&mut b, "fc", &g, c, 10, 83);
    b.output(&fc);
    b.build()
}
