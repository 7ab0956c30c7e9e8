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

// loss[r] = log Σ_j exp(z[r, j]) − z[r, y[r]], or 0 where y[r] == ignore, or NaN where y[r] is
// outside [0, vocab) (the host never reads the targets: a bad id shows as a non-finite loss).
extern "C" __global__ void lm_nll_fwd_f32(const float *z, const long long *y, float *loss,
                                          const int vocab, const long long ignore) {
    const size_t r = blockIdx.x;
    const float *row = z + r * (size_t)vocab;
    const long long t = y[r];
    float lse, m;
    row_lse(row, vocab, &lse, &m);
    if (threadIdx.x == 0)
        loss[r] = (t == ignore) ? 0.f : (t < 0 || t >= vocab) ? CUDART_NAN_F : lse - row[t];
}

// dz[r, j] = (softmax(z[r])_j − [j == y[r]]) · g[r], or 0 on ignored rows.
extern "C" __global__ void lm_nll_bwd_f32(const float *z, const long long *y, const float *g,
                                          float *dz, const int vocab, const long long ignore) {
    const size_t r = blockIdx.x;
    const float *row = z + r * (size_t)vocab;
    float *out = dz + r * (size_t)vocab;
    const long long t = y[r];
    if (t == ignore || t < 0 || t >= vocab) {
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) out[j] = 0.f;
        return;
    }
    float lse, m;
    row_lse(row, vocab, &lse, &m);
    const float gr = g[r];
    for (int j = threadIdx.x; j < vocab; j += blockDim.x)
        out[j] = (expf(row[j] - lse) - (j == t ? 1.f : 0.f)) * gr;
}

// GELU, `exact` = 1: x·Φ(x) = ½x(1 + erf(x/√2)) (BERT, BART); 0: GPT-2's
// ½x(1 + tanh(√(2/π)(x + 0.044715x³))).
#define SQRT_2_OVER_PI 0.7978845608028654f
#define GELU_A 0.044715f
#define INV_SQRT_2PI 0.3989422804014327f

__device__ __forceinline__ float gelu_value(float x, int exact) {
    if (exact) return 0.5f * x * (1.f + erff(x * CUDART_SQRT_HALF_F));
    return 0.5f * x * (1.f + tanhf(SQRT_2_OVER_PI * (x + GELU_A * x * x * x)));
}

// d gelu / dx. Exact: Φ(x) + x·φ(x). Tanh form, with t = tanh(u), u = c(x + a x³):
// ½(1 + t) + ½x(1 − t²)·c(1 + 3a x²).
__device__ __forceinline__ float gelu_slope(float x, int exact) {
    if (exact)
        return 0.5f * (1.f + erff(x * CUDART_SQRT_HALF_F)) +
               x * expf(-0.5f * x * x) * INV_SQRT_2PI;
    const float t = tanhf(SQRT_2_OVER_PI * (x + GELU_A * x * x * x));
    return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * SQRT_2_OVER_PI * (1.f + 3.f * GELU_A * x * x);
}

// y[i] = gelu(x[i] + b[i mod cols]); with cols = 0 there is no bias (b is not read).
extern "C" __global__ void lm_bias_gelu_fwd_f32(const float *x, const float *b, float *y,
                                                const size_t n, const int cols, const int exact) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)blockDim.x * gridDim.x) {
        const float pre = cols ? x[i] + b[i % cols] : x[i];
        y[i] = gelu_value(pre, exact);
    }
}

// dx[i] = dy[i]·gelu'(x[i] + b[i mod cols]) (the bias's gradient is the sum of dx over rows).
extern "C" __global__ void lm_bias_gelu_bwd_f32(const float *x, const float *b, const float *dy,
                                                float *dx, const size_t n, const int cols,
                                                const int exact) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)blockDim.x * gridDim.x) {
        const float pre = cols ? x[i] + b[i % cols] : x[i];
        dx[i] = dy[i] * gelu_slope(pre, exact);
    }
}

// One Adam/AdamW step over n parameters, in place, in the order of lm-optim's CPU kernel:
//   g ← g·grad_scale + l2·θ;  m ← β1·m + (1 − β1)·g;  v ← β2·v + (1 − β2)·g²;
//   v̂ ← max(v_max, v) with AMSGrad (v_max != null), else v;
//   θ ← θ·decay − step_size·m / (√v̂ · inv_sqrt_bc2 + ε).
// With `on_device` (4 floats: step size, 1/sqrt(1 - beta2^t), grad scale, apply), those come
// from the device and apply = 0 leaves everything unchanged: a step gated on the device.
extern "C" __global__ void lm_adam_f32(float *theta, const float *grad, float *m, float *v,
                                       float *v_max, const float *on_device, const size_t n,
                                       const float beta1, const float beta2,
                                       const float one_minus_beta1, const float one_minus_beta2,
                                       const float eps, float step_size, float inv_sqrt_bc2,
                                       const float l2, const float decay, float grad_scale) {
    if (on_device) {
        if (on_device[3] == 0.f) return;
        step_size = on_device[0];
        inv_sqrt_bc2 = on_device[1];
        grad_scale = on_device[2];
    }
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)blockDim.x * gridDim.x) {
        const float p = theta[i];
        const float g = grad[i] * grad_scale + l2 * p;
        const float mi = beta1 * m[i] + one_minus_beta1 * g;
        const float vi = beta2 * v[i] + one_minus_beta2 * g * g;
        m[i] = mi;
        v[i] = vi;
        float vh = vi;
        if (v_max) {
            vh = fmaxf(v_max[i], vi);
            v_max[i] = vh;
        }
        theta[i] = p * decay - step_size * mi / (sqrtf(vh) * inv_sqrt_bc2 + eps);
    }
}
