// rmsnorm.cu: out = x / sqrt(mean(x^2) + eps) * w, fused with the weight (KERNEL-RMSNORM).
// Why fused: one pass over x instead of two launches. One block per row
// (gridDim.x = rows); the sum of squares is a fixed-order block reduction.
#include "common.cuh"

extern "C" __global__ void rmsnorm(const float* x, const float* w, float* out, int n, float eps) {
    __shared__ float sh[32];
    const float* xr = x + (u64)blockIdx.x * n;
    float* o = out + (u64)blockIdx.x * n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss = fmaf(xr[i], xr[i], ss);
    ss = block_sum(ss, sh);
    const float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) o[i] = xr[i] * r * w[i];
}
