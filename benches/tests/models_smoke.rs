//! The whole-model suite end to end on LeNet-5 at one scheme and rate, with minimal timing:
//! the points, per-layer rows, latency samples and report it produces are consistent.

use tessera_benches::models::{ModelSuiteConfig, markdown, run_models};

#[test]
fn lenet_points_layers_and_latency_samples_are_consistent() {
    let cfg = ModelSuiteConfig {
        only: vec!["lenet5".into()],
        threads: vec![1],
        rates: vec![8.0],
        schemes: vec!["block-punched:8x4".into()],
        min_time: 0.0,
        tune: false,
        ort: None,
    };
    let r = run_models(&cfg).unwrap();
    let names: Vec<&str> = r.models.iter().map(|p| p.scheme.as_str()).collect();
    assert_eq!(names, ["burn-flex", "burn-ndarray", "dense", "block-punched:8x4"]);
    let dense = &r.models[2];
    assert_eq!((dense.speedup, dense.flop_reduction), (1.0, 1.0));
    let pruned = &r.models[3];
    // conv2 pruned, conv1 (the stem) and the fully connected layers dense: the model's MACs
    // fall, by less than the pruned layer's.
    assert!(pruned.flop_reduction > 1.2, "{pruned:?}");
    // The speed-up comes from rounds timed side by side with the dense plan, not from the two
    // medians, but it measures the same plans: within 3x of the medians' ratio even on a
    // loaded machine.
    let of_medians = dense.median_ms / pruned.median_ms;
    assert!(pruned.median_ms > 0.0 && pruned.speedup.is_finite(), "{pruned:?}");
    assert!(
        pruned.speedup > of_medians / 3.0 && pruned.speedup < of_medians * 3.0,
        "{} vs {of_medians}",
        pruned.speedup
    );
    // One per-layer row, for the pruned conv.
    assert_eq!(r.layers.len(), 1, "{:?}", r.layers);
    let l = &r.layers[0];
    assert_eq!(l.node, "conv2");
    assert!(l.flop_reduction > pruned.flop_reduction, "{l:?}");
    assert!((l.speedup - l.dense_ms / l.ms).abs() < 1e-12);
    // Every weighted layer of both plans is a latency sample.
    assert_eq!(r.latency.samples.len(), 2 * 5);
    assert!(markdown(&r).contains("| lenet5 | block-punched:8x4 | 8x | 1 |"));
}
