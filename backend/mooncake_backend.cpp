// The torch c10d backend over the mooncake C API. See mooncake_backend.hpp
// for the model (staging, completion, CUDA).
#include "mooncake_backend.hpp"

#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>

#include <ATen/core/ivalue.h>
#include <c10/util/Exception.h>

#ifdef MOONCAKE_TORCH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#endif

namespace mooncake
{

namespace
{

thread_local bool tlsOnCallback = false;
std::atomic<int> gCallbacksRunning{0};

// ---------------------------------------------------------------------------
// c10d::Store as the engine's bootstrap store
// ---------------------------------------------------------------------------

struct StoreCtx {
    c10::intrusive_ptr<c10d::Store> store;
};

// the last store failure's text on this thread, for creation's message
thread_local std::string tlsStoreError;

mc_status_t storeFail(const std::exception &e)
{
    // c10 errors append a C++ backtrace after the first line: keep the message
    const c10::Error *ce = dynamic_cast<const c10::Error *>(&e);
    std::string text = ce ? ce->msg() : e.what();
    size_t nl = text.find('\n');
    if (nl != std::string::npos) text.resize(nl);
    // c10d stores report a wait that ran out as an exception whose text says
    // so; there is no dedicated type shared by all of them.
    mc_status_t st = text.find("imeout") != std::string::npos ||
                             text.find("imed out") != std::string::npos
                         ? MC_ERR_TIMEOUT
                         : MC_ERR_STORE;
    // the engine's error text then names what the torch store said
    tlsStoreError = text;
    return mc_store_error(st, ("torch store: " + text).c_str());
}

std::vector<uint8_t> toBytes(const void *p, size_t n)
{
    const uint8_t *b = static_cast<const uint8_t *>(p);
    return n ? std::vector<uint8_t>(b, b + n) : std::vector<uint8_t>();
}

mc_status_t storeSet(void *ctx, const char *key, const void *val, size_t len)
{
    try {
        static_cast<StoreCtx *>(ctx)->store->set(key, toBytes(val, len));
        return MC_OK;
    } catch (const std::exception &e) {
        return storeFail(e);
    }
}

mc_status_t storeGet(void *ctx, const char *key, int64_t timeout_ms, void *buf,
                     size_t cap, size_t *len_p)
{
    auto &store = static_cast<StoreCtx *>(ctx)->store;
    try {
        std::vector<std::string> keys{key};
        if (timeout_ms == 0) {
            // c10d reads a 0 ms wait as "no timeout"; poll once instead.
            if (!store->check(keys)) return MC_ERR_TIMEOUT;
        } else {
            // negative = forever; c10d has no "forever", a day is close enough
            int64_t ms =
                timeout_ms < 0 ? int64_t(24) * 3600 * 1000 : timeout_ms;
            store->wait(keys, std::chrono::milliseconds(ms));
        }
        std::vector<uint8_t> v = store->get(key);
        if (buf && cap) std::memcpy(buf, v.data(), std::min(cap, v.size()));
        *len_p = v.size();
        return MC_OK;
    } catch (const std::exception &e) {
        return storeFail(e);
    }
}

mc_status_t storeCheck(void *ctx, const char *key, int *exists_p)
{
    try {
        *exists_p = static_cast<StoreCtx *>(ctx)->store->check({key}) ? 1 : 0;
        return MC_OK;
    } catch (const std::exception &e) {
        return storeFail(e);
    }
}

mc_status_t storeCompareSet(void *ctx, const char *key, const void *expected,
                            size_t expected_len, const void *desired,
                            size_t desired_len, void *cur, size_t cap,
                            size_t *cur_len_p)
{
    try {
        std::vector<uint8_t> v =
            static_cast<StoreCtx *>(ctx)->store->compareSet(
                key, toBytes(expected, expected_len),
                toBytes(desired, desired_len));
        if (cur && cap) std::memcpy(cur, v.data(), std::min(cap, v.size()));
        *cur_len_p = v.size();
        return MC_OK;
    } catch (const std::exception &e) {
        return storeFail(e);
    }
}

mc_status_t storeAdd(void *ctx, const char *key, int64_t delta, int64_t *v)
{
    try {
        *v = static_cast<StoreCtx *>(ctx)->store->add(key, delta);
        return MC_OK;
    } catch (const std::exception &e) {
        return storeFail(e);
    }
}

mc_status_t storeDel(void *ctx, const char *key)
{
    try {
        static_cast<StoreCtx *>(ctx)->store->deleteKey(key);
        return MC_OK;
    } catch (const std::exception &e) {
        return storeFail(e);
    }
}

void storeDestroy(void *ctx)
{
    delete static_cast<StoreCtx *>(ctx);
}

// ---------------------------------------------------------------------------
// dtypes and reduction operators
// ---------------------------------------------------------------------------

bool toMcDtype(at::ScalarType t, mc_dtype_t *out)
{
    switch (t) {
    case at::kChar:
        *out = MC_INT8;
        return true;
    case at::kByte:
        *out = MC_UINT8;
        return true;
    case at::kShort:
        *out = MC_INT16;
        return true;
    case at::kInt:
        *out = MC_INT32;
        return true;
    case at::kLong:
        *out = MC_INT64;
        return true;
    case at::kUInt16:
        *out = MC_UINT16;
        return true;
    case at::kUInt32:
        *out = MC_UINT32;
        return true;
    case at::kUInt64:
        *out = MC_UINT64;
        return true;
    case at::kBool:
        *out = MC_BOOL;
        return true;
    case at::kHalf:
        *out = MC_FLOAT16;
        return true;
    case at::kBFloat16:
        *out = MC_BFLOAT16;
        return true;
    case at::kFloat:
        *out = MC_FLOAT32;
        return true;
    case at::kDouble:
        *out = MC_FLOAT64;
        return true;
    case at::kFloat8_e4m3fn:
        *out = MC_FLOAT8_E4M3;
        return true;
    case at::kFloat8_e5m2:
        *out = MC_FLOAT8_E5M2;
        return true;
    default:
        return false;
    }
}

// How a reduction runs in the engine: dtype, operator, and how many engine
// elements one torch element is (2 for complex, reduced as real pairs).
struct ReduceType {
    mc_dtype_t dtype;
    mc_redop_t op;
    size_t factor;
};

ReduceType reduceType(const char *opName, at::ScalarType t,
                      const c10d::ReduceOp &rop)
{
    ReduceType r{MC_FLOAT32, MC_SUM, 1};
    switch (rop.op_) {
    case c10d::ReduceOp::SUM:
        r.op = MC_SUM;
        break;
    case c10d::ReduceOp::AVG:
        r.op = MC_AVG;
        break;
    case c10d::ReduceOp::PRODUCT:
        r.op = MC_PROD;
        break;
    case c10d::ReduceOp::MIN:
        r.op = MC_MIN;
        break;
    case c10d::ReduceOp::MAX:
        r.op = MC_MAX;
        break;
    case c10d::ReduceOp::BAND:
        r.op = MC_BAND;
        break;
    case c10d::ReduceOp::BOR:
        r.op = MC_BOR;
        break;
    case c10d::ReduceOp::BXOR:
        r.op = MC_BXOR;
        break;
    case c10d::ReduceOp::PREMUL_SUM:
        TORCH_CHECK(
            false, "mooncake ", opName,
            ": ReduceOp.PREMUL_SUM is not supported; scale the tensor and "
            "use ReduceOp.SUM");
    default:
        TORCH_CHECK(false, "mooncake ", opName, ": unknown ReduceOp ",
                    static_cast<int>(rop.op_));
    }
    if (at::isComplexType(t)) {
        TORCH_CHECK(r.op == MC_SUM || r.op == MC_AVG, "mooncake ", opName,
                    ": complex tensors (", t,
                    ") support only ReduceOp.SUM and ReduceOp.AVG");
        at::ScalarType real = c10::toRealValueType(t);
        TORCH_CHECK(toMcDtype(real, &r.dtype), "mooncake ", opName,
                    ": unsupported dtype ", t);
        r.factor = 2;
        return r;
    }
    TORCH_CHECK(
        toMcDtype(t, &r.dtype), "mooncake ", opName, ": unsupported dtype ", t,
        " for a reduction (supported: int8/16/32/64, uint8/16/32/64, bool, "
        "float16, bfloat16, float32, float64, float8_e4m3fn, float8_e5m2, "
        "complex with SUM/AVG)");
    return r;
}

// A valid pointer for a zero-length buffer (the engine never touches it).
uint8_t zeroByte;

void *dataOf(const at::Tensor &t)
{
    void *p = t.numel() ? t.data_ptr() : nullptr;
    return p ? p : &zeroByte;
}

size_t nbytesOf(const at::Tensor &t)
{
    return static_cast<size_t>(t.numel()) * t.element_size();
}

const at::Tensor &single(std::vector<at::Tensor> &ts, const char *op)
{
    TORCH_CHECK(ts.size() == 1, "mooncake ", op,
                ": expected exactly one tensor, got ", ts.size());
    return ts[0];
}

void checkTensor(const at::Tensor &t, const char *op)
{
    TORCH_CHECK(t.defined(), "mooncake ", op, ": undefined tensor");
    TORCH_CHECK(t.layout() == at::kStrided, "mooncake ", op,
                ": only dense (strided) tensors are supported, got ",
                t.layout());
    bool ok = t.device().is_cpu();
#ifdef MOONCAKE_TORCH_CUDA
    ok = ok || t.device().is_cuda();
#endif
    TORCH_CHECK(ok, "mooncake ", op, ": unsupported device ", t.device(),
                " (cpu"
#ifdef MOONCAKE_TORCH_CUDA
                " and cuda"
#endif
                " tensors are supported)");
}

void checkSameDtype(const at::Tensor &a, const at::Tensor &b, const char *op)
{
    TORCH_CHECK(a.scalar_type() == b.scalar_type(), "mooncake ", op,
                ": dtype mismatch between tensors (", a.scalar_type(), " and ",
                b.scalar_type(), ")");
}

// ---------------------------------------------------------------------------
// Staging: host-contiguous buffers for the engine, with copy-back
// ---------------------------------------------------------------------------

class Stage
{
  public:
    explicit Stage(MooncakeWork &w) : w_(w) {}

    // A host buffer holding t's data, for reading.
    at::Tensor in(const at::Tensor &t)
    {
        if (t.is_cpu()) {
            if (t.is_contiguous()) {
                // the engine reads it after we return (async ops): the Work
                // must own a reference even if the caller drops theirs
                w_.keep.push_back(t);
                return t;
            }
            at::Tensor h = t.contiguous();
            w_.keep.push_back(h);
            return h;
        }
        at::Tensor h = hostEmpty(t.numel(), t.scalar_type());
        h.view(t.sizes()).copy_(t, /*non_blocking=*/true);
        needSync_ = true;
        w_.keep.push_back(h);
        return h;
    }

    // A host buffer whose contents are copied into t when the operation
    // succeeds. fill: start with t's data (in-place ops).
    at::Tensor out(const at::Tensor &t, bool fill)
    {
        if (t.is_cpu() && t.is_contiguous()) return t;
        at::Tensor h = fill ? in(t) : hostEmpty(t.numel(), t.scalar_type());
        w_.keep.push_back(h);
        copyBack(h, t);
        return h;
    }

    // A flat host buffer of n elements of dtype, on the side of `like`.
    at::Tensor flat(int64_t n, at::ScalarType dtype, bool pinned)
    {
        at::Tensor h = pinned
                           ? hostEmpty(n, dtype)
                           : at::empty({n}, at::TensorOptions().dtype(dtype));
        w_.keep.push_back(h);
        return h;
    }

    // Copy the slice [off, off+numel(t)) of host buffer h into t on success.
    void copyBackSlice(const at::Tensor &h, int64_t off, const at::Tensor &t)
    {
        copyBack(h.narrow(0, off, t.numel()), t);
    }

    // Fill the slice [off, off+numel(t)) of host buffer h from t now.
    void fillSlice(const at::Tensor &h, int64_t off, const at::Tensor &t)
    {
        at::Tensor dst = h.narrow(0, off, t.numel()).view(t.sizes());
        if (t.is_cpu()) {
            dst.copy_(t);
        } else {
            dst.copy_(t, /*non_blocking=*/true);
            needSync_ = true;
        }
    }

    // Before issuing: the host buffers must hold the device data.
    void ready()
    {
#ifdef MOONCAKE_TORCH_CUDA
        if (needSync_) {
            // D2H copies were queued on the current stream; the host operation
            // must see their result. Block on an event rather than the device.
            at::cuda::CUDAEvent ev;
            ev.record(*w_.stream);
            ev.synchronize();
        }
#endif
    }

  private:
    at::Tensor hostEmpty(int64_t n, at::ScalarType dtype)
    {
#ifdef MOONCAKE_TORCH_CUDA
        if (w_.cuda)
            return at::empty(
                {n}, at::TensorOptions().dtype(dtype).pinned_memory(true));
#endif
        return at::empty({n}, at::TensorOptions().dtype(dtype));
    }

    void copyBack(const at::Tensor &h, const at::Tensor &t)
    {
        at::Tensor src = h.view(t.sizes());
        at::Tensor dst = t;
        bool dev = !t.is_cpu();
        w_.post.push_back([src, dst, dev]() mutable {
            dst.copy_(src, /*non_blocking=*/dev);
        });
    }

    MooncakeWork &w_;
    bool needSync_ = false;
};

} // namespace

// A rank list from mc_comm_failed_ranks / mc_comm_joined_ranks. It can
// change between the two calls if a view change lands in between; take
// what fits then.
static std::vector<int> rankList(mc_comm_h comm,
                                 int (*get)(mc_comm_h, int *, int))
{
    int n = get(comm, nullptr, 0);
    if (n <= 0) return {};
    std::vector<int> v(static_cast<size_t>(n));
    int m = get(comm, v.data(), n);
    v.resize(static_cast<size_t>(std::max(0, std::min(n, m))));
    return v;
}

std::vector<int> lastFailedRanks(mc_comm_h comm)
{
    return rankList(comm, mc_comm_failed_ranks);
}

std::exception_ptr makeOpError(mc_comm_h comm, const char *op, mc_status_t st,
                               const std::string &text, bool collective)
{
    const char *detail = text.empty() ? mc_status_str(st) : text.c_str();
    if (st == MC_ERR_TIMEOUT)
        return std::make_exception_ptr(c10::DistBackendError(
            c10::str("mooncake ", op, " failed: Timed out - ", detail)));
    std::string msg = c10::str("mooncake ", op, " failed (", mc_status_str(st),
                               "): ", detail);
    if (st == MC_ERR_EVICTED) return std::make_exception_ptr(EvictedError(msg));
    // With fault tolerance on, a collective reports MC_ERR_PEER_FAILED only
    // after the survivors adopted a view without the failed ranks (manual
    // mode: this call, and every later one until recover). Without a view
    // change (MOONCAKE_FT=0) the group is broken: a plain DistBackendError.
    if (st == MC_ERR_PEER_FAILED && collective &&
        mc_comm_view_changes(comm) > 0)
        return std::make_exception_ptr(
            RankFailureError(msg, lastFailedRanks(comm)));
    return std::make_exception_ptr(c10::DistBackendError(msg));
}

bool onCallbackThread()
{
    return tlsOnCallback;
}

// Callbacks may run Python (Future.then callbacks, and dropping them). If
// the interpreter finalizes meanwhile, CPython ends such a thread with
// pthread_exit, whose forced unwind through a noexcept frame aborts the
// process. The package's atexit hook waits here (GIL released) first.
bool waitCallbacksIdle(int64_t timeout_ms)
{
    auto deadline = std::chrono::steady_clock::now() +
                    std::chrono::milliseconds(timeout_ms);
    while (gCallbacksRunning.load() != 0) {
        if (std::chrono::steady_clock::now() >= deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return true;
}

// ---------------------------------------------------------------------------
// Comm
// ---------------------------------------------------------------------------

Comm::~Comm()
{
    if (!comm_) return;
    if (onCallbackThread()) {
        // mc_comm_destroy joins the callback thread we are running on.
        mc_comm_h c = comm_;
        std::thread([c]() { mc_comm_destroy(c); }).detach();
    } else {
        mc_comm_destroy(comm_);
    }
}

// ---------------------------------------------------------------------------
// Work
// ---------------------------------------------------------------------------

MooncakeWork::MooncakeWork(std::shared_ptr<Comm> comm, int rank,
                           c10d::OpType opType, const char *opName,
                           std::vector<at::Tensor> outputs,
                           std::chrono::milliseconds opTimeout)
    : c10d::Work(rank, opType), comm_(std::move(comm)), opName_(opName),
      outputs_(std::move(outputs)), opTimeout_(opTimeout),
      startTime_(std::chrono::steady_clock::now())
{
    std::vector<c10::Device> devices;
    for (auto &t : outputs_) {
        if (t.defined() && t.is_cuda() &&
            std::find(devices.begin(), devices.end(), t.device()) ==
                devices.end())
            devices.push_back(t.device());
    }
    noteCuda(outputs_);
    future_ = c10::make_intrusive<c10::ivalue::Future>(
        c10::ListType::create(c10::TensorType::get()), devices);
}

MooncakeWork::~MooncakeWork()
{
    // Finished (waited, polled, or armed: the engine held a reference until
    // its last callback, which finished it), or never issued (an issue that
    // threw: the caller's tensors stay as they were, no copy-out): the
    // requests go.
    if (claimed_.load() || reqs_.empty()) {
        for (mc_request_h r : reqs_)
            mc_request_free(r);
        return;
    }
    // Dropped before anyone saw its end: the engine may still read and
    // write our tensors, and the copy-out has not run (a dropped async op
    // still delivers its result, as gloo's and NCCL's do). A successor
    // takes the requests, the tensors and the copy-out, armed: the engine
    // holds it until its last callback has finished the op.
    auto next = c10::make_intrusive<MooncakeWork>(comm_, rank_, opType_,
                                                  opName_, std::move(outputs_),
                                                  opTimeout_);
    next->reqs_ = std::move(reqs_);
    next->post = std::move(post);
    next->keep = std::move(keep);
    next->cuda = cuda;
#ifdef MOONCAKE_TORCH_CUDA
    next->stream = stream;
    next->endEvent = endEvent;
#endif
    {
        std::lock_guard<std::mutex> g(errMutex_);
        next->firstStatus_ = firstStatus_;
        next->firstError_ = firstError_;
    }
    if (!started_ && next->firstStatus_ == MC_OK) {
        // issued in part, then a throw: no copy-out
        next->firstStatus_ = MC_ERR_INTERNAL;
        next->firstError_ = "the op's issue failed";
    }
    next->started_ = true;
    next->arm();
}

void MooncakeWork::noteCuda(const std::vector<at::Tensor> &ts)
{
    for (auto &t : ts) {
        if (!t.defined() || !t.is_cuda()) continue;
        cuda = true;
#ifdef MOONCAKE_TORCH_CUDA
        if (!stream) {
            stream = c10::cuda::getCurrentCUDAStream(t.device().index());
            endEvent = std::make_shared<at::cuda::CUDAEvent>();
        }
#endif
    }
}

void MooncakeWork::addRequest(mc_request_h req)
{
    reqs_.push_back(req);
}

void MooncakeWork::failIssue(mc_status_t st, const std::string &text)
{
    std::lock_guard<std::mutex> g(errMutex_);
    if (firstStatus_ == MC_OK) {
        firstStatus_ = st;
        firstError_ = text;
    }
}

void MooncakeWork::start()
{
    started_ = true;
    if (reqs_.empty()) {
        complete();
        return;
    }
    // Sends and receives move in the background, as gloo's and NCCL's do:
    // a transfer overlaps what the caller does before its wait, and ends at
    // its deadline even if never waited for. (Collectives run on the
    // engine's progress thread anyway.)
    if (c10d::isP2POp(opType_))
        for (mc_request_h r : reqs_)
            mc_request_watch(r);
}

void MooncakeWork::arm()
{
    if (armed_.exchange(true)) return;
    if (claimed_.load()) return; // finished already: nothing to hear of
    pending_.store(static_cast<int>(reqs_.size()));
    // The engine holds a reference until the last callback has run.
    c10::raw::intrusive_ptr::incref(this);
    for (size_t i = 0; i < reqs_.size(); i++) {
        mc_status_t st = mc_request_on_complete(reqs_[i], onComplete, this);
        if (st < 0) {
            // Only if the callback thread could not start: that request
            // still ends, unheard of. The engine may still use our tensors,
            // so the reference stays (pending_ never reaches 0): the Work
            // and its tensors are kept for good. A wait() still finishes it.
            failIssue(st, mc_last_error());
            TORCH_WARN("mooncake ", opName_,
                       ": the engine's callback thread did not start; the "
                       "Work's future completes only through its wait()");
        }
    }
}

void MooncakeWork::onComplete(mc_request_h req, mc_status_t status, void *arg)
{
    auto *w = static_cast<MooncakeWork *>(arg);
    gCallbacksRunning.fetch_add(1);
    tlsOnCallback = true;
    if (status < 0) {
        // mc_request_test on a finished request sets the calling thread's
        // error text to this request's own message.
        int done = 0;
        mc_request_test(req, &done);
        std::string text = mc_last_error();
        if (text.empty()) text = mc_comm_last_error(w->comm_->get());
        w->failIssue(status, text);
    } else if (w->opType_ == c10d::OpType::RECVANYSOURCE ||
               w->opType_ == c10d::OpType::RECV) {
        w->source_.store(mc_request_source(req));
    }
    if (w->pending_.fetch_sub(1) == 1) {
        w->complete();
        c10::raw::intrusive_ptr::decref(w);
    }
    tlsOnCallback = false;
    gCallbacksRunning.fetch_sub(1);
}

// Runs once, after every request has finished: copy-out, then finish the
// Work and its Future.
void MooncakeWork::complete()
{
    if (claimed_.exchange(true))
        return; // the waiter or the last callback got here first
    std::exception_ptr eptr;
    mc_status_t st;
    std::string text;
    {
        std::lock_guard<std::mutex> g(errMutex_);
        st = firstStatus_;
        text = firstError_;
    }
    if (st == MC_OK) {
        try {
#ifdef MOONCAKE_TORCH_CUDA
            std::optional<c10::cuda::CUDAStreamGuard> guard;
            if (cuda) guard.emplace(*stream);
#endif
            for (auto &f : post)
                f();
#ifdef MOONCAKE_TORCH_CUDA
            if (cuda) endEvent->record(*stream);
#endif
        } catch (const std::exception &e) {
            st = MC_ERR_INTERNAL;
            text = std::string("copying the result back failed: ") + e.what();
        }
    }
    post.clear();
    if (st != MC_OK)
        eptr = makeOpError(comm_->get(), opName_, st, text,
                           !c10d::isP2POp(opType_));
    durationMs_.store(std::chrono::duration<float, std::milli>(
                          std::chrono::steady_clock::now() - startTime_)
                          .count());
    // The future first, then the work (as gloo does): a wait() that returns
    // may read the future at once.
    if (eptr) {
        future_->setError(eptr);
    } else {
#ifdef MOONCAKE_TORCH_CUDA
        std::optional<c10::cuda::CUDAStreamGuard> guard;
        if (cuda) guard.emplace(*stream); // the future records its events here
#endif
        future_->markCompleted(c10::IValue(outputs_));
    }
    finish(eptr);
    // Staging buffers: pinned ones are recycled by torch's host allocator
    // only after the queued copies have run.
    keep.clear();
}

bool MooncakeWork::isCompleted()
{
    {
        std::lock_guard<std::mutex> g(mutex_);
        if (completed_) return true;
    }
    bool all = true;
    for (mc_request_h r : reqs_) {
        int done = 0;
        mc_request_test(r, &done); // drives progress
        all = all && done;
    }
    if (all) collectAndComplete();
    std::lock_guard<std::mutex> g(mutex_);
    return completed_;
}

// All requests have finished: record their outcome and complete the Work
// (a no-op if a callback already did).
void MooncakeWork::collectAndComplete()
{
    if (claimed_.load()) return;
    for (mc_request_h r : reqs_) {
        int done = 0;
        mc_status_t st = mc_request_test(r, &done);
        if (st < 0) {
            std::string text = mc_last_error();
            failIssue(st,
                      text.empty() ? mc_comm_last_error(comm_->get()) : text);
        } else if (opType_ == c10d::OpType::RECVANYSOURCE ||
                   opType_ == c10d::OpType::RECV) {
            source_.store(mc_request_source(r));
        }
    }
    complete();
}

bool MooncakeWork::wait(std::chrono::milliseconds timeout)
{
    // timeout 0 (torch's kNoTimeout) means the op's own timeout, if any.
    int64_t ms = timeout.count() > 0
                     ? timeout.count()
                     : (opTimeout_.count() > 0 ? opTimeout_.count() : -1);
    // past what the clock's nanoseconds hold (timedelta.max is about 8.6e16
    // ms): no limit, not an overflow into "expired"
    if (ms > int64_t(1) << 40) ms = -1;
    auto deadline = std::chrono::steady_clock::now() +
                    std::chrono::milliseconds(ms < 0 ? 0 : ms);
    for (mc_request_h r : reqs_) {
        int64_t left = -1;
        if (ms >= 0) {
            left = std::chrono::duration_cast<std::chrono::milliseconds>(
                       deadline - std::chrono::steady_clock::now())
                       .count();
            if (left < 0) left = 0;
        }
        mc_status_t st = mc_request_wait(r, left);
        if (st == MC_ERR_TIMEOUT && ms >= 0) {
            int done = 0;
            mc_request_test(r, &done);
            if (!done) {
                C10_THROW_ERROR(DistBackendError,
                                c10::str("mooncake ", opName_,
                                         ": Timed out after ", ms,
                                         " ms waiting for the operation to "
                                         "complete (it is still "
                                         "pending)"));
            }
        }
        // other failures are reported through the Work's exception below
    }
    // Every request has finished: finish the Work here rather than wait for
    // the engine's callback thread (whichever comes first does it, once).
    collectAndComplete();
    return c10d::Work::wait(kNoTimeout);
}

void MooncakeWork::synchronize()
{
#ifdef MOONCAKE_TORCH_CUDA
    if (cuda && endEvent) {
        // Order the caller's current stream after the H2D copies.
        for (auto &t : outputs_) {
            if (t.defined() && t.is_cuda()) {
                endEvent->block(
                    c10::cuda::getCurrentCUDAStream(t.device().index()));
                break;
            }
        }
    }
#endif
}

std::vector<at::Tensor> MooncakeWork::result()
{
    return outputs_;
}

int MooncakeWork::sourceRank() const
{
    TORCH_CHECK(opType_ == c10d::OpType::RECVANYSOURCE ||
                    opType_ == c10d::OpType::RECV,
                "mooncake: sourceRank() is only available for receives");
    std::lock_guard<std::mutex> g(mutex_);
    TORCH_CHECK(completed_,
                "mooncake: sourceRank() before the receive finished");
    return source_;
}

c10::intrusive_ptr<c10::ivalue::Future> MooncakeWork::getFuture()
{
    // whoever holds the future may only wait on it, or chain a callback:
    // the engine must tell the Work of its end
    arm();
    return future_;
}

float MooncakeWork::getDuration() const
{
    float d = durationMs_.load();
    TORCH_CHECK(d >= 0, "mooncake: getDuration() before the work finished");
    return d;
}

// ---------------------------------------------------------------------------
// Backend
// ---------------------------------------------------------------------------

MooncakeBackend::MooncakeBackend(const c10::intrusive_ptr<c10d::Store> &store,
                                 int rank, int size,
                                 std::chrono::milliseconds timeout, bool world)
    : c10d::Backend(rank, size), timeout_(timeout)
{
    TORCH_CHECK(store, "mooncake: no store given");
    TORCH_CHECK(size > 0 && rank >= 0 && rank < size, "mooncake: invalid rank ",
                rank, " for world size ", size);
    mc_store_ops_t ops{};
    ops.size = sizeof(ops);
    ops.set = storeSet;
    ops.get = storeGet;
    ops.check = storeCheck;
    ops.compare_set = storeCompareSet;
    ops.add = storeAdd;
    ops.del = storeDel;
    ops.destroy = storeDestroy;
    auto *ctx = new StoreCtx{store};
    mc_store_h st = nullptr;
    mc_status_t s = mc_store_create(&ops, ctx, &st);
    if (s < 0) {
        delete ctx;
        C10_THROW_ERROR(
            DistBackendError,
            c10::str("mooncake: cannot wrap the store: ", mc_last_error()));
    }
    mc_comm_config_t cfg;
    mc_comm_config_init(&cfg);
    // torch's timeout applies unless the environment sets mooncake's own.
    if (timeout.count() > 0) {
        if (!std::getenv("MOONCAKE_TIMEOUT_MS"))
            cfg.timeout_ms = timeout.count();
        if (!std::getenv("MOONCAKE_INIT_TIMEOUT_MS"))
            cfg.init_timeout_ms = timeout.count();
    }
    // MOONCAKE_INITIAL_SIZE and MOONCAKE_JOIN are about the default group
    // only (the package tells: not dist.is_initialized() while it is made).
    // A later group (new_group) is created whole by its members, a
    // joiner's included.
    if (!world) cfg.join = 0;
    // MOONCAKE_INITIAL_SIZE=n: the world has `size` slots, of which the
    // first n start active; the others wait for joiners (MOONCAKE_JOIN=1).
    int initial = size;
    const char *initialEnv = world ? std::getenv("MOONCAKE_INITIAL_SIZE")
                                   : nullptr;
    if (const char *e = initialEnv) {
        char *end = nullptr;
        long v = std::strtol(e, &end, 10);
        if (!*e || *end || v < 1 || v > size) {
            mc_store_destroy(st);
            C10_THROW_ERROR(DistBackendError,
                            c10::str("mooncake: MOONCAKE_INITIAL_SIZE='", e,
                                     "' must be a number from 1 to the world "
                                     "size ",
                                     size));
        }
        initial = static_cast<int>(v);
    }
    if (initial < size) cfg.max_size = size;
    tlsStoreError.clear();
    mc_comm_h comm = nullptr;
    s = mc_comm_create(rank, initial, st, &cfg, &comm);
    std::string err = s < 0 ? mc_last_error() : "";
    mc_store_destroy(st);
    if (s < 0) {
        std::string msg =
            c10::str("mooncake: creating the communicator (rank ", rank, " of ",
                     size, ") failed (", mc_status_str(s), "): ", err);
        if (!tlsStoreError.empty())
            msg += c10::str("; store error: ", tlsStoreError);
        C10_THROW_ERROR(DistBackendError, msg);
    }
    comm_ = std::make_shared<Comm>(comm);
    autoRecover_.store(cfg.auto_recover != 0);
    // MOONCAKE_TORCH_INLINE=0: blocking torch calls also go through the
    // non-blocking engine calls (for comparison and debugging).
    const char *inl = std::getenv("MOONCAKE_TORCH_INLINE");
    inline_ = !(inl && std::strcmp(inl, "0") == 0);
    init();
}

MooncakeBackend::~MooncakeBackend() = default;

c10::intrusive_ptr<c10d::Backend::Options> MooncakeBackend::getBackendOptions()
{
    return c10::make_intrusive<Options>(timeout_);
}

std::string MooncakeBackend::peerTransport(int peer) const
{
    TORCH_CHECK(peer >= 0 && peer < size_, "mooncake: peer ", peer,
                " out of range");
    return mc_comm_peer_transport(comm_->get(), peer);
}

std::chrono::milliseconds
MooncakeBackend::opTimeout(std::chrono::milliseconds t) const
{
    if (t != c10d::kUnsetTimeout) return t;
    // After setTimeout (torch's _set_pg_timeout) the new value bounds waits;
    // before, the communicator's own operation timeout applies.
    return timeoutSet_ ? timeout_ : std::chrono::milliseconds(0);
}

bool MooncakeBackend::runInline(std::chrono::milliseconds t) const
{
    // a timeout of this op's or the backend's (setTimeout) is kept by the
    // work's wait, which torch calls for a blocking op; the inline call
    // waits as long as the communicator's own operation timeout
    return inline_ && opTimeout(t).count() == 0;
}

c10::intrusive_ptr<MooncakeWork>
MooncakeBackend::newWork(c10d::OpType type, const char *name,
                         std::vector<at::Tensor> outputs,
                         std::chrono::milliseconds timeout)
{
    if (!c10d::isP2POp(type)) seq_++;
    auto w = c10::make_intrusive<MooncakeWork>(
        comm_, rank_, type, name, std::move(outputs), opTimeout(timeout));
    return w;
}

void MooncakeBackend::throwIssue(const char *op, mc_status_t st,
                                 bool collective) const
{
    std::string text = mc_last_error();
    if (st == MC_ERR_INVALID_ARG) {
        TORCH_CHECK(false, "mooncake ", op, ": ", text);
    }
    std::rethrow_exception(makeOpError(comm_->get(), op, st, text, collective));
}

// --- views and fault tolerance -------------------------------------------

uint64_t MooncakeBackend::epoch() const
{
    uint64_t ep = 0;
    mc_status_t st = mc_comm_view(comm_->get(), &ep, nullptr, nullptr);
    if (st < 0) throwIssue("get_epoch", st, false);
    return ep;
}

std::vector<int> MooncakeBackend::activeRanks() const
{
    std::vector<uint8_t> act(static_cast<size_t>(size_));
    mc_status_t st = mc_comm_view(comm_->get(), nullptr, act.data(), nullptr);
    if (st < 0) throwIssue("get_active_ranks", st, false);
    std::vector<int> out;
    for (int r = 0; r < size_; r++)
        if (act[r]) out.push_back(r);
    return out;
}

std::vector<int> MooncakeBackend::failedRanks() const
{
    return lastFailedRanks(comm_->get());
}

std::vector<int> MooncakeBackend::joinedRanks() const
{
    return rankList(comm_->get(), mc_comm_joined_ranks);
}

uint64_t MooncakeBackend::viewChanges() const
{
    return mc_comm_view_changes(comm_->get());
}

std::vector<int> MooncakeBackend::recover()
{
    mc_status_t st = mc_comm_recover(comm_->get());
    if (st < 0) throwIssue("recover", st, false);
    return activeRanks();
}

void MooncakeBackend::setAutoRecover(bool on)
{
    mc_status_t st = mc_comm_set_auto_recover(comm_->get(), on ? 1 : 0);
    if (st < 0) throwIssue("set_auto_recover", st, false);
    autoRecover_.store(on);
}

std::vector<int> MooncakeBackend::admitJoiners()
{
    int n = 0;
    mc_status_t st = mc_comm_admit(comm_->get(), &n);
    if (st < 0) throwIssue("admit_joiners", st, true);
    return n > 0 ? joinedRanks() : std::vector<int>{};
}

void MooncakeBackend::shrinkView(const std::vector<int> &ranks)
{
    for (int r : ranks)
        TORCH_CHECK_VALUE(r >= 0 && r < size_, "mooncake shrink: rank ", r,
                          " out of range for group size ", size_);
    mc_status_t st = mc_comm_shrink(comm_->get(), ranks.data(),
                                    static_cast<int>(ranks.size()));
    if (st < 0) {
        if (st == MC_ERR_INVALID_ARG) {
            std::string text = mc_last_error();
            TORCH_CHECK_VALUE(false, "mooncake shrink: ", text);
        }
        throwIssue("shrink", st, true);
    }
}

// Issue helper. Async (opts.asyncOp, the default): the non-blocking
// mc_comm_iX call; completion comes through the request callback. Blocking
// (torch sets asyncOp = false when the caller waits at once): the blocking
// mc_comm_X call runs the operation in this thread, with no hand-off to the
// engine's progress and callback threads, and the Work completes inline.
// The first failing call throws; a later one (after other requests of the
// same Work were issued) fails the Work instead, because issued requests
// still use its buffers.
#define MC_RUN(w, op, blocking, fn, ...)                                       \
    do {                                                                       \
        bool first_ = (w)->requestCount() == 0 && (w)->ok();                   \
        bool coll_ = !c10d::isP2POp((w)->retrieveOpType());                    \
        if (blocking) {                                                        \
            if ((w)->ok()) {                                                   \
                mc_status_t st_ = mc_comm_##fn(comm_->get(), __VA_ARGS__);     \
                if (st_ < 0) {                                                 \
                    if (first_) throwIssue(op, st_, coll_);                    \
                    (w)->failIssue(st_, mc_last_error());                      \
                }                                                              \
            }                                                                  \
        } else {                                                               \
            mc_request_h r_ = nullptr;                                         \
            mc_status_t st_ = mc_comm_i##fn(comm_->get(), __VA_ARGS__, &r_);   \
            if (st_ < 0) {                                                     \
                if (first_) throwIssue(op, st_, coll_);                        \
                (w)->failIssue(st_, mc_last_error());                          \
            } else {                                                           \
                (w)->addRequest(r_);                                           \
            }                                                                  \
        }                                                                      \
    } while (0)

// A sparse COO tensor (what gloo does for a SUM): every rank's coalesced
// entries, gathered, summed by coalescing on each rank in the same order,
// so every rank gets the same bits. Two collectives, run here and now (the
// second's sizes come from the first): the shapes (nnz, sparse and dense
// dims, sizes), then one allgatherv of each rank's indices and values
// together. A rank that is not in the second's view (it failed) is left
// out of the sum; a rank's zero-filled block is never read as entries.
c10::intrusive_ptr<c10d::Work>
MooncakeBackend::allreduceSparse(at::Tensor &t,
                                 const c10d::AllreduceOptions &opts)
{
    // What this rank cannot do (a ReduceOp other than SUM, a device) goes
    // into the shapes' exchange, so that every rank fails the call with the
    // same error instead of the others waiting for this one until the op
    // timeout.
    enum { SP_OK = 0, SP_BAD_OP = 1, SP_BAD_DEVICE = 2 };
    int64_t bad = SP_OK;
    if (opts.reduceOp.op_ != c10d::ReduceOp::SUM) bad = SP_BAD_OP;
    bool dev = t.is_cpu();
#ifdef MOONCAKE_TORCH_CUDA
    dev = dev || t.is_cuda();
#endif
    if (!dev) bad = SP_BAD_DEVICE;
    at::Tensor in = bad ? t : t.cpu().coalesce();
    const int64_t sd = t.sparse_dim(), nd = t.dim(), nnz = bad ? 0 : in._nnz();
    at::Tensor idx, val;
    if (!bad) {
        idx = in._indices().t().contiguous(); // [nnz, sd]
        val = in._values().contiguous();      // [nnz, dense]
    }
    int64_t row = 1; // elements per entry: the dense dims' sizes
    for (int64_t d = sd; d < nd; d++)
        row *= t.size(d);
    const size_t es = t.element_size();
    auto w = newWork(c10d::OpType::ALLREDUCE, "allreduce", {t}, opts.timeout);

    // shapes: [nnz, sparse_dim, dtype, reduce op, what this rank cannot do,
    // sizes...]; a number of dims that differs between ranks is the
    // engine's mismatch error, the rest is checked below (the same on
    // every rank)
    const int64_t H = 5;
    std::vector<int64_t> meta(H + nd);
    meta[0] = nnz;
    meta[1] = sd;
    meta[2] = static_cast<int64_t>(t.scalar_type());
    meta[3] = static_cast<int64_t>(opts.reduceOp.op_);
    meta[4] = bad;
    for (int64_t d = 0; d < nd; d++)
        meta[H + d] = t.size(d);
    std::vector<int64_t> all(meta.size() * size_);
    MC_RUN(w, "allreduce", true, allgather, meta.data(), all.data(),
           meta.size(), MC_INT64);
    std::vector<uint8_t> act(size_);
    mc_comm_op_view(comm_->get(), nullptr, act.data(), nullptr);
    for (int r = 0; r < size_; r++) {
        const int64_t *m = all.data() + r * meta.size();
        if (!act[r] || m[4] == SP_OK) continue;
        TORCH_CHECK(m[4] != SP_BAD_OP,
                    "mooncake allreduce: a sparse tensor supports "
                    "ReduceOp.SUM only (as gloo); rank ", r, " passed "
                    "ReduceOp ", m[3]);
        TORCH_CHECK(false, "mooncake allreduce: rank ", r, " passed a "
                    "sparse tensor on a device other than CPU"
#ifdef MOONCAKE_TORCH_CUDA
                    " or CUDA"
#endif
        );
    }
    std::vector<size_t> counts(size_), displs(size_);
    size_t total = 0;
    for (int r = 0; r < size_; r++) {
        const int64_t *m = all.data() + r * meta.size();
        counts[r] = 0;
        displs[r] = total;
        if (!act[r]) continue; // zero-filled: a rank not in the view
        for (int64_t d = 0; d < nd; d++)
            TORCH_CHECK(m[H + d] == meta[H + d],
                        "mooncake allreduce: sparse tensor sizes differ: "
                        "rank ", r, " has ", m[H + d], " in dim ", d,
                        ", rank ", rank_, " ", meta[H + d]);
        TORCH_CHECK(m[1] == sd && m[2] == meta[2],
                    "mooncake allreduce: sparse tensors differ: rank ", r,
                    " has sparse_dim ", m[1], " and dtype ",
                    static_cast<at::ScalarType>(m[2]), ", rank ", rank_, " ",
                    sd, " and ", t.scalar_type());
        TORCH_CHECK(m[0] >= 0, "mooncake allreduce: rank ", r, " has ",
                    m[0], " sparse entries");
        // indices, then values, padded to 8 bytes: every block aligned
        counts[r] = (static_cast<size_t>(m[0]) * (sd * 8 + row * es) + 7) &
                    ~static_cast<size_t>(7);
        total += counts[r];
    }
    std::vector<uint8_t> mine(counts[rank_]), got(total);
    if (nnz) {
        std::memcpy(mine.data(), idx.data_ptr(), nnz * sd * 8);
        std::memcpy(mine.data() + nnz * sd * 8, val.data_ptr(),
                    nnz * row * es);
    }
    // (a failure of either exchange throws: the caller's tensor stays as
    // it was)
    MC_RUN(w, "allreduce", true, allgatherv, mine.data(), mine.size(),
           got.data(), counts.data(), displs.data(), MC_UINT8);
    // a rank that failed during the second: in the first's view, not the
    // second's; its block is zeros
    mc_comm_op_view(comm_->get(), nullptr, act.data(), nullptr);
    std::vector<at::Tensor> idxs, vals;
    std::vector<int64_t> vshape(val.sizes().begin(), val.sizes().end());
    for (int r = 0; r < size_; r++) {
        if (!act[r] || !counts[r]) continue;
        const int64_t n = all[r * meta.size()];
        uint8_t *b = got.data() + displs[r];
        idxs.push_back(at::from_blob(b, {n, sd}, at::kLong));
        vshape[0] = n;
        vals.push_back(at::from_blob(b + n * sd * 8, vshape,
                                     val.options().device(at::kCPU)));
    }
    if (idxs.empty()) { // no entries anywhere: keep the sparse/dense dims
        idxs.push_back(at::empty({0, sd}, at::kLong));
        vshape[0] = 0;
        vals.push_back(at::empty(vshape, val.options().device(at::kCPU)));
    }
    // cat copies out of `got`
    at::Tensor out = at::sparse_coo_tensor(at::cat(idxs).t(), at::cat(vals),
                                           in.sizes())
                         .coalesce();
    t.copy_(out.to(t.device()));
    w->start();
    return w;
}

c10::intrusive_ptr<c10d::Work>
MooncakeBackend::allreduce(std::vector<at::Tensor> &tensors,
                           const c10d::AllreduceOptions &opts)
{
    if (tensors.size() == 1 && tensors[0].defined() &&
        tensors[0].layout() == at::kSparse)
        return allreduceSparse(tensors[0], opts);
    const at::Tensor &t = single(tensors, "allreduce");
    checkTensor(t, "allreduce");
    TORCH_CHECK(!opts.sparseIndices.has_value(),
                "mooncake allreduce: sparse tensors are not supported");
    ReduceType rt = reduceType("allreduce", t.scalar_type(), opts.reduceOp);
    auto w = newWork(c10d::OpType::ALLREDUCE, "allreduce", {t}, opts.timeout);
    const bool blk = !opts.asyncOp && runInline(opts.timeout);
    Stage s(*w);
    at::Tensor h = s.out(t, /*fill=*/true);
    s.ready();
    size_t n = static_cast<size_t>(t.numel()) * rt.factor;
    MC_RUN(w, "allreduce", blk, allreduce, dataOf(h), dataOf(h), n, rt.dtype,
           rt.op);
    w->start();
    return w;
}

c10::intrusive_ptr<c10d::Work> MooncakeBackend::allreduce_coalesced(
    std::vector<at::Tensor> &tensors,
    const c10d::AllreduceCoalescedOptions &opts)
{
    std::vector<ReduceType> rts;
    for (auto &t : tensors) {
        checkTensor(t, "allreduce_coalesced");
        rts.push_back(
            reduceType("allreduce_coalesced", t.scalar_type(), opts.reduceOp));
    }
    auto w = newWork(c10d::OpType::ALLREDUCE_COALESCED, "allreduce_coalesced",
                     tensors, opts.timeout);
    const bool blk = !opts.asyncOp && runInline(opts.timeout);
    Stage s(*w);
    std::vector<at::Tensor> hs;
    for (auto &t : tensors)
        hs.push_back(s.out(t, /*fill=*/true));
    s.ready();
    // One request per tensor: they run back to back in issue order.
    for (size_t i = 0; i < tensors.size(); i++) {
        size_t n = static_cast<size_t>(tensors[i].numel()) * rts[i].factor;
        MC_RUN(w, "allreduce_coalesced", blk, allreduce, dataOf(hs[i]),
               dataOf(hs[i]), n, rts[i].dtype, rts[i].op);
    }
    w->start();
    return w;
}

c10::intrusive_ptr<c10d::Work>
MooncakeBackend::broadcast(std::vector<at::Tensor> &tensors,
                           const c10d::BroadcastOptions &opts)
{
    const at::Tensor &t = single(tensors, "broadcast");
    checkTensor(t, "broadcast");
    TORCH_CHECK(opts.rootRank >= 0 && opts.rootRank < size_,
                "mooncake broadcast: root rank ", opts.rootRank,
                " out of range for group size ", size_);
    TORCH_CHECK(opts.rootTensor == 0,
                "mooncake broadcast: rootTensor must be 0");
    auto w = newWork(c10d::OpType::BROADCAST, "broadcast", {t}, opts.timeout);
    const bool blk = !opts.asyncOp && runInline(opts.timeout);
    Stage s(*w);
    at::Tensor h = rank_ == opts.rootRank ? s.in(t) : s.out(t, false);
    s.ready();
    MC_RUN(w, "broadcast", blk, broadcast, dataOf(h), dataOf(h), nbytesOf(t),
           MC_UINT8, static_cast<int>(opts.rootRank));
    w->start();
    return w;
}

c10::intrusive_ptr<c10d::Work>
MooncakeBackend::reduce(std::vector<at::Tensor> &tensors,
                        const c10d::ReduceOptions &opts)
{
    const at::Tensor &t = single(tensors, "reduce");
    checkTensor(t, "reduce");
    TORCH_CHECK(opts.rootRank >= 0 && opts.rootRank < size_,
                "mooncake reduce: root rank ", opts.rootRank,
                " out of range for group size ", size_);
    ReduceType rt = reduceType("reduce", t.scalar_type(), opts.reduceOp);
    auto w = newWork(c10d::OpType::REDUCE, "reduce", {t}, opts.timeout);
    const bool blk = !opts.asyncOp && runInline(opts.timeout);
    Stage s(*w);
    bool root = rank_ == opts.rootRank;
    at::Tensor h = root ? s.out(t, /*fill=*/true) : s.in(t);
    s.ready();
    size_t n = static_cast<size_t>(t.numel()) * rt.factor;
    MC_RUN(w, "reduce", blk, reduce, dataOf(h), root ? dataOf(h) : nullptr, n,
           rt.dtype, rt.op, static_cast<int>(opts.rootRank));
    w->start();
    return w;
}

c10::intrusive_ptr<c10d::Work>
MooncakeBackend::allgather(std::vector<std::vector<at::Tensor>> &outputs,
                           std::vector<at::Tensor> &inputs,
                           const c10d::AllgatherOptions &opts)
{
    const at::Tensor &in = single(inputs, "allgather");
    checkTensor(in, "allgather");
    TORCH_CHECK(outputs.size() == 1,
                "mooncake allgather: expected one output list, got ",
                outputs.size());
    auto &outs = outputs[0];
    TORCH_CHECK(static_cast<int>(outs.size()) == size_,
                "mooncake allgather: the output list has ", outs.size(),
                " tensors, expected the group size ", size_);
    std::vector<size_t> counts(size_), displs(size_);
    size_t total = 0;
    bool even = true;
    for (int r = 0; r < size_; r++) {
        checkTensor(outs[r], "allgather");
        checkSameDtype(outs[r], in, "allgather");
        counts[r] = nbytesOf(outs[r]);
        displs[r] = total;
        total += counts[r];
        even = even && counts[r] == counts[0];
    }
    TORCH_CHECK(counts[rank_] == nbytesOf(in),
                "mooncake allgather: output tensor ", rank_, " has ",
                outs[rank_].numel(), " elements but the input has ",
                in.numel());
    auto w = newWork(c10d::OpType::ALLGATHER, "allgather", outs, opts.timeout);
    const bool blk = !opts.asyncOp && runInline(opts.timeout);
    w->noteCuda({in});
    Stage s(*w);
    at::Tensor hin = s.in(in);
    at::Tensor flat = s.flat(
        static_cast<int64_t>(total / std::max<size_t>(in.element_size(), 1)),
        in.scalar_type(), w->cuda);
    int64_t off = 0;
    for (int r = 0; r < size_; r++) {
        s.copyBackSlice(flat, off, outs[r]);
        off += outs[r].numel();
    }
    s.ready();
    if (even)
        MC_RUN(w, "allgather", blk, allgather, dataOf(hin), dataOf(flat),
               counts[0], MC_UINT8);
    else
        MC_RUN(w, "allgather", blk, allgatherv, dataOf(hin), counts[rank_],
               dataOf(flat), counts.data(), displs.data(), MC_UINT8);
    w->start();
    return w;
}

c10::intrusive_ptr<c10d::Work>
MooncakeBackend::_allgather_base(at::Tensor &output, at::Tensor &input,
                                 const c10d::AllgatherOptions &opts)
{
    std::vector<at::Tensor> outs{output}, ins{input};
    return allgather_into_tensor_coalesced(outs, ins, opts);
}

c10::intrusive_ptr<c10d::Work> MooncakeBackend::allgather_into_tensor_coalesced(
    std::vector<at::Tensor> &outputs, std::vector<at::Tensor> &inputs,
    const c10d::AllgatherOptions &opts)
{
    const char *op = "allgather_into_tensor";
    TORCH_CHECK(outputs.size() == inputs.size(), "mooncake ", op, ": ",
                outputs.size(), " outputs for ", inputs.size(), " inputs");
    for (size_t i = 0; i < inputs.size(); i++) {
        checkTensor(inputs[i], op);
        checkTensor(outputs[i], op);
        checkSameDtype(outputs[i], inputs[i], op);
        TORCH_CHECK(outputs[i].numel() == inputs[i].numel() * size_,
                    "mooncake ", op, ": the output has ", outputs[i].numel(),
                    " elements, expected input size ", inputs[i].numel(),
                    " times the group size ", size_);
    }
    auto w = newWork(c10d::OpType::_ALLGATHER_BASE, op, outputs, opts.timeout);
    const bool blk = !opts.asyncOp && runInline(opts.timeout);
    w->noteCuda(inputs);
    Stage s(*w);
    std::vector<at::Tensor> hin, hout;
    for (size_t i = 0; i < inputs.size(); i++) {
        hin.push_back(s.in(inputs[i]));
        hout.push_back(s.out(outputs[i], /*fill=*/false));
    }
    s.ready();
    for (size_t i = 0; i < inputs.size(); i++)
        MC_RUN(w, op, blk, allgather, dataOf(hin[i]), dataOf(hout[i]),
               nbytesOf(inputs[i]), MC_UINT8);
    w->start();
    return w;
}

c10::intrusive_ptr<c10d::Work> MooncakeBackend::allgather_coalesced(
    std::vector<std::vector<at::Tensor>> &outputLists,
    std::vector<at::Tensor> &inputs, const c10d::AllgatherOptions &opts)
{
    const char *op = "allgather_coalesced";
    TORCH_CHECK(static_cast<int>(outputLists.size()) == size_, "mooncake ", op,
                ": expected ", size_, " output lists, got ",
                outputLists.size());
    std::vector<at::Tensor> all;
    for (int r = 0; r < size_; r++) {
        TORCH_CHECK(outputLists[r].size() == inputs.size(), "mooncake ", op,
                    ": output list ", r, " has ", outputLists[r].size(),
                    " tensors, expected ", inputs.size());
        for (size_t j = 0; j < inputs.size(); j++) {
            checkTensor(outputLists[r][j], op);
            checkSameDtype(outputLists[r][j], inputs[j], op);
            TORCH_CHECK(outputLists[r][j].numel() == inputs[j].numel(),
                        "mooncake ", op, ": output [", r, "][", j, "] has ",
                        outputLists[r][j].numel(), " elements, input ", j,
                        " has ", inputs[j].numel());
            all.push_back(outputLists[r][j]);
        }
    }
    for (auto &t : inputs)
        checkTensor(t, op);
    auto w = newWork(c10d::OpType::ALLGATHER_COALESCED, op, all, opts.timeout);
    const bool blk = !opts.asyncOp && runInline(opts.timeout);
    w->noteCuda(inputs);
    Stage s(*w);
    std::vector<at::Tensor> hin, flats;
    for (size_t j = 0; j < inputs.size(); j++) {
        hin.push_back(s.in(inputs[j]));
        at::Tensor flat =
            s.flat(inputs[j].numel() * size_, inputs[j].scalar_type(), w->cuda);
        for (int r = 0; r < size_; r++)
            s.copyBackSlice(flat, r * inputs[j].numel(), outputLists[r][j]);
        flats.push_back(flat);
    }
    s.ready();
    for (size_t j = 0; j < inputs.size(); j++)
        MC_RUN(w, op, blk, allgather, dataOf(hin[j]), dataOf(flats[j]),
               nbytesOf(inputs[j]), MC_UINT8);
    w->start();
    return w;
}

// The per-rank tensor list a rooted op takes at its root (gather's outputs,
// scatter's inputs): exactly `size` tensors shaped like `like` at the root,
// nothing elsewhere. Returns the root's list (empty on other ranks).
std::vector<at::Tensor>
MooncakeBackend::rootList(std::vector<std::vector<at::Tensor>> &lists,
                          const at::Tensor &like, int64_t rootRank,
                          const char *op, const char *what) const
{
    TORCH_CHECK(rootRank >= 0 && rootRank < size_, "mooncake ", op,
                ": root rank ", rootRank, " out of range for group size ",
                size_);
    if (rank_ != rootRank) {
        TORCH_CHECK(lists.empty() || (lists.size() == 1 && lists[0].empty()),
                    "mooncake ", op, ": only the root takes ", what,
                    " tensors");
        return {};
    }
    TORCH_CHECK(lists.size() == 1 && static_cast<int>(lists[0].size()) == size_,
                "mooncake ", op, ": the root needs one ", what, " list of ",
                size_, " tensors");
    for (auto &t : lists[0]) {
        checkTensor(t, op);
        checkSameDtype(t, like, op);
        TORCH_CHECK(t.numel() == like.numel(), "mooncake ", op, ": ", what,
                    " tensors must have ", like.numel(),
                    " elements like the rank's own tensor, got ", t.numel());
    }
    return lists[0];
}

c10::intrusive_ptr<c10d::Work>
MooncakeBackend::gather(std::vector<std::vector<at::Tensor>> &outputs,
                        std::vector<at::Tensor> &inputs,
                        const c10d::GatherOptions &opts)
{
    const at::Tensor &in = single(inputs, "gather");
    checkTensor(in, "gather");
    bool root = rank_ == opts.rootRank;
    std::vector<at::Tensor> outs =
        rootList(outputs, in, opts.rootRank, "gather", "output");
    auto w = newWork(c10d::OpType::GATHER, "gather", outs, opts.timeout);
    const bool blk = !opts.asyncOp && runInline(opts.timeout);
    w->noteCuda({in});
    Stage s(*w);
    at::Tensor hin = s.in(in);
    at::Tensor flat;
    if (root) {
        flat = s.flat(in.numel() * size_, in.scalar_type(), w->cuda);
        for (int r = 0; r < size_; r++)
            s.copyBackSlice(flat, r * in.numel(), outs[r]);
    }
    s.ready();
    MC_RUN(w, "gather", blk, gather, dataOf(hin), root ? dataOf(flat) : nullptr,
           nbytesOf(in), MC_UINT8, static_cast<int>(opts.rootRank));
    w->start();
    return w;
}

c10::intrusive_ptr<c10d::Work>
MooncakeBackend::scatter(std::vector<at::Tensor> &outputs,
                         std::vector<std::vector<at::Tensor>> &inputs,
                         const c10d::ScatterOptions &opts)
{
    const at::Tensor &out = single(outputs, "scatter");
    checkTensor(out, "scatter");
    bool root = rank_ == opts.rootRank;
    std::vector<at::Tensor> ins =
        rootList(inputs, out, opts.rootRank, "scatter", "input");
    auto w = newWork(c10d::OpType::SCATTER, "scatter", {out}, opts.timeout);
    const bool blk = !opts.asyncOp && runInline(opts.timeout);
    w->noteCuda(ins);
    Stage s(*w);
    at::Tensor flat;
    if (root) {
        flat = s.flat(out.numel() * size_, out.scalar_type(), w->cuda);
        for (int r = 0; r < size_; r++)
            s.fillSlice(flat, r * out.numel(), ins[r]);
    }
    at::Tensor hout = s.out(out, /*fill=*/false);
    s.ready();
    MC_RUN(w, "scatter", blk, scatter, root ? dataOf(flat) : nullptr,
           dataOf(hout), nbytesOf(out), MC_UINT8,
           static_cast<int>(opts.rootRank));
    w->start();
    return w;
}

c10::intrusive_ptr<c10d::Work>
MooncakeBackend::reduce_scatter(std::vector<at::Tensor> &outputs,
                                std::vector<std::vector<at::Tensor>> &inputs,
                                const c10d::ReduceScatterOptions &opts)
{
    const at::Tensor &out = single(outputs, "reduce_scatter");
    checkTensor(out, "reduce_scatter");
    TORCH_CHECK(inputs.size() == 1 &&
                    static_cast<int>(inputs[0].size()) == size_,
                "mooncake reduce_scatter: expected one input list of ", size_,
                " tensors");
    auto &ins = inputs[0];
    ReduceType rt =
        reduceType("reduce_scatter", out.scalar_type(), opts.reduceOp);
    std::vector<size_t> counts(size_);
    int64_t total = 0;
    bool even = true;
    for (int r = 0; r < size_; r++) {
        checkTensor(ins[r], "reduce_scatter");
        checkSameDtype(ins[r], out, "reduce_scatter");
        counts[r] = static_cast<size_t>(ins[r].numel()) * rt.factor;
        total += ins[r].numel();
        even = even && counts[r] == counts[0];
    }
    TORCH_CHECK(ins[rank_].numel() == out.numel(),
                "mooncake reduce_scatter: input ", rank_, " has ",
                ins[rank_].numel(), " elements but the output has ",
                out.numel());
    auto w = newWork(c10d::OpType::REDUCE_SCATTER, "reduce_scatter", {out},
                     opts.timeout);
    const bool blk = !opts.asyncOp && runInline(opts.timeout);
    w->noteCuda(ins);
    Stage s(*w);
    at::Tensor flat = s.flat(total, out.scalar_type(), w->cuda);
    int64_t off = 0;
    for (int r = 0; r < size_; r++) {
        s.fillSlice(flat, off, ins[r]);
        off += ins[r].numel();
    }
    at::Tensor hout = s.out(out, /*fill=*/false);
    s.ready();
    if (even)
        MC_RUN(w, "reduce_scatter", blk, reduce_scatter, dataOf(flat),
               dataOf(hout), counts[0], rt.dtype, rt.op);
    else
        MC_RUN(w, "reduce_scatter", blk, reduce_scatterv, dataOf(flat),
               dataOf(hout), counts.data(), rt.dtype, rt.op);
    w->start();
    return w;
}

c10::intrusive_ptr<c10d::Work>
MooncakeBackend::_reduce_scatter_base(at::Tensor &output, at::Tensor &input,
                                      const c10d::ReduceScatterOptions &opts)
{
    std::vector<at::Tensor> outs{output}, ins{input};
    return reduce_scatter_tensor_coalesced(outs, ins, opts);
}

c10::intrusive_ptr<c10d::Work> MooncakeBackend::reduce_scatter_tensor_coalesced(
    std::vector<at::Tensor> &outputs, std::vector<at::Tensor> &inputs,
    const c10d::ReduceScatterOptions &opts)
{
    const char *op = "reduce_scatter_tensor";
    TORCH_CHECK(outputs.size() == inputs.size(), "mooncake ", op, ": ",
                outputs.size(), " outputs for ", inputs.size(), " inputs");
    std::vector<ReduceType> rts;
    for (size_t i = 0; i < inputs.size(); i++) {
        checkTensor(inputs[i], op);
        checkTensor(outputs[i], op);
        checkSameDtype(outputs[i], inputs[i], op);
        TORCH_CHECK(inputs[i].numel() == outputs[i].numel() * size_,
                    "mooncake ", op, ": the input has ", inputs[i].numel(),
                    " elements, expected output size ", outputs[i].numel(),
                    " times the group size ", size_);
        rts.push_back(reduceType(op, inputs[i].scalar_type(), opts.reduceOp));
    }
    auto w =
        newWork(c10d::OpType::_REDUCE_SCATTER_BASE, op, outputs, opts.timeout);
    const bool blk = !opts.asyncOp && runInline(opts.timeout);
    w->noteCuda(inputs);
    Stage s(*w);
    std::vector<at::Tensor> hin, hout;
    for (size_t i = 0; i < inputs.size(); i++) {
        hin.push_back(s.in(inputs[i]));
        hout.push_back(s.out(outputs[i], /*fill=*/false));
    }
    s.ready();
    for (size_t i = 0; i < inputs.size(); i++)
        MC_RUN(w, op, blk, reduce_scatter, dataOf(hin[i]), dataOf(hout[i]),
               static_cast<size_t>(outputs[i].numel()) * rts[i].factor,
               rts[i].dtype, rts[i].op);
    w->start();
    return w;
}

c10::intrusive_ptr<c10d::Work>
MooncakeBackend::alltoall_base(at::Tensor &output, at::Tensor &input,
                               std::vector<int64_t> &outputSplitSizes,
                               std::vector<int64_t> &inputSplitSizes,
                               const c10d::AllToAllOptions &opts)
{
    const char *op = "alltoall_base";
    checkTensor(output, op);
    checkTensor(input, op);
    checkSameDtype(output, input, op);
    auto w = newWork(c10d::OpType::ALLTOALL_BASE, op, {output}, opts.timeout);
    const bool blk = !opts.asyncOp && runInline(opts.timeout);
    w->noteCuda({input});
    if (outputSplitSizes.empty() && inputSplitSizes.empty()) {
        TORCH_CHECK(input.numel() % size_ == 0 &&
                        output.numel() == input.numel(),
                    "mooncake ", op, ": without split sizes the input (",
                    input.numel(), " elements) and output (", output.numel(),
                    ") must be equal and divisible by the group size ", size_);
        Stage s(*w);
        at::Tensor hin = s.in(input);
        if (hin.is_same(output) ||
            (hin.numel() && input.is_cpu() && output.is_cpu() &&
             hin.storage().is_alias_of(output.storage())))
            hin = s.in(input.clone()); // the engine is not in-place
        at::Tensor hout = s.out(output, /*fill=*/false);
        s.ready();
        MC_RUN(w, op, blk, alltoall, dataOf(hin), dataOf(hout),
               nbytesOf(input) / size_, MC_UINT8);
        w->start();
        return w;
    }
    // Splits count rows of dimension 0; a missing side splits evenly.
    auto rows = [&](const at::Tensor &t, std::vector<int64_t> &splits,
                    const char *which, std::vector<size_t> &bytes,
                    std::vector<size_t> &displs) {
        TORCH_CHECK(t.dim() >= 1, "mooncake ", op, ": the ", which,
                    " tensor needs at least one dimension");
        int64_t n0 = t.size(0);
        size_t rowBytes = n0 ? nbytesOf(t) / static_cast<size_t>(n0) : 0;
        std::vector<int64_t> sp = splits;
        if (sp.empty()) {
            TORCH_CHECK(n0 % size_ == 0, "mooncake ", op, ": the ", which,
                        " tensor's ", n0, " rows do not split evenly over ",
                        size_, " ranks");
            sp.assign(size_, n0 / size_);
        }
        TORCH_CHECK(static_cast<int>(sp.size()) == size_, "mooncake ", op, ": ",
                    which, " split sizes have ", sp.size(),
                    " entries, expected ", size_);
        int64_t sum = 0;
        bytes.resize(size_);
        displs.resize(size_);
        for (int r = 0; r < size_; r++) {
            TORCH_CHECK(sp[r] >= 0, "mooncake ", op, ": negative ", which,
                        " split size");
            displs[r] = static_cast<size_t>(sum) * rowBytes;
            bytes[r] = static_cast<size_t>(sp[r]) * rowBytes;
            sum += sp[r];
        }
        TORCH_CHECK(sum == n0, "mooncake ", op, ": ", which,
                    " split sizes add up to ", sum, " but the tensor has ", n0,
                    " rows");
    };
    std::vector<size_t> sc, sd, rc, rd;
    rows(input, inputSplitSizes, "input", sc, sd);
    rows(output, outputSplitSizes, "output", rc, rd);
    Stage s(*w);
    at::Tensor hin = s.in(input);
    if (hin.numel() && input.is_cpu() && output.is_cpu() &&
        hin.storage().is_alias_of(output.storage()))
        hin = s.in(input.clone());
    at::Tensor hout = s.out(output, /*fill=*/false);
    s.ready();
    MC_RUN(w, op, blk, alltoallv, dataOf(hin), sc.data(), sd.data(),
           dataOf(hout), rc.data(), rd.data(), MC_UINT8);
    w->start();
    return w;
}

c10::intrusive_ptr<c10d::Work>
MooncakeBackend::alltoall(std::vector<at::Tensor> &outputs,
                          std::vector<at::Tensor> &inputs,
                          const c10d::AllToAllOptions &opts)
{
    const char *op = "alltoall";
    TORCH_CHECK(static_cast<int>(outputs.size()) == size_ &&
                    static_cast<int>(inputs.size()) == size_,
                "mooncake ", op, ": expected ", size_,
                " input and output tensors, got ", inputs.size(), " and ",
                outputs.size());
    std::vector<size_t> sc(size_), sd(size_), rc(size_), rd(size_);
    int64_t inTotal = 0, outTotal = 0;
    for (int r = 0; r < size_; r++) {
        checkTensor(inputs[r], op);
        checkTensor(outputs[r], op);
        checkSameDtype(inputs[r], inputs[0], op);
        checkSameDtype(outputs[r], inputs[0], op);
        size_t es = inputs[0].element_size();
        sd[r] = static_cast<size_t>(inTotal) * es;
        sc[r] = nbytesOf(inputs[r]);
        rd[r] = static_cast<size_t>(outTotal) * es;
        rc[r] = nbytesOf(outputs[r]);
        inTotal += inputs[r].numel();
        outTotal += outputs[r].numel();
    }
    auto w = newWork(c10d::OpType::ALLTOALL, op, outputs, opts.timeout);
    const bool blk = !opts.asyncOp && runInline(opts.timeout);
    w->noteCuda(inputs);
    Stage s(*w);
    at::ScalarType dt = inputs[0].scalar_type();
    at::Tensor fin = s.flat(inTotal, dt, w->cuda);
    at::Tensor fout = s.flat(outTotal, dt, w->cuda);
    int64_t off = 0;
    for (int r = 0; r < size_; r++) {
        s.fillSlice(fin, off, inputs[r]);
        off += inputs[r].numel();
    }
    off = 0;
    for (int r = 0; r < size_; r++) {
        s.copyBackSlice(fout, off, outputs[r]);
        off += outputs[r].numel();
    }
    s.ready();
    MC_RUN(w, op, blk, alltoallv, dataOf(fin), sc.data(), sd.data(),
           dataOf(fout), rc.data(), rd.data(), MC_UINT8);
    w->start();
    return w;
}

c10::intrusive_ptr<c10d::Work>
MooncakeBackend::barrier(const c10d::BarrierOptions &opts)
{
    auto w = newWork(c10d::OpType::BARRIER, "barrier", {}, opts.timeout);
    const bool blk = !opts.asyncOp && runInline(opts.timeout);
    if (blk) {
        mc_status_t st = mc_comm_barrier(comm_->get());
        if (st < 0) throwIssue("barrier", st, true);
    } else {
        mc_request_h r = nullptr;
        mc_status_t st = mc_comm_ibarrier(comm_->get(), &r);
        if (st < 0) throwIssue("barrier", st, true);
        w->addRequest(r);
    }
    w->start();
    return w;
}

c10::intrusive_ptr<c10d::Work>
MooncakeBackend::send(std::vector<at::Tensor> &tensors, int dstRank, int tag)
{
    const at::Tensor &t = single(tensors, "send");
    checkTensor(t, "send");
    TORCH_CHECK(dstRank >= 0 && dstRank < size_,
                "mooncake send: destination rank ", dstRank,
                " out of range for group size ", size_);
    TORCH_CHECK(tag >= 0, "mooncake send: negative tag ", tag);
    auto w = newWork(c10d::OpType::SEND, "send", {t}, c10d::kUnsetTimeout);
    const bool blk = false; // p2p: torch waits separately
    Stage s(*w);
    at::Tensor h = s.in(t);
    s.ready();
    MC_RUN(w, "send", blk, send, dataOf(h), nbytesOf(t), MC_UINT8, dstRank,
           static_cast<uint32_t>(tag));
    w->start();
    return w;
}

c10::intrusive_ptr<c10d::Work>
MooncakeBackend::recv(std::vector<at::Tensor> &tensors, int srcRank, int tag)
{
    const at::Tensor &t = single(tensors, "recv");
    checkTensor(t, "recv");
    TORCH_CHECK(srcRank >= 0 && srcRank < size_, "mooncake recv: source rank ",
                srcRank, " out of range for group size ", size_);
    TORCH_CHECK(tag >= 0, "mooncake recv: negative tag ", tag);
    auto w = newWork(c10d::OpType::RECV, "recv", {t}, c10d::kUnsetTimeout);
    const bool blk = false; // p2p: torch waits separately
    Stage s(*w);
    at::Tensor h = s.out(t, /*fill=*/false);
    s.ready();
    MC_RUN(w, "recv", blk, recv, dataOf(h), nbytesOf(t), MC_UINT8, srcRank,
           static_cast<uint32_t>(tag));
    w->start();
    return w;
}

c10::intrusive_ptr<c10d::Work>
MooncakeBackend::recvAnysource(std::vector<at::Tensor> &tensors, int tag)
{
    const at::Tensor &t = single(tensors, "recv");
    checkTensor(t, "recv");
    TORCH_CHECK(tag >= 0, "mooncake recv: negative tag ", tag);
    auto w =
        newWork(c10d::OpType::RECVANYSOURCE, "recv", {t}, c10d::kUnsetTimeout);
    const bool blk = false; // p2p: torch waits separately
    Stage s(*w);
    at::Tensor h = s.out(t, /*fill=*/false);
    s.ready();
    MC_RUN(w, "recv", blk, recv, dataOf(h), nbytesOf(t), MC_UINT8,
           MC_ANY_SOURCE, static_cast<uint32_t>(tag));
    w->start();
    return w;
}

c10::intrusive_ptr<c10d::Backend>
createBackend(const c10::intrusive_ptr<c10d::Store> &store, int rank, int size,
              std::chrono::milliseconds timeout)
{
    return c10::make_intrusive<MooncakeBackend>(store, rank, size, timeout);
}

} // namespace mooncake
