// The torch c10d backend "mooncake": a thin c10d::Backend over the public C
// API (include/mooncake/mooncake.h). One Backend owns one mc_comm_h.
//
// Tensors: data-movement ops (allgather, broadcast, gather, scatter,
// alltoall, send/recv) move raw bytes, so every dtype works; reductions map
// the dtype to an mc_dtype_t (complex SUM/AVG reduce as pairs of reals).
// Non-contiguous tensors are staged through a contiguous copy and the result
// copied back on completion. CUDA tensors (when compiled with
// MOONCAKE_TORCH_CUDA) are staged through pinned host memory: D2H on the
// caller's current stream, the host operation, H2D on that same stream, and
// the Work completes with a CUDA event recorded after the H2D copies.
//
// Completion: an async op (async_op=True, the default for the Backend API)
// is issued with the non-blocking mc_comm_i* call; the Work completes (copy-
// out, then Work and Future) once, by whichever comes first: the engine's
// mc_request_on_complete callback, or Work::wait / isCompleted finding every
// request done. A blocking torch call (opts.asyncOp == false) runs the
// blocking mc_comm_* call in the caller's thread (no thread hand-off; torch's
// bindings release the GIL) and returns a completed Work;
// MOONCAKE_TORCH_INLINE=0 turns that off. Point-to-point is always async.
//
// Faults: the communicator's view (epoch, active ranks) is exposed to Python
// as methods of the backend object (module.cpp; mooncake.get_epoch & co. in
// the package). Failed operations raise c10::DistBackendError, or one of the
// two subclasses below, which module.cpp translates into the package's
// Python classes.
#pragma once

#include <atomic>
#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#ifdef MOONCAKE_TORCH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <mooncake/mooncake.h>

namespace mooncake
{

// A collective failed because ranks failed and the survivors agreed on a
// new view while the group is in manual recovery mode (MC_ERR_PEER_FAILED
// after a view change). Python sees mooncake.RankFailureError, a subclass of
// torch.distributed.DistBackendError, with .failed_ranks (module.cpp).
class RankFailureError : public c10::DistBackendError
{
  public:
    RankFailureError(std::string msg, std::vector<int> failedRanks)
        : c10::DistBackendError(std::move(msg)),
          failedRanks_(std::move(failedRanks))
    {
    }
    const std::vector<int> &failedRanks() const
    {
        return failedRanks_;
    }

  private:
    std::vector<int> failedRanks_;
};

// This rank was removed from the group (MC_ERR_EVICTED). Python sees
// mooncake.EvictedError (a DistBackendError).
class EvictedError : public c10::DistBackendError
{
  public:
    explicit EvictedError(std::string msg)
        : c10::DistBackendError(std::move(msg))
    {
    }
};

// The exception for a failed operation `op`: EvictedError for
// MC_ERR_EVICTED; RankFailureError for MC_ERR_PEER_FAILED of a collective
// once the group has changed its view (manual mode, failed ranks read from
// the communicator now); c10::DistBackendError otherwise (a timeout's text
// starts with "Timed out", as before).
std::exception_ptr makeOpError(mc_comm_h comm, const char *op, mc_status_t st,
                               const std::string &text, bool collective);

// Ranks removed by the communicator's most recent view change, ascending.
std::vector<int> lastFailedRanks(mc_comm_h comm);

// Owns the communicator. Shared by the Backend and its pending Works, so a
// Work can always be waited on. Destruction must not run on the engine's
// callback thread (mc_comm_destroy joins it): that case hands it to a
// detached thread.
class Comm
{
  public:
    explicit Comm(mc_comm_h comm) : comm_(comm) {}
    ~Comm();
    Comm(const Comm &) = delete;
    Comm &operator=(const Comm &) = delete;
    mc_comm_h get() const
    {
        return comm_;
    }

  private:
    mc_comm_h comm_;
};

// Set while the engine's callback thread runs one of our callbacks.
bool onCallbackThread();

// Waits until no completion callback of any communicator is running (at
// most timeout_ms); false on timeout. For interpreter shutdown.
bool waitCallbacksIdle(int64_t timeout_ms);

class MooncakeWork : public c10d::Work
{
  public:
    MooncakeWork(std::shared_ptr<Comm> comm, int rank, c10d::OpType opType,
                 const char *opName, std::vector<at::Tensor> outputs,
                 std::chrono::milliseconds opTimeout);
    ~MooncakeWork() override;

    bool isCompleted() override;
    bool wait(std::chrono::milliseconds timeout = kNoTimeout) override;
    void synchronize() override;
    std::vector<at::Tensor> result() override;
    int sourceRank() const override;
    c10::intrusive_ptr<c10::ivalue::Future> getFuture() override;
    float getDuration() const override;

    // --- used while issuing ---------------------------------------------
    // Work run once every request has finished successfully (copy-out).
    std::vector<std::function<void()>> post;
    // Tensors that must stay alive until the operation ends (staging).
    std::vector<at::Tensor> keep;
    // Whether this is the CUDA staging path, and its stream.
    bool cuda = false;
#ifdef MOONCAKE_TORCH_CUDA
    std::optional<c10::cuda::CUDAStream> stream;
    std::shared_ptr<at::cuda::CUDAEvent> endEvent;
#endif
    // Adds an issued request. Must be followed by start() once all are added.
    void addRequest(mc_request_h req);
    // Ends the issue: a Work with no requests completes at once. The
    // engine's completion callbacks are set only when something must hear
    // of the end without waiting for it (arm(): getFuture, or the Work
    // dropped before its end): a wait or a poll finishes the Work itself,
    // and a callback costs a wake-up of the engine's callback thread per
    // request.
    void start();
    // Records a failure found while issuing (after some requests were
    // issued, so the Work must still wait for them before failing).
    void failIssue(mc_status_t st, const std::string &text);
    size_t requestCount() const
    {
        return reqs_.size();
    }
    bool ok()
    {
        std::lock_guard<std::mutex> g(errMutex_);
        return firstStatus_ == MC_OK;
    }
    // Marks the Work as using CUDA staging for tensors on these devices.
    void noteCuda(const std::vector<at::Tensor> &ts);

  private:
    static void onComplete(mc_request_h req, mc_status_t status, void *arg);
    // Sets the engine's callbacks (once); the engine then holds a reference
    // until the last one has run.
    void arm();
    void complete();
    void collectAndComplete();

    std::shared_ptr<Comm> comm_;
    const char *opName_;
    std::vector<at::Tensor> outputs_;
    std::chrono::milliseconds opTimeout_;
    std::vector<mc_request_h> reqs_;
    std::atomic<int> pending_{0};
    std::mutex errMutex_;
    mc_status_t firstStatus_ = MC_OK;
    std::string firstError_;
    std::atomic<int> source_{-1};
    std::atomic<bool> claimed_{false};
    std::atomic<bool> armed_{false};
    // start() ran. A Work destroyed without it comes from an issue that
    // threw: its copy-out must never run.
    bool started_ = false;
    c10::intrusive_ptr<c10::ivalue::Future> future_;
    std::chrono::steady_clock::time_point startTime_;
    std::atomic<float> durationMs_{-1.0f};
};

class MooncakeBackend : public c10d::Backend
{
  public:
    struct Options : c10d::Backend::Options {
        explicit Options(std::chrono::milliseconds timeout)
            : c10d::Backend::Options("mooncake", timeout)
        {
        }
    };

    // world: the default group (init_process_group's), to which
    // MOONCAKE_INITIAL_SIZE and MOONCAKE_JOIN apply; later groups are
    // created whole.
    MooncakeBackend(const c10::intrusive_ptr<c10d::Store> &store, int rank,
                    int size, std::chrono::milliseconds timeout,
                    bool world = true);
    ~MooncakeBackend() override;

    const std::string getBackendName() const override
    {
        return "mooncake";
    }
    c10::intrusive_ptr<c10d::Backend::Options> getBackendOptions() override;
    void setTimeout(std::chrono::milliseconds timeout) override
    {
        timeout_ = timeout;
        timeoutSet_ = true;
    }

    c10::intrusive_ptr<c10d::Work> broadcast(
        std::vector<at::Tensor> &tensors,
        const c10d::BroadcastOptions &opts = c10d::BroadcastOptions()) override;
    c10::intrusive_ptr<c10d::Work> allreduce(
        std::vector<at::Tensor> &tensors,
        const c10d::AllreduceOptions &opts = c10d::AllreduceOptions()) override;
    c10::intrusive_ptr<c10d::Work>
    allreduce_coalesced(std::vector<at::Tensor> &tensors,
                        const c10d::AllreduceCoalescedOptions &opts =
                            c10d::AllreduceCoalescedOptions()) override;
    c10::intrusive_ptr<c10d::Work>
    reduce(std::vector<at::Tensor> &tensors,
           const c10d::ReduceOptions &opts = c10d::ReduceOptions()) override;
    c10::intrusive_ptr<c10d::Work> allgather(
        std::vector<std::vector<at::Tensor>> &outputs,
        std::vector<at::Tensor> &inputs,
        const c10d::AllgatherOptions &opts = c10d::AllgatherOptions()) override;
    c10::intrusive_ptr<c10d::Work> _allgather_base(
        at::Tensor &output, at::Tensor &input,
        const c10d::AllgatherOptions &opts = c10d::AllgatherOptions()) override;
    c10::intrusive_ptr<c10d::Work> allgather_coalesced(
        std::vector<std::vector<at::Tensor>> &outputLists,
        std::vector<at::Tensor> &inputs,
        const c10d::AllgatherOptions &opts = c10d::AllgatherOptions()) override;
    c10::intrusive_ptr<c10d::Work> allgather_into_tensor_coalesced(
        std::vector<at::Tensor> &outputs, std::vector<at::Tensor> &inputs,
        const c10d::AllgatherOptions &opts = c10d::AllgatherOptions()) override;
    c10::intrusive_ptr<c10d::Work>
    gather(std::vector<std::vector<at::Tensor>> &outputs,
           std::vector<at::Tensor> &inputs,
           const c10d::GatherOptions &opts = c10d::GatherOptions()) override;
    c10::intrusive_ptr<c10d::Work>
    scatter(std::vector<at::Tensor> &outputs,
            std::vector<std::vector<at::Tensor>> &inputs,
            const c10d::ScatterOptions &opts = c10d::ScatterOptions()) override;
    c10::intrusive_ptr<c10d::Work>
    reduce_scatter(std::vector<at::Tensor> &outputs,
                   std::vector<std::vector<at::Tensor>> &inputs,
                   const c10d::ReduceScatterOptions &opts =
                       c10d::ReduceScatterOptions()) override;
    c10::intrusive_ptr<c10d::Work>
    _reduce_scatter_base(at::Tensor &output, at::Tensor &input,
                         const c10d::ReduceScatterOptions &opts =
                             c10d::ReduceScatterOptions()) override;
    c10::intrusive_ptr<c10d::Work>
    reduce_scatter_tensor_coalesced(std::vector<at::Tensor> &outputs,
                                    std::vector<at::Tensor> &inputs,
                                    const c10d::ReduceScatterOptions &opts =
                                        c10d::ReduceScatterOptions()) override;
    c10::intrusive_ptr<c10d::Work> alltoall_base(
        at::Tensor &output, at::Tensor &input,
        std::vector<int64_t> &outputSplitSizes,
        std::vector<int64_t> &inputSplitSizes,
        const c10d::AllToAllOptions &opts = c10d::AllToAllOptions()) override;
    c10::intrusive_ptr<c10d::Work> alltoall(
        std::vector<at::Tensor> &outputs, std::vector<at::Tensor> &inputs,
        const c10d::AllToAllOptions &opts = c10d::AllToAllOptions()) override;
    c10::intrusive_ptr<c10d::Work>
    barrier(const c10d::BarrierOptions &opts = c10d::BarrierOptions()) override;
    c10::intrusive_ptr<c10d::Work> send(std::vector<at::Tensor> &tensors,
                                        int dstRank, int tag) override;
    c10::intrusive_ptr<c10d::Work> recv(std::vector<at::Tensor> &tensors,
                                        int srcRank, int tag) override;
    c10::intrusive_ptr<c10d::Work>
    recvAnysource(std::vector<at::Tensor> &tensors, int tag) override;

    // Collectives issued so far; the same on every rank of a correct program.
    void setSequenceNumberForGroup() override
    {
        seq_ = 0;
    }
    uint64_t getSequenceNumberForGroup() override
    {
        return seq_;
    }

    // Name of the transport reaching `peer` ("self", "shm", "tcp").
    std::string peerTransport(int peer) const;

    // --- views and fault tolerance (mooncake.get_epoch & co.) -------------
    // Epoch of the current view.
    uint64_t epoch() const;
    // Active rank slots of the current view, ascending.
    std::vector<int> activeRanks() const;
    // Ranks removed by the most recent view change, ascending.
    std::vector<int> failedRanks() const;
    std::vector<int> joinedRanks() const;
    // View changes this rank has adopted.
    uint64_t viewChanges() const;
    // Manual mode: accept the new view; returns the active ranks. Throws
    // EvictedError on a removed rank.
    std::vector<int> recover();
    // Auto (true) or manual (false) recovery for later failures.
    void setAutoRecover(bool on);
    bool autoRecover() const
    {
        return autoRecover_.load();
    }
    // Remove `ranks` from the view (collective over the ranks that stay).
    // Not c10d::Backend::shrink, which makes a new, renumbered group.
    void shrinkView(const std::vector<int> &ranks);
    std::vector<int> admitJoiners();

  private:
    c10::intrusive_ptr<c10d::Work>
    allreduceSparse(at::Tensor &t, const c10d::AllreduceOptions &opts);
    std::vector<at::Tensor>
    rootList(std::vector<std::vector<at::Tensor>> &lists,
             const at::Tensor &like, int64_t rootRank, const char *op,
             const char *what) const;
    std::chrono::milliseconds opTimeout(std::chrono::milliseconds t) const;
    // whether a blocking call may run inline (no timeout of its own)
    bool runInline(std::chrono::milliseconds t) const;
    c10::intrusive_ptr<MooncakeWork> newWork(c10d::OpType type,
                                             const char *name,
                                             std::vector<at::Tensor> outputs,
                                             std::chrono::milliseconds timeout);
    // Throws the engine's error for a failed issue call (see makeOpError).
    [[noreturn]] void throwIssue(const char *op, mc_status_t st,
                                 bool collective) const;

    std::shared_ptr<Comm> comm_;
    std::chrono::milliseconds timeout_;
    bool timeoutSet_ = false;
    bool inline_ = true; // blocking calls run inline (MOONCAKE_TORCH_INLINE)
    std::atomic<uint64_t> seq_{0};
    std::atomic<bool> autoRecover_{true};
};

// The creator registered with torch.distributed.Backend.register_backend.
c10::intrusive_ptr<c10d::Backend>
createBackend(const c10::intrusive_ptr<c10d::Store> &store, int rank, int size,
              std::chrono::milliseconds timeout);

} // namespace mooncake
