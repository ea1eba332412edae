//! What a record says about where its numbers came from: git revision, crate and compiler
//! versions, CPU, operating system.

use std::collections::BTreeMap;
use std::process::Command;

use serde::{Deserialize, Serialize};

/// The environment of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    /// `git rev-parse HEAD` of the working directory, when it is a git checkout.
    pub git_revision: Option<String>,
    /// Whether the checkout had uncommitted changes to tracked files.
    pub git_dirty: Option<bool>,
    /// tessera's version and the versions of the crates the numbers depend on (from Cargo.lock
    /// at build time).
    pub versions: BTreeMap<String, String>,
    /// `rustc --version` of the build.
    pub rustc: String,
    /// The optimization level tessera was compiled with (timings mean little at 0).
    pub opt_level: String,
    /// CPU model name.
    pub cpu: String,
    /// Logical CPUs available to the process.
    pub cpus: usize,
    /// The SIMD level tessera's kernels dispatch to.
    pub kernel_isa: String,
    /// On AVX-512, whether a 16-lane FMA issues at the rate of an 8-lane one
    /// (`Isa::full_width_fma`, which decides some kernels' lane width); `None` below AVX-512
    /// and in records from before it was recorded.
    #[serde(default)]
    pub full_width_fma: Option<bool>,
    /// `os/arch`.
    pub os: String,
}

impl Environment {
    /// Captures the current environment.
    pub fn capture() -> Self {
        let git = |args: &[&str]| {
            Command::new("git")
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
        };
        let git_revision = git(&["rev-parse", "HEAD"]).map(|s| s.trim().to_string());
        let git_dirty = git_revision
            .as_ref()
            .and_then(|_| git(&["status", "--porcelain", "--untracked-files=no"]))
            .map(|s| !s.trim().is_empty());
        let mut versions = BTreeMap::new();
        versions.insert("tessera".to_string(), env!("CARGO_PKG_VERSION").to_string());
        for pair in env!("TESSERA_DEP_VERSIONS").split(',').filter(|p| !p.is_empty()) {
            if let Some((k, v)) = pair.split_once('=') {
                // A crate locked at several versions lists them all.
                versions
                    .entry(k.to_string())
                    .and_modify(|all: &mut String| *all = format!("{all}+{v}"))
                    .or_insert_with(|| v.to_string());
            }
        }
        Environment {
            git_revision,
            git_dirty,
            versions,
            rustc: env!("TESSERA_RUSTC_VERSION").to_string(),
            opt_level: env!("TESSERA_OPT_LEVEL").to_string(),
            cpu: cpu_model(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel_isa: tessera_kernels::Isa::detect().to_string(),
            full_width_fma: {
                let isa = tessera_kernels::Isa::detect();
                (isa.lanes() == 16).then(|| isa.full_width_fma())
            },
            os: format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
        }
    }

    /// One line for reports.
    pub fn summary(&self) -> String {
        format!(
            "{} ({} CPUs, kernels: {}), {}, git {}{}",
            self.cpu,
            self.cpus,
            self.kernel_isa,
            self.os,
            self.git_revision.as_deref().map_or("unknown", |r| &r[..r.len().min(12)]),
            if self.git_dirty == Some(true) { " (dirty)" } else { "" }
        )
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}
