//! [`SparseTrainer`]: static, SET, RigL and MEST as one [`Hooks`] implementation on
//! tessera-models' training loop.
//!
//! Between mask updates it is masked training (gradients of pruned weights zeroed before the
//! step, the masks applied after it, so pruned weights and their optimizer state never move).
//! At an update it reads the sparse layers' weights, prunes and grows in the scheme's units
//! ([`SparseLayer`]), writes the weights back with every grown weight at exactly zero, and logs
//! a [`MutationEvent`]. Momentum is not reset for grown weights (MEST's code does not either;
//! a position masked for `k` steps has had its momentum multiplied by `0.9^k`). Two known
//! differences from RigL's code: a hook cannot reach the optimizer's slots, so RigL's momentum
//! reset of new connections is not done (a unit dropped and regrown in the same update keeps
//! its momentum), and such a unit restarts at zero where RigL keeps its old value.
//! Every random choice draws from ChaCha8 seeded by the config's seed with one stream per
//! update, so a resumed run (the state is saved with each checkpoint) repeats an
//! uninterrupted one.

use std::collections::BTreeMap;

use burn::optim::GradientsParams;
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tessera_models::train::{EpochMetrics, Hooks, TrainConfig};
use tessera_models::{Classifier, Masks, weights};
use tessera_sparsity::{Mask, PatternLibrary, Scheme, wildcard_match};

use crate::density::{Distribution, layer_densities};
use crate::error::{Result, TrainError};
use crate::method::{Growth, InitMask, Interval, MestScore, Method};
use crate::mutation::SparseLayer;

/// The RNG stream of the initial mask (updates use streams 0, 1, 2, ...).
const INIT_STREAM: u64 = u64::MAX;

/// What to train sparse, how sparse, and how the mask changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SparseTrainingConfig {
    /// The method.
    pub method: Method,
    /// Sparsity over the sparse layers.
    pub sparsity: f64,
    /// How that sparsity is spread over them.
    pub distribution: Distribution,
    /// Every sparse layer's scheme (a pattern scheme without a library gets one extracted
    /// from the initial weights).
    pub scheme: Scheme,
    /// Weight paths trained sparse (wildcards, e.g. `blocks.*.conv*.conv.weight`); the other
    /// conv / linear weights stay dense.
    pub layers: Vec<String>,
    /// Seed of every random choice of the masks.
    pub seed: u64,
}

/// The length of the training run the trainer is scheduled over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunLength {
    /// Steps in a full epoch (the loop's numbering, also after data removal).
    pub steps_per_epoch: usize,
    /// Epochs.
    pub epochs: usize,
}

impl RunLength {
    /// The run `cfg` makes over `train_examples` examples.
    pub fn of(train_examples: usize, cfg: &TrainConfig) -> Self {
        let n = train_examples.div_ceil(cfg.batch_size.max(1));
        RunLength {
            steps_per_epoch: cfg.max_steps_per_epoch.map_or(n, |m| m.min(n)),
            epochs: cfg.epochs,
        }
    }

    /// Total steps.
    pub fn total_steps(&self) -> usize {
        self.steps_per_epoch * self.epochs
    }
}

/// One mask update, summed over the sparse layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MutationEvent {
    /// Update index (0 = MEST's epoch-0 update).
    pub index: u64,
    /// Optimizer steps taken before it.
    pub step: usize,
    /// Training fraction it was scheduled at.
    pub fraction: f64,
    /// Kept weights before it.
    pub live_before: usize,
    /// Kept weights after the prune step.
    pub live_after_prune: usize,
    /// Kept weights after the grow step.
    pub live_after_grow: usize,
    /// Weights removed by the prune step.
    pub pruned: usize,
    /// Weights added by the grow step (at zero).
    pub grown: usize,
}

/// The trainer's saved state (JSON in the checkpoint's `hooks.bin`).
#[derive(Serialize, Deserialize)]
struct SavedState {
    scheme: Scheme,
    masks: Vec<(String, Mask)>,
    taken: usize,
    next_event: u64,
    events: Vec<MutationEvent>,
    peak_live: usize,
    peak_masks: Vec<Mask>,
    phase: Option<usize>,
}

/// Static / SET / RigL / MEST on the training loop.
#[derive(Debug, Clone)]
pub struct SparseTrainer {
    cfg: SparseTrainingConfig,
    run: RunLength,
    layers: Vec<SparseLayer>,
    densities: Vec<f64>,
    masks: Vec<Mask>,
    /// `masks` keyed by weight path, as the loop's mask helpers take them; rebuilt only when
    /// the masks change (every step reads it twice).
    by_path: Masks,
    taken: usize,
    next_event: u64,
    events: Vec<MutationEvent>,
    peak_live: usize,
    peak_masks: Vec<Mask>,
    /// MEST: the phase of the last update (a new phase forces an update at its start).
    phase: Option<usize>,
    last_grads: Option<BTreeMap<String, Vec<f32>>>,
}

impl SparseTrainer {
    /// Sets up sparse training of `model` (inputs of `input` shape): picks the sparse layers,
    /// fixes a pattern library if needed, draws the first masks, runs MEST's epoch-0 update,
    /// and returns the masked model with the trainer to pass to
    /// [`tessera_models::train::train`].
    pub fn init<M: Classifier>(
        model: M,
        input: [usize; 4],
        cfg: SparseTrainingConfig,
        run: RunLength,
    ) -> Result<(M, SparseTrainer)> {
        cfg.method.validate(cfg.sparsity)?;
        if run.total_steps() == 0 {
            return Err(TrainError::config("run length", "training has no steps"));
        }
        let all = weights::prunable_weights(&model, input)?;
        let chosen: Vec<_> = all
            .into_iter()
            .filter(|w| cfg.layers.iter().any(|p| wildcard_match(p, &w.path)))
            .collect();
        if chosen.is_empty() {
            return Err(TrainError::config(
                "layers",
                format!("{:?} matches no conv or linear weight of the model", cfg.layers),
            ));
        }
        let mut cfg = cfg;
        if let Scheme::Pattern(p) = &mut cfg.scheme
            && p.library.is_none()
        {
            let library = PatternLibrary::extract(
                p.k,
                chosen.iter().map(|w| (&w.layer, w.values.as_slice())),
            )?;
            p.library = Some(library);
        }
        let layers = chosen
            .iter()
            .map(|w| SparseLayer::new(&w.path, w.layer.clone(), cfg.scheme.clone()))
            .collect::<Result<Vec<_>>>()?;
        let geometry: Vec<_> = layers.iter().map(|l| l.layer.clone()).collect();
        let densities = layer_densities(&geometry, cfg.sparsity, cfg.distribution)?;
        let init = match &cfg.method {
            Method::Static { init } => *init,
            Method::Set(c) | Method::Rigl(c) => c.init,
            Method::Mest(_) => InitMask::Magnitude,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(INIT_STREAM);
        let mut masks = Vec::with_capacity(layers.len());
        for ((l, w), &d) in layers.iter().zip(&chosen).zip(&densities) {
            let keep = l.units_at(d)?;
            let m = match init {
                InitMask::Magnitude => l.keep_top(&w.values, keep)?,
                InitMask::Random => {
                    let mut m = Mask::zeros(l.len());
                    l.grow_random(&mut m, keep, &mut rng);
                    m
                }
            };
            masks.push(m);
        }
        let mut t = SparseTrainer {
            cfg,
            run,
            layers,
            densities,
            masks,
            by_path: Masks::new(),
            taken: 0,
            next_event: 0,
            events: Vec::new(),
            peak_live: 0,
            peak_masks: Vec::new(),
            phase: None,
            last_grads: None,
        };
        t.peak_live = t.live();
        t.peak_masks = t.masks.clone();
        t.by_path = t.build_by_path();
        let mut model = weights::apply_masks(model, &t.by_path);
        if matches!(t.cfg.method, Method::Mest(_)) {
            model = t.update(model, 0.0)?;
        }
        Ok((model, t))
    }

    /// The config (with the pattern library it fixed, if any).
    pub fn config(&self) -> &SparseTrainingConfig {
        &self.cfg
    }

    /// The sparse layers.
    pub fn layers(&self) -> &[SparseLayer] {
        &self.layers
    }

    /// Target density of each sparse layer.
    pub fn densities(&self) -> &[f64] {
        &self.densities
    }

    /// Current mask of each sparse layer.
    pub fn masks(&self) -> &[Mask] {
        &self.masks
    }

    /// The masks keyed by weight path (for export and masked fine-tuning).
    pub fn model_masks(&self) -> Masks {
        self.by_path.clone()
    }

    fn build_by_path(&self) -> Masks {
        let mut m = Masks::new();
        for (l, mask) in self.layers.iter().zip(&self.masks) {
            m.insert(l.path.clone(), l.scheme.clone(), mask.clone());
        }
        m
    }

    /// Every mask update so far.
    pub fn events(&self) -> &[MutationEvent] {
        &self.events
    }

    /// Kept weights over the sparse layers now.
    pub fn live(&self) -> usize {
        self.masks.iter().map(Mask::count).sum()
    }

    /// The most weights the sparse layers ever kept at once (the soft bound's peak).
    pub fn peak_live(&self) -> usize {
        self.peak_live
    }

    /// The masks when the most weights were kept (memory at the soft bound's peak).
    pub fn peak_masks(&self) -> &[Mask] {
        &self.peak_masks
    }

    /// Weights of the sparse layers (dense count).
    pub fn sparse_weights(&self) -> usize {
        self.layers.iter().map(SparseLayer::len).sum()
    }

    fn paths(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.path.clone()).collect()
    }

    fn interval(&self) -> Option<Interval> {
        match &self.cfg.method {
            Method::Set(c) | Method::Rigl(c) => Some(c.every),
            Method::Mest(c) => Some(c.every),
            Method::Static { .. } => None,
        }
    }

    /// MEST: whether `fraction` lies in a later phase than the last update's, so the new
    /// bounds apply from the phase's start even when no scheduled update falls there (MEST's
    /// decay epochs 90 and 120 are update epochs, so its own schedule never needs this).
    fn enters_new_phase(&self, fraction: f64) -> bool {
        match &self.cfg.method {
            Method::Mest(c) => c.phase_index_at(fraction) > self.phase,
            _ => false,
        }
    }

    fn needs_gradients(&self) -> bool {
        match &self.cfg.method {
            Method::Rigl(c) | Method::Set(c) if c.growth == Growth::Gradient => match c.every {
                Interval::Steps(n) => (self.taken + 1).is_multiple_of(n),
                Interval::Epochs(_) => true,
            },
            Method::Mest(c) => matches!(c.score, MestScore::MagnitudeGradient { .. }),
            _ => false,
        }
    }

    /// Runs one mask update at training fraction `fraction`.
    fn update<M: Classifier>(&mut self, model: M, fraction: f64) -> Result<M> {
        let active = match &self.cfg.method {
            Method::Static { .. } => false,
            Method::Mest(c) => c.phase_at(fraction).is_some(),
            Method::Set(c) | Method::Rigl(c) => fraction < c.end_fraction,
        };
        if !active {
            return Ok(model);
        }
        // Everything is computed first and committed at the end, so a failed update leaves the
        // masks, the weights and the RNG stream position as they were.
        let index = self.next_event;
        let mut rng = ChaCha8Rng::seed_from_u64(self.cfg.seed);
        rng.set_stream(index);
        let mut new_masks = Vec::with_capacity(self.layers.len());
        let mut new_phase = self.phase;
        let paths = self.paths();
        let mut values = weights::read_weights(&model, &paths)?;
        let live_before = self.live();
        let (mut pruned, mut grown, mut after_prune) = (0usize, 0usize, 0usize);
        let target_density = 1.0 - self.cfg.sparsity;
        for (i, l) in self.layers.iter().enumerate() {
            let w =
                values.get_mut(&l.path).ok_or_else(|| TrainError::layer(&l.path, "not read"))?;
            let old = &self.masks[i];
            let mut score: Vec<f32> = w
                .iter()
                .enumerate()
                .map(|(j, &x)| if old.get(j) { x.abs() } else { 0.0 })
                .collect();
            let (keep, grow) = match &self.cfg.method {
                Method::Static { .. } => (l.live_units(old), 0),
                Method::Mest(c) => {
                    let Some(phase) = c.phase_at(fraction) else {
                        return Err(TrainError::config("phases", "no phase at this fraction"));
                    };
                    new_phase = c.phase_index_at(fraction);
                    if let MestScore::MagnitudeGradient { lambda } = c.score
                        && let Some(g) = self.last_grads.as_ref().and_then(|g| g.get(&l.path))
                    {
                        for (j, s) in score.iter_mut().enumerate() {
                            if old.get(j) {
                                *s += lambda * g[j].abs();
                            }
                        }
                    }
                    // Per-layer bounds scale with the layer's density (identical under the
                    // uniform distribution MEST uses).
                    let scale = self.densities[i] / target_density;
                    let keep = l.units_at((1.0 - phase.prune_to) * scale)?;
                    let want = l.units_at((1.0 - phase.grow_to) * scale)?;
                    // Grow from what the prune actually kept (fewer units may have been live).
                    (keep, want.saturating_sub(keep.min(l.live_units(old))))
                }
                Method::Set(c) | Method::Rigl(c) => {
                    let live = l.live_units(old);
                    let drop = (c.fraction_at(fraction) * live as f64).floor() as usize;
                    (live - drop, drop)
                }
            };
            let mut mask = l.keep_top_live(old, &score, keep);
            for (j, x) in w.iter_mut().enumerate() {
                if !mask.get(j) {
                    *x = 0.0;
                }
            }
            pruned += old.count().saturating_sub(old.intersection(&mask)?.count());
            after_prune += mask.count();
            let before_grow = mask.count();
            let growth = match &self.cfg.method {
                Method::Rigl(c) | Method::Set(c) => c.growth,
                _ => Growth::Random,
            };
            match growth {
                Growth::Random => {
                    l.grow_random(&mut mask, grow, &mut rng);
                }
                Growth::Gradient => {
                    let g = self.last_grads.as_ref().and_then(|g| g.get(&l.path)).ok_or_else(|| {
                        TrainError::layer(&l.path, "gradient growth needs the last batch's gradient, and none was recorded")
                    })?;
                    l.grow_by_score(&mut mask, grow, g);
                }
            }
            grown += mask.count() - before_grow;
            new_masks.push(mask);
        }
        let model = weights::set_weights(model, &values)?;
        self.masks = new_masks;
        self.by_path = self.build_by_path();
        self.phase = new_phase;
        self.next_event += 1;
        // The gradient served this update; the next one records its own.
        self.last_grads = None;
        let live = self.live();
        if live > self.peak_live {
            self.peak_live = live;
            self.peak_masks = self.masks.clone();
        }
        let event = MutationEvent {
            index,
            step: self.taken,
            fraction,
            live_before,
            live_after_prune: after_prune,
            live_after_grow: live,
            pruned,
            grown,
        };
        tracing::debug!(?event, "mask update");
        self.events.push(event);
        Ok(weights::apply_masks(model, &self.by_path))
    }
}

impl<M: Classifier> Hooks<M> for SparseTrainer {
    fn on_gradients(
        &mut self,
        model: &M,
        grads: &mut GradientsParams,
        _step: usize,
    ) -> tessera_models::Result<()> {
        if self.needs_gradients() {
            let mut g = weights::read_gradients(model, grads, &self.paths())?;
            if let Method::Mest(_) = self.cfg.method {
                // MEST's score sees only the sparse gradient a sparse trainer has.
                for (l, m) in self.layers.iter().zip(&self.masks) {
                    if let Some(v) = g.get_mut(&l.path) {
                        for (j, x) in v.iter_mut().enumerate() {
                            if !m.get(j) {
                                *x = 0.0;
                            }
                        }
                    }
                }
            }
            self.last_grads = Some(g);
        }
        weights::mask_gradients(model, grads, &self.by_path);
        Ok(())
    }

    fn after_step(&mut self, model: M, step: usize) -> tessera_models::Result<M> {
        self.taken += 1;
        let model = weights::apply_masks(model, &self.by_path);
        let Some(every) = self.interval() else { return Ok(model) };
        let fraction = (step + 1) as f64 / self.run.total_steps().max(1) as f64;
        if fraction >= 1.0 {
            return Ok(model);
        }
        let Interval::Steps(n) = every else { return Ok(model) };
        if self.taken.is_multiple_of(n) || self.enters_new_phase(fraction) {
            return Ok(self.update(model, fraction)?);
        }
        Ok(model)
    }

    fn on_epoch_end(&mut self, model: M, metrics: &EpochMetrics) -> tessera_models::Result<M> {
        let Some(every) = self.interval() else { return Ok(model) };
        let next = metrics.epoch + 1;
        if next >= self.run.epochs {
            return Ok(model);
        }
        let fraction = next as f64 / self.run.epochs as f64;
        // Step-interval runs update (and check phase changes) after steps.
        let Interval::Epochs(n) = every else { return Ok(model) };
        if next.is_multiple_of(n) || self.enters_new_phase(fraction) {
            return Ok(self.update(model, fraction)?);
        }
        Ok(model)
    }

    fn save_state(&self) -> tessera_models::Result<Option<Vec<u8>>> {
        let state = SavedState {
            scheme: self.cfg.scheme.clone(),
            masks: self.layers.iter().map(|l| l.path.clone()).zip(self.masks.clone()).collect(),
            taken: self.taken,
            next_event: self.next_event,
            events: self.events.clone(),
            peak_live: self.peak_live,
            peak_masks: self.peak_masks.clone(),
            phase: self.phase,
        };
        serde_json::to_vec(&state)
            .map(Some)
            .map_err(|e| TrainError::State { reason: format!("cannot serialize: {e}") }.into())
    }

    fn load_state(&mut self, bytes: &[u8]) -> tessera_models::Result<()> {
        let state: SavedState = serde_json::from_slice(bytes).map_err(|e| TrainError::State {
            reason: format!("not a sparse-trainer state: {e}"),
        })?;
        if state.scheme != self.cfg.scheme {
            return Err(TrainError::State {
                reason: format!(
                    "saved with scheme `{}`, this trainer uses `{}`",
                    state.scheme, self.cfg.scheme
                ),
            }
            .into());
        }
        let paths = self.paths();
        let saved: Vec<&String> = state.masks.iter().map(|(p, _)| p).collect();
        if saved.len() != paths.len() || saved.iter().zip(&paths).any(|(a, b)| *a != b) {
            return Err(TrainError::State {
                reason: format!("saved for layers {saved:?}, this trainer has {paths:?}"),
            }
            .into());
        }
        if state.peak_masks.len() != self.layers.len() {
            return Err(
                TrainError::State { reason: "peak masks do not match the layers".into() }.into()
            );
        }
        for ((l, (_, saved)), peak) in self.layers.iter().zip(&state.masks).zip(&state.peak_masks) {
            l.check_structure(saved)?;
            l.check_structure(peak)?;
        }
        for (m, (_, saved)) in self.masks.iter_mut().zip(state.masks) {
            *m = saved;
        }
        self.by_path = self.build_by_path();
        self.taken = state.taken;
        self.next_event = state.next_event;
        self.events = state.events;
        self.peak_live = state.peak_live;
        self.peak_masks = state.peak_masks;
        self.phase = state.phase;
        Ok(())
    }
}
