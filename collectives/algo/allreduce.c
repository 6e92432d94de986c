/*
 * Allreduce: recursive doubling (small messages) and ring (large ones).
 *
 * Both give every rank the bit-identical result (guarantee 2 of the fault
 * model):
 * - recursive doubling: partners exchange partials that are identical
 *   across the ranks of each half, and mc_reduce is commutative bit for bit,
 *   so a op b on one side equals b op a on the other;
 * - ring: each block is reduced by one chain of ranks, finalised once by its
 *   owner and then only copied.
 * MC_AVG reduces with the sum and divides exactly once, on the final values
 * before they are distributed.
 */
#include "algo.h"

/*
 * Recursive doubling with the standard fold for non-powers of two.
 *
 * Let p be the largest power of two <= n and rem = n - p.
 *  1. Fold: among the first 2*rem ranks, each even rank sends its vector
 *     to the odd rank above it and drops out; the odd rank reduces it in.
 *     The p remaining ranks get new ids 0..p-1.
 *  2. Butterfly: for mask = 1, 2, ..., p/2 exchange the whole partial with
 *     new id ^ mask and reduce. After log2(p) rounds all p hold the result.
 *  3. AVG: divide by n (each rank divides identical bits identically).
 *  4. Unfold: each odd rank of the fold sends the result back to its even
 *     partner.
 * Every rank ends depending on a frame from every other rank (the dropped
 * ranks through their partner's final frame).
 *
 * The first reduction reads the input where the caller left it (no copy
 * into the output first). With fault tolerance an in-place input must
 * survive until the op is decided (a re-run over a smaller view needs it):
 * then the partials live in scratch and the last reduction (or, for the
 * ranks of the fold, the copy of the result) writes the caller's buffer
 * only at the commit, after the final barrier, so nothing is kept. The
 * same operands meet in the same order either way: the bits are the same.
 */
void mc_algo_reduce_commit(mc_cctx_t *cx)
{
    const mc_coll_args_t *a = mc_cx_args(cx);
    const mc_reduce_plan_t *pl = mc_cx_scratch(cx, 2, 1); /* that large */
    if (!pl->y) {
        memcpy(a->recvbuf, pl->x, a->count * mc_dtype_size(a->dtype));
        return;
    }
    mc_reduce(a->recvbuf, pl->x, pl->y, a->count, a->dtype, a->op);
    if (a->op == MC_AVG)
        mc_reduce_div(a->recvbuf, a->count, a->dtype, (uint64_t)pl->n);
}

mc_status_t mc_algo_allreduce_rd(mc_cctx_t *cx)
{
    const mc_coll_args_t *a = mc_cx_args(cx);
    int n = mc_cx_size(cx), r = mc_cx_rank(cx);
    size_t es = mc_dtype_size(a->dtype);
    size_t bytes = a->count * es;
    char *out = a->recvbuf, *tmp, *acc;
    const char *cur = a->sendbuf; /* our partial: the input until the first
                                     reduction */
    mc_reduce_plan_t *plan = NULL;
    int p = 1, rem, newr;
    unsigned round = 0;
    mc_status_t st;
    mc_fh_t h;

    if (n == 1) {
        mc_algo_copy(out, a->sendbuf, bytes);
        return MC_OK; /* AVG over one rank: nothing to divide */
    }
    tmp = mc_algo_scratch(cx, 0, bytes);
    if (!tmp) return MC_ERR_NO_MEMORY;
    acc = out;
    if (bytes && mc_cx_keeping(cx)) { /* out is the input: defer to commit */
        acc = mc_algo_scratch(cx, 1, bytes);
        plan = mc_algo_scratch(cx, 2, sizeof(*plan));
        if (!acc || !plan) return MC_ERR_NO_MEMORY;
    }

    while (p <= n / 2)
        p <<= 1;
    rem = n - p;

    /* 1. Fold. */
    if (r < 2 * rem) {
        if (r % 2 == 0) {
            /* Dropped rank: contribute, then wait for the result. */
            char *res = plan ? tmp : out;
            st = mc_cx_isend(cx, r + 1, mc_algo_step(MC_PH_RD, 0, 0), cur,
                             bytes, &h);
            if (st < 0) return st;
            st = mc_cx_irecv(cx, r + 1, mc_algo_step(MC_PH_RD, 0xfff, 0), res,
                             bytes, &h);
            if (st < 0) return st;
            /* The receive may overwrite what the send reads (in place):
             * the partner sends the result only after it has received our
             * vector. */
            st = mc_cx_waitall(cx);
            if (st < 0 || !plan) return st;
            *plan = (mc_reduce_plan_t){.x = res, .y = NULL};
            mc_cx_on_commit(cx, mc_algo_reduce_commit);
            return MC_OK;
        }
        st = mc_cx_irecv(cx, r - 1, mc_algo_step(MC_PH_RD, 0, 0), tmp, bytes,
                         &h);
        if (st < 0) return st;
        st = mc_cx_wait(cx, h);
        if (st < 0) return st;
        if (bytes) mc_reduce(acc, cur, tmp, a->count, a->dtype, a->op);
        cur = acc;
        newr = r / 2;
    } else {
        newr = r - rem;
    }

    /* 2. Butterfly. sendrecv waits for the send too, so the partial may be
     * overwritten by the reduction right after. Over two ranks this one
     * exchange confirms the op (no final barrier). */
    mc_cx_pair_exchange(cx);
    for (int mask = 1; mask < p; mask <<= 1) {
        int pn = newr ^ mask;
        int peer = pn < rem ? 2 * pn + 1 : pn + rem;
        st = mc_cx_sendrecv(cx, mc_algo_step(MC_PH_RD, ++round, 0), peer, cur,
                            bytes, peer, tmp, bytes);
        if (st < 0) return st;
        if (plan && 2 * mask >= p && r >= 2 * rem) {
            /* the last reduction, nobody else needs it: at the commit */
            *plan = (mc_reduce_plan_t){.x = cur, .y = tmp, .n = n};
            mc_cx_on_commit(cx, mc_algo_reduce_commit);
            return MC_OK;
        }
        if (bytes) mc_reduce(acc, cur, tmp, a->count, a->dtype, a->op);
        cur = acc;
    }

    /* 3. Finalise the average once, before anyone else sees the result. */
    if (a->op == MC_AVG && bytes)
        mc_reduce_div(acc, a->count, a->dtype, (uint64_t)n);

    /* 4. Unfold. */
    if (r < 2 * rem) {
        st = mc_cx_isend(cx, r - 1, mc_algo_step(MC_PH_RD, 0xfff, 0), acc,
                         bytes, &h);
        if (st < 0) return st;
    }
    st = mc_cx_waitall(cx);
    if (st < 0 || !plan) return st;
    *plan = (mc_reduce_plan_t){.x = acc, .y = NULL};
    mc_cx_on_commit(cx, mc_algo_reduce_commit);
    return MC_OK;
}

/*
 * Ring: reduce-scatter, then allgather, over n blocks of the vector, each
 * block cut into pipeline chunks of the tuned size.
 *
 * There are 2(n-1) ring steps g. At step g a rank sends block (rank - g)
 * to its successor and receives block (rank - g - 1) from its predecessor:
 *   g <  n-1 (reduce-scatter): the received partial is reduced with our own
 *            input into `out`; after the last such step we own block
 *            (rank + 1), fully reduced (AVG: divided here, once);
 *   g >= n-1 (allgather): the received block is final and lands directly
 *            in `out`.
 * The block received at step g is exactly the block sent at step g+1, so
 * each chunk is forwarded as soon as it has been processed: the ring runs
 * as one pipeline of (step, chunk) items. Reduce-scatter chunks arrive in
 * a small ring of scratch slots; the receive of item k+L is posted before
 * item k is reduced, so transfer and reduction overlap.
 *
 * Buffer safety: sends read `in` (step 0) or `out`. The only later writes
 * to a region we sent from are the allgather receives of blocks we sent
 * during reduce-scatter, and those bytes can only arrive after our send
 * was consumed (the final block is computed downstream of it).
 */
mc_status_t mc_algo_allreduce_ring(mc_cctx_t *cx)
{
    const mc_coll_args_t *a = mc_cx_args(cx);
    int n = mc_cx_size(cx), r = mc_cx_rank(cx);
    size_t es = mc_dtype_size(a->dtype);
    const char *in = a->sendbuf;
    char *out = a->recvbuf;
    int next = (r + 1) % n, prev = (r + n - 1) % n;
    size_t ce = mc_algo_chunk_elems(cx, es);
    size_t nsteps = 2 * (size_t)(n - 1);
    enum { L = MC_ALGO_LOOKAHEAD, S = MC_ALGO_LOOKAHEAD + 1 };
    mc_blocks_t bl = {.n = n, .total = a->count};
    mc_ring_cur_t post, cur;
    mc_fh_t rh[S];
    size_t slot_elems, off, len;
    char *scr;
    mc_status_t st;
    mc_fh_t h;

    if (n == 1) {
        mc_algo_copy(out, in, a->count * es);
        return MC_OK;
    }

    slot_elems = mc_blocks_max(&bl);
    if (slot_elems > ce) slot_elems = ce;
    scr = mc_algo_scratch(cx, 0, (size_t)S * slot_elems * es);
    if (!scr) return MC_ERR_NO_MEMORY;

    /* Step 0: our own input block goes out whole, chunk by chunk. In place,
     * it is first overwritten by its allgather receive: keep it now. */
    mc_blocks_get(&bl, r, &off, &len);
    if (in == out) mc_cx_save(cx, mc_algo_cat(in, off, es), len * es);
    for (size_t c = 0, nck = mc_chunk_count(len, ce); c < nck; c++) {
        size_t coff, clen;
        mc_chunk_range(len, ce, c, &coff, &clen);
        st = mc_cx_isend(cx, next, mc_algo_step(MC_PH_RING, 0, c),
                         mc_algo_cat(in, off + coff, es), clen * es, &h);
        if (st < 0) return st;
    }

    /* Receive items: block (rank - g - 1) at step g. `post` runs L items
     * ahead of `cur`. */
    mc_ring_cur_init(&post, &bl, r, 1, nsteps, ce);
    mc_ring_cur_init(&cur, &bl, r, 1, nsteps, ce);
    while (mc_ring_cur_valid(&cur)) {
        while (mc_ring_cur_valid(&post) && post.k < cur.k + L + 1) {
            /* Slot post.k % S last held item post.k - S <= cur.k - 1,
             * which has been reduced already. */
            void *dst = post.g < (size_t)(n - 1)
                            ? scr + (post.k % S) * slot_elems * es
                            : mc_algo_at(out, post.off, es);
            st = mc_cx_irecv(cx, prev, mc_algo_step(MC_PH_RING, post.g, post.c),
                             dst, post.len * es, &rh[post.k % S]);
            if (st < 0) return st;
            mc_ring_cur_next(&post);
        }

        st = mc_cx_wait(cx, rh[cur.k % S]);
        if (st < 0) return st;

        if (cur.g < (size_t)(n - 1) && cur.len) {
            /* Reduce-scatter: out = received partial op our input. */
            char *o = mc_algo_at(out, cur.off, es);
            if (in == out) mc_cx_save(cx, o, cur.len * es); /* cache-hot */
            mc_reduce(o, scr + (cur.k % S) * slot_elems * es,
                      mc_algo_cat(in, cur.off, es), cur.len, a->dtype, a->op);
            if (cur.g == (size_t)(n - 2) && a->op == MC_AVG)
                mc_reduce_div(o, cur.len, a->dtype, (uint64_t)n);
        }

        /* Forward the chunk at step g+1 (same block, same chunking). */
        if (cur.g + 1 < nsteps) {
            st = mc_cx_isend(cx, next,
                             mc_algo_step(MC_PH_RING, cur.g + 1, cur.c),
                             mc_algo_at(out, cur.off, es), cur.len * es, &h);
            if (st < 0) return st;
        }
        mc_ring_cur_next(&cur);
    }
    return mc_cx_waitall(cx);
}
