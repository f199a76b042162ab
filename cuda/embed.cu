// embed.cu: out[t] = dequantized row tok[t] of the token-embedding matrix (KERNEL-EMBED).
// Why: the embedding stays in its GGUF block format in VRAM; only the rows a
// step needs are expanded. Token ids come from device memory so a captured
// decode graph can replay with a new id; the host validates ids < vocab first.
// One thread per 32-element run; gridDim.y = tokens.
#include "common.cuh"

template <class Q>
__device__ __forceinline__ void embed_impl(const u8* W, u64 row_bytes, const int* tok, float* out, int cols) {
    const int s = blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= (cols >> 5)) return;
    const int t = blockIdx.y;
    const u8* row = W + (u64)tok[t] * row_bytes;
    float v[32];
    Q::deq32(row, s, v);
    float* o = out + (u64)t * cols + s * 32;
#pragma unroll
    for (int i = 0; i < 32; i++) o[i] = v[i];
}

#define EMBED(name, Q)                                                                       \
    extern "C" __global__ void name(const u8* W, u64 row_bytes, const int* tok, float* out, int cols) { grid_dependency_sync(); \
        embed_impl<Q>(W, row_bytes, tok, out, cols);                                         \
    }

EMBED(embed_f32, QF32)
EMBED(embed_f16, QF16)
EMBED(embed_bf16, QBF16)
EMBED(embed_q4_0, Q4_0)
EMBED(embed_q4_1, Q4_1)
EMBED(embed_q5_0, Q5_0)
EMBED(embed_q5_1, Q5_1)
EMBED(embed_q8_0, Q8_0)
EMBED(embed_q4_k, Q4K)
EMBED(embed_q5_k, Q5K)
EMBED(embed_q6_k, Q6K)
