//! Emitted source against the reference interpreter: every example graph of the zoo's shapes,
//! dense and pruned by seven schemes, emitted as Rust, compiled with rustc (one crate holding
//! every model as a module) and run on seeded inputs; plus the standalone program form, a
//! snapshot of the source for a tiny model, and the errors.

use std::path::Path;
use std::process::{Command, Stdio};

use expect_test::expect_file;
use tessera_codegen::{CodegenError, EmitOptions, emit_rust};
use tessera_ir::passes::Pipeline;
use tessera_ir::{Activation, Conv2d, Graph, GraphBuilder, Op, Tensor, examples, interp};
use tessera_sparsity::{Scheme, Target};

mod common;

use common::prune_all;

fn rustc() -> String {
    std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string())
}

/// Compiles `main` (with its `#[path]` modules) into `out`; panics with rustc's messages.
fn compile(main: &Path, out: &Path) {
    let res = Command::new(rustc())
        .args(["--edition", "2021", "-C", "opt-level=1", "-C", "debuginfo=0", "-o"])
        .arg(out)
        .arg(main)
        .output()
        .expect("rustc runs");
    assert!(
        res.status.success(),
        "rustc failed on {}:\n{}",
        main.display(),
        String::from_utf8_lossy(&res.stderr)
    );
}

fn to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_bytes(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Outputs must agree with the interpreter to 1e-4 of the largest magnitude (f32 sums
/// against its f64 accumulation).
fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: output length");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= 1e-4 * scale, "{what}: output {i}: emitted {a} vs interp {b}");
    }
}

struct Case {
    name: String,
    graph: Graph,
    batch: usize,
}

fn cases() -> Vec<Case> {
    let schemes = [
        ("dense", 1.0),
        ("unstructured", 8.0),
        ("block-punched:8x4", 8.0),
        ("bcr:4x8", 4.0),
        ("pattern:8+connectivity", 8.0),
        ("filter", 2.0),
        ("block:4x4", 4.0),
    ];
    let mut out = Vec::new();
    for g in [
        examples::lenet5().unwrap(),
        examples::vgg_cifar().unwrap(),
        examples::resnet_block().unwrap(),
        examples::mobilenet_block().unwrap(),
    ] {
        for (scheme, rate) in schemes {
            let mut pruned = g.clone();
            if scheme != "dense" {
                prune_all(&mut pruned, scheme, rate);
            }
            let (opt, _) = Pipeline::standard().run(pruned.clone()).unwrap();
            let batch = if scheme == "block-punched:8x4" { 2 } else { 1 };
            out.push(Case { name: format!("{} {scheme} after passes", g.name), graph: opt, batch });
            if scheme == "dense" || scheme == "pattern:8+connectivity" {
                // Unfused batch norms and activations as separate functions.
                out.push(Case {
                    name: format!("{} {scheme} raw", g.name),
                    graph: pruned,
                    batch: 1,
                });
            }
        }
    }
    out
}

#[test]
fn emitted_models_match_the_interpreter() {
    let dir = tempfile::tempdir().unwrap();
    let cases = cases();
    let mut main = String::from(
        "use std::path::Path;\n\nfn run_one(dir: &Path, k: usize, input_len: usize, output_len: usize, run: &dyn Fn(&[f32], &mut [f32])) {\n    let b = std::fs::read(dir.join(format!(\"in{k}.bin\"))).unwrap();\n    let x: Vec<f32> = b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();\n    assert_eq!(x.len(), input_len);\n    let mut y = vec![0.0f32; output_len];\n    run(&x, &mut y);\n    let out: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();\n    std::fs::write(dir.join(format!(\"out{k}.bin\")), out).unwrap();\n}\n\n",
    );
    let mut wants = Vec::new();
    for (k, case) in cases.iter().enumerate() {
        let model = emit_rust(&case.graph, &EmitOptions { batch: case.batch, main: false })
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        // Only kept weights are stored, and every pruned layer stores exactly its mask's count.
        for l in &model.layers {
            let node = case.graph.nodes.iter().find(|n| n.name == l.node).unwrap();
            let (Op::Conv { weight, .. } | Op::Linear { weight, .. }) = &node.op else {
                panic!("{l:?}")
            };
            let p = &case.graph.params[weight];
            assert_eq!(l.stored, p.kept(), "{}: {l:?}", case.name);
            if matches!(p.sparsity.as_ref().map(|s| &s.scheme), Some(Scheme::Pattern(_))) {
                assert_eq!(l.form, "pattern", "{}: {l:?}", case.name);
            }
        }
        std::fs::write(dir.path().join(format!("m{k}.rs")), &model.source).unwrap();
        let mut shape = case.graph.inputs[0].shape.clone();
        shape[0] = case.batch;
        let x = Tensor::uniform(shape, 1.0, 40 + k as u64);
        std::fs::write(dir.path().join(format!("in{k}.bin")), to_bytes(&x.data)).unwrap();
        let want = interp::run(&case.graph, std::slice::from_ref(&x)).unwrap().remove(0);
        assert_eq!(model.output_shape, want.shape, "{}", case.name);
        wants.push(want.data);
        main = format!("#[path = \"m{k}.rs\"]\nmod m{k};\n") + &main;
    }
    main.push_str("fn main() {\n    let dir = std::env::args().nth(1).unwrap();\n    let dir = Path::new(&dir);\n");
    for k in 0..cases.len() {
        main.push_str(&format!(
            "    run_one(dir, {k}, m{k}::INPUT_LEN, m{k}::OUTPUT_LEN, &|x, y| m{k}::Model::new().run(x, y).unwrap());\n"
        ));
    }
    main.push_str("}\n");
    let main_path = dir.path().join("main.rs");
    std::fs::write(&main_path, main).unwrap();
    let exe = dir.path().join("models");
    compile(&main_path, &exe);
    let run = Command::new(&exe).arg(dir.path()).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    for (k, case) in cases.iter().enumerate() {
        let got = from_bytes(&std::fs::read(dir.path().join(format!("out{k}.bin"))).unwrap());
        assert_close(&got, &wants[k], &case.name);
    }
}

#[test]
fn standalone_program_maps_stdin_to_stdout() {
    let mut g = examples::lenet5().unwrap();
    prune_all(&mut g, "block-punched:4x2", 8.0);
    let (g, _) = Pipeline::standard().run(g).unwrap();
    let model = emit_rust(&g, &EmitOptions { batch: 1, main: true }).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("lenet5.rs");
    std::fs::write(&src, &model.source).unwrap();
    let exe = dir.path().join("lenet5");
    compile(&src, &exe);
    // Two inputs in one stream give two outputs.
    let xs: Vec<Tensor> = (0..2).map(|s| Tensor::uniform([1, 1, 28, 28], 1.0, s)).collect();
    let stdin: Vec<u8> = xs.iter().flat_map(|x| to_bytes(&x.data)).collect();
    let out = feed(&exe, &stdin);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = from_bytes(&out.stdout);
    assert_eq!(got.len(), 20);
    for (i, x) in xs.iter().enumerate() {
        let want = interp::run(&g, std::slice::from_ref(x)).unwrap().remove(0);
        assert_close(&got[10 * i..10 * (i + 1)], &want.data, &format!("input {i}"));
    }
    // A truncated input is refused with the sizes named, not half-processed.
    let bad = feed(&exe, &stdin[..stdin.len() - 4]);
    assert!(!bad.status.success());
    assert!(bad.stdout.is_empty());
    let msg = String::from_utf8_lossy(&bad.stderr);
    assert!(msg.contains("not a multiple of one input (3136 bytes)"), "{msg}");
}

fn feed(exe: &Path, stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(exe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// A conv 2 -> 4 (3x3, pattern-pruned, fused ReLU), 2x2 max pooling and a block-punched
/// linear layer: small enough to read whole.
fn tiny() -> Graph {
    let mut b = GraphBuilder::new("tiny");
    let x = b.input("x", &[1, 2, 4, 4]);
    let w = Tensor::uniform([4, 2, 3, 3], 0.5, 1);
    let c = b.conv2d(
        "conv",
        &x,
        w,
        Some(Tensor::uniform([4], 0.1, 2)),
        Conv2d { padding: 1, ..Default::default() },
    );
    let r = b.act("relu", &c, Activation::Relu);
    let p = b.max_pool2d("pool", &r, 2, 2, 0);
    let f = b.node("flatten", Op::Flatten { start: 1 }, &[&p]);
    let fc = b.linear("fc", &f, Tensor::uniform([4, 16], 0.25, 3), None);
    b.output(&fc);
    let mut g = b.build().unwrap();
    g.prune("conv", "conv.weight", &"pattern:4".parse().unwrap(), Target::Compression(2.0))
        .unwrap();
    g.prune("fc", "fc.weight", &"block-punched:2x4".parse().unwrap(), Target::Compression(2.0))
        .unwrap();
    Pipeline::standard().run(g).unwrap().0
}

#[test]
fn tiny_model_source_snapshot() {
    let model = emit_rust(&tiny(), &EmitOptions::default()).unwrap();
    expect_file!["snapshots/tiny.rs"].assert_eq(&model.source);
}

#[test]
fn refusals_name_the_node_or_parameter() {
    let gru = examples::gru_classifier().unwrap();
    let e = emit_rust(&gru, &EmitOptions::default()).unwrap_err();
    assert!(matches!(&e, CodegenError::Unsupported { op: "gru", .. }), "{e}");

    let mut g = tiny();
    g.params.get_mut("fc.weight").unwrap().tensor.data[5] = f32::NAN;
    let e = emit_rust(&g, &EmitOptions::default()).unwrap_err().to_string();
    assert!(e.contains("`fc.weight`") && e.contains("index 5"), "{e}");

    let e = emit_rust(&tiny(), &EmitOptions { batch: 0, main: false }).unwrap_err();
    assert!(matches!(e, CodegenError::Options { field: "batch", .. }), "{e}");
}
