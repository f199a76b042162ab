// dequant.cu: a GGUF block matrix dequantized to f32 for the prefill GEMM,
// and the bias add that follows it (KERNEL-GEMM-001, WORKER-4700).
// Why: prefill multiplies every weight by a chunk of up to PREFILL_CHUNK
// tokens; cuBLAS SGEMM does that near the FP32 peak, but only on f32
// operands. The weights stay quantized in VRAM (issue 5 point 3); one matrix
// at a time is expanded into a single shared transient scratch buffer, used
// by one GEMM, then overwritten by the next matrix.
// Uses the same Q::deq32 as the mat-vec kernels, so both paths see the same
// dequantized values. Pure elementwise work: no reductions, deterministic.
#include "common.cuh"

// 3xTF32 (tensor cores at about FP32 accuracy): v = big + small, big = v
// rounded to TF32 (to nearest, 10-bit mantissa), small = the remainder
// rounded to TF32. Laid along k as weights [big | small | big] and inputs
// [small | big | big] (row strides 3 * cols), one GEMM over 3 * cols sums
// big(w)·small(x) + small(w)·big(x) + big(w)·big(x); the dropped small·small
// term is below f32 rounding. dst[0], dst[cols], dst[2 * cols] get the
// weights' order, or the inputs' when `input`.
__device__ __forceinline__ void split3(float v, float* dst, int cols, bool input) {
    const float big = to_tf32(v), small = to_tf32(v - big);
    dst[0] = input ? small : big;
    dst[cols] = input ? big : small;
    dst[2 * (u64)cols] = big;
}

// One thread per 32-element run: run i (row r = i / nsub, s = i % nsub) lands
// at out + 32 i, since out is row-major [rows][cols]. A warp's 32 runs are
// one contiguous 4 KB span: each lane dequantizes its run into shared memory
// (padded to avoid bank conflicts), then the warp stores the span 128
// contiguous bytes per instruction. grid ceil(rows * nsub / 256), block 256.
// SPLIT (the 3xTF32 path): row r of out is [big | small | big], 3 * cols
// floats, with big the value rounded to TF32 and small the remainder rounded
// to TF32 (split3 below); a run's three pieces are each 128 contiguous bytes.
template <class Q, bool SPLIT>
__device__ __forceinline__ void dequant_impl(const u8* __restrict__ W, u64 row_bytes, float* __restrict__ out,
                                             int rows, int cols) {
    __shared__ float sh[8][32][33];
    const int nsub = cols >> 5;
    const u64 total = (u64)rows * nsub;
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    const u64 first = (u64)blockIdx.x * blockDim.x + (u64)wid * 32;
    if (first >= total) return;
    const u64 i = first + lane;
    if (i < total) {
        const int r = (int)(i / nsub), s = (int)(i % nsub);
        float w[32];
        Q::deq32(W + (u64)r * row_bytes, s, w);
#pragma unroll
        for (int j = 0; j < 32; j++) sh[wid][lane][j] = w[j];
    }
    __syncwarp();
    const int nrun = (int)min((u64)32, total - first);
    if (!SPLIT) {
        float* o = out + first * 32;
        for (int k = 0; k < nrun; k++) o[k * 32 + lane] = sh[wid][k][lane];
        return;
    }
    for (int k = 0; k < nrun; k++) {
        const u64 run = first + k, r = run / nsub, s = run % nsub;
        split3(sh[wid][k][lane], out + r * 3 * cols + s * 32 + lane, cols, false);
    }
}

#define DEQUANT(suffix, Q)                                                                               \
    extern "C" __global__ void dequant_##suffix(const u8* W, u64 row_bytes, float* out, int rows, int cols) { \
        grid_dependency_sync();                                                                          \
        dequant_impl<Q, false>(W, row_bytes, out, rows, cols);                                           \
    }                                                                                                    \
    extern "C" __global__ void dequant_split_##suffix(const u8* W, u64 row_bytes, float* out, int rows,     \
                                                      int cols) {                                        \
        grid_dependency_sync();                                                                          \
        dequant_impl<Q, true>(W, row_bytes, out, rows, cols);                                            \
    }
DEQUANT(f32, QF32)
DEQUANT(f16, QF16)
DEQUANT(bf16, QBF16)
DEQUANT(q4_0, Q4_0)
DEQUANT(q4_1, Q4_1)
DEQUANT(q5_0, Q5_0)
DEQUANT(q5_1, Q5_1)
DEQUANT(q8_0, Q8_0)
DEQUANT(q4_k, Q4K)
DEQUANT(q5_k, Q5K)
DEQUANT(q6_k, Q6K)

// y[t][r] += bias[r] for n token rows of `rows` outputs (the GEMM has no bias term).
// grid (ceil(rows / 256), n), block 256.
extern "C" __global__ void add_bias(float* y, const float* bias, int rows) {
    grid_dependency_sync();
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r < rows) y[(u64)blockIdx.y * rows + r] += bias[r];
}

// The inputs of a 3xTF32 GEMM: x [n][cols] to out [n][3 * cols] as
// [small | big | big] per row (split3). grid (ceil(cols / 256), n), block 256.
extern "C" __global__ void split_tf32_rows(const float* x, float* out, int cols) {
    grid_dependency_sync();
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    const u64 t = blockIdx.y;
    split3(x[t * cols + c], out + t * 3 * cols + c, cols, true);
}

// A split-K GEMM's sum: y[i] = p[0][i] + p[1][i] + ... in slice order (then
// + the old y[i] when accumulating), for `len` outputs and `parts` slices
// `len` floats apart. Fixed order, no atomics (WORKER-4710).
// grid ceil(len / 256), block 256.
extern "C" __global__ void add_parts(const float* p, float* y, int len, int parts, int accumulate) {
    grid_dependency_sync();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= len) return;
    float s = p[i];
    for (int k = 1; k < parts; k++) s += p[(u64)k * len + i];
    y[i] = accumulate ? y[i] + s : s;
}
