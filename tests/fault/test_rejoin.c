/*
 * Rejoin and scale-up with real processes (docs/fault-model.md, guarantee
 * 6, and 2/3 across the view changes): rank processes run a loop of int64
 * allreduces; the parent SIGKILLs ranks at random moments and starts
 * replacement processes with cfg.join for the freed slots (kill, replace,
 * repeat), or starts joiners for reserved slots (max_size).
 *
 * Each rank's loop (the pattern an elastic training job uses):
 *   - step s: allreduce SUM of (slot + 1) * g(s, i), plus one element that
 *     carries "the parent asks to stop" so that all ranks stop at the same
 *     step; the result must equal the reference over the active set of the
 *     op's view (mc_comm_op_view) -- no dead rank's partial data, and a
 *     joiner counted from the first op of its view only;
 *   - joiners enter after any collective (cfg.admit_auto): after each op,
 *     if the view grew (mc_comm_joined_ranks of a new epoch), the members
 *     broadcast the step counter from the lowest old member; a joiner's
 *     first call is that broadcast, so it continues at the right step (the
 *     joiner learns the start seq from the engine);
 *   - or only where the application says (explicit admission): a step is
 *     two allreduces and then mc_comm_admit; the broadcast follows an admit
 *     that added ranks. A joiner entering anywhere else would meet the
 *     second allreduce with its broadcast: a mismatch, and the test fails.
 * Every rank records per step (epoch, active mask, hash of the result) in
 * MAP_SHARED memory; the parent checks that every rank that completed a
 * step agrees on them, that each joiner was admitted and ran steps, and
 * that every process still in the group at the end finished cleanly.
 *
 * Also: a join request for a slot whose process is alive is not admitted
 * (bounded, clear error), and join without fault tolerance is refused.
 *
 * MC_REJOIN_SEED=<n> fixes the seed (printed).
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests_common.h"

#define RJ_MAXR 8
#define RJ_MAXSTEP 60000
#define RJ_COUNT 1024
#define RJ_DEADLINE_S 120

typedef struct {
    uint64_t epoch;
    uint32_t mask;
    uint32_t valid;
    uint64_t hash;
} rj_rec_t;

typedef struct {
    _Atomic int step[RJ_MAXR];   /* steps completed by the slot's process */
    _Atomic int joined[RJ_MAXR]; /* slot's current process is a joiner that
                                    got in (its first step) */
    _Atomic int done[RJ_MAXR];   /* finished the loop, checks passed */
    _Atomic int quit;            /* parent: stop at the next step */
    _Atomic int wrong;           /* elements off the reference, all ranks */
    char err[RJ_MAXR][256];
    rj_rec_t rec[RJ_MAXR][RJ_MAXSTEP];
} rj_shm_t;

typedef struct {
    int size, max_size;
    int explicit_admit; /* steps of two allreduces + mc_comm_admit */
    mc_transport_kind_t tr;
    char dir[256];
    rj_shm_t *shm;
    pid_t pid[RJ_MAXR];
} rj_run_t;

static int64_t g_of(int step, int i)
{
    return (int64_t)(step + 1) * 1000003 + i;
}

static uint64_t hash64(const int64_t *v, int n)
{
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < n; i++) {
        h ^= (uint64_t)v[i];
        h *= 1099511628211ull;
    }
    return h;
}

static void rj_fail(rj_shm_t *sh, int slot, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void rj_fail(rj_shm_t *sh, int slot, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sh->err[slot], sizeof(sh->err[slot]), fmt, ap);
    va_end(ap);
    fprintf(stderr, "rank %d: %s\n", slot, sh->err[slot]);
}

/* Root of the catch-up broadcast: the lowest member that is not new. */
static int catchup_root(mc_comm_h comm, int n)
{
    uint8_t act[RJ_MAXR];
    int j[RJ_MAXR], nj = mc_comm_joined_ranks(comm, j, RJ_MAXR);
    mc_comm_view(comm, NULL, act, NULL);
    for (int p = 0; p < n; p++) {
        int is_new = 0;
        for (int k = 0; k < nj; k++)
            is_new |= j[k] == p;
        if (act[p] && !is_new) return p;
    }
    return -1;
}

/* The catch-up broadcasts after the view grew: the step counter from the
 * lowest old member (*s: ours, or -1 on a joiner that learns it). With
 * admit_auto another joiner may enter right after one of them, so repeat
 * while the view keeps growing. 0 on success. */
static int catchup(rj_run_t *k, mc_comm_h comm, int n, uint64_t *seen,
                   int64_t *s, int grew)
{
    while (grew) {
        int64_t v = *s;
        if (mc_comm_broadcast(comm, &v, &v, 1, MC_INT64,
                              catchup_root(comm, n)) != MC_OK)
            return -1;
        if (*s >= 0 && v != *s) return -1;
        *s = v;
        if (k->explicit_admit) return 0;
        uint64_t cur;
        mc_comm_view(comm, &cur, NULL, NULL);
        grew = cur != *seen && mc_comm_joined_ranks(comm, NULL, 0) > 0;
        *seen = cur;
    }
    return 0;
}

/* Slot's communicator (a joiner's with join set), or NULL (error in the
 * slot's err). */
static mc_comm_h rj_open(rj_run_t *k, int slot, int join)
{
    mc_store_h store;
    if (mc_store_file_create(k->dir, &store) != MC_OK) {
        rj_fail(k->shm, slot, "store: %s", mc_last_error());
        return NULL;
    }
    mc_comm_config_t cfg;
    mc_comm_config_init(&cfg);
    cfg.transport = k->tr;
    cfg.timeout_ms = 30000;
    cfg.init_timeout_ms = 30000;
    cfg.max_size = k->max_size;
    cfg.join = join;
    cfg.admit_auto = !k->explicit_admit;
    mc_comm_h comm;
    mc_status_t st = mc_comm_create(slot, k->size, store, &cfg, &comm);
    mc_store_destroy(store);
    if (st != MC_OK) {
        rj_fail(k->shm, slot, "create (join=%d): %s", join, mc_last_error());
        return NULL;
    }
    return comm;
}

static int worker(rj_run_t *k, int slot, int join)
{
    rj_shm_t *sh = k->shm;
    mc_status_t st;
    mc_comm_h comm = rj_open(k, slot, join);
    if (!comm) return 1;
    int n = mc_comm_size(comm);
    int64_t *buf = malloc((RJ_COUNT + 1) * sizeof(int64_t));
    int step = 0;
    uint64_t seen_epoch;
    mc_comm_view(comm, &seen_epoch, NULL, NULL);
    if (join) {
        int64_t s = -1;
        if (catchup(k, comm, n, &seen_epoch, &s, 1) != 0 || s < 0) {
            rj_fail(sh, slot, "catch-up broadcast: %s (step %lld)",
                    mc_comm_last_error(comm), (long long)s);
            return 1;
        }
        step = (int)s;
        atomic_store(&sh->joined[slot], 1);
    }
    int rc = 0;
    for (; step < RJ_MAXSTEP; step++) {
        for (int i = 0; i < RJ_COUNT; i++)
            buf[i] = (int64_t)(slot + 1) * g_of(step, i);
        buf[RJ_COUNT] = atomic_load(&sh->quit);
        st = mc_comm_allreduce(comm, buf, buf, RJ_COUNT + 1, MC_INT64, MC_SUM);
        uint8_t act[RJ_MAXR];
        uint64_t ep;
        mc_comm_op_view(comm, &ep, act, NULL); /* the view of that result */
        if (st == MC_OK && k->explicit_admit) {
            /* a step of two collectives: a joiner admitted between them
             * would call the catch-up broadcast against the second
             * allreduce (a mismatch) */
            int64_t two[2] = {slot + 1, 1};
            st = mc_comm_allreduce(comm, two, two, 2, MC_INT64, MC_MAX);
        }
        if (st != MC_OK) {
            rj_fail(sh, slot, "step %d: %s: %s", step, mc_status_str(st),
                    mc_comm_last_error(comm));
            rc = 1;
            break;
        }
        uint32_t m = 0;
        int64_t w = 0;
        for (int p = 0; p < n; p++)
            if (act[p]) {
                m |= 1u << p;
                w += p + 1;
            }
        int wrong = 0;
        for (int i = 0; i < RJ_COUNT; i++)
            wrong += buf[i] != w * g_of(step, i);
        if (wrong) atomic_fetch_add(&sh->wrong, wrong);
        if (!(m & (1u << slot)) || wrong) {
            rj_fail(sh, slot,
                    "step %d: %d elements off the reference over view %llu "
                    "mask 0x%x",
                    step, wrong, (unsigned long long)ep, m);
            rc = 1;
            break;
        }
        rj_rec_t *r = &sh->rec[slot][step];
        r->epoch = ep;
        r->mask = m;
        r->hash = hash64(buf, RJ_COUNT);
        r->valid = 1;
        atomic_store(&sh->step[slot], step + 1);
        if (buf[RJ_COUNT] > 0) break; /* every rank sees the same sum */
        int grew = 0;
        if (k->explicit_admit) {
            int nadm = 0;
            st = mc_comm_admit(comm, &nadm);
            if (st != MC_OK) {
                rj_fail(sh, slot, "admit after step %d: %s", step,
                        mc_comm_last_error(comm));
                rc = 1;
                break;
            }
            grew = nadm > 0;
        } else {
            uint64_t cur;
            mc_comm_view(comm, &cur, NULL, NULL);
            grew = cur != seen_epoch && mc_comm_joined_ranks(comm, NULL, 0) > 0;
            seen_epoch = cur;
        }
        int64_t s = step + 1;
        if (catchup(k, comm, n, &seen_epoch, &s, grew) != 0) {
            rj_fail(sh, slot, "catch-up broadcast after step %d: %s", step,
                    mc_comm_last_error(comm));
            rc = 1;
            break;
        }
        usleep(200); /* leave the parent time to act */
    }
    free(buf);
    mc_comm_destroy(comm);
    if (!rc) atomic_store(&sh->done[slot], 1);
    return rc;
}

static pid_t start(rj_run_t *k, int slot, int join)
{
    fflush(NULL);
    pid_t p = fork();
    if (p == 0) {
        alarm(RJ_DEADLINE_S + 30);
        _exit(worker(k, slot, join));
    }
    return p;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Wait until every slot in `mask` has completed more than `after[slot]`
 * steps (and a joiner in it got in); 0 on success, -1 on the deadline. */
static int wait_steps(rj_run_t *k, uint32_t mask, const int *after,
                      double deadline)
{
    for (;;) {
        int ok = 1;
        for (int p = 0; p < RJ_MAXR; p++)
            if (mask & (1u << p))
                ok &= atomic_load(&k->shm->step[p]) > after[p] + 2;
        if (ok) return 0;
        if (now_s() > deadline) return -1;
        usleep(1000);
    }
}

static void snap(rj_run_t *k, int *out)
{
    for (int p = 0; p < RJ_MAXR; p++)
        out[p] = atomic_load(&k->shm->step[p]);
}

/* Check the per-step records: every rank that completed a step agrees. */
static void check_records(rj_run_t *k, int nslots)
{
    int steps = 0;
    for (int p = 0; p < nslots; p++)
        if (atomic_load(&k->shm->step[p]) > steps)
            steps = atomic_load(&k->shm->step[p]);
    for (int s = 0; s < steps; s++) {
        int first = -1;
        for (int p = 0; p < nslots; p++) {
            rj_rec_t *r = &k->shm->rec[p][s];
            if (!r->valid) continue;
            if (first < 0) {
                first = p;
                continue;
            }
            rj_rec_t *f = &k->shm->rec[first][s];
            if (r->epoch != f->epoch || r->mask != f->mask ||
                r->hash != f->hash)
                fail_msg("step %d: rank %d (view %llu mask 0x%x) and rank %d "
                         "(view %llu mask 0x%x) disagree",
                         s, first, (unsigned long long)f->epoch, f->mask, p,
                         (unsigned long long)r->epoch, r->mask);
        }
    }
}

static rj_run_t *rj_new(int size, int max_size, mc_transport_kind_t tr)
{
    rj_run_t *k = calloc(1, sizeof(*k));
    assert_non_null(k);
    k->size = size;
    k->max_size = max_size;
    k->tr = tr;
    char *d = mc_test_mkdtemp();
    snprintf(k->dir, sizeof(k->dir), "%s", d);
    free(d);
    k->shm = mmap(NULL, sizeof(rj_shm_t), PROT_READ | PROT_WRITE,
                  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(k->shm != MAP_FAILED);
    memset(k->shm, 0, sizeof(rj_shm_t));
    return k;
}

static void rj_free(rj_run_t *k)
{
    munmap(k->shm, sizeof(rj_shm_t));
    mc_test_rmtree(k->dir);
    free(k);
}

/* Stop the loop, wait for the processes in `alive`, check them. */
static void rj_finish(rj_run_t *k, uint32_t alive, int nslots, double deadline)
{
    atomic_store(&k->shm->quit, 1);
    for (int p = 0; p < nslots; p++) {
        if (!(alive & (1u << p))) continue;
        int ws = 0;
        for (;;) {
            pid_t r = waitpid(k->pid[p], &ws, WNOHANG);
            if (r == k->pid[p]) break;
            if (now_s() > deadline) {
                kill(k->pid[p], SIGKILL);
                waitpid(k->pid[p], &ws, 0);
                fail_msg("rank %d did not finish by the deadline", p);
            }
            usleep(2000);
        }
        if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0 ||
            !atomic_load(&k->shm->done[p]))
            fail_msg("rank %d failed: %s", p, k->shm->err[p]);
    }
    assert_int_equal(atomic_load(&k->shm->wrong), 0);
    check_records(k, nslots);
}

static unsigned g_seed;

/* Kill a rank, replace it, repeat: `rounds` times over `size` ranks. The
 * victims cycle through a middle rank, rank 0 (the coordinator, which
 * also watches for joiners), and the previous replacement. */
static void rejoin_loop(int size, mc_transport_kind_t tr, int rounds,
                        int second_kill, int explicit_admit)
{
    rj_run_t *k = rj_new(size, 0, tr);
    k->explicit_admit = explicit_admit;
    unsigned seed = g_seed ^ (unsigned)(size * 131 + tr * 7 + second_kill);
    srand(seed);
    printf("  rejoin loop: %d ranks, %s, %d rounds, %s admission, seed %u\n",
           size, tr == MC_TRANSPORT_TCP ? "tcp" : "shm", rounds,
           explicit_admit ? "explicit" : "auto", seed);
    double deadline = now_s() + RJ_DEADLINE_S;
    uint32_t all = (1u << size) - 1;
    for (int p = 0; p < size; p++)
        k->pid[p] = start(k, p, 0);
    int before[RJ_MAXR] = {0};
    assert_int_equal(wait_steps(k, all, before, deadline), 0);
    int prev = -1;
    for (int round = 0; round < rounds; round++) {
        int victim = round % 3 == 0 ? size / 2 : round % 3 == 1 ? 0 : prev;
        if (victim < 0) victim = size - 1;
        int other = second_kill ? (victim + 1 + rand() % (size - 1)) % size
                                : -1;
        usleep((useconds_t)(rand() % 20000));
        snap(k, before);
        kill(k->pid[victim], SIGKILL);
        if (other >= 0) {
            /* lands while the survivors agree on the first failure, or
             * just before or after it */
            usleep((useconds_t)(rand() % 3000));
            kill(k->pid[other], SIGKILL);
        }
        waitpid(k->pid[victim], NULL, 0);
        if (other >= 0) waitpid(k->pid[other], NULL, 0);
        uint32_t surv = all & ~(1u << victim);
        if (other >= 0) surv &= ~(1u << other);
        if (wait_steps(k, surv, before, deadline) != 0)
            fail_msg("round %d: survivors stalled after killing %d", round,
                     victim);
        /* the replacement(s) */
        atomic_store(&k->shm->joined[victim], 0);
        k->pid[victim] = start(k, victim, 1);
        if (other >= 0) {
            atomic_store(&k->shm->joined[other], 0);
            k->pid[other] = start(k, other, 1);
        }
        snap(k, before);
        for (;;) {
            int in = atomic_load(&k->shm->joined[victim]) &&
                     (other < 0 || atomic_load(&k->shm->joined[other]));
            if (in) break;
            if (now_s() > deadline)
                fail_msg("round %d: the replacement of rank %d was not "
                         "admitted: %s",
                         round, victim, k->shm->err[victim]);
            usleep(1000);
        }
        if (wait_steps(k, all, before, deadline) != 0)
            fail_msg("round %d: the group stalled after the rejoin", round);
        prev = victim;
    }
    rj_finish(k, all, size, deadline);
    /* the last view has every slot again */
    int last = atomic_load(&k->shm->step[0]) - 1;
    assert_true(last >= 0);
    assert_int_equal(k->shm->rec[0][last].mask, all);
    printf("  %d steps, final view %llu\n", last + 1,
           (unsigned long long)k->shm->rec[0][last].epoch);
    rj_free(k);
}

static void test_rejoin_shm_4(void **state)
{
    (void)state;
    rejoin_loop(4, MC_TRANSPORT_SHM, 3, 0, 0);
}

static void test_rejoin_tcp_4(void **state)
{
    (void)state;
    rejoin_loop(4, MC_TRANSPORT_TCP, 3, 0, 1);
}

static void test_rejoin_two_kills_shm_6(void **state)
{
    (void)state;
    rejoin_loop(6, MC_TRANSPORT_SHM, 2, 1, 0);
}

static void test_rejoin_two_kills_explicit_shm_5(void **state)
{
    (void)state;
    rejoin_loop(5, MC_TRANSPORT_SHM, 2, 1, 1);
}

/* Scale-up: 3 members of 5 slots; two joiners take the reserved slots at
 * once, then one of them is killed and replaced. */
static void test_scale_up(void **state)
{
    (void)state;
    rj_run_t *k = rj_new(3, 5, MC_TRANSPORT_AUTO);
    double deadline = now_s() + RJ_DEADLINE_S;
    for (int p = 0; p < 3; p++)
        k->pid[p] = start(k, p, 0);
    int before[RJ_MAXR] = {0};
    assert_int_equal(wait_steps(k, 0x7, before, deadline), 0);
    k->pid[3] = start(k, 3, 1);
    k->pid[4] = start(k, 4, 1);
    while (!atomic_load(&k->shm->joined[3]) || !atomic_load(&k->shm->joined[4])) {
        if (now_s() > deadline)
            fail_msg("joiners not admitted: %s | %s", k->shm->err[3],
                     k->shm->err[4]);
        usleep(1000);
    }
    snap(k, before);
    assert_int_equal(wait_steps(k, 0x1f, before, deadline), 0);
    snap(k, before);
    kill(k->pid[4], SIGKILL);
    waitpid(k->pid[4], NULL, 0);
    assert_int_equal(wait_steps(k, 0xf, before, deadline), 0);
    atomic_store(&k->shm->joined[4], 0);
    k->pid[4] = start(k, 4, 1);
    while (!atomic_load(&k->shm->joined[4])) {
        if (now_s() > deadline) fail_msg("replacement of 4: %s", k->shm->err[4]);
        usleep(1000);
    }
    snap(k, before);
    assert_int_equal(wait_steps(k, 0x1f, before, deadline), 0);
    rj_finish(k, 0x1f, 5, deadline);
    int last = atomic_load(&k->shm->step[0]) - 1;
    assert_int_equal(k->shm->rec[0][last].mask, 0x1f);
    rj_free(k);
}

static pid_t start_fi(rj_run_t *k, int slot, int join, const char *fi)
{
    fflush(NULL);
    pid_t p = fork();
    if (p == 0) {
        alarm(RJ_DEADLINE_S + 30);
        /* read at the process's first fault point: this test runs first,
         * before the parent itself creates a communicator */
        setenv("MOONCAKE_FAULT_INJECT", fi, 1);
        _exit(worker(k, slot, join));
    }
    return p;
}

/* A joiner's shared slots that one side cannot map (3 members on one host
 * with the slots, a joiner for reserved slot 3): the joiner cannot map a
 * member's region (its creation fails, naming it), or member 1 cannot map
 * the joiner's (it counts the joiner as failed). Either way the group
 * goes on without the joiner (within the liveness timeout) with the right
 * results. Before, the side without the mapping ran the usual algorithms
 * and the others the slots: the first op in the view with the joiner
 * failed on every rank with a collective mismatch ("shared slots" on one
 * side only), a correct call failed. */
static void join_map_fails(int joiner_side)
{
    rj_run_t *k = rj_new(3, 4, MC_TRANSPORT_SHM);
    double deadline = now_s() + RJ_DEADLINE_S;
    for (int p = 0; p < 3; p++)
        k->pid[p] = joiner_side || p != 1
                        ? start(k, p, 0)
                        /* its 2 mappings at creation, then the joiner's */
                        : start_fi(k, p, 0, "slot.map:3:fail");
    int before[RJ_MAXR] = {0};
    assert_int_equal(wait_steps(k, 0x7, before, deadline), 0);
    k->pid[3] = joiner_side ? start_fi(k, 3, 1, "slot.map:1:fail")
                            : start(k, 3, 1);
    int ws = 0;
    while (waitpid(k->pid[3], &ws, WNOHANG) != k->pid[3]) {
        if (now_s() > deadline) {
            kill(k->pid[3], SIGKILL);
            waitpid(k->pid[3], &ws, 0);
            fail_msg("the joiner did not end by the deadline");
        }
        usleep(2000);
    }
    double quick = now_s() + 20;
    if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 1)
        fail_msg("joiner ended with wait status 0x%x, want exit 1: %s", ws,
                 k->shm->err[3]);
    printf("  joiner: %s\n", k->shm->err[3]);
    /* its creation failed, naming the mapping; or it was removed */
    assert_non_null(strstr(k->shm->err[3], joiner_side
                                               ? "cannot map rank"
                                               : "removed from the group"));
    assert_int_equal(atomic_load(&k->shm->joined[3]), 0);
    assert_int_equal(atomic_load(&k->shm->step[3]), 0);
    /* the members go on, quickly, in a view without it */
    snap(k, before);
    assert_int_equal(wait_steps(k, 0x7, before, quick), 0);
    rj_finish(k, 0x7, 4, deadline);
    int last = atomic_load(&k->shm->step[0]) - 1;
    assert_int_equal(k->shm->rec[0][last].mask, 0x7);
    rj_free(k);
}

static void test_join_map_fails_joiner(void **state)
{
    (void)state;
    join_map_fails(1);
}

static void test_join_map_fails_member(void **state)
{
    (void)state;
    join_map_fails(0);
}

/* Over TCP nobody maps a joiner's slots (they serve shm views only): a
 * member whose mapping would fail (slot.map:1:fail; over TCP creation maps
 * nothing) still admits the joiner. A member that took its TCP transport
 * (index 0 of its transports) for the shm kind (0) tried the mapping and
 * failed every joiner. */
static void test_join_map_tcp(void **state)
{
    (void)state;
    rj_run_t *k = rj_new(3, 4, MC_TRANSPORT_TCP);
    double deadline = now_s() + RJ_DEADLINE_S;
    for (int p = 0; p < 3; p++)
        k->pid[p] = p != 1 ? start(k, p, 0)
                           : start_fi(k, p, 0, "slot.map:1:fail");
    int before[RJ_MAXR] = {0};
    assert_int_equal(wait_steps(k, 0x7, before, deadline), 0);
    k->pid[3] = start(k, 3, 1);
    while (!atomic_load(&k->shm->joined[3])) {
        if (now_s() > deadline) fail_msg("joiner: %s", k->shm->err[3]);
        usleep(1000);
    }
    snap(k, before);
    assert_int_equal(wait_steps(k, 0xf, before, deadline), 0);
    rj_finish(k, 0xf, 4, deadline);
    int last = atomic_load(&k->shm->step[0]) - 1;
    assert_int_equal(k->shm->rec[0][last].mask, 0xf);
    rj_free(k);
}

/* A join for a slot whose process is alive waits and then fails with a
 * clear timeout; the members never notice. */
static void test_join_active_slot(void **state)
{
    (void)state;
    rj_run_t *k = rj_new(2, 0, MC_TRANSPORT_AUTO);
    double deadline = now_s() + RJ_DEADLINE_S;
    for (int p = 0; p < 2; p++)
        k->pid[p] = start(k, p, 0);
    int before[RJ_MAXR] = {0};
    assert_int_equal(wait_steps(k, 0x3, before, deadline), 0);
    mc_store_h store;
    assert_int_equal(mc_store_file_create(k->dir, &store), MC_OK);
    mc_comm_config_t cfg;
    mc_comm_config_init(&cfg);
    cfg.join = 1;
    cfg.init_timeout_ms = 1500;
    mc_comm_h comm = NULL;
    double t0 = now_s();
    mc_status_t st = mc_comm_create(1, 2, store, &cfg, &comm);
    double took = now_s() - t0;
    assert_int_equal(st, MC_ERR_TIMEOUT);
    assert_non_null(strstr(mc_last_error(), "not admitted"));
    assert_true(took < 10.0);
    /* FT off: refused at once */
    cfg.ft = 0;
    st = mc_comm_create(1, 2, store, &cfg, &comm);
    assert_int_equal(st, MC_ERR_INVALID_ARG);
    assert_non_null(strstr(mc_last_error(), "fault tolerance"));
    /* a non-joiner cannot name a reserved slot */
    cfg.ft = 1;
    cfg.join = 0;
    cfg.max_size = 4;
    st = mc_comm_create(3, 2, store, &cfg, &comm);
    assert_int_equal(st, MC_ERR_INVALID_ARG);
    mc_store_destroy(store);
    rj_finish(k, 0x3, 2, deadline);
    rj_free(k);
}

/* A p2p message the old process of a slot left half-sent, then its
 * replacement sends one with the same tag: rank 2 sends 16 MiB to rank 0,
 * which has no receive posted (it lands in an engine buffer), and is
 * killed after the send call returned, with the message partly written.
 * Ranks 0 and 1 go on without it; a replacement takes slot 2 and sends
 * rank 0 another 16 MiB with the same tag, which rank 0 must receive
 * whole. Before, admitting the replacement forgot only the old process's
 * complete messages: rank 0's receive claimed the half one, which never
 * completes, and waited for good. */
#define RP_COUNT (2 << 20) /* int64: 16 MiB */

static int64_t rp_pat(int join, int64_t i)
{
    return join ? i * 7 + 2 : -(i * 3 + 1);
}

static int p2p_worker(rj_run_t *k, int slot, int join)
{
    rj_shm_t *sh = k->shm;
    mc_status_t st;
    mc_comm_h comm = rj_open(k, slot, join); /* admit_auto */
    if (!comm) return 1;
    int64_t *b = malloc(RP_COUNT * sizeof(int64_t));
    if (!b) return 1;
    if (slot == 2) {
        for (int64_t i = 0; i < RP_COUNT; i++)
            b[i] = rp_pat(join, i);
        if (!join) {
            mc_request_h rq;
            if (mc_comm_barrier(comm) != MC_OK ||
                mc_comm_isend(comm, b, RP_COUNT, MC_INT64, 0, 5, &rq) != MC_OK)
                return 1;
            raise(SIGKILL);
        }
        st = mc_comm_send(comm, b, RP_COUNT, MC_INT64, 0, 5);
        if (st == MC_OK) st = mc_comm_barrier(comm);
        if (st != MC_OK) {
            rj_fail(sh, slot, "replacement: %s", mc_last_error());
            return 1;
        }
        mc_comm_destroy(comm);
        free(b);
        return 0;
    }
    if ((st = mc_comm_barrier(comm)) != MC_OK) {
        rj_fail(sh, slot, "barrier: %s", mc_last_error());
        return 1;
    }
    /* allreduces until slot 2 is gone, then until its replacement is in */
    int gone = 0;
    for (int step = 0;; step++) {
        int64_t v[8] = {slot + 1};
        st = mc_comm_allreduce(comm, v, v, 8, MC_INT64, MC_SUM);
        uint8_t act[RJ_MAXR] = {0};
        mc_comm_view(comm, NULL, act, NULL);
        if (st != MC_OK || step > 200000) {
            rj_fail(sh, slot, "allreduce %d: %s", step, mc_last_error());
            return 1;
        }
        if (!act[2] && !gone) atomic_store(&sh->joined[slot], gone = 1);
        if (act[2] && gone) break;
    }
    if (slot == 0) {
        mc_request_h rq;
        st = mc_comm_irecv(comm, b, RP_COUNT, MC_INT64, 2, 5, &rq);
        if (st == MC_OK) st = mc_request_wait(rq, 10000);
        if (st != MC_OK) {
            rj_fail(sh, slot, "recv from the replacement: %s",
                    mc_last_error());
            return 1;
        }
        mc_request_free(rq);
        for (int64_t i = 0; i < RP_COUNT; i++)
            if (b[i] != rp_pat(1, i)) {
                rj_fail(sh, slot, "element %lld: %lld, want %lld",
                        (long long)i, (long long)b[i],
                        (long long)rp_pat(1, i));
                return 1;
            }
    }
    if ((st = mc_comm_barrier(comm)) != MC_OK) {
        rj_fail(sh, slot, "last barrier: %s", mc_last_error());
        return 1;
    }
    mc_comm_destroy(comm);
    free(b);
    return 0;
}

static void rejoin_p2p_leftover(mc_transport_kind_t tr)
{
    rj_run_t *k = rj_new(3, 3, tr);
    double deadline = now_s() + 60;
    for (int p = 0; p < 3; p++) {
        fflush(NULL);
        k->pid[p] = fork();
        if (k->pid[p] == 0) {
            alarm(90);
            exit(p2p_worker(k, p, 0));
        }
    }
    int ws;
    waitpid(k->pid[2], &ws, 0); /* killed itself after its send call */
    while (!atomic_load(&k->shm->joined[0]) ||
           !atomic_load(&k->shm->joined[1])) {
        if (now_s() > deadline) fail_msg("slot 2 was not removed");
        usleep(1000);
    }
    fflush(NULL);
    k->pid[2] = fork();
    if (k->pid[2] == 0) {
        alarm(90);
        exit(p2p_worker(k, 2, 1));
    }
    int bad = 0;
    for (int p = 0; p < 3; p++) {
        while (waitpid(k->pid[p], &ws, WNOHANG) == 0) {
            if (now_s() > deadline) kill(k->pid[p], SIGKILL);
            usleep(2000);
        }
        if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0) {
            fprintf(stderr, "  slot %d: wait status 0x%x: %s\n", p, ws,
                    k->shm->err[p]);
            bad++;
        }
    }
    rj_free(k);
    assert_int_equal(bad, 0);
}

static void test_rejoin_p2p_leftover_shm_3(void **state)
{
    (void)state;
    rejoin_p2p_leftover(MC_TRANSPORT_SHM);
}

static void test_rejoin_p2p_leftover_tcp_3(void **state)
{
    (void)state;
    rejoin_p2p_leftover(MC_TRANSPORT_TCP);
}

int main(void)
{
    const char *s = getenv("MC_REJOIN_SEED");
    g_seed = s ? (unsigned)strtoul(s, NULL, 0) : (unsigned)time(NULL);
    printf("MC_REJOIN_SEED=%u\n", g_seed);
    const struct CMUnitTest tests[] = {
        /* first: they set MOONCAKE_FAULT_INJECT in forked ranks */
        cmocka_unit_test(test_join_map_fails_joiner),
        cmocka_unit_test(test_join_map_fails_member),
        cmocka_unit_test(test_join_map_tcp),
        cmocka_unit_test(test_join_active_slot),
        cmocka_unit_test(test_rejoin_shm_4),
        cmocka_unit_test(test_rejoin_tcp_4),
        cmocka_unit_test(test_scale_up),
        cmocka_unit_test(test_rejoin_two_kills_shm_6),
        cmocka_unit_test(test_rejoin_two_kills_explicit_shm_5),
        cmocka_unit_test(test_rejoin_p2p_leftover_shm_3),
        cmocka_unit_test(test_rejoin_p2p_leftover_tcp_3),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
