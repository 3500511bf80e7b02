/*
 * util.c - test helpers (see util.h).
 */
#include "util.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

int check_failures = 0;
int check_count = 0;

int check_exit(const char *name)
{
    printf("%s: %d checks, %d failures\n", name, check_count, check_failures);
    return check_failures ? 1 : 0;
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory (%zu bytes)\n", n);
        abort();
    }
    return p;
}

uint64_t rng_next(uint64_t *s)
{
    /* splitmix64: small, good enough for test data */
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double rng_uniform(uint64_t *s, double lo, double hi)
{
    return lo + (hi - lo) * ((double)(rng_next(s) >> 11) / 9007199254740992.0);
}

void fill_random(uint64_t *s, double *v, int64_t n, double lo, double hi)
{
    for (int64_t i = 0; i < n; i++) v[i] = rng_uniform(s, lo, hi);
}

void round_to(neat_dtype dtype, double *v, int64_t n)
{
    if (dtype == NEAT_FLOAT32)
        for (int64_t i = 0; i < n; i++) v[i] = (float)v[i];
}

neat_device tb_device(void)
{
    neat_device d = {NEAT_DEVICE_CPU, 0};
    return d;
}

static size_t esize(neat_dtype d)
{
    return d == NEAT_FLOAT64 ? 8 : 4;
}

static void store(tbuf *b, int64_t i, double v)
{
    if (b->t.dtype == NEAT_FLOAT64)
        ((double *)b->storage)[i] = v;
    else
        ((float *)b->storage)[i] = (float)v;
}

double tb_storage_at(const tbuf *b, int64_t i)
{
    return b->t.dtype == NEAT_FLOAT64 ? ((const double *)b->storage)[i]
                                      : ((const float *)b->storage)[i];
}

tbuf tb_make(neat_dtype dtype, int64_t rows, int64_t cols, int layout, const double *vals,
             double fill)
{
    tbuf b;
    memset(&b, 0, sizeof b);
    int64_t rs = cols, cs = 1, n = rows * cols;
    if (layout == LAYOUT_TRANSPOSED)
        rs = 1, cs = rows;
    else if (layout == LAYOUT_PADDED)
        rs = cols + 3, n = rows * (cols + 3);
    b.storage_elems = n;
    b.storage = xmalloc((size_t)(n > 0 ? n : 1) * esize(dtype));
    b.t.data = b.storage;
    b.t.dtype = dtype;
    b.t.ndim = 2;
    b.t.sizes[0] = rows, b.t.sizes[1] = cols;
    b.t.strides[0] = rs, b.t.strides[1] = cs;
    b.t.device.type = NEAT_DEVICE_CPU;
    for (int64_t i = 0; i < n; i++) store(&b, i, fill);
    if (vals)
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < cols; j++) store(&b, i * rs + j * cs, vals[i * cols + j]);
    return b;
}

tbuf tb_make1(neat_dtype dtype, int64_t n, int64_t stride, const double *vals, double fill)
{
    tbuf b;
    memset(&b, 0, sizeof b);
    int64_t total = n > 0 ? (n - 1) * stride + 1 : 0;
    b.storage_elems = total;
    b.storage = xmalloc((size_t)(total > 0 ? total : 1) * esize(dtype));
    b.t.data = b.storage;
    b.t.dtype = dtype;
    b.t.ndim = 1;
    b.t.sizes[0] = n;
    b.t.strides[0] = stride;
    b.t.device.type = NEAT_DEVICE_CPU;
    for (int64_t i = 0; i < total; i++) store(&b, i, fill);
    if (vals)
        for (int64_t i = 0; i < n; i++) store(&b, i * stride, vals[i]);
    return b;
}

/* Marks which storage elements the view covers. */
static char *view_mask(const tbuf *b)
{
    char *m = calloc((size_t)(b->storage_elems > 0 ? b->storage_elems : 1), 1);
    int64_t rows = b->t.sizes[0], cols = b->t.ndim == 2 ? b->t.sizes[1] : 1;
    int64_t rs = b->t.strides[0], cs = b->t.ndim == 2 ? b->t.strides[1] : 0;
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) m[i * rs + j * cs] = 1;
    return m;
}

void tb_read(const tbuf *b, double *out)
{
    int64_t rows = b->t.sizes[0], cols = b->t.ndim == 2 ? b->t.sizes[1] : 1;
    int64_t rs = b->t.strides[0], cs = b->t.ndim == 2 ? b->t.strides[1] : 0;
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) out[i * cols + j] = tb_storage_at(b, i * rs + j * cs);
}

static int same(double a, double b)
{
    return (isnan(a) && isnan(b)) || a == b;
}

int tb_padding_is(const tbuf *b, double fill)
{
    char *m = view_mask(b);
    int ok = 1;
    for (int64_t i = 0; i < b->storage_elems; i++)
        if (!m[i] && !same(tb_storage_at(b, i), fill))
            ok = 0;
    free(m);
    return ok;
}

int tb_all_are(const tbuf *b, double fill)
{
    for (int64_t i = 0; i < b->storage_elems; i++)
        if (!same(tb_storage_at(b, i), fill))
            return 0;
    return 1;
}

void tb_free(tbuf *b)
{
    free(b->storage);
    b->storage = NULL;
}

double rel_err(const double *a, const double *b, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        if (isnan(a[i]) != isnan(b[i]))
            return NAN;
        double d = a[i] - b[i];
        num += d * d;
        den += b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

void print_mismatches(const char *what, const double *got, const double *ref, int64_t rows,
                      int64_t cols, double tol)
{
    double scale = 0;
    for (int64_t i = 0; i < rows * cols; i++) scale = fmax(scale, fabs(ref[i]));
    int shown = 0;
    double worst = 0;
    for (int64_t i = 0; i < rows * cols; i++) {
        double d = fabs(got[i] - ref[i]);
        if (d > worst || isnan(d))
            worst = d;
        if ((d > tol * (scale > 0 ? scale : 1) || isnan(d)) && shown < 5) {
            fprintf(stderr, "    %s[%lld, %lld]: got %.17g, expected %.17g\n", what,
                    (long long)(i / cols), (long long)(i % cols), got[i], ref[i]);
            shown++;
        }
    }
    fprintf(stderr, "    %s: worst abs difference %.3g (max |ref| %.3g)\n", what, worst, scale);
}

static int64_t view_offset(const tbuf *b, int64_t i, int64_t j)
{
    return i * b->t.strides[0] + (b->t.ndim == 2 ? j * b->t.strides[1] : 0);
}

double tb_get(const tbuf *b, int64_t i, int64_t j)
{
    return tb_storage_at(b, view_offset(b, i, j));
}

void tb_set(tbuf *b, int64_t i, int64_t j, double v)
{
    store(b, view_offset(b, i, j), v);
}

typedef struct pf_chunk {
    int64_t begin, end;
    neat_parallel_body body;
    void *ctx;
} pf_chunk;

static void *pf_run(void *p)
{
    pf_chunk *c = p;
    c->body(c->begin, c->end, c->ctx);
    return NULL;
}

void pthread_parallel_for(int64_t begin, int64_t end, int64_t grain, neat_parallel_body body,
                          void *ctx, void *user)
{
    int64_t max_chunks = *(int *)user, n = end - begin;
    if (n <= 0)
        return;
    if (max_chunks > 64)
        max_chunks = 64;
    if (max_chunks < 1)
        max_chunks = 1;
    if (grain < 1)
        grain = 1;
    int64_t chunks = (n + grain - 1) / grain;
    if (chunks > max_chunks)
        chunks = max_chunks;
    pf_chunk c[64];
    pthread_t th[64];
    int started[64];
    for (int64_t i = 0; i < chunks; i++) {
        c[i].begin = begin + n * i / chunks;
        c[i].end = begin + n * (i + 1) / chunks;
        c[i].body = body, c[i].ctx = ctx;
        /* a thread that cannot start runs its chunk here rather than losing it */
        started[i] = pthread_create(&th[i], NULL, pf_run, &c[i]) == 0;
        if (!started[i])
            pf_run(&c[i]);
    }
    for (int64_t i = 0; i < chunks; i++)
        if (started[i])
            pthread_join(th[i], NULL);
}
