//! The GEMM tests: every product against the reference, at every SIMD level this CPU has.

use super::*;
use crate::reference::gemm as reference;
use crate::simd::Level;
use crate::testutil::{assert_close, for_each_level, rand_vec, rng};

/// The product `[m, k, n]` of row-major buffers `a` (m×k) and `b` (k×n) into `c` (m×n).
fn row_major<'a>(
    dims: [usize; 3],
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    level: Level,
) -> Product<'a> {
    let [m, k, n] = dims;
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    let (ks, ns) = (k as isize, n as isize);
    Product::new(
        dims,
        RawMat::new(a.as_ptr(), ks, 1),
        RawMat::new(b.as_ptr(), ns, 1),
        RawMatMut::new(c.as_mut_ptr(), ns, 1),
        level,
    )
}

/// A `rows×cols` matrix stored row-major, or column-major when `trans`, with `pad` unused
/// elements after each line: (buffer length, row stride, column stride).
fn layout(rows: usize, cols: usize, trans: bool, pad: usize) -> (usize, usize, usize) {
    if trans {
        (cols * (rows + pad), 1, rows + pad)
    } else {
        (rows * (cols + pad), cols + pad, 1)
    }
}

/// Compares `sgemm` with the reference for one shape, transposes given as `[A, B, C]`, at
/// every level.
fn check(dims: [usize; 3], trans: [bool; 3], alpha: f32, beta: f32, seed: u64) {
    for_each_level(|level| check_at(level, dims, trans, [alpha, beta], seed));
}

fn check_at(level: Level, dims: [usize; 3], trans: [bool; 3], [alpha, beta]: [f32; 2], seed: u64) {
    let [m, k, n] = dims;
    let mut r = rng(seed);
    let (la, rsa, csa) = layout(m, k, trans[0], 1);
    let (lb, rsb, csb) = layout(k, n, trans[1], 2);
    let (lc, rsc, csc) = layout(m, n, trans[2], 3);
    let (a, b) = (rand_vec(&mut r, la), rand_vec(&mut r, lb));
    let mut c = rand_vec(&mut r, lc);
    if beta == 0.0 {
        // beta == 0 must not read C.
        c.iter_mut().step_by(2).for_each(|v| *v = f32::NAN);
    }
    let original = c.clone();
    let mut expected = c.clone();
    reference::sgemm(
        m,
        k,
        n,
        alpha,
        &a,
        rsa,
        csa,
        &b,
        rsb,
        csb,
        beta,
        &mut expected,
        rsc,
        csc,
    );
    let s = |v: usize| v as isize;
    sgemm(
        m,
        k,
        n,
        alpha,
        &a,
        s(rsa),
        s(csa),
        &b,
        s(rsb),
        s(csb),
        beta,
        &mut c,
        s(rsc),
        s(csc),
    );
    let index = |e: usize| e / n * rsc + e % n * csc;
    let pick = |v: &[f32]| -> Vec<f32> { (0..m * n).map(|e| v[index(e)]).collect() };
    let what = format!("sgemm {dims:?} trans {trans:?} alpha {alpha} beta {beta} at {level}");
    assert_close(&pick(&c), &pick(&expected), 1e-5, &what);
    // The padding between C's lines is never written.
    let mut in_c = vec![false; lc];
    (0..m * n).for_each(|e| in_c[index(e)] = true);
    for ((v, o), inside) in c.iter().zip(&original).zip(in_c) {
        assert!(
            inside || v.to_bits() == o.to_bits(),
            "{what}: padding written"
        );
    }
}

#[test]
fn all_transposes_scalars_and_tile_edges() {
    let sizes = [1, 7, 17, 65, 257];
    let mut seed = 0;
    for i in 0..sizes.len() {
        for shift in [1, 2] {
            let dims = [sizes[i], sizes[(i + shift) % 5], sizes[(i + 2 * shift) % 5]];
            for t in 0..8 {
                let trans = [t & 1 != 0, t & 2 != 0, t & 4 != 0];
                for (alpha, beta) in [(1.0, 0.0), (0.75, -1.5), (-2.0, 1.0)] {
                    seed += 1;
                    check(dims, trans, alpha, beta, seed);
                }
            }
        }
    }
}

#[test]
fn matrix_vector_products() {
    // One row or one column of C with contiguous lines (dot products: k below, at and past
    // the 32 lanes, with a tail) and with strided ones (the GEMM kernels), all scalars, and
    // sizes past the threaded split.
    let mut seed = 200;
    for k in [1, 31, 32, 77, 1280] {
        for dims in [[1, k, 1], [1, k, 1000], [300, k, 1], [5000, k, 1]] {
            for t in 0..8 {
                let trans = [t & 1 != 0, t & 2 != 0, t & 4 != 0];
                for (alpha, beta) in [(1.0, 0.0), (0.75, -1.5)] {
                    seed += 1;
                    check(dims, trans, alpha, beta, seed);
                }
            }
        }
    }
}

#[test]
fn threaded_split_over_columns_and_rows() {
    // Both exceed PAR_MIN_MACS, so with a multi-thread global pool they take the split path.
    check([257, 65, 257], [false, true, false], 0.5, 2.0, 1);
    check([300, 65, 257], [true, false, true], 1.0, 0.0, 2);
    check([65, 1100, 65], [false, false, false], 1.0, 0.5, 3);
}

#[test]
fn splits_from_inside_a_worker() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.install(|| check([257, 65, 257], [false, false, false], 1.0, 0.0, 4));
}

/// The reference product alpha·A·B of row-major `a` (m×k) and `b` (k×n).
fn expected_row_major([m, k, n]: [usize; 3], alpha: f32, a: &[f32], b: &[f32]) -> Vec<f32> {
    let mut c = vec![0.0; m * n];
    reference::sgemm(m, k, n, alpha, a, k, 1, b, n, 1, 0.0, &mut c, n, 1);
    c
}

#[test]
fn epilogue_matches_a_separate_pass() {
    // Two inner blocks (the epilogue runs once, after the last), row blocks past the packing
    // block, a column edge, sizes that take the threaded split over rows and columns, and
    // short inner dimensions.
    let shapes = [
        [13, 257, 70],
        [130, 300, 45],
        [300, 65, 257],
        [40, 65, 900],
        [13, 24, 70],
        [40, 32, 900],
        [1000, 1280, 1],
        [1, 77, 300],
    ];
    for (i, &[m, k, n]) in shapes.iter().enumerate() {
        let mut r = rng(20 + i as u64);
        let (a, b) = (rand_vec(&mut r, m * k), rand_vec(&mut r, k * n));
        let bias: Vec<f32> = rand_vec(&mut r, m).iter().map(|v| 4.0 * v).collect();
        for relu6 in [false, true] {
            let mut expected = expected_row_major([m, k, n], 1.5, &a, &b);
            for (e, v) in expected.iter_mut().enumerate() {
                *v += bias[e / n];
                if relu6 {
                    *v = v.clamp(0.0, 6.0);
                }
            }
            let epilogue = Epilogue {
                bias: Some(&bias),
                relu6,
            };
            for_each_level(|level| {
                let mut c = vec![f32::NAN; m * n];
                let product = row_major([m, k, n], &a, &b, &mut c, level)
                    .with_scalars(1.5, 0.0)
                    .with_epilogue(epilogue);
                // SAFETY: every matrix is exactly its buffer.
                unsafe { product.run() };
                let what = format!("epilogue {m}×{k}×{n} relu6 {relu6} at {level}");
                assert_close(&c, &expected, 1e-5, &what);
                if relu6 {
                    assert!(
                        c.contains(&0.0) && c.contains(&6.0),
                        "{what}: clamp never hit"
                    );
                }
            });
        }
    }
}

#[test]
fn prepacked_lhs_is_read_in_place_of_a() {
    // Row blocks past MC, two inner blocks, and the threaded split over rows (m > n), whose
    // second block starts mid-packing.
    for (i, &[m, k, n]) in [[13, 7, 70], [130, 300, 45], [300, 65, 257]]
        .iter()
        .enumerate()
    {
        let mut r = rng(40 + i as u64);
        let (a, other, b) = (
            rand_vec(&mut r, m * k),
            rand_vec(&mut r, m * k),
            rand_vec(&mut r, k * n),
        );
        // Packed where the level has the AVX-512 kernel, and only there.
        for_each_level(|level| {
            let packed = PackedLhs::new(m, k, &other, k, 1);
            assert_eq!(
                packed.is_some(),
                level == Level::Avx512,
                "packing at {level}"
            );
        });
        let Some(packed) = PackedLhs::new(m, k, &other, k, 1) else {
            eprintln!("note: no AVX-512 here: matrices are never prepacked");
            return;
        };
        // The AVX-512 kernel must read the packing (here of another matrix), not `a`; the
        // other levels read `a`.
        for_each_level(|level| {
            let read = if level == Level::Avx512 { &other } else { &a };
            let expected = expected_row_major([m, k, n], 1.0, read, &b);
            let mut c = vec![f32::NAN; m * n];
            let product = row_major([m, k, n], &a, &b, &mut c, level).with_packed_a(Some(&packed));
            // SAFETY: every matrix is exactly its buffer.
            unsafe { product.run() };
            let what = format!("prepacked {m}×{k}×{n} at {level}");
            assert_close(&c, &expected, 1e-5, &what);
        });
    }
}

#[test]
fn prepacked_rhs_is_read_in_place_of_b() {
    // Two inner blocks (k = 300 > KC), a last strip of 13 or 1 columns, and the threaded
    // splits over columns (strip offsets into the packing) and over rows.
    for (i, &[m, k, n]) in [[13, 7, 45], [130, 300, 45], [40, 300, 897], [300, 65, 257]]
        .iter()
        .enumerate()
    {
        for level in crate::simd::supported_levels().filter(|&l| l < Level::Avx512) {
            assert!(RhsLayout::new(k, n, level).is_none(), "layout at {level}");
        }
        let Some(layout) = RhsLayout::new(k, n, crate::simd::default_level()) else {
            eprintln!("note: no AVX-512 here: B is never prepacked");
            return;
        };
        let mut r = rng(60 + i as u64);
        let (a, b) = (rand_vec(&mut r, m * k), rand_vec(&mut r, k * n));
        let mut buf = vec![f32::NAN; layout.len() + 16];
        let skip = buf.as_ptr().align_offset(64);
        let packed = &mut buf[skip..skip + layout.len()];
        for (row, values) in b.chunks_exact(n).enumerate() {
            layout.put_row(row, values, packed);
        }
        assert!(packed.iter().all(|v| v.is_finite()), "put_row left a gap");
        let expected = expected_row_major([m, k, n], 1.0, &a, &b);
        let mut c = vec![f32::NAN; m * n];
        // B is only read through its packing: its pointer is null.
        let product = Product {
            b: RawMat::new(std::ptr::null(), 0, 0),
            ..row_major([m, k, n], &a, &b, &mut c, Level::Avx512)
        }
        .with_packed_b(Some(PackedRhs::new(layout, packed)));
        // SAFETY: A and C are exactly their buffers; B is only read through its packing.
        unsafe { product.run() };
        assert_close(&c, &expected, 1e-5, &format!("packed B {m}×{k}×{n}"));
    }
}

#[test]
fn empty_inner_dimension_scales_c() {
    for_each_level(|_| {
        let mut c = vec![1.0, 2.0, 3.0, 4.0];
        sgemm(2, 0, 2, 1.0, &[], 0, 0, &[], 0, 0, 0.5, &mut c, 2, 1);
        assert_eq!(c, [0.5, 1.0, 1.5, 2.0]);
        let mut c = vec![f32::NAN; 4];
        sgemm(2, 0, 2, 1.0, &[], 0, 0, &[], 0, 0, 0.0, &mut c, 2, 1);
        assert_eq!(c, [0.0; 4]);
    });
}

#[test]
#[should_panic(expected = "exceeds its slice")]
fn short_slice_is_caught_before_the_kernel() {
    let mut c = vec![0.0; 4];
    sgemm(
        2, 3, 2, 1.0, &[0.0; 5], 3, 1, &[0.0; 6], 2, 1, 0.0, &mut c, 2, 1,
    );
}

#[test]
#[should_panic(expected = "alias")]
fn aliasing_output_is_rejected() {
    let mut c = vec![0.0; 4];
    sgemm(
        2, 1, 2, 1.0, &[0.0; 2], 1, 1, &[0.0; 2], 1, 1, 0.0, &mut c, 1, 1,
    );
}

fn tensor(r: &mut rand::rngs::StdRng, shape: &[usize]) -> Tensor {
    Tensor::from_vec(shape, rand_vec(r, shape.iter().product())).unwrap()
}

/// Reference product of row-major matrices with optional transposes.
fn product(a: &Tensor, ta: bool, b: &Tensor, tb: bool, m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0.0; m * n];
    let (rsa, csa) = if ta { (1, m) } else { (k, 1) };
    let (rsb, csb) = if tb { (1, k) } else { (n, 1) };
    reference::sgemm(
        m,
        k,
        n,
        1.0,
        a.data(),
        rsa,
        csa,
        b.data(),
        rsb,
        csb,
        0.0,
        &mut c,
        n,
        1,
    );
    c
}

#[test]
fn matmul_and_linear_match_reference() {
    for_each_level(matmul_and_linear_at);
}

fn matmul_and_linear_at(level: Level) {
    let mut r = rng(9);
    let (rows, i, o) = (13, 17, 7);
    let x = tensor(&mut r, &[rows, i]);
    let w = tensor(&mut r, &[o, i]);
    let bias = tensor(&mut r, &[o]);
    let dy = tensor(&mut r, &[rows, o]);

    let wt = tensor(&mut r, &[i, o]);
    let c = matmul(&x, &wt).unwrap();
    assert_eq!(c.shape(), [rows, o]);
    assert_close(
        c.data(),
        &product(&x, false, &wt, false, rows, i, o),
        1e-5,
        &format!("matmul at {level}"),
    );

    let y = linear_forward(&x, &w, Some(&bias)).unwrap();
    let mut expected = product(&x, false, &w, true, rows, i, o);
    expected
        .iter_mut()
        .enumerate()
        .for_each(|(e, v)| *v += bias.data()[e % o]);
    assert_close(y.data(), &expected, 1e-5, "linear_forward");
    let y = linear_forward(&x, &w, None).unwrap();
    assert_close(
        y.data(),
        &product(&x, false, &w, true, rows, i, o),
        1e-5,
        "no bias",
    );

    let dx = linear_backward_input(&dy, &w).unwrap();
    assert_eq!(dx.shape(), [rows, i]);
    assert_close(
        dx.data(),
        &product(&dy, false, &w, false, rows, o, i),
        1e-5,
        "dx",
    );
    let dw = linear_backward_weight(&dy, &x).unwrap();
    assert_eq!(dw.shape(), [o, i]);
    assert_close(
        dw.data(),
        &product(&dy, true, &x, false, o, rows, i),
        1e-5,
        "dw",
    );
}

#[test]
fn tensor_products_reject_bad_shapes() {
    let z = Tensor::zeros;
    assert!(matmul(&z(&[2, 3]), &z(&[4, 2])).is_err());
    assert!(matmul(&z(&[2, 3, 1]), &z(&[3, 2])).is_err());
    assert!(linear_forward(&z(&[2, 3]), &z(&[4, 2]), None).is_err());
    assert!(linear_forward(&z(&[2, 3]), &z(&[4, 3]), Some(&z(&[3]))).is_err());
    assert!(linear_forward(&z(&[3]), &z(&[4, 3]), None).is_err());
    assert!(linear_backward_input(&z(&[2, 4]), &z(&[3, 4])).is_err());
    assert!(linear_backward_weight(&z(&[2, 4]), &z(&[3, 5])).is_err());
}
