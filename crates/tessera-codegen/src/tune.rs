//! Auto-tuning: per layer, time every candidate kernel (and thread count) on this machine and
//! keep the fastest; remember decisions in a JSON file keyed by CPU, instruction set and
//! layer signature (shape, scheme, a hash of the mask, batch, thread budget), so a later
//! compile of the same model on the same machine does not time again. Plans compiled for
//! more than one thread also remember their thread counts refined in context (see
//! `Plan::refine_threads`), keyed by the plan's layers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{CodegenError, Result};
use crate::lower::Choice;

/// How kernel choices are made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Tuning {
    /// The scheme's kernel from the table, on the plan's thread budget: deterministic, no
    /// timing (`--no-tune`).
    #[default]
    Default,
    /// Time every candidate kernel x thread count per layer and keep the fastest, refine the
    /// plan's thread counts in context (on more than one thread), and keep whichever whole
    /// plan runs faster, this one or the table's; with a cache file, decisions found there
    /// are reused and new ones are added to it.
    Measure {
        /// Decision cache (JSON), created if missing.
        cache: Option<PathBuf>,
    },
}

/// One remembered decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Kernel label.
    pub kernel: String,
    /// Storage format label.
    pub format: String,
    /// Threads.
    pub threads: usize,
    /// Vector lanes it runs at (a convolution on an AVX-512 CPU is timed at 16 and at 8;
    /// 0 in caches written before lane widths were tuned: the compiler's rule decides).
    #[serde(default)]
    pub lanes: usize,
    /// Measured median milliseconds per sample.
    pub ms: f64,
}

/// The decision cache file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TuneCache {
    /// Format version.
    pub version: u32,
    /// Decisions by layer key.
    pub entries: BTreeMap<String, Decision>,
    /// Thread counts of whole plans (compiled for more than one thread), refined in the
    /// plan's context, by plan key (the prefix and a hash of its layers' keys).
    #[serde(default)]
    pub plans: BTreeMap<String, PlanThreads>,
}

/// The thread count of every weighted step of one plan, as refined in context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanThreads {
    /// Threads per weighted step, in execution order.
    pub threads: Vec<usize>,
    /// Measured median milliseconds of the whole plan with them.
    pub ms: f64,
    /// The plan of the table's kernels ran faster than the tuner's per-layer picks (and is
    /// the one these thread counts belong to).
    #[serde(default)]
    pub table: bool,
}

const VERSION: u32 = 1;

impl TuneCache {
    /// Reads `path`; a missing file is an empty cache, a malformed one an error naming it.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(TuneCache { version: VERSION, ..TuneCache::default() });
            }
            Err(e) => return Err(cache_error(path, e.to_string())),
        };
        let cache: TuneCache =
            serde_json::from_slice(&bytes).map_err(|e| cache_error(path, e.to_string()))?;
        if cache.version != VERSION {
            return Err(cache_error(
                path,
                format!("version {}, this build reads {VERSION}", cache.version),
            ));
        }
        Ok(cache)
    }

    /// Writes the cache to `path` whole (a temporary file renamed over it).
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| cache_error(path, e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json).map_err(|e| cache_error(&tmp, e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| cache_error(path, e.to_string()))
    }
}

fn cache_error(path: &Path, reason: String) -> CodegenError {
    CodegenError::TuneCache { path: path.to_path_buf(), reason }
}

/// The tuner's pick for one layer.
pub(crate) struct Pick {
    pub(crate) threads: usize,
    /// Vector lanes the layer was timed fastest at (`None`: not tuned, or a cache entry
    /// from before lane widths were tuned).
    pub(crate) lanes: Option<usize>,
    pub(crate) ms: Option<f64>,
    pub(crate) cached: bool,
}

impl Pick {
    /// The table's kernel on `threads`, nothing measured.
    pub(crate) fn untuned(threads: usize) -> Self {
        Pick { threads, lanes: None, ms: None, cached: false }
    }
}

/// Tuning state of one compile.
pub(crate) struct Tuner {
    pub(crate) cache: TuneCache,
    pub(crate) path: Option<PathBuf>,
    /// CPU, instruction set, batch and thread budget.
    pub(crate) prefix: String,
}

impl Tuner {
    pub(crate) fn key(&self, param: &tessera_ir::Param, signature: &str) -> String {
        let scheme = match &param.sparsity {
            Some(s) => format!("{} mask {:016x}", s.scheme, mask_hash(s.mask.words())),
            None => "dense".into(),
        };
        format!("{} | {signature} | {scheme}", self.prefix)
    }

    /// The key of a whole plan whose weighted layers have `layer_keys`, in order.
    pub(crate) fn plan_key(&self, layer_keys: &[String]) -> String {
        let bytes: Vec<u64> =
            layer_keys.iter().flat_map(|k| k.bytes().map(u64::from).chain([0])).collect();
        format!("{} | plan of {} layers {:016x}", self.prefix, layer_keys.len(), mask_hash(&bytes))
    }

    /// The cached decision for `key` when one matches a candidate, else the fastest
    /// candidate x thread count x lane width (of `lane_options`) by `time` (recorded in the
    /// cache).
    pub(crate) fn choose<K>(
        &mut self,
        key: String,
        candidates: Vec<(K, Choice)>,
        max_threads: usize,
        lane_options: &[usize],
        mut time: impl FnMut(&mut K, usize, usize) -> Result<f64>,
    ) -> Result<(K, Choice, Pick)> {
        let mut thread_options = vec![1, max_threads];
        thread_options.dedup();
        if let Some(d) = self.cache.entries.get(&key)
            && thread_options.contains(&d.threads)
            && (d.lanes == 0 || lane_options.contains(&d.lanes))
            && let Some(i) =
                candidates.iter().position(|(_, c)| c.kernel == d.kernel && c.format == d.format)
        {
            let (ms, threads) = (d.ms, d.threads);
            let lanes = (d.lanes != 0).then_some(d.lanes);
            let (k, c) = candidates.into_iter().nth(i).ok_or_else(|| CodegenError::Options {
                field: "tuning",
                reason: "cached candidate vanished".into(),
            })?;
            return Ok((k, c, Pick { threads, lanes, ms: Some(ms), cached: true }));
        }
        // Every (candidate, threads) option is timed in TUNE_ROUNDS rounds, the options
        // alternating within a round, and keeps its fastest round: a load spike on this shared
        // host then has to hit the same option in every round to mislead the pick (timed once
        // each, ResNet-20's BCR plan took the dense kernel for a layer BCR runs 1.5x faster).
        let mut candidates = candidates;
        let options: Vec<(usize, usize, usize)> = (0..candidates.len())
            .flat_map(|i| thread_options.iter().map(move |&t| (i, t)))
            .flat_map(|(i, t)| lane_options.iter().map(move |&l| (i, t, l)))
            .collect();
        let mut fastest = vec![f64::INFINITY; options.len()];
        for _ in 0..TUNE_ROUNDS {
            for (o, &(i, t, l)) in options.iter().enumerate() {
                let (k, _) = &mut candidates[i];
                fastest[o] = fastest[o].min(time(k, t, l)?);
            }
        }
        let best = options
            .iter()
            .zip(&fastest)
            .min_by(|a, b| a.1.total_cmp(b.1))
            .map(|(&(i, t, l), &ms)| (i, t, l, ms));
        let (i, threads, lanes, ms) = best.ok_or_else(|| CodegenError::Options {
            field: "tuning",
            reason: "no candidate kernel".into(),
        })?;
        let (k, c) = candidates.into_iter().nth(i).ok_or_else(|| CodegenError::Options {
            field: "tuning",
            reason: "candidate vanished".into(),
        })?;
        self.cache.entries.insert(
            key,
            Decision { kernel: c.kernel.into(), format: c.format.into(), threads, lanes, ms },
        );
        Ok((k, c, Pick { threads, lanes: Some(lanes), ms: Some(ms), cached: false }))
    }
}

/// Rounds of timing per tuning option (see `Tuner::choose`).
const TUNE_ROUNDS: usize = 3;

/// This machine's CPU model (from `/proc/cpuinfo`), for cache keys.
pub(crate) fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into())
}

/// FNV-1a over a mask's words: which weights are kept, for cache keys.
pub(crate) fn mask_hash(words: &[u64]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for w in words {
        for b in w.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Median milliseconds of `f` over at least 5 runs and about 10 ms, after 2 warm-up runs.
pub(crate) fn time_ms(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..2 {
        f()?;
    }
    let start = Instant::now();
    let mut times = Vec::new();
    while times.len() < 5 || (start.elapsed().as_secs_f64() < 0.01 && times.len() < 200) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caches_round_trip_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tune.json");
        let mut c = TuneCache::load(&path).unwrap();
        assert!(c.entries.is_empty());
        c.entries.insert(
            "k".into(),
            Decision {
                kernel: "row-groups".into(),
                format: "CSR".into(),
                threads: 2,
                lanes: 8,
                ms: 0.5,
            },
        );
        c.save(&path).unwrap();
        assert_eq!(TuneCache::load(&path).unwrap(), c);
        std::fs::write(&path, b"{ not json").unwrap();
        let err = TuneCache::load(&path).unwrap_err().to_string();
        assert!(err.contains("tune.json"), "{err}");
        std::fs::write(&path, br#"{"version": 99, "entries": {}}"#).unwrap();
        assert!(TuneCache::load(&path).unwrap_err().to_string().contains("version 99"));
    }

    #[test]
    fn mask_hashes_tell_masks_apart() {
        assert_ne!(mask_hash(&[1]), mask_hash(&[2]));
        assert_eq!(mask_hash(&[7, 9]), mask_hash(&[7, 9]));
    }
}
