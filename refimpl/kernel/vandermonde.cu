// vandermonde.cu: the S4D kernel K[h, l] = Re sum_n W[h,n] * z[h,n]^l, z = exp(logz), W = c * C * Bd.
//
// It includes chapter 1's discretize/zoh_diag.cu (compile with -I refimpl/discretize, as gpu.py does): the
// ZOH input matrix Bd = dt * phi1(dt*Lambda) * B is chapter 1's phi1_c64, evaluated per mode in the block
// prologue, so no separate discretization pass (and no launch) precedes this kernel.
//
// Layout: K (H, L) float32 row-major; Lambda, B, C complex64 and dt float32, each with a channel stride
// (0 when shared by every channel, N, or 1 for dt). For ZOH (use_logz = 0) the step exponent is
// logz = dt * Lambda, formed in double (a float*float product is exact in double). For other rules
// (use_logz = 1) the caller passes logz (H, N) as double2 and Bd (H, N) in place of B; Lambda and dt are
// unused.
//
// Grid: 1-D, one block per (h, tile of TPB*RUN taps); block b owns h = b / tiles, tile = b % tiles.
// Block: TPB threads; thread t owns RUN consecutive taps l0 = tile*TPB*RUN + t*RUN .. l0+RUN-1, whose
// partial sums live in RUN registers. Modes are staged in shared memory MODES at a time (W, logz and z per
// mode, computed once per block), so no (H, N, L) array exists anywhere.
//
// Per (thread, mode): one accurate start value W*z^l0 and then RUN-1 complex multiplies by z. The start is
// exp(l0*logz) with the argument reduced in double: the phase l0*Im(logz) is taken mod 2*pi in double and
// only the reduced angle goes to float sin/cos, and the magnitude exp(l0*Re(logz)) is exp2 of a double-
// formed exponent. The float32 error therefore does not grow with l (as exp(l*x) in float, z**l or a long
// chain of multiplies all do: l*eps of phase at l = 65536 is 4e-3 rad); it is that of RUN multiplies.
// Cost per (h, n, l): 1 FADD + 2 FMUL + 2 FFMA, against the floor of one complex multiply-add (4 FMA).
// All offsets into K and the mode arrays are 64-bit (computed once per thread, outside the hot loop).
//
// check != 0: the prologue ORs into *flag a bit for each input it reads that holds NaN or inf
// (1 Lambda, 2 B, 4 C, 8 dt), so that the wrapper can raise naming the argument without a separate pass.

#include "zoh_diag.cu"

#define MODES 64

// |x| <= FLT_MAX is false for NaN and for +-inf (a comparison no fast-math flag may drop here)
__device__ __forceinline__ bool finite2(float2 a) { return fabsf(a.x) <= 3.402823466e38f && fabsf(a.y) <= 3.402823466e38f; }
#define TWO_PI 6.283185307179586
#define INV_TWO_PI 0.15915494309189535
#define LOG2E 1.4426950408889634

template <int RUN>
__device__ __forceinline__ void vandermonde_block(const float2* __restrict__ lam, long long lam_hs,
                                                  const float* __restrict__ dt, long long dt_hs,
                                                  const double2* __restrict__ logz_in, int use_logz,
                                                  const float2* __restrict__ b, long long b_hs,
                                                  const float2* __restrict__ C, long long C_hs, float c,
                                                  float* __restrict__ K, long long H, long long N, long long L,
                                                  int check, int* __restrict__ flag)
{
    __shared__ float2 sW[MODES];
    __shared__ double2 sLog[MODES];
    __shared__ float2 sZ[MODES];

    const long long tile_taps = (long long)blockDim.x * RUN;
    const long long tiles = (L + tile_taps - 1) / tile_taps;
    const long long h = blockIdx.x / tiles;
    const long long l0 = (blockIdx.x % tiles) * tile_taps + (long long)threadIdx.x * RUN;
    if (h >= H) return;
    const float f_dt = use_logz ? 1.f : dt[h * dt_hs];
    const double h_dt = (double)f_dt;

    float acc[RUN];
#pragma unroll
    for (int j = 0; j < RUN; ++j) acc[j] = 0.f;

    for (long long n0 = 0; n0 < N; n0 += MODES) {
        const int m = (int)min((long long)MODES, N - n0);
        __syncthreads();  // the previous chunk's modes are no longer read
        for (int i = threadIdx.x; i < m; i += blockDim.x) {
            const long long n = n0 + i;
            const float2 cc = C[h * C_hs + n], u = b[h * b_hs + n];
            double2 g;
            float2 bd;
            int bad = finite2(cc) ? 0 : 4;
            if (use_logz) {
                g = logz_in[h * N + n];
                bd = u;
            } else {
                const float2 a = lam[h * lam_hs + n];
                g = make_double2(h_dt * (double)a.x, h_dt * (double)a.y);
                // chapter 1's ZOH in float32: Bd = dt * phi1(dt*Lambda) * B (discretize/zoh_diag.cu)
                const float x = f_dt * a.x, y = f_dt * a.y;
                float s2, c2;
                sincosf(0.5f * y, &s2, &c2);
                const float2 q = phi1_c64(x, y, expf(x), s2, c2);
                const float qr = f_dt * q.x, qi = f_dt * q.y;
                bd = make_float2(qr * u.x - qi * u.y, qr * u.y + qi * u.x);
                bad |= (finite2(a) ? 0 : 1) | (finite2(u) ? 0 : 2) | (fabsf(f_dt) <= 3.402823466e38f ? 0 : 8);
            }
            if (check && bad) atomicOr(flag, bad);
            sW[i] = make_float2(c * (cc.x * bd.x - cc.y * bd.y), c * (cc.x * bd.y + cc.y * bd.x));
            sLog[i] = g;
            double s, co;
            sincos(g.y, &s, &co);
            const double r = exp(g.x);
            sZ[i] = make_float2((float)(r * co), (float)(r * s));
        }
        __syncthreads();
        if (l0 >= L) continue;
        const double dl0 = (double)l0;
        for (int i = 0; i < m; ++i) {
            const double2 g = sLog[i];
            // z^l0 = exp(l0*Re g) * (cos, sin)(l0*Im g), the angle reduced mod 2 pi in double
            const double phase = dl0 * g.y;
            const float ang = (float)fma(-rint(phase * INV_TWO_PI), TWO_PI, phase);
            const float mag = exp2f((float)(dl0 * g.x * LOG2E));
            float sn, cs;
            __sincosf(ang, &sn, &cs);
            const float pr = mag * cs, pi = mag * sn;
            const float2 w = sW[i], z = sZ[i];
            float sr = w.x * pr - w.y * pi, si = w.x * pi + w.y * pr;
#pragma unroll
            for (int j = 0; j < RUN; ++j) {
                acc[j] += sr;
                const float t = sr * z.x - si * z.y;
                si = sr * z.y + si * z.x;
                sr = t;
            }
        }
    }
    if (l0 >= L) return;
    float* out = K + h * L + l0;
    if (l0 + RUN <= L && (L & 3) == 0) {  // rows start 16-byte aligned and the run is whole
#pragma unroll
        for (int j = 0; j < RUN; j += 4)
            *reinterpret_cast<float4*>(out + j) = make_float4(acc[j], acc[j + 1], acc[j + 2], acc[j + 3]);
    } else {
#pragma unroll
        for (int j = 0; j < RUN; ++j)
            if (l0 + j < L) out[j] = acc[j];
    }
}

// One entry point per run length (taps per thread): vandermonde_r16, vandermonde_r32, vandermonde_r64.
#define VANDERMONDE_ENTRY(R)                                                                                 \
    __global__ void __launch_bounds__(128) vandermonde_r##R(                                                 \
        const float2* lam, long long lam_hs, const float* dt, long long dt_hs, const double2* logz,          \
        int use_logz, const float2* b, long long b_hs, const float2* C, long long C_hs, float c, float* K,  \
        long long H, long long N, long long L, int check, int* flag)                                         \
    { vandermonde_block<R>(lam, lam_hs, dt, dt_hs, logz, use_logz, b, b_hs, C, C_hs, c, K, H, N, L, check, flag); }

extern "C" {
VANDERMONDE_ENTRY(64)
VANDERMONDE_ENTRY(32)
VANDERMONDE_ENTRY(16)

// FP32 issue-rate probe for the benchmark's arithmetic floor: each thread runs 8 independent FMA chains
// of `iters` x 8 steps (16 flops per step per chain pair); the result is stored so nothing is dead code.
__global__ void fma_probe(float* out, int iters, float a, float b)
{
    float x[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) x[k] = threadIdx.x * 1e-3f + k;
    for (int i = 0; i < iters; ++i) {
#pragma unroll
        for (int r = 0; r < 8; ++r)
#pragma unroll
            for (int k = 0; k < 8; ++k) x[k] = fmaf(x[k], a, b);
    }
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < 8; ++k) s += x[k];
    out[(long long)blockIdx.x * blockDim.x + threadIdx.x] = s;
}
}
