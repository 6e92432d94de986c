/*
 * Rejoin at the transport level: a slot's process is replaced and the
 * survivors add_peer() the new incarnation, over tcp and over shm. Real
 * forked processes drive the transports through their vtable the way the
 * engine does (spin on progress, sleep in wait). Every byte received is
 * checked against a pattern computed from (source, destination, channel,
 * round), so nothing of an old incarnation's streams can pass unnoticed.
 *
 * Processes coordinate through the file store; the test process forks each
 * replacement when a survivor asks for it ("spawn/<incarnation>") and
 * reaps everything within a deadline.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <glob.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mc_log.h"
#include "tests_common.h"
#include "transport/transport.h"

#define T_TIMEOUT_MS 20000
#define T_BIG ((size_t)16 << 20) /* with the replaced slot */
#define T_MID ((size_t)1 << 20)  /* among survivors */
#define T_NSMALL 400             /* small frames per stream and direction */
#define T_PROCS 16

/* Set in the test process before forking; the children inherit it. */
static const mc_tl_ops_t *ops;
static char *g_dir;
static uint64_t g_uid;

/* ------------------------------------------------------------------------ */
/* patterns                                                                 */
/* ------------------------------------------------------------------------ */

static uint64_t t_word(uint64_t seed, uint64_t j)
{
    uint64_t v =
        (j + 1) * 0x9E3779B97F4A7C15ull ^ (seed + 1) * 0xD1B54A32D192ED03ull;
    v ^= v >> 29;
    v *= 0xBF58476D1CE4E5B9ull;
    return v ^ (v >> 32);
}

static void t_fill(void *buf, size_t len, uint64_t seed)
{
    uint8_t *b = buf;
    for (size_t i = 0; i < len; i += 8) {
        uint64_t w = t_word(seed, i / 8);
        memcpy(b + i, &w, len - i < 8 ? len - i : 8);
    }
}

static int t_ok(const void *buf, size_t len, uint64_t seed)
{
    const uint8_t *b = buf;
    for (size_t i = 0; i < len; i += 8) {
        uint64_t w = t_word(seed, i / 8);
        if (memcmp(b + i, &w, len - i < 8 ? len - i : 8) != 0) return 0;
    }
    return 1;
}

/* round: the incarnation of the replaced slot's process in that round */
static uint64_t t_seed(int src, int dst, int ch, uint64_t round, int small)
{
    return ((uint64_t)src << 48) ^ ((uint64_t)dst << 32) ^
           ((uint64_t)ch << 24) ^ (round << 8) ^ (uint64_t)small;
}

static size_t t_small_len(int i)
{
    return (size_t)((i * 37) % 257); /* 0 included */
}

/* ------------------------------------------------------------------------ */
/* a rank process                                                           */
/* ------------------------------------------------------------------------ */

typedef struct t_rank {
    int rank, size;
    uint64_t inc;
    mc_store_h store;
    mc_tl_t *tl;
} t_rank_t;

static int t_store(t_rank_t *r, int rank)
{
    memset(r, 0, sizeof(*r));
    r->rank = rank;
    if (mc_store_file_create(g_dir, &r->store) != MC_OK)
        return MC_TFAIL(rank, "store: %s", mc_last_error());
    return 0;
}

/* Create + connect slot `rank` as incarnation inc, with the given peers
 * (bit r of mask) and their incarnations (NULL: all 0). */
static mc_status_t t_open(t_rank_t *r, int size, uint64_t inc, unsigned mask,
                          const uint64_t *incs, int64_t timeout_ms)
{
    uint8_t peers[32] = {0};
    for (int i = 0; i < size; i++)
        peers[i] = (mask >> i) & 1;
    r->size = size;
    r->inc = inc;
    mc_tl_params_t p = {.rank = r->rank,
                        .size = size,
                        .store = r->store,
                        .uid = g_uid,
                        .peers = peers,
                        .incarnation = inc,
                        .peer_incarnation = incs,
                        .timeout_ms = timeout_ms};
    mc_status_t st = ops->create(&p, &r->tl);
    if (st != MC_OK) return st;
    st = ops->connect(r->tl);
    if (st != MC_OK) {
        ops->destroy(r->tl);
        r->tl = NULL;
    }
    return st;
}

static void t_close(t_rank_t *r)
{
    if (r->tl) ops->destroy(r->tl);
    mc_store_destroy(r->store);
}

static int t_set(t_rank_t *r, const char *key, const char *val)
{
    if (mc_store_set(r->store, key, val, strlen(val)) != MC_OK)
        return MC_TFAIL(r->rank, "store set %s: %s", key, mc_last_error());
    return 0;
}

/* Wait for a key while keeping the transport going. */
static int t_get_driving(t_rank_t *r, const char *key, char *val, size_t cap,
                         int64_t timeout_ms)
{
    int64_t deadline = mc_now_us() + timeout_ms * 1000;
    for (;;) {
        int exists = 0;
        if (mc_store_check(r->store, key, &exists) != MC_OK)
            return MC_TFAIL(r->rank, "store check: %s", mc_last_error());
        if (exists) break;
        if (mc_now_us() > deadline)
            return MC_TFAIL(r->rank, "key %s never appeared", key);
        if (r->tl) {
            ops->progress(r->tl);
            ops->wait(r->tl, 2000);
        } else {
            usleep(2000);
        }
    }
    size_t len = 0;
    memset(val, 0, cap);
    if (mc_store_get(r->store, key, 0, val, cap - 1, &len) != MC_OK)
        return MC_TFAIL(r->rank, "store get %s: %s", key, mc_last_error());
    return 0;
}

/* Engine-style: spin on progress, sleep in wait when idle, until
 * peer_status(peer) is no longer `from`. Returns the new status, or
 * MC_INPROGRESS + 100 at the deadline. */
static int t_status_leaves(t_rank_t *r, int peer, mc_status_t from,
                           int64_t timeout_ms)
{
    int64_t deadline = mc_now_us() + timeout_ms * 1000;
    for (;;) {
        mc_status_t st = ops->peer_status(r->tl, peer);
        if (st != from) return st;
        if (mc_now_us() > deadline) return MC_INPROGRESS + 100;
        if (ops->progress(r->tl) == 0) ops->wait(r->tl, 1000);
    }
}

static int t_drive(t_rank_t *r, mc_xfer_t **xs, int n, int64_t timeout_ms)
{
    int64_t deadline = mc_now_us() + timeout_ms * 1000;
    int idle = 0;
    for (;;) {
        int left = 0;
        for (int i = 0; i < n; i++)
            left += __atomic_load_n(&xs[i]->status, __ATOMIC_ACQUIRE) ==
                    MC_INPROGRESS;
        if (!left) return 0;
        if (ops->progress(r->tl) > 0) {
            idle = 0;
            continue;
        }
        if (++idle < 32) continue;
        idle = 0;
        if (mc_now_us() > deadline) return -1;
        ops->wait(r->tl, 100000);
    }
}

/* A receive needing bytes from an ended stream fails: refused at post, or
 * completed with MC_ERR_PEER_FAILED. */
static int t_recv_fails(t_rank_t *r, int peer, int ch)
{
    uint8_t b[8];
    mc_xfer_t x = {.buf = b, .len = sizeof(b), .status = 12345};
    mc_xfer_t *xp = &x;
    mc_status_t st = ops->post_recv(r->tl, peer, ch, &x);
    if (st != MC_OK) return st == MC_ERR_PEER_FAILED && x.status == 12345;
    if (t_drive(r, &xp, 1, 5000) != 0) {
        MC_TFAIL(r->rank, "receive from ended stream still posted");
        _exit(1); /* x is on our stack and still posted */
    }
    return x.status == MC_ERR_PEER_FAILED;
}

/*
 * Both directions on both channels with every peer in `peers`: one bulk
 * transfer (T_BIG with `slot`, T_MID otherwise) then T_NSMALL small frames
 * (zero-length ones included), all posted before any progress. Round
 * `round` salts the patterns. Everything is checked.
 */
static int t_exchange(t_rank_t *r, const int *peers, int np, int slot,
                      uint64_t round)
{
    int per = 2 + 2 * T_NSMALL; /* per (peer, channel) */
    int n = np * MC_NUM_CHANNELS * per;
    mc_xfer_t *xs = calloc((size_t)n, sizeof(*xs));
    mc_xfer_t **xp = calloc((size_t)n, sizeof(*xp));
    uint8_t **bufs = calloc((size_t)np * MC_NUM_CHANNELS * 4, sizeof(*bufs));
    size_t small_total = 0;
    for (int i = 0; i < T_NSMALL; i++)
        small_total += t_small_len(i);
    int rc = 0;
    if (!xs || !xp || !bufs) {
        rc = MC_TFAIL(r->rank, "calloc");
        goto out;
    }
    int k = 0;
    for (int pi = 0; pi < np; pi++) {
        int p = peers[pi];
        size_t big = p == slot || r->rank == slot ? T_BIG : T_MID;
        for (int ch = 0; ch < MC_NUM_CHANNELS; ch++) {
            uint8_t **b = &bufs[(pi * MC_NUM_CHANNELS + ch) * 4];
            b[0] = malloc(big);         /* big out */
            b[1] = calloc(1, big);      /* big in */
            b[2] = malloc(small_total); /* small out */
            b[3] = calloc(1, small_total + 1);
            if (!b[0] || !b[1] || !b[2] || !b[3]) {
                rc = MC_TFAIL(r->rank, "malloc");
                goto out;
            }
            t_fill(b[0], big, t_seed(r->rank, p, ch, round, 0));
            t_fill(b[2], small_total, t_seed(r->rank, p, ch, round, 1));
            mc_xfer_t *s = &xs[k++], *v = &xs[k++];
            *s = (mc_xfer_t){.buf = b[0], .len = big};
            *v = (mc_xfer_t){.buf = b[1], .len = big};
            if (ops->post_send(r->tl, p, ch, s) != MC_OK ||
                ops->post_recv(r->tl, p, ch, v) != MC_OK) {
                rc = MC_TFAIL(r->rank, "post to %d: %s", p, mc_last_error());
                goto out;
            }
            size_t off = 0;
            for (int i = 0; i < T_NSMALL; i++) {
                size_t len = t_small_len(i);
                s = &xs[k++];
                v = &xs[k++];
                *s = (mc_xfer_t){.buf = b[2] + off, .len = len};
                *v = (mc_xfer_t){.buf = b[3] + off, .len = len};
                off += len;
                if (ops->post_send(r->tl, p, ch, s) != MC_OK ||
                    ops->post_recv(r->tl, p, ch, v) != MC_OK) {
                    rc = MC_TFAIL(r->rank, "post small to %d: %s", p,
                                  mc_last_error());
                    goto out;
                }
            }
        }
    }
    for (int i = 0; i < n; i++)
        xp[i] = &xs[i];
    if (t_drive(r, xp, n, T_TIMEOUT_MS) != 0) {
        MC_TFAIL(r->rank, "round %" PRIu64 ": exchange did not finish", round);
        _exit(1); /* transfers still posted into our buffers */
    }
    for (int i = 0; i < n && !rc; i++)
        if (xs[i].status != MC_OK)
            rc = MC_TFAIL(r->rank, "round %" PRIu64 ": transfer %d: %s", round,
                          i, mc_status_str(xs[i].status));
    for (int pi = 0; pi < np && !rc; pi++) {
        int p = peers[pi];
        size_t big = p == slot || r->rank == slot ? T_BIG : T_MID;
        for (int ch = 0; ch < MC_NUM_CHANNELS && !rc; ch++) {
            uint8_t **b = &bufs[(pi * MC_NUM_CHANNELS + ch) * 4];
            if (!t_ok(b[1], big, t_seed(p, r->rank, ch, round, 0)))
                rc = MC_TFAIL(r->rank,
                              "round %" PRIu64 ": bulk from %d ch %d wrong",
                              round, p, ch);
            else if (!t_ok(b[3], small_total,
                           t_seed(p, r->rank, ch, round, 1)) ||
                     b[3][small_total] != 0)
                rc = MC_TFAIL(r->rank,
                              "round %" PRIu64 ": frames from %d ch %d wrong",
                              round, p, ch);
        }
    }
out:
    if (bufs)
        for (int i = 0; i < np * MC_NUM_CHANNELS * 4; i++)
            free(bufs[i]);
    free(bufs);
    free(xp);
    free(xs);
    return rc;
}

/* A replaced process: wait to be killed (bounded). */
static int t_await_kill(int rank)
{
    for (int i = 0; i < 600; i++)
        usleep(100000);
    return MC_TFAIL(rank, "was never killed");
}

static int t_publish_pid(t_rank_t *r, uint64_t inc)
{
    char key[64], val[32];
    snprintf(key, sizeof(key), "pid/%d.%" PRIu64, r->rank, inc);
    snprintf(val, sizeof(val), "%d", (int)getpid());
    return t_set(r, key, val);
}

/* ------------------------------------------------------------------------ */
/* the test process: fork, fork replacements on request, reap               */
/* ------------------------------------------------------------------------ */

typedef struct t_proc {
    pid_t pid;
    int expect_kill; /* must end by SIGKILL (a replaced process) */
    char name[32];
} t_proc_t;

typedef struct t_procs {
    t_proc_t p[T_PROCS];
    int n;
    mc_store_h store;
    int64_t deadline_us;
} t_procs_t;

typedef int (*t_body_fn)(int rank, uint64_t inc, void *arg);

static void t_fork(t_procs_t *ps, const char *name, int expect_kill,
                   t_body_fn fn, int rank, uint64_t inc, void *arg)
{
    assert_true(ps->n < T_PROCS);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int rc = fn(rank, inc, arg);
        fflush(NULL);
        _exit(rc ? 1 : 0);
    }
    t_proc_t *p = &ps->p[ps->n++];
    p->pid = pid;
    p->expect_kill = expect_kill;
    snprintf(p->name, sizeof(p->name), "%s", name);
}

/* Reap everything by the deadline; returns the number of failures. */
static int t_reap(t_procs_t *ps)
{
    int failed = 0, left = ps->n;
    while (left > 0) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid > 0) {
            for (int i = 0; i < ps->n; i++) {
                t_proc_t *p = &ps->p[i];
                if (p->pid != pid) continue;
                p->pid = 0;
                left--;
                int ok =
                    p->expect_kill
                        ? WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL
                        : WIFEXITED(status) && WEXITSTATUS(status) == 0;
                if (!ok) {
                    failed++;
                    fprintf(stderr, "%s: %s %d\n", p->name,
                            WIFSIGNALED(status) ? "killed by signal"
                                                : "exited with",
                            WIFSIGNALED(status) ? WTERMSIG(status)
                                                : WEXITSTATUS(status));
                }
            }
            continue;
        }
        if (mc_now_us() > ps->deadline_us) {
            for (int i = 0; i < ps->n; i++) {
                if (!ps->p[i].pid) continue;
                fprintf(stderr, "%s: timed out, killing\n", ps->p[i].name);
                kill(ps->p[i].pid, SIGKILL);
                waitpid(ps->p[i].pid, NULL, 0);
                ps->p[i].pid = 0;
                failed++;
            }
            break;
        }
        usleep(2000);
    }
    return failed;
}

/* Wait for key (a request from a survivor); 0 if it came. */
static int t_parent_wait(t_procs_t *ps, const char *key)
{
    char v[16];
    size_t len;
    int64_t left = (ps->deadline_us - mc_now_us()) / 1000;
    return mc_store_get(ps->store, key, left > 0 ? left : 0, v, sizeof(v),
                        &len) == MC_OK
               ? 0
               : -1;
}

static size_t t_segments_left(void)
{
    char pat[64];
    glob_t g;
    snprintf(pat, sizeof(pat), "/dev/shm/mc-%016" PRIx64 "-*", g_uid);
    if (glob(pat, 0, NULL, &g) != 0) return 0;
    size_t n = g.gl_pathc;
    globfree(&g);
    return n;
}

static void t_begin(t_procs_t *ps, const mc_tl_ops_t *o, int timeout_s)
{
    ops = o;
    g_dir = mc_test_mkdtemp();
    assert_non_null(g_dir);
    if (getrandom(&g_uid, sizeof(g_uid), 0) != (ssize_t)sizeof(g_uid))
        g_uid = (uint64_t)getpid() << 32 ^ (uint64_t)mc_now_us();
    memset(ps, 0, sizeof(*ps));
    assert_int_equal(mc_store_file_create(g_dir, &ps->store), MC_OK);
    ps->deadline_us = mc_now_us() + (int64_t)timeout_s * 1000000;
}

static void t_end(t_procs_t *ps, int failed)
{
    failed += t_reap(ps);
    mc_store_destroy(ps->store);
    mc_test_rmtree(g_dir);
    free(g_dir);
    g_dir = NULL;
    assert_int_equal(failed, 0);
    assert_int_equal(t_segments_left(), 0);
}

/* ------------------------------------------------------------------------ */
/* Kill and replace slot 1 three times while ranks 0 and 2 keep exchanging
 * data with each other: each survivor sees the end of slot 1's streams,
 * add_peer()s the new incarnation and posts to it at once (the posts wait
 * for the connection), and the new process exchanges 16 MiB and many
 * small frames both ways on both channels with both survivors. Rank 0
 * accepts slot 1's connections and rank 2 connects to it (tcp); for shm
 * each replacement holds the rings of both pairs. */

#define T_ROUNDS 3

static int body_slot1(int rank, uint64_t inc, void *arg)
{
    (void)arg;
    t_rank_t r;
    if (t_store(&r, rank)) return 1;
    if (t_publish_pid(&r, inc)) return 1;
    uint64_t incs[3] = {0, inc, 0};
    mc_status_t st = t_open(&r, 3, inc, 0x5, incs, T_TIMEOUT_MS);
    if (st != MC_OK)
        return MC_TFAIL(rank, "incarnation %" PRIu64 ": open: %s", inc,
                        mc_last_error());
    int peers[2] = {0, 2};
    int rc = t_exchange(&r, peers, 2, 1, inc);
    char key[32], val[8];
    snprintf(key, sizeof(key), "done/%" PRIu64, inc);
    if (!rc) rc = t_set(&r, key, "1");
    if (rc || inc < T_ROUNDS) return rc ? rc : t_await_kill(rank);
    /* the last one leaves once both survivors checked on it */
    for (int s = 0; s <= 2 && !rc; s += 2) {
        snprintf(key, sizeof(key), "fin/%" PRIu64 "/%d", inc, s);
        rc = t_get_driving(&r, key, val, sizeof(val), 30000);
    }
    t_close(&r);
    return rc;
}

static int body_survivor(int rank, uint64_t inc, void *arg)
{
    (void)inc, (void)arg;
    t_rank_t r;
    if (t_store(&r, rank)) return 1;
    if (t_open(&r, 3, 0, 0x7 & ~(1u << rank), NULL, T_TIMEOUT_MS) != MC_OK)
        return MC_TFAIL(rank, "open: %s", mc_last_error());
    int other = 2 - rank;
    int peers[2] = {other, 1};
    int rc = t_exchange(&r, peers, 2, 1, 0);
    char key[32], val[32];
    if (!rc) rc = t_set(&r, rank ? "fin/0/2" : "fin/0/0", "1");
    for (uint64_t k = 1; k <= T_ROUNDS && !rc; k++) {
        if (rank == 0) {
            /* the old incarnation and rank 2 are both through round k-1 */
            snprintf(key, sizeof(key), "done/%" PRIu64, k - 1);
            if ((rc = t_get_driving(&r, key, val, sizeof(val), 30000))) break;
            snprintf(key, sizeof(key), "fin/%" PRIu64 "/2", k - 1);
            if ((rc = t_get_driving(&r, key, val, sizeof(val), 30000))) break;
            snprintf(key, sizeof(key), "pid/1.%" PRIu64, k - 1);
            if ((rc = t_get_driving(&r, key, val, sizeof(val), 30000))) break;
            if (kill((pid_t)atoi(val), SIGKILL) != 0) {
                rc = MC_TFAIL(rank, "kill %s: %s", val, strerror(errno));
                break;
            }
        }
        /* the end of the old incarnation's streams */
        mc_status_t st = t_status_leaves(&r, 1, MC_OK, 10000);
        if (st != MC_ERR_PEER_FAILED) {
            rc = MC_TFAIL(rank, "round %" PRIu64 ": peer 1 status %d", k, st);
            break;
        }
        for (int ch = 0; ch < MC_NUM_CHANNELS && !rc; ch++)
            if (!t_recv_fails(&r, 1, ch))
                rc = MC_TFAIL(rank, "round %" PRIu64 ": ch %d did not end", k,
                              ch);
        uint8_t b[4] = {0};
        mc_xfer_t x = {.buf = b, .len = sizeof(b)};
        if (!rc &&
            ops->post_send(r.tl, 1, MC_CH_COLL, &x) != MC_ERR_PEER_FAILED)
            rc = MC_TFAIL(rank, "send to the dead peer was accepted");
        if (rc) break;
        if (rank == 0) {
            snprintf(key, sizeof(key), "spawn/%" PRIu64, k);
            if ((rc = t_set(&r, key, "1"))) break;
        }
        st = ops->add_peer(r.tl, 1, k, T_TIMEOUT_MS);
        if (st != MC_OK) {
            rc = MC_TFAIL(rank, "add_peer: %s", mc_last_error());
            break;
        }
        st = ops->peer_status(r.tl, 1);
        if (st != MC_INPROGRESS && st != MC_OK) {
            rc = MC_TFAIL(rank, "peer_status after add_peer: %d", st);
            break;
        }
        /* posted at once: the ones to slot 1 wait for its connection */
        rc = t_exchange(&r, peers, 2, 1, k);
        if (!rc && (st = ops->peer_status(r.tl, 1)) != MC_OK)
            rc = MC_TFAIL(rank, "peer 1 status %d after the exchange", st);
        snprintf(key, sizeof(key), "fin/%" PRIu64 "/%d", k, rank);
        if (!rc) rc = t_set(&r, key, "1");
    }
    t_close(&r);
    return rc;
}

static void t_replace(const mc_tl_ops_t *o)
{
    t_procs_t ps;
    t_begin(&ps, o, 100);
    t_fork(&ps, "rank 0", 0, body_survivor, 0, 0, NULL);
    t_fork(&ps, "rank 2", 0, body_survivor, 2, 0, NULL);
    t_fork(&ps, "rank 1.0", 1, body_slot1, 1, 0, NULL);
    int failed = 0;
    for (uint64_t k = 1; k <= T_ROUNDS && !failed; k++) {
        char key[32], name[32];
        snprintf(key, sizeof(key), "spawn/%" PRIu64, k);
        snprintf(name, sizeof(name), "rank 1.%" PRIu64, k);
        if (t_parent_wait(&ps, key) != 0) {
            fprintf(stderr, "nobody asked for %s\n", name);
            failed++;
            break;
        }
        t_fork(&ps, name, k < T_ROUNDS, body_slot1, 1, k, NULL);
    }
    if (failed) ps.deadline_us = mc_now_us(); /* kill the rest */
    t_end(&ps, failed);
}

static void test_tcp_replace(void **state)
{
    (void)state;
    t_replace(&mc_tl_tcp_ops);
}

static void test_shm_replace(void **state)
{
    (void)state;
    t_replace(&mc_tl_shm_ops);
}

/* ------------------------------------------------------------------------ */
/* A live process is dropped for a newer one, and a stale process of an
 * older incarnation cannot take its place: the survivor s add_peer()s slot
 * 1 - s as incarnation 2 while incarnation 0 still runs (its receive still
 * posted there fails; incarnation 0 sees the survivor leave: over shm as a
 * failure, over tcp as cut streams of a live peer), then a process
 * claiming incarnation 1 tries to connect and times out, the survivor's
 * add staying in progress, and only then does incarnation 2 come and
 * connect. Run with the survivor as rank 0 and as rank 1 (for tcp, the
 * accepting and the connecting side). */

static int body_evicted(int rank, uint64_t inc, void *arg)
{
    (void)inc, (void)arg;
    t_rank_t r;
    if (t_store(&r, rank)) return 1;
    int s = 1 - rank;
    if (t_open(&r, 2, 0, 1u << s, NULL, T_TIMEOUT_MS) != MC_OK)
        return MC_TFAIL(rank, "open: %s", mc_last_error());
    int rc = t_exchange(&r, &s, 1, rank, 0);
    if (!rc) rc = t_set(&r, "done/0", "1");
    if (ops == &mc_tl_tcp_ops) {
        /* tcp: the survivor that drops us is alive (its listener answers
         * the close check), so its closing is no evidence of death: our
         * streams to it are cut, the peer stays "ok", and a receive posted
         * there waits (the engine's heartbeat and majority rule decide) */
        static uint8_t b[8];
        static mc_xfer_t x;
        char val[16];
        if (!rc) rc = t_get_driving(&r, "spawn/stale", val, sizeof(val), 30000);
        mc_status_t st = rc ? MC_OK : t_status_leaves(&r, s, MC_OK, 400);
        if (!rc && st != MC_INPROGRESS + 100)
            rc = MC_TFAIL(rank, "dropped by a live survivor: status %d", st);
        x = (mc_xfer_t){.buf = b, .len = sizeof(b)};
        if (!rc && ops->post_recv(r.tl, s, MC_CH_P2P, &x) != MC_OK)
            rc = MC_TFAIL(rank, "post_recv: %s", mc_last_error());
        if (!rc) {
            mc_xfer_t *xp = &x;
            (void)t_drive(&r, &xp, 1, 200);
            if (x.status != MC_INPROGRESS)
                rc = MC_TFAIL(rank, "receive from a live survivor ended: %d",
                              x.status);
        }
        t_close(&r); /* takes back x */
        return rc;
    }
    /* the survivor drops us: we see it leave */
    mc_status_t st = rc ? MC_OK : t_status_leaves(&r, s, MC_OK, 15000);
    if (!rc && st != MC_ERR_PEER_FAILED)
        rc = MC_TFAIL(rank, "dropped process: survivor status %d", st);
    for (int ch = 0; ch < MC_NUM_CHANNELS && !rc; ch++)
        if (!t_recv_fails(&r, s, ch))
            rc = MC_TFAIL(rank, "dropped process: ch %d did not end", ch);
    t_close(&r);
    return rc;
}

static int body_stale(int rank, uint64_t inc, void *arg)
{
    (void)arg;
    t_rank_t r;
    if (t_store(&r, rank)) return 1;
    int64_t t0 = mc_now_us();
    mc_status_t st = t_open(&r, 2, inc, 1u << (1 - rank), NULL, 1500);
    int64_t dt = mc_now_us() - t0;
    int rc = 0;
    if (st != MC_ERR_TIMEOUT)
        rc = MC_TFAIL(rank, "stale incarnation %" PRIu64 ": open gave %d", inc,
                      st);
    else if (dt > 5000000)
        rc = MC_TFAIL(rank, "stale connect took %lld us", (long long)dt);
    if (t_set(&r, "stale/done", rc ? "bad" : "ok")) rc = 1;
    t_close(&r);
    return rc;
}

static int body_new(int rank, uint64_t inc, void *arg)
{
    (void)arg;
    t_rank_t r;
    if (t_store(&r, rank)) return 1;
    uint64_t incs[2] = {0, 0};
    int s = 1 - rank;
    if (t_open(&r, 2, inc, 1u << s, incs, T_TIMEOUT_MS) != MC_OK)
        return MC_TFAIL(rank, "open: %s", mc_last_error());
    int rc = t_exchange(&r, &s, 1, rank, inc);
    t_close(&r);
    return rc;
}

static int body_dropper(int rank, uint64_t inc, void *arg)
{
    (void)inc, (void)arg;
    t_rank_t r;
    if (t_store(&r, rank)) return 1;
    int slot = 1 - rank;
    if (t_open(&r, 2, 0, 1u << slot, NULL, T_TIMEOUT_MS) != MC_OK)
        return MC_TFAIL(rank, "open: %s", mc_last_error());
    int rc = t_exchange(&r, &slot, 1, slot, 0);
    char val[16];
    if (!rc) rc = t_get_driving(&r, "done/0", val, sizeof(val), 30000);
    if (rc) goto out;
    /* a receive left posted on the live process's stream */
    uint8_t b[8];
    mc_xfer_t x = {.buf = b, .len = sizeof(b)};
    mc_xfer_t *xp = &x;
    if (ops->post_recv(r.tl, slot, MC_CH_P2P, &x) != MC_OK) {
        rc = MC_TFAIL(rank, "post_recv: %s", mc_last_error());
        goto out;
    }
    ops->progress(r.tl);
    if (x.status != MC_INPROGRESS) {
        rc = MC_TFAIL(rank, "receive completed with %d", x.status);
        goto out;
    }
    if (ops->add_peer(r.tl, slot, 2, 60000) != MC_OK) {
        rc = MC_TFAIL(rank, "add_peer: %s", mc_last_error());
        _exit(1);
    }
    if (t_drive(&r, &xp, 1, 5000) != 0 || x.status != MC_ERR_PEER_FAILED) {
        rc = MC_TFAIL(rank, "the dropped stream's receive: %d", x.status);
        _exit(1);
    }
    /* the stale incarnation comes and goes; we never connect to it */
    if ((rc = t_set(&r, "spawn/stale", "1"))) goto out;
    if ((rc = t_get_driving(&r, "stale/done", val, sizeof(val), 30000)))
        goto out;
    mc_status_t st = ops->peer_status(r.tl, slot);
    if (st != MC_INPROGRESS) {
        rc = MC_TFAIL(rank, "after the stale process: peer status %d", st);
        goto out;
    }
    if (strcmp(val, "ok") != 0) {
        rc = MC_TFAIL(rank, "the stale process was not refused");
        goto out;
    }
    if ((rc = t_set(&r, "spawn/2", "1"))) goto out;
    rc = t_exchange(&r, &slot, 1, slot, 2);
out:
    t_close(&r);
    return rc;
}

static void t_stale(const mc_tl_ops_t *o, int s)
{
    t_procs_t ps;
    t_begin(&ps, o, 90);
    int slot = 1 - s;
    t_fork(&ps, "survivor", 0, body_dropper, s, 0, NULL);
    t_fork(&ps, "incarnation 0", 0, body_evicted, slot, 0, NULL);
    int failed = 0;
    if (t_parent_wait(&ps, "spawn/stale") == 0)
        t_fork(&ps, "stale incarnation 1", 0, body_stale, slot, 1, NULL);
    else
        failed++;
    if (!failed && t_parent_wait(&ps, "spawn/2") == 0)
        t_fork(&ps, "incarnation 2", 0, body_new, slot, 2, NULL);
    else
        failed++;
    if (failed) ps.deadline_us = mc_now_us();
    t_end(&ps, failed);
}

static void test_tcp_stale(void **state)
{
    (void)state;
    t_stale(&mc_tl_tcp_ops, 0);
    t_stale(&mc_tl_tcp_ops, 1);
}

static void test_shm_stale(void **state)
{
    (void)state;
    t_stale(&mc_tl_shm_ops, 0);
    t_stale(&mc_tl_shm_ops, 1);
}

/* ------------------------------------------------------------------------ */
/* Scale-up: ranks 0 and 1 run in a group of 3 slots whose slot 2 was never
 * connected. add_peer with nobody there times out cleanly (a receive posted
 * meanwhile fails with it, later sends are refused); a joiner that
 * published and gave up fails the add at once; then a process takes
 * slot 2 and both members add it while exchanging data with each other.
 * Rank 0 also checks add_peer's argument rules. */

static int body_member(int rank, uint64_t inc, void *arg)
{
    (void)inc, (void)arg;
    t_rank_t r;
    if (t_store(&r, rank)) return 1;
    int other = 1 - rank;
    if (t_open(&r, 3, 0, 1u << other, NULL, T_TIMEOUT_MS) != MC_OK)
        return MC_TFAIL(rank, "open: %s", mc_last_error());
    int rc = t_exchange(&r, &other, 1, -1, 0);
    if (rc) goto out;
    uint8_t b[16];
    mc_xfer_t x = {.buf = b, .len = sizeof(b)};
    mc_xfer_t *xp = &x;
    if (ops->post_recv(r.tl, 2, MC_CH_COLL, &x) != MC_ERR_INVALID_ARG) {
        rc = MC_TFAIL(rank, "post to a slot never connected was accepted");
        goto out;
    }
    if (rank == 0) {
        /* only newer processes can be added, by a connected transport */
        mc_status_t bad[] = {
            ops->add_peer(r.tl, 0, 1, 100), ops->add_peer(r.tl, 2, 0, 100),
            ops->add_peer(r.tl, 3, 1, 100), ops->add_peer(r.tl, -1, 1, 100),
            ops->add_peer(NULL, 2, 1, 100)};
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
            if (bad[i] != MC_ERR_INVALID_ARG)
                rc = MC_TFAIL(rank, "bad add_peer %zu gave %d", i, bad[i]);
        if (rc) goto out;
    }
    /* nobody takes slot 2 */
    int64_t t0 = mc_now_us();
    if (ops->add_peer(r.tl, 2, 5, 700) != MC_OK) {
        rc = MC_TFAIL(rank, "add_peer: %s", mc_last_error());
        goto out;
    }
    if (ops->post_recv(r.tl, 2, MC_CH_COLL, &x) != MC_OK) {
        rc = MC_TFAIL(rank, "post to a peer being added: %s", mc_last_error());
        goto out;
    }
    mc_status_t st = t_status_leaves(&r, 2, MC_INPROGRESS, 10000);
    int64_t dt = mc_now_us() - t0;
    if (st != MC_ERR_TIMEOUT || dt < 650000 || dt > 5000000) {
        rc = MC_TFAIL(rank, "add without a joiner: status %d after %lld us", st,
                      (long long)dt);
        _exit(1);
    }
    if (t_drive(&r, &xp, 1, 5000) != 0 || x.status != MC_ERR_PEER_FAILED) {
        rc = MC_TFAIL(rank, "receive posted during the add: %d", x.status);
        _exit(1);
    }
    if (ops->post_send(r.tl, 2, MC_CH_P2P, &x) != MC_ERR_PEER_FAILED) {
        rc = MC_TFAIL(rank, "send after a failed add was accepted");
        goto out;
    }
    /* a joiner that published and gave up (its transport destroyed before
     * connect, the process still alive): the add fails at once, not at
     * its timeout */
    if (rank == 0 && (rc = t_set(&r, "spawn/6", "1"))) goto out;
    char v[8];
    if ((rc = t_get_driving(&r, "gaveup/6", v, sizeof(v), T_TIMEOUT_MS)))
        goto out;
    t0 = mc_now_us();
    if (ops->add_peer(r.tl, 2, 6, T_TIMEOUT_MS) != MC_OK) {
        rc = MC_TFAIL(rank, "add_peer: %s", mc_last_error());
        goto out;
    }
    st = t_status_leaves(&r, 2, MC_INPROGRESS, T_TIMEOUT_MS);
    dt = mc_now_us() - t0;
    if (st != MC_ERR_PEER_FAILED || dt > 3000000) {
        rc = MC_TFAIL(rank, "add of a joiner that gave up: status %d after "
                            "%lld us (%s)",
                      st, (long long)dt, mc_last_error());
        _exit(1);
    }
    if ((rc = t_set(&r, rank ? "checked/6/1" : "checked/6/0", "1"))) goto out;
    /* now someone does (a retry with a newer incarnation) */
    if (rank == 0 && (rc = t_set(&r, "spawn/7", "1"))) goto out;
    if (ops->add_peer(r.tl, 2, 7, T_TIMEOUT_MS) != MC_OK) {
        rc = MC_TFAIL(rank, "add_peer: %s", mc_last_error());
        goto out;
    }
    int peers[2] = {other, 2};
    rc = t_exchange(&r, peers, 2, 2, 7);
out:
    t_close(&r);
    return rc;
}

static int body_scaleup(int rank, uint64_t inc, void *arg)
{
    (void)arg;
    t_rank_t r;
    if (t_store(&r, rank)) return 1;
    uint64_t incs[3] = {0, 0, 0};
    if (t_open(&r, 3, inc, 0x3, incs, T_TIMEOUT_MS) != MC_OK)
        return MC_TFAIL(rank, "open: %s", mc_last_error());
    int peers[2] = {0, 1};
    int rc = t_exchange(&r, peers, 2, 2, inc);
    t_close(&r);
    return rc;
}

/* Slot 2's joiner that gives up: it publishes (creates its transport),
 * destroys it before connecting, and stays alive until both members saw
 * their add fail. */
static int body_gaveup(int rank, uint64_t inc, void *arg)
{
    (void)arg;
    t_rank_t r;
    if (t_store(&r, rank)) return 1;
    uint8_t peers[3] = {1, 1, 0};
    uint64_t incs[3] = {0, 0, 0};
    mc_tl_params_t p = {.rank = rank,
                        .size = 3,
                        .store = r.store,
                        .uid = g_uid,
                        .peers = peers,
                        .incarnation = inc,
                        .peer_incarnation = incs,
                        .timeout_ms = T_TIMEOUT_MS};
    int rc = 0;
    if (ops->create(&p, &r.tl) != MC_OK) {
        rc = MC_TFAIL(rank, "create: %s", mc_last_error());
        goto out;
    }
    ops->destroy(r.tl);
    r.tl = NULL;
    char v[8];
    if ((rc = t_set(&r, "gaveup/6", "1")) ||
        (rc = t_get_driving(&r, "checked/6/0", v, sizeof(v), T_TIMEOUT_MS)) ||
        (rc = t_get_driving(&r, "checked/6/1", v, sizeof(v), T_TIMEOUT_MS)))
        goto out;
out:
    t_close(&r);
    return rc;
}

static void t_scaleup(const mc_tl_ops_t *o)
{
    t_procs_t ps;
    t_begin(&ps, o, 60);
    t_fork(&ps, "rank 0", 0, body_member, 0, 0, NULL);
    t_fork(&ps, "rank 1", 0, body_member, 1, 0, NULL);
    int failed = 0;
    if (t_parent_wait(&ps, "spawn/6") == 0)
        t_fork(&ps, "rank 2.6 (gives up)", 0, body_gaveup, 2, 6, NULL);
    else
        failed++;
    if (!failed && t_parent_wait(&ps, "spawn/7") == 0)
        t_fork(&ps, "rank 2.7", 0, body_scaleup, 2, 7, NULL);
    else
        failed++;
    if (failed) ps.deadline_us = mc_now_us();
    t_end(&ps, failed);
}

static void test_tcp_scaleup(void **state)
{
    (void)state;
    t_scaleup(&mc_tl_tcp_ops);
}

static void test_shm_scaleup(void **state)
{
    (void)state;
    t_scaleup(&mc_tl_shm_ops);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tcp_scaleup), cmocka_unit_test(test_shm_scaleup),
        cmocka_unit_test(test_tcp_stale),   cmocka_unit_test(test_shm_stale),
        cmocka_unit_test(test_tcp_replace), cmocka_unit_test(test_shm_replace),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
