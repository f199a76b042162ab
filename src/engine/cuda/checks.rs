//! Load-time checks of the tensors the CUDA engine uploads, and the block
//! formats its kernels read (WORKER-4413, issue 5 points 3 and "bad input"):
//! a tensor of the wrong shape, an unsupported format or bytes outside the
//! data section is refused before any device allocation.

use crate::error::{Result, WorkerError};
use crate::model::arch::TensorRef;
use crate::model::gguf::GgmlType;

/// Block formats the mat-vec and embedding kernels read directly (for the ECP).
pub fn supported_quant() -> Vec<GgmlType> {
    vec![
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ]
}

pub(super) fn check_tensor(t: &TensorRef, rows: usize, cols: usize, data_len: usize) -> Result<()> {
    let (r, c) = t.rows_cols();
    if r != rows || c != cols {
        return Err(WorkerError::model_load(format!(
            "tensor {} has shape {r}x{c}, the CUDA engine expected {rows}x{cols}",
            t.name
        )));
    }
    if crate::gpu::ops::dtype_suffix(t.dtype).is_none()
        || t.offset.checked_add(t.n_bytes).is_none_or(|e| e > data_len)
    {
        return Err(WorkerError::model_load(format!(
            "tensor {} is unsupported or outside the data section",
            t.name
        )));
    }
    crate::gpu::ops::row_bytes(t.dtype, cols)
        .map_err(|e| WorkerError::model_load(format!("tensor {}: {}", t.name, e.message())))?;
    Ok(())
}

pub(super) fn check_f32_vec(t: &TensorRef, n: usize, data_len: usize) -> Result<()> {
    if t.dtype != GgmlType::F32 {
        return Err(WorkerError::CapabilityMismatch {
            message: format!(
                "tensor {} is {}; the CUDA engine reads norm weights and biases as f32 only",
                t.name,
                t.dtype.name()
            ),
        });
    }
    check_tensor(t, 1, n, data_len)
}
