// swiglu.cu: out = silu(gate) * up, and the plain residual add (KERNEL-SWIGLU, KERNEL-ADD).
// Elementwise, one thread per element; no reductions, so trivially deterministic.
#include "common.cuh"

extern "C" __global__ void swiglu(const float* gate, const float* up, float* out, int n) {
    grid_dependency_sync();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

extern "C" __global__ void add_inplace(float* y, const float* x, int n) {
    grid_dependency_sync();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += x[i];
}
