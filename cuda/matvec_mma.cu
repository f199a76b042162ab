// matvec_mma.cu: decode mat-vecs on the tensor cores (`matvec_<fmt>_mm`,
// `matvec_<fmt>_gu_mm`; KERNEL-MATVEC, WORKER-4710; issue 11 point 7, issue
// 12 point 1). The launcher is `Gpu::rows_launch` (src/gpu/batched.rs), the shape
// `launch_shape::rows_mm_launch`.
//
// Why: a decode step of 64 sequences multiplies every weight with 64
// vectors. On the FP32 pipes (matvec_rows.cu, matvec_tiles.cu) the Qwen LM
// head alone took 1.5 ms of an 8.4 ms step: the step was bound by
// arithmetic, not by reading the weights. The tensor cores do the same
// products at many times that rate.
//
// Arithmetic (3xTF32, about FP32 accuracy): every dequantized weight w
// (times the norm weight when normed) and every vector element v is split
// into a TF32 part and the TF32 rounding of its remainder, w = wb + ws,
// v = vb + vs, and each 8-element step adds ws·vb, wb·vs and wb·vb, in that
// order, into one FP32 accumulator per (row, token) with m16n8k8 TF32 MMAs
// (the dropped ws·vs is below FP32 rounding). Each output is that of its
// own row of weights and its own column of vectors only: the MMA computes
// every (row, token) element on its own, and which MMAs run, in which
// order, depends on the matrix's shape alone. So a token row gets the same
// bits alone (batch 1, the other seven columns zero) as beside 63 others
// (WORKER-4710 under batching). The result differs from the FP32 kernels'
// in the last bits; the engine uses one family or the other for a matrix,
// never both.
//
// Block: MM_WARPS warps over `tiles` (1..MM_TILES, the launcher's choice
// by matrix size; gate/up: half of them each) m16 tiles of weight rows and
// MM_TOKENS token rows (gridDim.x groups of them; gridDim.y row blocks, so
// the token groups of one row block run side by side and share its weight
// reads in L2). The block stages a 16-run half chunk of its rows with
// asynchronous copies; warp w dequantizes run w (first pass) and 8 + w
// (second pass) of it into its own shared tile, a lane per (row, run), and
// multiplies the tile into its accumulators: four MMA steps per run, each
// for every m16 tile and every 8-token tile in use. The weights' split is
// made once per MMA step and serves every token tile; the vectors' split
// once per token tile and serves every m16 tile. At the end the warps'
// accumulators are added in warp order through shared memory (a fixed
// order: no atomics). Which warp sums which runs depends on the columns
// alone, not on `tiles` or the batch, so neither changes a bit.
// MMA fragment layout (PTX ISA, m16n8k8 .tf32): lane = 4g + t holds
// A(g, t), A(g + 8, t), A(g, t + 4), A(g + 8, t + 4); B(t, g), B(t + 4, g);
// C(g, 2t), C(g, 2t + 1), C(g + 8, 2t), C(g + 8, 2t + 1). The k index is
// permuted inside each run (sums do not care which k is which as long as A
// and B agree): in MMA step ks, k = t stands for column 8t + 2ks and
// k = t + 4 for column 8t + 2ks + 1, so a lane reads two adjacent columns
// with one 8-byte load, of the tile and of the vector alike.
// MM_ROWS, MM_WARPS, MM_TOKENS, MM_PAD and MM_TILES come from
// `kernel_units::MM_SHAPE`. Dynamic shared memory (`launch_shape::rows_mm_smem`):
// 16 x tiles staged rows of CHUNK / 8 + 2 words, then MM_WARPS tiles of
// 16 x tiles x MM_PAD floats; reused at the end for the 16 x tiles x
// MM_TOKENS sums. MM_PAD = 34 keeps the 8-byte fragment loads of a
// half-warp on 32 distinct banks.
#include "common.cuh"

static_assert(MM_ROWS == 16, "one m16 tile of rows");
static_assert(MM_WARPS == 8, "8 warps x 1 run x 2 passes = the 16 runs of a half chunk");
static_assert(MM_TOKENS % 8 == 0 && MM_TOKENS <= 64, "whole n8 tiles, at most 8");
static_assert(MM_TILES == 1 || MM_TILES == 2 || MM_TILES == 4, "m16 tiles per block: 1, 2 or 4");
static_assert(MM_PAD % 2 == 0 && MM_PAD >= 32, "8-byte-aligned runs");

// c += A·B for one m16n8k8 TF32 tile (fragments as in the header).
__device__ __forceinline__ void mma_tf32(float* c, const float* a, const float* b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(__float_as_uint(a[0])), "r"(__float_as_uint(a[1])), "r"(__float_as_uint(a[2])),
          "r"(__float_as_uint(a[3])), "r"(__float_as_uint(b[0])), "r"(__float_as_uint(b[1])));
#elif defined(__CUDA_ARCH__)
    __trap();  // never launched: `Gpu::rows_mm_ready` is false below sm_80
#else
    emu_mma_tf32(c, a, b);  // the kernel emulator (tools/kernel-emu)
#endif
}

// NM = 1: y = W·x' (+ bias) (+ y); NM = 2: out = silu(Wg·x') * (Wu·x').
// x' = x, or rmsnorm(x) * nw with each token's scale from row_rms, applied
// as the FP32 batched kernels apply it (weights times nw, sum times scale).
template <class Q, int NM>
__device__ __forceinline__ void rows_mm_impl(const u8* __restrict__ W0, const u8* __restrict__ W1, u64 row_bytes,
                                             const float* __restrict__ x, const float* __restrict__ bias,
                                             float* __restrict__ y, int rows, int cols, int accumulate, int batch,
                                             int tiles, const float* __restrict__ nw, const float* __restrict__ scale) {
    extern __shared__ __align__(16) float smem[];
    constexpr int NT = MM_TOKENS / 8;      // 8-token tiles per block
    constexpr int HC = Q::CHUNK / 2;       // bytes of a half chunk (16 runs, whole blocks)
    constexpr int WBW = HC / 4 + 2;        // words of one staged half-chunk row
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    const int srows = 16 * tiles;          // staged rows: every matrix's
    const int rpm = srows / NM;            // rows of each matrix
    u32* wb = (u32*)smem;
    float* tile = smem + srows * WBW + warp * (srows * MM_PAD);
    const int r0 = blockIdx.y * rpm;
    const int tok0 = blockIdx.x * MM_TOKENS;
    const int left = (batch - tok0 + 7) >> 3;
    const int ntiles = left < NT ? left : NT;
    const int nsub = cols >> 5, nch = (nsub + 15) >> 4;
    float acc[MM_TILES][NT][4];
#pragma unroll
    for (int m = 0; m < MM_TILES; m++)
#pragma unroll
        for (int n = 0; n < NT; n++) acc[m][n][0] = acc[m][n][1] = acc[m][n][2] = acc[m][n][3] = 0.0f;
    for (int c = 0; c < nch; c++) {
        __syncthreads();  // every warp is done with the previous half chunk's bytes
        // Stage half chunk c of the block's rows (staging row j: matrix
        // j / rpm, row r0 + j % rpm) as whole words from the word holding
        // its first byte (as matvec_rows.cu does).
        for (int i = threadIdx.x; i < srows * WBW; i += blockDim.x) {
            const int j = i / WBW, k = i - j * WBW;
            const int r = r0 + j % rpm;
            bool copied = false;
            if (r < rows) {
                const u8* base = (j < rpm ? W0 : W1) + (u64)r * row_bytes + (u64)c * HC;
                const u64 rest = row_bytes - (u64)c * HC;
                const int nb = rest < (u64)HC ? (int)rest : HC;
                const int off = (int)((u64)base & 3);
                if (k < ((off + nb + 3) >> 2)) {
                    cp_async4(wb + i, (const u32*)(base - off) + k);
                    copied = true;
                }
            }
            if (!copied) wb[i] = 0u;
        }
        cp_async_wait_all();
        __syncthreads();
        for (int pass = 0; pass < 2; pass++) {
            const int l = pass * MM_WARPS + warp;  // this warp's run in the half chunk
            const int s = c * 16 + l;              // ... and in the row
            if (s >= nsub) break;                  // warp-uniform: later passes are further on
            // Lane j dequantizes staging rows j, j + 32, ... of run l.
            for (int j = lane; j < srows; j += 32) {
                const int r = r0 + j % rpm;
                float2* d = (float2*)(tile + j * MM_PAD);
                if (r < rows) {
                    const u8* base = (j < rpm ? W0 : W1) + (u64)r * row_bytes + (u64)c * HC;
                    float w[32];
                    Q::deq32((const u8*)(wb + j * WBW) + ((u64)base & 3), l, w);
                    if (nw) {
                        const float4* nv = (const float4*)(nw + (u64)s * 32);
#pragma unroll
                        for (int i = 0; i < 8; i++) {
                            const float4 n = __ldg(nv + i);
                            w[4 * i + 0] *= n.x;
                            w[4 * i + 1] *= n.y;
                            w[4 * i + 2] *= n.z;
                            w[4 * i + 3] *= n.w;
                        }
                    }
#pragma unroll
                    for (int i = 0; i < 16; i++) d[i] = make_float2(w[2 * i], w[2 * i + 1]);
                } else {
#pragma unroll
                    for (int i = 0; i < 16; i++) d[i] = make_float2(0.0f, 0.0f);
                }
            }
            __syncwarp();
#pragma unroll
            for (int ks = 0; ks < 4; ks++) {
                const int k = 8 * t4 + 2 * ks;  // this lane's two columns of the run
                float ab[MM_TILES][4], as[MM_TILES][4];
#pragma unroll
                for (int m = 0; m < MM_TILES; m++) {
                    if (m >= tiles) break;  // block-uniform
                    const float2 p = *(const float2*)(tile + (16 * m + g) * MM_PAD + k);
                    const float2 q = *(const float2*)(tile + (16 * m + g + 8) * MM_PAD + k);
                    const float a[4] = {p.x, q.x, p.y, q.y};
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        ab[m][i] = to_tf32(a[i]);
                        as[m][i] = to_tf32(a[i] - ab[m][i]);
                    }
                }
#pragma unroll
                for (int n = 0; n < NT; n++) {
                    if (n >= ntiles) break;  // block-uniform
                    const int tok = tok0 + n * 8 + g;
                    float2 v = make_float2(0.0f, 0.0f);
                    if (tok < batch) v = __ldg((const float2*)(x + (u64)tok * cols + (u64)s * 32 + k));
                    const float vb[2] = {to_tf32(v.x), to_tf32(v.y)};
                    const float vs[2] = {to_tf32(v.x - vb[0]), to_tf32(v.y - vb[1])};
#pragma unroll
                    for (int m = 0; m < MM_TILES; m++) {
                        if (m >= tiles) break;  // block-uniform
                        mma_tf32(acc[m][n], as[m], vb);
                        mma_tf32(acc[m][n], ab[m], vs);
                        mma_tf32(acc[m][n], ab[m], vb);
                    }
                }
            }
            __syncwarp();  // the tile is rewritten by the next pass
        }
    }
    __syncthreads();
    // The warps' sums, [row][token], added in warp order: warp 0 writes,
    // then each next warp adds its own.
    float* red = smem;
    for (int w = 0; w < MM_WARPS; w++) {
        if (warp == w) {
#pragma unroll
            for (int m = 0; m < MM_TILES; m++) {
                if (m >= tiles) break;
#pragma unroll
                for (int n = 0; n < NT; n++) {
                    if (n >= ntiles) break;
                    float* p0 = red + (16 * m + g) * MM_TOKENS + n * 8 + 2 * t4;
                    float* p1 = p0 + 8 * MM_TOKENS;
                    if (w == 0) {
                        p0[0] = acc[m][n][0];
                        p0[1] = acc[m][n][1];
                        p1[0] = acc[m][n][2];
                        p1[1] = acc[m][n][3];
                    } else {
                        p0[0] += acc[m][n][0];
                        p0[1] += acc[m][n][1];
                        p1[0] += acc[m][n][2];
                        p1[1] += acc[m][n][3];
                    }
                }
            }
        }
        __syncthreads();
    }
    for (int i = threadIdx.x; i < rpm * MM_TOKENS; i += blockDim.x) {
        const int j = i / MM_TOKENS, col = i - j * MM_TOKENS;
        const int r = r0 + j, tok = tok0 + col;
        if (r >= rows || tok >= batch) continue;
        float a = red[j * MM_TOKENS + col];
        if (NM == 1) {
            if (nw) a *= scale[tok];
            if (bias) a += bias[r];
            float* yt = y + (u64)tok * rows + r;
            if (accumulate) a += *yt;
            *yt = a;
        } else {
            const float u = red[(j + rpm) * MM_TOKENS + col];
            const float gs = a * scale[tok];
            y[(u64)tok * rows + r] = gs / (1.0f + expf(-gs)) * (u * scale[tok]);
        }
    }
}

#define MATVEC_MMA(name, Q)                                                                        \
    extern "C" __global__ void __launch_bounds__(MM_WARPS * 32)                                    \
        name##_mm(const u8* W, u64 row_bytes, const float* x, const float* bias, float* y, int rows, \
                  int cols, int accumulate, int batch, int tiles, const float* nw, const float* scale) { \
        grid_dependency_sync();                                                                    \
        rows_mm_impl<Q, 1>(W, W, row_bytes, x, bias, y, rows, cols, accumulate, batch, tiles, nw, scale); \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(MM_WARPS * 32)                                    \
        name##_gu_mm(const u8* Wg, const u8* Wu, u64 row_bytes, const float* x, const float* nw,    \
                     const float* scale, float* out, int rows, int cols, int batch, int tiles) {   \
        grid_dependency_sync();                                                                    \
        rows_mm_impl<Q, 2>(Wg, Wu, row_bytes, x, nullptr, out, rows, cols, 0, batch, tiles, nw, scale); \
    }

MATVEC_MMA(matvec_f32, QF32)
MATVEC_MMA(matvec_f16, QF16)
MATVEC_MMA(matvec_bf16, QBF16)
MATVEC_MMA(matvec_q4_0, Q4_0)
MATVEC_MMA(matvec_q4_1, Q4_1)
MATVEC_MMA(matvec_q5_0, Q5_0)
MATVEC_MMA(matvec_q5_1, Q5_1)
MATVEC_MMA(matvec_q8_0, Q8_0)
MATVEC_MMA(matvec_q4_k, Q4K)
MATVEC_MMA(matvec_q5_k, Q5K)
MATVEC_MMA(matvec_q6_k, Q6K)
