//! `tessera-kernels`: sparse storage formats and fast dense and sparse CPU kernels.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod conv;
pub mod dense;
mod error;
pub mod formats;
mod isa;
pub mod reference;
pub mod rowgroup;
mod simd;
mod threads;

pub use conv::{ConvShape, InputLayout};
pub use error::{KernelError, Result};
pub use isa::Isa;
pub use rowgroup::{ConvScratch, RowGroupConv, RowGroupMatrix};
