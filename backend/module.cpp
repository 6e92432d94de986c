// mooncake._C: the backend creator and a few helpers for Python.
#include <pybind11/chrono.h>
#include <torch/csrc/utils/pybind.h>
#include <torch/python.h>

#include "mooncake_backend.hpp"

namespace py = pybind11;

PYBIND11_MODULE(_C, m)
{
    m.doc() = "mooncake torch.distributed backend (C++ shim over libmooncake)";

    // The class is registered so Python sees a MooncakeBackend (a subclass
    // of torch's Backend binding) with mooncake-specific helpers.
    py::class_<mooncake::MooncakeBackend, c10d::Backend,
               c10::intrusive_ptr<mooncake::MooncakeBackend>>(m,
                                                              "MooncakeBackend")
        .def("peer_transport", &mooncake::MooncakeBackend::peerTransport,
             py::arg("peer"),
             "Name of the transport reaching `peer` (self, shm or tcp).");

    // The creator torch calls: (store, group rank, group size, timeout).
    // Rendezvous blocks until every rank joined: release the GIL so a store
    // implemented in Python (and other threads) keep running.
    m.def(
        "create_backend",
        [](const c10::intrusive_ptr<c10d::Store> &store, int rank, int size,
           const std::chrono::duration<double> &timeout) {
            auto ms =
                std::chrono::duration_cast<std::chrono::milliseconds>(timeout);
            c10::intrusive_ptr<mooncake::MooncakeBackend> b;
            {
                py::gil_scoped_release nogil;
                b = c10::make_intrusive<mooncake::MooncakeBackend>(store, rank,
                                                                   size, ms);
            }
            return b;
        },
        py::arg("store"), py::arg("rank"), py::arg("size"), py::arg("timeout"));

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
