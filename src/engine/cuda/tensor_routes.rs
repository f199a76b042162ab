//! Which decode mat-vecs run on the tensor cores (`WORKER_ORCD_TENSOR_DECODE`;
//! issue 11 point 7, issue 12 point 1).
//!
//! Why per group: the tensor-core `_mm` kernels (cuda/matvec_mma.cu) give
//! different bits from the FP32 kernels, and a row's bits must not depend on
//! its step (WORKER-4710), so a matrix takes one family for every row count,
//! a lone row included. Where they pay differs: at 64 rows they replace
//! compute-bound FP32 chains; for a lone row they replace fused kernels
//! (norm inside the q/k/v or gate/up launch) with a `row_rms` launch plus
//! the product. The groups are chosen once, at load, from the variable and
//! from what the GPU has.
//!
//! Off by default, because the first version of the kernel is slower than
//! the FP32 kernels everywhere it was measured (H100, Qwen2.5-0.5B shapes,
//! op profile at ad5ea86, µs per launch, `_mm` against the FP32 route):
//!
//! | rows | LM head q8_0 | gate/up q5_0 | down q4_K | q q5_0 |
//! |---|---|---|---|---|
//! | 1 | 388 / 111 | 28.9 / 10.6 | 40.5 / 6.8 | 11.7 / 4.3 |
//! | 8 | 424 / 434 | 30.6 / 31.9 | 42.0 / 33.0 | 12.0 / 9.9 |
//! | 32 | 908 / 767 | 70.3 / 60.8 | 105.9 / 41.5 | 24.8 / 11.9 |
//! | 64 | 1,534 / 1,526 | 121 / 100 | 186 / 63 | 41.1 / 16.8 |
//!
//! Decode with `lm_head` was 676 against 795 tokens/s at batch 1, and the
//! 64-sequence sweep 7,692 against 7,657 (`ffn` too: 339 tokens/s at batch
//! 1). The MMAs are not what limits it: every lane loads its vector
//! elements one float at a time from global memory per 8-token tile and
//! converts them to TF32 parts in every block, the weights are dequantized
//! by half a warp per run, and the time grows with the rows as the FP32
//! kernels' does. Staging the split vectors in shared memory once per
//! block, dequantizing with all lanes, and more rows per block are the next
//! steps; the correctness side (bits per row independent of the step,
//! error against float64 ≤ 4.4e-6) is shown on the GPU by
//! `op_tensor_rows_are_bit_identical_to_lone_rows`.

use crate::error::{Result, WorkerError};
use crate::gpu::batched::RowsMath;

/// The matrix groups on the tensor cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TensorRoutes {
    pub lm_head: bool,
    /// Gate, up and down.
    pub ffn: bool,
    /// q, k, v and the attention output.
    pub attn: bool,
}

impl TensorRoutes {
    /// Parse the variable's value (`None`: unset, the default `none`).
    pub fn parse(value: Option<&str>) -> Result<Self> {
        let text = value.unwrap_or("none").trim();
        let mut routes = Self::default();
        if text == "none" {
            return Ok(routes);
        }
        for group in text.split(',').map(str::trim) {
            match group {
                "lm_head" => routes.lm_head = true,
                "ffn" => routes.ffn = true,
                "attn" => routes.attn = true,
                other => {
                    return Err(WorkerError::InvalidConfig {
                        message: format!(
                            "WORKER_ORCD_TENSOR_DECODE names \"{other}\"; use a comma list of lm_head, ffn and attn, or none"
                        ),
                    })
                }
            }
        }
        Ok(routes)
    }

    /// These routes less the groups `ready` refuses (a format without its
    /// tensor-core kernels on this GPU).
    pub fn keep_ready(self, ready: impl Fn(Group) -> bool) -> Self {
        Self {
            lm_head: self.lm_head && ready(Group::LmHead),
            ffn: self.ffn && ready(Group::Ffn),
            attn: self.attn && ready(Group::Attn),
        }
    }

    /// The arithmetic of a group's decode products.
    pub fn math(&self, group: Group) -> RowsMath {
        let on = match group {
            Group::LmHead => self.lm_head,
            Group::Ffn => self.ffn,
            Group::Attn => self.attn,
        };
        if on {
            RowsMath::Tensor
        } else {
            RowsMath::Fp32
        }
    }

    /// For logs and the numerics version: `lm_head+ffn`, or `none`.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = [
            (self.lm_head, "lm_head"),
            (self.ffn, "ffn"),
            (self.attn, "attn"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join("+")
        }
    }
}

/// Whether prefill GEMMs run as 3xTF32 on the tensor cores
/// (`WORKER_ORCD_PREFILL_GEMM`: `None` or "f32" no, "tf32x3" yes). Any other
/// value is INVALID_CONFIG, the code `config::check_engine_env` gives the
/// daemon for it, so `generate` and `bench` refuse it the same way.
pub fn prefill_tf32x3(value: Option<&str>) -> Result<bool> {
    match value {
        None | Some("f32") => Ok(false),
        Some("tf32x3") => Ok(true),
        Some(other) => Err(WorkerError::InvalidConfig {
            message: format!(
                "WORKER_ORCD_PREFILL_GEMM is \"{other}\"; use \"f32\" (the default) or \"tf32x3\", or unset it"
            ),
        }),
    }
}

/// A group of matrices that takes one arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    LmHead,
    Ffn,
    Attn,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_names_groups_or_none() {
        let all = TensorRoutes {
            lm_head: true,
            ffn: true,
            attn: true,
        };
        assert_eq!(TensorRoutes::parse(None).unwrap(), TensorRoutes::default());
        assert_eq!(
            TensorRoutes::parse(Some("lm_head")).unwrap(),
            TensorRoutes {
                lm_head: true,
                ..Default::default()
            }
        );
        assert_eq!(
            TensorRoutes::parse(Some("none")).unwrap(),
            TensorRoutes::default()
        );
        assert_eq!(TensorRoutes::parse(Some("attn, ffn,lm_head")).unwrap(), all);
        assert_eq!(all.describe(), "lm_head+ffn+attn");
        assert_eq!(TensorRoutes::default().describe(), "none");
        for bad in ["", "ffn,", "mlp", "none,ffn"] {
            let e = TensorRoutes::parse(Some(bad)).unwrap_err();
            assert_eq!(e.code(), "INVALID_CONFIG", "{bad}: {e}");
        }
        let only_ffn = all.keep_ready(|g| g == Group::Ffn);
        assert_eq!(only_ffn.math(Group::Ffn), RowsMath::Tensor);
        assert_eq!(only_ffn.math(Group::Attn), RowsMath::Fp32);
        assert_eq!(only_ffn.math(Group::LmHead), RowsMath::Fp32);
    }

    #[test]
    fn the_prefill_gemm_mode_is_f32_tf32x3_or_a_config_error() {
        assert!(!prefill_tf32x3(None).unwrap());
        assert!(!prefill_tf32x3(Some("f32")).unwrap());
        assert!(prefill_tf32x3(Some("tf32x3")).unwrap());
        for bad in ["", "fast", "TF32X3", "f32 "] {
            let e = prefill_tf32x3(Some(bad)).unwrap_err();
            assert_eq!(e.code(), "INVALID_CONFIG", "{bad:?}: {e}");
        }
    }
}
