// fmjax's fused attention for XLA:CPU (float32), called through the XLA FFI.
//
// out = softmax(scale q k^T, masked) v for q [B, T, H, K], k and v [B, S, H, K] and a bool
// mask [B, 1, T, S]; the backward pass recomputes the probabilities from the saved
// log-sum-exp (FlashAttention's identity rowsum(dP * P) = rowsum(dO * O)). Why a kernel:
// XLA:CPU runs attention's many small batched matmuls on one core, while this one spreads
// (batch, head) pairs over XLA's own intra-op thread pool and skips everything above the
// diagonal of causal masks (the caller promises the mask hides it) one tile of rows at a
// time. fmjax/kernels/cpu/attention.py builds this file with the host's C++ compiler and binds it;
// tests/test_cpu_attention.py checks it against fmjax's XLA attention.
//
// The matmul panels, exp and thread pool loop are fmjax/kernels/cpu/kernels.h's. Queries that see no
// key get zeros; K and S are multiples of W (the Python side checks).
#include "kernels.h"

namespace {

constexpr int QB = 64;   // query rows per block: the block's scores stay in cache

inline vi visible(const bool* m) {  // lanes -1 where the mask is set (bytes 1), else 0
  vb b;
  std::memcpy(&b, m, sizeof b);
  return __builtin_convertvector(-b, vi);  // one sign-extending load (b != 0 is scalarised)
}

struct Dims {
  int64_t B, T, S, H, K;
  bool causal;
  float scale;
  long in_row, in_head;  // strides between positions and heads in q, k, v and their grads
  long row() const { return H * K; }  // stride between positions in out and its gradient
  long q_at(int b, int h) const { return b * T * in_row + h * in_head; }
  long kv_at(int b, int h) const { return b * S * in_row + h * in_head; }
  long out_at(int b, int h) const { return b * T * row() + h * K; }
};

// Keys [0, cols(r0)) that rows [r0, r0 + MR) of the block at i0 can see (all of them unless
// causal), rounded up to whole vectors.
inline int visible_cols(const Dims& d, int i0, int r0, int rows) {
  return d.causal ? std::min<int>(d.S, round_up(i0 + r0 + rows, W)) : d.S;
}

// One step of a W x W transpose in registers: rows i and i + B (bit B of i clear) swap the
// lanes with bit B set in i's row for those with it clear in i + B's row.
template <int B>
void transpose_step(vf* r) {
  static const struct Masks {
    vi first, second;
    Masks() {
      for (int j = 0; j < W; ++j) {  // lane indices into the pair (row i, row i + B)
        first[j] = (j & B) ? W + j - B : j;
        second[j] = (j & B) ? W + j : j + B;
      }
    }
  } m;
  for (int i = 0; i < W; ++i)
    if (!(i & B)) {
      const vf a = r[i], b = r[i + B];
      r[i] = __builtin_shuffle(a, b, m.first);
      r[i + B] = __builtin_shuffle(a, b, m.second);
    }
  if constexpr (B > 1) transpose_step<B / 2>(r);
}

// Copies x's head [S, K] (row stride d.in_row) to xT [K, S], W x W blocks at a time.
void transpose_head(const Dims& d, const float* x, float* xT) {
  vf r[W];
  for (int s0 = 0; s0 < d.S; s0 += W)
    for (int k0 = 0; k0 < d.K; k0 += W) {
      for (int i = 0; i < W; ++i) r[i] = load(x + (s0 + i) * d.in_row + k0);
      transpose_step<W / 2>(r);
      for (int i = 0; i < W; ++i) store(xT + (k0 + i) * d.S + s0, r[i]);
    }
}

ffi::Error check(const Dims& d) {
  if (d.K % W || d.S % W)
    return ffi::Error::InvalidArgument("fmjax cpu attention: head dim and key length must be "
                                       "multiples of the vector width");
  return ffi::Error::Success();
}

// One (batch, head) of the forward pass: out and the rows' log-sum-exp.
void forward_head(const Dims& d, const float* q_, const float* k_, const float* v_,
                  const bool* m_, float* o_, float* lse_, int b, int h) {
  const float *q = q_ + d.q_at(b, h), *k = k_ + d.kv_at(b, h), *v = v_ + d.kv_at(b, h);
  const auto [kT, p] = scratch<2>({d.K * d.S, QB * d.S});
  transpose_head(d, k, kT);
  for (int i0 = 0; i0 < d.T; i0 += QB) {
    const int rows = std::min<int>(QB, d.T - i0);
    for (int r0 = 0; r0 < rows; r0 += MR) {
      const int n = std::min(MR, rows - r0), cols = visible_cols(d, i0, r0, n);
      panel(n, cols, 0, d.K, q + (i0 + r0) * d.in_row, d.in_row, 1, kT, d.S, p + r0 * d.S,
            d.S, d.scale, false);
      float inv[MR];
      for (int r = r0; r < r0 + n; ++r) {  // scores -> exp(score - row max), in place
        float* row = p + r * d.S;
        const bool* m = m_ + (b * d.T + i0 + r) * d.S;
        vf mx = splat(-3e38f);
        for (int j = 0; j < cols; j += W) {
          const vf s = load(row + j);
          mx = visible(m + j) & (s > mx) ? s : mx;
        }
        const float row_max = max_of(mx);  // mx starts at -3e38: a masked row stays finite
        vf sum = vf{};
        for (int j = 0; j < cols; j += W) {
          const vf e = visible(m + j) ? vexp(load(row + j) - row_max) : vf{};
          store(row + j, e);
          sum += e;
        }
        const float total = sum_of(sum);
        inv[r - r0] = total > 0 ? 1.0f / total : 0.0f;
        lse_[(b * d.H + h) * d.T + i0 + r] = total > 0 ? row_max + std::log(total) : 3e38f;
      }
      float* o = o_ + d.out_at(b, h) + (i0 + r0) * d.row();
      panel(n, d.K, 0, cols, p + r0 * d.S, d.S, 1, v, d.in_row, o, d.row(), 1.0f, false);
      for (int r = 0; r < n; ++r)  // out = (exp(s - max) v) / sum(exp(s - max))
        for (int c = 0; c < d.K; c += W)
          store(o + r * d.row() + c, load(o + r * d.row() + c) * inv[r]);
    }
  }
}

// Heads of q, k, v as separate [B, T or S, H, K] arrays.
Dims separate(const ffi::Buffer<ffi::F32>& q, const ffi::Buffer<ffi::F32>& k, float scale,
              bool causal) {
  const auto qd = q.dimensions();
  return Dims{qd[0], qd[1], k.dimensions()[1], qd[2], qd[3], causal, scale, qd[2] * qd[3],
              qd[3]};
}

// Heads of q, k, v stacked in one [B, T, H, 3, K] array (self-attention): no copies to split
// it, and one gradient array out.
Dims packed(const ffi::Buffer<ffi::F32>& qkv, float scale, bool causal) {
  const auto d = qkv.dimensions();
  return Dims{d[0], d[1], d[1], d[2], d[4], causal, scale, d[2] * 3 * d[4], 3 * d[4]};
}

ffi::Error forward_all(ffi::ThreadPool& pool, const Dims& d, const float* q, const float* k,
                       const float* v, const bool* mask, float* out, float* lse) {
  if (auto e = check(d); e.failure()) return e;
  auto head = [&](int task) {
    forward_head(d, q, k, v, mask, out, lse, task / d.H, task % d.H);
  };
  parallel_for(pool, d.B * d.H, head);
  return ffi::Error::Success();
}

ffi::Error forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                   ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::PRED> mask, float scale,
                   bool causal, ffi::ResultBuffer<ffi::F32> out,
                   ffi::ResultBuffer<ffi::F32> lse) {
  return forward_all(pool, separate(q, k, scale, causal), q.typed_data(), k.typed_data(),
                     v.typed_data(), mask.typed_data(), out->typed_data(), lse->typed_data());
}

ffi::Error forward_packed(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv,
                          ffi::Buffer<ffi::PRED> mask, float scale, bool causal,
                          ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> lse) {
  const Dims d = packed(qkv, scale, causal);
  const float* q = qkv.typed_data();
  return forward_all(pool, d, q, q + d.K, q + 2 * d.K, mask.typed_data(), out->typed_data(),
                     lse->typed_data());
}

// One (batch, head) of the backward pass: dq, and dk, dv summed over the query blocks.
void backward_head(const Dims& d, const float* q_, const float* k_, const float* v_,
                   const bool* m_, const float* o_, const float* lse_, const float* do_,
                   float* dq_, float* dk_, float* dv_, int b, int h) {
  const float *q = q_ + d.q_at(b, h), *k = k_ + d.kv_at(b, h), *v = v_ + d.kv_at(b, h);
  const float *o = o_ + d.out_at(b, h), *dout = do_ + d.out_at(b, h);
  float *dq = dq_ + d.q_at(b, h), *dk = dk_ + d.kv_at(b, h), *dv = dv_ + d.kv_at(b, h);
  const auto [kT, vT, p, ds, delta] = scratch<5>({d.K * d.S, d.K * d.S, QB * d.S, QB * d.S, QB});
  // keys [from, to): dk (+)= ds^T q, dv (+)= p^T dO over the block's rows that see them
  auto key_grads = [&](int i0, int rows, int from, int to, bool accumulate) {
    for (int j0 = from; j0 < to; j0 += MR) {
      const int n = std::min(MR, to - j0);
      const int first = d.causal ? std::clamp(j0 - i0, 0, rows) : 0;
      panel(n, d.K, first, rows, ds + j0, 1, d.S, q + i0 * d.in_row, d.in_row,
            dk + j0 * d.in_row, d.in_row, d.scale, accumulate);
      panel(n, d.K, first, rows, p + j0, 1, d.S, dout + i0 * d.row(), d.row(),
            dv + j0 * d.in_row, d.in_row, 1.0f, accumulate);
    }
  };
  int written = 0;  // keys whose dk, dv rows hold a partial sum
  transpose_head(d, k, kT);
  transpose_head(d, v, vT);
  for (int i0 = 0; i0 < d.T; i0 += QB) {
    const int rows = std::min<int>(QB, d.T - i0);
    const int block_cols = visible_cols(d, i0, 0, rows);
    for (int r = 0; r < rows; ++r) {  // delta = rowsum(dO * O)
      const float *o_r = o + (i0 + r) * d.row(), *g = dout + (i0 + r) * d.row();
      vf acc = vf{};
      for (int c = 0; c < d.K; c += W) acc += load(o_r + c) * load(g + c);
      delta[r] = sum_of(acc);
    }
    for (int r0 = 0; r0 < rows; r0 += MR) {
      const int n = std::min(MR, rows - r0), cols = visible_cols(d, i0, r0, n);
      const long at = (i0 + r0) * d.in_row;
      panel(n, cols, 0, d.K, q + at, d.in_row, 1, kT, d.S, p + r0 * d.S, d.S, d.scale, false);
      panel(n, cols, 0, d.K, dout + (i0 + r0) * d.row(), d.row(), 1, vT, d.S, ds + r0 * d.S,
            d.S, 1.0f, false);
      for (int r = r0; r < r0 + n; ++r) {  // p = probabilities, ds = dlogits / scale
        float *pr = p + r * d.S, *dr = ds + r * d.S;
        const bool* m = m_ + (b * d.T + i0 + r) * d.S;
        const float l = lse_[(b * d.H + h) * d.T + i0 + r];
        for (int j = 0; j < cols; j += W) {
          const vf e = visible(m + j) ? vexp(load(pr + j) - l) : vf{};
          store(pr + j, e);
          store(dr + j, e * (load(dr + j) - delta[r]));
        }
        std::fill(pr + cols, pr + block_cols, 0.0f);  // read by the key-side products
        std::fill(dr + cols, dr + block_cols, 0.0f);
      }
      panel(n, d.K, 0, cols, ds + r0 * d.S, d.S, 1, k, d.in_row, dq + at, d.in_row, d.scale,
            false);
    }
    key_grads(i0, rows, 0, written, true);
    key_grads(i0, rows, written, block_cols, false);
    written = std::max(written, block_cols);
  }
  for (int s = written; s < d.S; ++s) {  // keys no query sees
    std::fill(dk + s * d.in_row, dk + s * d.in_row + d.K, 0.0f);
    std::fill(dv + s * d.in_row, dv + s * d.in_row + d.K, 0.0f);
  }
}

ffi::Error backward_all(ffi::ThreadPool& pool, const Dims& d, const float* q, const float* k,
                        const float* v, const bool* mask, const float* out, const float* lse,
                        const float* dout, float* dq, float* dk, float* dv) {
  if (auto e = check(d); e.failure()) return e;
  auto head = [&](int task) {
    backward_head(d, q, k, v, mask, out, lse, dout, dq, dk, dv, task / d.H, task % d.H);
  };
  parallel_for(pool, d.B * d.H, head);
  return ffi::Error::Success();
}

ffi::Error backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                    ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::PRED> mask,
                    ffi::Buffer<ffi::F32> out, ffi::Buffer<ffi::F32> lse,
                    ffi::Buffer<ffi::F32> dout, float scale, bool causal,
                    ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
                    ffi::ResultBuffer<ffi::F32> dv) {
  return backward_all(pool, separate(q, k, scale, causal), q.typed_data(), k.typed_data(),
                      v.typed_data(), mask.typed_data(), out.typed_data(), lse.typed_data(),
                      dout.typed_data(), dq->typed_data(), dk->typed_data(), dv->typed_data());
}

ffi::Error backward_packed(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv,
                           ffi::Buffer<ffi::PRED> mask, ffi::Buffer<ffi::F32> out,
                           ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dout, float scale,
                           bool causal, ffi::ResultBuffer<ffi::F32> dqkv) {
  const Dims d = packed(qkv, scale, causal);
  const float* q = qkv.typed_data();
  float* dq = dqkv->typed_data();
  return backward_all(pool, d, q, q + d.K, q + 2 * d.K, mask.typed_data(), out.typed_data(),
                      lse.typed_data(), dout.typed_data(), dq, dq + d.K, dq + 2 * d.K);
}

}  // namespace

// The XLA FFI entry points (fmjax/kernels/cpu/attention.py registers them by these names).
using Floats = ffi::Buffer<ffi::F32>;
using Mask = ffi::Buffer<ffi::PRED>;
#define BIND(ARGS) \
  ffi::Ffi::Bind().Ctx<ffi::ThreadPool>() ARGS.Attr<float>("scale").Attr<bool>("causal")
XLA_FFI_DEFINE_HANDLER_SYMBOL(  // q, k, v, mask -> out, lse
    FmjaxAttentionForward, forward,
    BIND(.Arg<Floats>().Arg<Floats>().Arg<Floats>().Arg<Mask>()).Ret<Floats>().Ret<Floats>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(  // q, k, v, mask, out, lse, dout -> dq, dk, dv
    FmjaxAttentionBackward, backward,
    BIND(.Arg<Floats>().Arg<Floats>().Arg<Floats>().Arg<Mask>().Arg<Floats>().Arg<Floats>()
             .Arg<Floats>()).Ret<Floats>().Ret<Floats>().Ret<Floats>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(  // qkv, mask -> out, lse
    FmjaxAttentionForwardPacked, forward_packed,
    BIND(.Arg<Floats>().Arg<Mask>()).Ret<Floats>().Ret<Floats>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(  // qkv, mask, out, lse, dout -> dqkv
    FmjaxAttentionBackwardPacked, backward_packed,
    BIND(.Arg<Floats>().Arg<Mask>().Arg<Floats>().Arg<Floats>().Arg<Floats>()).Ret<Floats>());
#undef BIND
