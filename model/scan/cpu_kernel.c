/* Fast CPU selective scan (forward and backward), vectorised across channels.
 *
 * Each work item owns a block of W consecutive channels d and runs the recurrence over the
 * sequence for them: the W lanes are independent, B_l[n] and C_l[n] are shared scalars
 * (broadcast), so the hot loop is straight-line vector code with no horizontal sums. The
 * per-channel tensors (u, delta, z, out) are read with the channel as the contiguous axis,
 * which is the layout the model produces ((batch, L, D) memory seen as (batch, D, L)).
 *
 * Lanes are GCC/Clang vector types (vf: W floats), so accumulators live in registers and
 * the code is one AVX-512 or two AVX2 instructions per operation, whatever the compiler's
 * auto-vectoriser would decide. The state stays in fp32. exp is a Cody-Waite range
 * reduction with a degree-6 polynomial (about 2 ulp); softplus uses
 * log1p(t) = 2 atanh(t / (2 + t)) as a short odd series. OpenMP spreads the work items over
 * threads; the model/scan/reference.py loop is the semantic truth this is tested against.
 */
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define W 16     /* channel lanes per block: one AVX-512 vector, two AVX2 vectors */
#define MAXN 64  /* largest d_state supported */

typedef int64_t i64;

typedef float vf __attribute__((vector_size(W * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(W * sizeof(int32_t))));

typedef struct {
    i64 batch, L, D, N;
    const float *u; i64 u_sb, u_sl;          /* channel stride is 1 */
    const float *delta; i64 dl_sb, dl_sl;
    const float *A;                           /* (N, D) contiguous: A transposed */
    const float *Bm; i64 B_sb, B_sl, B_sn;
    const float *Cm; i64 C_sb, C_sl, C_sn;
    const float *Dv;                          /* (D,) or NULL */
    const float *z; i64 z_sb, z_sl;           /* or NULL */
    const float *dbias;                       /* (D,) or NULL */
    i64 softplus;
    float *out; i64 o_sb, o_sl;               /* forward output */
    float *last_state;                        /* (batch, D, N) or NULL */
    const i64 *order;                         /* forward only: step i visits token order[i]; NULL: i */
    i64 accumulate;                           /* forward only: out += result instead of out = */
    /* backward only */
    const float *dout; i64 g_sb, g_sl;
    float *du, *ddelta, *dz;                  /* (batch, L, D) contiguous; dz may be NULL */
    float *dA;                                /* (N, D) */
    float *dD, *ddbias;                       /* (D,) or NULL */
    float *dB, *dC;                           /* per thread: (threads, batch, L, N), summed by the caller */
    float *scratch;                           /* per thread: (threads, L * (N + 2) * W) floats */
} ScanArgs;

static inline vf splat(float x) { return (vf){0} + x; }
static inline vf select(vi mask, vf a, vf b) { return (vf)((mask & (vi)a) | (~mask & (vi)b)); }

/* Lane-wise max and min. GCC lowers a comparison of two 16-float vectors lane by lane (scalar
 * compares and cmovs) when the target has no 512-bit vectors: on an AVX2 machine (AMD EPYC) the
 * comparisons in exp and softplus made the whole scan 8x slower. AVX2 gets the 8-lane
 * instructions on each half instead; other targets keep the comparison. */
#if defined(__AVX2__) && !defined(__AVX512F__) && W == 16
#include <immintrin.h>
typedef union { vf v; __m256 half[2]; } vf_halves;
static inline vf vmax(vf a, vf b) {
    vf_halves x = {a}, y = {b};
    x.half[0] = _mm256_max_ps(x.half[0], y.half[0]);
    x.half[1] = _mm256_max_ps(x.half[1], y.half[1]);
    return x.v;
}
static inline vf vmin(vf a, vf b) {
    vf_halves x = {a}, y = {b};
    x.half[0] = _mm256_min_ps(x.half[0], y.half[0]);
    x.half[1] = _mm256_min_ps(x.half[1], y.half[1]);
    return x.v;
}
#else
static inline vf vmax(vf a, vf b) { return select(a > b, a, b); }
static inline vf vmin(vf a, vf b) { return select(a < b, a, b); }
#endif
/* |x| by clearing the sign bit: no comparison at all */
static inline vf vabs(vf x) { return (vf)((vi)x & ((vi){0} + 0x7fffffff)); }

/* exp(f) for |f| <= ln2 / 2 (Cephes' expf polynomial), and the reduction x = k ln2 + f */
static inline vf exp_reduced(vf f) {
    vf p = splat(1.9875691500e-4f);
    p = p * f + 1.3981999507e-3f;
    p = p * f + 8.3334519073e-3f;
    p = p * f + 4.1665795894e-2f;
    p = p * f + 1.6666665459e-1f;
    p = p * f + 5.0000001201e-1f;
    return p * (f * f) + f + 1.0f;
}

static inline vf reduce_ln2(vf x, vf k) { return x - k * 0.693359375f + k * 2.12194440e-4f; }  /* ln2 in two parts */

#if defined(__AVX512F__) && W == 16
#include <immintrin.h>
/* AVX-512: vscalefps computes p * 2^k and saturates to 0 / inf by itself, so no clamping and no
 * integer exponent arithmetic (about half the instructions of the portable version). */
static inline vf vexp(vf x) {
    const __m512 k = _mm512_roundscale_ps((__m512)(x * 1.44269504088896341f), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return (vf)_mm512_scalef_ps((__m512)exp_reduced(reduce_ln2(x, (vf)k)), k);
}
#else
static inline vf vexp(vf x) {
    x = vmin(vmax(x, splat(-87.3f)), splat(88.3f));
    /* round(x / ln2) with the 1.5 * 2^23 trick: the integer lands in the low mantissa bits */
    const vf shifted = x * 1.44269504088896341f + 12582912.0f;
    const vf k = shifted - 12582912.0f;
    const vi ki = (vi)shifted - (vi)splat(12582912.0f);
    return exp_reduced(reduce_ln2(x, k)) * (vf)((ki + 127) << 23);
}
#endif

static inline vf vsigmoid(vf x) { return 1.0f / (1.0f + vexp(-x)); }

static inline vf vsoftplus(vf x) {
    /* max(x, 0) + log1p(exp(-|x|)), log1p(t) = 2 atanh(s), s = t / (2 + t) <= 1/3 */
    const vf t = vexp(-vabs(x));
    const vf s = t / (2.0f + t), s2 = s * s;
    vf p = splat(1.0f / 13.0f);
    p = p * s2 + 1.0f / 11.0f;
    p = p * s2 + 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    p = p * s2 + 1.0f;
    return vmax(x, splat(0.0f)) + 2.0f * s * p;
}

/* Sum of the lanes as a pairwise tree of half-width vector adds (two 8-lane, one 4-lane, then
 * scalars): the backward pass takes two per step and state, and a chain of 15 scalar adds with
 * a lane extraction each was about a third of its time on AVX2. */
typedef float vf8 __attribute__((vector_size(8 * sizeof(float))));
typedef float vf4 __attribute__((vector_size(4 * sizeof(float))));
static inline float hsum(vf v) {
#if W == 16
    union { vf v; vf8 half[2]; } a = {v};
    union { vf8 v; vf4 half[2]; } b = {a.half[0] + a.half[1]};
    const vf4 q = b.half[0] + b.half[1];
    return (q[0] + q[2]) + (q[1] + q[3]);
#else
    float s = 0.0f;
    for (int k = 0; k < W; k++) s += v[k];
    return s;
#endif
}

/* Lanes past the end of D read as 0 and are never written (constant-size copies are single
 * unaligned vector moves). */
static inline vf load(const float *src, int nw) {
    vf v = {0};
    if (nw == W) memcpy(&v, src, sizeof v);
    else memcpy(&v, src, (size_t)nw * sizeof(float));
    return v;
}

static inline void store(float *dst, vf v, int nw) {
    if (nw == W) memcpy(dst, &v, sizeof v);
    else memcpy(dst, &v, (size_t)nw * sizeof(float));
}

static inline vf load_or_zero(const float *src, i64 d0, int nw) { return src ? load(src + d0, nw) : splat(0.0f); }

/* delta after bias and softplus */
static inline vf step_dt(const ScanArgs *a, vf raw, vf bias) {
    return a->softplus ? vsoftplus(raw + bias) : raw + bias;
}

/* Forward recurrence for channels [d0, d0 + nw) of batch b. With trace != NULL it keeps, per
 * step, the state (N vectors), delta and pre-gate output for the backward pass instead of
 * writing the output. */
static void forward_block(const ScanArgs *a, i64 b, i64 d0, int nw, vf *trace) {
    const i64 L = a->L, D = a->D, N = a->N;
    vf h[MAXN], At[MAXN];
    for (i64 n = 0; n < N; n++) {
        At[n] = load(a->A + n * D + d0, nw);
        h[n] = splat(0.0f);
    }
    const vf bias = load_or_zero(a->dbias, d0, nw), Dv = load_or_zero(a->Dv, d0, nw);

    for (i64 i = 0; i < L; i++) {
        const i64 l = a->order && !trace ? a->order[i] : i;
        const vf u = load(a->u + b * a->u_sb + l * a->u_sl + d0, nw);
        const vf dt = step_dt(a, load(a->delta + b * a->dl_sb + l * a->dl_sl + d0, nw), bias);
        const vf du = dt * u;
        const float *Bl = a->Bm + b * a->B_sb + l * a->B_sl;
        const float *Cl = a->Cm + b * a->C_sb + l * a->C_sl;
        vf y = Dv * u;
        for (i64 n = 0; n < N; n++) {
            h[n] = vexp(dt * At[n]) * h[n] + du * Bl[n * a->B_sn];
            y += h[n] * Cl[n * a->C_sn];
        }
        if (trace) {  /* the backward pass needs the state, not the output */
            vf *t = trace + l * (N + 2);
            for (i64 n = 0; n < N; n++) t[n] = h[n];
            t[N] = dt;
            t[N + 1] = y;
            continue;
        }
        if (a->z) {
            const vf z = load(a->z + b * a->z_sb + l * a->z_sl + d0, nw);
            y *= z * vsigmoid(z);
        }
        float *o = a->out + b * a->o_sb + l * a->o_sl + d0;
        store(o, a->accumulate ? y + load(o, nw) : y, nw);
    }
    if (a->last_state && !trace) {
        for (int k = 0; k < nw; k++)
            for (i64 n = 0; n < N; n++) a->last_state[(b * D + d0 + k) * N + n] = h[n][k];
    }
}

/* Work items are (batch, channel block) pairs, spread over the threads of the OpenMP runtime
 * (linked against the one torch loaded, so the two share one pool instead of fighting). */
int ss_forward(const ScanArgs *a, int threads) {
    if (a->N > MAXN) return -1;
    const i64 blocks = (a->D + W - 1) / W;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (i64 it = 0; it < a->batch * blocks; it++) {
        const i64 b = it / blocks, d0 = (it % blocks) * W;
        const int nw = (int)(a->D - d0 < W ? a->D - d0 : W);
        forward_block(a, b, d0, nw, 0);
    }
    return 0;
}

/* Work items are channel blocks only (each owns its channels across the batch, so the
 * per-channel gradients dA, dD, ddbias have one writer); dB, dC and the scratch trace are per
 * thread: (threads, batch, L, N) and (threads, L * (N + 2) * W). */
int ss_backward(const ScanArgs *a, int threads) {
    if (a->N > MAXN) return -1;
    const i64 L = a->L, D = a->D, N = a->N;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (i64 it = 0; it < (D + W - 1) / W; it++) {
#ifdef _OPENMP
        const i64 tid = omp_get_thread_num();
#else
        const i64 tid = 0;
#endif
        vf *trace = (vf *)(a->scratch + tid * L * (N + 2) * W);
        float *dBt = a->dB + tid * a->batch * L * N, *dCt = a->dC + tid * a->batch * L * N;
        const i64 d0 = it * W;
        const int nw = (int)(D - d0 < W ? D - d0 : W);
        vf At[MAXN], gA[MAXN], gh[MAXN];
        for (i64 n = 0; n < N; n++) {
            At[n] = load(a->A + n * D + d0, nw);
            gA[n] = splat(0.0f);
        }
        const vf bias = load_or_zero(a->dbias, d0, nw), Dv = load_or_zero(a->Dv, d0, nw);
        vf gD = splat(0.0f), gbias = splat(0.0f);

        for (i64 b = 0; b < a->batch; b++) {
            forward_block(a, b, d0, nw, trace);
            for (i64 n = 0; n < N; n++) gh[n] = splat(0.0f);
            float *dBb = dBt + b * L * N, *dCb = dCt + b * L * N;

            for (i64 l = L - 1; l >= 0; l--) {
                const vf *t = trace + l * (N + 2);
                const vf dt = t[N], y = t[N + 1];
                const vf u = load(a->u + b * a->u_sb + l * a->u_sl + d0, nw);  /* 0 in unused lanes */
                const vf g = load(a->dout + b * a->g_sb + l * a->g_sl + d0, nw);
                vf gy = g;
                if (a->z) {
                    const vf z = load(a->z + b * a->z_sb + l * a->z_sl + d0, nw);
                    const vf s = vsigmoid(z);
                    gy = g * z * s;
                    if (a->dz) store(a->dz + (b * L + l) * D + d0, g * y * s * (1.0f + z * (1.0f - s)), nw);
                }
                gD += gy * u;
                vf gu = gy * Dv, gdt = splat(0.0f);
                const vf du = dt * u;
                const float *Bl = a->Bm + b * a->B_sb + l * a->B_sl;
                const float *Cl = a->Cm + b * a->C_sb + l * a->C_sl;
                for (i64 n = 0; n < N; n++) {
                    const float bn = Bl[n * a->B_sn];
                    const vf hprev = l > 0 ? t[n - (N + 2)] : splat(0.0f);
                    dCb[l * N + n] += hsum(gy * t[n]);
                    gh[n] += gy * Cl[n * a->C_sn];          /* dL/dh_l, complete now */
                    const vf av = vexp(dt * At[n]);
                    const vf ga = gh[n] * hprev * av;        /* through exp(dt * A) */
                    gdt += ga * At[n] + gh[n] * bn * u;
                    gA[n] += ga * dt;
                    gu += gh[n] * dt * bn;
                    dBb[l * N + n] += hsum(gh[n] * du);
                    gh[n] *= av;                             /* carried to h_{l-1} */
                }
                const vf raw = load(a->delta + b * a->dl_sb + l * a->dl_sl + d0, nw);
                const vf gdelta = a->softplus ? gdt * vsigmoid(raw + bias) : gdt;
                gbias += gdelta;
                store(a->du + (b * L + l) * D + d0, gu, nw);
                store(a->ddelta + (b * L + l) * D + d0, gdelta, nw);
            }
        }
        for (i64 n = 0; n < N; n++) store(a->dA + n * D + d0, gA[n], nw);
        if (a->dD) store(a->dD + d0, gD, nw);
        if (a->ddbias) store(a->ddbias + d0, gbias, nw);
    }
    return 0;
}

/* Causal depthwise conv1d (kernel K) + SiLU along a token order, channel-contiguous layout:
 * step i sees tokens order[i-K+1..i] (zeros before the start) and writes token order[i]. The
 * backward direction of the mixer is this with the reversed order: no flipped copies. */
typedef struct {
    i64 batch, L, D, K;
    const float *x; i64 x_sb, x_sl;
    const float *w;      /* (K, D) contiguous: the conv weight transposed */
    const float *bias;   /* (D,) or NULL */
    const i64 *order;    /* NULL: 0..L-1 (forward only) */
    float *out;          /* (batch, L, D) contiguous */
    /* backward only (natural order): gradients of the output, the input, the weight and bias */
    const float *dout;   /* (batch, L, D) contiguous */
    float *dx;           /* (batch, L, D) contiguous, zeroed by the caller */
    float *dw;           /* (K, D) */
    float *db;           /* (D,) or NULL */
} ConvArgs;

int conv_silu_forward(const ConvArgs *a, int threads) {
    if (a->K > 16) return -1;
    const i64 blocks = (a->D + W - 1) / W, L = a->L, K = a->K;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (i64 it = 0; it < a->batch * blocks; it++) {
        const i64 b = it / blocks, d0 = (it % blocks) * W;
        const int nw = (int)(a->D - d0 < W ? a->D - d0 : W);
        vf wt[16], window[16];  /* window[k]: input of step i - K + 1 + k */
        for (i64 k = 0; k < K; k++) { wt[k] = load(a->w + k * a->D + d0, nw); window[k] = splat(0.0f); }
        const vf bias = load_or_zero(a->bias, d0, nw);
        for (i64 i = 0; i < L; i++) {
            const i64 l = a->order ? a->order[i] : i;
            for (i64 k = 0; k + 1 < K; k++) window[k] = window[k + 1];
            window[K - 1] = load(a->x + b * a->x_sb + l * a->x_sl + d0, nw);
            vf acc = bias;
            for (i64 k = 0; k < K; k++) acc += wt[k] * window[k];
            store(a->out + (b * L + l) * a->D + d0, acc * vsigmoid(acc), nw);
        }
    }
    return 0;
}

/* Items are channel blocks (each owns its channels' dw and db across the batch). The
 * pre-activation is recomputed rather than stored. */
int conv_silu_backward(const ConvArgs *a, int threads) {
    if (a->K > 16) return -1;
    const i64 L = a->L, K = a->K, D = a->D;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (i64 it = 0; it < (D + W - 1) / W; it++) {
        const i64 d0 = it * W;
        const int nw = (int)(D - d0 < W ? D - d0 : W);
        vf wt[16], gw[16], window[16];
        for (i64 k = 0; k < K; k++) { wt[k] = load(a->w + k * D + d0, nw); gw[k] = splat(0.0f); }
        const vf bias = load_or_zero(a->bias, d0, nw);
        vf gb = splat(0.0f);
        for (i64 b = 0; b < a->batch; b++) {
            for (i64 k = 0; k < K; k++) window[k] = splat(0.0f);
            float *dxb = a->dx + b * L * D + d0;
            for (i64 l = 0; l < L; l++) {
                for (i64 k = 0; k + 1 < K; k++) window[k] = window[k + 1];
                window[K - 1] = load(a->x + b * a->x_sb + l * a->x_sl + d0, nw);
                vf pre = bias;
                for (i64 k = 0; k < K; k++) pre += wt[k] * window[k];
                const vf s = vsigmoid(pre);
                const vf g = load(a->dout + (b * L + l) * D + d0, nw) * s * (1.0f + pre * (1.0f - s));
                gb += g;
                for (i64 k = 0; k < K; k++) {
                    const i64 src = l - (K - 1) + k;  /* the input this tap read */
                    if (src < 0) continue;
                    gw[k] += g * window[k];
                    store(dxb + src * D, load(dxb + src * D, nw) + wt[k] * g, nw);
                }
            }
        }
        for (i64 k = 0; k < K; k++) store(a->dw + k * D + d0, gw[k], nw);
        if (a->db) store(a->db + d0, gb, nw);
    }
    return 0;
}
