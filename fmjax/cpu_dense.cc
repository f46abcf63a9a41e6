// fmjax's weight-gradient GEMM for XLA:CPU (float32), called through the XLA FFI.
//
// dw[I, O] = x[N, I]^T g[N, O] and, for layers with a bias, db[O] = sum_n g[n, :]: the
// backward pass of y = x w (+ b) for row-major x and g. XLA:CPU's GEMM library takes only
// row-major [M, K] @ [K, N] operands, so XLA first copies x^T (or g^T) and then multiplies
// [I, N] @ [N, O], a shape its kernels ran at 290-390 GFLOP/s on bench_small's layers
// (forward products: 425-435) on a 2-core Zen 5, before a pass for db. Here the panels of
// cpu_kernels.h read x^T in place: the MR entries a tile row broadcasts at step n are
// x[n, i:i+MR], and g's rows are loaded as vectors. A third entry adds x^T g into an
// existing dw in place (the output layer's table gradient, summed over chunks of tokens).
// fmjax/cpu_dense.py binds it; tests/test_cpu_dense.py checks it against XLA.
#include "cpu_kernels.h"

namespace {

constexpr int KC = 512;  // steps of n per pass: a 512 x 128 slice of g stays in L2
constexpr int NB = 128;  // columns per task
constexpr int IB = 48;   // rows per task (a multiple of MR)
// From this many columns on, g's rows are 16 KB or more apart, and a column slice of them
// falls into a few sets of the (set-associative) caches: such a g is copied slice by slice
// into contiguous scratch, one task per NB columns over all rows of dw. The output layer's
// table gradient ([512, 384]^T @ [512, 8192]) then runs at 391 instead of 296 GFLOP/s; the
// layers' narrower g ran slower in the step that way (fewer, larger tasks).
constexpr long PACK_FROM = 4096;

// Tasks [0, tiles) compute dw by (rows, NB columns) blocks; tasks after them (if db) sum
// g's columns, NB at a time. O is a multiple of W (the Python side checks).
ffi::Error weight_grad(ffi::ThreadPool& pool, const ffi::Buffer<ffi::F32>& x,
                       const ffi::Buffer<ffi::F32>& g, float* dw, float* db,
                       bool accumulate = false) {
  const long N = x.dimensions()[0], I = x.dimensions()[1], O = g.dimensions()[1];
  if (O % W || g.dimensions()[0] != N)
    return ffi::Error::InvalidArgument("fmjax cpu dense: g must be [N, O], O a multiple of "
                                       "the vector width");
  const float *X = x.typed_data(), *G = g.typed_data();
  const bool pack = O >= PACK_FROM;
  const int rows = pack ? I : IB;  // per task
  const int row_blocks = (I + rows - 1) / rows, col_blocks = (O + NB - 1) / NB;
  const int tiles = row_blocks * col_blocks;
  auto task = [&](int t) {
    const int o0 = (t % col_blocks) * NB, cols = std::min<int>(O - o0, NB);
    if (t >= tiles) {  // db[o0 : o0 + cols]
      for (int o = o0; o < o0 + cols; o += W) {
        vf sum = vf{};
        for (long n = 0; n < N; ++n) sum += load(G + n * O + o);
        store(db + o, sum);
      }
      return;
    }
    const int i0 = (t / col_blocks) * rows, i1 = std::min<int>(I, i0 + rows);
    for (int p0 = 0; p0 < N; p0 += KC) {
      const int p1 = std::min<int>(N, p0 + KC);
      const float *A = X, *B = G + o0;  // panels read A[p * I + i] and B[p * ldb + o]
      long ldb = O;
      int q0 = p0, q1 = p1;
      if (pack) {  // g[p0:p1, o0:o0+cols] -> B, contiguous
        const auto [slice] = scratch<1>({long{KC} * NB});
        for (int p = p0; p < p1; ++p)
          std::memcpy(slice + (p - p0) * cols, G + p * O + o0, cols * sizeof(float));
        A = X + p0 * I, B = slice, ldb = cols, q0 = 0, q1 = p1 - p0;
      }
      for (int i = i0; i < i1; i += MR)
        panel(std::min(MR, i1 - i), cols, q0, q1, A + i, 1, I, B, ldb, dw + i * O + o0, O,
              1.0f, accumulate || p0 > 0);
    }
  };
  parallel_for(pool, tiles + (db ? col_blocks : 0), task);
  return ffi::Error::Success();
}

ffi::Error weight(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                  ffi::ResultBuffer<ffi::F32> dw) {
  return weight_grad(pool, x, g, dw->typed_data(), nullptr);
}

// dw += x^T g in place: dw is an input aliased to the result
ffi::Error add_weight(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                      ffi::Buffer<ffi::F32>, ffi::ResultBuffer<ffi::F32> dw) {
  return weight_grad(pool, x, g, dw->typed_data(), nullptr, true);
}

ffi::Error weight_and_bias(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                           ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> dw,
                           ffi::ResultBuffer<ffi::F32> db) {
  return weight_grad(pool, x, g, dw->typed_data(), db->typed_data());
}

}  // namespace

// The XLA FFI entry points (fmjax/cpu_dense.py registers them by these names).
using Floats = ffi::Buffer<ffi::F32>;
XLA_FFI_DEFINE_HANDLER_SYMBOL(  // x, g -> dw
    FmjaxDenseWeightGrad, weight,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<Floats>().Arg<Floats>().Ret<Floats>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(  // x, g, dw -> dw + x^T g (the same buffer)
    FmjaxDenseAddWeightGrad, add_weight,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<Floats>().Arg<Floats>().Arg<Floats>()
        .Ret<Floats>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(  // x, g -> dw, db
    FmjaxDenseWeightBiasGrad, weight_and_bias,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<Floats>().Arg<Floats>().Ret<Floats>()
        .Ret<Floats>());
