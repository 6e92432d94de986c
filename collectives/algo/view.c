/*
 * Collectives over a view with holes: see mc_coll_run_view in coll.h and
 * the table "Per-operation meaning over a view with holes" in
 * docs/fault-model.md.
 *
 * The algorithms run over the dense group of the view's active slots
 * (virtual ranks 0..n-1, in slot order). The caller's arguments are laid
 * out by slot, so this file derives arguments in virtual-rank terms and
 * runs the ordinary algorithm on them:
 *   - a root slot becomes its virtual rank; an inactive root fails the call
 *     with MC_ERR_ROOT_FAILED. Every rank of the operation sees the same
 *     view, so all of them fail alike without a message;
 *   - per-rank blocks (allgather(v), reduce_scatter(v), all-to-all(v),
 *     gather, scatter) become counts/displacements per virtual rank that
 *     point at the slot's block of the caller's own buffers: no staging
 *     copy, and in-place forms stay in place (the rank's own block is
 *     where the caller put it);
 *   - blocks of inactive slots in outputs that gather from everyone are
 *     zero-filled after the run; their input blocks are never read.
 * Allreduce and barrier need nothing: MC_AVG divides by mc_cx_size, the
 * active count. The engine keeps checking the caller's own (slot-based)
 * descriptor on every frame, so a mismatch among the active ranks is still
 * caught.
 */
#include <stdlib.h>

#include "algo.h"

/* Zero `len` elements at element `off` of buf. */
static void view_zero(void *buf, size_t off, size_t len, size_t es)
{
    if (buf && len) memset((char *)buf + off * es, 0, len * es);
}

/* Map slot-indexed arrays onto virtual ranks: dst[v] = src[slot(v)]. */
static void view_pick(mc_cctx_t *cx, size_t *dst, const size_t *src)
{
    for (int v = 0, n = mc_cx_size(cx); v < n; v++)
        dst[v] = src[mc_cx_slot(cx, v)];
}

static mc_status_t view_run_holes(mc_cctx_t *cx)
{
    const mc_coll_args_t *a = mc_cx_args(cx);
    int n = mc_cx_size(cx), ns = mc_cx_nslots(cx);
    size_t es = mc_dtype_size(a->dtype);
    const char *what = mc_coll_name(a->coll);
    mc_coll_args_t d = *a;
    size_t *arr = NULL;
    mc_status_t st;
    int zero_out = 0; /* zero inactive blocks of a->recvbuf afterwards */

    switch (a->coll) {
    case MC_COLL_ALLREDUCE:
    case MC_COLL_BARRIER:
        return mc_coll_run(cx);

    case MC_COLL_BROADCAST:
    case MC_COLL_REDUCE:
    case MC_COLL_GATHER:
    case MC_COLL_SCATTER:
        d.root = mc_cx_vrank(cx, a->root);
        if (d.root < 0)
            return mc_err(MC_ERR_ROOT_FAILED,
                          "%s: root rank %d is not active in the view "
                          "(%d of %d ranks active)",
                          what, a->root, n, ns);
        if (a->coll == MC_COLL_BROADCAST || a->coll == MC_COLL_REDUCE) break;
        /* Block of virtual rank v: `count` elements at slot(v)*count of the
         * root's buffer (gather_scatter.c honours displs). */
        arr = malloc(sizeof(size_t) * (size_t)n);
        if (!arr) goto nomem;
        for (int v = 0; v < n; v++)
            arr[v] = (size_t)mc_cx_slot(cx, v) * a->count;
        d.counts = NULL;
        d.displs = arr;
        break;

    case MC_COLL_ALLGATHER:
    case MC_COLL_ALLGATHERV:
    case MC_COLL_REDUCE_SCATTER:
    case MC_COLL_REDUCE_SCATTERV:
        /* The ring algorithms take any displacements. */
        if (!a->counts || !a->displs) goto noarrays;
        arr = malloc(sizeof(size_t) * 2 * (size_t)n);
        if (!arr) goto nomem;
        view_pick(cx, arr, a->counts);
        view_pick(cx, arr + n, a->displs);
        d.counts = arr;
        d.displs = arr + n;
        zero_out =
            a->coll == MC_COLL_ALLGATHER || a->coll == MC_COLL_ALLGATHERV;
        break;

    case MC_COLL_ALLTOALL:
    case MC_COLL_ALLTOALLV:
        if (!a->counts || !a->displs || !a->scounts || !a->sdispls)
            goto noarrays;
        arr = malloc(sizeof(size_t) * 4 * (size_t)n);
        if (!arr) goto nomem;
        view_pick(cx, arr, a->counts);
        view_pick(cx, arr + n, a->displs);
        view_pick(cx, arr + 2 * n, a->scounts);
        view_pick(cx, arr + 3 * n, a->sdispls);
        d.counts = arr;
        d.displs = arr + n;
        d.scounts = arr + 2 * n;
        d.sdispls = arr + 3 * n;
        zero_out = 1;
        break;

    default:
        return mc_err(MC_ERR_INVALID_ARG, "collective: unknown operation %d",
                      (int)a->coll);
    }

    mc_cx_set_args(cx, &d);
    st = mc_coll_run(cx);
    mc_cx_set_args(cx, NULL);

    /* Blocks that no active rank sent: zeros (on the root only for
     * gather, whose recvbuf means nothing elsewhere). */
    if (st >= 0 && a->coll == MC_COLL_GATHER && d.root == mc_cx_rank(cx))
        for (int s = 0; s < ns; s++)
            if (mc_cx_vrank(cx, s) < 0)
                view_zero(a->recvbuf, (size_t)s * a->count, a->count, es);
    if (st >= 0 && zero_out)
        for (int s = 0; s < ns; s++)
            if (mc_cx_vrank(cx, s) < 0)
                view_zero(a->recvbuf, a->displs[s], a->counts[s], es);
    free(arr);
    return st;

nomem:
    return mc_err(MC_ERR_NO_MEMORY, "%s over a view with holes: out of memory",
                  what);
noarrays:
    return mc_err(MC_ERR_INTERNAL, "%s: missing counts/displacements", what);
}

mc_status_t mc_coll_run_view(mc_cctx_t *cx)
{
    /* Full view: the call's arguments are already in virtual-rank terms. */
    if (mc_cx_size(cx) == mc_cx_nslots(cx)) return mc_coll_run(cx);
    return view_run_holes(cx);
}
