/*
 * File-system store: one file per key under a directory.
 *
 * Protocol
 *  - A key maps to the file "k" + key with every '/' replaced by '%' ('%' is
 *    not a legal key character, so the mapping is injective). The leading
 *    'k' means no key can name ".", ".." or a hidden file, and no key creates
 *    a subdirectory or leaves `dir`.
 *  - Values are immutable files: a writer creates
 *    ".tmp.<nonce>.<pid>.<tid>.<n>" (the nonce is random per process: pids
 *    repeat across hosts and containers on a shared file system), writes
 *    it fully, and rename()s it over the key's file. Readers open the
 *    key's file and see either the old or the new inode, never a partial one,
 *    so reads need no lock.
 *  - Every mutation (set, compare_set, add, del) takes flock(LOCK_EX) on
 *    ".lock" around the step that changes the key's name binding, which
 *    makes compare_set and add read-modify-write atomic against each other
 *    and against plain set/del. The lock file is opened per operation so
 *    that threads of one process and forked children (which would share an
 *    inherited open file description) exclude each other too. A holder
 *    that keeps the lock 10 s (stopped) fails the call (MC_ERR_TIMEOUT);
 *    each holder writes a token into ".lock", so a queue that moves never
 *    times out.
 *  - get polls for the file with an exponential backoff (50 us .. 2 ms).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "mc_log.h"
#include "mooncake/mooncake.h"

#define FS_KEY_MAX 200
#define FS_VALUE_MAX ((size_t)64 << 20)
#define FS_POLL_MIN_US 50
#define FS_POLL_MAX_US 2000

struct store_file {
    char *dir;
    int dirfd; /* O_DIRECTORY handle: every access is *at(dirfd) */
};

/* Process-wide counter for temporary names (pid and tid make them unique
 * across processes and threads; the counter within one thread). */
static uint64_t fs_tmp_counter;
static uint64_t fs_tmp_nonce; /* random, per process: pids and tids repeat
                                 across hosts and containers */

static uint64_t fs_nonce(void)
{
    uint64_t v = __atomic_load_n(&fs_tmp_nonce, __ATOMIC_ACQUIRE);
    if (v) return v;
    if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != (ssize_t)sizeof(v)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        v = (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull ^
            (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 32);
    }
    v |= 1; /* never 0 */
    uint64_t z = 0;
    if (!__atomic_compare_exchange_n(&fs_tmp_nonce, &z, v, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE))
        v = z;
    return v;
}

/* A lock holder keeps .lock for one rename; one that holds it this long
 * was stopped (or its file system hangs): the call fails instead
 * (MOONCAKE_STORE_LOCK_WAIT_MS, default 10 s). */
#define FS_LOCK_WAIT_US (mc_env_int("MOONCAKE_STORE_LOCK_WAIT_MS", 10000) * 1000)

/* Map key -> file name. Keys reach us validated by store.c; re-check the
 * character set here because this mapping is what keeps files inside dir. */
static mc_status_t fs_name(const char *key, char out[FS_KEY_MAX + 2])
{
    size_t n = strnlen(key, FS_KEY_MAX + 1);
    if (n == 0 || n > FS_KEY_MAX)
        return mc_err(MC_ERR_INVALID_ARG, "file store: bad key length");
    out[0] = 'k';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)key[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                 (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
        if (c == '/')
            c = '%';
        else if (!ok)
            return mc_err(MC_ERR_INVALID_ARG,
                          "file store: key '%s' has an invalid character", key);
        out[i + 1] = (char)c;
    }
    out[n + 1] = '\0';
    return MC_OK;
}

static void fs_sleep_us(int64_t us)
{
    struct timespec ts = {us / 1000000, (long)(us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

/* Open and lock ".lock"; returns the fd (>= 0) in *fd_p. */
static mc_status_t fs_lock(struct store_file *fs, const char *key, int *fd_p)
{
    int fd = openat(fs->dirfd, ".lock", O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return mc_err(MC_ERR_STORE, "file store %s: open .lock for '%s': %s",
                      fs->dir, key, strerror(errno));
    /* Each holder writes a fresh token into .lock: the wait is bounded
     * per holder (a token that changes is a queue that moves), not in
     * total, so many ranks taking turns never time out. */
    const int64_t limit = FS_LOCK_WAIT_US;
    int64_t waited = 0;
    uint64_t seen[2] = {0, 0}, tok[2];
    while (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno == EINTR) continue;
        int e = errno;
        if (e == EWOULDBLOCK && waited < limit) {
            if (pread(fd, tok, sizeof(tok), 0) == (ssize_t)sizeof(tok) &&
                (tok[0] != seen[0] || tok[1] != seen[1])) {
                memcpy(seen, tok, sizeof(seen));
                waited = 0;
            }
            fs_sleep_us(1000);
            waited += 1000;
            continue;
        }
        close(fd);
        if (e == EWOULDBLOCK)
            return mc_err(MC_ERR_TIMEOUT,
                          "file store %s: .lock for '%s' held by another "
                          "process for %lld ms (stopped?)",
                          fs->dir, key, (long long)limit / 1000);
        return mc_err(MC_ERR_STORE, "file store %s: flock for '%s': %s",
                      fs->dir, key, strerror(e));
    }
    tok[0] = fs_nonce();
    tok[1] = __atomic_add_fetch(&fs_tmp_counter, 1, __ATOMIC_RELAXED);
    (void)!pwrite(fd, tok, sizeof(tok), 0); /* best effort: a hint */
    *fd_p = fd;
    return MC_OK;
}

/* Closing the descriptor releases the flock. */
static void fs_unlock(int fd)
{
    close(fd);
}

static mc_status_t fs_write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR) continue;
            return MC_ERR_IO;
        }
        p += w;
        len -= (size_t)w;
    }
    return MC_OK;
}

/* Read exactly len bytes; a short file means the store was tampered with. */
static mc_status_t fs_read_all(int fd, void *buf, size_t len)
{
    char *p = buf;
    while (len > 0) {
        ssize_t r = read(fd, p, len);
        if (r < 0) {
            if (errno == EINTR) continue;
            return MC_ERR_IO;
        }
        if (r == 0) {
            errno = EIO;
            return MC_ERR_IO;
        }
        p += r;
        len -= (size_t)r;
    }
    return MC_OK;
}

/* Write val to a fresh temporary file; its name goes to tmp. */
static mc_status_t fs_write_tmp(struct store_file *fs, const char *key,
                                const void *val, size_t len, char tmp[96])
{
    uint64_t n = __atomic_fetch_add(&fs_tmp_counter, 1, __ATOMIC_RELAXED);
    snprintf(tmp, 96, ".tmp.%016" PRIx64 ".%d.%ld.%" PRIu64, fs_nonce(),
             (int)getpid(), (long)syscall(SYS_gettid), n);
    int fd =
        openat(fs->dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        return mc_err(MC_ERR_STORE, "file store %s: create %s for '%s': %s",
                      fs->dir, tmp, key, strerror(errno));
    if (fs_write_all(fd, val, len) < 0) {
        int e = errno;
        close(fd);
        unlinkat(fs->dirfd, tmp, 0);
        return mc_err(MC_ERR_STORE,
                      "file store %s: write %zu bytes for "
                      "'%s': %s",
                      fs->dir, len, key, strerror(e));
    }
    if (close(fd) < 0) {
        int e = errno;
        unlinkat(fs->dirfd, tmp, 0);
        return mc_err(MC_ERR_STORE, "file store %s: close %s: %s", fs->dir, tmp,
                      strerror(e));
    }
    return MC_OK;
}

static mc_status_t fs_rename(struct store_file *fs, const char *tmp,
                             const char *name, const char *key)
{
    if (renameat(fs->dirfd, tmp, fs->dirfd, name) < 0) {
        int e = errno;
        unlinkat(fs->dirfd, tmp, 0);
        return mc_err(MC_ERR_STORE, "file store %s: rename for '%s': %s",
                      fs->dir, key, strerror(e));
    }
    return MC_OK;
}

/*
 * Open the key's file: MC_OK with *fd_p, MC_ERR_NOT_FOUND (no message) if it
 * does not exist, MC_ERR_STORE otherwise. *size_p gets its size, bounded.
 */
static mc_status_t fs_open(struct store_file *fs, const char *name,
                           const char *key, int *fd_p, size_t *size_p)
{
    int fd = openat(fs->dirfd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return MC_ERR_NOT_FOUND;
        return mc_err(MC_ERR_STORE, "file store %s: open '%s': %s", fs->dir,
                      key, strerror(errno));
    }
    struct stat sb;
    if (fstat(fd, &sb) < 0) {
        int e = errno;
        close(fd);
        return mc_err(MC_ERR_STORE, "file store %s: stat '%s': %s", fs->dir,
                      key, strerror(e));
    }
    if (sb.st_size < 0 || (uint64_t)sb.st_size > FS_VALUE_MAX) {
        close(fd);
        return mc_err(MC_ERR_PROTOCOL,
                      "file store %s: value of '%s' is %lld bytes (limit %zu)",
                      fs->dir, key, (long long)sb.st_size, FS_VALUE_MAX);
    }
    *fd_p = fd;
    *size_p = (size_t)sb.st_size;
    return MC_OK;
}

/* Read the current value into a malloc'd buffer (NULL, 0 if absent:
 * *found_p = 0). The buffer has one spare byte for a terminator. */
static mc_status_t fs_load(struct store_file *fs, const char *name,
                           const char *key, char **val_p, size_t *len_p,
                           int *found_p)
{
    int fd;
    size_t size;
    mc_status_t st = fs_open(fs, name, key, &fd, &size);
    if (st == MC_ERR_NOT_FOUND) {
        *val_p = NULL;
        *len_p = 0;
        *found_p = 0;
        return MC_OK;
    }
    if (st < 0) return st;
    char *buf = malloc(size + 1);
    if (!buf) {
        close(fd);
        return mc_err(MC_ERR_NO_MEMORY, "file store: %zu bytes for '%s'",
                      size + 1, key);
    }
    if (fs_read_all(fd, buf, size) < 0) {
        int e = errno;
        free(buf);
        close(fd);
        return mc_err(MC_ERR_STORE, "file store %s: read '%s': %s", fs->dir,
                      key, strerror(e));
    }
    close(fd);
    buf[size] = '\0';
    *val_p = buf;
    *len_p = size;
    *found_p = 1;
    return MC_OK;
}

static mc_status_t fs_set(void *ctx, const char *key, const void *val,
                          size_t len)
{
    struct store_file *fs = ctx;
    char name[FS_KEY_MAX + 2], tmp[96];
    MC_CHECK(fs_name(key, name));
    /* Write outside the lock; only the rename is serialised. */
    MC_CHECK(fs_write_tmp(fs, key, val, len, tmp));
    int lfd;
    mc_status_t st = fs_lock(fs, key, &lfd);
    if (st < 0) {
        unlinkat(fs->dirfd, tmp, 0);
        return st;
    }
    st = fs_rename(fs, tmp, name, key);
    fs_unlock(lfd);
    return st;
}

static mc_status_t fs_get(void *ctx, const char *key, int64_t timeout_ms,
                          void *buf, size_t cap, size_t *len_p)
{
    struct store_file *fs = ctx;
    char name[FS_KEY_MAX + 2];
    MC_CHECK(fs_name(key, name));
    /* Timeouts too large to add to the clock are as good as forever. */
    int64_t deadline =
        timeout_ms > INT64_MAX / 4000 ? INT64_MAX : mc_deadline_us(timeout_ms);
    int64_t backoff = FS_POLL_MIN_US;
    int fd;
    size_t size;
    for (;;) {
        mc_status_t st = fs_open(fs, name, key, &fd, &size);
        if (st == MC_OK) break;
        if (st != MC_ERR_NOT_FOUND) return st;
        int64_t now = mc_now_us();
        if (now >= deadline)
            return mc_err(MC_ERR_TIMEOUT,
                          "file store %s: key '%s' did not appear within "
                          "%" PRId64 " ms",
                          fs->dir, key, timeout_ms);
        int64_t nap = backoff < deadline - now ? backoff : deadline - now;
        fs_sleep_us(nap);
        backoff = backoff * 2 > FS_POLL_MAX_US ? FS_POLL_MAX_US : backoff * 2;
    }
    /* The inode we opened is immutable (writers rename new files over the
     * name), so its size is final and the copy is consistent. */
    size_t n = size < cap ? size : cap;
    if (fs_read_all(fd, buf, n) < 0) {
        int e = errno;
        close(fd);
        return mc_err(MC_ERR_STORE, "file store %s: read '%s': %s", fs->dir,
                      key, strerror(e));
    }
    close(fd);
    *len_p = size;
    return MC_OK;
}

static mc_status_t fs_check(void *ctx, const char *key, int *exists_p)
{
    struct store_file *fs = ctx;
    char name[FS_KEY_MAX + 2];
    MC_CHECK(fs_name(key, name));
    struct stat sb;
    if (fstatat(fs->dirfd, name, &sb, 0) == 0) {
        *exists_p = 1;
        return MC_OK;
    }
    if (errno == ENOENT) {
        *exists_p = 0;
        return MC_OK;
    }
    return mc_err(MC_ERR_STORE, "file store %s: stat '%s': %s", fs->dir, key,
                  strerror(errno));
}

static mc_status_t fs_compare_set(void *ctx, const char *key,
                                  const void *expected, size_t expected_len,
                                  const void *desired, size_t desired_len,
                                  void *cur, size_t cap, size_t *cur_len_p)
{
    struct store_file *fs = ctx;
    char name[FS_KEY_MAX + 2], tmp[96];
    MC_CHECK(fs_name(key, name));
    int lfd;
    mc_status_t st;
    MC_CHECK(fs_lock(fs, key, &lfd));
    char *old = NULL;
    size_t old_len = 0;
    int found = 0;
    MC_CHECK_GOTO(fs_load(fs, name, key, &old, &old_len, &found), st, unlock);
    int match = found ? (old_len == expected_len &&
                         (old_len == 0 || !memcmp(old, expected, old_len)))
                      : expected_len == 0;
    const void *result = old;
    size_t result_len = old_len;
    if (match) {
        MC_CHECK_GOTO(fs_write_tmp(fs, key, desired, desired_len, tmp), st,
                      free_old);
        MC_CHECK_GOTO(fs_rename(fs, tmp, name, key), st, free_old);
        result = desired;
        result_len = desired_len;
    }
    if (cap && result_len)
        memcpy(cur, result, result_len < cap ? result_len : cap);
    *cur_len_p = result_len;
    st = MC_OK;

free_old:
    free(old);
unlock:
    fs_unlock(lfd);
    return st;
}

/* Strict decimal int64: optional sign, at least one digit, nothing else. */
static int fs_parse_i64(const char *s, size_t len, int64_t *v_p)
{
    if (len == 0 || len > 20 + 1) return -1;
    size_t i = 0;
    int neg = 0;
    if (s[0] == '-' || s[0] == '+') {
        neg = s[0] == '-';
        i = 1;
    }
    if (i == len) return -1;
    uint64_t v = 0;
    uint64_t lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (lim - d) / 10) return -1;
        v = v * 10 + d;
    }
    *v_p = neg ? (int64_t)(0 - v) : (int64_t)v;
    return 0;
}

static mc_status_t fs_add(void *ctx, const char *key, int64_t delta,
                          int64_t *value_p)
{
    struct store_file *fs = ctx;
    char name[FS_KEY_MAX + 2], tmp[96];
    MC_CHECK(fs_name(key, name));
    int lfd;
    mc_status_t st;
    MC_CHECK(fs_lock(fs, key, &lfd));
    char *old = NULL;
    size_t old_len = 0;
    int found = 0;
    int64_t v = 0;
    MC_CHECK_GOTO(fs_load(fs, name, key, &old, &old_len, &found), st, unlock);
    if (found && fs_parse_i64(old, old_len, &v) < 0) {
        st = mc_err(MC_ERR_INVALID_ARG,
                    "file store %s: add on '%s': value '%.32s' is not a "
                    "64-bit decimal integer",
                    fs->dir, key, old);
        goto free_old;
    }
    if (__builtin_add_overflow(v, delta, &v)) {
        st = mc_err(MC_ERR_INVALID_ARG,
                    "file store %s: add on '%s': %" PRId64 " overflows",
                    fs->dir, key, delta);
        goto free_old;
    }
    char text[32];
    int n = snprintf(text, sizeof(text), "%" PRId64, v);
    MC_CHECK_GOTO(fs_write_tmp(fs, key, text, (size_t)n, tmp), st, free_old);
    MC_CHECK_GOTO(fs_rename(fs, tmp, name, key), st, free_old);
    *value_p = v;
    st = MC_OK;

free_old:
    free(old);
unlock:
    fs_unlock(lfd);
    return st;
}

static mc_status_t fs_del(void *ctx, const char *key)
{
    struct store_file *fs = ctx;
    char name[FS_KEY_MAX + 2];
    MC_CHECK(fs_name(key, name));
    int lfd;
    MC_CHECK(fs_lock(fs, key, &lfd));
    mc_status_t st = MC_OK;
    if (unlinkat(fs->dirfd, name, 0) < 0 && errno != ENOENT)
        st = mc_err(MC_ERR_STORE, "file store %s: unlink '%s': %s", fs->dir,
                    key, strerror(errno));
    fs_unlock(lfd);
    return st;
}

static void fs_destroy(void *ctx)
{
    struct store_file *fs = ctx;
    if (!fs) return;
    close(fs->dirfd);
    free(fs->dir);
    free(fs);
}

static const mc_store_ops_t store_file_ops = {
    .size = sizeof(mc_store_ops_t),
    .set = fs_set,
    .get = fs_get,
    .check = fs_check,
    .compare_set = fs_compare_set,
    .add = fs_add,
    .del = fs_del,
    .destroy = fs_destroy,
};

/* mkdir -p; EEXIST on any component is fine (another rank won the race). */
static mc_status_t fs_mkdirs(const char *dir)
{
    size_t n = strlen(dir);
    char *p = strdup(dir);
    if (!p) return mc_err(MC_ERR_NO_MEMORY, "file store: out of memory");
    mc_status_t st = MC_OK;
    for (size_t i = 1; i <= n; i++) {
        if (p[i] != '/' && p[i] != '\0') continue;
        char c = p[i];
        p[i] = '\0';
        if (mkdir(p, 0755) < 0 && errno != EEXIST) {
            st = mc_err(MC_ERR_STORE, "file store: mkdir %s: %s", p,
                        strerror(errno));
            break;
        }
        p[i] = c;
    }
    free(p);
    return st;
}

mc_status_t mc_store_file_create(const char *dir, mc_store_h *store_p)
{
    static const char fn[] = "mc_store_file_create";
    if (!dir || !*dir)
        return mc_err(MC_ERR_INVALID_ARG, "%s: dir is %s", fn,
                      dir ? "empty" : "NULL");
    if (!store_p) return mc_err(MC_ERR_INVALID_ARG, "%s: store_p is NULL", fn);
    if (strnlen(dir, PATH_MAX) >= PATH_MAX)
        return mc_err(MC_ERR_INVALID_ARG, "%s: dir is longer than %d bytes", fn,
                      PATH_MAX - 1);
    mc_status_t st;
    MC_CHECK(fs_mkdirs(dir));
    struct store_file *fs = calloc(1, sizeof(*fs));
    if (!fs) return mc_err(MC_ERR_NO_MEMORY, "%s: out of memory", fn);
    fs->dir = strdup(dir);
    if (!fs->dir) {
        st = mc_err(MC_ERR_NO_MEMORY, "%s: out of memory", fn);
        goto free_fs;
    }
    fs->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fs->dirfd < 0) {
        st = mc_err(MC_ERR_STORE, "%s: open %s: %s", fn, dir, strerror(errno));
        goto free_dir;
    }
    MC_CHECK_GOTO(mc_store_create(&store_file_ops, fs, store_p), st,
                  close_dirfd);
    return MC_OK;

close_dirfd:
    close(fs->dirfd);
free_dir:
    free(fs->dir);
free_fs:
    free(fs);
    return st;
}
