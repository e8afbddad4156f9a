// ssd.cu: the chunked SSD algorithm (Mamba-2) as five kernels, the matrix products on tensor cores
// (PTX mma.sync m16n8k16, fp16 operands, fp32 accumulation; no CUDA headers, so NVRTC needs no include path).
//
// Compile-time sizes (-D options, one module per combination): SSD_P head dim p, SSD_N state size n,
// SSD_Q chunk length (a multiple of 64, at most 256), SSD_OUT_HALF (y and z are __half, else float).
// PP, NN: p rounded up to 16 and n to 32 (the MMA tiles); the padding is zero in shared memory and `states`.
//
// Layouts (row-major, 64-bit offsets everywhere: l*h*p passes 2^31 at a few hundred thousand tokens):
//   x (b, l, h, p) half, dt (b, l, h) float, A (h,), dt_bias (h,), B and C (b, l, g, n) half,
//   D (h, p) float, z and y (b, l, h, p) out_t,
//   dtq, acum, wend (b, h, nc*Q) float: Δ, its inclusive cumulative sum of a = Δ·A from the chunk's start,
//       and Δ_s·exp(a_{s+1} + ... + a_{end}) (the weight of input s in its chunk's state),
//   CB (b, nc, g, Q, Q) float: C_t·B_s within each chunk (only 64x64 tiles with s-tile <= t-tile written),
//   states (b, nc, h, PP, NN) float: each chunk's own state; Hin (same shape) half: the state entering it.
// Positions past l (the short last chunk) are the identity step: Δ = 0, x = B = C = 0, so states pass
// through unchanged and nothing is written to y there.
//
// Kernels and what each thread block owns:
//   ssd_dt_cumsum      one warp per (b, chunk, head), lane j owning Q/32 consecutive steps: Δ (softplus),
//                      and the sums from the chunk's start and to its end by warp scans both ways.
//   ssd_bmm            one block (4 warps) per (b, chunk, group, 64x64 tile of (t, s) with s-tile <= t-tile):
//                      CB = C·Bᵀ over n; warp w owns rows 16w..16w+15 (8 accumulator tiles of 16x8).
//   ssd_chunk_state    one block (8 warps) per (b, chunk, head): S = (x·wend)ᵀ·B, p x n, over 64-step pieces;
//                      units of 16 x 32 (4 accumulator tiles) dealt round-robin to the warps.
//   ssd_state_passing  one thread per 4 elements of one (b, head)'s state: the sequential scan over chunks
//                      H_c = exp(Σ a over chunk c)·H_{c-1} + S_c (the next chunk's loads issued before this
//                      chunk's store), writing each entering state in fp16 to Hin, and the final state.
//   ssd_chunk_scan     one block (4 warps) per (b, chunk, 64-row tile of t, head):
//                      y = diag(exp(acum_t))·C·Hᵀ + (CB ∘ exp(acum_t - acum_s)·Δ_s, s <= t)·x, then D, z;
//                      warp w owns rows 16w..16w+15, all PP/8 column tiles.
// Global loads are 16 bytes wide (8 halves; p and n multiples of 8, else a scalar path) and all of a thread's
// loads for a tile are issued before its shared-memory stores. Tiles stay in their natural layouts in shared
// memory; operands needed k-major (xᵀ) are gathered into fragments from there (load_a_t, load_b_t).
// Grids are 1-D (no 65535 limit); the head is the fastest block index, so the heads that share one
// chunk's B, C and CB run together and read them from L2.
//
// Stable segment sums: the decays across chunks are exp of sums over their own segment (from the chunk
// start, to the chunk end, or the whole chunk). Inside one chunk, exp(acum_t - acum_s) is a difference of
// sums that restart at each chunk, so |acum| is bounded by one chunk's decay; it is formed only where s <= t
// (the mask before the exponential: no inf*0).

#ifndef SSD_P
#define SSD_P 64
#endif
#ifndef SSD_N
#define SSD_N 128
#endif
#ifndef SSD_Q
#define SSD_Q 256
#endif
#ifndef SSD_OUT_HALF
#define SSD_OUT_HALF 1
#endif

#define PP (((SSD_P) + 15) / 16 * 16)
#define NN (((SSD_N) + 31) / 32 * 32)
#define TILE 64
#define NTILE (SSD_Q / TILE)
#define LDK (TILE + 8)  // halves per shared row of 64 k-values: 36 words, so the 8 rows of a fragment hit 8 bank groups
#define LDO (PP + 4)    // floats per row of the output staging tile

typedef long long i64;
typedef unsigned short half_t;  // IEEE fp16 bits; converted with cvt (no cuda_fp16.h under NVRTC)

__device__ __forceinline__ float h2f(half_t h)
{
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ half_t f2h(float f)
{
    half_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

#if SSD_OUT_HALF
typedef half_t out_t;
__device__ __forceinline__ float out_to_f(out_t v) { return h2f(v); }
__device__ __forceinline__ out_t f_to_out(float v) { return f2h(v); }
#else
typedef float out_t;
__device__ __forceinline__ float out_to_f(out_t v) { return v; }
__device__ __forceinline__ out_t f_to_out(float v) { return v; }
#endif

__device__ __forceinline__ unsigned ld32(const half_t* p) { return *reinterpret_cast<const unsigned*>(p); }

// D = A·B + D for a 16x16 (A, row-major) by 16x8 (B, "col": stored n-major, k contiguous) fp16 product.
// Fragments (PTX ISA, mma.m16n8k16), g = lane/4, q = lane%4:
//   A regs: (g, 2q..2q+1), (g+8, 2q..), (g, 2q+8..), (g+8, 2q+8..);  B regs: (k 2q..2q+1, n g), (k 2q+8.., n g)
//   C: c0 (g, 2q), c1 (g, 2q+1), c2 (g+8, 2q), c3 (g+8, 2q+1)
__device__ __forceinline__ void mma16816(float* c, const unsigned* a, unsigned b0, unsigned b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// A fragment of rows 0..15, k 0..15 of a row-major tile (k contiguous) starting at s, leading dimension ld
__device__ __forceinline__ void load_a(unsigned* a, const half_t* s, int ld, int lane)
{
    const int g = lane >> 2, q = lane & 3;
    a[0] = ld32(s + g * ld + 2 * q);
    a[1] = ld32(s + (g + 8) * ld + 2 * q);
    a[2] = ld32(s + g * ld + 2 * q + 8);
    a[3] = ld32(s + (g + 8) * ld + 2 * q + 8);
}
// B fragment of n 0..7, k 0..15 of an n-major tile (k contiguous) starting at s, leading dimension ld
__device__ __forceinline__ void load_b(unsigned& b0, unsigned& b1, const half_t* s, int ld, int lane)
{
    const int g = lane >> 2, q = lane & 3;
    b0 = ld32(s + g * ld + 2 * q);
    b1 = ld32(s + g * ld + 2 * q + 8);
}

// ---------------------------------------------------------------------------------------------------------
__device__ __forceinline__ unsigned pack2(half_t lo, half_t hi) { return (unsigned)lo | ((unsigned)hi << 16); }
__device__ __forceinline__ unsigned scale2(unsigned v, float s)
{
    return pack2(f2h(h2f((half_t)(v & 0xffffu)) * s), f2h(h2f((half_t)(v >> 16)) * s));
}
// A fragment (16 x 16) from a k-major tile S[k][m] (m contiguous), S at (k0, m0)
__device__ __forceinline__ void load_a_t(unsigned* a, const half_t* S, int ld, int lane)
{
    const int g = lane >> 2, q = lane & 3;
    a[0] = pack2(S[(2 * q) * ld + g], S[(2 * q + 1) * ld + g]);
    a[1] = pack2(S[(2 * q) * ld + g + 8], S[(2 * q + 1) * ld + g + 8]);
    a[2] = pack2(S[(2 * q + 8) * ld + g], S[(2 * q + 9) * ld + g]);
    a[3] = pack2(S[(2 * q + 8) * ld + g + 8], S[(2 * q + 9) * ld + g + 8]);
}
// B fragment (16 x 8) from a k-major tile S[k][n] (n contiguous), S at (k0, n0)
__device__ __forceinline__ void load_b_t(unsigned& b0, unsigned& b1, const half_t* S, int ld, int lane)
{
    const int g = lane >> 2, q = lane & 3;
    b0 = pack2(S[(2 * q) * ld + g], S[(2 * q + 1) * ld + g]);
    b1 = pack2(S[(2 * q + 8) * ld + g], S[(2 * q + 9) * ld + g]);
}

// 64 rows x PADC columns of a half matrix (row stride `stride` elements, COLS real columns, `valid` real rows)
// into S[r][c] (leading dimension LD), zero-padded, optionally scaled by w[r]. NT threads.
template <int COLS, int PADC, int LD, int NT>
__device__ __forceinline__ void tile_to_smem(half_t* S, const half_t* __restrict__ g, i64 stride, int valid,
                                             const float* w)
{
    if (COLS % 8 == 0) {
        constexpr int VPR = PADC / 8, TOT = TILE * VPR, IT = (TOT + NT - 1) / NT;
        uint4 v[IT];
#pragma unroll
        for (int it = 0; it < IT; ++it) {
            const int e = threadIdx.x + it * NT, r = e / VPR, cv = e % VPR;
            v[it] = make_uint4(0u, 0u, 0u, 0u);
            if (e < TOT && r < valid && cv * 8 < COLS) v[it] = *reinterpret_cast<const uint4*>(g + r * stride + cv * 8);
        }
#pragma unroll
        for (int it = 0; it < IT; ++it) {
            const int e = threadIdx.x + it * NT, r = e / VPR, cv = e % VPR;
            if (e < TOT) {
                uint4 u = v[it];
                if (w != nullptr) {
                    const float s = w[r];
                    u = make_uint4(scale2(u.x, s), scale2(u.y, s), scale2(u.z, s), scale2(u.w, s));
                }
                *reinterpret_cast<uint4*>(S + r * LD + cv * 8) = u;
            }
        }
    } else {
        for (int e = threadIdx.x; e < TILE * PADC; e += NT) {
            const int r = e / PADC, cc = e % PADC;
            half_t v = 0;
            if (r < valid && cc < COLS) v = g[r * stride + cc];
            if (w != nullptr) v = f2h(h2f(v) * w[r]);
            S[r * LD + cc] = v;
        }
    }
}

// acc[j] += A·B over one 64-wide k piece for one warp: A = 16 rows of a row-major tile (leading dimension lda),
// B = NT tiles of 8 columns, n-major (k contiguous, tile j at rows 8j) or, with K_MAJOR, k-major (tile j at
// columns 8j); k steps at or past kmax are skipped (the zero padding of a short piece)
template <int NT, bool K_MAJOR>
__device__ __forceinline__ void warp_mma_k64(float (*acc)[4], const half_t* A, int lda, const half_t* Bsm, int ldb,
                                             int kmax, int lane)
{
#pragma unroll
    for (int k = 0; k < TILE; k += 16) {
        if (k < kmax) {
            unsigned a[4];
            load_a(a, A + k, lda, lane);
#pragma unroll
            for (int j = 0; j < NT; ++j) {
                unsigned b0, b1;
                if (K_MAJOR)
                    load_b_t(b0, b1, Bsm + k * ldb + j * 8, ldb, lane);
                else
                    load_b(b0, b1, Bsm + j * 8 * ldb + k, ldb, lane);
                mma16816(acc[j], a, b0, b1);
            }
        }
    }
}

__device__ __forceinline__ int rows_valid(i64 len, i64 t0)
{
    const i64 v = len - t0;
    return v <= 0 ? 0 : (v >= TILE ? TILE : (int)v);
}

// ---------------------------------------------------------------------------------------------------------
#define E_DT (SSD_Q / 32)

extern "C" __global__ void ssd_dt_cumsum(const float* __restrict__ dt, const float* __restrict__ A,
                                          const float* __restrict__ dt_bias, int softplus,
                                          float* __restrict__ dtq, float* __restrict__ acum,
                                          float* __restrict__ wend, i64 batch, i64 len, i64 heads, i64 nchunks)
{
    // one warp per (b, chunk, head); lane j owns the chunk's positions j*E_DT .. j*E_DT + E_DT - 1
    const i64 wid = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (wid >= batch * nchunks * heads) return;  // uniform across the warp
    const i64 hh = wid % heads, bc = wid / heads, c = bc % nchunks, b = bc / nchunks;
    const float Ah = A[hh], bias = dt_bias[hh];
    const i64 o = (b * heads + hh) * (nchunks * SSD_Q) + c * SSD_Q + lane * E_DT;
    float d[E_DT], pre[E_DT], run = 0.f;
#pragma unroll
    for (int i = 0; i < E_DT; ++i) {
        const i64 gt = c * SSD_Q + lane * E_DT + i;
        float v = 0.f;  // the identity step past the end
        if (gt < len) {
            v = dt[(b * len + gt) * heads + hh] + bias;
            if (softplus) v = v > 20.f ? v : log1pf(expf(v));
        }
        d[i] = v;
        run += v * Ah;
        pre[i] = run;
    }
    // sums over the lanes before and after this one (warp scans both ways: every sum is over its own segment)
    float incl = run, rincl = run;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        const float u = __shfl_up_sync(0xffffffffu, incl, off);
        const float dn = __shfl_down_sync(0xffffffffu, rincl, off);
        if (lane >= off) incl += u;
        if (lane + off < 32) rincl += dn;
    }
    float before = __shfl_up_sync(0xffffffffu, incl, 1);
    float after = __shfl_down_sync(0xffffffffu, rincl, 1);
    if (lane == 0) before = 0.f;
    if (lane == 31) after = 0.f;
    float suf = after;
    float wv[E_DT];
#pragma unroll
    for (int i = E_DT - 1; i >= 0; --i) {
        wv[i] = d[i] * expf(suf);
        suf += d[i] * Ah;
    }
#pragma unroll
    for (int i = 0; i < E_DT; ++i) {
        dtq[o + i] = d[i];
        acum[o + i] = before + pre[i];
        wend[o + i] = wv[i];
    }
}

// ---------------------------------------------------------------------------------------------------------
#define NPAIR (NTILE * (NTILE + 1) / 2)

extern "C" __global__ void __launch_bounds__(128) ssd_bmm(const half_t* __restrict__ B, const half_t* __restrict__ C,
                                                          float* __restrict__ CB, i64 batch, i64 len, i64 groups,
                                                          i64 nchunks)
{
    __shared__ uint4 Cs_[TILE * LDK / 8], Bs_[TILE * LDK / 8];  // uint4: 16-byte aligned without __align__
    half_t* Cs = reinterpret_cast<half_t*>(Cs_);  // [t][n]
    half_t* Bs = reinterpret_cast<half_t*>(Bs_);  // [s][n]: the n-major B operand of C·Bᵀ
    const i64 blk = blockIdx.x;
    const int pair = (int)(blk % NPAIR);
    const i64 bcg = blk / NPAIR, gg = bcg % groups, bc = bcg / groups, c = bc % nchunks, b = bc / nchunks;
    int ti = 0;
    while ((ti + 1) * (ti + 2) / 2 <= pair) ++ti;
    const int tj = pair - ti * (ti + 1) / 2;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

    float acc[8][4];
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[j][i] = 0.f;

    for (int k0 = 0; k0 < NN; k0 += TILE) {
        __syncthreads();
        for (int e = threadIdx.x; e < TILE * TILE; e += 128) {
            const int r = e / TILE, k = e % TILE, kk = k0 + k;
            const i64 t = c * SSD_Q + ti * TILE + r, s = c * SSD_Q + tj * TILE + r;
            half_t cv = 0, bv = 0;  // +0.0 in fp16 bits
            if (kk < SSD_N) {
                if (t < len) cv = C[((b * len + t) * groups + gg) * SSD_N + kk];
                if (s < len) bv = B[((b * len + s) * groups + gg) * SSD_N + kk];
            }
            Cs[r * LDK + k] = cv;
            Bs[r * LDK + k] = bv;
        }
        __syncthreads();
        warp_mma_k64<8, false>(acc, Cs + warp * 16 * LDK, LDK, Bs, LDK, NN - k0, lane);
    }
    const int g = lane >> 2, q = lane & 3;
    float* out = CB + (((b * nchunks + c) * groups + gg) * SSD_Q + ti * TILE + warp * 16) * (i64)SSD_Q + tj * TILE;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        *reinterpret_cast<float2*>(out + (i64)g * SSD_Q + j * 8 + 2 * q) = make_float2(acc[j][0], acc[j][1]);
        *reinterpret_cast<float2*>(out + (i64)(g + 8) * SSD_Q + j * 8 + 2 * q) = make_float2(acc[j][2], acc[j][3]);
    }
}

// ---------------------------------------------------------------------------------------------------------
#define MT_S (PP / 16)                 // 16-row tiles of p
#define NG_S (NN / 32)                 // 32-column groups of n (4 accumulator tiles of 8)
#define UNITS_S (MT_S * NG_S)
#define UPW_S ((UNITS_S + 7) / 8)      // units per warp
#define LDXS (PP + 8)
#define LDBS (NN + 8)

extern "C" __global__ void __launch_bounds__(256) ssd_chunk_state(const half_t* __restrict__ x,
                                                                   const half_t* __restrict__ B,
                                                                   const float* __restrict__ wend,
                                                                   float* __restrict__ states, i64 batch, i64 len,
                                                                   i64 heads, i64 groups, i64 nchunks)
{
    __shared__ uint4 Xs_[TILE * LDXS / 8], Bs_[TILE * LDBS / 8];
    __shared__ float ws[SSD_Q];
    half_t* Xs = reinterpret_cast<half_t*>(Xs_);  // [s][p], scaled by wend: the k-major A operand (x·w)ᵀ
    half_t* Bs = reinterpret_cast<half_t*>(Bs_);  // [s][n]: the k-major B operand
    const i64 blk = blockIdx.x, hh = blk % heads, bc = blk / heads, c = bc % nchunks, b = bc / nchunks;
    const i64 gg = hh / (heads / groups);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const float* w = wend + (b * heads + hh) * (nchunks * SSD_Q) + c * SSD_Q;
    for (int i = threadIdx.x; i < SSD_Q; i += 256) ws[i] = w[i];

    float acc[UPW_S][4][4];
#pragma unroll
    for (int u = 0; u < UPW_S; ++u)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[u][j][i] = 0.f;

    for (int s0 = 0; s0 < SSD_Q; s0 += TILE) {
        const i64 t0 = c * SSD_Q + s0;
        const int valid = rows_valid(len, t0);
        __syncthreads();
        tile_to_smem<SSD_P, PP, LDXS, 256>(Xs, x + ((b * len + t0) * heads + hh) * SSD_P, heads * SSD_P, valid, ws + s0);
        tile_to_smem<SSD_N, NN, LDBS, 256>(Bs, B + ((b * len + t0) * groups + gg) * SSD_N, groups * SSD_N, valid, nullptr);
        __syncthreads();
#pragma unroll
        for (int u = 0; u < UPW_S; ++u) {
            const int unit = warp + u * 8;
            if (unit < UNITS_S) {
                const int mi = unit / NG_S, ng = unit % NG_S;
#pragma unroll
                for (int k = 0; k < TILE; k += 16) {
                    unsigned a[4];
                    load_a_t(a, Xs + k * LDXS + mi * 16, LDXS, lane);
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        unsigned b0, b1;
                        load_b_t(b0, b1, Bs + k * LDBS + ng * 32 + j * 8, LDBS, lane);
                        mma16816(acc[u][j], a, b0, b1);
                    }
                }
            }
        }
    }
    const int g = lane >> 2, q = lane & 3;
    float* out = states + ((b * nchunks + c) * heads + hh) * (i64)(PP * NN);
#pragma unroll
    for (int u = 0; u < UPW_S; ++u) {
        const int unit = warp + u * 8;
        if (unit < UNITS_S) {
            const int mi = unit / NG_S, ng = unit % NG_S;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int col = ng * 32 + j * 8 + 2 * q;
                *reinterpret_cast<float2*>(out + (mi * 16 + g) * NN + col) = make_float2(acc[u][j][0], acc[u][j][1]);
                *reinterpret_cast<float2*>(out + (mi * 16 + g + 8) * NN + col) = make_float2(acc[u][j][2], acc[u][j][3]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// one thread per 4 state elements of one (b, head); the next chunk's loads are issued before this chunk's store
extern "C" __global__ void ssd_state_passing(const float* __restrict__ states, const float* __restrict__ acum,
                                              const float* __restrict__ init, half_t* __restrict__ Hin,
                                              float* __restrict__ final_states, int has_init, i64 batch, i64 heads,
                                              i64 nchunks)
{
    const int EL4 = PP * NN / 4;
    const i64 per = (EL4 + 255) / 256;
    const i64 bh = blockIdx.x / per;
    const int e4 = (int)(blockIdx.x % per) * 256 + threadIdx.x;
    if (e4 >= EL4 || bh >= batch * heads) return;
    const i64 b = bh / heads, hh = bh % heads;
    const float4* S4 = reinterpret_cast<const float4*>(states);
    uint2* H2 = reinterpret_cast<uint2*>(Hin);  // 4 halves per uint2: the same index as the float4
    float4 H = has_init ? reinterpret_cast<const float4*>(init)[bh * EL4 + e4] : make_float4(0.f, 0.f, 0.f, 0.f);
    const float* ac = acum + bh * nchunks * SSD_Q;
    const i64 off0 = (b * nchunks * heads + hh) * EL4 + e4, cstride = heads * EL4;
    float4 Sn = S4[off0];
    float dn = ac[SSD_Q - 1];
    for (i64 c = 0; c < nchunks; ++c) {
        const float4 Sc = Sn;
        const float dc = dn;
        if (c + 1 < nchunks) {
            Sn = S4[off0 + (c + 1) * cstride];
            dn = ac[(c + 1) * SSD_Q + SSD_Q - 1];
        }
        H2[off0 + c * cstride] = make_uint2(pack2(f2h(H.x), f2h(H.y)), pack2(f2h(H.z), f2h(H.w)));  // entering c
        const float e = expf(dc);  // the whole chunk's decay: a segment sum
        H = make_float4(e * H.x + Sc.x, e * H.y + Sc.y, e * H.z + Sc.z, e * H.w + Sc.w);
    }
    reinterpret_cast<float4*>(final_states)[bh * EL4 + e4] = H;
}

// ---------------------------------------------------------------------------------------------------------
#define NT_Y (PP / 8)                   // 8-column accumulator tiles of a warp's 16 x PP output rows
#define SM_A (TILE * LDK * 2)           // bytes: the A operand, 64 rows of 64 k-values
#define SM_O (TILE * LDO * 4)           // bytes: the fp32 output staging tile
#define LDX (PP + 8)
#define SM_B ((PP * LDK > TILE * LDX ? PP * LDK : TILE * LDX) * 2)
#define SM_TOTAL ((SM_A + SM_B) > SM_O ? (SM_A + SM_B) : SM_O)

extern "C" __global__ void __launch_bounds__(128) ssd_chunk_scan(
    const half_t* __restrict__ x, const half_t* __restrict__ C, const float* __restrict__ CB,
    const half_t* __restrict__ Hin, const float* __restrict__ dtq, const float* __restrict__ acum,
    const float* __restrict__ D, const out_t* __restrict__ z, out_t* __restrict__ y, int has_D, int has_z,
    i64 batch, i64 len, i64 heads, i64 groups, i64 nchunks)
{
    __shared__ uint4 smem[SM_TOTAL / 16];
    __shared__ float a_s[SSD_Q];
    __shared__ float d_s[SSD_Q];
    __shared__ float ea[TILE];
    half_t* As = reinterpret_cast<half_t*>(smem);              // [t][k]
    half_t* Bm = reinterpret_cast<half_t*>(smem + SM_A / 16);  // [p][n] in part 1, [s][p] in part 2
    float* Os = reinterpret_cast<float*>(smem);                // [t][p], after the products

    const i64 blk = blockIdx.x, hh = blk % heads, r1 = blk / heads;
    const int m = (int)(r1 % NTILE);
    const i64 bc = r1 / NTILE, c = bc % nchunks, b = bc / nchunks;
    const i64 gg = hh / (heads / groups);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, t0 = m * TILE;
    const i64 q0 = (b * heads + hh) * (nchunks * SSD_Q) + c * SSD_Q;
    for (int i = threadIdx.x; i < SSD_Q; i += 128) {
        a_s[i] = acum[q0 + i];
        d_s[i] = dtq[q0 + i];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < TILE; i += 128) ea[i] = expf(a_s[t0 + i]);  // a segment from the chunk's start
    const int valid_t = rows_valid(len, c * SSD_Q + t0);

    float acc[NT_Y][4];
#pragma unroll
    for (int j = 0; j < NT_Y; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[j][i] = 0.f;

    // part 1, the off-diagonal blocks: y += diag(exp(acum_t))·C·Hᵀ, H (p x n) the state entering this chunk
    const half_t* Cg = C + ((b * len + c * SSD_Q + t0) * groups + gg) * SSD_N;
    const half_t* Hg = Hin + ((b * nchunks + c) * heads + hh) * (i64)(PP * NN);
    for (int k0 = 0; k0 < NN; k0 += TILE) {
        __syncthreads();
        if (SSD_N % 8 == 0) {
            uint4 v[4], hv[PP / 16];
#pragma unroll
            for (int it = 0; it < 4; ++it) {  // C: 64 rows x 8 uint4
                const int e = threadIdx.x + it * 128, r = e >> 3, cv = e & 7;
                v[it] = make_uint4(0u, 0u, 0u, 0u);
                if (r < valid_t && k0 + cv * 8 < SSD_N)
                    v[it] = *reinterpret_cast<const uint4*>(Cg + (i64)r * groups * SSD_N + k0 + cv * 8);
            }
#pragma unroll
            for (int it = 0; it < PP / 16; ++it) {  // H: PP rows x 8 uint4
                const int e = threadIdx.x + it * 128, r = e >> 3, cv = e & 7;
                hv[it] = make_uint4(0u, 0u, 0u, 0u);
                if (k0 + cv * 8 < NN) hv[it] = *reinterpret_cast<const uint4*>(Hg + r * NN + k0 + cv * 8);
            }
#pragma unroll
            for (int it = 0; it < 4; ++it) {
                const int e = threadIdx.x + it * 128, r = e >> 3, cv = e & 7;
                const float s = ea[r];
                const uint4 u = v[it];
                *reinterpret_cast<uint4*>(As + r * LDK + cv * 8) =
                    make_uint4(scale2(u.x, s), scale2(u.y, s), scale2(u.z, s), scale2(u.w, s));
            }
#pragma unroll
            for (int it = 0; it < PP / 16; ++it) {
                const int e = threadIdx.x + it * 128, r = e >> 3, cv = e & 7;
                *reinterpret_cast<uint4*>(Bm + r * LDK + cv * 8) = hv[it];
            }
        } else {
            for (int e = threadIdx.x; e < TILE * TILE; e += 128) {
                const int r = e / TILE, k = e % TILE, kk = k0 + k;
                float v = 0.f;
                if (kk < SSD_N && r < valid_t) v = h2f(Cg[(i64)r * groups * SSD_N + kk]) * ea[r];
                As[r * LDK + k] = f2h(v);
            }
            for (int e = threadIdx.x; e < PP * TILE; e += 128) {
                const int j = e / TILE, k = e % TILE, kk = k0 + k;
                Bm[j * LDK + k] = kk < NN ? Hg[j * NN + kk] : (half_t)0;
            }
        }
        __syncthreads();
        warp_mma_k64<NT_Y, false>(acc, As + warp * 16 * LDK, LDK, Bm, LDK, NN - k0, lane);
    }

    // part 2, the diagonal block: y += (CB ∘ exp(acum_t - acum_s)·Δ_s for s <= t)·x over s-tiles 0..m
    const float* CBg = CB + ((b * nchunks + c) * groups + gg) * (i64)SSD_Q * SSD_Q;
    for (int sj = 0; sj <= m; ++sj) {
        const int s0 = sj * TILE;
        __syncthreads();
        {
            float4 cb[8];
#pragma unroll
            for (int it = 0; it < 8; ++it) {  // 64 rows x 16 float4
                const int e = threadIdx.x + it * 128, r = e >> 4, k4 = (e & 15) * 4;
                cb[it] = make_float4(0.f, 0.f, 0.f, 0.f);
                if (s0 + k4 <= t0 + r) cb[it] = *reinterpret_cast<const float4*>(CBg + (i64)(t0 + r) * SSD_Q + s0 + k4);
            }
#pragma unroll
            for (int it = 0; it < 8; ++it) {
                const int e = threadIdx.x + it * 128, r = e >> 4, k4 = (e & 15) * 4, t = t0 + r, s = s0 + k4;
                const float at = a_s[t];
                float v0 = 0.f, v1 = 0.f, v2 = 0.f, v3 = 0.f;  // the mask before the exponential
                if (s <= t) v0 = cb[it].x * __expf(fminf(at - a_s[s], 0.f)) * d_s[s];
                if (s + 1 <= t) v1 = cb[it].y * __expf(fminf(at - a_s[s + 1], 0.f)) * d_s[s + 1];
                if (s + 2 <= t) v2 = cb[it].z * __expf(fminf(at - a_s[s + 2], 0.f)) * d_s[s + 2];
                if (s + 3 <= t) v3 = cb[it].w * __expf(fminf(at - a_s[s + 3], 0.f)) * d_s[s + 3];
                *reinterpret_cast<uint2*>(As + r * LDK + k4) =
                    make_uint2(pack2(f2h(v0), f2h(v1)), pack2(f2h(v2), f2h(v3)));
            }
        }
        tile_to_smem<SSD_P, PP, LDX, 128>(Bm, x + ((b * len + c * SSD_Q + s0) * heads + hh) * SSD_P, heads * SSD_P,
                                           rows_valid(len, c * SSD_Q + s0), nullptr);
        __syncthreads();
        warp_mma_k64<NT_Y, true>(acc, As + warp * 16 * LDK, LDK, Bm, LDX, TILE, lane);
    }

    // epilogue: through shared memory to coalesced rows of y, with D·x and the gate silu(z)
    __syncthreads();
    {
        const int g = lane >> 2, q = lane & 3, r0 = warp * 16 + g;
#pragma unroll
        for (int j = 0; j < NT_Y; ++j) {
            *reinterpret_cast<float2*>(Os + r0 * LDO + j * 8 + 2 * q) = make_float2(acc[j][0], acc[j][1]);
            *reinterpret_cast<float2*>(Os + (r0 + 8) * LDO + j * 8 + 2 * q) = make_float2(acc[j][2], acc[j][3]);
        }
    }
    __syncthreads();
#pragma unroll 4
    for (int e = threadIdx.x; e < TILE * SSD_P; e += 128) {
        const int r = e / SSD_P, k = e % SSD_P;
        if (r >= valid_t) continue;
        const i64 off = ((b * len + c * SSD_Q + t0 + r) * heads + hh) * SSD_P + k;
        float v = Os[r * LDO + k];
        if (has_D) v += D[hh * SSD_P + k] * h2f(x[off]);
        if (has_z) {
            const float zz = out_to_f(z[off]);
            v *= zz / (1.f + __expf(-zz));  // silu; exp(-z) = inf gives -0, not NaN
        }
        y[off] = f_to_out(v);
    }
}
