/*
 * Network partitions with real network namespaces (docs/fault-model.md,
 * guarantees 1, 3, 5 and 7). Three rank processes, each in its own network
 * namespace on a veth pair to a bridge, run a loop of int64 allreduces over
 * TCP. The test takes rank 2's link down (the kernel drops its packets: no
 * RST, no EOF, only silence) and later brings it up again:
 *   - the majority (ranks 0 and 1) agrees on a view without rank 2 and goes
 *     on; each result equals the reference over the active set of the view
 *     it reports, the two agree on it, and no result of theirs holds rank
 *     2's contribution once they report view 2;
 *   - the cut-off rank never completes an operation after the cut (no
 *     quorum, or fenced), and after the healing its old incarnation still
 *     completes nothing (fenced: the majority's view does not hold it);
 *   - after the healing the same process rejoins as a new incarnation
 *     (cfg.join), is admitted at the members' admission point, catches up
 *     on the step counter by a broadcast and runs steps with all three.
 * Once with embedded membership, once more with TCP_USER_TIMEOUT shorter
 * than the heartbeat's timeout (the kernel aborts the cut connections with
 * ETIMEDOUT first: still a timeout, never evidence of death), and once
 * with etcd (one member, listening on the bridge, so the cut-off rank
 * loses etcd too: its lease expires). The idle cases: the cut-off rank
 * calls nothing from before the cut until after the healing, so it never
 * had "no quorum"; then the majority's kernels reset the connections they
 * timed out, and those resets must not count as deaths (the TCP
 * transport's close check finds the majority's listeners answering). One
 * idle case gives the cut-off rank a heartbeat timeout longer than the
 * test and has it send a p2p message to each peer first, so it meets the
 * resets before any silence: without the close check
 * (MOONCAKE_TCP_CLOSE_CHECK=0) it goes on alone in a view of its own.
 *
 * Needs root (network namespaces) and iproute2; skipped otherwise.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "etcd_cluster.h"
#include "tests_common.h"

#define PT_N 3
#define PT_CUT 2 /* the rank whose link goes down */
#define PT_ROWS (PT_N + 1) /* row PT_N: the cut rank's second incarnation */
#define PT_MAXSTEP 20000
#define PT_COUNT 1024
#define PT_LIVE_MS 1000
#define PT_DEADLINE_S 120

typedef struct {
    int32_t st;
    uint32_t mask;
    uint64_t epoch;
    int32_t wrong;
    int32_t valid;
    int32_t admit_st; /* the admission call after the step */
} pt_rec_t;

typedef struct {
    _Atomic int step[PT_ROWS];   /* last step index completed + 1 */
    _Atomic int failed[PT_ROWS]; /* calls that failed */
    _Atomic int cut_done;        /* old incarnation of PT_CUT: gave up */
    _Atomic int healed;          /* parent: link up again */
    _Atomic int after_heal_st;   /* old incarnation's call after healing */
    _Atomic int joined;          /* the new incarnation got in */
    _Atomic int quit;
    _Atomic int go_idle;         /* parent: PT_CUT stops calling (idle) */
    _Atomic int cut_idle;        /* PT_CUT: idle now, until the healing */
    _Atomic int64_t t_first_v2_ns[PT_N];
    char err[PT_ROWS][256];
    pt_rec_t rec[PT_ROWS][PT_MAXSTEP];
} pt_shm_t;

typedef struct {
    char tag[16]; /* unique per run: names of namespaces and links */
    char net[16]; /* "10.X.Y" */
    char dir[256];
    char endpoints[256]; /* etcd mode, else "" */
    int user_timeout_ms; /* MOONCAKE_TCP_USER_TIMEOUT_MS, 0: unset */
    int idle; /* PT_CUT calls nothing from before the cut to the healing */
    int cut_live_ms; /* PT_CUT's liveness timeout if > 0 (else PT_LIVE_MS) */
    int op_timeout_ms; /* the op timeout if > 0 (else 8000) */
    pt_shm_t *sh;
} pt_run_t;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t g_of(int step, int i)
{
    return (int64_t)(step + 1) * 1000003 + i;
}

static int g_quiet; /* cleanup: failures are expected */

static int sh_cmd(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh_cmd(const char *fmt, ...)
{
    char cmd[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    char full[600];
    snprintf(full, sizeof(full), "%s >/dev/null 2>&1", cmd);
    int rc = system(full);
    if (rc != 0 && !g_quiet) fprintf(stderr, "  command failed (%d): %s\n", rc, cmd);
    return rc;
}

static void net_down(const pt_run_t *k)
{
    g_quiet = 1;
    for (int r = 0; r < PT_N; r++)
        sh_cmd("ip netns del %sn%d", k->tag, r);
    sh_cmd("ip link del %sbr", k->tag);
    g_quiet = 0;
}

/* Bridge <tag>br at <net>.1; rank r in namespace <tag>n<r> at <net>.(10+r)
 * on veth <tag>v<r> (namespace side) / <tag>h<r> (bridge side). */
static int net_up(pt_run_t *k)
{
    int rc = 0;
    rc |= sh_cmd("ip link add %sbr type bridge", k->tag);
    rc |= sh_cmd("ip addr add %s.1/24 dev %sbr", k->net, k->tag);
    rc |= sh_cmd("ip link set %sbr up", k->tag);
    for (int r = 0; r < PT_N && !rc; r++) {
        rc |= sh_cmd("ip netns add %sn%d", k->tag, r);
        rc |= sh_cmd("ip link add %sh%d type veth peer name %sv%d", k->tag, r,
                     k->tag, r);
        rc |= sh_cmd("ip link set %sv%d netns %sn%d", k->tag, r, k->tag, r);
        rc |= sh_cmd("ip link set %sh%d master %sbr up", k->tag, r, k->tag);
        rc |= sh_cmd("ip -n %sn%d addr add %s.%d/24 dev %sv%d", k->tag, r,
                     k->net, 10 + r, k->tag, r);
        rc |= sh_cmd("ip -n %sn%d link set %sv%d up", k->tag, r, k->tag, r);
        rc |= sh_cmd("ip -n %sn%d link set lo up", k->tag, r);
    }
    if (rc) net_down(k);
    return rc;
}

static int enter_ns(const pt_run_t *k, int r)
{
    char path[128];
    snprintf(path, sizeof(path), "/run/netns/%sn%d", k->tag, r);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = setns(fd, CLONE_NEWNET);
    close(fd);
    return rc;
}

static void pt_fail(pt_shm_t *sh, int row, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void pt_fail(pt_shm_t *sh, int row, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sh->err[row], sizeof(sh->err[row]), fmt, ap);
    va_end(ap);
    fprintf(stderr, "row %d: %s\n", row, sh->err[row]);
}

static mc_status_t make_comm(const pt_run_t *k, int rank, int join,
                             mc_comm_h *c)
{
    mc_store_h store;
    mc_status_t st = mc_store_file_create(k->dir, &store);
    if (st != MC_OK) return st;
    mc_comm_config_t cfg;
    mc_comm_config_init(&cfg);
    cfg.transport = MC_TRANSPORT_TCP;
    cfg.timeout_ms = 8000; /* bounds the cut-off side's view change in etcd
                              mode (it cannot reach etcd) */
    if (k->op_timeout_ms > 0) cfg.timeout_ms = k->op_timeout_ms;
    cfg.init_timeout_ms = 30000;
    cfg.join = join;
    if (k->endpoints[0]) {
        cfg.etcd_endpoints = k->endpoints;
        cfg.etcd_ttl_s = 1;
    }
    st = mc_comm_create(rank, PT_N, store, &cfg, c);
    mc_store_destroy(store);
    return st;
}

/* One incarnation's loop; row: where it records. Returns when the group
 * quits (0) or, for the old incarnation of PT_CUT, after two failures. */
static int run_loop(const pt_run_t *k, mc_comm_h c, int rank, int row,
                    int step)
{
    pt_shm_t *sh = k->sh;
    int64_t *buf = malloc((PT_COUNT + 1) * sizeof(int64_t));
    if (!buf) return 1;
    int rc = 0, fails = 0;
    for (; step < PT_MAXSTEP; step++) {
        if (k->idle && rank == PT_CUT && row == rank &&
            atomic_load(&sh->go_idle) && !atomic_load(&sh->cut_idle)) {
            /* busy elsewhere (no call, no progress) through the whole
             * partition: it learns of the view change only afterwards */
            atomic_store(&sh->cut_idle, 1);
            for (int i = 0; i < PT_DEADLINE_S * 100 && !atomic_load(&sh->healed);
                 i++)
                usleep(10000);
            usleep(1500000); /* links and ARP settle */
            if (k->cut_live_ms > 0) {
                /* a message to each peer first (the application's own
                 * p2p traffic): it meets the connections the majority's
                 * kernels gave up on, and comes back as resets */
                int64_t x = step;
                for (int p = 0; p < PT_N; p++)
                    if (p != rank)
                        (void)mc_comm_send(c, &x, 1, MC_INT64, p, 99);
                usleep(200000);
            }
        }
        for (int i = 0; i < PT_COUNT; i++)
            buf[i] = (int64_t)(rank + 1) * g_of(step, i);
        buf[PT_COUNT] = atomic_load(&sh->quit);
        mc_status_t st =
            mc_comm_allreduce(c, buf, buf, PT_COUNT + 1, MC_INT64, MC_SUM);
        pt_rec_t *r = &sh->rec[row][step];
        r->st = st;
        r->valid = 1;
        if (st != MC_OK) {
            atomic_fetch_add(&sh->failed[row], 1);
            if (rank == PT_CUT && row == rank) {
                if (++fails == (k->idle ? 1 : 2)) break;
                continue;
            }
            pt_fail(sh, row, "step %d: %s", step, mc_comm_last_error(c));
            rc = 1;
            break;
        }
        uint8_t act[PT_N];
        mc_comm_op_view(c, &r->epoch, act, NULL);
        int64_t w = 0;
        for (int p = 0; p < PT_N; p++)
            if (act[p]) {
                r->mask |= 1u << p;
                w += p + 1;
            }
        for (int i = 0; i < PT_COUNT; i++)
            r->wrong += buf[i] != w * g_of(step, i);
        if (r->epoch >= 2 && rank < PT_N && row == rank &&
            !atomic_load(&sh->t_first_v2_ns[rank]))
            atomic_store(&sh->t_first_v2_ns[rank], now_ns());
        atomic_store(&sh->step[row], step + 1);
        if (buf[PT_COUNT] > 0) break; /* everyone saw the quit */
        if (rank == PT_CUT && row == rank && r->epoch != 1)
            break; /* split: a view of its own (the checks report it) */
        /* the application's admission point, then the catch-up */
        int nadm = 0;
        st = mc_comm_admit(c, &nadm);
        r->admit_st = st;
        if (st != MC_OK && rank == PT_CUT && row == rank) {
            atomic_fetch_add(&sh->failed[row], 1);
            if (++fails == 2) break;
            continue;
        }
        if (st != MC_OK) {
            pt_fail(sh, row, "admit after step %d: %s", step,
                    mc_comm_last_error(c));
            rc = 1;
            break;
        }
        if (nadm > 0) {
            int64_t v = step + 1;
            st = mc_comm_broadcast(c, &v, &v, 1, MC_INT64, 0);
            if (st != MC_OK || v != step + 1) {
                pt_fail(sh, row, "catch-up broadcast: %s",
                        mc_comm_last_error(c));
                rc = 1;
                break;
            }
        }
        usleep(500);
    }
    free(buf);
    return rc;
}

static int rank_main(const pt_run_t *k, int rank)
{
    pt_shm_t *sh = k->sh;
    if (enter_ns(k, rank) != 0) {
        pt_fail(sh, rank, "setns: %s", strerror(errno));
        return 1;
    }
    char v[32];
    snprintf(v, sizeof(v), "%s.%d", k->net, 10 + rank);
    setenv("MOONCAKE_SOCKET_ADDR", v, 1);
    snprintf(v, sizeof(v), "%d",
             rank == PT_CUT && k->cut_live_ms > 0 ? k->cut_live_ms : PT_LIVE_MS);
    setenv("MOONCAKE_LIVENESS_TIMEOUT_MS", v, 1);
    if (k->user_timeout_ms > 0) {
        snprintf(v, sizeof(v), "%d", k->user_timeout_ms);
        setenv("MOONCAKE_TCP_USER_TIMEOUT_MS", v, 1);
    }
    mc_comm_h c;
    if (make_comm(k, rank, 0, &c) != MC_OK) {
        pt_fail(sh, rank, "create: %s", mc_last_error());
        return 1;
    }
    int rc = run_loop(k, c, rank, rank, 0);
    if (rank != PT_CUT) {
        mc_comm_destroy(c);
        return rc;
    }
    /* the cut-off rank gave up; wait for the healing, then try again with
     * the old incarnation: fenced, it must complete nothing */
    atomic_store(&sh->cut_done, 1);
    for (int i = 0; i < PT_DEADLINE_S * 100 && !atomic_load(&sh->healed); i++)
        usleep(10000);
    usleep(1500000); /* links, ARP, etcd keepalives settle */
    int64_t x[4] = {1, 2, 3, 4};
    mc_status_t st = mc_comm_allreduce(c, x, x, 4, MC_INT64, MC_SUM);
    atomic_store(&sh->after_heal_st, st == MC_OK ? 1 : (int)st);
    mc_comm_destroy(c);
    /* the same process rejoins as a new incarnation */
    if (make_comm(k, rank, 1, &c) != MC_OK) {
        pt_fail(sh, PT_N, "rejoin: %s", mc_last_error());
        return 1;
    }
    int64_t s = -1;
    st = mc_comm_broadcast(c, &s, &s, 1, MC_INT64, 0);
    if (st != MC_OK || s < 0) {
        pt_fail(sh, PT_N, "catch-up broadcast: %s (step %lld)",
                mc_comm_last_error(c), (long long)s);
        mc_comm_destroy(c);
        return 1;
    }
    atomic_store(&sh->joined, 1);
    rc = run_loop(k, c, rank, PT_N, (int)s);
    mc_comm_destroy(c);
    return rc;
}

static int steps_min(pt_shm_t *sh, int a, int b)
{
    int x = atomic_load(&sh->step[a]), y = atomic_load(&sh->step[b]);
    return x < y ? x : y;
}

/* tcp_user_timeout_ms > 0: the kernel aborts the cut connections first
 * (ETIMEDOUT before the heartbeat's timeout): that is a timeout too, and
 * must not let the cut-off rank count its peers dead and go on alone. */
static void run_partition_k(int etcd, int tcp_user_timeout_ms, int idle,
                            int cut_live_ms)
{
    if (geteuid() != 0 || system("ip netns list >/dev/null 2>&1") != 0) {
        skip(); /* no network namespaces here: needs root and iproute2 */
        return;
    }
    pt_run_t k = {0};
    /* a fresh name and subnet per run: a deleted namespace's veth goes
     * away asynchronously */
    static unsigned run;
    unsigned id = (unsigned)getpid() % 10000;
    snprintf(k.tag, sizeof(k.tag), "mp%u%c", id, 'a' + run % 26);
    snprintf(k.net, sizeof(k.net), "10.%u.%u", 200 + (id + run) % 50,
             (id / 50 + run) % 250);
    run++;
    net_down(&k); /* leftovers of a killed run with the same pid */
    if (net_up(&k) != 0) fail_msg("could not set up network namespaces");
    cluster_t *ec = NULL;
    if (etcd) {
        char ip[32];
        snprintf(ip, sizeof(ip), "%s.1", k.net);
        ec = cluster_start_on(1, ip);
        snprintf(k.endpoints, sizeof(k.endpoints), "%s", ec->endpoints);
    }
    char *d = mc_test_mkdtemp();
    snprintf(k.dir, sizeof(k.dir), "%s", d);
    k.user_timeout_ms = tcp_user_timeout_ms;
    k.idle = idle;
    k.cut_live_ms = cut_live_ms;
    if (cut_live_ms > 0) k.op_timeout_ms = 3000;
    k.sh = mmap(NULL, sizeof(pt_shm_t), PROT_READ | PROT_WRITE,
                MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(k.sh != MAP_FAILED);
    pt_shm_t *sh = k.sh;
    pid_t pid[PT_N];
    fflush(NULL);
    for (int r = 0; r < PT_N; r++) {
        pid[r] = fork();
        assert_true(pid[r] >= 0);
        if (pid[r] == 0) {
            alarm(PT_DEADLINE_S + 30);
            _exit(rank_main(&k, r));
        }
    }
    int64_t t0 = now_ns(), lim = (int64_t)PT_DEADLINE_S * 1000000000;
#define WAIT_UNTIL(cond, what)                                                 \
    do {                                                                       \
        while (!(cond)) {                                                      \
            if (now_ns() - t0 > lim) {                                         \
                fprintf(stderr, "  timed out waiting for %s\n", what);         \
                goto reap;                                                     \
            }                                                                  \
            usleep(1000);                                                      \
        }                                                                      \
    } while (0)
    int problems = 0, cut_step = 0;
    int64_t t_cut = 0;
    WAIT_UNTIL(steps_min(sh, 0, 1) >= 20 && atomic_load(&sh->step[PT_CUT]) >= 20,
               "20 steps on every rank");
    if (idle) {
        atomic_store(&sh->go_idle, 1);
        WAIT_UNTIL(atomic_load(&sh->cut_idle), "the cut-off rank to go idle");
        /* its last frames acknowledged (delayed ACKs: at most 200 ms), so
         * nothing of its own is in flight: its kernel keeps its sockets
         * through the cut, and only the majority's time out */
        usleep(300000);
    }
    assert_int_equal(sh_cmd("ip link set %sh%d down", k.tag, PT_CUT), 0);
    t_cut = now_ns();
    cut_step = steps_min(sh, 0, 1);
    WAIT_UNTIL(atomic_load(&sh->t_first_v2_ns[0]) &&
                   atomic_load(&sh->t_first_v2_ns[1]) &&
                   (idle || atomic_load(&sh->cut_done)),
               "the majority in view 2 and the cut-off rank giving up");
    {
        int s = steps_min(sh, 0, 1);
        WAIT_UNTIL(steps_min(sh, 0, 1) >= s + 30, "30 majority steps in view 2");
    }
    /* idle: long enough for the majority's kernels to give up on the
     * frames they still send to the cut-off rank (retransmissions past
     * TCP_USER_TIMEOUT), so what the cut-off rank finds after the healing
     * is their resets */
    if (idle) usleep(2000000);
    assert_int_equal(sh_cmd("ip link set %sh%d up", k.tag, PT_CUT), 0);
    atomic_store(&sh->healed, 1);
    WAIT_UNTIL(atomic_load(&sh->joined), "the rejoin");
    {
        int s = steps_min(sh, 0, 1);
        WAIT_UNTIL(atomic_load(&sh->step[PT_N]) >= s + 20, "20 steps with the "
                                                          "rejoined rank");
    }
reap:
    atomic_store(&sh->quit, 1);
    int bad_exit = 0;
    for (int r = 0; r < PT_N; r++) {
        int ws = 0;
        while (waitpid(pid[r], &ws, WNOHANG) == 0) {
            if (now_ns() - t0 > lim + 20ll * 1000000000) {
                kill(pid[r], SIGKILL);
                fprintf(stderr, "  rank %d hung: killed\n", r);
            }
            usleep(2000);
        }
        if (!WIFEXITED(ws) || WEXITSTATUS(ws)) {
            bad_exit++;
            fprintf(stderr, "  rank %d exited badly (0x%x): %s\n", r, ws,
                    sh->err[r][0] ? sh->err[r] : sh->err[PT_N]);
        }
    }
#define PROB(...)                                                              \
    do {                                                                       \
        fprintf(stderr, "  " __VA_ARGS__);                                     \
        fputc('\n', stderr);                                                   \
        problems++;                                                            \
    } while (0)
    if (bad_exit) PROB("%d rank process(es) failed", bad_exit);
    /* the majority: every step ok, right, and the same view on both */
    int nmaj = steps_min(sh, 0, 1);
    uint32_t prev_mask = 0x7;
    int saw_v2 = 0, saw_back = 0;
    uint64_t v2_epoch = 0;
    for (int s = 0; s < nmaj; s++) {
        const pt_rec_t *a = &sh->rec[0][s], *b = &sh->rec[1][s];
        if (a->st != MC_OK || b->st != MC_OK) {
            PROB("majority step %d: %s / %s", s, mc_status_str(a->st),
                 mc_status_str(b->st));
            continue;
        }
        if (a->wrong || b->wrong)
            PROB("majority step %d: %d / %d elements off the reference", s,
                 a->wrong, b->wrong);
        if (a->epoch != b->epoch || a->mask != b->mask)
            PROB("majority step %d: views differ (%llu/0x%x vs %llu/0x%x)", s,
                 (unsigned long long)a->epoch, a->mask,
                 (unsigned long long)b->epoch, b->mask);
        if (a->mask == 0x3 && !saw_v2) {
            saw_v2 = 1;
            v2_epoch = a->epoch;
        }
        if (a->mask == 0x7 && prev_mask == 0x3) saw_back = 1;
        if (a->mask != 0x7 && a->mask != 0x3)
            PROB("majority step %d: mask 0x%x", s, a->mask);
        if (s < cut_step - 1 && a->mask != 0x7)
            PROB("majority step %d (before the cut): mask 0x%x", s, a->mask);
        prev_mask = a->mask;
    }
    if (!saw_v2) PROB("the majority never ran without rank %d", PT_CUT);
    if (!saw_back) PROB("the majority never ran with the rejoined rank again");
    /* the cut-off rank's old incarnation: ok only in epoch 1, all three */
    int ncut = atomic_load(&sh->step[PT_CUT]) + 2;
    int first_fail = -1;
    for (int s = 0; s < ncut && s < PT_MAXSTEP; s++) {
        const pt_rec_t *x = &sh->rec[PT_CUT][s];
        if (!x->valid) continue;
        if (x->st == MC_OK) {
            if (x->epoch != 1 || x->mask != 0x7 || x->wrong)
                PROB("cut rank step %d: ok in epoch %llu mask 0x%x (%d wrong)",
                     s, (unsigned long long)x->epoch, x->mask, x->wrong);
            if (first_fail >= 0) PROB("cut rank step %d: ok after failing", s);
            if (v2_epoch && x->epoch >= v2_epoch)
                PROB("cut rank step %d: completed in the majority's view", s);
            if (x->admit_st != MC_OK && first_fail < 0) {
                first_fail = s;
                fprintf(stderr, "  cut-off rank: admission after step %d "
                        "failed: %s\n", s, mc_status_str(x->admit_st));
            }
        } else if (first_fail < 0) {
            first_fail = s;
            fprintf(stderr, "  cut-off rank: step %d failed: %s\n", s,
                    mc_status_str(x->st));
        }
    }
    if (first_fail < 0) PROB("the cut-off rank never failed");
    int ah = atomic_load(&sh->after_heal_st);
    if (ah == 1)
        PROB("the cut-off rank's old incarnation completed a call after the "
             "healing");
    else
        fprintf(stderr, "  old incarnation after healing: %s\n",
                mc_status_str((mc_status_t)ah));
    /* the rejoined incarnation: ok, right, same view as the majority */
    int nj = 0;
    for (int s = 0; s < nmaj; s++) {
        const pt_rec_t *x = &sh->rec[PT_N][s];
        if (!x->valid) continue;
        nj++;
        if (x->st != MC_OK || x->wrong || x->mask != 0x7 ||
            x->epoch != sh->rec[0][s].epoch || x->mask != sh->rec[0][s].mask)
            PROB("rejoined step %d: %s, epoch %llu mask 0x%x, %d wrong", s,
                 mc_status_str(x->st), (unsigned long long)x->epoch, x->mask,
                 x->wrong);
    }
    if (nj < 20) PROB("the rejoined rank ran only %d steps", nj);
    if (t_cut && saw_v2) {
        int64_t t1 = atomic_load(&sh->t_first_v2_ns[0]);
        fprintf(stderr,
                "  %s: link down -> majority completed in view %llu: %lld "
                "ms (liveness timeout %d ms%s); rejoined rank ran %d steps\n",
                etcd ? "etcd" : "embedded", (unsigned long long)v2_epoch,
                (long long)((t1 - t_cut) / 1000000), PT_LIVE_MS,
                etcd ? ", lease TTL 1 s" : "", nj);
    }
    munmap(k.sh, sizeof(pt_shm_t));
    mc_test_rmtree(d);
    free(d);
    if (ec) cluster_stop(ec);
    net_down(&k);
    if (problems) fprintf(stderr, "  %d problem(s)\n", problems);
    assert_int_equal(problems, 0);
}

static void run_partition(int etcd, int tcp_user_timeout_ms, int idle)
{
    run_partition_k(etcd, tcp_user_timeout_ms, idle, 0);
}

static void partition_embedded(void **s)
{
    (void)s, run_partition(0, 0, 0);
}
static void partition_embedded_tcp_timeout(void **s)
{
    (void)s, run_partition(0, 300, 0);
}
/* The cut-off rank calls nothing during the partition, so it never had
 * "no quorum" there; after the healing the majority's kernels reset the
 * connections they timed out. Those resets are no evidence of death. */
static void partition_idle_embedded(void **s)
{
    (void)s, run_partition(0, 0, 1);
}
static void partition_idle_tcp_timeout(void **s)
{
    (void)s, run_partition(0, 300, 1);
}
/* As partition_idle_tcp_timeout, with a heartbeat timeout on the cut-off
 * rank longer than the test (30 s), and a p2p send to each peer once the
 * link is up: the cut-off rank finds no silence, only the resets of
 * connections its live peers timed out. A reset from a
 * process that is alive (its listener answers) is no evidence of death:
 * the cut-off rank must not go on alone in a view of its own. */
static void partition_idle_reset(void **s)
{
    (void)s, run_partition_k(0, 300, 1, 30000);
}
static void partition_etcd(void **s)
{
    (void)s, run_partition(1, 0, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(partition_embedded),
        cmocka_unit_test(partition_embedded_tcp_timeout),
        cmocka_unit_test(partition_idle_embedded),
        cmocka_unit_test(partition_idle_tcp_timeout),
        cmocka_unit_test(partition_idle_reset),
        cmocka_unit_test(partition_etcd),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
