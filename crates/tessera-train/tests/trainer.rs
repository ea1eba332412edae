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
    Removal, RemovalAmount, RunLength, SparseTrainer, SparseTrainingConfig,
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
        ResNetConfig { depth: 20, in_channels: 1, classes: 10, width: 0.5 }.init(&device)
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
    let train_cfg = cfg(2, 4);
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
    assert_eq!(resumed.masks(), whole.masks());
    assert_eq!(resumed.events(), whole.events());
    assert_eq!(weights::read_weights(&model, &["fc1.weight".to_string()])?, want);
    Ok(())
}

/// Dense training with removal at epoch 1: the second epoch trains on the kept examples only.
#[test]
fn forgetting_removal_shrinks_later_epochs() -> Result<()> {
    let data = mnist()?;
    let device = Backend::Flex.train_device(8);
    let model = with_seed(&device, 8, || Lenet5Config::default().init(&device))?;
    let train_cfg = TrainConfig::sgd(2, 32, 0.05);
    let n = data.len();
    let mut f =
        Forgetting::new(n, Some(Removal { epoch: 1, amount: RemovalAmount::Fraction { f: 0.5 } }))?;
    let (_, history) =
        train(model, &data, None, &train_cfg, &device, &mut Both(NoHooks, &mut f), None)?;
    assert_eq!(history[0].steps, n.div_ceil(32));
    assert_eq!(history[1].steps, (n - n / 2).div_ceil(32));
    let r = f.report().ok_or_else(|| anyhow!("no removal"))?;
    assert_eq!((r.removed, r.kept), (n / 2, n - n / 2));
    assert!(f.presentations().iter().filter(|&&p| p == 2).count() == n - n / 2);
    Ok(())
}
