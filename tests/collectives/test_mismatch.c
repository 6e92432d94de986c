/*
 * Ranks that disagree on a collective (operation, count, dtype, reduction
 * op, root, v-counts) must all fail quickly with MC_ERR_MISMATCH, with a
 * communicator error naming what differs, and the communicator must stay
 * usable: the next matching allreduce succeeds with the right result.
 * 2, 3 and 4 ranks over shm and tcp; one rank out and all different.
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

#include "ref.h"
#include "tests_common.h"

/* A mismatch must be reported long before the spawn's 60 s op timeout. */
#define QUICK_S 10.0
#define BUF_ELEMS 16384 /* int64: 128 KiB per rank */

typedef struct mm_param {
    int size;
    mc_transport_kind_t transport;
} mm_param_t;

typedef enum {
    SC_COLL,       /* last rank: allgather; others: allreduce */
    SC_COUNT,      /* last rank: count 5; others 4 */
    SC_COUNT_NB,   /* same, non-blocking issue + wait */
    SC_DTYPE,      /* last rank: float32; others int32 (same bytes) */
    SC_DTYPE_R0,   /* rank 0: int64 x 2; others int32 x 4 (same bytes) */
    SC_OP,         /* last rank: max; others sum */
    SC_ROOT,       /* broadcast: last rank root 1; others root 0 */
    SC_ZERO,       /* last rank: count 0; others 4 */
    SC_ZERO_R0,    /* rank 0: count 4; others 0 */
    SC_BARRIER,    /* last rank: barrier; others allreduce */
    SC_ALL_COUNT,  /* count = rank + 1 */
    SC_ALL_COLL,   /* every rank a different collective */
    SC_ALL_ROOT,   /* reduce with root = rank */
    SC_RSV_COUNTS, /* reduce_scatterv: last rank's recvcounts differ */
    SC_AGV_COUNTS, /* allgatherv: last rank's recvcounts differ elsewhere */
    SC_A2AV_PAIR,  /* alltoallv: 0->1 send 3, 1 expects 2 from 0 */
    SC_BIG_BCAST,  /* broadcast int64, last rank: count 12000; others 10000
                      (one host, 3+ ranks: the root's copy piped) */
    SC_BIG_SPLIT,  /* allreduce int64, last rank: count 9000; others 8000
                      (one host, 3+ ranks: the split allreduce) */
    SC_COUNT_
} scenario_t;

static const struct {
    const char *name;
    int min_size;
} sc_info[SC_COUNT_] = {
    [SC_COLL] = {"allreduce vs allgather", 2},
    [SC_COUNT] = {"count 4 vs 5", 2},
    [SC_COUNT_NB] = {"count 4 vs 5 (non-blocking)", 2},
    [SC_DTYPE] = {"int32 vs float32", 2},
    [SC_DTYPE_R0] = {"rank 0 int64x2 vs int32x4", 2},
    [SC_OP] = {"sum vs max", 2},
    [SC_ROOT] = {"broadcast root 0 vs 1", 2},
    [SC_ZERO] = {"count 4 vs 0 (last)", 2},
    [SC_ZERO_R0] = {"count 0 vs 4 (rank 0)", 2},
    [SC_BARRIER] = {"allreduce vs barrier", 2},
    [SC_ALL_COUNT] = {"all counts differ", 2},
    [SC_ALL_COLL] = {"all collectives differ", 3},
    [SC_ALL_ROOT] = {"reduce, all roots differ", 2},
    [SC_RSV_COUNTS] = {"reduce_scatterv recvcounts differ", 2},
    [SC_AGV_COUNTS] = {"allgatherv recvcounts differ", 2},
    [SC_A2AV_PAIR] = {"alltoallv pair 0->1 send 3 vs recv 2", 2},
    [SC_BIG_BCAST] = {"broadcast count 10000 vs 12000", 2},
    [SC_BIG_SPLIT] = {"allreduce count 8000 vs 9000", 2},
};

/* What the error text must contain: a value only the disagreeing call has
 * (the recovery allreduce is allreduce(count=7, int32, sum), so a message
 * that only describes the next operation does not pass). */
static void sc_keywords(scenario_t sc, int size, char *buf, size_t cap)
{
    int tot = 2 * size + 1;
    switch (sc) {
    case SC_COLL:
        snprintf(buf, cap, "allgather");
        break;
    case SC_COUNT:
    case SC_COUNT_NB:
        snprintf(buf, cap, "count=5|count 5|count: 5");
        break;
    case SC_DTYPE:
        snprintf(buf, cap, "float32");
        break;
    case SC_DTYPE_R0:
        snprintf(buf, cap, "int64");
        break;
    case SC_OP:
        snprintf(buf, cap, "max");
        break;
    case SC_ROOT:
        snprintf(buf, cap, "root=1|root 1|root: 1");
        break;
    case SC_ZERO:
        snprintf(buf, cap, "count=0|count 0|count: 0");
        break;
    case SC_ZERO_R0:
        snprintf(buf, cap, "count=4|count 4|count: 4");
        break;
    case SC_BARRIER:
        snprintf(buf, cap, "barrier");
        break;
    case SC_ALL_COUNT:
        snprintf(buf, cap,
                 "count=1|count 1|count=2|count 2|count=3|count 3|"
                 "count=4|count 4");
        break;
    case SC_ALL_COLL:
        snprintf(buf, cap, "allgather|broadcast|reduce_scatter");
        break;
    case SC_ALL_ROOT:
        snprintf(buf, cap, "root");
        break;
    case SC_RSV_COUNTS:
    case SC_AGV_COUNTS:
        snprintf(buf, cap, "recvcounts|count=%d|count %d", tot, tot);
        break;
    case SC_A2AV_PAIR:
        snprintf(buf, cap, "12 bytes|count=3|count 3|sendcount|recvcount");
        break;
    case SC_BIG_BCAST:
        snprintf(buf, cap, "count=12000|count 12000");
        break;
    case SC_BIG_SPLIT:
        snprintf(buf, cap, "count=9000|count 9000");
        break;
    default:
        snprintf(buf, cap, "mismatch");
        break;
    }
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

static int names_any(const char *msg, const char *keywords)
{
    char kw[128];
    snprintf(kw, sizeof(kw), "%s", keywords);
    for (char *save = NULL, *k = strtok_r(kw, "|", &save); k;
         k = strtok_r(NULL, "|", &save))
        if (contains_ci(msg, k)) return 1;
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* This rank's side of scenario `sc`. */
static mc_status_t do_scenario(mc_comm_h comm, int rank, int size,
                               scenario_t sc, int64_t *sbuf, int64_t *rbuf)
{
    int last = rank == size - 1;
    size_t counts[8], displs[8], c2[8], d2[8];
    switch (sc) {
    case SC_COLL:
        if (last) return mc_comm_allgather(comm, sbuf, rbuf, 4, MC_INT32);
        return mc_comm_allreduce(comm, sbuf, rbuf, 4, MC_INT32, MC_SUM);
    case SC_COUNT:
        return mc_comm_allreduce(comm, sbuf, rbuf, last ? 5 : 4, MC_INT32,
                                 MC_SUM);
    case SC_COUNT_NB: {
        mc_request_h req;
        mc_status_t st = mc_comm_iallreduce(comm, sbuf, rbuf, last ? 5 : 4,
                                            MC_INT32, MC_SUM, &req);
        if (st != MC_OK) return st;
        st = mc_request_wait(req, -1);
        mc_request_free(req);
        return st;
    }
    case SC_DTYPE:
        return mc_comm_allreduce(comm, sbuf, rbuf, 4,
                                 last ? MC_FLOAT32 : MC_INT32, MC_SUM);
    case SC_DTYPE_R0:
        if (rank == 0)
            return mc_comm_allreduce(comm, sbuf, rbuf, 2, MC_INT64, MC_SUM);
        return mc_comm_allreduce(comm, sbuf, rbuf, 4, MC_INT32, MC_SUM);
    case SC_OP:
        return mc_comm_allreduce(comm, sbuf, rbuf, 4, MC_INT32,
                                 last ? MC_MAX : MC_SUM);
    case SC_ROOT:
        return mc_comm_broadcast(comm, sbuf, rbuf, 4, MC_INT32, last ? 1 : 0);
    case SC_ZERO:
        return mc_comm_allreduce(comm, sbuf, rbuf, last ? 0 : 4, MC_INT32,
                                 MC_SUM);
    case SC_ZERO_R0:
        return mc_comm_allreduce(comm, sbuf, rbuf, rank == 0 ? 4 : 0, MC_INT32,
                                 MC_SUM);
    case SC_BARRIER:
        if (last) return mc_comm_barrier(comm);
        return mc_comm_allreduce(comm, sbuf, rbuf, 4, MC_INT32, MC_SUM);
    case SC_ALL_COUNT:
        return mc_comm_allreduce(comm, sbuf, rbuf, (size_t)rank + 1, MC_INT32,
                                 MC_SUM);
    case SC_ALL_COLL:
        switch (rank % 4) {
        case 0:
            return mc_comm_allreduce(comm, sbuf, rbuf, 4, MC_INT32, MC_SUM);
        case 1:
            return mc_comm_allgather(comm, sbuf, rbuf, 4, MC_INT32);
        case 2:
            return mc_comm_broadcast(comm, sbuf, rbuf, 4, MC_INT32, 0);
        default:
            return mc_comm_reduce_scatter(comm, sbuf, rbuf, 4, MC_INT32,
                                          MC_SUM);
        }
    case SC_ALL_ROOT:
        return mc_comm_reduce(comm, sbuf, rbuf, 4, MC_INT32, MC_SUM, rank);
    case SC_RSV_COUNTS:
        for (int r = 0; r < size; r++)
            counts[r] = 2;
        if (last) counts[0] = 3;
        return mc_comm_reduce_scatterv(comm, sbuf, rbuf, counts, MC_INT32,
                                       MC_SUM);
    case SC_AGV_COUNTS:
        /* consistent with its own sendcount, but rank 0's entry differs */
        for (int r = 0; r < size; r++) {
            counts[r] = 2;
            displs[r] = (size_t)r * 4;
        }
        if (last) counts[0] = 3;
        return mc_comm_allgatherv(comm, sbuf, 2, rbuf, counts, displs,
                                  MC_INT32);
    case SC_A2AV_PAIR:
        for (int r = 0; r < size; r++) {
            counts[r] = 2, displs[r] = (size_t)r * 4;
            c2[r] = 2, d2[r] = (size_t)r * 4;
        }
        if (rank == 0) counts[1] = 3; /* send side */
        return mc_comm_alltoallv(comm, sbuf, counts, displs, rbuf, c2, d2,
                                 MC_INT32);
    case SC_BIG_BCAST:
        return mc_comm_broadcast(comm, sbuf, rbuf, last ? 12000 : 10000,
                                 MC_INT64, 0);
    case SC_BIG_SPLIT:
        return mc_comm_allreduce(comm, sbuf, rbuf, last ? 9000 : 8000,
                                 MC_INT64, MC_SUM);
    default:
        return MC_ERR_INTERNAL;
    }
}

/* A matching allreduce after the failure: must work and be right. */
static int recovery_ok(mc_comm_h comm, int rank, int size, const char *after)
{
    int32_t s[7], r[7];
    for (int i = 0; i < 7; i++)
        s[i] = rank * 10 + i;
    memset(r, 0xA5, sizeof(r));
    mc_status_t st = mc_comm_allreduce(comm, s, r, 7, MC_INT32, MC_SUM);
    if (st != MC_OK)
        return MC_TFAIL(rank,
                        "after '%s': matching allreduce returned %s: %s "
                        "(comm: %s)",
                        after, mc_status_str(st), mc_last_error(),
                        mc_comm_last_error(comm));
    for (int i = 0; i < 7; i++) {
        int32_t e = 10 * (size * (size - 1) / 2) + i * size;
        if (r[i] != e)
            return MC_TFAIL(rank,
                            "after '%s': allreduce int32 sum ranks=%d index "
                            "%d: expected %d got %d",
                            after, size, i, e, r[i]);
    }
    return 0;
}

static int rank_body(mc_comm_h comm, int rank, int size, void *arg)
{
    const mm_param_t *p = arg;
    int fails = 0, fatal = 0;
    int64_t *sbuf = calloc(BUF_ELEMS * (size_t)size, 8);
    int64_t *rbuf = calloc(BUF_ELEMS * (size_t)size, 8);
    if (!sbuf || !rbuf) return MC_TFAIL(rank, "out of memory");
    if (recovery_ok(comm, rank, size, "creation")) fails++, fatal = 1;
    for (int sc = 0; sc < SC_COUNT_ && !fatal; sc++) {
        if (size < sc_info[sc].min_size) continue;
        const char *name = sc_info[sc].name;
        char kw[128];
        double t0 = now_s();
        mc_status_t st =
            do_scenario(comm, rank, size, (scenario_t)sc, sbuf, rbuf);
        double dt = now_s() - t0;
        const char *cerr = mc_comm_last_error(comm);
        const char *terr = mc_last_error();
        /* alltoallv: only the disagreeing pair is obliged to notice */
        int obliged = sc != SC_A2AV_PAIR || rank <= 1;
        if (st != MC_ERR_MISMATCH && (obliged || st != MC_OK)) {
            fails += MC_TFAIL(rank,
                              "ranks=%d transport=%s '%s': got %s (%s), "
                              "expected MC_ERR_MISMATCH after %.3f s",
                              size, ref_tname(p->transport), name,
                              mc_status_str(st), terr, dt);
            fatal = 1; /* the ranks may no longer agree on the sequence */
            break;
        }
        if (st == MC_OK) {
            fprintf(stderr,
                    "[rank %d] note: ranks=%d %s '%s': uninvolved rank got "
                    "MC_OK\n",
                    rank, size, ref_tname(p->transport), name);
        } else {
            if (dt > QUICK_S)
                fails +=
                    MC_TFAIL(rank, "ranks=%d %s '%s': mismatch took %.3f s",
                             size, ref_tname(p->transport), name, dt);
            if (!cerr || !*cerr)
                fails += MC_TFAIL(rank,
                                  "ranks=%d %s '%s': empty "
                                  "mc_comm_last_error",
                                  size, ref_tname(p->transport), name);
            else if (sc_keywords((scenario_t)sc, size, kw, sizeof(kw)),
                     !names_any(cerr, kw))
                fails +=
                    MC_TFAIL(rank,
                             "ranks=%d %s '%s': mc_comm_last_error does "
                             "not name what differs (%s): \"%s\"",
                             size, ref_tname(p->transport), name, kw, cerr);
            if (!terr || !*terr)
                fails += MC_TFAIL(rank, "ranks=%d %s '%s': empty mc_last_error",
                                  size, ref_tname(p->transport), name);
        }
        if (recovery_ok(comm, rank, size, name)) {
            fails++;
            fatal = 1;
        }
    }
    free(sbuf);
    free(rbuf);
    return fails;
}

static void test_mismatch(void **state)
{
    mm_param_t *p = *state;
    assert_int_equal(mc_test_spawn(p->size, p->transport, 120, rank_body, p),
                     0);
}

static mm_param_t params[] = {
    {2, MC_TRANSPORT_SHM}, {3, MC_TRANSPORT_SHM}, {4, MC_TRANSPORT_SHM},
    {2, MC_TRANSPORT_TCP}, {3, MC_TRANSPORT_TCP}, {4, MC_TRANSPORT_TCP},
};

int main(void)
{
    enum { N = sizeof(params) / sizeof(params[0]) };
    static char names[N][48];
    struct CMUnitTest tests[N];
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof(names[i]), "mismatch_%d_%s", params[i].size,
                 ref_tname(params[i].transport));
        tests[i] = (struct CMUnitTest){names[i], test_mismatch, NULL, NULL,
                                       &params[i]};
    }
    return _cmocka_run_group_tests("mismatch", tests, N, NULL, NULL);
}
