// selective_scan.cu: Mamba's selective scan, float32, real A, in one pass that keeps the (b, d, L, N) states
// out of device memory.
//
//   dt = softplus(delta + bias);  h_t[n] = exp(dt_t*A[n]) * h_{t-1}[n] + dt_t*u_t*B_t[n]
//   y_t = sum_n C_t[n]*h_t[n] + D*u_t;  out_t = y_t * silu(z_t)
//
// Layout: u, delta, z, out (batch, dim, L) contiguous; A (dim, N); B, C either (dim, N) (time-invariant) or
// (batch, G, N, L) (a (batch, N, L) array is G = 1), channel d in group d / (dim / G); D, bias (dim,);
// last (batch, dim, N).
// Grid: (dim / CH, batch); block: CH warps, warp w owns channel d = blockIdx.x*CH + w (all CH channels in
// one group, so they share B and C). The sequence is walked in chunks of T = 32*K steps (K = 8): lane l
// owns the K consecutive steps [c0 + l*K, c0 + l*K + K). Per chunk:
//   - every lane loads its K values of u and delta (two 16-byte loads each) and forms dt, dt*u, D*u;
//   - the block loads the B and C tiles (N x T each) into shared memory once for its CH channels; rows are
//     stored with 16-byte chunks swizzled (chunk c at c ^ ((c >> 3) & 1)) so that a quarter-warp reading
//     chunks 2l and 2l+1 hits 8 distinct bank groups: conflict-free 16-byte reads;
//   - for each state n: dA = exp2(dt*A*log2 e) (one MUFU each), dBu = dt*u*B; the lane scans its K pairs
//     serially, a 5-step shuffle scan joins the 32 lanes, the carried state (shared memory, one float per
//     warp and n) enters as h_in, and the lane replays its K steps from its true start, adding C*h to y.
//   The states live in registers for one n at a time; only (CH x N) carries persist, in shared memory.
// Steps past L are padded with dt = 0, u = 0, B = C = 0: (dA, dBu) = (1, 0), the identity.
// Traffic: u, delta (and z) read once, out written once, B and C read once per block from L2.
// opts: bit 0 softplus, 1 D given, 2 z given, 3 delta_bias given, 4 last state wanted.
// Offsets are 64-bit (long long): batch*dim*L may pass 2^31.

#define K 8
#define T (32 * K)
#define LOG2E 1.4426950408889634f

__device__ __forceinline__ float ex2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ int swz(int t)  // position of step t of a tile row in shared memory
{
    const int c = t >> 2;
    return ((c ^ ((c >> 3) & 1)) << 2) | (t & 3);
}

template <bool VEC>
__device__ __forceinline__ void load_k(const float* __restrict__ p, long long t0, long long L, float (&v)[K])
{
    if (VEC && t0 + K <= L) {
        const float4 x = __ldcs(reinterpret_cast<const float4*>(p + t0));
        const float4 y = __ldcs(reinterpret_cast<const float4*>(p + t0 + 4));
        v[0] = x.x; v[1] = x.y; v[2] = x.z; v[3] = x.w; v[4] = y.x; v[5] = y.y; v[6] = y.z; v[7] = y.w;
    } else {
#pragma unroll
        for (int i = 0; i < K; ++i) v[i] = t0 + i < L ? p[t0 + i] : 0.f;
    }
}

// one shared-memory tile row (N x T) of a variable B or C for the chunk starting at c0
template <bool VEC>
__device__ __forceinline__ void load_tile(const float* __restrict__ M, float* tile, long long c0, long long L,
                                          int N)
{
    if (VEC) {  // L % 4 == 0: 16-byte loads, a vector is either whole or past the end
        for (int q = threadIdx.x; q < N * (T / 4); q += blockDim.x) {
            const int n = q / (T / 4), c = q - n * (T / 4);
            const long long t = c0 + 4 * c;
            const float4 v = t < L ? __ldg(reinterpret_cast<const float4*>(M + (long long)n * L + t))
                                   : make_float4(0.f, 0.f, 0.f, 0.f);
            *reinterpret_cast<float4*>(tile + n * T + swz(4 * c)) = v;
        }
    } else {
        for (int q = threadIdx.x; q < N * T; q += blockDim.x) {
            const int n = q / T, i = q - n * T;
            const long long t = c0 + i;
            tile[n * T + swz(i)] = t < L ? M[(long long)n * L + t] : 0.f;
        }
    }
}

// a lane's K values of B (or C) at its steps: from the swizzled tile row, or the time-invariant value
template <bool VAR>
__device__ __forceinline__ void lane_values(const float* row, float invariant, int lane, float (&v)[K])
{
    if (VAR) {
        const float4 x = *reinterpret_cast<const float4*>(row + swz(lane * K));
        const float4 y = *reinterpret_cast<const float4*>(row + swz(lane * K + 4));
        v[0] = x.x; v[1] = x.y; v[2] = x.z; v[3] = x.w; v[4] = y.x; v[5] = y.y; v[6] = y.z; v[7] = y.w;
    } else {
#pragma unroll
        for (int i = 0; i < K; ++i) v[i] = invariant;
    }
}

// the arguments of every kernel here (D, z, bias may all be one dummy array, and last too when not written)
#define SARGS                                                                                               \
    const float *__restrict__ u, const float *__restrict__ delta, const float *__restrict__ A,               \
        const float *__restrict__ B, const float *__restrict__ C, const float *__restrict__ D,               \
        const float *__restrict__ z, const float *__restrict__ bias, float *__restrict__ out,                \
        float *__restrict__ last, int dim, long long L, int N, int GB, int GC, int opts

template <bool VEC, bool BVAR, bool CVAR>
__device__ __forceinline__ void selective_scan_impl(SARGS)
{
    extern __shared__ float4 smem4[];
    float* smem = reinterpret_cast<float*>(smem4);
    const int CH = blockDim.x >> 5;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float* Bs = smem;                            // N x T (variable B)
    float* Cs = Bs + (BVAR ? N * T : 0);         // N x T (variable C)
    float* carry = Cs + (CVAR ? N * T : 0);      // CH x N
    float* A2 = carry + CH * N;                  // CH x N: A*log2(e)
    float* Bw = A2 + CH * N;                     // CH x N: time-invariant B
    float* Cw = Bw + CH * N;                     // CH x N: time-invariant C

    const int bi = blockIdx.y;
    const int d = blockIdx.x * CH + warp;
    const long long row = ((long long)bi * dim + d) * L;
    const float* Bg = B;
    const float* Cg = C;
    if (BVAR) Bg = B + ((long long)bi * GB + (long long)(blockIdx.x * CH) / (dim / GB)) * N * L;
    if (CVAR) Cg = C + ((long long)bi * GC + (long long)(blockIdx.x * CH) / (dim / GC)) * N * L;
    for (int n = lane; n < N; n += 32) {
        carry[warp * N + n] = 0.f;
        A2[warp * N + n] = A[(long long)d * N + n] * LOG2E;
        if (!BVAR) Bw[warp * N + n] = B[(long long)d * N + n];
        if (!CVAR) Cw[warp * N + n] = C[(long long)d * N + n];
    }
    const bool softplus = opts & 1, has_z = opts & 4, has_last = opts & 16;
    const float Dd = (opts & 2) ? D[d] : 0.f;
    const float bd = (opts & 8) ? bias[d] : 0.f;

    for (long long c0 = 0; c0 < L; c0 += T) {
        const long long t0 = c0 + (long long)lane * K;
        float uu[K], dt[K], du[K], y[K];
        load_k<VEC>(u + row, t0, L, uu);
        load_k<VEC>(delta + row, t0, L, dt);
#pragma unroll
        for (int i = 0; i < K; ++i) {
            float x = dt[i] + bd;
            if (softplus) x = x <= 20.f ? log1pf(__expf(x)) : x;
            dt[i] = t0 + i < L ? x : 0.f;  // past the end: dt = 0 makes the step the identity
            du[i] = dt[i] * uu[i];
            y[i] = Dd * uu[i];
        }
        __syncthreads();  // the previous chunk's tiles are no longer read
        if (BVAR) load_tile<VEC>(Bg, Bs, c0, L, N);
        if (CVAR) load_tile<VEC>(Cg, Cs, c0, L, N);
        __syncthreads();

        for (int n = 0; n < N; ++n) {
            const float a2 = A2[warp * N + n];
            float bv[K], dA[K], dB[K];
            lane_values<BVAR>(Bs + n * T, Bw[warp * N + n], lane, bv);
#pragma unroll
            for (int i = 0; i < K; ++i) { dA[i] = ex2(dt[i] * a2); dB[i] = du[i] * bv[i]; }
            float pA = dA[0], pB = dB[0];  // the lane's K steps composed
#pragma unroll
            for (int i = 1; i < K; ++i) { pB = fmaf(dA[i], pB, dB[i]); pA *= dA[i]; }
#pragma unroll
            for (int s = 1; s < 32; s *= 2) {  // inclusive scan over the lanes, in lane order
                const float qA = __shfl_up_sync(0xffffffffu, pA, s), qB = __shfl_up_sync(0xffffffffu, pB, s);
                if (lane >= s) { pB = fmaf(pA, qB, pB); pA *= qA; }
            }
            float xA = __shfl_up_sync(0xffffffffu, pA, 1), xB = __shfl_up_sync(0xffffffffu, pB, 1);
            if (lane == 0) { xA = 1.f; xB = 0.f; }
            float h = fmaf(xA, carry[warp * N + n], xB);  // the state before the lane's first step
            float cv[K];
            lane_values<CVAR>(Cs + n * T, Cw[warp * N + n], lane, cv);
#pragma unroll
            for (int i = 0; i < K; ++i) { h = fmaf(dA[i], h, dB[i]); y[i] = fmaf(cv[i], h, y[i]); }
            const float hl = __shfl_sync(0xffffffffu, h, 31);
            __syncwarp();
            if (lane == 0) carry[warp * N + n] = hl;
            __syncwarp();
        }
        if (has_z) {
            float zz[K];
            load_k<VEC>(z + row, t0, L, zz);
#pragma unroll
            for (int i = 0; i < K; ++i) y[i] *= zz[i] / (1.f + __expf(-zz[i]));
        }
        if (VEC && t0 + K <= L) {
            __stcs(reinterpret_cast<float4*>(out + row + t0), make_float4(y[0], y[1], y[2], y[3]));
            __stcs(reinterpret_cast<float4*>(out + row + t0 + 4), make_float4(y[4], y[5], y[6], y[7]));
        } else {
#pragma unroll
            for (int i = 0; i < K; ++i)
                if (t0 + i < L) out[row + t0 + i] = y[i];
        }
    }
    if (has_last) {
        __syncwarp();
        for (int n = lane; n < N; n += 32) last[((long long)bi * dim + d) * N + n] = carry[warp * N + n];
    }
}

#define SPASS u, delta, A, B, C, D, z, bias, out, last, dim, L, N, GB, GC, opts
#define SKERNEL(name, VEC, BV, CV)                                                                          \
    __global__ void __launch_bounds__(256) name(SARGS) { selective_scan_impl<VEC, BV, CV>(SPASS); }

// the 8 instances of a kernel: 16-byte loads or not (vec), B and C variable (bv, cv) or time-invariant (bi, ci)
#define EIGHT(K, prefix)                                                                                    \
    K(prefix##_vec_bv_cv, true, true, true) K(prefix##_vec_bv_ci, true, true, false)                        \
    K(prefix##_vec_bi_cv, true, false, true) K(prefix##_vec_bi_ci, true, false, false)                      \
    K(prefix##_bv_cv, false, true, true) K(prefix##_bv_ci, false, true, false)                              \
    K(prefix##_bi_cv, false, false, true) K(prefix##_bi_ci, false, false, false)

#ifndef QUAD_ONLY  // the launcher compiles the quad kernels alone with their compile-time options
extern "C" {
EIGHT(SKERNEL, selective_scan)
}
#endif

// =========================================================================================================
// selective_scan_states: the fast path for N <= 16 (Mamba's default), states across lanes.
//
// Grid: (dim / CPB, batch); block: CPB channels x 8 lanes (CPB in {4, 8, 16, 32}; all CPB channels in one
// group of B and C). Lane p (0..7) of a channel owns the states n = p and n = p + 8 (absent ones have
// B = C = 0) and walks the WHOLE sequence itself: h = exp2(dt*A*log2 e)*h + dt*u*B, two independent chains
// per lane and no scan across lanes at all. Only y_t = sum_n C_t[n]*h_t[n] needs the other lanes: each lane
// keeps 16 partial sums y_t (two states each) and a three-round shuffle reduce-scatter over the 8 lanes
// (xor 4, 2, 1; each round halves what a lane holds) leaves lane p with the full y of steps 2p and 2p + 1
// of each block of 16: 7 shuffles per lane per 16 steps and 2 states, not a 5-step scan per state.
// The sequence is walked in chunks of T = 64 steps, double-buffered in shared memory:
//   - B and C tiles (16 x T, rows padded to T + 4 so the 8 lanes of a channel, reading rows p at one step,
//     hit 8 distinct bank groups) arrive by cp.async (16-byte, zero-filled past L) one chunk ahead;
//   - u, delta, z of the next chunk are prefetched into registers by the thread that will write the
//     outputs of the same steps (steps 16j + 2p, 16j + 2p + 1), which forms dt = softplus(delta + bias),
//     dt*u (to shared memory, read back by the 8 lanes as 16-byte broadcasts), D*u and silu(z).
// One __syncthreads per chunk. The exponentials (MUFU) depend on dt only, not on h: the compiler hoists
// them ahead of the h chains, and the kernel runs at the rate of its exponentials.
// =========================================================================================================

#define ST 64       // steps per chunk
#define STP (ST + 4)  // padded tile row

// 16 bytes global -> shared (shared-window address s); n = 0 source bytes zero-fills them
__device__ __forceinline__ void cp_async16s(unsigned s, const void* g, int n)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(g), "r"(n));
}
// the same from a generic shared pointer; not `in`: zero-filled
__device__ __forceinline__ void cp_async16(void* smem_ptr, const void* gptr, bool in)
{
    cp_async16s((unsigned)__cvta_generic_to_shared(smem_ptr), gptr, in ? 16 : 0);
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;" ::: "memory"); }

// the 16 x W tile of a variable B or C for the steps from c0 into shared memory, rows WP floats apart (rows
// n >= N are zeros), in the caller's cp.async group
template <bool VEC, int W, int WP>
__device__ __forceinline__ void tile_async(const float* __restrict__ M, float* tile, long long c0, long long L,
                                           int N)
{
    for (int q = threadIdx.x; q < 16 * (W / 4); q += blockDim.x) {
        const int n = q / (W / 4), c = q - n * (W / 4);
        const long long t = c0 + 4 * c;
        float* dst = tile + n * WP + 4 * c;
        if (VEC) {
            const bool in = n < N && t < L;
            cp_async16(dst, in ? (const void*)(M + (long long)n * L + t) : (const void*)M, in);
        } else {
#pragma unroll
            for (int e = 0; e < 4; ++e) dst[e] = (n < N && t + e < L) ? M[(long long)n * L + t + e] : 0.f;
        }
    }
    cp_async_commit();
}

// a thread's 8 steps of a (batch, dim, L) row in the chunk at c0: steps 16j + 2p, +1 for j = 0..3
template <bool VEC>
__device__ __forceinline__ void load_steps(const float* __restrict__ row, long long c0, long long L, int p,
                                           float (&v)[8])
{
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const long long t = c0 + 16 * j + 2 * p;
        if (VEC && t < L) {  // L % 4 == 0: the pair is whole or past the end
            const float2 x = __ldcs(reinterpret_cast<const float2*>(row + t));
            v[2 * j] = x.x; v[2 * j + 1] = x.y;
        } else {
            v[2 * j] = t < L ? row[t] : 0.f;
            v[2 * j + 1] = t + 1 < L ? row[t + 1] : 0.f;
        }
    }
}

template <bool VEC, bool BVAR, bool CVAR>
__device__ __forceinline__ void selective_states_impl(SARGS)
{
    extern __shared__ float4 smem4[];
    float* smem = reinterpret_cast<float*>(smem4);
    const int CPB = blockDim.x >> 3;
    float* tB = smem;                              // [2][16][STP]
    float* tC = tB + (BVAR ? 2 * 16 * STP : 0);    // [2][16][STP]
    float* sdt = tC + (CVAR ? 2 * 16 * STP : 0);   // [2][CPB][ST]
    float* sdu = sdt + 2 * CPB * ST;               // [2][CPB][ST]

    const int lane = threadIdx.x & 31, p = lane & 7, ci = threadIdx.x >> 3;
    const int d = blockIdx.x * CPB + ci, bi = blockIdx.y;
    const long long row = ((long long)bi * dim + d) * L;
    const bool softplus = opts & 1, has_z = opts & 4, has_last = opts & 16;
    const float Dd = (opts & 2) ? D[d] : 0.f;
    const float bd = (opts & 8) ? bias[d] : 0.f;
    const int n0 = p, n1 = p + 8;
    const float a0 = n0 < N ? A[(long long)d * N + n0] * LOG2E : 0.f;
    const float a1 = n1 < N ? A[(long long)d * N + n1] * LOG2E : 0.f;
    float B0 = 0.f, B1 = 0.f, C0 = 0.f, C1 = 0.f;  // time-invariant B, C
    if (!BVAR) { B0 = n0 < N ? B[(long long)d * N + n0] : 0.f; B1 = n1 < N ? B[(long long)d * N + n1] : 0.f; }
    if (!CVAR) { C0 = n0 < N ? C[(long long)d * N + n0] : 0.f; C1 = n1 < N ? C[(long long)d * N + n1] : 0.f; }
    const float* Bg = B;
    const float* Cg = C;
    if (BVAR) Bg = B + ((long long)bi * GB + (long long)(blockIdx.x * CPB) / (dim / GB)) * N * L;
    if (CVAR) Cg = C + ((long long)bi * GC + (long long)(blockIdx.x * CPB) / (dim / GC)) * N * L;

    float pu[8], pd[8], pz[8];
    load_steps<VEC>(u + row, 0, L, p, pu);
    load_steps<VEC>(delta + row, 0, L, p, pd);
    if (has_z) load_steps<VEC>(z + row, 0, L, p, pz);
    if (BVAR) tile_async<VEC, ST, STP>(Bg, tB, 0, L, N);
    if (CVAR) tile_async<VEC, ST, STP>(Cg, tC, 0, L, N);

    float h0 = 0.f, h1 = 0.f;
    for (long long c0 = 0, chunk = 0; c0 < L; c0 += ST, ++chunk) {
        const int buf = (int)(chunk & 1);
        float yD[8], zs[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) {  // dt, dt*u to shared memory; D*u and silu(z) kept for the output
            const int t = 16 * (i >> 1) + 2 * p + (i & 1);
            float x = pd[i] + bd;
            if (softplus) x = x <= 20.f ? log1pf(__expf(x)) : x;
            x = c0 + t < L ? x : 0.f;  // past the end: dt = 0, the identity step
            sdt[(buf * CPB + ci) * ST + t] = x;
            sdu[(buf * CPB + ci) * ST + t] = x * pu[i];
            yD[i] = Dd * pu[i];
            zs[i] = has_z ? __fdividef(pz[i], 1.f + __expf(-pz[i])) : 1.f;
        }
        cp_async_wait_all();
        __syncthreads();
        if (c0 + ST < L) {  // prefetch the next chunk while this one is computed
            load_steps<VEC>(u + row, c0 + ST, L, p, pu);
            load_steps<VEC>(delta + row, c0 + ST, L, p, pd);
            if (has_z) load_steps<VEC>(z + row, c0 + ST, L, p, pz);
            if (BVAR) tile_async<VEC, ST, STP>(Bg, tB + (buf ^ 1) * 16 * STP, c0 + ST, L, N);
            if (CVAR) tile_async<VEC, ST, STP>(Cg, tC + (buf ^ 1) * 16 * STP, c0 + ST, L, N);
        }
        const float* rdt = sdt + (buf * CPB + ci) * ST;
        const float* rdu = sdu + (buf * CPB + ci) * ST;
        const float* rB0 = tB + buf * 16 * STP + n0 * STP;
        const float* rB1 = rB0 + 8 * STP;
        const float* rC0 = tC + buf * 16 * STP + n0 * STP;
        const float* rC1 = rC0 + 8 * STP;
        float y[8];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            float yp[16];
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const int t = 16 * j + 4 * q;
                const float4 dt4 = *reinterpret_cast<const float4*>(rdt + t);
                const float4 du4 = *reinterpret_cast<const float4*>(rdu + t);
                float4 b0 = make_float4(B0, B0, B0, B0), b1 = make_float4(B1, B1, B1, B1);
                float4 c0v = make_float4(C0, C0, C0, C0), c1v = make_float4(C1, C1, C1, C1);
                if (BVAR) { b0 = *reinterpret_cast<const float4*>(rB0 + t); b1 = *reinterpret_cast<const float4*>(rB1 + t); }
                if (CVAR) { c0v = *reinterpret_cast<const float4*>(rC0 + t); c1v = *reinterpret_cast<const float4*>(rC1 + t); }
                const float dts[4] = {dt4.x, dt4.y, dt4.z, dt4.w}, dus[4] = {du4.x, du4.y, du4.z, du4.w};
                const float b0s[4] = {b0.x, b0.y, b0.z, b0.w}, b1s[4] = {b1.x, b1.y, b1.z, b1.w};
                const float c0s[4] = {c0v.x, c0v.y, c0v.z, c0v.w}, c1s[4] = {c1v.x, c1v.y, c1v.z, c1v.w};
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    h0 = fmaf(ex2(dts[e] * a0), h0, dus[e] * b0s[e]);
                    h1 = fmaf(ex2(dts[e] * a1), h1, dus[e] * b1s[e]);
                    yp[4 * q + e] = fmaf(c1s[e], h1, c0s[e] * h0);
                }
            }
            // reduce-scatter over the 8 lanes of the channel: lane p ends with steps 2p, 2p + 1
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                const bool up = p & 4;
                const float send = up ? yp[k] : yp[k + 8], keep = up ? yp[k + 8] : yp[k];
                yp[k] = keep + __shfl_xor_sync(0xffffffffu, send, 4);
            }
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                const bool up = p & 2;
                const float send = up ? yp[k] : yp[k + 4], keep = up ? yp[k + 4] : yp[k];
                yp[k] = keep + __shfl_xor_sync(0xffffffffu, send, 2);
            }
#pragma unroll
            for (int k = 0; k < 2; ++k) {
                const bool up = p & 1;
                const float send = up ? yp[k] : yp[k + 2], keep = up ? yp[k + 2] : yp[k];
                yp[k] = keep + __shfl_xor_sync(0xffffffffu, send, 1);
            }
            y[2 * j] = yp[0];
            y[2 * j + 1] = yp[1];
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const long long t = c0 + 16 * j + 2 * p;
            const float o0 = (y[2 * j] + yD[2 * j]) * zs[2 * j], o1 = (y[2 * j + 1] + yD[2 * j + 1]) * zs[2 * j + 1];
            if (VEC && t < L) {
                __stcs(reinterpret_cast<float2*>(out + row + t), make_float2(o0, o1));
            } else {
                if (t < L) out[row + t] = o0;
                if (t + 1 < L) out[row + t + 1] = o1;
            }
        }
    }
    if (has_last) {
        if (n0 < N) last[((long long)bi * dim + d) * N + n0] = h0;
        if (n1 < N) last[((long long)bi * dim + d) * N + n1] = h1;
    }
}

#define SSKERNEL(name, VEC, BV, CV)                                                                         \
    __global__ void __launch_bounds__(256, 2) name(SARGS) { selective_states_impl<VEC, BV, CV>(SPASS); }

#ifndef QUAD_ONLY  // the launcher compiles the quad kernels alone with their compile-time options
extern "C" {
EIGHT(SSKERNEL, selective_states)
}
#endif

// =========================================================================================================
// selective_quad: the default for N <= 16. QL lanes per channel (4; 2 as an option), 16 / QL states per lane.
//
// Why (H100, b2 d4096 L4096 N16): b*d = 8192 channels of 16 states are 64 channels per SM, 16 exponentials
// per channel and step, 16 MUFU lanes per SM and clock: 64 clocks per step is the floor, and the SM issues 4
// warp instructions a clock, so every state-step may cost about 8 warp-instruction slots / 32 lanes, all of it
// included. With 8 lanes of 2 states (selective_states) y = sum_n C h needs 14 shuffles + 28 selects + 14 adds
// per lane per 16 steps for 32 state-steps (1.75 per state-step). Here lane q (0..QL-1) owns the states n = q,
// q + QL, ... and walks the whole sequence: independent chains h_k = exp2(dt*A_k*log2 e)*h_k + dt*u*B_k. The
// sequence goes in blocks of QBS = 16*QV steps. The lane's partial sums of y over a block are
// reduce-scattered over the QL lanes (xor QL/2, ..., 1; each round halves what a lane holds) and leave lane q
// with the full y of its QE = QBS/QL steps QE*q .. QE*q + QE - 1 of the block, the same steps whose u, delta,
// z it loads: it forms dt, dt*u (to shared memory, rows of QDP = 16 mod 32 floats: the 2 channels of a
// quarter-warp write and read 16-byte pieces in distinct bank groups), D*u and silu(z), and writes out.
// b*d*4 lanes = 1024 warps of 8 channels: 8 per SM, 2 per scheduler, too few to hide latency by switching
// warps, so the kernel is built to keep each warp busy by itself:
//   - u, delta, z stream through a per-thread ring of QPF + 1 blocks in shared memory (cp.async, 16 bytes,
//     zero-filled past L, with a QPFB-byte L2 prefetch: rows are read 64 bytes at a time, and DRAM serves
//     longer runs better), QPF blocks (QPF*QBS steps) ahead: each thread reads back only what it copied
//     itself, so cp.async.wait_group alone orders them, no barrier; one group per block; the copies' addresses
//     are pointers advanced per block (32-bit step counts: the launcher keeps L < 2^31);
//   - the element-wise work of block j + 1 (softplus, silu, dt*u) follows block j's outputs, its dt, dt*u go
//     straight to the other half of the double buffer (no register copies across the loop);
//   - B and C tiles (16 x QST steps, zero rows past N) arrive by cp.async in the same groups, QNT buffers
//     deep, shared by the block's channels: one __syncthreads per tile, none per block; blocks of 2*QST
//     threads (FULL: 256) make two copies per thread and matrix at places worked out once;
//   - softplus by MUFU ex2 + lg2, branch-free; silu by ex2 + rcp (.ftz: no range scaling around MUFU);
//   - the launcher compiles the softplus and z bits of opts in (QOPTS): the element-wise code is one
//     straight basic block the scheduler can mix with the scan; the end of the sequence is masked only in
//     the last block.
// Measured (H100, same run, kernel alone, 20 back-to-back calls, QV = 1): 0.416 ms before (one chunk of u,
// delta, z in registers); QPF = 2: 0.343, 4: 0.313, 8: 0.314 (QST = 128: 0.309). Tried and slower: y's partial
// sums through shared memory instead of shuffles (0.360 at QPF = 4), per-warp B/C tiles with no __syncthreads
// (0.379), blocks of 32 steps (QV = 2, QPF = 4: 0.370 against 0.311 for QV = 1, QPF = 8 in the same run; 167
// registers instead of 126); QV stays a parameter (both pass the tests). With opts compiled in and the tail
// masked in the last block only: 0.279 (0.315 for the kernel before, same run; 746 SASS instructions per
// block of 16 steps instead of 876). ncu: shared memory (L1) 71% busy, 4 wavefronts per LDS.128 of B/C;
// QC = 2 (two channels per thread, each B/C value read once for both: L1 44%) ran slower, 0.324, with one
// warp per scheduler left; QL = 2: 0.356. DIAG_NO_EX2 changes nothing (0.278): the exponentials are hidden;
// DIAG_NO_SCAN (QC = 2) 0.265: the streaming and element-wise part alone is most of the time.
// 2026-11-22, second round (same runs: the kernel before 0.282-0.284 ms back to back): integer work cut
// (pointers advanced, FULL tile copies, 32-bit steps, no dt/du register copies: 600 instead of 650 SASS
// instructions per block executed) 0.276-0.278; + QPFB = 128: 0.269-0.271 (256: 0.269-0.271); + QPF = 6:
// 0.267. ncu (QPF 8, QPFB 128, 0.269 ms): L1/shared 78% busy, issue slots 56%, no eligible warp 41% of
// cycles, 2 warps per scheduler; the dt/du stores 2-way bank conflicted (rows of 20 floats: fixed, QDP).
// Diagnostics (wrong results, timing only), back to back: DIAG_NO_STREAM (every block copies block 0's u,
// delta, z) 0.268: the streaming costs nothing now; DIAG_NO_BC (B, C from registers) 0.246; DIAG_NO_DT (dt,
// dt*u from registers) 0.238; DIAG_NO_EX2 0.261; DIAG_NO_SCAN 0.209: the shared-memory reads of the scan
// (dt, dt*u on the exponentials' critical path; B, C 128 of the ~190 wavefronts per warp and block) set the
// pace with 2 warps per scheduler. Slower: u, delta, z loaded into registers one or two blocks ahead with a
// 256-byte L2 prefetch instead of the ring (0.340 / 0.318: the loads' latency shows), QPF 12 (0.272), QST 64
// (0.293).
// Blocks may be smaller than a warp (QL * CPB threads, CPB = 1, 2, 4): shuffles and __syncwarp name only
// present lanes.
// =========================================================================================================

// The launcher passes QV, QPF, QST, QL, QC, QPFB and QOPTS (refimpl.scan.gpu.QUAD_CONFIG); the defaults here are
// its defaults.
#ifndef QV
#define QV 1  // a block is QBS = 16*QV steps
#endif
#ifndef QPF
#define QPF 6  // blocks of u, delta, z in flight ahead of the one scanned
#endif
#ifndef QST
#define QST 128  // steps per B/C tile (a multiple of QBS)
#endif
#ifndef QL
#define QL 4  // lanes per channel: 4 or 2
#endif
#ifndef QC
#define QC 1  // channels per thread: 1, or 2 (each B, C value read from shared memory serves both)
#endif
#ifndef QPFB
#define QPFB 128  // L2 prefetch size of the ring's cp.async (.L2::<QPFB>B): 0 (none), 64, 128 or 256
#endif
#if defined(QOPTS) && QOPTS >= 0  // opts bits 0 (softplus) and 2 (z) fixed at compile time
#define QSOFTPLUS ((QOPTS) & 1)
#define QHASZ ((QOPTS) & 4)
#else
#define QSOFTPLUS (opts & 1)
#define QHASZ (opts & 4)
#endif
#define QS (16 / QL)                     // states per lane
#define QBS (16 * QV)                    // steps per block
#define QE (QBS / QL)                    // steps per lane and block (its u, delta, z, out)
#define QEV (QE / 4)                     // 16-byte vectors per lane, array and block
#define QSB (QST / QBS)                  // blocks per tile
#define QSTP (QST + 4)                   // padded tile row: rows q, q + QL*k of QL lanes in distinct bank groups
#define QR (QPF + 1)                     // ring slots per thread: one more than in flight (no overwrite of a
                                         // slot read in the previous block)
#define QNT ((QPF + QSB - 1) / QSB + 1)  // tile buffers: a tile is copied ceil(QPF/QSB) tiles ahead
#define QDP ((QBS + 15) / 32 * 32 + 16)  // dt/du row of a channel: 16 mod 32 floats, so that the 2 channels of
                                         // a quarter-warp write and read 16-byte pieces in distinct bank groups

__device__ __forceinline__ float lg2f(float x)
{
    float y;
    asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ float rcpf(float x)
{
    float y;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// log(1 + e^x); x itself above 20 (as mamba_ssm); a series where 1 + e would lose e's digits (rel. err < 1e-5)
__device__ __forceinline__ float softplus_f(float x)
{
#ifdef QUAD_LIBM_SOFTPLUS
    return x <= 20.f ? log1pf(__expf(x)) : x;
#else
    const float e = ex2(fminf(x, 20.f) * LOG2E);
    const float l = lg2f(1.f + e) * 0.6931471805599453f;
    const float s = e * fmaf(e, fmaf(e, fmaf(e, -0.25f, 0.33333334f), -0.5f), 1.f);
    return x > 20.f ? x : (e < 0.03125f ? s : l);
#endif
}

// z * sigmoid(z) = z / (1 + 2^(-z log2 e)); for z -> -inf the reciprocal of inf is 0
__device__ __forceinline__ float silu_f(float z) { return z * rcpf(1.f + ex2(z * -LOG2E)); }

__device__ __forceinline__ void cp_async_wait_pf()
{
    asm volatile("cp.async.wait_group %0;" ::"n"(QPF - 1) : "memory");
}

// cp_async16s for the ring of u, delta, z, with the L2 prefetch-size hint QPFB
__device__ __forceinline__ void cp_async16_ring(unsigned s, const void* g, int n)
{
#if QPFB == 256
    asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;" ::"r"(s), "l"(g), "r"(n));
#elif QPFB == 128
    asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16, %2;" ::"r"(s), "l"(g), "r"(n));
#elif QPFB == 64
    asm volatile("cp.async.cg.shared.global.L2::64B [%0], [%1], 16, %2;" ::"r"(s), "l"(g), "r"(n));
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(g), "r"(n));
#endif
}

// the thread's shares of the 16 x QST tile of a variable B or C from step c0 (zero rows past N, zero past L),
// in the caller's cp.async group: copies c = tid, tid + nt, ... of 16 rows x QST/4 vectors (the general path;
// blocks of 2*QST threads take two fixed copies each, worked out once in selective_quad_impl)
template <bool VEC>
__device__ __forceinline__ void quad_tile(const float* __restrict__ M, float* tile, int c0, int L, long long Ll,
                                          int N, int tid, int nt)
{
    for (int c = tid; c < 4 * QST; c += nt) {
        const int n = c / (QST / 4), e = 4 * (c % (QST / 4));
        const int t = c0 + e;
        float* dst = tile + n * QSTP + e;
        const float* src = M + (long long)n * Ll + t;
        if (VEC) {
            const bool in = n < N && t < L;
            cp_async16s((unsigned)__cvta_generic_to_shared(dst), in ? (const void*)src : (const void*)M, in ? 16 : 0);
        } else {
#pragma unroll
            for (int i = 0; i < 4; ++i) dst[i] = (n < N && t + i < L) ? src[i] : 0.f;
        }
    }
}

// one round of the reduce-scatter of y over a channel's lanes: lanes q and q ^ S swap halves of yp[0 .. 2*LEN)
// and add; the lane with bit S set keeps the upper half (in yp[0 .. LEN))
template <int S, int LEN>
__device__ __forceinline__ void reduce_half(float (&yp)[QBS], int q, unsigned mask)
{
    const bool up = q & S;
#pragma unroll
    for (int k = 0; k < LEN; ++k) {
        const float send = up ? yp[k] : yp[k + LEN], keep = up ? yp[k + LEN] : yp[k];
        yp[k] = keep + __shfl_xor_sync(mask, send, S);
    }
}

// last[b, d0 + c, n] = h_n of the lane's states n = q + QL*k of its NC channels (the state after the last step)
template <int NC>
__device__ __forceinline__ void write_last(float* __restrict__ last, const float (&h)[NC][QS], int bi, int dim,
                                           int d0, int q, int N)
{
#pragma unroll
    for (int c = 0; c < NC; ++c)
#pragma unroll
        for (int k = 0; k < QS; ++k)
            if (q + QL * k < N) last[((long long)bi * dim + d0 + c) * N + q + QL * k] = h[c][k];
}

// FULL: blocks of nt = 2*QST threads (256 for QST = 128), whose B/C tile copies are two per thread at fixed
// places, so that no index arithmetic is redone per tile
template <bool VEC, bool BVAR, bool CVAR, bool FULL>
__device__ __forceinline__ void selective_quad_impl(SARGS)
{
    extern __shared__ float4 smem4[];
    const int nt = blockDim.x, CPB = nt / QL * QC;
    float4* ring = smem4;                                                  // [QR][QC][3][QEV][nt]: u, delta, z
    float* tB = reinterpret_cast<float*>(ring + QR * QC * 3 * QEV * nt);  // [QNT][16][QSTP]
    float* tC = tB + (BVAR ? QNT * 16 * QSTP : 0);                         // [QNT][16][QSTP]
    float* sdt = tC + (CVAR ? QNT * 16 * QSTP : 0);                        // [2][CPB][QDP]
    float* sdu = sdt + 2 * CPB * QDP;                                      // [2][CPB][QDP]
    const unsigned mask = nt >= 32 ? 0xffffffffu : (1u << nt) - 1u;

    // thread tid: lane q of channels QC*(tid / QL) + c, c < QC (the same states of each: B, C read once)
    const int tid = threadIdx.x, q = tid % QL, c0i = tid / QL * QC;
    const int d0 = blockIdx.x * CPB + c0i, bi = blockIdx.y;
    const long long row0 = ((long long)bi * dim + d0) * L;  // channel c's row at row0 + c*L
    const int Li = (int)L;                                  // the launcher keeps L < 2^31: steps are ints
    const bool has_last = opts & 16;
    float Dd[QC], bd[QC], a[QC][QS], Bk[QS], Ck[QS];
#pragma unroll
    for (int c = 0; c < QC; ++c) {
        Dd[c] = (opts & 2) ? D[d0 + c] : 0.f;
        bd[c] = (opts & 8) ? bias[d0 + c] : 0.f;
#pragma unroll
        for (int k = 0; k < QS; ++k) {
            const int n = q + QL * k;
            a[c][k] = n < N ? A[(long long)(d0 + c) * N + n] * LOG2E : 0.f;
        }
    }
#pragma unroll
    for (int k = 0; k < QS; ++k) {  // time-invariant B, C: per channel, so only with QC = 1
        const int n = q + QL * k;
        Bk[k] = (!BVAR && n < N) ? B[(long long)d0 * N + n] : 0.f;
        Ck[k] = (!CVAR && n < N) ? C[(long long)d0 * N + n] : 0.f;
    }
    const float* Bg = B;
    const float* Cg = C;
    if (BVAR) Bg = B + ((long long)bi * GB + (blockIdx.x * CPB) / (dim / GB)) * N * L;
    if (CVAR) Cg = C + ((long long)bi * GC + (blockIdx.x * CPB) / (dim / GC)) * N * L;
    const int nblk = (Li + QBS - 1) / QBS;  // blocks of QBS steps

    // the thread's u, delta, z: channel c's steps t at gu[c*L + t] (t counted from the thread's first step)
    const float* gu = u + row0 + QE * q;
    const float* gd = delta + row0 + QE * q;
    const float* gz = z + row0 + QE * q;
    // FULL: the thread's two copies of each B/C tile: rows tn and tn + 8, steps te .. te + 3 of the tile
    const int tn = tid / (QST / 4), te = 4 * (tid % (QST / 4));
    const unsigned sB = (unsigned)__cvta_generic_to_shared(tB + tn * QSTP + te);
    const unsigned sC = (unsigned)__cvta_generic_to_shared(tC + tn * QSTP + te);
    const float* gB = Bg + (long long)tn * L + te;
    const float* gC = Cg + (long long)tn * L + te;
    const bool in0 = tn < N, in1 = tn + 8 < N;
    const unsigned ring_s = (unsigned)__cvta_generic_to_shared(ring + tid);
    const float *pu = gu, *pd = gd, *pz = gz;  // the ring's next copies (block j's at QBS*j)

    // block j's copies (u, delta, z of the thread's QE steps of its channels into ring slot s; with j the first
    // block of a tile, the thread's share of the tile's B and C) as one cp.async group; groups past the end are
    // empty, so that every block commits exactly one and cp.async.wait_group counts blocks
    auto issue = [&](int j, int s) {
        if (j < nblk) {
#ifdef DIAG_NO_STREAM  // timing diagnostic only (wrong results): every block copies block 0's u, delta, z
            const int t0 = 0;
#else
            const int t0 = QBS * j;
#endif
            const unsigned slot = ring_s + 16u * (unsigned)(s * QC * 3 * QEV * nt);
#pragma unroll
            for (int c = 0; c < QC; ++c)
#pragma unroll
                for (int v = 0; v < QEV; ++v) {
                    const unsigned sc = slot + 16u * (unsigned)(c * 3 * QEV * nt + v * nt);
                    const int t = t0 + 4 * v, tq = t + QE * q;
                    if (VEC) {  // L % 4 == 0: the vector is whole or past the end (0 bytes read, zero-filled)
                        const int n = tq < Li ? 16 : 0;
                        cp_async16_ring(sc, pu + c * L + 4 * v, n);
                        cp_async16_ring(sc + 16u * QEV * nt, pd + c * L + 4 * v, n);
                        if (QHASZ) cp_async16_ring(sc + 32u * QEV * nt, pz + c * L + 4 * v, n);
                    } else {
                        float4* dst = ring + (s * QC * 3 + c * 3) * QEV * nt + v * nt + tid;
                        const float* srcs[3] = {gu + c * L + t, gd + c * L + t, gz + c * L + t};
#pragma unroll
                        for (int r = 0; r < 3; ++r) {
                            if (r == 2 && !QHASZ) break;
                            float w[4];
#pragma unroll
                            for (int e = 0; e < 4; ++e) w[e] = tq + e < Li ? srcs[r][e] : 0.f;
                            dst[r * QEV * nt] = make_float4(w[0], w[1], w[2], w[3]);
                        }
                    }
                }
#ifndef DIAG_NO_STREAM
            pu += QBS; pd += QBS; pz += QBS;
#endif
            if (j % QSB == 0) {
                const int tb = (j / QSB) % QNT, c0 = QBS * j;
                if (FULL) {  // VEC only
                    const unsigned so = 4u * (unsigned)(tb * 16 * QSTP), s8 = 4u * 8u * QSTP;
                    const bool i0 = in0 && c0 + te < Li, i1 = in1 && c0 + te < Li;
                    if (BVAR) {
                        cp_async16s(sB + so, i0 ? gB + c0 : Bg, i0 ? 16 : 0);
                        cp_async16s(sB + so + s8, i1 ? gB + 8 * L + c0 : Bg, i1 ? 16 : 0);
                    }
                    if (CVAR) {
                        cp_async16s(sC + so, i0 ? gC + c0 : Cg, i0 ? 16 : 0);
                        cp_async16s(sC + so + s8, i1 ? gC + 8 * L + c0 : Cg, i1 ? 16 : 0);
                    }
                } else {
                    if (BVAR) quad_tile<VEC>(Bg, tB + tb * 16 * QSTP, c0, Li, L, N, tid, nt);
                    if (CVAR) quad_tile<VEC>(Cg, tC + tb * 16 * QSTP, c0, Li, L, N, tid, nt);
                }
            }
        }
        cp_async_commit();
    };
    // block j's u, delta, z from ring slot s, as the thread copied them
    auto fetch = [&](int s, float4 (&raw)[QC][3][QEV]) {
#pragma unroll
        for (int c = 0; c < QC; ++c)
#pragma unroll
            for (int r = 0; r < 3; ++r)
#pragma unroll
                for (int v = 0; v < QEV; ++v)
                    raw[c][r][v] = (r == 2 && !QHASZ) ? make_float4(0.f, 0.f, 0.f, 0.f)
                                                      : ring[((s * QC + c) * 3 + r) * QEV * nt + v * nt + tid];
    };
    // block j's element-wise terms: dt (0 past L: the identity step) and dt*u to buffer j & 1 in shared memory
    // (read by all lanes of the channel), D*u and silu(z) kept for the lane's outputs
    auto elementwise = [&](int j, const float4 (&raw)[QC][3][QEV], float (&yD)[QC][QE], float (&zs)[QC][QE]) {
        const int t0 = QBS * j + QE * q;
        float dt[QC][QE], du[QC][QE];
#pragma unroll
        for (int c = 0; c < QC; ++c) {
#pragma unroll
            for (int v = 0; v < QEV; ++v) {
                const float4 u4 = raw[c][0][v], d4 = raw[c][1][v], z4 = raw[c][2][v];
                const float us[4] = {u4.x, u4.y, u4.z, u4.w}, ds[4] = {d4.x, d4.y, d4.z, d4.w};
                const float zz[4] = {z4.x, z4.y, z4.z, z4.w};
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int i = 4 * v + e;
                    float x = QSOFTPLUS ? softplus_f(ds[e] + bd[c]) : ds[e] + bd[c];
                    // the last block: steps past L are the identity (VEC: a vector is whole or past L)
                    if (t0 + QE > Li && (VEC ? t0 + 4 * v : t0 + i) >= Li) x = 0.f;
                    dt[c][i] = x;
                    du[c][i] = x * us[e];
                    yD[c][i] = Dd[c] * us[e];
                    zs[c][i] = QHASZ ? silu_f(zz[e]) : 1.f;
                }
            }
            const int o = ((j & 1) * CPB + c0i + c) * QDP + QE * q;
#pragma unroll
            for (int v = 0; v < QEV; ++v) {
                const float* a4 = dt[c] + 4 * v;
                const float* b4 = du[c] + 4 * v;
                *reinterpret_cast<float4*>(sdt + o + 4 * v) = make_float4(a4[0], a4[1], a4[2], a4[3]);
                *reinterpret_cast<float4*>(sdu + o + 4 * v) = make_float4(b4[0], b4[1], b4[2], b4[3]);
            }
        }
    };

    for (int j = 0; j < QPF; ++j) issue(j, j);
    float yD[QC][QE], zs[QC][QE];
    {
        float4 raw[QC][3][QEV];
        cp_async_wait_pf();  // block 0 is here
        fetch(0, raw);
        elementwise(0, raw, yD, zs);
    }

    float h[QC][QS];
#pragma unroll
    for (int c = 0; c < QC; ++c)
#pragma unroll
        for (int k = 0; k < QS; ++k) h[c][k] = 0.f;
    int rs = 1, ws = QPF;  // ring slots of block j + 1 (read next) and of block j + QPF (copied next)
    int boff = q * QSTP;   // block j's steps in the B/C tile buffers: row q of buffer (j / QSB) % QNT, + (j % QSB)*QBS
    for (int j = 0; j < nblk; ++j) {
        // every thread's share of tile j / QSB is here, and tile j / QSB - QNT + 1 (in the buffer that this
        // tile's next copy overwrites) is read by all
        if (j % QSB == 0) __syncthreads();
        __syncwarp(mask);  // block j's dt, du of the channels' lanes are visible; buffer (j + 1) & 1 is free
        issue(j + QPF, ws);
        ws = ws + 1 == QR ? 0 : ws + 1;
        const bool more = j + 1 < nblk;
        float4 raw[QC][3][QEV];
        cp_async_wait_pf();  // block j + 1 is here
        if (more) fetch(rs, raw);
        rs = rs + 1 == QR ? 0 : rs + 1;

        const float* rB = tB + boff;  // row q; rows q + QL*k at + QL*k*QSTP
        const float* rC = tC + boff;
        const float* rdt = sdt + ((j & 1) * CPB + c0i) * QDP;
        const float* rdu = sdu + ((j & 1) * CPB + c0i) * QDP;
        float yp[QC][QBS];
#ifdef DIAG_NO_SCAN  // timing diagnostic only (wrong results): the memory traffic and element-wise work alone
#pragma unroll
        for (int c = 0; c < QC; ++c)
#pragma unroll
            for (int i = 0; i < QBS; ++i) yp[c][i] = rdt[c * QDP + i] + rB[i] + rC[i];
#else
#pragma unroll
        for (int g = 0; g < QBS / 4; ++g) {
            float bs[QS][4], cs[QS][4];
#pragma unroll
            for (int k = 0; k < QS; ++k) {
                float4 b4 = make_float4(Bk[k], Bk[k], Bk[k], Bk[k]), c4 = make_float4(Ck[k], Ck[k], Ck[k], Ck[k]);
#ifdef DIAG_NO_BC  // timing diagnostic only (wrong results): B, C from registers, no shared-memory reads
                b4 = make_float4(a[0][k], a[0][k], a[0][k], a[0][k]); c4 = b4;
#else
                if (BVAR) b4 = *reinterpret_cast<const float4*>(rB + QL * k * QSTP + 4 * g);
                if (CVAR) c4 = *reinterpret_cast<const float4*>(rC + QL * k * QSTP + 4 * g);
#endif
                bs[k][0] = b4.x; bs[k][1] = b4.y; bs[k][2] = b4.z; bs[k][3] = b4.w;
                cs[k][0] = c4.x; cs[k][1] = c4.y; cs[k][2] = c4.z; cs[k][3] = c4.w;
            }
#pragma unroll
            for (int c = 0; c < QC; ++c) {
#ifdef DIAG_NO_DT  // timing diagnostic only (wrong results): dt, dt*u from registers, no shared-memory reads
                const float4 dt4 = make_float4(bd[c], Dd[c], bd[c], Dd[c]);
                const float4 du4 = make_float4(Dd[c], bd[c], Dd[c], bd[c]);
#else
                const float4 dt4 = *reinterpret_cast<const float4*>(rdt + c * QDP + 4 * g);
                const float4 du4 = *reinterpret_cast<const float4*>(rdu + c * QDP + 4 * g);
#endif
                const float dts[4] = {dt4.x, dt4.y, dt4.z, dt4.w}, dus[4] = {du4.x, du4.y, du4.z, du4.w};
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    float acc = 0.f;
#pragma unroll
                    for (int k = 0; k < QS; ++k) {
#ifdef DIAG_NO_EX2  // timing diagnostic only (wrong results): the exponentials replaced by one FFMA
                        h[c][k] = fmaf(fmaf(dts[e], a[c][k], 1.f), h[c][k], dus[e] * bs[k][e]);
#else
                        h[c][k] = fmaf(ex2(dts[e] * a[c][k]), h[c][k], dus[e] * bs[k][e]);
#endif
                        acc = k == 0 ? cs[k][e] * h[c][k] : fmaf(cs[k][e], h[c][k], acc);
                    }
                    yp[c][4 * g + e] = acc;
                }
            }
        }
#endif
        // the next block's place in the tile buffers: the next row of steps, or the next buffer's row q
        boff += QBS;
        if ((j + 1) % QSB == 0) boff = ((j + 1) / QSB) % QNT * 16 * QSTP + q * QSTP;

        const int t0 = QBS * j + QE * q;
#pragma unroll
        for (int c = 0; c < QC; ++c) {
            // reduce-scatter over the QL lanes: each round (xor S) halves the steps a lane holds; lane q keeps
            // its QE steps QE*q ..
            if (QL == 4) reduce_half<2, QBS / 2>(yp[c], q, mask);
            reduce_half<1, QE>(yp[c], q, mask);
#pragma unroll
            for (int v = 0; v < QEV; ++v) {
                const int t = t0 + 4 * v;
                float o[4];
#pragma unroll
                for (int e = 0; e < 4; ++e) o[e] = (yp[c][4 * v + e] + yD[c][4 * v + e]) * zs[c][4 * v + e];
                float* dst = out + row0 + c * L + t;
                if (VEC && t < Li) {
                    __stcs(reinterpret_cast<float4*>(dst), make_float4(o[0], o[1], o[2], o[3]));
                } else if (!VEC) {
#pragma unroll
                    for (int e = 0; e < 4; ++e)
                        if (t + e < Li) dst[e] = o[e];
                }
            }
        }
        // block j + 1's dt, dt*u to buffer (j + 1) & 1 (not after the last block: other lanes may still read
        // buffer j & 1), its D*u and silu(z) kept
        if (more) elementwise(j + 1, raw, yD, zs);
    }
    cp_async_wait_all();  // no copy outlives the block
    if (has_last) write_last<QC>(last, h, bi, dim, d0, q, N);
}

#define SQKERNEL(name, VEC, BV, CV)                                                                         \
    __global__ void __launch_bounds__(256, 1) name(SARGS)                                                   \
    {                                                                                                       \
        if (VEC && (BV || CV) && blockDim.x == 2 * QST)                                                     \
            selective_quad_impl<VEC, BV, CV, VEC && (BV || CV)>(SPASS);                                     \
        else                                                                                                \
            selective_quad_impl<VEC, BV, CV, false>(SPASS);                                                 \
    }

extern "C" {
EIGHT(SQKERNEL, selective_quad)
}

// =========================================================================================================
// selective_qws (QWS = 1): selective_quad with warp specialisation, for blocks of 64 channels (the benchmark's
// layout; QL = 4, QV = 1, QC = 1 in QUAD_CONFIG). Why: selective_quad keeps 2 warps per scheduler busy with the
// scan, the stream of u, delta, z, the element-wise terms and the outputs together. Here:
//   - 256/QWC scan threads (QWC channels each, lane q of a channel owns states q + 4k as in selective_quad) read
//     dt, dt*u from a stage and B, C from the tiles, scan, reduce-scatter y over the channel's 4 lanes and put
//     it back into the stage;
//   - 4 producer warps (128 threads): warp g serves channels 16g .. 16g + 15; lane l owns steps 4(l & 3) .. + 3
//     of channels 16g + l/4 and 16g + 8 + l/4 (64-byte row pieces per load; 2 channels per quarter-warp in the
//     stage). It streams u, delta, z through the cp.async ring (QPF blocks ahead), writes dt, dt*u of block j to
//     stage j % QWSS, keeps D*u and silu(z), and writes block j - 1's out = (y + D*u)*silu(z); it copies its share
//     of the B/C tiles (QWNT buffers).
// Hand-over by mbarriers, none block-wide: full[g][s] (the producer warp's 32 lanes: dt, dt*u are in), done[g][s]
// (the group's scan lanes: dt, dt*u read, y is in), tfull[b] (the 128 producers' tile copies landed; cp.async
// arrive), tempty[b] (all scan threads are done with the tile). The producer reaches block j only after block
// j - 2 is done, so QWSS >= 2 stages never overrun.
// Stage rows are permuted (channel ch at row ch ^ ((ch >> 1) & 1)) so that the 2 channels that a quarter-warp
// touches (ch, ch + 1 for the producers and QWC = 1; ch, ch + 2 for QWC = 2) sit in distinct bank groups.
// Measured (H100, b2 d4096 L4096 N16, device time, same process as selective_quad's 0.276-0.277 ms): 0.262-0.264
// ms with QWSS = 2 (1.46-1.47x the floor of 0.179; 3 stages 0.270-0.273). What moved it was the producers' side:
// 64-byte row pieces per load (0.313 -> 0.285), the producers writing out (0.271), two stages (0.262). Slower:
// softplus and silu on the FMA pipe (0.295), QWC = 2 (0.287: B/C read once for 2 channels, but one scan warp
// per scheduler). The element-wise chain and the outputs off the scan warps is the gain, not more bytes moved.
// =========================================================================================================
#if defined(QWS) && QWS
#ifndef QWSS
#define QWSS 2  // stages of dt, dt*u (producers -> scan) and y (scan -> producers); at least 2
#endif
#ifndef QWC
#define QWC 1  // channels per scan thread: 1 or 2 (each B, C value read from shared memory serves both)
#endif
#define QWNS (256 / QWC)                        // scan threads
#define QWNT ((QPF + QWSS + QSB - 1) / QSB + 1)  // tile buffers: a tile is copied up to QPF + QWSS blocks ahead

__device__ __forceinline__ void mbar_init(unsigned a, unsigned count)
{
    asm volatile("mbarrier.init.shared.b64 [%0], %1;" ::"r"(a), "r"(count) : "memory");
}
// arrives once all of the thread's earlier cp.async copies are complete (counted in the barrier's init count)
__device__ __forceinline__ void mbar_arrive_cp_async(unsigned a)
{
    asm volatile("cp.async.mbarrier.arrive.noinc.shared.b64 [%0];" ::"r"(a) : "memory");
}
__device__ __forceinline__ void mbar_arrive(unsigned a)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(a) : "memory");
}
__device__ __forceinline__ void mbar_wait(unsigned a, unsigned parity)
{
    unsigned done;
    do {
        asm volatile("{\n\t.reg .pred p;\n\tmbarrier.try_wait.parity.shared.b64 p, [%1], %2;\n\tselp.u32 %0, 1, 0, p;\n\t}"
                     : "=r"(done) : "r"(a), "r"(parity) : "memory");
    } while (!done);
}
__device__ __forceinline__ int srow(int ch) { return ch ^ ((ch >> 1) & 1); }  // a channel's stage row

template <bool VEC, bool BVAR, bool CVAR>
__device__ __forceinline__ void selective_qws_impl(SARGS)
{
    extern __shared__ float4 smem4[];
    __shared__ unsigned long long mbar[2 * 4 * QWSS + 2 * QWNT];
    constexpr int NP = 128, CPB = 64;  // producer threads, channels per block
    constexpr bool TILES = BVAR || CVAR;
    float4* ring = smem4;                                            // [QR][3][2][NP]: u, delta, z
    float* tB = reinterpret_cast<float*>(ring + QR * 3 * 2 * NP);   // [QWNT][16][QSTP]
    float* tC = tB + (BVAR ? QWNT * 16 * QSTP : 0);                  // [QWNT][16][QSTP]
    float* stg = tC + (CVAR ? QWNT * 16 * QSTP : 0);                 // [QWSS][3][CPB][16]: dt, dt*u, y
    const unsigned full_s = (unsigned)__cvta_generic_to_shared(mbar);  // [4][QWSS]
    const unsigned done_s = full_s + 8u * 4 * QWSS;                    // [4][QWSS]
    const unsigned tfull_s = done_s + 8u * 4 * QWSS;                   // [QWNT]
    const unsigned tempty_s = tfull_s + 8u * QWNT;                     // [QWNT]
    const int tid = threadIdx.x;
    if (tid == 0) {
        for (int i = 0; i < 4 * QWSS; ++i) {
            mbar_init(full_s + 8u * i, 32);
            mbar_init(done_s + 8u * i, 64 / QWC);
        }
        for (int i = 0; i < QWNT; ++i) { mbar_init(tfull_s + 8u * i, NP); mbar_init(tempty_s + 8u * i, QWNS); }
    }
    __syncthreads();

    const int bi = blockIdx.y, Li = (int)L;  // the launcher keeps L < 2^31: steps are ints
    const int nblk = (Li + QBS - 1) / QBS;
    const float* Bg = B;
    const float* Cg = C;
    if (BVAR) Bg = B + ((long long)bi * GB + (blockIdx.x * CPB) / (dim / GB)) * N * L;
    if (CVAR) Cg = C + ((long long)bi * GC + (blockIdx.x * CPB) / (dim / GC)) * N * L;

    if (tid >= QWNS) {  // ---------------- producer warps ----------------
        const int p = tid - QWNS, g = p >> 5, l = p & 31, ch = 16 * g + (l >> 2), e4 = 4 * (l & 3);
        const int d = blockIdx.x * CPB + ch;
        const long long row = ((long long)bi * dim + d) * L + e4;  // channel ch + 8 at row + 8L
        float Dd[2], bd[2];
#pragma unroll
        for (int v = 0; v < 2; ++v) {
            Dd[v] = (opts & 2) ? D[d + 8 * v] : 0.f;
            bd[v] = (opts & 8) ? bias[d + 8 * v] : 0.f;
        }
        const int r0 = srow(ch) * 16 + e4, r1 = srow(ch + 8) * 16 + e4;  // the lane's places in a stage row
        const float *pu = u + row, *pd = delta + row, *pz = z + row;    // the ring's next copies
        const unsigned ring_s = (unsigned)__cvta_generic_to_shared(ring + p);
        // block j's u, delta, z (VEC: into ring slot j % QR) and, with j the first block of a tile, the thread's
        // share of the tile's B and C; one cp.async group per block (empty past the end)
        auto issue = [&](int j) {
            if (j < nblk) {
                if (VEC) {
                    const unsigned slot = ring_s + 16u * (unsigned)((j % QR) * 3 * 2 * NP);
                    const int n = QBS * j + e4 < Li ? 16 : 0;
#pragma unroll
                    for (int v = 0; v < 2; ++v) {
                        cp_async16_ring(slot + 16u * v * NP, pu + 8 * v * L, n);
                        cp_async16_ring(slot + 16u * (2 + v) * NP, pd + 8 * v * L, n);
                        if (QHASZ) cp_async16_ring(slot + 16u * (4 + v) * NP, pz + 8 * v * L, n);
                    }
                    pu += QBS; pd += QBS; pz += QBS;
                }
                if (TILES && j % QSB == 0) {
                    const int t = j / QSB, tb = t % QWNT, c0 = QBS * j;
                    if (t >= QWNT) mbar_wait(tempty_s + 8u * tb, (t / QWNT - 1) & 1);
                    if (BVAR) quad_tile<VEC>(Bg, tB + tb * 16 * QSTP, c0, Li, L, N, p, NP);
                    if (CVAR) quad_tile<VEC>(Cg, tC + tb * 16 * QSTP, c0, Li, L, N, p, NP);
                    if (VEC) mbar_arrive_cp_async(tfull_s + 8u * tb);
                    else mbar_arrive(tfull_s + 8u * tb);
                }
            }
            if (VEC) cp_async_commit();
        };
        float pyD[8], pzs[8];  // block j - 1's D*u and silu(z)
        // block jb's outputs (y from the scan warps, D*u and silu(z) of block jb in pyD, pzs)
        auto finish = [&](int jb) {
            mbar_wait(done_s + 8u * (g * QWSS + jb % QWSS), (jb / QWSS) & 1);
            const float* sy = stg + ((jb % QWSS) * 3 + 2) * CPB * 16;
            const int t = QBS * jb + e4;
#pragma unroll
            for (int v = 0; v < 2; ++v) {
                const float4 y4 = *reinterpret_cast<const float4*>(sy + (v ? r1 : r0));
                const float o[4] = {(y4.x + pyD[4 * v]) * pzs[4 * v], (y4.y + pyD[4 * v + 1]) * pzs[4 * v + 1],
                                    (y4.z + pyD[4 * v + 2]) * pzs[4 * v + 2], (y4.w + pyD[4 * v + 3]) * pzs[4 * v + 3]};
                float* dst = out + row + (long long)QBS * jb + 8 * v * L;
                if (VEC) {
                    if (t < Li) __stcs(reinterpret_cast<float4*>(dst), make_float4(o[0], o[1], o[2], o[3]));
                } else {
#pragma unroll
                    for (int e = 0; e < 4; ++e)
                        if (t + e < Li) dst[e] = o[e];
                }
            }
        };
        for (int j = 0; j < QPF; ++j) issue(j);
        for (int j = 0; j < nblk; ++j) {
            issue(j + QPF);
            float us[8], ds[8], zz[8];
            const int t0 = QBS * j + e4;
            if (VEC) {
                cp_async_wait_pf();  // block j is here
                const float4* slot = ring + (j % QR) * 3 * 2 * NP + p;
#pragma unroll
                for (int v = 0; v < 2; ++v) {
                    const float4 a4 = slot[v * NP], b4 = slot[(2 + v) * NP];
                    const float4 c4 = QHASZ ? slot[(4 + v) * NP] : make_float4(0.f, 0.f, 0.f, 0.f);
                    us[4 * v] = a4.x; us[4 * v + 1] = a4.y; us[4 * v + 2] = a4.z; us[4 * v + 3] = a4.w;
                    ds[4 * v] = b4.x; ds[4 * v + 1] = b4.y; ds[4 * v + 2] = b4.z; ds[4 * v + 3] = b4.w;
                    zz[4 * v] = c4.x; zz[4 * v + 1] = c4.y; zz[4 * v + 2] = c4.z; zz[4 * v + 3] = c4.w;
                }
            } else {  // scalar loads straight from global memory (no ring)
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    const long long o = (long long)QBS * j + 8 * (i >> 2) * L + (i & 3);
                    const bool in = t0 + (i & 3) < Li;
                    us[i] = in ? u[row + o] : 0.f;
                    ds[i] = in ? delta[row + o] : 0.f;
                    zz[i] = (QHASZ && in) ? z[row + o] : 0.f;
                }
            }
            float dt[8], du[8], yD[8], zs[8];
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                float x = QSOFTPLUS ? softplus_f(ds[i] + bd[i >> 2]) : ds[i] + bd[i >> 2];
                if (t0 + 4 > Li && t0 + (i & 3) >= Li) x = 0.f;  // the last block: steps past L are the identity
                dt[i] = x;
                du[i] = x * us[i];
                yD[i] = Dd[i >> 2] * us[i];
                zs[i] = QHASZ ? silu_f(zz[i]) : 1.f;
            }
            // stage j % QWSS last held block j - QWSS, whose y this warp read in finish(j - QWSS): its lanes
            // arrive on full only after that, and the scan lanes write y only after full
            float* st = stg + (j % QWSS) * 3 * CPB * 16;
#pragma unroll
            for (int v = 0; v < 2; ++v) {
                float* sv = st + (v ? r1 : r0);
                *reinterpret_cast<float4*>(sv) = make_float4(dt[4 * v], dt[4 * v + 1], dt[4 * v + 2], dt[4 * v + 3]);
                *reinterpret_cast<float4*>(sv + CPB * 16) =
                    make_float4(du[4 * v], du[4 * v + 1], du[4 * v + 2], du[4 * v + 3]);
            }
            mbar_arrive(full_s + 8u * (g * QWSS + j % QWSS));
            if (j > 0) finish(j - 1);
#pragma unroll
            for (int i = 0; i < 8; ++i) { pyD[i] = yD[i]; pzs[i] = zs[i]; }
        }
        if (nblk > 0) finish(nblk - 1);
        if (VEC) cp_async_wait_all();  // no copy outlives the block
        return;
    }

    // ---------------- scan threads: lane q of channels (tid / 4)*QWC + c, c < QWC ----------------
    const int q = tid & 3, cb = (tid >> 2) * QWC, g = cb >> 4;
    const int d0 = blockIdx.x * CPB + cb;
    const bool has_last = opts & 16;
    float a[QWC][QS], Bk[QWC][QS], Ck[QWC][QS], h[QWC][QS];
    int so[QWC];  // the channels' stage rows
#pragma unroll
    for (int c = 0; c < QWC; ++c) {
        so[c] = srow(cb + c) * 16;
#pragma unroll
        for (int k = 0; k < QS; ++k) {
            const int n = q + QL * k;
            a[c][k] = n < N ? A[(long long)(d0 + c) * N + n] * LOG2E : 0.f;
            Bk[c][k] = (!BVAR && n < N) ? B[(long long)(d0 + c) * N + n] : 0.f;
            Ck[c][k] = (!CVAR && n < N) ? C[(long long)(d0 + c) * N + n] : 0.f;
            h[c][k] = 0.f;
        }
    }
    int boff = q * QSTP;  // block j's steps in the tile buffers
    for (int j = 0; j < nblk; ++j) {
        const int s = j % QWSS;
        if (TILES && j % QSB == 0) mbar_wait(tfull_s + 8u * (j / QSB % QWNT), (j / QSB / QWNT) & 1);
        mbar_wait(full_s + 8u * (g * QWSS + s), (j / QWSS) & 1);
        float* sg = stg + s * 3 * CPB * 16;  // dt; dt*u at + CPB*16, y at + 2*CPB*16
        const float* rB = tB + boff;
        const float* rC = tC + boff;
        float yp[QWC][QBS];
#pragma unroll
        for (int gq = 0; gq < QBS / 4; ++gq) {
            float bs[QS][4], cs[QS][4];
            if (BVAR || CVAR) {
#pragma unroll
                for (int k = 0; k < QS; ++k) {
                    float4 b4 = make_float4(0.f, 0.f, 0.f, 0.f), c4 = b4;
                    if (BVAR) b4 = *reinterpret_cast<const float4*>(rB + QL * k * QSTP + 4 * gq);
                    if (CVAR) c4 = *reinterpret_cast<const float4*>(rC + QL * k * QSTP + 4 * gq);
                    bs[k][0] = b4.x; bs[k][1] = b4.y; bs[k][2] = b4.z; bs[k][3] = b4.w;
                    cs[k][0] = c4.x; cs[k][1] = c4.y; cs[k][2] = c4.z; cs[k][3] = c4.w;
                }
            }
#pragma unroll
            for (int c = 0; c < QWC; ++c) {
                const float4 dt4 = *reinterpret_cast<const float4*>(sg + so[c] + 4 * gq);
                const float4 du4 = *reinterpret_cast<const float4*>(sg + CPB * 16 + so[c] + 4 * gq);
                const float dts[4] = {dt4.x, dt4.y, dt4.z, dt4.w}, dus[4] = {du4.x, du4.y, du4.z, du4.w};
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    float acc = 0.f;
#pragma unroll
                    for (int k = 0; k < QS; ++k) {
                        const float bv = BVAR ? bs[k][e] : Bk[c][k], cv = CVAR ? cs[k][e] : Ck[c][k];
                        h[c][k] = fmaf(ex2(dts[e] * a[c][k]), h[c][k], dus[e] * bv);
                        acc = k == 0 ? cv * h[c][k] : fmaf(cv, h[c][k], acc);
                    }
                    yp[c][4 * gq + e] = acc;
                }
            }
        }
        if (TILES && j % QSB == QSB - 1) mbar_arrive(tempty_s + 8u * (j / QSB % QWNT));  // the tile is read
        boff += QBS;
        if ((j + 1) % QSB == 0) boff = ((j + 1) / QSB) % QWNT * 16 * QSTP + q * QSTP;
#pragma unroll
        for (int c = 0; c < QWC; ++c) {
            reduce_half<2, QBS / 2>(yp[c], q, 0xffffffffu);
            reduce_half<1, QE>(yp[c], q, 0xffffffffu);
            // y of the lane's QE steps into the stage (its dt, dt*u are read): the producer warp writes out
            *reinterpret_cast<float4*>(sg + 2 * CPB * 16 + so[c] + QE * q) =
                make_float4(yp[c][0], yp[c][1], yp[c][2], yp[c][3]);
        }
        mbar_arrive(done_s + 8u * (g * QWSS + s));
    }
    if (has_last) write_last<QWC>(last, h, bi, dim, d0, q, N);
}

#define SWKERNEL(name, VEC, BV, CV) \
    __global__ void __launch_bounds__(QWNS + 128, 1) name(SARGS) { selective_qws_impl<VEC, BV, CV>(SPASS); }

extern "C" {
EIGHT(SWKERNEL, selective_qws)
}
#endif
