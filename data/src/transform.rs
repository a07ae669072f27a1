//! Augmentation and normalisation: u8 HWC image in, normalised CHW f32 out.
//!
//! A [`TransformConfig`] is a fixed-order pipeline of optional stages (plain fields, so a TOML
//! section can fill it): random-resized crop → resize shorter side → centre crop → padded random
//! crop → horizontal flip → normalise → random erasing. Randomness comes from the caller's
//! generator; the loader keys it by (seed, epoch, sample index), so an augmentation never depends
//! on batch composition or thread scheduling.

use std::borrow::Cow;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::dataset::Image;
use crate::error::{DataError, Result};
use crate::resize::{Interpolation, crop, resize};
use crate::rng::{Purpose, keyed};
use crate::synthetic::{SYNTHETIC_MEAN, SYNTHETIC_STD};

/// Per-pixel statistics of the CIFAR-10 train set in [0, 1] (not the per-image-mean figures
/// some repositories use).
pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// Per-pixel standard deviation of the CIFAR-10 train set in [0, 1].
pub const CIFAR10_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];
/// torchvision's ImageNet normalisation mean in [0, 1].
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// torchvision's ImageNet normalisation standard deviation in [0, 1].
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// torchvision's `RandomResizedCrop`: a random box of `scale` × area and aspect `ratio`,
/// resized to `size × size`.
#[derive(Clone, Debug, PartialEq)]
pub struct RandomResizedCrop {
    /// Output side in pixels.
    pub size: usize,
    /// Range of the box's area as a fraction of the image's, within (0, 1].
    pub scale: (f64, f64),
    /// Range of the box's aspect ratio (width / height), sampled log-uniformly.
    pub ratio: (f64, f64),
}

impl RandomResizedCrop {
    /// The ImageNet defaults: scale (0.08, 1), ratio (3/4, 4/3).
    pub fn new(size: usize) -> RandomResizedCrop {
        RandomResizedCrop {
            size,
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        }
    }
}

/// torchvision's `RandomCrop(size, padding)` with zero padding.
#[derive(Clone, Debug, PartialEq)]
pub struct RandomCrop {
    /// Output side in pixels.
    pub size: usize,
    /// Zero border added on each side before cropping, in pixels.
    pub padding: usize,
}

/// torchvision's `RandomErasing` with value 0, applied to the normalised tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct RandomErasing {
    /// Probability that an image gets a box erased.
    pub p: f64,
    /// Range of the box's area as a fraction of the image's.
    pub scale: (f64, f64),
    /// Range of the box's aspect ratio (height / width), sampled log-uniformly.
    pub ratio: (f64, f64),
}

impl Default for RandomErasing {
    fn default() -> Self {
        RandomErasing {
            p: 0.5,
            scale: (0.02, 0.33),
            ratio: (0.3, 3.3),
        }
    }
}

/// Which stages run, in the fixed order given in the module docs.
#[derive(Clone, Debug, PartialEq)]
pub struct TransformConfig {
    /// First stage: a random box resized to a square.
    pub random_resized_crop: Option<RandomResizedCrop>,
    /// Resize so the shorter side has this many pixels (aspect kept, longer side truncated).
    pub resize_shorter: Option<usize>,
    /// Centre crop to a square of this side, zero-padding images that are smaller.
    pub center_crop: Option<usize>,
    /// A zero-padded random crop.
    pub random_crop: Option<RandomCrop>,
    /// Probability of a horizontal flip (0 disables it and draws no random number).
    pub hflip: f64,
    /// Filter of the random-resized crop and of `resize_shorter`.
    pub interpolation: Interpolation,
    /// Per-channel (RGB) mean subtracted, in [0, 1] pixel units.
    pub mean: [f32; 3],
    /// Per-channel (RGB) standard deviation divided by, in [0, 1] pixel units; > 0.
    pub std: [f32; 3],
    /// Last stage, on the normalised image.
    pub random_erasing: Option<RandomErasing>,
}

impl TransformConfig {
    /// Normalisation only.
    pub fn normalize(mean: [f32; 3], std: [f32; 3]) -> TransformConfig {
        TransformConfig {
            random_resized_crop: None,
            resize_shorter: None,
            center_crop: None,
            random_crop: None,
            hflip: 0.0,
            interpolation: Interpolation::Bilinear,
            mean,
            std,
            random_erasing: None,
        }
    }

    /// Pad-4 random 32×32 crop and flip, the standard CIFAR recipe.
    pub fn cifar_train() -> TransformConfig {
        TransformConfig {
            random_crop: Some(RandomCrop {
                size: 32,
                padding: 4,
            }),
            hflip: 0.5,
            ..TransformConfig::cifar_eval()
        }
    }

    /// Normalisation with CIFAR-10's statistics.
    pub fn cifar_eval() -> TransformConfig {
        TransformConfig::normalize(CIFAR10_MEAN, CIFAR10_STD)
    }

    /// Random-resized crop to `res` and flip.
    pub fn imagenet_train(res: usize) -> TransformConfig {
        TransformConfig {
            random_resized_crop: Some(RandomResizedCrop::new(res)),
            hflip: 0.5,
            ..TransformConfig::normalize(IMAGENET_MEAN, IMAGENET_STD)
        }
    }

    /// Shorter side to `res / 0.875` (256 for 224), then the centre `res × res`.
    pub fn imagenet_eval(res: usize) -> TransformConfig {
        TransformConfig {
            resize_shorter: Some((res as f64 / 0.875).round() as usize),
            center_crop: Some(res),
            ..TransformConfig::normalize(IMAGENET_MEAN, IMAGENET_STD)
        }
    }

    /// The CIFAR recipe with the synthetic set's statistics (its families are flip-invariant).
    pub fn synthetic_train() -> TransformConfig {
        TransformConfig {
            mean: SYNTHETIC_MEAN,
            std: SYNTHETIC_STD,
            ..TransformConfig::cifar_train()
        }
    }

    /// Normalisation with the synthetic set's statistics.
    pub fn synthetic_eval() -> TransformConfig {
        TransformConfig::normalize(SYNTHETIC_MEAN, SYNTHETIC_STD)
    }

    fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(DataError::Config(format!("transform: {what}")));
        let range_ok = |(lo, hi): (f64, f64)| lo > 0.0 && lo <= hi && hi.is_finite();
        if let Some(rrc) = &self.random_resized_crop
            && (rrc.size == 0 || !range_ok(rrc.scale) || rrc.scale.1 > 1.0 || !range_ok(rrc.ratio))
        {
            return bad("random_resized_crop needs size > 0, 0 < scale ≤ 1, 0 < ratio, lo ≤ hi");
        }
        if self.resize_shorter == Some(0) || self.center_crop == Some(0) {
            return bad("resize_shorter and center_crop must be positive");
        }
        if self.random_crop.as_ref().is_some_and(|c| c.size == 0) {
            return bad("random_crop size must be positive");
        }
        if !(0.0..=1.0).contains(&self.hflip) {
            return bad("hflip is a probability in [0, 1]");
        }
        if self.std.iter().any(|s| !s.is_finite() || *s <= 0.0)
            || self.mean.iter().any(|m| !m.is_finite())
        {
            return bad("normalisation needs finite mean and std > 0");
        }
        if let Some(e) = &self.random_erasing
            && (!(0.0..=1.0).contains(&e.p) || !range_ok(e.scale) || !range_ok(e.ratio))
        {
            return bad("random_erasing needs p in [0, 1], 0 < lo ≤ hi scale and ratio");
        }
        Ok(())
    }
}

/// A normalised image, planar CHW with three channels.
#[derive(Clone, Debug, PartialEq)]
pub struct Chw {
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
    /// `[3, height, width]`, row-major.
    pub data: Vec<f32>,
}

/// A crop rectangle in source pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropBox {
    /// First row.
    pub top: usize,
    /// First column.
    pub left: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

/// A validated [`TransformConfig`] with its normalisation tables precomputed.
#[derive(Clone, Debug)]
pub struct Transform {
    config: TransformConfig,
    /// `(v / 255 − mean) / std` for every byte value, per channel: exactly torchvision's
    /// ToTensor + Normalize arithmetic, at the cost of a lookup.
    lut: [[f32; 256]; 3],
}

impl Transform {
    /// Validates `config` (positive sizes, probabilities in [0, 1], std > 0, ordered ranges).
    pub fn new(config: TransformConfig) -> Result<Transform> {
        config.validate()?;
        let lut = std::array::from_fn(|c| {
            std::array::from_fn(|v| (v as f32 / 255.0 - config.mean[c]) / config.std[c])
        });
        Ok(Transform { config, lut })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &TransformConfig {
        &self.config
    }

    /// Applies the pipeline to sample `index` in `epoch` with the loader's keyed random stream.
    pub fn apply_keyed(&self, image: &Image, seed: u64, epoch: u64, index: usize) -> Result<Chw> {
        self.apply(image, &mut augment_rng(seed, epoch, index))
    }

    /// Applies the pipeline, drawing random numbers from `rng` in stage order.
    pub fn apply(&self, image: &Image, rng: &mut impl Rng) -> Result<Chw> {
        let cfg = &self.config;
        let mut img = Cow::Borrowed(image);
        if let Some(rrc) = &cfg.random_resized_crop {
            let b = random_resized_crop_box(img.width(), img.height(), rrc, rng);
            let cropped = crop(&img, b.top as isize, b.left as isize, b.height, b.width);
            img = Cow::Owned(resize(&cropped, rrc.size, rrc.size, cfg.interpolation));
        }
        if let Some(short) = cfg.resize_shorter {
            let (w, h) = shorter_side_size(img.width(), img.height(), short);
            img = Cow::Owned(resize(&img, w, h, cfg.interpolation));
        }
        if let Some(size) = cfg.center_crop {
            let top = centre_offset(img.height(), size);
            let left = centre_offset(img.width(), size);
            img = Cow::Owned(crop(&img, top, left, size, size));
        }
        if let Some(rc) = &cfg.random_crop {
            let (w, h, p) = (img.width(), img.height(), rc.padding);
            if w + 2 * p < rc.size || h + 2 * p < rc.size {
                return Err(DataError::TooSmall {
                    width: w,
                    height: h,
                    size: rc.size,
                });
            }
            let top = rng.random_range(0..=h + 2 * p - rc.size) as isize - p as isize;
            let left = rng.random_range(0..=w + 2 * p - rc.size) as isize - p as isize;
            img = Cow::Owned(crop(&img, top, left, rc.size, rc.size));
        }
        let flip = cfg.hflip > 0.0 && rng.random::<f64>() < cfg.hflip;
        let mut out = self.to_chw(&img, flip);
        if let Some(erasing) = &cfg.random_erasing
            && rng.random::<f64>() < erasing.p
            && let Some(b) = erasing_box(out.width, out.height, erasing, rng)
        {
            erase(&mut out, b);
        }
        Ok(out)
    }

    /// Normalises into planar CHW, mirroring columns when `flip` (the flip is always the last
    /// geometric stage, so it fuses into this pass).
    fn to_chw(&self, image: &Image, flip: bool) -> Chw {
        let (w, h) = (image.width(), image.height());
        let plane = w * h;
        let mut data = vec![0f32; 3 * plane];
        let (r, gb) = data.split_at_mut(plane);
        let (g, b) = gb.split_at_mut(plane);
        for (y, row) in image.data().chunks_exact(w * 3).enumerate() {
            for x in 0..w {
                let sx = if flip { w - 1 - x } else { x };
                let px = &row[sx * 3..sx * 3 + 3];
                let o = y * w + x;
                r[o] = self.lut[0][px[0] as usize];
                g[o] = self.lut[1][px[1] as usize];
                b[o] = self.lut[2][px[2] as usize];
            }
        }
        Chw {
            height: h,
            width: w,
            data,
        }
    }
}

/// The random stream for one sample's augmentation: a pure function of (seed, epoch, index).
pub fn augment_rng(seed: u64, epoch: u64, index: usize) -> ChaCha8Rng {
    keyed(Purpose::Augment, seed, epoch, index as u64)
}

/// Python's `int(round(x))`: round half to even.
fn round_int(x: f64) -> isize {
    x.round_ties_even() as isize
}

/// torchvision's `RandomResizedCrop.get_params`: ten tries at a random box that fits, then a
/// centre crop clamped to the ratio range.
pub fn random_resized_crop_box(
    width: usize,
    height: usize,
    cfg: &RandomResizedCrop,
    rng: &mut impl Rng,
) -> CropBox {
    let area = (width * height) as f64;
    let (log_lo, log_hi) = (cfg.ratio.0.ln(), cfg.ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.random_range(cfg.scale.0..=cfg.scale.1);
        let aspect = rng.random_range(log_lo..=log_hi).exp();
        let w = round_int((target * aspect).sqrt());
        let h = round_int((target / aspect).sqrt());
        if 0 < w && w as usize <= width && 0 < h && h as usize <= height {
            let (w, h) = (w as usize, h as usize);
            return CropBox {
                top: rng.random_range(0..=height - h),
                left: rng.random_range(0..=width - w),
                height: h,
                width: w,
            };
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < cfg.ratio.0 {
        (
            width,
            (round_int(width as f64 / cfg.ratio.0) as usize).min(height),
        )
    } else if in_ratio > cfg.ratio.1 {
        (
            (round_int(height as f64 * cfg.ratio.1) as usize).min(width),
            height,
        )
    } else {
        (width, height)
    };
    CropBox {
        top: (height - h) / 2,
        left: (width - w) / 2,
        height: h,
        width: w,
    }
}

/// torchvision's `Resize(short)`: the shorter side becomes `short`, the longer side
/// `int(short * long / short_side)`.
pub fn shorter_side_size(width: usize, height: usize, short: usize) -> (usize, usize) {
    if width <= height {
        (short, short * height / width)
    } else {
        (short * width / height, short)
    }
}

/// torchvision's `CenterCrop` offset along one axis: `int(round((n − size) / 2))`, or the
/// negative padding `−((size − n) // 2)` when the image is smaller.
fn centre_offset(n: usize, size: usize) -> isize {
    if n >= size {
        round_int((n - size) as f64 / 2.0)
    } else {
        -(((size - n) / 2) as isize)
    }
}

/// torchvision's `RandomErasing.get_params`: ten tries at a box strictly smaller than the image,
/// else no erasing.
pub fn erasing_box(
    width: usize,
    height: usize,
    cfg: &RandomErasing,
    rng: &mut impl Rng,
) -> Option<CropBox> {
    let area = (width * height) as f64;
    let (log_lo, log_hi) = (cfg.ratio.0.ln(), cfg.ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.random_range(cfg.scale.0..=cfg.scale.1);
        let aspect = rng.random_range(log_lo..=log_hi).exp();
        let h = round_int((target * aspect).sqrt());
        let w = round_int((target / aspect).sqrt());
        if h < height as isize && w < width as isize {
            let (h, w) = (h.max(0) as usize, w.max(0) as usize);
            return Some(CropBox {
                top: rng.random_range(0..=height - h),
                left: rng.random_range(0..=width - w),
                height: h,
                width: w,
            });
        }
    }
    None
}

fn erase(image: &mut Chw, b: CropBox) {
    let plane = image.height * image.width;
    for c in 0..3 {
        for y in b.top..b.top + b.height {
            let start = c * plane + y * image.width + b.left;
            image.data[start..start + b.width].fill(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// A `w × h` image whose red channel is `x + 10·y`, green 200 and blue `x`.
    fn coords(w: usize, h: usize) -> Image {
        let data = (0..h)
            .flat_map(|y| (0..w).flat_map(move |x| [(x + 10 * y) as u8, 200, x as u8]))
            .collect();
        Image::new(w, h, data).unwrap()
    }

    /// Identity normalisation, so outputs are bytes / 255.
    fn plain() -> TransformConfig {
        TransformConfig::normalize([0.0; 3], [1.0; 3])
    }

    fn red(out: &Chw, x: usize, y: usize) -> u8 {
        (out.data[y * out.width + x] * 255.0).round() as u8
    }

    #[test]
    fn normalisation_is_totensor_then_normalize() {
        let img = Image::new(3, 1, vec![0, 0, 0, 128, 128, 128, 255, 255, 255]).unwrap();
        let t = Transform::new(TransformConfig::cifar_eval()).unwrap();
        let out = t.apply_keyed(&img, 0, 0, 0).unwrap();
        for c in 0..3 {
            for (x, v) in [0u8, 128, 255].into_iter().enumerate() {
                let want = (v as f32 / 255.0 - CIFAR10_MEAN[c]) / CIFAR10_STD[c];
                assert_eq!(out.data[c * 3 + x], want);
            }
        }
        assert!((out.data[2] - (1.0 - 0.4914) / 0.2470).abs() < 1e-6);
    }

    #[test]
    fn padded_random_crop_uses_the_drawn_offsets() {
        let img = coords(32, 32);
        let cfg = TransformConfig {
            random_crop: Some(RandomCrop {
                size: 32,
                padding: 4,
            }),
            ..plain()
        };
        let t = Transform::new(cfg).unwrap();
        let mut seen = std::collections::HashSet::new();
        for index in 0..40 {
            let out = t.apply_keyed(&img, 7, 1, index).unwrap();
            let mut rng = augment_rng(7, 1, index);
            let top = rng.random_range(0..=8) as isize - 4;
            let left = rng.random_range(0..=8) as isize - 4;
            seen.insert((top, left));
            for (y, x) in [(0, 0), (31, 31), (3, 29), (16, 5)] {
                let (sy, sx) = (y as isize + top, x as isize + left);
                let want = if (0..32).contains(&sy) && (0..32).contains(&sx) {
                    (sx + 10 * sy) as u8
                } else {
                    0
                };
                assert_eq!(red(&out, x, y), want, "index {index} at ({x}, {y})");
            }
        }
        assert!(seen.len() > 10, "offsets should vary: {seen:?}");
    }

    #[test]
    fn flip_mirrors_columns() {
        let img = coords(5, 2);
        let t = Transform::new(TransformConfig {
            hflip: 1.0,
            ..plain()
        })
        .unwrap();
        let out = t.apply_keyed(&img, 0, 0, 0).unwrap();
        assert_eq!((out.width, out.height), (5, 2));
        assert_eq!(red(&out, 0, 0), 4);
        assert_eq!(red(&out, 4, 1), 10);
        // Blue plane holds x: mirrored too.
        assert_eq!((out.data[2 * 10] * 255.0).round() as u8, 4);
        let half = Transform::new(TransformConfig {
            hflip: 0.5,
            ..plain()
        })
        .unwrap();
        let flips = (0..200)
            .filter(|&i| red(&half.apply_keyed(&img, 3, 0, i).unwrap(), 0, 0) == 4)
            .count();
        assert!((60..140).contains(&flips), "{flips} flips of 200");
    }

    #[test]
    fn random_resized_crop_boxes_fit_and_repeat() {
        let cfg = RandomResizedCrop::new(224);
        for (w, h) in [(500, 375), (64, 300), (1000, 10)] {
            for seed in 0..200 {
                let draw =
                    || random_resized_crop_box(w, h, &cfg, &mut ChaCha8Rng::seed_from_u64(seed));
                let b = draw();
                assert_eq!(b, draw(), "deterministic");
                assert!(b.width > 0 && b.height > 0);
                assert!(
                    b.left + b.width <= w && b.top + b.height <= h,
                    "{b:?} in {w}×{h}"
                );
            }
        }
        // A box can never cover 90–100% of a 1000×10 strip at aspect ≤ 4/3: the fallback is the
        // centre crop clamped to the largest ratio, w = round(10 · 4/3) = 13.
        let strict = RandomResizedCrop {
            scale: (0.9, 1.0),
            ..cfg
        };
        let b = random_resized_crop_box(1000, 10, &strict, &mut ChaCha8Rng::seed_from_u64(0));
        assert_eq!(
            b,
            CropBox {
                top: 0,
                left: 493,
                height: 10,
                width: 13
            }
        );
        let t = Transform::new(TransformConfig::imagenet_train(24)).unwrap();
        let out = t.apply_keyed(&coords(40, 30), 1, 2, 3).unwrap();
        assert_eq!(
            (out.height, out.width, out.data.len()),
            (24, 24, 3 * 24 * 24)
        );
        assert_eq!(out, t.apply_keyed(&coords(40, 30), 1, 2, 3).unwrap());
    }

    #[test]
    fn eval_resize_and_centre_crop_follow_torchvision() {
        assert_eq!(shorter_side_size(500, 375, 256), (341, 256));
        assert_eq!(shorter_side_size(300, 400, 256), (256, 341));
        // (341 − 224) / 2 = 58.5 rounds half to even → 58; (256 − 224) / 2 = 16.
        assert_eq!(centre_offset(341, 224), 58);
        assert_eq!(centre_offset(256, 224), 16);
        assert_eq!(centre_offset(5, 8), -1);
        assert_eq!(
            TransformConfig::imagenet_eval(224).resize_shorter,
            Some(256)
        );
        let t = Transform::new(TransformConfig {
            center_crop: Some(3),
            ..plain()
        })
        .unwrap();
        let out = t.apply_keyed(&coords(6, 4), 0, 0, 0).unwrap();
        // Offsets: top round(0.5) = 0, left round(1.5) = 2.
        assert_eq!(red(&out, 0, 0), 2);
        assert_eq!(red(&out, 2, 2), 24);
        let eval = Transform::new(TransformConfig::imagenet_eval(16)).unwrap();
        let out = eval.apply_keyed(&coords(40, 30), 0, 0, 0).unwrap();
        assert_eq!((out.height, out.width), (16, 16));
    }

    #[test]
    fn random_erasing_zeroes_one_box_of_the_normalised_image() {
        let cfg = RandomErasing {
            p: 1.0,
            ..RandomErasing::default()
        };
        let t = Transform::new(TransformConfig {
            random_erasing: Some(cfg.clone()),
            ..TransformConfig::cifar_eval()
        })
        .unwrap();
        let img = coords(32, 32);
        for index in 0..20 {
            let out = t.apply_keyed(&img, 5, 0, index).unwrap();
            let mut rng = augment_rng(5, 0, index);
            assert!(rng.random::<f64>() < 1.0);
            let b = erasing_box(32, 32, &cfg, &mut rng).unwrap();
            let area = (b.width * b.height) as f64 / 1024.0;
            assert!(b.top + b.height <= 32 && b.left + b.width <= 32);
            assert!((0.01..0.4).contains(&area), "{b:?}");
            for c in 0..3 {
                for y in 0..32 {
                    for x in 0..32 {
                        let inside = (b.top..b.top + b.height).contains(&y)
                            && (b.left..b.left + b.width).contains(&x);
                        let v = out.data[c * 1024 + y * 32 + x];
                        assert_eq!(v == 0.0, inside, "c{c} ({x}, {y}) {b:?}");
                    }
                }
            }
        }
        // No box smaller than the image has the whole area: ten misses, nothing erased.
        let never = RandomErasing {
            p: 1.0,
            scale: (1.0, 1.0),
            ratio: (1.0, 1.0),
        };
        assert_eq!(
            erasing_box(8, 8, &never, &mut ChaCha8Rng::seed_from_u64(1)),
            None
        );
    }

    #[test]
    fn invalid_configs_and_small_images_are_errors() {
        let bad = [
            TransformConfig {
                hflip: 1.5,
                ..plain()
            },
            TransformConfig {
                std: [1.0, 0.0, 1.0],
                ..plain()
            },
            TransformConfig {
                center_crop: Some(0),
                ..plain()
            },
            TransformConfig {
                random_resized_crop: Some(RandomResizedCrop {
                    scale: (0.5, 0.1),
                    ..RandomResizedCrop::new(8)
                }),
                ..plain()
            },
        ];
        for cfg in bad {
            assert!(matches!(Transform::new(cfg), Err(DataError::Config(_))));
        }
        let t = Transform::new(TransformConfig::cifar_train()).unwrap();
        let err = t.apply_keyed(&coords(20, 20), 0, 0, 0).err().unwrap();
        assert!(
            matches!(
                err,
                DataError::TooSmall {
                    width: 20,
                    size: 32,
                    ..
                }
            ),
            "{err}"
        );
    }
}
