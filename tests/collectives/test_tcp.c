/*
 * TCP transport, driven directly through its vtable by forked rank
 * processes sharing a file store. Every byte received is checked against a
 * pattern computed independently from (source, destination, channel,
 * offset).
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mc_log.h"
#include "tests_common.h"
#include "transport/transport.h"

#define T_TIMEOUT_MS 30000

static const mc_tl_ops_t *ops = &mc_tl_tcp_ops;

typedef struct t_ctx {
    char *dir;
    uint64_t uid;
    size_t len; /* bulk transfer size; eos: payload size */
    int nmsg;   /* small-message count; eos: T_EOS_DESTROY or _EXIT */
} t_ctx_t;

static uint8_t t_pat(int src, int dst, int ch, uint64_t i)
{
    uint64_t h = (i + 1) * 0x9E3779B97F4A7C15ull;
    h ^= (uint64_t)(src * 1000003 + dst * 1009 + ch * 17);
    h *= 0xBF58476D1CE4E5B9ull;
    return (uint8_t)(h >> 56);
}

static void t_fill(uint8_t *b, size_t n, int src, int dst, int ch,
                   uint64_t base)
{
    for (size_t i = 0; i < n; i++)
        b[i] = t_pat(src, dst, ch, base + i);
}

/* Index of the first wrong byte, or -1. */
static long t_check(const uint8_t *b, size_t n, int src, int dst, int ch,
                    uint64_t base)
{
    for (size_t i = 0; i < n; i++)
        if (b[i] != t_pat(src, dst, ch, base + i)) return (long)i;
    return -1;
}

/* Create + connect rank `rank` of `size` over the store in dir. peers NULL
 * means everyone else. */
static mc_status_t t_open(const t_ctx_t *c, const char *dir, int rank, int size,
                          int64_t timeout_ms, mc_store_h *store_p,
                          mc_tl_t **tl_p)
{
    mc_store_h store;
    mc_status_t st = mc_store_file_create(dir, &store);
    if (st != MC_OK) return st;
    uint8_t *peers = calloc((size_t)size, 1);
    for (int r = 0; r < size; r++)
        peers[r] = r != rank;
    mc_tl_params_t p = {.rank = rank,
                        .size = size,
                        .store = store,
                        .uid = c->uid,
                        .peers = peers,
                        .timeout_ms = timeout_ms};
    mc_tl_t *tl = NULL;
    st = ops->create(&p, &tl);
    if (st == MC_OK) {
        st = ops->connect(tl);
        if (st != MC_OK) ops->destroy(tl);
    }
    free(peers);
    if (st != MC_OK) {
        mc_store_destroy(store);
        return st;
    }
    *store_p = store;
    *tl_p = tl;
    return MC_OK;
}

static void t_close(mc_tl_t *tl, mc_store_h store)
{
    ops->destroy(tl);
    mc_store_destroy(store);
}

/* Drive progress/wait like the engine until all n xfers are done. */
static int t_wait_all(mc_tl_t *tl, mc_xfer_t *const *xs, int n,
                      int64_t timeout_ms)
{
    int64_t deadline = mc_now_us() + timeout_ms * 1000;
    for (;;) {
        ops->progress(tl);
        int left = 0;
        for (int i = 0; i < n; i++)
            left += xs[i]->status == MC_INPROGRESS;
        if (!left) return 0;
        if (mc_now_us() > deadline) return -1;
        ops->wait(tl, 10000);
    }
}

static int t_wait_one(mc_tl_t *tl, mc_xfer_t *x, int64_t timeout_ms)
{
    return t_wait_all(tl, &x, 1, timeout_ms);
}

/* One blocking message, for test coordination. */
static int t_xfer(mc_tl_t *tl, int send, int peer, int ch, void *buf,
                  size_t len)
{
    mc_xfer_t x = {.buf = buf, .len = len};
    mc_status_t st = send ? ops->post_send(tl, peer, ch, &x)
                          : ops->post_recv(tl, peer, ch, &x);
    if (st != MC_OK) return -1;
    if (t_wait_one(tl, &x, T_TIMEOUT_MS) != 0) return -1;
    return x.status == MC_OK ? 0 : -1;
}

/* A receive of len bytes from an ended stream must fail: refused at post
 * (leaving the xfer untouched) or completed with MC_ERR_PEER_FAILED, within
 * 5 s. Returns 0 if so. */
static int t_recv_fails(mc_tl_t *tl, int peer, int ch, size_t len)
{
    uint8_t *b = malloc(len ? len : 1);
    if (!b) return -1;
    mc_xfer_t x = {.buf = b, .len = len, .status = 12345};
    mc_status_t st = ops->post_recv(tl, peer, ch, &x);
    int rc;
    if (st != MC_OK)
        rc = st == MC_ERR_PEER_FAILED && x.status == 12345 ? 0 : -1;
    else if (t_wait_one(tl, &x, 5000) != 0)
        return -1; /* still posted: b stays allocated */
    else
        rc = x.status == MC_ERR_PEER_FAILED ? 0 : -1;
    free(b);
    return rc;
}

static void t_run(int size, int timeout_s,
                  int (*fn)(int rank, int size, void *arg), t_ctx_t *c)
{
    c->dir = mc_test_mkdtemp();
    assert_non_null(c->dir);
    if (!c->uid) c->uid = ((uint64_t)getpid() << 32) ^ (uint64_t)mc_now_us();
    int failed = mc_test_fork(size, timeout_s, fn, c);
    mc_test_rmtree(c->dir);
    free(c->dir);
    c->dir = NULL;
    assert_int_equal(failed, 0);
}

/* ------------------------------------------------------------------------ */
/* Bulk: every rank sends c->len bytes to every peer on both channels while
 * receiving the same, all posted before any progress. */

static int body_bulk(int rank, int size, void *arg)
{
    t_ctx_t *c = arg;
    mc_store_h store;
    mc_tl_t *tl;
    if (t_open(c, c->dir, rank, size, T_TIMEOUT_MS, &store, &tl) != MC_OK)
        return MC_TFAIL(rank, "open: %s", mc_last_error());
    int n = (size - 1) * MC_NUM_CHANNELS * 2, k = 0, rc = 0;
    mc_xfer_t *xs = calloc((size_t)n, sizeof(*xs));
    mc_xfer_t **xp = calloc((size_t)n, sizeof(*xp));
    for (int peer = 0; peer < size; peer++) {
        if (peer == rank) continue;
        for (int ch = 0; ch < MC_NUM_CHANNELS; ch++) {
            mc_xfer_t *s = &xs[k], *r = &xs[k + 1];
            s->buf = malloc(c->len);
            r->buf = malloc(c->len);
            if (!s->buf || !r->buf) return MC_TFAIL(rank, "malloc");
            s->len = r->len = c->len;
            t_fill(s->buf, c->len, rank, peer, ch, 0);
            memset(r->buf, 0, c->len);
            xp[k] = s;
            xp[k + 1] = r;
            if (ops->post_send(tl, peer, ch, s) != MC_OK ||
                ops->post_recv(tl, peer, ch, r) != MC_OK)
                return MC_TFAIL(rank, "post: %s", mc_last_error());
            k += 2;
        }
    }
    int64_t t0 = mc_now_us();
    if (t_wait_all(tl, xp, n, T_TIMEOUT_MS) != 0)
        rc = MC_TFAIL(rank, "bulk transfers did not finish (deadlock?)");
    double secs = (double)(mc_now_us() - t0) / 1e6;
    k = 0;
    for (int peer = 0; peer < size && !rc; peer++) {
        if (peer == rank) continue;
        for (int ch = 0; ch < MC_NUM_CHANNELS && !rc; ch++, k += 2) {
            if (xs[k].status != MC_OK || xs[k + 1].status != MC_OK)
                rc = MC_TFAIL(rank, "status %d/%d", xs[k].status,
                              xs[k + 1].status);
            else if (xs[k + 1].off != c->len)
                rc = MC_TFAIL(rank, "off %zu", xs[k + 1].off);
            long bad = t_check(xs[k + 1].buf, c->len, peer, rank, ch, 0);
            if (!rc && bad >= 0)
                rc = MC_TFAIL(rank, "from %d ch %d: wrong byte at %ld", peer,
                              ch, bad);
        }
    }
    if (rank == 0 && !rc)
        fprintf(stderr, "  bulk %d ranks x %zu MiB x %d ch: %.3f s\n", size,
                c->len >> 20, MC_NUM_CHANNELS, secs);
    for (int i = 0; i < n; i++)
        free(xs[i].buf);
    free(xs);
    free(xp);
    t_close(tl, store);
    return rc;
}

static void test_bulk_2(void **state)
{
    (void)state;
    t_ctx_t c = {.len = (size_t)64 << 20};
    t_run(2, 120, body_bulk, &c);
}

static void test_bulk_3(void **state)
{
    (void)state;
    t_ctx_t c = {.len = (size_t)8 << 20};
    t_run(3, 120, body_bulk, &c);
}

/* ------------------------------------------------------------------------ */
/* Framed small messages: a 64-byte header then a payload of varying size
 * (often 0). The receiver runs a state machine entirely from completion
 * callbacks: header done -> post the payload recv it announces, payload
 * done -> post the next header recv, on the stream being progressed. */

#define HDR 64

typedef struct t_rx {
    mc_tl_t *tl;
    int rank, peer, ch, idx, n, errors, done;
    uint8_t hdr[HDR];
    uint8_t *payload;
    mc_xfer_t hx, px;
} t_rx_t;

static uint32_t t_plen(int seq)
{
    return seq % 5 == 0 ? 0 : (uint32_t)(seq * 37) % 3000 + 1;
}

static void t_rx_post_hdr(t_rx_t *rx);

static void t_rx_payload_cb(mc_xfer_t *x)
{
    t_rx_t *rx = x->arg;
    if (x->status != MC_OK || t_check(rx->payload, x->len, rx->peer, rx->rank,
                                      rx->ch, (uint64_t)rx->idx << 16) >= 0)
        rx->errors++;
    if (++rx->idx < rx->n)
        t_rx_post_hdr(rx);
    else
        rx->done = 1;
}

static void t_rx_hdr_cb(mc_xfer_t *x)
{
    t_rx_t *rx = x->arg;
    uint32_t seq, len;
    memcpy(&seq, rx->hdr, 4);
    memcpy(&len, rx->hdr + 4, 4);
    if (x->status != MC_OK || seq != (uint32_t)rx->idx ||
        len != t_plen(rx->idx) || rx->hdr[8] != rx->peer ||
        rx->hdr[9] != rx->ch ||
        t_check(rx->hdr + 16, HDR - 16, rx->peer, rx->rank, rx->ch, seq) >= 0) {
        rx->errors++;
        rx->done = 1;
        return;
    }
    rx->px = (mc_xfer_t){
        .buf = rx->payload, .len = len, .cb = t_rx_payload_cb, .arg = rx};
    if (ops->post_recv(rx->tl, rx->peer, rx->ch, &rx->px) != MC_OK) {
        rx->errors++;
        rx->done = 1;
    }
}

static void t_rx_post_hdr(t_rx_t *rx)
{
    rx->hx =
        (mc_xfer_t){.buf = rx->hdr, .len = HDR, .cb = t_rx_hdr_cb, .arg = rx};
    if (ops->post_recv(rx->tl, rx->peer, rx->ch, &rx->hx) != MC_OK) {
        rx->errors++;
        rx->done = 1;
    }
}

static int body_small(int rank, int size, void *arg)
{
    t_ctx_t *c = arg;
    mc_store_h store;
    mc_tl_t *tl;
    if (t_open(c, c->dir, rank, size, T_TIMEOUT_MS, &store, &tl) != MC_OK)
        return MC_TFAIL(rank, "open: %s", mc_last_error());
    int ns = (size - 1) * MC_NUM_CHANNELS, rc = 0, n = c->nmsg;
    t_rx_t *rx = calloc((size_t)ns, sizeof(*rx));
    uint8_t **hdrs = calloc((size_t)ns, sizeof(*hdrs));
    uint8_t **pays = calloc((size_t)ns, sizeof(*pays));
    mc_xfer_t **sx = calloc((size_t)ns, sizeof(*sx));
    int k = 0;
    for (int peer = 0; peer < size; peer++) {
        if (peer == rank) continue;
        for (int ch = 0; ch < MC_NUM_CHANNELS; ch++, k++) {
            rx[k] = (t_rx_t){.tl = tl,
                             .rank = rank,
                             .peer = peer,
                             .ch = ch,
                             .n = n,
                             .payload = malloc(4096)};
            t_rx_post_hdr(&rx[k]);
            /* all sends of the stream queued at once: writev batches them */
            hdrs[k] = calloc((size_t)n, HDR);
            pays[k] = malloc((size_t)n * 4096);
            sx[k] = calloc((size_t)n * 2, sizeof(mc_xfer_t));
            for (int i = 0; i < n; i++) {
                uint8_t *h = hdrs[k] + (size_t)i * HDR;
                uint8_t *pl = pays[k] + (size_t)i * 4096;
                uint32_t seq = (uint32_t)i, len = t_plen(i);
                memcpy(h, &seq, 4);
                memcpy(h + 4, &len, 4);
                h[8] = (uint8_t)rank;
                h[9] = (uint8_t)ch;
                t_fill(h + 16, HDR - 16, rank, peer, ch, seq);
                t_fill(pl, len, rank, peer, ch, (uint64_t)i << 16);
                sx[k][2 * i] = (mc_xfer_t){.buf = h, .len = HDR};
                sx[k][2 * i + 1] = (mc_xfer_t){.buf = pl, .len = len};
                if (ops->post_send(tl, peer, ch, &sx[k][2 * i]) != MC_OK ||
                    ops->post_send(tl, peer, ch, &sx[k][2 * i + 1]) != MC_OK)
                    return MC_TFAIL(rank, "post_send: %s", mc_last_error());
            }
        }
    }
    int64_t deadline = mc_now_us() + (int64_t)T_TIMEOUT_MS * 1000;
    for (;;) {
        ops->progress(tl);
        int busy = 0;
        for (k = 0; k < ns; k++) {
            busy += !rx[k].done;
            busy += sx[k][2 * n - 1].status == MC_INPROGRESS;
        }
        if (!busy) break;
        if (mc_now_us() > deadline) {
            rc = MC_TFAIL(rank, "small messages did not finish");
            break;
        }
        ops->wait(tl, 10000);
    }
    for (k = 0; k < ns && !rc; k++) {
        if (rx[k].errors || rx[k].idx != n)
            rc = MC_TFAIL(rank, "stream from %d ch %d: %d errors, %d/%d msgs",
                          rx[k].peer, rx[k].ch, rx[k].errors, rx[k].idx, n);
        for (int i = 0; i < 2 * n && !rc; i++)
            if (sx[k][i].status != MC_OK)
                rc = MC_TFAIL(rank, "send %d status %d", i, sx[k][i].status);
    }
    for (k = 0; k < ns; k++) {
        free(rx[k].payload);
        free(hdrs[k]);
        free(pays[k]);
        free(sx[k]);
    }
    free(rx);
    free(hdrs);
    free(pays);
    free(sx);
    t_close(tl, store);
    return rc;
}

static void test_small_2(void **state)
{
    (void)state;
    t_ctx_t c = {.nmsg = 5000};
    t_run(2, 120, body_small, &c);
}

static void test_small_3(void **state)
{
    (void)state;
    t_ctx_t c = {.nmsg = 2000};
    t_run(3, 120, body_small, &c);
}

/* ------------------------------------------------------------------------ */
/* Zero-length transfers complete in FIFO order: never ahead of an
 * unfinished transfer posted before them on the same stream. */

static int t_order[16], t_norder;

static void t_order_cb(mc_xfer_t *x)
{
    if (t_norder < 16) t_order[t_norder++] = (int)(intptr_t)x->arg;
}

static int body_zero(int rank, int size, void *arg)
{
    t_ctx_t *c = arg;
    (void)size;
    mc_store_h store;
    mc_tl_t *tl;
    if (t_open(c, c->dir, rank, 2, T_TIMEOUT_MS, &store, &tl) != MC_OK)
        return MC_TFAIL(rank, "open: %s", mc_last_error());
    int peer = 1 - rank, rc = 0;
    static const size_t lens[6] = {0, 100, 0, 0, 50, 0};
    uint8_t buf[6][128];
    mc_xfer_t x[6];
    mc_xfer_t *xp[6];
    for (int i = 0; i < 6; i++)
        xp[i] = &x[i];

    /* lone zero-length transfers on an idle stream complete on progress */
    mc_xfer_t z[3];
    mc_xfer_t *zp[3] = {&z[0], &z[1], &z[2]};
    for (int i = 0; i < 3; i++) {
        z[i] = (mc_xfer_t){.buf = NULL, .len = 0};
        mc_status_t st = i == 1 ? ops->post_recv(tl, peer, MC_CH_P2P, &z[i])
                                : ops->post_send(tl, peer, MC_CH_P2P, &z[i]);
        if (st != MC_OK) return MC_TFAIL(rank, "post zero: %d", st);
    }
    if (t_wait_all(tl, zp, 3, 1000) != 0)
        return MC_TFAIL(rank, "lone zero-length transfers did not complete");
    for (int i = 0; i < 3; i++)
        if (z[i].status != MC_OK) return MC_TFAIL(rank, "zero status");

    t_norder = 0;
    for (int i = 0; i < 6; i++)
        x[i] = (mc_xfer_t){.buf = buf[i],
                           .len = lens[i],
                           .cb = t_order_cb,
                           .arg = (void *)(intptr_t)i};
    if (rank == 0) {
        /* receiver: post all, and check nothing completes out of order
         * before the sender has sent anything */
        memset(buf, 0, sizeof(buf));
        for (int i = 0; i < 6; i++)
            if (ops->post_recv(tl, peer, MC_CH_COLL, &x[i]) != MC_OK)
                return MC_TFAIL(rank, "post_recv");
        int64_t until = mc_now_us() + 100000;
        while (mc_now_us() < until) {
            ops->progress(tl);
            ops->wait(tl, 5000);
        }
        /* x[0] (zero-length, first in line) may complete; nothing after the
         * unfinished 100-byte receive may */
        for (int i = 1; i < 6; i++)
            if (x[i].status != MC_INPROGRESS)
                rc = MC_TFAIL(rank, "recv %d completed before its data", i);
        if (t_norder != 1 || t_order[0] != 0)
            rc = MC_TFAIL(rank, "%d completions before data", t_norder);
        uint8_t go = 1;
        if (t_xfer(tl, 1, peer, MC_CH_P2P, &go, 1) != 0)
            return MC_TFAIL(rank, "go");
        if (t_wait_all(tl, xp, 6, T_TIMEOUT_MS) != 0)
            return MC_TFAIL(rank, "recvs did not finish");
        for (int i = 0; i < 6; i++) {
            if (x[i].status != MC_OK) rc = MC_TFAIL(rank, "status %d", i);
            if (t_check(buf[i], lens[i], peer, rank, 0, (uint64_t)i << 8) >= 0)
                rc = MC_TFAIL(rank, "data %d", i);
        }
    } else {
        uint8_t go = 0;
        if (t_xfer(tl, 0, peer, MC_CH_P2P, &go, 1) != 0 || go != 1)
            return MC_TFAIL(rank, "go");
        for (int i = 0; i < 6; i++) {
            t_fill(buf[i], lens[i], rank, peer, 0, (uint64_t)i << 8);
            if (ops->post_send(tl, peer, MC_CH_COLL, &x[i]) != MC_OK)
                return MC_TFAIL(rank, "post_send");
        }
        if (t_wait_all(tl, xp, 6, T_TIMEOUT_MS) != 0)
            return MC_TFAIL(rank, "sends did not finish");
    }
    if (t_norder != 6) rc = MC_TFAIL(rank, "%d completions", t_norder);
    for (int i = 0; i < t_norder && !rc; i++)
        if (t_order[i] != i)
            rc = MC_TFAIL(rank, "completion %d was xfer %d", i, t_order[i]);
    t_close(tl, store);
    return rc;
}

static void test_zero_len(void **state)
{
    (void)state;
    t_ctx_t c = {0};
    t_run(2, 60, body_zero, &c);
}

/* ------------------------------------------------------------------------ */
/* Channels are independent: rank 0 pushes 64 MiB on p2p that rank 1 does not
 * read yet, and has a p2p receive posted that rank 1 does not feed yet;
 * 2000 collective messages each way must still get through. The big send
 * must still be pending afterwards (nobody buffers unread stream data in
 * user space), then drains once rank 1 posts the receive. */

static int body_channels(int rank, int size, void *arg)
{
    t_ctx_t *c = arg;
    (void)size;
    mc_store_h store;
    mc_tl_t *tl;
    if (t_open(c, c->dir, rank, 2, T_TIMEOUT_MS, &store, &tl) != MC_OK)
        return MC_TFAIL(rank, "open: %s", mc_last_error());
    int peer = 1 - rank, rc = 0;
    size_t big = (size_t)64 << 20;
    uint8_t *bigbuf = malloc(big);
    uint8_t small_p2p[1024];
    mc_xfer_t bx = {.buf = bigbuf, .len = big};
    mc_xfer_t sp = {.buf = small_p2p, .len = sizeof(small_p2p)};
    if (rank == 0) {
        t_fill(bigbuf, big, 0, 1, MC_CH_P2P, 0);
        if (ops->post_send(tl, peer, MC_CH_P2P, &bx) != MC_OK ||
            ops->post_recv(tl, peer, MC_CH_P2P, &sp) != MC_OK)
            return MC_TFAIL(rank, "post p2p");
    }
    enum { N = 2000, L = 256 };
    uint8_t *cs = malloc((size_t)N * L), *cr = calloc((size_t)N, L);
    mc_xfer_t *cx = calloc(2 * N, sizeof(*cx));
    mc_xfer_t **cp = calloc(2 * N, sizeof(*cp));
    t_fill(cs, (size_t)N * L, rank, peer, MC_CH_COLL, 0);
    for (int i = 0; i < N; i++) {
        cx[2 * i] = (mc_xfer_t){.buf = cs + (size_t)i * L, .len = L};
        cx[2 * i + 1] = (mc_xfer_t){.buf = cr + (size_t)i * L, .len = L};
        cp[2 * i] = &cx[2 * i];
        cp[2 * i + 1] = &cx[2 * i + 1];
        if (ops->post_send(tl, peer, MC_CH_COLL, &cx[2 * i]) != MC_OK ||
            ops->post_recv(tl, peer, MC_CH_COLL, &cx[2 * i + 1]) != MC_OK)
            return MC_TFAIL(rank, "post coll");
    }
    if (t_wait_all(tl, cp, 2 * N, 10000) != 0)
        return MC_TFAIL(rank, "collective channel blocked by p2p");
    for (int i = 0; i < 2 * N; i++)
        if (cx[i].status != MC_OK) return MC_TFAIL(rank, "coll status");
    if (t_check(cr, (size_t)N * L, peer, rank, MC_CH_COLL, 0) >= 0)
        rc = MC_TFAIL(rank, "coll data");
    if (rank == 0) {
        if (bx.status != MC_INPROGRESS)
            rc = MC_TFAIL(rank, "64 MiB p2p send finished although the peer "
                                "never posted a receive");
        if (sp.status != MC_INPROGRESS)
            rc = MC_TFAIL(rank, "p2p recv finished without data");
        uint8_t go = 1;
        if (t_xfer(tl, 1, peer, MC_CH_COLL, &go, 1) != 0)
            return MC_TFAIL(rank, "go");
    } else {
        uint8_t go = 0;
        if (t_xfer(tl, 0, peer, MC_CH_COLL, &go, 1) != 0)
            return MC_TFAIL(rank, "go");
        memset(bigbuf, 0, big);
        t_fill(small_p2p, sizeof(small_p2p), 1, 0, MC_CH_P2P, 0);
        if (ops->post_recv(tl, peer, MC_CH_P2P, &bx) != MC_OK ||
            ops->post_send(tl, peer, MC_CH_P2P, &sp) != MC_OK)
            return MC_TFAIL(rank, "post p2p");
    }
    mc_xfer_t *both[2] = {&bx, &sp};
    if (t_wait_all(tl, both, 2, T_TIMEOUT_MS) != 0)
        return MC_TFAIL(rank, "p2p did not drain");
    if (bx.status != MC_OK || sp.status != MC_OK)
        rc = MC_TFAIL(rank, "p2p status %d %d", bx.status, sp.status);
    if (rank == 1 && t_check(bigbuf, big, 0, 1, MC_CH_P2P, 0) >= 0)
        rc = MC_TFAIL(rank, "big p2p data");
    if (rank == 0 &&
        t_check(small_p2p, sizeof(small_p2p), 1, 0, MC_CH_P2P, 0) >= 0)
        rc = MC_TFAIL(rank, "small p2p data");
    free(bigbuf);
    free(cs);
    free(cr);
    free(cx);
    free(cp);
    t_close(tl, store);
    return rc;
}

static void test_channels_independent(void **state)
{
    (void)state;
    t_ctx_t c = {0};
    t_run(2, 120, body_channels, &c);
}

/* ------------------------------------------------------------------------ */
/* A peer that dies (SIGKILL) while we have receives and a blocked send
 * posted to it: all of them complete with MC_ERR_PEER_FAILED within 1 s,
 * later posts are refused, and the survivors still talk to each other. The
 * victim (rank size-1) runs in a grandchild so the rank process itself can
 * exit 0 after checking it died of SIGKILL. */

static int victim(t_ctx_t *c, int rank, int size)
{
    alarm(30); /* never outlive the test */
    mc_store_h store;
    mc_tl_t *tl;
    if (t_open(c, c->dir, rank, size, T_TIMEOUT_MS, &store, &tl) != MC_OK)
        return MC_TFAIL(rank, "open: %s", mc_last_error());
    uint8_t b;
    if (t_xfer(tl, 0, 0, MC_CH_COLL, &b, 1) != 0)
        return MC_TFAIL(rank, "ready");
    raise(SIGKILL);
    return 1;
}

static int body_kill(int rank, int size, void *arg)
{
    t_ctx_t *c = arg;
    int v = size - 1;
    if (rank == v) {
        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0) return MC_TFAIL(rank, "fork");
        if (pid == 0) _exit(victim(c, rank, size));
        int ws;
        if (waitpid(pid, &ws, 0) != pid) return MC_TFAIL(rank, "waitpid");
        if (!WIFSIGNALED(ws) || WTERMSIG(ws) != SIGKILL)
            return MC_TFAIL(rank, "victim did not die of SIGKILL");
        return 0;
    }
    mc_store_h store;
    mc_tl_t *tl;
    if (t_open(c, c->dir, rank, size, T_TIMEOUT_MS, &store, &tl) != MC_OK)
        return MC_TFAIL(rank, "open: %s", mc_last_error());
    int rc = 0;
    if (rank == 0) {
        size_t big = (size_t)32 << 20;
        uint8_t *bb = calloc(1, big), r1[64], r2[64];
        mc_xfer_t x[3] = {{.buf = r1, .len = sizeof(r1)},
                          {.buf = r2, .len = sizeof(r2)},
                          {.buf = bb, .len = big}};
        mc_xfer_t *xp[3] = {&x[0], &x[1], &x[2]};
        if (ops->post_recv(tl, v, MC_CH_COLL, &x[0]) != MC_OK ||
            ops->post_recv(tl, v, MC_CH_P2P, &x[1]) != MC_OK ||
            ops->post_send(tl, v, MC_CH_P2P, &x[2]) != MC_OK)
            return MC_TFAIL(rank, "post");
        uint8_t ready = 1;
        if (t_xfer(tl, 1, v, MC_CH_COLL, &ready, 1) != 0)
            return MC_TFAIL(rank, "ready");
        int64_t t0 = mc_now_us();
        if (t_wait_all(tl, xp, 3, 5000) != 0)
            return MC_TFAIL(rank, "xfers to the dead peer did not complete");
        int64_t dt = mc_now_us() - t0;
        fprintf(stderr, "  rank 0 saw peer %d fail after %.1f ms\n", v,
                (double)dt / 1000);
        if (dt > 1000000) rc = MC_TFAIL(rank, "took %lld us", (long long)dt);
        for (int i = 0; i < 3; i++)
            if (x[i].status != MC_ERR_PEER_FAILED)
                rc = MC_TFAIL(rank, "xfer %d status %d", i, x[i].status);
        if (ops->peer_status(tl, v) != MC_ERR_PEER_FAILED)
            rc = MC_TFAIL(rank, "peer_status not failed");
        mc_xfer_t y = {.buf = r1, .len = 1};
        if (ops->post_send(tl, v, MC_CH_COLL, &y) != MC_ERR_PEER_FAILED ||
            ops->post_recv(tl, v, MC_CH_P2P, &y) != MC_ERR_PEER_FAILED)
            rc = MC_TFAIL(rank, "post to a failed peer accepted");
        free(bb);
    } else {
        /* nothing posted to the victim: wait + peer_status must notice */
        int64_t t0 = mc_now_us();
        while (ops->peer_status(tl, v) == MC_OK &&
               mc_now_us() - t0 < 10000000) {
            ops->progress(tl);
            ops->wait(tl, 10000);
        }
        if (ops->peer_status(tl, v) != MC_ERR_PEER_FAILED)
            rc = MC_TFAIL(rank, "idle survivor did not see the death");
    }
    if (size == 3 && rank < 2) {
        /* the survivors still work (checked before the exchange: after it
         * the other survivor may already have closed its transport) */
        if (ops->peer_status(tl, 1 - rank) != MC_OK)
            rc = MC_TFAIL(rank, "live peer reported failed");
        for (int ch = 0; ch < MC_NUM_CHANNELS; ch++) {
            uint8_t s[1000], r[1000];
            t_fill(s, sizeof(s), rank, 1 - rank, ch, 7);
            mc_xfer_t a = {.buf = s, .len = sizeof(s)};
            mc_xfer_t b = {.buf = r, .len = sizeof(r)};
            mc_xfer_t *ab[2] = {&a, &b};
            if (ops->post_send(tl, 1 - rank, ch, &a) != MC_OK ||
                ops->post_recv(tl, 1 - rank, ch, &b) != MC_OK ||
                t_wait_all(tl, ab, 2, T_TIMEOUT_MS) != 0 || a.status != MC_OK ||
                b.status != MC_OK ||
                t_check(r, sizeof(r), 1 - rank, rank, ch, 7) >= 0)
                rc = MC_TFAIL(rank, "survivor exchange on ch %d", ch);
        }
    }
    t_close(tl, store);
    return rc;
}

static void test_kill_2(void **state)
{
    (void)state;
    t_ctx_t c = {0};
    t_run(2, 60, body_kill, &c);
}

static void test_kill_3(void **state)
{
    (void)state;
    t_ctx_t c = {0};
    t_run(3, 60, body_kill, &c);
}

/* ------------------------------------------------------------------------ */
/* Graceful close: rank 1 sends 100 x 1 KiB on p2p (fits in the socket
 * buffers, so the sends complete), destroys its transport and says so in
 * the store. Only then does rank 0 post a coll receive (which meets the EOF
 * first and fails, failing the peer) and a chain of p2p receives, each
 * posted from the previous one's callback: every p2p message sent before
 * the close must still arrive intact, as the p2p stream ends on its own;
 * a further p2p receive then fails. */

typedef struct t_chain {
    mc_tl_t *tl;
    uint8_t buf[100][1024];
    mc_xfer_t x;
    int idx, ok;
} t_chain_t;

static void t_chain_cb(mc_xfer_t *x)
{
    t_chain_t *c = x->arg;
    if (x->status != MC_OK) return;
    c->ok++;
    if (++c->idx == 100) return;
    c->x = (mc_xfer_t){
        .buf = c->buf[c->idx], .len = 1024, .cb = t_chain_cb, .arg = c};
    if (ops->post_recv(c->tl, 1, MC_CH_P2P, &c->x) != MC_OK) c->idx = 1000;
}

static int body_graceful(int rank, int size, void *arg)
{
    t_ctx_t *c = arg;
    (void)size;
    mc_store_h store;
    mc_tl_t *tl;
    if (t_open(c, c->dir, rank, 2, T_TIMEOUT_MS, &store, &tl) != MC_OK)
        return MC_TFAIL(rank, "open: %s", mc_last_error());
    if (rank == 1) {
        static uint8_t b[100][1024];
        mc_xfer_t x[100];
        mc_xfer_t *xp[100];
        for (int i = 0; i < 100; i++) {
            t_fill(b[i], 1024, 1, 0, MC_CH_P2P, (uint64_t)i << 10);
            x[i] = (mc_xfer_t){.buf = b[i], .len = 1024};
            xp[i] = &x[i];
            if (ops->post_send(tl, 0, MC_CH_P2P, &x[i]) != MC_OK)
                return MC_TFAIL(rank, "post");
        }
        if (t_wait_all(tl, xp, 100, 10000) != 0)
            return MC_TFAIL(rank, "sends did not complete");
        t_close(tl, store);
        if (mc_store_file_create(c->dir, &store) != MC_OK) return 1;
        mc_store_set(store, "closed", "1", 1);
        mc_store_destroy(store);
        return 0;
    }
    char b[4];
    size_t len;
    if (mc_store_get(store, "closed", 10000, b, sizeof(b), &len) != MC_OK)
        return MC_TFAIL(rank, "rank 1 never closed");
    usleep(20000); /* let every FIN land */
    int rc = 0;
    static t_chain_t ch;
    ch.tl = tl;
    uint8_t cb[64];
    mc_xfer_t cx = {.buf = cb, .len = sizeof(cb)};
    if (ops->post_recv(tl, 1, MC_CH_COLL, &cx) != MC_OK)
        return MC_TFAIL(rank, "post coll");
    ch.x = (mc_xfer_t){
        .buf = ch.buf[0], .len = 1024, .cb = t_chain_cb, .arg = &ch};
    if (ops->post_recv(tl, 1, MC_CH_P2P, &ch.x) != MC_OK)
        return MC_TFAIL(rank, "post p2p");
    int64_t deadline = mc_now_us() + 5000000;
    while (cx.status == MC_INPROGRESS || ch.x.status == MC_INPROGRESS) {
        ops->progress(tl);
        if (mc_now_us() > deadline)
            return MC_TFAIL(rank, "receives did not finish (chain at %d)",
                            ch.idx);
        ops->wait(tl, 10000);
    }
    if (cx.status != MC_ERR_PEER_FAILED)
        rc = MC_TFAIL(rank, "coll status %d", cx.status);
    if (ch.ok != 100 || ch.idx != 100)
        rc = MC_TFAIL(rank,
                      "%d of 100 p2p messages sent before the close "
                      "arrived",
                      ch.ok);
    for (int i = 0; i < ch.ok; i++)
        if (t_check(ch.buf[i], 1024, 1, 0, MC_CH_P2P, (uint64_t)i << 10) >= 0)
            rc = MC_TFAIL(rank, "p2p message %d corrupt", i);
    if (t_recv_fails(tl, 1, MC_CH_P2P, 1024) != 0)
        rc = MC_TFAIL(rank, "p2p receive past the end did not fail");
    if (ops->peer_status(tl, 1) != MC_ERR_PEER_FAILED)
        rc = MC_TFAIL(rank, "closed peer not reported failed");
    t_close(tl, store);
    return rc;
}

static void test_graceful_close(void **state)
{
    (void)state;
    t_ctx_t c = {0};
    t_run(2, 60, body_graceful, &c);
}

/* ------------------------------------------------------------------------ */
/* End of stream, read the way the engine reads frames. Rank 1 writes a
 * 64-byte header and a payload on each channel, plus 10 bytes of a torn
 * header on p2p, and at once destroys its transport (or _exits). Rank 0
 * posts the coll header receive and waits for it, waits until peer_status
 * reports the close (sends are then refused), and only THEN posts the
 * payload receive, which must get the right bytes; a further receive
 * fails. Then the p2p stream, which ends on its own after coll ended: its
 * frame arrives the same way and the torn header fails partly filled.
 * Large payloads: rank 0 uses 16 KiB socket buffers, so most of the data
 * is still in rank 1's kernel when it exits and the FINs come behind it;
 * the close cannot be seen before reading then, so rank 0 does not wait
 * for it before posting the payload receive. */

enum { T_EOS_DESTROY, T_EOS_EXIT };
#define T_EOS_SMALL 65536 /* fits in any socket buffers */

static int eos_sender(t_ctx_t *c, mc_tl_t *tl, mc_store_h store)
{
    size_t plen = c->len;
    uint8_t hdr[MC_NUM_CHANNELS][HDR], tail[10];
    uint8_t *pay = malloc(plen ? MC_NUM_CHANNELS * plen : 1);
    if (!pay) return MC_TFAIL(1, "malloc");
    mc_xfer_t x[2 * MC_NUM_CHANNELS + 1];
    mc_xfer_t *xp[2 * MC_NUM_CHANNELS + 1];
    for (int ch = 0; ch < MC_NUM_CHANNELS; ch++) {
        t_fill(hdr[ch], HDR, 1, 0, ch, 0);
        t_fill(pay + ch * plen, plen, 1, 0, ch, 1000);
        x[2 * ch] = (mc_xfer_t){.buf = hdr[ch], .len = HDR};
        x[2 * ch + 1] = (mc_xfer_t){.buf = pay + ch * plen, .len = plen};
    }
    t_fill(tail, sizeof(tail), 1, 0, MC_CH_P2P, 99999);
    x[2 * MC_NUM_CHANNELS] = (mc_xfer_t){.buf = tail, .len = sizeof(tail)};
    for (int i = 0; i < 2 * MC_NUM_CHANNELS + 1; i++) {
        xp[i] = &x[i];
        int ch = i < 2 * MC_NUM_CHANNELS ? i / 2 : MC_CH_P2P;
        if (ops->post_send(tl, 0, ch, &x[i]) != MC_OK)
            return MC_TFAIL(1, "post_send: %s", mc_last_error());
    }
    if (t_wait_all(tl, xp, 2 * MC_NUM_CHANNELS + 1, 10000) != 0)
        return MC_TFAIL(1, "sends did not complete");
    /* the kernel still has bytes of a big payload to deliver after this */
    if (c->nmsg == T_EOS_EXIT) _exit(0);
    t_close(tl, store);
    free(pay);
    return 0;
}

static int body_eos(int rank, int size, void *arg)
{
    t_ctx_t *c = arg;
    (void)size;
    mc_store_h store;
    mc_tl_t *tl;
    size_t plen = c->len;
    int wait_close = plen <= T_EOS_SMALL;
    if (rank == 0 && !wait_close) setenv("MOONCAKE_TCP_BUF_BYTES", "16384", 1);
    if (t_open(c, c->dir, rank, 2, T_TIMEOUT_MS, &store, &tl) != MC_OK)
        return MC_TFAIL(rank, "open: %s", mc_last_error());
    if (rank == 1) return eos_sender(c, tl, store);

    uint8_t *pay = malloc(plen ? plen : 1);
    if (!pay) return MC_TFAIL(rank, "malloc");
    int rc = 0;
    for (int ch = 0; ch < MC_NUM_CHANNELS && !rc; ch++) {
        uint8_t hdr[HDR];
        memset(hdr, 0, sizeof(hdr));
        mc_xfer_t hx = {.buf = hdr, .len = HDR};
        if (ops->post_recv(tl, 1, ch, &hx) != MC_OK ||
            t_wait_one(tl, &hx, T_TIMEOUT_MS) != 0 || hx.status != MC_OK ||
            t_check(hdr, HDR, 1, 0, ch, 0) >= 0) {
            rc = MC_TFAIL(rank, "%s header: status %d", ch ? "p2p" : "coll",
                          hx.status);
            break;
        }
        if (ch == MC_CH_COLL && wait_close) {
            /* the close is known before the payload receive is posted */
            int64_t t0 = mc_now_us();
            while (ops->peer_status(tl, 1) == MC_OK &&
                   mc_now_us() - t0 < 5000000) {
                ops->progress(tl);
                ops->wait(tl, 10000);
            }
            if (ops->peer_status(tl, 1) != MC_ERR_PEER_FAILED) {
                rc = MC_TFAIL(rank, "close not seen within 5 s");
                break;
            }
            mc_xfer_t sx = {.buf = hdr, .len = HDR, .status = 12345};
            if (ops->post_send(tl, 1, ch, &sx) != MC_ERR_PEER_FAILED ||
                sx.status != 12345)
                rc = MC_TFAIL(rank, "send to a closed peer not refused");
        }
        memset(pay, 0, plen ? plen : 1);
        mc_xfer_t px = {.buf = pay, .len = plen};
        mc_status_t st = ops->post_recv(tl, 1, ch, &px);
        if (st != MC_OK || t_wait_one(tl, &px, T_TIMEOUT_MS) != 0 ||
            px.status != MC_OK || t_check(pay, plen, 1, 0, ch, 1000) >= 0) {
            rc = MC_TFAIL(rank,
                          "%s payload of %zu bytes posted after the close: "
                          "post %d, status %d",
                          ch ? "p2p" : "coll", plen, st, px.status);
            break;
        }
        if (ch == MC_CH_P2P) {
            /* the torn header: 10 of 64 bytes, then EOF */
            memset(hdr, 0, sizeof(hdr));
            hx = (mc_xfer_t){.buf = hdr, .len = HDR};
            if (ops->post_recv(tl, 1, ch, &hx) != MC_OK ||
                t_wait_one(tl, &hx, 5000) != 0 ||
                hx.status != MC_ERR_PEER_FAILED ||
                t_check(hdr, 10, 1, 0, ch, 99999) >= 0)
                rc = MC_TFAIL(rank, "torn header: status %d", hx.status);
        }
        if (t_recv_fails(tl, 1, ch, HDR) != 0 || t_recv_fails(tl, 1, ch, 1))
            rc = MC_TFAIL(rank, "%s receive past the end did not fail",
                          ch ? "p2p" : "coll");
    }
    if (ops->peer_status(tl, 1) != MC_ERR_PEER_FAILED)
        rc = MC_TFAIL(rank, "closed peer not reported failed");
    free(pay);
    t_close(tl, store);
    return rc;
}

/* Several rounds each: the race between the close and the reads varies. */
static void t_eos(int how, size_t plen)
{
    for (int i = 0; i < 5; i++) {
        t_ctx_t c = {.len = plen, .nmsg = how};
        t_run(2, 60, body_eos, &c);
    }
}

static void test_eos_destroy(void **state)
{
    (void)state;
    t_eos(T_EOS_DESTROY, 6000);
}

static void test_eos_exit(void **state)
{
    (void)state;
    t_eos(T_EOS_EXIT, 6000);
}

static void test_eos_zero_payload(void **state)
{
    (void)state;
    t_eos(T_EOS_DESTROY, 0);
    t_eos(T_EOS_EXIT, 0);
}

/* As large as rank 1's send buffer surely holds (its send must complete
 * before it exits), at most 3 MiB. */
static void test_eos_exit_large(void **state)
{
    (void)state;
    long long wmax = 0;
    FILE *f = fopen("/proc/sys/net/core/wmem_max", "r");
    if (f) {
        if (fscanf(f, "%lld", &wmax) != 1) wmax = 0;
        fclose(f);
    }
    size_t plen = wmax > (3 << 20) ? (size_t)3 << 20
                  : wmax > 131072  ? (size_t)wmax
                                   : 131072;
    t_eos(T_EOS_EXIT, plen);
    t_eos(T_EOS_DESTROY, plen);
}

/* ------------------------------------------------------------------------ */
/* Held sends (sent_held, ack_now: the pair confirmation). With 16 KiB
 * socket buffers, rank 1 sends 256 KiB on coll that rank 0 does not read
 * yet: sent_held must say "not yet" while bytes wait in rank 1's kernel
 * (it does not read the peer's buffers: it asks its own). rank 0 then
 * reads it all and calls ack_now, and sent_held must turn MC_OK. Then the
 * case the engine relies on: rank 0 sends 100 bytes that rank 1 never
 * reads (so rank 1's exit resets the connection and drops its send
 * queue), rank 1 sends a frame, waits until sent_held says the frame is
 * held, and exits at once. rank 0 reads nothing until it knows rank 1 is
 * dead; the frame must still arrive whole, then the stream ends. */

#define T_HELD_BIG ((size_t)256 << 10)
#define T_HELD_FRAME 6000

static int held_wait(mc_tl_t *tl, int peer, int64_t timeout_ms)
{
    int64_t deadline = mc_now_us() + timeout_ms * 1000;
    mc_status_t st;
    while ((st = ops->sent_held(tl, peer, MC_CH_COLL)) == MC_INPROGRESS &&
           mc_now_us() < deadline) {
        ops->progress(tl);
        ops->wait(tl, 1000);
    }
    return st == MC_OK ? 0 : -1;
}

static int body_held(int rank, int size, void *arg)
{
    t_ctx_t *c = arg;
    (void)size;
    setenv("MOONCAKE_TCP_BUF_BYTES", "16384", 1);
    mc_store_h store;
    mc_tl_t *tl;
    if (t_open(c, c->dir, rank, 2, T_TIMEOUT_MS, &store, &tl) != MC_OK)
        return MC_TFAIL(rank, "open: %s", mc_last_error());
    uint8_t *big = malloc(T_HELD_BIG), frame[T_HELD_FRAME], junk[100];
    if (!big) return MC_TFAIL(rank, "malloc");
    char flag = 1;
    size_t len = 0;
    int rc = 0;
    if (rank == 1) {
        t_fill(big, T_HELD_BIG, 1, 0, MC_CH_COLL, 0);
        mc_xfer_t x = {.buf = big, .len = T_HELD_BIG};
        if (ops->sent_held(tl, 0, MC_CH_COLL) != MC_OK)
            return MC_TFAIL(rank, "nothing sent yet, but not held");
        if (ops->post_send(tl, 0, MC_CH_COLL, &x) != MC_OK)
            return MC_TFAIL(rank, "post_send: %s", mc_last_error());
        for (int i = 0; i < 10; i++) {
            ops->progress(tl);
            usleep(10000);
        }
        if (x.status != MC_INPROGRESS)
            return MC_TFAIL(rank, "256 KiB went into 16 KiB buffers");
        if (ops->sent_held(tl, 0, MC_CH_COLL) != MC_INPROGRESS)
            return MC_TFAIL(rank, "unread bytes reported held");
        mc_store_set(store, "held/waiting", &flag, 1);
        if (t_wait_one(tl, &x, T_TIMEOUT_MS) != 0 || x.status != MC_OK)
            return MC_TFAIL(rank, "big send: status %d", x.status);
        if (held_wait(tl, 0, 5000) != 0)
            return MC_TFAIL(rank, "read and acknowledged, yet not held "
                                  "within 5 s");
        /* rank 0's 100 bytes are in our kernel, unread */
        if (mc_store_get(store, "held/junk", T_TIMEOUT_MS, &flag, 1, &len) !=
            MC_OK)
            return MC_TFAIL(rank, "rank 0 never sent its bytes");
        t_fill(frame, T_HELD_FRAME, 1, 0, MC_CH_COLL, 777);
        mc_xfer_t fx = {.buf = frame, .len = T_HELD_FRAME};
        if (ops->post_send(tl, 0, MC_CH_COLL, &fx) != MC_OK ||
            t_wait_one(tl, &fx, T_TIMEOUT_MS) != 0 || fx.status != MC_OK)
            return MC_TFAIL(rank, "frame send: status %d", fx.status);
        if (held_wait(tl, 0, 5000) != 0)
            return MC_TFAIL(rank, "frame not held within 5 s");
        _exit(0); /* unread bytes: the kernel resets the connection */
    }
    if (mc_store_get(store, "held/waiting", T_TIMEOUT_MS, &flag, 1, &len) !=
        MC_OK)
        return MC_TFAIL(rank, "rank 1 never reported its send waiting");
    mc_xfer_t x = {.buf = big, .len = T_HELD_BIG};
    if (ops->post_recv(tl, 1, MC_CH_COLL, &x) != MC_OK ||
        t_wait_one(tl, &x, T_TIMEOUT_MS) != 0 || x.status != MC_OK ||
        t_check(big, T_HELD_BIG, 1, 0, MC_CH_COLL, 0) >= 0)
        rc = MC_TFAIL(rank, "big receive: status %d", x.status);
    ops->ack_now(tl, 1, MC_CH_COLL);
    memset(junk, 0x5a, sizeof(junk));
    mc_xfer_t jx = {.buf = junk, .len = sizeof(junk)};
    if (!rc && (ops->post_send(tl, 1, MC_CH_COLL, &jx) != MC_OK ||
                t_wait_one(tl, &jx, T_TIMEOUT_MS) != 0 || jx.status != MC_OK))
        rc = MC_TFAIL(rank, "junk send: status %d", jx.status);
    if (!rc) mc_store_set(store, "held/junk", &flag, 1);
    /* read nothing until rank 1 is known dead */
    int64_t t0 = mc_now_us();
    while (!rc && ops->peer_status(tl, 1) == MC_OK &&
           mc_now_us() - t0 < 10000000) {
        ops->progress(tl);
        ops->wait(tl, 10000);
    }
    if (!rc && ops->peer_status(tl, 1) != MC_ERR_PEER_FAILED)
        rc = MC_TFAIL(rank, "rank 1's exit not seen within 10 s");
    /* our 100 bytes were acknowledged before the reset, or the answer is
     * a failure: never "not yet" for a dead peer */
    if (!rc && ops->sent_held(tl, 1, MC_CH_COLL) == MC_INPROGRESS)
        rc = MC_TFAIL(rank, "sent_held to a dead peer: still not yet");
    memset(frame, 0, sizeof(frame));
    mc_xfer_t fx = {.buf = frame, .len = T_HELD_FRAME};
    if (!rc && (ops->post_recv(tl, 1, MC_CH_COLL, &fx) != MC_OK ||
                t_wait_one(tl, &fx, T_TIMEOUT_MS) != 0 ||
                fx.status != MC_OK ||
                t_check(frame, T_HELD_FRAME, 1, 0, MC_CH_COLL, 777) >= 0))
        rc = MC_TFAIL(rank, "held frame lost after the reset: status %d",
                      fx.status);
    if (!rc && t_recv_fails(tl, 1, MC_CH_COLL, 1) != 0)
        rc = MC_TFAIL(rank, "receive past the end did not fail");
    free(big);
    t_close(tl, store);
    return rc;
}

static void test_held_reset(void **state)
{
    (void)state;
    for (int i = 0; i < 3; i++) {
        t_ctx_t c = {0};
        t_run(2, 60, body_held, &c);
    }
}

/* ------------------------------------------------------------------------ */
/* The bound for broken cases: rank 1 half-closes only its coll socket (as
 * if that connection alone had been reset) and keeps p2p open and silent.
 * Rank 0 sees the peer fail; a p2p receive posted then must fail after
 * about MOONCAKE_TCP_CLOSE_GRACE_MS (300 here) instead of hanging. Rank 1
 * finds its coll socket as the one holding the byte rank 0 sent on it. */

/* Find the stream socket holding exactly the one byte the peer sent on it
 * (within 5 s), read the byte and half-close the socket. 0 if done. */
static int t_half_close_marked(void)
{
    int fd = -1;
    for (int64_t t0 = mc_now_us(); fd < 0 && mc_now_us() - t0 < 5000000;) {
        for (int i = 3; i < 1024 && fd < 0; i++) {
            int type = 0, n = 0;
            socklen_t sl = sizeof(type);
            if (getsockopt(i, SOL_SOCKET, SO_TYPE, &type, &sl) == 0 &&
                type == SOCK_STREAM && ioctl(i, FIONREAD, &n) == 0 && n == 1)
                fd = i;
        }
        if (fd < 0) usleep(1000);
    }
    char b;
    if (fd < 0 || recv(fd, &b, 1, 0) != 1 || shutdown(fd, SHUT_WR) != 0)
        return -1;
    return 0;
}

static int stall_victim(mc_tl_t *tl, mc_store_h store)
{
    if (t_half_close_marked() != 0)
        return MC_TFAIL(1, "half-close of the coll socket failed");
    char v[4];
    size_t len;
    mc_status_t st = mc_store_get(store, "stall_done", 20000, v, 4, &len);
    t_close(tl, store);
    return st == MC_OK ? 0 : MC_TFAIL(1, "rank 0 never finished");
}

static int body_stall(int rank, int size, void *arg)
{
    t_ctx_t *c = arg;
    (void)size;
    mc_store_h store;
    mc_tl_t *tl;
    if (rank == 0) {
        setenv("MOONCAKE_TCP_CLOSE_GRACE_MS", "300", 1);
        /* the victim is alive: the close check would (rightly) not count
         * its half-close as a death; this test is about a dead peer */
        setenv("MOONCAKE_TCP_CLOSE_CHECK", "0", 1);
    }
    if (t_open(c, c->dir, rank, 2, T_TIMEOUT_MS, &store, &tl) != MC_OK)
        return MC_TFAIL(rank, "open: %s", mc_last_error());
    if (rank == 1) return stall_victim(tl, store);
    int rc = 0;
    uint8_t one = 1, b[64];
    if (t_xfer(tl, 1, 1, MC_CH_COLL, &one, 1) != 0)
        return MC_TFAIL(rank, "coll byte");
    int64_t t0 = mc_now_us();
    while (ops->peer_status(tl, 1) == MC_OK && mc_now_us() - t0 < 5000000) {
        ops->progress(tl);
        ops->wait(tl, 10000);
    }
    if (ops->peer_status(tl, 1) != MC_ERR_PEER_FAILED)
        rc = MC_TFAIL(rank, "half-close not seen");
    mc_xfer_t x = {.buf = b, .len = sizeof(b)};
    if (!rc && ops->post_recv(tl, 1, MC_CH_P2P, &x) != MC_OK)
        rc = MC_TFAIL(rank, "p2p receive refused before its stream ended");
    t0 = mc_now_us();
    if (!rc && t_wait_one(tl, &x, 10000) != 0)
        return MC_TFAIL(rank, "p2p receive from a dead peer hangs");
    int64_t dt = mc_now_us() - t0;
    if (!rc)
        fprintf(stderr, "  stalled receive failed after %.0f ms\n",
                (double)dt / 1000);
    if (!rc && x.status != MC_ERR_PEER_FAILED)
        rc = MC_TFAIL(rank, "p2p status %d", x.status);
    if (!rc && (dt < 250000 || dt > 3000000))
        rc =
            MC_TFAIL(rank, "failed after %lld us, grace 300 ms", (long long)dt);
    mc_store_set(store, "stall_done", "1", 1);
    t_close(tl, store);
    return rc;
}

/* The close check: rank 1 half-closes its coll socket while it lives (as
 * a live peer's kernel does with a connection it timed out). Rank 0 finds
 * its listener answering: no evidence of death, the peer stays "ok" and a
 * coll receive posted then waits. Then rank 1 exits: its p2p stream ends
 * too, a new check finds the listener gone, and the peer fails with the
 * waiting receive. */
static int body_close_check(int rank, int size, void *arg)
{
    t_ctx_t *c = arg;
    (void)size;
    mc_store_h store;
    mc_tl_t *tl;
    if (t_open(c, c->dir, rank, 2, T_TIMEOUT_MS, &store, &tl) != MC_OK)
        return MC_TFAIL(rank, "open: %s", mc_last_error());
    if (rank == 1) {
        if (t_half_close_marked() != 0)
            return MC_TFAIL(1, "half-close failed");
        char v[4];
        size_t len;
        if (mc_store_get(store, "chk_exit", 20000, v, 4, &len) != MC_OK)
            return MC_TFAIL(1, "rank 0 never said exit");
        _exit(0); /* the kernel closes everything, listener included */
    }
    uint8_t one = 1;
    if (t_xfer(tl, 1, 1, MC_CH_COLL, &one, 1) != 0)
        return MC_TFAIL(rank, "coll byte");
    int rc = 0;
    /* well past the check's 50 ms: the peer stays ok */
    for (int64_t t0 = mc_now_us(); mc_now_us() - t0 < 500000 && !rc;) {
        if (ops->peer_status(tl, 1) != MC_OK)
            rc = MC_TFAIL(rank, "a live peer's half-close counted as death");
        ops->progress(tl);
        ops->wait(tl, 10000);
    }
    static uint8_t b[8];
    static mc_xfer_t x;
    x = (mc_xfer_t){.buf = b, .len = sizeof(b)};
    if (!rc && ops->post_recv(tl, 1, MC_CH_COLL, &x) != MC_OK)
        rc = MC_TFAIL(rank, "coll receive refused");
    for (int64_t t0 = mc_now_us(); !rc && mc_now_us() - t0 < 200000;) {
        ops->progress(tl);
        ops->wait(tl, 10000);
    }
    if (!rc && x.status != MC_INPROGRESS)
        rc = MC_TFAIL(rank, "receive on the cut stream ended: %d", x.status);
    mc_store_set(store, "chk_exit", "1", 1);
    if (rc) {
        t_close(tl, store);
        return rc;
    }
    int64_t t0 = mc_now_us();
    if (t_wait_one(tl, &x, 5000) != 0)
        rc = MC_TFAIL(rank, "the peer exited; the receive still waits");
    else if (x.status != MC_ERR_PEER_FAILED)
        rc = MC_TFAIL(rank, "receive status %d", x.status);
    else if (ops->peer_status(tl, 1) != MC_ERR_PEER_FAILED)
        rc = MC_TFAIL(rank, "peer not failed after its exit");
    else
        fprintf(stderr, "  peer failed %.1f ms after it was told to exit\n",
                (double)(mc_now_us() - t0) / 1000);
    t_close(tl, store);
    return rc;
}

static void test_close_check(void **state)
{
    (void)state;
    t_ctx_t c = {0};
    t_run(2, 60, body_close_check, &c);
}

/* The close check must not call a live peer dead while that peer admits a
 * joiner: P (rank 0) takes in J, a new process for slot 1, and so drops the
 * streams of Q, the old slot-1 process, which is alive. Q sees EOF and
 * checks P's listener; P, accepting while J's add is open, takes Q's check
 * connection into its pending list, and once J's handshake is done it
 * closed that socket with Q's probe byte unread: a reset, which Q took for
 * a dead listener. Roles by fork index: 0 P, 1 Q, 2 J. */
static mc_status_t t_open_inc(const t_ctx_t *c, int rank, uint64_t inc,
                              const uint64_t *pinc, int do_connect,
                              mc_store_h *store_p, mc_tl_t **tl_p)
{
    mc_store_h store;
    mc_status_t st = mc_store_file_create(c->dir, &store);
    if (st != MC_OK) return st;
    uint8_t peers[2] = {rank != 0, rank != 1};
    mc_tl_params_t p = {.rank = rank,
                        .size = 2,
                        .store = store,
                        .uid = c->uid,
                        .peers = peers,
                        .incarnation = inc,
                        .peer_incarnation = pinc,
                        .timeout_ms = 10000};
    mc_tl_t *tl = NULL;
    st = ops->create(&p, &tl);
    if (st == MC_OK && do_connect) {
        st = ops->connect(tl);
        if (st != MC_OK) ops->destroy(tl);
    }
    if (st != MC_OK) {
        mc_store_destroy(store);
        return st;
    }
    *store_p = store;
    *tl_p = tl;
    return MC_OK;
}

static int body_check_admitting(int role, int size, void *arg)
{
    t_ctx_t *c = arg;
    (void)size;
    mc_store_h store;
    mc_tl_t *tl;
    char v[4];
    size_t len;
    int rc = 0;
    if (role == 0) { /* P */
        if (t_open_inc(c, 0, 0, NULL, 1, &store, &tl) != MC_OK)
            return MC_TFAIL(role, "open P: %s", mc_last_error());
        if (mc_store_get(store, "ca/j", 20000, v, 4, &len) != MC_OK)
            return MC_TFAIL(role, "J never started");
        usleep(300000); /* J's connections wait in the backlog */
        if (ops->add_peer(tl, 1, 1, 5000) != MC_OK)
            return MC_TFAIL(role, "add_peer: %s", mc_last_error());
        ops->progress(tl); /* accepts J's sockets; Q's check follows */
        usleep(100000);
        int64_t t0 = mc_now_us();
        while (ops->peer_status(tl, 1) == MC_INPROGRESS &&
               mc_now_us() - t0 < 5000000) {
            ops->progress(tl);
            ops->wait(tl, 1000);
        }
        if (ops->peer_status(tl, 1) != MC_OK)
            rc = MC_TFAIL(role, "J's add: %d", ops->peer_status(tl, 1));
        /* alive until Q is done */
        mc_store_get(store, "ca/q", 20000, v, 4, &len);
        t_close(tl, store);
        return rc;
    }
    if (role == 1) { /* Q: slot 1, the old process */
        if (t_open_inc(c, 1, 0, NULL, 1, &store, &tl) != MC_OK)
            return MC_TFAIL(role, "open Q: %s", mc_last_error());
        mc_store_set(store, "ca/up", "1", 1);
        static uint64_t b;
        static mc_xfer_t x;
        x = (mc_xfer_t){.buf = &b, .len = sizeof(b)};
        if (ops->post_recv(tl, 0, MC_CH_COLL, &x) != MC_OK)
            rc = MC_TFAIL(role, "post_recv: %s", mc_last_error());
        /* P drops us about 0.4 s in; its check runs 1 s at most */
        for (int64_t t0 = mc_now_us(); !rc && mc_now_us() - t0 < 3000000;) {
            ops->progress(tl);
            ops->wait(tl, 2000);
            if (ops->peer_status(tl, 0) == MC_ERR_PEER_FAILED)
                rc = MC_TFAIL(role, "P, alive and admitting a joiner, was "
                                    "called dead %.0f ms in",
                              (double)(mc_now_us() - t0) / 1000);
        }
        mc_store_set(store, "ca/q", "1", 1);
        t_close(tl, store);
        return rc;
    }
    /* J: slot 1 again, incarnation 1 */
    if (mc_store_file_create(c->dir, &store) != MC_OK ||
        mc_store_get(store, "ca/up", 20000, v, 4, &len) != MC_OK)
        return MC_TFAIL(role, "Q never came up");
    mc_store_destroy(store);
    usleep(100000);
    uint64_t pinc[2] = {0, 1};
    if (t_open_inc(c, 1, 1, pinc, 0, &store, &tl) != MC_OK)
        return MC_TFAIL(role, "create J: %s", mc_last_error());
    mc_store_set(store, "ca/j", "1", 1);
    if (ops->connect(tl) != MC_OK)
        rc = MC_TFAIL(role, "J connect: %s", mc_last_error());
    mc_store_get(store, "ca/q", 20000, v, 4, &len);
    t_close(tl, store);
    return rc;
}

static void test_close_check_admitting(void **state)
{
    (void)state;
    for (int i = 0; i < 3; i++) {
        t_ctx_t c = {0};
        t_run(3, 60, body_check_admitting, &c);
    }
}

/* The close check's held connection: rank 1's listener outlives its
 * streams by 1.5 s (a child holds it, like a slow exit or an inherited
 * fd), so rank 0's check finds it answering and calls rank 1 alive; when
 * the listener finally closes, the reset of the held check connection
 * turns into the death, and the receive waiting on rank 1 fails. */
static int body_close_late(int rank, int size, void *arg)
{
    t_ctx_t *c = arg;
    (void)size;
    mc_store_h store;
    mc_tl_t *tl;
    if (t_open(c, c->dir, rank, 2, T_TIMEOUT_MS, &store, &tl) != MC_OK)
        return MC_TFAIL(rank, "open: %s", mc_last_error());
    uint8_t one = 1;
    if (rank == 1) {
        if (t_xfer(tl, 0, 0, MC_CH_COLL, &one, 1) != 0)
            return MC_TFAIL(1, "coll byte");
        int lfd = -1;
        for (int i = 3; i < 1024 && lfd < 0; i++) {
            int acc = 0;
            socklen_t sl = sizeof(acc);
            if (getsockopt(i, SOL_SOCKET, SO_ACCEPTCONN, &acc, &sl) == 0 && acc)
                lfd = i;
        }
        if (lfd < 0) return MC_TFAIL(1, "listener not found");
        pid_t k = fork();
        if (k == 0) {
            for (int i = 3; i < 1024; i++)
                if (i != lfd) close(i);
            usleep(1500000);
            _exit(0);
        }
        _exit(k > 0 ? 0 : 1); /* streams close now, the listener later */
    }
    int rc = 0;
    if (t_xfer(tl, 1, 1, MC_CH_COLL, &one, 1) != 0)
        return MC_TFAIL(rank, "coll byte");
    static uint8_t b[8];
    static mc_xfer_t x;
    x = (mc_xfer_t){.buf = b, .len = sizeof(b)};
    if (ops->post_recv(tl, 1, MC_CH_COLL, &x) != MC_OK)
        rc = MC_TFAIL(rank, "coll receive refused");
    int64_t t0 = mc_now_us();
    if (!rc && t_wait_one(tl, &x, 8000) != 0)
        rc = MC_TFAIL(rank, "the listener closed; the receive still waits");
    else if (!rc && x.status != MC_ERR_PEER_FAILED)
        rc = MC_TFAIL(rank, "receive status %d", x.status);
    else if (!rc && mc_now_us() - t0 < 1000000)
        rc = MC_TFAIL(rank, "failed after %lld us, before the listener closed",
                      (long long)(mc_now_us() - t0));
    if (!rc)
        fprintf(stderr, "  peer failed %.0f ms after its streams ended\n",
                (double)(mc_now_us() - t0) / 1000);
    t_close(tl, store);
    return rc;
}

static void test_close_late(void **state)
{
    (void)state;
    t_ctx_t c = {0};
    t_run(2, 60, body_close_late, &c);
}

static void test_eos_stall_bound(void **state)
{
    (void)state;
    t_ctx_t c = {0};
    t_run(2, 60, body_stall, &c);
}

/* ------------------------------------------------------------------------ */
/* Connect timeout: the peer never shows up. Rank 0 (acceptor side) and
 * rank 1 (connector side, its peer never publishes an address) each run in
 * a store of their own. */

static int body_timeout(int rank, int size, void *arg)
{
    t_ctx_t *c = arg;
    (void)size;
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/r%d", c->dir, rank);
    mc_store_h store;
    mc_tl_t *tl;
    int64_t t0 = mc_now_us();
    mc_status_t st = t_open(c, dir, rank, 2, 500, &store, &tl);
    int64_t dt = mc_now_us() - t0;
    if (st == MC_OK) {
        t_close(tl, store);
        return MC_TFAIL(rank, "connect succeeded with no peer");
    }
    if (st != MC_ERR_TIMEOUT)
        return MC_TFAIL(rank, "status %d: %s", st, mc_last_error());
    if (dt < 450000 || dt > 2000000)
        return MC_TFAIL(rank, "timed out after %lld us", (long long)dt);
    char want[32];
    snprintf(want, sizeof(want), "%d(coll,p2p)", 1 - rank);
    if (!strstr(mc_last_error(), want))
        return MC_TFAIL(rank, "message does not name the peer: %s",
                        mc_last_error());
    return 0;
}

static void test_connect_timeout(void **state)
{
    (void)state;
    t_ctx_t c = {0};
    t_run(2, 30, body_timeout, &c);
}

/* ------------------------------------------------------------------------ */
/* Bad hellos are rejected without disturbing the real connection: process
 * 2 (not a member) connects to rank 0 with a wrong uid, then with its own
 * uid but a rank that may not connect, then as rank 1 of another
 * incarnation (a stale process), then as rank 1 wanting another
 * incarnation of rank 0, and expects to be closed each time; only then
 * does rank 1 start. */

static int rogue_try(const struct sockaddr_in *sa, uint64_t uid, uint32_t r,
                     uint64_t inc, uint64_t to_inc)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) != 0)
        return -1;
    /* v3 hello: magic, version, rank, channel, uid, incarnations, the
     * sender's listener (none here: zeros) */
    uint8_t h[48] = {0};
    uint32_t w[4] = {0x4d435450u, 3, r, 0};
    for (int i = 0; i < 4; i++)
        for (int b = 0; b < 4; b++)
            h[4 * i + b] = (uint8_t)(w[i] >> (8 * b));
    uint64_t q[3] = {uid, inc, to_inc};
    for (int i = 0; i < 3; i++)
        for (int b = 0; b < 8; b++)
            h[16 + 8 * i + b] = (uint8_t)(q[i] >> (8 * b));
    if (send(fd, h, sizeof(h), MSG_NOSIGNAL) != (ssize_t)sizeof(h)) return -1;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int ok = poll(&p, 1, 5000) == 1 && recv(fd, h, sizeof(h), 0) <= 0;
    close(fd);
    return ok ? 0 : -1;
}

static int body_rogue(int rank, int size, void *arg)
{
    t_ctx_t *c = arg;
    (void)size;
    mc_store_h store;
    if (rank == 2) {
        if (mc_store_file_create(c->dir, &store) != MC_OK)
            return MC_TFAIL(rank, "store");
        char a[64] = {0};
        size_t len;
        struct sockaddr_in sa = {.sin_family = AF_INET};
        if (mc_store_get(store, "tcp/0", 10000, a, sizeof(a) - 1, &len) !=
            MC_OK)
            return MC_TFAIL(rank, "no address");
        char *colon = strrchr(a, ':');
        *colon = 0;
        inet_pton(AF_INET, a, &sa.sin_addr);
        sa.sin_port = htons((uint16_t)atoi(colon + 1));
        int rc = 0;
        if (rogue_try(&sa, c->uid ^ 1, 1, 0, 0) != 0)
            rc = MC_TFAIL(rank, "wrong uid not rejected");
        if (rogue_try(&sa, c->uid, 0, 0, 0) != 0)
            rc = MC_TFAIL(rank, "rank 0 -> rank 0 not rejected");
        if (rogue_try(&sa, c->uid, 1, 7, 0) != 0)
            rc = MC_TFAIL(rank, "rank 1 of incarnation 7 not rejected");
        if (rogue_try(&sa, c->uid, 1, 0, 3) != 0)
            rc = MC_TFAIL(rank, "hello for incarnation 3 not rejected");
        mc_store_set(store, "rogue_done", "1", 1);
        mc_store_destroy(store);
        return rc;
    }
    if (rank == 1) {
        if (mc_store_file_create(c->dir, &store) != MC_OK)
            return MC_TFAIL(rank, "store");
        char b[4];
        size_t len;
        mc_status_t st =
            mc_store_get(store, "rogue_done", 20000, b, sizeof(b), &len);
        mc_store_destroy(store);
        if (st != MC_OK) return MC_TFAIL(rank, "rogue never finished");
    }
    mc_tl_t *tl;
    if (t_open(c, c->dir, rank, 2, T_TIMEOUT_MS, &store, &tl) != MC_OK)
        return MC_TFAIL(rank, "open: %s", mc_last_error());
    uint8_t s[100], r[100];
    t_fill(s, sizeof(s), rank, 1 - rank, 0, 0);
    mc_xfer_t xa = {.buf = s, .len = sizeof(s)};
    mc_xfer_t xb = {.buf = r, .len = sizeof(r)};
    mc_xfer_t *ab[2] = {&xa, &xb};
    int rc = 0;
    if (ops->post_send(tl, 1 - rank, 0, &xa) != MC_OK ||
        ops->post_recv(tl, 1 - rank, 0, &xb) != MC_OK ||
        t_wait_all(tl, ab, 2, T_TIMEOUT_MS) != 0 || xb.status != MC_OK ||
        t_check(r, sizeof(r), 1 - rank, rank, 0, 0) >= 0)
        rc = MC_TFAIL(rank, "exchange after rogue connections");
    t_close(tl, store);
    return rc;
}

static void test_rogue_hello(void **state)
{
    (void)state;
    t_ctx_t c = {0};
    t_run(3, 60, body_rogue, &c);
}

/* ------------------------------------------------------------------------ */
/* Argument checks need no peers. */

static void test_bad_args(void **state)
{
    (void)state;
    char *dir = mc_test_mkdtemp();
    mc_store_h store;
    assert_int_equal(mc_store_file_create(dir, &store), MC_OK);
    uint8_t peers[2] = {0, 1};
    mc_tl_params_t p = {.rank = 0,
                        .size = 2,
                        .store = store,
                        .uid = 1,
                        .peers = peers,
                        .timeout_ms = 100};
    mc_tl_t *tl = NULL;
    mc_tl_params_t bad = p;
    bad.rank = 2;
    assert_int_equal(ops->create(&bad, &tl), MC_ERR_INVALID_ARG);
    bad = p;
    bad.store = NULL;
    assert_int_equal(ops->create(&bad, &tl), MC_ERR_INVALID_ARG);
    assert_null(tl);
    assert_int_equal(ops->create(&p, &tl), MC_OK);
    assert_non_null(tl);
    mc_xfer_t x = {.buf = peers, .len = 1};
    /* not connected yet, bad peer, bad channel, self */
    assert_int_equal(ops->post_send(tl, 1, 0, &x), MC_ERR_INVALID_ARG);
    assert_int_equal(ops->post_send(tl, 5, 0, &x), MC_ERR_INVALID_ARG);
    assert_int_equal(ops->post_send(tl, 1, 2, &x), MC_ERR_INVALID_ARG);
    assert_int_equal(ops->post_recv(tl, 0, 0, &x), MC_ERR_INVALID_ARG);
    assert_int_equal(ops->peer_status(tl, 1), MC_OK);
    assert_int_equal(ops->peer_status(tl, -1), MC_ERR_INVALID_ARG);
    assert_int_equal(ops->add_peer(tl, 1, 1, 100), MC_ERR_INVALID_ARG);
    assert_int_equal(ops->mem_reg(tl, peers, 1, NULL), MC_ERR_UNSUPPORTED);
    uint64_t sv;
    assert_int_equal(ops->signal(tl, 1, 0, 1), MC_ERR_UNSUPPORTED);
    assert_int_equal(ops->peek(tl, 1, 0, &sv), MC_ERR_UNSUPPORTED);
    assert_int_equal(ops->sent_held(tl, 2, 0), MC_ERR_INVALID_ARG);
    assert_int_equal(ops->sent_held(tl, 1, 2), MC_ERR_INVALID_ARG);
    assert_int_equal(ops->ack_now(tl, -1, 0), MC_ERR_INVALID_ARG);
    assert_int_equal(ops->progress(tl), 0);
    char addr[64] = {0};
    size_t len = 0;
    assert_int_equal(mc_store_get(store, "tcp/0", 0, addr, 63, &len), MC_OK);
    assert_non_null(strchr(addr, ':'));
    ops->destroy(tl);
    mc_store_destroy(store);
    mc_test_rmtree(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_args),
        cmocka_unit_test(test_bulk_2),
        cmocka_unit_test(test_bulk_3),
        cmocka_unit_test(test_small_2),
        cmocka_unit_test(test_small_3),
        cmocka_unit_test(test_zero_len),
        cmocka_unit_test(test_channels_independent),
        cmocka_unit_test(test_kill_2),
        cmocka_unit_test(test_kill_3),
        cmocka_unit_test(test_graceful_close),
        cmocka_unit_test(test_eos_destroy),
        cmocka_unit_test(test_eos_exit),
        cmocka_unit_test(test_eos_zero_payload),
        cmocka_unit_test(test_eos_exit_large),
        cmocka_unit_test(test_eos_stall_bound),
        cmocka_unit_test(test_held_reset),
        cmocka_unit_test(test_close_check),
        cmocka_unit_test(test_close_late),
        cmocka_unit_test(test_close_check_admitting),
        cmocka_unit_test(test_connect_timeout),
        cmocka_unit_test(test_rogue_hello),
    };
    /* MC_TEST_FILTER=test_kill_* runs a subset */
    const char *filter = getenv("MC_TEST_FILTER");
    if (filter && *filter) cmocka_set_test_filter(filter);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
