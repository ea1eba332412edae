//! Every kind of malformed model file gives a typed error naming the node or parameter: the
//! broken files are made here from a valid saved model.

use std::path::Path;

use serde_json::{Value, json};
use tessera_ir::io::{self, GRAPH_FILE, LoadOptions, WEIGHTS_FILE};
use tessera_ir::{Activation, Conv2d, GraphBuilder, IrError, Tensor};
use tessera_sparsity::{Scheme, Target};

fn valid_model(dir: &Path) {
    let mut b = GraphBuilder::new("small");
    let x = b.input("x", &[1, 1, 8, 8]);
    let c = b.conv2d(
        "conv",
        &x,
        Tensor::uniform([4, 1, 3, 3], 0.5, 1),
        Some(Tensor::zeros([4])),
        Conv2d { padding: 1, ..Default::default() },
    );
    let r = b.act("relu", &c, Activation::Relu);
    let f = b.node("flat", tessera_ir::Op::Flatten { start: 1 }, &[&r]);
    let fc = b.linear("fc", &f, Tensor::uniform([3, 256], 0.1, 2), None);
    b.output(&fc);
    let mut g = b.build().unwrap();
    g.prune("fc", "fc.weight", &"block:1x4".parse::<Scheme>().unwrap(), Target::Sparsity(0.5))
        .unwrap();
    io::save(&g, dir).unwrap();
}

fn edit_json(dir: &Path, f: impl FnOnce(&mut Value)) {
    let p = dir.join(GRAPH_FILE);
    let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
}

/// Rewrites the weights file through `f(name, dtype, shape, bytes)`; returning `None` drops the
/// tensor.
#[allow(clippy::type_complexity)]
fn edit_weights(
    dir: &Path,
    f: impl Fn(
        &str,
        safetensors::Dtype,
        Vec<usize>,
        Vec<u8>,
    ) -> Option<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>,
    extra: Option<(&str, Vec<u8>)>,
) {
    let p = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .filter_map(|(n, t)| f(&n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    if let Some((name, data)) = extra {
        out.push((name.to_string(), safetensors::Dtype::F32, vec![data.len() / 4], data));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = out
        .iter()
        .map(|(n, d, s, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap())
        })
        .collect();
    std::fs::write(&p, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn load_err(dir: &Path) -> IrError {
    io::load(dir).expect_err("the broken model must not load")
}

fn fresh() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    valid_model(d.path());
    assert!(io::load(d.path()).is_ok());
    d
}

#[test]
fn unknown_op_names_the_node() {
    let d = fresh();
    edit_json(d.path(), |v| v["nodes"][1]["op"] = json!("swish"));
    match load_err(d.path()) {
        IrError::UnknownOp { node, op } => {
            assert_eq!((node.as_str(), op.as_str()), ("relu", "swish"))
        }
        e => panic!("{e}"),
    }
}

#[test]
fn bad_attributes_name_the_node() {
    let d = fresh();
    edit_json(d.path(), |v| v["nodes"][0]["stride"] = json!("two"));
    assert!(matches!(load_err(d.path()), IrError::BadNode { node, .. } if node == "conv"));
    let d = fresh();
    edit_json(d.path(), |v| v["nodes"][0]["bogus"] = json!(1));
    let e = load_err(d.path());
    assert!(
        matches!(&e, IrError::BadNode { node, reason } if node == "conv" && reason.contains("bogus")),
        "{e}"
    );
}

#[test]
fn shape_mismatch_names_the_node() {
    let d = fresh();
    // The conv now declares 2 output channels, so fc's 256 inputs no longer match 128.
    edit_json(d.path(), |v| v["params"]["conv.weight"]["shape"] = json!([2, 1, 3, 3]));
    edit_weights(
        d.path(),
        |n, dt, s, b| match n {
            "conv.weight" => Some((n.into(), dt, vec![2, 1, 3, 3], b[..72].to_vec())),
            "conv.bias" => Some((n.into(), dt, vec![2], b[..8].to_vec())),
            _ => Some((n.into(), dt, s, b)),
        },
        None,
    );
    edit_json(d.path(), |v| v["params"]["conv.bias"]["shape"] = json!([2]));
    let e = load_err(d.path());
    assert!(matches!(&e, IrError::ShapeMismatch { node, .. } if node == "fc"), "{e}");
}

#[test]
fn dangling_edge_and_duplicate_values() {
    let d = fresh();
    edit_json(d.path(), |v| v["nodes"][2]["inputs"] = json!(["nope"]));
    assert!(
        matches!(load_err(d.path()), IrError::DanglingInput { node, input } if node == "flat" && input == "nope")
    );
    let d = fresh();
    edit_json(d.path(), |v| v["nodes"][2]["output"] = json!("relu"));
    assert!(matches!(load_err(d.path()), IrError::DuplicateValue { name } if name == "relu"));
    let d = fresh();
    edit_json(d.path(), |v| v["outputs"] = json!(["missing"]));
    assert!(matches!(load_err(d.path()), IrError::DanglingOutput { .. }));
    // A node reading a value produced later (a cycle or misordering) is dangling too.
    let d = fresh();
    edit_json(d.path(), |v| v["nodes"][0]["inputs"] = json!(["fc"]));
    assert!(matches!(load_err(d.path()), IrError::DanglingInput { node, .. } if node == "conv"));
}

#[test]
fn mask_problems_name_the_parameter() {
    let d = fresh();
    edit_weights(
        d.path(),
        |n, dt, s, b| {
            if n == "fc.weight.mask" {
                Some((n.into(), dt, vec![3, 128], b[..384].to_vec()))
            } else {
                Some((n.into(), dt, s, b))
            }
        },
        None,
    );
    assert!(matches!(load_err(d.path()), IrError::BadParam { param, .. } if param == "fc.weight"));
    let d = fresh();
    edit_weights(
        d.path(),
        |n, dt, s, mut b| {
            if n == "fc.weight.mask" {
                b[5] = 2;
            }
            Some((n.into(), dt, s, b))
        },
        None,
    );
    assert!(
        matches!(load_err(d.path()), IrError::BadParam { param, reason } if param == "fc.weight" && reason.contains("not 0 or 1"))
    );
    let d = fresh();
    edit_weights(
        d.path(),
        |n, dt, s, b| (n != "fc.weight.mask").then(|| (n.into(), dt, s, b)),
        None,
    );
    assert!(matches!(load_err(d.path()), IrError::BadParam { param, .. } if param == "fc.weight"));
    let d = fresh();
    edit_json(d.path(), |v| v["params"]["fc.weight"]["scheme"] = json!("blocky:3"));
    assert!(matches!(load_err(d.path()), IrError::BadParam { param, .. } if param == "fc.weight"));
}

#[test]
fn tensor_problems_name_the_parameter() {
    let d = fresh();
    edit_weights(d.path(), |n, dt, s, b| (n != "conv.bias").then(|| (n.into(), dt, s, b)), None);
    assert!(matches!(load_err(d.path()), IrError::BadParam { param, .. } if param == "conv.bias"));
    let d = fresh();
    edit_weights(
        d.path(),
        |n, dt, s, b| {
            if n == "conv.bias" {
                Some((n.into(), safetensors::Dtype::I32, s, b))
            } else {
                Some((n.into(), dt, s, b))
            }
        },
        None,
    );
    assert!(
        matches!(load_err(d.path()), IrError::BadParam { param, reason } if param == "conv.bias" && reason.contains("F32"))
    );
    let d = fresh();
    edit_weights(d.path(), |n, dt, s, b| Some((n.into(), dt, s, b)), Some(("stray", vec![0u8; 8])));
    assert!(matches!(load_err(d.path()), IrError::BadParam { param, .. } if param == "stray"));
    let d = fresh();
    let p = d.path().join(WEIGHTS_FILE);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(load_err(d.path()), IrError::Safetensors { .. }));
}

#[test]
fn non_finite_weights_are_rejected_when_asked() {
    let d = fresh();
    edit_weights(
        d.path(),
        |n, dt, s, mut b| {
            if n == "conv.weight" {
                b[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
            }
            Some((n.into(), dt, s, b))
        },
        None,
    );
    assert!(io::load(d.path()).is_ok());
    match io::load_with(d.path(), LoadOptions { reject_non_finite: true }).unwrap_err() {
        IrError::NonFinite { param, index, .. } => {
            assert_eq!((param.as_str(), index), ("conv.weight", 1))
        }
        e => panic!("{e}"),
    }
}

#[test]
fn version_json_and_missing_files() {
    let d = fresh();
    edit_json(d.path(), |v| v["version"] = json!(7));
    assert!(matches!(
        load_err(d.path()),
        IrError::UnsupportedVersion { found: 7, supported: 1, .. }
    ));
    let d = fresh();
    std::fs::write(d.path().join(GRAPH_FILE), b"{ not json").unwrap();
    let e = load_err(d.path());
    assert!(matches!(e, IrError::Json { .. }) && e.to_string().contains(GRAPH_FILE), "{e}");
    let d = fresh();
    edit_json(d.path(), |v| v["format"] = json!("onnx"));
    assert!(matches!(load_err(d.path()), IrError::Json { .. }));
    let d = fresh();
    std::fs::remove_file(d.path().join(WEIGHTS_FILE)).unwrap();
    assert!(matches!(load_err(d.path()), IrError::Io { .. }));
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(io::load(empty.path()), Err(IrError::Io { .. })));
}

#[test]
fn saving_replaces_files_whole() {
    let d = fresh();
    let before = std::fs::read(d.path().join(GRAPH_FILE)).unwrap();
    let g = io::load(d.path()).unwrap();
    io::save(&g, d.path()).unwrap();
    assert_eq!(
        std::fs::read(d.path().join(GRAPH_FILE)).unwrap(),
        before,
        "saving is deterministic"
    );
    // No temporary files are left behind.
    let names: Vec<String> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}
