/*
 * Tagged point-to-point over real rank processes (2, 3, 4 ranks; shm and
 * tcp): out-of-order tags, same-tag ordering, a ring of 8 MiB messages with
 * everything posted before waiting, MC_ANY_SOURCE with mc_request_source,
 * count mismatch (MC_ERR_MISMATCH at the receiver, communicator still
 * usable), zero-count messages, and p2p interleaved with collectives.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <time.h>

#include "ref.h"
#include "tests_common.h"

#define RING_BYTES (8u << 20)

typedef struct p2p_param {
    int size;
    mc_transport_kind_t transport;
} p2p_param_t;

typedef struct pc {
    mc_comm_h comm;
    int rank, size;
    const char *tname;
} pc_t;

#define FAIL(c, ...)                                                           \
    (fprintf(stderr, "[ranks=%d transport=%s] ", (c)->size, (c)->tname),       \
     MC_TFAIL((c)->rank, __VA_ARGS__))

#define CALL(c, expr)                                                          \
    do {                                                                       \
        mc_status_t st_ = (expr);                                              \
        if (st_ != MC_OK)                                                      \
            return FAIL(c, "%s returned %s: %s", #expr, mc_status_str(st_),    \
                        mc_last_error());                                      \
    } while (0)

/* Run body on n ranks over shm, then over tcp (60 s each); the number of
 * failed ranks. arg is the run's p2p_param_t. */
static int spawn_shm_tcp(int n, mc_test_rank_fn body)
{
    p2p_param_t shm = {n, MC_TRANSPORT_SHM}, tcp = {n, MC_TRANSPORT_TCP};
    int failed = mc_test_spawn(n, MC_TRANSPORT_SHM, 60, body, &shm);
    return failed + mc_test_spawn(n, MC_TRANSPORT_TCP, 60, body, &tcp);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static mc_status_t wait_free(mc_request_h req, int64_t timeout_ms)
{
    mc_status_t st = mc_request_wait(req, timeout_ms);
    if (st != MC_ERR_TIMEOUT) mc_request_free(req);
    return st;
}

/* Compare int32 arrays; report the first difference. */
static int check_i32(pc_t *c, const char *what, const int32_t *got,
                     const int32_t *exp, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (got[i] != exp[i])
            return FAIL(c,
                        "%s: first wrong index %zu of %zu: expected %d got %d",
                        what, i, n, exp[i], got[i]);
    return 0;
}

static void fill_i32(int32_t *b, size_t n, int32_t base)
{
    for (size_t i = 0; i < n; i++)
        b[i] = base + (int32_t)i;
}

/* Sent tag 1 then tag 2; received tag 2 then tag 1. Then three messages
 * with one tag must arrive in send order. */
static int t_tags(pc_t *c)
{
    int32_t a[10], b[20], ra[10], rb[20], ea[10], eb[20];
    fill_i32(ea, 10, 1000);
    fill_i32(eb, 20, 2000);
    if (c->rank == 0) {
        mc_request_h r1, r2;
        memcpy(a, ea, sizeof(a));
        memcpy(b, eb, sizeof(b));
        CALL(c, mc_comm_isend(c->comm, a, 10, MC_INT32, 1, 1, &r1));
        CALL(c, mc_comm_isend(c->comm, b, 20, MC_INT32, 1, 2, &r2));
        CALL(c, wait_free(r1, -1));
        CALL(c, wait_free(r2, -1));
        for (int k = 0; k < 3; k++) {
            int32_t m[4];
            fill_i32(m, 4, 100 * k);
            CALL(c, mc_comm_send(c->comm, m, 4, MC_INT32, 1, 5));
        }
    } else if (c->rank == 1) {
        memset(ra, 0, sizeof(ra));
        memset(rb, 0, sizeof(rb));
        CALL(c, mc_comm_recv(c->comm, rb, 20, MC_INT32, 0, 2));
        CALL(c, mc_comm_recv(c->comm, ra, 10, MC_INT32, 0, 1));
        if (check_i32(c, "recv tag 2 (sent second)", rb, eb, 20)) return 1;
        if (check_i32(c, "recv tag 1 (sent first)", ra, ea, 10)) return 1;
        for (int k = 0; k < 3; k++) {
            int32_t m[4], e[4];
            fill_i32(e, 4, 100 * k);
            CALL(c, mc_comm_recv(c->comm, m, 4, MC_INT32, 0, 5));
            if (check_i32(c, "same-tag message order", m, e, 4)) return 1;
        }
    }
    return 0;
}

/* Everyone sends 8 MiB to the next rank and receives from the previous,
 * all posted before any wait (and the send waited first). */
static int t_ring(pc_t *c)
{
    int next = (c->rank + 1) % c->size,
        prev = (c->rank + c->size - 1) % c->size;
    size_t n = RING_BYTES / 8;
    uint64_t *s = malloc(RING_BYTES), *r = malloc(RING_BYTES);
    if (!s || !r) {
        free(s);
        free(r);
        return FAIL(c, "out of memory");
    }
    ref_fill_bytes(MC_UINT64, 77, c->rank, 0, s, n);
    memset(r, 0, RING_BYTES);
    mc_request_h rs = NULL, rr = NULL;
    int rc = 0;
    double t0 = now_s();
    mc_status_t st = mc_comm_irecv(c->comm, r, n, MC_UINT64, prev, 9, &rr);
    if (st == MC_OK) st = mc_comm_isend(c->comm, s, n, MC_UINT64, next, 9, &rs);
    if (st != MC_OK) {
        rc = FAIL(c, "ring post: %s: %s", mc_status_str(st), mc_last_error());
        goto out;
    }
    st = mc_request_wait(rs, -1);
    if (st != MC_OK) {
        rc = FAIL(c, "ring send wait: %s: %s", mc_status_str(st),
                  mc_last_error());
        goto out;
    }
    st = mc_request_wait(rr, -1);
    if (st != MC_OK) {
        rc = FAIL(c, "ring recv wait: %s: %s", mc_status_str(st),
                  mc_last_error());
        goto out;
    }
    if (mc_request_source(rr) != prev)
        rc = FAIL(c, "ring: mc_request_source %d, expected %d",
                  mc_request_source(rr), prev);
    {
        uint64_t *e = malloc(RING_BYTES);
        if (!e) {
            rc = FAIL(c, "out of memory");
            goto out;
        }
        ref_fill_bytes(MC_UINT64, 77, prev, 0, e, n);
        for (size_t i = 0; i < n; i++)
            if (r[i] != e[i]) {
                rc = FAIL(c,
                          "ring 8 MiB from %d: first wrong index %zu of %zu: "
                          "expected %016llx got %016llx",
                          prev, i, n, (unsigned long long)e[i],
                          (unsigned long long)r[i]);
                break;
            }
        free(e);
    }
    if (getenv("MC_TEST_VERBOSE") && c->rank == 0)
        fprintf(stderr, "ring %d x 8 MiB over %s: %.3f s\n", c->size, c->tname,
                now_s() - t0);
out:
    if (rs) mc_request_free(rs);
    if (rr) mc_request_free(rr);
    free(s);
    free(r);
    return rc;
}

/* Rank 0 receives one message from every other rank via MC_ANY_SOURCE. */
static int t_any_source(pc_t *c)
{
    if (c->rank != 0) {
        int64_t m[4] = {c->rank, c->rank * 2, c->rank * 3, -c->rank};
        CALL(c, mc_comm_send(c->comm, m, 4, MC_INT64, 0, 7));
        return 0;
    }
    int n = c->size - 1;
    int64_t m[8][4];
    mc_request_h req[8];
    int seen[8] = {0};
    for (int k = 0; k < n; k++)
        CALL(c, mc_comm_irecv(c->comm, m[k], 4, MC_INT64, MC_ANY_SOURCE, 7,
                              &req[k]));
    int rc = 0;
    for (int k = 0; k < n; k++) {
        mc_status_t st = mc_request_wait(req[k], -1);
        int src = mc_request_source(req[k]);
        mc_request_free(req[k]);
        if (st != MC_OK) {
            rc = FAIL(c, "any-source recv %d: %s: %s", k, mc_status_str(st),
                      mc_last_error());
            continue;
        }
        if (src < 1 || src >= c->size || seen[src]++) {
            rc = FAIL(c, "any-source recv %d: bad or repeated source %d", k,
                      src);
            continue;
        }
        if (m[k][0] != src || m[k][1] != 2 * src || m[k][2] != 3 * src ||
            m[k][3] != -src)
            rc = FAIL(c,
                      "any-source recv %d from %d: data {%lld,%lld,%lld,%lld}",
                      k, src, (long long)m[k][0], (long long)m[k][1],
                      (long long)m[k][2], (long long)m[k][3]);
    }
    return rc;
}

/* Receive count != send count: the receiver fails with MC_ERR_MISMATCH,
 * the sender finishes (either way), and the pair still works afterwards. */
static int t_count_mismatch(pc_t *c)
{
    static const size_t sends[2] = {10, 5}, recvs[2] = {8, 9};
    for (int k = 0; k < 2; k++) {
        int32_t buf[16], e[16];
        fill_i32(e, 16, 50 * k);
        if (c->rank == 1) {
            memcpy(buf, e, sizeof(buf));
            mc_request_h req;
            CALL(c, mc_comm_isend(c->comm, buf, sends[k], MC_INT32, 0,
                                  (uint32_t)(11 + k), &req));
            double t0 = now_s();
            mc_status_t st = mc_request_wait(req, 15000);
            if (st == MC_ERR_TIMEOUT)
                return FAIL(c,
                            "send of %zu (receiver expects %zu) did not "
                            "finish in %.1f s",
                            sends[k], recvs[k], now_s() - t0);
            mc_request_free(req);
            if (st != MC_OK && st != MC_ERR_MISMATCH)
                return FAIL(c, "mismatched send returned %s: %s",
                            mc_status_str(st), mc_last_error());
        } else if (c->rank == 0) {
            double t0 = now_s();
            mc_status_t st = mc_comm_recv(c->comm, buf, recvs[k], MC_INT32, 1,
                                          (uint32_t)(11 + k));
            double dt = now_s() - t0;
            if (st != MC_ERR_MISMATCH)
                return FAIL(c,
                            "recv count %zu of a %zu-element message: got "
                            "%s, expected MC_ERR_MISMATCH",
                            recvs[k], sends[k], mc_status_str(st));
            if (dt > 10) return FAIL(c, "count mismatch took %.1f s", dt);
            if (!*mc_last_error())
                return FAIL(c, "count mismatch: empty mc_last_error");
        }
        /* the pair (and everybody) still works */
        if (c->rank == 1) {
            fill_i32(buf, 16, 777 + k);
            CALL(c, mc_comm_send(c->comm, buf, 16, MC_INT32, 0, 13));
        } else if (c->rank == 0) {
            fill_i32(e, 16, 777 + k);
            memset(buf, 0, sizeof(buf));
            CALL(c, mc_comm_recv(c->comm, buf, 16, MC_INT32, 1, 13));
            if (check_i32(c, "send/recv after a count mismatch", buf, e, 16))
                return 1;
        }
        CALL(c, mc_comm_barrier(c->comm));
    }
    return 0;
}

/* Zero-count messages (NULL and non-NULL buffers) keep their place in the
 * per-tag order. */
static int t_zero(pc_t *c)
{
    int32_t m[3] = {1, 2, 3}, r[3] = {0, 0, 0}, dummy = 42;
    if (c->rank == 0) {
        CALL(c, mc_comm_send(c->comm, NULL, 0, MC_INT32, 1, 15));
        CALL(c, mc_comm_send(c->comm, &dummy, 0, MC_FLOAT64, 1, 15));
        CALL(c, mc_comm_send(c->comm, m, 3, MC_INT32, 1, 15));
    } else if (c->rank == 1) {
        mc_request_h req;
        CALL(c, mc_comm_irecv(c->comm, NULL, 0, MC_INT32, 0, 15, &req));
        CALL(c, wait_free(req, -1));
        CALL(c, mc_comm_recv(c->comm, &dummy, 0, MC_FLOAT64, 0, 15));
        if (dummy != 42) return FAIL(c, "zero-count recv wrote its buffer");
        CALL(c, mc_comm_recv(c->comm, r, 3, MC_INT32, 0, 15));
        if (check_i32(c, "message after two zero-count ones", r, m, 3))
            return 1;
    }
    return 0;
}

/* Point-to-point posted across collectives must not disturb either. */
static int t_interleaved(pc_t *c)
{
    int32_t s[64], r[64], e[64], ar[5], are[5];
    mc_request_h pre = NULL;
    int last = c->size - 1;
    fill_i32(s, 64, 5000 + c->rank);
    if (c->rank == last)
        CALL(c, mc_comm_irecv(c->comm, r, 64, MC_INT32, 0, 20, &pre));
    if (c->rank == 0)
        CALL(c, mc_comm_isend(c->comm, s, 64, MC_INT32, last, 21, &pre));
    for (int i = 0; i < 5; i++)
        ar[i] = c->rank + i;
    CALL(c, mc_comm_allreduce(c->comm, ar, ar, 5, MC_INT32, MC_SUM));
    for (int i = 0; i < 5; i++)
        are[i] = c->size * (c->size - 1) / 2 + c->size * i;
    if (check_i32(c, "allreduce between p2p", ar, are, 5)) return 1;
    if (c->rank == 0) CALL(c, mc_comm_send(c->comm, s, 64, MC_INT32, last, 20));
    int32_t bc[3] = {0, 0, 0}, bce[3] = {9, 8, 7};
    if (c->rank == last) memcpy(bc, bce, sizeof(bc));
    CALL(c, mc_comm_broadcast(c->comm, bc, bc, 3, MC_INT32, last));
    if (check_i32(c, "broadcast between p2p", bc, bce, 3)) return 1;
    /* the tag-21 send may need the receive (posted only now by `last`) */
    if (c->rank == 0) CALL(c, wait_free(pre, -1));
    if (c->rank == last) {
        fill_i32(e, 64, 5000);
        CALL(c, wait_free(pre, -1));
        if (check_i32(c, "irecv posted before the allreduce", r, e, 64))
            return 1;
        memset(r, 0, sizeof(r));
        CALL(c, mc_comm_recv(c->comm, r, 64, MC_INT32, 0, 21));
        if (check_i32(c, "isend posted before the allreduce", r, e, 64))
            return 1;
    }
    return 0;
}

/* Large messages (from MOONCAKE_P2P_RNDV_MIN, 64 KiB) wait a moment for
 * their receive, the stream held (rendezvous), then are buffered as
 * before: tags received out of order still work. Rank 0 sends 1 MiB on
 * tag 71 and 4 ints on tag 72; rank 1 receives tag 72 first (it comes
 * only once the 1 MiB message is buffered: at once, as a receive from
 * rank 0 already waits, well under a second), then 71. Then rank 0 sends
 * 2 MiB on tag 73 and makes no call for 20 ms while rank 1 waits in a
 * barrier (its progress holds the header, then buffers it after the
 * wait), and rank 1 receives it after. Every message exact. */
#define RV_BIG ((size_t)1 << 18) /* int32: 1 MiB */

static int t_rndv(pc_t *c)
{
    if (c->rank > 1) { /* only the barrier */
        CALL(c, mc_comm_barrier(c->comm));
        return 0;
    }
    int32_t *a = malloc(RV_BIG * 4), *b = malloc(2 * RV_BIG * 4), m[4];
    if (!a || !b) return FAIL(c, "oom");
    int rc = 0;
    if (c->rank == 0) {
        fill_i32(a, RV_BIG, 7);
        fill_i32(b, 2 * RV_BIG, 9);
        fill_i32(m, 4, 11);
        mc_request_h r[3];
        CALL(c, mc_comm_isend(c->comm, a, RV_BIG, MC_INT32, 1, 71, &r[0]));
        CALL(c, mc_comm_isend(c->comm, m, 4, MC_INT32, 1, 72, &r[1]));
        CALL(c, wait_free(r[0], -1));
        CALL(c, wait_free(r[1], -1));
        CALL(c, mc_comm_isend(c->comm, b, 2 * RV_BIG, MC_INT32, 1, 73, &r[2]));
        usleep(20000);
        CALL(c, mc_comm_barrier(c->comm));
        CALL(c, wait_free(r[2], -1));
    } else {
        int32_t e[4], *ea = malloc(RV_BIG * 4), *eb = malloc(2 * RV_BIG * 4);
        if (!ea || !eb) return FAIL(c, "oom");
        fill_i32(ea, RV_BIG, 7);
        fill_i32(eb, 2 * RV_BIG, 9);
        fill_i32(e, 4, 11);
        memset(a, 0, RV_BIG * 4);
        memset(b, 0, 2 * RV_BIG * 4);
        double t0 = now_s();
        CALL(c, mc_comm_recv(c->comm, m, 4, MC_INT32, 0, 72));
        double took = now_s() - t0;
        CALL(c, mc_comm_recv(c->comm, a, RV_BIG, MC_INT32, 0, 71));
        CALL(c, mc_comm_barrier(c->comm));
        CALL(c, mc_comm_recv(c->comm, b, 2 * RV_BIG, MC_INT32, 0, 73));
        if (took > 1.0)
            rc = FAIL(c, "tag 72 behind a 1 MiB message: %.3f s", took);
        else if (check_i32(c, "tag 72 (received first)", m, e, 4) ||
                 check_i32(c, "tag 71 (sent first, 1 MiB)", a, ea, RV_BIG) ||
                 check_i32(c, "tag 73 (2 MiB, buffered after the wait)", b, eb,
                           2 * RV_BIG))
            rc = 1;
        free(ea);
        free(eb);
    }
    free(a);
    free(b);
    return rc;
}

static int rank_body(mc_comm_h comm, int rank, int size, void *arg)
{
    const p2p_param_t *p = arg;
    pc_t c = {comm, rank, size, ref_tname(p->transport)};
    static int (*const steps[])(pc_t *) = {
        t_tags, t_ring,          t_any_source, t_count_mismatch,
        t_zero, t_interleaved,   t_rndv};
    static const char *const names[] = {
        "tags", "ring",        "any_source", "count_mismatch",
        "zero", "interleaved", "rndv"};
    for (size_t k = 0; k < sizeof(steps) / sizeof(steps[0]); k++) {
        if (steps[k](&c)) return FAIL(&c, "step '%s' failed", names[k]);
        mc_status_t st = mc_comm_barrier(comm);
        if (st != MC_OK)
            return FAIL(&c, "barrier after '%s': %s: %s", names[k],
                        mc_status_str(st), mc_last_error());
    }
    return 0;
}

static void test_p2p(void **state)
{
    p2p_param_t *p = *state;
    assert_int_equal(mc_test_spawn(p->size, p->transport, 120, rank_body, p),
                     0);
}

/* A receive no message matches by the operation timeout (1 s here, from
 * MOONCAKE_TIMEOUT_MS set by the parent) fails with MC_ERR_TIMEOUT, and a
 * message sent after that goes to the next matching receive. Each rank
 * waits for a message the other never sends, blocking and through a
 * request, then they meet again. */
static int timeout_body(mc_comm_h comm, int rank, int size, void *arg)
{
    const p2p_param_t *p = arg;
    pc_t c = {comm, rank, size, ref_tname(p->transport)};
    int32_t v = 0;
    double t0 = now_s();
    mc_status_t st = mc_comm_recv(comm, &v, 1, MC_INT32, 1 - rank, 40);
    double took = now_s() - t0;
    if (st != MC_ERR_TIMEOUT)
        return FAIL(&c, "recv nobody sends: %s", mc_status_str(st));
    if (took < 0.8 || took > 5.0)
        return FAIL(&c, "recv timed out after %.2f s (timeout 1 s)", took);
    if (!strstr(mc_last_error(), "no message"))
        return FAIL(&c, "recv timeout text: %s", mc_last_error());
    mc_request_h req;
    CALL(&c, mc_comm_irecv(comm, &v, 1, MC_INT32, MC_ANY_SOURCE, 41, &req));
    st = mc_request_wait(req, -1);
    mc_request_free(req);
    if (st != MC_ERR_TIMEOUT)
        return FAIL(&c, "irecv + wait(-1) nobody sends: %s",
                    mc_status_str(st));
    CALL(&c, mc_comm_barrier(comm));
    /* the tag-40 message now: the expired receive does not take it */
    int32_t w = 1000 + rank;
    mc_request_h sr;
    CALL(&c, mc_comm_isend(comm, &w, 1, MC_INT32, 1 - rank, 40, &sr));
    CALL(&c, mc_comm_recv(comm, &v, 1, MC_INT32, 1 - rank, 40));
    CALL(&c, wait_free(sr, -1));
    if (v != 1000 + (1 - rank))
        return FAIL(&c, "message after the timeout: %d", (int)v);
    return 0;
}

static void test_recv_timeout(void **state)
{
    (void)state;
    setenv("MOONCAKE_TIMEOUT_MS", "1000", 1);
    int failed = spawn_shm_tcp(2, timeout_body);
    unsetenv("MOONCAKE_TIMEOUT_MS");
    assert_int_equal(failed, 0);
}

/* A receive that takes a message still arriving (read as unexpected,
 * before the receive was posted) ends when the sender dies mid-message: it
 * fails with MC_ERR_PEER_FAILED instead of waiting for good. Rank 1 sends
 * 1 GiB over TCP and exits 40 ms in (loopback moves 256 MiB in under
 * 150 ms on some machines, so the message is large and the exit early);
 * rank 0 first drives progress for 20 ms (a receive on another tag with a
 * short wait), so that the big message's header is read and its payload is
 * arriving when its receive is posted. */
#define CLAIM_BYTES ((size_t)1 << 30)

static int claim_body(mc_comm_h comm, int rank, int size, void *arg)
{
    const p2p_param_t *p = arg;
    pc_t c = {comm, rank, size, ref_tname(p->transport)};
    char *big = malloc(CLAIM_BYTES);
    if (!big) return FAIL(&c, "malloc");
    memset(big, 1, CLAIM_BYTES);
    CALL(&c, mc_comm_barrier(comm));
    if (rank == 1) {
        mc_request_h r;
        CALL(&c, mc_comm_isend(comm, big, CLAIM_BYTES, MC_UINT8, 0, 7, &r));
        double t0 = now_s();
        int done = 0;
        while (now_s() - t0 < 0.04 && !done)
            mc_request_test(r, &done);
        if (done) return FAIL(&c, "1 GiB went before the exit");
        _exit(0); /* mid-message: the kernel closes everything */
    }
    int32_t dummy;
    mc_request_h other;
    CALL(&c, mc_comm_irecv(comm, &dummy, 1, MC_INT32, 1, 99, &other));
    (void)mc_request_wait(other, 20); /* progress: the header is read */
    double t0 = now_s();
    mc_status_t st = mc_comm_recv(comm, big, CLAIM_BYTES, MC_UINT8, 1, 7);
    double took = now_s() - t0;
    (void)mc_request_wait(other, -1);
    mc_request_free(other);
    free(big);
    if (st != MC_ERR_PEER_FAILED)
        return FAIL(&c, "recv of a message whose sender died: %s after "
                        "%.2f s",
                    mc_status_str(st), took);
    printf("  recv failed %.0f ms after it was posted\n", took * 1e3);
    return 0;
}

static void test_recv_claimed_sender_dies(void **state)
{
    (void)state;
    p2p_param_t tcp = {2, MC_TRANSPORT_TCP};
    assert_int_equal(mc_test_spawn(2, MC_TRANSPORT_TCP, 60, claim_body, &tcp),
                     0);
}

/* A sender that sends and then exits (a result, then exit): its message is
 * delivered in full, though its death may be seen (on the collective
 * stream) while the payload is still being read. Rank 0 posts a 4 MiB
 * receive first; rank 1 sends it and exits; 8 rounds, fresh processes. */
#define EXIT_BYTES ((size_t)4 << 20)

static int exit_body(mc_comm_h comm, int rank, int size, void *arg)
{
    const p2p_param_t *p = arg;
    pc_t c = {comm, rank, size, ref_tname(p->transport)};
    uint8_t *buf = malloc(EXIT_BYTES);
    if (!buf) return FAIL(&c, "malloc");
    for (size_t i = 0; i < EXIT_BYTES; i++)
        buf[i] = rank ? (uint8_t)(i * 7 + 3) : 0;
    mc_request_h r = NULL;
    if (rank == 0)
        CALL(&c, mc_comm_irecv(comm, buf, EXIT_BYTES, MC_UINT8, 1, 3, &r));
    CALL(&c, mc_comm_barrier(comm));
    if (rank == 1) {
        CALL(&c, mc_comm_send(comm, buf, EXIT_BYTES, MC_UINT8, 0, 3));
        _exit(0);
    }
    mc_status_t st = mc_request_wait(r, -1);
    mc_request_free(r);
    if (st != MC_OK)
        return FAIL(&c, "recv of a message sent before its sender exited: "
                        "%s (%s)",
                    mc_status_str(st), mc_last_error());
    for (size_t i = 0; i < EXIT_BYTES; i++)
        if (buf[i] != (uint8_t)(i * 7 + 3))
            return FAIL(&c, "byte %zu: %u", i, buf[i]);
    free(buf);
    return 0;
}

static void test_recv_sender_exits(void **state)
{
    (void)state;
    int failed = 0;
    for (int round = 0; round < 8; round++)
        failed += spawn_shm_tcp(2, exit_body);
    assert_int_equal(failed, 0);
}

/* A large message held for its receive's rendezvous when its sender dies
 * is still delivered (it was sent before the sender exited): rank 1 sends
 * 128 KiB (it fits the ring and the sockets) and exits; rank 0, whose
 * rendezvous wait is 5 s here, holds the header while it waits for a
 * message from rank 2, which comes 300 ms later (a receive posted for
 * rank 1 on another tag would end the wait at once), then receives rank
 * 1's message whole. Without the read at the sender's death the held
 * message would fail with it. 3 ranks. */
#define RVX_BYTES ((size_t)128 << 10)

static int rndv_exit_body(mc_comm_h comm, int rank, int size, void *arg)
{
    const p2p_param_t *p = arg;
    pc_t c = {comm, rank, size, ref_tname(p->transport)};
    uint8_t *buf = malloc(RVX_BYTES);
    if (!buf) return FAIL(&c, "malloc");
    for (size_t i = 0; i < RVX_BYTES; i++)
        buf[i] = rank == 1 ? (uint8_t)(i * 5 + 1) : 0;
    CALL(&c, mc_comm_barrier(comm));
    if (rank == 1) {
        CALL(&c, mc_comm_send(comm, buf, RVX_BYTES, MC_UINT8, 0, 4));
        _exit(0);
    }
    int32_t v = 2;
    if (rank == 2) {
        usleep(300000);
        CALL(&c, mc_comm_send(comm, &v, 1, MC_INT32, 0, 99));
        free(buf);
        return 0;
    }
    /* progress, with no receive from rank 1 posted: its header is held,
     * then its death is seen */
    CALL(&c, mc_comm_recv(comm, &v, 1, MC_INT32, 2, 99));
    mc_status_t st = mc_comm_recv(comm, buf, RVX_BYTES, MC_UINT8, 1, 4);
    if (st != MC_OK)
        return FAIL(&c, "recv of a held message whose sender exited: %s (%s)",
                    mc_status_str(st), mc_last_error());
    for (size_t i = 0; i < RVX_BYTES; i++)
        if (buf[i] != (uint8_t)(i * 5 + 1))
            return FAIL(&c, "byte %zu: %u", i, buf[i]);
    free(buf);
    return 0;
}

static void test_rndv_sender_exits(void **state)
{
    (void)state;
    setenv("MOONCAKE_P2P_RNDV_US", "5000000", 1);
    int failed = 0;
    for (int round = 0; round < 3; round++)
        failed += spawn_shm_tcp(3, rndv_exit_body);
    unsetenv("MOONCAKE_P2P_RNDV_US");
    assert_int_equal(failed, 0);
}

/* A dead rank whose p2p stream a survivor holds: rank 0 (the lowest, the
 * agreement's natural coordinator) sends rank 1 a 16 MiB message larger
 * than rank 1's unexpected-message room (MOONCAKE_P2P_UNEXPECTED_MAX=1024,
 * so rank 1 holds that stream unread) and exits before it all went. The survivors' allreduce
 * completes over {1, 2, 3} well within the liveness timeout (rank 0 is
 * dead for the agreement although its held stream never ends), and rank
 * 1's receive of that message, and one on another tag, fail with
 * MC_ERR_PEER_FAILED at once; one from any source may take the held
 * message and ends with it (delivered whole, or failed). */
static int held_body(mc_comm_h comm, int rank, int size, void *arg)
{
    const p2p_param_t *p = arg;
    pc_t c = {comm, rank, size, ref_tname(p->transport)};
    static uint8_t big[16 << 20]; /* past every socket buffer and ring */
    CALL(&c, mc_comm_barrier(comm));
    if (rank == 0) {
        mc_request_h r;
        CALL(&c, mc_comm_isend(comm, big, sizeof(big), MC_UINT8, 1, 9, &r));
        CALL(&c, mc_comm_barrier(comm)); /* rank 1 reads the header */
        CALL(&c, mc_comm_barrier(comm));
        _exit(0);
    }
    CALL(&c, mc_comm_barrier(comm));
    CALL(&c, mc_comm_barrier(comm));
    int32_t v = rank, out = 0;
    double t0 = now_s();
    CALL(&c, mc_comm_allreduce(comm, &v, &out, 1, MC_INT32, MC_SUM));
    double took = now_s() - t0;
    if (out != 1 + 2 + 3)
        return FAIL(&c, "allreduce after rank 0 died: %d, want 6", (int)out);
    if (took > 1.5)
        return FAIL(&c, "allreduce after rank 0 died took %.2f s", took);
    if (rank == 1) {
        t0 = now_s();
        mc_status_t st = mc_comm_recv(comm, big, sizeof(big), MC_UINT8, 0, 9);
        mc_status_t st2 = mc_comm_recv(comm, &v, 1, MC_INT32, 0, 10);
        took = now_s() - t0;
        if (st != MC_ERR_PEER_FAILED || st2 != MC_ERR_PEER_FAILED ||
            took > 1.0)
            return FAIL(&c, "receives from the dead rank 0: %s, %s after "
                            "%.2f s",
                        mc_status_str(st), mc_status_str(st2), took);
        /* from any source: it may take the held message (what of it is
         * there), and then ends with it: delivered or failed, never a
         * wait for good */
        mc_request_h r;
        memset(big, 0xee, sizeof(big));
        CALL(&c, mc_comm_irecv(comm, big, sizeof(big), MC_UINT8,
                               MC_ANY_SOURCE, 9, &r));
        st = mc_request_wait(r, 5000);
        if (st == MC_ERR_TIMEOUT)
            return FAIL(&c, "any-source receive of the dead rank's held "
                            "message: still waiting after 5 s");
        mc_request_free(r);
        if (st == MC_OK)
            for (size_t i = 0; i < sizeof(big); i++)
                if (big[i] != 0)
                    return FAIL(&c, "held message byte %zu: %u", i, big[i]);
        if (st != MC_OK && st != MC_ERR_PEER_FAILED)
            return FAIL(&c, "any-source receive: %s", mc_status_str(st));
    }
    return 0;
}

static void test_dead_rank_held_stream(void **state)
{
    (void)state;
    setenv("MOONCAKE_P2P_UNEXPECTED_MAX", "1024", 1);
    setenv("MOONCAKE_TIMEOUT_MS", "20000", 1);
    int failed = spawn_shm_tcp(4, held_body);
    unsetenv("MOONCAKE_P2P_UNEXPECTED_MAX");
    unsetenv("MOONCAKE_TIMEOUT_MS");
    assert_int_equal(failed, 0);
}

/* A send or a receive taking its message that has not finished by the
 * operation timeout (1 s here) fails with MC_ERR_TIMEOUT, and gives the
 * caller's buffer back while the stream stays whole (guarantee 1: a live
 * peer that never takes a message does not hold the caller for good;
 * before, such a send waited forever). 2 live ranks, no call stalls the
 * heartbeat. Part 1: rank 0 sends 4 MiB that rank 1 (held stream: the
 * unexpected buffer is 1 KiB) receives only 2.5 s later; rank 0's send
 * fails after about 1 s and rank 0 overwrites its buffer; rank 1 must
 * still receive the message whole and exact (from the engine's copy).
 * Part 2: rank 1 sends 4 MiB to rank 0's posted receive and makes no
 * call for 2.5 s (its transport moves nothing meanwhile); rank 0's
 * receive fails after about 1 s, rank 0 overwrites its buffer; rank 1's
 * send, first waited for 2.5 s after its post (its timeout counts from
 * that wait), then completes, rank 0 reading the rest into the
 * transport's sink: not one element of rank 0's buffer may change after. Each part ends
 * with a message the other way, which the stream must deliver. */
#define TO_COUNT ((size_t)1 << 19) /* int64: 4 MiB (the p2p ring: 1 MiB) */

static int64_t to_pat(size_t i, int k)
{
    return (int64_t)i * 2654435761ll + 17 + k;
}

/* Receive one int32 on tag from peer, retrying receives that expire. */
static mc_status_t to_recv_retry(mc_comm_h comm, int peer, uint32_t tag,
                                 int32_t *v)
{
    mc_status_t st = MC_ERR_TIMEOUT;
    for (int i = 0; i < 20 && st == MC_ERR_TIMEOUT; i++)
        st = mc_comm_recv(comm, v, 1, MC_INT32, peer, tag);
    return st;
}

/* Shared by the ranks of p2p_timeout (MAP_SHARED, made before the fork):
 * rank 1 sets it once its part-2 isend returned. Rank 0 calls nothing until
 * then, so that the isend fills the ring (or the socket buffers) and
 * stops half sent; a receiver that drains while the isend pushes can take
 * the whole message inside that call (one CI run in many did). */
static _Atomic int *to_posted;

static int to_body(mc_comm_h comm, int rank, int size, void *arg)
{
    const p2p_param_t *p = arg;
    pc_t c = {comm, rank, size, ref_tname(p->transport)};
    int64_t *b = malloc(TO_COUNT * sizeof(int64_t));
    if (!b) return FAIL(&c, "oom");
    int32_t v = 0;
    CALL(&c, mc_comm_barrier(comm));
    /* part 1 */
    if (rank == 0) {
        for (size_t i = 0; i < TO_COUNT; i++)
            b[i] = to_pat(i, 0);
        mc_request_h r;
        CALL(&c, mc_comm_isend(comm, b, TO_COUNT, MC_INT64, 1, 50, &r));
        double t0 = now_s();
        mc_status_t st = mc_request_wait(r, -1);
        double took = now_s() - t0;
        mc_request_free(r);
        if (st != MC_ERR_TIMEOUT || !strstr(mc_last_error(), "not finished"))
            return FAIL(&c, "send nobody took: %s after %.2f s (%s)",
                        mc_status_str(st), took, mc_last_error());
        if (took < 0.8 || took > 5.0)
            return FAIL(&c, "send timed out after %.2f s (timeout 1 s)", took);
        printf("  %s: send timed out after %.0f ms\n", c.tname, took * 1e3);
        memset(b, 0xEE, TO_COUNT * sizeof(int64_t)); /* ours again */
        CALL(&c, to_recv_retry(comm, 1, 51, &v));
        if (v != 51) return FAIL(&c, "message after part 1: %d", (int)v);
    } else {
        usleep(2500000); /* no call: rank 0's send times out meanwhile */
        memset(b, 0, TO_COUNT * sizeof(int64_t));
        CALL(&c, mc_comm_recv(comm, b, TO_COUNT, MC_INT64, 0, 50));
        for (size_t i = 0; i < TO_COUNT; i++)
            if (b[i] != to_pat(i, 0))
                return FAIL(&c, "message whose send timed out, element "
                                "%zu: %lld",
                            i, (long long)b[i]);
        v = 51;
        CALL(&c, mc_comm_send(comm, &v, 1, MC_INT32, 0, 51));
    }
    /* part 2 */
    if (rank == 0) {
        mc_request_h r;
        CALL(&c, mc_comm_irecv(comm, b, TO_COUNT, MC_INT64, 1, 60, &r));
        CALL(&c, mc_comm_send(comm, &v, 1, MC_INT32, 1, 61)); /* posted */
        double w0 = now_s();
        while (!atomic_load(to_posted)) {
            if (now_s() - w0 > 20.0) {
                mc_request_free(r);
                return FAIL(&c, "rank 1 did not post its isend in 20 s");
            }
            usleep(1000);
        }
        atomic_store(to_posted, 0); /* for the next transport's run */
        double t0 = now_s();
        mc_status_t st = mc_request_wait(r, -1);
        double took = now_s() - t0;
        mc_request_free(r);
        if (st != MC_ERR_TIMEOUT || !strstr(mc_last_error(), "not finished"))
            return FAIL(&c, "receive of a stalled message: %s after %.2f s "
                            "(%s)",
                        mc_status_str(st), took, mc_last_error());
        printf("  %s: receive timed out mid-message after %.0f ms\n",
               c.tname, took * 1e3);
        memset(b, 0xEE, TO_COUNT * sizeof(int64_t));
        CALL(&c, to_recv_retry(comm, 1, 62, &v));
        if (v != 62) return FAIL(&c, "message after part 2: %d", (int)v);
        for (size_t i = 0; i < TO_COUNT; i++)
            if (b[i] != (int64_t)0xEEEEEEEEEEEEEEEEull)
                return FAIL(&c, "element %zu written after the receive "
                                "timed out",
                            i);
    } else {
        for (size_t i = 0; i < TO_COUNT; i++)
            b[i] = to_pat(i, 1);
        CALL(&c, to_recv_retry(comm, 0, 61, &v));
        mc_request_h r;
        CALL(&c, mc_comm_isend(comm, b, TO_COUNT, MC_INT64, 0, 60, &r));
        atomic_store(to_posted, 1);
        usleep(2500000); /* no call: the message stalls half sent */
        /* waited for only now, 2.5 s after its post: its timeout counts
         * from here, and it completes (rank 0 reads the rest into its
         * sink) */
        CALL(&c, wait_free(r, -1));
        v = 62;
        CALL(&c, mc_comm_send(comm, &v, 1, MC_INT32, 0, 62));
    }
    free(b);
    CALL(&c, mc_comm_barrier(comm));
    return 0;
}

static void test_p2p_timeout(void **state)
{
    (void)state;
    setenv("MOONCAKE_TIMEOUT_MS", "1000", 1);
    setenv("MOONCAKE_P2P_UNEXPECTED_MAX", "1024", 1);
    setenv("MOONCAKE_TCP_BUF_BYTES", "262144", 1);
    to_posted = mmap(NULL, sizeof(*to_posted), PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(to_posted != MAP_FAILED);
    atomic_store(to_posted, 0);
    int failed = spawn_shm_tcp(2, to_body);
    munmap((void *)to_posted, sizeof(*to_posted));
    unsetenv("MOONCAKE_TCP_BUF_BYTES");
    unsetenv("MOONCAKE_P2P_UNEXPECTED_MAX");
    unsetenv("MOONCAKE_TIMEOUT_MS");
    assert_int_equal(failed, 0);
}

/* Requests that only completion callbacks watch (a torch future's wait
 * never calls into the engine): nothing here calls the engine between the
 * posts and the callbacks, so the engine's own thread must move the
 * messages and end each request. 16 MiB each way (far more than the rings
 * and socket buffers hold), then a receive nothing matches, which must
 * fail at the operation timeout (3 s). Before, the exchange never
 * finished. */
#define CB_COUNT ((size_t)2 << 20) /* int64: 16 MiB */

typedef struct {
    _Atomic int fired;
    mc_status_t st;
    double t;
    char msg[200];
} cbw_t;

static void cbw_done(mc_request_h req, mc_status_t st, void *arg)
{
    cbw_t *w = arg;
    w->st = st;
    w->t = now_s();
    if (st != MC_OK) {
        int done = 0;
        mc_request_test(req, &done); /* this request's own error text */
        snprintf(w->msg, sizeof(w->msg), "%s", mc_last_error());
    }
    atomic_store(&w->fired, 1);
}

/* Sleep until every callback fired or `limit` seconds passed. */
static int cbw_sleep(cbw_t *w, int n, double limit)
{
    double t0 = now_s();
    for (;;) {
        int all = 1;
        for (int i = 0; i < n; i++)
            all = all && atomic_load(&w[i].fired);
        if (all) return 1;
        if (now_s() - t0 > limit) return 0;
        usleep(1000);
    }
}

static int cbonly_body(mc_comm_h comm, int rank, int size, void *arg)
{
    const p2p_param_t *p = arg;
    pc_t c = {comm, rank, size, ref_tname(p->transport)};
    int64_t *out = malloc(CB_COUNT * sizeof(int64_t));
    int64_t *in = calloc(CB_COUNT, sizeof(int64_t));
    if (!out || !in) return FAIL(&c, "oom");
    for (size_t i = 0; i < CB_COUNT; i++)
        out[i] = to_pat(i, rank);
    CALL(&c, mc_comm_barrier(comm));
    cbw_t w[3] = {0};
    mc_request_h r[3];
    CALL(&c, mc_comm_irecv(comm, in, CB_COUNT, MC_INT64, 1 - rank, 70, &r[0]));
    CALL(&c, mc_comm_isend(comm, out, CB_COUNT, MC_INT64, 1 - rank, 70, &r[1]));
    double t0 = now_s();
    for (int i = 0; i < 2; i++) {
        CALL(&c, mc_request_on_complete(r[i], cbw_done, &w[i]));
        mc_request_free(r[i]); /* the callback still comes */
    }
    if (!cbw_sleep(w, 2, 30))
        return FAIL(&c, "16 MiB each way watched by callbacks only: not "
                        "finished after 30 s (receive %d, send %d)",
                    atomic_load(&w[0].fired), atomic_load(&w[1].fired));
    for (int i = 0; i < 2; i++)
        if (w[i].st != MC_OK)
            return FAIL(&c, "%s: %s (%s)", i ? "send" : "receive",
                        mc_status_str(w[i].st), w[i].msg);
    for (size_t i = 0; i < CB_COUNT; i++)
        if (in[i] != to_pat(i, 1 - rank))
            return FAIL(&c, "element %zu: %lld", i, (long long)in[i]);
    printf("  %s rank %d: 16 MiB each way by callbacks only in %.1f ms\n",
           c.tname, rank, ((w[0].t > w[1].t ? w[0].t : w[1].t) - t0) * 1e3);
    /* nothing matches: the operation timeout ends it */
    int32_t v = 0;
    CALL(&c, mc_comm_irecv(comm, &v, 1, MC_INT32, 1 - rank, 71, &r[2]));
    t0 = now_s();
    CALL(&c, mc_request_on_complete(r[2], cbw_done, &w[2]));
    if (!cbw_sleep(&w[2], 1, 20))
        return FAIL(&c, "a receive nothing matches, watched by a callback "
                        "only: no end after 20 s (timeout 3 s)");
    double took = w[2].t - t0;
    if (w[2].st != MC_ERR_TIMEOUT || !strstr(w[2].msg, "no message"))
        return FAIL(&c, "unmatched receive: %s (%s)", mc_status_str(w[2].st),
                    w[2].msg);
    if (took < 2.5 || took > 10.0)
        return FAIL(&c, "unmatched receive ended after %.2f s (timeout 3 s)",
                    took);
    mc_request_free(r[2]);
    CALL(&c, mc_comm_barrier(comm));
    free(in);
    free(out);
    return 0;
}

/* 2 ranks over shm then tcp, operation timeout 3 s (the 16 MiB exchange
 * takes 15-100 ms here, also beside busy loops), small socket buffers */
static void spawn_bg_2(mc_test_rank_fn body)
{
    setenv("MOONCAKE_TIMEOUT_MS", "3000", 1);
    setenv("MOONCAKE_TCP_BUF_BYTES", "262144", 1);
    int failed = spawn_shm_tcp(2, body);
    unsetenv("MOONCAKE_TCP_BUF_BYTES");
    unsetenv("MOONCAKE_TIMEOUT_MS");
    assert_int_equal(failed, 0);
}

static void test_callback_only(void **state)
{
    (void)state;
    spawn_bg_2(cbonly_body);
}

/* mc_request_watch: the same exchange with no callback. Neither rank calls
 * the engine until the whole message is in its receive buffer (only the
 * progress threads move it); then the requests are finished. A receive
 * nothing matches, watched at its post, is past its deadline 4 s later
 * (timeout 3 s): unwatched, its deadline would count from that test. */
static int watch_body(mc_comm_h comm, int rank, int size, void *arg)
{
    const p2p_param_t *p = arg;
    pc_t c = {comm, rank, size, ref_tname(p->transport)};
    int64_t *out = malloc(CB_COUNT * sizeof(int64_t));
    _Atomic int64_t *in = calloc(CB_COUNT, sizeof(int64_t));
    if (!out || !in) return FAIL(&c, "oom");
    for (size_t i = 0; i < CB_COUNT; i++)
        out[i] = to_pat(i, rank);
    CALL(&c, mc_comm_barrier(comm));
    mc_request_h r[3];
    CALL(&c, mc_comm_irecv(comm, (void *)in, CB_COUNT, MC_INT64, 1 - rank, 80,
                           &r[0]));
    CALL(&c, mc_comm_isend(comm, out, CB_COUNT, MC_INT64, 1 - rank, 80, &r[1]));
    double t0 = now_s();
    for (int i = 0; i < 2; i++) {
        CALL(&c, mc_request_watch(r[i]));
        CALL(&c, mc_request_watch(r[i])); /* again: harmless */
    }
    /* the first and the last element, read with no call */
    while (atomic_load(&in[0]) != to_pat(0, 1 - rank) ||
           atomic_load(&in[CB_COUNT - 1]) != to_pat(CB_COUNT - 1, 1 - rank)) {
        if (now_s() - t0 > 30)
            return FAIL(&c, "16 MiB each way watched, no call: not in the "
                            "receive buffer after 30 s");
        usleep(1000);
    }
    double took = now_s() - t0;
    for (int i = 0; i < 2; i++)
        CALL(&c, wait_free(r[i], 10000));
    for (size_t i = 0; i < CB_COUNT; i++)
        if (in[i] != to_pat(i, 1 - rank))
            return FAIL(&c, "element %zu: %lld", i, (long long)in[i]);
    printf("  %s rank %d: 16 MiB each way by the progress thread alone in "
           "%.1f ms\n",
           c.tname, rank, took * 1e3);
    int32_t v = 0;
    CALL(&c, mc_comm_irecv(comm, &v, 1, MC_INT32, 1 - rank, 81, &r[2]));
    CALL(&c, mc_request_watch(r[2]));
    usleep(4000000);
    int done = 0;
    mc_status_t st = mc_request_test(r[2], &done);
    if (!done || st != MC_ERR_TIMEOUT || !strstr(mc_last_error(), "no message"))
        return FAIL(&c, "a receive nothing matches, watched from its post: "
                        "%s 4 s later (timeout 3 s): %s",
                    done ? mc_status_str(st) : "pending", mc_last_error());
    mc_request_free(r[2]);
    CALL(&c, mc_comm_barrier(comm));
    free((void *)in);
    free(out);
    return 0;
}

static void test_watch_only(void **state)
{
    (void)state;
    spawn_bg_2(watch_body);
}

static p2p_param_t params[] = {
    {2, MC_TRANSPORT_SHM}, {3, MC_TRANSPORT_SHM}, {4, MC_TRANSPORT_SHM},
    {2, MC_TRANSPORT_TCP}, {3, MC_TRANSPORT_TCP}, {4, MC_TRANSPORT_TCP},
};

int main(void)
{
    enum { N = sizeof(params) / sizeof(params[0]) };
    static char names[N][48];
    struct CMUnitTest tests[N + 8];
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof(names[i]), "p2p_%d_%s", params[i].size,
                 ref_tname(params[i].transport));
        tests[i] =
            (struct CMUnitTest){names[i], test_p2p, NULL, NULL, &params[i]};
    }
    tests[N] = (struct CMUnitTest){"recv_timeout", test_recv_timeout, NULL,
                                   NULL, NULL};
    tests[N + 1] = (struct CMUnitTest){"recv_claimed_sender_dies",
                                       test_recv_claimed_sender_dies, NULL,
                                       NULL, NULL};
    tests[N + 2] = (struct CMUnitTest){"recv_sender_exits",
                                       test_recv_sender_exits, NULL, NULL,
                                       NULL};
    tests[N + 3] = (struct CMUnitTest){"dead_rank_held_stream",
                                       test_dead_rank_held_stream, NULL, NULL,
                                       NULL};
    tests[N + 4] = (struct CMUnitTest){"p2p_timeout", test_p2p_timeout, NULL,
                                       NULL, NULL};
    tests[N + 5] = (struct CMUnitTest){"rndv_sender_exits",
                                       test_rndv_sender_exits, NULL, NULL,
                                       NULL};
    tests[N + 6] = (struct CMUnitTest){"callback_only", test_callback_only,
                                       NULL, NULL, NULL};
    tests[N + 7] = (struct CMUnitTest){"watch_only", test_watch_only, NULL,
                                       NULL, NULL};
    /* MC_P2P_ONLY: a cmocka filter pattern ("p2p_timeout", "rndv*") */
    if (getenv("MC_P2P_ONLY")) cmocka_set_test_filter(getenv("MC_P2P_ONLY"));
    return _cmocka_run_group_tests("p2p", tests, N + 8, NULL, NULL);
}
