//! Hand-computed projections, one or more per scheme. Masks are drawn one GEMM row per line;
//! the comment above each case shows the arithmetic.

use tessera_sparsity::{Layer, Scheme, Target};

fn check(scheme: &str, layer: Layer, weights: &[f32], target: &str, expected: &str) {
    let scheme: Scheme = scheme.parse().unwrap();
    let p = scheme.project(&layer, weights, target.parse().unwrap()).unwrap();
    let cols = layer.geometry.cols();
    let drawn: Vec<String> = (0..layer.geometry.rows())
        .map(|r| (0..cols).map(|c| if p.mask.get(r * cols + c) { '1' } else { '0' }).collect())
        .collect();
    let want: Vec<&str> = expected.split_whitespace().collect();
    assert_eq!(drawn, want, "{scheme} at {target}");
}

fn linear(o: usize, i: usize) -> Layer {
    Layer::linear("fc", o, i).unwrap()
}

#[test]
fn unstructured() {
    // |w| ranks 3, 2, 1 above 0.5, 0.2, 0.1; 50% of 6 keeps 3.
    check("unstructured", linear(2, 3), &[0.1, -3.0, 2.0, 0.5, -0.2, 1.0], "0.5", "011 001");
}

#[test]
fn filter() {
    // Row energies 2, 9, 4.25; 3x keeps 2 weights = one row.
    check("filter", linear(3, 2), &[1.0, 1.0, 3.0, 0.0, 0.5, 2.0], "3x", "00 11 00");
}

/// conv 2 out x 2 in x 1x2: GEMM columns are (ch0,k0) (ch0,k1) (ch1,k0) (ch1,k1).
fn conv() -> (Layer, [f32; 8]) {
    (Layer::conv2d("c", 2, 2, 1, 2).unwrap(), [1.0, 1.0, 0.0, 3.0, 1.0, 1.0, 0.0, -1.0])
}

#[test]
fn channel_column_connectivity() {
    let (l, w) = conv();
    // Channel energies: ch0 = 4, ch1 = 10; half keeps one channel.
    check("channel", l.clone(), &w, "0.5", "0011 0011");
    // Column energies 2, 2, 0, 10: keep column 3 and, on the tie, column 0.
    check("column", l.clone(), &w, "0.5", "1001 1001");
    // Kernel energies (r0,ch0) 2, (r0,ch1) 9, (r1,ch0) 2, (r1,ch1) 1: keep 9 and the first 2.
    check("connectivity", l, &w, "0.5", "1111 0000");
}

#[test]
fn block_punched() {
    // One 2x2 block; unit k0 = columns {0,2}: 1+1+1+1 = 4; unit k1 = {1,3}: 0+4+9+0 = 13.
    let l = Layer::conv2d("c", 2, 2, 1, 2).unwrap();
    check("block-punched:2x2", l, &[1.0, 0.0, 1.0, 2.0, 1.0, 3.0, 1.0, 0.0], "0.5", "0101 0101");
}

#[test]
fn pattern_and_connectivity() {
    // Library: 01b = taps {0,1,3,4}, 0b8 = {3,4,5,7}, 1b0 = {4,5,7,8}.
    // Kernel [0 0 0 / 5 1 0 / 0 4 0]: energies 26, 42, 17 -> pattern 0b8.
    let l = Layer::conv2d("c", 1, 1, 3, 3).unwrap();
    let k0 = [0.0, 0.0, 0.0, 5.0, 1.0, 0.0, 0.0, 4.0, 0.0];
    check("pattern:3@01b.0b8.1b0", l, &k0, "0.5", "000111010");
    // A second kernel of ones in the top-left 2x2 (best pattern energy 4 < 42); at 75%
    // sparsity the budget of 4 weights keeps one kernel: the first.
    let l = Layer::conv2d("c", 2, 1, 3, 3).unwrap();
    let k1 = [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0];
    let w: Vec<f32> = k0.iter().chain(&k1).copied().collect();
    check("pattern:3+connectivity@01b.0b8.1b0", l, &w, "0.75", "000111010 000000000");
}

#[test]
fn bcr() {
    // Two 2x2 blocks. At 4x (budget 2, one weight per block): block 0 keeps its 3, block 1
    // its first 1 (ties to the lower row, then column).
    let w = [3.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0];
    check("bcr:2x2", linear(2, 4), &w, "4x", "1010 0000");
    // At 2x (two weights per block): 1x2 and 2x1 both keep 11; the smaller kr wins.
    check("bcr:2x2", linear(2, 4), &w, "2x", "1111 0000");
}

#[test]
fn block_and_balanced_block() {
    // 1x2 blocks: energies b00 = 2, b01 = 4, b10 = 9, b11 = 9.
    let w = [1.0, 1.0, 0.0, 2.0, 3.0, 0.0, 0.0, 3.0];
    check("block:1x2", linear(2, 4), &w, "0.5", "0000 1111");
    // Balanced: one block per block-row.
    check("block:1x2+balanced", linear(2, 4), &w, "0.5", "0011 1100");
}

#[test]
fn kgs() {
    // conv3d 1x1x(kt 2, kh 1, kw 2): K = 4 with k = t*2 + w. Spatial unit w0 = {0, 2} energy 2,
    // w1 = {1, 3} energy 4.
    let l = Layer::conv3d("c3", 1, 1, 2, 1, 2).unwrap();
    check("kgs:1x1", l, &[1.0, 2.0, 1.0, 0.0], "0.5", "0101");
    // Vanilla: whole kernels, energies 2 and 4.
    let l = Layer::conv3d("c3", 2, 1, 1, 1, 2).unwrap();
    check("kgs-vanilla:1x1", l, &[1.0, 1.0, 0.0, 2.0], "0.5", "00 11");
}

#[test]
fn n_of_m() {
    check("nm:1:2", linear(1, 4), &[1.0, -2.0, 3.0, 0.5], "0.5", "0110");
}

#[test]
fn polarized() {
    // Fragment [1, -2]: negative energy 4 > 1 -> keep -2. Fragment [3, -0.5] -> keep 3.
    let layer = linear(1, 4);
    let p = "polarized:2"
        .parse::<Scheme>()
        .unwrap()
        .project(&layer, &[1.0, -2.0, 3.0, -0.5], Target::DENSE)
        .unwrap();
    assert_eq!(p.values, vec![0.0, -2.0, 3.0, 0.0]);
    check("polarized:2", layer.clone(), &[1.0, -2.0, 3.0, -0.5], "0", "0110");
    // The sum rule differs from the energy rule on [3, -1, -1, -1.5]: sum -0.5 < 0 keeps the
    // negatives (energy 4.25 < 9 would keep the 3).
    let energy = "polarized:4"
        .parse::<Scheme>()
        .unwrap()
        .project(&layer, &[3.0, -1.0, -1.0, -1.5], Target::DENSE)
        .unwrap();
    let sum = "polarized:4+sum"
        .parse::<Scheme>()
        .unwrap()
        .project(&layer, &[3.0, -1.0, -1.0, -1.5], Target::DENSE)
        .unwrap();
    assert_eq!(energy.values, vec![3.0, 0.0, 0.0, 0.0]);
    assert_eq!(sum.values, vec![0.0, -1.0, -1.0, -1.5]);
    assert!(energy.exact && !sum.exact);
}
