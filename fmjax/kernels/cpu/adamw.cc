// fmjax's AdamW update for XLA:CPU (float32), called through the XLA FFI: one pass over a
// parameter's p, g, mu and nu that writes p, mu and nu in place.
//
// optax's chain (clip_by_global_norm, scale_by_adam, add_decayed_weights, scale_by_learning_
// rate), after the step's division of the summed gradient by its token count, leaves
// XLA:CPU four or five passes per parameter: g scaled, mu, nu and p each in a fusion of its
// own that reads its inputs again (about 56 bytes per parameter instead of 28), with true
// divisions by scalars in each. Here the scalars come folded in `hyper` (fmjax/kernels/cpu/adamw.py
// computes them), so an element costs one square root and one division:
//
//   g  = g * scale                      scale = 1 / tokens, times max_norm / norm if clipped
//   mu = b1 mu + (1 - b1) g
//   nu = b2 nu + (1 - b2) g^2
//   u  = mu / bc1 / (sqrt(nu / bc2) + eps) + wd p      bc = 1 - b^t (bias corrections)
//   p  = p - lr u
//
// and nothing is written when `apply` is 0 (a step skipped for a non-finite loss or
// gradient). tests/test_cpu_adamw.py checks it against optax.
#include "kernels.h"

namespace {

// hyper's entries
enum { SCALE, B1, B2, EPS, NEG_LR, WD, INV_BC1, INV_BC2, APPLY, HYPER };
constexpr long CHUNK = 16 * 1024;  // floats per task: 4 arrays of 64 KB stream through L2

inline float sqrt_of(float x) { return std::sqrt(x); }
inline vf sqrt_of(vf x) {  // one vector square root (-fno-math-errno: no scalar fallback)
  for (int k = 0; k < W; ++k) x[k] = std::sqrt(x[k]);
  return x;
}

template <bool DECAY, typename T>
inline T step(T& p, T g, T& mu, T& nu, const float* h) {
  g = g * h[SCALE];
  mu = h[B1] * mu + (1.0f - h[B1]) * g;
  nu = h[B2] * nu + (1.0f - h[B2]) * (g * g);
  T u = mu * h[INV_BC1] / (sqrt_of(nu * h[INV_BC2]) + h[EPS]);
  if (DECAY) u = u + h[WD] * p;
  p = p + u * h[NEG_LR];
  return p;
}

template <bool DECAY>
void update(float* p, const float* g, float* mu, float* nu, long begin, long end,
            const float* h) {
  long i = begin;
  for (; i + W <= end; i += W) {
    vf pv = load(p + i), mv = load(mu + i), nv = load(nu + i);
    step<DECAY>(pv, load(g + i), mv, nv, h);
    store(p + i, pv), store(mu + i, mv), store(nu + i, nv);
  }
  for (; i < end; ++i) step<DECAY>(p[i], g[i], mu[i], nu[i], h);
}

ffi::Error adamw(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> hyper, ffi::Buffer<ffi::F32> p,
                 ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> mu, ffi::Buffer<ffi::F32> nu,
                 ffi::ResultBuffer<ffi::F32> p_out, ffi::ResultBuffer<ffi::F32> mu_out,
                 ffi::ResultBuffer<ffi::F32> nu_out) {
  const long n = p.element_count();
  if (hyper.element_count() != HYPER || g.element_count() != n || mu.element_count() != n ||
      nu.element_count() != n)
    return ffi::Error::InvalidArgument("fmjax cpu adamw: hyper must hold 9 floats and p, g, "
                                       "mu, nu the same number of elements");
  float h[HYPER];
  std::memcpy(h, hyper.typed_data(), sizeof h);
  if (h[APPLY] == 0.0f) return ffi::Error::Success();  // p, mu, nu are their inputs' buffers
  float *P = p_out->typed_data(), *M = mu_out->typed_data(), *V = nu_out->typed_data();
  const float* G = g.typed_data();
  auto task = [&](int t) {
    const long begin = t * CHUNK, end = std::min(n, begin + CHUNK);
    if (h[WD] != 0.0f)
      update<true>(P, G, M, V, begin, end, h);
    else
      update<false>(P, G, M, V, begin, end, h);
  };
  parallel_for(pool, static_cast<int>((n + CHUNK - 1) / CHUNK), task);
  return ffi::Error::Success();
}

}  // namespace

// The XLA FFI entry point (fmjax/kernels/cpu/adamw.py registers it by this name): hyper, p, g, mu,
// nu -> p, mu, nu, each result aliased to its input.
using Floats = ffi::Buffer<ffi::F32>;
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    FmjaxAdamW, adamw,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<Floats>().Arg<Floats>().Arg<Floats>()
        .Arg<Floats>().Arg<Floats>().Ret<Floats>().Ret<Floats>().Ret<Floats>());
