/*
 * Internal: what a collective algorithm sees. An algorithm is sequential
 * code that runs on one rank for one operation: it posts frame sends and
 * receives to peers over the collective channel and waits on them. The
 * engine (comm.c) frames every message with a header carrying the
 * operation's descriptor, checks it on receipt, and turns any disagreement
 * into MC_ERR_MISMATCH on every rank.
 *
 * Rules for algorithms
 * - Between any two ranks, frames must be received in the order they were
 *   sent: both sides post them in the same order (the stream is in order).
 *   `step` is a number the algorithm chooses per frame; the receiver checks
 *   it equals its own, so both sides must use the same numbering.
 * - Never send to yourself; copy locally instead.
 * - Zero-byte frames are fine and still carry the header (use them to keep
 *   the dependency chain that mismatch detection relies on: every rank's
 *   completion must depend, directly or through others, on a frame from
 *   every rank).
 * - On any failure status from mc_cx_*, return it at once; the engine
 *   drains or abandons what is still posted. Buffers passed to mc_cx_isend/
 *   mc_cx_irecv must stay valid until the algorithm returns.
 * - Frame handles are valid until the algorithm returns.
 * - Scratch buffers come from mc_cx_scratch (owned by the communicator).
 */
#ifndef MC_COLL_H
#define MC_COLL_H

#include <stddef.h>
#include <stdint.h>

#include "mooncake/mooncake.h"
#include "stage.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mc_coll {
    MC_COLL_NONE = 0,
    MC_COLL_ALLREDUCE,
    MC_COLL_ALLGATHER,
    MC_COLL_ALLGATHERV,
    MC_COLL_REDUCE_SCATTER,
    MC_COLL_REDUCE_SCATTERV,
    MC_COLL_BROADCAST,
    MC_COLL_REDUCE,
    MC_COLL_GATHER,
    MC_COLL_SCATTER,
    MC_COLL_ALLTOALL,
    MC_COLL_ALLTOALLV,
    MC_COLL_BARRIER,
    MC_COLL_COUNT
} mc_coll_t;

const char *mc_coll_name(mc_coll_t c);

/* The arguments of one collective call, as validated by the engine.
 * Counts are in elements of `dtype`. */
typedef struct mc_coll_args {
    mc_coll_t coll;
    mc_dtype_t dtype;
    mc_redop_t op;       /* reductions only, else MC_SUM */
    int root;            /* rooted ops only, else -1 */
    size_t count;        /* the call's count argument (see mooncake.h) */
    const void *sendbuf; /* never NULL when the op reads it, may == recvbuf */
    void *recvbuf;
    int in_place; /* 1 if the call used its in-place form */
    /* v-variants (copied, `size` entries each, else NULL):
     * allgatherv:      counts = recvcounts, displs
     * reduce_scatterv: counts = recvcounts, displs = prefix sums
     * alltoallv:       counts/displs = recv side, scounts/sdispls = send
     * gather/scatter:  displs may be set (algo/view.c, views with holes):
     *                  each rank's block offset in the root's buffer */
    size_t *counts, *displs;
    size_t *scounts, *sdispls;
} mc_coll_args_t;

/* Tuning knobs (environment, read once at communicator creation). */
typedef struct mc_tune {
    size_t chunk_bytes;         /* pipeline frame size; MOONCAKE_CHUNK_BYTES */
    size_t allreduce_small_max; /* bytes; <= uses recursive doubling;
                                   MOONCAKE_ALLREDUCE_SMALL_MAX */
    size_t bcast_small_max;     /* bytes; <= uses binomial tree */
    /* forced algorithm names ("" = choose): MOONCAKE_ALGO_<COLL> */
    char algo_allreduce[16];      /* "ring" | "rd" */
    char algo_broadcast[16];      /* "chain" | "tree" */
    char algo_reduce[16];         /* "tree" | "chain" | "stage" */
    char algo_reduce_scatter[16]; /* "ring" | "stage" */
    /* allreduce through staging memory (every rank on one host) for
     * sizes in [stage_min, stage_max] bytes;
     * MOONCAKE_SHM_STAGE_MIN / _MAX, stage_max 0 turns it off */
    size_t stage_min, stage_max;
} mc_tune_t;

typedef struct mc_cctx mc_cctx_t; /* one operation on one rank */

/* Read-only facts for the algorithm. */
int mc_cx_rank(const mc_cctx_t *cx);
int mc_cx_size(const mc_cctx_t *cx);
const mc_coll_args_t *mc_cx_args(const mc_cctx_t *cx);
const mc_tune_t *mc_cx_tune(const mc_cctx_t *cx);

typedef int mc_fh_t; /* frame handle, valid during one operation */

/* Post a frame of `bytes` bytes to / from `peer` (!= own rank). */
mc_status_t mc_cx_isend(mc_cctx_t *cx, int peer, uint32_t step, const void *buf,
                        size_t bytes, mc_fh_t *h_p);
mc_status_t mc_cx_irecv(mc_cctx_t *cx, int peer, uint32_t step, void *buf,
                        size_t bytes, mc_fh_t *h_p);
/* Wait for one frame (drives progress; bounded by the op deadline). */
mc_status_t mc_cx_wait(mc_cctx_t *cx, mc_fh_t h);
/* Wait for every frame posted so far in this operation. */
mc_status_t mc_cx_waitall(mc_cctx_t *cx);
/* isend + irecv + wait both. */
mc_status_t mc_cx_sendrecv(mc_cctx_t *cx, uint32_t step, int speer,
                           const void *sbuf, size_t sbytes, int rpeer,
                           void *rbuf, size_t rbytes);

/* Scratch buffer `slot` (0..3) of at least `bytes` bytes, 64-byte aligned,
 * owned by the communicator; contents undefined. NULL on allocation failure
 * (return MC_ERR_NO_MEMORY then). */
void *mc_cx_scratch(mc_cctx_t *cx, int slot, size_t bytes);

/* In-place input kept for a re-run (fault tolerance, auto mode). For an
 * in-place allreduce over a view without holes the engine does not copy
 * the input aside up front; instead an algorithm calls mc_cx_save on each
 * byte range of the input just before it first overwrites it (the copy is
 * then cache-hot for the reduction that reads the same bytes), and each
 * range only once. An algorithm that does not do this calls
 * mc_cx_save_all before it writes anything. Both are no-ops when the
 * engine keeps nothing for this attempt. */
void mc_cx_save(mc_cctx_t *cx, const void *p, size_t bytes);
void mc_cx_save_all(mc_cctx_t *cx);
/* 1 if the engine would keep this attempt's in-place input (mc_cx_save
 * would copy): an algorithm that leaves the caller's buffer untouched
 * until the commit (mc_cx_on_commit below) needs no copy then. */
int mc_cx_keeping(const mc_cctx_t *cx);
/* 1 if fault tolerance is on for this communicator (MOONCAKE_FT, the same
 * on every rank): an algorithm choice may depend on it. */
int mc_cx_ft(const mc_cctx_t *cx);

/* Called by an algorithm, on every rank alike, for an attempt over two
 * ranks in which each rank sends exactly one frame to the other, receives
 * exactly one from it, and waits for its send before it returns
 * (mc_cx_sendrecv, mc_cx_waitall). Then the exchange itself confirms the
 * op and the engine skips the final barrier: it returns only once its
 * frame is held on the peer's side (transport sent_held: in the peer's
 * ring over shm, acknowledged by the peer's kernel over tcp), so a rank
 * that returned the op has handed the other everything it needs
 * (docs/design.md, "Pair confirmation"). One frame, because a survivor
 * takes a whole frame from a dead peer as "it may have returned the op"
 * (then the op does not re-run without it); so it must come before the
 * attempt's first frame. An algorithm in which one rank receives nothing
 * must not call it (mc_algo_pair_start gives it a frame to receive).
 * mc_cx_pair_usable: 1 if the engine would skip the barrier for such an
 * exchange in this attempt (fault tolerance on, two ranks, embedded
 * membership, MOONCAKE_FT_PAIR); the same on every rank of the view, so an
 * algorithm choice may depend on it. */
void mc_cx_pair_exchange(mc_cctx_t *cx);
int mc_cx_pair_usable(const mc_cctx_t *cx);

/* The shared slots (comm.c, "Shared slots"): allreduce, allgather(v),
 * broadcast, reduce, gather, scatter, reduce_scatter(v) and alltoall with
 * fault tolerance, every rank of the view on this host, 3 or more ranks,
 * each rank's part (what it puts in its slot: its input, its block, the
 * root's data, a whole input of scatter, reduce_scatter or alltoall) up to
 * MOONCAKE_SLOT_MAX bytes. One round, no final barrier. usable: for the
 * attempt's current arguments; the same on every rank of the view. */
int mc_cx_slot_usable(mc_cctx_t *cx);
/* 1 if mc_cx_slot_run would run this call's allreduce in two rounds (each
 * rank reduces one block: MOONCAKE_SLOT_SPLIT_MIN); the same on every
 * rank. */
int mc_cx_slot_split(const mc_cctx_t *cx);
mc_status_t mc_cx_slot_run(mc_cctx_t *cx);
/* Fault point `point` (tests) once the attempt's sends posted so far are
 * done: a tcp post only queues, progress writes. Waits only when the armed
 * MOONCAKE_FAULT_INJECT spec names the point, so that other tests keep
 * their timing. */
mc_status_t mc_cx_fault_sent(mc_cctx_t *cx, const char *point);

/* Staging memory shared by the ranks of one host (stage.h), for an
 * algorithm that leaves the caller's buffer untouched until the operation
 * is decided, so the engine need keep nothing for a re-run.
 * mc_cx_stage_usable: 1 if every peer of the view is on this host
 * (shared-memory transport). It depends neither on whether this rank's own
 * call is in place nor on the fault-tolerance mode, so it is the same on
 * every rank of the view. */
int mc_cx_stage_usable(mc_cctx_t *cx);
/* This rank's region (at least `bytes`), described in *info for the peers;
 * NULL if it cannot be had (info->rid is 0 then; the reason is logged). */
void *mc_cx_stage_own(mc_cctx_t *cx, size_t bytes, mc_stage_info_t *info);
/* The region `info` of virtual rank v, mapped; NULL on failure (logged). */
void *mc_cx_stage_peer(mc_cctx_t *cx, int v, const mc_stage_info_t *info);
/* The mapping of virtual rank v's region held from an earlier call (it may
 * be one the owner has replaced since): NULL if none; *rid and *size
 * describe it. */
void *mc_cx_stage_cached(mc_cctx_t *cx, int v, uint64_t *rid, uint64_t *size);
/* 1 if a staged call needing `bytes` of region is the first of this view
 * or larger than every earlier one: then every rank's region may be new,
 * on every rank alike (they all ran the same calls), and the call should
 * describe the regions before it puts. Records the call. */
int mc_cx_stage_learn(mc_cctx_t *cx, size_t bytes);
/* Run `fn` once the operation is decided complete on this rank: after the
 * final barrier, or when the survivors agree that the group completed it in
 * the old view. It copies the result into the caller's buffer and must not
 * fail (the regions it reads stay mapped even if their owners died). An
 * attempt that is re-run never runs it. */
typedef void (*mc_commit_fn_t)(mc_cctx_t *cx);
void mc_cx_on_commit(mc_cctx_t *cx, mc_commit_fn_t fn);

/* Views with holes. The algorithms see a dense group: mc_cx_rank/size are
 * the virtual rank and count over the active slots of the operation's
 * view, and peers passed to mc_cx_isend/irecv are virtual ranks. The
 * caller's arguments (mc_coll_args_t, buffers laid out by slot, root as a
 * slot) are mapped onto that dense group by mc_coll_run_view. */
int mc_cx_nslots(const mc_cctx_t *cx);          /* communicator size */
int mc_cx_slot(const mc_cctx_t *cx, int vrank); /* -1 if out of range */
int mc_cx_vrank(const mc_cctx_t *cx, int slot); /* -1 if inactive */
/* Replace the arguments mc_cx_args returns (NULL: the call's own). The
 * pointed-to struct must stay valid until the algorithm returns. */
void mc_cx_set_args(mc_cctx_t *cx, const mc_coll_args_t *a);

/* Run the collective described by mc_cx_args(cx): picks the algorithm
 * (algo/select.c). Arguments are in virtual-rank terms. */
mc_status_t mc_coll_run(mc_cctx_t *cx);

/* Run the call's collective over the operation's view (algo/view.c): when
 * every slot is active this is mc_coll_run; otherwise it maps the call's
 * slot-based arguments to virtual ranks, runs mc_coll_run and fills the
 * slots of inactive ranks as the fault model says (zeros in gathered
 * outputs, MC_ERR_ROOT_FAILED for an inactive root). */
mc_status_t mc_coll_run_view(mc_cctx_t *cx);

/* Algorithms (files under algo/). */
mc_status_t mc_algo_barrier_dissemination(mc_cctx_t *cx);
mc_status_t mc_algo_barrier_flags(mc_cctx_t *cx, uint64_t *flags);
mc_status_t mc_algo_allreduce_rd(mc_cctx_t *cx);
mc_status_t mc_algo_allreduce_ring(mc_cctx_t *cx);
mc_status_t mc_algo_allreduce_stage(mc_cctx_t *cx);

#ifdef __cplusplus
}
#endif
#endif /* MC_COLL_H */
