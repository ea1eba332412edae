//! Plans against the reference interpreter: every example graph of the zoo's shapes, dense and
//! pruned under every scheme with a specialized format, before and after the IR passes, at
//! batch 1 and 3, on one and two threads and on every instruction set this CPU has. Plus the
//! formats the planner picks, the errors it gives, and that a run allocates nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use tessera_codegen::{CodegenError, CompileOptions, Plan, TuneCache, Tuning};
use tessera_ir::passes::Pipeline;
use tessera_ir::{Graph, Op, Tensor, examples, interp};
use tessera_kernels::Isa;
mod common;

use tessera_sparsity::Scheme;

use common::prune_all;

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|a| a.set(a.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn graphs() -> Vec<Graph> {
    vec![
        examples::lenet5().unwrap(),
        examples::vgg_cifar().unwrap(),
        examples::resnet_block().unwrap(),
        examples::mobilenet_block().unwrap(),
    ]
}

fn batch_input(g: &Graph, batch: usize, seed: u64) -> Tensor {
    let mut shape = g.inputs[0].shape.clone();
    shape[0] = batch;
    Tensor::uniform(shape, 1.0, seed)
}

/// Runs `g` through a plan and the interpreter; they must agree to 1e-4 of the output's
/// largest magnitude (f32 kernels against the interpreter's f64 accumulation, over sums of
/// up to ~1000 terms).
fn check(g: &Graph, options: &CompileOptions, what: &str) -> Plan {
    let x = batch_input(g, options.batch, 17);
    let want = &interp::run(g, std::slice::from_ref(&x)).unwrap()[0];
    let mut plan = Plan::compile(g, options).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(plan.output_shape(), want.shape.as_slice(), "{what}");
    let mut out = vec![f32::NAN; want.len()];
    plan.run(&x.data, &mut out).unwrap();
    let scale = want.data.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    for (i, (a, b)) in out.iter().zip(&want.data).enumerate() {
        assert!((a - b).abs() <= 1e-4 * scale, "{what}: output {i}: plan {a} vs interp {b}");
    }
    // A second run on the same plan gives the same numbers (no state leaks between runs).
    let mut again = vec![0.0; want.len()];
    plan.run(&x.data, &mut again).unwrap();
    assert_eq!(out, again, "{what}: second run");
    plan
}

fn every_option() -> Vec<CompileOptions> {
    let mut out = Vec::new();
    for isa in Isa::available() {
        for (batch, threads) in [(1, 1), (3, 1), (1, 2), (2, 2)] {
            out.push(CompileOptions { batch, threads, isa: Some(isa), ..Default::default() });
        }
    }
    out
}

#[test]
fn every_example_graph_matches_the_interpreter() {
    for g in graphs() {
        let (opt, _) = Pipeline::standard().run(g.clone()).unwrap();
        for o in every_option() {
            check(&g, &o, &format!("{} raw {o:?}", g.name));
            check(&opt, &o, &format!("{} after passes {o:?}", g.name));
        }
    }
}

/// Dense convolutions on small maps get the channel-vector kernel (the ResNet block's 3x3
/// layers at 8x8, with AVX-512), larger maps (the small VGG's 32x32 and 16x16) the direct
/// row-group one, and so do 3x3 layers with output rows of exactly 8 on 8-lane CPUs (stacked
/// row-group tiles); those plans match the interpreter
/// (`every_example_graph_matches_the_interpreter` runs them on every instruction set, batch
/// and thread count). On 8-lane CPUs, 3x3 layers of 64 or more input channels get it on any
/// map but stacked 8-wide rows (a 64 -> 64 layer at 16x16 here, whose plan matches the
/// interpreter too).
#[test]
fn small_dense_maps_get_the_channel_vector_kernel() {
    use tessera_ir::{Conv2d, GraphBuilder};
    let eight_lanes = Isa::detect().lanes() == 8;
    let mut b = GraphBuilder::new("wide-inputs");
    let x = b.input("x", &[1, 64, 16, 16]);
    let pad = Conv2d { padding: 1, ..Default::default() };
    let c = b.conv2d("wide", &x, Tensor::uniform([64, 64, 3, 3], 0.1, 9), None, pad);
    b.output(&c);
    let wide = b.build().unwrap();
    for g in [examples::resnet_block().unwrap(), examples::vgg_cifar().unwrap(), wide] {
        let plan = check(&g, &CompileOptions::default(), &g.name);
        let shapes = g.validate().unwrap();
        let (mut small_maps, mut seen) = (0, 0);
        for l in plan.layers().iter().filter(|l| l.op == "conv") {
            let node = g.nodes.iter().find(|n| n.name == l.node).unwrap();
            let out = &shapes[&node.output];
            let positions: usize = out[2..].iter().product();
            let stacked = eight_lanes && out[out.len() - 1] == 8;
            let Op::Conv { weight, .. } = &node.op else { unreachable!() };
            let w = &g.params[weight].tensor.shape;
            let wide_inputs = eight_lanes && w[1] >= 64 && w[2..].iter().product::<usize>() > 1;
            let small = positions <= 16 || ((positions <= 64 || wide_inputs) && !stacked);
            assert_eq!(l.kernel == "channel-vector", small, "{} {}: {l:?}", g.name, l.node);
            seen += usize::from(small);
            small_maps += usize::from(positions <= 64);
        }
        if g.name == "wide-inputs" {
            assert_eq!(seen > 0, eight_lanes, "{}", g.name);
            continue;
        }
        assert_eq!(small_maps > 0, g.name == "resnet-block", "{}", g.name);
        if !eight_lanes {
            assert_eq!(seen > 0, g.name == "resnet-block", "{}", g.name);
        }
    }
}

#[test]
fn every_scheme_matches_the_interpreter_and_gets_its_format() {
    let cases = [
        ("unstructured", 8.0, "CSR"),
        ("block-punched:8x4", 8.0, "block-punched"),
        ("bcr:4x8", 4.0, "BCR-compact"),
        ("pattern:8+connectivity", 8.0, "FKW"),
        ("filter", 2.0, "masked"),
        ("block:4x4", 4.0, "BSR"),
    ];
    let isa = Isa::detect();
    // Linear layers pruned to balanced BCR blocks run BCR's own GEMV (`bcr gemv`).
    let mut bcr_linear = 0;
    for g in graphs() {
        for (scheme, rate, format) in cases {
            let mut pruned = g.clone();
            let applied = prune_all(&mut pruned, scheme, rate);
            let (opt, _) = Pipeline::standard().run(pruned.clone()).unwrap();
            for (batch, threads) in [(1, 1), (2, 2)] {
                let o = CompileOptions { batch, threads, isa: Some(isa), ..Default::default() };
                let raw = check(&pruned, &o, &format!("{} {scheme} raw {o:?}", g.name));
                let passed = check(&opt, &o, &format!("{} {scheme} after passes {o:?}", g.name));
                // The scheme's own format serves every convolution it pruned, unless the
                // passes reshaped the weight (dead-channel removal drops columns, which can
                // break block alignment: then masked row groups, still exact).
                for (plan, graph) in [(&raw, &pruned), (&passed, &opt)] {
                    let mut seen = 0;
                    for l in plan.layers().iter().filter(|l| l.op == "conv" && l.scheme.is_some()) {
                        let weight = format!("{}.weight", l.node.trim_start_matches("relu"));
                        let reshaped = graph.params.get(&weight).is_none_or(|p| {
                            pruned
                                .params
                                .get(&weight)
                                .is_none_or(|q| q.tensor.shape != p.tensor.shape)
                        });
                        if !reshaped {
                            assert_eq!(l.format, format, "{} {}: {l:?}", g.name, l.node);
                            seen += 1;
                        }
                        assert!(l.kept_macs <= l.dense_macs, "{l:?}");
                    }
                    for l in plan.layers().iter().filter(|l| l.op == "linear" && l.scheme.is_some())
                    {
                        if scheme.starts_with("bcr") {
                            let bcr = ["BCR-compact", "BCR rows", "masked"];
                            assert!(bcr.contains(&l.format), "{} {}: {l:?}", g.name, l.node);
                            bcr_linear += usize::from(l.format == "BCR-compact");
                        }
                    }
                    let saved = plan.layers().iter().any(|l| l.kept_macs < l.dense_macs);
                    // (LeNet-5 and the MobileNet block have no ungrouped 3x3 conv to pattern.)
                    assert!(saved || scheme == "filter" || applied == 0, "{} {scheme}", g.name);
                    if scheme != "filter" && std::ptr::eq(graph, &pruned) {
                        let convs = pruned.nodes.iter().any(|n| {
                            matches!(&n.op, Op::Conv { weight, .. } if pruned.params[weight].sparsity.is_some())
                        });
                        assert!(seen > 0 || !convs, "{} {scheme}", g.name);
                    }
                }
            }
        }
    }
    assert!(bcr_linear > 0, "no linear layer ran BCR's GEMV");
}

#[test]
fn liveness_reuses_activation_memory() {
    let g = examples::vgg_cifar().unwrap();
    let (opt, _) = Pipeline::standard().run(g).unwrap();
    let plan = Plan::compile(&opt, &CompileOptions::default()).unwrap();
    let shapes = opt.validate().unwrap();
    let sum: usize = shapes.values().map(|s| s.iter().product::<usize>()).sum();
    // The two largest values (16x32x32, a conv's input and output) must coexist; first fit
    // may leave a gap the size of the input image, no more, besides the 64 bytes that stagger
    // each value of a multiple of 4 KiB (at most 4 live at once here).
    let peak = 2 * 16 * 32 * 32;
    let values = plan.arena_len() - plan.edge_buffer_len();
    assert!(values >= peak);
    assert!(values <= peak + 3 * 32 * 32 + 4 * 16, "{values} of {sum}");
    // Two conv -> conv edges store into the next conv's padded layout (conv0 -> conv1 at
    // 16@32x32, conv2 -> conv3 at 32@16x16): one buffer each, padding included.
    let padded = |c: usize, hw: usize| {
        tessera_kernels::ConvShape::conv2d(c, c, [hw, hw], [3, 3], 1, 1)
            .unwrap()
            .layout()
            .packed_len()
    };
    let stored: Vec<&str> =
        plan.layers().iter().filter(|l| l.stores_packed).map(|l| l.node.as_str()).collect();
    assert_eq!(stored.len(), 2, "{stored:?}");
    let readers = plan.layers().iter().filter(|l| l.reads_packed).count();
    assert_eq!(readers, 2);
    // (each buffer starts on a 64-byte boundary)
    let rounded = |n: usize| n.next_multiple_of(16);
    assert_eq!(plan.edge_buffer_len(), rounded(padded(16, 32)) + rounded(padded(32, 16)));
}

#[test]
fn runs_allocate_nothing() {
    for g in graphs() {
        let mut pruned = g.clone();
        let _ = prune_all(&mut pruned, "block-punched:8x4", 4.0);
        for graph in [g.clone(), pruned] {
            let (opt, _) = Pipeline::standard().run(graph).unwrap();
            let mut plan = Plan::compile(&opt, &CompileOptions::default()).unwrap();
            let x = batch_input(&opt, 1, 3);
            let mut y = vec![0.0; plan.output_shape().iter().product()];
            plan.run(&x.data, &mut y).unwrap();
            let before = ALLOCS.with(Cell::get);
            plan.run(&x.data, &mut y).unwrap();
            assert_eq!(ALLOCS.with(Cell::get) - before, 0, "{}", g.name);
        }
    }
}

#[test]
fn errors_name_what_is_wrong() {
    // An op without a lowering is refused, naming the node.
    let gru = examples::gru_classifier().unwrap();
    let err = Plan::compile(&gru, &CompileOptions::default()).unwrap_err();
    assert!(matches!(&err, CodegenError::Unsupported { node, .. } if node == "gru"), "{err}");
    assert!(err.to_string().contains("gru"));
    // Wrong buffer lengths.
    let g = examples::lenet5().unwrap();
    let mut plan = Plan::compile(&g, &CompileOptions { batch: 2, ..Default::default() }).unwrap();
    let mut y = vec![0.0; 20];
    let err = plan.run(&[0.0; 784], &mut y).unwrap_err();
    assert!(err.to_string().contains("input") && err.to_string().contains("1568"), "{err}");
    let err = plan.run(&[0.0; 1568], &mut [0.0; 10]).unwrap_err();
    assert!(err.to_string().contains("output"), "{err}");
    // Batch 0.
    assert!(Plan::compile(&g, &CompileOptions { batch: 0, ..Default::default() }).is_err());
}

#[test]
fn tuned_plans_match_the_interpreter_and_reuse_their_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("tune.json");
    let mut g = examples::resnet_block().unwrap();
    let _ = prune_all(&mut g, "block-punched:8x4", 4.0);
    let (opt, _) = Pipeline::standard().run(g).unwrap();
    let tuned = CompileOptions {
        threads: 2,
        tuning: Tuning::Measure { cache: Some(cache.clone()) },
        ..Default::default()
    };
    let first = check(&opt, &tuned, "tuned resnet block");
    let saved = TuneCache::load(&cache).unwrap();
    let weighted = first.layers().len();
    assert_eq!(saved.entries.len(), weighted, "one decision per weighted layer");
    // Every decision records the lane width it was fastest at: the CPU's, or 8 (convolutions
    // on an AVX-512 CPU are timed at both).
    let best = Isa::detect().lanes();
    for d in saved.entries.values() {
        assert!(d.lanes == best || d.lanes == 8, "{d:?}");
    }
    // Whichever whole plan ran faster: the tuner's per-layer picks (timed, not cached yet)
    // or the table's kernels (nothing timed per layer).
    for l in first.layers() {
        if first.kernels_tuned() {
            assert!(!l.cached && l.tuned_ms.is_some_and(|ms| ms > 0.0), "{l:?}");
        } else {
            assert!(!l.cached && l.tuned_ms.is_none(), "{l:?}");
        }
        assert!(l.threads == 1 || l.threads == 2, "{l:?}");
    }
    // The whole plan's pick and thread counts, refined in context, are cached beside the
    // layers'.
    let [(_, refined)] = saved.plans.iter().collect::<Vec<_>>()[..] else {
        panic!("one plan decision expected: {:?}", saved.plans)
    };
    let counts: Vec<usize> = first.layers().iter().map(|l| l.threads).collect();
    assert_eq!(refined.threads, counts);
    assert_eq!(refined.table, !first.kernels_tuned());
    assert!(refined.ms > 0.0);
    // A second compile takes every decision from the cache and changes nothing in it.
    let second = check(&opt, &tuned, "tuned from cache");
    assert_eq!(second.kernels_tuned(), first.kernels_tuned());
    for (a, b) in first.layers().iter().zip(second.layers()) {
        assert_eq!(b.cached, first.kernels_tuned(), "{b:?}");
        assert_eq!((a.kernel, a.format, a.threads), (b.kernel, b.format, b.threads));
        assert_eq!(a.lanes, b.lanes, "{b:?}");
    }
    assert_eq!(TuneCache::load(&cache).unwrap(), saved);
    // A cached plan decision this plan cannot take (a thread count above its budget) is
    // measured again, not applied.
    let mut bad = saved.clone();
    for p in bad.plans.values_mut() {
        p.threads[0] = 3;
    }
    bad.save(&cache).unwrap();
    let third = check(&opt, &tuned, "tuned with a stale plan decision");
    assert!(third.layers().iter().all(|l| l.threads == 1 || l.threads == 2));
    let resaved = TuneCache::load(&cache).unwrap();
    assert!(resaved.plans.values().all(|p| p.threads.iter().all(|&t| t == 1 || t == 2)));
    // A cached layer decision at a lane width this CPU cannot run is timed again, not applied.
    let mut odd = TuneCache::load(&cache).unwrap();
    for d in odd.entries.values_mut() {
        d.lanes = 3;
    }
    odd.save(&cache).unwrap();
    let fourth = check(&opt, &tuned, "tuned with a stale lane width");
    assert!(
        fourth.layers().iter().all(|l| l.lanes == best || l.lanes == 8),
        "{:?}",
        fourth.layers()
    );
    let relaned = TuneCache::load(&cache).unwrap();
    assert!(relaned.entries.values().all(|d| d.lanes == best || d.lanes == 8), "{relaned:?}");
    // Without tuning: the table's kernels on the whole thread budget, nothing measured.
    let plain = Plan::compile(&opt, &CompileOptions { threads: 2, ..Default::default() }).unwrap();
    assert!(!plain.kernels_tuned());
    for l in plain.layers() {
        assert!(l.threads == 2 && l.tuned_ms.is_none() && !l.cached, "{l:?}");
    }
    // A corrupt cache is an error naming the file, not a silent re-tune.
    std::fs::write(&cache, b"[1, 2").unwrap();
    let err = Plan::compile(&opt, &tuned).unwrap_err().to_string();
    assert!(err.contains("tune.json"), "{err}");
}

#[test]
fn the_latency_models_family_table_matches_the_compilers() {
    use tessera_codegen::latency::family_of;
    use tessera_kernels::ConvShape;
    for scheme in
        ["unstructured", "block-punched:8x4", "bcr:4x8", "pattern:8+connectivity", "filter"]
    {
        let mut g = examples::vgg_cifar().unwrap();
        let _ = prune_all(&mut g, scheme, 4.0);
        let shapes = g.validate().unwrap();
        let plan = Plan::compile(&g, &CompileOptions::default()).unwrap();
        let s: Scheme = scheme.parse().unwrap();
        for l in plan.layers().iter().filter(|l| l.op == "conv") {
            let node = g.nodes.iter().find(|n| n.name == l.node).unwrap();
            let Op::Conv { weight, .. } = &node.op else { unreachable!() };
            let w = &g.params[weight];
            let x = &shapes[&node.inputs[0]];
            let shape =
                ConvShape::conv2d(x[1], w.tensor.shape[0], [x[2], x[3]], [3, 3], 1, 1).unwrap();
            let scheme = w.sparsity.as_ref().map(|_| &s);
            assert_eq!(l.family(), family_of(scheme, &shape), "{scheme:?} {}", l.node);
        }
    }
}

/// A conv -> conv edge is stored pre-packed only when the consumer's activation can run in
/// its kernel's epilogue: with a fused sigmoid the consumer packs its input itself, and the
/// plan still matches the interpreter.
#[test]
fn pre_packed_edges_need_a_kernel_epilogue_on_the_consumer() {
    use tessera_ir::{Activation, Conv2d, GraphBuilder};
    for (act, packed) in [(Activation::Relu, true), (Activation::Sigmoid, false)] {
        let mut b = GraphBuilder::new("two-convs");
        let x = b.input("x", &[1, 4, 9, 9]);
        let pad = Conv2d { padding: 1, ..Default::default() };
        let c1 = b.conv2d("c1", &x, Tensor::uniform([8, 4, 3, 3], 0.3, 1), None, pad);
        let r1 = b.act("r1", &c1, Activation::Relu);
        let c2 = b.conv2d("c2", &r1, Tensor::uniform([8, 8, 3, 3], 0.3, 2), None, pad);
        let a2 = b.act("a2", &c2, act);
        b.output(&a2);
        let (g, _) = Pipeline::standard().run(b.build().unwrap()).unwrap();
        for o in [
            CompileOptions::default(),
            CompileOptions { batch: 2, threads: 2, ..Default::default() },
        ] {
            let plan = check(&g, &o, &format!("{act:?} {o:?}"));
            let readers = plan.layers().iter().filter(|l| l.reads_packed).count();
            assert_eq!(readers, usize::from(packed), "{act:?}");
        }
    }
}

/// A depthwise layer stores straight into the next 1x1 convolution's input when that one
/// copies its input anyway (channels a gap apart, against 4 KiB aliasing on 16x16 and larger
/// maps), at stride 1 and 2, by every instruction set, and the channel-vector kernel (small
/// maps) reads its input pre-packed by a row-group producer; both plans match the interpreter.
#[test]
fn depthwise_layers_store_into_the_next_convolutions_packed_input() {
    use tessera_ir::{Activation, Conv2d, GraphBuilder};
    for stride in [1, 2] {
        let mut b = GraphBuilder::new("depthwise-then-1x1");
        let c = 16;
        let side = 16 * stride;
        let x = b.input("x", &[1, c, side, side]);
        let dw = Conv2d { padding: 1, stride, groups: c, ..Default::default() };
        let d = b.conv2d("dw", &x, Tensor::uniform([c, 1, 3, 3], 0.3, 1), None, dw);
        let r = b.act("r", &d, Activation::Relu6);
        let p = b.conv2d(
            "project",
            &r,
            Tensor::uniform([24, c, 1, 1], 0.3, 2),
            None,
            Conv2d::default(),
        );
        b.output(&p);
        let (g, _) = Pipeline::standard().run(b.build().unwrap()).unwrap();
        for o in every_option() {
            let plan = check(&g, &o, &format!("stride {stride} {o:?}"));
            let layer = |name: &str| plan.layers().iter().find(|l| l.node == name).unwrap();
            assert!(layer("dw").stores_packed, "stride {stride} {o:?}: {:?}", plan.layers());
            assert!(layer("project").reads_packed, "stride {stride} {o:?}");
        }
    }
    // Small maps: a dense 3x3 on 4x4 runs the channel-vector kernel, on the padded input its
    // (pruned) row-group producer stores.
    let mut b = GraphBuilder::new("rows-then-channel-vector");
    let x = b.input("x", &[1, 8, 4, 4]);
    let pad = Conv2d { padding: 1, ..Default::default() };
    let c1 = b.conv2d("c1", &x, Tensor::uniform([16, 8, 3, 3], 0.3, 3), None, pad);
    let r1 = b.act("r1", &c1, Activation::Relu);
    let c2 = b.conv2d("c2", &r1, Tensor::uniform([64, 16, 3, 3], 0.3, 4), None, pad);
    let r2 = b.act("r2", &c2, Activation::Relu);
    b.output(&r2);
    let mut g = b.build().unwrap();
    // Pruned, c1 runs the row-group engine (dense layers on such maps run channel-vector).
    let c1w = g.nodes.iter().find_map(|n| match &n.op {
        Op::Conv { weight, .. } if n.name == "c1" => Some(weight.clone()),
        _ => None,
    });
    let scheme: Scheme = "block-punched:8x4".parse().unwrap();
    g.prune("c1", &c1w.unwrap(), &scheme, tessera_sparsity::Target::Compression(4.0)).unwrap();
    let (g, _) = Pipeline::standard().run(g).unwrap();
    for o in every_option() {
        let plan = check(&g, &o, &format!("small map {o:?}"));
        let c2 = plan.layers().iter().find(|l| l.node == "c2").unwrap();
        assert_eq!(c2.kernel, "channel-vector", "{o:?}");
        assert!(c2.reads_packed, "{o:?}: {:?}", plan.layers());
    }
}

/// BCR and pattern (FKW) convolutions take part in pre-packed edges like row-group ones: on
/// the VGG pruned with either, conv -> conv edges between such layers are stored into the
/// consumer's padded layout (bias and ReLU fused in both kernels), and the plan still matches
/// the interpreter.
#[test]
fn bcr_and_pattern_layers_store_and_read_pre_packed_edges() {
    for (scheme, format) in [("bcr:4x8", "BCR-compact"), ("pattern:8+connectivity", "FKW")] {
        let mut g = examples::vgg_cifar().unwrap();
        assert!(prune_all(&mut g, scheme, 4.0) > 0);
        let (opt, _) = Pipeline::standard().run(g).unwrap();
        for o in [
            CompileOptions::default(),
            CompileOptions { batch: 2, threads: 2, ..Default::default() },
        ] {
            let plan = check(&opt, &o, &format!("vgg {scheme} {o:?}"));
            let ours = |l: &&tessera_codegen::LayerReport| l.format == format;
            let stores = plan.layers().iter().filter(ours).filter(|l| l.stores_packed).count();
            let reads = plan.layers().iter().filter(ours).filter(|l| l.reads_packed).count();
            assert!(stores > 0 && reads > 0, "{scheme}: {:?}", plan.layers());
        }
    }
}

/// Pooling steps against the interpreter: max and average, padded, strided, rectangular
/// windows and odd sizes (the plan's 2x2 stride-2 fast path and its general path).
#[test]
fn pooling_matches_the_interpreter() {
    use tessera_ir::GraphBuilder;
    // (max, kernel, stride, padding, input h x w)
    type Case = (bool, [usize; 2], [usize; 2], [usize; 2], [usize; 2]);
    let cases: [Case; 7] = [
        (true, [2, 2], [2, 2], [0, 0], [8, 8]),
        (true, [2, 2], [2, 2], [0, 0], [7, 9]),
        (true, [3, 3], [2, 2], [1, 1], [9, 9]),
        (true, [3, 2], [1, 2], [1, 0], [6, 7]),
        (false, [2, 2], [2, 2], [0, 0], [8, 8]),
        (false, [3, 3], [1, 1], [1, 1], [5, 6]),
        (false, [3, 3], [3, 2], [1, 1], [10, 7]),
    ];
    for (max, kernel, stride, padding, [h, w]) in cases {
        let mut b = GraphBuilder::new("pool");
        let x = b.input("x", &[1, 3, h, w]);
        let (kernel, stride, padding) = (kernel.to_vec(), stride.to_vec(), padding.to_vec());
        let op = if max {
            Op::MaxPool { kernel, stride, padding }
        } else {
            Op::AvgPool { kernel, stride, padding }
        };
        let y = b.node("pool", op, &[&x]);
        b.output(&y);
        let g = b.build().unwrap();
        for o in [
            CompileOptions::default(),
            CompileOptions { batch: 2, threads: 2, ..Default::default() },
        ] {
            check(&g, &o, &format!("{:?} {o:?}", g.nodes[0].op));
        }
    }
}

/// A convolution feeding only a residual add takes the add over: ResNet's block after the
/// passes (batch norm folded) has no add step, for the dense plan (channel-vector kernel on
/// its 8x8 map) and for the row-group, pattern and BCR kernels of pruned plans, and every
/// plan matches the interpreter on every instruction set. A convolution whose output has
/// another reader keeps its add.
#[test]
fn residual_adds_fuse_into_the_convolution_before_them() {
    use tessera_ir::{Conv2d, GraphBuilder};
    let (block, _) = Pipeline::standard().run(examples::resnet_block().unwrap()).unwrap();
    for scheme in [None, Some("block-punched:8x4"), Some("pattern:8+connectivity"), Some("bcr:4x8")]
    {
        let mut g = block.clone();
        if let Some(s) = scheme {
            prune_all(&mut g, s, 4.0);
        }
        for isa in Isa::available() {
            for (batch, threads) in [(1, 1), (2, 2)] {
                let o = CompileOptions { batch, threads, isa: Some(isa), ..Default::default() };
                let plan = check(&g, &o, &format!("{scheme:?} {o:?}"));
                assert!(
                    !plan.step_nodes().iter().any(|n| n == "add"),
                    "{scheme:?}: {:?}",
                    plan.step_nodes()
                );
            }
        }
    }
    // c = conv(x); a = add(c, x); b = add(a, c): c has two readers, neither add fuses.
    let mut b = GraphBuilder::new("shared");
    let x = b.input("x", &[1, 4, 6, 6]);
    let pad = Conv2d { padding: 1, ..Default::default() };
    let c = b.conv2d("c", &x, Tensor::uniform([4, 4, 3, 3], 0.3, 3), None, pad);
    let a = b.node("a", Op::Add { activation: None }, &[&c, &x]);
    let y = b.node("b", Op::Add { activation: None }, &[&a, &c]);
    b.output(&y);
    let g = b.build().unwrap();
    let plan = check(&g, &CompileOptions::default(), "shared");
    assert_eq!(plan.step_nodes(), ["c", "a", "b"]);
}

/// `z = relu(conv_b(y) + y)` with `y = relu(conv_a(x))`: the add fuses into `conv_b`, whose
/// residual is its own input. That input must stay in the plain layout (no pre-packed edge
/// from `conv_a`, which would leave the residual's buffer unwritten); the plan matches the
/// interpreter.
#[test]
fn a_residual_that_is_the_convolutions_own_input_stays_plain() {
    use tessera_ir::{Activation, Conv2d, GraphBuilder};
    let mut b = GraphBuilder::new("self-residual");
    let x = b.input("x", &[1, 8, 16, 16]);
    let pad = Conv2d { padding: 1, ..Default::default() };
    let ca = b.conv2d("conv_a", &x, Tensor::uniform([8, 8, 3, 3], 0.3, 5), None, pad);
    let y = b.act("relu_a", &ca, Activation::Relu);
    let c = b.conv2d("conv_b", &y, Tensor::uniform([8, 8, 3, 3], 0.3, 6), None, pad);
    let z = b.node("add", Op::Add { activation: Some(Activation::Relu) }, &[&c, &y]);
    b.output(&z);
    let (g, _) = Pipeline::standard().run(b.build().unwrap()).unwrap();
    for o in
        [CompileOptions::default(), CompileOptions { batch: 2, threads: 2, ..Default::default() }]
    {
        let plan = check(&g, &o, &format!("{o:?}"));
        assert!(!plan.step_nodes().iter().any(|n| n == "add"), "{:?}", plan.step_nodes());
        assert!(plan.layers().iter().all(|l| !l.reads_packed), "{:?}", plan.layers());
    }
}

/// Two residual stages: a stem, two identity blocks at 16@16x16, a transition (3x3 stride 2
/// and a 1x1 stride-2 shortcut) to 32@8x8 and an identity block.
fn residual_stages(side: usize) -> Graph {
    use tessera_ir::{Activation, Conv2d, GraphBuilder};
    let mut b = GraphBuilder::new("residual-stages");
    let x = b.input("x", &[1, 8, side, side]);
    let pad = Conv2d { padding: 1, ..Default::default() };
    let down = Conv2d { padding: 1, stride: 2, ..Default::default() };
    let mut seed = 40;
    let mut conv = |b: &mut GraphBuilder, name: &str, x: &str, cin, cout, k, c: Conv2d| {
        seed += 1;
        let w = Tensor::uniform([cout, cin, k, k], 0.4, seed);
        let bias = Some(Tensor::uniform([cout], 0.2, seed + 100));
        b.conv2d(name, x, w, bias, c)
    };
    let stem = conv(&mut b, "stem", &x, 8, 16, 3, pad);
    let mut v = b.act("stem.relu", &stem, Activation::Relu);
    for block in ["a", "b"] {
        let c1 = conv(&mut b, &format!("{block}1"), &v, 16, 16, 3, pad);
        let r1 = b.act(&format!("{block}1.relu"), &c1, Activation::Relu);
        let c2 = conv(&mut b, &format!("{block}2"), &r1, 16, 16, 3, pad);
        let s = b.node(&format!("{block}.add"), Op::Add { activation: None }, &[&c2, &v]);
        v = b.act(&format!("{block}.relu"), &s, Activation::Relu);
    }
    let c1 = conv(&mut b, "c1", &v, 16, 32, 3, down);
    let r1 = b.act("c1.relu", &c1, Activation::Relu);
    let c2 = conv(&mut b, "c2", &r1, 32, 32, 3, pad);
    let sc = conv(&mut b, "shortcut", &v, 16, 32, 1, Conv2d { stride: 2, ..Default::default() });
    let s = b.node("c.add", Op::Add { activation: None }, &[&c2, &sc]);
    v = b.act("c.relu", &s, Activation::Relu);
    let d1 = conv(&mut b, "d1", &v, 32, 32, 3, pad);
    let r1 = b.act("d1.relu", &d1, Activation::Relu);
    let d2 = conv(&mut b, "d2", &r1, 32, 32, 3, pad);
    let s = b.node("d.add", Op::Add { activation: None }, &[&d2, &v]);
    let out = b.act("d.relu", &s, Activation::Relu);
    let g = b.node("gap", Op::GlobalAvgPool, &[&out]);
    b.output(&g);
    b.build().unwrap()
}

/// A block input read by the block's first convolution and by the residual add fused into
/// its second is stored once, in the first convolution's padded layout, which the second
/// reads its residual from (`fuse_conv_edges`): for block-punched and BCR layers the first
/// convolutions of the identity blocks read pre-packed inputs, including the block after a
/// transition whose second convolution writes the padded layout while reading its plain
/// shortcut, and the transition's shortcut reads the phase plane its 3x3 stride-2 sibling's
/// input was split into; so do unstructured (row-group) and pattern (FKW) layers. Every plan matches the
/// interpreter, batch 1 and 2, 1 and 2 threads.
#[test]
fn block_inputs_are_stored_once_in_the_padded_layout() {
    // (scheme, input side, the first convolutions reading pre-packed inputs; dense
    // 32-channel layers on 8x8 maps run the channel-vector kernel, which packs its own input;
    // at 32x32 the transition's shortcut, a 1x1 stride-2 convolution read in place into
    // which the add was fused, stores the padded layout in stacked 16-wide rows)
    for (scheme, side, moved) in [
        ("dense", 16, &["a1", "b1"][..]),
        ("dense", 32, &["a1", "b1", "d1"][..]),
        ("block-punched:8x4", 16, &["a1", "b1", "d1"][..]),
        ("block-punched:8x4", 32, &["a1", "b1", "d1"][..]),
        ("bcr:8x16", 16, &["a1", "b1", "d1"][..]),
        ("unstructured", 16, &["a1", "b1", "d1"][..]),
        ("pattern:8+connectivity", 16, &["a1", "b1", "d1"][..]),
    ] {
        let mut g = residual_stages(side);
        assert!(scheme == "dense" || prune_all(&mut g, scheme, 4.0) > 0);
        let (opt, _) = Pipeline::standard().run(g).unwrap();
        for o in [
            CompileOptions::default(),
            CompileOptions { batch: 2, threads: 2, ..Default::default() },
        ] {
            let plan = check(&opt, &o, &format!("residual stages {scheme} {side} {o:?}"));
            let reads = |node: &str| plan.layers().iter().any(|l| l.node == node && l.reads_packed);
            for first in ["a1", "b1", "d1"] {
                let want = moved.contains(&first);
                assert_eq!(reads(first), want, "{scheme} {first}: {:?}", plan.layers());
            }
            // The transition's 3x3 stride-2 convolution reads its input phase-split where the
            // producer stores the split as whole vectors (block-punched, BCR), and packs it
            // itself where that would take compress stores (CSR rows, FKW).
            let split = scheme.starts_with("block-punched") || scheme.starts_with("bcr");
            if scheme != "dense" {
                assert_eq!(reads("c1"), split, "{scheme} c1: {:?}", plan.layers());
                // Its 1x1 stride-2 shortcut then reads one of those phase planes in place
                // (`InputLayout::phase_view`) instead of copying it.
                assert_eq!(reads("shortcut"), split, "{scheme} shortcut: {:?}", plan.layers());
            }
        }
    }
}

/// Small maps with many channels, where the kernels read a gathered input on one thread (BCR
/// and row groups gather a 4x4 map; BCR takes its quad form on 2x2) and the packed input on
/// two: convolutions chained through pre-packed edges, a residual add fused into the last,
/// dense, block-punched and BCR, batch 1 and 2: every plan matches the interpreter, and the
/// gathered layers still read their producers' pre-packed outputs.
#[test]
fn small_maps_read_through_a_gathered_input_match_the_interpreter() {
    use tessera_ir::{Activation, Conv2d, GraphBuilder};
    let mut b = GraphBuilder::new("small-maps");
    let x = b.input("x", &[1, 32, 8, 8]);
    let pad = Conv2d { padding: 1, ..Default::default() };
    let mut seed = 80;
    let mut conv = |b: &mut GraphBuilder, name: &str, x: &str, cin, cout| {
        seed += 1;
        let w = Tensor::uniform([cout, cin, 3, 3], 0.2, seed);
        let bias = Some(Tensor::uniform([cout], 0.2, seed + 100));
        b.conv2d(name, x, w, bias, pad)
    };
    let p = b.max_pool2d("pool0", &x, 2, 2, 0);
    let c1 = conv(&mut b, "c1", &p, 32, 64);
    let r1 = b.act("c1.relu", &c1, Activation::Relu);
    let c2 = conv(&mut b, "c2", &r1, 64, 64);
    let r2 = b.act("c2.relu", &c2, Activation::Relu);
    let p2 = b.max_pool2d("pool2", &r2, 2, 2, 0);
    let c3 = conv(&mut b, "c3", &p2, 64, 64);
    let r3 = b.act("c3.relu", &c3, Activation::Relu);
    let c4 = conv(&mut b, "c4", &r3, 64, 64);
    let s = b.node("c4.add", Op::Add { activation: None }, &[&c4, &p2]);
    let out = b.act("c4.relu", &s, Activation::Relu);
    let g = b.node("gap", Op::GlobalAvgPool, &[&out]);
    b.output(&g);
    let graph = b.build().unwrap();
    for scheme in ["dense", "block-punched:8x4", "bcr:8x16"] {
        let mut g = graph.clone();
        assert!(scheme == "dense" || prune_all(&mut g, scheme, 8.0) > 0);
        let (opt, _) = Pipeline::standard().run(g).unwrap();
        for o in [
            CompileOptions::default(),
            CompileOptions { batch: 2, ..Default::default() },
            CompileOptions { threads: 2, ..Default::default() },
        ] {
            let plan = check(&opt, &o, &format!("small maps {scheme} {o:?}"));
            let reads = |node: &str| plan.layers().iter().any(|l| l.node == node && l.reads_packed);
            if scheme != "dense" {
                assert!(reads("c2") && reads("c4"), "{scheme} {o:?}: {:?}", plan.layers());
            }
        }
    }
}

/// On an AVX-512 CPU, row-group convolutions on 8-wide maps run at AVX2's 8 lanes (whole
/// output rows per vector, where 16-lane tiles run over the padded flat grid) and report it,
/// CSR always, block-punched unless a 16-lane FMA issues as fast as an 8-lane one here
/// (`Isa::full_width_fma`; this CPU's side of the rule, the other side is unit-tested in
/// `lower`); wider maps keep 16 lanes, BCR keeps 16 everywhere; and the plans still match the
/// interpreter (batch 1 and 2, 1 and 2 threads).
#[test]
fn eight_wide_row_group_layers_follow_the_lane_rule_on_avx512() {
    let Ok(avx512) = Isa::from_name("avx512") else { return };
    let blocks = if avx512.full_width_fma() { 16 } else { 8 };
    for (graph, scheme, lanes) in [
        (examples::resnet_block().unwrap(), "block-punched:8x4", blocks),
        (examples::resnet_block().unwrap(), "unstructured", 8),
        (examples::resnet_block().unwrap(), "bcr:8x32", 16),
        (examples::vgg_cifar().unwrap(), "block-punched:8x4", 16),
    ] {
        let mut g = graph;
        assert!(prune_all(&mut g, scheme, 4.0) > 0);
        let (g, _) = Pipeline::standard().run(g).unwrap();
        for (batch, threads) in [(1, 1), (2, 2)] {
            let o = CompileOptions { batch, threads, isa: Some(avx512), ..Default::default() };
            let plan = check(&g, &o, &format!("{} {scheme} {o:?}", g.name));
            let convs: Vec<_> = plan.layers().iter().filter(|l| l.op == "conv").collect();
            assert!(!convs.is_empty());
            for l in convs {
                assert_eq!(l.lanes, lanes, "{} {scheme}: {l:?}", g.name);
            }
        }
    }
}
