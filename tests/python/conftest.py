"""pytest configuration for the multi-process torch.distributed tests.

Backend under test: --backend NAME, else $MOONCAKE_TEST_BACKEND, else
"mooncake".  Running the same suite with --backend gloo checks the tests
themselves against torch's reference CPU backend (cases gloo cannot run are
skipped with the reason).  $MOONCAKE_TEST_OP_TIMEOUT (seconds, default 20) is
the per-operation timeout given to every process group.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mp_harness  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--backend", default=None,
                     help="torch.distributed backend for the multi-process "
                          "tests (default: $MOONCAKE_TEST_BACKEND or "
                          "mooncake)")


def pytest_configure(config):
    b = config.getoption("--backend")
    if b:
        os.environ["MOONCAKE_TEST_BACKEND"] = b


_SELECTED = {}


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    # Remember which (module, world size, case) items survived -k / node-id
    # selection so a pool runs only those cases.
    for item in items:
        cs = getattr(item, "callspec", None)
        if cs is None or "ws" not in cs.params or "name" not in cs.params:
            continue
        key = (os.path.splitext(os.path.basename(str(item.fspath)))[0],
               cs.params["ws"])
        _SELECTED.setdefault(key, set()).add(cs.params["name"])


@pytest.fixture(scope="session")
def mp_runner():
    backend = mp_harness.get_backend()
    if backend == "mooncake":
        try:
            import mooncake  # noqa: F401
        except Exception as e:  # a failure, not a skip: the product is broken
            pytest.fail(f"backend mooncake requested but `import mooncake` "
                        f"failed: {e!r}", pytrace=False)
    r = mp_harness.Runner(backend, _SELECTED)
    yield r
    r.close()
