/* Shared helpers for the test binaries: fork real rank processes. */
#ifndef MC_TESTS_COMMON_H
#define MC_TESTS_COMMON_H

#include <stddef.h>

#include "mooncake/mooncake.h"

/* Body run in each rank process. Return 0 on success; anything else (or a
 * crash, or a failed cmocka-free assertion) fails the spawn. */
typedef int (*mc_test_rank_fn)(mc_comm_h comm, int rank, int size, void *arg);

/*
 * Fork `size` processes; each creates a communicator over a fresh
 * file-system store in a temporary directory with the given transport,
 * runs fn, destroys the communicator and exits with fn's result. The parent
 * waits at most timeout_s seconds (then SIGKILLs all of them). Returns the
 * number of ranks that failed (0 = all passed); failures are printed.
 */
int mc_test_spawn(int size, mc_transport_kind_t transport, int timeout_s,
                  mc_test_rank_fn fn, void *arg);

/* Same, but the children do not create a communicator: fn gets comm=NULL
 * and a store path in `arg` is the caller's business. */
int mc_test_fork(int size, int timeout_s,
                 int (*fn)(int rank, int size, void *arg), void *arg);

/* mkdtemp under $TMPDIR (or /tmp); caller frees and removes. */
char *mc_test_mkdtemp(void);

/* A view epoch as the tests count them, from 1: MOONCAKE_EPOCH_START moves
 * the first view's epoch (near 65536, to cross the 16-bit wrap of the
 * epoch in the shared slots' words and keys). */
uint64_t mc_test_epoch_rel(uint64_t epoch);
/* rm -rf a directory tree (best effort). */
void mc_test_rmtree(const char *dir);

/* Report a failure from inside a rank: prints rank, file, line and text,
 * returns 1 (so `return MC_TFAIL(...)` works in rank bodies). */
#define MC_TFAIL(rank, ...) mc_test_fail_(rank, __FILE__, __LINE__, __VA_ARGS__)
int mc_test_fail_(int rank, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
