// fmjax's LayerNorm for XLA:CPU (float32), forward and backward, called through the XLA FFI.
//
// y = (x - mean) * rstd * scale + bias over each row of x [N, D], rstd = 1 / sqrt(var + eps).
// XLA:CPU runs a norm as several fusions, each a pass over [N, D] (the row reductions apart
// from the elementwise parts, the column sums of the backward pass apart again). Here each
// row is read once per pass over it while it sits in L1, rows are spread over XLA's
// intra-op threads, and the backward pass recomputes xhat from x and the saved mean and rstd:
//
//   forward:  y, mean, rstd
//   backward: xhat = (x - mean) rstd, dxhat = dy scale,
//             dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)),
//             dscale = sum_n dy xhat, dbias = sum_n dy
//
// The column sums are taken per block of rows and then added in block order, so the result
// does not depend on which thread ran which block. tests/test_cpu_layer_norm.py checks both
// against layers.layer_norm's XLA path.
#include "kernels.h"

namespace {

constexpr long ROWS = 64;  // rows per task

// sum(a) and, with B, sum(a * b) over a row of d floats
template <bool B>
inline void row_sums(const float* a, const float* b, long d, float& sa, float& sab) {
  vf va{}, vab{};
  long i = 0;
  for (; i + W <= d; i += W) {
    const vf x = load(a + i);
    va += x;
    if (B) vab += x * load(b + i);
  }
  sa = sum_of(va), sab = sum_of(vab);
  for (; i < d; ++i) sa += a[i], sab += B ? a[i] * b[i] : 0.0f;
}

ffi::Error forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                   ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y,
                   ffi::ResultBuffer<ffi::F32> mean, ffi::ResultBuffer<ffi::F32> rstd,
                   float eps) {
  const long d = x.dimensions().back(), n = x.element_count() / d;
  const float *X = x.typed_data(), *S = scale.typed_data(), *B = bias.typed_data();
  float *Y = y->typed_data(), *M = mean->typed_data(), *R = rstd->typed_data();
  auto task = [&](int t) {
    for (long r = t * ROWS; r < std::min(n, (t + 1) * ROWS); ++r) {
      const float* __restrict xr = X + r * d;
      float* __restrict yr = Y + r * d;
      float sum, unused;
      row_sums<false>(xr, nullptr, d, sum, unused);
      const float mu = sum / d;
      for (long i = 0; i < d; ++i) yr[i] = xr[i] - mu;  // centred, then squared from L1
      float sq;
      row_sums<true>(yr, yr, d, unused, sq);
      const float rs = 1.0f / std::sqrt(sq / d + eps);
      for (long i = 0; i < d; ++i) yr[i] = yr[i] * rs * S[i] + B[i];
      M[r] = mu, R[r] = rs;
    }
  };
  parallel_for(pool, static_cast<int>((n + ROWS - 1) / ROWS), task);
  return ffi::Error::Success();
}

ffi::Error backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                    ffi::Buffer<ffi::F32> mean, ffi::Buffer<ffi::F32> rstd,
                    ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dx,
                    ffi::ResultBuffer<ffi::F32> dscale, ffi::ResultBuffer<ffi::F32> dbias) {
  const long d = x.dimensions().back(), n = x.element_count() / d;
  const float *X = x.typed_data(), *S = scale.typed_data(), *M = mean.typed_data(),
              *R = rstd.typed_data(), *DY = dy.typed_data();
  float* DX = dx->typed_data();
  const int blocks = static_cast<int>((n + ROWS - 1) / ROWS);
  std::vector<float> partial(2 * blocks * d);  // per block: sum dy xhat, sum dy
  auto task = [&](int t) {
    float *__restrict ps = partial.data() + 2 * t * d, *__restrict pb = ps + d;
    for (long r = t * ROWS; r < std::min(n, (t + 1) * ROWS); ++r) {
      const float *__restrict xr = X + r * d, *__restrict dyr = DY + r * d;
      float* __restrict dxr = DX + r * d;
      const float mu = M[r], rs = R[r];
      vf va{}, vb{};  // sum(dxhat), sum(dxhat xhat); dx holds xhat for now
      long i = 0;
      for (; i + W <= d; i += W) {
        const vf xhat = (load(xr + i) - mu) * rs, g = load(dyr + i), dxhat = g * load(S + i);
        store(dxr + i, xhat);
        store(ps + i, load(ps + i) + g * xhat), store(pb + i, load(pb + i) + g);
        va += dxhat, vb += dxhat * xhat;
      }
      float a = sum_of(va), b = sum_of(vb);
      for (; i < d; ++i) {
        const float xhat = (xr[i] - mu) * rs, dxhat = dyr[i] * S[i];
        dxr[i] = xhat, ps[i] += dyr[i] * xhat, pb[i] += dyr[i];
        a += dxhat, b += dxhat * xhat;
      }
      a /= d, b /= d;
      for (long i = 0; i < d; ++i) dxr[i] = rs * (dyr[i] * S[i] - a - dxr[i] * b);
    }
  };
  parallel_for(pool, blocks, task);
  float *DS = dscale->typed_data(), *DB = dbias->typed_data();
  std::fill(DS, DS + d, 0.0f), std::fill(DB, DB + d, 0.0f);
  for (int t = 0; t < blocks; ++t)
    for (long i = 0; i < d; ++i)
      DS[i] += partial[2 * t * d + i], DB[i] += partial[(2 * t + 1) * d + i];
  return ffi::Error::Success();
}

}  // namespace

// The XLA FFI entry points (fmjax/kernels/cpu/layer_norm.py registers them by these names).
using Floats = ffi::Buffer<ffi::F32>;
XLA_FFI_DEFINE_HANDLER_SYMBOL(  // x, scale, bias -> y, mean, rstd
    FmjaxLayerNormForward, forward,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<Floats>().Arg<Floats>().Arg<Floats>()
        .Ret<Floats>().Ret<Floats>().Ret<Floats>().Attr<float>("eps"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(  // x, scale, mean, rstd, dy -> dx, dscale, dbias
    FmjaxLayerNormBackward, backward,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<Floats>().Arg<Floats>().Arg<Floats>()
        .Arg<Floats>().Arg<Floats>().Ret<Floats>().Ret<Floats>().Ret<Floats>());
