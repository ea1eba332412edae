//! The typed errors of `tessera-data`.
//!
//! Every variant that comes from a file names the file, and where a position in the file
//! makes sense, the byte offset and what was expected there. For gzip-compressed files the
//! offset is a position in the *decompressed* stream, which is what the format's header
//! describes; the message says so.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, DataError>;

/// Everything that can go wrong while reading, checking or fetching a data set.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The operating system refused an operation on `path`.
    #[error("{path}: {action}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What we were doing ("open", "read", "write", "rename", ...).
        action: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A path that must be a regular file is a directory.
    #[error("{path}: is a directory, expected a {expected} file")]
    IsADirectory {
        /// The offending path.
        path: PathBuf,
        /// The kind of file that was expected there.
        expected: &'static str,
    },

    /// None of the candidate files for a data set exist.
    #[error("{what}: not found; looked for {candidates:?}. {hint}")]
    NotFound {
        /// What was being looked for ("MNIST train images").
        what: String,
        /// Every path that was tried.
        candidates: Vec<PathBuf>,
        /// How to get the data.
        hint: String,
    },

    /// The file ends before the format says it should.
    #[error(
        "{path}: truncated at byte offset {offset}{gz}: expected {expected}, but only {available} more byte(s) are present",
        gz = gz_note(*.decompressed)
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Where the missing data starts.
        offset: u64,
        /// What should have been there, e.g. "47040000 bytes of u8 image data".
        expected: String,
        /// How many bytes from `offset` to the end of the file.
        available: u64,
        /// Whether `offset` counts decompressed bytes of a gzip file.
        decompressed: bool,
    },

    /// The file has more bytes than its header accounts for (never silently ignored).
    #[error(
        "{path}: {extra} unexpected trailing byte(s) at byte offset {offset}{gz}: the header describes exactly {offset} bytes",
        gz = gz_note(*.decompressed)
    )]
    TrailingBytes {
        /// The file.
        path: PathBuf,
        /// Where the unexpected data starts.
        offset: u64,
        /// How many bytes follow.
        extra: u64,
        /// Whether `offset` counts decompressed bytes of a gzip file.
        decompressed: bool,
    },

    /// The magic number or a fixed header field is wrong.
    #[error(
        "{path}: bad header at byte offset {offset}{gz}: expected {expected}, found {found}",
        gz = gz_note(*.decompressed)
    )]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// Offset of the offending field.
        offset: u64,
        /// What the format requires there.
        expected: String,
        /// What the file holds.
        found: String,
        /// Whether `offset` counts decompressed bytes of a gzip file.
        decompressed: bool,
    },

    /// The array in a file has a shape other than the one the caller needs.
    #[error("{path}: expected {expected}, found dimensions {found:?}")]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// What was expected ("a 3-D u8 array [count, rows, cols]").
        expected: String,
        /// The dimensions found in the header.
        found: Vec<usize>,
    },

    /// Two files that must describe the same samples disagree on the count.
    #[error(
        "sample count mismatch: {images_path} has {images} images but {labels_path} has {labels} labels"
    )]
    CountMismatch {
        /// The image file.
        images_path: PathBuf,
        /// Number of images.
        images: usize,
        /// The label file.
        labels_path: PathBuf,
        /// Number of labels.
        labels: usize,
    },

    /// A label is not a valid class index.
    #[error(
        "{path}: label {label} of sample {index} at byte offset {offset}{gz} is out of range: expected 0..{num_classes}",
        gz = gz_note(*.decompressed)
    )]
    LabelOutOfRange {
        /// The file.
        path: PathBuf,
        /// Offset of the label byte.
        offset: u64,
        /// Index of the sample.
        index: usize,
        /// The label found.
        label: u32,
        /// Number of classes of the data set.
        num_classes: usize,
        /// Whether `offset` counts decompressed bytes of a gzip file.
        decompressed: bool,
    },

    /// The gzip stream is corrupt.
    #[error(
        "{path}: corrupt gzip stream after {decompressed_ok} decompressed byte(s) (compressed file is {compressed_len} bytes): {source}"
    )]
    Gzip {
        /// The file.
        path: PathBuf,
        /// How many decompressed bytes were produced before the failure.
        decompressed_ok: u64,
        /// Size of the compressed file.
        compressed_len: u64,
        /// The decoder's error.
        #[source]
        source: std::io::Error,
    },

    /// A CSV cell could not be parsed or is out of range.
    #[error("{path}: line {line}, column {column} (byte offset {offset}{gz}): expected {expected}, found {found:?}",
        gz = gz_note(*.decompressed))]
    Csv {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// 1-based column number.
        column: usize,
        /// Offset of the start of the cell.
        offset: u64,
        /// What the cell should hold.
        expected: String,
        /// The cell's text.
        found: String,
        /// Whether `offset` counts decompressed bytes of a gzip file.
        decompressed: bool,
    },

    /// A file's SHA-256 differs from the recorded one.
    #[error("{path}: checksum mismatch{what}: expected sha256 {expected}, got {actual}", what = if *.uncompressed { " (of the uncompressed bytes)" } else { "" })]
    ChecksumMismatch {
        /// The file.
        path: PathBuf,
        /// The recorded digest (hex).
        expected: String,
        /// The digest of the file's bytes (hex).
        actual: String,
        /// Whether the digest is over the decompressed content of a `.gz` file.
        uncompressed: bool,
    },

    /// A `SHA256SUMS` file has a malformed line.
    #[error("{path}: line {line}: expected `<64 hex digits>  <relative path>`, found {found:?}")]
    BadChecksumLine {
        /// The checksum file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The line's text.
        found: String,
    },

    /// An argument is outside its valid range.
    #[error("invalid argument `{name}`: {reason}")]
    InvalidArgument {
        /// The argument.
        name: &'static str,
        /// Why it is invalid.
        reason: String,
    },

    /// Fetching a data set from a package registry failed.
    #[error("fetching {set}: {step} failed: {reason}")]
    Fetch {
        /// The data set.
        set: String,
        /// The step ("pip download scikit-learn==1.9.1", "dpkg-deb -x", ...).
        step: String,
        /// What went wrong, including the tool's stderr where there is one.
        reason: String,
    },
}

fn gz_note(decompressed: bool) -> &'static str {
    if decompressed { " of the decompressed data" } else { "" }
}

impl DataError {
    /// Wraps an I/O error with the path and the action that failed.
    pub fn io(path: impl Into<PathBuf>, action: &'static str, source: std::io::Error) -> Self {
        DataError::Io { path: path.into(), action, source }
    }
}
