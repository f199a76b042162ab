// matvec_tiles.cu: the batched decode mat-vecs for many token rows, with a
// register tile of 4 weight rows x 4 tokens per thread (`matvec_<fmt>_tl`,
// `matvec_<fmt>_gu_tl`; KERNEL-MATVEC, WORKER-4710; issue 11 point 7). The
// launcher is src/gpu/batched.rs.
//
// Why: at 64 sequences the token-on-lane `_bt` kernels (matvec_rows.cu) do
// one shared-memory load per four FMAs and dequantize every weight once per
// 16 tokens, so the Qwen LM head took 2.0 ms and the FFN 190 us a layer on
// an H200, a few percent of the card's FMA rate. Here each thread reads four
// weight runs and four token runs (two float4 loads each, broadcast across
// the lanes that share them) and does 64 FMAs per pair of loads, and a
// block's weights are dequantized once per 32 tokens. Both the weights' raw
// bytes and the token runs arrive by asynchronous copies a quarter ahead, so
// no thread waits on a load from L2 between the quarters' barriers (the
// token runs, 32 KB a quarter, were once loaded and stored synchronously).
//
// Bits (WORKER-4710 under batching): every output (row, token) is computed
// as the lone `_st` kernel computes it. The lone kernel's lane l owns the
// runs l, l + 32, ... of a row (a run is 32 consecutive elements): per run p
// = 0, then p = fma(w'[i], x[i], p) for i = 0..31 in order (w' the
// dequantized weight, times the norm weight when normed); acc += p run after
// run; then the warp_sum butterfly over the 32 lanes (pairs l, l ^ 16, then
// ^ 8, ^ 4, ^ 2, ^ 1). Here warp w (0..7) owns the lone lanes w, w + 8,
// w + 16 and w + 24 and keeps their four accumulators per output in
// registers, so the butterfly's first two levels ((acc_w + acc_w+16) +
// (acc_w+8 + acc_w+24)) happen in the thread and the last three over the
// eight warps in shared memory, with the same pairs. The scale, bias and
// accumulate steps follow in the lone kernels' order.
//
// Block: 256 threads, TL_ROWS = 16 staging rows (gate/up: 8 of each matrix)
// x TL_TOKENS = 32 tokens. Lane = 4 row groups x 8 token groups: the thread
// of row group g and token group h owns staging rows g, g + 4, g + 8, g + 12
// and tokens h, h + 8, h + 16, h + 24, so the four (eight) addresses of one
// float4 load fall in distinct bank quads. A 1024-element chunk is taken in
// four quarters of 8 runs; in quarter k warp w multiplies run 8k + w. The
// weights' raw bytes of the next quarter are copied asynchronously into one
// of two buffers while the block works on the current one, and dequantized
// from shared memory (the block reads each byte once); the token runs of the
// next quarter are copied likewise into the second of two token buffers
// once every warp is done with the quarter before. gridDim.y = token
// blocks; gridDim.x = blocks walking the row blocks on a grid stride (two
// per SM, `launch_shape::rows_tl_launch`), the last quarter of one row
// block fetching the first of the next, so the copies never drain. Which
// block takes a row block changes no bit. Dynamic shared memory
// (`rows_tl_smem`): TL_ROWS then 2 x TL_TOKENS rows of TL_STRIDE floats (8
// runs of TL_PAD, plus 4 to turn the bank quad; the first TL_ROWS rows also
// hold the partial sums at the end of each row block), then two raw
// buffers of TL_ROWS rows of CHUNK / 16 + 2 words.
#include "common.cuh"

#define TL_THREADS 256
#define TL_STRIDE (8 * TL_PAD + 4)
static_assert(TL_ROWS == 16 && TL_TOKENS == 32, "4 row groups x 8 token groups, 4 x 4 per thread");
static_assert(TL_PAD % 4 == 0 && TL_PAD >= 32 && (8 * TL_PAD) % 32 == 0, "float4 runs; the stride turns by 4 banks");
static_assert(8 * TL_ROWS * TL_TOKENS <= TL_ROWS * TL_STRIDE, "the partial sums fit the dequantized-weight tile");

// Words of one staging row's raw quarter chunk (8 runs): its bytes from the
// word holding the first one, so up to 3 more.
template <class Q>
__device__ __forceinline__ constexpr int tl_raw_words() {
    return Q::CHUNK / 16 + 2;
}

// Start copying quarter k of chunk c of the block's staging rows (row j:
// matrix j / RPM, row r0 + j % RPM) into `raw` as whole words; words past a
// row's end, and absent rows, are zero. The caller commits and waits.
template <class Q, int RPM>
__device__ __forceinline__ void tl_stage(u32* raw, const u8* W0, const u8* W1, u64 row_bytes, int r0, int rows,
                                         int c, int k) {
    constexpr int QB = Q::CHUNK / 4, RAWW = tl_raw_words<Q>();
    const u64 start = (u64)c * Q::CHUNK + (u64)k * QB;
    for (int i = threadIdx.x; i < TL_ROWS * RAWW; i += TL_THREADS) {
        const int j = i / RAWW, wi = i - j * RAWW;
        const int r = r0 + j % RPM;
        bool copied = false;
        if (r < rows && start < row_bytes) {
            const u8* base = (j < RPM ? W0 : W1) + (u64)r * row_bytes + start;
            const u64 left = row_bytes - start;
            const int nb = left < (u64)QB ? (int)left : QB;
            const int off = (int)((u64)base & 3);
            if (wi < ((off + nb + 3) >> 2)) {
                cp_async4(raw + i, (const u32*)(base - off) + wi);
                copied = true;
            }
        }
        if (!copied) raw[i] = 0u;
    }
}

// Start copying the token runs of the quarter whose first run is q0 (tokens
// t0.. of the block, 8 runs of 32 floats each) into `xs` as float4s; absent
// tokens and runs past the row's end are zero. The caller commits and waits.
__device__ __forceinline__ void tl_stage_tokens(float* xs, const float* __restrict__ x, int t0, int batch, int cols,
                                                int nsub, int q0) {
    for (int f = threadIdx.x; f < TL_TOKENS * 64; f += TL_THREADS) {
        const int t = f >> 6, run = (f >> 3) & 7, i4 = f & 7;
        float* d = xs + t * TL_STRIDE + run * TL_PAD + 4 * i4;
        if (t0 + t < batch && q0 + run < nsub)
            cp_async16(d, x + (u64)(t0 + t) * cols + (u64)(q0 + run) * 32 + 4 * i4);
        else
            *(float4*)d = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
}

// NM = 1: y = W·x' (+ bias) (+ y); NM = 2: out = silu(Wg·x') * (Wu·x').
// x' = x, or rmsnorm(x) * nw with each token's scale from row_rms.
template <class Q, int NM>
__device__ __forceinline__ void rows_tl_impl(const u8* __restrict__ W0, const u8* __restrict__ W1, u64 row_bytes,
                                             const float* __restrict__ x, const float* __restrict__ bias,
                                             float* __restrict__ y, int rows, int cols, int accumulate, int batch,
                                             const float* __restrict__ nw, const float* __restrict__ scale) {
    extern __shared__ __align__(16) float smem[];
    constexpr int RPM = TL_ROWS / NM;  // rows of each matrix
    constexpr int RAWW = tl_raw_words<Q>();
    constexpr int RAWF = TL_ROWS * RAWW;        // words of one raw buffer
    constexpr int XSF = TL_TOKENS * TL_STRIDE;  // floats of one token buffer
    float* wd = smem;                          // [TL_ROWS][TL_STRIDE] dequantized weight runs
    float* xs = smem + TL_ROWS * TL_STRIDE;    // [2][TL_TOKENS][TL_STRIDE] token runs
    u32* raw = (u32*)(xs + 2 * XSF);           // [2][TL_ROWS][RAWW] raw quarter chunks
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane & 3, h = lane >> 2;  // row group, token group
    const int t0 = blockIdx.y * TL_TOKENS;
    const int nsub = cols >> 5, nch = (nsub + 31) >> 5;
    const long long nrb = ((long long)rows + RPM - 1) / RPM;  // row blocks
    if ((long long)blockIdx.x >= nrb || nch == 0) return;
    // The block walks the row blocks blockIdx.x, + gridDim.x, ... The
    // weights' raw bytes and the token runs arrive one quarter ahead, by
    // asynchronous copies into two buffers each, while the block multiplies
    // the quarter before; the last quarter of a row block fetches the first
    // of the next, so the copies never drain between row blocks. Groups
    // commit in the order W(0), X(0), then per quarter n: W(n + 1) before
    // its first barrier, X(n + 1) after it; so waiting for all but the
    // newest group at quarter n's first barrier lands W(n) and X(n). A row
    // block has 4 x nch quarters, an even count, so quarter k of a chunk
    // always uses buffer k & 1.
    tl_stage<Q, RPM>(raw, W0, W1, row_bytes, blockIdx.x * RPM, rows, 0, 0);
    cp_async_commit();
    tl_stage_tokens(xs, x, t0, batch, cols, nsub, 0);
    cp_async_commit();
    for (long long rb = blockIdx.x; rb < nrb; rb += gridDim.x) {
        const int r0 = (int)(rb * RPM);
        const bool next_block = rb + gridDim.x < nrb;
        float acc[4][4][4];  // [lone lane w + 8k][row g + 4i][token h + 8j]
#pragma unroll
        for (int k = 0; k < 4; k++)
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[k][i][j] = 0.0f;
        for (int c = 0; c < nch; c++) {
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const int q0 = c * 32 + k * 8;  // first run of this quarter
                // The next quarter: this row block's next, else the first
                // of the block's next row block (if it has one).
                const bool last = k == 3 && c + 1 == nch;
                const bool more = !last || next_block;
                const int nr0 = last ? (int)((rb + gridDim.x) * RPM) : r0;
                const int nc = last ? 0 : (k < 3 ? c : c + 1), nk = (k + 1) & 3;
                u32* cur = raw + (k & 1) * RAWF;
                const float* xcur = xs + (k & 1) * XSF;
                // Raw buffer k & 1 ^ 1 was last read before the previous
                // quarter's second barrier, so every thread is done with it.
                if (more) tl_stage<Q, RPM>(raw + ((k & 1) ^ 1) * RAWF, W0, W1, row_bytes, nr0, rows, nc, nk);
                cp_async_commit();
                cp_async_wait_one();  // this quarter's copies (not the one just started) have landed
                __syncthreads();      // ... every thread's; and every warp is done with the previous quarter
                // The next quarter's token runs, into the buffer the previous
                // quarter's products read (every warp is past them now).
                if (more) tl_stage_tokens(xs + ((k & 1) ^ 1) * XSF, x, t0, batch, cols, nsub, nc * 32 + nk * 8);
                cp_async_commit();
                // Weights: thread j < 128 dequantizes staging row j / 8's run
                // j % 8 from the raw quarter (staging row: matrix row / RPM,
                // row r0 + row % RPM), which starts at a block boundary.
                if (threadIdx.x < TL_ROWS * 8) {
                    const int row = threadIdx.x >> 3, run = threadIdx.x & 7, r = r0 + row % RPM;
                    if (r < rows && q0 + run < nsub) {
                        const u8* base = (row < RPM ? W0 : W1) + (u64)r * row_bytes + (u64)c * Q::CHUNK +
                                         (u64)k * (Q::CHUNK / 4);
                        float v[32];
                        Q::deq32((const u8*)(cur + row * RAWW) + ((u64)base & 3), run, v);
                        if (nw) {
                            const float4* nv = (const float4*)(nw + (u64)(q0 + run) * 32);
#pragma unroll
                            for (int i = 0; i < 8; i++) {
                                const float4 n = __ldg(nv + i);
                                v[4 * i + 0] *= n.x;
                                v[4 * i + 1] *= n.y;
                                v[4 * i + 2] *= n.z;
                                v[4 * i + 3] *= n.w;
                            }
                        }
                        float4* d = (float4*)(wd + row * TL_STRIDE + run * TL_PAD);
#pragma unroll
                        for (int i = 0; i < 8; i++)
                            d[i] = make_float4(v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]);
                    }
                }
                __syncthreads();
                if (q0 + w >= nsub) continue;  // no run: the lone lane's acc stays as it is
                const float* wp = wd + g * TL_STRIDE + w * TL_PAD;
                const float* xp = xcur + h * TL_STRIDE + w * TL_PAD;
                float p[4][4];
#pragma unroll
                for (int i = 0; i < 4; i++)
#pragma unroll
                    for (int j = 0; j < 4; j++) p[i][j] = 0.0f;
#pragma unroll
                for (int e = 0; e < 8; e++) {
                    // The four token runs' float4s stay; each weight run's is
                    // used for its 16 FMAs and dropped (register pressure).
                    float4 xv[4];
#pragma unroll
                    for (int j = 0; j < 4; j++) xv[j] = *(const float4*)(xp + 8 * j * TL_STRIDE + 4 * e);
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        const float4 wv = *(const float4*)(wp + 4 * i * TL_STRIDE + 4 * e);
#pragma unroll
                        for (int j = 0; j < 4; j++) {
                            p[i][j] = fmaf(wv.x, xv[j].x, p[i][j]);
                            p[i][j] = fmaf(wv.y, xv[j].y, p[i][j]);
                            p[i][j] = fmaf(wv.z, xv[j].z, p[i][j]);
                            p[i][j] = fmaf(wv.w, xv[j].w, p[i][j]);
                        }
                    }
                }
#pragma unroll
                for (int i = 0; i < 4; i++)
#pragma unroll
                    for (int j = 0; j < 4; j++) acc[k][i][j] += p[i][j];
            }
        }
        // The butterfly: levels 16 and 8 here, then 4, 2 and 1 over the
        // warps, through the dequantized-weight tile (the copies in flight
        // land in the raw and token buffers only).
        __syncthreads();  // every warp is done with this row block's runs
        float* red = wd;  // [8 warps][TL_ROWS][TL_TOKENS]
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++)
                red[(w * TL_ROWS + g + 4 * i) * TL_TOKENS + h + 8 * j] =
                    (acc[0][i][j] + acc[2][i][j]) + (acc[1][i][j] + acc[3][i][j]);
        __syncthreads();
        for (int o = threadIdx.x; o < RPM * TL_TOKENS; o += TL_THREADS) {
            const int j = o / TL_TOKENS, t = o % TL_TOKENS;
            const int r = r0 + j, tok = t0 + t;
            if (r >= rows || tok >= batch) continue;
            float v[NM];
#pragma unroll
            for (int m = 0; m < NM; m++) {
                const float* s = red + (m * RPM + j) * TL_TOKENS + t;
                float a[4];
#pragma unroll
                for (int q = 0; q < 4; q++) a[q] = s[q * TL_ROWS * TL_TOKENS] + s[(q + 4) * TL_ROWS * TL_TOKENS];
                v[m] = (a[0] + a[2]) + (a[1] + a[3]);
            }
            if (NM == 1) {
                float a = v[0];
                if (nw) a *= scale[tok];
                if (bias) a += bias[r];
                float* yt = y + (u64)tok * rows + r;
                if (accumulate) a += *yt;
                *yt = a;
            } else {
                const float gt = v[0] * scale[tok];
                const float u = v[NM - 1] * scale[tok];
                y[(u64)tok * rows + r] = gt / (1.0f + expf(-gt)) * u;
            }
        }
        // The next row block's first barrier keeps its dequantization from
        // overwriting these sums before every thread has read them.
    }
}

#define MATVEC_TILES(name, Q)                                                                     \
    extern "C" __global__ void __launch_bounds__(TL_THREADS, 2)                                   \
        name##_tl(const u8* W, u64 row_bytes, const float* x, const float* bias, float* y, int rows, \
                  int cols, int accumulate, int batch, const float* nw, const float* scale) { grid_dependency_sync();    \
        rows_tl_impl<Q, 1>(W, W, row_bytes, x, bias, y, rows, cols, accumulate, batch, nw, scale); \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(TL_THREADS, 2)                                   \
        name##_gu_tl(const u8* Wg, const u8* Wu, u64 row_bytes, const float* x, const float* nw,  \
                     const float* scale, float* out, int rows, int cols, int batch) { grid_dependency_sync();            \
        rows_tl_impl<Q, 2>(Wg, Wu, row_bytes, x, nullptr, out, rows, cols, 0, batch, nw, scale); \
    }

MATVEC_TILES(matvec_f32, QF32)
MATVEC_TILES(matvec_f16, QF16)
MATVEC_TILES(matvec_bf16, QBF16)
MATVEC_TILES(matvec_q4_0, Q4_0)
MATVEC_TILES(matvec_q4_1, Q4_1)
MATVEC_TILES(matvec_q5_0, Q5_0)
MATVEC_TILES(matvec_q5_1, Q5_1)
MATVEC_TILES(matvec_q8_0, Q8_0)
MATVEC_TILES(matvec_q4_k, Q4K)
MATVEC_TILES(matvec_q5_k, Q5K)
MATVEC_TILES(matvec_q6_k, Q6K)
