// matvec.cu: y = W·x (+ bias) (+ y) reading GGUF blocks directly (WORKER-4700, KERNEL-MATVEC).
// Why: decode is bandwidth-bound; weights stay quantized in VRAM and are
// dequantized in registers, never copied to f32 (issue 5 point 3).
// Shape: one warp per output row; lane l takes 32-element runs l, l+32, ...
// in a fixed order, then a butterfly warp sum: bit-identical run to run.
// gridDim.y indexes independent (x, y) pairs of a batch (prefill), strides cols/rows.
#include "common.cuh"

// Optional fused RMSNorm (decode): when nw != 0 the vector is taken as
// rmsnorm(x) * nw; each warp computes the sum of squares itself (the vector
// is short, a few KB) in a fixed order, saving a launch and a round trip.
__device__ __forceinline__ float warp_rms(const float* x, int cols, float eps) {
    const int lane = threadIdx.x & 31;
    // cols % 32 == 0, so cols / 4 float4s; independent loads, in-order sum per lane.
    const float4* x4 = (const float4*)x;
    float ss = 0.0f;
#pragma unroll 4
    for (int i = lane; i < (cols >> 2); i += 32) {
        const float4 v = x4[i];
        ss = fmaf(v.x, v.x, ss);
        ss = fmaf(v.y, v.y, ss);
        ss = fmaf(v.z, v.z, ss);
        ss = fmaf(v.w, v.w, ss);
    }
    ss = warp_sum(ss);
    return 1.0f / sqrtf(ss / (float)cols + eps);
}

template <class Q>
__device__ __forceinline__ float row_dot(const u8* row, const float* __restrict__ x, const float* __restrict__ nw, int nsub) {
    const int lane = threadIdx.x & 31;
    float acc = 0.0f;
    for (int s = lane; s < nsub; s += 32) {
        float w[32];
        Q::deq32(row, s, w);
        const float4* xs = (const float4*)(x + s * 32);
        if (nw) {
            const float4* ns = (const float4*)(nw + s * 32);
#pragma unroll
            for (int i = 0; i < 8; i++) {
                const float4 n = ns[i];
                w[4 * i + 0] *= n.x;
                w[4 * i + 1] *= n.y;
                w[4 * i + 2] *= n.z;
                w[4 * i + 3] *= n.w;
            }
        }
        float p = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const float4 v = xs[i];
            p = fmaf(w[4 * i + 0], v.x, p);
            p = fmaf(w[4 * i + 1], v.y, p);
            p = fmaf(w[4 * i + 2], v.z, p);
            p = fmaf(w[4 * i + 3], v.w, p);
        }
        acc += p;
    }
    return warp_sum(acc);
}

template <class Q>
__device__ __forceinline__ void matvec_impl(const u8* __restrict__ W, u64 row_bytes,
                                            const float* __restrict__ x, const float* __restrict__ bias,
                                            float* __restrict__ y, int rows, int cols, int accumulate,
                                            const float* __restrict__ nw, float eps) {
    const int lane = threadIdx.x & 31;
    const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    const float scale = nw ? warp_rms(x, cols, eps) : 1.0f;
    float acc = row_dot<Q>(W + (u64)r * row_bytes, x, nw, cols >> 5) * scale;
    if (lane == 0) {
        if (bias) acc += bias[r];
        if (accumulate) acc += y[r];
        y[r] = acc;
    }
}

// Decode FFN input: out[r] = silu(Wg[r]·xn) * (Wu[r]·xn), xn = rmsnorm(x) * nw,
// gate and up in the same format: one launch instead of four.
template <class Q>
__device__ __forceinline__ void gate_up_impl(const u8* __restrict__ Wg, const u8* __restrict__ Wu, u64 row_bytes,
                                             const float* __restrict__ x, const float* __restrict__ nw, float eps,
                                             float* __restrict__ out, int rows, int cols) {
    const int lane = threadIdx.x & 31;
    const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    const float scale = warp_rms(x, cols, eps);
    const float g = row_dot<Q>(Wg + (u64)r * row_bytes, x, nw, cols >> 5) * scale;
    const float u = row_dot<Q>(Wu + (u64)r * row_bytes, x, nw, cols >> 5) * scale;
    if (lane == 0) out[r] = g / (1.0f + expf(-g)) * u;
}

// Batched variant for prefill: each warp dequantizes a 32-element run once
// and applies it to NT token vectors, so the weights are read once per NT
// tokens. gridDim.y = ceil(batch / NT); each token's sum keeps the same
// fixed order as the single-vector kernel.
template <class Q, int NT>
__device__ __forceinline__ void matmul_impl(const u8* __restrict__ W, u64 row_bytes,
                                            const float* __restrict__ x, const float* __restrict__ bias,
                                            float* __restrict__ y, int rows, int cols, int accumulate,
                                            int batch) {
    const int lane = threadIdx.x & 31;
    const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    const int tb = blockIdx.y * NT;
    const int nt = min(NT, batch - tb);
    x += (u64)tb * cols;
    y += (u64)tb * rows;
    const u8* row = W + (u64)r * row_bytes;
    const int nsub = cols >> 5;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    for (int s = lane; s < nsub; s += 32) {
        float w[32];
        Q::deq32(row, s, w);
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (t < nt) {
                const float4* xs = (const float4*)(x + (u64)t * cols + s * 32);
                float p = 0.0f;
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    const float4 v = xs[i];
                    p = fmaf(w[4 * i + 0], v.x, p);
                    p = fmaf(w[4 * i + 1], v.y, p);
                    p = fmaf(w[4 * i + 2], v.z, p);
                    p = fmaf(w[4 * i + 3], v.w, p);
                }
                acc[t] += p;
            }
        }
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float a = warp_sum(acc[t]);
        if (lane == 0 && t < nt) {
            if (bias) a += bias[r];
            if (accumulate) a += y[(u64)t * rows + r];
            y[(u64)t * rows + r] = a;
        }
    }
}

#define MATVEC(name, Q)                                                                         \
    extern "C" __global__ void name(const u8* W, u64 row_bytes, const float* x, const float* bias, \
                                    float* y, int rows, int cols, int accumulate, const float* nw, \
                                    float eps) {                                                \
        matvec_impl<Q>(W, row_bytes, x, bias, y, rows, cols, accumulate, nw, eps);              \
    }                                                                                           \
    extern "C" __global__ void name##_gu(const u8* Wg, const u8* Wu, u64 row_bytes, const float* x, \
                                         const float* nw, float eps, float* out, int rows, int cols) { \
        gate_up_impl<Q>(Wg, Wu, row_bytes, x, nw, eps, out, rows, cols);                        \
    }                                                                                           \
    extern "C" __global__ void name##_b8(const u8* W, u64 row_bytes, const float* x, const float* bias, \
                                         float* y, int rows, int cols, int accumulate, int batch) { \
        matmul_impl<Q, 8>(W, row_bytes, x, bias, y, rows, cols, accumulate, batch);             \
    }

MATVEC(matvec_f32, QF32)
MATVEC(matvec_f16, QF16)
MATVEC(matvec_bf16, QBF16)
MATVEC(matvec_q4_0, Q4_0)
MATVEC(matvec_q4_1, Q4_1)
MATVEC(matvec_q5_0, Q5_0)
MATVEC(matvec_q5_1, Q5_1)
MATVEC(matvec_q8_0, Q8_0)
MATVEC(matvec_q4_k, Q4K)
MATVEC(matvec_q5_k, Q5K)
MATVEC(matvec_q6_k, Q6K)
