//! Saved models: a directory any tessera command can pick up again.
//!
//! ```text
//! <dir>/card.json          what the model is: zoo config, input shape, data set, normalization
//! <dir>/model.bpk          burn weights (burnpack)
//! <dir>/masks.safetensors  pruning masks, when pruned (the "mask file")
//! <dir>/ir/                the model exported to the tessera IR, masks attached
//! ```
//!
//! The mask file is safetensors: one U8 tensor per masked weight, named by the weight's path,
//! with the GEMM-view shape `[rows, cols]` (1 = kept), and the scheme of each in the metadata
//! (`scheme:<path>`). Every file is written atomically (temporary file, then rename), and the
//! card last, so a directory with a card is complete.

use std::collections::HashMap;
use std::path::Path;

use burn::prelude::Device;
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use tessera_data::Normalization;
use tessera_sparsity::{Mask, Scheme};

use crate::error::{ModelError, Result};
use crate::export::Masks;
use crate::zoo::{Classifier, WithModel, ZooConfig};

/// What a saved model is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// The architecture.
    pub model: ZooConfig,
    /// Input shape of one example: channels, height, width.
    pub input: [usize; 3],
    /// The data set it was trained on (`mnist`, `fashion-mnist`, ...), if any.
    pub dataset: Option<String>,
    /// The input normalization it expects.
    pub normalization: Option<Normalization>,
    /// Free-form provenance (which command, which run).
    #[serde(default)]
    pub note: String,
}

impl ModelCard {
    /// The IR input shape for a batch of one.
    pub fn batch_of_one(&self) -> [usize; 4] {
        [1, self.input[0], self.input[1], self.input[2]]
    }
}

fn io_err(path: &Path, reason: impl std::fmt::Display) -> ModelError {
    ModelError::Checkpoint { path: path.to_path_buf(), reason: reason.to_string() }
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    tessera_data::file::write_atomic(path, bytes).map_err(|e| io_err(path, e))
}

/// Saves `model` (with `masks`, which may be empty) as a model directory.
pub fn save<M: Classifier>(dir: &Path, card: &ModelCard, model: &M, masks: &Masks) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let graph = model.export(card.batch_of_one(), masks)?;
    tessera_ir::io::save(&graph, &dir.join("ir"))?;
    let tmp = dir.join("model.tmp.bpk");
    model.clone().save_file(&tmp).map_err(|e| io_err(&tmp, format!("{e:?}")))?;
    std::fs::rename(&tmp, dir.join("model.bpk")).map_err(|e| io_err(&tmp, e))?;
    let mask_path = dir.join("masks.safetensors");
    if masks.is_empty() {
        if mask_path.exists() {
            std::fs::remove_file(&mask_path).map_err(|e| io_err(&mask_path, e))?;
        }
    } else {
        let shapes: HashMap<String, [usize; 2]> =
            crate::weights::prunable_weights(model, card.batch_of_one())?
                .into_iter()
                .map(|w| (w.path, [w.layer.geometry.rows(), w.layer.geometry.cols()]))
                .collect();
        write(&mask_path, &masks_to_safetensors(masks, &shapes)?)?;
    }
    let json = serde_json::to_vec_pretty(card).map_err(|e| io_err(dir, e))?;
    write(&dir.join("card.json"), &json)
}

fn masks_to_safetensors(masks: &Masks, shapes: &HashMap<String, [usize; 2]>) -> Result<Vec<u8>> {
    let mut bytes: Vec<(String, Vec<u8>, [usize; 2])> = Vec::new();
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "tessera-masks-v1".to_string());
    for (path, (scheme, mask)) in masks.iter() {
        let shape =
            *shapes.get(path).ok_or_else(|| ModelError::NoSuchWeight { path: path.clone() })?;
        if shape[0] * shape[1] != mask.len() {
            return Err(ModelError::Config {
                field: "masks",
                reason: format!(
                    "mask of `{path}` has {} entries, the weight {}x{}",
                    mask.len(),
                    shape[0],
                    shape[1]
                ),
            });
        }
        bytes.push((path.clone(), (0..mask.len()).map(|i| u8::from(mask.get(i))).collect(), shape));
        meta.insert(format!("scheme:{path}"), scheme.to_string());
    }
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(name, data, shape)| {
            TensorView::new(Dtype::U8, shape.to_vec(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| ModelError::Config { field: "masks", reason: format!("{name}: {e}") })
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, Some(meta))
        .map_err(|e| ModelError::Config { field: "masks", reason: e.to_string() })
}

/// Reads a mask file written by [`save`] (or by hand in the same format).
pub fn load_masks(path: &Path) -> Result<Masks> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| io_err(path, e))?;
    let info = meta.metadata().clone().unwrap_or_default();
    if info.get("format").map(String::as_str) != Some("tessera-masks-v1") {
        return Err(io_err(
            path,
            "not a tessera mask file (metadata `format` must be `tessera-masks-v1`)",
        ));
    }
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| io_err(path, e))?;
    let mut masks = Masks::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::U8 || view.shape().len() != 2 {
            return Err(io_err(
                path,
                format!(
                    "mask `{name}` must be U8 [rows, cols], found {:?} {:?}",
                    view.dtype(),
                    view.shape()
                ),
            ));
        }
        let scheme_text = info.get(&format!("scheme:{name}")).ok_or_else(|| {
            io_err(path, format!("mask `{name}` has no `scheme:{name}` metadata"))
        })?;
        let scheme: Scheme =
            scheme_text.parse().map_err(|e| io_err(path, format!("mask `{name}`: {e}")))?;
        let data = view.data();
        if let Some(i) = data.iter().position(|&b| b > 1) {
            return Err(io_err(
                path,
                format!("mask `{name}` has value {} at {i}; masks hold 0 or 1", data[i]),
            ));
        }
        masks.insert(
            name,
            scheme,
            Mask::from_bools(&data.iter().map(|&b| b == 1).collect::<Vec<_>>()),
        );
    }
    Ok(masks)
}

/// Reads a model directory's card.
pub fn load_card(dir: &Path) -> Result<ModelCard> {
    let p = dir.join("card.json");
    let bytes = std::fs::read(&p).map_err(|e| io_err(&p, e))?;
    serde_json::from_slice(&bytes).map_err(|e| io_err(&p, e))
}

/// Loads a model directory onto `device` and hands the model (with its masks) to `action`.
pub fn load<A: WithLoaded>(dir: &Path, device: &Device, action: A) -> Result<A::Output> {
    load_as(dir, None, device, action)
}

/// [`load`], building `model` instead of the card's architecture: a variant with the same
/// parameters, such as the card's model with `skip_blocks` set (the card handed to `action`
/// then names `model`). Weights that do not fit `model` are an error naming the file.
///
/// `model` may also make convolutions of a dense checkpoint depthwise-separable
/// ([`ZooConfig::with_separable`]): their pairs are not in the file, so they are
/// initialized from the loaded dense weights by network decoupling
/// ([`Classifier::decouple_separable`]); every other tensor must still come from the file.
pub fn load_as<A: WithLoaded>(
    dir: &Path,
    model: Option<&ZooConfig>,
    device: &Device,
    action: A,
) -> Result<A::Output> {
    let mut card = load_card(dir)?;
    let weights = dir.join("model.bpk");
    let mut decouple = 0;
    if let Some(m) = model {
        let added = m.separable().iter().filter(|p| !card.model.separable().contains(p)).count();
        if added > 0 && !card.model.separable().is_empty() {
            return Err(io_err(
                &weights,
                "has separable convolutions already; add separable ones to a dense checkpoint only",
            ));
        }
        decouple = added;
        card.model = m.clone();
    }
    let mask_path = dir.join("masks.safetensors");
    let masks = if mask_path.is_file() { load_masks(&mask_path)? } else { Masks::new() };
    card.model.clone().build(
        device,
        0,
        Loaded { card, masks, weights: &weights, decouple, action },
    )?
}

/// What to do with a loaded model (generic over its type, as [`WithModel`]).
pub trait WithLoaded {
    /// What the action returns.
    type Output;
    /// The action.
    fn run<M: Classifier>(self, model: M, card: ModelCard, masks: Masks) -> Self::Output;
}

struct Loaded<'a, A> {
    card: ModelCard,
    masks: Masks,
    weights: &'a Path,
    /// Separable convolutions the file does not have (initialized by decoupling).
    decouple: usize,
    action: A,
}

impl<A: WithLoaded> WithModel for Loaded<'_, A> {
    type Output = Result<A::Output>;
    fn run<M: Classifier>(self, model: M) -> Self::Output {
        let fail = |e: burn::store::RecordError| io_err(self.weights, format!("{e:?}"));
        let model = if self.decouple == 0 {
            model.try_load_file(self.weights).map_err(fail)?
        } else {
            // Each added pair is two bias-free convolution weights the file lacks; everything
            // else must load from it.
            let record = burn::store::ModuleRecord::load(self.weights).map_err(fail)?;
            let (want, found) = (model.clone().into_record().len(), record.len());
            if want != found + 2 * self.decouple {
                return Err(io_err(
                    self.weights,
                    format!(
                        "{found} tensors, but the model with {} separable convolutions needs {} from a dense checkpoint",
                        self.decouple,
                        want.saturating_sub(2 * self.decouple)
                    ),
                ));
            }
            let model = model.try_load_record(record.allow_partial(true)).map_err(fail)?;
            let (model, errors) = model.decouple_separable()?;
            for (path, error) in errors {
                tracing::debug!(layer = %path, relative_error = error, "decoupled");
            }
            model
        };
        let masks = self.masks;
        // A mask file that does not fit the weights is caught here, not during retraining.
        let sizes: HashMap<String, usize> =
            crate::weights::prunable_weights(&model, self.card.batch_of_one())?
                .into_iter()
                .map(|w| (w.path, w.values.len()))
                .collect();
        for (path, (_, m)) in masks.iter() {
            match sizes.get(path) {
                None => return Err(ModelError::NoSuchWeight { path: path.clone() }),
                Some(&n) if n != m.len() => {
                    return Err(ModelError::Config {
                        field: "masks",
                        reason: format!("`{path}`: mask of {} entries, weight of {n}", m.len()),
                    });
                }
                Some(_) => {}
            }
        }
        Ok(self.action.run(model, self.card, masks))
    }
}
