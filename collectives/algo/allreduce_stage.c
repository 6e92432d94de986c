/*
 * In-place allreduce through shared staging memory (every rank of the view
 * on one host, fault tolerance on; see select.c for when it runs).
 *
 * Why: in place, the ring overwrites the caller's input while the
 * operation may still have to be re-run over a smaller view, so with fault
 * tolerance on the engine must keep a copy of the input (mc_cx_save): one
 * extra write of the whole message. Here the caller's buffer is only read
 * until the operation is decided; results wait in staging memory that
 * every rank of the host maps, and are copied into the caller's buffer at
 * the end. That copy replaces the ring's allgather copies, so fault
 * tolerance keeps nothing and costs nothing extra.
 *
 * Layout: rank r's region (stage.h) holds n slots of `cap` bytes (the
 * largest block, rounded up to 64 bytes). Slot v != r receives rank v's
 * input block r; slot r holds rank r's result block r.
 *
 * Steps (frames of phase MC_PH_STAGE; every rank sends every peer one frame
 * per step, so the group moves in lock step and a dead peer fails the step
 * like any transfer):
 *  0. make sure the own region is large enough and of this view (a new view
 *     gets a new region, so a removed process that still writes through an
 *     old mapping never touches it); send its description to every peer.
 *  1. map every peer's region (cached while its id stays), then put our
 *     input block q into slot r of rank q's region, for every q; send
 *     "put done" with a flag saying whether all of that worked. If any rank
 *     lacks a region or a mapping, every rank sees a zero flag and the
 *     whole group runs the ring instead (the same decision everywhere).
 *  2. reduce block r: our own input block r with slot v for every v, in
 *     vrank order, chunk by chunk (the chunk stays in the cache across the
 *     n-1 passes); AVG divides once at the end of each chunk. Send "out
 *     done".
 *  3. after every peer's "out done" every result block exists in shared
 *     memory: the algorithm returns, and the engine runs the final barrier
 *     and then the commit (stage_commit), which copies block v from slot v
 *     of rank v's region into the caller's buffer. If ranks die after step
 *     3 and the survivors agree that the group completed the op, the commit
 *     still runs: a dead rank's region stays mapped.
 *
 * Buffer safety between operations: a rank writes into a peer's region
 * (step 1) only after that peer's step-0 frame of the same operation, which
 * the peer sends after committing its previous operation; and a rank
 * overwrites its own result slot (step 2) only after every peer's step-1
 * frame, which each sends after committing the previous operation. So no
 * region is written while someone still reads it.
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

typedef struct stage_plan {
    size_t cap;   /* slot bytes */
    char **reg;   /* [n] each rank's region (own included) */
    mc_stage_info_t *info; /* [n] */
    uint64_t *flag;        /* [n] step-1 flags */
} stage_plan_t;

static stage_plan_t *stage_plan(mc_cctx_t *cx, int n)
{
    size_t bytes = sizeof(stage_plan_t) + (size_t)n * sizeof(char *) +
                   (size_t)n * sizeof(mc_stage_info_t) +
                   (size_t)n * sizeof(uint64_t);
    char *p = mc_algo_scratch(cx, 3, bytes);
    if (!p) return NULL;
    stage_plan_t *pl = (stage_plan_t *)(void *)p;
    p += sizeof(*pl);
    pl->reg = (char **)(void *)p;
    p += (size_t)n * sizeof(char *);
    pl->info = (mc_stage_info_t *)(void *)p;
    p += (size_t)n * sizeof(mc_stage_info_t);
    pl->flag = (uint64_t *)(void *)p;
    return pl;
}

/* Every rank sends `sbytes` at sbuf to every peer and receives `rbytes`
 * from each into rbuf + v * rstride. */
static mc_status_t stage_exchange(mc_cctx_t *cx, uint32_t step,
                                  const void *sbuf, size_t sbytes, char *rbuf,
                                  size_t rstride)
{
    int n = mc_cx_size(cx), r = mc_cx_rank(cx);
    mc_status_t st;
    mc_fh_t h;
    for (int v = 0; v < n; v++) {
        if (v == r) continue;
        st = mc_cx_irecv(cx, v, step, rbuf ? rbuf + (size_t)v * rstride : NULL,
                         sbytes, &h);
        if (st < 0) return st;
    }
    for (int d = 1; d < n; d++) { /* r+1 first: everyone starts elsewhere */
        int v = (r + d) % n;
        st = mc_cx_isend(cx, v, step, sbuf, sbytes, &h);
        if (st < 0) return st;
    }
    return mc_cx_waitall(cx);
}

static void stage_commit(mc_cctx_t *cx)
{
    const mc_coll_args_t *a = mc_cx_args(cx);
    int n = mc_cx_size(cx);
    size_t es = mc_dtype_size(a->dtype);
    mc_blocks_t bl = {.n = n, .total = a->count};
    stage_plan_t *pl = mc_cx_scratch(cx, 3, 1); /* already that large */
    for (int v = 0; v < n; v++) {
        size_t off, len;
        mc_blocks_get(&bl, v, &off, &len);
        if (v == 1) MC_FAULT_POINT("allreduce.stage.commit");
        if (len)
            stage_copy(mc_algo_at(a->recvbuf, off, es),
                       pl->reg[v] + (size_t)v * pl->cap, len * es,
                       a->count * es);
    }
}

mc_status_t mc_algo_allreduce_stage(mc_cctx_t *cx)
{
    const mc_coll_args_t *a = mc_cx_args(cx);
    int n = mc_cx_size(cx), r = mc_cx_rank(cx);
    size_t es = mc_dtype_size(a->dtype);
    mc_blocks_t bl = {.n = n, .total = a->count};
    const char *in = a->sendbuf;
    size_t off, len;
    mc_status_t st;

    stage_plan_t *pl = stage_plan(cx, n);
    if (!pl) return MC_ERR_NO_MEMORY;
    pl->cap = (mc_blocks_max(&bl) * es + 63) & ~(size_t)63;
    size_t need = pl->cap * (size_t)n;

    /* 0. own region, described to every peer */
    pl->reg[r] = mc_cx_stage_own(cx, need, &pl->info[r]);
    st = stage_exchange(cx, mc_algo_step(MC_PH_STAGE, 0, 0), &pl->info[r],
                        sizeof(mc_stage_info_t), (char *)pl->info,
                        sizeof(mc_stage_info_t));
    if (st < 0) return st;

    /* 1. map, put, tell */
    uint64_t ok = pl->reg[r] != NULL;
    for (int v = 0; v < n && ok; v++) {
        if (v == r) continue;
        if (!pl->info[v].rid) { /* it has none, and said why in its log */
            ok = 0;
            break;
        }
        if (pl->info[v].size < (uint64_t)need + MC_STAGE_HDR) {
            MC_LOG(MC_LOG_WARN,
                   "allreduce: rank %d's staging region is smaller (%llu "
                   "bytes) than the %zu this call needs; using the ring",
                   mc_cx_slot(cx, v), (unsigned long long)pl->info[v].size,
                   need);
            ok = 0;
            break;
        }
        pl->reg[v] = mc_cx_stage_peer(cx, v, &pl->info[v]);
        if (!pl->reg[v]) ok = 0;
    }
    if (ok)
        for (int d = 1; d < n; d++) {
            int v = (r + d) % n;
            mc_blocks_get(&bl, v, &off, &len);
            /* in two halves, with a fault point between them */
            size_t h1 = len / 2;
            if (h1)
                stage_copy(pl->reg[v] + (size_t)r * pl->cap,
                           mc_algo_cat(in, off, es), h1 * es, a->count * es);
            if (d == 1) MC_FAULT_POINT("allreduce.stage.put");
            if (len - h1)
                stage_copy(pl->reg[v] + (size_t)r * pl->cap + h1 * es,
                           mc_algo_cat(in, off + h1, es), (len - h1) * es,
                           a->count * es);
        }
    pl->flag[r] = ok;
    st = stage_exchange(cx, mc_algo_step(MC_PH_STAGE, 1, 0), &pl->flag[r],
                        sizeof(uint64_t), (char *)pl->flag, sizeof(uint64_t));
    if (st < 0) return st;
    for (int v = 0; v < n; v++)
        if (!pl->flag[v]) return mc_algo_allreduce_ring(cx);

    /* 2. our block: own input with every peer's contribution */
    mc_blocks_get(&bl, r, &off, &len);
    char *res = pl->reg[r] + (size_t)r * pl->cap;
    size_t ce = STAGE_REDUCE_CHUNK / es ? STAGE_REDUCE_CHUNK / es : 1;
    for (size_t c = 0; c < len; c += ce) {
        size_t k = len - c < ce ? len - c : ce;
        if (c == (len / ce / 2) * ce) MC_FAULT_POINT("allreduce.stage.reduce");
        const char *mine = mc_algo_cat(in, off + c, es);
        int first = 1;
        for (int v = 0; v < n; v++) {
            if (v == r) continue;
            const char *theirs = pl->reg[r] + (size_t)v * pl->cap + c * es;
            mc_reduce(res + c * es, first ? mine : res + c * es, theirs, k,
                      a->dtype, a->op);
            first = 0;
        }
        if (a->op == MC_AVG)
            mc_reduce_div(res + c * es, k, a->dtype, (uint64_t)n);
    }
    st = stage_exchange(cx, mc_algo_step(MC_PH_STAGE, 2, 0), NULL, 0, NULL, 0);
    if (st < 0) return st;

    MC_FAULT_POINT("allreduce.stage.done");
    /* 3. every result exists: copy out once the op is decided */
    mc_cx_on_commit(cx, stage_commit);
    return MC_OK;
}
