//! `experiment all`: every registered experiment at one scale, then an index report
//! (`results/all/<run-id>/index.md` + `index.json`) linking each one's report with its status
//! and wall time. A failing experiment is recorded and the rest still run; the call fails at
//! the end if any did.

use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{ExperimentError, Result};
use crate::report::Table;
use crate::run::{RunOptions, new_run_dir, now_utc, run, write};

/// One experiment's line in the index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Experiment name.
    pub name: String,
    /// What it reproduces.
    pub description: String,
    /// Its run directory (absent when it failed before making one).
    pub dir: Option<PathBuf>,
    /// `None` when it succeeded, else the error.
    pub error: Option<String>,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// Runs every registered experiment with `options` (`only` and `dense_from` go to each) and
/// writes the index; returns the index directory.
pub fn run_all(options: &RunOptions) -> Result<PathBuf> {
    if !options.overrides.is_empty() {
        return Err(ExperimentError::config(
            "--set",
            "changes one experiment's config; `all` runs every experiment, so run them one by one",
        ));
    }
    let started = now_utc();
    let mut entries = Vec::new();
    for exp in crate::registry() {
        let _span = tracing::info_span!("all", experiment = exp.name()).entered();
        let t = Instant::now();
        let (dir, error) = match run(exp, options) {
            Ok(done) => (Some(done.dir), None),
            Err(e) => {
                tracing::error!(experiment = exp.name(), error = %e, "experiment failed");
                (None, Some(e.to_string()))
            }
        };
        entries.push(IndexEntry {
            name: exp.name().into(),
            description: exp.description().into(),
            dir,
            error,
            seconds: t.elapsed().as_secs_f64(),
        });
    }
    let dir = new_run_dir(&options.out_root.join("all"), &started)?;
    let mut md = format!(
        "# All experiments ({} scale, seed {})\n\nStarted {started}, finished {}.\n\n",
        options.scale,
        options.seed,
        now_utc()
    );
    let mut t = Table::new(&["experiment", "reproduces", "status", "wall time", "report"]);
    for e in &entries {
        t.row(vec![
            e.name.clone(),
            e.description.clone(),
            e.error.as_ref().map_or("ok".into(), |err| format!("failed: {err}")),
            format!("{:.0} s", e.seconds),
            e.dir.as_ref().map_or("-".into(), |d| {
                let report = d.join("report.md");
                let shown = pathdiff(&report, &dir).unwrap_or(report);
                format!("[report]({})", shown.display())
            }),
        ]);
    }
    md.push_str(&t.to_markdown());
    let json = serde_json::to_vec_pretty(&entries).map_err(|e| ExperimentError::io(&dir, e))?;
    write(&dir.join("index.json"), &json)?;
    write(&dir.join("index.md"), md.as_bytes())?;
    let failed: Vec<&str> =
        entries.iter().filter(|e| e.error.is_some()).map(|e| e.name.as_str()).collect();
    if failed.is_empty() {
        Ok(dir)
    } else {
        Err(ExperimentError::config(
            "all",
            format!("{} failed; see {}", failed.join(", "), dir.join("index.md").display()),
        ))
    }
}

/// `path` relative to `base` when both live under the same results root (`../../x/y`).
fn pathdiff(path: &std::path::Path, base: &std::path::Path) -> Option<PathBuf> {
    let (p, b): (Vec<_>, Vec<_>) = (path.components().collect(), base.components().collect());
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    if common == 0 {
        return None;
    }
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_links_are_relative_to_the_index() {
        let got = pathdiff(
            std::path::Path::new("results/forms/20261129T1/report.md"),
            std::path::Path::new("results/all/20261129T2"),
        );
        assert_eq!(got, Some(PathBuf::from("../../forms/20261129T1/report.md")));
    }

    #[test]
    fn refuses_config_changes_before_running_anything() {
        let options = RunOptions {
            out_root: std::env::temp_dir().join("tessera-all-refuses-set"),
            overrides: vec!["studies.0.retrain.epochs=1".parse().unwrap()],
            ..RunOptions::default()
        };
        let err = run_all(&options).unwrap_err().to_string();
        assert!(err.contains("--set") && err.contains("one by one"), "{err}");
        assert!(!options.out_root.exists());
    }
}
