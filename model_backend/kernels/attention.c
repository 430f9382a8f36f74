/* Single-query attention for a decode step (AVX2 + FMA + F16C), called from model_backend/cpu_kernels.py
 * (`attention_kernel`).
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include "simd.h"

/* ---- single-query attention (a decode step of one sequence) ------------------------------------------------
 *
 * For each KV head h and each of its g = nh / nkv query heads j:
 *   out[h*g + j] = softmax(scale * q[h*g + j] . K[h, p], p < L) @ V[h, :L]
 * K, V: fp32 or fp16, [nkv, *, hd] with stride_h elements between heads (a slice of the KV cache).
 * Scores are kept in a per-thread buffer; the softmax is exact fp32 up to the exp below (rel. error ~1e-7).
 */

static __thread float *att_buf;
static __thread size_t att_cap;

/* 8 cache values as floats: the cache is fp32 (half = 0) or fp16 (half = 1) */
static inline __attribute__((always_inline)) __m256 load8(int half, const void *base, int64_t i) {
    if (half) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)base + i)));
    return _mm256_loadu_ps((const float *)base + i);
}

/* s[i] = scale * q . K[i] for 8 rows of hd (K at element offset k0): 8 dot products reduced together */
static inline __attribute__((always_inline)) void scores8(int half, const float *q, const void *k, int64_t k0,
                                                          int64_t hd, float scale, float *s) {
    __m256 a[8];
    for (int i = 0; i < 8; i++) a[i] = _mm256_setzero_ps();
    for (int64_t d = 0; d < hd; d += 8) {
        __m256 qv = _mm256_loadu_ps(q + d);
        for (int i = 0; i < 8; i++) a[i] = _mm256_fmadd_ps(qv, load8(half, k, k0 + i * hd + d), a[i]);
    }
    __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    __m256 r = _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
    _mm256_storeu_ps(s, _mm256_mul_ps(r, _mm256_set1_ps(scale)));
}

/* o[0 .. 8 NV) = sum over p < L of probs[p] * V[p, 0 .. 8 NV) (V at element offset v0, rows of hd) */
static inline __attribute__((always_inline)) void pv_cols(int half, int NV, const float *probs, const void *v,
                                                          int64_t v0, int64_t hd, int64_t L, float *o) {
    __m256 a[4];
    for (int c = 0; c < NV; c++) a[c] = _mm256_setzero_ps();
    for (int64_t p = 0; p < L; p++) {
        const __m256 bp = _mm256_set1_ps(probs[p]);
        for (int c = 0; c < NV; c++) a[c] = _mm256_fmadd_ps(bp, load8(half, v, v0 + p * hd + 8 * c), a[c]);
    }
    for (int c = 0; c < NV; c++) _mm256_storeu_ps(o + 8 * c, a[c]);
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
        float kb[8 * 256];
        for (; p0 + 8 <= L; p0 += 8) {
            if (half && g > 1) { /* the 8 rows converted once for the g query heads (the same values) */
                for (int64_t i = 0; i < 8 * hd; i += 8) _mm256_storeu_ps(kb + i, load8(1, k, kv0 + p0 * hd + i));
                for (int64_t j = 0; j < g; j++) scores8(0, Q + j * hd, kb, 0, hd, scale, att_buf + j * L + p0);
            } else {
                for (int64_t j = 0; j < g; j++)
                    scores8(half, Q + j * hd, k, kv0 + p0 * hd, hd, scale, att_buf + j * L + p0);
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
        /* out = probs @ V: per query head, up to 32 output values in registers over all positions (each value
         * an fma chain over p = 0..L-1 from 0, as one accumulator per value) */
        for (int64_t j = 0; j < g; j++) {
            int64_t d0 = 0;
            for (; d0 + 32 <= hd; d0 += 32) pv_cols(half, 4, att_buf + j * L, v, kv0 + d0, hd, L, O + j * hd + d0);
            for (; d0 < hd; d0 += 8) pv_cols(half, 1, att_buf + j * L, v, kv0 + d0, hd, L, O + j * hd + d0);
        }
    }
    return 0;
}

int bq_attention(const float *q, const float *k, const float *v, float *out, int64_t nh, int64_t nkv,
                 int64_t hd, int64_t L, int64_t stride_h, float scale) {
    return attention(0, q, k, v, out, nh, nkv, hd, L, stride_h, scale);
}

/* RoPE on q and k of one row (each head's dims interleaved in pairs, rope = cos/sin pairs of this position,
 * hd/2 of them), then k and v written to the cache at position pos (fp32, or rounded to fp16 when half).
 * qkv: [nh + 2 nkv, hd] fp32, rotated in place (the caller owns it). */
static inline __attribute__((always_inline)) void rope_write(int half, float *qkv, const float *rope, void *k,
                                                             void *v, int64_t nh, int64_t nkv, int64_t hd,
                                                             int64_t pos, int64_t stride_h) {
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
}

/* A whole decode step of one row of one layer's attention after the q|k|v projection: rope_write at pos, then
 * attention over positions 0..pos. */
static inline __attribute__((always_inline)) int step(int half, float *qkv, const float *rope, void *k, void *v,
                                                      float *out, int64_t nh, int64_t nkv, int64_t hd, int64_t pos,
                                                      int64_t stride_h, float scale) {
    if (nkv <= 0 || hd % 8 || pos < 0) return -2;
    rope_write(half, qkv, rope, k, v, nh, nkv, hd, pos, stride_h);
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

/* ---- a prompt's tokens (one sequence) --------------------------------------------------------------------------
 * Token j at position p0 + j: first every token's rope_write, then each token's attention over positions
 * 0..p0+j on the pool's threads. A token reads the same cache values and runs the same arithmetic as a decode
 * step at its position (step above), so its output has the same bits however the prompt was split. */

typedef void (*task_fn)(void *ctx, int tid, int nt);
void ck_parallel(task_fn fn, void *ctx, int nt);

typedef struct {
    int half;
    const float *qkv;
    void *k, *v;
    float *out;
    int64_t nh, nkv, hd, p0, t, stride_h;
    float scale;
    int rc;
} rows_job_t;

static void rows_task(void *ctx, int tid, int nt) {
    rows_job_t *R = (rows_job_t *)ctx;
    const int64_t w = (R->nh + 2 * R->nkv) * R->hd;
    for (int64_t j = tid; j < R->t; j += nt) { /* interleaved: later tokens attend to more positions */
        const float *q = R->qkv + j * w;
        float *o = R->out + j * R->nh * R->hd;
        int rc = R->half ? attention(1, q, R->k, R->v, o, R->nh, R->nkv, R->hd, R->p0 + j + 1, R->stride_h, R->scale)
                         : attention(0, q, R->k, R->v, o, R->nh, R->nkv, R->hd, R->p0 + j + 1, R->stride_h, R->scale);
        if (rc) R->rc = rc;
    }
}

/* qkv [t, nh + 2 nkv, hd] (rotated in place), k / v: the sequence's cache slice, out [t, nh * hd] */
int ck_attention_rows(int half, float *qkv, const float *rope, void *k, void *v, float *out, int64_t nh,
                      int64_t nkv, int64_t hd, int64_t p0, int64_t t, int64_t stride_h, float scale, int nthreads) {
    if (nkv <= 0 || hd % 8 || p0 < 0 || t < 0) return -2;
    const int64_t w = (nh + 2 * nkv) * hd;
    for (int64_t j = 0; j < t; j++) {
        if (half) rope_write(1, qkv + j * w, rope + j * hd, k, v, nh, nkv, hd, p0 + j, stride_h);
        else rope_write(0, qkv + j * w, rope + j * hd, k, v, nh, nkv, hd, p0 + j, stride_h);
    }
    rows_job_t R = {half, qkv, k, v, out, nh, nkv, hd, p0, t, stride_h, scale, 0};
    ck_parallel(rows_task, &R, nthreads < 1 ? 1 : nthreads > t ? (int)t : nthreads);
    return R.rc;
}
