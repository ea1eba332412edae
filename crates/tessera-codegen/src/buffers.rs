//! Activation buffers by liveness: every value gets a range of one arena, reused once the
//! value's last reader has run, so a plan's memory is the peak of what is live at once rather
//! than the sum of every layer's output.
//!
//! Allocation is first fit over the free ranges in value-definition order (the classic
//! greedy interval allocation), with ranges rounded to 16 floats so each starts on a 64-byte
//! boundary relative to the arena. Values that are views of another (flatten, reshape) share
//! its range and extend its lifetime.

use std::collections::HashMap;

use tessera_ir::{Graph, Op, Shapes};

use crate::error::{CodegenError, Result, unsupported};

/// Floats per alignment unit (64 bytes).
const ALIGN: usize = 16;

/// Floats a value of `len` floats takes in the arena: whole alignment units, and one more when
/// that is a multiple of 4 KiB. Values of such sizes placed back to back would otherwise start
/// at the same address modulo 4 KiB, and a kernel storing one while loading the other (a
/// convolution adding a fused residual) stalls on false store-to-load dependencies (4K
/// aliasing): ResNet-20's 16@32x32 block-punched 8x conv with its residual at 0 mod 4 KiB from
/// its output took 13.9 us, 12.3 us 64 bytes further (Zen 3).
fn padded(len: usize) -> usize {
    let n = len.next_multiple_of(ALIGN).max(ALIGN);
    if n.is_multiple_of(1024) { n + ALIGN } else { n }
}

/// One value's place in the arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    /// First float.
    pub offset: usize,
    /// Floats (for the whole batch).
    pub len: usize,
}

/// A value to place: its size, the step that defines it and the last step that reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Interval {
    pub len: usize,
    pub def: usize,
    pub last_use: usize,
}

/// Places `values` (in definition order) in one arena; returns each value's slot and the
/// arena length. A value is free for reuse after its `last_use` step; a value may not share
/// memory with any value whose interval overlaps its own (`def..=last_use`).
pub(crate) fn allocate(values: &[Interval]) -> (Vec<Slot>, usize) {
    let mut slots = Vec::with_capacity(values.len());
    // Live allocations: (offset, padded len, last use).
    let mut live: Vec<(usize, usize, usize)> = Vec::new();
    let mut arena = 0usize;
    for v in values {
        // Release everything whose last reader ran before this value is written.
        live.retain(|&(_, _, last)| last >= v.def);
        let need = padded(v.len);
        live.sort_unstable();
        // First gap between live ranges that fits.
        let mut at = 0usize;
        for &(off, len, _) in &live {
            if off >= at + need {
                break;
            }
            at = at.max(off + len);
        }
        live.push((at, need, v.last_use));
        arena = arena.max(at + need);
        slots.push(Slot { offset: at, len: v.len });
    }
    (slots, arena)
}

/// Where every value of a graph lives in the arena.
#[derive(Debug, Clone)]
pub(crate) struct ValueLayout {
    /// Slot of every value (the input, each node's output; views share their source's slot).
    pub slots: HashMap<String, Slot>,
    /// Floats of the arena.
    pub arena_len: usize,
    /// The graph input's slot.
    pub input: Slot,
    /// The graph output's slot.
    pub output: Slot,
}

impl ValueLayout {
    /// The slot of value `name` (every value the graph computes has one).
    pub(crate) fn slot(&self, name: &str) -> Slot {
        self.slots.get(name).copied().unwrap_or(Slot { offset: 0, len: 0 })
    }
}

/// Whether a node's output is a view of its input (same floats, new shape).
pub(crate) fn is_view(op: &Op) -> bool {
    matches!(op, Op::Flatten { .. } | Op::Reshape { .. })
}

/// Places every value of `graph` (one input named `input` of `input_len` floats, one
/// output named `output`; `shapes` for the batch) in one arena by liveness: the input is
/// defined at time 0, node i's output at time i + 1, and the output lives to the end.
pub(crate) fn layout_values(
    graph: &Graph,
    shapes: &Shapes,
    input: &str,
    input_len: usize,
    output: &str,
) -> Result<ValueLayout> {
    let n = graph.nodes.len();
    let mut value_of: HashMap<&str, usize> = HashMap::new();
    let mut intervals: Vec<Interval> = Vec::new();
    value_of.insert(input, 0);
    intervals.push(Interval { len: input_len, def: 0, last_use: 0 });
    for (i, node) in graph.nodes.iter().enumerate() {
        let time = i + 1;
        for x in &node.inputs {
            let v = *value_of.get(x.as_str()).ok_or_else(|| {
                unsupported(node, format!("reads `{x}`, which is not computed before it"))
            })?;
            intervals[v].last_use = intervals[v].last_use.max(time);
        }
        if is_view(&node.op) {
            let v = value_of[node.inputs[0].as_str()];
            value_of.insert(&node.output, v);
        } else {
            let shape = shapes
                .get(&node.output)
                .ok_or_else(|| unsupported(node, "output shape not inferred"))?;
            value_of.insert(&node.output, intervals.len());
            intervals.push(Interval { len: shape.iter().product(), def: time, last_use: time });
        }
    }
    let out_value = *value_of.get(output).ok_or_else(|| CodegenError::Options {
        field: "graph",
        reason: format!("output `{output}` is never computed"),
    })?;
    intervals[out_value].last_use = n + 1;
    let (slots, arena_len) = allocate(&intervals);
    Ok(ValueLayout {
        slots: value_of.iter().map(|(k, &v)| ((*k).to_string(), slots[v])).collect(),
        arena_len,
        input: slots[0],
        output: slots[out_value],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlaps(a: (Slot, Interval), b: (Slot, Interval)) -> bool {
        let time = a.1.def <= b.1.last_use && b.1.def <= a.1.last_use;
        let space = a.0.offset < b.0.offset + b.0.len && b.0.offset < a.0.offset + a.0.len;
        time && space
    }

    #[test]
    fn a_chain_reuses_two_buffers() {
        // x -> a -> b -> c -> d: each value read only by the next step.
        let vals: Vec<Interval> =
            (0..5).map(|i| Interval { len: 100, def: i, last_use: i + 1 }).collect();
        let (slots, arena) = allocate(&vals);
        assert_eq!(arena, 2 * 112, "{slots:?}");
        assert_eq!(slots[0].offset, slots[2].offset);
    }

    /// Values whose sizes are multiples of 4 KiB (a 16-channel 32x32 map: 64 KiB) do not
    /// start at the same address modulo 4 KiB when placed back to back.
    #[test]
    fn page_sized_values_are_staggered() {
        let vals: Vec<Interval> =
            (0..4).map(|i| Interval { len: 16 * 1024, def: i, last_use: 3 }).collect();
        let (slots, _) = allocate(&vals);
        for i in 0..4 {
            for j in 0..i {
                assert_ne!(slots[i].offset % 1024, slots[j].offset % 1024, "{slots:?}");
            }
        }
        // Other sizes are not padded.
        let (_, arena) = allocate(&[Interval { len: 1000, def: 0, last_use: 0 }]);
        assert_eq!(arena, 1008);
    }

    #[test]
    fn live_values_never_share_memory() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(5);
        for _ in 0..200 {
            let n = rng.random_range(1..30);
            let vals: Vec<Interval> = (0..n)
                .map(|i| Interval {
                    len: rng.random_range(1..500),
                    def: i,
                    last_use: i + rng.random_range(0..6),
                })
                .collect();
            let (slots, arena) = allocate(&vals);
            let sum: usize = vals.iter().map(|v| padded(v.len)).sum();
            assert!(arena <= sum);
            for i in 0..n {
                assert_eq!(slots[i].offset % ALIGN, 0);
                assert!(slots[i].offset + slots[i].len <= arena);
                for j in 0..i {
                    assert!(
                        !overlaps((slots[i], vals[i]), (slots[j], vals[j])),
                        "{i} {j}: {:?} {:?} {:?} {:?}",
                        slots[i],
                        vals[i],
                        slots[j],
                        vals[j]
                    );
                }
            }
        }
    }
}
