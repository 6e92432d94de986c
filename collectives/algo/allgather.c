/*
 * Allgather / allgatherv: ring, pipelined in chunks.
 *
 * Rank r's block is counts[r] elements at displs[r] of the output (for
 * allgather: count elements at r*count). There are n-1 ring steps: at
 * step g a rank sends block (r - g) to its successor and receives block
 * (r - g - 1) from its predecessor, straight into the output. The block
 * received at step g is the one forwarded at step g+1, so every chunk is
 * passed on as soon as it has arrived; receives run a few chunks ahead.
 *
 * Every rank receives, through the chain, data that left every other rank,
 * so the mismatch check reaches all of them. Empty blocks still travel as
 * one zero-byte frame per step.
 */
#include "algo.h"

mc_status_t mc_algo_allgatherv_ring(mc_cctx_t *cx)
{
    const mc_coll_args_t *a = mc_cx_args(cx);
    int n = mc_cx_size(cx), r = mc_cx_rank(cx);
    size_t es = mc_dtype_size(a->dtype);
    char *out = a->recvbuf;
    int next = (r + 1) % n, prev = (r + n - 1) % n;
    size_t ce = mc_algo_chunk_elems(cx, es);
    size_t nsteps = (size_t)(n - 1);
    enum { L = MC_ALGO_LOOKAHEAD, S = MC_ALGO_LOOKAHEAD + 1 };
    mc_blocks_t bl = {.n = n};
    mc_ring_cur_t post, cur;
    mc_fh_t rh[S];
    size_t off, len;
    mc_status_t st;
    mc_fh_t h;

    if (a->counts) {
        bl.counts = a->counts;
        bl.displs = a->displs;
    } else {
        bl.total = a->count * (size_t)n; /* select.c checked the product */
    }

    /* Our own block: into place locally (no-op in place), and out as the
     * step-0 frames, read from the send buffer. */
    mc_blocks_get(&bl, r, &off, &len);
    mc_algo_copy(mc_algo_at(out, off, es), a->sendbuf, len * es);
    if (n == 1) return MC_OK;
    /* Two blocks of one chunk: one frame each way, which confirms the op
     * (no final barrier; comm.c, pair confirmation). */
    if (n == 2 && mc_chunk_count(mc_blocks_max(&bl), ce) == 1)
        mc_cx_pair_exchange(cx);
    for (size_t c = 0, nck = mc_chunk_count(len, ce); c < nck; c++) {
        size_t coff, clen;
        mc_chunk_range(len, ce, c, &coff, &clen);
        st = mc_cx_isend(cx, next, mc_algo_step(MC_PH_ALLGATHER, 0, c),
                         mc_algo_cat(a->sendbuf, coff, es), clen * es, &h);
        if (st < 0) return st;
    }
    st = mc_cx_fault_sent(cx, "allgather.sent");
    if (st < 0) return st;

    mc_ring_cur_init(&post, &bl, r, 1, nsteps, ce);
    mc_ring_cur_init(&cur, &bl, r, 1, nsteps, ce);
    while (mc_ring_cur_valid(&cur)) {
        while (mc_ring_cur_valid(&post) && post.k < cur.k + L + 1) {
            st = mc_cx_irecv(
                cx, prev, mc_algo_step(MC_PH_ALLGATHER, post.g, post.c),
                mc_algo_at(out, post.off, es), post.len * es, &rh[post.k % S]);
            if (st < 0) return st;
            mc_ring_cur_next(&post);
        }
        st = mc_cx_wait(cx, rh[cur.k % S]);
        if (st < 0) return st;
        if (cur.g + 1 < nsteps) {
            st = mc_cx_isend(cx, next,
                             mc_algo_step(MC_PH_ALLGATHER, cur.g + 1, cur.c),
                             mc_algo_at(out, cur.off, es), cur.len * es, &h);
            if (st < 0) return st;
        }
        mc_ring_cur_next(&cur);
    }
    return mc_cx_waitall(cx);
}
