/*
 * test_gemm.c - ops/gemm.c against a naive loop: odd sizes (0, 1, not multiples of the register
 * tile or cache blocks), every transpose / stride combination, beta 0 over NaN-filled C,
 * beta != 0, alpha != 1, the skinny paths (one dimension <= 16), and bit-identical results for
 * any lane count; the same for neat_gemm_ex (a fused second product of inner size K2 and an
 * added D: none, a row-broadcast bias, or a full strided matrix), plus NaN propagation
 * through it.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "gemm.h"
#include "util.h"

/* Runs lanes in reverse order: any dependence of the result on lane order would show. */
static void reverse_for(int64_t begin, int64_t end, int64_t grain, neat_parallel_body body,
                        void *ctx, void *user)
{
    (void)grain, (void)user;
    for (int64_t i = end - 1; i >= begin; i--) body(i, i + 1, ctx);
}

static uint64_t rng = 42;

static void run_case(neat_dtype dt, int64_t M, int64_t N, int64_t K, int la, int lb, int lc,
                     double alpha, double beta)
{
    double *a = xmalloc((size_t)(M * K + 1) * sizeof(double));
    double *b = xmalloc((size_t)(K * N + 1) * sizeof(double));
    double *c0 = xmalloc((size_t)(M * N + 1) * sizeof(double));
    double *ref = xmalloc((size_t)(M * N + 1) * sizeof(double));
    double *got = xmalloc((size_t)(M * N + 1) * sizeof(double));
    fill_random(&rng, a, M * K, -1, 1);
    fill_random(&rng, b, K * N, -1, 1);
    fill_random(&rng, c0, M * N, -1, 1);
    round_to(dt, a, M * K), round_to(dt, b, K * N), round_to(dt, c0, M * N);
    double fill = beta == 0 ? NAN : 0.25;
    tbuf A = tb_make(dt, M, K, la, a, 0.5), B = tb_make(dt, K, N, lb, b, 0.5);
    tbuf C = tb_make(dt, M, N, lc, beta == 0 ? NULL : c0, fill);
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = 0;
            for (int64_t k = 0; k < K; k++) s += a[i * K + k] * b[k * N + j];
            ref[i * N + j] = alpha * s + (beta == 0 ? 0 : beta * c0[i * N + j]);
        }
    void *scratch = xmalloc(neat_gemm_scratch_bytes_mnk(dt, M, N, K, 1));
    neat_gemm(dt, M, N, K, alpha, A.t.data, A.t.strides[0], A.t.strides[1], B.t.data,
              B.t.strides[0], B.t.strides[1], beta, C.t.data, C.t.strides[0], C.t.strides[1],
              scratch, NULL);
    tb_read(&C, got);
    double err = rel_err(got, ref, M * N), tol = dt == NEAT_FLOAT64 ? 1e-13 : 2e-6;
    int nan_free = 1;
    for (int64_t i = 0; i < M * N; i++)
        if (isnan(got[i]))
            nan_free = 0;
    CHECK(nan_free && err <= tol, "%s M=%lld N=%lld K=%lld layouts A%d B%d C%d alpha=%g beta=%g: "
          "rel err %.3g (tol %g)%s",
          dt == NEAT_FLOAT64 ? "f64" : "f32", (long long)M, (long long)N, (long long)K, la, lb,
          lc, alpha, beta, err, tol, nan_free ? "" : ", NaN in output");
    if (!(nan_free && err <= tol))
        print_mismatches("C", got, ref, M, N, tol);
    CHECK(tb_padding_is(&C, fill), "C's padding was written (M=%lld N=%lld K=%lld)",
          (long long)M, (long long)N, (long long)K);

    /* any lane count, any lane order: the same bits */
    if (M * N * K > 0) {
        tbuf C2 = tb_make(dt, M, N, lc, beta == 0 ? NULL : c0, fill);
        void *scratch7 = xmalloc(neat_gemm_scratch_bytes_mnk(dt, M, N, K, 7));
        neat_exec ex = {reverse_for, NULL, 7, NULL, 0, NULL, NULL, NULL};
        neat_gemm(dt, M, N, K, alpha, A.t.data, A.t.strides[0], A.t.strides[1], B.t.data,
                  B.t.strides[0], B.t.strides[1], beta, C2.t.data, C2.t.strides[0],
                  C2.t.strides[1], scratch7, &ex);
        size_t bytes = (size_t)C.storage_elems * (dt == NEAT_FLOAT64 ? 8 : 4);
        CHECK(memcmp(C.storage, C2.storage, bytes) == 0,
              "7 lanes differ from 1 lane (M=%lld N=%lld K=%lld)", (long long)M, (long long)N,
              (long long)K);
        free(scratch7);
        tb_free(&C2);
    }
    free(scratch);
    tb_free(&A), tb_free(&B), tb_free(&C);
    free(a), free(b), free(c0), free(ref), free(got);
}

/* neat_gemm_ex: C = alpha A B + alpha2 A2 B2 + beta C + D. dmode: 0 no D, 1 a bias broadcast
 * over rows (rsd = 0, element stride 2), 2 a full (M, N) D in layout ld. */
static void run_ex_case(neat_dtype dt, int64_t M, int64_t N, int64_t K, int64_t K2, int la,
                        int lb, int lc, int l2, int dmode, double alpha, double alpha2,
                        double beta)
{
    size_t es = dt == NEAT_FLOAT64 ? 8 : 4;
    double *a = xmalloc((size_t)(M * K + 1) * sizeof(double));
    double *b = xmalloc((size_t)(K * N + 1) * sizeof(double));
    double *a2 = xmalloc((size_t)(M * K2 + 1) * sizeof(double));
    double *b2 = xmalloc((size_t)(K2 * N + 1) * sizeof(double));
    double *dv = xmalloc((size_t)(M * N + 1) * sizeof(double));
    double *c0 = xmalloc((size_t)(M * N + 1) * sizeof(double));
    double *ref = xmalloc((size_t)(M * N + 1) * sizeof(double));
    double *got = xmalloc((size_t)(M * N + 1) * sizeof(double));
    fill_random(&rng, a, M * K, -1, 1), fill_random(&rng, b, K * N, -1, 1);
    fill_random(&rng, a2, M * K2, -1, 1), fill_random(&rng, b2, K2 * N, -1, 1);
    fill_random(&rng, dv, M * N, -1, 1), fill_random(&rng, c0, M * N, -1, 1);
    round_to(dt, a, M * K), round_to(dt, b, K * N), round_to(dt, a2, M * K2);
    round_to(dt, b2, K2 * N), round_to(dt, dv, M * N), round_to(dt, c0, M * N);
    double fill = beta == 0 ? NAN : 0.25;
    tbuf A = tb_make(dt, M, K, la, a, 0.5), B = tb_make(dt, K, N, lb, b, 0.5);
    tbuf A2 = tb_make(dt, M, K2, l2, a2, 0.5);
    tbuf B2 = tb_make(dt, K2, N, (l2 + 1) % LAYOUT_COUNT, b2, 0.5);
    tbuf D;
    neat_gemm_extra ex = {K2, alpha2, A2.t.data, A2.t.strides[0], A2.t.strides[1], B2.t.data,
                          B2.t.strides[0], B2.t.strides[1], NULL, 0, 0};
    if (dmode == 1) {
        D = tb_make1(dt, N, 2, dv, 0.5);
        ex.D = D.t.data, ex.rsd = 0, ex.csd = 2;
    } else if (dmode == 2) {
        D = tb_make(dt, M, N, (l2 + 2) % LAYOUT_COUNT, dv, 0.5);
        ex.D = D.t.data, ex.rsd = D.t.strides[0], ex.csd = D.t.strides[1];
    }
    tbuf C = tb_make(dt, M, N, lc, beta == 0 ? NULL : c0, fill);
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = 0, s2 = 0;
            for (int64_t k = 0; k < K; k++) s += a[i * K + k] * b[k * N + j];
            for (int64_t k = 0; k < K2; k++) s2 += a2[i * K2 + k] * b2[k * N + j];
            double d = dmode == 1 ? dv[j] : dmode == 2 ? dv[i * N + j] : 0;
            ref[i * N + j] = alpha * s + alpha2 * s2 + (beta == 0 ? 0 : beta * c0[i * N + j]) + d;
        }
    void *scratch = xmalloc(neat_gemm_ex_scratch_bytes(dt, M, N, K, K2, 1));
    neat_gemm_ex(dt, M, N, K, alpha, A.t.data, A.t.strides[0], A.t.strides[1], B.t.data,
                 B.t.strides[0], B.t.strides[1], beta, C.t.data, C.t.strides[0], C.t.strides[1],
                 &ex, scratch, NULL);
    tb_read(&C, got);
    double err = rel_err(got, ref, M * N), tol = dt == NEAT_FLOAT64 ? 1e-13 : 2e-6;
    int nan_free = 1;
    for (int64_t i = 0; i < M * N; i++)
        if (isnan(got[i]))
            nan_free = 0;
    CHECK(nan_free && err <= tol, "ex %s M=%lld N=%lld K=%lld K2=%lld layouts A%d B%d C%d 2:%d "
          "D%d alpha=%g alpha2=%g beta=%g: rel err %.3g (tol %g)%s",
          dt == NEAT_FLOAT64 ? "f64" : "f32", (long long)M, (long long)N, (long long)K,
          (long long)K2, la, lb, lc, l2, dmode, alpha, alpha2, beta, err, tol,
          nan_free ? "" : ", NaN in output");
    if (!(nan_free && err <= tol))
        print_mismatches("C", got, ref, M, N, tol);
    CHECK(tb_padding_is(&C, fill), "ex: C's padding was written (M=%lld N=%lld K=%lld)",
          (long long)M, (long long)N, (long long)K);

    /* any lane count, any lane order: the same bits */
    if (M * N > 0) {
        static const int lane_counts[] = {2, 3, 7};
        for (int t = 0; t < 3; t++) {
            int lanes = lane_counts[t];
            tbuf C2 = tb_make(dt, M, N, lc, beta == 0 ? NULL : c0, fill);
            void *sl = xmalloc(neat_gemm_ex_scratch_bytes(dt, M, N, K, K2, lanes));
            neat_exec exl = {reverse_for, NULL, lanes, NULL, 0, NULL, NULL, NULL};
            neat_gemm_ex(dt, M, N, K, alpha, A.t.data, A.t.strides[0], A.t.strides[1],
                         B.t.data, B.t.strides[0], B.t.strides[1], beta, C2.t.data,
                         C2.t.strides[0], C2.t.strides[1], &ex, sl, &exl);
            CHECK(memcmp(C.storage, C2.storage, (size_t)C.storage_elems * es) == 0,
                  "ex: %d lanes differ from 1 lane (M=%lld N=%lld K=%lld K2=%lld)", lanes,
                  (long long)M, (long long)N, (long long)K, (long long)K2);
            free(sl);
            tb_free(&C2);
        }
    }
    free(scratch);
    if (dmode)
        tb_free(&D);
    tb_free(&A), tb_free(&B), tb_free(&A2), tb_free(&B2), tb_free(&C);
    free(a), free(b), free(a2), free(b2), free(dv), free(c0), free(ref), free(got);
}

/* A NaN in A2 reaches its row of C, a NaN in D its element, on the fused (packed) path. */
static void run_ex_nan(neat_dtype dt, int64_t M, int64_t N, int64_t K, int64_t K2)
{
    double *v = xmalloc((size_t)((M + N) * (K + K2) + N + 1) * sizeof(double));
    fill_random(&rng, v, (M + N) * (K + K2) + N, -1, 1);
    tbuf A = tb_make(dt, M, K, LAYOUT_CONTIG, v, 0), B = tb_make(dt, K, N, LAYOUT_TRANSPOSED, v, 0);
    tbuf A2 = tb_make(dt, M, K2, LAYOUT_CONTIG, v + M * K, 0);
    tbuf B2 = tb_make(dt, K2, N, LAYOUT_CONTIG, v + N * K, 0);
    tbuf D = tb_make1(dt, N, 1, v + M * K + N * K, 0);
    int64_t ri = M / 2, cj = N - 1;
    tb_set(&A2, ri, K2 - 1, NAN);
    tb_set(&D, cj, 0, NAN);
    tbuf C = tb_make(dt, M, N, LAYOUT_CONTIG, NULL, 0);
    neat_gemm_extra ex = {K2, 0.5, A2.t.data, K2, 1, B2.t.data, N, 1, D.t.data, 0, 1};
    void *scratch = xmalloc(neat_gemm_ex_scratch_bytes(dt, M, N, K, K2, 1));
    neat_gemm_ex(dt, M, N, K, 1.0, A.t.data, K, 1, B.t.data, B.t.strides[0], B.t.strides[1], 0.0,
                 C.t.data, N, 1, &ex, scratch, NULL);
    int ok = 1;
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++)
            if (isnan(tb_get(&C, i, j)) != (i == ri || j == cj))
                ok = 0;
    CHECK(ok, "ex: NaN in A2 / D did not propagate exactly to its row / column (M=%lld N=%lld)",
          (long long)M, (long long)N);
    free(scratch);
    tb_free(&A), tb_free(&B), tb_free(&A2), tb_free(&B2), tb_free(&D), tb_free(&C);
    free(v);
}

int main(void)
{
    /* small shapes get every layout combination; large ones a few */
    static const int64_t small[][3] = {
        {1, 1, 1}, {0, 5, 3}, {5, 0, 3}, {5, 3, 0}, {3, 1, 7}, {1, 9, 4},
        {17, 33, 19}, {14, 32, 5}, {29, 7, 13}, {8, 24, 9}, {2, 40, 3},
    };
    static const int64_t large[][3] = {
        {15, 31, 385},  /* K over both KC */
        {300, 70, 50},  /* M over MC (f64) */
        {29, 1030, 7},  /* N over NC */
        {300, 8, 64},   /* skinny N: computed transposed */
        {341, 5, 20},   /* M over MC (f32), skinny */
        {8, 300, 257},  /* skinny M */
        {97, 113, 263},
        {2000, 7, 600}, /* skinny N, long K: the dot path, split over lanes */
        {9, 2000, 600}, /* skinny M: the direct path, K slices, split over lanes */
        {3, 37, 700},   /* skinny M, short last strip */
    };
    static const double ab[][2] = {{1, 0}, {-0.7, 1}, {1.3, 0.5}, {2, 0}};
    int n_small = (int)(sizeof small / sizeof small[0]);
    int n_large = (int)(sizeof large / sizeof large[0]);
    for (int d = 0; d < 2; d++) {
        neat_dtype dt = d ? NEAT_FLOAT64 : NEAT_FLOAT32;
        int idx = 0;
        for (int s = 0; s < n_small; s++)
            for (int la = 0; la < LAYOUT_COUNT; la++)
                for (int lb = 0; lb < LAYOUT_COUNT; lb++)
                    for (int lc = 0; lc < LAYOUT_COUNT; lc++, idx++)
                        run_case(dt, small[s][0], small[s][1], small[s][2], la, lb, lc,
                                 ab[idx % 4][0], ab[idx % 4][1]);
        for (int s = 0; s < n_large; s++)
            for (int l = 0; l < LAYOUT_COUNT; l++, idx++)
                run_case(dt, large[s][0], large[s][1], large[s][2], l, (l + 1) % LAYOUT_COUNT,
                         (l + 2) % LAYOUT_COUNT, ab[idx % 4][0], ab[idx % 4][1]);
    }

    /* neat_gemm_ex: every small shape with every C layout, K2, D mode and operand layouts
     * cycled; large shapes cover K over KC (the K2 rows ride on the last slice only), N over NC,
     * the swapped (N < NR) and skinny (unfused) paths, and K = 0 */
    static const int64_t ex_shapes[][3] = {
        {1, 1, 1}, {5, 3, 0}, {3, 1, 7}, {1, 9, 4}, {17, 33, 19}, {14, 32, 5}, {29, 7, 13},
        {8, 24, 9}, {2, 40, 3}, {15, 31, 385}, {29, 1030, 7}, {300, 20, 50}, {97, 113, 263},
        {300, 8, 64}, {8, 300, 257}, {2000, 7, 600}, {45, 70, 800},
    };
    static const int64_t k2s[] = {0, 1, 3, 8};
    static const double ex_ab[][3] = {{1, 1, 0}, {-0.7, 2.5, 1}, {1.3, -0.5, 0.5}, {2, 0.3, 0}};
    int n_ex = (int)(sizeof ex_shapes / sizeof ex_shapes[0]);
    for (int d = 0; d < 2; d++) {
        neat_dtype dt = d ? NEAT_FLOAT64 : NEAT_FLOAT32;
        int idx = 0;
        for (int s = 0; s < n_ex; s++) {
            int big = ex_shapes[s][0] * ex_shapes[s][1] * ex_shapes[s][2] > 100000;
            for (int lc = 0; lc < LAYOUT_COUNT; lc++)
                for (int k2 = 0; k2 < 4; k2++)
                    for (int dm = 0; dm < 3; dm++, idx++) {
                        if (big && (lc + k2 + dm) % 3 != 0) /* a third, every D mode */
                            continue;
                        const double *ab3 = ex_ab[idx % 4];
                        run_ex_case(dt, ex_shapes[s][0], ex_shapes[s][1], ex_shapes[s][2],
                                    k2s[k2], idx % LAYOUT_COUNT, (idx / 3) % LAYOUT_COUNT, lc,
                                    (idx / 9) % LAYOUT_COUNT, dm, ab3[0], ab3[1], ab3[2]);
                    }
        }
        run_ex_nan(dt, 37, 70, 400, 3);
        run_ex_nan(dt, 300, 20, 50, 8); /* swapped */
    }
    return check_exit("test_gemm");
}
