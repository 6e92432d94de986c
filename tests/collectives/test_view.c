/*
 * Collectives over a view with holes (docs/fault-model.md, "Per-operation
 * meaning over a view with holes"), against a serial reference over the
 * active set computed here.
 *
 * Holes are made with mc_comm_shrink: the ranks that stay call it with the
 * list; listed ranks either call it too (and are then evicted: their next
 * collective must fail with MC_ERR_EVICTED at once) or leave without a
 * word. Patterns: {0}, {last}, {1}, {0,2}, all but one, and two successive
 * shrinks (epoch 3), over 2, 3, 4, 5 and 8 ranks, shm and tcp.
 *
 * In each resulting view every collective runs with a few dtypes, counts
 * {0, 1, odd, ~100k}, in place and out of place, rooted ones at several
 * active roots. Output buffers start filled with garbage: slots of inactive
 * ranks must come back zero, the gaps between v-blocks untouched. Also:
 * mc_comm_view / mc_comm_op_view / mc_comm_failed_ranks, every rooted op
 * with an inactive root fails with MC_ERR_ROOT_FAILED on every survivor
 * (naming the op and the root), a mismatch among the active ranks still
 * fails them all with MC_ERR_MISMATCH, and the allreduce results are
 * bit-identical across the active ranks.
 *
 * A data mismatch is reported and the sweep goes on; a failing call status
 * ends the rank (the ranks may no longer agree on the sequence).
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ref.h"
#include "tests_common.h"

#define MAXR 8
#define LARGE_COUNT 100003 /* odd */
#define MAX_REPORTS 25
#define GARBAGE 0xA5
#define QUICK_S 2.0     /* local failures (evicted, root failed) */
#define MISMATCH_S 10.0 /* a mismatch needs messages */
#define ROOT_RACE_ITERS 100

typedef enum {
    P_FIRST,    /* {0} */
    P_LAST,     /* {size-1} */
    P_ONE,      /* {1} */
    P_ZERO_TWO, /* {0, 2} */
    P_ALL_BUT,  /* every rank but size/2 */
    P_TWO_STEP, /* {size-1}, then {1} (epoch 3) */
} pattern_t;

static const char *const pattern_names[] = {
    [P_FIRST] = "first",
    [P_LAST] = "last",
    [P_ONE] = "one",
    [P_ZERO_TWO] = "zero_two",
    [P_ALL_BUT] = "all_but_one",
    [P_TWO_STEP] = "two_step",
};

typedef struct view_param {
    int size;
    mc_transport_kind_t transport;
    pattern_t pattern;
    int large;         /* also run the ~100k-element cases */
    const char *chunk; /* MOONCAKE_CHUNK_BYTES, NULL = default */
    int silent_leave;  /* removed ranks exit instead of calling shrink */
} view_param_t;

typedef struct vt {
    mc_comm_h comm;
    int rank, size;
    const view_param_t *p;
    uint8_t act[MAXR];
    int actl[MAXR], nact;
    uint64_t epoch;
    int fails;
    uint64_t seed;
    uint64_t hash; /* FNV over every allreduce result, in order */
    char what[256];
} vt_t;

static void *xalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "out of memory (%zu bytes)\n", bytes);
        _exit(3);
    }
    memset(p, 0, bytes ? bytes : 1);
    return p;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int contains_ci(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    for (const char *p = hay; *p; p++) {
        size_t i = 0;
        while (i < n && p[i] &&
               tolower((unsigned char)p[i]) ==
                   tolower((unsigned char)needle[i]))
            i++;
        if (i == n) return 1;
    }
    return 0;
}

static void set_what(vt_t *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void set_what(vt_t *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->what, sizeof(t->what), fmt, ap);
    va_end(ap);
}

static void report(vt_t *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void report(vt_t *t, const char *fmt, ...)
{
    t->fails++;
    if (t->fails > MAX_REPORTS) return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    fprintf(stderr,
            "[rank %d] ranks=%d transport=%s holes=%s epoch=%llu: %s: %s\n",
            t->rank, t->size, ref_tname(t->p->transport),
            pattern_names[t->p->pattern], (unsigned long long)t->epoch, t->what,
            buf);
    fflush(stderr);
}

/* A call that must succeed; on failure report and end the rank's sweep. */
static int call_ok(vt_t *t, mc_status_t st)
{
    if (st == MC_OK) return 0;
    report(t, "returned %s: %s (comm: %s)", mc_status_str(st), mc_last_error(),
           mc_comm_last_error(t->comm));
    return -1;
}

/* Compare n elements; report the first difference. */
static void check(vt_t *t, const char *label, mc_dtype_t d, const void *got,
                  const void *exp, size_t n)
{
    size_t es = ref_dsize(d);
    if (!n || memcmp(got, exp, n * es) == 0) return;
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

/* Reduction of input element idx over the active ranks (exact inputs, so
 * the order does not matter); AVG divides by the active count. */
static uint64_t ref_active_bits(const vt_t *t, mc_dtype_t d, mc_redop_t op,
                                uint64_t seed, size_t idx)
{
    ref_val_t acc = ref_gen(d, op, seed, t->actl[0], idx);
    for (int i = 1; i < t->nact; i++)
        ref_combine(d, op, &acc, ref_gen(d, op, seed, t->actl[i], idx));
    if (op != MC_AVG) return ref_bits(d, acc);
    int n = t->nact;
    if (d == MC_FLOAT64) return ref_double_to_bits(d, acc.f / (double)n);
    if (ref_is_float(d)) return ref_float_to_bits(d, (float)acc.f / (float)n);
    if (ref_is_signed(d))
        return (uint64_t)((int64_t)acc.u / (int64_t)n) & ref_width_mask(d);
    return (acc.u / (uint64_t)n) & ref_width_mask(d);
}

/* ------------------------------------------------------------------------ */
/* Reductions                                                               */
/* ------------------------------------------------------------------------ */

static int run_allreduce(vt_t *t, mc_dtype_t d, mc_redop_t op, size_t n, int ip)
{
    size_t es = ref_dsize(d);
    uint64_t seed = ++t->seed;
    unsigned char *send = xalloc(n * es), *recv = xalloc(n * es);
    unsigned char *exp = xalloc(n * es), *orig = xalloc(n * es);
    set_what(t, "allreduce dtype=%s op=%s count=%zu %s", ref_dname(d),
             ref_oname(op), n, ip ? "in-place" : "out-of-place");
    ref_fill_input(d, op, seed, t->rank, 0, send, n);
    memcpy(orig, send, n * es);
    for (size_t i = 0; i < n; i++)
        ref_put_bits(d, exp, i, ref_active_bits(t, d, op, seed, i));
    memset(recv, GARBAGE, n * es);
    unsigned char *out = ip ? send : recv;
    int rc = call_ok(t, mc_comm_allreduce(t->comm, send, out, n, d, op));
    if (!rc) {
        check(t, "result", d, out, exp, n);
        if (!ip) check(t, "sendbuf modified", d, send, orig, n);
        t->hash = ref_fnv(t->hash, out, n * es);
    }
    free(send), free(recv), free(exp), free(orig);
    return rc;
}

static int run_reduce_scatter(vt_t *t, mc_dtype_t d, mc_redop_t op, size_t rc_,
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
            ref_active_bits(t, d, op, seed, (size_t)t->rank * rc_ + k));
    memset(recv, GARBAGE, rc_ * es);
    unsigned char *out = ip ? send + (size_t)t->rank * rc_ * es : recv;
    int rc = call_ok(t, mc_comm_reduce_scatter(t->comm, send, out, rc_, d, op));
    if (!rc) {
        check(t, "result", d, out, exp, rc_);
        if (!ip) check(t, "sendbuf modified", d, send, orig, total);
    }
    free(send), free(recv), free(exp), free(orig);
    return rc;
}

/* Uneven counts with zeros; block s at the prefix sum (the API's layout). */
static size_t rsv_counts(int size, size_t base, size_t *counts, size_t *displs)
{
    size_t total = 0;
    for (int s = 0; s < size; s++) {
        counts[s] = base && s % 4 != 2 ? base + (size_t)(s * 3) % 5 : 0;
        displs[s] = total;
        total += counts[s];
    }
    return total;
}

static int run_reduce_scatterv(vt_t *t, mc_dtype_t d, mc_redop_t op,
                               size_t base, int ip)
{
    size_t es = ref_dsize(d), counts[MAXR], displs[MAXR];
    size_t total = rsv_counts(t->size, base, counts, displs);
    size_t mine = counts[t->rank];
    uint64_t seed = ++t->seed;
    unsigned char *send = xalloc(total * es), *recv = xalloc(mine * es);
    unsigned char *exp = xalloc(mine * es);
    set_what(t, "reduce_scatterv dtype=%s op=%s base=%zu %s", ref_dname(d),
             ref_oname(op), base, ip ? "in-place" : "out-of-place");
    ref_fill_input(d, op, seed, t->rank, 0, send, total);
    for (size_t k = 0; k < mine; k++)
        ref_put_bits(d, exp, k,
                     ref_active_bits(t, d, op, seed, displs[t->rank] + k));
    memset(recv, GARBAGE, mine * es);
    unsigned char *out = ip ? send + displs[t->rank] * es : recv;
    int rc =
        call_ok(t, mc_comm_reduce_scatterv(t->comm, send, out, counts, d, op));
    if (!rc) check(t, "result", d, out, exp, mine);
    free(send), free(recv), free(exp);
    return rc;
}

static int run_reduce(vt_t *t, mc_dtype_t d, mc_redop_t op, size_t n, int root,
                      int ip)
{
    size_t es = ref_dsize(d);
    int is_root = t->rank == root;
    uint64_t seed = ++t->seed;
    unsigned char *send = xalloc(n * es), *recv = xalloc(n * es);
    unsigned char *exp = xalloc(n * es);
    set_what(t, "reduce dtype=%s op=%s count=%zu root=%d %s", ref_dname(d),
             ref_oname(op), n, root, ip ? "in-place" : "out-of-place");
    ref_fill_input(d, op, seed, t->rank, 0, send, n);
    if (is_root)
        for (size_t i = 0; i < n; i++)
            ref_put_bits(d, exp, i, ref_active_bits(t, d, op, seed, i));
    memset(recv, GARBAGE, n * es);
    unsigned char *out = ip ? send : recv;
    int rc = call_ok(t, mc_comm_reduce(t->comm, send, out, n, d, op, root));
    if (!rc && is_root) check(t, "result at root", d, out, exp, n);
    free(send), free(recv), free(exp);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Data movement                                                            */
/* ------------------------------------------------------------------------ */

/* exp := block of slot s (active: rank s's data; inactive: zeros). */
static void exp_block(const vt_t *t, mc_dtype_t d, uint64_t seed, int s,
                      int data_rank, size_t base, unsigned char *exp, size_t n)
{
    if (t->act[s])
        ref_fill_bytes(d, seed, data_rank, base, exp, n);
    else
        memset(exp, 0, n * ref_dsize(d));
}

static int run_allgather(vt_t *t, mc_dtype_t d, size_t n, int ip)
{
    size_t es = ref_dsize(d), total = n * (size_t)t->size;
    uint64_t seed = ++t->seed;
    unsigned char *send = xalloc(n * es), *recv = xalloc(total * es);
    unsigned char *exp = xalloc(total * es);
    set_what(t, "allgather dtype=%s count=%zu %s", ref_dname(d), n,
             ip ? "in-place" : "out-of-place");
    memset(recv, GARBAGE, total * es);
    unsigned char *in = ip ? recv + (size_t)t->rank * n * es : send;
    ref_fill_bytes(d, seed, t->rank, 0, in, n);
    for (int s = 0; s < t->size; s++)
        exp_block(t, d, seed, s, s, 0, exp + (size_t)s * n * es, n);
    int rc = call_ok(t, mc_comm_allgather(t->comm, in, recv, n, d));
    if (!rc) check(t, "result", d, recv, exp, total);
    free(send), free(recv), free(exp);
    return rc;
}

/* Blocks in reverse slot order with 3-element gaps; some counts zero. */
static size_t agv_layout(int size, size_t base, size_t *counts, size_t *displs)
{
    size_t pos = 0;
    for (int s = size - 1; s >= 0; s--) {
        counts[s] = base && s % 3 != 1 ? base + (size_t)(s * 5) % 7 : 0;
        displs[s] = pos;
        pos += counts[s] + 3;
    }
    return pos;
}

static int run_allgatherv(vt_t *t, mc_dtype_t d, size_t base, int ip)
{
    size_t es = ref_dsize(d), counts[MAXR], displs[MAXR];
    size_t total = agv_layout(t->size, base, counts, displs);
    size_t mine = counts[t->rank];
    uint64_t seed = ++t->seed;
    unsigned char *send = xalloc(mine * es), *recv = xalloc(total * es);
    unsigned char *exp = xalloc(total * es);
    set_what(t, "allgatherv dtype=%s base=%zu %s", ref_dname(d), base,
             ip ? "in-place" : "out-of-place");
    memset(recv, GARBAGE, total * es);
    memset(exp, GARBAGE, total * es); /* gaps stay as they were */
    unsigned char *in = ip ? recv + displs[t->rank] * es : send;
    ref_fill_bytes(d, seed, t->rank, 0, in, mine);
    for (int s = 0; s < t->size; s++)
        exp_block(t, d, seed, s, s, 0, exp + displs[s] * es, counts[s]);
    int rc = call_ok(
        t, mc_comm_allgatherv(t->comm, in, mine, recv, counts, displs, d));
    if (!rc) check(t, "result", d, recv, exp, total);
    free(send), free(recv), free(exp);
    return rc;
}

static int run_broadcast(vt_t *t, mc_dtype_t d, size_t n, int root, int ip)
{
    size_t es = ref_dsize(d);
    int is_root = t->rank == root;
    uint64_t seed = ++t->seed;
    unsigned char *send = xalloc(n * es), *recv = xalloc(n * es);
    unsigned char *exp = xalloc(n * es);
    set_what(t, "broadcast dtype=%s count=%zu root=%d %s", ref_dname(d), n,
             root, ip ? "in-place" : "out-of-place");
    ref_fill_bytes(d, seed, root, 0, exp, n);
    memset(recv, GARBAGE, n * es);
    if (is_root) ref_fill_bytes(d, seed, root, 0, ip ? recv : send, n);
    int rc = call_ok(
        t, mc_comm_broadcast(t->comm, ip ? recv : send, recv, n, d, root));
    if (!rc) check(t, "result", d, recv, exp, n);
    free(send), free(recv), free(exp);
    return rc;
}

static int run_gather(vt_t *t, mc_dtype_t d, size_t n, int root, int ip)
{
    size_t es = ref_dsize(d), total = n * (size_t)t->size;
    int is_root = t->rank == root;
    uint64_t seed = ++t->seed;
    unsigned char *send = xalloc(n * es), *recv = xalloc(total * es);
    unsigned char *exp = xalloc(total * es);
    set_what(t, "gather dtype=%s count=%zu root=%d %s", ref_dname(d), n, root,
             ip ? "in-place" : "out-of-place");
    memset(recv, GARBAGE, total * es);
    unsigned char *in = ip && is_root ? recv + (size_t)root * n * es : send;
    ref_fill_bytes(d, seed, t->rank, 0, in, n);
    for (int s = 0; s < t->size; s++)
        exp_block(t, d, seed, s, s, 0, exp + (size_t)s * n * es, n);
    int rc = call_ok(
        t, mc_comm_gather(t->comm, in, is_root ? recv : NULL, n, d, root));
    if (!rc && is_root) check(t, "result at root", d, recv, exp, total);
    free(send), free(recv), free(exp);
    return rc;
}

static int run_scatter(vt_t *t, mc_dtype_t d, size_t n, int root, int ip)
{
    size_t es = ref_dsize(d), total = n * (size_t)t->size;
    int is_root = t->rank == root;
    uint64_t seed = ++t->seed;
    unsigned char *send = xalloc(total * es), *recv = xalloc(n * es);
    unsigned char *exp = xalloc(n * es);
    set_what(t, "scatter dtype=%s count=%zu root=%d %s", ref_dname(d), n, root,
             ip ? "in-place" : "out-of-place");
    if (is_root) ref_fill_bytes(d, seed, root, 0, send, total);
    ref_fill_bytes(d, seed, root, (size_t)t->rank * n, exp, n);
    memset(recv, GARBAGE, n * es);
    unsigned char *out = ip && is_root ? send + (size_t)root * n * es : recv;
    int rc = call_ok(
        t, mc_comm_scatter(t->comm, is_root ? send : NULL, out, n, d, root));
    if (!rc) check(t, "result", d, out, exp, n);
    free(send), free(recv), free(exp);
    return rc;
}

/* Data of the block rank i sends to rank j. */
static int a2a_id(int i, int j)
{
    return i * 64 + j;
}

static int run_alltoall(vt_t *t, mc_dtype_t d, size_t n)
{
    size_t es = ref_dsize(d), total = n * (size_t)t->size;
    uint64_t seed = ++t->seed;
    unsigned char *send = xalloc(total * es), *recv = xalloc(total * es);
    unsigned char *exp = xalloc(total * es);
    set_what(t, "alltoall dtype=%s count=%zu", ref_dname(d), n);
    for (int j = 0; j < t->size; j++) {
        ref_fill_bytes(d, seed, a2a_id(t->rank, j), 0,
                       send + (size_t)j * n * es, n);
        exp_block(t, d, seed, j, a2a_id(j, t->rank), 0,
                  exp + (size_t)j * n * es, n);
    }
    memset(recv, GARBAGE, total * es);
    int rc = call_ok(t, mc_comm_alltoall(t->comm, send, recv, n, d));
    if (!rc) check(t, "result", d, recv, exp, total);
    free(send), free(recv), free(exp);
    return rc;
}

/* Elements rank i sends to rank j (some zero). */
static size_t a2av_count(size_t base, int i, int j)
{
    if (!base || (i + j) % 5 == 3) return 0;
    return base + (size_t)(i * 3 + j * 5) % 7;
}

static int run_alltoallv(vt_t *t, mc_dtype_t d, size_t base)
{
    size_t es = ref_dsize(d);
    size_t sc[MAXR], sd[MAXR], rc_[MAXR], rd[MAXR], spos = 0, rpos = 1;
    int me = t->rank;
    /* send blocks in reverse order with 2-element gaps; receive blocks in
     * order after a 1-element lead, with 1-element gaps */
    for (int j = t->size - 1; j >= 0; j--) {
        sc[j] = a2av_count(base, me, j);
        sd[j] = spos;
        spos += sc[j] + 2;
    }
    for (int i = 0; i < t->size; i++) {
        rc_[i] = a2av_count(base, i, me);
        rd[i] = rpos;
        rpos += rc_[i] + 1;
    }
    uint64_t seed = ++t->seed;
    unsigned char *send = xalloc(spos * es), *recv = xalloc(rpos * es);
    unsigned char *exp = xalloc(rpos * es);
    set_what(t, "alltoallv dtype=%s base=%zu", ref_dname(d), base);
    memset(send, GARBAGE, spos * es);
    for (int j = 0; j < t->size; j++)
        ref_fill_bytes(d, seed, a2a_id(me, j), 0, send + sd[j] * es, sc[j]);
    memset(recv, GARBAGE, rpos * es);
    memset(exp, GARBAGE, rpos * es);
    for (int i = 0; i < t->size; i++)
        exp_block(t, d, seed, i, a2a_id(i, me), 0, exp + rd[i] * es, rc_[i]);
    int rc =
        call_ok(t, mc_comm_alltoallv(t->comm, send, sc, sd, recv, rc_, rd, d));
    if (!rc) check(t, "result", d, recv, exp, rpos);
    free(send), free(recv), free(exp);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Views, failures                                                          */
/* ------------------------------------------------------------------------ */

static void check_view(vt_t *t, const char *label, uint64_t epoch,
                       const uint8_t *active, int nactive)
{
    int bad = epoch != t->epoch || nactive != t->nact;
    for (int s = 0; s < t->size; s++)
        bad |= (active[s] != 0) != (t->act[s] != 0);
    if (!bad) return;
    char got[64] = "", want[64] = "";
    for (int s = 0; s < t->size; s++) {
        got[s] = active[s] ? '1' : '0';
        want[s] = t->act[s] ? '1' : '0';
    }
    report(t, "%s: got epoch %llu active %s (%d), expected epoch %llu %s (%d)",
           label, (unsigned long long)epoch, got, nactive,
           (unsigned long long)t->epoch, want, t->nact);
}

static void check_views(vt_t *t, const int *removed, int nremoved)
{
    uint64_t epoch = 0;
    uint8_t active[MAXR];
    int nactive = -1;
    set_what(t, "views after shrink");
    memset(active, 0xff, sizeof(active));
    mc_status_t st = mc_comm_view(t->comm, &epoch, active, &nactive);
    if (st != MC_OK)
        report(t, "mc_comm_view: %s", mc_status_str(st));
    else
        check_view(t, "mc_comm_view", epoch, active, nactive);
    /* the shrink's own barrier ran in the new view */
    memset(active, 0xff, sizeof(active));
    st = mc_comm_op_view(t->comm, &epoch, active, &nactive);
    if (st != MC_OK)
        report(t, "mc_comm_op_view: %s", mc_status_str(st));
    else
        check_view(t, "mc_comm_op_view after shrink", epoch, active, nactive);
    int failed[MAXR], sorted[MAXR];
    memcpy(sorted, removed, sizeof(int) * (size_t)nremoved);
    for (int i = 1; i < nremoved; i++)
        for (int k = i; k > 0 && sorted[k - 1] > sorted[k]; k--) {
            int x = sorted[k];
            sorted[k] = sorted[k - 1];
            sorted[k - 1] = x;
        }
    int nf = mc_comm_failed_ranks(t->comm, failed, MAXR);
    int bad = nf != nremoved;
    for (int i = 0; !bad && i < nf; i++)
        bad = failed[i] != sorted[i];
    if (bad)
        report(t, "mc_comm_failed_ranks: got %d ranks (first %d), expected %d",
               nf, nf > 0 ? failed[0] : -1, nremoved);
}

/* After a successful collective, op_view is the current view. */
static void check_op_view(vt_t *t)
{
    uint64_t epoch = 0;
    uint8_t active[MAXR];
    int nactive = -1;
    memset(active, 0xff, sizeof(active));
    mc_status_t st = mc_comm_op_view(t->comm, &epoch, active, &nactive);
    if (st != MC_OK)
        report(t, "mc_comm_op_view: %s", mc_status_str(st));
    else
        check_view(t, "mc_comm_op_view", epoch, active, nactive);
}

/* Every rooted op with an inactive root fails at once on every survivor
 * with MC_ERR_ROOT_FAILED naming the op and the root; the communicator
 * stays usable. */
static int run_root_failed(vt_t *t, int root)
{
    static const char *const names[] = {"broadcast", "reduce", "gather",
                                        "scatter"};
    size_t n = 5, es = 4;
    unsigned char *a = xalloc(n * es * MAXR), *b = xalloc(n * es * MAXR);
    int rc = 0;
    for (int k = 0; k < 4 && !rc; k++) {
        set_what(t, "%s with inactive root %d", names[k], root);
        double t0 = now_s();
        mc_status_t st;
        switch (k) {
        case 0:
            st = mc_comm_broadcast(t->comm, a, b, n, MC_INT32, root);
            break;
        case 1:
            st = mc_comm_reduce(t->comm, a, b, n, MC_INT32, MC_SUM, root);
            break;
        case 2:
            st = mc_comm_gather(t->comm, a, b, n, MC_INT32, root);
            break;
        default:
            st = mc_comm_scatter(t->comm, a, b, n, MC_INT32, root);
            break;
        }
        double dt = now_s() - t0;
        const char *cerr = mc_comm_last_error(t->comm);
        char rk[32];
        snprintf(rk, sizeof(rk), "root rank %d", root);
        if (st != MC_ERR_ROOT_FAILED) {
            report(t, "got %s (%s), expected MC_ERR_ROOT_FAILED",
                   mc_status_str(st), mc_last_error());
            rc = -1;
            break;
        }
        if (dt > QUICK_S) report(t, "took %.3f s", dt);
        if (!contains_ci(cerr, names[k]) || !contains_ci(cerr, rk))
            report(t, "error text does not name the op and '%s': \"%s\"", rk,
                   cerr);
        if (!mc_last_error()[0]) report(t, "empty mc_last_error");
        rc = run_allreduce(t, MC_INT32, MC_SUM, 7, 0);
    }
    /* The failed op sits between two ops that must stay in step: one that
     * ends in a barrier (signal words on shm), then a small allreduce
     * (shared slots on shm: no barrier), which must not start before every
     * rank has left the first (a rank still in its barrier would miss the
     * word it waits for and time out). */
    for (int i = 0; i < ROOT_RACE_ITERS && !rc; i++) {
        rc = run_broadcast(t, MC_INT32, 3, t->actl[i % t->nact], 0);
        if (rc) break;
        set_what(t, "broadcast with inactive root %d, round %d", root, i);
        mc_status_t st = mc_comm_broadcast(t->comm, a, b, n, MC_INT32, root);
        if (st != MC_ERR_ROOT_FAILED) {
            report(t, "got %s (%s), expected MC_ERR_ROOT_FAILED",
                   mc_status_str(st), mc_last_error());
            rc = -1;
            break;
        }
        rc = run_allreduce(t, MC_INT32, MC_SUM, 7, 0);
    }
    free(a), free(b);
    return rc;
}

/* A disagreement among the active ranks still fails all of them. */
static int run_mismatch(vt_t *t)
{
    int last = t->rank == t->actl[t->nact - 1];
    int32_t s[8] = {0}, r[8];
    set_what(t, "allreduce count 4 vs 5 (last active rank)");
    double t0 = now_s();
    mc_status_t st =
        mc_comm_allreduce(t->comm, s, r, last ? 5 : 4, MC_INT32, MC_SUM);
    double dt = now_s() - t0;
    if (st != MC_ERR_MISMATCH) {
        report(t, "got %s (%s), expected MC_ERR_MISMATCH", mc_status_str(st),
               mc_last_error());
        return -1;
    }
    if (dt > MISMATCH_S) report(t, "mismatch took %.3f s", dt);
    return run_allreduce(t, MC_INT32, MC_SUM, 7, 0);
}

/* The allreduce results so far are the same bits on every active rank. */
static int check_hashes(vt_t *t)
{
    uint64_t all[MAXR];
    set_what(t, "allreduce result hashes");
    memset(all, GARBAGE, sizeof(all));
    if (call_ok(t, mc_comm_allgather(t->comm, &t->hash, all, 1, MC_UINT64)))
        return -1;
    for (int s = 0; s < t->size; s++) {
        uint64_t want = t->act[s] ? t->hash : 0;
        if (all[s] != want)
            report(t, "slot %d: hash %016llx, expected %016llx", s,
                   (unsigned long long)all[s], (unsigned long long)want);
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* The sweep over one view                                                  */
/* ------------------------------------------------------------------------ */

#define RUN(expr)                                                              \
    do {                                                                       \
        if ((expr) < 0) return -1;                                             \
    } while (0)

static int sweep_count(vt_t *t, size_t n, int large)
{
    int first = t->actl[0], lastr = t->actl[t->nact - 1];
    int mid = t->actl[t->nact / 2];
    int roots[3] = {first, lastr, mid}, nroots = large ? 1 : 3;
    if (large) roots[0] = mid;

    for (int ip = 0; ip < 2; ip++) {
        RUN(run_allreduce(t, MC_INT32, MC_SUM, n, ip));
        RUN(run_allreduce(t, MC_FLOAT32, MC_MAX, n, ip));
        RUN(run_allreduce(t, MC_BFLOAT16, MC_AVG, n, ip));
        if (!large) RUN(run_allreduce(t, MC_FLOAT64, MC_AVG, n, ip));
        RUN(run_allgather(t, MC_INT32, n, ip));
        if (!large) RUN(run_allgather(t, MC_BFLOAT16, n, ip));
        RUN(run_allgatherv(t, large ? MC_FLOAT32 : MC_FLOAT64,
                           large ? n / 4 : n, ip));
        RUN(run_reduce_scatter(t, MC_FLOAT32, MC_SUM, large ? n / 4 : n, ip));
        if (!large) RUN(run_reduce_scatter(t, MC_BFLOAT16, MC_AVG, n, ip));
        RUN(run_reduce_scatterv(t, MC_INT32, MC_MAX, large ? n / 4 : n, ip));
        for (int k = 0; k < nroots; k++) {
            RUN(run_broadcast(t, MC_FLOAT64, n, roots[k], ip));
            RUN(run_reduce(t, MC_INT32, MC_SUM, n, roots[k], ip));
            if (!large) RUN(run_reduce(t, MC_FLOAT32, MC_AVG, n, roots[k], ip));
            RUN(run_gather(t, MC_INT32, large ? n / 4 : n, roots[k], ip));
            RUN(run_scatter(t, MC_BFLOAT16, large ? n / 4 : n, roots[k], ip));
        }
    }
    RUN(run_alltoall(t, MC_INT32, large ? n / 4 : n));
    if (!large) RUN(run_alltoall(t, MC_FLOAT64, n));
    RUN(run_alltoallv(t, large ? MC_INT32 : MC_BFLOAT16, large ? n / 4 : n));
    set_what(t, "barrier");
    RUN(call_ok(t, mc_comm_barrier(t->comm)));
    return 0;
}

static int sweep(vt_t *t)
{
    /* one operation first, then the op view must be this view */
    RUN(run_allreduce(t, MC_INT32, MC_SUM, 1, 0));
    check_op_view(t);
    static const size_t counts[] = {0, 1, 37};
    for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++)
        RUN(sweep_count(t, counts[i], 0));
    if (t->p->large) RUN(sweep_count(t, LARGE_COUNT, 1));
    int nroot = 0;
    for (int s = 0; s < t->size && nroot < 2; s++) {
        if (t->act[s]) continue;
        RUN(run_root_failed(t, s));
        nroot++;
    }
    if (t->nact > 1) RUN(run_mismatch(t));
    RUN(check_hashes(t));
    check_op_view(t);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Rank body                                                                */
/* ------------------------------------------------------------------------ */

/* The ranks removed by shrink `k` of the pattern; returns how many. */
static int pattern_step(pattern_t pt, int size, int k, int *out)
{
    int n = 0;
    switch (pt) {
    case P_FIRST:
        if (k == 0) out[n++] = 0;
        break;
    case P_LAST:
        if (k == 0) out[n++] = size - 1;
        break;
    case P_ONE:
        if (k == 0) out[n++] = 1;
        break;
    case P_ZERO_TWO:
        if (k == 0) out[n++] = 2, out[n++] = 0; /* unsorted on purpose */
        break;
    case P_ALL_BUT:
        for (int s = 0; k == 0 && s < size; s++)
            if (s != size / 2) out[n++] = s;
        break;
    case P_TWO_STEP:
        if (k == 0) out[n++] = size - 1;
        if (k == 1) out[n++] = 1;
        break;
    }
    return n;
}

/* A removed rank that called shrink: its next collectives fail at once. */
/* knows_view: it took part in the shrink that removed it (else nobody
 * told it the new view: fenced on its own evidence, its epoch is its last
 * one's, but it is not active in it either) */
static int check_evicted(vt_t *t, int knows_view)
{
    int32_t s[4] = {1, 2, 3, 4}, r[4];
    set_what(t, "evicted rank");
    for (int k = 0; k < 2; k++) {
        double t0 = now_s();
        mc_status_t st =
            k ? mc_comm_barrier(t->comm)
              : mc_comm_allreduce(t->comm, s, r, 4, MC_INT32, MC_SUM);
        double dt = now_s() - t0;
        if (st != MC_ERR_EVICTED)
            report(t, "%s returned %s (%s), expected MC_ERR_EVICTED",
                   k ? "barrier" : "allreduce", mc_status_str(st),
                   mc_last_error());
        else if (dt > QUICK_S)
            report(t, "MC_ERR_EVICTED took %.3f s", dt);
    }
    uint8_t active[MAXR];
    int nactive = -1, n = 0;
    if (mc_comm_view(t->comm, NULL, active, &nactive) != MC_OK ||
        active[t->rank])
        report(t, "mc_comm_view still lists the evicted rank as active%s",
               knows_view ? "" : " (fenced on its own evidence)");
    for (int p = 0; p < t->size; p++)
        n += active[p] != 0;
    if (nactive != n)
        report(t, "mc_comm_view: %d active but %d in the mask", nactive, n);
    return t->fails;
}

/* Is `rank` removed in step k of the pattern? */
static int listed_in(pattern_t pt, int size, int k, int rank)
{
    int removed[MAXR];
    int nr = k < 2 ? pattern_step(pt, size, k, removed) : 0;
    for (int i = 0; i < nr; i++)
        if (removed[i] == rank) return 1;
    return 0;
}

static int rank_body(mc_comm_h comm, int rank, int size, void *arg)
{
    const view_param_t *p = arg;
    vt_t *t = calloc(1, sizeof(*t));
    if (!t) return MC_TFAIL(rank, "out of memory");
    t->comm = comm;
    t->rank = rank;
    t->size = size;
    t->p = p;
    t->epoch = 1;
    t->seed = 1000;
    t->hash = 1469598103934665603ull;
    t->nact = size;
    for (int s = 0; s < size; s++) {
        t->act[s] = 1;
        t->actl[s] = s;
    }
    uint64_t epoch = 0;
    uint8_t active[MAXR];
    int nactive = 0, rc;
    set_what(t, "initial view");
    if (mc_comm_view(comm, &epoch, active, &nactive) != MC_OK)
        report(t, "mc_comm_view failed: %s", mc_last_error());
    else
        check_view(t, "mc_comm_view", epoch, active, nactive);

    for (int k = 0; k < 2; k++) {
        int removed[MAXR];
        int nr = pattern_step(p->pattern, size, k, removed);
        if (!nr) break;
        int listed = 0;
        for (int i = 0; i < nr; i++)
            listed |= removed[i] == rank;
        if (listed && p->silent_leave) goto out; /* just goes away */
        set_what(t, "shrink %d", k + 1);
        mc_status_t st = mc_comm_shrink(comm, removed, nr);
        if (st == MC_ERR_EVICTED && !listed &&
            listed_in(p->pattern, size, k + 1, rank)) {
            /* the others removed it in the next step while it was still
             * in this one's barrier, and its shared slots moved on
             * (comm.c, slot_left_behind): fenced at once, as it would be
             * at its next call */
            check_evicted(t, 0);
            goto out;
        }
        if (call_ok(t, st)) goto out;
        if (listed) {
            check_evicted(t, 1);
            goto out;
        }
        t->epoch++;
        for (int i = 0; i < nr; i++)
            t->act[removed[i]] = 0;
        t->nact = 0;
        for (int s = 0; s < size; s++)
            if (t->act[s]) t->actl[t->nact++] = s;
        check_views(t, removed, nr);
    }
    sweep(t); /* a failure is reported and counted in t->fails */
out:
    rc = t->fails;
    free(t);
    return rc;
}

static void test_view(void **state)
{
    view_param_t *p = *state;
    if (p->chunk) setenv("MOONCAKE_CHUNK_BYTES", p->chunk, 1);
    int failed = mc_test_spawn(p->size, p->transport, 60, rank_body, p);
    if (p->chunk) unsetenv("MOONCAKE_CHUNK_BYTES");
    assert_int_equal(failed, 0);
}

/* Every size x transport x pattern the pattern fits; removed ranks leave
 * silently in every other case; a few cases add the large counts (one of
 * them with small pipeline chunks, so blocks span many frames). */
#define MAX_PARAMS 64
static view_param_t params[MAX_PARAMS];

static int make_params(void)
{
    static const int sizes[] = {2, 3, 4, 5, 8};
    static const mc_transport_kind_t tls[] = {MC_TRANSPORT_SHM,
                                              MC_TRANSPORT_TCP};
    int n = 0;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
        for (int pt = P_FIRST; pt <= P_TWO_STEP; pt++)
            for (int k = 0; k < 2; k++) {
                int size = sizes[i];
                /* {1} is {last} and two steps would empty the group */
                if (size < 3 && pt != P_FIRST && pt != P_LAST) continue;
                view_param_t *q = &params[n];
                q->size = size;
                q->transport = tls[k];
                q->pattern = (pattern_t)pt;
                q->silent_leave = (pt + k + (int)i) % 2;
                q->large = pt == P_ZERO_TWO || (size == 2 && pt == P_LAST);
                q->chunk = q->large && k ? "16384" : NULL;
                n++;
            }
    return n;
}

int main(void)
{
    int N = make_params();
    static char names[MAX_PARAMS][64];
    struct CMUnitTest tests[MAX_PARAMS];
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof(names[i]), "view_%d_%s_%s%s%s",
                 params[i].size, ref_tname(params[i].transport),
                 pattern_names[params[i].pattern],
                 params[i].silent_leave ? "_silent" : "",
                 params[i].large ? "_large" : "");
        tests[i] =
            (struct CMUnitTest){names[i], test_view, NULL, NULL, &params[i]};
    }
    return _cmocka_run_group_tests("view", tests, N, NULL, NULL);
}
