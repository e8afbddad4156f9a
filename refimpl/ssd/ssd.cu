// ssd.cu: the chunked SSD algorithm (Mamba-2) as five kernels, the matrix products on tensor cores
// (PTX mma.sync m16n8k16, fp16 operands, fp32 accumulation; no CUDA headers, so NVRTC needs no include path).
//
// Compile-time sizes (-D options, one module per combination): SSD_P head dim p, SSD_N state size n,
// SSD_Q chunk length (a multiple of 64, at most 256), SSD_OUT_HALF (y and z are __half, else float),
// SSD_SW warps per ssd_chunk_state block, SSD_HB heads per ssd_chunk_scan block (1, or 2 when both heads of a pair read one group), SSD_NS the
// depth of ssd_chunk_scan's copy ring (2 or 3). PP, NN: p rounded up to 16 and n to 32 (the MMA tiles); the
// padding is zero in shared memory and `states`. PC = min(PP, 64): the columns of p one block owns.
//
// Layouts (row-major, 64-bit offsets everywhere: l*h*p passes 2^31 at a few hundred thousand tokens):
//   x (b, l, h, p) half, dt (b, l, h) float, A (h,), dt_bias (h,), B and C (b, l, g, n) half,
//   D (h, p) float, z and y (b, l, h, p) out_t,
//   dtq, acum, wend (b, h, nc*Q) float: Δ, its inclusive cumulative sum of a = Δ·A from the chunk's start,
//       and Δ_s·exp(a_{s+1} + ... + a_{end}) (the weight of input s in its chunk's state),
//   CB (b, nc, g, Q, Q) half: C_t·B_s within each chunk (only 64x64 tiles with s-tile <= t-tile written),
//   states (b, nc, h, PP, NN) float: each chunk's own state; Hin (same shape) half: the state entering it.
// Positions past l (the short last chunk) are the identity step: Δ = 0, x = B = C = 0, so states pass
// through unchanged and nothing is written to y there.
//
// Kernels and what each thread block owns:
//   ssd_dt_cumsum      one block (8 warps) per (b, chunk, 8 heads): the chunk's dt rows are read coalesced into
//                      shared memory, then warp w scans head 8i+w, lane j owning Q/32 consecutive steps: Δ
//                      (softplus), and the sums from the chunk's start and to its end by warp scans both ways;
//                      the results go back through shared memory, each warp store 128 contiguous bytes.
//   ssd_bmm            one block (4 warps) per (b, chunk, group, 64x64 tile of (t, s) with s-tile <= t-tile):
//                      CB = C·Bᵀ over n; warp w owns rows 16w..16w+15 (8 accumulator tiles of 16x8).
//   ssd_chunk_state    one block (SSD_SW warps: 4, or 8 when NN > 128) per (b, chunk, head, 64 rows of p):
//                      S = (x·wend)ᵀ·B, over the chunk's 64-step pieces (a 2-deep cp.async ring); warp units
//                      of 32 x 64 (16 x 32 where the sizes do not divide) dealt round-robin to the warps.
//   ssd_state_passing  one thread per 4 elements of one (b, head)'s state: the sequential scan over chunks
//                      H_c = exp(Σ a over chunk c)·H_{c-1} + S_c (the next chunk's loads issued before this
//                      chunk's store), writing each entering state in fp16 to Hin, and the final state.
//   ssd_chunk_scan     one block (4 warps per head, SSD_HB heads) per (b, chunk, 64-row tile of t, PC columns of p,
//                      head or head pair); warp w of a head owns rows 16w..16w+15 and all PC columns:
//                      y = diag(exp(acum_t))·C·Hᵀ + (CB ∘ exp(acum_t - acum_s)·Δ_s, s <= t)·x, then D, z.
//                      The A tiles (C, CB) are shared by the heads of a block, the B tiles (H, x) are per head.
// Tiles go global -> shared memory by 16-byte cp.async (zero-filled past the ends; a plain-load path where p or
// n is not a multiple of 8), rows padded by 16 bytes so that the 8 rows of an ldmatrix phase hit 8 bank groups,
// and shared memory -> fragments by ldmatrix (.trans for the operands stored k-major: x and B as B operands,
// xᵀ as the A operand of chunk_state). Grids are 1-D (no 65535 limit); the head is the fastest block index, so
// the heads that share one chunk's B, C and CB run together and read them from L2.
//
// Stable segment sums: the decays across chunks are exp of sums over their own segment (from the chunk
// start, to the chunk end, or the whole chunk). Inside one chunk, exp(acum_t - acum_s) is a difference of
// sums that restart at each chunk, so |acum| is bounded by one chunk's decay; it is formed only where s <= t
// (the mask before the exponential: no inf*0). In ssd_chunk_scan the tiles of s strictly below the block's
// t-tile (s < t0 <= t) use the rank-one split exp(acum_t - acum_s) = exp(acum_t - acum_t0)·exp(acum_t0 - acum_s),
// both factors <= 1 (so one underflows only when the product does): a column weight on the CB tile and a row
// scale on the accumulator, instead of one exponential per element.

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
#ifndef SSD_HB
#define SSD_HB 1
#endif
#ifndef SSD_MINB_S
#define SSD_MINB_S 1  // __launch_bounds__ minimum blocks per SM of ssd_chunk_state (caps its registers)
#endif
#ifndef SSD_MINB_Y
#define SSD_MINB_Y 1  // the same for ssd_chunk_scan
#endif
#ifndef SSD_SW
#define SSD_SW 0  // warps per ssd_chunk_state block (4 or 8; 0: 8 where NN > 128, else 4)
#endif
#ifndef SSD_NS
#define SSD_NS 2
#endif

#define PP (((SSD_P) + 15) / 16 * 16)
#define NN (((SSD_N) + 31) / 32 * 32)
#define PC (PP < 64 ? PP : 64)     // columns (chunk_scan) or rows (chunk_state) of p per block
#define NCP ((PP + 63) / 64)       // blocks along p
#define TILE 64
#define NTILE (SSD_Q / TILE)
#define LDT (TILE + 8)  // halves per shared row of a 64-column tile: 144 bytes, 8 rows in 8 different bank groups

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
__device__ __forceinline__ unsigned pack2(half_t lo, half_t hi) { return (unsigned)lo | ((unsigned)hi << 16); }
// two floats rounded to one fp16 pair (lo in the low half)
__device__ __forceinline__ unsigned packf2(float lo, float hi)
{
    unsigned d;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
}
__device__ __forceinline__ unsigned hmul2(unsigned a, unsigned b)
{
    unsigned d;
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}
__device__ __forceinline__ void h8_to_f(const uint4 u, float* f)
{
    const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        f[2 * i] = h2f((half_t)(w[i] & 0xffffu));
        f[2 * i + 1] = h2f((half_t)(w[i] >> 16));
    }
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

// ---------------------------------------------------------------------------------------------------------
// shared-memory addresses, cp.async, ldmatrix and mma (PTX; cvta instead of a header's intrinsic)
__device__ __forceinline__ unsigned smem_u32(const void* p)
{
    unsigned r;
    asm("{\n\t.reg .u64 t;\n\tcvta.to.shared.u64 t, %1;\n\tcvt.u32.u64 %0, t;\n\t}" : "=r"(r) : "l"(p));
    return r;
}
// 16 bytes global -> shared; with valid false nothing is read and the 16 bytes are zero-filled
__device__ __forceinline__ void cp_async16(void* s, const void* g, bool valid)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(s)), "l"(g), "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void ldsm_x4(unsigned (&r)[4], const half_t* p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x4_t(unsigned (&r)[4], const half_t* p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(p)));
}
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
// ldmatrix lane addresses (lane l supplies row l%8 of matrix l/8), as (row, column) offsets inside a tile:
//   a_frag: the A fragment (16 rows x 16 k) of a row-major [m][k] tile: regs a0..a3 in mma order
//   b_pair: B fragments of two 8-column tiles (n0, n0+8) x 16 k of an n-major [n][k] tile: b0, b1 of n0, then n0+8
//   b_pair_t (with .trans): the same from a k-major [k][n] tile;  a_frag_t (with .trans): A from a [k][m] tile
__device__ __forceinline__ int a_row(int lane) { return lane & 15; }
__device__ __forceinline__ int a_col(int lane) { return (lane >> 4) * 8; }
__device__ __forceinline__ int bp_row(int lane) { return (lane & 7) + (lane >> 4) * 8; }
__device__ __forceinline__ int bp_col(int lane) { return ((lane >> 3) & 1) * 8; }
__device__ __forceinline__ int bpt_row(int lane) { return (lane & 7) + ((lane >> 3) & 1) * 8; }
__device__ __forceinline__ int bpt_col(int lane) { return (lane >> 4) * 8; }
__device__ __forceinline__ int at_row(int lane) { return (lane & 7) + (lane >> 4) * 8; }
__device__ __forceinline__ int at_col(int lane) { return ((lane >> 3) & 1) * 8; }

// ROWS x COLS halves into S (leading dimension ld), zero-filled: element (r, k) = g[r*gstride + k] where
// r < nrows and k < ncols. VEC: 16-byte cp.async pieces (g, gstride and ncols multiples of 8 halves); else plain
// loads and stores (visible after the next barrier, like the cp.async ones after their wait). `safe` is any
// valid address of the tensor, handed to the zero-filled pieces (nothing is read from it). NT threads.
template <bool VEC, int ROWS, int COLS, int NT>
__device__ __forceinline__ void copy_tile(half_t* S, int ld, const half_t* g, i64 gstride, int nrows, int ncols,
                                          const half_t* safe)
{
    if (VEC) {
        constexpr int CPR = COLS / 8, PIECES = ROWS * CPR;
#pragma unroll
        for (int it = 0; it < (PIECES + NT - 1) / NT; ++it) {
            const int e = threadIdx.x + it * NT, r = e / CPR, k = (e % CPR) * 8;
            if (PIECES % NT == 0 || e < PIECES) {
                const bool ok = r < nrows && k < ncols;
                cp_async16(S + r * ld + k, ok ? g + r * gstride + k : safe, ok);
            }
        }
    } else {
        for (int e = threadIdx.x; e < ROWS * COLS; e += NT) {
            const int r = e / COLS, k = e % COLS;
            S[r * ld + k] = (r < nrows && k < ncols) ? g[r * gstride + k] : (half_t)0;
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
#define HPB 8  // heads per ssd_dt_cumsum block (one warp each)

extern "C" __global__ void __launch_bounds__(HPB * 32) ssd_dt_cumsum(const float* __restrict__ dt,
    const float* __restrict__ A, const float* __restrict__ dt_bias, int softplus, float* __restrict__ dtq,
    float* __restrict__ acum, float* __restrict__ wend, i64 batch, i64 len, i64 heads, i64 nchunks)
{
    // block (b, chunk, heads 8i..8i+7): the chunk's rows of dt, 8 heads each (32 bytes of a row), go to shared
    // memory first, so that the reads are whole sectors rather than one float per sector
    __shared__ float sd[HPB][SSD_Q + 1];
    __shared__ float so[3][HPB][SSD_Q + 1];  // the three outputs, written back in coalesced rows
    const i64 hblocks = (heads + HPB - 1) / HPB, blk = blockIdx.x;
    const i64 hb = blk % hblocks, bc = blk / hblocks, c = bc % nchunks, b = bc / nchunks;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int e = threadIdx.x; e < SSD_Q * HPB; e += HPB * 32) {
        const int r = e / HPB, k = e % HPB;
        const i64 gt = c * SSD_Q + r, hk = hb * HPB + k;
        sd[k][r] = (gt < len && hk < heads) ? dt[(b * len + gt) * heads + hk] : 0.f;
    }
    __syncthreads();
    const i64 hh = hb * HPB + warp;
    if (hh >= heads) return;  // uniform across the warp; only __syncwarp follows
    const float Ah = A[hh], bias = dt_bias[hh];
    const i64 o = (b * heads + hh) * (nchunks * SSD_Q) + c * SSD_Q;
    float d[E_DT], pre[E_DT], run = 0.f;
#pragma unroll
    for (int i = 0; i < E_DT; ++i) {
        const i64 gt = c * SSD_Q + lane * E_DT + i;
        float v = 0.f;  // the identity step past the end
        if (gt < len) {
            v = sd[warp][lane * E_DT + i] + bias;
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
    // lane j holds steps j*E_DT.. : through shared memory, so that each store of the warp is 128 contiguous bytes
#pragma unroll
    for (int i = 0; i < E_DT; ++i) {
        so[0][warp][lane * E_DT + i] = d[i];
        so[1][warp][lane * E_DT + i] = before + pre[i];
        so[2][warp][lane * E_DT + i] = wv[i];
    }
    __syncwarp();
#pragma unroll
    for (int i = 0; i < E_DT; ++i) {
        const int s = i * 32 + lane;
        dtq[o + s] = so[0][warp][s];
        acum[o + s] = so[1][warp][s];
        wend[o + s] = so[2][warp][s];
    }
}

// ---------------------------------------------------------------------------------------------------------
#define NPAIR (NTILE * (NTILE + 1) / 2)
#define KSTEPS_N ((NN + TILE - 1) / TILE)  // 64-wide pieces of n

extern "C" __global__ void __launch_bounds__(128) ssd_bmm(const half_t* __restrict__ B, const half_t* __restrict__ C,
                                                          half_t* __restrict__ CB, i64 batch, i64 len, i64 groups,
                                                          i64 nchunks)
{
    __shared__ uint4 sm_[2 * 2 * TILE * LDT / 8];  // uint4: 16-byte aligned; a 2-deep ring of (C, B) tiles
    half_t* ring = reinterpret_cast<half_t*>(sm_);
    const i64 blk = blockIdx.x;
    const int pair = (int)(blk % NPAIR);
    const i64 bcg = blk / NPAIR, gg = bcg % groups, bc = bcg / groups, c = bc % nchunks, b = bc / nchunks;
    int ti = 0;
    while ((ti + 1) * (ti + 2) / 2 <= pair) ++ti;
    const int tj = pair - ti * (ti + 1) / 2;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const i64 t0 = c * SSD_Q + ti * TILE, s0 = c * SSD_Q + tj * TILE;
    const int vt = rows_valid(len, t0), vs = rows_valid(len, s0);
    const half_t* Cg = C + ((b * len + t0) * groups + gg) * SSD_N;
    const half_t* Bg = B + ((b * len + s0) * groups + gg) * SSD_N;

    auto issue = [&](int st) {
        half_t* Cs = ring + (st & 1) * 2 * TILE * LDT;
        const int k0 = st * TILE;
        copy_tile<SSD_N % 8 == 0, TILE, TILE, 128>(Cs, LDT, Cg + k0, groups * SSD_N, vt, SSD_N - k0, C);
        copy_tile<SSD_N % 8 == 0, TILE, TILE, 128>(Cs + TILE * LDT, LDT, Bg + k0, groups * SSD_N, vs, SSD_N - k0, B);
    };
    float acc[8][4];
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[j][i] = 0.f;

    issue(0);
    cp_async_commit();
    for (int st = 0; st < KSTEPS_N; ++st) {
        cp_async_wait<0>();
        __syncthreads();  // piece st is in; every warp is done with piece st - 1, whose slot is refilled next
        if (st + 1 < KSTEPS_N) issue(st + 1);
        cp_async_commit();
        const half_t* Cs = ring + (st & 1) * 2 * TILE * LDT;
        const half_t* Bs = Cs + TILE * LDT;
        const int kmax = NN - st * TILE;
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            if (kk * 16 < kmax) {
                unsigned a[4];
                ldsm_x4(a, Cs + (warp * 16 + a_row(lane)) * LDT + kk * 16 + a_col(lane));
#pragma unroll
                for (int np = 0; np < 4; ++np) {
                    unsigned bq[4];
                    ldsm_x4(bq, Bs + (np * 16 + bp_row(lane)) * LDT + kk * 16 + bp_col(lane));
                    mma16816(acc[2 * np], a, bq[0], bq[1]);
                    mma16816(acc[2 * np + 1], a, bq[2], bq[3]);
                }
            }
        }
    }
    const int g = lane >> 2, q = lane & 3;
    half_t* out = CB + (((b * nchunks + c) * groups + gg) * SSD_Q + ti * TILE + warp * 16) * (i64)SSD_Q + tj * TILE;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        *reinterpret_cast<unsigned*>(out + (i64)g * SSD_Q + j * 8 + 2 * q) = packf2(acc[j][0], acc[j][1]);
        *reinterpret_cast<unsigned*>(out + (i64)(g + 8) * SSD_Q + j * 8 + 2 * q) = packf2(acc[j][2], acc[j][3]);
    }
}

// ---------------------------------------------------------------------------------------------------------
#if SSD_SW > 0
#define NW_S SSD_SW                              // warps per ssd_chunk_state block
#else
#define NW_S (NN > 128 ? 8 : 4)
#endif
#define UM_S (PC % 32 == 0 ? 2 : 1)              // a warp unit: UM_S 16-row fragments of p by UN_S 8-column tiles
#define UN_S (NN % 64 == 0 && (PC / (16 * UM_S)) * (NN / 64) >= NW_S ? 8 : 4)  // of n, 8 while every warp gets one
#define NUN_S (NN / (8 * UN_S))
#define NU_S ((PC / (16 * UM_S)) * NUN_S)
#define UPW_S ((NU_S + NW_S - 1) / NW_S)         // units per warp
#define LDN (NN + 8)                             // halves per shared row of B: an odd number of 16-byte pieces
#define STAGE_S (TILE * LDT + TILE * LDN)        // halves per ring slot: x piece [s][p], B piece [s][n]

extern "C" __global__ void __launch_bounds__(NW_S * 32, SSD_MINB_S) ssd_chunk_state(const half_t* __restrict__ x,
                                                                        const half_t* __restrict__ B,
                                                                        const float* __restrict__ wend,
                                                                        float* __restrict__ states, i64 batch,
                                                                        i64 len, i64 heads, i64 groups, i64 nchunks)
{
    extern __shared__ uint4 dsm_s[];  // 2 * STAGE_S halves
    half_t* ring = reinterpret_cast<half_t*>(dsm_s);
    __shared__ unsigned w2[SSD_Q / 2];  // wend in fp16 pairs: the weights of the A operand's columns
    i64 blk = blockIdx.x;
    const i64 hh = blk % heads;
    blk /= heads;
    const int cpc = (int)(blk % NCP);
    blk /= NCP;
    const i64 c = blk % nchunks, b = blk / nchunks;
    const i64 gg = hh / (heads / groups), tok0 = c * SSD_Q;
    const int col0 = cpc * 64;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

    auto issue = [&](int st) {
        half_t* Xs = ring + (st & 1) * STAGE_S;
        const i64 t0 = tok0 + st * TILE;
        const int valid = rows_valid(len, t0);
        copy_tile<SSD_P % 8 == 0, TILE, PC, NW_S * 32>(Xs, LDT, x + ((b * len + t0) * heads + hh) * SSD_P + col0,
                                                       heads * SSD_P, valid, SSD_P - col0, x);
        copy_tile<SSD_N % 8 == 0, TILE, NN, NW_S * 32>(Xs + TILE * LDT, LDN, B + ((b * len + t0) * groups + gg) * SSD_N,
                                                       groups * SSD_N, valid, SSD_N, B);
    };
    issue(0);
    cp_async_commit();
    const float* wv = wend + ((b * heads + hh) * nchunks + c) * SSD_Q;
    for (int i = threadIdx.x; i < SSD_Q / 2; i += NW_S * 32) w2[i] = packf2(wv[2 * i], wv[2 * i + 1]);

    float acc[UPW_S][UM_S][UN_S][4];
#pragma unroll
    for (int u = 0; u < UPW_S; ++u)
#pragma unroll
        for (int um = 0; um < UM_S; ++um)
#pragma unroll
            for (int j = 0; j < UN_S; ++j)
#pragma unroll
                for (int i = 0; i < 4; ++i) acc[u][um][j][i] = 0.f;

    const int q = lane & 3;
    for (int st = 0; st < NTILE; ++st) {
        cp_async_wait<0>();
        __syncthreads();  // piece st (and w2) visible; every warp is done with piece st - 1, whose slot is refilled
        if (st + 1 < NTILE) issue(st + 1);
        cp_async_commit();
        const half_t* Xs = ring + (st & 1) * STAGE_S;
        const half_t* Bs = Xs + TILE * LDT;
#pragma unroll
        for (int u = 0; u < UPW_S; ++u) {
            const int unit = warp + u * NW_S;
            if (unit < NU_S) {
                const int m0 = (unit / NUN_S) * 16 * UM_S, n0 = (unit % NUN_S) * 8 * UN_S;
#pragma unroll
                for (int kk = 0; kk < 4; ++kk) {
                    const unsigned wlo = w2[st * 32 + kk * 8 + q], whi = w2[st * 32 + kk * 8 + q + 4];
                    unsigned a[UM_S][4];
#pragma unroll
                    for (int um = 0; um < UM_S; ++um) {  // A = (x·w)ᵀ: [p][s] from the [s][p] tile
                        ldsm_x4_t(a[um], Xs + (kk * 16 + at_row(lane)) * LDT + m0 + um * 16 + at_col(lane));
                        a[um][0] = hmul2(a[um][0], wlo);
                        a[um][1] = hmul2(a[um][1], wlo);
                        a[um][2] = hmul2(a[um][2], whi);
                        a[um][3] = hmul2(a[um][3], whi);
                    }
#pragma unroll
                    for (int np = 0; np < UN_S / 2; ++np) {
                        unsigned bq[4];
                        ldsm_x4_t(bq, Bs + (kk * 16 + bpt_row(lane)) * LDN + n0 + np * 16 + bpt_col(lane));
#pragma unroll
                        for (int um = 0; um < UM_S; ++um) {
                            mma16816(acc[u][um][2 * np], a[um], bq[0], bq[1]);
                            mma16816(acc[u][um][2 * np + 1], a[um], bq[2], bq[3]);
                        }
                    }
                }
            }
        }
    }
    const int g = lane >> 2;
    float* out = states + ((b * nchunks + c) * heads + hh) * (i64)(PP * NN);
#pragma unroll
    for (int u = 0; u < UPW_S; ++u) {
        const int unit = warp + u * NW_S;
        if (unit < NU_S) {
            const int m0 = col0 + (unit / NUN_S) * 16 * UM_S, n0 = (unit % NUN_S) * 8 * UN_S;
#pragma unroll
            for (int um = 0; um < UM_S; ++um) {
                const int r = m0 + um * 16 + g;
#pragma unroll
                for (int j = 0; j < UN_S; ++j) {
                    const int col = n0 + j * 8 + 2 * q;
                    if (r < PP)
                        *reinterpret_cast<float2*>(out + r * NN + col) = make_float2(acc[u][um][j][0], acc[u][um][j][1]);
                    if (r + 8 < PP)
                        *reinterpret_cast<float2*>(out + (r + 8) * NN + col) =
                            make_float2(acc[u][um][j][2], acc[u][um][j][3]);
                }
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
#define HB SSD_HB
#define NS SSD_NS
#define KP1 ((NN + TILE - 1) / TILE)       // part-1 steps: 64 values of n each
#define NT_Y (PC / 8)                      // 8-column accumulator tiles of a warp's 16 x PC output rows
#define TILE_H (TILE * LDT)                // halves per 64 x 64 tile slot
#define STAGE_H ((1 + HB) * TILE_H)        // a ring slot: the A tile (C or CB) and one B tile (H or x) per head
#define LDO (PC + 4)                       // floats per row of the output staging tile

extern "C" __global__ void __launch_bounds__(128 * HB, SSD_MINB_Y) ssd_chunk_scan(
    const half_t* __restrict__ x, const half_t* __restrict__ C, const half_t* __restrict__ CB,
    const half_t* __restrict__ Hin, const float* __restrict__ dtq, const float* __restrict__ acum,
    const float* __restrict__ D, const out_t* __restrict__ z, out_t* __restrict__ y, int has_D, int has_z,
    i64 batch, i64 len, i64 heads, i64 groups, i64 nchunks)
{
    extern __shared__ uint4 dsm_y[];  // NS * STAGE_H halves; after the products, the fp32 output staging tiles
    half_t* ring = reinterpret_cast<half_t*>(dsm_y);
    __shared__ float a_s[HB][SSD_Q];
    __shared__ float d_s[HB][SSD_Q];
    __shared__ unsigned w2[HB][SSD_Q / 2];  // exp(acum_t0 - acum_s)·Δ_s in fp16 pairs, s < t0

    constexpr int NT = 128 * HB;
    i64 blk = blockIdx.x;
    const i64 hgroups = heads / HB, hg = blk % hgroups;
    blk /= hgroups;
    const int cpc = (int)(blk % NCP);
    blk /= NCP;
    const int m = (int)(blk % NTILE);
    blk /= NTILE;
    const i64 c = blk % nchunks, b = blk / nchunks;
    const i64 hh0 = hg * HB, gg = hh0 / (heads / groups), tok0 = c * SSD_Q;
    const int t0 = m * TILE, col0 = cpc * 64;
    const int valid_t = rows_valid(len, tok0 + t0);
    if (valid_t == 0) return;  // a tile wholly past the end: nothing to write (uniform over the block)
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, e = warp >> 2, w = warp & 3;
    const int g = lane >> 2, q = lane & 3;
    const int nst = KP1 + m + 1;  // steps: KP1 pieces of C·Hᵀ, then the s-tiles 0..m

    auto issue = [&](int st) {
        half_t* As = ring + (st % NS) * STAGE_H;
        if (st < KP1) {  // C rows t0.., n k0..k0+63 (shared by the heads) and H[p][k0..k0+63] per head
            const int k0 = st * TILE;
            copy_tile<SSD_N % 8 == 0, TILE, TILE, NT>(As, LDT, C + ((b * len + tok0 + t0) * groups + gg) * SSD_N + k0,
                                                      groups * SSD_N, valid_t, SSD_N - k0, C);
#pragma unroll
            for (int he = 0; he < HB; ++he)
                copy_tile<true, PC, TILE, NT>(As + (1 + he) * TILE_H, LDT,
                                              Hin + (((b * nchunks + c) * heads + hh0 + he) * PP + col0) * NN + k0, NN,
                                              PP - col0, NN - k0, Hin);
        } else {  // CB rows t0.., s-tile j (shared) and x rows of s-tile j per head
            const int s0 = (st - KP1) * TILE;
            copy_tile<true, TILE, TILE, NT>(As, LDT, CB + (((b * nchunks + c) * groups + gg) * SSD_Q + t0) * SSD_Q + s0,
                                            SSD_Q, TILE, TILE, CB);
            const int vs = rows_valid(len, tok0 + s0);
#pragma unroll
            for (int he = 0; he < HB; ++he)
                copy_tile<SSD_P % 8 == 0, TILE, PC, NT>(As + (1 + he) * TILE_H, LDT,
                                                        x + ((b * len + tok0 + s0) * heads + hh0 + he) * SSD_P + col0,
                                                        heads * SSD_P, vs, SSD_P - col0, x);
        }
    };
#pragma unroll
    for (int st = 0; st < NS - 1; ++st) {
        if (st < nst) issue(st);
        cp_async_commit();
    }

    for (int i = tid; i < HB * SSD_Q; i += NT) {
        const int he = i / SSD_Q, s = i % SSD_Q;
        const i64 o = ((b * heads + hh0 + he) * nchunks + c) * SSD_Q + s;
        a_s[he][s] = acum[o];
        d_s[he][s] = dtq[o];
    }
    __syncthreads();
    if (t0 > 0) {
        for (int i = tid; i < HB * (t0 / 2); i += NT) {
            const int he = i / (t0 / 2), s = 2 * (i % (t0 / 2));
            const float at0 = a_s[he][t0];
            w2[he][s / 2] = packf2(__expf(fminf(at0 - a_s[he][s], 0.f)) * d_s[he][s],
                                   __expf(fminf(at0 - a_s[he][s + 1], 0.f)) * d_s[he][s + 1]);
        }
    }
    const float* ae = a_s[e];
    const float* de = d_s[e];
    const int r0 = t0 + 16 * w + g;  // this thread's accumulator rows r0 and r0 + 8 (chunk coordinates)
    const float ea0 = __expf(fminf(ae[t0], 0.f));  // exp(acum_t0): from the chunk's start to t0
    const float R0 = __expf(fminf(ae[r0] - ae[t0], 0.f)), R1 = __expf(fminf(ae[r0 + 8] - ae[t0], 0.f));

    float acc[NT_Y][4];
#pragma unroll
    for (int j = 0; j < NT_Y; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[j][i] = 0.f;

    for (int st = 0; st < nst; ++st) {
        cp_async_wait<NS - 2>();
        __syncthreads();  // step st is in (and w2); every warp is done with step st - 1, whose slot is refilled next
        if (st + NS - 1 < nst) issue(st + NS - 1);
        cp_async_commit();
        const half_t* As = ring + (st % NS) * STAGE_H + (16 * w) * LDT;
        const half_t* Bt = ring + (st % NS) * STAGE_H + (1 + e) * TILE_H;
        if (st < KP1) {
            // part 1, the off-diagonal blocks: acc = C·Hᵀ (times exp(acum_t) below)
            const int kmax = NN - st * TILE;
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                if (kk * 16 < kmax) {
                    unsigned a[4];
                    ldsm_x4(a, As + a_row(lane) * LDT + kk * 16 + a_col(lane));
#pragma unroll
                    for (int np = 0; np < NT_Y / 2; ++np) {
                        unsigned bq[4];
                        ldsm_x4(bq, Bt + (np * 16 + bp_row(lane)) * LDT + kk * 16 + bp_col(lane));
                        mma16816(acc[2 * np], a, bq[0], bq[1]);
                        mma16816(acc[2 * np + 1], a, bq[2], bq[3]);
                    }
                }
            }
        } else {
            // part 2, the diagonal block of M: acc += (CB ∘ decay·Δ)·x over s-tile j
            const int j = st - KP1;
            if (j == 0) {  // C·Hᵀ·exp(acum_t0); the rows' own exp(acum_t - acum_t0) comes with the other tiles
#pragma unroll
                for (int jj = 0; jj < NT_Y; ++jj)
#pragma unroll
                    for (int i = 0; i < 4; ++i) acc[jj][i] *= ea0;
            }
            if (j == m) {  // every term so far carries exp(acum_t - acum_t0): one row scale
#pragma unroll
                for (int jj = 0; jj < NT_Y; ++jj) {
                    acc[jj][0] *= R0;
                    acc[jj][1] *= R0;
                    acc[jj][2] *= R1;
                    acc[jj][3] *= R1;
                }
            }
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                if (j < m || kk <= w) {  // on the diagonal tile, the 16-column pieces right of the warp's rows are 0
                    unsigned a[4];
                    ldsm_x4(a, As + a_row(lane) * LDT + kk * 16 + a_col(lane));
                    if (j < m) {  // s < t0: column weights exp(acum_t0 - acum_s)·Δ_s
                        const unsigned wlo = w2[e][j * 32 + kk * 8 + q], whi = w2[e][j * 32 + kk * 8 + q + 4];
                        a[0] = hmul2(a[0], wlo);
                        a[1] = hmul2(a[1], wlo);
                        a[2] = hmul2(a[2], whi);
                        a[3] = hmul2(a[3], whi);
                    } else {  // the diagonal tile: exp(acum_t - acum_s)·Δ_s where s <= t, else 0 (mask first)
                        const int sb = t0 + kk * 16 + 2 * q;
                        float f[2][4];
#pragma unroll
                        for (int rr = 0; rr < 2; ++rr) {
                            const int t = r0 + 8 * rr;
                            const float at = ae[t];
#pragma unroll
                            for (int ci = 0; ci < 4; ++ci) {
                                const int s = sb + (ci & 1) + (ci >> 1) * 8;
                                f[rr][ci] = s <= t ? __expf(fminf(at - ae[s], 0.f)) * de[s] : 0.f;
                            }
                        }
                        a[0] = hmul2(a[0], packf2(f[0][0], f[0][1]));
                        a[1] = hmul2(a[1], packf2(f[1][0], f[1][1]));
                        a[2] = hmul2(a[2], packf2(f[0][2], f[0][3]));
                        a[3] = hmul2(a[3], packf2(f[1][2], f[1][3]));
                    }
#pragma unroll
                    for (int np = 0; np < NT_Y / 2; ++np) {
                        unsigned bq[4];
                        ldsm_x4_t(bq, Bt + (kk * 16 + bpt_row(lane)) * LDT + np * 16 + bpt_col(lane));
                        mma16816(acc[2 * np], a, bq[0], bq[1]);
                        mma16816(acc[2 * np + 1], a, bq[2], bq[3]);
                    }
                }
            }
        }
    }

    // epilogue: through shared memory to coalesced rows of y, with D·x and the gate silu(z)
    cp_async_wait<0>();
    __syncthreads();
    float* Os = reinterpret_cast<float*>(dsm_y);  // [HB][64][LDO]
    {
        float* O = Os + (e * TILE + 16 * w + g) * LDO + 2 * q;
#pragma unroll
        for (int jj = 0; jj < NT_Y; ++jj) {
            *reinterpret_cast<float2*>(O + jj * 8) = make_float2(acc[jj][0], acc[jj][1]);
            *reinterpret_cast<float2*>(O + 8 * LDO + jj * 8) = make_float2(acc[jj][2], acc[jj][3]);
        }
    }
    __syncthreads();
    const int pvalid = SSD_P - col0 < PC ? SSD_P - col0 : PC;
    if (SSD_P % 8 == 0) {
        constexpr int CPR = PC / 8;  // 8-column pieces per row
        for (int i = tid; i < HB * TILE * CPR; i += NT) {
            const int he = i / (TILE * CPR), r = (i / CPR) % TILE, k = (i % CPR) * 8;
            if (r >= valid_t || k >= pvalid) continue;
            const i64 hh = hh0 + he;
            const i64 off = ((b * len + tok0 + t0 + r) * heads + hh) * SSD_P + col0 + k;
            const float* O = Os + (he * TILE + r) * LDO + k;
            float v[8];
            const float4 o0 = *reinterpret_cast<const float4*>(O), o1 = *reinterpret_cast<const float4*>(O + 4);
            v[0] = o0.x; v[1] = o0.y; v[2] = o0.z; v[3] = o0.w; v[4] = o1.x; v[5] = o1.y; v[6] = o1.z; v[7] = o1.w;
            if (has_D) {
                float xv[8];
                h8_to_f(*reinterpret_cast<const uint4*>(x + off), xv);
                const float4 d0 = *reinterpret_cast<const float4*>(D + hh * SSD_P + col0 + k);
                const float4 d1 = *reinterpret_cast<const float4*>(D + hh * SSD_P + col0 + k + 4);
                v[0] += d0.x * xv[0]; v[1] += d0.y * xv[1]; v[2] += d0.z * xv[2]; v[3] += d0.w * xv[3];
                v[4] += d1.x * xv[4]; v[5] += d1.y * xv[5]; v[6] += d1.z * xv[6]; v[7] += d1.w * xv[7];
            }
            if (has_z) {
                float zv[8];
#if SSD_OUT_HALF
                h8_to_f(*reinterpret_cast<const uint4*>(z + off), zv);
#else
                const float4 z0 = *reinterpret_cast<const float4*>(z + off), z1 = *reinterpret_cast<const float4*>(z + off + 4);
                zv[0] = z0.x; zv[1] = z0.y; zv[2] = z0.z; zv[3] = z0.w; zv[4] = z1.x; zv[5] = z1.y; zv[6] = z1.z; zv[7] = z1.w;
#endif
#pragma unroll
                for (int u = 0; u < 8; ++u) v[u] *= zv[u] / (1.f + __expf(-zv[u]));  // silu; exp(-z) = inf gives -0
            }
#if SSD_OUT_HALF
            *reinterpret_cast<uint4*>(y + off) =
                make_uint4(packf2(v[0], v[1]), packf2(v[2], v[3]), packf2(v[4], v[5]), packf2(v[6], v[7]));
#else
            *reinterpret_cast<float4*>(y + off) = make_float4(v[0], v[1], v[2], v[3]);
            *reinterpret_cast<float4*>(y + off + 4) = make_float4(v[4], v[5], v[6], v[7]);
#endif
        }
    } else {
        for (int i = tid; i < HB * TILE * PC; i += NT) {
            const int he = i / (TILE * PC), r = (i / PC) % TILE, k = i % PC;
            if (r >= valid_t || k >= pvalid) continue;
            const i64 hh = hh0 + he;
            const i64 off = ((b * len + tok0 + t0 + r) * heads + hh) * SSD_P + col0 + k;
            float v = Os[(he * TILE + r) * LDO + k];
            if (has_D) v += D[hh * SSD_P + col0 + k] * h2f(x[off]);
            if (has_z) {
                const float zz = out_to_f(z[off]);
                v *= zz / (1.f + __expf(-zz));
            }
            y[off] = f_to_out(v);
        }
    }
}
