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

int free_port(void)
{
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
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) {
            dup2(devnull, 1);
            dup2(devnull, 2);
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

void member_wait(cluster_t *k, int i, double s)
{
    char ep[64];
    snprintf(ep, sizeof(ep), "%s:%d", k->ip, k->cport[i]);
    mc_etcd_t *e;
    assert_int_equal(mc_etcd_open(ep, 500, &e), MC_OK);
    double t0 = now_s();
    while (mc_etcd_put(e, "ready", "1", 1, 0, NULL) != MC_OK) {
        if (now_s() - t0 > s) fail_msg("etcd member %d did not start", i);
        usleep(10000);
    }
    mc_etcd_close(e);
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
    size_t off = 0, eoff = 0;
    for (int i = 0; i < n; i++) {
        k->cport[i] = free_port();
        k->pport[i] = free_port();
        off += (size_t)snprintf(k->initial + off, sizeof(k->initial) - off,
                                "%sm%d=http://%s:%d", i ? "," : "", i, k->ip,
                                k->pport[i]);
        eoff += (size_t)snprintf(k->endpoints + eoff,
                                 sizeof(k->endpoints) - eoff,
                                 "%shttp://%s:%d", i ? "," : "", k->ip,
                                 k->cport[i]);
    }
    for (int i = 0; i < n; i++)
        start_member(k, i);
    double t0 = now_s();
    for (int i = 0; i < n; i++)
        member_wait(k, i, 20);
    printf("  etcd: %d member(s) up on %s in %.0f ms\n", n, k->ip,
           (now_s() - t0) * 1e3);
    return k;
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
