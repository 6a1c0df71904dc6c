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
   outputs (T·(k²+O)·L floats), then runs the iterations in reverse; the forward alone keeps two
   iterations' shares and one output. Nothing is saved between the two calls but the inputs, so
   autograd holds no window-sized tensor.

   Sums run in a different order than the tensor operations' (and the build lets the compiler
   reassociate them): the numbers agree to float32 rounding, which the tests check against
   float64. NaN and infinity propagate as they do in the tensor operations: the build does not
   assume finite math, the per-pixel maximum keeps a NaN, and padding lanes hold zeros at every
   step, so no garbage reaches a sum over lanes.

   Work is split into tasks, a range of images of one group (seed) each, run side by side on
   the OpenMP threads torch itself uses (the same libgomp), so the kernel never competes with
   torch's own threads waiting for their next parallel region. Built by
   study/models/attconv_cpu.py with the machine's C compiler; float32, contiguous. */

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Window rows are padded to a multiple of LB floats and output channels to a multiple of OB, so
   the products below run on fixed-size blocks the compiler keeps in vector registers: per block
   of LB windows, the OB outputs' accumulators stay in registers while the k² (times C) window
   entries stream past once. Padding lanes are zero in every plane of windows and shares, so
   products and sums over lanes add exact zeros for them (and stay zero whatever was computed
   there: every step that writes a padded plane clears its padding). */
#define LB 16
#define OB 8

/* LB floats as one value (GCC and Clang vector extensions): the compiler maps it onto whatever
   vector registers the CPU has. Loads and stores need no alignment. */
typedef float vec __attribute__((vector_size(4 * LB), aligned(4), may_alias));
/* A store through a `vec` may alias anything, the Shape a function was given included, so that
   a loop storing vectors would reload the shape's fields after every store: the functions with
   such loops work on a local copy of the Shape, which no store can reach. */
static inline vec load(const float *p) { return *(const vec *)p; }
static inline void store(float *p, vec v) { *(vec *)p = v; }

typedef int ivec __attribute__((vector_size(4 * LB)));

/* Lanes where `mask` is set take `yes`, the others `no`. */
static inline vec choose(ivec mask, vec yes, vec no) {
    return (vec)(((ivec)yes & mask) | ((ivec)no & ~mask));
}

/* exp(x) for x ≤ 0 (or NaN), LB at a time: x = n·ln 2 + r with |r| ≤ ln 2 / 2, exp(r) by the
   Cephes polynomial (relative error about 2e-7), 2ⁿ written into the exponent bits. Below −87,
   where exp(x) would leave the normal floats, it is 0 (−∞ too); a NaN stays NaN. The integer
   steps only ever see x in [−87, 0], so no conversion or shift leaves its range. Inline, where
   a library's vector expf is a call per 8 entries that costs more than the rest of the
   iteration. */
static inline vec exp_nonpositive(vec x) {
    ivec normal = x >= -87.0f, nan = x != x;
    vec safe = choose(normal, x, (vec){0} - 87.0f);
    ivec n = -__builtin_convertvector(0.5f - 1.44269504f * safe, ivec); /* round to nearest */
    vec nf = __builtin_convertvector(n, vec);
    vec r = safe - nf * 0.693359375f + nf * 2.12194440e-4f;
    vec p = 1.9875691500e-4f * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    vec scale = (vec)((n + 127) << 23);
    return choose(nan, x, choose(normal, p * scale, (vec){0}));
}

typedef struct {
    int C, H, W, k, s, O, T, relu;
    int h, w, K, L, CK, Lp, Op;
} Shape;

static int round_up(int n, int to) { return (n + to - 1) / to * to; }

static Shape shape_of(const int *dims) {
    Shape g = {.C = dims[0], .H = dims[1], .W = dims[2], .k = dims[3], .s = dims[4], .O = dims[5],
               .T = dims[6], .relu = dims[7]};
    g.h = (g.H - g.k) / g.s + 1;
    g.w = (g.W - g.k) / g.s + 1;
    g.K = g.k * g.k;
    g.L = g.h * g.w;
    g.CK = g.C * g.K;
    g.Lp = round_up(g.L, LB);
    g.Op = round_up(g.O, OB);
    return g;
}

/* Zeroes the padding of `rows` padded rows (of Lp floats) from `first` on, and every row from
   `valid` to `rows` whole: after a step that may have computed something there. */
static void clear_padding(const Shape *g, float *first, int valid, int rows) {
    for (int row = 0; row < valid; row++)
        memset(first + (size_t)row * g->Lp + g->L, 0, (size_t)(g->Lp - g->L) * sizeof(float));
    memset(first + (size_t)valid * g->Lp, 0, (size_t)(rows - valid) * g->Lp * sizeof(float));
}

/* Loops over the valid entries of the k² planes of window entries (k×k×Lp), a row of windows
   at a time: `entry` indexes the plane, `pixel` the image pixel of its first entry; entries of
   the row q = 0..w−1 lie at entry + q and cover pixel + q·s, s being the stride in scope. */
#define FOR_WINDOW_ROWS(g, entry, pixel)                                                   \
    for (int i_ = 0; i_ < (g)->k; i_++)                                                    \
        for (int j_ = 0; j_ < (g)->k; j_++)                                                \
            for (int r_ = 0, entry = (i_ * (g)->k + j_) * (g)->Lp, pixel = i_ * (g)->W + j_; \
                 r_ < (g)->h; r_++, entry += (g)->w, pixel += s * (g)->W)

/* Runs the code given with the stride in `s`, a constant where it is 1 (every network here), so the
   compiler reads a row's pixels with contiguous vector loads rather than element by element. */
#define WITH_STRIDE(g, ...)               \
    do {                                  \
        if ((g)->s == 1) {                \
            const int s = 1;              \
            __VA_ARGS__;                  \
        } else {                          \
            const int s = (g)->s;         \
            __VA_ARGS__;                  \
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

/* a = N(a): every window entry times the reciprocal of its pixel's sum. pixels: H·W floats. A
   pixel no window covers is never read. */
static void normalise(const Shape *g, float *a, float *pixels) {
    int HW = g->H * g->W;
    memset(pixels, 0, HW * sizeof(float));
    pixel_sums(g, a, pixels);
    for (int p = 0; p < HW; p++) pixels[p] = 1.0f / pixels[p];
    WITH_STRIDE(g, FOR_WINDOW_ROWS(g, e, p) for (int q = 0; q < g->w; q++) a[e + q] *= pixels[p + q * s]);
}

/* a = N(exp(e − shift)), the shift each pixel's largest e: it cancels in N and leaves every
   pixel one share of exactly 1, so nothing overflows. A NaN among a pixel's e is its maximum,
   as torch.maximum takes it, so it reaches every share of that pixel. The exp runs over whole
   planes in vectors (a row of windows at a time, fused with the shift and the sums, measured
   slower: a row is 44 windows at conv1, not a multiple of LB), then the padding is cleared.
   pixels: H·W floats. */
static void softmax(const Shape *shape, const float *e, float *a, float *pixels) {
    const Shape local = *shape, *g = &local; /* see `vec` */
    int HW = g->H * g->W;
    for (int p = 0; p < HW; p++) pixels[p] = -INFINITY;
    WITH_STRIDE(g, FOR_WINDOW_ROWS(g, n, p) for (int q = 0; q < g->w; q++) {
        float *d = pixels + p + q * s, v = e[n + q];
        *d = v > *d || v != v ? v : *d;
    });
    WITH_STRIDE(g, FOR_WINDOW_ROWS(g, n, p) for (int q = 0; q < g->w; q++) a[n + q] = e[n + q] - pixels[p + q * s]);
    for (int n = 0; n < g->K * g->Lp; n += LB) store(a + n, exp_nonpositive(load(a + n)));
    clear_padding(g, a, g->K, g->K);
    normalise(g, a, pixels);
}

/* y = Wᵀ (X ⊙ a) + b (Op×Lp), then the ReLU if asked (NaN passes, as in torch): the bottom-up
   product, and in the backward the top-down product's gradient with respect to y. The padded
   outputs and lanes are cleared: a NaN or infinity in X would otherwise put 0·∞ there. */
static void product(const Shape *shape, const float *X, const float *a, const float *w,
                    const float *bias, float *y, int relu) {
    const Shape local = *shape, *g = &local; /* see `vec` */
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
        for (size_t n = 0; n < (size_t)g->O * g->Lp; n++) y[n] = y[n] < 0.0f ? 0.0f : y[n];
    clear_padding(g, y, g->O, g->Op);
}

/* sums[ck][o] += X[ck] ⊙ a[ij] · rows[o] over the windows, in LB lanes (CK×Op×LB): the weight
   gradient of a product, with OB accumulators in registers through a whole row. */
static void weight_sums(const Shape *shape, const float *X, const float *a, const float *rows,
                        float *sums) {
    const Shape local = *shape, *g = &local; /* see `vec` */
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

/* e = Σ_c x̂ ⊙ X / √C (k²×Lp), for `Op` outputs. Where Op is a constant (OB or 2·OB, the
   networks here), a block of windows' outputs is loaded into registers once and serves all C·k²
   predictions; otherwise each prediction loads them again. */
static inline __attribute__((always_inline)) void agreement_of(const Shape *g, const int Op, const float *X,
                                                               const float *wtd, const float *y, float *e) {
    float scale = 1.0f / sqrtf((float)g->C);
    memset(e, 0, (size_t)g->K * g->Lp * sizeof(float));
    for (int l0 = 0; l0 < g->Lp; l0 += LB) {
        vec yv[2 * OB];
        if (Op <= 2 * OB)
            for (int o = 0; o < Op; o++) yv[o] = load(y + (size_t)o * g->Lp + l0);
        for (int ck = 0; ck < g->CK; ck++) {
            float *er = e + (ck % g->K) * g->Lp + l0;
            vec x_hat;
            if (Op <= 2 * OB) {
                const float *wr = wtd + (size_t)ck * Op;
                vec s0 = {0}, s1 = {0};
                for (int o = 0; o < Op; o += 2) {
                    s0 += wr[o] * yv[o];
                    s1 += wr[o + 1] * yv[o + 1];
                }
                x_hat = s0 + s1;
            } else {
                x_hat = predict(g, ck, l0, wtd, y);
            }
            store(er, load(er) + scale * x_hat * load(X + (size_t)ck * g->Lp + l0));
        }
    }
}

static void agreement(const Shape *shape, const float *X, const float *wtd, const float *y, float *e) {
    const Shape local = *shape, *g = &local; /* see `vec` */
    if (g->Op == OB)
        agreement_of(g, OB, X, wtd, y, e);
    else if (g->Op == 2 * OB)
        agreement_of(g, 2 * OB, X, wtd, y, e);
    else
        agreement_of(g, g->Op, X, wtd, y, e);
}

/* One task's scratch: the group's weights padded to Op, N(1), the windows, the shares and outputs
   of every iteration (`kept`, for the backward) or of the two the forward needs at a time, e, a
   pixel plane; and the backward's own. */
typedef struct {
    float *wbu, *wtd, *bias, *a0, *X, *a, *y, *e, *pixels;
    float *sum_bu, *sum_td, *sum_b, *gX, *gz, *gy, *zeros;
    int kept;
} Scratch;

/* The one description of the scratch: carves it out of `base`, or only counts it when `base` is
   NULL, and returns its size in floats. Every piece starts on a whole vector of LB floats. */
static size_t carve(const Shape *g, int backward, float *base, Scratch *sc) {
    size_t used = 0, KL = (size_t)g->K * g->Lp, OL = (size_t)g->Op * g->Lp;
    size_t WO = (size_t)g->CK * g->Op, HW = (size_t)g->H * g->W, CKL = (size_t)g->CK * g->Lp;
    int shares = backward ? g->T : (g->T > 1 ? 2 : 1), outputs = backward ? g->T : 1;
#define TAKE(piece, floats) \
    (sc->piece = base ? base + used : NULL, used += ((size_t)(floats) + LB - 1) / LB * LB)
    TAKE(wbu, WO), TAKE(wtd, WO), TAKE(bias, g->Op), TAKE(a0, KL), TAKE(X, CKL);
    TAKE(a, KL * shares), TAKE(y, OL * outputs), TAKE(e, KL), TAKE(pixels, HW);
    if (backward) {
        /* The weight gradients are summed in vectors of LB lanes, added across lanes at the end. */
        TAKE(sum_bu, WO * LB), TAKE(sum_td, WO * LB), TAKE(sum_b, (size_t)g->Op * LB);
        TAKE(gX, CKL), TAKE(gz, OL), TAKE(gy, OL), TAKE(zeros, g->Op);
    }
#undef TAKE
    sc->kept = backward;
    return used;
}

/* Where iteration t's shares and output lie. */
static float *shares_at(const Shape *g, const Scratch *sc, int t) {
    return sc->a + (size_t)(sc->kept ? t : t % 2) * g->K * g->Lp;
}
static float *output_at(const Shape *g, const Scratch *sc, int t) {
    return sc->y + (size_t)(sc->kept ? t : 0) * g->Op * g->Lp;
}

/* Runs the T iterations of image x. The first shares, N(1), are the same for every image:
   copied from a0. */
static void image_forward(const Shape *g, const float *x, const Scratch *sc) {
    cut(g, x, sc->X);
    memcpy(sc->a, sc->a0, (size_t)g->K * g->Lp * sizeof(float));
    for (int t = 0; t < g->T; t++) {
        product(g, sc->X, shares_at(g, sc, t), sc->wbu, sc->bias, output_at(g, sc, t), g->relu);
        if (t == g->T - 1) break;
        agreement(g, sc->X, sc->wtd, output_at(g, sc, t), sc->e);
        float *next = shares_at(g, sc, t + 1);
        softmax(g, sc->e, next, sc->pixels);
    }
}

/* A task's scratch, zeroed, with its group's weights padded and N(1) in place; NULL when memory
   ran out. */
static float *prepare(const Shape *g, int backward, const float *wbu, const float *wtd,
                      const float *bias, Scratch *sc) {
    size_t floats = carve(g, backward, NULL, sc);
    float *block = calloc(floats, sizeof(float));
    if (!block) return NULL;
    if (carve(g, backward, block, sc) != floats) abort(); /* one description, counted twice */
    for (int ck = 0; ck < g->CK; ck++)
        for (int o = 0; o < g->O; o++) {
            sc->wbu[(size_t)ck * g->Op + o] = wbu[(size_t)ck * g->O + o];
            sc->wtd[(size_t)ck * g->Op + o] = wtd[(size_t)ck * g->O + o];
        }
    memcpy(sc->bias, bias, g->O * sizeof(float));
    WITH_STRIDE(g, FOR_WINDOW_ROWS(g, n, p) for (int q = 0; q < g->w; q++) sc->a0[n + q] = 1.0f);
    normalise(g, sc->a0, sc->pixels);
    return block;
}

/* Task `task` of groups×parts: its group, the range [first, end) of that group's images it
   holds (part task % parts of them), and its scratch, prepared with the group's weights
   ((C·k²)×O each, O for the bias); NULL when memory ran out. */
static float *start_task(const Shape *g, int backward, int task, int images, int parts,
                         const float *wbu, const float *wtd, const float *bias, Scratch *sc,
                         int *group, int *first, int *end) {
    size_t WO = (size_t)g->CK * g->O;
    int part = task % parts;
    *group = task / parts;
    *first = (int)((long long)images * part / parts);
    *end = (int)((long long)images * (part + 1) / parts);
    return prepare(g, backward, wbu + *group * WO, wtd + *group * WO, bias + *group * g->O, sc);
}

/* The output (groups×images×O×L) of groups×images×C×H×W inputs, each group with its own weights
   (groups×(C·k²)×O, groups×O); groups×parts tasks on `threads` threads. Returns how many tasks
   ran out of memory (their images are not computed). */
int attconv_forward(const int *dims, int groups, int images, int parts, int threads,
                    const float *x, const float *wbu, const float *wtd, const float *bias,
                    float *out) {
    Shape g = shape_of(dims);
    size_t HW = (size_t)g.H * g.W;
    int failed = 0;
#pragma omp parallel for schedule(dynamic) num_threads(threads) reduction(+ : failed)
    for (int task = 0; task < groups * parts; task++) {
        int group, first, end;
        Scratch sc;
        float *block = start_task(&g, 0, task, images, parts, wbu, wtd, bias, &sc, &group, &first, &end);
        if (!block) {
            failed++;
            continue;
        }
        const float *last = output_at(&g, &sc, g.T - 1);
        for (int b = first; b < end; b++) {
            size_t image = (size_t)group * images + b;
            image_forward(&g, x + image * g.C * HW, &sc);
            for (int o = 0; o < g.O; o++)
                memcpy(out + (image * g.O + o) * g.L, last + (size_t)o * g.Lp, g.L * sizeof(float));
        }
        free(block);
    }
    return failed;
}

/* The backward of one image, its forward already run into s: adds its weight gradients to
   s's sums and, unless gx is NULL, writes the input's gradient (C×H×W). */
static void image_backward(const Shape *shape, const Scratch *sc, const float *gout, float *gx) {
    const Shape local = *shape, *g = &local; /* see `vec` */
    int K = g->K, Lp = g->Lp, Op = g->Op;
    size_t KL = (size_t)K * Lp, OL = (size_t)Op * Lp, HW = (size_t)g->H * g->W;
    float scale = 1.0f / sqrtf((float)g->C), *gz = sc->gz, *gy = sc->gy, *ga = sc->e, *gX = sc->gX;
    memset(gz, 0, OL * sizeof(float));
    for (int o = 0; o < g->O; o++) memcpy(gz + (size_t)o * Lp, gout + (size_t)o * g->L, g->L * sizeof(float));
    memset(gX, 0, (size_t)g->CK * Lp * sizeof(float));
    for (int t = g->T - 1; t >= 0; t--) {
        const float *at = shares_at(g, sc, t), *yt = output_at(g, sc, t);
        /* Through the ReLU (y > 0 exactly where it passed) to the bottom-up product. */
        for (size_t n = 0; n < OL; n++) gy[n] = g->relu && yt[n] <= 0.0f ? 0.0f : gz[n];
        for (int o = 0; o < Op; o++) {
            vec acc = {0};
            for (int l0 = 0; l0 < Lp; l0 += LB) acc += load(gy + (size_t)o * Lp + l0);
            store(sc->sum_b + o * LB, load(sc->sum_b + o * LB) + acc);
        }
        weight_sums(g, sc->X, at, gy, sc->sum_bu);
        /* The attended input's gradient, W_bu gy, into the shares' and the windows'. */
        memset(ga, 0, KL * sizeof(float));
        for (int l0 = 0; l0 < Lp; l0 += LB)
            for (int ck = 0; ck < g->CK; ck++) {
                float *gar = ga + (ck % K) * Lp + l0, *gXr = gX + (size_t)ck * Lp + l0;
                vec gxa = predict(g, ck, l0, sc->wbu, gy);
                store(gar, load(gar) + gxa * load(sc->X + (size_t)ck * Lp + l0));
                if (gx) store(gXr, load(gXr) + gxa * load(at + (ck % K) * Lp + l0));
            }
        if (t == 0) break; /* N(1) depends on nothing */
        /* Through the softmax of each pixel's windows, ge = a ⊙ (ga − Σ_pixel a ⊙ ga), and
           the 1/√C of e; ge overwrites ga. */
        for (size_t n = 0; n < KL; n++) ga[n] *= at[n];
        memset(sc->pixels, 0, HW * sizeof(float));
        pixel_sums(g, ga, sc->pixels);
        WITH_STRIDE(g, FOR_WINDOW_ROWS(g, n, p) for (int q = 0; q < g->w; q++)
            ga[n + q] = scale * (ga[n + q] - at[n + q] * sc->pixels[p + q * s]));
        clear_padding(g, ga, K, K);
        /* ... then through e = Σ_c x̂ ⊙ X and x̂ = W_td y of the iteration before. */
        const float *yp = output_at(g, sc, t - 1);
        weight_sums(g, sc->X, ga, yp, sc->sum_td);
        product(g, sc->X, ga, sc->wtd, sc->zeros, gz, 0);
        if (gx)
            for (int l0 = 0; l0 < Lp; l0 += LB)
                for (int ck = 0; ck < g->CK; ck++) {
                    float *gXr = gX + (size_t)ck * Lp + l0;
                    store(gXr, load(gXr) + load(ga + (ck % K) * Lp + l0) * predict(g, ck, l0, sc->wtd, yp));
                }
    }
    if (gx) {
        memset(gx, 0, g->C * HW * sizeof(float));
        for (int c = 0; c < g->C; c++) pixel_sums(g, gX + (size_t)c * KL, gx + (size_t)c * HW);
    }
}

/* Gradients of the inputs and weights given the output's gradient gout (groups×images×O×L), the
   arguments otherwise as attconv_forward'sc. Each task writes its own weight gradients, part
   `part` of group `group` at gwbu, gwtd [group][part] ((C·k²)×O) and gbias [group][part] (O), for
   the caller to sum in a fixed order; gx (groups×images×C×H×W) is written unless it is NULL.
   Returns how many tasks ran out of memory. */
int attconv_backward(const int *dims, int groups, int images, int parts, int threads,
                     const float *x, const float *wbu, const float *wtd, const float *bias,
                     const float *gout, float *gx, float *gwbu, float *gwtd, float *gbias) {
    Shape g = shape_of(dims);
    size_t HW = (size_t)g.H * g.W, WO = (size_t)g.CK * g.O, OL = (size_t)g.O * g.L;
    int failed = 0;
#pragma omp parallel for schedule(dynamic) num_threads(threads) reduction(+ : failed)
    for (int task = 0; task < groups * parts; task++) {
        int group, first, end;
        Scratch sc;
        float *block = start_task(&g, 1, task, images, parts, wbu, wtd, bias, &sc, &group, &first, &end);
        if (!block) {
            failed++;
            continue;
        }
        for (int b = first; b < end; b++) {
            size_t image = (size_t)group * images + b;
            image_forward(&g, x + image * g.C * HW, &sc);
            image_backward(&g, &sc, gout + image * OL, gx ? gx + image * g.C * HW : NULL);
        }
        float *tw = gwbu + task * WO, *tt = gwtd + task * WO, *tb = gbias + (size_t)task * g.O;
        for (int ck = 0; ck < g.CK; ck++)
            for (int o = 0; o < g.O; o++)
                for (int l = 0; l < LB; l++) {
                    tw[(size_t)ck * g.O + o] += sc.sum_bu[((size_t)ck * g.Op + o) * LB + l];
                    tt[(size_t)ck * g.O + o] += sc.sum_td[((size_t)ck * g.Op + o) * LB + l];
                }
        for (int o = 0; o < g.O; o++)
            for (int l = 0; l < LB; l++) tb[o] += sc.sum_b[o * LB + l];
        free(block);
    }
    return failed;
}
