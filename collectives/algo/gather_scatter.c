/*
 * Gather and scatter: direct. The root posts one frame per peer, every
 * other rank one frame to or from the root; the transports move the frames
 * concurrently. Block j is `count` elements at j*count of the root's
 * buffer, or at displs[j] when the arguments carry displacements (a view
 * with holes: view.c points them at the blocks of the ranks' slots).
 *
 * Data only flows to or from the root, so both start with the
 * dissemination barrier, which carries the descriptor check to every rank
 * (on two ranks: an empty frame the other way instead, mc_algo_pair_start).
 */
#include "algo.h"

/* The root exchanges one frame with every peer: it receives block j from
 * rank j (gather) or sends block j to rank j (scatter); every other rank
 * does the opposite once. Each pair carries a single frame, so the post
 * order does not matter for the in-order rule. */
static mc_status_t rooted_direct(mc_cctx_t *cx, int gather)
{
    const mc_coll_args_t *a = mc_cx_args(cx);
    int n = mc_cx_size(cx), r = mc_cx_rank(cx), root = a->root;
    size_t es = mc_dtype_size(a->dtype);
    size_t bytes = a->count * es;
    uint32_t step = mc_algo_step(gather ? MC_PH_GATHER : MC_PH_SCATTER, 0, 0);
    mc_status_t st;
    mc_fh_t h;

    if (n > 1) {
        st = n == 2 ? mc_algo_pair_start(cx, gather ? (root + 1) % 2 : root,
                                         gather ? MC_PH_GATHER : MC_PH_SCATTER)
                    : mc_algo_barrier_dissemination(cx);
        if (st < 0) return st;
    }
    if (r != root) {
        st = gather ? mc_cx_isend(cx, root, step, a->sendbuf, bytes, &h)
                    : mc_cx_irecv(cx, root, step, a->recvbuf, bytes, &h);
        if (st < 0) return st;
        return mc_cx_waitall(cx);
    }
    for (int k = 1; k < n; k++) {
        int j = (root + k) % n;
        size_t off = a->displs ? a->displs[j] : (size_t)j * a->count;
        st = gather ? mc_cx_irecv(cx, j, step, mc_algo_at(a->recvbuf, off, es),
                                  bytes, &h)
                    : mc_cx_isend(cx, j, step, mc_algo_cat(a->sendbuf, off, es),
                                  bytes, &h);
        if (st < 0) return st;
    }
    /* The root's own block, while the others move (no-op in place). */
    size_t own = a->displs ? a->displs[root] : (size_t)root * a->count;
    if (gather)
        mc_algo_copy(mc_algo_at(a->recvbuf, own, es), a->sendbuf, bytes);
    else
        mc_algo_copy(a->recvbuf, mc_algo_cat(a->sendbuf, own, es), bytes);
    return mc_cx_waitall(cx);
}

mc_status_t mc_algo_gather_direct(mc_cctx_t *cx)
{
    return rooted_direct(cx, 1);
}

mc_status_t mc_algo_scatter_direct(mc_cctx_t *cx)
{
    return rooted_direct(cx, 0);
}
