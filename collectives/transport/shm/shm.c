/*
 * Shared-memory transport for ranks on the same host.
 *
 * Segments
 *  Every rank creates one POSIX shm segment "/mc-<uid:016x>-<rank>":
 *    [0, 4 KiB)        control block (mc_shm_ctrl_t): identity, doorbell
 *    [4 KiB, ...)      directory: (off, cap) of the ring that producer rank
 *                      r uses on channel ch, at index r * MC_NUM_CHANNELS + ch
 *    page-aligned      rings, one per (peer, channel) in which this rank is
 *                      the CONSUMER (see shm_ring.h for the ring protocol)
 *  Rings are sized by the consumer (MOONCAKE_SHM_RING_BYTES for collectives,
 *  1 MiB for point-to-point) and the producer reads the size from the
 *  directory, so ranks need not agree on the setting. The segment is
 *  fully allocated up front (posix_fallocate) so a full /dev/shm fails
 *  create cleanly instead of raising SIGBUS on first touch of a ring page.
 *
 * Bootstrap
 *  create publishes "shm/<rank>" = "<segment name> <pid>". connect maps
 *  every peer's segment (we produce into the ring it holds for us), checks
 *  its identity, sets "shm/<rank>/mapped" and waits for that key from every
 *  peer: once all peers have mapped our segment, we unlink it, so nothing
 *  is left in /dev/shm even if every process is later SIGKILLed. A crash
 *  between create and the end of connect can still leave a segment behind.
 *
 * Sleeping
 *  The engine spins on progress() and calls wait() when idle. wait() sets
 *  our `sleeping` flag, issues a full fence, reads the doorbell, re-checks
 *  every stream that has posted transfers, and only then futex-waits on the
 *  doorbell. A side that publishes bytes (producer) or frees space
 *  (consumer) issues a full fence and reads the other side's `sleeping`;
 *  only if it is set does it bump the doorbell and FUTEX_WAKE. The two
 *  fences make the classic Dekker pattern: either the waiter's re-check
 *  sees the new counter, or the waker sees the flag; and a bump made after
 *  the waiter read the doorbell makes its FUTEX_WAIT return at once. So no
 *  wakeup is lost, and a waker pays one fence and one shared read when
 *  nobody sleeps.
 *
 * Failure and end of stream
 *  A dead peer rings no doorbell, so wait() sleeps at most
 *  MC_SHM_SLEEP_MAX_US while transfers are posted. A peer is checked
 *  (its `closed` flag, then a poll on a pidfd, or kill(pid, 0) where
 *  pidfds are unavailable) only on every 32nd progress() pass in which one
 *  of its streams with posted transfers could not move, in wait(), and in
 *  peer_status(); at most every MC_SHM_CHECK_US either way. Moving data
 *  never pays for it. A pidfd also sees a dead-but-unreaped (zombie) peer
 *  and cannot be fooled by pid reuse.
 *
 *  Once a peer is known gone, peer_status() reports it and sends to it fail
 *  (posted ones from the next progress(), new posts at once): nobody will
 *  read them. Its incoming streams do not fail with it. The engine reads a
 *  frame in two steps (header, then a payload receive posted only after the
 *  header completed), so each (peer, channel) ring keeps serving receives,
 *  including ones posted later, from the bytes the peer published before it
 *  closed or died. A gone producer never writes again, and `closed` is
 *  release-stored after its last head update (a dead process's stores are
 *  visible once the kernel reports it dead), so a head reloaded after the
 *  death was seen is final: a receive that finds the ring dry then has
 *  reached a true end of stream. It fails with MC_ERR_PEER_FAILED (even if
 *  partly filled), as does everything queued behind it, and later posts to
 *  that stream are rejected. Each stream ends on its own. A peer whose ring
 *  counters are corrupt is not trusted to end anything: all its streams
 *  fail at once. A clean close is logged at info level, a death or
 *  corruption with transfers posted at warn level. Segments stay mapped
 *  until destroy, so late accesses never fault.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "mc_log.h"
#include "transport/shm/shm_ring.h"
#include "transport/transport.h"

#define MC_SHM_MAGIC UINT64_C(0x31306d68732d636d) /* "mc-shm01" */
#define MC_SHM_VERSION 1u
#define MC_SHM_PAGE 4096u
#define MC_SHM_MAX_RANKS 65536
#define MC_SHM_COLL_DEFAULT ((uint64_t)4 << 20)
#define MC_SHM_P2P_BYTES ((uint64_t)1 << 20)
#define MC_SHM_RING_MIN ((uint64_t)4096)
#define MC_SHM_RING_MAX ((uint64_t)1 << 30)
#define MC_SHM_SEG_MAX ((uint64_t)1 << 40)
#define MC_SHM_NAME_MAX 64
#define MC_SHM_CHECK_US 2000      /* liveness check period, stalled peer */
#define MC_SHM_SLEEP_MAX_US 50000 /* longest wait() sleep with xfers posted */

typedef struct mc_shm_ctrl {
    uint64_t magic; /* written last by create */
    uint32_t version;
    int32_t rank;
    int32_t size;
    int32_t pid;
    uint64_t pidns_dev; /* the owner's pid namespace, 0 if unknown */
    uint64_t pidns_ino;
    uint64_t seg_bytes;
    uint64_t dir_off;
    /* Written only rarely (sleep/wake, destroy), read by every waker. */
    _Alignas(128) uint32_t doorbell; /* futex word, bumped by wakers */
    uint32_t sleeping;               /* owner is in (or entering) wait() */
    uint32_t closed;                 /* owner destroyed its transport */
} mc_shm_ctrl_t;

_Static_assert(sizeof(mc_shm_ctrl_t) <= MC_SHM_PAGE, "control block > page");

typedef struct mc_shm_dirent {
    uint64_t off; /* 0: no ring for this producer */
    uint64_t cap;
} mc_shm_dirent_t;

struct mc_shm_peer;

typedef struct mc_shm_stream {
    mc_xfer_t *q, *qtail; /* posted transfers, FIFO */
    mc_shm_ring_t ring;
    struct mc_shm_peer *peer;
    int is_send;
    int eof; /* recv: ended (dry after the peer went, or corrupt); posts
              * are rejected */
} mc_shm_stream_t;

typedef struct mc_shm_peer {
    int rank;
    int gone;        /* closed, dead or corrupt: sends fail, rings drain */
    int broken;      /* corrupt counters: its rings are not read any more */
    int settled;     /* sends posted before `gone` have been failed */
    const char *why; /* reason, for log lines and rejected posts */
    pid_t pid;
    int pidfd; /* -1: fall back to kill(pid, 0) */
    void *map;
    size_t map_len;
    mc_shm_ctrl_t *ctrl; /* the peer's control block (inside map) */
    int64_t next_check_us;
    mc_shm_stream_t tx[MC_NUM_CHANNELS]; /* ring in the peer's segment */
    mc_shm_stream_t rx[MC_NUM_CHANNELS]; /* ring in our segment */
} mc_shm_peer_t;

struct mc_tl {
    int rank;
    int size;
    uint64_t uid;
    mc_store_h store;
    int64_t deadline_us; /* create + connect */
    char name[MC_SHM_NAME_MAX];
    void *seg;
    size_t seg_len;
    int linked; /* our segment name still exists in /dev/shm */
    mc_shm_ctrl_t *ctrl;
    int32_t *peer_idx; /* rank -> index in peers, -1 if not a peer */
    mc_shm_peer_t *peers;
    int npeers;
    int connect_called;
    int connected;
    int busy;        /* inside progress or a post's immediate advance */
    int nunsettled;  /* peers with gone && !settled */
    unsigned stalls; /* stalled streams seen by progress, for rate limits */
};

/* ------------------------------------------------------------------------ */
/* helpers                                                                  */
/* ------------------------------------------------------------------------ */

static void shm_seg_name(uint64_t uid, int rank, char out[MC_SHM_NAME_MAX])
{
    snprintf(out, MC_SHM_NAME_MAX, "/mc-%016" PRIx64 "-%d", uid, rank);
}

static uint64_t shm_round_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) / a * a;
}

static uint64_t shm_coll_ring_bytes(void)
{
    int64_t v =
        mc_env_int("MOONCAKE_SHM_RING_BYTES", (int64_t)MC_SHM_COLL_DEFAULT);
    if (v < (int64_t)MC_SHM_RING_MIN || v > (int64_t)MC_SHM_RING_MAX) {
        MC_LOG(MC_LOG_WARN,
               "MOONCAKE_SHM_RING_BYTES=%" PRId64
               " is outside [4096, 1 GiB]; using 4 MiB",
               v);
        return MC_SHM_COLL_DEFAULT;
    }
    uint64_t c = MC_SHM_RING_MIN;
    while (c < (uint64_t)v)
        c <<= 1;
    return c;
}

static void shm_pidns(uint64_t *dev_p, uint64_t *ino_p)
{
    struct stat sb;
    if (stat("/proc/self/ns/pid", &sb) == 0) {
        *dev_p = (uint64_t)sb.st_dev;
        *ino_p = (uint64_t)sb.st_ino;
    } else {
        *dev_p = *ino_p = 0;
    }
}

static int64_t shm_remaining_ms(const mc_tl_t *tl)
{
    if (tl->deadline_us == INT64_MAX) return -1;
    int64_t left = tl->deadline_us - mc_now_us();
    return left > 0 ? (left + 999) / 1000 : 0;
}

static void shm_futex_wake(uint32_t *word)
{
    syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* Tell the owner of `c` that a counter it may be waiting on moved. The
 * counter was release-stored before; the fence orders it before our read of
 * `sleeping` (pairs with the fence in shm_wait). */
static void shm_bell(mc_shm_ctrl_t *c)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(&c->sleeping, __ATOMIC_RELAXED)) {
        __atomic_fetch_add(&c->doorbell, 1, __ATOMIC_SEQ_CST);
        shm_futex_wake(&c->doorbell);
    }
}

#define MC_SHM_WHY_CLOSED "closed its shared-memory transport"
#define MC_SHM_WHY_CORRUPT "corrupted a ring's counters"

/* Reason the peer is gone, or NULL while it looks alive. */
static const char *shm_peer_gone(const mc_shm_peer_t *pe)
{
    if (__atomic_load_n(&pe->ctrl->closed, __ATOMIC_ACQUIRE))
        return MC_SHM_WHY_CLOSED;
    if (pe->pidfd >= 0) {
        struct pollfd pfd = {.fd = pe->pidfd, .events = POLLIN};
        return poll(&pfd, 1, 0) > 0 ? "exited" : NULL;
    }
    if (kill(pe->pid, 0) < 0 && errno == ESRCH) return "exited";
    return NULL;
}

/* Rate-limited liveness check; *now_p is read lazily (0 = not yet).
 * Returns the reason the peer is gone, or NULL. */
static const char *shm_check_peer(mc_shm_peer_t *pe, int64_t *now_p)
{
    if (!*now_p) *now_p = mc_now_us();
    if (*now_p < pe->next_check_us) return NULL;
    pe->next_check_us = *now_p + MC_SHM_CHECK_US;
    return shm_peer_gone(pe);
}

/*
 * Record that a peer is gone (broken: its counters are corrupt). Runs no
 * callbacks, so it is safe anywhere; progress() settles the peer. Logs once
 * per state change.
 */
static void shm_mark_gone(mc_tl_t *tl, mc_shm_peer_t *pe, const char *why,
                          int broken)
{
    int posted = 0;
    for (int ch = 0; ch < MC_NUM_CHANNELS; ch++)
        posted |= pe->tx[ch].q || pe->rx[ch].q;
    if (broken && !pe->broken) {
        pe->broken = 1;
        for (int ch = 0; ch < MC_NUM_CHANNELS; ch++)
            pe->rx[ch].eof = 1;
        MC_LOG(MC_LOG_WARN,
               "shm: rank %d: peer %d (pid %d) " MC_SHM_WHY_CORRUPT
               "; failing its transfers",
               tl->rank, pe->rank, (int)pe->pid);
        if (!pe->gone) why = MC_SHM_WHY_CORRUPT;
    }
    if (pe->gone) return;
    pe->gone = 1;
    pe->why = why;
    tl->nunsettled++;
    if (broken) return;
    /* A clean close is routine; a vanished process with transfers in
     * flight is worth a warning (the engine reports what it costs). */
    MC_LOG(strcmp(why, MC_SHM_WHY_CLOSED) == 0 || !posted ? MC_LOG_INFO
                                                          : MC_LOG_WARN,
           "shm: rank %d: peer %d (pid %d) %s; failing sends to it, still "
           "delivering what it sent",
           tl->rank, pe->rank, (int)pe->pid, why);
}

static void shm_complete(mc_xfer_t *x, mc_status_t st)
{
    mc_xfer_cb_t cb = x->cb;
    x->next = NULL;
    __atomic_store_n(&x->status, (int)st, __ATOMIC_RELEASE);
    if (cb) cb(x);
}

/* Complete a detached list with MC_ERR_PEER_FAILED; returns its length. */
static int shm_fail_list(mc_xfer_t *x)
{
    int n = 0;
    while (x) {
        mc_xfer_t *next = x->next;
        shm_complete(x, MC_ERR_PEER_FAILED);
        n++;
        x = next;
    }
    return n;
}

/* ------------------------------------------------------------------------ */
/* data path                                                                */
/* ------------------------------------------------------------------------ */

/*
 * Move bytes for the posted transfers of one stream, completing them in
 * FIFO order. Callbacks may append to this stream (the loop picks them up)
 * or to any other; tl->busy keeps post_* from recursing into here. Returns
 * the transfers completed or partly advanced; sets *bad on corrupt
 * counters. A receive left incomplete saw a freshly reloaded, too small
 * head (mc_shm_ring_read reloads whenever its cached head falls short).
 */
static int shm_advance(mc_shm_stream_t *s, int *bad)
{
    mc_shm_ring_t *r = &s->ring;
    uint64_t rung = r->pos;
    int n = 0;
    mc_xfer_t *x;
    while ((x = s->q) != NULL) {
        size_t start = x->off;
        while (x->off < x->len) {
            uint8_t *p = (uint8_t *)x->buf + x->off;
            size_t want = x->len - x->off;
            if (want > MC_SHM_RING_CHUNK) want = MC_SHM_RING_CHUNK;
            size_t k = s->is_send ? mc_shm_ring_write(r, p, want)
                                  : mc_shm_ring_read(r, p, want);
            if (k == SIZE_MAX) {
                *bad = 1;
                return n;
            }
            x->off += k;
            if (k < want) break; /* ring full (send) or empty (recv) */
            if (x->off < x->len) {
                /* more to copy: let a sleeping peer start on this piece */
                shm_bell(s->peer->ctrl);
                rung = r->pos;
            }
        }
        if (x->off < x->len) {
            if (x->off != start) n++;
            break;
        }
        s->q = x->next;
        if (!s->q) s->qtail = NULL;
        n++;
        /* wake the peer before running engine code in a callback */
        if (x->cb && r->pos != rung) {
            shm_bell(s->peer->ctrl);
            rung = r->pos;
        }
        shm_complete(x, MC_OK);
    }
    if (r->pos != rung) shm_bell(s->peer->ctrl);
    return n;
}

/*
 * Bring a gone peer up to date (progress only, tl->busy held): fail the
 * sends posted to it (once), serve posted receives from what it left in
 * our rings, and end every incoming stream whose ring ran dry under a
 * posted receive. Queues are detached before their transfers fail: a
 * callback that posts to an ended stream is rejected instead of being
 * appended to a list we are walking. Returns transfers completed or
 * advanced.
 */
static int shm_settle(mc_tl_t *tl, mc_shm_peer_t *pe)
{
    int n = 0;
    if (!pe->settled) {
        mc_xfer_t *lists[MC_NUM_CHANNELS];
        pe->settled = 1;
        tl->nunsettled--;
        for (int ch = 0; ch < MC_NUM_CHANNELS; ch++) {
            lists[ch] = pe->tx[ch].q;
            pe->tx[ch].q = pe->tx[ch].qtail = NULL;
        }
        for (int ch = 0; ch < MC_NUM_CHANNELS; ch++)
            n += shm_fail_list(lists[ch]);
    }
    for (int ch = 0; ch < MC_NUM_CHANNELS; ch++) {
        mc_shm_stream_t *s = &pe->rx[ch];
        if (!s->q) continue;
        if (!pe->broken) {
            int bad = 0;
            n += shm_advance(s, &bad);
            if (bad) shm_mark_gone(tl, pe, MC_SHM_WHY_CORRUPT, 1);
            if (!s->q) continue;
        }
        /* the head was reloaded after the peer was known gone: end of
         * stream for this ring */
        MC_LOG(MC_LOG_DEBUG,
               "shm: rank %d: stream from peer %d channel %d ended", tl->rank,
               pe->rank, ch);
        s->eof = 1;
        mc_xfer_t *x = s->q;
        s->q = s->qtail = NULL;
        n += shm_fail_list(x);
    }
    return n;
}

static int shm_progress(mc_tl_t *tl)
{
    if (!tl || !tl->connected) return 0;
    int moved = 0;
    int64_t now = 0;
    tl->busy++;
    for (int i = 0; i < tl->npeers; i++) {
        mc_shm_peer_t *pe = &tl->peers[i];
        for (int j = 0; !pe->gone && j < 2 * MC_NUM_CHANNELS; j++) {
            mc_shm_stream_t *s = j & 1 ? &pe->rx[j >> 1] : &pe->tx[j >> 1];
            if (!s->q) continue;
            int bad = 0;
            int n = shm_advance(s, &bad);
            moved += n;
            if (bad) {
                shm_mark_gone(tl, pe, MC_SHM_WHY_CORRUPT, 1);
                break;
            }
            /* stalled: now and then (not on every spin) check the peer */
            if (n == 0 && s->q && (++tl->stalls & 31) == 0) {
                const char *why = shm_check_peer(pe, &now);
                if (why) shm_mark_gone(tl, pe, why, 0);
            }
        }
        if (pe->gone) moved += shm_settle(tl, pe);
    }
    tl->busy--;
    return moved;
}

/* Could progress() move something now? Reloads the shared counters. */
static int shm_can_move(mc_tl_t *tl)
{
    if (tl->nunsettled) return 1;
    for (int i = 0; i < tl->npeers; i++) {
        mc_shm_peer_t *pe = &tl->peers[i];
        for (int ch = 0; ch < MC_NUM_CHANNELS; ch++) {
            mc_shm_stream_t *tx = &pe->tx[ch], *rx = &pe->rx[ch];
            /* a gone peer's receive either completes or ends the stream */
            if (pe->gone) {
                if (rx->q) return 1;
                continue;
            }
            if (tx->q && (tx->q->off == tx->q->len ||
                          mc_shm_ring_space_reload(&tx->ring) != 0))
                return 1;
            if (rx->q && (rx->q->off == rx->q->len ||
                          mc_shm_ring_avail_reload(&rx->ring) != 0))
                return 1;
        }
    }
    return 0;
}

static void shm_wait(mc_tl_t *tl, int64_t timeout_us)
{
    if (!tl || !tl->connected || timeout_us <= 0) return;
    int posted = 0;
    int64_t now = 0;
    for (int i = 0; i < tl->npeers; i++) {
        mc_shm_peer_t *pe = &tl->peers[i];
        if (pe->gone) continue;
        int mine = 0;
        for (int ch = 0; ch < MC_NUM_CHANNELS; ch++)
            mine |= pe->tx[ch].q || pe->rx[ch].q;
        if (!mine) continue;
        posted = 1;
        const char *why = shm_check_peer(pe, &now);
        /* callbacks run from progress only: it settles the peer */
        if (why) shm_mark_gone(tl, pe, why, 0);
    }
    if (tl->nunsettled) return;

    mc_shm_ctrl_t *c = tl->ctrl;
    __atomic_store_n(&c->sleeping, 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint32_t bell = __atomic_load_n(&c->doorbell, __ATOMIC_ACQUIRE);
    if (!shm_can_move(tl)) {
        int64_t us = timeout_us;
        if (posted && us > MC_SHM_SLEEP_MAX_US) us = MC_SHM_SLEEP_MAX_US;
        struct timespec ts = {(time_t)(us / 1000000),
                              (long)(us % 1000000) * 1000};
        syscall(SYS_futex, &c->doorbell, FUTEX_WAIT, bell, &ts, NULL, 0);
    }
    __atomic_store_n(&c->sleeping, 0, __ATOMIC_RELAXED);
}

static mc_status_t shm_post(mc_tl_t *tl, int peer, int ch, mc_xfer_t *x,
                            int is_send)
{
    const char *op = is_send ? "post_send" : "post_recv";
    if (!tl || !x)
        return mc_err(MC_ERR_INVALID_ARG, "shm %s: %s is NULL", op,
                      tl ? "transfer" : "transport");
    if (peer < 0 || peer >= tl->size || tl->peer_idx[peer] < 0)
        return mc_err(MC_ERR_INVALID_ARG,
                      "shm %s: rank %d: %d is not a peer of this transport", op,
                      tl->rank, peer);
    if (ch < 0 || ch >= MC_NUM_CHANNELS)
        return mc_err(MC_ERR_INVALID_ARG, "shm %s: bad channel %d", op, ch);
    if (x->len && !x->buf)
        return mc_err(MC_ERR_INVALID_ARG, "shm %s: NULL buffer, len %zu", op,
                      x->len);
    if (!tl->connected)
        return mc_err(MC_ERR_INVALID_ARG, "shm %s: transport not connected",
                      op);
    mc_shm_peer_t *pe = &tl->peers[tl->peer_idx[peer]];
    mc_shm_stream_t *s = is_send ? &pe->tx[ch] : &pe->rx[ch];
    /* A receive on a gone peer's idle stream whose ring is dry ends the
     * stream now (nothing can ever arrive); a zero-length one still
     * completes, as it would on a live stream. */
    if (!is_send && pe->gone && !s->eof && !s->q && x->len) {
        uint64_t avail = mc_shm_ring_avail_reload(&s->ring);
        if (avail == UINT64_MAX) shm_mark_gone(tl, pe, MC_SHM_WHY_CORRUPT, 1);
        if (avail == 0) s->eof = 1;
    }
    if (is_send ? pe->gone : s->eof)
        return mc_err(MC_ERR_PEER_FAILED, "shm %s: rank %d: peer %d %s%s", op,
                      tl->rank, peer, pe->why ? pe->why : "failed",
                      is_send ? "" : " and its stream has ended");

    x->off = 0;
    x->next = NULL;
    x->status = MC_INPROGRESS;
    if (s->qtail)
        s->qtail->next = x;
    else
        s->q = x;
    s->qtail = x;
    /* Start at once when nothing is ahead of it (lower latency, and a send
     * that fits frees the engine's buffer immediately). Not from inside a
     * callback: the running advance loop will reach it, and recursion
     * could go as deep as the ring holds messages. A receive a gone peer
     * cannot finish stays queued; the next progress() fails it (callbacks
     * of failures run from progress only). */
    if (!tl->busy && s->q == x) {
        tl->busy++;
        int bad = 0;
        shm_advance(s, &bad);
        if (bad) shm_mark_gone(tl, pe, MC_SHM_WHY_CORRUPT, 1);
        tl->busy--;
    }
    return MC_OK;
}

static mc_status_t shm_post_send(mc_tl_t *tl, int peer, int ch, mc_xfer_t *x)
{
    return shm_post(tl, peer, ch, x, 1);
}

static mc_status_t shm_post_recv(mc_tl_t *tl, int peer, int ch, mc_xfer_t *x)
{
    return shm_post(tl, peer, ch, x, 0);
}

/* Gone as soon as that is known, even while its streams still drain. */
static mc_status_t shm_peer_status(mc_tl_t *tl, int peer)
{
    if (!tl || peer < 0 || peer >= tl->size || tl->peer_idx[peer] < 0)
        return mc_err(MC_ERR_INVALID_ARG, "shm peer_status: bad peer %d", peer);
    mc_shm_peer_t *pe = &tl->peers[tl->peer_idx[peer]];
    if (pe->gone) return MC_ERR_PEER_FAILED;
    int64_t now = 0;
    const char *why = tl->connected ? shm_check_peer(pe, &now) : NULL;
    if (!why) return MC_OK;
    shm_mark_gone(tl, pe, why, 0);
    return MC_ERR_PEER_FAILED;
}

/* ------------------------------------------------------------------------ */
/* setup                                                                    */
/* ------------------------------------------------------------------------ */

static void shm_destroy(mc_tl_t *tl)
{
    if (!tl) return;
    if (tl->ctrl) __atomic_store_n(&tl->ctrl->closed, 1, __ATOMIC_RELEASE);
    for (int i = 0; tl->peers && i < tl->npeers; i++) {
        mc_shm_peer_t *pe = &tl->peers[i];
        if (pe->ctrl) shm_bell(pe->ctrl); /* let a sleeper see `closed` */
        if (pe->map) munmap(pe->map, pe->map_len);
        if (pe->pidfd >= 0) close(pe->pidfd);
    }
    if (tl->seg) munmap(tl->seg, tl->seg_len);
    if (tl->linked) shm_unlink(tl->name);
    free(tl->peers);
    free(tl->peer_idx);
    free(tl);
}

static mc_status_t shm_create(const mc_tl_params_t *p, mc_tl_t **tl_p)
{
    mc_status_t st;
    if (!p || !tl_p)
        return mc_err(MC_ERR_INVALID_ARG, "shm create: NULL argument");
    if (p->size < 1 || p->size > MC_SHM_MAX_RANKS || p->rank < 0 ||
        p->rank >= p->size)
        return mc_err(MC_ERR_INVALID_ARG,
                      "shm create: rank %d / size %d out of range (size <= "
                      "%d)",
                      p->rank, p->size, MC_SHM_MAX_RANKS);
    if (!p->store || !p->peers)
        return mc_err(MC_ERR_INVALID_ARG, "shm create: NULL store or peers");
    if (p->peers[p->rank])
        return mc_err(MC_ERR_INVALID_ARG,
                      "shm create: rank %d lists itself as a peer", p->rank);

    const uint64_t caps[MC_NUM_CHANNELS] = {shm_coll_ring_bytes(),
                                            MC_SHM_P2P_BYTES};
    int npeers = 0;
    for (int r = 0; r < p->size; r++)
        npeers += p->peers[r] != 0;
    uint64_t dir_off = MC_SHM_PAGE;
    uint64_t dir_bytes =
        (uint64_t)p->size * MC_NUM_CHANNELS * sizeof(mc_shm_dirent_t);
    uint64_t per_peer = 0;
    for (int ch = 0; ch < MC_NUM_CHANNELS; ch++)
        per_peer += MC_SHM_RING_CTRL_BYTES + caps[ch];
    /* npeers < 2^16 and per_peer < 2^32: no overflow */
    uint64_t total =
        shm_round_up(dir_off + dir_bytes, MC_SHM_PAGE) + npeers * per_peer;
    if (total > MC_SHM_SEG_MAX || total > SIZE_MAX)
        return mc_err(MC_ERR_INVALID_ARG,
                      "shm create: segment of %" PRIu64 " bytes is too big",
                      total);

    mc_tl_t *tl = calloc(1, sizeof(*tl));
    if (!tl) return mc_err(MC_ERR_NO_MEMORY, "shm create: out of memory");
    tl->rank = p->rank;
    tl->size = p->size;
    tl->uid = p->uid;
    tl->store = p->store;
    tl->deadline_us = mc_deadline_us(p->timeout_ms);
    tl->npeers = npeers;
    tl->peer_idx = malloc((size_t)p->size * sizeof(*tl->peer_idx));
    tl->peers = calloc(npeers ? (size_t)npeers : 1, sizeof(*tl->peers));
    if (!tl->peer_idx || !tl->peers) {
        st = mc_err(MC_ERR_NO_MEMORY, "shm create: out of memory");
        goto err_free;
    }
    for (int i = 0; i < npeers; i++)
        tl->peers[i].pidfd = -1;
    shm_seg_name(p->uid, p->rank, tl->name);

    int fd = shm_open(tl->name, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) {
        st = mc_err(MC_ERR_IO, "shm create: rank %d: shm_open(%s): %s", p->rank,
                    tl->name, strerror(errno));
        goto err_free;
    }
    tl->linked = 1;
    int e = ftruncate(fd, (off_t)total) < 0 ? errno : 0;
    if (!e) {
        /* reserve every page now (tmpfs would SIGBUS on a later touch) */
        do
            e = posix_fallocate(fd, 0, (off_t)total);
        while (e == EINTR);
    }
    if (e) {
        close(fd);
        st = mc_err(MC_ERR_IO,
                    "shm create: rank %d: sizing %s to %" PRIu64
                    " bytes: %s (is /dev/shm big enough? see "
                    "MOONCAKE_SHM_RING_BYTES)",
                    p->rank, tl->name, total, strerror(e));
        goto err_unlink;
    }
    void *seg =
        mmap(NULL, (size_t)total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    e = errno;
    close(fd);
    if (seg == MAP_FAILED) {
        st = mc_err(MC_ERR_IO, "shm create: rank %d: mmap %s: %s", p->rank,
                    tl->name, strerror(e));
        goto err_unlink;
    }
    tl->seg = seg;
    tl->seg_len = (size_t)total;

    /* Lay out our rings (we are their consumer) and the directory that
     * tells each producer where its rings are. */
    mc_shm_ctrl_t *c = seg;
    mc_shm_dirent_t *dir = (mc_shm_dirent_t *)((uint8_t *)seg + dir_off);
    uint64_t off = shm_round_up(dir_off + dir_bytes, MC_SHM_PAGE);
    for (int r = 0, i = 0; r < p->size; r++) {
        tl->peer_idx[r] = -1;
        if (!p->peers[r]) continue;
        mc_shm_peer_t *pe = &tl->peers[i];
        tl->peer_idx[r] = i++;
        pe->rank = r;
        for (int ch = 0; ch < MC_NUM_CHANNELS; ch++) {
            dir[r * MC_NUM_CHANNELS + ch].off = off;
            dir[r * MC_NUM_CHANNELS + ch].cap = caps[ch];
            mc_shm_ring_init(&pe->rx[ch].ring, (uint8_t *)seg + off, caps[ch]);
            pe->rx[ch].peer = pe;
            pe->tx[ch].peer = pe;
            pe->tx[ch].is_send = 1;
            off += MC_SHM_RING_CTRL_BYTES + caps[ch];
        }
    }
    c->version = MC_SHM_VERSION;
    c->rank = p->rank;
    c->size = p->size;
    c->pid = (int32_t)getpid();
    shm_pidns(&c->pidns_dev, &c->pidns_ino);
    c->seg_bytes = total;
    c->dir_off = dir_off;
    __atomic_store_n(&c->magic, MC_SHM_MAGIC, __ATOMIC_RELEASE);
    tl->ctrl = c;

    char key[48], val[MC_SHM_NAME_MAX + 16];
    snprintf(key, sizeof(key), "shm/%d", p->rank);
    int n = snprintf(val, sizeof(val), "%s %d", tl->name, (int)getpid());
    st = mc_store_set(p->store, key, val, (size_t)n);
    if (st != MC_OK) goto err_unmap;
    *tl_p = tl;
    return MC_OK;

err_unmap:
    munmap(tl->seg, tl->seg_len);
    tl->seg = NULL;
    tl->ctrl = NULL;
err_unlink:
    shm_unlink(tl->name);
    tl->linked = 0;
err_free:
    shm_destroy(tl);
    return st;
}

/* Map one peer's segment and find the rings it holds for us. */
static mc_status_t shm_map_peer(mc_tl_t *tl, mc_shm_peer_t *pe)
{
    char key[48], val[MC_SHM_NAME_MAX + 32], name[MC_SHM_NAME_MAX],
        want[MC_SHM_NAME_MAX];
    size_t len;
    snprintf(key, sizeof(key), "shm/%d", pe->rank);
    mc_status_t st = mc_store_get(tl->store, key, shm_remaining_ms(tl), val,
                                  sizeof(val) - 1, &len);
    if (st != MC_OK) {
        char why[256];
        snprintf(why, sizeof(why), "%s", mc_last_error());
        return mc_err(st,
                      "shm connect: rank %d: peer %d did not publish "
                      "its segment: %s",
                      tl->rank, pe->rank, why);
    }
    int pid = 0;
    shm_seg_name(tl->uid, pe->rank, want);
    if (len >= sizeof(val) - 1 ||
        (val[len] = '\0', sscanf(val, "%63s %d", name, &pid) != 2) ||
        strcmp(name, want) != 0 || pid <= 0)
        return mc_err(MC_ERR_PROTOCOL,
                      "shm connect: rank %d: bad store entry for peer %d "
                      "(want \"%s <pid>\")",
                      tl->rank, pe->rank, want);

    int fd = shm_open(name, O_RDWR, 0);
    if (fd < 0)
        return mc_err(MC_ERR_IO,
                      "shm connect: rank %d: open peer %d's segment %s: %s",
                      tl->rank, pe->rank, name, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) < 0 || sb.st_size < (off_t)(2 * MC_SHM_PAGE) ||
        (uint64_t)sb.st_size > MC_SHM_SEG_MAX) {
        close(fd);
        return mc_err(MC_ERR_PROTOCOL,
                      "shm connect: rank %d: peer %d's segment %s has a bad "
                      "size",
                      tl->rank, pe->rank, name);
    }
    size_t seg_len = (size_t)sb.st_size;
    void *map = mmap(NULL, seg_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED)
        return mc_err(MC_ERR_IO, "shm connect: rank %d: mmap %s: %s", tl->rank,
                      name, strerror(e));
    pe->map = map;
    pe->map_len = seg_len;

    const mc_shm_ctrl_t *c = map;
    uint64_t ns_dev, ns_ino;
    shm_pidns(&ns_dev, &ns_ino);
    if (__atomic_load_n(&c->magic, __ATOMIC_ACQUIRE) != MC_SHM_MAGIC ||
        c->version != MC_SHM_VERSION || c->rank != pe->rank ||
        c->size != tl->size || c->pid != pid || c->seg_bytes != seg_len ||
        c->dir_off != MC_SHM_PAGE ||
        c->dir_off +
                (uint64_t)tl->size * MC_NUM_CHANNELS * sizeof(mc_shm_dirent_t) >
            seg_len)
        return mc_err(MC_ERR_PROTOCOL,
                      "shm connect: rank %d: peer %d's segment %s does not "
                      "match (magic, version, rank, size or pid)",
                      tl->rank, pe->rank, name);
    if (ns_ino && c->pidns_ino &&
        (ns_ino != c->pidns_ino || ns_dev != c->pidns_dev))
        return mc_err(MC_ERR_UNSUPPORTED,
                      "shm connect: rank %d: peer %d is in another pid "
                      "namespace; its liveness cannot be checked (use tcp)",
                      tl->rank, pe->rank);
    const mc_shm_dirent_t *dir =
        (const mc_shm_dirent_t *)((const uint8_t *)map + c->dir_off);
    for (int ch = 0; ch < MC_NUM_CHANNELS; ch++) {
        /* read once: the peer could change it under us */
        uint64_t off = __atomic_load_n(
            &dir[tl->rank * MC_NUM_CHANNELS + ch].off, __ATOMIC_RELAXED);
        uint64_t cap = __atomic_load_n(
            &dir[tl->rank * MC_NUM_CHANNELS + ch].cap, __ATOMIC_RELAXED);
        if (off == 0 || off % MC_SHM_PAGE || cap < MC_SHM_RING_MIN ||
            cap > MC_SHM_RING_MAX || (cap & (cap - 1)) || off > seg_len ||
            seg_len - off < MC_SHM_RING_CTRL_BYTES + cap)
            return mc_err(MC_ERR_PROTOCOL,
                          "shm connect: rank %d: peer %d has no valid ring "
                          "for us on channel %d (do the ranks disagree on "
                          "who is a peer?)",
                          tl->rank, pe->rank, ch);
        mc_shm_ring_init(&pe->tx[ch].ring, (uint8_t *)map + off, cap);
    }
    pe->ctrl = map;
    pe->pid = (pid_t)pid;
    pe->pidfd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
    if (pe->pidfd < 0 && errno == ESRCH)
        pe->why = "exited";
    else
        pe->why = shm_peer_gone(pe);
    if (pe->why)
        return mc_err(MC_ERR_PEER_FAILED,
                      "shm connect: rank %d: peer %d (pid %d) %s", tl->rank,
                      pe->rank, pid, pe->why);
    return MC_OK;
}

static mc_status_t shm_connect(mc_tl_t *tl)
{
    if (!tl) return mc_err(MC_ERR_INVALID_ARG, "shm connect: NULL transport");
    if (tl->connect_called)
        return mc_err(MC_ERR_INVALID_ARG, "shm connect: called twice");
    tl->connect_called = 1;
    mc_status_t st;
    char key[48];
    for (int i = 0; i < tl->npeers; i++)
        MC_CHECK_GOTO(shm_map_peer(tl, &tl->peers[i]), st, err_unlink);

    /* Unlink only after every peer has mapped our segment. */
    snprintf(key, sizeof(key), "shm/%d/mapped", tl->rank);
    MC_CHECK_GOTO(mc_store_set(tl->store, key, "1", 1), st, err_unlink);
    for (int i = 0; i < tl->npeers; i++) {
        char one[8];
        size_t len;
        snprintf(key, sizeof(key), "shm/%d/mapped", tl->peers[i].rank);
        st = mc_store_get(tl->store, key, shm_remaining_ms(tl), one,
                          sizeof(one), &len);
        if (st != MC_OK) {
            char why[256];
            snprintf(why, sizeof(why), "%s", mc_last_error());
            st = mc_err(st,
                        "shm connect: rank %d: peer %d did not map our "
                        "segment: %s",
                        tl->rank, tl->peers[i].rank, why);
            goto err_unlink;
        }
    }
    shm_unlink(tl->name);
    tl->linked = 0;
    tl->connected = 1;
    return MC_OK;

err_unlink:
    /* Peers that mapped it keep their mapping; nothing new can open it. */
    shm_unlink(tl->name);
    tl->linked = 0;
    return st;
}

const mc_tl_ops_t mc_tl_shm_ops = {
    .size = sizeof(mc_tl_ops_t),
    .name = "shm",
    .create = shm_create,
    .connect = shm_connect,
    .post_send = shm_post_send,
    .post_recv = shm_post_recv,
    .progress = shm_progress,
    .wait = shm_wait,
    .peer_status = shm_peer_status,
    .mem_reg = mc_tl_stub_mem_reg,
    .mem_dereg = mc_tl_stub_mem_dereg,
    .put = mc_tl_stub_put,
    .destroy = shm_destroy,
};
