// attention.cu: attention of query tokens over the KV cache with GQA and a
// causal mask (KERNEL-ATTN): decode rows as split-KV ("flash-decoding").
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
// Prefill chunks of many tokens have their own kernels, without scratch
// (attention_prefill.cu).
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

// Split-KV decode attention with two warps per chunk and a GQA group per
// block (`attn_decode_<HD>`, HD 64 or 128), fusing the step's RoPE and cache
// store when given the step's k and v (decode_queries; a launch per layer
// saved): grid (n_kv, ceil(chunks / AD_CHUNKS), n_tok), block 32 * AD_WARPS
// threads (AD_WARPS = 2 * AD_CHUNKS), at most ATT_GROUP_MAX query heads per
// KV head. Warps 2w and 2w + 1 of block (g, b, t) take chunk AD_CHUNKS * b
// + w of row t for every query head of KV head g and compute exactly the
// partial attn_partial's block of that (row, head, chunk) computes: lane j
// of each scores cache row j of the chunk for its half of the group's
// heads (the key row loaded by both, its dot over HD in order), the chunk's
// max is a warp max (a max is the same whatever the order), weights
// exp(score - max) go to shared memory; after a barrier lane l of the even
// warp sums output dims l, l + 32, ... of the first half of the dims, the
// odd warp's the second half, over the chunk's rows in order, for every
// head, and the weights' sum runs in row order. Then each head's partials
// are folded in chunk order as attn_partial folds them (fold_head), warp w
// folding heads w, w + AD_WARPS, ...: by the block itself, from shared
// memory, when one block covers the row (up to 32 * AD_CHUNKS positions);
// otherwise by the last block of the (row, KV head) to finish, from global
// memory, found by an integer ticket on the group's first head's counter.
// Every output has attn_partial's bits (WORKER-4710; the kernel emulator and
// the GPU suite check it), so which launch shape serves a step changes
// nothing a row computes.
// Why: attn_partial starts a block of 128 threads per (row, head, chunk), in
// which 32 threads score and 64 sum, each a chain of dependent global
// loads, and its fold walks a long context's chunks one load after another.
// Here a block has AD_CHUNKS chunks of a whole group in flight, a short
// context never leaves the block, and a long one's fold loads a tile's
// maxima, sums and values before adding any of them. Two warps a chunk
// (before: one, 8 chunks a block): an ncu profile on an H100 (c65d4f2,
// position ~100) showed the kernel's time set by its busy warps' chains of
// about 1,900 dependent instructions (scores and value sums of 7 heads)
// issued every ~14 cycles, not by memory; splitting heads and dims between
// two warps halves each chain and doubles the blocks of a long context.

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
    constexpr int W = AD_WARPS, C = AD_CHUNKS, G = ATT_GROUP_MAX, DL = HD / 32, P = HD + 2;
    constexpr int G2 = (G + 1) / 2, DH = DL / 2;  // heads a warp scores, dims a lane sums
    static_assert(W == 2 * C && DL % 2 == 0, "two warps a chunk, each summing half the dims");
    __shared__ __align__(16) float qs[G * HD];
    __shared__ float ew[C][G][32];
    __shared__ float cmax[C][G];
    __shared__ float fw[W][32];
    __shared__ float fs[W][32];
    __shared__ float local[C][G][P];  // the partials, when one block covers the row
    __shared__ int is_last;
    const int kvh = blockIdx.x, t = blockIdx.z, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int cw = warp >> 1, half = warp & 1;  // the block's chunk this warp serves, and which half
    const int grp = n_heads / n_kv, h0 = kvh * grp;
    const int4 pl = place[t];
    const int n = pl.x + 1;
    const int nc = (n + ATT_CHUNK - 1) / ATT_CHUNK;
    if (blockIdx.y * C >= nc) return;  // the whole block: past this row's chunks
    const bool alone = nc <= C;         // this block holds every chunk of the row
    const int* table = tables + (u64)pl.y * table_len;
    const float* qg = q + ((u64)t * n_heads + h0) * HD;
    // The angles go where the weights go later (free until then).
    static_assert(C * G * 32 >= HD, "the rotation's angles fit the weights' shared memory");
    decode_queries<HD>(qg, k, v, kc, vc, qs, &ew[0][0][0], grp, t, kvh, n_kv, pl, blockIdx.y == (nc - 1) / C, neox,
                       base);
    __syncthreads();
    const int c = blockIdx.y * C + cw;
    const int t0 = c * ATT_CHUNK, tn = c < nc ? min(ATT_CHUNK, n - t0) : 0;
    const int kv_stride = n_kv * HD;
    const u64 row0 = tn > 0 ? kv_row(table, t0) : 0;
    // Scores: this warp's heads g0 .. g0 + gn of the group (the first half
    // of the group to the chunk's even warp, the rest to its odd warp).
    const int gh = (grp + 1) >> 1, g0 = half * gh, gn = half ? grp - gh : gh;
    if (tn > 0) {
        float p[G2];
#pragma unroll
        for (int g = 0; g < G2; g++) p[g] = 0.0f;
        if (lane < tn) {
            const float4* kr = (const float4*)(kc + (row0 + lane) * kv_stride + kvh * HD);
#pragma unroll 4
            for (int d = 0; d < HD / 4; d++) {
                const float4 kv = kr[d];
#pragma unroll
                for (int g = 0; g < G2; g++) {
                    if (g < gn) {
                        const float4 qv = ((const float4*)(qs + (g0 + g) * HD))[d];
                        p[g] = fmaf(qv.x, kv.x, p[g]);
                        p[g] = fmaf(qv.y, kv.y, p[g]);
                        p[g] = fmaf(qv.z, kv.z, p[g]);
                        p[g] = fmaf(qv.w, kv.w, p[g]);
                    }
                }
            }
        }
        // Each head's chunk max and row weights.
#pragma unroll
        for (int g = 0; g < G2; g++) {
            if (g < gn) {
                const float sv = lane < tn ? p[g] * scale : __int_as_float(0xff800000);
                const float m = warp_max(sv);
                ew[cw][g0 + g][lane] = lane < tn ? expf(sv - m) : 0.0f;
                if (lane == 0) cmax[cw][g0 + g] = m;
            }
        }
    }
    __syncthreads();  // both warps of a chunk see every head's weights
    if (tn > 0) {
        // Values: every head, dims lane + 32 i for this warp's half of i.
        float o[G][DH];
#pragma unroll
        for (int g = 0; g < G; g++)
#pragma unroll
            for (int i = 0; i < DH; i++) o[g][i] = 0.0f;
        const float* vr = vc + row0 * kv_stride + kvh * HD + lane + 32 * DH * half;
#pragma unroll 4
        for (int j = 0; j < tn; j++) {
            float vv[DH];
#pragma unroll
            for (int i = 0; i < DH; i++) vv[i] = vr[(u64)j * kv_stride + 32 * i];
#pragma unroll
            for (int g = 0; g < G; g++) {
                if (g < grp) {
                    const float e = ew[cw][g][j];
#pragma unroll
                    for (int i = 0; i < DH; i++) o[g][i] = fmaf(e, vv[i], o[g][i]);
                }
            }
        }
        // Head h0 + g's partial of chunk c: in this block's shared memory when
        // it folds alone, else in the scratch.
        auto out_of = [&](int g) {
            return alone ? &local[cw][g][0] : part + (((u64)t * n_heads + h0 + g) * n_chunks + c) * P;
        };
#pragma unroll
        for (int g = 0; g < G; g++) {
            if (g < grp) {
                float* out = out_of(g) + 32 * DH * half;
#pragma unroll
                for (int i = 0; i < DH; i++) out[lane + 32 * i] = o[g][i];
            }
        }
        if (half == 0 && lane < grp) {
            float s = 0.0f;
            for (int j = 0; j < tn; j++) s += ew[cw][lane][j];
            float* out = out_of(lane);
            out[HD] = cmax[cw][lane];
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
        is_last = atomicAdd(ctr, 1) == (nc + C - 1) / C - 1;
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
