//! The simulator against independent references: the IR interpreter (fault-free, within the
//! quantization error; to float rounding with generous bits), hand-computed fault effects, the
//! differential / two-column complement identity under swapped faults, and the bit-serial
//! engine against the folded-weight engine on whole graphs.

use anyhow::Result;
use tessera_ir::{Graph, Tensor, examples, interp};
use tessera_reram::{
    AdcResolution, CrossbarConfig, Fault, FaultMap, FaultModel, MappedGraph, MappedMatrix, Mapping,
    MvmScratch, SegmentEncoding,
};

fn graphs() -> Result<Vec<Graph>> {
    Ok(vec![
        examples::lenet5()?,
        examples::vgg_cifar()?,
        examples::resnet_block()?,
        examples::mobilenet_block()?,
    ])
}

fn input(g: &Graph, batch: usize, seed: u64) -> Tensor {
    let mut shape = g.inputs[0].shape.clone();
    shape[0] = batch;
    Tensor::uniform(shape, 1.0, seed)
}

/// max |a - b| / max |b|.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let scale = b.data.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.data.iter().zip(&b.data).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / scale
}

const MAPPINGS: [Mapping; 3] = [Mapping::Offset, Mapping::TwoColumn, Mapping::Differential];

#[test]
fn fault_free_chips_match_the_interpreter_within_the_quantization_error() -> Result<()> {
    for g in graphs()? {
        let x = input(&g, 2, 11);
        let want = interp::run(&g, std::slice::from_ref(&x))?;
        for mapping in MAPPINGS {
            let coarse = CrossbarConfig::with_mapping(mapping);
            let fine = CrossbarConfig { weight_bits: 12, ..coarse.clone() };
            let e8 = rel_err(
                &MappedGraph::new(&g, &coarse)?
                    .chip(&FaultModel::none(), 0)?
                    .run(std::slice::from_ref(&x))?[0],
                &want[0],
            );
            let e12 = rel_err(
                &MappedGraph::new(&g, &fine)?
                    .chip(&FaultModel::none(), 0)?
                    .run(std::slice::from_ref(&x))?[0],
                &want[0],
            );
            // 8-bit weights: a few percent at most; 4 more bits cut the error by about 16x.
            assert!(e8 < 0.05, "{} {mapping}: {e8}", g.name);
            assert!(e12 < e8 / 4.0, "{} {mapping}: {e12} vs {e8}", g.name);
        }
    }
    Ok(())
}

#[test]
fn generous_bits_are_exact_to_float_rounding() -> Result<()> {
    for g in graphs()? {
        let x = input(&g, 2, 5);
        let want = interp::run(&g, std::slice::from_ref(&x))?;
        for mapping in MAPPINGS {
            let cfg = CrossbarConfig {
                weight_bits: 24,
                input_bits: 24,
                ..CrossbarConfig::with_mapping(mapping)
            };
            let got = MappedGraph::new(&g, &cfg)?
                .chip(&FaultModel::none(), 0)?
                .run(std::slice::from_ref(&x))?;
            let e = rel_err(&got[0], &want[0]);
            assert!(e < 2e-5, "{} {mapping}: {e}", g.name);
        }
    }
    Ok(())
}

#[test]
fn differential_at_p0_p1_equals_two_column_at_p1_p0_exactly() -> Result<()> {
    let g = examples::lenet5()?;
    let x = input(&g, 3, 2);
    let diff = MappedGraph::new(&g, &CrossbarConfig::with_mapping(Mapping::Differential))?;
    let two = MappedGraph::new(&g, &CrossbarConfig::with_mapping(Mapping::TwoColumn))?;
    for (seed, p) in [(0u64, 0.01), (1, 0.05), (2, 0.2)] {
        let model = FaultModel::from_rate(p);
        let maps = diff.sample_faults(&model, seed)?;
        // The same cells, every kind exchanged: a draw of two-column's faults at (p1, p0).
        let swapped: Vec<FaultMap> = maps.iter().map(FaultMap::flipped).collect();
        let a = diff.chip_with(&maps, 0.0, seed)?.run(std::slice::from_ref(&x))?;
        let b = two.chip_with(&swapped, 0.0, seed)?.run(std::slice::from_ref(&x))?;
        assert_eq!(a[0].data, b[0].data, "p = {p}");
        // And the faults did something: not the fault-free output.
        let clean = diff.chip(&FaultModel::none(), 0)?.run(std::slice::from_ref(&x))?;
        assert_ne!(a[0].data, clean[0].data);
        // Bit-serial too (identical integer readings).
        let mut chip = diff.chip_with(&maps, 0.0, seed)?;
        chip.force_bit_serial();
        let c = chip.run(std::slice::from_ref(&x))?;
        let e = rel_err(&c[0], &a[0]);
        assert!(e < 1e-4, "p = {p}: {e}");
    }
    Ok(())
}

#[test]
fn bit_serial_engine_matches_the_folded_engine_on_whole_graphs() -> Result<()> {
    for g in graphs()? {
        let x = input(&g, 2, 9);
        for (mapping, encoding) in [
            (Mapping::Offset, SegmentEncoding::FlipHalf),
            (Mapping::TwoColumn, SegmentEncoding::Plain),
            (Mapping::Differential, SegmentEncoding::Complement),
        ] {
            let cfg = CrossbarConfig { encoding, ..CrossbarConfig::with_mapping(mapping) };
            let mapped = MappedGraph::new(&g, &cfg)?;
            let model = FaultModel::from_rate(0.005);
            let fast = mapped.chip(&model, 4)?;
            let mut slow = fast.clone();
            slow.force_bit_serial();
            let a = fast.run(std::slice::from_ref(&x))?;
            let b = slow.run(std::slice::from_ref(&x))?;
            let e = rel_err(&b[0], &a[0]);
            assert!(e < 1e-4, "{} {mapping} {encoding:?}: {e}", g.name);
        }
    }
    Ok(())
}

#[test]
fn saturating_adc_and_variation_change_results_and_profiles_say_bit_serial() -> Result<()> {
    let g = examples::lenet5()?;
    let x = input(&g, 2, 1);
    let base = CrossbarConfig::default();
    let clean =
        MappedGraph::new(&g, &base)?.chip(&FaultModel::none(), 0)?.run(std::slice::from_ref(&x))?;
    let narrow = CrossbarConfig { adc: AdcResolution::Bits(4), ..base.clone() };
    let mut prof = Vec::new();
    let got = MappedGraph::new(&g, &narrow)?
        .chip(&FaultModel::none(), 0)?
        .run_profiled(std::slice::from_ref(&x), &mut prof)?;
    assert!(rel_err(&got[0], &clean[0]) > 0.01);
    assert!(prof.iter().any(|p| p.bit_serial));
    let varied = FaultModel { variation_sigma: 0.1, ..FaultModel::none() };
    let mapped = MappedGraph::new(&g, &base)?;
    let a = mapped.chip(&varied, 1)?.run(std::slice::from_ref(&x))?;
    let b = mapped.chip(&varied, 1)?.run(std::slice::from_ref(&x))?;
    let c = mapped.chip(&varied, 2)?.run(std::slice::from_ref(&x))?;
    assert_eq!(a[0].data, b[0].data, "same seed, same chip");
    assert_ne!(a[0].data, c[0].data);
    let e = rel_err(&a[0], &clean[0]);
    assert!(e > 1e-4 && e < 0.5, "{e}");
    Ok(())
}

/// Row-major index of cell (`row`, `col`) in an array `cols` wide.
fn cell(row: u32, col: u32, cols: u32) -> u32 {
    row * cols + col
}

/// One 1 x 4 matrix, `w = [0.5, 0, 0, -1]`, inputs all 1: hand-checked fault effects.
#[test]
fn stuck_on_over_a_zero_weight_hurts_two_column_and_not_differential() -> Result<()> {
    let w = [0.5f32, 0.0, 0.0, -1.0];
    // Quantized: codes 128 and -255 of 1/255 each.
    let ideal = (128.0 - 255.0) / 255.0;
    let run = |mapping: Mapping, encoding: SegmentEncoding, faults: &FaultMap| -> Result<f64> {
        let cfg = CrossbarConfig { encoding, ..CrossbarConfig::with_mapping(mapping) };
        let mut m = MappedMatrix::encode(&cfg, "fc", &w, 1, 4)?;
        m.inject(faults)?;
        let mut y = [0.0];
        m.mvm_bit_serial(&[1, 1, 1, 1], 16, false, &mut MvmScratch::default(), &mut y);
        Ok(y[0])
    };
    // Row 1 (a zero weight), column 3: the top slice of the "negative" slot under two-column
    // (slot 1), the complemented positive one under differential.
    let top_slice_slot1 = FaultMap { cells: vec![(cell(1, 7, 8), Fault::StuckOn)] };
    let two = run(Mapping::TwoColumn, SegmentEncoding::Plain, &top_slice_slot1)?;
    let diff = run(Mapping::Differential, SegmentEncoding::Plain, &top_slice_slot1)?;
    // Two-column: the cell reads 3 instead of 0 in slice 3 (weight 64 codes of 1/255 each).
    assert!((two - (ideal - 3.0 * 64.0 / 255.0)).abs() < 1e-6, "{two}");
    assert!((diff - ideal).abs() < 1.0 / 255.0, "{diff}");
    // The FORMS complement bit gives a single polarized column the same immunity.
    let one_col_fault = FaultMap { cells: vec![(cell(1, 3, 4), Fault::StuckOn)] };
    let pol = |enc| -> Result<f64> {
        let cfg = CrossbarConfig {
            encoding: enc,
            ..CrossbarConfig::with_mapping(Mapping::Polarized { m: 1 })
        };
        let mut m = MappedMatrix::encode(&cfg, "fc", &w, 1, 4)?;
        m.inject(&one_col_fault)?;
        let mut y = [0.0];
        m.mvm_bit_serial(&[1, 1, 1, 1], 16, false, &mut MvmScratch::default(), &mut y);
        Ok(y[0])
    };
    assert!((pol(SegmentEncoding::Plain)? - (ideal + 3.0 * 64.0 / 255.0)).abs() < 1e-6);
    assert!((pol(SegmentEncoding::Complement)? - ideal).abs() < 1.0 / 255.0);
    // Offset: a zero weight is stored at mid-range 128 = slice levels (0, 0, 0, 2): a stuck-on
    // top slice reads 3, one code step of 64 above 128 (scale 1/127).
    let off_fault = FaultMap { cells: vec![(cell(1, 3, 4), Fault::StuckOn)] };
    let off = run(Mapping::Offset, SegmentEncoding::Plain, &off_fault)?;
    assert!((off - (ideal + 64.0 / 127.0)).abs() < 1.0 / 127.0, "{off}");
    Ok(())
}

#[test]
fn zero_skipping_counts_match_a_hand_count() -> Result<()> {
    // A linear layer with 16 inputs, fragments of 8 rows, 4-bit inputs, one sample whose
    // codes are [4, 0, .., 0, 1] (max 4 -> 3 bits; OR = 5 -> 2 planes) and [15, 0, ..]
    // (4 bits, 4 planes). The largest value is 15, so the step is 1 and codes = values.
    let mut b = tessera_ir::GraphBuilder::new("skip");
    let x = b.input("x", &[1, 16]);
    let w = Tensor::uniform([4, 16], 1.0, 3);
    let w = Tensor::new([4, 16], w.data.iter().map(|v| v.abs()).collect());
    let y = b.linear("fc", &x, w, None);
    b.output(&y);
    let g = b.build()?;
    let cfg = CrossbarConfig {
        input_bits: 4,
        ..CrossbarConfig::with_mapping(Mapping::Polarized { m: 8 })
    };
    let mut codes = vec![0.0f32; 16];
    codes[0] = 4.0;
    codes[7] = 1.0;
    codes[8] = 15.0;
    let mut prof = Vec::new();
    MappedGraph::new(&g, &cfg)?
        .chip(&FaultModel::none(), 0)?
        .run_profiled(&[Tensor::new([1, 16], codes)], &mut prof)?;
    let p = &prof[0];
    assert_eq!((p.mvms, p.segment_rows), (1, 8));
    assert_eq!(p.cycles_full, 2 * 4);
    assert_eq!(p.cycles_leading_zero, 3 + 4);
    assert_eq!(p.cycles_nonzero_planes, 2 + 4);
    Ok(())
}

#[test]
fn bad_inputs_get_typed_errors() -> Result<()> {
    let g = examples::lenet5()?;
    let mapped = MappedGraph::new(&g, &CrossbarConfig::default())?;
    let chip = mapped.chip(&FaultModel::none(), 0)?;
    let err = chip.run(&[Tensor::zeros([1, 3, 28, 28])]).unwrap_err();
    assert!(err.to_string().contains("does not match the declared"), "{err}");
    let err = chip.run(&[]).unwrap_err();
    assert!(err.to_string().contains("0 tensors for 1 graph inputs"), "{err}");
    let err = MappedGraph::new(&g, &CrossbarConfig::with_mapping(Mapping::Polarized { m: 8 }))
        .unwrap_err();
    assert!(err.to_string().contains("mixes signs"), "{err}");
    assert!(mapped.chip(&FaultModel::from_rate(2.0), 0).is_err());
    assert!(mapped.chip_with(&[], 0.0, 0).is_err());
    Ok(())
}

#[test]
fn polarized_graphs_map_with_half_the_columns_of_two_column() -> Result<()> {
    let mut g = examples::lenet5()?;
    let scheme: tessera_sparsity::Scheme = "polarized:8".parse()?;
    let weighted: Vec<(String, String)> = g
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            tessera_ir::Op::Conv { weight, .. } | tessera_ir::Op::Linear { weight, .. } => {
                Some((n.name.clone(), weight.clone()))
            }
            _ => None,
        })
        .collect();
    for (node, weight) in weighted {
        g.prune(&node, &weight, &scheme, tessera_sparsity::Target::Sparsity(0.0))?;
    }
    let pol = MappedGraph::new(&g, &CrossbarConfig::with_mapping(Mapping::Polarized { m: 8 }))?;
    let two = MappedGraph::new(&g, &CrossbarConfig::with_mapping(Mapping::TwoColumn))?;
    let cells = |m: &MappedGraph| m.layers().iter().map(|l| l.cells).sum::<usize>();
    assert_eq!(2 * cells(&pol), cells(&two));
    let x = input(&g, 2, 8);
    let want = interp::run(&g, std::slice::from_ref(&x))?;
    let got = pol.chip(&FaultModel::none(), 0)?.run(std::slice::from_ref(&x))?;
    assert!(rel_err(&got[0], &want[0]) < 0.05);
    Ok(())
}
