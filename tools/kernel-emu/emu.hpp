// emu.hpp: the CUDA kernels compiled for the host CPU, one fiber per CUDA
// thread (issue 11 points 5 and 7, issue 12 point 2; WORKER-4710).
//
// Why: the kernels' logic (which lane sums which run in which order, where
// a block waits for another warp's writes) decides the bits a worker
// streams, and it used to be checkable only on a GPU machine, a few times a
// month. Compiled for the host with this header, every kernel file runs
// under plain `cargo test`: the tests in src/gpu/emu/ launch a kernel on
// host memory and compare batched rows with lone rows, and results with the
// CPU reference. What it cannot show: speed, the GPU's transcendental
// functions (expf here is the host's), and the compiler's register choices.
//
// How: a launch runs the grid's blocks one after another. Each thread of a
// block is a fiber with its own stack that runs until it reaches a barrier
// (__syncthreads, __syncwarp, a shuffle) or returns; when every live thread
// of the block (or of the warp, for warp barriers) has arrived, they all go
// on. Static __shared__ arrays become function statics in one section
// (blocks never run at the same time); they and the dynamic shared buffer
// are refilled with NaN bytes before each block, so a read of something no
// thread wrote shows, and a write past the dynamic buffer is reported. The
// order in which blocks run, and threads between barriers, is forward,
// reverse or shuffled (emu_set_order), so a missing barrier or a "last
// block" that is assumed to be a particular one shows as a wrong result
// under some order rather than depending on luck. Fiber stacks end in a
// guard page. Not modelled: a thread that exits while others wait at a
// barrier counts as arrived (as on current GPUs), and memory is coherent
// between blocks without fences.
//
// The kernels are compiled with -ffp-contract=off, as NVRTC compiles them
// with --fmad=false: a product and a sum stay two roundings unless the
// source writes fmaf.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <cstddef>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __constant__
#define __restrict__ __restrict
// Static shared arrays are function statics in one section, which the
// runtime refills with NaN bytes before each block.
#define __shared__ static __attribute__((section("emu_shared")))

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) int4 {
    int x, y, z, w;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
struct alignas(8) uint2 {
    unsigned x, y;
};
// The device's integer and float min/max overloads.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline float2 make_float2(float x, float y) { return float2{x, y}; }

// Set by the scheduler before it resumes a thread.
inline dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace emu {
// The calling thread's warp barrier / block barrier (emu_runtime.cpp).
void block_barrier();
void warp_barrier(unsigned mask);
// This warp's exchange slots for shuffles (32 words of 8 bytes).
unsigned long long* warp_slots();
unsigned lane_id();
// The dynamic shared buffer of the running block.
void* dyn_smem();

template <class T>
T shuffle_from(unsigned mask, T v, int src_lane) {
    static_assert(sizeof(T) <= 8, "a shuffle moves at most 8 bytes");
    unsigned long long* s = warp_slots();
    const unsigned lane = lane_id();
    unsigned long long w = 0;
    memcpy(&w, &v, sizeof(T));
    s[lane] = w;
    warp_barrier(mask);
    T out = v;
    if (src_lane >= 0 && src_lane < 32 && ((mask >> src_lane) & 1u)) memcpy(&out, &s[src_lane], sizeof(T));
    warp_barrier(mask);
    return out;
}
}  // namespace emu

inline void __syncthreads() { emu::block_barrier(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::warp_barrier(mask); }
inline void __threadfence() {}

template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    const int lane = (int)emu::lane_id();
    const int base = lane & ~(width - 1);
    const int src = lane ^ lane_mask;
    return emu::shuffle_from(mask, v, (src & ~(width - 1)) == base ? src : lane);
}
template <class T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
    const int lane = (int)emu::lane_id();
    return emu::shuffle_from(mask, v, (lane & ~(width - 1)) + (src_lane & (width - 1)));
}
template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    const int lane = (int)emu::lane_id();
    const int src = lane - (int)delta;
    return emu::shuffle_from(mask, v, src >= (lane & ~(width - 1)) ? src : lane);
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    const int lane = (int)emu::lane_id();
    const int src = lane + (int)delta;
    return emu::shuffle_from(mask, v, src < (lane & ~(width - 1)) + width ? src : lane);
}
template <class T>
unsigned __match_any_sync(unsigned mask, T v) {
    unsigned long long* s = emu::warp_slots();
    const unsigned lane = emu::lane_id();
    unsigned long long w = 0;
    memcpy(&w, &v, sizeof(T));
    s[lane] = w;
    emu::warp_barrier(mask);
    unsigned m = 0;
    for (int i = 0; i < 32; i++)
        if (((mask >> i) & 1u) && s[i] == w) m |= 1u << i;
    emu::warp_barrier(mask);
    return m;
}

template <class T>
inline T __ldg(const T* p) { return *p; }
template <class T>
inline T __ldcg(const T* p) { return *p; }

inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
inline unsigned __float_as_uint(float f) { unsigned i; memcpy(&i, &f, 4); return i; }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz((unsigned)v); }
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const unsigned long long v = ((unsigned long long)y << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; i++) r |= (unsigned)((v >> (8 * ((s >> (4 * i)) & 7u))) & 0xffu) << (8 * i);
    return r;
}
// Blocks and threads never run at the same time, so a plain update is atomic.
template <class T>
inline T atomicAdd(T* p, T v) { const T o = *p; *p = o + v; return o; }
template <class T>
inline T atomicMax(T* p, T v) { const T o = *p; *p = o > v ? o : v; return o; }

// Asynchronous copies (cp.async): held back per thread until its wait.
// emu_cp_async_commit closes the thread's open copies into a group;
// emu_cp_async_wait(n) lands every group but the n newest (n = 0: all,
// the open copies included, as cp.async.wait_all).
void emu_cp_async4(unsigned* dst, const unsigned* src);
void emu_cp_async_commit();
void emu_cp_async_wait(int newest_left);

// The device's exact conversions (cvt.f32.f16 and cvt.rna.tf32.f32), for
// common.cuh and dequant.cu's host paths.
inline float emu_f16_to_f32(unsigned short h) {
    const unsigned sign = (unsigned)(h & 0x8000u) << 16;
    const unsigned e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    unsigned bits;
    if (e == 0x1f) {
        bits = m ? 0x7fffffffu : sign | 0x7f800000u;  // the device's canonical NaN
    } else if (e != 0) {
        bits = sign | ((e + 112u) << 23) | (m << 13);
    } else if (m == 0) {
        bits = sign;
    } else {
        int k = 0;
        unsigned mm = m;
        while (!(mm & 0x400u)) { mm <<= 1; k++; }
        bits = sign | ((113u - (unsigned)k) << 23) | ((mm & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
inline unsigned emu_tf32_rna(float v) {
    unsigned u;
    memcpy(&u, &v, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) return (u & 0x7fffffu) ? 0x7fffffffu : u;
    u += 0x1000u;  // half of the 13 dropped bits: ties away from zero
    return u & 0xffffe000u;
}

// One warp's m16n8k8 TF32 MMA, c += A·B (mma.sync in cuda/matvec_mma.cu;
// fragments as the PTX ISA lays them out: lane 4g + t holds A(g, t),
// A(g + 8, t), A(g, t + 4), A(g + 8, t + 4), B(t, g), B(t + 4, g) and
// C(g, 2t), C(g, 2t + 1), C(g + 8, 2t), C(g + 8, 2t + 1)). Each lane
// gathers its two rows of A and two columns of B through the warp's
// exchange slots, two floats a round, then adds the eight exact products
// in k order (the hardware's order inside one MMA may differ: the
// emulator checks the kernel's structure, the GPU suite the device's bits).
inline void emu_mma_tf32(float* c, const float* a, const float* b) {
    unsigned long long* s = emu::warp_slots();
    const unsigned lane = emu::lane_id(), g = lane >> 2, t = lane & 3;
    float r0[8], r1[8], k0[8], k1[8];
    auto part = [](unsigned long long w, int i) {
        float p[2];
        memcpy(p, &w, 8);
        return p[i];
    };
    auto publish = [&](float lo, float hi) {
        const float p[2] = {lo, hi};
        unsigned long long w;
        memcpy(&w, p, 8);
        s[lane] = w;
        emu::warp_barrier(0xffffffffu);
    };
    publish(a[0], a[1]);
    for (int k = 0; k < 4; k++) {
        r0[k] = part(s[4 * g + k], 0);
        r1[k] = part(s[4 * g + k], 1);
    }
    emu::warp_barrier(0xffffffffu);
    publish(a[2], a[3]);
    for (int k = 0; k < 4; k++) {
        r0[k + 4] = part(s[4 * g + k], 0);
        r1[k + 4] = part(s[4 * g + k], 1);
    }
    emu::warp_barrier(0xffffffffu);
    publish(b[0], b[1]);
    for (int k = 0; k < 4; k++) {
        k0[k] = part(s[8 * t + k], 0);
        k0[k + 4] = part(s[8 * t + k], 1);
        k1[k] = part(s[8 * t + 4 + k], 0);
        k1[k + 4] = part(s[8 * t + 4 + k], 1);
    }
    emu::warp_barrier(0xffffffffu);
    for (int k = 0; k < 8; k++) {
        c[0] += r0[k] * k0[k];
        c[1] += r0[k] * k1[k];
        c[2] += r1[k] * k0[k];
        c[3] += r1[k] * k1[k];
    }
}
