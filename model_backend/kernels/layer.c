/* A llama / qwen2 decoder step on the CPU kernels (RMSNorm, q|k|v, RoPE + attention, SwiGLU), called from
 * model_backend/cpu_kernels.py (`LayerStack`): one C call runs every layer of a one-row decode step, instead of
 * ~15 torch ops and Python calls per layer. The prompt path (model.py) calls the same row functions
 * (ck_rmsnorm, ck_swiglu, ck_matmul, ck_attention_rows), so a row gets the same bits either way.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "simd.h"

int ck_matmul(int type, const uint8_t *W, int64_t row_bytes, const float *x, float *y, int64_t M, int64_t N,
              int64_t K, int nthreads, const float *bias);
int ck_attention_rows(int half, float *qkv, const float *rope, void *k, void *v, float *out, int64_t nh,
                      int64_t nkv, int64_t hd, int64_t p0, int64_t t, int64_t stride_h, float scale, int nthreads);

/* x / sqrt(mean(x^2) + eps) * w for one row (D % 8 == 0; squares summed in 8 lanes, then hsum) */
static void rmsnorm_row(const float *x, const float *w, float eps, int64_t D, float *o) {
    __m256 s = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; d += 8) {
        __m256 v = _mm256_loadu_ps(x + d);
        s = _mm256_fmadd_ps(v, v, s);
    }
    const __m256 r = _mm256_set1_ps(1.0f / sqrtf(hsum(s) / (float)D + eps));
    for (int64_t d = 0; d < D; d += 8)
        _mm256_storeu_ps(o + d, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + d), r), _mm256_loadu_ps(w + d)));
}

/* h = gate | up [2I] -> silu(gate) * up [I] (I % 8 == 0) */
static void swiglu_row(const float *h, int64_t I, float *o) {
    const __m256 one = _mm256_set1_ps(1.0f), neg = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < I; i += 8) {
        __m256 g = _mm256_loadu_ps(h + i);
        __m256 sg = _mm256_div_ps(g, _mm256_add_ps(one, exp8(_mm256_xor_ps(g, neg))));
        _mm256_storeu_ps(o + i, _mm256_mul_ps(sg, _mm256_loadu_ps(h + I + i)));
    }
}

int ck_rmsnorm(const float *x, const float *w, float eps, int64_t M, int64_t D, float *out) {
    if (D % 8) return -2;
    for (int64_t m = 0; m < M; m++) rmsnorm_row(x + m * D, w, eps, D, out + m * D);
    return 0;
}

int ck_swiglu(const float *h, int64_t M, int64_t I, float *out) {
    if (I % 8) return -2;
    for (int64_t m = 0; m < M; m++) swiglu_row(h + m * 2 * I, I, out + m * I);
    return 0;
}

/* a Linear as the C side sees it: up to 3 packed parts (different GGUF types) whose outputs are concatenated */
typedef struct {
    int64_t type; /* cpu_kernels type id (| X8) */
    const uint8_t *W;
    int64_t row_bytes, N;
    const float *bias; /* [N] or NULL */
} ck_mat_t;

typedef struct {
    int64_t n;
    ck_mat_t m[3];
} ck_lin_t;

typedef struct {
    const float *attn_norm, *ffn_norm;
    ck_lin_t qkv, wo, w_in, w_out;
} ck_layer_t;

typedef struct {
    int64_t n_layers, dim, n_heads, n_kv, head_dim, inter;
    float eps, scale;
    const ck_layer_t *layers;
} ck_stack_t;

static int lin(const ck_lin_t *L, const float *x, int64_t K, float *y, int nt) {
    for (int64_t p = 0; p < L->n; p++) {
        const ck_mat_t *m = &L->m[p];
        int rc = ck_matmul((int)m->type, m->W, m->row_bytes, x, y, 1, m->N, K, nt, m->bias);
        if (rc) return rc;
        y += m->N;
    }
    return 0;
}

static __thread float *scratch;
static __thread size_t scratch_cap;

/* One row through every layer: x [dim] (the embedding row) becomes the last layer's output. k / v: this
 * sequence's slice of layer 0's KV cache (fp32, or fp16 when half), layer_stride elements between layers and
 * head_stride between KV heads; rope: the cos/sin pairs of position pos. Returns 0, -1 (memory) or -2. */
int ck_decode_layers(const ck_stack_t *S, float *x, const float *rope, void *k, void *v, int half,
                     int64_t layer_stride, int64_t head_stride, int64_t pos, int nthreads) {
    const int64_t D = S->dim, hd = S->head_dim, nh = S->n_heads, nkv = S->n_kv, I = S->inter;
    const int64_t wq = (nh + 2 * nkv) * hd;
    const size_t need = (size_t)(2 * D + wq + nh * hd + 3 * I + 64);
    if (D % 8 || I % 8) return -2;
    if (need > scratch_cap) {
        free(scratch);
        scratch = malloc(need * sizeof(float));
        scratch_cap = scratch ? need : 0;
        if (!scratch) return -1;
    }
    float *h = scratch, *t = h + D, *qkv = t + D, *att = qkv + wq, *g = att + nh * hd, *a = g + 2 * I;
    const size_t es = half ? 2 : 4;
    int rc = 0;
    for (int64_t l = 0; l < S->n_layers && !rc; l++) {
        const ck_layer_t *L = &S->layers[l];
        char *kl = (char *)k + l * layer_stride * es, *vl = (char *)v + l * layer_stride * es;
        rmsnorm_row(x, L->attn_norm, S->eps, D, h);
        if ((rc = lin(&L->qkv, h, D, qkv, nthreads))) break;
        rc = ck_attention_rows(half, qkv, rope, kl, vl, att, nh, nkv, hd, pos, 1, head_stride, S->scale, 1);
        if (rc || (rc = lin(&L->wo, att, nh * hd, t, nthreads))) break;
        for (int64_t d = 0; d < D; d++) x[d] += t[d];
        rmsnorm_row(x, L->ffn_norm, S->eps, D, h);
        if ((rc = lin(&L->w_in, h, D, g, nthreads))) break;
        swiglu_row(g, I, a);
        if ((rc = lin(&L->w_out, a, I, t, nthreads))) break;
        for (int64_t d = 0; d < D; d++) x[d] += t[d];
    }
    return rc;
}
