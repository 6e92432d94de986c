"""Views and fault tolerance from Python: which ranks are active, the view
epoch, manual recovery, and the exceptions a failed collective raises.

Every function takes a ``group`` (default: the default process group) that
must use the mooncake backend; ranks are group-local rank slots, which keep
their ids when ranks fail (``dist.get_world_size()`` stays the number of
slots).
"""

import torch
import torch.distributed as _dist

from . import _C

__all__ = [
    "RankFailureError", "EvictedError", "get_active_ranks", "get_epoch",
    "get_failed_ranks", "get_joined_ranks", "admit_joiners", "recover",
    "set_auto_recover",
    "get_auto_recover",
    "shrink",
    "as_fault_error",
]


class RankFailureError(_dist.DistBackendError):
    """A collective failed because ranks failed while the group is in manual
    recovery mode. ``failed_ranks`` lists the removed ranks (group-local).
    Every later collective of the group raises it too until
    ``mooncake.recover(group)`` accepts the new view."""

    def __init__(self, message="", failed_ranks=()):
        super().__init__(message)
        self.failed_ranks = [int(r) for r in failed_ranks]

    def __reduce__(self):
        return (type(self), (str(self), self.failed_ranks))


class EvictedError(_dist.DistBackendError):
    """This rank was removed from the group (for example by ``shrink`` or
    after being suspected); it must rejoin as a new process."""

    def __reduce__(self):
        return (type(self), (str(self),))


_C._set_error_types(RankFailureError, EvictedError)


def as_fault_error(exc, group=None):
    """The mooncake fault error behind ``exc``, or None.

    A collective that torch itself waits for on the caller's behalf (DDP's
    gradient all_reduce inside ``loss.backward()``) fails with a plain
    ``torch.distributed.DistBackendError``: torch rethrows every backend
    error as that type there, so ``RankFailureError`` and its
    ``failed_ranks`` do not survive the trip. Pass such an exception here:
    a ``RankFailureError`` or ``EvictedError`` comes back as it is; a
    ``DistBackendError`` whose message says that a mooncake collective
    failed because ranks failed (manual mode, after the survivors agreed on
    a new view) comes back as a ``RankFailureError`` with the group's
    failed ranks, one that says this rank was evicted as an
    ``EvictedError``; anything else gives None. ``group`` is the group of
    the failed collective (DDP's ``process_group``; default: the default
    group), whose failed ranks it reads. ::

        try:
            loss.backward()
        except dist.DistBackendError as e:
            err = mooncake.as_fault_error(e)
            if not isinstance(err, mooncake.RankFailureError):
                raise
            mooncake.recover()
    """
    if isinstance(exc, (RankFailureError, EvictedError)):
        return exc
    if not isinstance(exc, _dist.DistBackendError):
        return None
    text = str(exc)
    if "mooncake " not in text:
        return None
    if " failed (evicted)" in text:
        return EvictedError(text)
    p2p = any(f"mooncake {op} failed" in text for op in ("send", "recv"))
    if " failed (peer failed)" in text and not p2p:
        # as the shim decides: a collective's peer failure after a view
        # change (manual mode; in auto mode the one case the README names)
        failed = list(_backend(group)._failed_ranks())
        if failed:
            return RankFailureError(text, failed)
    return None


def _backend(group):
    """The MooncakeBackend object of `group` (default group when None)."""
    if group is None:
        if not _dist.is_initialized():
            raise ValueError("mooncake: the default process group is not "
                             "initialized; call init_process_group first")
        group = _dist.distributed_c10d._get_default_group()
    if group is _dist.GroupMember.NON_GROUP_MEMBER:
        raise ValueError("mooncake: this rank is not a member of the group")
    if not isinstance(group, _dist.ProcessGroup):
        raise TypeError(f"mooncake: expected a torch.distributed "
                        f"ProcessGroup, got {type(group).__name__}")
    found = []
    for dev in ("cpu", "cuda"):
        try:
            b = group._get_backend(torch.device(dev))
        except RuntimeError:
            continue
        # TORCH_DISTRIBUTED_DEBUG=DETAIL wraps every backend in a
        # _ProcessGroupWrapper (its checks run over gloo)
        b = getattr(b, "wrapped_pg", b)
        if isinstance(b, _C.MooncakeBackend):
            return b
        found.append(type(b).__name__)
    try:
        name = group.group_name
    except RuntimeError:  # a ProcessGroup made by hand has none
        name = "<unnamed>"
    raise TypeError(f"mooncake: process group {name!r} does not use the "
                    f"mooncake backend (found: {', '.join(found) or 'none'})")


def get_active_ranks(group=None):
    """Active ranks of the group's current view, ascending."""
    return list(_backend(group)._active_ranks())


def get_epoch(group=None):
    """Epoch of the group's current view: 1 at start, +1 per view change."""
    return int(_backend(group)._epoch())


def get_failed_ranks(group=None):
    """Ranks removed by the group's most recent view change ([] if none)."""
    return list(_backend(group)._failed_ranks())


def get_joined_ranks(group=None):
    """Ranks added by the group's most recent view change: replacement
    processes (MOONCAKE_JOIN=1) or joiners of reserved slots. On a joiner,
    right after init_process_group, the ranks admitted with it (itself
    included). A member that sees the view grow typically broadcasts its
    state to them (see examples/elastic_training.py)."""
    return list(_backend(group)._joined_ranks())


def admit_joiners(group=None):
    """Collective over the group's members: admit the replacement
    processes waiting for free slots (started with MOONCAKE_JOIN=1 and
    rank=<slot>) and return their ranks ([] if none waited). Call it where
    a newcomer can be brought up to date, e.g. at the end of a training
    step, then broadcast the state to it from a rank that is not new; the
    joiner's init_process_group returns at that point and its first
    collective must be that broadcast. With MOONCAKE_ADMIT_AUTO=1 joiners
    are admitted after any collective instead."""
    return list(_backend(group)._admit_joiners())


def recover(group=None):
    """Manual mode: accept the view the survivors agreed on after a failure
    and return its active ranks. Every survivor calls it; a no-op when
    nothing is pending. Raises EvictedError on a removed rank."""
    return list(_backend(group)._recover())


def set_auto_recover(on, group=None):
    """Auto (True: a collective interrupted by a failure re-runs over the
    survivors and succeeds) or manual (False: it raises RankFailureError)
    recovery for later failures of this group. The default comes from
    MOONCAKE_AUTO_RECOVER (1) when the group is created."""
    _backend(group)._set_auto_recover(bool(on))


def get_auto_recover(group=None):
    """Whether the group recovers automatically from rank failures."""
    return bool(_backend(group)._auto_recover())


def shrink(ranks, group=None):
    """Remove `ranks` from the group's view (like ncclCommShrink). Every rank
    that stays calls it with the same list and adopts epoch + 1; a listed
    rank that calls it is evicted (its later operations raise
    EvictedError)."""
    given = [int(r) for r in ranks]
    rs = sorted(set(given))
    if len(rs) != len(given):
        raise ValueError(f"mooncake shrink: duplicate ranks in {given}")
    _backend(group)._shrink(rs)
