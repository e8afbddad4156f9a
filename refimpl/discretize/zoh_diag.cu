// zoh_diag.cu: zero-order hold of diagonal SSMs, Ad = exp(dt*Lambda), Bd = expm1(dt*Lambda)/Lambda * B.
//
// Layout: Lambda, B, Ad, Bd are contiguous (..., N), flattened to n = batch*N modes; dt is (batch,), one step
// per channel, so mode i reads dt[i / N]. Grid: a 1-D grid-stride loop; thread t of the grid owns modes
// t, t + stride, t + 2*stride, ..., taken UNROLL at a time so that their loads overlap. Each complex64 mode reads 8 + 8 bytes (+4 for dt, mostly cached) and writes
// 8 + 8: the kernel is bound by memory bandwidth. Index is int where n + UNROLL*stride < 2^31, else long long.
//
// CUDA has no complex expm1, and (exp(z) - 1)/z in float32 loses every digit as |z| -> 0. With z = x + iy,
//   Re(e^z - 1) = e^x cos y - 1 = expm1(x) cos y + (cos y - 1) = expm1(x) cos y - 2 sin^2(y/2),
//   Im(e^z - 1) = e^x sin y,
// in which nothing cancels. One sincos of y/2 gives sin y = 2 s c and cos y = (c - s)(c + s) as well.

// (e^z - 1)/z by Smith's division (no overflow of x^2 + y^2); 1 at z = 0.
__device__ __forceinline__ float2 phi1_c64(float x, float y, float ex, float s, float c)
{
    if (x == 0.f && y == 0.f) return make_float2(1.f, 0.f);
    const float cy = (c - s) * (c + s), sy = 2.f * s * c;
    const float er = expm1f(x) * cy - 2.f * s * s, ei = ex * sy;
    if (fabsf(x) >= fabsf(y)) {
        const float r = y / x, d = x + y * r;
        return make_float2((er + ei * r) / d, (ei - er * r) / d);
    }
    const float r = x / y, d = x * r + y;
    return make_float2((er * r + ei) / d, (ei * r - er) / d);
}

constexpr int UNROLL = 4;  // independent modes per thread per iteration: their loads are in flight together

template <typename Index>
__device__ __forceinline__ void zoh_diag_c64(const float2* __restrict__ lam, const float2* __restrict__ b,
                                             const float* __restrict__ dt, float2* __restrict__ ad,
                                             float2* __restrict__ bd, Index n, Index N)
{
    const Index stride = (Index)gridDim.x * blockDim.x;
    for (Index base = (Index)blockIdx.x * blockDim.x + threadIdx.x; base < n; base += UNROLL * stride) {
        float2 L[UNROLL], u[UNROLL];
        float h[UNROLL];
#pragma unroll
        for (int k = 0; k < UNROLL; ++k) {
            const Index i = base + k * stride;
            if (i < n) { L[k] = lam[i]; u[k] = b[i]; h[k] = dt[i / N]; }
        }
#pragma unroll
        for (int k = 0; k < UNROLL; ++k) {
            const Index i = base + k * stride;
            if (i >= n) break;
            const float x = h[k] * L[k].x, y = h[k] * L[k].y;
            const float ex = expf(x);
            float s, c;
            sincosf(0.5f * y, &s, &c);
            ad[i] = make_float2(ex * (c - s) * (c + s), ex * 2.f * s * c);
            const float2 q = phi1_c64(x, y, ex, s, c);
            const float qr = h[k] * q.x, qi = h[k] * q.y;  // Bd = dt * phi1(dt*Lambda) * B
            bd[i] = make_float2(qr * u[k].x - qi * u[k].y, qr * u[k].y + qi * u[k].x);
        }
    }
}

template <typename Index>
__device__ __forceinline__ void zoh_diag_f32(const float* __restrict__ lam, const float* __restrict__ b,
                                             const float* __restrict__ dt, float* __restrict__ ad,
                                             float* __restrict__ bd, Index n, Index N)
{
    const Index stride = (Index)gridDim.x * blockDim.x;
    for (Index i = (Index)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float h = dt[i / N], z = h * lam[i];
        ad[i] = expf(z);
        bd[i] = (z == 0.f ? h : h * (expm1f(z) / z)) * b[i];
    }
}

extern "C" {
__global__ void zoh_diag_c64_i32(const float2* lam, const float2* b, const float* dt, float2* ad, float2* bd,
                                 int n, int N)
{ zoh_diag_c64<int>(lam, b, dt, ad, bd, n, N); }

__global__ void zoh_diag_c64_i64(const float2* lam, const float2* b, const float* dt, float2* ad, float2* bd,
                                 long long n, long long N)
{ zoh_diag_c64<long long>(lam, b, dt, ad, bd, n, N); }

__global__ void zoh_diag_f32_i32(const float* lam, const float* b, const float* dt, float* ad, float* bd,
                                 int n, int N)
{ zoh_diag_f32<int>(lam, b, dt, ad, bd, n, N); }

__global__ void zoh_diag_f32_i64(const float* lam, const float* b, const float* dt, float* ad, float* bd,
                                 long long n, long long N)
{ zoh_diag_f32<long long>(lam, b, dt, ad, bd, n, N); }
}
