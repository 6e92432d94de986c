/*
 * The communicator: creation, requests, the operation queue, framing and
 * matching of messages, and the progress loop.
 *
 * Protocol (see docs/design.md for the long form)
 * - Every message is a frame: a 64-byte mc_hdr_t followed by `len` payload
 *   bytes, on one of two ordered streams per peer: MC_CH_COLL carries the
 *   frames of collectives, MC_CH_P2P tagged point-to-point messages and
 *   ABORT notices.
 * - Collectives are numbered by `seq` in issue order and run one at a time
 *   by whichever thread holds exec_lock (a blocking caller inline, or the
 *   progress thread for non-blocking calls). Every data frame carries the
 *   operation's descriptor; the receiver compares it with its own before it
 *   accepts the payload. A difference fails the operation with
 *   MC_ERR_MISMATCH, and the failing rank sends ABORT(seq, text) to every
 *   peer over the p2p stream (which is always read), so ranks that were
 *   waiting on other frames fail too instead of hanging.
 * - Each stream always has a header receive posted. A header for a later
 *   seq than the running operation is held (the stream stalls: backpressure,
 *   no buffering); one for an earlier seq belongs to a failed operation and
 *   its payload is discarded.
 * - Transfer completion callbacks only queue an event; events are processed
 *   right after the transport's progress call, under plock, so there is no
 *   recursion between callbacks and posts.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "chunk.h"
#include "coll.h"
#include "engine.h"
#include "etcd_member.h"
#include "liveness.h"
#include "mc_log.h"
#include "reduce.h"
#include "transport/transport.h"

#define MC_TL_MAX 2
#define MC_FRAME_BLOCK 64
/* A failed attempt's sends still under way after this long go on from a
 * copy in a detached frame block (drain_detach_sends). */
#define MC_DRAIN_GRACE_US 100000
/* The coordinator waits this long at most for the p2p stream of a rank it
 * counts dead to end (ag_try_decide); the TCP transport ends such a stream
 * after MOONCAKE_TCP_CLOSE_GRACE_MS (2 s) at the latest. */
#define MC_AG_EOF_WAIT_US 3000000
#define MC_AG_PROBE_MIN_US 1000000 /* see ag_probe_wait_us */
#define MC_HOST_MAX 512

typedef struct mc_comm mc_comm_t;
typedef struct mc_request mc_request_t;

/* A deferred completion: transfer callbacks push these; processed after
 * the transport's progress call returns. */
typedef struct mc_ev {
    struct mc_ev *next;
    int queued;
    mc_comm_t *comm;
    void (*fn)(struct mc_ev *ev);
} mc_ev_t;

enum { F_POSTED = 1, F_PAYLOAD, F_DONE };

/* A frame whose payload is at most this large is sent as one transfer,
 * header and payload copied together: a peer then never sees its header
 * without its payload (a SIGSTOP between the two would leave the receiver
 * mid-frame until it resumes), and the stream publishes once. */
#define MC_FRAME_INLINE 192

typedef struct mc_frame {
    mc_hdr_t hdr; /* send: the header we send */
    mc_xfer_t hx, px;
    /* send, small payload: header and payload as one transfer */
    uint8_t inl[sizeof(mc_hdr_t) + MC_FRAME_INLINE];
    void *buf;
    size_t bytes;
    int peer;
    uint32_t step;
    int is_send;
    int state;
    mc_status_t status;
    struct mc_frame *rnext; /* per-peer FIFO of posted receives */
} mc_frame_t;

/* A block of a failed attempt's frames with sends that a stopped peer may
 * never take (the drain, run_coll): no later attempt reuses it, and it
 * stays allocated until the transport is done with its transfers. */
typedef struct mc_pinned {
    struct mc_pinned *next;
    mc_frame_t *block; /* MC_FRAME_BLOCK frames */
    void *sink;        /* copies: where the rest of their payloads come from */
} mc_pinned_t;

typedef struct mc_unexp {
    struct mc_unexp *next;
    int src;
    uint32_t tag;
    size_t len;
    void *data;
    int complete;
    int drop;              /* unlinked: free when its payload completes */
    mc_request_t *claimed; /* a receive matched it before it completed */
} mc_unexp_t;

/* Incoming side of one (peer, channel) stream. */
enum {
    IN_HDR = 1,
    IN_HAVE_HDR,
    IN_PAYLOAD,
    IN_DISCARD,
    IN_ABORT,
    IN_CTRL,
    IN_DEAD
};

typedef struct mc_in {
    mc_ev_t ev;
    int peer, ch, state;
    mc_hdr_t hdr;
    mc_xfer_t hx, px;
    uint64_t discard_left;
    char abuf[MC_ABORT_MSG_MAX + 1];
    mc_frame_t *rq_head, *rq_tail; /* coll: receives of the running op */
    mc_frame_t *cur;               /* coll: frame whose payload is moving */
    mc_request_t *p2p_req;         /* p2p: receive whose payload is moving */
    mc_unexp_t *p2p_unexp;         /* p2p: unexpected message being read */
    uint8_t *cbuf;                 /* p2p: control message being read */
    uint8_t *sink;                 /* coll: a failed attempt's payload */
    size_t sink_cap;
    int64_t rndv_until; /* p2p: a large message's header held until then
                           for its receive (p2p_match), 0: not held so */
    int rndv_over;      /* p2p: this header has had its chance to wait */
} mc_in_t;

/* Control message of the view agreement (MC_KIND_CTRL on the p2p stream,
 * which is always read). Followed by five byte maps of `size` entries:
 * the sender's view's active slots (PROPOSE: the proposed ones), ranks it
 * has evidence are dead (PROPOSE: the ranks asked to accept it), ranks it
 * suspects, and (REPORT) the active slots of the proposal it accepted and
 * the ranks asked to accept that one. */
enum {
    CT_REPORT = 1,
    CT_VIEW = 2,
    CT_NOQUORUM = 3,
    CT_PROPOSE = 4, /* embedded membership: a coordinator's decision, to be
                       accepted before it is a view (ag_two_phase) */
    CT_ACCEPT = 5
};
typedef struct mc_ctrl {
    uint32_t type;
    int32_t coord;       /* REPORT: the sender's coordinator; VIEW: decider */
    uint64_t epoch;      /* the sender's view (VIEW: the announced view) */
    uint64_t view_start; /* first seq of that view */
    int64_t last_ended;  /* REPORT: the last seq that ended on the sender */
    uint32_t admit;      /* REPORT: the sender waits to admit joiners after
                            last_ended (its next op has not started) */
    uint32_t entered;    /* REPORT: the sender entered the frame barrier of
                            op last_ended + 1 in this view holding its whole
                            result (ag_entered, the entry rule) */
    uint32_t rno;        /* REPORT: the sender's report number; PROPOSE: the
                            receiver's report the proposal rests on */
    uint32_t pid;        /* PROPOSE, ACCEPT: the proposal; REPORT: the one
                            the sender accepted */
    int32_t acc_from;    /* REPORT: who proposed that one (-1: none) */
    uint32_t pad_;
    uint64_t acc_start;  /* REPORT: its first seq */
} mc_ctrl_t;

typedef struct mc_ctrl_out {
    struct mc_ctrl_out *next;
    mc_hdr_t hdr;
    mc_xfer_t hx, px;
    uint8_t body[]; /* mc_ctrl_t + maps */
} mc_ctrl_out_t;

/* Outgoing ABORT notice to one peer (fire and forget). */
typedef struct mc_abort_out {
    mc_hdr_t hdr;
    char msg[MC_ABORT_MSG_MAX];
    mc_xfer_t hx, px;
    int busy;
} mc_abort_out_t;

/* Outgoing LEFT frame to one peer (left_notices). */
typedef struct mc_left_out {
    mc_hdr_t hdr;
    mc_xfer_t hx;
} mc_left_out_t;

enum { R_COLL = 1, R_SEND, R_RECV };

struct mc_request {
    mc_ev_t ev;
    mc_comm_t *comm;
    int kind;
    int refs; /* user + engine */
    int p2p_counted; /* a send counted in comm->p2p_sending, and on
                        comm->sends (s_prev/s_next; plock) */
    volatile int done;
    mc_status_t status;
    char err[MC_ABORT_MSG_MAX + 128];
    struct mc_request *next;
    /* collectives */
    mc_coll_args_t args;
    uint64_t seq;
    int64_t t_issue; /* mc_now_us() when queued (0: no thread could read it) */
    int admit_point; /* mc_comm_admit: joiners may enter after this op */
    int admitted;    /* joiners the admission round after it added */
    /* point-to-point */
    int peer, source;
    int64_t p2p_deadline; /* not finished past this, it times out (set at
                             the first wait or test: p2p_expire) */
    uint32_t tag;
    void *buf;
    size_t bytes;
    mc_hdr_t shdr;
    mc_xfer_t hx, px;
    struct mc_request *s_prev, *s_next;
    int p2p_held; /* its buffer could not be given back (p2p_expire) */
    uint64_t p2p_post; /* send: its post number (comm->p2p_posts) */
    /* completion callback (under the communicator's dlock) */
    mc_request_cb_t cb;
    void *cb_arg;
    struct mc_request *cb_next;
    /* p2p with a callback or mc_request_watch: on comm->p2p_watch (plock),
     * holding a reference, until the progress thread finds it done
     * (p2p_watch_round); `watched` (dlock) once it was handed to the list */
    struct mc_request *w_next;
    int watched;
};

struct mc_cctx {
    mc_comm_t *comm;
    int data_done; /* the algorithm finished (FT: before the final barrier) */
    int passed;    /* FT: past the final barrier, so the op completes in
                      this view whatever happens now (cx_fail ignored) */
    int entered;   /* FT: in the frame barrier with a result that needs no
                      peer any more (the entry rule, ag_entered) */
    int slot;      /* this attempt ran the shared slots: its word is
                      published (slot_decide) */
    int root_failed; /* this attempt failed alike on every rank (inactive
                        root) and met at the barrier: done in the old view,
                        it still fails with rf_why */
    char rf_why[MC_ABORT_MSG_MAX];
    mc_request_t *req;
    const mc_coll_args_t *args; /* what the algorithm sees (mc_cx_args) */
    mc_coll_args_t avg_args;    /* an fp16/fp8 AVG's, as a SUM (avg_premul) */
    uint64_t seq;
    uint64_t epoch;    /* view of this attempt */
    int vrank, nv;     /* virtual rank and size over the active slots */
    const int *vslots; /* [nv] slot of each virtual rank */
    const int *vof;    /* [size] virtual rank of each slot, -1 inactive */
    int64_t deadline_us;
    uint64_t dcount, desc;
    mc_status_t failed;
    int remote_abort;
    char err[MC_ABORT_MSG_MAX];
    mc_frame_t **blocks;
    int nblocks, nframes;
    uint64_t flags; /* FT: OR of the final barrier's flag words (FLAG_*) */
    /* pair confirmation (mc_cx_pair_exchange): the algorithm exchanged
     * frames over two ranks; the flags this rank sends in its frames' tag
     * field and the OR of those its frames from the peer carried */
    int pair;
    uint64_t tx_flags, rx_flags;
    int send_lost; /* a send of this attempt failed (or was refused): its
                      peer never got our whole part, so never returned it */
    /* lazy keeping of an in-place input (mc_cx_save) */
    int lazy;            /* saves go to comm->backup range by range */
    const char *save_in; /* the caller's buffer (sendbuf == recvbuf) */
    size_t save_len;
    /* results left in staging memory, copied out once the op is decided
     * (mc_cx_on_commit) */
    mc_commit_fn_t commit;
};

enum { FLAG_JOIN = 1 }; /* the coordinator has joiners to admit */

struct mc_comm {
    int rank, size;
    char name[128];
    int64_t timeout_ms;
    mc_tune_t tune;
    uint64_t uid;
    int ntl;
    mc_tl_t *tl[MC_TL_MAX];
    const mc_tl_ops_t *tlops[MC_TL_MAX];
    int8_t *peer_tl; /* index into tl[] per peer; -1 for self */
    int oversub;     /* more local ranks than cores: sleep sooner */

    pthread_mutex_t plock; /* transports, streams, matching, cx */
    mc_ev_t *ev_head, *ev_tail;
    mc_in_t *in[MC_NUM_CHANNELS]; /* [ch][peer] */
    mc_abort_out_t *abort_out;    /* [peer * MC_NUM_CHANNELS + ch] */
    mc_left_out_t *left_out;      /* [peer] */
    uint64_t *left_epoch;         /* [peer]: its latest LEFT notice's */
    uint64_t *left_seq;           /*   (epoch, seq) */
    uint64_t *fin_epoch;          /* [peer]: its latest collective frame */
    uint64_t *fin_seq;            /*   read whole (or dropped): (epoch, seq) */
    uint8_t *left_wait;           /* [peer]: left_notices waits on its frame */
    uint32_t *p2p_sending;        /* [peer]: user sends on its p2p stream */
    uint64_t *p2p_rest; /* [peer]: the post number of a released send whose
                           rest may still be queued to it (0: none) */
    uint64_t p2p_posts; /* user sends posted (their post numbers) */
    uint64_t *abort_seq;          /* [peer]: ABORT received for a later op */
    mc_status_t *abort_why;
    char (*abort_msg)[MC_ABORT_MSG_MAX + 1];
    uint8_t *peer_dead;
    uint8_t *p2p_dead;
    uint8_t *p2p_eof; /* [peer]: its p2p stream itself has ended (read out) */
    int64_t ag_start_us; /* when this rank's current agreement began */
    mc_cctx_t cx;
    mc_pinned_t *pinned; /* detached frame blocks (drain) */
    int cx_active;
    uint64_t exec_seq; /* seq of the running or next operation */
    /* The last attempt that failed here, (epoch, seq): its frames that
     * still arrive are discarded, so a peer still sending them can drain
     * (an attempt never re-runs in the same epoch). */
    uint64_t dead_att_epoch, dead_att_seq;
    mc_request_t *precv_head, *precv_tail; /* posted unmatched receives */
    mc_unexp_t *unexp_head, *unexp_tail;
    mc_request_t *sends; /* user sends handed to a transport (plock) */
    size_t unexp_bytes, unexp_max;
    size_t rndv_min;   /* MOONCAKE_P2P_RNDV_MIN: messages this large wait */
    int64_t rndv_us;   /* MOONCAKE_P2P_RNDV_US for their receive first */
    int rndv_held;     /* streams holding a header so (p2p_rndv_scan) */
    char *discard;
    size_t discard_len;
    void *scratch[4];
    size_t scratch_len[4];

    pthread_mutex_t qlock; /* op queue */
    pthread_cond_t qcond;
    mc_request_t *qhead, *qtail;
    uint64_t next_seq;
    int stopping, thread_started; /* stopping: atomic, set by destroy */
    int api_calls;   /* atomic: threads inside mc_request_wait/test/watch/
                        on_complete, which destroy waits out before it
                        frees anything */
    int cb_self_free; /* destroyed from a completion callback: the callback
                         thread frees the communicator as it ends */
    int tl_quiet;     /* plock: destroy made its last progress pass; a send
                         still waited for fails (nothing reads it again) */
    int64_t async_grace_us; /* MOONCAKE_ASYNC_GRACE_US */
    /* p2p requests with a completion callback, which nobody may ever wait
     * for: the progress thread drives them while no caller's thread waits
     * (p2p_watch_round). The list under plock; p2p_watch_n atomic (the
     * thread's sleep reads it under qlock). */
    mc_request_t *p2p_watch;
    int p2p_watch_n;
    int waiters; /* atomic: threads inside request_wait */
    uint64_t watch_adds;      /* plock: p2p_watch_add's count */
    uint64_t watch_adds_seen; /* the progress thread's own, and below */
    int64_t watch_checked;    /* the list's last p2p_watch_check */
    int64_t watch_walked;     /* ... that walked it */
    int64_t watch_min_deadline; /* the earliest deadline on it (or less) */
    int64_t watch_idle_since;
    int64_t watch_linger;     /* it keeps looking until then (its own) */
    int thread_deep; /* qlock: the progress thread sleeps until signalled */
    pthread_t thread;
    pthread_mutex_t exec_lock;

    pthread_mutex_t dlock; /* completion notification */
    pthread_cond_t dcond;
    /* completion callbacks: queue and thread (under dlock) */
    mc_request_t *cb_head, *cb_tail;
    pthread_cond_t cbcond;
    pthread_t cb_thread;
    int cb_started, cb_stopping;

    pthread_mutex_t elock;
    char last_err[1024];

    /* View (see docs/fault-model). Changed only by the thread that holds
     * exec_lock, under plock. */
    int ft, auto_recover;
    int left_fanout; /* MOONCAKE_FT_LEFT_FANOUT (-1: every peer) */
    int ft_signals; /* final barrier through transport signals, where all
                     * peers have them (MOONCAKE_FT_SIGNALS) */
    int ft_pair;    /* two ranks: the algorithm's exchange confirms, no
                     * final barrier (MOONCAKE_FT_PAIR) */
    int ft_entry;   /* the entry rule (ag_entered, MOONCAKE_FT_ENTRY) */
    uint64_t epoch;
    uint8_t *active; /* [size] */
    int nactive;
    int *vslots; /* [size]: active slots, ascending, nactive used */
    int *vof;    /* [size]: slot -> virtual rank, -1 when inactive */
    int evicted;
    int need_recover; /* manual mode: failure seen, view not yet accepted */
    /* MOONCAKE_FT=0: a peer failed, because of a dead rank, an operation
     * this rank completed: the members no longer run the same sequence, so
     * every collective from now on fails at once (plock) */
    int ft0_broken;
    char ft0_why[MC_ABORT_MSG_MAX + 1];
    uint64_t view_changes;
    int *failed_last; /* [size] ranks removed by the last view change */
    int nfailed_last;
    /* view of the last successful collective (mc_comm_op_view) */
    int op_valid;
    uint64_t op_epoch;
    uint8_t *op_active;
    uint8_t *att_active; /* [size] view of the running attempt */

    /* Agreement (plock). */
    uint64_t view_start; /* first seq of the current view */
    uint8_t *suspect;    /* [size] peers this rank suspects (timeouts) */
    int ag_on;           /* this rank is in an agreement for c->epoch */
    int ag_wake;         /* a peer started one for c->epoch */
    int ag_noq;          /* the coordinator found no quorum */
    uint64_t noq_epoch;  /* the view in which this rank last had none */
    uint64_t shrink_epoch; /* mc_comm_shrink calls in this view so far */
    uint32_t shrink_try;   /* (their keys in the store: shrink_check) */
    uint64_t ag_sig;     /* what our last report said (resend on change) */
    uint64_t *rep_epoch; /* [size] epoch of the latest report from a peer */
    int *rep_coord;      /* [size] */
    int64_t *rep_last;   /* [size] */
    uint8_t *rep_maps;   /* [size][2 * size]: dead, suspect */
    uint8_t *rep_admit;  /* [size] REPORT.admit */
    uint8_t *rep_entered; /* [size] REPORT.entered */
    /* two-phase commit of a view (ag_two_phase; embedded membership) */
    uint64_t ag_round;   /* agreement rounds so far (a lock lasts one) */
    uint32_t ag_rno;     /* number of our latest report */
    uint32_t *rep_rno;   /* [size] REPORT.rno */
    int32_t *rep_acc_from; /* [size] REPORT.acc_from */
    uint64_t *rep_acc_start; /* [size] */
    uint8_t *rep_acc_maps;   /* [size][2 * size]: set, acceptors */
    int acc_from;        /* the proposal we accepted in acc_epoch: proposer */
    uint32_t acc_pid;
    uint64_t acc_epoch, acc_start, acc_round;
    uint8_t *acc_set;    /* [size] its active slots */
    uint8_t *acc_q;      /* [size] the ranks asked to accept it */
    int prop_on;         /* coordinator: a proposal of ours is out */
    int prop_carried;    /* its value is another coordinator's */
    int64_t acc_us;      /* when we accepted (the lock lasts a round) */
    uint32_t prop_pid;
    uint64_t prop_start;
    uint8_t *prop_set;   /* [size] */
    uint8_t *prop_q;     /* [size] the ranks asked to accept it */
    uint8_t *prop_ok;    /* [size] accepted by that member */
    uint32_t *prop_rno;  /* [size] the report the proposal to it rests on */
    int64_t *dead_us;    /* [size] when this rank first saw it dead
                            (peer_failed; in a round: ag_try_decide) */
    uint64_t *sent_view; /* [size] epoch of the view last sent to a peer */
    int nv_pending;      /* a newer view heard of, adopt at a safe point */
    uint64_t nv_epoch, nv_start;
    int nv_from;
    uint8_t *nv_active; /* [size] */
    uint8_t *ag_tmp;    /* [size] */
    mc_ctrl_out_t *ctrl_out;
    size_t ctrl_len; /* sizeof(mc_ctrl_t) + 5 * size */
    mc_stage_t *stage; /* staging memory shared on this host (stage.h) */
    /* shared slots (mc_cx_slot_run): our region and the peers'
     * mapped ones */
    mc_stage_t *slots;
    uint8_t *slot_own;
    uint8_t **slot_map;
    int *slot_vs;
    uint64_t slot_prev[2]; /* slot_key of the attempt that last wrote our
                              slot w */
    size_t slot_max; /* MOONCAKE_SLOT_MAX; 0: none */
    size_t slot_split_min; /* MOONCAKE_SLOT_SPLIT_MIN; 0: never */
    unsigned stage_warned; /* staging failures logged (warn once) */
    uint64_t stage_epoch;  /* view of the last staged call */
    size_t stage_hwm;      /* largest region need of a staged call */
    void *backup;    /* input of an in-place op, for a re-run */
    size_t backup_cap;
    void *avg_buf;   /* an fp16/fp8 AVG's input divided by the view's size
                        (avg_premul) */
    size_t avg_cap;
    size_t (*saved)[2]; /* lazy keeping: (offset, length) ranges saved */
    size_t nsaved, saved_cap;
    int saved_all;   /* the whole input is in backup */
    int saved_oom;   /* a range could not be recorded: no re-run */
    mc_live_t *live;      /* heartbeats: silent peers become suspects */
    int64_t live_checked; /* mc_now_us() of the last look */
    uint8_t *live_tmp;    /* [size] */

    /* Joins (docs/fault-model 6; FT only). A joiner posts a request in the
     * store; the lowest active rank's watcher thread sees it; the final
     * barrier of the next operation tells every member (flag word); after
     * that operation the members agree on a view that adds the joiner,
     * starting at the next seq. */
    mc_store_h store;    /* the communicator's prefix store (FT) */
    uint64_t *inc;       /* [size] incarnation of each active slot */
    int8_t tl_kind[2];   /* index into tl[] of TL_SHM, TL_TCP; -1 if none */
    mc_transport_kind_t tkind; /* cfg.transport */
    char host[MC_HOST_MAX];
    int64_t join_poll_ms;
    int admit_phase;     /* plock: after an op, waiting to admit joiners */
    int admit_auto;      /* joiners enter after any collective, not only
                            after mc_comm_admit */
    mc_emember_t *em;    /* etcd membership (MOONCAKE_ETCD_ENDPOINTS) */
    uint8_t *em_tmp;     /* [size] */
    int64_t em_retry_us; /* plock: next view commit attempt */
    int em_view_logged;
    int *joined_last;    /* [size] ranks added by the last view change */
    int njoined_last;
    pthread_mutex_t jlock; /* leaf lock: the fields below */
    pthread_cond_t jcond;
    int jw_started, jw_stop;
    pthread_t jw_thread;
    int jw_coord;        /* this rank is the lowest active one */
    int jw_any; /* some jw_nonce may be set (__atomic; written under jlock):
                   join_flag takes no lock for every op otherwise */
    int64_t jw_seen;     /* requests read so far ("joins" counter) */
    uint64_t *jw_nonce;  /* [size] pending request per slot, 0: none */
    uint64_t *jw_etcd;   /* [size] watcher thread: etcd's registrations */
    uint64_t *jw_used;   /* [size] jlock: requests admitted (etcd mode) */
    int jw_logged;
};

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */
/* ------------------------------------------------------------------------ */

static void comm_set_error(mc_comm_t *c, const char *msg)
{
    if (!c) return;
    pthread_mutex_lock(&c->elock);
    snprintf(c->last_err, sizeof(c->last_err), "%s", msg);
    pthread_mutex_unlock(&c->elock);
}

/* Argument error: thread-local text + the communicator's last error. */
static mc_status_t comm_err(mc_comm_t *c, mc_status_t st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static mc_status_t comm_err(mc_comm_t *c, mc_status_t st, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    comm_set_error(c, buf);
    return mc_err(st, "%s", buf);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* Frame steps are printed as phase.step.index (see algo/algo.h). */
#define STEP_FMT "%u.%u.%u"
#define STEP_ARGS(s) ((s) >> 28), (((s) >> 16) & 0xfffu), ((s)&0xffffu)

static int is_rooted(mc_coll_t c)
{
    return c == MC_COLL_BROADCAST || c == MC_COLL_REDUCE ||
           c == MC_COLL_GATHER || c == MC_COLL_SCATTER;
}

static int is_reduction(mc_coll_t c)
{
    return c == MC_COLL_ALLREDUCE || c == MC_COLL_REDUCE ||
           c == MC_COLL_REDUCE_SCATTER || c == MC_COLL_REDUCE_SCATTERV;
}

/* Text like "allreduce(count=10, dtype=float32, op=sum)". */
static void describe(char *out, size_t cap, int coll, int dtype, int op,
                     int root, uint64_t count)
{
    if (coll == MC_COLL_BARRIER && op == MC_MAX) {
        snprintf(out, cap, "admit()"); /* mc_comm_admit */
        return;
    }
    int n = snprintf(out, cap, "%s(count=%llu, dtype=%s", mc_coll_name(coll),
                     (unsigned long long)count, mc_dtype_name(dtype));
    if (n < 0 || (size_t)n >= cap) return;
    if (is_reduction(coll))
        n += snprintf(out + n, cap - (size_t)n, ", op=%s", mc_redop_name(op));
    if (n < 0 || (size_t)n >= cap) return;
    if (is_rooted(coll))
        n += snprintf(out + n, cap - (size_t)n, ", root=%d", root);
    if (n < 0 || (size_t)n >= cap) return;
    snprintf(out + n, cap - (size_t)n, ")");
}

/* ------------------------------------------------------------------------ */
/* Events and progress                                                      */
/* ------------------------------------------------------------------------ */

static void xfer_cb(mc_xfer_t *x)
{
    mc_ev_t *ev = x->arg;
    if (ev->queued) return;
    ev->queued = 1;
    ev->next = NULL;
    mc_comm_t *c = ev->comm;
    if (c->ev_tail)
        c->ev_tail->next = ev;
    else
        c->ev_head = ev;
    c->ev_tail = ev;
}

static void drain_events(mc_comm_t *c)
{
    while (c->ev_head) {
        mc_ev_t *ev = c->ev_head;
        c->ev_head = ev->next;
        if (!c->ev_head) c->ev_tail = NULL;
        ev->queued = 0;
        ev->fn(ev);
    }
}

static int p2p_rndv_scan(mc_comm_t *c);

/* Progress every transport once and process what completed. plock held. */
static int progress_locked(mc_comm_t *c)
{
    if (c->tl_quiet) return 0; /* destroyed: past its last progress pass */
    int n = 0;
    for (int i = 0; i < c->ntl; i++) {
        n += c->tlops[i]->progress(c->tl[i]);
        if (c->ev_head) {
            drain_events(c);
            n++;
        }
    }
    if (c->rndv_held > 0 && p2p_rndv_scan(c)) {
        drain_events(c); /* what the scan's reads completed at once */
        n++;
    }
    return n;
}

/* Spin, then yield, then sleep in the transports; `idle_since` is the time
 * progress last happened. plock NOT held. */
static void idle_wait(mc_comm_t *c, int64_t idle_since, int64_t now)
{
    int64_t idle = now - idle_since;
    int64_t spin_us = c->oversub ? 2 : 50;
    int64_t yield_us = c->oversub ? 20 : 500;
    if (idle < spin_us) {
        for (int i = 0; i < 16; i++)
            cpu_relax();
    } else if (idle < spin_us + yield_us || c->ntl == 0) {
        sched_yield();
    } else {
        pthread_mutex_lock(&c->plock);
        int64_t t = c->ntl > 1 ? 100 : 1000;
        /* a held header is looked at again when its wait ends: the
         * transports know nothing of it */
        if (c->rndv_held > 0 && t > 100) t = 100;
        for (int i = 0; i < c->ntl && !c->tl_quiet; i++)
            c->tlops[i]->wait(c->tl[i], t);
        pthread_mutex_unlock(&c->plock);
    }
}

/* ------------------------------------------------------------------------ */
/* Request lifecycle                                                        */
/* ------------------------------------------------------------------------ */

static void req_release(mc_request_t *r)
{
    if (__atomic_sub_fetch(&r->refs, 1, __ATOMIC_ACQ_REL) != 0) return;
    free(r->args.counts);
    free(r->args.displs);
    free(r->args.scounts);
    free(r->args.sdispls);
    free(r);
}

static void cb_enqueue(mc_comm_t *c, mc_request_t *r);

static void req_complete(mc_request_t *r, mc_status_t st, const char *err)
{
    mc_comm_t *c = r->comm;
    r->status = st;
    if (st < 0 && err) {
        snprintf(r->err, sizeof(r->err), "%s", err);
        comm_set_error(c, err);
    }
    pthread_mutex_lock(&c->dlock);
    __atomic_store_n(&r->done, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&c->dcond);
    if (r->cb) cb_enqueue(c, r);
    pthread_mutex_unlock(&c->dlock);
    req_release(r); /* the engine's reference */
}

/* Queue r's callback (dlock held); the queue holds a reference. */
static void cb_enqueue(mc_comm_t *c, mc_request_t *r)
{
    __atomic_add_fetch(&r->refs, 1, __ATOMIC_ACQ_REL);
    r->cb_next = NULL;
    if (c->cb_tail)
        c->cb_tail->cb_next = r;
    else
        c->cb_head = r;
    c->cb_tail = r;
    pthread_cond_signal(&c->cbcond);
}

static void comm_free(mc_comm_t *c);

/* Runs completion callbacks outside every engine lock, in order. */
static void *cb_thread_main(void *arg)
{
    mc_comm_t *c = arg;
    pthread_mutex_lock(&c->dlock);
    for (;;) {
        while (!c->cb_head && !c->cb_stopping)
            pthread_cond_wait(&c->cbcond, &c->dlock);
        mc_request_t *r = c->cb_head;
        if (!r) break; /* stopping and drained */
        c->cb_head = r->cb_next;
        if (!c->cb_head) c->cb_tail = NULL;
        pthread_mutex_unlock(&c->dlock);
        r->cb(r, r->status, r->cb_arg);
        req_release(r);
        pthread_mutex_lock(&c->dlock);
    }
    int self_free = c->cb_self_free;
    pthread_mutex_unlock(&c->dlock);
    if (self_free) comm_free(c); /* mc_comm_destroy from a callback */
    return NULL;
}

static void start_thread(mc_comm_t *c);

/* A p2p request progresses only inside calls (its own wait or test, other
 * requests', collectives). One that only a callback watches (a torch
 * future) would never end on a quiet communicator, not even at its
 * deadline: the progress thread drives it (p2p_watch_round) and checks
 * its deadline and peer (p2p_expire), the deadline counting from here. */
static void p2p_watch_add(mc_comm_t *c, mc_request_t *r)
{
    /* r holds a reference for the list already (mc_request_on_complete
     * took it while r was surely alive: once dlock is released its
     * callback may run and free r but for that reference) */
    pthread_mutex_lock(&c->plock);
    /* past tl_quiet, destroy has failed every p2p request */
    int add = !c->tl_quiet && !__atomic_load_n(&r->done, __ATOMIC_ACQUIRE);
    if (add) {
        /* its deadline counts from here (or from an earlier wait) */
        if (!r->p2p_deadline)
            r->p2p_deadline = c->timeout_ms < 0
                                  ? INT64_MAX
                                  : mc_now_us() + c->timeout_ms * 1000;
        if (!c->p2p_watch || r->p2p_deadline < c->watch_min_deadline)
            c->watch_min_deadline = r->p2p_deadline;
        r->w_next = c->p2p_watch;
        c->p2p_watch = r;
        c->watch_adds++;
        __atomic_add_fetch(&c->p2p_watch_n, 1, __ATOMIC_ACQ_REL);
    }
    pthread_mutex_unlock(&c->plock);
    if (!add) {
        req_release(r);
        return;
    }
    /* wake the thread only from its long sleep: while it watches, it
     * looks at least every 10 ms anyway, and a wake-up per call would
     * cost a context switch on both sides */
    pthread_mutex_lock(&c->qlock);
    int wake = !c->thread_started || c->thread_deep;
    pthread_mutex_unlock(&c->qlock);
    if (wake) start_thread(c);
}

/* Whether r goes on the watch list: a send or receive not finished and not
 * handed to it yet. Takes the list's reference while the caller's keeps r
 * alive (after the unlock a callback may free it); dlock held. */
static int watch_take(mc_request_t *r)
{
    if (r->kind == R_COLL || r->watched ||
        __atomic_load_n(&r->done, __ATOMIC_ACQUIRE))
        return 0;
    r->watched = 1;
    __atomic_add_fetch(&r->refs, 1, __ATOMIC_ACQ_REL);
    return 1;
}

mc_status_t mc_request_watch(mc_request_h r)
{
    if (!r) return mc_err(MC_ERR_INVALID_ARG, "mc_request_watch: NULL request");
    /* finished: its communicator may be gone already */
    if (__atomic_load_n(&r->done, __ATOMIC_ACQUIRE)) return MC_OK;
    mc_comm_t *c = r->comm;
    /* counted as mc_request_test is: a destroy from another thread frees
     * nothing while we are here; once it began, it fails the request */
    __atomic_add_fetch(&c->api_calls, 1, __ATOMIC_SEQ_CST);
    if (!__atomic_load_n(&c->stopping, __ATOMIC_SEQ_CST)) {
        pthread_mutex_lock(&c->dlock);
        int watch = watch_take(r);
        pthread_mutex_unlock(&c->dlock);
        if (watch) p2p_watch_add(c, r);
    }
    __atomic_sub_fetch(&c->api_calls, 1, __ATOMIC_SEQ_CST);
    return MC_OK;
}

mc_status_t mc_request_on_complete(mc_request_h r, mc_request_cb_t cb,
                                   void *arg)
{
    if (!r || !cb)
        return mc_err(MC_ERR_INVALID_ARG,
                      "mc_request_on_complete: NULL request or callback");
    mc_comm_t *c = r->comm;
    mc_status_t st = MC_OK;
    int watch = 0;
    /* counted: a destroy from another thread runs the queued callbacks and
     * frees the communicator only once we are out */
    __atomic_add_fetch(&c->api_calls, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_lock(&c->dlock);
    if (r->cb) {
        st = mc_err(MC_ERR_INVALID_ARG,
                    "mc_request_on_complete: a callback is already set");
    } else if (!c->cb_started &&
               pthread_create(&c->cb_thread, NULL, cb_thread_main, c) != 0) {
        st = mc_err(MC_ERR_IO, "mc_request_on_complete: cannot start the "
                               "callback thread");
    } else {
        c->cb_started = 1;
        r->cb = cb;
        r->cb_arg = arg;
        if (__atomic_load_n(&r->done, __ATOMIC_ACQUIRE))
            cb_enqueue(c, r);
        else
            watch = watch_take(r);
    }
    pthread_mutex_unlock(&c->dlock);
    if (watch) p2p_watch_add(c, r);
    __atomic_sub_fetch(&c->api_calls, 1, __ATOMIC_SEQ_CST);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Incoming streams                                                         */
/* ------------------------------------------------------------------------ */

static void in_event(mc_ev_t *ev);
static void coll_match(mc_comm_t *c, mc_in_t *in);
static void p2p_match(mc_comm_t *c, mc_in_t *in);
static void cx_fail(mc_comm_t *c, mc_status_t st, int remote, const char *fmt,
                    ...) __attribute__((format(printf, 4, 5)));

static void peer_failed(mc_comm_t *c, int peer, mc_status_t st);
static void p2p_peer_failed(mc_comm_t *c, int peer);
static mc_frame_t *cx_frame(mc_cctx_t *cx, mc_fh_t h);
static int frame_done(mc_frame_t *f);

static void in_post(mc_comm_t *c, mc_in_t *in, mc_xfer_t *x, void *buf,
                    size_t len)
{
    x->buf = buf;
    x->len = len;
    x->cb = xfer_cb;
    x->arg = &in->ev;
    x->off = 0;
    x->next = NULL;
    x->status = MC_INPROGRESS;
    int t = c->peer_tl[in->peer];
    mc_status_t st = c->tlops[t]->post_recv(c->tl[t], in->peer, in->ch, x);
    if (st < 0) {
        in->state = IN_DEAD;
        if (in->ch == MC_CH_COLL) {
            peer_failed(c, in->peer, st);
        } else {
            c->p2p_eof[in->peer] = 1; /* refused: nothing more to read */
            p2p_peer_failed(c, in->peer);
        }
    }
}

static void in_post_hdr(mc_comm_t *c, mc_in_t *in)
{
    in->state = IN_HDR;
    in_post(c, in, &in->hx, &in->hdr, sizeof(in->hdr));
}

/* A collective frame of the peer's has arrived whole (read or dropped):
 * the pair confirmation's record (pair_peer_may_have_returned). */
static void in_coll_fin(mc_comm_t *c, const mc_in_t *in)
{
    if (in->ch != MC_CH_COLL) return;
    c->fin_epoch[in->peer] = in->hdr.epoch; /* frames come in order */
    c->fin_seq[in->peer] = in->hdr.seq;
}

static void in_discard_step(mc_comm_t *c, mc_in_t *in)
{
    if (in->discard_left == 0) {
        in_coll_fin(c, in);
        in_post_hdr(c, in);
        return;
    }
    size_t n = in->discard_left < c->discard_len ? (size_t)in->discard_left
                                                 : c->discard_len;
    in->state = IN_DISCARD;
    in_post(c, in, &in->px, c->discard, n);
}

static void in_discard(mc_comm_t *c, mc_in_t *in)
{
    in->discard_left = in->hdr.len;
    in_discard_step(c, in);
}

/* A failed attempt's receive whose payload is under way: the rest of it
 * goes to a sink, not the caller's memory, so the drain need not wait for
 * a peer that may never send it (a stopped one); the stream stays in step
 * (the bytes are still read, whenever they come). Both transports copy
 * into x->buf + x->off at every step, and only under plock. 0 if there is
 * no memory for the sink (then the drain waits as before). plock held. */
static int in_redirect(mc_comm_t *c, mc_in_t *in)
{
    mc_xfer_t *x = &in->px;
    mc_frame_t *f = in->cur;
    (void)c;
    if (in->sink_cap < x->len) {
        void *p = realloc(in->sink, x->len);
        if (!p) return 0;
        in->sink = p;
        in->sink_cap = x->len;
    }
    x->buf = in->sink;
    in->cur = NULL;
    f->status = MC_ERR_PEER_FAILED;
    f->state = F_DONE;
    in->discard_left = x->len; /* IN_DISCARD: ends with this transfer */
    in->state = IN_DISCARD;
    return 1;
}

static void handle_abort(mc_comm_t *c, int peer, uint64_t seq, uint64_t epoch,
                         mc_status_t why, const char *text)
{
    if (epoch < c->epoch) return; /* about an attempt in an older view */
    /* the sender's status travels in the count field */
    if (why >= 0 || why < MC_ERR_ROOT_FAILED) why = MC_ERR_MISMATCH;
    if (c->cx_active && c->cx.seq == seq) {
        cx_fail(c, why, 1, "%s", text);
    } else if (seq >= c->exec_seq) {
        c->abort_seq[peer] = seq;
        c->abort_why[peer] = why;
        snprintf(c->abort_msg[peer], sizeof(c->abort_msg[peer]), "%s", text);
    } else if (!c->ft && !c->ft0_broken &&
               (why == MC_ERR_PEER_FAILED || why == MC_ERR_TIMEOUT)) {
        /* An op that ended here failed on that peer: without views the
         * group cannot line up again, and the peer may never call the op
         * this rank now waits in. Fail it and all later ones at once. */
        c->ft0_broken = 1;
        snprintf(c->ft0_why, sizeof(c->ft0_why),
                 "rank %d failed seq %llu, which rank %d completed (%.200s); with "
                 "fault tolerance off (MOONCAKE_FT=0) the communicator "
                 "cannot continue",
                 peer, (unsigned long long)seq, c->rank, text);
        if (c->cx_active)
            cx_fail(c, MC_ERR_PEER_FAILED, 0, "%s at seq %llu: %s",
                    mc_coll_name(c->cx.req->args.coll),
                    (unsigned long long)c->cx.seq, c->ft0_why);
    }
    /* otherwise: that operation already ended here; nothing to do */
}

static void handle_ctrl(mc_comm_t *c, int from, const uint8_t *body);

static void in_protocol_error(mc_comm_t *c, mc_in_t *in, const char *why)
{
    MC_LOG(MC_LOG_ERROR,
           "rank %d: protocol error on %s stream from rank %d: %s; "
           "treating the peer as failed",
           c->rank, in->ch == MC_CH_COLL ? "collective" : "p2p", in->peer, why);
    in->state = IN_DEAD;
    c->p2p_eof[in->peer] = 1; /* nothing to wait for on its p2p stream */
    peer_failed(c, in->peer, MC_ERR_PROTOCOL);
}

static void in_event(mc_ev_t *ev)
{
    mc_in_t *in = (mc_in_t *)ev;
    mc_comm_t *c = ev->comm;
    mc_xfer_t *x = in->state == IN_HDR ? &in->hx : &in->px;
    if (in->state == IN_DEAD || in->state == IN_HAVE_HDR) return;
    if (x->status == MC_INPROGRESS) return;
    if (x->status != MC_OK) {
        int st = in->state;
        in->state = IN_DEAD;
        if (st == IN_PAYLOAD && in->cur) {
            in->cur->status = x->status;
            in->cur->state = F_DONE;
            in->cur = NULL;
        }
        if (in->ch == MC_CH_COLL) {
            peer_failed(c, in->peer, (mc_status_t)x->status);
        } else {
            c->p2p_eof[in->peer] = 1;
            p2p_peer_failed(c, in->peer);
        }
        return;
    }
    switch (in->state) {
    case IN_HDR: {
        mc_hdr_t *h = &in->hdr;
        if (h->magic != MC_WIRE_MAGIC || h->src != in->peer) {
            in_protocol_error(c, in, "bad magic or source in frame header");
            return;
        }
        if (h->kind == MC_KIND_ABORT) {
            if (h->len > MC_ABORT_MSG_MAX) {
                in_protocol_error(c, in, "malformed abort frame");
                return;
            }
            in->state = IN_ABORT;
            in_post(c, in, &in->px, in->abuf, (size_t)h->len);
            return;
        }
        if (h->kind == MC_KIND_LEFT && in->ch == MC_CH_P2P) {
            if (h->len != 0 || !c->ft) {
                in_protocol_error(c, in, "malformed left notice");
                return;
            }
            c->left_epoch[in->peer] = h->epoch; /* frames come in order */
            c->left_seq[in->peer] = h->seq;
            /* its sender waits until it is held here (left_frames_busy) */
            (void)c->tlops[c->peer_tl[in->peer]]->ack_now(
                c->tl[c->peer_tl[in->peer]], in->peer, MC_CH_P2P);
            in_post_hdr(c, in);
            return;
        }
        if (h->kind == MC_KIND_CTRL && in->ch == MC_CH_P2P) {
            if (h->len != c->ctrl_len || !c->ft) {
                in_protocol_error(c, in, "malformed control frame");
                return;
            }
            if (!in->cbuf && !(in->cbuf = malloc(c->ctrl_len))) {
                in_protocol_error(c, in, "out of memory for a control frame");
                return;
            }
            in->state = IN_CTRL;
            in_post(c, in, &in->px, in->cbuf, c->ctrl_len);
            return;
        }
        if ((in->ch == MC_CH_COLL && h->kind != MC_KIND_DATA) ||
            (in->ch == MC_CH_P2P && h->kind != MC_KIND_P2P)) {
            in_protocol_error(c, in, "unexpected frame kind");
            return;
        }
        in->state = IN_HAVE_HDR;
        in->rndv_over = 0;
        if (in->ch == MC_CH_COLL)
            coll_match(c, in);
        else
            p2p_match(c, in);
        return;
    }
    case IN_ABORT:
        in->abuf[in->hdr.len] = '\0';
        handle_abort(c, in->peer, in->hdr.seq, in->hdr.epoch,
                     (mc_status_t)(int64_t)in->hdr.count, in->abuf);
        in_post_hdr(c, in);
        return;
    case IN_CTRL:
        in_post_hdr(c, in);
        handle_ctrl(c, in->peer, in->cbuf);
        return;
    case IN_DISCARD:
        in->discard_left -= x->len;
        in_discard_step(c, in);
        return;
    case IN_PAYLOAD:
        if (in->ch == MC_CH_COLL) {
            in_coll_fin(c, in);
            mc_frame_t *f = in->cur;
            in->cur = NULL;
            f->status = MC_OK;
            f->state = F_DONE;
            /* the peer returns only once this frame is held here (tcp:
             * acknowledged): say so now, not after a delay (pair_hold) */
            if (c->cx.pair && c->cx_active && mc_cx_pair_usable(&c->cx))
                (void)c->tlops[c->peer_tl[in->peer]]->ack_now(
                    c->tl[c->peer_tl[in->peer]], in->peer, MC_CH_COLL);
        } else if (in->p2p_req) {
            mc_request_t *r = in->p2p_req;
            in->p2p_req = NULL;
            req_complete(r, MC_OK, NULL);
        } else if (in->p2p_unexp) {
            mc_unexp_t *u = in->p2p_unexp;
            in->p2p_unexp = NULL;
            u->complete = 1;
            if (u->drop) {
                c->unexp_bytes -= u->len;
                free(u->data);
                free(u);
            } else if (u->claimed) {
                mc_request_t *r = u->claimed;
                if (u->len) memcpy(r->buf, u->data, u->len);
                c->unexp_bytes -= u->len;
                free(u->data);
                free(u);
                req_complete(r, MC_OK, NULL);
            }
        }
        in_post_hdr(c, in);
        return;
    }
}

/* Collective stream: a header is in in->hdr (IN_HAVE_HDR). */
static void coll_match(mc_comm_t *c, mc_in_t *in)
{
    mc_hdr_t *h = &in->hdr;
    mc_cctx_t *cx = &c->cx;
    if (h->epoch > c->epoch) return; /* sender is in a newer view: hold */
    if (h->epoch < c->epoch) {
        in_discard(c, in); /* an attempt in an older view */
        return;
    }
    if (h->seq < c->exec_seq ||
        (c->cx_active && h->seq == cx->seq && cx->failed < 0) ||
        (h->epoch == c->dead_att_epoch && h->seq == c->dead_att_seq)) {
        in_discard(c, in); /* frame of an operation that already failed */
        return;
    }
    if (!c->cx_active || h->seq > cx->seq) {
        if (c->cx_active && in->rq_head && cx->failed == MC_OK) {
            char theirs[160];
            describe(theirs, sizeof(theirs), h->coll, h->dtype, h->op, h->root,
                     h->count);
            cx_fail(c, MC_ERR_MISMATCH, 0,
                    "collective mismatch at seq %llu: rank %d is past it "
                    "(its call ended there: it timed out or failed, or it "
                    "made a different number of calls) and sent a frame of "
                    "seq %llu (%s) while rank %d still expects a frame from "
                    "it",
                    (unsigned long long)cx->seq, in->peer,
                    (unsigned long long)h->seq, theirs, c->rank);
        }
        return; /* peer ahead: hold the header, the stream waits */
    }
    mc_frame_t *f = in->rq_head;
    if (!f) return; /* the algorithm has not posted this receive yet */
    const mc_coll_args_t *a = &cx->req->args;
    if (h->coll != a->coll || h->dtype != a->dtype || h->op != a->op ||
        h->root != a->root || h->count != cx->dcount || h->desc != cx->desc) {
        char mine[160], theirs[160];
        describe(mine, sizeof(mine), a->coll, a->dtype, a->op, a->root,
                 cx->dcount);
        describe(theirs, sizeof(theirs), h->coll, h->dtype, h->op, h->root,
                 h->count);
        cx_fail(c, MC_ERR_MISMATCH, 0,
                "collective mismatch at seq %llu: rank %d called %s but rank "
                "%d called %s%s",
                (unsigned long long)cx->seq, c->rank, mine, in->peer, theirs,
                (!strcmp(mine, theirs)) ? " (per-rank counts differ)" : "");
        in_discard(c, in);
        return;
    }
    if (h->step != f->step || h->len != f->bytes) {
        char mine[160];
        describe(mine, sizeof(mine), a->coll, a->dtype, a->op, a->root,
                 cx->dcount);
        cx_fail(c, MC_ERR_MISMATCH, 0,
                "collective mismatch at seq %llu in %s: rank %d sent %llu "
                "bytes (step " STEP_FMT
                ") but rank %d expects %zu bytes (step " STEP_FMT ") from it",
                (unsigned long long)cx->seq, mine, in->peer,
                (unsigned long long)h->len, STEP_ARGS(h->step), c->rank,
                f->bytes, STEP_ARGS(f->step));
        in_discard(c, in);
        return;
    }
    in->rq_head = f->rnext;
    if (!in->rq_head) in->rq_tail = NULL;
    /* the sender's FLAG_* (pair confirmation; read without plock once the
     * algorithm has ended) */
    __atomic_fetch_or(&cx->rx_flags, (uint64_t)h->tag, __ATOMIC_RELAXED);
    f->state = F_PAYLOAD;
    in->cur = f;
    in->state = IN_PAYLOAD;
    in_post(c, in, &in->px, f->buf, f->bytes);
}

/* Take posted receive r (after prev, NULL at the head) off the list
 * (plock). */
static void precv_unlink(mc_comm_t *c, mc_request_t *prev, mc_request_t *r)
{
    if (prev)
        prev->next = r->next;
    else
        c->precv_head = r->next;
    if (c->precv_tail == r) c->precv_tail = prev;
    r->next = NULL;
}

/* in no longer holds a header for its receive's rendezvous (plock) */
static void rndv_end(mc_comm_t *c, mc_in_t *in)
{
    if (!in->rndv_until) return;
    in->rndv_until = 0;
    c->rndv_held--;
}

/* Streams whose rendezvous wait ran out buffer their message now (from
 * progress_locked while any is held; plock). */
static int p2p_rndv_scan(mc_comm_t *c)
{
    int64_t now = mc_now_us();
    int n = 0;
    for (int p = 0; p < c->size && c->rndv_held > 0; p++) {
        if (p == c->rank) continue;
        mc_in_t *in = &c->in[MC_CH_P2P][p];
        if (!in->rndv_until) continue;
        if (in->state != IN_HAVE_HDR) {
            rndv_end(c, in); /* (reset meanwhile) */
        } else if (now >= in->rndv_until) {
            p2p_match(c, in);
            n++;
        }
    }
    return n;
}

/* p2p stream: a header is in in->hdr (IN_HAVE_HDR). */
static void p2p_match(mc_comm_t *c, mc_in_t *in)
{
    mc_hdr_t *h = &in->hdr;
    /* A sender the view removed that is not dead (stopped, say) may never
     * send the rest: its message never goes straight into a caller's
     * buffer, only into an engine buffer (a receive claims it whole, or
     * fails: mc_comm_irecv), or it is held */
    int gone = !c->active[in->peer] && !c->peer_dead[in->peer];
    int other = 0; /* a receive from this peer waits for another tag */
    mc_request_t *prev = NULL, *r = gone ? NULL : c->precv_head;
    while (r && !((r->peer == MC_ANY_SOURCE || r->peer == in->peer) &&
                  r->tag == h->tag)) {
        other |= r->peer == MC_ANY_SOURCE || r->peer == in->peer;
        prev = r;
        r = r->next;
    }
    if (r) {
        rndv_end(c, in);
        precv_unlink(c, prev, r);
        r->source = in->peer;
        if (h->len != r->bytes) {
            char msg[256];
            snprintf(msg, sizeof(msg),
                     "p2p mismatch: rank %d sent %llu bytes with tag %u but "
                     "rank %d posted a receive of %zu bytes",
                     in->peer, (unsigned long long)h->len, h->tag, c->rank,
                     r->bytes);
            req_complete(r, MC_ERR_MISMATCH, msg);
            in_discard(c, in);
            return;
        }
        in->p2p_req = r;
        in->state = IN_PAYLOAD;
        in_post(c, in, &in->px, r->buf, r->bytes);
        return;
    }
    /* Rendezvous: a large message first waits up to rndv_us for its
     * receive, the stream held meanwhile (p2p_rndv_scan looks again), so
     * that it goes straight into the caller's buffer: buffered, it costs a
     * fresh allocation (page faults) and one more copy, 1.5-3x the time on
     * one host. A receive posted late finds it buffered after the wait as
     * before. Not when waiting cannot help or would stall: a receive from
     * this peer already waits for another tag (tags out of order), this
     * rank is sending to the peer itself (two blocking sends crossing
     * would each wait out the other's hold), the sender is dead or removed
     * (what it sent is read at once), or this header had its wait (held
     * since for lack of buffer room). */
    if (h->len >= c->rndv_min && c->rndv_us > 0 && !gone && !other &&
        !in->rndv_over && !c->peer_dead[in->peer] &&
        !c->p2p_sending[in->peer]) {
        int64_t now = mc_now_us();
        if (!in->rndv_until) {
            in->rndv_until = now + c->rndv_us;
            c->rndv_held++;
        }
        if (now < in->rndv_until) return;
    }
    rndv_end(c, in);
    in->rndv_over = 1;
    /* Unexpected: buffer it if within the cap, else hold the stream until
     * a matching receive is posted (a dead peer's held stream: its
     * receives fail, as nothing more is read from it). */
    if (h->len > c->unexp_max - c->unexp_bytes) {
        if (c->peer_dead[in->peer]) p2p_peer_failed(c, in->peer);
        return;
    }
    mc_unexp_t *u = calloc(1, sizeof(*u));
    void *data = malloc(h->len ? (size_t)h->len : 1);
    if (!u || !data) {
        free(u);
        free(data);
        return; /* hold; retried when a receive is posted */
    }
    u->src = in->peer;
    u->tag = h->tag;
    u->len = (size_t)h->len;
    u->data = data;
    c->unexp_bytes += u->len;
    if (c->unexp_tail)
        c->unexp_tail->next = u;
    else
        c->unexp_head = u;
    c->unexp_tail = u;
    in->p2p_unexp = u;
    in->state = IN_PAYLOAD;
    in_post(c, in, &in->px, data, u->len);
}

/* The p2p stream from `peer` ended: fail receives that can only be served
 * by it. Streams end separately, each after the data it still holds, so
 * the collective stream may still deliver frames. */
static void p2p_peer_failed(mc_comm_t *c, int peer)
{
    /* once: the posted receives (later ones fail at post); always: the
     * receive reading the stream now (an MC_ANY_SOURCE receive may take a
     * dead peer's held message after the first call) */
    int first = !c->p2p_dead[peer];
    c->p2p_dead[peer] = 1;
    mc_request_t *prev = NULL, *r = first ? c->precv_head : NULL;
    while (r) {
        mc_request_t *next = r->next;
        if (r->peer == peer) {
            precv_unlink(c, prev, r);
            char msg[128];
            snprintf(msg, sizeof(msg), "recv from rank %d: peer failed", peer);
            req_complete(r, MC_ERR_PEER_FAILED, msg);
        } else {
            prev = r;
        }
        r = next;
    }
    mc_in_t *pin = &c->in[MC_CH_P2P][peer];
    if (pin->p2p_req) {
        mc_request_t *q = pin->p2p_req;
        pin->p2p_req = NULL;
        /* Its payload transfer may still be posted (this rank counts the
         * peer dead while the transport still reads its p2p stream, e.g.
         * after a protocol error on the collective stream): the rest goes
         * to the transport's sink, never into the caller's buffer, and the
         * stream ends there (the transfer fails: in_event). */
        int t = c->peer_tl[peer];
        if (pin->state == IN_PAYLOAD && pin->px.status == MC_INPROGRESS &&
            t >= 0 &&
            c->tlops[t]->release_recv(c->tl[t], peer, MC_CH_P2P, &pin->px,
                                      MC_ERR_PEER_FAILED) < 0)
            MC_LOG(MC_LOG_WARN,
                   "rank %d: a receive from rank %d could not be released "
                   "(%s): the transport may still write its buffer",
                   c->rank, peer, mc_last_error());
        req_complete(q, MC_ERR_PEER_FAILED, "recv: peer failed mid-message");
    }
    /* a receive that took an unexpected message still arriving: it fails
     * as one posted for it would (guarantee 1); the message's buffer goes
     * when its transfer ends, if it ever does */
    if (pin->p2p_unexp && pin->p2p_unexp->claimed) {
        mc_unexp_t *u = pin->p2p_unexp;
        mc_request_t *q = u->claimed;
        u->claimed = NULL;
        u->drop = 1;
        req_complete(q, MC_ERR_PEER_FAILED, "recv: peer failed mid-message");
    }
}

/* Give a user send's buffer back (plock held; the send is on comm->sends):
 * the transport stops reading it, a message none of which went leaves
 * unsent, one partly written goes on from the transport's copy (so that
 * the peer's stream stays whole). Its transfers end with `st`, and `why`
 * becomes the send's error text (unless one is set already: the first
 * reason stands). Returns 1 if a transfer was released (the send
 * completes at the next event pass), 0 if there was none to release (it
 * went, or ended: it completes on its own), or < 0 (out of memory for the
 * copy) when the send stays as it was. */
static int p2p_send_release(mc_comm_t *c, mc_request_t *r, mc_status_t st,
                            const char *why)
{
    int q = r->peer, t = c->peer_tl[q];
    if (t < 0) return MC_ERR_INVALID_ARG;
    /* every byte written, its completion not yet seen: it went */
    if (r->hx.off >= r->hx.len && r->px.off >= r->px.len) return 0;
    int h = 0, p = 0, did = 0; /* header: 1 dropped, 0 kept or done, < 0 */
    if (r->hx.status == MC_INPROGRESS) {
        h = c->tlops[t]->release_send(c->tl[t], q, MC_CH_P2P, &r->hx, 1, st);
        did |= h >= 0;
    }
    if (h >= 0 && r->px.status == MC_INPROGRESS) {
        p = c->tlops[t]->release_send(c->tl[t], q, MC_CH_P2P, &r->px, h == 1,
                                      st);
        did |= p >= 0;
    }
    /* (the callbacks only queued the send's event: the text is read when
     * it runs) */
    if (did && !r->err[0]) snprintf(r->err, sizeof(r->err), "%s", why);
    /* a rest the transport still sends to a peer that stays in the view:
     * LEFT notices do not wait behind it (left_notices) */
    if (did && h == 0 && c->active[q] && r->p2p_post > c->p2p_rest[q])
        c->p2p_rest[q] = r->p2p_post;
    if (h < 0) return h;
    if (p < 0) return p;
    return did;
}

/* Give up a user receive (plock held, not done) and complete it with st
 * and `why`: one still posted leaves the list; one taking its message
 * off the stream has the rest read into the transport's sink (never into
 * its buffer), and the stream is read on after it; one that claimed a
 * message still arriving into an engine buffer drops that buffer when it
 * is in. Returns 1 if it completed, 0 if its message is all in (it
 * completes at the next event pass), MC_ERR_NOT_FOUND if the engine no
 * longer knows where its message is (admit_peer reset its stream while a
 * transfer was still under way), or < 0 (out of memory for the sink) when
 * the receive stays as it was. */
static int p2p_recv_release(mc_comm_t *c, mc_request_t *r, mc_status_t st,
                            const char *why)
{
    mc_request_t *prev = NULL, *q = c->precv_head;
    while (q && q != r) {
        prev = q;
        q = q->next;
    }
    if (q) {
        precv_unlink(c, prev, r);
        req_complete(r, st, why);
        return 1;
    }
    int src = r->source;
    if (src < 0 || src >= c->size || src == c->rank) return MC_ERR_NOT_FOUND;
    mc_in_t *pin = &c->in[MC_CH_P2P][src];
    int arriving = pin->state == IN_PAYLOAD &&
                   pin->px.status == MC_INPROGRESS && pin->px.off < pin->px.len;
    if (pin->p2p_req == r) {
        int t = c->peer_tl[src];
        if (!arriving || t < 0) return 0; /* all in: it completes at once */
        int rc = c->tlops[t]->release_recv(c->tl[t], src, MC_CH_P2P, &pin->px,
                                           MC_OK);
        if (rc < 0) return rc;
        pin->p2p_req = NULL; /* its payload event: on to a header */
        req_complete(r, st, why);
        return 1;
    }
    if (pin->p2p_unexp && pin->p2p_unexp->claimed == r) {
        if (!arriving) return 0; /* in: copied at the next event pass */
        pin->p2p_unexp->claimed = NULL;
        pin->p2p_unexp->drop = 1;
        req_complete(r, st, why);
        return 1;
    }
    return MC_ERR_NOT_FOUND;
}

/* Guarantee 1 for a p2p call (plock held, from its wait or test): one not
 * finished by the operation timeout fails with MC_ERR_TIMEOUT, counted
 * from the first time it is waited for or tested (progress happens only
 * inside calls: a send posted long before anyone waits for it has moved
 * only what its post could, and gets the whole timeout from then); one whose peer the heartbeat finds silent past the
 * liveness timeout fails then with MC_ERR_PEER_FAILED, while the peer
 * stays in the view (the next collective finds the silence itself and
 * removes it, with a quorum). Either way the caller's buffer is given
 * back (p2p_send_release, p2p_recv_release): a send partly written still
 * reaches the peer whole if it resumes, a receive that was taking its
 * message discards the rest. An MC_ANY_SOURCE receive that nothing
 * matched has only the timeout. */
static void p2p_expire(mc_comm_t *c, mc_request_t *r, int64_t now)
{
    if (r->done || r->p2p_held) return;
    int peer = r->kind == R_SEND ? r->peer
                                 : (r->source >= 0 ? r->source : r->peer);
    if (!r->p2p_deadline)
        r->p2p_deadline =
            c->timeout_ms < 0 ? INT64_MAX : now + c->timeout_ms * 1000;
    int timeout = now >= r->p2p_deadline;
    if (!timeout && (peer < 0 || !mc_live_suspected(c->live, peer))) return;
    char msg[256], who[32] = "any rank";
    if (peer >= 0) snprintf(who, sizeof(who), "rank %d", peer);
    const char *what = r->kind == R_SEND ? "send to" : "recv from";
    if (timeout && r->kind == R_RECV && r->source < 0)
        snprintf(msg, sizeof(msg),
                 "recv from %s (tag %u): no message within the operation "
                 "timeout (%lld ms)",
                 who, r->tag, (long long)c->timeout_ms);
    else if (timeout)
        snprintf(msg, sizeof(msg),
                 "%s %s (tag %u): not finished within the operation "
                 "timeout (%lld ms)",
                 what, who, r->tag, (long long)c->timeout_ms);
    else
        snprintf(msg, sizeof(msg),
                 "%s rank %d (tag %u): rank %d has been silent for %lld ms, "
                 "past the liveness timeout: suspected failed",
                 what, peer, r->tag, peer,
                 (long long)mc_live_silent_ms(c->live, peer));
    mc_status_t st = timeout ? MC_ERR_TIMEOUT : MC_ERR_PEER_FAILED;
    int rc = 0;
    if (r->kind == R_SEND)
        rc = r->p2p_counted ? p2p_send_release(c, r, st, msg) : 0;
    else
        rc = p2p_recv_release(c, r, st, msg);
    if (rc < 0) {
        r->p2p_held = 1; /* said once; it waits as before */
        MC_LOG(MC_LOG_WARN,
               "rank %d: %s; its buffer could not be given back (%s): it "
               "waits for the transport",
               c->rank, msg, mc_status_str(rc));
    } else if (rc == 1 && !timeout) {
        MC_LOG(MC_LOG_WARN, "rank %d: %s", c->rank, msg);
    }
}

/* Evidence that `peer` is gone: fail what depends on it. */
/* After a peer's death: its p2p stream ends on its own, after what it
 * still holds, and p2p_peer_failed runs there; unless it ended already
 * (p2p_eof) or is held (a message too large for the unexpected buffer
 * waits for its receive, so nothing more is read and no end comes). */
static void p2p_after_death(mc_comm_t *c, int peer)
{
    mc_in_t *in = &c->in[MC_CH_P2P][peer];
    /* a message held for its receive's rendezvous is read now: sent
     * before its sender died, it is delivered (p2p_match buffers it) */
    if (in->state == IN_HAVE_HDR && in->rndv_until) p2p_match(c, in);
    if (c->p2p_eof[peer] || in->state == IN_HAVE_HDR)
        p2p_peer_failed(c, peer);
}

static void peer_failed(mc_comm_t *c, int peer, mc_status_t st)
{
    if (c->peer_dead[peer]) {
        p2p_after_death(c, peer); /* a protocol error on its p2p stream */
        return;
    }
    c->peer_dead[peer] = 1;
    if (c->dead_us) c->dead_us[peer] = mc_now_us();
    MC_LOG(MC_LOG_INFO, "rank %d: lost rank %d (%s)", c->rank, peer,
           mc_status_str(st));
    /* A peer that exits after its last frame to us is normal: fail the
     * running operation only if it still waits on that peer. */
    int involved = 0;
    if (c->cx_active) {
        mc_in_t *cin = &c->in[MC_CH_COLL][peer];
        involved = cin->rq_head != NULL || (cin->cur != NULL);
        for (int i = 0; i < c->cx.nframes && !involved; i++) {
            mc_frame_t *f = cx_frame(&c->cx, i);
            involved = f->peer == peer && !frame_done(f);
        }
    }
    if (involved && c->cx.failed == MC_OK)
        cx_fail(c, MC_ERR_PEER_FAILED, 0, "%s at seq %llu: rank %d failed (%s)",
                mc_coll_name(c->cx.req->args.coll),
                (unsigned long long)c->cx.seq, peer, mc_status_str(st));
    /* A message it sent before it exited (a result, then exit) is still
     * delivered. Every caller here has the transport's verdict, which ends
     * all of the peer's streams. */
    p2p_after_death(c, peer);
}

/* ------------------------------------------------------------------------ */
/* The running collective                                                   */
/* ------------------------------------------------------------------------ */

static void cx_fail(mc_comm_t *c, mc_status_t st, int remote, const char *fmt,
                    ...)
{
    mc_cctx_t *cx = &c->cx;
    if (cx->failed < 0 || cx->passed) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cx->err, sizeof(cx->err), fmt, ap);
    va_end(ap);
    cx->failed = st;
    cx->remote_abort = remote;
    /* with fault tolerance a failed peer is handled, not an error; an op
     * whose root is gone fails as the fault model says it must (the
     * caller gets MC_ERR_ROOT_FAILED): a warning too */
    int handled = c->ft && (st == MC_ERR_PEER_FAILED || st == MC_ERR_TIMEOUT ||
                            st == MC_ERR_ROOT_FAILED);
    if (!remote)
        MC_LOG(handled ? MC_LOG_WARN : MC_LOG_ERROR, "rank %d: %s", c->rank,
               cx->err);
}

int mc_cx_rank(const mc_cctx_t *cx)
{
    return cx->vrank;
}
int mc_cx_size(const mc_cctx_t *cx)
{
    return cx->nv;
}
const mc_coll_args_t *mc_cx_args(const mc_cctx_t *cx)
{
    return cx->args;
}
int mc_cx_nslots(const mc_cctx_t *cx)
{
    return cx->comm->size;
}
int mc_cx_slot(const mc_cctx_t *cx, int vrank)
{
    return vrank >= 0 && vrank < cx->nv ? cx->vslots[vrank] : -1;
}
int mc_cx_vrank(const mc_cctx_t *cx, int slot)
{
    return slot >= 0 && slot < cx->comm->size ? cx->vof[slot] : -1;
}
void mc_cx_set_args(mc_cctx_t *cx, const mc_coll_args_t *a)
{
    cx->args = a ? a : &cx->req->args;
}
const mc_tune_t *mc_cx_tune(const mc_cctx_t *cx)
{
    return &cx->comm->tune;
}

static mc_frame_t *cx_frame(mc_cctx_t *cx, mc_fh_t h)
{
    return &cx->blocks[h / MC_FRAME_BLOCK][h % MC_FRAME_BLOCK];
}

static mc_status_t cx_new_frame(mc_cctx_t *cx, mc_fh_t *h_p)
{
    int idx = cx->nframes;
    if (idx / MC_FRAME_BLOCK >= cx->nblocks) {
        mc_frame_t **nb =
            realloc(cx->blocks, sizeof(*nb) * (size_t)(cx->nblocks + 1));
        if (!nb) return mc_err(MC_ERR_NO_MEMORY, "frame table");
        cx->blocks = nb;
        nb[cx->nblocks] = calloc(MC_FRAME_BLOCK, sizeof(mc_frame_t));
        if (!nb[cx->nblocks]) return mc_err(MC_ERR_NO_MEMORY, "frame table");
        cx->nblocks++;
    }
    cx->nframes++;
    mc_frame_t *f = cx_frame(cx, idx);
    memset(f, 0, sizeof(*f));
    *h_p = idx;
    return MC_OK;
}

/* Map the algorithm's virtual peer to its slot in *peer_p. */
static mc_status_t cx_check_peer(mc_cctx_t *cx, int *peer_p)
{
    mc_comm_t *c = cx->comm;
    int v = *peer_p;
    if (v < 0 || v >= cx->nv || v == cx->vrank) {
        cx_fail(c, MC_ERR_INTERNAL, 0, "algorithm used invalid peer %d", v);
        return MC_ERR_INTERNAL;
    }
    *peer_p = cx->vslots[v];
    return cx->failed;
}

mc_status_t mc_cx_isend(mc_cctx_t *cx, int peer, uint32_t step, const void *buf,
                        size_t bytes, mc_fh_t *h_p)
{
    mc_comm_t *c = cx->comm;
    pthread_mutex_lock(&c->plock);
    mc_status_t st = cx_check_peer(cx, &peer);
    if (st == MC_OK && c->peer_dead[peer]) {
        /* known dead (its stream ended): a send can never be read, and the
         * kernel may still accept it into a buffer and say nothing */
        cx->send_lost = 1;
        cx_fail(c, MC_ERR_PEER_FAILED, 0, "%s at seq %llu: rank %d failed",
                mc_coll_name(cx->req->args.coll), (unsigned long long)cx->seq,
                peer);
        st = cx->failed;
        goto out;
    }
    mc_fh_t h;
    if (st == MC_OK) st = cx_new_frame(cx, &h);
    if (st < 0) goto out;
    mc_frame_t *f = cx_frame(cx, h);
    const mc_coll_args_t *a = &cx->req->args;
    f->is_send = 1;
    f->peer = peer;
    f->step = step;
    f->buf = (void *)buf;
    f->bytes = bytes;
    f->state = F_POSTED;
    f->hdr = (mc_hdr_t){.magic = MC_WIRE_MAGIC,
                        .kind = MC_KIND_DATA,
                        .coll = (uint8_t)a->coll,
                        .dtype = (uint8_t)a->dtype,
                        .op = (uint8_t)a->op,
                        .root = a->root,
                        .step = step,
                        .seq = cx->seq,
                        .epoch = cx->epoch,
                        .count = cx->dcount,
                        .desc = cx->desc,
                        .len = bytes,
                        .tag = (uint32_t)cx->tx_flags,
                        .src = c->rank};
    int t = c->peer_tl[peer];
    if (bytes <= MC_FRAME_INLINE) {
        memcpy(f->inl, &f->hdr, sizeof(f->hdr));
        if (bytes) memcpy(f->inl + sizeof(f->hdr), buf, bytes);
        f->hx = (mc_xfer_t){.buf = f->inl,
                            .len = sizeof(f->hdr) + bytes,
                            .status = MC_INPROGRESS};
        f->px = (mc_xfer_t){.status = MC_OK}; /* nothing more to send */
        st = c->tlops[t]->post_send(c->tl[t], peer, MC_CH_COLL, &f->hx);
    } else {
        f->hx = (mc_xfer_t){
            .buf = &f->hdr, .len = sizeof(f->hdr), .status = MC_INPROGRESS};
        f->px = (mc_xfer_t){
            .buf = (void *)buf, .len = bytes, .status = MC_INPROGRESS};
        st = c->tlops[t]->post_send(c->tl[t], peer, MC_CH_COLL, &f->hx);
        if (st == MC_OK)
            st = c->tlops[t]->post_send(c->tl[t], peer, MC_CH_COLL, &f->px);
    }
    if (st < 0) {
        /* never posted: nothing for cleanup to wait on */
        if (f->hx.status == MC_INPROGRESS) f->hx.status = st;
        f->px.status = st;
        f->state = F_DONE;
        f->status = st;
        cx->send_lost = 1;
        peer_failed(c, peer, st);
        if (cx->failed == MC_OK)
            cx_fail(c, st, 0, "send to rank %d failed: %s", peer,
                    mc_status_str(st));
        st = cx->failed;
        goto out;
    }
    *h_p = h;
out:
    pthread_mutex_unlock(&c->plock);
    return st;
}

mc_status_t mc_cx_irecv(mc_cctx_t *cx, int peer, uint32_t step, void *buf,
                        size_t bytes, mc_fh_t *h_p)
{
    mc_comm_t *c = cx->comm;
    pthread_mutex_lock(&c->plock);
    mc_status_t st = cx_check_peer(cx, &peer);
    mc_fh_t h;
    /* the stream may still hold frames the peer wrote before it ended; a
     * receive fails only once the stream itself has ended */
    if (st == MC_OK && c->in[MC_CH_COLL][peer].state == IN_DEAD) {
        cx_fail(c, MC_ERR_PEER_FAILED, 0, "%s at seq %llu: rank %d has failed",
                mc_coll_name(cx->req->args.coll), (unsigned long long)cx->seq,
                peer);
        st = cx->failed;
    }
    if (st == MC_OK) st = cx_new_frame(cx, &h);
    if (st < 0) goto out;
    mc_frame_t *f = cx_frame(cx, h);
    f->peer = peer;
    f->step = step;
    f->buf = buf;
    f->bytes = bytes;
    f->state = F_POSTED;
    mc_in_t *in = &c->in[MC_CH_COLL][peer];
    if (in->rq_tail)
        in->rq_tail->rnext = f;
    else
        in->rq_head = f;
    in->rq_tail = f;
    if (in->state == IN_HAVE_HDR) coll_match(c, in);
    *h_p = h;
out:
    pthread_mutex_unlock(&c->plock);
    return st;
}

/* Frame finished? plock held. */
static int frame_done(mc_frame_t *f)
{
    if (f->state == F_DONE) return 1;
    if (f->is_send && f->px.status != MC_INPROGRESS &&
        f->hx.status != MC_INPROGRESS) {
        f->status = f->hx.status < 0 ? (mc_status_t)f->hx.status
                                     : (mc_status_t)f->px.status;
        f->state = F_DONE;
        return 1;
    }
    return 0;
}

/* Free the detached blocks whose transfers have all ended (`all`: every
 * one, once the transports are gone). plock held. */
static void pinned_gc(mc_comm_t *c, int all)
{
    mc_pinned_t **pp = &c->pinned;
    while (*pp) {
        mc_pinned_t *p = *pp;
        int busy = 0;
        for (int i = 0; i < MC_FRAME_BLOCK && !all && !busy; i++) {
            const mc_frame_t *f = &p->block[i];
            busy = f->is_send && (f->hx.status == MC_INPROGRESS ||
                                  f->px.status == MC_INPROGRESS);
        }
        if (busy) {
            pp = &p->next;
            continue;
        }
        *pp = p->next;
        free(p->block);
        free(p->sink);
        free(p);
    }
}

/* Drain of a failed attempt: sends still under way (a stopped peer, a full
 * stream) go on from a copy of what is left of them instead of the
 * caller's memory, and their frame block is detached so that no later
 * attempt reuses it while the transport holds its transfers. With a final
 * barrier the receiver drops what it gets: its attempt fails as well,
 * since this rank never confirms this one. Without one (pair
 * confirmation) the receiver may complete the op from the frame, so the
 * bytes must be the real ones (zeros would be summed in as this rank's
 * input). Blocks with a receive still writing (no memory for its sink)
 * stay. Returns 1 if one was detached. plock held. */
static int drain_detach_sends(mc_comm_t *c, mc_cctx_t *cx)
{
    int did = 0;
    for (int b = 0; b * MC_FRAME_BLOCK < cx->nframes; b++) {
        mc_frame_t *blk = cx->blocks[b];
        int nf = cx->nframes - b * MC_FRAME_BLOCK, sends = 0, recv = 0;
        size_t need = 0;
        if (nf > MC_FRAME_BLOCK) nf = MC_FRAME_BLOCK;
        for (int i = 0; i < nf; i++) {
            mc_frame_t *f = &blk[i];
            if (frame_done(f)) continue;
            if (f->is_send) {
                sends = 1;
                if (f->px.status == MC_INPROGRESS) need += f->px.len;
            } else if (f->state == F_PAYLOAD) {
                recv = 1;
            }
        }
        if (!sends || recv) continue;
        mc_pinned_t *p = calloc(1, sizeof(*p));
        mc_frame_t *fresh = calloc(MC_FRAME_BLOCK, sizeof(mc_frame_t));
        char *sink = need ? malloc(need) : NULL;
        if (!p || !fresh || (need && !sink)) {
            free(p);
            free(fresh);
            free(sink);
            continue;
        }
        /* each send its own region; the transports read buf + off on */
        size_t at = 0;
        for (int i = 0; i < nf; i++) {
            mc_frame_t *f = &blk[i];
            if (!f->is_send || f->px.status != MC_INPROGRESS) continue;
            memcpy(sink + at + f->px.off, (const char *)f->px.buf + f->px.off,
                   f->px.len - f->px.off);
            f->px.buf = sink + at;
            at += f->px.len;
        }
        for (int i = 0; i < MC_FRAME_BLOCK; i++)
            fresh[i].state = F_DONE;
        p->block = blk;
        p->sink = sink;
        p->next = c->pinned;
        c->pinned = p;
        cx->blocks[b] = fresh;
        did = 1;
    }
    return did;
}

static void cx_timeout(mc_cctx_t *cx, mc_frame_t *f, int peer)
{
    mc_comm_t *c = cx->comm;
    /* Not suspicion: heartbeats decide whether the peer is alive (a slow
     * but live peer is waited for up to the operation timeout, then the
     * call fails with a timeout and the view stays; see run_ft). */
    cx_fail(c, MC_ERR_TIMEOUT, 0,
            "%s at seq %llu timed out after %lld ms on rank %d waiting to %s "
            "rank %d (step " STEP_FMT ")",
            mc_coll_name(cx->req->args.coll), (unsigned long long)cx->seq,
            (long long)c->timeout_ms, c->rank,
            f ? (f->is_send ? "send to" : "receive from") : "hear from",
            f ? f->peer : peer, STEP_ARGS(f ? f->step : 0u));
}

/* Peers of the current view the heartbeat finds silent become suspects
 * (plock held; looks at most once per millisecond). Returns the first new
 * suspect, or -1. */
static int live_poll(mc_comm_t *c, int64_t now)
{
    if (!c->live || now - c->live_checked < 1000) return -1;
    c->live_checked = now;
    int first = -1;
    if (c->em) {
        /* etcd: our own lease is gone: fenced */
        if (mc_emember_lost(c->em) && !c->evicted) {
            c->evicted = 1;
            MC_LOG(MC_LOG_WARN,
                   "rank %d: fenced: its etcd lease is gone; its calls fail "
                   "from now on (%s)",
                   c->rank, c->cx_active ? "the running one too" : "no call running");
            if (c->cx_active && c->cx.failed == MC_OK)
                cx_fail(c, MC_ERR_EVICTED, 0,
                        "%s at seq %llu: rank %d lost its etcd lease; it "
                        "must rejoin as a new process",
                        mc_coll_name(c->cx.req->args.coll),
                        (unsigned long long)c->cx.seq, c->rank);
        }
        /* a member whose lease expired: suspected, like silence */
        if (mc_emember_gone(c->em, c->inc, c->em_tmp))
            for (int p = 0; p < c->size; p++) {
                if (!c->em_tmp[p] || !c->active[p] || c->suspect[p]) continue;
                c->suspect[p] = 1;
                MC_LOG(MC_LOG_WARN,
                       "rank %d: rank %d lost its etcd lease: suspected",
                       c->rank, p);
                if (first < 0) first = p;
            }
    }
    if (!mc_live_suspects(c->live, c->live_tmp)) return first;
    for (int p = 0; p < c->size; p++) {
        if (p == c->rank || !c->active[p] || !c->live_tmp[p] || c->suspect[p])
            continue;
        c->suspect[p] = 1;
        MC_LOG(MC_LOG_WARN, "rank %d: rank %d silent for %lld ms: suspected",
               c->rank, p, (long long)mc_live_silent_ms(c->live, p));
        if (first < 0) first = p;
    }
    return first;
}

/* What a wait waits for: ready() (plock held, after progress) says
 * whether it is there, and may fail the attempt; on a timeout the message
 * names `peer`, and the frame `f` if any. */
typedef struct cx_waiter {
    int (*ready)(mc_cctx_t *cx, struct cx_waiter *w);
    int i, to;      /* frames [i, to) */
    int peer;       /* signal: the peer waited on */
    uint64_t want;  /* signal: its word, flags masked out */
    uint64_t got;   /* signal: the word seen */
    int64_t since;  /* when the wait began (slot_res_ready) */
    mc_frame_t *f;  /* the frame waited on, for the timeout message */
} cx_waiter_t;

/* Wait until w->ready, driving progress; bounded by the op deadline,
 * suspicion (heartbeats) and failures reported by peers. */
static mc_status_t cx_wait_until(mc_cctx_t *cx, cx_waiter_t *w)
{
    mc_comm_t *c = cx->comm;
    int64_t idle_since = mc_now_us();
    for (;;) {
        if (__atomic_load_n(&c->stopping, __ATOMIC_ACQUIRE)) {
            /* mc_comm_destroy: the attempt ends here, for good (an
             * MC_ERR_IO is not a failure the agreement re-runs) */
            pthread_mutex_lock(&c->plock);
            if (cx->failed == MC_OK)
                cx_fail(c, MC_ERR_IO, 0,
                        "%s at seq %llu: the communicator was destroyed",
                        mc_coll_name(cx->req->args.coll),
                        (unsigned long long)cx->seq);
            mc_status_t st = cx->failed;
            pthread_mutex_unlock(&c->plock);
            return st;
        }
        pthread_mutex_lock(&c->plock);
        /* what is already there needs no progress pass first */
        int n = 0, done = w->ready(cx, w);
        if (!done && cx->failed == MC_OK) {
            n = progress_locked(c);
            done = w->ready(cx, w);
        }
        mc_status_t st = cx->failed;
        pthread_mutex_unlock(&c->plock);
        if (st < 0) return st;
        if (done) return MC_OK;
        int64_t now = mc_now_us();
        if (n) idle_since = now;
        if (now > cx->deadline_us) {
            /* one more look: this thread may have been descheduled between
             * its last look and the clock read */
            pthread_mutex_lock(&c->plock);
            if (cx->failed == MC_OK) {
                (void)progress_locked(c);
                done = w->ready(cx, w);
            }
            if (!done) cx_timeout(cx, w->f, w->peer);
            st = cx->failed;
            pthread_mutex_unlock(&c->plock);
            return st < 0 ? st : MC_OK;
        }
        if (!n && c->live && now - c->live_checked >= 1000) {
            pthread_mutex_lock(&c->plock);
            int p = live_poll(c, now);
            if (p >= 0 && cx->failed == MC_OK)
                cx_fail(c, MC_ERR_TIMEOUT, 0,
                        "%s at seq %llu: rank %d is suspected (no heartbeat "
                        "for %lld ms%s)",
                        mc_coll_name(cx->req->args.coll),
                        (unsigned long long)cx->seq, p,
                        (long long)mc_live_silent_ms(c->live, p),
                        c->em && c->em_tmp[p] ? ", etcd lease expired" : "");
            st = cx->failed;
            pthread_mutex_unlock(&c->plock);
            if (st < 0) return st;
        }
        if (!n) idle_wait(c, idle_since, now);
    }
}

/* Frames [w->i, w->to) done? A failed one fails the attempt. */
static int frames_ready(mc_cctx_t *cx, cx_waiter_t *w)
{
    mc_comm_t *c = cx->comm;
    while (w->i < w->to && frame_done(cx_frame(cx, w->i))) {
        mc_frame_t *f = cx_frame(cx, w->i);
        if (f->status < 0 && cx->failed == MC_OK)
            cx_fail(c, f->status, 0,
                    "%s at seq %llu: transfer with rank "
                    "%d failed: %s",
                    mc_coll_name(cx->req->args.coll),
                    (unsigned long long)cx->seq, f->peer,
                    mc_status_str(f->status));
        w->i++;
    }
    w->f = w->i < w->to ? cx_frame(cx, w->i) : NULL;
    return w->i >= w->to;
}

/* Wait for frames [from, to) (or one), driving progress. */
static mc_status_t cx_wait_range(mc_cctx_t *cx, int from, int to)
{
    cx_waiter_t w = {.ready = frames_ready, .i = from, .to = to, .peer = -1};
    return cx_wait_until(cx, &w);
}

mc_status_t mc_cx_wait(mc_cctx_t *cx, mc_fh_t h)
{
    if (h < 0 || h >= cx->nframes) return MC_ERR_INTERNAL;
    return cx_wait_range(cx, h, h + 1);
}

mc_status_t mc_cx_waitall(mc_cctx_t *cx)
{
    return cx_wait_range(cx, 0, cx->nframes);
}

mc_status_t mc_cx_fault_sent(mc_cctx_t *cx, const char *point)
{
    if (!MC_FAULT_NAMED(point)) return MC_OK; /* and not fired yet */
    for (int i = 0; i < cx->nframes; i++) {
        if (!cx_frame(cx, i)->is_send) continue;
        mc_status_t st = cx_wait_range(cx, i, i + 1);
        if (st < 0) return st;
    }
    MC_FAULT_POINT(point);
    return MC_OK;
}

mc_status_t mc_cx_sendrecv(mc_cctx_t *cx, uint32_t step, int speer,
                           const void *sbuf, size_t sbytes, int rpeer,
                           void *rbuf, size_t rbytes)
{
    mc_fh_t hs, hr;
    MC_CHECK(mc_cx_irecv(cx, rpeer, step, rbuf, rbytes, &hr));
    MC_CHECK(mc_cx_isend(cx, speer, step, sbuf, sbytes, &hs));
    MC_FAULT_POINT("cx.sendrecv.posted");
    MC_CHECK(mc_cx_fault_sent(cx, "cx.sendrecv.sent"));
    MC_CHECK(mc_cx_wait(cx, hr));
    return mc_cx_wait(cx, hs);
}

void mc_cx_save(mc_cctx_t *cx, const void *p, size_t bytes)
{
    mc_comm_t *c = cx->comm;
    if (!cx->lazy || c->saved_all || !bytes) return;
    size_t off = (size_t)((const char *)p - cx->save_in);
    if ((const char *)p < cx->save_in || off > cx->save_len ||
        bytes > cx->save_len - off) {
        /* not the caller's buffer: nothing of it to keep */
        return;
    }
    if (c->nsaved == c->saved_cap) {
        size_t cap = c->saved_cap ? 2 * c->saved_cap : 64;
        void *v = realloc(c->saved, cap * sizeof(*c->saved));
        if (!v) {
            c->saved_oom = 1;
            return;
        }
        c->saved = v;
        c->saved_cap = cap;
    }
    if (cx->save_len >= ((size_t)8 << 20))
        mc_copy_stream((char *)c->backup + off, p, bytes);
    else /* the whole input fits in the caches anyway */
        memcpy((char *)c->backup + off, p, bytes);
    c->saved[c->nsaved][0] = off;
    c->saved[c->nsaved][1] = bytes;
    c->nsaved++;
}

void mc_cx_save_all(mc_cctx_t *cx)
{
    mc_comm_t *c = cx->comm;
    if (!cx->lazy || c->saved_all) return;
    if (c->nsaved == 0) {
        memcpy(c->backup, cx->save_in, cx->save_len);
        c->saved_all = 1;
        return;
    }
    /* an algorithm that saved ranges must not ask for everything later */
    c->saved_oom = 1;
}

int mc_cx_keeping(const mc_cctx_t *cx)
{
    return cx->lazy && !cx->comm->saved_all;
}

int mc_cx_ft(const mc_cctx_t *cx)
{
    return cx->comm->ft;
}

void mc_cx_pair_exchange(mc_cctx_t *cx)
{
    /* only as the attempt's first frames: after others (a staged path
     * that fell back to the ring) a whole frame from the peer no longer
     * means it may have returned the op */
    if (cx->nv == 2 && cx->nframes == 0) cx->pair = 1;
}

int mc_cx_stage_usable(mc_cctx_t *cx)
{
    mc_comm_t *c = cx->comm;
    /* the same on every rank: not whether this rank's call is in place,
     * nor the fault-tolerance mode (a staged call is also the fastest
     * without fault tolerance, and set_auto_recover may differ between
     * ranks for a while) */
    if (cx->nv < 2) return 0;
    for (int v = 0; v < cx->nv; v++) {
        int p = cx->vslots[v];
        if (p == c->rank) continue;
        int t = c->peer_tl[p];
        if (t < 0 || c->tlops[t] != &mc_tl_shm_ops) return 0;
    }
    return 1;
}

/* The staging memory of this communicator, made on first use. */
static mc_stage_t *stage_of(mc_comm_t *c)
{
    if (!c->stage) c->stage = mc_stage_new(c->size);
    return c->stage;
}

/* A staging step failed: the group runs the ring. Warned once per
 * communicator, debug after that. */
static void stage_failed(mc_cctx_t *cx, const char *what, const char *err)
{
    mc_comm_t *c = cx->comm;
    int lvl = c->stage_warned++ ? MC_LOG_DEBUG : MC_LOG_WARN;
    MC_LOG(lvl, "rank %d: %s at seq %llu: %s (%s); using the ring", c->rank,
           mc_coll_name(cx->req->args.coll), (unsigned long long)cx->seq,
           what, err);
}

void *mc_cx_stage_own(mc_cctx_t *cx, size_t bytes, mc_stage_info_t *info)
{
    mc_stage_t *s = stage_of(cx->comm);
    char err[256] = "out of memory";
    memset(info, 0, sizeof(*info));
    void *p = s ? mc_stage_own(s, cx->epoch, bytes, info, err, sizeof(err))
                : NULL;
    if (!p) stage_failed(cx, "no staging memory", err);
    return p;
}

void *mc_cx_stage_peer(mc_cctx_t *cx, int v, const mc_stage_info_t *info)
{
    mc_stage_t *s = stage_of(cx->comm);
    char err[256] = "out of memory";
    int slot = v >= 0 && v < cx->nv ? cx->vslots[v] : -1;
    void *p = NULL;
    if (slot < 0)
        snprintf(err, sizeof(err), "virtual rank %d out of range", v);
    else if (s)
        p = mc_stage_peer(s, slot, info, err, sizeof(err));
    if (!p) stage_failed(cx, "cannot map a peer's staging memory", err);
    return p;
}

int mc_cx_stage_learn(mc_cctx_t *cx, size_t bytes)
{
    mc_comm_t *c = cx->comm;
    int learn = c->stage_epoch != cx->epoch || bytes > c->stage_hwm;
    c->stage_epoch = cx->epoch;
    if (bytes > c->stage_hwm) c->stage_hwm = bytes;
    return learn;
}

void *mc_cx_stage_cached(mc_cctx_t *cx, int v, uint64_t *rid, uint64_t *size)
{
    mc_stage_t *s = stage_of(cx->comm);
    *rid = 0;
    *size = 0;
    if (!s || v < 0 || v >= cx->nv) return NULL;
    return mc_stage_peer_cached(s, cx->vslots[v], rid, size);
}

void mc_cx_on_commit(mc_cctx_t *cx, mc_commit_fn_t fn)
{
    cx->commit = fn;
}

/* The op is decided on this rank: copy out what staging holds. */
static void cx_commit(mc_cctx_t *cx)
{
    mc_commit_fn_t fn = cx->commit;
    cx->commit = NULL;
    if (fn) fn(cx);
}

void *mc_cx_scratch(mc_cctx_t *cx, int slot, size_t bytes)
{
    mc_comm_t *c = cx->comm;
    if (slot < 0 || slot >= 4) return NULL;
    if (bytes == 0) bytes = 64;
    if (c->scratch_len[slot] < bytes) {
        void *p = NULL;
        if (posix_memalign(&p, 64, bytes)) return NULL;
        free(c->scratch[slot]);
        c->scratch[slot] = p;
        c->scratch_len[slot] = bytes;
    }
    return c->scratch[slot];
}

/* Tell every peer that operation `seq` failed here. plock held.
 * The notice goes on both streams: on the p2p stream, which is always read,
 * it reaches a peer that waits on some other rank; on the collective stream
 * it arrives in order, after this rank's last frames of `seq` and before
 * any frame of the next operation, so a peer never mistakes the next
 * operation's frames for a mismatch of its own. */
static void send_aborts(mc_comm_t *c, uint64_t seq, mc_status_t why,
                        const char *text, int p2p_too)
{
    size_t len = strnlen(text, MC_ABORT_MSG_MAX - 1);
    for (int p = 0; p < c->size; p++) {
        if (p == c->rank || c->peer_dead[p] || c->peer_tl[p] < 0) continue;
        for (int ch = 0; ch < (p2p_too ? MC_NUM_CHANNELS : 1); ch++) {
            mc_abort_out_t *a = &c->abort_out[p * MC_NUM_CHANNELS + ch];
            if (a->busy && (a->px.status == MC_INPROGRESS ||
                            a->hx.status == MC_INPROGRESS))
                continue; /* a previous notice is still going out */
            a->busy = 1;
            a->hdr = (mc_hdr_t){.magic = MC_WIRE_MAGIC,
                                .kind = MC_KIND_ABORT,
                                .seq = seq,
                                .epoch = c->epoch,
                                .count = (uint64_t)(int64_t)why,
                                .len = len,
                                .src = c->rank};
            memcpy(a->msg, text, len);
            a->hx = (mc_xfer_t){
                .buf = &a->hdr, .len = sizeof(a->hdr), .status = MC_INPROGRESS};
            a->px =
                (mc_xfer_t){.buf = a->msg, .len = len, .status = MC_INPROGRESS};
            int t = c->peer_tl[p];
            if (c->tlops[t]->post_send(c->tl[t], p, ch, &a->hx) < 0 ||
                c->tlops[t]->post_send(c->tl[t], p, ch, &a->px) < 0)
                a->busy = 0;
        }
    }
}

/* Canonical descriptor count: the same on every rank of a correct call. */
static uint64_t desc_count(const mc_coll_args_t *a, int size)
{
    uint64_t s = 0;
    switch (a->coll) {
    case MC_COLL_ALLGATHERV:
    case MC_COLL_REDUCE_SCATTERV:
        for (int i = 0; i < size; i++)
            s += a->counts[i];
        return s;
    case MC_COLL_ALLTOALLV:
    case MC_COLL_BARRIER:
        return 0;
    default:
        return a->count;
    }
}

static uint64_t desc_hash(const mc_coll_args_t *a, int size, uint64_t dcount)
{
    uint64_t h = 1469598103934665603ull;
    int32_t v[4] = {a->coll, a->dtype, a->op, a->root};
    h = fnv1a(h, v, sizeof(v));
    h = fnv1a(h, &dcount, sizeof(dcount));
    if (a->coll == MC_COLL_ALLGATHERV || a->coll == MC_COLL_REDUCE_SCATTERV)
        h = fnv1a(h, a->counts, sizeof(size_t) * (size_t)size);
    return h;
}

/* ------------------------------------------------------------------------ */
/* View agreement (fault tolerance; see docs/design.md "Agreement")         */
/* ------------------------------------------------------------------------ */
/*
 * When a collective fails because a rank died (evidence: its p2p stream
 * ended) or is suspected (a timeout), the survivors of view `epoch` agree
 * on view `epoch + 1`:
 *  - every member broadcasts a REPORT: whom it knows dead or suspects, its
 *    coordinator (the lowest active rank it has no evidence or suspicion
 *    against: its *own* knowledge only), and the last seq that ended on it;
 *  - the coordinator decides once it holds a report naming it coordinator
 *    from every member not known dead or suspected by anyone: the new
 *    active set is the old one minus those, and the view starts at
 *    max(last ended) + 1. It announces the VIEW; every adopter forwards it.
 *  - a member adopts any view newer than its own, from any message.
 * Streams are FIFO and a peer counts as dead only once its p2p stream has
 * ended, after every message it sent: a member that names a new coordinator
 * has read any VIEW the previous one sent it, so a successor never decides
 * differently from a view some survivor already holds (crash failures).
 * A rank returns from a collective only after a final barrier in which
 * every rank confirms its own part is done; so if any rank ended seq S,
 * every survivor has its result for S, completes S in the old view, and
 * the new view starts at S + 1. Otherwise S re-runs over the new view.
 */

static void view_adopt(mc_comm_t *c, uint64_t epoch, const uint8_t *active);
static void join_pick(mc_comm_t *c, uint8_t *next);
static void join_publish(mc_comm_t *c, uint8_t *next, uint64_t epoch,
                         uint64_t start);

#define CTRL_MAPS(c, body) ((uint8_t *)(body) + sizeof(mc_ctrl_t))

static void ctrl_gc(mc_comm_t *c)
{
    mc_ctrl_out_t **pp = &c->ctrl_out;
    while (*pp) {
        mc_ctrl_out_t *m = *pp;
        if (m->hx.status != MC_INPROGRESS && m->px.status != MC_INPROGRESS) {
            *pp = m->next;
            free(m);
        } else {
            pp = &m->next;
        }
    }
}

/* Send one control message (plock held). Best effort: a dead peer's
 * failure shows up through its streams. */
static void ctrl_send(mc_comm_t *c, int to, const mc_ctrl_t *ct,
                      const uint8_t *active, const uint8_t *dead,
                      const uint8_t *susp)
{
    if (to == c->rank || c->p2p_dead[to] || c->peer_dead[to] ||
        c->peer_tl[to] < 0)
        return;
    mc_ctrl_out_t *m = malloc(sizeof(*m) + c->ctrl_len);
    if (!m) {
        MC_LOG(MC_LOG_ERROR, "rank %d: out of memory for a control message",
               c->rank);
        return;
    }
    size_t n = (size_t)c->size;
    memcpy(m->body, ct, sizeof(*ct));
    uint8_t *maps = CTRL_MAPS(c, m->body);
    memcpy(maps, active, n);
    if (dead)
        memcpy(maps + n, dead, n);
    else
        memset(maps + n, 0, n);
    if (susp)
        memcpy(maps + 2 * n, susp, n);
    else
        memset(maps + 2 * n, 0, n);
    if (ct->type == CT_REPORT && ct->acc_from >= 0) {
        memcpy(maps + 3 * n, c->acc_set, n);
        memcpy(maps + 4 * n, c->acc_q, n);
    } else {
        memset(maps + 3 * n, 0, 2 * n);
    }
    m->hdr = (mc_hdr_t){.magic = MC_WIRE_MAGIC,
                        .kind = MC_KIND_CTRL,
                        .epoch = ct->epoch,
                        .len = c->ctrl_len,
                        .src = c->rank};
    m->hx = (mc_xfer_t){
        .buf = &m->hdr, .len = sizeof(m->hdr), .status = MC_INPROGRESS};
    m->px = (mc_xfer_t){
        .buf = m->body, .len = c->ctrl_len, .status = MC_INPROGRESS};
    m->next = c->ctrl_out;
    c->ctrl_out = m;
    int t = c->peer_tl[to];
    if (c->tlops[t]->post_send(c->tl[t], to, MC_CH_P2P, &m->hx) < 0) {
        m->hx.status = MC_ERR_IO;
        m->px.status = MC_ERR_IO;
        return;
    }
    if (c->tlops[t]->post_send(c->tl[t], to, MC_CH_P2P, &m->px) < 0)
        m->px.status = MC_ERR_IO;
}

/* Evidence (for agreement) that `p` is gone: its p2p stream ended, so
 * every control message it sent us has been read. */
static int ag_dead(const mc_comm_t *c, int p)
{
    /* dead on either stream: a death seen on the collective stream leaves
     * the p2p stream to end on its own (peer_failed), but the agreement
     * neither names it coordinator nor counts it alive meanwhile */
    return c->p2p_dead[p] || c->peer_dead[p];
}

/* Is the evidence of peer p's death (an ended stream) in doubt? In
 * embedded mode, over a network, once this rank had "no quorum" in this
 * view: the other side of the partition may have gone on without us, and
 * when the partition heals its kernels reset the connections they timed
 * out. That looks like death but is not evidence of it: then removing p
 * needs a majority, like any suspicion. A vanished process on this host
 * (shm) is never in doubt; with etcd the store's view is the authority. */
static int ag_doubt(const mc_comm_t *c, int p)
{
    int t = c->peer_tl[p];
    if (c->em || t < 0 || !strcmp(c->tlops[t]->name, "shm")) return 0;
    return c->noq_epoch == c->epoch;
}

/* How long the coordinator waits for a dead rank's p2p stream to end:
 * MC_AG_EOF_WAIT_US, but at most half an agreement round, so that the
 * others do not suspect the coordinator meanwhile. */
static int64_t ag_eof_wait_us(const mc_comm_t *c)
{
    int64_t half = c->timeout_ms > 0 ? c->timeout_ms * 500 : INT64_MAX;
    return half < MC_AG_EOF_WAIT_US ? half : MC_AG_EOF_WAIT_US;
}

/* How long the coordinator keeps asking the transports about peers it
 * holds on suspicion alone before it reports "no quorum" (below). A killed
 * process falls silent at once, but the kernel closes its sockets and
 * makes its pidfd readable only after it has freed its memory (about
 * 60 ms per GiB on this project's VM: a large process can stay silent for
 * seconds before anything on the wire says it died). The liveness
 * timeout, at least MC_AG_PROBE_MIN_US, at most ag_eof_wait_us. */
static int64_t ag_probe_wait_us(const mc_comm_t *c)
{
    int64_t w = MC_AG_PROBE_MIN_US;
    if (c->live) {
        mc_live_stats_t ls;
        mc_live_stats(c->live, &ls);
        if (ls.timeout_ms * 1000 > w) w = ls.timeout_ms * 1000;
    }
    int64_t cap = ag_eof_wait_us(c);
    return w < cap ? w : cap;
}

/* Suspicion (silence past the liveness timeout, an expired etcd lease)
 * may rest on a peer that is in fact dead and whose end nobody has read:
 * a rank idle between ops when it died has run no progress since. Before
 * it counts as suspicion alone, which needs a majority, ask its transport
 * (shm: the peer's closed flags and pidfd; tcp: a hang-up and the close
 * check against its listener). Returns 1 when that is evidence of its
 * death, recorded as any other (plock held). */
static int ag_probe(mc_comm_t *c, int q)
{
    int t = c->peer_tl[q];
    if (t < 0 || c->peer_dead[q]) return c->peer_dead[q];
    mc_status_t st = c->tlops[t]->peer_status(c->tl[t], q);
    /* only a verdict on the peer counts (not a bad argument, say) */
    if (st != MC_ERR_PEER_FAILED && st != MC_ERR_TIMEOUT &&
        st != MC_ERR_PROTOCOL)
        return 0;
    MC_LOG(MC_LOG_WARN, "rank %d: suspected rank %d: its transport reports "
           "it gone (%s)", c->rank, q, mc_status_str(st));
    peer_failed(c, q, st);
    return 1;
}

static int ag_coord(const mc_comm_t *c)
{
    for (int p = 0; p < c->size; p++)
        if (c->active[p] &&
            (p == c->rank || (!ag_dead(c, p) && !c->suspect[p])))
            return p;
    return c->rank;
}

static int ag_left_seen(mc_comm_t *c);
static int sig_capable(const mc_comm_t *c, int p);
static uint64_t sig_fenced(uint64_t epoch, uint64_t seq);
static int slot_decide(mc_comm_t *c);

/* The entry rule. A rank that passed the frame barrier of op S heard,
 * directly or not, from every rank of the view, each of which had entered
 * it, i.e. finished the algorithm. Where that means holding the whole
 * result without needing any peer again (not a barrier call, whose
 * "result" is that every rank arrived; not a view that may stage, whose
 * results are copied out of peers' memory at the commit), the converse
 * decides too: if every survivor entered the barrier of S, S completes in
 * this view, whoever returned it, with every dead rank's whole part in
 * every survivor's result. And if a dead rank returned S, every survivor
 * had entered (before it returned; a report goes out only once the
 * attempt failed, so it says so). So no LEFT notice is needed there (one
 * message per peer per op, which a reset can lose: docs/design.md). Each
 * member reports whether it is in that state for op last_ended + 1
 * (REPORT.entered); the coordinator moves the view's start past S when
 * every member of the next view does (ag_try_decide). The same on every
 * rank of the view (MOONCAKE_FT_ENTRY is a shared setting). plock held
 * where cx is read by another thread. */
static int entry_usable(const mc_comm_t *c, mc_cctx_t *cx)
{
    return c->ft_entry && cx->req->args.coll != MC_COLL_BARRIER &&
           !mc_cx_stage_usable(cx);
}

/* For a report: this rank is in the frame barrier of the running op, in
 * this view, under the entry rule (and no peer's LEFT moved last_ended
 * past it already). plock held. */
static int ag_entered(mc_comm_t *c)
{
    return c->ft_entry && c->cx.entered && c->cx.epoch == c->epoch &&
           c->cx.seq == c->exec_seq && !ag_left_seen(c);
}

static uint64_t ag_signature(mc_comm_t *c)
{
    uint64_t h = 1469598103934665603ull;
    int coord = ag_coord(c);
    h = fnv1a(h, &coord, sizeof(coord));
    h = fnv1a(h, &c->epoch, sizeof(c->epoch));
    for (int p = 0; p < c->size; p++) {
        uint8_t v = (uint8_t)(ag_dead(c, p) | (c->suspect[p] << 1));
        h = fnv1a(h, &v, 1);
    }
    /* a LEFT read after the report changes its last_ended */
    uint8_t left = (uint8_t)(ag_left_seen(c) | ag_entered(c) << 1);
    h = fnv1a(h, &left, 1);
    return h;
}

static void ag_send_report(mc_comm_t *c)
{
    uint8_t *dead = c->ag_tmp;
    if (c->nv_pending) return; /* adopt first */
    for (int p = 0; p < c->size; p++) {
        dead[p] = (uint8_t)(ag_dead(c, p) || c->peer_dead[p]);
        if (dead[p] && p != c->rank && ag_doubt(c, p)) {
            dead[p] = 0;
            c->suspect[p] = 1;
        }
    }
    mc_ctrl_t ct = {.type = CT_REPORT,
                    .coord = ag_coord(c),
                    .epoch = c->epoch,
                    .view_start = c->view_start,
                    .last_ended = (int64_t)c->exec_seq - 1 + ag_left_seen(c),
                    .admit = (uint32_t)c->admit_phase,
                    .entered = (uint32_t)ag_entered(c),
                    .rno = ++c->ag_rno,
                    .acc_from = -1};
    if (c->acc_from >= 0 && c->acc_epoch == c->epoch) {
        ct.acc_from = c->acc_from;
        ct.pid = c->acc_pid;
        ct.acc_start = c->acc_start;
    }
    for (int p = 0; p < c->size; p++)
        if (c->active[p]) ctrl_send(c, p, &ct, c->active, dead, c->suspect);
    c->ag_sig = ag_signature(c);
}

/* Note a view newer than ours (plock held). */
static void ag_note_view(mc_comm_t *c, uint64_t epoch, uint64_t start,
                         const uint8_t *active, int from)
{
    if (epoch <= c->epoch || (c->nv_pending && epoch <= c->nv_epoch)) return;
    c->nv_pending = 1;
    c->nv_epoch = epoch;
    c->nv_start = start;
    c->nv_from = from;
    memcpy(c->nv_active, active, (size_t)c->size);
}

/* The running attempt cannot finish: the group is changing its view. */
static void ag_interrupt(mc_comm_t *c, int from)
{
    if (c->cx_active && c->cx.failed == MC_OK)
        cx_fail(c, MC_ERR_PEER_FAILED, 1,
                "%s at seq %llu: rank %d reports a failure in view %llu",
                mc_coll_name(c->cx.req->args.coll),
                (unsigned long long)c->cx.seq, from,
                (unsigned long long)c->epoch);
}

static void handle_ctrl(mc_comm_t *c, int from, const uint8_t *body)
{
    mc_ctrl_t ct;
    memcpy(&ct, body, sizeof(ct));
    const uint8_t *maps = CTRL_MAPS(c, body);
    size_t n = (size_t)c->size;
    if (c->evicted) return;
    /* (a proposal's maps are not a view: it carries the sender's epoch,
     * never a newer one than the receiver's, which reported in it) */
    if (ct.epoch > c->epoch && ct.type != CT_PROPOSE &&
        ct.type != CT_ACCEPT) {
        ag_note_view(c, ct.epoch, ct.view_start, maps, from);
        ag_interrupt(c, from);
    }
    switch (ct.type) {
    case CT_REPORT:
        if (ct.epoch < c->epoch) {
            /* the sender missed a view change: tell it (once per epoch) */
            if (c->sent_view[from] < c->epoch) {
                c->sent_view[from] = c->epoch;
                mc_ctrl_t v = {.type = CT_VIEW,
                               .coord = c->rank,
                               .epoch = c->epoch,
                               .view_start = c->view_start};
                ctrl_send(c, from, &v, c->active, NULL, NULL);
            }
            return;
        }
        c->rep_epoch[from] = ct.epoch;
        c->rep_coord[from] = ct.coord;
        c->rep_last[from] = ct.last_ended;
        c->rep_admit[from] = ct.admit != 0;
        c->rep_entered[from] = ct.entered != 0;
        memcpy(c->rep_maps + (size_t)from * 2 * n, maps + n, 2 * n);
        c->rep_rno[from] = ct.rno;
        /* an acceptance of ours it no longer holds (it accepted another
         * since: the report follows its ACCEPT on the same stream) */
        if (c->prop_on && (ct.acc_from != c->rank || ct.pid != c->prop_pid))
            c->prop_ok[from] = 0;
        c->rep_acc_from[from] =
            ct.acc_from >= 0 && ct.acc_from < c->size ? ct.acc_from : -1;
        c->rep_acc_start[from] = ct.acc_start;
        memcpy(c->rep_acc_maps + (size_t)from * 2 * n, maps + 3 * n, 2 * n);
        /* An admission report says nothing failed: the sender finished the
         * op and waits in the admission round, which every member enters
         * after the same op (the join flag came with its final barrier).
         * Interrupting our op for it would turn the admission into a
         * failure round. */
        if (ct.epoch == c->epoch && !ct.admit) {
            c->ag_wake = 1;
            ag_interrupt(c, from);
        }
        return;
    case CT_VIEW:
        if (ct.epoch == c->epoch && memcmp(maps, c->active, n) != 0)
            MC_LOG(MC_LOG_ERROR,
                   "rank %d: rank %d announces a different view with the "
                   "same epoch %llu; ignoring it",
                   c->rank, from, (unsigned long long)ct.epoch);
        return;
    case CT_PROPOSE:
        /* Accept a decision only from the coordinator this rank reports
         * to, resting on its latest report (nothing it said changed since;
         * also after its own round ended, as a VIEW would be taken then,
         * but not while an op of ours runs: it may complete in this view,
         * which drops what we accepted, run_coll):
         * it then stays with that coordinator for this round (agree: its
         * deadline no longer moves it on; evidence of its death, or its
         * silence past the liveness timeout, still do), and its reports
         * carry the proposal from now on, so that a coordinator after it
         * can tell whether this one may have been committed
         * (ag_two_phase). */
        if (ct.epoch == c->epoch && !c->em && !c->nv_pending &&
            !(c->cx_active && !c->ag_on) && from != c->rank &&
            ag_coord(c) == from && ct.rno == c->ag_rno) {
            c->acc_from = from;
            c->acc_pid = ct.pid;
            c->acc_epoch = c->epoch;
            c->acc_start = ct.view_start;
            c->acc_round = c->ag_round;
            c->acc_us = mc_now_us();
            memcpy(c->acc_set, maps, n);
            memcpy(c->acc_q, maps + n, n);
            mc_ctrl_t a = {.type = CT_ACCEPT,
                           .coord = from,
                           .epoch = c->epoch,
                           .pid = ct.pid,
                           .acc_from = -1};
            ctrl_send(c, from, &a, c->active, NULL, NULL);
        }
        return;
    case CT_ACCEPT:
        if (ct.epoch == c->epoch && c->prop_on && ct.pid == c->prop_pid)
            c->prop_ok[from] = 1;
        return;
    case CT_NOQUORUM:
        /* only from the coordinator this rank reports to: one it has
         * given up on may not end the round another one runs */
        if (ct.epoch == c->epoch && from == ag_coord(c)) {
            c->ag_noq = 1;
            ag_interrupt(c, from);
        }
        /* its proposal of its own value can never be committed now (a
         * carried one, pid 0 here, stays: another may have committed it) */
        if (ct.epoch == c->epoch && ct.pid && c->acc_from == from &&
            c->acc_pid == ct.pid)
            c->acc_from = -1;
        return;
    default:
        MC_LOG(MC_LOG_WARN, "rank %d: unknown control message %u from %d",
               c->rank, ct.type, from);
    }
}

enum { AG_RERUN = 1, AG_DONE_OLD, AG_NOQUORUM, AG_EVICTED, AG_TIMEOUT };

/* Adopt the pending view (plock held). `seq` is the operation this rank is
 * in. Forwards the view to everyone who may not have it. */
static int ag_adopt(mc_comm_t *c, uint64_t seq)
{
    mc_ctrl_t v = {.type = CT_VIEW,
                   .coord = c->nv_from,
                   .epoch = c->nv_epoch,
                   .view_start = c->nv_start};
    for (int p = 0; p < c->size; p++)
        if (c->active[p] && p != c->nv_from &&
            c->sent_view[p] < c->nv_epoch) {
            c->sent_view[p] = c->nv_epoch;
            ctrl_send(c, p, &v, c->nv_active, NULL, NULL);
        }
    /* view_adopt reads nv_active before anything progresses; admitting a
     * joiner there runs progress, which may note a still newer view: that
     * one stays pending (not overwritten, not dropped) */
    uint64_t start = c->nv_start;
    c->nv_pending = 0;
    view_adopt(c, c->nv_epoch, c->nv_active);
    c->view_start = start;
    if (!c->nv_pending) memset(c->nv_active, 0, (size_t)c->size);
    memset(c->suspect, 0, (size_t)c->size);
    c->ag_on = 0;
    c->ag_wake = 0;
    c->ag_noq = 0;
    for (int p = 0; p < c->size; p++)
        if (c->rep_epoch[p] == c->epoch) c->ag_wake = 1; /* already changing */
    int outcome = c->evicted            ? AG_EVICTED
                  : seq < c->view_start ? AG_DONE_OLD
                                        : AG_RERUN;
    /* A tcp post only queues: write the VIEW messages now. Otherwise a
     * rank that returns the op from here (done in the old view) leaves
     * the survivors waiting in agree() until its next call into the
     * engine. What this pass reads is handled by the caller's next look
     * (a view arriving meanwhile stays pending). */
    (void)progress_locked(c);
    return outcome;
}

/* Coordinator: decide if every needed report is in (plock held). */
/* Before a view that re-runs the running op without ranks of its signal
 * barrier: fence them (sig_barrier's other half). Our word to each becomes
 * sig_fenced, then, after a full fence, we look for a LEFT again: a
 * removed rank that passed the barrier meanwhile has stored it where we
 * see it (the op then completes in this view), or it sees our fence and
 * fails the op. Returns 1 if a LEFT is seen now. plock held. */
static int ag_fence_words(mc_comm_t *c, const uint8_t *next)
{
    int any = 0;
    uint64_t w = sig_fenced(c->epoch, c->exec_seq);
    for (int q = 0; q < c->size; q++) {
        if (q == c->rank || !c->active[q] || next[q] || !sig_capable(c, q))
            continue;
        int t = c->peer_tl[q];
        (void)c->tlops[t]->signal(c->tl[t], q, (int)(c->exec_seq & 1), w);
        any = 1;
    }
    if (!any) return 0;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return ag_left_seen(c);
}

/* May the proposal of `from` (active set `set`, first seq `start`, asked
 * of the ranks `acc`) have been committed? Only if each of those ranks
 * accepted it; one this coordinator hears from (its quorum `quo`, or
 * itself) that holds another value, or none, never accepted it or moved
 * on from it, which it does only to the same value (below), so it was
 * not. Ranks we do not hear from may hold it. plock held. */
static int ag_maybe_committed(mc_comm_t *c, const uint8_t *quo,
                              const uint8_t *set, const uint8_t *acc,
                              uint64_t start)
{
    size_t n = (size_t)c->size;
    for (int q = 0; q < c->size; q++) {
        if (!acc[q]) continue;
        if (q == c->rank) {
            if (c->acc_from < 0 || c->acc_epoch != c->epoch ||
                c->acc_start != start || memcmp(c->acc_set, set, n))
                return 0;
        } else if (quo[q]) {
            if (c->rep_acc_from[q] < 0 || c->rep_acc_start[q] != start ||
                memcmp(c->rep_acc_maps + (size_t)q * 2 * n, set, n))
                return 0;
        }
    }
    return 1;
}

/* Two-phase commit of the view this coordinator decided (embedded
 * membership; with etcd the store's compare-and-swap decides). A view is
 * only adopted once every member it rests on (the quorum: the next view's
 * members, which all report to us) accepted it as a PROPOSE. A member
 * accepts only from its coordinator and only on its latest report, and
 * then stays with us for the round; its later reports carry what it
 * accepted. So two coordinators cannot both commit different views for one
 * epoch: before, a coordinator that stalled after deciding, while its
 * members turned to the next one on their deadline, could announce its
 * view after the other's (test_stop two_coord_*: rank 0 of 5 went on alone
 * in a view of its own). A coordinator first looks for a proposal of
 * another that may have been committed (ag_maybe_committed) and proposes
 * that one's value instead of its own. Returns 1 when `next` from *start is
 * accepted by the whole quorum (commit it now), 0 while waiting (plock
 * held). */
static int ag_two_phase(mc_comm_t *c, uint8_t *next, uint64_t *start,
                        int *joins)
{
    size_t n = (size_t)c->size;
    uint8_t *quo = c->ag_tmp;
    for (int q = 0; q < c->size; q++)
        quo[q] = next[q] && c->active[q] && q != c->rank;
    /* 1. a value another coordinator may have committed */
    int carried = 0;
    for (int p = 0; p < c->size; p++) {
        const uint8_t *set, *acc;
        uint64_t st;
        int from;
        if (p == c->rank) {
            if (c->acc_epoch != c->epoch) continue;
            from = c->acc_from, set = c->acc_set, acc = c->acc_q;
            st = c->acc_start;
        } else {
            if (!quo[p]) continue;
            from = c->rep_acc_from[p];
            set = c->rep_acc_maps + (size_t)p * 2 * n;
            acc = set + n;
            st = c->rep_acc_start[p];
        }
        /* (a proposer that reports to us in this view never committed
         * it: it would be in the next view) */
        if (from < 0 || from == c->rank || quo[from] ||
            !ag_maybe_committed(c, quo, set, acc, st))
            continue;
        if (*start != st || memcmp(next, set, n))
            MC_LOG(MC_LOG_WARN,
                   "rank %d: view %llu: rank %d's proposal may have been "
                   "committed: proposing it instead of our own",
                   c->rank, (unsigned long long)c->epoch, from);
        memcpy(next, set, n);
        *start = st;
        carried = 1;
        *joins = 0;
        for (int q = 0; q < c->size; q++)
            *joins |= next[q] && !c->active[q];
        break;
    }
    /* (a view that admits joiners goes through both phases too: its
     * record is published for the joiners once the members accepted it,
     * at the commit, join_publish) */
    /* 2. propose (again, if anything changed) */
    quo[c->rank] = 1;
    if (!c->prop_on || c->prop_start != *start ||
        memcmp(c->prop_set, next, n) || memcmp(c->prop_q, quo, n)) {
        c->prop_on = 1;
        c->prop_carried = carried;
        c->prop_pid++;
        c->prop_start = *start;
        memcpy(c->prop_set, next, n);
        memcpy(c->prop_q, quo, n);
        memset(c->prop_ok, 0, n);
        memset(c->prop_rno, 0, n * sizeof(*c->prop_rno));
        /* our own acceptance, which our reports carry if we ever report
         * to another coordinator in this view */
        c->acc_from = c->rank;
        c->acc_pid = c->prop_pid;
        c->acc_epoch = c->epoch;
        c->acc_start = *start;
        c->acc_round = c->ag_round;
        memcpy(c->acc_set, next, n);
        memcpy(c->acc_q, quo, n);
        MC_FAULT_POINT("ag.decide");
    }
    int all = 1;
    for (int q = 0; q < c->size; q++) {
        if (!c->prop_q[q] || q == c->rank || c->prop_ok[q]) continue;
        all = 0;
        /* to the member's latest report (sent again when it reports) */
        if (c->prop_rno[q] != c->rep_rno[q]) {
            c->prop_rno[q] = c->rep_rno[q];
            mc_ctrl_t pr = {.type = CT_PROPOSE,
                            .coord = c->rank,
                            .epoch = c->epoch,
                            .view_start = *start,
                            .rno = c->rep_rno[q],
                            .pid = c->prop_pid,
                            .acc_from = -1};
            ctrl_send(c, q, &pr, c->prop_set, c->prop_q, NULL);
        }
    }
    if (!all) return 0;
    MC_FAULT_POINT("ag.commit");
    return 1;
}

static int ag_try_decide(mc_comm_t *c)
{
    size_t n = (size_t)c->size;
    uint8_t *next = c->nv_active; /* built in place, published below */
    int64_t maxlast = (int64_t)c->exec_seq - 1 + ag_left_seen(c);
    int nold = 0, nnew = 0, susp_only = 0;
    for (int q = 0; q < c->size; q++) {
        next[q] = 0;
        if (!c->active[q]) continue;
        nold++;
        int dead = ag_dead(c, q) || c->peer_dead[q];
        int susp = c->suspect[q];
        for (int p = 0; p < c->size && q != c->rank; p++) {
            if (p == c->rank || c->rep_epoch[p] != c->epoch) continue;
            const uint8_t *m = c->rep_maps + (size_t)p * 2 * n;
            dead |= m[q];
            susp |= m[n + q];
        }
        if (susp && !dead && q != c->rank) dead = ag_probe(c, q);
        if (dead && q != c->rank && ag_doubt(c, q)) {
            susp = 1;
            dead = 0;
        }
        if (q != c->rank && dead && c->dead_us[q] < c->ag_start_us)
            c->dead_us[q] = mc_now_us(); /* first seen in this round */
        if (q != c->rank && dead && !c->p2p_eof[q] &&
            (c->in[MC_CH_P2P][q].state != IN_HAVE_HDR ||
             c->in[MC_CH_P2P][q].rndv_until) && /* (reads on soon) */
            !(c->ft_signals && sig_capable(c, q)) && /* notices: words */
            mc_now_us() < c->dead_us[q] + ag_eof_wait_us(c)) {
            /* its p2p stream may still hold a LEFT notice (or a VIEW) it
             * sent before it died, whoever saw it die: decide once that
             * stream has ended (or is held for lack of buffer room, and
             * reads nothing more; a rendezvous hold ends within rndv_us) */
            memset(next, 0, n);
            return 0;
        }
        if (q != c->rank && (dead || susp)) {
            susp_only |= !dead;
            continue;
        }
        if (q != c->rank) {
            if (c->rep_epoch[q] != c->epoch || c->rep_coord[q] != c->rank) {
                memset(next, 0, n);
                return 0; /* wait for its report */
            }
            if (c->rep_last[q] > maxlast) maxlast = c->rep_last[q];
        }
        next[q] = 1;
        nnew++;
    }
    if (susp_only && 2 * nnew <= nold) {
        /* a dead suspect's transport may need a while to tell (the
         * kernel's teardown of the process, a tcp close check, the shm
         * check's rate limit): ask again first */
        if (mc_now_us() < c->ag_start_us + ag_probe_wait_us(c)) {
            memset(next, 0, n);
            return 0;
        }
        MC_LOG(MC_LOG_ERROR,
               "rank %d: view %llu: only %d of %d ranks reachable and some "
               "removals rest on suspicion alone: no quorum",
               c->rank, (unsigned long long)c->epoch, nnew, nold);
        mc_ctrl_t q = {.type = CT_NOQUORUM,
                       .coord = c->rank,
                       .epoch = c->epoch,
                       .view_start = c->view_start,
                       .pid = c->prop_on && !c->prop_carried ? c->prop_pid : 0};
        /* to every rank waiting for this decision: a suspect whose
         * report names us too (it would wait for its own deadline, a whole
         * operation timeout, or for good with none) */
        for (int p = 0; p < c->size; p++)
            if (next[p] || (c->rep_epoch[p] == c->epoch &&
                            c->rep_coord[p] == c->rank))
                ctrl_send(c, p, &q, c->active, NULL, NULL);
        memset(next, 0, n);
        return AG_NOQUORUM;
    }
    /* The entry rule (entry_usable): every member of the next view entered
     * the frame barrier of op maxlast + 1 holding its result, so it
     * completes in this view. */
    if (c->ft_entry) {
        int all = 1;
        for (int q = 0; q < c->size && all; q++) {
            if (!next[q]) continue;
            if (q == c->rank)
                all = ag_entered(c) && (int64_t)c->exec_seq - 1 == maxlast;
            else
                all = c->rep_entered[q] && c->rep_last[q] == maxlast;
        }
        if (all) maxlast++;
    }
    /* the shared slots: every word of the interrupted op there (and the
     * members fenced: slot_decide) */
    if (maxlast < (int64_t)c->exec_seq && slot_decide(c))
        maxlast = (int64_t)c->exec_seq;
    if (maxlast < (int64_t)c->exec_seq && c->ft_signals &&
        ag_fence_words(c, next))
        maxlast = (int64_t)c->exec_seq;
    /* Joiners: only when every member of the next view waits between the
     * same two operations (the admission round after an op), so that all
     * of them see the grown view at the same point of their op stream. */
    int all_admit = c->admit_phase;
    for (int q = 0; q < c->size && all_admit; q++)
        if (next[q] && q != c->rank)
            all_admit = c->rep_admit[q] && c->rep_last[q] == maxlast &&
                        maxlast == (int64_t)c->exec_seq - 1;
    if (all_admit) join_pick(c, next);
    if (c->em) {
        /* etcd decides: the view moves only from the one we hold */
        int64_t now = mc_now_us();
        if (now < c->em_retry_us) {
            memset(next, 0, n);
            return 0;
        }
        int ok = 0;
        uint64_t ce = 0, cs = 0;
        mc_status_t st = mc_emember_view_commit(
            c->em, c->epoch, c->view_start, c->active, c->epoch + 1,
            (uint64_t)(maxlast + 1), next, &ok, &ce, &cs, c->em_tmp);
        if (st != MC_OK) {
            if (!c->em_view_logged)
                MC_LOG(MC_LOG_WARN,
                       "rank %d: view %llu: cannot commit the next view to "
                       "etcd (%s); retrying until the agreement times out",
                       c->rank, (unsigned long long)c->epoch, mc_last_error());
            c->em_view_logged = 1;
            c->em_retry_us = now + 100000;
            memset(next, 0, n);
            return 0;
        }
        c->em_view_logged = 0;
        if (!ok) {
            if (ce <= c->epoch) {
                MC_LOG(MC_LOG_ERROR,
                       "rank %d: etcd holds view %llu, not our view %llu: "
                       "retrying",
                       c->rank, (unsigned long long)ce,
                       (unsigned long long)c->epoch);
                c->em_retry_us = now + 100000;
                memset(next, 0, n);
                return 0;
            }
            if (ce > c->epoch + 1) {
                /* etcd is more than one view past ours, so the group went
                 * on without us: a member of view e + 1 reports in it
                 * before e + 2 can be decided with it. Our slot may be
                 * active there again, as another process (etcd's view
                 * holds no incarnations): we are not that member. */
                MC_LOG(MC_LOG_WARN,
                       "rank %d: etcd is at view %llu, more than one past "
                       "ours (%llu): the group went on without this rank; "
                       "fenced",
                       c->rank, (unsigned long long)ce,
                       (unsigned long long)c->epoch);
                c->evicted = 1;
                memset(next, 0, n);
                return 0;
            }
            /* another coordinator's view won: adopt it */
            MC_LOG(MC_LOG_WARN,
                   "rank %d: etcd already moved to view %llu: adopting it "
                   "instead of ours",
                   c->rank, (unsigned long long)ce);
            memcpy(next, c->em_tmp, n);
            c->nv_pending = 1;
            c->nv_epoch = ce;
            c->nv_start = cs;
            c->nv_from = c->rank;
            return 1;
        }
    }
    uint64_t start = (uint64_t)(maxlast + 1);
    int joins = 0;
    for (int q = 0; q < c->size; q++)
        joins |= next[q] && !c->active[q];
    if (!c->em && !ag_two_phase(c, next, &start, &joins)) {
        memset(next, 0, n);
        return 0;
    }
    if (all_admit && joins) join_publish(c, next, c->epoch + 1, start);
    c->nv_pending = 1;
    c->nv_epoch = c->epoch + 1;
    c->nv_start = start;
    c->nv_from = c->rank;
    return 1;
}

/* Agree on the next view, as a member of operation `seq` (exec_lock held,
 * plock NOT held). */
static int agree(mc_comm_t *c, uint64_t seq)
{
    pthread_mutex_lock(&c->plock);
    int64_t t0 = mc_now_us();
    int64_t round_us = c->timeout_ms > 0 ? c->timeout_ms * 1000 : INT64_MAX / 4;
    int64_t deadline = t0 + round_us, give_up = t0 + 3 * round_us;
    if (!c->ag_on) {
        c->ag_on = 1;
        c->ag_round++;
        c->ag_start_us = t0;
        if (!c->nv_pending) ag_send_report(c);
    }
    int outcome = 0;
    int64_t idle_since = t0;
    while (!outcome) {
        if (__atomic_load_n(&c->stopping, __ATOMIC_ACQUIRE)) {
            outcome = AG_TIMEOUT; /* destroyed: run_ft_attempts says so */
            break;
        }
        int n = progress_locked(c);
        ctrl_gc(c);
        if (c->nv_pending) {
            outcome = ag_adopt(c, seq);
            break;
        }
        if (c->ag_noq) {
            c->ag_noq = 0;
            c->ag_on = 0;
            c->noq_epoch = c->epoch;
            outcome = AG_NOQUORUM;
            break;
        }
        live_poll(c, mc_now_us());
        if (c->evicted) { /* fenced meanwhile (etcd lease lost) */
            c->ag_on = 0;
            outcome = AG_EVICTED;
            break;
        }
        if (ag_signature(c) != c->ag_sig) ag_send_report(c);
        if (ag_coord(c) == c->rank) {
            int d = ag_try_decide(c);
            if (d == AG_NOQUORUM) {
                c->ag_on = 0;
                c->noq_epoch = c->epoch;
                outcome = AG_NOQUORUM;
                break;
            }
            if (d) continue; /* adopt on the next pass */
        }
        int64_t now = mc_now_us();
        if (now > give_up) {
            c->ag_on = 0;
            outcome = AG_TIMEOUT;
            break;
        }
        if (now > deadline) {
            /* suspect whoever we are still waiting for */
            int coord = ag_coord(c);
            if (coord != c->rank) {
                /* not one whose proposal we accepted in this round: it
                 * may commit it (ag_two_phase); only evidence of its
                 * death, or the round's end, frees us from it */
                if (!(c->acc_from == coord && c->acc_epoch == c->epoch &&
                      c->acc_round == c->ag_round &&
                      now < c->acc_us + round_us))
                    c->suspect[coord] = 1;
            } else {
                for (int q = 0; q < c->size; q++)
                    if (c->active[q] && q != c->rank &&
                        (c->rep_epoch[q] != c->epoch ||
                         c->rep_coord[q] != c->rank ||
                         (c->prop_on && c->prop_q[q] && !c->prop_ok[q] &&
                          c->prop_rno[q] == c->rep_rno[q])))
                        c->suspect[q] = 1;
            }
            MC_LOG(MC_LOG_WARN,
                   "rank %d: view agreement for epoch %llu stalled for "
                   "%lld ms; suspecting the ranks it waits for",
                   c->rank, (unsigned long long)c->epoch,
                   (long long)((now - t0) / 1000));
            deadline = now + round_us;
        }
        if (n) {
            idle_since = now;
        } else {
            pthread_mutex_unlock(&c->plock);
            idle_wait(c, idle_since, now);
            pthread_mutex_lock(&c->plock);
        }
    }
    /* A round that adopted nothing leaves the epoch as it was: its reports
     * must not count in the next round of this epoch (after a partition
     * healed), where they would stand in for fresh ones that say more
     * (a later last_ended, entered). Reports still in flight from this
     * round can still arrive and count. */
    if (outcome == AG_NOQUORUM || outcome == AG_TIMEOUT) {
        memset(c->rep_epoch, 0, (size_t)c->size * sizeof(*c->rep_epoch));
        /* Suspicion, too, was this round's: the next one suspects afresh
         * (live_poll: whoever is silent then; evidence in doubt turns into
         * suspicion again). Kept, a healed partition or a resumed stall
         * would fail every later call with "no quorum" for good. */
        memset(c->suspect, 0, (size_t)c->size);
        c->live_checked = 0;
        c->ag_wake = 0;
        /* our proposal goes with the round (an accepted one stays:
         * ag_two_phase), and so does our own acceptance of it unless its
         * value was another's */
        if (c->prop_on && !c->prop_carried && c->acc_from == c->rank &&
            c->acc_pid == c->prop_pid)
            c->acc_from = -1;
        c->prop_on = 0;
    }
    pthread_mutex_unlock(&c->plock);
    return outcome;
}

/* Does some active peer look failed (plock held)? */
static int view_broken(mc_comm_t *c, int64_t now)
{
    live_poll(c, now);
    if (c->nv_pending || c->ag_wake || c->ag_noq) return 1;
    for (int p = 0; p < c->size; p++)
        if (p != c->rank && c->active[p] &&
            (c->peer_dead[p] || c->p2p_dead[p] || c->suspect[p]))
            return 1;
    return 0;
}

static int mem_overlap(const void *a, size_t alen, const void *b, size_t blen)
{
    uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
    return alen && blen && x < y + blen && y < x + alen;
}

/* Bytes of a reduction's input and of its output (0, 0 for the others). */
static void red_sizes(const mc_comm_t *c, const mc_coll_args_t *a,
                      size_t *in_p, size_t *out_p)
{
    size_t es = mc_dtype_size(a->dtype), in = 0, out = 0;
    switch (a->coll) {
    case MC_COLL_ALLREDUCE:
        in = out = a->count * es;
        break;
    case MC_COLL_REDUCE:
        in = a->count * es;
        out = a->recvbuf ? a->count * es : 0;
        break;
    case MC_COLL_REDUCE_SCATTER:
        in = a->count * (size_t)c->size * es;
        out = a->count * es;
        break;
    case MC_COLL_REDUCE_SCATTERV:
        for (int i = 0; i < c->size; i++)
            in += a->counts[i] * es;
        out = a->counts[c->rank] * es;
        break;
    default:
        break;
    }
    *in_p = in;
    *out_p = out;
}

/* Bytes of an operation's input that the operation itself may overwrite
 * (in-place reductions): kept aside so that a re-run sees the original. */
static size_t inplace_input(const mc_comm_t *c, const mc_coll_args_t *a)
{
    size_t in, out;
    red_sizes(c, a, &in, &out);
    if (!in || !a->sendbuf || !a->recvbuf) return 0;
    return mem_overlap(a->sendbuf, in, a->recvbuf, out) ? in : 0;
}

/* AVG over fp16 and fp8: each rank divides its own input by the number of
 * ranks of the attempt first, then the ranks sum (as NCCL does: its AVG
 * is a sum of inputs pre-multiplied by 1/n). Summing first and dividing
 * once at the end, as the other types do, leaves these narrow types'
 * range on the way: 4 ranks of fp16 20000.0 sum to 80000, which is inf
 * (e4m3: NaN past 448), where the average is 20000. Input bytes, or 0
 * where the rule does not apply. */
static size_t avg_premul(const mc_comm_t *c, const mc_coll_args_t *a)
{
    if (a->op != MC_AVG ||
        (a->dtype != MC_FLOAT16 && a->dtype != MC_FLOAT8_E4M3 &&
         a->dtype != MC_FLOAT8_E5M2))
        return 0;
    size_t in, out;
    red_sizes(c, a, &in, &out);
    return in;
}

static uint64_t join_flag(mc_comm_t *c);

/* Has peer p signal words (transport.h)? */
static int sig_capable(const mc_comm_t *c, int p)
{
    int t = c->peer_tl[p];
    return t >= 0 && c->tlops[t]->signal &&
           c->tlops[t]->signal != mc_tl_stub_signal;
}


/* Final barrier through signal words (transport.h) instead of frames:
 * every peer of the view on a transport that has them (shm: one host),
 * and not a barrier call, whose frames are what checks that the peers
 * called a barrier too. The same on every rank, like the staging choice
 * (mc_cx_stage_usable), given the same MOONCAKE_FT_SIGNALS everywhere. */
static int sig_barrier_usable(mc_comm_t *c, const mc_cctx_t *cx)
{
    if (!c->ft_signals || cx->req->args.coll == MC_COLL_BARRIER) return 0;
    for (int v = 0; v < cx->nv; v++)
        if (cx->vslots[v] != c->rank && !sig_capable(c, cx->vslots[v]))
            return 0;
    return 1;
}

/* A rank's signal for (epoch, seq): "my part is done", with its flag
 * byte. Word (seq & 1): a peer overwrites it (for seq + 2) only after
 * op seq + 1 ended on it, which waits for us to have left this one: its
 * final barrier, its shared slots' words (every rank writes its word only
 * once past op seq), or, for an op that every rank fails alike without a
 * message (an inactive root), the barrier it still runs (coll_attempt).
 * An op that fails on a mismatch does not wait: a rank still in op seq's
 * barrier may then time out instead of seeing the mismatch. A re-run is always in a new epoch, and a fresh process's words
 * are 0, which no (epoch >= 1, seq) encodes to.
 *
 * SIG_LEFT: the sender saw every rank's word, so every rank holds its
 * result; it stores the word again with this bit (and the OR of all the
 * ranks' flags) to every peer before it returns. A rank that returned the
 * op has thus told every peer, whatever dies afterwards: a survivor that
 * finds such a word completes the op in this view (the barrier wait and
 * the agreement, ag_left_seen), even when the ranks whose words it missed
 * are dead. */
#define SIG_FLAGS 0xffull
#define SIG_LEFT 0x80ull
/* in a result word (slot_rword_p) and its signal: a split allreduce's
 * round 2 (the signal then only differs from round 1's, so that a peer in
 * wait() wakes) or a piped root's progress (with the chunk count in the low
 * 6 bits); never the LEFT bit, so never taken for a barrier's word */
#define SLOT_SIG_RES 0x40ull
static uint64_t sig_word(uint64_t epoch, uint64_t seq, uint64_t flags)
{
    return (epoch & 0xffff) << 48 | (seq & 0xffffffffffull) << 8 |
           (flags & SIG_FLAGS);
}

/* The word a coordinator stores in place of its own to a rank it removes
 * from op (epoch, seq) (ag_fence_words): (epoch, seq) with the top epoch
 * bit flipped, which no barrier of that op stores. */
static uint64_t sig_fenced(uint64_t epoch, uint64_t seq)
{
    return sig_word(epoch ^ 0x8000, seq, 0);
}

/* Has some peer of this attempt left the barrier of (epoch, seq)? Its
 * word then (flags included) in *got. plock held. */
static int sig_left_seen(mc_comm_t *c, const int *vslots, int nv,
                         uint64_t epoch, uint64_t seq, uint64_t *got)
{
    uint64_t want = sig_word(epoch, seq, SIG_LEFT);
    for (int v = 0; v < nv; v++) {
        int p = vslots[v];
        uint64_t w = 0;
        if (p == c->rank || !sig_capable(c, p)) continue;
        if (c->tlops[c->peer_tl[p]]->peek(c->tl[c->peer_tl[p]], p,
                                          (int)(seq & 1), &w) == MC_OK &&
            (w & ~(SIG_FLAGS & ~SIG_LEFT)) == want) {
            *got = w;
            return 1;
        }
    }
    return 0;
}

/* For the agreement: has a peer of the current view left the final
 * barrier of the running op (exec_seq) in this view? Then every rank
 * holds its result and it completes in this view: the new view starts
 * after it. A peer that returned the op stored this into every peer's
 * word before returning, so every survivor's memory has it once that
 * peer is known dead; a survivor whose report went out earlier is covered
 * by the coordinator, which looks again when it decides. plock held. */
static int ag_left_seen(mc_comm_t *c)
{
    uint64_t got;
    for (int v = 0; v < c->nactive; v++) {
        int p = c->vslots[v];
        if (p != c->rank && c->left_epoch[p] == c->epoch &&
            c->left_seq[p] == c->exec_seq)
            return 1; /* a LEFT frame (frame barrier, left_notices) */
    }
    return c->ft_signals && sig_left_seen(c, c->vslots, c->nactive, c->epoch,
                                          c->exec_seq, &got);
}

/* Has w->peer signalled w->want? A peer with evidence of death that has
 * not (re-read after the evidence: its last store is final) fails the
 * attempt, unless another peer has left the barrier already (then the dead
 * one had signalled too, only not to us). plock held. */
static int signal_ready(mc_cctx_t *cx, cx_waiter_t *w)
{
    mc_comm_t *c = cx->comm;
    int p = w->peer, t = c->peer_tl[p];
    uint64_t v = 0;
    mc_status_t st;
    for (int pass = 0; pass < 2; pass++) {
        int dead = c->peer_dead[p];
        st = c->tlops[t]->peek(c->tl[t], p, (int)(cx->seq & 1), &v);
        if (st == MC_OK && (v & ~SIG_FLAGS) == w->want) {
            w->got = v;
            return 1;
        }
        if (st == MC_OK && !dead && !c->peer_dead[p]) return 0;
    }
    if (sig_left_seen(c, cx->vslots, cx->nv, cx->epoch, cx->seq, &w->got))
        return 1;
    if (cx->failed == MC_OK)
        cx_fail(c, MC_ERR_PEER_FAILED, 0,
                "%s at seq %llu: rank %d failed before its part was done",
                mc_coll_name(cx->req->args.coll), (unsigned long long)cx->seq,
                p);
    return 0;
}

static mc_status_t sig_barrier(mc_cctx_t *cx, uint64_t *flags)
{
    mc_comm_t *c = cx->comm;
    int n = cx->nv, r = cx->vrank, slot = (int)(cx->seq & 1);
    uint64_t mine = sig_word(cx->epoch, cx->seq, *flags), acc = *flags;
    for (int d = 1; d < n; d++) { /* r + 1 first: everyone starts elsewhere */
        int p = cx->vslots[(r + d) % n], t = c->peer_tl[p];
        pthread_mutex_lock(&c->plock);
        if (c->tlops[t]->signal(c->tl[t], p, slot, mine) < 0)
            peer_failed(c, p, MC_ERR_PEER_FAILED);
        pthread_mutex_unlock(&c->plock);
        /* some peers have our signal, the others not */
        if (d == 1) MC_FAULT_POINT("ft.barrier.mid");
    }
    for (int d = 1; d < n; d++) {
        cx_waiter_t w = {.ready = signal_ready,
                         .peer = cx->vslots[(r + d) % n],
                         .want = mine & ~SIG_FLAGS};
        mc_status_t st = cx_wait_until(cx, &w);
        if (st < 0) return st;
        acc |= w.got & SIG_FLAGS;
        if (w.got & SIG_LEFT) break; /* its flags are everyone's */
    }
    acc &= ~SIG_LEFT;
    /* Tell every peer we leave: from here this op completes in this view
     * whoever dies (a failed store: that peer is dead, nothing to tell). */
    uint64_t left = sig_word(cx->epoch, cx->seq, acc | SIG_LEFT);
    uint64_t fenced = sig_fenced(cx->epoch, cx->seq);
    int by = -1;
    pthread_mutex_lock(&c->plock);
    for (int d = 1; d < n; d++) {
        int p = cx->vslots[(r + d) % n], t = c->peer_tl[p];
        (void)c->tlops[t]->signal(c->tl[t], p, slot, left);
    }
    /* A coordinator that removes this rank (suspected: stopped, slow)
     * while it passes stores sig_fenced in place of its word to us, then
     * looks for our LEFT (ag_fence_words). Stores, then loads, on both
     * sides: it sees our LEFT (the op completes in this view, for all)
     * or we see its fence (removed: the survivors re-run the op without
     * us, so we must not return it), or both. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    for (int d = 1; d < n && by < 0; d++) {
        int p = cx->vslots[(r + d) % n], t = c->peer_tl[p];
        uint64_t w = 0;
        if (c->tlops[t]->peek(c->tl[t], p, slot, &w) == MC_OK && w == fenced)
            by = p;
    }
    if (by >= 0 && cx->failed == MC_OK)
        cx_fail(c, MC_ERR_PEER_FAILED, 0,
                "%s at seq %llu: rank %d (coordinating) removed this rank "
                "while it completed the op in view %llu",
                mc_coll_name(cx->req->args.coll), (unsigned long long)cx->seq,
                by, (unsigned long long)cx->epoch);
    pthread_mutex_unlock(&c->plock);
    if (by >= 0) return cx->failed;
    *flags = acc;
    return MC_OK;
}

/* Are the LEFT frames this call posted (c->left_wait) still on their way
 * to a peer that is neither dead nor suspected? On their way until the
 * peer's side holds them (transport sent_held; tcp: its kernel
 * acknowledged them): a rank that returns and dies right away with unread
 * bytes resets its connections, and its kernel drops what is not
 * acknowledged yet. plock held. */
static int left_frames_busy(mc_comm_t *c)
{
    int busy = 0;
    for (int p = 0; p < c->size; p++) {
        if (!c->left_wait[p]) continue;
        int st = c->left_out[p].hx.status, t = c->peer_tl[p];
        if (st == MC_OK && t >= 0 &&
            c->tlops[t]->sent_held(c->tl[t], p, MC_CH_P2P) == MC_INPROGRESS)
            st = MC_INPROGRESS;
        if (st != MC_INPROGRESS || c->peer_dead[p] || c->p2p_dead[p] ||
            c->suspect[p])
            c->left_wait[p] = 0;
        else
            busy = 1;
    }
    return busy;
}

/* The frame barrier's LEFT notices. After the dissemination a rank tells
 * its peers that it leaves: where signal words are on (shm peers), its
 * word again with SIG_LEFT, as sig_barrier does; otherwise a header-only
 * MC_KIND_LEFT frame on the p2p stream, which is always read whatever the
 * collective stream holds, and it waits (up to MC_DRAIN_GRACE_US: a peer
 * that does not read its p2p stream gets no promise) until those frames
 * are held on the peers' side (left_frames_busy; tcp: acknowledged, which
 * the receiver asks for at once, ack_now). Only where the entry rule does
 * not hold (ag_entered: barrier calls, and views that may stage with
 * MOONCAKE_FT_SIGNALS=0). As with SIG_LEFT, a rank that returned the op
 * has thus told its peers: its frame arrives before the end of its p2p
 * stream, and the coordinator decides only once the p2p streams of the
 * ranks it counts dead have ended (ag_try_decide), so the op completes in
 * this view (ag_left_seen).
 *
 * MOONCAKE_FT_LEFT_FANOUT=k tells only the k lowest slots of the view
 * other than itself: the coordinator is the lowest live slot, so it is one
 * of them as long as one of them lives. With 2 ranks nothing is sent (a
 * rank that returns and dies leaves no survivor when the other died too).
 * A frame still leaving from an earlier op (a peer that stopped reading)
 * is not overwritten: that peer gets none. */
static void left_notices(mc_comm_t *c, mc_cctx_t *cx, uint64_t flags)
{
    int n = cx->nv, fan = c->left_fanout, sent = 0;
    if (n < 3) return;
    if (fan < 0 || fan > n - 1) fan = n - 1;
    uint64_t word = sig_word(cx->epoch, cx->seq, (flags & ~SIG_LEFT) | SIG_LEFT);
    pthread_mutex_lock(&c->plock);
    for (int v = 0; v < n && sent < fan; v++) {
        int p = cx->vslots[v], t = c->peer_tl[p];
        mc_left_out_t *l = &c->left_out[p];
        if (p == c->rank || t < 0 || c->peer_dead[p] || c->p2p_dead[p] ||
            c->suspect[p])
            continue;
        sent++;
        if (c->ft_signals && sig_capable(c, p)) {
            (void)c->tlops[t]->signal(c->tl[t], p, (int)(cx->seq & 1), word);
            continue;
        }
        if (l->hx.status == MC_INPROGRESS) continue;
        l->hdr = (mc_hdr_t){.magic = MC_WIRE_MAGIC,
                            .kind = MC_KIND_LEFT,
                            .seq = cx->seq,
                            .epoch = cx->epoch,
                            .count = flags,
                            .src = c->rank};
        l->hx = (mc_xfer_t){
            .buf = &l->hdr, .len = sizeof(l->hdr), .status = MC_INPROGRESS};
        if (c->tlops[t]->post_send(c->tl[t], p, MC_CH_P2P, &l->hx) < 0)
            l->hx.status = MC_ERR_PEER_FAILED;
        else if (!c->p2p_sending[p] && !c->p2p_rest[p])
            c->left_wait[p] = 1; /* behind user sends: it goes, unwaited */
    }
    int64_t start = mc_now_us(), idle_since = start;
    for (;;) {
        int moved = left_frames_busy(c) ? progress_locked(c) : 0;
        int busy = left_frames_busy(c);
        int64_t now = mc_now_us();
        if (busy && now > start + MC_DRAIN_GRACE_US) {
            memset(c->left_wait, 0, (size_t)c->size);
            busy = 0;
        }
        pthread_mutex_unlock(&c->plock);
        if (!busy) return;
        if (moved) idle_since = now;
        if (!moved) idle_wait(c, idle_since, now);
        pthread_mutex_lock(&c->plock);
    }
}

/* Pair confirmation: two ranks whose algorithm exchanged frames
 * (mc_cx_pair_exchange) need no final barrier. A rank returns only once
 * its sends are held on the peer's side, whatever becomes of the sender
 * (transport sent_held: shm at once, the bytes lie in the peer's ring,
 * which outlives its writer; tcp once the peer's kernel acknowledged
 * them, pair_hold); so if rank A returned the op, rank B reads all of
 * A's part and completes the op in this view, unless B dies too -- what
 * the barrier gives. A's sends to a dead B fail only if B never got A's
 * part, so B never returned it. With two ranks nothing is
 * removed on suspicion (no strict majority), with etcd membership too: an
 * expired lease is suspicion, and etcd's view moves only by the same
 * agreement (a transaction from the view held). A timed-out rank's peer may still complete
 * the op (exact bytes: drain_detach_sends copies), and an op that failed
 * here on a timeout or the peer's report, whose peer is removed
 * afterwards, does not re-run if the peer may have returned it
 * (pair_peer_may_have_returned). FLAG_* words need the
 * barrier: the ranks put them in their frames' tag field and take the
 * barrier if either sent one. The signal words of a later barrier stay
 * safe: a rank reaches op seq + 2 only after it got a frame of seq + 1
 * from the peer (or passed its barrier), so the peer has left seq.
 * docs/design.md, "Pair confirmation". Off with MOONCAKE_FT_PAIR=0. */
int mc_cx_pair_usable(const mc_cctx_t *cx)
{
    mc_comm_t *c = cx->comm;
    if (!c->ft || !c->ft_pair || cx->nv != 2 ||
        cx->req->args.coll == MC_COLL_BARRIER)
        return 0;
    int p = cx->vslots[cx->vrank ^ 1], t = c->peer_tl[p];
    return t >= 0 && c->tlops[t]->sent_held != mc_tl_stub_sent_held;
}

static int held_ready(mc_cctx_t *cx, cx_waiter_t *w)
{
    mc_comm_t *c = cx->comm;
    int t = c->peer_tl[w->peer];
    mc_status_t st = c->tlops[t]->sent_held(c->tl[t], w->peer, MC_CH_COLL);
    if (st == MC_OK) return 1;
    if (st < 0 && cx->failed == MC_OK)
        cx_fail(c, st, 0,
                "%s at seq %llu: rank %d failed before its side held this "
                "rank's part (%s)",
                mc_coll_name(cx->req->args.coll), (unsigned long long)cx->seq,
                w->peer, mc_status_str(st));
    return 0;
}

/* The pair's exchange ended: return only once the peer's side holds our
 * part whatever becomes of this process (transport sent_held: shm at
 * once; tcp once the peer's kernel acknowledged it, which the peer asks
 * for as soon as it has read our frame: ack_now in in_event). A peer that
 * dies meanwhile fails the attempt; run_ft then completes it in this view
 * (our exchange ended and the peer's whole frame arrived:
 * pair_peer_may_have_returned), as the peer may have. */
static mc_status_t pair_hold(mc_cctx_t *cx)
{
    cx_waiter_t w = {.ready = held_ready, .peer = cx->vslots[cx->vrank ^ 1]};
    return cx_wait_until(cx, &w);
}

static int pair_confirms(const mc_cctx_t *cx)
{
    return cx->pair && mc_cx_pair_usable(cx);
}

/* This attempt skips (or skipped) the final barrier: pair confirmation,
 * and no FLAG_* sent or received (a flag takes the barrier on both ranks
 * alike: each sees both tags once the exchange ended). */
static int pair_skips_barrier(const mc_cctx_t *cx)
{
    return pair_confirms(cx) && !cx->tx_flags &&
           !__atomic_load_n(&cx->rx_flags, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------------ */
/* Shared slots: small ops on one host in one round, no barrier             */
/* ------------------------------------------------------------------------ */

/* Each rank owns a small shared region (a second stage.h instance, made at
 * creation, described in the store under "slot/<rank>", never replaced)
 * that every rank of the host maps. Layout after MC_STAGE_HDR: word[w] at
 * 64 * w (w = seq & 1), fence at 128, desc[w] at 192, done at 256, the
 * result word rword[w] at 320 + 64 * w (a split allreduce's block, a piped
 * root's progress), data[w] at 448 + w * slot_max, the result slot res[w]
 * (one block of a split allreduce, slot_res_bytes) after the two data
 * slots.
 *
 * With fault tolerance on (either membership), an allreduce of up to
 * MOONCAKE_SLOT_MAX bytes over n >= 3 ranks, all of them shm peers (without
 * fault tolerance recursive doubling measured faster here): each rank
 * copies its input into data[seq & 1] (once every peer is past the attempt
 * that last wrote it: the done words, slot_free_ready), publishes
 * word[seq & 1] = (epoch, seq, join flags) with one release store, then
 * the same word as a transport signal to every peer (wakes it), waits for
 * every peer's word, and reduces the n slots in vrank order (the same bits
 * everywhere). Allgather(v), broadcast, reduce, gather, scatter,
 * reduce_scatter(v) and alltoall take the same round (slot_in_bytes,
 * slot_read: a block, the root's data, a whole input; only the root reads
 * a reduce's or gather's).
 * The caller's buffer is written only once the op is decided here
 * (every word seen, the fence read), so an in-place input needs no copy
 * for a re-run; should the attempt still fail (the agreement interrupts
 * it, a torn read), an in-place reduction's input is put back from the
 * rank's own slot. (A piped broadcast's or scatter's reader writes its
 * output earlier, chunk by chunk: pure output, nothing to keep.)
 *
 * The op needs no final barrier: a word is one store
 * into its writer's own region, after the data, so any rank that sees a
 * word can read the whole slot, from then on and whatever becomes of the
 * writer; a rank that returned the op saw every word. The agreement
 * (slot_decide) completes the op in the old view when every member of the
 * old view has its word there, and a survivor that lacks the result reads
 * it from the slots (slot_finish). Otherwise nobody saw every word, and a
 * live rank that still writes its word late must not return the op: the
 * coordinator stores the op's key into the fence of every member, then
 * (full fence) reads every word; a rank, after storing its word (full
 * fence), reads its own fence once it has seen every word, before it
 * returns. A rank that returns did not see the fence, so the coordinator's
 * reads see every word it saw. A rank that sees its fence fails the
 * attempt and learns the view. A removed rank may still read slots that
 * the others rewrite: readers check every word again after reading
 * (seqlock; writers clear their word first). docs/design.md, "Beyond two
 * ranks: shared slots". */
#define SLOT_FENCE_OFF 128
#define SLOT_DESC_OFF 192 /* [2] x slot_desc_t, by seq & 1 */
#define SLOT_DONE_OFF 256 /* slot_key of the last attempt read up to */
#define SLOT_RWORD_OFF 320 /* [2] result words, 64 B apart, by seq & 1 */
#define SLOT_DATA_OFF 448
#define SLOT_ONE_WRITER_MAX ((size_t)128 << 10)
/* the largest part of gather, alltoall and a one-round allreduce
 * (measured up to it; alltoall at 384-510 KiB measured 0.51-1.84, gather
 * no clear gain) */
#define SLOT_OTHER_MAX ((size_t)256 << 10)
/* reduce's and reduce_scatter's whole input: 3-4 ranks, 384-512 KiB,
 * FT on / FT off busbw 0.95-2.78 (reduce) and 1.05-1.83 (reduce_scatter)
 * through the slots, against 0.87-0.96 and 0.93-1.10 staged (the same
 * build). A reduce's root reads every slot, n times its input: at 4
 * ranks and 512 KiB already only 0.95, so above 4 ranks it keeps
 * SLOT_OTHER_MAX (a reduce_scatter rank reads one input's worth at any
 * n) */
#define SLOT_REDUCE_MAX ((size_t)512 << 10)
#define SLOT_REDUCE_MAX_NV 4
/* an allgather's largest block: 3-4 ranks, 384-512 KiB per rank, FT on /
 * FT off busbw 0.92-2.09 through the slots against 0.71-1.25 by the ring
 * and the final barrier (the same build); 384-768 KiB with a raised
 * MOONCAKE_SLOT_MAX 1.07-1.61 against 0.91-0.99 */
#define SLOT_ALLGATHER_MAX ((size_t)768 << 10)
/* whole cache lines, so that every slot starts on one; the region
 * (slot_region_bytes) within 16 MiB */
#define SLOT_MAX_CAP                                                           \
    ((((size_t)16 << 20) - MC_STAGE_HDR - SLOT_DATA_OFF - 512) / 8 * 3 / 64 *  \
     64)

/* What the writer of a slot called (checked by every reader: a mismatch
 * fails the op, as a frame's header does). */
typedef struct slot_desc {
    uint64_t desc, count;
    int32_t coll, dtype, op, root;
} slot_desc_t;

/* A result slot: one block of a split allreduce (mc_cx_slot_split), over
 * 3 ranks or more: a third of a data slot, and a cache line for the
 * rounding (slot_split_block), and some. */
static size_t slot_res_bytes(const mc_comm_t *c)
{
    return (c->slot_max / 3 + 128 + 63) / 64 * 64;
}

/* two data slots, then two result slots */
static size_t slot_region_bytes(const mc_comm_t *c)
{
    return SLOT_DATA_OFF + 2 * c->slot_max + 2 * slot_res_bytes(c);
}

static uint8_t *slot_base(mc_comm_t *c, int p)
{
    return p == c->rank ? c->slot_own : c->slot_map[p];
}

static uint64_t *slot_word_p(mc_comm_t *c, int p, int w)
{
    return (uint64_t *)(slot_base(c, p) + 64 * (size_t)w);
}

static uint64_t *slot_fence_p(mc_comm_t *c, int p)
{
    return (uint64_t *)(slot_base(c, p) + SLOT_FENCE_OFF);
}

static slot_desc_t *slot_desc_p(mc_comm_t *c, int p, int w)
{
    return (slot_desc_t *)(slot_base(c, p) + SLOT_DESC_OFF) + w;
}

/* Attempts in order: (seq, epoch), the epoch's low 16 bits; compare keys
 * with slot_key_ge only. */
static uint64_t slot_key(uint64_t epoch, uint64_t seq)
{
    return seq << 16 | (epoch & 0xffff);
}

/* Key a at or after key b: by seq, then by epoch with wrap-around (the
 * attempts of one seq span far fewer than 32768 views), so that the
 * 65536th view does not look older than the 65535th. */
static int slot_key_ge(uint64_t a, uint64_t b)
{
    if (a >> 16 != b >> 16) return a >> 16 > b >> 16;
    return (int16_t)(uint16_t)(a - b) >= 0;
}

/* The key just before attempt (epoch, seq): past every earlier attempt,
 * of this seq in earlier views too. */
static uint64_t slot_key_before(uint64_t epoch, uint64_t seq)
{
    return slot_key(epoch - 1, seq);
}

static uint64_t *slot_done_p(mc_comm_t *c, int p)
{
    return (uint64_t *)(slot_base(c, p) + SLOT_DONE_OFF);
}

/* A rank reads the slots of an attempt only within it; it says it is past
 * all of them up to `key` (at the start of every attempt: everything
 * before it; after reading a slot op's: that one). */
static void slot_done(mc_comm_t *c, uint64_t key)
{
    if (c->slot_own) __atomic_store_n(slot_done_p(c, c->rank), key,
                                      __ATOMIC_RELEASE);
}

static const uint8_t *slot_data(mc_comm_t *c, int p, int w)
{
    return slot_base(c, p) + SLOT_DATA_OFF + (size_t)w * c->slot_max;
}

/* The result slot w of rank p and its word (a split allreduce, round 2). */
static uint8_t *slot_res(mc_comm_t *c, int p, int w)
{
    return slot_base(c, p) + SLOT_DATA_OFF + 2 * c->slot_max +
           (size_t)w * slot_res_bytes(c);
}

static uint64_t *slot_rword_p(mc_comm_t *c, int p, int w)
{
    return (uint64_t *)(slot_base(c, p) + SLOT_RWORD_OFF + 64 * (size_t)w);
}

/* Map peer p's region, as its record in the store describes it: when the
 * communicator is made and when a joiner is admitted into slot p, while
 * its process is there (it published the record before its host record),
 * so that every rank's choice (mc_cx_slot_usable) rests on the same
 * facts. 1 if mapped; 0 if this rank or p has no region (the record says
 * so, the same to every rank); -1 if p's record names a region that could
 * not be read or mapped here (`why`): a fact of this rank only, which
 * slot_agree (creation) or the caller (admission) must settle.
 * slot_map[p] is NULL unless 1. */
static int slot_map_peer(mc_comm_t *c, int p, char *why, size_t cap)
{
    if (!c->slot_own) return 0;
    c->slot_map[p] = NULL;
    char key[64], err[256];
    mc_stage_info_t info;
    size_t len = 0;
    snprintf(key, sizeof(key), "slot/%d", p);
    if (MC_FAULT_FAIL("slot.map")) {
        snprintf(why, cap, "fault injection at slot.map");
        return -1;
    }
    mc_status_t st =
        mc_store_get(c->store, key, 5000, &info, sizeof(info), &len);
    if (st != MC_OK || len != sizeof(info)) {
        snprintf(why, cap, "reading %s: %s", key,
                 st != MC_OK ? mc_last_error() : "wrong length");
        return -1;
    }
    if (!info.rid) return 0;
    if (info.size < MC_STAGE_HDR + slot_region_bytes(c)) {
        snprintf(why, cap, "its region is %llu bytes, want %zu",
                 (unsigned long long)info.size,
                 MC_STAGE_HDR + slot_region_bytes(c));
        return -1;
    }
    uint8_t *m = mc_stage_peer(c->slots, p, &info, err, sizeof(err));
    if (!m) {
        snprintf(why, cap, "%s", err);
        MC_LOG(MC_LOG_WARN, "rank %d: cannot map rank %d's slots: %s",
               c->rank, p, err);
        return -1;
    }
    c->slot_map[p] = m;
    return 1;
}

/* Where block i lies, in elements (i: a virtual rank in an attempt's
 * arguments, a slot in the caller's): the output block of allgather(v),
 * gather and alltoall, the input block of reduce_scatter(v) and scatter
 * (counts/displs; gather and scatter: `count` at displs[i], or at i * count
 * without displacements). */
static void slot_block(const mc_coll_args_t *a, int i, size_t *off,
                       size_t *len)
{
    if (a->counts) {
        *off = a->displs[i];
        *len = a->counts[i];
    } else {
        *off = a->displs ? a->displs[i] : (size_t)i * a->count;
        *len = a->count;
    }
}

/* Where alltoall's send block i lies, in elements. */
static void slot_sblock(const mc_coll_args_t *a, int i, size_t *off,
                        size_t *len)
{
    *off = a->sdispls[i];
    *len = a->scounts[i];
}

/* The end of the furthest of blocks 0..n-1 (slot_block, or the send side's
 * slot_sblock), in elements: what a whole input of scatter, reduce_scatter
 * or alltoall spans over those ranks. */
static size_t slot_extent(const mc_coll_args_t *a, int n, int send)
{
    size_t end = 0, off, len;
    for (int i = 0; i < n; i++) {
        if (send)
            slot_sblock(a, i, &off, &len);
        else
            slot_block(a, i, &off, &len);
        if (len && off + len > end) end = off + len;
    }
    return end;
}

/* What rank `me` (a block index, as in slot_block) of the n in `a` puts in
 * its slot, from the start of its sendbuf, in bytes. */
static size_t slot_in_bytes(const mc_coll_args_t *a, int me, int n)
{
    size_t es = mc_dtype_size(a->dtype), off, len;
    switch (a->coll) {
    case MC_COLL_ALLGATHER:
    case MC_COLL_ALLGATHERV:
        slot_block(a, me, &off, &len);
        return len * es;
    case MC_COLL_BROADCAST:
        return me == a->root ? a->count * es : 0;
    case MC_COLL_SCATTER:
        return me == a->root ? slot_extent(a, n, 0) * es : 0;
    case MC_COLL_REDUCE_SCATTER:
    case MC_COLL_REDUCE_SCATTERV:
        return slot_extent(a, n, 0) * es;
    case MC_COLL_ALLTOALL:
        return slot_extent(a, n, 1) * es;
    case MC_COLL_BARRIER:
        return 0;
    default: /* allreduce, reduce, gather */
        return a->count * es;
    }
}

/* The largest part any rank of the n in `a` puts in its slot, in bytes
 * (the same on every rank of a correct call); SIZE_MAX for a collective
 * the slots do not run (alltoallv: a reader cannot tell where a writer's
 * block for it lies). */
static size_t slot_part_max(const mc_coll_args_t *a, int n)
{
    size_t most = 0;
    switch (a->coll) {
    case MC_COLL_ALLGATHER:
    case MC_COLL_ALLGATHERV:
        for (int i = 0; i < n; i++) {
            size_t b = slot_in_bytes(a, i, n);
            if (b > most) most = b;
        }
        return most;
    case MC_COLL_ALLREDUCE:
    case MC_COLL_REDUCE:
    case MC_COLL_BROADCAST:
    case MC_COLL_GATHER:
    case MC_COLL_SCATTER:
    case MC_COLL_REDUCE_SCATTER:
    case MC_COLL_REDUCE_SCATTERV:
    case MC_COLL_ALLTOALL:
        return slot_in_bytes(a, a->root >= 0 ? a->root : 0, n);
    default:
        return SIZE_MAX;
    }
}

/* The shared slots for this call? The same on every rank of the
 * view: the size, the view (all shm peers), the settings, and whether
 * every rank made and described its region (the store says the same to
 * all). */
int mc_cx_slot_usable(mc_cctx_t *cx)
{
    mc_comm_t *c = cx->comm;
    size_t most = c->slot_max;
    /* one writer (broadcast, scatter): its copy into the slot and the
     * readers' copies out overlap only chunk by chunk (slot_pipe_chunk);
     * above 128 KiB that measured slower than the frames (3 ranks, 192 KiB:
     * 0.64-0.89 of FT off, against 0.76-1.24 at 128 KiB) */
    if ((cx->args->coll == MC_COLL_BROADCAST ||
         cx->args->coll == MC_COLL_SCATTER) &&
        most > SLOT_ONE_WRITER_MAX)
        most = SLOT_ONE_WRITER_MAX;
    /* the others were measured up to 256 KiB per rank, and so was an
     * allreduce in one round (when the split is off, or the staged path
     * is set away from its sizes); a split allreduce up to 512 KiB: 3-4
     * ranks, 384-512 KiB, 1.04-1.41 of FT off, against 0.71-1.02 staged;
     * an allgather's blocks up to SLOT_ALLGATHER_MAX, a reduce's or
     * reduce_scatter's input up to SLOT_REDUCE_MAX */
    mc_coll_t coll = cx->args->coll;
    if (coll == MC_COLL_ALLGATHER || coll == MC_COLL_ALLGATHERV) {
        if (most > SLOT_ALLGATHER_MAX) most = SLOT_ALLGATHER_MAX;
    } else if (coll == MC_COLL_REDUCE_SCATTER ||
               coll == MC_COLL_REDUCE_SCATTERV ||
               (coll == MC_COLL_REDUCE && cx->nv <= SLOT_REDUCE_MAX_NV)) {
        if (most > SLOT_REDUCE_MAX) most = SLOT_REDUCE_MAX;
    } else if ((coll != MC_COLL_ALLREDUCE || !mc_cx_slot_split(cx)) &&
               most > SLOT_OTHER_MAX) {
        most = SLOT_OTHER_MAX;
    }
    if (!c->ft || !c->slot_max || !c->slot_own || cx->nv < 3 ||
        slot_part_max(cx->args, cx->nv) > most || !mc_cx_stage_usable(cx))
        return 0;
    for (int v = 0; v < cx->nv; v++) {
        int p = cx->vslots[v];
        if (p != c->rank && !c->slot_map[p]) return 0;
    }
    return 1;
}

/* Is slot word v (flags masked) from a later view than `want`, at this
 * seq or after (a re-run or a later op there)? The epoch's 16 bits compare
 * with wrap-around. 0 is no word. A later op in the same view is no such
 * evidence: a peer whose attempt failed before its word (a mismatch, an
 * abort) rewrites its slot having waited only for the attempt it last
 * wrote there; its abort tells this rank. */
static int slot_later(uint64_t v, uint64_t want)
{
    uint64_t vs = v >> 8 & 0xffffffffffull, ws = want >> 8 & 0xffffffffffull;
    int16_t de = (int16_t)(uint16_t)((v >> 48) - (want >> 48));
    return v && vs >= ws && de > 0;
}

/* This rank is still in an attempt whose slots a peer has rewritten for
 * a later view (slot_later): the peer went past it only because this
 * rank was no longer in its view (slot_free_ready waits for every live
 * member of it), i.e. the group removed it. It is fenced: this call and every
 * later one fail, as when it adopts a view without itself. Re-running
 * instead could, once the others are gone, form a view of its own and
 * complete the op in a view that nobody else completed it in. plock
 * held. */
static void slot_left_behind(mc_comm_t *c, mc_cctx_t *cx, int p)
{
    char who[32];
    snprintf(who, sizeof(who), "rank %d", p);
    if (!c->evicted)
        MC_LOG(MC_LOG_WARN,
               "rank %d: %s rewrote its shared slot of %s seq %llu while "
               "rank %d was still in it: the group went on without it; "
               "fenced",
               c->rank, who, mc_coll_name(cx->req->args.coll),
               (unsigned long long)cx->seq, c->rank);
    c->evicted = 1;
    if (cx->failed == MC_OK)
        cx_fail(c, MC_ERR_EVICTED, 0,
                "%s at seq %llu: rank %d was removed from the group (%s went "
                "on without it); it must rejoin as a new process",
                mc_coll_name(cx->req->args.coll), (unsigned long long)cx->seq,
                c->rank, who);
}

/* Did the writer of slot descriptor d call what the caller did (a: the
 * caller's arguments; cx: this attempt's descriptor of them)? */
static int slot_desc_same(const slot_desc_t *d, const mc_coll_args_t *a,
                          const mc_cctx_t *cx)
{
    return d->coll == (int32_t)a->coll && d->dtype == (int32_t)a->dtype &&
           d->op == (int32_t)a->op && d->root == (int32_t)a->root &&
           d->count == cx->dcount && d->desc == cx->desc;
}

static int slot_ready(mc_cctx_t *cx, cx_waiter_t *w)
{
    mc_comm_t *c = cx->comm;
    int p = w->peer, t = c->peer_tl[p], ws = (int)(cx->seq & 1);
    for (int pass = 0; pass < 2; pass++) {
        int dead = c->peer_dead[p];
        uint64_t v = 0;
        (void)c->tlops[t]->peek(c->tl[t], p, ws, &v); /* arms wait() */
        v = __atomic_load_n(slot_word_p(c, p, ws), __ATOMIC_ACQUIRE);
        if ((v & ~SIG_FLAGS) == w->want) {
            const slot_desc_t *d = slot_desc_p(c, p, ws);
            const mc_coll_args_t *a = &cx->req->args;
            if (!slot_desc_same(d, a, cx)) {
                /* read like the data: a word that changed meanwhile means
                 * the slot was being rewritten (we were removed), not a
                 * mismatch */
                __atomic_thread_fence(__ATOMIC_ACQUIRE);
                if (__atomic_load_n(slot_word_p(c, p, ws), __ATOMIC_RELAXED) !=
                    v)
                    return 0;
                char mine[160], theirs[160];
                describe(mine, sizeof(mine), a->coll, a->dtype, a->op,
                         a->root, cx->dcount);
                describe(theirs, sizeof(theirs), (int)d->coll, (int)d->dtype,
                         (int)d->op, (int)d->root, d->count);
                if (cx->failed == MC_OK)
                    cx_fail(c, MC_ERR_MISMATCH, 0,
                            "collective mismatch at seq %llu: rank %d called "
                            "%s but rank %d called %s",
                            (unsigned long long)cx->seq, c->rank, mine, p,
                            theirs);
                return 0;
            }
            w->got = v;
            return 1;
        }
        if (slot_later(v & ~SIG_FLAGS, w->want)) {
            slot_left_behind(c, cx, p);
            return 0;
        }
        /* a frame of this op from it: it runs another algorithm, so it
         * called something else (or other sizes) */
        const mc_in_t *in = &c->in[MC_CH_COLL][p];
        if (in->state == IN_HAVE_HDR && in->hdr.seq == cx->seq &&
            in->hdr.epoch == cx->epoch) {
            const mc_hdr_t *h = &in->hdr;
            const mc_coll_args_t *a = &cx->req->args;
            char mine[160], theirs[160];
            describe(mine, sizeof(mine), a->coll, a->dtype, a->op, a->root,
                     cx->dcount);
            describe(theirs, sizeof(theirs), h->coll, h->dtype, h->op, h->root,
                     h->count);
            if (cx->failed == MC_OK)
                cx_fail(c, MC_ERR_MISMATCH, 0,
                        "collective mismatch at seq %llu: rank %d called %s "
                        "(shared slots) but rank %d called %s",
                        (unsigned long long)cx->seq, c->rank, mine, p, theirs);
            return 0;
        }
        if (!dead && !c->peer_dead[p]) return 0;
    }
    if (cx->failed == MC_OK)
        cx_fail(c, MC_ERR_PEER_FAILED, 0,
                "%s at seq %llu: rank %d failed before its part was in its "
                "slot",
                mc_coll_name(cx->req->args.coll), (unsigned long long)cx->seq,
                p);
    return 0;
}

/* Every peer of the view past the attempt that last wrote our slot w (or
 * dead): then we may write it again. A peer whose op failed, or that ran
 * another op at that seq, gets there at the start of its next attempt. */
static int slot_free_ready(mc_cctx_t *cx, cx_waiter_t *w)
{
    mc_comm_t *c = cx->comm;
    for (int v = 0; v < cx->nv; v++) {
        int p = cx->vslots[v];
        if (p == c->rank || c->peer_dead[p]) continue;
        if (!slot_key_ge(__atomic_load_n(slot_done_p(c, p), __ATOMIC_ACQUIRE),
                         w->want))
            return 0;
    }
    return 1;
}

/* What a reduction leaves rank `me` (block index, as in slot_block), in
 * bytes: the allreduce's vector, the reduce's at the root, its own block
 * of a reduce_scatter; 0 for the rest. */
static size_t slot_red_bytes(const mc_coll_args_t *a, int me)
{
    size_t es = mc_dtype_size(a->dtype), off, len;
    switch (a->coll) {
    case MC_COLL_ALLREDUCE:
        return a->count * es;
    case MC_COLL_REDUCE:
        return me == a->root ? a->count * es : 0;
    case MC_COLL_REDUCE_SCATTER:
    case MC_COLL_REDUCE_SCATTERV:
        slot_block(a, me, &off, &len);
        return len * es;
    default:
        return 0;
    }
}

/* out = the reduction of `len` elements at element `off` of the nv slots,
 * in vrank order (the same bits everywhere); AVG divides by nv. */
static void slot_reduce(mc_comm_t *c, const mc_coll_args_t *a,
                        const int *vslots, int nv, int ws, size_t off,
                        size_t len, void *out)
{
    size_t es = mc_dtype_size(a->dtype);
    if (!len) return;
    if (nv == 1) {
        memcpy(out, slot_data(c, vslots[0], ws) + off * es, len * es);
        return;
    }
    mc_reduce(out, slot_data(c, vslots[0], ws) + off * es,
              slot_data(c, vslots[1], ws) + off * es, len, a->dtype, a->op);
    for (int v = 2; v < nv; v++)
        mc_reduce(out, out, slot_data(c, vslots[v], ws) + off * es, len,
                  a->dtype, a->op);
    if (a->op == MC_AVG) mc_reduce_div(out, len, a->dtype, (uint64_t)nv);
}

/* Is word ws of every slot of vslots[0, nv) `want` (flags masked)? Their
 * flags' OR into *acc (may be NULL). after_reads: the seqlock's re-check
 * once the slots were read (an acquire fence, then the loads); else a
 * first look (acquire loads, the data read after). */
static int slot_words_are(mc_comm_t *c, const int *vslots, int nv, int ws,
                          uint64_t want, int after_reads, uint64_t *acc)
{
    if (after_reads) __atomic_thread_fence(__ATOMIC_ACQUIRE);
    for (int v = 0; v < nv; v++) {
        uint64_t w = __atomic_load_n(slot_word_p(c, vslots[v], ws),
                                     after_reads ? __ATOMIC_RELAXED
                                                 : __ATOMIC_ACQUIRE);
        if ((w & ~SIG_FLAGS) != want) return 0;
        if (acc) *acc |= w & SIG_FLAGS;
    }
    return 1;
}

/* The result of (epoch, seq) for the rank of block index `me` from the
 * slots of `vslots` (ids[k]: the block index of vslots[k] as in
 * slot_block, NULL: k) into out: allreduce, reduce (the root), reduce_scatter
 * (its block): the reduction; allgather, gather (the root): every block at
 * its place in the output; broadcast: the root's data; scatter: its block
 * of the root's; alltoall: every writer's block for it at the writer's
 * place. The flags' OR in *flags. 0 if a word is not there or changed
 * while read. */
static int slot_read(mc_comm_t *c, const mc_coll_args_t *a, const int *vslots,
                     const int *ids, int nv, int me, uint64_t epoch,
                     uint64_t seq, void *out, uint64_t *flags)
{
    int ws = (int)(seq & 1);
    size_t es = mc_dtype_size(a->dtype), off, len, soff;
    uint64_t acc = 0, want = sig_word(epoch, seq, 0) & ~SIG_FLAGS;
    if (!slot_words_are(c, vslots, nv, ws, want, 0, &acc)) return 0;
    switch (a->coll) {
    case MC_COLL_ALLGATHER:
    case MC_COLL_ALLGATHERV:
    case MC_COLL_GATHER:
        if (a->coll == MC_COLL_GATHER && me != a->root) break;
        for (int v = 0; v < nv; v++) {
            slot_block(a, ids ? ids[v] : v, &off, &len);
            if (len)
                memcpy((uint8_t *)out + off * es, slot_data(c, vslots[v], ws),
                       len * es);
        }
        break;
    case MC_COLL_BROADCAST:
    case MC_COLL_SCATTER:
        if (a->coll == MC_COLL_SCATTER) {
            slot_block(a, me, &off, &len);
        } else {
            off = 0;
            len = a->count;
        }
        for (int v = 0; v < nv; v++) /* out NULL: read already (piped) */
            if ((ids ? ids[v] : v) == a->root && len && out)
                memcpy(out, slot_data(c, vslots[v], ws) + off * es, len * es);
        break;
    case MC_COLL_ALLTOALL:
        /* every writer's block for us lies where our own send block for
         * us does: alltoall's send layout is the same on every rank, and
         * its length is the receive block's */
        soff = a->sdispls[me];
        for (int v = 0; v < nv; v++) {
            slot_block(a, ids ? ids[v] : v, &off, &len);
            if (len)
                memcpy((uint8_t *)out + off * es,
                       slot_data(c, vslots[v], ws) + soff * es, len * es);
        }
        break;
    case MC_COLL_BARRIER:
        break;
    case MC_COLL_REDUCE_SCATTER:
    case MC_COLL_REDUCE_SCATTERV:
        slot_block(a, me, &off, &len);
        slot_reduce(c, a, vslots, nv, ws, off, len, out);
        break;
    default: /* allreduce, reduce */
        if (a->coll == MC_COLL_REDUCE && me != a->root) break;
        slot_reduce(c, a, vslots, nv, ws, 0, a->count, out);
        break;
    }
    *flags = acc;
    /* Read consistently (a seqlock): a writer clears its word before it
     * rewrites its slot, so a word unchanged after the reads means the
     * data was not being rewritten. A slot is rewritten under a reader
     * only when that reader was removed from the writer's view (the
     * writer waits for the others: slot_free_ready). */
    return slot_words_are(c, vslots, nv, ws, want, 1, NULL);
}

/* A split allreduce (two rounds through the slots): the attempt's
 * allreduce of MOONCAKE_SLOT_SPLIT_MIN bytes or more. Round 1 is the
 * one-round op's (every input in its slot, every word seen, the fence
 * read); in round 2 each rank reduces only its block of the vector
 * (slot_split_block) into its result slot and publishes it by its result
 * word; every rank copies every block out, where one round has every rank
 * reduce the whole vector. (Not reduce: its root reducing alone in one
 * round measured faster, 3 ranks, 48-192 KiB: 10-17 against 17-28 us, since
 * the others need not wait for it.) The op's
 * fate still rests on the round-1 words alone (slot_decide): a survivor
 * that lacks the result reduces the whole vector from the data slots
 * (slot_finish), with the same bits, since every element is reduced over
 * the same slots in the same order. The same on every rank: the call's
 * size and a shared setting. */
/* Above this (a MOONCAKE_SLOT_MAX raised past it) the staged path, which
 * pipelines its chunks, measured faster (3-4 ranks, 1-2 MiB: 0.62-0.93 of
 * FT off through the split, 0.80-0.98 staged; 512 KiB 0.99-1.26). */
#define SLOT_SPLIT_MAX ((size_t)512 << 10)
/* How long round 2 waits for a live peer's block before reducing it here
 * from the data slots (the same bits). */
#define SLOT_RES_GRACE_US 500

int mc_cx_slot_split(const mc_cctx_t *cx)
{
    const mc_coll_args_t *a = cx->args;
    size_t min = cx->comm->slot_split_min,
           bytes = a->count * mc_dtype_size(a->dtype);
    return min && a->coll == MC_COLL_ALLREDUCE && bytes >= min &&
           bytes <= SLOT_SPLIT_MAX;
}

/* Block b of n of a split allreduce of `count` elements of es bytes, in
 * elements: whole cache lines but for the last (any of the last may be
 * empty). */
static void slot_split_block(size_t count, size_t es, int n, int b,
                             size_t *off, size_t *len)
{
    size_t al = es < 64 && 64 % es == 0 ? 64 / es : 1;
    size_t per = (count + (size_t)n - 1) / (size_t)n;
    per = (per + al - 1) / al * al;
    size_t o = per * (size_t)b;
    *off = o < count ? o : count;
    *len = o < count ? (count - o < per ? count - o : per) : 0;
}

/* Round 2 of a split allreduce: has w->peer published its block of the
 * result (its result word), or is it no use waiting for it: dead, past
 * the op without it (its done word: its attempt failed, e.g. timed out in
 * round 1 without a report), or slower than SLOT_RES_GRACE_US? Every
 * round-1 word was seen, so any block can be reduced here from the data
 * slots, with the same bits (slot_split_round). A peer that rewrote its
 * slots for a later view fences us (slot_left_behind). plock held. */
static int slot_res_ready(mc_cctx_t *cx, cx_waiter_t *w)
{
    mc_comm_t *c = cx->comm;
    int p = w->peer, t = c->peer_tl[p], ws = (int)(cx->seq & 1);
    uint64_t v = 0;
    (void)c->tlops[t]->peek(c->tl[t], p, ws, &v); /* arms wait() */
    v = __atomic_load_n(slot_rword_p(c, p, ws), __ATOMIC_ACQUIRE);
    if ((v & ~SIG_FLAGS) == w->want) return 1;
    uint64_t d = __atomic_load_n(slot_word_p(c, p, ws), __ATOMIC_ACQUIRE);
    if (slot_later(v & ~SIG_FLAGS, w->want) ||
        slot_later(d & ~SIG_FLAGS, w->want)) {
        slot_left_behind(c, cx, p);
        return 0;
    }
    return c->peer_dead[p] ||
           slot_key_ge(__atomic_load_n(slot_done_p(c, p), __ATOMIC_ACQUIRE),
                       slot_key(cx->epoch, cx->seq)) ||
           mc_now_us() - w->since >= SLOT_RES_GRACE_US;
}

/* Round 2 of a split allreduce (mc_cx_slot_split), every round-1 word
 * seen and our fence read: our block reduced into our result slot, our
 * result word out, every peer's awaited, every block copied into the
 * caller's output. *whole: 0 if a slot was rewritten while read (seqlock, as
 * slot_read); the flags' OR of the round-1 words in *flags. A failed wait
 * returns its status. */
static mc_status_t slot_split_round(mc_cctx_t *cx, uint64_t mine,
                                    uint64_t *flags, int *whole)
{
    mc_comm_t *c = cx->comm;
    const mc_coll_args_t *a = cx->args;
    int n = cx->nv, r = cx->vrank, ws = (int)(cx->seq & 1);
    int *copied = c->slot_vs; /* [n] scratch: slot_finish's, not now */
    size_t es = mc_dtype_size(a->dtype), off, len;
    uint64_t want = mine & ~SIG_FLAGS, acc = 0;
    *whole = 0;
    slot_split_block(a->count, es, n, r, &off, &len);
    if (len)
        slot_reduce(c, a, cx->vslots, n, ws, off, len,
                    slot_res(c, c->rank, ws));
    if (!slot_words_are(c, cx->vslots, n, ws, want, 1, &acc))
        return MC_OK; /* torn */
    __atomic_store_n(slot_rword_p(c, c->rank, ws), mine, __ATOMIC_RELEASE);
    pthread_mutex_lock(&c->plock);
    for (int d = 1; d < n; d++) { /* wakes a sleeping peer (a value that
                                     differs from round 1's) */
        int p = cx->vslots[(r + d) % n], t = c->peer_tl[p];
        (void)c->tlops[t]->signal(c->tl[t], p, ws, mine | SLOT_SIG_RES);
    }
    pthread_mutex_unlock(&c->plock);
    MC_FAULT_POINT("slot.res");
    int64_t since = mc_now_us();
    for (int d = 1; d < n; d++) {
        cx_waiter_t w = {.ready = slot_res_ready,
                         .peer = cx->vslots[(r + d) % n],
                         .want = want,
                         .since = since};
        mc_status_t st = cx_wait_until(cx, &w);
        if (st < 0) return st;
    }
    MC_FAULT_POINT("slot.res.seen");
    /* every block from its reducer's result slot, or reduced here */
    for (int v = 0; v < n; v++) {
        int p = cx->vslots[v];
        uint8_t *o;
        slot_split_block(a->count, es, n, v, &off, &len);
        o = (uint8_t *)a->recvbuf + off * es;
        copied[v] = (__atomic_load_n(slot_rword_p(c, p, ws),
                                     __ATOMIC_ACQUIRE) &
                     ~SIG_FLAGS) == want;
        if (!len) continue;
        if (copied[v])
            memcpy(o, slot_res(c, p, ws), len * es);
        else
            slot_reduce(c, a, cx->vslots, n, ws, off, len, o);
    }
    if (!slot_words_are(c, cx->vslots, n, ws, want, 1, NULL))
        return MC_OK; /* torn */
    for (int v = 0; v < n; v++) /* after the fence there */
        if (copied[v] &&
            (__atomic_load_n(slot_rword_p(c, cx->vslots[v], ws),
                             __ATOMIC_RELAXED) &
             ~SIG_FLAGS) != want)
            return MC_OK; /* torn */
    *flags = acc;
    *whole = 1;
    return MC_OK;
}

/* One writer of more than one chunk (broadcast, scatter): the writer
 * publishes its progress chunk by chunk in its result word (which these
 * collectives do not otherwise use): (epoch, seq) with SLOT_SIG_RES and the
 * count of chunks copied in the low 6 bits; the readers copy each chunk out
 * as it lands, so their copies overlap the writer's instead of following
 * it. The chunk size in bytes, 0 for no pipeline; the same on every rank
 * (the root's part). */
#define SLOT_PIPE_CHUNK ((size_t)16 << 10)
#define SLOT_PIPE_MAXCH 63
static size_t slot_pipe_chunk(const mc_coll_args_t *a, int n)
{
    if (a->coll != MC_COLL_BROADCAST && a->coll != MC_COLL_SCATTER) return 0;
    size_t part = slot_part_max(a, n);
    size_t ch = (part + SLOT_PIPE_MAXCH - 1) / SLOT_PIPE_MAXCH;
    ch = (ch + 63) / 64 * 64;
    if (ch < SLOT_PIPE_CHUNK) ch = SLOT_PIPE_CHUNK;
    return part > ch ? ch : 0;
}

/* Has the writer w->peer copied w->i chunks of (epoch, seq) into its slot,
 * or published its word (all of them)? As slot_ready otherwise (a dead
 * writer, a mismatch, a later view). plock held. */
static int slot_pipe_ready(mc_cctx_t *cx, cx_waiter_t *w)
{
    mc_comm_t *c = cx->comm;
    int p = w->peer, t = c->peer_tl[p], ws = (int)(cx->seq & 1);
    uint64_t v = 0;
    (void)c->tlops[t]->peek(c->tl[t], p, ws, &v); /* arms wait() first */
    v = __atomic_load_n(slot_rword_p(c, p, ws), __ATOMIC_ACQUIRE);
    if ((v & ~SIG_FLAGS) == w->want && (int)(v & 0x3f) >= w->i) return 1;
    if (slot_ready(cx, w)) return 1;
    /* slot_ready armed wait() again, at the signal's latest value: the
     * progress that signal announced may have landed since our load */
    v = __atomic_load_n(slot_rword_p(c, p, ws), __ATOMIC_ACQUIRE);
    return cx->failed == MC_OK && (v & ~SIG_FLAGS) == w->want &&
           (int)(v & 0x3f) >= w->i;
}

/* A reader of a piped one-writer op (slot_pipe_chunk): its part of the
 * root's data (broadcast: all of it; scatter: its block) copied into the
 * caller's output chunk by chunk as the root publishes them. The reads are
 * checked like any (slot_read, with nothing left to copy): the root's word
 * unchanged at the end means no rewrite began since. */
static mc_status_t slot_pipe_read(mc_cctx_t *cx, uint64_t want, size_t ch)
{
    mc_comm_t *c = cx->comm;
    const mc_coll_args_t *a = cx->args;
    int ws = (int)(cx->seq & 1), root = cx->vslots[a->root];
    size_t es = mc_dtype_size(a->dtype), lo, hi;
    if (a->coll == MC_COLL_SCATTER) {
        size_t off, len;
        slot_block(a, cx->vrank, &off, &len);
        lo = off * es;
        hi = lo + len * es;
    } else {
        lo = 0;
        hi = a->count * es;
    }
    for (size_t k = lo / ch; lo < hi && k * ch < hi; k++) {
        cx_waiter_t w = {.ready = slot_pipe_ready,
                         .peer = root,
                         .want = want,
                         .i = (int)k + 1};
        mc_status_t st = cx_wait_until(cx, &w);
        if (st < 0) return st;
        size_t x = k * ch > lo ? k * ch : lo,
               y = (k + 1) * ch < hi ? (k + 1) * ch : hi;
        memcpy((uint8_t *)a->recvbuf + (x - lo), slot_data(c, root, ws) + x,
               y - x);
        if (k == lo / ch) MC_FAULT_POINT("slot.pread");
    }
    return MC_OK;
}

mc_status_t mc_cx_slot_run(mc_cctx_t *cx)
{
    mc_comm_t *c = cx->comm;
    const mc_coll_args_t *a = cx->args;
    int n = cx->nv, r = cx->vrank, ws = (int)(cx->seq & 1);
    size_t bytes = slot_in_bytes(a, r, n), red = slot_red_bytes(a, r);
    uint64_t mine = sig_word(cx->epoch, cx->seq, cx->tx_flags);
    cx->slot = 1;
    if (c->slot_prev[ws]) {
        cx_waiter_t fw = {.ready = slot_free_ready,
                          .peer = -1,
                          .want = c->slot_prev[ws]};
        mc_status_t st = cx_wait_until(cx, &fw);
        if (st < 0) {
            cx->slot = 0; /* no word written */
            return st;
        }
    }
    /* A reduction in place (its output overlaps its input) writes the
     * result straight into the caller's buffer: a torn read (the slots
     * rewritten under us: we were removed) puts the input back from our
     * own slot, which only we write. (The other collectives' reads write
     * only output blocks, and into the caller's own input only the same
     * bytes, from its own slot; alltoall has no in-place form.) */
    int inplace = red && mem_overlap(a->sendbuf, bytes, a->recvbuf, red);
    int split = mc_cx_slot_split(cx);
    c->slot_prev[ws] = slot_key(cx->epoch, cx->seq);
    /* a reader that read the old contents sees its word change (seqlock,
     * slot_read, slot_split_round) */
    __atomic_store_n(slot_word_p(c, c->rank, ws), 0, __ATOMIC_RELAXED);
    __atomic_store_n(slot_rword_p(c, c->rank, ws), 0, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    /* the caller's call (roots and blocks by slot), as readers check it */
    const mc_coll_args_t *ua = &cx->req->args;
    *slot_desc_p(c, c->rank, ws) = (slot_desc_t){.desc = cx->desc,
                                                 .count = cx->dcount,
                                                 .coll = (int32_t)ua->coll,
                                                 .dtype = (int32_t)ua->dtype,
                                                 .op = (int32_t)ua->op,
                                                 .root = (int32_t)ua->root};
    size_t ch = slot_pipe_chunk(a, n);
    if (ch && bytes) {
        /* the root, piped: each chunk, then its count in our result word
         * (and as the signal: wakes a reader) */
        uint8_t *dst = (uint8_t *)slot_data(c, c->rank, ws);
        uint64_t k = 0;
        for (size_t o = 0; o < bytes; o += ch) {
            size_t l = bytes - o < ch ? bytes - o : ch;
            memcpy(dst + o, (const uint8_t *)a->sendbuf + o, l);
            uint64_t pv = (mine & ~SIG_FLAGS) | SLOT_SIG_RES | ++k;
            __atomic_store_n(slot_rword_p(c, c->rank, ws), pv,
                             __ATOMIC_RELEASE);
            pthread_mutex_lock(&c->plock);
            for (int d = 1; d < n; d++) {
                int p = cx->vslots[(r + d) % n], t = c->peer_tl[p];
                (void)c->tlops[t]->signal(c->tl[t], p, ws, pv);
            }
            pthread_mutex_unlock(&c->plock);
            if (k == 1) MC_FAULT_POINT("slot.chunk");
        }
    } else if (bytes) {
        memcpy((uint8_t *)slot_data(c, c->rank, ws), a->sendbuf, bytes);
    }
    MC_FAULT_POINT("slot.data");
    __atomic_store_n(slot_word_p(c, c->rank, ws), mine, __ATOMIC_RELEASE);
    /* the fence handshake (Dekker): our word before we read our fence */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    pthread_mutex_lock(&c->plock);
    for (int d = 1; d < n; d++) { /* wakes a sleeping peer */
        int p = cx->vslots[(r + d) % n], t = c->peer_tl[p];
        (void)c->tlops[t]->signal(c->tl[t], p, ws, mine);
    }
    pthread_mutex_unlock(&c->plock);
    MC_FAULT_POINT("slot.word");
    int piped = ch && r != a->root;
    if (piped) {
        mc_status_t st = slot_pipe_read(cx, mine & ~SIG_FLAGS, ch);
        if (st < 0) return st;
    }
    for (int d = 1; d < n; d++) {
        cx_waiter_t w = {.ready = slot_ready,
                         .peer = cx->vslots[(r + d) % n],
                         .want = mine & ~SIG_FLAGS};
        mc_status_t st = cx_wait_until(cx, &w);
        if (st < 0) return st;
    }
    MC_FAULT_POINT("slot.seen");
    if (c->ft) {
        /* a coordinator that found our word missing fenced us out */
        __atomic_thread_fence(__ATOMIC_SEQ_CST); /* after the word reads */
        uint64_t f = __atomic_load_n(slot_fence_p(c, c->rank), __ATOMIC_SEQ_CST);
        pthread_mutex_lock(&c->plock);
        if (f == (mine & ~SIG_FLAGS) && cx->failed == MC_OK)
            cx_fail(c, MC_ERR_PEER_FAILED, 0,
                    "%s at seq %llu: the group decided without rank %d's "
                    "part (fenced)",
                    mc_coll_name(a->coll), (unsigned long long)cx->seq,
                    c->rank);
        mc_status_t st = cx->failed;
        pthread_mutex_unlock(&c->plock);
        if (st < 0) return st;
    }
    uint64_t flags = 0;
    int whole;
    if (split) {
        mc_status_t st = slot_split_round(cx, mine, &flags, &whole);
        if (st < 0) return st;
    } else {
        whole = slot_read(c, a, cx->vslots, NULL, n, r, cx->epoch, cx->seq,
                          piped ? NULL : a->recvbuf, &flags);
    }
    pthread_mutex_lock(&c->plock);
    if (!whole) {
        /* rewritten while read: for a later view (fenced), or by a peer
         * whose attempt failed (its abort, or the agreement, tells) */
        for (int v = 0; v < n && cx->failed == MC_OK; v++) {
            int p = cx->vslots[v];
            uint64_t w = __atomic_load_n(slot_word_p(c, p, ws),
                                         __ATOMIC_ACQUIRE);
            if (slot_later(w & ~SIG_FLAGS, mine & ~SIG_FLAGS))
                slot_left_behind(c, cx, p);
        }
        if (cx->failed == MC_OK)
            cx_fail(c, MC_ERR_PEER_FAILED, 0,
                    "%s at seq %llu: slots were rewritten while rank %d read "
                    "them",
                    mc_coll_name(a->coll), (unsigned long long)cx->seq,
                    c->rank);
    }
    mc_status_t st = cx->failed;
    if (st == MC_OK && c->ft) cx->passed = 1; /* decided here: slot_decide */
    pthread_mutex_unlock(&c->plock);
    if (st < 0) {
        /* the output may hold a result, or a torn one: an in-place input
         * goes back, from our own slot (only we write it), so a failed
         * call leaves it as it was (slot_finish writes the result if the
         * group completed the op) */
        if (inplace)
            memcpy((void *)(uintptr_t)a->sendbuf, slot_data(c, c->rank, ws),
                   bytes); /* writable: the output overlaps it */
        return st;
    }
    slot_done(c, slot_key(cx->epoch, cx->seq));
    cx->flags = flags;
    cx->data_done = 1;
    return MC_OK;
}

/* Coordinator, deciding the view after op `seq` of this epoch was
 * interrupted: may it have completed on some rank? Only if this rank is
 * in that op through the slots (else our word is missing: nobody saw every
 * word, nor can). Fence every member of the old view (the op's word in its
 * fence), then (full fence) read every word: a member that returns the op
 * read every word before it read its fence, and did not see ours, so those
 * words were stored before our reads, which see them. So if one is
 * missing, no member returned the op and none will (each sees its fence):
 * it re-runs. If all are there, it completes in the old view (a fenced
 * member fails its attempt and reads the result from the slots,
 * slot_finish). plock held. */
static int slot_decide(mc_comm_t *c)
{
    mc_cctx_t *cx = &c->cx;
    if (!cx->slot || cx->epoch != c->epoch || cx->seq != c->exec_seq)
        return 0;
    int ws = (int)(cx->seq & 1);
    uint64_t want = sig_word(cx->epoch, cx->seq, 0) & ~SIG_FLAGS;
    for (int v = 0; v < c->nactive; v++)
        __atomic_store_n(slot_fence_p(c, c->vslots[v]), want, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    for (int v = 0; v < c->nactive; v++) {
        uint64_t w = __atomic_load_n(slot_word_p(c, c->vslots[v], ws),
                                     __ATOMIC_SEQ_CST);
        if ((w & ~SIG_FLAGS) != want) return 0;
    }
    return 1;
}

/* AG_DONE_OLD for a slot op whose result this rank lacks: every word of
 * the old view is there (slot_decide), so read it from the slots (the
 * caller's arguments: blocks and root by slot), once
 * every writer is seen to have called what this rank called (a mismatch
 * fails the call as it would have in the op; the others failed it too, or
 * will). The result goes through scratch: a torn read (the slots moved
 * on: this rank was removed meanwhile) leaves an in-place input whole.
 * cx is still this op's attempt. Sets cx->err on failure. plock held. */
static mc_status_t slot_finish(mc_comm_t *c, mc_request_t *r, uint64_t epoch,
                               const uint8_t *att)
{
    mc_cctx_t *cx = &c->cx;
    const mc_coll_args_t *a = &r->args;
    int *vs = c->slot_vs, nv = 0, ws = (int)(r->seq & 1), bad = -1;
    uint64_t want = sig_word(epoch, r->seq, 0) & ~SIG_FLAGS, bad_w = 0;
    for (int p = 0; p < c->size; p++) {
        if (!att[p]) continue;
        uint64_t w = __atomic_load_n(slot_word_p(c, p, ws), __ATOMIC_ACQUIRE);
        if ((w & ~SIG_FLAGS) != want && !slot_later(w & ~SIG_FLAGS, want)) {
            /* p's part is not there: nobody has returned the op (a rank
             * returns it only once it saw every word), and the group is
             * past it only because a member's call ended without
             * completing it (timed out, or failed there) before p failed.
             * (A p that is alive but slow could still complete it later,
             * alone of its view: guarantee 2 speaks of the ranks that
             * complete. A word cleared by a p rewriting its slot for a
             * later view, this rank left behind, also lands here.) */
            snprintf(cx->err, sizeof(cx->err),
                     "%s at seq %llu: cannot complete: a member's call ended "
                     "without completing it (it timed out or failed there) "
                     "and the group went past it in view %llu, but rank "
                     "%d's part is not in the shared slots; the new view "
                     "holds from the next operation",
                     mc_coll_name(a->coll), (unsigned long long)r->seq,
                     (unsigned long long)epoch, p);
            return MC_ERR_PEER_FAILED;
        }
        if ((w & ~SIG_FLAGS) != want || (p != c->rank && !c->slot_map[p]))
            goto internal;
        const slot_desc_t *d = slot_desc_p(c, p, ws);
        if (bad < 0 && !slot_desc_same(d, a, cx)) {
            bad = p;
            bad_w = w;
        }
        vs[nv++] = p;
    }
    if (bad >= 0) {
        const slot_desc_t *d = slot_desc_p(c, bad, ws);
        char mine[160], theirs[160];
        describe(mine, sizeof(mine), a->coll, a->dtype, a->op, a->root,
                 cx->dcount);
        describe(theirs, sizeof(theirs), (int)d->coll, (int)d->dtype,
                 (int)d->op, (int)d->root, d->count);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(slot_word_p(c, bad, ws), __ATOMIC_RELAXED) != bad_w)
            goto internal; /* rewritten while read */
        snprintf(cx->err, sizeof(cx->err),
                 "collective mismatch at seq %llu: rank %d called %s but "
                 "rank %d called %s",
                 (unsigned long long)r->seq, c->rank, mine, bad, theirs);
        return MC_ERR_MISMATCH;
    }
    size_t es = mc_dtype_size(a->dtype), red = slot_red_bytes(a, c->rank);
    if (is_rooted(a->coll) &&
        (a->root < 0 || a->root >= c->size || !att[a->root]))
        goto internal;
    void *out = red ? mc_cx_scratch(cx, 0, red) : a->recvbuf;
    if (!out && red) {
        snprintf(cx->err, sizeof(cx->err),
                 "%s at seq %llu: no memory to read the result from the "
                 "shared slots",
                 mc_coll_name(a->coll), (unsigned long long)r->seq);
        return MC_ERR_NO_MEMORY;
    }
    uint64_t flags = 0;
    if (!slot_read(c, a, vs, vs, nv, c->rank, epoch, r->seq, out, &flags))
        goto internal;
    if (red) memcpy(a->recvbuf, out, red);
    /* the blocks of inactive slots are zero, as view.c leaves them (gather:
     * on the root) */
    if (a->coll == MC_COLL_ALLGATHER || a->coll == MC_COLL_ALLGATHERV ||
        a->coll == MC_COLL_ALLTOALL ||
        (a->coll == MC_COLL_GATHER && c->rank == a->root)) {
        for (int p = 0; p < c->size; p++) {
            size_t off, len;
            slot_block(a, p, &off, &len);
            if (!att[p] && len)
                memset((uint8_t *)a->recvbuf + off * es, 0, len * es);
        }
    }
    /* no join flags: as after the barrier's "done in the old view", the
     * others may have moved on without an admission round */
    cx->flags = 0;
    cx->data_done = 1;
    return MC_OK;
internal:
    snprintf(cx->err, sizeof(cx->err),
             "%s at seq %llu: the group completed it in view %llu but rank "
             "%d could not read its result from the shared slots (internal "
             "error)",
             mc_coll_name(a->coll), (unsigned long long)r->seq,
             (unsigned long long)epoch, c->rank);
    return MC_ERR_INTERNAL;
}

/* A pair-confirmed attempt (epoch, seq) over the slots `att` failed here
 * and the peer has been removed since: might it have returned the op?
 * Only if a whole frame of its for that attempt reached us (it returns
 * only once the whole frame is held on our side: pair_hold), or if we cannot
 * tell (its stream has not ended). Then the op must not re-run in a view
 * without it. A peer that died mid-op left its frame incomplete. plock
 * held. */
static int pair_peer_may_have_returned(mc_comm_t *c, const uint8_t *att,
                                       uint64_t epoch, uint64_t seq)
{
    for (int p = 0; p < c->size; p++) {
        if (p == c->rank || !att[p]) continue;
        if (c->in[MC_CH_COLL][p].state != IN_DEAD) return 1;
        if (c->fin_epoch[p] > epoch ||
            (c->fin_epoch[p] == epoch && c->fin_seq[p] >= seq))
            return 1;
    }
    return 0;
}

/* Return only once every rank has its result: then a failure from here
 * on can always complete this op in this view. The barrier also tells
 * every member whether joiners wait (FLAG_*). */
static mc_status_t ft_barrier(mc_comm_t *c, mc_cctx_t *cx, uint64_t *flags,
                              int frames)
{
    cx->data_done = 1;
    int sig = !frames && sig_barrier_usable(c, cx);
    if (!sig && entry_usable(c, cx)) {
        pthread_mutex_lock(&c->plock);
        cx->entered = 1; /* reports say so from now on */
        pthread_mutex_unlock(&c->plock);
    }
    mc_status_t st = sig ? sig_barrier(cx, flags)
                         : mc_algo_barrier_flags(cx, flags);
    if (st != MC_OK) return st;
    /* Every rank holds its result: from here a peer's report or abort read
     * by any progress (the LEFT notices', another thread's) must not fail
     * the op (it would re-run from an in-place input that the commit is
     * about to overwrite with the result). */
    pthread_mutex_lock(&c->plock);
    st = cx->failed;
    if (st == MC_OK) cx->passed = 1;
    pthread_mutex_unlock(&c->plock);
    if (st != MC_OK || sig) return st;
    if (!cx->entered) left_notices(c, cx, *flags);
    /* a view that dropped this rank meanwhile (false suspicion): the
     * others may re-run the op without it; do not report it done */
    pthread_mutex_lock(&c->plock);
    if (c->nv_pending && !c->nv_active[c->rank] && c->nv_start <= cx->seq) {
        cx->passed = 0; /* to the agreement, which adopts it: evicted */
        cx_fail(c, MC_ERR_PEER_FAILED, 0,
                "%s at seq %llu: view %llu without rank %d arrived",
                mc_coll_name(cx->req->args.coll), (unsigned long long)cx->seq,
                (unsigned long long)c->nv_epoch, c->rank);
        st = cx->failed;
    }
    pthread_mutex_unlock(&c->plock);
    return st;
}

/* avg_premul: this attempt's input divided by its view's size, and the op
 * a SUM over it, for the algorithm (mc_cx_args); frames and slots still
 * carry the caller's call (AVG), which the peers check. The caller's input
 * stays as it is, so a re-run over another view divides it again. */
static mc_status_t avg_prepare(mc_comm_t *c, mc_cctx_t *cx, mc_request_t *r)
{
    size_t bytes = avg_premul(c, &r->args);
    if (!bytes || !r->args.sendbuf) return MC_OK;
    if (c->avg_cap < bytes) {
        free(c->avg_buf);
        c->avg_cap = 0;
        c->avg_buf = malloc(bytes);
        if (!c->avg_buf)
            return mc_err(MC_ERR_NO_MEMORY,
                          "%s %s AVG: no memory for the input divided by the "
                          "number of ranks (%zu bytes)",
                          mc_coll_name(r->args.coll),
                          mc_dtype_name(r->args.dtype), bytes);
        c->avg_cap = bytes;
    }
    mc_reduce_div_to(c->avg_buf, r->args.sendbuf,
                     bytes / mc_dtype_size(r->args.dtype), r->args.dtype,
                     (uint64_t)cx->nv);
    cx->avg_args = r->args;
    cx->avg_args.sendbuf = c->avg_buf;
    cx->avg_args.op = MC_SUM;
    cx->args = &cx->avg_args;
    return MC_OK;
}

/* One attempt at a queued collective over the current view (exec_lock
 * held), starting at `now` (mc_now_us). Leaves the error text in cx->err. */
static mc_status_t coll_attempt(mc_comm_t *c, mc_request_t *r, int64_t now)
{
    mc_cctx_t *cx = &c->cx;
    pthread_mutex_lock(&c->plock);
    cx->comm = c;
    cx->req = r;
    cx->args = &r->args;
    cx->epoch = c->epoch;
    cx->nv = c->nactive;
    cx->vslots = c->vslots;
    cx->vof = c->vof;
    cx->vrank = c->vof[c->rank];
    cx->data_done = r->args.coll == MC_COLL_BARRIER;
    cx->passed = 0;
    cx->entered = 0;
    cx->slot = 0;
    cx->root_failed = 0;
    memcpy(c->att_active, c->active, (size_t)c->size);
    cx->seq = r->seq;
    /* past every earlier attempt's slots (slot_free_ready) */
    slot_done(c, slot_key_before(cx->epoch, cx->seq));
    cx->deadline_us =
        c->timeout_ms < 0 ? INT64_MAX : now + c->timeout_ms * 1000;
    cx->dcount = desc_count(&r->args, c->size);
    cx->desc = desc_hash(&r->args, c->size, cx->dcount);
    cx->failed = MC_OK;
    cx->remote_abort = 0;
    cx->err[0] = '\0';
    cx->nframes = 0;
    cx->flags = 0;
    cx->commit = NULL;
    uint64_t flags =
        c->ft && (c->admit_auto || r->admit_point) ? join_flag(c) : 0;
    cx->pair = 0;
    cx->tx_flags = flags;
    cx->rx_flags = 0;
    cx->send_lost = 0;
    c->cx_active = 1;
    for (int p = 0; p < c->size; p++) {
        if (p != c->rank && c->abort_seq[p] == r->seq) {
            cx_fail(c, c->abort_why[p], 1, "%s", c->abort_msg[p]);
            break;
        }
    }
    /* headers that were held for this seq can match once receives exist;
     * coll_match runs again from mc_cx_irecv */
    mc_status_t st = cx->failed;
    pthread_mutex_unlock(&c->plock);

    if (st == MC_OK) st = avg_prepare(c, cx, r);
    if (st == MC_OK && !(c->ft && r->args.coll == MC_COLL_BARRIER))
        st = mc_coll_run_view(cx);
    /* A barrier call keeps its frames: through the slots (tried), a rank
     * still in it when the others shrink it away finds its slots rewritten
     * and fails it (evicted), where frames let it complete (torch
     * shrink_removes_rank). */
    if (st == MC_ERR_ROOT_FAILED && c->ft) {
        /* Every rank of the view fails alike here, without a message
         * (view.c). Still meet at the final barrier: the signal words and
         * the shared slots rest on no rank starting op seq + 2 before
         * every rank has left op seq (sig_word), which op seq + 1's
         * barrier (or its slots' words) is what ensures. A failure in it
         * goes to the agreement like any other: a re-run fails the same
         * way, and "done in the old view" fails with this error too
         * (run_ft). The frame barrier, whose frames carry the call: ranks
         * that disagree on the root (a mismatch) fail at once instead of
         * waiting for words that never come. */
        snprintf(cx->rf_why, sizeof(cx->rf_why), "%s at seq %llu failed: %s",
                 mc_coll_name(r->args.coll), (unsigned long long)r->seq,
                 mc_last_error());
        cx->root_failed = 1;
        uint64_t f = 0;
        mc_status_t bst = ft_barrier(c, cx, &f, 1);
        if (bst < 0) {
            st = bst;
        } else {
            pthread_mutex_lock(&c->plock);
            cx->passed = 0; /* the barrier's; this op fails */
            cx_fail(c, st, 0, "%s", cx->rf_why);
            pthread_mutex_unlock(&c->plock);
        }
    }
    /* the shared slots decided it (mc_cx_slot_run); the pair's
     * exchange confirmed it: decided below, under plock */
    int slot = st == MC_OK && c->ft && cx->slot;
    int pair = !slot && st == MC_OK && c->ft && pair_skips_barrier(cx);
    if (slot) {
        /* no final barrier: every survivor can read the result */
    } else if (pair) {
        cx->data_done = 1;
        st = pair_hold(cx);
    } else if (st == MC_OK && c->ft) {
        st = ft_barrier(c, cx, &flags, 0);
        if (st == MC_OK) cx->flags = flags;
    }
    if (st == MC_OK && !pair) cx_commit(cx);

    pthread_mutex_lock(&c->plock);
    if (pair && cx->failed == MC_OK) cx->passed = 1; /* flags: none */
    if (cx->failed < 0 && !cx->send_lost) {
        int sent = 0;
        for (int i = 0; !cx->send_lost && i < cx->nframes; i++) {
            const mc_frame_t *f = cx_frame(cx, i);
            sent |= f->is_send;
            cx->send_lost =
                f->is_send && (f->hx.status < 0 || f->px.status < 0);
        }
        /* failed before our part was posted: the peer never had it */
        if (!sent) cx->send_lost = 1;
    }
    if (st < 0 && cx->failed == MC_OK)
        cx_fail(c, st, 0, "%s at seq %llu failed: %s",
                mc_coll_name(r->args.coll), (unsigned long long)r->seq,
                mc_last_error()[0] ? mc_last_error() : mc_status_str(st));
    if (cx->failed < 0) st = cx->failed;
    if (c->ft && (st == MC_ERR_PEER_FAILED || st == MC_ERR_TIMEOUT)) {
        /* the view agreement tells the peers */
    } else if (st < 0 && __atomic_load_n(&c->stopping, __ATOMIC_ACQUIRE)) {
        /* destroyed: no ABORT (the peers' op would fail with our error);
         * our streams end, which the peers take as this rank leaving */
    } else if (st < 0 && !cx->remote_abort) {
        char text[MC_ABORT_MSG_MAX + 64];
        snprintf(text, sizeof(text), "rank %d reports: %s", c->rank, cx->err);
        send_aborts(c, cx->seq, st, text, 1);
    } else if (st < 0) {
        /* Failed because a peer said so: still mark the end of this
         * operation on our collective streams, so that no peer reads our
         * next operation's frames as a divergence of its own. */
        send_aborts(c, cx->seq, st, cx->err, 0);
    }
    /* Drain: payloads moving into or out of user memory must finish (or
     * fail) before the buffers go back to the caller. Receives whose header
     * has not arrived are simply dropped. */
    for (int p = 0; p < c->size; p++) {
        if (p == c->rank) continue;
        mc_in_t *in = &c->in[MC_CH_COLL][p];
        in->rq_head = in->rq_tail = NULL;
        if (st < 0 && c->ft) {
            /* a header of this attempt held or arriving from now on is
             * dropped: the peer may still be pushing its payload */
            c->dead_att_epoch = cx->epoch;
            c->dead_att_seq = cx->seq;
            if (in->state == IN_HAVE_HDR && in->hdr.epoch == cx->epoch &&
                in->hdr.seq == cx->seq)
                in_discard(c, in);
            /* a payload under way into this attempt's buffers */
            if (in->state == IN_PAYLOAD && in->cur) (void)in_redirect(c, in);
        }
    }
    if (c->pinned) pinned_gc(c, 0);
    int64_t drain_start = mc_now_us(), drain_deadline = drain_start + 2000000;
    int detached = 0;
    for (;;) {
        int busy = 0;
        mc_frame_t *stuck = NULL;
        for (int i = 0; i < cx->nframes; i++) {
            mc_frame_t *f = cx_frame(cx, i);
            if (frame_done(f)) continue;
            if (f->is_send || f->state == F_PAYLOAD) {
                busy = 1;
                if (!stuck) stuck = f;
            }
        }
        /* ABORT notices must leave too: a blocking caller may not drive
         * progress again for a long time, and a peer waiting in this op
         * learns of the failure only from them */
        for (int i = 0; st < 0 && i < c->size * MC_NUM_CHANNELS && !busy; i++) {
            mc_abort_out_t *a = &c->abort_out[i];
            if (a->busy && (a->hx.status == MC_INPROGRESS ||
                            a->px.status == MC_INPROGRESS))
                busy = 1;
        }
        if (!busy) break;
        /* sends to a live peer finish within microseconds; after a grace
         * period the rest are to a peer that does not take them */
        if (st < 0 && c->ft && !detached && stuck && stuck->is_send &&
            mc_now_us() > drain_start + MC_DRAIN_GRACE_US) {
            detached = 1;
            if (drain_detach_sends(c, cx)) continue;
        }
        if (mc_now_us() > drain_deadline && st < 0) {
            MC_LOG(MC_LOG_ERROR,
                   "rank %d: transfers of failed %s seq %llu did not drain "
                   "(%s rank %d, step " STEP_FMT ", %zu bytes%s); the "
                   "communicator must be destroyed",
                   c->rank, mc_coll_name(r->args.coll),
                   (unsigned long long)r->seq,
                   !stuck ? "an abort notice to"
                   : stuck->is_send ? "a send to"
                                    : "a receive from",
                   stuck ? stuck->peer : -1, STEP_ARGS(stuck ? stuck->step : 0u),
                   stuck ? stuck->bytes : (size_t)0,
                   stuck && !stuck->is_send ? ", payload under way" : "");
            break;
        }
        int n = progress_locked(c);
        if (!n) {
            pthread_mutex_unlock(&c->plock);
            idle_wait(c, 0, mc_now_us());
            pthread_mutex_lock(&c->plock);
        }
    }
    c->cx_active = 0;
    pthread_mutex_unlock(&c->plock);
    if (pair && st == MC_OK) cx_commit(cx);
    return st;
}

/* Operation `seq` has ended here (plock held). */
static void op_end(mc_comm_t *c, uint64_t seq)
{
    c->exec_seq = seq + 1;
    /* a header held for the op that just ended is now stale */
    for (int p = 0; p < c->size; p++) {
        if (p == c->rank) continue;
        mc_in_t *in = &c->in[MC_CH_COLL][p];
        if (in->state == IN_HAVE_HDR && in->hdr.seq < c->exec_seq)
            in_discard(c, in);
    }
}

static void list_ranks(char *out, size_t cap, const int *v, int n)
{
    size_t off = 0;
    out[0] = '\0';
    for (int i = 0; i < n && off + 12 < cap; i++)
        off +=
            (size_t)snprintf(out + off, cap - off, "%s%d", i ? ", " : "", v[i]);
}

/* Before a re-run, or as a failed call returns: put the caller's
 * in-place input back (the ranges the last attempt saved, or all of it);
 * before a re-run (again) also keep all of it from now on. 0 if the input
 * cannot be restored. */
static int restore_input(mc_comm_t *c, mc_request_t *r, size_t keep,
                         int again)
{
    char *user = (char *)r->args.sendbuf;
    if (c->saved_all) {
        memcpy(user, c->backup, keep);
        return 1;
    }
    if (c->saved_oom) return 0;
    for (size_t i = 0; i < c->nsaved; i++)
        memcpy(user + c->saved[i][0], (char *)c->backup + c->saved[i][0],
               c->saved[i][1]);
    if (!again) return 1;
    /* the input is whole again: keep it all for the attempts to come */
    memcpy(c->backup, user, keep);
    c->saved_all = 1;
    c->nsaved = 0;
    return 1;
}

static mc_status_t run_ft_attempts(mc_comm_t *c, mc_request_t *r,
                                   size_t keep, int *unkept);

/* A collective with fault tolerance: attempts and view agreements until it
 * completes in some view or fails for good (exec_lock held). An in-place
 * reduction keeps its input (inplace_input), for a re-run and for the
 * caller: a call that fails leaves it as it was (also in manual mode,
 * where the caller may run the op again after mc_comm_recover). */
static mc_status_t run_ft(mc_comm_t *c, mc_request_t *r)
{
    mc_cctx_t *cx = &c->cx;
    const char *name = mc_coll_name(r->args.coll);
    size_t keep = inplace_input(c, &r->args);
    if (keep) {
        if (c->backup_cap < keep) {
            void *b = realloc(c->backup, keep);
            if (!b) {
                snprintf(cx->err, sizeof(cx->err),
                         "%s at seq %llu: no memory to keep the input for a "
                         "re-run",
                         name, (unsigned long long)r->seq);
                return MC_ERR_NO_MEMORY;
            }
            c->backup = b;
            c->backup_cap = keep;
        }
        c->nsaved = 0;
        c->saved_oom = 0;
        /* an in-place allreduce, reduce or reduce_scatter (run on the
         * caller's buffers in every view, algo/view.c) keeps its input
         * range by range as the algorithm overwrites it (mc_cx_save);
         * reduce only on the root (the chain; the tree, like recursive
         * doubling and the reduce_scatter ring, writes its output only at
         * the commit and saves nothing); an fp16/fp8 AVG keeps it whole
         * (its attempts run out of place, from avg_prepare's copy) */
        c->saved_all = avg_premul(c, &r->args) ||
                       !(((r->args.coll == MC_COLL_ALLREDUCE ||
                           r->args.coll == MC_COLL_REDUCE) &&
                          r->args.sendbuf == r->args.recvbuf) ||
                         r->args.coll == MC_COLL_REDUCE_SCATTER ||
                         r->args.coll == MC_COLL_REDUCE_SCATTERV);
        if (c->saved_all) memcpy(c->backup, r->args.sendbuf, keep);
    }
    int unkept = 0; /* the error already says the input is not kept */
    mc_status_t st = run_ft_attempts(c, r, keep, &unkept);
    if (st < 0 && keep && !restore_input(c, r, keep, 0) && !unkept) {
        size_t l = strlen(cx->err);
        snprintf(cx->err + l, sizeof(cx->err) - l,
                 "; the in-place input could not be put back (no memory was "
                 "left to keep it)");
    }
    return st;
}

static mc_status_t run_ft_attempts(mc_comm_t *c, mc_request_t *r,
                                   size_t keep, int *unkept)
{
    mc_cctx_t *cx = &c->cx;
    const char *name = mc_coll_name(r->args.coll);
    mc_status_t st = MC_OK;
    for (int attempt = 0;; attempt++) {
        uint64_t old_epoch = c->epoch;
        int64_t now = mc_now_us();
        int pair_att = 0;        /* a pair-confirmed attempt failed */
        uint64_t att_epoch = 0; /*   in this epoch */
        pthread_mutex_lock(&c->plock);
        int outcome = 0;
        if (c->nv_pending) {
            cx->data_done = 0;
            cx->entered = 0;
            if (cx->seq != r->seq) { /* cx holds an earlier op's attempt */
                cx->slot = 0;
                cx->root_failed = 0;
            }
            memcpy(c->att_active, c->active, (size_t)c->size);
            outcome = ag_adopt(c, r->seq);
            now = mc_now_us(); /* adopting may have taken a while */
        }
        int broken = view_broken(c, now);
        if (!outcome && c->evicted) outcome = AG_EVICTED; /* fenced */
        pthread_mutex_unlock(&c->plock);
        if (!outcome) {
            if (!broken) {
                if (attempt && keep && !restore_input(c, r, keep, 1)) {
                    snprintf(cx->err, sizeof(cx->err),
                             "%s at seq %llu: cannot re-run: no memory "
                             "was left to keep the in-place input",
                             name, (unsigned long long)r->seq);
                    *unkept = 1;
                    return MC_ERR_NO_MEMORY;
                }
                cx->lazy = keep && !c->saved_all;
                cx->save_in = r->args.sendbuf;
                cx->save_len = keep;
                /* a re-run's restore may have taken a while */
                st = coll_attempt(c, r, attempt ? mc_now_us() : now);
                cx->lazy = 0;
                if (st == MC_OK ||
                    (st != MC_ERR_PEER_FAILED && st != MC_ERR_TIMEOUT))
                    return st;
                /* the pair path was taken (no flags: no barrier), and
                 * the peer may have our whole part */
                pthread_mutex_lock(&c->plock);
                pair_att = pair_skips_barrier(cx) && !cx->send_lost;
                att_epoch = cx->epoch;
                pthread_mutex_unlock(&c->plock);
                if (st == MC_ERR_TIMEOUT) {
                    /* every peer alive (heartbeats) and nobody reports a
                     * failure: a slow peer, not a failed one */
                    pthread_mutex_lock(&c->plock);
                    int b = view_broken(c, mc_now_us());
                    pthread_mutex_unlock(&c->plock);
                    if (!b) return st;
                }
            } else {
                cx->data_done = 0;
                cx->entered = 0;
                memcpy(c->att_active, c->active, (size_t)c->size);
            }
            outcome = agree(c, r->seq);
        }
        char list[256];
        switch (outcome) {
        case AG_EVICTED:
            goto evicted;
        case AG_NOQUORUM:
            snprintf(cx->err, sizeof(cx->err),
                     "%s at seq %llu: no quorum: rank %d cannot reach a "
                     "strict majority of view %llu",
                     name, (unsigned long long)r->seq, c->rank,
                     (unsigned long long)c->epoch);
            return MC_ERR_NO_QUORUM;
        case AG_TIMEOUT:
            if (__atomic_load_n(&c->stopping, __ATOMIC_ACQUIRE)) {
                snprintf(cx->err, sizeof(cx->err),
                         "%s at seq %llu: the communicator was destroyed "
                         "during the view agreement",
                         name, (unsigned long long)r->seq);
                return MC_ERR_IO;
            }
            snprintf(cx->err, sizeof(cx->err),
                     "%s at seq %llu: the view agreement did not finish "
                     "within 3x the operation timeout (%lld ms)",
                     name, (unsigned long long)r->seq,
                     (long long)c->timeout_ms);
            return MC_ERR_TIMEOUT;
        default:
            break;
        }
        pthread_mutex_lock(&c->plock);
        int nf = c->nfailed_last;
        list_ranks(list, sizeof(list), c->failed_last, nf);
        int removed = c->epoch != old_epoch && c->nfailed_last > 0;
        uint64_t ep = c->epoch;
        if (removed && !c->auto_recover) c->need_recover = 1;
        pthread_mutex_unlock(&c->plock);
        if (outcome == AG_DONE_OLD && cx->root_failed) {
            /* every rank failed it alike, then met at the barrier */
            snprintf(cx->err, sizeof(cx->err), "%s", cx->rf_why);
            return MC_ERR_ROOT_FAILED;
        }
        if (outcome == AG_DONE_OLD) {
            if (cx->slot &&
                (!cx->data_done || r->args.coll == MC_COLL_BARRIER)) {
                /* from the slots; a barrier reads nothing, but checks
                 * that every member called what this rank called */
                pthread_mutex_lock(&c->plock);
                mc_status_t fs = slot_finish(c, r, old_epoch, c->att_active);
                pthread_mutex_unlock(&c->plock);
                if (fs == MC_OK) {
                    cx->epoch = old_epoch;
                    return MC_OK;
                }
                MC_LOG(fs == MC_ERR_PEER_FAILED ? MC_LOG_WARN : MC_LOG_ERROR,
                       "rank %d: %s", c->rank, cx->err);
                return fs;
            }
            if (!cx->data_done) {
                /* No member returned it (one that did waited for every
                 * survivor to hold its result: the final barrier, the
                 * entry rule), yet the group is past it: a member's call
                 * ended without completing it (timed out), and then ranks
                 * failed before their part reached us. It cannot complete
                 * here, nor run again (that member is in a later op). */
                snprintf(cx->err, sizeof(cx->err),
                         "%s at seq %llu: cannot complete: a member's call "
                         "ended without completing it (it timed out or failed "
                         "there) and the group went past it in view %llu, "
                         "but ranks [%s] failed before their part reached "
                         "rank %d; view %llu holds from the next operation",
                         name, (unsigned long long)r->seq,
                         (unsigned long long)old_epoch, list, c->rank,
                         (unsigned long long)ep);
                MC_LOG(MC_LOG_WARN, "rank %d: %s", c->rank, cx->err);
                return MC_ERR_PEER_FAILED;
            }
            cx->epoch = old_epoch; /* the result covers the old view */
            cx_commit(cx);
            return MC_OK;
        }
        if (st == MC_ERR_TIMEOUT && !removed)
            return st; /* everyone is alive, just slow: the timeout stands */

        if (removed && !c->auto_recover) {
            snprintf(cx->err, sizeof(cx->err),
                     "%s at seq %llu: rank failure: ranks [%s] failed; the "
                     "survivors agreed on view %llu; call recover to continue",
                     name, (unsigned long long)r->seq, list,
                     (unsigned long long)ep);
            return MC_ERR_PEER_FAILED;
        }
        if (removed && pair_att) {
            /* No final barrier (pair confirmation): the removed peer may
             * have returned this op in the old view (our attempt failed on
             * a timeout or its report, not on its death mid-op). Then no
             * re-run without it: the call fails, the new view holds from
             * the next operation. */
            pthread_mutex_lock(&c->plock);
            int may = pair_peer_may_have_returned(c, c->att_active,
                                                  att_epoch, r->seq);
            pthread_mutex_unlock(&c->plock);
            if (may && cx->data_done) {
                /* our exchange had ended (the result is whole, over the
                 * old view): complete it there, as the peer may have */
                MC_LOG(MC_LOG_WARN,
                       "rank %d: %s seq %llu completes in view %llu: ranks "
                       "[%s] failed after the exchange (they may have "
                       "completed it)",
                       c->rank, name, (unsigned long long)r->seq,
                       (unsigned long long)att_epoch, list);
                cx->epoch = att_epoch;
                cx_commit(cx);
                return MC_OK;
            }
            if (may) {
                snprintf(cx->err, sizeof(cx->err),
                         "%s at seq %llu: rank failure: ranks [%s] failed "
                         "after their part of it arrived (they may have "
                         "completed it); it does not run again without "
                         "them; view %llu holds from the next operation",
                         name, (unsigned long long)r->seq, list,
                         (unsigned long long)ep);
                MC_LOG(MC_LOG_WARN, "rank %d: %s", c->rank, cx->err);
                return MC_ERR_PEER_FAILED;
            }
        }
        if (removed)
            MC_LOG(MC_LOG_WARN,
                   "rank %d: %s seq %llu runs again in view %llu without "
                   "ranks [%s]",
                   c->rank, name, (unsigned long long)r->seq,
                   (unsigned long long)ep, list);
    }
evicted:
    snprintf(cx->err, sizeof(cx->err),
             "%s at seq %llu: rank %d was removed from the group (view epoch "
             "%llu); it must rejoin as a new process",
             name, (unsigned long long)r->seq, c->rank,
             (unsigned long long)c->epoch);
    return MC_ERR_EVICTED;
}

/* After op `seq` succeeded with FLAG_JOIN: the members agree on a view
 * that admits the waiting joiners, starting at seq + 1 (exec_lock held). */
static int admit_round(mc_comm_t *c, uint64_t seq)
{
    pthread_mutex_lock(&c->plock);
    c->admit_phase = 1;
    pthread_mutex_unlock(&c->plock);
    uint64_t old_epoch = c->epoch;
    int outcome = agree(c, seq);
    pthread_mutex_lock(&c->plock);
    c->admit_phase = 0;
    if (c->epoch != old_epoch && c->nfailed_last > 0 && !c->auto_recover)
        c->need_recover = 1;
    int added = c->epoch != old_epoch ? c->njoined_last : 0;
    pthread_mutex_unlock(&c->plock);
    if (outcome != AG_DONE_OLD)
        MC_LOG(MC_LOG_WARN,
               "rank %d: admitting joiners after seq %llu: the agreement "
               "ended with %s; the next operation reports it",
               c->rank, (unsigned long long)seq,
               outcome == AG_NOQUORUM  ? "no quorum"
               : outcome == AG_EVICTED ? "this rank evicted"
               : outcome == AG_TIMEOUT ? "a timeout"
                                       : "a re-run");
    return added;
}

/* Run one queued collective to completion (exec_lock held). */
static void run_coll(mc_comm_t *c, mc_request_t *r)
{
    mc_cctx_t *cx = &c->cx;
    mc_status_t st;
    if (c->evicted) {
        st = MC_ERR_EVICTED;
        snprintf(cx->err, sizeof(cx->err),
                 "%s at seq %llu: rank %d was removed from the group (view "
                 "epoch %llu); it must rejoin as a new process",
                 mc_coll_name(r->args.coll), (unsigned long long)r->seq,
                 c->rank, (unsigned long long)c->epoch);
    } else if (c->need_recover) {
        st = MC_ERR_PEER_FAILED;
        snprintf(cx->err, sizeof(cx->err),
                 "%s at seq %llu: ranks failed and the group has not accepted "
                 "the new view (epoch %llu); call recover first",
                 mc_coll_name(r->args.coll), (unsigned long long)r->seq,
                 (unsigned long long)c->epoch);
    } else if (!c->ft) {
        pthread_mutex_lock(&c->plock);
        int broken = c->ft0_broken;
        if (broken)
            snprintf(cx->err, sizeof(cx->err), "%s at seq %llu: %.400s",
                     mc_coll_name(r->args.coll), (unsigned long long)r->seq,
                     c->ft0_why);
        pthread_mutex_unlock(&c->plock);
        st = broken ? MC_ERR_PEER_FAILED : coll_attempt(c, r, mc_now_us());
    } else {
        st = run_ft(c, r);
    }
    pthread_mutex_lock(&c->plock);
    op_end(c, r->seq);
    if (st == MC_OK) {
        /* a proposal for the view after cx->epoch that we accepted was
         * not committed: whoever commits it leaves that view, and every
         * op of it needs every member (ag_two_phase) */
        if (c->acc_epoch == cx->epoch) c->acc_from = -1;
        c->op_valid = 1;
        c->op_epoch = cx->epoch;
        memcpy(c->op_active, c->att_active, (size_t)c->size);
    }
    char err[sizeof(cx->err)];
    if (st < 0) /* req_complete reads it only then */
        snprintf(err, sizeof(err), "%s", cx->err);
    else
        err[0] = '\0';
    int admit = st == MC_OK && c->ft && (cx->flags & FLAG_JOIN);
    pthread_mutex_unlock(&c->plock);
    if (admit) r->admitted = admit_round(c, r->seq);
    req_complete(r, st, err);
}

static void p2p_watch_between_ops(mc_comm_t *c);

/* Run queued collectives in order until the queue is empty or `until` is
 * done. exec_lock held. */
static void run_queue(mc_comm_t *c, mc_request_t *until)
{
    for (;;) {
        if (until && __atomic_load_n(&until->done, __ATOMIC_ACQUIRE)) return;
        /* destroy fails what is still queued */
        if (__atomic_load_n(&c->stopping, __ATOMIC_ACQUIRE)) return;
        pthread_mutex_lock(&c->qlock);
        mc_request_t *r = c->qhead;
        if (r) {
            c->qhead = r->next;
            if (!c->qhead) c->qtail = NULL;
        }
        pthread_mutex_unlock(&c->qlock);
        if (!r) return;
        run_coll(c, r);
        p2p_watch_between_ops(c);
    }
}

/* Sleep on qcond up to `us` unless an operation is queued or destroy
 * began. */
static void progress_thread_nap(mc_comm_t *c, int64_t us)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* qcond's clock */
    ts.tv_nsec += (long)(us * 1000);
    while (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&c->qlock);
    if (!c->qhead && !c->stopping)
        pthread_cond_timedwait(&c->qcond, &c->qlock, &ts);
    pthread_mutex_unlock(&c->qlock);
}

/* Check the watched requests' deadlines and peers (p2p_expire) and drop
 * the ones that ended; at most once a millisecond (the list can be long:
 * a batch of thousands of receives). plock held; returns the dropped ones,
 * linked through w_next, for p2p_watch_release outside plock. */
static mc_request_t *p2p_watch_check(mc_comm_t *c, int64_t now)
{
    if (now - c->watch_checked < 1000) return NULL;
    c->watch_checked = now;
    /* A long list is walked only when a deadline passed, a peer is
     * suspected, or every 100 ms to drop what ended (a walk of 20000
     * entries held plock for a few hundred microseconds). */
    int walk = __atomic_load_n(&c->p2p_watch_n, __ATOMIC_ACQUIRE) <= 64 ||
               now >= c->watch_min_deadline || now - c->watch_walked >= 100000;
    for (int p = 0; !walk && p < c->size; p++)
        walk = p != c->rank && mc_live_suspected(c->live, p);
    if (!walk) return NULL;
    c->watch_walked = now;
    int64_t min = INT64_MAX;
    mc_request_t *gone = NULL;
    for (mc_request_t **pp = &c->p2p_watch; *pp;) {
        mc_request_t *r = *pp;
        if (!__atomic_load_n(&r->done, __ATOMIC_ACQUIRE) && !c->tl_quiet)
            p2p_expire(c, r, now);
        if (__atomic_load_n(&r->done, __ATOMIC_ACQUIRE)) {
            *pp = r->w_next;
            r->w_next = gone;
            gone = r;
            __atomic_sub_fetch(&c->p2p_watch_n, 1, __ATOMIC_ACQ_REL);
        } else {
            /* p2p_held ones wait for the transport: no deadline of theirs
             * needs a walk */
            if (!r->p2p_held && r->p2p_deadline < min) min = r->p2p_deadline;
            pp = &r->w_next;
        }
    }
    c->watch_min_deadline = min;
    return gone;
}

static void p2p_watch_release(mc_request_t *gone)
{
    while (gone) {
        mc_request_t *r = gone;
        gone = r->w_next;
        req_release(r);
    }
}

/* Between the operations the progress thread runs (run_queue): a stream
 * of queued collectives keeps it from its watch rounds, and the watched
 * requests' deadlines still count. */
static void p2p_watch_between_ops(mc_comm_t *c)
{
    if (!__atomic_load_n(&c->p2p_watch_n, __ATOMIC_ACQUIRE)) return;
    pthread_mutex_lock(&c->plock);
    mc_request_t *gone = p2p_watch_check(c, mc_now_us());
    pthread_mutex_unlock(&c->plock);
    p2p_watch_release(gone);
}

/* One turn of the progress thread for the watched p2p requests
 * (p2p_watch_add), while no collective is queued. It drives progress only
 * while no caller's thread waits on this communicator (`waiters`: a wait
 * drives progress for every request, a blocking collective too); it then
 * only checks the deadlines and the peers, a look a millisecond. Driving,
 * it never sleeps under plock (a caller's next call would wait for it):
 * it yields for 200 us after progress or a new request, then naps on
 * qcond (a queued collective wakes it) 0.1 ms a time, 1 ms after 5 ms
 * without either, 10 ms after a second, so that a request that never ends
 * costs next to nothing. It keeps looking for 100 ms after its list
 * empties, so that a stream of p2p calls does not wake it for each. */
static void p2p_watch_round(mc_comm_t *c)
{
    int64_t now = mc_now_us();
    int others = __atomic_load_n(&c->waiters, __ATOMIC_ACQUIRE) > 0;
    pthread_mutex_lock(&c->plock);
    if (!c->p2p_watch) {
        pthread_mutex_unlock(&c->plock);
        progress_thread_nap(c, 1000);
        return;
    }
    int n = others ? 0 : progress_locked(c);
    int added = c->watch_adds != c->watch_adds_seen;
    c->watch_adds_seen = c->watch_adds;
    mc_request_t *gone = p2p_watch_check(c, now);
    pthread_mutex_unlock(&c->plock);
    c->watch_linger = now + 100000;
    if (n || others || added || gone) c->watch_idle_since = now;
    p2p_watch_release(gone);
    int64_t idle = now - c->watch_idle_since;
    if (others)
        progress_thread_nap(c, 1000);
    else if (n || idle < 200)
        sched_yield(); /* and a caller blocked on plock gets it */
    else
        progress_thread_nap(c, idle < 5000      ? 100
                               : idle < 1000000 ? 1000
                                                : 10000);
}

static void *progress_thread(void *arg)
{
    mc_comm_t *c = arg;
    for (;;) {
        pthread_mutex_lock(&c->qlock);
        /* sleeps until signalled only while it watches nothing */
        while (!c->qhead && !c->stopping &&
               !__atomic_load_n(&c->p2p_watch_n, __ATOMIC_ACQUIRE) &&
               mc_now_us() >= c->watch_linger) {
            c->thread_deep = 1;
            pthread_cond_wait(&c->qcond, &c->qlock);
            c->thread_deep = 0;
            /* a fresh start: not idle since before the sleep */
            c->watch_idle_since = mc_now_us();
        }
        int stop = c->stopping;
        int64_t issued = c->qhead ? c->qhead->t_issue : 0;
        int queued = c->qhead != NULL;
        pthread_mutex_unlock(&c->qlock);
        if (stop) return NULL;
        if (!queued) {
            p2p_watch_round(c);
            continue;
        }
        /* Give a caller that waits right after issuing (torch does, for
         * every synchronous op) the chance to run the operation inline:
         * a hand-off to this thread costs a wake-up on both sides. */
        int64_t idle = issued + c->async_grace_us - mc_now_us();
        if (idle > 0) {
            struct timespec ts = {0, (long)(idle * 1000)};
            nanosleep(&ts, NULL);
        }
        pthread_mutex_lock(&c->exec_lock);
        run_queue(c, NULL);
        pthread_mutex_unlock(&c->exec_lock);
    }
}

/* ------------------------------------------------------------------------ */
/* Requests: public API                                                     */
/* ------------------------------------------------------------------------ */

static void start_thread(mc_comm_t *c);

static mc_status_t req_result(mc_request_t *r)
{
    if (r->status < 0) {
        mc_err(r->status, "%s", r->err[0] ? r->err : mc_status_str(r->status));
    }
    return r->status;
}

static mc_status_t request_wait(mc_request_t *r, int64_t timeout_ms);

mc_status_t mc_request_wait(mc_request_h r, int64_t timeout_ms)
{
    if (!r) return mc_err(MC_ERR_INVALID_ARG, "mc_request_wait: NULL request");
    /* a finished request needs nothing of its communicator, which may be
     * destroyed already (its owner still waits and frees the request) */
    if (__atomic_load_n(&r->done, __ATOMIC_ACQUIRE)) return req_result(r);
    mc_comm_t *c = r->comm;
    /* counted: mc_comm_destroy from another thread waits until this call
     * is out before it frees the communicator */
    __atomic_add_fetch(&c->api_calls, 1, __ATOMIC_SEQ_CST);
    mc_status_t st = request_wait(r, timeout_ms);
    __atomic_sub_fetch(&c->api_calls, 1, __ATOMIC_SEQ_CST);
    return st;
}

static mc_status_t request_wait_loop(mc_request_t *r, int64_t timeout_ms);

/* Counted in `waiters`: while a caller waits, it drives progress, and the
 * progress thread leaves the watched requests' progress to it. Counted
 * only while some request is watched (two atomic updates per wait were
 * 0.05 us of a 0.55 us exchange); a wait that began before the first
 * watched request merely shares the driving with the thread. */
static mc_status_t request_wait(mc_request_t *r, int64_t timeout_ms)
{
    mc_comm_t *c = r->comm;
    int counted = __atomic_load_n(&c->p2p_watch_n, __ATOMIC_RELAXED) > 0;
    if (counted) __atomic_add_fetch(&c->waiters, 1, __ATOMIC_ACQ_REL);
    mc_status_t st = request_wait_loop(r, timeout_ms);
    if (counted) __atomic_sub_fetch(&c->waiters, 1, __ATOMIC_ACQ_REL);
    return st;
}

static mc_status_t request_wait_loop(mc_request_t *r, int64_t timeout_ms)
{
    mc_comm_t *c = r->comm;
    int64_t deadline = mc_deadline_us(timeout_ms);
    /* an unlimited wait for a collective needs no clock (a blocking call's
     * wait, once per operation) */
    int timed = deadline != INT64_MAX || r->kind != R_COLL;
    int64_t idle_since = timed ? mc_now_us() : 0;
    while (!__atomic_load_n(&r->done, __ATOMIC_ACQUIRE)) {
        int64_t now = timed ? mc_now_us() : 0;
        if (now >= deadline)
            return mc_err(MC_ERR_TIMEOUT,
                          "mc_request_wait: not finished within %lld ms",
                          (long long)timeout_ms);
        if (r->kind == R_COLL) {
            /* A wait with a time limit cannot run the operation inline: an
             * operation, once started, runs to its end (or to the
             * communicator's operation timeout). Hand it to the progress
             * thread and wait for it instead. Unlimited waits (the blocking
             * calls) run inline, with no thread hand-off. */
            if (timeout_ms >= 0 && !c->thread_started) start_thread(c);
            if (timeout_ms < 0 && pthread_mutex_trylock(&c->exec_lock) == 0) {
                /* run the queue inline, one operation at a time, up to
                 * ours */
                while (!__atomic_load_n(&r->done, __ATOMIC_ACQUIRE) &&
                       !__atomic_load_n(&c->stopping, __ATOMIC_ACQUIRE)) {
                    pthread_mutex_lock(&c->qlock);
                    mc_request_t *q = c->qhead;
                    if (q) {
                        c->qhead = q->next;
                        if (!c->qhead) c->qtail = NULL;
                    }
                    pthread_mutex_unlock(&c->qlock);
                    if (!q) break;
                    run_coll(c, q);
                }
                pthread_mutex_unlock(&c->exec_lock);
                if (c->thread_started) {
                    pthread_mutex_lock(&c->qlock);
                    if (c->qhead) pthread_cond_signal(&c->qcond);
                    pthread_mutex_unlock(&c->qlock);
                }
                continue;
            }
            /* another thread runs the queue: sleep until something ends */
            pthread_mutex_lock(&c->dlock);
            if (!__atomic_load_n(&r->done, __ATOMIC_ACQUIRE)) {
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                ts.tv_nsec += 1000000;
                if (ts.tv_nsec >= 1000000000) {
                    ts.tv_sec++;
                    ts.tv_nsec -= 1000000000;
                }
                pthread_cond_timedwait(&c->dcond, &c->dlock, &ts);
            }
            pthread_mutex_unlock(&c->dlock);
            continue;
        }
        /* point-to-point: drive progress ourselves */
        pthread_mutex_lock(&c->plock);
        if (c->tl_quiet) {
            /* destroyed, and past its last progress: a send here would
             * wait for good; nothing reads its buffer any more */
            pthread_mutex_unlock(&c->plock);
            if (__atomic_load_n(&r->done, __ATOMIC_ACQUIRE)) break;
            if (r->kind == R_SEND)
                return comm_err(c, MC_ERR_IO,
                                "send to rank %d: the communicator was "
                                "destroyed before the peer took it",
                                r->peer);
            return comm_err(c, MC_ERR_IO,
                            "recv: the communicator was destroyed before "
                            "its message came");
        }
        int n = progress_locked(c);
        p2p_expire(c, r, now);
        pthread_mutex_unlock(&c->plock);
        if (n)
            idle_since = now;
        else
            idle_wait(c, idle_since, now);
    }
    return req_result(r);
}

mc_status_t mc_request_test(mc_request_h r, int *done_p)
{
    if (!r || !done_p)
        return mc_err(MC_ERR_INVALID_ARG, "mc_request_test: NULL argument");
    mc_comm_t *c = r->comm;
    if (!__atomic_load_n(&r->done, __ATOMIC_ACQUIRE)) {
        /* counted before stopping is read: destroy sets stopping, then
         * waits for the count to be 0 (both sequentially consistent) */
        __atomic_add_fetch(&c->api_calls, 1, __ATOMIC_SEQ_CST);
        if (!__atomic_load_n(&c->stopping, __ATOMIC_SEQ_CST)) {
            if (r->kind == R_COLL) {
                start_thread(c);
            } else {
                pthread_mutex_lock(&c->plock);
                progress_locked(c);
                if (!c->tl_quiet) p2p_expire(c, r, mc_now_us());
                pthread_mutex_unlock(&c->plock);
            }
        }
        __atomic_sub_fetch(&c->api_calls, 1, __ATOMIC_SEQ_CST);
    }
    if (!__atomic_load_n(&r->done, __ATOMIC_ACQUIRE)) {
        *done_p = 0;
        return MC_INPROGRESS;
    }
    *done_p = 1;
    return req_result(r);
}

int mc_request_source(mc_request_h r)
{
    if (!r) return -1;
    return r->kind == R_RECV ? r->source : (r->kind == R_SEND ? r->peer : -1);
}

void mc_request_free(mc_request_h r)
{
    if (r) req_release(r);
}

/* ------------------------------------------------------------------------ */
/* Issuing operations                                                       */
/* ------------------------------------------------------------------------ */

static void start_thread(mc_comm_t *c)
{
    pthread_mutex_lock(&c->qlock);
    if (!c->thread_started && !c->stopping) {
        if (pthread_create(&c->thread, NULL, progress_thread, c) == 0)
            c->thread_started = 1;
        else
            MC_LOG(MC_LOG_WARN, "could not start the progress thread; "
                                "operations progress only inside waits");
    }
    pthread_cond_signal(&c->qcond);
    pthread_mutex_unlock(&c->qlock);
}

static mc_request_t *req_new(mc_comm_t *c, int kind)
{
    mc_request_t *r = calloc(1, sizeof(*r));
    if (!r) return NULL;
    r->comm = c;
    r->kind = kind;
    r->refs = 2;
    r->status = MC_INPROGRESS;
    r->ev.comm = c;
    r->peer = -1;
    r->source = -1;
    return r;
}

static mc_status_t coll_issue(mc_comm_t *c, mc_request_t *r, int async,
                              mc_request_h *req_p)
{
    pthread_mutex_lock(&c->qlock);
    if (c->stopping) {
        pthread_mutex_unlock(&c->qlock);
        req_release(r);
        req_release(r);
        return comm_err(c, MC_ERR_INVALID_ARG,
                        "communicator is being "
                        "destroyed");
    }
    r->seq = c->next_seq++;
    /* read by the progress thread only (its grace before it runs r) */
    r->t_issue = async || c->thread_started ? mc_now_us() : 0;
    if (c->qtail)
        c->qtail->next = r;
    else
        c->qhead = r;
    c->qtail = r;
    pthread_mutex_unlock(&c->qlock);
    if (async) start_thread(c);
    *req_p = r;
    return MC_OK;
}

static size_t *dup_sizes(const size_t *a, int n)
{
    size_t *p = malloc(sizeof(size_t) * (size_t)n);
    if (p) memcpy(p, a, sizeof(size_t) * (size_t)n);
    return p;
}

#define CHECK_COMM(c, fn)                                                      \
    do {                                                                       \
        if (!(c)) return mc_err(MC_ERR_INVALID_ARG, "%s: comm is NULL", fn);   \
    } while (0)

static mc_status_t check_dtype(mc_comm_t *c, const char *fn, mc_dtype_t dt)
{
    if ((unsigned)dt >= MC_DTYPE_COUNT)
        return comm_err(c, MC_ERR_INVALID_ARG, "%s: invalid dtype %d", fn,
                        (int)dt);
    return MC_OK;
}

static mc_status_t check_redop(mc_comm_t *c, const char *fn, mc_dtype_t dt,
                               mc_redop_t op)
{
    MC_CHECK(check_dtype(c, fn, dt));
    if ((unsigned)op >= MC_REDOP_COUNT)
        return comm_err(c, MC_ERR_INVALID_ARG, "%s: invalid reduction op %d",
                        fn, (int)op);
    if (mc_redop_check(dt, op) != MC_OK)
        return comm_err(c, MC_ERR_INVALID_ARG,
                        "%s: reduction op %s is not defined for dtype %s", fn,
                        mc_redop_name(op), mc_dtype_name(dt));
    return MC_OK;
}

/* count elements of dt, times `mult`, must fit in size_t / ssize_t. */
static mc_status_t check_bytes(mc_comm_t *c, const char *fn, size_t count,
                               size_t mult, mc_dtype_t dt)
{
    size_t es = mc_dtype_size(dt);
    if (mult && count > (SIZE_MAX / 2) / es / mult)
        return comm_err(c, MC_ERR_INVALID_ARG, "%s: count %zu is too large", fn,
                        count);
    return MC_OK;
}

/* The same for entry i of a count or displacement array, named. */
static mc_status_t check_entry(mc_comm_t *c, const char *fn, const char *what,
                               int i, size_t v, size_t mult, mc_dtype_t dt)
{
    size_t es = mc_dtype_size(dt);
    if (mult && v > (SIZE_MAX / 2) / es / mult)
        return comm_err(c, MC_ERR_INVALID_ARG, "%s: %s[%d] = %zu is too large",
                        fn, what, i, v);
    return MC_OK;
}

static mc_status_t check_buf(mc_comm_t *c, const char *fn, const void *p,
                             size_t count, const char *what)
{
    if (count && !p)
        return comm_err(c, MC_ERR_INVALID_ARG, "%s: %s is NULL with count %zu",
                        fn, what, count);
    return MC_OK;
}

static mc_status_t check_root(mc_comm_t *c, const char *fn, int root)
{
    if (root < 0 || root >= c->size)
        return comm_err(c, MC_ERR_INVALID_ARG,
                        "%s: root %d out of range [0, %d)", fn, root, c->size);
    return MC_OK;
}

static int ranges_overlap(const void *a, size_t alen, const void *b,
                          size_t blen)
{
    if (!a || !b || !alen || !blen) return 0;
    uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
    return x < y + blen && y < x + alen;
}

/* Input and output (bytes) either apart or in place (the operation's one
 * in-place form, `in_place`); any other overlap would read input the
 * operation already overwrote, or write output twice: refused, naming the
 * in-place form (`how`). */
static mc_status_t check_overlap(mc_comm_t *c, const char *fn, const void *s,
                                 size_t sbytes, const void *rb, size_t rbytes,
                                 int in_place, const char *how)
{
    if (in_place || !ranges_overlap(s, sbytes, rb, rbytes)) return MC_OK;
    return comm_err(c, MC_ERR_INVALID_ARG,
                    "%s: sendbuf and recvbuf overlap but are not in place "
                    "(in place means %s)",
                    fn, how);
}

typedef struct {
    size_t off, n;
    int rank;
} span_t;

static int span_cmp(const void *a, const void *b)
{
    const span_t *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

/* The output blocks (displs[i], counts[i]) of the ranks must not overlap:
 * two ranks' data in one place leaves whichever came last. */
static mc_status_t check_blocks(mc_comm_t *c, const char *fn, const char *what,
                                const size_t *counts, const size_t *displs)
{
    span_t *v = malloc(sizeof(*v) * (size_t)c->size);
    if (!v) return comm_err(c, MC_ERR_NO_MEMORY, "%s: out of memory", fn);
    int n = 0;
    for (int i = 0; i < c->size; i++)
        if (counts[i]) v[n++] = (span_t){displs[i], counts[i], i};
    qsort(v, (size_t)n, sizeof(*v), span_cmp);
    for (int i = 1; i < n; i++)
        if (v[i].off < v[i - 1].off + v[i - 1].n) {
            span_t a = v[i - 1], b = v[i];
            free(v);
            return comm_err(c, MC_ERR_INVALID_ARG,
                            "%s: the blocks of ranks %d and %d overlap in "
                            "recvbuf (%s[%d] = %zu, count %zu; %s[%d] = %zu, "
                            "count %zu)",
                            fn, a.rank, b.rank, what, a.rank, a.off, a.n,
                            what, b.rank, b.off, b.n);
        }
    free(v);
    return MC_OK;
}

static mc_status_t new_coll(mc_comm_t *c, mc_coll_t coll, mc_dtype_t dt,
                            mc_redop_t op, int root, size_t count,
                            const void *sbuf, void *rbuf, mc_request_t **r_p)
{
    mc_request_t *r = req_new(c, R_COLL);
    if (!r) return comm_err(c, MC_ERR_NO_MEMORY, "out of memory");
    r->args.coll = coll;
    r->args.dtype = dt;
    r->args.op = op;
    r->args.root = root;
    r->args.count = count;
    r->args.sendbuf = sbuf;
    r->args.recvbuf = rbuf;
    *r_p = r;
    return MC_OK;
}

/* Wait for and free the request the issuing call stored in *r_p. Takes a
 * pointer because argument evaluation order is unspecified in C. */
static mc_status_t blocking(mc_status_t st, mc_request_h *r_p)
{
    if (st < 0) return st;
    st = mc_request_wait(*r_p, -1);
    mc_request_free(*r_p);
    return st;
}

#define ES(dt) mc_dtype_size(dt)
#define AT(p, n, dt) ((char *)(p) + (n)*ES(dt))

static mc_status_t iallreduce(mc_comm_h c, const void *s, void *rb, size_t n,
                              mc_dtype_t dt, mc_redop_t op, int async,
                              mc_request_h *req_p)
{
    static const char fn[] = "allreduce";
    CHECK_COMM(c, fn);
    MC_CHECK(check_redop(c, fn, dt, op));
    MC_CHECK(check_bytes(c, fn, n, 1, dt));
    MC_CHECK(check_buf(c, fn, s, n, "sendbuf"));
    MC_CHECK(check_buf(c, fn, rb, n, "recvbuf"));
    MC_CHECK(check_overlap(c, fn, s, n * ES(dt), rb, n * ES(dt), s == rb,
                           "sendbuf == recvbuf"));
    mc_request_t *r = NULL;
    MC_CHECK(new_coll(c, MC_COLL_ALLREDUCE, dt, op, -1, n, s, rb, &r));
    r->args.in_place = s == rb;
    return coll_issue(c, r, async, req_p);
}

mc_status_t mc_comm_iallreduce(mc_comm_h c, const void *s, void *rb, size_t n,
                               mc_dtype_t dt, mc_redop_t op,
                               mc_request_h *req_p)
{
    if (!req_p) return mc_err(MC_ERR_INVALID_ARG, "allreduce: req_p is NULL");
    return iallreduce(c, s, rb, n, dt, op, 1, req_p);
}

mc_status_t mc_comm_allreduce(mc_comm_h c, const void *s, void *rb, size_t n,
                              mc_dtype_t dt, mc_redop_t op)
{
    mc_request_h r = NULL;
    mc_status_t st = iallreduce(c, s, rb, n, dt, op, 0, &r);
    return blocking(st, &r);
}

static mc_status_t iallgatherv(mc_comm_h c, mc_coll_t coll, const void *s,
                               size_t scount, void *rb, const size_t *counts,
                               const size_t *displs, mc_dtype_t dt, int async,
                               mc_request_h *req_p)
{
    const char *fn = coll == MC_COLL_ALLGATHER ? "allgather" : "allgatherv";
    CHECK_COMM(c, fn);
    MC_CHECK(check_dtype(c, fn, dt));
    if (!counts || !displs)
        return comm_err(c, MC_ERR_INVALID_ARG, "%s: recvcounts/displs is NULL",
                        fn);
    size_t total = 0, end = 0;
    for (int i = 0; i < c->size; i++) {
        MC_CHECK(check_entry(c, fn, "recvcounts", i, counts[i], 1, dt));
        MC_CHECK(check_entry(c, fn, "displs", i, displs[i], 1, dt));
        if (counts[i] > (SIZE_MAX / 4) / ES(dt) - total)
            return comm_err(c, MC_ERR_INVALID_ARG, "%s: counts too large", fn);
        total += counts[i];
        if (counts[i] && displs[i] + counts[i] > end)
            end = displs[i] + counts[i];
    }
    if (scount != counts[c->rank])
        return comm_err(c, MC_ERR_INVALID_ARG,
                        "%s: sendcount %zu differs from recvcounts[%d] = %zu",
                        fn, scount, c->rank, counts[c->rank]);
    MC_CHECK(check_buf(c, fn, s, scount, "sendbuf"));
    MC_CHECK(check_buf(c, fn, rb, total, "recvbuf"));
    if (coll != MC_COLL_ALLGATHER) /* allgather's blocks are its own */
        MC_CHECK(check_blocks(c, fn, "displs", counts, displs));
    MC_CHECK(check_overlap(c, fn, s, scount * ES(dt), rb, end * ES(dt),
                           rb && s == AT(rb, displs[c->rank], dt),
                           coll == MC_COLL_ALLGATHER
                               ? "sendbuf == recvbuf + rank * count"
                               : "sendbuf == recvbuf + displs[rank]"));
    mc_request_t *r = NULL;
    MC_CHECK(new_coll(c, coll, dt, MC_SUM, -1, scount, s, rb, &r));
    r->args.counts = dup_sizes(counts, c->size);
    r->args.displs = dup_sizes(displs, c->size);
    if (!r->args.counts || !r->args.displs) {
        req_release(r);
        req_release(r);
        return comm_err(c, MC_ERR_NO_MEMORY, "%s: out of memory", fn);
    }
    r->args.in_place = rb && s == AT(rb, displs[c->rank], dt);
    return coll_issue(c, r, async, req_p);
}

static mc_status_t iallgather(mc_comm_h c, const void *s, void *rb, size_t n,
                              mc_dtype_t dt, int async, mc_request_h *req_p)
{
    CHECK_COMM(c, "allgather");
    MC_CHECK(check_dtype(c, "allgather", dt));
    MC_CHECK(check_bytes(c, "allgather", n, (size_t)c->size, dt));
    size_t *counts = malloc(sizeof(size_t) * (size_t)c->size);
    size_t *displs = malloc(sizeof(size_t) * (size_t)c->size);
    if (!counts || !displs) {
        free(counts);
        free(displs);
        return comm_err(c, MC_ERR_NO_MEMORY, "allgather: out of memory");
    }
    for (int i = 0; i < c->size; i++) {
        counts[i] = n;
        displs[i] = n * (size_t)i;
    }
    mc_status_t st = iallgatherv(c, MC_COLL_ALLGATHER, s, n, rb, counts, displs,
                                 dt, async, req_p);
    free(counts);
    free(displs);
    return st;
}

mc_status_t mc_comm_iallgather(mc_comm_h c, const void *s, void *rb, size_t n,
                               mc_dtype_t dt, mc_request_h *req_p)
{
    if (!req_p) return mc_err(MC_ERR_INVALID_ARG, "allgather: req_p is NULL");
    return iallgather(c, s, rb, n, dt, 1, req_p);
}

mc_status_t mc_comm_allgather(mc_comm_h c, const void *s, void *rb, size_t n,
                              mc_dtype_t dt)
{
    mc_request_h r = NULL;
    return blocking(iallgather(c, s, rb, n, dt, 0, &r), &r);
}

mc_status_t mc_comm_iallgatherv(mc_comm_h c, const void *s, size_t scount,
                                void *rb, const size_t *counts,
                                const size_t *displs, mc_dtype_t dt,
                                mc_request_h *req_p)
{
    if (!req_p) return mc_err(MC_ERR_INVALID_ARG, "allgatherv: req_p is NULL");
    return iallgatherv(c, MC_COLL_ALLGATHERV, s, scount, rb, counts, displs, dt,
                       1, req_p);
}

mc_status_t mc_comm_allgatherv(mc_comm_h c, const void *s, size_t scount,
                               void *rb, const size_t *counts,
                               const size_t *displs, mc_dtype_t dt)
{
    mc_request_h r = NULL;
    return blocking(iallgatherv(c, MC_COLL_ALLGATHERV, s, scount, rb, counts,
                                displs, dt, 0, &r),
                    &r);
}

static mc_status_t ireduce_scatterv(mc_comm_h c, mc_coll_t coll, const void *s,
                                    void *rb, const size_t *counts,
                                    mc_dtype_t dt, mc_redop_t op, int async,
                                    mc_request_h *req_p)
{
    const char *fn =
        coll == MC_COLL_REDUCE_SCATTER ? "reduce_scatter" : "reduce_scatterv";
    CHECK_COMM(c, fn);
    MC_CHECK(check_redop(c, fn, dt, op));
    if (!counts)
        return comm_err(c, MC_ERR_INVALID_ARG, "%s: recvcounts is NULL", fn);
    size_t total = 0;
    size_t *displs = malloc(sizeof(size_t) * (size_t)c->size);
    if (!displs) return comm_err(c, MC_ERR_NO_MEMORY, "%s: out of memory", fn);
    for (int i = 0; i < c->size; i++) {
        if (counts[i] > (SIZE_MAX / 4) / ES(dt) - total) {
            free(displs);
            return comm_err(c, MC_ERR_INVALID_ARG, "%s: counts too large", fn);
        }
        displs[i] = total;
        total += counts[i];
    }
    mc_status_t st = check_buf(c, fn, s, total, "sendbuf");
    if (st == MC_OK) st = check_buf(c, fn, rb, counts[c->rank], "recvbuf");
    if (st == MC_OK)
        st = check_overlap(c, fn, s, total * ES(dt), rb,
                           counts[c->rank] * ES(dt),
                           s && rb == AT(s, displs[c->rank], dt),
                           coll == MC_COLL_REDUCE_SCATTER
                               ? "recvbuf == sendbuf + rank * count"
                               : "recvbuf == sendbuf + the sum of "
                                 "recvcounts before rank");
    mc_request_t *r = NULL;
    if (st == MC_OK)
        st = new_coll(c, coll, dt, op, -1, counts[c->rank], s, rb, &r);
    if (st < 0) {
        free(displs);
        return st;
    }
    if (coll == MC_COLL_REDUCE_SCATTER) r->args.count = counts[0];
    r->args.counts = dup_sizes(counts, c->size);
    r->args.displs = displs;
    if (!r->args.counts) {
        req_release(r);
        req_release(r);
        return comm_err(c, MC_ERR_NO_MEMORY, "%s: out of memory", fn);
    }
    r->args.in_place = s && rb == AT(s, displs[c->rank], dt);
    return coll_issue(c, r, async, req_p);
}

static mc_status_t ireduce_scatter(mc_comm_h c, const void *s, void *rb,
                                   size_t n, mc_dtype_t dt, mc_redop_t op,
                                   int async, mc_request_h *req_p)
{
    CHECK_COMM(c, "reduce_scatter");
    MC_CHECK(check_bytes(c, "reduce_scatter", n, (size_t)c->size,
                         (unsigned)dt < MC_DTYPE_COUNT ? dt : MC_UINT8));
    size_t *counts = malloc(sizeof(size_t) * (size_t)c->size);
    if (!counts)
        return comm_err(c, MC_ERR_NO_MEMORY, "reduce_scatter: out of memory");
    for (int i = 0; i < c->size; i++)
        counts[i] = n;
    mc_status_t st = ireduce_scatterv(c, MC_COLL_REDUCE_SCATTER, s, rb, counts,
                                      dt, op, async, req_p);
    free(counts);
    return st;
}

mc_status_t mc_comm_ireduce_scatter(mc_comm_h c, const void *s, void *rb,
                                    size_t n, mc_dtype_t dt, mc_redop_t op,
                                    mc_request_h *req_p)
{
    if (!req_p)
        return mc_err(MC_ERR_INVALID_ARG, "reduce_scatter: req_p is NULL");
    return ireduce_scatter(c, s, rb, n, dt, op, 1, req_p);
}

mc_status_t mc_comm_reduce_scatter(mc_comm_h c, const void *s, void *rb,
                                   size_t n, mc_dtype_t dt, mc_redop_t op)
{
    mc_request_h r = NULL;
    return blocking(ireduce_scatter(c, s, rb, n, dt, op, 0, &r), &r);
}

mc_status_t mc_comm_ireduce_scatterv(mc_comm_h c, const void *s, void *rb,
                                     const size_t *counts, mc_dtype_t dt,
                                     mc_redop_t op, mc_request_h *req_p)
{
    if (!req_p)
        return mc_err(MC_ERR_INVALID_ARG, "reduce_scatterv: req_p is NULL");
    return ireduce_scatterv(c, MC_COLL_REDUCE_SCATTERV, s, rb, counts, dt, op,
                            1, req_p);
}

mc_status_t mc_comm_reduce_scatterv(mc_comm_h c, const void *s, void *rb,
                                    const size_t *counts, mc_dtype_t dt,
                                    mc_redop_t op)
{
    mc_request_h r = NULL;
    return blocking(ireduce_scatterv(c, MC_COLL_REDUCE_SCATTERV, s, rb, counts,
                                     dt, op, 0, &r),
                    &r);
}

/* broadcast, reduce, gather, scatter */
static mc_status_t irooted(mc_comm_h c, mc_coll_t coll, const void *s, void *rb,
                           size_t n, mc_dtype_t dt, mc_redop_t op, int root,
                           int async, mc_request_h *req_p)
{
    const char *fn = mc_coll_name(coll);
    CHECK_COMM(c, fn);
    if (coll == MC_COLL_REDUCE)
        MC_CHECK(check_redop(c, fn, dt, op));
    else
        MC_CHECK(check_dtype(c, fn, dt));
    MC_CHECK(check_root(c, fn, root));
    int is_root = c->rank == root;
    size_t blocks = (coll == MC_COLL_GATHER || coll == MC_COLL_SCATTER)
                        ? (size_t)c->size
                        : 1;
    MC_CHECK(check_bytes(c, fn, n, blocks, dt));
    int in_place = 0;
    switch (coll) {
    case MC_COLL_BROADCAST:
        if (is_root) MC_CHECK(check_buf(c, fn, s, n, "sendbuf"));
        MC_CHECK(check_buf(c, fn, rb, n, "recvbuf"));
        in_place = s == rb;
        if (is_root)
            MC_CHECK(check_overlap(c, fn, s, n * ES(dt), rb, n * ES(dt),
                                   in_place, "sendbuf == recvbuf"));
        if (!is_root) s = rb;
        break;
    case MC_COLL_REDUCE:
        MC_CHECK(check_buf(c, fn, s, n, "sendbuf"));
        if (is_root) MC_CHECK(check_buf(c, fn, rb, n, "recvbuf"));
        in_place = s == rb;
        if (is_root)
            MC_CHECK(check_overlap(c, fn, s, n * ES(dt), rb, n * ES(dt),
                                   in_place, "sendbuf == recvbuf"));
        break;
    case MC_COLL_GATHER:
        MC_CHECK(check_buf(c, fn, s, n, "sendbuf"));
        if (is_root) {
            MC_CHECK(check_buf(c, fn, rb, n * blocks, "recvbuf"));
            in_place = rb && s == AT(rb, (size_t)root * n, dt);
            MC_CHECK(check_overlap(c, fn, s, n * ES(dt), rb,
                                   n * blocks * ES(dt), in_place,
                                   "sendbuf == recvbuf + root * count"));
        }
        break;
    case MC_COLL_SCATTER:
        MC_CHECK(check_buf(c, fn, rb, n, "recvbuf"));
        if (is_root) {
            MC_CHECK(check_buf(c, fn, s, n * blocks, "sendbuf"));
            in_place = s && rb == AT(s, (size_t)root * n, dt);
            MC_CHECK(check_overlap(c, fn, s, n * blocks * ES(dt), rb,
                                   n * ES(dt), in_place,
                                   "recvbuf == sendbuf + root * count"));
        }
        break;
    default:
        return comm_err(c, MC_ERR_INTERNAL, "irooted: bad collective");
    }
    mc_request_t *r = NULL;
    MC_CHECK(new_coll(c, coll, dt, coll == MC_COLL_REDUCE ? op : MC_SUM, root,
                      n, s, rb, &r));
    r->args.in_place = in_place;
    return coll_issue(c, r, async, req_p);
}

#define ROOTED(name, coll)                                                     \
    mc_status_t mc_comm_i##name(mc_comm_h c, const void *s, void *rb,          \
                                size_t n, mc_dtype_t dt, int root,             \
                                mc_request_h *req_p)                           \
    {                                                                          \
        if (!req_p)                                                            \
            return mc_err(MC_ERR_INVALID_ARG, #name ": req_p is NULL");        \
        return irooted(c, coll, s, rb, n, dt, MC_SUM, root, 1, req_p);         \
    }                                                                          \
    mc_status_t mc_comm_##name(mc_comm_h c, const void *s, void *rb, size_t n, \
                               mc_dtype_t dt, int root)                        \
    {                                                                          \
        mc_request_h r = NULL;                                                 \
        return blocking(irooted(c, coll, s, rb, n, dt, MC_SUM, root, 0, &r),   \
                        &r);                                                   \
    }

ROOTED(broadcast, MC_COLL_BROADCAST)
ROOTED(gather, MC_COLL_GATHER)
ROOTED(scatter, MC_COLL_SCATTER)

mc_status_t mc_comm_ireduce(mc_comm_h c, const void *s, void *rb, size_t n,
                            mc_dtype_t dt, mc_redop_t op, int root,
                            mc_request_h *req_p)
{
    if (!req_p) return mc_err(MC_ERR_INVALID_ARG, "reduce: req_p is NULL");
    return irooted(c, MC_COLL_REDUCE, s, rb, n, dt, op, root, 1, req_p);
}

mc_status_t mc_comm_reduce(mc_comm_h c, const void *s, void *rb, size_t n,
                           mc_dtype_t dt, mc_redop_t op, int root)
{
    mc_request_h r = NULL;
    return blocking(irooted(c, MC_COLL_REDUCE, s, rb, n, dt, op, root, 0, &r),
                    &r);
}

static mc_status_t ialltoallv(mc_comm_h c, mc_coll_t coll, const void *s,
                              const size_t *sc, const size_t *sd, void *rb,
                              const size_t *rc, const size_t *rd, mc_dtype_t dt,
                              size_t n, int async, mc_request_h *req_p)
{
    const char *fn = mc_coll_name(coll);
    CHECK_COMM(c, fn);
    MC_CHECK(check_dtype(c, fn, dt));
    if (!sc || !sd || !rc || !rd)
        return comm_err(c, MC_ERR_INVALID_ARG,
                        "%s: a count/displacement "
                        "array is NULL",
                        fn);
    size_t send_end = 0, recv_end = 0;
    for (int i = 0; i < c->size; i++) {
        MC_CHECK(check_entry(c, fn, "sendcounts", i, sc[i], 2, dt));
        MC_CHECK(check_entry(c, fn, "sdispls", i, sd[i], 2, dt));
        MC_CHECK(check_entry(c, fn, "recvcounts", i, rc[i], 2, dt));
        MC_CHECK(check_entry(c, fn, "rdispls", i, rd[i], 2, dt));
        if (sc[i] && sd[i] + sc[i] > send_end) send_end = sd[i] + sc[i];
        if (rc[i] && rd[i] + rc[i] > recv_end) recv_end = rd[i] + rc[i];
    }
    MC_CHECK(check_buf(c, fn, s, send_end, "sendbuf"));
    MC_CHECK(check_buf(c, fn, rb, recv_end, "recvbuf"));
    if (coll != MC_COLL_ALLTOALL) /* alltoall's blocks are its own */
        MC_CHECK(check_blocks(c, fn, "rdispls", rc, rd));
    if (ranges_overlap(s, send_end * ES(dt), rb, recv_end * ES(dt)))
        return comm_err(c, MC_ERR_INVALID_ARG,
                        "%s: send and receive buffers overlap (in-place "
                        "all-to-all is not supported)",
                        fn);
    mc_request_t *r = NULL;
    MC_CHECK(new_coll(c, coll, dt, MC_SUM, -1, n, s, rb, &r));
    r->args.counts = dup_sizes(rc, c->size);
    r->args.displs = dup_sizes(rd, c->size);
    r->args.scounts = dup_sizes(sc, c->size);
    r->args.sdispls = dup_sizes(sd, c->size);
    if (!r->args.counts || !r->args.displs || !r->args.scounts ||
        !r->args.sdispls) {
        req_release(r);
        req_release(r);
        return comm_err(c, MC_ERR_NO_MEMORY, "%s: out of memory", fn);
    }
    return coll_issue(c, r, async, req_p);
}

static mc_status_t ialltoall(mc_comm_h c, const void *s, void *rb, size_t n,
                             mc_dtype_t dt, int async, mc_request_h *req_p)
{
    CHECK_COMM(c, "alltoall");
    MC_CHECK(check_dtype(c, "alltoall", dt));
    MC_CHECK(check_bytes(c, "alltoall", n, (size_t)c->size, dt));
    size_t *cnt = malloc(sizeof(size_t) * (size_t)c->size);
    size_t *dsp = malloc(sizeof(size_t) * (size_t)c->size);
    if (!cnt || !dsp) {
        free(cnt);
        free(dsp);
        return comm_err(c, MC_ERR_NO_MEMORY, "alltoall: out of memory");
    }
    for (int i = 0; i < c->size; i++) {
        cnt[i] = n;
        dsp[i] = n * (size_t)i;
    }
    mc_status_t st = ialltoallv(c, MC_COLL_ALLTOALL, s, cnt, dsp, rb, cnt, dsp,
                                dt, n, async, req_p);
    free(cnt);
    free(dsp);
    return st;
}

mc_status_t mc_comm_ialltoall(mc_comm_h c, const void *s, void *rb, size_t n,
                              mc_dtype_t dt, mc_request_h *req_p)
{
    if (!req_p) return mc_err(MC_ERR_INVALID_ARG, "alltoall: req_p is NULL");
    return ialltoall(c, s, rb, n, dt, 1, req_p);
}

mc_status_t mc_comm_alltoall(mc_comm_h c, const void *s, void *rb, size_t n,
                             mc_dtype_t dt)
{
    mc_request_h r = NULL;
    return blocking(ialltoall(c, s, rb, n, dt, 0, &r), &r);
}

mc_status_t mc_comm_ialltoallv(mc_comm_h c, const void *s, const size_t *sc,
                               const size_t *sd, void *rb, const size_t *rc,
                               const size_t *rd, mc_dtype_t dt,
                               mc_request_h *req_p)
{
    if (!req_p) return mc_err(MC_ERR_INVALID_ARG, "alltoallv: req_p is NULL");
    return ialltoallv(c, MC_COLL_ALLTOALLV, s, sc, sd, rb, rc, rd, dt, 0, 1,
                      req_p);
}

mc_status_t mc_comm_alltoallv(mc_comm_h c, const void *s, const size_t *sc,
                              const size_t *sd, void *rb, const size_t *rc,
                              const size_t *rd, mc_dtype_t dt)
{
    mc_request_h r = NULL;
    return blocking(
        ialltoallv(c, MC_COLL_ALLTOALLV, s, sc, sd, rb, rc, rd, dt, 0, 0, &r),
        &r);
}

static mc_status_t ibarrier(mc_comm_h c, int async, mc_request_h *req_p)
{
    CHECK_COMM(c, "barrier");
    mc_request_t *r = NULL;
    MC_CHECK(
        new_coll(c, MC_COLL_BARRIER, MC_UINT8, MC_SUM, -1, 0, NULL, NULL, &r));
    return coll_issue(c, r, async, req_p);
}

mc_status_t mc_comm_ibarrier(mc_comm_h c, mc_request_h *req_p)
{
    if (!req_p) return mc_err(MC_ERR_INVALID_ARG, "barrier: req_p is NULL");
    return ibarrier(c, 1, req_p);
}

mc_status_t mc_comm_barrier(mc_comm_h c)
{
    mc_request_h r = NULL;
    return blocking(ibarrier(c, 0, &r), &r);
}

mc_status_t mc_comm_admit(mc_comm_h c, int *nadmitted_p)
{
    CHECK_COMM(c, "admit");
    if (nadmitted_p) *nadmitted_p = 0;
    mc_request_t *r = NULL;
    /* a barrier that mismatch detection tells apart from a plain one */
    MC_CHECK(
        new_coll(c, MC_COLL_BARRIER, MC_UINT8, MC_MAX, -1, 0, NULL, NULL, &r));
    r->admit_point = 1;
    mc_request_h h = NULL;
    mc_status_t st = coll_issue(c, r, 0, &h);
    if (st < 0) return st;
    st = mc_request_wait(h, -1);
    if (st == MC_OK && nadmitted_p) *nadmitted_p = r->admitted;
    mc_request_free(h);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Point-to-point                                                           */
/* ------------------------------------------------------------------------ */

static mc_status_t p2p_check(mc_comm_t *c, const char *fn, const void *buf,
                             size_t n, mc_dtype_t dt, int peer, int any_ok)
{
    CHECK_COMM(c, fn);
    MC_CHECK(check_dtype(c, fn, dt));
    MC_CHECK(check_bytes(c, fn, n, 1, dt));
    MC_CHECK(check_buf(c, fn, buf, n, "buf"));
    if (any_ok && peer == MC_ANY_SOURCE) return MC_OK;
    if (peer < 0 || peer >= c->size || peer == c->rank)
        return comm_err(c, MC_ERR_INVALID_ARG,
                        "%s: peer %d invalid (size %d, own rank %d)", fn, peer,
                        c->size, c->rank);
    return MC_OK;
}

/* A user send a transport holds joins comm->sends (plock). */
static void p2p_send_link(mc_comm_t *c, mc_request_t *r)
{
    r->p2p_post = ++c->p2p_posts;
    c->p2p_sending[r->peer]++;
    r->p2p_counted = 1;
    r->s_prev = NULL;
    r->s_next = c->sends;
    if (c->sends) c->sends->s_prev = r;
    c->sends = r;
}

/* A user send leaves comm->sends (plock). */
static void p2p_send_unlink(mc_comm_t *c, mc_request_t *r)
{
    r->p2p_counted = 0;
    c->p2p_sending[r->peer]--;
    if (r->s_prev)
        r->s_prev->s_next = r->s_next;
    else
        c->sends = r->s_next;
    if (r->s_next) r->s_next->s_prev = r->s_prev;
    r->s_prev = r->s_next = NULL;
}

static void p2p_send_event(mc_ev_t *ev)
{
    mc_request_t *r = (mc_request_t *)ev;
    if (r->done || r->px.status == MC_INPROGRESS ||
        r->hx.status == MC_INPROGRESS)
        return;
    mc_status_t st = r->hx.status < 0 ? (mc_status_t)r->hx.status
                                      : (mc_status_t)r->px.status;
    if (r->p2p_counted) p2p_send_unlink(r->comm, r);
    /* the stream is FIFO: a released send's rest to this peer, queued
     * before this one, has gone (LEFT notices wait for it again) */
    if (st == MC_OK && r->p2p_post > r->comm->p2p_rest[r->peer])
        r->comm->p2p_rest[r->peer] = 0;
    char msg[sizeof(r->err)] = "";
    if (st < 0 && r->err[0]) /* given back: p2p_send_release says why */
        snprintf(msg, sizeof(msg), "%s", r->err);
    else if (st < 0)
        snprintf(msg, sizeof(msg), "send to rank %d failed: %s", r->peer,
                 mc_status_str(st));
    req_complete(r, st, msg);
}

mc_status_t mc_comm_isend(mc_comm_h c, const void *buf, size_t n, mc_dtype_t dt,
                          int peer, uint32_t tag, mc_request_h *req_p)
{
    MC_CHECK(p2p_check(c, "send", buf, n, dt, peer, 0));
    if (!req_p) return mc_err(MC_ERR_INVALID_ARG, "send: req_p is NULL");
    if (__atomic_load_n(&c->stopping, __ATOMIC_ACQUIRE))
        return comm_err(c, MC_ERR_INVALID_ARG,
                        "send: communicator is being destroyed");
    mc_request_t *r = req_new(c, R_SEND);
    if (!r) return comm_err(c, MC_ERR_NO_MEMORY, "send: out of memory");
    r->peer = peer;
    r->tag = tag;
    r->bytes = n * ES(dt);
    r->ev.fn = p2p_send_event;
    r->shdr = (mc_hdr_t){.magic = MC_WIRE_MAGIC,
                         .kind = MC_KIND_P2P,
                         .dtype = (uint8_t)dt,
                         .epoch = c->epoch,
                         .count = n,
                         .len = r->bytes,
                         .tag = tag,
                         .src = c->rank};
    r->hx = (mc_xfer_t){.buf = &r->shdr,
                        .len = sizeof(r->shdr),
                        .cb = xfer_cb,
                        .arg = &r->ev,
                        .status = MC_INPROGRESS};
    r->px = (mc_xfer_t){.buf = (void *)buf,
                        .len = r->bytes,
                        .cb = xfer_cb,
                        .arg = &r->ev,
                        .status = MC_INPROGRESS};
    pthread_mutex_lock(&c->plock);
    int t = c->peer_tl[peer];
    mc_status_t st = MC_OK;
    if (c->peer_dead[peer]) st = MC_ERR_PEER_FAILED;
    if (st == MC_OK && !c->active[peer]) {
        /* removed (on suspicion: its streams may be open): nothing goes */
        uint64_t e = c->epoch;
        pthread_mutex_unlock(&c->plock);
        req_release(r);
        req_release(r);
        return comm_err(c, MC_ERR_PEER_FAILED,
                        "send to rank %d: it is not in the view (epoch %llu)",
                        peer, (unsigned long long)e);
    }
    int hposted = 0;
    if (st == MC_OK) {
        st = c->tlops[t]->post_send(c->tl[t], peer, MC_CH_P2P, &r->hx);
        hposted = st == MC_OK;
    }
    if (st == MC_OK)
        st = c->tlops[t]->post_send(c->tl[t], peer, MC_CH_P2P, &r->px);
    if (st < 0) {
        /* The header queued, the payload refused (the peer failed): the
         * header's transfer still ends (its callback always comes), and
         * with the payload marked failed that completes the request and
         * drops the engine's reference; the caller gets no handle, so its
         * reference goes now. (Only that one: before, both stayed and the
         * request never completed.) Nothing posted: both go. */
        if (hposted) {
            r->px.status = st;
            /* on the send list meanwhile: destroy ends it if the
             * header's end never comes (nothing progresses after it) */
            p2p_send_link(c, r);
        }
        pthread_mutex_unlock(&c->plock);
        req_release(r);
        if (!hposted) req_release(r);
        return comm_err(c, st, "send to rank %d: %s", peer, mc_status_str(st));
    }
    p2p_send_link(c, r);
    progress_locked(c);
    pthread_mutex_unlock(&c->plock);
    *req_p = r;
    return MC_OK;
}

mc_status_t mc_comm_send(mc_comm_h c, const void *buf, size_t n, mc_dtype_t dt,
                         int peer, uint32_t tag)
{
    mc_request_h r = NULL;
    return blocking(mc_comm_isend(c, buf, n, dt, peer, tag, &r), &r);
}

mc_status_t mc_comm_irecv(mc_comm_h c, void *buf, size_t n, mc_dtype_t dt,
                          int peer, uint32_t tag, mc_request_h *req_p)
{
    MC_CHECK(p2p_check(c, "recv", buf, n, dt, peer, 1));
    if (!req_p) return mc_err(MC_ERR_INVALID_ARG, "recv: req_p is NULL");
    if (__atomic_load_n(&c->stopping, __ATOMIC_ACQUIRE))
        return comm_err(c, MC_ERR_INVALID_ARG,
                        "recv: communicator is being destroyed");
    mc_request_t *r = req_new(c, R_RECV);
    if (!r) return comm_err(c, MC_ERR_NO_MEMORY, "recv: out of memory");
    r->peer = peer;
    r->tag = tag;
    r->buf = buf;
    r->bytes = n * ES(dt);
    *req_p = r;
    pthread_mutex_lock(&c->plock);
    /* an unexpected message that already arrived (or is arriving)? */
    mc_unexp_t *prev = NULL, *u = c->unexp_head;
    while (u && !((peer == MC_ANY_SOURCE || u->src == peer) && u->tag == tag &&
                  !u->claimed)) {
        prev = u;
        u = u->next;
    }
    if (u) {
        if (prev)
            prev->next = u->next;
        else
            c->unexp_head = u->next;
        if (c->unexp_tail == u) c->unexp_tail = prev;
        r->source = u->src;
        if (u->len != r->bytes) {
            char msg[256];
            snprintf(msg, sizeof(msg),
                     "p2p mismatch: rank %d sent %zu bytes with tag %u but "
                     "rank %d posted a receive of %zu bytes",
                     u->src, u->len, tag, c->rank, r->bytes);
            if (u->complete) {
                c->unexp_bytes -= u->len;
                free(u->data);
                free(u);
            } else {
                u->drop = 1; /* still arriving: freed when complete */
            }
            req_complete(r, MC_ERR_MISMATCH, msg);
        } else if (u->complete) {
            if (u->len) memcpy(buf, u->data, u->len);
            c->unexp_bytes -= u->len;
            free(u->data);
            free(u);
            req_complete(r, MC_OK, NULL);
        } else if (c->p2p_dead[u->src] ||
                   (!c->active[u->src] && !c->peer_dead[u->src])) {
            /* its sender failed mid-message, or was removed from the view
             * (alive, maybe stopped): the rest may never come */
            u->drop = 1;
            char msg[160];
            if (c->p2p_dead[u->src])
                snprintf(msg, sizeof(msg),
                         "recv from rank %d: peer failed mid-message", u->src);
            else
                snprintf(msg, sizeof(msg),
                         "recv from rank %d: it was removed from the view "
                         "(epoch %llu) while its message was arriving",
                         u->src, (unsigned long long)c->epoch);
            req_complete(r, MC_ERR_PEER_FAILED, msg);
        } else {
            u->claimed = r; /* copied when its payload completes */
        }
    } else {
        if (peer != MC_ANY_SOURCE && (c->p2p_dead[peer] || !c->active[peer])) {
            char msg[128];
            if (c->p2p_dead[peer])
                snprintf(msg, sizeof(msg), "recv from rank %d: peer failed",
                         peer);
            else
                snprintf(msg, sizeof(msg),
                         "recv from rank %d: it is not in the view (epoch "
                         "%llu)",
                         peer, (unsigned long long)c->epoch);
            pthread_mutex_unlock(&c->plock);
            req_complete(r, MC_ERR_PEER_FAILED, msg);
            return MC_OK;
        }
        if (c->precv_tail)
            c->precv_tail->next = r;
        else
            c->precv_head = r;
        c->precv_tail = r;
        /* a stream held for lack of buffer space may match now */
        for (int p = 0; p < c->size; p++) {
            if (p == c->rank) continue;
            mc_in_t *in = &c->in[MC_CH_P2P][p];
            if (in->state == IN_HAVE_HDR) p2p_match(c, in);
        }
    }
    progress_locked(c);
    pthread_mutex_unlock(&c->plock);
    return MC_OK;
}

mc_status_t mc_comm_recv(mc_comm_h c, void *buf, size_t n, mc_dtype_t dt,
                         int peer, uint32_t tag)
{
    mc_request_h r = NULL;
    return blocking(mc_comm_irecv(c, buf, n, dt, peer, tag, &r), &r);
}

/* ------------------------------------------------------------------------ */
/* Creation and destruction                                                 */
/* ------------------------------------------------------------------------ */

void mc_comm_config_init(mc_comm_config_t *cfg)
{
    if (!cfg) return;
    memset(cfg, 0, sizeof(*cfg));
    cfg->size = sizeof(*cfg);
    cfg->name = "mc";
    cfg->timeout_ms = mc_env_int("MOONCAKE_TIMEOUT_MS", 300000);
    cfg->init_timeout_ms = mc_env_int("MOONCAKE_INIT_TIMEOUT_MS", 300000);
    cfg->ft = mc_env_int("MOONCAKE_FT", 1) != 0;
    cfg->auto_recover = mc_env_int("MOONCAKE_AUTO_RECOVER", 1) != 0;
    cfg->join = mc_env_int("MOONCAKE_JOIN", 0) != 0;
    cfg->admit_auto = mc_env_int("MOONCAKE_ADMIT_AUTO", 0) != 0;
    cfg->etcd_endpoints = getenv("MOONCAKE_ETCD_ENDPOINTS");
    cfg->etcd_ttl_s = mc_env_int("MOONCAKE_ETCD_TTL_S", 2);
    const char *t = mc_env_str("MOONCAKE_TRANSPORT", "auto");
    if (!strcmp(t, "tcp"))
        cfg->transport = MC_TRANSPORT_TCP;
    else if (!strcmp(t, "shm"))
        cfg->transport = MC_TRANSPORT_SHM;
    else {
        if (strcmp(t, "auto"))
            MC_LOG(MC_LOG_WARN, "MOONCAKE_TRANSPORT=%s unknown; using auto", t);
        cfg->transport = MC_TRANSPORT_AUTO;
    }
}

static void tune_init(mc_tune_t *t)
{
    t->chunk_bytes = (size_t)mc_env_int("MOONCAKE_CHUNK_BYTES", 512 << 10);
    if (t->chunk_bytes < 4096) t->chunk_bytes = 4096;
    t->allreduce_small_max =
        (size_t)mc_env_int("MOONCAKE_ALLREDUCE_SMALL_MAX", 64 << 10);
    t->bcast_small_max =
        (size_t)mc_env_int("MOONCAKE_BCAST_SMALL_MAX", 64 << 10);
    snprintf(t->algo_allreduce, sizeof(t->algo_allreduce), "%s",
             mc_env_str("MOONCAKE_ALGO_ALLREDUCE", ""));
    snprintf(t->algo_broadcast, sizeof(t->algo_broadcast), "%s",
             mc_env_str("MOONCAKE_ALGO_BROADCAST", ""));
    snprintf(t->algo_reduce, sizeof(t->algo_reduce), "%s",
             mc_env_str("MOONCAKE_ALGO_REDUCE", ""));
    snprintf(t->algo_reduce_scatter, sizeof(t->algo_reduce_scatter), "%s",
             mc_env_str("MOONCAKE_ALGO_REDUCE_SCATTER", ""));
    t->stage_min = (size_t)mc_env_int("MOONCAKE_SHM_STAGE_MIN", 64 << 10);
    t->stage_max = (size_t)mc_env_int("MOONCAKE_SHM_STAGE_MAX", 1 << 30);
}

/* Identity of this host: ranks with equal strings share memory. */
static void host_id(char *out, size_t cap)
{
    char host[256] = "", boot[64] = "";
    gethostname(host, sizeof(host) - 1);
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY);
    if (fd >= 0) {
        ssize_t n = read(fd, boot, sizeof(boot) - 1);
        if (n > 0) boot[n] = '\0';
        close(fd);
    }
    for (char *p = boot; *p; p++)
        if (*p == '\n') *p = '\0';
    snprintf(out, cap, "%s|%s|%u", host, boot, (unsigned)getuid());
}

static int local_cpus(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static void join_watch_stop(mc_comm_t *c);

static void comm_free(mc_comm_t *c)
{
    join_watch_stop(c);
    mc_emember_stop(c->em);
    c->em = NULL;
    free(c->em_tmp);
    if (c->live) mc_live_destroy(c->live);
    for (int i = 0; i < c->ntl; i++)
        c->tlops[i]->destroy(c->tl[i]);
    for (int ch = 0; ch < MC_NUM_CHANNELS; ch++) {
        for (int p = 0; c->in[ch] && p < c->size; p++) {
            free(c->in[ch][p].cbuf);
            free(c->in[ch][p].sink);
            /* a message still arriving that no list holds any more */
            mc_unexp_t *u = c->in[ch][p].p2p_unexp;
            if (u && u->drop) {
                free(u->data);
                free(u);
            }
        }
        free(c->in[ch]);
    }
    while (c->unexp_head) {
        mc_unexp_t *u = c->unexp_head;
        c->unexp_head = u->next;
        free(u->data);
        free(u);
    }
    for (int b = 0; b < c->cx.nblocks; b++)
        free(c->cx.blocks[b]);
    pinned_gc(c, 1); /* the transports are gone */
    free(c->cx.blocks);
    for (int i = 0; i < 4; i++)
        free(c->scratch[i]);
    free(c->discard);
    free(c->abort_out);
    free(c->left_out);
    free(c->left_epoch);
    free(c->left_seq);
    free(c->fin_epoch);
    free(c->fin_seq);
    free(c->p2p_eof);
    free(c->left_wait);
    free(c->p2p_sending);
    free(c->p2p_rest);
    free(c->abort_seq);
    free(c->abort_why);
    free(c->abort_msg);
    free(c->peer_dead);
    free(c->p2p_dead);
    free(c->peer_tl);
    free(c->active);
    free(c->vslots);
    free(c->vof);
    free(c->failed_last);
    free(c->op_active);
    free(c->att_active);
    free(c->suspect);
    free(c->nv_active);
    free(c->ag_tmp);
    free(c->rep_epoch);
    free(c->rep_coord);
    free(c->rep_last);
    free(c->rep_maps);
    free(c->rep_acc_maps);
    free(c->rep_rno);
    free(c->rep_acc_from);
    free(c->rep_acc_start);
    free(c->prop_rno);
    free(c->dead_us);
    free(c->acc_set);
    free(c->sent_view);
    free(c->backup);
    free(c->avg_buf);
    mc_stage_free(c->stage);
    mc_stage_free(c->slots);
    free(c->slot_map);
    free(c->slot_vs);
    free(c->saved);
    free(c->live_tmp);
    free(c->inc);
    free(c->joined_last);
    free(c->rep_admit);
    free(c->jw_nonce);
    free(c->jw_etcd);
    if (c->store) mc_store_destroy(c->store);
    while (c->ctrl_out) {
        mc_ctrl_out_t *m = c->ctrl_out;
        c->ctrl_out = m->next;
        free(m);
    }
    pthread_mutex_destroy(&c->plock);
    pthread_mutex_destroy(&c->qlock);
    pthread_cond_destroy(&c->qcond);
    pthread_mutex_destroy(&c->exec_lock);
    pthread_mutex_destroy(&c->dlock);
    pthread_cond_destroy(&c->dcond);
    pthread_cond_destroy(&c->cbcond);
    pthread_mutex_destroy(&c->elock);
    pthread_mutex_destroy(&c->jlock);
    pthread_cond_destroy(&c->jcond);
    free(c);
}

static const mc_tl_ops_t *const mc_transports[] = {&mc_tl_shm_ops,
                                                   &mc_tl_tcp_ops};
enum { TL_SHM = 0, TL_TCP = 1 };

/* ------------------------------------------------------------------------ */
/* Joins (rejoin and scale-up)                                              */
/* ------------------------------------------------------------------------ */

/*
 * Store keys (under the communicator's prefix):
 *   join/<slot>      u64 nonce of the process waiting for that slot (0: none)
 *   joins            counter: one increment per request (the doorbell)
 *   join/id/<n>      decimal slot of request n
 *   admit/<slot>/<nonce hex>   the admitting view, for that joiner only
 * The admit record (join_rec_t) is followed by `size` u64 incarnations
 * and `size` bytes of the active map.
 */
#define JOIN_REC_MAGIC 0x314e494f4a434dull /* "MCJOIN1" */
typedef struct join_rec {
    uint64_t magic;
    uint64_t epoch, start, uid;
    uint32_t size, pad;
} join_rec_t;

/* The communicator's etcd prefix: /mooncake/<job>/<name>/<uid hex>/. */
static void em_prefix(const mc_comm_t *c, char *buf, size_t cap)
{
    const char *job = getenv("MOONCAKE_JOB");
    snprintf(buf, cap, "/mooncake/%s/%s/%016llx/",
             job && *job ? job : "default", c->name,
             (unsigned long long)c->uid);
}

/* Is there a joiner for a slot that is free in the current view (plock)? */
static uint64_t join_flag(mc_comm_t *c)
{
    uint64_t f = 0;
    int any = 0;
    /* a request that lands just now waits for the next op */
    if (!__atomic_load_n(&c->jw_any, __ATOMIC_ACQUIRE)) return 0;
    pthread_mutex_lock(&c->jlock);
    for (int q = 0; c->jw_nonce && q < c->size; q++) {
        any |= c->jw_nonce[q] != 0;
        if (c->jw_coord && c->jw_nonce[q] && !c->active[q]) f = FLAG_JOIN;
    }
    if (!any) __atomic_store_n(&c->jw_any, 0, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&c->jlock);
    return f;
}

/* Coordinator deciding view `epoch`: add the waiting joiners to `next`
 * (plock held). Nothing is consumed or published yet: with etcd the view
 * may still lose its transaction (join_publish follows a commit). */
static void join_pick(mc_comm_t *c, uint8_t *next)
{
    pthread_mutex_lock(&c->jlock);
    for (int q = 0; c->jw_nonce && q < c->size; q++)
        if (c->jw_nonce[q] && !c->active[q] && !next[q]) next[q] = 1;
    pthread_mutex_unlock(&c->jlock);
}

/* The view `epoch` (starting at `start`) that adds the joiners join_pick
 * chose is decided: publish it to each of them and consume their requests
 * (plock held). A joiner whose record cannot be written is dropped from
 * `next` (without etcd; with etcd the committed view holds it and the
 * members find it unreachable, a failed joiner). */
static void join_publish(mc_comm_t *c, uint8_t *next, uint64_t epoch,
                         uint64_t start)
{
    size_t n = (size_t)c->size;
    int any = 0;
    uint64_t *nonce = calloc(n, sizeof(uint64_t));
    if (!nonce) {
        for (int q = 0; q < c->size; q++)
            if (next[q] && !c->active[q] && !c->em) next[q] = 0;
        return;
    }
    pthread_mutex_lock(&c->jlock);
    for (int q = 0; c->jw_nonce && q < c->size; q++)
        if (next[q] && !c->active[q] && c->jw_nonce[q]) {
            nonce[q] = c->jw_nonce[q];
            c->jw_used[q] = nonce[q];
            c->jw_nonce[q] = 0;
            any = 1;
        }
    pthread_mutex_unlock(&c->jlock);
    size_t len = sizeof(join_rec_t) + n + n * sizeof(uint64_t);
    uint8_t *rec = any ? malloc(len) : NULL;
    for (int q = 0; rec && q < c->size; q++) {
        if (!nonce[q]) continue;
        join_rec_t h = {.magic = JOIN_REC_MAGIC,
                        .epoch = epoch,
                        .start = start,
                        .uid = c->uid,
                        .size = (uint32_t)c->size};
        memcpy(rec, &h, sizeof(h));
        for (int p = 0; p < c->size; p++) {
            uint64_t inc = next[p] && !c->active[p] ? epoch : c->inc[p];
            memcpy(rec + sizeof(h) + (size_t)p * 8, &inc, 8);
        }
        memcpy(rec + sizeof(h) + n * 8, next, n);
        char key[96];
        snprintf(key, sizeof(key), "admit/%d/%016llx", q,
                 (unsigned long long)nonce[q]);
        mc_status_t st = mc_store_set(c->store, key, rec, len);
        /* the request is consumed (unless a newer process replaced it) */
        uint8_t zero[8] = {0}, cur[8];
        size_t cl = 0;
        snprintf(key, sizeof(key), "join/%d", q);
        if (st == MC_OK && !c->em)
            mc_store_compare_set(c->store, key, &nonce[q], 8, zero, 8, cur,
                                 sizeof(cur), &cl);
        if (st != MC_OK) {
            MC_LOG(MC_LOG_ERROR,
                   "rank %d: cannot publish the view admitting rank %d (%s); "
                   "%s",
                   c->rank, q, mc_last_error(),
                   c->em ? "etcd's view holds it: it will count as a failed "
                           "joiner"
                         : "not admitting it");
            if (!c->em) next[q] = 0;
            continue;
        }
        MC_LOG(MC_LOG_INFO,
               "rank %d: admitting a joiner in slot %d: view %llu from seq "
               "%llu",
               c->rank, q, (unsigned long long)epoch,
               (unsigned long long)start);
    }
    if (any && !rec)
        for (int q = 0; q < c->size; q++)
            if (nonce[q] && !c->em) next[q] = 0;
    free(rec);
    free(nonce);
}

/* The transport instance for `peer` from its "host/<peer>" key, or -1. */
static int join_pick_tl(mc_comm_t *c, int peer, char *why, size_t cap)
{
    char key[32], host[MC_HOST_MAX];
    size_t len = 0;
    snprintf(key, sizeof(key), "host/%d", peer);
    mc_status_t st = mc_store_get(c->store, key, 2000, host, sizeof(host) - 1,
                                  &len);
    if (st != MC_OK) {
        snprintf(why, cap, "reading %s: %s", key, mc_last_error());
        return -1;
    }
    host[len < sizeof(host) ? len : sizeof(host) - 1] = '\0';
    int same = !strcmp(host, c->host);
    int kind = c->tkind == MC_TRANSPORT_TCP   ? TL_TCP
               : c->tkind == MC_TRANSPORT_SHM ? TL_SHM
               : same                         ? TL_SHM
                                              : TL_TCP;
    if (kind == TL_SHM && !same) {
        snprintf(why, cap, "transport shm requested but it is on another host");
        return -1;
    }
    if (c->tl_kind[kind] < 0) {
        snprintf(why, cap,
                 "it needs the %s transport, which this rank does not run "
                 "(no peer needed it at creation)",
                 mc_transports[kind]->name);
        return -1;
    }
    return c->tl_kind[kind];
}

/* Member: slot `q` has a new process (incarnation c->inc[q]) in the view
 * just adopted: connect to it and start its streams afresh (plock held). */
static void admit_peer(mc_comm_t *c, int q)
{
    char why[MC_HOST_MAX + 128] = "";
    int t = join_pick_tl(c, q, why, sizeof(why));
    if (t >= 0) {
        mc_status_t st = c->tlops[t]->add_peer(c->tl[t], q, c->inc[q],
                                               c->timeout_ms);
        if (st != MC_OK) {
            snprintf(why, sizeof(why), "%s add_peer: %s", c->tlops[t]->name,
                     mc_last_error());
            t = -1;
        }
    }
    /* the joiner's shared slots (a new process, a new region). One that
     * this rank cannot map would split the algorithm choice (the others
     * would wait for slot words of ours, we for their frames): this rank
     * cannot work with it, as if it could not reach it, so the joiner
     * counts as failed and the next agreement removes it. Mapped after
     * add_peer, so that the joiner's own creation completes and it learns
     * at its first call that it was removed (mapped first and not
     * connected, it would wait out its init timeout). t is an index into
     * c->tl, not a kind. */
    if (c->slot_map) {
        char swhy[256];
        c->slot_map[q] = NULL;
        if (t >= 0 && c->tlops[t] == &mc_tl_shm_ops &&
            slot_map_peer(c, q, swhy, sizeof(swhy)) < 0) {
            snprintf(why, sizeof(why), "cannot map its shared slots: %s",
                     swhy);
            t = -1;
        }
    }
    /* transfers still posted on the old process's streams fail now */
    int64_t until = mc_now_us() + 200000;
    for (;;) {
        int busy = 0;
        for (int ch = 0; ch < MC_NUM_CHANNELS; ch++) {
            mc_in_t *in = &c->in[ch][q];
            busy |= in->state != IN_DEAD && in->state != 0 &&
                    (in->hx.status == MC_INPROGRESS ||
                     in->px.status == MC_INPROGRESS);
        }
        if (!busy || mc_now_us() > until || c->peer_tl[q] < 0) break;
        progress_locked(c);
    }
    /* forget the old process: its unread p2p messages, its reports. The
     * message its p2p stream was filling when it ended never completes:
     * a receive for the new process must not claim it (it would wait for
     * good), and its buffer goes (once no transfer writes it) */
    mc_in_t *pin = &c->in[MC_CH_P2P][q];
    mc_unexp_t *old = pin->p2p_unexp;
    if (old && pin->state == IN_PAYLOAD && pin->px.status == MC_INPROGRESS)
        old = NULL; /* still written (the wait above ran out): it stays */
    if (old && old->claimed) {
        req_complete(old->claimed, MC_ERR_PEER_FAILED,
                     "recv: its sender's process was replaced mid-message");
        old->claimed = NULL;
    }
    int old_listed = 0;
    mc_unexp_t **pp = &c->unexp_head;
    c->unexp_tail = NULL;
    while (*pp) {
        mc_unexp_t *u = *pp;
        if (u->src == q && (u->complete || u == old) && !u->claimed) {
            old_listed |= u == old;
            *pp = u->next;
            c->unexp_bytes -= u->len;
            free(u->data);
            free(u);
            continue;
        }
        c->unexp_tail = u;
        pp = &u->next;
    }
    if (old && !old_listed) { /* taken off the list (claimed, dropped) */
        c->unexp_bytes -= old->len;
        free(old->data);
        free(old);
    }
    if (old) pin->p2p_unexp = NULL;
    c->rep_epoch[q] = 0;
    c->rep_coord[q] = -1;
    c->rep_last[q] = 0;
    c->rep_admit[q] = 0;
    c->rep_entered[q] = 0;
    memset(c->rep_maps + (size_t)q * 2 * (size_t)c->size, 0,
           2 * (size_t)c->size);
    c->sent_view[q] = c->epoch; /* it has the view from the store */
    c->suspect[q] = 0;
    c->p2p_rest[q] = 0; /* a fresh stream */
    c->abort_seq[q] = UINT64_MAX;
    if (t < 0) {
        MC_LOG(MC_LOG_ERROR,
               "rank %d: cannot reach the joiner in slot %d: %s; treating it "
               "as failed",
               c->rank, q, why);
        c->peer_dead[q] = c->p2p_eof[q] = 1;
        p2p_peer_failed(c, q); /* what waits on the old process fails */
        return;
    }
    c->peer_tl[q] = (int8_t)t;
    c->peer_dead[q] = 0;
    c->p2p_dead[q] = 0;
    c->p2p_eof[q] = 0;
    for (int ch = 0; ch < MC_NUM_CHANNELS; ch++) {
        mc_in_t *in = &c->in[ch][q];
        rndv_end(c, in);
        uint8_t *cbuf = in->cbuf, *sink = in->sink;
        size_t sink_cap = in->sink_cap;
        memset(in, 0, sizeof(*in));
        in->cbuf = cbuf;
        in->sink = sink;
        in->sink_cap = sink_cap;
        in->ev.comm = c;
        in->ev.fn = in_event;
        in->peer = q;
        in->ch = ch;
        in_post_hdr(c, in);
    }
    if (c->live) {
        char key[32], val[128];
        size_t len = 0;
        snprintf(key, sizeof(key), "live/%d", q);
        mc_status_t st =
            mc_store_get(c->store, key, 2000, val, sizeof(val) - 1, &len);
        if (st == MC_OK) {
            val[len < sizeof(val) ? len : sizeof(val) - 1] = '\0';
            st = mc_live_watch(c->live, q, val);
        }
        if (st != MC_OK)
            MC_LOG(MC_LOG_WARN,
                   "rank %d: no heartbeats for joiner %d (%s): a silent "
                   "failure of it is found by the op timeout only",
                   c->rank, q, mc_last_error());
    }
}

static void join_set_coord(mc_comm_t *c)
{
    int lowest = -1;
    for (int p = 0; p < c->size && lowest < 0; p++)
        if (c->active[p]) lowest = p;
    pthread_mutex_lock(&c->jlock);
    c->jw_coord = lowest == c->rank;
    pthread_cond_signal(&c->jcond);
    pthread_mutex_unlock(&c->jlock);
}

/* Watcher thread: while this rank coordinates, read new join requests. */
static void *join_watch_main(void *arg)
{
    mc_comm_t *c = arg;
    pthread_mutex_lock(&c->jlock);
    while (!c->jw_stop) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        int64_t ns = ts.tv_nsec + c->join_poll_ms * 1000000;
        ts.tv_sec += ns / 1000000000;
        ts.tv_nsec = ns % 1000000000;
        pthread_cond_timedwait(&c->jcond, &c->jlock, &ts);
        if (c->jw_stop) break;
        if (!c->jw_coord) continue;
        if (c->em) {
            /* etcd: the joiners' leased registrations, from the watch */
            int n = mc_emember_joins(c->em, c->jw_etcd);
            for (int q = 0; q < c->size; q++) {
                if (c->jw_etcd[q] && c->jw_etcd[q] != c->jw_nonce[q] &&
                    c->jw_etcd[q] != c->jw_used[q])
                    MC_LOG(MC_LOG_INFO,
                           "rank %d: join request in etcd for slot %d", c->rank,
                           q);
                /* an admitted joiner's key stays until it revokes it */
                c->jw_nonce[q] =
                    c->jw_etcd[q] != c->jw_used[q] ? c->jw_etcd[q] : 0;
                if (c->jw_nonce[q])
                    __atomic_store_n(&c->jw_any, 1, __ATOMIC_RELEASE);
            }
            (void)n;
            continue;
        }
        int64_t seen = c->jw_seen;
        pthread_mutex_unlock(&c->jlock);
        int64_t total = 0;
        mc_status_t st = mc_store_add(c->store, "joins", 0, &total);
        while (st == MC_OK && seen < total) {
            char key[64], val[32];
            size_t len = 0;
            snprintf(key, sizeof(key), "join/id/%lld", (long long)(seen + 1));
            st = mc_store_get(c->store, key, 1000, val, sizeof(val) - 1, &len);
            if (st != MC_OK) break;
            val[len < sizeof(val) ? len : sizeof(val) - 1] = '\0';
            char *end;
            long q = strtol(val, &end, 10);
            uint64_t nonce = 0;
            if (*end == '\0' && q >= 0 && q < c->size) {
                snprintf(key, sizeof(key), "join/%ld", q);
                int exists = 0;
                st = mc_store_check(c->store, key, &exists);
                if (st == MC_OK && exists)
                    st = mc_store_get(c->store, key, 1000, &nonce,
                                      sizeof(nonce), &len);
                if (st != MC_OK) break;
                if (len != sizeof(nonce)) nonce = 0;
            }
            seen++;
            MC_LOG(MC_LOG_INFO,
                   "rank %d: join request %lld: slot '%s'%s", c->rank,
                   (long long)seen, val,
                   nonce ? "" : " (already served or withdrawn)");
            pthread_mutex_lock(&c->jlock);
            c->jw_seen = seen;
            if (*end == '\0' && q >= 0 && q < c->size) c->jw_nonce[q] = nonce;
            if (nonce) __atomic_store_n(&c->jw_any, 1, __ATOMIC_RELEASE);
            pthread_mutex_unlock(&c->jlock);
        }
        pthread_mutex_lock(&c->jlock);
        if (st != MC_OK && !c->jw_logged) {
            c->jw_logged = 1;
            MC_LOG(MC_LOG_WARN,
                   "rank %d: reading join requests from the store failed: "
                   "%s (logged once; retrying)",
                   c->rank, mc_last_error());
        }
    }
    pthread_mutex_unlock(&c->jlock);
    return NULL;
}

/* etcd's watch saw the joiners' registrations change: look now. */
static void join_wake(void *arg)
{
    mc_comm_t *c = arg;
    pthread_mutex_lock(&c->jlock);
    pthread_cond_signal(&c->jcond);
    pthread_mutex_unlock(&c->jlock);
}

static void join_watch_stop(mc_comm_t *c)
{
    if (!c->jw_started) return;
    pthread_mutex_lock(&c->jlock);
    c->jw_stop = 1;
    pthread_cond_signal(&c->jcond);
    pthread_mutex_unlock(&c->jlock);
    pthread_join(c->jw_thread, NULL);
    c->jw_started = 0;
}

/* Joiner: ask for slot c->rank and wait for the view that admits it. On
 * success the view, seq and incarnations are set from the record. */
static mc_status_t join_request(mc_comm_t *c, int64_t timeout_ms,
                                const mc_comm_config_t *cfg)
{
    uint64_t nonce = 0;
    while (!nonce)
        if (getrandom(&nonce, sizeof(nonce), 0) != sizeof(nonce))
            nonce = ((uint64_t)mc_now_us() << 16) ^ (uint64_t)getpid();
    char key[96], val[32];
    int64_t t_req = mc_now_us();
    mc_emember_t *reg = NULL;
    if (cfg->etcd_endpoints && *cfg->etcd_endpoints) {
        /* etcd: a leased registration the members watch; it goes with
         * the lease if this process dies while it waits */
        char prefix[256];
        em_prefix(c, prefix, sizeof(prefix));
        mc_status_t st = mc_emember_join_register(
            cfg->etcd_endpoints, prefix, c->rank, c->size, nonce,
            cfg->etcd_ttl_s, c->timeout_ms < 5000 ? c->timeout_ms : 5000, &reg);
        if (st != MC_OK) {
            char why[512];
            snprintf(why, sizeof(why), "%s", mc_last_error());
            return mc_err(st,
                          "comm_create: joining as rank %d: cannot register "
                          "in etcd (%s): %s",
                          c->rank, cfg->etcd_endpoints, why);
        }
        MC_LOG(MC_LOG_INFO, "rank %d: asked to join (registered in etcd)",
               c->rank);
    } else {
        snprintf(key, sizeof(key), "join/%d", c->rank);
        MC_CHECK(mc_store_set(c->store, key, &nonce, sizeof(nonce)));
        int64_t id = 0;
        MC_CHECK(mc_store_add(c->store, "joins", 1, &id));
        snprintf(key, sizeof(key), "join/id/%lld", (long long)id);
        snprintf(val, sizeof(val), "%d", c->rank);
        MC_CHECK(mc_store_set(c->store, key, val, strlen(val)));
        MC_LOG(MC_LOG_INFO, "rank %d: asked to join (request %lld)", c->rank,
               (long long)id);
    }

    size_t n = (size_t)c->size;
    size_t cap = sizeof(join_rec_t) + n + n * sizeof(uint64_t);
    uint8_t *rec = malloc(cap);
    if (!rec) {
        mc_emember_stop(reg);
        return mc_err(MC_ERR_NO_MEMORY, "comm_create: out of memory");
    }
    size_t len = 0;
    snprintf(key, sizeof(key), "admit/%d/%016llx", c->rank,
             (unsigned long long)nonce);
    mc_status_t st;
    if (!reg) {
        st = mc_store_get(c->store, key, timeout_ms, rec, cap, &len);
    } else {
        /* in slices: a registration whose lease expired (etcd lost us for
         * longer than the TTL) is gone from the members' view */
        int64_t end = timeout_ms < 0 ? INT64_MAX : mc_now_us() + timeout_ms * 1000;
        for (;;) {
            int64_t left = end == INT64_MAX ? 200 : (end - mc_now_us()) / 1000;
            st = mc_store_get(c->store, key, left < 200 ? (left > 0 ? left : 0) : 200,
                              rec, cap, &len);
            if (st != MC_ERR_TIMEOUT || mc_now_us() >= end) break;
            if (mc_emember_lost(reg)) {
                st = mc_err(MC_ERR_TIMEOUT,
                            "comm_create: joining as rank %d: the etcd lease "
                            "of the join registration expired",
                            c->rank);
                break;
            }
        }
        mc_emember_stop(reg); /* admitted or not: the request goes */
        reg = NULL;
    }
    if (st != MC_OK) {
        free(rec);
        /* withdraw (unless a newer process already replaced the request) */
        uint8_t zero[8] = {0}, cur[8];
        size_t cl = 0;
        snprintf(key, sizeof(key), "join/%d", c->rank);
        if (!(cfg->etcd_endpoints && *cfg->etcd_endpoints))
            mc_store_compare_set(c->store, key, &nonce, 8, zero, 8, cur,
                                 sizeof(cur), &cl);
        if (st == MC_ERR_TIMEOUT)
            return mc_err(MC_ERR_TIMEOUT,
                          "comm_create: joining as rank %d: not admitted "
                          "within %lld ms (members admit joiners after an "
                          "operation, and only into a slot that is not "
                          "active: is the slot's old process still a "
                          "member, or does the group run no collectives?)",
                          c->rank, (long long)timeout_ms);
        return st;
    }
    join_rec_t h;
    memcpy(&h, rec, sizeof(h));
    const uint8_t *act = rec + sizeof(h) + n * 8;
    if (len != cap || h.magic != JOIN_REC_MAGIC || h.size != (uint32_t)n ||
        !act[c->rank] || h.epoch < 2) {
        free(rec);
        return mc_err(MC_ERR_PROTOCOL,
                      "comm_create: joining as rank %d: malformed admission "
                      "record (%zu bytes; size %u, expected %zu)",
                      c->rank, len, h.size, n);
    }
    if (h.uid != c->uid) {
        free(rec);
        return mc_err(MC_ERR_PROTOCOL,
                      "comm_create: joining as rank %d: the admitting view "
                      "belongs to another communicator instance",
                      c->rank);
    }
    c->epoch = h.epoch;
    c->view_start = h.start;
    c->exec_seq = c->next_seq = h.start;
    int k = 0, nj = 0;
    for (int p = 0; p < c->size; p++) {
        uint64_t inc;
        memcpy(&inc, rec + sizeof(h) + (size_t)p * 8, 8);
        c->active[p] = act[p] ? 1 : 0;
        c->vof[p] = -1;
        c->inc[p] = c->active[p] ? inc : 0;
        if (c->active[p]) {
            c->vof[p] = k;
            c->vslots[k++] = p;
            if (inc == h.epoch) c->joined_last[nj++] = p;
        }
    }
    c->nactive = k;
    c->njoined_last = nj;
    free(rec);
    MC_LOG(MC_LOG_WARN,
           "rank %d: admitted in view epoch %llu (%d of %d ranks active), "
           "first seq %llu, %.1f ms after the request",
           c->rank, (unsigned long long)c->epoch, k, c->size,
           (unsigned long long)c->view_start,
           (double)(mc_now_us() - t_req) / 1000.0);
    return MC_OK;
}

/* MOONCAKE_EPOCH_START: the first view's epoch (default 1; a testing
 * knob, shared by every rank). Not a multiple of 65536: the signal words
 * hold the epoch's low 16 bits, and (epoch, seq 0) would then be the word
 * 0, "no word" (a re-run of the very first op across the wrap would hit
 * the same; the tests that use the knob start with ops nobody is killed
 * in). */
static uint64_t epoch_start(void)
{
    int64_t e = mc_env_int("MOONCAKE_EPOCH_START", 1);
    if (e < 1 || (e & 0xffff) == 0) {
        if (e != 1)
            MC_LOG(MC_LOG_WARN,
                   "ignoring MOONCAKE_EPOCH_START=%lld: not >= 1, or a "
                   "multiple of 65536",
                   (long long)e);
        return 1;
    }
    return (uint64_t)e;
}

/* Settings every rank must share: they choose the algorithms and the final
 * barrier, so ranks that differ would wait for each other's frames until
 * the op timeout. "NAME=value;" pairs, compared at creation. */
static void shared_settings(const mc_comm_t *c, char *out, size_t cap)
{
    const mc_tune_t *t = &c->tune;
    snprintf(out, cap,
             "MOONCAKE_FT=%d;MOONCAKE_FT_SIGNALS=%d;MOONCAKE_FT_PAIR=%d;"
             "MOONCAKE_FT_ENTRY=%d;MOONCAKE_SLOT_MAX=%zu;"
             "MOONCAKE_SLOT_SPLIT_MIN=%zu;"
             "MOONCAKE_CHUNK_BYTES=%zu;"
             "MOONCAKE_ALLREDUCE_SMALL_MAX=%zu;MOONCAKE_BCAST_SMALL_MAX=%zu;"
             "MOONCAKE_SHM_STAGE_MIN=%zu;MOONCAKE_SHM_STAGE_MAX=%zu;"
             "MOONCAKE_ALGO_ALLREDUCE=%s;MOONCAKE_ALGO_BROADCAST=%s;"
             "MOONCAKE_ALGO_REDUCE=%s;MOONCAKE_ALGO_REDUCE_SCATTER=%s;"
             "MOONCAKE_EPOCH_START=%llu;",
             c->ft, c->ft && c->ft_signals,
             c->ft && c->ft_pair, c->ft && c->ft_entry, c->slot_max,
             c->slot_split_min,
             t->chunk_bytes,
             t->allreduce_small_max, t->bcast_small_max, t->stage_min,
             t->stage_max, t->algo_allreduce, t->algo_broadcast,
             t->algo_reduce, t->algo_reduce_scatter,
             (unsigned long long)epoch_start());
}

/* The first pair of `mine` whose value differs in `theirs`, as an error of
 * comm_create naming both values. */
static mc_status_t settings_check(int rank, int peer, const char *mine,
                                  const char *theirs)
{
    const char *a = mine, *b = theirs;
    while (*a) {
        size_t la = strcspn(a, ";"), lb = strcspn(b, ";");
        if (la != lb || memcmp(a, b, la) != 0) {
            size_t ln = strcspn(a, "=");
            const char *vb = memchr(b, '=', lb);
            return mc_err(MC_ERR_INVALID_ARG,
                          "comm_create: rank %d has %.*s, rank %d has %.*s=%.*s:"
                          " this setting must be the same on every rank",
                          rank, (int)la, a, peer, (int)ln, a,
                          vb ? (int)(lb - (size_t)(vb + 1 - b)) : 0,
                          vb ? vb + 1 : "");
        }
        a += la + (a[la] == ';');
        b += lb + (b[lb] == ';');
    }
    return MC_OK;
}

/* Creation, once every shm peer's slots were mapped (slot_map_peer): every
 * rank of this host must hold every other's, or their choices of
 * algorithm differ (mc_cx_slot_usable) and each op waits for words or
 * frames the others never send, until the op timeout. Each rank says
 * whether it holds its own region and every shm peer's ("slotok/<rank>");
 * one "no" from any of them and each drops the slots for good: its
 * region's record says "none" from then on, so that a joiner, which maps
 * the members' regions, drops them too. At a joiner's admission there is
 * no such round: a joiner that cannot map a member's region fails its
 * creation, and a member that cannot map the joiner's counts it as failed
 * (admit_peer); either way the group goes on without the joiner.
 * MOONCAKE_FAULT_INJECT=slot.map:<n>:fail fails a mapping. */
static mc_status_t slot_agree(mc_comm_t *c, mc_store_h ps, int64_t deadline)
{
    char key[64];
    uint8_t mine = c->slot_own != NULL; /* then slot_map is there too */
    for (int p = 0; p < c->size && mine; p++)
        if (p != c->rank && c->active[p] && c->peer_tl[p] == TL_SHM &&
            !c->slot_map[p])
            mine = 0;
    uint8_t all = mine;
    snprintf(key, sizeof(key), "slotok/%d", c->rank);
    mc_status_t st = mc_store_set(ps, key, &mine, 1);
    if (st < 0) return st;
    int bad = -1;
    for (int p = 0; p < c->size; p++) {
        if (p == c->rank || !c->active[p] || c->peer_tl[p] != TL_SHM)
            continue;
        uint8_t ok = 0;
        size_t len = 0;
        int64_t left = (deadline - mc_now_us()) / 1000;
        snprintf(key, sizeof(key), "slotok/%d", p);
        st = mc_store_get(ps, key, left > 0 ? left : 0, &ok, 1, &len);
        if (st == MC_ERR_TIMEOUT)
            return mc_err(MC_ERR_TIMEOUT,
                          "comm_create: rank %d did not say within the init "
                          "timeout whether it mapped the shared slots",
                          p);
        if (st < 0) return st;
        if (len != 1 || !ok) {
            all = 0;
            if (bad < 0) bad = p;
        }
    }
    if (all || !c->slot_own) return MC_OK;
    MC_LOG(MC_LOG_WARN,
           "rank %d: no shared slots: rank %d could not map every region of "
           "this host; small ops take the usual algorithms and the final "
           "barrier",
           c->rank, bad >= 0 ? bad : c->rank);
    c->slot_own = NULL;
    for (int p = 0; p < c->size; p++) c->slot_map[p] = NULL;
    mc_stage_info_t none;
    memset(&none, 0, sizeof(none));
    snprintf(key, sizeof(key), "slot/%d", c->rank);
    return mc_store_set(ps, key, &none, sizeof(none));
}

mc_status_t mc_comm_create(int rank, int size, mc_store_h store,
                           const mc_comm_config_t *ucfg, mc_comm_h *comm_p)
{
    if (!comm_p) return mc_err(MC_ERR_INVALID_ARG, "comm_create: comm_p NULL");
    if (size <= 0 || size > 65536)
        return mc_err(MC_ERR_INVALID_ARG,
                      "comm_create: size %d out of range [1, 65536]", size);
    if (!store) return mc_err(MC_ERR_INVALID_ARG, "comm_create: store is NULL");
    mc_comm_config_t cfg;
    mc_comm_config_init(&cfg);
    if (ucfg) {
        if (ucfg->size < sizeof(cfg))
            return mc_err(MC_ERR_INVALID_ARG,
                          "comm_create: config not initialised with "
                          "mc_comm_config_init");
        cfg = *ucfg;
    }
    /* slots: size initial members plus reserved ones up to max_size */
    int ninit = size;
    if (cfg.max_size != 0 && (cfg.max_size < size || cfg.max_size > 65536))
        return mc_err(MC_ERR_INVALID_ARG,
                      "comm_create: max_size %d must be 0 or in [size %d, "
                      "65536]",
                      cfg.max_size, size);
    if (cfg.max_size > size) size = cfg.max_size;
    if (rank < 0 || rank >= (cfg.join ? size : ninit))
        return mc_err(MC_ERR_INVALID_ARG,
                      "comm_create: rank %d out of range [0, %d)%s", rank,
                      cfg.join ? size : ninit,
                      cfg.join || size == ninit
                          ? ""
                          : " (slots from size to max_size are taken by "
                            "joiners only)");
    if (cfg.join && (!cfg.ft || size < 2))
        return mc_err(MC_ERR_INVALID_ARG,
                      "comm_create: join needs fault tolerance on "
                      "(MOONCAKE_FT=1) and at least 2 slots");
    if (!cfg.name || !*cfg.name || strlen(cfg.name) >= 100)
        return mc_err(MC_ERR_INVALID_ARG, "comm_create: invalid config name");
    if ((unsigned)cfg.transport > MC_TRANSPORT_SHM)
        return mc_err(MC_ERR_INVALID_ARG, "comm_create: invalid transport %d",
                      (int)cfg.transport);
    /* past what microseconds on the monotonic clock can hold (torch's
     * timedelta.max is about 8.6e16 ms): no limit, not an overflow into
     * "already expired" */
    if (cfg.timeout_ms > MC_TIMEOUT_MAX_MS) cfg.timeout_ms = -1;
    if (cfg.init_timeout_ms > MC_TIMEOUT_MAX_MS) cfg.init_timeout_ms = -1;

    mc_status_t st = MC_OK;
    mc_store_h ps = NULL;
    char *hosts = NULL;
    uint8_t *mask = NULL;
    mc_comm_t *c = calloc(1, sizeof(*c));
    if (!c) return mc_err(MC_ERR_NO_MEMORY, "comm_create: out of memory");
    c->rank = rank;
    c->size = size;
    c->tkind = cfg.transport;
    c->tl_kind[0] = c->tl_kind[1] = -1;
    c->join_poll_ms = mc_env_int("MOONCAKE_JOIN_POLL_MS", 100);
    if (c->join_poll_ms < 1) c->join_poll_ms = 1;
    snprintf(c->name, sizeof(c->name), "%s", cfg.name);
    c->timeout_ms = cfg.timeout_ms;
    c->ft = cfg.ft != 0;
    c->auto_recover = cfg.auto_recover != 0;
    c->admit_auto = cfg.admit_auto != 0;
    tune_init(&c->tune);
    pthread_mutex_init(&c->plock, NULL);
    pthread_mutex_init(&c->qlock, NULL);
    pthread_condattr_t qa;
    pthread_condattr_init(&qa);
    pthread_condattr_setclock(&qa, CLOCK_MONOTONIC); /* progress_thread_nap */
    pthread_cond_init(&c->qcond, &qa);
    pthread_condattr_destroy(&qa);
    pthread_mutex_init(&c->exec_lock, NULL);
    pthread_mutex_init(&c->dlock, NULL);
    pthread_cond_init(&c->dcond, NULL);
    pthread_cond_init(&c->cbcond, NULL);
    pthread_mutex_init(&c->elock, NULL);
    pthread_mutex_init(&c->jlock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->jcond, &ca);
    pthread_condattr_destroy(&ca);
    c->unexp_max =
        (size_t)mc_env_int("MOONCAKE_P2P_UNEXPECTED_MAX", (int64_t)1 << 30);
    c->rndv_min = (size_t)mc_env_int("MOONCAKE_P2P_RNDV_MIN", 64 << 10);
    c->rndv_us = mc_env_int("MOONCAKE_P2P_RNDV_US", 1000);
    c->discard_len = 1 << 16;
    c->async_grace_us = mc_env_int("MOONCAKE_ASYNC_GRACE_US", 50);
    c->ft_signals = mc_env_int("MOONCAKE_FT_SIGNALS", 1) != 0;
    c->ft_pair = mc_env_int("MOONCAKE_FT_PAIR", 1) != 0;
    c->ft_entry = mc_env_int("MOONCAKE_FT_ENTRY", 1) != 0;
    c->left_fanout = (int)mc_env_int("MOONCAKE_FT_LEFT_FANOUT", -1);
    {
        int64_t sm = mc_env_int("MOONCAKE_SLOT_MAX", 512 << 10);
        c->slot_max = sm > 0 ? ((size_t)sm + 63) / 64 * 64 : 0;
        /* the region (header, SLOT_DATA_OFF, two data and two result
         * slots) rounds up to a power of two: the cap keeps it within
         * 16 MiB */
        if (c->slot_max > SLOT_MAX_CAP) c->slot_max = SLOT_MAX_CAP;
        int64_t sp = mc_env_int("MOONCAKE_SLOT_SPLIT_MIN", 48 << 10);
        c->slot_split_min = sp > 0 ? (size_t)sp : 0;
    }
    c->discard = malloc(c->discard_len);
    c->peer_tl = malloc((size_t)size);
    c->peer_dead = calloc((size_t)size, 1);
    c->p2p_dead = calloc((size_t)size, 1);
    c->p2p_eof = calloc((size_t)size, 1);
    c->abort_out =
        calloc((size_t)size * MC_NUM_CHANNELS, sizeof(*c->abort_out));
    c->left_out = calloc((size_t)size, sizeof(*c->left_out));
    c->left_epoch = calloc((size_t)size, sizeof(uint64_t));
    c->left_seq = calloc((size_t)size, sizeof(uint64_t));
    c->fin_epoch = calloc((size_t)size, sizeof(uint64_t));
    c->fin_seq = calloc((size_t)size, sizeof(uint64_t));
    c->left_wait = calloc((size_t)size, 1);
    c->p2p_sending = calloc((size_t)size, sizeof(uint32_t));
    c->p2p_rest = calloc((size_t)size, sizeof(uint64_t));
    c->abort_seq = malloc(sizeof(uint64_t) * (size_t)size);
    c->abort_why = calloc((size_t)size, sizeof(mc_status_t));
    c->abort_msg = calloc((size_t)size, sizeof(*c->abort_msg));
    for (int ch = 0; ch < MC_NUM_CHANNELS; ch++)
        c->in[ch] = calloc((size_t)size, sizeof(mc_in_t));
    hosts = calloc((size_t)size, MC_HOST_MAX);
    mask = calloc((size_t)size, 1);
    c->active = calloc((size_t)size, 1);
    c->op_active = calloc((size_t)size, 1);
    c->vslots = calloc((size_t)size, sizeof(int));
    c->vof = calloc((size_t)size, sizeof(int));
    c->failed_last = calloc((size_t)size, sizeof(int));
    c->att_active = calloc((size_t)size, 1);
    c->suspect = calloc((size_t)size, 1);
    c->nv_active = calloc((size_t)size, 1);
    c->ag_tmp = calloc((size_t)size, 1);
    c->rep_epoch = calloc((size_t)size, sizeof(uint64_t));
    c->rep_coord = calloc((size_t)size, sizeof(int));
    c->rep_last = calloc((size_t)size, sizeof(int64_t));
    c->sent_view = calloc((size_t)size, sizeof(uint64_t));
    c->inc = calloc((size_t)size, sizeof(uint64_t));
    c->joined_last = calloc((size_t)size, sizeof(int));
    c->rep_admit = calloc(2 * (size_t)size, 1);
    c->rep_entered = c->rep_admit ? c->rep_admit + size : NULL;
    c->jw_nonce = calloc((size_t)size, sizeof(uint64_t));
    c->jw_etcd = calloc(2 * (size_t)size, sizeof(uint64_t));
    c->jw_used = c->jw_etcd ? c->jw_etcd + size : NULL;
    c->ctrl_len = sizeof(mc_ctrl_t) + 5 * (size_t)size;
    if (c->ft && size > 4096) {
        MC_LOG(MC_LOG_WARN,
               "rank %d: fault tolerance supports up to 4096 "
               "ranks; turning it off for %d",
               rank, size);
        c->ft = 0;
    }
    if (c->ft) c->rep_maps = calloc((size_t)size * 2, (size_t)size);
    if (c->ft) {
        c->rep_acc_maps = calloc((size_t)size * 2, (size_t)size);
        c->rep_rno = calloc((size_t)size, sizeof(uint32_t));
        c->rep_acc_from = calloc((size_t)size, sizeof(int32_t));
        c->rep_acc_start = calloc((size_t)size, sizeof(uint64_t));
        c->prop_rno = calloc((size_t)size, sizeof(uint32_t));
        c->dead_us = calloc((size_t)size, sizeof(int64_t));
        c->acc_set = calloc(5, (size_t)size);
        c->acc_q = c->acc_set ? c->acc_set + size : NULL;
        c->prop_set = c->acc_set ? c->acc_set + 2 * (size_t)size : NULL;
        c->prop_q = c->acc_set ? c->acc_set + 3 * (size_t)size : NULL;
        c->prop_ok = c->acc_set ? c->acc_set + 4 * (size_t)size : NULL;
        c->acc_from = -1;
        if (!c->rep_acc_maps || !c->rep_rno || !c->rep_acc_from ||
            !c->rep_acc_start || !c->prop_rno ||
            !c->dead_us ||
            !c->acc_set) {
            free(c->rep_maps);
            c->rep_maps = NULL; /* reported below */
        }
    }
    if (!c->active || !c->op_active || !c->vslots || !c->vof ||
        !c->failed_last || !c->att_active || !c->suspect || !c->nv_active ||
        !c->ag_tmp || !c->rep_epoch || !c->rep_coord || !c->rep_last ||
        !c->sent_view || !c->inc || !c->joined_last || !c->rep_admit ||
        !c->jw_nonce || !c->jw_etcd || (c->ft && !c->rep_maps)) {
        st = mc_err(MC_ERR_NO_MEMORY, "comm_create: out of memory");
        goto err_free;
    }
    /* the first view's epoch: 1; tests start near 65536 to cross the
     * 16-bit wrap of the epoch in the shared slots' words and keys */
    c->epoch = epoch_start();
    c->nactive = ninit;
    for (int p = 0; p < size; p++) {
        c->active[p] = p < ninit;
        c->vslots[p] = p;
        c->vof[p] = p < ninit ? p : -1;
    }
    if (!c->discard || !c->peer_tl || !c->peer_dead || !c->p2p_dead ||
        !c->p2p_eof ||
        !c->abort_out || !c->abort_seq || !c->abort_why || !c->abort_msg ||
        !c->left_out || !c->left_epoch || !c->left_seq || !c->left_wait ||
        !c->fin_epoch || !c->fin_seq ||
        !c->p2p_sending || !c->p2p_rest ||
        !c->in[0] || !c->in[1] || !hosts || !mask) {
        st = mc_err(MC_ERR_NO_MEMORY, "comm_create: out of memory");
        goto err_free;
    }
    for (int p = 0; p < size; p++) {
        c->abort_seq[p] = UINT64_MAX;
        c->peer_tl[p] = -1;
    }

    if (size > 1) {
        int64_t deadline = mc_deadline_us(cfg.init_timeout_ms);
        MC_CHECK_GOTO(mc_store_prefix_create(store, c->name, &ps), st,
                      err_free);
        c->store = ps;
        char key[64];
        /* which peers share this host */
        host_id(c->host, sizeof(c->host));
        char mine[1024], theirs[1024];
        shared_settings(c, mine, sizeof(mine));
        snprintf(key, sizeof(key), "settings/%d", rank);
        MC_CHECK_GOTO(mc_store_set(ps, key, mine, strlen(mine) + 1), st,
                      err_free);
        /* our shared slots (mc_cx_slot_run), described before the
         * host record: a peer that reads that finds this too; rid 0 says
         * "none", the same to every reader */
        {
            mc_stage_info_t si;
            memset(&si, 0, sizeof(si));
            if (c->slot_max && size >= 3) {
                char serr[256];
                c->slots = mc_stage_new_named(size, "mooncake-slots");
                c->slot_map = calloc((size_t)size, sizeof(*c->slot_map));
                c->slot_vs = calloc((size_t)size, sizeof(*c->slot_vs));
                if (c->slots && c->slot_map && c->slot_vs)
                    c->slot_own = mc_stage_own(c->slots, 1,
                                               slot_region_bytes(c), &si, serr,
                                               sizeof(serr));
                if (!c->slot_own) {
                    memset(&si, 0, sizeof(si));
                    MC_LOG(MC_LOG_WARN,
                           "rank %d: no shared slots (%s); small allreduces "
                           "take recursive doubling",
                           rank, c->slots ? serr : "out of memory");
                }
            }
            snprintf(key, sizeof(key), "slot/%d", rank);
            MC_CHECK_GOTO(mc_store_set(ps, key, &si, sizeof(si)), st, err_free);
        }
        snprintf(key, sizeof(key), "host/%d", rank);
        MC_CHECK_GOTO(mc_store_set(ps, key, c->host, strlen(c->host) + 1), st,
                      err_free);
        if (cfg.join) {
            size_t len;
            MC_CHECK_GOTO(mc_store_get(ps, "uid", cfg.init_timeout_ms, &c->uid,
                                       sizeof(c->uid), &len),
                          st, err_free);
            /* heartbeat address first (members read it when they admit us),
             * then the request; the transports follow once the admitting
             * view names the incarnation */
            for (int p = 0; p < size; p++)
                mask[p] = p != rank;
            mc_live_params_t lp = {.rank = rank,
                                   .size = size,
                                   .store = ps,
                                   .uid = c->uid,
                                   .peers = mask,
                                   .connect_timeout_ms = cfg.init_timeout_ms};
            c->live_tmp = calloc((size_t)size, 1);
            if (!c->live_tmp) {
                st = mc_err(MC_ERR_NO_MEMORY, "comm_create: out of memory");
                goto err_free;
            }
            MC_CHECK_GOTO(mc_live_create(&lp, &c->live), st, err_free);
            MC_CHECK_GOTO(join_request(c, cfg.init_timeout_ms, &cfg), st,
                          err_free);
        } else if (rank == 0) {
            /* communicator id, so segments and connections of different
             * communicators never mix */
            uint64_t uid = 0;
            if (getrandom(&uid, sizeof(uid), 0) != sizeof(uid))
                uid = (uint64_t)mc_now_us() ^ ((uint64_t)getpid() << 32);
            c->uid = uid;
            MC_CHECK_GOTO(mc_store_set(ps, "uid", &uid, sizeof(uid)), st,
                          err_free);
        } else {
            size_t len;
            MC_CHECK_GOTO(mc_store_get(ps, "uid", cfg.init_timeout_ms, &c->uid,
                                       sizeof(c->uid), &len),
                          st, err_free);
        }
        int local = 1;
        for (int p = 0; p < size; p++) {
            if (p == rank || !c->active[p]) continue;
            size_t len = 0;
            int64_t left = (deadline - mc_now_us()) / 1000;
            snprintf(key, sizeof(key), "host/%d", p);
            st = mc_store_get(ps, key, left > 0 ? left : 0,
                              hosts + (size_t)p * MC_HOST_MAX, MC_HOST_MAX - 1,
                              &len);
            if (st == MC_ERR_TIMEOUT) {
                st = mc_err(MC_ERR_TIMEOUT,
                            "comm_create: rank %d did not join within %lld ms",
                            p, (long long)cfg.init_timeout_ms);
            }
            if (st < 0) goto err_free;
            /* set before its host record: there by now */
            snprintf(key, sizeof(key), "settings/%d", p);
            st = mc_store_get(ps, key, 1000, theirs, sizeof(theirs) - 1, &len);
            if (st < 0) goto err_free;
            theirs[len < sizeof(theirs) ? len : sizeof(theirs) - 1] = '\0';
            if ((st = settings_check(rank, p, mine, theirs)) < 0) goto err_free;
            int same = !strcmp(hosts + (size_t)p * MC_HOST_MAX, c->host);
            local += same;
            if (cfg.transport == MC_TRANSPORT_TCP)
                c->peer_tl[p] = TL_TCP;
            else if (cfg.transport == MC_TRANSPORT_SHM) {
                if (!same) {
                    st = mc_err(MC_ERR_INVALID_ARG,
                                "comm_create: transport shm requested but "
                                "rank %d is on another host",
                                p);
                    goto err_free;
                }
                c->peer_tl[p] = TL_SHM;
            } else {
                c->peer_tl[p] = same ? TL_SHM : TL_TCP;
            }
            /* its shared slots, while it is there: it published them
             * before its host record. A joiner that cannot map a member's
             * region would wait for frames where the members use the
             * slots: it fails (the members then find it gone, a failed
             * joiner). At creation slot_agree settles it. */
            if (c->peer_tl[p] == TL_SHM) {
                char swhy[256];
                if (slot_map_peer(c, p, swhy, sizeof(swhy)) < 0 && cfg.join) {
                    st = mc_err(MC_ERR_IO,
                                "comm_create (join): cannot map rank %d's "
                                "shared slots (%s); the members run small "
                                "ops through them, so this process cannot "
                                "take part (MOONCAKE_SLOT_MAX=0 on every "
                                "rank turns them off)",
                                p, swhy);
                    goto err_free;
                }
            }
        }
        c->oversub = local > local_cpus();
        /* on what every rank shares, not on whether its own region
         * could be had: a rank without one says "no" */
        if (c->slot_max && size >= 3 && !cfg.join)
            MC_CHECK_GOTO(slot_agree(c, ps, deadline), st, err_free);
        /* bring up each transport that some peer needs */
        int slot_of[2] = {-1, -1};
        for (int t = 0; t < 2; t++) {
            int any = 0;
            for (int p = 0; p < size; p++) {
                mask[p] = p != rank && c->peer_tl[p] == t;
                any |= mask[p];
            }
            if (!any) continue;
            int64_t left = (deadline - mc_now_us()) / 1000;
            mc_tl_params_t params = {.rank = rank,
                                     .size = size,
                                     .store = ps,
                                     .uid = c->uid,
                                     .peers = mask,
                                     .incarnation = c->inc[rank],
                                     .peer_incarnation = c->inc,
                                     .timeout_ms = left > 0 ? left : 0};
            const mc_tl_ops_t *ops = mc_transports[t];
            mc_tl_t *tl = NULL;
            MC_CHECK_GOTO(ops->create(&params, &tl), st, err_free);
            c->tl[c->ntl] = tl;
            c->tlops[c->ntl] = ops;
            slot_of[t] = c->ntl++;
            c->tl_kind[t] = (int8_t)slot_of[t];
            MC_CHECK_GOTO(ops->connect(tl), st, err_free);
        }
        for (int p = 0; p < size; p++)
            if (p != rank && c->peer_tl[p] >= 0)
                c->peer_tl[p] = (int8_t)slot_of[c->peer_tl[p]];
        if (c->ft) {
            /* heartbeats find silent peers (stopped, hung, cut off) */
            int64_t left = (deadline - mc_now_us()) / 1000;
            if (!c->live) {
                for (int p = 0; p < size; p++)
                    mask[p] = p != rank && c->active[p];
                mc_live_params_t lp = {.rank = rank,
                                       .size = size,
                                       .store = ps,
                                       .uid = c->uid,
                                       .peers = mask,
                                       .connect_timeout_ms = left > 0 ? left
                                                                      : 0};
                c->live_tmp = calloc((size_t)size, 1);
                if (!c->live_tmp) {
                    st = mc_err(MC_ERR_NO_MEMORY, "comm_create: out of memory");
                    goto err_free;
                }
                MC_CHECK_GOTO(mc_live_create(&lp, &c->live), st, err_free);
            } else {
                /* joiner: watch the members of the admitting view only */
                for (int p = 0; p < size; p++)
                    if (!c->active[p]) mc_live_forget(c->live, p);
            }
            MC_CHECK_GOTO(mc_live_connect(c->live), st, err_free);
        }
        if (!c->ft) {
            mc_store_destroy(ps);
            c->store = NULL;
        }
        ps = NULL; /* c->store owns it */
    }
    free(hosts);
    hosts = NULL;
    free(mask);
    mask = NULL;
    /* every stream always has a header receive posted */
    pthread_mutex_lock(&c->plock);
    for (int ch = 0; ch < MC_NUM_CHANNELS; ch++) {
        for (int p = 0; p < size; p++) {
            mc_in_t *in = &c->in[ch][p];
            in->ev.comm = c;
            in->ev.fn = in_event;
            in->peer = p;
            in->ch = ch;
            if (p == rank) continue;
            if (c->active[p]) {
                in_post_hdr(c, in);
            } else { /* a hole: a reserved slot, or a joiner's failed one */
                in->state = IN_DEAD;
                c->peer_dead[p] = c->p2p_dead[p] = 1;
            }
        }
    }
    pthread_mutex_unlock(&c->plock);
    if (c->ft && cfg.etcd_endpoints && *cfg.etcd_endpoints) {
        char prefix[256];
        em_prefix(c, prefix, sizeof(prefix));
        c->em_tmp = calloc((size_t)size, 1);
        st = c->em_tmp ? mc_emember_start(cfg.etcd_endpoints, prefix, rank,
                                          size, c->inc[rank], cfg.etcd_ttl_s,
                                          c->timeout_ms < 5000 ? c->timeout_ms
                                                               : 5000,
                                          &c->em)
                       : MC_ERR_NO_MEMORY;
        if (st == MC_OK)
            st = mc_emember_view_init(c->em, c->epoch, c->view_start,
                                      c->active);
        if (st == MC_OK) mc_emember_on_join(c->em, join_wake, c);
        if (st != MC_OK) {
            char why[768];
            snprintf(why, sizeof(why), "%s", mc_last_error());
            mc_err(st,
                   "comm_create: rank %d: etcd membership (%s) could not "
                   "start: %s",
                   rank, cfg.etcd_endpoints, why);
            goto err_free;
        }
    }
    if (c->ft && c->store) {
        join_set_coord(c);
        if (pthread_create(&c->jw_thread, NULL, join_watch_main, c) == 0)
            c->jw_started = 1;
        else
            MC_LOG(MC_LOG_WARN, "rank %d: no join watcher thread: joiners "
                                "cannot be admitted",
                   rank);
    }
    MC_LOG(MC_LOG_INFO, "rank %d/%d: communicator '%s' ready", rank, size,
           c->name);
    *comm_p = c;
    return MC_OK;

err_free:
    free(hosts);
    free(mask);
    {
        char msg[1024];
        snprintf(msg, sizeof(msg), "%s", mc_last_error());
        comm_free(c);
        mc_err(st, "%s", msg);
    }
    return st;
}

void mc_comm_destroy(mc_comm_h c)
{
    if (!c) return;
    pthread_mutex_lock(&c->qlock);
    /* a running attempt ends at its next wait (cx_wait_until), the queue
     * stops (run_queue) and what is left in it fails below */
    __atomic_store_n(&c->stopping, 1, __ATOMIC_SEQ_CST);
    pthread_cond_broadcast(&c->qcond);
    pthread_mutex_unlock(&c->qlock);
    if (c->thread_started) pthread_join(c->thread, NULL);
    /* operations that never ran */
    pthread_mutex_lock(&c->qlock);
    mc_request_t *q = c->qhead;
    c->qhead = c->qtail = NULL;
    pthread_mutex_unlock(&c->qlock);
    while (q) {
        mc_request_t *next = q->next;
        req_complete(q, MC_ERR_IO,
                     "communicator destroyed before the "
                     "operation ran");
        q = next;
    }
    pthread_mutex_lock(&c->plock);
    /* give sends already handed to us a bounded chance to leave */
    int64_t until = mc_now_us() + 200000;
    for (;;) {
        int busy = 0;
        for (int i = 0; i < c->size * MC_NUM_CHANNELS; i++) {
            mc_abort_out_t *a = &c->abort_out[i];
            if (a->busy && a->px.status == MC_INPROGRESS) busy = 1;
        }
        ctrl_gc(c);
        if (c->ctrl_out || c->sends) busy = 1;
        if (!busy || mc_now_us() > until) break;
        progress_locked(c);
    }
    while (c->precv_head) {
        mc_request_t *r = c->precv_head;
        c->precv_head = r->next;
        req_complete(r, MC_ERR_IO, "communicator destroyed");
    }
    c->precv_tail = NULL;
    for (int p = 0; p < c->size; p++) {
        mc_in_t *in = &c->in[MC_CH_P2P][p];
        if (in->p2p_req) req_complete(in->p2p_req, MC_ERR_IO, "destroyed");
        in->p2p_req = NULL;
        /* a receive that took a message still arriving */
        mc_unexp_t *u = in->p2p_unexp;
        if (u && u->claimed) {
            mc_request_t *r = u->claimed;
            u->claimed = NULL;
            u->drop = 1; /* unlinked: comm_free frees it */
            req_complete(r, MC_ERR_IO, "recv: communicator destroyed");
        }
    }
    /* sends the peer did not take within the grace above: nothing moves
     * them any more (tl_quiet), and the transports drop them unread */
    while (c->sends) {
        mc_request_t *r = c->sends;
        char msg[128];
        snprintf(msg, sizeof(msg),
                 "send to rank %d: the communicator was destroyed before "
                 "the peer took it",
                 r->peer);
        p2p_send_unlink(c, r);
        req_complete(r, MC_ERR_IO, msg);
    }
    c->tl_quiet = 1;
    /* the progress thread is gone: drop its references (every p2p request
     * has ended above) */
    mc_request_t *watched = c->p2p_watch;
    c->p2p_watch = NULL;
    pthread_mutex_unlock(&c->plock);
    while (watched) {
        mc_request_t *r = watched;
        watched = r->w_next;
        req_release(r);
    }
    /* Threads of the caller's still in mc_request_wait/test here: each
     * leaves once its request ends (failed above, or its attempt ended at
     * a wait; a send still waited for fails now: tl_quiet). Only then may
     * anything go. */
    for (int i = 0; __atomic_load_n(&c->api_calls, __ATOMIC_SEQ_CST); i++) {
        pthread_mutex_lock(&c->dlock);
        pthread_cond_broadcast(&c->dcond);
        pthread_mutex_unlock(&c->dlock);
        if (i == 5000)
            MC_LOG(MC_LOG_WARN,
                   "rank %d: mc_comm_destroy waits for %d thread(s) still "
                   "waiting on this communicator's requests",
                   c->rank, __atomic_load_n(&c->api_calls, __ATOMIC_SEQ_CST));
        usleep(1000);
    }
    /* run the callbacks still queued (requests failed above included) */
    pthread_mutex_lock(&c->dlock);
    c->cb_stopping = 1;
    pthread_cond_broadcast(&c->cbcond);
    int cb_started = c->cb_started;
    int on_cb = cb_started && pthread_equal(pthread_self(), c->cb_thread);
    if (on_cb) c->cb_self_free = 1; /* from a callback: it frees us */
    pthread_mutex_unlock(&c->dlock);
    if (on_cb) {
        pthread_detach(pthread_self());
        return;
    }
    if (cb_started) pthread_join(c->cb_thread, NULL);
    comm_free(c);
}

int mc_comm_rank(mc_comm_h c)
{
    return c ? c->rank : -1;
}
int mc_comm_size(mc_comm_h c)
{
    return c ? c->size : -1;
}

const char *mc_comm_last_error(mc_comm_h c)
{
    return c ? c->last_err : "comm is NULL";
}

const char *mc_comm_peer_transport(mc_comm_h c, int peer)
{
    if (!c || peer < 0 || peer >= c->size) return "invalid";
    if (peer == c->rank) return "self";
    int t = c->peer_tl[peer];
    return t >= 0 ? c->tlops[t]->name : "none";
}

/* ------------------------------------------------------------------------ */
/* Views                                                                    */
/* ------------------------------------------------------------------------ */

/* Adopt `active` as view `epoch` (plock held). Records which ranks left. */
static void view_adopt(mc_comm_t *c, uint64_t epoch, const uint8_t *active)
{
    int nf = 0, n = 0, nj = 0;
    for (int p = 0; p < c->size; p++) {
        if (c->active[p] && !active[p]) c->failed_last[nf++] = p;
        if (!c->active[p] && active[p]) {
            c->joined_last[nj++] = p;
            c->inc[p] = epoch; /* a joiner's incarnation: see transport.h */
        }
        c->active[p] = active[p] ? 1 : 0;
        c->vof[p] = -1;
        if (c->active[p]) {
            c->vof[p] = n;
            c->vslots[n++] = p;
        }
    }
    c->nfailed_last = nf;
    c->njoined_last = nj;
    c->nactive = n;

    for (int i = 0; c->live && i < nf; i++)
        mc_live_forget(c->live, c->failed_last[i]);
    /* receives waiting for a message from a removed rank fail (the fault
     * model: send/recv with an inactive peer fail); one already taking a
     * message is released below */
    for (mc_request_t *prev = NULL, *r = c->precv_head; r;) {
        mc_request_t *next = r->next;
        /* (a dead rank's p2p stream ends on its own, after the messages
         * it still holds: its receives are failed there) */
        int q = r->peer, own_end = q >= 0 && c->peer_dead[q] &&
                                   !c->p2p_eof[q] &&
                                   c->in[MC_CH_P2P][q].state != IN_HAVE_HDR;
        if (q >= 0 && q != c->rank && !active[q] && !own_end) {
            precv_unlink(c, prev, r);
            char msg[128];
            snprintf(msg, sizeof(msg),
                     "recv from rank %d: it was removed from the view "
                     "(epoch %llu)",
                     r->peer, (unsigned long long)epoch);
            req_complete(r, MC_ERR_PEER_FAILED, msg);
        } else {
            prev = r;
        }
        r = next;
    }
    /* and so do sends to it still under way: the transport stops reading
     * their buffers (a stopped rank would hold them forever). A message
     * none of which went leaves unsent; one partly written goes on from
     * the transport's copy, so that a removed process that resumes reads
     * whole messages and then the view that evicts it. (Sends to a rank
     * its transport knows dead fail there, without a copy; one the engine
     * alone counts dead, e.g. after a protocol error, may be alive and
     * not reading.) */
    for (mc_request_t *r = c->sends; r; r = r->s_next) {
        int q = r->peer, t = c->peer_tl[q];
        if (active[q] || t < 0) continue;
        if (c->peer_dead[q] &&
            c->tlops[t]->peer_status(c->tl[t], q) == MC_ERR_PEER_FAILED)
            continue;
        char msg[160];
        snprintf(msg, sizeof(msg),
                 "send to rank %d: it was removed from the view (epoch "
                 "%llu) before it took the message",
                 q, (unsigned long long)epoch);
        int rc = p2p_send_release(c, r, MC_ERR_PEER_FAILED, msg);
        if (rc < 0)
            /* (out of memory for the copy) it waits as before */
            MC_LOG(MC_LOG_WARN,
                   "rank %d: a send to rank %d, removed from the view, "
                   "could not be released (%s): it waits for that rank",
                   c->rank, q, mc_status_str(rc));
    }
    /* Receives already taking a message from a removed rank that is not
     * dead (a dead one's stream ends on its own, p2p_peer_failed): the
     * rest of the message goes to the transport's sink (release_recv)
     * and the stream is read on from there; one whose message arrives in
     * an engine buffer drops that buffer when it is in. */
    for (int q = 0; q < c->size; q++) {
        if (q == c->rank || active[q] || c->peer_dead[q] || c->peer_tl[q] < 0)
            continue;
        mc_in_t *pin = &c->in[MC_CH_P2P][q];
        mc_request_t *rq = pin->p2p_req;
        if (!rq && pin->p2p_unexp) rq = pin->p2p_unexp->claimed;
        if (!rq) continue;
        char msg[160];
        snprintf(msg, sizeof(msg),
                 "recv from rank %d: it was removed from the view (epoch "
                 "%llu) while its message was arriving",
                 q, (unsigned long long)epoch);
        int rc = p2p_recv_release(c, rq, MC_ERR_PEER_FAILED, msg);
        if (rc < 0)
            MC_LOG(MC_LOG_WARN,
                   "rank %d: a receive from rank %d, removed from the "
                   "view, could not be released (%s): it waits for that "
                   "rank",
                   c->rank, q, mc_status_str(rc));
    }
    c->epoch = epoch;
    c->view_changes++;
    c->prop_on = 0;     /* proposals were for the view before */
    c->acc_from = -1;
    if (!c->active[c->rank]) c->evicted = 1;
    for (int i = 0; i < nj && !c->evicted; i++)
        if (c->joined_last[i] != c->rank) admit_peer(c, c->joined_last[i]);
    join_set_coord(c);
    /* ABORT notices and held headers of the old view are void */
    for (int p = 0; p < c->size; p++) {
        c->abort_seq[p] = UINT64_MAX;
        if (p == c->rank) continue;
        mc_in_t *in = &c->in[MC_CH_COLL][p];
        if (in->state == IN_HAVE_HDR && in->hdr.epoch < c->epoch)
            in_discard(c, in);
    }
    char list[256] = "";
    size_t off = 0;
    for (int i = 0; i < nf && off + 16 < sizeof(list); i++)
        off += (size_t)snprintf(list + off, sizeof(list) - off, "%s%d",
                                i ? "," : "", c->failed_last[i]);
    char jl[256] = "";
    off = 0;
    for (int i = 0; i < nj && off + 16 < sizeof(jl); i++)
        off += (size_t)snprintf(jl + off, sizeof(jl) - off, "%s%d",
                                i ? "," : "", c->joined_last[i]);
    MC_LOG(MC_LOG_WARN,
           "rank %d: view epoch %llu adopted: %d of %d ranks active%s%s%s%s%s%s",
           c->rank, (unsigned long long)epoch, n, c->size,
           nf ? ", removed [" : "", list, nf ? "]" : "",
           nj ? ", added [" : "", jl, nj ? "]" : "");
}

static void view_out(mc_comm_t *c, uint64_t epoch, const uint8_t *act,
                     uint64_t *epoch_p, uint8_t *active, int *nactive_p)
{
    int n = 0;
    for (int p = 0; p < c->size; p++)
        n += act[p] != 0;
    if (epoch_p) *epoch_p = epoch;
    if (active) memcpy(active, act, (size_t)c->size);
    if (nactive_p) *nactive_p = n;
}

mc_status_t mc_comm_view(mc_comm_h c, uint64_t *epoch_p, uint8_t *active,
                         int *nactive_p)
{
    CHECK_COMM(c, "mc_comm_view");
    pthread_mutex_lock(&c->plock);
    view_out(c, c->epoch, c->active, epoch_p, active, nactive_p);
    /* a rank fenced on its own evidence (the slots moved on without it, a
     * later view seen elsewhere) may not have adopted the view that
     * removed it: it is out of the group all the same */
    if (c->evicted && c->active[c->rank]) {
        if (active) active[c->rank] = 0;
        if (nactive_p) (*nactive_p)--;
    }
    pthread_mutex_unlock(&c->plock);
    return MC_OK;
}

mc_status_t mc_comm_op_view(mc_comm_h c, uint64_t *epoch_p, uint8_t *active,
                            int *nactive_p)
{
    CHECK_COMM(c, "mc_comm_op_view");
    pthread_mutex_lock(&c->plock);
    int valid = c->op_valid;
    if (valid)
        view_out(c, c->op_epoch, c->op_active, epoch_p, active, nactive_p);
    pthread_mutex_unlock(&c->plock);
    if (!valid)
        return mc_err(MC_ERR_NOT_FOUND,
                      "mc_comm_op_view: no collective has succeeded yet");
    return MC_OK;
}

int mc_comm_failed_ranks(mc_comm_h c, int *out, int cap)
{
    if (!c) return 0;
    pthread_mutex_lock(&c->plock);
    int n = c->nfailed_last;
    for (int i = 0; out && i < n && i < cap; i++)
        out[i] = c->failed_last[i];
    pthread_mutex_unlock(&c->plock);
    return n;
}

int mc_comm_joined_ranks(mc_comm_h c, int *out, int cap)
{
    if (!c) return 0;
    pthread_mutex_lock(&c->plock);
    int n = c->njoined_last;
    for (int i = 0; out && i < n && i < cap; i++)
        out[i] = c->joined_last[i];
    pthread_mutex_unlock(&c->plock);
    return n;
}

uint64_t mc_comm_view_changes(mc_comm_h c)
{
    if (!c) return 0;
    pthread_mutex_lock(&c->plock);
    uint64_t n = c->view_changes;
    pthread_mutex_unlock(&c->plock);
    return n;
}

mc_status_t mc_comm_recover(mc_comm_h c)
{
    CHECK_COMM(c, "mc_comm_recover");
    pthread_mutex_lock(&c->exec_lock);
    pthread_mutex_lock(&c->plock);
    int evicted = c->evicted;
    c->need_recover = 0;
    pthread_mutex_unlock(&c->plock);
    pthread_mutex_unlock(&c->exec_lock);
    if (evicted)
        return comm_err(c, MC_ERR_EVICTED,
                        "mc_comm_recover: rank %d was removed from the group; "
                        "it must rejoin as a new process",
                        c->rank);
    return MC_OK;
}

/* The removed ranks of `next` against the view, as text: "2,5". */
static void shrink_list(const mc_comm_t *c, const uint8_t *next, char *out,
                        size_t cap)
{
    size_t k = 0;
    out[0] = '\0';
    for (int p = 0; p < c->size && k + 16 < cap; p++)
        if (c->active[p] && !next[p])
            k += (size_t)snprintf(out + k, cap - k, "%s%d", k ? "," : "", p);
}

/* Embedded membership: before anyone adopts a shrunk view, the ranks that
 * call mc_comm_shrink agree on it through the bootstrap store. Attempt t
 * of view `epoch` (the first one nobody decided yet):
 * (t counts this rank's calls in the view, failed ones included, so
 * that every rank's k-th call meets the others' k-th):
 *   1. each puts the ranks it removes ("2,5") under
 *      shrink/<epoch>/<t>/<rank>, and reads those of the other members of
 *      the view it asks for (in 100 ms slices, watching for their
 *      failure, up to the op timeout);
 *   2. each then offers a decision with compare_set on
 *      shrink/<epoch>/<t>/decision: "adopt:<its list>" if every list it
 *      read was its own, else "abort"; the first offer stands, and every
 *      rank follows it.
 * "adopt:X" is written only by a rank that saw every member of X's view
 * pass X, so every rank that adopts adopts the same view; a rank whose
 * list differs fails (MC_ERR_MISMATCH) and, if X removes it, is evicted.
 * "abort" (a difference, a rank that did not come in time, a failed one)
 * fails every rank's call with the view left as it was; a rank that comes
 * to an attempt already decided, or sees it decided while it reads,
 * follows the decision at once.
 * On return MC_OK: adopt `next`; *evict_p: adopt `next` (rewritten to the
 * decided view, without this rank) and fail. exec_lock held, plock not. */
static mc_status_t shrink_check(mc_comm_t *c, uint8_t *next, int *evict_p)
{
    *evict_p = 0;
    size_t cap = (size_t)c->size * 12 + 16;
    char *mine = malloc(cap), *theirs = malloc(cap + 8);
    if (!mine || !theirs) {
        free(mine);
        free(theirs);
        return comm_err(c, MC_ERR_NO_MEMORY, "mc_comm_shrink: out of memory");
    }
    pthread_mutex_lock(&c->plock);
    if (c->shrink_epoch != c->epoch) { /* the view moved in run_queue */
        c->shrink_epoch = c->epoch;
        c->shrink_try = 1;
    }
    uint64_t ep = c->epoch;
    uint32_t t = c->shrink_try - 1; /* this call's (shrink_count) */
    shrink_list(c, next, mine, cap);
    pthread_mutex_unlock(&c->plock);
    char key[96], dkey[96];
    snprintf(dkey, sizeof(dkey), "shrink/%llu/%u/decision",
             (unsigned long long)ep, t);
    int decided = 0;
    mc_status_t st = mc_store_check(c->store, dkey, &decided);
    if (st == MC_OK && !decided) {
        snprintf(key, sizeof(key), "shrink/%llu/%u/%d", (unsigned long long)ep,
                 t, c->rank);
        st = mc_store_set(c->store, key, mine, strlen(mine) + 1);
    }
    if (st != MC_OK) {
        st = comm_err(c, st, "mc_comm_shrink: store: %s", mc_last_error());
        free(mine);
        free(theirs);
        return st;
    }
    /* 1. the lists of the others of the view asked for */
    mc_status_t local = decided ? MC_ERR_MISMATCH : MC_OK;
    char why[512] = "";
    int64_t deadline = mc_deadline_us(c->timeout_ms);
    for (int p = 0; p < c->size && local == MC_OK && !decided; p++) {
        if (p == c->rank || !next[p]) continue;
        snprintf(key, sizeof(key), "shrink/%llu/%u/%d",
                 (unsigned long long)ep, t, p);
        size_t len = 0;
        mc_status_t g;
        /* in slices, looking for p's failure in between (nothing else
         * drives progress meanwhile: this thread holds exec_lock) */
        for (;;) {
            int64_t left = (deadline - mc_now_us()) / 1000;
            g = mc_store_get(c->store, key,
                             left > 100 ? 100 : (left > 0 ? left : 0), theirs,
                             cap - 1, &len);
            if (g != MC_ERR_TIMEOUT || mc_now_us() >= deadline) break;
            /* decided meanwhile (a rank saw a difference): follow it */
            if (mc_store_check(c->store, dkey, &decided) == MC_OK && decided)
                break;
            pthread_mutex_lock(&c->plock);
            progress_locked(c);
            live_poll(c, mc_now_us());
            int gone = c->peer_dead[p] || c->p2p_dead[p] || c->suspect[p];
            pthread_mutex_unlock(&c->plock);
            if (gone) {
                g = MC_ERR_PEER_FAILED;
                break;
            }
        }
        if (decided) break;
        if (g == MC_OK) {
            theirs[len < cap ? len : cap - 1] = '\0';
            if (strcmp(theirs, mine) != 0) {
                local = MC_ERR_MISMATCH;
                snprintf(why, sizeof(why),
                         "rank %d removes [%s] but this rank removes [%s]: "
                         "every staying rank must pass the same list",
                         p, theirs, mine);
            }
        } else if (g == MC_ERR_TIMEOUT) {
            local = MC_ERR_TIMEOUT;
            snprintf(why, sizeof(why),
                     "rank %d, which stays in the view this rank asks for, "
                     "did not call it within the operation timeout (%lld ms)",
                     p, (long long)c->timeout_ms);
        } else if (g == MC_ERR_PEER_FAILED) {
            local = MC_ERR_PEER_FAILED;
            snprintf(why, sizeof(why),
                     "rank %d, which stays in the view this rank asks for, "
                     "failed before it called it",
                     p);
        } else {
            local = g;
            snprintf(why, sizeof(why), "store: %.400s", mc_last_error());
        }
    }
    /* 2. the decision: the first offer stands ("abort:<status>:<why>",
     * so that every rank fails with the status and text of the one that
     * gave up) */
    size_t offer_len =
        local == MC_OK
            ? (size_t)snprintf(theirs, cap + 8, "adopt:%s", mine)
            : (size_t)snprintf(theirs, cap + 8, "abort:%d:rank %d: %s",
                               (int)local, c->rank,
                               why[0] ? why : "a different list");
    if (offer_len > cap + 7) offer_len = cap + 7;
    char *offer = strdup(theirs), *cur = theirs;
    size_t cur_len = 0;
    st = offer ? mc_store_compare_set(c->store, dkey, "", 0, offer, offer_len,
                                      cur, cap + 7, &cur_len)
               : MC_ERR_NO_MEMORY;
    free(offer);
    if (st != MC_OK) {
        st = comm_err(c, st, "mc_comm_shrink: store: %s", mc_last_error());
    } else {
        cur[cur_len < cap + 7 ? cur_len : cap + 6] = '\0';
        if (strncmp(cur, "adopt:", 6) == 0 && strcmp(cur + 6, mine) == 0) {
            st = MC_OK; /* this rank's list won (its own reads aside) */
        } else if (strncmp(cur, "adopt:", 6) == 0) {
            /* the others' list won: its view does not hold this rank
             * (they read every member's list); does it remove us? */
            uint8_t *x = malloc((size_t)c->size);
            int self = 0;
            if (x) {
                pthread_mutex_lock(&c->plock);
                memcpy(x, c->active, (size_t)c->size);
                pthread_mutex_unlock(&c->plock);
                for (char *q = cur + 6; *q;) {
                    char *end;
                    long v = strtol(q, &end, 10);
                    if (end == q) break;
                    if (v >= 0 && v < c->size) x[v] = 0;
                    self |= v == c->rank;
                    q = *end == ',' ? end + 1 : end;
                }
                if (self) {
                    memcpy(next, x, (size_t)c->size);
                    *evict_p = 1;
                }
                free(x);
            }
            st = comm_err(c, MC_ERR_MISMATCH,
                          "mc_comm_shrink: the others removed [%s] but this "
                          "rank removes [%s]%s",
                          cur + 6, mine,
                          self ? "; this rank is among the removed: evicted"
                               : "");
        } else {
            /* aborted: by this rank or another, for the reason it gives */
            int code = MC_ERR_MISMATCH, off = 0;
            if (sscanf(cur, "abort:%d:%n", &code, &off) < 1 || !off ||
                code >= 0)
                code = MC_ERR_MISMATCH, off = 0;
            st = comm_err(c, (mc_status_t)code,
                          "mc_comm_shrink: given up (%s; this rank removes "
                          "[%s]); nothing changed",
                          off ? cur + off : cur, mine);
        }
    }
    free(mine);
    free(theirs);
    return st;
}

mc_status_t mc_comm_shrink(mc_comm_h c, const int *ranks, int n)
{
    CHECK_COMM(c, "mc_comm_shrink");
    /* every call counts, failed ones too: the k-th call of each rank in a
     * view meets the others' k-th (shrink_check) */
    pthread_mutex_lock(&c->plock);
    if (c->shrink_epoch != c->epoch) {
        c->shrink_epoch = c->epoch;
        c->shrink_try = 0;
    }
    c->shrink_try++;
    pthread_mutex_unlock(&c->plock);
    if (n < 0 || (n > 0 && !ranks))
        return comm_err(c, MC_ERR_INVALID_ARG,
                        "mc_comm_shrink: invalid rank list (n=%d)", n);
    uint8_t *next = malloc((size_t)c->size);
    if (!next) return comm_err(c, MC_ERR_NO_MEMORY, "mc_comm_shrink");
    pthread_mutex_lock(&c->plock);
    memcpy(next, c->active, (size_t)c->size);
    pthread_mutex_unlock(&c->plock);
    for (int i = 0; i < n; i++) {
        if (ranks[i] < 0 || ranks[i] >= c->size) {
            free(next);
            return comm_err(c, MC_ERR_INVALID_ARG,
                            "mc_comm_shrink: rank %d out of range [0, %d)",
                            ranks[i], c->size);
        }
        if (!next[ranks[i]]) {
            free(next);
            return comm_err(c, MC_ERR_INVALID_ARG,
                            "mc_comm_shrink: rank %d is not in the view "
                            "(listed twice or already removed)",
                            ranks[i]);
        }
        next[ranks[i]] = 0;
    }
    if (!c->ft) {
        free(next);
        return comm_err(
            c, MC_ERR_UNSUPPORTED,
            "mc_comm_shrink: fault tolerance is off (MOONCAKE_FT=0)");
    }
    /* an operation boundary: everything issued before runs first */
    pthread_mutex_lock(&c->exec_lock);
    run_queue(c, NULL);
    mc_status_t st = MC_OK;
    /* the view may have changed in run_queue (a failure, an admission):
     * the listed ranks come off the view as it is now */
    pthread_mutex_lock(&c->plock);
    memcpy(next, c->active, (size_t)c->size);
    for (int i = 0; i < n; i++)
        next[ranks[i]] = 0;
    /* embedded membership: the calling ranks agree on the view first
     * (etcd's transaction lets one view win and fails the others) */
    int check = !c->em && c->store && !c->evicted;
    pthread_mutex_unlock(&c->plock);
    if (check) {
        int evict = 0;
        st = shrink_check(c, next, &evict);
        if (st < 0 && !evict) {
            pthread_mutex_unlock(&c->exec_lock);
            free(next);
            return st;
        }
    }
    pthread_mutex_lock(&c->plock);
    if (st < 0) /* removed by the others' list: adopt it, evicted */
        view_adopt(c, c->epoch + 1, next);
    else if (c->evicted)
        st = comm_err(c, MC_ERR_EVICTED,
                      "mc_comm_shrink: rank %d was already removed", c->rank);
    else if (c->em) {
        /* etcd mode: the same transaction as any view change; every rank
         * that stays tries, the first one moves it */
        int ok = 0;
        uint64_t ce = 0, cs = 0;
        st = mc_emember_view_commit(c->em, c->epoch, c->view_start, c->active,
                                    c->epoch + 1, c->view_start, next, &ok,
                                    &ce, &cs, c->em_tmp);
        if (st == MC_OK && !ok &&
            (ce != c->epoch + 1 || cs != c->view_start ||
             memcmp(c->em_tmp, next, (size_t)c->size) != 0))
            st = comm_err(c, MC_ERR_PEER_FAILED,
                          "mc_comm_shrink: etcd holds another view (epoch "
                          "%llu): a concurrent view change",
                          (unsigned long long)ce);
        else if (st != MC_OK)
            st = comm_err(c, st, "mc_comm_shrink: etcd: %s", mc_last_error());
        if (st == MC_OK) view_adopt(c, c->epoch + 1, next);
    } else
        view_adopt(c, c->epoch + 1, next);
    int evicted = c->evicted;
    pthread_mutex_unlock(&c->plock);
    pthread_mutex_unlock(&c->exec_lock);
    free(next);
    if (st < 0 || evicted) return st;
    /* the ranks that stay meet in the new view */
    return mc_comm_barrier(c);
}

mc_status_t mc_comm_set_auto_recover(mc_comm_h c, int on)
{
    CHECK_COMM(c, "mc_comm_set_auto_recover");
    pthread_mutex_lock(&c->plock);
    c->auto_recover = on != 0;
    pthread_mutex_unlock(&c->plock);
    return MC_OK;
}
