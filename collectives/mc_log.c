#define _GNU_SOURCE
#include "mc_log.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static _Thread_local char mc_tls_err[1024];

const char *mc_last_error(void)
{
    return mc_tls_err;
}

void mc_err_clear(void)
{
    mc_tls_err[0] = '\0';
}

void mc_err_restore(const char *text)
{
    snprintf(mc_tls_err, sizeof(mc_tls_err), "%s", text ? text : "");
}

static int mc_log_level_cached = -1;

int mc_log_level(void)
{
    int lvl = __atomic_load_n(&mc_log_level_cached, __ATOMIC_RELAXED);
    if (lvl >= 0) return lvl;
    const char *s = getenv("MOONCAKE_LOG_LEVEL");
    lvl = MC_LOG_WARN;
    if (s && *s) {
        if (!strcasecmp(s, "error"))
            lvl = MC_LOG_ERROR;
        else if (!strcasecmp(s, "warn") || !strcasecmp(s, "warning"))
            lvl = MC_LOG_WARN;
        else if (!strcasecmp(s, "info"))
            lvl = MC_LOG_INFO;
        else if (!strcasecmp(s, "debug"))
            lvl = MC_LOG_DEBUG;
        else if (s[0] >= '0' && s[0] <= '3' && !s[1])
            lvl = s[0] - '0';
    }
    __atomic_store_n(&mc_log_level_cached, lvl, __ATOMIC_RELAXED);
    return lvl;
}

void mc_log(int level, const char *fmt, ...)
{
    static const char *names[] = {"ERROR", "WARN", "INFO", "DEBUG"};
    char line[1400];
    int n = snprintf(line, sizeof(line), "mooncake[%d] %s: ", (int)getpid(),
                     names[level < 0   ? 0
                           : level > 3 ? 3
                                       : level]);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = strlen(line);
    line[len++] = '\n';
    /* one write() so lines from several ranks do not interleave */
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

mc_status_t mc_err(mc_status_t st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(mc_tls_err, sizeof(mc_tls_err), fmt, ap);
    va_end(ap);
    MC_LOG(MC_LOG_DEBUG, "%s: %s", mc_status_str(st), mc_tls_err);
    return st;
}

int64_t mc_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t mc_deadline_us(int64_t timeout_ms)
{
    if (timeout_ms < 0 || timeout_ms > MC_TIMEOUT_MAX_MS) return INT64_MAX;
    return mc_now_us() + timeout_ms * 1000;
}

int64_t mc_env_int(const char *name, int64_t def)
{
    const char *s = getenv(name);
    if (!s || !*s) return def;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 0);
    if (errno || *end) {
        MC_LOG(MC_LOG_WARN, "ignoring %s=%s: not an integer", name, s);
        return def;
    }
    return v;
}

const char *mc_env_str(const char *name, const char *def)
{
    const char *s = getenv(name);
    return (s && *s) ? s : def;
}

const char *mc_status_str(mc_status_t st)
{
    switch (st) {
    case MC_OK:
        return "success";
    case MC_INPROGRESS:
        return "in progress";
    case MC_ERR_INVALID_ARG:
        return "invalid argument";
    case MC_ERR_NO_MEMORY:
        return "out of memory";
    case MC_ERR_UNSUPPORTED:
        return "unsupported";
    case MC_ERR_TIMEOUT:
        return "timed out";
    case MC_ERR_IO:
        return "I/O error";
    case MC_ERR_INTERNAL:
        return "internal error";
    case MC_ERR_NOT_FOUND:
        return "not found";
    case MC_ERR_PROTOCOL:
        return "protocol error";
    case MC_ERR_STORE:
        return "store error";
    case MC_ERR_MISMATCH:
        return "collective mismatch";
    case MC_ERR_PEER_FAILED:
        return "peer failed";
    case MC_ERR_EVICTED:
        return "evicted";
    case MC_ERR_NO_QUORUM:
        return "no quorum";
    case MC_ERR_ROOT_FAILED:
        return "root failed";
    }
    return "unknown status";
}

int mc_fault_armed_ = -1;
static char fault_point[64];
static long long fault_left;
static int fault_stop; /* ":stop": SIGSTOP instead of SIGKILL */
static long fault_sleep_ms; /* ":sleep=<ms>": sleep there instead */
static int fault_fail;      /* ":fail": an MC_FAULT_FAIL point */
static pthread_mutex_t fault_lock = PTHREAD_MUTEX_INITIALIZER;

/* Reads MOONCAKE_FAULT_INJECT once. fault_lock held. */
static void fault_parse(void)
{
    if (mc_fault_armed_ < 0) {
        /* <point>:<n>[:stop|:sleep=<ms>|:fail] */
        const char *v = getenv("MOONCAKE_FAULT_INJECT");
        const char *colon = v ? strchr(v, ':') : NULL;
        mc_fault_armed_ = 0;
        if (colon && (size_t)(colon - v) < sizeof(fault_point)) {
            char *end = NULL;
            memcpy(fault_point, v, (size_t)(colon - v));
            fault_point[colon - v] = '\0';
            fault_left = strtoll(colon + 1, &end, 10);
            fault_stop = end && !strcmp(end, ":stop");
            fault_fail = end && !strcmp(end, ":fail");
            if (end && !strncmp(end, ":sleep=", 7))
                fault_sleep_ms = strtol(end + 7, NULL, 10);
            mc_fault_armed_ = fault_left > 0;
        }
    }
}

/* Counts a pass at `point` if the armed spec names it and is of the kind
 * (fail: an MC_FAULT_FAIL point); 1 at the n-th. */
static int fault_hit(const char *point, int fail)
{
    pthread_mutex_lock(&fault_lock);
    fault_parse();
    int hit = mc_fault_armed_ == 1 && fault_fail == fail &&
              !strcmp(point, fault_point) && --fault_left == 0;
    pthread_mutex_unlock(&fault_lock);
    return hit;
}

int mc_fault_named_(const char *point)
{
    pthread_mutex_lock(&fault_lock);
    fault_parse();
    int named = mc_fault_armed_ == 1 && fault_left > 0 &&
                !strcmp(point, fault_point);
    pthread_mutex_unlock(&fault_lock);
    return named;
}

int mc_fault_fail_(const char *point)
{
    int hit = fault_hit(point, 1);
    if (hit) mc_log(MC_LOG_INFO, "fault injection: failure at %s", point);
    return hit;
}

void mc_fault_point_(const char *point)
{
    int hit = fault_hit(point, 0);
    if (hit && fault_sleep_ms > 0) {
        mc_log(MC_LOG_INFO, "fault injection: sleep %ld ms at %s",
               fault_sleep_ms, point);
        struct timespec ts = {fault_sleep_ms / 1000,
                              (fault_sleep_ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
    } else if (hit && fault_stop) {
        mc_log(MC_LOG_INFO, "fault injection: SIGSTOP at %s", point);
        raise(SIGSTOP);
    } else if (hit) {
        mc_log(MC_LOG_INFO, "fault injection: SIGKILL at %s", point);
        raise(SIGKILL);
    }
}
