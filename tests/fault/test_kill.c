/*
 * Fault tests with real process deaths (docs/fault-model.md): rank processes
 * run a loop of collectives while the parent SIGKILLs some of them at a
 * random (seeded) moment, or a rank leaves at an operation boundary.
 *
 * Every step is one collective call. Inputs are a function of (rank, step,
 * index) chosen so the output reveals who contributed: int64 SUM/AVG of
 * (1 << rank) * g(step, i) give the contributor bitmask times g; gathered
 * and all-to-all blocks carry their source rank; a float64 SUM of
 * irrational-looking values checks bit-identical results. Each rank records
 * per step (status, the op view's epoch and active mask, wrong elements
 * against the reference over that active set, a hash of the output) into a
 * table in MAP_SHARED memory; the parent checks after the children end:
 *   - auto mode: every survivor completed every step with MC_OK, each
 *     result equals the reference over that step's op-view active set
 *     (guarantee 3: no partial data of a dead rank), the survivors agree on
 *     view and result hash per step (guarantee 2), views only grow in epoch,
 *     and after the kill the view has exactly the survivors, at epoch
 *     1 + the number of view changes the scenario forces;
 *   - manual mode: every survivor gets MC_ERR_PEER_FAILED on the same step,
 *     mc_comm_failed_ranks names the killed ranks, calls fail until
 *     mc_comm_recover, then the loop goes on over the survivors;
 *   - broadcast from a killed root: MC_ERR_ROOT_FAILED on every survivor;
 *   - MOONCAKE_FT=0: every survivor's call fails, boundedly.
 *
 * Seeds: MC_KILL_SEED=<n> fixes the base seed (printed at start; each
 * scenario's seed derives from it and the scenario name, and is printed
 * with every failure). MC_KILL_REPEAT=<n> runs every scenario n times
 * (default 2, with different seeds);
 * MC_KILL_ONLY=<pattern> (cmocka's test filter, '*' and '?') picks scenarios.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "collectives/ref.h" /* ref_ulp, fp16 conversions */
#include "tests_common.h"

#define KT_MAXR 8
#define KT_MAXSTEP 200
#define KT_MAXOPS 9
#define KT_POISON 0x5A5A5A5A5A5A5A5AULL
#define KT_OP_TIMEOUT_MS 15000 /* a hang fails the op long before ... */
#define KT_DEADLINE_S 60       /* ... the parent gives up on the scenario */
#define KT_FT0_FAIL_S 5.0      /* FT off: a survivor's call fails by then */

/* ------------------------------------------------------------------------ */
/* Scenarios                                                                */
/* ------------------------------------------------------------------------ */

typedef enum {
    KO_AR,  /* allreduce int64 SUM of (1<<r)*g */
    KO_AVG, /* allreduce int64 AVG of (1<<r)*g */
    KO_F64, /* allreduce float64 SUM, bit-identical check */
    KO_AG,  /* allgather int64 of enc(r) */
    KO_RS,  /* reduce_scatter int64 SUM */
    KO_BC,  /* broadcast int64 */
    KO_A2A, /* alltoall int64 */
    KO_BAR, /* barrier */
    KO_RED, /* reduce int64 SUM to rank 0 */
    KO_A2AV, /* alltoallv int64, even counts: KO_A2A through the v call */
    KO_GA,  /* gather int64 of enc(r) to rank 0 */
    KO_RAVG, /* reduce int64 AVG to rank 0 */
    KO_SC,  /* scatter int64 of enc2(0, r) from rank 0 */
    KO_H16, /* allreduce fp16 AVG (each rank divides first), within bounds */
} kt_opk_t;

static const char *const opk_names[] = {
    [KO_AR] = "allreduce(i64,sum)",  [KO_AVG] = "allreduce(i64,avg)",
    [KO_F64] = "allreduce(f64,sum)", [KO_AG] = "allgather",
    [KO_RS] = "reduce_scatter",      [KO_BC] = "broadcast",
    [KO_A2A] = "alltoall",           [KO_BAR] = "barrier",
    [KO_RED] = "reduce(i64,sum)",    [KO_A2AV] = "alltoallv",
    [KO_GA] = "gather",              [KO_SC] = "scatter",
    [KO_RAVG] = "reduce(i64,avg)",   [KO_H16] = "allreduce(f16,avg)",
};

#define KT_ROOT_VICTIM (-1) /* the broadcast root is the (first) victim */

typedef struct kt_op {
    kt_opk_t k;
    size_t n; /* count as passed to the call */
    int root; /* KO_BC */
} kt_op_t;

typedef enum {
    W_AR_BIG,   /* one large allreduce per step */
    W_AR_SMALL, /* int64 sum, float64 sum, int64 avg, fp16 avg */
    W_AG,
    W_RS,
    W_BC,
    W_A2A,
    W_A2AV,
    W_BAR,
    W_MIX,         /* every collective in turn */
    W_BC_DEADROOT, /* broadcast from the victim, then an allreduce */
    W_RED,         /* one reduce to rank 0 per step */
    W_RAVG,        /* one reduce AVG to rank 0 per step */
    W_GA,          /* one gather to rank 0 per step */
    W_SC,          /* one scatter from rank 0 per step */
    W_AR_MID,      /* int64 sum of big, int64 avg of big - big / 4 */
} kt_work_t;

typedef enum {
    K_RANDOM,   /* SIGKILL one rank at a random moment */
    K_BOUNDARY, /* one rank _exit()s before issuing step k */
    K_TWO,      /* SIGKILL two ranks at once */
    K_SECOND,   /* SIGKILL one, wait for epoch 2, SIGKILL another */
    K_NONE,     /* healthy control */
    K_SHRINK,   /* one rank leaves at step k, the rest mc_comm_shrink it */
    K_INJECT,   /* SIGKILL at an exact point inside the call (sc->inject) */
    K_LEFT,     /* K_INJECT at ft.barrier.mid after signalling its right
                   neighbour only; that neighbour, which can then leave the
                   barrier, SIGKILLs itself right after returning the step */
    K_RETURN,   /* the victim SIGKILLs itself right after it returned step k
                   (guarantee 2 holds for it: the survivors complete step k
                   in the view it reported) */
} kt_kill_t;

typedef struct kt_scn {
    const char *name;
    int size;
    mc_transport_kind_t tr;
    kt_work_t work;
    kt_kill_t kill;
    int victim; /* -1: random */
    int manual; /* auto_recover = 0 */
    int ft0;    /* cfg.ft = 0 */
    int steps;
    size_t big;  /* element count of the large op of the workload */
    int pace_us; /* random sleep in [0, pace_us) before every call */
    /* K_INJECT: the engine's fault point (MOONCAKE_FAULT_INJECT) at which
     * the victim SIGKILLs itself, in its call of step at_step */
    const char *inject;
} kt_scn_t;

#define SHM MC_TRANSPORT_SHM
#define TCP MC_TRANSPORT_TCP
#define MiB8 ((size_t)1 << 20) /* int64 elements in 8 MiB */

/* clang-format off */
static const kt_scn_t scenarios[] = {
  /* name                    n  tr   work           kill        vic man ft0 steps big        pace */
  /* healthy controls: the checker itself, FT on and off; holes by shrink */
    {"none_mix_shm_4",        4, SHM, W_MIX,         K_NONE,     -1, 0, 0,  24, 0,         300, NULL},
    {"none_ft0_mix_tcp_3",    3, TCP, W_MIX,         K_NONE,     -1, 0, 1,  16, 0,         300, NULL},
    {"shrink_mix_shm_4",      4, SHM, W_MIX,         K_SHRINK,   -1, 0, 0,  32, 0,         300, NULL},
  /* kill during a large allreduce, mid-transfer */
    {"ar_big_shm_4",          4, SHM, W_AR_BIG,      K_RANDOM,   -1, 0, 0,  16, 2 * MiB8,  0, NULL},
    {"ar_big_tcp_3",          3, TCP, W_AR_BIG,      K_RANDOM,   -1, 0, 0,  16, MiB8,      0, NULL},
    {"ar_big_shm_2",          2, SHM, W_AR_BIG,      K_RANDOM,   -1, 0, 0,  16, 2 * MiB8,  0, NULL},
  /* kill during small and other collectives */
    {"ar_small_shm_8",        8, SHM, W_AR_SMALL,    K_RANDOM,   -1, 0, 0,  90, 0,         300, NULL},
    {"ar_small_tcp_2",        2, TCP, W_AR_SMALL,    K_RANDOM,   -1, 0, 0,  90, 0,         300, NULL},
  /* two ranks on one host: no final barrier, the exchange confirms (pair
   * confirmation). Random kills; and a victim that returns a step and dies
   * while the survivor, which has sent its part, sleeps 100 ms at the
   * point before it reads the victim's (sc->inject, on the survivor): it
   * must complete the step in the victim's view. Over TCP too: there the
   * victim returns only once the survivor's kernel acknowledged its
   * part. */
    {"ar_small_shm_2",        2, SHM, W_AR_SMALL,    K_RANDOM,   -1, 0, 0,  90, 0,         300, NULL},
    {"ret_small_shm_2",       2, SHM, W_AR_SMALL,    K_RETURN,   -1, 0, 0,  12, 0,         0, "cx.sendrecv.posted"},
    {"ret_small_tcp_2",       2, TCP, W_AR_SMALL,    K_RETURN,   -1, 0, 0,  12, 0,         0, "cx.sendrecv.sent"},
    /* the other exchanges that confirm a 2-rank op (one frame each way) */
    {"allgather_shm_2",       2, SHM, W_AG,          K_RANDOM,   -1, 0, 0,  40, 4099,      300, NULL},
    {"rs_ring_shm_2",         2, SHM, W_RS,          K_RANDOM,   -1, 0, 0,  40, 4099,      300, NULL},
    {"alltoall_shm_2",        2, SHM, W_A2A,         K_RANDOM,   -1, 0, 0,  40, 1023,      300, NULL},
    {"ret_ag_shm_2",          2, SHM, W_AG,          K_RETURN,   -1, 0, 0,  12, 4099,      0, "allgather.sent"},
    {"ret_rs_shm_2",          2, SHM, W_RS,          K_RETURN,   -1, 0, 0,  12, 4099,      0, "reduce_scatter.sent"},
    {"ret_a2a_shm_2",         2, SHM, W_A2A,         K_RETURN,   -1, 0, 0,  12, 1023,      0, "alltoall.posted"},
    /* the same over TCP: a rank returns only once the peer's kernel
     * acknowledged its part (transport sent_held). A TCP post only queues
     * (progress writes), so the survivor is held at a *.sent point, once
     * its part was written: the victim can then return and die while the
     * survivor sleeps, and the survivor reads the dead victim's frame */
    {"allgather_tcp_2",       2, TCP, W_AG,          K_RANDOM,   -1, 0, 0,  40, 4099,      300, NULL},
    {"rs_ring_tcp_2",         2, TCP, W_RS,          K_RANDOM,   -1, 0, 0,  40, 4099,      300, NULL},
    {"alltoall_tcp_2",        2, TCP, W_A2A,         K_RANDOM,   -1, 0, 0,  40, 1023,      300, NULL},
    {"ret_ag_tcp_2",          2, TCP, W_AG,          K_RETURN,   -1, 0, 0,  12, 4099,      0, "allgather.sent"},
    {"ret_rs_tcp_2",          2, TCP, W_RS,          K_RETURN,   -1, 0, 0,  12, 4099,      0, "reduce_scatter.sent"},
    {"ret_a2a_tcp_2",         2, TCP, W_A2A,         K_RETURN,   -1, 0, 0,  12, 1023,      0, "alltoall.sent"},
    /* two ranks, data one way (broadcast, reduce, gather, scatter): an
     * empty frame back stands for the opening barrier and confirms the op
     * (mc_algo_pair_start) */
    {"bcast_shm_2",           2, SHM, W_BC,          K_RANDOM,   -1, 0, 0,  40, 1023,      300, NULL},
    {"reduce_shm_2",          2, SHM, W_RED,         K_RANDOM,   -1, 0, 0,  40, 1023,      300, NULL},
    {"mix_shm_2",             2, SHM, W_MIX,         K_RANDOM,   -1, 0, 0,  64, 0,         300, NULL},
    {"mix_tcp_2",             2, TCP, W_MIX,         K_RANDOM,   -1, 0, 0,  64, 0,         300, NULL},
    {"deadroot_shm_2",        2, SHM, W_BC_DEADROOT, K_RANDOM,   -1, 0, 0,  60, 1023,      300, NULL},
    {"gather_shm_2",          2, SHM, W_GA,          K_RANDOM,   -1, 0, 0,  40, 1023,      300, NULL},
    {"scatter_shm_2",         2, SHM, W_SC,          K_RANDOM,   -1, 0, 0,  40, 1023,      300, NULL},
    {"gather_tcp_2",          2, TCP, W_GA,          K_RANDOM,   -1, 0, 0,  40, 1023,      300, NULL},
    {"scatter_tcp_2",         2, TCP, W_SC,          K_RANDOM,   -1, 0, 0,  40, 1023,      300, NULL},
    {"gather_shm_3",          3, SHM, W_GA,          K_RANDOM,   -1, 0, 0,  40, 1023,      300, NULL},
    {"scatter_tcp_3",         3, TCP, W_SC,          K_RANDOM,   -1, 0, 0,  40, 1023,      300, NULL},
    /* the victim (never the root) sends the data: the root, held once
     * its empty frame went out, must complete the step in the victim's
     * view (with a broadcast or scatter the held root would not have sent
     * its data yet, so the victim could not return first) */
    {"ret_ga_shm_2",          2, SHM, W_GA,          K_RETURN,   -1, 0, 0,  12, 1023,      0, "pair.start.posted"},
    {"ret_red_shm_2",         2, SHM, W_RED,         K_RETURN,   -1, 0, 0,  12, 1023,      0, "pair.start.posted"},
    {"ret_ga_tcp_2",          2, TCP, W_GA,          K_RETURN,   -1, 0, 0,  12, 1023,      0, "pair.start.sent"},
    {"ret_red_tcp_2",         2, TCP, W_RED,         K_RETURN,   -1, 0, 0,  12, 1023,      0, "pair.start.sent"},
    /* AVG: the root's deferred last reduction divides at the commit, by
     * the attempt's view */
    {"reduce_avg_shm_2",      2, SHM, W_RAVG,        K_RANDOM,   -1, 0, 0,  40, 1023,      300, NULL},
    {"reduce_avg_tcp_3",      3, TCP, W_RAVG,        K_RANDOM,   -1, 0, 0,  40, 1023,      300, NULL},
    {"ret_ravg_shm_2",        2, SHM, W_RAVG,        K_RETURN,   -1, 0, 0,  12, 1023,      0, "pair.start.posted"},
    {"ar_small_tcp_4",        4, TCP, W_AR_SMALL,    K_RANDOM,   -1, 0, 0,  90, 0,         300, NULL},
    {"allgather_shm_4",       4, SHM, W_AG,          K_RANDOM,   -1, 0, 0,  40, 1 << 16,   0, NULL},
    {"allgather_tcp_3",       3, TCP, W_AG,          K_RANDOM,   -1, 0, 0,  40, 4099,      300, NULL},
    {"reduce_scatter_tcp_3",  3, TCP, W_RS,          K_RANDOM,   -1, 0, 0,  40, 1 << 16,   0, NULL},
    {"reduce_scatter_shm_8",  8, SHM, W_RS,          K_RANDOM,   -1, 0, 0,  40, 4099,      300, NULL},
  /* 8 ranks staged (past the slots' 512 KiB since the third session of
   * 2026-12-06, which took the row above) */
    {"rs_stage_shm_8",        8, SHM, W_RS,          K_RANDOM,   -1, 0, 0,  16, 1 << 14,   0, NULL},
    {"rs_ring_shm_4",         4, SHM, W_RS,          K_RANDOM,   -1, 0, 0,  40, 1 << 16,   0, NULL},
    {"rs_stage_put_shm_3",    3, SHM, W_RS,          K_INJECT,   -1, 0, 0,  12, 1 << 16,   0, "allreduce.stage.put"},
    {"rs_stage_barrier_shm_4", 4, SHM, W_RS,         K_INJECT,   -1, 0, 0,  12, 1 << 16,   0, "ft.barrier.mid"},
    {"broadcast_shm_4",       4, SHM, W_BC,          K_RANDOM,   -1, 0, 0,  40, 1 << 18,   0, NULL},
    {"broadcast_tcp_3",       3, TCP, W_BC,          K_RANDOM,   -1, 0, 0,  40, 4099,      300, NULL},
    {"alltoall_tcp_4",        4, TCP, W_A2A,         K_RANDOM,   -1, 0, 0,  40, 1 << 14,   0, NULL},
    {"alltoall_shm_3",        3, SHM, W_A2A,         K_RANDOM,   -1, 0, 0,  40, 1023,      300, NULL},
    /* alltoallv with fault tolerance ends on the final barrier alone */
    {"alltoallv_shm_3",       3, SHM, W_A2AV,        K_RANDOM,   -1, 0, 0,  40, 1023,      300, NULL},
    {"alltoallv_tcp_2",       2, TCP, W_A2AV,        K_RANDOM,   -1, 0, 0,  40, 1 << 12,   300, NULL},
    {"reduce_shm_4",          4, SHM, W_RED,         K_RANDOM,   -1, 0, 0,  40, 1 << 18,   0, NULL},
    {"reduce_tcp_3",          3, TCP, W_RED,         K_RANDOM,   -1, 0, 0,  40, 4099,      300, NULL},
  /* killed after it passed on its first chunk of the reduce chain: the
   * root has reduced that chunk into its buffer (in place every other
   * step) and must re-run from its saved input */
    {"reduce_chain_shm_4",    4, SHM, W_RED,         K_INJECT,   -1, 0, 0,  12, 1 << 18,   0, "reduce.chain.sent"},
    {"reduce_chain_tcp_3",    3, TCP, W_RED,         K_INJECT,   -1, 0, 0,  12, 1 << 18,   0, "reduce.chain.sent"},
  /* on one host reduce runs through staging memory (the root's buffer is
   * written at the commit only): killed mid-put, and in the final barrier
   * (the root completes it in the old view from the dead rank's region) */
    {"reduce_stage_put_shm_3", 3, SHM, W_RED,        K_INJECT,   -1, 0, 0,  12, 1 << 18,   0, "allreduce.stage.put"},
    {"reduce_stage_barrier_shm_4", 4, SHM, W_RED,    K_INJECT,   -1, 0, 0,  12, 1 << 18,   0, "ft.barrier.mid"},
    {"barrier_shm_8",         8, SHM, W_BAR,         K_RANDOM,   -1, 0, 0, 120, 0,         300, NULL},
    {"barrier_tcp_3",         3, TCP, W_BAR,         K_RANDOM,   -1, 0, 0, 120, 0,         300, NULL},
    {"mix_tcp_8",             8, TCP, W_MIX,         K_RANDOM,   -1, 0, 0,  64, 0,         300, NULL},
  /* a rank leaves at an operation boundary */
    {"boundary_small_shm_4",  4, SHM, W_AR_SMALL,    K_BOUNDARY, -1, 0, 0,  60, 0,         300, NULL},
    {"boundary_mix_tcp_3",    3, TCP, W_MIX,         K_BOUNDARY, -1, 0, 0,  48, 0,         300, NULL},
  /* two at once, rank 0, a second failure (epoch 3) */
    {"two_small_shm_8",       8, SHM, W_AR_SMALL,    K_TWO,      -1, 0, 0,  90, 0,         300, NULL},
    {"two_big_tcp_4",         4, TCP, W_AR_BIG,      K_TWO,      -1, 0, 0,  16, MiB8 / 2,  0, NULL},
    {"rank0_big_shm_4",       4, SHM, W_AR_BIG,      K_RANDOM,    0, 0, 0,  16, MiB8,      0, NULL},
    {"rank0_small_tcp_3",     3, TCP, W_AR_SMALL,    K_RANDOM,    0, 0, 0,  60, 0,         300, NULL},
    {"second_small_shm_4",    4, SHM, W_AR_SMALL,    K_SECOND,   -1, 0, 0, 120, 0,         300, NULL},
    {"second_mix_tcp_4",      4, TCP, W_MIX,         K_SECOND,   -1, 0, 0,  96, 0,         300, NULL},
  /* manual mode */
    {"manual_small_shm_4",    4, SHM, W_AR_SMALL,    K_RANDOM,   -1, 1, 0,  60, 0,         300, NULL},
    {"manual_big_tcp_3",      3, TCP, W_AR_BIG,      K_RANDOM,   -1, 1, 0,  16, MiB8,      0, NULL},
    {"manual_mix_shm_8",      8, SHM, W_MIX,         K_RANDOM,   -1, 1, 0,  48, 0,         300, NULL},
  /* broadcast whose root was killed */
    {"deadroot_shm_3",        3, SHM, W_BC_DEADROOT, K_RANDOM,   -1, 0, 0,  60, 1 << 16,   300, NULL},
    {"deadroot_tcp_4",        4, TCP, W_BC_DEADROOT, K_RANDOM,   -1, 0, 0,  60, 4099,      300, NULL},
  /* the root dies, then another rank while the broadcasts from the dead
   * root fail (each still meets at the barrier): they must keep failing */
    {"deadroot_second_shm_4", 4, SHM, W_BC_DEADROOT, K_SECOND,   -1, 0, 0,  60, 1023,      300, NULL},
    {"deadroot_second_tcp_4", 4, TCP, W_BC_DEADROOT, K_SECOND,   -1, 0, 0,  60, 1023,      300, NULL},
  /* fault tolerance off: the survivors' calls fail, boundedly */
    {"ft0_small_shm_3",       3, SHM, W_AR_SMALL,    K_RANDOM,   -1, 0, 1,  60, 0,         300, NULL},
    {"ft0_big_tcp_3",         3, TCP, W_AR_BIG,      K_RANDOM,   -1, 0, 1,  16, MiB8,      0, NULL},
  /* the same and manual mode through staging memory (one host) */
    {"ft0_big_shm_3",         3, SHM, W_AR_BIG,      K_RANDOM,   -1, 0, 1,  16, MiB8,      0, NULL},
    {"ft0_stage_put_shm_3",   3, SHM, W_AR_BIG,      K_INJECT,   -1, 0, 1,  12, MiB8,      0, "allreduce.stage.put"},
    {"manual_big_shm_3",      3, SHM, W_AR_BIG,      K_RANDOM,   -1, 1, 0,  16, MiB8,      0, NULL},
    {"manual_stage_reduce_shm_4", 4, SHM, W_AR_BIG,  K_INJECT,   -1, 1, 0,  12, MiB8,      0, "allreduce.stage.reduce"},
  /* killed at an exact point of the allreduce through staging memory
   * (allreduce_stage.c): mid-put (peers hold part of its input), mid-reduce
   * (its result block half written), after every result exists (before the
   * final barrier: re-run or completed in the old view from a dead rank's
   * region), mid-commit (the others are past the barrier) */
    {"stage_put_shm_2",       2, SHM, W_AR_BIG,      K_INJECT,   -1, 0, 0,  12, MiB8,      0, "allreduce.stage.put"},
    {"stage_put_shm_4",       4, SHM, W_AR_BIG,      K_INJECT,   -1, 0, 0,  12, MiB8,      0, "allreduce.stage.put"},
    {"stage_reduce_shm_3",    3, SHM, W_AR_BIG,      K_INJECT,   -1, 0, 0,  12, MiB8,      0, "allreduce.stage.reduce"},
    {"stage_done_shm_2",      2, SHM, W_AR_BIG,      K_INJECT,   -1, 0, 0,  12, MiB8,      0, "allreduce.stage.done"},
    {"stage_done_shm_4",      4, SHM, W_AR_BIG,      K_INJECT,   -1, 0, 0,  12, MiB8,      0, "allreduce.stage.done"},
    {"stage_commit_shm_3",    3, SHM, W_AR_BIG,      K_INJECT,   -1, 0, 0,  12, MiB8,      0, "allreduce.stage.commit"},
  /* in the final barrier after the staged allreduce: some survivors finish
   * in the old view, the others learn it from the agreement and copy the
   * result out of staging memory, the dead rank's region included */
    {"stage_barrier_shm_3",   3, SHM, W_AR_BIG,      K_INJECT,   -1, 0, 0,  12, MiB8,      0, "ft.barrier.mid"},
    {"stage_barrier_shm_4",   4, SHM, W_AR_BIG,      K_INJECT,   -1, 0, 0,  12, MiB8,      0, "ft.barrier.mid"},
  /* the same after small allreduces (recursive doubling; in place, about
   * every other run, the last reduction or the copy of the result waits
   * for the commit): 3 ranks fold, 4 do not */
    {"rd_barrier_shm_3",      3, SHM, W_AR_SMALL,    K_INJECT,   -1, 0, 0,  18, 0,         0, "ft.barrier.mid"},
    {"rd_barrier_shm_4",      4, SHM, W_AR_SMALL,    K_INJECT,   -1, 0, 0,  18, 0,         0, "ft.barrier.mid"},
  /* the shared slots (small allreduce, 3+ ranks, one host): a rank dies
   * with its input in its slot but no word (the survivors re-run without
   * it), right after its word (every survivor can complete: in the old
   * view), after it saw every word; two die, one after its word and its
   * neighbour right after returning the op (the survivors complete it in
   * the old view) */
    {"slot_data_shm_3",       3, SHM, W_AR_SMALL,    K_INJECT,   -1, 0, 0,  18, 0,         0, "slot.data"},
    {"slot_word_shm_4",       4, SHM, W_AR_SMALL,    K_INJECT,   -1, 0, 0,  18, 0,         0, "slot.word"},
    {"slot_seen_shm_3",       3, SHM, W_AR_SMALL,    K_INJECT,   -1, 0, 0,  18, 0,         0, "slot.seen"},
    {"slot_left_shm_4",       4, SHM, W_AR_SMALL,    K_LEFT,     -1, 0, 0,  18, 0,         0, "slot.word"},
  /* the same for allgather and broadcast through the slots: the dead
   * rank's block is in every result or in none; a root that dies after its
   * word (or after it saw every word) still broadcasts its data to every
   * survivor, in the old view */
    {"slot_ag_data_shm_3",    3, SHM, W_AG,          K_INJECT,   -1, 0, 0,  18, 257,       0, "slot.data"},
    {"slot_ag_seen_shm_4",    4, SHM, W_AG,          K_INJECT,   -1, 0, 0,  18, 257,       0, "slot.seen"},
    {"slot_bc_word_shm_4",    4, SHM, W_BC,          K_INJECT,    1, 0, 0,  18, 1023,      0, "slot.word"},
    {"slot_bc_root_shm_3",    3, SHM, W_BC_DEADROOT, K_INJECT,   -1, 0, 0,  18, 1023,      0, "slot.word"},
  /* and for the rest of the collectives through the slots: reduce and
   * gather (only the root reads), scatter (the root's whole input in its
   * slot), reduce_scatter and alltoall (every rank's whole input in its
   * slot); a dead rank's part is in every result or in none */
    {"slot_red_data_shm_3",   3, SHM, W_RED,         K_INJECT,   -1, 0, 0,  18, 1023,      0, "slot.data"},
    {"slot_ravg_word_shm_4",  4, SHM, W_RAVG,        K_INJECT,   -1, 0, 0,  18, 1023,      0, "slot.word"},
    {"slot_ga_seen_shm_3",    3, SHM, W_GA,          K_INJECT,   -1, 0, 0,  18, 513,       0, "slot.seen"},
    {"slot_sc_word_shm_4",    4, SHM, W_SC,          K_INJECT,   -1, 0, 0,  18, 257,       0, "slot.word"},
    {"slot_rs_data_shm_4",    4, SHM, W_RS,          K_INJECT,   -1, 0, 0,  18, 257,       0, "slot.data"},
    {"slot_rs_seen_shm_3",    3, SHM, W_RS,          K_INJECT,   -1, 0, 0,  18, 257,       0, "slot.seen"},
    {"slot_a2a_word_shm_3",   3, SHM, W_A2A,         K_INJECT,   -1, 0, 0,  18, 257,       0, "slot.word"},
    {"slot_a2a_seen_shm_4",   4, SHM, W_A2A,         K_INJECT,   -1, 0, 0,  18, 257,       0, "slot.seen"},
    {"slot_left_rs_shm_4",    4, SHM, W_RS,          K_LEFT,     -1, 0, 0,  18, 257,       0, "slot.word"},
    /* parts of 128-192 KiB (the slots take up to 256 KiB per rank) */
    {"slot_a2a_big_shm_3",    3, SHM, W_A2A,         K_INJECT,   -1, 0, 0,  12, 8191,      0, "slot.seen"},
    {"slot_rs_big_shm_4",     4, SHM, W_RS,          K_INJECT,   -1, 0, 0,  12, 4096,      0, "slot.word"},
    {"slot_red_big_shm_3",    3, SHM, W_RED,         K_INJECT,   -1, 0, 0,  12, 16384,     0, "slot.seen"},
  /* the split allreduce (48 KiB - 256 KiB: two rounds, each rank reduces
   * one block): a rank dies with its input in its slot but no word (re-run
   * without it), after it saw every word but before its block is out (the
   * survivors complete in the old view from the data slots), after its
   * block's word, after it saw every block's word; two die, one after its
   * block's word and its neighbour right after returning */
    {"slot_split_data_shm_4", 4, SHM, W_AR_MID,      K_INJECT,   -1, 0, 0,  12, 12289,     0, "slot.data"},
    {"slot_split_seen_shm_3", 3, SHM, W_AR_MID,      K_INJECT,   -1, 0, 0,  12, 12289,     0, "slot.seen"},
    {"slot_split_res_shm_4",  4, SHM, W_AR_MID,      K_INJECT,   -1, 0, 0,  12, 12289,     0, "slot.res"},
    {"slot_split_rseen_shm_3", 3, SHM, W_AR_MID,     K_INJECT,   -1, 0, 0,  12, 12289,     0, "slot.res.seen"},
    {"slot_split_left_shm_4", 4, SHM, W_AR_MID,      K_LEFT,     -1, 0, 0,  12, 12289,     0, "slot.res"},
  /* 351-469 KiB (the slots take a split allreduce up to 512 KiB) */
    {"slot_split_big_shm_3",  3, SHM, W_AR_MID,      K_INJECT,   -1, 0, 0,  12, 60000,     0, "slot.res"},
  /* an allgather of 469 KiB per rank (the slots take its blocks up to
   * 512 KiB since the third session of 2026-12-06) */
    {"slot_ag_big_shm_3",     3, SHM, W_AG,          K_INJECT,   -1, 0, 0,  12, 60000,     0, "slot.seen"},
    {"slot_ag_big_shm_4",     4, SHM, W_AG,          K_INJECT,   -1, 0, 0,  12, 60000,     0, "slot.data"},
  /* a reduce of 469 KiB and a reduce_scatter of 469 KiB in all (the slots
   * take their inputs up to 512 KiB since the same session) */
    {"slot_red_xl_shm_4",     4, SHM, W_RED,         K_INJECT,   -1, 0, 0,  12, 60000,     0, "slot.seen"},
    {"slot_rs_xl_shm_3",      3, SHM, W_RS,          K_INJECT,   -1, 0, 0,  12, 20000,     0, "slot.data"},
  /* broadcast and scatter of 64-128 KiB, the root's copy piped chunk by
   * chunk: the root dies after its first chunk (no word: a re-run, which
   * fails: the root is gone), a reader dies after copying its first chunk
   * (its word is out) */
    {"slot_pipe_root_shm_3",  3, SHM, W_BC_DEADROOT, K_INJECT,   -1, 0, 0,  12, 12289,     0, "slot.chunk"},
    {"slot_pipe_bc_shm_4",    4, SHM, W_BC,          K_INJECT,    2, 0, 0,  12, 12289,     0, "slot.pread"},
    {"slot_pipe_sc_shm_3",    3, SHM, W_SC,          K_INJECT,    1, 0, 0,  12, 5461,      0, "slot.pread"},
  /* the same over 4 ranks: the scatters after it run over a view with a
   * hole (slot 1), whose blocks the root's data holds by slot */
    {"slot_pipe_sc_shm_4",    4, SHM, W_SC,          K_INJECT,    1, 0, 0,  12, 4095,      0, "slot.pread"},
  /* one dies in the frame barrier over TCP: whether the survivors all
   * entered it decides (the entry rule): complete in the old view, with
   * the dead rank's part in every result, or re-run without it */
    {"entry_ar_tcp_3",        3, TCP, W_AR_SMALL,    K_INJECT,   -1, 0, 0,  18, 0,         0, "ft.barrier.mid"},
    {"entry_mix_tcp_4",       4, TCP, W_MIX,         K_INJECT,   -1, 0, 0,  24, 0,         0, "ft.barrier.mid"},
    {"entry_deadroot_tcp_3",  3, TCP, W_BC_DEADROOT, K_INJECT,   -1, 0, 0,  24, 4099,      0, "ft.barrier.mid"},
    {"entry_ag_tcp_4",        4, TCP, W_AG,          K_INJECT,   -1, 0, 0,  18, 4099,      0, "ft.barrier.mid"},
  /* two die in the final barrier: one had signalled only its neighbour,
   * which returned the op in the old view and died. The survivors never
   * saw the first one's signal, yet must complete the op in the old view
   * too (the neighbour's "left" word), not re-run it: the dead neighbour
   * reported it complete there (checked for every rank that completed a
   * step, victims included) */
    {"left_big_shm_4",        4, SHM, W_AR_BIG,      K_LEFT,     -1, 0, 0,  12, MiB8,      0, "ft.barrier.mid"},
    {"left_small_shm_4",      4, SHM, W_AR_BIG,      K_LEFT,     -1, 0, 0,  18, 1024,      0, "ft.barrier.mid"},
    {"left_ag_shm_3",         3, SHM, W_AG,          K_LEFT,     -1, 0, 0,  12, 1 << 16,   0, "ft.barrier.mid"},
  /* the same through the frame barrier (TCP, barrier calls,
   * MOONCAKE_FT_SIGNALS=0). Over TCP an allreduce needs no notice: the
   * survivors all entered the barrier, which decides (the entry rule);
   * barrier calls and views that may stage send LEFT notices and wait
   * until they are held (left_notice_tcp_3: the notices alone, entry rule
   * off; both fail within 10 runs with neither: checked) */
    {"left_big_tcp_4",        4, TCP, W_AR_BIG,      K_LEFT,     -1, 0, 0,  12, MiB8 / 2,  0, "ft.barrier.mid"},
    {"left_small_tcp_3",      3, TCP, W_AR_BIG,      K_LEFT,     -1, 0, 0,  18, 1024,      0, "ft.barrier.mid"},
    {"left_bar_shm_3",        3, SHM, W_BAR,         K_LEFT,     -1, 0, 0,  18, 0,         0, "ft.barrier.mid"},
    {"left_nosig_shm_3",      3, SHM, W_AR_BIG,      K_LEFT,     -1, 0, 0,  18, 1024,      0, "ft.barrier.mid"},
  /* left_big_tcp_4 through the notices (entry rule off), sent to the 2
   * lowest slots only: one of them survives */
    {"left_fan2_tcp_4",       4, TCP, W_AR_BIG,      K_LEFT,     -1, 0, 0,  12, MiB8 / 2,  0, "ft.barrier.mid"},
    {"left_notice_tcp_3",     3, TCP, W_AR_BIG,      K_LEFT,     -1, 0, 0,  18, 1024,      0, "ft.barrier.mid"},
    {"left_bar_tcp_3",        3, TCP, W_BAR,         K_LEFT,     -1, 0, 0,  18, 0,         0, "ft.barrier.mid"},
};
/* clang-format on */
#define NSCN ((int)(sizeof(scenarios) / sizeof(scenarios[0])))

/* Scenarios that force an algorithm (on one host the staged paths would
 * take these sizes). */
static const struct {
    const char *scn, *env, *val;
} scn_env[] = {
    {"reduce_chain_shm_4", "MOONCAKE_ALGO_REDUCE", "chain"},
    {"rs_ring_shm_4", "MOONCAKE_ALGO_REDUCE_SCATTER", "ring"},
    {"left_nosig_shm_3", "MOONCAKE_FT_SIGNALS", "0"},
    {"left_fan2_tcp_4", "MOONCAKE_FT_LEFT_FANOUT", "2"},
    /* small collectives (but alltoallv and barrier calls) at 3+ ranks on
     * one host take the shared slots, which have no final barrier: these
     * keep the usual algorithms and the barrier's frames */
    {"left_bar_shm_3", "MOONCAKE_SLOT_MAX", "0"},
    {"left_ag_shm_3", "MOONCAKE_SLOT_MAX", "0"}, /* its small steps */
    {"rd_barrier_shm_3", "MOONCAKE_SLOT_MAX", "0"},
    {"rd_barrier_shm_4", "MOONCAKE_SLOT_MAX", "0"},
    {"left_small_shm_4", "MOONCAKE_SLOT_MAX", "0"},
    {"left_nosig_shm_3", "MOONCAKE_SLOT_MAX", "0"},
    {"left_fan2_tcp_4", "MOONCAKE_FT_ENTRY", "0"},
    {"left_notice_tcp_3", "MOONCAKE_FT_ENTRY", "0"},
};

/* The ops of one step cycle; returns how many. Broadcasts use root 0 unless
 * the scenario is about a dead root. */
static int workload(const kt_scn_t *sc, kt_op_t *ops)
{
    size_t b = sc->big;
    switch (sc->work) {
    case W_AR_BIG:
        ops[0] = (kt_op_t){KO_AR, b, 0};
        return 1;
    case W_AR_SMALL:
        ops[0] = (kt_op_t){KO_AR, 7, 0};
        ops[1] = (kt_op_t){KO_F64, 5, 0};
        ops[2] = (kt_op_t){KO_AVG, 3, 0};
        ops[3] = (kt_op_t){KO_H16, 8, 0};
        return 4;
    case W_AG:
        ops[0] = (kt_op_t){KO_AG, b, 0};
        return 1;
    case W_RS:
        ops[0] = (kt_op_t){KO_RS, b, 0};
        return 1;
    case W_BC:
        ops[0] = (kt_op_t){KO_BC, b, 0};
        return 1;
    case W_A2A:
        ops[0] = (kt_op_t){KO_A2A, b, 0};
        return 1;
    case W_A2AV:
        ops[0] = (kt_op_t){KO_A2AV, b, 0};
        return 1;
    case W_BAR:
        ops[0] = (kt_op_t){KO_BAR, 0, 0};
        return 1;
    case W_MIX:
        ops[0] = (kt_op_t){KO_AR, 1031, 0};
        ops[1] = (kt_op_t){KO_AVG, 5, 0};
        ops[2] = (kt_op_t){KO_AG, 257, 0};
        ops[3] = (kt_op_t){KO_RS, 129, 0};
        ops[4] = (kt_op_t){KO_BC, 513, 0};
        ops[5] = (kt_op_t){KO_A2A, 65, 0};
        ops[6] = (kt_op_t){KO_BAR, 0, 0};
        ops[7] = (kt_op_t){KO_F64, 33, 0};
        ops[8] = (kt_op_t){KO_H16, 1028, 0};
        return 9;
    case W_RED:
        ops[0] = (kt_op_t){KO_RED, b, 0};
        return 1;
    case W_RAVG:
        ops[0] = (kt_op_t){KO_RAVG, b, 0};
        return 1;
    case W_GA:
        ops[0] = (kt_op_t){KO_GA, b, 0};
        return 1;
    case W_SC:
        ops[0] = (kt_op_t){KO_SC, b, 0};
        return 1;
    case W_AR_MID:
        ops[0] = (kt_op_t){KO_AR, b, 0};
        ops[1] = (kt_op_t){KO_AVG, b - b / 4, 0};
        return 2;
    case W_BC_DEADROOT:
        ops[0] = (kt_op_t){KO_BC, b, KT_ROOT_VICTIM};
        ops[1] = (kt_op_t){KO_AR, 7, 0};
        return 2;
    }
    return 0;
}

/* Elements of send and receive buffer the workload needs. */
static size_t buf_elems(const kt_op_t *ops, int nops, int size)
{
    size_t m = 1;
    for (int i = 0; i < nops; i++) {
        size_t e = ops[i].n;
        if (ops[i].k == KO_AG || ops[i].k == KO_RS || ops[i].k == KO_A2A ||
            ops[i].k == KO_A2AV || ops[i].k == KO_GA || ops[i].k == KO_SC)
            e *= (size_t)size;
        if (e > m) m = e;
    }
    return m;
}

/* ------------------------------------------------------------------------ */
/* Shared table                                                             */
/* ------------------------------------------------------------------------ */

typedef struct kt_rec {
    int32_t done;       /* 1 once written */
    int32_t status;     /* final status of the step */
    int32_t status1;    /* manual mode: first try */
    int32_t status2;    /* manual mode: second try, before recover */
    int32_t recover_st; /* manual mode: mc_comm_recover */
    int32_t nactive;
    uint64_t epoch; /* op view */
    uint64_t mask;
    uint64_t failed;    /* manual mode: mc_comm_failed_ranks after failure */
    uint64_t cur_epoch; /* mc_comm_view after the step */
    uint64_t view_changes;
    uint64_t hash;
    int64_t wrong; /* elements that differ from the reference */
    int64_t lost;  /* first call failed: in-place input elements it changed */
    int64_t t_end_ns;
    char note[120]; /* first wrong element, or the error text */
} kt_rec_t;

typedef struct kt_shared {
    int alive;               /* ranks not killed or gone */
    int done;                /* survivors through the final phase */
    int shrunk;              /* K_SHRINK: survivors past mc_comm_shrink */
    int at_gate[KT_MAXR];    /* a victim waits before its kill step */
    int gate_go[KT_MAXR];    /* the parent lets it go, then kills it */
    int started[KT_MAXR];    /* loop running */
    int step[KT_MAXR];       /* steps completed */
    uint64_t epoch[KT_MAXR]; /* current view epoch after the last step */
    int64_t t_start_ns[KT_MAXR];
    int64_t t_fail_ns[KT_MAXR]; /* FT off: first failed call returned */
    char fatal[KT_MAXR][200];   /* harness error inside a rank */
    kt_rec_t rec[KT_MAXR][KT_MAXSTEP + 1]; /* + the final barrier */
} kt_shared_t;

/* What the parent decided before forking. */
typedef struct kt_plan {
    const kt_scn_t *sc;
    uint64_t seed;
    const char *dir;
    kt_shared_t *sh;
    int nvict;
    int victim[2];
    int at_step[2]; /* the victim's gate: it is killed inside this step */
    int boundary;   /* K_BOUNDARY/K_SHRINK: the step the victim skips */
    int bc_root;    /* root of KO_BC with root 0 */
    kt_op_t ops[KT_MAXOPS];
    int nops;
} kt_plan_t;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static uint64_t mix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

static uint64_t rng_next(uint64_t *s)
{
    *s += 0x9E3779B97F4A7C15ULL;
    return mix64(*s);
}

static int rng_int(uint64_t *s, int lo, int hi) /* [lo, hi] */
{
    if (hi <= lo) return lo;
    return lo + (int)(rng_next(s) % (uint64_t)(hi - lo + 1));
}

/* ------------------------------------------------------------------------ */
/* Inputs and references                                                    */
/* ------------------------------------------------------------------------ */

/* A per-(step, index) factor in [1, 2^20): sums of (1<<r)*g over 8 ranks
 * stay exact and reveal the contributor mask. */
static int64_t g_of(uint64_t key, size_t i)
{
    return 1 + (int64_t)(mix64(key * 0x100000001B3ULL + i) % 1048573);
}

/* A non-zero value that names its source rank (top byte). */
static uint64_t enc(int r, uint64_t key, size_t i)
{
    return ((uint64_t)(r + 1) << 56) | (mix64(key * 131 + i) >> 8);
}

/* All-to-all: names source and destination. */
static uint64_t enc2(int r, int j, uint64_t key, size_t i)
{
    return ((uint64_t)(r + 1) << 56) | ((uint64_t)(j + 1) << 48) |
           (mix64(key * 257 + i) >> 16);
}

static double f64_in(int r, uint64_t key, size_t i)
{
    return sin(0.5 + 1.37 * r + 0.113 * (double)key + 0.0071 * (double)i) *
           (double)(1 << r);
}

/* KO_H16's input: integers up to 960 in magnitude, whose sum over 8
 * ranks (7680) fp16 holds exactly; its average by 3 or 7 it does not. */
static uint16_t h16_in(int r, uint64_t key, size_t i)
{
    int64_t v = (int64_t)((key * 7919 + i * 104729 + (uint64_t)r * 15485863) %
                          1921) - 960;
    return mc_float_to_fp16((float)v);
}

static uint64_t hash_words(const void *p, size_t n)
{
    const uint64_t *w = p;
    uint64_t h = 0xCBF29CE484222325ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ w[i]) * 0x100000001B3ULL;
    return mix64(h ^ n);
}

static int popcount64(uint64_t m)
{
    return __builtin_popcountll(m);
}

/* ------------------------------------------------------------------------ */
/* One rank                                                                 */
/* ------------------------------------------------------------------------ */

typedef struct kt_child {
    const kt_plan_t *pl;
    kt_shared_t *sh;
    mc_comm_h comm;
    int rank, size;
    uint64_t *sbuf, *rbuf;
    size_t cap;
} kt_child_t;

static int has_inplace(kt_opk_t k)
{
    return k != KO_A2A && k != KO_A2AV && k != KO_BAR && k != KO_GA &&
           k != KO_SC;
}

static int op_root(const kt_child_t *c, const kt_op_t *op)
{
    return op->root == KT_ROOT_VICTIM ? c->pl->victim[0] : op->root;
}

/* Fill the inputs of one call (again for every retry: an in-place call
 * that failed may have changed them) and issue it. */
/* After a failed in-place reduction: elements of its input (as
 * step_issue wrote it) that the call did not leave as they were. */
static int64_t inplace_lost(kt_child_t *c, const kt_op_t *op, uint64_t key)
{
    int me = c->rank, n = c->size;
    size_t cnt = op->n;
    const int64_t *s64 = (const int64_t *)(void *)c->sbuf,
                  *r64 = (const int64_t *)(void *)c->rbuf;
    const double *rd = (const double *)(void *)c->rbuf;
    int64_t lost = 0;
    switch (op->k) {
    case KO_AR:
    case KO_AVG:
    case KO_RED:
    case KO_RAVG:
        for (size_t i = 0; i < cnt; i++)
            lost += r64[i] != ((int64_t)1 << me) * g_of(key, i);
        break;
    case KO_F64:
        for (size_t i = 0; i < cnt; i++)
            lost += memcmp(&rd[i], &(double){f64_in(me, key, i)},
                           sizeof(double)) != 0;
        break;
    case KO_H16:
        for (size_t i = 0; i < cnt; i++)
            lost += ((const uint16_t *)(const void *)c->rbuf)[i] !=
                    h16_in(me, key, i);
        break;
    case KO_RS:
        for (size_t i = 0; i < cnt * (size_t)n; i++)
            lost += s64[i] != ((int64_t)1 << me) * g_of(key, i);
        break;
    default:
        break;
    }
    return lost;
}

static mc_status_t step_issue(kt_child_t *c, const kt_op_t *op, uint64_t key,
                              int ip)
{
    mc_comm_h comm = c->comm;
    int me = c->rank, n = c->size;
    size_t cnt = op->n;
    uint64_t *s = c->sbuf, *r = c->rbuf;
    int64_t *s64 = (int64_t *)(void *)s, *r64 = (int64_t *)(void *)r;
    double *sd = (double *)(void *)s, *rd = (double *)(void *)r;
    switch (op->k) {
    case KO_AR:
    case KO_AVG:
    case KO_RED:
    case KO_RAVG: {
        /* reduce in place on every rank: only the root may write */
        int64_t *in = ip ? r64 : s64;
        if (!ip)
            for (size_t i = 0; i < cnt; i++)
                r[i] = KT_POISON;
        for (size_t i = 0; i < cnt; i++)
            in[i] = ((int64_t)1 << me) * g_of(key, i);
        if (op->k == KO_RED || op->k == KO_RAVG)
            return mc_comm_reduce(comm, in, r, cnt, MC_INT64,
                                  op->k == KO_RED ? MC_SUM : MC_AVG, op->root);
        return mc_comm_allreduce(comm, in, r, cnt, MC_INT64,
                                 op->k == KO_AR ? MC_SUM : MC_AVG);
    }
    case KO_H16: {
        uint16_t *in = (uint16_t *)(void *)(ip ? r : s);
        if (!ip)
            for (size_t i = 0; i < cnt; i++)
                r[i] = KT_POISON;
        for (size_t i = 0; i < cnt; i++)
            in[i] = h16_in(me, key, i);
        return mc_comm_allreduce(comm, in, r, cnt, MC_FLOAT16, MC_AVG);
    }
    case KO_F64: {
        double *in = ip ? rd : sd;
        if (!ip)
            for (size_t i = 0; i < cnt; i++)
                r[i] = KT_POISON;
        for (size_t i = 0; i < cnt; i++)
            in[i] = f64_in(me, key, i);
        return mc_comm_allreduce(comm, in, rd, cnt, MC_FLOAT64, MC_SUM);
    }
    case KO_AG: {
        for (size_t i = 0; i < cnt * (size_t)n; i++)
            r[i] = KT_POISON;
        uint64_t *in = ip ? r + (size_t)me * cnt : s;
        for (size_t i = 0; i < cnt; i++)
            in[i] = enc(me, key, i);
        return mc_comm_allgather(comm, in, r, cnt, MC_INT64);
    }
    case KO_RS: {
        for (size_t i = 0; i < cnt * (size_t)n; i++)
            s64[i] = ((int64_t)1 << me) * g_of(key, i);
        uint64_t *out = ip ? s + (size_t)me * cnt : r;
        if (!ip)
            for (size_t i = 0; i < cnt; i++)
                out[i] = KT_POISON;
        return mc_comm_reduce_scatter(comm, s, out, cnt, MC_INT64, MC_SUM);
    }
    case KO_BC: {
        int root = op_root(c, op);
        for (size_t i = 0; i < cnt; i++)
            r[i] = KT_POISON;
        uint64_t *in = ip ? r : s;
        for (size_t i = 0; i < cnt; i++)
            in[i] = me == root ? enc(root, key, i) : KT_POISON;
        return mc_comm_broadcast(comm, in, r, cnt, MC_INT64, root);
    }
    case KO_A2A:
    case KO_A2AV: {
        for (size_t i = 0; i < cnt * (size_t)n; i++)
            r[i] = KT_POISON;
        for (int j = 0; j < n; j++)
            for (size_t i = 0; i < cnt; i++)
                s[(size_t)j * cnt + i] = enc2(me, j, key, i);
        if (op->k == KO_A2A) return mc_comm_alltoall(comm, s, r, cnt, MC_INT64);
        size_t vc[KT_MAXR], vd[KT_MAXR];
        for (int j = 0; j < n; j++) {
            vc[j] = cnt;
            vd[j] = (size_t)j * cnt;
        }
        return mc_comm_alltoallv(comm, s, vc, vd, r, vc, vd, MC_INT64);
    }
    case KO_BAR:
        return mc_comm_barrier(comm);
    case KO_GA: {
        for (size_t i = 0; i < cnt * (size_t)n; i++)
            r[i] = KT_POISON;
        for (size_t i = 0; i < cnt; i++)
            s[i] = enc(me, key, i);
        return mc_comm_gather(comm, s, r, cnt, MC_INT64, op->root);
    }
    case KO_SC: {
        for (size_t i = 0; i < cnt; i++)
            r[i] = KT_POISON;
        for (int j = 0; j < n; j++)
            for (size_t i = 0; i < cnt; i++)
                s[(size_t)j * cnt + i] =
                    me == op->root ? enc2(op->root, j, key, i) : KT_POISON;
        return mc_comm_scatter(comm, s, r, cnt, MC_INT64, op->root);
    }
    }
    return MC_ERR_INTERNAL;
}

static void bad_note(char *note, size_t cap, size_t idx, uint64_t got,
                     uint64_t want, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static void bad_note(char *note, size_t cap, size_t idx, uint64_t got,
                     uint64_t want, const char *fmt, ...)
{
    int n = snprintf(note, cap, "elt %zu got 0x%" PRIx64 " want 0x%" PRIx64 " ",
                     idx, got, want);
    if (n < 0 || (size_t)n >= cap) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(note + n, cap - (size_t)n, fmt, ap);
    va_end(ap);
}

/* Compare the output with the reference over the active `mask`; fills
 * rec->wrong, rec->hash and a note on the first wrong element. */
static void step_verify(kt_child_t *c, const kt_op_t *op, uint64_t key, int ip,
                        uint64_t mask, int nact, kt_rec_t *rec)
{
    int me = c->rank, n = c->size;
    size_t cnt = op->n, len = 0;
    const uint64_t *out = c->rbuf;
    int64_t wrong = 0;
    char *note = rec->note;
    note[0] = '\0';
#define KT_BAD(idx, got, want, ...)                                            \
    do {                                                                       \
        if (!wrong++)                                                          \
            bad_note(note, sizeof(rec->note), (idx), (got), (want),            \
                     __VA_ARGS__);                                             \
    } while (0)
    switch (op->k) {
    case KO_AR:
    case KO_AVG:
        len = cnt;
        for (size_t i = 0; i < cnt; i++) {
            int64_t g = g_of(key, i), got = (int64_t)out[i];
            int64_t want = (int64_t)mask * g;
            if (op->k == KO_AVG) want /= nact;
            if (got != want && op->k == KO_AVG) {
                KT_BAD(i, got, want, "(avg over %d, view 0x%" PRIx64 ")", nact,
                       mask);
            } else if (got != want) {
                /* got/g is the set of ranks that contributed */
                int64_t who = got % g == 0 ? got / g : -1;
                KT_BAD(i, got, want,
                       "(contributors 0x%" PRIx64 ", view 0x%" PRIx64 ")",
                       (uint64_t)who, mask);
            }
        }
        break;
    case KO_F64: {
        len = cnt;
        const double *od = (const double *)(const void *)out;
        for (size_t i = 0; i < cnt; i++) {
            double ref = 0, mag = 0;
            for (int r = 0; r < n; r++) {
                if (!(mask >> r & 1)) continue;
                ref += f64_in(r, key, i);
                mag += fabs(f64_in(r, key, i));
            }
            if (!(fabs(od[i] - ref) <= 1e-9 * (mag + 1e-300))) {
                uint64_t gb, wb;
                memcpy(&gb, &od[i], 8);
                memcpy(&wb, &ref, 8);
                KT_BAD(i, gb, wb, "(%.17g vs %.17g, view 0x%" PRIx64 ")", od[i],
                       ref, mask);
            }
        }
        break;
    }
    case KO_H16: {
        /* each rank's x / nact rounded to fp16, then summed in some order
         * with one rounding per step: the exact average within half an ulp
         * per rounding (the largest each can be); the survivors' bits are
         * compared through rec->hash */
        const uint16_t *oh = (const uint16_t *)(const void *)out;
        len = cnt / 4; /* whole words: cnt is a multiple of 4 */
        for (size_t i = 0; i < cnt; i++) {
            double ref = 0, mag = 0, tol = 0;
            for (int r = 0; r < n; r++) {
                if (!(mask >> r & 1)) continue;
                double x = mc_fp16_to_float(h16_in(r, key, i));
                ref += x;
                mag += fabs(x);
                tol += 0.5 * ref_ulp(MC_FLOAT16, x / nact);
            }
            ref /= nact;
            tol += 0.5 * (nact - 1) * ref_ulp(MC_FLOAT16, mag / nact);
            double g = mc_fp16_to_float(oh[i]);
            if (!(fabs(g - ref) <= tol * (1 + 1e-6)))
                KT_BAD(i, oh[i], mc_float_to_fp16((float)ref),
                       "(%.6g vs %.6g within %.3g, avg over %d, view 0x%" PRIx64
                       ")",
                       g, ref, tol, nact, mask);
        }
        break;
    }
    case KO_AG:
        len = cnt * (size_t)n;
        for (int j = 0; j < n; j++)
            for (size_t i = 0; i < cnt; i++) {
                uint64_t want = mask >> j & 1 ? enc(j, key, i) : 0;
                uint64_t got = out[(size_t)j * cnt + i];
                if (got != want)
                    KT_BAD((size_t)j * cnt + i, got, want,
                           "(block of rank %d, view 0x%" PRIx64 ")", j, mask);
            }
        break;
    case KO_RS:
        len = cnt;
        if (ip) out = c->sbuf + (size_t)me * cnt;
        for (size_t i = 0; i < cnt; i++) {
            int64_t g = g_of(key, (size_t)me * cnt + i);
            int64_t want = (int64_t)mask * g, got = (int64_t)out[i];
            if (got != want) {
                int64_t who = got % g == 0 ? got / g : -1;
                KT_BAD(i, got, want,
                       "(contributors 0x%" PRIx64 ", view 0x%" PRIx64 ")",
                       (uint64_t)who, mask);
            }
        }
        break;
    case KO_BC: {
        len = cnt;
        int root = op_root(c, op);
        for (size_t i = 0; i < cnt; i++)
            if (out[i] != enc(root, key, i))
                KT_BAD(i, out[i], enc(root, key, i), "(root %d)", root);
        break;
    }
    case KO_A2A:
    case KO_A2AV:
        len = cnt * (size_t)n;
        for (int j = 0; j < n; j++)
            for (size_t i = 0; i < cnt; i++) {
                uint64_t want = mask >> j & 1 ? enc2(j, me, key, i) : 0;
                uint64_t got = out[(size_t)j * cnt + i];
                if (got != want)
                    KT_BAD((size_t)j * cnt + i, got, want,
                           "(block from rank %d, view 0x%" PRIx64 ")", j, mask);
            }
        break;
    case KO_BAR:
        break;
    case KO_RED:
    case KO_RAVG:
        len = cnt;
        for (size_t i = 0; i < cnt; i++) {
            int64_t g = g_of(key, i), got = (int64_t)out[i];
            /* elsewhere the buffer is as the caller left it */
            int64_t want = me == op->root ? (int64_t)mask * g /
                                                (op->k == KO_RAVG ? nact : 1)
                           : ip ? ((int64_t)1 << me) * g
                                : (int64_t)KT_POISON;
            if (got != want) {
                int64_t who = got % g == 0 ? got / g : -1;
                KT_BAD(i, (uint64_t)got, (uint64_t)want,
                       "(%s, contributors 0x%" PRIx64 ", view 0x%" PRIx64 ")",
                       me == op->root ? "root" : "not the root", (uint64_t)who,
                       mask);
            }
        }
        len = me == op->root ? cnt : 0; /* hash: only the root's result */
        break;
    case KO_GA:
        /* the root: every active rank's block, zeros for the others;
         * elsewhere the buffer is as the caller left it */
        len = me == op->root ? cnt * (size_t)n : cnt;
        for (int j = 0; j < (me == op->root ? n : 1); j++)
            for (size_t i = 0; i < cnt; i++) {
                uint64_t want = me != op->root ? KT_POISON
                                : mask >> j & 1 ? enc(j, key, i)
                                                : 0;
                uint64_t got = out[(size_t)j * cnt + i];
                if (got != want)
                    KT_BAD((size_t)j * cnt + i, got, want,
                           "(%s, block of rank %d, view 0x%" PRIx64 ")",
                           me == op->root ? "root" : "not the root", j, mask);
            }
        len = me == op->root ? len : 0; /* hash: only the root's result */
        break;
    case KO_SC:
        len = 0; /* every rank gets its own block: nothing to compare */
        for (size_t i = 0; i < cnt; i++)
            if (out[i] != enc2(op->root, me, key, i))
                KT_BAD(i, out[i], enc2(op->root, me, key, i),
                       "(block of rank %d from root %d)", me, op->root);
        break;
    }
#undef KT_BAD
    rec->wrong = wrong;
    rec->hash = len ? hash_words(out, len) : 0;
}

static void set_fatal(kt_child_t *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void set_fatal(kt_child_t *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->sh->fatal[c->rank], sizeof(c->sh->fatal[0]), fmt, ap);
    va_end(ap);
    fprintf(stderr, "[rank %d] %s\n", c->rank, c->sh->fatal[c->rank]);
}

static void note_status(kt_child_t *c, kt_rec_t *rec, mc_status_t st)
{
    snprintf(rec->note, sizeof(rec->note), "%s: %s", mc_status_str(st),
             mc_comm_last_error(c->comm));
}

/* Leave without a word (op boundary): no destroy, the kernel closes. */
static void leave_now(kt_child_t *c)
{
    __atomic_sub_fetch(&c->sh->alive, 1, __ATOMIC_SEQ_CST);
    _exit(0);
}

/* Record the op view and the current view after a successful call. */

static void record_views(kt_child_t *c, kt_rec_t *rec)
{
    uint8_t act[KT_MAXR];
    int nact = 0;
    uint64_t ep = 0;
    mc_status_t st = mc_comm_op_view(c->comm, &ep, act, &nact);
    if (st != MC_OK) {
        snprintf(rec->note, sizeof(rec->note), "mc_comm_op_view: %s",
                 mc_status_str(st));
        rec->wrong = -1;
        return;
    }
    rec->epoch = mc_test_epoch_rel(ep);
    rec->nactive = nact;
    rec->mask = 0;
    for (int r = 0; r < c->size; r++)
        if (act[r]) rec->mask |= (uint64_t)1 << r;
}

static void record_after(kt_child_t *c, kt_rec_t *rec)
{
    uint64_t ep = 0;
    mc_comm_view(c->comm, &ep, NULL, NULL);
    rec->cur_epoch = mc_test_epoch_rel(ep);
    rec->view_changes = mc_comm_view_changes(c->comm);
    rec->t_end_ns = now_ns();
    __atomic_store_n(&rec->done, 1, __ATOMIC_RELEASE);
}

/* Is `st` on this op an outcome the scenario allows (checked in detail by
 * the parent), so the loop goes on? */
static int allowed(const kt_child_t *c, const kt_op_t *op, mc_status_t st)
{
    if (st == MC_OK) return 1;
    return c->pl->sc->work == W_BC_DEADROOT && op->k == KO_BC &&
           st == MC_ERR_ROOT_FAILED;
}

static int rank_loop(kt_child_t *c)
{
    const kt_plan_t *pl = c->pl;
    const kt_scn_t *sc = pl->sc;
    kt_shared_t *sh = c->sh;
    int me = c->rank;
    int is_victim = 0;
    for (int v = 0; v < pl->nvict; v++)
        is_victim |= pl->victim[v] == me;

    mc_status_t st = mc_comm_barrier(c->comm);
    if (st != MC_OK) {
        set_fatal(c, "start barrier: %s: %s", mc_status_str(st),
                  mc_comm_last_error(c->comm));
        return 1;
    }
    sh->t_start_ns[me] = now_ns();
    __atomic_store_n(&sh->started[me], 1, __ATOMIC_RELEASE);

    for (int s = 0; s < sc->steps; s++) {
        const kt_op_t *op = &pl->ops[s % pl->nops];
        int it = s / pl->nops;
        int ip = has_inplace(op->k) && (it & 1);
        uint64_t key = (uint64_t)s + 1;
        kt_rec_t *rec = &sh->rec[me][s];

        if ((sc->kill == K_BOUNDARY || sc->kill == K_SHRINK) &&
            s == pl->boundary) {
            if (is_victim && sc->kill == K_SHRINK) {
                /* leave once the others no longer count on us */
                int64_t t0 = now_ns();
                while (__atomic_load_n(&sh->shrunk, __ATOMIC_ACQUIRE) <
                           c->size - pl->nvict &&
                       now_ns() - t0 < (int64_t)KT_DEADLINE_S * 1000000000)
                    usleep(1000);
            }
            if (is_victim) leave_now(c);
            if (sc->kill == K_SHRINK) {
                st = mc_comm_shrink(c->comm, pl->victim, pl->nvict);
                if (st != MC_OK) {
                    set_fatal(c, "mc_comm_shrink before step %d: %s: %s", s,
                              mc_status_str(st), mc_comm_last_error(c->comm));
                    return 1;
                }
                __atomic_add_fetch(&sh->shrunk, 1, __ATOMIC_SEQ_CST);
            }
        }

        /* Small random gaps between calls: the ranks arrive skewed, and a
         * loop of tiny ops cannot outrun the kill. */
        if (sc->pace_us)
            usleep((useconds_t)(mix64(pl->seed ^ ((uint64_t)me << 32) ^
                                      (uint64_t)s) %
                                (uint64_t)sc->pace_us));
        for (int v = 0; v < pl->nvict; v++) {
            if (pl->victim[v] != me) continue;
            if (sc->kill == K_BOUNDARY || sc->kill == K_SHRINK ||
                sc->kill == K_INJECT || sc->kill == K_LEFT ||
                sc->kill == K_RETURN)
                continue;
            if (pl->at_step[v] == s - 1 &&
                __atomic_load_n(&sh->gate_go[me], __ATOMIC_ACQUIRE)) {
                /* released at the last step's gate and not killed yet (the
                 * parent's random delay outlasted that call): wait here
                 * for the kill, just after the call, rather than run on.
                 * Steps that fail locally at once (a dead root's
                 * broadcast) could otherwise end the loop first. */
                int64_t t0 = now_ns();
                while (now_ns() - t0 < (int64_t)KT_DEADLINE_S * 1000000000)
                    usleep(50);
            }
            if (pl->at_step[v] != s) continue;
            /* the parent releases us and kills us inside this step */
            __atomic_store_n(&sh->at_gate[me], 1, __ATOMIC_RELEASE);
            int64_t t0 = now_ns();
            while (!__atomic_load_n(&sh->gate_go[me], __ATOMIC_ACQUIRE) &&
                   now_ns() - t0 < (int64_t)KT_DEADLINE_S * 1000000000)
                usleep(50);
        }
        st = step_issue(c, op, key, ip);
        rec->status1 = st;
        if (st != MC_OK && ip) rec->lost = inplace_lost(c, op, key);
        if (st == MC_ERR_PEER_FAILED && sc->manual) {
            int fr[KT_MAXR];
            int nf = mc_comm_failed_ranks(c->comm, fr, KT_MAXR);
            for (int i = 0; i < nf && i < KT_MAXR; i++)
                rec->failed |= (uint64_t)1 << fr[i];
            /* without recover the group stays unusable */
            rec->status2 = step_issue(c, op, key, ip);
            rec->recover_st = mc_comm_recover(c->comm);
            st = step_issue(c, op, key, ip);
        }
        rec->status = st;
        if (st == MC_OK) {
            record_views(c, rec);
            if (rec->wrong == 0)
                step_verify(c, op, key, ip, rec->mask, rec->nactive, rec);
        } else {
            note_status(c, rec, st);
            if (!sh->t_fail_ns[me]) sh->t_fail_ns[me] = now_ns();
        }
        record_after(c, rec);
        __atomic_store_n(&sh->epoch[me], rec->cur_epoch, __ATOMIC_RELEASE);
        __atomic_store_n(&sh->step[me], s + 1, __ATOMIC_RELEASE);
        if (sc->kill == K_LEFT && pl->nvict > 1 && me == pl->victim[1] &&
            s == pl->at_step[1])
            raise(SIGKILL); /* returned the step (in whatever view): die */
        if (sc->kill == K_RETURN && me == pl->victim[0] && s == pl->at_step[0])
            raise(SIGKILL);
        if (!allowed(c, op, st)) {
            /* stop: later calls could no longer match the others'. The
             * parent reports it (for FT off it is the expected outcome). */
            if (!sc->ft0)
                fprintf(stderr, "[rank %d] step %d %s: %s\n", me, s,
                        opk_names[op->k], rec->note);
            return 0;
        }
    }
    /* final barrier: in the final view, must succeed */
    kt_rec_t *fin = &sh->rec[me][sc->steps];
    st = mc_comm_barrier(c->comm);
    fin->status = fin->status1 = st;
    if (st == MC_OK)
        record_views(c, fin);
    else
        note_status(c, fin, st);
    record_after(c, fin);
    return 0;
}

static int rank_main(const kt_plan_t *pl, int rank)
{
    const kt_scn_t *sc = pl->sc;
    kt_child_t c = {.pl = pl, .sh = pl->sh, .rank = rank, .size = sc->size};
    mc_store_h store;
    mc_status_t st = mc_store_file_create(pl->dir, &store);
    if (st != MC_OK) {
        set_fatal(&c, "store: %s", mc_last_error());
        return 1;
    }
    if ((sc->kill == K_INJECT || sc->kill == K_LEFT) && rank == pl->victim[0]) {
        /* one staged allreduce per step: the (at_step+1)-th reaches it;
         * the final barrier's point is reached once more before the steps
         * (by the start barrier) */
        char spec[96];
        snprintf(spec, sizeof(spec), "%s:%d", sc->inject,
                 pl->at_step[0] + 1 + !strcmp(sc->inject, "ft.barrier.mid"));
        setenv("MOONCAKE_FAULT_INJECT", spec, 1);
    }
    if (sc->kill == K_RETURN && rank != pl->victim[0] && sc->inject) {
        /* one hit per step (a 2-rank allreduce's sendrecv, an exchange's
         * posted send): the (at_step+1)-th */
        char spec[96];
        snprintf(spec, sizeof(spec), "%s:%d:sleep=100", sc->inject,
                 pl->at_step[0] + 1);
        setenv("MOONCAKE_FAULT_INJECT", spec, 1);
    }
    for (size_t i = 0; i < sizeof(scn_env) / sizeof(scn_env[0]); i++)
        if (!strcmp(sc->name, scn_env[i].scn))
            setenv(scn_env[i].env, scn_env[i].val, 1);
    mc_comm_config_t cfg;
    mc_comm_config_init(&cfg);
    cfg.name = "kill";
    cfg.transport = sc->tr;
    cfg.timeout_ms = KT_OP_TIMEOUT_MS;
    cfg.init_timeout_ms = 30000;
    cfg.ft = !sc->ft0;
    cfg.auto_recover = !sc->manual;
    st = mc_comm_create(rank, sc->size, store, &cfg, &c.comm);
    if (st != MC_OK) {
        set_fatal(&c, "mc_comm_create: %s: %s", mc_status_str(st),
                  mc_last_error());
        mc_store_destroy(store);
        return 1;
    }
    c.cap = buf_elems(pl->ops, pl->nops, sc->size);
    c.sbuf = calloc(c.cap, sizeof(uint64_t));
    c.rbuf = calloc(c.cap, sizeof(uint64_t));
    int rc = 1;
    if (!c.sbuf || !c.rbuf)
        set_fatal(&c, "out of memory for %zu elements", c.cap);
    else
        rc = rank_loop(&c);
    /* Destroy only once every survivor is through: a peer that goes away
     * early would look like a failure to ranks still in the last call. */
    __atomic_add_fetch(&c.sh->done, 1, __ATOMIC_SEQ_CST);
    int64_t t0 = now_ns();
    while (__atomic_load_n(&c.sh->done, __ATOMIC_SEQ_CST) <
               __atomic_load_n(&c.sh->alive, __ATOMIC_SEQ_CST) &&
           now_ns() - t0 < (int64_t)KT_DEADLINE_S * 1000000000)
        usleep(1000);
    mc_comm_destroy(c.comm);
    mc_store_destroy(store);
    free(c.sbuf);
    free(c.rbuf);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Parent                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct kt_run {
    kt_plan_t pl;
    pid_t pid[KT_MAXR];
    int exited[KT_MAXR];
    int wstatus[KT_MAXR];
    int killed[KT_MAXR];
    int64_t t_kill_ns[2];
    int kill_step_seen[2]; /* victim's completed steps when killed */
    int timed_out;
    char *log;
    size_t log_len, log_cap;
    int nfail;
} kt_run_t;

static void fail_line(kt_run_t *k, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void fail_line(kt_run_t *k, const char *fmt, ...)
{
    k->nfail++;
    if (k->nfail > 40) return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    size_t n = strlen(line);
    if (k->log_len + n + 2 > k->log_cap) {
        size_t cap = (k->log_cap + n + 2) * 2;
        char *p = realloc(k->log, cap);
        if (!p) return;
        k->log = p;
        k->log_cap = cap;
    }
    memcpy(k->log + k->log_len, line, n);
    k->log[k->log_len + n] = '\n';
    k->log_len += n + 1;
    k->log[k->log_len] = '\0';
}

static void reap_some(kt_run_t *k)
{
    int n = k->pl.sc->size;
    for (;;) {
        int st;
        pid_t p = waitpid(-1, &st, WNOHANG);
        if (p <= 0) return;
        for (int r = 0; r < n; r++)
            if (k->pid[r] == p) {
                k->exited[r] = 1;
                k->wstatus[r] = st;
            }
    }
}

static int all_exited(const kt_run_t *k)
{
    for (int r = 0; r < k->pl.sc->size; r++)
        if (!k->exited[r]) return 0;
    return 1;
}

static int past_deadline(const kt_run_t *k, int64_t t0)
{
    return now_ns() - t0 > (int64_t)KT_DEADLINE_S * 1000000000;
}

/* Poll until cond(k, arg) holds; 0 if the deadline passed or every child
 * ended first. */
static int wait_for(kt_run_t *k, int64_t t0, int (*cond)(kt_run_t *, int),
                    int arg)
{
    while (!cond(k, arg)) {
        reap_some(k);
        if (all_exited(k) || past_deadline(k, t0)) return 0;
        usleep(100);
    }
    return 1;
}

static int cond_started(kt_run_t *k, int unused)
{
    (void)unused;
    for (int r = 0; r < k->pl.sc->size; r++)
        if (!__atomic_load_n(&k->pl.sh->started[r], __ATOMIC_ACQUIRE)) return 0;
    return 1;
}

/* victim `arg` waits at its gate */
static int cond_gate(kt_run_t *k, int arg)
{
    return __atomic_load_n(&k->pl.sh->at_gate[arg], __ATOMIC_ACQUIRE) ||
           k->exited[arg];
}

/* every rank alive has a current view of epoch >= arg */
static int cond_epoch(kt_run_t *k, int arg)
{
    for (int r = 0; r < k->pl.sc->size; r++) {
        if (k->killed[r] || k->exited[r]) continue;
        if (__atomic_load_n(&k->pl.sh->epoch[r], __ATOMIC_ACQUIRE) <
            (uint64_t)arg)
            return 0;
    }
    return 1;
}

/* Account for victims [which, which + nv) as killed now. */
static void mark_killed(kt_run_t *k, int which, int nv)
{
    kt_shared_t *sh = k->pl.sh;
    for (int i = 0; i < nv; i++) {
        int v = k->pl.victim[which + i];
        k->killed[v] = 1;
        k->kill_step_seen[which + i] =
            __atomic_load_n(&sh->step[v], __ATOMIC_ACQUIRE);
        __atomic_sub_fetch(&sh->alive, 1, __ATOMIC_SEQ_CST);
    }
    k->t_kill_ns[which] = now_ns();
}

static void do_kill(kt_run_t *k, int which, int nv)
{
    mark_killed(k, which, nv);
    for (int i = 0; i < nv; i++)
        kill(k->pid[k->pl.victim[which + i]], SIGKILL);
}

/* Wait until the victim(s) reach their gate at step at_step[which] (the
 * others are then inside that call or about to enter it), let them go, and
 * kill them after a random part of one step's duration (pacing included),
 * so the kill lands anywhere in the call or just after it. */
static void kill_at(kt_run_t *k, int64_t t0, uint64_t *rng, int which, int nv)
{
    kt_shared_t *sh = k->pl.sh;
    for (int i = 0; i < nv; i++)
        if (!wait_for(k, t0, cond_gate, k->pl.victim[which + i])) return;
    int v = k->pl.victim[which];
    int done = __atomic_load_n(&sh->step[v], __ATOMIC_ACQUIRE);
    int64_t per = (now_ns() - sh->t_start_ns[v]) / (done ? done : 1);
    int64_t delay_us =
        per > 1000 ? (int64_t)(rng_next(rng) % (uint64_t)(per / 1000)) : 0;
    for (int i = 0; i < nv; i++)
        __atomic_store_n(&sh->gate_go[k->pl.victim[which + i]], 1,
                         __ATOMIC_RELEASE);
    if (delay_us) usleep((useconds_t)delay_us);
    do_kill(k, which, nv);
}

/* K_INJECT: victim `which` kills itself (at the fault point); once it is
 * gone, account for it as for a kill from here. */
static void kill_self_seen(kt_run_t *k, int64_t t0, int which)
{
    int v = k->pl.victim[which];
    while (!k->exited[v] && !past_deadline(k, t0)) {
        int st;
        if (waitpid(k->pid[v], &st, WNOHANG) == k->pid[v]) {
            k->exited[v] = 1;
            k->wstatus[v] = st;
            break;
        }
        usleep(100);
    }
    mark_killed(k, which, 1);
}

static void drive(kt_run_t *k)
{
    const kt_scn_t *sc = k->pl.sc;
    uint64_t rng = k->pl.seed ^ 0xD1B54A32D192ED03ULL;
    int64_t t0 = now_ns();
    if (wait_for(k, t0, cond_started, 0)) {
        switch (sc->kill) {
        case K_RANDOM:
            kill_at(k, t0, &rng, 0, 1);
            break;
        case K_TWO:
            kill_at(k, t0, &rng, 0, 2);
            break;
        case K_INJECT:
        case K_RETURN:
            kill_self_seen(k, t0, 0);
            break;
        case K_LEFT:
            kill_self_seen(k, t0, 0);
            kill_self_seen(k, t0, 1);
            break;
        case K_SECOND:
            kill_at(k, t0, &rng, 0, 1);
            /* the second victim's gate holds everyone a few steps later:
             * by then the survivors must have moved to epoch 2 */
            if (wait_for(k, t0, cond_gate, k->pl.victim[1]) &&
                wait_for(k, t0, cond_epoch, 2))
                kill_at(k, t0, &rng, 1, 1);
            break;
        default:
            break;
        }
    }
    while (!all_exited(k)) {
        reap_some(k);
        if (past_deadline(k, t0)) {
            k->timed_out = 1;
            for (int r = 0; r < sc->size; r++)
                if (!k->exited[r]) kill(k->pid[r], SIGKILL);
            for (int r = 0; r < sc->size; r++)
                if (!k->exited[r]) {
                    waitpid(k->pid[r], &k->wstatus[r], 0);
                    k->exited[r] = 1;
                }
            break;
        }
        usleep(500);
    }
}

/* ------------------------------------------------------------------------ */
/* Checks                                                                   */
/* ------------------------------------------------------------------------ */

static int is_gone(const kt_run_t *k, int r)
{
    for (int v = 0; v < k->pl.nvict; v++)
        if (k->pl.victim[v] == r) return 1;
    return 0;
}

static uint64_t all_mask(int n)
{
    return ((uint64_t)1 << n) - 1;
}

static const char *st_name(int32_t st)
{
    return mc_status_str((mc_status_t)st);
}

/* Process exits and harness errors. */
static void check_procs(kt_run_t *k)
{
    const kt_scn_t *sc = k->pl.sc;
    kt_shared_t *sh = k->pl.sh;
    for (int r = 0; r < sc->size; r++) {
        int st = k->wstatus[r];
        if (sh->fatal[r][0])
            fail_line(k, "rank %d: harness error: %s", r, sh->fatal[r]);
        if (is_gone(k, r) && (sc->kill == K_BOUNDARY || sc->kill == K_SHRINK)) {
            if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
                fail_line(k, "rank %d (leaving) ended with wait status 0x%x", r,
                          st);
        } else if (k->killed[r]) {
            if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGKILL)
                fail_line(k, "rank %d (killed) ended with wait status 0x%x", r,
                          st);
        } else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            if (WIFSIGNALED(st))
                fail_line(k, "survivor rank %d died of signal %d%s", r,
                          WTERMSIG(st),
                          k->timed_out ? " (killed at the deadline)" : "");
            else
                fail_line(k, "survivor rank %d exited with %d", r,
                          WEXITSTATUS(st));
        }
    }
    if (k->timed_out)
        fail_line(k,
                  "scenario did not finish within %d s; steps done: "
                  "%d %d %d %d %d %d %d %d (per rank)",
                  KT_DEADLINE_S, sh->step[0], sh->step[1], sh->step[2],
                  sh->step[3], sh->step[4], sh->step[5], sh->step[6],
                  sh->step[7]);
    for (int v = 0; v < k->pl.nvict; v++)
        if (k->killed[k->pl.victim[v]] && k->kill_step_seen[v] >= sc->steps)
            fail_line(k,
                      "harness: rank %d was killed only after its loop "
                      "ended (scenario too short)",
                      k->pl.victim[v]);
}

static void rec_line(kt_run_t *k, int r, int s, const char *why)
{
    const kt_rec_t *x = &k->pl.sh->rec[r][s];
    fail_line(k,
              "  step %d rank %d: %s: %s epoch %" PRIu64 " mask 0x%" PRIx64
              " nactive %d wrong %" PRId64 " hash %016" PRIx64
              " cur_epoch %" PRIu64 " changes %" PRIu64 "%s%s",
              s, r, why, st_name(x->status), x->epoch, x->mask, x->nactive,
              x->wrong, x->hash, x->cur_epoch, x->view_changes,
              x->note[0] ? " | " : "", x->note);
}

static int op_replicated(kt_opk_t o)
{
    return o == KO_AR || o == KO_AVG || o == KO_F64 || o == KO_AG ||
           o == KO_BC || o == KO_H16;
}

/* The per-step checks over the survivors for FT-on scenarios. */
static void check_steps(kt_run_t *k)
{
    const kt_scn_t *sc = k->pl.sc;
    const kt_plan_t *pl = &k->pl;
    kt_shared_t *sh = pl->sh;
    int n = sc->size;
    uint64_t surv = 0;
    for (int r = 0; r < n; r++)
        if (!is_gone(k, r)) surv |= (uint64_t)1 << r;
    uint64_t full = all_mask(n);
    uint64_t mask_of[KT_MAXSTEP + 2] = {0}; /* by epoch */
    int first = -1;
    for (int r = 0; r < n; r++)
        if (surv >> r & 1) {
            first = r;
            break;
        }
    if (first < 0) return;
    int manual_step[KT_MAXR];
    int rootfail_from = -1; /* first step with ROOT_FAILED (on `first`) */
    for (int r = 0; r < n; r++)
        manual_step[r] = -1;
    uint64_t prev_epoch[KT_MAXR] = {0};

    for (int s = 0; s <= sc->steps; s++) {
        int fin = s == sc->steps;
        const kt_op_t *op = fin ? NULL : &pl->ops[s % pl->nops];
        const kt_rec_t *a = &sh->rec[first][s];
        for (int r = 0; r < n; r++) {
            if (!(surv >> r & 1)) continue;
            const kt_rec_t *x = &sh->rec[r][s];
            if (!x->done) {
                fail_line(k, "step %d%s: rank %d never completed it", s,
                          fin ? " (final barrier)" : "", r);
                return; /* later steps are missing as well */
            }
            if (x->lost)
                fail_line(k,
                          "step %d rank %d: the call failed (%s) and changed "
                          "%" PRId64 " elements of its in-place input",
                          s, r, st_name(x->status1), x->lost);
            int want_ok = 1;
            if (op && op->k == KO_BC && sc->work == W_BC_DEADROOT &&
                x->status == MC_ERR_ROOT_FAILED) {
                want_ok = 0;
                if (r == first && rootfail_from < 0) rootfail_from = s;
            }
            if (sc->manual && x->status1 == MC_ERR_PEER_FAILED) {
                if (manual_step[r] >= 0)
                    rec_line(k, r, s, "second MC_ERR_PEER_FAILED (manual)");
                manual_step[r] = s;
                if (x->status2 != MC_ERR_PEER_FAILED)
                    fail_line(k,
                              "step %d rank %d: call before recover "
                              "returned %s, want MC_ERR_PEER_FAILED",
                              s, r, st_name(x->status2));
                if (x->recover_st != MC_OK)
                    fail_line(k, "step %d rank %d: mc_comm_recover: %s", s, r,
                              st_name(x->recover_st));
                uint64_t killed = full & ~surv;
                if (x->failed != killed)
                    fail_line(k,
                              "step %d rank %d: mc_comm_failed_ranks "
                              "mask 0x%" PRIx64 ", killed 0x%" PRIx64,
                              s, r, x->failed, killed);
            } else if (x->status1 != x->status) {
                rec_line(k, r, s, "unexpected first status");
            }
            if (want_ok && x->status != MC_OK) {
                rec_line(k, r, s, "failed");
                continue;
            }
            if (!want_ok) {
                if (rootfail_from < 0 || s < rootfail_from)
                    rec_line(k, r, s, "ROOT_FAILED on this rank only");
                continue;
            }
            if (x->wrong) rec_line(k, r, s, "wrong result");
            /* the op view: contains every survivor, epoch 1 <=> full */
            if ((x->mask & surv) != surv || (x->mask & ~full))
                rec_line(k, r, s, "op view lacks a survivor");
            if ((x->epoch == 1) != (x->mask == full))
                rec_line(k, r, s, "epoch 1 must be the full view");
            if (x->nactive != popcount64(x->mask))
                rec_line(k, r, s, "nactive differs from the mask");
            if (x->epoch < prev_epoch[r])
                rec_line(k, r, s, "op view epoch went back");
            prev_epoch[r] = x->epoch;
            if (x->epoch <= KT_MAXSTEP + 1) {
                if (!mask_of[x->epoch])
                    mask_of[x->epoch] = x->mask;
                else if (mask_of[x->epoch] != x->mask)
                    rec_line(k, r, s, "two active sets for one epoch");
            }
            if (x->cur_epoch < x->epoch || x->view_changes + 1 < x->cur_epoch)
                rec_line(k, r, s, "current view / change counter behind");
            if (op && op->k == KO_BC &&
                !(x->mask >>
                      (op->root == KT_ROOT_VICTIM ? pl->victim[0] : op->root) &
                  1))
                rec_line(k, r, s, "broadcast succeeded without its root");
            /* agreement with the first survivor */
            if (r != first && x->status != a->status)
                rec_line(k, r, s, "status differs from lowest survivor");
            if (r != first && a->status == MC_OK) {
                if (x->epoch != a->epoch || x->mask != a->mask)
                    rec_line(k, r, s, "op view differs from lowest survivor");
                if (op && op_replicated(op->k) && x->hash != a->hash)
                    rec_line(k, r, s, "result differs from lowest survivor");
            }
        }
        /* guarantee 2 covers every rank that completed the step, a victim
         * that returned it before it died included */
        for (int r = 0; r < n && op && a->done && a->status == MC_OK; r++) {
            const kt_rec_t *x = &sh->rec[r][s];
            if ((surv >> r & 1) || !x->done || x->status != MC_OK) continue;
            int differs = x->wrong || x->epoch != a->epoch ||
                          x->mask != a->mask ||
                          (op_replicated(op->k) && x->hash != a->hash);
            if (!differs) continue;
            char why[96];
            snprintf(why, sizeof(why),
                     "died later; the survivors completed it in view %" PRIu64,
                     a->epoch);
            rec_line(k, r, s, why);
        }
        if (k->nfail && k->nfail <= 40 && s < sc->steps &&
            sh->rec[first][s].status != MC_OK)
            rec_line(k, first, s, "(lowest survivor)");
        /* in a dead-root scenario, once failing always failing */
        if (op && op->k == KO_BC && rootfail_from >= 0 && s > rootfail_from &&
            sh->rec[first][s].status != MC_ERR_ROOT_FAILED)
            rec_line(k, first, s, "broadcast from dead root succeeded again");
    }

    /* the final view: exactly the survivors */
    const kt_rec_t *f = &sh->rec[first][sc->steps];
    int changes = sc->kill == K_NONE ? 0 : sc->kill == K_SECOND ? 2 : 1;
    uint64_t want_ep_lo = 1 + (uint64_t)changes;
    uint64_t want_ep_hi =
        want_ep_lo + (sc->kill == K_TWO || sc->kill == K_LEFT ? 1 : 0);
    if (f->done && f->status == MC_OK) {
        if (f->mask != surv)
            fail_line(k, "final view mask 0x%" PRIx64 ", survivors 0x%" PRIx64,
                      f->mask, surv);
        if (f->epoch < want_ep_lo || f->epoch > want_ep_hi)
            fail_line(k, "final view epoch %" PRIu64 ", want %" PRIu64 "%s",
                      f->epoch, want_ep_lo,
                      want_ep_hi > want_ep_lo ? " or one more" : "");
        if (f->view_changes != f->epoch - 1)
            fail_line(
                k, "final mc_comm_view_changes %" PRIu64 " for epoch %" PRIu64,
                f->view_changes, f->epoch);
    }
    if (sc->kill == K_SECOND && mask_of[2] == 0)
        fail_line(k, "no step completed in epoch 2 (between the kills)");
    if (sc->kill == K_BOUNDARY || sc->kill == K_SHRINK) {
        /* the leaver finished step b-1; step b cannot include it, steps
         * before b-1 must (b-1 itself may have re-run without it) */
        int b = pl->boundary;
        for (int s = 0; s < sc->steps; s++) {
            const kt_rec_t *x = &sh->rec[first][s];
            if (!x->done || x->status != MC_OK) continue;
            if (s < b - 1 && x->epoch != 1)
                rec_line(k, first, s, "before the boundary, not epoch 1");
            if (s >= b && x->epoch != 2)
                rec_line(k, first, s, "after the boundary, not epoch 2");
        }
    }
    if (sc->manual) {
        int s0 = manual_step[first];
        if (s0 < 0) fail_line(k, "manual mode: no MC_ERR_PEER_FAILED seen");
        for (int r = 0; r < n; r++)
            if ((surv >> r & 1) && manual_step[r] != s0)
                fail_line(k,
                          "manual mode: rank %d failed at step %d, rank %d "
                          "at step %d",
                          r, manual_step[r], first, s0);
    }
    if (sc->work == W_BC_DEADROOT && rootfail_from < 0)
        fail_line(k, "no broadcast failed with MC_ERR_ROOT_FAILED");
}

/* FT off: every survivor's loop stops with a failed call, bounded. */
static void check_ft0(kt_run_t *k)
{
    const kt_scn_t *sc = k->pl.sc;
    kt_shared_t *sh = k->pl.sh;
    for (int r = 0; r < sc->size; r++) {
        if (k->killed[r]) continue;
        int s;
        for (s = 0; s < sc->steps; s++) {
            const kt_rec_t *x = &sh->rec[r][s];
            if (!x->done) break;
            if (x->status != MC_OK) break;
            if (x->wrong || x->epoch != 1 || x->mask != all_mask(sc->size))
                rec_line(k, r, s, "FT off: wrong result or view");
        }
        if (sc->kill == K_NONE) {
            if (s < sc->steps) rec_line(k, r, s, "FT off, no kill: failed");
            continue;
        }
        if (s >= sc->steps || !sh->rec[r][s].done) {
            fail_line(k, "FT off: survivor %d has no failed call (%d steps)", r,
                      s);
            continue;
        }
        double lat = (double)(sh->t_fail_ns[r] - k->t_kill_ns[0]) / 1e9;
        if (lat > KT_FT0_FAIL_S)
            fail_line(k,
                      "FT off: survivor %d's call failed %.2f s after the "
                      "kill (> %.0f s)",
                      r, lat, KT_FT0_FAIL_S);
    }
}

/* Kill-to-return latency of the interrupted call, per survivor (info). */
static void print_latency(const kt_run_t *k)
{
    const kt_scn_t *sc = k->pl.sc;
    kt_shared_t *sh = k->pl.sh;
    if (!k->t_kill_ns[0]) return;
    double worst = 0;
    for (int r = 0; r < sc->size; r++) {
        if (k->killed[r] || is_gone(k, r)) continue;
        for (int s = 0; s <= sc->steps; s++) {
            const kt_rec_t *x = &sh->rec[r][s];
            if (!x->done) break;
            if (x->t_end_ns > k->t_kill_ns[0]) {
                double ms = (double)(x->t_end_ns - k->t_kill_ns[0]) / 1e6;
                if (ms > worst) worst = ms;
                break;
            }
        }
    }
    printf("  kill -> interrupted call returned on every survivor: %.1f ms\n",
           worst);
}

/* ------------------------------------------------------------------------ */
/* Driver                                                                   */
/* ------------------------------------------------------------------------ */

static uint64_t base_seed;
static int repeat = 2; /* two seeds per scenario per run */

static uint64_t name_hash(const char *s)
{
    uint64_t h = 0xCBF29CE484222325ULL;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 0x100000001B3ULL;
    return h;
}

static void plan(kt_plan_t *pl, const kt_scn_t *sc, uint64_t seed)
{
    uint64_t rng = seed;
    pl->sc = sc;
    pl->seed = seed;
    pl->nops = workload(sc, pl->ops);
    int n = sc->size;
    int root_busy = sc->work == W_BC || sc->work == W_MIX ||
                    sc->work == W_RED || sc->work == W_RAVG ||
                    sc->work == W_GA ||
                    sc->work == W_SC; /* root 0 lives */
    int cand[KT_MAXR], nc = 0;
    for (int r = 0; r < n; r++)
        if (!(root_busy && r == 0)) cand[nc++] = r;
    pl->nvict =
        sc->kill == K_NONE                                                ? 0
        : sc->kill == K_TWO || sc->kill == K_SECOND || sc->kill == K_LEFT ? 2
                                                                          : 1;
    for (int v = 0; v < pl->nvict; v++) {
        int i = rng_int(&rng, 0, nc - 1);
        pl->victim[v] = cand[i];
        cand[i] = cand[--nc];
    }
    if (sc->victim >= 0 && pl->nvict) {
        /* fixed first victim; keep the second distinct */
        if (pl->nvict > 1 && pl->victim[1] == sc->victim)
            pl->victim[1] = pl->victim[0];
        pl->victim[0] = sc->victim;
    }
    /* kill in the first third (K_SECOND: first fifth), so there are steps
     * left to see the recovery */
    int hi = sc->kill == K_SECOND ? sc->steps / 5 : sc->steps / 3;
    pl->at_step[0] = rng_int(&rng, 1, hi > 1 ? hi : 1);
    pl->at_step[1] = sc->kill == K_TWO ? pl->at_step[0]
                     : sc->kill == K_SECOND
                         ? pl->at_step[0] + rng_int(&rng, 4, 8)
                         : -1;
    if (sc->kill == K_LEFT) { /* the one it signals first: vrank + 1 */
        pl->victim[1] = (pl->victim[0] + 1) % n;
        pl->at_step[1] = pl->at_step[0];
    }
    pl->boundary = rng_int(&rng, 2, sc->steps / 2);
}

static void run_one(const kt_scn_t *sc, uint64_t seed)
{
    kt_run_t k;
    memset(&k, 0, sizeof(k));
    plan(&k.pl, sc, seed);
    kt_shared_t *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
                           MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(sh != MAP_FAILED);
    memset(sh, 0, sizeof(*sh));
    sh->alive = sc->size;
    k.pl.sh = sh;
    char *dir = mc_test_mkdtemp();
    assert_non_null(dir);
    k.pl.dir = dir;
    assert_true(sc->steps <= KT_MAXSTEP && sc->size <= KT_MAXR);

    char vict[64] = "none";
    if (k.pl.nvict == 1)
        snprintf(vict, sizeof(vict), "%d", k.pl.victim[0]);
    else if (k.pl.nvict == 2)
        snprintf(vict, sizeof(vict), "%d,%d", k.pl.victim[0], k.pl.victim[1]);
    printf("[ kill ] %s: seed 0x%016" PRIx64 " ranks %d %s victims %s",
           sc->name, seed, sc->size, sc->tr == SHM ? "shm" : "tcp", vict);
    if (sc->kill == K_BOUNDARY || sc->kill == K_SHRINK)
        printf(" leaving before step %d", k.pl.boundary);
    else if (sc->kill == K_RETURN)
        printf(" after it returns step %d (the survivor held at %s)",
               k.pl.at_step[0], sc->inject ? sc->inject : "-");
    else if (k.pl.nvict)
        printf(" in step %d%s%s", k.pl.at_step[0], sc->inject ? " at " : "",
               sc->inject ? sc->inject : "");
    if (sc->kill == K_SECOND) printf(" and %d", k.pl.at_step[1]);
    printf(" of %d%s%s\n", sc->steps, sc->manual ? " (manual)" : "",
           sc->ft0 ? " (FT off)" : "");
    fflush(stdout);

    int64_t t0 = now_ns();
    fflush(NULL);
    for (int r = 0; r < sc->size; r++) {
        pid_t p = fork();
        if (p == 0) {
            int rc = rank_main(&k.pl, r);
            fflush(NULL);
            _exit(rc ? 1 : 0);
        }
        if (p < 0) {
            perror("fork");
            for (int q = 0; q < r; q++)
                kill(k.pid[q], SIGKILL);
            for (int q = 0; q < r; q++)
                waitpid(k.pid[q], NULL, 0);
            munmap(sh, sizeof(*sh));
            mc_test_rmtree(dir);
            free(dir);
            fail_msg("fork failed");
        }
        k.pid[r] = p;
    }
    drive(&k);
    double secs = (double)(now_ns() - t0) / 1e9;

    check_procs(&k);
    if (sc->ft0)
        check_ft0(&k);
    else
        check_steps(&k);
    if (k.pl.nvict && k.kill_step_seen[0])
        printf("  killed rank %d after it completed %d steps\n", k.pl.victim[0],
               k.kill_step_seen[0]);
    if (k.pl.nvict > 1 && k.t_kill_ns[1] && sc->kill == K_SECOND)
        printf("  killed rank %d after it completed %d steps\n", k.pl.victim[1],
               k.kill_step_seen[1]);
    if (sc->kill == K_LEFT) {
        /* which way the race went: did the neighbour leave the barrier? */
        const kt_rec_t *x = &sh->rec[k.pl.victim[1]][k.pl.at_step[1]];
        if (x->done && x->status == MC_OK)
            printf("  rank %d returned step %d in view %" PRIu64 " and died\n",
                   k.pl.victim[1], k.pl.at_step[1], x->epoch);
        else
            printf("  rank %d died without returning step %d\n", k.pl.victim[1],
                   k.pl.at_step[1]);
    }
    if (sc->kill == K_INJECT) {
        /* which way it went: the old view (every survivor had the dead
         * rank's whole part) or a re-run without it */
        int lo = -1;
        for (int r = 0; r < sc->size && lo < 0; r++)
            if (r != k.pl.victim[0]) lo = r;
        const kt_rec_t *x = &sh->rec[lo][k.pl.at_step[0]];
        if (x->done && x->status == MC_OK)
            printf("  step %d completed in view %" PRIu64 " (%s)\n",
                   k.pl.at_step[0], x->epoch,
                   x->epoch == 1 ? "the old one" : "re-run");
        /* the shared slots decide by the words alone: a rank dead before
         * its word makes every survivor re-run the op; one dead after it
         * saw every word (or later) makes every survivor complete it in
         * the old view */
        int want_ep = !strcmp(sc->inject, "slot.data") ||
                              !strcmp(sc->inject, "slot.chunk")
                          ? 2
                      : !strcmp(sc->inject, "slot.seen") ||
                              !strcmp(sc->inject, "slot.res") ||
                              !strcmp(sc->inject, "slot.res.seen")
                          ? 1
                          : 0;
        /* the step it died in: the steps it completed (in a workload of
         * several ops not every step reaches the point, so at_step is
         * only a lower bound) */
        int ds = k.kill_step_seen[0];
        for (int r = 0; want_ep && k.killed[k.pl.victim[0]] &&
                        ds < sc->steps && r < sc->size;
             r++) {
            const kt_rec_t *y = &sh->rec[r][ds];
            if (!is_gone(&k, r) && y->done && y->status == MC_OK &&
                y->epoch != (uint64_t)want_ep)
                fail_line(&k,
                          "rank %d completed step %d in view %" PRIu64
                          ", want view %d (%s at %s)",
                          r, ds, y->epoch, want_ep,
                          want_ep == 1 ? "the old one" : "a re-run",
                          sc->inject);
        }
    }
    if (sc->kill == K_RETURN) {
        const kt_rec_t *x = &sh->rec[k.pl.victim[0]][k.pl.at_step[0]];
        printf("  rank %d returned step %d (%s) in view %" PRIu64 " and died\n",
               k.pl.victim[0], k.pl.at_step[0],
               x->done ? mc_status_str(x->status) : "not done", x->epoch);
    }
    if (!sc->ft0) print_latency(&k);
    printf("  %s in %.2f s\n", k.nfail ? "FAILED" : "ok", secs);
    fflush(stdout);
    munmap(sh, sizeof(*sh));
    mc_test_rmtree(dir);
    free(dir);
    if (k.nfail) {
        fprintf(stderr,
                "%s (seed 0x%016" PRIx64 ", ranks %d, victims %s): %d "
                "problem(s)%s:\n%s",
                sc->name, seed, sc->size, vict, k.nfail,
                k.nfail > 40 ? ", first 40" : "", k.log ? k.log : "");
        free(k.log);
        /* fail_msg does not return (cmocka longjmps out of the test) */
        fail_msg("%s: seed 0x%016" PRIx64 " (MC_KILL_SEED=0x%016" PRIx64
                 " MC_KILL_ONLY=%s repeats it)",
                 sc->name, seed, base_seed, sc->name);
    }
    free(k.log);
}

/* The MOONCAKE_SLOT_MAX a slot_* row needs for its op to take the slots:
 * its parts are above 256 KiB in the large rows of the split allreduce,
 * allgather, reduce and reduce_scatter. */
static size_t slot_row_min(const char *name)
{
    return !strcmp(name, "slot_split_big_shm_3") ||
                   !strncmp(name, "slot_ag_big_", 12) ||
                   strstr(name, "_xl_")
               ? (size_t)512 << 10
               : (size_t)256 << 10;
}

static void test_scenario(void **state)
{
    const kt_scn_t *sc = *state;
    const char *f = getenv("MOONCAKE_ALGO_ALLREDUCE"),
               *fr = getenv("MOONCAKE_ALGO_REDUCE"),
               *frs = getenv("MOONCAKE_ALGO_REDUCE_SCATTER"),
               *m = getenv("MOONCAKE_SLOT_MAX"),
               *sp = getenv("MOONCAKE_SLOT_SPLIT_MIN");
    if (!strncmp(sc->name, "slot_", 5) &&
        ((f && *f) || (fr && *fr) || (frs && *frs) ||
         (m && *m &&
          strtoull(m, NULL, 0) < slot_row_min(sc->name)) ||
         (!strncmp(sc->name, "slot_split_", 11) && sp && *sp &&
          strtoull(sp, NULL, 0) != ((size_t)48 << 10)))) {
        /* the shared slots are off with a forced algorithm, and other
         * limits move the rows' sizes off them (or
         * off the split): their fault points never fire there */
        printf("[ skip ] %s: no shared slots for it in this environment\n",
               sc->name);
        return;
    }
    for (int i = 0; i < repeat; i++)
        run_one(sc, mix64(base_seed ^ name_hash(sc->name)) + (uint64_t)i);
}

int main(void)
{
    const char *s = getenv("MC_KILL_SEED");
    base_seed = s && *s
                    ? strtoull(s, NULL, 0)
                    : mix64((uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^
                            (uint64_t)now_ns());
    const char *rp = getenv("MC_KILL_REPEAT");
    if (rp && atoi(rp) > 0) repeat = atoi(rp);
    printf("test_kill: MC_KILL_SEED=0x%016" PRIx64 "%s\n", base_seed,
           s && *s ? " (from the environment)" : "");
    /* the engine's warnings on view changes are expected; keep them unless
     * asked for */
    if (!getenv("MOONCAKE_LOG_LEVEL")) setenv("MOONCAKE_LOG_LEVEL", "error", 1);
    signal(SIGPIPE, SIG_IGN);
    const char *only = getenv("MC_KILL_ONLY"); /* cmocka pattern, e.g. ar_* */
    if (only && *only) cmocka_set_test_filter(only);
    static struct CMUnitTest tests[NSCN];
    for (int i = 0; i < NSCN; i++)
        tests[i] = (struct CMUnitTest){scenarios[i].name, test_scenario, NULL,
                                       NULL, (void *)&scenarios[i]};
    return _cmocka_run_group_tests("kill", tests, NSCN, NULL, NULL);
}
