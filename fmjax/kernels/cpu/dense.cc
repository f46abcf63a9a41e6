// fmjax's dense GEMMs for XLA:CPU (float32), called through the XLA FFI: the weight gradient
// and (at the end of this file) the forward product y = x w (+ b).
//
// dw[I, O] = x[N, I]^T g[N, O] and, for layers with a bias, db[O] = sum_n g[n, :]: the
// backward pass of y = x w (+ b) for row-major x and g. XLA:CPU's GEMM library takes only
// row-major [M, K] @ [K, N] operands, so XLA first copies x^T (or g^T) and then multiplies
// [I, N] @ [N, O], before a pass for db. Here the panels of kernels.h read x^T in place:
// the MR entries a tile row broadcasts at step n are x[n, i:i+MR]. g's rows are far apart
// (O * 4 bytes, 6 KB for an MLP's up projection), too far for the hardware prefetchers of
// some CPUs (Intel's stop at 4 KB pages), so the first row panel of a block reads them in
// place and stores the slice it loads contiguously, and the block's other panels read that
// copy from L1. Meanwhile those panels fetch the next slice of g and the next pass's rows of
// x into L2, a few rows each. A third entry adds
// x^T g into an existing dw in place (the output layer's table gradient, summed over chunks
// of tokens). fmjax/kernels/cpu/dense.py binds them; tests/kernels/test_cpu_dense.py checks them.
#include "kernels.h"

namespace {

constexpr int KS = 128;        // steps of n per pass: a KS x NT slice of g (32 KB) stays in L1
constexpr int NT = NV * W;     // columns per register tile
constexpr int NB = 128;        // columns per task: NB, 2 NB or 4 NB
constexpr int IB = 384;        // rows per task: IB, IB / 2, IB / 4 or IB / 8 (a multiple of MR)
constexpr int TASKS_PER_THREAD = 4;  // at least, for balance beside the ops XLA runs alongside
constexpr long BLOCK_FLOATS = 128 * 1024;  // of dw per task at most: its 512 KB stay in L2
constexpr int FR = 384;       // rows of y per forward task at most (a multiple of MR)
constexpr long PACK_X = 1024;  // from this many inputs on, x's rows are 4 KB or more apart:
                               // each task copies its slice of x contiguously per pass

// The task shape: each task reads x's rows [N, rows] and g's columns [N, cols] once, so x is
// read O / cols times and g I / rows times; bigger tasks read less (from L3 or memory), but
// there must be enough of them to keep every thread busy, and their block of dw must stay
// in L2 (it is read and written once per pass).
struct Blocks {
  int rows, cols;
};
Blocks choose_blocks(long I, long O, int threads) {
  Blocks best{IB / 8, NB};  // the most tasks, if no shape has enough
  long best_reads = -1;
  for (int cols = NB; cols <= 4 * NB; cols *= 2)
    for (int rows = IB; rows >= IB / 8; rows /= 2) {
      const long tasks = (I + rows - 1) / rows * ((O + cols - 1) / cols);
      const long reads = I * ((O + cols - 1) / cols) + O * ((I + rows - 1) / rows);
      if (long{rows} * cols <= BLOCK_FLOATS && tasks >= TASKS_PER_THREAD * threads &&
          (best_reads < 0 || reads < best_reads))
        best = {rows, cols}, best_reads = reads;
    }
  return best;
}

// Rows [k * per, (k + 1) * per) of rows x width floats at base (row stride ld) into L2,
// per = the share of part k of `parts`.
void prefetch_share(const float* base, long ld, int rows, long width, int k, int parts) {
  const int per = (rows + parts - 1) / parts;
  for (int r = k * per; r < std::min(rows, (k + 1) * per); ++r) {
    for (long c = 0; c < width; c += 16) __builtin_prefetch(base + r * ld + c, 0, 2);  // a line
  }
}

// One task per block of rows x cols of dw (choose_blocks). For each pass of KS steps and each
// tile of NT columns, the block's first row panel reads g's slice in place and copies it
// into scratch as it goes, and the block's other row panels read the copy; the first row
// block also sums the copy into db. O is a multiple of W (the Python side checks).
ffi::Error weight_grad(ffi::ThreadPool& pool, const ffi::Buffer<ffi::F32>& x,
                       const ffi::Buffer<ffi::F32>& g, float* dw, float* db,
                       bool accumulate = false) {
  static_assert(NB % NT == 0 && IB / 8 % MR == 0);
  const long N = x.dimensions()[0], I = x.dimensions()[1], O = g.dimensions()[1];
  if (O % W || g.dimensions()[0] != N)
    return ffi::Error::InvalidArgument("fmjax cpu dense: g must be [N, O], O a multiple of "
                                       "the vector width");
  const float *X = x.typed_data(), *G = g.typed_data();
  const Blocks blocks = choose_blocks(I, O, pool.num_threads());
  const int ib = blocks.rows, nb = blocks.cols;  // plain names: C++17 lambdas capture them
  const int col_blocks = (O + nb - 1) / nb, row_blocks = (I + ib - 1) / ib;
  auto task = [&](int t) {
    const int o0 = (t % col_blocks) * nb, cols = std::min<int>(O - o0, nb);
    const int i0 = (t / col_blocks) * ib, i1 = std::min<int>(I, i0 + ib);
    const auto [slice, xs] = scratch<2>({long{KS} * NT, I >= PACK_X ? long{KS} * IB : 0});
    for (long p0 = 0; p0 < N; p0 += KS) {
      const int steps = std::min<long>(N - p0, KS);
      const bool add = accumulate || p0 > 0;
      const float* A = X + p0 * I + i0;  // x[p0 + p, i0 + i] at A[p * lda + i]
      long lda = I;
      if (I >= PACK_X) {  // x[p0:p0+steps, i0:i1] -> xs, contiguous
        for (int p = 0; p < steps; ++p)
          std::memcpy(xs + p * (i1 - i0), A + p * I, (i1 - i0) * sizeof(float));
        A = xs, lda = i1 - i0;
      }
      // What the next pass reads of x, and the next slice of g, are fetched into L2 a few
      // rows per panel while this pass runs (rows far apart defeat the hardware prefetchers)
      const int panels = (i1 - i0 + MR - 1) / MR, tiles = (cols + NT - 1) / NT;
      const int next_steps = std::max<long>(0, std::min<long>(N - p0 - KS, KS));
      for (int n = 0; n < cols; n += NT) {  // slice: g[p0:p0+steps, o0+n:o0+n+nv*W]
        const int nv = std::min(NV, (cols - n) / W);
        const bool last = n + NT >= cols;  // then the next slice starts the next pass
        const float* next_g = G + (last ? p0 + KS : p0) * O + o0 + (last ? 0 : n + NT);
        const int next_g_steps = last ? next_steps : steps;
        const int next_g_cols = last ? std::min(NT, cols) : std::min(NT, cols - n - NT);
        for (int i = i0; i < i1; i += MR) {
          const int rows = std::min(MR, i1 - i), panel = (i - i0) / MR;
          const float* a_rows[MR];
          float* c_rows[MR];
          row_pointers(A + (i - i0), 1, rows, a_rows);
          row_pointers(dw + i * O + o0 + n, O, rows, c_rows);
          if (panel > 0)  // the first panel reads the current slice in place: not meanwhile
            prefetch_share(next_g, O, next_g_steps, next_g_cols, panel - 1, panels - 1);
          prefetch_share(X + (p0 + KS) * I + i0, I, next_steps, i1 - i0,
                         (n / NT) * panels + panel, tiles * panels);
          if (i == i0)
            tile_of<true>(nv, a_rows, lda, 0, steps, G + p0 * O + o0 + n, O, c_rows, rows, 0,
                          1.0f, add, slice);
          else
            tile_of<false>(nv, a_rows, lda, 0, steps, slice, NT, c_rows, rows, 0, 1.0f, add,
                           nullptr);
        }
        if (db && i0 == 0)
          for (int v = 0; v < nv; ++v) {
            vf sum = p0 > 0 ? load(db + o0 + n + v * W) : vf{};
            for (int p = 0; p < steps; ++p) sum += load(slice + p * NT + v * W);
            store(db + o0 + n + v * W, sum);
          }
      }
    }
  };
  parallel_for(pool, row_blocks * col_blocks, task);
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

// The forward pass y = x w (+ b) [N, O] for x [N, I], w [I, O]: tasks of up to FR rows x 256
// columns of y (at least TASKS_PER_THREAD per thread), passes of KS steps of I. As in
// weight_grad, each tile's first row panel copies w's slice into L1 and the others read the
// copy. The first pass fetches y's rows for writing as each tile starts; later passes add to
// them, and the last hands its sums to `epilogue` (the bias) while they are in registers.
template <typename Epilogue>
void affine_passes(ffi::ThreadPool& pool, const float* X, const float* Wm, long N, long I,
                   long O, float* Y, const Epilogue& epilogue) {
  int fc = O >= 256 ? 256 : int(round_up(O, NT)), fr = FR;
  for (int c : {256, 192, 384, 320})  // equal tasks where a width divides O
    if (O % c == 0) { fc = c; break; }
  const int col_blocks = (O + fc - 1) / fc;
  while (fr > 2 * MR && (N + fr - 1) / fr * col_blocks < TASKS_PER_THREAD * pool.num_threads())
    fr = int(round_up(fr / 2, MR));
  const int row_blocks = (N + fr - 1) / fr;
  auto task = [&](int t) {
    const int o0 = (t % col_blocks) * fc, cols = std::min<int>(O - o0, fc);
    const long n0 = long(t / col_blocks) * fr, n1 = std::min<long>(N, n0 + fr);
    const auto [slice] = scratch<1>({long{KS} * NT});
    const int panels = (n1 - n0 + MR - 1) / MR;
    for (long p0 = 0; p0 < I; p0 += KS) {
      const int steps = std::min<long>(I - p0, KS);
      const bool last = p0 + KS >= I;
      for (int n = 0; n < cols; n += NT) {
        const int nv = std::min(NV, (cols - n) / W);
        // the next tile's slice of w (the next pass's first after the last tile), fetched
        // into L2 a few rows per panel; w's rows are O * 4 bytes apart
        const bool last_tile = n + NT >= cols;
        const long next_p = last_tile ? p0 + KS : p0;
        const int next_n = last_tile ? 0 : n + NT;
        const int next_steps = std::max<long>(0, std::min<long>(I - next_p, KS));
        for (long i = n0; i < n1; i += MR) {
          const int rows = std::min<long>(MR, n1 - i), panel = (i - n0) / MR;
          prefetch_share(Wm + next_p * O + o0 + next_n, O, next_steps,
                         std::min(NT, cols - next_n), panel, panels);
          if (n == 0 && i + MR < n1)  // the next panel's rows of x in this pass, into L2
            prefetch_share(X + (i + MR) * I + p0, I, std::min<long>(MR, n1 - i - MR), steps,
                           0, 1);
          const float* a_rows[MR];
          float* c_rows[MR];
          row_pointers(X + i * I + p0, I, rows, a_rows);
          row_pointers(Y + i * O + o0 + n, O, rows, c_rows);
          if (p0 == 0)  // y's rows are cold: fetched for writing while the products run
            for (int r = 0; r < rows; ++r)
              for (int v = 0; v < nv; ++v) __builtin_prefetch(c_rows[r] + v * W, 1);
          auto out = [&](int r, int o, vf sum) {
            if (p0 > 0) sum += load(c_rows[r] + o);
            if (last)
              epilogue(i + r, o0 + n + o, sum);
            else
              store(c_rows[r] + o, sum);
          };
          if (i == n0)  // the first panel reads w in place and copies the slice
            tile_of<true>(nv, a_rows, 1, 0, steps, Wm + p0 * O + o0 + n, O, c_rows, rows, 0,
                          1.0f, p0 > 0, slice, out);
          else
            tile_of<false>(nv, a_rows, 1, 0, steps, slice, NT, c_rows, rows, 0, 1.0f, p0 > 0,
                           nullptr, out);
        }
      }
    }
  };
  parallel_for(pool, row_blocks * col_blocks, task);
}

// y = x w (+ b[O] where B is not null), after checking the shapes
ffi::Error forward(ffi::ThreadPool& pool, const ffi::Buffer<ffi::F32>& x,
                   const ffi::Buffer<ffi::F32>& w, const float* B, float* Y) {
  const long N = x.dimensions()[0], I = x.dimensions()[1], O = w.dimensions()[1];
  if (w.dimensions()[0] != I || O % W)
    return ffi::Error::InvalidArgument("fmjax cpu dense: x must be [N, I] and w [I, O], O a "
                                       "multiple of the vector width");
  if (B)
    affine_passes(pool, x.typed_data(), w.typed_data(), N, I, O, Y,
                  [=](long i, long o, vf sum) { store(Y + i * O + o, sum + load(B + o)); });
  else
    affine_passes(pool, x.typed_data(), w.typed_data(), N, I, O, Y,
                  [=](long i, long o, vf sum) { store(Y + i * O + o, sum); });
  return ffi::Error::Success();
}

ffi::Error affine(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                  ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> y) {
  return forward(pool, x, w, b.typed_data(), y->typed_data());
}

ffi::Error linear(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                  ffi::ResultBuffer<ffi::F32> y) {
  return forward(pool, x, w, nullptr, y->typed_data());
}
}  // namespace

// The XLA FFI entry points (fmjax/kernels/cpu/dense.py registers them by these names).
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
XLA_FFI_DEFINE_HANDLER_SYMBOL(  // x, w, b -> x w + b
    FmjaxDenseAffine, affine,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<Floats>().Arg<Floats>().Arg<Floats>()
        .Ret<Floats>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(  // x, w -> x w
    FmjaxDenseLinear, linear,
    ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<Floats>().Arg<Floats>().Ret<Floats>());
