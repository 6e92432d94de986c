"""mooncake: a fault-tolerant collective-communication engine, as a
torch.distributed backend.

    import mooncake                       # registers the backend "mooncake"
    import torch.distributed as dist
    dist.init_process_group(backend="mooncake", ...)

The backend is registered for the ``cpu`` and ``cuda`` devices (``barrier()``
sends a CPU tensor even in CUDA jobs). CUDA tensors are staged through pinned
host memory. Environment variables ``MOONCAKE_*`` (transport, timeouts, log
level) apply to every communicator; the timeout given to
``init_process_group``/``new_group`` sets the init and per-operation timeouts
unless ``MOONCAKE_TIMEOUT_MS``/``MOONCAKE_INIT_TIMEOUT_MS`` are set.

Rank failures (see ``mooncake.fault``): by default (auto mode) a collective
interrupted by a failed rank re-runs over the survivors and succeeds;
``get_active_ranks``/``get_epoch`` show the current view. In manual mode
(``MOONCAKE_AUTO_RECOVER=0`` or ``set_auto_recover(False, group)``) it
raises ``RankFailureError`` (``.failed_ranks``) until ``recover(group)``.
"""

import atexit

import torch  # noqa: F401  (loads libtorch before our extension)
import torch.distributed as _dist

from . import _C
from ._C import MooncakeBackend, create_backend
from .fault import (EvictedError, RankFailureError, get_active_ranks,
                    get_auto_recover, get_epoch, get_failed_ranks,
                    get_joined_ranks, admit_joiners, recover,
                    set_auto_recover, shrink, as_fault_error)

__version__ = _C.__version__
BACKEND_NAME = "mooncake"

__all__ = ["BACKEND_NAME", "MooncakeBackend", "create_backend", "__version__",
           "RankFailureError", "EvictedError", "get_active_ranks",
           "get_epoch", "get_failed_ranks", "get_joined_ranks", "admit_joiners",
           "recover",
           "set_auto_recover",
           "get_auto_recover", "shrink", "as_fault_error"]


def _register():
    # Registering twice raises inside torch (the name becomes an attribute of
    # Backend); importing this module again must stay harmless.
    if BACKEND_NAME.upper() in _dist.Backend._plugins:
        return
    _dist.Backend.register_backend(
        BACKEND_NAME, _create, extended_api=False, devices=["cpu", "cuda"]
    )


def _create(store, rank, size, timeout):
    # the default group is made while torch says "not initialized" yet;
    # MOONCAKE_INITIAL_SIZE and MOONCAKE_JOIN apply to it only
    return create_backend(store, rank, size, timeout,
                          world=not _dist.is_initialized())


_register()

# Let completion callbacks still running Python (Future.then) finish before
# the interpreter finalizes; see waitCallbacksIdle in the shim.
atexit.register(_C._quiesce, 5000)
