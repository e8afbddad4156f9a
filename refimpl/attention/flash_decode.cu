// flash_decode.cu: split-K attention on CUDA cores (flash-decoding), for a KV cache and for any s_q.
//
// out[b, i, hh] = softmax_j(scale * q[b, i, hh] . k[b, j, kv]) v[b, j, kv] over the keys j < kv_len[b] that
// row i may see (causal: j <= i + kv_len[b] - s_q, bottom-right), with kv = hh / g, g = h / h_k.
//
// Layout. q (b, s_q, h, D), k and v (b, s_cache, h_k, D) with batch stride kv_batch_stride elements (a cache
// may be longer than what is filled). A "row" is one (query position i, query head of one kv head's group):
// rows r = i * g + (hh % g), R = s_q * g per (b, kv head). Grid: x = split (a contiguous piece of the keys,
// `chunk` keys long), y = kv head * row blocks of ROWS rows, z = batch row. Block: 128 threads. A key (D
// elements, 16 bytes per thread) is read by LPK = D / VEC consecutive lanes (VEC = 16 / sizeof(T)); the
// block reads KPI = 128 / LPK keys per step and TK = KPI * DEC_UNROLL keys per tile, each key and value once
// for all ROWS rows of the block (a GQA group shares the read).
// Pipeline: every thread copies its own 16-byte pieces of K and V with cp.async into a ring of DEC_STAGES
// tiles in dynamic shared memory, DEC_STAGES - 1 tiles ahead of the one it computes on; since a thread only
// reads what it copied itself, cp.async.wait_group alone orders the ring (no barrier). Per tile:
//   1. partial dot products over the thread's D/LPK slice, reduced across the LPK lanes by a butterfly that
//      scatters rows to lanes (ROWS - 1 + log2(LPK / ROWS) shuffles instead of ROWS * log2(LPK));
//      scores -> shared memory (double-buffered, so the next tile's scores need no third barrier).
//   2. one warp per row: tile max, rescale factor alpha = 2^(m - m'), p = 2^(s - m') in place, running sum.
//   3. acc[row][slice] = alpha * acc + sum_j p_j v_j over the thread's keys (registers).
// At the end the partial accumulators of the KPI key groups are summed (shuffles, then shared memory) and
// the block writes its normalized piece o_part = acc / l and lse_part = ln(sum exp(scores)), then counts
// itself in counters[b, y] (atomicAdd after __threadfence); the last block of the group to finish merges the
// pieces by log-sum-exp, out = sum_s exp(lse_s - lse) o_s, lse = log sum_s exp(lse_s), summing over s in a
// fixed order (deterministic), and sets the counter back to 0 (one launch per call; no combine kernel).
// Scores are kept in log2 units (q pre-multiplied by scale * log2(e)) so that exp is one exp2f.
// Offsets into q, k, v and the outputs are 64-bit (long long): a cache passes 2^31 elements at b 8, 128K.

#include <cuda_fp16.h>

#define NEG_INF (-__int_as_float(0x7f800000))

template <typename T> struct Vec;
template <> struct Vec<__half> {
    static constexpr int N = 8;
    __device__ static void to_float(const uint4& u, float* f) {
        const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
        for (int e = 0; e < 4; ++e) { float2 t = __half22float2(h[e]); f[2 * e] = t.x; f[2 * e + 1] = t.y; }
    }
    __device__ static float load1(const __half* p) { return __half2float(*p); }
    __device__ static void store1(__half* p, float x) { *p = __float2half_rn(x); }
};
template <> struct Vec<float> {
    static constexpr int N = 4;
    __device__ static void to_float(const uint4& u, float* f) {
        const float* g = reinterpret_cast<const float*>(&u);
#pragma unroll
        for (int e = 0; e < 4; ++e) f[e] = g[e];
    }
    __device__ static float load1(const float* p) { return *p; }
    __device__ static void store1(float* p, float x) { *p = x; }
};

// Sum x[0..ROWS) over the LPK lanes of a key group; afterwards this lane holds the sums of rows
// row0 .. row0 + n - 1 in x[0..n), where n = max(1, ROWS / LPK) and row0 is returned.
template <int ROWS, int LPK>
__device__ __forceinline__ int reduce_scatter(float (&x)[ROWS], int c)
{
    int row0 = 0;
    int n = ROWS;
#pragma unroll
    for (int off = LPK / 2; off >= 1; off >>= 1) {
        if (n > 1) {
            const int half = n / 2;
            const bool upper = (c & off) != 0;
#pragma unroll
            for (int r = 0; r < ROWS / 2; ++r) {
                if (r < half) {
                    const float send = upper ? x[r] : x[r + half];
                    const float keep = upper ? x[r + half] : x[r];
                    x[r] = keep + __shfl_xor_sync(0xffffffffu, send, off);
                }
            }
            row0 += upper ? half : 0;
            n = half;
        } else {
            x[0] += __shfl_xor_sync(0xffffffffu, x[0], off);
        }
    }
    return row0;
}

#ifndef DEC_UNROLL
#define DEC_UNROLL 4  // keys per thread per tile
#endif
#ifndef DEC_STAGES
#define DEC_STAGES 4  // tiles in the shared-memory ring (DEC_STAGES - 1 in flight while one is consumed)
#endif

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid)
{
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0)
                 : "memory");
}
// "memory" clobbers: the compiler must not move shared-memory reads of the ring across a wait
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// bytes of dynamic shared memory: the ring of K and V tiles, each thread's 16-byte pieces
constexpr int ring_bytes() { return DEC_STAGES * 2 * DEC_UNROLL * 128 * 16; }

template <typename T, int D, int ROWS>
__device__ __forceinline__ void decode_split(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, float* __restrict__ work,
    T* __restrict__ out, float* __restrict__ lse, int* __restrict__ counters, const int* __restrict__ kv_len, int b,
    int s_q, int h, int h_k, long long kv_batch_stride, int chunk, float scale_log2, int causal)
{
    // the pieces: o_part (splits, b * s_q * h, D), then lse_part (splits, b * s_q * h), in one workspace
    float* __restrict__ o_part = work;
    float* __restrict__ lse_part = work + (long long)gridDim.x * b * s_q * h * D;
    constexpr int VEC = Vec<T>::N, LPK = D / VEC, KPI = 128 / LPK, UNROLL = DEC_UNROLL, TK = KPI * UNROLL;
    constexpr int NW = 4, NS = DEC_STAGES;
    static_assert(LPK >= 1 && LPK <= 32 && (LPK & (LPK - 1)) == 0, "D / VEC must be a power of 2 <= 32");
    // ring[stage][K or V][u][thread]: every thread copies, and later reads, only its own pieces, so the
    // ring needs no barrier: cp.async.wait_group orders a thread's copies before its own reads.
    extern __shared__ uint4 ring[];
    __shared__ float s_p[2][ROWS][TK];  // double-buffered: tile t+1's scores go in while t's P is read
    __shared__ float s_alpha[ROWS];
    __shared__ float s_red[NW][ROWS][D];
    __shared__ int s_limit[ROWS];
    __shared__ float s_m[ROWS], s_l[ROWS];
    __shared__ int s_last;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int c = tid % LPK, kg = tid / LPK;  // d-slice [c*VEC, c*VEC+VEC), key group kg
    const int g = h / h_k, R = s_q * g;
    const int nrb = (R + ROWS - 1) / ROWS;
    const int split = blockIdx.x, kvh = blockIdx.y / nrb, r_base = (blockIdx.y % nrb) * ROWS, bi = blockIdx.z;
    const int L = kv_len[bi];

    // this block's rows: query slice in registers (pre-scaled), visible key count
    float qr[ROWS][VEC];
    int kmax = 0;
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const int row = r_base + r;
        int limit = 0;
        if (row < R) {
            const int i = row / g, hh = kvh * g + row % g;
            const T* qp = q + (((long long)bi * s_q + i) * h + hh) * D + c * VEC;
            const uint4 u = *reinterpret_cast<const uint4*>(qp);
            Vec<T>::to_float(u, qr[r]);
            const int lim = causal ? i + 1 + L - s_q : L;
            limit = lim < 0 ? 0 : (lim > L ? L : lim);
        } else {
#pragma unroll
            for (int e = 0; e < VEC; ++e) qr[r][e] = 0.f;
        }
#pragma unroll
        for (int e = 0; e < VEC; ++e) qr[r][e] *= scale_log2;
        kmax = max(kmax, limit);
        if (tid == 0) s_limit[r] = limit;
    }
    const int j_begin = split * chunk;
    const int j_end = min(j_begin + chunk, kmax);
    const int ntiles = j_end > j_begin ? (j_end - j_begin + TK - 1) / TK : 0;

    const T* kb = k + (long long)bi * kv_batch_stride + (long long)kvh * D + c * VEC;
    const T* vb = v + (long long)bi * kv_batch_stride + (long long)kvh * D + c * VEC;
    const long long row_stride = (long long)h_k * D;
    auto issue = [&](int tile) {
        if (tile < ntiles) {
            uint4* st = ring + (tile % NS) * 2 * UNROLL * 128;
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const int j = j_begin + tile * TK + kg + KPI * u;
                const bool ok = j < j_end;
                const long long o = ok ? j * row_stride : 0;
                cp_async16(st + u * 128 + tid, kb + o, ok);
                cp_async16(st + (UNROLL + u) * 128 + tid, vb + o, ok);
            }
        }
        cp_async_commit();  // an empty group past the end keeps the wait count uniform
    };
#pragma unroll
    for (int t = 0; t < NS - 1; ++t) issue(t);

    float acc[ROWS][VEC];
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[r][e] = 0.f;
    // the running max and sum of row `warp + NW * t` live in the warp that owns it
    float m_rows[(ROWS + NW - 1) / NW], l_rows[(ROWS + NW - 1) / NW];
#pragma unroll
    for (int t = 0; t < (ROWS + NW - 1) / NW; ++t) { m_rows[t] = NEG_INF; l_rows[t] = 0.f; }
    __syncthreads();  // s_limit

    for (int it = 0; it < ntiles; ++it) {
        issue(it + NS - 1);
        cp_async_wait<NS - 1>();  // this thread's pieces of tile `it` have landed
        const uint4* st = ring + (it % NS) * 2 * UNROLL * 128;
        float (*sp)[TK] = s_p[it & 1];
        const int t0 = j_begin + it * TK;
        // 1. scores
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int j = t0 + kg + KPI * u;
            float kf[VEC];
            Vec<T>::to_float(st[u * 128 + tid], kf);
            float x[ROWS];
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
                float s = 0.f;
#pragma unroll
                for (int e = 0; e < VEC; ++e) s = fmaf(qr[r][e], kf[e], s);
                x[r] = s;
            }
            const int row0 = reduce_scatter<ROWS, LPK>(x, c);
            constexpr int NOUT = ROWS / LPK > 1 ? ROWS / LPK : 1;
#pragma unroll
            for (int r = 0; r < NOUT; ++r) {
                const int row = row0 + r;
                // every lane of the group holding this row writes the same value: no race on its result
                sp[row][kg + KPI * u] = (j < j_end && j < s_limit[row]) ? x[r] : NEG_INF;
            }
        }
        __syncthreads();
        // 2. online softmax, one warp per row
#pragma unroll
        for (int t = 0; t < (ROWS + NW - 1) / NW; ++t) {
            const int row = warp + NW * t;
            if (row < ROWS) {
                float mx = NEG_INF;
#pragma unroll
                for (int jj = lane; jj < TK; jj += 32) mx = fmaxf(mx, sp[row][jj]);
#pragma unroll
                for (int off = 16; off >= 1; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
                const float m_new = fmaxf(m_rows[t], mx);
                const float m_use = m_new == NEG_INF ? 0.f : m_new;  // no key yet: avoid -inf - -inf
                const float alpha = exp2f(m_rows[t] - m_use);         // 0 when m_rows was -inf
                float sum = 0.f;
#pragma unroll
                for (int jj = lane; jj < TK; jj += 32) {
                    const float p = exp2f(sp[row][jj] - m_use);
                    sp[row][jj] = p;
                    sum += p;
                }
#pragma unroll
                for (int off = 16; off >= 1; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
                l_rows[t] = l_rows[t] * alpha + sum;
                m_rows[t] = m_new;
                if (lane == 0) s_alpha[row] = alpha;
            }
        }
        __syncthreads();
        // 3. acc = alpha * acc + P V. The next tile writes the other s_p buffer, and s_alpha only after
        // the barrier that follows its scores, which every warp reaches after finishing this pass.
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            const float a = s_alpha[r];
#pragma unroll
            for (int e = 0; e < VEC; ++e) acc[r][e] *= a;
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            float vf[VEC];
            Vec<T>::to_float(st[(UNROLL + u) * 128 + tid], vf);
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
                const float p = sp[r][kg + KPI * u];
#pragma unroll
                for (int e = 0; e < VEC; ++e) acc[r][e] = fmaf(p, vf[e], acc[r][e]);
            }
        }
    }
    cp_async_wait<0>();

    // sum the key groups: within the warp (lanes c, c + LPK, ...), then across warps in shared memory
#pragma unroll
    for (int off = LPK; off < 32; off <<= 1)
#pragma unroll
        for (int r = 0; r < ROWS; ++r)
#pragma unroll
            for (int e = 0; e < VEC; ++e) acc[r][e] += __shfl_xor_sync(0xffffffffu, acc[r][e], off);
    if (lane < LPK) {
#pragma unroll
        for (int r = 0; r < ROWS; ++r)
#pragma unroll
            for (int e = 0; e < VEC; ++e) s_red[warp][r][c * VEC + e] = acc[r][e];
    }
#pragma unroll
    for (int t = 0; t < (ROWS + NW - 1) / NW; ++t) {
        const int row = warp + NW * t;
        if (row < ROWS && lane == 0) { s_l[row] = l_rows[t]; s_m[row] = m_rows[t]; }
    }
    __syncthreads();
    const int splits = gridDim.x;
    for (int idx = tid; idx < ROWS * D; idx += 128) {
        const int r = idx / D, col = idx % D, row = r_base + r;
        if (row >= R) continue;
        float o = 0.f;
#pragma unroll
        for (int w = 0; w < NW; ++w) o += s_red[w][r][col];
        const float l = s_l[r];
        const int i = row / g, hh = kvh * g + row % g;
        const long long orow = (((long long)split * b + bi) * s_q + i) * h + hh;
        o_part[orow * D + col] = l > 0.f ? o / l : 0.f;
        if (col == 0)  // natural-log lse of the scaled scores
            lse_part[orow] = l > 0.f ? (s_m[r] + log2f(l)) * 0.6931471805599453f : NEG_INF;
    }

    // The last block of this (batch row, kv head, row block) to finish merges the pieces (no second launch):
    // out = sum_s exp(lse_s - m) o_s / sum_s exp(lse_s - m), lse = m + log(sum). The sums run over s in a
    // fixed order, so the result does not depend on which block finishes last (deterministic). Threadfence
    // pattern: every block publishes its pieces before it counts itself; the last one reads them from L2.
    __threadfence();
    __syncthreads();
    int* counter = counters + (long long)bi * gridDim.y + blockIdx.y;
    if (tid == 0) s_last = atomicAdd(counter, 1) == splits - 1;
    __syncthreads();
    if (!s_last) return;
    if (tid == 0) *counter = 0;  // every piece has arrived: ready for the next launch
    const long long piece = (long long)b * s_q * h;  // rows per piece
    constexpr int PER = D / 32;  // one warp per row, lane l owns columns [l * PER, l * PER + PER)
    static_assert(PER == 2 || PER == 4, "D must be 64 or 128");
#pragma unroll
    for (int t = 0; t < (ROWS + NW - 1) / NW; ++t) {
        const int r = warp + NW * t, row = r_base + r;
        if (r >= ROWS || row >= R) continue;
        const int i = row / g, hh = kvh * g + row % g;
        const long long orow = ((long long)bi * s_q + i) * h + hh;
        const float* lp = lse_part + orow;
        float m = NEG_INF;
        for (int s = lane; s < splits; s += 32) m = fmaxf(m, __ldcg(lp + s * piece));
#pragma unroll
        for (int off = 16; off >= 1; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
        float o[PER];
#pragma unroll
        for (int e = 0; e < PER; ++e) o[e] = 0.f;
        float total = 0.f;
        if (m != NEG_INF) {
            for (int s0 = 0; s0 < splits; s0 += 32) {
                const int s = s0 + lane;
                const float w = s < splits ? expf(__ldcg(lp + s * piece) - m) : 0.f;  // 0 for an empty piece
                total += w;
                const int n = min(32, splits - s0);
#pragma unroll 4
                for (int u = 0; u < n; ++u) {  // pieces in a fixed order: deterministic
                    const float wu = __shfl_sync(0xffffffffu, w, u);
                    const float* src = o_part + ((s0 + u) * piece + orow) * D + lane * PER;
                    if constexpr (PER == 4) {
                        const float4 x = __ldcg(reinterpret_cast<const float4*>(src));
                        o[0] = fmaf(wu, x.x, o[0]); o[1] = fmaf(wu, x.y, o[1]);
                        o[2] = fmaf(wu, x.z, o[2]); o[3] = fmaf(wu, x.w, o[3]);
                    } else {
                        const float2 x = __ldcg(reinterpret_cast<const float2*>(src));
                        o[0] = fmaf(wu, x.x, o[0]); o[1] = fmaf(wu, x.y, o[1]);
                    }
                }
            }
#pragma unroll
            for (int off = 16; off >= 1; off >>= 1) total += __shfl_xor_sync(0xffffffffu, total, off);
        }
#pragma unroll
        for (int e = 0; e < PER; ++e)
            Vec<T>::store1(out + orow * D + lane * PER + e, total > 0.f ? o[e] / total : 0.f);
        if (lane == 0) lse[((long long)bi * h + hh) * s_q + i] = total > 0.f ? m + logf(total) : NEG_INF;
    }
}

#define DECODE(TNAME, T, D, ROWS)                                                                           \
    __global__ void __launch_bounds__(128) decode_##TNAME##_d##D##_r##ROWS(                                  \
        const T* q, const T* k, const T* v, float* work, T* out, float* lse, int* counters, const int* kv_len, \
        int b, int s_q, int h, int h_k, long long kv_batch_stride, int chunk, float scale_log2, int causal)  \
    {                                                                                                         \
        decode_split<T, D, ROWS>(q, k, v, work, out, lse, counters, kv_len, b, s_q, h, h_k, kv_batch_stride,  \
                                 chunk, scale_log2, causal);                                                 \
    }
extern "C" {
DECODE(f16, __half, 64, 1) DECODE(f16, __half, 64, 2) DECODE(f16, __half, 64, 4) DECODE(f16, __half, 64, 8)
DECODE(f16, __half, 128, 1) DECODE(f16, __half, 128, 2) DECODE(f16, __half, 128, 4) DECODE(f16, __half, 128, 8)
DECODE(f32, float, 64, 1) DECODE(f32, float, 64, 2) DECODE(f32, float, 64, 4) DECODE(f32, float, 64, 8)
DECODE(f32, float, 128, 1) DECODE(f32, float, 128, 2) DECODE(f32, float, 128, 4) DECODE(f32, float, 128, 8)
}
