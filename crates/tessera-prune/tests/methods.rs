//! The pruning methods on real data (MNIST / Fashion-MNIST fixtures), small and fast: plans,
//! penalty gradients against finite differences, gradients actually changed by the hooks,
//! ADMM residuals falling, masks with the scheme's structure, resume, distillation.

use std::collections::BTreeMap;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::prelude::*;
use tessera_data::{Dataset, KnownSet, Normalization, Source, Split, load};
use tessera_models::train::{
    Checkpoints, Hooks, NoHooks, OptimizerConfig, TrainConfig, batch_tensors, train,
};
use tessera_models::weights::{self, read_gradients, read_weights};
use tessera_models::zoo::{Lenet5, Lenet5Config, ResNetConfig};
use tessera_models::{Backend, Classifier, with_seed};
use tessera_prune::admm::{Admm, AdmmConfig};
use tessera_prune::distill::kd_loss;
use tessera_prune::lasso::{GroupLassoConfig, ReweightedGroupLasso};
use tessera_prune::magnitude::{GradualConfig, GradualMagnitude};
use tessera_prune::{Method, PruneConfig, PrunePlan, prune};
use tessera_sparsity::{Scheme, SparsityConfig, Target};

fn mnist() -> (Dataset, Dataset) {
    let n = Some(Normalization::mnist());
    (
        load(KnownSet::Mnist, Split::Train, &Source::Fixtures, n.clone()).unwrap(),
        load(KnownSet::Mnist, Split::Test, &Source::Fixtures, n).unwrap(),
    )
}

fn config(json: &str) -> SparsityConfig {
    serde_json::from_str(json).unwrap()
}

fn steps(epochs: usize, steps: usize) -> TrainConfig {
    TrainConfig { max_steps_per_epoch: Some(steps), seed: 1, ..TrainConfig::sgd(epochs, 32, 0.05) }
}

/// Adam at 2e-3: a few dozen steps teach LeNet-5 the fixture.
fn adam_steps(epochs: usize, steps: usize) -> TrainConfig {
    TrainConfig {
        optimizer: OptimizerConfig::Adam { lr: 2e-3, weight_decay: 0.0 },
        ..self::steps(epochs, steps)
    }
}

/// LeNet-5 after one short epoch on the fixture (weights with some structure).
fn trained_lenet(device: &Device) -> Lenet5 {
    let (tr, _) = mnist();
    let m = with_seed(device, 2, || Lenet5Config::default().init(device)).unwrap();
    train(m, &tr, None, &adam_steps(1, 30), device, &mut NoHooks, None).unwrap().0
}

const UNSTRUCTURED_8X: &str =
    r#"{"rules": [], "default": {"scheme": "unstructured", "target": "8x"}}"#;

#[test]
fn plans_skip_dense_layers_and_name_bad_ones() {
    let device = Backend::Flex.device();
    let m = with_seed(&device, 1, || Lenet5Config::default().init(&device)).unwrap();
    let w = weights::prunable_weights(&m, [1, 1, 28, 28]).unwrap();
    let plan = PrunePlan::resolve(&config(r#"{"rules": [{"layers": "conv1*", "scheme": "unstructured", "target": "0"},
        {"layers": "fc*", "scheme": "block:4x4", "target": "4x", "pad": true}], "default": {"scheme": "filter", "target": "2x"}}"#), &w).unwrap();
    assert_eq!(plan.paths(), ["conv2.weight", "fc1.weight", "fc2.weight", "fc3.weight"]);
    assert_eq!(plan.layers[0].scheme, Scheme::Filter);
    let err = PrunePlan::resolve(
        &config(
            r#"{"rules": [], "default": {"scheme": "pattern:8+connectivity", "target": "4x"}}"#,
        ),
        &w,
    )
    .unwrap_err();
    assert!(err.to_string().contains("conv1.weight"), "5x5 kernels take no 3x3 patterns: {err}");
}

#[test]
fn pattern_plans_share_one_library_and_split_into_two_admm_sets() {
    let device = Backend::Flex.device();
    let m = with_seed(&device, 1, || {
        ResNetConfig { depth: 8, in_channels: 1, classes: 10, width: 0.25, ..Default::default() }
            .init(&device)
    })
    .unwrap();
    let w = weights::prunable_weights(&m, [1, 1, 28, 28]).unwrap();
    let plan = PrunePlan::resolve(&config(r#"{"rules": [{"layers": "*conv*.conv.weight", "scheme": "pattern:8+connectivity", "target": "8x"}],
        "default": {"scheme": "unstructured", "target": "0"}}"#), &w).unwrap();
    assert!(plan.layers.len() >= 3);
    let libs: Vec<String> = plan.layers.iter().map(|l| l.scheme.to_string()).collect();
    assert!(libs[0].contains('@'), "library fixed in the scheme: {}", libs[0]);
    assert!(libs.iter().all(|s| s == &libs[0]), "one library for all: {libs:?}");
    let cs = plan.layers[0].constraints();
    assert_eq!(cs.len(), 2);
    assert!(matches!(cs[0].scheme, Scheme::Pattern(ref p) if !p.connectivity));
    assert_eq!(cs[1].scheme, Scheme::Connectivity);
    assert!((1.0 / cs[1].target.density() - 8.0 / 2.25).abs() < 1e-9);
    // The two sets intersect to a mask of the combined scheme's structure at the target.
    let weights = read_weights(&m, &plan.paths()).unwrap();
    let masks = plan.masks(&weights).unwrap();
    for l in &plan.layers {
        let (_, mask) = masks.get(&l.path).unwrap();
        let kept_kernels =
            (0..mask.len() / 9).filter(|k| (0..9).any(|t| mask.get(k * 9 + t))).count();
        for k in 0..mask.len() / 9 {
            let n = (0..9).filter(|t| mask.get(k * 9 + t)).count();
            assert!(n == 0 || n == 4, "{}: kernel {k} keeps {n}", l.path);
        }
        assert!(kept_kernels * 4 <= mask.len() / 8, "{}", l.path);
    }
}

/// Gradients of the cross-entropy on one fixture batch, with `hook` applied (or not).
fn gradients_with<M: Classifier>(
    model: &M,
    hook: Option<&mut dyn Hooks<M>>,
    paths: &[String],
    device: &Device,
) -> BTreeMap<String, Vec<f32>> {
    let (tr, _) = mnist();
    let sub = tr.all().split_at(16).unwrap().0;
    let batch = sub.batches(16, false).unwrap().next().unwrap();
    let (x, y) = batch_tensors(&batch, device);
    let loss = CrossEntropyLossConfig::new().init(device).forward(model.forward(x), y);
    let mut grads = GradientsParams::from_grads(loss.backward(), model);
    if let Some(h) = hook {
        h.on_gradients(model, &mut grads, 0).unwrap();
    }
    read_gradients(model, &mut grads, paths).unwrap()
}

/// Central finite differences of `penalty` at `w` along a few coordinates vs `grad`.
fn check_fd(
    penalty: impl Fn(&BTreeMap<String, Vec<f32>>) -> f64,
    w: &BTreeMap<String, Vec<f32>>,
    grad: &BTreeMap<String, Vec<f32>>,
) {
    for (path, g) in grad {
        let top =
            g.iter().enumerate().fold(0, |b, (i, v)| if v.abs() > g[b].abs() { i } else { b });
        for i in [top, g.len() / 2, g.len() - 1] {
            let h = 1e-3f32;
            let at = |d: f32| {
                let mut w2 = w.clone();
                w2.get_mut(path).unwrap()[i] += d;
                penalty(&w2)
            };
            let fd = (at(h) - at(-h)) / (2.0 * f64::from(h));
            let an = f64::from(g[i]);
            assert!(
                (fd - an).abs() <= 1e-4 * (1.0 + an.abs()) + 0.02 * an.abs(),
                "{path}[{i}]: finite difference {fd}, gradient {an}"
            );
        }
        assert!(g[top] != 0.0, "{path}: zero penalty gradient");
    }
}

#[test]
fn admm_penalty_gradient_is_exact_and_reaches_the_weights() {
    let device = Backend::Flex.train_device(3);
    let model = trained_lenet(&device);
    let w = weights::prunable_weights(&model, [1, 1, 28, 28]).unwrap();
    let plan = PrunePlan::resolve(&config(UNSTRUCTURED_8X), &w).unwrap();
    let paths = plan.paths();
    let mut admm =
        Admm::new(&model, plan, AdmmConfig { rho: 0.1, ..AdmmConfig::default() }).unwrap();
    let weights = read_weights(&model, &paths).unwrap();
    // After one update U != 0, so the gradient is not just rho (W - Z).
    admm.update(&weights, Some(0)).unwrap();
    let g = admm.penalty_gradient(&weights).unwrap();
    check_fd(|w| admm.penalty(w), &weights, &g);
    let plain = gradients_with(&model, None, &paths, &device);
    let hooked = gradients_with(&model, Some(&mut admm), &paths, &device);
    for p in &paths {
        for i in 0..g[p].len() {
            let d = hooked[p][i] - plain[p][i];
            assert!(
                (d - g[p][i]).abs() <= 1e-5 * (1.0 + g[p][i].abs()),
                "{p}[{i}]: gradient changed by {d}, penalty gradient {}",
                g[p][i]
            );
        }
    }
}

/// `free_support` (selective weight decay with ADMM's dual): after an update, the W-step's
/// penalty gradient is plain ADMM's on the coordinates the Z-step zeroed and 0 on the kept
/// ones, where plain ADMM pulls every weight back to its value at the update.
#[test]
fn admm_free_support_drops_the_pull_on_kept_weights_only() {
    let device = Backend::Flex.train_device(3);
    let model = trained_lenet(&device);
    let w = weights::prunable_weights(&model, [1, 1, 28, 28]).unwrap();
    let plan = PrunePlan::resolve(&config(UNSTRUCTURED_8X), &w).unwrap();
    let paths = plan.paths();
    let cfg = AdmmConfig { rho: 0.1, ..AdmmConfig::default() };
    let mut plain = Admm::new(&model, plan.clone(), cfg.clone()).unwrap();
    let mut free =
        Admm::new(&model, plan.clone(), AdmmConfig { free_support: true, ..cfg }).unwrap();
    let weights = read_weights(&model, &paths).unwrap();
    plain.update(&weights, Some(0)).unwrap();
    free.update(&weights, Some(0)).unwrap();
    // The W-step then moves every weight, the kept ones too.
    let moved: BTreeMap<String, Vec<f32>> = weights
        .iter()
        .map(|(p, v)| {
            let v = v.iter().enumerate().map(|(i, x)| x + 0.01 * ((i % 7) as f32 - 3.0));
            (p.clone(), v.collect())
        })
        .collect();
    let gp = plain.penalty_gradient(&moved).unwrap();
    let gf = free.penalty_gradient(&moved).unwrap();
    check_fd(|w| free.penalty(w), &moved, &gf);
    for l in &plan.layers {
        // U starts at 0, so the first Z is the projection of W itself.
        let z = l.constraints()[0].project(&l.layer, &weights[&l.path]).unwrap();
        let (gp, gf) = (&gp[&l.path], &gf[&l.path]);
        let (mut kept, mut anchored) = (0, 0);
        for i in 0..z.len() {
            if z[i] != 0.0 {
                kept += 1;
                anchored += usize::from(gp[i] != 0.0);
                assert_eq!(gf[i], 0.0, "{}[{i}]: kept, but pulled", l.path);
            } else {
                assert_eq!(gf[i], gp[i], "{}[{i}]: zeroed", l.path);
            }
        }
        assert!(kept > 0 && kept < z.len(), "{}: kept {kept} of {}", l.path, z.len());
        assert!(anchored > kept / 2, "{}: plain ADMM anchors {anchored} of {kept}", l.path);
    }
}

#[test]
fn admm_rho_growth_keeps_the_unscaled_dual() {
    // Boyd et al. §3.4.1: with the scaled dual U = y / rho, growing rho must shrink U so
    // that y is unchanged. After one update from U = 0 at weights W with Z = proj(W):
    // y = rho0 (W - Z), and the gradient at W under rho1 is y + rho1 (W - Z). With a dual
    // step gamma (Fortin-Glowinski), y = gamma rho0 (W - Z).
    let device = Backend::Flex.train_device(3);
    let model = trained_lenet(&device);
    let w = weights::prunable_weights(&model, [1, 1, 28, 28]).unwrap();
    let plan = PrunePlan::resolve(&config(UNSTRUCTURED_8X), &w).unwrap();
    let paths = plan.paths();
    let cfg = AdmmConfig {
        rho: 0.1,
        rho_growth: 2.0,
        rho_max: 10.0,
        update_every: 1,
        update_every_steps: None,
        hard_prune_at: None,
        progressive: false,
        couple_batch_norm: false,
        free_support: false,
        dual_step: 1.0,
    };
    let weights = read_weights(&model, &paths).unwrap();
    for gamma in [1.0, 0.25, 1.5] {
        let mut admm =
            Admm::new(&model, plan.clone(), AdmmConfig { dual_step: gamma, ..cfg.clone() })
                .unwrap();
        admm.update(&weights, Some(0)).unwrap();
        assert!((admm.rho() - 0.2).abs() < 1e-12);
        let g = admm.penalty_gradient(&weights).unwrap();
        for l in &plan.layers {
            let wl = &weights[&l.path];
            let z = l.constraints()[0].project(&l.layer, wl).unwrap();
            for i in 0..wl.len() {
                let want = (0.2 + 0.1 * gamma as f32) * (wl[i] - z[i]);
                let got = g[&l.path][i];
                assert!((got - want).abs() <= 1e-6 * (1.0 + want.abs()), "{}[{i}]", l.path);
            }
        }
    }
}

#[test]
fn group_lasso_penalty_gradient_is_exact_and_reaches_the_weights() {
    let device = Backend::Flex.train_device(4);
    let model = trained_lenet(&device);
    let w = weights::prunable_weights(&model, [1, 1, 28, 28]).unwrap();
    let plan = PrunePlan::resolve(
        &config(
            r#"{"rules": [{"layers": "conv*", "scheme": "filter", "target": "2x"}],
        "default": {"scheme": "block:4x4", "target": "4x", "pad": true}}"#,
        ),
        &w,
    )
    .unwrap();
    let paths = plan.paths();
    let mut lasso = ReweightedGroupLasso::new(
        &model,
        plan,
        GroupLassoConfig { lambda: 1e-3, eps: 1e-3, reweight_every: 1 },
    )
    .unwrap();
    let weights = read_weights(&model, &paths).unwrap();
    let g = lasso.penalty_gradient(&weights).unwrap();
    check_fd(|w| lasso.penalty(w).unwrap(), &weights, &g);
    let plain = gradients_with(&model, None, &paths, &device);
    let hooked = gradients_with(&model, Some(&mut lasso), &paths, &device);
    let mut changed = 0;
    for p in &paths {
        for i in 0..g[p].len() {
            let d = hooked[p][i] - plain[p][i];
            assert!((d - g[p][i]).abs() <= 1e-5 * (1.0 + g[p][i].abs()), "{p}[{i}]");
            changed += usize::from(d != 0.0);
        }
    }
    assert!(changed > 1000, "the penalty must move the gradients; {changed} entries changed");
}

/// Four epochs of 24 steps with ADMM updates every epoch (rho 0.5 growing 1.5x, cap 5).
fn admm_run(hard_prune_at: Option<f64>) -> (TrainConfig, AdmmConfig) {
    (
        TrainConfig { max_steps_per_epoch: Some(24), seed: 2, ..TrainConfig::sgd(4, 32, 0.02) },
        AdmmConfig {
            rho: 0.5,
            rho_growth: 1.5,
            rho_max: 5.0,
            update_every: 1,
            update_every_steps: None,
            hard_prune_at,
            progressive: false,
            couple_batch_norm: false,
            free_support: false,
            dual_step: 1.0,
        },
    )
}

#[test]
fn admm_residuals_fall_and_resume_exactly() {
    let (tr, _) = mnist();
    let device = Backend::Flex.train_device(5);
    let model = trained_lenet(&device);
    let w = weights::prunable_weights(&model, [1, 1, 28, 28]).unwrap();
    let plan = PrunePlan::resolve(&config(UNSTRUCTURED_8X), &w).unwrap();
    let (cfg, admm_cfg) = admm_run(None);
    let mut straight = Admm::new(&model, plan.clone(), admm_cfg.clone()).unwrap();
    let (m1, _) = train(model.clone(), &tr, None, &cfg, &device, &mut straight, None).unwrap();
    let log = straight.log();
    assert_eq!(log.len(), 5, "initialization + one update per epoch");
    let (first, last) = (log[0].max_relative(), log[4].max_relative());
    assert!(last < 0.5 * first, "primal residual must fall: {first} -> {last}");
    assert!(log.windows(2).all(|w| w[1].rho >= w[0].rho));
    // Interrupted after two epochs, resumed: the same weights and the same log.
    let dir = tempfile::tempdir().unwrap();
    let mut a = Admm::new(&model, plan.clone(), admm_cfg.clone()).unwrap();
    let stop = Checkpoints { stop_after_epochs: Some(2), ..Checkpoints::new(dir.path(), true) };
    train(model.clone(), &tr, None, &cfg, &device, &mut a, Some(&stop)).unwrap();
    let mut b = Admm::new(&model, plan, admm_cfg).unwrap();
    let (m2, _) =
        train(model, &tr, None, &cfg, &device, &mut b, Some(&Checkpoints::new(dir.path(), true)))
            .unwrap();
    assert_eq!(b.log(), straight.log());
    let paths: Vec<String> = b.plan().paths();
    assert_eq!(read_weights(&m1, &paths).unwrap(), read_weights(&m2, &paths).unwrap());
}

#[test]
fn admm_hard_prunes_inside_the_phase_and_resumes_exactly() {
    let (tr, _) = mnist();
    let device = Backend::Flex.train_device(5);
    let model = trained_lenet(&device);
    let w = weights::prunable_weights(&model, [1, 1, 28, 28]).unwrap();
    let plan = PrunePlan::resolve(&config(UNSTRUCTURED_8X), &w).unwrap();
    let paths = plan.paths();
    let (cfg, admm_cfg) = admm_run(Some(0.5));
    let fresh = || Admm::new(&model, plan.clone(), admm_cfg.clone()).unwrap().with_phase_steps(96);
    let mut straight = fresh();
    let (m1, _) = train(model.clone(), &tr, None, &cfg, &device, &mut straight, None).unwrap();
    // Half of 4 x 24 steps: after step 47, the end of epoch 1, whose Z/U update is skipped.
    let (step, masks) = straight.hard_pruned().expect("hard-pruned inside the phase");
    assert_eq!(step, 47);
    assert_eq!(straight.log().len(), 2, "initialization + the update after epoch 0 only");
    let w1 = read_weights(&m1, &paths).unwrap();
    for l in &plan.layers {
        let (_, mask) = masks.get(&l.path).unwrap();
        let kept = mask.iter_ones().count();
        assert_eq!(kept, l.target.budget(mask.len()), "{}: the plan's density", l.path);
        // Two more epochs of training moved the kept weights and none of the pruned ones.
        let values = &w1[&l.path];
        assert!(values.iter().enumerate().all(|(i, &v)| mask.get(i) || v == 0.0), "{}", l.path);
        assert!(mask.iter_ones().filter(|&i| values[i] != 0.0).count() > kept / 2, "{}", l.path);
    }
    // Interrupted before and after the hard pruning, resumed: the same weights, log, masks.
    for stop_after in [1, 3] {
        let dir = tempfile::tempdir().unwrap();
        let stop = Checkpoints {
            stop_after_epochs: Some(stop_after),
            ..Checkpoints::new(dir.path(), true)
        };
        train(model.clone(), &tr, None, &cfg, &device, &mut fresh(), Some(&stop)).unwrap();
        let mut b = fresh();
        let resume = Checkpoints::new(dir.path(), true);
        let (m2, _) =
            train(model.clone(), &tr, None, &cfg, &device, &mut b, Some(&resume)).unwrap();
        assert_eq!(b.log(), straight.log(), "stopped after {stop_after}");
        assert_eq!(b.hard_pruned().map(|(s, m)| (s, m.clone())), Some((step, masks.clone())));
        assert_eq!(read_weights(&m2, &paths).unwrap(), w1, "stopped after {stop_after}");
    }
}

#[test]
fn gradual_schedule_is_cubic() {
    let plan = PrunePlan::default();
    let g = GradualMagnitude::new(
        plan,
        GradualConfig { initial_fraction: 0.0, start_step: 10, end_step: 110, every: 10 },
    )
    .unwrap();
    assert_eq!(g.fraction_at(0), 0.0);
    assert_eq!(g.fraction_at(10), 0.0);
    assert!((g.fraction_at(60) - 0.875).abs() < 1e-12, "1 - 0.5^3");
    assert_eq!(g.fraction_at(110), 1.0);
    assert_eq!(g.fraction_at(500), 1.0);
}

/// Every 4x4 block of a `rows x cols` mask is all kept or all pruned (zero-padded edges).
fn assert_blocks(mask: &tessera_sparsity::Mask, rows: usize, cols: usize, what: &str) {
    for br in (0..rows).step_by(4) {
        for bc in (0..cols).step_by(4) {
            let cells: Vec<bool> = (br..(br + 4).min(rows))
                .flat_map(|r| (bc..(bc + 4).min(cols)).map(move |c| (r, c)))
                .map(|(r, c)| mask.get(r * cols + c))
                .collect();
            assert!(
                cells.iter().all(|&k| k) || cells.iter().all(|&k| !k),
                "{what}: block ({br}, {bc}) is mixed"
            );
        }
    }
}

#[test]
fn every_method_prunes_to_the_scheme_and_keeps_pruned_weights_zero() {
    let (tr, te) = mnist();
    let te = te.all().split_at(200).unwrap().0.to_dataset("mnist-test-200");
    let sparsity = config(
        r#"{"rules": [{"layers": "conv*", "scheme": "filter", "target": "2x"}],
        "default": {"scheme": "block:4x4", "target": "4x", "pad": true}}"#,
    );
    let methods = [
        Method::OneShot,
        Method::Iterative { rounds: 2 },
        Method::Gradual { initial_fraction: 0.0, end_at: 0.75, every: 2 },
        Method::Admm(AdmmConfig { rho: 0.05, ..AdmmConfig::default() }),
        Method::Admm(AdmmConfig { rho: 0.05, hard_prune_at: Some(0.5), ..AdmmConfig::default() }),
        Method::GroupLasso(GroupLassoConfig { lambda: 1e-4, ..GroupLassoConfig::default() }),
    ];
    for method in methods {
        let device = Backend::Flex.train_device(6);
        let model = trained_lenet(&device);
        let cfg = PruneConfig {
            sparsity: sparsity.clone(),
            method: method.clone(),
            train: steps(2, 6),
            retrain: adam_steps(1, 30),
            distill: Some(Default::default()),
            distill_phase: false,
            recalibrate: None,
        };
        let out = prune(model, &cfg, &tr, Some(&te), &device, None).unwrap();
        let name = method.name();
        let (_, acc) = out.final_eval.unwrap();
        assert!(acc > 0.3, "{name}: top-1 {acc} after pruning and retraining");
        for w in weights::prunable_weights(&out.model, [1, 1, 28, 28]).unwrap() {
            let Some((scheme, mask)) = out.masks.get(&w.path) else { continue };
            assert!(
                w.values.iter().enumerate().all(|(i, &v)| mask.get(i) || v == 0.0),
                "{name}: {} pruned weight non-zero",
                w.path
            );
            let (rows, cols) = (w.layer.geometry.rows(), w.layer.geometry.cols());
            match scheme {
                Scheme::Filter => {
                    assert!(
                        (0..rows).all(|r| (0..cols).all(|c| mask.get(r * cols + c))
                            || (0..cols).all(|c| !mask.get(r * cols + c))),
                        "{name}: {} rows mixed",
                        w.path
                    );
                    assert_eq!(mask.count(), rows / 2 * cols, "{name}: {}", w.path);
                }
                _ => {
                    assert_blocks(mask, rows, cols, &format!("{name}: {}", w.path));
                    // The budget counts padded blocks: at most a quarter of them (rounded up) kept.
                    let blocks = rows.div_ceil(4) * cols.div_ceil(4);
                    let kept = (0..rows)
                        .step_by(4)
                        .flat_map(|br| (0..cols).step_by(4).map(move |bc| (br, bc)))
                        .filter(|&(br, bc)| mask.get(br * cols + bc))
                        .count();
                    assert!(
                        kept * 4 <= blocks + 3,
                        "{name}: {} keeps {kept} of {blocks} blocks",
                        w.path
                    );
                }
            }
        }
        let graph = out.model.export([1, 1, 28, 28], &out.masks).unwrap();
        assert!(graph.params["fc1.weight"].sparsity.is_some(), "{name}: masks travel into the IR");
        match method {
            Method::Admm(_) => assert!(!out.admm_log.is_empty()),
            Method::GroupLasso(_) => assert!(!out.lasso_log.is_empty()),
            Method::Gradual { .. } => {
                assert!(out.gradual_log.last().is_some_and(|u| u.1 == 1.0), "{:?}", out.gradual_log)
            }
            _ => {}
        }
    }
}

#[test]
fn a_finished_pipeline_resumes_without_retraining() {
    let (tr, te) = mnist();
    let te = te.all().split_at(100).unwrap().0.to_dataset("t");
    let dir = tempfile::tempdir().unwrap();
    let cfg = PruneConfig {
        sparsity: config(UNSTRUCTURED_8X),
        method: Method::Admm(AdmmConfig::default()),
        train: steps(2, 4),
        retrain: steps(1, 4),
        distill: None,
        distill_phase: false,
        recalibrate: None,
    };
    let device = Backend::Flex.train_device(8);
    let ck = Checkpoints::new(dir.path(), true);
    let a = prune(trained_lenet(&device), &cfg, &tr, Some(&te), &device, Some(&ck)).unwrap();
    let b = prune(trained_lenet(&device), &cfg, &tr, Some(&te), &device, Some(&ck)).unwrap();
    assert_eq!(a.masks, b.masks);
    assert_eq!(a.final_eval, b.final_eval);
    assert_eq!(a.admm_log, b.admm_log);
    assert!(
        dir.path().join("admm/state.json").is_file()
            && dir.path().join("retrain/state.json").is_file()
    );
}

#[test]
fn distilling_in_the_phase_changes_it_and_needs_a_teacher() {
    let (tr, _) = mnist();
    let device = Backend::Flex.train_device(8);
    let cfg = PruneConfig {
        sparsity: config(UNSTRUCTURED_8X),
        method: Method::Admm(AdmmConfig { rho: 0.05, ..AdmmConfig::default() }),
        train: steps(1, 4),
        retrain: steps(0, 4),
        distill: Some(Default::default()),
        distill_phase: false,
        recalibrate: None,
    };
    let run = |cfg: &PruneConfig| prune(trained_lenet(&device), cfg, &tr, None, &device, None);
    let weights_of = |cfg: &PruneConfig| {
        let out = run(cfg).unwrap();
        read_weights(&out.model, &out.plan.paths()).unwrap()
    };
    // No retraining: the distillation weight only reaches the model through the phase.
    let plain = weights_of(&cfg);
    assert_eq!(plain, weights_of(&PruneConfig { distill: None, ..cfg.clone() }));
    let distilled = weights_of(&PruneConfig { distill_phase: true, ..cfg.clone() });
    assert_ne!(plain, distilled, "the teacher must reach the phase's gradients");
    let err = run(&PruneConfig { distill: None, distill_phase: true, ..cfg }).unwrap_err();
    assert!(err.to_string().contains("distill_phase"), "{err}");
}

#[test]
fn polarization_with_pruning_gives_sign_consistent_fragments() {
    let (tr, _) = mnist();
    let device = Backend::Flex.train_device(9);
    let model = trained_lenet(&device);
    let cfg = PruneConfig {
        sparsity: config(
            r#"{"rules": [{"layers": "fc*", "scheme": "polarized:4(unstructured)", "target": "2x"}], "default": {"scheme": "unstructured", "target": "0"}}"#,
        ),
        method: Method::Admm(AdmmConfig { rho: 0.05, ..AdmmConfig::default() }),
        train: steps(2, 6),
        retrain: steps(1, 6),
        distill: None,
        distill_phase: false,
        recalibrate: None,
    };
    let out = prune(model, &cfg, &tr, None, &device, None).unwrap();
    assert_eq!(out.plan.layers[0].constraints().len(), 2);
    for w in weights::prunable_weights(&out.model, [1, 1, 28, 28])
        .unwrap()
        .iter()
        .filter(|w| w.path.starts_with("fc"))
    {
        let (rows, cols) = (w.layer.geometry.rows(), w.layer.geometry.cols());
        // Fragments: 4 consecutive GEMM columns of one row (inputs on one crossbar column),
        // after masked retraining too.
        for r in 0..rows {
            for c0 in (0..cols).step_by(4) {
                let vals: Vec<f32> = (c0..(c0 + 4).min(cols))
                    .map(|c| w.values[r * cols + c])
                    .filter(|&v| v != 0.0)
                    .collect();
                assert!(
                    vals.iter().all(|&v| v > 0.0) || vals.iter().all(|&v| v < 0.0),
                    "{}: fragment ({r}, {c0}) mixes signs: {vals:?}",
                    w.path
                );
            }
        }
        let (_, mask) = out.masks.get(&w.path).unwrap();
        assert!(mask.density() <= 0.5 + 1e-9, "{}", w.path);
    }
}

#[test]
fn kd_loss_matches_the_definition() {
    let device = Backend::Flex.device();
    let s = [[1.0f32, 2.0, 0.5], [0.0, -1.0, 3.0]];
    let t = [[0.5f32, 2.5, 0.0], [1.0, -2.0, 2.0]];
    let temp = 2.0f32;
    let st = Tensor::<2>::from_data(TensorData::new(s.concat(), [2, 3]), &device);
    let tt = Tensor::<2>::from_data(TensorData::new(t.concat(), [2, 3]), &device);
    let got: Vec<f32> = kd_loss(st.clone(), tt, temp).into_data().try_to_vec().unwrap();
    let softmax = |v: &[f32]| {
        let e: Vec<f64> = v.iter().map(|&x| (f64::from(x) / f64::from(temp)).exp()).collect();
        let z: f64 = e.iter().sum();
        e.into_iter().map(|x| x / z).collect::<Vec<f64>>()
    };
    let mut kl = 0.0;
    for (a, b) in s.iter().zip(&t) {
        let (ps, pt) = (softmax(a), softmax(b));
        kl += pt.iter().zip(&ps).map(|(p, q)| p * (p / q).ln()).sum::<f64>();
    }
    let want = f64::from(temp * temp) * kl / 2.0;
    assert!((f64::from(got[0]) - want).abs() < 1e-5, "{} vs {want}", got[0]);
    let same: Vec<f32> = kd_loss(st.clone(), st, temp).into_data().try_to_vec().unwrap();
    assert!(same[0].abs() < 1e-6);
    let _ = Target::DENSE;
}

#[test]
fn recalibration_reestimates_batch_norm_after_hard_pruning_and_after_retraining() {
    use tessera_models::train::{evaluate, recalibrate_batch_norm};
    use tessera_prune::Recalibration;
    let (tr, te) = mnist();
    let device = Backend::Flex.train_device(3);
    let fresh = || {
        with_seed(&device, 4, || {
            ResNetConfig {
                depth: 8,
                in_channels: 1,
                classes: 10,
                width: 0.25,
                ..Default::default()
            }
            .init(&device)
        })
        .unwrap()
    };
    // A fresh (deterministically trained) model per use: burn's running statistics are shared
    // between clones of a module, so a clone would see another's recalibration.
    let trained =
        || train(fresh(), &tr, None, &steps(1, 6), &device, &mut NoHooks, None).unwrap().0;
    let recal = Recalibration { batches: 3, batch_size: 16 };
    let mut cfg = PruneConfig {
        sparsity: config(
            r#"{"rules": [{"layers": "blocks.*.conv*.conv.weight", "scheme": "filter", "target": "2x"}], "default": {"scheme": "unstructured", "target": "0"}}"#,
        ),
        method: Method::OneShot,
        train: steps(1, 2),
        retrain: steps(0, 2),
        distill: None,
        distill_phase: false,
        recalibrate: Some(recal),
    };
    let inference = device.clone().inner();
    let stats = |m: &tessera_models::zoo::ResNet| {
        let bn = &m.blocks[0].conv1.bn;
        (bn.running_mean.value_sync().into_data(), bn.running_var.value_sync().into_data())
    };
    // Without retraining: the reference recalibrates the hard-pruned model itself.
    let out = prune(trained(), &cfg, &tr, Some(&te), &device, None).unwrap();
    let pruned = weights::apply_masks(trained(), &out.masks);
    let reference = recalibrate_batch_norm(pruned, &tr, 3, 16, cfg.retrain.seed, &device).unwrap();
    assert_eq!(stats(&out.model), stats(&reference));
    let hard = evaluate(&reference.valid(), &te, 256, &inference).unwrap();
    assert_eq!(out.hard_pruned_eval, Some(hard));
    assert_eq!(out.final_eval, Some(hard));
    // Without recalibration the statistics are the trained model's, untouched by pruning.
    let plain = PruneConfig { recalibrate: None, ..cfg.clone() };
    let out_plain = prune(trained(), &plain, &tr, Some(&te), &device, None).unwrap();
    assert_eq!(stats(&out_plain.model), stats(&trained()));
    assert_ne!(stats(&out_plain.model), stats(&out.model));
    // With retraining: the final statistics are re-estimated from the retrained weights, and
    // the final evaluation is of the recalibrated model.
    cfg.retrain = steps(1, 2);
    let out = prune(trained(), &cfg, &tr, Some(&te), &device, None).unwrap();
    let fin = evaluate(&out.model.valid(), &te, 256, &inference).unwrap();
    assert_eq!(out.final_eval, Some(fin));
    let before = stats(&out.model);
    let again = recalibrate_batch_norm(out.model, &tr, 3, 16, cfg.retrain.seed, &device).unwrap();
    assert_eq!(before, stats(&again), "recalibrating again changes nothing");
    let retrained_only = PruneConfig { recalibrate: None, ..cfg.clone() };
    let out_plain = prune(trained(), &retrained_only, &tr, Some(&te), &device, None).unwrap();
    assert_ne!(stats(&out_plain.model), before);
}

/// Sparsity of a logged constraint (`scheme@0.3` or `scheme@8x`).
fn logged_sparsity(constraint: &str) -> f64 {
    constraint.rsplit('@').next().unwrap().parse::<Target>().unwrap().sparsity_value()
}

#[test]
fn progressive_admm_ramps_the_z_target_along_the_cubic() {
    let device = Backend::Flex.train_device(6);
    let model = trained_lenet(&device);
    let w = weights::prunable_weights(&model, [1, 1, 28, 28]).unwrap();
    let plan = PrunePlan::resolve(&config(UNSTRUCTURED_8X), &w).unwrap();
    let paths = plan.paths();
    let cfg = AdmmConfig {
        rho: 0.1,
        update_every_steps: Some(1),
        progressive: true,
        ..AdmmConfig::default()
    };
    // Without the phase's length the ramp has no end: a typed error at the first update.
    let mut bare = Admm::new(&model, plan.clone(), cfg.clone()).unwrap();
    let err = Hooks::after_step(&mut bare, model.clone(), 0).unwrap_err().to_string();
    assert!(err.contains("admm.progressive") && err.contains("with_phase_steps"), "{err}");
    // Nor can it update outside the hook, with no step to place the target.
    let w0 = read_weights(&model, &paths).unwrap();
    let err = bare.update(&w0, Some(0)).unwrap_err().to_string();
    assert!(err.contains("admm.progressive") && err.contains("training hook"), "{err}");
    let mut hook = Admm::new(&model, plan.clone(), cfg).unwrap().with_phase_steps(10);
    // The initialization asks for no sparsity yet: Z = W.
    assert_eq!(hook.log()[0].max_relative(), 0.0);
    let mut m = model.clone();
    for step in 0..10 {
        m = Hooks::after_step(&mut hook, m, step).unwrap();
    }
    let log = hook.log();
    assert_eq!(log.len(), 11, "initialization + one update per step");
    for (k, u) in log[1..].iter().enumerate() {
        let p = (k + 1) as f64 / 10.0;
        let want = 0.875 * (1.0 - (1.0 - p).powi(3));
        for r in &u.residuals {
            let got = logged_sparsity(&r.constraint);
            assert!((got - want).abs() < 1e-9, "step {k}, {}: {got} vs {want}", r.path);
        }
    }
    // The first ramped Z-step (U = 0, no training) removes exactly the smallest weights of
    // the ramp's sparsity: the primal residual by brute force over sorted magnitudes.
    let s0 = 0.875 * (1.0 - 0.9f64.powi(3));
    let (mut removed_sq, mut all_sq) = (0.0, 0.0);
    for (l, r) in plan.layers.iter().zip(&log[1].residuals) {
        let mut sq: Vec<f64> = w0[&l.path].iter().map(|&v| f64::from(v).powi(2)).collect();
        sq.sort_by(f64::total_cmp);
        let pruned = sq.len() - Target::Sparsity(s0).budget(sq.len());
        let want = sq[..pruned].iter().sum::<f64>().sqrt();
        assert!((r.primal - want).abs() <= 1e-4 * want, "{}: {} vs {want}", l.path, r.primal);
        removed_sq += sq[..pruned].iter().sum::<f64>();
        all_sq += sq.iter().sum::<f64>();
    }
    // The whole model's relative residual: removed energy over all energy, every layer pooled.
    let want = (removed_sq / all_sq).sqrt();
    let got = log[1].total_relative();
    assert!((got - want).abs() <= 1e-4 * want, "total relative residual {got} vs {want}");
    assert!(got <= log[1].max_relative() + 1e-12, "a pooled ratio cannot exceed the largest");
    // Hard pruning at half the phase ends the ramp there: the update after step 3 asks for
    // 1 - (1/5)^3 of the final sparsity.
    let mut half = Admm::new(
        &model,
        plan,
        AdmmConfig {
            rho: 0.1,
            update_every_steps: Some(1),
            progressive: true,
            hard_prune_at: Some(0.5),
            ..AdmmConfig::default()
        },
    )
    .unwrap()
    .with_phase_steps(10);
    let mut m = model;
    for step in 0..4 {
        m = Hooks::after_step(&mut half, m, step).unwrap();
    }
    let got = logged_sparsity(&half.log()[4].residuals[0].constraint);
    assert!((got - 0.875 * (1.0 - 0.2f64.powi(3))).abs() < 1e-9, "{got}");
    assert!(half.hard_pruned().is_none());
    Hooks::after_step(&mut half, m, 4).unwrap();
    assert_eq!(half.hard_pruned().map(|(s, _)| s), Some(4));
}

/// A seeded ResNet-8 (width 0.5) and a plan pruning its blocks' convolutions to 4x by filter.
fn resnet8_filter_4x(device: &Device, seed: u64) -> (tessera_models::zoo::ResNet, PrunePlan) {
    let model = with_seed(device, seed, || {
        ResNetConfig { depth: 8, in_channels: 1, classes: 10, width: 0.5, ..Default::default() }
            .init(device)
    })
    .unwrap();
    let w = weights::prunable_weights(&model, [1, 1, 28, 28]).unwrap();
    let plan = PrunePlan::resolve(
        &config(
            r#"{"rules": [{"layers": "blocks.*.conv.weight", "scheme": "filter", "target": "4x"}],
            "default": {"scheme": "unstructured", "target": "0"}}"#,
        ),
        &w,
    )
    .unwrap();
    (model, plan)
}

#[test]
fn admm_couples_the_batch_norms_of_removed_filters() {
    let device = Backend::Flex.train_device(7);
    let (model, plan) = resnet8_filter_4x(&device, 3);
    let cfg = AdmmConfig { rho: 0.1, couple_batch_norm: true, ..AdmmConfig::default() };
    let mut admm = Admm::new(&model, plan.clone(), cfg).unwrap();
    let coupled: Vec<(String, String)> =
        admm.coupled_batch_norms().iter().map(|(g, b)| (g.to_string(), b.to_string())).collect();
    assert_eq!(coupled.len(), plan.layers.len(), "every planned convolution has its norm");
    for (l, (g, b)) in plan.layers.iter().zip(&coupled) {
        let base = l.path.strip_suffix(".conv.weight").unwrap();
        assert_eq!(
            (g.as_str(), b.as_str()),
            (&*format!("{base}.bn.gamma"), &*format!("{base}.bn.beta"))
        );
    }
    let mut paths = plan.paths();
    paths.extend(coupled.iter().flat_map(|(g, b)| [g.clone(), b.clone()]));
    let mut weights = read_weights(&model, &paths).unwrap();
    // Fresh norms have beta = 0: give the shifts values so their pull is visible.
    for (_, b) in &coupled {
        let v = weights.get_mut(b).unwrap();
        v.iter_mut().enumerate().for_each(|(i, x)| *x = 0.05 * (i as f32 + 1.0));
    }
    // One update from Z = proj(W), U = 0, at the same values: on a removed channel the
    // scale's Z is 0 and U = gamma, so after rho grows 0.1 -> 0.15 (U rescaled by 2/3) the
    // gradient is 0.15 gamma + 0.1 gamma = 0.25 gamma, as for a pruned weight (see
    // `admm_rho_growth_keeps_the_unscaled_dual`); on a kept channel it is 0. The removed
    // channels by brute force: rows of the scheme's mask with no kept weight.
    admm.update(&weights, Some(0)).unwrap();
    let g = admm.penalty_gradient(&weights).unwrap();
    let mut removed = 0;
    for (l, (gp, bp)) in plan.layers.iter().zip(&coupled) {
        let mask = l.project(&weights[&l.path]).unwrap().mask;
        let rows = l.layer.geometry.rows();
        let cols = mask.len() / rows;
        for o in 0..rows {
            let dead = !(0..cols).any(|c| mask.get(o * cols + c));
            removed += usize::from(dead);
            for p in [gp, bp] {
                let want = if dead { 0.25 * weights[p][o] } else { 0.0 };
                assert!((g[p][o] - want).abs() <= 1e-6, "{p}[{o}]: {} vs {want}", g[p][o]);
            }
        }
    }
    assert!(removed >= plan.layers.len() * 2, "4x filter pruning removes channels: {removed}");
    check_fd(|w| admm.penalty(w), &weights, &g);
    // The model's own gradients carry it.
    let weights = read_weights(&model, &paths).unwrap();
    let g = admm.penalty_gradient(&weights).unwrap();
    let plain = gradients_with(&model, None, &paths, &device);
    let hooked = gradients_with(&model, Some(&mut admm), &paths, &device);
    for p in coupled.iter().flat_map(|(g, b)| [g, b]) {
        for o in 0..g[p].len() {
            let d = hooked[p][o] - plain[p][o];
            assert!((d - g[p][o]).abs() <= 1e-5 * (1.0 + g[p][o].abs()), "{p}[{o}]");
        }
    }
}

#[test]
fn admm_with_coupled_batch_norms_resumes_exactly() {
    let (tr, _) = mnist();
    let device = Backend::Flex.train_device(8);
    let (model, plan) = resnet8_filter_4x(&device, 4);
    let cfg =
        TrainConfig { max_steps_per_epoch: Some(6), seed: 3, ..TrainConfig::sgd(3, 16, 0.05) };
    let admm_cfg = AdmmConfig {
        rho: 0.5,
        update_every_steps: Some(3),
        couple_batch_norm: true,
        ..AdmmConfig::default()
    };
    let fresh = || Admm::new(&model, plan.clone(), admm_cfg.clone()).unwrap();
    let mut straight = fresh();
    let (m1, _) = train(model.clone(), &tr, None, &cfg, &device, &mut straight, None).unwrap();
    let mut paths = plan.paths();
    for (g, b) in straight.coupled_batch_norms() {
        paths.extend([g.to_string(), b.to_string()]);
    }
    assert!(paths.len() > plan.layers.len());
    let dir = tempfile::tempdir().unwrap();
    let stop = Checkpoints { stop_after_epochs: Some(1), ..Checkpoints::new(dir.path(), true) };
    train(model.clone(), &tr, None, &cfg, &device, &mut fresh(), Some(&stop)).unwrap();
    let mut b = fresh();
    let resume = Checkpoints::new(dir.path(), true);
    let (m2, _) = train(model, &tr, None, &cfg, &device, &mut b, Some(&resume)).unwrap();
    assert_eq!(b.log(), straight.log());
    assert_eq!(read_weights(&m1, &paths).unwrap(), read_weights(&m2, &paths).unwrap());
    // A plan that couples no norm does not take this state.
    let mut uncoupled =
        Admm::new(&m1, plan.clone(), AdmmConfig { couple_batch_norm: false, ..admm_cfg }).unwrap();
    let state = Hooks::<tessera_models::zoo::ResNet>::save_state(&b).unwrap().unwrap();
    let err = Hooks::<tessera_models::zoo::ResNet>::load_state(&mut uncoupled, &state)
        .unwrap_err()
        .to_string();
    assert!(err.contains("couple_batch_norm"), "{err}");
}
