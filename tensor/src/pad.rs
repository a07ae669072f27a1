//! Zero padding of NCHW maps and its adjoint (cropping). Pad-first evaluation of a linearised
//! block pads its input once, runs the expand conv on the padded map and the depthwise conv with
//! padding 0, which makes it equal to the merged conv at the borders too.

use rayon::prelude::*;

use crate::{Result, Tensor};

/// Pads every H×W plane with `p` zeros on all four sides.
pub fn pad2d(x: &Tensor, p: usize) -> Result<Tensor> {
    let [n, c, h, w] = x.nchw("pad2d")?;
    let (ph, pw) = (h + 2 * p, w + 2 * p);
    let mut out = vec![0f32; n * c * ph * pw];
    out.par_chunks_mut(ph * pw)
        .zip(x.data().par_chunks(h * w))
        .for_each(|(dst, src)| {
            for (i, row) in src.chunks_exact(w).enumerate() {
                let start = (i + p) * pw + p;
                dst[start..start + w].copy_from_slice(row);
            }
        });
    Tensor::from_vec(&[n, c, ph, pw], out)
}

/// The adjoint of [`pad2d`]: removes `p` values from every side of every plane.
pub fn crop2d(x: &Tensor, p: usize) -> Result<Tensor> {
    let [n, c, ph, pw] = x.nchw("crop2d")?;
    if ph < 2 * p || pw < 2 * p {
        return Err(crate::TensorError::shape(
            "crop2d",
            format!("cannot crop {p} from each side of {ph}×{pw}"),
        ));
    }
    let (h, w) = (ph - 2 * p, pw - 2 * p);
    let mut out = vec![0f32; n * c * h * w];
    if h * w > 0 {
        out.par_chunks_mut(h * w)
            .zip(x.data().par_chunks(ph * pw))
            .for_each(|(dst, src)| {
                for (i, row) in dst.chunks_exact_mut(w).enumerate() {
                    let start = (i + p) * pw + p;
                    row.copy_from_slice(&src[start..start + w]);
                }
            });
    }
    Tensor::from_vec(&[n, c, h, w], out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_places_values_and_crop_inverts_it() {
        let x = Tensor::from_vec(&[1, 2, 2, 3], (1..=12).map(|v| v as f32).collect()).unwrap();
        let y = pad2d(&x, 1).unwrap();
        assert_eq!(y.shape(), &[1, 2, 4, 5]);
        #[rustfmt::skip]
        let first_plane = [
            0., 0., 0., 0., 0.,
            0., 1., 2., 3., 0.,
            0., 4., 5., 6., 0.,
            0., 0., 0., 0., 0.,
        ];
        assert_eq!(&y.data()[..20], &first_plane);
        assert_eq!(y.data()[26], 7.0);
        assert_eq!(crop2d(&y, 1).unwrap(), x);
        assert_eq!(pad2d(&x, 0).unwrap(), x);
    }

    #[test]
    fn crop_is_the_adjoint_of_pad() {
        // <pad(x), y> == <x, crop(y)> for all x, y.
        let x =
            Tensor::from_vec(&[2, 1, 3, 2], (0..12).map(|v| (v as f32).sin()).collect()).unwrap();
        let y = Tensor::from_vec(
            &[2, 1, 7, 6],
            (0..84).map(|v| (v as f32 * 0.7).cos()).collect(),
        )
        .unwrap();
        let dot = |a: &Tensor, b: &Tensor| {
            a.data()
                .iter()
                .zip(b.data())
                .map(|(p, q)| p * q)
                .sum::<f32>()
        };
        let lhs = dot(&pad2d(&x, 2).unwrap(), &y);
        let rhs = dot(&x, &crop2d(&y, 2).unwrap());
        assert!((lhs - rhs).abs() < 1e-5, "{lhs} vs {rhs}");
        assert!(crop2d(&y, 4).is_err());
    }
}
