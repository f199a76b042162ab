//! Launch shapes of the single-vector decode mat-vec kernels (KERNEL-MATVEC,
//! WORKER-4700, issue 5 point 10).
//!
//! Why a module of its own: the staged variant's shared-memory size must
//! agree byte for byte with the layout in cuda/matvec.cu (`matvec_st_impl`)
//! and the per-format CHUNK constants in cuda/common.cuh; keeping the
//! arithmetic here, next to a test that reads those constants back from the
//! kernel source, makes a drift a CPU test failure, not a GPU fault.

use cudarc::driver::LaunchConfig;

use super::ops::blocks;
use crate::model::gguf::GgmlType;

/// Warps per block and most blocks of the staged decode mat-vec (`_st` in
/// cuda/matvec.cu): warps walk rows with a grid stride, so the vector is
/// staged into shared memory once per block rather than once per 4 rows.
/// ST_WARPS * 32 must not exceed the kernels' `__launch_bounds__(256, ..)`.
const ST_WARPS: usize = 8;
const ST_MAX_BLOCKS: usize = 1024;
/// Dynamic shared memory a launch may use without an opt-in attribute.
const ST_SMEM_MAX: usize = 48 * 1024;

/// Bytes of one 1024-element chunk (32 runs) of format `t`: a warp's staging
/// unit (Q::CHUNK in cuda/common.cuh).
pub fn chunk_bytes(t: GgmlType) -> usize {
    1024 / t.block_size() * t.type_size()
}

/// Shared bytes of a staged single-vector mat-vec staging `vectors` cols-long
/// vectors (x, and the norm weight when fused); None when over the default
/// limit, and the plain kernel runs instead. Must match matvec_st_impl: XPAD
/// = 36 floats per 32-element run, CHUNK + 8 bytes per warp.
pub fn staged_smem(t: GgmlType, cols: usize, vectors: usize) -> Option<usize> {
    let chunk = chunk_bytes(t);
    let bytes = 4 * (cols / 32) * 36 * vectors + ST_WARPS * (chunk + 8);
    (bytes <= ST_SMEM_MAX).then_some(bytes)
}

/// Warps per block of the batched staged kernels (`_bst`, `_gu_bst`,
/// `_qkv_bst`: 128 threads in cuda/matvec.cu).
const BST_WARPS: usize = 4;
/// Most token vectors one batched staged block holds (BST_NT in cuda/matvec.cu).
const BST_NT: usize = 8;
/// Blocks per SM a batched staged launch aims for. Its warps walk the rows
/// with a grid stride, so each block stages its vectors once however many
/// rows it serves: a few blocks per SM keep the card's loads in flight
/// while the vectors are staged a few times per SM rather than once per
/// 16 rows (the LM head at 4 rows once staged as many vector bytes as it
/// read weight bytes).
pub const BST_BLOCKS_PER_SM: usize = 4;

/// Vectors per block and launch shape of a batched staged mat-vec over
/// `batch` vectors of `cols` and `rows` rows (the norm weight staged too
/// when `normed`) on a card of `multiprocessors` SMs: as many vectors as
/// the default shared memory holds, up to BST_NT, then blocks along y
/// walking the rows, BST_BLOCKS_PER_SM per SM spread over the token groups
/// and never more than one per 4 rows (one row per warp). None when not
/// even one vector fits (the `_b8` kernels run then). Must match
/// `bst_block` in cuda/matvec.cu. Which warp takes a row changes no bit.
pub(super) fn batched_launch(
    t: GgmlType,
    rows: usize,
    cols: usize,
    batch: usize,
    normed: bool,
    multiprocessors: i32,
) -> Option<(usize, LaunchConfig)> {
    let chunk = chunk_bytes(t);
    let per_vec = 4 * (cols / 32) * 36;
    let fixed = per_vec * usize::from(normed) + BST_WARPS * (chunk + 8);
    let per = (ST_SMEM_MAX.checked_sub(fixed)? / per_vec.max(1))
        .min(BST_NT)
        .min(batch);
    if per == 0 || rows == 0 {
        return None;
    }
    let groups = batch.div_ceil(per);
    let sms = usize::try_from(multiprocessors).unwrap_or(1).max(1);
    let walkers = (BST_BLOCKS_PER_SM * sms / groups)
        .clamp(1, rows.div_ceil(BST_WARPS))
        .min(65_535);
    Some((
        per,
        LaunchConfig {
            grid_dim: (u32::try_from(groups).ok()?, walkers as u32, 1),
            block_dim: (32 * BST_WARPS as u32, 1, 1),
            shared_mem_bytes: (fixed + per * per_vec) as u32,
        },
    ))
}

/// Shape of the token-on-lane batched kernels, defined once in
/// `kernel_units` (the build script compiles the kernels with it too).
pub use super::kernel_units::BT_SHAPE;
/// Tokens per block of the `_bt` kernels: one per lane of a half-warp
/// (BT_TOKENS in cuda/matvec_rows.cu).
const BT_TOKENS: usize = 16;
/// Fewest rows the `_bt` kernels take: below it the staged `_bst` kernels,
/// walking the rows on a grid stride, are faster (same bits either way).
/// Measured on an H100 (2026-12-06, Qwen-shaped Q4_K_M, aggregate decode
/// tok/s of 128 + 128 tokens a sequence, `_bt` from 8 rows against `_bst`
/// up to 16): 8 rows 2,389 / 3,343, 10 rows 2,829 / 3,122, 12 rows 3,275 /
/// 3,652, 16 rows 4,136 / 4,613. Rows 17 to 31 are not yet measured.
pub const BT_MIN_BATCH: usize = 17;

/// Dynamic shared bytes of a `_bt` launch for format `t`: the staged chunk
/// rows, then the dequantized runs (reused for the accumulators).
pub fn rows_bt_smem(t: GgmlType) -> usize {
    let (rows, _, pad) = BT_SHAPE;
    let chunk = chunk_bytes(t);
    4 * rows * (chunk / 4 + 2) + 4 * 32 * rows * pad
}

/// Launch shape of a `_bt` kernel over `rows` output rows (of each matrix
/// for gate/up) and `batch` token rows; None when the grid would not fit.
pub(super) fn rows_bt_launch(
    t: GgmlType,
    rows: usize,
    batch: usize,
    gate_up: bool,
) -> Option<LaunchConfig> {
    let (per_block, warps, _) = BT_SHAPE;
    let per_block = if gate_up { per_block / 2 } else { per_block };
    let (row_blocks, groups) = (rows.div_ceil(per_block), batch.div_ceil(BT_TOKENS));
    if rows == 0 || batch == 0 || row_blocks > i32::MAX as usize || groups > 65_535 {
        return None;
    }
    Some(LaunchConfig {
        grid_dim: (row_blocks as u32, groups as u32, 1),
        block_dim: (32 * warps as u32, 1, 1),
        shared_mem_bytes: rows_bt_smem(t) as u32,
    })
}

/// Shape of the register-tiled batched kernels, defined once in
/// `kernel_units` (TL_ROWS, TL_TOKENS, TL_PAD in cuda/matvec_tiles.cu).
pub use super::kernel_units::TL_SHAPE;
/// Threads per block of the `_tl` kernels (TL_THREADS in cuda/matvec_tiles.cu).
const TL_THREADS: u32 = 256;
/// Fewest rows the `_tl` kernels take: their blocks hold 32 tokens, so below
/// it most of a block's arithmetic would be for absent tokens (same bits
/// either way).
pub const TL_MIN_BATCH: usize = 32;

/// Whether a `_tl` launch over `rows` rows (of each matrix for gate/up) and
/// `batch` token rows pays on a GPU of `multiprocessors` SMs: only when its
/// row blocks give every SM one. Each `_tl` row block walks the whole row,
/// so fewer leave SMs idle. Measured on an H100 (132 SMs,
/// Qwen shapes, f43efe1), `_tl` against `_bt`: the LM head at 64 rows
/// 1,534 / 2,005 us and gate/up 99.6 / 127.7 us (18,992 and 1,216 blocks);
/// down q4_K at 32 rows 59.3 / 40.5 us and q at 32 rows 16.5 / 10.9 us
/// (56 blocks). Same bits either way.
pub(super) fn rows_tl_pays(rows: usize, batch: usize, gate_up: bool, multiprocessors: i32) -> bool {
    let (per_block, tokens, _) = TL_SHAPE;
    let per_block = if gate_up { per_block / 2 } else { per_block };
    let blocks = rows.div_ceil(per_block) as u64 * batch.div_ceil(tokens) as u64;
    blocks >= u64::try_from(multiprocessors).unwrap_or(u64::MAX)
}

/// Blocks per SM a `_tl` launch keeps resident: two fit
/// (`__launch_bounds__(256, 2)`, about 98 KB of shared memory each), and
/// each walks row blocks on a grid stride, so its copies run on from one
/// row block into the next.
const TL_BLOCKS_PER_SM: usize = 2;

/// Dynamic shared bytes of a `_tl` launch for format `t`: TL_ROWS weight
/// rows and two buffers of TL_TOKENS token rows, each row 8 runs of TL_PAD
/// floats plus 4, then two raw buffers of TL_ROWS rows of a quarter chunk's
/// words plus 2 (`tl_raw_words` in cuda/matvec_tiles.cu). About 98 KB for
/// a K-quant, so two blocks share an SM of 228 KB (sm_90).
pub fn rows_tl_smem(t: GgmlType) -> usize {
    let (rows, tokens, pad) = TL_SHAPE;
    let chunk = chunk_bytes(t);
    4 * (rows + 2 * tokens) * (8 * pad + 4) + 2 * rows * 4 * (chunk / 16 + 2)
}

/// Launch shape of a `_tl` kernel over `rows` output rows (of each matrix
/// for gate/up) and `batch` token rows on a card of `multiprocessors` SMs:
/// gridDim.y = token blocks, gridDim.x = blocks walking the row blocks,
/// TL_BLOCKS_PER_SM per SM spread over the token blocks, never more than
/// there are row blocks; None when the grid would not fit. Which block
/// takes a row block changes no bit.
pub(super) fn rows_tl_launch(
    t: GgmlType,
    rows: usize,
    batch: usize,
    gate_up: bool,
    multiprocessors: i32,
) -> Option<LaunchConfig> {
    let (per_block, tokens, _) = TL_SHAPE;
    let per_block = if gate_up { per_block / 2 } else { per_block };
    let (row_blocks, groups) = (rows.div_ceil(per_block), batch.div_ceil(tokens));
    if rows == 0 || batch == 0 || row_blocks > i32::MAX as usize || groups > 65_535 {
        return None;
    }
    let sms = usize::try_from(multiprocessors).unwrap_or(1).max(1);
    let walkers = (TL_BLOCKS_PER_SM * sms)
        .div_ceil(groups)
        .clamp(1, row_blocks);
    Some(LaunchConfig {
        grid_dim: (walkers as u32, groups as u32, 1),
        block_dim: (TL_THREADS, 1, 1),
        shared_mem_bytes: rows_tl_smem(t) as u32,
    })
}

/// Shape of the tensor-core decode mat-vecs, defined once in `kernel_units`
/// (MM_ROWS, MM_WARPS, MM_TOKENS, MM_PAD, MM_TILES in cuda/matvec_mma.cu).
pub use super::kernel_units::MM_SHAPE;

/// Dynamic shared bytes of a `_mm` launch for format `t` with `tiles` m16
/// tiles per block: 16 x tiles staged half-chunk rows of CHUNK / 8 + 2
/// words, then one dequantized run of 16 x tiles rows of MM_PAD floats per
/// warp (reused for the sums, 16 x tiles x MM_TOKENS floats: never more).
pub fn rows_mm_smem_for(t: GgmlType, tiles: usize) -> usize {
    let (rows, warps, tokens, pad, _) = MM_SHAPE;
    let half_chunk = 512 / t.block_size() * t.type_size();
    let staged = rows * tiles;
    let body = 4 * staged * (half_chunk / 4 + 2) + 4 * warps * staged * pad;
    body.max(4 * staged * tokens)
}

/// The most dynamic shared bytes a `_mm` launch of format `t` asks for
/// (granted once at open).
pub fn rows_mm_smem(t: GgmlType) -> usize {
    rows_mm_smem_for(t, MM_SHAPE.4)
}

/// m16 tiles per `_mm` block for a matrix of `rows` rows (of each matrix
/// for gate/up). More tiles let one block's vector loads and splits serve
/// more weight rows (the LM head's 64-token step reads its vectors once
/// per 64 rows instead of once per 16); fewer keep a small matrix spread
/// over the card. The choice depends on the shape alone and never changes
/// a bit: which warp sums which runs depends on the columns only.
pub fn rows_mm_tiles(rows: usize, gate_up: bool) -> usize {
    let rows = if gate_up { 2 * rows } else { rows };
    match rows {
        r if r >= 32_768 => 4,
        r if r >= 8_192 => 2,
        _ => 1,
    }
}

/// Launch shape of a `_mm` kernel over `rows` output rows (of each matrix
/// for gate/up) and `batch` token rows, with its m16 tiles per block
/// (the kernel's `tiles` argument); None when the grid would not fit.
/// Token groups run along x, so a row block's groups run side by side.
pub(super) fn rows_mm_launch(
    t: GgmlType,
    rows: usize,
    batch: usize,
    gate_up: bool,
) -> Option<(i32, LaunchConfig)> {
    rows_mm_launch_tiles(t, rows, batch, gate_up, rows_mm_tiles(rows, gate_up))
}

/// [`rows_mm_launch`] with `tiles` m16 tiles per block (tests run every
/// choice to show the bits do not depend on it).
pub(super) fn rows_mm_launch_tiles(
    t: GgmlType,
    rows: usize,
    batch: usize,
    gate_up: bool,
    tiles: usize,
) -> Option<(i32, LaunchConfig)> {
    let (tile_rows, warps, tokens, _, most) = MM_SHAPE;
    if !matches!(tiles, 1 | 2 | 4) || tiles > most {
        return None;
    }
    let per_block = tile_rows * tiles / if gate_up { 2 } else { 1 };
    let (row_blocks, groups) = (rows.div_ceil(per_block), batch.div_ceil(tokens));
    if rows == 0 || batch == 0 || row_blocks > 65_535 || groups > i32::MAX as usize {
        return None;
    }
    let cfg = LaunchConfig {
        grid_dim: (groups as u32, row_blocks as u32, 1),
        block_dim: (32 * warps as u32, 1, 1),
        shared_mem_bytes: rows_mm_smem_for(t, tiles) as u32,
    };
    Some((tiles as i32, cfg))
}

/// Kernel-name suffix and launch shape of a single-vector decode mat-vec:
/// the staged variant when its shared memory fits, else (and for
/// `vectors == 0`) the plain one.
pub(super) fn decode_launch(
    t: GgmlType,
    rows: usize,
    cols: usize,
    vectors: usize,
) -> (&'static str, LaunchConfig) {
    match staged_smem(t, cols, vectors).filter(|_| vectors > 0) {
        Some(smem) => (
            "_st",
            LaunchConfig {
                grid_dim: (blocks(rows, ST_WARPS).min(ST_MAX_BLOCKS as u32), 1, 1),
                block_dim: (32 * ST_WARPS as u32, 1, 1),
                shared_mem_bytes: smem as u32,
            },
        ),
        None => (
            "",
            LaunchConfig {
                grid_dim: (blocks(rows, 4), 1, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a 132-SM card (H100, H200) at Qwen shapes the `_tl` kernels serve
    /// the LM head and gate/up from 32 rows and the 896-row matrices from
    /// 65 rows (three groups of 32 tokens): only grids of a block per SM.
    #[test]
    fn tiled_rows_serve_only_grids_that_fill_the_card() {
        let pays =
            |rows: usize, batch: usize, gate_up: bool| rows_tl_pays(rows, batch, gate_up, 132);
        for batch in [32, 64] {
            assert!(pays(151_936, batch, false), "LM head x{batch}");
            assert!(pays(4864, batch, true), "gate/up x{batch}");
            assert!(!pays(896, batch, false), "q/o/down x{batch}");
            assert!(!pays(128, batch, false), "k/v x{batch}");
        }
        assert!(!pays(896, 64, false) && pays(896, 65, false));
        // A card of fewer SMs fills with fewer blocks.
        assert!(rows_tl_pays(896, 64, false, 112) && !rows_tl_pays(896, 64, false, 113));
    }

    /// On a 132-SM card (H100, H200) at Qwen decode shapes the batched
    /// staged kernels get four blocks per SM, so each stages its vectors
    /// once for hundreds of rows; small matrices get one block per 4 rows.
    #[test]
    fn batched_staged_grids_fill_the_card_once() {
        let shape = |t: GgmlType, rows: usize, cols: usize, batch: usize| {
            let normed = cols == 896; // the FFN down product takes no norm
            let (per, cfg) = batched_launch(t, rows, cols, batch, normed, 132).expect("fits");
            (per, cfg.grid_dim.0, cfg.grid_dim.1)
        };
        assert_eq!(
            shape(GgmlType::Q8_0, 151_936, 896, 4),
            (4, 1, 528),
            "LM head x4"
        );
        assert_eq!(
            shape(GgmlType::Q5_0, 4864, 896, 7),
            (7, 1, 528),
            "gate/up x7"
        );
        assert_eq!(shape(GgmlType::Q5_0, 128, 896, 2), (2, 1, 32), "k/v x2");
        // FFN down is 4864 wide: two vectors fit a block, four groups of 7.
        assert_eq!(shape(GgmlType::Q6K, 896, 4864, 7), (2, 4, 132), "down x7");
        // A card of one SM still gets a block per group.
        let (_, cfg) = batched_launch(GgmlType::Q4_0, 67, 512, 3, true, 1).unwrap();
        assert_eq!(cfg.grid_dim, (1, 4, 1));
        let (_, cfg) = batched_launch(GgmlType::Q6K, 896, 4864, 7, false, 1).unwrap();
        assert_eq!(cfg.grid_dim, (4, 1, 1));
    }

    /// Every format's CHUNK in cuda/common.cuh is the byte size of 1024
    /// elements that `staged_smem` assumes, and the Qwen decode shapes fit.
    #[test]
    fn chunk_constants_match_the_kernel_source() {
        let src = include_str!("../../cuda/common.cuh");
        for (name, t) in [
            ("QF32", GgmlType::F32),
            ("QF16", GgmlType::F16),
            ("QBF16", GgmlType::BF16),
            ("Q4_0", GgmlType::Q4_0),
            ("Q4_1", GgmlType::Q4_1),
            ("Q5_0", GgmlType::Q5_0),
            ("Q5_1", GgmlType::Q5_1),
            ("Q8_0", GgmlType::Q8_0),
            ("Q4K", GgmlType::Q4K),
            ("Q5K", GgmlType::Q5K),
            ("Q6K", GgmlType::Q6K),
        ] {
            let at = src
                .find(&format!("struct {name} {{"))
                .unwrap_or_else(|| panic!("struct {name} not in common.cuh"));
            let rest = &src[at..];
            let k = rest.find("CHUNK = ").expect("CHUNK constant") + "CHUNK = ".len();
            let end = rest[k..].find(';').expect("CHUNK ends with ;");
            let chunk: usize = rest[k..k + end].trim().parse().expect("CHUNK is a number");
            assert_eq!(chunk, 1024 / t.block_size() * t.type_size(), "{name}");
        }
        // Qwen2.5-0.5B decode shapes take the staged path; a 4864-wide f32 row
        // with a fused norm does not fit and falls back to the plain kernel.
        assert_eq!(
            staged_smem(GgmlType::Q8_0, 896, 1),
            Some(4 * 28 * 36 + 8 * 1096)
        );
        assert!(staged_smem(GgmlType::Q6K, 4864, 1).is_some());
        assert!(staged_smem(GgmlType::Q5_0, 896, 2).is_some());
        assert!(staged_smem(GgmlType::F32, 4864, 2).is_none());
        assert_eq!(decode_launch(GgmlType::Q8_0, 151_936, 896, 1).0, "_st");
        assert_eq!(decode_launch(GgmlType::Q8_0, 151_936, 896, 0).0, "");
        let cfg = decode_launch(GgmlType::Q8_0, 151_936, 896, 1).1;
        assert_eq!((cfg.grid_dim.0, cfg.block_dim.0), (1024, 256));
    }
}
