/*
 * Algorithm selection: mc_coll_run dispatches one collective to the
 * algorithm that suits its size and the rank count, unless the tuning
 * forces one (MOONCAKE_ALGO_ALLREDUCE, _BROADCAST, _REDUCE, _REDUCE_SCATTER).
 *
 * Every rank must choose the same algorithm. The choice depends only on
 * the descriptor (which the engine checks across ranks), the rank count,
 * the fault-tolerance mode and the tuning, which mc_comm_create compares
 * across ranks (shared_settings in comm.c).
 *
 * The checks here are the algorithms' own preconditions (sizes that fit in
 * size_t, a valid root and reduction); the engine validates the call
 * itself, so failing them means a bug or a corrupt descriptor.
 */
#include <stdio.h>
#include <string.h>

#include "algo.h"

/* *out_p = a * b, or 0 on overflow. */
static int mc_mul_ok(size_t a, size_t b, size_t *out_p)
{
    if (b && a > SIZE_MAX / b) return 0;
    *out_p = a * b;
    return 1;
}

/* Every block [displs[j], displs[j] + counts[j]) elements must be
 * addressable in bytes. */
static mc_status_t mc_check_v(const char *what, const size_t *counts,
                              const size_t *displs, int n, size_t es)
{
    size_t bytes;
    if (!counts || !displs)
        return mc_err(MC_ERR_INVALID_ARG, "%s: missing counts/displacements",
                      what);
    for (int j = 0; j < n; j++) {
        if (counts[j] > SIZE_MAX - displs[j] ||
            !mc_mul_ok(displs[j] + counts[j], es, &bytes))
            return mc_err(MC_ERR_INVALID_ARG,
                          "%s: block %d (displacement %zu, count %zu) "
                          "overflows",
                          what, j, displs[j], counts[j]);
    }
    return MC_OK;
}

/* count * factor elements must be addressable in bytes. */
static mc_status_t mc_check_count(const char *what, size_t count, size_t factor,
                                  size_t es)
{
    size_t elems, bytes;
    if (!mc_mul_ok(count, factor, &elems) || !mc_mul_ok(elems, es, &bytes))
        return mc_err(MC_ERR_INVALID_ARG, "%s: count %zu too large", what,
                      count);
    return MC_OK;
}

static mc_status_t mc_check_root(const char *what, int root, int n)
{
    if (root < 0 || root >= n)
        return mc_err(MC_ERR_INVALID_ARG, "%s: root %d out of range [0, %d)",
                      what, root, n);
    return MC_OK;
}

/* The algorithm a tuning field forces (MOONCAKE_ALGO_<COLL>, read into a
 * fixed-size field): the index of its name in names[n], -1 if none ("":
 * chosen by size), or -2 after an error naming the variable, its value and
 * the choices. */
static int mc_forced_pick(const char *field, size_t cap, const char *var,
                          const char *const *names, int n)
{
    if (strncmp(field, "", cap) == 0) return -1;
    for (int i = 0; i < n; i++)
        if (strncmp(field, names[i], cap) == 0) return i;
    char list[96];
    size_t off = 0;
    list[0] = '\0';
    for (int i = 0; i < n && off < sizeof(list); i++)
        off += (size_t)snprintf(list + off, sizeof(list) - off, "%s%s",
                                i == 0       ? ""
                                : i == n - 1 ? " or "
                                             : ", ",
                                names[i]);
    mc_err(MC_ERR_INVALID_ARG, "%s=%.*s: expected %s", var, (int)cap, field,
           list);
    return -2;
}

#define MC_PICK(t, field, var, names)                                          \
    mc_forced_pick((t)->field, sizeof((t)->field), var, names,                 \
                   (int)(sizeof(names) / sizeof((names)[0])))

/* Through staging memory (allreduce_stage.c)? Forced: any size up to
 * MOONCAKE_SHM_STAGE_MAX; chosen: from MOONCAKE_SHM_STAGE_MIN. Either way
 * only with every peer of the view on this host. */
static int mc_staged(mc_cctx_t *cx, size_t bytes, int forced)
{
    const mc_tune_t *t = mc_cx_tune(cx);
    return bytes <= t->stage_max && (forced || bytes >= t->stage_min) &&
           t->stage_max && mc_cx_stage_usable(cx);
}

static mc_status_t mc_run_allreduce(mc_cctx_t *cx, size_t bytes)
{
    static const char *const names[] = {"ring", "rd", "stage"};
    const mc_tune_t *t = mc_cx_tune(cx);
    switch (MC_PICK(t, algo_allreduce, "MOONCAKE_ALGO_ALLREDUCE", names)) {
    case 0:
        return mc_algo_allreduce_ring(cx);
    case 1:
        return mc_algo_allreduce_rd(cx);
    case 2:
        return mc_staged(cx, bytes, 1) ? mc_algo_allreduce_stage(cx)
                                       : mc_algo_allreduce_ring(cx);
    case -2:
        return MC_ERR_INVALID_ARG;
    }
    /* Shared slots on one host, 3 ranks or more, fault tolerance on: at
     * sizes that split the reduction (each rank reduces one block, then
     * copies the others': two rounds, comm.c) before the staged path,
     * which ends in the final barrier. */
    if (mc_cx_slot_split(cx) && mc_cx_slot_usable(cx))
        return mc_cx_slot_run(cx);
    /* Staging memory on one host (allreduce_stage.c): the input need not
     * be kept for a re-run, and fewer copies than the ring's (at 4 ranks
     * half the ring's time from 128 KiB up, the same at 2 ranks), with or
     * without fault tolerance. Latency-bound sizes stay with recursive
     * doubling (stage_min defaults to its upper bound). */
    if (bytes > t->allreduce_small_max && mc_staged(cx, bytes, 0))
        return mc_algo_allreduce_stage(cx);
    /* Shared slots on one host, 3 ranks or more: one round, and with fault
     * tolerance no final barrier (comm.c, "Shared slots"). Not before the
     * staged path: every rank reduces the whole vector here (3-4 ranks,
     * 96-256 KiB, FT on / FT off busbw: 0.61-1.64 through the slots,
     * mostly under 0.9; 0.84-1.20 staged; docs/performance.md). */
    if (mc_cx_slot_usable(cx)) return mc_cx_slot_run(cx);
    /* Recursive doubling: log2(n) latency, but every rank moves the whole
     * vector each round. Ring: 2(n-1) latencies, but only 2(n-1)/n of the
     * vector per rank, pipelined. */
    return bytes <= t->allreduce_small_max ? mc_algo_allreduce_rd(cx)
                                           : mc_algo_allreduce_ring(cx);
}

/* Ring, or with fault tolerance on one host the shared slots when the
 * largest block fits (one round, no final barrier; comm.c). */
static mc_status_t mc_run_allgather(mc_cctx_t *cx)
{
    if (mc_cx_slot_usable(cx)) return mc_cx_slot_run(cx);
    return mc_algo_allgatherv_ring(cx);
}

static mc_status_t mc_run_broadcast(mc_cctx_t *cx, size_t bytes)
{
    static const char *const names[] = {"chain", "tree"};
    const mc_tune_t *t = mc_cx_tune(cx);
    switch (MC_PICK(t, algo_broadcast, "MOONCAKE_ALGO_BROADCAST", names)) {
    case 0:
        return mc_algo_broadcast_chain(cx);
    case 1:
        return mc_algo_broadcast_tree(cx);
    case -2:
        return MC_ERR_INVALID_ARG;
    }
    /* Shared slots on one host, 3 ranks or more, with fault tolerance:
     * one round and no final barrier (comm.c, "Shared slots"). */
    if (mc_cx_slot_usable(cx)) return mc_cx_slot_run(cx);
    /* Tree: log2(n) latency, the root sends log2(n) copies. Chain: n-1
     * chunk latencies to fill, then full link bandwidth. */
    return bytes <= t->bcast_small_max ? mc_algo_broadcast_tree(cx)
                                       : mc_algo_broadcast_chain(cx);
}

static mc_status_t mc_run_reduce(mc_cctx_t *cx, size_t bytes)
{
    static const char *const names[] = {"tree", "chain", "stage"};
    const mc_tune_t *t = mc_cx_tune(cx);
    switch (MC_PICK(t, algo_reduce, "MOONCAKE_ALGO_REDUCE", names)) {
    case 0:
        return mc_algo_reduce_tree(cx);
    case 1:
        return mc_algo_reduce_chain(cx);
    case 2:
        return mc_staged(cx, bytes, 1) ? mc_algo_allreduce_stage(cx)
                                       : mc_algo_reduce_chain(cx);
    case -2:
        return MC_ERR_INVALID_ARG;
    }
    /* Shared slots on one host, 3 ranks or more, with fault tolerance:
     * one round and no final barrier, only the root reads and reduces
     * (comm.c); before the staged path, which ends in the barrier (3-4
     * ranks, 96-256 KiB, FT on / FT off busbw: 0.92-2.28 through the
     * slots, 0.78-1.04 staged; 384-512 KiB 0.95-2.78 against 0.87-0.96;
     * docs/performance.md). Up to 512 KiB (SLOT_REDUCE_MAX, comm.c). */
    if (mc_cx_slot_usable(cx))
        return mc_cx_slot_run(cx);
    /* One host: the staged allreduce, whose commit writes only the root's
     * buffer (allreduce_stage.c), on the same sizes as allreduce. The
     * caller's buffer is written only after the final barrier, so an
     * in-place reduce keeps nothing for a re-run; and the reduction is
     * spread over every rank where the chain leaves the root's share to
     * the root. At 2 ranks: 1 MiB 160 us vs 205-238 us through the chain
     * (docs/performance.md). Latency-bound sizes take the tree, the rest
     * the pipeline (the same threshold as allreduce's). */
    if (bytes > t->allreduce_small_max && mc_staged(cx, bytes, 0))
        return mc_algo_allreduce_stage(cx);
    return bytes <= t->allreduce_small_max ? mc_algo_reduce_tree(cx)
                                           : mc_algo_reduce_chain(cx);
}

/* Two ranks with fault tolerance whose blocks are one chunk each, up to
 * MC_RS_PAIR_RING_MAX in all: the ring's single exchange confirms the op
 * (mc_cx_pair_exchange, no final barrier), which beats the staged path's
 * frame rounds and barrier (2 ranks, FT on, 64 KiB: 6.3-7.2 against
 * 10-11 us; 256 KiB: 19-24 against 22-25 us; docs/performance.md,
 * 2026-12-05). The same on both ranks: the counts are the call's, the
 * rest the view's. */
#define MC_RS_PAIR_RING_MAX ((size_t)256 << 10)
static int rs_pair_ring(mc_cctx_t *cx, size_t bytes)
{
    const mc_coll_args_t *a = mc_cx_args(cx);
    size_t es = mc_dtype_size(a->dtype);
    size_t chunk = mc_algo_chunk_elems(cx, es);
    if (mc_cx_size(cx) != 2 || bytes > MC_RS_PAIR_RING_MAX ||
        !mc_cx_pair_usable(cx))
        return 0;
    for (int v = 0; v < 2; v++)
        if ((a->counts ? a->counts[v] : a->count) > chunk) return 0;
    return 1;
}

static mc_status_t mc_run_reduce_scatter(mc_cctx_t *cx, size_t bytes)
{
    static const char *const names[] = {"ring", "stage"};
    const mc_tune_t *t = mc_cx_tune(cx);
    switch (MC_PICK(t, algo_reduce_scatter, "MOONCAKE_ALGO_REDUCE_SCATTER",
                    names)) {
    case 0:
        return mc_algo_reduce_scatterv_ring(cx);
    case 1:
        return mc_staged(cx, bytes, 1) ? mc_algo_allreduce_stage(cx)
                                       : mc_algo_reduce_scatterv_ring(cx);
    case -2:
        return MC_ERR_INVALID_ARG;
    }
    /* One host, the whole input at least MOONCAKE_SHM_STAGE_MIN: the
     * staged allreduce's first two steps, then the commit copies our block
     * out (allreduce_stage.c). The caller's buffer is written only after
     * the final barrier, so an in-place call keeps nothing for a re-run,
     * and every block moves once where the ring copies it into the
     * transport's ring and out at every step (4 ranks: 1.2-4x faster).
     * At 2 ranks without fault tolerance the ring's single step is leaner
     * (in place, 64 KiB: 7.9 against 12-13 us), so it stays there; with
     * it too where the exchange confirms the op (rs_pair_ring). */
    /* Shared slots on one host, 3 ranks or more, with fault tolerance:
     * every rank's whole input in its slot, one round, no final barrier
     * (comm.c). */
    if (mc_cx_slot_usable(cx)) return mc_cx_slot_run(cx);
    if ((mc_cx_size(cx) > 2 || mc_cx_ft(cx)) && mc_staged(cx, bytes, 0) &&
        !rs_pair_ring(cx, bytes))
        return mc_algo_allreduce_stage(cx);
    return mc_algo_reduce_scatterv_ring(cx);
}

mc_status_t mc_coll_run(mc_cctx_t *cx)
{
    const mc_coll_args_t *a = mc_cx_args(cx);
    int n = mc_cx_size(cx);
    size_t es = mc_dtype_size(a->dtype);
    const char *what = mc_coll_name(a->coll);
    mc_status_t st;

    if (a->coll == MC_COLL_BARRIER) return mc_algo_barrier_dissemination(cx);
    if (!es)
        return mc_err(MC_ERR_INVALID_ARG, "%s: invalid dtype %d", what,
                      (int)a->dtype);

    switch (a->coll) {
    case MC_COLL_ALLREDUCE:
        if ((st = mc_redop_check(a->dtype, a->op)) < 0) return st;
        if ((st = mc_check_count(what, a->count, 1, es)) < 0) return st;
        return mc_run_allreduce(cx, a->count * es);

    case MC_COLL_ALLGATHER:
        if ((st = mc_check_count(what, a->count, (size_t)n, es)) < 0) return st;
        return mc_run_allgather(cx);
    case MC_COLL_ALLGATHERV:
        if ((st = mc_check_v(what, a->counts, a->displs, n, es)) < 0) return st;
        return mc_run_allgather(cx);

    case MC_COLL_REDUCE_SCATTER:
        if ((st = mc_redop_check(a->dtype, a->op)) < 0) return st;
        if ((st = mc_check_count(what, a->count, (size_t)n, es)) < 0) return st;
        return mc_run_reduce_scatter(cx, a->count * (size_t)n * es);
    case MC_COLL_REDUCE_SCATTERV: {
        if ((st = mc_redop_check(a->dtype, a->op)) < 0) return st;
        if ((st = mc_check_v(what, a->counts, a->displs, n, es)) < 0) return st;
        size_t total = 0;
        for (int v = 0; v < n; v++)
            total += a->counts[v];
        return mc_run_reduce_scatter(cx, total * es);
    }

    case MC_COLL_BROADCAST:
        if ((st = mc_check_root(what, a->root, n)) < 0) return st;
        if ((st = mc_check_count(what, a->count, 1, es)) < 0) return st;
        return mc_run_broadcast(cx, a->count * es);

    case MC_COLL_REDUCE:
        if ((st = mc_redop_check(a->dtype, a->op)) < 0) return st;
        if ((st = mc_check_root(what, a->root, n)) < 0) return st;
        if ((st = mc_check_count(what, a->count, 1, es)) < 0) return st;
        return mc_run_reduce(cx, a->count * es);

    case MC_COLL_GATHER:
    case MC_COLL_SCATTER:
        if ((st = mc_check_root(what, a->root, n)) < 0) return st;
        if ((st = mc_check_count(what, a->count, (size_t)n, es)) < 0) return st;
        /* shared slots (comm.c): one round, no final barrier */
        if (mc_cx_slot_usable(cx)) return mc_cx_slot_run(cx);
        return a->coll == MC_COLL_GATHER ? mc_algo_gather_direct(cx)
                                         : mc_algo_scatter_direct(cx);

    case MC_COLL_ALLTOALL:
        if ((st = mc_check_count(what, a->count, (size_t)n, es)) < 0) return st;
        /* shared slots (comm.c): every rank's whole input in its slot
         * (not alltoallv: a reader could not tell where a writer's block
         * for it lies) */
        if (mc_cx_slot_usable(cx)) return mc_cx_slot_run(cx);
        return mc_algo_alltoallv_pairwise(cx);
    case MC_COLL_ALLTOALLV: {
        int r = mc_cx_rank(cx);
        if ((st = mc_check_v(what, a->counts, a->displs, n, es)) < 0 ||
            (st = mc_check_v(what, a->scounts, a->sdispls, n, es)) < 0)
            return st;
        if (a->scounts[r] != a->counts[r])
            return mc_err(MC_ERR_MISMATCH,
                          "%s: rank %d sends itself %zu elements but "
                          "expects %zu",
                          what, r, a->scounts[r], a->counts[r]);
        return mc_algo_alltoallv_pairwise(cx);
    }

    default:
        return mc_err(MC_ERR_INVALID_ARG, "collective: unknown operation %d",
                      (int)a->coll);
    }
}
