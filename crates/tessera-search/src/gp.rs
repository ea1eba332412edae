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
//!
//! Mean function: either the constant (the standardized targets' mean) or an explicit linear
//! trend in the candidate's overall compression ([`CompressionTrend`]: `h(x) = [1, c(x)]`,
//! `c` the weighted mean ordinal, a skipped layer counting as fully compressed), fitted with
//! a vague prior on its coefficients (Rasmussen and Williams 2006, section 2.7: generalized
//! least squares for the coefficients, their uncertainty added to the posterior variance, and
//! the marginal likelihood of eq. 2.45). Top-1 falls with compression across the whole space;
//! a zero-mean GP over per-layer choices has to learn that from scratch near every point and,
//! with tens of noisy evaluations, predicted a nearly flat surface in the NPAS runs.

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
    /// scale over the largest rate in the space (a skipped layer at the top, 1).
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
                        // A skipped layer is the limit of compression.
                        let ordinal = if c.skip { 1.0 } else { c.rate.ln() / scale };
                        Feature { category: category as u32, ordinal }
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

/// The linear trend `h(x) = [1, c(x)]` with `c(x) = sum_l w_l ordinal_l / sum_l w_l`, the
/// candidate's overall compression in [0, 1] (module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompressionTrend {
    /// Per-layer weights of the mean (the kernel's weights in the searches).
    pub weights: Vec<f64>,
}

impl CompressionTrend {
    /// The basis functions at `x`.
    pub fn basis(&self, x: &[Feature]) -> [f64; 2] {
        let total: f64 = self.weights.iter().sum();
        let c: f64 = x.iter().zip(&self.weights).map(|(f, w)| w * f.ordinal).sum();
        [1.0, if total > 0.0 { c / total } else { 0.0 }]
    }
}

/// The fitted trend: basis at the points, `A = H K^-1 H^T` and the coefficients.
#[derive(Debug, Clone)]
struct FittedTrend {
    trend: CompressionTrend,
    /// `K^-1 h_j(X)` for j = 0, 1 (n each).
    kinv_h: [Vec<f64>; 2],
    /// Lower Cholesky factor of `A` (2 x 2, row-major).
    a_chol: [f64; 4],
    /// Generalized least-squares coefficients (standardized units).
    beta: [f64; 2],
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
    trend: Option<FittedTrend>,
}

/// Largest jitter added to the diagonal before giving up.
const MAX_JITTER: f64 = 1e-3;

impl<K: Kernel> GaussianProcess<K> {
    /// Fits `kernel` with observation-noise variance `noise` (standardized units) to targets
    /// `y` at points `x`, around the targets' mean.
    pub fn fit(kernel: K, noise: f64, x: Vec<Vec<Feature>>, y: &[f64]) -> Result<Self> {
        Self::fit_inner(kernel, noise, x, y, None)
    }

    /// Fits like [`GaussianProcess::fit`] around a linear `trend` whose coefficients are
    /// estimated with the kernel (module docs). Fails when the trend's basis is collinear on
    /// `x` (every point equally compressed) or there are fewer than 3 points.
    pub fn fit_with_trend(
        kernel: K,
        noise: f64,
        x: Vec<Vec<Feature>>,
        y: &[f64],
        trend: CompressionTrend,
    ) -> Result<Self> {
        Self::fit_inner(kernel, noise, x, y, Some(trend))
    }

    fn fit_inner(
        kernel: K,
        noise: f64,
        x: Vec<Vec<Feature>>,
        y: &[f64],
        trend: Option<CompressionTrend>,
    ) -> Result<Self> {
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
        if trend.is_some() && n < 3 {
            return Err(SearchError::config("gp", format!("a trend needs 3 points or more ({n})")));
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
        let kinv = |b: &[f64]| solve_upper_t(&chol, n, &solve_lower(&chol, n, b));
        let log_det: f64 = (0..n).map(|i| chol[i * n + i].ln()).sum();
        let (alpha, fitted, lml) = match trend {
            None => {
                let alpha = kinv(&ys);
                let fit: f64 = ys.iter().zip(&alpha).map(|(a, b)| a * b).sum();
                let lml = -0.5 * fit - log_det - 0.5 * n as f64 * (2.0 * std::f64::consts::PI).ln();
                (alpha, None, lml)
            }
            Some(trend) => {
                // R&W eq. 2.42 and 2.45 with p = 2 basis functions.
                let h: Vec<[f64; 2]> = x.iter().map(|xi| trend.basis(xi)).collect();
                let col = |j: usize| h.iter().map(|r| r[j]).collect::<Vec<f64>>();
                let kinv_h = [kinv(&col(0)), kinv(&col(1))];
                let dot = |a: &[f64], j: usize| a.iter().zip(&h).map(|(v, r)| v * r[j]).sum();
                let a = [
                    dot(&kinv_h[0], 0),
                    dot(&kinv_h[1], 0),
                    dot(&kinv_h[0], 1),
                    dot(&kinv_h[1], 1),
                ];
                let a_chol = cholesky(&a, 2).ok_or_else(|| {
                    SearchError::config("gp trend", "the points do not vary in compression")
                })?;
                let kinv_y = kinv(&ys);
                let b = [dot(&kinv_y, 0), dot(&kinv_y, 1)];
                let bs = solve_upper_t(&a_chol, 2, &solve_lower(&a_chol, 2, &b));
                let beta = [bs[0], bs[1]];
                let resid: Vec<f64> =
                    ys.iter().zip(&h).map(|(v, r)| v - beta[0] * r[0] - beta[1] * r[1]).collect();
                let alpha = kinv(&resid);
                let fit: f64 = resid.iter().zip(&alpha).map(|(a, b)| a * b).sum();
                let log_det_a = a_chol[0].ln() + a_chol[3].ln();
                let lml = -0.5 * fit
                    - log_det
                    - log_det_a
                    - 0.5 * (n as f64 - 2.0) * (2.0 * std::f64::consts::PI).ln();
                let a_chol = [a_chol[0], a_chol[1], a_chol[2], a_chol[3]];
                (alpha, Some(FittedTrend { trend, kinv_h, a_chol, beta }), lml)
            }
        };
        Ok(GaussianProcess {
            kernel,
            noise: noise + jitter,
            x,
            chol,
            alpha,
            y_mean,
            y_scale,
            lml,
            trend: fitted,
        })
    }

    /// Posterior mean and variance of the target at `p` (original units; the variance of the
    /// latent function, without observation noise).
    /// With a trend, the mean adds `h(p)^T beta` and the variance the coefficients'
    /// uncertainty `R^T A^-1 R`, `R = h(p) - H K^-1 k(X, p)` (R&W eq. 2.42).
    pub fn predict(&self, p: &[Feature]) -> (f64, f64) {
        let n = self.x.len();
        let ks: Vec<f64> = self.x.iter().map(|xi| self.kernel.k(xi, p)).collect();
        let mut mean: f64 = ks.iter().zip(&self.alpha).map(|(a, b)| a * b).sum();
        let v = solve_lower(&self.chol, n, &ks);
        let mut var = self.kernel.k(p, p) - v.iter().map(|x| x * x).sum::<f64>();
        if let Some(t) = &self.trend {
            let h = t.trend.basis(p);
            mean += h[0] * t.beta[0] + h[1] * t.beta[1];
            let r: Vec<f64> = (0..2)
                .map(|j| h[j] - t.kinv_h[j].iter().zip(&ks).map(|(a, b)| a * b).sum::<f64>())
                .collect();
            let w = solve_lower(&t.a_chol, 2, &r);
            var += w[0] * w[0] + w[1] * w[1];
        }
        (self.y_mean + self.y_scale * mean, self.y_scale * self.y_scale * var.max(0.0))
    }

    /// The trend's coefficients `[intercept, slope]` in the targets' units (`None` without
    /// a trend).
    pub fn trend_coefficients(&self) -> Option<[f64; 2]> {
        self.trend
            .as_ref()
            .map(|t| [self.y_mean + self.y_scale * t.beta[0], self.y_scale * t.beta[1]])
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
    /// With `trend`, every fit has that linear mean (the marginal likelihoods then compare
    /// like with like).
    pub fn fit_best(
        weights: &[f64],
        grid: &GpGrid,
        x: &[Vec<Feature>],
        y: &[f64],
        trend: Option<&CompressionTrend>,
    ) -> Result<Self> {
        let mut best: Option<Self> = None;
        for &lengthscale in &grid.lengthscales {
            for &noise in &grid.noises {
                let kernel =
                    LayerwiseKernel { weights: weights.to_vec(), lengthscale, variance: 1.0 };
                let fitted = Self::fit_inner(kernel, noise, x.to_vec(), y, trend.cloned());
                let Ok(gp) = fitted else { continue };
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
        let best = GaussianProcess::fit_best(&[1.0], &GpGrid::default(), &xs, &ys, None).unwrap();
        assert!(best.kernel().lengthscale >= 0.5, "{}", best.kernel().lengthscale);
        assert!(GaussianProcess::fit(kernel(1.0), 0.0, vec![], &[]).is_err());
    }

    /// `k(a, b) + b * h(a)^T h(b)`: a GP with a Gaussian prior of variance `b` on the trend's
    /// coefficients, whose `b -> infinity` limit is the vague-prior trend (R&W eq. 2.40-2.42).
    struct WithPriorOnTrend {
        inner: LayerwiseKernel,
        trend: CompressionTrend,
        b: f64,
    }

    impl Kernel for WithPriorOnTrend {
        fn k(&self, a: &[Feature], b: &[Feature]) -> f64 {
            let (ha, hb) = (self.trend.basis(a), self.trend.basis(b));
            self.inner.k(a, b) + self.b * (ha[0] * hb[0] + ha[1] * hb[1])
        }
    }

    #[test]
    fn trend_is_the_limit_of_a_broad_prior_on_its_coefficients() {
        let trend = CompressionTrend { weights: vec![1.0] };
        let xs: Vec<Vec<Feature>> =
            [0.0, 0.15, 0.3, 0.5, 0.55, 0.8].iter().map(|&v| pt(v)).collect();
        let ys = [0.91, 0.90, 0.86, 0.84, 0.85, 0.78];
        let noise = 0.05;
        let gp =
            GaussianProcess::fit_with_trend(kernel(0.3), noise, xs.clone(), &ys, trend.clone())
                .unwrap();
        let b = 1e5;
        let broad =
            GaussianProcess::fit(WithPriorOnTrend { inner: kernel(0.3), trend, b }, noise, xs, &ys)
                .unwrap();
        for x in [0.1, 0.42, 1.0, 2.5] {
            let (m, v) = gp.predict(&pt(x));
            let (mb, vb) = broad.predict(&pt(x));
            assert!((m - mb).abs() < 1e-4, "x={x}: mean {m} vs {mb}");
            assert!((v - vb).abs() < 1e-3 * vb.max(1e-3), "x={x}: var {v} vs {vb}");
        }
        // Eq. 2.45 drops the prior's -p/2 log b and -p/2 log 2 pi (p = 2) from the broad
        // model's log marginal likelihood.
        let limit = broad.log_marginal_likelihood() + b.ln() + (2.0 * std::f64::consts::PI).ln();
        assert!((gp.log_marginal_likelihood() - limit).abs() < 1e-3, "{} vs {limit}", gp.lml);
    }

    #[test]
    fn a_linear_trend_is_recovered_and_extrapolated() {
        // y = 0.9 - 0.3 c exactly: the residuals vanish, the posterior mean is the line
        // everywhere, far outside the data too, where a constant-mean GP returns to the mean.
        let trend = CompressionTrend { weights: vec![1.0] };
        let xs: Vec<Vec<Feature>> = [0.0, 0.2, 0.4].iter().map(|&v| pt(v)).collect();
        let ys: Vec<f64> = [0.0, 0.2, 0.4].iter().map(|c| 0.9 - 0.3 * c).collect();
        let gp = GaussianProcess::fit_with_trend(kernel(0.2), 0.0, xs.clone(), &ys, trend.clone())
            .unwrap();
        let [a, s] = gp.trend_coefficients().unwrap();
        assert!((a - 0.9).abs() < 1e-9 && (s + 0.3).abs() < 1e-9, "{a} {s}");
        let (m, _) = gp.predict(&pt(1.0));
        assert!((m - 0.6).abs() < 1e-9, "{m}");
        let plain = GaussianProcess::fit(kernel(0.2), 0.0, xs.clone(), &ys).unwrap();
        assert!((plain.predict(&pt(1.0)).0 - 0.84).abs() < 0.01);
        // The trend's basis: weighted mean ordinal.
        let t2 = CompressionTrend { weights: vec![1.0, 3.0] };
        let x = [Feature { category: 0, ordinal: 0.2 }, Feature { category: 5, ordinal: 0.6 }];
        let h = t2.basis(&x);
        assert!(h[0] == 1.0 && (h[1] - (0.2 + 1.8) / 4.0).abs() < 1e-15, "{h:?}");
        // Every point equally compressed: the slope is not identifiable.
        let flat: Vec<Vec<Feature>> = (0..4).map(|_| pt(0.3)).collect();
        let err = GaussianProcess::fit_with_trend(
            kernel(0.2),
            0.01,
            flat,
            &[0.8, 0.81, 0.79, 0.8],
            trend.clone(),
        );
        assert!(err.is_err());
        assert!(
            GaussianProcess::fit_with_trend(kernel(0.2), 0.0, xs[..2].to_vec(), &ys[..2], trend)
                .is_err()
        );
    }
}
