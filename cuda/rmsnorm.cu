// rmsnorm.cu: out = x / sqrt(mean(x^2) + eps) * w, fused with the weight (KERNEL-RMSNORM).
// Why fused: one pass over x instead of two launches. One block per row
// (gridDim.x = rows); the sum of squares is a fixed-order block reduction.
#include "common.cuh"

extern "C" __global__ void rmsnorm(const float* x, const float* w, float* out, int n, float eps) {
    grid_dependency_sync();
    __shared__ float sh[32];
    const float* xr = x + (u64)blockIdx.x * n;
    float* o = out + (u64)blockIdx.x * n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss = fmaf(xr[i], xr[i], ss);
    ss = block_sum(ss, sh);
    const float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) o[i] = xr[i] * r * w[i];
}

// The RMS scale of each row of a batched decode step, one warp per row:
// scale[r] = warp_rms(x_r), the very function the fused single-vector
// mat-vecs use, so a row's scale has the same bits alone or batched
// (WORKER-4710). The batched mat-vecs (`_b8`, `_gu_b8`) then apply it.
extern "C" __global__ void row_rms(const float* x, float* scale, int cols, int rows, float eps) {
    grid_dependency_sync();
    const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    const float s = warp_rms(x + (u64)r * cols, cols, eps);
    if ((threadIdx.x & 31) == 0) scale[r] = s;
}
