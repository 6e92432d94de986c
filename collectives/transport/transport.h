/*
 * Internal transport interface (not installed). A transport moves ordered
 * byte streams between this rank and a set of peers; the engine above it
 * frames messages, matches them and runs the algorithms. Transports never
 * see collective descriptors, and algorithms never see transport structs.
 *
 * Model
 * -----
 * For every (peer, channel) pair a transport provides two independent,
 * reliable, in-order byte streams: one outgoing, one incoming. Channels
 * separate traffic that must not block each other (collectives, tagged
 * point-to-point). The engine posts transfers (mc_xfer_t); each stream
 * completes its posted transfers strictly in FIFO order. A transfer is a
 * contiguous byte range: a posted send is complete once all its bytes have
 * been handed to the transport (the buffer may be reused); a posted receive
 * is complete once exactly `len` bytes of the incoming stream have been
 * written to `buf`. There are no message boundaries in the stream: the
 * engine writes a header and then a payload, and reads them back the same
 * way.
 *
 * Threading: the engine serialises every call into one transport instance
 * (it holds its progress lock), so transports need no locks of their own
 * except where they start helper threads.
 *
 * Blocking: only `create`/`connect` may block (bounded by their timeout)
 * and `wait` (bounded by its timeout). `post_*`, `add_peer` and `progress`
 * never block; while an add is in progress, progress looks in the store
 * now and then (a non-waiting check, and a get of a key that exists).
 *
 * Ownership: a posted mc_xfer_t and its buffer belong to the transport
 * until the xfer's status leaves MC_INPROGRESS; the engine owns them again
 * after that (or after `destroy`).
 *
 * Failure (end of stream): when a peer dies or closes, each incoming
 * (peer, channel) stream ends separately, after the bytes it still holds:
 * it keeps serving posted receives, including ones posted after the death
 * was noticed, from what the peer wrote before (socket buffer, ring). A
 * receive fails with MC_ERR_PEER_FAILED only when its stream has no more
 * bytes; later post_recv on that stream returns MC_ERR_PEER_FAILED without
 * touching the xfer. Sends to a dead or closed peer fail (posted ones
 * complete with MC_ERR_PEER_FAILED, later post_send returns it) as soon as
 * the death is known, and peer_status reports it from then on. A clean
 * close is logged at info level; the engine logs what matters to users.
 * A transport never crashes or hangs on a dead peer. A transport that can
 * tell a closed connection of a live process from a death (tcp: its close
 * check asks the peer's listener) treats the former like a timeout: the
 * ended streams move nothing more, what is posted on them waits, and the
 * peer is not failed.
 *
 * Rejoin (add_peer)
 * -----------------
 * A slot's process is named by (rank, incarnation). The processes that
 * create the communicator have incarnation 0. A process that takes a slot
 * later (a failed one, or a reserved one never used: scale-up) has an
 * incarnation > 0 that is larger than the incarnation of every process that
 * is a member when it is created, and unique in its slot; the epoch of the
 * view that admits it is such a number. "Newer" below means a larger
 * (incarnation, rank) pair.
 *
 * The joiner creates each transport with `incarnation`, `peers` = every
 * slot it will talk to (all other active slots of the view that admits it,
 * co-joiners of that view included) and `peer_incarnation` = theirs.
 * create publishes its address under a key qualified by the incarnation
 * (so a dead process's address is never used for its successor), and
 * connect returns once every peer in `peers` has connected to it: each
 * running member does so by calling add_peer(joiner, incarnation),
 * co-joiners by their own connect.
 *
 * add_peer(peer, incarnation) is called by a member for a newer process
 * only (a joiner). It never blocks: it discards everything the transport
 * still holds for the slot (sockets, rings, end-of-stream state; transfers
 * still posted on the old streams complete with MC_ERR_PEER_FAILED from the
 * next progress), then progress connects to that incarnation. Meanwhile
 * peer_status says MC_INPROGRESS; then MC_OK once both channels' streams
 * are up, fresh (nothing the old process wrote is ever delivered), or a
 * failure (MC_ERR_TIMEOUT: nobody took the slot within timeout_ms;
 * MC_ERR_PEER_FAILED: the joiner failed, or it expects another incarnation
 * of this rank). Transfers may be posted to the peer while the add is in
 * progress: they move once it is up, or fail with it. add_peer may be
 * called again for the same slot at any time (a newer joiner, or a retry
 * after a failure); the earlier attempt is abandoned. A process that was
 * connected and is dropped that way sees this rank leave (a live, evicted
 * process finds its streams to this rank ended: failed over shm, cut over
 * tcp, whose close check finds this rank alive), so a retry with the same
 * incarnation only works if the earlier attempt never connected. Every
 * handshake checks both sides' incarnations, so a stale process of another
 * incarnation (a crashed one's late socket, an evicted one still running)
 * is never connected.
 *
 * Slots a transport does not support point at stubs returning
 * MC_ERR_UNSUPPORTED (see mc_tl_stub_*), never NULL.
 */
#ifndef MC_TRANSPORT_H
#define MC_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#include "mooncake/mooncake.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    MC_CH_COLL = 0, /* collective frames, consumed in order */
    MC_CH_P2P = 1,  /* tagged point-to-point frames */
    MC_NUM_CHANNELS = 2
};

typedef struct mc_xfer mc_xfer_t;
/* Completion callback, run from inside `progress` (or from `post_*` if the
 * transfer completes immediately). It may post new transfers to the same
 * transport (on any stream). */
typedef void (*mc_xfer_cb_t)(mc_xfer_t *x);

struct mc_xfer {
    /* set by the engine before posting */
    void *buf;       /* send: source bytes; recv: destination */
    size_t len;      /* may be 0: completes at once, in FIFO order */
    mc_xfer_cb_t cb; /* may be NULL */
    void *arg;       /* for the engine; the transport never reads it */
    /* owned by the transport while posted */
    size_t off; /* bytes done so far */
    struct mc_xfer *next;
    /* MC_INPROGRESS while posted; MC_OK or a failure once done. Written by
     * the transport last (after the data), read by the engine. */
    volatile int status;
};

typedef struct mc_tl mc_tl_t; /* one transport instance in one communicator */
typedef struct mc_mr mc_mr_t; /* registered memory (verbs, cuda) */

typedef struct mc_tl_params {
    int rank;
    int size;
    /* Store for address exchange; keys are already unique to this
     * communicator, so a transport may use "<name>/<rank>/..." directly.
     * Used by create and connect, and by add_peer until the peer is up (or
     * its add failed): it must stay valid until destroy if add_peer is
     * used. */
    mc_store_h store;
    /* Random 64-bit id unique to this communicator instance, the same on all
     * ranks (e.g. for naming shared-memory segments). */
    uint64_t uid;
    /* peers[r] != 0: this transport must connect to rank r. Never set for
     * r == rank. The array has `size` entries and is valid during create and
     * connect only. */
    const uint8_t *peers;
    /* This process's incarnation in slot `rank`: 0 for the processes that
     * create the communicator, > 0 for one that takes a slot later (see
     * "Rejoin" above). */
    uint64_t incarnation;
    /* peer_incarnation[r]: incarnation of the process in slot r, for every
     * r in `peers`; NULL means all 0. `size` entries, valid during create
     * and connect only. */
    const uint64_t *peer_incarnation;
    int64_t timeout_ms; /* bound for create + connect */
} mc_tl_params_t;

typedef struct mc_tl_ops {
    size_t size;      /* sizeof(mc_tl_ops_t) */
    const char *name; /* "tcp", "shm", ... */

    /* Allocate local resources (listening socket, shared segment) and
     * publish this rank's address in the store. Must not wait for peers. */
    mc_status_t (*create)(const mc_tl_params_t *p, mc_tl_t **tl_p);
    /* Establish every stream to every peer in p->peers. Blocking, bounded by
     * p->timeout_ms; symmetric (all those peers call it too). */
    mc_status_t (*connect)(mc_tl_t *tl);
    /* Queue a transfer on the outgoing / incoming stream of (peer, ch). */
    mc_status_t (*post_send)(mc_tl_t *tl, int peer, int ch, mc_xfer_t *x);
    mc_status_t (*post_recv)(mc_tl_t *tl, int peer, int ch, mc_xfer_t *x);
    /* Move as many bytes as possible without blocking; run completion
     * callbacks. Returns the number of transfers completed or partly
     * advanced (0 if nothing moved). */
    int (*progress)(mc_tl_t *tl);
    /* Sleep until progress may be possible (data arrived, space freed, a
     * peer failed) or timeout_us passed. Spurious early returns are fine. */
    void (*wait)(mc_tl_t *tl, int64_t timeout_us);
    /* Evidence of death known about `peer`: MC_OK or MC_ERR_PEER_FAILED;
     * for a peer being added (see add_peer) MC_INPROGRESS until it is up,
     * and MC_ERR_TIMEOUT if the add timed out. */
    mc_status_t (*peer_status)(mc_tl_t *tl, int peer);
    /* Start connecting slot `peer` to its process of incarnation
     * `incarnation` (see "Rejoin" above). Requires a connected transport,
     * incarnation > 0 and a newer peer ((incarnation, peer) > this
     * process's (incarnation, rank)). Never blocks: progress finishes the
     * connection within timeout_ms (< 0: forever) and peer_status reports
     * the outcome. Not from inside a completion callback. Returns MC_OK
     * once started, MC_ERR_INVALID_ARG for a bad call. */
    mc_status_t (*add_peer)(mc_tl_t *tl, int peer, uint64_t incarnation,
                            int64_t timeout_ms);

    /* Signals: one 64-bit word per (this rank, peer, slot), slot 0 or 1,
     * that this rank writes and the peer reads, outside the streams (no
     * order with the bytes). signal makes `value` the word's latest value
     * and wakes the peer if it sleeps in wait(); peek reads the latest
     * value `peer` signalled to this rank (0 before any) and arms wait():
     * until that word changes, wait() may return early but never sleeps
     * through a change. A dead peer's words keep their last value (like
     * the bytes its streams still hold), so peek works after a death; it
     * fails only for a peer without a connection (MC_ERR_PEER_FAILED) or
     * a bad argument. signal to a gone peer fails with MC_ERR_PEER_FAILED.
     * The engine's final barrier of fault tolerance uses them when every
     * peer of the view supports them (one word instead of a frame). */
    mc_status_t (*signal)(mc_tl_t *tl, int peer, int slot, uint64_t value);
    mc_status_t (*peek)(mc_tl_t *tl, int peer, int slot, uint64_t *value_p);

    /* Held sends (the pair confirmation of fault tolerance, docs/design.md
     * "Pair confirmation"). sent_held: MC_OK once every byte of the
     * outgoing (peer, ch) stream whose send completed is held where the
     * peer reads it even if this process dies now (shm: at once, the
     * bytes are in the peer's ring; tcp: once the peer's kernel has
     * acknowledged them: a dying process with unread bytes resets its
     * connections and drops its unacknowledged send queue, while the
     * peer's receive queue survives the reset); MC_INPROGRESS while not
     * yet (nothing wakes wait() for it: the caller polls); MC_ERR_PEER_FAILED
     * once the peer is known dead. ack_now: this rank has read what it
     * waited for on (peer, ch); acknowledge it now rather than after a
     * delay (tcp: TCP_QUICKACK), so the peer's sent_held turns MC_OK soon.
     * Neither moves bytes or runs callbacks. */
    mc_status_t (*sent_held)(mc_tl_t *tl, int peer, int ch);
    mc_status_t (*ack_now)(mc_tl_t *tl, int peer, int ch);

    /* Give up a posted send (the engine removed `peer` from its view while
     * x still waited: the fault model fails sends to an inactive peer, and
     * a stopped peer would hold x's buffer forever). When this returns, x
     * has completed with `st` (its callback ran) and the transport never
     * reads x->buf again. With `drop` set and no byte of x gone, x leaves
     * the stream unsent; otherwise the bytes of x not yet written still
     * go, from a copy the transport owns, so the stream stays as posted (a
     * removed process that resumes reads whole messages, then what
     * follows, e.g. the view that evicts it). The engine releases a
     * message's header with `drop` and its payload with `drop` only if the
     * header was dropped. Returns 1 if x was dropped, 0 if not,
     * MC_ERR_INVALID_ARG if x is not a send posted on (peer, ch),
     * MC_ERR_NO_MEMORY (x stays posted). Not from inside a completion
     * callback. */
    int (*release_send)(mc_tl_t *tl, int peer, int ch, mc_xfer_t *x,
                        int drop, mc_status_t st);
    /* The same for a posted receive (the engine gave up a receive whose
     * payload was arriving from a peer it removed): x completes with `st`
     * now and the transport never writes x->buf again; the bytes x still
     * expected are read into a sink the transport owns (1 MiB at most,
     * reused) and discarded, so what follows on the stream is read as
     * posted after x. Returns 0,
     * MC_ERR_INVALID_ARG or MC_ERR_NO_MEMORY (x stays posted). */
    int (*release_recv)(mc_tl_t *tl, int peer, int ch, mc_xfer_t *x,
                        mc_status_t st);

    /* One-sided, registered memory (verbs, cuda). */
    mc_status_t (*mem_reg)(mc_tl_t *tl, void *addr, size_t len, mc_mr_t **mr_p);
    mc_status_t (*mem_dereg)(mc_tl_t *tl, mc_mr_t *mr);
    mc_status_t (*put)(mc_tl_t *tl, int peer, const void *src, mc_mr_t *lmr,
                       uint64_t raddr, uint64_t rkey, size_t len, mc_xfer_t *x);

    /* Close everything. Posted transfers are abandoned (not completed). */
    void (*destroy)(mc_tl_t *tl);
} mc_tl_ops_t;

/* Stubs for unsupported slots (transport.c). */
mc_status_t mc_tl_stub_mem_reg(mc_tl_t *tl, void *addr, size_t len,
                               mc_mr_t **mr_p);
mc_status_t mc_tl_stub_mem_dereg(mc_tl_t *tl, mc_mr_t *mr);
mc_status_t mc_tl_stub_signal(mc_tl_t *tl, int peer, int slot, uint64_t value);
mc_status_t mc_tl_stub_peek(mc_tl_t *tl, int peer, int slot, uint64_t *value_p);
mc_status_t mc_tl_stub_sent_held(mc_tl_t *tl, int peer, int ch);
mc_status_t mc_tl_stub_ack_now(mc_tl_t *tl, int peer, int ch);
int mc_tl_stub_release_send(mc_tl_t *tl, int peer, int ch, mc_xfer_t *x,
                            int drop, mc_status_t st);
int mc_tl_stub_release_recv(mc_tl_t *tl, int peer, int ch, mc_xfer_t *x,
                            mc_status_t st);
mc_status_t mc_tl_stub_add_peer(mc_tl_t *tl, int peer, uint64_t incarnation,
                                int64_t timeout_ms);
mc_status_t mc_tl_stub_put(mc_tl_t *tl, int peer, const void *src, mc_mr_t *lmr,
                           uint64_t raddr, uint64_t rkey, size_t len,
                           mc_xfer_t *x);

/* The copies a transport owns (the rests of released sends), so that
 * destroy frees them without walking its queues, whose other transfers
 * belong to the engine and may be freed already. Zero-initialised. */
typedef struct mc_tl_owned {
    struct mc_xfer_copy *head;
} mc_tl_owned_t;

/* Shared by the transports' release_send/release_recv: take x out of the
 * FIFO list (*head, *tail) as described there, putting in its place a
 * copy of its unsent bytes (send) or a sink for the bytes it still
 * expects (receive), registered in `own` (it unregisters and frees itself
 * when it completes), unless a send is dropped; then complete x with st
 * (status last, then its callback). Returns 1 dropped, 0 kept, or an
 * error. */
int mc_tl_q_release(mc_tl_owned_t *own, mc_xfer_t **head, mc_xfer_t **tail,
                    mc_xfer_t *x, int is_send, int drop, mc_status_t st);
/* Free the copies still registered in `own` (destroy: wherever they are
 * queued, nothing moves them any more). */
void mc_tl_owned_free(mc_tl_owned_t *own);

/* The transports compiled in (see transport.c for the table). */
extern const mc_tl_ops_t mc_tl_tcp_ops;
extern const mc_tl_ops_t mc_tl_shm_ops;

#ifdef __cplusplus
}
#endif
#endif /* MC_TRANSPORT_H */
