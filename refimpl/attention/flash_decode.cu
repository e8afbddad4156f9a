// flash_decode.cu: split-K attention (flash-decoding), for a KV cache and for any s_q. Two kernels:
// decode_split (CUDA cores, any dtype and rows; described first) and decode_tc (fp16 with at most 8 rows per
// group, tensor cores; described above it, further down), plus decode_merge, decode_tc's optional second launch.
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
// itself in counters[b, y] (arrive_last: one fence and atomicAdd by thread 0); the last block of the group merges the
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
#ifndef DEC_TC_PROBE
#define DEC_TC_PROBE 0  // measurement only: 1 makes decode_tc skip the math (pure streaming through its ring)
#endif
#ifndef DEC_TC_TRACE
#define DEC_TC_TRACE 0  // measurement only: 1 records %globaltimer at the stages of decode_tc and decode_merge
#endif

// Programmatic dependent launch (sm_90): decode_tc lets its merge launch early (launch_dependents); the merge
// then waits on its group's counter (merge_group), not for the whole grid. A no-op in a launch without the
// attribute, and below sm_90.
__device__ __forceinline__ void pdl_launch_dependents()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

#if DEC_TC_TRACE
// [0, 6144): 8 slots per decode_tc block; [6144, 8192): 4 per decode_merge block (read by the probe script)
__device__ unsigned long long dec_trace[8192];
// clock64 (exact within a block): per warp of the first 256 decode_tc blocks its first tile and loop end; per
// block its start, after the loop's barrier, after the warps' results are stored, after the piece is written
__device__ long long dec_wtrace[4096];
__device__ long long dec_ctrace[1024];
#define CTRACE(slot)                                                                                      \
    do {                                                                                                  \
        const unsigned lin = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);               \
        if (threadIdx.x == 0 && lin < 256) dec_ctrace[lin * 4 + (slot)] = clock64();                     \
    } while (0)
#define WTRACE(slot)                                                                                      \
    do {                                                                                                  \
        const unsigned lin = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);               \
        if ((threadIdx.x & 31) == 0 && lin < 256)                                                         \
            dec_wtrace[(lin * DEC_TC_WARPS + threadIdx.x / 32) * 2 + (slot)] = clock64();                 \
    } while (0)
__device__ __forceinline__ unsigned long long gtime()
{
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
#define TRACE_TC(slot, value)                                                                             \
    do {                                                                                                  \
        const unsigned lin = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);               \
        if (threadIdx.x == 0 && lin < 768) dec_trace[lin * 8 + (slot)] = (value);                        \
    } while (0)
#define TRACE_MERGE(slot, value)                                                                          \
    do {                                                                                                  \
        const unsigned lin = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);             \
        if (threadIdx.x == 0 && lin < 512) dec_trace[6144 + lin * 4 + (slot)] = (value);                 \
    } while (0)
#else
#define TRACE_TC(slot, value) do {} while (0)
#define TRACE_MERGE(slot, value) do {} while (0)
#endif

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid)
{
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0)
                 : "memory");
}
#ifndef DEC_TC_EVICT
#define DEC_TC_EVICT 1  // 1: decode_tc's reads of K and V are the first lines L2 evicts (see stream_policy)
#endif
// The L2 policy of a stream read once: with DEC_TC_EVICT, evict_first, so that the 134 MB of a 32K cache going
// through the 50 MB L2 do not push out what the kernel reads again (its code: the block combine and the merge
// run once, at the end, and ran from cold lines; q, the pieces, the counters)
__device__ __forceinline__ unsigned long long stream_policy()
{
    unsigned long long p = 0;
#if DEC_TC_EVICT
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(p));
#endif
    return p;
}
__device__ __forceinline__ void cp_async16_hint(void* smem, const void* gmem, bool valid, unsigned long long policy)
{
#if DEC_TC_EVICT
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;\n" ::"r"(s), "l"(gmem),
                 "r"(valid ? 16 : 0), "l"(policy) : "memory");
#else
    cp_async16(smem, gmem, valid);
#endif
}
// "memory" clobbers: the compiler must not move shared-memory reads of the ring across a wait
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Counts this block in *counter and returns true in the block that arrives last (which sets the counter back
// to 0 for the next launch). Only thread 0 fences, as cooperative groups' grid sync does: the barrier orders
// the block's writes before thread 0's fence and atomic (release), and the last block's fence after its
// atomic orders its later reads after every other block's writes (acquire; the barrier passes that on).
// A __threadfence in every thread, as before, made decode ~10-20% slower on the H100 (measured).
__device__ __forceinline__ bool arrive_last(int* counter, int n, int* s_flag)
{
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        const int last = atomicAdd(counter, 1) == n - 1;
        if (last) {
            __threadfence();
            *counter = 0;
        }
        *s_flag = last;
    }
    __syncthreads();
    return *s_flag != 0;
}

// The dynamic shared memory of both kernels: the ring of K and V tiles. It starts past the static shared memory,
// and aligned to 1024 bytes here: at the 16-byte alignment of a bare declaration, the 80 bytes of a few static
// variables put every 512-byte row of cp.async copies across 5 lines of 128 bytes instead of 4, and decode_tc
// streamed 15% slower (H100, b1 32K and 128K; s17).
extern __shared__ __align__(1024) uint4 dec_ring[];

// bytes of dynamic shared memory: the ring of K and V tiles, each thread's 16-byte pieces
constexpr int ring_bytes() { return DEC_STAGES * 2 * DEC_UNROLL * 128 * 16; }

template <typename T, int D, int ROWS>
__device__ __forceinline__ void decode_split(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, float* __restrict__ work,
    T* __restrict__ out, float* __restrict__ lse, int* __restrict__ counters, const int* __restrict__ kv_len, int b,
    int s_q, int h, int h_k, long long kv_batch_stride, int chunk, float scale_log2, int causal, int len_all)
{
    // the pieces: o_part (splits, b * s_q * h, D), then lse_part (splits, b * s_q * h), in one workspace
    float* __restrict__ o_part = work;
    float* __restrict__ lse_part = work + (long long)gridDim.x * b * s_q * h * D;
    constexpr int VEC = Vec<T>::N, LPK = D / VEC, KPI = 128 / LPK, UNROLL = DEC_UNROLL, TK = KPI * UNROLL;
    constexpr int NW = 4, NS = DEC_STAGES;
    static_assert(LPK >= 1 && LPK <= 32 && (LPK & (LPK - 1)) == 0, "D / VEC must be a power of 2 <= 32");
    // ring[stage][K or V][u][thread]: every thread copies, and later reads, only its own pieces, so the
    // ring needs no barrier: cp.async.wait_group orders a thread's copies before its own reads.
    uint4* const ring = dec_ring;
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
    const int L = len_all >= 0 ? len_all : kv_len[bi];  // len_all >= 0: every row's length (known to the host)

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
    if (!arrive_last(counters + (long long)bi * gridDim.y + blockIdx.y, splits, &s_last)) return;
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

// ---------------------------------------------------------------------------------------------------------
// decode_tc: the same split-K decode for fp16 with at most 8 rows per (batch row, kv head) group (R = s_q * g
// <= 8: decode with GQA), on tensor cores, every warp on its own keys (no block barrier in the key loop).
//
// Per warp and 16-key tile, with the rows as the n = 8 side of mma.sync.m16n8k16 (4 of 8 used at g = 4):
//   S^T (16 keys x 8 rows) = K (16 x D, ldmatrix from shared memory) Q^T (D x 8, fp16 registers, loaded once);
//   scores in log2 units (scale * log2 e applied in fp32 after the product); each thread holds keys gid, gid+8
//   of rows 2 tig, 2 tig + 1, so the online softmax of a row needs 3 shuffles (over gid) for the max and none
//   for the sum (l stays a per-lane partial sum until the end);
//   O^T (D x 8) += V^T (ldmatrix.trans) P^T, where P^T (keys x rows, the B operand) is the S^T accumulator
//   rounded to fp16 and transposed 8x8 by movmatrix (as in flash_fwd.cu, P is rounded to fp16 for P V).
// The accumulator of O^T holds rows 2 tig, 2 tig + 1 as S^T does, so the rescale by alpha needs no shuffle.
// Grid: x = split (chunk keys), y = kv head, z = batch row. Block: DEC_TC_WARPS warps; warp w takes the
// 16 * DEC_TC_KT-key tiles w, w + NW, ... of the block's chunk, through its own ring of DEC_TC_STAGES tiles
// (cp.async, 16-byte chunk index XOR key mod 8 so that ldmatrix is free of bank conflicts); a warp reads what
// its own lanes copied, so cp.async.wait_group + __syncwarp order the ring. At the end the warps' (m, l, O)
// are merged in shared memory (reusing the ring) and the block writes its piece (M, l, unnormalized O) to the
// workspace; the last block of the group merges the pieces (DEC_TC_MERGE 1, publish_piece, merge_fold), as
// decode_split does: one launch. DEC_TC_MERGE 0 leaves the merge to decode_merge (grid (h_k, b), its own
// launch, merge_group). That launch is programmatic (PDL, from gpu.py): decode_tc calls launch_dependents at its
// start, so the merge blocks are resident beside it, waiting on their group's counter, and merge a group as
// soon as its last piece is written (H100, b1 32K: 55.8 vs 58.6 us without PDL, old timer; the counter instead
// of griddepcontrol.wait: 51.9 vs 52.5, new timer).
// History of DEC_TC_MERGE 1 (s13-s16): the last block's merge made the whole launch 15-20% slower (b8 32K 415
// vs 362 us), the streaming itself too (math off: 55.8 vs 51.7 us at b1 32K), with the blocks ending between 35
// and 49 us instead of 40 and 45; not explained then. s17 found the cause: its static shared variables (80
// bytes) moved the dynamic ring to an address that is 16-byte but not 128-byte aligned, and every 512-byte row
// of cp.async copies then spans 5 lines of 128 bytes instead of 4. With the ring aligned (dec_ring) the fused
// merge streams as fast (b1 128K 179.0 against 177.7 us with a two-pass merge), and with a one-pass merge
// (merge_fold) and one atom.acq_rel it ends sooner: b1 32K 49.9-50.0 us against 50.5-50.6 with the merge
// launch, b1 128K 177.1-177.7 against 177.6-178.4 (H100, one process each, three machines).
// b1 32K (the GQA 32/8 decode goal), traced on the H100 without the fused merge: the blocks stop streaming at
// 40.1 / 43.1 / 44.5 us (min / median / max), which is 134 MB at about 3.0-3.1 TB/s. The warps' combine into a
// piece takes about 1.0 us in every block, the last piece is written at 46.2 us and the merge is done at
// 48.1 us. The event-timed call is 53.1-53.7 us, so about 5 us lie outside the kernels.
// Floors under the device-time timer (benchmarks.core.time_gpu, H100, copy 3012 GB/s, so the 90% line is 49.5
// us; one process, s14): events alone 1.25 us; a graph of one empty kernel of this grid (128 KB shared) 3.04,
// with an empty PDL merge 3.86. Pure reads of the same 134 MB: plain 16-byte loads in this layout (16 x 8
// blocks, 64 KB in flight per SM) 46.2-46.6 us, 47.1 with the empty merge; flat ranges over 128 blocks 46.6,
// over 132 or 264 blocks 48.5-49.3; TMA 1-D bulk copies of 32 KB 47.0 (128 blocks) to 52 (6 stages); TMA
// copies of one 256-byte key row each 116. decode_tc with the math off (DEC_TC_PROBE) 50.7, with it 52.5
// (51.9 with the counter-waiting merge). So a read plus an empty merge leaves 2.4 us under the line for the
// math, the combine and the merge, which take 4.8 us here; the streaming itself is at the read floor.
// s15 (H100, device time, one process per comparison). Kept: clusters (decode_tc_cl below) where they fit,
// evict-first reads of K and V, the row length as an argument (see gpu.py DEC_CONFIG), the warps' results in
// rows of D + 4 floats (conflict-free). Traced at b1 32K: the blocks start 2.0 us after the previous kernel,
// the first tiles land at 4.6-6.0, the blocks stop streaming at 40.5 / 42.9 / 44.3 us (min / median / max; per
// SM the streaming time varies by 0.4-0.5 us and only partly repeats), the last piece is written at 45.8, the
// merge has it at 46.5 and ends at 48.1; the next kernel can start at 50.0. Tried and dropped: running the
// code after the key loop once early, so that its instructions are cached (no change: 50.6 against 50.5);
// a mailbox in which the merge polls the pieces' own words (51.7 against 50.6: 1,024 pollers slow the
// stream); a merge block per row (51.0 against 50.7); 4 warps of 32-key tiles (51.1), 4 warps of 3 or 4
// stages (53.0, 51.2); plain launches instead of the graph (level); 12, 14 or 15 splits instead of 16
// (50.2, 50.0, 49.8 against 49.6); 17 (63.4: a second wave). 8 clusters of 16, 15, 14, 13 or 12 blocks do
// not fit at once on the H100 (cuOccupancyMaxActiveClusters: 7 of 16; its GPCs have 16 to 18 SMs but one).
// s16 (H100, device time, one process per comparison; b1 32K was 50.3-50.8 us there, 49.7 on one machine).
// Traced with clock64 per warp (dec_wtrace, exact within a block): the warps of one block end their key
// loops 1.9 us apart (median block; up to 3.6), with no warp index systematically last; had each block's warps
// ended together at their mean, the last would end 0.8-0.9 us sooner; across blocks the spread is smaller (sd
// of the block means 0.36 us against 0.59 within). A tile takes a warp about 2.5 us (its one 8 KB tile in flight
// waits in the memory queue), so stealing whole tiles cannot even out a spread under one tile, and which warp
// takes which tile would have to leave the sums bitwise the same. After the last warp: barrier 0.12 us, the
// warps' results stored 0.2, the piece written 1.1 (about 2,000 cycles for 2 columns a thread); the merge
// block needs 1.5-1.7 us after it sees the counter, 3,000 cycles of it until its first loads of the pieces
// return. Tried and dropped: the block max first and weighted sums (50.9 against 50.3: one more barrier);
// issuing a warp's next tile after its math, so 2 tiles are in flight (50.7 against 50.5); L2 prefetch 1 or 2
// tiles ahead (51.0, 52.4); 3 stages (51.1); 12 warps (51.8); decode_merge with 2 or 4 groups of pieces folded
// in parallel (51.4, 53.1 against 51.4); prefetching the pieces' lines to L2 at the start (50.9-51.1 against
// 51.0); running the merge's code once before its wait (50.3 against 50.4); the merge blocks as the last
// blocks of decode_tc's own grid, one launch (50.0 against 49.7, and b1 128K 180.2 against 177.4).
// s17 (H100, device time, one process per comparison). Kept: the aligned ring (dec_ring) and the merge in the
// group's last block (DEC_TC_MERGE 1, see above), pieces as (M, l, unnormalized O), so that neither the block
// nor the merge divides or takes a log per element: b1 32K 49.6-50.0 us against 50.4-50.6 with the merge launch
// (four machines), b1 128K 177.1-179.6 against 177.6-180.3. Tried and dropped: every warp writing its own
// piece, merged by 1 or 8 blocks per group (58.4, 51.7 against 50.4: 128 pieces a group are too many to fold);
// the warps' states combined in a binary tree as they finish, the second of each pair combining (50.4 against
// 50.0: one warp does 3 x 64 combines where the block's 256 threads share them); the last block learning that
// it is last before its combine (a relaxed atomic, then waiting on a second counter of written pieces) and
// merging its own piece from shared memory (50.0 against 49.9); the other pieces copied to shared memory with
// cp.async and folded in short loops, in case the unrolled fold's 1.5 us was a cold instruction cache (the fold
// took 3.2 us: it was not). The carveout (L1 against shared) of decode_tc made no difference (0, 58, 100 %).
// Traced at b1 32K (DEC_TC_MERGE 1): the last warp ends at 45.8-46.2 us, the last block knows that it is last
// about 0.1-0.6 us later, its fold takes 1.2-1.5 us and the next kernel starts 1.7-1.9 us after that.
#ifndef DEC_TC_WARPS
#define DEC_TC_WARPS 8
#endif
#ifndef DEC_TC_KT
#define DEC_TC_KT 1  // 16-key m-tiles per warp stage
#endif
#ifndef DEC_TC_STAGES
// stages in each warp's ring (DEC_TC_STAGES - 1 in flight while one is consumed). 2 (64 KB in flight per SM)
// streamed about 1% faster than 3 on the H100 at b8 32K and b1 128K (two runs; math off too), level at b1 32K.
#define DEC_TC_STAGES 2
#endif
#ifndef DEC_TC_MERGE
#define DEC_TC_MERGE 1  // 1: the group's last block merges (as decode_split); 0: decode_merge_d* does, launched next
#endif

__device__ __forceinline__ unsigned smem_u32(const void* p)
{
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void ldsm_x4(unsigned (&r)[4], unsigned addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(unsigned (&r)[4], unsigned addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
// c += a b, m16n8k16, fp16 operands, fp32 accumulator
__device__ __forceinline__ void mma16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// the 8x8 fp16 matrix whose fragment (row gid, columns 2 tig, 2 tig + 1) this thread holds, transposed
__device__ __forceinline__ unsigned movtrans(unsigned x)
{
    unsigned y;
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
    return y;
}
__device__ __forceinline__ unsigned pack_half2(float lo, float hi)
{
    __half2 t = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&t);
}
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// thread-block clusters (sm_90): this block's rank, a shared address in block `rank`'s shared memory, a store
// there, and the barrier of the whole cluster (writes before it are visible to reads after it)
__device__ __forceinline__ unsigned cluster_rank()
{
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
    return r;
}
__device__ __forceinline__ unsigned map_rank(unsigned addr, unsigned rank)
{
    unsigned d;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(d) : "r"(addr), "r"(rank));
    return d;
}
__device__ __forceinline__ void st_cluster(unsigned addr, float x)
{
    asm volatile("st.shared::cluster.f32 [%0], %1;\n" ::"r"(addr), "f"(x) : "memory");
}
__device__ __forceinline__ void cluster_sync()
{
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}
// the split form: arrive early (here: at the start, to say that this block's shared memory exists), wait late
__device__ __forceinline__ void cluster_arrive()
{
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory"); }
#endif

// A merged row's 4 columns at 4 c4: out = o / t as fp16 (0 where no key was seen, t = 0) and, from the thread
// of the first columns, lse = m + log t (-inf without keys) at lse[at]. Both merges end here.
template <int D>
__device__ __forceinline__ void store_merged(__half* __restrict__ out, float* __restrict__ lse, long long orow,
                                             int c4, float4 o, float t, float m, long long at)
{
    if (t > 0.f) {
        const float inv = 1.f / t;
        o.x *= inv; o.y *= inv; o.z *= inv; o.w *= inv;
    }
    __half2* dst = reinterpret_cast<__half2*>(out + orow * D + 4 * c4);
    dst[0] = __floats2half2_rn(o.x, o.y);
    dst[1] = __floats2half2_rn(o.z, o.w);
    if (c4 == 0) lse[at] = t > 0.f ? m + logf(t) : NEG_INF;
}

// merge_fold: the pieces of one (batch row bi, kv head kvh) group of decode_tc merged in one pass, by the
// group's decode_merge block (DEC_TC_MERGE 0) or by the group's last decode_tc block (1). A piece is (M_s, l_s,
// O_s): its max score in log2 units, sum of 2^(s - M_s) and unnormalized output. One thread per (row, 4
// columns) loads the 4 columns, M_s and l_s of up to 16 pieces at once (one round trip to L2), then folds them
// in online, in piece order (deterministic): M' = max(M, max_s M_s), t = t 2^(M - M') + sum_s 2^(M_s - M') l_s,
// o likewise; out = o / t, lse = ln 2 (M + log2 t). Loads bypass L1 (__ldcg): other blocks wrote the pieces.
template <int D>
__device__ __forceinline__ void merge_fold(const float* __restrict__ work, __half* __restrict__ out,
                                           float* __restrict__ lse, int b, int s_q, int h, int h_k, int splits,
                                           int bi, int kvh)
{
    constexpr int C4 = D / 4, U = 16;
    const int g = h / h_k, R = s_q * g;
    const long long piece = (long long)b * s_q * h;  // rows per piece
    const float* __restrict__ o_part = work;
    const float* __restrict__ m_part = work + splits * piece * D;
    const float* __restrict__ l_part = m_part + splits * piece;
    for (int idx = threadIdx.x; idx < R * C4; idx += blockDim.x) {
        const int r = idx / C4, c4 = idx % C4;
        const int i = r / g, hh = kvh * g + r % g;
        const long long orow = ((long long)bi * s_q + i) * h + hh;
        const float* src = o_part + orow * D + 4 * c4;
        float m = NEG_INF, t = 0.f;
        float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int s0 = 0; s0 < splits; s0 += U) {
            float x[U], y[U];
            float4 z[U];
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const bool ok = s0 + u < splits;
                const long long at = (s0 + u) * piece + orow;
                x[u] = ok ? __ldcg(m_part + at) : NEG_INF;
                y[u] = ok ? __ldcg(l_part + at) : 0.f;
                z[u] = ok ? __ldcg(reinterpret_cast<const float4*>(src + (s0 + u) * piece * D))
                          : make_float4(0.f, 0.f, 0.f, 0.f);
            }
            float mn = m;
#pragma unroll
            for (int u = 0; u < U; ++u) mn = fmaxf(mn, x[u]);
            if (mn == NEG_INF) continue;  // no key in any piece so far
            const float a = exp2f(m - mn);  // 0 while m is -inf
            t *= a;
            o.x *= a; o.y *= a; o.z *= a; o.w *= a;
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const float w = exp2f(x[u] - mn);  // 0 for an empty piece
                t = fmaf(w, y[u], t);
                o.x = fmaf(w, z[u].x, o.x); o.y = fmaf(w, z[u].y, o.y);
                o.z = fmaf(w, z[u].z, o.z); o.w = fmaf(w, z[u].w, o.w);
            }
            m = mn;
        }
        store_merged<D>(out, lse, orow, c4, o, t, m * 0.6931471805599453f, ((long long)bi * h + hh) * s_q + i);
    }
}

// decode_merge (DEC_TC_MERGE 0): decode_tc's second launch, grid (h_k, b), one group a block. With PDL its blocks
// start while decode_tc runs. Thread 0 waits until counters[bi, kvh] (which each decode_tc block of the group
// increments with release semantics after writing its piece) reaches splits, reads it with acquire semantics,
// and sets it back to 0 for the next launch; the barrier passes the order on. So each group is merged as soon
// as its own pieces are written. griddepcontrol.wait, as before, waited for the whole decode_tc grid to end and
// its writes to be flushed: b1 32K 52.4-52.7 us against 51.9 (H100, new timer, one process). Deadlock-free: PDL
// starts this grid only after every decode_tc block has begun (they all call launch_dependents first), so the
// blocks it waits for are resident; without PDL it starts after decode_tc ends.
template <int D>
__device__ __forceinline__ void merge_group(const float* __restrict__ work, __half* __restrict__ out,
                                            float* __restrict__ lse, int* __restrict__ counters, int b, int s_q,
                                            int h, int h_k, int splits, int bi, int kvh)
{
    TRACE_MERGE(0, gtime());
    if (threadIdx.x == 0) {
        int* cnt = counters + (long long)bi * h_k + kvh;
        int c;
        for (;;) {
            asm volatile("ld.acquire.gpu.global.s32 %0, [%1];\n" : "=r"(c) : "l"(cnt) : "memory");
            if (c >= splits) break;
            __nanosleep(32);
        }
        *cnt = 0;
    }
    __syncthreads();
    TRACE_MERGE(1, gtime());
    merge_fold<D>(work, out, lse, b, s_q, h, h_k, splits, bi, kvh);
#if DEC_TC_TRACE
    __syncthreads();
    TRACE_MERGE(2, gtime());
#endif
}

// After every thread's stores of the block's piece (the barrier orders them before thread 0's release):
// DEC_TC_MERGE 0: count the piece in counters[bi, kvh] for the group's decode_merge block (release).
// DEC_TC_MERGE 1: the block that brings the count to splits merges the group (one launch). Thread 0's atomic has
// release (this block's piece) and acquire (the others') semantics; the barrier passes the order on.
template <int D>
__device__ __forceinline__ void publish_piece(const float* __restrict__ work, __half* __restrict__ out,
                                              float* __restrict__ lse, int* __restrict__ counters, int b, int s_q,
                                              int h, int h_k, int bi, int kvh)
{
    int* cnt = counters + (long long)bi * gridDim.y + blockIdx.y;
    __syncthreads();
#if DEC_TC_MERGE
    __shared__ int s_last;
    if (threadIdx.x == 0) {
        int old;
        asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], 1;\n" : "=r"(old) : "l"(cnt) : "memory");
        s_last = old == (int)gridDim.x - 1;
        if (s_last) *cnt = 0;  // for the next launch: every block of the group has counted itself
    }
    __syncthreads();
    if (!s_last) return;
#if DEC_TC_TRACE
    if (threadIdx.x == 0) dec_trace[6144 + (bi * gridDim.y + blockIdx.y) * 4] = gtime();
    if (threadIdx.x == 0) dec_trace[6144 + (bi * gridDim.y + blockIdx.y) * 4 + 1] = gtime();
#endif
    merge_fold<D>(work, out, lse, b, s_q, h, h_k, gridDim.x, bi, kvh);
#if DEC_TC_TRACE
    __syncthreads();
    if (threadIdx.x == 0) dec_trace[6144 + (bi * gridDim.y + blockIdx.y) * 4 + 2] = gtime();
#endif
#else
    if (threadIdx.x == 0) asm volatile("red.release.gpu.global.add.s32 [%0], 1;\n" ::"l"(cnt) : "memory");
#endif
}

template <int D, bool CL>
__device__ __forceinline__ void decode_tc_body(
    const __half* __restrict__ q, const __half* __restrict__ k, const __half* __restrict__ v,
    float* __restrict__ work, __half* __restrict__ out, float* __restrict__ lse, int* __restrict__ counters,
    const int* __restrict__ kv_len, int b, int s_q, int h, int h_k, long long kv_batch_stride, int chunk,
    float scale_log2, int causal, int len_all)
{
    constexpr int NW = DEC_TC_WARPS, NT = 32 * NW, KT = DEC_TC_KT, NS = DEC_TC_STAGES;
    constexpr int KS = 16 * KT;        // keys per warp tile
    constexpr int CH = D / 8;          // 16-byte chunks per key row
    constexpr int STAGE = 2 * KS * D;  // halves per stage: K tile, then V tile
    constexpr int CP = KS * CH / 32;   // 16-byte copies per lane per tile, of K and of V each
    constexpr int DM = D / 16;         // mma tiles along d
    static_assert(D == 64 || D == 128, "D must be 64 or 128");
    static_assert(NS >= 2, "the ring needs 2 stages");
    uint4* const ring = dec_ring;

    float* __restrict__ o_part = work;
    float* __restrict__ m_part = work + (long long)gridDim.x * b * s_q * h * D;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, gid = lane >> 2, tig = lane & 3;
    const int g = h / h_k, R = s_q * g;
    const int split = blockIdx.x, kvh = blockIdx.y, bi = blockIdx.z;
#if DEC_TC_TRACE
    TRACE_TC(0, gtime());
    {
        unsigned smid;
        asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
        TRACE_TC(5, smid);
    }
    CTRACE(0);
#endif
    // the merge launch (PDL) may start now: its blocks fit beside this one and wait for this grid to end
    pdl_launch_dependents();
    // len_all >= 0: every batch row has that many keys (the host knows it), so the first tiles need not wait
    // for a load of kv_len from memory
    const int L = len_all >= 0 ? len_all : kv_len[bi];
    // keys visible to row r (causal: bottom-right); the last row sees all L, so the block reads up to L
    auto limit_of = [&](int r) {
        if (r >= R) return 0;
        const int lim = causal ? r / g + 1 + L - s_q : L;
        return lim < 0 ? 0 : (lim > L ? L : lim);
    };
    const int j_begin = split * chunk;
    const int j_end = min(j_begin + chunk, L);
    const int lim0 = min(limit_of(2 * tig), j_end), lim1 = min(limit_of(2 * tig + 1), j_end);

    // Q^T as the B operand: column n = row gid, k = d; 32-bit words of two consecutive d straight from q
    unsigned qf[DM][2];
    if (gid < R) {
        const int i = gid / g, hh = kvh * g + gid % g;
        const unsigned* qp = reinterpret_cast<const unsigned*>(q + (((long long)bi * s_q + i) * h + hh) * D);
#pragma unroll
        for (int ks = 0; ks < DM; ++ks) { qf[ks][0] = qp[8 * ks + tig]; qf[ks][1] = qp[8 * ks + 4 + tig]; }
    } else {
#pragma unroll
        for (int ks = 0; ks < DM; ++ks) qf[ks][0] = qf[ks][1] = 0u;
    }

    const int ntiles = j_end > j_begin ? (j_end - j_begin + KS - 1) / KS : 0;
    const int mine = ntiles > warp ? (ntiles - warp + NW - 1) / NW : 0;  // tiles warp, warp + NW, ...
    const __half* kb = k + (long long)bi * kv_batch_stride + (long long)kvh * D;
    const __half* vb = v + (long long)bi * kv_batch_stride + (long long)kvh * D;
    const long long row_stride = (long long)h_k * D;
    const unsigned long long policy = stream_policy();
    __half* wring = reinterpret_cast<__half*>(ring) + warp * NS * STAGE;
    auto issue = [&](int t) {
        if (t < mine) {
            __half* st = wring + (t % NS) * STAGE;
            const int j0 = j_begin + (warp + t * NW) * KS;
#pragma unroll
            for (int n = 0; n < CP; ++n) {
                const int idx = lane + 32 * n, key = idx / CH, c = idx % CH, j = j0 + key;
                const bool ok = j < j_end;
                const long long o = ok ? j * row_stride + c * 8 : 0;
                __half* dst = st + key * D + ((c ^ (key & 7)) * 8);
                cp_async16_hint(dst, kb + o, ok, policy);
                cp_async16_hint(dst + KS * D, vb + o, ok, policy);
            }
        }
        cp_async_commit();  // an empty group past the end keeps the wait count uniform
    };
#pragma unroll
    for (int t = 0; t < NS - 1; ++t) issue(t);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if constexpr (CL) cluster_arrive();  // waited for before the first write into another block's memory
#endif

    float acc[DM][4];
#pragma unroll
    for (int dm = 0; dm < DM; ++dm)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[dm][e] = 0.f;
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.f, l1 = 0.f;  // rows 2 tig and 2 tig + 1

    for (int t = 0; t < mine; ++t) {
        cp_async_wait<NS - 2>();  // this lane's pieces of tile t have landed
        __syncwarp();             // ... and every lane's; every lane is also done with tile t - 1's stage
#if DEC_TC_TRACE
        if (t == 0) TRACE_TC(1, gtime());
        if (t == 0) WTRACE(0);
#endif
        issue(t + NS - 1);
#if DEC_TC_PROBE != 1
        const int lr = lane & 7, lm = lane >> 3;  // ldmatrix: this lane gives row lr of matrix lm
        const __half* kst = wring + (t % NS) * STAGE;
        const __half* vst = kst + KS * D;
        const int j0 = j_begin + (warp + t * NW) * KS;
        float s[KT][4];
#pragma unroll
        for (int kt = 0; kt < KT; ++kt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) s[kt][e] = 0.f;
            const int key = kt * 16 + lr + 8 * (lm & 1);
#pragma unroll
            for (int ks = 0; ks < DM; ++ks) {
                const int c = 2 * ks + (lm >> 1);
                unsigned a[4];
                ldsm_x4(a, smem_u32(kst + key * D + ((c ^ (key & 7)) * 8)));
                mma16816(s[kt], a, qf[ks][0], qf[ks][1]);
            }
        }
        // scale, mask (key < this row's limit and < j_end), tile max per row over keys gid, gid + 8 and lanes
        float mx0 = NEG_INF, mx1 = NEG_INF;
#pragma unroll
        for (int kt = 0; kt < KT; ++kt) {
            const int ja = j0 + kt * 16 + gid, jb = ja + 8;
            s[kt][0] = ja < lim0 ? s[kt][0] * scale_log2 : NEG_INF;
            s[kt][1] = ja < lim1 ? s[kt][1] * scale_log2 : NEG_INF;
            s[kt][2] = jb < lim0 ? s[kt][2] * scale_log2 : NEG_INF;
            s[kt][3] = jb < lim1 ? s[kt][3] * scale_log2 : NEG_INF;
            mx0 = fmaxf(mx0, fmaxf(s[kt][0], s[kt][2]));
            mx1 = fmaxf(mx1, fmaxf(s[kt][1], s[kt][3]));
        }
#pragma unroll
        for (int off = 4; off < 32; off <<= 1) {
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
        }
        const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);
        const float u0 = n0 == NEG_INF ? 0.f : n0, u1 = n1 == NEG_INF ? 0.f : n1;  // no key yet: no -inf - -inf
        const float a0 = exp2f(m0 - u0), a1 = exp2f(m1 - u1);                      // 0 while m was -inf
        m0 = n0;
        m1 = n1;
        l0 *= a0;
        l1 *= a1;
#pragma unroll
        for (int kt = 0; kt < KT; ++kt) {
            s[kt][0] = exp2f(s[kt][0] - u0);
            s[kt][1] = exp2f(s[kt][1] - u1);
            s[kt][2] = exp2f(s[kt][2] - u0);
            s[kt][3] = exp2f(s[kt][3] - u1);
            l0 += s[kt][0] + s[kt][2];
            l1 += s[kt][1] + s[kt][3];
        }
#pragma unroll
        for (int dm = 0; dm < DM; ++dm) {
            acc[dm][0] *= a0;
            acc[dm][1] *= a1;
            acc[dm][2] *= a0;
            acc[dm][3] *= a1;
        }
#pragma unroll
        for (int kt = 0; kt < KT; ++kt) {
            const unsigned b0 = movtrans(pack_half2(s[kt][0], s[kt][1]));  // P^T keys 2 tig, 2 tig + 1, row gid
            const unsigned b1 = movtrans(pack_half2(s[kt][2], s[kt][3]));  // keys 2 tig + 8, 2 tig + 9
            const int key = kt * 16 + lr + 8 * (lm >> 1);
#pragma unroll
            for (int dm = 0; dm < DM; ++dm) {
                const int c = 2 * dm + (lm & 1);
                unsigned a[4];
                ldsm_x4_t(a, smem_u32(vst + key * D + ((c ^ (key & 7)) * 8)));
                mma16816(acc[dm], a, b0, b1);
            }
        }
#endif
    }
    cp_async_wait<0>();
#if DEC_TC_TRACE
    WTRACE(1);
    TRACE_TC(2, gtime());
    const long long c_end = clock64();
#endif
#pragma unroll
    for (int off = 4; off < 32; off <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, off);
        l1 += __shfl_xor_sync(0xffffffffu, l1, off);
    }
    __syncthreads();  // every warp is done with its ring: reuse it for the warps' partial results
#if DEC_TC_TRACE
    TRACE_TC(3, gtime());
    CTRACE(1);
#endif

    // the warps' (m, l, O) -> the block's piece: O = sum_w 2^(m_w - M) O_w, l = sum_w 2^(m_w - M) l_w.
    // In the ring: O [NW][8][DP] (rows padded by 4 floats: the stores of a warp fall in 32 different banks, where
    // rows of D floats put the 4 lanes of a column in one), m [NW][8], l [NW][8]
    constexpr int DP = D + 4;
    float* red_o = reinterpret_cast<float*>(ring);
    float* red_m = red_o + NW * 8 * DP;
    float* red_l = red_m + NW * 8;
    static_assert((NW * 8 * DP + NW * 16) * 4 <= NW * NS * STAGE * 2, "the warps' results fit in the ring");
    {
        float* o0 = red_o + (warp * 8 + 2 * tig) * DP + gid;
#pragma unroll
        for (int dm = 0; dm < DM; ++dm) {
            o0[16 * dm] = acc[dm][0];
            o0[DP + 16 * dm] = acc[dm][1];
            o0[16 * dm + 8] = acc[dm][2];
            o0[DP + 16 * dm + 8] = acc[dm][3];
        }
        if (gid == 0) {
            red_m[warp * 8 + 2 * tig] = m0;
            red_m[warp * 8 + 2 * tig + 1] = m1;
            red_l[warp * 8 + 2 * tig] = l0;
            red_l[warp * 8 + 2 * tig + 1] = l1;
        }
    }
    __syncthreads();
#if DEC_TC_TRACE
    TRACE_TC(6, gtime());
    CTRACE(2);
#endif
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    // cluster: the piece (M, l, unnormalized O) goes into slot `rank` of the leader's (rank 0) shared memory,
    // past its ring, so it may land while the leader still streams
    unsigned slot_base = 0;
    const unsigned rank = CL ? cluster_rank() : 0u;
    if constexpr (CL) {
        cluster_wait();  // every block of the cluster has started, the leader included
        slot_base = map_rank(smem_u32(reinterpret_cast<char*>(ring) + NW * NS * STAGE * 2), 0);
    }
#endif
    // R <= 8 rows: at most 8 D / NT elements a thread, unrolled so that their shared-memory reads overlap
#pragma unroll
    for (int e8 = 0; e8 < (8 * D + NT - 1) / NT; ++e8) {
        const int idx = tid + NT * e8;
        if (idx >= R * D) break;
        const int r = idx / D, col = idx % D;
        float M = NEG_INF;
#pragma unroll
        for (int w = 0; w < NW; ++w) M = fmaxf(M, red_m[w * 8 + r]);
        float o = 0.f, l = 0.f;
        if (M != NEG_INF) {
#pragma unroll
            for (int w = 0; w < NW; ++w) {
                const float mw = red_m[w * 8 + r];
                const float e = mw == NEG_INF ? 0.f : exp2f(mw - M);
                o = fmaf(e, red_o[(w * 8 + r) * DP + col], o);
                l = fmaf(e, red_l[w * 8 + r], l);
            }
        }
        // the piece (M, l, unnormalized O): in the leader's slots (cluster) or in the workspace
        if constexpr (CL) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
            // slots: o [splits][8][D], then m [splits][8], then l [splits][8]
            st_cluster(slot_base + 4u * ((rank * 8 + r) * D + col), o);
            if (col == 0) {
                st_cluster(slot_base + 4u * (gridDim.x * 8 * D + rank * 8 + r), M);
                st_cluster(slot_base + 4u * (gridDim.x * 8 * (D + 1) + rank * 8 + r), l);
            }
#endif
        } else {
            // workspace: o [splits][pieces][D], then m [splits][pieces], then l [splits][pieces]
            const int i = r / g, hh = kvh * g + r % g;
            const long long orow = (((long long)split * b + bi) * s_q + i) * h + hh;
            o_part[orow * D + col] = o;
            if (col == 0) {
                m_part[orow] = M;
                m_part[(long long)gridDim.x * b * s_q * h + orow] = l;
            }
        }
    }
#if DEC_TC_TRACE
    __syncthreads();
    TRACE_TC(4, gtime());
    TRACE_TC(7, clock64() - c_end);
    CTRACE(3);
#endif

    if constexpr (CL) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        // every piece is in the leader's slots (release / acquire over the cluster barrier); it merges them in
        // rank order, which is split order (deterministic): out = sum_s 2^(m_s - M) o_s / t,
        // t = sum_s 2^(m_s - M) l_s, lse = ln 2 (M + log2 t)
        cluster_sync();
        if (rank != 0) return;
        const int splits = gridDim.x;
        const float* so = reinterpret_cast<const float*>(reinterpret_cast<const char*>(ring) + NW * NS * STAGE * 2);
        const float* sm = so + splits * 8 * D;
        const float* sl = sm + splits * 8;
        constexpr int C4 = D / 4;
        for (int idx = tid; idx < R * C4; idx += NT) {
            const int r = idx / C4, c4 = idx % C4;
            float M = NEG_INF;
            for (int s2 = 0; s2 < splits; ++s2) M = fmaxf(M, sm[s2 * 8 + r]);
            float t = 0.f;
            float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
            if (M != NEG_INF) {
                for (int s2 = 0; s2 < splits; ++s2) {
                    const float ms = sm[s2 * 8 + r];
                    const float w = ms == NEG_INF ? 0.f : exp2f(ms - M);
                    const float4 y = *reinterpret_cast<const float4*>(so + (s2 * 8 + r) * D + 4 * c4);
                    t = fmaf(w, sl[s2 * 8 + r], t);
                    o.x = fmaf(w, y.x, o.x); o.y = fmaf(w, y.y, o.y);
                    o.z = fmaf(w, y.z, o.z); o.w = fmaf(w, y.w, o.w);
                }
            }
            const int i = r / g, hh = kvh * g + r % g;
            const long long orow = ((long long)bi * s_q + i) * h + hh;
            store_merged<D>(out, lse, orow, c4, o, t, M * 0.6931471805599453f, ((long long)bi * h + hh) * s_q + i);
        }
#endif
    } else {
        publish_piece<D>(work, out, lse, counters, b, s_q, h, h_k, bi, kvh);
    }
}


#define DECODE(TNAME, T, D, ROWS)                                                                           \
    __global__ void __launch_bounds__(128) decode_##TNAME##_d##D##_r##ROWS(                                  \
        const T* q, const T* k, const T* v, float* work, T* out, float* lse, int* counters, const int* kv_len, \
        int b, int s_q, int h, int h_k, long long kv_batch_stride, int chunk, float scale_log2, int causal,  \
        int len_all)                                                                                          \
    {                                                                                                         \
        decode_split<T, D, ROWS>(q, k, v, work, out, lse, counters, kv_len, b, s_q, h, h_k, kv_batch_stride,  \
                                 chunk, scale_log2, causal, len_all);                                        \
    }
#define DECODE_TC(NAME, D, CL)                                                                              \
    __global__ void __launch_bounds__(32 * DEC_TC_WARPS) NAME(                                                \
        const __half* q, const __half* k, const __half* v, float* work, __half* out, float* lse, int* counters, \
        const int* kv_len, int b, int s_q, int h, int h_k, long long kv_batch_stride, int chunk, float scale_log2, \
        int causal, int len_all)                                                                              \
    {                                                                                                         \
        decode_tc_body<D, CL>(q, k, v, work, out, lse, counters, kv_len, b, s_q, h, h_k, kv_batch_stride,     \
                              chunk, scale_log2, causal, len_all);                                          \
    }
// the merge of decode_tc's pieces as its own launch: grid (h_k, b), 128 threads, one (b, kv head) group a block
#define DECODE_MERGE(D)                                                                                     \
    __global__ void __launch_bounds__(128) decode_merge_d##D(const float* work, __half* out, float* lse,        \
                                                             int* counters, int b, int s_q, int h, int h_k,  \
                                                             int splits)                                     \
    {                                                                                                         \
        merge_group<D>(work, out, lse, counters, b, s_q, h, h_k, splits, blockIdx.y, blockIdx.x);             \
    }
extern "C" {
DECODE(f16, __half, 64, 1) DECODE(f16, __half, 64, 2) DECODE(f16, __half, 64, 4) DECODE(f16, __half, 64, 8)
DECODE(f16, __half, 128, 1) DECODE(f16, __half, 128, 2) DECODE(f16, __half, 128, 4) DECODE(f16, __half, 128, 8)
DECODE(f32, float, 64, 1) DECODE(f32, float, 64, 2) DECODE(f32, float, 64, 4) DECODE(f32, float, 64, 8)
DECODE(f32, float, 128, 1) DECODE(f32, float, 128, 2) DECODE(f32, float, 128, 4) DECODE(f32, float, 128, 8)
DECODE_TC(decode_tc_d64, 64, false) DECODE_TC(decode_tc_d128, 128, false)
// decode_tc_cl (sm_90): decode_tc launched as thread-block clusters of gridDim.x = splits blocks, one cluster per
// (batch row, kv head) group. Each block writes its piece (M, l and the unnormalized O, 8 rows) into slot `rank`
// past the ring of the leader (rank 0) through distributed shared memory; after the cluster barrier the
// leader merges the slots in rank order (deterministic) and writes out and lse: one launch, no workspace, no
// counter. Dynamic shared memory: the ring + splits x 8 x (D + 2) floats. gpu.py uses it only where every
// cluster of the grid is resident at once (cuOccupancyMaxActiveClusters).
DECODE_TC(decode_tc_cl_d64, 64, true) DECODE_TC(decode_tc_cl_d128, 128, true)
DECODE_MERGE(64) DECODE_MERGE(128)
}
