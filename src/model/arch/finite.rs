//! A sampled check that a model's weights are numbers (issue 13 point 5):
//! a tensor holding NaN or ±Inf (a corrupt file, a broken conversion) would
//! load and then serve NaN logits, which sample as token 0 or garbage with no
//! error anywhere. Checking every weight would cost a full dequantization at
//! load; instead each small tensor (norms, biases: at most
//! [`WHOLE_TENSOR_ELEMENTS`]) is checked whole, and each large one at
//! [`SAMPLED_BLOCKS`] blocks spread evenly over it, first and last included.
//! A quantized block shares one scale, so a NaN or Inf scale (the usual
//! corruption) spoils its whole block and the sample sees it when that block
//! is sampled. The refusal is MODEL_LOAD_FAILED, naming the tensor.

use crate::error::{Result, WorkerError};
use crate::model::gguf::{GgufFile, GgufHeader, TensorInfo};
use crate::model::quant;

/// Tensors of at most this many elements are checked whole.
pub const WHOLE_TENSOR_ELEMENTS: u64 = 1 << 16;
/// Blocks sampled from each larger tensor.
pub const SAMPLED_BLOCKS: u64 = 64;

/// Refuse the model when a checked weight is NaN or infinite.
pub fn check_sampled(g: &GgufFile) -> Result<()> {
    let data = g.data_section();
    check_sampled_with(g, |at, buf| {
        let start = usize::try_from(at).unwrap_or(usize::MAX);
        let bytes = data.get(start..start.saturating_add(buf.len()));
        // Ranges were checked at parse time.
        let bytes = bytes
            .ok_or_else(|| WorkerError::internal("a sampled weight lies past the data section"))?;
        buf.copy_from_slice(bytes);
        Ok(())
    })
}

/// The same check where `read(offset, buf)` fills `buf` from the data
/// section at `offset`: a file read back by position (Plan) or in memory.
pub fn check_sampled_with(
    h: &GgufHeader,
    mut read: impl FnMut(u64, &mut [u8]) -> Result<()>,
) -> Result<()> {
    for t in &h.tensors {
        check_tensor(t, &mut read)?;
    }
    Ok(())
}

/// The block indices of `t` the check reads.
fn sampled_blocks(t: &TensorInfo) -> Vec<u64> {
    let block = t.dtype.block_size() as u64;
    let n_blocks = t.n_elements().div_ceil(block.max(1));
    if t.n_elements() <= WHOLE_TENSOR_ELEMENTS || n_blocks <= SAMPLED_BLOCKS {
        return (0..n_blocks).collect();
    }
    // Evenly spread, first and last included.
    (0..SAMPLED_BLOCKS)
        .map(|i| i * (n_blocks - 1) / (SAMPLED_BLOCKS - 1))
        .collect()
}

fn check_tensor(t: &TensorInfo, read: &mut impl FnMut(u64, &mut [u8]) -> Result<()>) -> Result<()> {
    let (block, size) = (t.dtype.block_size(), t.dtype.type_size());
    let mut out = vec![0f32; block];
    let mut raw = vec![0u8; size];
    for b in sampled_blocks(t) {
        read(t.offset + b * size as u64, &mut raw)?;
        quant::dequantize(t.dtype, &raw, &mut out)?;
        if let Some(i) = out.iter().position(|v| !v.is_finite()) {
            return Err(WorkerError::model_load(format!(
                "tensor {} holds a value that is not a number ({}) at element {}: the file is corrupt \
                 or was converted wrongly, and the model would answer with garbage. Nothing was loaded; \
                 re-convert or re-download the model",
                t.name,
                out[i],
                b * block as u64 + i as u64
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::GgmlType;

    /// The check on a tensor held in `bytes` (its offset is 0).
    fn check_bytes(t: &TensorInfo, bytes: &[u8]) -> Result<()> {
        check_tensor(t, &mut |at, buf| {
            buf.copy_from_slice(&bytes[at as usize..][..buf.len()]);
            Ok(())
        })
    }

    fn info(dtype: GgmlType, elements: u64) -> TensorInfo {
        TensorInfo {
            name: "blk.0.ffn_up.weight".into(),
            dims: vec![elements],
            dtype,
            offset: 0,
            n_bytes: elements / dtype.block_size() as u64 * dtype.type_size() as u64,
        }
    }

    #[test]
    fn small_tensors_are_checked_whole_and_large_ones_at_spread_blocks() {
        let small = info(GgmlType::F32, 896);
        assert_eq!(sampled_blocks(&small).len(), 896);
        let big = info(GgmlType::Q8_0, 4864 * 896);
        let b = sampled_blocks(&big);
        let n_blocks = 4864 * 896 / 32;
        assert_eq!(b.len() as u64, SAMPLED_BLOCKS);
        assert_eq!((b[0], *b.last().unwrap()), (0, n_blocks - 1));
        assert!(b.windows(2).all(|w| w[0] < w[1]), "distinct, in order");
    }

    #[test]
    fn a_nan_or_inf_in_a_checked_block_is_refused_naming_the_tensor() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut w = vec![0.5f32; 896];
            w[700] = bad;
            let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
            let e = check_bytes(&info(GgmlType::F32, 896), &bytes).unwrap_err();
            assert_eq!(e.code(), "MODEL_LOAD_FAILED");
            assert!(e.message().contains("blk.0.ffn_up.weight"), "{e}");
            assert!(e.message().contains("element 700"), "{e}");
        }
        // A quantized block whose f16 scale is NaN: the last block of a large tensor.
        let t = info(GgmlType::Q8_0, 4864 * 896);
        let mut bytes = Vec::new();
        quant::quantize(GgmlType::Q8_0, &vec![0.25f32; 4864 * 896], &mut bytes).unwrap();
        assert!(check_bytes(&t, &bytes).is_ok(), "finite weights pass");
        let last = bytes.len() - 34;
        bytes[last..last + 2].copy_from_slice(&0x7e00u16.to_le_bytes());
        let e = check_bytes(&t, &bytes).unwrap_err();
        assert!(e.message().contains("not a number"), "{e}");
    }
}
