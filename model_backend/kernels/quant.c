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
#include <math.h>

#define AI static inline __attribute__((always_inline))
#define PRAGMA(x) _Pragma(#x)
#define UNROLL(n) PRAGMA(GCC unroll n)
#ifndef SB_UNROLL
#define SB_UNROLL 8
#endif

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
    int16_t *bs32;  /* [M, K / 32] sum of q per 32 */
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

static int alloc_x(int64_t M, int64_t K) {
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
    return 0;
}

/* activation rows [m0, m1) into X (rows are independent, so threads may take parts) */
static void quantize_x(xq_t *X, const float *x, int64_t m0, int64_t m1, int64_t K, int kquant) {
    for (int64_t m = m0; m < m1; m++) {
        const float *xr = x + m * K;
        int8_t *qr = X->q + m * K;
        if (!kquant) {
            for (int64_t b = 0; b < K / 32; b++) {
                const float *xb = xr + b * 32;
                float mx = amax_n(xb, 32);
                __m256i i[4];
                __m256 inv = _mm256_set1_ps(mx > 0.0f ? 127.0f / mx : 0.0f);
                _mm256_storeu_si256((__m256i *)(qr + b * 32), round32(xb, inv, i));
                const int isum = hsum_i32x8(_mm256_add_epi32(_mm256_add_epi32(i[0], i[1]),
                                                             _mm256_add_epi32(i[2], i[3])));
                X->dx[m * (K / 32) + b] = mx / 127.0f;
                X->xs[m * (K / 32) + b] = (mx / 127.0f) * (float)isum;
                X->bs32[m * (K / 32) + b] = (int16_t)isum;
            }
        } else {
            for (int64_t s = 0; s < K / 256; s++) {
                const float *xs = xr + s * 256;
                float mx = amax_n(xs, 256);
                __m256 inv = _mm256_set1_ps(mx > 0.0f ? 127.0f / mx : 0.0f);
                X->dx[m * (K / 256) + s] = mx / 127.0f;
                for (int b = 0; b < 8; b++) {
                    __m256i i[4];
                    _mm256_storeu_si256((__m256i *)(qr + s * 256 + b * 32), round32(xs + b * 32, inv, i));
                    int s0 = hsum_i32x8(_mm256_add_epi32(i[0], i[1])), s1 = hsum_i32x8(_mm256_add_epi32(i[2], i[3]));
                    X->bs16[m * (K / 16) + s * 16 + 2 * b] = (int16_t)s0;
                    X->bs16[m * (K / 16) + s * 16 + 2 * b + 1] = (int16_t)s1;
                    X->bs32[m * (K / 32) + s * 8 + b] = (int16_t)(s0 + s1);
                }
            }
        }
    }
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

/* ---- tiles of 8 (weight row, activation row) pairs ---------------------------------------------------------------
 * RW weight rows x RX activation rows, RW * RX = 8 (8x1 for decode steps, 2x4 for prompts). Pair k = j * RW + i
 * (activation row j, weight row i). Each pair's integer dot product is a vector of 8 int32 partial sums; the 8
 * pairs' vectors are reduced together (horizontal adds) into one vector with one lane per pair, which is then
 * converted and scaled once: the float work per block is shared by the 8 pairs. */

typedef struct {
    int type;
    const uint8_t *W;
    int64_t row_bytes, M, N, K;
    const float *x;
    const xq_t *X;
    float *y;
    const float *bias; /* [N] or NULL */
} job_t;

AI __m256i reduce8(const __m256i p[8]) {
    __m256i u0 = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
    __m256i u1 = _mm256_hadd_epi32(_mm256_hadd_epi32(p[4], p[5]), _mm256_hadd_epi32(p[6], p[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20), _mm256_permute2x128_si256(u0, u1, 0x31));
}

AI __m256 reduce8_ps(const __m256 p[8]) {
    __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(p[0], p[1]), _mm256_hadd_ps(p[2], p[3]));
    __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(p[4], p[5]), _mm256_hadd_ps(p[6], p[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* the sum of v's lanes in reduce8_ps's order, so a row computed alone equals the same row in a tile */
AI float hsum_tile(__m256 v) {
    __m256 h = _mm256_hadd_ps(v, v);
    h = _mm256_hadd_ps(h, h);
    return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
}

/* lane k = a[k % RW] (a weight row's value) or b[k / RW] (an activation row's) */
AI __m256 by_row(int RW, const float *a) {
    float t[8];
    for (int k = 0; k < 8; k++) t[k] = a[k % RW];
    return _mm256_setr_ps(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]);
}

AI __m256 by_x(int RW, const float *b) {
    float t[8];
    for (int k = 0; k < 8; k++) t[k] = b[k / RW < 4 ? k / RW : 0];  /* lanes past RW * RX are unused */
    return _mm256_setr_ps(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]);
}

/* Q4_K / Q5_K: the 8 six-bit scales and 8 mins of 12 packed bytes, as uint8 in the low and high 8 bytes */
AI __m128i k4_scales_v(const uint8_t *s) {
    uint32_t u0, u1, u2;
    memcpy(&u0, s, 4); memcpy(&u1, s + 4, 4); memcpy(&u2, s + 8, 4);
    const uint32_t m6 = 0x3f3f3f3fu, m4 = 0x0f0f0f0fu, m2 = 0x03030303u;
    uint32_t sc_lo = u0 & m6, mn_lo = u1 & m6;
    uint32_t sc_hi = (u2 & m4) | (((u0 >> 6) & m2) << 4), mn_hi = ((u2 >> 4) & m4) | (((u1 >> 6) & m2) << 4);
    return _mm_set_epi32((int)mn_hi, (int)mn_lo, (int)sc_hi, (int)sc_lo);
}

/* 32-block types: one float accumulator per pair (the scales change every 32 values, so the int32 sums are
 * scaled per block; a per-block horizontal reduction would cost more). Q4_0 / Q5_0's offset (-8 / -16 per quant)
 * is folded into the integer sum; Q4_1 / Q5_1's float min goes to a scalar accumulator per pair. */
AI void tile_32(int T, int RW, int RX, const job_t *J, const uint8_t *const *w, int64_t m, __m256 *out) {
    const int64_t K = J->K, nb = K / 32, bytes = BYTES[T];
    const __m256i ones = _mm256_set1_epi16(1);
    const int8_t *xq = J->X->q + m * K;
    const float *dxr = J->X->dx + m * nb, *xsr = J->X->xs + m * nb;
    const int16_t *isr = J->X->bs32 + m * nb;
    const int off = T == T_Q4_0 ? 8 : T == T_Q5_0 ? 16 : 0;
    __m256 acc[8];
    float macc[8];
    for (int k = 0; k < 8; k++) { acc[k] = _mm256_setzero_ps(); macc[k] = 0.0f; }
    for (int64_t b = 0; b < nb; b++) {
        float d[8], mn[8];
        __m256i q[8], a[8];
        __m256 dv[8];
        for (int i = 0; i < RW; i++) {
            q[i] = unpack32(T, w[i] + b * bytes, &d[i], &mn[i]);
            a[i] = T == T_Q8_0 ? _mm256_sign_epi8(q[i], q[i]) : q[i];
            dv[i] = _mm256_set1_ps(d[i]);
        }
        for (int j = 0; j < RX; j++) {
            __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + j * K + b * 32));
            __m256 dxv = _mm256_set1_ps(dxr[j * nb + b]);
            __m256i ov = _mm256_setzero_si256();
            if (off) ov = _mm256_zextsi128_si256(_mm_cvtsi32_si128(off * isr[j * nb + b]));
            for (int i = 0; i < RW; i++) {
                __m256i xs8 = T == T_Q8_0 ? _mm256_sign_epi8(xv, q[i]) : xv;
                __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(a[i], xs8), ones);
                if (off) p = _mm256_sub_epi32(p, ov);
                acc[j * RW + i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(dv[i], dxv), acc[j * RW + i]);
                if (T == T_Q4_1 || T == T_Q5_1) macc[j * RW + i] += mn[i] * xsr[j * nb + b];
            }
        }
    }
    __m256 r = reduce8_ps(acc);
    if (T == T_Q4_1 || T == T_Q5_1) r = _mm256_add_ps(r, _mm256_loadu_ps(macc));
    *out = r;
}

AI void tile_K(int T, int RW, int RX, const job_t *J, const uint8_t *const *w, int64_t m, __m256 *acc) {
    const int64_t K = J->K, ns = K / 256, bytes = BYTES[T];
    const int8_t *xq = J->X->q + m * K;
    for (int64_t s = 0; s < ns; s++) {
        float d[8], dmin[8], dx[4];
        __m256i sc[8];  /* per row: Q4_K/Q5_K the 8 int16 scales in both 128-bit lanes; Q6_K the 16 int16 scales */
        __m128i mins[8];
        const uint8_t *b[8];
        for (int i = 0; i < RW; i++) {
            b[i] = w[i] + s * bytes;
            if (T == T_Q6_K) {
                d[i] = h2f(b[i] + 208);
                sc[i] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b[i] + 192)));
            } else {
                d[i] = h2f(b[i]);
                dmin[i] = h2f(b[i] + 2);
                __m128i v = k4_scales_v(b[i] + 4);
                sc[i] = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(v));
                mins[i] = _mm_cvtepu8_epi16(_mm_unpackhi_epi64(v, v));
            }
        }
        for (int j = 0; j < RX; j++) dx[j] = J->X->dx[(m + j) * ns + s];
        __m256i iacc[8];
        for (int k = 0; k < 8; k++) iacc[k] = _mm256_setzero_si256();
        UNROLL(SB_UNROLL)
        for (int sb = 0; sb < 8; sb++) {
            __m256i xv[4];  /* loaded once; each weight row's sub-block is unpacked and used at once (few live
                             * registers: the 8 accumulators stay in registers) */
            for (int j = 0; j < RX; j++)
                xv[j] = _mm256_loadu_si256((const __m256i *)(xq + j * K + s * 256 + sb * 32));
            for (int i = 0; i < RW; i++) {
                __m256i q = unpackK(T, b[i], sb), sv;
                if (T == T_Q6_K)  /* lanes 0-7: scale 2sb, lanes 8-15: scale 2sb+1 */
                    sv = _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(sc[i], _mm256_set1_epi32(sb)),
                                             _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1,
                                                              2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3));
                else
                    sv = _mm256_shuffle_epi8(sc[i], _mm256_set1_epi16((short)(((2 * sb + 1) << 8) | (2 * sb))));
                for (int j = 0; j < RX; j++)
                    iacc[j * RW + i] = _mm256_add_epi32(iacc[j * RW + i],
                                                        _mm256_madd_epi16(_mm256_maddubs_epi16(q, xv[j]), sv));
            }
        }
        if (T == T_Q6_K) {  /* the -32 offset of every quant: 32 * sum(scale * sum of x per 16) */
            for (int j = 0; j < RX; j++) {
                __m256i bs = _mm256_loadu_si256((const __m256i *)(J->X->bs16 + (m + j) * (K / 16) + s * 16));
                for (int i = 0; i < RW; i++)
                    iacc[j * RW + i] = _mm256_sub_epi32(iacc[j * RW + i],
                                                        _mm256_slli_epi32(_mm256_madd_epi16(sc[i], bs), 5));
            }
        }
        __m256 dd = _mm256_mul_ps(by_row(RW, d), by_x(RW, dx));
        *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(reduce8(iacc)), dd, *acc);
        if (T != T_Q6_K) {  /* the mins: dmin * sum(min * sum of x per 32) */
            __m256i mp[8];
            for (int k = 0; k < 8; k++) mp[k] = _mm256_setzero_si256();
            for (int j = 0; j < RX; j++) {
                __m128i bs = _mm_loadu_si128((const __m128i *)(J->X->bs32 + (m + j) * (K / 32) + s * 8));
                for (int i = 0; i < RW; i++) mp[j * RW + i] = _mm256_zextsi128_si256(_mm_madd_epi16(mins[i], bs));
            }
            __m256 dm = _mm256_mul_ps(by_row(RW, dmin), by_x(RW, dx));
            *acc = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(reduce8(mp)), dm, *acc);
        }
    }
}

/* F16 / BF16 rows: fp32 FMA on the converted weights */
AI __m256 load_half8(int T, const uint8_t *p) {
    __m128i v = _mm_loadu_si128((const __m128i *)p);
    if (T == T_F16) return _mm256_cvtph_ps(v);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}

AI void tile_F(int T, int RW, int RX, const job_t *J, const uint8_t *const *w, int64_t m, __m256 *out) {
    const int64_t K = J->K;
    const float *x = J->x + m * K;
    __m256 acc[8];
    for (int k = 0; k < 8; k++) acc[k] = _mm256_setzero_ps();
    for (int64_t c = 0; c < K; c += 8) {
        __m256 wv[8];
        for (int i = 0; i < RW; i++) wv[i] = load_half8(T, w[i] + 2 * c);
        for (int j = 0; j < RX; j++) {
            __m256 xv = _mm256_loadu_ps(x + j * K + c);
            for (int i = 0; i < RW; i++) acc[j * RW + i] = _mm256_fmadd_ps(wv[i], xv, acc[j * RW + i]);
        }
    }
    *out = reduce8_ps(acc);
}

/* One weight row against one activation row (llama.cpp's vec_dot shape): the decode steps' rows and the 1-3
 * rows a prompt leaves after its tiles of 4. One accumulator, so nothing spills, and each row's bytes are read
 * once per activation row while they are still in L1. */
AI float dot_32(int T, const job_t *J, const uint8_t *w, int64_t m) {
    const int64_t K = J->K, nb = K / 32, bytes = BYTES[T];
    const __m256i ones = _mm256_set1_epi16(1);
    const int8_t *xq = J->X->q + m * K;
    const float *dx = J->X->dx + m * nb, *xs = J->X->xs + m * nb;
    const int16_t *is = J->X->bs32 + m * nb;
    const int off = T == T_Q4_0 ? 8 : T == T_Q5_0 ? 16 : 0;
    __m256 acc = _mm256_setzero_ps();
    float macc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        float d, mn;
        __m256i q = unpack32(T, w + b * bytes, &d, &mn);
        __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + b * 32));
        __m256i p = T == T_Q8_0 ? _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(xv, q))
                                : _mm256_maddubs_epi16(q, xv);
        p = _mm256_madd_epi16(p, ones);
        if (off) p = _mm256_sub_epi32(p, _mm256_zextsi128_si256(_mm_cvtsi32_si128(off * is[b])));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d * dx[b]), acc);
        if (T == T_Q4_1 || T == T_Q5_1) macc += mn * xs[b];
    }
    return hsum_tile(acc) + macc;
}

AI float dot_K(int T, const job_t *J, const uint8_t *w, int64_t m) {
    const int64_t K = J->K, ns = K / 256, bytes = BYTES[T];
    const int8_t *xq = J->X->q + m * K;
    float acc = 0.0f;
    for (int64_t s = 0; s < ns; s++) {
        const uint8_t *b = w + s * bytes;
        const float dx = J->X->dx[m * ns + s];
        __m256i sc, iacc = _mm256_setzero_si256();
        __m128i mins = _mm_setzero_si128();
        if (T == T_Q6_K) {
            sc = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 192)));
        } else {
            __m128i v = k4_scales_v(b + 4);
            sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(v));
            mins = _mm_cvtepu8_epi16(_mm_unpackhi_epi64(v, v));
        }
        for (int sb = 0; sb < 8; sb++) {
            __m256i q = unpackK(T, b, sb), sv;
            if (T == T_Q6_K)
                sv = _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(sc, _mm256_set1_epi32(sb)),
                                         _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1,
                                                          2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3));
            else
                sv = _mm256_shuffle_epi8(sc, _mm256_set1_epi16((short)(((2 * sb + 1) << 8) | (2 * sb))));
            __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + s * 256 + sb * 32));
            iacc = _mm256_add_epi32(iacc, _mm256_madd_epi16(_mm256_maddubs_epi16(q, xv), sv));
        }
        /* the 8 lanes are summed as integers (exact) and scaled once, as tile_K does per pair */
        if (T == T_Q6_K) {
            __m256i bs = _mm256_loadu_si256((const __m256i *)(J->X->bs16 + m * (K / 16) + s * 16));
            iacc = _mm256_sub_epi32(iacc, _mm256_slli_epi32(_mm256_madd_epi16(sc, bs), 5));
            acc = fmaf((float)hsum_i32x8(iacc), h2f(b + 208) * dx, acc);
        } else {
            __m128i bs = _mm_loadu_si128((const __m128i *)(J->X->bs32 + m * (K / 32) + s * 8));
            acc = fmaf((float)hsum_i32x8(iacc), h2f(b) * dx, acc);
            acc = fmaf(-(float)hsum_i32x4(_mm_madd_epi16(mins, bs)), h2f(b + 2) * dx, acc);
        }
    }
    return acc;
}

/* F16 / BF16: 4 weight rows at once, one accumulator each (4 independent FMA chains, each row still summed in
 * tile_F's order) */
AI void dot_F4(int T, const job_t *J, int64_t n, int64_t m) {
    const float *x = J->x + m * J->K;
    const uint8_t *w[4];
    for (int i = 0; i < 4; i++) w[i] = J->W + (n + i < J->N ? n + i : J->N - 1) * J->row_bytes;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t c = 0; c < J->K; c += 8) {
        __m256 xv = _mm256_loadu_ps(x + c);
        for (int i = 0; i < 4; i++) acc[i] = _mm256_fmadd_ps(load_half8(T, w[i] + 2 * c), xv, acc[i]);
    }
    for (int i = 0; i < 4 && n + i < J->N; i++) J->y[m * J->N + n + i] = hsum_tile(acc[i]);
}

AI void rows_dot(int T, const job_t *J, int64_t n0, int64_t n1, int64_t m0) {
    if (T == T_F16 || T == T_BF16) {
        for (int64_t n = n0; n < n1; n += 4)
            for (int64_t m = m0; m < J->M; m++) dot_F4(T, J, n, m);
        return;
    }
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *w = J->W + n * J->row_bytes;
        for (int64_t m = m0; m < J->M; m++)
            J->y[m * J->N + n] = T >= T_Q4_K ? dot_K(T, J, w, m) : dot_32(T, J, w, m);
    }
}

/* weight rows n .. n + RW - 1 (past N: the last row again, not stored) x activation rows m .. m + RX - 1 */
AI void tile(int T, int RW, int RX, const job_t *J, int64_t n, int64_t m) {
    const uint8_t *w[8];
    for (int i = 0; i < RW; i++) w[i] = J->W + (n + i < J->N ? n + i : J->N - 1) * J->row_bytes;
    __m256 acc = _mm256_setzero_ps();
    if (T == T_F16 || T == T_BF16) tile_F(T, RW, RX, J, w, m, &acc);
    else if (T >= T_Q4_K) tile_K(T, RW, RX, J, w, m, &acc);
    else tile_32(T, RW, RX, J, w, m, &acc);
    float out[8];
    _mm256_storeu_ps(out, acc);
    const int64_t nv = J->N - n < RW ? J->N - n : RW;
    for (int j = 0; j < RX; j++) memcpy(J->y + (m + j) * J->N + n, out + j * RW, sizeof(float) * nv);
}

/* ---- Q4_0 / Q4_1 / Q8_0 interleaved 8 rows at a time ("x8", made by ck_interleave) -----------------------------
 * Rows 8g .. 8g+7 (padded with zero rows), block b: one record of the 8 blocks' bytes: their 8 fp16 d, their 8
 * fp16 m (Q4_1), then the quants in chunks of 32 bytes that hold 4 bytes of each row in turn (row i at bytes
 * 4i..4i+3 of a chunk). One vpmaddubsw of a chunk with 4 activation bytes broadcast gives the 8 rows' partial
 * sums side by side: a block's 8 integer sums come out as one vector (lane i = row i) without horizontal adds,
 * and the float work (d * dx, the min term) is done once for 8 rows. Per lane it is one row's arithmetic,
 *   acc = fma(isum_b, d_b * dx_b, acc), macc = fma(m_b, xs_b, macc) (Q4_1), y = acc + macc,
 * so a row's bits do not depend on the other activation rows or the threads. */

#define X8 16 /* type flag: the weight is in the x8 layout */

static int x8_type(int T) { return T == T_Q4_0 || T == T_Q4_1 || T == T_Q8_0; }
AI int64_t x8_scale_bytes(int T) { return T == T_Q4_1 ? 4 : 2; }

AI __m256i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

/* one record's quants, ready for vpmaddubsw: Q4_0 / Q4_1 low nibbles in w[0..3] and high nibbles in w[4..7];
 * Q8_0 |q| in w[0..7] (the signs are applied to the activations, from the record again) */
AI void rec_unpack(int T, const uint8_t *qs, __m256i w[8]) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int c = 0; c < (T == T_Q8_0 ? 8 : 4); c++) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
        if (T == T_Q8_0) {
            w[c] = _mm256_abs_epi8(v);
        } else {
            w[c] = _mm256_and_si256(v, m4);
            w[4 + c] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        }
    }
}

/* the record's 8 integer block sums with one activation block (lane i = row i) */
AI __m256i rec_dot(int T, const __m256i w[8], const uint8_t *qs, const int8_t *x) {
    const __m256i ones = _mm256_set1_epi16(1);
    if (T == T_Q8_0) {
        __m256i s = _mm256_setzero_si256();
        for (int c = 0; c < 8; c++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
            __m256i p = _mm256_maddubs_epi16(w[c], _mm256_sign_epi8(bcast4(x + 4 * c), v));
            s = _mm256_add_epi32(s, _mm256_madd_epi16(p, ones));
        }
        return s;
    }
    __m256i s16 = _mm256_setzero_si256(); /* |sum| <= 8 * 2 * 15 * 127 < 2^15: int16 is exact */
    for (int c = 0; c < 4; c++) {
        s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(w[c], bcast4(x + 4 * c)));
        s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(w[4 + c], bcast4(x + 16 + 4 * c)));
    }
    return _mm256_madd_epi16(s16, ones);
}

/* rows 8g .. 8g+7 (those past N are not stored) x activation rows m .. m + RX - 1 */
AI void tile_x8(int T, int RX, const job_t *J, int64_t g, int64_t m) {
    const int64_t K = J->K, nb = K / 32, rec = 8 * BYTES[T], n = 8 * g;
    const uint8_t *r = J->W + g * nb * rec;
    const int8_t *xq = J->X->q + m * K;
    const float *dxr = J->X->dx + m * nb, *xsr = J->X->xs + m * nb;
    const int16_t *isr = J->X->bs32 + m * nb;
    __m256 acc[4], macc[4];
    for (int j = 0; j < RX; j++) acc[j] = macc[j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, r += rec) {
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)r));
        const __m256 mn = T == T_Q4_1 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(r + 16))) : d;
        const uint8_t *qs = r + 8 * x8_scale_bytes(T);
        __m256i w[8];
        rec_unpack(T, qs, w);  /* once for the RX activation rows */
        for (int j = 0; j < RX; j++) {
            __m256i s = rec_dot(T, w, qs, xq + j * K + b * 32);
            if (T == T_Q4_0) s = _mm256_sub_epi32(s, _mm256_set1_epi32(8 * isr[j * nb + b]));
            acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(d, _mm256_set1_ps(dxr[j * nb + b])), acc[j]);
            if (T == T_Q4_1) macc[j] = _mm256_fmadd_ps(mn, _mm256_set1_ps(xsr[j * nb + b]), macc[j]);
        }
    }
    const int64_t nv = J->N - n < 8 ? J->N - n : 8;
    for (int j = 0; j < RX; j++) {
        float out[8];
        _mm256_storeu_ps(out, T == T_Q4_1 ? _mm256_add_ps(acc[j], macc[j]) : acc[j]);
        memcpy(J->y + (m + j) * J->N + n, out, sizeof(float) * nv);
    }
}

/* one thread's share of an x8 weight: rows [n0, n1) (whole groups) x all M activation rows, taken in chunks
 * whose int8 copy stays in L2 (~256 KiB) while the weights stream past */
AI void run_x8(int T, const job_t *J, int64_t n0, int64_t n1) {
    int64_t mc = (256 * 1024) / J->K;
    mc = mc < 4 ? 4 : mc / 4 * 4;
    for (int64_t mb = 0; mb < J->M; mb += mc) {
        const int64_t me = mb + mc < J->M ? mb + mc : J->M;
        for (int64_t g = n0 / 8; g < (n1 + 7) / 8; g++)
            for (int64_t m = mb; m < me; m += 4) {
                switch (me - m < 4 ? me - m : 4) {
                case 1: tile_x8(T, 1, J, g, m); break;
                case 2: tile_x8(T, 2, J, g, m); break;
                case 3: tile_x8(T, 3, J, g, m); break;
                default: tile_x8(T, 4, J, g, m); break;
                }
            }
    }
}

/* row n of an x8 weight back in the file's layout (row_bytes bytes) */
static void x8_row(int T, const uint8_t *W, int64_t n, int64_t K, uint8_t *out) {
    const int64_t nb = K / 32, bytes = BYTES[T], sb = x8_scale_bytes(T), i = n % 8;
    const uint8_t *r = W + (n / 8) * nb * 8 * bytes;
    for (int64_t b = 0; b < nb; b++, r += 8 * bytes, out += bytes) {
        memcpy(out, r + 2 * i, 2);
        if (sb == 4) memcpy(out + 2, r + 16 + 2 * i, 2);
        for (int64_t c = 0; c < (bytes - sb) / 4; c++) memcpy(out + sb + 4 * c, r + 8 * sb + 32 * c + 4 * i, 4);
    }
}

/* dst (ceil(N / 8) * 8 * row_bytes bytes) = the x8 layout of W [N rows as stored], padded with zero rows;
 * returns 0 or -2 */
int ck_interleave(int type, const uint8_t *W, int64_t row_bytes, int64_t N, int64_t K, uint8_t *dst) {
    if (type < 0 || type >= T_COUNT || !x8_type(type) || K <= 0 || K % 32 || N < 0 ||
        row_bytes != K / 32 * BYTES[type])
        return -2;
    const int64_t nb = K / 32, bytes = BYTES[type], sb = x8_scale_bytes(type);
    if (N % 8) memset(dst + N / 8 * 8 * row_bytes, 0, (size_t)(8 * row_bytes)); /* the last group's padding */
    for (int64_t n = 0; n < N; n++) {
        uint8_t *r = dst + (n / 8) * nb * 8 * bytes;
        const uint8_t *s = W + n * row_bytes;
        const int64_t i = n % 8;
        for (int64_t b = 0; b < nb; b++, r += 8 * bytes, s += bytes) {
            memcpy(r + 2 * i, s, 2);
            if (sb == 4) memcpy(r + 16 + 2 * i, s + 2, 2);
            for (int64_t c = 0; c < (bytes - sb) / 4; c++) memcpy(r + 8 * sb + 32 * c + 4 * i, s + sb + 4 * c, 4);
        }
    }
    return 0;
}

#ifndef RW_K
#define RW_K 2
#endif
#ifndef RW_32
#define RW_32 2
#endif
#ifndef RW_F
#define RW_F 2
#endif

/* one thread's share: weight rows [n0, n1) (n0 a multiple of 8) against all M activation rows */
AI void run_rows(int T, const job_t *J, int64_t n0, int64_t n1) {
    /* activation rows in chunks of 4 whose int8 copy stays in L2 (~256 KiB) while the weight rows stream past;
     * the 1-3 rows left over (and decode steps) go row by row */
    int64_t mc = (256 * 1024) / J->K;
    mc = mc < 4 ? 4 : mc / 4 * 4;
    const int64_t m4 = J->M / 4 * 4;
    for (int64_t mb = 0; mb < m4; mb += mc) {
        const int64_t me = mb + mc < m4 ? mb + mc : m4;
        const int rw = T >= T_Q4_K ? RW_K : T == T_F16 || T == T_BF16 ? RW_F : RW_32;
        for (int64_t n = n0; n < n1; n += rw)
            for (int64_t m = mb; m < me; m += 4) tile(T, rw, 4, J, n, m);
    }
    if (m4 < J->M) rows_dot(T, J, n0, n1, m4);
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
    case X8 | T_Q4_0: run_x8(T_Q4_0, J, n0, n1); break;
    case X8 | T_Q4_1: run_x8(T_Q4_1, J, n0, n1); break;
    case X8 | T_Q8_0: run_x8(T_Q8_0, J, n0, n1); break;
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

/* a forked child has none of the parent's workers: start from an empty pool there */
static void pool_after_fork(void) {
    pthread_mutex_init(&pool.dispatch, NULL);
    pthread_mutex_init(&pool.mu, NULL);
    pthread_cond_init(&pool.cv, NULL);
    pool.nworkers = 0;
}

static pthread_once_t pool_once = PTHREAD_ONCE_INIT;
static void pool_init(void) { pthread_atfork(NULL, NULL, pool_after_fork); }

static void parallel(task_fn fn, void *ctx, int nt) {
    if (nt > MAX_THREADS) nt = MAX_THREADS;
    if (nt <= 1) { fn(ctx, 0, 1); return; }
    pthread_once(&pool_once, pool_init);
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

/* the pool for the other C files (attention.c's prompt rows) */
void ck_parallel(task_fn fn, void *ctx, int nt) { parallel(fn, ctx, nt); }

static void matmul_task(void *ctx, int tid, int nt) {
    const job_t *J = (const job_t *)ctx;
    const int64_t groups = (J->N + 7) / 8;  /* threads take whole groups of 8 weight rows */
    const int64_t g0 = groups * tid / nt, g1 = groups * (tid + 1) / nt;
    if (g1 <= g0) return;
    const int64_t n0 = 8 * g0, n1 = 8 * g1 < J->N ? 8 * g1 : J->N;
    run_job(J, n0, n1);
    if (J->bias)
        for (int64_t m = 0; m < J->M; m++)
            for (int64_t n = n0; n < n1; n++) J->y[m * J->N + n] += J->bias[n];
}

typedef struct {
    xq_t *X;
    const float *x;
    int64_t M, K;
    int kquant;
} qjob_t;

static void quantize_task(void *ctx, int tid, int nt) {
    const qjob_t *Q = (const qjob_t *)ctx;
    quantize_x(Q->X, Q->x, Q->M * tid / nt, Q->M * (tid + 1) / nt, Q->K, Q->kquant);
}

/* y[M, N] = x[M, K] @ W[N, K]^T (+ bias[N] when not NULL).
 * Returns 0, -1 (out of memory) or -2 (bad arguments). */
int ck_matmul(int type, const uint8_t *W, int64_t row_bytes, const float *x, float *y, int64_t M, int64_t N,
              int64_t K, int nthreads, const float *bias) {
    const int T = type & ~X8; /* type | X8: W is in the x8 layout (Q4_0, Q4_1, Q8_0) */
    if (T <= T_F32 || T >= T_COUNT || (type & X8 && !x8_type(T)) || M < 0 || N < 0 || K <= 0 || K % BLOCK[T] ||
        K % 32 || row_bytes != K / BLOCK[T] * BYTES[T])
        return -2;
    if (M == 0 || N == 0) return 0;
    job_t J = {type, W, row_bytes, M, N, K, x, &xbuf, y, bias};
    const int64_t groups = (N + 7) / 8;
    int nt = nthreads < 1 ? 1 : nthreads;
    if (T != T_F16 && T != T_BF16) {
        if (alloc_x(M, K) != 0) return -1;
        qjob_t Q = {&xbuf, x, M, K, T >= T_Q4_K};
        parallel(quantize_task, &Q, M >= 16 ? nt : 1);  /* a prompt's rows are rounded in parallel too */
    }
    if (nt > groups) nt = (int)groups;
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
    const int x8 = type & X8; /* W in the x8 layout: each row is put back in the file's layout first */
    type &= ~X8;
    if (type < 0 || type >= T_COUNT || (x8 && !x8_type(type)) || K <= 0 || K % BLOCK[type] ||
        row_bytes != K / BLOCK[type] * BYTES[type])
        return -2;
    uint8_t *tmp = x8 ? malloc((size_t)row_bytes) : NULL;
    if (x8 && !tmp) return -1;
    for (int64_t i = 0; i < nrows; i++) {
        if (rows[i] < 0 || rows[i] >= N) { free(tmp); return -2; }
        const uint8_t *r = W + rows[i] * row_bytes;
        if (x8) { x8_row(type, W, rows[i], K, tmp); r = tmp; }
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
    free(tmp);
    return 0;
}
