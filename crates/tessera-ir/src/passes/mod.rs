//! Rewrite passes. A pass takes a graph and returns a rewritten graph, or `None` when it has
//! nothing to do; a [`Pipeline`] runs a list of passes in order and reports what each changed.
//! Every pass preserves the interpreter's outputs (up to float rounding); the tests check this
//! on random inputs for each pass and each model.

mod batch_norm;
mod dead_channels;
mod fuse_activation;
mod reshape;

pub use batch_norm::FoldBatchNorm;
pub use dead_channels::RemoveDeadChannels;
pub use fuse_activation::FuseActivation;
pub use reshape::FoldReshapes;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::graph::Graph;

/// A graph rewrite.
pub trait Pass {
    /// Short name for reports.
    fn name(&self) -> &'static str;
    /// The rewritten graph, or `None` if nothing applies.
    fn run(&self, graph: &Graph) -> Result<Option<Graph>>;
}

/// What one pass did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassReport {
    /// The pass.
    pub pass: String,
    /// Whether it rewrote the graph.
    pub changed: bool,
    /// Nodes before and after.
    pub nodes: (usize, usize),
    /// Parameter values before and after.
    pub params: (usize, usize),
}

/// An ordered list of passes.
pub struct Pipeline {
    passes: Vec<Box<dyn Pass>>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.passes.iter().map(|p| p.name())).finish()
    }
}

impl Pipeline {
    /// The passes in the given order.
    pub fn new(passes: Vec<Box<dyn Pass>>) -> Self {
        Pipeline { passes }
    }

    /// The standard inference pipeline: fold batch norms (so channels become plain conv
    /// outputs), fuse activations, remove dead channels, fold reshapes.
    pub fn standard() -> Self {
        Pipeline::new(vec![
            Box::new(FoldBatchNorm),
            Box::new(FuseActivation),
            Box::new(RemoveDeadChannels),
            Box::new(FoldReshapes),
        ])
    }

    /// Runs every pass once, in order, validating the graph after each.
    pub fn run(&self, mut graph: Graph) -> Result<(Graph, Vec<PassReport>)> {
        let mut reports = Vec::new();
        for pass in &self.passes {
            let _span = tracing::info_span!("pass", name = pass.name()).entered();
            let before = (graph.nodes.len(), param_values(&graph));
            let changed = match pass.run(&graph)? {
                Some(g) => {
                    g.validate()?;
                    graph = g;
                    true
                }
                None => false,
            };
            reports.push(PassReport {
                pass: pass.name().to_string(),
                changed,
                nodes: (before.0, graph.nodes.len()),
                params: (before.1, param_values(&graph)),
            });
        }
        Ok((graph, reports))
    }
}

fn param_values(g: &Graph) -> usize {
    g.params.values().map(|p| p.tensor.len()).sum()
}

/// A parameter name not yet used in `g`, derived from `base`.
pub(crate) fn fresh_param_name(g: &Graph, base: &str) -> String {
    if !g.params.contains_key(base) {
        return base.to_string();
    }
    (1..)
        .map(|i| format!("{base}.{i}"))
        .find(|n| !g.params.contains_key(n))
        .unwrap_or_else(|| base.to_string())
}

/// How many nodes read parameter `name`.
pub(crate) fn param_users(g: &Graph, name: &str) -> usize {
    g.nodes.iter().filter(|n| n.op.params().contains(&name)).count()
}
