//! Records, at build time, the versions of the crates an experiment's numbers depend on
//! (read from the workspace's Cargo.lock) and of the compiler, for the run records.

use std::path::Path;

/// Crates whose versions go into every record.
const TRACKED: &[&str] =
    &["burn", "burn-flex", "burn-ndarray", "gemm", "safetensors", "rand", "rayon"];

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let lock = Path::new(&manifest).join("../../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(&lock).unwrap_or_default();
    let mut versions = Vec::new();
    let mut name: Option<String> = None;
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"').to_string());
        } else if let Some(v) = line.strip_prefix("version = ")
            && let Some(n) = name.take()
            && TRACKED.contains(&n.as_str())
        {
            versions.push(format!("{n}={}", v.trim_matches('"')));
        }
    }
    versions.sort();
    versions.dedup();
    println!("cargo:rustc-env=TESSERA_DEP_VERSIONS={}", versions.join(","));
    let opt = std::env::var("OPT_LEVEL").unwrap_or_default();
    println!("cargo:rustc-env=TESSERA_OPT_LEVEL={opt}");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    println!("cargo:rustc-env=TESSERA_RUSTC_VERSION={}", version.trim());
}
