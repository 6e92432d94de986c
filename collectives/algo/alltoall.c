/*
 * All-to-all / all-to-allv: pairwise exchange.
 *
 * Our own block is copied locally. In step k = 1..n-1 a rank sends its
 * block for (rank + k) mod n and receives the block from (rank - k) mod n,
 * so in every step each rank sends to one peer and receives from one, and
 * over the n-1 steps every ordered pair exchanges exactly one frame (the
 * in-order rule holds trivially; every rank hears from every other, which
 * carries the mismatch check). Up to W steps are in flight at once so that
 * transfers to different peers overlap; a step's frames are waited for
 * before step k+W is posted, which bounds what is outstanding.
 *
 * Sizes: alltoall moves `count` elements per block at j*count; alltoallv
 * sends scounts[j] elements from sdispls[j] and receives counts[j] at
 * displs[j]. A peer whose send count disagrees with our receive count
 * makes the engine's length check fail: MC_ERR_MISMATCH.
 *
 * That check fires only at the receiver, and the sender's frame left
 * before it, so for alltoallv (whose counts are per-rank arguments, not
 * part of the descriptor every frame carries) the exchange ends with a
 * dissemination barrier: every rank then depends on every other rank
 * having accepted all its frames, and a length mismatch fails the call on
 * all ranks (as the engine's abort reaches them) instead of just one.
 * alltoall's count is in the descriptor, so its own frames suffice. With
 * fault tolerance the engine's final barrier follows (mc_cx_pair_exchange
 * is not called for alltoallv) and does the same: every rank enters it
 * only once its own frames are done, and a rank whose receive failed
 * sends its abort instead, which fails the others' wait. So the
 * algorithm's barrier would be a second round for nothing, and is left
 * out there.
 */
#include "algo.h"

typedef struct mc_a2a_layout {
    const mc_coll_args_t *a;
    size_t es;
} mc_a2a_layout_t;

static void mc_a2a_send_block(const mc_a2a_layout_t *lo, int j,
                              const char **p_p, size_t *bytes_p)
{
    const mc_coll_args_t *a = lo->a;
    size_t off = a->scounts ? a->sdispls[j] : (size_t)j * a->count;
    size_t len = a->scounts ? a->scounts[j] : a->count;
    *p_p = mc_algo_cat(a->sendbuf, off, lo->es);
    *bytes_p = len * lo->es;
}

static void mc_a2a_recv_block(const mc_a2a_layout_t *lo, int j, char **p_p,
                              size_t *bytes_p)
{
    const mc_coll_args_t *a = lo->a;
    size_t off = a->counts ? a->displs[j] : (size_t)j * a->count;
    size_t len = a->counts ? a->counts[j] : a->count;
    *p_p = mc_algo_at(a->recvbuf, off, lo->es);
    *bytes_p = len * lo->es;
}

mc_status_t mc_algo_alltoallv_pairwise(mc_cctx_t *cx)
{
    const mc_coll_args_t *a = mc_cx_args(cx);
    int n = mc_cx_size(cx), r = mc_cx_rank(cx);
    mc_a2a_layout_t lo = {.a = a, .es = mc_dtype_size(a->dtype)};
    enum { W = MC_ALGO_A2A_WINDOW };
    mc_fh_t sh[W], rh[W];
    const char *sp;
    char *rp;
    size_t sb, rb;
    mc_status_t st;
    int posted = 1;

    /* Own block. A mismatch between our own send and receive counts is
     * caught by select.c before we get here. */
    mc_a2a_send_block(&lo, r, &sp, &sb);
    mc_a2a_recv_block(&lo, r, &rp, &rb);
    mc_algo_copy(rp, sp, sb < rb ? sb : rb);
    /* Over two ranks alltoall is one frame each way, which confirms the op
     * (no final barrier; comm.c, pair confirmation), up to one chunk as
     * for the rings (a timed-out rank's unsent frame goes on from a copy,
     * comm.c drain_detach_sends). alltoallv's closing barrier exchanges
     * more. */
    if (n == 2 && a->coll == MC_COLL_ALLTOALL &&
        a->count <= mc_algo_chunk_elems(cx, lo.es))
        mc_cx_pair_exchange(cx);

    for (int k = 1; k < n; k++) {
        for (; posted < n && posted < k + W; posted++) {
            int to = (r + posted) % n,
                from = mc_algo_mod((long long)r - posted, n);
            /* The peer receives this in its own step `posted` too. */
            uint32_t step = mc_algo_step(MC_PH_ALLTOALL, 0, (size_t)posted);
            mc_a2a_send_block(&lo, to, &sp, &sb);
            mc_a2a_recv_block(&lo, from, &rp, &rb);
            st = mc_cx_isend(cx, to, step, sp, sb, &sh[posted % W]);
            if (st < 0) return st;
            st = mc_cx_irecv(cx, from, step, rp, rb, &rh[posted % W]);
            if (st < 0) return st;
        }
        MC_FAULT_POINT("alltoall.posted");
        st = mc_cx_fault_sent(cx, "alltoall.sent");
        if (st < 0) return st;
        st = mc_cx_wait(cx, rh[k % W]);
        if (st < 0) return st;
        st = mc_cx_wait(cx, sh[k % W]);
        if (st < 0) return st;
    }
    if (a->coll == MC_COLL_ALLTOALLV && n > 1 && !mc_cx_ft(cx))
        return mc_algo_barrier_dissemination(cx);
    return mc_cx_waitall(cx);
}
