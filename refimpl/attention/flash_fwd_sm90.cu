// flash_fwd_sm90.cu: FlashAttention-3-style forward pass for Hopper (sm_90a): warpgroup MMA (wgmma), fp16 inputs,
// fp32 accumulation. Same function, arguments and results as flash_fwd.cu (which stays the fallback for other
// devices); gpu.py compiles this file with NVRTC for sm_90a and uses it for float16 prefill with d in {64, 128}
// on compute capability 9.0.
//
// Layout. q (b, s_q, h, D), out (b, s_q, h, D) fp16; lse (b, h, s_q) fp32 (natural log of the scaled scores);
// k and v (b, s_cache, h_k, D) fp16 with batch stride kv_batch_stride elements; row b has kv_len[b] keys.
// Query head hh reads kv head hh / (h / h_k). Causal: query i sees keys j <= i + kv_len[b] - s_q (bottom-right).
//
// Grid: one block per (BM = 128 queries, query head, batch row), heaviest causal blocks first (F90_ORDER 0:
// x = query block, y = head; 1: x = head, y = query block). Block: 2 warpgroups (256 threads); warpgroup w owns
// query rows [64w, 64w + 64) of the block, all D output columns and the online-softmax state of its rows. In a
// warpgroup, warp u holds rows [16u, 16u + 16) of the wgmma accumulators (each thread rows g and g + 8,
// g = lane / 4, columns 8n + 2 (lane % 4) + {0, 1}), the same layout as two m16n8 mma.sync tiles.
//
// Keys are visited in tiles of BN = 128. Shared memory: Q (BM x D), and rings of F90_STAGES K tiles and
// F90_STAGES V tiles (BN x D each), filled by cp.async from all 256 threads (rows past kv_len zero-filled).
// Every tile is stored in wgmma's 128-byte-swizzle layout: D is cut into D / 64 column blocks of 64 halves
// (128 bytes); in each block row r is 128 bytes at r * 128 and its 16-byte chunk c sits at chunk c ^ (r mod 8)
// (tiles start on 1024-byte boundaries, where the swizzle pattern repeats). The matrix descriptors read it as:
//   S = Q K^T   A = Q and B = K both K-major (d contiguous): wgmma m64n128k16, A and B from shared memory;
//   O += P V    A = P from registers (the S accumulator rounded to fp16: its layout is the A-fragment layout),
//               B = V N-major (d contiguous, keys strided; the transpose flag): wgmma m64nDk16.
// Iteration j (FlashAttention-3's intra-warpgroup overlap): issue S_j = Q K_j^T and O += P_{j-1} V_{j-1}, wait
// for S_j only, do the online softmax of S_j (scores in log2 units: m' = max(m, rowmax(S) scale log2 e),
// alpha = 2^(m - m'), P = 2^(S scale log2 e - m') as one FFMA and one ex2, l = alpha l + rowsum P) while
// P_{j-1} V_{j-1} runs on the tensor cores, then wait for it, O *= alpha, and round P_j to fp16 for the next
// iteration. The first and the last iteration are peeled off, so that every wgmma wait is unconditional.
// Ring slots (load group j = K_j and V_{j-1}, the tiles iteration j reads), F90_SYNC 1 (the default): an mbarrier
// "full" per slot completes when all 256 threads' cp.async of the group have landed (cp.async.mbarrier.arrive
// .noinc); each thread then fences (fence.proxy.async: cp.async writes are generic-proxy writes, wgmma reads
// through the async proxy). An mbarrier "empty" per slot completes when all threads are done with iteration j;
// a thread waits on it before it copies group j + S - 1 (S = F90_STAGES) into the slots of K_{j-1} and V_{j-2}.
// No block-wide barrier in the loop: the two warpgroups drift apart, and one's softmax overlaps the other's
// wgmmas. F90_SYNC 0: one __syncthreads per iteration instead. At the end O / l is written as fp16 and
// lse = (m + log2 l) ln 2; a row that sees no key writes 0 and -inf. Offsets into global memory are 64-bit.
// No header is included (NVRTC compiles it on the device): halves are moved as raw 16-bit words and packed with cvt.
//
// Measured on the H100 (b1 h32 d128 causal, TFLOP/s, torch SDPA in the same process ~490 at L 4096 and ~575 at
// 16384; .scratch notes in the report): defaults (F90_STAGES 2, F90_SYNC 1, order by size) 450 / 490;
// __syncthreads per tile 393 / 387; F90_STAGES 3 or F90_LATELOAD 1 (copies issued after the softmax, which
// frees registers so that ptxas keeps the exponentials ahead of the P V wait) 431 / 455; F90_PINGPONG 1 (the
// warpgroups take turns to issue, named barriers) 448 / 467; flash_fwd.cu (mma.sync) 247 / 300.

#ifndef F90_STAGES
#define F90_STAGES 2  // K and V tiles in flight (2 or 3 for D = 128: Q 32 KB + 2 x 32 KB per stage)
#endif
#ifndef F90_SYNC
#define F90_SYNC 1  // 1: mbarriers per ring slot (full: cp.async landed, empty: read); 0: __syncthreads per tile
#endif
#ifndef F90_LATELOAD
#define F90_LATELOAD 0  // 1: issue the next tiles' copies after the softmax instead of before it
#endif
#ifndef F90_PINGPONG
#define F90_PINGPONG 0  // 1 (with F90_SYNC 1): the warpgroups take turns to issue their wgmmas (named barriers)
#endif
#ifndef F90_ORDER
#define F90_ORDER 0  // block order: 0 query block fastest (a head's blocks together), 1 head fastest
#endif

namespace {

constexpr int BM = 128, BN = 128, NT = 256, S = F90_STAGES;
#define NEG_INF (-__int_as_float(0x7f800000))


__device__ __forceinline__ unsigned smem_u32(const void* p)
{
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, bool valid)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
// generic-proxy writes (cp.async) made visible to the async proxy (wgmma operands in shared memory)
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait()
{
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// pin accumulator registers after a wait: the compiler may not read them before it (wgmma writes them async)
template <int N> __device__ __forceinline__ void fence_regs(float (&r)[N])
{
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

#if F90_SYNC
__device__ __forceinline__ void mbar_init(unsigned bar, unsigned count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(unsigned bar)
{
    asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(bar) : "memory");
}
// the barrier's current phase counts one arrival of this thread once all its earlier cp.async have landed
__device__ __forceinline__ void cp_async_mbar_arrive(unsigned bar)
{
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity)
{
    unsigned done;
    do {
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     "selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done) : "r"(bar), "r"(parity) : "memory");
    } while (!done);
}

#endif
#if F90_PINGPONG
// named barriers 1 and 2 (0 is __syncthreads): warpgroup w waits on 1 + w for its turn, hands it on to the other
__device__ __forceinline__ void named_sync(int id) { asm volatile("bar.sync %0, 256;\n" ::"r"(id) : "memory"); }
__device__ __forceinline__ void named_arrive(int id) { asm volatile("bar.arrive %0, 256;\n" ::"r"(id) : "memory"); }
#endif

// matrix descriptor of a 128-byte-swizzle operand: start address, leading and stride byte offsets (16-byte units)
__device__ __forceinline__ unsigned long long desc(unsigned addr, unsigned lbo, unsigned sbo)
{
    return (unsigned long long)((addr & 0x3FFFF) >> 4) | ((unsigned long long)(lbo >> 4) << 16) |
           ((unsigned long long)(sbo >> 4) << 32) | (1ull << 62);
}

__device__ __forceinline__ float ex2(float x)  // 2^x; -inf gives 0
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ unsigned pack_half2(float lo, float hi)
{
    unsigned r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// copy rows [0, ROWS) of a D-wide tile whose row r lives at g + r * row_stride into the swizzled layout at
// shared address dst; rows r >= n_valid are zero-filled (and their source address is never formed)
template <int D, int ROWS>
__device__ __forceinline__ void load_tile(unsigned dst, const unsigned short* g, long long row_stride, int n_valid)
{
    constexpr int CH = D / 8;  // 16-byte chunks per row
    static_assert(ROWS * CH % NT == 0, "tile chunks must divide among the threads");
#pragma unroll
    for (int it = 0; it < ROWS * CH / NT; ++it) {
        const int idx = threadIdx.x + it * NT, r = idx / CH, ch = idx % CH;
        const bool ok = r < n_valid;
        const unsigned off = (ch >> 3) * (ROWS * 128) + r * 128 + (((ch & 7) ^ (r & 7)) << 4);
        cp_async16(dst + off, g + (ok ? r * row_stride : 0) + ch * 8, ok);
    }
}

// The accumulator operands of a wgmma: 32 or 64 fp32 registers, each read and written ("+f"), and their
// operand numbers in the instruction's text.
#define ACC8(d, i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
                   "+f"(d[i + 6]), "+f"(d[i + 7])
#define ACC32(d) ACC8(d, 0), ACC8(d, 8), ACC8(d, 16), ACC8(d, 24)
#define ACC64(d) ACC32(d), ACC8(d, 32), ACC8(d, 40), ACC8(d, 48), ACC8(d, 56)
#define REGS32 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
               "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define REGS64 REGS32 ", %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
               "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"

// D (64 x 128 fp32) (+)= A B^T: A (64 x 16) and B (128 x 16) K-major in shared memory (descriptors)
__device__ __forceinline__ void wgmma_ss_n128(float (&d)[64], unsigned long long da, unsigned long long db,
                                           int accumulate)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {" REGS64 "}, %64, %65, p, 1, 1, 0, 0;\n}\n"
                 : ACC64(d)
                 : "l"(da), "l"(db), "r"(accumulate));
}

// D (64 x 128 fp32) += A B: A (64 x 16 fp16) in registers, B (16 x 128) N-major in shared memory (trans-b 1)
__device__ __forceinline__ void wgmma_rs_n128(float (&d)[64], const unsigned (&a)[4], unsigned long long db)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {" REGS64 "}, {%64, %65, %66, %67}, %68, p, "
                 "1, 1, 1;\n}\n"
                 : ACC64(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

// D (64 x 64 fp32) += A B: A (64 x 16 fp16) in registers, B (16 x 64) N-major in shared memory (trans-b 1)
__device__ __forceinline__ void wgmma_rs_n64(float (&d)[32], const unsigned (&a)[4], unsigned long long db)
{
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {" REGS32 "}, {%32, %33, %34, %35}, %36, p, "
                 "1, 1, 1;\n}\n"
                 : ACC32(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

template <int D> struct PV;  // O += P V for the head dimension D
template <> struct PV<128> {
    __device__ static void mma(float (&o)[64], const unsigned (&a)[4], unsigned long long db)
    { wgmma_rs_n128(o, a, db); }
};
template <> struct PV<64> {
    __device__ static void mma(float (&o)[32], const unsigned (&a)[4], unsigned long long db)
    { wgmma_rs_n64(o, a, db); }
};

template <bool B> struct Bool { static constexpr bool value = B; };

}  // namespace

template <int D>
__device__ __forceinline__ void flash_fwd_sm90(const unsigned short* __restrict__ q,
                                               const unsigned short* __restrict__ k,
                                               const unsigned short* __restrict__ v, unsigned short* __restrict__ out,
                                               float* __restrict__ lse, const int* __restrict__ kv_len, int s_q, int h,
                                               int h_k, long long kv_batch_stride, float scale_log2, int causal)
{
    constexpr unsigned TILE = BN * D * 2;  // bytes of one K or V tile
    extern __shared__ __align__(1024) unsigned char smem_raw[];  // BM D + 2 S BN D halves, 2 S mbarriers, 1 KB
    const unsigned sQ = (smem_u32(smem_raw) + 1023u) & ~1023u;
    const unsigned sK = sQ + BM * D * 2, sV = sK + S * TILE;
#if F90_SYNC
    const unsigned full = sV + S * TILE, empty = full + S * 8;  // one mbarrier of each per slot
#endif

    const int tid = threadIdx.x, wg = tid >> 7, lane = tid & 31, warp = (tid >> 5) & 3;
    const int g = lane >> 2, t = lane & 3;
#if F90_ORDER
    const int hh = blockIdx.x, mb = gridDim.y - 1 - blockIdx.y, bi = blockIdx.z;
#else
    const int mb = gridDim.x - 1 - blockIdx.x, hh = blockIdx.y, bi = blockIdx.z;
#endif
    const int kvh = hh / (h / h_k);
    const int m0 = mb * BM;
    const int L = kv_len[bi];
    const int off = L - s_q;  // bottom-right: query i sees keys j <= i + off
    int n_end = causal ? min(L, m0 + BM + off) : L;
    if (n_end < 0) n_end = 0;
    const int ntiles = (n_end + BN - 1) / BN;

    const long long q_row_stride = (long long)h * D;
    const unsigned short* qb = q + ((long long)bi * s_q + m0) * q_row_stride + (long long)hh * D;
    const long long kv_row_stride = (long long)h_k * D;
    const unsigned short* kb = k + (long long)bi * kv_batch_stride + (long long)kvh * D;
    const unsigned short* vb = v + (long long)bi * kv_batch_stride + (long long)kvh * D;

    // load group t: K_t and V_{t-1} (iteration t reads K_t for S_t and V_{t-1} for P_{t-1} V_{t-1})
    auto load_group = [&](int tt) {
        if (tt < ntiles)
            load_tile<D, BN>(sK + (tt % S) * TILE, kb + (long long)tt * BN * kv_row_stride, kv_row_stride, L - tt * BN);
        if (tt >= 1 && tt <= ntiles) {
            const int u = tt - 1;
            load_tile<D, BN>(sV + (u % S) * TILE, vb + (long long)u * BN * kv_row_stride, kv_row_stride, L - u * BN);
        }
        cp_async_commit();
#if F90_SYNC
        cp_async_mbar_arrive(full + (tt % S) * 8);
#endif
    };
#if F90_SYNC
    if (threadIdx.x < S) {
        mbar_init(full + threadIdx.x * 8, NT);
        mbar_init(empty + threadIdx.x * 8, NT);
    }
    __syncthreads();
#endif
    load_tile<D, BM>(sQ, qb, q_row_stride, s_q - m0);
    load_group(0);  // one commit group: Q and K_0
#pragma unroll
    for (int tt = 1; tt < S - 1; ++tt) load_group(tt);

    float o[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
    float s[BN / 2];
    unsigned p[BN / 16][4];
    float m_r[2] = {NEG_INF, NEG_INF}, l_r[2] = {0.f, 0.f};
    const int row_a = m0 + wg * 64 + warp * 16 + g;  // this thread's two query rows: row_a and row_a + 8
    const unsigned qa = sQ + wg * 64 * 128;         // this warpgroup's 64 rows in each column block of Q

    // One iteration j: S_j = Q K_j^T (HAS_S) and O += P_{j-1} V_{j-1} (HAS_PV), the softmax of S_j overlapping
    // P_{j-1} V_{j-1}. The first and last iterations are peeled off (template flags) so that every wgmma wait in
    // the loop is unconditional: ptxas serializes all wgmmas when a path may read a pending accumulator.
    auto iteration = [&](int j, auto has_s, auto has_pv) {
        constexpr bool HAS_S = decltype(has_s)::value, HAS_PV = decltype(has_pv)::value;
#if F90_SYNC
        mbar_wait(full + (j % S) * 8, (j / S) & 1);  // group j (K_j, V_{j-1}) has landed, all threads' copies
        fence_proxy_async();
#else
        cp_async_wait<S - 2>();  // group j (K_j, V_{j-1}) has landed for this thread's copies
        fence_proxy_async();
        __syncthreads();  // ... for all threads; everyone is done with K_{j-1} and V_{j-2}
#endif
#if F90_PINGPONG
        named_sync(1 + wg);  // my turn: the other warpgroup has issued its wgmmas of the previous round
#endif
        wgmma_fence();
        if constexpr (HAS_S) {
            const unsigned kt = sK + (j % S) * TILE;
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                const unsigned cq = (kk >> 2) * (BM * 128) + (kk & 3) * 32;  // column block, then 16 halves in it
                const unsigned ck = (kk >> 2) * (BN * 128) + (kk & 3) * 32;
                wgmma_ss_n128(s, desc(qa + cq, 16, 1024), desc(kt + ck, 16, 1024), kk > 0);
            }
            wgmma_commit();
        }
        if constexpr (HAS_PV) {
            const unsigned vt = sV + ((j - 1) % S) * TILE;
#pragma unroll
            for (int kk = 0; kk < BN / 16; ++kk)  // 16 keys: 2 groups of 8 rows (SBO); 64-column blocks: LBO
                PV<D>::mma(o, p[kk], desc(vt + kk * 16 * 128, BN * 128, 1024));
            wgmma_commit();
        }
#if F90_PINGPONG
        named_arrive(2 - wg);  // the other warpgroup's turn
#endif
#if !F90_LATELOAD
#if F90_SYNC
        if (j >= 1) mbar_wait(empty + ((j - 1) % S) * 8, ((j - 1) / S) & 1);  // all threads are done with j - 1
#endif
        load_group(j + S - 1);  // into the slots of K_{j-1} and V_{j-2}; lands while this tile computes
#endif
        if constexpr (!HAS_S) {
#if F90_LATELOAD
            load_group(j + S - 1);
#endif
            wgmma_wait<0>();
            fence_regs(o);
            return;
        } else {
            if constexpr (HAS_PV) wgmma_wait<1>(); else wgmma_wait<0>();  // S_j is ready (P V may still run)
            fence_regs(s);

            // mask the raw scores (only the tiles that need it); scale_log2 > 0 (gpu.py sends other scales to
            // flash_fwd.cu), so the row maximum of the raw scores gives m in log2 units and P = 2^(S scale - m)
            // is one FFMA and one ex2 per score
            const int n0 = j * BN;
            const bool need_mask = (n0 + BN > L) || (causal && n0 + BN - 1 > m0 + off);
            if (need_mask) {
#pragma unroll
                for (int nb = 0; nb < BN / 8; ++nb)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int jj = n0 + nb * 8 + 2 * t + (e & 1), i = row_a + (e >> 1) * 8;
                        if (jj >= L || (causal && jj > i + off)) s[4 * nb + e] = NEG_INF;
                    }
            }
            // online softmax on the two rows
            float alpha[2];
#pragma unroll
            for (int rr = 0; rr < 2; ++rr) {
                float mx = NEG_INF;
#pragma unroll
                for (int nb = 0; nb < BN / 8; ++nb) mx = fmaxf(mx, fmaxf(s[4 * nb + 2 * rr], s[4 * nb + 2 * rr + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float m_new = fmaxf(m_r[rr], mx * scale_log2);
                const float m_use = m_new == NEG_INF ? 0.f : m_new;  // no visible key yet: keep p = 0, no NaN
                alpha[rr] = ex2(m_r[rr] - m_use);
                float sum = 0.f;
#pragma unroll
                for (int nb = 0; nb < BN / 8; ++nb) {
                    const float p0 = ex2(fmaf(s[4 * nb + 2 * rr], scale_log2, -m_use));
                    const float p1 = ex2(fmaf(s[4 * nb + 2 * rr + 1], scale_log2, -m_use));
                    s[4 * nb + 2 * rr] = p0;
                    s[4 * nb + 2 * rr + 1] = p1;
                    sum += p0 + p1;
                }
                l_r[rr] = l_r[rr] * alpha[rr] + sum;  // a partial sum over this thread's columns; reduced at the end
                m_r[rr] = m_new;
            }
#if F90_LATELOAD
            // the loads of group j + S - 1 after the softmax: their addresses are not live across it
#if F90_SYNC
            if (j >= 1) mbar_wait(empty + ((j - 1) % S) * 8, ((j - 1) / S) & 1);  // all threads are done with j - 1
#endif
            load_group(j + S - 1);
#endif
            if constexpr (HAS_PV) {
                // the softmax above should run before this wait (it is what overlaps P V): its results are pinned
                // here; ptxas still hoists the wait above the exponentials when registers run short (F90_LATELOAD)
                fence_regs(s);
                fence_regs(alpha);
                fence_regs(l_r);
                wgmma_wait<0>();  // P_{j-1} V_{j-1} is done: O and the registers of P are free
                fence_regs(o);
#pragma unroll
                for (int nb = 0; nb < D / 8; ++nb) {
                    o[4 * nb] *= alpha[0];
                    o[4 * nb + 1] *= alpha[0];
                    o[4 * nb + 2] *= alpha[1];
                    o[4 * nb + 3] *= alpha[1];
                }
            }
            // P_j as the A operand: two adjacent n8 blocks of the accumulator are one k16 A fragment
#pragma unroll
            for (int kk = 0; kk < BN / 16; ++kk) {
                p[kk][0] = pack_half2(s[8 * kk + 0], s[8 * kk + 1]);
                p[kk][1] = pack_half2(s[8 * kk + 2], s[8 * kk + 3]);
                p[kk][2] = pack_half2(s[8 * kk + 4], s[8 * kk + 5]);
                p[kk][3] = pack_half2(s[8 * kk + 6], s[8 * kk + 7]);
            }
#if F90_SYNC
            mbar_arrive(empty + (j % S) * 8);  // this thread is done with K_j and V_{j-1}
#endif
        }
    };
#if F90_PINGPONG
    if (wg == 1) named_arrive(1);  // warpgroup 0 goes first
#endif
    if (ntiles > 0) {
        iteration(0, Bool<true>(), Bool<false>());
        for (int j = 1; j < ntiles; ++j) iteration(j, Bool<true>(), Bool<true>());
        iteration(ntiles, Bool<false>(), Bool<true>());
    }
#if F90_PINGPONG
    if (wg == 0) named_sync(1);  // consume warpgroup 1's last hand-over: the barrier counts balance
#endif
    cp_async_wait<0>();

#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        float l = l_r[rr];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        const int i = row_a + rr * 8;
        if (i >= s_q) continue;
        const float inv = l > 0.f ? 1.f / l : 0.f;
        unsigned short* op = out + ((long long)bi * s_q + i) * q_row_stride + (long long)hh * D;
#pragma unroll
        for (int nb = 0; nb < D / 8; ++nb)
            *reinterpret_cast<unsigned*>(op + nb * 8 + 2 * t) =
                pack_half2(o[4 * nb + 2 * rr] * inv, o[4 * nb + 2 * rr + 1] * inv);
        if (t == 0)
            lse[((long long)bi * h + hh) * s_q + i] = l > 0.f ? (m_r[rr] + __log2f(l)) * 0.6931471805599453f : NEG_INF;
    }
}

extern "C" {
__global__ void __launch_bounds__(NT, 1)
    flash_fwd_sm90_d64(const unsigned short* q, const unsigned short* k, const unsigned short* v, unsigned short* out,
                       float* lse, const int* kv_len, int s_q, int h, int h_k, long long kv_batch_stride,
                       float scale_log2, int causal)
{ flash_fwd_sm90<64>(q, k, v, out, lse, kv_len, s_q, h, h_k, kv_batch_stride, scale_log2, causal); }

__global__ void __launch_bounds__(NT, 1)
    flash_fwd_sm90_d128(const unsigned short* q, const unsigned short* k, const unsigned short* v, unsigned short* out,
                        float* lse, const int* kv_len, int s_q, int h, int h_k, long long kv_batch_stride,
                        float scale_log2, int causal)
{ flash_fwd_sm90<128>(q, k, v, out, lse, kv_len, s_q, h, h_k, kv_batch_stride, scale_log2, causal); }
}
