/*
 * The etcd client (membership/etcd.c) and the etcd store against real etcd
 * processes (Debian's etcd-server) on loopback, each with a temporary data
 * dir: a single member, and a 3-member cluster of which one member is
 * SIGKILLed mid-run.
 *
 *  - kv: binary values, prefix ranges in key order, absent keys, deletes;
 *  - transactions on the mod revision and on the value;
 *  - leases: a kept-alive key stays, an abandoned one is deleted on expiry
 *    and a watcher sees the DELETE; watches replay from a revision;
 *  - the etcd store: 4 forked processes race `add` (no lost update),
 *    compare_set semantics, and a communicator bootstrapped through it;
 *  - failover: the first endpoint's member is killed; calls and an
 *    established watch go on through the others, without losing events;
 *  - an endpoint that does not answer fails in bounded time, naming it;
 *  - membership: a SIGSTOPped rank removed on lease expiry and fenced when
 *    resumed; an etcd outage changes nothing; two coordinators racing:
 *    the one whose view transaction loses adopts etcd's view; the etcd
 *    leader of a 3-member cluster killed while collectives run, then a
 *    rank killed: its removal commits through the two members left.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "etcd.h"
#include "etcd_member.h"
#include "etcd_cluster.h"
#include "tests_common.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static cluster_t *g_one; /* the single-member cluster of most tests */

static int setup_one(void **state)
{
    (void)state;
    g_one = cluster_start(1);
    return 0;
}

static int teardown_one(void **state)
{
    (void)state;
    cluster_stop(g_one);
    return 0;
}

static mc_etcd_t *client(const char *endpoints, int64_t timeout_ms)
{
    mc_etcd_t *e = NULL;
    assert_int_equal(mc_etcd_open(endpoints, timeout_ms, &e), MC_OK);
    return e;
}

static void test_kv(void **state)
{
    (void)state;
    mc_etcd_t *e = client(g_one->endpoints, 2000);
    const uint8_t bin[] = {0, 1, 0xff, 0xfe, 0, '=', '\n', 0x80};
    int64_t r1 = 0, r2 = 0;
    assert_int_equal(mc_etcd_put(e, "kv/b", bin, sizeof(bin), 0, &r1), MC_OK);
    assert_int_equal(mc_etcd_put(e, "kv/a", "alpha", 5, 0, &r2), MC_OK);
    assert_true(r2 > r1 && r1 > 0);
    assert_int_equal(mc_etcd_put(e, "kv/c", "", 0, 0, NULL), MC_OK);
    assert_int_equal(mc_etcd_put(e, "kw", "outside", 7, 0, NULL), MC_OK);
    mc_etcd_kv_t *kvs;
    int n;
    int64_t rev;
    assert_int_equal(mc_etcd_get(e, "kv/", 1, &kvs, &n, &rev), MC_OK);
    assert_int_equal(n, 3);
    assert_true(rev > r2);
    assert_string_equal(kvs[0].key, "kv/a");
    assert_string_equal(kvs[1].key, "kv/b");
    assert_string_equal(kvs[2].key, "kv/c");
    assert_int_equal(kvs[0].vlen, 5);
    assert_memory_equal(kvs[0].val, "alpha", 5);
    assert_int_equal(kvs[1].vlen, sizeof(bin));
    assert_memory_equal(kvs[1].val, bin, sizeof(bin));
    assert_int_equal(kvs[1].mod_rev, r1);
    assert_int_equal(kvs[2].vlen, 0);
    mc_etcd_kvs_free(kvs, n);
    free(kvs);
    /* absent key: no kvs */
    assert_int_equal(mc_etcd_get(e, "kv/none", 0, &kvs, &n, NULL), MC_OK);
    assert_int_equal(n, 0);
    assert_null(kvs);
    /* a large value round-trips (1 MiB of a pattern) */
    size_t big = 1 << 20;
    uint8_t *v = malloc(big);
    for (size_t i = 0; i < big; i++)
        v[i] = (uint8_t)(i * 7 + (i >> 11));
    assert_int_equal(mc_etcd_put(e, "kv/big", v, big, 0, NULL), MC_OK);
    assert_int_equal(mc_etcd_get(e, "kv/big", 0, &kvs, &n, NULL), MC_OK);
    assert_int_equal(n, 1);
    assert_int_equal(kvs[0].vlen, big);
    assert_memory_equal(kvs[0].val, v, big);
    mc_etcd_kvs_free(kvs, n);
    free(kvs);
    free(v);
    int64_t nd = 0;
    assert_int_equal(mc_etcd_del(e, "kv/", 1, &nd), MC_OK);
    assert_int_equal(nd, 4);
    assert_int_equal(mc_etcd_get(e, "kv/", 1, &kvs, &n, NULL), MC_OK);
    assert_int_equal(n, 0);
    assert_int_equal(mc_etcd_get(e, "kw", 0, &kvs, &n, NULL), MC_OK);
    assert_int_equal(n, 1); /* not under the prefix: kept */
    mc_etcd_kvs_free(kvs, n);
    free(kvs);
    mc_etcd_close(e);
}

static void test_txn(void **state)
{
    (void)state;
    mc_etcd_t *e = client(g_one->endpoints, 2000);
    int ok = -1;
    int64_t rev = 0;
    mc_etcd_kv_t cur;
    /* create if absent: once */
    assert_int_equal(
        mc_etcd_cas_rev(e, "tx/view", 0, "v1", 2, 0, &ok, &rev, &cur), MC_OK);
    assert_int_equal(ok, 1);
    assert_null(cur.key);
    int64_t v1 = rev;
    assert_int_equal(
        mc_etcd_cas_rev(e, "tx/view", 0, "vX", 2, 0, &ok, NULL, &cur), MC_OK);
    assert_int_equal(ok, 0);
    assert_string_equal(cur.key, "tx/view");
    assert_memory_equal(cur.val, "v1", 2);
    assert_int_equal(cur.mod_rev, v1);
    mc_etcd_kvs_free(&cur, 1);
    /* on the revision: the right one wins, a stale one loses */
    assert_int_equal(
        mc_etcd_cas_rev(e, "tx/view", v1, "v2", 2, 0, &ok, &rev, NULL), MC_OK);
    assert_int_equal(ok, 1);
    assert_int_equal(
        mc_etcd_cas_rev(e, "tx/view", v1, "v3", 2, 0, &ok, NULL, &cur), MC_OK);
    assert_int_equal(ok, 0);
    assert_memory_equal(cur.val, "v2", 2);
    assert_int_equal(cur.mod_rev, rev);
    mc_etcd_kvs_free(&cur, 1);
    /* on the value */
    assert_int_equal(mc_etcd_cas_val(e, "tx/view", "v1", 2, "v4", 2, 0, &ok,
                                     NULL, &cur),
                     MC_OK);
    assert_int_equal(ok, 0);
    mc_etcd_kvs_free(&cur, 1);
    assert_int_equal(mc_etcd_cas_val(e, "tx/view", "v2", 2, "v4", 2, 0, &ok,
                                     NULL, NULL),
                     MC_OK);
    assert_int_equal(ok, 1);
    assert_int_equal(
        mc_etcd_cas_val(e, "tx/new", NULL, 0, "n", 1, 0, &ok, NULL, NULL),
        MC_OK);
    assert_int_equal(ok, 1);
    mc_etcd_del(e, "tx/", 1, NULL);
    mc_etcd_close(e);
}

typedef struct {
    pthread_mutex_t lock;
    int n;
    int type[64];
    char key[64][32];
    char val[64][16];
    int64_t rev[64];
} evlog_t;

static void on_event(void *arg, int type, const mc_etcd_kv_t *kv)
{
    evlog_t *l = arg;
    pthread_mutex_lock(&l->lock);
    if (l->n < 64 && !kv) { /* MC_ETCD_RESYNC */
        l->type[l->n] = type;
        l->key[l->n][0] = l->val[l->n][0] = '\0';
        l->rev[l->n] = 0;
        l->n++;
    } else if (l->n < 64) {
        l->type[l->n] = type;
        snprintf(l->key[l->n], sizeof(l->key[0]), "%s", kv->key);
        snprintf(l->val[l->n], sizeof(l->val[0]), "%.*s", (int)kv->vlen,
                 (const char *)kv->val);
        l->rev[l->n] = kv->mod_rev;
        l->n++;
    }
    pthread_mutex_unlock(&l->lock);
}

static int ev_count(evlog_t *l)
{
    pthread_mutex_lock(&l->lock);
    int n = l->n;
    pthread_mutex_unlock(&l->lock);
    return n;
}

/* Wait until the log holds `n` events (at most `s` seconds). */
static int ev_wait(evlog_t *l, int n, double s)
{
    double t0 = now_s();
    while (ev_count(l) < n) {
        if (now_s() - t0 > s) return -1;
        usleep(2000);
    }
    return 0;
}

static void test_lease_and_watch(void **state)
{
    (void)state;
    mc_etcd_t *e = client(g_one->endpoints, 2000);
    evlog_t log = {.lock = PTHREAD_MUTEX_INITIALIZER};
    mc_etcd_watch_t *w;
    assert_int_equal(mc_etcd_watch(e, "lw/", 1, 0, on_event, &log, &w), MC_OK);
    int64_t id = 0, ttl = 0;
    assert_int_equal(mc_etcd_lease_grant(e, 1, &id, &ttl), MC_OK);
    assert_true(id != 0 && ttl >= 1);
    int64_t id2 = 0;
    assert_int_equal(mc_etcd_lease_grant(e, 1, &id2, NULL), MC_OK);
    assert_int_equal(mc_etcd_put(e, "lw/kept", "k", 1, id, NULL), MC_OK);
    assert_int_equal(mc_etcd_put(e, "lw/left", "l", 1, id2, NULL), MC_OK);
    assert_int_equal(mc_etcd_put(e, "lw/plain", "p", 1, 0, NULL), MC_OK);
    assert_int_equal(ev_wait(&log, 3, 5), 0);
    /* keep `id` alive for 3 s; `id2` expires meanwhile */
    double t0 = now_s(), t_del = 0;
    while (now_s() - t0 < 3.0) {
        int64_t left = 0;
        assert_int_equal(mc_etcd_lease_keepalive(e, id, &left), MC_OK);
        assert_true(left >= 1);
        if (!t_del && ev_count(&log) >= 4) t_del = now_s() - t0;
        usleep(200000);
    }
    assert_int_equal(ev_wait(&log, 4, 3), 0);
    pthread_mutex_lock(&log.lock);
    assert_int_equal(log.type[0], MC_ETCD_PUT);
    assert_string_equal(log.key[0], "lw/kept");
    assert_string_equal(log.key[1], "lw/left");
    assert_string_equal(log.key[2], "lw/plain");
    assert_string_equal(log.val[2], "p");
    assert_int_equal(log.type[3], MC_ETCD_DELETE);
    assert_string_equal(log.key[3], "lw/left");
    assert_true(log.rev[1] < log.rev[2] && log.rev[2] < log.rev[3]);
    int64_t first_rev = log.rev[0];
    pthread_mutex_unlock(&log.lock);
    printf("  lease TTL 1 s: expiry seen by the watcher %.2f s after the "
           "grant\n", t_del);
    mc_etcd_kv_t *kvs;
    int n;
    assert_int_equal(mc_etcd_get(e, "lw/", 1, &kvs, &n, NULL), MC_OK);
    assert_int_equal(n, 2); /* kept (alive) and plain */
    mc_etcd_kvs_free(kvs, n);
    free(kvs);
    /* an expired lease reports TTL 0 on keepalive */
    int64_t left = -1;
    assert_int_equal(mc_etcd_lease_keepalive(e, id2, &left), MC_OK);
    assert_int_equal(left, 0);
    /* revoke deletes the key at once */
    assert_int_equal(mc_etcd_lease_revoke(e, id), MC_OK);
    assert_int_equal(ev_wait(&log, 5, 3), 0);
    pthread_mutex_lock(&log.lock);
    assert_int_equal(log.type[4], MC_ETCD_DELETE);
    assert_string_equal(log.key[4], "lw/kept");
    pthread_mutex_unlock(&log.lock);
    mc_etcd_watch_stop(w);
    /* a watch from a revision replays the history since */
    evlog_t re = {.lock = PTHREAD_MUTEX_INITIALIZER};
    assert_int_equal(mc_etcd_watch(e, "lw/", 1, first_rev, on_event, &re, &w),
                     MC_OK);
    assert_int_equal(ev_wait(&re, 5, 5), 0);
    pthread_mutex_lock(&re.lock);
    for (int i = 0; i < 5; i++) {
        assert_string_equal(re.key[i], log.key[i]);
        assert_int_equal(re.type[i], log.type[i]);
        assert_int_equal(re.rev[i], log.rev[i]);
    }
    pthread_mutex_unlock(&re.lock);
    mc_etcd_watch_stop(w);
    mc_etcd_del(e, "lw/", 1, NULL);
    mc_etcd_close(e);
}

/* --- the etcd store ---------------------------------------------------- */

static int adder(int rank, int size, void *arg)
{
    (void)size;
    mc_store_h s;
    if (mc_store_etcd_create(arg, "/t/add/", 5000, &s) != MC_OK)
        return MC_TFAIL(rank, "store: %s", mc_last_error());
    for (int i = 0; i < 50; i++) {
        int64_t v = 0;
        if (mc_store_add(s, "n", 1, &v) != MC_OK)
            return MC_TFAIL(rank, "add: %s", mc_last_error());
        if (v < 1 || v > 200) return MC_TFAIL(rank, "add returned %lld",
                                              (long long)v);
    }
    mc_store_destroy(s);
    return 0;
}

static int comm_rank(int rank, int size, void *arg)
{
    mc_store_h s;
    if (mc_store_etcd_create(arg, "/t/comm/", 5000, &s) != MC_OK)
        return MC_TFAIL(rank, "store: %s", mc_last_error());
    mc_comm_config_t cfg;
    mc_comm_config_init(&cfg);
    cfg.init_timeout_ms = 30000;
    mc_comm_h c;
    mc_status_t st = mc_comm_create(rank, size, s, &cfg, &c);
    mc_store_destroy(s);
    if (st != MC_OK) return MC_TFAIL(rank, "create: %s", mc_last_error());
    int64_t v[64];
    for (int i = 0; i < 64; i++)
        v[i] = (rank + 1) * (i + 1);
    st = mc_comm_allreduce(c, v, v, 64, MC_INT64, MC_SUM);
    int bad = st != MC_OK;
    for (int i = 0; i < 64 && !bad; i++)
        bad = v[i] != (int64_t)size * (size + 1) / 2 * (i + 1);
    mc_comm_destroy(c);
    return bad ? MC_TFAIL(rank, "allreduce: %s", mc_status_str(st)) : 0;
}

static void test_store(void **state)
{
    (void)state;
    char *ep = g_one->endpoints;
    assert_int_equal(mc_test_fork(4, 60, adder, ep), 0);
    mc_store_h s;
    assert_int_equal(mc_store_etcd_create(ep, "/t/add/", 5000, &s), MC_OK);
    int64_t v = -1;
    assert_int_equal(mc_store_add(s, "n", 0, &v), MC_OK);
    assert_int_equal(v, 200); /* 4 x 50, none lost */
    /* compare_set: absent matches an empty expectation, then the value */
    uint8_t cur[16];
    size_t cl = 0;
    assert_int_equal(
        mc_store_compare_set(s, "cs", NULL, 0, "a", 1, cur, sizeof(cur), &cl),
        MC_OK);
    assert_int_equal(cl, 1);
    assert_memory_equal(cur, "a", 1);
    assert_int_equal(
        mc_store_compare_set(s, "cs", "x", 1, "b", 1, cur, sizeof(cur), &cl),
        MC_OK);
    assert_memory_equal(cur, "a", 1); /* lost: the current value */
    assert_int_equal(
        mc_store_compare_set(s, "cs", "a", 1, "bc", 2, cur, sizeof(cur), &cl),
        MC_OK);
    assert_int_equal(cl, 2);
    assert_memory_equal(cur, "bc", 2);
    /* get waits for a key, and times out on one that never comes */
    size_t len = 0;
    double t0 = now_s();
    assert_int_equal(mc_store_get(s, "never", 300, cur, sizeof(cur), &len),
                     MC_ERR_TIMEOUT);
    assert_true(now_s() - t0 < 2.0);
    int ex = 1;
    assert_int_equal(mc_store_check(s, "never", &ex), MC_OK);
    assert_int_equal(ex, 0);
    assert_int_equal(mc_store_del(s, "cs"), MC_OK);
    assert_int_equal(mc_store_check(s, "cs", &ex), MC_OK);
    assert_int_equal(ex, 0);
    mc_store_destroy(s);
    /* a communicator bootstrapped through etcd */
    assert_int_equal(mc_test_fork(4, 60, comm_rank, ep), 0);
}

/* A transaction is never sent twice: on an endpoint that takes the request
 * and never answers (a listening socket nobody accepts on, as a stopped
 * member), it fails with a timeout instead of running again on the next
 * endpoint, where it could apply a second time; the next call starts on
 * the next endpoint. A put (idempotent here) fails over as before. */
static void test_txn_not_resent(void **state)
{
    (void)state;
    int hung = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(hung >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    assert_int_equal(bind(hung, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(hung, 16), 0);
    assert_int_equal(getsockname(hung, (struct sockaddr *)&a, &al), 0);
    char eps[300];
    snprintf(eps, sizeof(eps), "http://127.0.0.1:%d,%s", ntohs(a.sin_port),
             g_one->endpoints);
    mc_etcd_t *e = client(eps, 300);
    int ok = 1;
    mc_status_t st =
        mc_etcd_cas_val(e, "tn/k", NULL, 0, "1", 1, 0, &ok, NULL, NULL);
    assert_int_equal(st, MC_ERR_TIMEOUT);
    assert_non_null(strstr(mc_last_error(), "not sent again"));
    /* the next call starts on the live endpoint: the key was never set */
    st = mc_etcd_cas_val(e, "tn/k", NULL, 0, "1", 1, 0, &ok, NULL, NULL);
    assert_int_equal(st, MC_OK);
    assert_int_equal(ok, 1);
    mc_etcd_close(e);
    e = client(eps, 300);
    assert_int_equal(mc_etcd_put(e, "tn/p", "v", 1, 0, NULL), MC_OK);
    mc_etcd_close(e);
    close(hung);
}

static void test_unreachable(void **state)
{
    (void)state;
    char ep[64];
    snprintf(ep, sizeof(ep), "127.0.0.1:%d", free_port());
    mc_etcd_t *e = client(ep, 500);
    double t0 = now_s();
    mc_status_t st = mc_etcd_put(e, "k", "v", 1, 0, NULL);
    assert_true(st == MC_ERR_IO || st == MC_ERR_TIMEOUT);
    assert_true(now_s() - t0 < 3.0);
    assert_non_null(strstr(mc_last_error(), ep));
    mc_etcd_close(e);
    assert_int_equal(mc_etcd_open(" , ", 500, &e), MC_ERR_INVALID_ARG);
}

/* One revision with several events (a prefix delete): every one of them
 * reaches the watch. */
static void test_watch_one_revision(void **state)
{
    (void)state;
    mc_etcd_t *e = client(g_one->endpoints, 2000);
    evlog_t log = {.lock = PTHREAD_MUTEX_INITIALIZER};
    mc_etcd_watch_t *w;
    assert_int_equal(mc_etcd_watch(e, "wr/", 1, 0, on_event, &log, &w), MC_OK);
    assert_int_equal(mc_etcd_put(e, "wr/a", "1", 1, 0, NULL), MC_OK);
    assert_int_equal(mc_etcd_put(e, "wr/b", "2", 1, 0, NULL), MC_OK);
    int64_t ndel = 0;
    assert_int_equal(mc_etcd_del(e, "wr/", 1, &ndel), MC_OK);
    assert_int_equal(ndel, 2);
    if (ev_wait(&log, 4, 5) != 0)
        fail_msg("the watch saw %d of 4 events (2 puts, 2 deletes in one "
                 "revision)",
                 ev_count(&log));
    usleep(100000);
    pthread_mutex_lock(&log.lock);
    assert_int_equal(log.n, 4);
    assert_int_equal(log.type[2], MC_ETCD_DELETE);
    assert_int_equal(log.type[3], MC_ETCD_DELETE);
    assert_int_equal(log.rev[2], log.rev[3]);
    assert_string_equal(log.key[2], "wr/a");
    assert_string_equal(log.key[3], "wr/b");
    pthread_mutex_unlock(&log.lock);
    mc_etcd_watch_stop(w);
    mc_etcd_close(e);
}

/* A watch resuming from a compacted revision is cancelled by the server: it
 * tells its callback to read the state again (RESYNC) and goes on with the
 * events after. */
static void test_watch_compacted(void **state)
{
    (void)state;
    mc_etcd_t *e = client(g_one->endpoints, 2000);
    int64_t r1 = 0, r3 = 0;
    assert_int_equal(mc_etcd_put(e, "wc/k", "1", 1, 0, &r1), MC_OK);
    assert_int_equal(mc_etcd_put(e, "wc/k", "2", 1, 0, NULL), MC_OK);
    assert_int_equal(mc_etcd_put(e, "wc/k", "3", 1, 0, &r3), MC_OK);
    assert_int_equal(mc_etcd_compact(e, r3), MC_OK);
    evlog_t log = {.lock = PTHREAD_MUTEX_INITIALIZER};
    mc_etcd_watch_t *w;
    assert_int_equal(mc_etcd_watch(e, "wc/", 1, r1, on_event, &log, &w),
                     MC_OK);
    if (ev_wait(&log, 1, 5) != 0)
        fail_msg("no RESYNC from a watch whose start was compacted");
    assert_int_equal(mc_etcd_put(e, "wc/k", "4", 1, 0, NULL), MC_OK);
    if (ev_wait(&log, 2, 5) != 0)
        fail_msg("the watch saw %d events after the resync; want the put",
                 ev_count(&log) - 1);
    pthread_mutex_lock(&log.lock);
    assert_int_equal(log.type[0], MC_ETCD_RESYNC);
    assert_int_equal(log.type[1], MC_ETCD_PUT);
    assert_string_equal(log.val[1], "4");
    pthread_mutex_unlock(&log.lock);
    mc_etcd_watch_stop(w);
    mc_etcd_close(e);
}

static void test_failover(void **state)
{
    (void)state;
    cluster_t *k = cluster_start(3);
    mc_etcd_t *e = client(k->endpoints, 1000);
    evlog_t log = {.lock = PTHREAD_MUTEX_INITIALIZER};
    mc_etcd_watch_t *w;
    /* the client and its watch talk to member 0 (the first endpoint) */
    assert_int_equal(mc_etcd_watch(e, "fo/", 1, 0, on_event, &log, &w), MC_OK);
    char val[16];
    for (int i = 0; i < 5; i++) {
        snprintf(val, sizeof(val), "%d", i);
        assert_int_equal(mc_etcd_put(e, "fo/k", val, strlen(val), 0, NULL),
                         MC_OK);
    }
    assert_int_equal(ev_wait(&log, 5, 5), 0);
    member_kill(k, 0);
    double t0 = now_s();
    for (int i = 5; i < 20; i++) {
        snprintf(val, sizeof(val), "%d", i);
        mc_status_t st = mc_etcd_put(e, "fo/k", val, strlen(val), 0, NULL);
        if (st != MC_OK) fail_msg("put %d after the kill: %s", i, mc_last_error());
    }
    printf("  15 puts after killing member 0: %.0f ms\n", (now_s() - t0) * 1e3);
    mc_etcd_kv_t *kvs;
    int n;
    assert_int_equal(mc_etcd_get(e, "fo/k", 0, &kvs, &n, NULL), MC_OK);
    assert_int_equal(n, 1);
    assert_memory_equal(kvs[0].val, "19", 2);
    mc_etcd_kvs_free(kvs, n);
    free(kvs);
    /* the watch resumed elsewhere: every value, once, in order */
    if (ev_wait(&log, 20, 10) != 0)
        fail_msg("watch saw %d of 20 events after the failover",
                 ev_count(&log));
    pthread_mutex_lock(&log.lock);
    for (int i = 0; i < 20; i++) {
        snprintf(val, sizeof(val), "%d", i);
        assert_string_equal(log.val[i], val);
        if (i) assert_true(log.rev[i] > log.rev[i - 1]);
    }
    pthread_mutex_unlock(&log.lock);
    usleep(200000);
    assert_int_equal(ev_count(&log), 20);
    mc_etcd_watch_stop(w);
    mc_etcd_close(e);
    cluster_stop(k);
}


/* --- membership on etcd: real rank processes ---------------------------- */

#define EM_STEPS 100000
typedef struct {
    _Atomic int step[4];
    _Atomic int quit;
    _Atomic int stopped_rank_st; /* status the resumed rank got */
    _Atomic int stopped_rank_done;
    _Atomic long long t_epoch2_ns[4]; /* first op completed in epoch >= 2 */
    _Atomic int final_epoch[4];
    _Atomic int errors;
    _Atomic int fail_st[4]; /* with fail_ok: the status of the failed call */
    char err[4][256];
} em_shm_t;

typedef struct {
    em_shm_t *sh;
    char dir[256];
    char endpoints[256];
    int size;
    int victim; /* SIGSTOPped (its process checks eviction), or -1 */
    int fail_ok; /* a failed call ends a rank's loop (fail_st), no error */
} em_run_t;

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

static int em_rank(int rank, int size, void *arg)
{
    em_run_t *k = arg;
    em_shm_t *sh = k->sh;
    mc_store_h store;
    if (mc_store_file_create(k->dir, &store) != MC_OK)
        return MC_TFAIL(rank, "store: %s", mc_last_error());
    mc_comm_config_t cfg;
    mc_comm_config_init(&cfg);
    cfg.transport = MC_TRANSPORT_SHM;
    cfg.timeout_ms = 30000;
    cfg.init_timeout_ms = 30000;
    cfg.etcd_endpoints = k->endpoints;
    cfg.etcd_ttl_s = 1;
    mc_comm_h c;
    mc_status_t st = mc_comm_create(rank, size, store, &cfg, &c);
    mc_store_destroy(store);
    if (st != MC_OK) return MC_TFAIL(rank, "create: %s", mc_last_error());
    int64_t v[16];
    int rc = 0;
    for (int s = 0; s < EM_STEPS; s++) {
        for (int i = 0; i < 16; i++)
            v[i] = (rank + 1) * (int64_t)(s + i);
        v[15] = atomic_load(&sh->quit);
        st = mc_comm_allreduce(c, v, v, 16, MC_INT64, MC_SUM);
        if (rank == k->victim && st != MC_OK) {
            /* the stopped rank, resumed after its removal */
            atomic_store(&sh->stopped_rank_st, st);
            atomic_store(&sh->stopped_rank_done, 1);
            break;
        }
        if (k->fail_ok && st != MC_OK) {
            atomic_store(&sh->fail_st[rank], st);
            break;
        }
        if (st != MC_OK) {
            snprintf(sh->err[rank], sizeof(sh->err[rank]), "step %d: %s", s,
                     mc_comm_last_error(c));
            atomic_fetch_add(&sh->errors, 1);
            rc = 1;
            break;
        }
        uint64_t ep;
        uint8_t act[4];
        mc_comm_op_view(c, &ep, act, NULL);
        int64_t w = 0;
        for (int p = 0; p < size; p++)
            if (act[p]) w += p + 1;
        for (int i = 0; i < 15; i++)
            if (v[i] != w * (s + i)) {
                snprintf(sh->err[rank], sizeof(sh->err[rank]),
                         "step %d: element %d off the reference", s, i);
                atomic_fetch_add(&sh->errors, 1);
                rc = 1;
            }
        if (ep >= 2 && !atomic_load(&sh->t_epoch2_ns[rank]))
            atomic_store(&sh->t_epoch2_ns[rank], now_ns());
        atomic_store(&sh->final_epoch[rank], (int)ep);
        atomic_store(&sh->step[rank], s + 1);
        if (rc || v[15] > 0) break;
        usleep(500);
    }
    mc_comm_destroy(c);
    return rc;
}

/* A communicator's view key: <prefix>view. */
static int is_view_key(const char *key)
{
    size_t kl = strlen(key);
    return kl > 5 && strcmp(key + kl - 5, "/view") == 0;
}

static em_run_t *em_new(cluster_t *k, int size, int victim)
{
    em_run_t *r = calloc(1, sizeof(*r));
    r->sh = mmap(NULL, sizeof(em_shm_t), PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(r->sh != MAP_FAILED);
    memset(r->sh, 0, sizeof(em_shm_t));
    char *d = mc_test_mkdtemp();
    snprintf(r->dir, sizeof(r->dir), "%s", d);
    free(d);
    snprintf(r->endpoints, sizeof(r->endpoints), "%s", k->endpoints);
    r->size = size;
    r->victim = victim;
    return r;
}

static void em_free(em_run_t *r)
{
    munmap(r->sh, sizeof(em_shm_t));
    mc_test_rmtree(r->dir);
    free(r);
}

static pid_t em_spawn(em_run_t *r, int rank)
{
    fflush(NULL);
    pid_t p = fork();
    if (p == 0) {
        alarm(120);
        _exit(em_rank(rank, r->size, r));
    }
    return p;
}

static int em_steps_min(em_run_t *r, uint32_t mask)
{
    int m = 1 << 30;
    for (int p = 0; p < r->size; p++)
        if (mask & (1u << p)) {
            int s = atomic_load(&r->sh->step[p]);
            if (s < m) m = s;
        }
    return m;
}

static void em_wait_steps(em_run_t *r, uint32_t mask, int n, double s)
{
    double t0 = now_s();
    while (em_steps_min(r, mask) < n) {
        if (now_s() - t0 > s)
            fail_msg("ranks 0x%x did not reach step %d: %s | %s | %s", mask,
                     n, r->sh->err[0], r->sh->err[1], r->sh->err[2]);
        usleep(1000);
    }
}

/* All r->size ranks, each past step 20. */
static void em_spawn_all(em_run_t *r, pid_t *pid)
{
    for (int p = 0; p < r->size; p++)
        pid[p] = em_spawn(r, p);
    em_wait_steps(r, (1u << r->size) - 1, 20, 30);
}

static void em_reap(pid_t *pids, int n, double s)
{
    double t0 = now_s();
    for (int i = 0; i < n; i++) {
        int ws;
        while (waitpid(pids[i], &ws, WNOHANG) == 0) {
            if (now_s() - t0 > s) {
                kill(pids[i], SIGKILL);
                waitpid(pids[i], &ws, 0);
                fail_msg("rank %d did not finish", i);
            }
            usleep(2000);
        }
        if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0)
            fail_msg("rank %d exited badly (status 0x%x)", i, ws);
    }
}

/* A SIGSTOPped rank: no socket closes and heartbeats are set to 20 s, so
 * only its lease tells; the survivors remove it once etcd expires it. It
 * is then resumed: its lease is gone, and its next call fails EVICTED. */
static void test_member_stop(void **state)
{
    (void)state;
    setenv("MOONCAKE_LIVENESS_TIMEOUT_MS", "20000", 1);
    em_run_t *r = em_new(g_one, 3, 2);
    pid_t pid[3];
    em_spawn_all(r, pid);
    long long t_stop = now_ns();
    kill(pid[2], SIGSTOP);
    em_wait_steps(r, 0x3, em_steps_min(r, 0x3) + 5, 20);
    while (!atomic_load(&r->sh->t_epoch2_ns[0]) ||
           !atomic_load(&r->sh->t_epoch2_ns[1])) {
        if (now_ns() - t_stop > 15000000000ll)
            fail_msg("survivors did not remove the stopped rank");
        usleep(1000);
    }
    long long t0 = atomic_load(&r->sh->t_epoch2_ns[0]) - t_stop;
    long long t1 = atomic_load(&r->sh->t_epoch2_ns[1]) - t_stop;
    printf("  SIGSTOP, lease TTL 1 s: survivors in the new view %.0f / %.0f "
           "ms after the stop\n", t0 / 1e6, t1 / 1e6);
    kill(pid[2], SIGCONT);
    double w0 = now_s();
    while (!atomic_load(&r->sh->stopped_rank_done)) {
        if (now_s() - w0 > 20) fail_msg("the resumed rank was not fenced");
        usleep(1000);
    }
    assert_int_equal(atomic_load(&r->sh->stopped_rank_st), MC_ERR_EVICTED);
    atomic_store(&r->sh->quit, 1);
    em_reap(pid, 3, 30);
    assert_int_equal(atomic_load(&r->sh->errors), 0);
    assert_int_equal(atomic_load(&r->sh->final_epoch[0]), 2);
    /* the view moved in etcd too, by transaction: epoch 2 without rank 2 */
    mc_etcd_t *e = client(g_one->endpoints, 2000);
    mc_etcd_kv_t *kvs;
    int n, found = 0;
    assert_int_equal(mc_etcd_get(e, "/mooncake/default/mc/", 1, &kvs, &n,
                                 NULL),
                     MC_OK);
    for (int i = 0; i < n; i++) {
        if (is_view_key(kvs[i].key) && strncmp(kvs[i].val, "2 ", 2) == 0 &&
            kvs[i].vlen > 3 &&
            strcmp((char *)kvs[i].val + kvs[i].vlen - 3, "110") == 0)
            found++;
    }
    mc_etcd_kvs_free(kvs, n);
    free(kvs);
    mc_etcd_close(e);
    assert_int_equal(found, 1);
    /* detection rests on the lease: within its TTL plus etcd's expiry
     * sweep and our poll (generous bound for a loaded 2-core machine) */
    assert_true(t0 < 3000000000ll && t1 < 3000000000ll);
    unsetenv("MOONCAKE_LIVENESS_TIMEOUT_MS");
    em_free(r);
}

/* etcd goes away for 2 s (longer than the TTL) during a loop of
 * collectives and comes back: nothing changes for the group. */
static void test_etcd_outage(void **state)
{
    (void)state;
    cluster_t *k = cluster_start(1);
    em_run_t *r = em_new(k, 3, -1);
    pid_t pid[3];
    em_spawn_all(r, pid);
    member_kill(k, 0);
    int at_kill = em_steps_min(r, 0x7);
    usleep(2000000);
    int during = em_steps_min(r, 0x7);
    start_member(k, 0);
    double t0 = now_s();
    mc_etcd_t *e = client(k->endpoints, 500);
    while (mc_etcd_put(e, "ready", "1", 1, 0, NULL) != MC_OK) {
        if (now_s() - t0 > 20) fail_msg("etcd did not come back");
        usleep(10000);
    }
    mc_etcd_close(e);
    printf("  etcd down 2 s: the group ran %d steps meanwhile\n",
           during - at_kill);
    assert_true(during > at_kill + 10);
    usleep(2500000); /* leases and keepalives after the restart */
    em_wait_steps(r, 0x7, em_steps_min(r, 0x7) + 20, 20);
    atomic_store(&r->sh->quit, 1);
    em_reap(pid, 3, 30);
    assert_int_equal(atomic_load(&r->sh->errors), 0);
    for (int p = 0; p < 3; p++)
        assert_int_equal(atomic_load(&r->sh->final_epoch[p]), 1);
    em_free(r);
    cluster_stop(k);
}


/* As another coordinator would: move etcd's view key of the running
 * 3-rank group from epoch 1 (every slot active) to `epoch` with the
 * active set `act`, keeping the start seq. The key in vkey, the value
 * written in nv (64 bytes). */
static void view_rewrite(mc_etcd_t *e, int epoch, const char *act,
                         char vkey[256], char nv[64])
{
    mc_etcd_kv_t *kvs;
    int n;
    assert_int_equal(mc_etcd_get(e, "/mooncake/", 1, &kvs, &n, NULL), MC_OK);
    int vi = -1;
    for (int i = 0; i < n; i++) {
        if (is_view_key(kvs[i].key)) vi = i;
    }
    assert_true(vi >= 0);
    unsigned long long ep = 0, start = 0;
    char cur[8] = "";
    assert_int_equal(sscanf(kvs[vi].val, "%llu %llu %7s", &ep, &start, cur),
                     3);
    assert_int_equal(ep, 1);
    assert_string_equal(cur, "111");
    snprintf(nv, 64, "%d %llu %s", epoch, start, act);
    int ok = 0;
    assert_int_equal(mc_etcd_cas_val(e, kvs[vi].key, kvs[vi].val, kvs[vi].vlen,
                                     nv, strlen(nv), 0, &ok, NULL, NULL),
                     MC_OK);
    assert_int_equal(ok, 1);
    snprintf(vkey, 256, "%s", kvs[vi].key);
    mc_etcd_kvs_free(kvs, n);
    free(kvs);
}

/* Two coordinators race: etcd already holds a view another coordinator
 * committed (here the test writes it: epoch 2 without rank 1, as a
 * partition's other side would) when rank 2 dies. Rank 0's own decision
 * (epoch 2 without rank 2) loses the transaction: it adopts etcd's view,
 * rank 1 learns it is out (EVICTED), and rank 0 goes on: the dead rank 2
 * is removed in epoch 3. */
static void test_view_race(void **state)
{
    (void)state;
    cluster_t *k = cluster_start(1);
    em_run_t *r = em_new(k, 3, 1);
    pid_t pid[3];
    em_spawn_all(r, pid);
    mc_etcd_t *e = client(k->endpoints, 2000);
    mc_etcd_kv_t *kvs;
    int n;
    char vkey[256], nv[64];
    view_rewrite(e, 2, "101", vkey, nv);
    kill(pid[2], SIGKILL);
    waitpid(pid[2], NULL, 0);
    double t0 = now_s();
    while (!atomic_load(&r->sh->stopped_rank_done)) {
        if (now_s() - t0 > 20) fail_msg("rank 1 was not evicted");
        usleep(1000);
    }
    assert_int_equal(atomic_load(&r->sh->stopped_rank_st), MC_ERR_EVICTED);
    em_wait_steps(r, 0x1, em_steps_min(r, 0x1) + 10, 20);
    atomic_store(&r->sh->quit, 1);
    pid_t rest[2] = {pid[0], pid[1]};
    em_reap(rest, 2, 30);
    assert_int_equal(atomic_load(&r->sh->errors), 0);
    assert_int_equal(atomic_load(&r->sh->final_epoch[0]), 3);
    /* and etcd's view is rank 0's epoch 3 */
    assert_int_equal(mc_etcd_get(e, vkey, 0, &kvs, &n, NULL), MC_OK);
    assert_int_equal(n, 1);
    assert_int_equal(strncmp(kvs[0].val, "3 ", 2), 0);
    assert_int_equal(strcmp((char *)kvs[0].val + kvs[0].vlen - 3, "100"), 0);
    mc_etcd_kvs_free(kvs, n);
    free(kvs);
    mc_etcd_close(e);
    em_free(r);
    cluster_stop(k);
}

/* etcd is two views past the group when rank 2 dies: the test writes
 * epoch 3 with every slot active, as a group that removed rank 1 in epoch
 * 2 and admitted a new process into its slot in epoch 3 would leave it
 * (etcd's view holds no incarnations). Rank 0's decision (epoch 2 without
 * rank 2) loses the transaction, and etcd's view has rank 0's slot active
 * again; but two views on, that may be another process: rank 0 fences
 * itself (EVICTED) instead of adopting it, rank 1 likewise once it
 * decides alone (rank 0 gone; or "no quorum" if it reads rank 0's
 * revoked lease before its death), and nothing is committed over etcd's
 * view. Before, both adopted epoch 3, removed rank 2 again in epoch 4 and
 * went on. */
static void test_view_skip(void **state)
{
    (void)state;
    cluster_t *k = cluster_start(1);
    em_run_t *r = em_new(k, 3, -1);
    r->fail_ok = 1;
    pid_t pid[3];
    em_spawn_all(r, pid);
    mc_etcd_t *e = client(k->endpoints, 2000);
    mc_etcd_kv_t *kvs;
    int n;
    char vkey[256], nv[64];
    view_rewrite(e, 3, "111", vkey, nv);
    kill(pid[2], SIGKILL);
    waitpid(pid[2], NULL, 0);
    pid_t rest[2] = {pid[0], pid[1]};
    em_reap(rest, 2, 30);
    assert_int_equal(atomic_load(&r->sh->errors), 0);
    for (int p = 0; p < 2; p++) {
        printf("  rank %d: %s after %d steps (view %d)\n", p,
               mc_status_str(atomic_load(&r->sh->fail_st[p])),
               atomic_load(&r->sh->step[p]),
               atomic_load(&r->sh->final_epoch[p]));
        assert_int_equal(atomic_load(&r->sh->final_epoch[p]), 1);
    }
    assert_int_equal(atomic_load(&r->sh->fail_st[0]), MC_ERR_EVICTED);
    /* rank 1 decides alone once rank 0 is gone; if rank 0's lease, revoked
     * as it exits, is read before its death, that is suspicion alone: no
     * quorum, which stops it too */
    int st1 = atomic_load(&r->sh->fail_st[1]);
    assert_true(st1 == MC_ERR_EVICTED || st1 == MC_ERR_NO_QUORUM);
    /* etcd's view is still the one the test wrote */
    assert_int_equal(mc_etcd_get(e, vkey, 0, &kvs, &n, NULL), MC_OK);
    assert_int_equal(n, 1);
    assert_int_equal(strcmp((char *)kvs[0].val, nv), 0);
    mc_etcd_kvs_free(kvs, n);
    free(kvs);
    mc_etcd_close(e);
    em_free(r);
    cluster_stop(k);
}

/* The leader of member i's cluster, by etcd's maintenance status (its own
 * member id equals the leader id it reports). */
static int is_leader(cluster_t *k, int i)
{
    char cmd[256], out[2048] = "";
    snprintf(cmd, sizeof(cmd),
             "curl -s -m 2 -X POST -d '{}' http://%s:%d/v3/maintenance/status",
             k->ip, k->cport[i]);
    FILE *f = popen(cmd, "r");
    if (!f) return 0;
    size_t n = fread(out, 1, sizeof(out) - 1, f);
    pclose(f);
    out[n] = '\0';
    char id[32] = "", leader[32] = "";
    const char *a = strstr(out, "\"member_id\":\""),
               *b = strstr(out, "\"leader\":\"");
    if (!a || !b) return 0;
    sscanf(a + 13, "%31[0-9]", id);
    sscanf(b + 10, "%31[0-9]", leader);
    return id[0] && strcmp(id, leader) == 0;
}

/* A member that is stopped (SIGSTOP: its kernel still accepts connections
 * and answers TCP keepalives) while it is the first endpoint of a watch and
 * of rank 0's lease and watch. Meanwhile rank 1 leaves (its member key is
 * deleted) and the history is compacted: the watches move off the stopped
 * member, find their revision compacted, and start again (RESYNC); rank 0
 * re-reads the member keys and finds rank 1 gone; its own lease is kept
 * alive through the other members (not fenced). */
static void test_stopped_member(void **state)
{
    (void)state;
    cluster_t *k = cluster_start(3);
    int f = -1;
    for (int tries = 0; tries < 50 && f < 0; tries++) {
        int leader = -1;
        for (int i = 0; i < 3; i++)
            if (is_leader(k, i)) leader = i;
        if (leader >= 0) f = (leader + 1) % 3;
        else usleep(100000);
    }
    assert_true(f >= 0);
    char first[256], others[256];
    snprintf(first, sizeof(first), "http://%s:%d,http://%s:%d,http://%s:%d",
             k->ip, k->cport[f], k->ip, k->cport[(f + 1) % 3], k->ip,
             k->cport[(f + 2) % 3]);
    snprintf(others, sizeof(others), "http://%s:%d,http://%s:%d", k->ip,
             k->cport[(f + 1) % 3], k->ip, k->cport[(f + 2) % 3]);
    mc_etcd_t *ew = client(first, 1000), *e = client(others, 1000);
    evlog_t log = {.lock = PTHREAD_MUTEX_INITIALIZER};
    mc_etcd_watch_t *w;
    assert_int_equal(mc_etcd_watch(ew, "ws/", 1, 0, on_event, &log, &w),
                     MC_OK);
    mc_emember_t *m, *m2;
    assert_int_equal(mc_emember_start(first, "ks/", 0, 2, 0, 2, 5000, &m),
                     MC_OK);
    assert_int_equal(mc_emember_start(others, "ks/", 1, 2, 0, 2, 5000, &m2),
                     MC_OK);
    char val[16];
    for (int i = 0; i < 3; i++) {
        snprintf(val, sizeof(val), "%d", i);
        assert_int_equal(mc_etcd_put(e, "ws/k", val, strlen(val), 0, NULL),
                         MC_OK);
    }
    assert_int_equal(ev_wait(&log, 3, 5), 0);
    /* rank 0's watch (another stream from the same member) has seen rank
     * 1's key by now: the re-read can only report a key it knew */
    usleep(500000);
    assert_int_equal(kill(k->pid[f], SIGSTOP), 0);
    /* from here on the member is resumed before any assertion */
    double t0 = now_s();
    char why[256] = "";
    int64_t rev = 0;
    mc_emember_stop(m2); /* rank 1 leaves: its key goes */
    if (mc_etcd_put(e, "ws/k", "3", 1, 0, &rev) != MC_OK ||
        mc_etcd_compact(e, rev) != MC_OK)
        snprintf(why, sizeof(why), "put/compact: %s", mc_last_error());
    /* the watch starts again: RESYNC */
    int resync = !why[0] && ev_wait(&log, 4, 10) == 0;
    double tw = now_s() - t0;
    if (!why[0] && resync &&
        mc_etcd_put(e, "ws/k", "4", 1, 0, NULL) != MC_OK)
        snprintf(why, sizeof(why), "put 4: %s", mc_last_error());
    int after = !why[0] && resync && ev_wait(&log, 5, 5) == 0;
    /* rank 0 learns that rank 1 left, from its re-read */
    uint64_t inc[2] = {0, 0};
    uint8_t gone[2] = {0, 0};
    while (!why[0] && now_s() - t0 < 10 && !mc_emember_gone(m, inc, gone))
        usleep(50000);
    /* two lease TTLs at least with the first endpoint stopped */
    while (now_s() - t0 < 5)
        usleep(100000);
    int lost = mc_emember_lost(m);
    mc_etcd_kv_t *kvs = NULL;
    int n = 0;
    mc_status_t gst = mc_etcd_get(e, "ks/members/0/0", 0, &kvs, &n, NULL);
    mc_etcd_kvs_free(kvs, n);
    free(kvs);
    kill(k->pid[f], SIGCONT);
    /* the verdict first, then the cluster goes either way (a failed
     * assertion leaves the test at once) */
    char fail[256] = "";
    if (why[0])
        snprintf(fail, sizeof(fail), "%s", why);
    else if (!resync)
        snprintf(fail, sizeof(fail),
                 "the watch on a stopped member saw %d events, no RESYNC",
                 ev_count(&log));
    pthread_mutex_lock(&log.lock);
    for (int i = 0; i < 3 && !fail[0]; i++) {
        snprintf(val, sizeof(val), "%d", i);
        if (strcmp(log.val[i], val) != 0)
            snprintf(fail, sizeof(fail), "event %d: '%s', want '%s'", i,
                     log.val[i], val);
    }
    if (!fail[0] && log.type[3] != MC_ETCD_RESYNC)
        snprintf(fail, sizeof(fail), "event 3 is type %d, not RESYNC",
                 log.type[3]);
    if (!fail[0] && (!after || strcmp(log.val[4], "4") != 0))
        snprintf(fail, sizeof(fail), "no event '4' after the RESYNC");
    pthread_mutex_unlock(&log.lock);
    if (!fail[0] && !gone[1])
        snprintf(fail, sizeof(fail),
                 "rank 0 never learned that rank 1's key went");
    if (!fail[0] && (gst != MC_OK || lost || n != 1))
        snprintf(fail, sizeof(fail),
                 "a healthy rank lost its lease while one etcd member was "
                 "stopped (lost %d, member keys %d, read %d)",
                 lost, n, gst);
    if (!fail[0])
        printf("  watch: RESYNC %.0f ms after the stop\n", tw * 1e3);
    mc_emember_stop(m);
    mc_etcd_watch_stop(w);
    mc_etcd_close(ew);
    mc_etcd_close(e);
    cluster_stop(k);
    if (fail[0]) fail_msg("%s", fail);
}

/* A 3-member etcd cluster loses its leader while the group runs
 * collectives: the ranks' clients fail over, leases and the watch go on
 * (the group stays in view 1, no errors); then a rank is SIGKILLed and the
 * view change commits through the two remaining members (etcd's view key
 * is the survivors' epoch 2). */
static void test_member_killed_midrun(void **state)
{
    (void)state;
    cluster_t *k = cluster_start(3);
    int leader = -1;
    double t0 = now_s();
    while (leader < 0 && now_s() - t0 < 10) {
        for (int i = 0; i < 3 && leader < 0; i++)
            if (is_leader(k, i)) leader = i;
        if (leader < 0) usleep(20000);
    }
    if (leader < 0) fail_msg("no etcd leader found");
    em_run_t *r = em_new(k, 3, -1);
    pid_t pid[3];
    em_spawn_all(r, pid);
    int at_kill = em_steps_min(r, 0x7);
    member_kill(k, leader);
    printf("  killed etcd member %d (the leader) at step %d\n", leader,
           at_kill);
    /* longer than the ranks' lease TTL (1 s): their keepalives must have
     * reached the new leader, or the survivors would see expired leases */
    usleep(2500000);
    em_wait_steps(r, 0x7, em_steps_min(r, 0x7) + 20, 20);
    for (int p = 0; p < 3; p++)
        assert_int_equal(atomic_load(&r->sh->final_epoch[p]), 1);
    printf("  the group ran %d steps in view 1 across the leader change\n",
           em_steps_min(r, 0x7) - at_kill);
    kill(pid[2], SIGKILL);
    waitpid(pid[2], NULL, 0);
    t0 = now_s();
    while (atomic_load(&r->sh->final_epoch[0]) < 2 ||
           atomic_load(&r->sh->final_epoch[1]) < 2) {
        if (now_s() - t0 > 20) fail_msg("the survivors did not reach view 2");
        usleep(1000);
    }
    em_wait_steps(r, 0x3, em_steps_min(r, 0x3) + 20, 20);
    atomic_store(&r->sh->quit, 1);
    pid_t rest[2] = {pid[0], pid[1]};
    em_reap(rest, 2, 30);
    assert_int_equal(atomic_load(&r->sh->errors), 0);
    assert_int_equal(atomic_load(&r->sh->final_epoch[0]), 2);
    assert_int_equal(atomic_load(&r->sh->final_epoch[1]), 2);
    /* etcd (the two members left) holds the survivors' view */
    mc_etcd_t *e = client(k->endpoints, 2000);
    mc_etcd_kv_t *kvs;
    int n;
    assert_int_equal(mc_etcd_get(e, "/mooncake/", 1, &kvs, &n, NULL), MC_OK);
    int found = 0;
    for (int i = 0; i < n; i++) {
        if (!is_view_key(kvs[i].key)) continue;
        found = 1;
        assert_int_equal(strncmp(kvs[i].val, "2 ", 2), 0);
        assert_int_equal(strcmp((char *)kvs[i].val + kvs[i].vlen - 3, "110"),
                         0);
    }
    assert_true(found);
    mc_etcd_kvs_free(kvs, n);
    free(kvs);
    mc_etcd_close(e);
    em_free(r);
    cluster_stop(k);
}

/* Count keys under the communicators' prefix whose path holds `part`. */
static int count_keys(mc_etcd_t *e, const char *part)
{
    mc_etcd_kv_t *kvs;
    int n, c = 0;
    if (mc_etcd_get(e, "/mooncake/", 1, &kvs, &n, NULL) != MC_OK) return -1;
    for (int i = 0; i < n; i++)
        c += strstr(kvs[i].key, part) != NULL;
    mc_etcd_kvs_free(kvs, n);
    free(kvs);
    return c;
}

typedef struct {
    char dir[256];
    char endpoints[256];
} jr_arg_t;

/* A joiner for slot 1, which is active: it waits (never admitted). */
static int jr_joiner(const jr_arg_t *a)
{
    mc_store_h store;
    if (mc_store_file_create(a->dir, &store) != MC_OK) return 1;
    mc_comm_config_t cfg;
    mc_comm_config_init(&cfg);
    cfg.transport = MC_TRANSPORT_SHM;
    cfg.init_timeout_ms = 60000;
    cfg.etcd_endpoints = a->endpoints;
    cfg.etcd_ttl_s = 1;
    cfg.join = 1;
    mc_comm_h c;
    mc_status_t st = mc_comm_create(1, 3, store, &cfg, &c);
    mc_store_destroy(store);
    return st == MC_OK ? 0 : 2;
}

/* Joins through etcd: a joiner registers a leased key under the
 * communicator's joins/ (not a request in the bootstrap store). One that
 * waits for a slot whose process is alive is never admitted; SIGKILLed
 * while it waits, its registration goes with its lease and the group is
 * untouched. (Admission through etcd is exercised by test_rejoin in etcd
 * mode and test_partition.) */
static void test_join_registration(void **state)
{
    (void)state;
    cluster_t *k = cluster_start(1);
    em_run_t *r = em_new(k, 3, -1);
    pid_t pid[3];
    em_spawn_all(r, pid);
    jr_arg_t a;
    snprintf(a.dir, sizeof(a.dir), "%s", r->dir);
    snprintf(a.endpoints, sizeof(a.endpoints), "%s", k->endpoints);
    fflush(NULL);
    pid_t j = fork();
    if (j == 0) {
        alarm(90);
        _exit(jr_joiner(&a));
    }
    mc_etcd_t *e = client(k->endpoints, 2000);
    double t0 = now_s();
    while (count_keys(e, "/joins/1/") != 1) {
        if (now_s() - t0 > 20) fail_msg("the joiner's registration never "
                                        "appeared in etcd");
        usleep(10000);
    }
    usleep(500000);
    kill(j, SIGKILL);
    waitpid(j, NULL, 0);
    double tk = now_s();
    while (count_keys(e, "/joins/") != 0) {
        if (now_s() - tk > 5) fail_msg("the dead joiner's registration stayed");
        usleep(10000);
    }
    printf("  a dead joiner's registration went %.0f ms after the kill "
           "(lease TTL 1 s)\n",
           (now_s() - tk) * 1e3);
    em_wait_steps(r, 0x7, em_steps_min(r, 0x7) + 20, 20);
    atomic_store(&r->sh->quit, 1);
    em_reap(pid, 3, 30);
    assert_int_equal(atomic_load(&r->sh->errors), 0);
    for (int p = 0; p < 3; p++)
        assert_int_equal(atomic_load(&r->sh->final_epoch[p]), 1);
    mc_etcd_close(e);
    em_free(r);
    cluster_stop(k);
}

int main(void)
{
    const struct CMUnitTest one[] = {
        cmocka_unit_test(test_kv),
        cmocka_unit_test(test_txn),
        cmocka_unit_test(test_lease_and_watch),
        cmocka_unit_test(test_store),
        cmocka_unit_test(test_unreachable),
        cmocka_unit_test(test_txn_not_resent),
        cmocka_unit_test(test_member_stop),
        cmocka_unit_test(test_join_registration),
        cmocka_unit_test(test_watch_one_revision),
        cmocka_unit_test(test_watch_compacted),
    };
    const struct CMUnitTest three[] = {
        cmocka_unit_test(test_failover),
        cmocka_unit_test(test_etcd_outage),
        cmocka_unit_test(test_view_race),
        cmocka_unit_test(test_view_skip),
        cmocka_unit_test(test_member_killed_midrun),
        cmocka_unit_test(test_stopped_member),
    };
    int rc = cmocka_run_group_tests_name("etcd, one member", one, setup_one,
                                         teardown_one);
    rc += cmocka_run_group_tests_name("etcd, own clusters", three, NULL, NULL);
    return rc;
}
