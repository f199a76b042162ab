// rope_kv.cu: rotary embedding of q and k (llama "norm" pairs or NeoX halves),
// fused with the KV-cache write of k and v (KERNEL-ROPE, KERNEL-KV).
// Why fused: one launch per layer instead of three. Every row of a step
// (blockIdx.y) reads its place from device memory, so a captured decode
// graph replays unchanged and one launch serves a prefill chunk (one
// sequence, consecutive positions) or a batched decode step (one row per
// sequence) alike. place[t] = {position, sequence, pool row, 0}: the host
// looks the pool row up in the sequence's page table, so the store needs
// no table read of its own.
// Cache: the layer's pool of pages, [pool row][n_kv][head_dim] f32.
#include "common.cuh"

extern "C" __global__ void rope_kv(float* q, const float* k, const float* v, float* kc, float* vc,
                                   const int4* place, int n_heads, int n_kv, int hd, int neox, float base) {
    grid_dependency_sync();
    const int t = blockIdx.y;
    const int4 pl = place[t];
    const int pos = pl.x;
    const u64 row = (u64)pl.z;
    const int half = hd >> 1;
    const int n_rot = (n_heads + n_kv) * half;
    q += (u64)t * n_heads * hd;
    k += (u64)t * n_kv * hd;
    v += (u64)t * n_kv * hd;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n_rot) {
        const int h = i / half, j = i % half;
        const float freq = powf(base, -2.0f * (float)j / (float)hd);
        const float ang = (float)pos * freq;
        float sn, cs;
        sincosf(ang, &sn, &cs);
        const int a = neox ? j : 2 * j;
        const int b = neox ? j + half : 2 * j + 1;
        if (h < n_heads) {
            float* qh = q + h * hd;
            const float x0 = qh[a], x1 = qh[b];
            qh[a] = x0 * cs - x1 * sn;
            qh[b] = x0 * sn + x1 * cs;
        } else {
            const int kh = h - n_heads;
            const float* kr = k + kh * hd;
            float* dst = kc + (row * n_kv + kh) * hd;
            const float x0 = kr[a], x1 = kr[b];
            dst[a] = x0 * cs - x1 * sn;
            dst[b] = x0 * sn + x1 * cs;
        }
        return;
    }
    const int vi = i - n_rot;
    if (vi < n_kv * hd) vc[row * n_kv * hd + vi] = v[vi];
}
