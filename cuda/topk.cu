// topk.cu: the k best logits in the sampler's order (logit descending, id
// ascending on ties) selected on the device (KERNEL-SAMPLE, WORKER-4710).
// Why: only k (id, logit) pairs cross to the host per token; the host applies
// the shared sampler (engine::sampler::pick_from_candidates) so both backends
// pick identically. k = 1 is greedy argmax. One block of 1024 threads; round r
// finds the best element strictly after pick r-1 in that total order, so no
// element is mutated and the result does not depend on timing. NaN counts as -inf.
#include "common.cuh"

__device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
    return v > bv || (v == bv && i < bi);
}

extern "C" __global__ void topk(const float* logits, int n, int k, int* out_ids, float* out_vals) {
    __shared__ float sv[32];
    __shared__ int si[32];
    __shared__ float pv_s;
    __shared__ int pi_s;
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (threadIdx.x == 0) {
        pv_s = __int_as_float(0x7f800000);  // +inf: everything is after it
        pi_s = -1;
    }
    __syncthreads();
    for (int r = 0; r < k; r++) {
        const float pv = pv_s;
        const int pi = pi_s;
        float bv = __int_as_float(0xff800000);
        int bi = 0x7fffffff;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            float v = logits[i];
            if (v != v) v = __int_as_float(0xff800000);
            const bool after = v < pv || (v == pv && i > pi);
            if (after && better(v, i, bv, bi)) {
                bv = v;
                bi = i;
            }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (better(ov, oi, bv, bi)) {
                bv = ov;
                bi = oi;
            }
        }
        __syncthreads();
        if (lane == 0) {
            sv[wid] = bv;
            si[wid] = bi;
        }
        __syncthreads();
        if (wid == 0) {
            bv = lane < nw ? sv[lane] : __int_as_float(0xff800000);
            bi = lane < nw ? si[lane] : 0x7fffffff;
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
                const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
                if (better(ov, oi, bv, bi)) {
                    bv = ov;
                    bi = oi;
                }
            }
            if (lane == 0) {
                out_ids[r] = bi;
                out_vals[r] = bv;
                pv_s = bv;
                pi_s = bi;
            }
        }
        __syncthreads();
    }
}
