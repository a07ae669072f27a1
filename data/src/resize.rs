//! Geometric primitives on u8 images: zero-filled crops and PIL-style separable resampling.

use crate::dataset::Image;

/// Resampling filter. Both follow Pillow (torchvision's PIL backend): pixel centres at +0.5,
/// edge-clamped windows, and a support widened by the scale factor when shrinking, which is
/// what anti-aliases downscales. Bicubic uses Pillow's a = −0.5.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interpolation {
    /// Triangle filter, support 1.
    Bilinear,
    /// Cubic convolution, support 2.
    Bicubic,
}

impl Interpolation {
    fn support(self) -> f64 {
        match self {
            Interpolation::Bilinear => 1.0,
            Interpolation::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Interpolation::Bilinear => (1.0 - x).max(0.0),
            Interpolation::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// For each output position: the first input index and the normalised weights from there on.
struct Kernel {
    taps: Vec<(usize, Vec<f32>)>,
}

impl Kernel {
    /// Pillow's `precompute_coeffs` for a full-range resize of `input` samples to `output`.
    fn new(input: usize, output: usize, interp: Interpolation) -> Kernel {
        let scale = input as f64 / output as f64;
        let filter_scale = scale.max(1.0);
        let support = interp.support() * filter_scale;
        let taps = (0..output)
            .map(|o| {
                let centre = (o as f64 + 0.5) * scale;
                let lo = ((centre - support + 0.5) as isize).max(0) as usize;
                let hi = (((centre + support + 0.5) as isize).max(0) as usize).min(input);
                let raw: Vec<f64> = (lo..hi)
                    .map(|i| interp.weight((i as f64 - centre + 0.5) / filter_scale))
                    .collect();
                let total: f64 = raw.iter().sum();
                let norm = if total == 0.0 { 1.0 } else { total };
                (lo, raw.iter().map(|w| (w / norm) as f32).collect())
            })
            .collect();
        Kernel { taps }
    }
}

/// Resizes to `width × height`: a horizontal pass into f32, then a vertical pass rounded to u8.
pub fn resize(image: &Image, width: usize, height: usize, interp: Interpolation) -> Image {
    if (width, height) == (image.width(), image.height()) {
        return image.clone();
    }
    let (in_w, in_h) = (image.width(), image.height());
    let src = image.data();
    let horizontal = Kernel::new(in_w, width, interp);
    let mut rows = vec![0f32; in_h * width * 3];
    for y in 0..in_h {
        let src_row = &src[y * in_w * 3..(y + 1) * in_w * 3];
        let out_row = &mut rows[y * width * 3..(y + 1) * width * 3];
        for (out, (start, weights)) in out_row.chunks_exact_mut(3).zip(&horizontal.taps) {
            for (k, w) in weights.iter().enumerate() {
                let px = &src_row[(start + k) * 3..(start + k) * 3 + 3];
                for c in 0..3 {
                    out[c] += w * px[c] as f32;
                }
            }
        }
    }
    let vertical = Kernel::new(in_h, height, interp);
    let mut out = Image::zeros(width, height);
    let stride = width * 3;
    for (out_row, (start, weights)) in out.data_mut().chunks_exact_mut(stride).zip(&vertical.taps) {
        let mut acc = vec![0f32; stride];
        for (k, w) in weights.iter().enumerate() {
            let row = &rows[(start + k) * stride..(start + k + 1) * stride];
            for (a, v) in acc.iter_mut().zip(row) {
                *a += w * v;
            }
        }
        for (o, a) in out_row.iter_mut().zip(&acc) {
            *o = a.round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// The `height × width` window whose top-left corner is at (`top`, `left`); parts outside the
/// image are zero (black), which is both torchvision's padding fill and its centre-crop padding.
pub fn crop(image: &Image, top: isize, left: isize, height: usize, width: usize) -> Image {
    let mut out = Image::zeros(width, height);
    let (in_w, in_h) = (image.width() as isize, image.height() as isize);
    // The overlap of the window with the image, in window coordinates.
    let x0 = (-left).clamp(0, width as isize) as usize;
    let x1 = (in_w - left).clamp(0, width as isize) as usize;
    if x0 >= x1 {
        return out;
    }
    for y in 0..height {
        let sy = top + y as isize;
        if sy < 0 || sy >= in_h {
            continue;
        }
        let src_start = ((sy * in_w + left + x0 as isize) * 3) as usize;
        let len = (x1 - x0) * 3;
        let dst_start = (y * width + x0) * 3;
        out.data_mut()[dst_start..dst_start + len]
            .copy_from_slice(&image.data()[src_start..src_start + len]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(width: usize, height: usize, data: &[u8]) -> Image {
        Image::new(width, height, data.to_vec()).unwrap()
    }

    /// Pillow's own output may differ by one level (it works in fixed point).
    fn assert_close(got: &Image, want: &[u8]) {
        for (i, (g, w)) in got.data().iter().zip(want).enumerate() {
            assert!((*g as i32 - *w as i32).abs() <= 1, "byte {i}: {g} vs {w}");
        }
        assert_eq!(got.data().len(), want.len());
    }

    #[test]
    fn bilinear_matches_hand_values() {
        // Upscale 2 → 4: half-pixel centres give [a, ¾a + ¼b, ¼a + ¾b, b].
        let up = resize(
            &image(2, 1, &[0, 0, 0, 100, 200, 255]),
            4,
            1,
            Interpolation::Bilinear,
        );
        assert_close(&up, &[0, 0, 0, 25, 50, 64, 75, 150, 191, 100, 200, 255]);
        // Downscale 4 → 2 anti-aliases: the triangle widens to 2 px, weights 3:3:1 over 7.
        let row = [0, 0, 0, 70, 10, 255, 140, 20, 0, 210, 30, 255];
        let down = resize(&image(4, 1, &row), 2, 1, Interpolation::Bilinear);
        assert_eq!(down.data(), [50, 7, 109, 160, 23, 146]);
    }

    /// A 4×3 image (rows of RGB) and Pillow's resizes of it.
    const SRC: [u8; 36] = [
        172, 47, 117, 192, 67, 251, 195, 103, 9, 211, 21, 242, 36, 87, 70, 216, 88, 140, 58, 193,
        230, 39, 87, 174, 88, 81, 165, 25, 77, 72, 9, 148, 115, 208, 243, 197,
    ];

    #[test]
    fn two_dimensional_resizes_match_pillow() {
        let src = image(4, 3, &SRC);
        let bilinear = resize(&src, 3, 5, Interpolation::Bilinear);
        assert_close(
            &bilinear,
            &[
                178, 53, 157, 194, 85, 130, 206, 46, 172, 143, 67, 131, 171, 107, 152, 142, 75,
                180, 90, 87, 91, 137, 141, 185, 45, 119, 191, 77, 83, 119, 65, 124, 130, 107, 177,
                180, 69, 80, 137, 17, 113, 94, 148, 215, 172,
            ],
        );
        let bicubic = resize(&src, 5, 2, Interpolation::Bicubic);
        assert_close(
            &bicubic,
            &[
                118, 60, 92, 188, 67, 191, 184, 113, 153, 143, 113, 118, 144, 34, 222, 63, 85, 132,
                90, 77, 97, 51, 123, 124, 50, 180, 175, 147, 192, 187,
            ],
        );
        // Bicubic overshoots and is clamped, like Pillow: [0, 21, 79, 109] for 0 → 100.
        let up = resize(
            &image(2, 1, &[0, 0, 0, 100, 200, 255]),
            4,
            1,
            Interpolation::Bicubic,
        );
        assert_close(&up, &[0, 0, 0, 21, 41, 53, 79, 159, 202, 109, 218, 255]);
    }

    #[test]
    fn crop_fills_outside_with_zeros() {
        let src = image(2, 2, &[1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]);
        let out = crop(&src, -1, 1, 3, 2);
        assert_eq!(
            out.data(),
            [0, 0, 0, 0, 0, 0, 2, 2, 2, 0, 0, 0, 4, 4, 4, 0, 0, 0]
        );
        assert_eq!(crop(&src, 5, 5, 1, 1).data(), [0, 0, 0]);
    }
}
