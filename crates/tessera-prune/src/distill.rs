//! Knowledge distillation from a teacher (the dense model) during retraining, and as the whole
//! loss of the privacy-preserving designer (which has no labels).
//!
//! The term added to the loss is `weight * T^2 * KL(softmax(t / T) || softmax(s / T))`,
//! averaged over the batch (Hinton et al.; the `T^2` keeps gradient magnitudes comparable
//! across temperatures). The teacher runs on the inference device; its logits enter the
//! student's graph as constants.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};
use tessera_models::Classifier;
use tessera_models::train::{Hooks, StepContext};

use crate::error::{PruneError, Result};

/// Distillation settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DistillConfig {
    /// Temperature T.
    pub temperature: f32,
    /// Weight of the distillation term.
    pub weight: f32,
}

impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig { temperature: 3.0, weight: 0.5 }
    }
}

/// The distillation hook.
#[derive(Debug, Clone)]
pub struct Distillation<T> {
    teacher: T,
    config: DistillConfig,
}

impl<T: Classifier> Distillation<T> {
    /// Distills from `teacher` (put in inference mode on the inference device).
    pub fn new(teacher: &T, config: DistillConfig) -> Result<Self> {
        if !(config.temperature > 0.0
            && config.weight >= 0.0
            && config.temperature.is_finite()
            && config.weight.is_finite())
        {
            return Err(PruneError::config("distill", "need temperature > 0 and weight >= 0"));
        }
        Ok(Distillation { teacher: teacher.valid(), config })
    }
}

/// `T^2 * mean_n KL(softmax(teacher / T) || softmax(student / T))`.
pub fn kd_loss(student: Tensor<2>, teacher: Tensor<2>, temperature: f32) -> Tensor<1> {
    let [n, _] = student.dims();
    let log_s = log_softmax(student.div_scalar(temperature), 1);
    let log_t = log_softmax(teacher.div_scalar(temperature), 1);
    let p_t = log_t.clone().exp();
    let kl = (p_t * (log_t - log_s)).sum();
    kl.mul_scalar(temperature * temperature / n.max(1) as f32)
}

impl<M, T: Classifier> Hooks<M> for Distillation<T> {
    fn extra_loss(
        &mut self,
        _model: &M,
        step: &StepContext<'_>,
    ) -> tessera_models::Result<Option<Tensor<1>>> {
        if self.config.weight == 0.0 {
            return Ok(None);
        }
        let teacher = self.teacher.forward(step.input.clone().inner()).autodiff();
        Ok(Some(
            kd_loss(step.logits.clone(), teacher, self.config.temperature)
                .mul_scalar(self.config.weight),
        ))
    }
}
