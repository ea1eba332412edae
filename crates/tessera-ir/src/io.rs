//! Model files: a JSON graph (`graph.json`, versioned) next to the weights in safetensors
//! (`weights.safetensors`).
//!
//! Weights are f32 tensors named like their parameters; a pruned weight's mask is a U8 tensor
//! `<name>.mask` of the same shape (1 = kept), and its scheme is recorded in the JSON. Loading
//! validates everything and names the node or parameter at fault: unknown ops, malformed
//! attributes, dangling edges, shape mismatches, missing / extra / mistyped tensors, mask size
//! mismatches, and (when asked) NaN or infinite weights. Saving writes each file to a temporary
//! file in the same directory and renames it, so a crash never leaves half a model.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tessera_sparsity::{Mask, Scheme};

use crate::error::{IrError, Result};
use crate::graph::{Graph, Input, Node};
use crate::op::Op;
use crate::tensor::{Param, Sparsity, Tensor};

/// The format name written in every graph file.
pub const FORMAT: &str = "tessera-ir";
/// The format version this build writes and reads.
pub const VERSION: u64 = 1;
/// File name of the graph inside a model directory.
pub const GRAPH_FILE: &str = "graph.json";
/// File name of the weights inside a model directory.
pub const WEIGHTS_FILE: &str = "weights.safetensors";

/// A node as written: the op's fields (tagged by `op`) plus `name`, `inputs` and `output`.
/// Built by hand rather than with `#[serde(flatten)]`, which cannot reject unknown fields of an
/// internally tagged enum.
fn node_to_json(n: &Node) -> std::result::Result<serde_json::Value, serde_json::Error> {
    let mut v = serde_json::to_value(&n.op)?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("name".into(), n.name.clone().into());
        obj.insert("inputs".into(), serde_json::to_value(&n.inputs)?);
        obj.insert("output".into(), n.output.clone().into());
    }
    Ok(v)
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ParamFile {
    shape: Vec<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scheme: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct InputFile {
    name: String,
    shape: Vec<usize>,
}

#[derive(Serialize)]
struct GraphFile<'a> {
    format: &'a str,
    version: u64,
    name: &'a str,
    inputs: Vec<InputFile>,
    outputs: &'a [String],
    nodes: Vec<serde_json::Value>,
    params: BTreeMap<&'a str, ParamFile>,
}

/// Options for [`load_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Reject weights holding NaN or infinity.
    pub reject_non_finite: bool,
}

/// Writes `graph` into the directory `dir` (created if needed).
pub fn save(graph: &Graph, dir: &Path) -> Result<()> {
    graph.validate()?;
    std::fs::create_dir_all(dir).map_err(|e| IrError::io(dir, "create directory", e))?;
    let file = GraphFile {
        format: FORMAT,
        version: VERSION,
        name: &graph.name,
        inputs: graph
            .inputs
            .iter()
            .map(|i| InputFile { name: i.name.clone(), shape: i.shape.clone() })
            .collect(),
        outputs: &graph.outputs,
        nodes: graph
            .nodes
            .iter()
            .map(node_to_json)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| IrError::Json { path: dir.join(GRAPH_FILE), reason: e.to_string() })?,
        params: graph
            .params
            .iter()
            .map(|(k, p)| {
                (
                    k.as_str(),
                    ParamFile {
                        shape: p.tensor.shape.clone(),
                        scheme: p.sparsity.as_ref().map(|s| s.scheme.to_string()),
                    },
                )
            })
            .collect(),
    };
    let json = serde_json::to_vec_pretty(&file)
        .map_err(|e| IrError::Json { path: dir.join(GRAPH_FILE), reason: e.to_string() })?;
    // safetensors wants byte views; masks become one byte per weight.
    let mut blobs: Vec<(String, Vec<usize>, safetensors::Dtype, Vec<u8>)> = Vec::new();
    for (name, p) in &graph.params {
        let bytes: Vec<u8> = p.tensor.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        blobs.push((name.clone(), p.tensor.shape.clone(), safetensors::Dtype::F32, bytes));
        if let Some(s) = &p.sparsity {
            let mask: Vec<u8> = (0..s.mask.len()).map(|i| u8::from(s.mask.get(i))).collect();
            blobs.push((
                format!("{name}.mask"),
                p.tensor.shape.clone(),
                safetensors::Dtype::U8,
                mask,
            ));
        }
    }
    let weights_path = dir.join(WEIGHTS_FILE);
    let views = blobs
        .iter()
        .map(|(n, shape, dt, bytes)| {
            safetensors::tensor::TensorView::new(*dt, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| IrError::Safetensors {
                    path: weights_path.clone(),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let weights = safetensors::serialize(views, None)
        .map_err(|e| IrError::Safetensors { path: weights_path.clone(), reason: e.to_string() })?;
    write_atomic(&weights_path, &weights)?;
    write_atomic(&dir.join(GRAPH_FILE), &json)?;
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| IrError::io(dir, "create temporary file", e))?;
    tmp.write_all(bytes).map_err(|e| IrError::io(tmp.path(), "write", e))?;
    tmp.as_file().sync_all().map_err(|e| IrError::io(tmp.path(), "sync", e))?;
    tmp.persist(path).map_err(|e| IrError::io(path, "rename temporary file onto", e.error))?;
    Ok(())
}

/// Loads the model in `dir` with default options.
pub fn load(dir: &Path) -> Result<Graph> {
    load_with(dir, LoadOptions::default())
}

/// Loads and validates the model in `dir`.
pub fn load_with(dir: &Path, options: LoadOptions) -> Result<Graph> {
    let graph_path = dir.join(GRAPH_FILE);
    let text = std::fs::read(&graph_path).map_err(|e| IrError::io(&graph_path, "read", e))?;
    let json: serde_json::Value = serde_json::from_slice(&text).map_err(|e| IrError::Json {
        path: graph_path.clone(),
        reason: format!("not valid JSON: {e}"),
    })?;
    let jerr = |reason: String| IrError::Json { path: graph_path.clone(), reason };
    let obj = json.as_object().ok_or_else(|| jerr("expected a JSON object".into()))?;
    if obj.get("format").and_then(|v| v.as_str()) != Some(FORMAT) {
        return Err(jerr(format!("field `format` must be \"{FORMAT}\"")));
    }
    let version = obj
        .get("version")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| jerr("field `version` (an integer) is missing".into()))?;
    if version != VERSION {
        return Err(IrError::UnsupportedVersion {
            path: graph_path.clone(),
            found: version,
            supported: VERSION,
        });
    }
    let field = |k: &str| obj.get(k).ok_or_else(|| jerr(format!("field `{k}` is missing")));
    let name =
        field("name")?.as_str().ok_or_else(|| jerr("`name` must be a string".into()))?.to_string();
    let inputs: Vec<InputFile> = serde_json::from_value(field("inputs")?.clone())
        .map_err(|e| jerr(format!("`inputs`: {e}")))?;
    let outputs: Vec<String> = serde_json::from_value(field("outputs")?.clone())
        .map_err(|e| jerr(format!("`outputs`: {e}")))?;
    let params_meta: BTreeMap<String, ParamFile> = serde_json::from_value(field("params")?.clone())
        .map_err(|e| jerr(format!("`params`: {e}")))?;
    let raw_nodes =
        field("nodes")?.as_array().ok_or_else(|| jerr("`nodes` must be an array".into()))?;
    let mut nodes = Vec::with_capacity(raw_nodes.len());
    for (i, raw) in raw_nodes.iter().enumerate() {
        let node_name = raw
            .get("name")
            .and_then(|v| v.as_str())
            .map(String::from)
            .unwrap_or_else(|| format!("#{i}"));
        let op = raw.get("op").and_then(|v| v.as_str()).ok_or_else(|| IrError::BadNode {
            node: node_name.clone(),
            reason: "field `op` is missing".into(),
        })?;
        if !Op::NAMES.contains(&op) {
            return Err(IrError::UnknownOp { node: node_name, op: op.to_string() });
        }
        let bad = |reason: String| IrError::BadNode { node: node_name.clone(), reason };
        let mut fields =
            raw.as_object().cloned().ok_or_else(|| bad("a node must be a JSON object".into()))?;
        let mut take =
            |k: &str| fields.remove(k).ok_or_else(|| bad(format!("field `{k}` is missing")));
        let name: String =
            serde_json::from_value(take("name")?).map_err(|e| bad(format!("`name`: {e}")))?;
        let inputs: Vec<String> =
            serde_json::from_value(take("inputs")?).map_err(|e| bad(format!("`inputs`: {e}")))?;
        let output: String =
            serde_json::from_value(take("output")?).map_err(|e| bad(format!("`output`: {e}")))?;
        let op: Op = serde_json::from_value(serde_json::Value::Object(fields))
            .map_err(|e| bad(e.to_string()))?;
        nodes.push(Node { name, op, inputs, output });
    }
    let params = read_weights(&dir.join(WEIGHTS_FILE), &params_meta, options)?;
    let graph = Graph {
        name,
        inputs: inputs.into_iter().map(|i| Input { name: i.name, shape: i.shape }).collect(),
        nodes,
        outputs,
        params,
    };
    graph.validate()?;
    Ok(graph)
}

fn read_weights(
    path: &PathBuf,
    meta: &BTreeMap<String, ParamFile>,
    options: LoadOptions,
) -> Result<BTreeMap<String, Param>> {
    let bytes = std::fs::read(path).map_err(|e| IrError::io(path, "read", e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| IrError::Safetensors { path: path.clone(), reason: e.to_string() })?;
    let tensors: HashMap<String, safetensors::tensor::TensorView<'_>> =
        st.tensors().into_iter().collect();
    for name in tensors.keys() {
        let base = name.strip_suffix(".mask").unwrap_or(name);
        if !meta.contains_key(base) {
            return Err(IrError::BadParam {
                param: name.clone(),
                reason: "tensor in the weights file is not declared in the graph".into(),
            });
        }
    }
    let mut params = BTreeMap::new();
    for (name, m) in meta {
        let t = tensors.get(name).ok_or_else(|| IrError::BadParam {
            param: name.clone(),
            reason: format!("missing from {}", path.display()),
        })?;
        if t.dtype() != safetensors::Dtype::F32 {
            return Err(IrError::BadParam {
                param: name.clone(),
                reason: format!("dtype {:?}, expected F32", t.dtype()),
            });
        }
        if t.shape() != m.shape.as_slice() {
            return Err(IrError::BadParam {
                param: name.clone(),
                reason: format!("stored shape {:?}, declared {:?}", t.shape(), m.shape),
            });
        }
        let data: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if options.reject_non_finite
            && let Some((index, &value)) = data.iter().enumerate().find(|(_, v)| !v.is_finite())
        {
            return Err(IrError::NonFinite { param: name.clone(), index, value });
        }
        let mask_name = format!("{name}.mask");
        let sparsity = match (&m.scheme, tensors.get(&mask_name)) {
            (None, None) => None,
            (Some(s), Some(mt)) => {
                let scheme: Scheme = s.parse().map_err(|e| IrError::BadParam {
                    param: name.clone(),
                    reason: format!("scheme: {e}"),
                })?;
                if mt.dtype() != safetensors::Dtype::U8 || mt.shape() != m.shape.as_slice() {
                    return Err(IrError::BadParam {
                        param: name.clone(),
                        reason: format!(
                            "mask must be U8 of shape {:?}, found {:?} {:?}",
                            m.shape,
                            mt.dtype(),
                            mt.shape()
                        ),
                    });
                }
                if let Some(i) = mt.data().iter().position(|&b| b > 1) {
                    return Err(IrError::BadParam {
                        param: name.clone(),
                        reason: format!("mask value {} at {i} is not 0 or 1", mt.data()[i]),
                    });
                }
                let bits: Vec<bool> = mt.data().iter().map(|&b| b == 1).collect();
                Some(Sparsity { scheme, mask: Mask::from_bools(&bits) })
            }
            (Some(_), None) => {
                return Err(IrError::BadParam {
                    param: name.clone(),
                    reason: format!("declared pruned but `{mask_name}` is missing"),
                });
            }
            (None, Some(_)) => {
                return Err(IrError::BadParam {
                    param: name.clone(),
                    reason: "has a mask but no scheme in the graph".into(),
                });
            }
        };
        params.insert(name.clone(), Param { tensor: Tensor::new(m.shape.clone(), data), sparsity });
    }
    Ok(params)
}
