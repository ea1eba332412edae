//! One module per family of schemes; `crate::scheme` dispatches to them.

pub(crate) mod bcr;
pub(crate) mod nm;
pub(crate) mod pattern;
pub(crate) mod polarized;
pub(crate) mod selection;
