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
//! Off by default, because the kernels are slower than the FP32 kernels
//! everywhere they were measured. µs per launch, `_mm` against the FP32
//! route, Qwen2.5-0.5B shapes, op profile; first version (16 weight rows
//! and 64 token rows a block) on an H100 at ad5ea86:
//!
//! | rows | LM head q8_0 | gate/up q5_0 | down q4_K | q q5_0 |
//! |---|---|---|---|---|
//! | 1 | 388 / 111 | 28.9 / 10.6 | 40.5 / 6.8 | 11.7 / 4.3 |
//! | 8 | 424 / 434 | 30.6 / 31.9 | 42.0 / 33.0 | 12.0 / 9.9 |
//! | 32 | 908 / 767 | 70.3 / 60.8 | 105.9 / 41.5 | 24.8 / 11.9 |
//! | 64 | 1,534 / 1,526 | 121 / 100 | 186 / 63 | 41.1 / 16.8 |
//!
//! Decode with `lm_head` was then 676 against 795 tokens/s at batch 1.
//!
//! The second version (80326e5: up to 64 weight rows and 32 token rows a
//! block, vectors read with one 8-byte load per fragment; see
//! cuda/matvec_mma.cu) on an H200, the whole GPU suite's phase 1:
//!
//! | rows | LM head q8_0 | gate/up q5_0 | down q4_K | q q5_0 |
//! |---|---|---|---|---|
//! | 1 | 548 / 109 | 49.3 / 9.3 | 50.2 / 5.6 | 13.5 / 4.3 |
//! | 8 | 555 / 435 | 49.6 / 30.8 | 50.8 / 31.9 | 13.6 / 8.7 |
//! | 32 | 936 / 768 | 83.1 / 59.5 | 87.2 / 40.0 | 22.6 / 10.6 |
//! | 64 | 1,884 / 1,532 | 144 / 98.9 | 87.4 / 61.7 | 23.0 / 15.7 |
//!
//! Decode, 1 / 8 / 32 / 64 sequences (tok/s, same card and call): FP32
//! 937 / 2,367 / 6,685 / 8,704; `lm_head` 665 / 2,282 / 6,461 / 8,303;
//! `lm_head,ffn` 267 / 1,800 / 4,770 / 6,769; all three 205 / 1,614 /
//! 4,027 / 6,103. So it is no better than the first version. What limits
//! it, read off the numbers and the compiler: the time hardly moves from 1
//! to 8 rows (the MMAs are not the cost) and doubles from 32 to 64 (each
//! 32-token group stages and dequantizes the weights again); ptxas gives
//! the q8_0 kernel 194 registers, so one 256-thread block fits an SM and
//! its eight warps wait, unhidden, on the staging copies and on the vector
//! loads from global memory inside the MMA loop. Next: every token group
//! of a row block in one block (the dequantized tile serves all of them),
//! the vectors staged in shared memory with the weights, fewer registers
//! (two blocks an SM), the staging of the next half chunk overlapped with
//! the MMAs of this one, and the columns split over blocks for matrices of
//! few rows (the down projection's 56 blocks each walk 152 runs in turn).
//!
//! The correctness side (bits per row independent of the step and of the
//! tiles a block takes, error against float64 ≤ 4.4e-6) is shown on the
//! GPU by `op_tensor_rows_are_bit_identical_to_lone_rows` and in every
//! format by the emulator's `tensor_rows_are_bit_identical_to_lone_rows_in_every_format`.

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

/// How prefill GEMMs multiply (`WORKER_ORCD_PREFILL_GEMM`): 3xTF32 on the
/// tensor cores where it was measured faster (`by_size`, the default:
/// [`PrefillGemm::tf32x3_for`]), one FP32 SGEMM for every matrix, or 3xTF32
/// for every matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefillGemm {
    F32,
    Tf32x3,
    BySize,
}

/// Chunk tokens from which `by_size` takes 3xTF32. Op profile on an H100 at
/// Qwen2.5-0.5B shapes, µs per GEMM (dequant included), SGEMM against
/// 3xTF32 at 128 / 256 / 512 tokens: gate/up 4864x896 48.0 / 73.9 / 135.0
/// against 53.3 / 62.8 / 80.6; q/o 896x896 17.6 / 21.8 / 33.3 against
/// 31.7 / 22.3 / 24.6; SmolLM2's 1536x576 17.3 / 22.3 / 32.8 against
/// 18.6 / 22.9 / 24.8. Splitting the weights costs the same at any chunk
/// size, so a short chunk's GEMM does not repay it.
pub const TF32X3_MIN_TOKENS: usize = 256;

/// Weights from which `by_size` takes 3xTF32 for a matrix with fewer rows
/// than columns (run split-K: `gpu::gemm::TF32X3_K_SLICES` slices side by
/// side, the engine's `k_split_partials`). Op profile on an H100, the Qwen
/// FFN down projection (896x4864, 4.4 M weights), SGEMM against one 3xTF32
/// GEMM against split-K 3xTF32 at 128 / 256 / 512 tokens: 48.3 / 73.0 /
/// 113.0 against 69.6 / 80.6 / 117.6 against 61.9 / 71.9 / 93.4 µs. With
/// every wide matrix split-K (`tf32x3`), SmolLM2-shaped prefill (down
/// 576x1536, 0.9 M weights; k/v 192x576) was slower than with them on
/// SGEMM: 70,626 against 71,782 tok/s at 512 tokens, where the Qwen-shaped
/// file gained (48,464 against 46,823).
pub const TF32X3_WIDE_MIN_WEIGHTS: usize = 1 << 21;

impl PrefillGemm {
    /// The mode a variable's value names: `None` or "by_size", "f32",
    /// "tf32x3". Any other value is INVALID_CONFIG, the code
    /// `config::check_engine_env` gives the daemon for it, so `generate` and
    /// `bench` refuse it the same way.
    pub fn parse(value: Option<&str>) -> Result<PrefillGemm> {
        match value {
            None | Some("by_size") => Ok(PrefillGemm::BySize),
            Some("f32") => Ok(PrefillGemm::F32),
            Some("tf32x3") => Ok(PrefillGemm::Tf32x3),
            Some(other) => Err(WorkerError::InvalidConfig {
                message: format!(
                    "WORKER_ORCD_PREFILL_GEMM is \"{other}\"; use \"by_size\" (the default), \"f32\" or \"tf32x3\", or unset it"
                ),
            }),
        }
    }

    /// Whether a `rows` x `cols` matrix times a chunk of `n` tokens runs as
    /// 3xTF32. `by_size`: chunks of at least [`TF32X3_MIN_TOKENS`], and
    /// matrices with at least as many rows as columns or, with fewer (a long
    /// reduction over few rows, run split-K where its columns divide into
    /// the slices, `gpu::gemm::tf32x3_k_split_fits`, else as one GEMM), at
    /// least [`TF32X3_WIDE_MIN_WEIGHTS`] weights. A function of the matrix and the
    /// chunk alone, and a prompt's chunks depend only on the request
    /// (WORKER-4710), so the choice never depends on other sequences.
    pub fn tf32x3_for(self, rows: usize, cols: usize, n: usize) -> bool {
        match self {
            PrefillGemm::F32 => false,
            PrefillGemm::Tf32x3 => true,
            PrefillGemm::BySize => {
                n >= TF32X3_MIN_TOKENS && (rows >= cols || rows * cols >= TF32X3_WIDE_MIN_WEIGHTS)
            }
        }
    }

    /// The variable's value for this mode (build info, numerics version).
    pub fn describe(self) -> &'static str {
        match self {
            PrefillGemm::F32 => "f32",
            PrefillGemm::Tf32x3 => "tf32x3",
            PrefillGemm::BySize => "by_size",
        }
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
    fn the_prefill_gemm_mode_is_f32_tf32x3_by_size_or_a_config_error() {
        assert_eq!(PrefillGemm::parse(None).unwrap(), PrefillGemm::BySize);
        assert_eq!(PrefillGemm::parse(Some("f32")).unwrap(), PrefillGemm::F32);
        assert_eq!(
            PrefillGemm::parse(Some("tf32x3")).unwrap(),
            PrefillGemm::Tf32x3
        );
        assert_eq!(
            PrefillGemm::parse(Some("by_size")).unwrap(),
            PrefillGemm::BySize
        );
        for mode in [PrefillGemm::F32, PrefillGemm::Tf32x3, PrefillGemm::BySize] {
            assert_eq!(PrefillGemm::parse(Some(mode.describe())).unwrap(), mode);
        }
        for bad in ["", "fast", "TF32X3", "f32 ", "bysize"] {
            let e = PrefillGemm::parse(Some(bad)).unwrap_err();
            assert_eq!(e.code(), "INVALID_CONFIG", "{bad:?}: {e}");
        }
    }

    #[test]
    fn by_size_takes_tall_and_large_wide_matrices_in_long_chunks_only() {
        let by_size = PrefillGemm::BySize;
        // Qwen2.5-0.5B: gate/up 4864x896, q/o 896x896 and down 896x4864
        // take 3xTF32, k/v 128x896 do not; SmolLM2's down 576x1536 does not.
        assert!(by_size.tf32x3_for(4864, 896, 512));
        assert!(by_size.tf32x3_for(896, 896, 512));
        assert!(by_size.tf32x3_for(896, 4864, 512));
        assert!(!by_size.tf32x3_for(128, 896, 512));
        assert!(!by_size.tf32x3_for(576, 1536, 512));
        // The edges: a square matrix and a chunk of exactly the threshold
        // split; one token fewer does not; a wide matrix at exactly the
        // weight threshold does, one row fewer does not.
        assert!(by_size.tf32x3_for(896, 896, TF32X3_MIN_TOKENS));
        assert!(!by_size.tf32x3_for(896, 896, TF32X3_MIN_TOKENS - 1));
        assert!(!by_size.tf32x3_for(896, 4864, TF32X3_MIN_TOKENS - 1));
        let cols = 4096;
        let rows = TF32X3_WIDE_MIN_WEIGHTS / cols;
        assert!(by_size.tf32x3_for(rows, cols, TF32X3_MIN_TOKENS));
        assert!(!by_size.tf32x3_for(rows - 1, cols, TF32X3_MIN_TOKENS));
        assert!(PrefillGemm::Tf32x3.tf32x3_for(128, 896, 8));
        assert!(!PrefillGemm::F32.tf32x3_for(4864, 896, 512));
    }
}
