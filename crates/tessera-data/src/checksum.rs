//! SHA-256 checksums over *uncompressed* file contents, and `SHA256SUMS` files.
//!
//! gzip output depends on the zlib implementation and its version, so a checksum of a `.gz`
//! file would break when the fixtures are rebuilt on another machine. We hash what the
//! readers see: the decompressed bytes. A `SHA256SUMS` file has the `sha256sum` layout
//! (`<64 hex digits><two spaces><path relative to the file's directory>`); lines starting with
//! `#` are comments.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{DataError, Result};
use crate::file::{read_file, write_atomic};

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file's content after gunzipping (when it is gzip).
pub fn sha256_uncompressed(path: &Path) -> Result<String> {
    Ok(sha256_hex(&read_file(path, "checksummed")?.bytes))
}

/// One entry of a `SHA256SUMS` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChecksumEntry {
    /// Lowercase hex digest of the uncompressed content.
    pub sha256: String,
    /// Path relative to the directory of the sums file.
    pub path: PathBuf,
}

/// Parses a `SHA256SUMS` file.
pub fn read_sums(sums: &Path) -> Result<Vec<ChecksumEntry>> {
    let file = read_file(sums, "SHA256SUMS")?;
    let text = String::from_utf8_lossy(&file.bytes);
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_end();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let bad = || DataError::BadChecksumLine {
            path: sums.to_path_buf(),
            line: i + 1,
            found: t.into(),
        };
        let (hex, rest) = t.split_at_checked(64).ok_or_else(bad)?;
        let rel = rest.strip_prefix("  ").or_else(|| rest.strip_prefix(" *")).ok_or_else(bad)?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) || rel.is_empty() {
            return Err(bad());
        }
        out.push(ChecksumEntry { sha256: hex.to_ascii_lowercase(), path: PathBuf::from(rel) });
    }
    Ok(out)
}

/// Writes a `SHA256SUMS` file atomically, entries sorted by path, after `header` comment lines.
pub fn write_sums(sums: &Path, header: &[&str], entries: &[ChecksumEntry]) -> Result<()> {
    let mut sorted = entries.to_vec();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut text = String::new();
    for h in header {
        text.push_str("# ");
        text.push_str(h);
        text.push('\n');
    }
    for e in &sorted {
        text.push_str(&format!("{}  {}\n", e.sha256, e.path.display()));
    }
    write_atomic(sums, text.as_bytes())
}

/// Verifies every entry of `sums` against the uncompressed content of the file it names.
/// Returns the number of files checked.
pub fn verify_sums(sums: &Path) -> Result<usize> {
    let root = sums.parent().unwrap_or(Path::new("."));
    let entries = read_sums(sums)?;
    for e in &entries {
        let path = root.join(&e.path);
        let actual = sha256_uncompressed(&path)?;
        if actual != e.sha256 {
            return Err(DataError::ChecksumMismatch {
                uncompressed: path.extension().is_some_and(|x| x == "gz"),
                path,
                expected: e.sha256.clone(),
                actual,
            });
        }
    }
    Ok(entries.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::gzip;

    #[test]
    fn known_digest() {
        // sha256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn sums_round_trip_and_detect_changes() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(&dir.path().join("a.gz"), &gzip(b"abc")).unwrap();
        let entries = vec![ChecksumEntry { sha256: sha256_hex(b"abc"), path: "a.gz".into() }];
        let sums = dir.path().join("SHA256SUMS");
        write_sums(&sums, &["over uncompressed bytes"], &entries).unwrap();
        assert_eq!(read_sums(&sums).unwrap(), entries);
        assert_eq!(verify_sums(&sums).unwrap(), 1);
        write_atomic(&dir.path().join("a.gz"), &gzip(b"abd")).unwrap();
        let err = verify_sums(&sums).unwrap_err();
        assert!(matches!(err, DataError::ChecksumMismatch { uncompressed: true, .. }), "{err}");
        write_atomic(&sums, b"nothex  a.gz\n").unwrap();
        assert!(matches!(read_sums(&sums), Err(DataError::BadChecksumLine { line: 1, .. })));
    }
}
