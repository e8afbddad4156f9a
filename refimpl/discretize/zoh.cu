// zoh.cu: zero-order hold of a batch of small dense systems, [[Ad, Bd], [0, I]] = exp(dt * [[A, B], [0, 0]]).
//
// Layout: A (batch, N, N), B (batch, N, M), dt (batch,), Ad (batch, N, N), Bd (batch, N, M), row-major.
// Grid: one block per system (blockIdx.x = system); block = n x n threads with n = N + M <= 32, thread
// (threadIdx.y = i, threadIdx.x = j) owns entry (i, j) of every n x n matrix below. Four n x n matrices live
// in shared memory (32 KB for complex64 at n = 32). Offsets into the batch are 64-bit.
//
// Method (Moler & Van Loan; Golub & Van Loan Alg. 11.3.1): scale X = dt*[[A, B], [0, 0]] by 2^-s so that
// ||X||_1 <= 1/2, where the diagonal [6/6] Pade approximant r(X) = (V - U)^-1 (V + U), V the even and U the
// odd part, is exact to below 4e-16 relative; solve by Gauss-Jordan with partial pivoting; square s times.

#define MAXN 32

struct cf {  // the complex64 arithmetic this file needs; NVRTC has no <complex>
    float x, y;
    __device__ cf() {}
    __device__ cf(float r, float i = 0.f) : x(r), y(i) {}
};
__device__ __forceinline__ cf operator+(cf a, cf b) { return cf(a.x + b.x, a.y + b.y); }
__device__ __forceinline__ cf operator-(cf a, cf b) { return cf(a.x - b.x, a.y - b.y); }
__device__ __forceinline__ cf operator*(cf a, cf b) { return cf(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x); }
__device__ __forceinline__ cf operator*(float a, cf b) { return cf(a * b.x, a * b.y); }
__device__ __forceinline__ cf operator/(cf a, cf b)
{
    if (fabsf(b.x) >= fabsf(b.y)) {  // Smith's division: no overflow of |b|^2
        const float r = b.y / b.x, d = b.x + b.y * r;
        return cf((a.x + a.y * r) / d, (a.y - a.x * r) / d);
    }
    const float r = b.x / b.y, d = b.x * r + b.y;
    return cf((a.x * r + a.y) / d, (a.y * r - a.x) / d);
}
__device__ __forceinline__ float mag(cf a) { return fabsf(a.x) + fabsf(a.y); }  // pivoting needs only an order
__device__ __forceinline__ float mag(float a) { return fabsf(a); }
__device__ __forceinline__ float absval(cf a) { return hypotf(a.x, a.y); }
__device__ __forceinline__ float absval(float a) { return fabsf(a); }

template <typename T>
__device__ __forceinline__ T matmul_entry(const T* P, const T* Q, int n, int i, int j)
{
    T acc = T(0.f);
    for (int k = 0; k < n; ++k) acc = acc + P[i * MAXN + k] * Q[k * MAXN + j];
    return acc;
}

template <typename T>
__device__ void zoh_dense(const T* __restrict__ A, const T* __restrict__ B, const float* __restrict__ dt,
                          T* __restrict__ Ad, T* __restrict__ Bd, int N, int M)
{
    __shared__ T X[MAXN * MAXN], b1[MAXN * MAXN], b2[MAXN * MAXN], b3[MAXN * MAXN];
    __shared__ int s_pivot;
    __shared__ float s_colsum[MAXN];
    __shared__ int s_squarings;
    const int n = N + M, i = threadIdx.y, j = threadIdx.x;
    const long long sys = blockIdx.x;
    const float h = dt[sys];

    T x = T(0.f);  // X = dt * [[A, B], [0, 0]]
    if (i < N && j < N) x = h * A[sys * N * N + i * N + j];
    else if (i < N) x = h * B[sys * N * M + i * M + (j - N)];
    X[i * MAXN + j] = x;
    __syncthreads();

    if (i == 0) {  // 1-norm: the largest column sum
        float c = 0.f;
        for (int r = 0; r < n; ++r) c += absval(X[r * MAXN + j]);
        s_colsum[j] = c;
    }
    __syncthreads();
    if (i == 0 && j == 0) {
        float norm = 0.f;
        for (int c = 0; c < n; ++c) norm = fmaxf(norm, s_colsum[c]);
        s_squarings = norm > 0.5f ? max(0, (int)ceilf(log2f(norm / 0.5f))) : 0;
    }
    __syncthreads();
    const int s = s_squarings;
    x = ldexpf(1.f, -s) * x;
    X[i * MAXN + j] = x;
    __syncthreads();

    const T x2 = matmul_entry(X, X, n, i, j);
    b1[i * MAXN + j] = x2;
    __syncthreads();
    const T x4 = matmul_entry(b1, b1, n, i, j);
    b2[i * MAXN + j] = x4;
    __syncthreads();
    const T x6 = matmul_entry(b2, b1, n, i, j);
    const float c0 = 1.f, c1 = 1.f / 2, c2 = 5.f / 44, c3 = 1.f / 66, c4 = 1.f / 792, c5 = 1.f / 15840,
                c6 = 1.f / 665280;
    const float eye = (i == j) ? 1.f : 0.f;
    const T V = (c0 * eye) + c2 * x2 + c4 * x4 + c6 * x6;  // even part
    const T W = (c1 * eye) + c3 * x2 + c5 * x4;             // U = X W, the odd part
    b3[i * MAXN + j] = W;
    __syncthreads();
    const T U = matmul_entry(X, b3, n, i, j);
    __syncthreads();
    T* P = b1;  // (V - U) F = (V + U), solved in place by Gauss-Jordan
    T* Q = b2;
    P[i * MAXN + j] = V - U;
    Q[i * MAXN + j] = V + U;
    __syncthreads();
    for (int k = 0; k < n; ++k) {
        if (i == 0 && j == 0) {
            int p = k;
            float best = mag(P[k * MAXN + k]);
            for (int r = k + 1; r < n; ++r) {
                const float m = mag(P[r * MAXN + k]);
                if (m > best) { best = m; p = r; }
            }
            s_pivot = p;
        }
        __syncthreads();
        const int p = s_pivot;
        if (p != k && i < 2) {  // row swap: thread row 0 swaps P's column j, thread row 1 swaps Q's
            T* Mx = (i == 0) ? P : Q;
            const T t = Mx[k * MAXN + j];
            Mx[k * MAXN + j] = Mx[p * MAXN + j];
            Mx[p * MAXN + j] = t;
        }
        __syncthreads();
        const T f = P[i * MAXN + k] / P[k * MAXN + k];
        const T pk = P[k * MAXN + j], qk = Q[k * MAXN + j];
        __syncthreads();
        if (i != k) {
            P[i * MAXN + j] = P[i * MAXN + j] - f * pk;
            Q[i * MAXN + j] = Q[i * MAXN + j] - f * qk;
        }
        __syncthreads();
        T piv = T(1.f);
        if (i == k) piv = P[k * MAXN + k];
        __syncthreads();
        if (i == k) {  // normalize the pivot row (its entries left of k are already zero)
            P[k * MAXN + j] = P[k * MAXN + j] / piv;
            Q[k * MAXN + j] = Q[k * MAXN + j] / piv;
        }
        __syncthreads();
    }
    T* F = Q;
    T* G = b3;
    for (int r = 0; r < s; ++r) {  // undo the scaling: exp(X) = r(X / 2^s)^(2^s)
        const T e = matmul_entry(F, F, n, i, j);
        G[i * MAXN + j] = e;
        __syncthreads();
        T* t = F; F = G; G = t;
    }
    if (i < N && j < N) Ad[sys * N * N + i * N + j] = F[i * MAXN + j];
    else if (i < N) Bd[sys * N * M + i * M + (j - N)] = F[i * MAXN + j];
}

extern "C" {
__global__ void zoh_dense_f32(const float* A, const float* B, const float* dt, float* Ad, float* Bd, int N, int M)
{ zoh_dense<float>(A, B, dt, Ad, Bd, N, M); }

__global__ void zoh_dense_c64(const cf* A, const cf* B, const float* dt, cf* Ad, cf* Bd, int N, int M)
{ zoh_dense<cf>(A, B, dt, Ad, Bd, N, M); }
}
