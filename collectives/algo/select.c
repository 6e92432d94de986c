/*
 * Algorithm selection: mc_coll_run dispatches one collective to the
 * algorithm that suits its size and the rank count, unless the tuning
 * forces one (MOONCAKE_ALGO_ALLREDUCE, MOONCAKE_ALGO_BROADCAST).
 *
 * Every rank must choose the same algorithm. The choice depends only on
 * the descriptor (which the engine checks across ranks), the rank count
 * and the tuning; if ranks were started with different tuning, the
 * algorithms' different frame step numbers turn it into MC_ERR_MISMATCH
 * instead of silent corruption.
 *
 * The checks here are the algorithms' own preconditions (sizes that fit in
 * size_t, a valid root and reduction); the engine validates the call
 * itself, so failing them means a bug or a corrupt descriptor.
 */
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

/* Forced-name comparison on the fixed-size tuning fields. */
static int mc_forced(const char *field, size_t cap, const char *name)
{
    return strncmp(field, name, cap) == 0;
}

static mc_status_t mc_run_allreduce(mc_cctx_t *cx, size_t bytes)
{
    const mc_tune_t *t = mc_cx_tune(cx);
    const char *f = t->algo_allreduce;
    size_t cap = sizeof(t->algo_allreduce);

    if (mc_forced(f, cap, "ring")) return mc_algo_allreduce_ring(cx);
    if (mc_forced(f, cap, "rd")) return mc_algo_allreduce_rd(cx);
    if (mc_forced(f, cap, "stage")) /* any size up to stage_max */
        return bytes <= t->stage_max && mc_cx_stage_usable(cx)
                   ? mc_algo_allreduce_stage(cx)
                   : mc_algo_allreduce_ring(cx);
    if (!mc_forced(f, cap, ""))
        return mc_err(MC_ERR_INVALID_ARG,
                      "MOONCAKE_ALGO_ALLREDUCE=%.*s: expected ring, rd or "
                      "stage",
                      (int)cap, f);
    /* Staging memory on one host (allreduce_stage.c): the input need not
     * be kept for a re-run, and fewer copies than the ring's (at 4 ranks
     * half the ring's time from 128 KiB up, the same at 2 ranks), with or
     * without fault tolerance. Latency-bound sizes stay with recursive
     * doubling (stage_min defaults to its upper bound). */
    if (bytes >= t->stage_min && bytes <= t->stage_max && t->stage_max &&
        bytes > t->allreduce_small_max && mc_cx_stage_usable(cx))
        return mc_algo_allreduce_stage(cx);
    /* Recursive doubling: log2(n) latency, but every rank moves the whole
     * vector each round. Ring: 2(n-1) latencies, but only 2(n-1)/n of the
     * vector per rank, pipelined. */
    return bytes <= t->allreduce_small_max ? mc_algo_allreduce_rd(cx)
                                           : mc_algo_allreduce_ring(cx);
}

static mc_status_t mc_run_broadcast(mc_cctx_t *cx, size_t bytes)
{
    const mc_tune_t *t = mc_cx_tune(cx);
    const char *f = t->algo_broadcast;
    size_t cap = sizeof(t->algo_broadcast);

    if (mc_forced(f, cap, "chain")) return mc_algo_broadcast_chain(cx);
    if (mc_forced(f, cap, "tree")) return mc_algo_broadcast_tree(cx);
    if (!mc_forced(f, cap, ""))
        return mc_err(MC_ERR_INVALID_ARG,
                      "MOONCAKE_ALGO_BROADCAST=%.*s: expected chain or tree",
                      (int)cap, f);
    /* Tree: log2(n) latency, the root sends log2(n) copies. Chain: n-1
     * chunk latencies to fill, then full link bandwidth. */
    return bytes <= t->bcast_small_max ? mc_algo_broadcast_tree(cx)
                                       : mc_algo_broadcast_chain(cx);
}

static mc_status_t mc_run_reduce(mc_cctx_t *cx, size_t bytes)
{
    const mc_tune_t *t = mc_cx_tune(cx);
    const char *f = t->algo_reduce;
    size_t cap = sizeof(t->algo_reduce);

    if (mc_forced(f, cap, "tree")) return mc_algo_reduce_tree(cx);
    if (mc_forced(f, cap, "chain")) return mc_algo_reduce_chain(cx);
    if (mc_forced(f, cap, "stage")) /* any size up to stage_max */
        return bytes <= t->stage_max && mc_cx_stage_usable(cx)
                   ? mc_algo_allreduce_stage(cx)
                   : mc_algo_reduce_chain(cx);
    if (!mc_forced(f, cap, ""))
        return mc_err(MC_ERR_INVALID_ARG,
                      "MOONCAKE_ALGO_REDUCE=%.*s: expected tree, chain or "
                      "stage",
                      (int)cap, f);
    /* One host: the staged allreduce, whose commit writes only the root's
     * buffer (allreduce_stage.c), on the same sizes as allreduce. The
     * caller's buffer is written only after the final barrier, so an
     * in-place reduce keeps nothing for a re-run; and the reduction is
     * spread over every rank where the chain leaves the root's share to
     * the root. At 2 ranks: 1 MiB 160 us vs 205-238 us through the chain
     * (docs/performance.md). Latency-bound sizes take the tree, the rest
     * the pipeline (the same threshold as allreduce's). */
    if (bytes >= t->stage_min && bytes <= t->stage_max && t->stage_max &&
        bytes > t->allreduce_small_max && mc_cx_stage_usable(cx))
        return mc_algo_allreduce_stage(cx);
    return bytes <= t->allreduce_small_max ? mc_algo_reduce_tree(cx)
                                           : mc_algo_reduce_chain(cx);
}

static mc_status_t mc_run_reduce_scatter(mc_cctx_t *cx, size_t bytes)
{
    const mc_tune_t *t = mc_cx_tune(cx);
    const char *f = t->algo_reduce_scatter;
    size_t cap = sizeof(t->algo_reduce_scatter);

    if (mc_forced(f, cap, "ring")) return mc_algo_reduce_scatterv_ring(cx);
    if (mc_forced(f, cap, "stage")) /* any size up to stage_max */
        return bytes <= t->stage_max && mc_cx_stage_usable(cx)
                   ? mc_algo_allreduce_stage(cx)
                   : mc_algo_reduce_scatterv_ring(cx);
    if (!mc_forced(f, cap, ""))
        return mc_err(MC_ERR_INVALID_ARG,
                      "MOONCAKE_ALGO_REDUCE_SCATTER=%.*s: expected ring or "
                      "stage",
                      (int)cap, f);
    /* One host, the whole input at least MOONCAKE_SHM_STAGE_MIN: the
     * staged allreduce's first two steps, then the commit copies our block
     * out (allreduce_stage.c). The caller's buffer is written only after
     * the final barrier, so an in-place call keeps nothing for a re-run,
     * and every block moves once where the ring copies it into the
     * transport's ring and out at every step (4 ranks: 1.2-4x faster).
     * At 2 ranks without fault tolerance the ring's single step is leaner
     * (in place, 64 KiB: 7.9 against 12-13 us), so it stays there. */
    if (bytes >= t->stage_min && bytes <= t->stage_max && t->stage_max &&
        (mc_cx_size(cx) > 2 || mc_cx_ft(cx)) && mc_cx_stage_usable(cx))
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
        return mc_algo_allgatherv_ring(cx);
    case MC_COLL_ALLGATHERV:
        if ((st = mc_check_v(what, a->counts, a->displs, n, es)) < 0) return st;
        return mc_algo_allgatherv_ring(cx);

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
        return a->coll == MC_COLL_GATHER ? mc_algo_gather_direct(cx)
                                         : mc_algo_scatter_direct(cx);

    case MC_COLL_ALLTOALL:
        if ((st = mc_check_count(what, a->count, (size_t)n, es)) < 0) return st;
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
