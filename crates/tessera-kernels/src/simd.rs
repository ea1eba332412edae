//! A minimal SIMD abstraction: kernels are written once against [`Simd`] and instantiated for
//! AVX-512, AVX2 + FMA and portable code by [`simd_entry!`].
//!
//! How it works: a kernel is an `#[inline(always)]` generic function over `S: Simd`. The macro
//! generates, per level, a `#[target_feature]` wrapper that calls it with that level's type;
//! the generic body (and the intrinsic calls in the impls below, also `#[inline(always)]`) is
//! inlined into the wrapper and compiled for that instruction set. The public entry point takes
//! an [`Isa`], which can only name a level the CPU supports, and matches on it.
//!
//! Rejected alternative: the `pulp` crate. It does the same thing with a larger surface; the
//! handful of operations below keep the kernels' inner loops readable and under our control.

#![allow(unsafe_op_in_unsafe_fn)] // every function here is a thin wrapper over one intrinsic

/// Operations on one vector of f32 lanes. All functions are `unsafe`: pointers must be valid
/// for `LANES` reads or writes (or `n` for the partial variants), and the intrinsics require
/// the instruction set of the implementing type, which [`simd_entry!`] guarantees.
pub(crate) trait Simd: Copy + 'static {
    /// Lanes per vector.
    const LANES: usize;
    /// The vector type.
    type V: Copy;

    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `a * b + c`, fused where the level has FMA.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise maximum.
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise minimum.
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn hsum(v: Self::V) -> f32;

    /// Loads `n < LANES` values, zero-filling the rest.
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize) -> Self::V {
        let mut buf = [0.0f32; 16];
        std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n.min(Self::LANES));
        Self::load(buf.as_ptr())
    }

    /// Stores the first `n < LANES` lanes.
    #[inline(always)]
    unsafe fn store_partial(p: *mut f32, v: Self::V, n: usize) {
        let mut buf = [0.0f32; 16];
        Self::store(buf.as_mut_ptr(), v);
        std::ptr::copy_nonoverlapping(buf.as_ptr(), p, n.min(Self::LANES));
    }

    /// Expand-load: the set bits of `mask` (lanes below `LANES`), in order, take consecutive
    /// values from `p`; other lanes are zero. `n` must be `mask`'s popcount (the reads).
    #[inline(always)]
    unsafe fn expand_load(p: *const f32, mask: u16, n: usize) -> Self::V {
        let _ = n;
        let mut buf = [0.0f32; 16];
        let (mut m, mut k) = (mask, 0);
        while m != 0 {
            let i = m.trailing_zeros() as usize;
            if i < Self::LANES {
                buf[i] = *p.add(k);
                k += 1;
            }
            m &= m - 1;
        }
        Self::load(buf.as_ptr())
    }

    /// `a` in the low half of the lanes, `b` in the high half.
    #[inline(always)]
    unsafe fn splat_halves(a: f32, b: f32) -> Self::V {
        let mut buf = [b; 16];
        buf[..Self::LANES / 2].fill(a);
        Self::load(buf.as_ptr())
    }

    /// The high half of the lanes added into the low half (the high half is unspecified).
    #[inline(always)]
    unsafe fn fold_halves(v: Self::V) -> Self::V {
        let mut buf = [0.0f32; 16];
        Self::store(buf.as_mut_ptr(), v);
        let h = Self::LANES / 2;
        for i in 0..h {
            buf[i] += buf[i + h];
        }
        Self::load(buf.as_ptr())
    }

    /// The even lanes of the concatenation `a:b` and its odd lanes: `(a0 a2 .. b0 b2 ..,
    /// a1 a3 .. b1 b3 ..)`.
    #[inline(always)]
    unsafe fn deinterleave(a: Self::V, b: Self::V) -> (Self::V, Self::V) {
        let mut buf = [0.0f32; 32];
        let l = Self::LANES;
        Self::store(buf.as_mut_ptr(), a);
        Self::store(buf.as_mut_ptr().add(l), b);
        let (mut even, mut odd) = ([0.0f32; 16], [0.0f32; 16]);
        for i in 0..l {
            even[i] = buf[2 * i];
            odd[i] = buf[2 * i + 1];
        }
        (Self::load(even.as_ptr()), Self::load(odd.as_ptr()))
    }

    /// Stores lane `i` to `p + i` for every set bit `i` of `mask`; other addresses are not
    /// touched (and need not be valid).
    #[inline(always)]
    unsafe fn store_masked(p: *mut f32, v: Self::V, mask: u16) {
        let mut buf = [0.0f32; 16];
        Self::store(buf.as_mut_ptr(), v);
        let mut m = mask;
        while m != 0 {
            let i = m.trailing_zeros() as usize;
            *p.wrapping_add(i) = buf[i];
            m &= m - 1;
        }
    }

    /// Stores the lanes set in `mask`, in lane order, to `p, p + 1, ...` (a compress store:
    /// `mask.count_ones()` floats written, nothing else touched).
    #[inline(always)]
    unsafe fn store_compressed(p: *mut f32, v: Self::V, mask: u16) {
        let mut buf = [0.0f32; 16];
        Self::store(buf.as_mut_ptr(), v);
        let mut m = mask;
        let mut k = 0;
        while m != 0 {
            let i = m.trailing_zeros() as usize;
            *p.wrapping_add(k) = buf[i];
            k += 1;
            m &= m - 1;
        }
    }

    /// Lane `i` is `p[i % 4]`: four values repeated across the vector (one load).
    #[inline(always)]
    unsafe fn broadcast4(p: *const f32) -> Self::V {
        let mut buf = [0.0f32; 16];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = *p.add(i % 4);
        }
        Self::load(buf.as_ptr())
    }

    /// Lane `i` is `p[i / 4]`: `LANES / 4` values, each spread over a quarter of the vector.
    #[inline(always)]
    unsafe fn splat_quarters(p: *const f32) -> Self::V {
        let mut buf = [0.0f32; 16];
        for (i, b) in buf.iter_mut().enumerate().take(Self::LANES) {
            *b = *p.add(i / 4);
        }
        Self::load(buf.as_ptr())
    }

    /// Writes lanes `4 q .. 4 q + 4` of `v` to `p[0..4]`, added to what is there unless
    /// `replace` (`q < LANES / 4`).
    #[inline(always)]
    unsafe fn quarter_add(p: *mut f32, v: Self::V, q: usize, replace: bool) {
        let mut buf = [0.0f32; 16];
        Self::store(buf.as_mut_ptr(), v);
        for (i, &b) in buf[4 * q..4 * q + 4].iter().enumerate() {
            *p.add(i) = if replace { b } else { *p.add(i) + b };
        }
    }

    /// Lane `4 q` holds the sum of lanes `4 q .. 4 q + 4` of `v` (other lanes: anything).
    #[inline(always)]
    unsafe fn sum_quads(v: Self::V) -> Self::V {
        let mut buf = [0.0f32; 16];
        Self::store(buf.as_mut_ptr(), v);
        for q in 0..Self::LANES / 4 {
            buf[4 * q] = (buf[4 * q] + buf[4 * q + 1]) + (buf[4 * q + 2] + buf[4 * q + 3]);
        }
        Self::load(buf.as_ptr())
    }

    /// Lane `i` is lane `idx[i]` of `a` (`idx[i] < LANES`) where bit `i` of `mask` is set,
    /// zero elsewhere.
    #[inline(always)]
    unsafe fn permute_maskz(a: Self::V, idx: &[u32; 16], mask: u16) -> Self::V {
        Self::permute2_maskz(a, a, idx, mask)
    }

    /// Lane `i` is lane `idx[i]` of the concatenation `a:b` (`idx[i] < 2 LANES`) where bit `i`
    /// of `mask` is set, zero elsewhere.
    #[inline(always)]
    unsafe fn permute2_maskz(a: Self::V, b: Self::V, idx: &[u32; 16], mask: u16) -> Self::V {
        let mut buf = [0.0f32; 32];
        let l = Self::LANES;
        Self::store(buf.as_mut_ptr(), a);
        Self::store(buf.as_mut_ptr().add(l), b);
        let mut out = [0.0f32; 16];
        for i in 0..l {
            if mask >> i & 1 == 1 {
                out[i] = buf[idx[i] as usize % (2 * l)];
            }
        }
        Self::load(out.as_ptr())
    }

    /// Transposes the square of `LANES` vectors `rows[..LANES]` in place: afterwards lane `i`
    /// of `rows[j]` is what lane `j` of `rows[i]` was. `rows` must hold at least `LANES`.
    #[inline(always)]
    unsafe fn transpose(rows: &mut [Self::V]) {
        let l = Self::LANES;
        let mut buf = [0.0f32; 256];
        for (i, &r) in rows[..l].iter().enumerate() {
            Self::store(buf.as_mut_ptr().add(i * l), r);
        }
        let mut out = [0.0f32; 256];
        for i in 0..l {
            for j in 0..l {
                out[j * l + i] = buf[i * l + j];
            }
        }
        for (j, r) in rows[..l].iter_mut().enumerate() {
            *r = Self::load(out.as_ptr().add(j * l));
        }
    }

    /// Loads lane `i` from `p + i` for every set bit `i` of `mask`, zero elsewhere; other
    /// addresses are not touched (and need not be valid).
    #[inline(always)]
    unsafe fn load_masked(p: *const f32, mask: u16) -> Self::V {
        let mut buf = [0.0f32; 16];
        let mut m = mask;
        while m != 0 {
            let i = m.trailing_zeros() as usize;
            if i < Self::LANES {
                buf[i] = *p.wrapping_add(i);
            }
            m &= m - 1;
        }
        Self::load(buf.as_ptr())
    }
}

/// Plain Rust over 8 lanes; LLVM vectorizes it for the baseline target.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Portable;

impl Simd for Portable {
    const LANES: usize = 8;
    type V = [f32; 8];

    #[inline(always)]
    unsafe fn zero() -> Self::V {
        [0.0; 8]
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self::V {
        [x; 8]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        std::ptr::read_unaligned(p.cast::<[f32; 8]>())
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        std::ptr::write_unaligned(p.cast::<[f32; 8]>(), v)
    }
    #[inline(always)]
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] * b[i] + c[i])
    }
    #[inline(always)]
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i] + b[i])
    }
    #[inline(always)]
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i].max(b[i]))
    }
    #[inline(always)]
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V {
        std::array::from_fn(|i| a[i].min(b[i]))
    }
    #[inline(always)]
    unsafe fn hsum(v: Self::V) -> f32 {
        ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]))
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Simd;
    use std::arch::x86_64::*;

    /// AVX2 + FMA, 8 lanes.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Avx2;

    impl Simd for Avx2 {
        const LANES: usize = 8;
        type V = __m256;

        #[inline(always)]
        unsafe fn deinterleave(a: Self::V, b: Self::V) -> (Self::V, Self::V) {
            // [a0 a2 b0 b2 | a4 a6 b4 b6], then the 64-bit quarters reordered 0 2 1 3.
            let even = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
            let odd = _mm256_shuffle_ps::<0b11_01_11_01>(a, b);
            (
                _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(even))),
                _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(odd))),
            )
        }

        #[inline(always)]
        unsafe fn transpose(rows: &mut [Self::V]) {
            let r: &mut [Self::V; 8] = match rows.first_chunk_mut() {
                Some(r) => r,
                None => return,
            };
            // Pairs of rows interleaved, then 64-bit pairs picked, then 128-bit halves
            // exchanged: 24 shuffles for the 8 x 8 square.
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let s0 = _mm256_shuffle_ps::<0b01_00_01_00>(t0, t2);
            let s1 = _mm256_shuffle_ps::<0b11_10_11_10>(t0, t2);
            let s2 = _mm256_shuffle_ps::<0b01_00_01_00>(t1, t3);
            let s3 = _mm256_shuffle_ps::<0b11_10_11_10>(t1, t3);
            let s4 = _mm256_shuffle_ps::<0b01_00_01_00>(t4, t6);
            let s5 = _mm256_shuffle_ps::<0b11_10_11_10>(t4, t6);
            let s6 = _mm256_shuffle_ps::<0b01_00_01_00>(t5, t7);
            let s7 = _mm256_shuffle_ps::<0b11_10_11_10>(t5, t7);
            r[0] = _mm256_permute2f128_ps::<0x20>(s0, s4);
            r[1] = _mm256_permute2f128_ps::<0x20>(s1, s5);
            r[2] = _mm256_permute2f128_ps::<0x20>(s2, s6);
            r[3] = _mm256_permute2f128_ps::<0x20>(s3, s7);
            r[4] = _mm256_permute2f128_ps::<0x31>(s0, s4);
            r[5] = _mm256_permute2f128_ps::<0x31>(s1, s5);
            r[6] = _mm256_permute2f128_ps::<0x31>(s2, s6);
            r[7] = _mm256_permute2f128_ps::<0x31>(s3, s7);
        }

        #[inline(always)]
        unsafe fn zero() -> Self::V {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn broadcast4(p: *const f32) -> Self::V {
            let q = _mm_loadu_ps(p);
            _mm256_set_m128(q, q)
        }
        #[inline(always)]
        unsafe fn splat_quarters(p: *const f32) -> Self::V {
            _mm256_set_m128(_mm_broadcast_ss(&*p.add(1)), _mm_broadcast_ss(&*p))
        }
        #[inline(always)]
        unsafe fn quarter_add(p: *mut f32, v: Self::V, q: usize, replace: bool) {
            let part =
                if q == 0 { _mm256_castps256_ps128(v) } else { _mm256_extractf128_ps::<1>(v) };
            _mm_storeu_ps(p, if replace { part } else { _mm_add_ps(_mm_loadu_ps(p), part) });
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self::V {
            _mm256_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self::V {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: Self::V) {
            _mm256_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
            _mm256_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn max(a: Self::V, b: Self::V) -> Self::V {
            _mm256_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn min(a: Self::V, b: Self::V) -> Self::V {
            _mm256_min_ps(a, b)
        }
        #[inline(always)]
        unsafe fn load_partial(p: *const f32, n: usize) -> Self::V {
            // `vmaskmovps` loads are cheap (unlike its stores) and never touch masked lanes.
            _mm256_maskload_ps(p, lane_mask(((1u32 << n.min(8)) - 1) as u16))
        }
        #[inline(always)]
        unsafe fn store_partial(p: *mut f32, v: Self::V, n: usize) {
            Self::store_masked(p, v, ((1u32 << n.min(8)) - 1) as u16)
        }
        #[inline(always)]
        unsafe fn load_masked(p: *const f32, mask: u16) -> Self::V {
            _mm256_maskload_ps(p, lane_mask(mask))
        }
        #[inline(always)]
        unsafe fn store_masked(p: *mut f32, v: Self::V, mask: u16) {
            // Not `vmaskmovps`: its store form is microcoded on AMD Zen. A full mask is one
            // plain store, a full half one 128-bit store, the rest 64- and 32-bit stores.
            // Measured on Zen 3 (block-punched 8x, 1 thread, min of runs): 3x3 16@32x32
            // 34.9 -> 19.5 us, 64@8x8 26.3 -> 13.8 us, 128@16x16 211 -> 153 us.
            let m = mask & 0xFF;
            if m == 0xFF {
                _mm256_storeu_ps(p, v);
                return;
            }
            store_quarter_masked(p, _mm256_castps256_ps128(v), m & 0xF);
            store_quarter_masked(p.wrapping_add(4), _mm256_extractf128_ps::<1>(v), m >> 4);
        }
        #[inline(always)]
        unsafe fn hsum(v: Self::V) -> f32 {
            let hi = _mm256_extractf128_ps(v, 1);
            let s = _mm_add_ps(_mm256_castps256_ps128(v), hi);
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }
    }

    /// AVX2 lane mask: lane `i` all ones where bit `i` of `mask` is set.
    #[inline(always)]
    unsafe fn lane_mask(mask: u16) -> __m256i {
        let bits = _mm256_set1_epi32(i32::from(mask));
        let sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        _mm256_cmpeq_epi32(_mm256_and_si256(bits, sel), sel)
    }

    /// Stores the two low lanes of `pair` to `q..q + 2` (one unaligned 64-bit write).
    #[inline(always)]
    unsafe fn store_pair(q: *mut f32, pair: __m128) {
        std::ptr::write_unaligned(q.cast::<f64>(), _mm_cvtsd_f64(_mm_castps_pd(pair)));
    }

    /// Stores the lanes of `v` selected by the low four bits of `mask` to `p..p + 4`.
    /// Only the selected addresses need be valid: `p` itself may lie outside the allocation
    /// (offsets use wrapping arithmetic), and 64-bit stores are unaligned writes.
    #[inline(always)]
    unsafe fn store_quarter_masked(p: *mut f32, v: __m128, mask: u16) {
        match mask & 0xF {
            0 => {}
            0xF => _mm_storeu_ps(p, v),
            m => {
                if m & 3 == 3 {
                    store_pair(p, v);
                } else if m & 1 != 0 {
                    _mm_store_ss(p, v);
                } else if m & 2 != 0 {
                    _mm_store_ss(p.wrapping_add(1), _mm_movehdup_ps(v));
                }
                let h = _mm_movehl_ps(v, v);
                if m & 0xC == 0xC {
                    store_pair(p.wrapping_add(2), h);
                } else if m & 4 != 0 {
                    _mm_store_ss(p.wrapping_add(2), h);
                } else if m & 8 != 0 {
                    _mm_store_ss(p.wrapping_add(3), _mm_movehdup_ps(h));
                }
            }
        }
    }

    /// AVX-512F, 16 lanes, with native masked tails.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Avx512;

    impl Simd for Avx512 {
        const LANES: usize = 16;
        type V = __m512;

        #[inline(always)]
        unsafe fn deinterleave(a: Self::V, b: Self::V) -> (Self::V, Self::V) {
            let even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
            let odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
            (_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b))
        }

        #[inline(always)]
        unsafe fn zero() -> Self::V {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn broadcast4(p: *const f32) -> Self::V {
            _mm512_broadcast_f32x4(_mm_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn splat_quarters(p: *const f32) -> Self::V {
            // One 4-float load and a permute (lane i takes lane i / 4).
            let idx = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
            _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_loadu_ps(p)))
        }
        #[inline(always)]
        unsafe fn quarter_add(p: *mut f32, v: Self::V, q: usize, replace: bool) {
            let part = match q {
                0 => _mm512_castps512_ps128(v),
                1 => _mm512_extractf32x4_ps::<1>(v),
                2 => _mm512_extractf32x4_ps::<2>(v),
                _ => _mm512_extractf32x4_ps::<3>(v),
            };
            _mm_storeu_ps(p, if replace { part } else { _mm_add_ps(_mm_loadu_ps(p), part) });
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self::V {
            _mm512_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self::V {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: Self::V) {
            _mm512_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
            _mm512_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn max(a: Self::V, b: Self::V) -> Self::V {
            _mm512_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn min(a: Self::V, b: Self::V) -> Self::V {
            _mm512_min_ps(a, b)
        }
        #[inline(always)]
        unsafe fn hsum(v: Self::V) -> f32 {
            _mm512_reduce_add_ps(v)
        }
        #[inline(always)]
        unsafe fn load_partial(p: *const f32, n: usize) -> Self::V {
            _mm512_maskz_loadu_ps(((1u32 << n) - 1) as __mmask16, p)
        }
        #[inline(always)]
        unsafe fn store_partial(p: *mut f32, v: Self::V, n: usize) {
            _mm512_mask_storeu_ps(p, ((1u32 << n) - 1) as __mmask16, v)
        }
        #[inline(always)]
        unsafe fn store_masked(p: *mut f32, v: Self::V, mask: u16) {
            _mm512_mask_storeu_ps(p, mask, v)
        }
        #[inline(always)]
        unsafe fn store_compressed(p: *mut f32, v: Self::V, mask: u16) {
            // Compressed in registers, then a masked store: `vcompressps` to memory is
            // microcoded on AMD Zen 4.
            let packed = _mm512_maskz_compress_ps(mask, v);
            _mm512_mask_storeu_ps(p, ((1u32 << mask.count_ones()) - 1) as __mmask16, packed)
        }
        #[inline(always)]
        unsafe fn load_masked(p: *const f32, mask: u16) -> Self::V {
            _mm512_maskz_loadu_ps(mask, p)
        }
        #[inline(always)]
        unsafe fn permute2_maskz(a: Self::V, b: Self::V, idx: &[u32; 16], mask: u16) -> Self::V {
            let i = _mm512_loadu_si512(idx.as_ptr().cast());
            _mm512_maskz_permutex2var_ps(mask, a, i, b)
        }
        #[inline(always)]
        unsafe fn expand_load(p: *const f32, mask: u16, n: usize) -> Self::V {
            // A masked load of the n values, then the register form of vexpandps: the memory
            // form is microcoded on Zen (3x slower in BCR's GEMV).
            let low = ((1u32 << n) - 1) as __mmask16;
            _mm512_maskz_expand_ps(mask, _mm512_maskz_loadu_ps(low, p))
        }
        #[inline(always)]
        unsafe fn permute_maskz(a: Self::V, idx: &[u32; 16], mask: u16) -> Self::V {
            let i = _mm512_loadu_si512(idx.as_ptr().cast());
            _mm512_maskz_permutexvar_ps(mask, i, a)
        }
        #[inline(always)]
        unsafe fn sum_quads(v: Self::V) -> Self::V {
            // Pairs swapped, then halves of each quad swapped: every lane of a quad holds
            // its sum.
            let t = _mm512_add_ps(v, _mm512_permute_ps::<0b10_11_00_01>(v));
            _mm512_add_ps(t, _mm512_permute_ps::<0b01_00_11_10>(t))
        }
        #[inline(always)]
        unsafe fn splat_halves(a: f32, b: f32) -> Self::V {
            _mm512_mask_broadcastss_ps(_mm512_set1_ps(a), 0xff00, _mm_set_ss(b))
        }
        #[inline(always)]
        unsafe fn fold_halves(v: Self::V) -> Self::V {
            _mm512_add_ps(v, _mm512_shuffle_f32x4::<0b01_00_11_10>(v, v))
        }
    }
}

/// Defines `pub fn $name(isa: Isa, args...)` that runs the generic kernel `$generic::<S>` at
/// the instruction-set level `isa`.
macro_rules! simd_entry {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? => $generic:ident;) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)] // kernels take their operands one by one
        $vis fn $name(isa: $crate::isa::Isa, $($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $generic::<$crate::simd::Avx512>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $generic::<$crate::simd::Avx2>($($arg),*)
                }
                match isa.0 {
                    // SAFETY: an `Isa` naming a level only exists when runtime detection found
                    // that level's features on this CPU (see `Isa::available`).
                    $crate::isa::Level::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    $crate::isa::Level::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::isa::Level::Portable => {}
                }
            }
            $generic::<$crate::simd::Portable>($($arg),*)
        }
    };
}
pub(crate) use simd_entry;

/// Hints the CPU to bring the cache line holding `p` into L1. Any address is allowed: a
/// prefetch never faults and never changes memory (a no-op off x86-64).
#[inline(always)]
pub(crate) fn prefetch(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` reads nothing architecturally and cannot fault, whatever `p` is;
    // SSE is part of the x86-64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::Simd;
    use crate::isa::Isa;

    /// Every mask of one vector against a scalar reference: a masked store writes the selected
    /// lanes and nothing else (guard values on both sides stay), a masked load reads the
    /// selected lanes and zeroes the rest, a compress store writes the selected lanes in order
    /// to the first addresses and nothing after them, and the partial forms equal their
    /// prefix masks;
    /// `broadcast4` repeats its four values across the vector, `quarter_add` adds (or
    /// writes) one quarter of a vector and nothing else.
    #[inline(always)]
    fn masked_ops_generic<S: Simd>() -> Result<(), String> {
        let l = S::LANES;
        let src: Vec<f32> = (0..l).map(|i| i as f32 + 1.0).collect();
        let mut lanes = vec![0.0f32; l];
        for mask in 0..(1u32 << l) {
            let mask = mask as u16;
            let selected = |i: usize| mask & (1 << i) != 0;
            let mut buf = vec![-1.0f32; l + 2];
            // SAFETY: `src` holds one vector; `buf[1..]` holds one vector plus a guard.
            unsafe { S::store_masked(buf.as_mut_ptr().add(1), S::load(src.as_ptr()), mask) };
            let want: Vec<f32> = (0..l + 2)
                .map(|k| if k >= 1 && k <= l && selected(k - 1) { src[k - 1] } else { -1.0 })
                .collect();
            if buf != want {
                return Err(format!("store_masked {mask:#x}: {buf:?}, expected {want:?}"));
            }
            let mut buf = vec![-1.0f32; l + 2];
            // SAFETY: as above; a compress store writes at most one vector.
            unsafe { S::store_compressed(buf.as_mut_ptr().add(1), S::load(src.as_ptr()), mask) };
            let kept: Vec<f32> = (0..l).filter(|&i| selected(i)).map(|i| src[i]).collect();
            let want: Vec<f32> = (0..l + 2)
                .map(|k| if k >= 1 && k <= kept.len() { kept[k - 1] } else { -1.0 })
                .collect();
            if buf != want {
                return Err(format!("store_compressed {mask:#x}: {buf:?}, expected {want:?}"));
            }
            // SAFETY: `src` and `lanes` hold one vector each.
            unsafe { S::store(lanes.as_mut_ptr(), S::load_masked(src.as_ptr(), mask)) };
            let want: Vec<f32> = (0..l).map(|i| if selected(i) { src[i] } else { 0.0 }).collect();
            if lanes != want {
                return Err(format!("load_masked {mask:#x}: {lanes:?}, expected {want:?}"));
            }
        }
        for n in 0..l {
            let mut buf = vec![-1.0f32; l + 1];
            // SAFETY: as above; the partial forms touch the first `n` lanes only.
            unsafe {
                S::store_partial(buf.as_mut_ptr(), S::load(src.as_ptr()), n);
                S::store(lanes.as_mut_ptr(), S::load_partial(src.as_ptr(), n));
            }
            let want: Vec<f32> = (0..=l).map(|k| if k < n { src[k] } else { -1.0 }).collect();
            if buf != want {
                return Err(format!("store_partial {n}: {buf:?}, expected {want:?}"));
            }
            let want: Vec<f32> = (0..l).map(|k| if k < n { src[k] } else { 0.0 }).collect();
            if lanes != want {
                return Err(format!("load_partial {n}: {lanes:?}, expected {want:?}"));
            }
        }
        // SAFETY: `src` holds at least 4 values, `lanes` one vector.
        unsafe { S::store(lanes.as_mut_ptr(), S::broadcast4(src.as_ptr().add(1))) };
        let want: Vec<f32> = (0..l).map(|i| src[1 + i % 4]).collect();
        if lanes != want {
            return Err(format!("broadcast4: {lanes:?}, expected {want:?}"));
        }
        // SAFETY: `src` holds a vector's floats, `lanes` one vector.
        unsafe { S::store(lanes.as_mut_ptr(), S::splat_quarters(src.as_ptr())) };
        let want: Vec<f32> = (0..l).map(|i| src[i / 4]).collect();
        if lanes != want {
            return Err(format!("splat_quarters: {lanes:?}, expected {want:?}"));
        }
        for q in 0..l / 4 {
            for replace in [false, true] {
                let mut buf = [1.0f32, 2.0, 3.0, 4.0, -1.0];
                // SAFETY: `buf` holds 4 floats and a guard, `src` one vector.
                unsafe { S::quarter_add(buf.as_mut_ptr(), S::load(src.as_ptr()), q, replace) };
                let want: Vec<f32> = (0..5)
                    .map(|i| match i {
                        4 => -1.0,
                        _ if replace => src[4 * q + i],
                        _ => src[4 * q + i] + (i + 1) as f32,
                    })
                    .collect();
                if buf[..] != want[..] {
                    return Err(format!("quarter_add {q} {replace}: {buf:?}, expected {want:?}"));
                }
            }
        }
        // sum_quads: lane 4 q is the sum of its quad; permute_maskz: lane i is lane idx[i]
        // where the mask is set, zero elsewhere.
        // SAFETY: `src` and `lanes` hold one vector each.
        unsafe { S::store(lanes.as_mut_ptr(), S::sum_quads(S::load(src.as_ptr()))) };
        for q in 0..l / 4 {
            let want: f32 = src[4 * q..4 * q + 4].iter().sum();
            if lanes[4 * q] != want {
                return Err(format!("sum_quads {q}: {lanes:?}, expected {want} at lane {}", 4 * q));
            }
        }
        let idx: [u32; 16] = std::array::from_fn(|i| ((i * 7 + 3) % l) as u32);
        let mask = 0b1011_0110_1101_0011u16;
        // SAFETY: as above.
        unsafe {
            S::store(lanes.as_mut_ptr(), S::permute_maskz(S::load(src.as_ptr()), &idx, mask))
        };
        let want: Vec<f32> =
            (0..l).map(|i| if mask >> i & 1 == 1 { src[idx[i] as usize] } else { 0.0 }).collect();
        if lanes != want {
            return Err(format!("permute_maskz: {lanes:?}, expected {want:?}"));
        }
        Ok(())
    }

    simd_entry! {
        fn masked_ops() -> Result<(), String> => masked_ops_generic;
    }

    #[test]
    fn masked_and_partial_loads_and_stores_match_the_scalar_reference_on_every_level() {
        for isa in Isa::available() {
            if let Err(e) = masked_ops(isa) {
                panic!("{isa}: {e}");
            }
        }
    }

    /// The square transpose against index arithmetic: every value distinct.
    #[inline(always)]
    fn transpose_generic<S: Simd>() -> Result<(), String> {
        let l = S::LANES;
        let src: Vec<f32> = (0..l * l).map(|i| i as f32).collect();
        let mut got = vec![0.0f32; l * l];
        // SAFETY: `src` and `got` hold `l` vectors each; `rows` holds 16 >= `l`.
        unsafe {
            let mut rows = [S::zero(); 16];
            for (i, r) in rows[..l].iter_mut().enumerate() {
                *r = S::load(src.as_ptr().add(i * l));
            }
            S::transpose(&mut rows);
            for (j, &r) in rows[..l].iter().enumerate() {
                S::store(got.as_mut_ptr().add(j * l), r);
            }
        }
        for i in 0..l {
            for j in 0..l {
                if got[j * l + i] != src[i * l + j] {
                    return Err(format!("lane {i} of row {j}: {}", got[j * l + i]));
                }
            }
        }
        Ok(())
    }

    simd_entry! {
        fn transpose_check() -> Result<(), String> => transpose_generic;
    }

    #[test]
    fn the_square_transpose_matches_index_arithmetic_on_every_level() {
        for isa in Isa::available() {
            if let Err(e) = transpose_check(isa) {
                panic!("{isa}: {e}");
            }
        }
    }
}
