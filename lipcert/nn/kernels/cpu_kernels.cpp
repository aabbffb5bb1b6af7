// Native CPU kernels for the l_p-distance layer (lipcert.nn.kernels.cpu loads this file).
//
// y[b, n] = || x[b, :] - w[n, :] ||_p  for x (B, D) and w (N, D), both row-major contiguous.
// Contract: lipcert/nn/kernels/reference.py (values, int32 argmax with the lowest index among
// ties, O(B*N) scatter backward for p = inf, stable finite-p forward, dense finite-p backward
// sign(t) (|t| / y)^(p - 1) with 0 where y = 0).
// float32 general real p on AVX-512 skips powers that cannot matter (pow_sum_sparse,
// bwd_sparse_tile): forward terms (|t| / m)^p < 2^-24 / D (y moves by < 2^-24 / p relative),
// backward lanes |t| / y < 2^(-24 / (p - 1)) (gx[b, i] moves by < 2^-24 sum_n |g[b, n]|).
//
// Plain C ABI (extern "C", raw pointers): the file needs no torch headers, so it builds with one
// g++ call in a few seconds and does not depend on the torch C++ ABI. Vectors are GCC vector
// extensions (one 64-byte vector: 16 floats / 8 doubles); AVX-512 instructions (vrangeps,
// vgetexp/vgetmant/vscalef) are used where the compiler targets them, else portable code.
// Threads: OpenMP (the process shares torch's libgomp), count passed in by the caller.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>
#include <omp.h>
#if defined(__SSE__)
#include <immintrin.h>
#endif

namespace {

// ---------------------------------------------------------------- SIMD wrapper
template <class T> struct VT;
template <> struct VT<float> {
  typedef float v __attribute__((vector_size(64)));
  typedef int32_t vi __attribute__((vector_size(64)));
  typedef int32_t I;
  static constexpr int L = 16;
  static constexpr I ABSMASK = 0x7fffffff;
};
template <> struct VT<double> {
  typedef double v __attribute__((vector_size(64)));
  typedef int64_t vi __attribute__((vector_size(64)));
  typedef int64_t I;
  static constexpr int L = 8;
  static constexpr I ABSMASK = 0x7fffffffffffffffLL;
};

template <class T> using vec = typename VT<T>::v;
template <class T> using ivec = typename VT<T>::vi;

template <class T> inline vec<T> vload(const T* p) { vec<T> r; std::memcpy(&r, p, sizeof(r)); return r; }
template <class T> inline void vstore(T* p, vec<T> v) { std::memcpy(p, &v, sizeof(v)); }
template <class T> inline vec<T> vset1(T s) { return vec<T>{} + s; }
template <class T> inline vec<T> vload_part(const T* p, int n) {
  vec<T> r = vec<T>{};
  std::memcpy(&r, p, sizeof(T) * n);
  return r;
}
template <class T> inline void vstore_part(T* p, vec<T> v, int n) { std::memcpy(p, &v, sizeof(T) * n); }

template <class T> inline vec<T> vabs(vec<T> a) {
  return (vec<T>)((ivec<T>)a & VT<T>::ABSMASK);
}
// max(a, b) with maxps semantics (b if unordered).
template <class T> inline vec<T> vmax(vec<T> a, vec<T> b) { return a > b ? a : b; }

// max(acc, |t|) for acc >= 0: one vrangeps with AVX-512DQ, else and + max.
inline vec<float> absmax(vec<float> acc, vec<float> t) {
#if defined(__AVX512DQ__)
  return (vec<float>)_mm512_range_ps((__m512)acc, (__m512)t, 0x0B);
#else
  return vmax<float>(acc, vabs<float>(t));
#endif
}
inline vec<double> absmax(vec<double> acc, vec<double> t) {
#if defined(__AVX512DQ__)
  return (vec<double>)_mm512_range_pd((__m512d)acc, (__m512d)t, 0x0B);
#else
  return vmax<double>(acc, vabs<double>(t));
#endif
}

// ---------------------------------------------------------------- exp2 / log2
// float32: polynomials fitted for this file (least squares on Chebyshev nodes; max abs error
// of log2 ~9e-8 on the reduced range, relative error of exp2 ~2e-9). float64 uses libm.
inline vec<float> vlog2(vec<float> a) {  // a > 0, finite
#if defined(__AVX512F__)
  __m512 x = (__m512)a;
  __m512 e = _mm512_getexp_ps(x);
  __m512 m = _mm512_getmant_ps(x, _MM_MANT_NORM_p75_1p5, _MM_MANT_SIGN_zero);
  __mmask16 lt1 = _mm512_cmp_ps_mask(m, _mm512_set1_ps(1.0f), _CMP_LT_OQ);
  e = _mm512_mask_add_ps(e, lt1, e, _mm512_set1_ps(1.0f));
  vec<float> z = (vec<float>)m - 1.0f;
  vec<float> q = vset1<float>(7.827980071e-02f);
  q = q * z - 1.744437814e-01f;
  q = q * z + 2.163585573e-01f;
  q = q * z - 2.427019030e-01f;
  q = q * z + 2.881863117e-01f;
  q = q * z - 3.605765700e-01f;
  q = q * z + 4.809022248e-01f;
  q = q * z - 7.213484645e-01f;
  q = q * z + 1.442695022e+00f;
  return (vec<float>)e + q * z;
#else
  vec<float> r;
  for (int i = 0; i < 16; ++i) r[i] = std::log2(a[i]);
  return r;
#endif
}
#if defined(__AVX512F__)
// exp2 for finite a (no clamp: callers guarantee |a| < 2^23; scalef under/overflows correctly).
inline vec<float> vexp2_nc(vec<float> a) {
  __m512 x = (__m512)a;
  __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  vec<float> f = (vec<float>)_mm512_sub_ps(x, n);
  vec<float> q = vset1<float>(1.546973217e-04f);
  q = q * f + 1.340043265e-03f;
  q = q * f + 9.618025273e-03f;
  q = q * f + 5.550327152e-02f;
  q = q * f + 2.402265072e-01f;
  q = q * f + 6.931471825e-01f;
  q = q * f + 1.0f;
  return (vec<float>)_mm512_scalef_ps((__m512)q, n);
}
#endif
inline vec<float> vexp2(vec<float> a) {  // any finite a; underflows to 0, overflows to inf
#if defined(__AVX512F__)
  __m512 x = _mm512_max_ps(_mm512_min_ps((__m512)a, _mm512_set1_ps(200.0f)), _mm512_set1_ps(-200.0f));
  __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  vec<float> f = (vec<float>)_mm512_sub_ps(x, n);
  vec<float> q = vset1<float>(1.546973217e-04f);
  q = q * f + 1.340043265e-03f;
  q = q * f + 9.618025273e-03f;
  q = q * f + 5.550327152e-02f;
  q = q * f + 2.402265072e-01f;
  q = q * f + 6.931471825e-01f;
  q = q * f + 1.0f;
  return (vec<float>)_mm512_scalef_ps((__m512)q, n);
#else
  vec<float> r;
  for (int i = 0; i < 16; ++i) r[i] = std::exp2(a[i]);
  return r;
#endif
}
inline vec<double> vlog2(vec<double> a) {
  vec<double> r;
  for (int i = 0; i < 8; ++i) r[i] = std::log2(a[i]);
  return r;
}
inline vec<double> vexp2(vec<double> a) {
  vec<double> r;
  for (int i = 0; i < 8; ++i) r[i] = std::exp2(a[i]);
  return r;
}

template <class T> inline vec<T> vselect_pos(vec<T> cond, vec<T> a) {  // cond > 0 ? a : 0
  return cond > vec<T>{} ? a : vec<T>{};
}
template <class T> inline vec<T> vsign(vec<T> t) {  // torch.sign: -1, 0, +1
  vec<T> one = vset1<T>(1);
  return t > vec<T>{} ? one : (t < vec<T>{} ? -one : vec<T>{});
}

// r[m] = a[m]^k for M vectors at once (binary powering, k >= 0 uniform). The loop over bits is
// shared, so each step issues M independent multiplies: powering one vector at a time is a chain
// of dependent multiplies (latency-bound, measured 5-8x slower at k = 20..64).
template <class T, int M> inline void vipow_lock(const vec<T>* a, vec<T>* r, int k) {
  vec<T> sq[M];
  for (int m = 0; m < M; ++m) { sq[m] = a[m]; r[m] = vset1<T>(1); }
  while (k) {
    if (k & 1)
      for (int m = 0; m < M; ++m) r[m] *= sq[m];
    k >>= 1;
    if (k)
      for (int m = 0; m < M; ++m) sq[m] *= sq[m];
  }
}

// Flush-to-zero for results while a power kernel runs on this thread: tiny powers (|u|^36.5,
// exp2(-140)) would otherwise be subnormal and cost a microcode assist each. Their absolute
// size (< 2^-126 per term) is far below the rounding error of the sums they enter.
struct FlushDenormals {
#if defined(__SSE__)
  unsigned old;
  FlushDenormals() : old(_mm_getcsr()) { _mm_setcsr(old | 0x8000u); }
  ~FlushDenormals() { _mm_setcsr(old); }
#endif
};

// ---------------------------------------------------------------- exponent descriptor
enum PowKind { POW_ONE = 0, POW_TWO = 1, POW_EIGHT = 2, POW_INT = 3, POW_REAL = 4 };
struct Pow {
  int kind;
  int k;      // integer p (POW_INT)
  double p;
};
inline Pow make_pow(double p) {
  Pow r{POW_REAL, 0, p};
  if (p == 1.0) r.kind = POW_ONE;
  else if (p == 2.0) r.kind = POW_TWO;
  else if (p == 8.0) r.kind = POW_EIGHT;
  else if (p == std::floor(p) && p <= 64.0) { r.kind = POW_INT; r.k = (int)p; }
  return r;
}

// Forward term a^p for scaled a = |t| / m in [0, 1] (integer p: vipow_lock over a whole tile).
template <class T, int KIND> inline vec<T> fwd_term(vec<T> a, const Pow& pw) {
  static_assert(KIND != POW_INT, "integer p is powered per tile with vipow_lock");
  if constexpr (KIND == POW_ONE) return a;
  else if constexpr (KIND == POW_TWO) return a * a;
  else if constexpr (KIND == POW_EIGHT) { vec<T> a2 = a * a; vec<T> a4 = a2 * a2; return a4 * a4; }
  else {
    vec<T> tiny = vset1<T>(std::numeric_limits<T>::min());
    vec<T> r = vexp2(vlog2(vmax<T>(a, tiny)) * (T)pw.p);
    return vselect_pos<T>(a, r);
  }
}
// Backward term sign(u) |u|^(p-1) for u = t / y (|u| <= 1 up to rounding; integer p: vipow_lock).
template <class T, int KIND> inline vec<T> bwd_term(vec<T> u, const Pow& pw) {
  static_assert(KIND != POW_INT, "integer p is powered per tile with vipow_lock");
  if constexpr (KIND == POW_ONE) return vsign<T>(u);
  else if constexpr (KIND == POW_TWO) return u;
  else if constexpr (KIND == POW_EIGHT) { vec<T> u2 = u * u; vec<T> u4 = u2 * u2; return u4 * (u2 * u); }
  else {
    vec<T> tiny = vset1<T>(std::numeric_limits<T>::min());
    vec<T> au = vabs<T>(u);
    vec<T> r = vexp2(vlog2(vmax<T>(au, tiny)) * (T)(pw.p - 1.0));
    return vsign<T>(u) * r;
  }
}

// ---------------------------------------------------------------- packing
// w (N, D) -> panels of L columns: wp[(j * D + d) * L + l] = w[j * L + l, d] (0 for padding).
template <class T> std::vector<T> pack_panels(const T* w, int64_t N, int64_t D, int nthreads) {
  constexpr int L = VT<T>::L;
  int64_t np = (N + L - 1) / L;
  std::vector<T> wp((size_t)(np * D * L));
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t j = 0; j < np; ++j) {
    T* dst = wp.data() + j * D * L;
    for (int l = 0; l < L; ++l) {
      int64_t n = j * L + l;
      if (n < N) {
        const T* src = w + n * D;
        for (int64_t d = 0; d < D; ++d) dst[d * L + l] = src[d];
      } else {
        for (int64_t d = 0; d < D; ++d) dst[d * L + l] = 0;
      }
    }
  }
  return wp;
}

// ---------------------------------------------------------------- p = inf forward
// Lowest d in [s, e) with |w[d] - x[d]| == val (s if none, e.g. NaN): the argmax rescan.
template <class T> inline int64_t first_equal(const T* x, const T* w, int64_t s, int64_t e, T val) {
  constexpr int L = VT<T>::L;
  for (int64_t d = s; d < e; d += L) {
    int cnt = (int)std::min<int64_t>(L, e - d);
    vec<T> t = vload_part<T>(w + d, cnt) - vload_part<T>(x + d, cnt);
    ivec<T> eq = (ivec<T>)(vabs<T>(t) == val);
    for (int l = 0; l < cnt; ++l)
      if (eq[l]) return d + l;
  }
  return s;
}
#if defined(__AVX512F__)
template <> inline int64_t first_equal<float>(const float* x, const float* w, int64_t s, int64_t e, float val) {
  const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  for (int64_t d = s; d < e; d += 16) {
    int cnt = (int)std::min<int64_t>(16, e - d);
    __mmask16 m = (__mmask16)((1u << cnt) - 1u);
    __m512 t = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, w + d), _mm512_maskz_loadu_ps(m, x + d));
    __mmask16 eq = _mm512_mask_cmp_ps_mask(m, _mm512_and_ps(t, absmask), _mm512_set1_ps(val), _CMP_EQ_OQ);
    if (eq) return d + __builtin_ctz((unsigned)eq);
  }
  return s;
}
template <> inline int64_t first_equal<double>(const double* x, const double* w, int64_t s, int64_t e, double val) {
  const __m512d absmask = _mm512_castsi512_pd(_mm512_set1_epi64(0x7fffffffffffffffLL));
  for (int64_t d = s; d < e; d += 8) {
    int cnt = (int)std::min<int64_t>(8, e - d);
    __mmask8 m = (__mmask8)((1u << cnt) - 1u);
    __m512d t = _mm512_sub_pd(_mm512_maskz_loadu_pd(m, w + d), _mm512_maskz_loadu_pd(m, x + d));
    __mmask8 eq = _mm512_mask_cmp_pd_mask(m, _mm512_and_pd(t, absmask), _mm512_set1_pd(val), _CMP_EQ_OQ);
    if (eq) return d + __builtin_ctz((unsigned)eq);
  }
  return s;
}
#endif

#ifndef LC_INF_RB
#define LC_INF_RB 8
#endif
constexpr int INF_RB = LC_INF_RB;  // rows of x per register tile
#ifndef LC_INF_RN
#define LC_INF_RN 2
#endif
constexpr int INF_RN = LC_INF_RN;  // panels (vectors of w columns) per register tile
#ifndef ARG_CHUNK_VECS
#define ARG_CHUNK_VECS 1
#endif

// One (RB rows) x (RN panels) tile of max_d |x - w|, optionally with the argmax.
// ARG: d is swept in chunks of L; a chunk whose max is strictly larger than the running max
// records its index, then the winning chunk is rescanned for the lowest equal element. Exact:
// the rescan recomputes the same IEEE difference, so equality is bitwise.
template <class T, bool ARG>
void linf_tile(const T* x, const T* w, const T* wp, int64_t B, int64_t N, int64_t D, int64_t b0, int64_t j0,
               T* y, int32_t* am) {
  constexpr int L = VT<T>::L;
  constexpr int RB = INF_RB, RN = INF_RN;
  const T* xr[RB];
  for (int i = 0; i < RB; ++i) xr[i] = x + std::min<int64_t>(b0 + i, B - 1) * D;
  const T* pp[RN];
  int64_t np = (N + L - 1) / L;
  for (int j = 0; j < RN; ++j) pp[j] = wp + std::min<int64_t>(j0 + j, np - 1) * D * L;

  vec<T> acc[RB][RN];
  alignas(64) ivec<T> cidx[RB][RN];
  const int64_t K = ARG ? L * ARG_CHUNK_VECS : D;
  for (int i = 0; i < RB; ++i)
    for (int j = 0; j < RN; ++j) { acc[i][j] = vset1<T>(ARG ? (T)-1 : (T)0); cidx[i][j] = ivec<T>{}; }

  for (int64_t c0 = 0; c0 < D; c0 += K) {
    int64_t c1 = std::min(D, c0 + K);
    vec<T> cm[RB][RN];
    for (int i = 0; i < RB; ++i)
      for (int j = 0; j < RN; ++j) cm[i][j] = vec<T>{};
    for (int64_t d = c0; d < c1; ++d) {
      vec<T> wv[RN];
      for (int j = 0; j < RN; ++j) wv[j] = vload<T>(pp[j] + d * L);
      for (int i = 0; i < RB; ++i) {
        T xs = xr[i][d];
        for (int j = 0; j < RN; ++j) cm[i][j] = absmax(cm[i][j], wv[j] - xs);
      }
    }
    if constexpr (ARG) {
      ivec<T> cv = ivec<T>{} + (typename VT<T>::I)c0;
      for (int i = 0; i < RB; ++i)
        for (int j = 0; j < RN; ++j) {
          ivec<T> gt = (ivec<T>)(cm[i][j] > acc[i][j]);
          cidx[i][j] = gt ? cv : cidx[i][j];
          acc[i][j] = gt ? cm[i][j] : acc[i][j];
        }
    } else {
      for (int i = 0; i < RB; ++i)
        for (int j = 0; j < RN; ++j) acc[i][j] = cm[i][j];
    }
  }
  // store
  for (int i = 0; i < RB; ++i) {
    int64_t b = b0 + i;
    if (b >= B) break;
    for (int j = 0; j < RN; ++j) {
      int64_t nb = (j0 + j) * L;
      if (nb >= N) break;
      int cnt = (int)std::min<int64_t>(L, N - nb);
      alignas(64) T av[L];
      vstore<T>(av, acc[i][j]);
      std::memcpy(y + b * N + nb, av, sizeof(T) * cnt);
      if constexpr (ARG) {
        for (int l = 0; l < cnt; ++l) {
          int64_t n = nb + l;
          int64_t s = cidx[i][j][l];
          int64_t e = std::min(D, s + K);
          const T* xb = xr[i];
          const T* wn = w + n * D;
          am[b * N + n] = (int32_t)first_equal<T>(xb, wn, s, e, av[l]);
        }
      }
    }
  }
}

template <class T>
void linf_fwd(const T* x, const T* w, int64_t B, int64_t N, int64_t D, T* y, int32_t* am, int nthreads,
              const T* packed = nullptr) {
  constexpr int L = VT<T>::L;
  if (B == 0 || N == 0) return;
  if (D == 0) {
    for (int64_t i = 0; i < B * N; ++i) { y[i] = 0; if (am) am[i] = 0; }
    return;
  }
  std::vector<T> own;
  if (!packed) {
    own = pack_panels<T>(w, N, D, nthreads);
    packed = own.data();
  }
  int64_t np = (N + L - 1) / L;
  int64_t nbt = (B + INF_RB - 1) / INF_RB, njt = (np + INF_RN - 1) / INF_RN;
  int64_t tiles = nbt * njt;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1)
  for (int64_t t = 0; t < tiles; ++t) {
    int64_t jt = t / nbt, bt = t % nbt;  // b innermost: a thread keeps its w panels hot
    if (am) linf_tile<T, true>(x, w, packed, B, N, D, bt * INF_RB, jt * INF_RN, y, am);
    else linf_tile<T, false>(x, w, packed, B, N, D, bt * INF_RB, jt * INF_RN, y, am);
  }
}

// ---------------------------------------------------------------- finite p forward
#ifndef LC_POW_RB
#define LC_POW_RB 4
#endif
constexpr int POW_RB = LC_POW_RB;
#ifndef LC_POW_RN
#define LC_POW_RN 2
#endif
constexpr int POW_RN = LC_POW_RN;

// s[b, n] = sum_d term(|x - w| * inv[b, n]) for one tile; SCALED=false skips the multiply.
template <class T, int KIND, bool SCALED>
void pow_tile(const T* x, const T* wp, int64_t B, int64_t N, int64_t D, int64_t b0, int64_t j0, const T* inv,
              T* s, const Pow& pw) {
  constexpr int L = VT<T>::L;
  constexpr int RB = POW_RB, RN = POW_RN;
  const T* xr[RB];
  for (int i = 0; i < RB; ++i) xr[i] = x + std::min<int64_t>(b0 + i, B - 1) * D;
  const T* pp[RN];
  int64_t np = (N + L - 1) / L;
  for (int j = 0; j < RN; ++j) pp[j] = wp + std::min<int64_t>(j0 + j, np - 1) * D * L;
  vec<T> sc[RB][RN], acc[RB][RN];
  for (int i = 0; i < RB; ++i)
    for (int j = 0; j < RN; ++j) {
      acc[i][j] = vec<T>{};
      sc[i][j] = vset1<T>(1);
      if (SCALED) {
        int64_t b = std::min<int64_t>(b0 + i, B - 1);
        int64_t nb = (j0 + j) * L;
        if (nb < N) {
          int cnt = (int)std::min<int64_t>(L, N - nb);
          sc[i][j] = vload_part<T>(inv + b * N + nb, cnt);
        }
      }
    }
  for (int64_t d = 0; d < D; ++d) {
    vec<T> wv[RN];
    for (int j = 0; j < RN; ++j) wv[j] = vload<T>(pp[j] + d * L);
    if constexpr (KIND == POW_INT) {  // the whole tile's powers in lockstep (vipow_lock)
      vec<T> a[RB * RN], r[RB * RN];
      for (int i = 0; i < RB; ++i)
        for (int j = 0; j < RN; ++j) {
          vec<T> t = wv[j] - xr[i][d];
          a[i * RN + j] = SCALED ? vabs<T>(t) * sc[i][j] : vabs<T>(t);
        }
      vipow_lock<T, RB * RN>(a, r, pw.k);
      for (int i = 0; i < RB; ++i)
        for (int j = 0; j < RN; ++j) acc[i][j] += r[i * RN + j];
    } else {
      for (int i = 0; i < RB; ++i) {
        T xs = xr[i][d];
        for (int j = 0; j < RN; ++j) {
          vec<T> t = wv[j] - xs;
          vec<T> a;
          if constexpr (KIND == POW_TWO || KIND == POW_EIGHT) a = SCALED ? t * sc[i][j] : t;  // even power: no abs
          else a = SCALED ? vabs<T>(t) * sc[i][j] : vabs<T>(t);
          acc[i][j] += fwd_term<T, KIND>(a, pw);
        }
      }
    }
  }
  for (int i = 0; i < RB; ++i) {
    int64_t b = b0 + i;
    if (b >= B) break;
    for (int j = 0; j < RN; ++j) {
      int64_t nb = (j0 + j) * L;
      if (nb >= N) break;
      int cnt = (int)std::min<int64_t>(L, N - nb);
      vstore_part<T>(s + b * N + nb, acc[i][j], cnt);
    }
  }
}

template <class T, int KIND, bool SCALED>
void pow_sum(const T* x, const T* wp, int64_t B, int64_t N, int64_t D, const T* inv, T* s, const Pow& pw,
             int nthreads) {
  constexpr int L = VT<T>::L;
  int64_t np = (N + L - 1) / L;
  int64_t nbt = (B + POW_RB - 1) / POW_RB, njt = (np + POW_RN - 1) / POW_RN;
  int64_t tiles = nbt * njt;
#pragma omp parallel num_threads(nthreads)
  {
    FlushDenormals ftz;
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tiles; ++t) {
      int64_t jt = t / nbt, bt = t % nbt;
      pow_tile<T, KIND, SCALED>(x, wp, B, N, D, bt * POW_RB, jt * POW_RN, inv, s, pw);
    }
  }
}

// ---------------------------------------------------------------- finite p forward, skipping
// float32, general real p (POW_REAL), AVX-512: the scaled sum s = sum_d (|t_d| / m)^p where only
// terms with a = |t| / m >= theta get the power. With theta^p <= 2^-24 / D (skip_threshold_fwd)
// the skipped terms add up to < D * 2^-24 / D = 2^-24 <= 2^-24 * s (s >= 1: the largest term is
// ~1), so s moves by < one float32 rounding and y = m s^(1/p) by < 2^-24 / p relative.
// Pair-major (lanes along d): a tile of SP_RB x rows and SP_RN w rows; per pair the kept values
// are compressed (vcompressps) into a buffer, then the power runs over the buffer only. The cost
// is ~5 vector ops per 16 elements plus the power for the kept fraction (small for large p).
inline float skip_threshold_fwd(double p, int64_t D) {
  double th = std::exp2(-(24.0 + std::log2((double)std::max<int64_t>(D, 1))) / p);
  float f = std::nextafter((float)th, 0.0f);  // round down: theta_f^p <= 2^-24 / D
  // Cap: the largest term a = m * fl(1/m) >= 1 - 2^-23 must always be kept (s >= 1).
  return std::min(f, 0.99f);
}
// Backward: skip sign(u) |u|^(p-1) when |u| < theta_b with theta_b^(p-1) <= 2^-24, so each skipped
// contribution to gx[b, d] (gw[n, d]) is < 2^-24 |g[b, n]|: the omitted part of gx[b, d] is
// < 2^-24 sum_n |g[b, n]| (gw: 2^-24 sum_b |g[b, n]|), the size of one float32 rounding of the
// largest possible contributions.
inline float skip_threshold_bwd(double p) {
  if (p <= 1.0) return 0.0f;
  double th = std::exp2(-24.0 / (p - 1.0));
  return std::nextafter((float)th, 0.0f);
}

#if defined(__AVX512F__)
#define LC_HAVE_SPARSE 1
constexpr int SP_RB = 2, SP_RN = 4;
inline __mmask16 tail_mask(int64_t c) { return c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << c) - 1u); }

// s[b, n] for b in [b0, b0 + SP_RB), n in [n0, n0 + SP_RN); buf holds SP_RB * SP_RN * (D + 16) floats.
void pow_sum_sparse_tile(const float* x, const float* w, int64_t B, int64_t N, int64_t D, int64_t b0, int64_t n0,
                         const float* inv, float* s, const Pow& pw, float theta, float* buf) {
  constexpr int RB = SP_RB, RN = SP_RN;
  const int64_t stride = D + 16;
  int rb = (int)std::min<int64_t>(RB, B - b0), rn = (int)std::min<int64_t>(RN, N - n0);
  const float* xr[RB];
  const float* wr[RN];
  for (int i = 0; i < RB; ++i) xr[i] = x + (b0 + std::min(i, rb - 1)) * D;
  for (int j = 0; j < RN; ++j) wr[j] = w + (n0 + std::min(j, rn - 1)) * D;
  __m512 lim[RB][RN];
  float sc[RB][RN];
  int64_t cnt[RB][RN];
  for (int i = 0; i < RB; ++i)
    for (int j = 0; j < RN; ++j) {
      float iv = inv[(b0 + std::min(i, rb - 1)) * N + n0 + std::min(j, rn - 1)];
      sc[i][j] = iv;
      // keep |t| >= theta' * fl(1 / fl(1 / m)) with theta' = theta (1 - 2^-20): every skipped
      // term has |t| / m < theta (the three roundings move the limit by < 3 * 2^-24 relative);
      // iv = 0 (m = 0): keep nothing.
      lim[i][j] = _mm512_set1_ps(iv > 0 ? theta * (1.0f - 0x1p-20f) * (1.0f / iv) : INFINITY);
      cnt[i][j] = 0;
    }
  const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  for (int64_t d = 0; d < D; d += 16) {
    __mmask16 lm = tail_mask(D - d);
    __m512 xv[RB];
    for (int i = 0; i < RB; ++i) xv[i] = _mm512_maskz_loadu_ps(lm, xr[i] + d);
    for (int j = 0; j < RN; ++j) {
      __m512 wv = _mm512_maskz_loadu_ps(lm, wr[j] + d);
      for (int i = 0; i < RB; ++i) {
        __m512 a = _mm512_and_ps(_mm512_sub_ps(xv[i], wv), absmask);
        __mmask16 k = _mm512_mask_cmp_ps_mask(lm, a, lim[i][j], _CMP_GE_OQ);
        if (k) {
          float* bp = buf + (i * RN + j) * stride;
          _mm512_storeu_ps(bp + cnt[i][j], _mm512_maskz_compress_ps(k, a));
          cnt[i][j] += __builtin_popcount((unsigned)k);
        }
      }
    }
  }
  for (int i = 0; i < rb; ++i)
    for (int j = 0; j < rn; ++j) {
      const float* bp = buf + (i * RN + j) * stride;
      __m512 acc = _mm512_setzero_ps();
      const float e = (float)pw.p;
      const __m512 iv = _mm512_set1_ps(sc[i][j]);
      for (int64_t q = 0; q < cnt[i][j]; q += 16) {
        __mmask16 lm = tail_mask(cnt[i][j] - q);
        // a = |t| / m in [theta (1 - 2^-19), 1 + 2^-22]: a normal positive float and
        // p log2(a) >= -(24 + log2 D) - 1, so the unguarded log2 / exp2 apply.
        __m512 a = _mm512_mul_ps(_mm512_mask_loadu_ps(_mm512_set1_ps(1.0f), lm, bp + q), iv);
        __m512 r = (__m512)vexp2_nc(vlog2((vec<float>)a) * e);
        acc = _mm512_mask_add_ps(acc, lm, acc, r);
      }
      s[(b0 + i) * N + n0 + j] = _mm512_reduce_add_ps(acc);
    }
}

void pow_sum_sparse(const float* x, const float* w, int64_t B, int64_t N, int64_t D, const float* inv, float* s,
                    const Pow& pw, int nthreads) {
  float theta = skip_threshold_fwd(pw.p, D);
  int64_t nbt = (B + SP_RB - 1) / SP_RB, nnt = (N + SP_RN - 1) / SP_RN;
  int64_t tiles = nbt * nnt;
#pragma omp parallel num_threads(nthreads)
  {
    FlushDenormals ftz;
    std::vector<float> buf((size_t)(SP_RB * SP_RN * (D + 16)));
#pragma omp for schedule(dynamic, 4)
    for (int64_t t = 0; t < tiles; ++t) {
      int64_t nt_ = t / nbt, bt = t % nbt;  // b innermost: the w rows stay in cache
      pow_sum_sparse_tile(x, w, B, N, D, bt * SP_RB, nt_ * SP_RN, inv, s, pw, theta, buf.data());
    }
  }
}
#endif

// Exact, stable scalar evaluation for one pair (used where the fast unscaled sum left the safe range).
template <class T> T lp_pair_stable(const T* xb, const T* wn, int64_t D, double p) {
  double m = 0;
  for (int64_t d = 0; d < D; ++d) m = std::max(m, std::fabs((double)wn[d] - (double)xb[d]));
  if (m == 0) return 0;
  double s = 0;
  for (int64_t d = 0; d < D; ++d) s += std::pow(std::fabs((double)wn[d] - (double)xb[d]) / m, p);
  return (T)(m * std::pow(s, 1.0 / p));
}

// y = m * s^(1/p) (scaled) or s^(1/p) (unscaled), vectorised over B*N.
template <class T> void finish_root(T* y, const T* s, const T* m, int64_t total, double p, int nthreads) {
  constexpr int L = VT<T>::L;
  int64_t nv = total / L;
  T ip = (T)(1.0 / p);
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t v = 0; v <= nv; ++v) {
    int64_t o = v * L;
    int cnt = (int)std::min<int64_t>(L, total - o);
    if (cnt <= 0) continue;
    vec<T> sv = vload_part<T>(s + o, cnt);
    for (int l = cnt; l < L; ++l) sv[l] = 1;
    vec<T> r;
    if (p == 1.0) r = sv;
    else if (p == 2.0) { for (int l = 0; l < L; ++l) r[l] = std::sqrt(sv[l]); }
    else if (p == 8.0) { for (int l = 0; l < L; ++l) r[l] = std::sqrt(std::sqrt(std::sqrt(sv[l]))); }
    else r = vexp2(vlog2(sv) * ip);  // s >= 1 in the scaled path
    if (m) r = r * vload_part<T>(m + o, cnt);
    vstore_part<T>(y + o, r, cnt);
  }
}

template <class T, int KIND>
void lp_fwd_kind(const T* x, const T* w, int64_t B, int64_t N, int64_t D, const Pow& pw, T* y, int nthreads,
                 bool force_two_pass = false, bool force_dense = false) {
  std::vector<T> wp = pack_panels<T>(w, N, D, nthreads);
  int64_t total = B * N;
  std::vector<T> s((size_t)total);
  if constexpr (KIND == POW_ONE || KIND == POW_TWO || KIND == POW_EIGHT) {
    if (!force_two_pass) {
      // One pass without scaling: sum_d |t|^p, then s^(1/p). Exact where the sum stays in the
      // normal range (no overflow, largest term not subnormal); other pairs are redone stably.
      pow_sum<T, KIND, false>(x, wp.data(), B, N, D, nullptr, s.data(), pw, nthreads);
      finish_root<T>(y, s.data(), nullptr, total, pw.p, nthreads);
      const T lo = KIND == POW_ONE ? (T)0 : (sizeof(T) == 4 ? (T)std::ldexp(1.0, -80) : (T)std::ldexp(1.0, -900));
      const T hi = sizeof(T) == 4 ? (T)std::ldexp(1.0, 120) : (T)std::ldexp(1.0, 1000);
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 64)
      for (int64_t i = 0; i < total; ++i) {
        T v = s[(size_t)i];
        if (!(v <= hi) || (v < lo && v != 0) || (v == 0 && KIND != POW_ONE)) {
          int64_t b = i / N, n = i % N;
          y[i] = lp_pair_stable<T>(x + b * D, w + n * D, D, pw.p);
        }
      }
      return;
    }
  }
  // Two passes: m = max |t| (the p = inf kernel, ~2 vector ops per element), then
  // sum (|t| / m)^p. For general p the power costs ~25 ops per element, so the max pass adds
  // < 10%; a one-pass running max would need the same max per element plus a rescale of the
  // sum (an extra exp2) whenever the max grows, so it cannot do fewer operations. For p in
  // {1, 2, 8} the unscaled one-pass sum above is used instead (measured faster, BENCHMARKS.md).
  std::vector<T> m((size_t)total), inv((size_t)total);
  linf_fwd<T>(x, w, B, N, D, m.data(), nullptr, nthreads, wp.data());
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t i = 0; i < total; ++i) inv[(size_t)i] = m[(size_t)i] > 0 ? (T)1 / m[(size_t)i] : (T)0;
#if defined(LC_HAVE_SPARSE)
  if constexpr (KIND == POW_REAL && sizeof(T) == 4) {
    if (!force_dense)
      pow_sum_sparse((const float*)x, (const float*)w, B, N, D, (const float*)inv.data(), (float*)s.data(), pw, nthreads);
    else
      pow_sum<T, KIND, true>(x, wp.data(), B, N, D, inv.data(), s.data(), pw, nthreads);
  } else
#endif
  pow_sum<T, KIND, true>(x, wp.data(), B, N, D, inv.data(), s.data(), pw, nthreads);
  finish_root<T>(y, s.data(), m.data(), total, pw.p, nthreads);
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t i = 0; i < total; ++i)
    if (m[(size_t)i] == 0) y[i] = 0;
}

template <class T>
void lp_fwd(const T* x, const T* w, int64_t B, int64_t N, int64_t D, double p, T* y, int nthreads) {
  if (B == 0 || N == 0) return;
  if (D == 0) { std::fill(y, y + B * N, (T)0); return; }
  Pow pw = make_pow(p);
  switch (pw.kind) {
    case POW_ONE: lp_fwd_kind<T, POW_ONE>(x, w, B, N, D, pw, y, nthreads); break;
    case POW_TWO: lp_fwd_kind<T, POW_TWO>(x, w, B, N, D, pw, y, nthreads); break;
    case POW_EIGHT: lp_fwd_kind<T, POW_EIGHT>(x, w, B, N, D, pw, y, nthreads); break;
    case POW_INT: lp_fwd_kind<T, POW_INT>(x, w, B, N, D, pw, y, nthreads); break;
    default: lp_fwd_kind<T, POW_REAL>(x, w, B, N, D, pw, y, nthreads); break;
  }
}

// ---------------------------------------------------------------- finite p backward
#ifndef LC_BW_RB
#define LC_BW_RB 6
#endif
constexpr int BW_RB = LC_BW_RB;
#ifndef LC_BW_RN
#define LC_BW_RN 6
#endif
constexpr int BW_RN = LC_BW_RN;

// For rows b0.. (RB) and w rows n0.. (RN), all of D (vectorised along D):
//   r = c[b, n] * term((x[b] - w[n]) * inv[b, n]);  gx[b] += r; gw[n] -= r.
template <class T, int KIND, bool NX, bool NW>
void bwd_tile(const T* x, const T* w, int64_t B, int64_t N, int64_t D, int64_t b0, int64_t n0, const T* inv,
              const T* c, T* gx, T* gw, const Pow& pw) {
  constexpr int L = VT<T>::L;
  constexpr int RB = BW_RB, RN = BW_RN;
  int rb = (int)std::min<int64_t>(RB, B - b0), rn = (int)std::min<int64_t>(RN, N - n0);
  T ci[RB][RN], ii[RB][RN];
  bool any = false;
  for (int i = 0; i < RB; ++i)
    for (int j = 0; j < RN; ++j) {
      bool ok = i < rb && j < rn;
      ci[i][j] = ok ? c[(b0 + i) * N + n0 + j] : (T)0;
      ii[i][j] = ok ? inv[(b0 + i) * N + n0 + j] : (T)0;
      any |= ci[i][j] != 0;
    }
  if (!any) return;
  const T* xr[RB];
  const T* wr[RN];
  for (int i = 0; i < RB; ++i) xr[i] = x + (b0 + std::min(i, rb - 1)) * D;
  for (int j = 0; j < RN; ++j) wr[j] = w + (n0 + std::min(j, rn - 1)) * D;
  for (int64_t d = 0; d < D; d += L) {
    int cnt = (int)std::min<int64_t>(L, D - d);
    bool full = cnt == L;
    vec<T> xv[RB], gxa[RB];
    for (int i = 0; i < RB; ++i) {
      xv[i] = full ? vload<T>(xr[i] + d) : vload_part<T>(xr[i] + d, cnt);
      gxa[i] = vec<T>{};
    }
    for (int j = 0; j < RN; ++j) {
      vec<T> wv = full ? vload<T>(wr[j] + d) : vload_part<T>(wr[j] + d, cnt);
      vec<T> gwa = vec<T>{};
      if constexpr (KIND == POW_INT) {  // sign(u) |u|^(k-1) = u |u|^(k-2), RB powers in lockstep
        vec<T> u[RB], au[RB], r[RB];
        for (int i = 0; i < RB; ++i) {
          u[i] = (xv[i] - wv) * ii[i][j];
          au[i] = vabs<T>(u[i]);
        }
        vipow_lock<T, RB>(au, r, pw.k - 2);
        for (int i = 0; i < RB; ++i) {
          vec<T> v = r[i] * u[i] * ci[i][j];
          if (NX) gxa[i] += v;
          if (NW) gwa += v;
        }
      } else {
        for (int i = 0; i < RB; ++i) {
          vec<T> u = (xv[i] - wv) * ii[i][j];
          vec<T> r = bwd_term<T, KIND>(u, pw) * ci[i][j];
          if (NX) gxa[i] += r;
          if (NW) gwa += r;
        }
      }
      if (NW && j < rn) {
        T* dst = gw + (n0 + j) * D + d;
        if (full) vstore<T>(dst, vload<T>(dst) - gwa);
        else vstore_part<T>(dst, vload_part<T>(dst, cnt) - gwa, cnt);
      }
    }
    if (NX)
      for (int i = 0; i < rb; ++i) {
        T* dst = gx + (b0 + i) * D + d;
        if (full) vstore<T>(dst, vload<T>(dst) + gxa[i]);
        else vstore_part<T>(dst, vload_part<T>(dst, cnt) + gxa[i], cnt);
      }
  }
}

#if defined(LC_HAVE_SPARSE)
// float32 POW_REAL backward with skipping (threshold: skip_threshold_bwd). Per tile of SB_RB x
// rows and SB_RN w rows, lanes along d: (1) u = (x - w) / y, kept lanes (|u| >= theta) compressed
// into a per-pair buffer and their masks recorded; (2) the power c sign(u) |u|^(p-1) over the
// buffers only; (3) the values expanded back to their lanes and summed into gx / gw.
constexpr int SB_RB = 2, SB_RN = 4;
template <bool NX, bool NW>
void bwd_sparse_tile(const float* x, const float* w, int64_t B, int64_t N, int64_t D, int64_t b0, int64_t n0,
                     const float* inv, const float* c, float* gx, float* gw, const Pow& pw, float theta, float* buf,
                     uint16_t* masks) {
  constexpr int RB = SB_RB, RN = SB_RN;
  const int64_t stride = D + 16, nv = (D + 15) / 16;
  int rb = (int)std::min<int64_t>(RB, B - b0), rn = (int)std::min<int64_t>(RN, N - n0);
  float ci[RB][RN], ii[RB][RN];
  __m512 lim[RB][RN];
  bool any = false;
  for (int i = 0; i < RB; ++i)
    for (int j = 0; j < RN; ++j) {
      bool ok = i < rb && j < rn;
      ci[i][j] = ok ? c[(b0 + i) * N + n0 + j] : 0.0f;
      ii[i][j] = ok ? inv[(b0 + i) * N + n0 + j] : 0.0f;
      // keep |t| >= theta' fl(1 / fl(1 / y)), theta' = theta (1 - 2^-20) (as in the forward):
      // every skipped lane has |t| / y < theta. c = 0 or y = 0: keep nothing.
      bool live = ci[i][j] != 0 && ii[i][j] > 0;
      lim[i][j] = _mm512_set1_ps(live ? theta * (1.0f - 0x1p-20f) * (1.0f / ii[i][j]) : INFINITY);
      any |= live;
    }
  if (!any) return;
  const float* xr[RB];
  const float* wr[RN];
  for (int i = 0; i < RB; ++i) xr[i] = x + (b0 + std::min(i, rb - 1)) * D;
  for (int j = 0; j < RN; ++j) wr[j] = w + (n0 + std::min(j, rn - 1)) * D;
  const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  const __m512 signmask = _mm512_castsi512_ps(_mm512_set1_epi32((int)0x80000000u));
  int64_t cnt[RB][RN];
  for (int i = 0; i < RB; ++i)
    for (int j = 0; j < RN; ++j) cnt[i][j] = 0;
  // (1) compress
  for (int64_t v = 0; v < nv; ++v) {
    int64_t d = v * 16;
    __mmask16 lm = tail_mask(D - d);
    __m512 xv[RB];
    for (int i = 0; i < RB; ++i) xv[i] = _mm512_maskz_loadu_ps(lm, xr[i] + d);
    for (int j = 0; j < RN; ++j) {
      __m512 wv = _mm512_maskz_loadu_ps(lm, wr[j] + d);
      for (int i = 0; i < RB; ++i) {
        __m512 t = _mm512_sub_ps(xv[i], wv);
        __mmask16 k = _mm512_mask_cmp_ps_mask(lm, _mm512_and_ps(t, absmask), lim[i][j], _CMP_GE_OQ);
        masks[(i * RN + j) * nv + v] = (uint16_t)k;
        __m512 u = t;
        if (k) {
          float* bp = buf + (i * RN + j) * stride;
          _mm512_storeu_ps(bp + cnt[i][j], _mm512_maskz_compress_ps(k, u));
          cnt[i][j] += __builtin_popcount((unsigned)k);
        }
      }
    }
  }
  // (2) powers, in place
  for (int i = 0; i < RB; ++i)
    for (int j = 0; j < RN; ++j) {
      float* bp = buf + (i * RN + j) * stride;
      const float e = (float)(pw.p - 1.0);
      const __m512 iv = _mm512_set1_ps(ii[i][j]), cv = _mm512_set1_ps(ci[i][j]);
      for (int64_t q = 0; q < cnt[i][j]; q += 16) {
        __mmask16 lm = tail_mask(cnt[i][j] - q);
        // |u| = |t| / y in [theta (1 - 2^-19), 1 + 2^-22], (p - 1) log2|u| >= -25: unguarded
        // log2 / exp2; sign(u) |u|^(p-1) by copying the sign bit (u != 0 here).
        __m512 t = _mm512_mask_loadu_ps(_mm512_set1_ps(1.0f), lm, bp + q);
        __m512 au = _mm512_mul_ps(_mm512_and_ps(t, absmask), iv);
        __m512 r = (__m512)vexp2_nc(vlog2((vec<float>)au) * e);
        r = _mm512_or_ps(r, _mm512_and_ps(t, signmask));
        _mm512_mask_storeu_ps(bp + q, lm, _mm512_mul_ps(r, cv));
      }
    }
  // (3) expand and accumulate
  int64_t off[RB][RN];
  for (int i = 0; i < RB; ++i)
    for (int j = 0; j < RN; ++j) off[i][j] = 0;
  for (int64_t v = 0; v < nv; ++v) {
    int64_t d = v * 16;
    __mmask16 lm = tail_mask(D - d);
    __m512 gxa[RB];
    for (int i = 0; i < RB; ++i) gxa[i] = _mm512_setzero_ps();
    bool xtouched = false;
    for (int j = 0; j < RN; ++j) {
      __m512 gwa = _mm512_setzero_ps();
      bool touched = false;
      for (int i = 0; i < RB; ++i) {
        __mmask16 k = (__mmask16)masks[(i * RN + j) * nv + v];
        if (!k) continue;
        const float* bp = buf + (i * RN + j) * stride + off[i][j];
        __m512 r = _mm512_maskz_expandloadu_ps(k, bp);
        off[i][j] += __builtin_popcount((unsigned)k);
        if (NX) gxa[i] = _mm512_add_ps(gxa[i], r);
        if (NW) gwa = _mm512_add_ps(gwa, r);
        touched = true;
      }
      xtouched |= touched;
      if (NW && touched && j < rn) {
        float* dst = gw + (n0 + j) * D + d;
        _mm512_mask_storeu_ps(dst, lm, _mm512_sub_ps(_mm512_maskz_loadu_ps(lm, dst), gwa));
      }
    }
    if (NX && xtouched)
      for (int i = 0; i < rb; ++i) {
        float* dst = gx + (b0 + i) * D + d;
        _mm512_mask_storeu_ps(dst, lm, _mm512_add_ps(_mm512_maskz_loadu_ps(lm, dst), gxa[i]));
      }
  }
}
#endif

template <class T, int KIND, bool NX, bool NW>
void lp_bwd_kind(const T* x, const T* w, int64_t B, int64_t N, int64_t D, const T* inv, const T* c, T* gx, T* gw,
                 const Pow& pw, int nthreads) {
  // Split the larger of B, N across threads; each thread owns its rows of that gradient and
  // accumulates the other gradient into a private buffer, summed at the end.
  bool split_n = N >= B;
#if defined(LC_HAVE_SPARSE)
  constexpr bool SPARSE = KIND == POW_REAL && sizeof(T) == 4;
#else
  constexpr bool SPARSE = false;
#endif
#if defined(LC_HAVE_SPARSE)
  const int64_t TRB = SPARSE ? SB_RB : BW_RB, TRN = SPARSE ? SB_RN : BW_RN;
#else
  const int64_t TRB = BW_RB, TRN = BW_RN;
#endif
  int64_t nbt = (B + TRB - 1) / TRB, nnt = (N + TRN - 1) / TRN;
  const float theta = skip_threshold_bwd(pw.p);
  int T_ = std::max(1, nthreads);
  bool need_priv = split_n ? NX : NW;
  int64_t priv_rows = split_n ? B : N;
  std::vector<T> priv(need_priv && T_ > 1 ? (size_t)((T_ - 1) * priv_rows * D) : 0, (T)0);
#pragma omp parallel num_threads(T_)
  {
    FlushDenormals ftz;
    int tid = omp_get_thread_num();
    int nt = omp_get_num_threads();
    T* mine = nullptr;
    if (need_priv) mine = tid == 0 ? (split_n ? gx : gw) : priv.data() + (size_t)(tid - 1) * priv_rows * D;
    T* gxp = split_n ? mine : gx;
    T* gwp = split_n ? gw : mine;
    int64_t outer = split_n ? nnt : nbt, inner = split_n ? nbt : nnt;
    int64_t lo = outer * tid / nt, hi = outer * (tid + 1) / nt;
    std::vector<float> sbuf;
    std::vector<uint16_t> smask;
    if (SPARSE) {
      sbuf.resize((size_t)(TRB * TRN * (D + 16)));
      smask.resize((size_t)(TRB * TRN * ((D + 15) / 16)));
    }
    for (int64_t o = lo; o < hi; ++o)
      for (int64_t q = 0; q < inner; ++q) {
        int64_t bt = split_n ? q : o, nt_ = split_n ? o : q;
#if defined(LC_HAVE_SPARSE)
        if constexpr (SPARSE) {
          bwd_sparse_tile<NX, NW>((const float*)x, (const float*)w, B, N, D, bt * TRB, nt_ * TRN, (const float*)inv,
                                  (const float*)c, (float*)gxp, (float*)gwp, pw, theta, sbuf.data(), smask.data());
          continue;
        }
#endif
        bwd_tile<T, KIND, NX, NW>(x, w, B, N, D, bt * BW_RB, nt_ * BW_RN, inv, c, gxp, gwp, pw);
      }
#pragma omp barrier
    if (need_priv && T_ > 1) {
      T* dst = split_n ? gx : gw;
      int64_t total = priv_rows * D;
#pragma omp for schedule(static)
      for (int64_t i = 0; i < total; ++i) {
        T acc = 0;
        for (int k = 0; k < nt - 1; ++k) acc += priv[(size_t)k * total + i];
        dst[i] += acc;
      }
    }
  }
}

template <class T, int KIND>
void lp_bwd_dispatch(const T* x, const T* w, int64_t B, int64_t N, int64_t D, const T* inv, const T* c, T* gx,
                     T* gw, const Pow& pw, int nthreads) {
  if (gx && gw) lp_bwd_kind<T, KIND, true, true>(x, w, B, N, D, inv, c, gx, gw, pw, nthreads);
  else if (gx) lp_bwd_kind<T, KIND, true, false>(x, w, B, N, D, inv, c, gx, gw, pw, nthreads);
  else if (gw) lp_bwd_kind<T, KIND, false, true>(x, w, B, N, D, inv, c, gx, gw, pw, nthreads);
}

// gx, gw (either may be null) are overwritten.
template <class T>
void lp_bwd(const T* g, const T* x, const T* w, const T* y, int64_t B, int64_t N, int64_t D, double p, T* gx, T* gw,
            int nthreads) {
  if (gx) std::fill(gx, gx + B * D, (T)0);
  if (gw) std::fill(gw, gw + N * D, (T)0);
  if (B == 0 || N == 0 || D == 0 || (!gx && !gw)) return;
  int64_t total = B * N;
  std::vector<T> inv((size_t)total), c((size_t)total);
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t i = 0; i < total; ++i) {
    bool ok = y[i] > 0;
    inv[(size_t)i] = ok ? (T)1 / y[i] : (T)0;
    c[(size_t)i] = ok ? g[i] : (T)0;
  }
  Pow pw = make_pow(p);
  switch (pw.kind) {
    case POW_ONE: lp_bwd_dispatch<T, POW_ONE>(x, w, B, N, D, inv.data(), c.data(), gx, gw, pw, nthreads); break;
    case POW_TWO: lp_bwd_dispatch<T, POW_TWO>(x, w, B, N, D, inv.data(), c.data(), gx, gw, pw, nthreads); break;
    case POW_EIGHT: lp_bwd_dispatch<T, POW_EIGHT>(x, w, B, N, D, inv.data(), c.data(), gx, gw, pw, nthreads); break;
    case POW_INT: lp_bwd_dispatch<T, POW_INT>(x, w, B, N, D, inv.data(), c.data(), gx, gw, pw, nthreads); break;
    default: lp_bwd_dispatch<T, POW_REAL>(x, w, B, N, D, inv.data(), c.data(), gx, gw, pw, nthreads); break;
  }
}

// ---------------------------------------------------------------- p = inf backward (scatter)
template <class T> inline T sgn(T v) { return (T)((v > 0) - (v < 0)); }

template <class T>
void linf_bwd(const T* g, const T* x, const T* w, const int32_t* am, int64_t B, int64_t N, int64_t D, T* gx, T* gw,
              int nthreads) {
  if (gx) {
    std::fill(gx, gx + B * D, (T)0);
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t n = 0; n < N; ++n) {
        int64_t a = am[b * N + n];
        gx[b * D + a] += g[b * N + n] * sgn<T>(x[b * D + a] - w[n * D + a]);
      }
  }
  if (gw) {
    std::fill(gw, gw + N * D, (T)0);
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t b = 0; b < B; ++b) {
        int64_t a = am[b * N + n];
        gw[n * D + a] -= g[b * N + n] * sgn<T>(x[b * D + a] - w[n * D + a]);
      }
  }
}

// ---------------------------------------------------------------- peak microbenchmark
// max |x - w| over in-cache data with the same register tile as the p = inf kernel, no argmax:
// element-ops per second over all threads. An upper bound for what the real kernel can reach.
double linf_peak_f32(int64_t reps, int nthreads) {
  constexpr int L = 16;
  const int64_t D = 256, B = INF_RB, N = INF_RN * L;
  double t0 = omp_get_wtime();
  volatile float sink = 0;
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<float> x(B * D), w(N * D), y(B * N);
    for (int64_t i = 0; i < B * D; ++i) x[i] = (float)((i * 37) % 101) * 0.01f;
    for (int64_t i = 0; i < N * D; ++i) w[i] = (float)((i * 53) % 97) * 0.01f;
    std::vector<float> wp = pack_panels<float>(w.data(), N, D, 1);
    for (int64_t r = 0; r < reps; ++r) {
      linf_tile<float, false>(x.data(), w.data(), wp.data(), B, N, D, 0, 0, y.data(), nullptr);
      x[r % (B * D)] += 1e-7f;  // keep the compiler from hoisting
    }
    float acc = 0;
    for (float v : y) acc += v;
    sink = sink + acc;
  }
  double dt = omp_get_wtime() - t0;
  (void)sink;
  return (double)reps * nthreads * B * N * D / dt;
}

// The general-p power sum_i exp2(p log2 a_i) over in-cache a in [0.3, 1) on one thread:
// powers per second, the throughput limit of one finite-p term (BENCHMARKS.md).
double pow_peak_f32(int64_t reps, double p) {
  constexpr int n = 1024;
  alignas(64) float a[n];
  for (int i = 0; i < n; ++i) a[i] = 0.3f + 0.7f * (float)((i * 37) % 101) / 101.0f;
  vec<float> acc[4] = {};
  const float e = (float)p;
  double t0 = omp_get_wtime();
  for (int64_t r = 0; r < reps; ++r) {
    for (int i = 0; i < n; i += 64)
      for (int k = 0; k < 4; ++k) acc[k] += fwd_term<float, POW_REAL>(vload<float>(a + i + 16 * k), Pow{POW_REAL, 0, p});
    a[r % n] += 1e-9f * e;  // keep the compiler from hoisting
  }
  double dt = omp_get_wtime() - t0;
  volatile float sink = (acc[0] + acc[1] + acc[2] + acc[3])[0];
  (void)sink;
  return (double)reps * n / dt;
}

// True if any of n values is NaN (callers then use the reference, whose max/sign propagate NaN).
template <class T> bool any_nan(const T* p, int64_t n) {
  constexpr int L = VT<T>::L;
  ivec<T> acc = ivec<T>{};
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    vec<T> v = vload<T>(p + i);
    acc |= (ivec<T>)(v != v);
  }
  bool r = false;
  for (int l = 0; l < L; ++l) r |= acc[l] != 0;
  for (; i < n; ++i) r |= p[i] != p[i];
  return r;
}
template <class T> bool inputs_nan(const T* x, const T* w, int64_t B, int64_t N, int64_t D) {
  return any_nan<T>(x, B * D) || any_nan<T>(w, N * D);
}

// The two-pass (max, then scaled sum) forward for p = 8, only to measure it against the
// one-pass unscaled sum that lp_fwd uses (benchmarks/bench_linf.py --two-pass-check).
void lp_fwd8_two_pass_f32(const float* x, const float* w, int64_t B, int64_t N, int64_t D, float* y, int nt) {
  Pow pw = make_pow(8.0);
  lp_fwd_kind<float, POW_EIGHT>(x, w, B, N, D, pw, y, nt, true);
}

}  // namespace

extern "C" {
void lc_lp_fwd8_two_pass_f32(const float* x, const float* w, int64_t B, int64_t N, int64_t D, float* y, int nt) {
  lp_fwd8_two_pass_f32(x, w, B, N, D, y, nt);
}
int lc_abi_version() { return 3; }
// The skip thresholds of the float32 general-p kernels (theta_f for the forward at this D,
// theta_b for the backward) and whether this build uses them (1) or the dense path (0).
int lc_skip_thresholds(double p, int64_t D, float* out) {
  out[0] = skip_threshold_fwd(p, D);
  out[1] = skip_threshold_bwd(p);
#if defined(LC_HAVE_SPARSE)
  return 1;
#else
  return 0;
#endif
}
int lc_has_avx512() {
#if defined(__AVX512F__) && defined(__AVX512DQ__)
  return 1;
#else
  return 0;
#endif
}
int lc_linf_fwd_f32(const float* x, const float* w, int64_t B, int64_t N, int64_t D, float* y, int32_t* am, int nt) {
  if (inputs_nan<float>(x, w, B, N, D)) return 1;
  linf_fwd<float>(x, w, B, N, D, y, am, nt);
  return 0;
}
int lc_linf_fwd_f64(const double* x, const double* w, int64_t B, int64_t N, int64_t D, double* y, int32_t* am, int nt) {
  if (inputs_nan<double>(x, w, B, N, D)) return 1;
  linf_fwd<double>(x, w, B, N, D, y, am, nt);
  return 0;
}
int lc_linf_bwd_f32(const float* g, const float* x, const float* w, const int32_t* am, int64_t B, int64_t N, int64_t D, float* gx, float* gw, int nt) {
  if (inputs_nan<float>(x, w, B, N, D)) return 1;
  linf_bwd<float>(g, x, w, am, B, N, D, gx, gw, nt);
  return 0;
}
int lc_linf_bwd_f64(const double* g, const double* x, const double* w, const int32_t* am, int64_t B, int64_t N, int64_t D, double* gx, double* gw, int nt) {
  if (inputs_nan<double>(x, w, B, N, D)) return 1;
  linf_bwd<double>(g, x, w, am, B, N, D, gx, gw, nt);
  return 0;
}
int lc_lp_fwd_f32(const float* x, const float* w, int64_t B, int64_t N, int64_t D, double p, float* y, int nt) {
  if (inputs_nan<float>(x, w, B, N, D)) return 1;
  lp_fwd<float>(x, w, B, N, D, p, y, nt);
  return 0;
}
int lc_lp_fwd_f64(const double* x, const double* w, int64_t B, int64_t N, int64_t D, double p, double* y, int nt) {
  if (inputs_nan<double>(x, w, B, N, D)) return 1;
  lp_fwd<double>(x, w, B, N, D, p, y, nt);
  return 0;
}
int lc_lp_bwd_f32(const float* g, const float* x, const float* w, const float* y, int64_t B, int64_t N, int64_t D, double p, float* gx, float* gw, int nt) {
  if (inputs_nan<float>(x, w, B, N, D)) return 1;
  lp_bwd<float>(g, x, w, y, B, N, D, p, gx, gw, nt);
  return 0;
}
int lc_lp_bwd_f64(const double* g, const double* x, const double* w, const double* y, int64_t B, int64_t N, int64_t D, double p, double* gx, double* gw, int nt) {
  if (inputs_nan<double>(x, w, B, N, D)) return 1;
  lp_bwd<double>(g, x, w, y, B, N, D, p, gx, gw, nt);
  return 0;
}
double lc_linf_peak_f32(int64_t reps, int nt) { return linf_peak_f32(reps, nt); }
double lc_pow_peak_f32(int64_t reps, double p) { return pow_peak_f32(reps, p); }
}
