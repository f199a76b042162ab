// sha256.cu: SHA-256 of each fixed-size chunk of the resident weight bytes
// (WORKER-4113, 4121). The host combines the leaves with
// shard::digest::root_from_leaves, so the GPU root equals the CPU root.
// One thread per leaf: a SHA-256 chain is sequential inside a chunk, so the
// chunk size (shard::digest::CHUNK_BYTES) bounds the latency of the pass.
#include "common.cuh"

__constant__ u32 K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

__device__ __forceinline__ u32 rotr(u32 x, int n) { return (x >> n) | (x << (32 - n)); }
__device__ __forceinline__ u32 bswap(u32 x) { return __byte_perm(x, 0, 0x0123); }

__device__ void compress(u32* st, u32* w) {
#pragma unroll
    for (int i = 16; i < 64; i++) {
        const u32 s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
        const u32 s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    u32 a = st[0], b = st[1], c = st[2], d = st[3], e = st[4], f = st[5], g = st[6], h = st[7];
#pragma unroll
    for (int i = 0; i < 64; i++) {
        const u32 S1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
        const u32 ch = (e & f) ^ (~e & g);
        const u32 t1 = h + S1 + ch + K256[i] + w[i];
        const u32 S0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
        const u32 mj = (a & b) ^ (a & c) ^ (b & c);
        const u32 t2 = S0 + mj;
        h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    st[0] += a; st[1] += b; st[2] += c; st[3] += d; st[4] += e; st[5] += f; st[6] += g; st[7] += h;
}

// data must be 16-byte aligned; chunk must be a multiple of 64.
extern "C" __global__ void sha256_leaves(const u8* data, u64 total, u64 chunk, int n_leaves, u8* out) {
    grid_dependency_sync();
    const int leaf = blockIdx.x * blockDim.x + threadIdx.x;
    if (leaf >= n_leaves) return;
    const u64 start = (u64)leaf * chunk;
    const u64 rem = total - start;
    const u64 len = rem < chunk ? rem : chunk;
    u32 st[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    u32 w[64];
    const u8* p = data + start;
    const u64 full = len / 64;
    for (u64 b = 0; b < full; b++) {
        const uint4* v = (const uint4*)(p + b * 64);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const uint4 x = v[i];
            w[4 * i + 0] = bswap(x.x);
            w[4 * i + 1] = bswap(x.y);
            w[4 * i + 2] = bswap(x.z);
            w[4 * i + 3] = bswap(x.w);
        }
        compress(st, w);
    }
    // Tail: remaining bytes, 0x80, zero pad, 64-bit big-endian bit length.
    u8 tail[128];
    const int r = (int)(len - full * 64);
    for (int i = 0; i < 128; i++) tail[i] = 0;
    for (int i = 0; i < r; i++) tail[i] = p[full * 64 + i];
    tail[r] = 0x80;
    const int nb = (r + 9 <= 64) ? 1 : 2;
    const u64 bits = len * 8;
    for (int i = 0; i < 8; i++) tail[nb * 64 - 1 - i] = (u8)(bits >> (8 * i));
    for (int b = 0; b < nb; b++) {
        for (int i = 0; i < 16; i++) {
            const u8* q = tail + b * 64 + 4 * i;
            w[i] = ((u32)q[0] << 24) | ((u32)q[1] << 16) | ((u32)q[2] << 8) | (u32)q[3];
        }
        compress(st, w);
    }
    u8* o = out + (u64)leaf * 32;
    for (int i = 0; i < 8; i++) {
        o[4 * i + 0] = (u8)(st[i] >> 24);
        o[4 * i + 1] = (u8)(st[i] >> 16);
        o[4 * i + 2] = (u8)(st[i] >> 8);
        o[4 * i + 3] = (u8)st[i];
    }
}
