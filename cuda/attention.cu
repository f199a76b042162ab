// attention.cu: attention of query tokens over the KV cache with GQA and a
// causal mask (KERNEL-ATTN): decode rows as split-KV ("flash-decoding"),
// prefill chunks with an online softmax.
// Query row t of a launch sits at position place[t].x of sequence
// place[t].y and attends to that sequence's cache rows 0..=position: a
// decode step is one row per sequence, a prefill chunk one sequence's
// consecutive positions. Cache rows are found through the sequence's page
// table (kv_row, common.cuh): pages are whole chunks, so a chunk's rows are
// consecutive.
// Deterministic by construction (WORKER-4710): the split size is fixed
// (ATT_CHUNK rows), never derived from timing or occupancy; inside a chunk
// every sum runs in row order; the last block of a (row, head) to finish
// folds the chunks in index order (an integer ticket finds it; no
// floating-point atomics). Grids cover a captured graph's reach so it stays
// valid as the position grows; chunks past the causal limit exit at once.
// Scratch per (token, head, chunk): hd partial outputs, then (max, sum).
// attn_prefill (below) serves prefill chunks of many tokens without scratch:
// the split-KV scratch grows with n_tok * max_ctx, far too big at 512 tokens
// and a long context, and prefill has enough (head, token) pairs to fill the
// GPU without splitting the cache walk.
#include "common.cuh"

static_assert(KV_PAGE % ATT_CHUNK == 0, "a KV page holds whole attention chunks");
static_assert((ATT_THREADS & (ATT_THREADS - 1)) == 0 && ATT_THREADS >= ATT_CHUNK && 2 * ATT_THREADS >= 256,
              "the decode fold's tree needs a power of two, a thread per chunk row and two dims per thread");

// Split-KV decode attention in one launch: grid (n_heads, n_chunks, n_tok),
// block ATT_THREADS threads (the launcher's table); hd <= 256. Each block
// scores one chunk of ATT_CHUNK cache rows for one (token, head) and writes
// its partial (hd weighted values, max, sum). The block that finishes a (token, head) last, found by an integer
// ticket (atomicAdd on a counter; no floating-point atomics), folds all its
// partials in chunk order, so the result does not depend on which block
// finished last (WORKER-4710), and resets the counter for the next launch or
// graph replay. Counters start at zero (the scratch is allocated zeroed).
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
attn_partial(const float* q, const float* kc, const float* vc, float* part, int* counters, float* att_out,
             const int4* place, const int* tables, int table_len, int n_heads, int n_kv, int hd, int n_chunks,
             float scale) {
    grid_dependency_sync();
    __shared__ __align__(16) float qs[256];
    __shared__ float sc[ATT_CHUNK];
    __shared__ float se[ATT_CHUNK];
    __shared__ float fold_w[ATT_THREADS];
    __shared__ float fold_s[ATT_THREADS];
    __shared__ int is_last;
    const int h = blockIdx.x, c = blockIdx.y, t = blockIdx.z;
    const int4 pl = place[t];
    const int n = pl.x + 1;
    const int* table = tables + (u64)pl.y * table_len;
    const int t0 = c * ATT_CHUNK;
    if (t0 >= n) return;
    const int tn = min(ATT_CHUNK, n - t0);
    const int kvh = h / (n_heads / n_kv);
    const int kv_stride = n_kv * hd;
    // The chunk's first pool row, read from the page table before the query
    // is staged so the two loads overlap; the chunk's rows follow it.
    const u64 row0 = kv_row(table, t0);
    const float* qh = q + ((u64)t * n_heads + h) * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) qs[d] = qh[d];
    __syncthreads();
    // One thread per cache row: its dot product runs over hd in order with
    // independent 16-byte loads (hd % 4 == 0, checked by the launcher), so the
    // 32 rows of a chunk are scored in parallel instead of one warp-sum each.
    if (threadIdx.x < tn) {
        const float4* kr = (const float4*)(kc + (row0 + threadIdx.x) * kv_stride + kvh * hd);
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
    // Every thread finds the (at most 32) scores' max itself, in row order;
    // row j's weight exp(score - max) is computed once, by thread j, and
    // read by every output dimension (the same values every thread used to
    // compute for itself, so the sums below are unchanged bit for bit).
    float m = sc[0];
    for (int j = 1; j < tn; j++) m = fmaxf(m, sc[j]);
    if (threadIdx.x < tn) se[threadIdx.x] = expf(sc[threadIdx.x] - m);
    __syncthreads();
    float* base = part + ((u64)t * n_heads + h) * n_chunks * (hd + 2);
    float* out = base + (u64)c * (hd + 2);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        const float* vr = vc + row0 * kv_stride + kvh * hd + d;
        float o = 0.0f;
#pragma unroll 8
        for (int j = 0; j < tn; j++) o = fmaf(se[j], vr[(u64)j * kv_stride], o);
        out[d] = o;
    }
    if (threadIdx.x == 0) {
        float s = 0.0f;
        for (int j = 0; j < tn; j++) s += se[j];
        out[hd] = m;
        out[hd + 1] = s;
    }
    // Publish this partial device-wide before taking a ticket.
    __threadfence();
    __syncthreads();
    const int nc = (n + ATT_CHUNK - 1) / ATT_CHUNK;
    if (threadIdx.x == 0) {
        int* ctr = counters + (u64)t * n_heads + h;
        is_last = atomicAdd(ctr, 1) == nc - 1;
        if (is_last) *ctr = 0;
    }
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    // Fold the chunks (loads bypass L1: other blocks wrote them). The max
    // over every chunk's max does not depend on the order it is taken in,
    // so the threads take it together: each over every ATT_THREADS-th
    // chunk, then a tree over the threads.
    float M = __int_as_float(0xff800000);  // -inf
    for (int k = threadIdx.x; k < nc; k += ATT_THREADS) M = fmaxf(M, __ldcg(base + (u64)k * (hd + 2) + hd));
    fold_w[threadIdx.x] = M;
    __syncthreads();
    for (int span = ATT_THREADS / 2; span > 0; span >>= 1) {
        if (threadIdx.x < span) fold_w[threadIdx.x] = fmaxf(fold_w[threadIdx.x], fold_w[threadIdx.x + span]);
        __syncthreads();
    }
    M = fold_w[0];
    __syncthreads();
    // The sum and the outputs run over the chunks in chunk order, as one
    // thread would: a tile of ATT_THREADS chunks at a time, whose weights
    // exp(max_k - M) are computed once, by one thread each.
    float S = 0.0f, o0 = 0.0f, o1 = 0.0f;
    const int d0 = threadIdx.x, d1 = threadIdx.x + ATT_THREADS;
    for (int k0 = 0; k0 < nc; k0 += ATT_THREADS) {
        const int kn = min(ATT_THREADS, nc - k0);
        if (threadIdx.x < kn) {
            const float* p = base + (u64)(k0 + threadIdx.x) * (hd + 2);
            fold_w[threadIdx.x] = expf(__ldcg(p + hd) - M);
            fold_s[threadIdx.x] = __ldcg(p + hd + 1);
        }
        __syncthreads();
        for (int i = 0; i < kn; i++) S += fold_s[i] * fold_w[i];
        const float* pk = base + (u64)k0 * (hd + 2);
        if (d0 < hd) {
#pragma unroll 8
            for (int i = 0; i < kn; i++) o0 = fmaf(__ldcg(pk + (u64)i * (hd + 2) + d0), fold_w[i], o0);
        }
        if (d1 < hd) {
#pragma unroll 8
            for (int i = 0; i < kn; i++) o1 = fmaf(__ldcg(pk + (u64)i * (hd + 2) + d1), fold_w[i], o1);
        }
        __syncthreads();
    }
    float* dst = att_out + ((u64)t * n_heads + h) * hd;
    if (d0 < hd) dst[d0] = o0 / S;
    if (d1 < hd) dst[d1] = o1 / S;
}

// Split-KV decode attention with a warp per chunk and a GQA group per block
// (`attn_decode_<HD>`, HD 64 or 128), fusing the step's RoPE and cache store
// when given the step's k and v (decode_queries; a launch per layer saved):
// grid (n_kv, ceil(chunks / AD_WARPS),
// n_tok), block 32 * AD_WARPS threads, at most ATT_GROUP_MAX query heads per
// KV head. Warp w of block (g, b, t) takes chunk AD_WARPS * b + w of row t
// for every query head of KV head g and computes exactly the partial
// attn_partial's block of that (row, head, chunk) computes: lane j scores
// cache row j of the chunk (each key row loaded once for the whole group,
// its dot over HD in order), the chunk's max is a warp max (a max is the
// same whatever the order), weights exp(score - max) and their sum in row
// order, and lane l sums output dims l, l + 32, ... over the chunk's rows in
// order. Then each head's partials are folded in chunk order as attn_partial
// folds them (fold_head), warp w folding heads w, w + AD_WARPS, ...: by the
// block itself, from shared memory, when one block covers the row (up to
// 32 * AD_WARPS positions); otherwise by the last block of the (row, KV
// head) to finish, from global memory, found by an integer ticket on the
// group's first head's counter. Every output has attn_partial's bits
// (WORKER-4710; the kernel emulator and the GPU suite check it), so which
// launch shape serves a step changes nothing a row computes.
// Why: attn_partial starts a block of 128 threads per (row, head, chunk), in
// which 32 threads score and 64 sum, each a chain of dependent global
// loads, and its fold walks a long context's chunks one load after another.
// Here a block has AD_WARPS chunks of a whole group in flight, a short
// context never leaves the block, and a long one's fold loads a tile's
// maxima, sums and values before adding any of them.

// A load of a partial: from shared memory, or from global memory past L1
// (other blocks wrote it).
template <bool SHARED>
__device__ __forceinline__ float ld_partial(const float* p) {
    return SHARED ? *p : __ldcg(p);
}

// Fold one head's nc chunk partials (chunk c's HD values, max and sum at
// base + c * stride) into dst[0..HD) in chunk order, by one warp, as
// attn_partial's fold: M the max of the chunk maxima, then S and every
// output over the chunks in order with weights exp(max_c - M), a tile of 32
// chunks at a time. A tile's maxima, sums and (up to two dims per lane)
// values are loaded together before any is used, so up to 32 chunks fold in
// one round of loads (M then comes from the tile itself).
template <int HD, bool SHARED>
__device__ __forceinline__ void fold_head(const float* base, u64 stride, int nc, float* dst, float* fw, float* fs) {
    constexpr int DL = HD / 32, PF = DL < 2 ? DL : 2;
    const int lane = threadIdx.x & 31;
    float M = __int_as_float(0xff800000);  // -inf
    if (nc > 32) {
#pragma unroll 8
        for (int k = lane; k < nc; k += 32) M = fmaxf(M, ld_partial<SHARED>(base + (u64)k * stride + HD));
        M = warp_max(M);
    }
    float S = 0.0f, o[DL];
#pragma unroll
    for (int i = 0; i < DL; i++) o[i] = 0.0f;
    for (int k0 = 0; k0 < nc; k0 += 32) {
        const int kn = min(32, nc - k0);
        const float* tile = base + (u64)k0 * stride;
        const float* pk = tile + lane;  // dim lane of the tile's first chunk
        float mk = __int_as_float(0xff800000), sk = 0.0f, pv[PF][32];
        if (lane < kn) {
            mk = ld_partial<SHARED>(tile + (u64)lane * stride + HD);
            sk = ld_partial<SHARED>(tile + (u64)lane * stride + HD + 1);
        }
#pragma unroll
        for (int i = 0; i < PF; i++)
#pragma unroll
            for (int k = 0; k < 32; k++) pv[i][k] = k < kn ? ld_partial<SHARED>(pk + (u64)k * stride + 32 * i) : 0.0f;
        if (nc <= 32) M = warp_max(mk);
        fw[lane] = lane < kn ? expf(mk - M) : 0.0f;
        fs[lane] = sk;
        __syncwarp();
        for (int i = 0; i < kn; i++) S += fs[i] * fw[i];
#pragma unroll
        for (int i = 0; i < DL; i++) {
            if (i >= PF) {
#pragma unroll
                for (int k = 0; k < 32; k++) pv[0][k] = k < kn ? ld_partial<SHARED>(pk + (u64)k * stride + 32 * i) : 0.0f;
            }
            const int slot = i < PF ? i : 0;
#pragma unroll
            for (int k = 0; k < 32; k++)
                if (k < kn) o[i] = fmaf(pv[slot][k], fw[k], o[i]);
        }
        __syncwarp();
    }
#pragma unroll
    for (int i = 0; i < DL; i++) dst[lane + 32 * i] = o[i] / S;
}

// The block's query heads into shared memory, rotated here when the step's
// RoPE is fused (k not null): the angles once per pair index, then every
// head's pairs by rope_pair, as rope_kv rotates them. The block holding the
// row's own position also rotates the row's key into the cache and copies
// its value there, before any of its warps reads that cache row (the
// __syncthreads after this); no other block reads it (each row is its own
// sequence's, and other blocks of the row cover earlier positions).
// rot: HD floats of shared memory free until the __syncthreads after this
// (the angles' cosines, then sines).
template <int HD>
__device__ __forceinline__ void decode_queries(const float* qg, const float* k, const float* v, float* kc, float* vc,
                                               float* qs, float* rot, int grp, int t, int kvh, int n_kv, int4 pl,
                                               bool holds_pos, int neox, float base) {
    constexpr int HALF = HD / 2;
    const int nt = blockDim.x;
    if (!k) {
        for (int i = threadIdx.x; i < grp * HD; i += nt) qs[i] = qg[i];
        return;
    }
    float* rcs = rot;
    float* rsn = rot + HALF;
    for (int j = threadIdx.x; j < HALF; j += nt) rope_angle(pl.x, j, HD, base, &rcs[j], &rsn[j]);
    __syncthreads();
    for (int i = threadIdx.x; i < grp * HALF; i += nt) {
        const int g = i / HALF, j = i - g * HALF;
        rope_pair(qg + g * HD, qs + g * HD, j, HD, neox, rcs[j], rsn[j]);
    }
    if (holds_pos) {
        const u64 at = ((u64)pl.z * n_kv + kvh) * HD;
        const u64 from = ((u64)t * n_kv + kvh) * HD;
        for (int j = threadIdx.x; j < HALF; j += nt) rope_pair(k + from, kc + at, j, HD, neox, rcs[j], rsn[j]);
        for (int i = threadIdx.x; i < HD; i += nt) vc[at + i] = v[from + i];
    }
}

template <int HD>
__device__ __forceinline__ void attn_decode_body(const float* q, const float* k, const float* v, float* kc,
                                                 float* vc, float* part, int* counters, float* att_out,
                                                 const int4* place, const int* tables, int table_len,
                                                 int n_heads, int n_kv, int n_chunks, float scale, int neox,
                                                 float base) {
    constexpr int W = AD_WARPS, G = ATT_GROUP_MAX, DL = HD / 32, P = HD + 2;
    __shared__ __align__(16) float qs[G * HD];
    __shared__ float ew[W][G][32];
    __shared__ float fw[W][32];
    __shared__ float fs[W][32];
    __shared__ float local[W][G][P];  // the partials, when one block covers the row
    __shared__ int is_last;
    const int kvh = blockIdx.x, t = blockIdx.z, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int grp = n_heads / n_kv, h0 = kvh * grp;
    const int4 pl = place[t];
    const int n = pl.x + 1;
    const int nc = (n + ATT_CHUNK - 1) / ATT_CHUNK;
    if (blockIdx.y * W >= nc) return;  // the whole block: past this row's chunks
    const bool alone = nc <= W;         // this block holds every chunk of the row
    const int* table = tables + (u64)pl.y * table_len;
    const float* qg = q + ((u64)t * n_heads + h0) * HD;
    // The angles go where the weights go later (free until then).
    static_assert(W * G * 32 >= HD, "the rotation's angles fit the weights' shared memory");
    decode_queries<HD>(qg, k, v, kc, vc, qs, &ew[0][0][0], grp, t, kvh, n_kv, pl, blockIdx.y == (nc - 1) / W, neox,
                       base);
    __syncthreads();
    const int c = blockIdx.y * W + warp;
    if (c < nc) {
        const int t0 = c * ATT_CHUNK, tn = min(ATT_CHUNK, n - t0);
        const int kv_stride = n_kv * HD;
        const u64 row0 = kv_row(table, t0);
        float p[G];
#pragma unroll
        for (int g = 0; g < G; g++) p[g] = 0.0f;
        if (lane < tn) {
            const float4* kr = (const float4*)(kc + (row0 + lane) * kv_stride + kvh * HD);
#pragma unroll 4
            for (int d = 0; d < HD / 4; d++) {
                const float4 kv = kr[d];
#pragma unroll
                for (int g = 0; g < G; g++) {
                    if (g < grp) {
                        const float4 qv = ((const float4*)(qs + g * HD))[d];
                        p[g] = fmaf(qv.x, kv.x, p[g]);
                        p[g] = fmaf(qv.y, kv.y, p[g]);
                        p[g] = fmaf(qv.z, kv.z, p[g]);
                        p[g] = fmaf(qv.w, kv.w, p[g]);
                    }
                }
            }
        }
        // Each head's chunk max and row weights; lane g keeps head g's max.
        float my_max = 0.0f;
#pragma unroll
        for (int g = 0; g < G; g++) {
            if (g < grp) {
                const float sv = lane < tn ? p[g] * scale : __int_as_float(0xff800000);
                const float m = warp_max(sv);
                ew[warp][g][lane] = lane < tn ? expf(sv - m) : 0.0f;
                if (lane == g) my_max = m;
            }
        }
        __syncwarp();
        float o[G][DL];
#pragma unroll
        for (int g = 0; g < G; g++)
#pragma unroll
            for (int i = 0; i < DL; i++) o[g][i] = 0.0f;
        const float* vr = vc + row0 * kv_stride + kvh * HD + lane;
#pragma unroll 4
        for (int j = 0; j < tn; j++) {
            float v[DL];
#pragma unroll
            for (int i = 0; i < DL; i++) v[i] = vr[(u64)j * kv_stride + 32 * i];
#pragma unroll
            for (int g = 0; g < G; g++) {
                if (g < grp) {
                    const float e = ew[warp][g][j];
#pragma unroll
                    for (int i = 0; i < DL; i++) o[g][i] = fmaf(e, v[i], o[g][i]);
                }
            }
        }
        // Head h0 + g's partial of chunk c: in this block's shared memory when
        // it folds alone, else in the scratch.
        auto out_of = [&](int g) {
            return alone ? &local[warp][g][0] : part + (((u64)t * n_heads + h0 + g) * n_chunks + c) * P;
        };
#pragma unroll
        for (int g = 0; g < G; g++) {
            if (g < grp) {
                float* out = out_of(g);
#pragma unroll
                for (int i = 0; i < DL; i++) out[lane + 32 * i] = o[g][i];
            }
        }
        if (lane < grp) {
            float s = 0.0f;
            for (int j = 0; j < tn; j++) s += ew[warp][lane][j];
            float* out = out_of(lane);
            out[HD] = my_max;
            out[HD + 1] = s;
        }
    }
    if (alone) {
        __syncthreads();
        for (int g = warp; g < grp; g += W)
            fold_head<HD, true>(&local[0][g][0], (u64)G * P, nc, att_out + ((u64)t * n_heads + h0 + g) * HD, fw[warp],
                                fs[warp]);
        return;
    }
    // Publish this block's partials device-wide before taking a ticket.
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        int* ctr = counters + (u64)t * n_heads + h0;
        is_last = atomicAdd(ctr, 1) == (nc + W - 1) / W - 1;
        if (is_last) *ctr = 0;
    }
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    for (int g = warp; g < grp; g += W) {
        const u64 th = (u64)t * n_heads + h0 + g;
        fold_head<HD, false>(part + th * n_chunks * P, P, nc, att_out + th * HD, fw[warp], fs[warp]);
    }
}

static_assert(ATT_CHUNK == 32, "attn_decode: a lane per chunk row");

#define ATTN_DECODE(HD)                                                                                        \
    extern "C" __global__ void __launch_bounds__(32 * AD_WARPS)                                                \
        attn_decode_##HD(const float* q, float* kc, float* vc, float* part, int* counters, float* att_out,     \
                         const int4* place, const int* tables, int table_len, int n_heads, int n_kv, int hd,   \
                         int n_chunks, float scale, const float* k, const float* v, int neox, float base) {    \
        grid_dependency_sync();                                                                                \
        attn_decode_body<HD>(q, k, v, kc, vc, part, counters, att_out, place, tables, table_len, n_heads,      \
                             n_kv, n_chunks, scale, neox, base);                                               \
    }
ATTN_DECODE(64)
ATTN_DECODE(128)

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

// Tiled prefill (GQA-shared): grid (n_kv, ceil(n_tok / tq)), block 128
// threads = 8 teams of 16 lanes; HD (the head size) is 64 or 128, a
// compile-time constant so every loop over it unrolls and its shared-memory
// loads issue back to back (one instantiation per size, below).
// A block takes one KV head and tq query tokens: its R = tq * (n_heads /
// n_kv) <= 32 query rows (row r = token r / grp, head g * grp + r % grp) all
// read the same cache rows, so each chunk of PT_KC keys and values is loaded
// into shared memory once for R rows instead of once per (head, token).
// Team k owns rows k, k+8, k+16, k+24. For every chunk, lane l scores
// columns l and l+16 for all four of its rows at once (each key value loaded
// once serves four rows; each dot runs over HD in order), the team folds max
// and sum by a fixed xor butterfly (every lane gets the same bits), the
// online softmax rescales, and lane l accumulates output float4s l and l+16
// of its four rows over the chunk's columns in order (each value float4
// loaded once). Tiles run longest first for a better balance over the SMs.
// Fixed order everywhere, no atomics (WORKER-4710). Rows past the causal
// limit or the last token contribute exactly zero.
// Dynamic shared memory: 4 * (PT_KC*HD + R*(HD+1) + PT_KC*(HD+1) + (R+1)*(PT_KC+1)).
#define PT_KC 32
template <int HD>
__device__ __forceinline__ void attn_prefill_tile_body(const float* q, const float* kc, const float* vc, float* out,
                                                       const int4* place, const int* tables, int table_len,
                                                       int n_heads, int n_kv, int n_tok, int tq, float scale) {
    constexpr int HP = HD + 1, HD4 = HD / 4, NV = (HD4 + 15) / 16;
    extern __shared__ __align__(16) float sm[];
    const int g = blockIdx.x;
    const int grp = n_heads / n_kv;
    const int R = tq * grp;
    // The longest (last) tiles are dispatched first, so the short ones fill in behind them.
    const int tile0 = (gridDim.y - 1 - blockIdx.y) * tq;
    // One sequence's consecutive positions: row t sits at pos0 + t.
    const int4 pl = place[0];
    const int pos0 = pl.x;
    const int* table = tables + (u64)pl.y * table_len;
    const int kv_stride = n_kv * HD;
    float* Vs = sm;                  // PT_KC x HD, float4-aligned
    float* Qs = Vs + PT_KC * HD;     // R x (HD + 1)
    float* Ks = Qs + R * HP;         // PT_KC x (HD + 1)
    float* Ps = Ks + PT_KC * HP;     // (R + 1) x (PT_KC + 1); row R stays zero
    const int tid = threadIdx.x, team = tid >> 4, lane = tid & 15;
    for (int i = tid; i < R * HD; i += blockDim.x) {
        const int r = i / HD, d = i % HD;
        const int t = tile0 + r / grp, h = g * grp + r % grp;
        Qs[r * HP + d] = t < n_tok ? q[((u64)t * n_heads + h) * HD + d] : 0.0f;
    }
    for (int j = tid; j < PT_KC + 1; j += blockDim.x) Ps[R * (PT_KC + 1) + j] = 0.0f;
    const int t_last = min(tile0 + tq, n_tok) - 1;
    const int n_max = pos0 + t_last + 1;
    float m[4], s[4];
    float4 o[4][NV];
    int n_r[4];
#pragma unroll
    for (int p = 0; p < 4; p++) {
        const int r = team + 8 * p;
        const int t = tile0 + r / grp;
        n_r[p] = (r < R && t < n_tok) ? pos0 + t + 1 : 0;
        m[p] = -3.402823466e38f;
        s[p] = 0.0f;
#pragma unroll
        for (int v = 0; v < NV; v++) o[p][v] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
    const float4* V4 = (const float4*)Vs;
    for (int kv0 = 0; kv0 < n_max; kv0 += PT_KC) {
        // The previous chunk's Ks, Vs and Ps are no longer read.
        __syncthreads();
#pragma unroll
        for (int i = tid; i < PT_KC * HD4; i += 128) {
            const int c = i / HD4, d4 = i % HD4;
            const int row = kv0 + c;
            float4 kv = make_float4(0.f, 0.f, 0.f, 0.f), vv = kv;
            if (row < n_max) {
                const u64 pr = kv_row(table, row);
                kv = ((const float4*)(kc + pr * kv_stride + g * HD))[d4];
                vv = ((const float4*)(vc + pr * kv_stride + g * HD))[d4];
            }
            float* kd = Ks + c * HP + 4 * d4;
            kd[0] = kv.x;
            kd[1] = kv.y;
            kd[2] = kv.z;
            kd[3] = kv.w;
            ((float4*)Vs)[i] = vv;
        }
        __syncthreads();
        // Scores of the team's four rows against columns lane and lane + 16:
        // each key value loaded once serves four rows (eight independent
        // sums, each over d in order). Rows past R score row 0's query;
        // n_r = 0 masks every column.
        const float* qr[4];
#pragma unroll
        for (int p = 0; p < 4; p++) qr[p] = Qs + (team + 8 * p < R ? team + 8 * p : 0) * HP;
        const float* k0 = Ks + lane * HP;
        const float* k1 = Ks + (lane + 16) * HP;
        float a[4], b[4];
#pragma unroll
        for (int p = 0; p < 4; p++) a[p] = b[p] = 0.0f;
#pragma unroll
        for (int d = 0; d < HD; d++) {
            const float kv0v = k0[d], kv1v = k1[d];
#pragma unroll
            for (int p = 0; p < 4; p++) {
                const float qv = qr[p][d];
                a[p] = fmaf(qv, kv0v, a[p]);
                b[p] = fmaf(qv, kv1v, b[p]);
            }
        }
#pragma unroll
        for (int p = 0; p < 4; p++) {
            const int r = team + 8 * p;
            const bool ok0 = kv0 + lane < n_r[p], ok1 = kv0 + lane + 16 < n_r[p];
            const float s0 = a[p] * scale, s1 = b[p] * scale;
            float cm = fmaxf(ok0 ? s0 : -3.402823466e38f, ok1 ? s1 : -3.402823466e38f);
#pragma unroll
            for (int off = 8; off > 0; off >>= 1) cm = fmaxf(cm, __shfl_xor_sync(0xffffffffu, cm, off, 16));
            const float mn = fmaxf(m[p], cm);
            const float e0 = ok0 ? expf(s0 - mn) : 0.0f;
            const float e1 = ok1 ? expf(s1 - mn) : 0.0f;
            float es = e0 + e1;
#pragma unroll
            for (int off = 8; off > 0; off >>= 1) es += __shfl_xor_sync(0xffffffffu, es, off, 16);
            const float corr = expf(m[p] - mn);
            s[p] = s[p] * corr + es;
            m[p] = mn;
#pragma unroll
            for (int v = 0; v < NV; v++) {
                o[p][v].x *= corr;
                o[p][v].y *= corr;
                o[p][v].z *= corr;
                o[p][v].w *= corr;
            }
            if (r < R) {
                Ps[r * (PT_KC + 1) + lane] = e0;
                Ps[r * (PT_KC + 1) + lane + 16] = e1;
            }
        }
        // A row's weights are written and read by its own team (one warp).
        __syncwarp();
        // Each value float4 loaded once serves the team's four rows. Rows past
        // R read the all-zero row R of Ps.
        const float* pr[4];
#pragma unroll
        for (int p = 0; p < 4; p++) pr[p] = Ps + (team + 8 * p < R ? team + 8 * p : R) * (PT_KC + 1);
#pragma unroll
        for (int v = 0; v < NV; v++) {
            const int d4 = lane + 16 * v;
            if (d4 >= HD4) continue;
#pragma unroll
            for (int j = 0; j < PT_KC; j++) {
                const float4 vv = V4[j * HD4 + d4];
#pragma unroll
                for (int p = 0; p < 4; p++) {
                    const float e = pr[p][j];
                    o[p][v].x = fmaf(e, vv.x, o[p][v].x);
                    o[p][v].y = fmaf(e, vv.y, o[p][v].y);
                    o[p][v].z = fmaf(e, vv.z, o[p][v].z);
                    o[p][v].w = fmaf(e, vv.w, o[p][v].w);
                }
            }
        }
    }
#pragma unroll
    for (int p = 0; p < 4; p++) {
        const int r = team + 8 * p;
        const int t = tile0 + r / grp;
        if (r >= R || t >= n_tok) continue;
        float* oh = out + ((u64)t * n_heads + g * grp + r % grp) * HD;
#pragma unroll
        for (int v = 0; v < NV; v++) {
            const int d4 = lane + 16 * v;
            if (d4 >= HD4) continue;
            oh[4 * d4 + 0] = o[p][v].x / s[p];
            oh[4 * d4 + 1] = o[p][v].y / s[p];
            oh[4 * d4 + 2] = o[p][v].z / s[p];
            oh[4 * d4 + 3] = o[p][v].w / s[p];
        }
    }
}

extern "C" __global__ void __launch_bounds__(128)
    attn_prefill_tile_64(const float* q, const float* kc, const float* vc, float* out, const int4* place,
                          const int* tables, int table_len, int n_heads, int n_kv, int n_tok, int tq, float scale) {
    grid_dependency_sync();
    attn_prefill_tile_body<64>(q, kc, vc, out, place, tables, table_len, n_heads, n_kv, n_tok, tq, scale);
}

extern "C" __global__ void __launch_bounds__(128)
    attn_prefill_tile_128(const float* q, const float* kc, const float* vc, float* out, const int4* place,
                          const int* tables, int table_len, int n_heads, int n_kv, int n_tok, int tq, float scale) {
    grid_dependency_sync();
    attn_prefill_tile_body<128>(q, kc, vc, out, place, tables, table_len, n_heads, n_kv, n_tok, tq, scale);
}
