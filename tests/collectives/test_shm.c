/*
 * Shared-memory transport (collectives/transport/shm), tested through its
 * vtable with real forked rank processes over a file store.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <glob.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "mc_log.h"
#include "tests_common.h"
#include "transport/transport.h"

static const mc_tl_ops_t *ops = &mc_tl_shm_ops;

/* ------------------------------------------------------------------------ */
/* harness                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct t_env {
    char *dir;          /* file store */
    uint64_t uid;       /* communicator id, names the segments */
    int64_t ring_bytes; /* MOONCAKE_SHM_RING_BYTES in the ranks, 0: unset */
    int64_t timeout_ms; /* create + connect */
} t_env_t;

typedef struct t_rank {
    int rank, size;
    mc_store_h store;
    mc_tl_t *tl;
} t_rank_t;

static uint64_t t_uid(void)
{
    uint64_t u = 0;
    if (getrandom(&u, sizeof(u), 0) != (ssize_t)sizeof(u))
        u = (uint64_t)getpid() * 0x9E3779B97F4A7C15ull ^ (uint64_t)mc_now_us();
    return u;
}

static void t_env_init(t_env_t *e)
{
    memset(e, 0, sizeof(*e));
    e->dir = mc_test_mkdtemp();
    assert_non_null(e->dir);
    e->uid = t_uid();
    e->timeout_ms = 30000;
}

/* Number of /dev/shm entries left by this communicator. */
static size_t t_segments_left(uint64_t uid)
{
    char pat[64];
    glob_t g;
    snprintf(pat, sizeof(pat), "/dev/shm/mc-%016" PRIx64 "-*", uid);
    if (glob(pat, 0, NULL, &g) != 0) return 0;
    size_t n = g.gl_pathc;
    globfree(&g);
    return n;
}

static void t_env_fini(t_env_t *e)
{
    assert_int_equal(t_segments_left(e->uid), 0);
    mc_test_rmtree(e->dir);
    free(e->dir);
}

/* In a rank process: store, create, connect with every other rank. */
static int t_setup(const t_env_t *e, int rank, int size, t_rank_t *r)
{
    memset(r, 0, sizeof(*r));
    r->rank = rank;
    r->size = size;
    if (e->ring_bytes) {
        char v[32];
        snprintf(v, sizeof(v), "%" PRId64, e->ring_bytes);
        setenv("MOONCAKE_SHM_RING_BYTES", v, 1);
    }
    if (mc_store_file_create(e->dir, &r->store) != MC_OK)
        return MC_TFAIL(rank, "store: %s", mc_last_error());
    uint8_t *peers = calloc((size_t)size, 1);
    if (!peers) return MC_TFAIL(rank, "calloc");
    for (int i = 0; i < size; i++)
        peers[i] = i != rank;
    mc_tl_params_t p = {.rank = rank,
                        .size = size,
                        .store = r->store,
                        .uid = e->uid,
                        .peers = peers,
                        .timeout_ms = e->timeout_ms};
    mc_status_t st = ops->create(&p, &r->tl);
    if (st == MC_OK) {
        st = ops->connect(r->tl);
        if (st != MC_OK) ops->destroy(r->tl);
    }
    free(peers);
    if (st != MC_OK) {
        mc_store_destroy(r->store);
        return MC_TFAIL(rank, "create/connect: %s: %s", mc_status_str(st),
                        mc_last_error());
    }
    return 0;
}

static void t_teardown(t_rank_t *r)
{
    ops->destroy(r->tl);
    mc_store_destroy(r->store);
}

/* Store-based barrier among ranks [0, n), named by `tag`. */
static int t_barrier_n(t_rank_t *r, const char *tag, int n)
{
    char key[64], v[8];
    size_t len;
    snprintf(key, sizeof(key), "bar/%s/%d", tag, r->rank);
    if (mc_store_set(r->store, key, "1", 1) != MC_OK)
        return MC_TFAIL(r->rank, "barrier set: %s", mc_last_error());
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "bar/%s/%d", tag, i);
        if (mc_store_get(r->store, key, 30000, v, sizeof(v), &len) != MC_OK)
            return MC_TFAIL(r->rank, "barrier %s: %s", tag, mc_last_error());
    }
    return 0;
}

static int t_barrier(t_rank_t *r, const char *tag)
{
    return t_barrier_n(r, tag, r->size);
}

static int t_xfers_done(mc_xfer_t *const *xs, int n)
{
    for (int i = 0; i < n; i++)
        if (xs[i]->status == MC_INPROGRESS) return 0;
    return 1;
}

typedef struct t_drive_stats {
    int64_t waits;
} t_drive_stats_t;

/*
 * Engine-style loop: spin on progress, and after T_SPIN idle calls sleep in
 * wait() with a long timeout, relying on the transport's doorbell (a lost
 * wakeup would cost the transport's whole sleep cap). Returns 0 once
 * done(arg), -1 at the deadline.
 */
#define T_SPIN 64
static int t_drive(mc_tl_t *tl, int (*done)(void *), void *arg,
                   int64_t timeout_ms, t_drive_stats_t *stats)
{
    int64_t deadline = mc_now_us() + timeout_ms * 1000;
    int idle = 0;
    while (!done(arg)) {
        if (ops->progress(tl) > 0) {
            idle = 0;
            continue;
        }
        if (++idle < T_SPIN) continue;
        idle = 0;
        if (mc_now_us() > deadline) return -1;
        ops->wait(tl, 1000000);
        if (stats) stats->waits++;
    }
    return 0;
}

typedef struct t_set {
    mc_xfer_t **xs;
    int n;
} t_set_t;

static int t_set_done(void *a)
{
    t_set_t *s = a;
    return t_xfers_done(s->xs, s->n);
}

static int t_drive_set(mc_tl_t *tl, mc_xfer_t **xs, int n, int64_t timeout_ms)
{
    t_set_t s = {xs, n};
    return t_drive(tl, t_set_done, &s, timeout_ms, NULL);
}

/* Deterministic pattern, 8 bytes per word, distinct per seed. */
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
        size_t k = len - i < 8 ? len - i : 8;
        memcpy(b + i, &w, k);
    }
}

/* Offset of the first wrong byte, or SIZE_MAX if all match. */
static size_t t_check(const void *buf, size_t len, uint64_t seed)
{
    const uint8_t *b = buf;
    for (size_t i = 0; i < len; i += 8) {
        uint64_t w = t_word(seed, i / 8);
        size_t k = len - i < 8 ? len - i : 8;
        if (memcmp(b + i, &w, k) != 0) {
            for (size_t j = 0; j < k; j++)
                if (b[i + j] != ((const uint8_t *)&w)[j]) return i + j;
        }
    }
    return SIZE_MAX;
}

static uint64_t t_seed(int src, int dst, int ch, uint64_t salt)
{
    return ((uint64_t)src << 48) ^ ((uint64_t)dst << 32) ^
           ((uint64_t)ch << 24) ^ salt;
}

static int t_run(t_env_t *e, int size, int timeout_s,
                 int (*fn)(int, int, void *))
{
    return mc_test_fork(size, timeout_s, fn, e);
}

/* ------------------------------------------------------------------------ */
/* single-process: argument checking, stubs, connect timeout                */
/* ------------------------------------------------------------------------ */

static void test_vtable_and_args(void **state)
{
    (void)state;
    assert_int_equal(ops->size, sizeof(mc_tl_ops_t));
    assert_string_equal(ops->name, "shm");
    assert_int_equal(ops->mem_reg(NULL, NULL, 0, NULL), MC_ERR_UNSUPPORTED);
    assert_int_equal(ops->mem_dereg(NULL, NULL), MC_ERR_UNSUPPORTED);
    assert_int_equal(ops->put(NULL, 0, NULL, NULL, 0, 0, 0, NULL),
                     MC_ERR_UNSUPPORTED);
    uint64_t sv;
    assert_int_equal(ops->signal(NULL, 0, 0, 1), MC_ERR_INVALID_ARG);
    assert_int_equal(ops->peek(NULL, 0, 0, &sv), MC_ERR_INVALID_ARG);

    t_env_t e;
    t_env_init(&e);
    mc_store_h store;
    assert_int_equal(mc_store_file_create(e.dir, &store), MC_OK);
    uint8_t peers[2] = {0, 1};
    mc_tl_params_t p = {.rank = 0,
                        .size = 2,
                        .store = store,
                        .uid = e.uid,
                        .peers = peers,
                        .timeout_ms = 300};
    mc_tl_t *tl = (mc_tl_t *)0x1;
    assert_int_equal(ops->create(NULL, &tl), MC_ERR_INVALID_ARG);
    assert_int_equal(ops->create(&p, NULL), MC_ERR_INVALID_ARG);
    p.rank = 2;
    assert_int_equal(ops->create(&p, &tl), MC_ERR_INVALID_ARG);
    p.rank = -1;
    assert_int_equal(ops->create(&p, &tl), MC_ERR_INVALID_ARG);
    p.rank = 1; /* lists itself */
    assert_int_equal(ops->create(&p, &tl), MC_ERR_INVALID_ARG);
    p.rank = 0;
    p.store = NULL;
    assert_int_equal(ops->create(&p, &tl), MC_ERR_INVALID_ARG);
    p.store = store;
    p.size = 0;
    assert_int_equal(ops->create(&p, &tl), MC_ERR_INVALID_ARG);
    assert_ptr_equal(tl, (mc_tl_t *)0x1); /* untouched on failure */

    /* Peer 1 never shows up: connect times out, nothing is left behind. */
    p.size = 2;
    assert_int_equal(ops->create(&p, &tl), MC_OK);
    assert_int_equal(t_segments_left(e.uid), 1);
    char seg[64];
    snprintf(seg, sizeof(seg), "/mc-%016" PRIx64 "-0", e.uid);
    /* the same communicator cannot be created twice on one rank */
    mc_tl_t *tl2 = NULL;
    assert_int_equal(ops->create(&p, &tl2), MC_ERR_IO);
    assert_null(tl2);

    char buf[8];
    mc_xfer_t x = {.buf = buf, .len = sizeof(buf)};
    assert_int_equal(ops->post_send(tl, 1, MC_CH_COLL, &x),
                     MC_ERR_INVALID_ARG); /* not connected */
    assert_int_equal(ops->add_peer(tl, 1, 1, 100), MC_ERR_INVALID_ARG);
    int64_t t0 = mc_now_us();
    assert_int_equal(ops->connect(tl), MC_ERR_TIMEOUT);
    int64_t dt = mc_now_us() - t0;
    assert_true(dt >= 200000 && dt < 3000000);
    assert_int_equal(t_segments_left(e.uid), 0); /* unlinked on failure */
    assert_int_equal(ops->progress(tl), 0);
    ops->destroy(tl);

    /* connect called after the deadline passed: still a timeout, never a
     * success with peer 1 unattached (nor a look at an unread entry) */
    p.uid ^= 8;
    assert_int_equal(ops->create(&p, &tl), MC_OK);
    usleep(400 * 1000);
    assert_int_equal(ops->connect(tl), MC_ERR_TIMEOUT);
    assert_non_null(strstr(mc_last_error(), "peer 1"));
    assert_int_equal(t_segments_left(p.uid), 0);
    ops->destroy(tl);
    p.uid ^= 8;

    /* size 1: no peers, nothing to connect; bad posts are rejected. */
    peers[1] = 0;
    p.size = 1;
    p.uid ^= 1;
    assert_int_equal(ops->create(&p, &tl), MC_OK);
    assert_int_equal(ops->connect(tl), MC_OK);
    assert_int_equal(ops->connect(tl), MC_ERR_INVALID_ARG);
    assert_int_equal(ops->post_send(tl, 0, MC_CH_COLL, &x),
                     MC_ERR_INVALID_ARG); /* self */
    assert_int_equal(ops->post_recv(tl, 1, MC_CH_COLL, &x), MC_ERR_INVALID_ARG);
    assert_int_equal(ops->post_recv(tl, -1, MC_CH_COLL, &x),
                     MC_ERR_INVALID_ARG);
    assert_int_equal(ops->post_send(tl, 0, 2, &x), MC_ERR_INVALID_ARG);
    assert_int_equal(ops->post_send(tl, 0, MC_CH_COLL, NULL),
                     MC_ERR_INVALID_ARG);
    assert_int_equal(ops->peer_status(tl, 0), MC_ERR_INVALID_ARG);
    /* add_peer: only a newer process, never this rank */
    assert_int_equal(ops->add_peer(tl, 0, 1, 100), MC_ERR_INVALID_ARG);
    assert_int_equal(ops->add_peer(tl, 1, 1, 100), MC_ERR_INVALID_ARG);
    assert_int_equal(ops->progress(tl), 0);
    t0 = mc_now_us();
    ops->wait(tl, 20000); /* nothing posted: sleeps about the timeout */
    dt = mc_now_us() - t0;
    assert_true(dt >= 15000 && dt < 2000000);
    assert_int_equal(t_segments_left(p.uid), 0);
    ops->destroy(tl);
    ops->destroy(NULL);

    /* out-of-range ring size falls back to the default, create works */
    setenv("MOONCAKE_SHM_RING_BYTES", "12", 1);
    p.uid ^= 2;
    assert_int_equal(ops->create(&p, &tl), MC_OK);
    ops->destroy(tl);
    unsetenv("MOONCAKE_SHM_RING_BYTES");
    assert_int_equal(t_segments_left(p.uid), 0);

    mc_store_destroy(store);
    t_env_fini(&e);
}

/* ------------------------------------------------------------------------ */
/* 64 MiB both ways on both channels at once                                */
/* ------------------------------------------------------------------------ */

#define T_BIG ((size_t)64 << 20)

static int rank_bidir_big(int rank, int size, void *arg)
{
    t_rank_t r;
    if (t_setup(arg, rank, size, &r)) return 1;
    int peer = 1 - rank, rc = 0;
    uint8_t *sb[MC_NUM_CHANNELS], *rb[MC_NUM_CHANNELS];
    mc_xfer_t sx[MC_NUM_CHANNELS], rx[MC_NUM_CHANNELS];
    mc_xfer_t *all[2 * MC_NUM_CHANNELS];
    for (int ch = 0; ch < MC_NUM_CHANNELS; ch++) {
        sb[ch] = malloc(T_BIG);
        rb[ch] = malloc(T_BIG);
        if (!sb[ch] || !rb[ch]) return MC_TFAIL(rank, "malloc");
        t_fill(sb[ch], T_BIG, t_seed(rank, peer, ch, 7));
        memset(rb[ch], 0, T_BIG);
        sx[ch] = (mc_xfer_t){.buf = sb[ch], .len = T_BIG};
        rx[ch] = (mc_xfer_t){.buf = rb[ch], .len = T_BIG};
        all[2 * ch] = &sx[ch];
        all[2 * ch + 1] = &rx[ch];
    }
    /* sends first: each fills its ring and stalls (the peer has posted
     * nothing yet, or is not even running); only a transport that keeps
     * serving the receives while sends are blocked gets through */
    for (int ch = 0; ch < MC_NUM_CHANNELS; ch++)
        if (ops->post_send(r.tl, peer, ch, &sx[ch]) != MC_OK)
            return MC_TFAIL(rank, "post_send: %s", mc_last_error());
    for (int ch = 0; ch < MC_NUM_CHANNELS; ch++)
        if (ops->post_recv(r.tl, peer, ch, &rx[ch]) != MC_OK)
            return MC_TFAIL(rank, "post_recv: %s", mc_last_error());
    if (t_barrier(&r, "filled")) return 1; /* time the transfer only */
    int64_t t0 = mc_now_us();
    t_set_t set = {all, 4};
    t_drive_stats_t stats = {0};
    if (t_drive(r.tl, t_set_done, &set, 60000, &stats))
        return MC_TFAIL(rank, "64 MiB exchange did not finish");
    int64_t dt = mc_now_us() - t0;
    for (int ch = 0; ch < MC_NUM_CHANNELS && !rc; ch++) {
        if (sx[ch].status != MC_OK || rx[ch].status != MC_OK ||
            rx[ch].off != T_BIG || sx[ch].off != T_BIG)
            rc = MC_TFAIL(rank, "ch %d: status %d/%d", ch, sx[ch].status,
                          rx[ch].status);
        size_t bad = t_check(rb[ch], T_BIG, t_seed(peer, rank, ch, 7));
        if (!rc && bad != SIZE_MAX)
            rc = MC_TFAIL(rank, "ch %d: wrong byte at offset %zu", ch, bad);
    }
    if (rank == 0)
        printf("    bidir 2 x 2 x 64 MiB: %.1f ms (%" PRId64
               " waits on rank 0)\n",
               (double)dt / 1000, stats.waits);
    for (int ch = 0; ch < MC_NUM_CHANNELS; ch++) {
        free(sb[ch]);
        free(rb[ch]);
    }
    t_teardown(&r);
    return rc;
}

static void test_bidir_64m(void **state)
{
    (void)state;
    t_env_t e;
    t_env_init(&e);
    assert_int_equal(t_run(&e, 2, 120, rank_bidir_big), 0);
    t_env_fini(&e);
}

/* ------------------------------------------------------------------------ */
/* thousands of header+payload pairs; receives posted from callbacks        */
/* ------------------------------------------------------------------------ */

#define T_MSGS 3000
#define T_PAYLOAD_MAX 301

typedef struct t_msg_hdr {
    uint32_t seq;
    uint32_t len;
} t_msg_hdr_t;

static uint32_t t_msg_len(uint32_t seq)
{
    return (seq * 37u) % T_PAYLOAD_MAX;
}

static mc_tl_t *g_tl; /* for callbacks: one transport per rank process */

typedef struct t_rx_state {
    int src, dst, ch;
    uint32_t expect; /* next sequence number */
    int done, err;
    t_msg_hdr_t hdr;
    uint8_t payload[T_PAYLOAD_MAX];
    mc_xfer_t hx, px;
} t_rx_state_t;

static void t_on_hdr(mc_xfer_t *x);
static void t_on_payload(mc_xfer_t *x);

static void t_post_hdr(t_rx_state_t *s)
{
    s->hx = (mc_xfer_t){
        .buf = &s->hdr, .len = sizeof(s->hdr), .cb = t_on_hdr, .arg = s};
    if (ops->post_recv(g_tl, s->src, s->ch, &s->hx) != MC_OK) s->err = 1;
}

static void t_on_hdr(mc_xfer_t *x)
{
    t_rx_state_t *s = x->arg;
    if (x->status != MC_OK || s->hdr.seq != s->expect ||
        s->hdr.len != t_msg_len(s->expect)) {
        s->err = 1;
        return;
    }
    /* post the payload receive from inside progress; its length comes
     * from the header just received (0 is a legal, zero-length xfer) */
    s->px = (mc_xfer_t){
        .buf = s->payload, .len = s->hdr.len, .cb = t_on_payload, .arg = s};
    if (ops->post_recv(g_tl, s->src, s->ch, &s->px) != MC_OK) s->err = 1;
}

static void t_on_payload(mc_xfer_t *x)
{
    t_rx_state_t *s = x->arg;
    if (x->status != MC_OK ||
        t_check(s->payload, x->len, t_seed(s->src, s->dst, s->ch, s->expect)) !=
            SIZE_MAX) {
        s->err = 1;
        return;
    }
    if (++s->expect == T_MSGS) {
        s->done = 1;
        return;
    }
    t_post_hdr(s);
}

typedef struct t_pairs {
    t_rx_state_t *rx;
    int nrx;
    mc_xfer_t *tx;
    int ntx;
} t_pairs_t;

static int t_pairs_done(void *a)
{
    t_pairs_t *p = a;
    for (int i = 0; i < p->nrx; i++)
        if (!p->rx[i].done && !p->rx[i].err) return 0;
    for (int i = 0; i < p->ntx; i++)
        if (p->tx[i].status == MC_INPROGRESS) return 0;
    return 1;
}

static int rank_small_pairs(int rank, int size, void *arg)
{
    t_rank_t r;
    if (t_setup(arg, rank, size, &r)) return 1;
    g_tl = r.tl;
    int rc = 0, nstreams = (size - 1) * MC_NUM_CHANNELS;
    t_rx_state_t *rx = calloc((size_t)nstreams, sizeof(*rx));
    mc_xfer_t *tx = calloc((size_t)nstreams * 2 * T_MSGS, sizeof(*tx));
    t_msg_hdr_t *hdrs = calloc((size_t)nstreams * T_MSGS, sizeof(*hdrs));
    uint8_t *pay = malloc((size_t)nstreams * T_MSGS * T_PAYLOAD_MAX);
    if (!rx || !tx || !hdrs || !pay) return MC_TFAIL(rank, "calloc");
    int k = 0;
    for (int peer = 0; peer < size; peer++) {
        if (peer == rank) continue;
        for (int ch = 0; ch < MC_NUM_CHANNELS; ch++, k++) {
            rx[k] = (t_rx_state_t){.src = peer, .dst = rank, .ch = ch};
            t_post_hdr(&rx[k]);
        }
    }
    /* every message posted at once, two xfers each; with a 4 KiB
     * collective ring most of them wait for space, and headers and
     * payloads straddle the wrap-around point */
    k = 0;
    for (int peer = 0; peer < size; peer++) {
        if (peer == rank) continue;
        for (int ch = 0; ch < MC_NUM_CHANNELS; ch++, k++) {
            for (uint32_t m = 0; m < T_MSGS; m++) {
                size_t i = (size_t)k * T_MSGS + m;
                hdrs[i] = (t_msg_hdr_t){m, t_msg_len(m)};
                uint8_t *p = pay + i * T_PAYLOAD_MAX;
                t_fill(p, t_msg_len(m), t_seed(rank, peer, ch, m));
                tx[2 * i] = (mc_xfer_t){.buf = &hdrs[i], .len = sizeof(*hdrs)};
                tx[2 * i + 1] = (mc_xfer_t){.buf = p, .len = t_msg_len(m)};
                if (ops->post_send(r.tl, peer, ch, &tx[2 * i]) != MC_OK ||
                    ops->post_send(r.tl, peer, ch, &tx[2 * i + 1]) != MC_OK)
                    return MC_TFAIL(rank, "post_send: %s", mc_last_error());
            }
        }
    }
    t_pairs_t pp = {rx, nstreams, tx, nstreams * 2 * T_MSGS};
    if (t_drive(r.tl, t_pairs_done, &pp, 60000, NULL))
        rc = MC_TFAIL(rank, "small messages did not finish");
    for (int i = 0; i < nstreams && !rc; i++)
        if (rx[i].err || rx[i].expect != T_MSGS)
            rc = MC_TFAIL(rank, "from %d ch %d: error at message %u", rx[i].src,
                          rx[i].ch, rx[i].expect);
    for (int i = 0; i < nstreams * 2 * T_MSGS && !rc; i++)
        if (tx[i].status != MC_OK)
            rc = MC_TFAIL(rank, "send %d: status %d", i, tx[i].status);
    if (!rc) rc = t_barrier(&r, "pairs"); /* no one leaves with data due */
    free(rx);
    free(tx);
    free(hdrs);
    free(pay);
    t_teardown(&r);
    return rc;
}

static void test_small_pairs_in_order(void **state)
{
    (void)state;
    t_env_t e;
    t_env_init(&e);
    e.ring_bytes = 4096;
    assert_int_equal(t_run(&e, 3, 120, rank_small_pairs), 0);
    t_env_fini(&e);
}

/* ------------------------------------------------------------------------ */
/* zero-length transfers: at once when alone, FIFO when queued              */
/* ------------------------------------------------------------------------ */

static int g_order[8], g_norder;

static void t_record(mc_xfer_t *x)
{
    if (g_norder < 8) g_order[g_norder++] = (int)(intptr_t)x->arg;
}

static int rank_zero_len(int rank, int size, void *arg)
{
    t_rank_t r;
    if (t_setup(arg, rank, size, &r)) return 1;
    int peer = 1 - rank;
    /* alone on an idle stream: completes inside post, callback included */
    for (int ch = 0; ch < MC_NUM_CHANNELS; ch++) {
        mc_xfer_t zs = {
            .buf = NULL, .len = 0, .cb = t_record, .arg = (void *)1};
        mc_xfer_t zr = {
            .buf = NULL, .len = 0, .cb = t_record, .arg = (void *)2};
        g_norder = 0;
        if (ops->post_send(r.tl, peer, ch, &zs) != MC_OK ||
            ops->post_recv(r.tl, peer, ch, &zr) != MC_OK)
            return MC_TFAIL(rank, "post: %s", mc_last_error());
        if (zs.status != MC_OK || zr.status != MC_OK || g_norder != 2 ||
            g_order[0] != 1 || g_order[1] != 2)
            return MC_TFAIL(rank, "zero-length xfer not completed at once");
    }
    /* queued behind a real transfer: completes after it, in FIFO order */
    uint8_t a[1000], b[1000];
    mc_xfer_t xa = {
        .buf = a, .len = sizeof(a), .cb = t_record, .arg = (void *)1};
    mc_xfer_t xz = {.buf = NULL, .len = 0, .cb = t_record, .arg = (void *)2};
    mc_xfer_t xb = {
        .buf = b, .len = sizeof(b), .cb = t_record, .arg = (void *)3};
    mc_xfer_t *all[3] = {&xa, &xz, &xb};
    g_norder = 0;
    if (rank == 1) {
        memset(a, 0, sizeof(a));
        memset(b, 0, sizeof(b));
        if (ops->post_recv(r.tl, peer, MC_CH_P2P, &xa) != MC_OK ||
            ops->post_recv(r.tl, peer, MC_CH_P2P, &xz) != MC_OK ||
            ops->post_recv(r.tl, peer, MC_CH_P2P, &xb) != MC_OK)
            return MC_TFAIL(rank, "post_recv: %s", mc_last_error());
        ops->progress(r.tl);
        if (xz.status != MC_INPROGRESS || g_norder != 0)
            return MC_TFAIL(rank, "zero-length recv overtook a pending one");
    }
    if (t_barrier(&r, "zl")) return 1;
    if (rank == 0) {
        t_fill(a, sizeof(a), 11);
        t_fill(b, sizeof(b), 12);
        if (ops->post_send(r.tl, peer, MC_CH_P2P, &xa) != MC_OK ||
            ops->post_send(r.tl, peer, MC_CH_P2P, &xz) != MC_OK ||
            ops->post_send(r.tl, peer, MC_CH_P2P, &xb) != MC_OK)
            return MC_TFAIL(rank, "post_send: %s", mc_last_error());
    }
    if (t_drive_set(r.tl, all, 3, 10000))
        return MC_TFAIL(rank, "did not finish");
    if (g_norder != 3 || g_order[0] != 1 || g_order[1] != 2 || g_order[2] != 3)
        return MC_TFAIL(rank, "completion order %d %d %d (n=%d)", g_order[0],
                        g_order[1], g_order[2], g_norder);
    if (xa.status != MC_OK || xz.status != MC_OK || xb.status != MC_OK)
        return MC_TFAIL(rank, "status");
    if (rank == 1 && (t_check(a, sizeof(a), 11) != SIZE_MAX ||
                      t_check(b, sizeof(b), 12) != SIZE_MAX))
        return MC_TFAIL(rank, "data");
    if (t_barrier(&r, "zl-end")) return 1;
    t_teardown(&r);
    return 0;
}

static void test_zero_length(void **state)
{
    (void)state;
    t_env_t e;
    t_env_init(&e);
    assert_int_equal(t_run(&e, 2, 60, rank_zero_len), 0);
    t_env_fini(&e);
}

/* ------------------------------------------------------------------------ */
/* a full collective channel does not block point-to-point                  */
/* ------------------------------------------------------------------------ */

#define T_CH_BIG ((size_t)16 << 20)
#define T_CH_SMALL ((size_t)100 << 10)

static int rank_channels(int rank, int size, void *arg)
{
    t_rank_t r;
    if (t_setup(arg, rank, size, &r)) return 1;
    int peer = 1 - rank;
    uint8_t *big = malloc(T_CH_BIG), *ps = malloc(T_CH_SMALL),
            *pr = malloc(T_CH_SMALL);
    if (!big || !ps || !pr) return MC_TFAIL(rank, "malloc");
    mc_xfer_t cx = {.buf = big, .len = T_CH_BIG};
    mc_xfer_t sx = {.buf = ps, .len = T_CH_SMALL};
    mc_xfer_t rx = {.buf = pr, .len = T_CH_SMALL};
    mc_xfer_t *p2p[2] = {&sx, &rx};
    t_fill(ps, T_CH_SMALL, t_seed(rank, peer, MC_CH_P2P, 1));
    if (rank == 1) {
        /* collective send far larger than the ring: stalls, ring full */
        t_fill(big, T_CH_BIG, t_seed(rank, peer, MC_CH_COLL, 1));
        if (ops->post_send(r.tl, peer, MC_CH_COLL, &cx) != MC_OK)
            return MC_TFAIL(rank, "post_send: %s", mc_last_error());
    }
    if (ops->post_recv(r.tl, peer, MC_CH_P2P, &rx) != MC_OK ||
        ops->post_send(r.tl, peer, MC_CH_P2P, &sx) != MC_OK)
        return MC_TFAIL(rank, "post p2p: %s", mc_last_error());
    if (t_drive_set(r.tl, p2p, 2, 10000))
        return MC_TFAIL(rank, "p2p blocked behind a full collective ring");
    if (rx.status != MC_OK || sx.status != MC_OK ||
        t_check(pr, T_CH_SMALL, t_seed(peer, rank, MC_CH_P2P, 1)) != SIZE_MAX)
        return MC_TFAIL(rank, "p2p data/status");
    if (rank == 1 && (cx.status != MC_INPROGRESS || cx.off != (4u << 20)))
        return MC_TFAIL(rank,
                        "collective send: status %d off %zu (want "
                        "in progress at 4 MiB)",
                        cx.status, cx.off);
    if (t_barrier(&r, "p2p-done")) return 1;
    if (rank == 0) {
        memset(big, 0, T_CH_BIG);
        if (ops->post_recv(r.tl, peer, MC_CH_COLL, &cx) != MC_OK)
            return MC_TFAIL(rank, "post_recv: %s", mc_last_error());
    }
    mc_xfer_t *c1[1] = {&cx};
    if (t_drive_set(r.tl, c1, 1, 20000) || cx.status != MC_OK)
        return MC_TFAIL(rank, "collective transfer did not finish");
    if (rank == 0 &&
        t_check(big, T_CH_BIG, t_seed(peer, rank, MC_CH_COLL, 1)) != SIZE_MAX)
        return MC_TFAIL(rank, "collective data");
    free(big);
    free(ps);
    free(pr);
    t_teardown(&r);
    return 0;
}

static void test_channels_independent(void **state)
{
    (void)state;
    t_env_t e;
    t_env_init(&e);
    assert_int_equal(t_run(&e, 2, 60, rank_channels), 0);
    t_env_fini(&e);
}

/* ------------------------------------------------------------------------ */
/* all-pairs exchange: 2, 3 and 8 processes (8 on 2 cores needs sleeping)   */
/* ------------------------------------------------------------------------ */

#define T_ROUNDS 200
#define T_AP_SMALL 64
#define T_AP_BIG ((size_t)2 << 20)

static int rank_all_pairs(int rank, int size, void *arg)
{
    t_rank_t r;
    if (t_setup(arg, rank, size, &r)) return 1;
    int n = size - 1, rc = 0;
    mc_xfer_t *xs = calloc((size_t)n * 4, sizeof(*xs));
    mc_xfer_t **ptr = calloc((size_t)n * 4, sizeof(*ptr));
    uint8_t *sbuf = malloc((size_t)n * T_AP_BIG),
            *rbuf = malloc((size_t)n * T_AP_BIG);
    if (!xs || !ptr || !sbuf || !rbuf) return MC_TFAIL(rank, "malloc");
    t_drive_stats_t stats = {0};

    /* phase 1: latency-bound rounds of small messages to every peer */
    int64_t t0 = mc_now_us();
    for (int round = 0; round < T_ROUNDS && !rc; round++) {
        int k = 0;
        for (int peer = 0; peer < size; peer++) {
            if (peer == rank) continue;
            int ch = (round + rank + peer) % MC_NUM_CHANNELS;
            uint8_t *s = sbuf + (size_t)k * T_AP_SMALL;
            uint8_t *d = rbuf + (size_t)k * T_AP_SMALL;
            t_fill(s, T_AP_SMALL, t_seed(rank, peer, ch, (uint64_t)round));
            xs[2 * k] = (mc_xfer_t){.buf = d, .len = T_AP_SMALL};
            xs[2 * k + 1] = (mc_xfer_t){.buf = s, .len = T_AP_SMALL};
            ptr[2 * k] = &xs[2 * k];
            ptr[2 * k + 1] = &xs[2 * k + 1];
            if (ops->post_recv(r.tl, peer, ch, &xs[2 * k]) != MC_OK ||
                ops->post_send(r.tl, peer, ch, &xs[2 * k + 1]) != MC_OK)
                return MC_TFAIL(rank, "post: %s", mc_last_error());
            k++;
        }
        t_set_t set = {ptr, 2 * n};
        if (t_drive(r.tl, t_set_done, &set, 30000, &stats))
            return MC_TFAIL(rank, "round %d did not finish", round);
        k = 0;
        for (int peer = 0; peer < size && !rc; peer++) {
            if (peer == rank) continue;
            int ch = (round + rank + peer) % MC_NUM_CHANNELS;
            if (xs[2 * k].status != MC_OK ||
                t_check(rbuf + (size_t)k * T_AP_SMALL, T_AP_SMALL,
                        t_seed(peer, rank, ch, (uint64_t)round)) != SIZE_MAX)
                rc = MC_TFAIL(rank, "round %d from %d: bad data", round, peer);
            k++;
        }
    }
    int64_t t1 = mc_now_us();

    /* phase 2: bandwidth, 2 MiB to and from every peer on both channels */
    int k = 0;
    for (int peer = 0; peer < size && !rc; peer++) {
        if (peer == rank) continue;
        int ch = (rank + peer) % MC_NUM_CHANNELS;
        uint8_t *s = sbuf + (size_t)k * T_AP_BIG,
                *d = rbuf + (size_t)k * T_AP_BIG;
        t_fill(s, T_AP_BIG, t_seed(rank, peer, ch, 99));
        xs[2 * k] = (mc_xfer_t){.buf = d, .len = T_AP_BIG};
        xs[2 * k + 1] = (mc_xfer_t){.buf = s, .len = T_AP_BIG};
        ptr[2 * k] = &xs[2 * k];
        ptr[2 * k + 1] = &xs[2 * k + 1];
        if (ops->post_send(r.tl, peer, ch, &xs[2 * k + 1]) != MC_OK ||
            ops->post_recv(r.tl, peer, ch, &xs[2 * k]) != MC_OK)
            return MC_TFAIL(rank, "post: %s", mc_last_error());
        k++;
    }
    int64_t t2 = mc_now_us();
    if (!rc && t_drive_set(r.tl, ptr, 2 * n, 60000))
        rc = MC_TFAIL(rank, "bandwidth phase did not finish");
    int64_t t3 = mc_now_us();
    k = 0;
    for (int peer = 0; peer < size && !rc; peer++) {
        if (peer == rank) continue;
        int ch = (rank + peer) % MC_NUM_CHANNELS;
        if (xs[2 * k].status != MC_OK || xs[2 * k + 1].status != MC_OK ||
            t_check(rbuf + (size_t)k * T_AP_BIG, T_AP_BIG,
                    t_seed(peer, rank, ch, 99)) != SIZE_MAX)
            rc = MC_TFAIL(rank, "bulk from %d: bad data", peer);
        k++;
    }
    if (rank == 0)
        printf(
            "    %d ranks: %d small all-pairs rounds %.1f ms (%.0f us/round, "
            "%" PRId64 " waits on rank 0); 2 MiB all-pairs %.1f ms\n",
            size, T_ROUNDS, (double)(t1 - t0) / 1000,
            (double)(t1 - t0) / T_ROUNDS, stats.waits,
            (double)(t3 - t2) / 1000);
    /* About 0.5 ms a round with 8 ranks on a loaded 2-core box; pure
     * spinning (no futex sleep) measured 16 ms a round there, and a lost
     * wakeup costs the transport's 50 ms sleep cap. */
    if (!rc && t1 - t0 > (int64_t)T_ROUNDS * 5000)
        rc = MC_TFAIL(rank, "small rounds too slow: %.1f ms",
                      (double)(t1 - t0) / 1000);
    if (!rc) rc = t_barrier(&r, "ap-end");
    free(xs);
    free(ptr);
    free(sbuf);
    free(rbuf);
    t_teardown(&r);
    return rc;
}

static void t_all_pairs(int size)
{
    t_env_t e;
    t_env_init(&e);
    assert_int_equal(t_run(&e, size, 120, rank_all_pairs), 0);
    t_env_fini(&e);
}

static void test_all_pairs_2(void **state)
{
    (void)state;
    t_all_pairs(2);
}
static void test_all_pairs_3(void **state)
{
    (void)state;
    t_all_pairs(3);
}
static void test_all_pairs_8(void **state)
{
    (void)state;
    t_all_pairs(8);
}

/* ------------------------------------------------------------------------ */
/* failure: SIGKILLed peer, closed peer, data sent before death             */
/* ------------------------------------------------------------------------ */

static int t_result(t_rank_t *r)
{
    char key[32];
    snprintf(key, sizeof(key), "result/%d", r->rank);
    return mc_store_set(r->store, key, "ok", 2) == MC_OK ? 0 : 1;
}

#define T_VICTIM 2

static int rank_sigkill(int rank, int size, void *arg)
{
    t_rank_t r;
    if (t_setup(arg, rank, size, &r)) return 1;
    if (rank == T_VICTIM) {
        if (t_barrier(&r, "posted")) return 1;
        char v[32];
        int n = snprintf(v, sizeof(v), "%" PRId64, mc_now_us());
        mc_store_set(r.store, "dying", v, (size_t)n);
        kill(getpid(), SIGKILL);
        pause();
    }
    int other = 1 - rank;
    static uint8_t rb[MC_NUM_CHANNELS][1000];
    uint8_t *big = calloc(1, T_CH_BIG);
    if (!big) return MC_TFAIL(rank, "calloc");
    mc_xfer_t rx[MC_NUM_CHANNELS], tx = {.buf = big, .len = T_CH_BIG};
    mc_xfer_t *all[MC_NUM_CHANNELS + 1];
    for (int ch = 0; ch < MC_NUM_CHANNELS; ch++) {
        rx[ch] = (mc_xfer_t){.buf = rb[ch], .len = sizeof(rb[ch])};
        all[ch] = &rx[ch];
        if (ops->post_recv(r.tl, T_VICTIM, ch, &rx[ch]) != MC_OK)
            return MC_TFAIL(rank, "post_recv: %s", mc_last_error());
    }
    all[MC_NUM_CHANNELS] = &tx;
    /* a send that fills the victim's ring and stalls */
    if (ops->post_send(r.tl, T_VICTIM, MC_CH_COLL, &tx) != MC_OK)
        return MC_TFAIL(rank, "post_send: %s", mc_last_error());
    if (ops->peer_status(r.tl, T_VICTIM) != MC_OK)
        return MC_TFAIL(rank, "victim reported dead too early");
    if (t_barrier(&r, "posted")) return 1;
    if (t_drive_set(r.tl, all, MC_NUM_CHANNELS + 1, 10000))
        return MC_TFAIL(rank, "transfers to a killed peer never completed");
    int64_t t_done = mc_now_us();
    char v[32] = {0};
    size_t len;
    if (mc_store_get(r.store, "dying", 5000, v, sizeof(v) - 1, &len) != MC_OK)
        return MC_TFAIL(rank, "no dying timestamp");
    int64_t latency = t_done - strtoll(v, NULL, 10);
    printf("    rank %d: failure detected %.1f ms after SIGKILL\n", rank,
           (double)latency / 1000);
    if (latency > 1000000)
        return MC_TFAIL(rank, "failure took %" PRId64 " us", latency);
    for (int i = 0; i <= MC_NUM_CHANNELS; i++)
        if (all[i]->status != MC_ERR_PEER_FAILED)
            return MC_TFAIL(rank, "xfer %d: status %d", i, all[i]->status);
    mc_xfer_t late = {.buf = rb[0], .len = 1};
    if (ops->post_send(r.tl, T_VICTIM, MC_CH_P2P, &late) !=
            MC_ERR_PEER_FAILED ||
        ops->post_recv(r.tl, T_VICTIM, MC_CH_COLL, &late) != MC_ERR_PEER_FAILED)
        return MC_TFAIL(rank, "post to a failed peer was accepted");
    if (ops->peer_status(r.tl, T_VICTIM) != MC_ERR_PEER_FAILED ||
        ops->peer_status(r.tl, other) != MC_OK)
        return MC_TFAIL(rank, "peer_status");
    /* the survivors still talk to each other */
    t_fill(big, T_CH_BIG, t_seed(rank, other, 0, 5));
    uint8_t *in = malloc(T_CH_BIG);
    if (!in) return MC_TFAIL(rank, "malloc");
    mc_xfer_t s2 = {.buf = big, .len = T_CH_BIG},
              r2 = {.buf = in, .len = T_CH_BIG};
    mc_xfer_t *pair[2] = {&s2, &r2};
    if (ops->post_recv(r.tl, other, MC_CH_COLL, &r2) != MC_OK ||
        ops->post_send(r.tl, other, MC_CH_COLL, &s2) != MC_OK ||
        t_drive_set(r.tl, pair, 2, 20000) || r2.status != MC_OK ||
        t_check(in, T_CH_BIG, t_seed(other, rank, 0, 5)) != SIZE_MAX)
        return MC_TFAIL(rank, "survivor exchange failed");
    if (t_barrier_n(&r, "survivors", 2)) return 1;
    free(in);
    free(big);
    int rc = t_result(&r);
    t_teardown(&r);
    return rc;
}

/* The parent checks which ranks finished: the victim's exit is expected. */
static void t_expect_results(t_env_t *e, int nok)
{
    mc_store_h st;
    assert_int_equal(mc_store_file_create(e->dir, &st), MC_OK);
    for (int i = 0; i < nok; i++) {
        char key[32], v[8];
        size_t len;
        snprintf(key, sizeof(key), "result/%d", i);
        assert_int_equal(mc_store_get(st, key, 0, v, sizeof(v), &len), MC_OK);
    }
    mc_store_destroy(st);
}

static void test_peer_sigkilled(void **state)
{
    (void)state;
    t_env_t e;
    t_env_init(&e);
    /* exactly one rank fails: the one that SIGKILLs itself */
    assert_int_equal(t_run(&e, 3, 60, rank_sigkill), 1);
    t_expect_results(&e, 2);
    t_env_fini(&e);
}

/* A peer that destroys its transport (and stays alive) having sent
 * nothing: our posted receive finds its ring dry, the stream has ended. */
static int rank_closed(int rank, int size, void *arg)
{
    t_rank_t r;
    if (t_setup(arg, rank, size, &r)) return 1;
    if (rank == 1) {
        if (t_barrier(&r, "posted")) return 1;
        ops->destroy(r.tl);
        char v[8];
        size_t len;
        int rc =
            mc_store_get(r.store, "done", 20000, v, sizeof(v), &len) != MC_OK;
        mc_store_destroy(r.store);
        return rc ? MC_TFAIL(rank, "rank 0 never finished") : 0;
    }
    uint8_t b[100];
    mc_xfer_t x = {.buf = b, .len = sizeof(b)};
    mc_xfer_t *one[1] = {&x};
    if (ops->post_recv(r.tl, 1, MC_CH_P2P, &x) != MC_OK)
        return MC_TFAIL(rank, "post_recv: %s", mc_last_error());
    if (t_barrier(&r, "posted")) return 1;
    int64_t t0 = mc_now_us();
    int bad = t_drive_set(r.tl, one, 1, 10000);
    int64_t dt = mc_now_us() - t0;
    mc_store_set(r.store, "done", "1", 1);
    if (bad || x.status != MC_ERR_PEER_FAILED || dt > 1000000)
        return MC_TFAIL(rank, "status %d after %" PRId64 " us", x.status, dt);
    t_teardown(&r);
    return 0;
}

static void test_peer_closed(void **state)
{
    (void)state;
    t_env_t e;
    t_env_init(&e);
    assert_int_equal(t_run(&e, 2, 60, rank_closed), 0);
    t_env_fini(&e);
}

/* Bytes a peer published before it died are still delivered; what it never
 * sent fails. */
static int rank_exit_after_send(int rank, int size, void *arg)
{
    t_rank_t r;
    if (t_setup(arg, rank, size, &r)) return 1;
    uint8_t b[3000];
    if (rank == 1) {
        t_fill(b, sizeof(b), 77);
        mc_xfer_t x = {.buf = b, .len = sizeof(b)};
        if (ops->post_send(r.tl, 0, MC_CH_COLL, &x) != MC_OK ||
            x.status != MC_OK)
            return MC_TFAIL(rank, "send did not complete at once");
        _exit(0); /* no destroy: as if it crashed right after */
    }
    mc_xfer_t x1 = {.buf = b, .len = 2000}, x2 = {.buf = b + 2000, .len = 1000};
    mc_xfer_t x3 = {.buf = b, .len = 1};
    mc_xfer_t *all[3] = {&x1, &x2, &x3};
    /* wait until rank 1 is gone (its pid may only be reaped later) */
    usleep(100000);
    for (int i = 0; i < 3; i++)
        if (ops->post_recv(r.tl, 1, MC_CH_COLL, all[i]) != MC_OK)
            return MC_TFAIL(rank, "post_recv: %s", mc_last_error());
    if (t_drive_set(r.tl, all, 3, 5000))
        return MC_TFAIL(rank, "did not finish");
    if (x1.status != MC_OK || x2.status != MC_OK ||
        t_check(b, sizeof(b), 77) != SIZE_MAX)
        return MC_TFAIL(rank, "data sent before death lost: %d %d", x1.status,
                        x2.status);
    if (x3.status != MC_ERR_PEER_FAILED)
        return MC_TFAIL(rank, "recv beyond the dead peer's data: status %d",
                        x3.status);
    if (t_result(&r)) return 1;
    t_teardown(&r);
    return 0;
}

static void test_data_before_death(void **state)
{
    (void)state;
    t_env_t e;
    t_env_init(&e);
    assert_int_equal(t_run(&e, 2, 60, rank_exit_after_send), 0);
    t_expect_results(&e, 1);
    t_env_fini(&e);
}

/* A peer whose main thread called pthread_exit (a zombie, exiting) while
 * another thread goes on with the transport: it is not gone. It is once
 * that thread exits the process. The working thread is a relay: every
 * few progress calls it starts its successor and ends, so the live task
 * is always the newest, listed right after one that was just released
 * (where the kernel's task listing can lose its place: shm_pid_exiting's
 * count check). */
static struct {
    t_rank_t *r;
    uint8_t b;
    mc_xfer_t x; /* rank 0's byte */
    int64_t t0;
    int relays;
} lx;

static int lx_leader_state(void)
{
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/self/task/%d/stat", (int)getpid());
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    return p && p[1] == ' ' ? p[2] : 0;
}

static void *lx_relay(void *arg)
{
    (void)arg;
    t_rank_t *r = lx.r;
    for (int k = 0; k < 16 && lx.x.status == MC_INPROGRESS; k++)
        ops->progress(r->tl);
    if (lx.x.status == MC_INPROGRESS) {
        if (mc_now_us() - lx.t0 > 30000000) {
            MC_TFAIL(r->rank, "rank 0's byte never came");
            _exit(1);
        }
        pthread_attr_t at;
        pthread_t next;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        int e = pthread_create(&next, &at, lx_relay, NULL);
        pthread_attr_destroy(&at);
        if (e) {
            MC_TFAIL(r->rank, "pthread_create: %s", strerror(e));
            _exit(1);
        }
        lx.relays++;
        return NULL; /* the successor carries on */
    }
    if (lx.x.status != MC_OK || lx.b != 0x5a) {
        MC_TFAIL(r->rank, "rank 0's byte: status %d value %u", lx.x.status,
                 lx.b);
        _exit(1);
    }
    uint8_t a = 0xa5;
    mc_xfer_t y = {.buf = &a, .len = 1};
    mc_xfer_t *one[1] = {&y};
    if (ops->post_send(r->tl, 0, MC_CH_P2P, &y) != MC_OK ||
        t_drive_set(r->tl, one, 1, 10000) || y.status != MC_OK) {
        MC_TFAIL(r->rank, "answer to rank 0 failed");
        _exit(1);
    }
    printf("    rank 1: %d relays of its working thread with the main thread "
           "gone\n", lx.relays);
    char v[8];
    size_t len;
    /* exit once rank 0 has looked at us alive: the whole process goes */
    mc_store_get(r->store, "answered", 20000, v, sizeof(v), &len);
    fflush(stdout);
    _exit(0);
}

static void *lx_worker(void *arg)
{
    t_rank_t *r = arg;
    lx.r = r;
    lx.t0 = mc_now_us();
    while (lx_leader_state() != 'Z') {
        if (mc_now_us() - lx.t0 > 10000000) {
            MC_TFAIL(r->rank, "the main thread never became a zombie");
            _exit(1);
        }
        usleep(1000);
    }
    lx.x = (mc_xfer_t){.buf = &lx.b, .len = 1};
    if (ops->post_recv(r->tl, 0, MC_CH_P2P, &lx.x) != MC_OK) {
        MC_TFAIL(r->rank, "post_recv: %s", mc_last_error());
        _exit(1);
    }
    mc_store_set(r->store, "leader_gone", "1", 1);
    return lx_relay(NULL);
}

static int rank_leader_exits(int rank, int size, void *arg)
{
    static t_rank_t r;
    if (t_setup(arg, rank, size, &r)) return 1;
    if (rank == 1) {
        pthread_t w;
        if (pthread_create(&w, NULL, lx_worker, &r))
            return MC_TFAIL(rank, "pthread_create");
        pthread_exit(NULL);
    }
    char v[8];
    size_t len;
    if (mc_store_get(r.store, "leader_gone", 20000, v, sizeof(v), &len) !=
        MC_OK)
        return MC_TFAIL(rank, "rank 1 never reported its main thread gone");
    /* look for 600 ms, every 200 us (the transport looks at most every
     * 5 ms; each look reads the whole task list while it churns) */
    int64_t t0 = mc_now_us();
    long looks = 0;
    while (mc_now_us() - t0 < 600000) {
        mc_status_t st = ops->peer_status(r.tl, 1);
        if (st != MC_OK)
            return MC_TFAIL(rank, "rank 1 (main thread exited, another "
                            "thread working) reported gone after %" PRId64
                            " us: %s", mc_now_us() - t0, mc_status_str(st));
        looks++;
        usleep(200);
    }
    uint8_t b = 0x5a, a = 0;
    mc_xfer_t x = {.buf = &b, .len = 1}, y = {.buf = &a, .len = 1};
    mc_xfer_t *two[2] = {&x, &y};
    if (ops->post_recv(r.tl, 1, MC_CH_P2P, &y) != MC_OK ||
        ops->post_send(r.tl, 1, MC_CH_P2P, &x) != MC_OK ||
        t_drive_set(r.tl, two, 2, 20000) || x.status != MC_OK ||
        y.status != MC_OK || a != 0xa5)
        return MC_TFAIL(rank, "exchange with rank 1 failed: %d %d %u",
                        x.status, y.status, a);
    mc_store_set(r.store, "answered", "1", 1);
    /* now it exits: found gone */
    t0 = mc_now_us();
    while (ops->peer_status(r.tl, 1) == MC_OK) {
        if (mc_now_us() - t0 > 10000000)
            return MC_TFAIL(rank, "rank 1 exited, still not found gone");
        usleep(1000);
    }
    printf("    rank 0: %ld looks alive; gone %.1f ms after its answer\n",
           looks, (double)(mc_now_us() - t0) / 1000);
    t_teardown(&r);
    return 0;
}

static void test_leader_exits(void **state)
{
    (void)state;
    t_env_t e;
    t_env_init(&e);
    assert_int_equal(t_run(&e, 2, 60, rank_leader_exits), 0);
    t_env_fini(&e);
}

/* ------------------------------------------------------------------------ */
/* end of stream: a gone peer's bytes serve receives posted after its death */
/* ------------------------------------------------------------------------ */

/*
 * The engine reads a frame as a header receive and then, in a later
 * progress call, a payload receive. The writer sends a 64-byte header and a
 * payload on the collective channel and 3000 bytes on the point-to-point
 * channel, then closes its transport (staying alive) or _exits. The reader
 * first waits until the transport reports the writer gone, and only then
 * posts each receive, one at a time: every byte the writer published is
 * delivered, each stream ends on its own, and only a receive the ring
 * cannot fill fails (partly filled or not).
 */
#define T_EOS_HDR 64
#define T_EOS_P2P 3000

typedef struct t_eos {
    t_env_t env;
    size_t payload; /* collective payload after the header, may be 0 */
    int do_exit;    /* writer _exits instead of destroying its transport */
} t_eos_t;

/* Post one receive and drive it to completion; returns its status (or
 * the post's failure, in which case the xfer must be untouched). */
static int t_recv_one(t_rank_t *r, int peer, int ch, void *buf, size_t len,
                      size_t *off_p)
{
    mc_xfer_t x = {.buf = buf, .len = len, .off = 12345};
    mc_xfer_t *one[1] = {&x};
    x.status = -777;
    mc_status_t st = ops->post_recv(r->tl, peer, ch, &x);
    if (st != MC_OK) {
        if (x.status != -777 || x.off != 12345) return -999;
        *off_p = 0;
        return st;
    }
    if (t_drive_set(r->tl, one, 1, 5000)) return -998;
    *off_p = x.off;
    return x.status;
}

static int rank_eos(int rank, int size, void *arg)
{
    const t_eos_t *t = arg;
    t_rank_t r;
    if (t_setup(&t->env, rank, size, &r)) return 1;
    size_t plen = t->payload;
    uint8_t hdr[T_EOS_HDR], p2p[T_EOS_P2P];
    uint8_t *pay = malloc(plen + 1);
    if (!pay) return MC_TFAIL(rank, "malloc");
    if (rank == 1) {
        t_fill(hdr, sizeof(hdr), 1);
        t_fill(pay, plen, 2);
        t_fill(p2p, sizeof(p2p), 3);
        mc_xfer_t xs[3] = {{.buf = hdr, .len = sizeof(hdr)},
                           {.buf = pay, .len = plen},
                           {.buf = p2p, .len = sizeof(p2p)}};
        if (ops->post_send(r.tl, 0, MC_CH_COLL, &xs[0]) != MC_OK ||
            ops->post_send(r.tl, 0, MC_CH_COLL, &xs[1]) != MC_OK ||
            ops->post_send(r.tl, 0, MC_CH_P2P, &xs[2]) != MC_OK)
            return MC_TFAIL(rank, "post_send: %s", mc_last_error());
        for (int i = 0; i < 3; i++)
            if (xs[i].status != MC_OK) /* all fit: done inside post */
                return MC_TFAIL(rank, "send %d not complete at once", i);
        if (t->do_exit) _exit(0); /* no destroy: as if it crashed */
        ops->destroy(r.tl);       /* ... and stays alive */
        char v[8];
        size_t len;
        int bad =
            mc_store_get(r.store, "done", 20000, v, sizeof(v), &len) != MC_OK;
        mc_store_destroy(r.store);
        free(pay);
        return bad ? MC_TFAIL(rank, "reader never finished") : 0;
    }

    int rc = 0;
    /* 1. the writer is known gone before any receive is posted */
    int64_t t0 = mc_now_us();
    while (ops->peer_status(r.tl, 1) == MC_OK) {
        if (mc_now_us() - t0 > 5000000)
            return MC_TFAIL(rank, "writer never reported gone");
        usleep(1000);
    }
    /* sends to it fail at once */
    mc_xfer_t s1 = {.buf = hdr, .len = 1};
    if (ops->post_send(r.tl, 1, MC_CH_COLL, &s1) != MC_ERR_PEER_FAILED)
        return MC_TFAIL(rank, "send to a gone peer accepted");
    /* the engine keeps progressing between its posts */
    for (int i = 0; i < 100; i++)
        ops->progress(r.tl);

    /* 2. header, then (a later, separate post) the payload */
    size_t off;
    memset(hdr, 0, sizeof(hdr));
    int st = t_recv_one(&r, 1, MC_CH_COLL, hdr, sizeof(hdr), &off);
    if (st != MC_OK || t_check(hdr, sizeof(hdr), 1) != SIZE_MAX)
        return MC_TFAIL(rank, "header: status %d", st);
    if (ops->peer_status(r.tl, 1) != MC_ERR_PEER_FAILED)
        return MC_TFAIL(rank, "peer_status OK while draining");
    for (int i = 0; i < 100; i++)
        ops->progress(r.tl);
    memset(pay, 0, plen + 1);
    st = t_recv_one(&r, 1, MC_CH_COLL, plen ? pay : NULL, plen, &off);
    if (st != MC_OK || off != plen || t_check(pay, plen, 2) != SIZE_MAX)
        return MC_TFAIL(rank, "payload of %zu: status %d off %zu", plen, st,
                        off);
    /* 3. the collective stream is dry: end of stream, now and later */
    st = t_recv_one(&r, 1, MC_CH_COLL, pay, 1, &off);
    if (st != MC_ERR_PEER_FAILED)
        return MC_TFAIL(rank, "recv past the end: status %d", st);
    mc_xfer_t z = {.buf = NULL, .len = 0};
    z.status = -777;
    if (ops->post_recv(r.tl, 1, MC_CH_COLL, &z) != MC_ERR_PEER_FAILED ||
        z.status != -777)
        return MC_TFAIL(rank, "post to an ended stream accepted");

    /* 4. the p2p stream ended separately: 1000 bytes, then a receive
     * larger than what is left fails partly filled */
    memset(p2p, 0, sizeof(p2p));
    st = t_recv_one(&r, 1, MC_CH_P2P, p2p, 1000, &off);
    if (st != MC_OK || off != 1000)
        return MC_TFAIL(rank, "p2p head: status %d off %zu", st, off);
    uint8_t rest[T_EOS_P2P];
    st = t_recv_one(&r, 1, MC_CH_P2P, rest, sizeof(rest), &off);
    memcpy(p2p + 1000, rest, T_EOS_P2P - 1000);
    if (st != MC_ERR_PEER_FAILED || off != T_EOS_P2P - 1000 ||
        t_check(p2p, sizeof(p2p), 3) != SIZE_MAX)
        return MC_TFAIL(rank, "p2p tail: status %d off %zu", st, off);
    st = t_recv_one(&r, 1, MC_CH_P2P, rest, 1, &off);
    if (st != MC_ERR_PEER_FAILED)
        return MC_TFAIL(rank, "p2p past the end: status %d", st);
    if (ops->peer_status(r.tl, 1) != MC_ERR_PEER_FAILED)
        rc = MC_TFAIL(rank, "peer_status after the streams ended");
    mc_store_set(r.store, "done", "1", 1);
    free(pay);
    t_teardown(&r);
    return rc;
}

static void t_eos(size_t payload, int do_exit)
{
    t_eos_t t = {.payload = payload, .do_exit = do_exit};
    t_env_init(&t.env);
    assert_int_equal(t_run(&t.env, 2, 60, rank_eos), 0);
    t_env_fini(&t.env);
}

static void test_eos_closed(void **state)
{
    (void)state;
    t_eos(5000, 0);
}
static void test_eos_exited(void **state)
{
    (void)state;
    t_eos(5000, 1);
}
static void test_eos_closed_empty_payload(void **state)
{
    (void)state;
    t_eos(0, 0);
}
static void test_eos_exited_empty_payload(void **state)
{
    (void)state;
    t_eos(0, 1);
}

/*
 * As the engine does it: the header receive is posted while the writer is
 * alive, completes after it closed, and the payload receive is posted from
 * the header's callback inside progress. The 100 KiB payload wraps the
 * 64 KiB ring, so the writer closes with it half sent: the first 64 KiB
 * arrive, and the receive fails only when the ring runs dry.
 */
#define T_EOS_RING 65536
#define T_EOS_BIG ((size_t)100 << 10)

typedef struct t_eos_rx {
    uint8_t hdr[T_EOS_HDR];
    uint8_t *pay;
    mc_xfer_t hx, px;
    int err;
} t_eos_rx_t;

static void t_eos_on_hdr(mc_xfer_t *x)
{
    t_eos_rx_t *s = x->arg;
    s->px = (mc_xfer_t){.buf = s->pay, .len = T_EOS_BIG};
    if (x->status != MC_OK ||
        ops->post_recv(g_tl, 1, MC_CH_COLL, &s->px) != MC_OK)
        s->err = 1;
}

static int rank_eos_cb(int rank, int size, void *arg)
{
    t_rank_t r;
    if (t_setup(arg, rank, size, &r)) return 1;
    g_tl = r.tl;
    uint8_t *pay = calloc(1, T_EOS_BIG);
    if (!pay) return MC_TFAIL(rank, "calloc");
    if (rank == 1) {
        uint8_t hdr[T_EOS_HDR];
        t_fill(hdr, sizeof(hdr), 4);
        t_fill(pay, T_EOS_BIG, 5);
        if (t_barrier(&r, "posted")) return 1;
        mc_xfer_t h = {.buf = hdr, .len = sizeof(hdr)},
                  p = {.buf = pay, .len = T_EOS_BIG};
        if (ops->post_send(r.tl, 0, MC_CH_COLL, &h) != MC_OK ||
            ops->post_send(r.tl, 0, MC_CH_COLL, &p) != MC_OK)
            return MC_TFAIL(rank, "post_send: %s", mc_last_error());
        /* the reader is not progressing: the ring fills and stays full */
        ops->progress(r.tl);
        if (h.status != MC_OK || p.status != MC_INPROGRESS ||
            p.off != T_EOS_RING - T_EOS_HDR)
            return MC_TFAIL(rank, "send: status %d off %zu", p.status, p.off);
        ops->destroy(r.tl);
        mc_store_set(r.store, "closed", "1", 1);
        mc_store_destroy(r.store);
        free(pay);
        return 0;
    }
    t_eos_rx_t s = {.pay = pay};
    s.hx = (mc_xfer_t){
        .buf = s.hdr, .len = sizeof(s.hdr), .cb = t_eos_on_hdr, .arg = &s};
    if (ops->post_recv(r.tl, 1, MC_CH_COLL, &s.hx) != MC_OK)
        return MC_TFAIL(rank, "post_recv: %s", mc_last_error());
    if (t_barrier(&r, "posted")) return 1;
    char v[8];
    size_t len;
    if (mc_store_get(r.store, "closed", 20000, v, sizeof(v), &len) != MC_OK)
        return MC_TFAIL(rank, "writer never closed");
    /* header callback posts px; drive until both are done */
    int64_t t0 = mc_now_us();
    while (s.hx.status == MC_INPROGRESS || s.px.status == MC_INPROGRESS ||
           s.px.len == 0) {
        if (s.err) return MC_TFAIL(rank, "header or payload post failed");
        if (mc_now_us() - t0 > 5000000) return MC_TFAIL(rank, "stuck");
        if (ops->progress(r.tl) == 0) ops->wait(r.tl, 1000000);
    }
    size_t got = T_EOS_RING - T_EOS_HDR;
    if (s.hx.status != MC_OK || t_check(s.hdr, sizeof(s.hdr), 4) != SIZE_MAX)
        return MC_TFAIL(rank, "header: status %d", s.hx.status);
    if (s.px.status != MC_ERR_PEER_FAILED || s.px.off != got ||
        t_check(pay, got, 5) != SIZE_MAX)
        return MC_TFAIL(rank, "payload: status %d off %zu (want %zu)",
                        s.px.status, s.px.off, got);
    free(pay);
    t_teardown(&r);
    return 0;
}

static void test_eos_from_callback(void **state)
{
    (void)state;
    t_env_t e;
    t_env_init(&e);
    e.ring_bytes = T_EOS_RING;
    assert_int_equal(t_run(&e, 2, 60, rank_eos_cb), 0);
    t_env_fini(&e);
}

/* ------------------------------------------------------------------------ */
/* signals: one word per (rank, peer, slot), outside the streams           */
/* ------------------------------------------------------------------------ */

#define T_SIG_ROUNDS 300
#define T_SIG_DIER 2

typedef struct t_sig_wait {
    t_rank_t *r;
    int slot;
    uint64_t round;
} t_sig_wait_t;

static uint64_t t_sig_val(uint64_t round, int from)
{
    return round << 8 | (uint64_t)from;
}

/* Every peer's word `slot` holds this round's value from it? */
static int t_sig_all(void *a)
{
    t_sig_wait_t *w = a;
    for (int p = 0; p < w->r->size; p++) {
        uint64_t v = 1;
        if (p == w->r->rank) continue;
        if (ops->peek(w->r->tl, p, w->slot, &v) != MC_OK) return 0;
        if (v != t_sig_val(w->round, p)) return 0;
    }
    return 1;
}

/*
 * Three ranks: words start at 0 and bad arguments are refused; then rounds
 * in which every rank signals every peer in word (round & 1) and waits,
 * sleeping in wait() once idle (the peek arms it: a signal must wake it),
 * until each peer's word holds that round's value; the other word keeps
 * the value of the round before. Last, rank 2 signals a final value and
 * _exits: the others still read it after they know it is dead, and a
 * signal to it fails.
 */
static int rank_signals(int rank, int size, void *arg)
{
    t_rank_t r;
    if (t_setup(arg, rank, size, &r)) return 1;
    uint64_t v = 7;
    for (int p = 0; p < size; p++)
        for (int s = 0; s < 2 && p != rank; s++)
            if (ops->peek(r.tl, p, s, &v) != MC_OK || v != 0)
                return MC_TFAIL(rank, "peer %d word %d starts at %llu", p, s,
                                (unsigned long long)v);
    int peer = (rank + 1) % size;
    if (ops->peek(r.tl, peer, 2, &v) != MC_ERR_INVALID_ARG ||
        ops->peek(r.tl, rank, 0, &v) != MC_ERR_INVALID_ARG ||
        ops->signal(r.tl, size, 0, 1) != MC_ERR_INVALID_ARG ||
        ops->signal(r.tl, peer, -1, 1) != MC_ERR_INVALID_ARG)
        return MC_TFAIL(rank, "bad peer or slot accepted");
    if (t_barrier(&r, "sig-start")) return 1;
    t_drive_stats_t stats = {0};
    for (uint64_t k = 1; k <= T_SIG_ROUNDS; k++) {
        t_sig_wait_t w = {.r = &r, .slot = (int)(k & 1), .round = k};
        for (int p = 0; p < size; p++)
            if (p != rank &&
                ops->signal(r.tl, p, w.slot, t_sig_val(k, rank)) != MC_OK)
                return MC_TFAIL(rank, "signal: %s", mc_last_error());
        if (k % 50 == 0) usleep(2000); /* the others go to sleep meanwhile */
        if (t_drive(r.tl, t_sig_all, &w, 10000, &stats))
            return MC_TFAIL(rank, "round %llu: signals missing",
                            (unsigned long long)k);
        /* the other word still holds the round before (2 rounds ahead at
         * most can be written by a peer that passed this one: k + 1) */
        for (int p = 0; p < size && k > 1; p++) {
            if (p == rank) continue;
            if (ops->peek(r.tl, p, 1 - w.slot, &v) != MC_OK ||
                (v != t_sig_val(k - 1, p) && v != t_sig_val(k + 1, p)))
                return MC_TFAIL(rank, "round %llu: peer %d's other word %llu",
                                (unsigned long long)k, p,
                                (unsigned long long)v);
        }
    }
    if (stats.waits == 0)
        return MC_TFAIL(rank, "never slept: the wakeup path went untested");
    if (t_barrier(&r, "sig-rounds")) return 1;
    uint64_t last = t_sig_val(T_SIG_ROUNDS + 5, T_SIG_DIER);
    if (rank == T_SIG_DIER) {
        for (int p = 0; p < size; p++)
            if (p != rank && ops->signal(r.tl, p, 0, last) != MC_OK)
                return MC_TFAIL(rank, "last signal: %s", mc_last_error());
        _exit(0); /* no destroy: as if it crashed right after */
    }
    int64_t deadline = mc_now_us() + 10000000;
    while (ops->peer_status(r.tl, T_SIG_DIER) == MC_OK) {
        if (mc_now_us() > deadline)
            return MC_TFAIL(rank, "rank %d's death not seen", T_SIG_DIER);
        ops->progress(r.tl);
        usleep(1000);
    }
    if (ops->peek(r.tl, T_SIG_DIER, 0, &v) != MC_OK || v != last)
        return MC_TFAIL(rank, "dead rank's last signal lost: %llu",
                        (unsigned long long)v);
    if (ops->signal(r.tl, T_SIG_DIER, 0, 1) != MC_ERR_PEER_FAILED)
        return MC_TFAIL(rank, "signal to a dead rank accepted");
    if (t_result(&r)) return 1;
    t_teardown(&r);
    return 0;
}

static void test_signals(void **state)
{
    (void)state;
    t_env_t e;
    t_env_init(&e);
    assert_int_equal(t_run(&e, 3, 60, rank_signals), 0);
    t_expect_results(&e, 2);
    t_env_fini(&e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vtable_and_args),
        cmocka_unit_test(test_zero_length),
        cmocka_unit_test(test_channels_independent),
        cmocka_unit_test(test_small_pairs_in_order),
        cmocka_unit_test(test_bidir_64m),
        cmocka_unit_test(test_all_pairs_2),
        cmocka_unit_test(test_all_pairs_3),
        cmocka_unit_test(test_all_pairs_8),
        cmocka_unit_test(test_peer_sigkilled),
        cmocka_unit_test(test_peer_closed),
        cmocka_unit_test(test_data_before_death),
        cmocka_unit_test(test_leader_exits),
        cmocka_unit_test(test_eos_closed),
        cmocka_unit_test(test_eos_exited),
        cmocka_unit_test(test_eos_closed_empty_payload),
        cmocka_unit_test(test_eos_exited_empty_payload),
        cmocka_unit_test(test_eos_from_callback),
        cmocka_unit_test(test_signals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
