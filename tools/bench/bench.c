/*
 * mooncake-bench: nccl-tests style bandwidth benchmark for one collective.
 *
 * The parent forks --ranks local processes; each builds a communicator over
 * a file store in a fresh temporary directory (removed at exit) and sweeps
 * the message size. Rank 0 prints the nccl-tests table: per size the
 * out-of-place and in-place time, algorithm and bus bandwidth, and the
 * number of wrong elements from a verification run.
 *
 * Only the public API is used, plus reduce.h's scalar conversions to encode
 * the exact reference values for fp16/bf16/fp8.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <math.h>
#include <arpa/inet.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mooncake/mooncake.h"
#include "reduce.h"

#define BENCH_MAX_RANKS 256
#define BENCH_MAX_BYTES ((uint64_t)16 << 30)

enum bench_op {
    OP_ALLREDUCE,
    OP_ALLGATHER,
    OP_REDUCE_SCATTER,
    OP_BROADCAST,
    OP_REDUCE,
    OP_GATHER,
    OP_SCATTER,
    OP_ALLTOALL,
    OP_ALLTOALLV,
    OP_BARRIER,
    OP_SENDRECV,
    OP_COUNT
};

static const char *const bench_op_names[OP_COUNT] = {
    "allreduce", "allgather", "reduce_scatter", "broadcast", "reduce",
    "gather",    "scatter",   "alltoall",       "alltoallv", "barrier",
    "sendrecv",
};

struct bench_opts {
    uint64_t minb, maxb, factor;
    int iters, warmup;
    enum bench_op op;
    mc_dtype_t dtype;
    mc_redop_t redop;
    int root;
    mc_transport_kind_t transport;
    int check;
    int memcpy_bw;
    int nranks;
    const char *dir;
    /* --kill mode */
    int kill;
    int kills;
    uint64_t kill_bytes;
    int kill_rss_mb; /* --kill-rss: memory each rank touches first */
    uint64_t seed;
    int seed_set;
    int ft_compare;
    uint64_t ft_sizes[16]; /* --ft-sizes */
    int ft_nsizes;
    int ft_reps;
    enum bench_op ft_op;
    int p2p_cb; /* --p2p-callbacks */
};

/* Sizes of one step of the sweep, following nccl-tests: `count` is the
 * count passed to the API, `bytes` the size printed and used for algbw. */
struct layout {
    size_t count;
    size_t send_bytes, recv_bytes;
    size_t bytes;
};

/* clang-format off */
static void usage(FILE *f)
{
    fprintf(f,
"usage: mooncake-bench [options]\n"
"  -b, --minbytes SIZE     smallest size (default 8)\n"
"  -e, --maxbytes SIZE     largest size (default 64M)\n"
"  -f, --stepfactor N      multiply the size by N each step (default 2)\n"
"  -n, --iters N           timed iterations per size (default 20)\n"
"  -w, --warmup_iters N    untimed warm-up iterations (default 5)\n"
"  -o, --op OP             allreduce|allgather|reduce_scatter|broadcast|reduce|\n"
"                          gather|scatter|alltoall|alltoallv|barrier|sendrecv\n"
"                          (sendrecv, as nccl-tests: each rank sends SIZE to\n"
"                          rank+1 and receives SIZE from rank-1 at once)\n"
"      --p2p-callbacks     sendrecv: also set a completion callback on both\n"
"                          requests (that does nothing) before waiting, as\n"
"                          the torch backend does for every request\n"
"                          (default allreduce)\n"
"  -d, --datatype TYPE     int8 uint8 int16 uint16 int32 uint32 int64 uint64\n"
"                          bool float16 bfloat16 float32 float64 float8_e4m3\n"
"                          float8_e5m2 (default float32)\n"
"  -r, --redop OP          sum prod min max avg band bor bxor (default sum)\n"
"      --root R            root of broadcast/reduce/gather/scatter (default 0)\n"
"      --ranks N           number of local rank processes (default 2)\n"
"      --transport KIND    shm|tcp|auto (default: MOONCAKE_TRANSPORT or auto)\n"
"  -c, --check 0|1         verify results, count wrong elements (default 1)\n"
"      --memcpy            also print single-thread memcpy bandwidth (GB/s)\n"
"                          of this machine for each size (rank 0's process)\n"
"  -h, --help              this text\n"
"SIZE accepts K, M, G suffixes (powers of 1024).\n"
"\n"
"Recovery mode (docs/fault-model.md, \"Targets\"):\n"
"      --kill              repeat trials: fork --ranks ranks (default 4) that\n"
"                          loop on a float32 allreduce of -b bytes (default\n"
"                          1M); 1-50 ms into the loop SIGKILL one random rank\n"
"                          and time kill() to the return of every survivor's\n"
"                          interrupted call (the call during which\n"
"                          mc_comm_view_changes grew). Prints median, p99 and\n"
"                          max. Transport: --transport (default shm here).\n"
"                          Then compares allreduce busbw with fault tolerance\n"
"                          on and off (two communicators in the same ranks,\n"
"                          --ft-sizes, out of place and in place, best of\n"
"                          --ft-reps runs of -n iterations (default 10 here)\n"
"                          after -w warm-ups).\n"
"      --kills N           number of trials (default 50; 0: only compare)\n"
"      --kill-rss MIB      each rank first touches MIB MiB of memory, as a\n"
"                          training process holds (default 0): the kernel\n"
"                          closes a killed process's sockets and signals its\n"
"                          pidfd only after freeing its memory\n"
"      --seed N            seed for kill times and victims (default: clock)\n"
"      --ft-compare 0|1    run the FT on/off comparison (default 1)\n"
"      --ft-sizes LIST     its sizes, comma-separated (default\n"
"                          8,64K,256K,512K,1M,16M,64M)\n"
"      --ft-reps N         runs per size and mode, alternating (default 3)\n"
"      --ft-op OP          the collective it compares (default allreduce)\n"
"\n"
"Size conventions (as nccl-tests): `size` is the larger of the per-rank\n"
"send and receive buffers, `count` the count passed to the call:\n"
"  allreduce, broadcast, reduce: size = the buffer, count = size/elt\n"
"  allgather, gather:  size = the gathered output, count = size/(ranks*elt)\n"
"  reduce_scatter, scatter: size = the full input, count = size/(ranks*elt)\n"
"  alltoall: size = the send buffer, count = size/(ranks*elt) per peer\n"
"  alltoallv: as alltoall, through the v call with even counts\n"
"algbw = size / time; busbw = algbw * factor with factor 2(n-1)/n for\n"
"allreduce, (n-1)/n for allgather, reduce_scatter and alltoall, 1 for\n"
"broadcast, reduce, gather and scatter. Time is the average per iteration\n"
"between barriers, the maximum over ranks. #wrong counts wrong elements over\n"
"all ranks in one extra run on inputs with an exactly computable result.\n"
"Exit status: 0 ok, 1 wrong results or a failed rank, 2 usage error.\n");
}
/* clang-format on */

/* ------------------------------------------------------------------------ */
/* Option parsing                                                           */
/* ------------------------------------------------------------------------ */

static int parse_size(const char *s, uint64_t *v_p)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *s == '-') return -1;
    uint64_t mul = 1;
    switch (*end) {
    case 'k':
    case 'K':
        mul = (uint64_t)1 << 10;
        end++;
        break;
    case 'm':
    case 'M':
        mul = (uint64_t)1 << 20;
        end++;
        break;
    case 'g':
    case 'G':
        mul = (uint64_t)1 << 30;
        end++;
        break;
    default:
        break;
    }
    if (*end == 'B' || *end == 'b') end++;
    if (*end) return -1;
    if (v > UINT64_MAX / mul) return -1;
    *v_p = (uint64_t)v * mul;
    return 0;
}

/* "1M,16M,64M": 1 to cap sizes, each at least 1 byte and at most
 * BENCH_MAX_BYTES. */
static int parse_size_list(const char *s, uint64_t *v, int cap, int *n_p)
{
    char buf[512];
    if (strlen(s) >= sizeof(buf)) return -1;
    snprintf(buf, sizeof(buf), "%s", s);
    int n = 0;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t;
         t = strtok_r(NULL, ",", &save)) {
        if (n == cap || parse_size(t, &v[n]) || !v[n] || v[n] > BENCH_MAX_BYTES)
            return -1;
        n++;
    }
    if (!n) return -1;
    *n_p = n;
    return 0;
}

static int parse_int(const char *s, long lo, long hi, int *v_p)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *v_p = (int)v;
    return 0;
}

/* A collective's name (bench_op_names): 0, or 1 if unknown. */
static int parse_op(const char *s, enum bench_op *op_p)
{
    for (int i = 0; i < OP_COUNT; i++)
        if (!strcasecmp(s, bench_op_names[i])) {
            *op_p = (enum bench_op)i;
            return 0;
        }
    return 1;
}

static int parse_dtype(const char *s, mc_dtype_t *d_p)
{
    static const struct {
        const char *alias;
        mc_dtype_t d;
    } aliases[] = {{"float", MC_FLOAT32},       {"half", MC_FLOAT16},
                   {"double", MC_FLOAT64},      {"bf16", MC_BFLOAT16},
                   {"int", MC_INT32},           {"fp8_e4m3", MC_FLOAT8_E4M3},
                   {"fp8_e5m2", MC_FLOAT8_E5M2}};
    for (int d = 0; d < MC_DTYPE_COUNT; d++)
        if (!strcasecmp(s, mc_dtype_name((mc_dtype_t)d))) {
            *d_p = (mc_dtype_t)d;
            return 0;
        }
    for (size_t i = 0; i < sizeof(aliases) / sizeof(aliases[0]); i++)
        if (!strcasecmp(s, aliases[i].alias)) {
            *d_p = aliases[i].d;
            return 0;
        }
    return -1;
}

static int parse_redop(const char *s, mc_redop_t *op_p)
{
    for (int o = 0; o < MC_REDOP_COUNT; o++)
        if (!strcasecmp(s, mc_redop_name((mc_redop_t)o))) {
            *op_p = (mc_redop_t)o;
            return 0;
        }
    return -1;
}

/* Returns 0 to run, 1 to exit successfully (help), -1 on a usage error. */
static int parse_args(int argc, char **argv, struct bench_opts *o)
{
    enum {
        OPT_ROOT = 256,
        OPT_RANKS,
        OPT_TRANSPORT,
        OPT_MEMCPY,
        OPT_KILL,
        OPT_KILLS,
        OPT_KILL_RSS,
        OPT_SEED,
        OPT_FT_COMPARE,
        OPT_FT_SIZES,
        OPT_FT_REPS,
        OPT_FT_OP,
        OPT_P2P_CB
    };
    static const struct option longopts[] = {
        {"minbytes", required_argument, NULL, 'b'},
        {"maxbytes", required_argument, NULL, 'e'},
        {"stepfactor", required_argument, NULL, 'f'},
        {"iters", required_argument, NULL, 'n'},
        {"warmup_iters", required_argument, NULL, 'w'},
        {"op", required_argument, NULL, 'o'},
        {"datatype", required_argument, NULL, 'd'},
        {"redop", required_argument, NULL, 'r'},
        {"check", required_argument, NULL, 'c'},
        {"root", required_argument, NULL, OPT_ROOT},
        {"ranks", required_argument, NULL, OPT_RANKS},
        {"transport", required_argument, NULL, OPT_TRANSPORT},
        {"memcpy", no_argument, NULL, OPT_MEMCPY},
        {"kill", no_argument, NULL, OPT_KILL},
        {"kills", required_argument, NULL, OPT_KILLS},
        {"kill-rss", required_argument, NULL, OPT_KILL_RSS},
        {"seed", required_argument, NULL, OPT_SEED},
        {"ft-compare", required_argument, NULL, OPT_FT_COMPARE},
        {"ft-sizes", required_argument, NULL, OPT_FT_SIZES},
        {"ft-reps", required_argument, NULL, OPT_FT_REPS},
        {"ft-op", required_argument, NULL, OPT_FT_OP},
        {"p2p-callbacks", no_argument, NULL, OPT_P2P_CB},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    mc_comm_config_t cfg;
    mc_comm_config_init(&cfg);
    *o = (struct bench_opts){
        .minb = 8,
        .maxb = (uint64_t)64 << 20,
        .factor = 2,
        .iters = 20,
        .warmup = 5,
        .op = OP_ALLREDUCE,
        .dtype = MC_FLOAT32,
        .redop = MC_SUM,
        .root = 0,
        .transport = cfg.transport,
        .check = 1,
        .nranks = 2,
        .kills = 50,
        .ft_compare = 1,
        .ft_sizes = {8, 64 << 10, 256 << 10, 512 << 10, 1 << 20, 16 << 20,
                     64 << 20},
        .ft_nsizes = 7,
        .ft_reps = 3,
        .ft_op = OP_ALLREDUCE,
    };
    int minb_set = 0, ranks_set = 0, transport_set = 0, iters_set = 0;
    int c;
    while ((c = getopt_long(argc, argv, "b:e:f:n:w:o:d:r:c:h", longopts,
                            NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'b':
            bad = parse_size(optarg, &o->minb) || o->minb == 0;
            minb_set = 1;
            break;
        case 'e':
            bad = parse_size(optarg, &o->maxb);
            break;
        case 'f': {
            int f;
            bad = parse_int(optarg, 2, 1 << 20, &f);
            o->factor = (uint64_t)f;
            break;
        }
        case 'n':
            bad = parse_int(optarg, 1, 100000000, &o->iters);
            iters_set = 1;
            break;
        case 'w':
            bad = parse_int(optarg, 0, 100000000, &o->warmup);
            break;
        case 'o':
            bad = parse_op(optarg, &o->op);
            break;
        case 'd':
            bad = parse_dtype(optarg, &o->dtype);
            break;
        case 'r':
            bad = parse_redop(optarg, &o->redop);
            break;
        case 'c':
            bad = parse_int(optarg, 0, 1, &o->check);
            break;
        case OPT_ROOT:
            bad = parse_int(optarg, 0, BENCH_MAX_RANKS, &o->root);
            break;
        case OPT_RANKS:
            bad = parse_int(optarg, 1, BENCH_MAX_RANKS, &o->nranks);
            ranks_set = 1;
            break;
        case OPT_TRANSPORT:
            if (!strcasecmp(optarg, "shm"))
                o->transport = MC_TRANSPORT_SHM;
            else if (!strcasecmp(optarg, "tcp"))
                o->transport = MC_TRANSPORT_TCP;
            else if (!strcasecmp(optarg, "auto"))
                o->transport = MC_TRANSPORT_AUTO;
            else
                bad = 1;
            transport_set = 1;
            break;
        case OPT_MEMCPY:
            o->memcpy_bw = 1;
            break;
        case OPT_KILL:
            o->kill = 1;
            break;
        case OPT_KILLS:
            bad = parse_int(optarg, 0, 1000000, &o->kills);
            break;
        case OPT_KILL_RSS:
            bad = parse_int(optarg, 0, 1 << 20, &o->kill_rss_mb);
            break;
        case OPT_SEED: {
            char *end;
            errno = 0;
            o->seed = strtoull(optarg, &end, 0);
            bad = errno || end == optarg || *end;
            o->seed_set = 1;
            break;
        }
        case OPT_FT_COMPARE:
            bad = parse_int(optarg, 0, 1, &o->ft_compare);
            break;
        case OPT_FT_SIZES:
            bad = parse_size_list(optarg, o->ft_sizes, 16, &o->ft_nsizes);
            break;
        case OPT_FT_REPS:
            bad = parse_int(optarg, 1, 1000, &o->ft_reps);
            break;
        case OPT_FT_OP:
            bad = parse_op(optarg, &o->ft_op);
            break;
        case OPT_P2P_CB:
            o->p2p_cb = 1;
            break;
        case 'h':
            usage(stdout);
            return 1;
        default:
            usage(stderr);
            return -1;
        }
        if (bad) {
            fprintf(stderr, "mooncake-bench: invalid value '%s' for -%c%s\n",
                    optarg, c < 256 ? c : '-',
                    c == OPT_ROOT         ? "root"
                    : c == OPT_RANKS      ? "ranks"
                    : c == OPT_TRANSPORT  ? "transport"
                    : c == OPT_KILLS      ? "kills"
                    : c == OPT_KILL_RSS   ? "kill-rss"
                    : c == OPT_SEED       ? "seed"
                    : c == OPT_FT_COMPARE ? "ft-compare"
                    : c == OPT_FT_SIZES   ? "ft-sizes"
                    : c == OPT_FT_REPS    ? "ft-reps"
                    : c == OPT_FT_OP      ? "ft-op"
                                          : "");
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "mooncake-bench: unexpected argument '%s'\n",
                argv[optind]);
        return -1;
    }
    if ((o->op == OP_SENDRECV || (o->kill && o->ft_op == OP_SENDRECV)) &&
        o->nranks < 2) {
        fprintf(stderr, "mooncake-bench: sendrecv needs --ranks >= 2\n");
        return -1;
    }
    if (o->kill) {
        o->kill_bytes = minb_set ? o->minb : (uint64_t)1 << 20;
        if (!ranks_set) o->nranks = 4;
        if (!transport_set) o->transport = MC_TRANSPORT_SHM;
        if (!iters_set) o->iters = 10;
        if (o->nranks < 2) {
            fprintf(stderr, "mooncake-bench: --kill needs --ranks >= 2\n");
            return -1;
        }
        if (o->kill_bytes > BENCH_MAX_BYTES) {
            fprintf(stderr, "mooncake-bench: -b is above %" PRIu64 "\n",
                    BENCH_MAX_BYTES);
            return -1;
        }
        return 0;
    }
    if (o->maxb < o->minb || o->maxb > BENCH_MAX_BYTES) {
        fprintf(stderr,
                "mooncake-bench: need minbytes <= maxbytes <= %" PRIu64 "\n",
                BENCH_MAX_BYTES);
        return -1;
    }
    if (o->root >= o->nranks) {
        fprintf(stderr, "mooncake-bench: --root %d is not below --ranks %d\n",
                o->root, o->nranks);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Element encoding and the exact reference                                 */
/* ------------------------------------------------------------------------ */

static void put(void *buf, size_t i, mc_dtype_t dt, double v)
{
    int64_t x = (int64_t)v; /* via int64: negative -> unsigned is defined */
    switch (dt) {
    case MC_INT8:
        ((int8_t *)buf)[i] = (int8_t)x;
        break;
    case MC_UINT8:
        ((uint8_t *)buf)[i] = (uint8_t)x;
        break;
    case MC_INT16:
        ((int16_t *)buf)[i] = (int16_t)x;
        break;
    case MC_UINT16:
        ((uint16_t *)buf)[i] = (uint16_t)x;
        break;
    case MC_INT32:
        ((int32_t *)buf)[i] = (int32_t)x;
        break;
    case MC_UINT32:
        ((uint32_t *)buf)[i] = (uint32_t)x;
        break;
    case MC_INT64:
        ((int64_t *)buf)[i] = x;
        break;
    case MC_UINT64:
        ((uint64_t *)buf)[i] = (uint64_t)x;
        break;
    case MC_BOOL:
        ((uint8_t *)buf)[i] = v != 0;
        break;
    case MC_FLOAT16:
        ((uint16_t *)buf)[i] = mc_float_to_fp16((float)v);
        break;
    case MC_BFLOAT16:
        ((uint16_t *)buf)[i] = mc_float_to_bf16((float)v);
        break;
    case MC_FLOAT32:
        ((float *)buf)[i] = (float)v;
        break;
    case MC_FLOAT64:
        ((double *)buf)[i] = v;
        break;
    case MC_FLOAT8_E4M3:
        ((uint8_t *)buf)[i] = mc_float_to_fp8e4m3((float)v);
        break;
    case MC_FLOAT8_E5M2:
        ((uint8_t *)buf)[i] = mc_float_to_fp8e5m2((float)v);
        break;
    default:
        break;
    }
}

static double get(const void *buf, size_t i, mc_dtype_t dt)
{
    switch (dt) {
    case MC_INT8:
        return ((const int8_t *)buf)[i];
    case MC_UINT8:
        return ((const uint8_t *)buf)[i];
    case MC_INT16:
        return ((const int16_t *)buf)[i];
    case MC_UINT16:
        return ((const uint16_t *)buf)[i];
    case MC_INT32:
        return ((const int32_t *)buf)[i];
    case MC_UINT32:
        return ((const uint32_t *)buf)[i];
    case MC_INT64:
        return (double)((const int64_t *)buf)[i];
    case MC_UINT64:
        return (double)((const uint64_t *)buf)[i];
    case MC_BOOL:
        return ((const uint8_t *)buf)[i] != 0;
    case MC_FLOAT16:
        return mc_fp16_to_float(((const uint16_t *)buf)[i]);
    case MC_BFLOAT16:
        return mc_bf16_to_float(((const uint16_t *)buf)[i]);
    case MC_FLOAT32:
        return ((const float *)buf)[i];
    case MC_FLOAT64:
        return ((const double *)buf)[i];
    case MC_FLOAT8_E4M3:
        return mc_fp8e4m3_to_float(((const uint8_t *)buf)[i]);
    case MC_FLOAT8_E5M2:
        return mc_fp8e5m2_to_float(((const uint8_t *)buf)[i]);
    default:
        return 0;
    }
}

/* Largest L such that every integer 0..L is exact in the type. */
static int64_t exact_limit(mc_dtype_t dt)
{
    switch (dt) {
    case MC_BOOL:
        return 1;
    case MC_INT8:
        return 127;
    case MC_UINT8:
        return 255;
    case MC_INT16:
        return 32767;
    case MC_UINT16:
        return 65535;
    case MC_FLOAT16:
        return 2048;
    case MC_BFLOAT16:
        return 256;
    case MC_FLOAT8_E4M3:
        return 16;
    case MC_FLOAT8_E5M2:
        return 8;
    default:
        return 1 << 20;
    }
}

static int is_float(mc_dtype_t dt)
{
    return dt == MC_FLOAT16 || dt == MC_BFLOAT16 || dt == MC_FLOAT32 ||
           dt == MC_FLOAT64 || dt == MC_FLOAT8_E4M3 || dt == MC_FLOAT8_E5M2;
}

/*
 * Verification inputs are small non-negative integers chosen so that every
 * partial result of the reduction is exact in the element type, whatever
 * order the engine combines ranks in: then the exact result is known.
 */
struct pattern {
    mc_dtype_t dt;
    mc_redop_t op;
    int n;
    int64_t m_red; /* reduction inputs are (3r + i) % m_red */
    int64_t m_mov; /* data-movement inputs are (7r + 3j + i) % m_mov */
};

static void pattern_init(struct pattern *p, const struct bench_opts *o)
{
    int64_t lim = exact_limit(o->dtype);
    p->dt = o->dtype;
    p->op = o->redop;
    p->n = o->nranks;
    p->m_mov = (lim < 100 ? lim : 100) + 1;
    if (o->dtype == MC_BOOL)
        p->m_red = 2;
    else if (o->redop == MC_SUM || o->redop == MC_AVG) {
        int64_t per = lim / o->nranks;
        p->m_red = (per < 100 ? per : 100) + 1;
    } else
        p->m_red = p->m_mov;
}

static double red_in(const struct pattern *p, int r, size_t i)
{
    if (p->op == MC_PROD) /* at most one factor of 2 per element */
        return ((size_t)r + i) % (size_t)(p->n + 1) == 0 ? 2 : 1;
    return (double)(((size_t)r * 3 + i) % (size_t)p->m_red);
}

static double mov_in(const struct pattern *p, int r, size_t j, size_t i)
{
    return (double)(((size_t)r * 7 + j * 3 + i) % (size_t)p->m_mov);
}

/* Reference reduction over ranks of red_in(., i), rounded to the type. */
static double red_ref(const struct pattern *p, size_t i)
{
    double acc = red_in(p, 0, i);
    int boolean = p->dt == MC_BOOL;
    for (int r = 1; r < p->n; r++) {
        double v = red_in(p, r, i);
        switch (p->op) {
        case MC_SUM:
        case MC_AVG:
            acc = boolean ? (acc != 0 || v != 0) : acc + v;
            break;
        case MC_PROD:
            acc = boolean ? (acc != 0 && v != 0) : acc * v;
            break;
        case MC_MIN:
            acc = v < acc ? v : acc;
            break;
        case MC_MAX:
            acc = v > acc ? v : acc;
            break;
        case MC_BAND:
            acc = (double)((int64_t)acc & (int64_t)v);
            break;
        case MC_BOR:
            acc = (double)((int64_t)acc | (int64_t)v);
            break;
        case MC_BXOR:
            acc = (double)((int64_t)acc ^ (int64_t)v);
            break;
        default:
            break;
        }
    }
    if (p->op == MC_AVG && !boolean) {
        if (p->dt == MC_FLOAT64)
            acc = acc / p->n;
        else if (is_float(p->dt))
            acc = (double)((float)acc / (float)p->n);
        else
            acc = (double)((int64_t)acc / p->n);
    }
    /* round-trip through the type, as the engine's result is */
    unsigned char tmp[8];
    put(tmp, 0, p->dt, acc);
    return get(tmp, 0, p->dt);
}

/* A value no verification input takes (for bool it cannot exist). */
#define GARBAGE (-1.0)

static void fill_garbage(void *buf, size_t n, mc_dtype_t dt)
{
    for (size_t i = 0; i < n; i++)
        put(buf, i, dt, GARBAGE);
}

static int64_t count_wrong(const void *buf, size_t n, mc_dtype_t dt,
                           double (*want)(const struct pattern *, int, size_t,
                                          size_t),
                           const struct pattern *p, int a, size_t block)
{
    int64_t wrong = 0;
    for (size_t i = 0; i < n; i++)
        if (get(buf, i, dt) != want(p, a, block, i)) wrong++;
    return wrong;
}

/* Adapters so count_wrong has one signature for every expectation. */
static double want_red(const struct pattern *p, int a, size_t off, size_t i)
{
    (void)a;
    return red_ref(p, off + i);
}

static double want_mov(const struct pattern *p, int r, size_t j, size_t i)
{
    unsigned char tmp[8];
    put(tmp, 0, p->dt, mov_in(p, r, j, i));
    return get(tmp, 0, p->dt);
}

/* ------------------------------------------------------------------------ */
/* One rank                                                                 */
/* ------------------------------------------------------------------------ */

struct rank_ctx {
    const struct bench_opts *o;
    mc_comm_h comm;
    int rank, n;
    size_t esz;
    unsigned char *send, *recv;
    struct pattern pat;
};

static void layout_for(const struct rank_ctx *c, uint64_t size,
                       struct layout *l)
{
    size_t e = c->esz, n = (size_t)c->n;
    switch (c->o->op) {
    case OP_ALLREDUCE:
    case OP_BROADCAST:
    case OP_REDUCE:
    case OP_SENDRECV:
        l->count = size / e;
        l->send_bytes = l->recv_bytes = l->count * e;
        break;
    case OP_ALLGATHER:
    case OP_GATHER:
        l->count = size / (e * n);
        l->send_bytes = l->count * e;
        l->recv_bytes = l->count * e * n;
        break;
    case OP_REDUCE_SCATTER:
    case OP_SCATTER:
        l->count = size / (e * n);
        l->send_bytes = l->count * e * n;
        l->recv_bytes = l->count * e;
        break;
    case OP_ALLTOALL:
    case OP_ALLTOALLV:
        l->count = size / (e * n);
        l->send_bytes = l->recv_bytes = l->count * e * n;
        break;
    default:
        l->count = 0;
        l->send_bytes = l->recv_bytes = 0;
        break;
    }
    l->bytes = l->send_bytes > l->recv_bytes ? l->send_bytes : l->recv_bytes;
}

static double busbw_factor(enum bench_op op, int n)
{
    switch (op) {
    case OP_ALLREDUCE:
        return 2.0 * (n - 1) / n;
    case OP_ALLGATHER:
    case OP_REDUCE_SCATTER:
    case OP_ALLTOALL:
    case OP_ALLTOALLV:
    case OP_GATHER: /* as nccl-tests: only (n-1)/n of the data moves */
    case OP_SCATTER:
        return (double)(n - 1) / n;
    case OP_BARRIER:
        return 0;
    default:
        return 1; /* broadcast, reduce */
    }
}

static int has_inplace(enum bench_op op)
{
    return op != OP_ALLTOALL && op != OP_ALLTOALLV && op != OP_BARRIER &&
           op != OP_SENDRECV;
}

/* Buffers for one call: in place as NCCL defines it per operation. */
static void buffers(const struct rank_ctx *c, const struct layout *l,
                    int inplace, unsigned char **s_p, unsigned char **r_p)
{
    size_t blk = l->count * c->esz * (size_t)c->rank;
    *s_p = c->send;
    *r_p = c->recv;
    if (!inplace) return;
    switch (c->o->op) {
    case OP_ALLREDUCE:
    case OP_BROADCAST:
    case OP_REDUCE:
        *s_p = c->recv;
        break;
    case OP_ALLGATHER:
    case OP_GATHER:
        *s_p = c->recv + blk;
        break;
    case OP_REDUCE_SCATTER:
    case OP_SCATTER:
        *r_p = c->send + blk;
        break;
    default:
        break;
    }
}

static void bench_nop_cb(mc_request_h req, mc_status_t st, void *arg)
{
    (void)req, (void)st, (void)arg;
}

static mc_status_t run_once(const struct rank_ctx *c, const struct layout *l,
                            void *s, void *r)
{
    mc_comm_h comm = c->comm;
    const struct bench_opts *o = c->o;
    switch (o->op) {
    case OP_ALLREDUCE:
        return mc_comm_allreduce(comm, s, r, l->count, o->dtype, o->redop);
    case OP_ALLGATHER:
        return mc_comm_allgather(comm, s, r, l->count, o->dtype);
    case OP_REDUCE_SCATTER:
        return mc_comm_reduce_scatter(comm, s, r, l->count, o->dtype, o->redop);
    case OP_BROADCAST:
        return mc_comm_broadcast(comm, s, r, l->count, o->dtype, o->root);
    case OP_REDUCE:
        return mc_comm_reduce(comm, s, r, l->count, o->dtype, o->redop,
                              o->root);
    case OP_GATHER:
        return mc_comm_gather(comm, s, r, l->count, o->dtype, o->root);
    case OP_SCATTER:
        return mc_comm_scatter(comm, s, r, l->count, o->dtype, o->root);
    case OP_ALLTOALL:
        return mc_comm_alltoall(comm, s, r, l->count, o->dtype);
    case OP_ALLTOALLV: {
        static size_t vc[BENCH_MAX_RANKS], vd[BENCH_MAX_RANKS];
        for (int j = 0; j < c->n; j++) {
            vc[j] = l->count;
            vd[j] = (size_t)j * l->count;
        }
        return mc_comm_alltoallv(comm, s, vc, vd, r, vc, vd, o->dtype);
    }
    case OP_SENDRECV: {
        mc_request_h rq, sq;
        int to = (c->rank + 1) % c->n, from = (c->rank + c->n - 1) % c->n;
        mc_status_t st = mc_comm_irecv(comm, r, l->count, o->dtype, from, 1, &rq);
        if (st != MC_OK) return st;
        st = mc_comm_isend(comm, s, l->count, o->dtype, to, 1, &sq);
        if (st != MC_OK) {
            (void)mc_request_wait(rq, 0);
            mc_request_free(rq);
            return st;
        }
        if (o->p2p_cb) {
            (void)mc_request_on_complete(rq, bench_nop_cb, NULL);
            (void)mc_request_on_complete(sq, bench_nop_cb, NULL);
        }
        mc_status_t a = mc_request_wait(sq, -1), b = mc_request_wait(rq, -1);
        mc_request_free(sq);
        mc_request_free(rq);
        return a != MC_OK ? a : b;
    }
    default:
        return mc_comm_barrier(comm);
    }
}

static void die(const struct rank_ctx *c, mc_status_t st, const char *what)
{
    fprintf(stderr, "mooncake-bench: rank %d: %s failed: %s: %s\n", c->rank,
            what, mc_status_str(st),
            c->comm ? mc_comm_last_error(c->comm) : mc_last_error());
    fflush(NULL);
    _exit(1);
}

/* Average time per iteration in microseconds, the maximum over ranks. */
static double time_op(const struct rank_ctx *c, const struct layout *l,
                      int inplace)
{
    unsigned char *s, *r;
    buffers(c, l, inplace, &s, &r);
    mc_status_t st;
    for (int i = 0; i < c->o->warmup; i++)
        if ((st = run_once(c, l, s, r)) != MC_OK) die(c, st, "warm-up");
    if ((st = mc_comm_barrier(c->comm)) != MC_OK) die(c, st, "barrier");
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < c->o->iters; i++)
        if ((st = run_once(c, l, s, r)) != MC_OK) die(c, st, "collective");
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double us = ((double)(t1.tv_sec - t0.tv_sec) * 1e6 +
                 (double)(t1.tv_nsec - t0.tv_nsec) / 1e3) /
                c->o->iters;
    if ((st = mc_comm_barrier(c->comm)) != MC_OK) die(c, st, "barrier");
    if ((st = mc_comm_allreduce(c->comm, &us, &us, 1, MC_FLOAT64, MC_MAX)) !=
        MC_OK)
        die(c, st, "allreduce(max time)");
    return us;
}

/* Fill the send buffers with data for the timed loop (the same pattern as
 * verification, so reductions stay in range for a while). */
static void fill_inputs(const struct rank_ctx *c, const struct layout *l,
                        int inplace)
{
    unsigned char *s, *r;
    buffers(c, l, inplace, &s, &r);
    const struct pattern *p = &c->pat;
    mc_dtype_t dt = c->o->dtype;
    size_t n = (size_t)c->n, cnt = l->count, e = c->esz;
    int me = c->rank, root = c->o->root;
    switch (c->o->op) {
    case OP_ALLREDUCE:
    case OP_REDUCE:
        if (!inplace) fill_garbage(r, cnt, dt);
        for (size_t i = 0; i < cnt; i++)
            put(s, i, dt, red_in(p, me, i));
        break;
    case OP_REDUCE_SCATTER:
        if (!inplace) fill_garbage(r, cnt, dt);
        for (size_t i = 0; i < cnt * n; i++)
            put(s, i, dt, red_in(p, me, i));
        break;
    case OP_BROADCAST:
        fill_garbage(r, cnt, dt);
        if (me == root)
            for (size_t i = 0; i < cnt; i++)
                put(s, i, dt, mov_in(p, root, 0, i));
        else if (!inplace)
            fill_garbage(s, cnt, dt);
        break;
    case OP_ALLGATHER:
    case OP_GATHER:
        fill_garbage(r, cnt * n, dt);
        for (size_t i = 0; i < cnt; i++)
            put(s, i, dt, mov_in(p, me, 0, i));
        break;
    case OP_SCATTER:
        fill_garbage(s, cnt * n, dt);
        if (!inplace) fill_garbage(r, cnt, dt);
        if (me == root)
            for (size_t b = 0; b < n; b++)
                for (size_t i = 0; i < cnt; i++)
                    put(s + b * cnt * e, i, dt, mov_in(p, (int)b, 0, i));
        break;
    case OP_ALLTOALL:
    case OP_ALLTOALLV:
        fill_garbage(r, cnt * n, dt);
        for (size_t j = 0; j < n; j++)
            for (size_t i = 0; i < cnt; i++)
                put(s + j * cnt * e, i, dt, mov_in(p, me, j, i));
        break;
    case OP_SENDRECV:
        fill_garbage(r, cnt, dt);
        for (size_t i = 0; i < cnt; i++)
            put(s, i, dt, mov_in(p, me, 0, i));
        break;
    default:
        break;
    }
}

/* One verification run; returns the number of wrong elements over ranks. */
static int64_t check_op(const struct rank_ctx *c, const struct layout *l,
                        int inplace)
{
    unsigned char *s, *r;
    buffers(c, l, inplace, &s, &r);
    fill_inputs(c, l, inplace);
    mc_status_t st = run_once(c, l, s, r);
    if (st != MC_OK) die(c, st, "verification run");
    const struct pattern *p = &c->pat;
    mc_dtype_t dt = c->o->dtype;
    size_t n = (size_t)c->n, cnt = l->count, e = c->esz;
    int me = c->rank, root = c->o->root;
    int64_t wrong = 0;
    switch (c->o->op) {
    case OP_ALLREDUCE:
        wrong = count_wrong(r, cnt, dt, want_red, p, 0, 0);
        break;
    case OP_REDUCE:
        if (me == root) wrong = count_wrong(r, cnt, dt, want_red, p, 0, 0);
        break;
    case OP_REDUCE_SCATTER:
        wrong = count_wrong(r, cnt, dt, want_red, p, 0, (size_t)me * cnt);
        break;
    case OP_BROADCAST:
        wrong = count_wrong(r, cnt, dt, want_mov, p, root, 0);
        break;
    case OP_ALLGATHER:
    case OP_GATHER:
        if (c->o->op == OP_GATHER && me != root) break;
        for (size_t b = 0; b < n; b++)
            wrong +=
                count_wrong(r + b * cnt * e, cnt, dt, want_mov, p, (int)b, 0);
        break;
    case OP_SCATTER:
        wrong = count_wrong(r, cnt, dt, want_mov, p, me, 0);
        break;
    case OP_ALLTOALL:
    case OP_ALLTOALLV:
        /* block j came from rank j, which sent its block `me` */
        for (size_t j = 0; j < n; j++)
            wrong += count_wrong(r + j * cnt * e, cnt, dt, want_mov, p, (int)j,
                                 (size_t)me);
        break;
    case OP_SENDRECV: /* from rank - 1, which sent its own pattern */
        wrong = count_wrong(r, cnt, dt, want_mov, p, (int)((me + n - 1) % n),
                            0);
        break;
    default:
        break;
    }
    st = mc_comm_allreduce(c->comm, &wrong, &wrong, 1, MC_INT64, MC_SUM);
    if (st != MC_OK) die(c, st, "allreduce(#wrong)");
    return wrong;
}

/* Single-thread memcpy bandwidth in GB/s for `bytes`, destination touched
 * beforehand. Enough copies to move >= 64 MiB, at least 5. */
static double memcpy_gbps(unsigned char *dst, const unsigned char *src,
                          size_t bytes)
{
    if (bytes == 0) return 0;
    size_t reps = ((size_t)64 << 20) / bytes;
    if (reps < 5) reps = 5;
    if (reps > 100000) reps = 100000;
    memcpy(dst, src, bytes); /* warm */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (size_t i = 0; i < reps; i++) {
        memcpy(dst, src, bytes);
        __asm__ volatile("" : : "r"(dst) : "memory");
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double sec = (double)(t1.tv_sec - t0.tv_sec) +
                 (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    return sec > 0 ? (double)bytes * (double)reps / sec / 1e9 : 0;
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void time_str(char out[16], double us)
{
    if (us >= 10000.0)
        snprintf(out, 16, "%7.0f", us);
    else if (us >= 100.0)
        snprintf(out, 16, "%7.1f", us);
    else
        snprintf(out, 16, "%7.2f", us);
}

static void print_header(const struct rank_ctx *c, mc_store_h store)
{
    const struct bench_opts *o = c->o;
    static const char *tnames[] = {"auto", "tcp", "shm"};
    printf("# mooncake-bench %d.%d: op %s  ranks %d  transport %s\n",
           MC_VERSION_MAJOR, MC_VERSION_MINOR, bench_op_names[o->op], c->n,
           (unsigned)o->transport < 3 ? tnames[o->transport] : "?");
    printf("# minBytes %" PRIu64 " maxBytes %" PRIu64 " step: %" PRIu64
           "(factor) warmup iters: %d iters: %d "
           "validation: %d\n#\n# Using ranks\n",
           o->minb, o->maxb, o->factor, o->warmup, o->iters, o->check);
    /* Every rank published "pid host transport-to-next-peer". */
    for (int r = 0; r < c->n; r++) {
        char key[64], info[256];
        size_t len = 0;
        snprintf(key, sizeof(key), "bench/info/%d", r);
        if (mc_store_get(store, key, 60000, info, sizeof(info) - 1, &len) !=
            MC_OK)
            snprintf(info, sizeof(info), "(unknown)");
        else
            info[len < sizeof(info) - 1 ? len : sizeof(info) - 1] = '\0';
        printf("#  Rank %3d %s\n", r, info);
    }
    printf("#\n");
    const char *mc = o->memcpy_bw ? "  memcpy" : "";
    const char *mcu = o->memcpy_bw ? "  (GB/s)" : "";
    printf("# %10s  %12s  %11s  %6s  %6s           out-of-place          "
           "             in-place          \n",
           "", "", "", "", "");
    printf("# %10s  %12s  %11s  %6s  %6s  %7s  %6s  %6s  %6s  %7s  %6s  %6s "
           " %6s%s\n",
           "size", "count", "type", "redop", "root", "time", "algbw", "busbw",
           "#wrong", "time", "algbw", "busbw", "#wrong", mc);
    printf("# %10s  %12s  %11s  %6s  %6s  %7s  %6s  %6s  %6s  %7s  %6s  %6s "
           " %6s%s\n",
           "(B)", "(elements)", "", "", "", "(us)", "(GB/s)", "(GB/s)", "",
           "(us)", "(GB/s)", "(GB/s)", "", mcu);
    fflush(stdout);
}

static int rank_main(const struct bench_opts *o, int rank)
{
    struct rank_ctx c = {.o = o, .rank = rank, .n = o->nranks};
    c.esz = mc_dtype_size(o->dtype);
    pattern_init(&c.pat, o);
    mc_store_h store;
    mc_status_t st = mc_store_file_create(o->dir, &store);
    if (st != MC_OK) die(&c, st, "mc_store_file_create");
    mc_comm_config_t cfg;
    mc_comm_config_init(&cfg);
    cfg.name = "bench";
    cfg.transport = o->transport;
    st = mc_comm_create(rank, o->nranks, store, &cfg, &c.comm);
    if (st != MC_OK) die(&c, st, "mc_comm_create");

    char host[128] = "?", key[64], info[256];
    gethostname(host, sizeof(host) - 1);
    host[sizeof(host) - 1] = '\0';
    int peer = (rank + 1) % o->nranks;
    int n = snprintf(info, sizeof(info),
                     "Pid %6d on %s transport to rank %d: %s", (int)getpid(),
                     host, peer, mc_comm_peer_transport(c.comm, peer));
    if (n < 0) n = 0;
    if ((size_t)n >= sizeof(info)) n = (int)sizeof(info) - 1;
    snprintf(key, sizeof(key), "bench/info/%d", rank);
    if ((st = mc_store_set(store, key, info, (size_t)n)) != MC_OK)
        die(&c, st, "mc_store_set");

    /* Buffers for the largest step, touched so page faults are not timed. */
    struct layout big;
    layout_for(&c, o->maxb, &big);
    size_t sb = big.send_bytes ? big.send_bytes : 1;
    size_t rb = big.recv_bytes ? big.recv_bytes : 1;
    c.send = malloc(sb);
    c.recv = malloc(rb);
    unsigned char *msrc = NULL, *mdst = NULL;
    if (o->memcpy_bw && rank == 0) {
        msrc = malloc(o->maxb);
        mdst = malloc(o->maxb);
        if (msrc && mdst) {
            memset(msrc, 1, o->maxb);
            memset(mdst, 2, o->maxb);
        }
    }
    if (!c.send || !c.recv || (o->memcpy_bw && rank == 0 && (!msrc || !mdst))) {
        fprintf(stderr,
                "mooncake-bench: rank %d: out of memory for %zu-byte "
                "buffers\n",
                rank, sb + rb);
        _exit(1);
    }
    memset(c.send, 0, sb);
    memset(c.recv, 0, rb);

    if (rank == 0) print_header(&c, store);
    double bw_sum = 0;
    int bw_n = 0;
    int64_t wrong_total = 0;
    for (uint64_t size = o->minb; size <= o->maxb;) {
        struct layout l;
        layout_for(&c, size, &l);
        double t[2] = {0, 0};
        int64_t wrong[2] = {0, 0};
        int modes = has_inplace(o->op) ? 2 : 1;
        for (int ip = 0; ip < modes; ip++) {
            fill_inputs(&c, &l, ip);
            t[ip] = time_op(&c, &l, ip);
            if (o->check && o->op != OP_BARRIER) {
                wrong[ip] = check_op(&c, &l, ip);
                wrong_total += wrong[ip];
            }
        }
        if (rank == 0) {
            int rooted = o->op == OP_BROADCAST || o->op == OP_REDUCE ||
                         o->op == OP_GATHER || o->op == OP_SCATTER;
            int reducing = o->op == OP_ALLREDUCE || o->op == OP_REDUCE ||
                           o->op == OP_REDUCE_SCATTER;
            printf("%12zu  %12zu  %11s  %6s  %6d", l.bytes, l.count,
                   mc_dtype_name(o->dtype),
                   reducing ? mc_redop_name(o->redop) : "none",
                   rooted ? o->root : -1);
            for (int ip = 0; ip < 2; ip++) {
                if (ip >= modes) {
                    printf("  %7s  %6s  %6s  %6s", "N/A", "N/A", "N/A", "N/A");
                    continue;
                }
                char ts[16], ws[24];
                time_str(ts, t[ip]);
                double algbw = t[ip] > 0 ? (double)l.bytes / 1e3 / t[ip] : 0;
                double busbw = algbw * busbw_factor(o->op, c.n);
                if (o->check && o->op != OP_BARRIER)
                    snprintf(ws, sizeof(ws), "%" PRId64, wrong[ip]);
                else
                    snprintf(ws, sizeof(ws), "N/A");
                printf("  %7s  %6.2f  %6.2f  %6s", ts, algbw, busbw, ws);
                bw_sum += busbw;
                bw_n++;
            }
            if (o->memcpy_bw)
                printf("  %6.2f", memcpy_gbps(mdst, msrc, l.bytes));
            printf("\n");
            fflush(stdout);
        }
        if (o->op == OP_BARRIER) break; /* size is meaningless */
        if (size > o->maxb / o->factor) break;
        size *= o->factor;
    }
    if (rank == 0) {
        printf("# Out of bounds values : %" PRId64 " %s\n", wrong_total,
               wrong_total ? "FAILED" : "OK");
        printf("# Avg bus bandwidth    : %g \n#\n", bw_n ? bw_sum / bw_n : 0.0);
        fflush(stdout);
    }
    st = mc_comm_barrier(c.comm);
    if (st != MC_OK) die(&c, st, "final barrier");
    /* Destroy only once every rank has left the barrier: a rank still
     * completing it would otherwise see its peers' transports close. */
    int64_t done = 0;
    if ((st = mc_store_add(store, "bench/done", 1, &done)) != MC_OK)
        die(&c, st, "mc_store_add");
    for (int64_t t0 = now_us(); done < o->nranks; usleep(1000)) {
        if (now_us() - t0 > 60 * 1000000LL) {
            fprintf(stderr, "mooncake-bench: rank %d: peers did not finish\n",
                    rank);
            break;
        }
        if ((st = mc_store_add(store, "bench/done", 0, &done)) != MC_OK)
            die(&c, st, "mc_store_add");
    }
    mc_comm_destroy(c.comm);
    mc_store_destroy(store);
    free(c.send);
    free(c.recv);
    free(msrc);
    free(mdst);
    return wrong_total ? 2 : 0;
}

/* ------------------------------------------------------------------------ */
/* Parent: fork the ranks, reap them, clean up                              */
/* ------------------------------------------------------------------------ */

static pid_t bench_pids[BENCH_MAX_RANKS];
static int bench_nranks;

static void kill_ranks(void)
{
    for (int i = 0; i < bench_nranks; i++)
        if (bench_pids[i] > 0) kill(bench_pids[i], SIGKILL);
}

static void on_signal(int sig)
{
    (void)sig;
    kill_ranks(); /* reaped by the main loop, which then cleans up */
}

static int rm_cb(const char *path, const struct stat *sb, int flag,
                 struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* --kill: recovery latency and the healthy-path cost of fault tolerance    */
/* ------------------------------------------------------------------------ */

#define KILL_TRIAL_S 30        /* a trial that takes longer has failed */
#define KILL_DELAY_MIN_US 1000 /* kill 1..50 ms into the allreduce loop */
#define KILL_DELAY_MAX_US 50000

/* One trial's state, shared with the ranks (MAP_SHARED before fork). */
struct kill_shm {
    int started[BENCH_MAX_RANKS];
    int alive, done;
    int64_t t_ret_ns[BENCH_MAX_RANKS]; /* the interrupted call returned */
    int status[BENCH_MAX_RANKS];       /* a failed call's status */
    int64_t wrong[BENCH_MAX_RANKS];    /* wrong elements, every call */
    char err[BENCH_MAX_RANKS][160];
};

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static uint64_t kill_rng(uint64_t *s)
{
    uint64_t x = (*s += 0x9E3779B97F4A7C15ULL);
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

/* Leave only once every survivor is through: a peer that goes away early
 * would look like one more failure to ranks still in their last call. */
static void kill_rank_finish(struct kill_shm *sh)
{
    __atomic_add_fetch(&sh->done, 1, __ATOMIC_SEQ_CST);
    int64_t t0 = now_ns();
    while (__atomic_load_n(&sh->done, __ATOMIC_SEQ_CST) <
               __atomic_load_n(&sh->alive, __ATOMIC_SEQ_CST) &&
           now_ns() - t0 < (int64_t)KILL_TRIAL_S * 1000000000)
        usleep(1000);
}

/* A rank of one trial: allreduce of ones until the group has seen a view
 * change; the return time of the call in which this rank saw it goes to
 * `sh`, and every result is checked against the op view's active count. */
static int kill_rank(const struct bench_opts *o, struct kill_shm *sh,
                     const char *dir, int rank)
{
    char *err = sh->err[rank];
    size_t errcap = sizeof(sh->err[0]);
    mc_store_h store;
    mc_status_t st = mc_store_file_create(dir, &store);
    if (st != MC_OK) {
        snprintf(err, errcap, "store: %s", mc_last_error());
        return 1;
    }
    mc_comm_config_t cfg;
    mc_comm_config_init(&cfg);
    cfg.name = "kill";
    cfg.transport = o->transport;
    cfg.ft = 1;
    cfg.auto_recover = 1;
    cfg.timeout_ms = 20000;
    cfg.init_timeout_ms = 30000;
    mc_comm_h comm;
    if ((st = mc_comm_create(rank, o->nranks, store, &cfg, &comm)) != MC_OK) {
        snprintf(err, errcap, "mc_comm_create: %s: %s", mc_status_str(st),
                 mc_last_error());
        mc_store_destroy(store);
        return 1;
    }
    if (o->kill_rss_mb) {
        size_t len = (size_t)o->kill_rss_mb << 20;
        char *m = mmap(NULL, len, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) {
            snprintf(err, errcap, "--kill-rss: mmap of %d MiB: %s",
                     o->kill_rss_mb, strerror(errno));
            mc_comm_destroy(comm);
            mc_store_destroy(store);
            return 1;
        }
        (void)madvise(m, len, MADV_NOHUGEPAGE); /* as a heap's pages */
        memset(m, 1, len); /* held until the rank exits */
    }
    size_t count = o->kill_bytes / sizeof(float);
    if (!count) count = 1;
    float *s = malloc(count * sizeof(float));
    float *r = malloc(count * sizeof(float));
    int rc = 1;
    if (!s || !r) {
        snprintf(err, errcap, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < count; i++)
        s[i] = 1.0f;
    memset(r, 0, count * sizeof(float));
    if ((st = mc_comm_barrier(comm)) != MC_OK) {
        snprintf(err, errcap, "start barrier: %s: %s", mc_status_str(st),
                 mc_comm_last_error(comm));
        goto out;
    }
    __atomic_store_n(&sh->started[rank], 1, __ATOMIC_RELEASE);
    /*
     * Ranks may see the view change in different calls: one whose call
     * completed in the old view adopts the change as that call returns,
     * while the others, already past it, see it in the next call. So
     * element 0 carries "I have seen it" (+1000) and everyone stops after
     * the first call whose sum says someone had: the same call everywhere.
     */
    int64_t t0 = now_ns();
    int seen = 0;
    for (;;) {
        s[0] = seen ? 1001.0f : 1.0f;
        uint64_t vc = mc_comm_view_changes(comm);
        st = mc_comm_allreduce(comm, s, r, count, MC_FLOAT32, MC_SUM);
        int64_t t = now_ns();
        if (st != MC_OK) {
            sh->status[rank] = st;
            snprintf(err, errcap, "allreduce: %s: %s", mc_status_str(st),
                     mc_comm_last_error(comm));
            break;
        }
        int nact = 0;
        mc_comm_op_view(comm, NULL, NULL, &nact);
        int64_t wrong = 0;
        for (size_t i = 1; i < count; i++)
            wrong += r[i] != (float)nact;
        float flags = r[0] - (float)nact; /* 1000 per rank that had seen it */
        if (flags != 1000.0f * (int)(flags / 1000.0f)) wrong++;
        sh->wrong[rank] += wrong;
        if (!seen && mc_comm_view_changes(comm) != vc) {
            seen = 1;
            __atomic_store_n(&sh->t_ret_ns[rank], t, __ATOMIC_RELEASE);
        }
        if (flags >= 1000.0f) {
            if (seen)
                rc = 0;
            else
                snprintf(err, errcap,
                         "peers saw a view change, this rank "
                         "did not");
            break;
        }
        if (t - t0 > (int64_t)KILL_TRIAL_S * 1000000000) {
            snprintf(err, errcap, "no view change within %d s", KILL_TRIAL_S);
            break;
        }
    }
out:
    kill_rank_finish(sh);
    mc_comm_destroy(comm);
    mc_store_destroy(store);
    free(s);
    free(r);
    return rc;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of a sorted array. */
static double pctl(const double *v, int n, double p)
{
    if (n <= 0) return 0;
    int i = (int)ceil(p / 100.0 * n) - 1;
    if (i < 0) i = 0;
    if (i >= n) i = n - 1;
    return v[i];
}

/* Wait for every rank, at most until `deadline_ns`; SIGKILL the rest then.
 * Returns how many were still running at the deadline. */
static int reap_until(pid_t *pids, int *wst, int n, int64_t deadline_ns)
{
    int left = 0;
    for (int i = 0; i < n; i++)
        left += pids[i] > 0;
    while (left > 0) {
        int st;
        pid_t p = waitpid(-1, &st, WNOHANG);
        if (p > 0) {
            for (int i = 0; i < n; i++)
                if (pids[i] == p) {
                    pids[i] = 0;
                    wst[i] = st;
                    left--;
                }
            continue;
        }
        if (now_ns() > deadline_ns) break;
        usleep(200);
    }
    int late = left;
    for (int i = 0; i < n; i++)
        if (pids[i] > 0) {
            kill(pids[i], SIGKILL);
            waitpid(pids[i], &wst[i], 0);
            pids[i] = 0;
        }
    return late;
}

/* One trial. Fills lat_ms[] with the survivors' latencies (ms) and *nlat;
 * returns 0, or 1 with the reason in why. */
static int kill_trial(const struct bench_opts *o, struct kill_shm *sh,
                      uint64_t *rng, int trial, double *lat_ms, int *nlat,
                      int *victim_p, char *why, size_t cap)
{
    int n = o->nranks;
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/t%d", o->dir, trial);
    if (mkdir(dir, 0700) != 0) {
        fprintf(stderr, "mooncake-bench: mkdir %s: %s\n", dir, strerror(errno));
        snprintf(why, cap, "mkdir failed");
        return 1;
    }
    memset(sh, 0, sizeof(*sh));
    sh->alive = n;
    int victim = (int)(kill_rng(rng) % (uint64_t)n);
    int64_t delay_us =
        KILL_DELAY_MIN_US +
        (int64_t)(kill_rng(rng) %
                  (uint64_t)(KILL_DELAY_MAX_US - KILL_DELAY_MIN_US + 1));
    pid_t pids[BENCH_MAX_RANKS] = {0};
    int wst[BENCH_MAX_RANKS] = {0};
    *victim_p = victim;
    *nlat = 0;
    fflush(NULL);
    for (int r = 0; r < n; r++) {
        pid_t p = fork();
        if (p == 0) {
            int res = kill_rank(o, sh, dir, r);
            fflush(NULL);
            _exit(res);
        }
        if (p < 0) {
            snprintf(why, cap, "fork: %s", strerror(errno));
            reap_until(pids, wst, n, 0);
            nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
            return 1;
        }
        pids[r] = p;
        bench_pids[r] = p;
    }
    int64_t deadline = now_ns() + (int64_t)KILL_TRIAL_S * 1000000000;
    int ok = 1;
    for (int r = 0; r < n && ok; r++)
        while (!__atomic_load_n(&sh->started[r], __ATOMIC_ACQUIRE)) {
            if (now_ns() > deadline || waitpid(pids[r], NULL, WNOHANG)) {
                ok = 0;
                break;
            }
            usleep(100);
        }
    int64_t t_kill = 0;
    if (ok) {
        usleep((useconds_t)delay_us);
        __atomic_sub_fetch(&sh->alive, 1, __ATOMIC_SEQ_CST);
        t_kill = now_ns();
        kill(pids[victim], SIGKILL);
    }
    int late = reap_until(pids, wst, n, deadline);
    for (int r = 0; r < n; r++)
        bench_pids[r] = 0;
    nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    if (!ok) {
        int r = 0;
        while (r < n && sh->started[r])
            r++;
        snprintf(why, cap, "rank %d did not start its loop%s%s", r,
                 sh->err[r][0] ? ": " : "", sh->err[r]);
        return 1;
    }
    why[0] = '\0';
    for (int r = 0; r < n; r++) {
        if (r == victim) continue;
        size_t len = strlen(why);
        if (len + 80 >= cap) break;
        if (!sh->t_ret_ns[r]) {
            snprintf(why + len, cap - len, "%srank %d: %s", len ? "; " : "", r,
                     sh->err[r][0] ? sh->err[r]
                     : late        ? "no return within the trial limit"
                                   : "no view change seen");
            continue;
        }
        if (sh->status[r] != MC_OK || sh->wrong[r] || sh->err[r][0] ||
            !WIFEXITED(wst[r]) || WEXITSTATUS(wst[r]) != 0) {
            snprintf(why + len, cap - len,
                     "%srank %d: %s, %" PRId64 " wrong elements, wait status "
                     "0x%x%s%s",
                     len ? "; " : "", r,
                     mc_status_str((mc_status_t)sh->status[r]), sh->wrong[r],
                     wst[r], sh->err[r][0] ? ", " : "", sh->err[r]);
            continue;
        }
        lat_ms[(*nlat)++] = (double)(sh->t_ret_ns[r] - t_kill) / 1e6;
    }
    return why[0] != '\0';
}

/* Healthy path: busbw of --ft-op (allreduce) with FT on and off, two
 * communicators in the same rank processes, runs alternating so drift hits
 * both alike. */
static int ftc_rank(const struct bench_opts *o, const char *dir, int rank)
{
    const uint64_t *sizes = o->ft_sizes;
    const int nsizes = o->ft_nsizes;
    struct bench_opts ao = *o;
    ao.op = o->ft_op;
    ao.dtype = MC_FLOAT32;
    ao.redop = MC_SUM;
    ao.root = 0;
    struct rank_ctx c[2];
    mc_store_h store;
    mc_status_t st = mc_store_file_create(dir, &store);
    if (st != MC_OK) {
        fprintf(stderr, "mooncake-bench: rank %d: store: %s\n", rank,
                mc_last_error());
        return 1;
    }
    size_t bytes = 0;
    for (int si = 0; si < nsizes; si++)
        if (sizes[si] > bytes) bytes = sizes[si];
    unsigned char *sb = malloc(bytes), *rb = malloc(bytes);
    if (!sb || !rb) {
        fprintf(stderr, "mooncake-bench: rank %d: out of memory\n", rank);
        _exit(1);
    }
    memset(sb, 0, bytes);
    memset(rb, 0, bytes);
    for (int f = 0; f < 2; f++) { /* c[1]: FT on, c[0]: FT off */
        c[f] = (struct rank_ctx){.o = &ao, .rank = rank, .n = o->nranks};
        c[f].esz = mc_dtype_size(ao.dtype);
        c[f].send = sb;
        c[f].recv = rb;
        pattern_init(&c[f].pat, &ao);
        mc_comm_config_t cfg;
        mc_comm_config_init(&cfg);
        cfg.name = f ? "ft1" : "ft0";
        cfg.transport = o->transport;
        cfg.ft = f;
        if ((st = mc_comm_create(rank, o->nranks, store, &cfg, &c[f].comm)) !=
            MC_OK)
            die(&c[f], st, "mc_comm_create");
    }
    for (int si = 0; si < nsizes; si++) {
        struct layout l;
        layout_for(&c[0], sizes[si], &l);
        for (int ip = 0; ip < (has_inplace(o->ft_op) ? 2 : 1); ip++) {
            double best[2] = {0, 0};
            for (int rep = 0; rep < o->ft_reps; rep++)
                for (int k = 0; k < 2; k++) {
                    int f = rep & 1 ? 1 - k : k;
                    fill_inputs(&c[f], &l, ip);
                    double t = time_op(&c[f], &l, ip);
                    if (best[f] == 0 || t < best[f]) best[f] = t;
                }
            if (rank != 0) continue;
            double factor = busbw_factor(o->ft_op, o->nranks), bw[2];
            char ts[2][16];
            for (int f = 0; f < 2; f++) {
                bw[f] =
                    best[f] > 0 ? (double)l.bytes / 1e3 / best[f] * factor : 0;
                time_str(ts[f], best[f]);
            }
            printf("  %10zu  %12s  %9s  %7.2f  %9s  %7.2f  %6.3f\n", l.bytes,
                   ip ? "in-place" : "out-of-place", ts[1], bw[1], ts[0], bw[0],
                   bw[0] > 0 ? bw[1] / bw[0] : 0.0);
            fflush(stdout);
        }
    }
    for (int f = 0; f < 2; f++)
        if ((st = mc_comm_barrier(c[f].comm)) != MC_OK)
            die(&c[f], st, "final barrier");
    int64_t done = 0;
    if ((st = mc_store_add(store, "ftc/done", 1, &done)) != MC_OK)
        die(&c[0], st, "mc_store_add");
    for (int64_t t0 = now_us(); done < o->nranks; usleep(1000)) {
        if (now_us() - t0 > 60 * 1000000LL) break;
        if ((st = mc_store_add(store, "ftc/done", 0, &done)) != MC_OK)
            die(&c[0], st, "mc_store_add");
    }
    for (int f = 0; f < 2; f++)
        mc_comm_destroy(c[f].comm);
    mc_store_destroy(store);
    free(sb);
    free(rb);
    return 0;
}

/* The floor of one confirmation between two processes of this host: the
 * round trip of a cache line through shared memory (each side spins on
 * the other's word), median of 5 runs of 100000. A final barrier costs at
 * least half of it (one-way), whatever the engine does. Returns ns, or a
 * negative value if it could not be measured. */
static double pingpong_ns(void)
{
    enum { PP_ROUNDS = 100000, PP_RUNS = 5 };
    struct pp {
        _Alignas(128) volatile uint64_t ping;
        _Alignas(128) volatile uint64_t pong;
    };
    struct pp *w = mmap(NULL, sizeof(struct pp), PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (w == MAP_FAILED) return -1;
    memset((void *)w, 0, sizeof(*w));
    fflush(NULL);
    pid_t p = fork();
    if (p < 0) {
        munmap(w, sizeof(*w));
        return -1;
    }
    if (p == 0) {
        for (uint64_t i = 1; i <= (uint64_t)PP_ROUNDS * PP_RUNS; i++) {
            while (__atomic_load_n(&w->ping, __ATOMIC_ACQUIRE) != i)
                ;
            __atomic_store_n(&w->pong, i, __ATOMIC_RELEASE);
        }
        _exit(0);
    }
    double ns[PP_RUNS];
    uint64_t i = 0;
    for (int run = 0; run < PP_RUNS; run++) {
        int64_t t0 = now_ns();
        for (int k = 0; k < PP_ROUNDS; k++) {
            i++;
            __atomic_store_n(&w->ping, i, __ATOMIC_RELEASE);
            while (__atomic_load_n(&w->pong, __ATOMIC_ACQUIRE) != i)
                ;
        }
        ns[run] = (double)(now_ns() - t0) / PP_ROUNDS;
    }
    waitpid(p, NULL, 0);
    munmap(w, sizeof(*w));
    /* the median: a VM's two vCPUs may sit on one host core's SMT
     * siblings for a while, which shares the L1 and is no floor of ours */
    for (int a = 1; a < PP_RUNS; a++)
        for (int b = a; b > 0 && ns[b] < ns[b - 1]; b--) {
            double t = ns[b];
            ns[b] = ns[b - 1];
            ns[b - 1] = t;
        }
    return ns[PP_RUNS / 2];
}

/* The floor of a 2-rank exchange over loopback TCP, with and without the
 * pair rule's confirmation: two processes each send 8 bytes and read the
 * other's, both spinning (non-blocking reads), 20000 rounds after 2000 of
 * warm-up. With `held`, each side also acknowledges what it read at once
 * (TCP_QUICKACK) and waits until the kernel reports its own bytes
 * acknowledged (SIOCOUTQ 0) before the next round: what a rank with fault
 * tolerance must wait for before it returns (docs/design.md, "Pair
 * confirmation over TCP"). The frames of both sides cross, so the data
 * cannot carry the acknowledgement: one pure ACK per round that the plain
 * exchange never sends. Returns us per round, or a negative value. */
static double tcp_floor_us(int held)
{
    enum { TF_ROUNDS = 20000, TF_WARM = 2000 };
    int one = 1, ls = socket(AF_INET, SOCK_STREAM, 0), fd = -1;
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    if (ls < 0) return -1;
    if (bind(ls, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        getsockname(ls, (struct sockaddr *)&a, &al) != 0 || listen(ls, 1) != 0) {
        close(ls);
        return -1;
    }
    fflush(NULL);
    pid_t p = fork();
    if (p < 0) {
        close(ls);
        return -1;
    }
    int child = p == 0;
    if (child) {
        close(ls);
        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0)
            _exit(1);
    } else {
        fd = accept(ls, NULL, NULL);
        close(ls);
        if (fd < 0) {
            kill(p, SIGKILL);
            waitpid(p, NULL, 0);
            return -1;
        }
    }
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    char b[8] = {0};
    int64_t t0 = 0;
    int bad = 0;
    for (int i = 0; i < TF_WARM + TF_ROUNDS && !bad; i++) {
        if (i == TF_WARM) t0 = now_ns();
        if (send(fd, b, sizeof(b), 0) != (ssize_t)sizeof(b)) bad = 1;
        for (size_t got = 0; got < sizeof(b) && !bad;) {
            ssize_t r = recv(fd, b + got, sizeof(b) - got, MSG_DONTWAIT);
            if (r > 0)
                got += (size_t)r;
            else if (r == 0 || (errno != EAGAIN && errno != EINTR))
                bad = 1;
        }
        if (held && !bad) {
            int q = 1;
            (void)setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
            while (!bad && q != 0)
                if (ioctl(fd, SIOCOUTQ, &q) != 0) bad = 1;
        }
    }
    double us = (double)(now_ns() - t0) / 1e3 / TF_ROUNDS;
    close(fd);
    if (child) _exit(bad);
    int wst = 0;
    waitpid(p, &wst, 0);
    return bad || !WIFEXITED(wst) || WEXITSTATUS(wst) ? -1 : us;
}

static int ftc_run(const struct bench_opts *o)
{
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/ftc", o->dir);
    if (mkdir(dir, 0700) != 0) {
        fprintf(stderr, "mooncake-bench: mkdir %s: %s\n", dir, strerror(errno));
        return 1;
    }
    pid_t pids[BENCH_MAX_RANKS] = {0};
    int wst[BENCH_MAX_RANKS] = {0};
    fflush(NULL);
    int failed = 0;
    for (int r = 0; r < o->nranks; r++) {
        pid_t p = fork();
        if (p == 0) {
            int res = ftc_rank(o, dir, r);
            fflush(NULL);
            _exit(res);
        }
        if (p < 0) {
            fprintf(stderr, "mooncake-bench: fork: %s\n", strerror(errno));
            failed = 1;
            break;
        }
        pids[r] = bench_pids[r] = p;
    }
    /* one rank failing leaves the others waiting for it: stop them all */
    while (!failed) {
        int st;
        pid_t p = waitpid(-1, &st, 0);
        if (p < 0) {
            if (errno == EINTR) continue;
            break;
        }
        for (int r = 0; r < o->nranks; r++)
            if (pids[r] == p) {
                pids[r] = bench_pids[r] = 0;
                if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) failed = 1;
            }
    }
    reap_until(pids, wst, o->nranks, 0);
    for (int r = 0; r < o->nranks; r++)
        bench_pids[r] = 0;
    nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    return failed;
}

static void print_machine(int argc, char **argv)
{
    printf("# command:");
    for (int i = 0; i < argc; i++)
        printf(" %s", argv[i]);
    char host[128] = "?", cpu[128] = "?";
    gethostname(host, sizeof(host) - 1);
    host[sizeof(host) - 1] = '\0';
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof(line), f)) {
            char *colon = strchr(line, ':');
            if (strncmp(line, "model name", 10) != 0 || !colon) continue;
            snprintf(cpu, sizeof(cpu), "%s", colon + 2);
            cpu[strcspn(cpu, "\n")] = '\0';
            break;
        }
        fclose(f);
    }
    double load[3] = {0, 0, 0};
    if (getloadavg(load, 3) < 0) load[0] = load[1] = load[2] = -1;
    printf("\n# machine: %s, nproc %ld, cpu %s, load average %.2f %.2f "
           "%.2f\n",
           host, sysconf(_SC_NPROCESSORS_ONLN), cpu, load[0], load[1], load[2]);
}

static int kill_main(const struct bench_opts *o, int argc, char **argv)
{
    static const char *tnames[] = {"auto", "tcp", "shm"};
    uint64_t seed =
        o->seed_set ? o->seed : (uint64_t)now_ns() ^ ((uint64_t)getpid() << 32);
    printf("# mooncake-bench %d.%d --kill: ranks %d  transport %s  allreduce "
           "float32 sum of %" PRIu64 " B  kills %d  rss %d MiB  seed 0x%" PRIx64
           "\n",
           MC_VERSION_MAJOR, MC_VERSION_MINOR, o->nranks,
           (unsigned)o->transport < 3 ? tnames[o->transport] : "?",
           o->kill_bytes, o->kills, o->kill_rss_mb, seed);
    print_machine(argc, argv);
    fflush(stdout);

    struct kill_shm *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
                               MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    double *per_kill = calloc((size_t)o->kills + 1, sizeof(double));
    double *first = calloc((size_t)o->kills + 1, sizeof(double));
    double *all =
        calloc(((size_t)o->kills + 1) * (size_t)o->nranks, sizeof(double));
    double *lat = calloc((size_t)o->nranks, sizeof(double));
    if (sh == MAP_FAILED || !per_kill || !first || !all || !lat) {
        fprintf(stderr, "mooncake-bench: out of memory\n");
        return 1;
    }
    uint64_t rng = seed;
    int nk = 0, nall = 0, nfailed = 0;
    int64_t t_start = now_us();
    for (int t = 0; t < o->kills; t++) {
        int nlat = 0, victim = -1;
        char why[1024];
        if (kill_trial(o, sh, &rng, t, lat, &nlat, &victim, why, sizeof(why))) {
            nfailed++;
            printf("# trial %d (victim rank %d) FAILED: %s\n", t, victim, why);
            fflush(stdout);
            continue;
        }
        double mx = 0, mn = 0;
        for (int i = 0; i < nlat; i++) {
            all[nall++] = lat[i];
            if (i == 0 || lat[i] > mx) mx = lat[i];
            if (i == 0 || lat[i] < mn) mn = lat[i];
        }
        per_kill[nk] = mx;
        first[nk] = mn;
        nk++;
    }
    double kill_s = (double)(now_us() - t_start) / 1e6;
    munmap(sh, sizeof(*sh));
    qsort(per_kill, (size_t)nk, sizeof(double), cmp_double);
    qsort(first, (size_t)nk, sizeof(double), cmp_double);
    qsort(all, (size_t)nall, sizeof(double), cmp_double);
    if (o->kills) {
        printf(
            "#\n# Recovery: SIGKILL one random rank %d-%d ms into the loop; "
            "latency = kill() to the\n# return of the survivors' interrupted "
            "call (CLOCK_MONOTONIC). %d trials in %.1f s.\n",
            KILL_DELAY_MIN_US / 1000, KILL_DELAY_MAX_US / 1000, o->kills,
            kill_s);
        printf("# %-30s  %7s  %10s  %10s  %10s\n", "", "samples", "median(ms)",
               "p99(ms)", "max(ms)");
        const struct {
            const char *name;
            const double *v;
            int n;
        } rows[] = {{"slowest survivor, per kill", per_kill, nk},
                    {"fastest survivor, per kill", first, nk},
                    {"every survivor", all, nall}};
        for (int i = 0; i < 3; i++)
            printf("  %-30s  %7d  %10.2f  %10.2f  %10.2f\n", rows[i].name,
                   rows[i].n, pctl(rows[i].v, rows[i].n, 50),
                   pctl(rows[i].v, rows[i].n, 99),
                   rows[i].n ? rows[i].v[rows[i].n - 1] : 0.0);
        printf("# failed trials: %d of %d\n", nfailed, o->kills);
    }
    fflush(stdout);
    free(per_kill);
    free(first);
    free(all);
    free(lat);

    int ftc_failed = 0;
    if (o->ft_compare) {
        printf("#\n# Healthy path: %s float32 sum, FT on (MOONCAKE_FT=1) "
               "vs off (0), best of %d\n# runs of %d iterations (%d warm-up), "
               "runs alternating; ratio = busbw FT=1 / FT=0\n",
               bench_op_names[o->ft_op], o->ft_reps, o->iters, o->warmup);
        double pp = pingpong_ns();
        if (pp > 0)
            printf("# floor of one confirmation between two processes: a "
                   "cache line's round\n# trip through shared memory %.0f ns "
                   "(one way %.0f ns)\n",
                   pp, pp / 2);
        if (o->transport == MC_TRANSPORT_TCP) {
            double plain = tcp_floor_us(0), held = tcp_floor_us(1);
            if (plain > 0 && held > 0)
                printf("# floor over loopback TCP, 2 processes exchanging 8 B: "
                       "%.2f us per round;\n# returning only once the own "
                       "bytes are acknowledged (the pair rule): %.2f us\n# "
                       "(at most %.2f for an 8 B FT on/off ratio at 2 ranks)\n",
                       plain, held, plain / held);
        }
        printf("# %10s  %12s  %9s  %7s  %9s  %7s  %6s\n", "size", "mode",
               "FT=1 (us)", "busbw", "FT=0 (us)", "busbw", "ratio");
        printf("# %10s  %12s  %9s  %7s  %9s  %7s  %6s\n", "(B)", "", "",
               "(GB/s)", "", "(GB/s)", "");
        fflush(stdout);
        ftc_failed = ftc_run(o);
        if (ftc_failed) printf("# FT on/off comparison FAILED\n");
    }
    return nfailed || ftc_failed ? 1 : 0;
}

int main(int argc, char **argv)
{
    struct bench_opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc) return rc > 0 ? 0 : 2;

    const char *tmp = getenv("TMPDIR");
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/mooncake-bench.XXXXXX",
             tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        fprintf(stderr, "mooncake-bench: mkdtemp %s: %s\n", dir,
                strerror(errno));
        return 1;
    }
    o.dir = dir;
    signal(SIGTERM, on_signal);
    signal(SIGHUP, on_signal);
    if (o.kill) {
        bench_nranks = o.nranks;
        rc = kill_main(&o, argc, argv);
        nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
        return rc;
    }

    fflush(NULL);
    bench_nranks = o.nranks;
    int failed = 0, wrong = 0;
    for (int r = 0; r < o.nranks; r++) {
        pid_t p = fork();
        if (p == 0) {
            int res = rank_main(&o, r);
            fflush(NULL);
            _exit(res);
        }
        if (p < 0) {
            fprintf(stderr, "mooncake-bench: fork: %s\n", strerror(errno));
            failed = 1;
            kill_ranks();
            break;
        }
        bench_pids[r] = p;
    }
    /* Ctrl-C reaches the ranks directly; the parent stays to clean up. */
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGHUP, on_signal);
    for (;;) {
        int st;
        pid_t p = waitpid(-1, &st, 0);
        if (p < 0) {
            if (errno == EINTR) continue;
            break; /* ECHILD: all reaped */
        }
        for (int i = 0; i < o.nranks; i++) {
            if (bench_pids[i] != p) continue;
            bench_pids[i] = 0;
            if (WIFEXITED(st) && WEXITSTATUS(st) == 0) break;
            if (WIFEXITED(st) && WEXITSTATUS(st) == 2) {
                wrong = 1;
                break;
            }
            if (WIFSIGNALED(st))
                fprintf(stderr, "mooncake-bench: rank %d killed by signal %d\n",
                        i, WTERMSIG(st));
            /* A failed rank would leave the others waiting for it. */
            if (!failed) kill_ranks();
            failed = 1;
            break;
        }
    }
    nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    return failed || wrong ? 1 : 0;
}
