// The serving runtime's gRPC transport in C++ (grpc++ callback API), as the Python module
// shipyard.serving_runtime.protocol._grpc_native.
//
// Why: with grpc.aio every call costs the Python event loop ~80 us of transport work (HTTP/2,
// completion-queue polling, per-call objects), which bounded the runtime at ~6k req/s on a 2-core
// machine (docs/serving.md, "Native gRPC frontend"). Here grpc++'s own threads do the transport and
// hand the Python loop whole messages, many at a time, through one eventfd.
//
// The module knows nothing about the inference protocol: a call is (id, method index, bytes).
// Python decodes, runs and encodes; it answers with send(). Calls for methods it did not register
// get UNIMPLEMENTED here, and calls past the in-flight limit get RESOURCE_EXHAUSTED here, at once,
// without waking Python.
//
// Threads: grpc's callback threads run the reactors; Python threads call take() and send(). send()
// only queues the answer: one writer thread of ours hands answers to grpc, so the event loop's
// thread never runs grpc's transport work (grpc runs queued transport work, and reactions, inline
// in whichever thread starts an operation). The reactors' own lock is never held while calling into
// grpc.
//
// The fast path for ModelInfer (fast_infer.h): once Python registers a model, plain valid requests
// for it are parsed and grouped here and reach Python as whole groups (take_batches()), answered
// with one complete() per group; everything else still arrives as a message.

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "fast_infer.h"

namespace py = pybind11;

namespace {

// Event kinds, as Python sees them (native_frontend.py mirrors these).
constexpr int kMessage = 0;    // a request message; payload holds it
constexpr int kHalfClose = 1;  // the client sent its last message (streaming methods)
constexpr int kCancel = 2;     // the client cancelled, or its deadline passed; already answered CANCELLED

struct Event {
  uint64_t id;
  int kind;
  int method;
  grpc::ByteBuffer payload;
};

// An answer from Python, on its way to the writer thread.
struct Answer {
  uint64_t id;
  bool has_message;
  grpc::ByteBuffer message;
  bool finish;
  grpc::Status status;
};

class Frontend;

// Answers at once with a status and deletes itself (unknown method, in-flight limit).
class Refusal final : public grpc::ServerGenericBidiReactor {
 public:
  explicit Refusal(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

class Call final : public grpc::ServerGenericBidiReactor {
 public:
  Call(Frontend* frontend, uint64_t id, int method, bool streaming)
      : frontend_(frontend), id_(id), method_(method), streaming_(streaming) {
    StartRead(&read_buf_);
  }

  void Ref() { refs_.fetch_add(1, std::memory_order_relaxed); }
  void Unref() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  // From Python: queue a message (if any) and/or finish with a status.
  void Send(grpc::ByteBuffer* message, bool finish, grpc::Status status) {
    std::unique_lock<std::mutex> lock(mu_);
    if (finish_started_ || finish_pending_) return;  // cancelled, or answered already
    if (message != nullptr) writes_.push_back(std::move(*message));
    if (finish) {
      finish_pending_ = true;
      final_ = std::move(status);
    }
    Pump(lock);
  }

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override {
    std::unique_lock<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) {  // the stream broke: nothing more can be written
      writes_.clear();
      if (!finish_started_) {
        finish_started_ = true;
        lock.unlock();
        Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
      }
      return;
    }
    Pump(lock);
  }
  void OnCancel() override;
  void OnDone() override;

 private:
  // Starts the next write or the finish; called with mu_ held, returns with it released.
  void Pump(std::unique_lock<std::mutex>& lock) {
    if (writing_ || finish_started_) return;
    if (!writes_.empty()) {
      current_ = std::move(writes_.front());
      writes_.pop_front();
      if (finish_pending_ && writes_.empty()) {
        finish_started_ = true;
        grpc::Status status = final_;
        lock.unlock();
        StartWriteAndFinish(&current_, grpc::WriteOptions(), status);
        return;
      }
      writing_ = true;
      lock.unlock();
      StartWrite(&current_);
      return;
    }
    if (finish_pending_) {
      finish_started_ = true;
      grpc::Status status = final_;
      lock.unlock();
      Finish(status);
    }
  }

  Frontend* frontend_;
  const uint64_t id_;
  const int method_;
  const bool streaming_;
  std::atomic<int> refs_{1};  // grpc's, dropped in OnDone; plus one per send() in progress
  grpc::ByteBuffer read_buf_;
  std::mutex mu_;
  std::deque<grpc::ByteBuffer> writes_;
  grpc::ByteBuffer current_;
  grpc::Status final_;
  bool writing_ = false;
  bool finish_pending_ = false;
  bool finish_started_ = false;
  bool got_message_ = false;
};

class Frontend final : public grpc::CallbackGenericService {
 public:
  Frontend(std::vector<std::string> unary, std::vector<std::string> streaming, int max_inflight,
           int max_streams_per_connection, int max_message_bytes)
      : max_inflight_(max_inflight),
        max_streams_per_connection_(max_streams_per_connection),
        max_message_bytes_(max_message_bytes) {
    int index = 0;
    for (auto& name : unary) methods_[name] = {index++, false};
    for (auto& name : streaming) methods_[name] = {index++, true};
    event_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (event_fd_ < 0) throw std::runtime_error(std::string("eventfd: ") + std::strerror(errno));
    writer_ = std::thread([this] {
      pthread_setname_np(pthread_self(), "grpc-writer");  // as benchmarks/threads.py lists it
      if (sched_getaffinity(0, sizeof writer_allowed_, &writer_allowed_) != 0) CPU_ZERO(&writer_allowed_);
      WriterLoop();
    });
  }

  ~Frontend() override {
    if (server_) {
      server_->Shutdown(std::chrono::system_clock::now());
      server_->Wait();
    }
    StopWriter();
    close(event_fd_);
  }

  // idle_timeout_ms, max_connections: --grpc-idle-timeout-secs, --grpc-max-connections (0: none). The
  // connection cap needs grpc >= 1.52 (GRPC_ARG_MAX_ALLOWED_INCOMING_CONNECTIONS); the module says CONNECTION_CAP.
  int Start(const std::string& address, int idle_timeout_ms, int max_connections) {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port);
    builder.RegisterCallbackGenericService(this);
    builder.SetMaxReceiveMessageSize(max_message_bytes_);
    builder.SetMaxSendMessageSize(max_message_bytes_);
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    if (max_streams_per_connection_ > 0) {
      builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, max_streams_per_connection_);
    }
    if (idle_timeout_ms > 0) builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS, idle_timeout_ms);
#ifdef GRPC_ARG_MAX_ALLOWED_INCOMING_CONNECTIONS
    if (max_connections > 0) builder.AddChannelArgument(GRPC_ARG_MAX_ALLOWED_INCOMING_CONNECTIONS, max_connections);
#else
    (void)max_connections;
#endif
    {
      py::gil_scoped_release release;
      server_ = builder.BuildAndStart();
    }
    if (!server_ || port == 0) {
      server_.reset();
      throw std::runtime_error("cannot listen for gRPC on " + address);
    }
    return port;
  }

  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    auto found = methods_.find(ctx->method());
    if (found == methods_.end()) {
      return new Refusal(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "method " + ctx->method() + " is not implemented by this server"));
    }
    if (stopping_.load(std::memory_order_relaxed)) {
      return new Refusal(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"));
    }
    int inflight = inflight_.fetch_add(1, std::memory_order_relaxed) + 1;
    if (max_inflight_ > 0 && inflight > max_inflight_) {
      inflight_.fetch_sub(1, std::memory_order_relaxed);
      refused_.fetch_add(1, std::memory_order_relaxed);
      return new Refusal(grpc::Status(
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          "the server has " + std::to_string(max_inflight_) +
              " gRPC calls in progress, its limit (--grpc-max-concurrent-rpcs); retry later"));
    }
    uint64_t id = next_id_.fetch_add(1, std::memory_order_relaxed);
    auto* call = new Call(this, id, found->second.first, found->second.second);
    {
      std::lock_guard<std::mutex> lock(calls_mu_);
      calls_[id] = call;
    }
    return call;
  }

  void Push(uint64_t id, int kind, int method, grpc::ByteBuffer* payload) {
    std::lock_guard<std::mutex> lock(events_mu_);
    events_.push_back(Event{id, kind, method, grpc::ByteBuffer()});
    if (payload != nullptr) events_.back().payload.Swap(payload);
    Signal();
  }

  // Wakes the event loop once until its next take(); called with events_mu_ held.
  void Signal() {
    if (!signalled_) {
      signalled_ = true;
      uint64_t one = 1;
      ssize_t n = write(event_fd_, &one, sizeof one);
      (void)n;
    }
  }

  // The fast path: true when ``buffer`` was a plain valid ModelInfer request for a registered
  // model and now waits in a group (the buffer is then cleared); false leaves it untouched.
  bool TryFast(uint64_t id, grpc::ByteBuffer* buffer) {
    if (!fast_any_.load(std::memory_order_acquire)) return false;
    std::vector<grpc::Slice> slices;
    if (!buffer->Valid() || !buffer->Dump(&slices).ok() || slices.empty()) return false;
    grpc::Slice message;
    if (slices.size() == 1) {
      message = slices[0];
    } else {
      size_t total = 0;
      for (auto& slice : slices) total += slice.size();
      grpc_slice joined = grpc_slice_malloc(total);
      uint8_t* dst = GRPC_SLICE_START_PTR(joined);
      for (auto& slice : slices) {
        std::memcpy(dst, slice.begin(), slice.size());
        dst += slice.size();
      }
      message = grpc::Slice(joined, grpc::Slice::STEAL_REF);
    }
    std::string_view name, version;
    if (!fastinfer::PeekModel(message.begin(), message.size(), &name, &version)) return false;
    std::shared_ptr<const fastinfer::ModelSig> sig;
    {
      std::string key(name);
      key.push_back('\0');
      key.append(version);
      std::lock_guard<std::mutex> lock(fast_mu_);
      auto found = fast_models_.find(key);
      if (found == fast_models_.end()) return false;
      sig = found->second;
    }
    fastinfer::Parsed parsed;
    if (!fastinfer::Parse(*sig, message.begin(), message.size(), &parsed)) return false;
    fastinfer::Request request;
    request.call_id = id;
    request.id = std::string(parsed.id);
    request.batch = parsed.batch;
    request.outputs = std::move(parsed.outputs);
    request.arrival_ns = NowNs();
    request.message = message;
    {
      std::lock_guard<std::mutex> lock(events_mu_);
      fastinfer::Group* group = nullptr;
      for (auto& open : groups_) {
        if (open->sig == sig && open->items + parsed.batch <= sig->max_batch && open->key == parsed.key &&
            (sig->max_requests == 0 || open->requests.size() < sig->max_requests)) {
          group = open.get();
          break;
        }
      }
      if (group == nullptr) {
        groups_.push_back(std::make_unique<fastinfer::Group>());
        group = groups_.back().get();
        group->sig = sig;
        group->key = parsed.key;
      }
      fastinfer::Append(*group, parsed, std::move(request));
      Signal();
    }
    buffer->Clear();
    return true;
  }

  int fast_method() const { return fast_method_.load(std::memory_order_relaxed); }

  // Python: take ModelInfer (method index ``method``) through the fast path for registered models.
  void EnableFast(int method) { fast_method_.store(method); }

  // Python: requests for model ``name`` asking for version ``version`` ("" = the default one) go
  // to the fast path, checked against these inputs and outputs, as groups tagged ``handle``.
  void RegisterModel(const std::string& name, const std::string& version, int64_t handle,
                     const std::string& response_name, const std::string& response_version, int64_t max_batch,
                     size_t max_requests,
                     const std::vector<std::tuple<std::string, std::string, std::string, std::vector<int64_t>, size_t, bool>>& inputs,
                     const std::vector<std::string>& outputs) {
    if (max_batch < 1) throw std::invalid_argument("the fast path needs max_batch_size >= 1");
    auto sig = std::make_shared<fastinfer::ModelSig>();
    sig->handle = handle;
    sig->response_name = response_name;
    sig->response_version = response_version;
    sig->max_batch = max_batch;
    sig->max_requests = max_requests;
    for (auto& [in_name, datatype, dtype, dims, itemsize, optional] : inputs) {
      fastinfer::InputSpec spec;
      spec.name = in_name;
      spec.datatype = datatype;
      spec.dtype = dtype;
      spec.dims = dims;
      spec.itemsize = itemsize;
      spec.optional = optional;
      if (!optional) ++sig->required;
      sig->inputs.push_back(std::move(spec));
    }
    sig->outputs = outputs;
    std::string key = name;
    key.push_back('\0');
    key.append(version);
    std::lock_guard<std::mutex> lock(fast_mu_);
    fast_models_[key] = std::move(sig);
    fast_any_.store(true, std::memory_order_release);
  }

  void UnregisterModel(const std::string& name, const std::string& version) {
    std::string key = name;
    key.push_back('\0');
    key.append(version);
    std::lock_guard<std::mutex> lock(fast_mu_);
    fast_models_.erase(key);
    fast_any_.store(!fast_models_.empty(), std::memory_order_release);
  }

  std::vector<std::unique_ptr<fastinfer::Group>> TakeGroups() {
    NoteLoopCpu();
    std::vector<std::unique_ptr<fastinfer::Group>> groups;
    std::lock_guard<std::mutex> lock(events_mu_);
    groups.swap(groups_);
    return groups;
  }

  static int64_t NowNs() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

  // Hands answers to the writer thread (any thread, GIL not needed).
  void QueueAnswers(std::deque<Answer>& answers) {
    if (answers.empty()) return;
    bool wake;
    {
      std::lock_guard<std::mutex> lock(answers_mu_);
      for (auto& answer : answers) answers_.push_back(std::move(answer));
      wake = writer_idle_;
      writer_idle_ = false;
    }
    if (wake) answers_cv_.notify_one();
  }

  void Forget(uint64_t id) {
    {
      std::lock_guard<std::mutex> lock(calls_mu_);
      calls_.erase(id);
    }
    inflight_.fetch_sub(1, std::memory_order_relaxed);
  }

  // Every event since the last take(), as (id, kind, method, payload bytes or None).
  py::list Take() {
    NoteLoopCpu();
    std::deque<Event> events;
    {
      std::lock_guard<std::mutex> lock(events_mu_);
      events.swap(events_);
      signalled_ = false;
      uint64_t count;
      ssize_t n = read(event_fd_, &count, sizeof count);
      (void)n;
    }
    py::list out(events.size());
    size_t i = 0;
    for (auto& event : events) {
      py::object payload = py::none();
      if (event.kind == kMessage) payload = ToBytes(event.payload);
      out[i++] = py::make_tuple(event.id, event.kind, event.method, std::move(payload));
    }
    return out;
  }

  // A message (or None) and/or the final status for call ``id``; a no-op for a call that ended.
  // Copies the bytes and queues the answer for the writer thread.
  void Send(uint64_t id, py::object data, bool finish, int code, const std::string& message) {
    Answer answer{id, !data.is_none(), grpc::ByteBuffer(), finish,
                  code == 0 ? grpc::Status::OK : grpc::Status(static_cast<grpc::StatusCode>(code), message)};
    if (answer.has_message) {
      char* ptr = nullptr;
      Py_ssize_t size = 0;
      if (PyBytes_AsStringAndSize(data.ptr(), &ptr, &size) != 0) throw py::error_already_set();
      grpc::Slice slice(ptr, static_cast<size_t>(size));
      grpc::ByteBuffer copy(&slice, 1);
      answer.message.Swap(&copy);
    }
    std::deque<Answer> one;
    one.push_back(std::move(answer));
    QueueAnswers(one);
  }

  // Stop taking calls; calls in progress get ``grace_s`` seconds to be answered, then CANCELLED.
  void Shutdown(double grace_s) {
    stopping_.store(true);
    if (!server_) return;
    py::gil_scoped_release release;
    auto deadline = std::chrono::system_clock::now() +
                    std::chrono::microseconds(static_cast<int64_t>(grace_s * 1e6));
    server_->Shutdown(deadline);
    server_->Wait();
    server_.reset();
  }

  int fd() const { return event_fd_; }

 private:
  // Hands queued answers to grpc, a batch at a time, until StopWriter().
  void WriterLoop() {
    std::deque<Answer> batch;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(answers_mu_);
        while (answers_.empty() && !writer_stop_) {
          writer_idle_ = true;
          answers_cv_.wait(lock);
        }
        writer_idle_ = false;
        if (answers_.empty()) return;  // stopping, and nothing left to write
        batch.swap(answers_);
      }
      FollowLoop();
      Deliver(batch);
      batch.clear();
    }
  }

 public:
  // Hands ``answers`` to grpc on the calling thread (the writer, or an instance thread that has
  // just computed them: FastBatch.complete(now=True)); never the event loop's thread.
  void Deliver(std::deque<Answer>& answers) {
    for (auto& answer : answers) {
      Call* call = nullptr;
      {
        std::lock_guard<std::mutex> lock(calls_mu_);
        auto found = calls_.find(answer.id);
        if (found == calls_.end()) continue;  // the call has ended (cancelled)
        call = found->second;
        call->Ref();
      }
      call->Send(answer.has_message ? &answer.message : nullptr, answer.finish, std::move(answer.status));
      call->Unref();
    }
  }

 private:

  // The event loop's thread (take(), take_batches()): remember its CPU for the writer.
  void NoteLoopCpu() {
    if (follow_loop_) loop_cpu_.store(sched_getcpu(), std::memory_order_relaxed);
  }

  // On the writer thread, under load (more than one call in progress): run on the CPU the event
  // loop last ran on, so that answers go out when the loop yields that CPU, many at a time, instead
  // of waking another CPU for each completion (docs/serving.md, "The writer shares the event loop's
  // CPU"). At one call in progress the writer runs wherever it may, at once. Only the writer is
  // pinned, and it moves when the loop does; the loop and every other thread keep their affinity.
  void FollowLoop() {
    if (!follow_loop_) return;
    const int cpu = inflight_.load(std::memory_order_relaxed) > 1 ? loop_cpu_.load(std::memory_order_relaxed) : -1;
    if (cpu == writer_cpu_ || cpu >= CPU_SETSIZE) return;
    cpu_set_t set;
    if (cpu < 0) {
      set = writer_allowed_;
    } else {
      if (!CPU_ISSET(cpu, &writer_allowed_)) return;
      CPU_ZERO(&set);
      CPU_SET(cpu, &set);
    }
    if (sched_setaffinity(0, sizeof set, &set) == 0) writer_cpu_ = cpu;
  }

  static bool FollowLoopFromEnv() {
    const char* value = std::getenv("SHIPYARD_GRPC_WRITER_FOLLOWS_LOOP");
    return value == nullptr || std::string(value) != "0";
  }

  void StopWriter() {
    {
      std::lock_guard<std::mutex> lock(answers_mu_);
      writer_stop_ = true;
    }
    answers_cv_.notify_one();
    if (writer_.joinable()) writer_.join();
  }

 public:
  int inflight() const { return inflight_.load(); }
  uint64_t refused() const { return refused_.load(); }

 private:
  static py::bytes ToBytes(grpc::ByteBuffer& buffer) {
    std::vector<grpc::Slice> slices;
    if (!buffer.Valid() || !buffer.Dump(&slices).ok()) return py::bytes();
    if (slices.size() == 1) {
      return py::bytes(reinterpret_cast<const char*>(slices[0].begin()), slices[0].size());
    }
    size_t total = 0;
    for (auto& s : slices) total += s.size();
    PyObject* obj = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(total));
    if (obj == nullptr) throw py::error_already_set();
    char* dst = PyBytes_AS_STRING(obj);
    for (auto& s : slices) {
      std::memcpy(dst, s.begin(), s.size());
      dst += s.size();
    }
    return py::reinterpret_steal<py::bytes>(obj);
  }

  const int max_inflight_;
  const int max_streams_per_connection_;
  const int max_message_bytes_;
  std::unordered_map<std::string, std::pair<int, bool>> methods_;
  std::unique_ptr<grpc::Server> server_;
  int event_fd_ = -1;
  std::atomic<bool> stopping_{false};
  std::atomic<int> inflight_{0};
  std::atomic<uint64_t> refused_{0};
  std::atomic<uint64_t> next_id_{1};
  std::mutex calls_mu_;
  std::unordered_map<uint64_t, Call*> calls_;
  std::mutex events_mu_;
  std::deque<Event> events_;
  std::vector<std::unique_ptr<fastinfer::Group>> groups_;  // the fast path's open groups
  std::mutex fast_mu_;
  std::unordered_map<std::string, std::shared_ptr<const fastinfer::ModelSig>> fast_models_;
  std::atomic<bool> fast_any_{false};
  std::atomic<int> fast_method_{-1};
  bool signalled_ = false;
  const bool follow_loop_ = FollowLoopFromEnv();
  std::atomic<int> loop_cpu_{-1};
  int writer_cpu_ = -1;            // the writer thread's only: the CPU it is pinned to, -1: none
  cpu_set_t writer_allowed_{};     // the writer thread's only: its affinity when it started
  std::mutex answers_mu_;
  std::condition_variable answers_cv_;
  std::deque<Answer> answers_;
  bool writer_idle_ = false;
  bool writer_stop_ = false;
  std::thread writer_;
};

void Call::OnReadDone(bool ok) {
  if (ok) {
    got_message_ = true;
    if (!streaming_ && method_ == frontend_->fast_method() && frontend_->TryFast(id_, &read_buf_)) return;
    frontend_->Push(id_, kMessage, method_, &read_buf_);
    if (streaming_) {
      std::unique_lock<std::mutex> lock(mu_);
      if (!finish_started_) {
        lock.unlock();
        StartRead(&read_buf_);
      }
    }
    return;
  }
  if (streaming_) {
    frontend_->Push(id_, kHalfClose, method_, nullptr);
  } else if (!got_message_) {
    Send(nullptr, true, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the call carried no request message"));
  }
}

void Call::OnCancel() {
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (!finish_started_) {
      finish_started_ = true;
      writes_.clear();
      lock.unlock();
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
    }
  }
  frontend_->Push(id_, kCancel, method_, nullptr);
}

void Call::OnDone() {
  frontend_->Forget(id_);
  Unref();
}

// A group of fast-path requests, as Python sees it: one request of the dynamic batcher.
// Exactly one of complete(), fail() or fallback() answers its calls; a batch dropped without
// either falls back (its requests take the Python path).
class FastBatch {
 public:
  FastBatch(Frontend* frontend, py::object owner, std::unique_ptr<fastinfer::Group> group)
      : frontend_(frontend), owner_(std::move(owner)), group_(std::move(group)) {}
  ~FastBatch() {
    if (!done_) Fallback();
  }

  int64_t handle() const { return group_->sig->handle; }
  size_t count() const { return group_->requests.size(); }
  int64_t items() const { return group_->items; }

  py::list arrivals() const {
    py::list out(group_->requests.size());
    size_t i = 0;
    for (auto& r : group_->requests) out[i++] = py::int_(r.arrival_ns);
    return out;
  }

  // Per request, in order: its items (first dimension), its id, its requested outputs (() = all)
  // and its call id (a Python model sees each request: native_fast_python.py).
  py::list rows() const {
    py::list out(group_->requests.size());
    size_t i = 0;
    for (auto& r : group_->requests) out[i++] = py::int_(r.batch);
    return out;
  }
  py::list ids() const {
    py::list out(group_->requests.size());
    size_t i = 0;
    for (auto& r : group_->requests) out[i++] = py::str(r.id);
    return out;
  }
  py::list requested() const {
    py::list out(group_->requests.size());
    size_t i = 0;
    for (auto& r : group_->requests) {
      py::tuple names(r.outputs.size());
      for (size_t j = 0; j < r.outputs.size(); ++j) names[j] = py::str(group_->sig->outputs[r.outputs[j]]);
      out[i++] = names;
    }
    return out;
  }
  py::list call_ids() const {
    py::list out(group_->requests.size());
    size_t i = 0;
    for (auto& r : group_->requests) out[i++] = py::int_(r.call_id);
    return out;
  }

  // One answer per request, in order: bytes (a serialized ModelInferResponse) or (code, message).
  void AnswerEach(const py::list& answers_in) {
    Claim();
    if (answers_in.size() != group_->requests.size()) throw std::invalid_argument("answer_each needs one answer per request");
    std::deque<Answer> answers;
    size_t i = 0;
    for (auto& r : group_->requests) {
      py::handle item = answers_in[i++];
      if (py::isinstance<py::bytes>(item)) {
        auto* bytes = new std::string(item.cast<std::string>());
        grpc::Slice slice(bytes->data(), bytes->size(), [](void* p) { delete static_cast<std::string*>(p); }, bytes);
        answers.push_back(Answer{r.call_id, true, grpc::ByteBuffer(&slice, 1), true, grpc::Status::OK});
      } else {
        auto pair = item.cast<py::tuple>();
        answers.push_back(Answer{r.call_id, false, grpc::ByteBuffer(), true,
                                 grpc::Status(static_cast<grpc::StatusCode>(pair[0].cast<int>()), pair[1].cast<std::string>())});
      }
    }
    done_ = true;
    frontend_->QueueAnswers(answers);
  }

  // The outputs to ask the backend for: the requests' common selection, () when any wants all
  // (scheduling/batch.py's batch_outputs, over the group).
  py::tuple outputs() const {
    std::vector<int> names;
    for (auto& r : group_->requests) {
      if (r.outputs.empty()) return py::tuple();
      for (int index : r.outputs) {
        bool seen = false;
        for (int n : names) seen |= n == index;
        if (!seen) names.push_back(index);
      }
    }
    py::tuple out(names.size());
    for (size_t i = 0; i < names.size(); ++i) out[i] = py::str(group_->sig->outputs[names[i]]);
    return out;
  }

  // The group's inputs, in model input order: arrays over the group's own buffers.
  static py::dict Inputs(py::object self) {
    auto& batch = self.cast<FastBatch&>();
    auto& group = *batch.group_;
    py::dict out;
    for (size_t i = 0; i < group.sig->inputs.size(); ++i) {
      if (!group.present[i]) continue;
      const auto& spec = group.sig->inputs[i];
      std::vector<py::ssize_t> shape{static_cast<py::ssize_t>(group.items)};
      for (int64_t d : group.item_shapes[i]) shape.push_back(static_cast<py::ssize_t>(d));
      py::array array(py::dtype(spec.dtype), shape, {}, group.data[i].data(), self);
      out[py::str(spec.name)] = array;
    }
    return out;
  }

  // ``outputs``: (name, datatype, C-contiguous array) per output the backend returned, in the
  // order a request that names no outputs gets them. Splits rows per request (a group of one
  // request sends the arrays whole), serializes and queues each response for the writer thread,
  // or with ``now`` hands them to grpc on this thread (an instance thread, never the event loop's:
  // one thread wake-up less per answer, docs/serving.md "Latency at concurrency 1").
  void Complete(const py::list& outputs, bool now) {
    Claim();
    auto& group = *group_;
    const auto& sig = *group.sig;
    const bool whole = group.requests.size() == 1;
    std::vector<fastinfer::OutputView> views;
    std::vector<py::array> keep;
    std::vector<int> by_output(sig.outputs.size(), -1);
    for (auto item : outputs) {
      auto entry = item.cast<py::tuple>();
      fastinfer::OutputView view;
      view.name = entry[0].cast<std::string>();
      view.datatype = entry[1].cast<std::string>();
      auto array = entry[2].cast<py::array>();
      if (!(array.flags() & py::array::c_style)) throw std::invalid_argument("output " + view.name + " is not C-contiguous");
      view.data = static_cast<const char*>(array.data());
      for (py::ssize_t d = 0; d < array.ndim(); ++d) view.shape.push_back(array.shape(d));
      const size_t nbytes = static_cast<size_t>(array.nbytes());
      if (whole) {
        view.row_bytes = nbytes;
      } else {
        if (array.ndim() == 0 || array.shape(0) != group.items) throw std::invalid_argument("output " + view.name + " does not hold the group's items");
        view.row_bytes = nbytes / static_cast<size_t>(group.items);
      }
      for (size_t o = 0; o < sig.outputs.size(); ++o) {
        if (sig.outputs[o] == view.name) by_output[o] = static_cast<int>(views.size());
      }
      views.push_back(std::move(view));
      keep.push_back(std::move(array));
    }
    std::vector<int> all(views.size());
    for (size_t j = 0; j < all.size(); ++j) all[j] = static_cast<int>(j);
    done_ = true;
    py::gil_scoped_release release;
    std::deque<Answer> answers;
    int64_t start = 0;
    std::vector<int> selected;
    for (auto& r : group.requests) {
      selected.clear();
      bool missing = false;
      if (r.outputs.empty()) {
        selected = all;
      } else {
        for (int index : r.outputs) {
          if (by_output[index] < 0) missing = true;
          selected.push_back(by_output[index]);
        }
      }
      if (missing) {  // Python checks this first; never expected
        answers.push_back(Answer{r.call_id, false, grpc::ByteBuffer(), true,
                                 grpc::Status(grpc::StatusCode::INTERNAL, "internal error: a requested output is missing")});
      } else {
        auto* bytes = new std::string(fastinfer::Response(sig, r, start, whole, views, selected));
        grpc::Slice slice(bytes->data(), bytes->size(), [](void* p) { delete static_cast<std::string*>(p); }, bytes);
        answers.push_back(Answer{r.call_id, true, grpc::ByteBuffer(&slice, 1), true, grpc::Status::OK});
      }
      start += r.batch;
    }
    if (now) {
      frontend_->Deliver(answers);
    } else {
      frontend_->QueueAnswers(answers);
    }
  }

  // Every request of the group ends with this status.
  void Fail(int code, const std::string& message) {
    Claim();
    done_ = true;
    std::deque<Answer> answers;
    for (auto& r : group_->requests) {
      answers.push_back(Answer{r.call_id, false, grpc::ByteBuffer(), true,
                               grpc::Status(static_cast<grpc::StatusCode>(code), message)});
    }
    frontend_->QueueAnswers(answers);
  }

  // Every request of the group goes to the Python path as the message it came as.
  void Fallback() {
    done_ = true;
    const int method = frontend_->fast_method();
    for (auto& r : group_->requests) {
      grpc::ByteBuffer payload(&r.message, 1);
      frontend_->Push(r.call_id, kMessage, method, &payload);
    }
  }

  void FallbackChecked() {
    Claim();
    Fallback();
  }

 private:
  void Claim() const {
    if (done_) throw std::logic_error("this fast-path batch was answered already");
  }

  Frontend* frontend_;
  py::object owner_;  // keeps the Frontend alive
  std::unique_ptr<fastinfer::Group> group_;
  bool done_ = false;
};

py::list TakeBatches(py::object self) {
  auto& frontend = self.cast<Frontend&>();
  auto groups = frontend.TakeGroups();
  py::list out(groups.size());
  for (size_t i = 0; i < groups.size(); ++i) {
    out[i] = py::cast(std::make_unique<FastBatch>(&frontend, self, std::move(groups[i])));
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_grpc_native, m) {
  m.doc() = "The serving runtime's gRPC transport on grpc++ (see grpc_frontend.cc).";
  m.attr("MESSAGE") = kMessage;
  m.attr("HALF_CLOSE") = kHalfClose;
  m.attr("CANCEL") = kCancel;
  m.attr("GRPC_VERSION") = grpc::Version();
#ifdef GRPC_ARG_MAX_ALLOWED_INCOMING_CONNECTIONS
  m.attr("CONNECTION_CAP") = true;
#else
  m.attr("CONNECTION_CAP") = false;  // grpc++ < 1.52: no cap on incoming connections
#endif
  py::class_<Frontend>(m, "Frontend")
      .def(py::init<std::vector<std::string>, std::vector<std::string>, int, int, int>(), py::arg("unary"),
           py::arg("streaming"), py::arg("max_inflight"), py::arg("max_streams_per_connection"),
           py::arg("max_message_bytes"))
      .def("start", &Frontend::Start, py::arg("address"), py::arg("idle_timeout_ms") = 0,
           py::arg("max_connections") = 0)
      .def("take", &Frontend::Take)
      .def("send", &Frontend::Send, py::arg("id"), py::arg("data"), py::arg("finish") = true, py::arg("code") = 0,
           py::arg("message") = "")
      .def("shutdown", &Frontend::Shutdown, py::arg("grace_s"))
      .def("fileno", &Frontend::fd)
      .def_property_readonly("inflight", &Frontend::inflight)
      .def_property_readonly("refused", &Frontend::refused)
      .def("enable_fast", &Frontend::EnableFast, py::arg("method"))
      .def("register_model", &Frontend::RegisterModel, py::arg("name"), py::arg("version"), py::arg("handle"),
           py::arg("response_name"), py::arg("response_version"), py::arg("max_batch"), py::arg("max_requests"),
           py::arg("inputs"),
           py::arg("outputs"))
      .def("unregister_model", &Frontend::UnregisterModel, py::arg("name"), py::arg("version"))
      .def("take_batches", &TakeBatches);
  py::class_<FastBatch>(m, "FastBatch")
      .def_property_readonly("handle", &FastBatch::handle)
      .def_property_readonly("count", &FastBatch::count)
      .def_property_readonly("items", &FastBatch::items)
      .def_property_readonly("arrivals", &FastBatch::arrivals)
      .def_property_readonly("outputs", &FastBatch::outputs)
      .def("inputs", &FastBatch::Inputs)
      .def("complete", &FastBatch::Complete, py::arg("outputs"), py::arg("now") = false)
      .def("fail", &FastBatch::Fail, py::arg("code"), py::arg("message"))
      .def("fallback", &FastBatch::FallbackChecked)
      .def_property_readonly("rows", &FastBatch::rows)
      .def_property_readonly("ids", &FastBatch::ids)
      .def_property_readonly("requested", &FastBatch::requested)
      .def_property_readonly("call_ids", &FastBatch::call_ids)
      .def("answer_each", &FastBatch::AnswerEach, py::arg("answers"));
}
