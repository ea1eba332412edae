//! The `prune-schemes` report: target checks judged on measured cells, the Markdown tables,
//! and one accuracy-vs-compression plot per study and method.

use std::collections::BTreeMap;

use super::{CellResult, CheckResult, StudyResult, TargetCheck};
use crate::error::Result;
use crate::plot::{Plot, Series, line_chart};
use crate::report::Table;
use crate::study::file_safe;

pub(super) fn check(target: &TargetCheck, cells: &[CellResult], full_data: bool) -> CheckResult {
    let pct = |x: f64| format!("{:.2}%", 100.0 * x);
    let pts = |x: f64| format!("{:.2} points", 100.0 * x);
    let (text, met, detail) = match target {
        TargetCheck::WithinOfDense { scheme, method, min_compression, max_drop } => {
            let text = format!(
                "{scheme} by {method}: >= {min_compression}x within {} of dense",
                pts(*max_drop)
            );
            let candidates: Vec<&CellResult> = cells
                .iter()
                .filter(|c| &c.cell.scheme == scheme && &c.cell.method == method)
                .filter(|c| c.compression >= min_compression * (1.0 - 1e-3))
                .collect();
            let best = candidates.iter().min_by(|a, b| a.drop.total_cmp(&b.drop));
            match best {
                None => (text, None, "no cell reached that compression".to_string()),
                Some(b) => (
                    text,
                    Some(b.drop <= *max_drop),
                    format!(
                        "best: {:.1}x, top-1 {} (drop {})",
                        b.compression,
                        pct(b.top1),
                        pts(b.drop)
                    ),
                ),
            }
        }
        TargetCheck::AdmmBeatsMagnitude { min_rate } => {
            let text = format!("ADMM >= magnitude at every rate >= {min_rate}x");
            let mut pairs = Vec::new();
            for a in cells.iter().filter(|c| c.cell.method == "admm" && c.cell.rate >= *min_rate) {
                if let Some(m) = cells.iter().find(|m| {
                    m.cell.method == "magnitude"
                        && m.cell.scheme == a.cell.scheme
                        && m.cell.rate == a.cell.rate
                }) {
                    pairs.push((a, m));
                }
            }
            if pairs.is_empty() {
                (text, None, "no (admm, magnitude) pair".to_string())
            } else {
                let lost: Vec<String> = pairs
                    .iter()
                    .filter(|(a, m)| a.top1 < m.top1)
                    .map(|(a, m)| {
                        format!(
                            "{} {}x: {} < {}",
                            a.cell.scheme,
                            a.cell.rate,
                            pct(a.top1),
                            pct(m.top1)
                        )
                    })
                    .collect();
                let detail = if lost.is_empty() {
                    format!("{} pairs compared", pairs.len())
                } else {
                    format!("{} of {} pairs lost: {}", lost.len(), pairs.len(), lost.join("; "))
                };
                (text, Some(lost.is_empty()), detail)
            }
        }
    };
    CheckResult {
        target: text,
        met: met.filter(|_| full_data),
        detail: if full_data { detail } else { format!("{detail} (fixtures: not claimed)") },
    }
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "not measured",
    }
}

pub(super) fn report(results: &[StudyResult]) -> String {
    let mut md = String::new();
    for s in results {
        md.push_str(&format!(
            "## {} ({} on {})\n\nDense top-1 **{:.2}%** ({} training / {} test images; dense model `{}`).\n\nBudget: {}.\n\n",
            s.name,
            s.model,
            s.dataset,
            100.0 * s.dense_top1,
            s.images.0,
            s.images.1,
            s.dense_model,
            s.budget
        ));
        let mut t = Table::new(&[
            "scheme",
            "#rate",
            "method",
            "#compression",
            "#pruned-layer compr.",
            "#FLOP red.",
            "#hard-pruned %",
            "#top-1 %",
            "#drop pts",
            "#ADMM resid. first→last (largest layer)",
            "#train s",
        ]);
        for c in &s.cells {
            t.row(vec![
                c.cell.scheme.clone(),
                format!("{}x", c.cell.rate),
                c.cell.method.clone(),
                format!("{:.1}x", c.compression),
                format!("{:.1}x", c.pruned_layers_compression),
                format!("{:.1}x", c.flops_reduction),
                c.hard_pruned_top1.map_or(String::new(), |v| format!("{:.2}", 100.0 * v)),
                format!("{:.2}", 100.0 * c.top1),
                format!("{:+.2}", 100.0 * c.drop),
                match (c.admm_total_residual, c.admm_residual) {
                    (Some((t0, t1)), Some((a, b))) => format!("{t0:.3}→{t1:.3} ({a:.2}→{b:.2})"),
                    (None, Some((a, b))) => format!("({a:.2}→{b:.2})"),
                    _ => String::new(),
                },
                format!("{:.0}", c.train_seconds),
            ]);
        }
        md.push_str(&t.to_markdown());
        for c in s.cells.iter().filter(|c| !c.cut_layers.is_empty()) {
            md.push_str(&format!(
                "\n{} at {}x by {}: nothing kept in {}, so the network is cut there.\n",
                c.cell.scheme,
                c.cell.rate,
                c.cell.method,
                c.cut_layers.join(", ")
            ));
        }
        for (scheme, why) in &s.not_applicable {
            md.push_str(&format!("\n{scheme}: n/a — {why}.\n"));
        }
        md.push_str("\n### Targets\n\n");
        let mut t = Table::new(&["target", "verdict", "measured"]);
        for c in &s.checks {
            t.row(vec![c.target.clone(), verdict(c.met).into(), c.detail.clone()]);
        }
        md.push_str(&t.to_markdown());
        md.push('\n');
    }
    md.push_str(
        "Compression: all conv / linear weights over the kept ones (layers a scheme leaves dense count as kept); \
         pruned-layer compression: over the pruned layers only. FLOP reduction: dense over kept multiply-adds of one image. \
         Hard-pruned: top-1 after the method's phase and the hard pruning (batch norms re-estimated where the preset says so), before masked retraining. \
         ADMM residual: the whole model's ||W - Z|| / ||W|| (all pruned layers together) at the first and last Z-update, \
         and in parentheses the largest per layer (1 wherever a layer's projection keeps nothing). \
         Each method trains the same number of epochs, then every method gets the same masked retraining. \
         Pruned models (masks in the IR export) are in `models/<study>/<cell>/`.\n",
    );
    md
}

pub(super) fn plots(results: &[StudyResult]) -> Result<Vec<Plot>> {
    let mut out = Vec::new();
    for s in results {
        let mut methods: Vec<String> = Vec::new();
        for c in &s.cells {
            if !methods.contains(&c.cell.method) {
                methods.push(c.cell.method.clone());
            }
        }
        for method in methods {
            let mut by_scheme: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
            for c in s.cells.iter().filter(|c| c.cell.method == method) {
                by_scheme
                    .entry(c.cell.scheme.clone())
                    .or_default()
                    .push((c.compression, 100.0 * c.top1));
            }
            let mut series: Vec<Series> = by_scheme
                .into_iter()
                .map(|(name, mut points)| {
                    points.sort_by(|a, b| a.0.total_cmp(&b.0));
                    Series { name, points }
                })
                .collect();
            let (lo, hi) = series
                .iter()
                .flat_map(|x| x.points.iter().map(|p| p.0))
                .fold((f64::INFINITY, 1.0f64), |(a, b), v| (a.min(v), b.max(v)));
            series.push(Series {
                name: "dense".into(),
                points: vec![(lo.min(hi), 100.0 * s.dense_top1), (hi, 100.0 * s.dense_top1)],
            });
            let file = format!("{}-{}.svg", s.name, file_safe(&method));
            out.push(Plot {
                caption: format!("{}: test top-1 vs measured compression, {method}", s.name),
                svg: line_chart(
                    &format!("{} — {method}", s.name),
                    "compression (x)",
                    "top-1 (%)",
                    &series,
                )?,
                file,
            });
        }
    }
    Ok(out)
}
