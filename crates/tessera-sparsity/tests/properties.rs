//! Property tests on random layers larger than brute force can handle: every projection is
//! idempotent, keeps the target within one group, has the scheme's structure (checked by the
//! independent reference), and padding equals projecting an explicitly zero-padded layer.

mod reference;

use proptest::prelude::*;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use reference::View;
use tessera_sparsity::{Layer, Mask, Scheme, Target, Tiling};

fn weights(n: usize, seed: u64, ties: bool) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            if ties {
                rng.random_range(-3i32..=3) as f32 * 0.5
            } else {
                rng.random_range(-1.0f32..1.0)
            }
        })
        .collect()
}

/// The reference structure test for a scheme (None: no structural constraint to check).
fn structure_ok(scheme: &Scheme, v: View, m: &Mask) -> bool {
    match scheme {
        Scheme::Unstructured => true,
        Scheme::Filter => reference::filter_ok(v, m),
        Scheme::Channel => reference::channel_ok(v, m),
        Scheme::Column => reference::column_ok(v, m),
        Scheme::Connectivity => reference::connectivity_ok(v, m),
        Scheme::BlockPunched { block, balanced } => {
            reference::block_punched_ok(v, m, block.rows(), block.cols(), *balanced)
        }
        Scheme::Block { block, balanced } => {
            reference::block_ok(v, m, block.rows(), block.cols(), *balanced)
        }
        Scheme::Kgs { group, balanced } => {
            reference::kgs_ok(v, m, group.rows(), group.cols(), *balanced)
        }
        Scheme::KgsVanilla { group } => reference::kgs_vanilla_ok(v, m, group.rows(), group.cols()),
        Scheme::Bcr { block } => reference::bcr_ok(v, m, block.rows(), block.cols()),
        Scheme::NM { n, m: mm } => reference::nm_ok(v, m, *n, *mm),
        _ => unreachable!("not generated"),
    }
}

/// Size of the scheme's unit of selection (what "within one group" means), for exact tiling.
fn unit(scheme: &Scheme, v: View) -> usize {
    match scheme {
        Scheme::Unstructured => 1,
        Scheme::Filter => v.cols,
        Scheme::Channel => v.opg * v.k(),
        Scheme::Column => v.opg,
        Scheme::Connectivity => v.k(),
        Scheme::BlockPunched { block, .. } | Scheme::Block { block, .. } => {
            block.rows() * block.cols()
        }
        Scheme::Kgs { group, .. } => group.rows() * group.cols() * v.kernel.0,
        Scheme::KgsVanilla { group } => group.rows() * group.cols() * v.k(),
        _ => unreachable!(),
    }
}

/// Buckets of a balanced scheme (the slack of "within one group" grows with them).
fn buckets(scheme: &Scheme, v: View) -> usize {
    match scheme {
        Scheme::BlockPunched { block, balanced: true } => {
            v.rows / block.rows() * (v.ipg / block.cols())
        }
        Scheme::Block { block, balanced: true } => v.rows / block.rows(),
        Scheme::Kgs { group, balanced: true } => v.rows / group.rows() * (v.ipg / group.cols()),
        _ => 1,
    }
}

/// A random layer and a scheme that tiles it exactly.
fn case() -> impl Strategy<Value = (Layer, Scheme)> {
    let conv = (1usize..4, 1usize..4, prop::sample::select(vec![(1usize, 1usize), (3, 3), (1, 2)]))
        .prop_map(|(o, i, (kh, kw))| (o * 4, i * 4, kh, kw));
    let conv3 = (1usize..3, 1usize..3).prop_map(|(o, i)| (o * 4, i * 2));
    prop_oneof![
        (1usize..5, 1usize..5, 0usize..7).prop_map(|(o, i, s)| {
            let layer = Layer::linear("fc", o * 4, i * 8).unwrap();
            let scheme = [
                "unstructured",
                "filter",
                "column",
                "block:4x8",
                "block:2x4+balanced",
                "block-punched:4x4",
                "bcr:4x4",
                "nm:2:8",
            ][s];
            (layer, scheme.parse().unwrap())
        }),
        (conv, 0usize..9).prop_map(|((o, i, kh, kw), s)| {
            let layer = Layer::conv2d("conv", o, i, kh, kw).unwrap();
            let scheme = [
                "unstructured",
                "filter",
                "channel",
                "column",
                "connectivity",
                "block-punched:4x2",
                "block-punched:2x4+balanced",
                "kgs:4x4",
                "kgs-vanilla:2x2",
            ][s];
            (layer, scheme.parse().unwrap())
        }),
        (conv3, 0usize..4).prop_map(|((o, i), s)| {
            let layer = Layer::conv3d("c3d", o, i, 3, 3, 3).unwrap();
            let scheme = ["kgs:4x2", "kgs:2x2+balanced", "kgs-vanilla:4x1", "block-punched:4x2"][s];
            (layer, scheme.parse().unwrap())
        }),
        (1usize..3, 0usize..3).prop_map(|(c, s)| {
            // Depthwise-like grouped conv.
            let layer =
                Layer::conv2d("dw", c * 4, c * 4, 3, 3).unwrap().with_groups(c * 2).unwrap();
            let scheme = ["channel", "column", "connectivity"][s];
            (layer, scheme.parse().unwrap())
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn projections_are_feasible_idempotent_and_tight(
        (layer, scheme) in case(),
        sparsity in 0.0f64..=1.0,
        seed in any::<u64>(),
        ties: bool,
    ) {
        let v = View::of(&layer.geometry);
        let n = layer.geometry.len();
        let w = weights(n, seed, ties);
        let target = Target::Sparsity(sparsity);
        let budget = target.budget(n);
        if matches!(scheme, Scheme::NM { n: keep, m } if (keep as f64) / (m as f64) > target.density()) {
            return Ok(());
        }
        let p = scheme.project(&layer, &w, target).unwrap();
        prop_assert!(structure_ok(&scheme, v, &p.mask), "{scheme} structure broken");
        prop_assert!(p.mask.count() <= budget);
        // N:M keeps a fixed N/M (tested below); BCR's granularity is a row or column per block.
        if !matches!(scheme, Scheme::Bcr { .. } | Scheme::NM { .. }) {
            let slack = unit(&scheme, v) * buckets(&scheme, v);
            prop_assert!(p.mask.count() + slack > budget, "{scheme}: keeps {} of budget {budget}, unit {}", p.mask.count(), slack);
        }
        let again = scheme.project(&layer, &p.values, target).unwrap();
        prop_assert_eq!(&again.values, &p.values, "{} is not idempotent", scheme);
    }

    #[test]
    fn n_of_m_keeps_exactly_n_per_run((rows, runs) in (1usize..6, 1usize..6), seed in any::<u64>()) {
        let layer = Layer::linear("fc", rows, runs * 4).unwrap();
        let w = weights(layer.geometry.len(), seed, false);
        let p = "nm:2:4".parse::<Scheme>().unwrap().project(&layer, &w, Target::DENSE).unwrap();
        prop_assert_eq!(p.mask.count(), rows * runs * 2);
        let again = "nm:2:4".parse::<Scheme>().unwrap().project(&layer, &p.values, Target::DENSE).unwrap();
        prop_assert_eq!(again.values, p.values);
    }

    #[test]
    fn bcr_uses_the_widest_admissible_submatrix((rb, cb) in (1usize..4, 1usize..4), seed in any::<u64>(), sparsity in 0.0f64..1.0) {
        let layer = Layer::linear("fc", rb * 4, cb * 4).unwrap();
        let w = weights(layer.geometry.len(), seed, false);
        let target = Target::Sparsity(sparsity);
        let p = "bcr:4x4".parse::<Scheme>().unwrap().project(&layer, &w, target).unwrap();
        let blocks = rb * cb;
        let per_block = target.budget(layer.geometry.len()) / blocks;
        prop_assert_eq!(p.mask.count() % blocks, 0);
        let kept = p.mask.count() / blocks;
        // kr x kc = kept; no wider choice of kc for the same kr fits.
        prop_assert!(kept <= per_block);
        prop_assert!(p.exact);
    }

    #[test]
    fn padding_equals_explicit_zero_padding(
        (out, inp) in (1usize..10, 1usize..10),
        seed in any::<u64>(),
        sparsity in 0.0f64..=1.0,
        s in 0usize..5,
    ) {
        let scheme: Scheme = ["block:4x4", "block-punched:4x2", "bcr:4x4", "nm:2:4", "block:3x2+balanced"][s].parse().unwrap();
        let layer = Layer::linear("fc", out, inp).unwrap();
        let w = weights(out * inp, seed, false);
        // The padded size is a multiple of the scheme's block (rows x columns).
        let (br, bc) = [(4, 4), (4, 2), (4, 4), (1, 4), (3, 2)][s];
        let (po, pi) = (out.div_ceil(br) * br, inp.div_ceil(bc) * bc);
        let padded_layer = Layer::linear("fc-padded", po, pi).unwrap();
        let mut padded = vec![0.0f32; po * pi];
        for r in 0..out {
            padded[r * pi..r * pi + inp].copy_from_slice(&w[r * inp..(r + 1) * inp]);
        }
        let target = Target::Sparsity(sparsity);
        if matches!(scheme, Scheme::NM { .. }) && target.density() < 0.5 {
            return Ok(());
        }
        let ours = scheme.project_with(&layer, &w, target, Tiling::Pad).unwrap();
        let reference = scheme.project(&padded_layer, &padded, target).unwrap();
        for r in 0..out {
            for c in 0..inp {
                prop_assert_eq!(ours.values[r * inp + c], reference.values[r * pi + c]);
            }
        }
    }

    #[test]
    fn groups_partition_selection_schemes((layer, scheme) in case()) {
        prop_assume!(!matches!(scheme, Scheme::Bcr { .. }));
        let groups = scheme.groups(&layer, Tiling::Exact).unwrap();
        let mut seen = vec![0u8; layer.geometry.len()];
        for g in groups.iter() {
            prop_assert_eq!(g.len(), if matches!(scheme, Scheme::NM { .. }) { 8 } else { groups.nominal_size() });
            for &i in g {
                seen[i as usize] += 1;
            }
        }
        prop_assert!(seen.iter().all(|&s| s == 1), "{scheme}: groups must partition the weight");
    }
}

#[test]
fn bcr_groups_are_row_then_column_segments() {
    let layer = Layer::linear("fc", 4, 4).unwrap();
    let g = "bcr:2x2".parse::<Scheme>().unwrap().groups(&layer, Tiling::Exact).unwrap();
    assert_eq!(g.len(), 16);
    assert_eq!(g.group(0), &[0, 1]); // block (0,0), row 0
    assert_eq!(g.group(8), &[0, 4]); // block (0,0), column 0
    let scores = "bcr:2x2"
        .parse::<Scheme>()
        .unwrap()
        .score(&layer, &(0..16).map(|i| i as f32).collect::<Vec<_>>(), Tiling::Exact)
        .unwrap();
    assert_eq!(scores[0], 1.0); // sqrt(0 + 1)
}

#[test]
fn not_tileable_names_layer_and_reason() {
    let layer = Layer::conv2d("features.7", 6, 16, 3, 3).unwrap();
    let err = "block-punched:4x4"
        .parse::<Scheme>()
        .unwrap()
        .project(&layer, &vec![0.5; 6 * 144], Target::Sparsity(0.5))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("features.7")
            && msg.contains("6 output channels")
            && msg.contains("4 block rows"),
        "{msg}"
    );
    let dw = Layer::conv2d("dw", 8, 8, 3, 3).unwrap().with_groups(8).unwrap();
    assert!(
        "block-punched:8x4"
            .parse::<Scheme>()
            .unwrap()
            .check_applicable(&dw, Tiling::Exact)
            .is_err()
    );
    let fc = Layer::linear("fc", 8, 8).unwrap();
    assert!("pattern:8".parse::<Scheme>().unwrap().check_applicable(&fc, Tiling::Exact).is_err());
    assert!("kgs:4x4".parse::<Scheme>().unwrap().check_applicable(&fc, Tiling::Exact).is_err());
    // Infeasible targets.
    let conv = Layer::conv2d("c", 4, 4, 3, 3).unwrap();
    let w = weights(conv.geometry.len(), 1, false);
    assert!(
        "pattern:8"
            .parse::<Scheme>()
            .unwrap()
            .project(&conv, &w, Target::Compression(8.0))
            .is_err()
    );
    assert!(
        "pattern:8".parse::<Scheme>().unwrap().project(&conv, &w, Target::Compression(2.0)).is_ok()
    );
    assert!("nm:2:4".parse::<Scheme>().unwrap().project(&conv, &w, Target::Sparsity(0.6)).is_err());
    assert!(
        "polarized:8".parse::<Scheme>().unwrap().project(&conv, &w, Target::Sparsity(0.5)).is_err()
    );
    let bad = vec![f32::NAN; conv.geometry.len()];
    assert!(
        "filter".parse::<Scheme>().unwrap().project(&conv, &bad, Target::Sparsity(0.5)).is_err()
    );
}

#[test]
fn large_bcr_blocks_fall_back_to_alternating_maximization() {
    let layer = Layer::linear("fc", 16, 16).unwrap();
    let w = weights(256, 3, false);
    let p =
        "bcr:16x16".parse::<Scheme>().unwrap().project(&layer, &w, Target::Sparsity(0.75)).unwrap();
    assert!(!p.exact);
    let v = View::of(&layer.geometry);
    assert!(reference::bcr_ok(v, &p.mask, 16, 16));
    assert!(p.mask.count() <= 64);
    // A local optimum is still far better than keeping the first rows and columns.
    let naive: f64 =
        (0..8).flat_map(|r| (0..8).map(move |c| r * 16 + c)).map(|i| f64::from(w[i]).powi(2)).sum();
    let kept: f64 = p.values.iter().map(|&x| f64::from(x).powi(2)).sum();
    assert!(kept > naive);
}
