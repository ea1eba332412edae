//! Optimality: on tiny layers, brute force over every mask (2^n) that the independent
//! reference checker accepts and that keeps at most the budget finds no point closer to W than
//! the crate's projection; and the projection itself is feasible.

mod reference;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use reference::View;
use tessera_sparsity::{Layer, Mask, PatternLibrary, Scheme, Target};

/// One problem: a scheme on a layer, with its reference feasibility test.
struct Problem {
    scheme: &'static str,
    layer: Layer,
    feasible: Box<dyn Fn(&Mask) -> bool>,
    /// N:M and pattern-only ignore the global budget when it is loose enough; they are tested
    /// at targets they can meet.
    min_density: f64,
}

impl Problem {
    fn new(scheme: &'static str, layer: Layer, feasible: impl Fn(&Mask) -> bool + 'static) -> Self {
        Problem { scheme, layer, feasible: Box::new(feasible), min_density: 0.0 }
    }

    fn with_min_density(mut self, d: f64) -> Self {
        self.min_density = d;
        self
    }

    /// Smallest squared distance over all feasible masks keeping at most `budget` weights.
    fn brute_force(&self, w: &[f32], budget: usize) -> f64 {
        let n = w.len();
        assert!(n <= 20, "brute force over 2^{n} masks is too slow");
        let total: f64 = w.iter().map(|&x| f64::from(x).powi(2)).sum();
        let mut best = f64::INFINITY;
        for bits in 0u32..(1 << n) {
            if bits.count_ones() as usize > budget {
                continue;
            }
            let mask = Mask::from_bools(&(0..n).map(|i| bits >> i & 1 == 1).collect::<Vec<_>>());
            if !(self.feasible)(&mask) {
                continue;
            }
            let kept: f64 =
                (0..n).filter(|i| bits >> i & 1 == 1).map(|i| f64::from(w[i]).powi(2)).sum();
            best = best.min(total - kept);
        }
        best
    }

    fn check(&self) {
        let scheme: Scheme = self.scheme.parse().unwrap();
        let n = self.layer.geometry.len();
        for seed in 0..6u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            // Continuous weights, and weights with many exact ties (including zeros).
            let smooth: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let tied: Vec<f32> = (0..n).map(|_| rng.random_range(-2i32..=2) as f32).collect();
            for w in [smooth, tied] {
                for sparsity in [0.0, 0.3, 0.5, 0.6, 0.75, 0.9, 1.0] {
                    let target = Target::Sparsity(sparsity);
                    if target.density() < self.min_density {
                        continue;
                    }
                    let budget = target.budget(n);
                    let p = scheme
                        .project(&self.layer, &w, target)
                        .unwrap_or_else(|e| panic!("{}: {e}", self.scheme));
                    let ctx = format!(
                        "{} on {:?} at {target}, w = {w:?}",
                        self.scheme, self.layer.geometry
                    );
                    assert!(p.exact, "{ctx}: expected an exact projection");
                    assert!(
                        (self.feasible)(&p.mask),
                        "{ctx}: projection mask {:?} is infeasible",
                        p.mask
                    );
                    assert!(
                        p.mask.count() <= budget,
                        "{ctx}: keeps {} > budget {budget}",
                        p.mask.count()
                    );
                    for (i, &wi) in w.iter().enumerate() {
                        let want = if p.mask.get(i) { wi } else { 0.0 };
                        assert_eq!(
                            p.values[i], want,
                            "{ctx}: values must be W restricted to the mask"
                        );
                    }
                    let ours = p.distance_squared(&w);
                    let best = self.brute_force(&w, budget);
                    assert!(
                        ours <= best + 1e-9 * (1.0 + best),
                        "{ctx}: projection error {ours} > brute force {best}"
                    );
                    assert!(
                        ours >= best - 1e-9 * (1.0 + best),
                        "{ctx}: better than brute force? {ours} < {best}"
                    );
                }
            }
        }
    }
}

fn view(l: &Layer) -> View {
    View::of(&l.geometry)
}

#[test]
fn unstructured() {
    Problem::new("unstructured", Layer::linear("fc", 3, 5).unwrap(), |_| true).check();
}

#[test]
fn filter_channel_column_connectivity() {
    let l = Layer::conv2d("c", 3, 2, 1, 2).unwrap();
    let v = view(&l);
    Problem::new("filter", l.clone(), move |m| reference::filter_ok(v, m)).check();
    Problem::new("channel", l.clone(), move |m| reference::channel_ok(v, m)).check();
    Problem::new("column", l.clone(), move |m| reference::column_ok(v, m)).check();
    Problem::new("connectivity", l, move |m| reference::connectivity_ok(v, m)).check();
}

#[test]
fn grouped_channel_and_column() {
    // 4 outputs, 4 inputs, 2 groups, 1x2 kernels: 4 rows x 4 columns.
    let l = Layer::conv2d("g", 4, 4, 1, 2).unwrap().with_groups(2).unwrap();
    let v = view(&l);
    Problem::new("channel", l.clone(), move |m| reference::channel_ok(v, m)).check();
    Problem::new("column", l, move |m| reference::column_ok(v, m)).check();
}

#[test]
fn block_punched() {
    // 4 filters x 2 channels x 1x2 kernels; blocks of 2 filters x 2 channels.
    let l = Layer::conv2d("c", 4, 2, 1, 2).unwrap();
    let v = view(&l);
    Problem::new("block-punched:2x2", l.clone(), move |m| {
        reference::block_punched_ok(v, m, 2, 2, false)
    })
    .check();
    Problem::new("block-punched:2x1+balanced", l, move |m| {
        reference::block_punched_ok(v, m, 2, 1, true)
    })
    .check();
    // Linear layers: whole 2x2 blocks.
    let fc = Layer::linear("fc", 4, 4).unwrap();
    let v = view(&fc);
    Problem::new("block-punched:2x2", fc, move |m| reference::block_ok(v, m, 2, 2, false)).check();
}

#[test]
fn block() {
    let l = Layer::linear("fc", 4, 4).unwrap();
    let v = view(&l);
    Problem::new("block:2x2", l.clone(), move |m| reference::block_ok(v, m, 2, 2, false)).check();
    Problem::new("block:1x2+balanced", l.clone(), move |m| reference::block_ok(v, m, 1, 2, true))
        .check();
    Problem::new("block:4x1", l, move |m| reference::block_ok(v, m, 4, 1, false)).check();
}

#[test]
fn kgs_and_vanilla() {
    // conv3d: 2 filters x 2 channels x (2 x 2 x 1): 16 weights; groups of 2x1 kernels.
    let l = Layer::conv3d("c3", 2, 2, 2, 2, 1).unwrap();
    let v = view(&l);
    Problem::new("kgs:2x1", l.clone(), move |m| reference::kgs_ok(v, m, 2, 1, false)).check();
    Problem::new("kgs:1x2+balanced", l.clone(), move |m| reference::kgs_ok(v, m, 1, 2, true))
        .check();
    Problem::new("kgs-vanilla:1x1", l, move |m| reference::kgs_vanilla_ok(v, m, 1, 1)).check();
}

#[test]
fn bcr() {
    let l = Layer::linear("fc", 4, 4).unwrap();
    let v = view(&l);
    Problem::new("bcr:2x2", l.clone(), move |m| reference::bcr_ok(v, m, 2, 2)).check();
    Problem::new("bcr:4x4", l, move |m| reference::bcr_ok(v, m, 4, 4)).check();
    let l = Layer::linear("fc", 3, 4).unwrap();
    let v = view(&l);
    Problem::new("bcr:3x2", l, move |m| reference::bcr_ok(v, m, 3, 2)).check();
}

#[test]
fn n_of_m() {
    let l = Layer::linear("fc", 2, 8).unwrap();
    let v = view(&l);
    Problem::new("nm:2:4", l.clone(), move |m| reference::nm_ok(v, m, 2, 4))
        .with_min_density(0.5)
        .check();
    Problem::new("nm:1:4", l, move |m| reference::nm_ok(v, m, 1, 4)).with_min_density(0.25).check();
}

#[test]
fn pattern_with_and_without_connectivity() {
    let l = Layer::conv2d("c", 2, 1, 3, 3).unwrap();
    let lib: PatternLibrary = "01b.0b8.1b0".parse().unwrap();
    let text = |conn: bool| -> &'static str {
        Box::leak(
            format!("pattern:3{}@{lib}", if conn { "+connectivity" } else { "" }).into_boxed_str(),
        )
    };
    let lib2 = lib.clone();
    Problem::new(text(false), l.clone(), move |m| reference::pattern_ok(m, &lib2, false))
        .with_min_density(8.0 / 18.0)
        .check();
    Problem::new(text(true), l, move |m| reference::pattern_ok(m, &lib, true)).check();
}

#[test]
fn polarized_sign_choice_is_optimal() {
    for (layer, m) in
        [(Layer::linear("fc", 2, 6).unwrap(), 2), (Layer::linear("fc", 2, 6).unwrap(), 4)]
    {
        let v = view(&layer);
        let scheme: Scheme = format!("polarized:{m}").parse().unwrap();
        for seed in 0..20u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let w: Vec<f32> =
                (0..layer.geometry.len()).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let p = scheme.project(&layer, &w, Target::DENSE).unwrap();
            assert!(p.exact);
            assert!(reference::polarized_ok(v, &p.values, m));
            // Brute force over the sign of every fragment.
            let frags: Vec<Vec<usize>> = (0..v.rows)
                .flat_map(|r| {
                    (0..v.cols.div_ceil(m)).map(move |f| {
                        (f * m..((f + 1) * m).min(v.cols)).map(|c| r * v.cols + c).collect()
                    })
                })
                .collect();
            let mut best = f64::INFINITY;
            for signs in 0u32..(1 << frags.len()) {
                let err: f64 = frags
                    .iter()
                    .enumerate()
                    .map(|(i, f)| {
                        let positive = signs >> i & 1 == 1;
                        f.iter()
                            .filter(|&&j| (w[j] > 0.0) != positive && w[j] != 0.0)
                            .map(|&j| f64::from(w[j]).powi(2))
                            .sum::<f64>()
                    })
                    .sum();
                best = best.min(err);
            }
            let ours = p.distance_squared(&w);
            assert!((ours - best).abs() <= 1e-12, "seed {seed}: {ours} vs {best}");
        }
    }
}

#[test]
fn polarized_over_a_pruning_scheme_is_feasible_for_both() {
    let layer = Layer::linear("fc", 4, 8).unwrap();
    let v = view(&layer);
    let scheme: Scheme = "polarized:4(block:2x2)".parse().unwrap();
    for seed in 0..20u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let w: Vec<f32> = (0..32).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let p = scheme.project(&layer, &w, Target::Sparsity(0.5)).unwrap();
        assert!(!p.exact);
        assert!(reference::polarized_ok(v, &p.values, 4));
        assert!(reference::block_ok(v, &p.mask, 2, 2, false));
        assert!(p.mask.count() <= 16);
        // Values are W where kept and sign-consistent, zero elsewhere.
        for (&v, &wi) in p.values.iter().zip(&w) {
            assert!(v == 0.0 || v == wi);
        }
    }
}
