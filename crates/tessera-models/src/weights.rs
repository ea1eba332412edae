//! Named prunable weights: list them with their layer geometry, read and write them in the
//! GEMM view tessera-sparsity defines, and apply masks in place.
//!
//! Geometry comes from the model's IR export (which knows groups, strides and output sizes);
//! values are read and written through burn's module visitor and mapper, by path. Linear
//! weights are stored `[in, out]` by burn and `[out, in]` in the GEMM view, so they are
//! transposed on the way in and out.

use std::collections::BTreeMap;

use burn::module::{ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::TensorData;
use tessera_ir::Op;
use tessera_sparsity::{Layer, Mask};

use crate::error::{ModelError, Result};
use crate::export::Masks;
use crate::zoo::Classifier;

/// One prunable weight.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedWeight {
    /// Path, e.g. `layers.0.conv.weight`.
    pub path: String,
    /// Geometry (layer name = path) with output positions for FLOP counts.
    pub layer: Layer,
    /// Values in the GEMM view (row-major `[out, in x kernel]`).
    pub values: Vec<f32>,
}

/// Every conv and linear weight of `model` for inputs of `input` shape, in execution order.
pub fn prunable_weights<M: Classifier>(model: &M, input: [usize; 4]) -> Result<Vec<NamedWeight>> {
    let g = model.export(input, &Masks::new())?;
    let shapes = g.validate()?;
    let mut out = Vec::new();
    for n in &g.nodes {
        let (Op::Conv { weight, .. } | Op::Linear { weight, .. }) = &n.op else { continue };
        let Some(layer) = g.weight_layer(n, weight, &shapes) else { continue };
        let layer = Layer { name: weight.clone(), ..layer };
        out.push(NamedWeight {
            path: weight.clone(),
            layer,
            values: g.params[weight].tensor.data.clone(),
        });
    }
    Ok(out)
}

/// Tracks the module path during a visit or a map.
#[derive(Default)]
struct PathStack(Vec<String>);

impl PathStack {
    fn join(&self) -> String {
        self.0.join(".")
    }
}

/// Transposes a row-major `rows x cols` matrix.
fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

/// Replaces weights by path with new values (GEMM view), keeping parameter ids so optimizer
/// state stays attached.
struct SetWeights<'a> {
    path: PathStack,
    updates: &'a BTreeMap<String, Vec<f32>>,
    applied: usize,
}

impl ModuleMapper for SetWeights<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.0.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.0.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(values) = self.updates.get(&self.path.join()) else { return param };
        let (id, t, mapper) = param.consume();
        let (device, requires_grad) = (t.device(), t.is_require_grad());
        let dims = t.dims();
        let data = if D == 2 { transpose(values, dims[1], dims[0]) } else { values.clone() };
        let mut nt = Tensor::<D>::from_data(TensorData::new(data, dims), &device);
        if requires_grad {
            nt = nt.require_grad();
        }
        self.applied += 1;
        Param::from_mapped_value(id, nt, mapper)
    }
}

/// `model` with the weights at the given paths replaced by GEMM-view values.
pub fn set_weights<M: Classifier>(model: M, updates: &BTreeMap<String, Vec<f32>>) -> Result<M> {
    let mut m = SetWeights { path: PathStack::default(), updates, applied: 0 };
    let model = model.map(&mut m);
    if m.applied != updates.len() {
        let known = collect_paths(&model);
        let missing = updates.keys().find(|k| !known.contains(k)).cloned().unwrap_or_default();
        return Err(ModelError::NoSuchWeight { path: missing });
    }
    Ok(model)
}

/// Multiplies masked weights by their masks (pruned weights become exactly zero).
struct ApplyMasks<'a> {
    path: PathStack,
    masks: &'a Masks,
}

impl ModuleMapper for ApplyMasks<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.0.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.0.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some((_, mask)) = self.masks.get(&self.path.join()) else { return param };
        let dims = param.val().dims();
        let bits = mask.to_f32();
        let data = if D == 2 { transpose(&bits, dims[1], dims[0]) } else { bits };
        let device = param.val().device();
        let m = Tensor::<D>::from_data(TensorData::new(data, dims), &device.inner());
        param.map(move |t| {
            let requires_grad = t.is_require_grad();
            let m = m.to_device(&t.device());
            let masked = (t * m).detach();
            if requires_grad { masked.require_grad() } else { masked }
        })
    }
}

/// `model` with every mask of `masks` applied.
pub fn apply_masks<M: Classifier>(model: M, masks: &Masks) -> M {
    if masks.is_empty() {
        return model;
    }
    model.map(&mut ApplyMasks { path: PathStack::default(), masks })
}

/// Collects every float parameter path (and id).
#[derive(Default)]
struct Paths {
    path: PathStack,
    out: Vec<(String, ParamId)>,
}

impl ModuleVisitor for Paths {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.0.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.0.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.out.push((self.path.join(), param.id));
    }
}

/// Every float parameter path of `model` (weights, biases, batch-norm parameters).
pub fn collect_paths<M: Classifier>(model: &M) -> Vec<String> {
    let mut v = Paths::default();
    model.visit(&mut v);
    v.out.into_iter().map(|(p, _)| p).collect()
}

/// Parameter ids by path (to find gradients of specific weights).
pub fn param_ids<M: Classifier>(model: &M) -> BTreeMap<String, ParamId> {
    let mut v = Paths::default();
    model.visit(&mut v);
    v.out.into_iter().collect()
}

/// The kept fraction of each masked weight (for reports).
pub fn mask_densities(masks: &Masks) -> Vec<(String, f64)> {
    masks.iter().map(|(p, (_, m))| (p.clone(), m.density())).collect()
}

/// A mask from the non-zeros of GEMM-view values.
pub fn support(values: &[f32]) -> Mask {
    Mask::support_of(values)
}

/// Visits weights by path with the gradients at hand: reads them into the GEMM view, adds
/// GEMM-view deltas, or multiplies them by masks. `D == 2` parameters (linear, stored
/// `[in, out]`) are transposed to and from the `[out, in]` GEMM view.
struct GradientAccess<'a> {
    path: PathStack,
    grads: &'a mut GradientsParams,
    action: GradientAction<'a>,
    seen: Vec<String>,
}

enum GradientAction<'a> {
    Read { paths: &'a [String], out: BTreeMap<String, Vec<f32>> },
    Add(&'a BTreeMap<String, Vec<f32>>),
    Mask(&'a Masks),
}

impl GradientAccess<'_> {
    fn handle<const D: usize>(&mut self, param: &Param<Tensor<D>>) -> Option<()> {
        let path = self.path.join();
        let dims = param.lazy_shape().dims::<D>();
        let gemm_to_param =
            |v: &[f32]| if D == 2 { transpose(v, dims[1], dims[0]) } else { v.to_vec() };
        match &mut self.action {
            GradientAction::Read { paths, out } => {
                if !paths.contains(&path) {
                    return None;
                }
                let g = self.grads.get::<D>(param.id)?;
                let v = g.into_data().convert::<f32>().try_into_vec::<f32>().ok()?;
                let v = if D == 2 { transpose(&v, dims[0], dims[1]) } else { v };
                out.insert(path.clone(), v);
            }
            GradientAction::Add(deltas) => {
                let delta = deltas.get(&path)?;
                let device = param.lazy_device();
                let inner = device.clone().inner();
                let d = Tensor::<D>::from_data(TensorData::new(gemm_to_param(delta), dims), &inner);
                let g = match self.grads.remove::<D>(param.id) {
                    Some(g) => {
                        let d = d.to_device(&g.device());
                        g + d
                    }
                    None => d,
                };
                self.grads.register(param.id, g);
            }
            GradientAction::Mask(masks) => {
                let (_, mask) = masks.get(&path)?;
                let g = self.grads.remove::<D>(param.id)?;
                let m = Tensor::<D>::from_data(
                    TensorData::new(gemm_to_param(&mask.to_f32()), dims),
                    &g.device(),
                );
                self.grads.register(param.id, g * m);
            }
        }
        self.seen.push(path);
        Some(())
    }
}

impl ModuleVisitor for GradientAccess<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.0.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.0.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = self.handle(param);
    }
}

fn missing<'a>(wanted: impl Iterator<Item = &'a String>, seen: &[String]) -> Result<()> {
    match wanted.into_iter().find(|p| !seen.contains(p)) {
        Some(p) => Err(ModelError::NoSuchWeight { path: p.clone() }),
        None => Ok(()),
    }
}

/// The gradients of the weights at `paths`, in the GEMM view. A path with no gradient (not a
/// parameter, or not trained) is an error naming it.
pub fn read_gradients<M: Classifier>(
    model: &M,
    grads: &mut GradientsParams,
    paths: &[String],
) -> Result<BTreeMap<String, Vec<f32>>> {
    let mut v = GradientAccess {
        path: PathStack::default(),
        grads,
        action: GradientAction::Read { paths, out: BTreeMap::new() },
        seen: Vec::new(),
    };
    model.visit(&mut v);
    missing(paths.iter(), &v.seen)?;
    match v.action {
        GradientAction::Read { out, .. } => Ok(out),
        _ => Ok(BTreeMap::new()),
    }
}

/// Adds GEMM-view `deltas` to the gradients of the weights at their paths: how explicit
/// penalty gradients (ADMM's `rho (W - Z + U)`, group lasso's `lambda alpha_g W_g / ||W_g||`)
/// reach the optimizer. A weight without a gradient gets the delta as its gradient.
pub fn add_to_gradients<M: Classifier>(
    model: &M,
    grads: &mut GradientsParams,
    deltas: &BTreeMap<String, Vec<f32>>,
) -> Result<()> {
    let mut v = GradientAccess {
        path: PathStack::default(),
        grads,
        action: GradientAction::Add(deltas),
        seen: Vec::new(),
    };
    model.visit(&mut v);
    missing(deltas.keys(), &v.seen)
}

/// Zeroes the gradients of pruned weights (masked retraining: neither the weights nor their
/// optimizer state move).
pub fn mask_gradients<M: Classifier>(model: &M, grads: &mut GradientsParams, masks: &Masks) {
    let mut v = GradientAccess {
        path: PathStack::default(),
        grads,
        action: GradientAction::Mask(masks),
        seen: Vec::new(),
    };
    model.visit(&mut v);
}

/// Reads the weights at `paths` in the GEMM view, straight from the parameters (no export:
/// cheap enough to call every step).
struct ReadWeights<'a> {
    path: PathStack,
    paths: &'a [String],
    out: BTreeMap<String, Vec<f32>>,
    failed: Option<String>,
}

impl ModuleVisitor for ReadWeights<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.0.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.0.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let path = self.path.join();
        if !self.paths.contains(&path) {
            return;
        }
        let t = param.val();
        let dims = t.dims();
        match t.into_data().convert::<f32>().try_into_vec::<f32>() {
            Ok(v) => {
                let v = if D == 2 { transpose(&v, dims[0], dims[1]) } else { v };
                self.out.insert(path, v);
            }
            Err(e) => self.failed = Some(format!("{path}: {e:?}")),
        }
    }
}

/// The weights at `paths`, GEMM view (the same values [`prunable_weights`] gives, without
/// exporting the model).
pub fn read_weights<M: Classifier>(
    model: &M,
    paths: &[String],
) -> Result<BTreeMap<String, Vec<f32>>> {
    let mut v =
        ReadWeights { path: PathStack::default(), paths, out: BTreeMap::new(), failed: None };
    model.visit(&mut v);
    if let Some(reason) = v.failed {
        return Err(ModelError::Tensor { what: "weight".into(), reason });
    }
    missing(paths.iter(), &v.out.keys().cloned().collect::<Vec<_>>())?;
    Ok(v.out)
}
