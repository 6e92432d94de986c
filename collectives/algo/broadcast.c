/*
 * Broadcast: binomial tree (small messages) and pipelined chain (large).
 *
 * Ranks are renumbered relative to the root, v = (rank - root) mod n, so the
 * root is v = 0. Data only flows away from the root, so a rank's completion
 * does not depend on frames from everyone: both algorithms start with the
 * dissemination barrier, which carries the descriptor check to every rank
 * (the tree on two ranks: an empty frame back to the root instead,
 * mc_algo_pair_start).
 */
#include "algo.h"

/* Root side of both algorithms: the output gets the input (no-op in
 * place); sends read the input. */
static void mc_bcast_root_copy(const mc_coll_args_t *a, size_t bytes)
{
    mc_algo_copy(a->recvbuf, a->sendbuf, bytes);
}

/*
 * Binomial tree: v receives once, from v minus its lowest set bit, then
 * sends to v + 2^k for every 2^k below that bit (largest first, so the
 * biggest subtrees start earliest). ceil(log2 n) rounds.
 */
mc_status_t mc_algo_broadcast_tree(mc_cctx_t *cx)
{
    const mc_coll_args_t *a = mc_cx_args(cx);
    int n = mc_cx_size(cx), r = mc_cx_rank(cx), root = a->root;
    size_t bytes = a->count * mc_dtype_size(a->dtype);
    int v = mc_algo_mod((long long)r - root, n);
    const void *src = a->recvbuf;
    long long mask = 1; /* wide: it may reach 2n */
    mc_status_t st;
    mc_fh_t h;

    if (n == 1) {
        mc_bcast_root_copy(a, bytes);
        return MC_OK;
    }
    st = n == 2 ? mc_algo_pair_start(cx, root, MC_PH_BCAST_TREE)
                : mc_algo_barrier_dissemination(cx);
    if (st < 0) return st;

    if (v == 0) {
        mc_bcast_root_copy(a, bytes);
        src = a->sendbuf;
    }
    /* Find our parent: the lowest set bit of v. */
    while (mask < n) {
        if (v & mask) {
            int parent = (int)((v - mask + root) % n);
            st = mc_cx_irecv(cx, parent, mc_algo_step(MC_PH_BCAST_TREE, 0, 0),
                             a->recvbuf, bytes, &h);
            if (st < 0) return st;
            st = mc_cx_wait(cx, h);
            if (st < 0) return st;
            break;
        }
        mask <<= 1;
    }
    /* Children: v + m for every m below our lowest set bit (below n's top
     * bit for the root). */
    for (mask >>= 1; mask > 0; mask >>= 1) {
        if (v + mask < n) {
            st = mc_cx_isend(cx, (int)((v + mask + root) % n),
                             mc_algo_step(MC_PH_BCAST_TREE, 0, 0), src, bytes,
                             &h);
            if (st < 0) return st;
        }
    }
    return mc_cx_waitall(cx);
}

/*
 * Pipelined chain: v receives chunk c from v-1 and forwards it to v+1 at
 * once, so after the fill (n-1 chunk times) a chunk leaves the chain every
 * chunk time. Receives land directly in the output and run a few chunks
 * ahead.
 */
mc_status_t mc_algo_broadcast_chain(mc_cctx_t *cx)
{
    const mc_coll_args_t *a = mc_cx_args(cx);
    int n = mc_cx_size(cx), r = mc_cx_rank(cx), root = a->root;
    size_t es = mc_dtype_size(a->dtype);
    int v = mc_algo_mod((long long)r - root, n);
    int next = (r + 1) % n, prev = (r + n - 1) % n;
    size_t ce = mc_algo_chunk_elems(cx, es);
    size_t nck = mc_chunk_count(a->count, ce);
    enum { L = MC_ALGO_LOOKAHEAD, S = MC_ALGO_LOOKAHEAD + 1 };
    mc_fh_t rh[S];
    size_t posted = 0, off, len;
    mc_status_t st;
    mc_fh_t h;

    if (n == 1) {
        mc_bcast_root_copy(a, a->count * es);
        return MC_OK;
    }
    st = mc_algo_barrier_dissemination(cx);
    if (st < 0) return st;

    if (v == 0) {
        /* Root: every chunk goes out from the input, then the local copy
         * (which overlaps with the transfers). */
        for (size_t c = 0; c < nck; c++) {
            mc_chunk_range(a->count, ce, c, &off, &len);
            st = mc_cx_isend(cx, next, mc_algo_step(MC_PH_BCAST_CHAIN, 0, c),
                             mc_algo_cat(a->sendbuf, off, es), len * es, &h);
            if (st < 0) return st;
        }
        mc_bcast_root_copy(a, a->count * es);
        return mc_cx_waitall(cx);
    }

    for (size_t c = 0; c < nck; c++) {
        for (; posted < nck && posted < c + L + 1; posted++) {
            mc_chunk_range(a->count, ce, posted, &off, &len);
            st = mc_cx_irecv(
                cx, prev, mc_algo_step(MC_PH_BCAST_CHAIN, 0, posted),
                mc_algo_at(a->recvbuf, off, es), len * es, &rh[posted % S]);
            if (st < 0) return st;
        }
        st = mc_cx_wait(cx, rh[c % S]);
        if (st < 0) return st;
        if (v + 1 < n) {
            mc_chunk_range(a->count, ce, c, &off, &len);
            st = mc_cx_isend(cx, next, mc_algo_step(MC_PH_BCAST_CHAIN, 0, c),
                             mc_algo_at(a->recvbuf, off, es), len * es, &h);
            if (st < 0) return st;
        }
    }
    return mc_cx_waitall(cx);
}
