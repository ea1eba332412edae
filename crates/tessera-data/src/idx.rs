//! The IDX file format (MNIST, Fashion-MNIST): reader for every element type the format
//! defines, and a writer.
//!
//! Layout (big-endian): two zero bytes, one type code, one dimension count `d`, then `d`
//! u32 dimension sizes, then the elements in row-major order. Type codes: `0x08` u8,
//! `0x09` i8, `0x0B` i16, `0x0C` i32, `0x0D` f32, `0x0E` f64.
//!
//! The reader is strict: the file must hold exactly the bytes the header describes. A short
//! file is [`DataError::Truncated`], a long one [`DataError::TrailingBytes`]; nothing is
//! silently cut.

use std::path::Path;

use crate::error::{DataError, Result};
use crate::file::{FileBytes, read_file};

/// Element type of an IDX array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdxDtype {
    /// Unsigned byte, code `0x08`.
    U8,
    /// Signed byte, code `0x09`.
    I8,
    /// Big-endian i16, code `0x0B`.
    I16,
    /// Big-endian i32, code `0x0C`.
    I32,
    /// Big-endian f32, code `0x0D`.
    F32,
    /// Big-endian f64, code `0x0E`.
    F64,
}

impl IdxDtype {
    /// The type code stored in byte 2 of the header.
    pub fn code(self) -> u8 {
        match self {
            IdxDtype::U8 => 0x08,
            IdxDtype::I8 => 0x09,
            IdxDtype::I16 => 0x0B,
            IdxDtype::I32 => 0x0C,
            IdxDtype::F32 => 0x0D,
            IdxDtype::F64 => 0x0E,
        }
    }

    /// The type for a header code, if the format defines it.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0x08 => IdxDtype::U8,
            0x09 => IdxDtype::I8,
            0x0B => IdxDtype::I16,
            0x0C => IdxDtype::I32,
            0x0D => IdxDtype::F32,
            0x0E => IdxDtype::F64,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            IdxDtype::U8 | IdxDtype::I8 => 1,
            IdxDtype::I16 => 2,
            IdxDtype::I32 | IdxDtype::F32 => 4,
            IdxDtype::F64 => 8,
        }
    }
}

/// The elements of an IDX array, in the file's type.
#[derive(Debug, Clone, PartialEq)]
pub enum IdxData {
    /// `0x08`.
    U8(Vec<u8>),
    /// `0x09`.
    I8(Vec<i8>),
    /// `0x0B`.
    I16(Vec<i16>),
    /// `0x0C`.
    I32(Vec<i32>),
    /// `0x0D`.
    F32(Vec<f32>),
    /// `0x0E`.
    F64(Vec<f64>),
}

impl IdxData {
    /// The element type.
    pub fn dtype(&self) -> IdxDtype {
        match self {
            IdxData::U8(_) => IdxDtype::U8,
            IdxData::I8(_) => IdxDtype::I8,
            IdxData::I16(_) => IdxDtype::I16,
            IdxData::I32(_) => IdxDtype::I32,
            IdxData::F32(_) => IdxDtype::F32,
            IdxData::F64(_) => IdxDtype::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            IdxData::U8(v) => v.len(),
            IdxData::I8(v) => v.len(),
            IdxData::I16(v) => v.len(),
            IdxData::I32(v) => v.len(),
            IdxData::F32(v) => v.len(),
            IdxData::F64(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A parsed IDX file.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxArray {
    /// Dimension sizes, outermost first.
    pub dims: Vec<usize>,
    /// The elements.
    pub data: IdxData,
    /// Length of the header in bytes (`4 + 4 * dims.len()`): element `i` of a u8 array sits at
    /// byte offset `header_len + i`.
    pub header_len: usize,
}

impl IdxArray {
    /// Reads an IDX file (raw or gzip).
    pub fn read(path: &Path) -> Result<Self> {
        let file = read_file(path, "IDX")?;
        Self::parse(&file)
    }

    /// Parses IDX bytes; `file` supplies the path and whether offsets are decompressed ones.
    pub fn parse(file: &FileBytes) -> Result<Self> {
        let b = &file.bytes;
        let bad = |offset: u64, expected: String, found: String| DataError::BadHeader {
            path: file.path.clone(),
            offset,
            expected,
            found,
            decompressed: file.decompressed,
        };
        let truncated = |offset: usize, expected: String| DataError::Truncated {
            path: file.path.clone(),
            offset: offset as u64,
            expected,
            available: b.len().saturating_sub(offset) as u64,
            decompressed: file.decompressed,
        };
        if b.len() < 4 {
            return Err(truncated(0, "a 4-byte IDX magic number".into()));
        }
        if b[0] != 0 || b[1] != 0 {
            return Err(bad(
                0,
                "IDX magic starting with two zero bytes (00 00 <type> <ndims>)".into(),
                format!("{:02x} {:02x} {:02x} {:02x}", b[0], b[1], b[2], b[3]),
            ));
        }
        let dtype = IdxDtype::from_code(b[2]).ok_or_else(|| {
            bad(
                2,
                "an IDX type code (08 u8, 09 i8, 0b i16, 0c i32, 0d f32, 0e f64)".into(),
                format!("{:02x}", b[2]),
            )
        })?;
        let ndims = b[3] as usize;
        if ndims == 0 {
            return Err(bad(3, "at least one dimension".into(), "0".into()));
        }
        let header_len = 4 + 4 * ndims;
        if b.len() < header_len {
            return Err(truncated(4, format!("{ndims} big-endian u32 dimension sizes")));
        }
        let dims: Vec<usize> = (0..ndims)
            .map(|i| {
                let o = 4 + 4 * i;
                u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as usize
            })
            .collect();
        let count = dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype.size()).map(|bytes| (n, bytes)));
        let Some((count, data_bytes)) = count else {
            return Err(bad(
                4,
                "dimension sizes whose product fits in memory".into(),
                format!("{dims:?}"),
            ));
        };
        let end = header_len + data_bytes;
        if b.len() < end {
            return Err(truncated(
                header_len,
                format!("{data_bytes} bytes of {dtype:?} data for dimensions {dims:?}"),
            ));
        }
        if b.len() > end {
            return Err(DataError::TrailingBytes {
                path: file.path.clone(),
                offset: end as u64,
                extra: (b.len() - end) as u64,
                decompressed: file.decompressed,
            });
        }
        let body = &b[header_len..end];
        let data = match dtype {
            IdxDtype::U8 => IdxData::U8(body.to_vec()),
            IdxDtype::I8 => IdxData::I8(body.iter().map(|&x| x as i8).collect()),
            IdxDtype::I16 => IdxData::I16(
                body.chunks_exact(2).map(|c| i16::from_be_bytes([c[0], c[1]])).collect(),
            ),
            IdxDtype::I32 => IdxData::I32(
                body.chunks_exact(4)
                    .map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            IdxDtype::F32 => IdxData::F32(
                body.chunks_exact(4)
                    .map(|c| f32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            IdxDtype::F64 => IdxData::F64(
                body.chunks_exact(8)
                    .map(|c| f64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect(),
            ),
        };
        debug_assert_eq!(data.len(), count);
        Ok(IdxArray { dims, data, header_len })
    }

    /// Serializes to IDX bytes (uncompressed).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let expected: usize = self.dims.iter().product();
        if expected != self.data.len() {
            return Err(DataError::InvalidArgument {
                name: "dims",
                reason: format!(
                    "dimensions {:?} describe {expected} elements but the data holds {}",
                    self.dims,
                    self.data.len()
                ),
            });
        }
        if self.dims.is_empty() || self.dims.len() > 255 {
            return Err(DataError::InvalidArgument {
                name: "dims",
                reason: format!("IDX holds 1..=255 dimensions, got {}", self.dims.len()),
            });
        }
        let mut out =
            Vec::with_capacity(4 + 4 * self.dims.len() + expected * self.data.dtype().size());
        out.extend_from_slice(&[0, 0, self.data.dtype().code(), self.dims.len() as u8]);
        for &d in &self.dims {
            let d = u32::try_from(d).map_err(|_| DataError::InvalidArgument {
                name: "dims",
                reason: format!("dimension {d} does not fit in a u32"),
            })?;
            out.extend_from_slice(&d.to_be_bytes());
        }
        match &self.data {
            IdxData::U8(v) => out.extend_from_slice(v),
            IdxData::I8(v) => out.extend(v.iter().map(|&x| x as u8)),
            IdxData::I16(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_be_bytes())),
            IdxData::I32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_be_bytes())),
            IdxData::F32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_be_bytes())),
            IdxData::F64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_be_bytes())),
        }
        Ok(out)
    }

    /// The first `n` records (slices along the outermost dimension), e.g. to cut a fixture.
    pub fn first_records(&self, n: usize) -> Result<IdxArray> {
        let total = self.dims[0];
        if n > total {
            return Err(DataError::InvalidArgument {
                name: "n",
                reason: format!("asked for the first {n} records of an array with {total}"),
            });
        }
        let per: usize = self.dims[1..].iter().product();
        let k = n * per;
        let data = match &self.data {
            IdxData::U8(v) => IdxData::U8(v[..k].to_vec()),
            IdxData::I8(v) => IdxData::I8(v[..k].to_vec()),
            IdxData::I16(v) => IdxData::I16(v[..k].to_vec()),
            IdxData::I32(v) => IdxData::I32(v[..k].to_vec()),
            IdxData::F32(v) => IdxData::F32(v[..k].to_vec()),
            IdxData::F64(v) => IdxData::F64(v[..k].to_vec()),
        };
        let mut dims = self.dims.clone();
        dims[0] = n;
        Ok(IdxArray { header_len: self.header_len, dims, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn file(bytes: Vec<u8>) -> FileBytes {
        FileBytes { path: PathBuf::from("t.idx"), bytes, decompressed: false }
    }

    fn check(bytes: Vec<u8>, dims: &[usize], data: IdxData) {
        let arr = IdxArray::parse(&file(bytes.clone())).unwrap();
        assert_eq!(arr.dims, dims);
        assert_eq!(arr.data, data);
        assert_eq!(arr.to_bytes().unwrap(), bytes, "writer must reproduce the bytes");
    }

    #[test]
    fn every_dtype_parses_big_endian() {
        check(vec![0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 255], &[3], IdxData::U8(vec![1, 2, 255]));
        check(vec![0, 0, 9, 1, 0, 0, 0, 2, 0xff, 0x80], &[2], IdxData::I8(vec![-1, -128]));
        check(
            vec![0, 0, 0x0b, 1, 0, 0, 0, 2, 0x01, 0x02, 0xff, 0xfe],
            &[2],
            IdxData::I16(vec![258, -2]),
        );
        check(
            vec![0, 0, 0x0c, 1, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xfd],
            &[1],
            IdxData::I32(vec![-3]),
        );
        // 1.5f32 = 0x3fc00000
        check(vec![0, 0, 0x0d, 1, 0, 0, 0, 1, 0x3f, 0xc0, 0, 0], &[1], IdxData::F32(vec![1.5]));
        // -2.0f64 = 0xc000000000000000
        check(
            vec![0, 0, 0x0e, 1, 0, 0, 0, 1, 0xc0, 0, 0, 0, 0, 0, 0, 0],
            &[1],
            IdxData::F64(vec![-2.0]),
        );
    }

    #[test]
    fn multi_dimensional_header() {
        let mut bytes = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3];
        bytes.extend(0..12u8);
        let arr = IdxArray::parse(&file(bytes)).unwrap();
        assert_eq!(arr.dims, vec![2, 2, 3]);
        assert_eq!(arr.header_len, 16);
        let first = arr.first_records(1).unwrap();
        assert_eq!(first.dims, vec![1, 2, 3]);
        assert_eq!(first.data, IdxData::U8((0..6).collect()));
    }

    #[test]
    fn errors_name_offsets() {
        let err = IdxArray::parse(&file(vec![0, 1, 8, 1])).unwrap_err();
        assert!(matches!(err, DataError::BadHeader { offset: 0, .. }), "{err}");
        let err = IdxArray::parse(&file(vec![0, 0, 7, 1])).unwrap_err();
        assert!(matches!(err, DataError::BadHeader { offset: 2, .. }), "{err}");
        let err = IdxArray::parse(&file(vec![0, 0, 8, 0])).unwrap_err();
        assert!(matches!(err, DataError::BadHeader { offset: 3, .. }), "{err}");
        let err = IdxArray::parse(&file(vec![0, 0, 8, 2, 0, 0])).unwrap_err();
        assert!(matches!(err, DataError::Truncated { offset: 4, available: 2, .. }), "{err}");
        let err = IdxArray::parse(&file(vec![0, 0, 8, 1, 0, 0, 0, 4, 1, 2])).unwrap_err();
        assert!(matches!(err, DataError::Truncated { offset: 8, available: 2, .. }), "{err}");
        let err = IdxArray::parse(&file(vec![0, 0, 8, 1, 0, 0, 0, 1, 1, 2])).unwrap_err();
        assert!(matches!(err, DataError::TrailingBytes { offset: 9, extra: 1, .. }), "{err}");
        let err = IdxArray::parse(&file(vec![0, 0])).unwrap_err();
        assert!(matches!(err, DataError::Truncated { offset: 0, .. }), "{err}");
    }

    #[test]
    fn writer_rejects_inconsistent_dims() {
        let arr = IdxArray { dims: vec![2, 2], data: IdxData::U8(vec![1, 2, 3]), header_len: 12 };
        assert!(matches!(arr.to_bytes(), Err(DataError::InvalidArgument { name: "dims", .. })));
    }
}
