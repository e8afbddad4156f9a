// linear_scan.cu: h_t = a_t*h_{t-1} + b_t along each of S sequences of length L, in one pass over memory.
//
// The scan of the pairs (a_t, b_t) under (a0, b0) o (a1, b1) = (a1*a0, a1*b0 + b1), identity (1, 0).
//
// Layout: a, b, h contiguous (S, L); h0 (S,), or null for zeros. The sequences are cut into tiles of TILE
// elements (a tile never straddles two sequences; the last tile of a sequence is partial and padded with the
// identity).
//
// One thread block of THREADS threads per tile, tile = blockIdx.x: blocks are dispatched in index order, so
// a block only ever waits for blocks already running (the assumption CUB's single-pass scan makes too).
// MINB blocks of 2*TILE elements of shared memory share an SM: while some wait on their look-back, others
// stream their tiles in.
//
// Inside a tile: warp w owns the contiguous segment [w*SEG, (w+1)*SEG), SEG = 32*J*E; in round j (0..J-1)
// lane l copies the E elements [(j*32 + l)*E, ... + E) of the segment with ONE 16-byte cp.async of a and one
// of b (E = 4 floats or 2 complex64): every copy instruction of a warp reads 512 contiguous bytes. A thread
// reads back only what it copied itself, so cp.async.wait_group alone orders the staging: no barrier.
//   1. each thread composes its E pairs of a round into one;
//   2. a warp-shuffle (Hillis-Steele, 5 steps) scan of the 32 thread aggregates, chained over the J rounds:
//      each thread keeps the exclusive prefix (xA, xB) of each of its J pieces within the warp's segment;
//   3. warp 0 scans the warp aggregates (shuffles again): the tile's aggregate is known and published.
//   At the end each thread re-reads its own a, b and runs h = a*h + b over each piece from the h entering it
//   (xA*h_warp + xB), storing 16 bytes at a time (streaming stores).
//
// Across tiles: a deterministic, two-level decoupled look-back. W = WINDOW (<= THREADS) consecutive tiles of a
// sequence form a window, W consecutive windows a super-window (W^2 tiles: 2^23 floats at the sizes gpu.py sets).
// A block publishes its tile aggregate at once, then, one entry per thread, each awaited,
//   - level 1: the aggregates of the k < W tiles before it in its window,
//   - level 2: the aggregates of the windows before its own in its super-window,
// and combines each list in a FIXED order (a shuffle scan per warp, then the warp totals in order; absent
// entries are the identity (1, 0), which is exact). The last tile of a window publishes the window's
// aggregate (level-1 prefix o its own) as soon as level 1 is done, before it awaits level 2: no tile ever
// waits for a state, only for aggregates, and window aggregates never wait on one another, so there is
// no serial chain inside a super-window. Only the state entering a super-window is handed from one to the
// next. h_in = P1(P2(h_super)). Every sum is formed in an order that depends only on the tile's index, never
// on timing: bitwise identical results run to run.
//
// What a single long sequence pays (H100, 2^28 floats): every tile needs every earlier tile's aggregate, so a
// tile whose copy lands late holds up all the tiles after it, which then sit on their shared memory without
// copying anything. With the waits switched off (DIAG_NO_WAIT, wrong results) the kernel runs at 94-97% of
// copy, with them 85-87%; many sequences of 16 tiles, where a late tile holds up at most 15, run at 101%.
// Three things shorten the wait: the look-back's words are loaded as the block starts (EARLY, +1.5 points),
// windows of 32 tiles rather than 128 (+1 point), and tiles of 8192 rather than 4096 (3 blocks of 64 KB per SM
// rather than 6 of 32 KB: half as many tiles to wait on; +1.5 points).
//
// Published entries are 8-byte words, each stored and loaded whole (an aligned 8-byte access is
// single-copy atomic; 16-byte ones are not): a float32 pair (A, B) is one word, a complex64 pair two words
// (A) and (B), a state one word. The launcher fills them with 0xFF bytes; a word whose first 32 bits are
// NOT_READY (0xFFFFFFFF, a NaN bit pattern that GPU arithmetic never produces, and that the writer maps to
// the canonical NaN should it ever meet it) has not been written yet. So a reader needs no flag and no
// fence: it sees either NOT_READY or the whole value.
//
// Memory traffic: a and b read once, h written once: 12 bytes per float32 element (+ at most 2*W entries
// per tile, from L2). Offsets are 64-bit (long long) throughout: S*L may pass 2^31.

#ifndef THREADS
#define THREADS 128
#endif
#ifndef J
#define J 16
#endif
#ifndef MINB
#define MINB 3  // __launch_bounds__ minimum blocks per SM (64 KB of shared memory each)
#endif
#ifndef BACKOFF
#define BACKOFF 1  // 0: poll the look-back's words without sleeping (kept to measure the difference)
#endif
#ifndef EARLY
#define EARLY 1  // 0: load the look-back's words only when the look-back starts (kept to measure the difference)
#endif
#define WARPS (THREADS / 32)
#ifndef WINDOW
#define WINDOW THREADS  // tiles per window and windows per super-window: at most one look-back entry per thread
#endif
static_assert(WINDOW <= THREADS, "one look-back entry per thread at most");
#define LB_WARPS ((WINDOW + 31) / 32)  // the warps that hold look-back entries
#ifndef DIAG_NO_WAIT
#define DIAG_NO_WAIT 0  // bits 1, 2, 4: never wait for level 1, level 2, the state (WRONG results; measures waiting)
#endif
#define NOT_READY 0xFFFFFFFFu

struct cf { float x, y; };

__device__ __forceinline__ float one(float) { return 1.f; }
__device__ __forceinline__ float zero(float) { return 0.f; }
__device__ __forceinline__ float mul(float a, float b) { return a * b; }
__device__ __forceinline__ float mad(float a, float x, float b) { return fmaf(a, x, b); }  // a*x + b
__device__ __forceinline__ float shfl_up(float v, int d) { return __shfl_up_sync(0xffffffffu, v, d); }
__device__ __forceinline__ float shfl(float v, int l) { return __shfl_sync(0xffffffffu, v, l); }

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
// cp.async of one element (4 or 8 bytes): the path for unaligned rows
template <int BYTES>
__device__ __forceinline__ void cp_async_small(void* sdst, const void* gsrc)
{
    const unsigned s = (unsigned)__cvta_generic_to_shared(sdst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(s), "l"(gsrc), "n"(BYTES) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }


// ---- published entries: 8-byte words --------------------------------------------------------------------
typedef unsigned long long word;

__device__ __forceinline__ void put_word(word* p, float x, float y)
{
    unsigned ux = __float_as_uint(x);
    if (ux == NOT_READY) ux = 0x7FFFFFFFu;  // the canonical NaN: NOT_READY is never published
    const word w = (word)ux | ((word)__float_as_uint(y) << 32);
    asm volatile("st.relaxed.gpu.global.b64 [%0], %1;\n" ::"l"(p), "l"(w) : "memory");
}

__device__ __forceinline__ word load_word(const word* p)
{
    word w;
    asm volatile("ld.relaxed.gpu.global.b64 %0, [%1];\n" : "=l"(w) : "l"(p) : "memory");
    return w;
}

// Poll until written, sleeping between polls (8 ns doubling to 256 ns): hundreds of blocks may wait at once,
// and polling flat out fills L2 with requests that slow down the very tiles being waited for.
__device__ __forceinline__ word await_word(const word* p)
{
    word w = load_word(p);
#if BACKOFF
    for (unsigned ns = 8; (unsigned)w == NOT_READY; ns = ns < 256 ? 2 * ns : ns) {
        __nanosleep(ns);
        w = load_word(p);
    }
#else
    while ((unsigned)w == NOT_READY) w = load_word(p);
#endif
    return w;
}

__device__ __forceinline__ float lo(word w) { return __uint_as_float((unsigned)w); }
__device__ __forceinline__ float hi(word w) { return __uint_as_float((unsigned)(w >> 32)); }

// words per published pair (A, B): one for float32, two for complex64
template <typename T> struct Words { static constexpr int PAIR = sizeof(T) / 4; };

__device__ __forceinline__ void put_pair(word* p, float A, float B) { put_word(p, A, B); }
__device__ __forceinline__ void put_pair(word* p, cf A, cf B) { put_word(p, A.x, A.y); put_word(p + 1, B.x, B.y); }
__device__ __forceinline__ void put_state(word* p, float h) { put_word(p, h, 0.f); }
__device__ __forceinline__ void put_state(word* p, cf h) { put_word(p, h.x, h.y); }
// A word loaded early (before the tile's own copy has landed) is used as it is when already written, and
// awaited again only when not: the look-back's round trip to L2 overlaps the copy.
__device__ __forceinline__ word settle(const word* p, word early, int level = 0)
{
    return (unsigned)early == NOT_READY && !(DIAG_NO_WAIT & level) ? await_word(p) : early;
}
__device__ __forceinline__ void pair_from(const word* w, float& A, float& B) { A = lo(w[0]); B = hi(w[0]); }
__device__ __forceinline__ void pair_from(const word* w, cf& A, cf& B)
{
    A = {lo(w[0]), hi(w[0])}; B = {lo(w[1]), hi(w[1])};
}
__device__ __forceinline__ void state_from(word w, float& h) { h = lo(w); }
__device__ __forceinline__ void state_from(word w, cf& h) { h = {lo(w), hi(w)}; }

// ---- two-level look-back ---------------------------------------------------------------------------------
// One look-back level: thread i < count awaits the published pair first + i, each warp scans its pairs in
// index order and leaves its total in (sA[warp], sB[warp]). The order never depends on timing: deterministic.
// pre: the thread's words as loaded early (NOT_READY where not yet written, or not loaded).
template <typename T>
__device__ __forceinline__ void gather_level(const word* pairs, long long first, int count, const word* pre, int t,
                                             int lane, int warp, T* sA, T* sB, int level)
{
    T a = one(T()), b = zero(T());
    if (t < count) {
        word v[Words<T>::PAIR];
#pragma unroll
        for (int i = 0; i < Words<T>::PAIR; ++i)
            v[i] = settle(pairs + (first + t) * Words<T>::PAIR + i, pre[i], level);
        pair_from(v, a, b);
    }
    warp_scan(a, b, lane);
    if (lane == 31) { sA[warp] = a; sB[warp] = b; }
}

// Thread 0: the warps' totals of one level folded in warp order, composed after (PA, PB).
template <typename T>
__device__ __forceinline__ void fold_level(const T* sA, const T* sB, T& PA, T& PB)
{
    for (int w = 0; w < LB_WARPS; ++w) {
        T nA = sA[w], nB = sB[w];
        compose(PA, PB, nA, nB);
        PA = nA; PB = nB;
    }
}

// Where a tile sits: sequence s, tile jt of the sequence, window and super-window, and the scratch words.
struct Where {
    long long tile, s, jt, tiles_per_seq, windows_per_seq, supers_per_seq;
    bool last_tile;
};

// The tile's look-back: k tiles before it in its window, kw windows before its window in its super-window
// (uniform over the block), this window's entry wi and this super-window's entering state xi.
struct Back {
    long long wi, xi;
    int k, kw;
    bool publisher;  // the last tile of a window (and not of its sequence) publishes the window's aggregate
};

__device__ __forceinline__ Back back_of(const Where& w)
{
    Back g;
    const long long win = w.jt / WINDOW, sup = win / WINDOW;
    g.k = (int)(w.jt - win * WINDOW);
    g.kw = (int)(win - sup * WINDOW);
    g.wi = w.s * w.windows_per_seq + win;
    g.xi = sup > 0 ? w.s * w.supers_per_seq + sup : -1;  // -1: the first super-window starts from h0
    g.publisher = g.k == WINDOW - 1 && !w.last_tile;
    return g;
}

// The words a thread awaits in the look-back (thread t: level-1 entry t, level-2 entry t, thread 0 the state),
// loaded as the block starts, while its tile is still being copied in. Most are written by then; the
// look-back re-polls only those that were not, and so usually costs no round trip to L2 at all.
template <typename T>
struct Early {
    word l1[Words<T>::PAIR], l2[Words<T>::PAIR], st;
};

template <typename T>
__device__ __forceinline__ Early<T> load_early(const Where& w, const Back& g, const word* tpairs,
                                               const word* wpairs, const word* states)
{
    constexpr int P = Words<T>::PAIR;
    const int t = threadIdx.x;
    Early<T> e;
#pragma unroll
    for (int i = 0; i < P; ++i) {
        e.l1[i] = EARLY && t < g.k ? load_word(tpairs + (w.tile - g.k + t) * P + i) : (word)NOT_READY;
        e.l2[i] = EARLY && t < g.kw ? load_word(wpairs + (g.wi - g.kw + t) * P + i) : (word)NOT_READY;
    }
    e.st = EARLY && t == 0 && g.xi >= 0 ? load_word(states + g.xi) : (word)NOT_READY;
    return e;
}

// The state h_in entering the tile, written to *s_hin (visible after the block's next __syncthreads). The
// tile's aggregate (tA_, tB_) is already published (unless last_tile). The last tile of a window publishes
// the window's aggregate from level 1 alone, BEFORE it awaits level 2, so window aggregates never wait on
// one another; every other tile awaits both levels at once (one round trip to L2 and one barrier fewer).
// The folds are the same either way: only the waiting differs.
template <typename T>
__device__ __forceinline__ void look_back(T tA_, T tB_, const Where& w, const Back& g, const Early<T>& e, T h0s,
                                          const word* tpairs, word* wpairs, word* states, T* s_hin)
{
    __shared__ T s_1A[WARPS], s_1B[WARPS];  // level 1 (tiles): per-warp totals
    __shared__ T s_2A[WARPS], s_2B[WARPS];  // level 2 (windows): per-warp totals
    __shared__ T s_PA, s_PB;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, t = threadIdx.x;
    const int k = g.k, kw = g.kw;
    const bool publisher = g.publisher;
    // level 1: the tiles before this one in its window; level 2: the windows before its own in its super-window
    if (k > 0) gather_level(tpairs, w.tile - k, k, e.l1, t, lane, warp, s_1A, s_1B, 1);
    if (kw > 0 && !publisher) gather_level(wpairs, g.wi - kw, kw, e.l2, t, lane, warp, s_2A, s_2B, 2);
    __syncthreads();
    if (publisher) {
        if (t == 0) {
            T PA = one(T()), PB = zero(T());
            if (k > 0) fold_level(s_1A, s_1B, PA, PB);
            T nA = tA_, nB = tB_;
            compose(PA, PB, nA, nB);
            put_pair(wpairs + g.wi * Words<T>::PAIR, nA, nB);  // the window's aggregate
            s_PA = PA; s_PB = PB;
        }
        if (kw > 0) gather_level(wpairs, g.wi - kw, kw, e.l2, t, lane, warp, s_2A, s_2B, 2);
        __syncthreads();
    }
    if (t == 0) {
        T PA = one(T()), PB = zero(T());
        if (publisher) {
            PA = s_PA; PB = s_PB;
        } else if (k > 0) {
            fold_level(s_1A, s_1B, PA, PB);
        }
        T QA = one(T()), QB = zero(T());
        if (kw > 0) fold_level(s_2A, s_2B, QA, QB);
        T hx = h0s;  // the state entering the super-window
        if (g.xi >= 0) state_from(settle(states + g.xi, e.st, 4), hx);
        const T hin = mad(PA, mad(QA, hx, QB), PB);
        *s_hin = hin;
        if (publisher && kw == WINDOW - 1)  // last tile of its super-window: hand the state to the next one
            put_state(states + w.s * w.supers_per_seq + (w.jt / WINDOW) / WINDOW + 1, mad(tA_, hin, tB_));
    }
}

// Warp 0 scans the warp aggregates in s_wA/s_wB (replaced by the warps' exclusive prefixes) and publishes the
// tile's aggregate (also returned in *s_tA, *s_tB). Call after a __syncthreads.
template <typename T>
__device__ __forceinline__ void block_aggregate(T* s_wA, T* s_wB, T* s_tA, T* s_tB, const Where& w, word* tpairs)
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
            if (!w.last_tile) put_pair(tpairs + w.tile * Words<T>::PAIR, A, B);
        }
    }
}

// Round r of a thread: its E pairs (ra, rb) -> the exclusive prefix (xA, xB) of the thread's E pairs within
// the warp's segment, given the carry (cA, cB) of the rounds before (updated).
template <typename T>
__device__ __forceinline__ void round_prefix(const T (&ra)[16 / sizeof(T)], const T (&rb)[16 / sizeof(T)], T& cA,
                                             T& cB, T& xA, T& xB, int lane)
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

// The tile's geometry: its first element and how many of its TILE elements lie in the sequence.
template <int TILE>
__device__ __forceinline__ Where where(long long tile, long long L, long long tiles_per_seq,
                                      long long windows_per_seq, long long supers_per_seq, long long& start,
                                      int& valid)
{
    Where w;
    w.tile = tile; w.tiles_per_seq = tiles_per_seq;
    w.windows_per_seq = windows_per_seq; w.supers_per_seq = supers_per_seq;
    w.s = tile / tiles_per_seq;
    w.jt = tile - w.s * tiles_per_seq;
    w.last_tile = w.jt + 1 == tiles_per_seq;
    start = w.s * L + w.jt * TILE;
    const long long rem = L - w.jt * TILE;
    valid = rem < TILE ? (int)rem : TILE;
    return w;
}

// This thread's share of a tile's copy into shared memory (s_a, s_b) from (pa, pb), the tile's first element,
// of which `valid` lie in the sequence: J rounds of E elements, one 16-byte cp.async each where the row is
// aligned, else one per element; past the end of the sequence the identity (1, 0), never zeros.
template <typename T, bool VEC>
__device__ __forceinline__ void issue_tile(const T* __restrict__ pa, const T* __restrict__ pb, int valid, T* s_a,
                                           T* s_b)
{
    constexpr int E = 16 / sizeof(T);
    constexpr int SEG = 32 * J * E;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int r = 0; r < J; ++r) {
        const int i0 = warp * SEG + (r * 32 + lane) * E;
        if (VEC && i0 + E <= valid) {
            cp_async16(s_a + i0, pa + i0);
            cp_async16(s_b + i0, pb + i0);
        } else {
#pragma unroll
            for (int e = 0; e < E; ++e) {
                if (i0 + e < valid) {
                    cp_async_small<sizeof(T)>(s_a + i0 + e, pa + i0 + e);
                    cp_async_small<sizeof(T)>(s_b + i0 + e, pb + i0 + e);
                } else {
                    s_a[i0 + e] = one(T());
                    s_b[i0 + e] = zero(T());
                }
            }
        }
    }
    cp_async_commit();
}

// The E elements at i0 of a tile in shared memory, as one 16-byte read: a thread's piece of one round.
template <typename T>
__device__ __forceinline__ Vec<T> piece(const T* s, int i0)
{
    Vec<T> v;
    v.f4 = *reinterpret_cast<const float4*>(s + i0);
    return v;
}

// One block per tile, tile = blockIdx.x: blocks are dispatched in index order, so a block only ever waits
// for blocks already running (the assumption CUB's single-pass scan makes too).
template <typename T, bool VEC>
__device__ __forceinline__ void linear_scan_tile(const T* __restrict__ a, const T* __restrict__ b,
                                                 const T* __restrict__ h0, T* __restrict__ h, long long L,
                                                 long long tiles_per_seq, long long windows_per_seq,
                                                 long long supers_per_seq, word* tpairs, word* wpairs,
                                                 word* states)
{
    constexpr int E = 16 / sizeof(T);
    constexpr int SEG = 32 * J * E;
    constexpr int TILE = WARPS * SEG;
    extern __shared__ float4 s_dyn[];  // a: TILE, then b: TILE elements
    T* const s_a = reinterpret_cast<T*>(s_dyn);
    T* const s_b = s_a + TILE;
    __shared__ T s_wA[WARPS], s_wB[WARPS];
    __shared__ T s_tA, s_tB, s_hin;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    long long start;
    int valid;
    const Where w = where<TILE>(blockIdx.x, L, tiles_per_seq, windows_per_seq, supers_per_seq, start, valid);
    issue_tile<T, VEC>(a + start, b + start, valid, s_a, s_b);
    const Back g = back_of(w);
    const Early<T> e = load_early<T>(w, g, tpairs, wpairs, states);
    const T h0s = h0 ? h0[w.s] : zero(T());  // null: start from 0. Loaded off the look-back's critical path
    cp_async_wait<0>();

    T xA[J], xB[J];
    T cA = one(T()), cB = zero(T());
#pragma unroll
    for (int r = 0; r < J; ++r) {
        const int i0 = warp * SEG + (r * 32 + lane) * E;
        const Vec<T> va = piece(s_a, i0), vb = piece(s_b, i0);
        round_prefix(va.v, vb.v, cA, cB, xA[r], xB[r], lane);
    }
    if (lane == 0) { s_wA[warp] = cA; s_wB[warp] = cB; }
    __syncthreads();
    block_aggregate(s_wA, s_wB, &s_tA, &s_tB, w, tpairs);
    __syncthreads();
    look_back(s_tA, s_tB, w, g, e, h0s, tpairs, wpairs, states, &s_hin);
    __syncthreads();

    // ---- write h from the h entering each thread's piece: h = a*h + b, 16-byte streaming stores ----------
    const T hw = mad(s_wA[warp], s_hin, s_wB[warp]);
#pragma unroll
    for (int r = 0; r < J; ++r) {
        const int i0 = warp * SEG + (r * 32 + lane) * E;
        const Vec<T> va = piece(s_a, i0), vb = piece(s_b, i0);
        T v[E];
        T hc = mad(xA[r], hw, xB[r]);  // h before this thread's E elements of round r
#pragma unroll
        for (int e = 0; e < E; ++e) { hc = mad(va.v[e], hc, vb.v[e]); v[e] = hc; }
        store_vec(h + start, i0, valid, v, VEC);
    }
}

// the pointers first: the launcher rewrites only the leading words of its parameter block per call
#define ARGS(T)                                                                                              \
    const T *a, const T *b, const T *h0, T *h, word *tpairs, word *wpairs, word *states, long long L,         \
        long long tiles_per_seq, long long windows_per_seq, long long supers_per_seq
#define PASS a, b, h0, h, L, tiles_per_seq, windows_per_seq, supers_per_seq, tpairs, wpairs, states

extern "C" {
__global__ void __launch_bounds__(THREADS, MINB) linear_scan_f32_vec(ARGS(float)) { linear_scan_tile<float, true>(PASS); }
__global__ void __launch_bounds__(THREADS, MINB) linear_scan_f32(ARGS(float)) { linear_scan_tile<float, false>(PASS); }
__global__ void __launch_bounds__(THREADS, MINB) linear_scan_c64_vec(ARGS(cf)) { linear_scan_tile<cf, true>(PASS); }
__global__ void __launch_bounds__(THREADS, MINB) linear_scan_c64(ARGS(cf)) { linear_scan_tile<cf, false>(PASS); }
}
