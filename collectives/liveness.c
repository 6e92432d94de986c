/*
 * Liveness detector: UDP heartbeats between the ranks of one communicator
 * (interface, wire format and the meaning of "silent" in liveness.h).
 *
 * The thread loops on poll() over three descriptors: the UDP socket, a
 * periodic timerfd (one heartbeat round per tick) and a stop eventfd. Its
 * poll timeout is the earliest moment a not-yet-suspected peer's silence
 * would cross the timeout, so suspicion is decided on time even though
 * heartbeats are only sent every `interval`. Each pass:
 *   1. on a timer tick, send one heartbeat to every watched peer
 *      (sendmmsg, MSG_DONTWAIT: a full socket drops the heartbeat and
 *      counts it, it never waits);
 *   2. take t = now, then read the socket until it is empty; every valid
 *      heartbeat sets its sender's `heard_us` to the clock read just after
 *      the recvmmsg that returned it (>= its arrival);
 *   3. only if the socket was emptied, publish drain_us = t (release);
 *   4. on a tick, when the poll timeout is due, or when a suspected peer
 *      was heard: review every peer (log and signal changes of the suspect
 *      set, compute the next poll timeout). Not per datagram: O(size).
 * Readers compute silence as drain_us - heard_us (0 if negative). All that
 * arrived before t was read in step 2 and stamped no earlier than it
 * arrived, so the reading never exceeds the true silence at drain_us,
 * whatever the readers' or the thread's own scheduling (a thread stopped
 * or preempted between t and its reads stamps them late, not early). A
 * flooded socket (a pass stops after MC_LIVE_DRAIN_MAX datagrams so the
 * next heartbeat round is not starved) or a failing recvmmsg keeps
 * drain_us where it was: detection waits rather than suspecting on unread
 * data.
 */
#define _GNU_SOURCE
#include "liveness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "mc_log.h"
#include "sockaddr.h"

#define MC_LIVE_MAX_SIZE (1 << 22) /* sanity bound on ranks (as tcp) */
#define MC_LIVE_ADDR_LEN 96        /* "ip:port/incarnation" */
#define MC_LIVE_BATCH 64           /* datagrams per sendmmsg/recvmmsg */
#define MC_LIVE_RXBUF 64 /* > MC_LIVE_DGRAM_LEN: longer ones show as such */
#define MC_LIVE_DRAIN_MAX 4096    /* datagrams read per pass at most */
#define MC_LIVE_SOCKBUF (1 << 20) /* SO_RCVBUF request; kernel clamps */

typedef struct mc_live_peer {
    _Atomic int64_t heard_us; /* thread clock of the last valid heartbeat */
    _Atomic uint8_t watch;    /* cleared for good by mc_live_forget */
    uint8_t suspect;          /* thread only: state it last reported */
    uint8_t send_err_logged;  /* thread only */
    uint64_t inc;             /* published incarnation (connect) */
    uint64_t counter;         /* thread only: highest counter accepted */
    struct sockaddr_in sa;    /* published address (connect) */
    /* mc_live_watch: a new process for the slot, applied by the thread
     * (under pend_lock) */
    uint8_t pend;
    uint64_t pend_inc;
    struct sockaddr_in pend_sa;
} mc_live_peer_t;

struct mc_live {
    int rank, size;
    mc_store_h store; /* create and connect only */
    uint64_t uid, inc;
    int64_t timeout_us, interval_us, connect_timeout_ms;
    int fd;       /* UDP socket */
    int tfd;      /* heartbeat timerfd (connect) */
    int stop_fd;  /* eventfd: thread exit */
    int event_fd; /* eventfd: suspect set changed */
    int nwatch;   /* peers watched at create */
    int connected, thread_started;
    pthread_t thread;
    _Atomic int64_t drain_us; /* 0 before connect */
    uint64_t counter;         /* thread only: heartbeat rounds */
    uint8_t recv_err_logged;  /* thread only */
    uint8_t heard_suspect;    /* thread only: a suspected peer spoke */
    _Atomic uint64_t n_sent, n_send_failed, n_received, n_ignored;
    mc_live_peer_t *peers; /* size entries */
    char addr[MC_LIVE_ADDR_LEN];
    pthread_mutex_t pend_lock; /* peers[].pend* */
    _Atomic int any_pend;
};

/* ------------------------------------------------------------------------ */
/* Wire                                                                     */
/* ------------------------------------------------------------------------ */

static void live_put32(uint8_t *b, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        b[i] = (uint8_t)(v >> (8 * i));
}

static void live_put64(uint8_t *b, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t live_get32(const uint8_t *b)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)b[i] << (8 * i);
    return v;
}

static uint64_t live_get64(const uint8_t *b)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)b[i] << (8 * i);
    return v;
}

static void live_encode(const mc_live_t *l, uint8_t *b, int to)
{
    live_put32(b, MC_LIVE_MAGIC);
    live_put32(b + 4, MC_LIVE_VERSION);
    live_put64(b + 8, l->uid);
    live_put32(b + 16, (uint32_t)l->rank);
    live_put32(b + 20, (uint32_t)to);
    live_put64(b + 24, l->inc);
    live_put64(b + 32, l->counter);
}

/* The sender's rank if the datagram counts, else -1. */
static int live_accept(mc_live_t *l, const uint8_t *b, size_t len, int trunc)
{
    if (trunc || len != MC_LIVE_DGRAM_LEN) return -1;
    if (live_get32(b) != MC_LIVE_MAGIC || live_get32(b + 4) != MC_LIVE_VERSION)
        return -1;
    if (live_get64(b + 8) != l->uid) return -1;
    uint32_t from = live_get32(b + 16);
    if (from >= (uint32_t)l->size || from == (uint32_t)l->rank) return -1;
    if (live_get32(b + 20) != (uint32_t)l->rank) return -1;
    mc_live_peer_t *p = &l->peers[from];
    if (!atomic_load_explicit(&p->watch, memory_order_relaxed)) return -1;
    if (live_get64(b + 24) != p->inc) return -1;
    uint64_t c = live_get64(b + 32);
    if (c <= p->counter) return -1; /* replayed or reordered */
    p->counter = c;
    l->heard_suspect |= p->suspect;
    return (int)from;
}

/* ------------------------------------------------------------------------ */
/* Thread                                                                   */
/* ------------------------------------------------------------------------ */

/* Thread: start watching the processes mc_live_watch named. */
static void live_apply_pending(mc_live_t *l)
{
    if (!atomic_exchange_explicit(&l->any_pend, 0, memory_order_acq_rel))
        return;
    int64_t now = mc_now_us();
    pthread_mutex_lock(&l->pend_lock);
    for (int r = 0; r < l->size; r++) {
        mc_live_peer_t *p = &l->peers[r];
        if (!p->pend) continue;
        p->pend = 0;
        p->sa = p->pend_sa;
        p->inc = p->pend_inc;
        p->counter = 0;
        p->suspect = 0;
        p->send_err_logged = 0;
        atomic_store_explicit(&p->heard_us, now, memory_order_relaxed);
        atomic_store_explicit(&p->watch, 1, memory_order_release);
    }
    pthread_mutex_unlock(&l->pend_lock);
}

static void live_send_round(mc_live_t *l)
{
    struct mmsghdr msg[MC_LIVE_BATCH];
    struct iovec iov[MC_LIVE_BATCH];
    uint8_t buf[MC_LIVE_BATCH][MC_LIVE_DGRAM_LEN];
    int who[MC_LIVE_BATCH];
    l->counter++;
    int r = 0;
    while (r < l->size) {
        int n = 0;
        for (; r < l->size && n < MC_LIVE_BATCH; r++) {
            mc_live_peer_t *p = &l->peers[r];
            if (!atomic_load_explicit(&p->watch, memory_order_relaxed))
                continue;
            live_encode(l, buf[n], r);
            iov[n] = (struct iovec){buf[n], MC_LIVE_DGRAM_LEN};
            memset(&msg[n], 0, sizeof(msg[n]));
            msg[n].msg_hdr.msg_name = &p->sa;
            msg[n].msg_hdr.msg_namelen = sizeof(p->sa);
            msg[n].msg_hdr.msg_iov = &iov[n];
            msg[n].msg_hdr.msg_iovlen = 1;
            who[n++] = r;
        }
        int i = 0;
        while (i < n) {
            int k = sendmmsg(l->fd, msg + i, (unsigned)(n - i),
                             MSG_DONTWAIT | MSG_NOSIGNAL);
            if (k > 0) {
                atomic_fetch_add_explicit(&l->n_sent, (uint64_t)k,
                                          memory_order_relaxed);
                i += k;
                continue;
            }
            if (k < 0 && errno == EINTR) continue;
            /* msg[i] failed (full socket, unreachable, filtered): drop it,
             * the next round tries again. */
            mc_live_peer_t *p = &l->peers[who[i]];
            if (!p->send_err_logged) {
                p->send_err_logged = 1;
                MC_LOG(MC_LOG_DEBUG,
                       "liveness: rank %d: heartbeat to rank %d failed: %s "
                       "(logged once)",
                       l->rank, who[i], k < 0 ? strerror(errno) : "no send");
            }
            atomic_fetch_add_explicit(&l->n_send_failed, 1,
                                      memory_order_relaxed);
            i++;
        }
    }
}

/* Read the socket until it is empty; returns 1 if it was emptied. */
static int live_drain(mc_live_t *l)
{
    struct mmsghdr msg[MC_LIVE_BATCH];
    struct iovec iov[MC_LIVE_BATCH];
    uint8_t buf[MC_LIVE_BATCH][MC_LIVE_RXBUF];
    for (int i = 0; i < MC_LIVE_BATCH; i++) {
        iov[i] = (struct iovec){buf[i], MC_LIVE_RXBUF};
        memset(&msg[i], 0, sizeof(msg[i]));
        msg[i].msg_hdr.msg_iov = &iov[i];
        msg[i].msg_hdr.msg_iovlen = 1;
    }
    for (int got = 0; got < MC_LIVE_DRAIN_MAX;) {
        int n = recvmmsg(l->fd, msg, MC_LIVE_BATCH, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 1;
            if (!l->recv_err_logged) {
                l->recv_err_logged = 1;
                MC_LOG(MC_LOG_WARN,
                       "liveness: rank %d: recvmmsg: %s (logged once)", l->rank,
                       strerror(errno));
            }
            return 0;
        }
        if (n == 0) return 1;
        int64_t t = mc_now_us();
        uint64_t ok = 0, bad = 0;
        for (int i = 0; i < n; i++) {
            int from = live_accept(l, buf[i], msg[i].msg_len,
                                   !!(msg[i].msg_hdr.msg_flags & MSG_TRUNC));
            if (from < 0) {
                bad++;
                continue;
            }
            ok++;
            atomic_store_explicit(&l->peers[from].heard_us, t,
                                  memory_order_relaxed);
        }
        if (ok)
            atomic_fetch_add_explicit(&l->n_received, ok, memory_order_relaxed);
        if (bad)
            atomic_fetch_add_explicit(&l->n_ignored, bad, memory_order_relaxed);
        got += n;
        if (n < MC_LIVE_BATCH) return 1;
    }
    return 0;
}

/* Report changes of the suspect set (log, event fd) and return when the
 * first watched, unsuspected peer would become suspected (INT64_MAX: no
 * such peer). O(size): done on timer ticks, when that moment has come, and
 * when a suspected peer was heard; not for every datagram. */
static int64_t live_review(mc_live_t *l)
{
    int64_t d = atomic_load_explicit(&l->drain_us, memory_order_relaxed);
    int64_t next = INT64_MAX;
    int changed = 0;
    for (int r = 0; r < l->size; r++) {
        mc_live_peer_t *p = &l->peers[r];
        if (!atomic_load_explicit(&p->watch, memory_order_relaxed)) continue;
        int64_t h = atomic_load_explicit(&p->heard_us, memory_order_relaxed);
        int s = d - h > l->timeout_us;
        if (s != p->suspect) {
            p->suspect = (uint8_t)s;
            changed = 1;
            if (s)
                MC_LOG(MC_LOG_INFO,
                       "liveness: rank %d: rank %d silent for %lld ms "
                       "(timeout %lld ms): suspected",
                       l->rank, r, (long long)((d - h) / 1000),
                       (long long)(l->timeout_us / 1000));
            else
                MC_LOG(MC_LOG_INFO, "liveness: rank %d: rank %d heard again",
                       l->rank, r);
        }
        /* +1 ms: silence must exceed the timeout, and poll rounds down */
        if (!s && h + l->timeout_us + 1000 < next)
            next = h + l->timeout_us + 1000;
    }
    if (changed) {
        uint64_t one = 1;
        ssize_t w = write(l->event_fd, &one, sizeof(one));
        (void)w; /* EAGAIN: counter saturated, already readable */
    }
    return next;
}

static void *live_main(void *arg)
{
    mc_live_t *l = arg;
    struct pollfd pfd[3] = {{.fd = l->fd, .events = POLLIN},
                            {.fd = l->tfd, .events = POLLIN},
                            {.fd = l->stop_fd, .events = POLLIN}};
    int64_t next_us = 0; /* next review */
    for (;;) {
        /* heard_us only grows, so next_us is never late, at worst early */
        int timeout = -1;
        if (next_us != INT64_MAX) {
            int64_t w = next_us - mc_now_us();
            timeout = w <= 0         ? 0
                      : w > 60000000 ? 60000
                                     : (int)((w + 999) / 1000);
        }
        int n = poll(pfd, 3, timeout);
        if (n < 0 && errno != EINTR) {
            /* only ENOMEM is plausible: do not spin */
            MC_LOG(MC_LOG_WARN, "liveness: rank %d: poll: %s", l->rank,
                   strerror(errno));
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
        if (n > 0 && pfd[2].revents) break;
        int tick = 0;
        if (n > 0 && (pfd[1].revents & POLLIN)) {
            uint64_t ticks;
            tick =
                read(l->tfd, &ticks, sizeof(ticks)) == (ssize_t)sizeof(ticks);
            if (tick) {
                live_apply_pending(l);
                live_send_round(l);
            }
        }
        int64_t t = mc_now_us();
        if (live_drain(l))
            atomic_store_explicit(&l->drain_us, t, memory_order_release);
        if (tick || t >= next_us || l->heard_suspect) {
            l->heard_suspect = 0;
            next_us = live_review(l);
        }
    }
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* create                                                                   */
/* ------------------------------------------------------------------------ */

static mc_status_t live_bind(mc_live_t *l, struct in_addr ip)
{
    int64_t base;
    mc_status_t bst = mc_sock_port_base("liveness", &base);
    if (bst != MC_OK) return bst;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return mc_err(MC_ERR_IO, "liveness: socket: %s", strerror(errno));
    int v = MC_LIVE_SOCKBUF;
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, sizeof(v));
    /* Ahead of bulk data in priority-band qdiscs (pfifo_fast, prio); 6 is
     * the highest value allowed without CAP_NET_ADMIN. */
    v = 6;
    (void)setsockopt(fd, SOL_SOCKET, SO_PRIORITY, &v, sizeof(v));

    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr = ip};
    char ipstr[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &ip, ipstr, sizeof(ipstr));
    /* With a port base, ranks sharing a host take base+rank upward (UDP
     * ports: no clash with the TCP listeners on the same numbers). */
    int64_t first = base ? base + l->rank % 4096 : 0;
    int tries = base ? 256 : 1, bound = 0, err = 0;
    for (int i = 0; i < tries && !bound; i++) {
        int64_t port = base ? first + i : 0;
        if (port > 65535) break;
        sa.sin_port = htons((uint16_t)port);
        if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
            bound = 1;
        else if ((err = errno) != EADDRINUSE)
            break;
    }
    socklen_t sl = sizeof(sa);
    if (bound && getsockname(fd, (struct sockaddr *)&sa, &sl) != 0) {
        bound = 0;
        err = errno;
    }
    if (!bound) {
        close(fd);
        return mc_err(MC_ERR_IO, "liveness: bind udp %s (port base %lld): %s",
                      ipstr, (long long)base, strerror(err ? err : EADDRINUSE));
    }
    snprintf(l->addr, sizeof(l->addr), "%s:%u/%016llx", ipstr,
             (unsigned)ntohs(sa.sin_port), (unsigned long long)l->inc);
    l->fd = fd;
    return MC_OK;
}

/* Prefix the store's message (copied: mc_err reuses its buffer). */
static mc_status_t live_store_err(mc_status_t st, int rank, const char *what,
                                  const char *key)
{
    char why[512];
    snprintf(why, sizeof(why), "%s", mc_last_error());
    return mc_err(st, "liveness: rank %d: %s %s in the store: %s", rank, what,
                  key, why);
}

static int64_t live_clamp(int64_t v, int64_t lo, int64_t hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

mc_status_t mc_live_create(const mc_live_params_t *p, mc_live_t **out)
{
    if (!p || !out)
        return mc_err(MC_ERR_INVALID_ARG, "liveness: NULL argument");
    if (p->size < 1 || p->size > MC_LIVE_MAX_SIZE || p->rank < 0 ||
        p->rank >= p->size)
        return mc_err(MC_ERR_INVALID_ARG, "liveness: bad rank %d / size %d",
                      p->rank, p->size);
    if (!p->store || !p->peers)
        return mc_err(MC_ERR_INVALID_ARG, "liveness: NULL store or peer set");

    mc_status_t st;
    mc_live_t *l = calloc(1, sizeof(*l));
    if (!l) return mc_err(MC_ERR_NO_MEMORY, "liveness: out of memory");
    l->rank = p->rank;
    l->size = p->size;
    l->store = p->store;
    l->uid = p->uid;
    l->connect_timeout_ms = p->connect_timeout_ms;
    l->fd = l->tfd = l->stop_fd = l->event_fd = -1;
    pthread_mutex_init(&l->pend_lock, NULL);
    atomic_init(&l->any_pend, 0);
    l->peers = calloc((size_t)p->size, sizeof(*l->peers));
    if (!l->peers) {
        st = mc_err(MC_ERR_NO_MEMORY, "liveness: out of memory (%d peers)",
                    p->size);
        goto free_l;
    }
    for (int r = 0; r < p->size; r++) {
        uint8_t w = r != p->rank && p->peers[r];
        atomic_init(&l->peers[r].watch, w);
        atomic_init(&l->peers[r].heard_us, 0);
        l->nwatch += w;
    }
    atomic_init(&l->drain_us, 0);
    atomic_init(&l->n_sent, 0);
    atomic_init(&l->n_send_failed, 0);
    atomic_init(&l->n_received, 0);
    atomic_init(&l->n_ignored, 0);

    int64_t to = p->timeout_ms;
    if (to <= 0)
        to = mc_env_int("MOONCAKE_LIVENESS_TIMEOUT_MS",
                        MC_LIVE_TIMEOUT_MS_DEFAULT);
    if (to <= 0) to = MC_LIVE_TIMEOUT_MS_DEFAULT;
    to = live_clamp(to, 1, (int64_t)1 << 40);
    int64_t iv = p->interval_ms;
    if (iv <= 0) iv = mc_env_int("MOONCAKE_LIVENESS_INTERVAL_MS", 0);
    if (iv <= 0)
        iv =
            to / 6 < MC_LIVE_INTERVAL_MS_MAX ? to / 6 : MC_LIVE_INTERVAL_MS_MAX;
    iv = live_clamp(iv, 1, to / 2 > 1 ? to / 2 : 1);
    l->timeout_us = to * 1000;
    l->interval_us = iv * 1000;

    while (l->inc == 0)
        if (getrandom(&l->inc, sizeof(l->inc), 0) != (ssize_t)sizeof(l->inc))
            l->inc = ((uint64_t)mc_now_us() << 20) ^ (uint64_t)getpid() ^
                     (uint64_t)(uintptr_t)l;

    l->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    l->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (l->stop_fd < 0 || l->event_fd < 0) {
        st = mc_err(MC_ERR_IO, "liveness: eventfd: %s", strerror(errno));
        goto free_l;
    }
    struct in_addr ip = {0};
    MC_CHECK_GOTO(mc_sock_pick_addr("liveness", &ip), st, free_l);
    MC_CHECK_GOTO(live_bind(l, ip), st, free_l);

    char key[32];
    snprintf(key, sizeof(key), "live/%d", l->rank);
    st = mc_store_set(l->store, key, l->addr, strlen(l->addr));
    if (st != MC_OK) {
        st = live_store_err(st, l->rank, "publishing", key);
        goto free_l;
    }
    MC_LOG(MC_LOG_DEBUG,
           "liveness: rank %d on udp %s, timeout %lld ms, interval %lld ms",
           l->rank, l->addr, (long long)to, (long long)iv);
    *out = l;
    return MC_OK;

free_l:
    mc_live_destroy(l);
    return st;
}

/* ------------------------------------------------------------------------ */
/* connect                                                                  */
/* ------------------------------------------------------------------------ */

/* "a.b.c.d:port/incarnation" (see liveness.h). */
static int live_parse(const char *s, struct sockaddr_in *sa, uint64_t *inc_p)
{
    const char *slash = strchr(s, '/');
    if (!slash || mc_sock_parse_addr(s, (size_t)(slash - s), sa) != 0)
        return -1;
    char *end;
    errno = 0;
    unsigned long long inc = strtoull(slash + 1, &end, 16);
    if (errno || *end || end == slash + 1 || inc == 0) return -1;
    *inc_p = inc;
    return 0;
}

/* After a timeout on `first`: "3 5 7" (every watched peer without a key). */
static void live_missing(mc_live_t *l, int first, char *buf, size_t cap)
{
    size_t n = (size_t)snprintf(buf, cap, "%d", first);
    for (int r = first + 1; r < l->size && n + 16 < cap; r++) {
        if (!atomic_load_explicit(&l->peers[r].watch, memory_order_relaxed))
            continue;
        char key[32];
        int exists = 1;
        snprintf(key, sizeof(key), "live/%d", r);
        if (mc_store_check(l->store, key, &exists) == MC_OK && !exists)
            n += (size_t)snprintf(buf + n, cap - n, " %d", r);
    }
    if (n + 16 >= cap) snprintf(buf + n, cap - n, " ...");
}

mc_status_t mc_live_connect(mc_live_t *l)
{
    if (!l) return mc_err(MC_ERR_INVALID_ARG, "liveness: NULL instance");
    if (l->connected)
        return mc_err(MC_ERR_INVALID_ARG, "liveness: connect called twice");
    int64_t deadline = mc_deadline_us(l->connect_timeout_ms);
    mc_status_t st;
    for (int r = 0; r < l->size; r++) {
        mc_live_peer_t *p = &l->peers[r];
        if (!atomic_load_explicit(&p->watch, memory_order_relaxed)) continue;
        char key[32], val[MC_LIVE_ADDR_LEN];
        snprintf(key, sizeof(key), "live/%d", r);
        int64_t left = -1; /* forever */
        if (l->connect_timeout_ms >= 0) {
            left = (deadline - mc_now_us()) / 1000;
            if (left < 0) left = 0;
        }
        size_t len = 0;
        st = mc_store_get(l->store, key, left, val, sizeof(val) - 1, &len);
        if (st == MC_ERR_TIMEOUT) {
            char miss[256];
            live_missing(l, r, miss, sizeof(miss));
            st = mc_err(MC_ERR_TIMEOUT,
                        "liveness: rank %d: connect timed out after %lld ms; "
                        "no address from ranks %s",
                        l->rank, (long long)l->connect_timeout_ms, miss);
            MC_LOG(MC_LOG_ERROR, "%s", mc_last_error());
            return st;
        }
        if (st != MC_OK) return live_store_err(st, l->rank, "reading", key);
        val[len < sizeof(val) ? len : sizeof(val) - 1] = '\0';
        if (len >= sizeof(val) - 1 || live_parse(val, &p->sa, &p->inc) != 0)
            return mc_err(MC_ERR_PROTOCOL,
                          "liveness: rank %d: malformed address for rank %d "
                          "in %s",
                          l->rank, r, key);
    }
    l->store = NULL; /* the caller may destroy it now */
    l->connected = 1;
    if (!l->nwatch) return MC_OK;

    l->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    if (l->tfd < 0)
        return mc_err(MC_ERR_IO, "liveness: rank %d: timerfd_create: %s",
                      l->rank, strerror(errno));
    /* first round at once, so peers hear us as soon as they connect */
    struct itimerspec its = {.it_interval = {l->interval_us / 1000000,
                                             (l->interval_us % 1000000) * 1000},
                             .it_value = {0, 1}};
    if (timerfd_settime(l->tfd, 0, &its, NULL) != 0)
        return mc_err(MC_ERR_IO, "liveness: rank %d: timerfd_settime: %s",
                      l->rank, strerror(errno));

    /* every clock starts now */
    int64_t now = mc_now_us();
    for (int r = 0; r < l->size; r++)
        atomic_store_explicit(&l->peers[r].heard_us, now, memory_order_relaxed);
    atomic_store_explicit(&l->drain_us, now, memory_order_release);

    /* Signals go to the application's threads, never to this one. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&l->thread, NULL, live_main, l);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0)
        return mc_err(MC_ERR_IO, "liveness: rank %d: pthread_create: %s",
                      l->rank, strerror(rc));
    l->thread_started = 1;
    return MC_OK;
}

/* ------------------------------------------------------------------------ */
/* Readers                                                                  */
/* ------------------------------------------------------------------------ */

int mc_live_suspects(mc_live_t *l, uint8_t *out)
{
    if (!l) return 0;
    int n = 0;
    for (int r = 0; r < l->size; r++) {
        int s = mc_live_suspected(l, r);
        if (out) out[r] = (uint8_t)s;
        n += s;
    }
    return n;
}

int mc_live_suspected(mc_live_t *l, int peer)
{
    if (!l || peer < 0 || peer >= l->size) return 0;
    int64_t d = atomic_load_explicit(&l->drain_us, memory_order_acquire);
    mc_live_peer_t *p = &l->peers[peer];
    /* acquire: a re-watched peer's heard_us is stored before its watch */
    if (!d || !atomic_load_explicit(&p->watch, memory_order_acquire)) return 0;
    int64_t h = atomic_load_explicit(&p->heard_us, memory_order_relaxed);
    return d - h > l->timeout_us;
}

int64_t mc_live_silent_ms(mc_live_t *l, int peer)
{
    if (!l || peer < 0 || peer >= l->size) return -1;
    int64_t d = atomic_load_explicit(&l->drain_us, memory_order_acquire);
    mc_live_peer_t *p = &l->peers[peer];
    if (!d || !atomic_load_explicit(&p->watch, memory_order_relaxed)) return -1;
    int64_t h = atomic_load_explicit(&p->heard_us, memory_order_relaxed);
    return d > h ? (d - h) / 1000 : 0;
}

void mc_live_forget(mc_live_t *l, int peer)
{
    if (!l || peer < 0 || peer >= l->size) return;
    atomic_store_explicit(&l->peers[peer].watch, 0, memory_order_relaxed);
    if (l->thread_started) {
        pthread_mutex_lock(&l->pend_lock);
        l->peers[peer].pend = 0; /* a watch not yet applied is void */
        pthread_mutex_unlock(&l->pend_lock);
    }
}

mc_status_t mc_live_watch(mc_live_t *l, int peer, const char *addr)
{
    if (!l || peer < 0 || peer >= l->size || peer == l->rank || !addr)
        return mc_err(MC_ERR_INVALID_ARG, "liveness: bad watch of rank %d",
                      peer);
    struct sockaddr_in sa;
    uint64_t inc;
    if (strlen(addr) >= MC_LIVE_ADDR_LEN || live_parse(addr, &sa, &inc) != 0)
        return mc_err(MC_ERR_PROTOCOL,
                      "liveness: rank %d: malformed address for rank %d",
                      l->rank, peer);
    if (!l->thread_started)
        return mc_err(MC_ERR_INVALID_ARG,
                      "liveness: rank %d: watch before connect", l->rank);
    atomic_store_explicit(&l->peers[peer].watch, 0, memory_order_relaxed);
    pthread_mutex_lock(&l->pend_lock);
    l->peers[peer].pend = 1;
    l->peers[peer].pend_sa = sa;
    l->peers[peer].pend_inc = inc;
    pthread_mutex_unlock(&l->pend_lock);
    atomic_store_explicit(&l->any_pend, 1, memory_order_release);
    return MC_OK;
}

int mc_live_event_fd(mc_live_t *l)
{
    return l ? l->event_fd : -1;
}

void mc_live_stats(mc_live_t *l, mc_live_stats_t *out)
{
    if (!out) return;
    memset(out, 0, sizeof(*out));
    if (!l) return;
    out->sent = atomic_load_explicit(&l->n_sent, memory_order_relaxed);
    out->send_failed =
        atomic_load_explicit(&l->n_send_failed, memory_order_relaxed);
    out->received = atomic_load_explicit(&l->n_received, memory_order_relaxed);
    out->ignored = atomic_load_explicit(&l->n_ignored, memory_order_relaxed);
    out->timeout_ms = l->timeout_us / 1000;
    out->interval_ms = l->interval_us / 1000;
}

void mc_live_destroy(mc_live_t *l)
{
    if (!l) return;
    if (l->thread_started) {
        uint64_t one = 1;
        ssize_t w;
        do {
            w = write(l->stop_fd, &one, sizeof(one));
        } while (w < 0 && errno == EINTR);
        pthread_join(l->thread, NULL);
    }
    if (l->fd >= 0) close(l->fd);
    if (l->tfd >= 0) close(l->tfd);
    if (l->stop_fd >= 0) close(l->stop_fd);
    if (l->event_fd >= 0) close(l->event_fd);
    free(l->peers);
    pthread_mutex_destroy(&l->pend_lock);
    free(l);
}
