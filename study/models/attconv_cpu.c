/* AttConv forward and backward on the CPU, one image at a time.

   The same equations as study/models/attconv.py (read its docstring first). Written out in C
   because, run as tensor operations, every step of an iteration writes a tensor k² times the
   image for the whole batch (6 MB at conv1 for 32 images, several times the L2 cache), and the
   layer is bound by those memory passes; here one image's windows (C·k²·L floats, 194 KB at
   conv1) are cut once and every iteration works on them while they are in cache.

   Layout, per image: x is C×H×W; the windows X are C×k×k×L with L = h·w windows (row-major),
   entry (c, i, j, r, q) being pixel (c, r·s + i, q·s + j); the shares a are k×k×L; the weights
   are (C·k²)×O as the module holds them; the output is O×L. Inside, an image's windows are
   packed into lanes (Windows, below) and each plane of lanes is padded (to at most Lp).

   Windows whose pixels are all 0 (about 60 % of them on composite digits at conv1) are left
   out where that changes nothing: such a window's output is its bias at every iteration, its
   shares meet only zeros, and every gradient through it is 0, except the bias's, which is added
   apart. The windows an image runs over are, per row of windows, the span from its first window
   holding a pixel other than 0 to its last: every window covering a pixel other than 0 is in
   it, so each such pixel's softmax sees all its windows, as in the dense computation. Kept: all
   windows where the input's gradient is wanted (it reaches the zeros too), and wherever a term
   left out might not be an exact 0 (see BOUND).

   The backward needs every iteration's shares and outputs (T·(k²+O)·L floats per image). A
   forward asked to keep them (training) writes them, the windows it ran over only, into a
   workspace of this library (Kept, below) that outlives the call, and the backward given its tag
   reads them back in place of running the forward again; where they are not there (another
   forward took the workspace, or the backward wants other windows), it recomputes them, the same
   numbers. The workspace is memory the process keeps from step to step, not a tensor autograd
   holds: one allocated anew at every step spends on the first touch of its pages about what the
   recomputation costs. A forward not asked to keep them holds two iterations' shares and one output.

   Sums run in a different order than the tensor operations' (and the build lets the compiler
   reassociate them): the numbers agree to float32 rounding, which the tests check against
   float64. NaN and infinity propagate as they do in the tensor operations: the build does not
   assume finite math, the per-pixel maximum keeps a NaN, and padding lanes hold zeros at every
   step, so no garbage reaches a sum over lanes.

   Work is split into tasks, a range of images of one group (seed) each, run side by side on
   the OpenMP threads torch itself uses (the same libgomp), so the kernel never competes with
   torch's own threads waiting for their next parallel region. Built by
   study/models/attconv_cpu.py with the machine's C compiler; float32, contiguous. */

#include <float.h>
#include <pthread.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Window rows are padded to a multiple of LB floats and output channels to a multiple of OB, so
   the products below run on fixed-size blocks the compiler keeps in vector registers: per block
   of LB windows, the OB outputs' accumulators stay in registers while the k² (times C) window
   entries stream past once. Padding lanes are zero in every plane of windows and shares, so
   products and sums over lanes add exact zeros for them (and stay zero whatever was computed
   there: every step that writes a padded plane clears its padding).

   LB is one vector register's floats where the CPU has AVX-512 (16), else 8 (one AVX register;
   two of SSE's or NEON's): the OB accumulators and what they meet must fit the register file.
   A `vec` twice a register's width takes two registers each, and with AVX2's sixteen the
   accumulators spill to memory: on an AMD EPYC with AVX2, LB 16 made the T = 4 training step
   2.1× slower than LB 8 (docs/performance.md, 2026-12-06, AMD EPYC). */
#ifdef __AVX512F__
#define LB 16
#else
#define LB 8
#endif
#define OB 8

/* LB floats as one value (GCC and Clang vector extensions): the compiler maps it onto the CPU's
   vector registers. Loads and stores need no alignment. */
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

/* The windows one image runs over: of each row of windows r, `count[r]` from `first[r]` on
   (none: count 0), in lanes lane[r]..; the rows with any, `kept[0..n)`; L lanes in all, padded
   to Lp. All windows: every row whole, row r in lanes r·w.. as the output holds them. */
typedef struct {
    int n, L, Lp;
    int *first, *count, *lane, *kept;
} Windows;

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

/* Zeroes the padding of `rows` planes of lanes (Lp floats apart) from `first` on, lanes L..Lp of
   the window's, and lanes 0..Lp of every plane from `valid` to `rows`: after a step that may
   have computed something there. */
static void clear_padding(const Shape *g, const Windows *win, float *first, int valid, int rows) {
    for (int row = 0; row < valid; row++)
        memset(first + (size_t)row * g->Lp + win->L, 0, (size_t)(win->Lp - win->L) * sizeof(float));
    for (int row = valid; row < rows; row++)
        memset(first + (size_t)row * g->Lp, 0, (size_t)win->Lp * sizeof(float));
}

/* Loops over the entries of the k² planes of window entries (k×k×Lp) the image runs over, a row
   of windows at a time: `entry` indexes the plane, `pixel` the image pixel of its first entry;
   the row's `width` entries lie at entry + q and cover pixel + q·s, s being the stride in scope. */
#define FOR_WINDOW_ROWS(g, win, entry, pixel, width)                                        \
    for (int i_ = 0; i_ < (g)->k; i_++)                                                     \
        for (int j_ = 0; j_ < (g)->k; j_++)                                                 \
            for (int m_ = 0, r_ = 0, entry = 0, pixel = 0, width = 0;                       \
                 m_ < (win)->n &&                                                           \
                 (r_ = (win)->kept[m_], entry = (i_ * (g)->k + j_) * (g)->Lp + (win)->lane[r_], \
                  pixel = (r_ * s + i_) * (g)->W + (win)->first[r_] * s + j_,                \
                  width = (win)->count[r_], 1);                                             \
                 m_++)

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

/* Every window, or (unless `all`) for each row of windows the span from the first to the last
   window covering a column with a pixel other than 0 in the row's k image rows: every window
   holding such a pixel, and perhaps some around them that hold none. `inked`: 2·H ints. */
static void choose_windows(const Shape *g, const float *x, int all, int *inked, Windows *win) {
    int *left = inked, *right = inked + g->H; /* an image row's first and last column with one */
    for (int y = 0; y < g->H && !all; y++) {
        left[y] = g->W, right[y] = -1;
        for (int c = 0; c < g->C; c++) {
            const float *line = x + ((size_t)c * g->H + y) * g->W;
            int col = 0, end = g->W - 1;
            while (col < left[y] && line[col] == 0.0f) col++;
            left[y] = col;
            while (end > right[y] && line[end] == 0.0f) end--;
            right[y] = end;
        }
    }
    win->n = win->L = 0;
    for (int r = 0; r < g->h; r++) {
        int first = 0, last = g->w - 1;
        if (!all) {
            int lo = g->W, hi = -1;
            for (int y = r * g->s; y < r * g->s + g->k; y++) {
                lo = left[y] < lo ? left[y] : lo;
                hi = right[y] > hi ? right[y] : hi;
            }
            /* Window q covers columns q·s .. q·s + k − 1. */
            first = lo - g->k + 1 <= 0 ? 0 : (lo - g->k + g->s) / g->s;
            last = hi < 0 ? -1 : hi / g->s < g->w - 1 ? hi / g->s : g->w - 1;
        }
        win->first[r] = first, win->count[r] = last < first ? 0 : last + 1 - first, win->lane[r] = win->L;
        if (win->count[r] > 0) win->kept[win->n++] = r;
        win->L += win->count[r];
    }
    win->Lp = round_up(win->L, LB);
}

/* The windows of one image: X[c][i][j][lane] = x[c][r·s + i][q·s + j] for window (r, q). */
static void cut(const Shape *g, const Windows *win, const float *x, float *X) {
    for (int c = 0; c < g->C; c++) {
        const float *xc = x + (size_t)c * g->H * g->W;
        float *Xc = X + (size_t)c * g->K * g->Lp;
        WITH_STRIDE(g, FOR_WINDOW_ROWS(g, win, e, p, n) for (int q = 0; q < n; q++) Xc[e + q] = xc[p + q * s]);
    }
    clear_padding(g, win, X, g->CK, g->CK);
}

/* pixels[p] += every window entry of planes (k×k×Lp) that covers pixel p. */
static void pixel_sums(const Shape *g, const Windows *win, const float *planes, float *pixels) {
    WITH_STRIDE(g, FOR_WINDOW_ROWS(g, win, e, p, n) for (int q = 0; q < n; q++)
        pixels[p + q * s] += planes[e + q]);
}

/* a = N(a): every window entry times the reciprocal of its pixel's sum. pixels: H·W floats. A
   pixel no window covers is never read. */
static void normalise(const Shape *g, const Windows *win, float *a, float *pixels) {
    int HW = g->H * g->W;
    memset(pixels, 0, HW * sizeof(float));
    pixel_sums(g, win, a, pixels);
    for (int p = 0; p < HW; p++) pixels[p] = 1.0f / pixels[p];
    WITH_STRIDE(g, FOR_WINDOW_ROWS(g, win, e, p, n) for (int q = 0; q < n; q++) a[e + q] *= pixels[p + q * s]);
}

/* Whether every entry of e's k² planes (their padding too, which holds zeros) lies within
   SPREAD of the largest, which is then in `most`: false where one is NaN or infinite. */
#define SPREAD 64.0f
static int narrow(const Shape *g, const Windows *win, const float *e, float *most) {
    vec hi = load(e), lo = hi;
    ivec nan = hi != hi;
    for (int ij = 0; ij < g->K; ij++)
        for (int n = ij * g->Lp; n < ij * g->Lp + win->Lp; n += LB) {
            vec v = load(e + n);
            hi = choose(v > hi, v, hi), lo = choose(v < lo, v, lo), nan |= v != v;
        }
    float h = hi[0], l = lo[0];
    int bad = 0;
    for (int i = 0; i < LB; i++) h = hi[i] > h ? hi[i] : h, l = lo[i] < l ? lo[i] : l, bad |= nan[i];
    *most = h;
    return !bad && h - l <= SPREAD;
}

/* a = N(exp(e − shift)), which the shift leaves unchanged: N divides by each pixel's sum. Where
   e spans at most SPREAD (see `narrow`; on the study's images, whose pixels are in [0, 1], it
   spans about 0.2), one shift for the image, its largest e: one pass over whole planes, every
   exp at least e^−64 and every pixel's sum a normal float. Otherwise each pixel's own largest e,
   which leaves every pixel one share of exactly 1, so nothing overflows or vanishes; a NaN among
   a pixel's e is its maximum, as torch.maximum takes it, so it reaches every share of that pixel.
   The exp runs over whole planes in vectors (a row of windows at a time, fused with the shift
   and the sums, measured slower: a row is 44 windows at conv1, not a multiple of LB), then the
   padding is cleared. pixels: H·W floats. */
static void softmax(const Shape *shape, const Windows *win, const float *e, float *a, float *pixels) {
    const Shape local = *shape, *g = &local; /* see `vec` */
    float most;
    if (narrow(g, win, e, &most)) {
        for (int ij = 0; ij < g->K; ij++)
            for (int n = ij * g->Lp; n < ij * g->Lp + win->Lp; n += LB)
                store(a + n, exp_nonpositive(load(e + n) - most));
    } else {
        int HW = g->H * g->W;
        for (int p = 0; p < HW; p++) pixels[p] = -INFINITY;
        WITH_STRIDE(g, FOR_WINDOW_ROWS(g, win, n, p, width) for (int q = 0; q < width; q++) {
            float *d = pixels + p + q * s, v = e[n + q];
            *d = v > *d || v != v ? v : *d;
        });
        WITH_STRIDE(g, FOR_WINDOW_ROWS(g, win, n, p, width) for (int q = 0; q < width; q++)
            a[n + q] = e[n + q] - pixels[p + q * s]);
        for (int ij = 0; ij < g->K; ij++)
            for (int n = ij * g->Lp; n < ij * g->Lp + win->Lp; n += LB) store(a + n, exp_nonpositive(load(a + n)));
    }
    clear_padding(g, win, a, g->K, g->K);
    normalise(g, win, a, pixels);
}

/* y = Wᵀ (X ⊙ a) + b (Op×Lp), then the ReLU if asked (NaN passes, as in torch): the bottom-up
   product, and in the backward the top-down product's gradient with respect to y. The padded
   outputs and lanes are cleared: a NaN or infinity in X would otherwise put 0·∞ there. */
static void product(const Shape *shape, const Windows *win, const float *X, const float *a, const float *w,
                    const float *bias, float *y, int relu) {
    const Shape local = *shape, *g = &local; /* see `vec` */
    for (int l0 = 0; l0 < win->Lp; l0 += LB)
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
        for (int o = 0; o < g->O; o++)
            for (float *n = y + (size_t)o * g->Lp, *end = n + win->Lp; n < end; n++) *n = *n < 0.0f ? 0.0f : *n;
    clear_padding(g, win, y, g->O, g->Op);
}

/* sums[ck][o] += X[ck] ⊙ a[ij] · rows[o] over the windows, in LB lanes (CK×Op×LB): the weight
   gradient of a product, with OB accumulators in registers through a whole row. */
static void weight_sums(const Shape *shape, const Windows *win, const float *X, const float *a,
                        const float *rows, float *sums) {
    const Shape local = *shape, *g = &local; /* see `vec` */
    for (int ck = 0; ck < g->CK; ck++) {
        const float *Xr = X + (size_t)ck * g->Lp, *ar = a + (ck % g->K) * g->Lp;
        for (int o0 = 0; o0 < g->Op; o0 += OB) {
            vec acc[OB] = {{0}};
            for (int l0 = 0; l0 < win->Lp; l0 += LB) {
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

/* e = Σ_c x̂ ⊙ X / √C (k²×Lp) with x̂ = W y, for `Op` outputs: the agreement (W_td and the
   outputs), and in the backward the shares' part of the attended input's gradient (W_bu and the
   outputs' gradient). Where Op is a constant (OB or 2·OB, the networks here), a block of windows'
   outputs is loaded into registers once and serves all C·k² predictions; otherwise each
   prediction loads them again. */
static inline __attribute__((always_inline)) void agreement_of(const Shape *g, const Windows *win, const int Op,
                                                               const float *X, const float *w, const float *y,
                                                               float *e) {
    float scale = 1.0f / sqrtf((float)g->C);
    for (int ij = 0; ij < g->K; ij++) memset(e + (size_t)ij * g->Lp, 0, (size_t)win->Lp * sizeof(float));
    for (int l0 = 0; l0 < win->Lp; l0 += LB) {
        vec yv[2 * OB];
        if (Op <= 2 * OB)
            for (int o = 0; o < Op; o++) yv[o] = load(y + (size_t)o * g->Lp + l0);
        for (int ck = 0; ck < g->CK; ck++) {
            float *er = e + (ck % g->K) * g->Lp + l0;
            vec x_hat;
            if (Op <= 2 * OB) {
                const float *wr = w + (size_t)ck * Op;
                vec s0 = {0}, s1 = {0};
                for (int o = 0; o < Op; o += 2) {
                    s0 += wr[o] * yv[o];
                    s1 += wr[o + 1] * yv[o + 1];
                }
                x_hat = s0 + s1;
            } else {
                x_hat = predict(g, ck, l0, w, y);
            }
            store(er, load(er) + scale * x_hat * load(X + (size_t)ck * g->Lp + l0));
        }
    }
}

static void agreement(const Shape *shape, const Windows *win, const float *X, const float *w, const float *y,
                      float *e) {
    const Shape local = *shape, *g = &local; /* see `vec` */
    if (g->Op == OB)
        agreement_of(g, win, OB, X, w, y, e);
    else if (g->Op == 2 * OB)
        agreement_of(g, win, 2 * OB, X, w, y, e);
    else
        agreement_of(g, win, g->Op, X, w, y, e);
}

/* One task's scratch: the group's weights padded to Op, N(1) per pixel, the windows, the shares
   and outputs of every iteration (`kept`, for the backward) or of the two the forward needs at a
   time, e, a pixel plane, the windows an image runs over; and the backward's own. */
typedef struct {
    float *wbu, *wtd, *bias, *a0, *X, *a, *y, *e, *pixels;
    float *sum_bu, *sum_td, *sum_b, *gX, *gz, *gy, *zeros;
    Windows win;
    int *inked;
    float reach_bu, reach_td, bias_max; /* see BOUND */
    int kept, finite;                   /* finite: every weight and bias is */
} Scratch;

/* The one description of the scratch: carves it out of `base`, or only counts it when `base` is
   NULL, and returns its size in floats. Every piece starts on a whole vector of LB floats. */
static size_t carve(const Shape *g, int backward, float *base, Scratch *sc) {
    size_t used = 0, KL = (size_t)g->K * g->Lp, OL = (size_t)g->Op * g->Lp;
    size_t WO = (size_t)g->CK * g->Op, HW = (size_t)g->H * g->W, CKL = (size_t)g->CK * g->Lp;
    int shares = backward ? g->T : (g->T > 1 ? 2 : 1), outputs = backward ? g->T : 1;
#define TAKE(piece, floats) \
    (sc->piece = base ? (void *)(base + used) : NULL, used += ((size_t)(floats) + LB - 1) / LB * LB)
    TAKE(wbu, WO), TAKE(wtd, WO), TAKE(bias, g->Op), TAKE(a0, HW), TAKE(X, CKL);
    TAKE(a, KL * shares), TAKE(y, OL * outputs), TAKE(e, KL), TAKE(pixels, HW);
    /* ints, as many as floats */
    TAKE(win.first, g->h), TAKE(win.count, g->h), TAKE(win.lane, g->h), TAKE(win.kept, g->h);
    TAKE(inked, 2 * g->H);
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

/* The larger of m and a, NaN if either is NaN (a is checked; m stays NaN once it is). */
static inline float larger(float m, float a) { return a > m || a != a ? a : m; }

/* The largest magnitude among n floats; NaN if one is NaN, so the floats are all finite exactly
   when it is at most FLT_MAX. */
static float peak(const float *v, size_t n) {
    vec most = {0};
    size_t i = 0;
    for (; i + LB <= n; i += LB) {
        vec a = (vec)((ivec)load(v + i) & 0x7fffffff);
        most = choose((a > most) | (a != a), a, most);
    }
    float m = 0.0f;
    for (int l = 0; l < LB; l++) m = larger(m, most[l]);
    for (; i < n; i++) m = larger(m, fabsf(v[i]));
    return m;
}

/* peak over the first `lanes` floats of `planes` planes Lp apart. */
static float planes_peak(const Shape *g, const float *v, int planes, int lanes) {
    float m = 0.0f;
    for (int plane = 0; plane < planes; plane++) m = larger(m, peak(v + (size_t)plane * g->Lp, lanes));
    return m;
}

/* The largest Σ_o |w[ck][o]| (weights padded to Op): an entry of a product by w is at most this
   times the largest entry it multiplies. */
static float reach(const Shape *g, const float *w) {
    float most = 0.0f;
    for (int ck = 0; ck < g->CK; ck++) {
        float sum = 0.0f;
        for (int o = 0; o < g->O; o++) sum += fabsf(w[(size_t)ck * g->Op + o]);
        most = sum > most ? sum : most;
    }
    return most;
}

/* Leaving a window of zeros out is exact while every term the dense computation would give it is
   an exact 0: its prediction x̂ = W_td y (y its bias) and its attended input's gradient W_bu gy
   must be finite where they meet the zeros, and so must the predictions of the windows kept
   (a NaN among them meets the zeros they share with left-out windows). Each is bounded by
   reach(W)·max|entries| below BOUND (< FLT_MAX, with room for rounding; a NaN entry fails it);
   where a bound fails the image (in the backward, the task) runs again over all windows, so NaN
   and infinity reach exactly what they reach in the tensor operations. Non-finite weights,
   inputs or output gradients take all windows at once. */
#define BOUND 1e38f

/* The forward's iterations kept for the backward: per image, from the start of a slot of
   T·(k²+O)·Lp floats (room for all of them), the planes `copy_kept` copies, each plane the
   windows the image ran over (its Windows' Lp lanes). A few workspaces, so that networks with
   several AttConv layers keep each layer's; each holds one forward's, named by a tag, until its
   backward has read it or, all being taken, the oldest is taken for a new forward (whose
   backward then recomputes). The memory stays allocated for the next step. */
#define WORKSPACES 4
typedef struct {
    float *data;
    char *ran_all; /* per image: whether it ran over all windows */
    size_t floats, images_held;
    long long tag; /* 0: holds nothing */
    int busy;      /* being written or read */
    int dims[8], groups, images;
} Kept;
static Kept workspaces[WORKSPACES];
static long long last_tag;
static pthread_mutex_t workspaces_lock = PTHREAD_MUTEX_INITIALIZER;

static size_t kept_per_image(const Shape *g) { return (size_t)g->T * (g->K + g->O) * g->Lp; }

/* A workspace for a forward of this shape (the oldest not busy, sized to it), busy; NULL where
   all are busy or memory ran out. */
static Kept *take_workspace(const Shape *g, const int *dims, int groups, int images) {
    Kept *kept = NULL;
    pthread_mutex_lock(&workspaces_lock);
    for (int i = 0; i < WORKSPACES; i++)
        if (!workspaces[i].busy && (!kept || workspaces[i].tag < kept->tag)) kept = &workspaces[i];
    if (kept) kept->busy = 1, kept->tag = 0;
    pthread_mutex_unlock(&workspaces_lock);
    if (!kept) return NULL;
    size_t n = (size_t)groups * images, floats = n * kept_per_image(g);
    if (kept->floats < floats) {
        free(kept->data);
        kept->data = malloc(floats * sizeof(float));
        kept->floats = kept->data ? floats : 0;
    }
    if (kept->images_held < n) {
        free(kept->ran_all);
        kept->ran_all = malloc(n);
        kept->images_held = kept->ran_all ? n : 0;
    }
    if (!kept->data || !kept->ran_all) {
        pthread_mutex_lock(&workspaces_lock);
        kept->busy = 0;
        pthread_mutex_unlock(&workspaces_lock);
        return NULL;
    }
    memcpy(kept->dims, dims, sizeof kept->dims);
    kept->groups = groups, kept->images = images;
    return kept;
}

/* Ends a forward's writing (`tag`: where to give its tag), or a backward's reading: the workspace
   is no longer busy, and holds the forward's iterations, or nothing once read. */
static void put_workspace(Kept *kept, long long *tag) {
    if (!kept) return;
    pthread_mutex_lock(&workspaces_lock);
    kept->tag = tag ? ++last_tag : 0;
    if (tag) *tag = kept->tag;
    kept->busy = 0;
    pthread_mutex_unlock(&workspaces_lock);
}

/* The workspace holding the iterations of the forward tagged `tag`, of this shape, busy; NULL
   where none does. */
static Kept *find_workspace(long long tag, const int *dims, int groups, int images) {
    Kept *kept = NULL;
    pthread_mutex_lock(&workspaces_lock);
    for (int i = 0; i < WORKSPACES && tag; i++)
        if (workspaces[i].tag == tag && !workspaces[i].busy && workspaces[i].groups == groups &&
            workspaces[i].images == images && !memcmp(workspaces[i].dims, dims, sizeof workspaces[i].dims))
            kept = &workspaces[i], kept->busy = 1;
    pthread_mutex_unlock(&workspaces_lock);
    return kept;
}

/* Starts image x's run over its windows (every window where `all`): chooses them, cuts them,
   and gives them the first shares, N(1): every window entry 1 over the number of windows covering
   its pixel (a0, per pixel), the padding cleared. */
static void start_image(const Shape *g, const float *x, Scratch *sc, int all) {
    const Windows *win = &sc->win;
    choose_windows(g, x, all, sc->inked, &sc->win);
    cut(g, win, x, sc->X);
    WITH_STRIDE(g, FOR_WINDOW_ROWS(g, win, n, p, width) for (int q = 0; q < width; q++)
        sc->a[n + q] = sc->a0[p + q * s]);
    clear_padding(g, win, sc->a, g->K, g->K);
}

/* Copies an image's iterations between the scratch and its slot of the workspace (`to_slot`:
   that way), its windows' lanes of every plane the backward reads but the first shares, which
   `start_image` makes again: not the last output either, without the ReLU inside (it is read
   only for the ReLU's mask). */
static void copy_kept(const Shape *g, const Scratch *sc, float *slot, int to_slot) {
    size_t n = (size_t)sc->win.Lp * sizeof(float);
    for (int t = 0; t < g->T; t++) {
        for (int plane = t == 0 ? g->K : 0; plane < g->K + (t < g->T - 1 || g->relu ? g->O : 0); plane++) {
            float *at = plane < g->K ? shares_at(g, sc, t) + (size_t)plane * g->Lp
                                     : output_at(g, sc, t) + (size_t)(plane - g->K) * g->Lp;
            memcpy(to_slot ? slot : at, to_slot ? at : slot, n);
            slot += sc->win.Lp;
        }
    }
}

/* Runs the T iterations of image x over its windows with a pixel other than 0, or over all of
   them when `all` (or a weight, or the image, is not finite). Returns 1, having stopped, where a
   bound fails (see BOUND): the image is then run again with `all`. The first shares, N(1), are 1
   over the number of windows covering each pixel, as with all windows. */
static int image_forward(const Shape *g, const float *x, Scratch *sc, int all) {
    start_image(g, x, sc, all || !sc->finite || !(peak(x, (size_t)g->C * g->H * g->W) <= FLT_MAX));
    const Windows *win = &sc->win;
    int leaves_out = win->L < g->L;
    for (int t = 0; t < g->T; t++) {
        float *y = output_at(g, sc, t);
        product(g, win, sc->X, shares_at(g, sc, t), sc->wbu, sc->bias, y, g->relu);
        if (t == g->T - 1) break;
        if (leaves_out && !(larger(planes_peak(g, y, g->O, win->Lp), sc->bias_max) * sc->reach_td < BOUND))
            return 1;
        agreement(g, win, sc->X, sc->wtd, y, sc->e);
        softmax(g, win, sc->e, shares_at(g, sc, t + 1), sc->pixels);
    }
    return 0;
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
    sc->bias_max = peak(sc->bias, g->O);
    sc->finite = peak(sc->wbu, (size_t)g->CK * g->Op) <= FLT_MAX
                 && peak(sc->wtd, (size_t)g->CK * g->Op) <= FLT_MAX && sc->bias_max <= FLT_MAX;
    sc->reach_bu = reach(g, sc->wbu), sc->reach_td = reach(g, sc->wtd);
    for (int i = 0; i < g->k; i++) /* how many windows cover each pixel */
        for (int j = 0; j < g->k; j++)
            for (int r = 0; r < g->h; r++)
                for (int q = 0; q < g->w; q++) sc->a0[(r * g->s + i) * g->W + q * g->s + j] += 1.0f;
    for (int p = 0; p < g->H * g->W; p++) sc->a0[p] = 1.0f / sc->a0[p];
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
   (groups×(C·k²)×O, groups×O); groups×parts tasks on `threads` threads. Where `tag` is not NULL,
   the iterations are kept for the backward (see Kept) and *tag names them (0: not kept, memory
   being short or every workspace taken). Returns how many tasks ran out of memory (their images
   are not computed). */
int attconv_forward(const int *dims, int groups, int images, int parts, int threads,
                    const float *x, const float *wbu, const float *wtd, const float *bias,
                    float *out, long long *tag) {
    Shape g = shape_of(dims);
    size_t HW = (size_t)g.H * g.W;
    int failed = 0;
    Kept *kept = tag ? take_workspace(&g, dims, groups, images) : NULL;
#pragma omp parallel for schedule(dynamic) num_threads(threads) reduction(+ : failed)
    for (int task = 0; task < groups * parts; task++) {
        int group, first, end;
        Scratch sc;
        float *block = start_task(&g, kept != NULL, task, images, parts, wbu, wtd, bias, &sc, &group,
                                  &first, &end);
        if (!block) {
            failed++;
            continue;
        }
        const float *last = output_at(&g, &sc, g.T - 1);
        for (int b = first; b < end; b++) {
            size_t image = (size_t)group * images + b;
            const float *xb = x + image * g.C * HW;
            if (image_forward(&g, xb, &sc, 0)) image_forward(&g, xb, &sc, 1);
            if (kept) {
                copy_kept(&g, &sc, kept->data + image * kept_per_image(&g), 1);
                kept->ran_all[image] = sc.win.L == g.L;
            }
            /* A window left out has its bias (through the ReLU, if inside) for output. */
            for (int o = 0; o < g.O; o++) {
                float *row = out + (image * g.O + o) * g.L;
                float left_out = g.relu && sc.bias[o] < 0.0f ? 0.0f : sc.bias[o];
                if (sc.win.L < g.L)
                    for (int l = 0; l < g.L; l++) row[l] = left_out;
                for (int m = 0; m < sc.win.n; m++) {
                    int r = sc.win.kept[m];
                    memcpy(row + r * g.w + sc.win.first[r], last + (size_t)o * g.Lp + sc.win.lane[r],
                           sc.win.count[r] * sizeof(float));
                }
            }
        }
        free(block);
    }
    if (tag) *tag = 0;
    if (kept) put_workspace(kept, failed ? NULL : tag);
    return failed;
}

/* The backward of one image, its forward already run into sc: adds its weight gradients to
   sc's sums and, unless gx is NULL, writes the input's gradient (C×H×W); gout_max: peak(gout).
   Returns 1, having stopped part-way, where a bound fails for windows left out (see BOUND). */
static int image_backward(const Shape *shape, const Scratch *sc, const float *gout, float gout_max,
                          float *gx) {
    const Shape local = *shape, *g = &local; /* see `vec` */
    const Windows *win = &sc->win;
    int K = g->K, Lp = g->Lp, leaves_out = win->L < g->L;
    size_t KL = (size_t)K * Lp, HW = (size_t)g->H * g->W;
    float scale = 1.0f / sqrtf((float)g->C), *gz = sc->gz, *gy = sc->gy, *ga = sc->e, *gX = sc->gX;
    /* The output's gradient, of the windows run over into lanes; the rest reaches the bias only,
       through the last iteration's ReLU (if inside), where their output is the bias. */
    clear_padding(g, win, gz, 0, g->Op); /* the lanes run over, of every output */
    for (int o = 0; o < g->O; o++) {
        const float *row = gout + (size_t)o * g->L;
        float left_out = 0.0f;
        for (int r = 0; r < g->h; r++) {
            for (int q = 0; q < win->first[r]; q++) left_out += row[r * g->w + q];
            for (int q = win->first[r] + win->count[r]; q < g->w; q++) left_out += row[r * g->w + q];
            memcpy(gz + (size_t)o * Lp + win->lane[r], row + r * g->w + win->first[r],
                   win->count[r] * sizeof(float));
        }
        sc->sum_b[o * LB] += g->relu && sc->bias[o] <= 0.0f ? 0.0f : left_out;
    }
    if (gx) memset(gX, 0, (size_t)g->CK * Lp * sizeof(float));
    for (int t = g->T - 1; t >= 0; t--) {
        const float *at = shares_at(g, sc, t), *yt = output_at(g, sc, t);
        /* Through the ReLU (y > 0 exactly where it passed) to the bottom-up product; of the
           lanes run over only, as everything below. */
        for (int o = 0; o < g->Op; o++)
            for (size_t n = (size_t)o * Lp; n < (size_t)o * Lp + win->Lp; n++)
                gy[n] = g->relu && yt[n] <= 0.0f ? 0.0f : gz[n];
        if (leaves_out && !(larger(planes_peak(g, gy, g->O, win->Lp), gout_max) * sc->reach_bu < BOUND))
            return 1;
        for (int o = 0; o < g->Op; o++) {
            vec acc = {0};
            for (int l0 = 0; l0 < win->Lp; l0 += LB) acc += load(gy + (size_t)o * Lp + l0);
            store(sc->sum_b + o * LB, load(sc->sum_b + o * LB) + acc);
        }
        weight_sums(g, win, sc->X, at, gy, sc->sum_bu);
        /* The attended input's gradient, W_bu gy, into the windows' where wanted and into the
           shares' as e is formed (⊙ X / √C: what `agreement` computes, W_bu for W_td); the
           shares' is not wanted at t = 0, N(1) depending on nothing. */
        if (gx) {
            for (int ij = 0; ij < K; ij++) memset(ga + (size_t)ij * Lp, 0, (size_t)win->Lp * sizeof(float));
            for (int l0 = 0; l0 < win->Lp; l0 += LB)
                for (int ck = 0; ck < g->CK; ck++) {
                    float *gar = ga + (ck % K) * Lp + l0, *gXr = gX + (size_t)ck * Lp + l0;
                    vec gxa = predict(g, ck, l0, sc->wbu, gy);
                    store(gar, load(gar) + scale * gxa * load(sc->X + (size_t)ck * Lp + l0));
                    store(gXr, load(gXr) + gxa * load(at + (ck % K) * Lp + l0));
                }
        } else if (t > 0) {
            agreement(g, win, sc->X, sc->wbu, gy, ga);
        }
        if (t == 0) break;
        /* Through the softmax of each pixel's windows, ge = a ⊙ (ga − Σ_pixel a ⊙ ga) (ga being
           e's gradient, the 1/√C already in); ge overwrites ga. */
        for (int ij = 0; ij < K; ij++)
            for (int n = ij * Lp; n < ij * Lp + win->Lp; n++) ga[n] *= at[n];
        memset(sc->pixels, 0, HW * sizeof(float));
        pixel_sums(g, win, ga, sc->pixels);
        WITH_STRIDE(g, FOR_WINDOW_ROWS(g, win, n, p, width) for (int q = 0; q < width; q++)
            ga[n + q] -= at[n + q] * sc->pixels[p + q * s]);
        clear_padding(g, win, ga, K, K);
        /* ... then through e = Σ_c x̂ ⊙ X and x̂ = W_td y of the iteration before. */
        const float *yp = output_at(g, sc, t - 1);
        weight_sums(g, win, sc->X, ga, yp, sc->sum_td);
        product(g, win, sc->X, ga, sc->wtd, sc->zeros, gz, 0);
        if (gx)
            for (int l0 = 0; l0 < win->Lp; l0 += LB)
                for (int ck = 0; ck < g->CK; ck++) {
                    float *gXr = gX + (size_t)ck * Lp + l0;
                    store(gXr, load(gXr) + load(ga + (ck % K) * Lp + l0) * predict(g, ck, l0, sc->wtd, yp));
                }
    }
    if (gx) { /* all windows: the input's gradient reaches its zeros too */
        memset(gx, 0, g->C * HW * sizeof(float));
        for (int c = 0; c < g->C; c++) pixel_sums(g, win, gX + (size_t)c * KL, gx + (size_t)c * HW);
    }
    return 0;
}

/* Gradients of the inputs and weights given the output's gradient gout (groups×images×O×L), the
   arguments otherwise as attconv_forward's, `tag` the forward's (its iterations are read where
   still kept, and recomputed where not). Each task writes its own weight gradients, part
   `part` of group `group` at gwbu, gwtd [group][part] ((C·k²)×O) and gbias [group][part] (O), for
   the caller to sum in a fixed order; gx (groups×images×C×H×W) is written unless it is NULL.
   Returns how many tasks ran out of memory. */
int attconv_backward(const int *dims, int groups, int images, int parts, int threads,
                     const float *x, const float *wbu, const float *wtd, const float *bias,
                     const float *gout, float *gx, float *gwbu, float *gwtd, float *gbias, long long tag) {
    Shape g = shape_of(dims);
    size_t HW = (size_t)g.H * g.W, WO = (size_t)g.CK * g.O, OL = (size_t)g.O * g.L;
    int failed = 0;
    Kept *kept = find_workspace(tag, dims, groups, images);
#pragma omp parallel for schedule(dynamic) num_threads(threads) reduction(+ : failed)
    for (int task = 0; task < groups * parts; task++) {
        int group, first, end;
        Scratch sc;
        float *block = start_task(&g, 1, task, images, parts, wbu, wtd, bias, &sc, &group, &first, &end);
        if (!block) {
            failed++;
            continue;
        }
        /* Where a bound fails part-way through an image's backward, its sums are spoilt: the
           task's images all run again over all windows (rare: numbers near overflow). */
        int all = gx != NULL;
        for (int b = first; b < end; b++) {
            size_t image = (size_t)group * images + b;
            const float *xb = x + image * g.C * HW, *gb = gout + image * OL;
            float gout_max = peak(gb, OL);
            int all_here = all || !(gout_max <= FLT_MAX);
            if (kept && (!all_here || kept->ran_all[image])) {
                /* The windows the forward ran over: those image_forward would choose here. */
                start_image(&g, xb, &sc, kept->ran_all[image]);
                copy_kept(&g, &sc, kept->data + image * kept_per_image(&g), 0);
            } else if (image_forward(&g, xb, &sc, all_here)) {
                image_forward(&g, xb, &sc, 1);
            }
            if (image_backward(&g, &sc, gb, gout_max, gx ? gx + image * g.C * HW : NULL)) {
                all = 1, b = first - 1;
                memset(sc.sum_bu, 0, (size_t)g.CK * g.Op * LB * sizeof(float));
                memset(sc.sum_td, 0, (size_t)g.CK * g.Op * LB * sizeof(float));
                memset(sc.sum_b, 0, (size_t)g.Op * LB * sizeof(float));
            }
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
    put_workspace(kept, NULL);
    return failed;
}
