// topk.cu: the k best logits in the sampler's order (logit descending, id
// ascending on ties, NaN counted as -inf) selected on the device
// (KERNEL-SAMPLE, WORKER-4700, 4710). Why: only k (id, logit) pairs cross to
// the host per token; the host applies the shared sampler
// (engine::sampler::pick_from_candidates) so both backends pick identically.
//
// Many rows (issue 11 point 7): every kernel takes its row from the grid (x for
// `topk`, y for the radix kernels) and offsets logits by n, the outputs by k
// and the radix scratch by TK_ROW_WORDS(n) per row, so one launch selects the
// candidates of every sequence of a step, each row exactly as alone.
//
// `topk` (small k, k = 1 is greedy argmax): a row is cut into chunks of
// TK_CHUNK logits, one 1024-thread block each (one block per row took 34 us
// for k = 1 over 152k logits: one block cannot keep enough loads in flight).
// Each block picks its chunk's best k by rounds: round r finds the best
// element strictly after pick r-1 in that total order, so no element is
// mutated and the result does not depend on timing. The row's best k are
// among the chunks' best k, so the last block of the row to finish picks them
// from those G * k by the same rounds. Costs one pass over the chunk per
// candidate, so it only suits small k.
//
// `topk_radix_hist` x3 + `topk_radix_gather` (k up to 1024, n up to 4M; the
// launcher is src/gpu/topk.rs): radix select on the order-preserving u32 key
// of each logit, then an ordered gather and one bitonic sort. Every block owns
// a fixed chunk of TK_CHUNK logits. Pass p (digits of 11, 11, 10 bits from the
// top) counts, per block, the digits of the keys that match the prefix chosen
// so far, and stores them as suffix sums (count of digit >= b) without any
// global atomics; the last block to arrive (one integer atomic per block: which
// block is last depends on timing, what it computes does not) sums the rows in
// block order and picks the digit d with above + ge[d] >= k > above + ge[d+1].
// After pass 2 the k-th key T is known, along with how many keys are > T
// (above) and need = k - above, the ties at T to take (lowest ids first).
// The gather writes each key > T and each of the first `need` keys == T (in
// index order, from exclusive prefix counts: no ordering by timing) to its own
// slot of a k-entry list; the last block sorts the list by (key desc, id asc)
// as one 64-bit composite per candidate and writes ids and the original float
// values (NaN stays NaN, as on the host). No floating-point atomics, no
// overflow case (ties are exact), sizes are kernel arguments and nothing is
// allocated: four launches that a CUDA graph can capture.
// Scratch (u32 words, zero-filled once at allocation; every arrival counter is
// re-armed to 0 by its own last block): see TK_* offsets below.
#include "common.cuh"

// ---------------------------------------------------------------------------
// Large k: radix select + ordered gather. Must match src/gpu/topk.rs.
#define TK_THREADS 1024                     // threads per block (32 warps)
#define TK_CHUNK 4096                       // logits per block
#define TK_PER (TK_CHUNK / TK_THREADS)      // logits per thread
#define TK_BINS 2048                        // histogram bins (11-bit digits)
#define TK_MAX_K 1024                       // largest k; the bitonic sort size
#define TK_CTR 0                            // 4 arrival counters: passes 0..2, gather
#define TK_PREFIX 4                         // key prefix chosen by pass p (p = 0..2)
#define TK_ABOVE 8                          // keys strictly above that prefix
#define TK_SMALL_CTR 12                     // arrival counter of `topk`
#define TK_CAND 16                          // TK_MAX_K u64 candidates (8-byte aligned)
#define TK_BLK (TK_CAND + 2 * TK_MAX_K)     // over[G], gt_off[G], eq_off[G], then
                                            // G rows of TK_BINS suffix counts
// Scratch words of one row: the header, 3 words and TK_BINS counts per block,
// rounded up to 4 words so every row's u64 candidates stay 8-byte aligned.
#define TK_ROW_WORDS(n) ((TK_BLK + (((n) + TK_CHUNK - 1) / TK_CHUNK) * (3 + TK_BINS) + 3) & ~3)
static_assert(TK_BINS == 2 * TK_THREADS, "each thread owns two histogram bins");
static_assert(TK_MAX_K == TK_THREADS, "the bitonic sort uses one slot per thread");
static_assert(TK_PER * TK_THREADS == TK_CHUNK, "whole chunk per block");
static_assert(TK_CHUNK < 65536, "the gather packs two per-block counts in 16 bits each");
static_assert(2 * TK_MAX_K <= 3 + TK_BINS, "topk's picks (value and id, k each) fit a block's area");

// Larger key = better logit; the u32 order equals f32::total_cmp, and every
// NaN gets the key of -inf (the sampler ranks NaN as -inf, ties by id).
__device__ __forceinline__ unsigned tk_key(float v) {
    const unsigned b = __float_as_uint(v);
    if ((b & 0x7fffffffu) > 0x7f800000u) return 0x007fffffu;
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Inclusive prefix sum of v in threadIdx order. All TK_THREADS threads must
// call it (it synchronises); wsum is 32 words of shared memory.
__device__ unsigned tk_scan(unsigned v, unsigned* wsum) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const unsigned u = __shfl_up_sync(0xffffffffu, v, o);
        if (lane >= o) v += u;
    }
    if (lane == 31) wsum[wid] = v;
    __syncthreads();
    if (wid == 0) {
        unsigned w = wsum[lane];
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const unsigned u = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o) w += u;
        }
        wsum[lane] = w;
    }
    __syncthreads();
    if (wid > 0) v += wsum[wid - 1];
    __syncthreads();  // wsum may be reused by the next call
    return v;
}

// True in exactly one block, the last to finish this kernel's first phase;
// every global write made before the call by any block is visible to it.
__device__ bool tk_last_block(unsigned* ctr, int* s_last) {
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) *s_last = atomicAdd(ctr, 1u) == gridDim.x - 1;
    __syncthreads();
    const bool last = *s_last != 0;
    if (last) __threadfence();
    return last;
}

// Pass `pass` (0, 1, 2) of the radix select; grid = ceil(n / TK_CHUNK) <= 1024.
extern "C" __global__ void __launch_bounds__(TK_THREADS)
topk_radix_hist(const float* logits, int n, int k, int pass, unsigned* scratch) {
    grid_dependency_sync();
    logits += (size_t)blockIdx.y * n;
    scratch += (size_t)blockIdx.y * TK_ROW_WORDS(n);
    __shared__ unsigned h[TK_BINS];
    __shared__ unsigned wsum[32];
    __shared__ int s_last, s_digit;
    const int tid = threadIdx.x, lane = tid & 31, G = gridDim.x;
    const int shift = pass == 0 ? 21 : (pass == 1 ? 10 : 0);
    const unsigned mask = pass == 2 ? 0x3ffu : 0x7ffu;
    const int pshift = pass == 1 ? 21 : 10;  // passes 1, 2 match key >> pshift == prefix
    const unsigned prefix = pass == 0 ? 0u : scratch[TK_PREFIX + pass - 1];
    const unsigned above = pass == 0 ? 0u : scratch[TK_ABOVE + pass - 1];
    unsigned* blk = scratch + TK_BLK;
    unsigned* hist = blk + 3 * G;
    for (int b = tid; b < TK_BINS; b += TK_THREADS) h[b] = 0;
    __syncthreads();

    unsigned over = 0;  // keys of this block above the prefix (used by pass 2)
    const int base = blockIdx.x * TK_CHUNK;
#pragma unroll
    for (int j = 0; j < TK_PER; j++) {
        const int i = base + j * TK_THREADS + tid;
        unsigned bin = 0xffffffffu;  // no bin: outside n or another prefix
        if (i < n) {
            const unsigned key = tk_key(logits[i]);
            if (pass == 0 || (key >> pshift) == prefix) bin = (key >> shift) & mask;
            else if ((key >> pshift) > prefix) over++;
        }
        // One shared atomic per distinct bin per warp: masked vocabularies put
        // most keys in one bin. Integer adds: the total is order-independent.
        const unsigned peers = __match_any_sync(0xffffffffu, bin);
        if (bin != 0xffffffffu && lane == __ffs(peers) - 1) atomicAdd(&h[bin], (unsigned)__popc(peers));
    }
    __syncthreads();

    // Suffix sums: thread t owns bins lo = TK_BINS-2-2t and lo+1, so a scan in
    // thread order accumulates from the top bin down: ge_lo = count(digit >= lo).
    const int lo = TK_BINS - 2 - 2 * tid;
    const unsigned vlo = h[lo], vhi = h[lo + 1];
    const unsigned ge_lo = tk_scan(vlo + vhi, wsum);
    unsigned* row = hist + (size_t)blockIdx.x * TK_BINS;
    row[lo] = ge_lo;
    row[lo + 1] = ge_lo - vlo;
    const unsigned over_all = tk_scan(over, wsum);
    if (pass == 2 && tid == TK_THREADS - 1) blk[blockIdx.x] = over_all;
    if (!tk_last_block(scratch + TK_CTR + pass, &s_last)) return;

    // Last block: global suffix counts, summed in block order.
    if (tid == 0) s_digit = 0;
    for (int b = tid; b < TK_BINS; b += TK_THREADS) {
        unsigned s = 0;  // integer sum: any order gives the same total
#pragma unroll 8
        for (int g = 0; g < G; g++) s += __ldcg(hist + (size_t)g * TK_BINS + b);
        h[b] = s;
    }
    __syncthreads();
    // above + h[b] >= k holds for b = 0 (the previous pass chose its digit so)
    // and fails past the top, and h is non-increasing: one b is the boundary.
    for (int b = tid; b < TK_BINS; b += TK_THREADS) {
        const bool here = above + h[b] >= (unsigned)k;
        const bool next = b + 1 < TK_BINS && above + h[b + 1] >= (unsigned)k;
        if (here && !next) s_digit = b;
    }
    __syncthreads();
    const int d = s_digit;
    const unsigned ge_next = d + 1 < TK_BINS ? h[d + 1] : 0u;
    if (tid == 0) {
        scratch[TK_PREFIX + pass] =
            pass == 0 ? (unsigned)d : ((prefix << (pass == 1 ? 11 : 10)) | (unsigned)d);
        scratch[TK_ABOVE + pass] = above + ge_next;
        scratch[TK_CTR + pass] = 0;  // re-arm for the next call
    }
    if (pass == 2) {
        // Block g holds gt = over[g] + ge_g[d+1] keys > T and eq = ge_g[d] -
        // ge_g[d+1] keys == T; exclusive prefixes in block order place them.
        unsigned gt = 0, eq = 0;
        if (tid < G) {
            const unsigned* r = hist + (size_t)tid * TK_BINS;
            const unsigned ge_d = __ldcg(r + d);
            const unsigned ge_d1 = d + 1 < TK_BINS ? __ldcg(r + d + 1) : 0u;
            gt = __ldcg(blk + tid) + ge_d1;
            eq = ge_d - ge_d1;
        }
        const unsigned gt_incl = tk_scan(gt, wsum);
        const unsigned eq_incl = tk_scan(eq, wsum);
        if (tid < G) {
            blk[G + tid] = gt_incl - gt;
            blk[2 * G + tid] = eq_incl - eq;
        }
    }
}

// ---------------------------------------------------------------------------
// Small k: rounds over each chunk, then over the chunks' picks.

__device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
    return v > bv || (v == bv && i < bi);
}

// The best k of `count` items in the sampler's order into out_v / out_i
// (written by thread 0 of the block). Item j has value v[j] (NaN counted as
// -inf) and id ids[j], or id0 + j when ids is null. Reads bypass L1: the
// last block reads what other blocks wrote. A round with nothing left picks
// (-inf, INT_MAX), which ranks after every real item. All TK_THREADS
// threads must call it (it synchronises).
__device__ void tk_pick_rounds(const float* v, const int* ids, int id0, int count, int k,
                               float* out_v, int* out_i) {
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
        for (int j = threadIdx.x; j < count; j += blockDim.x) {
            float x = __ldcg(v + j);
            if (x != x) x = __int_as_float(0xff800000);
            const int i = ids ? __ldcg(ids + j) : id0 + j;
            const bool after = x < pv || (x == pv && i > pi);
            if (after && better(x, i, bv, bi)) {
                bv = x;
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
                out_i[r] = bi;
                out_v[r] = bv;
                pv_s = bv;
                pi_s = bi;
            }
        }
        __syncthreads();
    }
}

// grid = (ceil(n / TK_CHUNK), rows), TK_THREADS threads; k <= TK_MAX_K.
// Scratch as the radix kernels': block g's picks at TK_BLK (values as the
// first G * k words, ids as the next G * k), the row's arrival counter at
// TK_SMALL_CTR, re-armed by the row's last block.
extern "C" __global__ void __launch_bounds__(TK_THREADS)
topk(const float* logits, int n, int k, unsigned* scratch, int* out_ids, float* out_vals) {
    grid_dependency_sync();
    logits += (size_t)blockIdx.y * n;
    scratch += (size_t)blockIdx.y * TK_ROW_WORDS(n);
    out_ids += (size_t)blockIdx.y * k;
    out_vals += (size_t)blockIdx.y * k;
    __shared__ int s_last;
    const int G = gridDim.x, base = blockIdx.x * TK_CHUNK;
    float* picks_v = reinterpret_cast<float*>(scratch + TK_BLK);
    int* picks_i = reinterpret_cast<int*>(scratch + TK_BLK) + G * k;
    const int count = min(TK_CHUNK, n - base);
    tk_pick_rounds(logits + base, nullptr, base, count, k, picks_v + blockIdx.x * k,
                   picks_i + blockIdx.x * k);
    if (!tk_last_block(scratch + TK_SMALL_CTR, &s_last)) return;
    tk_pick_rounds(picks_v, picks_i, 0, G * k, k, out_vals, out_ids);
    if (threadIdx.x == 0) scratch[TK_SMALL_CTR] = 0;  // re-arm for the next call
}

// Sort TK_MAX_K composites descending (bitonic network, one slot per thread).
__device__ void tk_sort_desc(unsigned long long* s) {
    const unsigned t = threadIdx.x;
    for (unsigned size = 2; size <= TK_MAX_K; size <<= 1) {
        for (unsigned stride = size >> 1; stride > 0; stride >>= 1) {
            const unsigned p = t ^ stride;
            if (p > t) {
                const unsigned long long a = s[t], b = s[p];
                const bool desc = (t & size) == 0;
                if (desc ? a < b : a > b) {
                    s[t] = b;
                    s[p] = a;
                }
            }
            __syncthreads();
        }
    }
}

// The ordered gather and final sort; same grid as topk_radix_hist, run after
// its three passes. Writes k ids and their original logits.
extern "C" __global__ void __launch_bounds__(TK_THREADS)
topk_radix_gather(const float* logits, int n, int k, unsigned* scratch, int* out_ids, float* out_vals) {
    grid_dependency_sync();
    logits += (size_t)blockIdx.y * n;
    scratch += (size_t)blockIdx.y * TK_ROW_WORDS(n);
    out_ids += (size_t)blockIdx.y * k;
    out_vals += (size_t)blockIdx.y * k;
    __shared__ unsigned long long s[TK_MAX_K];
    __shared__ unsigned wsum[32];
    __shared__ int s_last;
    const int tid = threadIdx.x, G = gridDim.x;
    const unsigned T = scratch[TK_PREFIX + 2];
    const unsigned above = scratch[TK_ABOVE + 2];
    const unsigned need = (unsigned)k - above;
    const unsigned* blk = scratch + TK_BLK;
    unsigned long long* cand = (unsigned long long*)(scratch + TK_CAND);

    // Thread t owns TK_PER consecutive logits, so the block scan is in index order.
    const int first = blockIdx.x * TK_CHUNK + tid * TK_PER;
    unsigned keys[TK_PER];
    unsigned cnt = 0;  // (keys > T) << 16 | (keys == T)
#pragma unroll
    for (int j = 0; j < TK_PER; j++) {
        keys[j] = first + j < n ? tk_key(logits[first + j]) : 0u;  // 0: below every key
        cnt += keys[j] > T ? 0x10000u : (keys[j] == T ? 1u : 0u);
    }
    const unsigned excl = tk_scan(cnt, wsum) - cnt;
    unsigned rg = blk[G + blockIdx.x] + (excl >> 16);
    unsigned re = blk[2 * G + blockIdx.x] + (excl & 0xffffu);
#pragma unroll
    for (int j = 0; j < TK_PER; j++) {
        // Composite: key high, ~id low, so a larger composite is a better candidate.
        const unsigned long long c =
            ((unsigned long long)keys[j] << 32) | (unsigned long long)(0xffffffffu - (unsigned)(first + j));
        if (keys[j] > T) {
            if (rg < above) cand[rg] = c;  // always true; guards the write
            rg++;
        } else if (keys[j] == T) {
            if (re < need) cand[above + re] = c;  // the lowest `need` tied ids
            re++;
        }
    }
    if (!tk_last_block(scratch + TK_CTR + 3, &s_last)) return;

    for (int i = tid; i < TK_MAX_K; i += TK_THREADS) s[i] = i < k ? __ldcg(cand + i) : 0ull;
    __syncthreads();
    tk_sort_desc(s);
    for (int i = tid; i < k; i += TK_THREADS) {
        const unsigned id = 0xffffffffu - (unsigned)(s[i] & 0xffffffffull);
        const bool ok = id < (unsigned)n;  // always true when the passes ran on these logits
        out_ids[i] = ok ? (int)id : -1;
        out_vals[i] = ok ? logits[id] : __int_as_float(0x7fc00000);
    }
    if (tid == 0) scratch[TK_CTR + 3] = 0;  // re-arm for the next call
}
