// linear_scan.cu: h_t = a_t*h_{t-1} + b_t along each of S sequences of length L, in one pass over memory.
//
// The scan of the pairs (a_t, b_t) under (a0, b0) o (a1, b1) = (a1*a0, a1*b0 + b1), identity (1, 0).
//
// Layout: a, b, h contiguous (S, L); h0 (S,). The sequences are cut into tiles of TILE elements (a tile
// never straddles two sequences; the last tile of a sequence is partial and padded with the identity).
// One thread block of THREADS threads per tile, tile = blockIdx.x: blocks are dispatched in index order, so
// a block only ever waits for blocks already running (the assumption CUB's single-pass scan makes too).
//
// Inside a tile (a and b staged in shared memory; registers hold one prefix pair per round):
//   warp w owns the contiguous segment [w*SEG, (w+1)*SEG) of the tile, SEG = 32*J*E; in round j (0..J-1)
//   lane l copies the E elements [(j*32 + l)*E, ... + E) of the segment with ONE 16-byte cp.async of a and
//   one of b (E = 4 floats or 2 complex64): every copy instruction of a warp reads 512 contiguous bytes, and
//   no register is held while they are in flight, so MINB = 3 blocks of 64 KB fit an SM (192 KB in flight
//   per SM, against 2 register-held tiles per SM before: 128 registers a thread).
//   1. each thread composes its E pairs of a round into one;
//   2. a warp-shuffle (Hillis-Steele, 5 steps) scan of the 32 thread aggregates, chained over the J rounds:
//      each thread keeps the exclusive prefix (xA, xB) of each of its J pieces within the warp's segment;
//   3. warp 0 scans the warp aggregates (shuffles again): the tile's aggregate is known.
//   At the end each thread re-reads its own a, b from shared memory and runs h = a*h + b over each piece
//   from the h entering it (xA*h_warp + xB). A thread reads back only what it copied itself: no barrier.
// Across tiles: a deterministic, two-level decoupled look-back. W = THREADS consecutive tiles of a sequence
// form a window, W consecutive windows a super-window (W^2 tiles: 2^29 floats at the default sizes).
// A block publishes its tile aggregate at once, then, one entry per thread, each awaited on its flag,
//   - level 1: the aggregates of the k < W tiles before it in its window,
//   - level 2: the aggregates of the windows before its own in its super-window,
// and combines each list in a FIXED order (a shuffle scan per warp, then the warp totals in order; absent
// entries are the identity (1, 0), which is exact). The last tile of a window publishes the window's
// aggregate (level-1 prefix o its own) as soon as level 1 is done, before it awaits level 2: no tile ever
// waits for a state, only for aggregates, and window aggregates never wait on one another, so there is
// no serial chain inside a super-window. Only the state entering a super-window is handed from one to the
// next (one link per 2^29 elements). h_in = P1(P2(h_super)). Every sum is formed in an order that depends
// only on the tile's index, never on timing: bitwise identical results run to run.
//
// Memory traffic: a and b read once, h written once: 12 bytes per float32 element (+ at most 2*W status
// entries per tile, from L2). Offsets are 64-bit (long long) throughout: S*L may pass 2^31.

#ifndef THREADS
#define THREADS 256
#endif
#ifndef J
#define J 8
#endif
#ifndef MINB
#define MINB 3  // __launch_bounds__ minimum blocks per SM (80 registers a thread at THREADS = 256)
#endif
#ifndef DIAG_NOLB  // 1: skip the look-back (WRONG results): a timing diagnostic of its cost only
#define DIAG_NOLB 0
#endif
#define WARPS (THREADS / 32)
#define WINDOW THREADS  // tiles per window and windows per super-window: one look-back entry per thread

struct cf { float x, y; };

__device__ __forceinline__ float one(float) { return 1.f; }
__device__ __forceinline__ float zero(float) { return 0.f; }
__device__ __forceinline__ float mul(float a, float b) { return a * b; }
__device__ __forceinline__ float mad(float a, float x, float b) { return fmaf(a, x, b); }  // a*x + b
__device__ __forceinline__ float shfl_up(float v, int d) { return __shfl_up_sync(0xffffffffu, v, d); }
__device__ __forceinline__ float shfl(float v, int l) { return __shfl_sync(0xffffffffu, v, l); }
__device__ __forceinline__ float ldcg(const float* p) { return __ldcg(p); }

__device__ __forceinline__ cf one(cf) { return {1.f, 0.f}; }
__device__ __forceinline__ cf zero(cf) { return {0.f, 0.f}; }
__device__ __forceinline__ cf mul(cf a, cf b) { return {a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x}; }
__device__ __forceinline__ cf mad(cf a, cf x, cf b)
{
    return {fmaf(a.x, x.x, fmaf(-a.y, x.y, b.x)), fmaf(a.x, x.y, fmaf(a.y, x.x, b.y))};
}
__device__ __forceinline__ cf shfl_up(cf v, int d)
{
    return {__shfl_up_sync(0xffffffffu, v.x, d), __shfl_up_sync(0xffffffffu, v.y, d)};
}
__device__ __forceinline__ cf shfl(cf v, int l)
{
    return {__shfl_sync(0xffffffffu, v.x, l), __shfl_sync(0xffffffffu, v.y, l)};
}
__device__ __forceinline__ cf ldcg(const cf* p)
{
    const float2 v = __ldcg(reinterpret_cast<const float2*>(p));
    return {v.x, v.y};
}

// (pA, pB) o (A, B): the earlier segment first
template <typename T>
__device__ __forceinline__ void compose(T pA, T pB, T& A, T& B)
{
    B = mad(A, pB, B);
    A = mul(A, pA);
}

// inclusive warp scan of the pairs (A, B) over the lanes, in lane order
template <typename T>
__device__ __forceinline__ void warp_scan(T& A, T& B, int lane)
{
#pragma unroll
    for (int d = 1; d < 32; d *= 2) {
        const T pA = shfl_up(A, d), pB = shfl_up(B, d);
        if (lane >= d) compose(pA, pB, A, B);
    }
}

template <typename T>
union Vec {
    float4 f4;
    T v[16 / sizeof(T)];
};

// cp.async of 16 bytes global -> shared (L2 only, no L1 allocation): no register holds the data in flight
__device__ __forceinline__ void cp_async16(void* sdst, const void* gsrc)
{
    const unsigned s = (unsigned)__cvta_generic_to_shared(sdst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gsrc) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

__device__ __forceinline__ void spin(const int* flag)
{
    const volatile int* f = flag;
    while (*f == 0) { }
}

// ---- two-level look-back ---------------------------------------------------------------------------------
// The state h_in entering the tile (written to *s_hin, visible after the block's next __syncthreads).
// The tile's aggregate (tA_, tB_) is already published (unless last_tile). Two-level look-back, each level
// combined in a fixed order: level 1 first, then the window aggregate is published (by the window's last
// tile) BEFORE level 2 is awaited, so window aggregates never wait on one another. Only the threads that
// wait on a flag fence. (Measured on an H100: awaiting both levels at once, with every thread fencing, was
// 15-20 % slower than this at both benchmark shapes; not profiled further.)
// One look-back level: thread i < count waits for the published pair first + i, each warp scans its pairs in
// index order and leaves its total in (sA[warp], sB[warp]). The order never depends on timing: deterministic.
template <typename T>
__device__ __forceinline__ void gather_level(const int* flag, const T* A, const T* B, long long first, int count,
                                             int t, int lane, int warp, T* sA, T* sB)
{
    T a = one(T()), b = zero(T());
    if (t < count) {
        spin(flag + first + t);
        __threadfence();
        a = ldcg(A + first + t); b = ldcg(B + first + t);
    }
    warp_scan(a, b, lane);
    if (lane == 31) { sA[warp] = a; sB[warp] = b; }
}

// Thread 0: the warps' totals of one level folded in warp order, composed after (PA, PB).
template <typename T>
__device__ __forceinline__ void fold_level(const T* sA, const T* sB, T& PA, T& PB)
{
    for (int w = 0; w < WARPS; ++w) {
        T nA = sA[w], nB = sB[w];
        compose(PA, PB, nA, nB);
        PA = nA; PB = nB;
    }
}

template <typename T>
__device__ __forceinline__ void look_back(T tA_, T tB_, long long tile, long long s, long long jt, bool last_tile,
                                          T h0s, long long windows_per_seq,
                                          long long supers_per_seq, const int* tflag, const T* tA, const T* tB,
                                          int* wflag, T* wA, T* wB, int* xflag, T* xH, T* s_hin)
{
    __shared__ T s_1A[WARPS], s_1B[WARPS];  // level 1 (tiles): per-warp totals
    __shared__ T s_2A[WARPS], s_2B[WARPS];  // level 2 (windows): per-warp totals
    __shared__ T s_PA, s_PB;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, t = threadIdx.x;
    const long long win = jt / WINDOW, sup = win / WINDOW;
#if DIAG_NOLB  // timing diagnostic only (WRONG results): no look-back at all
    if (t == 0) *s_hin = h0s;
    return;
#endif
    const int k = (int)(jt - win * WINDOW);                   // tiles before this one in its window
    const int kw = (int)(win - sup * WINDOW);                 // windows before its window in the super-window
    const long long first = tile - k;                         // first tile of the window
    const long long firstw = s * windows_per_seq + win - kw;  // first window of the super-window
    // ---- level 1: the tiles before this one in its window
    if (k > 0) {  // uniform over the block
        gather_level(tflag, tA, tB, first, k, t, lane, warp, s_1A, s_1B);
        __syncthreads();
    }
    if (t == 0) {
        T PA = one(T()), PB = zero(T());
        if (k > 0) fold_level(s_1A, s_1B, PA, PB);
        if (k == WINDOW - 1 && !last_tile) {  // last tile of its window: publish the window's aggregate
            T nA = tA_, nB = tB_;
            compose(PA, PB, nA, nB);
            wA[s * windows_per_seq + win] = nA; wB[s * windows_per_seq + win] = nB;
            __threadfence();
            atomicExch(wflag + s * windows_per_seq + win, 1);
        }
        s_PA = PA; s_PB = PB;
    }
    // ---- level 2: the windows before this one in its super-window
    if (kw > 0) gather_level(wflag, wA, wB, firstw, kw, t, lane, warp, s_2A, s_2B);
    __syncthreads();
    if (t == 0) {
        T QA = one(T()), QB = zero(T());
        if (kw > 0) fold_level(s_2A, s_2B, QA, QB);
        T hx;  // the state entering the super-window
        if (sup == 0) {
            hx = h0s;
        } else {
            spin(xflag + s * supers_per_seq + sup);
            __threadfence();
            hx = ldcg(xH + s * supers_per_seq + sup);
        }
        const T hin = mad(s_PA, mad(QA, hx, QB), s_PB);
        *s_hin = hin;
        if (k == WINDOW - 1 && kw == WINDOW - 1 && !last_tile) {  // last tile of its super-window
            xH[s * supers_per_seq + sup + 1] = mad(tA_, hin, tB_);
            __threadfence();
            atomicExch(xflag + s * supers_per_seq + sup + 1, 1);
        }
    }
}


// Warp 0 scans the warp aggregates in s_wA/s_wB (replaced by the warps' exclusive prefixes) and publishes the
// tile's aggregate (also returned in *s_tA, *s_tB). Call after a __syncthreads.
template <typename T>
__device__ __forceinline__ void block_aggregate(T* s_wA, T* s_wB, T* s_tA, T* s_tB, long long tile, bool last_tile,
                                                int* tflag, T* tA, T* tB)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (warp == 0) {
        T A = lane < WARPS ? s_wA[lane] : one(T()), B = lane < WARPS ? s_wB[lane] : zero(T());
        warp_scan(A, B, lane);
        T xA = shfl_up(A, 1), xB = shfl_up(B, 1);
        if (lane == 0) { xA = one(T()); xB = zero(T()); }
        if (lane < WARPS) { s_wA[lane] = xA; s_wB[lane] = xB; }
        if (lane == WARPS - 1) {  // the tile's aggregate: publish it at once
            *s_tA = A; *s_tB = B;
            if (!last_tile) {
                tA[tile] = A; tB[tile] = B;
                __threadfence();
                atomicExch(tflag + tile, 1);
            }
        }
    }
}

// Round r of a thread: its E pairs (ra, rb) at element i0 of the tile -> the exclusive prefix (xA, xB) of the
// thread's E pairs within the warp's segment, given the carry (cA, cB) of the rounds before (updated).
template <typename T>
__device__ __forceinline__ void round_prefix(T (&ra)[16 / sizeof(T)], T (&rb)[16 / sizeof(T)], T& cA, T& cB, T& xA,
                                             T& xB, int lane)
{
    constexpr int E = 16 / sizeof(T);
    T tA = ra[0], tB = rb[0];
#pragma unroll
    for (int e = 1; e < E; ++e) {
        T nA = ra[e], nB = rb[e];
        compose(tA, tB, nA, nB);
        tA = nA; tB = nB;
    }
    warp_scan(tA, tB, lane);
    xA = shfl_up(tA, 1); xB = shfl_up(tB, 1);  // exclusive prefix of this lane within the round
    if (lane == 0) { xA = one(T()); xB = zero(T()); }
    compose(cA, cB, xA, xB);                    // carry o exclusive
    T nA = shfl(tA, 31), nB = shfl(tB, 31);     // carry o (the whole round)
    compose(cA, cB, nA, nB);
    cA = nA; cB = nB;
}

template <typename T>
__device__ __forceinline__ void store_vec(T* ph, int i0, int valid, const T (&v)[16 / sizeof(T)], bool vec)
{
    constexpr int E = 16 / sizeof(T);
    if (vec && i0 + E <= valid) {
        Vec<T> vh;
#pragma unroll
        for (int e = 0; e < E; ++e) vh.v[e] = v[e];
        __stcs(reinterpret_cast<float4*>(ph + i0), vh.f4);
    } else {
#pragma unroll
        for (int e = 0; e < E; ++e)
            if (i0 + e < valid) ph[i0 + e] = v[e];
    }
}

// Scan one tile staged in shared memory: cp.async brings a and b in (no registers held while in flight, so
// MINB blocks fit an SM: more bytes in flight); the thread keeps only its J exclusive prefixes, and at the
// end re-reads its own a, b from shared memory and runs the recurrence h = a*h + b from h entering each of
// its E-element pieces. Each thread reads back only what it loaded itself: no barrier for the staging.
template <typename T, bool VEC>
__device__ __forceinline__ void scan_tile(const T* __restrict__ pa, const T* __restrict__ pb, T* __restrict__ ph,
                                          int valid, long long tile, long long s, long long jt,
                                          const T* __restrict__ h0, long long tiles_per_seq,
                                          long long windows_per_seq, long long supers_per_seq, int* tflag, T* tA,
                                          T* tB, int* wflag, T* wA, T* wB, int* xflag, T* xH)
{
    constexpr int E = 16 / sizeof(T);
    constexpr int SEG = 32 * J * E;
    constexpr int TILE = WARPS * SEG;
    extern __shared__ float4 s_dyn[];  // a: TILE, then b: TILE elements
    T* s_a = reinterpret_cast<T*>(s_dyn);
    T* s_b = s_a + TILE;
    __shared__ T s_wA[WARPS], s_wB[WARPS];
    __shared__ T s_tA, s_tB, s_hin;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const bool last_tile = jt + 1 == tiles_per_seq;
    const T h0s = h0[s];  // off the look-back's critical path

#pragma unroll
    for (int r = 0; r < J; ++r) {
        const int i0 = warp * SEG + (r * 32 + lane) * E;
        if (VEC && i0 + E <= valid) {
            cp_async16(s_a + i0, pa + i0);
            cp_async16(s_b + i0, pb + i0);
        } else {
#pragma unroll
            for (int e = 0; e < E; ++e) {  // past the end of the sequence: the identity (1, 0), never zeros
                const bool in = i0 + e < valid;
                s_a[i0 + e] = in ? pa[i0 + e] : one(T());
                s_b[i0 + e] = in ? pb[i0 + e] : zero(T());
            }
        }
    }
    cp_async_wait_all();

    T xA[J], xB[J];
    T cA = one(T()), cB = zero(T());
#pragma unroll
    for (int r = 0; r < J; ++r) {
        const int i0 = warp * SEG + (r * 32 + lane) * E;
        Vec<T> va, vb;
        va.f4 = *reinterpret_cast<const float4*>(s_a + i0);
        vb.f4 = *reinterpret_cast<const float4*>(s_b + i0);
        round_prefix(va.v, vb.v, cA, cB, xA[r], xB[r], lane);
    }
    if (lane == 0) { s_wA[warp] = cA; s_wB[warp] = cB; }
    __syncthreads();
    block_aggregate(s_wA, s_wB, &s_tA, &s_tB, tile, last_tile, tflag, tA, tB);
    __syncthreads();
    look_back(s_tA, s_tB, tile, s, jt, last_tile, h0s, windows_per_seq, supers_per_seq, tflag, tA, tB, wflag, wA,
              wB, xflag, xH, &s_hin);
    __syncthreads();

    // ---- write h from the h entering each thread's piece: h = a*h + b, 16-byte streaming stores ----------
    const T hw = mad(s_wA[warp], s_hin, s_wB[warp]);
#pragma unroll
    for (int r = 0; r < J; ++r) {
        const int i0 = warp * SEG + (r * 32 + lane) * E;
        Vec<T> va, vb;
        va.f4 = *reinterpret_cast<const float4*>(s_a + i0);
        vb.f4 = *reinterpret_cast<const float4*>(s_b + i0);
        T v[E];
        T hc = mad(xA[r], hw, xB[r]);  // h before this thread's E elements of round r
#pragma unroll
        for (int e = 0; e < E; ++e) { hc = mad(va.v[e], hc, vb.v[e]); v[e] = hc; }
        store_vec(ph, i0, valid, v, VEC);
    }
}

// one block per tile, tile = blockIdx.x
template <typename T, bool VEC>
__device__ __forceinline__ void linear_scan_tile(const T* __restrict__ a, const T* __restrict__ b,
                                                 const T* __restrict__ h0, T* __restrict__ h, long long L,
                                                 long long tiles_per_seq, long long windows_per_seq,
                                                 long long supers_per_seq, int* tflag, T* tA, T* tB,
                                                 int* wflag, T* wA, T* wB, int* xflag, T* xH)
{
    constexpr int TILE = WARPS * 32 * J * (16 / sizeof(T));
    const long long tile = blockIdx.x;
    const long long s = tile / tiles_per_seq, jt = tile - s * tiles_per_seq;
    const long long start = s * L + jt * TILE;
    const long long rem = L - jt * TILE;
    scan_tile<T, VEC>(a + start, b + start, h + start, rem < TILE ? (int)rem : TILE, tile, s, jt, h0,
                             tiles_per_seq, windows_per_seq, supers_per_seq, tflag, tA, tB, wflag, wA, wB, xflag, xH);
}

#define ARGS(T)                                                                                              \
    const T *a, const T *b, const T *h0, T *h, long long L, long long tiles_per_seq, long long windows_per_seq, \
        long long supers_per_seq, int *tflag, T *tA, T *tB, int *wflag, T *wA, T *wB, int *xflag, T *xH
#define PASS a, b, h0, h, L, tiles_per_seq, windows_per_seq, supers_per_seq, tflag, tA, tB, wflag, wA, wB, xflag, xH

extern "C" {
__global__ void __launch_bounds__(THREADS, MINB) linear_scan_f32_vec(ARGS(float)) { linear_scan_tile<float, true>(PASS); }
__global__ void __launch_bounds__(THREADS, MINB) linear_scan_f32(ARGS(float)) { linear_scan_tile<float, false>(PASS); }
__global__ void __launch_bounds__(THREADS, MINB) linear_scan_c64_vec(ARGS(cf)) { linear_scan_tile<cf, true>(PASS); }
__global__ void __launch_bounds__(THREADS, MINB) linear_scan_c64(ARGS(cf)) { linear_scan_tile<cf, false>(PASS); }
}
