// flash_fwd.cu: FlashAttention-2-style forward pass on tensor cores, fp16 inputs, fp32 accumulation.
//
// Layout. q (b, s_q, h, D), out (b, s_q, h, D) fp16; lse (b, h, s_q) fp32 (natural log of the scaled scores);
// k and v (b, s_cache, h_k, D) fp16 with batch stride kv_batch_stride elements; row b has kv_len[b] keys.
// Query head hh reads kv head hh / (h / h_k). Causal: query i sees keys j <= i + kv_len[b] - s_q.
//
// Grid: x = block of BM = 16 * FWD_WARPS queries (heaviest causal blocks first), y = query head, z = batch row.
// Block: FWD_WARPS warps (8 on the H100, from the sweep in benchmarks/cases/attention.py); warp w owns query
// rows [16w, 16w + 16) of the block, the whole head dimension, and the
// online-softmax state of those rows (each thread: rows g and g + 8 of its warp's 16, g = lane / 4).
// Keys are visited in tiles of BN = FWD_BN: K and V tiles are copied to dynamic shared memory with cp.async
// (K of the next tile is in flight while P V of this one is computed, V of this tile while Q K^T is computed;
// FWD_DBUF = 1 double-buffers both instead), read into
// mma fragments with ldmatrix (V with .trans), and multiplied by mma.sync.m16n8k16 (row.col, f16 -> f32):
//   S = Q K^T (16 x BN per warp, fp32 registers) -> mask -> m' = max(m, rowmax S), alpha = 2^(m - m'),
//   P = 2^(S - m') (scores in log2 units: q.k is multiplied by scale * log2 e), l = alpha l + rowsum P,
//   O = alpha O + P V with P rounded to fp16 as the A operand (the accumulator layout of two adjacent 16x8
//   C tiles is the A layout of one 16x16 tile, so P never leaves registers).
// At the end O / l is written as fp16 and lse = (m + log2 l) ln 2. A row that sees no key writes 0 and -inf.
// Shared memory rows of D halves are stored with the 16-byte chunk index XOR (row mod 8), so the 8 row
// addresses of one ldmatrix phase fall in 8 different bank groups. Offsets into global memory are 64-bit.

#include <cuda_fp16.h>

#define NEG_INF (-__int_as_float(0x7f800000))

#ifndef FWD_WARPS
#define FWD_WARPS 4  // warps per block; each owns 16 query rows, so BM = 16 * FWD_WARPS
#endif
#ifndef FWD_BN
#define FWD_BN 64  // keys per tile
#endif
#ifndef FWD_MINB
#define FWD_MINB 1  // __launch_bounds__ minimum blocks per multiprocessor (caps registers)
#endif
#ifndef FWD_QREG
#define FWD_QREG 1  // 1: Q fragments stay in registers; 0: re-read from shared memory every tile
#endif
#ifndef FWD_DBUF
#define FWD_DBUF 0  // 1: two K and two V buffers; tile t+1 loads during all of tile t, one barrier per tile
#endif
#ifndef FWD_FASTEXP
#define FWD_FASTEXP 0  // 1: ex2.approx.ftz for 2^x (the score is already <= 0 after the max is subtracted)
#endif

namespace {

constexpr int NW = FWD_WARPS, BM = 16 * NW, BN = FWD_BN;

__device__ __forceinline__ float ex2(float x)
{
#if FWD_FASTEXP
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
#else
    return exp2f(x);
#endif
}

__device__ __forceinline__ unsigned smem_addr(const void* p)
{
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
                 "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldsm_x4(unsigned (&r)[4], const void* p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x4_trans(unsigned (&r)[4], const void* p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(p)));
}
__device__ __forceinline__ void mma16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ unsigned pack_half2(float lo, float hi)
{
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&h);
}

// offset of element (row, col) of a [rows][D] tile: 16-byte chunks swizzled by row mod 8
template <int D> __device__ __forceinline__ int sw(int row, int col)
{
    return row * D + ((((col >> 3) ^ (row & 7))) << 3) + (col & 7);
}

// copy rows [0, ROWS) of a tile whose row r lives at base + r * row_stride; rows r >= n_valid are zero-filled
template <int D, int ROWS>
__device__ __forceinline__ void load_tile(__half* s, const __half* base, long long row_stride, int n_valid)
{
    constexpr int CH = D / 8;  // 16-byte chunks per row
    static_assert(ROWS * CH % (NW * 32) == 0, "tile chunks must divide among the threads");
#pragma unroll
    for (int it = 0; it < ROWS * CH / (NW * 32); ++it) {
        const int idx = threadIdx.x + it * NW * 32, r = idx / CH, ch = idx % CH;
        const bool ok = r < n_valid;
        const __half* src = base + (ok ? r * row_stride : 0) + ch * 8;
        cp_async16(s + sw<D>(r, ch * 8), src, ok);
    }
}

}  // namespace

template <int D>
__device__ __forceinline__ void flash_fwd(const __half* __restrict__ q, const __half* __restrict__ k,
                                          const __half* __restrict__ v, __half* __restrict__ out,
                                          float* __restrict__ lse, const int* __restrict__ kv_len, int s_q,
                                          int h, int h_k, long long kv_batch_stride, float scale_log2,
                                          int causal)
{
    extern __shared__ __align__(128) __half smem[];  // (BM + 2 BN) * D halves
    __half* sQ = smem;
    __half* sK = sQ + BM * D;
    __half* sV = sK + BN * D;
#if FWD_DBUF
    __half* sK1 = sV + BN * D;  // the second buffers, for odd tiles
    __half* sV1 = sK1 + BN * D;
#endif

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int mb = gridDim.x - 1 - blockIdx.x, hh = blockIdx.y, bi = blockIdx.z;
    const int kvh = hh / (h / h_k);
    const int m0 = mb * BM;
    const int L = kv_len[bi];
    const int off = L - s_q;  // bottom-right: query i sees keys j <= i + off
    int n_end = causal ? min(L, m0 + BM + off) : L;
    if (n_end < 0) n_end = 0;
    const int ntiles = (n_end + BN - 1) / BN;

    const long long q_row_stride = (long long)h * D;
    const __half* qb = q + ((long long)bi * s_q + m0) * q_row_stride + (long long)hh * D;
    const long long kv_row_stride = (long long)h_k * D;
    const __half* kb = k + (long long)bi * kv_batch_stride + (long long)kvh * D;
    const __half* vb = v + (long long)bi * kv_batch_stride + (long long)kvh * D;

    load_tile<D, BM>(sQ, qb, q_row_stride, s_q - m0);
    if (ntiles > 0) {
        load_tile<D, BN>(sK, kb, kv_row_stride, L);
#if FWD_DBUF
        load_tile<D, BN>(sV, vb, kv_row_stride, L);
#endif
    }
    cp_async_commit();

    const int g = lane >> 2, t = lane & 3;
#if FWD_QREG
    unsigned qf[D / 16][4];
#endif
    float o[D / 8][4];
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[dt][e] = 0.f;
    float m_r[2] = {NEG_INF, NEG_INF}, l_r[2] = {0.f, 0.f};
    const int row_a = m0 + warp * 16 + g;  // this thread's two query rows: row_a and row_a + 8
    auto load_q = [&](unsigned (&a)[4], int kk) {  // A fragment of Q, rows of this warp, columns [16kk, 16kk+16)
        ldsm_x4(a, sQ + sw<D>(warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, kk * 16 + (lane >> 4) * 8));
    };

    for (int jt = 0; jt < ntiles; ++jt) {
        const int n0 = jt * BN;
#if FWD_DBUF
        __half* sKc = (jt & 1) ? sK1 : sK;
        __half* sVc = (jt & 1) ? sV1 : sV;
        cp_async_wait<0>();  // K_jt and V_jt have landed
        __syncthreads();     // ... for every thread, and every warp is done with tile jt - 1's buffers
        if (jt + 1 < ntiles) {
            load_tile<D, BN>((jt & 1) ? sK : sK1, kb + (n0 + BN) * kv_row_stride, kv_row_stride, L - n0 - BN);
            load_tile<D, BN>((jt & 1) ? sV : sV1, vb + (n0 + BN) * kv_row_stride, kv_row_stride, L - n0 - BN);
        }
        cp_async_commit();
#else
        __half* sKc = sK;
        __half* sVc = sV;
        load_tile<D, BN>(sV, vb + n0 * kv_row_stride, kv_row_stride, L - n0);
        cp_async_commit();
        cp_async_wait<1>();  // Q and K_jt have landed (V_jt may be in flight)
        __syncthreads();
#endif
#if FWD_QREG
        if (jt == 0) {
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) load_q(qf[kk], kk);
        }
#endif
        // S = Q K^T
        float s[BN / 8][4];
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[nt][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
#if !FWD_QREG
            unsigned qa[4];
            load_q(qa, kk);
#else
            const unsigned (&qa)[4] = qf[kk];
#endif
#pragma unroll
            for (int np = 0; np < BN / 16; ++np) {
                unsigned bfr[4];
                ldsm_x4(bfr, sKc + sw<D>(np * 16 + (lane & 7) + (lane >> 4) * 8, kk * 16 + ((lane >> 3) & 1) * 8));
                mma16816(s[2 * np], qa, bfr[0], bfr[1]);
                mma16816(s[2 * np + 1], qa, bfr[2], bfr[3]);
            }
        }
#if !FWD_DBUF
        __syncthreads();  // every warp is done with sK
        if (jt + 1 < ntiles) load_tile<D, BN>(sK, kb + (n0 + BN) * kv_row_stride, kv_row_stride, L - n0 - BN);
        cp_async_commit();
#endif

        // mask (only the tiles that need it), scale to log2 units
        const bool need_mask = (n0 + BN > L) || (causal && n0 + BN - 1 > m0 + off);
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float x = s[nt][e] * scale_log2;
                if (need_mask) {
                    const int j = n0 + nt * 8 + 2 * t + (e & 1), i = row_a + (e >> 1) * 8;
                    if (j >= L || (causal && j > i + off)) x = NEG_INF;
                }
                s[nt][e] = x;
            }
        // online softmax on the two rows
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            float mx = NEG_INF;
#pragma unroll
            for (int nt = 0; nt < BN / 8; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * rr], s[nt][2 * rr + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float m_new = fmaxf(m_r[rr], mx);
            const float m_use = m_new == NEG_INF ? 0.f : m_new;  // no visible key yet: keep p = 0, no NaN
            const float alpha = ex2(m_r[rr] - m_use);
            float sum = 0.f;
#pragma unroll
            for (int nt = 0; nt < BN / 8; ++nt) {
                const float p0 = ex2(s[nt][2 * rr] - m_use), p1 = ex2(s[nt][2 * rr + 1] - m_use);
                s[nt][2 * rr] = p0;
                s[nt][2 * rr + 1] = p1;
                sum += p0 + p1;
            }
            l_r[rr] = l_r[rr] * alpha + sum;  // a partial sum over this thread's columns; reduced at the end
            m_r[rr] = m_new;
#pragma unroll
            for (int dt = 0; dt < D / 8; ++dt) { o[dt][2 * rr] *= alpha; o[dt][2 * rr + 1] *= alpha; }
        }
#if !FWD_DBUF
        cp_async_wait<1>();  // V_jt has landed (K_jt+1 may be in flight)
        __syncthreads();
#endif
        // O += P V
#pragma unroll
        for (int ks = 0; ks < BN / 16; ++ks) {
            const unsigned pa[4] = {pack_half2(s[2 * ks][0], s[2 * ks][1]), pack_half2(s[2 * ks][2], s[2 * ks][3]),
                                    pack_half2(s[2 * ks + 1][0], s[2 * ks + 1][1]),
                                    pack_half2(s[2 * ks + 1][2], s[2 * ks + 1][3])};
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                unsigned bfr[4];
                ldsm_x4_trans(bfr, sVc + sw<D>(ks * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, dp * 16 + (lane >> 4) * 8));
                mma16816(o[2 * dp], pa, bfr[0], bfr[1]);
                mma16816(o[2 * dp + 1], pa, bfr[2], bfr[3]);
            }
        }
#if !FWD_DBUF
        __syncthreads();  // every warp is done with sV before the next tile overwrites it
#endif
    }
    cp_async_wait<0>();

#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        float l = l_r[rr];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        const int i = row_a + rr * 8;
        if (i >= s_q) continue;
        const float inv = l > 0.f ? 1.f / l : 0.f;
        __half* op = out + ((long long)bi * s_q + i) * q_row_stride + (long long)hh * D;
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt)
            *reinterpret_cast<__half2*>(op + dt * 8 + 2 * t) =
                __floats2half2_rn(o[dt][2 * rr] * inv, o[dt][2 * rr + 1] * inv);
        if (t == 0)
            lse[((long long)bi * h + hh) * s_q + i] = l > 0.f ? (m_r[rr] + log2f(l)) * 0.6931471805599453f : NEG_INF;
    }
}

extern "C" {
__global__ void __launch_bounds__(NW * 32, FWD_MINB) flash_fwd_f16_d64(const __half* q, const __half* k, const __half* v,
                                                         __half* out, float* lse, const int* kv_len, int s_q,
                                                         int h, int h_k, long long kv_batch_stride,
                                                         float scale_log2, int causal)
{ flash_fwd<64>(q, k, v, out, lse, kv_len, s_q, h, h_k, kv_batch_stride, scale_log2, causal); }

__global__ void __launch_bounds__(NW * 32, FWD_MINB) flash_fwd_f16_d128(const __half* q, const __half* k, const __half* v,
                                                          __half* out, float* lse, const int* kv_len, int s_q,
                                                          int h, int h_k, long long kv_batch_stride,
                                                          float scale_log2, int causal)
{ flash_fwd<128>(q, k, v, out, lse, kv_len, s_q, h, h_k, kv_batch_stride, scale_log2, causal); }
}
