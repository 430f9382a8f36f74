/* Decode-time matrix products on GGUF weight blocks (AVX2 + FMA + F16C), called from model_backend/blockq.py.
 *
 *   y[m, n] = sum_k x[m, k] * W[n, k]        x: float32 [M, K], W: N rows of K/32 blocks, y: float32 [M, N]
 *
 * W stays in the file's own block format, so a token reads 5 bits per weight (Q4_1) or 8.5 (Q8_0) instead of
 * 16 (fp16) or 32 (fp32); the weights are used exactly as stored. The activations are rounded to int16 per
 * block of 32 (scale = max|x| / 32767, relative error <= 2^-16 of the block's largest value) so that the
 * inner product is one integer multiply-add (vpmaddwd) per 16 weights; the Q4_1 offset term uses the exact
 * float sum of each block of x.
 *
 * Block layouts (ggml): Q4_1 = {fp16 d, fp16 m, uint8 qs[16]}, w[j] = d * q[j] + m with q[j] = qs[j] & 15 and
 * q[j + 16] = qs[j] >> 4.  Q8_0 = {fp16 d, int8 qs[32]}, w[j] = d * qs[j]. The kernels take them with their
 * bytes reordered so that 8 rows are computed together (layout "x8" below; blockq.py reorders at load).
 *
 * Groups of 8 rows g0 <= g < g1 only, so callers may split N across threads; no state but a scratch buffer per
 * thread. Also here: single-query attention for a decode step (bq_attention).
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#define QK 32

static inline float hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

/* x rows -> int16 blocks + per-block scale and exact sum */
typedef struct {
    int16_t *q;   /* [M, K] */
    float *scale; /* [M, K/32] */
    float *sum;   /* [M, K/32] */
    size_t cap;
} scratch_t;

static __thread scratch_t tls;

static int prepare(const float *x, int64_t M, int64_t K) {
    int64_t nb = K / QK;
    size_t need = (size_t)M * K * sizeof(int16_t) + 2 * (size_t)M * nb * sizeof(float) + 64;
    if (need > tls.cap) {
        free(tls.q);
        tls.q = (int16_t *)aligned_alloc(64, (need + 63) / 64 * 64);
        if (!tls.q) { tls.cap = 0; return -1; }
        tls.cap = need;
    }
    tls.scale = (float *)(tls.q + (size_t)M * K);
    tls.sum = tls.scale + (size_t)M * nb;
    for (int64_t m = 0; m < M; m++) {
        for (int64_t b = 0; b < nb; b++) {
            const float *xb = x + m * K + b * QK;
            __m256 amax = _mm256_setzero_ps(), s = _mm256_setzero_ps();
            const __m256 sign = _mm256_set1_ps(-0.0f);
            for (int j = 0; j < QK; j += 8) {
                __m256 v = _mm256_loadu_ps(xb + j);
                amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v));
                s = _mm256_add_ps(s, v);
            }
            __m128 a = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
            a = _mm_max_ps(a, _mm_movehl_ps(a, a));
            a = _mm_max_ss(a, _mm_movehdup_ps(a));
            float mx = _mm_cvtss_f32(a);
            float scale = mx / 32767.0f;
            float inv = mx > 0.0f ? 32767.0f / mx : 0.0f;
            tls.scale[m * nb + b] = scale;
            tls.sum[m * nb + b] = hsum(s);
            int16_t *qb = tls.q + m * K + b * QK;
            __m256 vinv = _mm256_set1_ps(inv);
            for (int j = 0; j < QK; j += 16) {
                __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + j), vinv));
                __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + j + 8), vinv));
                __m256i p = _mm256_permute4x64_epi64(_mm256_packs_epi32(i0, i1), 0xD8);
                _mm256_storeu_si256((__m256i *)(qb + j), p);
            }
        }
    }
    return 0;
}

/* ---- the products, on rows interleaved by 8 ---------------------------------------------------------------------
 *
 * Layout "x8": rows are taken 8 at a time (N padded with zero rows to a multiple of 8). For each group of 8
 * rows and each block column b, one record holds the 8 rows' scales, then their quants:
 *   Q4_1: fp16 d[8], fp16 m[8], uint8 qs[8][16]   (160 bytes)
 *   Q8_0: fp16 d[8], int8 qs[8][32]               (272 bytes)
 * The bytes are those of the file, reordered. One pass gives 8 outputs in one vector: the 8 rows' integer
 * block sums are reduced together (horizontal adds) and scaled by the 8 d's at once, instead of one scalar
 * conversion and broadcast per row and block.
 */
#define X8_Q4_1 160
#define X8_Q8_0 272

static inline __m256i reduce8_epi32(__m256i p0, __m256i p1, __m256i p2, __m256i p3, __m256i p4, __m256i p5,
                                    __m256i p6, __m256i p7) {
    __m256i u0 = _mm256_hadd_epi32(_mm256_hadd_epi32(p0, p1), _mm256_hadd_epi32(p2, p3));
    __m256i u1 = _mm256_hadd_epi32(_mm256_hadd_epi32(p4, p5), _mm256_hadd_epi32(p6, p7));
    return _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20), _mm256_permute2x128_si256(u0, u1, 0x31));
}

/* one row's 32 quants of a block, widened to int16: lo = values 0..15, hi = 16..31 */
static inline void unpack_q4(const uint8_t *qs, __m256i *lo, __m256i *hi) {
    const __m128i m4 = _mm_set1_epi8(0x0F);
    __m128i q = _mm_loadu_si128((const __m128i *)qs);
    *lo = _mm256_cvtepu8_epi16(_mm_and_si128(q, m4));
    *hi = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(q, 4), m4));
}

static inline void unpack_q8(const uint8_t *qs, __m256i *lo, __m256i *hi) {
    __m256i q = _mm256_loadu_si256((const __m256i *)qs);
    *lo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(q));
    *hi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(q, 1));
}

static inline __m256i dot16(__m256i lo, __m256i hi, __m256i x0, __m256i x1) {
    return _mm256_add_epi32(_mm256_madd_epi16(lo, x0), _mm256_madd_epi16(hi, x1));
}

/* activation rows m .. m + mt - 1 (mt = 1 or 2) against groups [g0, g1): each weight record is unpacked once
 * and multiplied with every activation row, so two rows cost little more than one */
static inline __attribute__((always_inline)) void x8_rows(int kind, int mt, const uint8_t *W, float *y, int64_t m,
                                                          int64_t N, int64_t K, int64_t g0, int64_t g1) {
    const int64_t nb = K / QK;
    const int64_t rec = kind == 0 ? X8_Q4_1 : X8_Q8_0;
    const int64_t qoff = kind == 0 ? 32 : 16, qstep = kind == 0 ? 16 : 32;
    for (int64_t g = g0; g < g1; g++) {
        const uint8_t *grp = W + g * nb * rec;
        __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
        __m256 accm[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *r = grp + b * rec;
            const uint8_t *qs = r + qoff;
            __m256i x0[2], x1[2], p[2][8];
            for (int t = 0; t < mt; t++) {
                const int16_t *xb = tls.q + (m + t) * K + b * QK;
                x0[t] = _mm256_loadu_si256((const __m256i *)xb);
                x1[t] = _mm256_loadu_si256((const __m256i *)(xb + 16));
            }
            for (int i = 0; i < 8; i++) {
                __m256i lo, hi;
                if (kind == 0) unpack_q4(qs + i * qstep, &lo, &hi); else unpack_q8(qs + i * qstep, &lo, &hi);
                for (int t = 0; t < mt; t++) p[t][i] = dot16(lo, hi, x0[t], x1[t]);
            }
            __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)r));
            __m256 mn = kind == 0 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(r + 16))) : _mm256_setzero_ps();
            for (int t = 0; t < mt; t++) {
                __m256i s8 = reduce8_epi32(p[t][0], p[t][1], p[t][2], p[t][3], p[t][4], p[t][5], p[t][6], p[t][7]);
                const int64_t xi = (m + t) * nb + b;
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s8), _mm256_mul_ps(d, _mm256_set1_ps(tls.scale[xi])),
                                         acc[t]);
                if (kind == 0) accm[t] = _mm256_fmadd_ps(mn, _mm256_set1_ps(tls.sum[xi]), accm[t]);
            }
        }
        const int64_t n0 = g * 8;
        for (int t = 0; t < mt; t++) {
            float out[8];
            _mm256_storeu_ps(out, _mm256_add_ps(acc[t], accm[t]));
            for (int i = 0; i < 8 && n0 + i < N; i++) y[(m + t) * N + n0 + i] = out[i];
        }
    }
}

/* groups [g0, g1) of 8 rows each; N real rows (the last group may be padding) */
static int gemm_x8(int kind, const uint8_t *W, const float *x, float *y, int64_t M, int64_t N, int64_t K,
                   int64_t g0, int64_t g1) {
    if (K % QK != 0 || g0 < 0 || g1 > (N + 7) / 8 || g0 > g1) return -2;
    if (prepare(x, M, K) != 0) return -1;
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) {
        if (kind == 0) x8_rows(0, 2, W, y, m, N, K, g0, g1); else x8_rows(1, 2, W, y, m, N, K, g0, g1);
    }
    if (m < M) {
        if (kind == 0) x8_rows(0, 1, W, y, m, N, K, g0, g1); else x8_rows(1, 1, W, y, m, N, K, g0, g1);
    }
    return 0;
}

int bq_gemm_x8_q4_1(const uint8_t *W, const float *x, float *y, int64_t M, int64_t N, int64_t K, int64_t g0,
                    int64_t g1) {
    return gemm_x8(0, W, x, y, M, N, K, g0, g1);
}

int bq_gemm_x8_q8_0(const uint8_t *W, const float *x, float *y, int64_t M, int64_t N, int64_t K, int64_t g0,
                    int64_t g1) {
    return gemm_x8(1, W, x, y, M, N, K, g0, g1);
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
