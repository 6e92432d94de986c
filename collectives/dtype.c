/* Names and sizes of data types, reduction operators and collectives. */
#include "coll.h"
#include "mooncake/mooncake.h"

/* Indexed by enum value; the static asserts keep the tables in step with
 * the enums when one of them grows. */
static const struct {
    const char *name;
    size_t size;
} mc_dtypes[] = {
    [MC_INT8] = {"int8", 1},
    [MC_UINT8] = {"uint8", 1},
    [MC_INT16] = {"int16", 2},
    [MC_UINT16] = {"uint16", 2},
    [MC_INT32] = {"int32", 4},
    [MC_UINT32] = {"uint32", 4},
    [MC_INT64] = {"int64", 8},
    [MC_UINT64] = {"uint64", 8},
    [MC_BOOL] = {"bool", 1},
    [MC_FLOAT16] = {"float16", 2},
    [MC_BFLOAT16] = {"bfloat16", 2},
    [MC_FLOAT32] = {"float32", 4},
    [MC_FLOAT64] = {"float64", 8},
    [MC_FLOAT8_E4M3] = {"float8_e4m3", 1},
    [MC_FLOAT8_E5M2] = {"float8_e5m2", 1},
};
_Static_assert(sizeof(mc_dtypes) / sizeof(mc_dtypes[0]) == MC_DTYPE_COUNT,
               "mc_dtypes must name every mc_dtype_t");

static const char *const mc_redops[] = {
    [MC_SUM] = "sum", [MC_PROD] = "prod", [MC_MIN] = "min", [MC_MAX] = "max",
    [MC_AVG] = "avg", [MC_BAND] = "band", [MC_BOR] = "bor", [MC_BXOR] = "bxor",
};
_Static_assert(sizeof(mc_redops) / sizeof(mc_redops[0]) == MC_REDOP_COUNT,
               "mc_redops must name every mc_redop_t");

static const char *const mc_colls[] = {
    [MC_COLL_NONE] = "none",
    [MC_COLL_ALLREDUCE] = "allreduce",
    [MC_COLL_ALLGATHER] = "allgather",
    [MC_COLL_ALLGATHERV] = "allgatherv",
    [MC_COLL_REDUCE_SCATTER] = "reduce_scatter",
    [MC_COLL_REDUCE_SCATTERV] = "reduce_scatterv",
    [MC_COLL_BROADCAST] = "broadcast",
    [MC_COLL_REDUCE] = "reduce",
    [MC_COLL_GATHER] = "gather",
    [MC_COLL_SCATTER] = "scatter",
    [MC_COLL_ALLTOALL] = "alltoall",
    [MC_COLL_ALLTOALLV] = "alltoallv",
    [MC_COLL_BARRIER] = "barrier",
};
_Static_assert(sizeof(mc_colls) / sizeof(mc_colls[0]) == MC_COLL_COUNT,
               "mc_colls must name every mc_coll_t");

/* Enums may hold any int (values come from callers and from the wire), so
 * compare as unsigned to reject negatives too. */
size_t mc_dtype_size(mc_dtype_t dtype)
{
    if ((unsigned)dtype >= MC_DTYPE_COUNT) return 0;
    return mc_dtypes[dtype].size;
}

const char *mc_dtype_name(mc_dtype_t dtype)
{
    if ((unsigned)dtype >= MC_DTYPE_COUNT) return "invalid";
    return mc_dtypes[dtype].name;
}

const char *mc_redop_name(mc_redop_t op)
{
    if ((unsigned)op >= MC_REDOP_COUNT) return "invalid";
    return mc_redops[op];
}

const char *mc_coll_name(mc_coll_t c)
{
    if ((unsigned)c >= MC_COLL_COUNT) return "invalid";
    return mc_colls[c];
}
