/*
 * Internal: liveness detector for silent peers (not installed).
 *
 * The transports find crashed peers (EOF, pidfd); a stopped process, a hung
 * host or a dead link says nothing. This module finds those: every rank
 * sends a small UDP heartbeat to each watched peer every `interval` and
 * records, per peer, when it last heard a valid one. A peer silent for
 * longer than `timeout` is *suspected* (suspicion, not evidence of death:
 * see docs/fault-model.md; the engine applies the majority rule).
 *
 * Threading: one background thread per instance sends, receives and keeps
 * the clocks; it takes no lock the engine holds and never blocks on a
 * socket. mc_live_suspects, mc_live_silent_ms, mc_live_forget,
 * mc_live_event_fd and mc_live_stats are lock-free and may be called from
 * any thread at any time between create and destroy. create, connect and
 * destroy are not concurrent with anything else on the same instance.
 *
 * Silence is measured on the thread's clock, not the caller's: "silent"
 * means "as of the last time the thread had emptied its socket, nothing
 * valid had been read from the peer for that long". So a caller that runs
 * while this process's own liveness thread is starved, or just resumed
 * from a stop, never sees a false suspicion caused by datagrams still
 * waiting in the socket; detection is delayed instead. The thread wakes at the
 * moment a peer's silence would cross the timeout, so a silent peer is
 * suspected at timeout (+ scheduling delay) after the last datagram it sent
 * arrived.
 *
 * Wire format (one UDP datagram, exactly MC_LIVE_DGRAM_LEN bytes, all
 * fields little-endian):
 *    0  u32  magic MC_LIVE_MAGIC ("MCLV")
 *    4  u32  version MC_LIVE_VERSION
 *    8  u64  communicator uid
 *   16  u32  sender rank
 *   20  u32  receiver rank
 *   24  u64  sender incarnation (random, chosen at create, never 0)
 *   32  u64  counter (per sender, increases by one per round)
 * A datagram counts only if its size, magic, version and uid are right, the
 * sender is a watched rank of this communicator whose incarnation equals the
 * one it published, the receiver is this rank, and the counter is higher
 * than any seen from that sender (no replays). Everything else is ignored
 * and counted (mc_live_stats).
 *
 * Bootstrap: create publishes key "live/<rank>" with the value
 * "<ipv4>:<port>/<incarnation, 16 lower-case hex digits>"; connect reads the
 * key of every watched peer. The address is chosen as the TCP transport
 * chooses its listen address (MOONCAKE_SOCKET_ADDR, else an UP interface:
 * MOONCAKE_SOCKET_IFNAME or the first non-loopback IPv4 one, else
 * 127.0.0.1), and MOONCAKE_SOCKET_PORT_BASE gives the UDP port base+rank
 * upward, so heartbeats take the same path as TCP data links.
 */
#ifndef MC_LIVENESS_H
#define MC_LIVENESS_H

#include <stdint.h>

#include "mooncake/mooncake.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MC_LIVE_MAGIC 0x564c434du /* "MCLV" little-endian */
#define MC_LIVE_VERSION 1u
#define MC_LIVE_DGRAM_LEN 40

/* Defaults where a parameter is <= 0. */
#define MC_LIVE_TIMEOUT_MS_DEFAULT 3000 /* MOONCAKE_LIVENESS_TIMEOUT_MS */
#define MC_LIVE_INTERVAL_MS_MAX 500     /* default interval: timeout/6, max */

typedef struct mc_live mc_live_t;

typedef struct mc_live_params {
    int rank, size;
    /* Store for the address exchange, valid during create and connect only;
     * keys must already be unique to the communicator (a prefix store). */
    mc_store_h store;
    /* Communicator uid, the same on every rank (see mc_tl_params_t). */
    uint64_t uid;
    /* peers[r] != 0: watch rank r (send to it, suspect it when silent).
     * `size` entries, ignored for r == rank; read during create only. */
    const uint8_t *peers;
    /* Silence after which a peer is suspected; <= 0: the environment
     * variable MOONCAKE_LIVENESS_TIMEOUT_MS, default 3000. */
    int64_t timeout_ms;
    /* Heartbeat period; <= 0: MOONCAKE_LIVENESS_INTERVAL_MS, default
     * timeout/6 (at most 500, at least 1). Clamped to [1, timeout/2]. */
    int64_t interval_ms;
    /* Bound for connect's wait for the peers' keys; < 0: forever. */
    int64_t connect_timeout_ms;
} mc_live_params_t;

/* Counters since create (relaxed snapshots). */
typedef struct mc_live_stats {
    uint64_t sent;        /* heartbeats handed to the kernel */
    uint64_t send_failed; /* not sent: socket full (never waited) or error */
    uint64_t received;    /* valid heartbeats */
    uint64_t ignored;     /* datagrams rejected by the checks above */
    int64_t timeout_ms;   /* effective settings */
    int64_t interval_ms;
} mc_live_stats_t;

/*
 * Bind this rank's UDP socket and publish "live/<rank>". Does not wait for
 * peers. Errors: MC_ERR_INVALID_ARG (rank/size/NULL, bad MOONCAKE_SOCKET_*
 * setting), MC_ERR_IO (socket/bind), MC_ERR_NO_MEMORY, the store's errors.
 * *out is written on success only.
 */
mc_status_t mc_live_create(const mc_live_params_t *p, mc_live_t **out);

/*
 * Read every watched peer's key (waiting at most connect_timeout_ms in all),
 * then start the thread. Every watched peer's silence clock starts here, so
 * a peer that never sends is suspected `timeout` after connect. Errors:
 * MC_ERR_TIMEOUT (names the missing peers), MC_ERR_PROTOCOL (malformed
 * key), MC_ERR_IO (thread/timer), the store's errors; after a failure only
 * destroy may be called.
 */
mc_status_t mc_live_connect(mc_live_t *l);

/*
 * Fill out[0..size) with 1 for each watched peer silent longer than the
 * timeout, 0 otherwise (self, forgotten and unwatched peers are 0); out may
 * be NULL to only count. Returns the number of suspected peers. Lock-free,
 * no system call; 0 before connect.
 */
int mc_live_suspects(mc_live_t *l, uint8_t *out);

/*
 * 1 if `peer` alone is suspected by the rule of mc_live_suspects (watched
 * and silent longer than the timeout), else 0. Lock-free, no system call.
 */
int mc_live_suspected(mc_live_t *l, int peer);

/*
 * Milliseconds since `peer` was last heard (on the thread's clock, see
 * above), or -1 if it is not watched (self, out of range, forgotten,
 * unwatched) or before connect. Lock-free.
 */
int64_t mc_live_silent_ms(mc_live_t *l, int peer);

/*
 * Stop watching `peer` for good (it was removed from the view): no more
 * heartbeats to it, its datagrams are ignored, it is never suspected again.
 * Takes effect at once for the readers above and within one thread pass for
 * sending. Out-of-range peers are ignored. Lock-free.
 */
void mc_live_forget(mc_live_t *l, int peer);

/*
 * Watch `peer` again, now the process whose published key value is `addr`
 * ("ip:port/incarnation", read by the caller from "live/<peer>"): a
 * joiner that took the slot. Its clock starts when the thread applies the
 * change (at the next heartbeat round); until then it is not watched. Only
 * after connect. Errors: MC_ERR_INVALID_ARG, MC_ERR_PROTOCOL (malformed).
 */
mc_status_t mc_live_watch(mc_live_t *l, int peer, const char *addr);

/*
 * A non-blocking eventfd that becomes readable whenever the thread sees the
 * set of suspected peers change (a peer becomes suspected or is heard
 * again), so a wait loop can poll() it instead of calling mc_live_suspects
 * on a timer. The caller may read() it to reset it; it belongs to `l`
 * (valid from create to destroy).
 */
int mc_live_event_fd(mc_live_t *l);

/* Snapshot of the counters and effective settings. */
void mc_live_stats(mc_live_t *l, mc_live_stats_t *out);

/* Stop the thread, close the sockets, free. NULL is a no-op. The store key
 * is left behind (the store may already be gone). */
void mc_live_destroy(mc_live_t *l);

#ifdef __cplusplus
}
#endif
#endif /* MC_LIVENESS_H */
