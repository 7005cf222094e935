// One epoch of minibatch training for a range of MLPs, each member's whole epoch in cache.
//
// Built and loaded by weightspace/fused.py (a plain shared library called through ctypes,
// which releases the GIL: members are split across Python worker threads). The numbers are
// those of weightspace.train's torch path: forward, softmax cross-entropy (or squared error)
// averaged over the batch, the hand-written backward, and torch.optim.SGD (momentum, L2
// decay added to the gradient) or torch.optim.Adam updates, per-member lr / momentum / decay.
//
// Layout of one member's P floats: for every layer, its weight input-major, (in, outp), with
// the outputs padded with zero columns to outp, a multiple of 16 (one AVX-512 vector), then
// its bias (outp) when the MLP has biases. Padding stays exactly zero through training: its
// gradient is zero (the products skip padded inputs, and the transposed copies used by the
// backward have zero padding), so every optimizer leaves it at zero.
//
// Products are register-blocked: RB rows of the left operand at a time, 16 or 32 output
// columns on the vector axis, every inner loop a broadcast multiply-add the compiler
// vectorizes (build with -O3 -march=native -ffp-contract=fast -fopenmp-simd).
//
// Divergence: a member whose batch loss or new parameters are not finite is marked inactive
// and keeps its last finite parameters (the update goes to a second buffer first).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "vecmath.h"
#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#include <pmmintrin.h>
#define WS_HAVE_MXCSR 1
#endif

namespace {

constexpr int RB = 8;  // rows per register block
constexpr float LEAKY_SLOPE = 0.01f;
constexpr float ADAM_B1 = 0.9f, ADAM_B2 = 0.999f, ADAM_EPS = 1e-8f;

enum Act : int32_t { RELU = 0, TANH = 1, GELU = 2, SIGMOID = 3, LEAKY = 4, IDENTITY = 5, SINE = 6 };

// Subnormals as zero while training, as weightspace.train's torch path (flush_denormals);
// the thread's previous mode is restored on the way out.
struct FlushDenormals {
#ifdef WS_HAVE_MXCSR
  unsigned int csr = _mm_getcsr();
  FlushDenormals() {
    _MM_SET_FLUSH_ZERO_MODE(_MM_FLUSH_ZERO_ON);
    _MM_SET_DENORMALS_ZERO_MODE(_MM_DENORMALS_ZERO_ON);
  }
  ~FlushDenormals() { _mm_setcsr(csr); }
#endif
};

struct BadInput {
  int code;
};

struct Layer {
  int64_t in, out, outp, w, b;  // widths, padded output width, offsets of weight and bias
};

// C[r, n0:n0+NT] = bias + sum_k A[r, k] * Bm[k, n0:n0+NT] for RB rows starting at r0.
template <int R, int NT>
inline void mm_block(const float* A, int64_t lda, int64_t K, const float* Bm, int64_t ldb,
                     const float* bias, float* C, int64_t ldc, int64_t r0, int64_t n0) {
  float acc[R][NT];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NT; ++j) acc[r][j] = bias ? bias[n0 + j] : 0.f;
  const float* a0 = A + r0 * lda;
  for (int64_t k = 0; k < K; ++k) {
    const float* br = Bm + k * ldb + n0;
    for (int r = 0; r < R; ++r) {
      const float a = a0[r * lda + k];
#pragma omp simd
      for (int j = 0; j < NT; ++j) acc[r][j] += a * br[j];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NT; ++j) C[(r0 + r) * ldc + n0 + j] = acc[r][j];
}

// C (R, N) = A (R, K) @ Bm (K, N) (+ bias); R a multiple of RB, N of 16.
void mm(const float* A, int64_t lda, int64_t R, int64_t K, const float* Bm, int64_t ldb,
        int64_t N, const float* bias, float* C, int64_t ldc) {
  for (int64_t r0 = 0; r0 < R; r0 += RB) {
    int64_t n0 = 0;
    for (; n0 + 32 <= N; n0 += 32) mm_block<RB, 32>(A, lda, K, Bm, ldb, bias, C, ldc, r0, n0);
    if (n0 < N) mm_block<RB, 16>(A, lda, K, Bm, ldb, bias, C, ldc, r0, n0);
  }
}

// C[i0:i0+R, n0:n0+NT] = sum_{b < K} A[b, i] * D[b, n0:n0+NT].
template <int R, int NT>
inline void mmtn_block(const float* A, int64_t lda, int64_t K, const float* D, int64_t ldd,
                       float* C, int64_t ldc, int64_t i0, int64_t n0) {
  float acc[R][NT] = {};
  for (int64_t b = 0; b < K; ++b) {
    const float* dr = D + b * ldd + n0;
    const float* ar = A + b * lda + i0;
    for (int r = 0; r < R; ++r) {
      const float a = ar[r];
#pragma omp simd
      for (int j = 0; j < NT; ++j) acc[r][j] += a * dr[j];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NT; ++j) C[(i0 + r) * ldc + n0 + j] = acc[r][j];
}

template <int R>
inline void mmtn_rows(const float* A, int64_t lda, int64_t K, const float* D, int64_t ldd,
                      int64_t N, float* C, int64_t ldc, int64_t i0) {
  int64_t n0 = 0;
  for (; n0 + 32 <= N; n0 += 32) mmtn_block<R, 32>(A, lda, K, D, ldd, C, ldc, i0, n0);
  if (n0 < N) mmtn_block<R, 16>(A, lda, K, D, ldd, C, ldc, i0, n0);
}

// C (I, N) = A[:K, :I]^T @ D[:K, :N]; N a multiple of 16, any I.
void mm_tn(const float* A, int64_t lda, int64_t K, int64_t I, const float* D, int64_t ldd,
           int64_t N, float* C, int64_t ldc) {
  int64_t i0 = 0;
  for (; i0 + RB <= I; i0 += RB) mmtn_rows<RB>(A, lda, K, D, ldd, N, C, ldc, i0);
  for (; i0 + 2 <= I; i0 += 2) mmtn_rows<2>(A, lda, K, D, ldd, N, C, ldc, i0);
  for (; i0 < I; ++i0) mmtn_rows<1>(A, lda, K, D, ldd, N, C, ldc, i0);
}

// Elementwise activation and its derivative, the formulas of torch's CPU kernels; the
// transcendental ones through vecmath.h, so every loop here is a vector loop.
void activate(int32_t act, const float* z, float* a, int64_t n) {
  switch (act) {
    case RELU:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) a[i] = z[i] > 0.f ? z[i] : 0.f;
      break;
    case LEAKY:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) a[i] = z[i] > 0.f ? z[i] : z[i] * LEAKY_SLOPE;
      break;
    case TANH:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) a[i] = wsmath::tanh(z[i]);
      break;
    case GELU:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) a[i] = wsmath::gelu(z[i]);
      break;
    case SIGMOID:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) a[i] = wsmath::sigmoid(z[i]);
      break;
    case SINE:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) a[i] = wsmath::sin(z[i]);
      break;
    default: std::memcpy(a, z, n * sizeof(float)); break;
  }
}

// d *= act'(z) (a = act(z))
void act_backward(int32_t act, const float* z, const float* a, float* d, int64_t n) {
  switch (act) {
    case RELU:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) d[i] = a[i] > 0.f ? d[i] : 0.f;
      break;
    case LEAKY:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) d[i] = z[i] > 0.f ? d[i] : d[i] * LEAKY_SLOPE;
      break;
    case TANH:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) d[i] *= 1.f - a[i] * a[i];
      break;
    case SIGMOID:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) d[i] *= (1.f - a[i]) * a[i];
      break;
    case GELU:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) d[i] *= wsmath::gelu_grad(z[i], a[i]);
      break;
    case SINE:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) d[i] *= wsmath::cos(z[i]);
      break;
    default: break;
  }
}

// The data order: a member's base order (its examples) shuffled by Fisher-Yates, driven by a
// splitmix64 stream keyed by (data seed, epoch); weightspace.train.shuffled is the reference.
constexpr uint64_t GOLDEN = 0x9E3779B97F4A7C15ull;

inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

void shuffle(const int64_t* base, int64_t n, uint64_t seed, int64_t epoch, int64_t* out) {
  std::memcpy(out, base, n * sizeof(int64_t));
  uint64_t state = mix64(mix64(seed) ^ (uint64_t(epoch) * GOLDEN));
  for (int64_t i = n - 1; i > 0; --i) {
    state += GOLDEN;
    const int64_t j = int64_t(((mix64(state) >> 32) * uint64_t(i + 1)) >> 32);
    std::swap(out[i], out[j]);
  }
}

struct Config {
  const float* x;
  int64_t n_rows, n_in;
  const int64_t* labels;  // classification: labels[member * labels_stride + example]
  int64_t labels_stride;
  const float* targets;  // regression: (N, out)
  const int64_t* order;  // member m's (base) order at order + m * order_stride
  int64_t order_stride, n_seen, batch;
  const int64_t* seeds;  // data seeds: shuffle the base orders for this epoch; null: as given
  int64_t epoch;
  int32_t act, classification, adam;
  int64_t t0;  // optimizer steps taken before this epoch
  std::vector<Layer> layers;
  int64_t P;
};

// Per-thread scratch, sized once.
struct Work {
  std::vector<float> x, p0, p1, g, wt, da, dz;
  std::vector<std::vector<float>> z, a;
  std::vector<int64_t> order;
  Work(const Config& c, int64_t bp) {
    if (c.seeds) order.assign(c.n_seen, 0);
    const int64_t L = c.layers.size();
    int64_t widest = 16;
    for (const Layer& l : c.layers) widest = std::max(widest, l.outp);
    x.assign(bp * c.n_in, 0.f);
    p0.assign(c.P, 0.f), p1.assign(c.P, 0.f), g.assign(c.P, 0.f);
    wt.assign(widest * widest, 0.f), da.assign(bp * widest, 0.f), dz.assign(bp * widest, 0.f);
    z.resize(L), a.resize(L);
    for (int64_t l = 0; l < L; ++l) {
      z[l].assign(bp * c.layers[l].outp, 0.f);
      if (l + 1 < L) a[l].assign(bp * c.layers[l].outp, 0.f);
    }
  }
};

// Loss of the batch and its gradient wrt the last layer's output, into dz (bp, outp).
float loss_grad(const Config& c, const float* out, int64_t bsz, int64_t bp, const Layer& last,
                const int64_t* idx, const int64_t* labels, float* dz) {
  const int64_t C = last.out, CP = last.outp;
  std::fill(dz, dz + bp * CP, 0.f);
  float loss = 0.f;
  const float inv = 1.f / float(bsz);
  for (int64_t b = 0; b < bsz; ++b) {
    const float* o = out + b * CP;
    float* d = dz + b * CP;
    if (c.classification) {
      float mx = o[0];
      bool nan = std::isnan(o[0]);
      for (int64_t k = 1; k < C; ++k) mx = std::max(mx, o[k]), nan |= std::isnan(o[k]);
      float s = 0.f;
      for (int64_t k = 0; k < C; ++k) s += (d[k] = std::exp(o[k] - mx));
      const int64_t t = labels[idx[b]];
      if (t < 0 || t >= C) throw BadInput{-3};
      loss += std::log(s) - (o[t] - mx);
      if (nan) loss = NAN;
      const float r = inv / s;
      for (int64_t k = 0; k < C; ++k) d[k] *= r;
      d[t] -= inv;
    } else {
      const float* y = c.targets + idx[b] * C;
      const float scale = 2.f * inv / float(C);
      for (int64_t k = 0; k < C; ++k) {
        const float e = o[k] - y[k];
        loss += e * e / float(C);
        d[k] = scale * e;
      }
    }
  }
  return loss * inv;
}

// new = step(p); returns the sum of new (finite iff every entry is, or it overflows).
float update(const Config& c, const float* p, float* q, const float* g, float* s1, float* s2,
             float lr, float mom, float wd, int64_t t) {
  const int64_t P = c.P;
  float sum = 0.f;
  if (!c.adam) {
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < P; ++i) {
      const float gi = g[i] + wd * p[i];
      const float buf = mom * s1[i] + gi;
      s1[i] = buf;
      q[i] = p[i] + (-lr) * buf;
      sum += q[i];
    }
  } else {
    const float bc1 = 1.f - std::pow(ADAM_B1, float(t));
    const float bc2_sqrt = std::sqrt(1.f - std::pow(ADAM_B2, float(t)));
    const float step = -lr / bc1;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < P; ++i) {
      const float gi = g[i] + wd * p[i];
      const float m = s1[i] + (1.f - ADAM_B1) * (gi - s1[i]);
      const float v = s2[i] * ADAM_B2 + (1.f - ADAM_B2) * gi * gi;
      s1[i] = m, s2[i] = v;
      const float denom = std::sqrt(v) / bc2_sqrt + ADAM_EPS;
      q[i] = p[i] + step * (m / denom);
      sum += q[i];
    }
  }
  return sum;
}

// Forward pass of bp rows (in, n_in per row) through parameters p: pre-activations into
// w.z[l], activations of the hidden layers into w.a[l].
void forward(const Config& c, Work& w, const float* p, const float* in, int64_t bp) {
  const int64_t L = c.layers.size();
  int64_t ld = c.n_in;
  for (int64_t l = 0; l < L; ++l) {
    const Layer& ly = c.layers[l];
    mm(in, ld, bp, ly.in, p + ly.w, ly.outp, ly.outp, ly.b >= 0 ? p + ly.b : nullptr,
       w.z[l].data(), ly.outp);
    if (l + 1 < L) {
      activate(c.act, w.z[l].data(), w.a[l].data(), bp * ly.outp);
      in = w.a[l].data(), ld = ly.outp;
    }
  }
}

// One member's epoch; returns false when it diverged (params then hold its last finite ones).
bool member_epoch(const Config& c, Work& w, int64_t m, float* params, float* s1, float* s2,
                  float lr, float mom, float wd) {
  const int64_t L = c.layers.size(), I = c.n_in;
  const int64_t* order = c.order + m * c.order_stride;
  if (c.seeds) {
    shuffle(order, c.n_seen, uint64_t(c.seeds[m]), c.epoch, w.order.data());
    order = w.order.data();
  }
  const int64_t* labels = c.labels ? c.labels + m * c.labels_stride : nullptr;
  float* cur = w.p0.data();
  float* nxt = w.p1.data();
  std::memcpy(cur, params, c.P * sizeof(float));
  bool ok = true;
  int64_t t = c.t0;
  for (int64_t start = 0; start < c.n_seen; start += c.batch) {
    const int64_t bsz = std::min(c.batch, c.n_seen - start);
    const int64_t bp = (bsz + RB - 1) / RB * RB;
    const int64_t* idx = order + start;
    for (int64_t b = 0; b < bsz; ++b) {
      if (idx[b] < 0 || idx[b] >= c.n_rows) throw BadInput{-2};
      std::memcpy(w.x.data() + b * I, c.x + idx[b] * I, I * sizeof(float));
    }
    if (bp > bsz) std::fill(w.x.data() + bsz * I, w.x.data() + bp * I, 0.f);
    forward(c, w, cur, w.x.data(), bp);
    const Layer& last = c.layers[L - 1];
    const float loss = loss_grad(c, w.z[L - 1].data(), bsz, bp, last, idx, labels, w.dz.data());
    if (!std::isfinite(loss)) {
      ok = false;
      break;
    }
    // backward: dz holds the gradient wrt layer l's pre-activation, (bp, outp_l)
    for (int64_t l = L - 1; l >= 0; --l) {
      const Layer& ly = c.layers[l];
      const float* a_in = l > 0 ? w.a[l - 1].data() : w.x.data();
      const int64_t lda = l > 0 ? c.layers[l - 1].outp : I;
      mm_tn(a_in, lda, bsz, ly.in, w.dz.data(), ly.outp, ly.outp, w.g.data() + ly.w, ly.outp);
      if (ly.b >= 0) {
        float* gb = w.g.data() + ly.b;
        std::fill(gb, gb + ly.outp, 0.f);
        for (int64_t b = 0; b < bsz; ++b) {
          const float* d = w.dz.data() + b * ly.outp;
#pragma omp simd
          for (int64_t j = 0; j < ly.outp; ++j) gb[j] += d[j];
        }
      }
      if (l == 0) break;
      // da (bp, outp_{l-1}) = dz (bp, out_l) @ W_l^T, through a transposed copy with zero
      // padding: wt (out_l, outp_{l-1})
      const int64_t np = c.layers[l - 1].outp;
      const float* W = cur + ly.w;
      for (int64_t o = 0; o < ly.out; ++o) {
        float* row = w.wt.data() + o * np;
        for (int64_t i = 0; i < ly.in; ++i) row[i] = W[i * ly.outp + o];
        std::fill(row + ly.in, row + np, 0.f);
      }
      mm(w.dz.data(), ly.outp, bp, ly.out, w.wt.data(), np, np, nullptr, w.da.data(), np);
      act_backward(c.act, w.z[l - 1].data(), w.a[l - 1].data(), w.da.data(), bp * np);
      std::swap(w.da, w.dz);
    }
    ++t;
    const float sum = update(c, cur, nxt, w.g.data(), s1, s2, lr, mom, wd, t);
    if (!std::isfinite(sum)) {
      ok = false;
      break;
    }
    std::swap(cur, nxt);
  }
  std::memcpy(params, cur, c.P * sizeof(float));
  return ok;
}

// Forward pass of rows [start, start + bsz) of c.x through one member (parameters p), bp
// rows padded; returns the output (bp, outp of the last layer).
const float* forward_rows(const Config& c, Work& w, const float* p, int64_t start, int64_t bsz,
                          int64_t bp) {
  const int64_t L = c.layers.size(), I = c.n_in;
  const float* in = c.x + start * I;
  if (bp > bsz) {  // the tail: copied, padded with zero rows
    std::memcpy(w.x.data(), in, bsz * I * sizeof(float));
    std::fill(w.x.data() + bsz * I, w.x.data() + bp * I, 0.f);
    in = w.x.data();
  }
  forward(c, w, p, in, bp);
  return w.z[L - 1].data();
}

constexpr int64_t EVAL_ROWS = 64;  // rows per evaluation forward

}  // namespace

extern "C" {

// The data order of members [m0, m1) for an epoch (tests compare it with the reference).
void ws_shuffle(const int64_t* base, int64_t base_stride, int64_t n, const int64_t* seeds,
                int64_t epoch, int64_t m0, int64_t m1, int64_t* out) {
  for (int64_t m = m0; m < m1; ++m)
    shuffle(base + m * base_stride, n, uint64_t(seeds[m]), epoch, out + (m - m0) * n);
}

int ws_abi_version() { return 5; }

// a = act(z) for n values; with d, also d *= act'(z) (tests compare both with torch's).
void ws_activate(int32_t act, const float* z, float* a, float* d, int64_t n) {
  FlushDenormals ftz;
  activate(act, z, a, n);
  if (d) act_backward(act, z, a, d, n);
}

// Mean loss and accuracy (classification) of members [m0, m1) on the n_rows rows of x, into
// loss[m - m0] and acc[m - m0]: torch's cross-entropy (log-softmax) or squared error per row,
// summed in double; a row is correct when its first maximal output (a NaN counts as the
// maximum) is its label. Returns 0, -1 on an allocation failure, -3 for a bad label.
int ws_evaluate(const float* x, int64_t n_rows, int64_t n_in, const int64_t* labels,
                const float* targets, const float* params, int64_t P, const int64_t* meta,
                int64_t n_layers, int32_t act, int32_t classification, int64_t m0, int64_t m1,
                double* loss, double* acc) {
  try {
    Config c{x,       n_rows, n_in,    labels, 0,  targets, nullptr, 0,
             0,       0,      nullptr, 0,      act, classification, 0, 0,
             {},      P};
    for (int64_t l = 0; l < n_layers; ++l) {
      const int64_t* r = meta + 5 * l;
      c.layers.push_back(Layer{r[0], r[1], r[2], r[3], r[4]});
    }
    FlushDenormals ftz;
    Work w(c, EVAL_ROWS);
    const Layer& last = c.layers.back();
    const int64_t C = last.out, CP = last.outp;
    for (int64_t m = m0; m < m1; ++m) {
      const float* p = params + m * P;
      double sum = 0., correct = 0.;
      for (int64_t start = 0; start < n_rows; start += EVAL_ROWS) {
        const int64_t bsz = std::min(EVAL_ROWS, n_rows - start);
        const int64_t bp = (bsz + RB - 1) / RB * RB;
        const float* out = forward_rows(c, w, p, start, bsz, bp);
        for (int64_t b = 0; b < bsz; ++b) {
          const float* o = out + b * CP;
          if (classification) {
            const int64_t t = labels[start + b];
            if (t < 0 || t >= C) throw BadInput{-3};
            int64_t best = 0;
            float mx = o[0];
            for (int64_t k = 1; k < C; ++k) {
              if (std::isnan(mx)) break;
              if (o[k] > mx || std::isnan(o[k])) mx = o[k], best = k;
            }
            float s = 0.f;
            for (int64_t k = 0; k < C; ++k) s += std::exp(o[k] - mx);
            sum += double(std::log(s) - (o[t] - mx));
            correct += best == t;
          } else {
            const float* y = targets + (start + b) * C;
            float e2 = 0.f;
            for (int64_t k = 0; k < C; ++k) e2 += (o[k] - y[k]) * (o[k] - y[k]);
            sum += double(e2 / float(C));
          }
        }
      }
      loss[m - m0] = sum / double(n_rows);
      acc[m - m0] = classification ? correct / double(n_rows) : NAN;
    }
    return 0;
  } catch (const BadInput& e) {
    return e.code;
  } catch (...) {
    return -1;
  }
}

// Train members [m0, m1) for one epoch. Returns 0; -1 on an allocation failure, -2 for a row
// index outside x, -3 for a label outside the classes (that member's epoch is cut short).
// meta: n_layers rows of (in, out, outp, weight offset, bias offset or -1).
int ws_train_epoch(const float* x, int64_t n_rows, int64_t n_in, const int64_t* labels, int64_t labels_stride,
                   const float* targets, const int64_t* order, int64_t order_stride,
                   int64_t n_seen, int64_t batch, const int64_t* seeds, int64_t epoch, float* params, float* s1, float* s2,
                   int64_t P, const float* lr, const float* mom, const float* wd,
                   uint8_t* active, const int64_t* meta, int64_t n_layers, int32_t act,
                   int32_t classification, int32_t adam, int64_t t0, int64_t m0, int64_t m1) {
  try {
    Config c{x,     n_rows,     n_in, labels, labels_stride,  targets, order, order_stride,
             n_seen, batch, seeds, epoch,  act,    classification, adam,    t0,    {},
             P};
    for (int64_t l = 0; l < n_layers; ++l) {
      const int64_t* r = meta + 5 * l;
      c.layers.push_back(Layer{r[0], r[1], r[2], r[3], r[4]});
    }
    FlushDenormals ftz;
    Work w(c, (batch + RB - 1) / RB * RB);
    for (int64_t m = m0; m < m1; ++m) {
      if (!active[m]) continue;
      float* st2 = adam ? s2 + m * P : nullptr;
      if (!member_epoch(c, w, m, params + m * P, s1 + m * P, st2, lr[m], mom[m], wd[m]))
        active[m] = 0;
    }
    return 0;
  } catch (const BadInput& e) {
    return e.code;
  } catch (...) {
    return -1;
  }
}

}  // extern "C"
