/* AttConv forward and backward on the CPU, one image at a time.

   The same equations as study/models/attconv.py (read its docstring first). Written out in C
   because, run as tensor operations, every step of an iteration writes a tensor k² times the
   image for the whole batch (6 MB at conv1 for 32 images, several times the L2 cache), and the
   layer is bound by those memory passes; here one image's windows (C·k²·L floats, 194 KB at
   conv1) are cut once and every iteration works on them while they are in cache.

   Layout, per image: x is C×H×W; the windows X are C×k×k×L with L = h·w windows (row-major),
   entry (c, i, j, r, q) being pixel (c, r·s + i, q·s + j); the shares a are k×k×L; the weights
   are (C·k²)×O as the module holds them; the output is O×L. Inside, rows of L are padded (Lp).

   The backward recomputes the forward of each image, keeping every iteration's shares and
   outputs (T·(k²+O)·L floats), then runs the iterations in reverse. Nothing is saved between
   the two calls but the inputs, so autograd holds no window-sized tensor.

   Sums run in a different order than the tensor operations' (and -ffast-math lets the compiler
   reorder them further): the numbers agree to float32 rounding, which the tests check against
   float64. Built by study/models/attconv_cpu.py with the machine's C compiler; float32,
   contiguous. */

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Window rows are padded to a multiple of LB floats and output channels to a multiple of OB, so
   the products below run on fixed-size blocks the compiler keeps in vector registers: per block
   of LB windows, the OB outputs' accumulators stay in registers while the k² (times C) window
   entries stream past once. Padding holds zeros and is never read as a result. */
#define LB 16
#define OB 8

/* LB floats as one value (GCC and Clang vector extensions): the compiler maps it onto whatever
   vector registers the CPU has. Loads and stores need no alignment. */
typedef float vec __attribute__((vector_size(4 * LB), aligned(4), may_alias));
static inline vec load(const float *p) { return *(const vec *)p; }
static inline void store(float *p, vec v) { *(vec *)p = v; }

typedef int ivec __attribute__((vector_size(4 * LB)));

/* exp(x) for x ≤ 0, LB at a time: x = n·ln 2 + r with |r| ≤ ln 2 / 2, exp(r) by the Cephes
   polynomial (relative error about 2e-7), 2ⁿ written into the exponent bits. Below −87, where
   exp(x) would leave the normal floats, it is 0. Inline, where a library's vector expf is a
   call per 8 entries that costs more than the rest of the iteration. */
static inline vec exp_nonpositive(vec x) {
    ivec gone = x < -87.0f;
    x = (vec)(((ivec)x & ~gone) | ((ivec)((vec){0} - 87.0f) & gone));
    ivec n = -__builtin_convertvector(0.5f - 1.44269504f * x, ivec); /* round to nearest */
    vec nf = __builtin_convertvector(n, vec);
    vec r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
    vec p = 1.9875691500e-4f * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    vec scale = (vec)((n + 127) << 23);
    return (vec)((ivec)(p * scale) & ~gone);
}

typedef struct {
    int C, H, W, k, s, O, T, relu;
    int h, w, K, L, CK, Lp, Op;
} Shape;

static int round_up(int n, int to) { return (n + to - 1) / to * to; }

static Shape shape_of(const int *dims) {
    Shape g = {dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6], dims[7]};
    g.h = (g.H - g.k) / g.s + 1;
    g.w = (g.W - g.k) / g.s + 1;
    g.K = g.k * g.k;
    g.L = g.h * g.w;
    g.CK = g.C * g.K;
    g.Lp = round_up(g.L, LB);
    g.Op = round_up(g.O, OB);
    return g;
}

/* Scratch handed out in pieces of whole cache lines, zeroed once, so padding stays 0. */
typedef struct {
    float *next;
} Arena;

static float *take(Arena *arena, size_t floats) {
    float *piece = arena->next;
    arena->next += (floats + LB - 1) / LB * LB;
    return piece;
}

/* Loops over the valid entries of the k² planes of window entries (k×k×Lp), a row of windows
   at a time: `entry` indexes the plane, `pixel` the image pixel of its first entry; entries of
   the row q = 0..w−1 lie at entry + q and cover pixel + q·s, s being the stride in scope. */
#define FOR_WINDOW_ROWS(g, entry, pixel)                                                   \
    for (int i_ = 0; i_ < (g)->k; i_++)                                                    \
        for (int j_ = 0; j_ < (g)->k; j_++)                                                \
            for (int r_ = 0, entry = (i_ * (g)->k + j_) * (g)->Lp, pixel = i_ * (g)->W + j_; \
                 r_ < (g)->h; r_++, entry += (g)->w, pixel += s * (g)->W)

/* Runs `body` with the stride in `s`, a constant where it is 1 (every network here), so the
   compiler reads a row's pixels with contiguous vector loads rather than element by element. */
#define WITH_STRIDE(g, body)              \
    do {                                  \
        if ((g)->s == 1) {                \
            const int s = 1;              \
            body;                         \
        } else {                          \
            const int s = (g)->s;         \
            body;                         \
        }                                 \
    } while (0)

/* The windows of one image: X[c][i][j][r·w + q] = x[c][r·s + i][q·s + j]. */
static void cut(const Shape *g, const float *x, float *X) {
    for (int c = 0; c < g->C; c++) {
        const float *xc = x + (size_t)c * g->H * g->W;
        float *Xc = X + (size_t)c * g->K * g->Lp;
        WITH_STRIDE(g, FOR_WINDOW_ROWS(g, e, p) for (int q = 0; q < g->w; q++) Xc[e + q] = xc[p + q * s]);
    }
}

/* pixels[p] += every window entry of planes (k×k×Lp) that covers pixel p. */
static void pixel_sums(const Shape *g, const float *planes, float *pixels) {
    WITH_STRIDE(g, FOR_WINDOW_ROWS(g, e, p) for (int q = 0; q < g->w; q++) pixels[p + q * s] += planes[e + q]);
}

/* a = N(a): every window entry times the reciprocal of its pixel's sum. pixels: H·W floats. */
static void normalise(const Shape *g, float *a, float *pixels) {
    int HW = g->H * g->W;
    memset(pixels, 0, HW * sizeof(float));
    pixel_sums(g, a, pixels);
    for (int p = 0; p < HW; p++) pixels[p] = pixels[p] > 0.0f ? 1.0f / pixels[p] : 0.0f;
    WITH_STRIDE(g, FOR_WINDOW_ROWS(g, e, p) for (int q = 0; q < g->w; q++) a[e + q] *= pixels[p + q * s]);
}

/* a = N(exp(e − shift)), the shift each pixel's largest e: it cancels in N and leaves every
   pixel one share of exactly 1, so nothing overflows. pixels: H·W floats. */
static void softmax(const Shape *g, const float *e, float *a, float *pixels) {
    for (int p = 0; p < g->H * g->W; p++) pixels[p] = -FLT_MAX;
    WITH_STRIDE(g, FOR_WINDOW_ROWS(g, n, p) for (int q = 0; q < g->w; q++) {
        float *d = pixels + p + q * s;
        *d = e[n + q] > *d ? e[n + q] : *d;
    });
    WITH_STRIDE(g, FOR_WINDOW_ROWS(g, n, p) for (int q = 0; q < g->w; q++) a[n + q] = e[n + q] - pixels[p + q * s]);
    for (int n = 0; n < g->K * g->Lp; n += LB) store(a + n, exp_nonpositive(load(a + n)));
    normalise(g, a, pixels);
}

/* y = Wᵀ (X ⊙ a) + b (Op×Lp), then the ReLU if asked: the bottom-up product, and in the
   backward the top-down product's gradient with respect to y. */
static void product(const Shape *g, const float *X, const float *a, const float *w,
                    const float *bias, float *y, int relu) {
    for (int l0 = 0; l0 < g->Lp; l0 += LB)
        for (int o0 = 0; o0 < g->Op; o0 += OB) {
            vec acc[OB];
            for (int o = 0; o < OB; o++) acc[o] = (vec){0} + bias[o0 + o];
            for (int ck = 0; ck < g->CK; ck++) {
                vec xa = load(X + (size_t)ck * g->Lp + l0) * load(a + (ck % g->K) * g->Lp + l0);
                const float *wr = w + (size_t)ck * g->Op + o0;
                for (int o = 0; o < OB; o++) acc[o] += wr[o] * xa;
            }
            for (int o = 0; o < OB; o++) store(y + (size_t)(o0 + o) * g->Lp + l0, acc[o]);
        }
    if (relu)
        for (size_t n = 0; n < (size_t)g->Op * g->Lp; n++) y[n] = y[n] > 0.0f ? y[n] : 0.0f;
}

/* sums[ck][o] += X[ck] ⊙ a[ij] · rows[o] over the windows, in LB lanes (CK×Op×LB): the weight
   gradient of a product, with OB accumulators in registers through a whole row. */
static void weight_sums(const Shape *g, const float *X, const float *a, const float *rows,
                        float *sums) {
    for (int ck = 0; ck < g->CK; ck++) {
        const float *Xr = X + (size_t)ck * g->Lp, *ar = a + (ck % g->K) * g->Lp;
        for (int o0 = 0; o0 < g->Op; o0 += OB) {
            vec acc[OB] = {{0}};
            for (int l0 = 0; l0 < g->Lp; l0 += LB) {
                vec xa = load(Xr + l0) * load(ar + l0);
                for (int o = 0; o < OB; o++) acc[o] += xa * load(rows + (size_t)(o0 + o) * g->Lp + l0);
            }
            float *out = sums + ((size_t)ck * g->Op + o0) * LB;
            for (int o = 0; o < OB; o++) store(out + o * LB, load(out + o * LB) + acc[o]);
        }
    }
}

/* The top-down prediction of window entry ck for the block of windows at l0:
   out = Σ_o W_td[ck][o] y[o]. */
static inline vec predict(const Shape *g, int ck, int l0, const float *wtd, const float *y) {
    const float *wr = wtd + (size_t)ck * g->Op, *yl = y + l0;
    size_t Lp = g->Lp;
    /* Four partial sums (Op is a multiple of 4): one chain of Op dependent multiply-adds would
       wait on each one's latency. */
    vec s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
    for (int o = 0; o < g->Op; o += 4) {
        s0 += wr[o] * load(yl + o * Lp);
        s1 += wr[o + 1] * load(yl + (o + 1) * Lp);
        s2 += wr[o + 2] * load(yl + (o + 2) * Lp);
        s3 += wr[o + 3] * load(yl + (o + 3) * Lp);
    }
    return (s0 + s1) + (s2 + s3);
}

/* e = Σ_c x̂ ⊙ X / √C (k²×Lp). */
static void agreement(const Shape *g, const float *X, const float *wtd, const float *y, float *e) {
    float scale = 1.0f / sqrtf((float)g->C);
    memset(e, 0, (size_t)g->K * g->Lp * sizeof(float));
    for (int l0 = 0; l0 < g->Lp; l0 += LB)
        for (int ck = 0; ck < g->CK; ck++) {
            float *er = e + (ck % g->K) * g->Lp + l0;
            store(er, load(er) + scale * predict(g, ck, l0, wtd, y) * load(X + (size_t)ck * g->Lp + l0));
        }
}

typedef struct {
    const float *x, *wbu, *wtd, *bias; /* one image; the weights padded to Op */
    float *a0, *X, *a, *y, *e, *pixels;
} Forward;

/* Runs the T iterations of one image, keeping iteration t's shares at a + t·K·Lp and its output
   at y + t·Op·Lp. The first shares, N(1), are the same for every image: copied from a0. */
static void image_forward(const Shape *g, const Forward *f) {
    size_t KL = (size_t)g->K * g->Lp, OL = (size_t)g->Op * g->Lp;
    cut(g, f->x, f->X);
    memcpy(f->a, f->a0, KL * sizeof(float));
    for (int t = 0; t < g->T; t++) {
        product(g, f->X, f->a + t * KL, f->wbu, f->bias, f->y + t * OL, g->relu);
        if (t == g->T - 1) break;
        agreement(g, f->X, f->wtd, f->y + t * OL, f->e);
        softmax(g, f->e, f->a + (t + 1) * KL, f->pixels);
    }
}

/* The scratch both directions share: padded weights, N(1), the windows, every iteration's
   shares and outputs, e, a pixel plane. NULL when memory ran out. */
static float *prepare(const Shape *g, size_t extra, const float *wbu, const float *wtd,
                      const float *bias, Forward *f, Arena *arena) {
    size_t KL = (size_t)g->K * g->Lp, OL = (size_t)g->Op * g->Lp, WO = (size_t)g->CK * g->Op;
    size_t floats = 3 * (WO + LB) + (g->Op + LB) + KL * (g->T + 2) + (size_t)g->CK * g->Lp
                    + OL * g->T + g->H * g->W + LB + extra;
    float *block = calloc(floats, sizeof(float));
    if (!block) return NULL;
    arena->next = block;
    float *wb = take(arena, WO), *wt = take(arena, WO), *b = take(arena, g->Op);
    for (int ck = 0; ck < g->CK; ck++)
        for (int o = 0; o < g->O; o++) {
            wb[(size_t)ck * g->Op + o] = wbu[(size_t)ck * g->O + o];
            wt[(size_t)ck * g->Op + o] = wtd[(size_t)ck * g->O + o];
        }
    memcpy(b, bias, g->O * sizeof(float));
    f->wbu = wb, f->wtd = wt, f->bias = b;
    f->a0 = take(arena, KL), f->X = take(arena, (size_t)g->CK * g->Lp);
    f->a = take(arena, KL * g->T), f->y = take(arena, OL * g->T), f->e = take(arena, KL);
    f->pixels = take(arena, (size_t)g->H * g->W);
    WITH_STRIDE(g, FOR_WINDOW_ROWS(g, n, p) for (int q = 0; q < g->w; q++) f->a0[n + q] = 1.0f);
    normalise(g, f->a0, f->pixels);
    return block;
}

/* out (images×O×L) for images×C×H×W inputs. Returns 0, or 1 when memory ran out. */
int attconv_forward(const int *dims, int images, const float *x, const float *wbu,
                    const float *wtd, const float *bias, float *out) {
    Shape g = shape_of(dims);
    Forward f;
    Arena arena;
    float *block = prepare(&g, 0, wbu, wtd, bias, &f, &arena);
    if (!block) return 1;
    const float *last = f.y + (size_t)(g.T - 1) * g.Op * g.Lp;
    for (int b = 0; b < images; b++) {
        f.x = x + (size_t)b * g.C * g.H * g.W;
        image_forward(&g, &f);
        for (int o = 0; o < g.O; o++)
            memcpy(out + ((size_t)b * g.O + o) * g.L, last + (size_t)o * g.Lp, g.L * sizeof(float));
    }
    free(block);
    return 0;
}

/* Gradients of the inputs and weights given the output's gradient gout (images×O×L). The weight
   gradients are added to gwbu, gwtd ((C·k²)×O) and gbias (O); gx (images×C×H×W) is written
   unless it is NULL. Returns 0, or 1 when memory ran out. */
int attconv_backward(const int *dims, int images, const float *x, const float *wbu,
                     const float *wtd, const float *bias, const float *gout, float *gx,
                     float *gwbu, float *gwtd, float *gbias) {
    Shape g = shape_of(dims);
    int K = g.K, Lp = g.Lp, Op = g.Op;
    size_t KL = (size_t)K * Lp, OL = (size_t)Op * Lp, CKL = (size_t)g.CK * Lp;
    size_t WO = (size_t)g.CK * Op, HW = (size_t)g.H * g.W;
    float scale = 1.0f / sqrtf((float)g.C);
    Forward f;
    Arena arena;
    /* The weight gradients are summed in vectors of LB lanes, added across lanes at the end. */
    float *block = prepare(&g, 2 * WO * LB + Op * LB + CKL + 2 * OL + Op + 5 * LB, wbu, wtd, bias, &f,
                           &arena);
    if (!block) return 1;
    float *sum_bu = take(&arena, WO * LB), *sum_td = take(&arena, WO * LB);
    float *sum_b = take(&arena, (size_t)Op * LB), *gX = take(&arena, CKL);
    float *gz = take(&arena, OL), *gy = take(&arena, OL), *zeros = take(&arena, Op), *ga = f.e;
    for (int b = 0; b < images; b++) {
        f.x = x + (size_t)b * g.C * HW;
        image_forward(&g, &f);
        memset(gz, 0, OL * sizeof(float));
        for (int o = 0; o < g.O; o++)
            memcpy(gz + (size_t)o * Lp, gout + ((size_t)b * g.O + o) * g.L, g.L * sizeof(float));
        memset(gX, 0, CKL * sizeof(float));
        for (int t = g.T - 1; t >= 0; t--) {
            const float *at = f.a + t * KL, *yt = f.y + t * OL;
            /* Through the ReLU (y > 0 exactly where it passed) to the bottom-up product. */
            for (size_t n = 0; n < OL; n++) gy[n] = g.relu && yt[n] <= 0.0f ? 0.0f : gz[n];
            for (int o = 0; o < Op; o++) {
                vec acc = {0};
                for (int l0 = 0; l0 < Lp; l0 += LB) acc += load(gy + (size_t)o * Lp + l0);
                store(sum_b + o * LB, load(sum_b + o * LB) + acc);
            }
            weight_sums(&g, f.X, at, gy, sum_bu);
            /* The attended input's gradient, W_bu gy, into the shares' and the windows'. */
            memset(ga, 0, KL * sizeof(float));
            for (int l0 = 0; l0 < Lp; l0 += LB)
                for (int ck = 0; ck < g.CK; ck++) {
                    float *gar = ga + (ck % K) * Lp + l0, *gXr = gX + (size_t)ck * Lp + l0;
                    vec gxa = predict(&g, ck, l0, f.wbu, gy);
                    store(gar, load(gar) + gxa * load(f.X + (size_t)ck * Lp + l0));
                    if (gx) store(gXr, load(gXr) + gxa * load(at + (ck % K) * Lp + l0));
                }
            if (t == 0) break; /* N(1) depends on nothing */
            /* Through the softmax of each pixel's windows, ge = a ⊙ (ga − Σ_pixel a ⊙ ga), and
               the 1/√C of e; ge overwrites ga. */
            for (size_t n = 0; n < KL; n++) ga[n] *= at[n];
            memset(f.pixels, 0, HW * sizeof(float));
            pixel_sums(&g, ga, f.pixels);
            WITH_STRIDE(&g, FOR_WINDOW_ROWS(&g, n, p) for (int q = 0; q < g.w; q++)
                ga[n + q] = scale * (ga[n + q] - at[n + q] * f.pixels[p + q * s]));
            /* ... then through e = Σ_c x̂ ⊙ X and x̂ = W_td y of the iteration before. */
            const float *yp = f.y + (t - 1) * OL;
            weight_sums(&g, f.X, ga, yp, sum_td);
            product(&g, f.X, ga, f.wtd, zeros, gz, 0);
            if (gx)
                for (int l0 = 0; l0 < Lp; l0 += LB)
                    for (int ck = 0; ck < g.CK; ck++) {
                        float *gXr = gX + (size_t)ck * Lp + l0;
                        store(gXr, load(gXr) + load(ga + (ck % K) * Lp + l0) * predict(&g, ck, l0, f.wtd, yp));
                    }
        }
        if (gx) {
            float *gxb = gx + (size_t)b * g.C * HW;
            memset(gxb, 0, g.C * HW * sizeof(float));
            for (int c = 0; c < g.C; c++) pixel_sums(&g, gX + (size_t)c * KL, gxb + (size_t)c * HW);
        }
    }
    for (int ck = 0; ck < g.CK; ck++)
        for (int o = 0; o < g.O; o++)
            for (int l = 0; l < LB; l++) {
                gwbu[(size_t)ck * g.O + o] += sum_bu[((size_t)ck * Op + o) * LB + l];
                gwtd[(size_t)ck * g.O + o] += sum_td[((size_t)ck * Op + o) * LB + l];
            }
    for (int o = 0; o < g.O; o++)
        for (int l = 0; l < LB; l++) gbias[o] += sum_b[o * LB + l];
    free(block);
    return 0;
}
