/*
 * Public API contract: bad arguments fail with MC_ERR_INVALID_ARG and a
 * message naming the problem (never a crash, output parameters untouched),
 * status/dtype/op names, request test/wait/free lifecycle, a short wait on
 * a broadcast whose root has not called yet (MC_ERR_TIMEOUT, then success
 * on a later wait), rank/size and per-peer transport names.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ctype.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ref.h"
#include "tests_common.h"

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

/* Does msg contain one of the '|'-separated keywords? */
static int names_any(const char *msg, const char *keywords)
{
    char kw[128];
    snprintf(kw, sizeof(kw), "%s", keywords);
    for (char *save = NULL, *k = strtok_r(kw, "|", &save); k;
         k = strtok_r(NULL, "|", &save))
        if (contains_ci(msg, k)) return 1;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* No communicator needed                                                   */
/* ------------------------------------------------------------------------ */

static void test_status_str(void **state)
{
    (void)state;
    static const mc_status_t codes[] = {MC_OK,
                                        MC_INPROGRESS,
                                        MC_ERR_INVALID_ARG,
                                        MC_ERR_NO_MEMORY,
                                        MC_ERR_UNSUPPORTED,
                                        MC_ERR_TIMEOUT,
                                        MC_ERR_IO,
                                        MC_ERR_INTERNAL,
                                        MC_ERR_NOT_FOUND,
                                        MC_ERR_PROTOCOL,
                                        MC_ERR_STORE,
                                        MC_ERR_MISMATCH,
                                        MC_ERR_PEER_FAILED,
                                        MC_ERR_EVICTED,
                                        MC_ERR_NO_QUORUM,
                                        MC_ERR_ROOT_FAILED};
    enum { N = sizeof(codes) / sizeof(codes[0]) };
    const char *s[N];
    for (int i = 0; i < N; i++) {
        s[i] = mc_status_str(codes[i]);
        assert_non_null(s[i]);
        assert_true(strlen(s[i]) > 0);
        for (int j = 0; j < i; j++)
            if (strcmp(s[i], s[j]) == 0)
                fail_msg("mc_status_str(%d) == mc_status_str(%d) == \"%s\"",
                         codes[i], codes[j], s[i]);
    }
    assert_non_null(mc_status_str((mc_status_t)12345));
    assert_non_null(mc_status_str((mc_status_t)-12345));
    assert_non_null(mc_last_error());
}

static void test_names(void **state)
{
    (void)state;
    for (int d = 0; d < MC_DTYPE_COUNT; d++) {
        if (mc_dtype_size((mc_dtype_t)d) != ref_dsize((mc_dtype_t)d))
            fail_msg("mc_dtype_size(%s) = %zu, expected %zu",
                     ref_dname((mc_dtype_t)d), mc_dtype_size((mc_dtype_t)d),
                     ref_dsize((mc_dtype_t)d));
        const char *n = mc_dtype_name((mc_dtype_t)d);
        assert_non_null(n);
        assert_true(*n && strcmp(n, "invalid") != 0);
        for (int e = 0; e < d; e++)
            assert_string_not_equal(n, mc_dtype_name((mc_dtype_t)e));
    }
    assert_string_equal(mc_dtype_name(MC_FLOAT32), "float32");
    assert_string_equal(mc_dtype_name(MC_BFLOAT16), "bfloat16");
    assert_int_equal(mc_dtype_size(MC_DTYPE_COUNT), 0);
    assert_int_equal(mc_dtype_size((mc_dtype_t)-1), 0);
    assert_string_equal(mc_dtype_name(MC_DTYPE_COUNT), "invalid");
    assert_string_equal(mc_dtype_name((mc_dtype_t)-1), "invalid");
    for (int o = 0; o < MC_REDOP_COUNT; o++) {
        const char *n = mc_redop_name((mc_redop_t)o);
        assert_non_null(n);
        assert_true(*n && strcmp(n, "invalid") != 0);
        for (int e = 0; e < o; e++)
            assert_string_not_equal(n, mc_redop_name((mc_redop_t)e));
    }
    assert_string_equal(mc_redop_name(MC_SUM), "sum");
    assert_string_equal(mc_redop_name(MC_AVG), "avg");
    assert_string_equal(mc_redop_name(MC_REDOP_COUNT), "invalid");
    assert_string_equal(mc_redop_name((mc_redop_t)-1), "invalid");
}

static void test_config_init(void **state)
{
    (void)state;
    mc_comm_config_t cfg;
    setenv("MOONCAKE_TRANSPORT", "tcp", 1);
    setenv("MOONCAKE_TIMEOUT_MS", "1234", 1);
    memset(&cfg, 0xff, sizeof(cfg));
    mc_comm_config_init(&cfg);
    assert_int_equal(cfg.size, sizeof(cfg));
    assert_int_equal(cfg.transport, MC_TRANSPORT_TCP);
    assert_int_equal(cfg.timeout_ms, 1234);
    setenv("MOONCAKE_TRANSPORT", "shm", 1);
    mc_comm_config_init(&cfg);
    assert_int_equal(cfg.transport, MC_TRANSPORT_SHM);
    unsetenv("MOONCAKE_TRANSPORT");
    unsetenv("MOONCAKE_TIMEOUT_MS");
    mc_comm_config_init(&cfg);
    assert_int_equal(cfg.transport, MC_TRANSPORT_AUTO);
    assert_int_equal(cfg.timeout_ms, 300000);
    assert_int_equal(cfg.init_timeout_ms, 300000);
}

/* Bad arguments to mc_comm_create fail at once, in this process. */
static void test_create_bad_args(void **state)
{
    (void)state;
    char *dir = mc_test_mkdtemp();
    assert_non_null(dir);
    mc_store_h store;
    assert_int_equal(mc_store_file_create(dir, &store), MC_OK);
    mc_comm_config_t cfg;
    mc_comm_config_init(&cfg);
    cfg.init_timeout_ms = 3000; /* a wrongly accepted call must not block */
    cfg.transport = MC_TRANSPORT_SHM;
    static const struct {
        int rank, size, null_store, null_out;
        const char *kw;
    } cases[] = {
        {2, 2, 0, 0, "rank"},  {5, 2, 0, 0, "rank"},
        {-1, 2, 0, 0, "rank"}, {0, 0, 0, 0, "size"},
        {0, -3, 0, 0, "size"}, {0, 2, 1, 0, "store"},
        {0, 1, 1, 0, "store"}, {0, 1, 0, 1, "comm|null|output|_p"},
    };
    /* failures are counted, not fail_msg()ed, so the store is released */
    int fails = 0;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        mc_comm_h sentinel = (mc_comm_h)(uintptr_t)0x1234, comm = sentinel;
        double t0 = now_s();
        mc_status_t st = mc_comm_create(cases[i].rank, cases[i].size,
                                        cases[i].null_store ? NULL : store,
                                        &cfg, cases[i].null_out ? NULL : &comm);
        double dt = now_s() - t0;
        const char *msg = mc_last_error();
        if (st != MC_ERR_INVALID_ARG) {
            fails++;
            print_error("mc_comm_create(rank=%d, size=%d, store=%s, "
                        "comm_p=%s) returned %s, expected "
                        "MC_ERR_INVALID_ARG\n",
                        cases[i].rank, cases[i].size,
                        cases[i].null_store ? "NULL" : "ok",
                        cases[i].null_out ? "NULL" : "ok", mc_status_str(st));
            if (st == MC_OK && comm != sentinel) mc_comm_destroy(comm);
            continue;
        }
        if (comm != sentinel) {
            fails++;
            print_error("create case %zu: comm_p written on failure\n", i);
        }
        if (dt > 1.0) {
            fails++;
            print_error("create case %zu: took %.2f s\n", i, dt);
        }
        if (!msg || !names_any(msg, cases[i].kw)) {
            fails++;
            print_error("create case %zu: mc_last_error \"%s\" does not name "
                        "%s\n",
                        i, msg ? msg : "(null)", cases[i].kw);
        }
    }
    /* NULL-safe no-ops */
    mc_comm_destroy(NULL);
    mc_request_free(NULL);
    mc_store_destroy(store);
    mc_test_rmtree(dir);
    free(dir);
    assert_int_equal(fails, 0);
}

/* ------------------------------------------------------------------------ */
/* Bad arguments on a live communicator                                     */
/* ------------------------------------------------------------------------ */

typedef struct api_param {
    int size;
    mc_transport_kind_t transport;
} api_param_t;

/* Expect MC_ERR_INVALID_ARG with a message naming one of `kw`; for the
 * non-blocking forms the request sentinel must stay untouched. */
static int expect_invalid(int rank, mc_comm_h comm, const char *what,
                          mc_status_t st, const char *kw)
{
    if (st != MC_ERR_INVALID_ARG)
        return MC_TFAIL(rank,
                        "%s: returned %s (%s), expected "
                        "MC_ERR_INVALID_ARG",
                        what, mc_status_str(st), mc_last_error());
    const char *msg = mc_last_error();
    if (!msg || !*msg) return MC_TFAIL(rank, "%s: empty mc_last_error", what);
    if (!names_any(msg, kw))
        return MC_TFAIL(rank,
                        "%s: message \"%s\" does not name the problem "
                        "(%s)",
                        what, msg, kw);
    if (comm) {
        const char *cm = mc_comm_last_error(comm);
        if (!cm || !*cm)
            return MC_TFAIL(rank, "%s: empty mc_comm_last_error", what);
    }
    return 0;
}

#define BAD(expr, kw) (fails += expect_invalid(rank, comm, #expr, (expr), kw))

#define BAD_NB(call, kw)                                                       \
    do {                                                                       \
        mc_request_h req_ = (mc_request_h)(uintptr_t)0x5678;                   \
        mc_status_t st_ = call;                                                \
        fails += expect_invalid(rank, comm, #call, st_, kw);                   \
        if (req_ != (mc_request_h)(uintptr_t)0x5678)                           \
            fails += MC_TFAIL(rank, "%s: req_p written on failure", #call);    \
    } while (0)

static int bad_args_body(mc_comm_h comm, int rank, int size, void *arg)
{
    (void)arg;
    int fails = 0;
    int32_t a[64], b[64];
    float f[64];
    size_t cnt[8], dsp[8];
    memset(a, 0, sizeof(a));
    memset(f, 0, sizeof(f));
    for (int r = 0; r < 8; r++)
        cnt[r] = 2, dsp[r] = (size_t)r * 2;

    const char *fresh = mc_comm_last_error(comm);
    if (!fresh || *fresh)
        fails += MC_TFAIL(rank, "fresh communicator has last error \"%s\"",
                          fresh ? fresh : "(null)");

    const char *BUF = "buf|null|send|recv";
    const char *DT = "dtype|type";
    const char *OP = "op|band|bor|bxor|float|bfloat16";
    const char *ROOT = "root";
    const char *PEER = "peer|rank|dest|source|self";

    /* comm NULL: only the thread message can carry the text */
    {
        mc_status_t st = mc_comm_allreduce(NULL, a, b, 4, MC_INT32, MC_SUM);
        fails += expect_invalid(rank, NULL, "allreduce(comm=NULL)", st,
                                "comm|null|handle");
        st = mc_comm_barrier(NULL);
        fails += expect_invalid(rank, NULL, "barrier(comm=NULL)", st,
                                "comm|null|handle");
        st = mc_comm_send(NULL, a, 1, MC_INT32, 0, 0);
        fails += expect_invalid(rank, NULL, "send(comm=NULL)", st,
                                "comm|null|handle");
    }
    BAD(mc_comm_allreduce(comm, NULL, b, 4, MC_INT32, MC_SUM), BUF);
    BAD(mc_comm_allreduce(comm, a, NULL, 4, MC_INT32, MC_SUM), BUF);
    BAD_NB(mc_comm_iallreduce(comm, a, b, 4, MC_DTYPE_COUNT, MC_SUM, &req_),
           DT);
    BAD(mc_comm_allreduce(comm, a, b, 4, (mc_dtype_t)-1, MC_SUM), DT);
    BAD_NB(mc_comm_iallreduce(comm, a, b, 4, MC_INT32, MC_REDOP_COUNT, &req_),
           OP);
    BAD(mc_comm_allreduce(comm, a, b, 4, MC_INT32, (mc_redop_t)-1), OP);
    BAD(mc_comm_allreduce(comm, f, f, 4, MC_FLOAT32, MC_BAND), OP);
    BAD(mc_comm_allreduce(comm, f, f, 4, MC_BFLOAT16, MC_BXOR), OP);
    BAD(mc_comm_allreduce(comm, f, f, 4, MC_FLOAT8_E4M3, MC_BOR), OP);
    BAD(mc_comm_allreduce(comm, f, f, 4, MC_FLOAT64, MC_BAND), OP);
    BAD(mc_comm_reduce_scatter(comm, f, f, 2, MC_FLOAT16, MC_BOR), OP);
    BAD(mc_comm_reduce(comm, f, f, 4, MC_FLOAT8_E5M2, MC_BXOR, 0), OP);
    BAD(mc_comm_allgather(comm, NULL, b, 2, MC_INT32), BUF);
    BAD(mc_comm_allgather(comm, a, b, 2, MC_DTYPE_COUNT), DT);
    BAD(mc_comm_broadcast(comm, a, a, 4, MC_INT32, size), ROOT);
    BAD(mc_comm_broadcast(comm, a, a, 4, MC_INT32, -1), ROOT);
    BAD_NB(mc_comm_ibroadcast(comm, a, a, 4, MC_INT32, size + 7, &req_), ROOT);
    BAD(mc_comm_reduce(comm, a, b, 4, MC_INT32, MC_SUM, size), ROOT);
    BAD(mc_comm_reduce(comm, a, b, 4, MC_INT32, MC_SUM, -2), ROOT);
    BAD(mc_comm_gather(comm, a, b, 2, MC_INT32, -5), ROOT);
    BAD(mc_comm_scatter(comm, a, b, 2, MC_INT32, size + 3), ROOT);
    BAD(mc_comm_reduce_scatterv(comm, a, b, NULL, MC_INT32, MC_SUM),
        "count|null|recvcounts");
    BAD(mc_comm_allgatherv(comm, a, 2, b, NULL, dsp, MC_INT32),
        "count|null|recvcounts");
    BAD(mc_comm_allgatherv(comm, a, 2, b, cnt, NULL, MC_INT32), "displ|null");
    BAD(mc_comm_allgatherv(comm, a, 3, b, cnt, dsp, MC_INT32),
        "count|sendcount|recvcounts");
    BAD(mc_comm_alltoallv(comm, a, NULL, dsp, b, cnt, dsp, MC_INT32),
        "count|null");
    BAD(mc_comm_alltoallv(comm, a, cnt, dsp, b, cnt, NULL, MC_INT32),
        "displ|null");
    BAD(mc_comm_alltoall(comm, a, a, 2, MC_INT32),
        "overlap|in-place|in place|alias|same");
    /* buffers that overlap without being the in-place form, and output
     * blocks of two ranks that overlap: refused, naming the problem (they
     * used to run and leave whichever bytes came last) */
    {
        const char *OV = "overlap";
        BAD(mc_comm_allreduce(comm, a, a + 1, 4, MC_INT32, MC_SUM), OV);
        BAD(mc_comm_allgather(comm, a + 1, a, 2, MC_INT32), OV);
        BAD(mc_comm_reduce_scatter(comm, a, a + 1, 2, MC_INT32, MC_SUM), OV);
        BAD(mc_comm_broadcast(comm, a, a + 1, 4, MC_INT32, rank), OV);
        BAD(mc_comm_reduce(comm, a, a + 2, 4, MC_INT32, MC_SUM, rank), OV);
        BAD(mc_comm_gather(comm, a + 1, a, 2, MC_INT32, rank), OV);
        BAD(mc_comm_scatter(comm, a, a + 1, 2, MC_INT32, rank), OV);
        size_t od[8];
        memcpy(od, dsp, sizeof(od));
        if (size > 1) {
            od[size - 1] = dsp[size - 2] + 1; /* into the block before */
            BAD(mc_comm_allgatherv(comm, a, 2, b, cnt, od, MC_INT32),
                "overlap");
            BAD(mc_comm_alltoallv(comm, a, cnt, dsp, b, cnt, od, MC_INT32),
                "overlap");
        }
        BAD(mc_comm_allgatherv(comm, b + 1, 2, b, cnt, dsp, MC_INT32), OV);
    }
    /* a huge displacement is named as one, not as a count */
    {
        size_t hd[8];
        memcpy(hd, dsp, sizeof(hd));
        hd[size - 1] = SIZE_MAX / 4;
        BAD(mc_comm_allgatherv(comm, a, 2, b, cnt, hd, MC_INT32), "displs[");
        BAD(mc_comm_alltoallv(comm, a, cnt, hd, b, cnt, dsp, MC_INT32),
            "sdispls[");
        BAD(mc_comm_alltoallv(comm, a, cnt, dsp, b, cnt, hd, MC_INT32),
            "rdispls[");
    }
    /* point-to-point */
    BAD(mc_comm_send(comm, a, 4, MC_INT32, size, 1), PEER);
    BAD(mc_comm_send(comm, a, 4, MC_INT32, -1, 1), PEER);
    BAD(mc_comm_send(comm, a, 4, MC_INT32, rank, 1), PEER);
    BAD_NB(mc_comm_isend(comm, a, 4, MC_INT32, size + 1, 1, &req_), PEER);
    if (size > 1) {
        BAD(mc_comm_send(comm, NULL, 4, MC_INT32, (rank + 1) % size, 1), BUF);
        BAD(mc_comm_send(comm, a, 4, MC_DTYPE_COUNT, (rank + 1) % size, 1), DT);
    }
    BAD(mc_comm_recv(comm, b, 4, MC_INT32, size, 1), PEER);
    BAD(mc_comm_recv(comm, b, 4, MC_INT32, -2, 1), PEER);
    BAD_NB(mc_comm_irecv(comm, NULL, 4, MC_INT32, MC_ANY_SOURCE, 1, &req_),
           BUF);
    /* requests */
    BAD(mc_request_wait(NULL, 0), "req|null");
    {
        int done = 7;
        BAD(mc_request_test(NULL, &done), "req|null");
        if (done != 7) fails += MC_TFAIL(rank, "done_p written on failure");
    }
    /* must not crash; values unspecified */
    (void)mc_comm_peer_transport(comm, size);
    (void)mc_comm_peer_transport(comm, -1);
    (void)mc_comm_rank(NULL);
    (void)mc_comm_size(NULL);

    /* After all that the communicator works. */
    for (int i = 0; i < 8; i++)
        a[i] = rank + i;
    mc_status_t st = mc_comm_allreduce(comm, a, b, 8, MC_INT32, MC_SUM);
    if (st != MC_OK)
        return MC_TFAIL(rank, "allreduce after bad calls: %s: %s",
                        mc_status_str(st), mc_last_error()) +
               fails;
    for (int i = 0; i < 8; i++)
        if (b[i] != size * (size - 1) / 2 + size * i)
            return MC_TFAIL(rank,
                            "allreduce after bad calls: index %d: "
                            "expected %d got %d",
                            i, size * (size - 1) / 2 + size * i, b[i]) +
                   fails;
    /* count 0 with NULL buffers is allowed */
    st = mc_comm_allreduce(comm, NULL, NULL, 0, MC_INT32, MC_SUM);
    if (st != MC_OK)
        fails += MC_TFAIL(rank, "allreduce count 0 with NULL buffers: %s: %s",
                          mc_status_str(st), mc_last_error());
    return fails;
}

static void test_bad_args(void **state)
{
    api_param_t *p = *state;
    assert_int_equal(mc_test_spawn(p->size, p->transport, 60, bad_args_body, p),
                     0);
}

/* ------------------------------------------------------------------------ */
/* Requests, timeouts, transports                                           */
/* ------------------------------------------------------------------------ */

static int lifecycle_body(mc_comm_h comm, int rank, int size, void *arg)
{
    const api_param_t *p = arg;
    int fails = 0;
    mc_status_t st;
    mc_request_h req;

    /* rank, size, transports */
    if (mc_comm_rank(comm) != rank || mc_comm_size(comm) != size)
        fails += MC_TFAIL(rank, "mc_comm_rank/size %d/%d, expected %d/%d",
                          mc_comm_rank(comm), mc_comm_size(comm), rank, size);
    const char *want = p->transport == MC_TRANSPORT_TCP ? "tcp" : "shm";
    for (int peer = 0; peer < size; peer++) {
        const char *t = mc_comm_peer_transport(comm, peer);
        const char *e = peer == rank ? "self" : want;
        if (!t || strcmp(t, e) != 0)
            fails +=
                MC_TFAIL(rank,
                         "mc_comm_peer_transport(%d) = \"%s\", "
                         "expected \"%s\" (configured %s)",
                         peer, t ? t : "(null)", e, ref_tname(p->transport));
    }

    /* ibarrier: test until done */
    st = mc_comm_ibarrier(comm, &req);
    if (st != MC_OK)
        return MC_TFAIL(rank, "ibarrier: %s: %s", mc_status_str(st),
                        mc_last_error());
    {
        int done = 0;
        double t0 = now_s();
        while (1) {
            st = mc_request_test(req, &done);
            if (done) break;
            if (st != MC_INPROGRESS)
                return MC_TFAIL(rank,
                                "request_test pending: returned %s with "
                                "done=0, expected MC_INPROGRESS",
                                mc_status_str(st));
            if (now_s() - t0 > 20)
                return MC_TFAIL(rank, "ibarrier never finished under "
                                      "mc_request_test");
            usleep(100);
        }
        if (st != MC_OK)
            return MC_TFAIL(rank, "ibarrier finished with %s: %s",
                            mc_status_str(st), mc_last_error());
        /* a finished request can be tested and waited again */
        done = 0;
        st = mc_request_test(req, &done);
        if (st != MC_OK || done != 1)
            fails += MC_TFAIL(rank, "re-test of finished request: %s done=%d",
                              mc_status_str(st), done);
        st = mc_request_wait(req, 0);
        if (st != MC_OK)
            fails += MC_TFAIL(rank, "wait on finished request: %s",
                              mc_status_str(st));
        mc_request_free(req);
    }

    /* pending irecv: test says in progress until the send happens */
    if (rank == 1) {
        int32_t r[3] = {0, 0, 0};
        st = mc_comm_irecv(comm, r, 3, MC_INT32, 0, 3, &req);
        if (st != MC_OK)
            return MC_TFAIL(rank, "irecv: %s: %s", mc_status_str(st),
                            mc_last_error());
        int done = 5;
        st = mc_request_test(req, &done);
        if (st != MC_INPROGRESS || done != 0)
            fails += MC_TFAIL(rank,
                              "test of an unmatched irecv: %s done=%d, "
                              "expected MC_INPROGRESS done=0",
                              mc_status_str(st), done);
        st = mc_comm_barrier(comm);
        if (st != MC_OK)
            return MC_TFAIL(rank, "barrier: %s", mc_status_str(st));
        st = mc_request_wait(req, 20000);
        if (st != MC_OK)
            return MC_TFAIL(rank, "wait irecv: %s: %s", mc_status_str(st),
                            mc_last_error());
        if (mc_request_source(req) != 0)
            fails += MC_TFAIL(rank, "mc_request_source = %d, expected 0",
                              mc_request_source(req));
        if (r[0] != 31 || r[1] != 32 || r[2] != 33)
            fails += MC_TFAIL(rank, "irecv data {%d,%d,%d}", r[0], r[1], r[2]);
        mc_request_free(req);
    } else {
        st = mc_comm_barrier(comm);
        if (st != MC_OK)
            return MC_TFAIL(rank, "barrier: %s", mc_status_str(st));
        if (rank == 0) {
            int32_t s[3] = {31, 32, 33};
            st = mc_comm_send(comm, s, 3, MC_INT32, 1, 3);
            if (st != MC_OK)
                return MC_TFAIL(rank, "send: %s: %s", mc_status_str(st),
                                mc_last_error());
        }
    }

    /* free while pending: the operation still completes (in issue order,
     * so after the following blocking allreduce it is done) */
    {
        int32_t s1[100], r1[100], s2[4], r2[4];
        for (int i = 0; i < 100; i++)
            s1[i] = rank * 1000 + i;
        for (int i = 0; i < 4; i++)
            s2[i] = rank;
        memset(r1, 0, sizeof(r1));
        st = mc_comm_iallreduce(comm, s1, r1, 100, MC_INT32, MC_SUM, &req);
        if (st != MC_OK)
            return MC_TFAIL(rank, "iallreduce: %s", mc_status_str(st));
        mc_request_free(req);
        st = mc_comm_allreduce(comm, s2, r2, 4, MC_INT32, MC_MAX);
        if (st != MC_OK)
            return MC_TFAIL(rank, "allreduce after a freed pending one: %s: %s",
                            mc_status_str(st), mc_last_error());
        if (r2[0] != size - 1)
            fails += MC_TFAIL(rank, "allreduce max: got %d expected %d", r2[0],
                              size - 1);
        for (int i = 0; i < 100; i++) {
            int32_t e = 1000 * (size * (size - 1) / 2) + size * i;
            if (r1[i] != e) {
                fails += MC_TFAIL(rank,
                                  "freed pending allreduce: index %d: "
                                  "expected %d got %d",
                                  i, e, r1[i]);
                break;
            }
        }
    }

    /* Short wait on a broadcast whose root has not called yet. */
    {
        uint8_t buf[1000];
        st = mc_comm_barrier(comm);
        if (st != MC_OK)
            return MC_TFAIL(rank, "barrier: %s", mc_status_str(st));
        if (rank == 0) {
            usleep(700000);
            for (int i = 0; i < 1000; i++)
                buf[i] = (uint8_t)(i * 7 + 1);
            st = mc_comm_broadcast(comm, buf, buf, 1000, MC_UINT8, 0);
            if (st != MC_OK)
                return MC_TFAIL(rank, "late root broadcast: %s: %s",
                                mc_status_str(st), mc_last_error());
        } else {
            memset(buf, 0, sizeof(buf));
            st = mc_comm_ibroadcast(comm, buf, buf, 1000, MC_UINT8, 0, &req);
            if (st != MC_OK)
                return MC_TFAIL(rank, "ibroadcast: %s", mc_status_str(st));
            double t0 = now_s();
            st = mc_request_wait(req, 50);
            double dt = now_s() - t0;
            if (st != MC_ERR_TIMEOUT)
                fails += MC_TFAIL(rank,
                                  "wait(50 ms) before the root called: "
                                  "%s after %.3f s, expected "
                                  "MC_ERR_TIMEOUT",
                                  mc_status_str(st), dt);
            else if (dt < 0.045 || dt > 0.5)
                fails +=
                    MC_TFAIL(rank, "wait(50 ms) timed out after %.3f s", dt);
            int done = 9;
            mc_status_t ts = mc_request_test(req, &done);
            if (st == MC_ERR_TIMEOUT && (ts != MC_INPROGRESS || done != 0))
                fails += MC_TFAIL(rank, "test after wait timeout: %s done=%d",
                                  mc_status_str(ts), done);
            st = mc_request_wait(req, -1);
            mc_request_free(req);
            if (st != MC_OK)
                return MC_TFAIL(rank, "second wait on the broadcast: %s: %s",
                                mc_status_str(st), mc_last_error()) +
                       fails;
            for (int i = 0; i < 1000; i++)
                if (buf[i] != (uint8_t)(i * 7 + 1)) {
                    fails += MC_TFAIL(rank,
                                      "late broadcast: index %d: "
                                      "expected %d got %d",
                                      i, (uint8_t)(i * 7 + 1), buf[i]);
                    break;
                }
        }
    }
    st = mc_comm_barrier(comm);
    if (st != MC_OK)
        return MC_TFAIL(rank, "final barrier: %s", mc_status_str(st)) + fails;
    return fails;
}

static void test_lifecycle(void **state)
{
    api_param_t *p = *state;
    assert_int_equal(
        mc_test_spawn(p->size, p->transport, 60, lifecycle_body, p), 0);
}

/* MC_TRANSPORT_AUTO with every peer on this host: shm to all of them. */
static int auto_body(mc_comm_h comm, int rank, int size, void *arg)
{
    (void)arg;
    int fails = 0;
    for (int peer = 0; peer < size; peer++) {
        const char *t = mc_comm_peer_transport(comm, peer);
        const char *e = peer == rank ? "self" : "shm";
        if (!t || strcmp(t, e) != 0)
            fails += MC_TFAIL(rank,
                              "auto transport: peer %d is \"%s\", "
                              "expected \"%s\"",
                              peer, t ? t : "(null)", e);
    }
    int64_t v = rank + 1, s = 0;
    mc_status_t st = mc_comm_allreduce(comm, &v, &s, 1, MC_INT64, MC_SUM);
    if (st != MC_OK || s != (int64_t)size * (size + 1) / 2)
        fails += MC_TFAIL(rank, "auto allreduce: %s, sum %lld",
                          mc_status_str(st), (long long)s);
    return fails;
}

static void test_auto_transport(void **state)
{
    (void)state;
    assert_int_equal(mc_test_spawn(3, MC_TRANSPORT_AUTO, 60, auto_body, NULL),
                     0);
}

static void test_size_one(void **state)
{
    api_param_t *p = *state;
    assert_int_equal(mc_test_spawn(1, p->transport, 60, bad_args_body, p), 0);
}

/* A timeout too large for microseconds (torch's timedelta.max is about
 * 8.6e16 ms) means no limit, not "already expired": the operation timeout
 * (MOONCAKE_TIMEOUT_MS, set by the parent) and a request wait of
 * INT64_MAX ms both wait for a peer that comes 300 ms late. */
static int huge_timeout_body(mc_comm_h comm, int rank, int size, void *arg)
{
    (void)arg;
    (void)size;
    int32_t v = rank + 1, out = 0;
    if (rank == 1) usleep(300000);
    mc_status_t st = mc_comm_allreduce(comm, &v, &out, 1, MC_INT32, MC_SUM);
    if (st != MC_OK || out != 3)
        return MC_TFAIL(rank, "allreduce with a huge op timeout: %s (%s)",
                        mc_status_str(st), mc_comm_last_error(comm));
    if (rank == 0) usleep(300000);
    mc_request_h r = NULL;
    st = mc_comm_iallreduce(comm, &v, &out, 1, MC_INT32, MC_SUM, &r);
    if (st == MC_OK) st = mc_request_wait(r, INT64_MAX);
    if (st != MC_OK || out != 3)
        return MC_TFAIL(rank, "wait(INT64_MAX): %s (%s)", mc_status_str(st),
                        mc_comm_last_error(comm));
    mc_request_free(r);
    return 0;
}

/* mc_comm_shrink with different lists (embedded membership): ranks 0, 1
 * and 3 remove [3], rank 2 removes [1]. The ranks find another list among
 * the ranks they would keep (or follow the decision of one that did) and
 * fail with MC_ERR_MISMATCH naming their list, and nobody adopts a view
 * (they used to adopt different ones): the next allreduce runs over all
 * four in the old epoch. Then all four remove [3] alike (rank 2 late):
 * 0, 1, 2 go on in the next epoch, rank 3 is evicted. */
static int shrink_differ_body(mc_comm_h comm, int rank, int size, void *arg)
{
    (void)arg;
    (void)size;
    uint64_t e0 = 0, e = 0;
    mc_comm_view(comm, &e0, NULL, NULL);
    {
        int bad[1] = {rank == 2 ? 1 : 3};
        mc_status_t st = mc_comm_shrink(comm, bad, 1);
        if (st != MC_ERR_MISMATCH || !strstr(mc_last_error(), "removes ["))
            return MC_TFAIL(rank, "shrink with different lists: %s (%s)",
                            mc_status_str(st), mc_last_error());
    }
    int32_t v = rank + 1, out = 0;
    mc_status_t st = mc_comm_allreduce(comm, &v, &out, 1, MC_INT32, MC_SUM);
    mc_comm_view(comm, &e, NULL, NULL);
    if (st != MC_OK || out != 10 || e != e0)
        return MC_TFAIL(rank, "allreduce after the failed shrink: %s, %d, "
                              "epoch %llu (was %llu)",
                        mc_status_str(st), (int)out, (unsigned long long)e,
                        (unsigned long long)e0);
    /* now alike, rank 2 300 ms late, and rank 3 (listed) calls too: it
     * waits for the others' decision and is evicted */
    int three[1] = {3};
    if (rank == 2) usleep(300000);
    st = mc_comm_shrink(comm, three, 1);
    if (rank == 3) {
        mc_status_t st2 = mc_comm_allreduce(comm, &v, &out, 1, MC_INT32,
                                            MC_SUM);
        if (st != MC_OK || st2 != MC_ERR_EVICTED)
            return MC_TFAIL(rank, "listed rank: shrink %s, then %s",
                            mc_status_str(st), mc_status_str(st2));
        return 0;
    }
    if (st == MC_OK)
        st = mc_comm_allreduce(comm, &v, &out, 1, MC_INT32, MC_SUM);
    mc_comm_view(comm, &e, NULL, NULL);
    if (st != MC_OK || out != 6 || e != e0 + 1)
        return MC_TFAIL(rank, "shrink [3] alike, then allreduce: %s, %d, "
                              "epoch %llu",
                        mc_status_str(st), (int)out, (unsigned long long)e);
    return 0;
}

/* A rank late to mc_comm_shrink (op timeout 1 s): ranks 0 and 1 remove
 * [3] and give up on rank 2 after the timeout (MC_ERR_TIMEOUT, nothing
 * adopted); they call again at once. Rank 2 comes 1.5 s late to the
 * first attempt, which was decided (abort): it fails at once with the same
 * MC_ERR_TIMEOUT and does not adopt the view alone; its second call meets their second one, and all
 * three adopt the view together. (Each rank's k-th call in a view meets
 * the others' k-th.) */
static int shrink_late_body(mc_comm_h comm, int rank, int size, void *arg)
{
    (void)arg;
    (void)size;
    if (rank == 3) {
        usleep(300000);
        return 0;
    }
    uint64_t e0 = 0, e = 0;
    mc_comm_view(comm, &e0, NULL, NULL);
    int three[1] = {3};
    if (rank == 2) usleep(1500000);
    double t0 = now_s();
    mc_status_t st = mc_comm_shrink(comm, three, 1);
    double took = now_s() - t0;
    mc_comm_view(comm, &e, NULL, NULL);
    if ((rank < 2 && st != MC_ERR_TIMEOUT) ||
        (rank == 2 && (st != MC_ERR_TIMEOUT || took > 0.5)) || e != e0)
        return MC_TFAIL(rank, "shrink with rank 2 late: %s after %.2f s, "
                              "epoch %llu (was %llu) (%s)",
                        mc_status_str(st), took, (unsigned long long)e,
                        (unsigned long long)e0, mc_last_error());
    st = mc_comm_shrink(comm, three, 1);
    int32_t v = rank + 1, out = 0;
    if (st == MC_OK)
        st = mc_comm_allreduce(comm, &v, &out, 1, MC_INT32, MC_SUM);
    mc_comm_view(comm, &e, NULL, NULL);
    if (st != MC_OK || out != 6 || e != e0 + 1)
        return MC_TFAIL(rank, "shrink again, alike: %s, %d, epoch %llu (%s)",
                        mc_status_str(st), (int)out, (unsigned long long)e,
                        mc_last_error());
    return 0;
}

static void test_shrink_lists_differ(void **state)
{
    (void)state;
    setenv("MOONCAKE_TIMEOUT_MS", "10000", 1);
    int failed =
        mc_test_spawn(4, MC_TRANSPORT_SHM, 60, shrink_differ_body, NULL);
    failed += mc_test_spawn(4, MC_TRANSPORT_TCP, 60, shrink_differ_body, NULL);
    setenv("MOONCAKE_TIMEOUT_MS", "1000", 1);
    failed += mc_test_spawn(4, MC_TRANSPORT_TCP, 60, shrink_late_body, NULL);
    unsetenv("MOONCAKE_TIMEOUT_MS");
    assert_int_equal(failed, 0);
}

static void test_huge_timeouts(void **state)
{
    (void)state;
    setenv("MOONCAKE_TIMEOUT_MS", "9223372036854775807", 1);
    int failed =
        mc_test_spawn(2, MC_TRANSPORT_TCP, 60, huge_timeout_body, NULL);
    unsetenv("MOONCAKE_TIMEOUT_MS");
    assert_int_equal(failed, 0);
}

/* mc_comm_destroy from another thread while rank 0 waits on collectives
 * its peer never calls (a blocking allreduce, then three queued
 * iallreduce waited through a request): the waits end with MC_ERR_IO at
 * once (not after the 30 s operation timeout each, and no crash: the
 * communicator used to be freed under the waiting thread), and destroy
 * returns once they are out. Then destroy from a completion callback, and
 * while a blocking send the peer never takes waits (it fails). Then
 * requests nobody waits on during destroy, waited for after it: a 64 MiB
 * isend the peer never takes (mode 4), a receive that took a 256 MiB
 * message still arriving from a peer stopped mid-send (mode 5). Each
 * ends with MC_ERR_IO, its callback runs, and its wait after destroy
 * touches nothing freed (it used to: ASan; or a wait for good). */
typedef struct {
    const char *dir;
    int mode; /* 0 blocking, 1 queued requests, 2 from a callback, 3 a
                 64 MiB send the peer never receives, 4 and 5 above */
} destroy_case_t;

static volatile int g_after_cb = 1; /* the status its callback saw */
static void after_cb(mc_request_h r, mc_status_t st, void *arg)
{
    (void)r;
    (void)arg;
    g_after_cb = st;
}

/* Modes 4 and 5, rank 0: destroy with r in flight, then wait on r. */
static int destroy_then_wait(mc_comm_h comm, mc_request_h r, int mode)
{
    if (mc_request_on_complete(r, after_cb, NULL) != MC_OK)
        return MC_TFAIL(0, "on_complete: %s", mc_last_error());
    double t0 = now_s();
    mc_comm_destroy(comm);
    double took = now_s() - t0;
    mc_status_t st = mc_request_wait(r, 5000);
    mc_request_free(r);
    if (st != MC_ERR_IO || g_after_cb != MC_ERR_IO || took > 2.0)
        return MC_TFAIL(0,
                        "mode %d: wait after destroy %s, callback %s, "
                        "destroy %.2f s",
                        mode, mc_status_str(st),
                        mc_status_str((mc_status_t)g_after_cb), took);
    return 0;
}

/* /proc/<pid>/stat says stopped ('T'). */
static int is_stopped(pid_t pid)
{
    char path[64], buf[256];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
    if (f) fclose(f);
    buf[n] = '\0';
    char *e = strrchr(buf, ')');
    return e && e[1] == ' ' && e[2] == 'T';
}

static mc_comm_h g_dc;
static double g_dc_took;

static void *destroy_later(void *arg)
{
    (void)arg;
    usleep(200000);
    double t0 = now_s();
    mc_comm_destroy(g_dc);
    g_dc_took = now_s() - t0;
    return NULL;
}

static volatile int g_cb_destroyed;
static void destroy_in_cb(mc_request_h r, mc_status_t st, void *arg)
{
    (void)st;
    (void)arg;
    mc_request_free(r);
    mc_comm_destroy(g_dc);
    g_cb_destroyed = 1;
}

static int destroy_rank(int rank, int size, void *arg)
{
    const destroy_case_t *k = arg;
    mc_store_h store;
    if (mc_store_file_create(k->dir, &store) != MC_OK)
        return MC_TFAIL(rank, "store: %s", mc_last_error());
    mc_comm_config_t cfg;
    mc_comm_config_init(&cfg);
    cfg.transport = MC_TRANSPORT_SHM;
    cfg.timeout_ms = 30000;
    cfg.init_timeout_ms = 20000;
    mc_comm_h comm = NULL;
    if (mc_comm_create(rank, size, store, &cfg, &comm) != MC_OK)
        return MC_TFAIL(rank, "create: %s", mc_last_error());
    int fails = 0;
    int32_t a[4] = {1, 2, 3, 4}, b[4];
    if (k->mode == 5) {
        size_t n = (size_t)256 << 20;
        uint8_t *big = malloc(n);
        if (!big) return MC_TFAIL(rank, "malloc");
        memset(big, 7, n);
        if (mc_comm_barrier(comm) != MC_OK)
            return MC_TFAIL(rank, "barrier: %s", mc_last_error());
        mc_request_h r;
        if (rank == 1) {
            /* send, stop 5 ms in (rank 0 sends SIGCONT when done) */
            char pid[16];
            int m = snprintf(pid, sizeof(pid), "%d", (int)getpid());
            if (mc_store_set(store, "pid1", pid, (size_t)m) != MC_OK ||
                mc_comm_isend(comm, big, n, MC_UINT8, 0, 7, &r) != MC_OK)
                return MC_TFAIL(rank, "isend: %s", mc_last_error());
            double t0 = now_s();
            int done = 0;
            while (now_s() - t0 < 0.005 && !done)
                mc_request_test(r, &done);
            if (done) return MC_TFAIL(rank, "256 MiB went in 5 ms");
            raise(SIGSTOP);
            (void)mc_request_wait(r, 10000); /* rank 0 is gone: fails */
            mc_request_free(r);
            mc_comm_destroy(comm);
        } else {
            char pid[16] = "";
            size_t len = 0;
            int32_t dummy;
            mc_request_h other;
            if (mc_comm_irecv(comm, &dummy, 1, MC_INT32, 1, 99, &other) !=
                MC_OK)
                return MC_TFAIL(rank, "irecv: %s", mc_last_error());
            if (mc_store_get(store, "pid1", 10000, pid, sizeof(pid) - 1,
                             &len) != MC_OK)
                return MC_TFAIL(rank, "pid1: %s", mc_last_error());
            pid[len] = '\0';
            pid_t p1 = (pid_t)atoi(pid);
            /* progress until rank 1 stopped, and a little after: the
             * message's header is read, its payload part way */
            int d = 0, stopped = 0;
            for (int i = 0; i < 4000 && stopped < 20; i++) {
                (void)mc_request_test(other, &d);
                stopped += is_stopped(p1);
                usleep(500);
            }
            if (stopped < 20) fails += MC_TFAIL(rank, "rank 1 ran on");
            if (mc_comm_irecv(comm, big, n, MC_UINT8, 1, 7, &r) != MC_OK)
                return MC_TFAIL(rank, "irecv: %s", mc_last_error());
            mc_request_free(other); /* failed by destroy; freed after */
            fails += destroy_then_wait(comm, r, 5);
            kill(p1, SIGCONT);
        }
        free(big);
        mc_store_destroy(store);
        return fails;
    }
    if (rank == 1) { /* calls nothing (mode 2: the barrier) */
        if (k->mode == 2 && mc_comm_barrier(comm) != MC_OK)
            fails += MC_TFAIL(rank, "barrier: %s", mc_last_error());
        usleep(2500000);
        mc_comm_destroy(comm);
        mc_store_destroy(store);
        return fails;
    }
    g_dc = comm;
    if (k->mode == 2) {
        mc_request_h r;
        if (mc_comm_ibarrier(comm, &r) != MC_OK ||
            mc_request_on_complete(r, destroy_in_cb, NULL) != MC_OK)
            return MC_TFAIL(rank, "ibarrier: %s", mc_last_error());
        for (int i = 0; i < 500 && !g_cb_destroyed; i++)
            usleep(10000);
        if (!g_cb_destroyed)
            fails += MC_TFAIL(rank, "the callback never destroyed");
        usleep(100000); /* the callback thread frees it meanwhile */
        mc_store_destroy(store);
        return fails;
    }
    if (k->mode == 4) {
        size_t n = (size_t)64 << 20;
        uint8_t *big = calloc(n, 1);
        mc_request_h r;
        if (!big || mc_comm_isend(comm, big, n, MC_UINT8, 1, 5, &r) != MC_OK)
            return MC_TFAIL(rank, "isend: %s", mc_last_error());
        fails += destroy_then_wait(comm, r, 4);
        free(big); /* destroy is done: nothing reads it */
        mc_store_destroy(store);
        return fails;
    }
    pthread_t t;
    pthread_create(&t, NULL, destroy_later, NULL);
    double t0 = now_s();
    mc_status_t st[3] = {MC_OK, MC_OK, MC_OK};
    if (k->mode == 0) {
        st[0] = mc_comm_allreduce(comm, a, b, 4, MC_INT32, MC_SUM);
    } else if (k->mode == 3) {
        size_t n = (size_t)16 << 20; /* int32: 64 MiB, past every buffer */
        int32_t *big = calloc(n, sizeof(int32_t));
        if (!big) return MC_TFAIL(rank, "calloc");
        st[0] = mc_comm_send(comm, big, n, MC_INT32, 1, 5);
        pthread_join(t, NULL); /* destroy is done: nothing reads big */
        free(big);
    } else {
        mc_request_h r[3];
        for (int i = 0; i < 3; i++)
            if (mc_comm_iallreduce(comm, a, b, 4, MC_INT32, MC_SUM, &r[i]) !=
                MC_OK)
                return MC_TFAIL(rank, "iallreduce: %s", mc_last_error());
        st[0] = mc_request_wait(r[0], -1);
        mc_request_free(r[0]);
        /* the rest after destroy returned: finished requests need nothing
         * of the freed communicator (ASan would see a use after free) */
        pthread_join(t, NULL);
        for (int i = 1; i < 3; i++) {
            st[i] = mc_request_wait(r[i], -1);
            mc_request_free(r[i]);
        }
    }
    double took = now_s() - t0;
    if (k->mode == 0) pthread_join(t, NULL);
    for (int i = 0; i < 3; i++)
        if (st[i] != MC_ERR_IO && !((k->mode == 0 || k->mode == 3) && i))
            fails += MC_TFAIL(rank, "mode %d: wait %d ended with %s, want %s",
                              k->mode, i, mc_status_str(st[i]),
                              mc_status_str(MC_ERR_IO));
    if (took > 5.0 || g_dc_took > 5.0)
        fails += MC_TFAIL(rank, "mode %d: waits %.2f s, destroy %.2f s",
                          k->mode, took, g_dc_took);
    mc_store_destroy(store);
    return fails;
}

static void test_destroy_concurrent(void **state)
{
    (void)state;
    for (int mode = 0; mode < 6; mode++) {
        char *dir = mc_test_mkdtemp();
        assert_non_null(dir);
        destroy_case_t k = {dir, mode};
        int failed = mc_test_fork(2, 60, destroy_rank, &k);
        mc_test_rmtree(dir);
        free(dir);
        assert_int_equal(failed, 0);
    }
}

/* Settings that choose algorithms or the final barrier must agree: a rank
 * that differs makes every rank's create fail at once, naming the setting
 * and both values (instead of every collective waiting for the op
 * timeout). Rank `odd` gets `name=value`; the others keep the default. */
typedef struct {
    const char *dir, *name, *value;
    int odd;
} settings_case_t;

static int settings_rank(int rank, int size, void *arg)
{
    const settings_case_t *k = arg;
    if (rank == k->odd) setenv(k->name, k->value, 1);
    mc_store_h store;
    if (mc_store_file_create(k->dir, &store) != MC_OK)
        return MC_TFAIL(rank, "store: %s", mc_last_error());
    mc_comm_config_t cfg;
    mc_comm_config_init(&cfg);
    cfg.transport = MC_TRANSPORT_SHM;
    cfg.init_timeout_ms = 20000;
    mc_comm_h comm = NULL;
    mc_status_t st = mc_comm_create(rank, size, store, &cfg, &comm);
    int fails = 0;
    if (st != MC_ERR_INVALID_ARG) {
        fails += MC_TFAIL(rank, "create with %s=%s on rank %d: %s, want %s",
                          k->name, k->value, k->odd, mc_status_str(st),
                          mc_status_str(MC_ERR_INVALID_ARG));
        if (st == MC_OK) mc_comm_destroy(comm);
    } else if (!strstr(mc_last_error(), k->name) ||
               !strstr(mc_last_error(), "same on every rank")) {
        fails += MC_TFAIL(rank, "error does not name %s: %s", k->name,
                          mc_last_error());
    } else if (rank == 0) {
        printf("  rank 0: %s\n", mc_last_error());
    }
    mc_store_destroy(store);
    return fails;
}

static void test_settings_differ(void **state)
{
    (void)state;
    static const struct {
        const char *name, *value;
    } cases[] = {
        {"MOONCAKE_FT_SIGNALS", "0"},
        {"MOONCAKE_ALGO_ALLREDUCE", "ring"},
        {"MOONCAKE_SHM_STAGE_MIN", "1048576"},
        {"MOONCAKE_EPOCH_START", "65535"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *dir = mc_test_mkdtemp();
        assert_non_null(dir);
        settings_case_t k = {dir, cases[i].name, cases[i].value, (int)i % 3};
        int failed = mc_test_fork(3, 60, settings_rank, &k);
        mc_test_rmtree(dir);
        free(dir);
        assert_int_equal(failed, 0);
    }
}

/* One rank of three cannot map a peer's shared slots at creation
 * (MOONCAKE_FAULT_INJECT=slot.map:1:fail on rank 1): it would run small
 * ops by the usual algorithms while the others took the slots, and every
 * op would wait until the op timeout. The ranks agree at creation, so all
 * of them do without the slots: every op completes, with the right
 * result. */
static int slot_map_rank(int rank, int size, void *arg)
{
    const char *dir = arg;
    if (rank == 1) setenv("MOONCAKE_FAULT_INJECT", "slot.map:1:fail", 1);
    mc_store_h store;
    if (mc_store_file_create(dir, &store) != MC_OK)
        return MC_TFAIL(rank, "store: %s", mc_last_error());
    mc_comm_config_t cfg;
    mc_comm_config_init(&cfg);
    cfg.transport = MC_TRANSPORT_SHM;
    cfg.init_timeout_ms = 20000;
    cfg.timeout_ms = 5000;
    mc_comm_h comm = NULL;
    int fails = 0;
    /* the creation's log, to see the agreement drop the slots */
    char logp[300];
    snprintf(logp, sizeof(logp), "%s/log.%d", dir, rank);
    fflush(stderr);
    int saved = dup(2), lfd = open(logp, O_CREAT | O_RDWR | O_TRUNC, 0600);
    if (saved < 0 || lfd < 0) return MC_TFAIL(rank, "log file: %s", logp);
    dup2(lfd, 2);
    mc_status_t st = mc_comm_create(rank, size, store, &cfg, &comm);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    char lg[4096] = "";
    ssize_t ln = pread(lfd, lg, sizeof(lg) - 1, 0);
    close(lfd);
    if (ln > 0) lg[ln] = '\0';
    if (st != MC_OK) {
        mc_store_destroy(store);
        return MC_TFAIL(rank, "create: %s", mc_last_error());
    }
    if (!strstr(lg, "no shared slots: rank 1 could not map"))
        fails += MC_TFAIL(rank, "creation did not drop the shared slots "
                                "(the injected failure did not fire?): %s",
                          lg);
    for (int it = 0; it < 20 && !fails; it++) {
        int64_t v[8], g[3 * 8];
        for (int i = 0; i < 8; i++) v[i] = (int64_t)(rank + 1) * (it + i);
        st = mc_comm_allreduce(comm, v, v, 8, MC_INT64, MC_SUM);
        if (st != MC_OK) {
            fails += MC_TFAIL(rank, "allreduce %d: %s", it,
                              mc_comm_last_error(comm));
            break;
        }
        for (int i = 0; i < 8; i++)
            if (v[i] != 6 * (int64_t)(it + i))
                fails += MC_TFAIL(rank, "allreduce %d: element %d is %lld",
                                  it, i, (long long)v[i]);
        for (int i = 0; i < 8; i++) v[i] = rank * 100 + it + i;
        st = mc_comm_allgather(comm, v, g, 8, MC_INT64);
        if (st != MC_OK) {
            fails += MC_TFAIL(rank, "allgather %d: %s", it,
                              mc_comm_last_error(comm));
            break;
        }
        for (int r = 0; r < 3; r++)
            for (int i = 0; i < 8; i++)
                if (g[r * 8 + i] != r * 100 + it + i)
                    fails += MC_TFAIL(rank, "allgather %d: block %d off", it,
                                      r);
    }
    mc_comm_destroy(comm);
    mc_store_destroy(store);
    return fails;
}

static void test_slot_map_fails(void **state)
{
    (void)state;
    char *dir = mc_test_mkdtemp();
    assert_non_null(dir);
    int failed = mc_test_fork(3, 120, slot_map_rank, dir);
    mc_test_rmtree(dir);
    free(dir);
    assert_int_equal(failed, 0);
}

static api_param_t p2shm = {2, MC_TRANSPORT_SHM}, p3tcp = {3, MC_TRANSPORT_TCP},
                   p2tcp = {2, MC_TRANSPORT_TCP}, p3shm = {3, MC_TRANSPORT_SHM};

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_str),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_config_init),
        cmocka_unit_test(test_create_bad_args),
        {"bad_args_2_shm", test_bad_args, NULL, NULL, &p2shm},
        {"bad_args_3_tcp", test_bad_args, NULL, NULL, &p3tcp},
        {"bad_args_1_shm", test_size_one, NULL, NULL, &p2shm},
        {"lifecycle_2_shm", test_lifecycle, NULL, NULL, &p2shm},
        {"lifecycle_2_tcp", test_lifecycle, NULL, NULL, &p2tcp},
        {"lifecycle_3_shm", test_lifecycle, NULL, NULL, &p3shm},
        cmocka_unit_test(test_auto_transport),
        cmocka_unit_test(test_settings_differ),
        cmocka_unit_test(test_huge_timeouts),
        cmocka_unit_test(test_shrink_lists_differ),
        cmocka_unit_test(test_destroy_concurrent),
        cmocka_unit_test(test_slot_map_fails),
    };
    return cmocka_run_group_tests_name("api", tests, NULL, NULL);
}
