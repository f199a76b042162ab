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
// A decode step with the grouped attention kernel does not launch this: that
// kernel rotates and stores the same way (rope_angle / rope_pair, common.cuh).
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
        float cs, sn;
        rope_angle(pos, j, hd, base, &cs, &sn);
        if (h < n_heads) {
            rope_pair(q + h * hd, q + h * hd, j, hd, neox, cs, sn);
        } else {
            const int kh = h - n_heads;
            rope_pair(k + kh * hd, kc + (row * n_kv + kh) * hd, j, hd, neox, cs, sn);
        }
        return;
    }
    const int vi = i - n_rot;
    if (vi < n_kv * hd) vc[row * n_kv * hd + vi] = v[vi];
}
