/* Internal: logging, error text, time and environment helpers. */
#ifndef MC_LOG_H
#define MC_LOG_H

#include <stdint.h>

#include "mooncake/mooncake.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { MC_LOG_ERROR = 0, MC_LOG_WARN = 1, MC_LOG_INFO = 2, MC_LOG_DEBUG = 3 };

/* Current level, from MOONCAKE_LOG_LEVEL (error|warn|info|debug or 0-3;
 * default warn). */
int mc_log_level(void);

/* Print one line to stderr: "mooncake[pid] LEVEL: text". */
void mc_log(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define MC_LOG(lvl, ...)                                                       \
    do {                                                                       \
        if ((lvl) <= mc_log_level()) mc_log((lvl), __VA_ARGS__);               \
    } while (0)

/* Record `fmt` as this thread's last error (mc_last_error()) and return st.
 * Logs it at debug level; callers that decide a failure the user must see
 * log it themselves once. */
mc_status_t mc_err(mc_status_t st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Forget this thread's last error (before a call whose failure may come
 * without an mc_err, e.g. a user's store callback). */
void mc_err_clear(void);
/* Put back a text saved from mc_last_error() (a call that succeeded in
 * between leaves the caller's error as it was). */
void mc_err_restore(const char *text);

/* Call; on a negative status store it in `st` and jump to `label`
 * (NCCLCHECKGOTO). */
#define MC_CHECK_GOTO(call, st, label)                                         \
    do {                                                                       \
        (st) = (call);                                                         \
        if ((st) < 0) goto label;                                              \
    } while (0)

#define MC_CHECK(call)                                                         \
    do {                                                                       \
        mc_status_t mc_check_st_ = (call);                                     \
        if (mc_check_st_ < 0) return mc_check_st_;                             \
    } while (0)

/* Monotonic clock in microseconds. */
int64_t mc_now_us(void);

/* Timeouts above this many ms (about 292 years) mean "no limit": their
 * microseconds past now would overflow int64. */
#define MC_TIMEOUT_MAX_MS (INT64_MAX / 1000000)
/* Deadline helpers: timeout_ms < 0 (or above MC_TIMEOUT_MAX_MS) means none
 * (INT64_MAX). */
int64_t mc_deadline_us(int64_t timeout_ms);

/* Integer from the environment; `def` if unset or unparsable (logged). */
int64_t mc_env_int(const char *name, int64_t def);
/* String from the environment, or `def`. */
const char *mc_env_str(const char *name, const char *def);

/* Fault injection for tests: MOONCAKE_FAULT_INJECT=<point>:<n> makes the
 * process SIGKILL itself the n-th time (from 1) it reaches the named point,
 * so a test can kill a rank at an exact place inside an algorithm;
 * <point>:<n>:stop makes it SIGSTOP itself instead (a silent failure at an
 * exact place), and <point>:<n>:sleep=<ms> makes it sleep there (a rank
 * held at an exact place while its peers go on). Costs one load when
 * unset. Points: see the MC_FAULT_POINT calls.
 * <point>:<n>:fail arms an MC_FAULT_FAIL point instead: the n-th time it
 * is reached it yields 1, and the caller acts as if what it guards failed
 * (a resource that could not be had). */
void mc_fault_point_(const char *point);
int mc_fault_fail_(const char *point);
int mc_fault_named_(const char *point);
extern int mc_fault_armed_; /* -1 unknown, 0 off, 1 on */
#define MC_FAULT_POINT(point)                                                  \
    do {                                                                       \
        if (__atomic_load_n(&mc_fault_armed_, __ATOMIC_RELAXED))               \
            mc_fault_point_(point);                                            \
    } while (0)
/* The armed spec names `point` and has not fired yet (counts no pass). */
#define MC_FAULT_NAMED(point)                                                  \
    (__atomic_load_n(&mc_fault_armed_, __ATOMIC_RELAXED) &&                    \
     mc_fault_named_(point))
#define MC_FAULT_FAIL(point)                                                   \
    (__atomic_load_n(&mc_fault_armed_, __ATOMIC_RELAXED) &&                    \
     mc_fault_fail_(point))

#ifdef __cplusplus
}
#endif
#endif /* MC_LOG_H */
