/*
 * mooncake-demo: start N local rank processes and run a few collectives
 * through the public C API, checking every result.
 *
 *   mooncake-demo --ranks 4 --transport shm|tcp|auto
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mooncake/mooncake.h"

#define CHECK(call)                                                            \
    do {                                                                       \
        mc_status_t st_ = (call);                                              \
        if (st_ != MC_OK) {                                                    \
            fprintf(stderr, "rank %d: %s failed: %s: %s\n", rank, #call,       \
                    mc_status_str(st_), mc_last_error());                      \
            return 1;                                                          \
        }                                                                      \
    } while (0)

static int run_rank(int rank, int size, const char *dir, mc_transport_kind_t tk)
{
    mc_store_h store;
    CHECK(mc_store_file_create(dir, &store));
    mc_comm_config_t cfg;
    mc_comm_config_init(&cfg);
    cfg.transport = tk;
    mc_comm_h comm;
    CHECK(mc_comm_create(rank, size, store, &cfg, &comm));
    int bad = 0;

    /* allreduce: sum of (rank + 1) over ranks, 1M floats */
    size_t n = 1 << 20;
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(rank + 1);
    CHECK(mc_comm_allreduce(comm, x, x, n, MC_FLOAT32, MC_SUM));
    float want = (float)size * (size + 1) / 2;
    for (size_t i = 0; i < n; i++)
        bad += x[i] != want;

    /* broadcast from the last rank */
    int64_t token = rank == size - 1 ? 424242 : 0;
    CHECK(mc_comm_broadcast(comm, &token, &token, 1, MC_INT64, size - 1));
    bad += token != 424242;

    /* allgather of ranks */
    int32_t *all = malloc(sizeof(int32_t) * (size_t)size);
    int32_t me = rank;
    CHECK(mc_comm_allgather(comm, &me, all, 1, MC_INT32));
    for (int i = 0; i < size; i++)
        bad += all[i] != i;

    /* p2p ring: pass the rank to the right */
    int32_t got = -1;
    mc_request_h rs = NULL, rr = NULL;
    if (size > 1)
        CHECK(mc_comm_irecv(comm, &got, 1, MC_INT32, (rank + size - 1) % size,
                            7, &rr));
    if (size > 1)
        CHECK(mc_comm_isend(comm, &me, 1, MC_INT32, (rank + 1) % size, 7, &rs));
    if (size > 1) {
        CHECK(mc_request_wait(rr, -1));
        CHECK(mc_request_wait(rs, -1));
        bad += got != (rank + size - 1) % size;
    }
    mc_request_free(rr);
    mc_request_free(rs);
    CHECK(mc_comm_barrier(comm));
    if (rank == 0)
        printf("mooncake-demo: %d ranks over %s: allreduce of %zu floats = %g, "
               "broadcast, allgather, p2p ring: %s\n",
               size, size > 1 ? mc_comm_peer_transport(comm, 1) : "self", n,
               (double)x[0], bad ? "WRONG" : "ok");
    fflush(stdout);
    free(x);
    free(all);
    mc_comm_destroy(comm);
    mc_store_destroy(store);
    return bad ? 1 : 0;
}

int main(int argc, char **argv)
{
    int ranks = 4;
    mc_transport_kind_t tk = MC_TRANSPORT_AUTO;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--ranks") && i + 1 < argc) {
            ranks = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--transport") && i + 1 < argc) {
            const char *t = argv[++i];
            tk = !strcmp(t, "tcp")   ? MC_TRANSPORT_TCP
                 : !strcmp(t, "shm") ? MC_TRANSPORT_SHM
                                     : MC_TRANSPORT_AUTO;
        } else {
            fprintf(stderr,
                    "usage: %s [--ranks N] [--transport shm|tcp|auto]\n",
                    argv[0]);
            return 2;
        }
    }
    if (ranks < 1 || ranks > 256) {
        fprintf(stderr, "--ranks must be in [1, 256]\n");
        return 2;
    }
    char dir[] = "/tmp/mooncake-demo.XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    fflush(NULL);
    for (int r = 0; r < ranks; r++) {
        if (fork() == 0) _exit(run_rank(r, ranks, dir, tk));
    }
    int failed = 0, st;
    for (int r = 0; r < ranks; r++) {
        wait(&st);
        failed += !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd)) {
    }
    if (failed) fprintf(stderr, "mooncake-demo: %d rank(s) failed\n", failed);
    return failed ? 1 : 0;
}
