// Vectorizable float32 nonlinearities for the fused kernel: exp, tanh, erf, sigmoid, the
// exact (erf) GELU, sin and cos, and the derivatives the backward needs.
//
// Each function is branch-free scalar code (selects, not jumps; bit patterns through
// memcpy, no float-to-int conversion, no libm call), so a `#pragma omp simd` loop over it
// compiles to vector code for whatever -march=native offers (SSE2 to AVX-512 on x86-64, NEON
// on aarch64), with FMA where the CPU has it (-ffp-contract=fast) and plain multiply-adds
// where it does not. Polynomials are minimax-style fits (Cephes' for exp, tanh, sin and cos;
// our own least-squares fits on Chebyshev nodes for erf), accurate to float32 rounding: a few
// units in the last place against double precision over the whole float range
// (tests/zoo/test_fused.py states each bound against torch's own functions on dense grids).
//
// Special values: NaN in gives NaN out (divergence checks rely on it); +-inf give the limits
// (tanh +-1, sigmoid 1 / 0, gelu inf / 0, sin NaN). exp saturates at 2^127.5 / 2^-126
// instead of overflowing to inf / underflowing to 0; the callers never rely on either.
// sin / cos reduce by pi/2 in three parts (Cody-Waite): accurate for |z| < 1e5, where
// pre-activations of trained networks live; beyond ~6e6 the reduction breaks down.
#pragma once

#include <cstdint>
#include <cstring>

namespace wsmath {

inline uint32_t bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

inline float from_bits(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// 1.5 * 2^23: adding it rounds a float of magnitude < 2^22 to an integer, which then sits in
// the low mantissa bits (two's complement); subtracting it again gives the rounded float.
constexpr float ROUNDER = 12582912.f;

// exp(x) for x in [-87.33, 88.37] (callers clamp): x = n ln2 + r, |r| <= ln2 / 2, exp(r) by
// Cephes' expf polynomial, times 2^n built in the exponent bits. ~1 ulp.
inline float exp_core(float x) {
  const float t = x * 1.44269504088896341f + ROUNDER;
  const float n = t - ROUNDER;
  float r = x - n * 0.693359375f;  // ln 2 in two parts: n * hi is exact
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.f;
  return p * from_bits((bits(t) + 127u) << 23);  // low bits of t hold n
}

// exp(x), saturating (see above); NaN stays NaN.
inline float exp(float x) {
  x = x > 88.37f ? 88.37f : x;
  x = x < -87.33f ? -87.33f : x;
  return exp_core(x);
}

inline float copysign_of(float magnitude, float sign_of) {
  return from_bits((bits(magnitude) & 0x7fffffffu) | (bits(sign_of) & 0x80000000u));
}

// tanh: an odd polynomial (Cephes' tanhf) below 0.625, else 1 - 2 / (exp(2|x|) + 1).
inline float tanh(float x) {
  const float ax = from_bits(bits(x) & 0x7fffffffu);
  const float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = p * z * x + x;
  const float e = exp_core(2.f * (ax < 9.1f ? ax : 9.1f));  // tanh(9.1) rounds to 1
  const float big = copysign_of(1.f - 2.f / (e + 1.f), x);
  return ax < 0.625f ? small : (ax == ax ? big : x);
}

// erf: x P(x^2) below 0.9375, 1 - exp(Q(|x| - 0.9375)) up to 3.95 (Q fitted to log erfc),
// 1 beyond; sign restored. ~1.5 ulp.
inline float erf(float x) {
  const float ax = from_bits(bits(x) & 0x7fffffffu);
  const float s = x * x;
  float p = 8.262082702e-05f;  // erf(x) / x - 1 (the 1 kept apart: it is exact)
  p = p * s - 8.116642130e-04f;
  p = p * s + 5.198686384e-03f;
  p = p * s - 2.685843036e-02f;
  p = p * s + 1.128367782e-01f;
  p = p * s - 3.761263192e-01f;
  p = p * s + 1.283791661e-01f;
  const float small = p * x + x;
  const float u = (ax < 3.95f ? ax : 3.95f) - 0.9375f;
  float q = -3.616935729e-08f;
  q = q * u + 2.121052830e-06f;
  q = q * u - 3.644540266e-05f;
  q = q * u + 3.426217881e-04f;
  q = q * u - 2.189987339e-03f;
  q = q * u + 1.075069327e-02f;
  q = q * u - 4.418249056e-02f;
  q = q * u - 8.350671530e-01f;
  q = q * u - 2.534076691e+00f;
  q = q * u - 1.687953115e+00f;
  float big = 1.f - exp_core(q);
  big = ax < 3.95f ? big : 1.f;
  return ax < 0.9375f ? small : (ax == ax ? copysign_of(big, x) : x);
}

inline float sigmoid(float x) { return 1.f / (1.f + exp(-x)); }

// The exact GELU, torch's default: x Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2.
inline float gelu(float x) { return 0.5f * x * (1.f + erf(x * 0.70710678118654752f)); }

// d gelu / dx = Phi(x) + x phi(x), the formula of torch's gelu backward, given a = gelu(x):
// Phi(x) = a / x (within an ulp of the forward's) spares a second erf; below 1e-20, where a
// may flush to zero, Phi(x) rounds to 1/2.
inline float gelu_grad(float x, float a) {
  const float cdf = (x > 1e-20f || x < -1e-20f) ? a / x : 0.5f;
  const float pdf = 0.39894228040143268f * exp(-0.5f * x * x);
  return cdf + x * pdf;
}

// sin and cos: x = j pi/2 + r, |r| <= pi/4 (pi/2 in three parts, Cephes' sinf / cosf
// polynomials), the quadrant j mod 4 from the low bits of the rounded j.
inline void sincos(float x, float* sin_out, float* cos_out) {
  const float t = x * 0.63661977236758134f + ROUNDER;
  const float j = t - ROUNDER;
  float r = x - j * 1.5703125f;
  r = r - j * 4.837512969970703125e-4f;
  r = r - j * 7.54978995489188216e-8f;
  const float z = r * r;
  float s = -1.9515295891e-4f;
  s = s * z + 8.3321608736e-3f;
  s = s * z - 1.6666654611e-1f;
  s = s * z * r + r;
  float c = 2.443315711809948e-5f;
  c = c * z - 1.388731625493765e-3f;
  c = c * z + 4.166664568298827e-2f;
  c = c * z * z - 0.5f * z + 1.f;
  const uint32_t q = bits(t);
  const bool swap = q & 1u;
  const uint32_t sin_sign = (q & 2u) << 30;          // quadrants 2, 3: -
  const uint32_t cos_sign = ((q + 1u) & 2u) << 30;   // quadrants 1, 2: -
  *sin_out = from_bits(bits(swap ? c : s) ^ sin_sign);
  *cos_out = from_bits(bits(swap ? s : c) ^ cos_sign);
}

inline float sin(float x) {
  float s, c;
  sincos(x, &s, &c);
  return s;
}

inline float cos(float x) {
  float s, c;
  sincos(x, &s, &c);
  return c;
}

}  // namespace wsmath
