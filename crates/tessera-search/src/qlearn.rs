//! The Q-learning meta-model that proposes candidates layer by layer (MetaQNN's template:
//! tabular Q, epsilon-greedy exploration on a schedule, experience replay).
//!
//! The state at step `l` is the layer index and the option chosen for layer `l - 1` (MetaQNN's
//! state is the current layer; with the layer index alone every action of a layer would see
//! the same bootstrapped target and nothing could be credited to it). The action is the
//! option of layer `l`; the episode ends after the last layer with the candidate's reward,
//! and there is no reward in between. An update walks a trajectory backwards,
//! `Q(s_l, a_l) += lr * (target - Q(s_l, a_l))` with `target = reward` at the last layer and
//! `discount * max_a Q(s_{l+1}, a)` before it, so one pass carries the reward to the first
//! layer. After every evaluation the new trajectory
//! and `replay` trajectories drawn from the memory are replayed. Everything random comes from
//! the caller's seeded RNG.

use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

use crate::error::{Result, SearchError};
use crate::space::SearchSpace;

/// Q-learning settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QConfig {
    /// Learning rate (MetaQNN: 0.01 over thousands of models; searches here evaluate tens to
    /// hundreds, so larger).
    pub learning_rate: f64,
    /// Discount between layers (1: only the final reward matters).
    pub discount: f64,
    /// Weight of the episode's reward in each layer's target against the bootstrapped
    /// `max Q` of the next state (Q(lambda)-style: 0 is one-step Q-learning, which with
    /// tens of episodes credits the early layers almost nothing through the max's noise;
    /// 1 is the Monte-Carlo return).
    pub trace: f64,
    /// Initial Q value (optimistic values explore untried options).
    pub initial_q: f64,
    /// Trajectories replayed from memory after each evaluation.
    pub replay: usize,
}

impl Default for QConfig {
    fn default() -> Self {
        QConfig { learning_rate: 0.1, discount: 1.0, trace: 0.8, initial_q: 0.5, replay: 32 }
    }
}

/// Epsilon as a function of how many candidates were evaluated: `(epsilon, evaluations)`
/// steps, each held for its count; the last epsilon holds after the schedule ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpsilonSchedule {
    /// The steps.
    pub steps: Vec<(f64, usize)>,
}

impl EpsilonSchedule {
    /// MetaQNN's shape scaled to `budget` evaluations: fully random for the first 30%, then
    /// 0.9 down to 0.1 in equal steps over the rest.
    pub fn metaqnn(budget: usize) -> Self {
        let random = (budget * 3).div_ceil(10);
        let rest = budget.saturating_sub(random);
        let eps = [0.9, 0.7, 0.5, 0.3, 0.1];
        let per = rest.div_ceil(eps.len()).max(1);
        let mut steps = vec![(1.0, random)];
        steps.extend(eps.iter().map(|&e| (e, per)));
        EpsilonSchedule { steps }
    }

    /// Epsilon after `evaluated` evaluations.
    pub fn at(&self, evaluated: usize) -> f64 {
        let mut seen = 0;
        for &(e, n) in &self.steps {
            seen += n;
            if evaluated < seen {
                return e;
            }
        }
        self.steps.last().map_or(0.0, |s| s.0)
    }

    /// Checks every epsilon is in [0, 1] and there is at least one step.
    pub fn check(&self) -> Result<()> {
        if self.steps.is_empty() || self.steps.iter().any(|s| !(0.0..=1.0).contains(&s.0)) {
            return Err(SearchError::config(
                "epsilon",
                "needs at least one step, each epsilon in [0, 1]",
            ));
        }
        Ok(())
    }
}

/// The tabular agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QAgent {
    config: QConfig,
    /// `q[l][previous option][option]` (layer 0 has one previous option).
    q: Vec<Vec<Vec<f64>>>,
    /// Every evaluated trajectory with its reward.
    memory: Vec<(Vec<usize>, f64)>,
}

impl QAgent {
    /// A fresh agent for `space`.
    pub fn new(space: &SearchSpace, config: QConfig) -> Result<Self> {
        if !(config.learning_rate > 0.0 && config.learning_rate <= 1.0) {
            return Err(SearchError::config("q.learning_rate", "must be in (0, 1]"));
        }
        if !(0.0..=1.0).contains(&config.discount) || !(0.0..=1.0).contains(&config.trace) {
            return Err(SearchError::config("q.discount/trace", "must be in [0, 1]"));
        }
        let q = (0..space.len())
            .map(|l| {
                let states = if l == 0 { 1 } else { space.options(l - 1).len() };
                vec![vec![config.initial_q; space.options(l).len()]; states]
            })
            .collect();
        Ok(QAgent { config, q, memory: Vec::new() })
    }

    /// One candidate: per layer, a uniformly random option with probability `epsilon`, else
    /// the option of highest Q (ties broken at random).
    pub fn propose(&self, rng: &mut impl Rng, epsilon: f64) -> Vec<usize> {
        let mut out: Vec<usize> = Vec::with_capacity(self.q.len());
        for (l, states) in self.q.iter().enumerate() {
            let row = &states[if l == 0 { 0 } else { out[l - 1] }];
            let o = if rng.random::<f64>() < epsilon {
                rng.random_range(0..row.len())
            } else {
                let best = max(row);
                let ties: Vec<usize> = (0..row.len()).filter(|&o| row[o] == best).collect();
                ties[rng.random_range(0..ties.len())]
            };
            out.push(o);
        }
        out
    }

    /// Learns from an evaluated candidate: stores it, updates on it, then replays
    /// `config.replay` stored trajectories drawn uniformly.
    pub fn learn(&mut self, candidate: &[usize], reward: f64, rng: &mut impl Rng) {
        self.memory.push((candidate.to_vec(), reward));
        self.update(candidate, reward);
        for _ in 0..self.config.replay {
            let i = rng.random_range(0..self.memory.len());
            let (c, r) = self.memory[i].clone();
            self.update(&c, r);
        }
    }

    fn update(&mut self, candidate: &[usize], reward: f64) {
        let last = self.q.len() - 1;
        for l in (0..=last).rev() {
            let target = if l == last {
                reward
            } else {
                let lambda = self.config.trace;
                lambda * reward
                    + (1.0 - lambda) * self.config.discount * max(&self.q[l + 1][candidate[l]])
            };
            let state = if l == 0 { 0 } else { candidate[l - 1] };
            let q = &mut self.q[l][state][candidate[l]];
            *q += self.config.learning_rate * (target - *q);
        }
    }

    /// The greedy candidate (highest Q at each state along the way, first on ties).
    pub fn greedy(&self) -> Vec<usize> {
        let mut out: Vec<usize> = Vec::with_capacity(self.q.len());
        for (l, states) in self.q.iter().enumerate() {
            let row = &states[if l == 0 { 0 } else { out[l - 1] }];
            out.push((0..row.len()).fold(0, |b, o| if row[o] > row[b] { o } else { b }));
        }
        out
    }

    /// Q values of layer `l` after option `previous` of layer `l - 1` (ignored for layer 0).
    pub fn q(&self, l: usize, previous: usize) -> &[f64] {
        &self.q[l][if l == 0 { 0 } else { previous }]
    }
}

fn max(row: &[f64]) -> f64 {
    row.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::{LayerRole, SearchLayer, SpaceSpec};
    use rand::SeedableRng;
    use rand::rngs::ChaCha8Rng;
    use tessera_sparsity::Layer;

    fn space(layers: usize) -> SearchSpace {
        SearchSpace::new(
            (0..layers)
                .map(|i| SearchLayer {
                    layer: Layer::linear(format!("fc{i}.weight"), 16, 16).unwrap(),
                    role: LayerRole::Body,
                    skip_unit: None,
                })
                .collect(),
            &SpaceSpec {
                schemes: vec!["unstructured".parse().unwrap()],
                rates: vec![2.0, 4.0, 8.0],
                dense_roles: vec![],
                pad: false,
                skip: false,
                separable: false,
            },
        )
        .unwrap()
    }

    #[test]
    fn the_agent_learns_a_separable_optimum() {
        // Reward: per layer, option 2 is worth 1 and the others 0; averaged over layers.
        // Nothing tells the agent this but the terminal reward.
        let sp = space(5);
        let mut agent = QAgent::new(&sp, QConfig::default()).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let reward = |c: &[usize]| c.iter().filter(|&&o| o == 2).count() as f64 / c.len() as f64;
        let schedule = EpsilonSchedule::metaqnn(300);
        for i in 0..300 {
            let c = agent.propose(&mut rng, schedule.at(i));
            let r = reward(&c);
            agent.learn(&c, r, &mut rng);
        }
        assert_eq!(
            agent.greedy(),
            vec![2; 5],
            "{:?}",
            (0..5).map(|l| agent.q(l, 2).to_vec()).collect::<Vec<_>>()
        );
        // Greedy proposals follow Q.
        assert_eq!(agent.propose(&mut rng, 0.0), vec![2; 5]);
    }

    #[test]
    fn one_update_reaches_the_first_layer_and_epsilon_follows_its_schedule() {
        let sp = space(3);
        let cfg =
            QConfig { learning_rate: 1.0, discount: 1.0, trace: 0.0, initial_q: 0.0, replay: 0 };
        let mut agent = QAgent::new(&sp, cfg).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        agent.learn(&[1, 2, 3], 0.7, &mut rng);
        // lr 1, discount 1: the last layer's Q is the reward, and each earlier layer's is the
        // max of the next.
        assert_eq!(agent.q(2, 2)[3], 0.7);
        assert_eq!(agent.q(1, 1)[2], 0.7);
        assert_eq!(agent.q(0, 0)[1], 0.7);
        assert_eq!(agent.q(0, 0)[0], 0.0);
        // Other states are untouched.
        assert_eq!(agent.q(2, 1)[3], 0.0);
        let s = EpsilonSchedule::metaqnn(100);
        assert_eq!(s.at(0), 1.0);
        assert_eq!(s.at(29), 1.0);
        assert_eq!(s.at(30), 0.9);
        assert_eq!(s.at(99), 0.1);
        assert_eq!(s.at(1000), 0.1);
        s.check().unwrap();
        assert!(EpsilonSchedule { steps: vec![(1.5, 3)] }.check().is_err());
        assert!(QAgent::new(&sp, QConfig { learning_rate: 0.0, ..QConfig::default() }).is_err());
    }
}
