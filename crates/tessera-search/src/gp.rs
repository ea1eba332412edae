//! A Gaussian-process surrogate over per-layer categorical choices.
//!
//! Each candidate is encoded as one [`Feature`] per layer: the scheme as a category and the
//! rate as an ordinal (log rate over the log of the ladder's top, in [0, 1]). The
//! [`LayerwiseKernel`] is `k(a, b) = s2 * exp(-sum_l w_l ([cat_a != cat_b] + |ord_a - ord_b|) / ell)`:
//! a product over layers of a categorical (Hamming) factor and a Laplacian factor, both
//! positive definite, so the product is too; `w_l` lets layers that cost more weigh more
//! (the experiments use half uniform, half the layer's share of MACs). No GP crate ships a
//! kernel for categorical per-layer choices (research/search.md section 4), and n stays in
//! the hundreds, so the algebra is written here: Cholesky with escalating jitter, posterior
//! mean and variance, log marginal likelihood, and a grid search over length scale and noise
//! that maximizes it. Targets are standardized before fitting and predictions are returned
//! in the original units.

use serde::{Deserialize, Serialize};

use crate::error::{Result, SearchError};
use crate::space::SearchSpace;

/// One layer's choice as the kernel sees it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    /// Scheme category (an index; equal means same scheme).
    pub category: u32,
    /// Ordinal value (log rate, scaled to [0, 1]).
    pub ordinal: f64,
}

/// A covariance function over encoded candidates.
pub trait Kernel {
    /// `k(a, b)`.
    fn k(&self, a: &[Feature], b: &[Feature]) -> f64;
}

/// The per-layer categorical x Laplacian kernel (module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerwiseKernel {
    /// Per-layer weights `w_l`.
    pub weights: Vec<f64>,
    /// Length scale `ell`.
    pub lengthscale: f64,
    /// Signal variance `s2` (of the standardized targets).
    pub variance: f64,
}

impl Kernel for LayerwiseKernel {
    fn k(&self, a: &[Feature], b: &[Feature]) -> f64 {
        let d: f64 = a
            .iter()
            .zip(b)
            .zip(&self.weights)
            .map(|((x, y), w)| {
                w * (f64::from(u8::from(x.category != y.category)) + (x.ordinal - y.ordinal).abs())
            })
            .sum();
        self.variance * (-d / self.lengthscale).exp()
    }
}

/// Encodes candidates of one space as features.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoder {
    /// `features[l][o]`.
    features: Vec<Vec<Feature>>,
}

impl Encoder {
    /// The encoder of `space`: categories numbered per layer in option order, rates on a log
    /// scale over the largest rate in the space.
    pub fn new(space: &SearchSpace) -> Self {
        let top = (0..space.len())
            .flat_map(|l| space.options(l).iter().map(|c| c.rate))
            .fold(1.0f64, f64::max);
        let scale = if top > 1.0 { top.ln() } else { 1.0 };
        let features = (0..space.len())
            .map(|l| {
                let mut names: Vec<String> = Vec::new();
                space
                    .options(l)
                    .iter()
                    .map(|c| {
                        let name = c.scheme_name();
                        let category = names.iter().position(|n| *n == name).unwrap_or_else(|| {
                            names.push(name);
                            names.len() - 1
                        });
                        Feature { category: category as u32, ordinal: c.rate.ln() / scale }
                    })
                    .collect()
            })
            .collect();
        Encoder { features }
    }

    /// The features of a (checked) candidate.
    pub fn encode(&self, candidate: &[usize]) -> Vec<Feature> {
        candidate.iter().enumerate().map(|(l, &o)| self.features[l][o]).collect()
    }
}

/// Grid of hyper-parameters tried by [`GaussianProcess::fit_best`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpGrid {
    /// Length scales (the weighted distance between candidates is in [0, 2 sum w]).
    pub lengthscales: Vec<f64>,
    /// Noise variances of the standardized targets.
    pub noises: Vec<f64>,
}

impl Default for GpGrid {
    fn default() -> Self {
        GpGrid {
            lengthscales: vec![0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0],
            noises: vec![1e-4, 1e-2, 0.05, 0.2],
        }
    }
}

/// A fitted Gaussian process.
#[derive(Debug, Clone)]
pub struct GaussianProcess<K> {
    kernel: K,
    noise: f64,
    x: Vec<Vec<Feature>>,
    /// Lower Cholesky factor of `K + noise I`, row-major n x n.
    chol: Vec<f64>,
    /// `(K + noise I)^-1 y` (standardized y).
    alpha: Vec<f64>,
    y_mean: f64,
    y_scale: f64,
    lml: f64,
}

/// Largest jitter added to the diagonal before giving up.
const MAX_JITTER: f64 = 1e-3;

impl<K: Kernel> GaussianProcess<K> {
    /// Fits `kernel` with observation-noise variance `noise` (standardized units) to targets
    /// `y` at points `x`.
    pub fn fit(kernel: K, noise: f64, x: Vec<Vec<Feature>>, y: &[f64]) -> Result<Self> {
        let n = x.len();
        if n == 0 || y.len() != n {
            return Err(SearchError::config(
                "gp",
                format!(
                    "needs one target per point and at least one point ({n} points, {} targets)",
                    y.len()
                ),
            ));
        }
        if !(noise.is_finite() && noise >= 0.0) || y.iter().any(|v| !v.is_finite()) {
            return Err(SearchError::config("gp", "noise and targets must be finite"));
        }
        let y_mean = y.iter().sum::<f64>() / n as f64;
        let var = y.iter().map(|v| (v - y_mean).powi(2)).sum::<f64>() / n as f64;
        let y_scale = if var > 1e-24 { var.sqrt() } else { 1.0 };
        let ys: Vec<f64> = y.iter().map(|v| (v - y_mean) / y_scale).collect();
        let mut gram = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..=i {
                let v = kernel.k(&x[i], &x[j]);
                gram[i * n + j] = v;
                gram[j * n + i] = v;
            }
        }
        let mut jitter = 0.0;
        let chol = loop {
            let mut a = gram.clone();
            for i in 0..n {
                a[i * n + i] += noise + jitter;
            }
            if let Some(l) = cholesky(&a, n) {
                break l;
            }
            jitter = if jitter == 0.0 { 1e-10 } else { jitter * 10.0 };
            if jitter > MAX_JITTER {
                return Err(SearchError::NotPositiveDefinite { points: n, jitter: MAX_JITTER });
            }
        };
        let alpha = solve_upper_t(&chol, n, &solve_lower(&chol, n, &ys));
        let log_det: f64 = (0..n).map(|i| chol[i * n + i].ln()).sum();
        let fit: f64 = ys.iter().zip(&alpha).map(|(a, b)| a * b).sum();
        let lml = -0.5 * fit - log_det - 0.5 * n as f64 * (2.0 * std::f64::consts::PI).ln();
        Ok(GaussianProcess { kernel, noise: noise + jitter, x, chol, alpha, y_mean, y_scale, lml })
    }

    /// Posterior mean and variance of the target at `p` (original units; the variance of the
    /// latent function, without observation noise).
    pub fn predict(&self, p: &[Feature]) -> (f64, f64) {
        let n = self.x.len();
        let ks: Vec<f64> = self.x.iter().map(|xi| self.kernel.k(xi, p)).collect();
        let mean: f64 = ks.iter().zip(&self.alpha).map(|(a, b)| a * b).sum();
        let v = solve_lower(&self.chol, n, &ks);
        let var = (self.kernel.k(p, p) - v.iter().map(|x| x * x).sum::<f64>()).max(0.0);
        (self.y_mean + self.y_scale * mean, self.y_scale * self.y_scale * var)
    }

    /// Log marginal likelihood of the standardized targets.
    pub fn log_marginal_likelihood(&self) -> f64 {
        self.lml
    }

    /// The kernel.
    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// Noise variance used (with any jitter added).
    pub fn noise(&self) -> f64 {
        self.noise
    }
}

impl GaussianProcess<LayerwiseKernel> {
    /// The fit with the highest log marginal likelihood over `grid` (signal variance 1 on the
    /// standardized targets; ties keep the first).
    pub fn fit_best(weights: &[f64], grid: &GpGrid, x: &[Vec<Feature>], y: &[f64]) -> Result<Self> {
        let mut best: Option<Self> = None;
        for &lengthscale in &grid.lengthscales {
            for &noise in &grid.noises {
                let kernel =
                    LayerwiseKernel { weights: weights.to_vec(), lengthscale, variance: 1.0 };
                let Ok(gp) = Self::fit(kernel, noise, x.to_vec(), y) else { continue };
                if best.as_ref().is_none_or(|b| gp.lml > b.lml) {
                    best = Some(gp);
                }
            }
        }
        best.ok_or_else(|| {
            SearchError::config("gp grid", "no length scale / noise pair gave a fit")
        })
    }
}

/// Lower Cholesky factor of the symmetric n x n `a`, or `None` if not positive definite.
fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
            if i == j {
                let d = a[i * n + i] - s;
                if d <= 0.0 || !d.is_finite() {
                    return None;
                }
                l[i * n + i] = d.sqrt();
            } else {
                l[i * n + j] = (a[i * n + j] - s) / l[j * n + j];
            }
        }
    }
    Some(l)
}

/// Solves `L x = b`.
fn solve_lower(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut x = vec![0.0; n];
    for i in 0..n {
        let s: f64 = (0..i).map(|k| l[i * n + k] * x[k]).sum();
        x[i] = (b[i] - s) / l[i * n + i];
    }
    x
}

/// Solves `L^T x = b`.
fn solve_upper_t(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|k| l[k * n + i] * x[k]).sum();
        x[i] = (b[i] - s) / l[i * n + i];
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(x: f64) -> Vec<Feature> {
        vec![Feature { category: 0, ordinal: x }]
    }

    fn kernel(ell: f64) -> LayerwiseKernel {
        LayerwiseKernel { weights: vec![1.0], lengthscale: ell, variance: 1.0 }
    }

    #[test]
    fn one_dimensional_posterior_matches_the_hand_computation() {
        // Two noise-free points x = 0, 1 with y = -1, +1 (mean 0, population std 1, so the
        // standardization is the identity); k(a, b) = exp(-|a - b|). With r = exp(-1),
        // K = [[1, r], [r, 1]], K^-1 = [[1, -r], [-r, 1]] / (1 - r^2).
        let gp =
            GaussianProcess::fit(kernel(1.0), 0.0, vec![pt(0.0), pt(1.0)], &[-1.0, 1.0]).unwrap();
        let r = (-1.0f64).exp();
        for x in [0.5f64, 0.25, 2.0, -1.0] {
            let k = [(-(x.abs())).exp(), (-((x - 1.0).abs())).exp()];
            // mean = k^T K^-1 y; var = 1 - k^T K^-1 k.
            let kinv_y = [(-1.0 - r) / (1.0 - r * r), (1.0 + r) / (1.0 - r * r)];
            let mean = k[0] * kinv_y[0] + k[1] * kinv_y[1];
            let quad = (k[0] * k[0] + k[1] * k[1] - 2.0 * r * k[0] * k[1]) / (1.0 - r * r);
            let (m, v) = gp.predict(&pt(x));
            assert!((m - mean).abs() < 1e-12, "x={x}: mean {m} vs {mean}");
            assert!((v - (1.0 - quad)).abs() < 1e-12, "x={x}: var {v} vs {}", 1.0 - quad);
        }
        // At x = 0.5 by symmetry the mean is 0; the variance is 1 - 2 e^-1 / (1 + e^-1).
        let (m, v) = gp.predict(&pt(0.5));
        assert!(m.abs() < 1e-12);
        assert!((v - (1.0 - 2.0 * (-1.0f64).exp() / (1.0 + (-1.0f64).exp()))).abs() < 1e-12);
        // Interpolation: the training points are reproduced with zero variance.
        let (m0, v0) = gp.predict(&pt(0.0));
        assert!((m0 + 1.0).abs() < 1e-9 && v0 < 1e-9);
        // log marginal likelihood: -1/2 y^T K^-1 y - 1/2 log det K - log 2 pi.
        let fit = (2.0 + 2.0 * r) / (1.0 - r * r);
        let lml = -0.5 * fit - 0.5 * (1.0 - r * r).ln() - (2.0 * std::f64::consts::PI).ln();
        assert!((gp.log_marginal_likelihood() - lml).abs() < 1e-12);
    }

    #[test]
    fn targets_are_standardized_and_restored() {
        // Same geometry, y = 10 +- 3: predictions scale back (mean 10 + 3 m, var 9 v).
        let a =
            GaussianProcess::fit(kernel(1.0), 0.0, vec![pt(0.0), pt(1.0)], &[-1.0, 1.0]).unwrap();
        let b =
            GaussianProcess::fit(kernel(1.0), 0.0, vec![pt(0.0), pt(1.0)], &[7.0, 13.0]).unwrap();
        for x in [0.3, 1.7] {
            let (ma, va) = a.predict(&pt(x));
            let (mb, vb) = b.predict(&pt(x));
            assert!((mb - (10.0 + 3.0 * ma)).abs() < 1e-9 && (vb - 9.0 * va).abs() < 1e-9);
        }
        // Far from the data the posterior returns to the prior: mean -> 10, var -> 9.
        let (m, v) = b.predict(&pt(50.0));
        assert!((m - 10.0).abs() < 1e-9 && (v - 9.0).abs() < 1e-9);
    }

    #[test]
    fn categorical_factor_and_duplicates() {
        let k = LayerwiseKernel { weights: vec![0.5, 1.5], lengthscale: 2.0, variance: 2.0 };
        let a = [Feature { category: 0, ordinal: 0.0 }, Feature { category: 1, ordinal: 0.5 }];
        let b = [Feature { category: 1, ordinal: 0.0 }, Feature { category: 1, ordinal: 1.0 }];
        // d = 0.5 * 1 + 1.5 * 0.5 = 1.25; k = 2 exp(-1.25 / 2).
        assert!((k.k(&a, &b) - 2.0 * (-0.625f64).exp()).abs() < 1e-15);
        // Duplicate points with zero noise: singular, rescued by jitter.
        let gp = GaussianProcess::fit(kernel(1.0), 0.0, vec![pt(0.0), pt(0.0)], &[1.0, 1.0]);
        assert!(gp.is_ok());
        // The grid prefers the length scale that explains smooth data.
        let xs: Vec<Vec<Feature>> = (0..12).map(|i| pt(i as f64 / 11.0)).collect();
        let ys: Vec<f64> = (0..12).map(|i| (i as f64 / 11.0 * 3.0).sin()).collect();
        let best = GaussianProcess::fit_best(&[1.0], &GpGrid::default(), &xs, &ys).unwrap();
        assert!(best.kernel().lengthscale >= 0.5, "{}", best.kernel().lengthscale);
        assert!(GaussianProcess::fit(kernel(1.0), 0.0, vec![], &[]).is_err());
    }
}
