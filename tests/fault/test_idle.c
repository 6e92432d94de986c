/*
 * Deaths between operations that only suspicion reports first
 * (docs/fault-model.md: removal on evidence of death). Ranks die (SIGKILL,
 * or a clean exit: mc_comm_destroy, then exit) while the survivors sit
 * idle between two collectives for longer than the liveness timeout, or,
 * with etcd membership, than the lease TTL. At their next call the
 * survivors hold the dead ranks on suspicion (silence, an expired lease)
 * before any progress has read the ends the transports hold (shm: the
 * dead process's pidfd or closed flags; tcp: the hang-up). With half of
 * the view dead, suspicion alone has no majority, so unless the
 * coordinator asks the transports for that evidence, the survivors fail
 * with "no quorum" although the dead ranks are provably gone.
 *
 * Each case: n ranks run a few allreduces, the victims die, the survivors
 * sleep (idle, no engine calls), then run more allreduces. Every survivor
 * must succeed, report a view of exactly the survivors, and hold the sum
 * over them. slow_exit_tcp_2, big_exit_shm_2: a killed process that
 * takes a while to close its files (below).
 * The negative side (a stopped, live peer of a 2-rank group
 * gives "no quorum") is test_stop's stop_shm_2.
 *
 * idle_lease_*: only with MOONCAKE_ETCD_ENDPOINTS (the fault_etcd_mode
 * ctest entry); the liveness timeout is long, so the expired lease is the
 * only suspicion (TTL 1 s, idle 2.5 s).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests_common.h"

#define ID_BEFORE 4 /* ops before the deaths */
#define ID_AFTER 3  /* ops after the idle time */
#define ID_COUNT 64

typedef struct {
    int n;
    uint32_t victims; /* bit per rank */
    int clean;        /* victims destroy and exit instead of SIGKILL */
    int lease;        /* long liveness timeout: the lease must tell */
    int hold_ms;      /* the victim's sockets outlive it this long */
    int rss_mb;       /* the victim holds this much memory (big_exit) */
    mc_transport_kind_t tr;
    char dir[256];
} idle_run_t;

typedef struct {
    int pid[8];
    int done[8];      /* survivor finished its checks */
    char err[8][256]; /* first problem per rank */
} idle_shm_t;

static idle_shm_t *g_sh;

static int fail_rank(int rank, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int fail_rank(int rank, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_sh->err[rank], sizeof(g_sh->err[rank]), fmt, ap);
    va_end(ap);
    return MC_TFAIL(rank, "%s", g_sh->err[rank]);
}

/* Is the victim still being torn down: one of its tasks not yet a zombie
 * (the leader turns zombie first; the last thread frees the memory)? */
static int victim_tearing_down(const idle_run_t *k, int size)
{
    int vp = 0;
    for (int p = 0; p < size; p++)
        if ((k->victims >> p) & 1) vp = g_sh->pid[p];
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/task", vp);
    DIR *d = opendir(path);
    if (!d) return 0;
    int running = 0;
    struct dirent *e;
    while (!running && (e = readdir(d)) != NULL) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        char tp[96], buf[512];
        snprintf(tp, sizeof(tp), "%s/%.16s/stat", path, e->d_name);
        FILE *f = fopen(tp, "r");
        if (!f) continue;
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = '\0';
        const char *x = strrchr(buf, ')');
        running = x && x[1] && x[2] != 'Z' && x[2] != 'X';
    }
    closedir(d);
    return running;
}

static int idle_main(int rank, int size, void *arg)
{
    idle_run_t *k = arg;
    setenv("MOONCAKE_LIVENESS_TIMEOUT_MS", k->lease ? "20000" : "300", 1);
    mc_store_h store;
    if (mc_store_file_create(k->dir, &store) != MC_OK)
        return fail_rank(rank, "store: %s", mc_last_error());
    mc_comm_config_t cfg;
    mc_comm_config_init(&cfg);
    cfg.transport = k->tr;
    cfg.timeout_ms = 20000;
    cfg.init_timeout_ms = 30000;
    cfg.etcd_ttl_s = 1;
    mc_comm_h c;
    mc_status_t st = mc_comm_create(rank, size, store, &cfg, &c);
    mc_store_destroy(store);
    if (st != MC_OK) return fail_rank(rank, "create: %s", mc_last_error());
    g_sh->pid[rank] = (int)getpid();
    if (k->rss_mb && ((k->victims >> rank) & 1)) {
        size_t len = (size_t)k->rss_mb << 20;
        char *m = mmap(NULL, len, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) return fail_rank(rank, "mmap: %m");
        /* small pages: huge ones are freed too fast to tell */
        (void)madvise(m, len, MADV_NOHUGEPAGE);
        memset(m, 1, len); /* freed by the kernel when it is killed */
    }
    int64_t v[ID_COUNT];
    for (int s = 0; s < ID_BEFORE + ID_AFTER; s++) {
        int victim = (k->victims >> rank) & 1;
        if (s == ID_BEFORE) {
            if (victim && k->clean) {
                mc_comm_destroy(c);
                _exit(0);
            }
            if (victim && k->hold_ms && fork() == 0) {
                /* holds the victim's descriptors (its sockets), as the
                 * kernel does while it frees a large process's memory */
                usleep((useconds_t)k->hold_ms * 1000);
                _exit(0);
            }
            if (victim) raise(SIGKILL);
            /* idle past the liveness timeout (or the lease's TTL) */
            if (!k->hold_ms && !k->rss_mb)
                usleep(k->lease ? 2500000 : 1000000);
        }
        for (int i = 0; i < ID_COUNT; i++) v[i] = (int64_t)(rank + 1) * (s + i);
        st = mc_comm_allreduce(c, v, v, ID_COUNT, MC_INT64, MC_SUM);
        if (st != MC_OK) {
            int rc = fail_rank(rank, "step %d: %s: %s", s, mc_status_str(st),
                               mc_comm_last_error(c));
            mc_comm_destroy(c);
            return rc;
        }
        uint64_t ep;
        uint8_t act[8];
        int na;
        mc_comm_op_view(c, &ep, act, &na);
        if (k->rss_mb && s == ID_BEFORE && !victim_tearing_down(k, size)) {
            int rc = fail_rank(rank, "step %d: completed only once the "
                               "kernel had torn down the victim", s);
            mc_comm_destroy(c);
            return rc;
        }
        int64_t w = 0;
        for (int p = 0; p < size; p++) {
            int want = s < ID_BEFORE || !((k->victims >> p) & 1);
            if (act[p] != want) {
                int rc = fail_rank(rank, "step %d: rank %d %s the view "
                                   "(epoch %llu)", s, p,
                                   act[p] ? "still in" : "not in",
                                   (unsigned long long)ep);
                mc_comm_destroy(c);
                return rc;
            }
            if (act[p]) w += p + 1;
        }
        for (int i = 0; i < ID_COUNT; i++)
            if (v[i] != w * (s + i)) {
                int rc = fail_rank(rank, "step %d: element %d is %lld, want "
                                   "%lld", s, i, (long long)v[i],
                                   (long long)(w * (s + i)));
                mc_comm_destroy(c);
                return rc;
            }
    }
    g_sh->done[rank] = 1;
    mc_comm_destroy(c);
    return 0;
}

static void run_idle_ex(int n, uint32_t victims, int clean, int lease,
                        int hold_ms, int rss_mb, mc_transport_kind_t tr)
{
    if (lease && !getenv("MOONCAKE_ETCD_ENDPOINTS")) skip();
    g_sh = mmap(NULL, sizeof(*g_sh), PROT_READ | PROT_WRITE,
                MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(g_sh != MAP_FAILED);
    memset(g_sh, 0, sizeof(*g_sh));
    idle_run_t k = {.n = n, .victims = victims, .clean = clean,
                    .lease = lease, .hold_ms = hold_ms, .rss_mb = rss_mb,
                    .tr = tr};
    char *d = mc_test_mkdtemp();
    assert_non_null(d);
    snprintf(k.dir, sizeof(k.dir), "%s", d);
    (void)mc_test_fork(n, 60, idle_main, &k);
    mc_test_rmtree(d);
    free(d);
    int bad = 0;
    for (int r = 0; r < n; r++) {
        if ((victims >> r) & 1) continue;
        if (!g_sh->done[r]) {
            fprintf(stderr, "survivor %d: %s\n", r,
                    g_sh->err[r][0] ? g_sh->err[r] : "did not finish");
            bad++;
        }
    }
    munmap(g_sh, sizeof(*g_sh));
    assert_int_equal(bad, 0);
}

static void run_idle(int n, uint32_t victims, int clean, int lease,
                     mc_transport_kind_t tr)
{
    run_idle_ex(n, victims, clean, lease, 0, 0, tr);
}

/* 2 ranks: the survivor alone is no majority of the view */
static void idle_kill_shm_2(void **s)
{
    (void)s, run_idle(2, 0x2, 0, 0, MC_TRANSPORT_SHM);
}
static void idle_kill_tcp_2(void **s)
{
    (void)s, run_idle(2, 0x2, 0, 0, MC_TRANSPORT_TCP);
}
static void idle_clean_shm_2(void **s)
{
    (void)s, run_idle(2, 0x2, 1, 0, MC_TRANSPORT_SHM);
}
static void idle_clean_tcp_2(void **s)
{
    (void)s, run_idle(2, 0x2, 1, 0, MC_TRANSPORT_TCP);
}
/* 4 ranks, half of them die, rank 0 (the first coordinator) among them,
 * so that a survivor that is not rank 0 decides. Over tcp the survivors'
 * sends of the op itself found the ends first in every run here (it passed
 * without the probe too); kept for the tcp side of 4 ranks. */
static void idle_kill_shm_4(void **s)
{
    (void)s, run_idle(4, 0x5, 0, 0, MC_TRANSPORT_SHM);
}
static void idle_kill_tcp_4(void **s)
{
    (void)s, run_idle(4, 0x3, 0, 0, MC_TRANSPORT_TCP);
}
/* A killed process goes silent at once, but its sockets close only after
 * the kernel has freed its memory (about 60 ms per GiB here). Here a child
 * holds them for 800 ms while the survivor, in the op, suspects the
 * victim after 300 ms of silence: it must wait for the evidence (the
 * liveness timeout, at least 1 s) before it reports "no quorum". */
static void slow_exit_tcp_2(void **s)
{
    (void)s, run_idle_ex(2, 0x2, 0, 0, 800, 0, MC_TRANSPORT_TCP);
}
/* The same over shm, found sooner: the victim holds 3 GiB (the kernel
 * frees it in about 200 ms here before the pidfd says "exited"); the
 * survivor, waiting in the op, must complete it while the victim is still
 * being torn down (every thread exiting, shm_pid_exiting), not after. */
static void big_exit_shm_2(void **s)
{
    (void)s, run_idle_ex(2, 0x2, 0, 0, 0, 3072, MC_TRANSPORT_SHM);
}
static void idle_lease_kill_shm_2(void **s)
{
    (void)s, run_idle(2, 0x2, 0, 1, MC_TRANSPORT_SHM);
}
static void idle_lease_clean_tcp_2(void **s)
{
    (void)s, run_idle(2, 0x1, 1, 1, MC_TRANSPORT_TCP);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(idle_kill_shm_2),
        cmocka_unit_test(idle_kill_tcp_2),
        cmocka_unit_test(idle_clean_shm_2),
        cmocka_unit_test(idle_clean_tcp_2),
        cmocka_unit_test(idle_kill_shm_4),
        cmocka_unit_test(idle_kill_tcp_4),
        cmocka_unit_test(slow_exit_tcp_2),
        cmocka_unit_test(big_exit_shm_2),
        cmocka_unit_test(idle_lease_kill_shm_2),
        cmocka_unit_test(idle_lease_clean_tcp_2),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
