// mooncake._C: the backend creator and a few helpers for Python.
#include <pybind11/chrono.h>
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>
#include <torch/python.h>

#include "mooncake_backend.hpp"

namespace py = pybind11;

namespace
{

// The package's Python exception classes (mooncake.RankFailureError,
// mooncake.EvictedError), handed over by _set_error_types at import. Owned
// references that are never released: the translator may run until the
// interpreter is gone.
PyObject *gRankFailureType = nullptr;
PyObject *gEvictedType = nullptr;

// Raises `type(msg, failed_ranks)` (or `type(msg)`); if that fails for any
// reason, a DistBackendError-compatible RuntimeError with the same text.
void raiseAs(PyObject *type, const std::string &msg,
             const std::vector<int> *failed)
{
    if (type) {
        try {
            py::object inst =
                failed ? py::reinterpret_borrow<py::object>(type)(
                             msg, py::cast(*failed))
                       : py::reinterpret_borrow<py::object>(type)(msg);
            PyErr_SetObject(type, inst.ptr());
            return;
        } catch (py::error_already_set &) {
            PyErr_Clear();
        }
    }
    PyErr_SetString(PyExc_RuntimeError, msg.c_str());
}

// Runs inside pybind11's dispatcher (GIL held) for an exception escaping
// any binding, torch's included (translators registered later are tried
// first, and torch's are registered before this module loads). Only our
// two types are handled here; anything else goes on to the next
// translator, so torch maps plain c10 errors as before.
void translate(std::exception_ptr p)
{
    if (!p) return;
    try {
        std::rethrow_exception(p);
    } catch (const mooncake::RankFailureError &e) {
        raiseAs(gRankFailureType, e.what_without_backtrace(), &e.failedRanks());
    } catch (const mooncake::EvictedError &e) {
        raiseAs(gEvictedType, e.what_without_backtrace(), nullptr);
    }
}

} // namespace

PYBIND11_MODULE(_C, m)
{
    m.doc() = "mooncake torch.distributed backend (C++ shim over libmooncake)";

    py::register_exception_translator(&translate);
    m.def(
        "_set_error_types",
        [](py::object rankFailure, py::object evicted) {
            Py_XDECREF(gRankFailureType);
            Py_XDECREF(gEvictedType);
            gRankFailureType = rankFailure.release().ptr();
            gEvictedType = evicted.release().ptr();
        },
        py::arg("rank_failure"), py::arg("evicted"),
        "Set the Python classes raised for RankFailureError (called with "
        "(message, failed_ranks)) and EvictedError (called with (message,)).");

    // The class is registered so Python sees a MooncakeBackend (a subclass
    // of torch's Backend binding) with mooncake-specific helpers.
    py::class_<mooncake::MooncakeBackend, c10d::Backend,
               c10::intrusive_ptr<mooncake::MooncakeBackend>>(m,
                                                              "MooncakeBackend")
        .def("peer_transport", &mooncake::MooncakeBackend::peerTransport,
             py::arg("peer"),
             "Name of the transport reaching `peer` (self, shm or tcp).")
        .def("_epoch", &mooncake::MooncakeBackend::epoch,
             "Epoch of the current view (1 until the first view change).")
        .def("_active_ranks", &mooncake::MooncakeBackend::activeRanks,
             "Active rank slots of the current view, ascending.")
        .def("_failed_ranks", &mooncake::MooncakeBackend::failedRanks,
             "Ranks removed by the most recent view change, ascending.")
        .def("_joined_ranks", &mooncake::MooncakeBackend::joinedRanks,
             "Ranks added by the most recent view change (joiners), "
             "ascending.")
        .def("_view_changes", &mooncake::MooncakeBackend::viewChanges,
             "Number of view changes this rank has adopted.")
        .def("_recover", &mooncake::MooncakeBackend::recover,
             py::call_guard<py::gil_scoped_release>(),
             "Manual mode: accept the new view; returns the active ranks.")
        .def("_set_auto_recover", &mooncake::MooncakeBackend::setAutoRecover,
             py::arg("on"),
             "Auto (True) or manual (False) recovery for later failures.")
        .def("_auto_recover", &mooncake::MooncakeBackend::autoRecover,
             "Whether this group recovers automatically.")
        .def("_admit_joiners", &mooncake::MooncakeBackend::admitJoiners,
             py::call_guard<py::gil_scoped_release>(),
             "Collective: admit the processes waiting for free slots; "
             "returns the ranks admitted ([] if none).")
        .def("_shrink", &mooncake::MooncakeBackend::shrinkView,
             py::arg("ranks"), py::call_guard<py::gil_scoped_release>(),
             "Remove `ranks` from the view; collective over the ranks that "
             "stay.");

    // The creator torch calls: (store, group rank, group size, timeout).
    // Rendezvous blocks until every rank joined: release the GIL so a store
    // implemented in Python (and other threads) keep running.
    m.def(
        "create_backend",
        [](const c10::intrusive_ptr<c10d::Store> &store, int rank, int size,
           const std::chrono::duration<double> &timeout, bool world) {
            auto ms =
                std::chrono::duration_cast<std::chrono::milliseconds>(timeout);
            c10::intrusive_ptr<mooncake::MooncakeBackend> b;
            {
                py::gil_scoped_release nogil;
                b = c10::make_intrusive<mooncake::MooncakeBackend>(
                    store, rank, size, ms, world);
            }
            return b;
        },
        py::arg("store"), py::arg("rank"), py::arg("size"), py::arg("timeout"),
        py::arg("world") = true);

    m.def(
        "cuda_staging",
        []() {
#ifdef MOONCAKE_TORCH_CUDA
            return true;
#else
            return false;
#endif
        },
        "Whether the CUDA staging path was compiled in.");
    m.def(
        "_quiesce",
        [](int64_t timeout_ms) {
            py::gil_scoped_release nogil;
            return mooncake::waitCallbacksIdle(timeout_ms);
        },
        py::arg("timeout_ms") = 5000,
        "Wait until no completion callback is running (used at exit).");
    m.attr("__version__") = MOONCAKE_VERSION_STR;
}
