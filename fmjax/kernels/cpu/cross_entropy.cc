// fmjax's softmax cross-entropy for XLA:CPU (float32), called through the XLA FFI: per row of
// logits [N, V], the weighted loss and its gradient, written over the logits.
//
//   lse = log sum_v exp(l_v)        ce = (lse - l[target]) w
//   dl_v = (exp(l_v - lse) - [v == target]) w,  0 for the padded columns v >= classes
//
// XLA:CPU makes several passes over a chunk's logits (max, exp and sum, the gradient), each
// from L3 or memory for a chunk of 512 positions x 8K classes. Here a row (32 KB for 8K
// classes) is read once and stays in L1 for its three passes; rows go over XLA's intra-op
// threads. objectives._ce_chunk binds it (fmjax/kernels/cpu/cross_entropy.py);
// tests/test_cpu_cross_entropy.py checks it against XLA.
#include <limits>

#include "kernels.h"

namespace {

constexpr long ROWS = 8;  // rows per task

// One row: its loss, and its gradient over the logits in place
float row(float* l, long v, long classes, int target, float w) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  vf vm = splat(neg_inf);
  long i = 0;
  for (; i + W <= classes; i += W) {
    const vf x = load(l + i);
    vm = x > vm ? x : vm;
  }
  float m = max_of(vm);
  for (; i < classes; ++i) m = std::max(m, l[i]);
  const float target_logit = l[target];
  vf vs{};
  for (i = 0; i + W <= classes; i += W) {
    const vf e = vexp(load(l + i) - m);
    store(l + i, e), vs += e;
  }
  float s = sum_of(vs);
  for (; i < classes; ++i) l[i] = std::exp(l[i] - m), s += l[i];
  const float scale = w / s;
  for (i = 0; i + W <= classes; i += W) store(l + i, load(l + i) * scale);
  for (; i < classes; ++i) l[i] *= scale;
  std::fill(l + classes, l + v, 0.0f);
  l[target] -= w;
  return (m + std::log(s) - target_logit) * w;
}

ffi::Error cross_entropy(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> logits,
                         ffi::Buffer<ffi::S32> targets, ffi::Buffer<ffi::F32> weights,
                         ffi::ResultBuffer<ffi::F32> ce, ffi::ResultBuffer<ffi::F32> dlogits,
                         int64_t classes) {
  const long v = logits.dimensions().back(), n = logits.element_count() / v;
  if (targets.element_count() != n || weights.element_count() != n || classes < 1 ||
      classes > v)
    return ffi::Error::InvalidArgument("fmjax cpu cross entropy: targets and weights need one "
                                       "entry per row of logits, and 1 <= classes <= V");
  const int32_t* T = targets.typed_data();
  const float* Wt = weights.typed_data();
  float *L = dlogits->typed_data(), *CE = ce->typed_data();
  auto task = [&](int t) {
    for (long r = t * ROWS; r < std::min(n, (t + 1) * ROWS); ++r) {
      const int target = std::clamp<int>(T[r], 0, static_cast<int>(classes) - 1);
      CE[r] = row(L + r * v, v, classes, target, Wt[r]);
    }
  };
  parallel_for(pool, static_cast<int>((n + ROWS - 1) / ROWS), task);
  return ffi::Error::Success();
}

}  // namespace

// The XLA FFI entry point (fmjax/kernels/cpu/cross_entropy.py registers it by this name): logits,
// targets, weights -> ce [N], dlogits (aliased to logits).
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    FmjaxCrossEntropy, cross_entropy,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::S32>>().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>().Attr<int64_t>("classes"));
