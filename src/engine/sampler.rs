//! placeholder: owned by the reference-engine helper.
use super::SamplingParams;

pub fn sample_from_logits(_logits: &[f32], _params: &SamplingParams, _draw: f32) -> u32 {
    unimplemented!("sampler not yet written")
}
