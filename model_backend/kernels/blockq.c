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
 * q[j + 16] = qs[j] >> 4.  Q8_0 = {fp16 d, int8 qs[32]}, w[j] = d * qs[j].
 *
 * Rows n0 <= n < n1 only, so callers may split N across threads; the function keeps no state but a scratch
 * buffer per thread.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#define QK 32
#define Q4_1_BYTES 20
#define Q8_0_BYTES 34
#define MT 4 /* activation rows per pass over a weight row */

static inline float half_to_float(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

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

/* one weight block's 32 values widened to int16: lo = values 0..15, hi = 16..31 */
static inline void unpack_q4_1(const uint8_t *blk, __m256i *lo, __m256i *hi) {
    __m128i q = _mm_loadu_si128((const __m128i *)(blk + 4));
    const __m128i m4 = _mm_set1_epi8(0x0F);
    *lo = _mm256_cvtepu8_epi16(_mm_and_si128(q, m4));
    *hi = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(q, 4), m4));
}

static inline void unpack_q8_0(const uint8_t *blk, __m256i *lo, __m256i *hi) {
    __m256i q = _mm256_loadu_si256((const __m256i *)(blk + 2));
    *lo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(q));
    *hi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(q, 1));
}

/* rows [n0, n1) of W against activation rows [m0, m0 + mt), mt <= MT; kind 0 = Q4_1, 1 = Q8_0 */
static inline __attribute__((always_inline)) void tile(int kind, int mt, const uint8_t *W, float *y, int64_t m0,
                                                       int64_t N, int64_t K, int64_t n0, int64_t n1) {
    const int64_t nb = K / QK;
    const int64_t bytes = kind == 0 ? Q4_1_BYTES : Q8_0_BYTES;
    const int16_t *xq = tls.q + m0 * K;
    const float *xs = tls.scale + m0 * nb;
    const float *xsum = tls.sum + m0 * nb;
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *row = W + n * nb * bytes;
        __m256 acc[MT];
        float off[MT];
        for (int t = 0; t < mt; t++) { acc[t] = _mm256_setzero_ps(); off[t] = 0.0f; }
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = row + b * bytes;
            __m256i lo, hi;
            float d = half_to_float(blk);
            if (kind == 0) unpack_q4_1(blk, &lo, &hi); else unpack_q8_0(blk, &lo, &hi);
            float mn = kind == 0 ? half_to_float(blk + 2) : 0.0f;
            for (int t = 0; t < mt; t++) {
                const int16_t *xb = xq + t * K + b * QK;
                __m256i p = _mm256_add_epi32(
                    _mm256_madd_epi16(lo, _mm256_loadu_si256((const __m256i *)xb)),
                    _mm256_madd_epi16(hi, _mm256_loadu_si256((const __m256i *)(xb + 16))));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d * xs[t * nb + b]), acc[t]);
                if (kind == 0) off[t] += mn * xsum[t * nb + b];
            }
        }
        for (int t = 0; t < mt; t++) y[(m0 + t) * N + n] = hsum(acc[t]) + off[t];
    }
}

static int gemm(int kind, const uint8_t *W, const float *x, float *y, int64_t M, int64_t N, int64_t K,
                int64_t n0, int64_t n1) {
    if (K % QK != 0 || n0 < 0 || n1 > N || n0 > n1) return -2;
    if (prepare(x, M, K) != 0) return -1;
    int64_t m = 0;
    for (; m + MT <= M; m += MT) {
        if (kind == 0) tile(0, MT, W, y, m, N, K, n0, n1); else tile(1, MT, W, y, m, N, K, n0, n1);
    }
    for (; m < M; m++) {
        if (kind == 0) tile(0, 1, W, y, m, N, K, n0, n1); else tile(1, 1, W, y, m, N, K, n0, n1);
    }
    return 0;
}

int bq_gemm_q4_1(const uint8_t *W, const float *x, float *y, int64_t M, int64_t N, int64_t K, int64_t n0,
                 int64_t n1) {
    return gemm(0, W, x, y, M, N, K, n0, n1);
}

int bq_gemm_q8_0(const uint8_t *W, const float *x, float *y, int64_t M, int64_t N, int64_t K, int64_t n0,
                 int64_t n1) {
    return gemm(1, W, x, y, M, N, K, n0, n1);
}

int bq_version(void) { return 1; }

/* ---- single-query attention (a decode step of one sequence) ------------------------------------------------
 *
 * For each KV head h and each of its g = nh / nkv query heads j:
 *   out[h*g + j] = softmax(scale * q[h*g + j] . K[h, p], p < L) @ V[h, :L]
 * K, V: fp32, [nkv, *, hd] with stride_h floats between heads (a slice of the KV cache), rows of hd floats.
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

int bq_attention(const float *q, const float *k, const float *v, float *out, int64_t nh, int64_t nkv,
                 int64_t hd, int64_t L, int64_t stride_h, float scale) {
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
        const float *K = k + h * stride_h, *V = v + h * stride_h;
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
                        a[i] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(K + (p0 + i) * hd + d), a[i]);
                }
                __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
                __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
                __m256 r = _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
                _mm256_storeu_ps(att_buf + j * L + p0, _mm256_mul_ps(r, _mm256_set1_ps(scale)));
            }
        }
        for (int64_t p = p0; p < L; p++) {
            const float *kr = K + p * hd;
            for (int64_t j = 0; j < g; j++) {
                const float *qj = Q + j * hd;
                __m256 acc = _mm256_setzero_ps();
                for (int64_t d = 0; d < hd; d += 8)
                    acc = _mm256_fmadd_ps(_mm256_loadu_ps(qj + d), _mm256_loadu_ps(kr + d), acc);
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
            const float *vr = V + p * hd;
            for (int64_t d = 0; d < hd; d += 8) {
                __m256 vv = _mm256_loadu_ps(vr + d);
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
