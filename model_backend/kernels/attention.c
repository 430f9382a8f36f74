/* Single-query attention for a decode step (AVX2 + FMA + F16C), called from model_backend/cpu_kernels.py
 * (`attention_kernel`).
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

static inline float hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

/* ---- single-query attention (a decode step of one sequence) ------------------------------------------------
 *
 * For each KV head h and each of its g = nh / nkv query heads j:
 *   out[h*g + j] = softmax(scale * q[h*g + j] . K[h, p], p < L) @ V[h, :L]
 * K, V: fp32 or fp16, [nkv, *, hd] with stride_h elements between heads (a slice of the KV cache).
 * Scores are kept in a per-thread buffer; the softmax is exact fp32 up to the exp below (rel. error ~1e-7).
 */

/* exp(x) for 8 floats: 2^n * p(r), x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial (Cephes expf). */
static inline __m256 exp8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.3f), hi = _mm256_set1_ps(88.3f);
    x = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

static __thread float *att_buf;
static __thread size_t att_cap;

/* 8 cache values as floats: the cache is fp32 (half = 0) or fp16 (half = 1) */
static inline __attribute__((always_inline)) __m256 load8(int half, const void *base, int64_t i) {
    if (half) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)base + i)));
    return _mm256_loadu_ps((const float *)base + i);
}

static inline __attribute__((always_inline)) int attention(int half, const float *q, const void *k, const void *v,
                                                           float *out, int64_t nh, int64_t nkv, int64_t hd,
                                                           int64_t L, int64_t stride_h, float scale) {
    if (nkv <= 0 || nh % nkv || nh / nkv > 16 || hd % 8 || hd > 256 || L <= 0) return -2;
    const int64_t g = nh / nkv;
    size_t need = (size_t)g * L;
    if (need > att_cap) {
        free(att_buf);
        att_buf = (float *)aligned_alloc(64, (need * sizeof(float) + 63) / 64 * 64);
        if (!att_buf) { att_cap = 0; return -1; }
        att_cap = need;
    }
    for (int64_t h = 0; h < nkv; h++) {
        const int64_t kv0 = h * stride_h; /* element offset of this head's rows */
        const float *Q = q + h * g * hd;
        float *O = out + h * g * hd;
        /* scores [g, L]: 8 positions at a time, their 8 dot products reduced together */
        int64_t p0 = 0;
        for (; p0 + 8 <= L; p0 += 8) {
            for (int64_t j = 0; j < g; j++) {
                const float *qj = Q + j * hd;
                __m256 a[8];
                for (int i = 0; i < 8; i++) a[i] = _mm256_setzero_ps();
                for (int64_t d = 0; d < hd; d += 8) {
                    __m256 qv = _mm256_loadu_ps(qj + d);
                    for (int i = 0; i < 8; i++)
                        a[i] = _mm256_fmadd_ps(qv, load8(half, k, kv0 + (p0 + i) * hd + d), a[i]);
                }
                __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
                __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
                __m256 r = _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
                _mm256_storeu_ps(att_buf + j * L + p0, _mm256_mul_ps(r, _mm256_set1_ps(scale)));
            }
        }
        for (int64_t p = p0; p < L; p++) {
            for (int64_t j = 0; j < g; j++) {
                const float *qj = Q + j * hd;
                __m256 acc = _mm256_setzero_ps();
                for (int64_t d = 0; d < hd; d += 8)
                    acc = _mm256_fmadd_ps(_mm256_loadu_ps(qj + d), load8(half, k, kv0 + p * hd + d), acc);
                att_buf[j * L + p] = hsum(acc) * scale;
            }
        }
        /* softmax per query head */
        for (int64_t j = 0; j < g; j++) {
            float *s = att_buf + j * L;
            float mx = -INFINITY;
            for (int64_t p = 0; p < L; p++) mx = s[p] > mx ? s[p] : mx;
            __m256 vmx = _mm256_set1_ps(mx), vsum = _mm256_setzero_ps();
            int64_t p = 0;
            for (; p + 8 <= L; p += 8) {
                __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + p), vmx));
                _mm256_storeu_ps(s + p, e);
                vsum = _mm256_add_ps(vsum, e);
            }
            float sum = hsum(vsum);
            for (; p < L; p++) { s[p] = expf(s[p] - mx); sum += s[p]; }
            float inv = 1.0f / sum;
            for (p = 0; p < L; p++) s[p] *= inv;
        }
        /* out = probs @ V, one pass over V for all g query heads (accumulators stay in L1) */
        float acc[16 * 256];
        for (int64_t i = 0; i < g * hd; i++) acc[i] = 0.0f;
        for (int64_t p = 0; p < L; p++) {
            for (int64_t d = 0; d < hd; d += 8) {
                __m256 vv = load8(half, v, kv0 + p * hd + d);
                for (int64_t j = 0; j < g; j++) {
                    float *aj = acc + j * hd + d;
                    _mm256_storeu_ps(aj, _mm256_fmadd_ps(_mm256_set1_ps(att_buf[j * L + p]), vv, _mm256_loadu_ps(aj)));
                }
            }
        }
        memcpy(O, acc, sizeof(float) * g * hd);
    }
    return 0;
}

int bq_attention(const float *q, const float *k, const float *v, float *out, int64_t nh, int64_t nkv,
                 int64_t hd, int64_t L, int64_t stride_h, float scale) {
    return attention(0, q, k, v, out, nh, nkv, hd, L, stride_h, scale);
}

/* A whole decode step of one row of one layer's attention after the q|k|v projection:
 * RoPE on q and k (each head's dims interleaved in pairs, rope = cos/sin pairs of this position, hd/2 of them),
 * k and v written to the cache at position pos (fp32, or rounded to fp16 when half), then attention over
 * positions 0..pos. qkv: [nh + 2 nkv, hd] fp32, rotated in place (the caller owns it). */
static inline __attribute__((always_inline)) int step(int half, float *qkv, const float *rope, void *k, void *v,
                                                      float *out, int64_t nh, int64_t nkv, int64_t hd, int64_t pos,
                                                      int64_t stride_h, float scale) {
    if (nkv <= 0 || hd % 8 || pos < 0) return -2;
    for (int64_t h = 0; h < nh + nkv; h++) {
        float *r = qkv + h * hd;
        for (int64_t i = 0; i < hd; i += 2) {
            float a = r[i], b = r[i + 1], c = rope[i], s = rope[i + 1];
            r[i] = a * c - b * s;
            r[i + 1] = a * s + b * c;
        }
    }
    for (int64_t h = 0; h < nkv; h++) {
        const float *kr = qkv + (nh + h) * hd, *vr = qkv + (nh + nkv + h) * hd;
        const int64_t at = h * stride_h + pos * hd;
        if (half) {
            for (int64_t d = 0; d < hd; d += 8) {
                _mm_storeu_si128((__m128i *)((uint16_t *)k + at + d),
                                 _mm256_cvtps_ph(_mm256_loadu_ps(kr + d), _MM_FROUND_TO_NEAREST_INT));
                _mm_storeu_si128((__m128i *)((uint16_t *)v + at + d),
                                 _mm256_cvtps_ph(_mm256_loadu_ps(vr + d), _MM_FROUND_TO_NEAREST_INT));
            }
        } else {
            memcpy((float *)k + at, kr, sizeof(float) * hd);
            memcpy((float *)v + at, vr, sizeof(float) * hd);
        }
    }
    return attention(half, qkv, k, v, out, nh, nkv, hd, pos + 1, stride_h, scale);
}

int bq_attention_step(float *qkv, const float *rope, float *k, float *v, float *out, int64_t nh, int64_t nkv,
                      int64_t hd, int64_t pos, int64_t stride_h, float scale) {
    return step(0, qkv, rope, k, v, out, nh, nkv, hd, pos, stride_h, scale);
}

int bq_attention_step_h(float *qkv, const float *rope, uint16_t *k, uint16_t *v, float *out, int64_t nh,
                        int64_t nkv, int64_t hd, int64_t pos, int64_t stride_h, float scale) {
    return step(1, qkv, rope, k, v, out, nh, nkv, hd, pos, stride_h, scale);
}
