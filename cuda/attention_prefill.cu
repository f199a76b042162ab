// attention_prefill.cu: attention of a prefill chunk (one sequence's
// consecutive positions) over its KV cache with GQA and a causal mask, with
// an online softmax and no scratch (KERNEL-ATTN, WORKER-4710; issue 12
// point 3). Row t of a launch sits at position place[0].x + t of sequence
// place[0].y and attends to that sequence's cache rows 0..=its position,
// found through the sequence's page table (kv_row, common.cuh). Decode rows
// take the split-KV kernels of attention.cu: the split-KV scratch grows
// with n_tok * max_ctx, far too big at 512 tokens and a long context, and a
// prefill chunk has enough rows to fill the GPU without splitting the walk.
// Deterministic by construction: every sum runs in a fixed order, no
// atomics. Launcher: `Gpu::attention_prefill` (src/gpu/attention.rs).
#include "common.cuh"

// Prefill: grid (n_heads, n_tok), block 128 threads; hd <= 256, hd % 4 == 0.
// One block per (head, query token) walks cache rows 0..=pos0+t in chunks of
// ATT_CHUNK, in order, with an online softmax (running max, sum and output
// rescaled when the max grows): no scratch, no atomics, and the order of
// every sum is fixed by the position alone (WORKER-4710). Scores: four
// threads per row, each over every fourth float4 of the head, folded by a
// fixed two-step butterfly. Output dims d and d + 128 belong to thread d.
extern "C" __global__ void attn_prefill(const float* q, const float* kc, const float* vc, float* out,
                                        const int4* place, const int* tables, int table_len, int n_heads,
                                        int n_kv, int hd, float scale) {
    grid_dependency_sync();
    __shared__ __align__(16) float qs[256];
    __shared__ float sc[ATT_CHUNK];
    __shared__ float se[ATT_CHUNK];
    const int h = blockIdx.x, t = blockIdx.y;
    const int4 pl = place[t];
    const int n = pl.x + 1;
    const int* table = tables + (u64)pl.y * table_len;
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
            const float4* kr = (const float4*)(kc + kv_row(table, t0 + row) * kv_stride + kvh * hd);
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
        const float* vr = vc + kv_row(table, t0) * kv_stride + kvh * hd;
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

// Register-tiled prefill (`attn_prefill_rt_<HD>` and `attn_prefill_rt1_<HD>`,
// HD 64 or 128): grid (n_kv, ceil(n_tok * grp / RT_ROWS)), block
// G * RT_GROUP threads, G = 2 key groups (`rt`) or 1 (`rt1`).
// A block takes one KV head and RT_ROWS = 64 query rows of its group, row
// r = token r / grp, head g * grp + r % grp (grp = n_heads / n_kv), so every
// row of the block reads the same cache rows and each chunk of KEYS keys
// and values is loaded into shared memory once for 64 rows.
// Key group k (threads k * 256 ..) walks chunks k, k + G, k + 2G, ... with
// its own buffers and its own running max, sum and outputs per row; at the
// end group 1 hands its three to group 0 through shared memory, which
// merges them (M = max(m0, m1); l = l0 e^(m0-M) + l1 e^(m1-M); likewise each
// output) and writes the rows.
// Inside a group, thread (ty, tx) = (t / 16, t % 16) owns rows 4ty .. 4ty+3:
// it scores them against keys tx, tx + 16, ... of the chunk (a 4 x KEYS/16
// register tile: each float4 of a query row or key row loaded from shared
// memory serves 4 products) and accumulates their outputs at dims 4tx ..
// 4tx + 3 (and 64 + 4tx .. for HD 128) over the chunk's keys (each value
// float4 serves 4 rows, each weight float4 4 dims). A row's 16 threads are
// one half-warp, so its max and sum fold by shuffles and its weights pass
// through shared memory with a __syncwarp only.
// Why: attn_prefill_tile (the predecessor) did six scalar shared loads per
// eight FMAs, one chunk at a time with every global load exposed: on an
// H100, 512 tokens at position 0 took 72 us a layer, and attention was
// about 40% of a 4,096-token prompt. One key group took 47.7 and 354 us
// (512 tokens at positions 0 and 3,584), the same with other unrolling or
// occupancy: a 512-token chunk of Qwen2.5-0.5B makes only 112 blocks, so
// each block's walk is the critical path; two groups halve it.
// Bits (WORKER-4710): every row walks keys 0..=its position in chunks of
// KEYS from key 0, chunk c in group c % G; each score is its dot over d in
// order, times scale; the online softmax takes the chunk max (a max is
// order-free), weights exp(score - max) with masked keys exactly 0, the
// chunk sum in key order per thread then a fixed xor butterfly, and each
// output the chunk's keys in order; then the fixed merge. Chunks past a
// row's causal limit (the tile's longest row walks further) multiply by
// exp(0) = 1 and add exact zeros, and a group that saw no key of a row
// merges with weight exp(-huge) = 0, so a row's bits depend on its query,
// its cache rows, its position and G only, not on the tile, the chunk of the
// prompt or the launch it came in. `rt` and `rt1` differ in the last bits.
// The next chunk's keys and values are loaded into registers while the
// group computes on the current one. Tiles run longest first. 128
// registers a thread (ptxas spills nothing with the loop over d rolled, and
// spilled with it unrolled).
// Dynamic shared memory (`prefill_rt_smem`): Q RT_ROWS x (HD + 4), then per
// group K KEYS x (HD + 4), V KEYS x HD, P KEYS x (RT_ROWS + 4) floats (the
// paddings put the float4 loads of a half-warp on distinct banks); group
// 1's buffers hold its hand-over at the end.
#define RT_GROUP 256
#define RT_ROWS 64
template <int HD>
struct RtShape {
    static constexpr int KEYS = HD == 64 ? 64 : 32;  // keys per chunk
    static constexpr int QP = HD + 4;                // Q and K row stride
    static constexpr int PP = RT_ROWS + 4;           // P row stride
    static constexpr int KPT = KEYS / 16;            // keys a thread scores
    static constexpr int DPT = HD / 64;              // output float4s a thread owns
    static constexpr int LOADS = KEYS * HD / 4 / RT_GROUP;  // K (and V) float4s a thread stages
    static constexpr int GROUP_FLOATS = KEYS * QP + KEYS * HD + KEYS * PP;
};
static_assert(RtShape<64>::LOADS * RT_GROUP == 64 * 64 / 4, "whole chunks");
static_assert(RtShape<128>::LOADS * RT_GROUP == 32 * 128 / 4, "whole chunks");
static_assert(RT_ROWS * (64 + 2) <= RtShape<64>::GROUP_FLOATS && RT_ROWS * (128 + 2) <= RtShape<128>::GROUP_FLOATS,
              "the hand-over fits group 1's buffers");

template <int HD>
__device__ __forceinline__ void rt_fetch(const float* kc, const float* vc, const int* table, int kv_stride, int g,
                                         int kv0, int n_max, int t, float4 (&kl)[RtShape<HD>::LOADS],
                                         float4 (&vl)[RtShape<HD>::LOADS]) {
    constexpr int HD4 = HD / 4;
#pragma unroll
    for (int k = 0; k < RtShape<HD>::LOADS; k++) {
        const int i = t + k * RT_GROUP;
        const int row = kv0 + i / HD4, d4 = i % HD4;
        kl[k] = vl[k] = make_float4(0.f, 0.f, 0.f, 0.f);
        if (row < n_max) {
            const u64 pr = kv_row(table, row) * kv_stride + g * HD;
            kl[k] = ((const float4*)(kc + pr))[d4];
            vl[k] = ((const float4*)(vc + pr))[d4];
        }
    }
}

template <int HD, int G>
__device__ __forceinline__ void attn_prefill_rt_body(const float* q, const float* kc, const float* vc, float* out,
                                                     const int4* place, const int* tables, int table_len,
                                                     int n_heads, int n_kv, int n_tok, float scale) {
    using S = RtShape<HD>;
    constexpr int HD4 = HD / 4, KEYS = S::KEYS, QP = S::QP, PP = S::PP, KPT = S::KPT, DPT = S::DPT;
    extern __shared__ __align__(16) float sm[];
    const int tid = threadIdx.x, kg = tid / RT_GROUP, t = tid % RT_GROUP;
    const int ty = t >> 4, tx = t & 15;
    float* Qs = sm;                                         // RT_ROWS x QP
    float* Ks = Qs + RT_ROWS * QP + kg * S::GROUP_FLOATS;  // KEYS x QP
    float* Vs = Ks + KEYS * QP;                             // KEYS x HD
    float* Ps = Vs + KEYS * HD;                             // KEYS x PP: Ps[key][row]
    const int g = blockIdx.x, grp = n_heads / n_kv;
    const int n_rows = n_tok * grp;
    // The longest (last) tiles are dispatched first, so the short ones fill in behind them.
    const int r0 = (gridDim.y - 1 - blockIdx.y) * RT_ROWS;
    // One sequence's consecutive positions: token t sits at pos0 + t.
    const int4 pl = place[0];
    const int pos0 = pl.x;
    const int* table = tables + (u64)pl.y * table_len;
    const int kv_stride = n_kv * HD;
    for (int i = tid; i < RT_ROWS * HD4; i += G * RT_GROUP) {
        const int r = i / HD4, d4 = i % HD4, fr = r0 + r;
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (fr < n_rows) v = ((const float4*)(q + ((u64)(fr / grp) * n_heads + g * grp + fr % grp) * HD))[d4];
        *(float4*)(Qs + r * QP + 4 * d4) = v;
    }
    const int last = min(r0 + RT_ROWS, n_rows) - 1;
    const int n_max = pos0 + last / grp + 1;
    float m[4], l[4];
    int lim[4];
    float4 o[4][DPT];
#pragma unroll
    for (int a = 0; a < 4; a++) {
        const int fr = r0 + 4 * ty + a;
        lim[a] = fr < n_rows ? pos0 + fr / grp + 1 : 0;
        m[a] = -3.402823466e38f;
        l[a] = 0.0f;
#pragma unroll
        for (int c = 0; c < DPT; c++) o[a][c] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
    float4 kl[S::LOADS], vl[S::LOADS];
    rt_fetch<HD>(kc, vc, table, kv_stride, g, kg * KEYS, n_max, t, kl, vl);
    // Every group passes the same barriers: as many rounds as group 0 has chunks.
    const int rounds = (n_max + G * KEYS - 1) / (G * KEYS);
    for (int round = 0; round < rounds; round++) {
        const int kv0 = (G * round + kg) * KEYS;
        const bool live = kv0 < n_max;  // the same for a whole group, so for whole warps
        // Every thread is done with the previous chunk's K, V and P.
        __syncthreads();
        if (live) {
#pragma unroll
            for (int k = 0; k < S::LOADS; k++) {
                const int i = t + k * RT_GROUP, c = i / HD4, d4 = i % HD4;
                *(float4*)(Ks + c * QP + 4 * d4) = kl[k];
                *(float4*)(Vs + c * HD + 4 * d4) = vl[k];
            }
        }
        __syncthreads();
        if (!live) continue;
        if (kv0 + G * KEYS < n_max) rt_fetch<HD>(kc, vc, table, kv_stride, g, kv0 + G * KEYS, n_max, t, kl, vl);
        // Scores: rows 4ty + a against keys tx + 16b, each over d in order.
        float s[4][KPT];
#pragma unroll
        for (int a = 0; a < 4; a++)
#pragma unroll
            for (int b = 0; b < KPT; b++) s[a][b] = 0.0f;
#pragma unroll 1
        for (int d4 = 0; d4 < HD4; d4++) {
            float4 qa[4], kb[KPT];
#pragma unroll
            for (int a = 0; a < 4; a++) qa[a] = *(const float4*)(Qs + (4 * ty + a) * QP + 4 * d4);
#pragma unroll
            for (int b = 0; b < KPT; b++) kb[b] = *(const float4*)(Ks + (tx + 16 * b) * QP + 4 * d4);
#pragma unroll
            for (int a = 0; a < 4; a++)
#pragma unroll
                for (int b = 0; b < KPT; b++) {
                    s[a][b] = fmaf(qa[a].x, kb[b].x, s[a][b]);
                    s[a][b] = fmaf(qa[a].y, kb[b].y, s[a][b]);
                    s[a][b] = fmaf(qa[a].z, kb[b].z, s[a][b]);
                    s[a][b] = fmaf(qa[a].w, kb[b].w, s[a][b]);
                }
        }
        // Online softmax per row over the half-warp's 16 threads.
        float e[4][KPT];
#pragma unroll
        for (int a = 0; a < 4; a++) {
            float cm = -3.402823466e38f;
#pragma unroll
            for (int b = 0; b < KPT; b++) {
                s[a][b] *= scale;
                if (kv0 + tx + 16 * b < lim[a]) cm = fmaxf(cm, s[a][b]);
            }
#pragma unroll
            for (int off = 8; off > 0; off >>= 1) cm = fmaxf(cm, __shfl_xor_sync(0xffffffffu, cm, off, 16));
            const float mn = fmaxf(m[a], cm);
            float es = 0.0f;
#pragma unroll
            for (int b = 0; b < KPT; b++) {
                e[a][b] = kv0 + tx + 16 * b < lim[a] ? expf(s[a][b] - mn) : 0.0f;
                es += e[a][b];
            }
#pragma unroll
            for (int off = 8; off > 0; off >>= 1) es += __shfl_xor_sync(0xffffffffu, es, off, 16);
            const float corr = expf(m[a] - mn);
            l[a] = l[a] * corr + es;
            m[a] = mn;
#pragma unroll
            for (int c = 0; c < DPT; c++) {
                o[a][c].x *= corr;
                o[a][c].y *= corr;
                o[a][c].z *= corr;
                o[a][c].w *= corr;
            }
        }
#pragma unroll
        for (int b = 0; b < KPT; b++)
            *(float4*)(Ps + (tx + 16 * b) * PP + 4 * ty) = make_float4(e[0][b], e[1][b], e[2][b], e[3][b]);
        // A row's weights are written and read by its own half-warp.
        __syncwarp();
        // Outputs: every key of the chunk in order (keys past the chunk's end carry weight 0 and zero values).
#pragma unroll 8
        for (int j = 0; j < KEYS; j++) {
            const float4 p = *(const float4*)(Ps + j * PP + 4 * ty);
            const float pa[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
            for (int c = 0; c < DPT; c++) {
                const float4 v = *(const float4*)(Vs + j * HD + 64 * c + 4 * tx);
#pragma unroll
                for (int a = 0; a < 4; a++) {
                    o[a][c].x = fmaf(pa[a], v.x, o[a][c].x);
                    o[a][c].y = fmaf(pa[a], v.y, o[a][c].y);
                    o[a][c].z = fmaf(pa[a], v.z, o[a][c].z);
                    o[a][c].w = fmaf(pa[a], v.w, o[a][c].w);
                }
            }
        }
    }
    if (G == 2) {
        // Group 1 hands its rows' max, sum and outputs to group 0 (in its
        // own K and V, no longer read once every thread is past this barrier).
        float* hand = sm + RT_ROWS * QP + S::GROUP_FLOATS;  // RT_ROWS x HD outputs, then maxima, then sums
        __syncthreads();
        if (kg == 1) {
#pragma unroll
            for (int a = 0; a < 4; a++) {
                const int r = 4 * ty + a;
#pragma unroll
                for (int c = 0; c < DPT; c++) *(float4*)(hand + r * HD + 64 * c + 4 * tx) = o[a][c];
                if (tx == 0) {
                    hand[RT_ROWS * HD + r] = m[a];
                    hand[RT_ROWS * HD + RT_ROWS + r] = l[a];
                }
            }
        }
        __syncthreads();
        if (kg == 1) return;
#pragma unroll
        for (int a = 0; a < 4; a++) {
            const int r = 4 * ty + a;
            const float m1 = hand[RT_ROWS * HD + r], l1 = hand[RT_ROWS * HD + RT_ROWS + r];
            const float mx = fmaxf(m[a], m1);
            const float c0 = expf(m[a] - mx), c1 = expf(m1 - mx);
            l[a] = l[a] * c0 + l1 * c1;
#pragma unroll
            for (int c = 0; c < DPT; c++) {
                const float4 o1 = *(const float4*)(hand + r * HD + 64 * c + 4 * tx);
                o[a][c].x = o[a][c].x * c0 + o1.x * c1;
                o[a][c].y = o[a][c].y * c0 + o1.y * c1;
                o[a][c].z = o[a][c].z * c0 + o1.z * c1;
                o[a][c].w = o[a][c].w * c0 + o1.w * c1;
            }
        }
    }
#pragma unroll
    for (int a = 0; a < 4; a++) {
        const int fr = r0 + 4 * ty + a;
        if (fr >= n_rows) continue;
        float* oh = out + ((u64)(fr / grp) * n_heads + g * grp + fr % grp) * HD;
#pragma unroll
        for (int c = 0; c < DPT; c++) {
            const float4 v = o[a][c];
            *(float4*)(oh + 64 * c + 4 * tx) = make_float4(v.x / l[a], v.y / l[a], v.z / l[a], v.w / l[a]);
        }
    }
}

#define ATTN_PREFILL_RT(NAME, HD, G)                                                                          \
    extern "C" __global__ void __launch_bounds__(G * RT_GROUP, 2 / G)                                         \
        NAME(const float* q, const float* kc, const float* vc, float* out, const int4* place, const int* tables, \
             int table_len, int n_heads, int n_kv, int n_tok, float scale) {                                   \
        grid_dependency_sync();                                                                               \
        attn_prefill_rt_body<HD, G>(q, kc, vc, out, place, tables, table_len, n_heads, n_kv, n_tok, scale);   \
    }
ATTN_PREFILL_RT(attn_prefill_rt_64, 64, 2)
ATTN_PREFILL_RT(attn_prefill_rt_128, 128, 2)
ATTN_PREFILL_RT(attn_prefill_rt1_64, 64, 1)
ATTN_PREFILL_RT(attn_prefill_rt1_128, 128, 1)
