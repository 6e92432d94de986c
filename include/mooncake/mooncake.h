/*
 * mooncake — a fault-tolerant collective-communication engine.
 *
 * Public C API. Every symbol is prefixed `mc_`; handles are opaque pointers
 * (`_h`); output parameters come last, end in `_p`, and are written only on
 * success.
 *
 * Threading: a communicator may be used from several threads, but the
 * collectives of one communicator must be *issued* in the same order on every
 * rank (as in NCCL and MPI). Requests may be waited on from any thread.
 *
 * Errors: every call returns an mc_status_t. On failure a human-readable
 * description of the first failure is kept per communicator
 * (mc_comm_last_error) and per thread (mc_last_error).
 */
#ifndef MOONCAKE_MOONCAKE_H
#define MOONCAKE_MOONCAKE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MC_VERSION_MAJOR 0
#define MC_VERSION_MINOR 1

/* ------------------------------------------------------------------------ */
/* Status codes                                                             */
/* ------------------------------------------------------------------------ */

/**
 * Status of every call. MC_OK is success, MC_INPROGRESS a pending request,
 * negative values failures. Peer and membership failures live in their own
 * range (<= -100) so callers can tell "my arguments are wrong" from "the
 * group changed".
 */
typedef enum mc_status {
    MC_OK = 0,
    MC_INPROGRESS = 1,

    MC_ERR_INVALID_ARG = -1, /**< a parameter is invalid; message names it */
    MC_ERR_NO_MEMORY = -2,   /**< allocation failed */
    MC_ERR_UNSUPPORTED = -3, /**< the operation is not supported here */
    MC_ERR_TIMEOUT = -4,     /**< the operation or wait timed out */
    MC_ERR_IO = -5,          /**< a system call failed (see message) */
    MC_ERR_INTERNAL = -6,    /**< a bug in mooncake */
    MC_ERR_NOT_FOUND = -7,   /**< a store key does not exist */
    MC_ERR_PROTOCOL = -8,    /**< malformed or out-of-bounds data received */
    MC_ERR_STORE = -9,       /**< the bootstrap store failed */

    MC_ERR_MISMATCH = -100,    /**< ranks called different operations */
    MC_ERR_PEER_FAILED = -101, /**< a peer process failed */
    MC_ERR_EVICTED = -102,     /**< this rank was removed from the group */
    MC_ERR_NO_QUORUM = -103,   /**< this rank is on a minority side */
    MC_ERR_ROOT_FAILED = -104, /**< the root of a rooted op is not active */
} mc_status_t;

/** Static text for a status code. Never NULL. */
const char *mc_status_str(mc_status_t status);

/**
 * Text of the last failure reported by a mooncake call on the calling
 * thread (empty string if none). Valid until the next failing call on this
 * thread.
 */
const char *mc_last_error(void);

/* ------------------------------------------------------------------------ */
/* Data types and reduction operators                                       */
/* ------------------------------------------------------------------------ */

typedef enum mc_dtype {
    MC_INT8 = 0,
    MC_UINT8,
    MC_INT16,
    MC_UINT16,
    MC_INT32,
    MC_UINT32,
    MC_INT64,
    MC_UINT64,
    MC_BOOL,     /**< one byte, 0 or non-zero */
    MC_FLOAT16,  /**< IEEE 754 binary16 */
    MC_BFLOAT16, /**< bfloat16 (upper half of binary32) */
    MC_FLOAT32,
    MC_FLOAT64,
    MC_FLOAT8_E4M3, /**< OCP fp8 E4M3 "fn": no infinities, NaN = S.1111.111 */
    MC_FLOAT8_E5M2, /**< OCP fp8 E5M2 (IEEE-like, has inf and NaN) */
    MC_DTYPE_COUNT
} mc_dtype_t;

/**
 * Reduction operators.
 *
 * Floating types: every reduction step computes in binary32 (binary64 for
 * MC_FLOAT64) and rounds the result to the element type with
 * round-to-nearest-even. fp16/bf16/fp8 results therefore carry one rounding
 * per step, as in NCCL. Out-of-range values become +-inf for fp16, bf16 and
 * e5m2, and NaN for e4m3 (which has no infinity), matching PyTorch's casts.
 * MIN and MAX propagate NaN. A SUM or PROD whose binary32/64 result is
 * NaN gives one NaN whatever the inputs' NaNs were (positive, quiet:
 * 0x7fc00000 for binary32, 0x7e00 fp16, 0x7fc0 bf16, 0x7f fp8; an e4m3
 * overflow keeps its sign, 0xff below -448), so every rank holds the same
 * bits in whichever order it combined the inputs.
 *
 * MC_AVG divides the sum by the number of contributing ranks (the view's
 * active count) once, at the end; for integer types the division truncates
 * toward zero. fp16 and fp8 are the exception, as in NCCL: each rank
 * divides its own input by that count first (one rounding) and the ranks
 * then sum, so an average whose sum would leave the type's range (4 ranks
 * of fp16 20000.0: 80000) stays finite. The bits then depend on the order
 * of the sum, which the algorithm picks; every rank still gets the same
 * bits. Inputs at the type's very top may still round past it.
 * MC_BAND/BOR/BXOR are for integer types and bool only.
 * For MC_BOOL, SUM and MAX mean logical or, PROD and MIN logical and.
 */
typedef enum mc_redop {
    MC_SUM = 0,
    MC_PROD,
    MC_MIN,
    MC_MAX,
    MC_AVG,
    MC_BAND,
    MC_BOR,
    MC_BXOR,
    MC_REDOP_COUNT
} mc_redop_t;

/** Size in bytes of one element, or 0 for an invalid dtype. */
size_t mc_dtype_size(mc_dtype_t dtype);
/** Lower-case name ("float32", "bfloat16", ...), or "invalid". */
const char *mc_dtype_name(mc_dtype_t dtype);
/** Lower-case name ("sum", "avg", ...), or "invalid". */
const char *mc_redop_name(mc_redop_t op);

/* ------------------------------------------------------------------------ */
/* Bootstrap store                                                          */
/* ------------------------------------------------------------------------ */

/**
 * A key/value store over byte strings that all ranks can reach, used only to
 * exchange addresses while a communicator is created (and, later, for
 * membership). The torch shim plugs in torch's c10d::Store; C users can use
 * the file-system store below.
 *
 * All slots are required. They may be called from any thread; an
 * implementation must be thread-safe. `timeout_ms < 0` waits forever. A
 * slot that fails may describe why with mc_store_error() before it returns;
 * otherwise the caller's error text names the call and the status only.
 */
typedef struct mc_store_ops {
    size_t size; /**< sizeof(mc_store_ops_t), for versioning */
    /** Set key to value (overwrites). */
    mc_status_t (*set)(void *ctx, const char *key, const void *val, size_t len);
    /**
     * Wait until key exists (at most timeout_ms), then copy at most cap bytes
     * of its value to buf and store the full length in *len_p. Returns
     * MC_ERR_TIMEOUT if the key did not appear in time.
     */
    mc_status_t (*get)(void *ctx, const char *key, int64_t timeout_ms,
                       void *buf, size_t cap, size_t *len_p);
    /** Non-blocking existence test: *exists_p = 1 if key exists. */
    mc_status_t (*check)(void *ctx, const char *key, int *exists_p);
    /**
     * Atomically: if the key's value equals `expected` (or the key is absent
     * and expected_len == 0), set it to `desired`. Always copies the value
     * after the operation (at most cap bytes) to cur and its length to
     * *cur_len_p.
     */
    mc_status_t (*compare_set)(void *ctx, const char *key, const void *expected,
                               size_t expected_len, const void *desired,
                               size_t desired_len, void *cur, size_t cap,
                               size_t *cur_len_p);
    /**
     * Atomically add delta to the 64-bit integer stored under key (absent
     * means 0; stored as decimal text) and return the new value.
     */
    mc_status_t (*add)(void *ctx, const char *key, int64_t delta,
                       int64_t *value_p);
    /** Delete a key; absent keys are not an error. */
    mc_status_t (*del)(void *ctx, const char *key);
    /** Release ctx. Called by mc_store_destroy. May be a no-op. */
    void (*destroy)(void *ctx);
} mc_store_ops_t;

typedef struct mc_store *mc_store_h;

/** For store implementations: record `msg` as this thread's last error
 *  (mc_last_error) and return st. */
mc_status_t mc_store_error(mc_status_t st, const char *msg);

/** Wrap a user store. ops is copied; ctx is owned by the caller until
 *  mc_store_destroy calls ops->destroy(ctx). */
mc_status_t mc_store_create(const mc_store_ops_t *ops, void *ctx,
                            mc_store_h *store_p);

/**
 * File-system store: one file per key under `dir` (created if missing),
 * written with write-to-temporary + rename so readers never see partial
 * values; compare_set and add are serialised with flock on a lock file.
 * Works across processes on one host (or a shared file system).
 */
mc_status_t mc_store_file_create(const char *dir, mc_store_h *store_p);

/**
 * Store on etcd (v3, through its JSON gateway): every key lives at
 * <prefix><key> (prefix NULL: "/mooncake/"). `endpoints` is a
 * comma-separated list of client URLs ("http://10.0.0.1:2379,..."); a call
 * that gets no answer from one within timeout_ms (<= 0: 5000) moves on to
 * the next. Errors: MC_ERR_INVALID_ARG (no endpoint), MC_ERR_NO_MEMORY.
 */
mc_status_t mc_store_etcd_create(const char *endpoints, const char *prefix,
                                 int64_t timeout_ms, mc_store_h *store_p);

/** A store that prefixes every key with `prefix` and forwards to `base`
 *  (it holds a reference to base). */
mc_status_t mc_store_prefix_create(mc_store_h base, const char *prefix,
                                   mc_store_h *store_p);

/** Take another reference to a store; returns `store`. Stores are reference
 *  counted: a communicator with fault tolerance keeps one for its lifetime
 *  (joiners are admitted through the store), so the caller may drop its own
 *  with mc_store_destroy right after mc_comm_create. */
mc_store_h mc_store_ref(mc_store_h store);

/** Drop a reference; the last one calls ops->destroy(ctx) and frees. */
void mc_store_destroy(mc_store_h store);

mc_status_t mc_store_set(mc_store_h s, const char *key, const void *val,
                         size_t len);
mc_status_t mc_store_get(mc_store_h s, const char *key, int64_t timeout_ms,
                         void *buf, size_t cap, size_t *len_p);
mc_status_t mc_store_check(mc_store_h s, const char *key, int *exists_p);
mc_status_t mc_store_compare_set(mc_store_h s, const char *key,
                                 const void *expected, size_t expected_len,
                                 const void *desired, size_t desired_len,
                                 void *cur, size_t cap, size_t *cur_len_p);
mc_status_t mc_store_add(mc_store_h s, const char *key, int64_t delta,
                         int64_t *value_p);
mc_status_t mc_store_del(mc_store_h s, const char *key);

/* ------------------------------------------------------------------------ */
/* Communicator                                                             */
/* ------------------------------------------------------------------------ */

typedef struct mc_comm *mc_comm_h;
typedef struct mc_request *mc_request_h;

typedef enum mc_transport_kind {
    MC_TRANSPORT_AUTO = 0, /**< shm to same-host peers, TCP otherwise */
    MC_TRANSPORT_TCP,      /**< TCP to every peer */
    MC_TRANSPORT_SHM,      /**< shared memory; every peer must be local */
} mc_transport_kind_t;

/** Communicator options. Initialise with mc_comm_config_init, then set. */
typedef struct mc_comm_config {
    size_t size;                   /**< sizeof(mc_comm_config_t) */
    const char *name;              /**< store key prefix; default "mc" */
    int64_t timeout_ms;            /**< per-operation timeout; default 300000 */
    int64_t init_timeout_ms;       /**< create timeout; default 300000 */
    mc_transport_kind_t transport; /**< default from MOONCAKE_TRANSPORT */
    /** Fault tolerance (see docs/fault-model): 1 = survivors agree on a new
     *  view when ranks fail; 0 = a failure fails the operation and the
     *  communicator cannot change. Default MOONCAKE_FT (1). */
    int ft;
    /** With ft: 1 = re-run the interrupted operation over the new view and
     *  return success (auto mode); 0 = fail it with MC_ERR_PEER_FAILED on
     *  every survivor until mc_comm_recover (manual mode). Default
     *  MOONCAKE_AUTO_RECOVER (1). */
    int auto_recover;
    /** Slots, for growth: 0 (= size) or >= size. The communicator has
     *  max_size slots (mc_comm_size); slots size..max_size-1 start as
     *  holes, to be taken by joiners. Every rank passes the same value. */
    int max_size;
    /** 1 = this process takes slot `rank` of a running communicator (a
     *  failed slot or a reserved one) instead of creating it: it posts a
     *  request in the store, the members admit it after one of their
     *  operations, and mc_comm_create returns once it is connected, in
     *  the admitting view (see docs/fault-model.md, guarantee 6). Needs
     *  ft. Default MOONCAKE_JOIN (0). */
    int join;
    /** Where members admit joiners: 0 = only in mc_comm_admit (the
     *  application names the point, e.g. a step boundary, where it can
     *  bring a newcomer up to date); 1 = after any collective (for a loop
     *  in which every collective is such a point). Every member passes
     *  the same value. Default MOONCAKE_ADMIT_AUTO (0). */
    int admit_auto;
    /** etcd client URLs, comma-separated (NULL: embedded membership only).
     *  With fault tolerance on, each rank holds a leased member key in etcd
     *  and watches the others': a lease that expires is a failure signal
     *  (suspicion), and a rank that loses its own lease is fenced (its
     *  calls fail with MC_ERR_EVICTED). Default MOONCAKE_ETCD_ENDPOINTS. */
    const char *etcd_endpoints;
    /** Lease TTL in seconds. Default MOONCAKE_ETCD_TTL_S (2). */
    int etcd_ttl_s;
} mc_comm_config_t;

/**
 * Fill cfg with defaults, reading the environment: MOONCAKE_TRANSPORT
 * (auto|tcp|shm), MOONCAKE_TIMEOUT_MS, MOONCAKE_INIT_TIMEOUT_MS,
 * MOONCAKE_FT, MOONCAKE_AUTO_RECOVER, MOONCAKE_JOIN, MOONCAKE_ADMIT_AUTO.
 */
void mc_comm_config_init(mc_comm_config_t *cfg);

/**
 * Create a communicator of `size` ranks; collective over all of them (every
 * rank calls it with the same size and a store reaching the same keys).
 * cfg may be NULL for defaults. The communicator takes a reference to the
 * store when fault tolerance is on (joiners are admitted through it), so
 * the caller may destroy its handle after the call. With cfg->join, only
 * the joining process calls it (see mc_comm_config_t.join); it blocks until
 * admitted or init_timeout_ms.
 * Errors: MC_ERR_INVALID_ARG (rank/size), MC_ERR_TIMEOUT (a peer did not show
 * up within init_timeout_ms), MC_ERR_IO.
 */
mc_status_t mc_comm_create(int rank, int size, mc_store_h store,
                           const mc_comm_config_t *cfg, mc_comm_h *comm_p);

/**
 * Destroy a communicator. Pending requests are completed with an error and
 * must still be freed by their owner. Not collective; safe at any time,
 * also while other threads wait on its requests (a running operation ends
 * at its next wait with MC_ERR_IO, queued ones and waited-for sends and
 * receives fail, and destroy returns once those threads are out) and from
 * a completion callback (the communicator is then freed when the callback
 * returns).
 */
void mc_comm_destroy(mc_comm_h comm);

int mc_comm_rank(mc_comm_h comm);
int mc_comm_size(mc_comm_h comm);

/** Description of the communicator's last failure ("" if none). The string
 *  is owned by the communicator and valid until the next failure. */
const char *mc_comm_last_error(mc_comm_h comm);

/** Name of the transport used to reach `peer` ("self", "shm", "tcp"). */
const char *mc_comm_peer_transport(mc_comm_h comm, int peer);

/* ------------------------------------------------------------------------ */
/* Views and fault tolerance                                                */
/* ------------------------------------------------------------------------ */

/**
 * The communicator's current view. *epoch_p starts at 1 and grows by one per
 * view change. If `active` is not NULL it receives mc_comm_size() bytes, 1
 * for each active rank slot. *nactive_p (may be NULL) gets the active count.
 */
mc_status_t mc_comm_view(mc_comm_h comm, uint64_t *epoch_p, uint8_t *active,
                         int *nactive_p);

/**
 * The view in which the communicator's most recently completed successful
 * collective ran (its result covers exactly that view's active ranks;
 * collectives complete in issue order). Same outputs as mc_comm_view.
 * MC_ERR_NOT_FOUND before any collective has succeeded.
 */
mc_status_t mc_comm_op_view(mc_comm_h comm, uint64_t *epoch_p,
                            uint8_t *active, int *nactive_p);

/**
 * Ranks removed by the most recent view change, ascending; returns how many
 * there are (at most `cap` are written; `out` may be NULL).
 */
int mc_comm_failed_ranks(mc_comm_h comm, int *out, int cap);

/**
 * Ranks added by the most recent view change (joiners), ascending; returns
 * how many there are. On a joiner, right after mc_comm_create: the ranks
 * admitted with it, itself included.
 */
int mc_comm_joined_ranks(mc_comm_h comm, int *out, int cap);

/**
 * Collective over the members: a barrier after which the joiners waiting
 * for free slots (cfg.join) are admitted; *nadmitted_p (may be NULL) is how
 * many were (0 if none waited or a failure took the round). The joiners'
 * first operation is the members' next one; mc_comm_joined_ranks names
 * them. With fault tolerance off it is a barrier that admits nobody.
 */
mc_status_t mc_comm_admit(mc_comm_h comm, int *nadmitted_p);

/** Number of view changes this rank has adopted. */
uint64_t mc_comm_view_changes(mc_comm_h comm);

/**
 * Manual mode: accept the view the survivors agreed on after a failure.
 * Until then every collective fails with MC_ERR_PEER_FAILED. Local; every
 * survivor calls it. No-op (MC_OK) when nothing is pending.
 */
mc_status_t mc_comm_recover(mc_comm_h comm);

/** Switch between auto (1) and manual (0) recovery for later failures. */
mc_status_t mc_comm_set_auto_recover(mc_comm_h comm, int on);

/**
 * Remove `ranks` from the view (like ncclCommShrink): collective over the
 * ranks that stay, which must all pass the same list; they adopt view
 * epoch + 1 without the listed ranks. A listed rank that calls it is
 * evicted: its later collectives fail with MC_ERR_EVICTED. Embedded
 * membership first agrees on the lists through the bootstrap store (each
 * rank's k-th call in a view meets the others' k-th, failed calls
 * included): if any calling rank sees another list among the ranks it
 * would keep (MC_ERR_MISMATCH, naming the lists), or a rank it would keep
 * does not call within the operation timeout (MC_ERR_TIMEOUT) or fails,
 * every calling rank fails alike and the view stays as it was; otherwise
 * they all adopt the same view. With etcd the first view committed wins
 * and the others fail.
 */
mc_status_t mc_comm_shrink(mc_comm_h comm, const int *ranks, int n);

/* ------------------------------------------------------------------------ */
/* Requests                                                                 */
/* ------------------------------------------------------------------------ */

/**
 * Wait for a request. timeout_ms < 0 waits forever (each operation still
 * ends at the communicator's operation timeout). Returns the operation's
 * status once it has finished, or MC_ERR_TIMEOUT if this wait ran out first
 * (the request stays pending and may be waited on again).
 */
mc_status_t mc_request_wait(mc_request_h req, int64_t timeout_ms);

/** Non-blocking: *done_p = 1 and the operation's status returned if
 *  finished; *done_p = 0 and MC_INPROGRESS otherwise. Drives progress. */
mc_status_t mc_request_test(mc_request_h req, int *done_p);

/** For a finished receive: the source rank. */
int mc_request_source(mc_request_h req);

/** Completion callback: `status` is the operation's final status. */
typedef void (*mc_request_cb_t)(mc_request_h req, mc_status_t status,
                                void *arg);

/**
 * Run cb(req, status, arg) once when the request finishes (at once if it
 * already has). Callbacks run in order of completion on a thread owned by
 * the communicator, never inside an engine lock, so they may issue new
 * operations; they must not block for long. The request stays valid until
 * the callback returns even if its owner frees it meanwhile. One callback
 * per request: a second registration returns MC_ERR_INVALID_ARG.
 * A send or receive with a callback needs no wait or test to finish: the
 * communicator's progress thread moves it while no caller's thread waits
 * on this communicator (looking every 0.1-10 ms while nothing moves, less
 * often the longer nothing did), and ends it at its deadline or when its
 * peer falls silent, counting the deadline from this call.
 */
mc_status_t mc_request_on_complete(mc_request_h req, mc_request_cb_t cb,
                                   void *arg);

/**
 * Move a send or receive in the background, as for one with a completion
 * callback (mc_request_on_complete: the communicator's progress thread
 * moves it while no caller's thread waits on this communicator, and ends
 * it at its deadline, counted from this call, or when its peer falls
 * silent), with no callback: its owner still waits for, tests or frees
 * it. For an owner that waits later but wants the transfer to overlap
 * what it does meanwhile (torch's isend/irecv) without a callback's
 * hand-off to the callback thread per request. Nothing to do for a
 * collective (the progress thread runs those anyway) or a finished request;
 * calling it again, or mc_request_on_complete after it, is harmless.
 */
mc_status_t mc_request_watch(mc_request_h req);

/**
 * Release a request. If it is still pending the operation continues and the
 * engine frees it when it finishes; the buffers must stay valid until then.
 */
void mc_request_free(mc_request_h req);

/* ------------------------------------------------------------------------ */
/* Collectives                                                              */
/* ------------------------------------------------------------------------ */
/*
 * Every collective has a non-blocking form `mc_comm_iX(..., mc_request_h*)`
 * and a blocking form `mc_comm_X(...)` (issue + wait + free). Collectives
 * of one communicator must be issued in the same order with matching
 * arguments on every rank; they complete in issue order. Ranks that disagree
 * on operation, count, dtype, reduction op or root all fail with
 * MC_ERR_MISMATCH. Counts of 0 are allowed.
 *
 * In-place forms follow NCCL: pass the same pointer (or the pointer to this
 * rank's slot inside the receive buffer, as noted per call). Send and
 * receive buffers that overlap in any other way, and (v-variants) output
 * blocks of two ranks that overlap, fail with MC_ERR_INVALID_ARG on the
 * rank that passed them.
 */

/** recv[i] = op over ranks of send[i], i < count. In-place: send == recv. */
mc_status_t mc_comm_iallreduce(mc_comm_h comm, const void *sendbuf,
                               void *recvbuf, size_t count, mc_dtype_t dtype,
                               mc_redop_t op, mc_request_h *req_p);
mc_status_t mc_comm_allreduce(mc_comm_h comm, const void *sendbuf,
                              void *recvbuf, size_t count, mc_dtype_t dtype,
                              mc_redop_t op);

/** recv (size*count elements) = concatenation of every rank's send (count).
 *  In-place: sendbuf == recvbuf + rank*count elements. */
mc_status_t mc_comm_iallgather(mc_comm_h comm, const void *sendbuf,
                               void *recvbuf, size_t count, mc_dtype_t dtype,
                               mc_request_h *req_p);
mc_status_t mc_comm_allgather(mc_comm_h comm, const void *sendbuf,
                              void *recvbuf, size_t count, mc_dtype_t dtype);

/** Uneven allgather: rank r contributes recvcounts[r] elements placed at
 *  recvbuf + displs[r] elements. sendcount must equal recvcounts[rank];
 *  recvcounts/displs must be the same on every rank. In-place: sendbuf ==
 *  recvbuf + displs[rank]. The blocks must not overlap each other. The
 *  arrays are copied; they need not outlive the call. */
mc_status_t mc_comm_iallgatherv(mc_comm_h comm, const void *sendbuf,
                                size_t sendcount, void *recvbuf,
                                const size_t *recvcounts, const size_t *displs,
                                mc_dtype_t dtype, mc_request_h *req_p);
mc_status_t mc_comm_allgatherv(mc_comm_h comm, const void *sendbuf,
                               size_t sendcount, void *recvbuf,
                               const size_t *recvcounts, const size_t *displs,
                               mc_dtype_t dtype);

/** send holds size*recvcount elements; rank r receives block r reduced over
 *  ranks. In-place: recvbuf == sendbuf + rank*recvcount elements. */
mc_status_t mc_comm_ireduce_scatter(mc_comm_h comm, const void *sendbuf,
                                    void *recvbuf, size_t recvcount,
                                    mc_dtype_t dtype, mc_redop_t op,
                                    mc_request_h *req_p);
mc_status_t mc_comm_reduce_scatter(mc_comm_h comm, const void *sendbuf,
                                   void *recvbuf, size_t recvcount,
                                   mc_dtype_t dtype, mc_redop_t op);

/** Uneven reduce-scatter: send holds sum(recvcounts) elements, block r
 *  (recvcounts[r] elements at offset sum(recvcounts[<r])) goes to rank r.
 *  recvcounts must be the same on every rank. */
mc_status_t mc_comm_ireduce_scatterv(mc_comm_h comm, const void *sendbuf,
                                     void *recvbuf, const size_t *recvcounts,
                                     mc_dtype_t dtype, mc_redop_t op,
                                     mc_request_h *req_p);
mc_status_t mc_comm_reduce_scatterv(mc_comm_h comm, const void *sendbuf,
                                    void *recvbuf, const size_t *recvcounts,
                                    mc_dtype_t dtype, mc_redop_t op);

/** recv = root's send on every rank. In-place: send == recv (on non-roots
 *  sendbuf is ignored). */
mc_status_t mc_comm_ibroadcast(mc_comm_h comm, const void *sendbuf,
                               void *recvbuf, size_t count, mc_dtype_t dtype,
                               int root, mc_request_h *req_p);
mc_status_t mc_comm_broadcast(mc_comm_h comm, const void *sendbuf,
                              void *recvbuf, size_t count, mc_dtype_t dtype,
                              int root);

/** At root, recv = op over ranks of send; recvbuf is ignored elsewhere. */
mc_status_t mc_comm_ireduce(mc_comm_h comm, const void *sendbuf, void *recvbuf,
                            size_t count, mc_dtype_t dtype, mc_redop_t op,
                            int root, mc_request_h *req_p);
mc_status_t mc_comm_reduce(mc_comm_h comm, const void *sendbuf, void *recvbuf,
                           size_t count, mc_dtype_t dtype, mc_redop_t op,
                           int root);

/** At root, recv (size*count) = concatenation of sends. In-place at root:
 *  sendbuf == recvbuf + root*count elements. */
mc_status_t mc_comm_igather(mc_comm_h comm, const void *sendbuf, void *recvbuf,
                            size_t count, mc_dtype_t dtype, int root,
                            mc_request_h *req_p);
mc_status_t mc_comm_gather(mc_comm_h comm, const void *sendbuf, void *recvbuf,
                           size_t count, mc_dtype_t dtype, int root);

/** Rank r receives block r (count elements) of root's send (size*count).
 *  In-place at root: recvbuf == sendbuf + root*count elements. */
mc_status_t mc_comm_iscatter(mc_comm_h comm, const void *sendbuf, void *recvbuf,
                             size_t count, mc_dtype_t dtype, int root,
                             mc_request_h *req_p);
mc_status_t mc_comm_scatter(mc_comm_h comm, const void *sendbuf, void *recvbuf,
                            size_t count, mc_dtype_t dtype, int root);

/** Block j of send (count elements) goes to rank j, arriving as block
 *  `rank` of its recv. Not in-place (send and recv must not overlap). */
mc_status_t mc_comm_ialltoall(mc_comm_h comm, const void *sendbuf,
                              void *recvbuf, size_t count, mc_dtype_t dtype,
                              mc_request_h *req_p);
mc_status_t mc_comm_alltoall(mc_comm_h comm, const void *sendbuf, void *recvbuf,
                             size_t count, mc_dtype_t dtype);

/** Uneven all-to-all (MPI_Alltoallv): sendcounts[j] elements at
 *  sendbuf + sdispls[j] go to rank j; recvcounts[j] elements from rank j land
 *  at recvbuf + rdispls[j]. sendcounts[j] on rank i must equal recvcounts[i]
 *  on rank j, else MC_ERR_MISMATCH. The receive blocks must not overlap
 *  each other (send blocks may). Arrays are copied. */
mc_status_t mc_comm_ialltoallv(mc_comm_h comm, const void *sendbuf,
                               const size_t *sendcounts, const size_t *sdispls,
                               void *recvbuf, const size_t *recvcounts,
                               const size_t *rdispls, mc_dtype_t dtype,
                               mc_request_h *req_p);
mc_status_t mc_comm_alltoallv(mc_comm_h comm, const void *sendbuf,
                              const size_t *sendcounts, const size_t *sdispls,
                              void *recvbuf, const size_t *recvcounts,
                              const size_t *rdispls, mc_dtype_t dtype);

mc_status_t mc_comm_ibarrier(mc_comm_h comm, mc_request_h *req_p);
mc_status_t mc_comm_barrier(mc_comm_h comm);

/* ------------------------------------------------------------------------ */
/* Point-to-point                                                           */
/* ------------------------------------------------------------------------ */
/*
 * Tagged send/receive, independent of the collective order. Messages from
 * one sender with the same tag arrive in send order; a receive matches the
 * oldest message with its (source, tag). A send completes once its buffer
 * may be reused. The receive's count must equal the send's, else the
 * receive fails with MC_ERR_MISMATCH.
 *
 * Every send and receive ends (checked while it is waited for or tested:
 * mc_comm_send/recv, mc_request_wait, mc_request_test; and, for a request
 * with a completion callback or mc_request_watch, by the communicator's
 * own thread, which also moves its data while no call does: see
 * mc_request_on_complete):
 *  - not finished by the communicator's operation timeout, counted from
 *    the first wait or test of it, or from mc_request_on_complete or
 *    mc_request_watch
 *    (progress happens inside calls: a request posted long before it is
 *    waited for gets the whole timeout then): MC_ERR_TIMEOUT (a receive
 *    nothing matched; a message that comes later waits for the next
 *    matching receive);
 *  - its peer silent past the liveness timeout (fault tolerance on: the
 *    heartbeat): MC_ERR_PEER_FAILED, the peer still in the view (the next
 *    collective deals with it); an MC_ANY_SOURCE receive nothing matched
 *    has only the timeout;
 *  - its peer dead, or removed from the view: MC_ERR_PEER_FAILED.
 * When such a call fails its buffer is the caller's again: a message partly
 * sent goes on from the engine's copy (the peer may still receive it
 * whole), one not started is not sent, and the rest of a message that was
 * arriving is read and discarded, never into the buffer. So a failed send
 * does not say whether the peer got the message. (Without memory for that
 * copy, or for the sink, the call waits as before, with a warning.)
 */
#define MC_ANY_SOURCE (-1)

mc_status_t mc_comm_isend(mc_comm_h comm, const void *buf, size_t count,
                          mc_dtype_t dtype, int peer, uint32_t tag,
                          mc_request_h *req_p);
mc_status_t mc_comm_send(mc_comm_h comm, const void *buf, size_t count,
                         mc_dtype_t dtype, int peer, uint32_t tag);
/** peer may be MC_ANY_SOURCE; mc_request_source tells the sender. */
mc_status_t mc_comm_irecv(mc_comm_h comm, void *buf, size_t count,
                          mc_dtype_t dtype, int peer, uint32_t tag,
                          mc_request_h *req_p);
mc_status_t mc_comm_recv(mc_comm_h comm, void *buf, size_t count,
                         mc_dtype_t dtype, int peer, uint32_t tag);

#ifdef __cplusplus
}
#endif
#endif /* MOONCAKE_MOONCAKE_H */
