/* Matrix products on GGUF weights in their own type (AVX2 + FMA + F16C), called from model_backend/cpu_kernels.py.
 *
 *   y[m, n] = sum_k x[m, k] * W[n, k]      x: float32 [M, K], W: N rows as stored in the file, y: float32 [M, N]
 *
 * W is read exactly as the GGUF stores it (no repack): each row is K / block_size blocks of the type's layout
 * (ggml's, see docs/performance.md). The activations are rounded to int8 once per call, like llama.cpp's
 * Q8_0 / Q8_K: per block of 32 (types with 32-blocks) or of 256 (K-quants) x ~= dx * q, dx = max|x| / 127,
 * q = round(x / dx), and the sums of q per block (per 16 for K-quants) for the types' offset terms, so every
 * product is exactly sum_k w[k] * dx * q[k]: the error is that of the activation rounding alone. Products of weight quants with q are then AVX2 integer dot products
 * (vpmaddubsw: unsigned weight quant x signed activation, vpmaddwd to int32); Q8_0's signed quants use
 * |w| x sign(x, w). F16 / BF16 rows are multiplied in fp32 with FMA.
 *
 * Tiles: 2 weight rows x up to 4 activation rows, so each unpacked weight block is used up to 4 times and each
 * activation block twice. N is split across threads (a small persistent pool below); activation rows are taken
 * in chunks that stay in L2.
 */
#include <immintrin.h>
#include <x86intrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define AI static inline __attribute__((always_inline))

enum { T_F32, T_F16, T_BF16, T_Q4_0, T_Q4_1, T_Q5_0, T_Q5_1, T_Q8_0, T_Q4_K, T_Q5_K, T_Q6_K, T_COUNT };
static const int BLOCK[T_COUNT] = {1, 1, 1, 32, 32, 32, 32, 32, 256, 256, 256};
static const int BYTES[T_COUNT] = {4, 2, 2, 18, 20, 22, 24, 34, 144, 176, 210};

AI float h2f(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

AI float hsum8(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

AI int hsum_i32x4(__m128i v) {
    v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0x4E));
    v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0xB1));
    return _mm_cvtsi128_si32(v);
}

AI int hsum_i32x8(__m256i v) {
    return hsum_i32x4(_mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)));
}

/* ---- the activations, rounded to int8 ------------------------------------------------------------------------ */

typedef struct {
    int8_t *q;      /* [M, K] */
    float *dx;      /* [M, K / bs] scale per block */
    float *xs;      /* [M, K / 32] dx * sum of q per 32 (32-block types: the offset term) */
    int16_t *bs16;  /* [M, K / 16] sum of q per 16 (K-quants) */
    int16_t *bs32;  /* [M, K / 32] sum of q per 32 (K-quants) */
    void *mem;
    size_t cap;
} xq_t;

static __thread xq_t xbuf;

/* 32 floats -> 32 int8 (round to nearest even) at scale inv; the four int32 vectors come back in i[] */
AI __m256i round32(const float *x, __m256 inv, __m256i i[4]) {
    for (int j = 0; j < 4; j++) i[j] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * j), inv));
    __m256i a = _mm256_packs_epi32(i[0], i[1]), b = _mm256_packs_epi32(i[2], i[3]);
    return _mm256_permutevar8x32_epi32(_mm256_packs_epi16(a, b), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

AI float amax_n(const float *x, int n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps();
    for (int j = 0; j < n; j += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)));
    __m128 a = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    a = _mm_max_ps(a, _mm_movehl_ps(a, a));
    a = _mm_max_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}

static int prepare_x(const float *x, int64_t M, int64_t K, int kquant) {
    size_t n = (size_t)M * K;
    size_t need = n + 4 * (n / 16) + 4 * (n / 32) + 2 * (n / 16) + 2 * (n / 32) + 5 * 64;
    if (need > xbuf.cap) {
        free(xbuf.mem);
        xbuf.mem = aligned_alloc(64, (need + 63) / 64 * 64);
        if (!xbuf.mem) { xbuf.cap = 0; return -1; }
        xbuf.cap = need;
    }
    uint8_t *p = (uint8_t *)xbuf.mem;
    xbuf.q = (int8_t *)p; p += (n + 63) / 64 * 64;
    xbuf.dx = (float *)p; p += (4 * (n / 32) + 63) / 64 * 64;
    xbuf.xs = (float *)p; p += (4 * (n / 32) + 63) / 64 * 64;
    xbuf.bs16 = (int16_t *)p; p += (2 * (n / 16) + 63) / 64 * 64;
    xbuf.bs32 = (int16_t *)p;
    for (int64_t m = 0; m < M; m++) {
        const float *xr = x + m * K;
        int8_t *qr = xbuf.q + m * K;
        if (!kquant) {
            for (int64_t b = 0; b < K / 32; b++) {
                const float *xb = xr + b * 32;
                float mx = amax_n(xb, 32);
                __m256i i[4];
                __m256 inv = _mm256_set1_ps(mx > 0.0f ? 127.0f / mx : 0.0f);
                _mm256_storeu_si256((__m256i *)(qr + b * 32), round32(xb, inv, i));
                const int isum = hsum_i32x8(_mm256_add_epi32(_mm256_add_epi32(i[0], i[1]),
                                                             _mm256_add_epi32(i[2], i[3])));
                xbuf.dx[m * (K / 32) + b] = mx / 127.0f;
                xbuf.xs[m * (K / 32) + b] = (mx / 127.0f) * (float)isum;
            }
        } else {
            for (int64_t s = 0; s < K / 256; s++) {
                const float *xs = xr + s * 256;
                float mx = amax_n(xs, 256);
                __m256 inv = _mm256_set1_ps(mx > 0.0f ? 127.0f / mx : 0.0f);
                xbuf.dx[m * (K / 256) + s] = mx / 127.0f;
                for (int b = 0; b < 8; b++) {
                    __m256i i[4];
                    _mm256_storeu_si256((__m256i *)(qr + s * 256 + b * 32), round32(xs + b * 32, inv, i));
                    int s0 = hsum_i32x8(_mm256_add_epi32(i[0], i[1])), s1 = hsum_i32x8(_mm256_add_epi32(i[2], i[3]));
                    xbuf.bs16[m * (K / 16) + s * 16 + 2 * b] = (int16_t)s0;
                    xbuf.bs16[m * (K / 16) + s * 16 + 2 * b + 1] = (int16_t)s1;
                    xbuf.bs32[m * (K / 32) + s * 8 + b] = (int16_t)(s0 + s1);
                }
            }
        }
    }
    return 0;
}

/* ---- unpacking one weight block ------------------------------------------------------------------------------ */

/* byte j = 0xFF where bit j of x is set */
AI __m256i bits_to_bytes(uint32_t x) {
    const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                          2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x), shuf);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
}

/* 16 bytes of packed nibbles -> 32 values: low nibbles first, then high nibbles (ggml's order) */
AI __m256i nibbles(const uint8_t *qs) {
    __m128i v = _mm_loadu_si128((const __m128i *)qs);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), _mm256_set1_epi8(0x0F));
}

/* A 32-block: its quants (unsigned, or signed for Q8_0), d and the coefficient m of the block's sum of x:
 * w[j] = d * q[j] + m */
AI __m256i unpack32(int T, const uint8_t *b, float *d, float *m) {
    uint32_t qh;
    switch (T) {
    case T_Q4_0:
        *d = h2f(b); *m = -8.0f * *d;
        return nibbles(b + 2);
    case T_Q4_1:
        *d = h2f(b); *m = h2f(b + 2);
        return nibbles(b + 4);
    case T_Q5_0:
        *d = h2f(b); *m = -16.0f * *d;
        memcpy(&qh, b + 2, 4);
        return _mm256_or_si256(nibbles(b + 6), _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10)));
    case T_Q5_1:
        *d = h2f(b); *m = h2f(b + 2);
        memcpy(&qh, b + 4, 4);
        return _mm256_or_si256(nibbles(b + 8), _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10)));
    default: /* Q8_0 */
        *d = h2f(b); *m = 0.0f;
        return _mm256_loadu_si256((const __m256i *)(b + 2));
    }
}

/* Q4_K / Q5_K: 8 six-bit scales and mins packed in 12 bytes */
AI void k4_scales(const uint8_t *s, uint8_t sc[8], uint8_t mn[8]) {
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 6) << 4);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
}

/* sub-block j (32 values, unsigned) of a K-quant super-block */
AI __m256i unpackK(int T, const uint8_t *b, int j) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    if (T == T_Q4_K) {
        __m256i c = _mm256_loadu_si256((const __m256i *)(b + 16 + 32 * (j >> 1)));
        return (j & 1) ? _mm256_and_si256(_mm256_srli_epi16(c, 4), m4) : _mm256_and_si256(c, m4);
    }
    if (T == T_Q5_K) {
        __m256i c = _mm256_loadu_si256((const __m256i *)(b + 48 + 32 * (j >> 1)));
        __m256i lo = (j & 1) ? _mm256_and_si256(_mm256_srli_epi16(c, 4), m4) : _mm256_and_si256(c, m4);
        __m256i h = _mm256_loadu_si256((const __m256i *)(b + 16));
        h = _mm256_and_si256(_mm256_srli_epi16(h, j), _mm256_set1_epi8(1));
        return _mm256_or_si256(lo, _mm256_slli_epi16(h, 4));
    }
    /* Q6_K: ql[128], qh[64], scales[16], d; sub-block j = half h, quarter r */
    const int h = j >> 2, r = j & 3;
    __m256i c = _mm256_loadu_si256((const __m256i *)(b + h * 64 + (r & 1) * 32));
    __m256i lo = (r & 2) ? _mm256_and_si256(_mm256_srli_epi16(c, 4), m4) : _mm256_and_si256(c, m4);
    __m256i hb = _mm256_loadu_si256((const __m256i *)(b + 128 + h * 32));
    hb = _mm256_and_si256(_mm256_srli_epi16(hb, 2 * r), _mm256_set1_epi8(3));
    return _mm256_or_si256(lo, _mm256_slli_epi16(hb, 4));
}

/* ---- tiles: 2 weight rows x RX activation rows ------------------------------------------------------------------
 * out[j * ldo + i] for activation row j, weight row i. */

AI void tile32(int T, int RX, const uint8_t *w0, const uint8_t *w1, const xq_t *X, int64_t m, int64_t K,
               float *out, int64_t ldo) {
    const int64_t nb = K / 32, bytes = BYTES[T];
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[2][4];
    float macc[2][4];
    for (int j = 0; j < RX; j++) {
        acc[0][j] = acc[1][j] = _mm256_setzero_ps();
        macc[0][j] = macc[1][j] = 0.0f;
    }
    const int8_t *xq = X->q + m * K;
    const float *dx = X->dx + m * nb, *xs = X->xs + m * nb;
    for (int64_t b = 0; b < nb; b++) {
        float d0, m0, d1, m1;
        __m256i q0 = unpack32(T, w0 + b * bytes, &d0, &m0), q1 = unpack32(T, w1 + b * bytes, &d1, &m1);
        __m256i a0 = q0, a1 = q1;
        if (T == T_Q8_0) { a0 = _mm256_sign_epi8(q0, q0); a1 = _mm256_sign_epi8(q1, q1); }
        for (int j = 0; j < RX; j++) {
            __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + j * K + b * 32));
            __m256i p0, p1;
            if (T == T_Q8_0) {
                p0 = _mm256_maddubs_epi16(a0, _mm256_sign_epi8(xv, q0));
                p1 = _mm256_maddubs_epi16(a1, _mm256_sign_epi8(xv, q1));
            } else {
                p0 = _mm256_maddubs_epi16(a0, xv);
                p1 = _mm256_maddubs_epi16(a1, xv);
            }
            const float dxj = dx[j * nb + b];
            acc[0][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(p0, ones)), _mm256_set1_ps(d0 * dxj),
                                        acc[0][j]);
            acc[1][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(p1, ones)), _mm256_set1_ps(d1 * dxj),
                                        acc[1][j]);
            if (T != T_Q8_0) {
                macc[0][j] += m0 * xs[j * nb + b];
                macc[1][j] += m1 * xs[j * nb + b];
            }
        }
    }
    for (int j = 0; j < RX; j++) {
        out[j * ldo] = hsum8(acc[0][j]) + macc[0][j];
        out[j * ldo + 1] = hsum8(acc[1][j]) + macc[1][j];
    }
}

AI void tileK(int T, int RX, const uint8_t *w0, const uint8_t *w1, const xq_t *X, int64_t m, int64_t K,
              float *out, int64_t ldo) {
    const int64_t ns = K / 256, bytes = BYTES[T];
    __m256 acc[2][4];
    float macc[2][4];
    for (int j = 0; j < RX; j++) {
        acc[0][j] = acc[1][j] = _mm256_setzero_ps();
        macc[0][j] = macc[1][j] = 0.0f;
    }
    const int8_t *xq = X->q + m * K;
    for (int64_t s = 0; s < ns; s++) {
        const uint8_t *b[2] = {w0 + s * bytes, w1 + s * bytes};
        float d[2], dmin[2];
        uint8_t sc[2][8], mn[2][8];
        __m256i sc6[2];
        for (int i = 0; i < 2; i++) {
            if (T == T_Q6_K) {
                d[i] = h2f(b[i] + 208); dmin[i] = 0.0f;
                sc6[i] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b[i] + 192)));
            } else {
                d[i] = h2f(b[i]); dmin[i] = h2f(b[i] + 2);
                k4_scales(b[i] + 4, sc[i], mn[i]);
            }
        }
        __m256i iacc[2][4];
        for (int j = 0; j < RX; j++) iacc[0][j] = iacc[1][j] = _mm256_setzero_si256();
        for (int sb = 0; sb < 8; sb++) {
            __m256i q[2], sv[2];
            for (int i = 0; i < 2; i++) {
                q[i] = unpackK(T, b[i], sb);
                if (T == T_Q6_K) {
                    const int8_t *s8 = (const int8_t *)(b[i] + 192);
                    sv[i] = _mm256_set_m128i(_mm_set1_epi16(s8[2 * sb + 1]), _mm_set1_epi16(s8[2 * sb]));
                } else {
                    sv[i] = _mm256_set1_epi16(sc[i][sb]);
                }
            }
            for (int j = 0; j < RX; j++) {
                __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + j * K + s * 256 + sb * 32));
                for (int i = 0; i < 2; i++)
                    iacc[i][j] = _mm256_add_epi32(iacc[i][j],
                                                  _mm256_madd_epi16(_mm256_maddubs_epi16(q[i], xv), sv[i]));
            }
        }
        for (int j = 0; j < RX; j++) {
            const float dxj = X->dx[(m + j) * ns + s];
            for (int i = 0; i < 2; i++) {
                __m256i t = iacc[i][j];
                if (T == T_Q6_K) {  /* the -32 offset of every quant: 32 * sum(scale * block sum of x) */
                    __m256i bs = _mm256_loadu_si256((const __m256i *)(X->bs16 + (m + j) * (K / 16) + s * 16));
                    t = _mm256_sub_epi32(t, _mm256_slli_epi32(_mm256_madd_epi16(sc6[i], bs), 5));
                } else {
                    __m128i mv = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)mn[i]));
                    __m128i bs = _mm_loadu_si128((const __m128i *)(X->bs32 + (m + j) * (K / 32) + s * 8));
                    macc[i][j] -= dmin[i] * dxj * (float)hsum_i32x4(_mm_madd_epi16(mv, bs));
                }
                acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_set1_ps(d[i] * dxj), acc[i][j]);
            }
        }
    }
    for (int j = 0; j < RX; j++) {
        out[j * ldo] = hsum8(acc[0][j]) + macc[0][j];
        out[j * ldo + 1] = hsum8(acc[1][j]) + macc[1][j];
    }
}

/* F16 / BF16 rows: fp32 FMA on the converted weights */
AI __m256 load_half8(int T, const uint8_t *p) {
    __m128i v = _mm_loadu_si128((const __m128i *)p);
    if (T == T_F16) return _mm256_cvtph_ps(v);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}

AI void tileF(int T, int RX, const uint8_t *w0, const uint8_t *w1, const float *x, int64_t K, float *out,
              int64_t ldo) {
    __m256 acc[2][4];
    for (int j = 0; j < RX; j++) acc[0][j] = acc[1][j] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k += 8) {
        __m256 a = load_half8(T, w0 + 2 * k), c = load_half8(T, w1 + 2 * k);
        for (int j = 0; j < RX; j++) {
            __m256 xv = _mm256_loadu_ps(x + j * K + k);
            acc[0][j] = _mm256_fmadd_ps(a, xv, acc[0][j]);
            acc[1][j] = _mm256_fmadd_ps(c, xv, acc[1][j]);
        }
    }
    for (int j = 0; j < RX; j++) {
        out[j * ldo] = hsum8(acc[0][j]);
        out[j * ldo + 1] = hsum8(acc[1][j]);
    }
}

/* ---- one thread's share: weight rows [n0, n1) against all M activation rows --------------------------------- */

typedef struct {
    int type;
    const uint8_t *W;
    int64_t row_bytes, M, N, K;
    const float *x;
    const xq_t *X;
    float *y;
} job_t;

AI void tile(int T, int RX, const job_t *J, int64_t n, int64_t m, float *buf) {
    const uint8_t *w0 = J->W + n * J->row_bytes;
    const uint8_t *w1 = n + 1 < J->N ? w0 + J->row_bytes : w0; /* an odd last row is computed twice */
    if (T == T_F16 || T == T_BF16) tileF(T, RX, w0, w1, J->x + m * J->K, J->K, buf, 2);
    else if (T >= T_Q4_K) tileK(T, RX, w0, w1, J->X, m, J->K, buf, 2);
    else tile32(T, RX, w0, w1, J->X, m, J->K, buf, 2);
    for (int j = 0; j < RX; j++) {
        J->y[(m + j) * J->N + n] = buf[2 * j];
        if (n + 1 < J->N) J->y[(m + j) * J->N + n + 1] = buf[2 * j + 1];
    }
}

AI void run_rows(int T, const job_t *J, int64_t n0, int64_t n1) {
    float buf[8];
    /* activation rows in chunks whose int8 copy stays in L2 (~256 KiB) while the weight rows stream past */
    int64_t mc = (256 * 1024) / (J->K > 0 ? J->K : 1);
    mc = mc < 4 ? 4 : mc / 4 * 4;
    for (int64_t mb = 0; mb < J->M; mb += mc) {
        const int64_t me = mb + mc < J->M ? mb + mc : J->M;
        for (int64_t n = n0; n < n1; n += 2) {
            int64_t m = mb;
            for (; m + 4 <= me; m += 4) tile(T, 4, J, n, m, buf);
            if (m + 2 <= me) { tile(T, 2, J, n, m, buf); m += 2; }
            if (m < me) tile(T, 1, J, n, m, buf);
        }
    }
}

static void run_job(const job_t *J, int64_t n0, int64_t n1) {
    switch (J->type) {
    case T_F16: run_rows(T_F16, J, n0, n1); break;
    case T_BF16: run_rows(T_BF16, J, n0, n1); break;
    case T_Q4_0: run_rows(T_Q4_0, J, n0, n1); break;
    case T_Q4_1: run_rows(T_Q4_1, J, n0, n1); break;
    case T_Q5_0: run_rows(T_Q5_0, J, n0, n1); break;
    case T_Q5_1: run_rows(T_Q5_1, J, n0, n1); break;
    case T_Q8_0: run_rows(T_Q8_0, J, n0, n1); break;
    case T_Q4_K: run_rows(T_Q4_K, J, n0, n1); break;
    case T_Q5_K: run_rows(T_Q5_K, J, n0, n1); break;
    case T_Q6_K: run_rows(T_Q6_K, J, n0, n1); break;
    default: break;
    }
}

/* ---- a small persistent thread pool ------------------------------------------------------------------------------
 * Workers spin briefly after a job (decode calls come every few microseconds), then sleep on a condition
 * variable. One job at a time (dispatch lock): ctypes releases the GIL, so Python threads may call in at once. */

#define MAX_THREADS 64
#define SPIN_TICKS 200000 /* ~0.1 ms of spinning before sleeping */
typedef void (*task_fn)(void *ctx, int tid, int nt);

static struct {
    pthread_mutex_t dispatch, mu;
    pthread_cond_t cv;
    atomic_int gen, pending;
    int nworkers;
    task_fn fn;
    void *ctx;
    int nt;
} pool = {.dispatch = PTHREAD_MUTEX_INITIALIZER, .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static int start_gen[MAX_THREADS];

static void *worker(void *arg) {
    const int tid = (int)(intptr_t)arg;
    int seen = start_gen[tid]; /* the generation before this worker's first job */
    for (;;) {
        int g = atomic_load_explicit(&pool.gen, memory_order_acquire);
        const uint64_t t0 = __rdtsc();
        while (g == seen) {
            if (__rdtsc() - t0 < SPIN_TICKS) {
                _mm_pause();
            } else {
                pthread_mutex_lock(&pool.mu);
                while ((g = atomic_load(&pool.gen)) == seen) pthread_cond_wait(&pool.cv, &pool.mu);
                pthread_mutex_unlock(&pool.mu);
                break;
            }
            g = atomic_load_explicit(&pool.gen, memory_order_acquire);
        }
        seen = g;
        if (tid < pool.nt) pool.fn(pool.ctx, tid, pool.nt);
        atomic_fetch_sub_explicit(&pool.pending, 1, memory_order_release);
    }
    return NULL;
}

static void parallel(task_fn fn, void *ctx, int nt) {
    if (nt > MAX_THREADS) nt = MAX_THREADS;
    if (nt <= 1) { fn(ctx, 0, 1); return; }
    pthread_mutex_lock(&pool.dispatch);
    while (pool.nworkers < nt - 1) {
        pthread_t th;
        start_gen[pool.nworkers + 1] = atomic_load(&pool.gen);
        if (pthread_create(&th, NULL, worker, (void *)(intptr_t)(pool.nworkers + 1)) != 0) break;
        pthread_detach(th);
        pool.nworkers++;
    }
    if (nt > pool.nworkers + 1) nt = pool.nworkers + 1;
    pool.fn = fn;
    pool.ctx = ctx;
    pool.nt = nt;
    atomic_store(&pool.pending, pool.nworkers);
    pthread_mutex_lock(&pool.mu);
    atomic_fetch_add_explicit(&pool.gen, 1, memory_order_release);
    pthread_cond_broadcast(&pool.cv);
    pthread_mutex_unlock(&pool.mu);
    fn(ctx, 0, nt);
    for (long spin = 0; atomic_load_explicit(&pool.pending, memory_order_acquire) > 0; spin++) {
        if (spin > 4000) sched_yield(); else _mm_pause();
    }
    pthread_mutex_unlock(&pool.dispatch);
}

static void matmul_task(void *ctx, int tid, int nt) {
    const job_t *J = (const job_t *)ctx;
    const int64_t pairs = (J->N + 1) / 2;
    const int64_t p0 = pairs * tid / nt, p1 = pairs * (tid + 1) / nt;
    if (p1 > p0) run_job(J, 2 * p0, 2 * p1 < J->N ? 2 * p1 : J->N);
}

/* y[M, N] = x[M, K] @ W[N, K]^T. Returns 0, -1 (out of memory) or -2 (bad arguments). */
int ck_matmul(int type, const uint8_t *W, int64_t row_bytes, const float *x, float *y, int64_t M, int64_t N,
              int64_t K, int nthreads) {
    if (type <= T_F32 || type >= T_COUNT || M < 0 || N < 0 || K <= 0 || K % BLOCK[type] || K % 32 ||
        row_bytes != K / BLOCK[type] * BYTES[type])
        return -2;
    if (M == 0 || N == 0) return 0;
    job_t J = {type, W, row_bytes, M, N, K, x, &xbuf, y};
    if (type != T_F16 && type != T_BF16 && prepare_x(x, M, K, type >= T_Q4_K) != 0) return -1;
    int64_t pairs = (N + 1) / 2;
    int nt = nthreads < 1 ? 1 : nthreads;
    if (nt > pairs) nt = (int)pairs;
    parallel(matmul_task, &J, nt);
    return 0;
}

/* ---- dequantization (embedding rows; the same arithmetic as gguf-py's, so the results are identical) ------- */

AI void dequant_row(int T, const uint8_t *r, int64_t K, float *o) {
    const int64_t nb = K / BLOCK[T];
    for (int64_t b = 0; b < nb; b++, r += BYTES[T]) {
        float *ob = o + b * BLOCK[T];
        if (T == T_F32) { memcpy(ob, r, 4); continue; }
        if (T == T_F16) { *ob = h2f(r); continue; }
        if (T == T_BF16) {
            uint32_t u = (uint32_t)(r[0] | (r[1] << 8)) << 16;
            memcpy(ob, &u, 4);
            continue;
        }
        if (T < T_Q4_K) {
            float d, m;
            uint8_t q[32];
            __m256i v = T == T_Q8_0 ? _mm256_setzero_si256() : unpack32(T, r, &d, &m);
            _mm256_storeu_si256((__m256i *)q, v);
            d = h2f(r);
            for (int j = 0; j < 32; j++) {
                switch (T) {
                case T_Q4_0: ob[j] = d * (float)((int)q[j] - 8); break;
                case T_Q5_0: ob[j] = d * (float)((int)q[j] - 16); break;
                case T_Q4_1: case T_Q5_1: ob[j] = d * (float)q[j] + h2f(r + 2); break;
                default: ob[j] = (float)((const int8_t *)(r + 2))[j] * d; break;
                }
            }
            continue;
        }
        if (T == T_Q6_K) {
            const float d = h2f(r + 208);
            const int8_t *sc = (const int8_t *)(r + 192);
            for (int sb = 0; sb < 8; sb++) {
                uint8_t q[32];
                _mm256_storeu_si256((__m256i *)q, unpackK(T, r, sb));
                for (int j = 0; j < 32; j++)
                    ob[sb * 32 + j] = (d * (float)sc[2 * sb + j / 16]) * (float)((int)q[j] - 32);
            }
            continue;
        }
        uint8_t sc[8], mn[8];
        const float d = h2f(r), dmin = h2f(r + 2);
        k4_scales(r + 4, sc, mn);
        for (int sb = 0; sb < 8; sb++) {
            uint8_t q[32];
            _mm256_storeu_si256((__m256i *)q, unpackK(T, r, sb));
            const float ds = d * (float)sc[sb], dm = dmin * (float)mn[sb];
            for (int j = 0; j < 32; j++) ob[sb * 32 + j] = ds * (float)q[j] - dm;
        }
    }
}

/* out[i, :] = row rows[i] of W, as float32 */
int ck_dequant_rows(int type, const uint8_t *W, int64_t row_bytes, const int64_t *rows, int64_t nrows, int64_t N,
                    int64_t K, float *out) {
    if (type < 0 || type >= T_COUNT || K <= 0 || K % BLOCK[type] || row_bytes != K / BLOCK[type] * BYTES[type])
        return -2;
    for (int64_t i = 0; i < nrows; i++) {
        if (rows[i] < 0 || rows[i] >= N) return -2;
        const uint8_t *r = W + rows[i] * row_bytes;
        switch (type) {  /* constant type per call, so each case is compiled on its own */
        case T_F32: dequant_row(T_F32, r, K, out + i * K); break;
        case T_F16: dequant_row(T_F16, r, K, out + i * K); break;
        case T_BF16: dequant_row(T_BF16, r, K, out + i * K); break;
        case T_Q4_0: dequant_row(T_Q4_0, r, K, out + i * K); break;
        case T_Q4_1: dequant_row(T_Q4_1, r, K, out + i * K); break;
        case T_Q5_0: dequant_row(T_Q5_0, r, K, out + i * K); break;
        case T_Q5_1: dequant_row(T_Q5_1, r, K, out + i * K); break;
        case T_Q8_0: dequant_row(T_Q8_0, r, K, out + i * K); break;
        case T_Q4_K: dequant_row(T_Q4_K, r, K, out + i * K); break;
        case T_Q5_K: dequant_row(T_Q5_K, r, K, out + i * K); break;
        default: dequant_row(T_Q6_K, r, K, out + i * K); break;
        }
    }
    return 0;
}
