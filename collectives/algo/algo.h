/*
 * Internal to collectives/algo/: helpers shared by the algorithm files and
 * the algorithms that coll.h does not declare. Only the algorithm files
 * include this.
 *
 * Conventions of every algorithm here
 * - Frame `step` numbers come from mc_algo_step(phase, step, index): the
 *   phase names the algorithm (so ranks that picked different algorithms
 *   fail the engine's step check instead of exchanging garbage), step and
 *   index are computed identically by sender and receiver. The fields wrap
 *   on absurdly long operations, which only weakens the check.
 * - Zero-length blocks still send their (zero-byte) frame, so the chain of
 *   frames that carries the mismatch check is never cut.
 * - Every algorithm ends with mc_cx_waitall so that the operation completes
 *   only once every frame it posted has.
 */
#ifndef MC_ALGO_H
#define MC_ALGO_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "chunk.h"
#include "coll.h"
#include "mc_log.h"
#include "reduce.h"

enum {
    MC_PH_BARRIER = 1,
    MC_PH_RD = 2,   /* allreduce, recursive doubling */
    MC_PH_RING = 3, /* allreduce, ring */
    MC_PH_ALLGATHER = 4,
    MC_PH_RSCATTER = 5,
    MC_PH_BCAST_TREE = 6,
    MC_PH_BCAST_CHAIN = 7,
    MC_PH_REDUCE_TREE = 8,
    MC_PH_REDUCE_CHAIN = 9,
    MC_PH_GATHER = 10,
    MC_PH_SCATTER = 11,
    MC_PH_ALLTOALL = 12,
    MC_PH_STAGE = 13, /* allreduce through staging memory */
};

/* Receives posted ahead of the one being processed in pipelined loops. */
#define MC_ALGO_LOOKAHEAD 3
/* Pairwise all-to-all steps in flight at once. */
#define MC_ALGO_A2A_WINDOW 4
/* Pipeline chunk when the tuning says 0. */
#define MC_ALGO_DEFAULT_CHUNK_BYTES ((size_t)512 * 1024)

/* 4-bit phase | 12-bit step | 16-bit index. */
static inline uint32_t mc_algo_step(unsigned phase, size_t step, size_t idx)
{
    return ((uint32_t)(phase & 0xfu) << 28) |
           ((uint32_t)(step & 0xfffu) << 16) | (uint32_t)(idx & 0xffffu);
}

/* base + elems elements, without arithmetic on NULL (zero-count calls may
 * pass NULL buffers). */
static inline char *mc_algo_at(void *base, size_t elems, size_t es)
{
    return base ? (char *)base + elems * es : NULL;
}

static inline const char *mc_algo_cat(const void *base, size_t elems, size_t es)
{
    return base ? (const char *)base + elems * es : NULL;
}

/* Local copy; no-op when empty or already in place. */
static inline void mc_algo_copy(void *dst, const void *src, size_t bytes)
{
    if (bytes && dst != src) memmove(dst, src, bytes);
}

static inline int mc_algo_mod(long long a, int n)
{
    long long m = a % n;
    return (int)(m < 0 ? m + n : m);
}

/* Pipeline chunk in elements (at least one). */
static inline size_t mc_algo_chunk_elems(mc_cctx_t *cx, size_t es)
{
    size_t cb = mc_cx_tune(cx)->chunk_bytes;
    size_t ce = (cb ? cb : MC_ALGO_DEFAULT_CHUNK_BYTES) / es;
    return ce ? ce : 1;
}

/* mc_cx_scratch for `bytes` (at least 1), recording the failure. */
static inline void *mc_algo_scratch(mc_cctx_t *cx, int slot, size_t bytes)
{
    void *p = mc_cx_scratch(cx, slot, bytes ? bytes : 1);
    if (!p)
        mc_err(MC_ERR_NO_MEMORY,
               "collective scratch of %zu bytes: out of "
               "memory",
               bytes);
    return p;
}

/*
 * The blocks of a ring: either `total` elements split evenly over n
 * (counts == NULL; allreduce, and allgather/reduce_scatter with
 * total = n*count) or explicit counts/displs (the v-variants).
 */
typedef struct mc_blocks {
    int n;
    size_t total;
    const size_t *counts, *displs;
} mc_blocks_t;

static inline void mc_blocks_get(const mc_blocks_t *bl, int b, size_t *off_p,
                                 size_t *len_p)
{
    if (bl->counts) {
        *off_p = bl->displs[b];
        *len_p = bl->counts[b];
    } else {
        mc_block_range(bl->total, (size_t)bl->n, (size_t)b, off_p, len_p);
    }
}

static inline size_t mc_blocks_max(const mc_blocks_t *bl)
{
    size_t m = 0, off, len;
    for (int b = 0; b < bl->n; b++) {
        mc_blocks_get(bl, b, &off, &len);
        if (len > m) m = len;
    }
    return m;
}

/*
 * Walks the (ring step, chunk) items a rank receives, in the order its ring
 * predecessor sends them: at step g the block is (rank - g - shift) mod n,
 * split into chunks of `ce` elements (an empty block is one empty chunk).
 * `k` numbers the items 0, 1, ... in that order.
 */
typedef struct mc_ring_cur {
    const mc_blocks_t *bl;
    int rank, shift;
    size_t nsteps, ce;
    size_t k, g, c, nck;
    int blk;
    size_t boff, blen; /* the block */
    size_t off, len;   /* the chunk, in elements from the buffer start */
} mc_ring_cur_t;

static inline void mc_ring_cur_load_(mc_ring_cur_t *cu)
{
    size_t coff, clen;
    if (cu->g >= cu->nsteps) return;
    if (cu->c == 0) {
        cu->blk = mc_algo_mod(
            (long long)cu->rank - (long long)cu->g - cu->shift, cu->bl->n);
        mc_blocks_get(cu->bl, cu->blk, &cu->boff, &cu->blen);
        cu->nck = mc_chunk_count(cu->blen, cu->ce);
    }
    mc_chunk_range(cu->blen, cu->ce, cu->c, &coff, &clen);
    cu->off = cu->boff + coff;
    cu->len = clen;
}

static inline void mc_ring_cur_init(mc_ring_cur_t *cu, const mc_blocks_t *bl,
                                    int rank, int shift, size_t nsteps,
                                    size_t ce)
{
    memset(cu, 0, sizeof(*cu));
    cu->bl = bl;
    cu->rank = rank;
    cu->shift = shift;
    cu->nsteps = nsteps;
    cu->ce = ce;
    mc_ring_cur_load_(cu);
}

static inline int mc_ring_cur_valid(const mc_ring_cur_t *cu)
{
    return cu->g < cu->nsteps;
}

static inline void mc_ring_cur_next(mc_ring_cur_t *cu)
{
    cu->k++;
    if (++cu->c >= cu->nck) {
        cu->c = 0;
        cu->g++;
    }
    mc_ring_cur_load_(cu);
}

/* Algorithms not declared in coll.h (select.c dispatches to them). */
mc_status_t mc_algo_allgatherv_ring(mc_cctx_t *cx);
mc_status_t mc_algo_reduce_scatterv_ring(mc_cctx_t *cx);
mc_status_t mc_algo_broadcast_tree(mc_cctx_t *cx);
mc_status_t mc_algo_broadcast_chain(mc_cctx_t *cx);
mc_status_t mc_algo_reduce_tree(mc_cctx_t *cx);
mc_status_t mc_algo_reduce_chain(mc_cctx_t *cx);
mc_status_t mc_algo_gather_direct(mc_cctx_t *cx);
mc_status_t mc_algo_scatter_direct(mc_cctx_t *cx);
mc_status_t mc_algo_alltoallv_pairwise(mc_cctx_t *cx);

/* An in-place reduction whose input must survive until the op is decided
 * (fault tolerance keeps it for a re-run, mc_cx_keeping) writes the
 * caller's buffer only at the commit: the plan lies in scratch slot 2 and
 * mc_algo_reduce_commit (allreduce.c, given to mc_cx_on_commit) does
 * out = x op y, then divides by n for MC_AVG; or out = x when y is NULL. */
typedef struct mc_reduce_plan {
    const char *x, *y;
    int n; /* ranks of the attempt's view */
} mc_reduce_plan_t;
void mc_algo_reduce_commit(mc_cctx_t *cx);

/* Two ranks, data flowing from view rank data_from to the other: posts the
 * empty frame back that stands for the opening dissemination barrier
 * (barrier.c). */
mc_status_t mc_algo_pair_start(mc_cctx_t *cx, int data_from, unsigned phase);

#endif /* MC_ALGO_H */
