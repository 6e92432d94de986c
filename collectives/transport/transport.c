/* Stubs for transport slots a transport does not support (libfabric fi_no_*).
 */
#include "transport/transport.h"

#include "mc_log.h"

mc_status_t mc_tl_stub_mem_reg(mc_tl_t *tl, void *addr, size_t len,
                               mc_mr_t **mr_p)
{
    (void)tl, (void)addr, (void)len, (void)mr_p;
    return MC_ERR_UNSUPPORTED;
}

mc_status_t mc_tl_stub_mem_dereg(mc_tl_t *tl, mc_mr_t *mr)
{
    (void)tl, (void)mr;
    return MC_ERR_UNSUPPORTED;
}

mc_status_t mc_tl_stub_put(mc_tl_t *tl, int peer, const void *src, mc_mr_t *lmr,
                           uint64_t raddr, uint64_t rkey, size_t len,
                           mc_xfer_t *x)
{
    (void)tl, (void)peer, (void)src, (void)lmr, (void)raddr, (void)rkey;
    (void)len, (void)x;
    return MC_ERR_UNSUPPORTED;
}

mc_status_t mc_tl_stub_add_peer(mc_tl_t *tl, int peer, uint64_t incarnation,
                                int64_t timeout_ms)
{
    (void)tl, (void)peer, (void)incarnation, (void)timeout_ms;
    return MC_ERR_UNSUPPORTED;
}

mc_status_t mc_tl_stub_signal(mc_tl_t *tl, int peer, int slot, uint64_t value)
{
    (void)tl, (void)peer, (void)slot, (void)value;
    return MC_ERR_UNSUPPORTED;
}

mc_status_t mc_tl_stub_peek(mc_tl_t *tl, int peer, int slot, uint64_t *value_p)
{
    (void)tl, (void)peer, (void)slot, (void)value_p;
    return MC_ERR_UNSUPPORTED;
}

mc_status_t mc_tl_stub_sent_held(mc_tl_t *tl, int peer, int ch)
{
    (void)tl, (void)peer, (void)ch;
    return MC_ERR_UNSUPPORTED;
}

mc_status_t mc_tl_stub_ack_now(mc_tl_t *tl, int peer, int ch)
{
    (void)tl, (void)peer, (void)ch;
    return MC_ERR_UNSUPPORTED;
}
