/* mc_request_on_complete: callbacks run once, in completion order, outside
 * engine locks (a callback may issue a new operation), also when registered
 * after completion or when the owner freed the request first. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "mooncake/mooncake.h"
#include "tests_common.h"

#define NOPS 8

struct cbstate {
    pthread_mutex_t mu;
    int calls[NOPS + 2];
    int order[NOPS + 2];
    int norder;
    mc_status_t st[NOPS + 2];
    mc_comm_h comm;
    mc_request_h chained;
    int32_t chain_in, chain_out;
    int issued_all; /* collectives must be issued in the same order */
};

static struct cbstate S;

static void on_done(mc_request_h req, mc_status_t st, void *arg)
{
    (void)req;
    int i = (int)(intptr_t)arg;
    pthread_mutex_lock(&S.mu);
    S.calls[i]++;
    S.st[i] = st;
    S.order[S.norder++] = i;
    pthread_mutex_unlock(&S.mu);
    /* issuing from the callback must not deadlock */
    if (i == 0) {
        while (!__atomic_load_n(&S.issued_all, __ATOMIC_ACQUIRE))
            usleep(100);
        mc_comm_iallreduce(S.comm, &S.chain_in, &S.chain_out, 1, MC_INT32,
                           MC_SUM, &S.chained);
    }
}

static int body(mc_comm_h comm, int rank, int size, void *arg)
{
    (void)arg;
    memset(&S, 0, sizeof(S));
    pthread_mutex_init(&S.mu, NULL);
    S.comm = comm;
    S.chain_in = rank + 1;
    int32_t in[NOPS], out[NOPS];
    mc_request_h req[NOPS];
    for (int i = 0; i < NOPS; i++) {
        in[i] = rank * 10 + i;
        if (mc_comm_iallreduce(comm, &in[i], &out[i], 1, MC_INT32, MC_SUM,
                               &req[i]))
            return MC_TFAIL(rank, "iallreduce: %s", mc_last_error());
        if (i % 2 == 0 &&
            mc_request_on_complete(req[i], on_done, (void *)(intptr_t)i))
            return MC_TFAIL(rank, "on_complete: %s", mc_last_error());
        if (i == 2 &&
            mc_request_on_complete(req[i], on_done, NULL) != MC_ERR_INVALID_ARG)
            return MC_TFAIL(rank, "second callback accepted");
    }
    __atomic_store_n(&S.issued_all, 1, __ATOMIC_RELEASE);
    /* odd ones: register after completion, or free before completion */
    for (int i = 1; i < NOPS; i += 2) {
        if (i == 3) {
            if (mc_request_on_complete(req[i], on_done, (void *)(intptr_t)i))
                return MC_TFAIL(rank, "on_complete: %s", mc_last_error());
            mc_request_free(req[i]); /* callback must still run */
            req[i] = NULL;
            continue;
        }
        if (mc_request_wait(req[i], -1))
            return MC_TFAIL(rank, "wait: %s", mc_last_error());
        if (mc_request_on_complete(req[i], on_done, (void *)(intptr_t)i))
            return MC_TFAIL(rank, "late on_complete: %s", mc_last_error());
    }
    for (int i = 0; i < NOPS; i++) {
        if (!req[i]) continue;
        if (mc_request_wait(req[i], -1))
            return MC_TFAIL(rank, "wait %d: %s", i, mc_last_error());
        mc_request_free(req[i]);
    }
    /* every callback exactly once, with the right status */
    for (int spin = 0; spin < 5000; spin++) {
        pthread_mutex_lock(&S.mu);
        int n = S.norder;
        pthread_mutex_unlock(&S.mu);
        if (n == NOPS && S.chained) break;
        usleep(1000);
    }
    for (int i = 0; i < NOPS; i++) {
        if (S.calls[i] != 1)
            return MC_TFAIL(rank, "callback %d ran %d times", i, S.calls[i]);
        if (S.st[i] != MC_OK)
            return MC_TFAIL(rank, "callback %d status %d", i, S.st[i]);
        int32_t want = 0;
        for (int r = 0; r < size; r++)
            want += r * 10 + i;
        if (out[i] != want)
            return MC_TFAIL(rank, "op %d: %d != %d", i, out[i], want);
    }
    /* callbacks registered as their op was issued fire in issue order
     * (collectives complete in issue order) */
    int last = -1;
    for (int k = 0; k < S.norder; k++) {
        int i = S.order[k];
        if (i % 2 == 0) { /* registered right after issue */
            if (i < last)
                return MC_TFAIL(rank, "callback order %d after %d", i, last);
            last = i;
        }
    }
    if (!S.chained) return MC_TFAIL(rank, "chained op not issued");
    if (mc_request_wait(S.chained, -1))
        return MC_TFAIL(rank, "chained: %s", mc_last_error());
    mc_request_free(S.chained);
    if (S.chain_out != size * (size + 1) / 2)
        return MC_TFAIL(rank, "chained result %d", S.chain_out);
    return 0;
}

static void test_cb_shm(void **s)
{
    (void)s;
    assert_int_equal(mc_test_spawn(3, MC_TRANSPORT_SHM, 60, body, NULL), 0);
}

static void test_cb_tcp(void **s)
{
    (void)s;
    assert_int_equal(mc_test_spawn(2, MC_TRANSPORT_TCP, 60, body, NULL), 0);
}

/* Fire and forget: p2p requests whose callback frees them, posted while
 * another thread waits on the communicator (so that a send may end, and its
 * callback run and free it, while mc_request_on_complete is still on its
 * way out: it must not touch the request after its lock; ASan), some
 * small (done at their post), some of 1 MiB (watched by the progress
 * thread until they end). */
#define FF_N 2000
#define FF_BIG (256 * 1024) /* int32: 1 MiB */

static _Atomic int ff_done, ff_bad, ff_stop;

static void ff_free_cb(mc_request_h req, mc_status_t st, void *arg)
{
    (void)arg;
    if (st != MC_OK) atomic_fetch_add(&ff_bad, 1);
    mc_request_free(req);
    atomic_fetch_add(&ff_done, 1);
}

static mc_comm_h ff_comm;

static void *ff_waiter(void *a)
{
    (void)a;
    int32_t v;
    mc_request_h r;
    if (mc_comm_irecv(ff_comm, &v, 1, MC_INT32, 1, 999, &r)) return NULL;
    while (!atomic_load(&ff_stop))
        (void)mc_request_wait(r, 50);
    mc_request_free(r); /* pending: destroy ends it */
    return NULL;
}

static int ff_body(mc_comm_h comm, int rank, int size, void *arg)
{
    (void)size, (void)arg;
    atomic_store(&ff_done, 0);
    atomic_store(&ff_bad, 0);
    atomic_store(&ff_stop, 0);
    ff_comm = comm;
    int32_t *big = calloc(FF_BIG, sizeof(int32_t));
    if (!big) return MC_TFAIL(rank, "oom");
    int32_t x = 1;
    if (rank == 0) {
        pthread_t t;
        if (pthread_create(&t, NULL, ff_waiter, NULL))
            return MC_TFAIL(rank, "pthread_create");
        for (int i = 0; i < FF_N; i++) {
            int b = i % 100 == 0;
            mc_request_h r;
            if (mc_comm_isend(comm, b ? big : &x, b ? FF_BIG : 1, MC_INT32,
                              1, 5, &r))
                return MC_TFAIL(rank, "isend: %s", mc_last_error());
            if (mc_request_on_complete(r, ff_free_cb, NULL))
                return MC_TFAIL(rank, "on_complete: %s", mc_last_error());
        }
        for (int i = 0; i < 30000 && atomic_load(&ff_done) < FF_N; i++)
            usleep(1000);
        atomic_store(&ff_stop, 1);
        pthread_join(t, NULL);
        if (atomic_load(&ff_done) != FF_N || atomic_load(&ff_bad))
            return MC_TFAIL(rank, "%d of %d callbacks, %d failed",
                            atomic_load(&ff_done), FF_N,
                            atomic_load(&ff_bad));
    } else {
        for (int i = 0; i < FF_N; i++) {
            int b = i % 100 == 0;
            if (mc_comm_recv(comm, b ? big : &x, b ? FF_BIG : 1, MC_INT32, 0,
                             5))
                return MC_TFAIL(rank, "recv %d: %s", i, mc_last_error());
        }
    }
    if (mc_comm_barrier(comm))
        return MC_TFAIL(rank, "barrier: %s", mc_last_error());
    free(big);
    return 0;
}

static void test_p2p_free_in_cb_shm(void **s)
{
    (void)s;
    assert_int_equal(mc_test_spawn(2, MC_TRANSPORT_SHM, 60, ff_body, NULL),
                     0);
}

static void test_p2p_free_in_cb_tcp(void **s)
{
    (void)s;
    assert_int_equal(mc_test_spawn(2, MC_TRANSPORT_TCP, 60, ff_body, NULL),
                     0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cb_shm),
        cmocka_unit_test(test_cb_tcp),
        cmocka_unit_test(test_p2p_free_in_cb_shm),
        cmocka_unit_test(test_p2p_free_in_cb_tcp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
