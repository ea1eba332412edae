//! Sparse training on real (fixture) MNIST through the real training loop: the invariants
//! the issue names, checked after every mask update.
//!
//! * the kept count is exactly the prune-to budget after every prune, and never above the
//!   grow-to budget (MEST EM / EM&S) or the target (SET, RigL, whose count stays constant);
//! * every grown weight starts at exactly zero;
//! * every mask keeps its scheme's structure (unstructured, block 4x1, block-punched,
//!   pattern + connectivity on a ResNet);
//! * the same seed gives the same masks and weights, a resumed run the same as an
//!   uninterrupted one; data removal shrinks the epochs.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow};
use burn::optim::GradientsParams;
use burn::prelude::Device;
use tessera_data::{Dataset, KnownSet, Normalization, Source, Split, load};
use tessera_models::train::{Both, Checkpoints, EpochMetrics, Hooks, NoHooks, TrainConfig, train};
use tessera_models::zoo::{Lenet5Config, ResNetConfig};
use tessera_models::{Backend, Classifier, weights, with_seed};
use tessera_sparsity::Mask;
use tessera_train::{
    Distribution, DropGrowConfig, Forgetting, InitMask, Interval, MestConfig, MestPhase, Method,
    Ranking, Removal, RemovalAmount, RunLength, SparseTrainer, SparseTrainingConfig,
};

fn mnist() -> Result<Dataset> {
    Ok(load(KnownSet::Mnist, Split::Train, &Source::Fixtures, Some(Normalization::mnist()))?)
}

fn cfg(epochs: usize, steps: usize) -> TrainConfig {
    TrainConfig { max_steps_per_epoch: Some(steps), ..TrainConfig::sgd(epochs, 16, 0.05) }
}

fn sparse(
    method: Method,
    scheme: &str,
    layers: &[&str],
    seed: u64,
) -> Result<SparseTrainingConfig> {
    Ok(SparseTrainingConfig {
        method,
        sparsity: 0.9,
        distribution: Distribution::Uniform,
        scheme: scheme.parse()?,
        layers: layers.iter().map(|s| s.to_string()).collect(),
        seed,
    })
}

/// Wraps the trainer and checks every update as it happens.
struct Checked {
    trainer: SparseTrainer,
    prev: Vec<Mask>,
    checked: usize,
    failures: Vec<String>,
}

impl Checked {
    fn new(trainer: SparseTrainer) -> Self {
        let prev = trainer.masks().to_vec();
        Checked { trainer, prev, checked: 0, failures: Vec::new() }
    }

    fn check<M: Classifier>(&mut self, model: &M) -> Result<()> {
        if self.trainer.events().len() == self.checked {
            return Ok(());
        }
        self.checked = self.trainer.events().len();
        let paths: Vec<String> = self.trainer.layers().iter().map(|l| l.path.clone()).collect();
        let values = weights::read_weights(model, &paths)?;
        for ((l, m), prev) in self.trainer.layers().iter().zip(self.trainer.masks()).zip(&self.prev)
        {
            if let Err(e) = l.check_structure(m) {
                self.failures.push(e.to_string());
            }
            let w = &values[&l.path];
            for i in m.iter_ones().filter(|&i| !prev.get(i)) {
                if w[i] != 0.0 {
                    self.failures.push(format!("{}[{i}] grown at {}", l.path, w[i]));
                }
            }
            for (i, x) in w.iter().enumerate() {
                if !m.get(i) && *x != 0.0 {
                    self.failures.push(format!("{}[{i}] pruned but {x}", l.path));
                }
            }
        }
        self.prev = self.trainer.masks().to_vec();
        Ok(())
    }
}

impl<M: Classifier> Hooks<M> for Checked {
    fn on_gradients(
        &mut self,
        model: &M,
        grads: &mut GradientsParams,
        step: usize,
    ) -> tessera_models::Result<()> {
        self.trainer.on_gradients(model, grads, step)
    }
    fn after_step(&mut self, model: M, step: usize) -> tessera_models::Result<M> {
        let model = self.trainer.after_step(model, step)?;
        self.check(&model).map_err(|e| tessera_models::ModelError::Config {
            field: "check",
            reason: e.to_string(),
        })?;
        Ok(model)
    }
    fn on_epoch_end(&mut self, model: M, metrics: &EpochMetrics) -> tessera_models::Result<M> {
        let model = Hooks::<M>::on_epoch_end(&mut self.trainer, model, metrics)?;
        self.check(&model).map_err(|e| tessera_models::ModelError::Config {
            field: "check",
            reason: e.to_string(),
        })?;
        Ok(model)
    }
}

/// The per-layer unit budget at sparsity `s`, summed.
fn budget(t: &SparseTrainer, s: f64) -> Result<usize> {
    let mut n = 0;
    for l in t.layers() {
        n += l.units_at(1.0 - s)? * l.unit_size();
    }
    Ok(n)
}

fn run_checked(
    model_seed: u64,
    sparse_cfg: SparseTrainingConfig,
    train_cfg: &TrainConfig,
    device: &Device,
) -> Result<(Checked, BTreeMap<String, Vec<f32>>)> {
    let data = mnist()?;
    let model = with_seed(device, model_seed, || Lenet5Config::default().init(device))?;
    let (model, trainer) = SparseTrainer::init(
        model,
        [1, 1, 28, 28],
        sparse_cfg,
        RunLength::of(data.len(), train_cfg),
    )?;
    let mut checked = Checked::new(trainer);
    checked.check(&model)?;
    let (model, _) = train(model, &data, None, train_cfg, device, &mut checked, None)?;
    let paths: Vec<String> = checked.trainer.layers().iter().map(|l| l.path.clone()).collect();
    let w = weights::read_weights(&model, &paths)?;
    Ok((checked, w))
}

/// A custom 3-phase MEST schedule over a short run, updates every 2 steps.
fn short_mest(soft: bool) -> Method {
    let phase = |from, prune_to, grow_to| MestPhase { from_fraction: from, prune_to, grow_to };
    Method::Mest(MestConfig {
        phases: if soft {
            vec![phase(0.0, 0.9, 0.85), phase(0.5, 0.9, 0.875), phase(0.75, 0.9, 0.9)]
        } else {
            vec![phase(0.0, 0.92, 0.9), phase(0.5, 0.91, 0.9), phase(0.75, 0.9, 0.9)]
        },
        every: Interval::Steps(2),
        ..MestConfig::soft_memory_bound(0.9)
    })
}

#[test]
fn mest_keeps_budgets_zero_growth_and_structure() -> Result<()> {
    let device = Backend::Flex.train_device(1);
    // Layers every scheme tiles exactly (edge blocks would count at full size in a budget
    // but hold fewer weights).
    let layers = ["conv2.weight", "fc1.weight", "fc2.weight"];
    for (soft, scheme) in
        [(true, "unstructured"), (false, "block:4x1"), (true, "block-punched:4x2")]
    {
        let (c, _) =
            run_checked(1, sparse(short_mest(soft), scheme, &layers, 5)?, &cfg(2, 4), &device)?;
        assert!(c.failures.is_empty(), "{scheme}: {:?}", &c.failures[..c.failures.len().min(5)]);
        let t = &c.trainer;
        // Epoch-0 update plus one every 2 of the 8 steps (the last one, at 100%, is skipped).
        assert_eq!(t.events().len(), 4, "{scheme}");
        let m = match &t.config().method {
            Method::Mest(m) => m.clone(),
            _ => unreachable!(),
        };
        for e in t.events() {
            let p = m.phase_at(e.fraction).ok_or_else(|| anyhow!("no phase"))?;
            assert_eq!(e.live_after_prune, budget(t, p.prune_to)?, "{scheme} {e:?}");
            assert_eq!(e.live_after_grow, budget(t, p.grow_to)?, "{scheme} {e:?}");
            assert_eq!(e.live_after_grow - e.live_after_prune, e.grown);
        }
        assert!(
            t.events().iter().any(|e| e.grown > 0 && e.pruned > 0),
            "{scheme}: nothing mutated"
        );
        if soft {
            assert_eq!(t.peak_live(), budget(t, 0.85)?);
        }
        assert_eq!(t.live(), budget(t, 0.9)?, "{scheme}: the last phase ends at the target");
    }
    Ok(())
}

#[test]
fn set_and_rigl_keep_the_live_count_constant() -> Result<()> {
    let device = Backend::Flex.train_device(2);
    let rigl = DropGrowConfig { every: Interval::Steps(3), ..DropGrowConfig::rigl() };
    let set = DropGrowConfig { every: Interval::Steps(3), ..DropGrowConfig::set() };
    for method in [Method::Rigl(rigl), Method::Set(set)] {
        let name = method.name();
        let (c, _) = run_checked(
            2,
            sparse(method, "unstructured", &["conv*", "fc1.weight"], 9)?,
            &cfg(2, 6),
            &device,
        )?;
        assert!(c.failures.is_empty(), "{name}: {:?}", &c.failures[..c.failures.len().min(5)]);
        let target = budget(&c.trainer, 0.9)?;
        assert!(!c.trainer.events().is_empty(), "{name}");
        for e in c.trainer.events() {
            assert_eq!(e.live_before, target, "{name} {e:?}");
            assert_eq!(e.live_after_grow, target, "{name} {e:?}");
            assert_eq!(e.pruned, e.grown, "{name} {e:?}");
            assert!(e.pruned > 0, "{name} {e:?}");
        }
    }
    Ok(())
}

#[test]
fn same_seed_same_result_and_seed_matters() -> Result<()> {
    let device = Backend::Flex.train_device(3);
    let rigl =
        || Method::Rigl(DropGrowConfig { every: Interval::Steps(2), ..DropGrowConfig::rigl() });
    let a = run_checked(
        3,
        sparse(rigl(), "unstructured", &["conv2.weight"], 11)?,
        &cfg(1, 5),
        &Backend::Flex.train_device(3),
    )?;
    let b = run_checked(
        3,
        sparse(rigl(), "unstructured", &["conv2.weight"], 11)?,
        &cfg(1, 5),
        &Backend::Flex.train_device(3),
    )?;
    assert_eq!(a.0.trainer.masks(), b.0.trainer.masks());
    assert_eq!(a.1, b.1);
    let c = run_checked(
        3,
        sparse(rigl(), "unstructured", &["conv2.weight"], 12)?,
        &cfg(1, 5),
        &device,
    )?;
    assert_ne!(a.0.trainer.masks(), c.0.trainer.masks());
    // SET: same initial mask (magnitude), different update streams by seed.
    let set = || {
        Method::Set(DropGrowConfig {
            init: InitMask::Magnitude,
            every: Interval::Steps(2),
            ..DropGrowConfig::set()
        })
    };
    let runs = [11, 11, 12].map(|seed| {
        run_checked(
            3,
            sparse(set(), "unstructured", &["conv2.weight"], seed).ok()?,
            &cfg(1, 5),
            &device,
        )
        .ok()
    });
    let [Some(x), Some(y), Some(z)] = runs else { return Err(anyhow!("a SET run failed")) };
    assert_eq!(x.0.trainer.masks(), y.0.trainer.masks());
    assert_eq!(x.1, y.1);
    assert_ne!(x.0.trainer.masks(), z.0.trainer.masks(), "the update streams follow the seed");
    Ok(())
}

#[test]
fn static_masks_never_change() -> Result<()> {
    let device = Backend::Flex.train_device(4);
    let (c, w) = run_checked(
        4,
        sparse(Method::Static { init: InitMask::Magnitude }, "block:4x1", &["conv*"], 1)?,
        &cfg(2, 3),
        &device,
    )?;
    assert!(c.trainer.events().is_empty());
    assert_eq!(c.trainer.masks(), &c.prev[..]);
    for (l, m) in c.trainer.layers().iter().zip(c.trainer.masks()) {
        assert!(Mask::support_of(&w[&l.path]).is_subset_of(m));
    }
    Ok(())
}

/// Pattern + connectivity on a narrow ResNet-20's 3x3 block convolutions: every kernel stays
/// empty or one pattern of the library fixed at init, through MEST's updates.
#[test]
fn pattern_masks_stay_library_patterns_on_resnet() -> Result<()> {
    let device = Backend::Flex.train_device(5);
    let data = mnist()?;
    let model = with_seed(&device, 5, || {
        ResNetConfig { depth: 20, in_channels: 1, classes: 10, width: 0.5, ..Default::default() }
            .init(&device)
    })?;
    let train_cfg = cfg(1, 4);
    let (model, trainer) = SparseTrainer::init(
        model,
        [1, 1, 28, 28],
        sparse(short_mest(true), "pattern:8+connectivity", &["blocks.*.conv*.conv.weight"], 6)?,
        RunLength::of(data.len(), &train_cfg),
    )?;
    assert_eq!(trainer.layers().len(), 18);
    assert!(trainer.config().scheme.to_string().contains('@'), "library fixed at init");
    let mut checked = Checked::new(trainer);
    checked.check(&model)?;
    train(model, &data, None, &train_cfg, &device, &mut checked, None)?;
    assert!(
        checked.failures.is_empty(),
        "{:?}",
        &checked.failures[..checked.failures.len().min(5)]
    );
    assert!(checked.trainer.events().len() >= 2);
    Ok(())
}

/// Interrupt after one epoch, resume: the masks, update log and weights equal an
/// uninterrupted run's.
#[test]
fn resumed_run_matches_uninterrupted() -> Result<()> {
    let data = mnist()?;
    // Three epochs, stopped after the first: the update at the end of epoch 1 (and its RNG
    // stream, step count and phase) happens after the resume.
    let train_cfg = cfg(3, 4);
    let mut mest = MestConfig::elastic_mutation(0.9);
    mest.every = Interval::Epochs(1);
    let setup = |device: &Device| -> Result<_> {
        let model = with_seed(device, 7, || Lenet5Config::default().init(device))?;
        Ok(SparseTrainer::init(
            model,
            [1, 1, 28, 28],
            sparse(Method::Mest(mest.clone()), "unstructured", &["conv2.weight", "fc1.weight"], 7)?,
            RunLength::of(data.len(), &train_cfg),
        )?)
    };
    let device = Backend::Flex.train_device(7);
    let (model, mut whole) = setup(&device)?;
    let (model, _) = train(model, &data, None, &train_cfg, &device, &mut whole, None)?;
    let want = weights::read_weights(&model, &["fc1.weight".to_string()])?;

    let dir = tempfile::tempdir()?;
    let device = Backend::Flex.train_device(7);
    let (model, mut first) = setup(&device)?;
    let mut ck = Checkpoints::new(dir.path(), false);
    ck.stop_after_epochs = Some(1);
    train(model, &data, None, &train_cfg, &device, &mut first, Some(&ck))?;
    let device = Backend::Flex.train_device(7);
    let (model, mut resumed) = setup(&device)?;
    let (model, _) = train(
        model,
        &data,
        None,
        &train_cfg,
        &device,
        &mut resumed,
        Some(&Checkpoints::new(dir.path(), true)),
    )?;
    assert_eq!(whole.events().len(), 3, "epoch 0, then the ends of epochs 0 and 1");
    assert_eq!(resumed.masks(), whole.masks());
    assert_eq!(resumed.events(), whole.events());
    assert_eq!(weights::read_weights(&model, &["fc1.weight".to_string()])?, want);
    Ok(())
}

/// Dense training with removal at epoch 1: the second epoch trains on the kept examples only,
/// and the margins the loop hands over agree with its correctness: after one presentation an
/// example is learned (count 0) exactly when its margin is positive.
#[test]
fn forgetting_removal_shrinks_later_epochs() -> Result<()> {
    let data = mnist()?;
    let device = Backend::Flex.train_device(8);
    let train_cfg = TrainConfig::sgd(2, 32, 0.05);
    let n = data.len();
    let mut f = Forgetting::new(
        n,
        Some(Removal {
            epoch: 1,
            amount: RemovalAmount::Fraction { f: 0.5 },
            ranking: Ranking::ForgettingThenMargin,
        }),
    )?;
    // One epoch first, without removal: every example presented once.
    let model = with_seed(&device, 8, || Lenet5Config::default().init(&device))?;
    let mut once = Forgetting::new(n, None)?;
    train(model, &data, None, &TrainConfig::sgd(1, 32, 0.05), &device, &mut once, None)?;
    let (counts, margins) = (once.counts(), once.mean_margins());
    let learned = counts.iter().filter(|&&c| c == 0).count();
    assert!(learned > 0 && learned < n, "{learned} of {n} learned after one epoch");
    for (i, (&c, &m)) in counts.iter().zip(&margins).enumerate() {
        assert!(m == 0.0 || (c == 0) == (m > 0.0), "example {i}: count {c}, margin {m}");
    }
    assert!(margins.iter().filter(|&&m| m == 0.0).count() <= n / 100, "margins of exactly 0");
    // Removing half the learned ones: the margin takes those with the largest margins, which
    // index order does not.
    let half = RemovalAmount::Count { n: learned / 2 };
    let by_margin = once.select_removed(half, Ranking::ForgettingThenMargin);
    assert_ne!(by_margin, once.select_removed(half, Ranking::Forgetting));
    let mut gone = vec![false; n];
    for &i in &by_margin {
        gone[i as usize] = true;
    }
    let (counts, gone, margins) = (&counts, &gone, &margins);
    let learned_margins = |removed: bool| {
        (0..n).filter(move |&i| counts[i] == 0 && gone[i] == removed).map(move |i| margins[i])
    };
    let lowest_removed = learned_margins(true).fold(f64::INFINITY, f64::min);
    let highest_kept = learned_margins(false).fold(f64::NEG_INFINITY, f64::max);
    assert!(lowest_removed >= highest_kept, "{lowest_removed} < {highest_kept}");
    let model = with_seed(&device, 8, || Lenet5Config::default().init(&device))?;
    let (_, history) =
        train(model, &data, None, &train_cfg, &device, &mut Both(NoHooks, &mut f), None)?;
    assert_eq!(history[0].steps, n.div_ceil(32));
    assert_eq!(history[1].steps, (n - n / 2).div_ceil(32));
    let r = f.report().ok_or_else(|| anyhow!("no removal"))?;
    assert_eq!((r.removed, r.kept), (n / 2, n - n / 2));
    assert!(f.presentations().iter().filter(|&&p| p == 2).count() == n - n / 2);
    // Removed first: the learned ones with the largest margins.
    let (removed, kept) = r.mean_margin.ok_or_else(|| anyhow!("no margins"))?;
    assert!(removed > kept, "removed {removed} vs kept {kept}");
    Ok(())
}

/// With no scheduled update inside the later phases (every 100 steps in an 8-step run), the
/// start of each phase still applies its bounds, so the run ends at the target, not above it.
#[test]
fn mest_applies_each_phase_at_its_start() -> Result<()> {
    let device = Backend::Flex.train_device(9);
    let mut method = short_mest(true);
    if let Method::Mest(m) = &mut method {
        m.every = Interval::Steps(100);
    }
    let (c, _) = run_checked(
        9,
        sparse(method, "unstructured", &["conv2.weight", "fc1.weight"], 4)?,
        &cfg(2, 4),
        &device,
    )?;
    let t = &c.trainer;
    let fractions: Vec<f64> = t.events().iter().map(|e| e.fraction).collect();
    // Epoch 0, then the first steps at or after 50% and 75%: steps 4 and 6 of 8.
    assert_eq!(fractions, vec![0.0, 0.5, 0.75]);
    assert_eq!(t.live(), budget(t, 0.9)?);
    assert!(c.failures.is_empty(), "{:?}", c.failures);
    Ok(())
}

/// Records the last gradient and the weights just before each update, to recompute MEST's
/// `|w| + lambda |g|` prune independently.
struct ScoreProbe {
    trainer: SparseTrainer,
    grad: Vec<f32>,
    before: Vec<f32>,
    mask_before: Mask,
    /// (reference kept set, kept set the trainer produced, magnitude-only kept set) per update.
    seen: Vec<(Vec<usize>, Vec<usize>, Vec<usize>)>,
}

const PROBED: &str = "fc1.weight";

/// The `k` live positions with the highest score (ties to the lower index), sorted.
fn top_k_live(score: &[f32], live: &Mask, k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = live.iter_ones().collect();
    idx.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
    let mut top = idx[..k].to_vec();
    top.sort_unstable();
    top
}

impl<M: Classifier> Hooks<M> for ScoreProbe {
    fn on_gradients(
        &mut self,
        model: &M,
        grads: &mut GradientsParams,
        step: usize,
    ) -> tessera_models::Result<()> {
        self.grad = weights::read_gradients(model, grads, &[PROBED.to_string()])?
            .remove(PROBED)
            .unwrap_or_default();
        self.trainer.on_gradients(model, grads, step)
    }
    fn after_step(&mut self, model: M, step: usize) -> tessera_models::Result<M> {
        self.before = weights::read_weights(&model, &[PROBED.to_string()])?
            .remove(PROBED)
            .unwrap_or_default();
        self.mask_before = self.trainer.masks()[0].clone();
        let n = self.trainer.events().len();
        let model = self.trainer.after_step(model, step)?;
        if self.trainer.events().len() > n {
            let e = self.trainer.events().last().cloned().ok_or_else(|| {
                tessera_models::ModelError::Config { field: "probe", reason: "no event".into() }
            })?;
            let m = &self.mask_before;
            let lambda = match &self.trainer.config().method {
                Method::Mest(c) => match c.score {
                    tessera_train::MestScore::MagnitudeGradient { lambda } => lambda,
                    tessera_train::MestScore::Magnitude => 0.0,
                },
                _ => 0.0,
            };
            let masked = |v: &[f32], i: usize| if m.get(i) { v[i].abs() } else { 0.0 };
            let score: Vec<f32> = (0..m.len())
                .map(|i| masked(&self.before, i) + lambda * masked(&self.grad, i))
                .collect();
            let magnitude: Vec<f32> = (0..m.len()).map(|i| masked(&self.before, i)).collect();
            // What the prune kept: the new mask when nothing grew; otherwise its non-zero
            // weights (grown ones, even regrown just-pruned ones, are exactly zero).
            let kept: Vec<usize> = if e.grown == 0 {
                self.trainer.masks()[0].iter_ones().collect()
            } else {
                let after = weights::read_weights(&model, &[PROBED.to_string()])?
                    .remove(PROBED)
                    .unwrap_or_default();
                (0..after.len()).filter(|&i| after[i] != 0.0).collect()
            };
            self.seen.push((
                top_k_live(&score, m, e.live_after_prune),
                kept,
                top_k_live(&magnitude, m, e.live_after_prune),
            ));
        }
        Ok(model)
    }
}

/// The paper's score: the prune keeps the top of |w| + lambda |g| over the live weights, with
/// g the last batch's masked gradient (recomputed here from the same gradient and weights);
/// with a large lambda that differs from the magnitude-only choice.
#[test]
fn mest_gradient_score_prunes_by_weight_plus_gradient() -> Result<()> {
    let data = mnist()?;
    let device = Backend::Flex.train_device(10);
    let model = with_seed(&device, 10, || Lenet5Config::default().init(&device))?;
    let train_cfg = cfg(1, 4);
    let method = Method::Mest(MestConfig {
        every: Interval::Steps(2),
        score: tessera_train::MestScore::MagnitudeGradient { lambda: 100.0 },
        ..MestConfig::elastic_mutation(0.9)
    });
    let (model, trainer) = SparseTrainer::init(
        model,
        [1, 1, 28, 28],
        sparse(method, "unstructured", &[PROBED], 10)?,
        RunLength::of(data.len(), &train_cfg),
    )?;
    let mut probe = ScoreProbe {
        trainer,
        grad: Vec::new(),
        before: Vec::new(),
        mask_before: Mask::zeros(0),
        seen: Vec::new(),
    };
    train(model, &data, None, &train_cfg, &device, &mut probe, None)?;
    // Updates at step 2 (scheduled) and step 3 (the last phase starts at 75%).
    assert_eq!(probe.seen.len(), 2);
    for (i, (reference, kept, _)) in probe.seen.iter().enumerate() {
        let missing = reference.iter().filter(|x| kept.binary_search(x).is_err()).count();
        let extra = kept.iter().filter(|x| reference.binary_search(x).is_err()).count();
        assert!(
            missing == 0 && extra == 0,
            "update {i}: {} kept, {} expected, {missing} missing, {extra} extra",
            kept.len(),
            reference.len()
        );
    }
    let (_, kept, magnitude) = &probe.seen[0];
    assert!(kept != magnitude, "lambda = 100 should change the choice");
    Ok(())
}

/// Bad settings are typed errors that name what was wrong: layer patterns that match nothing,
/// a scheme with no grow unit (naming the layer), MEST bounds that miss the target.
#[test]
fn bad_settings_are_named_errors() -> Result<()> {
    let data = mnist()?;
    let device = Backend::Flex.train_device(11);
    let run = RunLength::of(data.len(), &cfg(1, 2));
    let init = |cfg: SparseTrainingConfig| {
        let model = with_seed(&device, 11, || Lenet5Config::default().init(&device))?;
        SparseTrainer::init(model, [1, 1, 28, 28], cfg, run)
            .map(|_| ())
            .map_err(anyhow::Error::from)
    };
    let static_method = || Method::Static { init: InitMask::Random };
    let e = init(sparse(static_method(), "unstructured", &["nope.*"], 1)?).unwrap_err().to_string();
    assert!(e.contains("layers") && e.contains("nope.*"), "{e}");
    let e = init(sparse(static_method(), "bcr:4x4", &["fc1.weight"], 1)?).unwrap_err().to_string();
    assert!(e.contains("fc1.weight") && e.contains("bcr:4x4"), "{e}");
    let mut wrong = sparse(
        Method::Mest(MestConfig::elastic_mutation(0.9)),
        "unstructured",
        &["fc1.weight"],
        1,
    )?;
    wrong.sparsity = 0.95;
    let e = init(wrong).unwrap_err().to_string();
    assert!(e.contains("phases") && e.contains("target sparsity"), "{e}");
    Ok(())
}
