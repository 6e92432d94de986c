#define _GNU_SOURCE
#include "tests_common.h"

#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/lsan_interface.h>
#endif

#include <errno.h>
#include <ftw.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int mc_test_fail_(int rank, const char *file, int line, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    fprintf(stderr, "[rank %d] %s:%d: %s\n", rank, file, line, buf);
    fflush(stderr);
    return 1;
}

char *mc_test_mkdtemp(void)
{
    const char *base = getenv("TMPDIR");
    char *p = NULL;
    if (asprintf(&p, "%s/mctest.XXXXXX", base && *base ? base : "/tmp") < 0)
        return NULL;
    if (!mkdtemp(p)) {
        free(p);
        return NULL;
    }
    return p;
}

static int rm_cb(const char *path, const struct stat *sb, int flag,
                 struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

void mc_test_rmtree(const char *dir)
{
    if (dir) nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* Wait for all children with a deadline; SIGKILL the rest on timeout. */
static int reap(pid_t *pids, int n, int timeout_s)
{
    int failed = 0, left = n;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (left > 0) {
        int st;
        pid_t p = waitpid(-1, &st, WNOHANG);
        if (p > 0) {
            for (int i = 0; i < n; i++) {
                if (pids[i] != p) continue;
                pids[i] = 0;
                left--;
                if (WIFEXITED(st) && WEXITSTATUS(st) == 0) break;
                failed++;
                if (WIFSIGNALED(st))
                    fprintf(stderr, "rank %d killed by signal %d\n", i,
                            WTERMSIG(st));
                else
                    fprintf(stderr, "rank %d exited with %d\n", i,
                            WEXITSTATUS(st));
            }
            continue;
        }
        if (p < 0 && errno != EINTR && errno != ECHILD) break;
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (t.tv_sec - t0.tv_sec >= timeout_s) {
            for (int i = 0; i < n; i++) {
                if (!pids[i]) continue;
                fprintf(stderr, "rank %d timed out after %d s: killing\n", i,
                        timeout_s);
                kill(pids[i], SIGKILL);
                waitpid(pids[i], NULL, 0);
                pids[i] = 0;
                failed++;
                left--;
            }
            break;
        }
        usleep(1000);
    }
    return failed;
}

int mc_test_fork(int size, int timeout_s,
                 int (*fn)(int rank, int size, void *arg), void *arg)
{
    pid_t *pids = calloc((size_t)size, sizeof(pid_t));
    if (!pids) return size;
    fflush(NULL);
    for (int r = 0; r < size; r++) {
        pid_t p = fork();
        if (p == 0) {
            int rc = fn(r, size, arg);
            fflush(NULL);
#ifdef __SANITIZE_ADDRESS__
            /* _exit skips LeakSanitizer's check at exit: run it here (it
             * ends the process, with an error, on a leak) */
            __lsan_do_leak_check();
#endif
            _exit(rc ? 1 : 0);
        }
        if (p < 0) {
            perror("fork");
            reap(pids, r, 1);
            free(pids);
            return size;
        }
        pids[r] = p;
    }
    int failed = reap(pids, size, timeout_s);
    free(pids);
    return failed;
}

struct spawn_ctx {
    const char *dir;
    mc_transport_kind_t transport;
    mc_test_rank_fn fn;
    void *arg;
};

static int spawn_body(int rank, int size, void *p)
{
    struct spawn_ctx *c = p;
    mc_store_h store;
    mc_status_t st = mc_store_file_create(c->dir, &store);
    if (st != MC_OK) return MC_TFAIL(rank, "store: %s", mc_last_error());
    mc_comm_config_t cfg;
    mc_comm_config_init(&cfg);
    cfg.transport = c->transport;
    /* 60 s, unless a test sets MOONCAKE_TIMEOUT_MS for its ranks */
    if (!getenv("MOONCAKE_TIMEOUT_MS")) cfg.timeout_ms = 60000;
    cfg.init_timeout_ms = 60000;
    mc_comm_h comm;
    st = mc_comm_create(rank, size, store, &cfg, &comm);
    if (st != MC_OK) {
        mc_store_destroy(store);
        return MC_TFAIL(rank, "mc_comm_create: %s: %s", mc_status_str(st),
                        mc_last_error());
    }
    int rc = c->fn(comm, rank, size, c->arg);
    mc_comm_destroy(comm);
    mc_store_destroy(store);
    return rc;
}

int mc_test_spawn(int size, mc_transport_kind_t transport, int timeout_s,
                  mc_test_rank_fn fn, void *arg)
{
    char *dir = mc_test_mkdtemp();
    if (!dir) return size;
    struct spawn_ctx c = {dir, transport, fn, arg};
    int failed = mc_test_fork(size, timeout_s, spawn_body, &c);
    mc_test_rmtree(dir);
    free(dir);
    return failed;
}

uint64_t mc_test_epoch_rel(uint64_t epoch)
{
    const char *s = getenv("MOONCAKE_EPOCH_START");
    uint64_t base = s && *s ? strtoull(s, NULL, 0) : 1;
    if (base < 1) base = 1;
    return epoch - (base - 1);
}
