/* Real etcd clusters for the tests. See etcd_cluster.h. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "etcd.h"
#include "etcd_cluster.h"
#include "tests_common.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The lowest port of the kernel's ephemeral range (the source ports of
 * outgoing connections), or 32768. */
static int ephemeral_low(void)
{
    int lo = 32768, hi;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (f) {
        if (fscanf(f, "%d %d", &lo, &hi) != 2) lo = 32768;
        fclose(f);
    }
    return lo;
}

static int port_bindable(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return 0;
    int one = 1; /* a port in TIME_WAIT is free for a listener */
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int ok = bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

/* A port below the ephemeral range: a port the kernel handed out from
 * that range and that was closed again can be taken by any outgoing
 * connection (an etcd member dialing its peers, a rank) before the
 * server it was meant for binds it; one below the range cannot. */
int free_port(void)
{
    static unsigned seed;
    if (!seed) seed = (unsigned)getpid() ^ (unsigned)(now_s() * 1e6);
    int lo = 20000, hi = ephemeral_low();
    if (hi - lo < 1000) lo = 1024;
    for (int t = 0; t < 200 && hi - lo >= 1000; t++) {
        int p = lo + (int)(rand_r(&seed) % (unsigned)(hi - lo));
        if (port_bindable(p)) return p;
    }
    /* no room below the range: any free port */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &l) != 0) {
        if (fd >= 0) close(fd);
        return -1;
    }
    int p = ntohs(a.sin_port);
    close(fd);
    return p;
}

const char *etcd_bin(void)
{
    static const char *c[] = {"/usr/bin/etcd", "/usr/local/bin/etcd"};
    for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++)
        if (access(c[i], X_OK) == 0) return c[i];
    return NULL;
}

void start_member(cluster_t *k, int i)
{
    char name[16], data[512], curl[64], purl[64];
    snprintf(name, sizeof(name), "m%d", i);
    snprintf(data, sizeof(data), "%s/%s", k->dir, name);
    snprintf(curl, sizeof(curl), "http://%s:%d", k->ip, k->cport[i]);
    snprintf(purl, sizeof(purl), "http://%s:%d", k->ip, k->pport[i]);
    fflush(NULL);
    pid_t parent = getpid();
    pid_t p = fork();
    if (p == 0) {
        /* a test process that dies (a crash, a harness's SIGKILL) takes
         * its etcd members with it */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        char log[600];
        snprintf(log, sizeof(log), "%s.log", data);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execl(etcd_bin(), "etcd", "--name", name, "--data-dir", data,
              "--listen-client-urls", curl, "--advertise-client-urls", curl,
              "--listen-peer-urls", purl, "--initial-advertise-peer-urls",
              purl, "--initial-cluster", k->initial, "--initial-cluster-state",
              "new", "--log-level", "error", "--logger", "zap",
              "--heartbeat-interval", "10", "--election-timeout", "100",
              (char *)NULL);
        _exit(127);
    }
    k->pid[i] = p;
}

/* Print the tail of member i's log (its stderr). */
static void member_log(cluster_t *k, int i)
{
    char log[600], line[512];
    snprintf(log, sizeof(log), "%s/m%d.log", k->dir, i);
    FILE *f = fopen(log, "r");
    if (!f) return;
    char tail[8][512];
    int n = 0;
    while (fgets(line, sizeof(line), f))
        snprintf(tail[n++ % 8], sizeof(tail[0]), "%s", line);
    fclose(f);
    for (int j = n > 8 ? n - 8 : 0; j < n; j++)
        printf("    m%d: %s", i, tail[j % 8]);
}

/* 0 once a put through member i succeeded, -1 when it exited or did not
 * answer within s seconds (its log printed). */
static int member_ready(cluster_t *k, int i, double s)
{
    char ep[64];
    snprintf(ep, sizeof(ep), "%s:%d", k->ip, k->cport[i]);
    mc_etcd_t *e;
    assert_int_equal(mc_etcd_open(ep, 500, &e), MC_OK);
    double t0 = now_s();
    int rc = 0;
    while (mc_etcd_put(e, "ready", "1", 1, 0, NULL) != MC_OK) {
        int st;
        if (k->pid[i] > 0 && waitpid(k->pid[i], &st, WNOHANG) == k->pid[i]) {
            printf("  etcd member %d exited (status 0x%x)\n", i, st);
            k->pid[i] = 0;
            rc = -1;
            break;
        }
        if (now_s() - t0 > s) {
            printf("  etcd member %d did not answer in %.0f s\n", i, s);
            rc = -1;
            break;
        }
        usleep(10000);
    }
    mc_etcd_close(e);
    if (rc) member_log(k, i);
    return rc;
}

void member_wait(cluster_t *k, int i, double s)
{
    if (member_ready(k, i, s) != 0)
        fail_msg("etcd member %d did not start", i);
}

/* Clusters still running, stopped at exit: a failed assertion leaves
 * its test by longjmp, before the test's own cluster_stop. Only the
 * process that started them stops them (forked ranks inherit atexit). */
#define MC_LIVE_MAX 16
static cluster_t *g_live[MC_LIVE_MAX];
static pid_t g_live_owner;

static void clusters_at_exit(void)
{
    if (getpid() != g_live_owner) return;
    for (int i = 0; i < MC_LIVE_MAX; i++)
        if (g_live[i]) cluster_stop(g_live[i]);
}

static void live_add(cluster_t *k)
{
    if (!g_live_owner) {
        g_live_owner = getpid();
        atexit(clusters_at_exit);
    }
    for (int i = 0; i < MC_LIVE_MAX; i++)
        if (!g_live[i]) {
            g_live[i] = k;
            return;
        }
}

cluster_t *cluster_start_on(int n, const char *ip)
{
    if (!etcd_bin()) fail_msg("etcd is not installed: run scripts/setup.sh");
    assert_true(n >= 1 && n <= MC_ETCD_MAXM);
    cluster_t *k = calloc(1, sizeof(*k));
    assert_non_null(k);
    k->n = n;
    k->dir = mc_test_mkdtemp();
    live_add(k);
    snprintf(k->ip, sizeof(k->ip), "%s", ip ? ip : "127.0.0.1");
    /* A member that cannot bind its ports exits; one that never answers
     * is stuck. Either way the whole cluster starts again on new ports
     * and fresh data dirs (a member's data names its peers). */
    for (int attempt = 1;; attempt++) {
        size_t off = 0, eoff = 0;
        for (int i = 0; i < n; i++) {
            k->cport[i] = free_port();
            k->pport[i] = free_port();
            off += (size_t)snprintf(k->initial + off,
                                    sizeof(k->initial) - off,
                                    "%sm%d=http://%s:%d", i ? "," : "", i,
                                    k->ip, k->pport[i]);
            eoff += (size_t)snprintf(k->endpoints + eoff,
                                     sizeof(k->endpoints) - eoff,
                                     "%shttp://%s:%d", i ? "," : "", k->ip,
                                     k->cport[i]);
        }
        for (int i = 0; i < n; i++)
            start_member(k, i);
        double t0 = now_s();
        int ok = 1;
        for (int i = 0; i < n && ok; i++)
            ok = member_ready(k, i, 20) == 0;
        if (ok) {
            printf("  etcd: %d member(s) up on %s in %.0f ms\n", n, k->ip,
                   (now_s() - t0) * 1e3);
            return k;
        }
        if (attempt == 3) fail_msg("etcd did not start (3 attempts)");
        printf("  etcd: starting the cluster again (attempt %d)\n",
               attempt + 1);
        for (int i = 0; i < n; i++)
            member_kill(k, i);
        mc_test_rmtree(k->dir);
        free(k->dir);
        k->dir = mc_test_mkdtemp();
    }
}

cluster_t *cluster_start(int n)
{
    return cluster_start_on(n, NULL);
}

void member_kill(cluster_t *k, int i)
{
    if (k->pid[i] <= 0) return;
    kill(k->pid[i], SIGKILL);
    waitpid(k->pid[i], NULL, 0);
    k->pid[i] = 0;
}

void cluster_stop(cluster_t *k)
{
    for (int i = 0; i < MC_LIVE_MAX; i++)
        if (g_live[i] == k) g_live[i] = NULL;
    for (int i = 0; i < k->n; i++)
        member_kill(k, i);
    mc_test_rmtree(k->dir);
    free(k->dir);
    free(k);
}
