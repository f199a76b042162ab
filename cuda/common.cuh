// common.cuh: shared helpers for every worker-orcd kernel (KERNEL-*, WORKER-4700).
// Why: each op lives in its own .cu file; the block formats, half-precision
// conversions and the fixed-order reductions they share live here once.
// No CUDA headers are included, so NVRTC needs nothing but itself.
// Determinism (WORKER-4710): every reduction below combines partial results in
// a fixed order that depends only on the launch shape, never on timing; no
// floating-point atomics anywhere.
#pragma once

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define WARP 32

// The host path is the kernel emulator's (tools/kernel-emu), which compiles
// these files for the CPU; __CUDA_ARCH__ is defined whenever NVRTC compiles.
__device__ __forceinline__ float f16_to_f32(u16 h) {
#ifdef __CUDA_ARCH__
    float f;
    asm("{ cvt.f32.f16 %0, %1; }" : "=f"(f) : "h"(h));
    return f;
#else
    return emu_f16_to_f32(h);
#endif
}

// Programmatic dependent launch (sm_90+; issue 12 point 1): every kernel
// calls this first. It waits until the grids this one depends on have
// finished and their writes are visible. It does not trigger its dependents
// early: they launch as this grid's blocks exit (the implicit trigger), so
// no dependent block waits on an SM this grid could still use; triggering
// at entry measured slower than no PDL at all (src/gpu/launch.rs). Launched
// without the attribute (or before sm_90, or in the kernel emulator) it does
// nothing. Nothing is read or written before it, so no kernel sees
// another's half-written output.
__device__ __forceinline__ void grid_dependency_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// v rounded to TF32 (10 mantissa bits, to nearest, ties away from zero):
// the part of a 3xTF32 split the tensor cores take exactly.
__device__ __forceinline__ float to_tf32(float v) {
#ifdef __CUDA_ARCH__
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(v));
    return __uint_as_float(r);
#else
    return __uint_as_float(emu_tf32_rna(v));  // the kernel emulator (tools/kernel-emu)
#endif
}

__device__ __forceinline__ float bf16_to_f32(u16 h) {
    return __uint_as_float(((u32)h) << 16);
}

__device__ __forceinline__ u16 ld_u16(const u8* p) {
    return (u16)p[0] | ((u16)p[1] << 8);
}

__device__ __forceinline__ u32 ld_u32(const u8* p) {
    return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24);
}

// Butterfly sum over a warp: the same lanes meet in the same order every run.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide sum in a fixed tree; `sh` holds at least blockDim.x/32 floats.
// Every thread gets the result. Callers must call it from all threads.
__device__ __forceinline__ float block_sum(float v, float* sh) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    float t = lane < nw ? sh[lane] : 0.0f;
    t = warp_sum(t);
    return t;
}

__device__ __forceinline__ float block_max(float v, float* sh) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    float t = lane < nw ? sh[lane] : -3.402823466e38f;
    t = warp_max(t);
    return t;
}

// One 4-byte copy from global to shared memory that does not hold a
// register or wait (sm_80+; a plain copy before); cp_async_wait_all waits
// for this thread's. The kernel emulator (tools/kernel-emu) holds each copy
// back until the thread's wait, as the hardware may, so a read before the
// wait sees what was there before.
__device__ __forceinline__ void cp_async4(u32* dst, const u32* src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(d), "l"(src) : "memory");
#elif defined(__CUDA_ARCH__)
    *dst = __ldg(src);
#else
    emu_cp_async4(dst, src);
#endif
}

// One 16-byte copy (both addresses 16-byte aligned) from global to shared
// memory, bypassing L1 (.cg): for data a block reads from L2 once, such as
// the token runs of the `_tl` kernels. The emulator takes it as four 4-byte
// copies of one group.
__device__ __forceinline__ void cp_async16(float* dst, const float* src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
#elif defined(__CUDA_ARCH__)
    *(float4*)dst = __ldg((const float4*)src);
#else
    for (int i = 0; i < 4; i++) emu_cp_async4((u32*)dst + i, (const u32*)src + i);
#endif
}

__device__ __forceinline__ void cp_async_wait_all() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_all;\n" ::: "memory");
#elif !defined(__CUDA_ARCH__)
    emu_cp_async_wait(0);
#endif
}

// Close this thread's outstanding copies into a group, and wait until at
// most one group (the newest) is still in flight: a double buffer's wait.
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#elif !defined(__CUDA_ARCH__)
    emu_cp_async_commit();
#endif
}

__device__ __forceinline__ void cp_async_wait_one() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group 1;\n" ::: "memory");
#elif !defined(__CUDA_ARCH__)
    emu_cp_async_wait(1);
#endif
}

// ---------------------------------------------------------------------------
// GGUF block formats. Each type exposes deq32(row, s, out): dequantize the
// s-th run of 32 consecutive elements of a row (whose bytes start at `row`)
// into out[0..32]. K-quants (256-element super-blocks) are split into eight
// such runs so every format parallelises over the same unit.
// Layouts follow ggml (ggml-common.h); all multi-byte fields little-endian.
// CHUNK: bytes of 32 consecutive runs (whole blocks), the unit one warp
// stages into shared memory at a time in the mat-vec.
// ---------------------------------------------------------------------------

struct QF32 {
    static constexpr int CHUNK = 4096;  // bytes of 32 runs (1024 elements)
    static __device__ __forceinline__ void deq32(const u8* row, int s, float* out) {
        const float* p = (const float*)row + s * 32;
#pragma unroll
        for (int i = 0; i < 32; i++) out[i] = p[i];
    }
};

struct QF16 {
    static constexpr int CHUNK = 2048;  // bytes of 32 runs (1024 elements)
    static __device__ __forceinline__ void deq32(const u8* row, int s, float* out) {
        const u16* p = (const u16*)row + s * 32;
#pragma unroll
        for (int i = 0; i < 32; i++) out[i] = f16_to_f32(p[i]);
    }
};

struct QBF16 {
    static constexpr int CHUNK = 2048;  // bytes of 32 runs (1024 elements)
    static __device__ __forceinline__ void deq32(const u8* row, int s, float* out) {
        const u16* p = (const u16*)row + s * 32;
#pragma unroll
        for (int i = 0; i < 32; i++) out[i] = bf16_to_f32(p[i]);
    }
};

// block_q4_0 { half d; u8 qs[16]; }  x = (nibble - 8) * d
struct Q4_0 {
    static constexpr int CHUNK = 576;  // bytes of 32 runs (1024 elements)
    static __device__ __forceinline__ void deq32(const u8* row, int s, float* out) {
        const u8* b = row + s * 18;
        const float d = f16_to_f32(ld_u16(b));
        const u8* qs = b + 2;
#pragma unroll
        for (int j = 0; j < 16; j++) {
            out[j] = ((int)(qs[j] & 0xF) - 8) * d;
            out[j + 16] = ((int)(qs[j] >> 4) - 8) * d;
        }
    }
};

// block_q4_1 { half d; half m; u8 qs[16]; }  x = nibble * d + m
struct Q4_1 {
    static constexpr int CHUNK = 640;  // bytes of 32 runs (1024 elements)
    static __device__ __forceinline__ void deq32(const u8* row, int s, float* out) {
        const u8* b = row + s * 20;
        const float d = f16_to_f32(ld_u16(b));
        const float m = f16_to_f32(ld_u16(b + 2));
        const u8* qs = b + 4;
#pragma unroll
        for (int j = 0; j < 16; j++) {
            out[j] = (float)(qs[j] & 0xF) * d + m;
            out[j + 16] = (float)(qs[j] >> 4) * d + m;
        }
    }
};

// block_q5_0 { half d; u8 qh[4]; u8 qs[16]; }  x = (5-bit - 16) * d
struct Q5_0 {
    static constexpr int CHUNK = 704;  // bytes of 32 runs (1024 elements)
    static __device__ __forceinline__ void deq32(const u8* row, int s, float* out) {
        const u8* b = row + s * 22;
        const float d = f16_to_f32(ld_u16(b));
        const u32 qh = ld_u32(b + 2);
        const u8* qs = b + 6;
#pragma unroll
        for (int j = 0; j < 16; j++) {
            const int h0 = ((qh >> j) << 4) & 0x10;
            const int h1 = (qh >> (j + 12)) & 0x10;
            out[j] = (float)(((qs[j] & 0xF) | h0) - 16) * d;
            out[j + 16] = (float)(((qs[j] >> 4) | h1) - 16) * d;
        }
    }
};

// block_q5_1 { half d; half m; u8 qh[4]; u8 qs[16]; }  x = 5-bit * d + m
struct Q5_1 {
    static constexpr int CHUNK = 768;  // bytes of 32 runs (1024 elements)
    static __device__ __forceinline__ void deq32(const u8* row, int s, float* out) {
        const u8* b = row + s * 24;
        const float d = f16_to_f32(ld_u16(b));
        const float m = f16_to_f32(ld_u16(b + 2));
        const u32 qh = ld_u32(b + 4);
        const u8* qs = b + 8;
#pragma unroll
        for (int j = 0; j < 16; j++) {
            const int h0 = ((qh >> j) << 4) & 0x10;
            const int h1 = (qh >> (j + 12)) & 0x10;
            out[j] = (float)((qs[j] & 0xF) | h0) * d + m;
            out[j + 16] = (float)((qs[j] >> 4) | h1) * d + m;
        }
    }
};

// block_q8_0 { half d; i8 qs[32]; }  x = q * d
struct Q8_0 {
    static constexpr int CHUNK = 1088;  // bytes of 32 runs (1024 elements)
    static __device__ __forceinline__ void deq32(const u8* row, int s, float* out) {
        const u8* b = row + s * 34;
        const float d = f16_to_f32(ld_u16(b));
        const i8* qs = (const i8*)(b + 2);
#pragma unroll
        for (int j = 0; j < 32; j++) out[j] = (float)qs[j] * d;
    }
};

// 6-bit scale/min pair j (0..7) of a Q4_K/Q5_K super-block (ggml get_scale_min_k4).
__device__ __forceinline__ void scale_min_k4(int j, const u8* q, int* sc, int* m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// block_q4_K { half d; half dmin; u8 scales[12]; u8 qs[128]; } (256 elements)
// run j of 8: nibble half (j&1) of bytes qs[32*(j/2) ..], x = d*sc*q - dmin*m
struct Q4K {
    static constexpr int CHUNK = 576;  // bytes of 32 runs (1024 elements)
    static __device__ __forceinline__ void deq32(const u8* row, int s, float* out) {
        const u8* b = row + (s >> 3) * 144;
        const int j = s & 7;
        const float d = f16_to_f32(ld_u16(b));
        const float dmin = f16_to_f32(ld_u16(b + 2));
        int sc, m;
        scale_min_k4(j, b + 4, &sc, &m);
        const float d1 = d * (float)sc, m1 = dmin * (float)m;
        const u8* qs = b + 16 + 32 * (j >> 1);
        const int sh = (j & 1) * 4;
#pragma unroll
        for (int l = 0; l < 32; l++) out[l] = d1 * (float)((qs[l] >> sh) & 0xF) - m1;
    }
};

// block_q5_K { half d; half dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]; }
struct Q5K {
    static constexpr int CHUNK = 704;  // bytes of 32 runs (1024 elements)
    static __device__ __forceinline__ void deq32(const u8* row, int s, float* out) {
        const u8* b = row + (s >> 3) * 176;
        const int j = s & 7;
        const float d = f16_to_f32(ld_u16(b));
        const float dmin = f16_to_f32(ld_u16(b + 2));
        int sc, m;
        scale_min_k4(j, b + 4, &sc, &m);
        const float d1 = d * (float)sc, m1 = dmin * (float)m;
        const u8* qh = b + 16;
        const u8* qs = b + 48 + 32 * (j >> 1);
        const int sh = (j & 1) * 4;
#pragma unroll
        for (int l = 0; l < 32; l++) {
            const int hb = (qh[l] >> j) & 1;
            out[l] = d1 * (float)(((qs[l] >> sh) & 0xF) | (hb << 4)) - m1;
        }
    }
};

// block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; half d; } (256 elements)
// run j of 8: half n = j/4, quarter k = j%4; x = d * scale * (6-bit - 32)
struct Q6K {
    static constexpr int CHUNK = 840;  // bytes of 32 runs (1024 elements)
    static __device__ __forceinline__ void deq32(const u8* row, int s, float* out) {
        const u8* b = row + (s >> 3) * 210;
        const int j = s & 7, n = j >> 2, k = j & 3;
        const float d = f16_to_f32(ld_u16(b + 208));
        const u8* ql = b + 64 * n + ((k & 1) ? 32 : 0);
        const u8* qh = b + 128 + 32 * n;
        const i8* sc = (const i8*)(b + 192) + 8 * n + 2 * k;
        const int lsh = (k >> 1) * 4;
        const int hsh = 2 * k;
#pragma unroll
        for (int l = 0; l < 32; l++) {
            const int q = (((ql[l] >> lsh) & 0xF) | (((qh[l] >> hsh) & 3) << 4)) - 32;
            out[l] = d * (float)sc[l >> 4] * (float)q;
        }
    }
};

// The RMS scale 1/sqrt(mean(x^2) + eps) of one vector, by one warp in a
// fixed order. The fused decode mat-vecs call it for their vector; `row_rms`
// (rmsnorm.cu) calls it per row of a batched decode step, so both give a
// row the same bits (WORKER-4710).
__device__ __forceinline__ float warp_rms(const float* x, int cols, float eps) {
    const int lane = threadIdx.x & 31;
    // cols % 32 == 0, so cols / 4 float4s; independent loads, in-order sum per lane.
    const float4* x4 = (const float4*)x;
    float ss = 0.0f;
#pragma unroll 4
    for (int i = lane; i < (cols >> 2); i += 32) {
        const float4 v = x4[i];
        ss = fmaf(v.x, v.x, ss);
        ss = fmaf(v.y, v.y, ss);
        ss = fmaf(v.z, v.z, ss);
        ss = fmaf(v.w, v.w, ss);
    }
    ss = warp_sum(ss);
    return 1.0f / sqrtf(ss / (float)cols + eps);
}

// A sequence's KV rows live in pages of KV_PAGE positions (KV_PAGE is
// defined by the launcher, crate::gpu::attention::KV_PAGE_TOKENS, ahead of
// this header); `table` maps the sequence's page i to a page of the pool.
// The pool row of position t. KV_PAGE is a multiple of the attention
// kernels' 32-row chunk, so the rows of a chunk are consecutive in the pool.
__device__ __forceinline__ u64 kv_row(const int* table, int t) {
    return (u64)table[t / KV_PAGE] * KV_PAGE + (u64)(t % KV_PAGE);
}

// RoPE, written once for rope_kv.cu and the fused decode attention
// (attention.cu), so both rotate to the same bits: pair j of a head of hd
// dims turns by pos * base^(-2j/hd); llama's "norm" style pairs dims 2j and
// 2j + 1, NeoX's j and j + hd/2. src and dst may be the same head.
__device__ __forceinline__ void rope_angle(int pos, int j, int hd, float base, float* cs, float* sn) {
    const float freq = powf(base, -2.0f * (float)j / (float)hd);
    const float ang = (float)pos * freq;
    sincosf(ang, sn, cs);
}

__device__ __forceinline__ void rope_pair(const float* src, float* dst, int j, int hd, int neox, float cs, float sn) {
    const int a = neox ? j : 2 * j;
    const int b = neox ? j + (hd >> 1) : 2 * j + 1;
    const float x0 = src[a], x1 = src[b];
    dst[a] = x0 * cs - x1 * sn;
    dst[b] = x0 * sn + x1 * cs;
}
