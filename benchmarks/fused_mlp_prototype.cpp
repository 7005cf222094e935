// A prototype of the next step for zoo training speed (benchmarks/bench_fused_kernel.py):
// one kernel trains a member's whole epoch while its parameters, momentum and activations
// stay in the core's cache (SGD with momentum and weight decay, exactly torch.optim.SGD's
// update; relu MLP [I, 32, C], softmax cross-entropy averaged over the batch; each member
// reads the training set in its own order). Members run in parallel (OpenMP through
// at::parallel_for). Not yet used by weightspace.train: only relu, one hidden layer of 32.
//
// Layout: weights input-major, W1T (M, I, 32), W2T (M, 32, CP) with the classes padded to
// CP = 16 columns (padding stays 0), biases (M, 32) and (M, CP); momentum buffers alike.
// Products are register-blocked over RB rows with the 32 (or 16) output units on the
// vector axis, so every inner loop is a broadcast-multiply-add the compiler vectorizes.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <vector>
constexpr int RB = 8;  // rows per register block
// Weights stored input-major: W1T (M,I,H), W2T (M,H,CP) with CP = C padded to 16 (pad cols 0).
template <int H, int CP>
void run(const float* x, const int64_t* yy, const int64_t* ord, int64_t L, int64_t B, int64_t I, int64_t C,
         float* W1, float* b1, float* W2, float* b2, float* V1, float* c1, float* V2, float* c2,
         const float* lr, const float* mom, const float* wd, bool* bad, int64_t m0, int64_t m1) {
  const int64_t S = L / B;
  std::vector<float> xb(B*I), h(B*H), dh(B*H), lo(B*CP), gW1(I*H), gb1(H), gW2(H*CP), gb2(CP);
  for (int64_t m = m0; m < m1; ++m) {
    if (bad[m]) continue;
    float* w1 = W1 + m*I*H; float* bb1 = b1 + m*H; float* w2 = W2 + m*H*CP; float* bb2 = b2 + m*CP;
    float* v1 = V1 + m*I*H; float* cc1 = c1 + m*H; float* v2 = V2 + m*H*CP; float* cc2 = c2 + m*CP;
    const float a = lr[m], mu = mom[m], d = wd[m];
    for (int64_t s = 0; s < S; ++s) {
      const int64_t* idx = ord + m*L + s*B;
      for (int64_t b = 0; b < B; ++b) std::copy(x + idx[b]*I, x + idx[b]*I + I, xb.data() + b*I);
      for (int64_t b0 = 0; b0 < B; b0 += RB) {
        float acc[RB][H];
        for (int r = 0; r < RB; ++r) for (int j = 0; j < H; ++j) acc[r][j] = bb1[j];
        for (int64_t i = 0; i < I; ++i) { const float* wr = w1 + i*H;
          for (int r = 0; r < RB; ++r) { const float xv = xb[(b0+r)*I+i];
            #pragma omp simd
            for (int j = 0; j < H; ++j) acc[r][j] += xv*wr[j]; } }
        for (int r = 0; r < RB; ++r) for (int j = 0; j < H; ++j) h[(b0+r)*H+j] = acc[r][j] > 0 ? acc[r][j] : 0;
      }
      float loss = 0;
      for (int64_t b = 0; b < B; ++b) {
        float acc[CP];
        for (int k = 0; k < CP; ++k) acc[k] = bb2[k];
        for (int j = 0; j < H; ++j) { const float hv = h[b*H+j]; const float* wr = w2 + j*CP;
          #pragma omp simd
          for (int k = 0; k < CP; ++k) acc[k] += hv*wr[k]; }
        float mx = -INFINITY; for (int64_t k = 0; k < C; ++k) mx = std::max(mx, acc[k]);
        float z = 0; for (int64_t k = 0; k < C; ++k) { acc[k] = std::exp(acc[k]-mx); z += acc[k]; }
        const int64_t t = yy[idx[b]];
        loss += std::log(z) - std::log(acc[t]);
        for (int k = 0; k < CP; ++k) lo[b*CP+k] = k < C ? (acc[k]/z - (k==t)) / B : 0.f;
      }
      if (!std::isfinite(loss)) { bad[m] = true; break; }
      // gW2 (H,CP) = h^T lo ; gb2 = sum lo ; dh = (lo W2T^T) * relu'
      std::fill(gW2.begin(), gW2.end(), 0.f); std::fill(gb2.begin(), gb2.end(), 0.f);
      float w2t[CP*H];
      for (int j = 0; j < H; ++j) for (int k = 0; k < CP; ++k) w2t[k*H+j] = w2[j*CP+k];
      for (int64_t b = 0; b < B; ++b) {
        const float* lr_ = lo.data() + b*CP;
        for (int k = 0; k < CP; ++k) gb2[k] += lr_[k];
        for (int j = 0; j < H; ++j) { const float hv = h[b*H+j]; float* gr = gW2.data() + j*CP;
          #pragma omp simd
          for (int k = 0; k < CP; ++k) gr[k] += hv*lr_[k]; }
        { float acc[H] = {};
          for (int64_t k = 0; k < C; ++k) { const float lv = lr_[k]; const float* wc = w2t + k*H;
            #pragma omp simd
            for (int j = 0; j < H; ++j) acc[j] += lv*wc[j]; }
          for (int j = 0; j < H; ++j) dh[b*H+j] = h[b*H+j] > 0 ? acc[j] : 0; }
      }
      // gW1T (I,H) = xb^T dh, 4 input rows at a time; gb1 = sum dh
      for (int j = 0; j < H; ++j) gb1[j] = 0;
      for (int64_t b = 0; b < B; ++b) for (int j = 0; j < H; ++j) gb1[j] += dh[b*H+j];
      for (int64_t i0 = 0; i0 < I; i0 += RB) {
        float acc[RB][H] = {};
        for (int64_t b = 0; b < B; ++b) { const float* dr = dh.data() + b*H;
          for (int r = 0; r < RB; ++r) { const float xv = xb[b*I+i0+r];
            #pragma omp simd
            for (int j = 0; j < H; ++j) acc[r][j] += xv*dr[j]; } }
        for (int r = 0; r < RB; ++r) std::copy(acc[r], acc[r]+H, gW1.data() + (i0+r)*H);
      }
      auto upd = [&](float* p, float* v, const float* g, int64_t n) {
        #pragma omp simd
        for (int64_t i = 0; i < n; ++i) { float gi = g[i] + d*p[i]; v[i] = mu*v[i] + gi; p[i] -= a*v[i]; } };
      upd(w1, v1, gW1.data(), I*H); upd(bb1, cc1, gb1.data(), H); upd(w2, v2, gW2.data(), H*CP); upd(bb2, cc2, gb2.data(), CP);
    }
  }
}
void epoch(torch::Tensor X, torch::Tensor y, torch::Tensor order, int64_t B, int64_t C,
           torch::Tensor W1, torch::Tensor b1, torch::Tensor W2, torch::Tensor b2,
           torch::Tensor V1, torch::Tensor c1, torch::Tensor V2, torch::Tensor c2,
           torch::Tensor lr, torch::Tensor mom, torch::Tensor wd, torch::Tensor bad) {
  const int64_t M = W1.size(0), I = W1.size(1);
  TORCH_CHECK(W1.size(2) == 32 && W2.size(2) == 16 && I % 8 == 0 && B % 8 == 0);
  at::parallel_for(0, M, 1, [&](int64_t m0, int64_t m1) {
    run<32, 16>(X.data_ptr<float>(), y.data_ptr<int64_t>(), order.data_ptr<int64_t>(), order.size(1), B, I, C,
      W1.data_ptr<float>(), b1.data_ptr<float>(), W2.data_ptr<float>(), b2.data_ptr<float>(),
      V1.data_ptr<float>(), c1.data_ptr<float>(), V2.data_ptr<float>(), c2.data_ptr<float>(),
      lr.data_ptr<float>(), mom.data_ptr<float>(), wd.data_ptr<float>(), bad.data_ptr<bool>(), m0, m1);
  });
}
