//! The daemon's view of MCD ⊆ ECP (WORKER-4003, 4600–4623, 4613): the
//! model's capability descriptor (GGUF metadata, overridden by a
//! `<model>.mcd.json` sidecar) and this worker's engine profile, computed
//! from what the configured backend really implements, not hard-coded.
//! The descriptors and the check live in `crate::model::mcd`.

use crate::config::Config;
use crate::engine::BackendKind;
use crate::error::Result;
use crate::model::arch::RopeStyle;
use crate::model::gguf::{GgmlType, GgufHeader};
use crate::model::mcd::{self, BackendCaps, Ecp, Mcd};
use std::path::Path;

pub use crate::model::mcd::check;

/// The model's MCD; a sidecar next to the file wins over the metadata (4602).
pub fn mcd(g: &GgufHeader, path: &Path) -> Result<Mcd> {
    Mcd::from_gguf(g, mcd::sidecar_for(path).as_deref())
}

/// Tensor types the configured backend computes with.
fn quant_for(backend: BackendKind) -> Vec<GgmlType> {
    match backend {
        BackendKind::Cpu => GgmlType::ALL
            .into_iter()
            .filter(|t| cpu_dequantizes(*t))
            .collect(),
        BackendKind::Cuda => crate::engine::cuda::supported_quant(),
    }
}

/// Whether the reference dequantizer handles one zeroed block of `t`.
fn cpu_dequantizes(t: GgmlType) -> bool {
    let src = vec![0u8; t.type_size()];
    let mut dst = vec![0f32; t.block_size()];
    crate::model::quant::dequantize(t, &src, &mut dst).is_ok()
}

/// This worker's ECP (4610, 4611, 4613).
pub fn ecp(cfg: &Config) -> Result<Ecp> {
    // Both engines implement both rotary styles and any K/V head grouping.
    let caps = BackendCaps {
        positional: [RopeStyle::Norm, RopeStyle::Neox]
            .into_iter()
            .map(|s| mcd::rope_style_name(s).to_string())
            .collect(),
        attention: vec!["mha".into(), "gqa".into()],
        quant: quant_for(cfg.backend),
    };
    let vram_bytes = match cfg.backend {
        BackendKind::Cpu => crate::daemon::models::host_available_bytes().unwrap_or(0),
        BackendKind::Cuda => crate::gpu::probe(cfg.gpu_device)
            .map(|d| d.total_bytes)
            .unwrap_or(0),
    };
    Ok(Ecp::new(
        &cfg.worker_id,
        &caps,
        cfg.max_context as u64,
        vram_bytes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_backend_reports_the_formats_of_real_releases() {
        let names: Vec<&str> = quant_for(BackendKind::Cpu)
            .iter()
            .map(|t| t.name())
            .collect();
        for needed in [
            "f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q8_0", "q4_K", "q6_K",
        ] {
            assert!(names.contains(&needed), "{needed} missing from {names:?}");
        }
    }
}
