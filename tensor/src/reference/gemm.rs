//! Reference twin of `crate::gemm`.

/// C = alpha·A·B + beta·C by the definition, accumulating in f64 (beta == 0 ignores C).
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    rsa: usize,
    csa: usize,
    b: &[f32],
    rsb: usize,
    csb: usize,
    beta: f32,
    c: &mut [f32],
    rsc: usize,
    csc: usize,
) {
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k)
                .map(|p| f64::from(a[i * rsa + p * csa]) * f64::from(b[p * rsb + j * csb]))
                .sum();
            let cij = &mut c[i * rsc + j * csc];
            let old = if beta == 0.0 {
                0.0
            } else {
                f64::from(beta) * f64::from(*cij)
            };
            *cij = (f64::from(alpha) * dot + old) as f32;
        }
    }
}
