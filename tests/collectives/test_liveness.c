/*
 * Liveness detector (collectives/liveness.h) over real processes: forked
 * ranks sharing a file store watch each other with UDP heartbeats while the
 * parent stops, resumes or kills one of them, injects foreign datagrams,
 * or loads the CPU. Every child samples mc_live_suspects every few ms and
 * records, in shared memory, when it first saw each peer suspected or
 * cleared and the longest silence of peers that were running; the parent
 * compares those times with the moments it acted (CLOCK_MONOTONIC is
 * system-wide). Datagrams the parent injects are built by hand from the
 * wire layout documented in liveness.h, not with the module's encoder.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "liveness.h"
#include "mc_log.h"
#include "tests_common.h"

#define T_MAXR 8
#define T_CHILD_LIMIT_US 20000000 /* a child never runs longer than this */
#define T_SLACK_MS 200            /* detection bound: timeout + this */

enum {
    PH_WARM = 0,   /* everybody runs */
    PH_FAULT = 1,  /* target stopped/killed; test 4: junk only */
    PH_RESUME = 2, /* target resumed; test 4: valid datagrams for rank 2 */
    PH_FORGET = 3, /* the forgetting rank forgets */
    PH_REPLAY = 4, /* test 4: replayed datagrams only */
    PH_STOP = 9,
};

/* What one rank process saw; times are absolute mc_now_us() values. */
typedef struct t_res {
    _Atomic int64_t t_conn;             /* just before mc_live_connect */
    _Atomic int64_t t_forget;           /* when it called forget */
    _Atomic int64_t detect[T_MAXR];     /* first seen suspected (allowed) */
    _Atomic int64_t clear[T_MAXR];      /* first seen unsuspected in RESUME */
    _Atomic int64_t detect2[T_MAXR];    /* first seen suspected in REPLAY */
    _Atomic int resusp[T_MAXR];         /* suspected again after clear */
    _Atomic int false_susp[T_MAXR];     /* suspected while it should not be */
    _Atomic int64_t max_silent[T_MAXR]; /* peers that should be heard */
    _Atomic int64_t max_at[T_MAXR];     /* when max_silent was seen */
    _Atomic int final_susp[T_MAXR];     /* state at the last sample */
    _Atomic int bad_api;                /* an API answer that is wrong */
    _Atomic int64_t samples;
    _Atomic uint64_t sent, received, ignored, injected;
} t_res_t;

typedef struct t_shm {
    _Atomic int ready, phase;
    _Atomic int64_t t_phase[10];
    t_res_t r[T_MAXR];
} t_shm_t;

typedef struct t_cfg {
    int size;
    int target;          /* rank the parent acts on, -1 none */
    int target_at_start; /* target may be suspected from connect (test 4) */
    int forgetter;       /* rank that forgets everyone in PH_FORGET, -1 */
    int64_t timeout_ms;
    int sample_us;
    uint64_t uid;
    char *dir;
    t_shm_t *shm;
} t_cfg_t;

static int64_t t_now(void)
{
    return mc_now_us();
}

static void t_sleep_ms(int64_t ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void t_max(_Atomic int64_t *m, _Atomic int64_t *at, int64_t v)
{
    if (v > atomic_load(m)) {
        atomic_store(m, v);
        atomic_store(at, t_now());
    }
}

/* ------------------------------------------------------------------------ */
/* Rank process                                                             */
/* ------------------------------------------------------------------------ */

static int t_rank(int rank, const t_cfg_t *c)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    t_shm_t *shm = c->shm;
    t_res_t *me = &shm->r[rank];
    mc_store_h store;
    if (mc_store_file_create(c->dir, &store) != MC_OK)
        return MC_TFAIL(rank, "store: %s", mc_last_error());
    uint8_t mask[T_MAXR] = {0};
    for (int r = 0; r < c->size; r++)
        mask[r] = r != rank;
    mc_live_params_t p = {.rank = rank,
                          .size = c->size,
                          .store = store,
                          .uid = c->uid,
                          .peers = mask,
                          .timeout_ms = c->timeout_ms,
                          .connect_timeout_ms = 10000};
    mc_live_t *l = NULL;
    if (mc_live_create(&p, &l) != MC_OK)
        return MC_TFAIL(rank, "create: %s", mc_last_error());
    atomic_store(&me->t_conn, t_now());
    if (mc_live_connect(l) != MC_OK)
        return MC_TFAIL(rank, "connect: %s", mc_last_error());
    mc_store_destroy(store); /* connect is done with it */
    atomic_fetch_add(&shm->ready, 1);

    int64_t end = t_now() + T_CHILD_LIMIT_US;
    int forgot = 0, cleared[T_MAXR] = {0};
    for (;;) {
        int ph = atomic_load(&shm->phase);
        if (ph == PH_STOP || t_now() > end) break;
        if (rank == c->forgetter && ph >= PH_FORGET && !forgot) {
            for (int q = 0; q < c->size; q++)
                if (q != rank) mc_live_forget(l, q);
            atomic_store(&me->t_forget, t_now());
            forgot = 1;
        }
        uint8_t out[T_MAXR];
        memset(out, 0xee, sizeof(out));
        int n = mc_live_suspects(l, out);
        int64_t now = t_now();
        int count = 0;
        for (int q = 0; q < c->size; q++) {
            int s = out[q];
            if (s != 0 && s != 1) atomic_store(&me->bad_api, 1);
            count += s == 1;
            atomic_store(&me->final_susp[q], s);
            if (q == rank) {
                if (s || mc_live_silent_ms(l, q) != -1)
                    atomic_store(&me->bad_api, 1);
                continue;
            }
            int64_t sil = mc_live_silent_ms(l, q);
            if (forgot) {
                /* forgotten: never suspected, no silence reading */
                if (s || sil != -1) atomic_fetch_add(&me->false_susp[q], 1);
                continue;
            }
            if (sil < 0) atomic_store(&me->bad_api, 1);
            int allowed =
                (q == c->target && (ph >= PH_FAULT || c->target_at_start)) ||
                (q == c->forgetter && ph >= PH_FORGET);
            if (!allowed) {
                if (s) atomic_fetch_add(&me->false_susp[q], 1);
                t_max(&me->max_silent[q], &me->max_at[q], sil);
                continue;
            }
            if (s && !atomic_load(&me->detect[q]))
                atomic_store(&me->detect[q], now);
            if (ph == PH_RESUME && !s && !cleared[q]) {
                cleared[q] = 1;
                atomic_store(&me->clear[q], now);
            }
            if (ph == PH_RESUME && s && cleared[q])
                atomic_fetch_add(&me->resusp[q], 1);
            if (ph == PH_REPLAY && s && !atomic_load(&me->detect2[q]))
                atomic_store(&me->detect2[q], now);
        }
        if (n != count) atomic_store(&me->bad_api, 1);
        atomic_fetch_add(&me->samples, 1);
        struct timespec ts = {0, c->sample_us * 1000L};
        nanosleep(&ts, NULL);
    }
    mc_live_stats_t st;
    mc_live_stats(l, &st);
    atomic_store(&me->sent, st.sent);
    atomic_store(&me->received, st.received);
    atomic_store(&me->ignored, st.ignored);
    mc_live_destroy(l);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Parent side                                                              */
/* ------------------------------------------------------------------------ */

typedef struct t_group {
    t_cfg_t c;
    pid_t pid[T_MAXR];
    pid_t burner[16];
    int nburner;
    int64_t t_started; /* every rank connected */
} t_group_t;

static void t_group_init(t_group_t *g, int size, int64_t timeout_ms)
{
    memset(g, 0, sizeof(*g));
    g->c.size = size;
    g->c.target = -1;
    g->c.forgetter = -1;
    g->c.timeout_ms = timeout_ms;
    g->c.sample_us = 1000;
    assert_int_equal(getrandom(&g->c.uid, sizeof(g->c.uid), 0),
                     sizeof(g->c.uid));
    g->c.dir = mc_test_mkdtemp();
    assert_non_null(g->c.dir);
    g->c.shm = mmap(NULL, sizeof(t_shm_t), PROT_READ | PROT_WRITE,
                    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(g->c.shm != MAP_FAILED);
    memset(g->c.shm, 0, sizeof(t_shm_t));
}

/* A random wait within one heartbeat interval, so that a fault lands at a
 * random point between two heartbeats (the ranks start their timers
 * together, the parent's sleeps would otherwise align with them). */
static int64_t t_jitter_ms(const t_group_t *g)
{
    uint32_t v = 0;
    if (getrandom(&v, sizeof(v), 0) != sizeof(v)) v = (uint32_t)t_now();
    int64_t iv = g->c.timeout_ms / 6;
    return (int64_t)(v % (uint32_t)iv);
}

static void t_phase(t_group_t *g, int ph)
{
    atomic_store(&g->c.shm->t_phase[ph], t_now());
    atomic_store(&g->c.shm->phase, ph);
}

/* Fork ranks [0, nranks) and wait until they are connected. */
static void t_start(t_group_t *g, int nranks)
{
    fflush(NULL);
    for (int r = 0; r < nranks; r++) {
        pid_t p = fork();
        assert_true(p >= 0);
        if (p == 0) {
            int rc = t_rank(r, &g->c);
            fflush(NULL);
            _exit(rc ? 1 : 0);
        }
        g->pid[r] = p;
    }
    int64_t deadline = t_now() + 15000000;
    while (atomic_load(&g->c.shm->ready) < nranks && t_now() < deadline)
        t_sleep_ms(1);
    assert_int_equal(atomic_load(&g->c.shm->ready), nranks);
    g->t_started = t_now();
}

/* Stop everything; returns the number of ranks that exited with an error
 * (ranks in `ignore` may have been killed on purpose). Bounded: stragglers
 * are killed after 10 s. */
static int t_finish(t_group_t *g, int ignore)
{
    t_phase(g, PH_STOP);
    for (int i = 0; i < g->nburner; i++) {
        kill(g->burner[i], SIGKILL);
        waitpid(g->burner[i], NULL, 0);
    }
    int failed = 0;
    int64_t deadline = t_now() + 10000000;
    for (int r = 0; r < T_MAXR; r++) {
        if (!g->pid[r]) continue;
        kill(g->pid[r], SIGCONT);
        int st = 0;
        pid_t w;
        while ((w = waitpid(g->pid[r], &st, WNOHANG)) == 0 &&
               t_now() < deadline)
            t_sleep_ms(2);
        if (w == 0) {
            fprintf(stderr, "rank %d did not exit: killing\n", r);
            kill(g->pid[r], SIGKILL);
            waitpid(g->pid[r], &st, 0);
            failed++;
        } else if (r != ignore && !(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
            fprintf(stderr, "rank %d failed (status 0x%x)\n", r, st);
            failed++;
        }
        g->pid[r] = 0;
    }
    mc_test_rmtree(g->c.dir);
    free(g->c.dir);
    g->c.dir = NULL;
    return failed;
}

static void t_group_free(t_group_t *g)
{
    munmap(g->c.shm, sizeof(t_shm_t));
}

/* Wait until every rank in `who` (bitmask) has a nonzero field. */
static int t_wait_all(t_group_t *g, unsigned who, int q, int which,
                      int64_t limit_ms)
{
    int64_t deadline = t_now() + limit_ms * 1000;
    for (;;) {
        int missing = 0;
        for (int r = 0; r < g->c.size; r++) {
            if (!(who & (1u << r))) continue;
            t_res_t *x = &g->c.shm->r[r];
            _Atomic int64_t *f = which == 0   ? &x->detect[q]
                                 : which == 1 ? &x->clear[q]
                                              : &x->detect2[q];
            missing += !atomic_load(f);
        }
        if (!missing) return 0;
        if (t_now() > deadline) return -1;
        t_sleep_ms(1);
    }
}

static unsigned t_all_but(int size, int skip)
{
    unsigned m = 0;
    for (int r = 0; r < size; r++)
        if (r != skip) m |= 1u << r;
    return m;
}

/* No rank saw a running peer suspected; print and return the longest
 * silence of running peers. */
static int64_t t_check_no_false(t_group_t *g, const char *what)
{
    int64_t worst = 0, at = 0;
    int wr = -1, wq = -1;
    for (int r = 0; r < g->c.size; r++) {
        t_res_t *x = &g->c.shm->r[r];
        assert_int_equal(atomic_load(&x->bad_api), 0);
        for (int q = 0; q < g->c.size; q++) {
            if (atomic_load(&x->false_susp[q]))
                fprintf(stderr,
                        "%s: rank %d falsely suspected rank %d (%d "
                        "samples)\n",
                        what, r, q, atomic_load(&x->false_susp[q]));
            assert_int_equal(atomic_load(&x->false_susp[q]), 0);
            if (atomic_load(&x->max_silent[q]) > worst) {
                worst = atomic_load(&x->max_silent[q]);
                at = atomic_load(&x->max_at[q]);
                wr = r;
                wq = q;
            }
        }
    }
    printf("[liveness] %s: max silence of a running peer %lld ms "
           "(timeout %lld ms; rank %d of rank %d, %lld ms after start)\n",
           what, (long long)worst, (long long)g->c.timeout_ms, wr, wq,
           (long long)(at ? (at - g->t_started) / 1000 : -1));
    return worst;
}

/* Print and check latencies of `field` relative to `since` for the ranks
 * in `who`; returns the worst. */
static int64_t t_check_latency(t_group_t *g, unsigned who, int q, int which,
                               int64_t since, int64_t lo_ms, int64_t hi_ms,
                               const char *what)
{
    int64_t worst = 0;
    for (int r = 0; r < g->c.size; r++) {
        if (!(who & (1u << r))) continue;
        t_res_t *x = &g->c.shm->r[r];
        int64_t t = atomic_load(which == 0   ? &x->detect[q]
                                : which == 1 ? &x->clear[q]
                                             : &x->detect2[q]);
        assert_true(t != 0);
        int64_t ms = (t - since) / 1000;
        printf("[liveness] %s: rank %d saw rank %d after %lld ms\n", what, r, q,
               (long long)ms);
        if (ms < lo_ms || ms > hi_ms)
            fprintf(stderr, "%s: rank %d: %lld ms outside [%lld, %lld]\n", what,
                    r, (long long)ms, (long long)lo_ms, (long long)hi_ms);
        assert_true(ms >= lo_ms);
        assert_true(ms <= hi_ms);
        if (ms > worst) worst = ms;
    }
    return worst;
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                    */
/* ------------------------------------------------------------------------ */

/* (1) 4 live ranks, 300 ms timeout, 2 s: nobody suspected. */
static void test_all_alive(void **state)
{
    (void)state;
    t_group_t g;
    t_group_init(&g, 4, 300);
    t_start(&g, 4);
    t_sleep_ms(2000);
    assert_int_equal(t_finish(&g, -1), 0);
    int64_t worst = t_check_no_false(&g, "4 alive");
    assert_true(worst < g.c.timeout_ms);
    for (int r = 0; r < 4; r++) {
        t_res_t *x = &g.c.shm->r[r];
        assert_true(atomic_load(&x->samples) > 100);
        /* 2 s at a 50 ms interval to 3 peers: dozens each way */
        assert_true(atomic_load(&x->received) >= 3 * 20);
        assert_true(atomic_load(&x->sent) >= 3 * 20);
        assert_int_equal(atomic_load(&x->ignored), 0);
    }
    t_group_free(&g);
}

/* (2) SIGSTOP one rank: the others suspect it within timeout + 200 ms; after
 * SIGCONT it is cleared, and the resumed rank suspects nobody. */
static void test_stop_cont(void **state)
{
    (void)state;
    const int n = 4, tgt = 3;
    t_group_t g;
    t_group_init(&g, n, 300);
    g.c.target = tgt;
    t_start(&g, n);
    t_sleep_ms(500 + t_jitter_ms(&g));
    t_phase(&g, PH_FAULT);
    int64_t t_sig = t_now();
    assert_int_equal(kill(g.pid[tgt], SIGSTOP), 0);
    unsigned obs = t_all_but(n, tgt);
    int rc = t_wait_all(&g, obs, tgt, 0, g.c.timeout_ms + 2000);
    t_sleep_ms(300); /* stay stopped a while: buffers fill up */
    t_phase(&g, PH_RESUME);
    int64_t t_cont = t_now();
    assert_int_equal(kill(g.pid[tgt], SIGCONT), 0);
    int rc2 = t_wait_all(&g, obs, tgt, 1, 2000);
    t_sleep_ms(600); /* cleared for good; the resumed rank looks around */
    assert_int_equal(t_finish(&g, -1), 0);
    assert_int_equal(rc, 0);
    assert_int_equal(rc2, 0);
    t_check_latency(&g, obs, tgt, 0, t_sig, g.c.timeout_ms / 2,
                    g.c.timeout_ms + T_SLACK_MS, "SIGSTOP detected");
    t_check_latency(&g, obs, tgt, 1, t_cont, 0, 500, "SIGCONT cleared");
    for (int r = 0; r < n; r++)
        if (r != tgt)
            assert_int_equal(atomic_load(&g.c.shm->r[r].resusp[tgt]), 0);
    /* includes the resumed rank: it suspected none of the others */
    t_check_no_false(&g, "stop/cont");
    t_group_free(&g);
}

/* (3) SIGKILL: suspected within timeout + 200 ms. */
static void test_kill(void **state)
{
    (void)state;
    const int n = 4, tgt = 1;
    t_group_t g;
    t_group_init(&g, n, 300);
    g.c.target = tgt;
    t_start(&g, n);
    t_sleep_ms(500 + t_jitter_ms(&g));
    t_phase(&g, PH_FAULT);
    int64_t t_sig = t_now();
    assert_int_equal(kill(g.pid[tgt], SIGKILL), 0);
    unsigned obs = t_all_but(n, tgt);
    int rc = t_wait_all(&g, obs, tgt, 0, g.c.timeout_ms + 2000);
    t_sleep_ms(200);
    assert_int_equal(t_finish(&g, tgt), 0);
    assert_int_equal(rc, 0);
    t_check_latency(&g, obs, tgt, 0, t_sig, g.c.timeout_ms / 2,
                    g.c.timeout_ms + T_SLACK_MS, "SIGKILL detected");
    for (int r = 0; r < n; r++)
        if (r != tgt)
            assert_int_equal(atomic_load(&g.c.shm->r[r].final_susp[tgt]), 1);
    t_check_no_false(&g, "kill");
    t_group_free(&g);
}

/* Datagram by the layout in liveness.h (independent of the module). */
static size_t t_dgram(uint8_t *b, uint32_t magic, uint32_t ver, uint64_t uid,
                      uint32_t from, uint32_t to, uint64_t inc, uint64_t ctr)
{
    const uint64_t f[7] = {magic, ver, uid, from, to, inc, ctr};
    const int w[7] = {4, 4, 8, 4, 4, 8, 8};
    size_t o = 0;
    for (int i = 0; i < 7; i++)
        for (int k = 0; k < w[i]; k++)
            b[o++] = (uint8_t)(f[i] >> (8 * k));
    return o; /* 40 */
}

typedef struct t_dst {
    struct sockaddr_in sa;
    uint64_t inc;
} t_dst_t;

static void t_read_dst(mc_store_h s, int r, t_dst_t *d)
{
    char key[32], val[128] = {0}, ip[32];
    size_t len = 0;
    snprintf(key, sizeof(key), "live/%d", r);
    assert_int_equal(mc_store_get(s, key, 5000, val, sizeof(val) - 1, &len),
                     MC_OK);
    unsigned port = 0;
    unsigned long long inc = 0;
    assert_int_equal(sscanf(val, "%31[0-9.]:%u/%llx", ip, &port, &inc), 3);
    memset(&d->sa, 0, sizeof(d->sa));
    d->sa.sin_family = AF_INET;
    d->sa.sin_port = htons((uint16_t)port);
    assert_int_equal(inet_pton(AF_INET, ip, &d->sa.sin_addr), 1);
    d->inc = inc;
}

static void t_send(t_group_t *g, int fd, int r, const t_dst_t *d,
                   const uint8_t *b, size_t len, int junk)
{
    ssize_t w =
        sendto(fd, b, len, 0, (const struct sockaddr *)&d->sa, sizeof(d->sa));
    assert_int_equal(w, (ssize_t)len);
    if (junk) atomic_fetch_add(&g->c.shm->r[r].injected, 1);
}

/* (4) Slot 2 is held by the parent, which sends only foreign or malformed
 * datagrams: ranks 0 and 1 suspect it at timeout after connect and ignore
 * (count) every one. Control: valid datagrams as rank 2 clear it; replays of
 * those (old counters) do not keep it alive. */
static void test_foreign(void **state)
{
    (void)state;
    const int n = 3, fake = 2;
    const int64_t to = 300;
    t_group_t g;
    t_group_init(&g, n, to);
    g.c.target = fake;
    g.c.target_at_start = 1;

    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in me = {.sin_family = AF_INET,
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(me);
    assert_int_equal(bind(fd, (struct sockaddr *)&me, sizeof(me)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&me, &sl), 0);
    mc_store_h s;
    assert_int_equal(mc_store_file_create(g.c.dir, &s), MC_OK);
    const uint64_t inc2 = 0x0123456789abcdefull;
    char val[64];
    snprintf(val, sizeof(val), "127.0.0.1:%u/%016llx",
             (unsigned)ntohs(me.sin_port), (unsigned long long)inc2);
    assert_int_equal(mc_store_set(s, "live/2", val, strlen(val)), MC_OK);

    t_start(&g, 2);
    t_phase(&g, PH_FAULT);
    t_dst_t d[2];
    t_read_dst(s, 0, &d[0]);
    t_read_dst(s, 1, &d[1]);
    const uint64_t uid = g.c.uid;
    uint8_t b[256];
    /* junk for timeout + 300 ms */
    int64_t end = t_now() + (to + 300) * 1000;
    unsigned seed = 1;
    while (t_now() < end) {
        for (int r = 0; r < 2; r++) {
            const int other = 1 - r;
            size_t k;
            for (size_t i = 0; i < sizeof(b); i++)
                b[i] = (uint8_t)rand_r(&seed);
            t_send(&g, fd, r, &d[r], b, 40, 1); /* random 40 bytes */
            t_send(&g, fd, r, &d[r], b, 1 + rand_r(&seed) % 200, 1);
            t_send(&g, fd, r, &d[r], b, 0, 1); /* empty */
            k = t_dgram(b, MC_LIVE_MAGIC, MC_LIVE_VERSION, uid ^ 1, fake, r,
                        inc2, 1000); /* other communicator */
            t_send(&g, fd, r, &d[r], b, k, 1);
            k = t_dgram(b, MC_LIVE_MAGIC ^ 0x100, MC_LIVE_VERSION, uid, fake, r,
                        inc2, 1001); /* wrong magic */
            t_send(&g, fd, r, &d[r], b, k, 1);
            k = t_dgram(b, MC_LIVE_MAGIC, MC_LIVE_VERSION + 1, uid, fake, r,
                        inc2, 1002); /* wrong version */
            t_send(&g, fd, r, &d[r], b, k, 1);
            k = t_dgram(b, MC_LIVE_MAGIC, MC_LIVE_VERSION, uid, 3, r, inc2,
                        1003); /* rank == size */
            t_send(&g, fd, r, &d[r], b, k, 1);
            k = t_dgram(b, MC_LIVE_MAGIC, MC_LIVE_VERSION, uid, UINT32_MAX, r,
                        inc2, 1004); /* rank -1 */
            t_send(&g, fd, r, &d[r], b, k, 1);
            k = t_dgram(b, MC_LIVE_MAGIC, MC_LIVE_VERSION, uid, (uint32_t)r, r,
                        d[r].inc, 1005); /* from itself */
            t_send(&g, fd, r, &d[r], b, k, 1);
            k = t_dgram(b, MC_LIVE_MAGIC, MC_LIVE_VERSION, uid, fake, r,
                        inc2 ^ 0x55, 1006); /* old incarnation */
            t_send(&g, fd, r, &d[r], b, k, 1);
            k = t_dgram(b, MC_LIVE_MAGIC, MC_LIVE_VERSION, uid, fake,
                        (uint32_t)other, inc2, 1007); /* meant for the other */
            t_send(&g, fd, r, &d[r], b, k, 1);
            k = t_dgram(b, MC_LIVE_MAGIC, MC_LIVE_VERSION, uid, fake, r, inc2,
                        1008); /* valid but 41 bytes */
            b[40] = 0;
            t_send(&g, fd, r, &d[r], b, 41, 1);
            t_send(&g, fd, r, &d[r], b, 39, 1); /* and 39 */
        }
        t_sleep_ms(5);
    }
    int rc_fault = t_wait_all(&g, 3u, fake, 0, 1);

    /* control: valid heartbeats as rank 2, every 20 ms for 600 ms */
    t_phase(&g, PH_RESUME);
    int64_t t_valid = t_now();
    uint64_t ctr = 1;
    end = t_now() + 600000;
    while (t_now() < end) {
        for (int r = 0; r < 2; r++) {
            size_t k = t_dgram(b, MC_LIVE_MAGIC, MC_LIVE_VERSION, uid, fake, r,
                               inc2, ctr);
            t_send(&g, fd, r, &d[r], b, k, 0);
        }
        ctr++;
        t_sleep_ms(20);
    }
    int rc_clear = t_wait_all(&g, 3u, fake, 1, 1);

    /* replays of counters already seen: must not keep rank 2 alive */
    t_phase(&g, PH_REPLAY);
    int64_t t_replay = t_now();
    end = t_now() + (to + 300) * 1000;
    uint64_t old = 1;
    while (t_now() < end) {
        for (int r = 0; r < 2; r++) {
            size_t k = t_dgram(b, MC_LIVE_MAGIC, MC_LIVE_VERSION, uid, fake, r,
                               inc2, old);
            t_send(&g, fd, r, &d[r], b, k, 1);
        }
        old = old % (ctr - 1) + 1;
        t_sleep_ms(20);
    }
    int rc_replay = t_wait_all(&g, 3u, fake, 2, 1);
    t_sleep_ms(50); /* let the last datagrams be read */
    assert_int_equal(t_finish(&g, -1), 0);
    close(fd);
    mc_store_destroy(s);

    assert_int_equal(rc_fault, 0);
    assert_int_equal(rc_clear, 0);
    assert_int_equal(rc_replay, 0);
    for (int r = 0; r < 2; r++) {
        t_res_t *x = &g.c.shm->r[r];
        int64_t ms =
            (atomic_load(&x->detect[fake]) - atomic_load(&x->t_conn)) / 1000;
        printf("[liveness] foreign only: rank %d suspected rank 2 %lld ms "
               "after connect; ignored %llu of %llu injected\n",
               r, (long long)ms, (unsigned long long)atomic_load(&x->ignored),
               (unsigned long long)atomic_load(&x->injected));
        /* the clock starts at connect: never before the timeout */
        assert_true(ms >= to);
        assert_true(ms <= to + T_SLACK_MS);
        assert_int_equal(atomic_load(&x->ignored), atomic_load(&x->injected));
        assert_int_equal(atomic_load(&x->resusp[fake]), 0);
    }
    t_check_latency(&g, 3u, fake, 1, t_valid, 0, 200,
                    "valid datagrams cleared");
    t_check_latency(&g, 3u, fake, 2, t_replay, to / 2, to + T_SLACK_MS,
                    "replays only, suspected");
    t_check_no_false(&g, "foreign");
    t_group_free(&g);
}

/* (5) forget: rank 2 is stopped; rank 0 then forgets everyone. Rank 0
 * suspects nobody from then on (and reads -1 silences); it also stops
 * sending, so rank 1 suspects rank 0 within timeout + 200 ms, and rank 1,
 * which forgot nothing, still suspects rank 2. */
static void test_forget(void **state)
{
    (void)state;
    const int n = 3, tgt = 2;
    t_group_t g;
    t_group_init(&g, n, 300);
    g.c.target = tgt;
    g.c.forgetter = 0;
    t_start(&g, n);
    t_sleep_ms(300 + t_jitter_ms(&g));
    t_phase(&g, PH_FAULT);
    assert_int_equal(kill(g.pid[tgt], SIGSTOP), 0);
    int rc = t_wait_all(&g, 3u, tgt, 0, g.c.timeout_ms + 2000);
    t_phase(&g, PH_FORGET);
    int64_t deadline = t_now() + 2000000;
    while (!atomic_load(&g.c.shm->r[0].t_forget) && t_now() < deadline)
        t_sleep_ms(1);
    int rc2 = t_wait_all(&g, 2u, 0, 0, g.c.timeout_ms + 2000);
    t_sleep_ms(300);
    assert_int_equal(t_finish(&g, tgt), 0);
    assert_int_equal(rc, 0);
    assert_int_equal(rc2, 0);
    t_res_t *r0 = &g.c.shm->r[0], *r1 = &g.c.shm->r[1];
    /* rank 0 saw no suspicion or silence of forgotten peers (false_susp
     * counts both), and its final sample had none */
    for (int q = 0; q < n; q++)
        assert_int_equal(atomic_load(&r0->final_susp[q]), 0);
    int64_t tf = atomic_load(&r0->t_forget);
    int64_t ms = (atomic_load(&r1->detect[0]) - tf) / 1000;
    printf("[liveness] forget: rank 1 suspected the forgetting rank 0 %lld ms "
           "after it forgot\n",
           (long long)ms);
    assert_true(ms >= g.c.timeout_ms / 2);
    assert_true(ms <= g.c.timeout_ms + T_SLACK_MS);
    assert_int_equal(atomic_load(&r1->final_susp[tgt]), 1);
    assert_int_equal(atomic_load(&r1->final_susp[0]), 1);
    t_check_no_false(&g, "forget");
    t_group_free(&g);
}

/* (6) 8 ranks, 200 ms timeout, every CPU busy with a spinning process:
 * nobody suspected. */
static void test_busy_cpu(void **state)
{
    (void)state;
    const int n = 8;
    t_group_t g;
    t_group_init(&g, n, 200);
    g.c.sample_us = 5000;
    t_start(&g, n);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    g.nburner = ncpu < 2 ? 2 : ncpu > 16 ? 16 : (int)ncpu;
    for (int i = 0; i < g.nburner; i++) {
        pid_t p = fork();
        assert_true(p >= 0);
        if (p == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            volatile uint64_t x = 0;
            int64_t stop = t_now() + T_CHILD_LIMIT_US;
            for (;;) {
                for (int k = 0; k < 1000000; k++)
                    x = x + (uint64_t)k;
                if (t_now() > stop) _exit(x == 1);
            }
        }
        g.burner[i] = p;
    }
    t_sleep_ms(2000);
    assert_int_equal(t_finish(&g, -1), 0);
    printf("[liveness] busy cpu: %d burners on %ld cpus\n", g.nburner, ncpu);
    int64_t worst = t_check_no_false(&g, "8 ranks, busy cpu");
    assert_true(worst < g.c.timeout_ms);
    t_group_free(&g);
}

/* Argument checks and an unwatched rank: no thread, nothing suspected. */
static void test_args(void **state)
{
    (void)state;
    char *dir = mc_test_mkdtemp();
    assert_non_null(dir);
    mc_store_h s;
    assert_int_equal(mc_store_file_create(dir, &s), MC_OK);
    uint8_t mask[2] = {0, 0};
    mc_live_params_t p = {.rank = 0,
                          .size = 2,
                          .store = s,
                          .peers = mask,
                          .timeout_ms = 100,
                          .connect_timeout_ms = 0};
    mc_live_t *l = (mc_live_t *)&p; /* must stay untouched on failure */
    mc_live_params_t bad = p;
    bad.rank = 2;
    assert_int_equal(mc_live_create(&bad, &l), MC_ERR_INVALID_ARG);
    bad = p;
    bad.peers = NULL;
    assert_int_equal(mc_live_create(&bad, &l), MC_ERR_INVALID_ARG);
    assert_ptr_equal(l, (mc_live_t *)&p);
    /* nobody watched: connect needs no key */
    assert_int_equal(mc_live_create(&p, &l), MC_OK);
    assert_int_equal(mc_live_connect(l), MC_OK);
    assert_int_equal(mc_live_connect(l), MC_ERR_INVALID_ARG);
    uint8_t out[2] = {9, 9};
    assert_int_equal(mc_live_suspects(l, out), 0);
    assert_int_equal(out[0], 0);
    assert_int_equal(out[1], 0);
    assert_int_equal(mc_live_silent_ms(l, 1), -1);
    assert_int_equal(mc_live_silent_ms(l, 5), -1);
    assert_true(mc_live_event_fd(l) >= 0);
    mc_live_stats_t st;
    mc_live_stats(l, &st);
    assert_int_equal(st.timeout_ms, 100);
    assert_true(st.interval_ms >= 1 && st.interval_ms <= 50);
    mc_live_destroy(l);
    /* watched peer that never publishes: connect times out, names it */
    mask[1] = 1;
    p.connect_timeout_ms = 50;
    assert_int_equal(mc_live_create(&p, &l), MC_OK);
    assert_int_equal(mc_live_connect(l), MC_ERR_TIMEOUT);
    assert_non_null(strstr(mc_last_error(), "ranks 1"));
    mc_live_destroy(l);
    mc_live_destroy(NULL);
    mc_store_destroy(s);
    mc_test_rmtree(dir);
    free(dir);
}

/* The event fd turns readable when a peer becomes suspected. */
static int t_event_rank(int rank, int size, void *arg)
{
    const char *dir = arg;
    mc_store_h s;
    if (mc_store_file_create(dir, &s) != MC_OK) return MC_TFAIL(rank, "store");
    uint8_t mask[2] = {rank != 0, rank != 1};
    mc_live_params_t p = {.rank = rank,
                          .size = size,
                          .store = s,
                          .uid = 7,
                          .peers = mask,
                          .timeout_ms = 200,
                          .connect_timeout_ms = 10000};
    mc_live_t *l;
    if (mc_live_create(&p, &l) != MC_OK || mc_live_connect(l) != MC_OK)
        return MC_TFAIL(rank, "setup: %s", mc_last_error());
    mc_store_destroy(s);
    int rc = 0;
    if (rank == 1) {
        t_sleep_ms(300);
        _exit(0); /* silent from now on (no destroy: the thread just ends) */
    }
    struct pollfd pf = {.fd = mc_live_event_fd(l), .events = POLLIN};
    int64_t t0 = t_now();
    /* wait for the first event with a suspect in it */
    for (;;) {
        int k = poll(&pf, 1, 2000);
        if (k <= 0) {
            rc = MC_TFAIL(rank, "no event within 2 s");
            break;
        }
        uint64_t v;
        if (read(pf.fd, &v, sizeof(v)) != sizeof(v)) {
            rc = MC_TFAIL(rank, "event read");
            break;
        }
        if (mc_live_suspects(l, NULL) == 1) break;
    }
    if (!rc && (t_now() - t0) / 1000 > 300 + 200 + 100)
        rc = MC_TFAIL(rank, "event late: %lld ms",
                      (long long)((t_now() - t0) / 1000));
    mc_live_destroy(l);
    return rc;
}

static void test_event_fd(void **state)
{
    (void)state;
    char *dir = mc_test_mkdtemp();
    assert_non_null(dir);
    assert_int_equal(mc_test_fork(2, 20, t_event_rank, dir), 0);
    mc_test_rmtree(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_args),      cmocka_unit_test(test_all_alive),
        cmocka_unit_test(test_stop_cont), cmocka_unit_test(test_kill),
        cmocka_unit_test(test_foreign),   cmocka_unit_test(test_forget),
        cmocka_unit_test(test_busy_cpu),  cmocka_unit_test(test_event_fd),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
