// matvec.cu: y = W·x (+ bias) (+ y) reading GGUF blocks directly (WORKER-4700, KERNEL-MATVEC).
// Why: decode is bandwidth-bound; weights stay quantized in VRAM and are
// dequantized in registers, never copied to f32 (issue 5 point 3).
// Shape: one warp per output row; lane l takes 32-element runs l, l+32, ...
// in a fixed order, then a butterfly warp sum: bit-identical run to run.
// gridDim.y indexes independent (x, y) pairs of a batch (prefill), strides cols/rows.
// Decode launches use the staged `_st` variants below when their shared memory
// fits (same arithmetic and order, coalesced loads; see the comment there).
#include "common.cuh"

template <class Q>
__device__ __forceinline__ float row_dot(const u8* row, const float* __restrict__ x, const float* __restrict__ nw, int nsub) {
    const int lane = threadIdx.x & 31;
    float acc = 0.0f;
    for (int s = lane; s < nsub; s += 32) {
        float w[32];
        Q::deq32(row, s, w);
        const float4* xs = (const float4*)(x + s * 32);
        if (nw) {
            const float4* ns = (const float4*)(nw + s * 32);
#pragma unroll
            for (int i = 0; i < 8; i++) {
                const float4 n = ns[i];
                w[4 * i + 0] *= n.x;
                w[4 * i + 1] *= n.y;
                w[4 * i + 2] *= n.z;
                w[4 * i + 3] *= n.w;
            }
        }
        float p = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const float4 v = xs[i];
            p = fmaf(w[4 * i + 0], v.x, p);
            p = fmaf(w[4 * i + 1], v.y, p);
            p = fmaf(w[4 * i + 2], v.z, p);
            p = fmaf(w[4 * i + 3], v.w, p);
        }
        acc += p;
    }
    return warp_sum(acc);
}

template <class Q>
__device__ __forceinline__ void matvec_impl(const u8* __restrict__ W, u64 row_bytes,
                                            const float* __restrict__ x, const float* __restrict__ bias,
                                            float* __restrict__ y, int rows, int cols, int accumulate,
                                            const float* __restrict__ nw, float eps) {
    const int lane = threadIdx.x & 31;
    const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    const float scale = nw ? warp_rms(x, cols, eps) : 1.0f;
    float acc = row_dot<Q>(W + (u64)r * row_bytes, x, nw, cols >> 5) * scale;
    if (lane == 0) {
        if (bias) acc += bias[r];
        if (accumulate) acc += y[r];
        y[r] = acc;
    }
}

// Decode FFN input: out[r] = silu(Wg[r]·xn) * (Wu[r]·xn), xn = rmsnorm(x) * nw,
// gate and up in the same format: one launch instead of four.
template <class Q>
__device__ __forceinline__ void gate_up_impl(const u8* __restrict__ Wg, const u8* __restrict__ Wu, u64 row_bytes,
                                             const float* __restrict__ x, const float* __restrict__ nw, float eps,
                                             float* __restrict__ out, int rows, int cols) {
    const int lane = threadIdx.x & 31;
    const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    const float scale = warp_rms(x, cols, eps);
    const float g = row_dot<Q>(Wg + (u64)r * row_bytes, x, nw, cols >> 5) * scale;
    const float u = row_dot<Q>(Wu + (u64)r * row_bytes, x, nw, cols >> 5) * scale;
    if (lane == 0) out[r] = g / (1.0f + expf(-g)) * u;
}

// ---------------------------------------------------------------------------
// Staged decode variant (`_st`): the vector (and norm weight) is copied once
// per block into shared memory, padded to 36 floats per 32-element run so the
// float4 reads of lanes 128 bytes apart hit different banks; each warp then
// walks rows in a grid-stride loop and stages a row's blocks 32 runs (CHUNK
// bytes) at a time with coalesced 4-byte loads, requesting the next chunk
// (or the next row's first) before consuming the current one from shared
// memory, so loads stay in flight while it computes. Why: the plain kernel's lanes read
// their runs byte by byte at a 18..210-byte stride, so every load instruction
// touched ~8 cache lines and the vector reads ~28: L1-bound at a fraction of
// HBM bandwidth. The arithmetic per run and the per-lane order of runs are
// exactly those of row_dot, so the result is bit-identical to the plain kernel.
// Shared bytes: 4 * (cols/32) * XPAD * (nw ? 2 : 1) + warps * (CHUNK + 8);
// the launcher picks this variant only when that fits the 48 KB default.
// The first/last 4-byte word of a staged chunk may hold bytes just outside the
// row (never outside the 4-byte-aligned word holding a row byte, so never
// outside the allocation's granularity); those bytes are never used.
// ---------------------------------------------------------------------------
#define XPAD 36

// The vector and (when fused) the norm weight of a single-vector staged
// kernel: every load of a round issued before any is stored (K float4s per
// thread and vector: 2 with the norm weight, 5 without), so both arrive in
// one memory round trip at the Qwen decode widths (896 with the norm
// weight, 4864 without, over 256 threads) instead of one round trip each,
// or two for a 4864-wide vector. K is as large as the registers allow
// without spilling beside a staged chunk.
template <int K>
__device__ __forceinline__ void stage_vecs_k(const float* __restrict__ x, float* xs, const float* __restrict__ nw,
                                             float* ns, int cols) {
    const float4* x4 = (const float4*)x;
    const float4* n4 = (const float4*)nw;
    const int n = cols >> 2;
    for (int base = threadIdx.x; base < n; base += K * blockDim.x) {
        float4 tx[K], tn[K];
#pragma unroll
        for (int k = 0; k < K; k++) {
            const int i = base + k * blockDim.x;
            if (i < n) {
                tx[k] = x4[i];
                if (nw) tn[k] = n4[i];
            }
        }
#pragma unroll
        for (int k = 0; k < K; k++) {
            const int i = base + k * blockDim.x;
            if (i < n) {
                const int at = ((4 * i) >> 5) * XPAD + ((4 * i) & 31);
                *(float4*)(xs + at) = tx[k];
                if (nw) *(float4*)(ns + at) = tn[k];
            }
        }
    }
}

// Copy one vector (16-byte aligned, cols % 32 == 0) into the padded layout
// (the batched `_bst` kernels, a vector per token): four float4s per thread
// issued before any is stored.
__device__ __forceinline__ void stage_vec(const float* __restrict__ v, float* sh, int cols) {
    stage_vecs_k<4>(v, sh, nullptr, nullptr, cols);
}

__device__ __forceinline__ void stage_vecs(const float* x, float* xs, const float* nw, float* ns, int cols) {
    if (nw) {
        stage_vecs_k<2>(x, xs, nw, ns, cols);
    } else {
        stage_vecs_k<5>(x, xs, nullptr, nullptr, cols);
    }
}

// warp_rms over the staged copy: the same lanes sum the same float4s in the
// same order (so the same bits), without another trip to global memory.
__device__ __forceinline__ float warp_rms_sh(const float* xs, int cols, float eps) {
    const int lane = threadIdx.x & 31;
    float ss = 0.0f;
#pragma unroll 4
    for (int i = lane; i < (cols >> 2); i += 32) {
        const float4 v = *(const float4*)(xs + ((4 * i) >> 5) * XPAD + ((4 * i) & 31));
        ss = fmaf(v.x, v.x, ss);
        ss = fmaf(v.y, v.y, ss);
        ss = fmaf(v.z, v.z, ss);
        ss = fmaf(v.w, v.w, ss);
    }
    ss = warp_sum(ss);
    return 1.0f / sqrtf(ss / (float)cols + eps);
}

// Registers per lane holding one staged chunk in flight: CHUNK/4 + 1 words
// (the +1 for a chunk that does not start 4-byte aligned).
#define NWL(Q) ((Q::CHUNK / 4 + 1 + 31) / 32)

struct Staged {
    int off;     // byte offset of the chunk inside its first word
    int nwords;  // words covering the chunk
};

// Issue the loads of chunk c of a row into registers (all independent, so
// they are in flight together; nothing waits on them until they are stored).
template <class Q>
__device__ __forceinline__ Staged fetch_chunk(const u8* row, u64 row_bytes, int c, u32 (&v)[NWL(Q)]) {
    const int lane = threadIdx.x & 31;
    const u8* cb = row + (u64)c * Q::CHUNK;
    const u64 left = row_bytes - (u64)c * Q::CHUNK;
    const int nb = left < (u64)Q::CHUNK ? (int)left : Q::CHUNK;
    Staged st;
    st.off = (int)((u64)cb & 3);
    st.nwords = (st.off + nb + 3) >> 2;
    const u32* src = (const u32*)(cb - st.off);
#pragma unroll
    for (int k = 0; k < NWL(Q); k++) {
        const int i = lane + 32 * k;
        v[k] = i < st.nwords ? __ldg(src + i) : 0u;
    }
    return st;
}

// Dot of one row with the staged vector. On entry v/st hold the row's chunk 0
// (already requested); each chunk is stored to the warp's shared slot, the
// next chunk (of this row, else chunk 0 of `next` when not null) is requested
// at once, and the stored one is consumed meanwhile. Per lane: runs lane,
// lane+32, ... in order, as row_dot; then the same butterfly sum.
template <class Q>
__device__ __forceinline__ float row_dot_st(const u8* row, u64 row_bytes, const u8* next, const float* xs,
                                            const float* ns, u32* wsh, int nsub, u32 (&v)[NWL(Q)], Staged& st) {
    const int lane = threadIdx.x & 31;
    const int nch = (nsub + 31) >> 5;
    float acc = 0.0f;
    for (int c = 0; c < nch; c++) {
        __syncwarp();  // every lane is done reading the previous chunk
#pragma unroll
        for (int k = 0; k < NWL(Q); k++) {
            const int i = lane + 32 * k;
            if (i < st.nwords) wsh[i] = v[k];
        }
        __syncwarp();
        const int off = st.off;
        if (c + 1 < nch) {
            st = fetch_chunk<Q>(row, row_bytes, c + 1, v);
        } else if (next) {
            st = fetch_chunk<Q>(next, row_bytes, 0, v);
        }
        const int s = c * 32 + lane;
        if (s < nsub) {
            float w[32];
            Q::deq32((const u8*)wsh + off, lane, w);
            const float4* xv = (const float4*)(xs + s * XPAD);
            if (ns) {
                const float4* nv = (const float4*)(ns + s * XPAD);
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    const float4 n = nv[i];
                    w[4 * i + 0] *= n.x;
                    w[4 * i + 1] *= n.y;
                    w[4 * i + 2] *= n.z;
                    w[4 * i + 3] *= n.w;
                }
            }
            float p = 0.0f;
#pragma unroll
            for (int i = 0; i < 8; i++) {
                const float4 xx = xv[i];
                p = fmaf(w[4 * i + 0], xx.x, p);
                p = fmaf(w[4 * i + 1], xx.y, p);
                p = fmaf(w[4 * i + 2], xx.z, p);
                p = fmaf(w[4 * i + 3], xx.w, p);
            }
            acc += p;
        }
    }
    return warp_sum(acc);
}

// The first weight chunk is requested before the vector is staged, so the
// two memory round trips overlap.
template <class Q>
__device__ __forceinline__ void matvec_st_impl(const u8* __restrict__ W, u64 row_bytes,
                                               const float* __restrict__ x, const float* __restrict__ bias,
                                               float* __restrict__ y, int rows, int cols, int accumulate,
                                               const float* __restrict__ nw, float eps) {
    extern __shared__ __align__(16) float smem[];
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nwarp = blockDim.x >> 5;
    const int nsub = cols >> 5;
    const int r0 = blockIdx.x * nwarp + wid, stride = gridDim.x * nwarp;
    float* xs = smem;
    float* ns = nw ? smem + nsub * XPAD : nullptr;
    u32* wsh = (u32*)(smem + nsub * XPAD * (nw ? 2 : 1)) + wid * (Q::CHUNK / 4 + 2);
    u32 v[NWL(Q)];
    Staged st = {0, 0};
    if (r0 < rows) st = fetch_chunk<Q>(W + (u64)r0 * row_bytes, row_bytes, 0, v);
    stage_vecs(x, xs, nw, ns, cols);
    __syncthreads();
    const float scale = nw ? warp_rms_sh(xs, cols, eps) : 1.0f;
    for (int r = r0; r < rows; r += stride) {
        const u8* next = (long long)r + stride < rows ? W + (u64)(r + stride) * row_bytes : nullptr;
        float acc = row_dot_st<Q>(W + (u64)r * row_bytes, row_bytes, next, xs, ns, wsh, nsub, v, st) * scale;
        if (lane == 0) {
            if (bias) acc += bias[r];
            if (accumulate) acc += y[r];
            y[r] = acc;
        }
    }
}

template <class Q>
__device__ __forceinline__ void gate_up_st_impl(const u8* __restrict__ Wg, const u8* __restrict__ Wu, u64 row_bytes,
                                                const float* __restrict__ x, const float* __restrict__ nw, float eps,
                                                float* __restrict__ out, int rows, int cols) {
    extern __shared__ __align__(16) float smem[];
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nwarp = blockDim.x >> 5;
    const int nsub = cols >> 5;
    const int r0 = blockIdx.x * nwarp + wid, stride = gridDim.x * nwarp;
    float* xs = smem;
    float* ns = smem + nsub * XPAD;
    u32* wsh = (u32*)(smem + nsub * XPAD * 2) + wid * (Q::CHUNK / 4 + 2);
    u32 v[NWL(Q)];
    Staged st = {0, 0};
    if (r0 < rows) st = fetch_chunk<Q>(Wg + (u64)r0 * row_bytes, row_bytes, 0, v);
    stage_vecs(x, xs, nw, ns, cols);
    __syncthreads();
    const float scale = warp_rms_sh(xs, cols, eps);
    for (int r = r0; r < rows; r += stride) {
        const u8* gr = Wg + (u64)r * row_bytes;
        const u8* ur = Wu + (u64)r * row_bytes;
        const u8* next = (long long)r + stride < rows ? Wg + (u64)(r + stride) * row_bytes : nullptr;
        const float g = row_dot_st<Q>(gr, row_bytes, ur, xs, ns, wsh, nsub, v, st) * scale;
        const float u = row_dot_st<Q>(ur, row_bytes, next, xs, ns, wsh, nsub, v, st) * scale;
        if (lane == 0) out[r] = g / (1.0f + expf(-g)) * u;
    }
}

// ---------------------------------------------------------------------------
// Batched staged variant (`_bst`, `_gu_bst`, `_qkv_bst`) for the rows of a
// batched decode step of 2 to 16 sequences (`_qkv_bst`: any number; issue 11
// points 4, 5 and 7). A block stages `per` token vectors (and the norm weight)
// into shared memory once, in the padded layout of the `_st` kernels; its
// warps then walk the rows with a grid stride, as the lone `_st` kernels do,
// staging each row's weight chunks as row_dot_st does and dotting every
// dequantized run with every staged vector. Per output (row, token) the runs
// are taken by the same lanes in the same order, scaled and summed as in
// row_dot_st and reduced by the same butterfly, so a row gets the bits a lone
// vector gets from the `_st` kernels (WORKER-4710); which warp takes a row
// changes no bit. gridDim.x = token groups of `per` (fastest, so the groups of
// one row block run together and share its weights in L2); gridDim.y = blocks
// walking the rows (`launch_shape::batched_launch`: a few per SM, so the
// vectors are staged a few times per SM, not once per 16 rows).
// Shared bytes: 4 * nsub * XPAD * (per + (nw ? 1 : 0)) + 4 * (CHUNK + 8).
// ---------------------------------------------------------------------------
#define BST_NT 8

template <class Q>
__device__ __forceinline__ void rows_dot_st(const u8* row, u64 row_bytes, const u8* next, const float* xs,
                                            int xstride, int nt, const float* ns, u32* wsh, int nsub,
                                            u32 (&v)[NWL(Q)], Staged& st, float (&acc)[BST_NT]) {
    const int lane = threadIdx.x & 31;
    const int nch = (nsub + 31) >> 5;
#pragma unroll
    for (int t = 0; t < BST_NT; t++) acc[t] = 0.0f;
    for (int c = 0; c < nch; c++) {
        __syncwarp();  // every lane is done reading the previous chunk
#pragma unroll
        for (int k = 0; k < NWL(Q); k++) {
            const int i = lane + 32 * k;
            if (i < st.nwords) wsh[i] = v[k];
        }
        __syncwarp();
        const int off = st.off;
        if (c + 1 < nch) {
            st = fetch_chunk<Q>(row, row_bytes, c + 1, v);
        } else if (next) {
            st = fetch_chunk<Q>(next, row_bytes, 0, v);
        }
        const int s = c * 32 + lane;
        if (s < nsub) {
            float w[32];
            Q::deq32((const u8*)wsh + off, lane, w);
            if (ns) {
                const float4* nv = (const float4*)(ns + s * XPAD);
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    const float4 n = nv[i];
                    w[4 * i + 0] *= n.x;
                    w[4 * i + 1] *= n.y;
                    w[4 * i + 2] *= n.z;
                    w[4 * i + 3] *= n.w;
                }
            }
#pragma unroll
            for (int t = 0; t < BST_NT; t++) {
                if (t < nt) {
                    const float4* xv = (const float4*)(xs + t * xstride + s * XPAD);
                    float p = 0.0f;
#pragma unroll
                    for (int i = 0; i < 8; i++) {
                        const float4 xx = xv[i];
                        p = fmaf(w[4 * i + 0], xx.x, p);
                        p = fmaf(w[4 * i + 1], xx.y, p);
                        p = fmaf(w[4 * i + 2], xx.z, p);
                        p = fmaf(w[4 * i + 3], xx.w, p);
                    }
                    acc[t] += p;
                }
            }
        }
    }
#pragma unroll
    for (int t = 0; t < BST_NT; t++) acc[t] = warp_sum(acc[t]);
}

// Shared layout and first fetch common to the batched staged kernels.
// `row_ptr(r)` is row r's first byte (of the concatenated [Wq; Wk; Wv]
// for `_qkv_bst`).
struct BstBlock {
    int tb, nt, r0, stride, xstride;
    float* xs;
    float* ns;
    u32* wsh;
};

// WSH: words of a warp's staged-chunk slot (the largest chunk the block
// stages: a mixed q/k/v launch stages two formats' chunks in one slot).
template <class Q, class RowPtr, int WSH = Q::CHUNK / 4 + 2>
__device__ __forceinline__ BstBlock bst_block(RowPtr row_ptr, u64 row_bytes, const float* x, const float* nw,
                                              int rows, int cols, int batch, int per, u32 (&v)[NWL(Q)],
                                              Staged& st) {
    extern __shared__ __align__(16) float smem[];
    const int wid = threadIdx.x >> 5, nwarp = blockDim.x >> 5;
    const int nsub = cols >> 5;
    BstBlock b;
    b.tb = blockIdx.x * per;
    b.nt = min(per, batch - b.tb);
    b.r0 = blockIdx.y * nwarp + wid;
    b.stride = gridDim.y * nwarp;
    b.xstride = nsub * XPAD;
    b.xs = smem;
    b.ns = nw ? smem + per * b.xstride : nullptr;
    b.wsh = (u32*)(smem + (per + (nw ? 1 : 0)) * b.xstride) + wid * WSH;
    st.off = 0;
    st.nwords = 0;
    if (b.r0 < rows) st = fetch_chunk<Q>(row_ptr(b.r0), row_bytes, 0, v);
    for (int t = 0; t < b.nt; t++) stage_vec(x + (u64)(b.tb + t) * cols, b.xs + t * b.xstride, cols);
    if (nw) stage_vec(nw, b.ns, cols);
    __syncthreads();
    return b;
}

// The row a warp takes after r, when there is one.
template <class RowPtr>
__device__ __forceinline__ const u8* bst_next(RowPtr row_ptr, int r, int stride, int rows) {
    return (long long)r + stride < rows ? row_ptr(r + stride) : nullptr;
}

template <class Q>
__device__ __forceinline__ void matmul_st_impl(const u8* __restrict__ W, u64 row_bytes,
                                               const float* __restrict__ x, const float* __restrict__ bias,
                                               float* __restrict__ y, int rows, int cols, int accumulate, int batch,
                                               int per, const float* __restrict__ nw,
                                               const float* __restrict__ scale) {
    const int lane = threadIdx.x & 31;
    auto row_ptr = [&](int r) -> const u8* { return W + (u64)r * row_bytes; };
    u32 v[NWL(Q)];
    Staged st;
    const BstBlock b = bst_block<Q>(row_ptr, row_bytes, x, nw, rows, cols, batch, per, v, st);
    for (int r = b.r0; r < rows; r += b.stride) {
        const u8* next = bst_next(row_ptr, r, b.stride, rows);
        float acc[BST_NT];
        rows_dot_st<Q>(row_ptr(r), row_bytes, next, b.xs, b.xstride, b.nt, b.ns, b.wsh, cols >> 5, v, st, acc);
        if (lane == 0) {
#pragma unroll
            for (int t = 0; t < BST_NT; t++) {
                if (t < b.nt) {
                    float a = acc[t];
                    if (nw) a *= scale[b.tb + t];
                    if (bias) a += bias[r];
                    float* yt = y + (u64)(b.tb + t) * rows + r;
                    if (accumulate) a += *yt;
                    *yt = a;
                }
            }
        }
    }
}

template <class Q>
__device__ __forceinline__ void gate_up_bst_impl(const u8* __restrict__ Wg, const u8* __restrict__ Wu,
                                                 u64 row_bytes, const float* __restrict__ x,
                                                 const float* __restrict__ nw, const float* __restrict__ scale,
                                                 float* __restrict__ out, int rows, int cols, int batch, int per) {
    const int lane = threadIdx.x & 31;
    auto gate_row = [&](int r) -> const u8* { return Wg + (u64)r * row_bytes; };
    u32 v[NWL(Q)];
    Staged st;
    const BstBlock b = bst_block<Q>(gate_row, row_bytes, x, nw, rows, cols, batch, per, v, st);
    for (int r = b.r0; r < rows; r += b.stride) {
        const u8* ur = Wu + (u64)r * row_bytes;
        const u8* next = bst_next(gate_row, r, b.stride, rows);
        float ag[BST_NT], au[BST_NT];
        rows_dot_st<Q>(gate_row(r), row_bytes, ur, b.xs, b.xstride, b.nt, b.ns, b.wsh, cols >> 5, v, st, ag);
        rows_dot_st<Q>(ur, row_bytes, next, b.xs, b.xstride, b.nt, b.ns, b.wsh, cols >> 5, v, st, au);
        if (lane == 0) {
#pragma unroll
            for (int t = 0; t < BST_NT; t++) {
                if (t < b.nt) {
                    const float g = ag[t] * scale[b.tb + t];
                    const float u = au[t] * scale[b.tb + t];
                    out[(u64)(b.tb + t) * rows + r] = g / (1.0f + expf(-g)) * u;
                }
            }
        }
    }
}

// The three matrices of a fused q/k/v launch as one concatenation
// [Wq; Wk; Wv]: q and k in format QA, v in format QB (QB == QA, or a pair
// of QKV_MIXED_PAIRS: quant mixes such as Q4_K_M give v more bits in half
// the layers). Rows below rq + rk are q/k rows (row_bytes qk_bytes), the
// rest v rows (v_bytes). qkv_target says where a row's output goes (its
// index i within its own matrix, that matrix's width, bias and output).
// Both fused kernels (`_qkv_st`, `_qkv_bst`) route rows through these.
struct QkvMats {
    const u8 *Wq, *Wk, *Wv;
    u64 qk_bytes, v_bytes;
    int rq, rk, rv;
    __device__ __forceinline__ int rqk() const { return rq + rk; }
    __device__ __forceinline__ int rows() const { return rq + rk + rv; }
    __device__ __forceinline__ const u8* qk_row(int r) const {
        return r < rq ? Wq + (u64)r * qk_bytes : Wk + (u64)(r - rq) * qk_bytes;
    }
    __device__ __forceinline__ const u8* v_row(int r) const { return Wv + (u64)(r - rq - rk) * v_bytes; }
};

struct QkvTarget {
    int i, width;
    const float* bias;
    float* y;
};

__device__ __forceinline__ QkvTarget qkv_target(int r, int rq, int rk, int rv, const float* bq, const float* bk,
                                                const float* bv, float* yq, float* yk, float* yv) {
    if (r < rq) return {r, rq, bq, yq};
    if (r < rq + rk) return {r - rq, rk, bk, yk};
    return {r - rq - rk, rv, bv, yv};
}

// Words of a warp's staged-chunk slot in a q/k/v launch: the larger chunk.
template <class QA, class QB>
struct QkvSlot {
    static constexpr int WORDS = (QA::CHUNK > QB::CHUNK ? QA::CHUNK : QB::CHUNK) / 4 + 2;
};

// A warp's walk over its rows of the concatenation (r0, r0 + stride, ...):
// the q/k rows by row_dot_st<QA> (or rows_dot_st), then the v rows by
// <QB>. Each row's next row is requested while this one is consumed, as in
// the one-matrix kernels; the first v row is requested (into its own
// registers, in QB's layout) before the last q/k row is consumed, so the
// switch of format costs no extra round trip. `dot(row, bytes, next, v,
// st, r)` runs one row's product and writes its outputs; `va`/`sa` hold
// the warp's first q/k row's chunk 0 when r0 < rq + rk.
template <class QA, class QB, class DotA, class DotB>
__device__ __forceinline__ void qkv_walk(const QkvMats& m, int r0, int stride, u32 (&va)[NWL(QA)], Staged& sa,
                                         DotA dot_a, DotB dot_b) {
    u32 vb[NWL(QB)];
    Staged sb = {0, 0};
    bool fetched_b = false;
    int r = r0;
    for (; r < m.rqk(); r += stride) {
        const bool last_qk = (long long)r + stride >= m.rqk();
        const u8* next = last_qk ? nullptr : m.qk_row(r + stride);
        if (last_qk && (long long)r + stride < m.rows()) {
            sb = fetch_chunk<QB>(m.v_row(r + stride), m.v_bytes, 0, vb);
            fetched_b = true;
        }
        dot_a(m.qk_row(r), m.qk_bytes, next, va, sa, r);
    }
    if (r < m.rows() && !fetched_b) sb = fetch_chunk<QB>(m.v_row(r), m.v_bytes, 0, vb);
    for (; r < m.rows(); r += stride) {
        const u8* next = (long long)r + stride < m.rows() ? m.v_row(r + stride) : nullptr;
        dot_b(m.v_row(r), m.v_bytes, next, vb, sb, r);
    }
}

// q, k and v of a decode step of several rows in one launch: the rows of the
// concatenation [Wq; Wk; Wv] on the grid stride, each (row, token) output
// the normed `_st` kernel's bits for that row alone (the sum times the
// token's RMS scale, then the bias), written to yq/yk/yv ([batch][rq] etc.).
// One staging of the vectors serves all three matrices, where three
// `_bst` launches staged them three times.
template <class QA, class QB>
__device__ __forceinline__ void qkv_bst_impl(const QkvMats m, const float* __restrict__ x,
                                             const float* __restrict__ nw, const float* __restrict__ scale,
                                             const float* __restrict__ bq, const float* __restrict__ bk,
                                             const float* __restrict__ bv, float* __restrict__ yq,
                                             float* __restrict__ yk, float* __restrict__ yv, int cols, int batch,
                                             int per) {
    const int lane = threadIdx.x & 31;
    auto qk_row = [&](int r) { return m.qk_row(r); };
    u32 va[NWL(QA)];
    Staged sa;
    // The first fetch only for a warp starting on a q/k row (`rows` = rq + rk).
    const BstBlock b =
        bst_block<QA, decltype(qk_row), QkvSlot<QA, QB>::WORDS>(qk_row, m.qk_bytes, x, nw, m.rqk(), cols, batch,
                                                                 per, va, sa);
    auto write = [&](const float (&acc)[BST_NT], int r) {
        if (lane == 0) {
            const QkvTarget o = qkv_target(r, m.rq, m.rk, m.rv, bq, bk, bv, yq, yk, yv);
#pragma unroll
            for (int t = 0; t < BST_NT; t++) {
                if (t < b.nt) {
                    float a = acc[t] * scale[b.tb + t];
                    if (o.bias) a += o.bias[o.i];
                    o.y[(u64)(b.tb + t) * o.width + o.i] = a;
                }
            }
        }
    };
    auto dot_a = [&](const u8* row, u64 bytes, const u8* next, u32(&v)[NWL(QA)], Staged& st, int r) {
        float acc[BST_NT];
        rows_dot_st<QA>(row, bytes, next, b.xs, b.xstride, b.nt, b.ns, b.wsh, cols >> 5, v, st, acc);
        write(acc, r);
    };
    auto dot_b = [&](const u8* row, u64 bytes, const u8* next, u32(&v)[NWL(QB)], Staged& st, int r) {
        float acc[BST_NT];
        rows_dot_st<QB>(row, bytes, next, b.xs, b.xstride, b.nt, b.ns, b.wsh, cols >> 5, v, st, acc);
        write(acc, r);
    };
    qkv_walk<QA, QB>(m, b.r0, b.stride, va, sa, dot_a, dot_b);
}

// Decode q, k, v projections in one launch (one normed input; q and k in
// QA, v in QB): row r of the concatenation [Wq; Wk; Wv] goes to yq/yk/yv by
// range. Each row's value is computed exactly as matvec_st_impl computes it
// for its own matrix (bit-identical to three fused-norm launches); it saves
// two launches per layer and runs the three small matrices as one grid.
template <class QA, class QB>
__device__ __forceinline__ void qkv_st_impl(const QkvMats m, const float* __restrict__ x,
                                            const float* __restrict__ nw, float eps, const float* __restrict__ bq,
                                            const float* __restrict__ bk, const float* __restrict__ bv,
                                            float* __restrict__ yq, float* __restrict__ yk, float* __restrict__ yv,
                                            int cols) {
    extern __shared__ __align__(16) float smem[];
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nwarp = blockDim.x >> 5;
    const int nsub = cols >> 5;
    const int r0 = blockIdx.x * nwarp + wid, stride = gridDim.x * nwarp;
    float* xs = smem;
    float* ns = smem + nsub * XPAD;
    u32* wsh = (u32*)(smem + nsub * XPAD * 2) + wid * QkvSlot<QA, QB>::WORDS;
    u32 va[NWL(QA)];
    Staged sa = {0, 0};
    if (r0 < m.rqk()) sa = fetch_chunk<QA>(m.qk_row(r0), m.qk_bytes, 0, va);
    stage_vecs(x, xs, nw, ns, cols);
    __syncthreads();
    const float scale = warp_rms_sh(xs, cols, eps);
    auto write = [&](float acc, int r) {
        if (lane == 0) {
            const QkvTarget o = qkv_target(r, m.rq, m.rk, m.rv, bq, bk, bv, yq, yk, yv);
            if (o.bias) acc += o.bias[o.i];
            o.y[o.i] = acc;
        }
    };
    auto dot_a = [&](const u8* row, u64 bytes, const u8* next, u32(&v)[NWL(QA)], Staged& st, int r) {
        write(row_dot_st<QA>(row, bytes, next, xs, ns, wsh, nsub, v, st) * scale, r);
    };
    auto dot_b = [&](const u8* row, u64 bytes, const u8* next, u32(&v)[NWL(QB)], Staged& st, int r) {
        write(row_dot_st<QB>(row, bytes, next, xs, ns, wsh, nsub, v, st) * scale, r);
    };
    qkv_walk<QA, QB>(m, r0, stride, va, sa, dot_a, dot_b);
}

// Batched variant: each warp dequantizes a 32-element run once and applies
// it to NT token vectors, so the weights are read once per NT tokens.
// gridDim.y = ceil(batch / NT); each token's sum keeps the same fixed order
// as the single-vector kernel. Prefill chunks call it with nw == 0. A
// batched decode step (one row per sequence) calls it with the norm weight
// nw and each row's RMS scale from `row_rms`: the run is scaled by nw before
// the dot and the sum by the row's scale, exactly as row_dot / matvec_impl
// do for one vector, so a decode row gets the same bits alone or batched
// (WORKER-4710, issue 11 point 5).
__device__ __forceinline__ void scale_run(float (&w)[32], const float* __restrict__ nw, int s) {
    const float4* ns = (const float4*)(nw + s * 32);
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const float4 n = ns[i];
        w[4 * i + 0] *= n.x;
        w[4 * i + 1] *= n.y;
        w[4 * i + 2] *= n.z;
        w[4 * i + 3] *= n.w;
    }
}

// The in-order dot of one dequantized run with 32 elements of a vector.
__device__ __forceinline__ float run_dot(const float (&w)[32], const float* __restrict__ x) {
    const float4* xs = (const float4*)x;
    float p = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const float4 v = xs[i];
        p = fmaf(w[4 * i + 0], v.x, p);
        p = fmaf(w[4 * i + 1], v.y, p);
        p = fmaf(w[4 * i + 2], v.z, p);
        p = fmaf(w[4 * i + 3], v.w, p);
    }
    return p;
}

template <class Q, int NT>
__device__ __forceinline__ void matmul_impl(const u8* __restrict__ W, u64 row_bytes,
                                            const float* __restrict__ x, const float* __restrict__ bias,
                                            float* __restrict__ y, int rows, int cols, int accumulate,
                                            int batch, const float* __restrict__ nw,
                                            const float* __restrict__ scale) {
    const int lane = threadIdx.x & 31;
    const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    const int tb = blockIdx.y * NT;
    const int nt = min(NT, batch - tb);
    x += (u64)tb * cols;
    y += (u64)tb * rows;
    const u8* row = W + (u64)r * row_bytes;
    const int nsub = cols >> 5;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    for (int s = lane; s < nsub; s += 32) {
        float w[32];
        Q::deq32(row, s, w);
        if (nw) scale_run(w, nw, s);
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (t < nt) acc[t] += run_dot(w, x + (u64)t * cols + s * 32);
        }
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float a = warp_sum(acc[t]);
        if (lane == 0 && t < nt) {
            if (nw) a *= scale[tb + t];
            if (bias) a += bias[r];
            if (accumulate) a += y[(u64)t * rows + r];
            y[(u64)t * rows + r] = a;
        }
    }
}

// Batched decode FFN input: out[t][r] = silu(g) * u with g, u the rows'
// dots with rmsnorm(x_t) * nw, computed as gate_up_impl computes them for
// one vector (same bits per row; see matmul_impl).
template <class Q, int NT>
__device__ __forceinline__ void gate_up_b_impl(const u8* __restrict__ Wg, const u8* __restrict__ Wu,
                                               u64 row_bytes, const float* __restrict__ x,
                                               const float* __restrict__ nw, const float* __restrict__ scale,
                                               float* __restrict__ out, int rows, int cols, int batch) {
    const int lane = threadIdx.x & 31;
    const int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    const int tb = blockIdx.y * NT;
    const int nt = min(NT, batch - tb);
    x += (u64)tb * cols;
    out += (u64)tb * rows;
    const u8* gr = Wg + (u64)r * row_bytes;
    const u8* ur = Wu + (u64)r * row_bytes;
    const int nsub = cols >> 5;
    float ag[NT], au[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) ag[t] = au[t] = 0.0f;
    for (int s = lane; s < nsub; s += 32) {
        float w[32];
        Q::deq32(gr, s, w);
        scale_run(w, nw, s);
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (t < nt) ag[t] += run_dot(w, x + (u64)t * cols + s * 32);
        }
        Q::deq32(ur, s, w);
        scale_run(w, nw, s);
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (t < nt) au[t] += run_dot(w, x + (u64)t * cols + s * 32);
        }
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        const float g0 = warp_sum(ag[t]);
        const float u0 = warp_sum(au[t]);
        if (lane == 0 && t < nt) {
            const float g = g0 * scale[tb + t];
            const float u = u0 * scale[tb + t];
            out[(u64)t * rows + r] = g / (1.0f + expf(-g)) * u;
        }
    }
}

#define MATVEC(name, Q)                                                                         \
    extern "C" __global__ void name(const u8* W, u64 row_bytes, const float* x, const float* bias, \
                                    float* y, int rows, int cols, int accumulate, const float* nw, \
                                    float eps) { grid_dependency_sync();                                                \
        matvec_impl<Q>(W, row_bytes, x, bias, y, rows, cols, accumulate, nw, eps);              \
    }                                                                                           \
    extern "C" __global__ void name##_gu(const u8* Wg, const u8* Wu, u64 row_bytes, const float* x, \
                                         const float* nw, float eps, float* out, int rows, int cols) { grid_dependency_sync(); \
        gate_up_impl<Q>(Wg, Wu, row_bytes, x, nw, eps, out, rows, cols);                        \
    }                                                                                           \
    extern "C" __global__ void name##_b8(const u8* W, u64 row_bytes, const float* x, const float* bias, \
                                         float* y, int rows, int cols, int accumulate, int batch, \
                                         const float* nw, const float* scale) { grid_dependency_sync();                 \
        matmul_impl<Q, 8>(W, row_bytes, x, bias, y, rows, cols, accumulate, batch, nw, scale);  \
    }                                                                                           \
    extern "C" __global__ void name##_gu_b8(const u8* Wg, const u8* Wu, u64 row_bytes, const float* x, \
                                            const float* nw, const float* scale, float* out, int rows, \
                                            int cols, int batch) { grid_dependency_sync();                              \
        gate_up_b_impl<Q, 8>(Wg, Wu, row_bytes, x, nw, scale, out, rows, cols, batch);          \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(128) name##_bst(const u8* W, u64 row_bytes, const float* x, \
                                         const float* bias, float* y, int rows, int cols, int accumulate, \
                                         int batch, int per, const float* nw, const float* scale) { grid_dependency_sync();    \
        matmul_st_impl<Q>(W, row_bytes, x, bias, y, rows, cols, accumulate, batch, per, nw, scale);  \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(128) name##_gu_bst(const u8* Wg, const u8* Wu, u64 row_bytes, \
                                            const float* x, const float* nw, const float* scale, float* out, \
                                            int rows, int cols, int batch, int per) { grid_dependency_sync();           \
        gate_up_bst_impl<Q>(Wg, Wu, row_bytes, x, nw, scale, out, rows, cols, batch, per);      \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(256, 4) name##_st(const u8* W, u64 row_bytes, const float* x, const float* bias, \
                                         float* y, int rows, int cols, int accumulate, const float* nw, \
                                         float eps) { grid_dependency_sync();                                           \
        matvec_st_impl<Q>(W, row_bytes, x, bias, y, rows, cols, accumulate, nw, eps);           \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(256, 3) name##_gu_st(const u8* Wg, const u8* Wu, u64 row_bytes, const float* x, \
                                            const float* nw, float eps, float* out, int rows, int cols) { grid_dependency_sync(); \
        gate_up_st_impl<Q>(Wg, Wu, row_bytes, x, nw, eps, out, rows, cols);                     \
    }

// The fused q/k/v kernels of q/k in format QA and v in QB: `name` is
// matvec_<qa>_qkv (one format) or matvec_<qa>_<qb>_qkv (a mixed pair).
#define MATVEC_QKV(name, QA, QB)                                                                  \
    extern "C" __global__ void __launch_bounds__(128) name##_bst(                                 \
        const u8* Wq, const u8* Wk, const u8* Wv, u64 qk_bytes, u64 v_bytes, const float* x,      \
        const float* nw, const float* scale, const float* bq, const float* bk, const float* bv,  \
        float* yq, float* yk, float* yv, int rq, int rk, int rv, int cols, int batch, int per) {  \
        grid_dependency_sync();                                                                   \
        const QkvMats m = {Wq, Wk, Wv, qk_bytes, v_bytes, rq, rk, rv};                            \
        qkv_bst_impl<QA, QB>(m, x, nw, scale, bq, bk, bv, yq, yk, yv, cols, batch, per);          \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(256, 4)                                          \
        name##_st(const u8* Wq, const u8* Wk, const u8* Wv, u64 qk_bytes, u64 v_bytes, const float* x, \
                  const float* nw, float eps, const float* bq, const float* bk, const float* bv,   \
                  float* yq, float* yk, float* yv, int rq, int rk, int rv, int cols) {            \
        grid_dependency_sync();                                                                   \
        const QkvMats m = {Wq, Wk, Wv, qk_bytes, v_bytes, rq, rk, rv};                            \
        qkv_st_impl<QA, QB>(m, x, nw, eps, bq, bk, bv, yq, yk, yv, cols);                         \
    }

#define MATVEC_ALL(name, Q) MATVEC(name, Q) MATVEC_QKV(name##_qkv, Q, Q)
#define MATVEC_QKV_MIXED(qa, QA, qb, QB) MATVEC_QKV(matvec_##qa##_##qb##_qkv, QA, QB)

MATVEC_ALL(matvec_f32, QF32)
MATVEC_ALL(matvec_f16, QF16)
MATVEC_ALL(matvec_bf16, QBF16)
MATVEC_ALL(matvec_q4_0, Q4_0)
MATVEC_ALL(matvec_q4_1, Q4_1)
MATVEC_ALL(matvec_q5_0, Q5_0)
MATVEC_ALL(matvec_q5_1, Q5_1)
MATVEC_ALL(matvec_q8_0, Q8_0)
MATVEC_ALL(matvec_q4_k, Q4K)
MATVEC_ALL(matvec_q5_k, Q5K)
MATVEC_ALL(matvec_q6_k, Q6K)
QKV_MIXED_PAIRS(MATVEC_QKV_MIXED)
