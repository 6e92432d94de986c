/*
 * Reduce to a root: binomial tree (small messages) and pipelined chain
 * (large ones). Only the root's result is defined; other ranks' recvbuf is
 * not touched (it may be NULL).
 *
 * Ranks are renumbered relative to the root, v = (rank - root) mod n. Data
 * only flows toward the root, so both algorithms start with the
 * dissemination barrier, which carries the descriptor check to every rank
 * (the tree on two ranks: an empty frame from the root instead,
 * mc_algo_pair_start).
 * MC_AVG sums, and the root divides once at the end.
 *
 * In place (fault tolerance, auto mode) only the root overwrites its
 * input: the tree's root writes its output only at the commit (its last
 * reduction, mc_algo_reduce_commit), the chain's saves each range just
 * before (mc_cx_save); the other ranks keep nothing.
 */
#include "algo.h"

/*
 * Binomial tree, the broadcast tree run backwards: in round k (m = 2^k) a
 * rank whose bit k is set sends its partial to v - m and is done; the
 * others receive from v + m (if it exists) and reduce it in.
 */
mc_status_t mc_algo_reduce_tree(mc_cctx_t *cx)
{
    const mc_coll_args_t *a = mc_cx_args(cx);
    int n = mc_cx_size(cx), r = mc_cx_rank(cx), root = a->root;
    size_t es = mc_dtype_size(a->dtype);
    size_t bytes = a->count * es;
    int v = mc_algo_mod((long long)r - root, n);
    unsigned round = 0;
    char *acc, *tmp;
    mc_status_t st;
    mc_fh_t h;

    if (n == 1) {
        mc_algo_copy(a->recvbuf, a->sendbuf, bytes);
        return MC_OK;
    }
    st = n == 2 ? mc_algo_pair_start(cx, (root + 1) % 2, MC_PH_REDUCE_TREE)
                : mc_algo_barrier_dissemination(cx);
    if (st < 0) return st;

    /* Our partial is the input until the first reduction (a leaf sends it
     * as it is), then acc: the root's output, or scratch. An in-place root
     * whose input is kept for a re-run (mc_cx_keeping) reduces in scratch
     * and leaves the last reduction to the commit, which writes the
     * output: it saves nothing (mc_algo_reduce_commit). */
    int defer = v == 0 && bytes && mc_cx_keeping(cx);
    mc_reduce_plan_t *plan = NULL;
    const char *cur = a->sendbuf;
    acc = v == 0 && !defer ? a->recvbuf : mc_algo_scratch(cx, 0, bytes);
    tmp = mc_algo_scratch(cx, 1, bytes);
    if (defer) plan = mc_algo_scratch(cx, 2, sizeof(*plan));
    if ((!acc && bytes) || !tmp || (defer && !plan)) return MC_ERR_NO_MEMORY;

    for (long long m = 1; m < n; m <<= 1, round++) {
        uint32_t step = mc_algo_step(MC_PH_REDUCE_TREE, round, 0);
        if (v & m) {
            st = mc_cx_isend(cx, (int)((v - m + root) % n), step, cur, bytes,
                             &h);
            if (st < 0) return st;
            break;
        }
        if (v + m < n) {
            st = mc_cx_irecv(cx, (int)((v + m + root) % n), step, tmp, bytes,
                             &h);
            if (st < 0) return st;
            st = mc_cx_wait(cx, h);
            if (st < 0) return st;
            if (defer && 2 * m >= n) { /* the root's last receive */
                *plan = (mc_reduce_plan_t){.x = cur, .y = tmp, .n = n};
                mc_cx_on_commit(cx, mc_algo_reduce_commit);
                return mc_cx_waitall(cx);
            }
            if (bytes) mc_reduce(acc, cur, tmp, a->count, a->dtype, a->op);
            cur = acc;
        }
    }
    if (v == 0 && a->op == MC_AVG && bytes)
        mc_reduce_div(acc, a->count, a->dtype, (uint64_t)n);
    return mc_cx_waitall(cx);
}

/*
 * Pipelined chain toward the root: v = n-1 sends its input chunk by chunk
 * to v-1; every middle rank receives chunk c into a scratch slot, reduces
 * its own input into it and forwards it to v-1; the root reduces into its
 * output. Receives run L chunks ahead over 2L slots; a slot is reused only
 * after the send that read it has completed. That wait depends only on
 * ranks nearer the root, and the root never waits on a send, so the waits
 * cannot form a cycle.
 */
mc_status_t mc_algo_reduce_chain(mc_cctx_t *cx)
{
    const mc_coll_args_t *a = mc_cx_args(cx);
    int n = mc_cx_size(cx), r = mc_cx_rank(cx), root = a->root;
    size_t es = mc_dtype_size(a->dtype);
    int v = mc_algo_mod((long long)r - root, n);
    int to = (r + n - 1) % n, from = (r + 1) % n;
    size_t ce = mc_algo_chunk_elems(cx, es);
    size_t nck = mc_chunk_count(a->count, ce);
    enum { L = MC_ALGO_LOOKAHEAD, S = 2 * MC_ALGO_LOOKAHEAD };
    mc_fh_t rh[S], sh[S];
    size_t slot_elems = a->count < ce ? a->count : ce;
    size_t posted = 0, off, len;
    char *scr;
    mc_status_t st;
    mc_fh_t h;

    if (n == 1) {
        mc_algo_copy(a->recvbuf, a->sendbuf, a->count * es);
        return MC_OK;
    }
    st = mc_algo_barrier_dissemination(cx);
    if (st < 0) return st;

    if (v == n - 1) {
        /* Head of the chain: the input goes out as it is. */
        for (size_t c = 0; c < nck; c++) {
            mc_chunk_range(a->count, ce, c, &off, &len);
            st = mc_cx_isend(cx, to, mc_algo_step(MC_PH_REDUCE_CHAIN, 0, c),
                             mc_algo_cat(a->sendbuf, off, es), len * es, &h);
            if (st < 0) return st;
            if (c == 0) MC_FAULT_POINT("reduce.chain.sent");
        }
        return mc_cx_waitall(cx);
    }

    scr = mc_algo_scratch(cx, 0, (size_t)S * slot_elems * es);
    if (!scr) return MC_ERR_NO_MEMORY;

    for (size_t c = 0; c < nck; c++) {
        for (; posted < nck && posted < c + L + 1; posted++) {
            size_t s = posted % S;
            /* Slot s last held chunk posted - S (< c, so processed); its
             * forwarding send must be done before we overwrite it. */
            if (v != 0 && posted >= S) {
                st = mc_cx_wait(cx, sh[s]);
                if (st < 0) return st;
            }
            mc_chunk_range(a->count, ce, posted, &off, &len);
            st = mc_cx_irecv(cx, from,
                             mc_algo_step(MC_PH_REDUCE_CHAIN, 0, posted),
                             scr + s * slot_elems * es, len * es, &rh[s]);
            if (st < 0) return st;
        }
        st = mc_cx_wait(cx, rh[c % S]);
        if (st < 0) return st;

        char *part = scr + (c % S) * slot_elems * es;
        mc_chunk_range(a->count, ce, c, &off, &len);
        const char *mine = mc_algo_cat(a->sendbuf, off, es);
        if (v == 0) {
            /* Root: out = partial op input (in place: dst == mine). */
            if (len) {
                char *o = mc_algo_at(a->recvbuf, off, es);
                mc_cx_save(cx, o, len * es); /* in place: cache-hot copy */
                mc_reduce(o, part, mine, len, a->dtype, a->op);
                if (a->op == MC_AVG)
                    mc_reduce_div(o, len, a->dtype, (uint64_t)n);
            }
        } else {
            if (len) mc_reduce(part, part, mine, len, a->dtype, a->op);
            st = mc_cx_isend(cx, to, mc_algo_step(MC_PH_REDUCE_CHAIN, 0, c),
                             part, len * es, &sh[c % S]);
            if (st < 0) return st;
            /* killed here, the root may have reduced chunk 0 in place */
            if (c == 0) MC_FAULT_POINT("reduce.chain.sent");
        }
    }
    return mc_cx_waitall(cx);
}
