/*
 * Every collective of the public API, over real rank processes, against the
 * exact serial reference of ref.h: ranks {1,2,3,4,8} x {shm, tcp} x every
 * dtype x every valid reduction op x counts {0, 1, 37, large}, in place and
 * out of place, every root; both allreduce (ring, recursive doubling) and
 * broadcast (chain, tree) algorithms forced by environment; allreduce
 * through staging memory on shm (forced, so small counts take it too),
 * with ranks mixing in-place and out-of-place calls, and its fallback to
 * the ring when one rank cannot create its region; several
 * non-blocking operations in flight; all ranks' reduction results must be
 * bit-identical.
 *
 * One spawn per (ranks, transport, algorithm set); the sweep runs inside it.
 * A data mismatch is reported (op, dtype, count, ranks, transport, first
 * wrong index, expected vs got) and the sweep continues; a failing call
 * status ends the rank, since the ranks may then no longer agree on the
 * sequence of collectives.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "ref.h"
#include "tests_common.h"

enum {
    PART_ALL,
    PART_ALGO,
    PART_SPLIT,    /* allreduce split over the shared slots (shm, 3+ ranks) */
    PART_STAGE,    /* allreduce, reduce, reduce_scatter through staging (shm) */
    PART_FALLBACK, /* the same, one rank cannot make its region: ring */
};

#define LARGE_COUNT 300001 /* odd, > 1 MiB for 4-byte types */
#define MAX_REPORTS 25
#define SENTINEL 0xA5

typedef struct colls_param {
    int size;
    mc_transport_kind_t transport;
    int part;
    const char *algo_allreduce; /* NULL = engine's choice */
    const char *algo_broadcast;
    const char *chunk_bytes;  /* MOONCAKE_CHUNK_BYTES, NULL = default */
    const char *ft;           /* MOONCAKE_FT, NULL = default (on) */
    const char *auto_recover; /* MOONCAKE_AUTO_RECOVER, NULL = default */
    const char *name;
    unsigned *barrier_cnt; /* shared (MAP_SHARED) counters */
} colls_param_t;

typedef struct tc {
    mc_comm_h comm;
    int rank, size;
    const colls_param_t *p;
    int fails;
    uint64_t hash; /* FNV over every allreduce result, in order */
    uint64_t seed; /* advanced per case so cases differ */
    char what[256];
} tc_t;

static const mc_dtype_t all_dtypes[MC_DTYPE_COUNT] = {
    MC_INT8,     MC_UINT8,   MC_INT16,   MC_UINT16,      MC_INT32,
    MC_UINT32,   MC_INT64,   MC_UINT64,  MC_BOOL,        MC_FLOAT16,
    MC_BFLOAT16, MC_FLOAT32, MC_FLOAT64, MC_FLOAT8_E4M3, MC_FLOAT8_E5M2};

static void *xalloc(size_t bytes)
{
    void *p = calloc(1, bytes ? bytes : 1); /* zeroed: no uninit reads */
    if (!p) {
        fprintf(stderr, "out of memory (%zu bytes)\n", bytes);
        _exit(3);
    }
    return p;
}

static int valid_ops(mc_dtype_t d, mc_redop_t *ops)
{
    int n = 0;
    for (int o = 0; o < MC_REDOP_COUNT; o++)
        if (ref_op_valid(d, (mc_redop_t)o)) ops[n++] = (mc_redop_t)o;
    return n;
}

static void set_what(tc_t *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void set_what(tc_t *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->what, sizeof(t->what), fmt, ap);
    va_end(ap);
}

static void report(tc_t *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void report(tc_t *t, const char *fmt, ...)
{
    t->fails++;
    if (t->fails > MAX_REPORTS) return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    fprintf(stderr, "[rank %d] ranks=%d transport=%s algo=%s/%s: %s: %s\n",
            t->rank, t->size, ref_tname(t->p->transport),
            t->p->algo_allreduce ? t->p->algo_allreduce : "auto",
            t->p->algo_broadcast ? t->p->algo_broadcast : "auto", t->what, buf);
    fflush(stderr);
}

/* A failing call status: report and end this rank's sweep. */
#define CALL(t, expr)                                                          \
    do {                                                                       \
        mc_status_t st_ = (expr);                                              \
        if (st_ != MC_OK) {                                                    \
            report((t), "%s returned %s: %s (comm: %s)", #expr,                \
                   mc_status_str(st_), mc_last_error(),                        \
                   mc_comm_last_error((t)->comm));                             \
            return -1;                                                         \
        }                                                                      \
    } while (0)

/* Compare n elements; report the first difference. */
static void check(tc_t *t, const char *label, mc_dtype_t d, const void *got,
                  const void *exp, size_t n)
{
    size_t es = ref_dsize(d);
    if (memcmp(got, exp, n * es) == 0) return;
    size_t first = n, wrong = 0;
    for (size_t i = 0; i < n; i++) {
        if (memcmp((const char *)got + i * es, (const char *)exp + i * es,
                   es) == 0)
            continue;
        if (first == n) first = i;
        wrong++;
    }
    char e[64], g[64];
    ref_fmt(d, ref_get_bits(d, exp, first), e, sizeof(e));
    ref_fmt(d, ref_get_bits(d, got, first), g, sizeof(g));
    report(t,
           "%s: first wrong index %zu of %zu (%zu wrong): expected %s got %s",
           label, first, n, wrong, e, g);
}

/* check() a reduction's n results, elements base.. of the reference; an
 * fp16/fp8 AVG (ref_avg_premul) within its rounding bounds instead (the
 * ranks' bits still agree: check_hashes). */
static void check_red(tc_t *t, const char *label, mc_dtype_t d, mc_redop_t op,
                      uint64_t seed, size_t base, const void *got,
                      const void *exp, size_t n)
{
    if (!ref_avg_premul(d, op)) {
        check(t, label, d, got, exp, n);
        return;
    }
    size_t first = n, wrong = 0;
    double e0 = 0, e;
    for (size_t i = 0; i < n; i++) {
        if (ref_avg_close(d, seed, t->size, base + i, ref_get_bits(d, got, i),
                          &e))
            continue;
        if (first == n) first = i, e0 = e;
        wrong++;
    }
    if (!wrong) return;
    char g[64];
    ref_fmt(d, ref_get_bits(d, got, first), g, sizeof(g));
    report(t,
           "%s: first wrong index %zu of %zu (%zu wrong): expected %.6g "
           "within the rounding bounds, got %s",
           label, first, n, wrong, e0, g);
}

/* ------------------------------------------------------------------------ */
/* Reductions                                                               */
/* ------------------------------------------------------------------------ */

static int run_allreduce(tc_t *t, mc_dtype_t d, mc_redop_t op, size_t n, int ip)
{
    size_t es = ref_dsize(d);
    uint64_t seed = ++t->seed;
    unsigned char *send = xalloc(n * es), *recv = xalloc(n * es);
    unsigned char *exp = xalloc(n * es), *orig = xalloc(n * es);
    if (ip == 2) /* mixed: odd ranks in place, even ones not */
        ip = t->rank % 2;
    set_what(t, "allreduce dtype=%s op=%s count=%zu %s", ref_dname(d),
             ref_oname(op), n, ip ? "in-place" : "out-of-place");
    ref_fill_input(d, op, seed, t->rank, 0, send, n);
    memcpy(orig, send, n * es);
    for (size_t i = 0; i < n; i++)
        ref_put_bits(d, exp, i, ref_reduce_bits(d, op, seed, t->size, i));
    memset(recv, SENTINEL, n * es);
    unsigned char *out = ip ? send : recv;
    int rc = 0;
    mc_status_t st = mc_comm_allreduce(t->comm, send, out, n, d, op);
    if (st != MC_OK) {
        report(t, "returned %s: %s", mc_status_str(st), mc_last_error());
        rc = -1;
        goto out;
    }
    check_red(t, "result", d, op, seed, 0, out, exp, n);
    if (!ip) check(t, "sendbuf modified", d, send, orig, n);
    t->hash = ref_fnv(t->hash, out, n * es);
out:
    free(send), free(recv), free(exp), free(orig);
    return rc;
}

static int run_reduce_scatter(tc_t *t, mc_dtype_t d, mc_redop_t op, size_t rc_,
                              int ip)
{
    size_t es = ref_dsize(d), total = rc_ * (size_t)t->size;
    uint64_t seed = ++t->seed;
    unsigned char *send = xalloc(total * es), *recv = xalloc(rc_ * es);
    unsigned char *exp = xalloc(rc_ * es), *orig = xalloc(total * es);
    set_what(t, "reduce_scatter dtype=%s op=%s recvcount=%zu %s", ref_dname(d),
             ref_oname(op), rc_, ip ? "in-place" : "out-of-place");
    ref_fill_input(d, op, seed, t->rank, 0, send, total);
    memcpy(orig, send, total * es);
    for (size_t k = 0; k < rc_; k++)
        ref_put_bits(
            d, exp, k,
            ref_reduce_bits(d, op, seed, t->size, (size_t)t->rank * rc_ + k));
    memset(recv, SENTINEL, rc_ * es);
    unsigned char *out = ip ? send + (size_t)t->rank * rc_ * es : recv;
    int rc = 0;
    mc_status_t st = mc_comm_reduce_scatter(t->comm, send, out, rc_, d, op);
    if (st != MC_OK) {
        report(t, "returned %s: %s", mc_status_str(st), mc_last_error());
        rc = -1;
        goto out;
    }
    check_red(t, "result", d, op, seed, (size_t)t->rank * rc_, out, exp, rc_);
    if (!ip) check(t, "sendbuf modified", d, send, orig, total);
out:
    free(send), free(recv), free(exp), free(orig);
    return rc;
}

/* Uneven blocks, zeros included: rank r gets uneven_count(base, r). */
static size_t uneven_count(size_t base, int r, int size)
{
    if (size > 1 && r % 3 == 1) return 0;
    return base + (size_t)(r * 3) % 7;
}

/* fp16/fp8 AVG of large values (every rank the same one): the average is representable though the sum is not, and must come
 * out finite within the rounding bounds of ref_avg_close (a sum divided at
 * the end gave inf, NaN for e4m3). Allreduce in and out of place, reduce
 * at the last rank, reduce_scatter: n elements each (per rank for it). */
static int run_avg_range(tc_t *t, mc_dtype_t d, size_t n)
{
    size_t es = ref_dsize(d), S = (size_t)t->size;
    /* well within the range: the divisions may round up, and the sum of
     * the rounded parts may pass the average (at the largest value itself
     * it can overflow, in NCCL too) */
    double big = d == MC_FLOAT16 ? 48000 : d == MC_FLOAT8_E4M3 ? 320 : 40960;
    uint64_t bits = ref_double_to_bits(d, big);
    double v = ref_bits_to_double(d, bits);
    double tol = (0.5 * (double)S * ref_ulp(d, v / (double)S) +
                  0.5 * (double)(S - 1) * ref_ulp(d, v)) *
                 (1.0 + 1e-6);
    unsigned char *in = xalloc(n * S * es), *out = xalloc(n * S * es);
    int rc = 0;
    for (int k = 0; k < 4 && !rc; k++) {
        const char *what[] = {"allreduce", "allreduce in-place", "reduce",
                              "reduce_scatter"};
        set_what(t, "AVG range dtype=%s count=%zu %s (each rank %g)",
                 ref_dname(d), n, what[k], v);
        for (size_t i = 0; i < n * S; i++)
            ref_put_bits(d, in, i, bits);
        memset(out, SENTINEL, n * S * es);
        mc_status_t st;
        size_t m = n;
        unsigned char *res = out;
        if (k == 0) {
            st = mc_comm_allreduce(t->comm, in, out, n, d, MC_AVG);
        } else if (k == 1) {
            st = mc_comm_allreduce(t->comm, in, in, n, d, MC_AVG);
            res = in;
        } else if (k == 2) {
            st = mc_comm_reduce(t->comm, in, out, n, d, MC_AVG, t->size - 1);
            if (t->rank != t->size - 1) m = 0;
        } else {
            st = mc_comm_reduce_scatter(t->comm, in, out, n, d, MC_AVG);
        }
        if (st != MC_OK) {
            report(t, "returned %s: %s", mc_status_str(st), mc_last_error());
            rc = -1;
            break;
        }
        for (size_t i = 0; i < m; i++) {
            double g = ref_bits_to_double(d, ref_get_bits(d, res, i));
            if (!(fabs(g - v) <= tol)) {
                report(t, "index %zu of %zu: got %g, expected %g within %g",
                       i, m, g, v, tol);
                break;
            }
        }
    }
    free(in), free(out);
    return rc;
}

static int run_reduce_scatterv(tc_t *t, mc_dtype_t d, mc_redop_t op,
                               size_t base)
{
    size_t es = ref_dsize(d), total = 0;
    size_t *counts = xalloc(sizeof(size_t) * (size_t)t->size);
    size_t *offs = xalloc(sizeof(size_t) * (size_t)t->size);
    for (int r = 0; r < t->size; r++) {
        counts[r] = uneven_count(base, r, t->size);
        offs[r] = total;
        total += counts[r];
    }
    size_t mine = counts[t->rank];
    uint64_t seed = ++t->seed;
    unsigned char *send = xalloc(total * es), *recv = xalloc(mine * es + es);
    unsigned char *exp = xalloc(mine * es + es);
    set_what(t, "reduce_scatterv dtype=%s op=%s base=%zu total=%zu mine=%zu",
             ref_dname(d), ref_oname(op), base, total, mine);
    ref_fill_input(d, op, seed, t->rank, 0, send, total);
    for (size_t k = 0; k < mine; k++)
        ref_put_bits(d, exp, k,
                     ref_reduce_bits(d, op, seed, t->size, offs[t->rank] + k));
    /* one guard element past the end must stay untouched */
    memset(recv, SENTINEL, mine * es + es);
    memset(exp + mine * es, SENTINEL, es);
    int rc = 0;
    mc_status_t st =
        mc_comm_reduce_scatterv(t->comm, send, recv, counts, d, op);
    if (st != MC_OK) {
        report(t, "returned %s: %s", mc_status_str(st), mc_last_error());
        rc = -1;
        goto out;
    }
    check_red(t, "result", d, op, seed, offs[t->rank], recv, exp, mine);
    check(t, "guard element", d, recv + mine * es, exp + mine * es, 1);
out:
    free(send), free(recv), free(exp), free(counts), free(offs);
    return rc;
}

static int run_reduce(tc_t *t, mc_dtype_t d, mc_redop_t op, size_t n, int root,
                      int ip)
{
    size_t es = ref_dsize(d);
    uint64_t seed = ++t->seed;
    int is_root = t->rank == root;
    unsigned char *send = xalloc(n * es), *recv = xalloc(n * es);
    unsigned char *exp = xalloc(n * es), *orig = xalloc(n * es);
    set_what(t, "reduce dtype=%s op=%s count=%zu root=%d %s", ref_dname(d),
             ref_oname(op), n, root, ip ? "in-place" : "out-of-place");
    ref_fill_input(d, op, seed, t->rank, 0, send, n);
    memcpy(orig, send, n * es);
    memset(recv, SENTINEL, n * es);
    /* out of place, non-roots pass recvbuf NULL: mooncake.h says it is
     * ignored there */
    void *out = ip ? (void *)send : is_root ? (void *)recv : NULL;
    int rc = 0;
    mc_status_t st = mc_comm_reduce(t->comm, send, out, n, d, op, root);
    if (st != MC_OK) {
        report(t, "returned %s: %s", mc_status_str(st), mc_last_error());
        rc = -1;
        goto out;
    }
    if (is_root) {
        for (size_t i = 0; i < n; i++)
            ref_put_bits(d, exp, i, ref_reduce_bits(d, op, seed, t->size, i));
        check_red(t, "result at root", d, op, seed, 0, out, exp, n);
    }
    if (!ip) check(t, "sendbuf modified", d, send, orig, n);
    /* elsewhere the buffer is ignored: in place, it keeps the input */
    if (ip && !is_root)
        check(t, "in-place buffer of a non-root", d, send, orig, n);
out:
    free(send), free(recv), free(exp), free(orig);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Data movement                                                            */
/* ------------------------------------------------------------------------ */

static int run_allgather(tc_t *t, mc_dtype_t d, size_t n, int ip)
{
    size_t es = ref_dsize(d), total = n * (size_t)t->size;
    uint64_t seed = ++t->seed;
    unsigned char *send = xalloc(n * es), *recv = xalloc(total * es);
    unsigned char *exp = xalloc(total * es);
    set_what(t, "allgather dtype=%s count=%zu %s", ref_dname(d), n,
             ip ? "in-place" : "out-of-place");
    for (int r = 0; r < t->size; r++)
        ref_fill_bytes(d, seed, r, 0, exp + (size_t)r * n * es, n);
    ref_fill_bytes(d, seed, t->rank, 0, send, n);
    memset(recv, SENTINEL, total * es);
    const void *sb = send;
    if (ip) {
        memcpy(recv + (size_t)t->rank * n * es, send, n * es);
        sb = recv + (size_t)t->rank * n * es;
    }
    int rc = 0;
    mc_status_t st = mc_comm_allgather(t->comm, sb, recv, n, d);
    if (st != MC_OK) {
        report(t, "returned %s: %s", mc_status_str(st), mc_last_error());
        rc = -1;
        goto out;
    }
    check(t, "result", d, recv, exp, total);
out:
    free(send), free(recv), free(exp);
    return rc;
}

static int run_allgatherv(tc_t *t, mc_dtype_t d, size_t base, int ip)
{
    size_t es = ref_dsize(d), sz = (size_t)t->size;
    size_t *counts = xalloc(sizeof(size_t) * sz);
    size_t *displs = xalloc(sizeof(size_t) * sz);
    /* blocks in reverse rank order with a one-element gap before each, so
     * displacements matter and gaps must stay untouched */
    size_t off = 1;
    for (int r = t->size - 1; r >= 0; r--) {
        counts[r] = uneven_count(base, r, t->size);
        displs[r] = off;
        off += counts[r] + 1;
    }
    size_t total = off;
    uint64_t seed = ++t->seed;
    size_t mine = counts[t->rank];
    unsigned char *send = xalloc(mine * es), *recv = xalloc(total * es);
    unsigned char *exp = xalloc(total * es);
    set_what(t, "allgatherv dtype=%s base=%zu mine=%zu %s", ref_dname(d), base,
             mine, ip ? "in-place" : "out-of-place");
    memset(exp, SENTINEL, total * es);
    for (int r = 0; r < t->size; r++)
        ref_fill_bytes(d, seed, r, 0, exp + displs[r] * es, counts[r]);
    ref_fill_bytes(d, seed, t->rank, 0, send, mine);
    memset(recv, SENTINEL, total * es);
    const void *sb = send;
    if (ip) {
        memcpy(recv + displs[t->rank] * es, send, mine * es);
        sb = recv + displs[t->rank] * es;
    }
    int rc = 0;
    mc_status_t st =
        mc_comm_allgatherv(t->comm, sb, mine, recv, counts, displs, d);
    /* the arrays are copied by the call: scribbling on them now is legal */
    memset(counts, 0xff, sizeof(size_t) * sz);
    if (st != MC_OK) {
        report(t, "returned %s: %s", mc_status_str(st), mc_last_error());
        rc = -1;
        goto out;
    }
    check(t, "result (with gaps)", d, recv, exp, total);
out:
    free(send), free(recv), free(exp), free(counts), free(displs);
    return rc;
}

static int run_broadcast(tc_t *t, mc_dtype_t d, size_t n, int root, int ip)
{
    size_t es = ref_dsize(d);
    uint64_t seed = ++t->seed;
    int is_root = t->rank == root;
    unsigned char *send = xalloc(n * es), *recv = xalloc(n * es);
    unsigned char *exp = xalloc(n * es);
    set_what(t, "broadcast dtype=%s count=%zu root=%d %s", ref_dname(d), n,
             root, ip ? "in-place" : "out-of-place");
    ref_fill_bytes(d, seed, root, 0, exp, n);
    if (is_root)
        memcpy(send, exp, n * es);
    else
        ref_fill_bytes(d, seed, t->rank + 1000, 0, send, n); /* junk */
    memset(recv, SENTINEL, n * es);
    unsigned char *out = ip ? send : recv;
    int rc = 0;
    mc_status_t st = mc_comm_broadcast(t->comm, send, out, n, d, root);
    if (st != MC_OK) {
        report(t, "returned %s: %s", mc_status_str(st), mc_last_error());
        rc = -1;
        goto out;
    }
    check(t, "result", d, out, exp, n);
    if (!ip && is_root) check(t, "root sendbuf modified", d, send, exp, n);
out:
    free(send), free(recv), free(exp);
    return rc;
}

static int run_gather(tc_t *t, mc_dtype_t d, size_t n, int root, int ip)
{
    size_t es = ref_dsize(d), total = n * (size_t)t->size;
    uint64_t seed = ++t->seed;
    int is_root = t->rank == root;
    unsigned char *send = xalloc(n * es), *recv = xalloc(total * es);
    unsigned char *exp = xalloc(total * es);
    set_what(t, "gather dtype=%s count=%zu root=%d %s", ref_dname(d), n, root,
             ip ? "in-place" : "out-of-place");
    for (int r = 0; r < t->size; r++)
        ref_fill_bytes(d, seed, r, 0, exp + (size_t)r * n * es, n);
    ref_fill_bytes(d, seed, t->rank, 0, send, n);
    memset(recv, SENTINEL, total * es);
    const void *sb = send;
    if (ip && is_root) {
        memcpy(recv + (size_t)root * n * es, send, n * es);
        sb = recv + (size_t)root * n * es;
    }
    int rc = 0;
    mc_status_t st = mc_comm_gather(t->comm, sb, recv, n, d, root);
    if (st != MC_OK) {
        report(t, "returned %s: %s", mc_status_str(st), mc_last_error());
        rc = -1;
        goto out;
    }
    if (is_root) check(t, "result at root", d, recv, exp, total);
    if (!(ip && is_root))
        check(t, "sendbuf modified", d, send, exp + (size_t)t->rank * n * es,
              n);
out:
    free(send), free(recv), free(exp);
    return rc;
}

static int run_scatter(tc_t *t, mc_dtype_t d, size_t n, int root, int ip)
{
    size_t es = ref_dsize(d), total = n * (size_t)t->size;
    uint64_t seed = ++t->seed;
    int is_root = t->rank == root;
    unsigned char *send = xalloc(total * es), *recv = xalloc(n * es);
    unsigned char *exp = xalloc(total * es);
    set_what(t, "scatter dtype=%s count=%zu root=%d %s", ref_dname(d), n, root,
             ip ? "in-place" : "out-of-place");
    ref_fill_bytes(d, seed, root, 0, exp, total);
    if (is_root)
        memcpy(send, exp, total * es);
    else
        ref_fill_bytes(d, seed, t->rank + 1000, 0, send, total); /* junk */
    memset(recv, SENTINEL, n * es);
    void *out = recv;
    if (ip && is_root) out = send + (size_t)root * n * es;
    int rc = 0;
    mc_status_t st = mc_comm_scatter(t->comm, send, out, n, d, root);
    if (st != MC_OK) {
        report(t, "returned %s: %s", mc_status_str(st), mc_last_error());
        rc = -1;
        goto out;
    }
    check(t, "result", d, out, exp + (size_t)t->rank * n * es, n);
    if (is_root) check(t, "root sendbuf modified", d, send, exp, total);
out:
    free(send), free(recv), free(exp);
    return rc;
}

static int run_alltoall(tc_t *t, mc_dtype_t d, size_t n)
{
    size_t es = ref_dsize(d), total = n * (size_t)t->size;
    uint64_t seed = ++t->seed;
    unsigned char *send = xalloc(total * es), *recv = xalloc(total * es);
    unsigned char *exp = xalloc(total * es), *orig = xalloc(total * es);
    set_what(t, "alltoall dtype=%s count=%zu", ref_dname(d), n);
    /* element k of the block rank i sends to j: index j*n + k of i's data */
    ref_fill_bytes(d, seed, t->rank, 0, send, total);
    memcpy(orig, send, total * es);
    for (int r = 0; r < t->size; r++)
        ref_fill_bytes(d, seed, r, (size_t)t->rank * n,
                       exp + (size_t)r * n * es, n);
    memset(recv, SENTINEL, total * es);
    int rc = 0;
    mc_status_t st = mc_comm_alltoall(t->comm, send, recv, n, d);
    if (st != MC_OK) {
        report(t, "returned %s: %s", mc_status_str(st), mc_last_error());
        rc = -1;
        goto out;
    }
    check(t, "result", d, recv, exp, total);
    check(t, "sendbuf modified", d, send, orig, total);
out:
    free(send), free(recv), free(exp), free(orig);
    return rc;
}

/* Elements rank i sends to rank j; zero for several pairs (and for some
 * i == j). */
static size_t a2av_count(size_t base, int i, int j)
{
    if ((i * 3 + j * 5 + (int)base) % 4 == 0) return 0;
    return base + (size_t)(i + 2 * j) % 5;
}

static int run_alltoallv(tc_t *t, mc_dtype_t d, size_t base)
{
    size_t es = ref_dsize(d), sz = (size_t)t->size;
    size_t *sc = xalloc(sz * sizeof(size_t)), *sd = xalloc(sz * sizeof(size_t));
    size_t *rcn = xalloc(sz * sizeof(size_t)),
           *rd = xalloc(sz * sizeof(size_t));
    /* send blocks packed in reverse peer order; receive blocks in order with
     * a one-element gap before each (must stay untouched) */
    size_t stot = 0, rtot = 1;
    for (int j = t->size - 1; j >= 0; j--) {
        sc[j] = a2av_count(base, t->rank, j);
        sd[j] = stot;
        stot += sc[j];
    }
    for (int j = 0; j < t->size; j++) {
        rcn[j] = a2av_count(base, j, t->rank);
        rd[j] = rtot;
        rtot += rcn[j] + 1;
    }
    uint64_t seed = ++t->seed;
    unsigned char *send = xalloc(stot * es), *recv = xalloc(rtot * es);
    unsigned char *exp = xalloc(rtot * es), *orig = xalloc(stot * es);
    set_what(t, "alltoallv dtype=%s base=%zu", ref_dname(d), base);
    for (int j = 0; j < t->size; j++)
        ref_fill_bytes(d, seed, t->rank, (size_t)j * 1000003u,
                       send + sd[j] * es, sc[j]);
    memcpy(orig, send, stot * es);
    memset(exp, SENTINEL, rtot * es);
    for (int j = 0; j < t->size; j++)
        ref_fill_bytes(d, seed, j, (size_t)t->rank * 1000003u, exp + rd[j] * es,
                       rcn[j]);
    memset(recv, SENTINEL, rtot * es);
    int rc = 0;
    mc_status_t st = mc_comm_alltoallv(t->comm, send, sc, sd, recv, rcn, rd, d);
    if (st != MC_OK) {
        report(t, "returned %s: %s", mc_status_str(st), mc_last_error());
        rc = -1;
        goto out;
    }
    check(t, "result (with gaps)", d, recv, exp, rtot);
    check(t, "sendbuf modified", d, send, orig, stot);
out:
    free(send), free(recv), free(exp), free(orig);
    free(sc), free(sd), free(rcn), free(rd);
    return rc;
}

/* Barrier: nobody leaves before everybody has arrived. One rank per round
 * arrives late; the shared counter must be complete after the barrier. */
static int run_barriers(tc_t *t)
{
    for (int k = 0; k < 6; k++) {
        unsigned *cnt = &t->p->barrier_cnt[k];
        set_what(t, "barrier round %d (%s)", k, k % 2 ? "ibarrier" : "barrier");
        if (k % t->size == t->rank) usleep(20000);
        __atomic_add_fetch(cnt, 1, __ATOMIC_SEQ_CST);
        if (k % 2) {
            mc_request_h req;
            CALL(t, mc_comm_ibarrier(t->comm, &req));
            mc_status_t st = mc_request_wait(req, -1);
            mc_request_free(req);
            CALL(t, st);
        } else {
            CALL(t, mc_comm_barrier(t->comm));
        }
        unsigned seen = __atomic_load_n(cnt, __ATOMIC_SEQ_CST);
        if (seen != (unsigned)t->size)
            report(t, "left the barrier after %u of %d ranks arrived", seen,
                   t->size);
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Several operations in flight                                             */
/* ------------------------------------------------------------------------ */

#define NFLIGHT 11

static int run_inflight(tc_t *t)
{
    int R = t->rank, S = t->size;
    size_t sz = (size_t)S;
    uint64_t seed = ++t->seed;
    mc_request_h req[NFLIGHT];
    int nreq = 0;
    set_what(t, "in-flight batch");

    /* 0: allreduce float32 sum, 37 */
    float ar_s[37], ar_r[37];
    ref_fill_input(MC_FLOAT32, MC_SUM, seed, R, 0, ar_s, 37);
    /* 1: allgather int32, 5 */
    int32_t ag_s[5], *ag_r = xalloc(5 * sz * 4);
    ref_fill_bytes(MC_INT32, seed + 1, R, 0, ag_s, 5);
    /* 2: broadcast uint8 root S-1, 100 */
    uint8_t bc[100];
    if (R == S - 1)
        ref_fill_bytes(MC_UINT8, seed + 2, S - 1, 0, bc, 100);
    else
        memset(bc, 0, sizeof(bc));
    /* 3: reduce int64 max root 0, 11 */
    int64_t rd_s[11], rd_r[11];
    ref_fill_input(MC_INT64, MC_MAX, seed + 3, R, 0, rd_s, 11);
    /* 4: alltoall uint16, 3 per peer */
    uint16_t *a2a_s = xalloc(3 * sz * 2), *a2a_r = xalloc(3 * sz * 2);
    ref_fill_bytes(MC_UINT16, seed + 4, R, 0, a2a_s, 3 * sz);
    /* 5: barrier */
    /* 6: reduce_scatter bfloat16 sum, 9 per rank */
    uint16_t *rs_s = xalloc(9 * sz * 2), rs_r[9];
    ref_fill_input(MC_BFLOAT16, MC_SUM, seed + 6, R, 0, rs_s, 9 * sz);
    /* 7: gather float64 root S/2, 4 */
    double ga_s[4], *ga_r = xalloc(4 * sz * 8);
    ref_fill_bytes(MC_FLOAT64, seed + 7, R, 0, ga_s, 4);
    /* 8: scatter int16 root 0, 6 */
    int16_t *sc_s = xalloc(6 * sz * 2), sc_r[6];
    ref_fill_bytes(MC_INT16, seed + 8, 0, 0, sc_s, 6 * sz);
    /* 9: allreduce int32 bxor in place, 1000 */
    int32_t *x = xalloc(1000 * 4);
    ref_fill_input(MC_INT32, MC_BXOR, seed + 9, R, 0, x, 1000);
    /* 10: allgatherv uint8 */
    size_t *cnt = xalloc(sz * sizeof(size_t)),
           *dsp = xalloc(sz * sizeof(size_t));
    size_t tot = 0;
    for (int r = 0; r < S; r++) {
        cnt[r] = uneven_count(3, r, S);
        dsp[r] = tot;
        tot += cnt[r];
    }
    uint8_t agv_s[16], *agv_r = xalloc(tot);
    ref_fill_bytes(MC_UINT8, seed + 10, R, 0, agv_s, cnt[R]);

    int rc = 0;
    mc_status_t st;
#define ISSUE(expr)                                                            \
    do {                                                                       \
        st = (expr);                                                           \
        if (st != MC_OK) {                                                     \
            report(t, "%s returned %s: %s", #expr, mc_status_str(st),          \
                   mc_last_error());                                           \
            rc = -1;                                                           \
            goto cleanup;                                                      \
        }                                                                      \
        nreq++;                                                                \
    } while (0)
    ISSUE(mc_comm_iallreduce(t->comm, ar_s, ar_r, 37, MC_FLOAT32, MC_SUM,
                             &req[nreq]));
    ISSUE(mc_comm_iallgather(t->comm, ag_s, ag_r, 5, MC_INT32, &req[nreq]));
    ISSUE(
        mc_comm_ibroadcast(t->comm, bc, bc, 100, MC_UINT8, S - 1, &req[nreq]));
    ISSUE(mc_comm_ireduce(t->comm, rd_s, rd_r, 11, MC_INT64, MC_MAX, 0,
                          &req[nreq]));
    ISSUE(mc_comm_ialltoall(t->comm, a2a_s, a2a_r, 3, MC_UINT16, &req[nreq]));
    ISSUE(mc_comm_ibarrier(t->comm, &req[nreq]));
    ISSUE(mc_comm_ireduce_scatter(t->comm, rs_s, rs_r, 9, MC_BFLOAT16, MC_SUM,
                                  &req[nreq]));
    ISSUE(
        mc_comm_igather(t->comm, ga_s, ga_r, 4, MC_FLOAT64, S / 2, &req[nreq]));
    ISSUE(mc_comm_iscatter(t->comm, sc_s, sc_r, 6, MC_INT16, 0, &req[nreq]));
    ISSUE(
        mc_comm_iallreduce(t->comm, x, x, 1000, MC_INT32, MC_BXOR, &req[nreq]));
    ISSUE(mc_comm_iallgatherv(t->comm, agv_s, cnt[R], agv_r, cnt, dsp, MC_UINT8,
                              &req[nreq]));
#undef ISSUE

    /* Wait the last one first: operations complete in issue order, so all
     * earlier ones must then be finished too. */
    for (int k = nreq - 1; k >= 0; k--) {
        st = mc_request_wait(req[k], -1);
        if (st != MC_OK) {
            report(t, "wait of in-flight op %d returned %s: %s", k,
                   mc_status_str(st), mc_last_error());
            rc = -1;
        }
        if (k == nreq - 1) {
            for (int j = 0; j < k; j++) {
                int done = -1;
                mc_status_t ts = mc_request_test(req[j], &done);
                if (done != 1 || ts != MC_OK)
                    report(t,
                           "op %d not complete (test: %s done=%d) after "
                           "the later op %d completed",
                           j, mc_status_str(ts), done, k);
            }
        }
    }
    if (rc) goto cleanup;

    {
        float e32[37];
        for (size_t i = 0; i < 37; i++)
            ref_put_bits(MC_FLOAT32, e32, i,
                         ref_reduce_bits(MC_FLOAT32, MC_SUM, seed, S, i));
        check(t, "in-flight allreduce float32", MC_FLOAT32, ar_r, e32, 37);
    }
    {
        int32_t *e = xalloc(5 * sz * 4);
        for (int r = 0; r < S; r++)
            ref_fill_bytes(MC_INT32, seed + 1, r, 0, e + 5 * r, 5);
        check(t, "in-flight allgather int32", MC_INT32, ag_r, e, 5 * sz);
        free(e);
    }
    {
        uint8_t e[100];
        ref_fill_bytes(MC_UINT8, seed + 2, S - 1, 0, e, 100);
        check(t, "in-flight broadcast uint8", MC_UINT8, bc, e, 100);
    }
    if (R == 0) {
        int64_t e[11];
        for (size_t i = 0; i < 11; i++)
            ref_put_bits(MC_INT64, e, i,
                         ref_reduce_bits(MC_INT64, MC_MAX, seed + 3, S, i));
        check(t, "in-flight reduce int64 max", MC_INT64, rd_r, e, 11);
    }
    {
        uint16_t *e = xalloc(3 * sz * 2);
        for (int r = 0; r < S; r++)
            ref_fill_bytes(MC_UINT16, seed + 4, r, (size_t)R * 3, e + 3 * r, 3);
        check(t, "in-flight alltoall uint16", MC_UINT16, a2a_r, e, 3 * sz);
        free(e);
    }
    {
        uint16_t e[9];
        for (size_t k = 0; k < 9; k++)
            ref_put_bits(MC_BFLOAT16, e, k,
                         ref_reduce_bits(MC_BFLOAT16, MC_SUM, seed + 6, S,
                                         (size_t)R * 9 + k));
        check(t, "in-flight reduce_scatter bfloat16", MC_BFLOAT16, rs_r, e, 9);
    }
    if (R == S / 2) {
        double *e = xalloc(4 * sz * 8);
        for (int r = 0; r < S; r++)
            ref_fill_bytes(MC_FLOAT64, seed + 7, r, 0, e + 4 * r, 4);
        check(t, "in-flight gather float64", MC_FLOAT64, ga_r, e, 4 * sz);
        free(e);
    }
    {
        int16_t e[6];
        ref_fill_bytes(MC_INT16, seed + 8, 0, (size_t)R * 6, e, 6);
        check(t, "in-flight scatter int16", MC_INT16, sc_r, e, 6);
    }
    {
        int32_t *e = xalloc(1000 * 4);
        for (size_t i = 0; i < 1000; i++)
            ref_put_bits(MC_INT32, e, i,
                         ref_reduce_bits(MC_INT32, MC_BXOR, seed + 9, S, i));
        check(t, "in-flight allreduce int32 bxor in-place", MC_INT32, x, e,
              1000);
        free(e);
    }
    {
        uint8_t *e = xalloc(tot);
        for (int r = 0; r < S; r++)
            ref_fill_bytes(MC_UINT8, seed + 10, r, 0, e + dsp[r], cnt[r]);
        check(t, "in-flight allgatherv uint8", MC_UINT8, agv_r, e, tot);
        free(e);
    }

cleanup:
    for (int k = 0; k < nreq; k++)
        mc_request_free(req[k]);
    free(ag_r), free(a2a_s), free(a2a_r), free(rs_s), free(ga_r), free(sc_s);
    free(x), free(cnt), free(dsp), free(agv_r);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Non-exact float sums: every rank must still get identical bits           */
/* ------------------------------------------------------------------------ */

static int run_inexact(tc_t *t, mc_dtype_t d, size_t n)
{
    size_t es = ref_dsize(d);
    uint64_t seed = ++t->seed;
    unsigned char *buf = xalloc(n * es);
    double eps = d == MC_FLOAT32 ? 0x1p-24 : d == MC_FLOAT16 ? 0x1p-11 : 0x1p-8;
    set_what(t, "allreduce inexact dtype=%s op=sum count=%zu", ref_dname(d), n);
    for (size_t i = 0; i < n; i++) {
        double v = (double)(ref_hash3(seed, (uint64_t)t->rank, i) >> 11) *
                       0x1p-52 * 2.0 -
                   1.0;
        ref_put_bits(d, buf, i, ref_double_to_bits(d, v));
    }
    int rc = 0;
    mc_status_t st = mc_comm_allreduce(t->comm, buf, buf, n, d, MC_SUM);
    if (st != MC_OK) {
        report(t, "returned %s: %s", mc_status_str(st), mc_last_error());
        rc = -1;
        goto out;
    }
    t->hash = ref_fnv(t->hash, buf, n * es);
    for (size_t i = 0; i < n; i++) {
        double sum = 0, sabs = 0;
        for (int r = 0; r < t->size; r++) {
            double v = (double)(ref_hash3(seed, (uint64_t)r, i) >> 11) *
                           0x1p-52 * 2.0 -
                       1.0;
            v = ref_bits_to_double(d, ref_double_to_bits(d, v));
            sum += v;
            sabs += fabs(v);
        }
        double got = ref_bits_to_double(d, ref_get_bits(d, buf, i));
        double tol = (t->size + 1) * eps * sabs + 1e-30;
        if (!(fabs(got - sum) <= tol)) {
            report(t, "index %zu: got %.9g, exact sum %.9g, tolerance %.3g", i,
                   got, sum, tol);
            break;
        }
    }
out:
    free(buf);
    return rc;
}

/* All ranks' running hashes of reduction results must be equal. */
static int check_hashes(tc_t *t)
{
    uint64_t *all = xalloc(sizeof(uint64_t) * (size_t)t->size);
    set_what(t, "bit-identical allreduce results across ranks");
    mc_status_t st = mc_comm_allgather(t->comm, &t->hash, all, 1, MC_UINT64);
    if (st != MC_OK) {
        report(t, "allgather of hashes returned %s: %s", mc_status_str(st),
               mc_last_error());
        free(all);
        return -1;
    }
    for (int r = 0; r < t->size; r++)
        if (all[r] != all[0])
            report(t, "rank %d hash %016llx != rank 0 hash %016llx", r,
                   (unsigned long long)all[r], (unsigned long long)all[0]);
    free(all);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Sweeps                                                                   */
/* ------------------------------------------------------------------------ */

static int sweep_all(tc_t *t)
{
    static const size_t counts[] = {0, 1, 37};
    int S = t->size;
    for (int di = 0; di < MC_DTYPE_COUNT; di++) {
        mc_dtype_t d = all_dtypes[di];
        mc_redop_t ops[MC_REDOP_COUNT];
        int nops = valid_ops(d, ops);
        for (size_t ci = 0; ci < sizeof(counts) / sizeof(counts[0]); ci++) {
            size_t n = counts[ci];
            for (int ip = 0; ip < 2; ip++) {
                for (int o = 0; o < nops; o++) {
                    if (run_allreduce(t, d, ops[o], n, ip)) return -1;
                    if (run_reduce_scatter(t, d, ops[o], n, ip)) return -1;
                }
                if (run_allgather(t, d, n, ip)) return -1;
                if (run_allgatherv(t, d, n, ip)) return -1;
            }
            /* Rooted ops: every op and every root; in-place alternates
             * with root, count and dtype so that both forms meet every
             * root without doubling the (slow at 8 ranks) sweep. */
            int nk = nops > S ? nops : S;
            for (int k = 0; k < nk; k++)
                if (run_reduce(t, d, ops[(k + (int)ci) % nops], n, k % S,
                               (k + (int)ci + di) % 2))
                    return -1;
            for (int root = 0; root < S; root++) {
                int ip = (root + (int)ci + di) % 2;
                if (run_broadcast(t, d, n, root, ip)) return -1;
                if (run_gather(t, d, n, root, ip)) return -1;
                if (run_scatter(t, d, n, root, ip)) return -1;
            }
            if (run_alltoall(t, d, n)) return -1;
            if (run_alltoallv(t, d, n)) return -1;
            for (int o = 0; o < nops; o++)
                if (run_reduce_scatterv(t, d, ops[o], n)) return -1;
        }
    }
    if (run_barriers(t)) return -1;
    if (run_inflight(t)) return -1;

    /* Mid sizes, 32-512 KiB: on one host over 3+ ranks with fault
     * tolerance the shared slots, with the one writer of broadcast and
     * scatter piped chunk by chunk and the allreduce split in two rounds;
     * the usual paths elsewhere. */
    for (int ip = 0; ip < 2; ip++) {
        if (run_broadcast(t, MC_INT32, (240 << 10) / 4, (S - 1 + ip) % S, ip) ||
            run_broadcast(t, MC_UINT8, 33001, ip ? 0 : S / 2, ip) ||
            run_broadcast(t, MC_FLOAT64, 4099, S / 2, ip) ||
            run_scatter(t, MC_INT32, (240 << 10) / 4 / (size_t)S, ip % S, ip) ||
            run_scatter(t, MC_FLOAT16, (100 << 10) / 2 / (size_t)S + 3, S - 1,
                        ip) ||
            run_allreduce(t, MC_FLOAT32, MC_SUM, (200 << 10) / 4 + 3, ip) ||
            run_allreduce(t, MC_BFLOAT16, MC_AVG, 40001, ip) ||
            run_allreduce(t, MC_INT64, MC_MAX, (480 << 10) / 8 + 1, ip) ||
            /* allgather blocks up to the slots' 512 KiB (default), at it
             * and just under; an allgatherv with blocks just past it on
             * some ranks (0 on others): the ring for all */
            run_allgather(t, MC_INT32, (300 << 10) / 4 + 1, ip) ||
            run_allgather(t, MC_FLOAT16, (512 << 10) / 2 - ip, ip) ||
            run_allgatherv(t, MC_UINT8, (400 << 10) + 5, ip) ||
            run_allgatherv(t, MC_UINT8, (512 << 10) + 1 - ip, ip) ||
            /* reduce and reduce_scatter inputs up to 512 KiB (the
             * slots), and just past it */
            run_reduce(t, MC_FLOAT32, MC_SUM, (512 << 10) / 4, S - 1, ip) ||
            run_reduce(t, MC_INT16, MC_MAX, (300 << 10) / 2 + 7, 0, ip) ||
            run_reduce(t, MC_INT32, MC_SUM, (512 << 10) / 4 + 1, S / 2, ip) ||
            run_reduce_scatter(t, MC_FLOAT64, MC_SUM,
                               (500 << 10) / 8 / (size_t)S, ip) ||
            run_reduce_scatter(t, MC_BFLOAT16, MC_AVG,
                               (513 << 10) / 2 / (size_t)S, ip) ||
            /* about 480 KiB in all (slots), then 520 KiB (past them):
             * a third of the ranks have no block (uneven_count) */
            run_reduce_scatterv(t, MC_INT64, MC_MIN,
                                ((ip ? 520 : 480) << 10) / 8 /
                                    (size_t)(S - (S + 1) / 3)))
            return -1;
    }

    /* Large counts: ring / pipelined paths on every transport. */
    size_t L = LARGE_COUNT, Lb = LARGE_COUNT / (size_t)S;
    if (run_allreduce(t, MC_FLOAT32, MC_SUM, L, 0)) return -1;
    if (run_allreduce(t, MC_BFLOAT16, MC_AVG, L, 1)) return -1;
    if (run_allreduce(t, MC_INT32, MC_BXOR, L, 1)) return -1;
    if (run_allreduce(t, MC_FLOAT8_E4M3, MC_MAX, L, 0)) return -1;
    if (run_reduce_scatter(t, MC_FLOAT32, MC_SUM, Lb, 0)) return -1;
    if (run_reduce_scatter(t, MC_INT64, MC_MIN, Lb, 1)) return -1;
    if (run_reduce_scatterv(t, MC_FLOAT16, MC_SUM, Lb)) return -1;
    if (run_reduce(t, MC_FLOAT64, MC_PROD, L, S - 1, 0)) return -1;
    if (run_reduce(t, MC_FLOAT32, MC_AVG, L, S / 2, 1)) return -1;
    if (run_allgather(t, MC_UINT16, Lb, 1)) return -1;
    if (run_allgatherv(t, MC_UINT8, Lb, 0)) return -1;
    if (run_broadcast(t, MC_FLOAT32, L, S / 2, 0)) return -1;
    if (run_gather(t, MC_INT32, Lb, 0, 0)) return -1;
    if (run_scatter(t, MC_INT32, Lb, S - 1, 1)) return -1;
    if (run_alltoall(t, MC_FLOAT32, Lb)) return -1;
    if (run_alltoallv(t, MC_UINT16, Lb)) return -1;
    if (run_inexact(t, MC_FLOAT32, 1001)) return -1;
    if (run_inexact(t, MC_BFLOAT16, L)) return -1;
    if (run_avg_range(t, MC_FLOAT16, 37) ||
        run_avg_range(t, MC_FLOAT8_E4M3, 1025) ||
        run_avg_range(t, MC_FLOAT8_E5M2, Lb) ||
        run_avg_range(t, MC_FLOAT16, Lb))
        return -1;
    return check_hashes(t);
}

/* Forced algorithms: allreduce and broadcast at small and odd sizes;
 * reduce and reduce_scatter at a large one. */
static int sweep_algo(tc_t *t)
{
    static const size_t counts[] = {0, 1, 2, 3, 5, 37, 1025, 9001};
    int S = t->size;
    for (int di = 0; di < MC_DTYPE_COUNT; di++) {
        mc_dtype_t d = all_dtypes[di];
        mc_redop_t ops[MC_REDOP_COUNT];
        int nops = valid_ops(d, ops);
        for (size_t ci = 0; ci < sizeof(counts) / sizeof(counts[0]); ci++) {
            size_t n = counts[ci];
            for (int ip = 0; ip < 2; ip++)
                for (int o = 0; o < nops; o++)
                    if (run_allreduce(t, d, ops[o], n, ip)) return -1;
            for (int root = 0; root < S; root++)
                if (run_broadcast(t, d, n, root, (root + (int)ci + di) % 2))
                    return -1;
        }
    }
    /* with tiny forced chunks a 300k-element op is thousands of frames per
     * step: a smaller "large" count still pipelines deeply */
    size_t L = t->p->chunk_bytes ? 20011 : LARGE_COUNT;
    if (run_allreduce(t, MC_FLOAT32, MC_SUM, L, 0)) return -1;
    if (run_allreduce(t, MC_FLOAT8_E5M2, MC_SUM, L, 1)) return -1;
    if (run_allreduce(t, MC_UINT64, MC_PROD, L, 0)) return -1;
    /* reduce and reduce_scatter forced the same way (test_colls()) */
    if (run_reduce(t, MC_FLOAT32, MC_SUM, L, S - 1, 1)) return -1;
    if (run_reduce(t, MC_INT64, MC_MAX, L, 0, 0)) return -1;
    if (run_reduce_scatter(t, MC_FLOAT32, MC_SUM, L / (size_t)S + 1, 1))
        return -1;
    if (run_reduce_scatterv(t, MC_INT32, MC_SUM, L / (size_t)S + 1)) return -1;
    if (run_broadcast(t, MC_UINT8, L, S - 1, 0)) return -1;
    if (run_broadcast(t, MC_FLOAT64, L, 0, 1)) return -1;
    if (run_inexact(t, MC_FLOAT32, 1001)) return -1;
    if (run_inexact(t, MC_FLOAT16, 4099)) return -1;
    if (run_inexact(t, MC_BFLOAT16, L)) return -1;
    if (run_avg_range(t, MC_FLOAT16, 1025) ||
        run_avg_range(t, MC_FLOAT8_E4M3, L / (size_t)S + 1))
        return -1;
    return check_hashes(t);
}

/* The split allreduce through the shared slots (every allreduce splits:
 * MOONCAKE_SLOT_SPLIT_MIN=1): every dtype and op at small and odd counts
 * (empty blocks, fewer elements than ranks), in place, out of place and
 * mixed; then up to the slots' 512 KiB. */
static int sweep_split(tc_t *t)
{
    static const size_t counts[] = {0, 1, 3, 17, 37, 1025, 9001};
    for (int di = 0; di < MC_DTYPE_COUNT; di++) {
        mc_dtype_t d = all_dtypes[di];
        mc_redop_t ops[MC_REDOP_COUNT];
        int nops = valid_ops(d, ops);
        for (size_t ci = 0; ci < sizeof(counts) / sizeof(counts[0]); ci++)
            for (int o = 0; o < nops; o++) {
                int k = o + (int)ci + di;
                if (run_allreduce(t, d, ops[o], counts[ci], k % 3)) return -1;
            }
    }
    for (int ip = 0; ip < 3; ip++) {
        if (run_allreduce(t, MC_FLOAT32, MC_SUM, (256 << 10) / 4, ip) ||
            run_allreduce(t, MC_BFLOAT16, MC_AVG, (200 << 10) / 2 + 1, ip) ||
            run_allreduce(t, MC_INT64, MC_MAX, 12289, ip) ||
            run_allreduce(t, MC_FLOAT64, MC_PROD, 5003, ip) ||
            run_allreduce(t, MC_INT32, MC_SUM, (256 << 10) / 4 + 1, ip) ||
            run_allreduce(t, MC_FLOAT32, MC_SUM, (512 << 10) / 4, ip) ||
            run_allreduce(t, MC_FLOAT32, MC_SUM, (512 << 10) / 4 + 1, ip) ||
            run_allreduce(t, MC_INT64, MC_MIN, (400 << 10) / 8 + 3, ip))
            return -1;
    }
    if (run_inexact(t, MC_FLOAT32, 20011)) return -1;
    return check_hashes(t);
}

static int count_stage_maps(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    int n = 0;
    if (!f) return -1;
    while (fgets(line, sizeof(line), f))
        if (strstr(line, "memfd:mooncake-stage")) n++;
    fclose(f);
    return n;
}

/* Staging memory: every dtype and op at small and odd counts (fewer
 * elements than ranks included), in place, out of place and mixed; then
 * large counts, and a sequence of growing sizes (the region is replaced as
 * it grows, and peers remap it). */
static int sweep_stage(tc_t *t)
{
    static const size_t counts[] = {0, 1, 3, 37, 1025, 9001};
    for (int di = 0; di < MC_DTYPE_COUNT; di++) {
        mc_dtype_t d = all_dtypes[di];
        mc_redop_t ops[MC_REDOP_COUNT];
        int nops = valid_ops(d, ops);
        for (size_t ci = 0; ci < sizeof(counts) / sizeof(counts[0]); ci++)
            for (int o = 0; o < nops; o++) {
                int k = o + (int)ci + di;
                if (run_allreduce(t, d, ops[o], counts[ci], k % 3)) return -1;
                /* reduce and reduce_scatter(v) take the same path */
                if (run_reduce(t, d, ops[o], counts[ci], k % t->size, k % 2) ||
                    run_reduce_scatter(t, d, ops[o], counts[ci], k % 2))
                    return -1;
                if (o == 0 && run_reduce_scatterv(t, d, ops[o], counts[ci]))
                    return -1;
            }
    }
    for (int ip = 0; ip < 3; ip++) {
        if (run_allreduce(t, MC_FLOAT32, MC_SUM, LARGE_COUNT, ip)) return -1;
        if (run_allreduce(t, MC_BFLOAT16, MC_AVG, LARGE_COUNT, ip)) return -1;
        if (run_allreduce(t, MC_INT64, MC_MAX, LARGE_COUNT, ip)) return -1;
    }
    size_t Lb = LARGE_COUNT / (size_t)t->size;
    for (int ip = 0; ip < 2; ip++) {
        if (run_reduce(t, MC_FLOAT32, MC_AVG, LARGE_COUNT, t->size - 1, ip) ||
            run_reduce(t, MC_INT32, MC_BXOR, LARGE_COUNT, 0, ip) ||
            run_reduce_scatter(t, MC_FLOAT32, MC_SUM, Lb, ip) ||
            run_reduce_scatter(t, MC_BFLOAT16, MC_AVG, Lb, ip))
            return -1;
    }
    if (run_reduce_scatterv(t, MC_INT64, MC_MIN, Lb)) return -1;
    for (size_t n = 1000; n <= ((size_t)4 << 20); n *= 4)
        if (run_allreduce(t, MC_FLOAT32, MC_SUM, n + 7, 1)) return -1;
    /* above the streaming-store size (32 MiB) */
    if (run_allreduce(t, MC_FLOAT32, MC_SUM, ((size_t)9 << 20) + 3, 1))
        return -1;
    if (run_inexact(t, MC_FLOAT32, 1001)) return -1;
    /* the staging regions this process maps: its own and every peer's;
     * with the fallback, none on the rank that could not make one, and
     * everyone's but that rank's elsewhere */
    set_what(t, "staging regions mapped");
    int want = t->size, got = count_stage_maps();
    if (t->p->part == PART_FALLBACK)
        want = t->rank == t->size - 1 ? 0 : t->size - 1;
    if (got != want)
        report(t, "%d staging regions mapped, expected %d", got, want);
    return check_hashes(t);
}

static int rank_body(mc_comm_h comm, int rank, int size, void *arg)
{
    tc_t t;
    memset(&t, 0, sizeof(t));
    t.comm = comm;
    t.rank = rank;
    t.size = size;
    t.p = arg;
    t.hash = 0xcbf29ce484222325ull;
    t.seed = (uint64_t)t.p->part * 1000003u + (uint64_t)size * 7919u;
    set_what(&t, "communicator");
    if (mc_comm_rank(comm) != rank || mc_comm_size(comm) != size)
        report(&t, "mc_comm_rank/size = %d/%d, expected %d/%d",
               mc_comm_rank(comm), mc_comm_size(comm), rank, size);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (t.p->part == PART_FALLBACK && rank == size - 1) {
        /* files (memfd included) may not grow past 64 KiB: creating the
         * staging region fails with EFBIG instead of raising SIGXFSZ */
        struct rlimit rl = {.rlim_cur = 64 << 10, .rlim_max = 64 << 10};
        signal(SIGXFSZ, SIG_IGN);
        if (setrlimit(RLIMIT_FSIZE, &rl) != 0)
            report(&t, "setrlimit(RLIMIT_FSIZE): %s", strerror(errno));
    }
    int rc = t.p->part == PART_ALL     ? sweep_all(&t)
             : t.p->part == PART_ALGO  ? sweep_algo(&t)
             : t.p->part == PART_SPLIT ? sweep_split(&t)
                                       : sweep_stage(&t);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (rank == 0 && getenv("MC_TEST_VERBOSE"))
        fprintf(stderr, "%s: %llu cases in %.2f s\n", t.p->name,
                (unsigned long long)(t.seed - ((uint64_t)t.p->part * 1000003u +
                                               (uint64_t)size * 7919u)),
                (double)(t1.tv_sec - t0.tv_sec) +
                    (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9);
    if (t.fails > MAX_REPORTS)
        fprintf(stderr, "[rank %d] ... %d failures in all\n", rank, t.fails);
    return rc || t.fails;
}

static void set_or_unset(const char *name, const char *val)
{
    if (val)
        setenv(name, val, 1);
    else
        unsetenv(name);
}

static void test_colls(void **state)
{
    colls_param_t *p = *state;
    unsigned *cnt = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                         MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(cnt != MAP_FAILED);
    p->barrier_cnt = cnt;
    /* read by the engine at communicator creation in the children */
    set_or_unset("MOONCAKE_ALGO_ALLREDUCE", p->algo_allreduce);
    set_or_unset("MOONCAKE_ALGO_BROADCAST", p->algo_broadcast);
    /* reduce and reduce_scatter follow the allreduce choice: the ring with
     * the chain, recursive doubling with the tree, staging with staging */
    const char *ar = p->algo_allreduce, *red = NULL, *rs = NULL;
    if (ar && !strcmp(ar, "ring")) red = "chain", rs = "ring";
    if (ar && !strcmp(ar, "rd")) red = "tree", rs = "ring";
    if (ar && !strcmp(ar, "stage")) red = "stage", rs = "stage";
    set_or_unset("MOONCAKE_ALGO_REDUCE", red);
    set_or_unset("MOONCAKE_ALGO_REDUCE_SCATTER", rs);
    set_or_unset("MOONCAKE_CHUNK_BYTES", p->chunk_bytes);
    set_or_unset("MOONCAKE_FT", p->ft);
    set_or_unset("MOONCAKE_AUTO_RECOVER", p->auto_recover);
    set_or_unset("MOONCAKE_SLOT_SPLIT_MIN", p->part == PART_SPLIT ? "1" : NULL);
    int failed = mc_test_spawn(p->size, p->transport, 240, rank_body, p);
    unsetenv("MOONCAKE_ALGO_ALLREDUCE");
    unsetenv("MOONCAKE_ALGO_BROADCAST");
    unsetenv("MOONCAKE_ALGO_REDUCE");
    unsetenv("MOONCAKE_ALGO_REDUCE_SCATTER");
    unsetenv("MOONCAKE_CHUNK_BYTES");
    unsetenv("MOONCAKE_FT");
    unsetenv("MOONCAKE_AUTO_RECOVER");
    unsetenv("MOONCAKE_SLOT_SPLIT_MIN");
    munmap(cnt, 4096);
    assert_int_equal(failed, 0);
}

#define P(n, tr, part, ar, bc, ch)                                             \
    {                                                                          \
        n, tr, part, ar, bc, ch, NULL, NULL, NULL, NULL                        \
    }
/* the same with fault tolerance off ("0") or manual recovery */
#define PM(n, tr, part, ar, ft, auto_rec)                                      \
    {                                                                          \
        n, tr, part, ar, NULL, NULL, ft, auto_rec, NULL, NULL                  \
    }
static colls_param_t params[] = {
#define SIZES(tr)                                                              \
    P(1, tr, PART_ALL, NULL, NULL, NULL),                                      \
        P(2, tr, PART_ALL, NULL, NULL, NULL),                                  \
        P(3, tr, PART_ALL, NULL, NULL, NULL),                                  \
        P(4, tr, PART_ALL, NULL, NULL, NULL),                                  \
        P(8, tr, PART_ALL, NULL, NULL, NULL),                                  \
        P(1, tr, PART_ALGO, "ring", "chain", "4096"),                          \
        P(2, tr, PART_ALGO, "ring", "chain", "4096"),                          \
        P(3, tr, PART_ALGO, "ring", "chain", "4096"),                          \
        P(4, tr, PART_ALGO, "ring", "chain", "4096"),                          \
        P(8, tr, PART_ALGO, "ring", "chain", "4096"),                          \
        P(2, tr, PART_ALGO, "rd", "tree", NULL),                               \
        P(3, tr, PART_ALGO, "rd", "tree", NULL),                               \
        P(4, tr, PART_ALGO, "rd", "tree", NULL),                               \
        P(8, tr, PART_ALGO, "rd", "tree", NULL)
    SIZES(MC_TRANSPORT_SHM),
    SIZES(MC_TRANSPORT_TCP),
#undef SIZES
    P(3, MC_TRANSPORT_SHM, PART_SPLIT, NULL, NULL, NULL),
    P(4, MC_TRANSPORT_SHM, PART_SPLIT, NULL, NULL, NULL),
    P(8, MC_TRANSPORT_SHM, PART_SPLIT, NULL, NULL, NULL),
    P(2, MC_TRANSPORT_SHM, PART_STAGE, "stage", NULL, NULL),
    P(3, MC_TRANSPORT_SHM, PART_STAGE, "stage", NULL, NULL),
    P(4, MC_TRANSPORT_SHM, PART_STAGE, "stage", NULL, NULL),
    P(8, MC_TRANSPORT_SHM, PART_STAGE, "stage", NULL, NULL),
    P(3, MC_TRANSPORT_SHM, PART_FALLBACK, "stage", NULL, NULL),
    PM(2, MC_TRANSPORT_SHM, PART_STAGE, "stage", "0", NULL),
    PM(4, MC_TRANSPORT_SHM, PART_STAGE, "stage", "0", NULL),
    PM(3, MC_TRANSPORT_SHM, PART_STAGE, "stage", NULL, "0"),
    PM(3, MC_TRANSPORT_SHM, PART_FALLBACK, "stage", "0", NULL),
};
#undef P

int main(void)
{
    enum { N = sizeof(params) / sizeof(params[0]) };
    static char names[N][64];
    struct CMUnitTest tests[N];
    for (int i = 0; i < N; i++) {
        colls_param_t *p = &params[i];
        if (p->part == PART_ALL)
            snprintf(names[i], sizeof(names[i]), "colls_%d_%s", p->size,
                     ref_tname(p->transport));
        else if (p->part == PART_SPLIT)
            snprintf(names[i], sizeof(names[i]), "colls_%d_%s_split", p->size,
                     ref_tname(p->transport));
        else if (p->part >= PART_STAGE)
            snprintf(names[i], sizeof(names[i]), "colls_%d_%s_stage%s%s",
                     p->size, ref_tname(p->transport),
                     p->part == PART_FALLBACK ? "_fallback" : "",
                     p->ft             ? "_ft0"
                     : p->auto_recover ? "_manual"
                                       : "");
        else
            snprintf(names[i], sizeof(names[i]), "colls_%d_%s_%s_%s%s%s",
                     p->size, ref_tname(p->transport), p->algo_allreduce,
                     p->algo_broadcast, p->chunk_bytes ? "_chunk" : "",
                     p->chunk_bytes ? p->chunk_bytes : "");
        p->name = names[i];
        tests[i] = (struct CMUnitTest){names[i], test_colls, NULL, NULL, p};
    }
    return _cmocka_run_group_tests("collectives", tests, N, NULL, NULL);
}
