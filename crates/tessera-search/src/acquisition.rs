//! Expected Improvement (for maximization) and the standard normal it needs.
//!
//! `EI(x) = (mu - f* - xi) Phi(z) + sigma phi(z)`, `z = (mu - f* - xi) / sigma`, and
//! `max(0, mu - f* - xi)` when `sigma = 0` (Jones, Schonlau and Welch 1998). `Phi` comes from
//! libm's `erfc`, accurate to the last bits in the tails where `1 - erf` cancels.

/// Standard normal density.
pub fn normal_pdf(z: f64) -> f64 {
    (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// Standard normal distribution function.
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * libm::erfc(-z / std::f64::consts::SQRT_2)
}

/// Expected improvement over the best observed value `best` of a maximized objective whose
/// posterior at a point is normal with `mean` and standard deviation `sd`; `xi >= 0` trades
/// exploitation for exploration.
pub fn expected_improvement(mean: f64, sd: f64, best: f64, xi: f64) -> f64 {
    let gain = mean - best - xi;
    if sd.is_nan() || sd <= 1e-12 {
        return gain.max(0.0);
    }
    let z = gain / sd;
    (gain * normal_cdf(z) + sd * normal_pdf(z)).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// EI against brute force: the expectation of `max(0, f - best - xi)` for
        /// `f ~ N(mean, sd^2)` by the midpoint rule over +-10 sd.
        #[test]
        fn ei_is_the_expected_positive_gain(mean in -3.0f64..3.0, sd in 0.05f64..2.0, best in -3.0f64..3.0, xi in 0.0f64..0.5) {
            let n = 40_000;
            let (lo, hi) = (mean - 10.0 * sd, mean + 10.0 * sd);
            let h = (hi - lo) / n as f64;
            let brute: f64 = (0..n)
                .map(|i| {
                    let f = lo + (i as f64 + 0.5) * h;
                    (f - best - xi).max(0.0) * normal_pdf((f - mean) / sd) / sd * h
                })
                .sum();
            let ei = expected_improvement(mean, sd, best, xi);
            prop_assert!((ei - brute).abs() < 1e-6 * (1.0 + brute), "{ei} vs {brute}");
        }
    }

    #[test]
    fn normal_values_match_tables() {
        // Phi(0) = 1/2, Phi(1) = 0.8413447460685429, Phi(-3) = 0.0013498980316301, and
        // phi(0) = 1/sqrt(2 pi).
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-16);
        assert!((normal_cdf(1.0) - 0.841_344_746_068_542_9).abs() < 1e-15);
        assert!((normal_cdf(-3.0) - 0.001_349_898_031_630_1).abs() < 1e-15);
        assert!((normal_pdf(0.0) - 0.398_942_280_401_432_7).abs() < 1e-16);
    }

    #[test]
    fn expected_improvement_matches_its_formula() {
        // mu - f* = 0: EI = sigma phi(0).
        assert!((expected_improvement(1.0, 2.0, 1.0, 0.0) - 2.0 * normal_pdf(0.0)).abs() < 1e-15);
        // mu - f* = 1, sigma = 1: EI = Phi(1) + phi(1) = 0.8413447460685429 + 0.2419707245191434.
        let want = 0.841_344_746_068_542_9 + 0.241_970_724_519_143_4;
        assert!((expected_improvement(1.0, 1.0, 0.0, 0.0) - want).abs() < 1e-14);
        // xi shifts the incumbent.
        assert_eq!(
            expected_improvement(2.0, 1.0, 0.5, 0.5),
            expected_improvement(2.0, 1.0, 1.0, 0.0)
        );
        // No uncertainty: the plain improvement.
        assert_eq!(expected_improvement(3.0, 0.0, 1.0, 0.0), 2.0);
        assert_eq!(expected_improvement(0.5, 0.0, 1.0, 0.0), 0.0);
        // Monotone in the mean and in the deviation.
        let e = |m: f64, s: f64| expected_improvement(m, s, 0.0, 0.0);
        assert!(e(0.1, 1.0) > e(0.0, 1.0) && e(0.0, 2.0) > e(0.0, 1.0));
        // Far below the incumbent with little uncertainty: (almost) nothing.
        assert!(e(-10.0, 0.1) < 1e-20);
    }
}
