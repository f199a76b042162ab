// attention.cu: attention of query tokens over the KV cache with GQA and a
// causal mask (KERNEL-ATTN), as split-KV ("flash-decoding") in two launches.
// Query token t of a batch sits at position pos0 + t and attends to cache
// rows 0..=pos0+t: decode is the batch of one, prefill a batch of several.
// Deterministic by construction (WORKER-4710): the split size is fixed
// (ATT_CHUNK rows), never derived from timing or occupancy; inside a chunk
// every sum runs in row order; the combine kernel folds chunks in index
// order. No atomics. Grids cover max_ctx so a captured graph stays valid as
// the position grows; chunks past the causal limit exit at once.
// Scratch per (token, head, chunk): hd partial outputs, then (max, sum).
// attn_prefill (below) serves prefill chunks of many tokens without scratch:
// the split-KV scratch grows with n_tok * max_ctx, far too big at 512 tokens
// and a long context, and prefill has enough (head, token) pairs to fill the
// GPU without splitting the cache walk.
#include "common.cuh"

#define ATT_CHUNK 32

// grid (n_heads, n_chunks, n_tok), block 128 threads; hd <= 256.
extern "C" __global__ void attn_partial(const float* q, const float* kc, const float* vc, float* part,
                                        const int* pos_ptr, int n_heads, int n_kv, int hd, int n_chunks,
                                        float scale) {
    __shared__ __align__(16) float qs[256];
    __shared__ float sc[ATT_CHUNK];
    const int h = blockIdx.x, c = blockIdx.y, t = blockIdx.z;
    const int n = *pos_ptr + t + 1;
    const int t0 = c * ATT_CHUNK;
    if (t0 >= n) return;
    const int tn = min(ATT_CHUNK, n - t0);
    const int kvh = h / (n_heads / n_kv);
    const int kv_stride = n_kv * hd;
    const float* qh = q + ((u64)t * n_heads + h) * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) qs[d] = qh[d];
    __syncthreads();
    // One thread per cache row: its dot product runs over hd in order with
    // independent 16-byte loads (hd % 4 == 0, checked by the launcher), so the
    // 32 rows of a chunk are scored in parallel instead of one warp-sum each.
    if (threadIdx.x < tn) {
        const float4* kr = (const float4*)(kc + (u64)(t0 + threadIdx.x) * kv_stride + kvh * hd);
        const float4* q4 = (const float4*)qs;
        float p = 0.0f;
#pragma unroll 4
        for (int d = 0; d < (hd >> 2); d++) {
            const float4 kv = kr[d], qv = q4[d];
            p = fmaf(qv.x, kv.x, p);
            p = fmaf(qv.y, kv.y, p);
            p = fmaf(qv.z, kv.z, p);
            p = fmaf(qv.w, kv.w, p);
        }
        sc[threadIdx.x] = p * scale;
    }
    __syncthreads();
    // Every thread folds the (at most 32) scores itself, in row order.
    float m = sc[0];
    for (int j = 1; j < tn; j++) m = fmaxf(m, sc[j]);
    float s = 0.0f;
    for (int j = 0; j < tn; j++) s += expf(sc[j] - m);
    float* out = part + (((u64)t * n_heads + h) * n_chunks + c) * (hd + 2);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        const float* vr = vc + (u64)t0 * kv_stride + kvh * hd + d;
        float o = 0.0f;
#pragma unroll 8
        for (int j = 0; j < tn; j++) o = fmaf(expf(sc[j] - m), vr[(u64)j * kv_stride], o);
        out[d] = o;
    }
    if (threadIdx.x == 0) {
        out[hd] = m;
        out[hd + 1] = s;
    }
}

// grid (n_heads, n_tok), block 128 threads: fold the chunks of each (token, head) in order.
extern "C" __global__ void attn_combine(const float* part, float* out, const int* pos_ptr, int n_heads,
                                        int hd, int n_chunks) {
    const int h = blockIdx.x, t = blockIdx.y;
    const int n = *pos_ptr + t + 1;
    const int nc = (n + ATT_CHUNK - 1) / ATT_CHUNK;
    const float* base = part + ((u64)t * n_heads + h) * n_chunks * (hd + 2);
    float M = base[hd];
    for (int c = 1; c < nc; c++) M = fmaxf(M, base[(u64)c * (hd + 2) + hd]);
    float S = 0.0f;
    for (int c = 0; c < nc; c++) {
        const float* p = base + (u64)c * (hd + 2);
        S += p[hd + 1] * expf(p[hd] - M);
    }
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float o = 0.0f;
        for (int c = 0; c < nc; c++) {
            const float* p = base + (u64)c * (hd + 2);
            o = fmaf(p[d], expf(p[hd] - M), o);
        }
        out[((u64)t * n_heads + h) * hd + d] = o / S;
    }
}

// Prefill: grid (n_heads, n_tok), block 128 threads; hd <= 256, hd % 4 == 0.
// One block per (head, query token) walks cache rows 0..=pos0+t in chunks of
// ATT_CHUNK, in order, with an online softmax (running max, sum and output
// rescaled when the max grows): no scratch, no atomics, and the order of
// every sum is fixed by the position alone (WORKER-4710). Scores: four
// threads per row, each over every fourth float4 of the head, folded by a
// fixed two-step butterfly. Output dims d and d + 128 belong to thread d.
extern "C" __global__ void attn_prefill(const float* q, const float* kc, const float* vc, float* out,
                                        const int* pos_ptr, int n_heads, int n_kv, int hd, float scale) {
    __shared__ __align__(16) float qs[256];
    __shared__ float sc[ATT_CHUNK];
    __shared__ float se[ATT_CHUNK];
    const int h = blockIdx.x, t = blockIdx.y;
    const int n = *pos_ptr + t + 1;
    const int kvh = h / (n_heads / n_kv);
    const int kv_stride = n_kv * hd;
    const float* qh = q + ((u64)t * n_heads + h) * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) qs[d] = qh[d];
    __syncthreads();
    const int hd4 = hd >> 2;
    const int row = threadIdx.x >> 2, part = threadIdx.x & 3;
    const int d0 = threadIdx.x, d1 = threadIdx.x + 128;
    const float4* q4 = (const float4*)qs;
    float m = -3.402823466e38f, s = 0.0f, o0 = 0.0f, o1 = 0.0f;
    for (int t0 = 0; t0 < n; t0 += ATT_CHUNK) {
        const int tn = min(ATT_CHUNK, n - t0);
        float p = 0.0f;
        if (row < tn) {
            const float4* kr = (const float4*)(kc + (u64)(t0 + row) * kv_stride + kvh * hd);
            for (int i = part; i < hd4; i += 4) {
                const float4 kv = kr[i], qv = q4[i];
                p = fmaf(qv.x, kv.x, p);
                p = fmaf(qv.y, kv.y, p);
                p = fmaf(qv.z, kv.z, p);
                p = fmaf(qv.w, kv.w, p);
            }
        }
        p += __shfl_xor_sync(0xffffffffu, p, 1);
        p += __shfl_xor_sync(0xffffffffu, p, 2);
        if (part == 0 && row < tn) sc[row] = p * scale;
        __syncthreads();
        float cm = m;
        for (int j = 0; j < tn; j++) cm = fmaxf(cm, sc[j]);
        // Each weight is computed once (by thread j), not once per thread.
        if (threadIdx.x < tn) se[threadIdx.x] = expf(sc[threadIdx.x] - cm);
        __syncthreads();
        const float corr = expf(m - cm);
        s *= corr;
        o0 *= corr;
        o1 *= corr;
        const float* vr = vc + (u64)t0 * kv_stride + kvh * hd;
        for (int j = 0; j < tn; j++) {
            const float e = se[j];
            s += e;
            if (d0 < hd) o0 = fmaf(e, vr[(u64)j * kv_stride + d0], o0);
            if (d1 < hd) o1 = fmaf(e, vr[(u64)j * kv_stride + d1], o1);
        }
        m = cm;
        // sc and se are rewritten by the next chunk only after every thread has read them.
        __syncthreads();
    }
    float* oh = out + ((u64)t * n_heads + h) * hd;
    if (d0 < hd) oh[d0] = o0 / s;
    if (d1 < hd) oh[d1] = o1 / s;
}
