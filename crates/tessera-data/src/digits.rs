//! scikit-learn's 8x8 handwritten digits (UCI optdigits test set, 1797 samples), as shipped
//! in the scikit-learn wheel at `sklearn/datasets/data/digits.csv.gz`.
//!
//! One sample per line: 64 comma-separated pixel counts (integers 0..=16, row-major 8x8)
//! followed by the label (0..=9). Values may be written as integers or as integral floats
//! (`"3"` or `"3.0"`); anything else is an error naming the line, column and byte offset.

use std::path::Path;

use crate::dataset::{Dataset, Normalization, SampleShape};
use crate::error::{DataError, Result};
use crate::file::read_file;

/// Number of pixel columns per row.
pub const DIGITS_PIXELS: usize = 64;

/// The pixel scale of the digits set: counts of set pixels in 4x4 cells, 0..=16.
pub const DIGITS_MAX: f32 = 16.0;

/// Reads the digits CSV (raw or gzip). Default normalization is `x / 16`.
pub fn read_digits_csv(path: &Path, normalization: Normalization) -> Result<Dataset> {
    let file = read_file(path, "digits CSV")?;
    let text = std::str::from_utf8(&file.bytes).map_err(|e| DataError::Csv {
        path: path.to_path_buf(),
        line: 1 + file.bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count(),
        column: 0,
        offset: e.valid_up_to() as u64,
        expected: "UTF-8 text".into(),
        found: format!("byte {:#04x}", file.bytes[e.valid_up_to()]),
        decompressed: file.decompressed,
    })?;
    let mut pixels: Vec<u8> = Vec::with_capacity(1797 * DIGITS_PIXELS);
    let mut labels = Vec::with_capacity(1797);
    let mut offset = 0usize;
    for (line_no, line) in text.split('\n').enumerate() {
        let line_start = offset;
        offset += line.len() + 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let mut col_offset = line_start;
        let mut count = 0usize;
        for (col, cell) in line.split(',').enumerate() {
            let cell_offset = col_offset;
            col_offset += cell.len() + 1;
            count += 1;
            let is_label = col == DIGITS_PIXELS;
            let (max, what) =
                if is_label { (9, "a label 0..=9") } else { (16, "a pixel count 0..=16") };
            let err = |expected: String| DataError::Csv {
                path: path.to_path_buf(),
                line: line_no + 1,
                column: col + 1,
                offset: cell_offset as u64,
                expected,
                found: cell.to_string(),
                decompressed: file.decompressed,
            };
            if col > DIGITS_PIXELS {
                return Err(err(format!("{} columns (64 pixels + label)", DIGITS_PIXELS + 1)));
            }
            let v: f64 = cell.trim().parse().map_err(|_| err(what.into()))?;
            if v.fract() != 0.0 || !(0.0..=f64::from(max)).contains(&v) {
                return Err(err(what.into()));
            }
            if is_label {
                labels.push(v as u8);
            } else {
                pixels.push(v as u8);
            }
        }
        if count != DIGITS_PIXELS + 1 {
            return Err(DataError::Csv {
                path: path.to_path_buf(),
                line: line_no + 1,
                column: count,
                offset: line_start as u64,
                expected: format!("{} columns (64 pixels + label)", DIGITS_PIXELS + 1),
                found: format!("{count} columns"),
                decompressed: file.decompressed,
            });
        }
    }
    if labels.is_empty() {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            offset: 0,
            expected: "at least one CSV row".into(),
            available: file.bytes.len() as u64,
            decompressed: file.decompressed,
        });
    }
    let shape = SampleShape { channels: 1, height: 8, width: 8 };
    let names = (0..10).map(|d| d.to_string()).collect();
    Dataset::from_raw("digits", shape, &pixels, labels, 10, names, normalization)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::write_atomic;

    fn row(px: u8, label: &str) -> String {
        let mut cells: Vec<String> = (0..64).map(|i| ((i as u8 + px) % 17).to_string()).collect();
        cells.push(label.to_string());
        cells.join(",")
    }

    #[test]
    fn parses_integers_and_integral_floats() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.csv");
        let text = format!("{}\r\n{}\n", row(0, "7"), row(3, "2.0"));
        write_atomic(&p, text.as_bytes()).unwrap();
        let d = read_digits_csv(&p, Normalization::UnitRange { max: DIGITS_MAX }).unwrap();
        assert_eq!(d.labels(), &[7, 2]);
        assert_eq!(d.image(1)[0], 3.0 / 16.0);
        assert_eq!(d.image(0)[16], 16.0 / 16.0);
    }

    #[test]
    fn bad_cells_name_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.csv");
        let mut bad = row(0, "7");
        bad = bad.replacen("1,", "17,", 1); // column 2 becomes 17
        write_atomic(&p, format!("{}\n{bad}\n", row(0, "1")).as_bytes()).unwrap();
        match read_digits_csv(&p, Normalization::UnitRange { max: DIGITS_MAX }).unwrap_err() {
            DataError::Csv { line: 2, column: 2, found, .. } => assert_eq!(found, "17"),
            e => panic!("{e}"),
        }
        write_atomic(&p, format!("{}\n", row(0, "10")).as_bytes()).unwrap();
        assert!(matches!(
            read_digits_csv(&p, Normalization::UnitRange { max: DIGITS_MAX }),
            Err(DataError::Csv { column: 65, .. })
        ));
        write_atomic(&p, b"1,2,3\n").unwrap();
        assert!(matches!(
            read_digits_csv(&p, Normalization::UnitRange { max: DIGITS_MAX }),
            Err(DataError::Csv { line: 1, .. })
        ));
        write_atomic(&p, b"").unwrap();
        assert!(matches!(
            read_digits_csv(&p, Normalization::UnitRange { max: DIGITS_MAX }),
            Err(DataError::Truncated { .. })
        ));
    }
}
