//! `scheme-mapping`: which sparsity scheme each layer should get (Gong et al., TODAES 2022):
//! uniform schemes (one scheme at one rate on every layer it applies to) against the
//! rule-based mapper and the search-based mapper (NPAS over per-layer scheme and rate) at
//! two latency targets, on ResNet-20 and MobileNetV2 / Fashion-MNIST. The search starts from
//! the baselines' measurements (its GP, agent and mutations see them; its result counts only
//! what it evaluated itself). Every arm gets the same
//! fast evaluation (one-shot magnitude pruning + a short fine-tune, measured latency of the
//! compiled plan), so the comparison is of mappings, not of training budgets. Output: the
//! accuracy-latency points of every arm (table and Pareto plot), the rule's reasons per
//! layer, the search's cost, and the target (search beats the best uniform scheme's latency
//! by >= 1.3x at equal accuracy) checked on the figures.

use serde::{Deserialize, Serialize};
use tessera_search::{
    NpasConfig, Reward, RuleConfig, RuleScheme, SearchOutcome, evaluate_list, npas_with_prior,
    rule_rates, rule_schemes,
};

use crate::error::{ExperimentError, Result};
use crate::plot::{Plot, Series, scatter_chart};
use crate::prune_schemes::CheckResult;
use crate::report::Table;
use crate::run::{Experiment, Outcome, RunContext, RunOptions, Scale};
use crate::scheme_search::{
    FastEval, MappingPoint, SearchStudy, describe, layer_weights, log_path, mobilenet_study, point,
    prepare, pruned_graph, resnet_study, retime, timing_input,
};
use crate::study::select;

/// The experiment.
#[derive(Debug, Clone, Copy, Default)]
pub struct SchemeMapping;

/// One study of the experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MappingStudy {
    /// Model, data, space, evaluation, timing, targets.
    pub study: SearchStudy,
    /// Rates of the uniform arms.
    pub uniform_rates: Vec<f64>,
    /// The rule-based mapper.
    pub rule: RuleConfig,
    /// The search (one per latency target; the seed is the run's).
    pub search: NpasConfig,
    /// Top-1 difference that still counts as equal accuracy (0.005 = half a point).
    pub equal_accuracy: f64,
    /// Speedup over the best uniform arm the target asks for.
    pub min_speedup: f64,
    /// Rounds of the interleaved re-timing of the compared arms at the end of the run.
    #[serde(default = "default_retime_rounds")]
    pub retime_rounds: usize,
}

fn default_retime_rounds() -> usize {
    5
}

/// The experiment's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemeMappingConfig {
    /// The studies.
    pub studies: Vec<MappingStudy>,
}

/// The rule-based mapping at one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleAtTarget {
    /// Target latency, ms.
    pub target_ms: f64,
    /// Per layer: scheme and why.
    pub schemes: Vec<RuleScheme>,
    /// Predicted latency, ms.
    pub predicted_ms: f64,
    /// Whether the prediction met the target.
    pub met: bool,
}

/// The search at one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchAtTarget {
    /// Target latency, ms.
    pub target_ms: f64,
    /// Evaluations, epochs of fine-tuning, wall seconds.
    pub cost: (usize, f64, f64),
    /// Every evaluated candidate.
    pub evaluated: Vec<MappingPoint>,
    /// The best by reward.
    pub best: MappingPoint,
}

/// What one study measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MappingResult {
    /// Study name.
    pub name: String,
    /// Dense test top-1 of the saved model (before any pruning).
    pub dense_top1: f64,
    /// Dense plan latency, ms.
    pub dense_ms: f64,
    /// Searched layers, log10 of the candidates, choices excluded by validity rules.
    pub space: (usize, f64, usize),
    /// Seconds spent measuring the latency table (0 when reloaded).
    pub table_seconds: f64,
    /// Dense, uniform and rule arms.
    pub baselines: Vec<MappingPoint>,
    /// The rule's mappings.
    pub rules: Vec<RuleAtTarget>,
    /// The searches.
    pub searches: Vec<SearchAtTarget>,
    /// The target.
    pub check: CheckResult,
}

impl SchemeMappingConfig {
    /// The preset of `scale`.
    pub fn preset(scale: Scale) -> Result<Self> {
        let study = |s: SearchStudy| -> MappingStudy {
            let evaluations = match scale {
                Scale::Smoke => 4,
                // 24 per target left the search's best a coin toss between runs (ResNet-20 at
                // 0.3x: 81.65% then 77.15% in 0.10 ms); the uniform arms it must beat are fixed.
                Scale::Default => 40,
                Scale::Paper => 60,
            };
            let mut search = NpasConfig::new(evaluations, 0);
            search.warmup = (evaluations / 4).max(2);
            MappingStudy {
                uniform_rates: if scale == Scale::Smoke { vec![2.0] } else { vec![4.0, 8.0] },
                rule: RuleConfig::default(),
                search,
                equal_accuracy: 0.005,
                min_speedup: 1.3,
                retime_rounds: if scale == Scale::Smoke { 1 } else { 5 },
                study: s,
            }
        };
        let mut mobilenet = study(mobilenet_study(scale)?);
        if scale == Scale::Default {
            // A MobileNetV2 fine-tune step costs ~5x a ResNet-20 one here: fewer evaluations,
            // and uniform arms over the ladder's lower half (one-shot 4x leaves it near
            // chance; 1.5x is the uniform arm a search at the gentler target competes with).
            mobilenet.uniform_rates = vec![1.5, 2.0, 3.0];
            mobilenet.search.evaluations = 16;
            mobilenet.search.warmup = 4;
        }
        Ok(SchemeMappingConfig { studies: vec![study(resnet_study(scale)?), mobilenet] })
    }
}

impl Experiment for SchemeMapping {
    fn name(&self) -> &'static str {
        "scheme-mapping"
    }

    fn description(&self) -> &'static str {
        "Per-layer pruning-scheme mapping (TODAES'22): uniform schemes vs the rule-based and the search-based (NPAS) mapper at two latency targets, ResNet-20 and MobileNetV2 on Fashion-MNIST: accuracy vs measured latency."
    }

    fn config(&self, options: &RunOptions) -> Result<serde_json::Value> {
        let mut cfg = SchemeMappingConfig::preset(options.scale)?;
        for s in &mut cfg.studies {
            s.search.seed = options.seed;
            s.study.seed(options.seed);
        }
        cfg.studies = select(cfg.studies, &options.only, |s| &s.study.name)?;
        serde_json::to_value(cfg).map_err(|e| ExperimentError::config("config", e))
    }

    fn run(&self, ctx: &RunContext) -> Result<Outcome> {
        let cfg: SchemeMappingConfig = serde_json::from_value(ctx.config.clone())
            .map_err(|e| ExperimentError::config("config", e))?;
        let mut results = Vec::new();
        let mut plots = Vec::new();
        for s in &cfg.studies {
            let r = run_study(ctx, s)?;
            plots.push(pareto_plot(&r)?);
            results.push(r);
        }
        Ok(Outcome {
            figures: serde_json::to_value(&results)
                .map_err(|e| ExperimentError::config("figures", e))?,
            report: report(&cfg, &results, ctx.full_data(tessera_data::KnownSet::FashionMnist)),
            plots,
        })
    }
}

fn run_study(ctx: &RunContext, s: &MappingStudy) -> Result<MappingResult> {
    let _span = tracing::info_span!("scheme-mapping", study = %s.study.name).entered();
    let p = prepare(ctx, &s.study)?;
    let mut eval = FastEval { prepared: &p, study: &s.study };
    let targets: Vec<f64> = s.study.targets.iter().map(|f| f * p.dense_ms).collect();
    // Baselines: dense, uniform schemes, the rule at each target.
    let mut list = vec![("dense".to_string(), p.space.dense())];
    for scheme in &s.study.space.schemes {
        for &rate in &s.uniform_rates {
            let c = p.space.uniform(scheme, rate);
            if c != p.space.dense() {
                list.push((format!("uniform {scheme} {rate}x"), c));
            }
        }
    }
    let mut rules = Vec::new();
    for (f, &target_ms) in s.study.targets.iter().zip(&targets) {
        let schemes = rule_schemes(&p.space, &p.table, &s.rule)?;
        let m = rule_rates(&p.space, &p.table, schemes, target_ms, None)?;
        list.push((format!("rule @{f}"), m.candidate.clone()));
        rules.push(RuleAtTarget {
            target_ms,
            schemes: m.schemes,
            predicted_ms: m.predicted_ms,
            met: m.met,
        });
    }
    // The reward of the baselines is reported at the tighter target (it orders nothing).
    let reward = |t: f64| Reward { latency_target_ms: t, penalty: s.study.penalty };
    let tight = targets.iter().copied().fold(f64::INFINITY, f64::min);
    let base = evaluate_list(
        &p.space,
        &mut eval,
        reward(tight),
        &list,
        Some(&log_path(ctx, &s.study.name, "baselines")),
    )?;
    let mut baselines: Vec<MappingPoint> =
        base.evaluations.iter().map(|e| point(&p, e.label.clone(), e)).collect();
    let mut compared: Vec<Vec<usize>> =
        base.evaluations.iter().map(|e| e.candidate.clone()).collect();
    let mut searches = Vec::new();
    for (f, &target_ms) in s.study.targets.iter().zip(&targets) {
        let cfg = NpasConfig { layer_weights: Some(layer_weights(&p.space)), ..s.search.clone() };
        // The search starts from what the baselines measured (its outcome holds only its own
        // evaluations).
        let out: SearchOutcome = npas_with_prior(
            &p.space,
            &mut eval,
            reward(target_ms),
            &cfg,
            Some(&log_path(ctx, &s.study.name, &format!("npas-{f}"))),
            &base.evaluations,
        )?;
        let best = out
            .best()
            .ok_or_else(|| ExperimentError::config("search", "no candidate evaluated"))?;
        let (epochs, seconds) = out.cost();
        compared.push(best.candidate.clone());
        searches.push(SearchAtTarget {
            target_ms,
            cost: (out.evaluations.len(), epochs, seconds),
            evaluated: out.evaluations.iter().map(|e| point(&p, "search", e)).collect(),
            best: MappingPoint {
                key: describe(&p, &best.candidate),
                ..point(&p, format!("search @{f}"), best)
            },
        });
    }
    // The compared arms, timed again side by side (their evaluations ran minutes apart).
    let graphs = compared.iter().map(|c| pruned_graph(&p, c)).collect::<Result<Vec<_>>>()?;
    let retimed = retime(graphs, &s.study.timing, timing_input(&p.open.test)?, s.retime_rounds)?;
    let points = baselines.iter_mut().chain(searches.iter_mut().map(|x| &mut x.best));
    for ((point, ms), candidate) in points.zip(retimed).zip(&compared) {
        point.latency_ms = ms;
        // Selected on held-out training images: scored again on the test images.
        point.test_top1 = eval.test_accuracy(candidate)?;
    }
    let check = check(s, &baselines, &searches, ctx.full_data(s.study.dataset));
    Ok(MappingResult {
        name: s.study.name.clone(),
        dense_top1: p.open.dense_top1,
        dense_ms: p.dense_ms,
        space: (p.space.len(), p.space.log10_size(), p.space.excluded().len()),
        table_seconds: p.table_seconds,
        baselines,
        rules,
        searches,
        check,
    })
}

/// The target: at each latency target, the best uniform arm at least as accurate (within
/// `equal_accuracy`; top-1 on the test images where the arms were scored there) as the
/// search's best, against the search's latency. A search whose best
/// keeps less than half the dense arm's top-1 has collapsed (the fast evaluation ranks
/// nothing there): it gives no ratio, and a study where every search collapsed fails.
fn check(
    s: &MappingStudy,
    baselines: &[MappingPoint],
    searches: &[SearchAtTarget],
    full_data: bool,
) -> CheckResult {
    // The dense model is the uniform arm at rate 1 (where every pruned uniform arm loses more
    // accuracy than the search, it is the one to beat).
    let uniform: Vec<&MappingPoint> =
        baselines.iter().filter(|b| b.arm.starts_with("uniform") || b.arm == "dense").collect();
    let dense_top1 = baselines.iter().find(|b| b.arm == "dense").map(MappingPoint::reported_top1);
    let mut details = Vec::new();
    let mut best_ratio = f64::NEG_INFINITY;
    let mut collapsed = 0;
    for sr in searches {
        let b = &sr.best;
        if let Some(d) = dense_top1.filter(|&d| b.reported_top1() < 0.5 * d) {
            collapsed += 1;
            details.push(format!(
                "{}: {:.2}% in {:.3} ms, under half the dense arm's {:.2}%: collapsed, no \
                 accuracy to compare at",
                b.arm,
                100.0 * b.top1,
                b.latency_ms,
                100.0 * d
            ));
            continue;
        }
        let as_good = uniform
            .iter()
            .filter(|u| u.reported_top1() >= b.reported_top1() - s.equal_accuracy)
            .min_by(|x, y| x.latency_ms.total_cmp(&y.latency_ms));
        match as_good {
            Some(u) => {
                let ratio = u.latency_ms / b.latency_ms;
                best_ratio = best_ratio.max(ratio);
                details.push(format!(
                    "{}: {:.2}% in {:.3} ms; fastest uniform arm as accurate: {} {:.2}% in {:.3} ms ({ratio:.2}x)",
                    b.arm,
                    100.0 * b.reported_top1(),
                    b.latency_ms,
                    u.arm,
                    100.0 * u.reported_top1(),
                    u.latency_ms
                ));
            }
            None => details.push(format!(
                "{}: {:.2}% in {:.3} ms; no uniform arm is as accurate",
                b.arm,
                100.0 * b.reported_top1(),
                b.latency_ms
            )),
        }
    }
    let met = if !full_data || searches.is_empty() {
        None
    } else if collapsed == searches.len() {
        Some(false)
    } else if best_ratio.is_finite() {
        Some(best_ratio >= s.min_speedup)
    } else {
        // The search beat every uniform arm on accuracy: no ratio at equal accuracy.
        None
    };
    CheckResult {
        target: format!(
            "{}: search-based mapping >= {}x faster than the best uniform scheme at equal accuracy (within {} points)",
            s.study.name,
            s.min_speedup,
            100.0 * s.equal_accuracy
        ),
        met,
        detail: details.join("; "),
    }
}

fn pareto_plot(r: &MappingResult) -> Result<Plot> {
    let pct = |p: &MappingPoint| (p.latency_ms, 100.0 * p.top1);
    let mut series = Vec::new();
    let evaluated: Vec<(f64, f64)> =
        r.searches.iter().flat_map(|s| s.evaluated.iter().map(pct)).collect();
    series.push(Series { name: "(every searched candidate)".into(), points: evaluated });
    let mut uniform: std::collections::BTreeMap<String, Vec<(f64, f64)>> = Default::default();
    for b in &r.baselines {
        if let Some(rest) = b.arm.strip_prefix("uniform ") {
            let scheme = rest.rsplit_once(' ').map_or(rest, |x| x.0);
            uniform.entry(format!("uniform {scheme}")).or_default().push(pct(b));
        }
    }
    series.extend(uniform.into_iter().map(|(name, points)| Series { name, points }));
    let pick = |prefix: &str| -> Vec<(f64, f64)> {
        r.baselines.iter().filter(|b| b.arm.starts_with(prefix)).map(pct).collect()
    };
    series.push(Series { name: "dense".into(), points: pick("dense") });
    series.push(Series { name: "rule-based".into(), points: pick("rule") });
    series.push(Series {
        name: "search-based (best)".into(),
        points: r.searches.iter().map(|s| pct(&s.best)).collect(),
    });
    Ok(Plot {
        file: format!("pareto-{}.svg", crate::study::file_safe(&r.name)),
        caption: format!(
            "{}: top-1 after the fast evaluation vs measured latency (1 thread)",
            r.name
        ),
        svg: scatter_chart(
            &format!("{}: accuracy vs latency per mapping", r.name),
            "latency (ms, batch 1)",
            "top-1 (%)",
            &series,
        )?,
    })
}

fn report(cfg: &SchemeMappingConfig, results: &[MappingResult], full_data: bool) -> String {
    let pct = |v: f64| format!("{:.2}%", 100.0 * v);
    let mut md = String::from(
        "Every arm is evaluated the same way: one-shot magnitude pruning of the dense model to \
         the arm's per-layer schemes and rates, a short fine-tune with the masks fixed, top-1 on \
         the images the search selects on (held-out training images where the study holds \
         them out: then every arm in the table is scored again on the test images, and the \
         target compares test top-1); latency is the compiled plan's median (batch 1, 1 thread), measured \
         when the arm is evaluated (as a ratio to the dense plan timed in interleaved rounds \
         beside it, times the dense time of the latency table: the search's reward sees the \
         plan, not the machine's drift) and again, for the arms in the table, interleaved at \
         the end of the run (the `latency` column and the speedups: every compared plan timed \
         under the same machine load).\n\n",
    );
    if !full_data {
        md.push_str("**Fixtures only** (smoke scale or no cached data): the numbers check the pipeline, not the claim.\n\n");
    }
    for (s, r) in cfg.studies.iter().zip(results) {
        md.push_str(&format!(
            "## {}\n\nDense: {} top-1 (saved model), {:.3} ms. Space: {} layers, 10^{:.1} candidates, {} choices excluded by validity rules. Latency table measured in {:.0} s. Fine-tune per evaluation: {} steps of batch {}{}.\n\n",
            r.name,
            pct(r.dense_top1),
            r.dense_ms,
            r.space.0,
            r.space.1,
            r.space.2,
            r.table_seconds,
            s.study.finetune.max_steps_per_epoch.unwrap_or(0) * s.study.finetune.epochs,
            s.study.finetune.batch_size,
            s.study.recalibrate.map_or(String::new(), |c| format!(
                "; batch norm recalibrated on {} x {} training images after pruning and after the fine-tune",
                c.batches, c.batch_size
            ))
        ));
        let held_out = r.baselines.iter().any(|b| b.test_top1.is_some());
        let mut columns = vec!["arm"];
        columns.extend(if held_out {
            &["top-1 (validation)", "test top-1"][..]
        } else {
            &["top-1"][..]
        });
        columns.extend([
            "latency (ms)",
            "at evaluation (ms)",
            "predicted (ms)",
            "speedup",
            "MACs kept",
        ]);
        let mut t = Table::new(&columns);
        let dense_ms =
            r.baselines.iter().find(|b| b.arm == "dense").map_or(r.dense_ms, |d| d.latency_ms);
        let rows = r.baselines.iter().chain(r.searches.iter().map(|x| &x.best));
        for p in rows {
            let mut row = vec![p.arm.clone(), pct(p.top1)];
            if held_out {
                row.push(p.test_top1.map_or_else(|| "—".into(), pct));
            }
            row.extend([
                format!("{:.3}", p.latency_ms),
                format!("{:.3}", p.evaluated_ms),
                format!("{:.3}", p.predicted_ms),
                format!("{:.2}x", dense_ms / p.latency_ms.max(1e-12)),
                format!("{:.1}%", 100.0 * p.mac_fraction),
            ]);
            t.row(row);
        }
        md.push_str(&t.to_markdown());
        md.push('\n');
        for (f, sr) in s.study.targets.iter().zip(&r.searches) {
            md.push_str(&format!(
                "Search @{f} (target {:.3} ms): {} evaluations, {:.2} fine-tune epochs, {:.0} s. Best: {}.\n\n",
                sr.target_ms, sr.cost.0, sr.cost.1, sr.cost.2, sr.best.key
            ));
        }
        if let Some(rule) = r.rules.first() {
            md.push_str("Rule-based schemes (the same at every target; rates differ):\n\n");
            let mut t = Table::new(&["layer", "scheme", "why"]);
            for x in &rule.schemes {
                t.row(vec![
                    x.layer.clone(),
                    x.scheme.as_ref().map_or("dense".into(), |s| s.to_string()),
                    x.reason.clone(),
                ]);
            }
            md.push_str(&t.to_markdown());
            md.push('\n');
        }
        md.push_str(&format!(
            "Target: {} — {}. {}\n\n",
            r.check.target,
            r.check.verdict(),
            r.check.detail
        ));
    }
    md.push_str(
        "This experiment maps schemes: the space is schemes, block sizes and rates per layer \
         (the operator choice `skip` is searched by `npas`).\n",
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(arm: &str, top1: f64, latency_ms: f64) -> MappingPoint {
        MappingPoint {
            arm: arm.into(),
            key: String::new(),
            top1,
            latency_ms,
            evaluated_ms: latency_ms,
            predicted_ms: latency_ms,
            mac_fraction: 1.0,
            test_top1: None,
        }
    }

    fn search(best: MappingPoint) -> SearchAtTarget {
        SearchAtTarget { target_ms: 0.5, cost: (1, 0.1, 1.0), evaluated: vec![], best }
    }

    #[test]
    fn the_check_compares_at_equal_accuracy_and_refuses_collapsed_searches() {
        let s = &SchemeMappingConfig::preset(Scale::Smoke).unwrap().studies[0];
        let base =
            [pt("dense", 0.90, 1.0), pt("uniform a 4x", 0.85, 0.5), pt("uniform b 8x", 0.60, 0.3)];
        // 86% in 0.3 ms: only dense is as accurate (within 0.5 points): 3.33x.
        let c = check(s, &base, &[search(pt("search", 0.86, 0.3))], true);
        assert_eq!(c.met, Some(true), "{}", c.detail);
        assert!(c.detail.contains("dense") && c.detail.contains("3.33x"), "{}", c.detail);
        // 84% in 0.4 ms: uniform a (85%) is as accurate and 0.5 ms: 1.25x < 1.3x.
        let c = check(s, &base, &[search(pt("search", 0.84, 0.4))], true);
        assert_eq!(c.met, Some(false), "{}", c.detail);
        assert!(c.detail.contains("uniform a 4x") && c.detail.contains("1.25x"), "{}", c.detail);
        // At chance: no comparison, not met.
        let c = check(s, &base, &[search(pt("search", 0.107, 0.2))], true);
        assert_eq!(c.met, Some(false));
        assert!(c.detail.contains("collapsed"), "{}", c.detail);
        // Fixture data decides nothing.
        assert_eq!(check(s, &base, &[search(pt("search", 0.86, 0.3))], false).met, None);
        // Scored on the test images, the comparison uses the test top-1: 86% on validation
        // but 84% on test in 0.4 ms: uniform a (85% on test, 0.5 ms) is as accurate, 1.25x;
        // on the validation top-1 only dense would be (2.5x).
        let tested = |p: MappingPoint, test: f64| MappingPoint { test_top1: Some(test), ..p };
        let base_t = [
            tested(pt("dense", 0.90, 1.0), 0.90),
            tested(pt("uniform a 4x", 0.85, 0.5), 0.85),
            tested(pt("uniform b 8x", 0.60, 0.3), 0.60),
        ];
        let c = check(s, &base_t, &[search(tested(pt("search", 0.86, 0.4), 0.84))], true);
        assert_eq!(c.met, Some(false), "{}", c.detail);
        assert!(c.detail.contains("84.00%") && c.detail.contains("1.25x"), "{}", c.detail);
        let c = check(s, &base_t, &[search(pt("search", 0.86, 0.4))], true);
        assert_eq!(c.met, Some(true), "{}", c.detail);
        assert!(c.detail.contains("dense") && c.detail.contains("2.50x"), "{}", c.detail);
    }
}
