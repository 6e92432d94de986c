/*
 * TCP transport: one TCP connection per (peer, channel), carrying both
 * directions of that pair's byte streams.
 *
 * Wire-up: every rank listens on one IPv4 socket and publishes "ip:port"
 * under "tcp/<rank>". For each pair the higher rank connects to the lower
 * rank's listener, once per channel, and sends a 24-byte hello
 * {magic, version, rank, channel, uid}; the lower rank validates it and
 * answers with its own hello for the same channel (the ack). A connection is
 * in use only once both hellos have crossed, so a stale listener (another
 * communicator's) or a stray client never gets installed.
 *
 * Data path: each stream keeps FIFO queues of posted sends and receives.
 * `progress` only touches streams on the active list (streams with posted
 * transfers, or a hang-up to look at), moves bytes with one sendmsg/recvmsg
 * over up to MC_TCP_IOV queued transfers (a header and its payload usually
 * share a syscall), and never reads unless a receive is posted, so unread
 * data stays in the kernel (backpressure). Completions are popped from the
 * queue before their status is written and their callback run, so a
 * callback may post anywhere, including the stream being processed.
 *
 * End of stream: each incoming (peer, channel) stream ends on its own, when
 * recv() returns 0 (the peer's FIN) or a hard error - never earlier. The
 * engine reads a frame in two steps (header, then the payload it announces,
 * posted from a later progress call), so a peer that wrote a frame and then
 * closed or died must still deliver it: until its end, a stream serves
 * posted receives, including ones posted after the peer was known dead,
 * from the bytes already in the kernel buffer. At the end, a receive that
 * still lacks bytes (partly filled or not at all) fails with
 * MC_ERR_PEER_FAILED, and so do later posts needing bytes; a zero-length
 * receive needs none and completes in order.
 *
 * Peer failure: the first EOF, hang-up (POLLRDHUP/HUP/ERR, seen by `wait`
 * or `peer_status`) or fatal errno on any socket of a peer marks the whole
 * peer failed: logged once (a clean close at info level, errors as
 * warnings), peer_status reports it, every posted send completes with
 * MC_ERR_PEER_FAILED and later sends are refused. A stream's socket is
 * closed at its end. A killed or exiting process closes every socket, so
 * every stream ends as soon as its data has been read; as a bound for
 * broken cases only (a socket that neither delivers nor ends while its
 * peer is known dead, e.g. a host gone after a reset on another channel),
 * a posted receive waiting without a byte for MOONCAKE_TCP_CLOSE_GRACE_MS
 * (default 2000, at least 100) after the failure ends its stream. `wait` and
 * `peer_status` only detect; completions (and so callbacks) happen in
 * `progress` only.
 */
#define _GNU_SOURCE
#include "transport/transport.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "mc_log.h"

#define MC_TCP_MAGIC 0x4d435450u /* "MCTP" */
#define MC_TCP_VERSION 1u
#define MC_TCP_HELLO_LEN 24
#define MC_TCP_IOV 64             /* transfers gathered into one syscall */
#define MC_TCP_SPIN 8             /* syscalls per stream direction per visit */
#define MC_TCP_ROUNDS 4           /* send/recv alternations per visit */
#define MC_TCP_MAX_SIZE (1 << 22) /* sanity bound on ranks */
#define MC_TCP_POLL_ALL 512 /* wait() polls every socket up to this many */
#define MC_TCP_ADDR_LEN 64
#define MC_TCP_PENDING_MAX 256    /* accepted sockets awaiting their hello */
#define MC_TCP_PENDING_US 5000000 /* a client must say hello within 5 s */
#define MC_TCP_BACKOFF_MIN_US 2000
#define MC_TCP_BACKOFF_MAX_US 200000

typedef struct mc_tcp_q {
    mc_xfer_t *head, *tail;
} mc_tcp_q_t;

typedef struct mc_tcp_stream {
    int fd; /* closed (-1) once the incoming stream ended */
    int peer, ch;
    mc_tcp_q_t sq, rq;
    uint8_t active; /* on tl->active */
    uint8_t probe;  /* wait() saw a hang-up or error: look in progress */
    uint8_t rx_end; /* incoming stream ended: EOF or fatal errno read */
    uint8_t tx_blocked, rx_blocked; /* per visit: socket full / drained */
    int64_t rx_idle_us; /* peer failed: last time a receive got bytes */
} mc_tcp_stream_t;

typedef struct mc_tcp_peer {
    mc_tcp_stream_t ch[MC_NUM_CHANNELS];
    uint8_t want;   /* in p->peers */
    uint8_t failed; /* evidence of death seen; sends refused */
} mc_tcp_peer_t;

struct mc_tl {
    int rank, size;
    mc_store_h store;
    uint64_t uid;
    int64_t timeout_ms;
    int listen_fd;
    int bufsz;        /* SO_SNDBUF/SO_RCVBUF request, 0 = kernel default */
    int user_timeout; /* TCP_USER_TIMEOUT ms, 0 = kernel default */
    int64_t grace_us; /* see tcp_stream_stalled */
    int connected;
    int in_progress;      /* re-entrancy guard: a callback calling progress */
    mc_tcp_peer_t *peers; /* size entries */
    mc_tcp_stream_t **streams; /* every connected stream */
    int nstreams;
    mc_tcp_stream_t **active; /* streams with work; capacity nstreams */
    int nactive;
    struct pollfd *pfd; /* wait(): capacity nstreams */
    mc_tcp_stream_t **pfd_s;
    char addr[MC_TCP_ADDR_LEN]; /* our "ip:port" */
};

static const char *const mc_tcp_ch_name[MC_NUM_CHANNELS] = {"coll", "p2p"};

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */
/* ------------------------------------------------------------------------ */

static void tcp_put32(uint8_t *b, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        b[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t tcp_get32(const uint8_t *b)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)b[i] << (8 * i);
    return v;
}

/* Hello (and ack): little-endian {magic, version, rank, channel, uid}. */
static void tcp_hello_encode(uint8_t *b, uint64_t uid, int rank, int ch)
{
    tcp_put32(b, MC_TCP_MAGIC);
    tcp_put32(b + 4, MC_TCP_VERSION);
    tcp_put32(b + 8, (uint32_t)rank);
    tcp_put32(b + 12, (uint32_t)ch);
    tcp_put32(b + 16, (uint32_t)uid);
    tcp_put32(b + 20, (uint32_t)(uid >> 32));
}

/* Returns NULL if valid, else why not; rank/channel come back raw. */
static const char *tcp_hello_decode(const uint8_t *b, uint64_t uid,
                                    uint32_t *rank_p, uint32_t *ch_p)
{
    if (tcp_get32(b) != MC_TCP_MAGIC) return "bad magic";
    if (tcp_get32(b + 4) != MC_TCP_VERSION) return "protocol version mismatch";
    uint64_t u = tcp_get32(b + 16) | (uint64_t)tcp_get32(b + 20) << 32;
    if (u != uid) return "communicator uid mismatch";
    *rank_p = tcp_get32(b + 8);
    *ch_p = tcp_get32(b + 12);
    return NULL;
}

static void tcp_close(int *fd)
{
    if (*fd >= 0) close(*fd);
    *fd = -1;
}

/* Buffer sizes must be set before connect/listen to affect the window
 * scale; accepted sockets inherit the listener's. Failures are harmless
 * (the kernel clamps to net.core.[rw]mem_max anyway). */
static void tcp_set_bufs(const mc_tl_t *tl, int fd)
{
    if (tl->bufsz <= 0) return;
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &tl->bufsz, sizeof(int));
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &tl->bufsz, sizeof(int));
}

static void tcp_set_stream_opts(const mc_tl_t *tl, int fd)
{
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    (void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    /* Keepalive finds a silently vanished host in ~1 min instead of 2 h. */
    int idle = 30, intvl = 5, cnt = 6;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
    if (tl->user_timeout > 0)
        (void)setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &tl->user_timeout,
                         sizeof(int));
}

/* Prefix the store's own message (copied first: mc_err writes the same
 * thread-local buffer mc_last_error returns). */
static mc_status_t tcp_store_err(mc_status_t st, int rank, const char *what,
                                 const char *key)
{
    char why[512];
    snprintf(why, sizeof(why), "%s", mc_last_error());
    return mc_err(st, "tcp: rank %d: %s %s in the store: %s", rank, what, key,
                  why);
}

static int tcp_again(int e)
{
    return e == EAGAIN || e == EWOULDBLOCK || e == EINTR;
}

/* ------------------------------------------------------------------------ */
/* create                                                                   */
/* ------------------------------------------------------------------------ */

/* MOONCAKE_SOCKET_ADDR, else an UP interface (MOONCAKE_SOCKET_IFNAME or the
 * first non-loopback one with IPv4), else 127.0.0.1. */
static mc_status_t tcp_pick_addr(struct in_addr *ip_p)
{
    const char *want = mc_env_str("MOONCAKE_SOCKET_ADDR", NULL);
    struct in_addr ip = {0};
    if (want) {
        if (inet_pton(AF_INET, want, &ip) != 1)
            return mc_err(MC_ERR_INVALID_ARG,
                          "MOONCAKE_SOCKET_ADDR=%s is not an IPv4 address",
                          want);
        *ip_p = ip;
        return MC_OK;
    }
    const char *ifname = mc_env_str("MOONCAKE_SOCKET_IFNAME", NULL);
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) != 0) {
        if (ifname) return mc_err(MC_ERR_IO, "getifaddrs: %s", strerror(errno));
        ifs = NULL;
    }
    int found = 0;
    for (struct ifaddrs *i = ifs; i && !found; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
        if (!(i->ifa_flags & IFF_UP)) continue;
        if (ifname) {
            if (strcmp(i->ifa_name, ifname) != 0) continue;
        } else if ((i->ifa_flags & IFF_LOOPBACK) ||
                   !(i->ifa_flags & IFF_RUNNING)) {
            continue;
        }
        ip = ((const struct sockaddr_in *)(const void *)i->ifa_addr)->sin_addr;
        found = 1;
    }
    if (ifs) freeifaddrs(ifs);
    if (!found && ifname)
        return mc_err(MC_ERR_INVALID_ARG,
                      "MOONCAKE_SOCKET_IFNAME=%s: no such UP interface with an "
                      "IPv4 address",
                      ifname);
    if (!found) ip.s_addr = htonl(INADDR_LOOPBACK);
    *ip_p = ip;
    return MC_OK;
}

static mc_status_t tcp_listen(mc_tl_t *tl, struct in_addr ip)
{
    int64_t base = mc_env_int("MOONCAKE_SOCKET_PORT_BASE", 0);
    if (base < 0 || base > 65535)
        return mc_err(MC_ERR_INVALID_ARG,
                      "MOONCAKE_SOCKET_PORT_BASE=%lld is not a port",
                      (long long)base);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return mc_err(MC_ERR_IO, "tcp: socket: %s", strerror(errno));
    int one = 1;
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    tcp_set_bufs(tl, fd);

    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr = ip};
    char ipstr[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &ip, ipstr, sizeof(ipstr));
    /* With a port base, ranks sharing a host take base+rank upward. */
    int64_t first = base ? base + tl->rank % 4096 : 0;
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
    if (!bound) {
        close(fd);
        return mc_err(MC_ERR_IO, "tcp: bind %s (port base %lld): %s", ipstr,
                      (long long)base, strerror(err ? err : EADDRINUSE));
    }
    socklen_t sl = sizeof(sa);
    if (listen(fd, 4096) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &sl) != 0) {
        err = errno;
        close(fd);
        return mc_err(MC_ERR_IO, "tcp: listen on %s: %s", ipstr, strerror(err));
    }
    snprintf(tl->addr, sizeof(tl->addr), "%s:%u", ipstr,
             (unsigned)ntohs(sa.sin_port));
    tl->listen_fd = fd;
    return MC_OK;
}

static void tcp_destroy(mc_tl_t *tl);

static mc_status_t tcp_create(const mc_tl_params_t *p, mc_tl_t **tl_p)
{
    if (!p || !tl_p) return mc_err(MC_ERR_INVALID_ARG, "tcp: NULL argument");
    if (p->size < 1 || p->size > MC_TCP_MAX_SIZE || p->rank < 0 ||
        p->rank >= p->size)
        return mc_err(MC_ERR_INVALID_ARG, "tcp: bad rank %d / size %d", p->rank,
                      p->size);
    if (!p->store || !p->peers)
        return mc_err(MC_ERR_INVALID_ARG, "tcp: NULL store or peer set");

    mc_status_t st;
    mc_tl_t *tl = calloc(1, sizeof(*tl));
    if (!tl) return mc_err(MC_ERR_NO_MEMORY, "tcp: out of memory");
    tl->rank = p->rank;
    tl->size = p->size;
    tl->store = p->store;
    tl->uid = p->uid;
    tl->timeout_ms = p->timeout_ms;
    tl->listen_fd = -1;
    tl->peers = calloc((size_t)p->size, sizeof(*tl->peers));
    if (!tl->peers) {
        st = mc_err(MC_ERR_NO_MEMORY, "tcp: out of memory (%d peers)", p->size);
        goto free_tl;
    }
    for (int r = 0; r < p->size; r++) {
        tl->peers[r].want = r != p->rank && p->peers[r];
        for (int c = 0; c < MC_NUM_CHANNELS; c++) {
            mc_tcp_stream_t *s = &tl->peers[r].ch[c];
            s->fd = -1;
            s->peer = r;
            s->ch = c;
        }
    }
    int64_t buf = mc_env_int("MOONCAKE_TCP_BUF_BYTES", 4 << 20);
    tl->bufsz = buf < 0 ? 0 : buf > (1 << 30) ? (1 << 30) : (int)buf;
    int64_t ut = mc_env_int("MOONCAKE_TCP_USER_TIMEOUT_MS", 0);
    tl->user_timeout = ut < 0 ? 0 : ut > INT32_MAX ? INT32_MAX : (int)ut;
    int64_t grace = mc_env_int("MOONCAKE_TCP_CLOSE_GRACE_MS", 2000);
    /* not below 100 ms: the bound must not beat bytes still in flight */
    tl->grace_us = (grace < 100 ? 100 : grace > 600000 ? 600000 : grace) * 1000;

    struct in_addr ip = {0};
    MC_CHECK_GOTO(tcp_pick_addr(&ip), st, free_tl);
    MC_CHECK_GOTO(tcp_listen(tl, ip), st, free_tl);

    char key[32];
    snprintf(key, sizeof(key), "tcp/%d", tl->rank);
    st = mc_store_set(tl->store, key, tl->addr, strlen(tl->addr));
    if (st != MC_OK) {
        st = tcp_store_err(st, tl->rank, "publishing", key);
        goto free_tl;
    }
    MC_LOG(MC_LOG_DEBUG, "tcp: rank %d listening on %s", tl->rank, tl->addr);
    *tl_p = tl;
    return MC_OK;

free_tl:
    tcp_destroy(tl);
    return st;
}

/* ------------------------------------------------------------------------ */
/* connect                                                                  */
/* ------------------------------------------------------------------------ */

enum { OUT_IDLE, OUT_CONNECTING, OUT_HELLO, OUT_DONE };

/* One outgoing connection being made (we are the higher rank). */
typedef struct mc_tcp_out {
    int peer, ch, fd, state;
    int64_t next_try_us, backoff_us;
    size_t got;
    uint8_t buf[MC_TCP_HELLO_LEN];
} mc_tcp_out_t;

/* One accepted socket waiting for its hello. */
typedef struct mc_tcp_in {
    int fd;
    int64_t since_us;
    size_t got;
    uint8_t buf[MC_TCP_HELLO_LEN];
    char from[MC_TCP_ADDR_LEN];
} mc_tcp_in_t;

static void tcp_out_retry(mc_tcp_out_t *o, int64_t now)
{
    tcp_close(&o->fd);
    o->state = OUT_IDLE;
    o->got = 0;
    o->backoff_us = o->backoff_us ? o->backoff_us * 2 : MC_TCP_BACKOFF_MIN_US;
    if (o->backoff_us > MC_TCP_BACKOFF_MAX_US)
        o->backoff_us = MC_TCP_BACKOFF_MAX_US;
    o->next_try_us = now + o->backoff_us;
}

/* Parse "a.b.c.d:port". */
static int tcp_parse_addr(const char *s, struct sockaddr_in *sa)
{
    char ip[MC_TCP_ADDR_LEN];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof(ip)) return -1;
    memcpy(ip, s, (size_t)(colon - s));
    ip[colon - s] = '\0';
    char *end;
    errno = 0;
    unsigned long port = strtoul(colon + 1, &end, 10);
    if (errno || *end || end == colon + 1 || port == 0 || port > 65535)
        return -1;
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    return inet_pton(AF_INET, ip, &sa->sin_addr) == 1 ? 0 : -1;
}

/* Send the hello on a freshly connected socket; 24 bytes always fit. */
static int tcp_out_send_hello(mc_tl_t *tl, mc_tcp_out_t *o)
{
    uint8_t h[MC_TCP_HELLO_LEN];
    tcp_hello_encode(h, tl->uid, tl->rank, o->ch);
    ssize_t w;
    do {
        w = send(o->fd, h, sizeof(h), MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (w < 0 && errno == EINTR);
    if (w != (ssize_t)sizeof(h)) return -1;
    o->state = OUT_HELLO;
    o->got = 0;
    return 0;
}

/* Try to start connection `o`: read the peer's address (if published yet)
 * and begin a non-blocking connect. Store errors are fatal; everything else
 * schedules a retry. */
static mc_status_t tcp_out_start(mc_tl_t *tl, mc_tcp_out_t *o, int64_t now,
                                 int64_t deadline)
{
    char key[32], val[MC_TCP_ADDR_LEN];
    snprintf(key, sizeof(key), "tcp/%d", o->peer);
    int exists = 0;
    mc_status_t st = mc_store_check(tl->store, key, &exists);
    if (st != MC_OK) return tcp_store_err(st, tl->rank, "checking", key);
    if (!exists) {
        /* not created yet: poll the store at a modest pace */
        o->backoff_us = MC_TCP_BACKOFF_MAX_US / 4;
        o->next_try_us = now + o->backoff_us;
        return MC_OK;
    }
    size_t len = 0;
    int64_t left_ms = (deadline - now) / 1000;
    st = mc_store_get(tl->store, key, left_ms > 0 ? left_ms : 0, val,
                      sizeof(val) - 1, &len);
    if (st == MC_ERR_TIMEOUT) {
        tcp_out_retry(o, now);
        return MC_OK;
    }
    if (st != MC_OK) return tcp_store_err(st, tl->rank, "reading", key);
    struct sockaddr_in sa;
    if (len >= sizeof(val)) len = sizeof(val); /* forces a parse failure */
    val[len < sizeof(val) ? len : sizeof(val) - 1] = '\0';
    if (len >= sizeof(val) - 1 || tcp_parse_addr(val, &sa) != 0)
        return mc_err(MC_ERR_PROTOCOL,
                      "tcp: rank %d: malformed address for rank %d in %s",
                      tl->rank, o->peer, key);

    o->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (o->fd < 0)
        return mc_err(MC_ERR_IO, "tcp: rank %d: socket: %s", tl->rank,
                      strerror(errno));
    tcp_set_bufs(tl, o->fd);
    int rc = connect(o->fd, (struct sockaddr *)&sa, sizeof(sa));
    if (rc == 0) {
        if (tcp_out_send_hello(tl, o) != 0) tcp_out_retry(o, now);
    } else if (errno == EINPROGRESS || errno == EINTR) {
        o->state = OUT_CONNECTING;
    } else {
        /* ECONNREFUSED (listener not up or backlog full) and friends:
         * retry until the deadline */
        MC_LOG(MC_LOG_DEBUG, "tcp: rank %d: connect to rank %d (%s): %s",
               tl->rank, o->peer, val, strerror(errno));
        tcp_out_retry(o, now);
    }
    return MC_OK;
}

/* The connecting side: socket became writable or readable. */
static void tcp_out_event(mc_tl_t *tl, mc_tcp_out_t *o, short rev, int64_t now,
                          int *left)
{
    if (o->state == OUT_CONNECTING) {
        int err = 0;
        socklen_t sl = sizeof(err);
        if (getsockopt(o->fd, SOL_SOCKET, SO_ERROR, &err, &sl) != 0)
            err = errno;
        if (err == 0 && !(rev & (POLLOUT | POLLERR | POLLHUP))) return;
        if (err || tcp_out_send_hello(tl, o) != 0) {
            MC_LOG(MC_LOG_DEBUG, "tcp: rank %d: connect to rank %d: %s",
                   tl->rank, o->peer, strerror(err ? err : ECONNRESET));
            tcp_out_retry(o, now);
        }
        return;
    }
    /* OUT_HELLO: read the ack */
    ssize_t r =
        recv(o->fd, o->buf + o->got, sizeof(o->buf) - o->got, MSG_DONTWAIT);
    if (r < 0 && tcp_again(errno)) return;
    if (r <= 0) {
        /* The acceptor closed on us: it rejected the hello, or it is not
         * the listener we meant (stale address). Retry. */
        MC_LOG(MC_LOG_WARN,
               "tcp: rank %d: rank %d closed the %s connection during "
               "handshake (%s); retrying",
               tl->rank, o->peer, mc_tcp_ch_name[o->ch],
               r == 0 ? "EOF" : strerror(errno));
        tcp_out_retry(o, now);
        return;
    }
    o->got += (size_t)r;
    if (o->got < sizeof(o->buf)) return;
    uint32_t rank = 0, ch = 0;
    const char *why = tcp_hello_decode(o->buf, tl->uid, &rank, &ch);
    if (!why && (rank != (uint32_t)o->peer || ch != (uint32_t)o->ch))
        why = "ack from the wrong rank or channel";
    if (why) {
        MC_LOG(MC_LOG_WARN, "tcp: rank %d: bad ack from rank %d (%s): %s",
               tl->rank, o->peer, mc_tcp_ch_name[o->ch], why);
        tcp_out_retry(o, now);
        return;
    }
    mc_tcp_stream_t *s = &tl->peers[o->peer].ch[o->ch];
    tcp_set_stream_opts(tl, o->fd);
    s->fd = o->fd;
    o->fd = -1;
    o->state = OUT_DONE;
    (*left)--;
}

/* The accepting side: read a hello, validate, ack, install. Returns 1 when
 * the pending slot is finished (installed or rejected). */
static int tcp_in_event(mc_tl_t *tl, mc_tcp_in_t *in, int *left)
{
    ssize_t r = recv(in->fd, in->buf + in->got, sizeof(in->buf) - in->got,
                     MSG_DONTWAIT);
    if (r < 0 && tcp_again(errno)) return 0;
    const char *why = NULL;
    uint32_t rank = 0, ch = 0;
    if (r <= 0) {
        why = r == 0 ? "closed before hello" : strerror(errno);
    } else {
        in->got += (size_t)r;
        if (in->got < sizeof(in->buf)) return 0;
        why = tcp_hello_decode(in->buf, tl->uid, &rank, &ch);
    }
    if (!why && (rank >= (uint32_t)tl->size || rank <= (uint32_t)tl->rank ||
                 !tl->peers[rank].want))
        why = "unexpected rank";
    if (!why && ch >= MC_NUM_CHANNELS) why = "bad channel";
    if (!why && tl->peers[rank].ch[ch].fd >= 0) why = "duplicate connection";
    if (!why) {
        uint8_t h[MC_TCP_HELLO_LEN];
        tcp_hello_encode(h, tl->uid, tl->rank, (int)ch);
        ssize_t w;
        do {
            w = send(in->fd, h, sizeof(h), MSG_NOSIGNAL | MSG_DONTWAIT);
        } while (w < 0 && errno == EINTR);
        if (w != (ssize_t)sizeof(h)) why = "ack send failed";
    }
    if (why) {
        MC_LOG(MC_LOG_WARN,
               "tcp: rank %d: rejecting connection from %s (rank %u, "
               "channel %u): %s",
               tl->rank, in->from, rank, ch, why);
        tcp_close(&in->fd);
        return 1;
    }
    mc_tcp_stream_t *s = &tl->peers[rank].ch[ch];
    tcp_set_stream_opts(tl, in->fd);
    s->fd = in->fd;
    in->fd = -1;
    (*left)--;
    return 1;
}

/* "1(coll,p2p) 3(p2p)": who is still missing, for the timeout message. */
static void tcp_missing(const mc_tl_t *tl, char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = '\0';
    for (int r = 0; r < tl->size; r++) {
        const mc_tcp_peer_t *p = &tl->peers[r];
        if (!p->want) continue;
        char chs[32] = "";
        size_t k = 0;
        for (int c = 0; c < MC_NUM_CHANNELS; c++)
            if (p->ch[c].fd < 0)
                k += (size_t)snprintf(chs + k, sizeof(chs) - k, "%s%s",
                                      k ? "," : "", mc_tcp_ch_name[c]);
        if (!k) continue;
        char item[64];
        int m = snprintf(item, sizeof(item), "%s%d(%s)", n ? " " : "", r, chs);
        if (n + (size_t)m + 5 >= cap) {
            snprintf(buf + n, cap - n, " ...");
            return;
        }
        memcpy(buf + n, item, (size_t)m + 1);
        n += (size_t)m;
    }
}

/* Allocate the per-stream arrays once every stream exists. */
static mc_status_t tcp_finish_connect(mc_tl_t *tl)
{
    int n = 0;
    for (int r = 0; r < tl->size; r++)
        if (tl->peers[r].want) n += MC_NUM_CHANNELS;
    size_t cap = n ? (size_t)n : 1;
    tl->streams = calloc(cap, sizeof(*tl->streams));
    tl->active = calloc(cap, sizeof(*tl->active));
    tl->pfd = calloc(cap, sizeof(*tl->pfd));
    tl->pfd_s = calloc(cap, sizeof(*tl->pfd_s));
    if (!tl->streams || !tl->active || !tl->pfd || !tl->pfd_s)
        return mc_err(MC_ERR_NO_MEMORY, "tcp: out of memory");
    for (int r = 0; r < tl->size; r++)
        if (tl->peers[r].want)
            for (int c = 0; c < MC_NUM_CHANNELS; c++)
                tl->streams[tl->nstreams++] = &tl->peers[r].ch[c];
    /* Nobody else may connect now; free the port. */
    tcp_close(&tl->listen_fd);
    tl->connected = 1;
    return MC_OK;
}

static mc_status_t tcp_connect(mc_tl_t *tl)
{
    if (!tl) return mc_err(MC_ERR_INVALID_ARG, "tcp: NULL transport");
    if (tl->connected || tl->listen_fd < 0)
        return mc_err(MC_ERR_INVALID_ARG, "tcp: connect called twice");

    int n_out = 0, in_left = 0;
    for (int r = 0; r < tl->size; r++) {
        if (!tl->peers[r].want) continue;
        if (r < tl->rank)
            n_out += MC_NUM_CHANNELS;
        else
            in_left += MC_NUM_CHANNELS;
    }
    int out_left = n_out;
    int nin = 0; /* pending ins are packed at ins[0..nin); set before any
                  * goto free_arrays, which closes them */
    int in_cap = in_left * 2 + 16;
    if (in_cap > MC_TCP_PENDING_MAX) in_cap = MC_TCP_PENDING_MAX;
    size_t npfd = 1 + (size_t)n_out + (size_t)in_cap;

    mc_status_t st = MC_OK;
    mc_tcp_out_t *outs = calloc(n_out ? (size_t)n_out : 1, sizeof(*outs));
    mc_tcp_in_t *ins = calloc((size_t)in_cap, sizeof(*ins));
    struct pollfd *pfd = calloc(npfd, sizeof(*pfd));
    int *pidx = calloc(npfd, sizeof(*pidx)); /* >=0 out, <0 ~in, listen */
    if (!outs || !ins || !pfd || !pidx) {
        st = mc_err(MC_ERR_NO_MEMORY, "tcp: out of memory");
        goto free_arrays;
    }
    int k = 0;
    for (int r = 0; r < tl->rank; r++)
        for (int c = 0; tl->peers[r].want && c < MC_NUM_CHANNELS; c++)
            outs[k++] = (mc_tcp_out_t){.peer = r, .ch = c, .fd = -1};
    for (int i = 0; i < in_cap; i++)
        ins[i].fd = -1;

    int64_t deadline = mc_deadline_us(tl->timeout_ms);
    while (out_left > 0 || in_left > 0) {
        int64_t now = mc_now_us();
        if (now >= deadline) {
            char miss[512];
            tcp_missing(tl, miss, sizeof(miss));
            st = mc_err(MC_ERR_TIMEOUT,
                        "tcp: rank %d: connect timed out after %lld ms; "
                        "missing peers: %s",
                        tl->rank, (long long)tl->timeout_ms, miss);
            MC_LOG(MC_LOG_ERROR, "%s", mc_last_error());
            goto free_arrays;
        }
        int64_t wake = deadline;
        for (int i = 0; i < n_out; i++) {
            mc_tcp_out_t *o = &outs[i];
            if (o->state == OUT_IDLE && o->next_try_us <= now)
                MC_CHECK_GOTO(tcp_out_start(tl, o, now, deadline), st,
                              free_arrays);
            if (o->state == OUT_IDLE && o->next_try_us < wake)
                wake = o->next_try_us;
        }
        for (int i = 0; i < nin; i++)
            if (ins[i].since_us + MC_TCP_PENDING_US < wake)
                wake = ins[i].since_us + MC_TCP_PENDING_US;

        size_t np = 0;
        if (in_left > 0 && nin < in_cap) {
            pfd[np] = (struct pollfd){.fd = tl->listen_fd, .events = POLLIN};
            pidx[np++] = INT32_MIN;
        }
        for (int i = 0; i < nin; i++) {
            pfd[np] = (struct pollfd){.fd = ins[i].fd, .events = POLLIN};
            pidx[np++] = ~i;
        }
        for (int i = 0; i < n_out; i++) {
            if (outs[i].state != OUT_CONNECTING && outs[i].state != OUT_HELLO)
                continue;
            pfd[np] = (struct pollfd){
                .fd = outs[i].fd,
                .events = outs[i].state == OUT_CONNECTING ? POLLOUT : POLLIN};
            pidx[np++] = i;
        }
        int64_t ms = (wake - now + 999) / 1000;
        if (ms > 1000) ms = 1000;
        if (ms < 0) ms = 0;
        int rc = poll(pfd, (nfds_t)np, (int)ms);
        if (rc < 0 && errno != EINTR) {
            st = mc_err(MC_ERR_IO, "tcp: rank %d: poll: %s", tl->rank,
                        strerror(errno));
            goto free_arrays;
        }
        now = mc_now_us();
        int nin_before = nin;
        for (size_t j = 0; rc > 0 && j < np; j++) {
            if (!pfd[j].revents) continue;
            if (pidx[j] == INT32_MIN) {
                /* accept everything queued, up to the free slots */
                while (nin < in_cap) {
                    struct sockaddr_in sa;
                    socklen_t sl = sizeof(sa);
                    int fd = accept4(tl->listen_fd, (struct sockaddr *)&sa, &sl,
                                     SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) {
                        if (!tcp_again(errno) && errno != ECONNABORTED)
                            MC_LOG(MC_LOG_WARN, "tcp: rank %d: accept: %s",
                                   tl->rank, strerror(errno));
                        break;
                    }
                    mc_tcp_in_t *in = &ins[nin++];
                    *in = (mc_tcp_in_t){.fd = fd, .since_us = now};
                    char ip[INET_ADDRSTRLEN] = "?";
                    inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof(ip));
                    snprintf(in->from, sizeof(in->from), "%s:%u", ip,
                             (unsigned)ntohs(sa.sin_port));
                }
            } else if (pidx[j] < 0) {
                int i = ~pidx[j];
                if (i < nin_before && ins[i].fd >= 0)
                    tcp_in_event(tl, &ins[i], &in_left);
            } else {
                tcp_out_event(tl, &outs[pidx[j]], pfd[j].revents, now,
                              &out_left);
            }
        }
        /* drop finished or silent pending sockets, keep the array packed */
        int w = 0;
        for (int i = 0; i < nin; i++) {
            if (ins[i].fd >= 0 && now - ins[i].since_us > MC_TCP_PENDING_US) {
                MC_LOG(MC_LOG_WARN,
                       "tcp: rank %d: dropping connection from %s: no hello",
                       tl->rank, ins[i].from);
                tcp_close(&ins[i].fd);
            }
            if (ins[i].fd >= 0) ins[w++] = ins[i];
        }
        nin = w;
    }
    st = tcp_finish_connect(tl);
    if (st == MC_OK)
        MC_LOG(MC_LOG_DEBUG, "tcp: rank %d connected to %d streams", tl->rank,
               tl->nstreams);

free_arrays:
    if (outs)
        for (int i = 0; i < n_out; i++)
            tcp_close(&outs[i].fd);
    if (ins)
        for (int i = 0; i < nin; i++)
            tcp_close(&ins[i].fd);
    free(pidx);
    free(pfd);
    free(ins);
    free(outs);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Data path                                                                */
/* ------------------------------------------------------------------------ */

static void tcp_q_push(mc_tcp_q_t *q, mc_xfer_t *x)
{
    x->next = NULL;
    if (q->tail)
        q->tail->next = x;
    else
        q->head = x;
    q->tail = x;
}

static mc_xfer_t *tcp_q_pop(mc_tcp_q_t *q)
{
    mc_xfer_t *x = q->head;
    q->head = x->next;
    if (!q->head) q->tail = NULL;
    x->next = NULL;
    return x;
}

/* Hand x back: status last (after the data), then the callback. The
 * callback pointer is read first: once status is written the engine may
 * reuse x from another thread. */
static void tcp_complete(mc_xfer_t *x, mc_status_t st)
{
    mc_xfer_cb_t cb = x->cb;
    __atomic_store_n(&x->status, (int)st, __ATOMIC_RELEASE);
    if (cb) cb(x);
}

/* Complete finished heads (zero-length ones included), in order. */
static int tcp_q_complete_done(mc_tcp_q_t *q)
{
    int n = 0;
    while (q->head && q->head->off >= q->head->len) {
        tcp_complete(tcp_q_pop(q), MC_OK);
        n++;
    }
    return n;
}

static int tcp_fill_iov(mc_xfer_t *x, struct iovec *iov, size_t *total_p)
{
    int n = 0;
    size_t total = 0;
    for (; x && n < MC_TCP_IOV; x = x->next) {
        if (x->off >= x->len) continue;
        iov[n].iov_base = (char *)x->buf + x->off;
        iov[n].iov_len = x->len - x->off;
        total += iov[n].iov_len;
        n++;
    }
    *total_p = total;
    return n;
}

static void tcp_advance(mc_xfer_t *x, size_t done)
{
    for (; x && done > 0; x = x->next) {
        size_t left = x->len - x->off;
        size_t take = done < left ? done : left;
        x->off += take;
        done -= take;
    }
}

static void tcp_activate(mc_tl_t *tl, mc_tcp_stream_t *s)
{
    if (s->active) return;
    s->active = 1;
    tl->active[tl->nactive++] = s;
}

/* Evidence of death on stream s (err: errno, 0 for a clean close). Marks
 * the peer failed and logs once; completes nothing (this runs from `wait`
 * and `peer_status` too): progress fails the sends of every stream it
 * activates here. */
static void tcp_peer_fail(mc_tl_t *tl, mc_tcp_stream_t *s, int err)
{
    mc_tcp_peer_t *p = &tl->peers[s->peer];
    if (p->failed) return;
    p->failed = 1;
    /* A clean close is also how a finished peer leaves; the engine decides
     * whether it matters and tells the user. */
    if (err)
        MC_LOG(MC_LOG_WARN, "tcp: rank %d: peer %d failed (%s channel): %s",
               tl->rank, s->peer, mc_tcp_ch_name[s->ch], strerror(err));
    else
        MC_LOG(MC_LOG_INFO,
               "tcp: rank %d: peer %d closed its connection (%s channel)",
               tl->rank, s->peer, mc_tcp_ch_name[s->ch]);
    int64_t now = mc_now_us();
    for (int c = 0; c < MC_NUM_CHANNELS; c++) {
        mc_tcp_stream_t *o = &p->ch[c];
        o->rx_idle_us = now;
        if (o->sq.head || o->rq.head) tcp_activate(tl, o);
    }
}

/* The incoming stream read its end (EOF or a fatal errno): nothing more
 * can arrive, and the peer sends nothing we could answer, so the socket
 * goes. Progress fails the receives still lacking bytes. */
static void tcp_rx_end(mc_tl_t *tl, mc_tcp_stream_t *s, int err)
{
    tcp_peer_fail(tl, s, err);
    s->rx_end = 1;
    s->rx_blocked = 1;
    tcp_close(&s->fd);
    if (s->rq.head) tcp_activate(tl, s);
}

/* Move bytes on one direction of a stream. *err_p: errno of a fatal error,
 * 0 for EOF; untouched otherwise. Stops when the direction may no longer
 * move (a callback may have asked peer_status, which can end the stream). */
static int tcp_stream_io(mc_tl_t *tl, mc_tcp_stream_t *s, int is_send,
                         int *err_p)
{
    mc_tcp_q_t *q = is_send ? &s->sq : &s->rq;
    const mc_tcp_peer_t *p = &tl->peers[s->peer];
    int moved = tcp_q_complete_done(q);
    for (int spin = 0; spin < MC_TCP_SPIN && q->head; spin++) {
        if (is_send ? p->failed : s->rx_end) break;
        struct iovec iov[MC_TCP_IOV];
        size_t total;
        struct msghdr m = {.msg_iov = iov};
        m.msg_iovlen = (size_t)tcp_fill_iov(q->head, iov, &total);
        ssize_t r = is_send ? sendmsg(s->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT)
                            : recvmsg(s->fd, &m, MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (!tcp_again(errno))
                *err_p = errno;
            else if (is_send)
                s->tx_blocked = 1;
            else
                s->rx_blocked = 1;
            break;
        }
        if (r == 0 && !is_send) {
            *err_p = 0; /* EOF */
            break;
        }
        tcp_advance(q->head, (size_t)r);
        int done = tcp_q_complete_done(q);
        moved += done ? done : r > 0;
        if ((size_t)r < total) {
            /* socket full (send) or drained (recv): stop for now */
            if (is_send)
                s->tx_blocked = 1;
            else
                s->rx_blocked = 1;
            break;
        }
    }
    return moved;
}

/* Complete everything on q: sends to a failed peer, or receives of an
 * ended stream (those lacking bytes fail; zero-length and finished ones
 * succeed). Callbacks may post again; posts that cannot succeed are
 * refused, so the queue only drains. */
static int tcp_q_fail(mc_tcp_q_t *q)
{
    int n = 0;
    while (q->head) {
        mc_xfer_t *x = tcp_q_pop(q);
        tcp_complete(x, x->off >= x->len ? MC_OK : MC_ERR_PEER_FAILED);
        n++;
    }
    return n;
}

/* Look at a socket that reported a hang-up or error: the peer closed or
 * died, whatever is still readable. The stream itself ends here only if
 * nothing is left in front of the end; otherwise the receives to come
 * read up to it. */
static void tcp_probe(mc_tl_t *tl, mc_tcp_stream_t *s)
{
    if (s->fd < 0) return;
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0) soerr = 0;
    char c;
    ssize_t r;
    do {
        r = recv(s->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    } while (r < 0 && errno == EINTR);
    if (r == 0)
        tcp_rx_end(tl, s, soerr);
    else if (r < 0 && !tcp_again(errno))
        tcp_rx_end(tl, s, soerr ? soerr : errno);
    else
        tcp_peer_fail(tl, s, soerr); /* data before the end, or just an error */
}

/* Bound for broken cases (see the header): the peer is dead, yet a posted
 * receive got no byte for grace_us and the socket has not ended. */
static int tcp_stream_stalled(const mc_tl_t *tl, const mc_tcp_stream_t *s,
                              int64_t now)
{
    return tl->peers[s->peer].failed && !s->rx_end && s->rq.head &&
           now - s->rx_idle_us >= tl->grace_us;
}

static int tcp_stream_progress(mc_tl_t *tl, mc_tcp_stream_t *s)
{
    mc_tcp_peer_t *p = &tl->peers[s->peer];
    int moved = 0;
    s->tx_blocked = p->failed;
    s->rx_blocked = s->rx_end;
    for (int round = 0; round < MC_TCP_ROUNDS; round++) {
        int m = 0, err = -1;
        if (s->sq.head && !s->tx_blocked) {
            m += tcp_stream_io(tl, s, 1, &err);
            /* a send error kills the peer; what it sent is still readable */
            if (err >= 0) tcp_peer_fail(tl, s, err);
            if (p->failed) s->tx_blocked = 1;
        }
        /* a send's callback may have posted the receive we now read into */
        if (s->rq.head && !s->rx_blocked) {
            err = -1;
            int mr = tcp_stream_io(tl, s, 0, &err);
            if (mr && p->failed) s->rx_idle_us = mc_now_us();
            m += mr;
            if (err >= 0) tcp_rx_end(tl, s, err);
        }
        moved += m;
        if (!m) break;
        /* a receive's callback may have posted a send on this stream */
        if (!(s->sq.head && !s->tx_blocked) && !(s->rq.head && !s->rx_blocked))
            break;
    }
    if (s->probe) {
        s->probe = 0;
        if (!p->failed) tcp_probe(tl, s);
    }
    if (s->rq.head && tcp_stream_stalled(tl, s, mc_now_us())) {
        MC_LOG(MC_LOG_WARN,
               "tcp: rank %d: %s stream from failed peer %d neither "
               "delivered data nor ended within %lld ms; failing its "
               "receives",
               tl->rank, mc_tcp_ch_name[s->ch], s->peer,
               (long long)(tl->grace_us / 1000));
        tcp_rx_end(tl, s, 0);
    }
    if (p->failed) moved += tcp_q_fail(&s->sq);
    if (s->rx_end) moved += tcp_q_fail(&s->rq);
    return moved;
}

static int tcp_progress(mc_tl_t *tl)
{
    if (!tl || tl->in_progress) return 0;
    tl->in_progress = 1;
    int moved = 0;
    /* Callbacks may append to the active list (never remove), so walk it by
     * index; a stream with nothing left is swapped out and the one moved
     * into its slot is visited next. */
    for (int i = 0; i < tl->nactive;) {
        mc_tcp_stream_t *s = tl->active[i];
        moved += tcp_stream_progress(tl, s);
        if (!s->sq.head && !s->rq.head && !s->probe) {
            s->active = 0;
            tl->active[i] = tl->active[--tl->nactive];
        } else {
            i++;
        }
    }
    tl->in_progress = 0;
    return moved;
}

/* Posts that cannot succeed are refused without touching x: sends to a
 * failed peer, receives needing bytes from an ended stream. */
static mc_status_t tcp_post(mc_tl_t *tl, int peer, int ch, mc_xfer_t *x,
                            int is_send)
{
    if (!tl || !x || (!x->buf && x->len))
        return mc_err(MC_ERR_INVALID_ARG, "tcp: NULL transfer or buffer");
    if (peer < 0 || peer >= tl->size || ch < 0 || ch >= MC_NUM_CHANNELS ||
        !tl->peers[peer].want)
        return mc_err(MC_ERR_INVALID_ARG,
                      "tcp: rank %d: post to peer %d channel %d: not a "
                      "connected peer",
                      tl->rank, peer, ch);
    if (!tl->connected)
        return mc_err(MC_ERR_INVALID_ARG, "tcp: rank %d: peer %d not connected",
                      tl->rank, peer);
    mc_tcp_peer_t *p = &tl->peers[peer];
    mc_tcp_stream_t *s = &p->ch[ch];
    if (is_send ? p->failed : s->rx_end && x->len > 0)
        return mc_err(MC_ERR_PEER_FAILED,
                      "tcp: rank %d: peer %d failed (%s %s)", tl->rank, peer,
                      mc_tcp_ch_name[ch], is_send ? "send" : "stream ended");
    x->off = 0;
    x->status = MC_INPROGRESS;
    mc_tcp_q_t *q = is_send ? &s->sq : &s->rq;
    /* the stall bound counts from the post when nothing was waiting */
    if (!is_send && p->failed && !q->head) s->rx_idle_us = mc_now_us();
    tcp_q_push(q, x);
    tcp_activate(tl, s);
    return MC_OK;
}

static mc_status_t tcp_post_send(mc_tl_t *tl, int peer, int ch, mc_xfer_t *x)
{
    return tcp_post(tl, peer, ch, x, 1);
}

static mc_status_t tcp_post_recv(mc_tl_t *tl, int peer, int ch, mc_xfer_t *x)
{
    return tcp_post(tl, peer, ch, x, 0);
}

/* Is there work progress can do without waiting for a socket? */
static int tcp_ready_now(const mc_tl_t *tl, const mc_tcp_stream_t *s)
{
    if (s->probe) return 1;
    if (tl->peers[s->peer].failed && s->sq.head) return 1;
    if (s->rx_end && s->rq.head) return 1;
    return (s->sq.head && s->sq.head->off >= s->sq.head->len) ||
           (s->rq.head && s->rq.head->off >= s->rq.head->len);
}

static void tcp_wait(mc_tl_t *tl, int64_t timeout_us)
{
    if (!tl) return;
    if (timeout_us < 0) timeout_us = 0;
    int64_t now = mc_now_us();
    for (int i = 0; i < tl->nactive; i++) {
        const mc_tcp_stream_t *s = tl->active[i];
        if (tcp_ready_now(tl, s)) return;
        /* wake for the stall bound of a dead peer's stream */
        if (tl->peers[s->peer].failed && !s->rx_end && s->rq.head) {
            int64_t left = s->rx_idle_us + tl->grace_us - now;
            if (left <= 0) return;
            if (left < timeout_us) timeout_us = left;
        }
    }
    /* Few sockets: watch all of them for hang-ups too, so a peer's death is
     * seen even without posted receives. Many: only the busy ones. Once a
     * peer failed its hang-ups are known (and would fire forever): only
     * its streams' posted receives are watched. */
    int all = tl->nstreams <= MC_TCP_POLL_ALL;
    mc_tcp_stream_t **list = all ? tl->streams : tl->active;
    int nlist = all ? tl->nstreams : tl->nactive;
    int n = 0;
    for (int i = 0; i < nlist; i++) {
        mc_tcp_stream_t *s = list[i];
        if (s->fd < 0) continue;
        short ev = 0;
        if (s->rq.head) ev |= POLLIN;
        if (!tl->peers[s->peer].failed) {
            ev |= POLLRDHUP;
            if (s->sq.head) ev |= POLLOUT;
        }
        if (!ev) continue;
        tl->pfd[n] = (struct pollfd){.fd = s->fd, .events = ev};
        tl->pfd_s[n++] = s;
    }
    struct timespec ts = {.tv_sec = timeout_us / 1000000,
                          .tv_nsec = (timeout_us % 1000000) * 1000};
    int rc = ppoll(tl->pfd, (nfds_t)n, &ts, NULL);
    for (int i = 0; rc > 0 && i < n; i++) {
        mc_tcp_stream_t *s = tl->pfd_s[i];
        if (!tl->peers[s->peer].failed &&
            (tl->pfd[i].revents & (POLLRDHUP | POLLHUP | POLLERR))) {
            s->probe = 1;
            tcp_activate(tl, s);
        }
    }
}

static mc_status_t tcp_peer_status(mc_tl_t *tl, int peer)
{
    if (!tl || peer < 0 || peer >= tl->size)
        return mc_err(MC_ERR_INVALID_ARG, "tcp: peer_status: bad peer %d",
                      peer);
    mc_tcp_peer_t *p = &tl->peers[peer];
    if (p->failed) return MC_ERR_PEER_FAILED;
    if (!p->want || !tl->connected) return MC_OK;
    /* Cheap look for a hang-up nobody has examined yet; it decides at once
     * (progress then completes the transfers). */
    struct pollfd pfd[MC_NUM_CHANNELS];
    for (int c = 0; c < MC_NUM_CHANNELS; c++)
        pfd[c] = (struct pollfd){.fd = p->ch[c].fd, .events = POLLRDHUP};
    if (poll(pfd, MC_NUM_CHANNELS, 0) <= 0) return MC_OK;
    for (int c = 0; c < MC_NUM_CHANNELS && !p->failed; c++)
        if (pfd[c].revents & (POLLRDHUP | POLLHUP | POLLERR))
            tcp_probe(tl, &p->ch[c]);
    return p->failed ? MC_ERR_PEER_FAILED : MC_OK;
}

static void tcp_destroy(mc_tl_t *tl)
{
    if (!tl) return;
    tcp_close(&tl->listen_fd);
    if (tl->peers)
        for (int r = 0; r < tl->size; r++)
            for (int c = 0; c < MC_NUM_CHANNELS; c++)
                tcp_close(&tl->peers[r].ch[c].fd);
    free(tl->pfd_s);
    free(tl->pfd);
    free(tl->active);
    free(tl->streams);
    free(tl->peers);
    free(tl);
}

const mc_tl_ops_t mc_tl_tcp_ops = {
    .size = sizeof(mc_tl_ops_t),
    .name = "tcp",
    .create = tcp_create,
    .connect = tcp_connect,
    .post_send = tcp_post_send,
    .post_recv = tcp_post_recv,
    .progress = tcp_progress,
    .wait = tcp_wait,
    .peer_status = tcp_peer_status,
    .mem_reg = mc_tl_stub_mem_reg,
    .mem_dereg = mc_tl_stub_mem_dereg,
    .put = mc_tl_stub_put,
    .destroy = tcp_destroy,
};
