// Building blocks of fmjax's float32 CPU kernels (attention.cc, dense.cc), called
// through the XLA FFI: GCC/Clang vector extensions (no intrinsics, so one source serves
// AVX-512, AVX2 and NEON), register-tiled matmul panels, a vectorised exp, per-thread scratch
// memory and a parallel loop over XLA's own intra-op thread pool. Each kernel source includes
// this file once; fmjax/kernels/cpu/ffi.py compiles it with the host's C++ compiler.
//
// The matmuls are register-tiled panels: a tile of MR rows x NV vectors of C stays in
// registers while A's entries are broadcast and B's rows are loaded as vectors. Rows of B
// and C must be whole vectors (a multiple of W floats; the Python side checks).
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#if defined(__AVX512F__)
constexpr int W = 16;  // floats per vector
constexpr int MR = 6;  // rows per register tile: MR * NV accumulators of 32 registers
#elif defined(__AVX__)
constexpr int W = 8;
constexpr int MR = 3;  // 16 registers
#elif defined(__aarch64__)
constexpr int W = 4;
constexpr int MR = 6;  // 32 registers
#else
constexpr int W = 4;
constexpr int MR = 3;
#endif
constexpr int NV = 4;    // vectors per tile row

typedef float vf __attribute__((vector_size(W * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(W * sizeof(int32_t))));
typedef int8_t vb __attribute__((vector_size(W)));

inline vf load(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf splat(float x) { return vf{} + x; }
inline float sum_of(vf v) {  // of the lanes
  float s = 0.0f;
  for (int k = 0; k < W; ++k) s += v[k];
  return s;
}
inline float max_of(vf v) {  // of the lanes
  float m = v[0];
  for (int k = 1; k < W; ++k) m = std::max(m, v[k]);
  return m;
}

// exp(x) to ~1 ulp, clamped to [-87, 88]: 2^n * e^r, |r| <= ln2 / 2, degree-6 Taylor polynomial.
inline vf vexp(vf x) {
  x = x < -87.0f ? splat(-87.0f) : x;
  x = x > 88.0f ? splat(88.0f) : x;  // masked scores: finite, then zeroed
  const vf shift = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  vf t = x * 1.44269504f + shift;
  vf n = t - shift;
  vi bits;
  std::memcpy(&bits, &t, sizeof bits);
  bits = (bits - 0x4B400000 + 127) << 23;  // 2^n
  vf r = x - n * 0.693145752f - n * 1.42860677e-6f;
  vf p = splat(1.0f / 720);
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  vf scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// C[r, n0:n0+NVT*W] (+)= alpha * sum_{p0 <= p < p1} a_rows[r][p * ap] * B[p * ldb + n0:...].
// With COPY, the rows of B it loads are also stored at copy + p * NV * W: packed, for the
// tiles that use the same slice of B next. With an `out` function, the sums go to
// out(r, n0 + v * W, sum) instead (alpha unused; accumulate only fetches C's rows early): a
// GEMM's epilogue.
template <int NVT, bool COPY = false, typename Out = std::nullptr_t>
inline void tile(const float* const* a_rows, long ap, int p0, int p1, const float* B, long ldb,
                 float* const* c_rows, int rows, int n0, float alpha, bool accumulate,
                 float* copy = nullptr, const Out& out = nullptr) {
  vf c[MR][NVT];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NVT; ++v) c[r][v] = vf{};
  if (accumulate)  // C's rows may be far apart and cold: fetched while the products run
    for (int r = 0; r < rows; ++r)
      for (int v = 0; v < NVT; ++v) __builtin_prefetch(c_rows[r] + n0 + v * W, 1);
  for (int p = p0; p < p1; ++p) {
    const float* b = B + p * ldb + n0;
    vf bv[NVT];
    for (int v = 0; v < NVT; ++v) {
      bv[v] = load(b + v * W);
      if (COPY) store(copy + p * (NV * W) + v * W, bv[v]);
    }
    for (int r = 0; r < MR; ++r) {
      const float a = a_rows[r][p * ap];
      for (int v = 0; v < NVT; ++v) c[r][v] += a * bv[v];
    }
  }
  if constexpr (!std::is_same_v<Out, std::nullptr_t>) {
    for (int r = 0; r < rows; ++r)
      for (int v = 0; v < NVT; ++v) out(r, n0 + v * W, c[r][v]);
  } else {
    for (int r = 0; r < rows; ++r)
      for (int v = 0; v < NVT; ++v) {
        float* at = c_rows[r] + n0 + v * W;
        vf x = c[r][v] * alpha;
        store(at, accumulate ? x + load(at) : x);
      }
  }
}

// tile<nv, COPY>(args...) for a tile of nv <= NV vectors
template <bool COPY, typename... Args>
void tile_of(int nv, Args... args) {
  switch (nv) {
    case 4: return tile<4, COPY>(args...);
    case 3: return tile<3, COPY>(args...);
    case 2: return tile<2, COPY>(args...);
    case 1: return tile<1, COPY>(args...);
  }
}

// at[r] = base + min(r, rows - 1) * stride: a tile's row pointers; rows past the end repeat
// the last one (computed, never stored)
template <typename T>
void row_pointers(T* base, long stride, int rows, T* (&at)[MR]) {
  for (int r = 0; r < MR; ++r) at[r] = base + std::min(r, rows - 1) * stride;
}

// C[r, n] (+)= alpha * sum_{p0 <= p < p1} A[r * as + p * ap] * B[p * ldb + n] for r < rows
// (at most MR) and n < N (a multiple of W).
void panel(int rows, int N, int p0, int p1, const float* A, long as, long ap, const float* B,
           long ldb, float* C, long ldc, float alpha, bool accumulate) {
  const float* a_rows[MR];
  float* c_rows[MR];
  row_pointers(A, as, rows, a_rows);
  row_pointers(C, ldc, rows, c_rows);
  for (int n = 0; n < N; n += NV * W)
    tile_of<false>(std::min(NV, (N - n) / W), a_rows, ap, p0, p1, B, ldb, c_rows, rows, n,
                   alpha, accumulate);
}

inline long round_up(long x, long m) { return (x + m - 1) / m * m; }

// Arrays of `sizes` floats, cache-line aligned, in this thread's scratch memory: kept between
// calls, so heads allocate nothing and do not fault pages in. Valid until the next call.
template <size_t N>
std::array<float*, N> scratch(const std::array<long, N>& sizes) {
  thread_local std::vector<float> memory;
  long total = 16;
  for (long n : sizes) total += round_up(n, 16);
  if (static_cast<long>(memory.size()) < total) memory.resize(total);
  float* at = memory.data() + (16 - reinterpret_cast<uintptr_t>(memory.data()) / 4 % 16) % 16;
  std::array<float*, N> parts;
  for (size_t i = 0; i < N; ++i) {
    parts[i] = at;
    at += round_up(sizes[i], 16);
  }
  return parts;
}

// Runs fn(task) for task in [0, n) on this thread and on helpers scheduled on XLA's intra-op
// pool. This thread never waits for a helper that has not started (the pool's threads may
// all be busy, e.g. running this same call for other devices): whichever thread claims a
// task runs it, and only helpers holding a claimed task are waited for. A helper that starts
// after the last task was claimed touches nothing but the shared counters.
template <typename Fn>
void parallel_for(ffi::ThreadPool& pool, int n, Fn& fn) {
  struct Shared {
    std::atomic<int> next{0}, busy{0};
  };
  auto shared = std::make_shared<Shared>();
  auto work = [n, &fn](Shared& s) {
    s.busy.fetch_add(1);
    for (int t; (t = s.next.fetch_add(1)) < n;) fn(t);
    s.busy.fetch_sub(1);
  };
  const int helpers = std::max<int>(0, std::min<int64_t>(pool.num_threads(), n) - 1);
  for (int i = 0; i < helpers; ++i) pool.Schedule([shared, work] { work(*shared); });
  work(*shared);
  while (shared->busy.load() > 0) std::this_thread::yield();
}

}  // namespace
