// matvec_rows.cu: the batched decode mat-vecs with the token rows on the
// lanes (`matvec_<fmt>_bt`, `matvec_<fmt>_gu_bt`; KERNEL-MATVEC, WORKER-4710;
// issue 11 points 5 and 7). The launcher is src/gpu/batched.rs.
//
// Why: a decode step of many sequences multiplies every weight row with
// every sequence's vector. The `_bst` kernels (matvec.cu) keep the vector in
// shared memory and read it once per weight row per token, so at 64 tokens
// they are bound by shared-memory bandwidth (the Qwen LM head took 2.6 ms).
// Here each lane holds its own token's 32-element run of the vector in
// registers, the block dequantizes each weight run once into shared memory,
// and every lane of a warp reads the same dequantized run (a broadcast), so
// one shared load feeds 32 tokens.
//
// Bits (WORKER-4710 under batching): every output (row, token) is computed as
// the `_st` kernels compute it for a lone vector. The lone kernel's lane l
// owns the runs l, l + 32, ... of a row (a run is 32 consecutive elements):
// per run p = 0, then p = fma(w'[i], x[i], p) for i = 0..31 in order, with
// w' the dequantized weight times the norm weight when normed; acc += p run
// after run; then the warp_sum butterfly (lane l with l ^ 16, then ^ 8, ^ 4,
// ^ 2, ^ 1). Here warp l owns the same runs for 32 tokens (lane = token),
// does the same chain and the same acc += p, and the butterfly is replayed
// over the 32 warps' accumulators in shared memory with the same pairs (IEEE
// addition is commutative, so a + b and b + a agree). The scale, bias and
// accumulate steps follow in the lone kernels' order.
//
// Block: BT_WARPS warps; each half-warp owns one run of a 1024-element chunk
// (run 2w + h for half h of warp w) and its 16 lanes one token each of the
// block's group of BT_TOKENS = 16, so that two blocks of 512 threads fit an
// SM and one block's loads overlap the other's arithmetic. BT_ROWS output
// rows per block (gate/up: BT_ROWS / 2 of each matrix). gridDim.x = row
// blocks, gridDim.y = token groups. BT_ROWS, BT_WARPS and BT_PAD come from
// `launch_shape::BT_SHAPE` (pasted in by `compile::translation_unit`).
// Dynamic shared memory (sized by `rows_bt_smem` there): BT_ROWS staged chunk
// rows of CHUNK / 4 + 2 words, then 32 runs x BT_ROWS dequantized runs of
// BT_PAD floats (reused at the end for the BT_ROWS x 32 x 16 accumulators).
#include "common.cuh"

#define BT_TOKENS 16
static_assert(BT_WARPS * 2 == 32, "one half-warp per run of a 1024-element chunk");
static_assert(BT_PAD % 4 == 0 && BT_PAD >= 32, "float4-aligned runs");
static_assert(BT_ROWS == BT_TOKENS, "lane i of a half-warp dequantizes staged row i");
static_assert(BT_ROWS % 2 == 0, "gate/up split");
static_assert(32 * BT_ROWS * BT_PAD >= BT_ROWS * 32 * BT_TOKENS, "accumulators fit the run buffers");

// One 4-byte copy from global to shared memory that does not hold a
// register or wait (sm_80+; a plain copy before); cp_async_wait_all waits
// for this thread's. The kernel emulator (tools/kernel-emu) holds each copy
// back until the thread's wait, as the hardware may, so a read before the
// wait sees what was there before.
__device__ __forceinline__ void cp_async4(u32* dst, const u32* src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(d), "l"(src) : "memory");
#elif defined(__CUDA_ARCH__)
    *dst = __ldg(src);
#else
    emu_cp_async4(dst, src);
#endif
}

__device__ __forceinline__ void cp_async_wait_all() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_all;\n" ::: "memory");
#elif !defined(__CUDA_ARCH__)
    emu_cp_async_wait(0);
#endif
}

// The butterfly of warp_sum over the 32 run accumulators acc[q * BT_TOKENS]
// (q = the lone kernel's lane that would hold it), the same pairs in the same
// order: level 16 adds q and q + 16, level 8 adds q and q + 8, ... The result
// is what lane 0 ends with.
__device__ __forceinline__ float bt_butterfly(const float* acc) {
    float v[16];
#pragma unroll
    for (int q = 0; q < 16; q++) v[q] = acc[q * BT_TOKENS] + acc[(q + 16) * BT_TOKENS];
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) {
#pragma unroll
        for (int q = 0; q < o; q++) v[q] = v[q] + v[q + o];
    }
    return v[0];
}

// NM = 1: y = W·x' (+ bias) (+ y); NM = 2: out = silu(Wg·x') * (Wu·x').
// x' = x, or rmsnorm(x) * nw with each token's scale from row_rms.
template <class Q, int NM>
__device__ __forceinline__ void rows_bt_impl(const u8* __restrict__ W0, const u8* __restrict__ W1, u64 row_bytes,
                                             const float* __restrict__ x, const float* __restrict__ bias,
                                             float* __restrict__ y, int rows, int cols, int accumulate, int batch,
                                             const float* __restrict__ nw, const float* __restrict__ scale) {
    extern __shared__ __align__(16) float smem[];
    constexpr int RPM = BT_ROWS / NM;      // rows of each matrix
    constexpr int WBW = Q::CHUNK / 4 + 2;  // words of one staged chunk row
    u32* wb = (u32*)smem;
    float* dq = smem + BT_ROWS * WBW;
    // l: this half-warp's run in each chunk (the lone kernel's lane);
    // t: this lane's token in the block's group (and its staged row).
    const int l = threadIdx.x >> 4, t = threadIdx.x & 15;
    const int r0 = blockIdx.x * RPM;
    const int tok = blockIdx.y * BT_TOKENS + t;
    const int nsub = cols >> 5, nch = (nsub + 31) >> 5;
    float* mine = dq + l * (BT_ROWS * BT_PAD);
    float acc[BT_ROWS];
#pragma unroll
    for (int j = 0; j < BT_ROWS; j++) acc[j] = 0.0f;
    for (int c = 0; c < nch; c++) {
        __syncthreads();  // every warp is done with the previous chunk's bytes
        // Stage chunk c of the block's rows (staging row j: matrix j / RPM,
        // row r0 + j % RPM) as whole words from the word holding its first
        // byte, by asynchronous copies: every word of the block is in flight
        // at once.
        for (int i = threadIdx.x; i < BT_ROWS * WBW; i += blockDim.x) {
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
        const int s = c * 32 + l;  // this half-warp's run (the lone kernel's lane l)
        const bool has_run = s < nsub;  // else acc stays as it is, as in the lone kernel
        if (has_run && r0 + t % RPM < rows) {
            // Lane t dequantizes staging row t's run s (as row_dot_st does).
            const u8* base = (t < RPM ? W0 : W1) + (u64)(r0 + t % RPM) * row_bytes + (u64)c * Q::CHUNK;
            float w[32];
            Q::deq32((const u8*)(wb + t * WBW) + ((u64)base & 3), l, w);
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
            float4* d = (float4*)(mine + t * BT_PAD);
#pragma unroll
            for (int i = 0; i < 8; i++) d[i] = make_float4(w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]);
        }
        __syncwarp();
        if (has_run) {
            // Row after row: one chain of 32 FMAs each (two blocks share an
            // SM, so their phases overlap; interleaving all rows' chains
            // needs more registers than two blocks leave, and was slower).
            float xr[32];
            if (tok < batch) {
                const float4* xv = (const float4*)(x + (u64)tok * cols + (u64)s * 32);
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    const float4 v = __ldg(xv + i);
                    xr[4 * i] = v.x;
                    xr[4 * i + 1] = v.y;
                    xr[4 * i + 2] = v.z;
                    xr[4 * i + 3] = v.w;
                }
            } else {
#pragma unroll
                for (int i = 0; i < 32; i++) xr[i] = 0.0f;
            }
#pragma unroll
            for (int j = 0; j < BT_ROWS; j++) {
                const float4* d = (const float4*)(mine + j * BT_PAD);
                float p = 0.0f;
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    const float4 wv = d[i];
                    p = fmaf(wv.x, xr[4 * i + 0], p);
                    p = fmaf(wv.y, xr[4 * i + 1], p);
                    p = fmaf(wv.z, xr[4 * i + 2], p);
                    p = fmaf(wv.w, xr[4 * i + 3], p);
                }
                acc[j] += p;
            }
        }
    }
    __syncthreads();
    float* red = dq;  // [BT_ROWS][32 runs][BT_TOKENS tokens]
#pragma unroll
    for (int j = 0; j < BT_ROWS; j++) red[(j * 32 + l) * BT_TOKENS + t] = acc[j];
    __syncthreads();
    if (threadIdx.x >= RPM * BT_TOKENS) return;
    const int j = threadIdx.x / BT_TOKENS, r = r0 + j;
    if (r >= rows || tok >= batch) return;
    const float* mine_acc = red + j * 32 * BT_TOKENS + t;
    if (NM == 1) {
        float a = bt_butterfly(mine_acc);
        if (nw) a *= scale[tok];
        if (bias) a += bias[r];
        float* yt = y + (u64)tok * rows + r;
        if (accumulate) a += *yt;
        *yt = a;
    } else {
        const float g = bt_butterfly(mine_acc) * scale[tok];
        const float u = bt_butterfly(mine_acc + RPM * 32 * BT_TOKENS) * scale[tok];
        y[(u64)tok * rows + r] = g / (1.0f + expf(-g)) * u;
    }
}

#define MATVEC_ROWS(name, Q)                                                                      \
    extern "C" __global__ void __launch_bounds__(BT_WARPS * 32, 2)                               \
        name##_bt(const u8* W, u64 row_bytes, const float* x, const float* bias, float* y, int rows, \
                  int cols, int accumulate, int batch, const float* nw, const float* scale) {    \
        rows_bt_impl<Q, 1>(W, W, row_bytes, x, bias, y, rows, cols, accumulate, batch, nw, scale); \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(BT_WARPS * 32, 2)                               \
        name##_gu_bt(const u8* Wg, const u8* Wu, u64 row_bytes, const float* x, const float* nw,  \
                     const float* scale, float* out, int rows, int cols, int batch) {            \
        rows_bt_impl<Q, 2>(Wg, Wu, row_bytes, x, nullptr, out, rows, cols, 0, batch, nw, scale); \
    }

MATVEC_ROWS(matvec_f32, QF32)
MATVEC_ROWS(matvec_f16, QF16)
MATVEC_ROWS(matvec_bf16, QBF16)
MATVEC_ROWS(matvec_q4_0, Q4_0)
MATVEC_ROWS(matvec_q4_1, Q4_1)
MATVEC_ROWS(matvec_q5_0, Q5_0)
MATVEC_ROWS(matvec_q5_1, Q5_1)
MATVEC_ROWS(matvec_q8_0, Q8_0)
MATVEC_ROWS(matvec_q4_k, Q4K)
MATVEC_ROWS(matvec_q5_k, Q5K)
MATVEC_ROWS(matvec_q6_k, Q6K)
