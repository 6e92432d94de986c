/*
 * Allreduce through shared staging memory (every rank of the view on one
 * host; see select.c for when it runs).
 *
 * Why: in place, the ring overwrites the caller's input while the
 * operation may still have to be re-run over a smaller view, so with fault
 * tolerance on the engine must keep a copy of the input (mc_cx_save): one
 * extra write of the whole message. Here the caller's buffer is only read
 * until the operation is decided; results wait in staging memory that
 * every rank of the host maps, and are copied into the caller's buffer at
 * the end. That copy replaces the ring's allgather copies, so fault
 * tolerance keeps nothing and costs nothing extra. It also copies less
 * than the ring over the shared-memory transport (an input block is put
 * once into its owner's region, where every ring step copies a chunk into
 * the transport's ring and out again), so it runs with fault tolerance off
 * and in manual mode too: there the commit runs right after the algorithm.
 *
 * Reduce on one host runs here too (select.c): the same steps, but only
 * the root's commit copies the result out (a non-root's recvbuf is
 * ignored and may be NULL). Every rank reduces its block, where the chain
 * leaves the root's share of the work to the root, and an in-place root
 * keeps nothing for a re-run either. If a put missed, reduce falls back to
 * its chain instead of the ring.
 *
 * Layout: rank r's region (stage.h) holds slots of `cap` bytes (the
 * largest block, rounded up to 64 bytes). Input slots from the start: the
 * k-th (k = (v - r - 1) mod n, 0 <= k < n - 1) receives rank v's input
 * block r. The result slot, rank r's result block r, ends where the region
 * ends. So one call's result slot never overlaps the next call's input
 * slots, whatever their sizes (each call has n slots that fit, so the n - 1
 * input slots of one and the result slot of another fit side by side):
 * peers still copying out the last result while a faster rank puts the
 * next inputs (below) read and write disjoint bytes.
 *
 * Steps (frames of phase MC_PH_STAGE; every rank sends every peer one frame
 * per step, so the group moves in lock step and a dead peer fails the step
 * like any transfer):
 *  0. only in the first staged call of a view, or one that needs more
 *     region than any before (mc_cx_stage_learn: the same on every rank,
 *     as they all ran the same calls): every region may be new, so the
 *     ranks describe their regions to each other first and map them.
 *  1. make sure the own region is large enough and of this view (a new view
 *     gets a new region, so a removed process that still writes through an
 *     old mapping never touches it). Put our input block q into slot r of
 *     the mapping of rank q's region that this process holds (from step 0
 *     or earlier calls), for every q, if it is large enough. Send every
 *     peer q the description of our region and the id of q's region we put
 *     into (0: none). If a put missed (an owner replaced its region
 *     without step 0: it could not make one before), step 2 finds that
 *     and the call runs the ring; every peer region that changed is mapped
 *     now (cached while its id stays), for the next call.
 *  2. if every peer put into our current region, reduce block r: our own
 *     input block r with slot v for every v, in vrank order, chunk by chunk
 *     (the chunk stays in the cache across the n-1 passes); AVG divides
 *     once at the end of each chunk. Send "out done" with a flag saying
 *     whether we did. Every rank sees the same flags: if one is zero, the
 *     whole group runs the ring instead (the caller's buffers are still
 *     untouched), the same decision everywhere.
 *  3. after every peer's "out done" with its flag set every result block
 *     exists in shared memory: the algorithm returns, and the engine runs
 *     the final barrier and then the commit (stage_commit), which copies
 *     block v from slot v of rank v's region into the caller's buffer. If
 *     ranks die after step 3 and the survivors agree that the group
 *     completed the op, the commit still runs: a dead rank's region stays
 *     mapped.
 *
 * Buffer safety between operations: a rank writes into a peer's input slot
 * (step 1) only after that peer's "out done" of the previous staged call,
 * which it sends after its reduction has read the slot; puts never touch a
 * result slot. A rank overwrites its own result slot (step 2) only after
 * every peer's step-1 frame, which each sends after committing the
 * previous operation. So no region is written while someone still reads it.
 * A put into a region its owner has replaced writes memory that nobody
 * reads any more (the mapping keeps it alive).
 *
 * The commit's plan (the mapped regions) lives in scratch slot 3, which no
 * other algorithm and not the final barrier uses, so it survives until the
 * engine commits.
 */
#include "algo.h"

#define STAGE_REDUCE_CHUNK ((size_t)128 * 1024)
/* Messages above this go through memory with streaming stores: they do not
 * fit in the caches anyway, and a store then need not read the line first.
 * Smaller ones stay in the caches between the steps. */
#define STAGE_STREAM_MIN ((size_t)32 << 20)

static void stage_copy(void *dst, const void *src, size_t bytes, size_t msg)
{
    if (msg > STAGE_STREAM_MIN)
        mc_copy_stream(dst, src, bytes);
    else
        memcpy(dst, src, bytes);
}

/* Step 1's frame to one peer. */
typedef struct stage_hello {
    mc_stage_info_t info; /* the sender's region */
    uint64_t used;        /* id of the receiver's region the sender put into */
} stage_hello_t;

typedef struct stage_plan {
    size_t cap;         /* slot bytes */
    size_t *res;        /* [n] offset of each region's result slot */
    char **reg;         /* [n] each rank's region (own included) */
    stage_hello_t *snd; /* [n] step-1 frames to each peer */
    stage_hello_t *rcv; /* [n] and from each */
    uint64_t *flag;     /* [n] step-2 flags */
    int out;            /* commit: STAGE_OUT_* */
    size_t msg;         /* bytes of the whole input (copy mode) */
    size_t own;         /* STAGE_OUT_OWN: bytes of our block */
} stage_plan_t;

/* What the commit copies into the caller's recvbuf. */
enum {
    STAGE_OUT_NONE, /* reduce, not its root */
    STAGE_OUT_ALL,  /* allreduce, reduce's root: every block */
    STAGE_OUT_OWN,  /* reduce_scatter(v): our block, at recvbuf */
};

/* The blocks of the input: allreduce and reduce split `count` evenly;
 * reduce_scatter has `count` per rank, reduce_scatterv counts/displs (also
 * what algo/view.c passes for a view with holes). */
static mc_blocks_t stage_blocks(const mc_coll_args_t *a, int n)
{
    mc_blocks_t bl = {.n = n, .total = a->count};
    if (a->coll == MC_COLL_REDUCE_SCATTER ||
        a->coll == MC_COLL_REDUCE_SCATTERV) {
        if (a->counts) {
            bl.counts = a->counts;
            bl.displs = a->displs;
        } else {
            bl.total = a->count * (size_t)n; /* select.c checked it */
        }
    }
    return bl;
}

static stage_plan_t *stage_plan(mc_cctx_t *cx, int n)
{
    size_t bytes = sizeof(stage_plan_t) + (size_t)n * sizeof(char *) +
                   (size_t)n * sizeof(size_t) +
                   2 * (size_t)n * sizeof(stage_hello_t) +
                   (size_t)n * sizeof(uint64_t);
    char *p = mc_algo_scratch(cx, 3, bytes);
    if (!p) return NULL;
    stage_plan_t *pl = (stage_plan_t *)(void *)p;
    p += sizeof(*pl);
    pl->reg = (char **)(void *)p;
    p += (size_t)n * sizeof(char *);
    pl->res = (size_t *)(void *)p;
    p += (size_t)n * sizeof(size_t);
    pl->snd = (stage_hello_t *)(void *)p;
    p += (size_t)n * sizeof(stage_hello_t);
    pl->rcv = (stage_hello_t *)(void *)p;
    p += (size_t)n * sizeof(stage_hello_t);
    pl->flag = (uint64_t *)(void *)p;
    return pl;
}

/* Every rank sends `bytes` at sbuf + v * sstride to every peer v and
 * receives as many from each into rbuf + v * rstride. */
static mc_status_t stage_exchange(mc_cctx_t *cx, uint32_t step,
                                  const char *sbuf, size_t sstride,
                                  size_t bytes, char *rbuf, size_t rstride)
{
    int n = mc_cx_size(cx), r = mc_cx_rank(cx);
    mc_status_t st;
    mc_fh_t h;
    for (int v = 0; v < n; v++) {
        if (v == r) continue;
        st = mc_cx_irecv(cx, v, step, rbuf ? rbuf + (size_t)v * rstride : NULL,
                         bytes, &h);
        if (st < 0) return st;
    }
    for (int d = 1; d < n; d++) { /* r+1 first: everyone starts elsewhere */
        int v = (r + d) % n;
        st = mc_cx_isend(cx, v, step, sbuf ? sbuf + (size_t)v * sstride : NULL,
                         bytes, &h);
        if (st < 0) return st;
    }
    return mc_cx_waitall(cx);
}

/* Every rank sends each peer its step-0/1 frame (pl->snd[v]) and receives
 * theirs into pl->rcv. */
static mc_status_t stage_hello(mc_cctx_t *cx, uint32_t step, stage_plan_t *pl)
{
    return stage_exchange(cx, mc_algo_step(MC_PH_STAGE, step, 0),
                          (const char *)pl->snd, sizeof(stage_hello_t),
                          sizeof(stage_hello_t), (char *)pl->rcv,
                          sizeof(stage_hello_t));
}

/* Map every peer region described in pl->rcv that this process does not
 * hold yet (or holds an old mapping of), for this call or the next. Not
 * without a region of our own: then no call can stage. */
static void stage_learn_peers(mc_cctx_t *cx, stage_plan_t *pl, int have_own)
{
    int n = mc_cx_size(cx), r = mc_cx_rank(cx);
    for (int v = 0; v < n && have_own; v++) {
        const mc_stage_info_t *pi = &pl->rcv[v].info;
        uint64_t rid, size;
        if (v == r || !pi->rid) continue;
        (void)mc_cx_stage_cached(cx, v, &rid, &size);
        if (rid == pi->rid) continue;
        MC_LOG(MC_LOG_DEBUG,
               "allreduce: mapping rank %d's staging region (%llu bytes)",
               mc_cx_slot(cx, v), (unsigned long long)pi->size);
        (void)mc_cx_stage_peer(cx, v, pi);
    }
}

static void stage_commit(mc_cctx_t *cx)
{
    /* the call's own arguments: algo/view.c's are gone by now */
    const mc_coll_args_t *a = mc_cx_args(cx);
    int n = mc_cx_size(cx), r = mc_cx_rank(cx);
    size_t es = mc_dtype_size(a->dtype);
    mc_blocks_t bl = {.n = n, .total = a->count};
    stage_plan_t *pl = mc_cx_scratch(cx, 3, 1); /* already that large */
    if (pl->out == STAGE_OUT_NONE) return;
    if (pl->out == STAGE_OUT_OWN) {
        MC_FAULT_POINT("allreduce.stage.commit");
        if (pl->own)
            stage_copy(a->recvbuf, pl->reg[r] + pl->res[r], pl->own, pl->msg);
        return;
    }
    for (int v = 0; v < n; v++) {
        size_t off, len;
        mc_blocks_get(&bl, v, &off, &len);
        if (v == 1) MC_FAULT_POINT("allreduce.stage.commit");
        if (len)
            stage_copy(mc_algo_at(a->recvbuf, off, es), pl->reg[v] + pl->res[v],
                       len * es, pl->msg);
    }
}

/* Offset of sender's input slot in owner's region (layout above). */
static size_t in_slot(int sender, int owner, int n, size_t cap)
{
    return (size_t)((sender - owner - 1 + n) % n) * cap;
}

mc_status_t mc_algo_allreduce_stage(mc_cctx_t *cx)
{
    const mc_coll_args_t *a = mc_cx_args(cx);
    int n = mc_cx_size(cx), r = mc_cx_rank(cx);
    size_t es = mc_dtype_size(a->dtype);
    mc_blocks_t bl = stage_blocks(a, n);
    const char *in = a->sendbuf;
    size_t off, len;
    mc_status_t st;
    int rs =
        a->coll == MC_COLL_REDUCE_SCATTER || a->coll == MC_COLL_REDUCE_SCATTERV;

    stage_plan_t *pl = stage_plan(cx, n);
    if (!pl) return MC_ERR_NO_MEMORY;
    mc_blocks_get(&bl, r, &off, &len);
    pl->out = rs                                          ? STAGE_OUT_OWN
              : a->coll != MC_COLL_REDUCE || a->root == r ? STAGE_OUT_ALL
                                                          : STAGE_OUT_NONE;
    pl->own = len * es;
    pl->msg = 0;
    for (int v = 0; v < n; v++) {
        mc_blocks_get(&bl, v, &off, &len);
        pl->msg += len * es;
    }
    pl->cap = (mc_blocks_max(&bl) * es + 63) & ~(size_t)63;
    size_t need = pl->cap * (size_t)n;

    /* 1. own region; put into the peers' regions as we know them; tell */
    mc_stage_info_t own = {0};
    pl->reg[r] = MC_FAULT_FAIL("allreduce.stage.own")
                     ? NULL /* tests: as if no staging memory were had */
                     : mc_cx_stage_own(cx, need, &own);
    if (pl->reg[r]) pl->res[r] = (size_t)own.size - MC_STAGE_HDR - pl->cap;
    for (int v = 0; v < n; v++)
        pl->snd[v] = (stage_hello_t){.info = own, .used = 0};
    if (mc_cx_stage_learn(cx, need)) {
        /* 0. a new view, or larger than ever: regions may be new. Describe
         * them first (one round more), so that this call stages too. */
        if ((st = stage_hello(cx, 0, pl)) < 0) return st;
        stage_learn_peers(cx, pl, pl->reg[r] != NULL);
    }
    for (int d = 1; d < n; d++) {
        int v = (r + d) % n;
        uint64_t rid, size;
        pl->reg[v] = mc_cx_stage_cached(cx, v, &rid, &size);
        if (!pl->reg[v] || size < (uint64_t)need + MC_STAGE_HDR) continue;
        pl->snd[v].used = rid;
        pl->res[v] = (size_t)size - MC_STAGE_HDR - pl->cap;
        char *slot = pl->reg[v] + in_slot(r, v, n, pl->cap);
        mc_blocks_get(&bl, v, &off, &len);
        /* in two halves, with a fault point between them */
        size_t h1 = len / 2;
        if (h1) stage_copy(slot, mc_algo_cat(in, off, es), h1 * es, pl->msg);
        if (d == 1) MC_FAULT_POINT("allreduce.stage.put");
        if (len - h1)
            stage_copy(slot + h1 * es, mc_algo_cat(in, off + h1, es),
                       (len - h1) * es, pl->msg);
    }
    if ((st = stage_hello(cx, 1, pl)) < 0) return st;
    /* Every peer must have put into our current region (then it also
     * has our input's room). Our own put missing a peer's region makes
     * that peer's flag zero anyway; we skip a reduction that would be
     * thrown away. */
    uint64_t ok = pl->reg[r] != NULL;
    for (int v = 0; v < n; v++)
        if (v != r)
            ok &= pl->rcv[v].used == own.rid &&
                  pl->snd[v].used == pl->rcv[v].info.rid;
    stage_learn_peers(cx, pl, pl->reg[r] != NULL);

    /* 2. our block: own input with every peer's contribution */
    mc_blocks_get(&bl, r, &off, &len);
    char *res = ok ? pl->reg[r] + pl->res[r] : NULL;
    size_t ce = STAGE_REDUCE_CHUNK / es ? STAGE_REDUCE_CHUNK / es : 1;
    for (size_t c = 0; ok && c < len; c += ce) {
        size_t k = len - c < ce ? len - c : ce;
        if (c == (len / ce / 2) * ce) MC_FAULT_POINT("allreduce.stage.reduce");
        const char *mine = mc_algo_cat(in, off + c, es);
        int first = 1;
        for (int v = 0; v < n; v++) {
            if (v == r) continue;
            const char *theirs =
                pl->reg[r] + in_slot(v, r, n, pl->cap) + c * es;
            mc_reduce(res + c * es, first ? mine : res + c * es, theirs, k,
                      a->dtype, a->op);
            first = 0;
        }
        if (a->op == MC_AVG)
            mc_reduce_div(res + c * es, k, a->dtype, (uint64_t)n);
    }
    pl->flag[r] = ok;
    st = stage_exchange(cx, mc_algo_step(MC_PH_STAGE, 2, 0),
                        (const char *)&pl->flag[r], 0, sizeof(uint64_t),
                        (char *)pl->flag, sizeof(uint64_t));
    if (st < 0) return st;
    for (int v = 0; v < n; v++)
        if (!pl->flag[v]) {
            MC_FAULT_POINT("allreduce.stage.fallback");
            return rs ? mc_algo_reduce_scatterv_ring(cx)
                   : a->coll == MC_COLL_REDUCE ? mc_algo_reduce_chain(cx)
                                               : mc_algo_allreduce_ring(cx);
        }

    MC_FAULT_POINT("allreduce.stage.done");
    /* 3. every result exists: copy out once the op is decided */
    mc_cx_on_commit(cx, stage_commit);
    return MC_OK;
}
