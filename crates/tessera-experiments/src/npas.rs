//! `npas`: the search itself (NPAS, CVPR 2021): the Q-learning agent proposes per-layer
//! (scheme, block size, rate) candidates, with the operator choices `skip` on the layers of
//! every identity-shortcut residual block (the block is removed whole) and `separable` on
//! every 3x3 body convolution (the architecture half of the joint search), a Gaussian
//! process with Expected Improvement picks which get the fast evaluation, and the reward is
//! accuracy penalized above a latency target. Run under two latency targets on ResNet-20 /
//! Fashion-MNIST against random search with the same budget and the rule-based mapper;
//! reported: the best configuration of each, the search cost (evaluations, fine-tune
//! epochs, seconds), the best-so-far curves, random search constrained by the latency model
//! as a stronger baseline, and the target (NPAS reaches random search's best with <= 1/3 of
//! its evaluations). Every evaluation is logged under `logs/`, and `--resume` continues a
//! search from its log.

use serde::{Deserialize, Serialize};
use tessera_search::{
    NpasConfig, Reward, RuleConfig, SearchOutcome, SpaceSpec, evaluate_list, npas,
    random_feasible_search, random_search, rule_rates, rule_schemes,
};

use crate::error::{ExperimentError, Result};
use crate::plot::{Plot, Series, line_chart};
use crate::prune_schemes::CheckResult;
use crate::report::Table;
use crate::run::{Experiment, Outcome, RunContext, RunOptions, Scale};
use crate::scheme_search::{
    FastEval, MappingPoint, SearchStudy, describe, layer_weights, log_path, point, prepare,
    resnet_study,
};
use crate::study::select;

/// The experiment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Npas;

/// One study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NpasStudy {
    /// Model, data, space, evaluation, timing, targets.
    pub study: SearchStudy,
    /// NPAS (the seed is the run's).
    pub search: NpasConfig,
    /// Random search's budget.
    pub random_evaluations: usize,
    /// The largest fraction of random search's evaluations NPAS may use to reach its best.
    pub max_fraction: f64,
    /// Also run random search constrained by the latency model
    /// ([`tessera_search::random_feasible_search`]) with random search's budget: the
    /// stronger baseline, reported beside the target (which the issue states against plain
    /// random search).
    #[serde(default)]
    pub random_feasible: bool,
}

/// The experiment's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NpasExperimentConfig {
    /// The studies.
    pub studies: Vec<NpasStudy>,
}

/// One search's summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchSummary {
    /// `npas`, `random`, `random-feasible` or `rule`.
    pub method: String,
    /// Best configuration by reward.
    pub best: MappingPoint,
    /// Its reward.
    pub reward: f64,
    /// Evaluations, fine-tune epochs, wall seconds.
    pub cost: (usize, f64, f64),
    /// Best reward after each evaluation.
    pub best_so_far: Vec<f64>,
    /// Evaluations that measured over the latency target.
    #[serde(default)]
    pub over_target: usize,
    /// The best configuration's top-1 on the test images after the same evaluation, when
    /// the searches selected on held-out training images (`SearchStudy.validation`).
    #[serde(default)]
    pub test_top1: Option<f64>,
}

/// One latency target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetResult {
    /// Fraction of the dense latency.
    pub fraction: f64,
    /// Target, ms.
    pub target_ms: f64,
    /// NPAS, random search, the rule-based mapper.
    pub searches: Vec<SearchSummary>,
    /// Evaluations NPAS needed to reach random search's best reward (`None`: never).
    pub npas_to_random_best: Option<usize>,
    /// Evaluations NPAS needed to reach the constrained random search's best (`None`: never
    /// or not run).
    #[serde(default)]
    pub npas_to_random_feasible_best: Option<usize>,
}

/// What one study measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NpasResult {
    /// Study name.
    pub name: String,
    /// Dense top-1 (test) and latency (ms).
    pub dense: (f64, f64),
    /// Held-out training images the searches selected on and the dense model's top-1 there
    /// (`None`: they selected on the test images).
    #[serde(default)]
    pub validation: Option<(usize, f64)>,
    /// Searched layers and log10 of the candidates.
    pub space: (usize, f64),
    /// Per target.
    pub targets: Vec<TargetResult>,
    /// The target check.
    pub check: CheckResult,
}

impl NpasExperimentConfig {
    /// The preset of `scale`.
    pub fn preset(scale: Scale) -> Result<Self> {
        let evaluations = match scale {
            Scale::Smoke => 4,
            Scale::Default => 30,
            Scale::Paper => 100,
        };
        let study = resnet_study(scale)?;
        let mut search = NpasConfig::new(evaluations, 0);
        // Two rounds of initial design at the default budget (4 of 30; 8 before the warm-up
        // drew its own proposals): the GP's picks scored 0.85 on average at 0.5x against
        // 0.79 for the warm-up's (run `20261205T185017Z`), so it starts early.
        search.warmup = (evaluations / 8).max(2);
        Ok(NpasExperimentConfig {
            studies: vec![NpasStudy {
                study: SearchStudy {
                    // The joint search: pruning and the operator choices `skip` per residual
                    // block and `separable` per 3x3 body convolution.
                    space: SpaceSpec { skip: true, separable: true, ..study.space.clone() },
                    ..study
                },
                search,
                random_evaluations: evaluations,
                max_fraction: 1.0 / 3.0,
                random_feasible: true,
            }],
        })
    }
}

impl Experiment for Npas {
    fn name(&self) -> &'static str {
        "npas"
    }

    fn description(&self) -> &'static str {
        "NPAS's compiler-aware search (CVPR'21): Q-learning proposals + GP/EI selection over per-layer scheme, block size and rate under two latency targets, against random search and the rule-based mapper, with the search cost."
    }

    fn config(&self, options: &RunOptions) -> Result<serde_json::Value> {
        let mut cfg = NpasExperimentConfig::preset(options.scale)?;
        for s in &mut cfg.studies {
            s.search.seed = options.seed;
            s.study.seed(options.seed);
        }
        cfg.studies = select(cfg.studies, &options.only, |s| &s.study.name)?;
        serde_json::to_value(cfg).map_err(|e| ExperimentError::config("config", e))
    }

    fn run(&self, ctx: &RunContext) -> Result<Outcome> {
        let cfg: NpasExperimentConfig = serde_json::from_value(ctx.config.clone())
            .map_err(|e| ExperimentError::config("config", e))?;
        let mut results = Vec::new();
        let mut plots = Vec::new();
        for s in &cfg.studies {
            let r = run_study(ctx, s)?;
            for t in &r.targets {
                plots.push(curves(&r.name, t)?);
            }
            results.push(r);
        }
        Ok(Outcome {
            figures: serde_json::to_value(&results)
                .map_err(|e| ExperimentError::config("figures", e))?,
            report: report(&results, ctx.full_data(tessera_data::KnownSet::FashionMnist)),
            plots,
        })
    }
}

fn summary(
    eval: &FastEval<'_>,
    method: &str,
    out: &SearchOutcome,
    target_ms: f64,
) -> Result<SearchSummary> {
    let p = eval.prepared;
    let best = out
        .best()
        .ok_or_else(|| ExperimentError::config(method.to_string(), "no candidate evaluated"))?;
    let (epochs, seconds) = out.cost();
    Ok(SearchSummary {
        method: method.into(),
        best: MappingPoint { key: describe(p, &best.candidate), ..point(p, method, best) },
        reward: best.reward,
        cost: (out.evaluations.len(), epochs, seconds),
        best_so_far: out.best_so_far(),
        over_target: out
            .evaluations
            .iter()
            .filter(|e| e.measurement.latency_ms > target_ms)
            .count(),
        test_top1: eval.test_accuracy(&best.candidate)?,
    })
}

fn run_study(ctx: &RunContext, s: &NpasStudy) -> Result<NpasResult> {
    let _span = tracing::info_span!("npas", study = %s.study.name).entered();
    let p = prepare(ctx, &s.study)?;
    let mut eval = FastEval { prepared: &p, study: &s.study };
    let mut targets = Vec::new();
    for &fraction in &s.study.targets {
        let target_ms = fraction * p.dense_ms;
        let reward = Reward { latency_target_ms: target_ms, penalty: s.study.penalty };
        let log = |name: &str| log_path(ctx, &s.study.name, &format!("{name}-{fraction}"));
        let cfg = NpasConfig { layer_weights: Some(layer_weights(&p.space)), ..s.search.clone() };
        let n = npas(&p.space, &mut eval, reward, &cfg, Some(&log("npas")))?;
        let r = random_search(
            &p.space,
            &mut eval,
            reward,
            s.random_evaluations,
            s.search.seed,
            Some(&log("random")),
        )?;
        let rf = if s.random_feasible {
            Some(random_feasible_search(
                &p.space,
                &mut eval,
                reward,
                s.random_evaluations,
                s.search.seed,
                Some(&log("random-feasible")),
            )?)
        } else {
            None
        };
        let schemes = rule_schemes(&p.space, &p.table, &RuleConfig::default())?;
        let m = rule_rates(&p.space, &p.table, schemes, target_ms, None)?;
        let rule = evaluate_list(
            &p.space,
            &mut eval,
            reward,
            &[("rule".to_string(), m.candidate)],
            Some(&log("rule")),
        )?;
        let random_best = r.best().map_or(f64::INFINITY, |b| b.reward);
        let mut searches =
            vec![summary(&eval, "npas", &n, target_ms)?, summary(&eval, "random", &r, target_ms)?];
        let mut npas_to_random_feasible_best = None;
        if let Some(rf) = &rf {
            searches.push(summary(&eval, "random-feasible", rf, target_ms)?);
            npas_to_random_feasible_best =
                n.evaluations_to_reach(rf.best().map_or(f64::INFINITY, |b| b.reward));
        }
        searches.push(summary(&eval, "rule", &rule, target_ms)?);
        targets.push(TargetResult {
            fraction,
            target_ms,
            npas_to_random_best: n.evaluations_to_reach(random_best),
            npas_to_random_feasible_best,
            searches,
        });
    }
    let full = ctx.full_data(s.study.dataset);
    let detail: Vec<String> = targets
        .iter()
        .map(|t| {
            let mut d = match t.npas_to_random_best {
                Some(k) => format!(
                    "@{}: NPAS reached random search's best ({} evaluations) after {k}",
                    t.fraction, s.random_evaluations
                ),
                None => format!(
                    "@{}: NPAS did not reach random search's best ({} evaluations) within its {}",
                    t.fraction, s.random_evaluations, s.search.evaluations
                ),
            };
            if s.random_feasible {
                d.push_str(&match t.npas_to_random_feasible_best {
                    Some(k) => format!(" (the latency-constrained random search's best after {k})"),
                    None => " (not the latency-constrained random search's best)".to_string(),
                });
            }
            d
        })
        .collect();
    let met = full.then(|| {
        targets.iter().all(|t| {
            t.npas_to_random_best
                .is_some_and(|k| k as f64 <= s.max_fraction * s.random_evaluations as f64)
        })
    });
    let validation = match &p.open.validation {
        Some(v) => {
            Some((v.len(), crate::study::evaluate_saved(&p.open.dense_dir, v, &p.open.device)?.1))
        }
        None => None,
    };
    Ok(NpasResult {
        name: s.study.name.clone(),
        dense: (p.open.dense_top1, p.dense_ms),
        validation,
        space: (p.space.len(), p.space.log10_size()),
        targets,
        check: CheckResult {
            target: format!(
                "{}: NPAS reaches random search's best with <= {:.0}% of its evaluations, at every target",
                s.study.name,
                100.0 * s.max_fraction
            ),
            met,
            detail: detail.join("; "),
        },
    })
}

fn curves(name: &str, t: &TargetResult) -> Result<Plot> {
    let series: Vec<Series> = t
        .searches
        .iter()
        .filter(|s| s.method != "rule")
        .map(|s| Series {
            name: s.method.clone(),
            points: s
                .best_so_far
                .iter()
                .enumerate()
                .map(|(i, &r)| ((i + 1) as f64, 100.0 * r))
                .collect(),
        })
        .collect();
    Ok(Plot {
        file: format!("best-so-far-{}-{}.svg", crate::study::file_safe(name), t.fraction),
        caption: format!(
            "{name}, target {:.3} ms ({}x dense): best reward found vs evaluations",
            t.target_ms, t.fraction
        ),
        svg: line_chart(
            &format!("{name}: search progress at {:.3} ms", t.target_ms),
            "evaluations",
            "best reward (top-1 % minus latency penalty)",
            &series,
        )?,
    })
}

fn report(results: &[NpasResult], full_data: bool) -> String {
    let pct = |v: f64| format!("{:.2}%", 100.0 * v);
    let mut md = String::from(
        "Reward = top-1 after the fast evaluation (one-shot magnitude pruning + short fine-tune) \
         minus the relative latency overshoot above the target; latency measured on the \
         compiled plan (batch 1, 1 thread). Where a study holds training images out, the \
         searches select on them and each method's best is scored again on the test images \
         (same seeded evaluation).\n\n",
    );
    if !full_data {
        md.push_str("**Fixtures only** (smoke scale or no cached data): the numbers check the pipeline, not the claim.\n\n");
    }
    for r in results {
        let dense = match r.validation {
            Some((n, top1)) => format!(
                "Dense {} on the test images ({} on the {n} held-out training images the searches select on)",
                pct(r.dense.0),
                pct(top1)
            ),
            None => format!("Dense {}", pct(r.dense.0)),
        };
        md.push_str(&format!(
            "## {}\n\n{dense} in {:.3} ms; {} searched layers, 10^{:.1} candidates.\n\n",
            r.name, r.dense.1, r.space.0, r.space.1
        ));
        let held_out = r.validation.is_some();
        let mut columns = vec!["target", "method"];
        columns.extend(if held_out {
            &["best top-1 (validation)", "its test top-1"][..]
        } else {
            &["best top-1"][..]
        });
        columns.extend([
            "latency (ms)",
            "reward",
            "evaluations",
            "over the target",
            "fine-tune epochs",
            "seconds",
        ]);
        let mut t = Table::new(&columns);
        for tr in &r.targets {
            for s in &tr.searches {
                let mut row = vec![
                    format!("{:.3} ms ({}x)", tr.target_ms, tr.fraction),
                    s.method.clone(),
                    pct(s.best.top1),
                ];
                if held_out {
                    row.push(s.test_top1.map_or_else(|| "—".into(), pct));
                }
                row.extend([
                    format!("{:.3}", s.best.latency_ms),
                    format!("{:.4}", s.reward),
                    s.cost.0.to_string(),
                    s.over_target.to_string(),
                    format!("{:.2}", s.cost.1),
                    format!("{:.0}", s.cost.2),
                ]);
                t.row(row);
            }
        }
        md.push_str(&t.to_markdown());
        md.push('\n');
        for tr in &r.targets {
            if let Some(n) = tr.searches.first() {
                md.push_str(&format!(
                    "Best NPAS configuration @{}: {}.\n\n",
                    tr.fraction, n.best.key
                ));
            }
        }
        md.push_str(&format!(
            "Target: {} — {}. {}\n\n",
            r.check.target,
            r.check.verdict(),
            r.check.detail
        ));
    }
    md.push_str(
        "Operator choices: `skip` removes an identity-shortcut residual block whole (its layers \
         show `skip`); `separable@<r>x` computes a 3x3 convolution by a dense depthwise + \
         pointwise pair (r = its multiply-add reduction), initialized from the dense weights by \
         network decoupling (per input channel the best rank-1 factorization) and fine-tuned \
         like every candidate.\n",
    );
    md
}
