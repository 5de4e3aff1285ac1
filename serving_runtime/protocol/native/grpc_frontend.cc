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

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
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
    writer_ = std::thread([this] { WriterLoop(); });
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
    if (!signalled_) {
      signalled_ = true;
      uint64_t one = 1;
      ssize_t n = write(event_fd_, &one, sizeof one);
      (void)n;
    }
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
    bool wake;
    {
      std::lock_guard<std::mutex> lock(answers_mu_);
      answers_.push_back(std::move(answer));
      wake = writer_idle_;
      writer_idle_ = false;
    }
    if (wake) answers_cv_.notify_one();
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
      for (auto& answer : batch) {
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
      batch.clear();
    }
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
  bool signalled_ = false;
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
      .def_property_readonly("refused", &Frontend::refused);
}
