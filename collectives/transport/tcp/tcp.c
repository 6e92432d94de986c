/*
 * TCP transport: one TCP connection per (peer, channel), carrying both
 * directions of that pair's byte streams.
 *
 * Wire-up: every rank listens on one IPv4 socket for its whole life and
 * publishes "ip:port" under "tcp/<rank>" (incarnation 0) or
 * "tcp/<rank>.<incarnation>" (a process that took the slot later). For
 * each pair the higher rank connects to the lower rank's listener, once per
 * channel, and sends a 48-byte hello {magic, version, rank, channel, uid,
 * its incarnation, the incarnation it wants to reach, its own listener's
 * address (for the close check below)}; the lower rank
 * checks that it expects that rank with that incarnation on that channel
 * and that the wanted incarnation is its own, and answers with its own
 * hello for the same channel (the ack), which the connecting side checks
 * the same way. A connection is in use only once both hellos have crossed,
 * so a stale listener (another communicator's, or a dead incarnation's), a
 * stray client or a process of another incarnation never gets installed.
 * Each pair has one connecting side, so connections never cross.
 *
 * Connect and add_peer run the same handshake machine, per peer: its
 * outgoing connections if the peer is the lower rank, else accepting.
 * connect drives it with blocking polls until every peer is up; progress
 * drives it without blocking (handshake sockets and the listener are
 * polled at most every MC_TCP_ADD_POLL_US, and `wait` sleeps on them too)
 * until the added peer is up or its time is over. The listener is read
 * only while some peer is expected; a connection arriving in between
 * waits in its backlog. add_peer first closes the slot's old sockets and
 * moves transfers still queued on them to an orphan list, which the next
 * progress fails (callbacks run in progress only).
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
 * or `peer_status`) or fatal errno on any socket of a peer starts a close
 * check (tcp_chk_begin; off with MOONCAKE_TCP_CLOSE_CHECK=0): we connect
 * to the peer's listener. Refused (or reset at once): the process is gone,
 * and the whole peer is marked failed: logged once (a clean close at info
 * level, errors as warnings), peer_status reports it, every posted send
 * completes with MC_ERR_PEER_FAILED and later sends are refused. Answered:
 * the process lives (it removed us, or its kernel timed the connection
 * out and reset it when the network came back), which is no evidence of
 * death: the ended streams are cut as after a timeout, and the engine's
 * heartbeat, majority rule or operation timeout decide. A stream's socket is
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
#include <linux/sockios.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "mc_log.h"
#include "sockaddr.h"

#define MC_TCP_MAGIC 0x4d435450u /* "MCTP" */
#define MC_TCP_VERSION 3u
#define MC_TCP_HELLO_LEN 48
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
#define MC_TCP_ADD_POLL_US 200 /* progress polls handshakes this often */
#define MC_TCP_KEY_LEN 48
#define MC_TCP_CHECK_ALIVE_US 1000000 /* close check: connected this long */
#define MC_TCP_CHECK_MAX_US 2000000 /* close check: no answer this long */
#define MC_TCP_CHECK_TRIES 3 /* close check: connections before "alive" */
#define MC_TCP_PROBE_US 250000 /* accepting add: first listener probes */
#define MC_TCP_PROBE_MAX_US 2000000 /* ... spaced up to this once answered */
#define MC_TCP_PROBE_POLL_US 20000 /* a probe under way is looked at */

typedef struct mc_tcp_q {
    mc_xfer_t *head, *tail;
} mc_tcp_q_t;

typedef struct mc_tcp_stream {
    int fd; /* closed (-1) once the incoming stream ended */
    int peer, ch;
    mc_tcp_q_t sq, rq;
    uint8_t active; /* on tl->active */
    uint8_t probe;  /* wait() saw a hang-up or error: look in progress */
    uint8_t hup;    /* its hang-up was looked at: wait() ignores it now */
    uint8_t tx_dead; /* a send failed while the peer is not failed (close
                        check): nothing more is sent on it */
    uint8_t rx_end; /* incoming stream ended: EOF or fatal errno read */
    uint8_t cut;    /* the kernel gave up on the connection by a timeout
                       (unreachable peer): no evidence of death, nothing
                       moves any more; the heartbeat decides */
    uint8_t tx_blocked, rx_blocked; /* per visit: socket full / drained */
    uint8_t held_end; /* closed with every written byte acknowledged
                         (sent_held after the socket is gone) */
    int64_t rx_idle_us; /* peer failed: last time a receive got bytes */
} mc_tcp_stream_t;

enum { OUT_IDLE, OUT_CONNECTING, OUT_HELLO, OUT_DONE };

/* One outgoing connection being made (we are the higher rank). */
typedef struct mc_tcp_out {
    int fd, state;
    int64_t next_try_us, backoff_us;
    size_t got;
    uint8_t buf[MC_TCP_HELLO_LEN];
} mc_tcp_out_t;

/* A peer being connected, by connect or add_peer. */
typedef struct mc_tcp_add {
    int64_t deadline_us;               /* INT64_MAX in connect */
    mc_tcp_out_t out[MC_NUM_CHANNELS]; /* used if the peer is lower */
    /* the peer is higher (it connects to us), in add_peer: a connection
     * to its published listener now and then (tcp_add_probe) */
    int probe_fd, probe_sa_ok;
    int64_t probe_us, probe_next_us, probe_gap_us;
    struct sockaddr_in probe_sa; /* its published address, once read */
} mc_tcp_add_t;

/* One accepted socket waiting for its hello. */
typedef struct mc_tcp_in {
    int fd;
    int64_t since_us;
    size_t got;
    uint8_t buf[MC_TCP_HELLO_LEN];
    char from[MC_TCP_ADDR_LEN];
} mc_tcp_in_t;

/* Close check of a peer (see "Peer failure" above). */
enum { CHK_NONE, CHK_RUN, CHK_ALIVE };

typedef struct mc_tcp_peer {
    mc_tcp_stream_t ch[MC_NUM_CHANNELS];
    struct sockaddr_in la; /* its listener (la_ok): for the close check */
    uint8_t la_ok;
    uint8_t chk;           /* CHK_*: CHK_ALIVE once a check found it alive */
    int chk_fd;            /* our connection to its listener: CHK_RUN, and
                              CHK_ALIVE while held (tl->held) */
    int chk_err;           /* what started the check (errno, 0: EOF) */
    int chk_ch;
    int64_t chk_start_us, chk_conn_us; /* conn_us: 0 until connected */
    int chk_tries;         /* connections of this check so far */
    uint64_t inc;       /* incarnation of the process we connect to */
    mc_tcp_add_t *add;  /* being connected: no stream moves bytes yet */
    mc_status_t add_st; /* how its last add failed, MC_OK otherwise */
    uint8_t want;       /* in p->peers, or added */
    uint8_t failed;     /* evidence of death seen; sends refused */
    uint8_t listed;     /* its streams are in tl->streams */
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
    uint64_t inc;     /* our incarnation */
    struct sockaddr_in la; /* our listener */
    int close_check;  /* MOONCAKE_TCP_CLOSE_CHECK */
    int nchk;         /* peers in CHK_RUN */
    int *held;        /* CHK_ALIVE peers whose check connection we keep */
    int nheld;
    int64_t held_poll_us; /* progress looks at them from then on */
    int connect_called;
    int connected;
    int in_progress;      /* re-entrancy guard: a callback calling progress */
    mc_tcp_peer_t *peers; /* size entries */
    mc_tcp_stream_t **streams; /* streams of every wanted peer */
    int nstreams;
    mc_tcp_stream_t **active; /* streams with work; capacity stream_cap */
    int nactive;
    int stream_cap;     /* capacity of streams and active */
    struct pollfd *pfd; /* wait(), handshakes: capacity pfd_cap */
    mc_tcp_stream_t **pfd_s;
    int *pfd_idx;
    int pfd_cap;
    /* peers being connected (connect, add_peer) */
    int *adds; /* their ranks */
    int nadds, adds_cap;
    int nadd_in;         /* of those, peers above us: we accept */
    mc_tcp_in_t *ins;    /* accepted sockets awaiting a hello, packed */
    int nin;             /* capacity MC_TCP_PENDING_MAX */
    int64_t add_poll_us; /* progress polls handshakes from then on */
    int rej_rank;        /* last hello refused for its incarnation */
    uint64_t rej_inc;
    mc_xfer_t *orphans; /* queued on discarded streams; progress fails */
    char addr[MC_TCP_ADDR_LEN]; /* our "ip:port" */
    mc_tl_owned_t owned; /* rests of released transfers (release_*) */
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

static void tcp_put64(uint8_t *b, uint64_t v)
{
    tcp_put32(b, (uint32_t)v);
    tcp_put32(b + 4, (uint32_t)(v >> 32));
}

static uint64_t tcp_get64(const uint8_t *b)
{
    return tcp_get32(b) | (uint64_t)tcp_get32(b + 4) << 32;
}

/* Hello (and ack), little-endian: {magic, version, rank, channel, uid,
 * sender's incarnation, incarnation it wants to reach, the sender's
 * listener: IPv4 address (network order), port, 2 zero bytes}. */
typedef struct mc_tcp_hello {
    uint32_t rank, ch;
    uint64_t inc, to_inc;
    struct sockaddr_in la; /* sin_port 0: none given */
} mc_tcp_hello_t;

static void tcp_hello_encode(uint8_t *b, uint64_t uid, int rank, int ch,
                             uint64_t inc, uint64_t to_inc,
                             const struct sockaddr_in *la)
{
    memcpy(b + 40, &la->sin_addr.s_addr, 4);
    uint16_t port = ntohs(la->sin_port);
    b[44] = (uint8_t)port;
    b[45] = (uint8_t)(port >> 8);
    b[46] = b[47] = 0;
    tcp_put32(b, MC_TCP_MAGIC);
    tcp_put32(b + 4, MC_TCP_VERSION);
    tcp_put32(b + 8, (uint32_t)rank);
    tcp_put32(b + 12, (uint32_t)ch);
    tcp_put64(b + 16, uid);
    tcp_put64(b + 24, inc);
    tcp_put64(b + 32, to_inc);
}

/* Returns NULL if valid, else why not; the fields come back raw. */
static const char *tcp_hello_decode(const uint8_t *b, uint64_t uid,
                                    mc_tcp_hello_t *h)
{
    if (tcp_get32(b) != MC_TCP_MAGIC) return "bad magic";
    if (tcp_get32(b + 4) != MC_TCP_VERSION) return "protocol version mismatch";
    if (tcp_get64(b + 16) != uid) return "communicator uid mismatch";
    h->rank = tcp_get32(b + 8);
    h->ch = tcp_get32(b + 12);
    h->inc = tcp_get64(b + 24);
    h->to_inc = tcp_get64(b + 32);
    memset(&h->la, 0, sizeof(h->la));
    h->la.sin_family = AF_INET;
    memcpy(&h->la.sin_addr.s_addr, b + 40, 4);
    h->la.sin_port = htons((uint16_t)(b[44] | b[45] << 8));
    return NULL;
}

/* Store key of a process's address: incarnation 0 keeps the plain key. */
static void tcp_key(char *key, size_t cap, int rank, uint64_t inc)
{
    if (inc)
        snprintf(key, cap, "tcp/%d.%llu", rank, (unsigned long long)inc);
    else
        snprintf(key, cap, "tcp/%d", rank);
}

static void tcp_close(int *fd)
{
    if (*fd >= 0) close(*fd);
    *fd = -1;
}

/* Close an accepted socket we did not take, after reading what it holds:
 * closed with unread bytes the kernel answers with a reset, which a close
 * check on the other side (its probe byte) may read as a dead listener. */
static void tcp_close_read(int *fd)
{
    char junk[512];
    for (int i = 0; *fd >= 0 && i < 64; i++)
        if (recv(*fd, junk, sizeof(junk), MSG_DONTWAIT) <= 0) break;
    tcp_close(fd);
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

static mc_status_t tcp_listen(mc_tl_t *tl, struct in_addr ip)
{
    int64_t base;
    mc_status_t bst = mc_sock_port_base("tcp", &base);
    if (bst != MC_OK) return bst;
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
    tl->la = sa;
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
    tl->inc = p->incarnation;
    tl->listen_fd = -1;
    tl->rej_rank = -1;
    tl->peers = calloc((size_t)p->size, sizeof(*tl->peers));
    if (!tl->peers) {
        st = mc_err(MC_ERR_NO_MEMORY, "tcp: out of memory (%d peers)", p->size);
        goto free_tl;
    }
    for (int r = 0; r < p->size; r++) {
        tl->peers[r].want = r != p->rank && p->peers[r];
        tl->peers[r].chk_fd = -1;
        if (tl->peers[r].want && p->peer_incarnation)
            tl->peers[r].inc = p->peer_incarnation[r];
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
    tl->close_check = mc_env_int("MOONCAKE_TCP_CLOSE_CHECK", 1) != 0;
    int64_t grace = mc_env_int("MOONCAKE_TCP_CLOSE_GRACE_MS", 2000);
    /* not below 100 ms: the bound must not beat bytes still in flight */
    tl->grace_us = (grace < 100 ? 100 : grace > 600000 ? 600000 : grace) * 1000;

    struct in_addr ip = {0};
    MC_CHECK_GOTO(mc_sock_pick_addr("tcp", &ip), st, free_tl);
    MC_CHECK_GOTO(tcp_listen(tl, ip), st, free_tl);

    char key[MC_TCP_KEY_LEN];
    tcp_key(key, sizeof(key), tl->rank, tl->inc);
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

/* Errors that say the peer could not be reached for a while (the kernel's
 * retransmission, keepalive or TCP_USER_TIMEOUT gave up, or the network
 * says unreachable), not that it died: a partitioned peer looks the same,
 * so this is suspicion, never evidence (docs/fault-model.md). */
static int tcp_err_is_timeout(int err)
{
    return err == ETIMEDOUT || err == EHOSTUNREACH || err == ENETUNREACH ||
           err == EHOSTDOWN || err == ENETDOWN;
}

/* Stream s's connection timed out: close it and move nothing more on it.
 * The peer is not marked failed; its transfers stay posted until the
 * engine removes the peer (heartbeat suspicion with a majority, or etcd's
 * lease expiry) or add_peer replaces the connection. */
/* Close a stream's socket at its end, first noting whether the peer's
 * kernel had acknowledged everything written (tcp_sent_held). */
static void tcp_stream_close(mc_tcp_stream_t *s)
{
    int q = -1;
    if (s->fd < 0) return; /* closed before: its answer stands */
    if (ioctl(s->fd, SIOCOUTQ, &q) != 0) q = -1;
    s->held_end = q == 0;
    tcp_close(&s->fd);
}

static void tcp_cut(mc_tl_t *tl, mc_tcp_stream_t *s, int err)
{
    if (s->cut) return;
    s->cut = 1;
    s->probe = 0;
    s->tx_blocked = s->rx_blocked = 1;
    tcp_stream_close(s);
    MC_LOG(MC_LOG_WARN,
           "tcp: rank %d: connection to rank %d (%s channel) timed out (%s): "
           "not evidence of death; the heartbeat decides",
           tl->rank, s->peer, mc_tcp_ch_name[s->ch], strerror(err));
}

/* A stream whose socket ended (or broke) while its peer is not failed:
 * close it and move nothing more on it, like tcp_cut, without the log. */
static void tcp_cut_quiet(mc_tcp_stream_t *s)
{
    s->cut = 1;
    s->probe = 0; /* nothing to look at any more */
    s->tx_blocked = s->rx_blocked = 1;
    tcp_stream_close(s);
}

/* Mark peer r failed (evidence of death seen on its channel ch; err:
 * errno, 0 for a clean close) and log once; `how`: what confirmed it, or
 * NULL. */
static void tcp_peer_fail_now(mc_tl_t *tl, int r, int ch, int err,
                              const char *how)
{
    mc_tcp_peer_t *p = &tl->peers[r];
    if (p->failed) return;
    p->failed = 1;
    /* A clean close is also how a finished peer leaves; the engine decides
     * whether it matters and tells the user. */
    if (err)
        MC_LOG(MC_LOG_WARN, "tcp: rank %d: peer %d failed (%s channel): %s%s%s",
               tl->rank, r, mc_tcp_ch_name[ch], strerror(err), how ? "; " : "",
               how ? how : "");
    else
        MC_LOG(MC_LOG_INFO,
               "tcp: rank %d: peer %d closed its connection (%s channel)%s%s",
               tl->rank, r, mc_tcp_ch_name[ch], how ? "; " : "",
               how ? how : "");
    int64_t now = mc_now_us();
    for (int c = 0; c < MC_NUM_CHANNELS; c++) {
        mc_tcp_stream_t *o = &p->ch[c];
        o->rx_idle_us = now;
        if (o->cut) o->rx_end = 1; /* its socket is gone: nothing to read */
        if (o->sq.head || o->rq.head) tcp_activate(tl, o);
    }
}

/* Close check. A connection that ends (EOF) or is reset says that the
 * peer's kernel closed it, not that the process died: a live peer's kernel
 * resets a connection it timed out (TCP_USER_TIMEOUT, keepalive) once the
 * network heals, and a live peer closes the streams of a rank it removed
 * from its view. So before such an end counts as evidence of death, we
 * connect to the peer's listener (each process listens for its whole life;
 * the kernel closes the listener when the process dies):
 *   - refused: the listener is gone, so is the process: evidence of
 *     death. Once connected we send one byte: a connection that the dying
 *     process's kernel accepted and then dropped without a word (seen on
 *     loopback, about 1 in 100 checks when the listener is closed a little
 *     after the streams) answers it with a reset. A reset, an EOF or bytes
 *     after connecting is either such a dying listener or a live process
 *     that accepted our connection and closed it (one admitting a joiner
 *     accepts, and closed pending sockets with our byte unread: a reset):
 *     we connect again, up to MC_TCP_CHECK_TRIES times within
 *     MC_TCP_CHECK_MAX_US, and a listener that is gone by then refuses; a
 *     reset on the last try still counts as death;
 *   - connected and still up after MC_TCP_CHECK_ALIVE_US: the process is
 *     alive. The ended streams are cut (nothing more moves on them, as
 *     after a timeout) and the heartbeat, the majority rule or the
 *     operation timeout decides; later ends of its streams are cut too.
 *     The check's connection is held (tcp_held_step): a reset on it later
 *     (the listener of a process whose exit was slow to reach it, or a
 *     live one that accepted and closed it) starts a fresh check, which a
 *     gone listener refuses at once: the death after all;
 *   - no answer within MC_TCP_CHECK_MAX_US, unreachable, or a local error:
 *     no verdict, which is no evidence either.
 * Meanwhile the peer is not failed: the receives posted on its ended
 * streams wait, its sends pause, and its open streams still deliver what
 * they hold. A killed process's listener is closed in the same exit as its
 * connections, so on one host the refusal usually comes at once. */

/* Errors of a connection to a listener that say nobody listens there (the
 * process is gone); anything else (unreachable, out of ports or fds, a
 * local firewall) gives no verdict. */
static int tcp_err_is_gone(int err)
{
    return err == ECONNREFUSED || err == ECONNRESET || err == ECONNABORTED ||
           err == EPIPE;
}

/* A connection to a port of this host nobody listens on can connect to
 * itself (simultaneous open, when the kernel picks that very port as the
 * source): that is a refusal, not a listener answering. */
static int tcp_self_connected(int fd)
{
    struct sockaddr_in a, b;
    socklen_t la = sizeof(a), lb = sizeof(b);
    if (getsockname(fd, (struct sockaddr *)&a, &la) != 0 ||
        getpeername(fd, (struct sockaddr *)&b, &lb) != 0)
        return 0;
    return a.sin_port == b.sin_port && a.sin_addr.s_addr == b.sin_addr.s_addr;
}

/* A new non-blocking connection to p's listener: returns its fd (under
 * way or made), or -1 with errno set if it failed at once. */
static int tcp_chk_connect(const mc_tcp_peer_t *p)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (connect(fd, (const struct sockaddr *)&p->la, sizeof(p->la)) != 0 &&
        errno != EINPROGRESS && errno != EINTR) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* Start a close check of s's peer, whose stream s ended with err (0: EOF).
 * Returns 1 if the failure waits for a check (or was overruled by one). */
static int tcp_chk_begin(mc_tl_t *tl, mc_tcp_stream_t *s, int err)
{
    mc_tcp_peer_t *p = &tl->peers[s->peer];
    if (p->chk == CHK_RUN) return 1;
    if (p->chk == CHK_ALIVE && p->chk_fd >= 0) return 1; /* held: watched */
    if (!tl->close_check || !tl->connected || p->add || !p->la_ok) return 0;
    int fd = tcp_chk_connect(p);
    if (fd < 0) {
        int e = errno;
        if (tcp_err_is_gone(e)) return 0; /* refused: gone */
        p->chk = CHK_ALIVE; /* no verdict, so no evidence */
        MC_LOG(MC_LOG_WARN,
               "tcp: rank %d: rank %d %s its %s connection (%s), and its "
               "listener cannot be reached (%s): not evidence of death; the "
               "heartbeat decides",
               tl->rank, s->peer, err ? "reset" : "closed",
               mc_tcp_ch_name[s->ch], err ? strerror(err) : "EOF",
               strerror(e));
        return 1;
    }
    int64_t now = mc_now_us();
    p->chk = CHK_RUN;
    p->chk_fd = fd;
    p->chk_err = err;
    p->chk_ch = s->ch;
    p->chk_start_us = now;
    p->chk_conn_us = 0; /* connected at once (rc == 0): step looks */
    p->chk_tries = 1;
    tl->nchk++;
    MC_LOG(MC_LOG_DEBUG,
           "tcp: rank %d: rank %d %s its %s connection (%s): checking its "
           "listener",
           tl->rank, s->peer, err ? "reset" : "closed", mc_tcp_ch_name[s->ch],
           err ? strerror(err) : "EOF");
    return 1;
}

/* Look at peer r's running check; returns 1 once it decided. */
static int tcp_chk_step(mc_tl_t *tl, int r, int64_t now)
{
    mc_tcp_peer_t *p = &tl->peers[r];
    if (p->chk != CHK_RUN) return 0;
    int dead = 0, alive = 0, e = 0;
    socklen_t sl = sizeof(e);
    if (getsockopt(p->chk_fd, SOL_SOCKET, SO_ERROR, &e, &sl) != 0) e = errno;
    /* A reset after we connected (and sent the probe byte) is a dying
     * listener dropping its queue, or a live process that accepted our
     * connection (while it accepted a joiner's) and closed it: ask again,
     * as after an EOF; a listener that is gone refuses the next one. */
    if (e && tcp_err_is_gone(e) && p->chk_conn_us &&
        p->chk_tries < MC_TCP_CHECK_TRIES &&
        now - p->chk_start_us < MC_TCP_CHECK_MAX_US) {
        int fd = tcp_chk_connect(p);
        if (fd >= 0) {
            tcp_close(&p->chk_fd);
            p->chk_fd = fd;
            p->chk_conn_us = 0;
            p->chk_tries++;
            return 0;
        }
        e = errno; /* refused now: gone; a local error: no verdict */
    }
    if (e) {
        if (tcp_err_is_gone(e))
            dead = 1;
        else
            alive = 1; /* unreachable, or a local failure: no verdict */
    } else {
        struct pollfd pf = {.fd = p->chk_fd,
                            .events = POLLOUT | POLLIN | POLLRDHUP};
        if (poll(&pf, 1, 0) == 1) {
            if (pf.revents & (POLLIN | POLLRDHUP | POLLHUP | POLLERR)) {
                char c;
                ssize_t n = recv(p->chk_fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
                int reset = n < 0 && !tcp_again(errno);
                if (reset) e = errno;
                if ((n >= 0 || (reset && tcp_err_is_gone(e) &&
                                p->chk_conn_us)) &&
                    p->chk_tries < MC_TCP_CHECK_TRIES &&
                    now - p->chk_start_us < MC_TCP_CHECK_MAX_US) {
                    /* dropped, answered or reset: a live process, or a
                     * dying one's listener; ask again */
                    int fd = tcp_chk_connect(p);
                    if (fd < 0) {
                        e = errno;
                        dead = tcp_err_is_gone(e);
                        alive = !dead; /* a local error: no verdict */
                    } else {
                        tcp_close(&p->chk_fd);
                        p->chk_fd = fd;
                        p->chk_conn_us = 0;
                        p->chk_tries++;
                        return 0;
                    }
                } else if (reset) {
                    /* the listener closed with us queued */
                    dead = tcp_err_is_gone(e);
                    alive = !dead;
                } else if (n >= 0) {
                    alive = 1; /* a process there answered or closed */
                }
            }
            if (!dead && !alive && (pf.revents & POLLOUT) && !p->chk_conn_us) {
                if (tcp_self_connected(p->chk_fd)) {
                    dead = 1; /* the port is free: nobody listens */
                    e = ECONNREFUSED;
                } else {
                    /* one byte: a connection nobody holds any more (a
                     * dying listener dropped it) answers with a reset */
                    ssize_t w = send(p->chk_fd, "", 1,
                                     MSG_NOSIGNAL | MSG_DONTWAIT);
                    if (w < 0 && tcp_err_is_gone(errno)) {
                        dead = 1;
                        e = errno;
                    } else {
                        p->chk_conn_us = now;
                    }
                }
            }
        }
        if (!dead && !alive && p->chk_conn_us &&
            now - p->chk_conn_us >= MC_TCP_CHECK_ALIVE_US)
            alive = 1;
        if (!dead && !alive && !p->chk_conn_us &&
            now - p->chk_start_us >= MC_TCP_CHECK_MAX_US) {
            alive = 1; /* no verdict */
            e = ETIMEDOUT;
        }
    }
    if (!dead && !alive) return 0;
    tl->nchk--;
    /* alive and connected: keep the connection, so that the listener's
     * closing later (a process whose exit had not reached it yet) still
     * turns into the death it is (tcp_held_step) */
    int hold = alive && !e && p->chk_conn_us, listed = 0;
    if (hold && !tl->held) tl->held = calloc((size_t)tl->size, sizeof(int));
    for (int i = 0; hold && tl->held && i < tl->nheld; i++)
        listed |= tl->held[i] == r; /* the list names ranks: it watches */
    if (hold && tl->held && !listed && tl->nheld < tl->size)
        tl->held[tl->nheld++] = r;
    else if (!(hold && listed))
        tcp_close(&p->chk_fd);
    if (dead) {
        p->chk = CHK_NONE;
        char how[96];
        if (now - p->chk_start_us > 10000)
            snprintf(how, sizeof(how),
                     "its listener is gone too (%s after %lld ms%s)",
                     strerror(e), (long long)(now - p->chk_start_us) / 1000,
                     p->chk_conn_us ? ", connected first" : "");
        else
            snprintf(how, sizeof(how), "its listener is gone too (%s)",
                     strerror(e));
        tcp_peer_fail_now(tl, r, p->chk_ch, p->chk_err, how);
        return 1;
    }
    p->chk = CHK_ALIVE;
    MC_LOG(MC_LOG_WARN,
           "tcp: rank %d: rank %d %s its %s connection (%s), but its "
           "listener %s%s%s: not evidence of death; the heartbeat decides",
           tl->rank, r, p->chk_err ? "reset" : "closed",
           mc_tcp_ch_name[p->chk_ch],
           p->chk_err ? strerror(p->chk_err) : "EOF",
           e ? "gave no verdict (" : "still answers", e ? strerror(e) : "",
           e ? ")" : "");
    return 1;
}

/* Look at the held check connections: a reset (the listener closed with
 * our connection queued: the process is gone) is the death after all; an
 * EOF (the peer accepted and dropped it) ends the watch. Returns the
 * number of peers that failed. */
static int tcp_held_step(mc_tl_t *tl)
{
    int n = 0, w = 0;
    for (int i = 0; i < tl->nheld; i++) {
        int r = tl->held[i];
        mc_tcp_peer_t *p = &tl->peers[r];
        if (p->chk != CHK_ALIVE || p->chk_fd < 0 || p->failed) {
            if (p->chk != CHK_RUN) tcp_close(&p->chk_fd);
            continue; /* discarded, failed otherwise, or checking again */
        }
        struct pollfd pf = {.fd = p->chk_fd, .events = POLLIN | POLLRDHUP};
        if (poll(&pf, 1, 0) != 1) {
            tl->held[w++] = r;
            continue;
        }
        char c;
        ssize_t k = recv(p->chk_fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
        int e = k < 0 ? errno : 0;
        if (k < 0 && tcp_again(e)) {
            tl->held[w++] = r;
            continue;
        }
        tcp_close(&p->chk_fd);
        if (!(k < 0 && tcp_err_is_gone(e)))
            MC_LOG(MC_LOG_DEBUG,
                   "tcp: rank %d: rank %d took the close check's connection "
                   "(%s): no more watch on its listener",
                   tl->rank, r, k == 0 ? "EOF" : k > 0 ? "data" : strerror(e));
        if (k < 0 && tcp_err_is_gone(e)) {
            /* a listener that closed later (a slow exit reaching it), or a
             * live process that accepted the held connection (while it
             * accepted a joiner's) and closed it: a fresh check decides,
             * and a gone listener refuses it at once */
            int fd = tcp_chk_connect(p);
            if (fd >= 0) {
                p->chk = CHK_RUN;
                p->chk_fd = fd;
                p->chk_start_us = mc_now_us();
                p->chk_conn_us = 0;
                p->chk_tries = 1;
                tl->nchk++;
                continue;
            }
            if (!tcp_err_is_gone(errno)) continue; /* no verdict */
            p->chk = CHK_NONE;
            char how[96];
            snprintf(how, sizeof(how), "its listener closed later (%s)",
                     strerror(e));
            tcp_peer_fail_now(tl, r, p->chk_ch, p->chk_err, how);
            n++;
        }
    }
    tl->nheld = w;
    return n;
}

/* Step every running check (progress, peer_status). */
static int tcp_chk_all(mc_tl_t *tl)
{
    int n = 0;
    int64_t now = mc_now_us();
    for (int r = 0; r < tl->size && tl->nchk > 0; r++)
        n += tcp_chk_step(tl, r, now);
    return n;
}

/* Evidence of death on stream s (err: errno, 0 for a clean close): the
 * close check first (tcp_chk_begin), then tcp_peer_fail_now. Completes
 * nothing (this runs from `wait` and `peer_status` too): progress fails
 * the sends of every stream it activates. */
static void tcp_peer_fail(mc_tl_t *tl, mc_tcp_stream_t *s, int err)
{
    mc_tcp_peer_t *p = &tl->peers[s->peer];
    if (p->failed) return;
    if (tcp_err_is_timeout(err)) {
        tcp_cut(tl, s, err);
        return;
    }
    if (tcp_chk_begin(tl, s, err)) return;
    tcp_peer_fail_now(tl, s->peer, s->ch, err, NULL);
}

/* The incoming stream read its end (EOF or a fatal errno): nothing more
 * can arrive, and the peer sends nothing we could answer, so the socket
 * goes. Progress fails the receives still lacking bytes. */
static void tcp_rx_end(mc_tl_t *tl, mc_tcp_stream_t *s, int err)
{
    if (tcp_err_is_timeout(err) && !tl->peers[s->peer].failed) {
        tcp_cut(tl, s, err);
        return;
    }
    tcp_peer_fail(tl, s, err);
    if (!tl->peers[s->peer].failed) {
        /* a close check runs or found the peer alive: the stream waits */
        tcp_cut_quiet(s);
        return;
    }
    s->rx_end = 1;
    s->rx_blocked = 1;
    tcp_stream_close(s);
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
    s->hup = 1;
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
    /* being connected: nothing moves yet but zero-length heads */
    if (p->add || (s->cut && !p->failed)) {
        if (s->cut) s->probe = 0; /* no socket: a hang-up seen before the
                                     cut has nothing left to show */
        return tcp_q_complete_done(&s->sq) + tcp_q_complete_done(&s->rq);
    }
    int moved = 0;
    /* sends held by a close check still complete their zero-length head */
    if (!p->failed && (p->chk == CHK_RUN || s->tx_dead))
        moved += tcp_q_complete_done(&s->sq);
    s->tx_blocked = p->failed || p->chk == CHK_RUN || s->tx_dead;
    s->rx_blocked = s->rx_end;
    for (int round = 0; round < MC_TCP_ROUNDS; round++) {
        int m = 0, err = -1;
        if (s->sq.head && !s->tx_blocked) {
            m += tcp_stream_io(tl, s, 1, &err);
            /* a send error kills the peer; what it sent is still readable */
            if (err >= 0) {
                tcp_peer_fail(tl, s, err);
                if (!p->failed) s->tx_dead = 1;
            }
            if (p->failed || p->chk == CHK_RUN || s->tx_dead) s->tx_blocked = 1;
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

/* ------------------------------------------------------------------------ */
/* Handshakes: connect and add_peer                                         */
/* ------------------------------------------------------------------------ */

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

/* Send the hello on a freshly connected socket; 48 bytes always fit. */
static int tcp_out_send_hello(mc_tl_t *tl, int peer, int ch, mc_tcp_out_t *o)
{
    uint8_t h[MC_TCP_HELLO_LEN];
    tcp_hello_encode(h, tl->uid, tl->rank, ch, tl->inc, tl->peers[peer].inc,
                     &tl->la);
    ssize_t w;
    do {
        w = send(o->fd, h, sizeof(h), MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (w < 0 && errno == EINTR);
    if (w != (ssize_t)sizeof(h)) return -1;
    o->state = OUT_HELLO;
    o->got = 0;
    return 0;
}

/* Try to start outgoing connection (peer, ch): read the peer's address (if
 * published yet; never waiting for it) and begin a non-blocking connect.
 * Store errors are returned; everything else schedules a retry. */
static mc_status_t tcp_out_start(mc_tl_t *tl, int peer, int ch, mc_tcp_out_t *o,
                                 int64_t now)
{
    char key[MC_TCP_KEY_LEN], val[MC_TCP_ADDR_LEN];
    tcp_key(key, sizeof(key), peer, tl->peers[peer].inc);
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
    st = mc_store_get(tl->store, key, 0, val, sizeof(val) - 1, &len);
    if (st == MC_ERR_TIMEOUT) {
        tcp_out_retry(o, now);
        return MC_OK;
    }
    if (st != MC_OK) return tcp_store_err(st, tl->rank, "reading", key);
    struct sockaddr_in sa;
    if (len >= sizeof(val)) len = sizeof(val); /* forces a parse failure */
    val[len < sizeof(val) ? len : sizeof(val) - 1] = '\0';
    if (len >= sizeof(val) - 1 ||
        mc_sock_parse_addr(val, strlen(val), &sa) != 0)
        return mc_err(MC_ERR_PROTOCOL,
                      "tcp: rank %d: malformed address for rank %d in %s",
                      tl->rank, peer, key);

    tl->peers[peer].la = sa;
    tl->peers[peer].la_ok = 1;
    o->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (o->fd < 0)
        return mc_err(MC_ERR_IO, "tcp: rank %d: socket: %s", tl->rank,
                      strerror(errno));
    tcp_set_bufs(tl, o->fd);
    int rc = connect(o->fd, (struct sockaddr *)&sa, sizeof(sa));
    if (rc == 0) {
        if (tcp_out_send_hello(tl, peer, ch, o) != 0) tcp_out_retry(o, now);
    } else if (errno == EINPROGRESS || errno == EINTR) {
        o->state = OUT_CONNECTING;
    } else {
        /* ECONNREFUSED (listener not up or backlog full) and friends:
         * retry until the deadline */
        MC_LOG(MC_LOG_DEBUG, "tcp: rank %d: connect to rank %d (%s): %s",
               tl->rank, peer, val, strerror(errno));
        tcp_out_retry(o, now);
    }
    return MC_OK;
}

/* Remove peer r's add (done, failed or abandoned): close its handshake
 * sockets, drop it from the list. */
static void tcp_add_end(mc_tl_t *tl, int r)
{
    mc_tcp_peer_t *p = &tl->peers[r];
    if (!p->add) return;
    for (int c = 0; c < MC_NUM_CHANNELS; c++)
        tcp_close(&p->add->out[c].fd);
    tcp_close(&p->add->probe_fd);
    free(p->add);
    p->add = NULL;
    for (int i = 0; i < tl->nadds; i++)
        if (tl->adds[i] == r) {
            tl->adds[i] = tl->adds[--tl->nadds];
            break;
        }
    if (r > tl->rank && --tl->nadd_in == 0) {
        /* nobody is expected any more: whatever waits for an ack goes
         * (another peer's close check among them: read, so it ends with
         * a FIN, not a reset that would say our listener is gone) */
        for (int i = 0; i < tl->nin; i++)
            tcp_close_read(&tl->ins[i].fd);
        tl->nin = 0;
    }
}

/* Both channels of r are up: its streams are fresh and may move. */
static void tcp_add_done(mc_tl_t *tl, int r)
{
    mc_tcp_peer_t *p = &tl->peers[r];
    tcp_add_end(tl, r);
    p->add_st = MC_OK;
    for (int c = 0; c < MC_NUM_CHANNELS; c++)
        if (p->ch[c].sq.head || p->ch[c].rq.head) tcp_activate(tl, &p->ch[c]);
    if (tl->connected)
        MC_LOG(MC_LOG_INFO,
               "tcp: rank %d: connected to peer %d (incarnation "
               "%llu)",
               tl->rank, r, (unsigned long long)p->inc);
}

/* The add of r failed: the peer is failed, with status st for peer_status;
 * progress fails what is posted to it. */
static void tcp_add_fail(mc_tl_t *tl, int r, mc_status_t st, const char *why)
{
    mc_tcp_peer_t *p = &tl->peers[r];
    MC_LOG(MC_LOG_WARN,
           "tcp: rank %d: adding peer %d (incarnation %llu) failed: %s",
           tl->rank, r, (unsigned long long)p->inc, why);
    tcp_add_end(tl, r);
    p->failed = 1;
    /* peer_status speaks only of timeouts and failed peers (a store error
     * reaching the joiner's address is the joiner failing for us) */
    p->add_st = st == MC_ERR_TIMEOUT ? MC_ERR_TIMEOUT : MC_ERR_PEER_FAILED;
    int64_t now = mc_now_us();
    for (int c = 0; c < MC_NUM_CHANNELS; c++) {
        mc_tcp_stream_t *s = &p->ch[c];
        tcp_close(&s->fd);
        s->rx_end = 1;
        s->rx_idle_us = now;
        if (s->sq.head || s->rq.head) tcp_activate(tl, s);
    }
}

/* Install a handshaken socket as stream (r, ch). */
static void tcp_install(mc_tl_t *tl, int r, int ch, int fd)
{
    mc_tcp_peer_t *p = &tl->peers[r];
    tcp_set_stream_opts(tl, fd);
    p->ch[ch].fd = fd;
    p->ch[ch].cut = p->ch[ch].held_end = 0;
    for (int c = 0; c < MC_NUM_CHANNELS; c++)
        if (p->ch[c].fd < 0) return;
    tcp_add_done(tl, r);
}

/* The connecting side: socket o of (r, ch) became writable or readable. */
static void tcp_out_event(mc_tl_t *tl, int r, int ch, mc_tcp_out_t *o,
                          short rev, int64_t now)
{
    if (o->state == OUT_CONNECTING) {
        int err = 0;
        socklen_t sl = sizeof(err);
        if (getsockopt(o->fd, SOL_SOCKET, SO_ERROR, &err, &sl) != 0)
            err = errno;
        if (err == 0 && !(rev & (POLLOUT | POLLERR | POLLHUP))) return;
        if (err || tcp_out_send_hello(tl, r, ch, o) != 0) {
            MC_LOG(MC_LOG_DEBUG, "tcp: rank %d: connect to rank %d: %s",
                   tl->rank, r, strerror(err ? err : ECONNRESET));
            tcp_out_retry(o, now);
        }
        return;
    }
    /* OUT_HELLO: read the ack */
    ssize_t n =
        recv(o->fd, o->buf + o->got, sizeof(o->buf) - o->got, MSG_DONTWAIT);
    if (n < 0 && tcp_again(errno)) return;
    if (n <= 0) {
        /* The acceptor closed on us: it rejected the hello (or does not
         * expect us yet), or it is not the listener we meant (stale
         * address). Retry. */
        MC_LOG(MC_LOG_INFO,
               "tcp: rank %d: rank %d closed the %s connection during "
               "handshake (%s); retrying",
               tl->rank, r, mc_tcp_ch_name[ch],
               n == 0 ? "EOF" : strerror(errno));
        tcp_out_retry(o, now);
        return;
    }
    o->got += (size_t)n;
    if (o->got < sizeof(o->buf)) return;
    mc_tcp_hello_t h;
    const char *why = tcp_hello_decode(o->buf, tl->uid, &h);
    if (!why && (h.rank != (uint32_t)r || h.ch != (uint32_t)ch))
        why = "ack from the wrong rank or channel";
    if (!why && h.inc != tl->peers[r].inc)
        why = "ack from another incarnation of the rank";
    if (!why && h.to_inc != tl->inc)
        why = "ack meant for another incarnation of this rank";
    if (why) {
        MC_LOG(MC_LOG_WARN, "tcp: rank %d: bad ack from rank %d (%s): %s",
               tl->rank, r, mc_tcp_ch_name[ch], why);
        tcp_out_retry(o, now);
        return;
    }
    int fd = o->fd;
    o->fd = -1;
    o->state = OUT_DONE;
    tcp_install(tl, r, ch, fd); /* may free o */
}

/* The accepting side: read a hello, validate, ack, install. Returns 1 when
 * the pending slot is finished (installed or rejected). */
static int tcp_in_event(mc_tl_t *tl, mc_tcp_in_t *in)
{
    ssize_t n = recv(in->fd, in->buf + in->got, sizeof(in->buf) - in->got,
                     MSG_DONTWAIT);
    if (n < 0 && tcp_again(errno)) return 0;
    const char *why = NULL;
    int level = MC_LOG_WARN;
    mc_tcp_hello_t h = {0};
    mc_tcp_peer_t *p = NULL;
    if (n <= 0) {
        why = n == 0 ? "closed before hello" : strerror(errno);
        if (n == 0 && in->got <= 1)
            level = MC_LOG_INFO; /* e.g. a close check (tcp_chk_begin),
                                    which sends one byte */
    } else {
        in->got += (size_t)n;
        if (in->got < sizeof(in->buf)) return 0;
        why = tcp_hello_decode(in->buf, tl->uid, &h);
    }
    if (!why && (h.rank >= (uint32_t)tl->size || h.rank <= (uint32_t)tl->rank ||
                 !tl->peers[h.rank].want))
        why = "unexpected rank";
    if (!why && h.ch >= MC_NUM_CHANNELS) why = "bad channel";
    if (!why) {
        p = &tl->peers[h.rank];
        if (h.inc != p->inc || h.to_inc != tl->inc) {
            why = h.inc != p->inc
                      ? "another incarnation of that rank (stale, or not "
                        "added yet)"
                      : "meant for another incarnation of this rank";
            /* it retries: say so once per process */
            if (tl->rej_rank == (int)h.rank && tl->rej_inc == h.inc)
                level = MC_LOG_DEBUG;
            tl->rej_rank = (int)h.rank;
            tl->rej_inc = h.inc;
        } else if (!p->add) {
            /* a joiner that is early: it retries, and the add takes it */
            why = "rank not expected now";
            level = MC_LOG_INFO;
        } else if (p->ch[h.ch].fd >= 0) {
            why = "duplicate connection";
        }
    }
    if (!why) {
        uint8_t b[MC_TCP_HELLO_LEN];
        tcp_hello_encode(b, tl->uid, tl->rank, (int)h.ch, tl->inc, h.inc,
                         &tl->la);
        ssize_t w;
        do {
            w = send(in->fd, b, sizeof(b), MSG_NOSIGNAL | MSG_DONTWAIT);
        } while (w < 0 && errno == EINTR);
        if (w != (ssize_t)sizeof(b)) why = "ack send failed";
    }
    if (why) {
        if (h.la.sin_family == AF_INET) /* decoded */
            MC_LOG(level,
                   "tcp: rank %d: rejecting connection from %s (rank %u, "
                   "channel %u, incarnation %llu for %llu): %s",
                   tl->rank, in->from, h.rank, h.ch,
                   (unsigned long long)h.inc, (unsigned long long)h.to_inc,
                   why);
        else
            MC_LOG(level, "tcp: rank %d: rejecting connection from %s: %s",
                   tl->rank, in->from, why);
        tcp_close_read(&in->fd);
        return 1;
    }
    int fd = in->fd;
    in->fd = -1;
    p->la = h.la;
    p->la_ok = h.la.sin_port != 0;
    tcp_install(tl, (int)h.rank, (int)h.ch, fd);
    return 1;
}

/* Room for the stream, active and wait() arrays: streams of n peers. */
static mc_status_t tcp_reserve_streams(mc_tl_t *tl, int n)
{
    if (n <= tl->stream_cap) return MC_OK;
    int cap = tl->stream_cap ? tl->stream_cap : MC_NUM_CHANNELS;
    while (cap < n)
        cap *= 2;
    mc_tcp_stream_t **s = realloc(tl->streams, (size_t)cap * sizeof(*s));
    if (!s) return mc_err(MC_ERR_NO_MEMORY, "tcp: out of memory");
    tl->streams = s;
    mc_tcp_stream_t **a = realloc(tl->active, (size_t)cap * sizeof(*a));
    if (!a) return mc_err(MC_ERR_NO_MEMORY, "tcp: out of memory");
    tl->active = a;
    tl->stream_cap = cap;
    return MC_OK;
}

static mc_status_t tcp_reserve_pfd(mc_tl_t *tl, int n)
{
    if (n <= tl->pfd_cap) return MC_OK;
    int cap = n < 16 ? 16 : n + n / 2;
    struct pollfd *f = realloc(tl->pfd, (size_t)cap * sizeof(*f));
    if (!f) return mc_err(MC_ERR_NO_MEMORY, "tcp: out of memory");
    tl->pfd = f;
    mc_tcp_stream_t **s = realloc(tl->pfd_s, (size_t)cap * sizeof(*s));
    if (!s) return mc_err(MC_ERR_NO_MEMORY, "tcp: out of memory");
    tl->pfd_s = s;
    int *k = realloc(tl->pfd_idx, (size_t)cap * sizeof(*k));
    if (!k) return mc_err(MC_ERR_NO_MEMORY, "tcp: out of memory");
    tl->pfd_idx = k;
    tl->pfd_cap = cap;
    return MC_OK;
}

/* Put r's streams on tl->streams (once). */
static mc_status_t tcp_list_peer(mc_tl_t *tl, int r)
{
    mc_tcp_peer_t *p = &tl->peers[r];
    if (p->listed) return MC_OK;
    MC_CHECK(tcp_reserve_streams(tl, tl->nstreams + MC_NUM_CHANNELS));
    for (int c = 0; c < MC_NUM_CHANNELS; c++)
        tl->streams[tl->nstreams++] = &p->ch[c];
    p->listed = 1;
    return MC_OK;
}

/* Start connecting r, with its add allocated and room in tl->adds. */
static void tcp_add_begin(mc_tl_t *tl, int r, mc_tcp_add_t *a,
                          int64_t deadline_us)
{
    a->deadline_us = deadline_us;
    for (int c = 0; c < MC_NUM_CHANNELS; c++)
        a->out[c] = (mc_tcp_out_t){.fd = -1, .state = OUT_IDLE};
    /* the first probe only after MC_TCP_PROBE_US: a joiner that connects
     * at once is never probed (probes it never accepts would sit in its
     * listener's backlog) */
    a->probe_fd = -1;
    a->probe_sa_ok = 0;
    a->probe_us = 0;
    a->probe_next_us = mc_now_us() + MC_TCP_PROBE_US;
    a->probe_gap_us = MC_TCP_PROBE_US;
    tl->peers[r].add = a;
    tl->peers[r].add_st = MC_OK;
    tl->adds[tl->nadds++] = r;
    if (r > tl->rank) tl->nadd_in++;
    tl->add_poll_us = 0;
}

/* An add and room for it; for the listener's pending sockets too. */
static mc_status_t tcp_add_alloc(mc_tl_t *tl, mc_tcp_add_t **a_p)
{
    if (tl->nadds == tl->adds_cap) {
        int cap = tl->adds_cap ? tl->adds_cap * 2 : 8;
        int *n = realloc(tl->adds, (size_t)cap * sizeof(*n));
        if (!n) return mc_err(MC_ERR_NO_MEMORY, "tcp: out of memory");
        tl->adds = n;
        tl->adds_cap = cap;
    }
    if (!tl->ins) {
        tl->ins = calloc(MC_TCP_PENDING_MAX, sizeof(*tl->ins));
        if (!tl->ins) return mc_err(MC_ERR_NO_MEMORY, "tcp: out of memory");
    }
    *a_p = calloc(1, sizeof(**a_p));
    if (!*a_p) return mc_err(MC_ERR_NO_MEMORY, "tcp: out of memory");
    return MC_OK;
}

/* Handshake sockets to poll, into pfd; idx (if not NULL) says what each is:
 * -1 the listener, -2 - i pending socket i, else r * MC_NUM_CHANNELS + ch
 * for an outgoing one. */
static int tcp_hs_fill(const mc_tl_t *tl, struct pollfd *pfd, int *idx)
{
    int n = 0;
    if (tl->nadd_in > 0 && tl->nin < MC_TCP_PENDING_MAX) {
        pfd[n] = (struct pollfd){.fd = tl->listen_fd, .events = POLLIN};
        if (idx) idx[n] = -1;
        n++;
    }
    for (int i = 0; i < tl->nin; i++) {
        pfd[n] = (struct pollfd){.fd = tl->ins[i].fd, .events = POLLIN};
        if (idx) idx[n] = -2 - i;
        n++;
    }
    for (int i = 0; i < tl->nadds; i++) {
        int r = tl->adds[i];
        if (r > tl->rank) continue;
        for (int c = 0; c < MC_NUM_CHANNELS; c++) {
            const mc_tcp_out_t *o = &tl->peers[r].add->out[c];
            if (o->state != OUT_CONNECTING && o->state != OUT_HELLO) continue;
            pfd[n] = (struct pollfd){
                .fd = o->fd,
                .events = o->state == OUT_CONNECTING ? POLLOUT : POLLIN};
            if (idx) idx[n] = r * MC_NUM_CHANNELS + c;
            n++;
        }
    }
    return n;
}

static int tcp_hs_max(const mc_tl_t *tl)
{
    return 1 + MC_TCP_PENDING_MAX + MC_NUM_CHANNELS * tl->nadds;
}

/* When the handshakes next need a look without a socket event: a retry,
 * a deadline, a silent pending socket. */
static int64_t tcp_add_wake(const mc_tl_t *tl)
{
    int64_t wake = INT64_MAX;
    for (int i = 0; i < tl->nadds; i++) {
        int r = tl->adds[i];
        const mc_tcp_add_t *a = tl->peers[r].add;
        if (a->deadline_us < wake) wake = a->deadline_us;
        if (r > tl->rank && tl->connected) {
            int64_t t = a->probe_fd >= 0 ? mc_now_us() + MC_TCP_PROBE_POLL_US
                                         : a->probe_next_us;
            if (t < wake) wake = t;
        }
        for (int c = 0; r < tl->rank && c < MC_NUM_CHANNELS; c++)
            if (a->out[c].state == OUT_IDLE && a->out[c].next_try_us < wake)
                wake = a->out[c].next_try_us;
    }
    for (int i = 0; i < tl->nin; i++)
        if (tl->ins[i].since_us + MC_TCP_PENDING_US < wake)
            wake = tl->ins[i].since_us + MC_TCP_PENDING_US;
    return wake;
}

/*
 * An add_peer of a higher rank waits for the joiner to connect to us. The
 * joiner publishes its address only once it listens, and listens for the
 * rest of its life, so a refused connection to a published address is a
 * process that gave up or ended: no hello is coming, and the add fails now
 * instead of at its timeout. One probe at a time, every MC_TCP_PROBE_US; a
 * probe that connects (a live joiner) is closed at once, unread, and the
 * next waits twice as long (up to MC_TCP_PROBE_MAX_US), so that a slow
 * joiner's backlog holds few of them. Returns 1
 * with `why` filled once the joiner is known gone; unreachable, slow or a
 * local error gives no verdict.
 */
static int tcp_add_probe(mc_tl_t *tl, int r, mc_tcp_add_t *a, int64_t now,
                         char *why, size_t cap)
{
    int e = 0;
    if (a->probe_fd >= 0) {
        socklen_t sl = sizeof(e);
        if (getsockopt(a->probe_fd, SOL_SOCKET, SO_ERROR, &e, &sl) != 0)
            e = errno;
        if (!e) {
            struct pollfd pf = {.fd = a->probe_fd, .events = POLLOUT};
            if (poll(&pf, 1, 0) == 1 && (pf.revents & POLLOUT)) {
                if (tcp_self_connected(a->probe_fd))
                    e = ECONNREFUSED; /* nobody listens on that port */
            } else if (now - a->probe_us < MC_TCP_CHECK_MAX_US) {
                return 0; /* under way */
            }
        }
        tcp_close(&a->probe_fd);
        if (!e && a->probe_gap_us < MC_TCP_PROBE_MAX_US) a->probe_gap_us *= 2;
        a->probe_next_us = now + a->probe_gap_us;
    } else {
        if (now < a->probe_next_us) return 0;
        a->probe_next_us = now + a->probe_gap_us;
        if (!a->probe_sa_ok) { /* the store once (progress holds locks) */
            char key[MC_TCP_KEY_LEN], val[MC_TCP_ADDR_LEN];
            tcp_key(key, sizeof(key), r, tl->peers[r].inc);
            int exists = 0;
            size_t len = 0;
            if (mc_store_check(tl->store, key, &exists) != MC_OK || !exists ||
                mc_store_get(tl->store, key, 0, val, sizeof(val) - 1, &len) !=
                    MC_OK ||
                len >= sizeof(val) - 1)
                return 0; /* not published yet, or no verdict */
            val[len] = '\0';
            if (mc_sock_parse_addr(val, len, &a->probe_sa) != 0) return 0;
            a->probe_sa_ok = 1;
        }
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) return 0;
        if (connect(fd, (struct sockaddr *)&a->probe_sa, sizeof(a->probe_sa)) !=
                0 &&
            errno != EINPROGRESS && errno != EINTR) {
            e = errno;
            close(fd);
        } else {
            a->probe_fd = fd;
            a->probe_us = now;
            return 0; /* looked at from the next step on */
        }
    }
    if (!tcp_err_is_gone(e)) return 0;
    snprintf(why, cap,
             "it published its address but its listener is gone (%s): that "
             "process gave up or ended",
             strerror(e));
    return 1;
}

/* One round of every handshake: deadlines, due connection attempts, one
 * poll of at most max_wait_us (0 from progress), the events. A store
 * failure fails that add, or is returned while connect is running. */
static mc_status_t tcp_add_step(mc_tl_t *tl, int64_t max_wait_us)
{
    int64_t now = mc_now_us();
    for (int i = 0; i < tl->nadds;) {
        int r = tl->adds[i];
        mc_tcp_add_t *a = tl->peers[r].add;
        if (now >= a->deadline_us) {
            tcp_add_fail(tl, r, MC_ERR_TIMEOUT,
                         "no process of that incarnation connected within "
                         "the timeout"); /* swaps adds[i] */
            continue;
        }
        char gone[160];
        if (r > tl->rank && tl->connected &&
            tcp_add_probe(tl, r, a, now, gone, sizeof(gone))) {
            tcp_add_fail(tl, r, MC_ERR_PEER_FAILED, gone); /* swaps adds[i] */
            continue;
        }
        mc_status_t st = MC_OK;
        for (int c = 0; r < tl->rank && c < MC_NUM_CHANNELS && st == MC_OK; c++)
            if (a->out[c].state == OUT_IDLE && a->out[c].next_try_us <= now)
                st = tcp_out_start(tl, r, c, &a->out[c], now);
        if (st < 0) {
            if (!tl->connected) return st;
            char why[256];
            snprintf(why, sizeof(why), "%s", mc_last_error());
            tcp_add_fail(tl, r, st, why);
            continue;
        }
        i++;
    }
    if (!tl->nadds) return MC_OK;

    MC_CHECK(tcp_reserve_pfd(tl, tcp_hs_max(tl)));
    int *idx = tl->pfd_idx;
    int n = tcp_hs_fill(tl, tl->pfd, idx);
    int64_t wait_us = tcp_add_wake(tl) - now;
    if (wait_us > max_wait_us) wait_us = max_wait_us;
    if (wait_us < 0) wait_us = 0;
    int rc = poll(tl->pfd, (nfds_t)n, (int)((wait_us + 999) / 1000));
    if (rc < 0 && errno != EINTR) {
        if (!tl->connected)
            return mc_err(MC_ERR_IO, "tcp: rank %d: poll: %s", tl->rank,
                          strerror(errno));
        return MC_OK;
    }
    now = mc_now_us();
    int nin_before = tl->nin;
    for (int j = 0; rc > 0 && j < n; j++) {
        if (!tl->pfd[j].revents) continue;
        int k = idx[j];
        if (k == -1) {
            /* accept everything queued, up to the free slots */
            while (tl->nadd_in > 0 && tl->nin < MC_TCP_PENDING_MAX) {
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
                mc_tcp_in_t *in = &tl->ins[tl->nin++];
                *in = (mc_tcp_in_t){.fd = fd, .since_us = now};
                char ip[INET_ADDRSTRLEN] = "?";
                inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof(ip));
                snprintf(in->from, sizeof(in->from), "%s:%u", ip,
                         (unsigned)ntohs(sa.sin_port));
            }
        } else if (k <= -2) {
            /* an install may have ended the last accepting add, which
             * closes and forgets every pending socket */
            int i = -2 - k;
            if (i < nin_before && i < tl->nin && tl->ins[i].fd == tl->pfd[j].fd)
                tcp_in_event(tl, &tl->ins[i]);
        } else {
            int r = k / MC_NUM_CHANNELS, c = k % MC_NUM_CHANNELS;
            mc_tcp_add_t *a = tl->peers[r].add;
            /* the add may have ended (done, failed) during this loop */
            if (a && a->out[c].fd == tl->pfd[j].fd &&
                (a->out[c].state == OUT_CONNECTING ||
                 a->out[c].state == OUT_HELLO))
                tcp_out_event(tl, r, c, &a->out[c], tl->pfd[j].revents, now);
        }
    }
    /* drop finished or silent pending sockets, keep the array packed */
    int w = 0;
    for (int i = 0; i < tl->nin; i++) {
        mc_tcp_in_t *in = &tl->ins[i];
        if (in->fd >= 0 && now - in->since_us > MC_TCP_PENDING_US) {
            /* a peer's close check (one byte) is one: not worth a warning */
            MC_LOG(in->got <= 1 ? MC_LOG_INFO : MC_LOG_WARN,
                   "tcp: rank %d: dropping connection from %s: no hello",
                   tl->rank, in->from);
            tcp_close_read(&in->fd);
        }
        if (in->fd >= 0) tl->ins[w++] = *in;
    }
    tl->nin = w;
    return MC_OK;
}

/* "1(coll,p2p) 3(p2p)": who is still missing, for the timeout message. */
static void tcp_missing(const mc_tl_t *tl, char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = '\0';
    for (int r = 0; r < tl->size; r++) {
        const mc_tcp_peer_t *p = &tl->peers[r];
        if (!p->add) continue;
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

static mc_status_t tcp_connect(mc_tl_t *tl)
{
    if (!tl) return mc_err(MC_ERR_INVALID_ARG, "tcp: NULL transport");
    if (tl->connect_called || tl->listen_fd < 0)
        return mc_err(MC_ERR_INVALID_ARG, "tcp: connect called twice");
    tl->connect_called = 1;
    /* Every wanted peer is an add without a deadline of its own; the
     * leftovers of a failed connect go with destroy. */
    for (int r = 0; r < tl->size; r++) {
        if (!tl->peers[r].want) continue;
        mc_tcp_add_t *a;
        MC_CHECK(tcp_list_peer(tl, r));
        MC_CHECK(tcp_add_alloc(tl, &a));
        tcp_add_begin(tl, r, a, INT64_MAX);
    }
    int64_t deadline = mc_deadline_us(tl->timeout_ms);
    while (tl->nadds > 0) {
        int64_t now = mc_now_us();
        if (now >= deadline) {
            char miss[512];
            tcp_missing(tl, miss, sizeof(miss));
            mc_status_t st =
                mc_err(MC_ERR_TIMEOUT,
                       "tcp: rank %d: connect timed out after %lld ms; "
                       "missing peers: %s",
                       tl->rank, (long long)tl->timeout_ms, miss);
            MC_LOG(MC_LOG_ERROR, "%s", mc_last_error());
            return st;
        }
        int64_t left = deadline - now;
        MC_CHECK(tcp_add_step(tl, left < 1000000 ? left : 1000000));
    }
    tl->connected = 1;
    MC_LOG(MC_LOG_DEBUG,
           "tcp: rank %d (incarnation %llu) connected to %d "
           "streams",
           tl->rank, (unsigned long long)tl->inc, tl->nstreams);
    return MC_OK;
}

/* Complete the transfers add_peer took off a discarded peer's streams. */
static int tcp_fail_orphans(mc_tl_t *tl)
{
    int n = 0;
    mc_xfer_t *x = tl->orphans;
    tl->orphans = NULL;
    while (x) {
        mc_xfer_t *next = x->next;
        x->next = NULL;
        tcp_complete(x, x->off >= x->len ? MC_OK : MC_ERR_PEER_FAILED);
        n++;
        x = next;
    }
    return n;
}

static int tcp_progress(mc_tl_t *tl)
{
    if (!tl || tl->in_progress) return 0;
    tl->in_progress = 1;
    int moved = 0;
    if (tl->orphans) moved += tcp_fail_orphans(tl);
    if (tl->nchk) moved += tcp_chk_all(tl);
    if (tl->nheld) {
        /* at most every MC_TCP_ADD_POLL_US, or when wait saw an event */
        int64_t now = mc_now_us();
        if (now >= tl->held_poll_us) {
            tl->held_poll_us = now + MC_TCP_ADD_POLL_US;
            moved += tcp_held_step(tl);
        }
    }
    if (tl->nadds) {
        /* handshakes: a poll now and then, not on every spin */
        int64_t now = mc_now_us();
        if (now >= tl->add_poll_us) {
            int before = tl->nadds;
            tl->add_poll_us = now + MC_TCP_ADD_POLL_US;
            (void)tcp_add_step(tl, 0); /* failures fail the add */
            moved += before - tl->nadds;
        }
    }
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

/* See transport.h. What was written is in the kernel's hands; the rest
 * goes from a copy. */
static int tcp_release_send(mc_tl_t *tl, int peer, int ch, mc_xfer_t *x,
                            int drop, mc_status_t st)
{
    if (!tl || !x || peer < 0 || peer >= tl->size || ch < 0 ||
        ch >= MC_NUM_CHANNELS)
        return mc_err(MC_ERR_INVALID_ARG, "tcp release_send: bad call");
    mc_tcp_q_t *q = &tl->peers[peer].ch[ch].sq;
    return mc_tl_q_release(&tl->owned, &q->head, &q->tail, x, 1, drop, st);
}

static int tcp_release_recv(mc_tl_t *tl, int peer, int ch, mc_xfer_t *x,
                            mc_status_t st)
{
    if (!tl || !x || peer < 0 || peer >= tl->size || ch < 0 ||
        ch >= MC_NUM_CHANNELS)
        return mc_err(MC_ERR_INVALID_ARG, "tcp release_recv: bad call");
    mc_tcp_q_t *q = &tl->peers[peer].ch[ch].rq;
    return mc_tl_q_release(&tl->owned, &q->head, &q->tail, x, 0, 0, st);
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
    if (!tl || tl->orphans) return;
    if (timeout_us < 0) timeout_us = 0;
    /* a close check runs: its socket wakes us (below), its clocks too */
    if (tl->nchk && timeout_us > 10000) timeout_us = 10000;
    int64_t now = mc_now_us();
    int nhs = 0;
    if (tl->nadds) {
        int64_t left = tcp_add_wake(tl) - now;
        if (left <= 0) return; /* progress has a handshake to look at */
        if (left < timeout_us) timeout_us = left;
        nhs = tcp_hs_max(tl);
    }
    if (tcp_reserve_pfd(tl, tl->nstreams + nhs + tl->nheld + tl->nchk) !=
        MC_OK)
        return;
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
        /* a peer still being added is watched through its handshakes */
        if (s->fd < 0 || tl->peers[s->peer].add) continue;
        short ev = 0;
        if (s->rq.head) ev |= POLLIN;
        const mc_tcp_peer_t *p = &tl->peers[s->peer];
        if (!p->failed && p->chk != CHK_RUN && !s->hup) ev |= POLLRDHUP;
        if (!p->failed && p->chk != CHK_RUN && !s->tx_dead && s->sq.head)
            ev |= POLLOUT;
        if (!ev) continue;
        tl->pfd[n] = (struct pollfd){.fd = s->fd, .events = ev};
        tl->pfd_s[n++] = s;
    }
    /* handshake sockets and the listener, after the streams */
    int nst = n;
    if (nhs) n += tcp_hs_fill(tl, tl->pfd + n, NULL);
    /* held check connections: their reset wakes us (progress looks) */
    for (int i = 0; i < tl->nheld; i++)
        tl->pfd[n++] = (struct pollfd){.fd = tl->peers[tl->held[i]].chk_fd,
                                       .events = POLLIN | POLLRDHUP};
    /* running close checks: connected (POLLOUT until then) or refused */
    for (int r = 0, k = 0; r < tl->size && k < tl->nchk; r++) {
        const mc_tcp_peer_t *p = &tl->peers[r];
        if (p->chk != CHK_RUN) continue;
        k++;
        tl->pfd[n++] = (struct pollfd){
            .fd = p->chk_fd,
            .events = (short)(POLLIN | POLLRDHUP |
                              (p->chk_conn_us ? 0 : POLLOUT))};
    }
    struct timespec ts = {.tv_sec = timeout_us / 1000000,
                          .tv_nsec = (timeout_us % 1000000) * 1000};
    int rc = ppoll(tl->pfd, (nfds_t)n, &ts, NULL);
    for (int i = nst; rc > 0 && i < n; i++)
        if (tl->pfd[i].revents) /* look in progress */
            tl->add_poll_us = tl->held_poll_us = 0;
    for (int i = 0; rc > 0 && i < nst; i++) {
        mc_tcp_stream_t *s = tl->pfd_s[i];
        const mc_tcp_peer_t *p = &tl->peers[s->peer];
        if (!p->failed && p->chk != CHK_RUN && !s->hup &&
            (tl->pfd[i].revents & (POLLRDHUP | POLLHUP | POLLERR))) {
            s->probe = 1;
            tcp_activate(tl, s);
        }
    }
}

/* Acknowledged by the peer's kernel: nothing written to the socket is
 * unacknowledged (SIOCOUTQ: written and not yet acknowledged, sent or
 * not). Such bytes sit in the peer's receive queue, which a reset (our
 * death with unread bytes) does not drop: the peer reads them before its
 * stream ends (test_tcp held_reset). Bytes written later (the next
 * operation's) count too, which only makes the answer later. Once the
 * socket is closed (the stream ended: the peer closed, died, or the
 * connection was cut) the answer is what it was at the close; without
 * that, a dead peer's answer is a failure and a live one's "not yet" (the
 * op's deadline or the heartbeat decide). */
static mc_status_t tcp_sent_held(mc_tl_t *tl, int peer, int ch)
{
    if (!tl || peer < 0 || peer >= tl->size || ch < 0 ||
        ch >= MC_NUM_CHANNELS)
        return mc_err(MC_ERR_INVALID_ARG, "tcp: sent_held: bad peer %d", peer);
    mc_tcp_peer_t *p = &tl->peers[peer];
    const mc_tcp_stream_t *s = &p->ch[ch];
    if (p->add) return p->failed ? MC_ERR_PEER_FAILED : MC_INPROGRESS;
    int q = -1;
    if (s->fd < 0)
        q = s->held_end ? 0 : -1;
    else if (ioctl(s->fd, SIOCOUTQ, &q) != 0)
        q = -1;
    if (q == 0) return MC_OK;
    return p->failed ? MC_ERR_PEER_FAILED : MC_INPROGRESS;
}

/* In its interactive mode the kernel delays an acknowledgement to carry it
 * on the next data it sends (up to its delayed-ACK timer, 40 ms or more);
 * TCP_QUICKACK sends a pending one now. */
static mc_status_t tcp_ack_now(mc_tl_t *tl, int peer, int ch)
{
    if (!tl || peer < 0 || peer >= tl->size || ch < 0 ||
        ch >= MC_NUM_CHANNELS)
        return mc_err(MC_ERR_INVALID_ARG, "tcp: ack_now: bad peer %d", peer);
    int fd = tl->peers[peer].ch[ch].fd, one = 1;
    if (fd >= 0)
        (void)setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
    return MC_OK;
}

static mc_status_t tcp_peer_status(mc_tl_t *tl, int peer)
{
    if (!tl || peer < 0 || peer >= tl->size)
        return mc_err(MC_ERR_INVALID_ARG, "tcp: peer_status: bad peer %d",
                      peer);
    mc_tcp_peer_t *p = &tl->peers[peer];
    if (p->add && tl->connected) return MC_INPROGRESS;
    if (p->failed) return p->add_st < 0 ? p->add_st : MC_ERR_PEER_FAILED;
    if (!p->want || !tl->connected) return MC_OK;
    if (p->chk == CHK_RUN) tcp_chk_step(tl, peer, mc_now_us());
    if (p->chk == CHK_RUN) return p->failed ? MC_ERR_PEER_FAILED : MC_OK;
    if (p->chk == CHK_ALIVE && p->chk_fd >= 0) {
        tcp_held_step(tl); /* its reset fails it here, completing nothing */
        if (p->failed) return MC_ERR_PEER_FAILED;
    }
    /* Cheap look for a hang-up nobody has examined yet; it decides at once
     * (progress then completes the transfers), or starts a close check. */
    struct pollfd pfd[MC_NUM_CHANNELS];
    for (int c = 0; c < MC_NUM_CHANNELS; c++)
        pfd[c] = (struct pollfd){.fd = p->ch[c].hup ? -1 : p->ch[c].fd,
                                 .events = POLLRDHUP};
    if (poll(pfd, MC_NUM_CHANNELS, 0) <= 0) return MC_OK;
    for (int c = 0; c < MC_NUM_CHANNELS && !p->failed; c++)
        if (pfd[c].revents & (POLLRDHUP | POLLHUP | POLLERR))
            tcp_probe(tl, &p->ch[c]);
    return p->failed ? MC_ERR_PEER_FAILED : MC_OK;
}

/* Take every transfer off r's streams (in order, sends of a channel then
 * its receives) for the next progress to fail, and close its sockets. */
static void tcp_peer_discard(mc_tl_t *tl, int r)
{
    mc_tcp_peer_t *p = &tl->peers[r];
    mc_xfer_t **tail = &tl->orphans;
    while (*tail)
        tail = &(*tail)->next;
    for (int c = 0; c < MC_NUM_CHANNELS; c++) {
        mc_tcp_stream_t *s = &p->ch[c];
        mc_tcp_q_t *qs[2] = {&s->sq, &s->rq};
        for (int k = 0; k < 2; k++) {
            if (!qs[k]->head) continue;
            *tail = qs[k]->head;
            tail = &qs[k]->tail->next;
            qs[k]->head = qs[k]->tail = NULL;
        }
        tcp_close(&s->fd);
        s->probe = s->rx_end = s->tx_blocked = s->rx_blocked = s->cut = 0;
        s->hup = s->tx_dead = s->held_end = 0;
        s->rx_idle_us = 0;
        /* an active stream with empty queues leaves the list in progress */
    }
    /* the close check was about the old process */
    if (p->chk == CHK_RUN) tl->nchk--;
    tcp_close(&p->chk_fd);
    p->chk = CHK_NONE;
    p->la_ok = 0; /* the new one's handshake tells */
}

static mc_status_t tcp_add_peer(mc_tl_t *tl, int peer, uint64_t inc,
                                int64_t timeout_ms)
{
    if (!tl) return mc_err(MC_ERR_INVALID_ARG, "tcp: NULL transport");
    if (!tl->connected)
        return mc_err(MC_ERR_INVALID_ARG,
                      "tcp: rank %d: add_peer before "
                      "connect",
                      tl->rank);
    if (tl->in_progress)
        return mc_err(MC_ERR_INVALID_ARG,
                      "tcp: rank %d: add_peer from a completion callback",
                      tl->rank);
    if (peer < 0 || peer >= tl->size || peer == tl->rank)
        return mc_err(MC_ERR_INVALID_ARG, "tcp: rank %d: add_peer: bad peer %d",
                      tl->rank, peer);
    if (inc == 0 || inc < tl->inc || (inc == tl->inc && peer < tl->rank))
        return mc_err(MC_ERR_INVALID_ARG,
                      "tcp: rank %d (incarnation %llu): add_peer %d: "
                      "incarnation %llu is not newer than this process",
                      tl->rank, (unsigned long long)tl->inc, peer,
                      (unsigned long long)inc);
    mc_tcp_add_t *a;
    MC_CHECK(tcp_list_peer(tl, peer));
    MC_CHECK(tcp_add_alloc(tl, &a));
    mc_tcp_peer_t *p = &tl->peers[peer];
    if (p->add) {
        MC_LOG(MC_LOG_INFO,
               "tcp: rank %d: abandoning the add of peer %d "
               "(incarnation %llu)",
               tl->rank, peer, (unsigned long long)p->inc);
        tcp_add_end(tl, peer);
    } else if (p->want && !p->failed) {
        /* evicted while alive: closing tells it */
        MC_LOG(MC_LOG_INFO,
               "tcp: rank %d: closing the connections of peer %d "
               "(incarnation %llu) for incarnation %llu",
               tl->rank, peer, (unsigned long long)p->inc,
               (unsigned long long)inc);
    }
    tcp_peer_discard(tl, peer);
    p->inc = inc;
    p->want = 1;
    p->failed = 0;
    tcp_add_begin(tl, peer, a, mc_deadline_us(timeout_ms));
    MC_LOG(MC_LOG_DEBUG, "tcp: rank %d: adding peer %d (incarnation %llu)",
           tl->rank, peer, (unsigned long long)inc);
    return MC_OK;
}

static void tcp_destroy(mc_tl_t *tl)
{
    if (!tl) return;
    tcp_close(&tl->listen_fd);
    if (tl->peers)
        for (int r = 0; r < tl->size; r++) {
            for (int c = 0; c < MC_NUM_CHANNELS; c++)
                tcp_close(&tl->peers[r].ch[c].fd);
            tcp_close(&tl->peers[r].chk_fd);
            if (tl->peers[r].add) {
                for (int c = 0; c < MC_NUM_CHANNELS; c++)
                    tcp_close(&tl->peers[r].add->out[c].fd);
                tcp_close(&tl->peers[r].add->probe_fd);
                free(tl->peers[r].add);
            }
        }
    for (int i = 0; i < tl->nin; i++)
        tcp_close(&tl->ins[i].fd);
    mc_tl_owned_free(&tl->owned);
    free(tl->held);
    free(tl->ins);
    free(tl->adds);
    free(tl->pfd_idx);
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
    .add_peer = tcp_add_peer,
    .signal = mc_tl_stub_signal,
    .peek = mc_tl_stub_peek,
    .sent_held = tcp_sent_held,
    .ack_now = tcp_ack_now,
    .release_send = tcp_release_send,
    .release_recv = tcp_release_recv,
    .mem_reg = mc_tl_stub_mem_reg,
    .mem_dereg = mc_tl_stub_mem_dereg,
    .put = mc_tl_stub_put,
    .destroy = tcp_destroy,
};
