//! The rule-based mapper (DESIGN section 8, the mapping paper's rule method): which scheme
//! each layer gets, then which rates reach a latency target.
//!
//! Schemes: layers the space keeps dense stay dense; a 3x3 convolution without groups gets a
//! pattern scheme (the one that reaches the most rates); 1x1 convolutions, linear layers and
//! other kernels get a block scheme (block-punched, BCR or BSR) whose block size is the
//! *smallest* whose measured speedup at the reference rate is within `tolerance` of the best
//! on this CPU (smaller blocks keep more accuracy; larger ones stop paying past the knee).
//! Rates: starting from dense, the mapper repeatedly moves the layer whose next rung buys the
//! most milliseconds per fraction of weights removed (weighted by an optional per-layer
//! sensitivity) until the predicted latency meets the target or no rung saves time.

use serde::{Deserialize, Serialize};
use tessera_sparsity::Scheme;

use crate::error::{Result, SearchError};
use crate::latency::LatencyTable;
use crate::space::SearchSpace;

/// Rule settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleConfig {
    /// Block sizes within this fraction of the best measured speedup count as equal (0.03).
    pub tolerance: f64,
    /// Rate at which block sizes are compared (the nearest rate, on a log scale, that every
    /// block scheme of the layer reaches).
    pub reference_rate: f64,
}

impl Default for RuleConfig {
    fn default() -> Self {
        RuleConfig { tolerance: 0.03, reference_rate: 8.0 }
    }
}

/// One layer's scheme and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleScheme {
    /// Layer path.
    pub layer: String,
    /// The scheme (`None`: dense).
    pub scheme: Option<Scheme>,
    /// Why.
    pub reason: String,
}

/// A mapping with its rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleMapping {
    /// The schemes.
    pub schemes: Vec<RuleScheme>,
    /// The candidate (option per layer).
    pub candidate: Vec<usize>,
    /// Predicted milliseconds.
    pub predicted_ms: f64,
    /// Whether the prediction meets the target.
    pub met: bool,
}

fn block_area(s: &Scheme) -> Option<usize> {
    match s {
        Scheme::BlockPunched { block, .. }
        | Scheme::Bcr { block }
        | Scheme::Block { block, .. } => Some(block.rows() * block.cols()),
        _ => None,
    }
}

/// The scheme of every layer of `space`, priced by `table`.
pub fn rule_schemes(
    space: &SearchSpace,
    table: &LatencyTable,
    cfg: &RuleConfig,
) -> Result<Vec<RuleScheme>> {
    table.check(space)?;
    if !(cfg.tolerance >= 0.0 && cfg.reference_rate > 1.0) {
        return Err(SearchError::config("rule", "tolerance >= 0 and reference_rate > 1"));
    }
    let mut out = Vec::with_capacity(space.len());
    for (l, layer) in space.layers().iter().enumerate() {
        let name = layer.layer.name.clone();
        let opts = space.options(l);
        // Distinct schemes in option order, with the rates each reaches.
        let mut schemes: Vec<(&Scheme, usize)> = Vec::new();
        for c in opts {
            if let Some(s) = &c.scheme {
                match schemes.iter_mut().find(|(x, _)| *x == s) {
                    Some(e) => e.1 += 1,
                    None => schemes.push((s, 1)),
                }
            }
        }
        if schemes.is_empty() {
            out.push(RuleScheme {
                layer: name,
                scheme: None,
                reason: format!("kept dense ({:?})", layer.role).to_lowercase(),
            });
            continue;
        }
        if layer.is_conv3x3() {
            let best = schemes.iter().filter(|(s, _)| matches!(s, Scheme::Pattern(_))).fold(
                None::<(&Scheme, usize)>,
                |b, &(s, n)| match b {
                    Some((_, bn)) if bn >= n => b,
                    _ => Some((s, n)),
                },
            );
            if let Some((s, n)) = best {
                out.push(RuleScheme {
                    layer: name,
                    scheme: Some(s.clone()),
                    reason: format!("3x3 convolution: pattern scheme reaching {n} rates"),
                });
                continue;
            }
        }
        // Measured speedup of each block scheme at the comparison rate: of the rates every
        // block scheme reaches here, the one nearest the reference rate (log scale).
        let rates_of = |s: &Scheme| -> Vec<f64> {
            opts.iter().filter(|c| c.scheme.as_ref() == Some(s)).map(|c| c.rate).collect()
        };
        let speed = |s: &Scheme, rate: f64| -> Option<f64> {
            let o = opts
                .iter()
                .position(|c| c.scheme.as_ref() == Some(s) && (c.rate - rate).abs() < 1e-9)?;
            let t = table.layer_ms(l, o);
            (t > 0.0).then(|| table.layer_ms(l, 0) / t)
        };
        let nearest = |rates: &[f64]| -> Option<f64> {
            rates.iter().copied().min_by(|a, b| {
                let d = |r: f64| (r.ln() - cfg.reference_rate.ln()).abs();
                d(*a).total_cmp(&d(*b))
            })
        };
        let block_schemes: Vec<&Scheme> =
            schemes.iter().map(|x| x.0).filter(|s| block_area(s).is_some()).collect();
        let common: Vec<f64> = block_schemes.first().map_or(Vec::new(), |first| {
            rates_of(first)
                .into_iter()
                .filter(|r| {
                    block_schemes.iter().all(|s| rates_of(s).iter().any(|x| (x - r).abs() < 1e-9))
                })
                .collect()
        });
        let at = nearest(&common).unwrap_or(cfg.reference_rate);
        let blocks: Vec<(&Scheme, usize, f64)> = block_schemes
            .iter()
            .filter_map(|s| Some((*s, block_area(s)?, speed(s, at)?)))
            .collect();
        let best = blocks.iter().map(|b| b.2).fold(f64::NEG_INFINITY, f64::max);
        let pick = blocks.iter().filter(|b| b.2 >= (1.0 - cfg.tolerance) * best).fold(
            None::<&(&Scheme, usize, f64)>,
            |p, b| match p {
                Some(q) if q.1 <= b.1 => p,
                _ => Some(b),
            },
        );
        match pick {
            Some((s, area, sp)) => out.push(RuleScheme {
                layer: name,
                scheme: Some((*s).clone()),
                reason: format!(
                    "smallest block ({area} weights) within {:.0}% of the best measured speedup at {at}x ({sp:.2}x vs {best:.2}x)",
                    100.0 * cfg.tolerance
                ),
            }),
            None => {
                // No block scheme here: the fastest scheme at the reference rate, if any.
                let any = schemes
                    .iter()
                    .filter_map(|(s, _)| {
                        let r = nearest(&rates_of(s))?;
                        Some((*s, speed(s, r)?))
                    })
                    .fold(None::<(&Scheme, f64)>, |b, x| match b {
                        Some(bb) if bb.1 >= x.1 => b,
                        _ => Some(x),
                    });
                out.push(match any {
                    Some((s, sp)) => RuleScheme {
                        layer: name,
                        scheme: Some(s.clone()),
                        reason: format!(
                            "no block scheme applies; fastest near {}x ({sp:.2}x)",
                            cfg.reference_rate
                        ),
                    },
                    None => RuleScheme {
                        layer: name,
                        scheme: None,
                        reason: "no scheme has a measured time here".into(),
                    },
                });
            }
        }
    }
    Ok(out)
}

/// Rates for `schemes` that bring the predicted latency to `target_ms` (module docs).
/// `sensitivity[l]` (default 1) scales the accuracy cost of pruning layer `l`.
pub fn rule_rates(
    space: &SearchSpace,
    table: &LatencyTable,
    schemes: Vec<RuleScheme>,
    target_ms: f64,
    sensitivity: Option<&[f64]>,
) -> Result<RuleMapping> {
    table.check(space)?;
    if schemes.len() != space.len() {
        return Err(SearchError::config("schemes", "one per layer of the space"));
    }
    if let Some(s) = sensitivity
        && (s.len() != space.len() || s.iter().any(|v| !(v.is_finite() && *v > 0.0)))
    {
        return Err(SearchError::config("sensitivity", "one positive value per layer"));
    }
    // Each layer's ladder: option indices of its scheme by rising rate, dense first.
    let ladders: Vec<Vec<usize>> = (0..space.len())
        .map(|l| {
            let mut v: Vec<usize> = (1..space.options(l).len())
                .filter(|&o| {
                    schemes[l].scheme.is_some() && space.options(l)[o].scheme == schemes[l].scheme
                })
                .collect();
            v.sort_by(|&a, &b| space.options(l)[a].rate.total_cmp(&space.options(l)[b].rate));
            v.insert(0, 0);
            v
        })
        .collect();
    let mut rung = vec![0usize; space.len()];
    let candidate = |rung: &[usize]| -> Vec<usize> {
        rung.iter().enumerate().map(|(l, &r)| ladders[l][r]).collect()
    };
    loop {
        let c = candidate(&rung);
        if table.total_ms(&c) <= target_ms {
            break;
        }
        let mut best: Option<(f64, usize, usize)> = None;
        for l in 0..space.len() {
            let (now, rate_now) = (table.layer_ms(l, c[l]), space.options(l)[c[l]].rate);
            for (r, &o) in ladders[l].iter().enumerate().skip(rung[l] + 1) {
                let gain = now - table.layer_ms(l, o);
                let removed = 1.0 / rate_now - 1.0 / space.options(l)[o].rate;
                if gain <= 0.0 || removed <= 0.0 {
                    continue;
                }
                let score = gain / (removed * sensitivity.map_or(1.0, |s| s[l]));
                if best.is_none_or(|b| score > b.0) {
                    best = Some((score, l, r));
                }
            }
        }
        let Some((_, l, r)) = best else { break };
        rung[l] = r;
    }
    let c = candidate(&rung);
    let predicted_ms = table.total_ms(&c);
    Ok(RuleMapping { schemes, candidate: c, predicted_ms, met: predicted_ms <= target_ms })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::{LayerRole, SearchLayer, SpaceSpec};
    use tessera_sparsity::{Layer, LayerGeometry};

    fn space() -> SearchSpace {
        let conv = |name: &str, o, i, k, role| SearchLayer {
            layer: Layer::new(
                name,
                LayerGeometry::Conv2d { out_channels: o, in_channels: i, kh: k, kw: k, groups: 1 },
            )
            .unwrap()
            .with_output_positions(64),
            role,
            skip_unit: None,
        };
        SearchSpace::new(
            vec![
                conv("stem", 16, 1, 3, LayerRole::First),
                conv("c3", 16, 16, 3, LayerRole::Body),
                conv("c1", 16, 16, 1, LayerRole::Body),
            ],
            &SpaceSpec {
                schemes: [
                    "pattern:8+connectivity",
                    "block-punched:4x4",
                    "block-punched:8x4",
                    "bcr:8x8",
                ]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
                rates: vec![2.0, 4.0, 8.0],
                dense_roles: vec![LayerRole::First],
                pad: false,
                skip: false,
                separable: false,
            },
        )
        .unwrap()
    }

    /// Times: dense 1 ms per layer; every option `1 / (rate * eff)` with an efficiency per
    /// scheme.
    fn table(sp: &SearchSpace, eff: impl Fn(&str) -> f64) -> LatencyTable {
        LatencyTable {
            other_ms: 0.1,
            per_layer: (0..sp.len())
                .map(|l| {
                    sp.options(l)
                        .iter()
                        .map(|c| {
                            if c.is_dense() { 1.0 } else { 1.0 / (c.rate * eff(&c.scheme_name())) }
                        })
                        .collect()
                })
                .collect(),
        }
    }

    #[test]
    fn schemes_follow_the_rules() {
        let sp = space();
        // 8x4 is 2% slower than 8x8 BCR, 4x4 is 10% slower: 8x4 is the smallest within 3%.
        let t = table(&sp, |s| match s {
            "block-punched:4x4" => 0.88,
            "block-punched:8x4" => 0.96,
            "bcr:8x8" => 0.98,
            _ => 0.9,
        });
        let s = rule_schemes(&sp, &t, &RuleConfig::default()).unwrap();
        assert_eq!(s[0].scheme, None);
        assert_eq!(s[1].scheme.as_ref().unwrap().to_string(), "pattern:8+connectivity");
        assert_eq!(
            s[2].scheme.as_ref().unwrap().to_string(),
            "block-punched:8x4",
            "{}",
            s[2].reason
        );
        // With 4x4 as fast as the rest, the smallest block wins.
        let t = table(&sp, |_| 1.0);
        let s = rule_schemes(&sp, &t, &RuleConfig::default()).unwrap();
        assert_eq!(s[2].scheme.as_ref().unwrap().to_string(), "block-punched:4x4");
        // Tolerance 0: the fastest.
        let t = table(&sp, |s| if s == "bcr:8x8" { 1.0 } else { 0.99 });
        let s =
            rule_schemes(&sp, &t, &RuleConfig { tolerance: 0.0, ..RuleConfig::default() }).unwrap();
        assert_eq!(s[2].scheme.as_ref().unwrap().to_string(), "bcr:8x8");
    }

    #[test]
    fn rates_reach_the_target_greedily() {
        let sp = space();
        let t = table(&sp, |_| 1.0);
        let s = rule_schemes(&sp, &t, &RuleConfig::default()).unwrap();
        // Dense: 0.1 + 3 = 3.1 ms. Target 2.65: one layer at 2x (saves 0.5) is enough.
        let m = rule_rates(&sp, &t, s.clone(), 2.65, None).unwrap();
        assert!(m.met && (m.predicted_ms - 2.6).abs() < 1e-12, "{m:?}");
        assert_eq!(m.candidate[0], 0);
        // Unreachable target: every prunable layer at its top rung, `met` false.
        let m = rule_rates(&sp, &t, s.clone(), 0.5, None).unwrap();
        assert!(!m.met);
        assert_eq!(sp.choices(&m.candidate)[1].rate, 8.0);
        assert_eq!(sp.choices(&m.candidate)[2].rate, 8.0);
        assert!((m.predicted_ms - (0.1 + 1.0 + 0.125 + 0.125)).abs() < 1e-12);
        // A sensitive layer is pruned last: with c3 100x more sensitive, c1 goes first.
        // Bad sensitivities are a typed error naming the field.
        let e = rule_rates(&sp, &t, s.clone(), 2.0, Some(&[1.0, -1.0, 1.0])).unwrap_err();
        assert!(e.to_string().contains("sensitivity"), "{e}");
        let m = rule_rates(&sp, &t, s, 2.0, Some(&[1.0, 100.0, 1.0])).unwrap();
        assert!(m.met);
        assert!(
            sp.choices(&m.candidate)[2].rate > sp.choices(&m.candidate)[1].rate,
            "{:?}",
            sp.key(&m.candidate)
        );
    }
}
