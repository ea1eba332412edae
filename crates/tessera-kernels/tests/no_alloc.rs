//! Kernels take caller-provided scratch and never allocate: a counting global allocator checks
//! every engine's run (one thread: spawning pool tasks is rayon's business, not ours).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use tessera_kernels::formats::bcr::{BcrCompact, BcrConv};
use tessera_kernels::formats::block_punched::BlockPunched;
use tessera_kernels::formats::fkw::{Fkw, FkwConv};
use tessera_kernels::{ConvScratch, ConvShape, Isa, RowGroupConv, dense};
use tessera_sparsity::{PatternLibrary, Scheme, Target};

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|a| a.set(a.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations(f: impl FnOnce()) -> usize {
    let before = ALLOCS.with(Cell::get);
    f();
    ALLOCS.with(Cell::get) - before
}

#[test]
fn kernel_runs_do_not_allocate() {
    // The counter itself works.
    assert_eq!(allocations(|| drop(std::hint::black_box(vec![1u8; 10]))), 1);
    let shape = ConvShape::conv2d(16, 16, [10, 10], [3, 3], 1, 1).unwrap();
    let layer = shape.layer("c").unwrap();
    let w: Vec<f32> =
        (0..layer.geometry.len()).map(|i| ((i * 7 % 13) as f32 - 6.0) / 6.0).collect();
    let x = vec![0.25f32; 16 * 100];
    let mut y = vec![0.0f32; 16 * 100];
    for isa in Isa::available() {
        let p = "block-punched:8x4"
            .parse::<Scheme>()
            .unwrap()
            .project(&layer, &w, Target::Compression(4.0))
            .unwrap();
        let conv = RowGroupConv::new(
            BlockPunched::encode(&layer, &p.values, &p.mask, 8, 4).unwrap().to_row_groups(),
            shape,
        )
        .unwrap();
        let mut s = ConvScratch::for_conv(&conv);
        conv.run(isa, &x, &mut y, &mut s, 1).unwrap();
        assert_eq!(
            allocations(|| conv.run(isa, &x, &mut y, &mut s, 1).unwrap()),
            0,
            "row groups {isa}"
        );

        let p = "bcr:4x8"
            .parse::<Scheme>()
            .unwrap()
            .project(&layer, &w, Target::Compression(4.0))
            .unwrap();
        let bcr =
            BcrConv::new(BcrCompact::encode(&layer, &p.values, &p.mask, 4, 8).unwrap(), shape)
                .unwrap();
        let mut s = bcr.scratch();
        bcr.run(isa, &x, &mut y, &mut s, 1).unwrap();
        assert_eq!(allocations(|| bcr.run(isa, &x, &mut y, &mut s, 1).unwrap()), 0, "BCR {isa}");

        let lib = PatternLibrary::extract(8, [(&layer, &w[..])]).unwrap();
        let scheme: Scheme = format!("pattern:8+connectivity@{lib}").parse().unwrap();
        let p = scheme.project(&layer, &w, Target::Compression(8.0)).unwrap();
        let fkw =
            FkwConv::new(Fkw::encode(&layer, &p.values, &p.mask, &lib).unwrap(), shape).unwrap();
        let mut s = fkw.scratch();
        fkw.run(isa, &x, &mut y, &mut s, 1).unwrap();
        assert_eq!(allocations(|| fkw.run(isa, &x, &mut y, &mut s, 1).unwrap()), 0, "FKW {isa}");

        let m = RowGroupConv::gemm(
            BlockPunched::encode(&layer, &w, &tessera_sparsity::Mask::ones(w.len()), 8, 4)
                .unwrap()
                .to_row_groups(),
            1,
        )
        .unwrap();
        let mut yv = vec![0.0f32; 16];
        assert_eq!(
            allocations(
                || tessera_kernels::rowgroup::gemv(isa, m.matrix(), &x[..144], &mut yv, 1).unwrap()
            ),
            0,
            "gemv {isa}"
        );
        assert_eq!(
            allocations(|| dense::sgemv(isa, 16, 144, &w, &x[..144], &mut yv, 1).unwrap()),
            0,
            "sgemv {isa}"
        );
    }
}
