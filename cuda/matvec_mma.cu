// matvec_mma.cu: decode mat-vecs on the tensor cores (`matvec_<fmt>_mm`,
// `matvec_<fmt>_gu_mm`; KERNEL-MATVEC, WORKER-4710; issue 11 point 7, issue
// 12 point 1). The launcher is src/gpu/tensor_rows.rs.
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
// Block: MM_WARPS warps over MM_ROWS weight rows (gate/up: MM_ROWS / 2 of
// each) and MM_TOKENS token rows (gridDim.y groups of them). The block
// stages a 1024-element chunk of its rows with asynchronous copies, then
// warp w dequantizes runs 2w, 2w + 1 (first pass) and 16 + 2w, 17 + 2w
// (second pass) of the chunk into its own shared tile, one lane per (row,
// run), and multiplies them into its accumulators: four MMA steps per run,
// each for every 8-token tile in use. At the end the warps' accumulators
// are added in warp order through shared memory (a fixed order: no atomics).
// MMA fragment layout (PTX ISA, m16n8k8 .tf32): lane = 4g + t holds
// A(g, t), A(g + 8, t), A(g, t + 4), A(g + 8, t + 4); B(t, g), B(t + 4, g);
// C(g, 2t), C(g, 2t + 1), C(g + 8, 2t), C(g + 8, 2t + 1).
// MM_ROWS, MM_WARPS, MM_TOKENS and MM_PAD come from `kernel_units::MM_SHAPE`.
// Dynamic shared memory (`launch_shape::rows_mm_smem`): MM_ROWS staged chunk
// rows of CHUNK / 4 + 2 words, then MM_WARPS x 2 tiles of MM_ROWS x MM_PAD
// floats; reused at the end for the MM_WARPS x MM_ROWS x MM_TOKENS sums.
#include "common.cuh"

static_assert(MM_ROWS == 16, "one m16 tile of rows");
static_assert(MM_WARPS == 8, "8 warps x 2 runs x 2 passes = the 32 runs of a chunk");
static_assert(MM_TOKENS % 8 == 0 && MM_TOKENS <= 64, "whole n8 tiles, at most 8");
static_assert(MM_PAD % 4 == 0 && MM_PAD >= 32, "float4-aligned runs");

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
                                             const float* __restrict__ nw, const float* __restrict__ scale) {
    extern __shared__ __align__(16) float smem[];
    constexpr int RPM = MM_ROWS / NM;      // rows of each matrix
    constexpr int NT = MM_TOKENS / 8;      // 8-token tiles per block
    constexpr int WBW = Q::CHUNK / 4 + 2;  // words of one staged chunk row
    u32* wb = (u32*)smem;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    float* tiles = smem + MM_ROWS * WBW + warp * (2 * MM_ROWS * MM_PAD);
    const int r0 = blockIdx.x * RPM;
    const int tok0 = blockIdx.y * MM_TOKENS;
    const int left = (batch - tok0 + 7) >> 3;
    const int ntiles = left < NT ? left : NT;
    const int nsub = cols >> 5, nch = (nsub + 31) >> 5;
    float acc[NT][4];
#pragma unroll
    for (int n = 0; n < NT; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    for (int c = 0; c < nch; c++) {
        __syncthreads();  // every warp is done with the previous chunk's bytes
        // Stage chunk c of the block's rows (staging row j: matrix j / RPM,
        // row r0 + j % RPM) as whole words from the word holding its first
        // byte (as matvec_rows.cu does).
        for (int i = threadIdx.x; i < MM_ROWS * WBW; i += blockDim.x) {
            const int j = i / WBW, k = i - j * WBW;
            const int r = r0 + j % RPM;
            bool copied = false;
            if (r < rows) {
                const u8* base = (j < RPM ? W0 : W1) + (u64)r * row_bytes + (u64)c * Q::CHUNK;
                const u64 left = row_bytes - (u64)c * Q::CHUNK;
                const int nb = left < (u64)Q::CHUNK ? (int)left : Q::CHUNK;
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
            const int first = pass * 16 + warp * 2;  // this warp's two runs in the chunk
            if (c * 32 + first >= nsub) break;       // warp-uniform: no run of the pair exists
            {
                // Lane (h, j): staging row j's run first + h, into tile h.
                const int h = lane >> 4, j = lane & 15, l = first + h, s = c * 32 + l;
                float4* d = (float4*)(tiles + h * (MM_ROWS * MM_PAD) + j * MM_PAD);
                if (s < nsub && r0 + j % RPM < rows) {
                    const u8* base = (j < RPM ? W0 : W1) + (u64)(r0 + j % RPM) * row_bytes + (u64)c * Q::CHUNK;
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
                    for (int i = 0; i < 8; i++) d[i] = make_float4(w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]);
                } else {
#pragma unroll
                    for (int i = 0; i < 8; i++) d[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                }
            }
            __syncwarp();
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int s = c * 32 + first + h;
                if (s >= nsub) break;  // warp-uniform
                const float* T = tiles + h * (MM_ROWS * MM_PAD);
#pragma unroll
                for (int ks = 0; ks < 4; ks++) {
                    const int k = ks * 8 + t4;
                    const float a[4] = {T[g * MM_PAD + k], T[(g + 8) * MM_PAD + k], T[g * MM_PAD + k + 4],
                                        T[(g + 8) * MM_PAD + k + 4]};
                    float ab[4], as[4];
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        ab[i] = to_tf32(a[i]);
                        as[i] = to_tf32(a[i] - ab[i]);
                    }
#pragma unroll
                    for (int n = 0; n < NT; n++) {
                        if (n >= ntiles) break;  // warp-uniform
                        const int tok = tok0 + n * 8 + g;
                        float v[2] = {0.0f, 0.0f};
                        if (tok < batch) {
                            const float* xv = x + (u64)tok * cols + (u64)s * 32 + k;
                            v[0] = __ldg(xv);
                            v[1] = __ldg(xv + 4);
                        }
                        const float vb[2] = {to_tf32(v[0]), to_tf32(v[1])};
                        const float vs[2] = {to_tf32(v[0] - vb[0]), to_tf32(v[1] - vb[1])};
                        mma_tf32(acc[n], as, vb);
                        mma_tf32(acc[n], ab, vs);
                        mma_tf32(acc[n], ab, vb);
                    }
                }
            }
            __syncwarp();  // the tiles are rewritten by the next pass
        }
    }
    __syncthreads();
    // The warps' sums, [warp][row][token], added in warp order.
    float* red = smem;
#pragma unroll
    for (int n = 0; n < NT; n++) {
        const int col = n * 8 + 2 * t4;
        red[(warp * MM_ROWS + g) * MM_TOKENS + col] = acc[n][0];
        red[(warp * MM_ROWS + g) * MM_TOKENS + col + 1] = acc[n][1];
        red[(warp * MM_ROWS + g + 8) * MM_TOKENS + col] = acc[n][2];
        red[(warp * MM_ROWS + g + 8) * MM_TOKENS + col + 1] = acc[n][3];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < RPM * MM_TOKENS; i += blockDim.x) {
        const int j = i / MM_TOKENS, col = i - j * MM_TOKENS;
        const int r = r0 + j, tok = tok0 + col;
        if (r >= rows || tok >= batch) continue;
        float a = red[j * MM_TOKENS + col];
#pragma unroll
        for (int w = 1; w < MM_WARPS; w++) a += red[(w * MM_ROWS + j) * MM_TOKENS + col];
        if (NM == 1) {
            if (nw) a *= scale[tok];
            if (bias) a += bias[r];
            float* yt = y + (u64)tok * rows + r;
            if (accumulate) a += *yt;
            *yt = a;
        } else {
            float u = red[(j + RPM) * MM_TOKENS + col];
#pragma unroll
            for (int w = 1; w < MM_WARPS; w++) u += red[(w * MM_ROWS + j + RPM) * MM_TOKENS + col];
            const float gs = a * scale[tok];
            y[(u64)tok * rows + r] = gs / (1.0f + expf(-gs)) * (u * scale[tok]);
        }
    }
}

#define MATVEC_MMA(name, Q)                                                                        \
    extern "C" __global__ void __launch_bounds__(MM_WARPS * 32)                                    \
        name##_mm(const u8* W, u64 row_bytes, const float* x, const float* bias, float* y, int rows, \
                  int cols, int accumulate, int batch, const float* nw, const float* scale) {      \
        grid_dependency_sync();                                                                    \
        rows_mm_impl<Q, 1>(W, W, row_bytes, x, bias, y, rows, cols, accumulate, batch, nw, scale);   \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(MM_WARPS * 32)                                    \
        name##_gu_mm(const u8* Wg, const u8* Wu, u64 row_bytes, const float* x, const float* nw,    \
                     const float* scale, float* out, int rows, int cols, int batch) {              \
        grid_dependency_sync();                                                                    \
        rows_mm_impl<Q, 2>(Wg, Wu, row_bytes, x, nullptr, out, rows, cols, 0, batch, nw, scale);   \
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
