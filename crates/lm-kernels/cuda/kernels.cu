// lm-kernels' own CUDA kernels, compiled to PTX by build.rs (feature `cuda`) and launched from
// src/gpu.rs. One block per row; f32 throughout.

#include <math_constants.h>

#define WARP 32

__device__ __forceinline__ float warp_max(float v) {
    for (int o = WARP / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    return v;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = WARP / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}

// The block's max (is_max) or sum of v, on every thread; blockDim.x a multiple of 32, ≤ 1024.
__device__ float block_reduce(float v, bool is_max) {
    __shared__ float partial[32];
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    v = is_max ? warp_max(v) : warp_sum(v);
    __syncthreads();  // `partial` may still be read by a previous call
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    const int warps = blockDim.x / WARP;
    float r = lane < warps ? partial[lane] : (is_max ? -CUDART_INF_F : 0.f);
    return is_max ? warp_max(r) : warp_sum(r);
}

// log Σ_j exp(z_j) of one row of n, and its max.
__device__ void row_lse(const float *z, int n, float *lse, float *max) {
    float m = -CUDART_INF_F;
    for (int j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, z[j]);
    m = block_reduce(m, true);
    float s = 0.f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) s += expf(z[j] - m);
    s = block_reduce(s, false);
    *lse = m + logf(s);
    *max = m;
}

// loss[r] = log Σ_j exp(z[r, j]) − z[r, y[r]], or 0 where y[r] == ignore.
extern "C" __global__ void lm_nll_fwd_f32(const float *z, const long long *y, float *loss,
                                          const int vocab, const long long ignore) {
    const size_t r = blockIdx.x;
    const float *row = z + r * (size_t)vocab;
    const long long t = y[r];
    float lse, m;
    row_lse(row, vocab, &lse, &m);
    if (threadIdx.x == 0) loss[r] = (t == ignore) ? 0.f : lse - row[t];
}

// dz[r, j] = (softmax(z[r])_j − [j == y[r]]) · g[r], or 0 on ignored rows.
extern "C" __global__ void lm_nll_bwd_f32(const float *z, const long long *y, const float *g,
                                          float *dz, const int vocab, const long long ignore) {
    const size_t r = blockIdx.x;
    const float *row = z + r * (size_t)vocab;
    float *out = dz + r * (size_t)vocab;
    const long long t = y[r];
    if (t == ignore) {
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) out[j] = 0.f;
        return;
    }
    float lse, m;
    row_lse(row, vocab, &lse, &m);
    const float gr = g[r];
    for (int j = threadIdx.x; j < vocab; j += blockDim.x)
        out[j] = (expf(row[j] - lse) - (j == t ? 1.f : 0.f)) * gr;
}
