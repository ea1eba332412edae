//! Training-time augmentation of image batches: random crops from a zero-padded image and
//! random horizontal flips, the standard CIFAR / Fashion-MNIST recipe (torchvision's
//! `RandomCrop(size, padding)` + `RandomHorizontalFlip()`), done in place on a [`Batch`].
//!
//! Every draw comes from the RNG passed in, so the same seed gives the same pixels. Padding
//! fills with the normalized value of a black pixel ([`Normalization::black`]), which is what
//! padding the raw image with zeros and then normalizing gives.

use rand::RngExt;
use rand::rngs::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::dataset::{Batch, Normalization};
use crate::error::{DataError, Result};

/// Random-crop and flip settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Augment {
    /// Pad each side by this many pixels, then crop back to the original size at a random
    /// offset (0 disables cropping).
    pub crop_padding: usize,
    /// Mirror each image left-right with probability 1/2.
    pub horizontal_flip: bool,
}

impl Augment {
    /// The usual recipe: 4-pixel padding for 32x32 CIFAR, 2 for 28x28, and flips.
    pub fn standard(side: usize) -> Self {
        Augment { crop_padding: if side >= 32 { 4 } else { 2 }, horizontal_flip: true }
    }

    /// Whether this changes anything.
    pub fn is_identity(&self) -> bool {
        self.crop_padding == 0 && !self.horizontal_flip
    }

    /// Augments every image of `batch` in place. `fill` is the per-channel padding value
    /// (see [`Normalization::black`]); draws two offsets and a coin per image, in order.
    pub fn apply(&self, batch: &mut Batch, fill: &[f32], rng: &mut ChaCha8Rng) -> Result<()> {
        if self.is_identity() || batch.is_empty() {
            return Ok(());
        }
        let [n, c, h, w] = batch.shape();
        if fill.len() != c {
            return Err(DataError::InvalidArgument {
                name: "fill",
                reason: format!("{c} channel(s) need {c} fill values, got {}", fill.len()),
            });
        }
        let p = self.crop_padding as i64;
        let mut scratch = vec![0.0f32; c * h * w];
        for i in 0..n {
            let (dy, dx) = if p > 0 {
                (rng.random_range(-p..=p) as isize, rng.random_range(-p..=p) as isize)
            } else {
                (0, 0)
            };
            let flip = self.horizontal_flip && rng.random_bool(0.5);
            let img = &mut batch.images[i * c * h * w..(i + 1) * c * h * w];
            scratch.copy_from_slice(img);
            for ch in 0..c {
                let src = &scratch[ch * h * w..(ch + 1) * h * w];
                let dst = &mut img[ch * h * w..(ch + 1) * h * w];
                for y in 0..h {
                    let sy = y as isize + dy;
                    for x in 0..w {
                        // Output column x reads source column x + dx of the (possibly
                        // mirrored) padded image.
                        let xx = if flip { w - 1 - x } else { x };
                        let sx = xx as isize + dx;
                        dst[y * w + x] = if sy >= 0 && sy < h as isize && sx >= 0 && sx < w as isize
                        {
                            src[sy as usize * w + sx as usize]
                        } else {
                            fill[ch]
                        };
                    }
                }
            }
        }
        Ok(())
    }
}

impl Normalization {
    /// The normalized value of a black (zero) pixel in each of `channels` channels.
    pub fn black(&self, channels: usize) -> Vec<f32> {
        match self {
            Normalization::UnitRange { .. } => vec![0.0; channels],
            Normalization::Standardize { mean, std, .. } => {
                (0..channels).map(|c| (0.0 - mean[c % mean.len()]) / std[c % std.len()]).collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn batch(c: usize, h: usize, w: usize, n: usize) -> Batch {
        Batch {
            images: (0..n * c * h * w).map(|v| v as f32).collect(),
            labels: vec![0; n],
            indices: (0..n as u32).collect(),
            sample_shape: Some(crate::SampleShape { channels: c, height: h, width: w }),
        }
    }

    /// The brute-force definition: pad, flip, crop, built as an explicit padded image.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        img: &[f32],
        c: usize,
        h: usize,
        w: usize,
        p: usize,
        dy: isize,
        dx: isize,
        flip: bool,
        fill: &[f32],
    ) -> Vec<f32> {
        let (ph, pw) = (h + 2 * p, w + 2 * p);
        let mut out = Vec::new();
        for ch in 0..c {
            let mut padded = vec![fill[ch]; ph * pw];
            for y in 0..h {
                for x in 0..w {
                    let xx = if flip { w - 1 - x } else { x };
                    padded[(y + p) * pw + xx + p] = img[ch * h * w + y * w + x];
                }
            }
            let (oy, ox) = ((p as isize + dy) as usize, (p as isize + dx) as usize);
            for y in 0..h {
                for x in 0..w {
                    out.push(padded[(y + oy) * pw + x + ox]);
                }
            }
        }
        out
    }

    #[test]
    fn matches_pad_flip_crop_reference() {
        let (c, h, w, n, p) = (2, 5, 4, 6, 2);
        let fill = [-1.0, -2.0];
        let aug = Augment { crop_padding: p, horizontal_flip: true };
        let mut b = batch(c, h, w, n);
        let orig = b.images.clone();
        aug.apply(&mut b, &fill, &mut ChaCha8Rng::seed_from_u64(7)).unwrap();
        // Replay the same draws.
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for i in 0..n {
            let pi = p as i64;
            let (dy, dx) =
                (rng.random_range(-pi..=pi) as isize, rng.random_range(-pi..=pi) as isize);
            let flip = rng.random_bool(0.5);
            // Flip-then-crop at offset dx equals `apply`'s crop-at-dx-then-mirror read with
            // the offset mirrored (-dx); the offsets are symmetric, so the distribution is the same.
            let want = reference(
                &orig[i * c * h * w..(i + 1) * c * h * w],
                c,
                h,
                w,
                p,
                dy,
                if flip { -dx } else { dx },
                flip,
                &fill,
            );
            let got = &b.images[i * c * h * w..(i + 1) * c * h * w];
            assert_eq!(got, want.as_slice(), "image {i}");
        }
    }

    #[test]
    fn identity_and_determinism() {
        let mut b = batch(1, 3, 3, 4);
        let orig = b.images.clone();
        Augment::default().apply(&mut b, &[0.0], &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
        assert_eq!(b.images, orig);
        let aug = Augment { crop_padding: 1, horizontal_flip: true };
        let (mut x, mut y) = (batch(1, 3, 3, 4), batch(1, 3, 3, 4));
        aug.apply(&mut x, &[0.0], &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
        aug.apply(&mut y, &[0.0], &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
        assert_eq!(x.images, y.images);
        assert_ne!(x.images, orig, "4 images, 18 possible draws each: some must change");
    }

    #[test]
    fn wrong_fill_is_an_error() {
        let mut b = batch(3, 2, 2, 1);
        let err = Augment::standard(2)
            .apply(&mut b, &[0.0], &mut ChaCha8Rng::seed_from_u64(0))
            .unwrap_err();
        assert!(err.to_string().contains("3 fill values"), "{err}");
    }

    #[test]
    fn black_is_the_normalized_zero() {
        let n = Normalization::mnist();
        assert!((n.black(1)[0] - (-0.1307 / 0.3081)).abs() < 1e-6);
        assert_eq!(Normalization::unit_8bit().black(3), vec![0.0; 3]);
    }
}
