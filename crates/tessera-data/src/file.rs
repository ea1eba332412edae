//! Reading whole files (transparently gunzipped) and writing files atomically.
//!
//! Data files are small enough to read whole (full MNIST is 47 MB), which keeps the format
//! parsers simple slice code with exact byte offsets in their errors. Compression is detected
//! by the gzip magic bytes, not by the file name, so a renamed file still reads.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// The bytes of one data file, decompressed if it was gzip.
#[derive(Debug, Clone)]
pub struct FileBytes {
    /// Where the bytes came from.
    pub path: PathBuf,
    /// The (decompressed) content.
    pub bytes: Vec<u8>,
    /// Whether the file was gzip-compressed; offsets in errors then refer to `bytes`.
    pub decompressed: bool,
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Data files opened by this process so far (every reader goes through [`read_file`]).
static FILES_READ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many data files this process has opened through tessera-data's readers: lets a test
/// prove a code path (the privacy-preserving designer) never touched a real data set.
pub fn files_read() -> usize {
    FILES_READ.load(std::sync::atomic::Ordering::SeqCst)
}

/// Reads `path` whole, gunzipping it when it starts with the gzip magic bytes.
///
/// `expected` names the kind of file for the error when `path` is a directory.
pub fn read_file(path: &Path, expected: &'static str) -> Result<FileBytes> {
    FILES_READ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, "stat", e))?;
    if meta.is_dir() {
        return Err(DataError::IsADirectory { path: path.to_path_buf(), expected });
    }
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, "read", e))?;
    if raw.len() >= 2 && raw[..2] == GZIP_MAGIC {
        let bytes = gunzip(path, &raw)?;
        Ok(FileBytes { path: path.to_path_buf(), bytes, decompressed: true })
    } else {
        Ok(FileBytes { path: path.to_path_buf(), bytes: raw, decompressed: false })
    }
}

/// Decompresses a whole gzip stream (all members), reporting how far it got on failure.
pub fn gunzip(path: &Path, compressed: &[u8]) -> Result<Vec<u8>> {
    let mut decoder = flate2::read::MultiGzDecoder::new(compressed);
    let mut out = Vec::with_capacity(compressed.len() * 4);
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        match decoder.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(DataError::Gzip {
                    path: path.to_path_buf(),
                    decompressed_ok: out.len() as u64,
                    compressed_len: compressed.len() as u64,
                    source,
                });
            }
        }
    }
}

/// Compresses `bytes` as a single gzip member (level 9, no file name or time stamp in the
/// header, so the output depends only on the input and the zlib implementation).
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::with_capacity(bytes.len() / 3), flate2::Compression::best());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(bytes);
    encoder.finish().unwrap_or_default()
}

/// Writes `bytes` to `path` atomically: into a temporary file in the same directory, flushed,
/// then renamed over `path`. Readers never see a half-written file. Creates parent directories.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, "create directory", e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)
        .map_err(|e| DataError::io(&dir, "create temporary file", e))?;
    tmp.write_all(bytes).map_err(|e| DataError::io(tmp.path(), "write", e))?;
    tmp.as_file().sync_all().map_err(|e| DataError::io(tmp.path(), "sync", e))?;
    // Temporary files are created 0600; results and fixtures are ordinary shared files.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|e| DataError::io(tmp.path(), "set permissions", e))?;
    }
    tmp.persist(path).map_err(|e| DataError::io(path, "rename temporary file onto", e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_round_trips_and_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let path = dir.path().join("x.bin");
        write_atomic(&path, &gzip(&payload)).unwrap();
        let read = read_file(&path, "test").unwrap();
        assert!(read.decompressed);
        assert_eq!(read.bytes, payload);

        let plain = dir.path().join("y.bin");
        write_atomic(&plain, &payload).unwrap();
        let read = read_file(&plain, "test").unwrap();
        assert!(!read.decompressed);
        assert_eq!(read.bytes, payload);
    }

    #[test]
    fn gzip_is_deterministic() {
        let payload = b"the same bytes give the same archive".repeat(50);
        assert_eq!(gzip(&payload), gzip(&payload));
    }

    #[test]
    fn directory_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_file(dir.path(), "IDX").unwrap_err();
        assert!(matches!(err, DataError::IsADirectory { expected: "IDX", .. }), "{err}");
    }

    #[test]
    fn missing_file_is_an_io_error_naming_the_path() {
        let err = read_file(Path::new("/nonexistent/tessera/file.idx"), "IDX").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tessera/file.idx"), "{err}");
    }
}
