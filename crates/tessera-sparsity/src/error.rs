//! The typed errors of `tessera-sparsity`. Every variant that concerns a layer names it.

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, SparsityError>;

/// What can go wrong when describing layers, parsing schemes or projecting weights.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SparsityError {
    /// A layer's dimensions are inconsistent (zero sizes, channels not divisible by groups...).
    #[error("layer `{layer}`: invalid geometry: {reason}")]
    InvalidGeometry {
        /// The layer.
        layer: String,
        /// What is wrong.
        reason: String,
    },

    /// The scheme cannot tile this layer's weight and the caller did not ask for padding.
    #[error("layer `{layer}`: scheme `{scheme}` cannot tile this layer: {reason}")]
    NotTileable {
        /// The layer.
        layer: String,
        /// The scheme's textual form.
        scheme: String,
        /// Why, e.g. "64 output channels per group are not a multiple of block rows 6".
        reason: String,
    },

    /// The scheme cannot apply to this kind of layer at all (e.g. pattern on a 1x1 conv).
    #[error("layer `{layer}`: scheme `{scheme}` does not apply: {reason}")]
    NotApplicable {
        /// The layer.
        layer: String,
        /// The scheme's textual form.
        scheme: String,
        /// Why.
        reason: String,
    },

    /// The target cannot be met by the scheme (e.g. 8x with pattern pruning alone, which
    /// always keeps 4 of 9 weights).
    #[error("layer `{layer}`: scheme `{scheme}` cannot reach target {target}: {reason}")]
    InfeasibleTarget {
        /// The layer.
        layer: String,
        /// The scheme's textual form.
        scheme: String,
        /// The target's textual form.
        target: String,
        /// Why.
        reason: String,
    },

    /// The weight slice has the wrong length for the layer.
    #[error("layer `{layer}`: {what} has {found} values, the geometry needs {expected}")]
    LengthMismatch {
        /// The layer.
        layer: String,
        /// What was measured ("weights", "mask").
        what: &'static str,
        /// Expected length.
        expected: usize,
        /// Actual length.
        found: usize,
    },

    /// A weight is NaN or infinite; no projection is defined.
    #[error("layer `{layer}`: weight {index} is {value}, projections need finite weights")]
    NonFinite {
        /// The layer.
        layer: String,
        /// Flat index of the weight.
        index: usize,
        /// The value.
        value: f32,
    },

    /// Text could not be parsed as a scheme, target or config.
    #[error("cannot parse {what} from {input:?}: {reason}")]
    Parse {
        /// What was being parsed ("scheme", "target").
        what: &'static str,
        /// The input text.
        input: String,
        /// What was expected.
        reason: String,
    },

    /// Two masks of different lengths were combined.
    #[error("mask length mismatch: {left} vs {right}")]
    MaskLength {
        /// Length of the left operand.
        left: usize,
        /// Length of the right operand.
        right: usize,
    },

    /// No configuration rule matches a layer.
    #[error("layer `{layer}`: no rule in the sparsity config matches and there is no default")]
    NoRule {
        /// The layer.
        layer: String,
    },
}
