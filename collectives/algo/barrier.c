/*
 * Barrier: direct up to 4 ranks (below), otherwise dissemination (Hensgen,
 * Finkel and Manber).
 *
 * Round k (distance d = 2^k, while d < n): send a zero-byte frame to
 * (rank + d) mod n, then receive one from (rank - d) mod n. After
 * ceil(log2 n) rounds every rank has heard, directly or transitively, from
 * every other rank, so no rank leaves before all have entered.
 *
 * The frames carry the engine's descriptor header, so this is also how the
 * rooted collectives (whose data patterns do not reach every rank) get
 * their mismatch check: they run this first.
 *
 * The distances are distinct modulo n, so each ordered pair of ranks
 * exchanges at most one frame per barrier; the order rule holds trivially.
 */
#include "algo.h"

/*
 * The dissemination rounds. With `flags`, each frame carries 8 bytes: the OR
 * of the flags its sender has seen so far. Every rank's value reaches every
 * rank (the dissemination pattern is an allgather), so each rank leaves with
 * the OR over all ranks. The engine's final FT barrier uses it to tell every
 * member, in the same operation, that joiners wait for admission. Without,
 * frames are empty.
 */
static mc_status_t dissemination(mc_cctx_t *cx, uint64_t *flags)
{
    uint64_t out[64], in = 0, acc = flags ? *flags : 0;
    size_t len = flags ? sizeof(uint64_t) : 0;
    int n = mc_cx_size(cx), r = mc_cx_rank(cx);
    unsigned round = 0;
    mc_status_t st;
    mc_fh_t sh, rh;

    for (int d = 1; d < n; d <<= 1, round++) {
        uint32_t step = mc_algo_step(MC_PH_BARRIER, round, 0);
        out[round] = acc; /* stays put until waitall */
        st = mc_cx_isend(cx, (r + d) % n, step, &out[round], len, &sh);
        if (st < 0) return st;
        st = mc_cx_irecv(cx, mc_algo_mod((long long)r - d, n), step, &in, len,
                         &rh);
        if (st < 0) return st;
        /* Only the receive gates the next round; sends finish in waitall. */
        st = mc_cx_wait(cx, rh);
        if (st < 0) return st;
        acc |= in;
        if (flags && round == 0) MC_FAULT_POINT("ft.barrier.mid");
        if (d > n / 2) break; /* d << 1 would reach n (and could overflow) */
    }
    st = mc_cx_waitall(cx);
    if (st == MC_OK && flags) *flags = acc;
    return st;
}

/*
 * Up to MC_BARRIER_DIRECT_MAX ranks, every rank sends to every other at once
 * and waits for all of them: one round where the dissemination takes
 * ceil(log2 n) rounds one after the other, for n - 1 frames per rank (at 3
 * ranks as many as the dissemination's 2; at 4, 3 against 2). A rank leaves
 * once it heard from every rank directly; the flags are the OR of every
 * rank's. Each ordered pair exchanges one frame (step d - 1 for the
 * distance d), so the order rule holds as above. "ft.barrier.mid" fires
 * once the frame to the right neighbour is out (the dissemination's first
 * round), before the others are posted.
 */
#define MC_BARRIER_DIRECT_MAX 4

static mc_status_t direct(mc_cctx_t *cx, uint64_t *flags)
{
    uint64_t out = flags ? *flags : 0, in[MC_BARRIER_DIRECT_MAX] = {0};
    uint64_t acc = out;
    size_t len = flags ? sizeof(uint64_t) : 0;
    int n = mc_cx_size(cx), r = mc_cx_rank(cx);
    mc_fh_t rh[MC_BARRIER_DIRECT_MAX], sh;
    mc_status_t st;

    for (int d = 1; d < n; d++) {
        st = mc_cx_irecv(cx, mc_algo_mod((long long)r - d, n),
                         mc_algo_step(MC_PH_BARRIER, (size_t)d - 1, 0),
                         &in[d - 1], len, &rh[d - 1]);
        if (st < 0) return st;
    }
    for (int d = 1; d < n; d++) {
        st = mc_cx_isend(cx, (r + d) % n,
                         mc_algo_step(MC_PH_BARRIER, (size_t)d - 1, 0), &out,
                         len, &sh);
        if (st < 0) return st;
        if (flags && d == 1) {
            st = mc_cx_fault_sent(cx, "ft.barrier.mid");
            if (st < 0) return st;
        }
    }
    for (int d = 1; d < n; d++) {
        st = mc_cx_wait(cx, rh[d - 1]);
        if (st < 0) return st;
        acc |= in[d - 1];
    }
    st = mc_cx_waitall(cx);
    if (st == MC_OK && flags) *flags = acc;
    return st;
}

static mc_status_t barrier(mc_cctx_t *cx, uint64_t *flags)
{
    return mc_cx_size(cx) <= MC_BARRIER_DIRECT_MAX ? direct(cx, flags)
                                                   : dissemination(cx, flags);
}

mc_status_t mc_algo_barrier_dissemination(mc_cctx_t *cx)
{
    return barrier(cx, NULL);
}

mc_status_t mc_algo_barrier_flags(mc_cctx_t *cx, uint64_t *flags)
{
    return barrier(cx, flags);
}

/* Two ranks, data flowing one way (broadcast and reduce trees, gather and
 * scatter): instead of the dissemination barrier, a round before the
 * data, the rank that gets the data sends the other an empty frame, posted
 * here and completed by the algorithm's final waitall. Each rank then sends
 * exactly one frame and receives exactly one, whose headers carry the
 * descriptor check both ways, as the barrier's did; and with fault
 * tolerance the exchange confirms the op (mc_cx_pair_exchange: no final
 * barrier, and the data sender cannot run an op ahead of its peer). */
mc_status_t mc_algo_pair_start(mc_cctx_t *cx, int data_from, unsigned phase)
{
    static char none; /* zero-length frames never touch it */
    int r = mc_cx_rank(cx), peer = 1 - r;
    uint32_t step = mc_algo_step(phase, 0xfff, 0);
    mc_fh_t h;
    mc_cx_pair_exchange(cx);
    mc_status_t st = r == data_from
                         ? mc_cx_irecv(cx, peer, step, &none, 0, &h)
                         : mc_cx_isend(cx, peer, step, &none, 0, &h);
    MC_FAULT_POINT("pair.start.posted");
    if (st < 0) return st;
    return mc_cx_fault_sent(cx, "pair.start.sent");
}
