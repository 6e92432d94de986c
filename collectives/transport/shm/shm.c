/*
 * Shared-memory transport for ranks on the same host.
 *
 * Segments
 *  Every rank creates one POSIX shm segment "/mc-<uid:016x>-<rank>", or
 *  "/mc-<uid:016x>-<rank>.<incarnation>" for a process that took its slot
 *  later (see "Rejoin" in transport.h):
 *    [0, 4 KiB)        control block (mc_shm_ctrl_t): identity, own bell
 *    [4 KiB, ...)      directory: one entry per rank r (mc_shm_dirent_t):
 *                      the incarnation of r it is for, the rings r produces
 *                      into on each channel, and for a guest (below) its
 *                      link block and the rings it consumes
 *    page-aligned      the rings and link blocks (see shm_ring.h for the
 *                      ring protocol)
 *  Rings are sized by the rank that creates them (MOONCAKE_SHM_RING_BYTES
 *  for collectives, 1 MiB for point-to-point) and the other side reads the
 *  size from the directory, so ranks need not agree on the setting. The
 *  segment is fully allocated up front (posix_fallocate) so a full /dev/shm
 *  fails create cleanly instead of raising SIGBUS on first touch.
 *
 * Who holds a pair's rings
 *  Classic pairs (both incarnation 0, the processes that created the
 *  communicator): each rank holds the rings it CONSUMES, in its own
 *  segment; it sleeps on the bell in its control block and every peer
 *  rings that bell.
 *  Any other pair: the newer process (larger (incarnation, rank)) is the
 *  HOST and holds both directions' rings, plus a link block (one page,
 *  mc_shm_link_t) for the older one, the GUEST. The host can do this
 *  because it was created after the guest, with the guest in its peer set;
 *  the guest (a running member) cannot grow its own segment, and the
 *  rings of a slot's earlier process are never reused, so a stale process
 *  of that slot can never write into a new stream. The host sleeps on its
 *  own bell; the guest sleeps on the bell in the link block as well as its
 *  own (futex_waitv; see shm_wait).
 *
 * Bootstrap
 *  create publishes "shm/<rank>" (or "shm/<rank>.<incarnation>") =
 *  "<segment name> <pid>". connect maps every classic peer's segment,
 *  attaches to every host among its peers, and waits until every guest
 *  has attached to it; add_peer attaches (from progress) to a new host.
 *  Attaching: map the host's segment, check its identity and that its
 *  directory entry for us names our incarnation, write our pid into the
 *  link block, release-store `attached`, ring the host. Unlinking: a
 *  classic peer sets "shm/<rank>/mapped" once it mapped everything and
 *  waits for that key from its classic peers; a host waits for `attached`
 *  from every guest. Then the rank unlinks its segment, so nothing is left
 *  in /dev/shm even if every process is later SIGKILLed. A crash between
 *  create and the end of connect can still leave a segment behind.
 *
 * Sleeping
 *  The engine spins on progress() and calls wait() when idle. wait() sets
 *  the `sleeping` flag of each bell it sleeps on, issues a full fence,
 *  reads the doorbells, re-checks every stream that has posted transfers,
 *  and only then futex-waits on the doorbells. A side that publishes bytes
 *  (producer) or frees space (consumer) issues a full fence and reads the
 *  other side's `sleeping`; only if it is set does it bump the doorbell and
 *  FUTEX_WAKE. The two fences make the classic Dekker pattern: either the
 *  waiter's re-check sees the new counter, or the waker sees the flag; and
 *  a bump made after the waiter read the doorbell makes its wait return at
 *  once. So no wakeup is lost, and a waker pays one fence and one shared
 *  read when nobody sleeps. A guest with link bells uses futex_waitv; where
 *  that is missing (Linux < 5.16) or there are too many links, it sleeps
 *  on its own bell at most MC_SHM_SLEEP_LINK_US.
 *
 * Failure and end of stream
 *  A dead peer rings no bell, so wait() sleeps at most MC_SHM_SLEEP_MAX_US
 *  while transfers are posted. A peer is checked (its `closed` flags, then
 *  a poll on a pidfd, or kill(pid, 0) where pidfds are unavailable) only
 *  on every 32nd progress() pass in which one of its streams with posted
 *  transfers could not move, in wait(), and in peer_status(); at most
 *  every MC_SHM_CHECK_US either way. Moving data never pays for it. A
 *  pidfd also sees a dead-but-unreaped (zombie) peer and cannot be fooled
 *  by pid reuse. A killed process signals its pidfd only once the kernel
 *  has freed its memory (about 60 ms per GiB here: a large training
 *  process looks alive for seconds), so a peer whose every thread is
 *  exiting (PF_EXITING in /proc/<pid>/task/<tid>/stat) or has a SIGKILL
 *  pending (its status: a thread in disk I/O acts on it only when that
 *  ends), read only after the leader's stat shows one of them, counts as
 *  gone too, once seen so on two looks at least MC_SHM_EXIT_SETTLE_US
 *  apart: none of its threads runs user code again. `closed` flags: the peer's control block (it destroyed
 *  its transport), the directory entry it holds for us (it dropped us: a
 *  newer process took our slot in its view), or the link block (a guest
 *  left).
 *
 *  Once a peer is known gone, peer_status() reports it and sends to it fail
 *  (posted ones from the next progress(), new posts at once): nobody will
 *  read them. Its incoming streams do not fail with it. The engine reads a
 *  frame in two steps (header, then a payload receive posted only after the
 *  header completed), so each (peer, channel) ring keeps serving receives,
 *  including ones posted later, from the bytes the peer published before it
 *  closed or died. A gone producer never writes again, and `closed` is
 *  release-stored after its last head update (a dead process's stores are
 *  visible once the kernel reports it dead), so a head reloaded after the
 *  death was seen is final: a receive that finds the ring dry then has
 *  reached a true end of stream. It fails with MC_ERR_PEER_FAILED (even if
 *  partly filled), as does everything queued behind it, and later posts to
 *  that stream are rejected. Each stream ends on its own. A peer whose ring
 *  counters are corrupt is not trusted to end anything: all its streams
 *  fail at once. A clean close is logged at info level, a death or
 *  corruption with transfers posted at warn level. Segments stay mapped
 *  until destroy (or until add_peer replaces the peer), so late accesses
 *  never fault.
 *
 * Rejoin
 *  add_peer(r, incarnation) drops whatever we hold for slot r (tells the
 *  old process so through a `closed` flag, unmaps its segment, moves the
 *  transfers still queued to an orphan list that the next progress fails)
 *  and from then on progress tries to attach to r's new segment, looking
 *  for its store key at most every MC_SHM_ADD_RETRY_MAX_US, until it is
 *  attached or timeout_ms has passed. Transfers posted meanwhile wait.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "mc_log.h"
#include "transport/shm/shm_ring.h"
#include "transport/transport.h"

#define MC_SHM_MAGIC UINT64_C(0x32306d68732d636d) /* "mc-shm02" */
#define MC_SHM_VERSION 2u
#define MC_SHM_PAGE 4096u
#define MC_SHM_MAX_RANKS 65536
#define MC_SHM_COLL_DEFAULT ((uint64_t)4 << 20)
#define MC_SHM_P2P_BYTES ((uint64_t)1 << 20)
#define MC_SHM_RING_MIN ((uint64_t)4096)
#define MC_SHM_RING_MAX ((uint64_t)1 << 30)
#define MC_SHM_SEG_MAX ((uint64_t)1 << 40)
#define MC_SHM_NAME_MAX 64
#define MC_SHM_KEY_MAX 64
#define MC_SHM_CHECK_US 2000      /* liveness check period, stalled peer */
#define MC_SHM_EXIT_SETTLE_US 1000 /* exiting: looks this far apart */
#define MC_SHM_EXIT_CHECK_US 5000 /* exiting: looked for this often */
#define MC_SHM_SLEEP_MAX_US 20000 /* longest wait() sleep with xfers posted */
#define MC_SHM_SLEEP_LINK_US 1000 /* longest sleep without futex_waitv */
#define MC_SHM_WAITV_MAX 128      /* FUTEX_WAITV_MAX */
#define MC_SHM_ADD_RETRY_MIN_US 500
#define MC_SHM_ADD_RETRY_MAX_US 20000
#define MC_SHM_ATTACH_POLL_US 5000 /* connect: host looking for guests */

/* Someone's sleep word and flags, 128-byte aligned (own cache lines).
 * Written only rarely (sleep/wake, close), read by every waker. */
typedef struct mc_shm_bell {
    _Alignas(128) uint32_t doorbell; /* futex word, bumped by wakers */
    uint32_t sleeping;               /* owner is in (or entering) wait() */
    uint32_t closed;                 /* owner left (see the users) */
} mc_shm_bell_t;

typedef struct mc_shm_ctrl {
    uint64_t magic; /* written last by create */
    uint32_t version;
    int32_t rank;
    int32_t size;
    int32_t pid;
    uint64_t inc;       /* the owner's incarnation */
    uint64_t pidns_dev; /* the owner's pid namespace, 0 if unknown */
    uint64_t pidns_ino;
    uint64_t seg_bytes;
    uint64_t dir_off;
    mc_shm_bell_t bell; /* the owner's; closed: it destroyed its transport */
} mc_shm_ctrl_t;

_Static_assert(sizeof(mc_shm_ctrl_t) <= MC_SHM_PAGE, "control block > page");

typedef struct mc_shm_ringref {
    uint64_t off; /* 0: none */
    uint64_t cap;
} mc_shm_ringref_t;

/* The owner's directory entry for rank r. */
typedef struct mc_shm_dirent {
    uint64_t inc;  /* the incarnation of r this entry is for */
    uint64_t link; /* r is a guest: offset of its link block, else 0 */
    mc_shm_ringref_t in[MC_NUM_CHANNELS];  /* r produces, owner consumes */
    mc_shm_ringref_t out[MC_NUM_CHANNELS]; /* guest: owner produces */
    uint32_t dropped; /* the owner dropped r: r must count it gone */
    uint32_t pad_;
} mc_shm_dirent_t;

/* A guest's page in its host's segment; written by the guest. */
typedef struct mc_shm_link {
    uint64_t inc; /* the guest's incarnation */
    int32_t pid;
    uint32_t attached; /* release-stored last */
    uint64_t pidns_dev;
    uint64_t pidns_ino;
    mc_shm_bell_t bell; /* the guest's, for this link; closed: it left */
} mc_shm_link_t;

_Static_assert(sizeof(mc_shm_link_t) <= MC_SHM_PAGE, "link block > page");

enum { SHM_CLASSIC, SHM_HOST, SHM_GUEST };

struct mc_shm_peer;

typedef struct mc_shm_stream {
    mc_xfer_t *q, *qtail; /* posted transfers, FIFO */
    mc_shm_ring_t ring;   /* ring.data NULL: no ring (never connected) */
    struct mc_shm_peer *peer;
    int is_send;
    int eof; /* recv: ended (dry after the peer went, or corrupt); posts
              * are rejected */
} mc_shm_stream_t;

typedef struct mc_shm_peer {
    int rank;
    int role;            /* who holds the pair's rings: SHM_* (us: SHM_HOST) */
    uint64_t inc;        /* incarnation of the process in the slot */
    int up;              /* connected: its streams move */
    int adding;          /* add_peer: attaching from progress */
    int gone;            /* closed, dead, corrupt or failed add: sends fail */
    int broken;          /* corrupt counters: its rings are not read any more */
    int settled;         /* sends posted before `gone` have been failed */
    mc_status_t fail_st; /* for peer_status once gone: MC_ERR_PEER_FAILED
                          * or MC_ERR_TIMEOUT (add) */
    const char *why;     /* reason, for log lines and rejected posts */
    pid_t pid;
    int pidfd; /* -1: fall back to kill(pid, 0) */
    int stat_fd; /* /proc/<pid>/stat of that process, or -1 */
    int64_t exiting_us;      /* when every thread was first seen exiting */
    int64_t next_exit_check_us;
    void *map; /* classic, guest: the peer's segment */
    size_t map_len;
    mc_shm_bell_t *bell;       /* where the peer sleeps: ring after moving */
    const uint32_t *closed[2]; /* flags that say it left (NULL: none) */
    mc_shm_link_t *link;       /* host, guest: the link block */
    int64_t next_check_us;
    int64_t add_deadline_us, add_next_us, add_backoff_us;
    mc_shm_stream_t tx[MC_NUM_CHANNELS];
    mc_shm_stream_t rx[MC_NUM_CHANNELS];
    /* peek armed wait(): the signal word's value it saw */
    int armed[2];
    uint64_t armed_val[2];
} mc_shm_peer_t;

struct mc_tl {
    int rank;
    int size;
    uint64_t uid;
    uint64_t inc; /* our incarnation */
    mc_store_h store;
    int64_t deadline_us; /* create + connect */
    char name[MC_SHM_NAME_MAX];
    void *seg;
    size_t seg_len;
    int linked; /* our segment name still exists in /dev/shm */
    mc_shm_ctrl_t *ctrl;
    mc_shm_dirent_t *dir; /* in our segment */
    int32_t *peer_idx;    /* rank -> index in peers, -1 if not a peer */
    mc_shm_peer_t **peers;
    int npeers, peers_cap;
    mc_shm_peer_t **adds; /* peers with `adding` */
    int nadds;            /* capacity peers_cap */
    mc_xfer_t *orphans;   /* taken off dropped peers; progress fails them */
    int connect_called;
    int connected;
    int busy;        /* inside progress or a post's immediate advance */
    int nunsettled;  /* peers with gone && !settled */
    unsigned stalls; /* stalled streams seen by progress, for rate limits */
    int no_waitv;    /* futex_waitv is not available */
    mc_tl_owned_t owned; /* rests of released transfers (release_*) */
};

/* ------------------------------------------------------------------------ */
/* helpers                                                                  */
/* ------------------------------------------------------------------------ */

static void shm_seg_name(uint64_t uid, int rank, uint64_t inc,
                         char out[MC_SHM_NAME_MAX])
{
    if (inc)
        snprintf(out, MC_SHM_NAME_MAX, "/mc-%016" PRIx64 "-%d.%" PRIu64, uid,
                 rank, inc);
    else
        snprintf(out, MC_SHM_NAME_MAX, "/mc-%016" PRIx64 "-%d", uid, rank);
}

static void shm_key(char out[MC_SHM_KEY_MAX], int rank, uint64_t inc)
{
    if (inc)
        snprintf(out, MC_SHM_KEY_MAX, "shm/%d.%" PRIu64, rank, inc);
    else
        snprintf(out, MC_SHM_KEY_MAX, "shm/%d", rank);
}

/* Who holds the rings of the pair (us, peer), from our side. */
static int shm_role(const mc_tl_t *tl, int peer, uint64_t peer_inc)
{
    if (!tl->inc && !peer_inc) return SHM_CLASSIC;
    if (tl->inc > peer_inc || (tl->inc == peer_inc && tl->rank > peer))
        return SHM_HOST;
    return SHM_GUEST;
}

static uint64_t shm_round_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) / a * a;
}

static uint64_t shm_coll_ring_bytes(void)
{
    int64_t v =
        mc_env_int("MOONCAKE_SHM_RING_BYTES", (int64_t)MC_SHM_COLL_DEFAULT);
    if (v < (int64_t)MC_SHM_RING_MIN || v > (int64_t)MC_SHM_RING_MAX) {
        MC_LOG(MC_LOG_WARN,
               "MOONCAKE_SHM_RING_BYTES=%" PRId64
               " is outside [4096, 1 GiB]; using 4 MiB",
               v);
        return MC_SHM_COLL_DEFAULT;
    }
    uint64_t c = MC_SHM_RING_MIN;
    while (c < (uint64_t)v)
        c <<= 1;
    return c;
}

static void shm_pidns(uint64_t *dev_p, uint64_t *ino_p)
{
    struct stat sb;
    if (stat("/proc/self/ns/pid", &sb) == 0) {
        *dev_p = (uint64_t)sb.st_dev;
        *ino_p = (uint64_t)sb.st_ino;
    } else {
        *dev_p = *ino_p = 0;
    }
}

static int shm_same_pidns(uint64_t dev, uint64_t ino)
{
    uint64_t my_dev, my_ino;
    shm_pidns(&my_dev, &my_ino);
    return !my_ino || !ino || (my_ino == ino && my_dev == dev);
}

static int64_t shm_remaining_ms(const mc_tl_t *tl)
{
    if (tl->deadline_us == INT64_MAX) return -1;
    int64_t left = tl->deadline_us - mc_now_us();
    return left > 0 ? (left + 999) / 1000 : 0;
}

/* How long connect may wait for a peer's store entry: what is left, and
 * 1 ms once the deadline has passed (0 would mean "look without waiting",
 * whose MC_INPROGRESS connect must not take for success). */
static int64_t shm_connect_wait_ms(const mc_tl_t *tl)
{
    int64_t w = shm_remaining_ms(tl);
    return w == 0 ? 1 : w;
}

static void shm_futex_wake(uint32_t *word)
{
    syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* Tell the owner of bell `b` that a counter it may be waiting on moved.
 * The counter was release-stored before; the fence orders it before our
 * read of `sleeping` (pairs with the fence in shm_wait). */
static void shm_bell(mc_shm_bell_t *b)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(&b->sleeping, __ATOMIC_RELAXED)) {
        __atomic_fetch_add(&b->doorbell, 1, __ATOMIC_SEQ_CST);
        shm_futex_wake(&b->doorbell);
    }
}

/* A ring reference from a segment of seg_len bytes, read once (the other
 * process could change it under us). */
static int shm_ringref_ok(const mc_shm_ringref_t *ref, size_t seg_len,
                          uint64_t *off_p, uint64_t *cap_p)
{
    uint64_t off = __atomic_load_n(&ref->off, __ATOMIC_RELAXED);
    uint64_t cap = __atomic_load_n(&ref->cap, __ATOMIC_RELAXED);
    if (off == 0 || off % MC_SHM_PAGE || cap < MC_SHM_RING_MIN ||
        cap > MC_SHM_RING_MAX || (cap & (cap - 1)) || off > seg_len ||
        seg_len - off < MC_SHM_RING_CTRL_BYTES + cap)
        return 0;
    *off_p = off;
    *cap_p = cap;
    return 1;
}

#define MC_SHM_WHY_CLOSED "closed its shared-memory transport"
#define MC_SHM_WHY_DROPPED "dropped this rank (a newer process took its slot)"
#define MC_SHM_WHY_CORRUPT "corrupted a ring's counters"

/* The flags field of a /proc/.../stat file read through fd (the 9th:
 * after "pid (comm) state ppid pgrp session tty_nr tpgid"); -1 if it
 * cannot be read (a reaped process's file reads nothing). */
static long shm_stat_flags_fd(int fd, char *state)
{
    char buf[512];
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
    if (n <= 0) return -1;
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* comm may hold spaces and parens */
    if (!p) return -1;
    unsigned long flags;
    char st;
    if (sscanf(p + 1, " %c %*d %*d %*d %*d %*d %lu", &st, &flags) != 2)
        return -1;
    if (state) *state = st;
    return (long)(flags & LONG_MAX);
}

static long shm_stat_flags(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    long f = shm_stat_flags_fd(fd, NULL);
    close(fd);
    return f;
}

#define MC_SHM_PF_EXITING 0x4L /* PF_EXITING: the task is in do_exit */

/* Read a /proc status file into buf, NUL-terminated: 1, or 0 if it is not
 * there. One read: the kernel fills it in one go. */
static int shm_status_read(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, cap - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = '\0';
    return 1;
}

/* Where the value of line `key` ("\nThreads:") starts in a status file
 * read by shm_status_read, or NULL (a line pushed past the buffer by a
 * very long Groups line counts as absent: a safe "no" for the callers). */
static const char *shm_status_value(const char *buf, const char *key)
{
    const char *k = strstr(buf, key);
    return k ? k + strlen(key) : NULL;
}

/* Has task tid of process pid a SIGKILL pending (its SigPnd or ShdPnd in
 * /proc/<pid>/task/<tid>/status)? Such a task never runs user code again:
 * it exits at its next return from the kernel, which a task in an
 * uninterruptible wait (disk I/O) reaches only later. */
static int shm_task_killed(pid_t pid, const char *tid)
{
    char path[96], buf[4096];
    snprintf(path, sizeof(path), "/proc/%d/task/%.16s/status", (int)pid, tid);
    if (!shm_status_read(path, buf, sizeof(buf))) return 0;
    static const char *keys[] = {"\nSigPnd:", "\nShdPnd:"};
    for (int i = 0; i < 2; i++) {
        const char *v = shm_status_value(buf, keys[i]);
        unsigned long long m;
        if (v && sscanf(v, " %llx", &m) == 1 && (m & (1ull << (SIGKILL - 1))))
            return 1;
    }
    return 0;
}

/* The number of tasks in process pid's thread group now ("Threads:" in
 * its status: the kernel's count of the tasks its task list holds, the
 * exited ones not yet released included); -1 if it cannot be read. */
static long shm_pid_threads(pid_t pid)
{
    char path[64], buf[4096];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    if (!shm_status_read(path, buf, sizeof(buf))) return -1;
    const char *v = shm_status_value(buf, "\nThreads:");
    long t;
    return v && sscanf(v, " %ld", &t) == 1 ? t : -1;
}

/* Is every thread of process pid exiting? A task in do_exit never runs
 * user code again, but the kernel frees a killed process's memory before
 * it closes its files and signals its pidfd: about 60 ms per GiB on this
 * project's VM, so a large process can take seconds to look dead. The
 * leader's flags first (one read; it may also exit alone, with pthread_exit:
 * then every task is read, and one that is not exiting says "no").
 *
 * The kernel's task listing can skip a live task: when the task the
 * listing stands on is released meanwhile it resumes by position, or ends.
 * A live task is never released, so it is still counted in "Threads:"
 * read after the listing; every task the listing gave that is still there
 * afterwards is counted too. So a listing that missed a live task leaves
 * fewer of its tasks present than that count, and says "no" (a task
 * released between the two reads only lowers the side it is missing
 * from: "no" again, and the next look decides). */
static int shm_pid_exiting(pid_t pid, int stat_fd)
{
    char state = 0, path[64];
    long f = shm_stat_flags_fd(stat_fd, &state);
    if (f < 0) return 0;
    if (!(f & MC_SHM_PF_EXITING)) {
        /* the leader in an uninterruptible wait may hold a SIGKILL */
        snprintf(path, sizeof(path), "%d", (int)pid);
        if (state != 'D' || !shm_task_killed(pid, path)) return 0;
    }
    snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d) return 0;
    int all = 1, seen = 0, cap = 0;
    pid_t *tids = NULL;
    struct dirent *e;
    while (all && (e = readdir(d)) != NULL) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        char tp[96];
        snprintf(tp, sizeof(tp), "/proc/%d/task/%.16s/stat", (int)pid,
                 e->d_name);
        f = shm_stat_flags(tp);
        /* a task that ended meanwhile is gone from the list: no "no" */
        if (f >= 0 && !(f & MC_SHM_PF_EXITING) &&
            !shm_task_killed(pid, e->d_name)) {
            all = 0;
        }
        if (f < 0 || !all) continue;
        if (seen == cap) {
            int nc = cap ? 2 * cap : 64;
            pid_t *nt = realloc(tids, (size_t)nc * sizeof(*nt));
            if (!nt) {
                all = 0; /* cannot tell: "no", looked at again later */
                break;
            }
            tids = nt;
            cap = nc;
        }
        tids[seen++] = (pid_t)strtol(e->d_name, NULL, 10);
    }
    closedir(d);
    if (all && seen) {
        long threads = shm_pid_threads(pid);
        int present = 0;
        for (int i = 0; i < seen; i++) {
            char tp[96];
            snprintf(tp, sizeof(tp), "/proc/%d/task/%d/stat", (int)pid,
                     (int)tids[i]);
            present += access(tp, F_OK) == 0;
        }
        all = threads >= 0 && present >= threads;
    }
    free(tids);
    return all && seen;
}

/* Reason the peer is gone, or NULL while it looks alive. */
static const char *shm_peer_gone(mc_shm_peer_t *pe)
{
    if (pe->closed[0] && __atomic_load_n(pe->closed[0], __ATOMIC_ACQUIRE))
        return MC_SHM_WHY_CLOSED;
    if (pe->closed[1] && __atomic_load_n(pe->closed[1], __ATOMIC_ACQUIRE))
        return MC_SHM_WHY_DROPPED;
    if (pe->pidfd >= 0) {
        struct pollfd pfd = {.fd = pe->pidfd, .events = POLLIN};
        if (poll(&pfd, 1, 0) > 0) return "exited";
    } else if (kill(pe->pid, 0) < 0 && errno == ESRCH) {
        return "exited";
    }
    /* exiting: gone once seen so on two looks MC_SHM_EXIT_SETTLE_US
     * apart (its last stores have long reached memory by then); looked
     * for every MC_SHM_EXIT_CHECK_US (a stalled wait checks more often) */
    if (pe->stat_fd < 0) return NULL;
    int64_t now = mc_now_us();
    if (!pe->exiting_us && now < pe->next_exit_check_us) return NULL;
    pe->next_exit_check_us = now + MC_SHM_EXIT_CHECK_US;
    if (!shm_pid_exiting(pe->pid, pe->stat_fd)) {
        pe->exiting_us = 0;
        return NULL;
    }
    if (!pe->exiting_us) pe->exiting_us = now;
    return now - pe->exiting_us >= MC_SHM_EXIT_SETTLE_US ? "is exiting" : NULL;
}

/* Stop watching pe's process (its pidfd and stat file). */
static void shm_unwatch_pid(mc_shm_peer_t *pe)
{
    if (pe->pidfd >= 0) close(pe->pidfd);
    if (pe->stat_fd >= 0) close(pe->stat_fd);
    pe->pidfd = pe->stat_fd = -1;
}

/* Rate-limited liveness check; *now_p is read lazily (0 = not yet).
 * Returns the reason the peer is gone, or NULL. */
static const char *shm_check_peer(mc_shm_peer_t *pe, int64_t *now_p)
{
    if (!*now_p) *now_p = mc_now_us();
    if (*now_p < pe->next_check_us) return NULL;
    pe->next_check_us = *now_p + MC_SHM_CHECK_US;
    return shm_peer_gone(pe);
}

/*
 * Record that a peer is gone (broken: its counters are corrupt). Runs no
 * callbacks, so it is safe anywhere; progress() settles the peer. Logs once
 * per state change.
 */
static void shm_mark_gone(mc_tl_t *tl, mc_shm_peer_t *pe, const char *why,
                          int broken)
{
    int posted = 0;
    for (int ch = 0; ch < MC_NUM_CHANNELS; ch++)
        posted |= pe->tx[ch].q || pe->rx[ch].q;
    if (broken && !pe->broken) {
        pe->broken = 1;
        for (int ch = 0; ch < MC_NUM_CHANNELS; ch++)
            pe->rx[ch].eof = 1;
        MC_LOG(MC_LOG_WARN,
               "shm: rank %d: peer %d (pid %d) " MC_SHM_WHY_CORRUPT
               "; failing its transfers",
               tl->rank, pe->rank, (int)pe->pid);
        if (!pe->gone) why = MC_SHM_WHY_CORRUPT;
    }
    if (pe->gone) return;
    pe->gone = 1;
    pe->why = why;
    tl->nunsettled++;
    if (broken) return;
    /* A clean close is routine; a vanished process with transfers in
     * flight is worth a warning (the engine reports what it costs). */
    MC_LOG(strcmp(why, MC_SHM_WHY_CLOSED) == 0 || !posted ? MC_LOG_INFO
                                                          : MC_LOG_WARN,
           "shm: rank %d: peer %d (pid %d) %s; failing sends to it, still "
           "delivering what it sent",
           tl->rank, pe->rank, (int)pe->pid, why);
}

static void shm_complete(mc_xfer_t *x, mc_status_t st)
{
    mc_xfer_cb_t cb = x->cb;
    x->next = NULL;
    __atomic_store_n(&x->status, (int)st, __ATOMIC_RELEASE);
    if (cb) cb(x);
}

/* Complete a detached list with MC_ERR_PEER_FAILED; returns its length. */
static int shm_fail_list(mc_xfer_t *x)
{
    int n = 0;
    while (x) {
        mc_xfer_t *next = x->next;
        shm_complete(x, MC_ERR_PEER_FAILED);
        n++;
        x = next;
    }
    return n;
}

/* ------------------------------------------------------------------------ */
/* data path                                                                */
/* ------------------------------------------------------------------------ */

/*
 * Move bytes for the posted transfers of one stream, completing them in
 * FIFO order. Callbacks may append to this stream (the loop picks them up)
 * or to any other; tl->busy keeps post_* from recursing into here. Returns
 * the transfers completed or partly advanced; sets *bad on corrupt
 * counters. A receive left incomplete saw a freshly reloaded, too small
 * head (mc_shm_ring_read reloads whenever its cached head falls short).
 * The peer's bell is read once: callbacks cannot drop a peer (add_peer is
 * refused inside progress).
 */
static int shm_advance(mc_shm_stream_t *s, int *bad)
{
    mc_shm_ring_t *r = &s->ring;
    mc_shm_bell_t *bell = s->peer->bell;
    uint64_t rung = r->pos;
    int n = 0;
    mc_xfer_t *x;
    while ((x = s->q) != NULL) {
        size_t start = x->off;
        while (x->off < x->len) {
            uint8_t *p = (uint8_t *)x->buf + x->off;
            size_t want = x->len - x->off;
            if (want > MC_SHM_RING_CHUNK) want = MC_SHM_RING_CHUNK;
            size_t k = s->is_send ? mc_shm_ring_write(r, p, want)
                                  : mc_shm_ring_read(r, p, want);
            if (k == SIZE_MAX) {
                *bad = 1;
                return n;
            }
            x->off += k;
            if (k < want) break; /* ring full (send) or empty (recv) */
            if (x->off < x->len) {
                /* more to copy: let a sleeping peer start on this piece */
                shm_bell(bell);
                rung = r->pos;
                /* a payload half sent: its receiver is mid-frame; half
                 * received: its sender may be stuck on a full ring */
                MC_FAULT_POINT(s->is_send ? "shm.send.partial"
                                          : "shm.recv.partial");
            }
        }
        if (x->off < x->len) {
            if (x->off != start) n++;
            break;
        }
        s->q = x->next;
        if (!s->q) s->qtail = NULL;
        n++;
        /* wake the peer before running engine code in a callback */
        if (x->cb && r->pos != rung) {
            shm_bell(bell);
            rung = r->pos;
        }
        shm_complete(x, MC_OK);
    }
    if (r->pos != rung) shm_bell(bell);
    return n;
}

/*
 * Bring a gone peer up to date (progress only, tl->busy held): fail the
 * sends posted to it (once), serve posted receives from what it left in
 * our rings, and end every incoming stream whose ring ran dry under a
 * posted receive. Queues are detached before their transfers fail: a
 * callback that posts to an ended stream is rejected instead of being
 * appended to a list we are walking. Returns transfers completed or
 * advanced.
 */
static int shm_settle(mc_tl_t *tl, mc_shm_peer_t *pe)
{
    int n = 0;
    if (!pe->settled) {
        mc_xfer_t *lists[MC_NUM_CHANNELS];
        pe->settled = 1;
        tl->nunsettled--;
        for (int ch = 0; ch < MC_NUM_CHANNELS; ch++) {
            lists[ch] = pe->tx[ch].q;
            pe->tx[ch].q = pe->tx[ch].qtail = NULL;
        }
        for (int ch = 0; ch < MC_NUM_CHANNELS; ch++)
            n += shm_fail_list(lists[ch]);
    }
    for (int ch = 0; ch < MC_NUM_CHANNELS; ch++) {
        mc_shm_stream_t *s = &pe->rx[ch];
        if (!s->q) continue;
        if (!pe->broken && s->ring.data) {
            int bad = 0;
            n += shm_advance(s, &bad);
            if (bad) shm_mark_gone(tl, pe, MC_SHM_WHY_CORRUPT, 1);
            if (!s->q) continue;
        }
        /* the head was reloaded after the peer was known gone: end of
         * stream for this ring */
        MC_LOG(MC_LOG_DEBUG,
               "shm: rank %d: stream from peer %d channel %d ended", tl->rank,
               pe->rank, ch);
        s->eof = 1;
        mc_xfer_t *x = s->q;
        s->q = s->qtail = NULL;
        n += shm_fail_list(x);
    }
    return n;
}

static mc_status_t shm_attach(mc_tl_t *tl, mc_shm_peer_t *pe, int64_t wait_ms);
static void shm_add_fail(mc_tl_t *tl, mc_shm_peer_t *pe, mc_status_t st,
                         const char *why);

static void shm_add_remove(mc_tl_t *tl, mc_shm_peer_t *pe)
{
    pe->adding = 0;
    for (int i = 0; i < tl->nadds; i++)
        if (tl->adds[i] == pe) {
            tl->adds[i] = tl->adds[--tl->nadds];
            break;
        }
}

/* Try the attaches that are due (progress, busy held). */
static int shm_add_progress(mc_tl_t *tl)
{
    int n = 0;
    int64_t now = mc_now_us();
    for (int i = 0; i < tl->nadds;) {
        mc_shm_peer_t *pe = tl->adds[i];
        if (now < pe->add_next_us) {
            i++;
            continue;
        }
        mc_status_t st = shm_attach(tl, pe, 0);
        if (st == MC_INPROGRESS && now >= pe->add_deadline_us) {
            shm_add_fail(tl, pe, MC_ERR_TIMEOUT,
                         "no process of that incarnation attached within "
                         "the timeout");
            n++;
            continue; /* removed: adds[i] is the next one */
        }
        if (st == MC_INPROGRESS) {
            pe->add_next_us = now + pe->add_backoff_us;
            pe->add_backoff_us *= 2;
            if (pe->add_backoff_us > MC_SHM_ADD_RETRY_MAX_US)
                pe->add_backoff_us = MC_SHM_ADD_RETRY_MAX_US;
            i++;
            continue;
        }
        if (st == MC_OK) {
            shm_add_remove(tl, pe);
            MC_LOG(MC_LOG_INFO,
                   "shm: rank %d: connected to peer %d (incarnation %" PRIu64
                   ", pid %d)",
                   tl->rank, pe->rank, pe->inc, (int)pe->pid);
        } else {
            char why[256];
            snprintf(why, sizeof(why), "%s", mc_last_error());
            shm_add_fail(tl, pe, MC_ERR_PEER_FAILED, why);
        }
        n++;
    }
    return n;
}

/* Complete what add_peer took off dropped peers (progress, busy held). */
static int shm_fail_orphans(mc_tl_t *tl)
{
    mc_xfer_t *x = tl->orphans;
    tl->orphans = NULL;
    int n = 0;
    while (x) {
        mc_xfer_t *next = x->next;
        shm_complete(x, x->off >= x->len ? MC_OK : MC_ERR_PEER_FAILED);
        n++;
        x = next;
    }
    return n;
}

static int shm_progress(mc_tl_t *tl)
{
    if (!tl || !tl->connected) return 0;
    int moved = 0;
    int64_t now = 0;
    tl->busy++;
    if (tl->orphans) moved += shm_fail_orphans(tl);
    if (tl->nadds) moved += shm_add_progress(tl);
    for (int i = 0; i < tl->npeers; i++) {
        mc_shm_peer_t *pe = tl->peers[i];
        for (int j = 0; pe->up && !pe->gone && j < 2 * MC_NUM_CHANNELS; j++) {
            mc_shm_stream_t *s = j & 1 ? &pe->rx[j >> 1] : &pe->tx[j >> 1];
            if (!s->q) continue;
            int bad = 0;
            int n = shm_advance(s, &bad);
            moved += n;
            if (bad) {
                shm_mark_gone(tl, pe, MC_SHM_WHY_CORRUPT, 1);
                break;
            }
            /* stalled: now and then (not on every spin) check the peer */
            if (n == 0 && s->q && (++tl->stalls & 31) == 0) {
                const char *why = shm_check_peer(pe, &now);
                if (why) shm_mark_gone(tl, pe, why, 0);
            }
        }
        if (pe->gone) moved += shm_settle(tl, pe);
    }
    tl->busy--;
    return moved;
}

/* Could progress() move something now? Reloads the shared counters. */
static int shm_can_move(mc_tl_t *tl)
{
    if (tl->nunsettled || tl->orphans) return 1;
    for (int i = 0; i < tl->npeers; i++) {
        mc_shm_peer_t *pe = tl->peers[i];
        for (int ch = 0; ch < MC_NUM_CHANNELS; ch++) {
            mc_shm_stream_t *tx = &pe->tx[ch], *rx = &pe->rx[ch];
            /* a gone peer's receive either completes or ends the stream */
            if (pe->gone) {
                if (rx->q) return 1;
                continue;
            }
            if (!pe->up) continue;
            if (ch == MC_CH_COLL && rx->ring.data)
                for (int k = 0; k < 2; k++) {
                    if (!pe->armed[k]) continue;
                    uint64_t v = __atomic_load_n(&rx->ring.hdr->sig[k],
                                                 __ATOMIC_ACQUIRE);
                    if (v == pe->armed_val[k]) continue;
                    pe->armed[k] = 0; /* wakes one wait(); peek re-arms */
                    return 1;
                }
            if (tx->q && (tx->q->off == tx->q->len ||
                          mc_shm_ring_space_reload(&tx->ring) != 0))
                return 1;
            if (rx->q && (rx->q->off == rx->q->len ||
                          mc_shm_ring_avail_reload(&rx->ring) != 0))
                return 1;
        }
    }
    return 0;
}

#if defined(SYS_futex_waitv) && defined(FUTEX_32)
#define MC_SHM_HAVE_WAITV 1
#endif

/* Sleep until one of the n bells' doorbells moves from vals[i], or us
 * passed. Returns 0, or -1 if that cannot be done with all of them (no
 * futex_waitv), after sleeping on the first one for at most
 * MC_SHM_SLEEP_LINK_US. */
static int shm_sleep(mc_tl_t *tl, mc_shm_bell_t *const *bells,
                     const uint32_t *vals, int n, int64_t us)
{
    if (n > 1 && !tl->no_waitv && n <= MC_SHM_WAITV_MAX) {
#ifdef MC_SHM_HAVE_WAITV
        struct futex_waitv w[MC_SHM_WAITV_MAX];
        for (int i = 0; i < n; i++)
            w[i] = (struct futex_waitv){.val = vals[i],
                                        .uaddr = (uintptr_t)&bells[i]->doorbell,
                                        .flags = FUTEX_32};
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        int64_t ns = (int64_t)ts.tv_nsec + (us % 1000000) * 1000;
        ts.tv_sec += (time_t)(us / 1000000 + ns / 1000000000);
        ts.tv_nsec = (long)(ns % 1000000000);
        long rc =
            syscall(SYS_futex_waitv, w, (unsigned)n, 0u, &ts, CLOCK_MONOTONIC);
        if (rc >= 0 || errno != ENOSYS) return 0;
#endif
        tl->no_waitv = 1;
        MC_LOG(MC_LOG_INFO,
               "shm: rank %d: futex_waitv is not available; sleeping at "
               "most %d us while linked to newer peers",
               tl->rank, MC_SHM_SLEEP_LINK_US);
    }
    if (n > 1 && us > MC_SHM_SLEEP_LINK_US) us = MC_SHM_SLEEP_LINK_US;
    struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
    syscall(SYS_futex, &bells[0]->doorbell, FUTEX_WAIT, vals[0], &ts, NULL, 0);
    return n > 1 ? -1 : 0;
}

static void shm_wait(mc_tl_t *tl, int64_t timeout_us)
{
    if (!tl || !tl->connected || timeout_us <= 0 || tl->orphans) return;
    int posted = 0, settling = 0;
    int64_t now = 0;
    int nlinks = 0;
    for (int i = 0; i < tl->npeers; i++) {
        mc_shm_peer_t *pe = tl->peers[i];
        if (pe->up && pe->role == SHM_GUEST) nlinks++;
        if (pe->gone || !pe->up) continue;
        int mine = pe->armed[0] || pe->armed[1];
        for (int ch = 0; ch < MC_NUM_CHANNELS; ch++)
            mine |= pe->tx[ch].q || pe->rx[ch].q;
        if (!mine) continue;
        posted = 1;
        const char *why = shm_check_peer(pe, &now);
        /* callbacks run from progress only: it settles the peer */
        if (why) shm_mark_gone(tl, pe, why, 0);
        settling |= !why && pe->exiting_us != 0;
    }
    if (tl->nunsettled) return;
    int64_t us = timeout_us;
    if (posted && us > MC_SHM_SLEEP_MAX_US) us = MC_SHM_SLEEP_MAX_US;
    /* a peer seen exiting is looked at again soon: its second look */
    if (settling && us > MC_SHM_CHECK_US) us = MC_SHM_CHECK_US;
    for (int i = 0; i < tl->nadds; i++) {
        /* the next attach attempt or deadline of an add */
        if (!now) now = mc_now_us();
        int64_t t = tl->adds[i]->add_next_us < tl->adds[i]->add_deadline_us
                        ? tl->adds[i]->add_next_us
                        : tl->adds[i]->add_deadline_us;
        if (t - now < us) us = t - now;
    }
    if (us <= 0) return;

    /* our own bell, then the bell of every link where we are the guest */
    mc_shm_bell_t *one[1];
    mc_shm_bell_t **bells = one;
    uint32_t vone[1], *vals = vone;
    if (nlinks) {
        bells = malloc((size_t)(nlinks + 1) * sizeof(*bells));
        vals = malloc((size_t)(nlinks + 1) * sizeof(*vals));
        if (!bells || !vals) {
            free(bells);
            free(vals);
            return; /* a spurious early return is fine */
        }
    }
    int n = 0;
    bells[n++] = &tl->ctrl->bell;
    for (int i = 0; i < tl->npeers && n < nlinks + 1; i++) {
        mc_shm_peer_t *pe = tl->peers[i];
        if (pe->up && pe->role == SHM_GUEST) bells[n++] = &pe->link->bell;
    }
    for (int i = 0; i < n; i++)
        __atomic_store_n(&bells[i]->sleeping, 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    for (int i = 0; i < n; i++)
        vals[i] = __atomic_load_n(&bells[i]->doorbell, __ATOMIC_ACQUIRE);
    if (!shm_can_move(tl)) (void)shm_sleep(tl, bells, vals, n, us);
    for (int i = 0; i < n; i++)
        __atomic_store_n(&bells[i]->sleeping, 0, __ATOMIC_RELAXED);
    if (bells != one) {
        free(bells);
        free(vals);
    }
}

static mc_status_t shm_post(mc_tl_t *tl, int peer, int ch, mc_xfer_t *x,
                            int is_send)
{
    const char *op = is_send ? "post_send" : "post_recv";
    if (!tl || !x)
        return mc_err(MC_ERR_INVALID_ARG, "shm %s: %s is NULL", op,
                      tl ? "transfer" : "transport");
    if (peer < 0 || peer >= tl->size || tl->peer_idx[peer] < 0)
        return mc_err(MC_ERR_INVALID_ARG,
                      "shm %s: rank %d: %d is not a peer of this transport", op,
                      tl->rank, peer);
    if (ch < 0 || ch >= MC_NUM_CHANNELS)
        return mc_err(MC_ERR_INVALID_ARG, "shm %s: bad channel %d", op, ch);
    if (x->len && !x->buf)
        return mc_err(MC_ERR_INVALID_ARG, "shm %s: NULL buffer, len %zu", op,
                      x->len);
    if (!tl->connected)
        return mc_err(MC_ERR_INVALID_ARG, "shm %s: transport not connected",
                      op);
    mc_shm_peer_t *pe = tl->peers[tl->peer_idx[peer]];
    mc_shm_stream_t *s = is_send ? &pe->tx[ch] : &pe->rx[ch];
    /* A receive on a gone peer's idle stream whose ring is dry ends the
     * stream now (nothing can ever arrive); a zero-length one still
     * completes, as it would on a live stream. */
    if (!is_send && pe->gone && !s->eof && !s->q && x->len) {
        uint64_t avail = s->ring.data ? mc_shm_ring_avail_reload(&s->ring) : 0;
        if (avail == UINT64_MAX) shm_mark_gone(tl, pe, MC_SHM_WHY_CORRUPT, 1);
        if (avail == 0) s->eof = 1;
    }
    if (is_send ? pe->gone : s->eof)
        return mc_err(MC_ERR_PEER_FAILED, "shm %s: rank %d: peer %d %s%s", op,
                      tl->rank, peer, pe->why ? pe->why : "failed",
                      is_send ? "" : " and its stream has ended");

    x->off = 0;
    x->next = NULL;
    x->status = MC_INPROGRESS;
    if (s->qtail)
        s->qtail->next = x;
    else
        s->q = x;
    s->qtail = x;
    /* Start at once when nothing is ahead of it (lower latency, and a send
     * that fits frees the engine's buffer immediately). Not from inside a
     * callback: the running advance loop will reach it, and recursion
     * could go as deep as the ring holds messages. A receive a gone peer
     * cannot finish stays queued; the next progress() fails it (callbacks
     * of failures run from progress only). A peer still being added waits
     * for progress too. */
    if (!tl->busy && s->q == x && pe->up) {
        tl->busy++;
        int bad = 0;
        shm_advance(s, &bad);
        if (bad) shm_mark_gone(tl, pe, MC_SHM_WHY_CORRUPT, 1);
        tl->busy--;
    }
    return MC_OK;
}

static mc_status_t shm_post_send(mc_tl_t *tl, int peer, int ch, mc_xfer_t *x)
{
    return shm_post(tl, peer, ch, x, 1);
}

static mc_status_t shm_post_recv(mc_tl_t *tl, int peer, int ch, mc_xfer_t *x)
{
    return shm_post(tl, peer, ch, x, 0);
}

/* The peer of a signal call; NULL (and *st_p set) if there is none. */
static mc_shm_peer_t *shm_sig_peer(mc_tl_t *tl, int peer, int slot,
                                   const char *fn, mc_status_t *st_p)
{
    if (!tl || peer < 0 || peer >= tl->size || tl->peer_idx[peer] < 0 ||
        slot < 0 || slot > 1) {
        *st_p = mc_err(MC_ERR_INVALID_ARG, "shm %s: bad peer %d or slot %d", fn,
                       peer, slot);
        return NULL;
    }
    mc_shm_peer_t *pe = tl->peers[tl->peer_idx[peer]];
    if (!pe->up || !pe->tx[MC_CH_COLL].ring.data ||
        !pe->rx[MC_CH_COLL].ring.data) {
        *st_p = MC_ERR_PEER_FAILED;
        return NULL;
    }
    return pe;
}

/* The word lives in the page of counters of our collective ring to the
 * peer (written by us only, like head); a sleeping peer is woken as for
 * new bytes. */
static mc_status_t shm_signal(mc_tl_t *tl, int peer, int slot, uint64_t value)
{
    mc_status_t st;
    mc_shm_peer_t *pe = shm_sig_peer(tl, peer, slot, "signal", &st);
    if (!pe) return st;
    if (pe->gone) return MC_ERR_PEER_FAILED;
    __atomic_store_n(&pe->tx[MC_CH_COLL].ring.hdr->sig[slot], value,
                     __ATOMIC_RELEASE);
    shm_bell(pe->bell);
    return MC_OK;
}

/* A gone peer's word is final (its stores are visible once it is known
 * dead), so it is still read. */
static mc_status_t shm_peek(mc_tl_t *tl, int peer, int slot, uint64_t *value_p)
{
    mc_status_t st;
    mc_shm_peer_t *pe = shm_sig_peer(tl, peer, slot, "peek", &st);
    if (!pe || !value_p) return pe ? MC_ERR_INVALID_ARG : st;
    uint64_t v = __atomic_load_n(&pe->rx[MC_CH_COLL].ring.hdr->sig[slot],
                                 __ATOMIC_ACQUIRE);
    pe->armed[slot] = !pe->gone;
    pe->armed_val[slot] = v;
    *value_p = v;
    return MC_OK;
}

/* A completed send's bytes are in the peer's ring, which outlives this
 * process: held at once. */
static mc_status_t shm_sent_held(mc_tl_t *tl, int peer, int ch)
{
    (void)tl, (void)peer, (void)ch;
    return MC_OK;
}

/* Nothing to acknowledge: the writer reads nothing back. */
static mc_status_t shm_ack_now(mc_tl_t *tl, int peer, int ch)
{
    (void)tl, (void)peer, (void)ch;
    return MC_OK;
}

/* See transport.h. What was written is in the peer's ring; the rest goes
 * from a copy. */
static int shm_release_send(mc_tl_t *tl, int peer, int ch, mc_xfer_t *x,
                            int drop, mc_status_t st)
{
    if (!tl || !x || peer < 0 || peer >= tl->size || tl->peer_idx[peer] < 0 ||
        ch < 0 || ch >= MC_NUM_CHANNELS || tl->busy)
        return mc_err(MC_ERR_INVALID_ARG, "shm release_send: bad call");
    mc_shm_stream_t *s = &tl->peers[tl->peer_idx[peer]]->tx[ch];
    return mc_tl_q_release(&tl->owned, &s->q, &s->qtail, x, 1, drop, st);
}

static int shm_release_recv(mc_tl_t *tl, int peer, int ch, mc_xfer_t *x,
                            mc_status_t st)
{
    if (!tl || !x || peer < 0 || peer >= tl->size || tl->peer_idx[peer] < 0 ||
        ch < 0 || ch >= MC_NUM_CHANNELS || tl->busy)
        return mc_err(MC_ERR_INVALID_ARG, "shm release_recv: bad call");
    mc_shm_stream_t *s = &tl->peers[tl->peer_idx[peer]]->rx[ch];
    return mc_tl_q_release(&tl->owned, &s->q, &s->qtail, x, 0, 0, st);
}

/* Gone as soon as that is known, even while its streams still drain. */
static mc_status_t shm_peer_status(mc_tl_t *tl, int peer)
{
    if (!tl || peer < 0 || peer >= tl->size || tl->peer_idx[peer] < 0)
        return mc_err(MC_ERR_INVALID_ARG, "shm peer_status: bad peer %d", peer);
    mc_shm_peer_t *pe = tl->peers[tl->peer_idx[peer]];
    if (pe->adding) return MC_INPROGRESS;
    if (pe->gone) return pe->fail_st ? pe->fail_st : MC_ERR_PEER_FAILED;
    int64_t now = 0;
    const char *why = pe->up ? shm_check_peer(pe, &now) : NULL;
    if (!why) return MC_OK;
    shm_mark_gone(tl, pe, why, 0);
    return MC_ERR_PEER_FAILED;
}

/* ------------------------------------------------------------------------ */
/* setup                                                                    */
/* ------------------------------------------------------------------------ */

/* Tell the process in pe's slot that we leave it, and release what we hold
 * of it (its mapping, its pidfd). Its rings in our segment are abandoned:
 * they are never reused. */
static void shm_peer_release(mc_tl_t *tl, mc_shm_peer_t *pe)
{
    if (pe->role == SHM_GUEST && pe->link)
        __atomic_store_n(&pe->link->bell.closed, 1, __ATOMIC_RELEASE);
    else if (pe->up && tl->dir)
        __atomic_store_n(&tl->dir[pe->rank].dropped, 1, __ATOMIC_RELEASE);
    if (pe->bell) shm_bell(pe->bell); /* let a sleeper see it */
    if (pe->map) munmap(pe->map, pe->map_len);
    shm_unwatch_pid(pe);
    pe->map = NULL;
}

static void shm_destroy(mc_tl_t *tl)
{
    if (!tl) return;
    if (tl->ctrl) __atomic_store_n(&tl->ctrl->bell.closed, 1, __ATOMIC_RELEASE);
    for (int i = 0; tl->peers && i < tl->npeers; i++) {
        mc_shm_peer_t *pe = tl->peers[i];
        if (pe->role == SHM_GUEST && pe->link)
            __atomic_store_n(&pe->link->bell.closed, 1, __ATOMIC_RELEASE);
        if (pe->bell) shm_bell(pe->bell); /* let a sleeper see `closed` */
        if (pe->map) munmap(pe->map, pe->map_len);
        shm_unwatch_pid(pe);
        free(pe);
    }
    mc_tl_owned_free(&tl->owned);
    if (tl->seg) munmap(tl->seg, tl->seg_len);
    if (tl->linked) shm_unlink(tl->name);
    free(tl->adds);
    free(tl->peers);
    free(tl->peer_idx);
    free(tl);
}

/* A peer slot for rank r (index peer_idx[r]); room for it in adds too. */
static mc_status_t shm_peer_new(mc_tl_t *tl, int r, mc_shm_peer_t **pe_p)
{
    if (tl->npeers == tl->peers_cap) {
        int cap = tl->peers_cap ? tl->peers_cap * 2 : 4;
        mc_shm_peer_t **p = realloc(tl->peers, (size_t)cap * sizeof(*p));
        if (!p) return mc_err(MC_ERR_NO_MEMORY, "shm: out of memory");
        tl->peers = p;
        mc_shm_peer_t **a = realloc(tl->adds, (size_t)cap * sizeof(*a));
        if (!a) return mc_err(MC_ERR_NO_MEMORY, "shm: out of memory");
        tl->adds = a;
        tl->peers_cap = cap;
    }
    mc_shm_peer_t *pe = calloc(1, sizeof(*pe));
    if (!pe) return mc_err(MC_ERR_NO_MEMORY, "shm: out of memory");
    pe->rank = r;
    pe->pidfd = -1;
    pe->stat_fd = -1;
    for (int ch = 0; ch < MC_NUM_CHANNELS; ch++) {
        pe->tx[ch].peer = pe;
        pe->tx[ch].is_send = 1;
        pe->rx[ch].peer = pe;
    }
    tl->peer_idx[r] = tl->npeers;
    tl->peers[tl->npeers++] = pe;
    *pe_p = pe;
    return MC_OK;
}

static mc_status_t shm_create(const mc_tl_params_t *p, mc_tl_t **tl_p)
{
    mc_status_t st;
    if (!p || !tl_p)
        return mc_err(MC_ERR_INVALID_ARG, "shm create: NULL argument");
    if (p->size < 1 || p->size > MC_SHM_MAX_RANKS || p->rank < 0 ||
        p->rank >= p->size)
        return mc_err(MC_ERR_INVALID_ARG,
                      "shm create: rank %d / size %d out of range (size <= "
                      "%d)",
                      p->rank, p->size, MC_SHM_MAX_RANKS);
    if (!p->store || !p->peers)
        return mc_err(MC_ERR_INVALID_ARG, "shm create: NULL store or peers");
    if (p->peers[p->rank])
        return mc_err(MC_ERR_INVALID_ARG,
                      "shm create: rank %d lists itself as a peer", p->rank);

    const uint64_t caps[MC_NUM_CHANNELS] = {shm_coll_ring_bytes(),
                                            MC_SHM_P2P_BYTES};
    uint64_t rings = 0; /* one direction of one pair */
    for (int ch = 0; ch < MC_NUM_CHANNELS; ch++)
        rings += MC_SHM_RING_CTRL_BYTES + caps[ch];
    mc_tl_t *tl = calloc(1, sizeof(*tl));
    if (!tl) return mc_err(MC_ERR_NO_MEMORY, "shm create: out of memory");
    tl->rank = p->rank;
    tl->size = p->size;
    tl->uid = p->uid;
    tl->inc = p->incarnation;
    tl->store = p->store;
    tl->deadline_us = mc_deadline_us(p->timeout_ms);
    tl->peer_idx = malloc((size_t)p->size * sizeof(*tl->peer_idx));
    if (!tl->peer_idx) {
        st = mc_err(MC_ERR_NO_MEMORY, "shm create: out of memory");
        goto err_free;
    }
    uint64_t dir_off = MC_SHM_PAGE;
    uint64_t dir_bytes = (uint64_t)p->size * sizeof(mc_shm_dirent_t);
    uint64_t total = shm_round_up(dir_off + dir_bytes, MC_SHM_PAGE);
    for (int r = 0; r < p->size; r++) {
        tl->peer_idx[r] = -1;
        if (!p->peers[r]) continue;
        mc_shm_peer_t *pe;
        MC_CHECK_GOTO(shm_peer_new(tl, r, &pe), st, err_free);
        pe->inc = p->peer_incarnation ? p->peer_incarnation[r] : 0;
        pe->role = shm_role(tl, r, pe->inc);
        /* rings and link pages, < 2^16 * 2^32: no overflow */
        if (pe->role == SHM_CLASSIC) total += rings;
        if (pe->role == SHM_HOST) total += 2 * rings + MC_SHM_PAGE;
    }
    if (total > MC_SHM_SEG_MAX || total > SIZE_MAX) {
        st = mc_err(MC_ERR_INVALID_ARG,
                    "shm create: segment of %" PRIu64 " bytes is too big",
                    total);
        goto err_free;
    }
    shm_seg_name(p->uid, p->rank, tl->inc, tl->name);

    int fd = shm_open(tl->name, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) {
        st = mc_err(MC_ERR_IO, "shm create: rank %d: shm_open(%s): %s", p->rank,
                    tl->name, strerror(errno));
        goto err_free;
    }
    tl->linked = 1;
    int e = ftruncate(fd, (off_t)total) < 0 ? errno : 0;
    if (!e) {
        /* reserve every page now (tmpfs would SIGBUS on a later touch) */
        do
            e = posix_fallocate(fd, 0, (off_t)total);
        while (e == EINTR);
    }
    if (e) {
        close(fd);
        st = mc_err(MC_ERR_IO,
                    "shm create: rank %d: sizing %s to %" PRIu64
                    " bytes: %s (is /dev/shm big enough? see "
                    "MOONCAKE_SHM_RING_BYTES)",
                    p->rank, tl->name, total, strerror(e));
        goto err_unlink;
    }
    void *seg =
        mmap(NULL, (size_t)total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    e = errno;
    close(fd);
    if (seg == MAP_FAILED) {
        st = mc_err(MC_ERR_IO, "shm create: rank %d: mmap %s: %s", p->rank,
                    tl->name, strerror(e));
        goto err_unlink;
    }
    tl->seg = seg;
    tl->seg_len = (size_t)total;

    /* Lay out the rings we hold and the directory that tells each peer
     * where they are: classic peers' rings we consume; for a guest, both
     * directions and its link page. */
    mc_shm_ctrl_t *c = seg;
    mc_shm_dirent_t *dir = (mc_shm_dirent_t *)((uint8_t *)seg + dir_off);
    tl->dir = dir;
    uint64_t off = shm_round_up(dir_off + dir_bytes, MC_SHM_PAGE);
    for (int i = 0; i < tl->npeers; i++) {
        mc_shm_peer_t *pe = tl->peers[i];
        if (pe->role == SHM_GUEST) continue;
        mc_shm_dirent_t *d = &dir[pe->rank];
        d->inc = pe->inc;
        for (int ch = 0; ch < MC_NUM_CHANNELS; ch++) {
            d->in[ch] = (mc_shm_ringref_t){off, caps[ch]};
            mc_shm_ring_init(&pe->rx[ch].ring, (uint8_t *)seg + off, caps[ch]);
            off += MC_SHM_RING_CTRL_BYTES + caps[ch];
        }
        if (pe->role != SHM_HOST) continue;
        d->link = off;
        pe->link = (mc_shm_link_t *)((uint8_t *)seg + off);
        off += MC_SHM_PAGE;
        for (int ch = 0; ch < MC_NUM_CHANNELS; ch++) {
            d->out[ch] = (mc_shm_ringref_t){off, caps[ch]};
            mc_shm_ring_init(&pe->tx[ch].ring, (uint8_t *)seg + off, caps[ch]);
            off += MC_SHM_RING_CTRL_BYTES + caps[ch];
        }
        /* the guest sleeps on the link's bell and leaves through it */
        pe->bell = &pe->link->bell;
        pe->closed[0] = &pe->link->bell.closed;
    }
    c->version = MC_SHM_VERSION;
    c->rank = p->rank;
    c->size = p->size;
    c->pid = (int32_t)getpid();
    c->inc = tl->inc;
    shm_pidns(&c->pidns_dev, &c->pidns_ino);
    c->seg_bytes = total;
    c->dir_off = dir_off;
    __atomic_store_n(&c->magic, MC_SHM_MAGIC, __ATOMIC_RELEASE);
    tl->ctrl = c;

    char key[MC_SHM_KEY_MAX], val[MC_SHM_NAME_MAX + 16];
    shm_key(key, p->rank, tl->inc);
    int n = snprintf(val, sizeof(val), "%s %d", tl->name, (int)getpid());
    st = mc_store_set(p->store, key, val, (size_t)n);
    if (st != MC_OK) goto err_unmap;
    *tl_p = tl;
    return MC_OK;

err_unmap:
    munmap(tl->seg, tl->seg_len);
    tl->seg = NULL;
    tl->ctrl = NULL;
    tl->dir = NULL;
    for (int i = 0; i < tl->npeers; i++) {
        /* they pointed into the segment */
        tl->peers[i]->bell = NULL;
        tl->peers[i]->link = NULL;
    }
err_unlink:
    shm_unlink(tl->name);
    tl->linked = 0;
err_free:
    shm_destroy(tl);
    return st;
}

/* Open and map the segment `name` of peer pe (pid from the store) and check
 * its control block. Sets pe->map on success. A peer publishes its store
 * entry only after creating the segment, and unlinks it only once every
 * peer mapped it or when it gives up: a missing segment is a peer that
 * gave up (or an older one's leftover entry), never one still coming. */
static mc_status_t shm_map_segment(mc_tl_t *tl, mc_shm_peer_t *pe,
                                   const char *name, int pid)
{
    int fd = shm_open(name, O_RDWR, 0);
    if (fd < 0 && errno == ENOENT)
        return mc_err(MC_ERR_PEER_FAILED,
                      "shm connect: rank %d: peer %d (pid %d) published "
                      "segment %s but it is gone: that process gave up or "
                      "ended",
                      tl->rank, pe->rank, pid, name);
    if (fd < 0)
        return mc_err(MC_ERR_IO,
                      "shm connect: rank %d: open peer %d's segment %s: %s",
                      tl->rank, pe->rank, name, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) < 0 || sb.st_size < (off_t)(2 * MC_SHM_PAGE) ||
        (uint64_t)sb.st_size > MC_SHM_SEG_MAX) {
        close(fd);
        return mc_err(MC_ERR_PROTOCOL,
                      "shm connect: rank %d: peer %d's segment %s has a bad "
                      "size",
                      tl->rank, pe->rank, name);
    }
    size_t seg_len = (size_t)sb.st_size;
    void *map = mmap(NULL, seg_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED)
        return mc_err(MC_ERR_IO, "shm connect: rank %d: mmap %s: %s", tl->rank,
                      name, strerror(e));
    pe->map = map;
    pe->map_len = seg_len;

    /* checked once here: the directory is then found at MC_SHM_PAGE, never
     * by reading dir_off again from memory the peer can write */
    const mc_shm_ctrl_t *c = map;
    if (__atomic_load_n(&c->magic, __ATOMIC_ACQUIRE) != MC_SHM_MAGIC ||
        c->version != MC_SHM_VERSION || c->rank != pe->rank ||
        c->size != tl->size || c->pid != pid || c->inc != pe->inc ||
        c->seg_bytes != seg_len || c->dir_off != MC_SHM_PAGE ||
        c->dir_off + (uint64_t)tl->size * sizeof(mc_shm_dirent_t) > seg_len)
        return mc_err(MC_ERR_PROTOCOL,
                      "shm connect: rank %d: peer %d's segment %s does not "
                      "match (magic, version, rank, size, incarnation or pid)",
                      tl->rank, pe->rank, name);
    if (!shm_same_pidns(c->pidns_dev, c->pidns_ino))
        return mc_err(MC_ERR_UNSUPPORTED,
                      "shm connect: rank %d: peer %d is in another pid "
                      "namespace; its liveness cannot be checked (use tcp)",
                      tl->rank, pe->rank);
    return MC_OK;
}

/* Watch pid for pe; fails if it is gone already. */
static mc_status_t shm_watch_pid(mc_tl_t *tl, mc_shm_peer_t *pe, int pid)
{
    shm_unwatch_pid(pe);
    pe->pid = (pid_t)pid;
    pe->exiting_us = pe->next_exit_check_us = 0;
    /* only where /proc names our pid namespace's pids (not a parent's
     * /proc left mounted after unshare -p): -1, no such look */
    char path[64], self[32];
    ssize_t sl = readlink("/proc/self", self, sizeof(self) - 1);
    if (sl > 0) self[sl] = '\0';
    snprintf(path, sizeof(path), "%d", (int)getpid());
    if (sl > 0 && strcmp(self, path) == 0) {
        snprintf(path, sizeof(path), "/proc/%d/stat", pid);
        pe->stat_fd = open(path, O_RDONLY | O_CLOEXEC);
    }
    pe->pidfd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
    if (pe->pidfd < 0 && errno == ESRCH)
        pe->why = "exited";
    else
        pe->why = shm_peer_gone(pe);
    if (pe->why)
        return mc_err(MC_ERR_PEER_FAILED,
                      "shm connect: rank %d: peer %d (pid %d) %s", tl->rank,
                      pe->rank, pid, pe->why);
    return MC_OK;
}

/* Read pe's store entry "<segment name> <pid>". wait_ms < 0 waits forever;
 * 0 looks without waiting (MC_INPROGRESS if absent). */
static mc_status_t shm_read_entry(mc_tl_t *tl, mc_shm_peer_t *pe,
                                  int64_t wait_ms, char name[MC_SHM_NAME_MAX],
                                  int *pid_p)
{
    char key[MC_SHM_KEY_MAX], val[MC_SHM_NAME_MAX + 32], want[MC_SHM_NAME_MAX];
    size_t len;
    shm_key(key, pe->rank, pe->inc);
    mc_status_t st;
    if (!wait_ms) {
        int exists = 0;
        st = mc_store_check(tl->store, key, &exists);
        if (st == MC_OK && !exists) return MC_INPROGRESS;
    }
    st = mc_store_get(tl->store, key, wait_ms, val, sizeof(val) - 1, &len);
    if (st == MC_ERR_TIMEOUT && !wait_ms) return MC_INPROGRESS;
    if (st != MC_OK) {
        char why[256];
        snprintf(why, sizeof(why), "%s", mc_last_error());
        return mc_err(st,
                      "shm connect: rank %d: peer %d did not publish "
                      "its segment: %s",
                      tl->rank, pe->rank, why);
    }
    int pid = 0;
    shm_seg_name(tl->uid, pe->rank, pe->inc, want);
    if (len >= sizeof(val) - 1 ||
        (val[len] = '\0', sscanf(val, "%63s %d", name, &pid) != 2) ||
        strcmp(name, want) != 0 || pid <= 0)
        return mc_err(MC_ERR_PROTOCOL,
                      "shm connect: rank %d: bad store entry %s for peer %d "
                      "(want \"%s <pid>\")",
                      tl->rank, key, pe->rank, want);
    *pid_p = pid;
    return MC_OK;
}

/* Classic peer: map its segment and find the rings it holds for us. */
static mc_status_t shm_map_peer(mc_tl_t *tl, mc_shm_peer_t *pe)
{
    char name[MC_SHM_NAME_MAX];
    int pid = 0;
    MC_CHECK(shm_read_entry(tl, pe, shm_connect_wait_ms(tl), name, &pid));
    MC_CHECK(shm_map_segment(tl, pe, name, pid));
    mc_shm_ctrl_t *c = pe->map;
    mc_shm_dirent_t *d =
        &((mc_shm_dirent_t *)((uint8_t *)pe->map + MC_SHM_PAGE))[tl->rank];
    for (int ch = 0; ch < MC_NUM_CHANNELS; ch++) {
        uint64_t off, cap;
        if (!shm_ringref_ok(&d->in[ch], pe->map_len, &off, &cap))
            return mc_err(MC_ERR_PROTOCOL,
                          "shm connect: rank %d: peer %d has no valid ring "
                          "for us on channel %d (do the ranks disagree on "
                          "who is a peer?)",
                          tl->rank, pe->rank, ch);
        mc_shm_ring_init(&pe->tx[ch].ring, (uint8_t *)pe->map + off, cap);
    }
    pe->bell = &c->bell;
    pe->closed[0] = &c->bell.closed;
    pe->closed[1] = &d->dropped;
    MC_CHECK(shm_watch_pid(tl, pe, pid));
    pe->up = 1;
    return MC_OK;
}

/*
 * Guest side: attach to the link host pe holds for us (see "Bootstrap").
 * wait_ms: how long to wait for its store entry (connect), 0 not at all
 * (add_peer, from progress). Returns MC_OK once attached, MC_INPROGRESS
 * if the host is not there yet (wait_ms 0 only), or a failure; anything
 * half done is undone.
 */
static mc_status_t shm_attach(mc_tl_t *tl, mc_shm_peer_t *pe, int64_t wait_ms)
{
    char name[MC_SHM_NAME_MAX];
    int pid = 0;
    mc_status_t st = shm_read_entry(tl, pe, wait_ms, name, &pid);
    if (st != MC_OK) return st;
    st = shm_map_segment(tl, pe, name, pid);
    if (st != MC_OK) goto unmap;
    mc_shm_ctrl_t *c = pe->map;
    mc_shm_dirent_t *d =
        &((mc_shm_dirent_t *)((uint8_t *)pe->map + MC_SHM_PAGE))[tl->rank];
    uint64_t inc = __atomic_load_n(&d->inc, __ATOMIC_RELAXED);
    uint64_t link = __atomic_load_n(&d->link, __ATOMIC_RELAXED);
    if (inc != tl->inc) {
        st = mc_err(MC_ERR_PEER_FAILED,
                    "shm: rank %d (incarnation %" PRIu64
                    "): peer %d (incarnation %" PRIu64
                    ") expects incarnation %" PRIu64 " of this rank",
                    tl->rank, tl->inc, pe->rank, pe->inc, inc);
        goto unmap;
    }
    if (link == 0 || link % MC_SHM_PAGE || link > pe->map_len ||
        pe->map_len - link < MC_SHM_PAGE) {
        st = mc_err(MC_ERR_PROTOCOL,
                    "shm: rank %d: peer %d holds no link for us (do the "
                    "ranks disagree on who is a peer?)",
                    tl->rank, pe->rank);
        goto unmap;
    }
    for (int ch = 0; ch < MC_NUM_CHANNELS; ch++) {
        uint64_t ioff, icap, ooff, ocap;
        if (!shm_ringref_ok(&d->in[ch], pe->map_len, &ioff, &icap) ||
            !shm_ringref_ok(&d->out[ch], pe->map_len, &ooff, &ocap)) {
            st = mc_err(MC_ERR_PROTOCOL,
                        "shm: rank %d: peer %d has no valid rings for us on "
                        "channel %d",
                        tl->rank, pe->rank, ch);
            goto unmap;
        }
        /* we produce into what it consumes, and the other way round */
        mc_shm_ring_init(&pe->tx[ch].ring, (uint8_t *)pe->map + ioff, icap);
        mc_shm_ring_init(&pe->rx[ch].ring, (uint8_t *)pe->map + ooff, ocap);
    }
    mc_shm_link_t *lk = (mc_shm_link_t *)((uint8_t *)pe->map + link);
    if (__atomic_load_n(&lk->attached, __ATOMIC_ACQUIRE)) {
        st = mc_err(MC_ERR_PROTOCOL,
                    "shm: rank %d: peer %d's link for us is taken already",
                    tl->rank, pe->rank);
        goto unmap;
    }
    pe->bell = &c->bell;
    pe->closed[0] = &c->bell.closed;
    pe->closed[1] = &d->dropped;
    st = shm_watch_pid(tl, pe, pid);
    if (st != MC_OK) goto unmap;
    pe->link = lk;
    lk->inc = tl->inc;
    lk->pid = (int32_t)getpid();
    shm_pidns(&lk->pidns_dev, &lk->pidns_ino);
    __atomic_store_n(&lk->attached, 1, __ATOMIC_RELEASE);
    shm_bell(&c->bell); /* a host in connect waits for this */
    pe->up = 1;
    return MC_OK;

unmap:
    shm_unwatch_pid(pe);
    if (pe->map) munmap(pe->map, pe->map_len);
    pe->map = NULL;
    pe->bell = NULL;
    pe->closed[0] = pe->closed[1] = NULL;
    pe->why = NULL;
    for (int ch = 0; ch < MC_NUM_CHANNELS; ch++)
        pe->tx[ch].ring = pe->rx[ch].ring = (mc_shm_ring_t){0};
    return st;
}

/* Host side: has guest pe attached? 1 yes (now up), 0 not yet, or a
 * failure. */
static mc_status_t shm_guest_check(mc_tl_t *tl, mc_shm_peer_t *pe, int *up_p)
{
    mc_shm_link_t *lk = pe->link;
    *up_p = 0;
    if (!__atomic_load_n(&lk->attached, __ATOMIC_ACQUIRE)) return MC_OK;
    if (lk->inc != pe->inc || lk->pid <= 0)
        return mc_err(MC_ERR_PROTOCOL,
                      "shm connect: rank %d: a process (pid %d, incarnation "
                      "%" PRIu64 ") attached as peer %d (incarnation %" PRIu64
                      ")",
                      tl->rank, (int)lk->pid, lk->inc, pe->rank, pe->inc);
    if (!shm_same_pidns(lk->pidns_dev, lk->pidns_ino))
        return mc_err(MC_ERR_UNSUPPORTED,
                      "shm connect: rank %d: peer %d is in another pid "
                      "namespace; its liveness cannot be checked (use tcp)",
                      tl->rank, pe->rank);
    MC_CHECK(shm_watch_pid(tl, pe, lk->pid));
    pe->up = 1;
    *up_p = 1;
    return MC_OK;
}

/* "1 3 4": guests not attached yet, for the timeout message. */
static void shm_missing(const mc_tl_t *tl, char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = '\0';
    for (int i = 0; i < tl->npeers; i++) {
        const mc_shm_peer_t *pe = tl->peers[i];
        if (pe->up) continue;
        int m = snprintf(buf + n, cap - n, "%s%d", n ? " " : "", pe->rank);
        if (m < 0 || (size_t)m >= cap - n) {
            if (cap > 5) snprintf(buf + cap - 5, 5, " ...");
            return;
        }
        n += (size_t)m;
    }
}

static mc_status_t shm_connect(mc_tl_t *tl)
{
    if (!tl) return mc_err(MC_ERR_INVALID_ARG, "shm connect: NULL transport");
    if (tl->connect_called)
        return mc_err(MC_ERR_INVALID_ARG, "shm connect: called twice");
    tl->connect_called = 1;
    mc_status_t st = MC_OK;
    char key[48];
    int nclassic = 0, nguests = 0;
    for (int i = 0; i < tl->npeers; i++) {
        mc_shm_peer_t *pe = tl->peers[i];
        if (pe->role == SHM_CLASSIC) {
            nclassic++;
            MC_CHECK_GOTO(shm_map_peer(tl, pe), st, err_unlink);
        } else if (pe->role == SHM_GUEST) {
            /* a newer co-joiner hosts us: it published at create */
            MC_CHECK_GOTO(shm_attach(tl, pe, shm_connect_wait_ms(tl)), st,
                          err_unlink);
        } else {
            nguests++;
        }
    }

    /* Unlink only after every classic peer has mapped our segment... */
    if (!tl->inc || nclassic) {
        snprintf(key, sizeof(key), "shm/%d/mapped", tl->rank);
        MC_CHECK_GOTO(mc_store_set(tl->store, key, "1", 1), st, err_unlink);
    }
    for (int i = 0; i < tl->npeers; i++) {
        char one[8];
        size_t len;
        if (tl->peers[i]->role != SHM_CLASSIC) continue;
        snprintf(key, sizeof(key), "shm/%d/mapped", tl->peers[i]->rank);
        st = mc_store_get(tl->store, key, shm_remaining_ms(tl), one,
                          sizeof(one), &len);
        if (st != MC_OK) {
            char why[256];
            snprintf(why, sizeof(why), "%s", mc_last_error());
            st = mc_err(st,
                        "shm connect: rank %d: peer %d did not map our "
                        "segment: %s",
                        tl->rank, tl->peers[i]->rank, why);
            goto err_unlink;
        }
    }
    /* ... and every guest has attached to it. Attaching rings our bell. */
    mc_shm_bell_t *b = &tl->ctrl->bell;
    while (nguests > 0) {
        for (int i = 0; i < tl->npeers; i++) {
            mc_shm_peer_t *pe = tl->peers[i];
            int up = 0;
            if (pe->role != SHM_HOST || pe->up) continue;
            MC_CHECK_GOTO(shm_guest_check(tl, pe, &up), st, err_unlink);
            nguests -= up;
        }
        if (!nguests) break;
        int64_t now = mc_now_us();
        if (now >= tl->deadline_us) {
            char miss[256];
            shm_missing(tl, miss, sizeof(miss));
            st = mc_err(MC_ERR_TIMEOUT,
                        "shm connect: rank %d (incarnation %" PRIu64
                        "): peers did not attach in time: %s",
                        tl->rank, tl->inc, miss);
            MC_LOG(MC_LOG_ERROR, "%s", mc_last_error());
            goto err_unlink;
        }
        int64_t us = tl->deadline_us - now;
        if (us > MC_SHM_ATTACH_POLL_US) us = MC_SHM_ATTACH_POLL_US;
        __atomic_store_n(&b->sleeping, 1, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        uint32_t v = __atomic_load_n(&b->doorbell, __ATOMIC_ACQUIRE);
        int any = 0;
        for (int i = 0; i < tl->npeers && !any; i++)
            any = tl->peers[i]->role == SHM_HOST && !tl->peers[i]->up &&
                  __atomic_load_n(&tl->peers[i]->link->attached,
                                  __ATOMIC_ACQUIRE);
        if (!any) (void)shm_sleep(tl, &b, &v, 1, us);
        __atomic_store_n(&b->sleeping, 0, __ATOMIC_RELAXED);
    }
    shm_unlink(tl->name);
    tl->linked = 0;
    tl->connected = 1;
    return MC_OK;

err_unlink:
    /* Peers that mapped it keep their mapping; nothing new can open it. */
    shm_unlink(tl->name);
    tl->linked = 0;
    return st;
}

/* ------------------------------------------------------------------------ */
/* rejoin                                                                   */
/* ------------------------------------------------------------------------ */

/* Drop everything of pe's current process: its queued transfers become
 * orphans (progress fails them), it is told we left, its memory goes. */
static void shm_peer_discard(mc_tl_t *tl, mc_shm_peer_t *pe)
{
    mc_xfer_t **tail = &tl->orphans;
    while (*tail)
        tail = &(*tail)->next;
    for (int ch = 0; ch < MC_NUM_CHANNELS; ch++) {
        mc_shm_stream_t *ss[2] = {&pe->tx[ch], &pe->rx[ch]};
        for (int k = 0; k < 2; k++) {
            if (!ss[k]->q) continue;
            *tail = ss[k]->q;
            tail = &ss[k]->qtail->next;
            ss[k]->q = ss[k]->qtail = NULL;
        }
    }
    if (pe->gone && !pe->settled) tl->nunsettled--;
    if (pe->adding) shm_add_remove(tl, pe);
    shm_peer_release(tl, pe);
    for (int ch = 0; ch < MC_NUM_CHANNELS; ch++) {
        pe->tx[ch] = (mc_shm_stream_t){.peer = pe, .is_send = 1};
        pe->rx[ch] = (mc_shm_stream_t){.peer = pe};
    }
    pe->up = pe->gone = pe->broken = pe->settled = 0;
    pe->fail_st = MC_OK;
    pe->why = NULL;
    pe->pid = 0;
    pe->bell = NULL;
    pe->closed[0] = pe->closed[1] = NULL;
    pe->link = NULL;
    pe->next_check_us = 0;
    pe->armed[0] = pe->armed[1] = 0; /* the new process's words start at 0 */
}

/* The add of pe failed: it is gone with status st; nothing to drain. */
static void shm_add_fail(mc_tl_t *tl, mc_shm_peer_t *pe, mc_status_t st,
                         const char *why)
{
    MC_LOG(MC_LOG_WARN,
           "shm: rank %d: adding peer %d (incarnation %" PRIu64 ") failed: %s",
           tl->rank, pe->rank, pe->inc, why);
    shm_add_remove(tl, pe);
    pe->gone = 1;
    pe->fail_st = st;
    pe->why = st == MC_ERR_TIMEOUT ? "did not attach in time"
                                   : "could not be attached";
    for (int ch = 0; ch < MC_NUM_CHANNELS; ch++)
        pe->rx[ch].eof = !pe->rx[ch].q; /* queued ones end in settle */
    tl->nunsettled++;
}

static mc_status_t shm_add_peer(mc_tl_t *tl, int peer, uint64_t inc,
                                int64_t timeout_ms)
{
    if (!tl) return mc_err(MC_ERR_INVALID_ARG, "shm add_peer: NULL transport");
    if (!tl->connected)
        return mc_err(MC_ERR_INVALID_ARG,
                      "shm add_peer: rank %d: transport not connected",
                      tl->rank);
    if (tl->busy)
        return mc_err(MC_ERR_INVALID_ARG,
                      "shm add_peer: rank %d: called from a completion "
                      "callback",
                      tl->rank);
    if (peer < 0 || peer >= tl->size || peer == tl->rank)
        return mc_err(MC_ERR_INVALID_ARG, "shm add_peer: rank %d: bad peer %d",
                      tl->rank, peer);
    if (inc == 0 || shm_role(tl, peer, inc) != SHM_GUEST)
        return mc_err(MC_ERR_INVALID_ARG,
                      "shm add_peer: rank %d (incarnation %" PRIu64
                      "): peer %d incarnation %" PRIu64
                      " is not newer than this process",
                      tl->rank, tl->inc, peer, inc);
    mc_shm_peer_t *pe;
    if (tl->peer_idx[peer] >= 0) {
        pe = tl->peers[tl->peer_idx[peer]];
        if (pe->up && !pe->gone)
            MC_LOG(MC_LOG_INFO,
                   "shm: rank %d: dropping peer %d (incarnation %" PRIu64
                   ") for incarnation %" PRIu64,
                   tl->rank, peer, pe->inc, inc);
        shm_peer_discard(tl, pe);
    } else {
        MC_CHECK(shm_peer_new(tl, peer, &pe));
    }
    pe->role = SHM_GUEST;
    pe->inc = inc;
    pe->adding = 1;
    pe->add_deadline_us = mc_deadline_us(timeout_ms);
    pe->add_next_us = 0;
    pe->add_backoff_us = MC_SHM_ADD_RETRY_MIN_US;
    tl->adds[tl->nadds++] = pe;
    return MC_OK;
}

const mc_tl_ops_t mc_tl_shm_ops = {
    .size = sizeof(mc_tl_ops_t),
    .name = "shm",
    .create = shm_create,
    .connect = shm_connect,
    .post_send = shm_post_send,
    .post_recv = shm_post_recv,
    .progress = shm_progress,
    .wait = shm_wait,
    .peer_status = shm_peer_status,
    .add_peer = shm_add_peer,
    .signal = shm_signal,
    .peek = shm_peek,
    .sent_held = shm_sent_held,
    .ack_now = shm_ack_now,
    .release_send = shm_release_send,
    .release_recv = shm_release_recv,
    .mem_reg = mc_tl_stub_mem_reg,
    .mem_dereg = mc_tl_stub_mem_dereg,
    .put = mc_tl_stub_put,
    .destroy = shm_destroy,
};
