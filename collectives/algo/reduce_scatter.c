/*
 * Reduce-scatter / reduce-scatterv: ring, pipelined in chunks.
 *
 * Block b of the input is counts[b] elements at displs[b] (prefix sums;
 * reduce_scatter: count elements at b*count); rank r must end with block r
 * reduced over all ranks.
 *
 * There are n-1 ring steps g. At step g a rank sends its partial of block
 * (r - g - 1) to its successor and receives the predecessor's partial of
 * block (r - g - 2), which it reduces with its own input block:
 *   step 0 sends straight from the input;
 *   steps g < n-2 reduce into a block-sized scratch buffer, the partial
 *     that is forwarded, chunk by chunk, at step g+1;
 *   the last step (g = n-2) receives block r and reduces into the output
 *     (AVG: divided there, once); with an in-place input that fault
 *     tolerance keeps for a re-run, at the commit instead (rs_commit).
 * Each chunk is forwarded as soon as it is reduced, and receives run a few
 * chunks ahead, so transfer and reduction overlap along the ring.
 *
 * Partials live in two scratch blocks used on alternate steps. Chunk c of
 * step g is received into buffer g%2 at the chunk's offset in the block;
 * before that, the send that read the same place (the partial of step g-2,
 * forwarded as step g-1) must have completed. That wait only ever depends
 * on ranks being behind us on the ring, never ahead, so no cycle of waits
 * can form even if sends complete only when the peer has posted its
 * receive. (A small ring of chunk slots would need waits on sends that
 * ring neighbours can only satisfy later: a deadlock once messages are
 * larger than the transports' buffering.)
 */
#include "algo.h"

/* An in-place input that fault tolerance would keep for a re-run
 * (mc_cx_keeping): the last step leaves block r's partial in scratch and
 * the commit, once the op is decided, reduces it with our input into the
 * output. Nothing is kept, and the same operands meet in the same order,
 * so the bits are the same. */
typedef struct rs_plan {
    char *out;
    const char *part, *mine;
    size_t len; /* elements */
    int n;      /* ranks of the attempt's view (AVG) */
} rs_plan_t;

static void rs_commit(mc_cctx_t *cx)
{
    const mc_coll_args_t *a = mc_cx_args(cx);
    const rs_plan_t *pl = mc_cx_scratch(cx, 2, 1); /* already that large */
    mc_reduce(pl->out, pl->part, pl->mine, pl->len, a->dtype, a->op);
    if (a->op == MC_AVG)
        mc_reduce_div(pl->out, pl->len, a->dtype, (uint64_t)pl->n);
}

mc_status_t mc_algo_reduce_scatterv_ring(mc_cctx_t *cx)
{
    const mc_coll_args_t *a = mc_cx_args(cx);
    int n = mc_cx_size(cx), r = mc_cx_rank(cx);
    size_t es = mc_dtype_size(a->dtype);
    const char *in = a->sendbuf;
    char *out = a->recvbuf;
    int next = (r + 1) % n, prev = (r + n - 1) % n;
    size_t ce = mc_algo_chunk_elems(cx, es);
    size_t nsteps = (size_t)(n - 1);
    enum { L = MC_ALGO_LOOKAHEAD, S = MC_ALGO_LOOKAHEAD + 1 };
    mc_blocks_t bl = {.n = n};
    mc_ring_cur_t post, cur;
    mc_fh_t rh[S];
    size_t maxblk, maxnck, off, len;
    char *pbuf[2];
    mc_fh_t *sh[2];
    mc_status_t st;
    mc_fh_t h;

    if (a->counts) {
        bl.counts = a->counts;
        bl.displs = a->displs;
    } else {
        bl.total = a->count * (size_t)n; /* select.c checked the product */
    }

    mc_blocks_get(&bl, r, &off, &len);
    if (n == 1) {
        mc_cx_save(cx, out, len * es); /* no-op unless it is the input */
        mc_algo_copy(out, mc_algo_cat(in, off, es), len * es);
        return MC_OK;
    }

    maxblk = mc_blocks_max(&bl);
    maxnck = mc_chunk_count(maxblk, ce);
    pbuf[0] = mc_algo_scratch(cx, 0, 2 * maxblk * es);
    sh[0] = mc_algo_scratch(cx, 1, 2 * maxnck * sizeof(mc_fh_t));
    if (!pbuf[0] || !sh[0]) return MC_ERR_NO_MEMORY;
    pbuf[1] = pbuf[0] + maxblk * es;
    sh[1] = sh[0] + maxnck;
    rs_plan_t *plan = NULL;
    if (mc_cx_keeping(cx)) {
        plan = mc_algo_scratch(cx, 2, sizeof(*plan));
        if (!plan) return MC_ERR_NO_MEMORY;
        *plan = (rs_plan_t){.out = out,
                            .part = pbuf[(nsteps - 1) % 2],
                            .mine = mc_algo_cat(in, off, es),
                            .len = len,
                            .n = n};
    }

    /* Step 0: our input's block (r - 1) goes out as it is. */
    mc_blocks_get(&bl, mc_algo_mod((long long)r - 1, n), &off, &len);
    /* Two blocks of one chunk: one frame each way, which confirms the op
     * (no final barrier; comm.c, pair confirmation). */
    if (n == 2 && maxnck == 1) mc_cx_pair_exchange(cx);
    for (size_t c = 0, nck = mc_chunk_count(len, ce); c < nck; c++) {
        size_t coff, clen;
        mc_chunk_range(len, ce, c, &coff, &clen);
        st = mc_cx_isend(cx, next, mc_algo_step(MC_PH_RSCATTER, 0, c),
                         mc_algo_cat(in, off + coff, es), clen * es, &h);
        if (st < 0) return st;
    }
    st = mc_cx_fault_sent(cx, "reduce_scatter.sent");
    if (st < 0) return st;

    /* Receive items: block (r - g - 2) at step g; `post` runs L ahead. */
    mc_ring_cur_init(&post, &bl, r, 2, nsteps, ce);
    mc_ring_cur_init(&cur, &bl, r, 2, nsteps, ce);
    while (mc_ring_cur_valid(&cur)) {
        while (mc_ring_cur_valid(&post) && post.k < cur.k + L + 1) {
            /* Chunk c of step g reuses the place of chunk c of step g-2:
             * that item must have been reduced and forwarded first. */
            if (post.g >= 2 && cur.g < post.g - 1 &&
                !(cur.g == post.g - 2 && cur.c > post.c))
                break;
            char *dst = pbuf[post.g % 2] + (post.off - post.boff) * es;
            if (post.g >= 2) {
                /* The partial of step g-2 (block r - g) that was read from
                 * here by our send of step g-1, if that block had a chunk
                 * number c at all. */
                size_t o2, l2;
                mc_blocks_get(&bl,
                              mc_algo_mod((long long)r - (long long)post.g, n),
                              &o2, &l2);
                if (post.c < mc_chunk_count(l2, ce)) {
                    st = mc_cx_wait(cx, sh[post.g % 2][post.c]);
                    if (st < 0) return st;
                }
            }
            st = mc_cx_irecv(cx, prev,
                             mc_algo_step(MC_PH_RSCATTER, post.g, post.c), dst,
                             post.len * es, &rh[post.k % S]);
            if (st < 0) return st;
            mc_ring_cur_next(&post);
        }

        st = mc_cx_wait(cx, rh[cur.k % S]);
        if (st < 0) return st;

        char *part = pbuf[cur.g % 2] + (cur.off - cur.boff) * es;
        const char *mine = mc_algo_cat(in, cur.off, es);
        if (cur.g + 1 < nsteps) {
            /* Intermediate partial: reduce in the scratch block and
             * forward it at step g+1. */
            if (cur.len) mc_reduce(part, part, mine, cur.len, a->dtype, a->op);
            st = mc_cx_isend(cx, next,
                             mc_algo_step(MC_PH_RSCATTER, cur.g + 1, cur.c),
                             part, cur.len * es, &sh[cur.g % 2][cur.c]);
            if (st < 0) return st;
        } else if (cur.len && !plan) {
            /* Block r, complete: into the output. */
            char *o = mc_algo_at(out, cur.off - cur.boff, es);
            mc_reduce(o, part, mine, cur.len, a->dtype, a->op);
            if (a->op == MC_AVG)
                mc_reduce_div(o, cur.len, a->dtype, (uint64_t)n);
        }
        mc_ring_cur_next(&cur);
    }
    st = mc_cx_waitall(cx);
    if (st < 0 || !plan) return st;
    if (plan->len) mc_cx_on_commit(cx, rs_commit);
    return MC_OK;
}
