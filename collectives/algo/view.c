/*
 * Collectives over a view with holes: see mc_coll_run_view in coll.h.
 * (Placeholder: full views only; the mapping for holes comes next.)
 */
#include "algo.h"

mc_status_t mc_coll_run_view(mc_cctx_t *cx)
{
    if (mc_cx_size(cx) == mc_cx_nslots(cx)) return mc_coll_run(cx);
    return mc_err(MC_ERR_UNSUPPORTED, "%s over a view with holes",
                  mc_coll_name(mc_cx_args(cx)->coll));
}
