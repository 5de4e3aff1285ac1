// A closed-loop gRPC load client for the benchmark, in C++ so that it takes little of the CPU it
// shares with the server under test (the Python client costs ~100 us per request on this machine).
//
// It sends one pre-serialized request (a ModelInferRequest, read from a file) over and over through
// grpc::GenericStub: `concurrency` calls in flight at all times, spread over `connections` channels
// (each its own TCP connection), all driven by one completion queue on one thread.
//
// Protocol with the parent (benchmarks/loadgen.py):
//   1. one request per connection (this opens the connections); prints "ready <ok> <first error>"
//   2. reads one line from stdin: the start time t0, in seconds on CLOCK_MONOTONIC
//      (Python's time.monotonic())
//   3. warm-up until t0 + warmup, then the window until t0 + warmup + window; only calls that
//      complete inside the window count; no call starts after the window ends
//   4. writes the window's latencies (float64 seconds, native order) to the --latencies file and
//      prints one line per failed call in the window: "error <CODE>: <message>", then
//      "cpu <seconds>" (this process's CPU time during the window), then "done <n>"
//
// With --rate R --duration S it runs open loop instead (the benchmark's overload burst): from t0 it
// starts calls at R per second for S seconds whatever the answers, never more than --max-inflight at
// once (a call due while that many are in flight is skipped and counted), then waits up to
// --timeout for the rest. It writes one (status code, latency seconds) pair of float64 per call to
// --latencies and prints "sample <CODE>: <message>" (the first of each failing code), "sent <n>",
// "skipped <n>", "offered <seconds>", "unanswered <n>", then "done <n>".
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/alarm.h>

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "client_common.h"

namespace {

using client_common::Clock;
using client_common::process_cpu_s;
using client_common::to_duration;

const char* kCodeNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                            "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                            "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
                            "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};

struct Options {
  std::string target, method, payload_path, latencies_path;
  int concurrency = 1, connections = 1, max_inflight = 4096;
  double warmup_s = 1.0, window_s = 4.0, timeout_s = 30.0, rate = 0.0, duration_s = 0.0;
};

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "closed_loop: " << why << "\n"
            << "usage: closed_loop --target HOST:PORT --method /pkg.Service/Method --payload FILE"
               " --latencies FILE [--concurrency N] [--connections N] [--warmup S] [--window S]"
               " [--timeout S] [--rate R --duration S [--max-inflight N]]\n";
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  std::string error = client_common::parse_pairs(argc, argv, [&o](const std::string& key, const std::string& value) {
    if (key == "--target") o.target = value;
    else if (key == "--method") o.method = value;
    else if (key == "--payload") o.payload_path = value;
    else if (key == "--latencies") o.latencies_path = value;
    else if (key == "--concurrency") o.concurrency = std::stoi(value);
    else if (key == "--connections") o.connections = std::stoi(value);
    else if (key == "--warmup") o.warmup_s = std::stod(value);
    else if (key == "--window") o.window_s = std::stod(value);
    else if (key == "--timeout") o.timeout_s = std::stod(value);
    else if (key == "--rate") o.rate = std::stod(value);
    else if (key == "--duration") o.duration_s = std::stod(value);
    else if (key == "--max-inflight") o.max_inflight = std::stoi(value);
    else return false;
    return true;
  });
  if (!error.empty()) usage(error);
  if (o.target.empty() || o.method.empty() || o.payload_path.empty() || o.latencies_path.empty())
    usage("--target, --method, --payload and --latencies are required");
  if (o.concurrency < 1 || o.connections < 1 || o.window_s <= 0 || o.warmup_s < 0 || o.timeout_s <= 0)
    usage("need concurrency >= 1, connections >= 1, window > 0, warmup >= 0, timeout > 0");
  if (o.rate < 0 || (o.rate > 0 && (o.duration_s <= 0 || o.max_inflight < 1)))
    usage("open loop needs --rate > 0, --duration > 0 and --max-inflight >= 1");
  return o;
}

std::string describe(const grpc::Status& status) {
  int code = status.error_code();
  std::string name = (code >= 0 && code <= 16) ? kCodeNames[code] : std::to_string(code);
  return name + ": " + status.error_message().substr(0, 160);
}

// One call in flight (or one pause after a failure, through `alarm`).
struct Call {
  grpc::ClientContext context;
  grpc::ByteBuffer response;
  grpc::Status status;
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> reader;
  grpc::Alarm alarm;
  Clock::time_point start;
  int slot = 0;
  bool pausing = false;
};

class Runner {
 public:
  Runner(const Options& o, grpc::ByteBuffer payload) : o_(o), payload_(std::move(payload)) {
    for (int i = 0; i < o.connections; ++i) {
      grpc::ChannelArguments args;
      args.SetMaxSendMessageSize(64 * 1024 * 1024);
      args.SetMaxReceiveMessageSize(64 * 1024 * 1024);
      args.SetInt("grpc.use_local_subchannel_pool", 1);  // its own TCP connection per channel
      auto channel = grpc::CreateCustomChannel(o.target, grpc::InsecureChannelCredentials(), args);
      stubs_.push_back(std::make_unique<grpc::GenericStub>(channel));
    }
  }

  // Step 1: one blocking call per connection. Returns (ok count, first error or "").
  std::pair<int, std::string> open() {
    int ok = 0;
    std::string first_error;
    for (auto& stub : stubs_) {
      Call* call = start(stub.get(), 0);
      void* tag;
      bool fine;
      cq_.Next(&tag, &fine);
      if (call->status.ok()) ++ok;
      else if (first_error.empty()) first_error = describe(call->status);
      delete call;
    }
    return {ok, first_error};
  }

  void run(Clock::time_point t0) {
    std::this_thread::sleep_until(t0);
    window_start_ = t0 + to_duration(o_.warmup_s);
    window_end_ = window_start_ + to_duration(o_.window_s);
    latencies_.reserve(1 << 20);
    int in_flight = 0;
    for (int i = 0; i < o_.concurrency; ++i, ++in_flight) start(stubs_[i % stubs_.size()].get(), i);
    void* tag;
    bool fine;
    bool counting = false;
    while (in_flight > 0 && cq_.Next(&tag, &fine)) {
      Call* call = static_cast<Call*>(tag);
      int slot = call->slot;
      auto now = Clock::now();
      if (!counting && now >= window_start_) {
        counting = true;
        cpu_start_s_ = process_cpu_s();
      }
      if (counting && now > window_end_ && cpu_window_s_ < 0) cpu_window_s_ = process_cpu_s() - cpu_start_s_;
      if (call->pausing) {
        delete call;
      } else {
        bool failed = !call->status.ok();
        if (now >= window_start_ && now <= window_end_) {
          if (failed) errors_.push_back(describe(call->status));
          else latencies_.push_back(std::chrono::duration<double>(now - call->start).count());
        }
        delete call;
        if (failed && now < window_end_) {  // no hot spin against a failing server
          auto* pause = new Call();
          pause->slot = slot;
          pause->pausing = true;
          pause->alarm.Set(&cq_, std::chrono::system_clock::now() + std::chrono::milliseconds(5), pause);
          continue;
        }
      }
      if (now < window_end_) start(stubs_[slot % stubs_.size()].get(), slot);
      else --in_flight;
    }
  }

  // Open loop (see the top of this file).
  void run_open(Clock::time_point t0) {
    std::this_thread::sleep_until(t0);
    const auto end = t0 + to_duration(o_.duration_s);
    const long total = static_cast<long>(o_.rate * o_.duration_s);
    records_.reserve(static_cast<size_t>(total) * 2 + 16);
    long in_flight = 0;
    size_t next_stub = 0;
    Clock::time_point drain_until{};
    for (;;) {
      auto now = Clock::now();
      if (now < end) {
        long due = std::min(total, static_cast<long>(std::chrono::duration<double>(now - t0).count() * o_.rate));
        while (sent_ + skipped_ < due) {
          if (in_flight >= o_.max_inflight) {
            ++skipped_;  // the client itself could not offer this one
            continue;
          }
          start(stubs_[next_stub++ % stubs_.size()].get(), 0);
          ++in_flight;
          ++sent_;
        }
      } else if (offered_s_ < 0) {
        offered_s_ = std::chrono::duration<double>(now - t0).count();
        drain_until = now + to_duration(o_.timeout_s + 5);
      }
      if (now >= end && in_flight == 0) break;
      Clock::time_point wake;
      if (now < end) {
        wake = std::min(end, t0 + to_duration(static_cast<double>(sent_ + skipped_ + 1) / o_.rate));
      } else {
        if (now >= drain_until) break;
        wake = drain_until;
      }
      auto deadline = std::chrono::system_clock::now() + (wake - now);
      void* tag;
      bool fine;
      auto got = cq_.AsyncNext(&tag, &fine, deadline);
      while (got == grpc::CompletionQueue::GOT_EVENT) {
        Call* call = static_cast<Call*>(tag);
        double latency = std::chrono::duration<double>(Clock::now() - call->start).count();
        int code = call->status.error_code();
        records_.push_back(static_cast<double>(code));
        records_.push_back(latency);
        if (code != 0 && samples_.find(code) == samples_.end()) samples_[code] = describe(call->status);
        delete call;
        --in_flight;
        got = cq_.AsyncNext(&tag, &fine, std::chrono::system_clock::now());  // take what is ready
      }
      if (got == grpc::CompletionQueue::SHUTDOWN) break;
    }
    if (offered_s_ < 0) offered_s_ = o_.duration_s;
    unanswered_ = in_flight;
  }

  const std::vector<double>& records() const { return records_; }
  const std::map<int, std::string>& samples() const { return samples_; }
  long sent() const { return sent_; }
  long skipped() const { return skipped_; }
  long unanswered() const { return unanswered_; }
  double offered_s() const { return offered_s_; }

  // CPU seconds this process used in the window (from the first completion in it to the first after
  // it); 0 when the loop ended before the window did.
  double window_cpu_s() const { return cpu_window_s_ < 0 ? 0.0 : cpu_window_s_; }
  const std::vector<double>& latencies() const { return latencies_; }
  const std::vector<std::string>& errors() const { return errors_; }

 private:
  Call* start(grpc::GenericStub* stub, int slot) {
    auto* call = new Call();
    call->slot = slot;
    call->start = Clock::now();
    call->context.set_deadline(std::chrono::system_clock::now() + to_duration(o_.timeout_s));
    call->reader = stub->PrepareUnaryCall(&call->context, o_.method, payload_, &cq_);
    call->reader->StartCall();
    call->reader->Finish(&call->response, &call->status, call);
    return call;
  }

  const Options& o_;
  grpc::ByteBuffer payload_;
  std::vector<std::unique_ptr<grpc::GenericStub>> stubs_;
  grpc::CompletionQueue cq_;
  Clock::time_point window_start_, window_end_;
  double cpu_start_s_ = 0.0, cpu_window_s_ = -1.0;
  std::vector<double> latencies_;
  std::vector<std::string> errors_;
  std::vector<double> records_;  // open loop: (code, latency) pairs
  std::map<int, std::string> samples_;
  long sent_ = 0, skipped_ = 0, unanswered_ = 0;
  double offered_s_ = -1.0;
};

}  // namespace

int main(int argc, char** argv) {
  Options o = parse(argc, argv);
  std::string bytes;
  if (!client_common::read_file(o.payload_path, &bytes)) usage("cannot read payload file " + o.payload_path);
  grpc::Slice slice(bytes);
  grpc::ByteBuffer payload(&slice, 1);

  Runner runner(o, payload);
  auto [ok, first_error] = runner.open();
  std::cout << "ready " << ok << " " << first_error << std::endl;

  Clock::time_point t0;
  if (!client_common::read_start_time(&t0)) usage("expected the start time on stdin");
  if (o.rate > 0) {
    runner.run_open(t0);
    if (!client_common::write_doubles(o.latencies_path, runner.records())) {
      std::cerr << "closed_loop: cannot write " << o.latencies_path << "\n";
      return 1;
    }
    for (const auto& [code, sample] : runner.samples()) std::cout << "sample " << sample << "\n";
    std::cout << "sent " << runner.sent() << "\nskipped " << runner.skipped() << "\noffered " << runner.offered_s()
              << "\nunanswered " << runner.unanswered() << "\ndone " << runner.records().size() / 2 << std::endl;
    return 0;
  }
  runner.run(t0);
  if (!client_common::write_doubles(o.latencies_path, runner.latencies())) {
    std::cerr << "closed_loop: cannot write " << o.latencies_path << "\n";
    return 1;
  }
  for (const auto& e : runner.errors()) std::cout << "error " << e << "\n";
  std::cout << "cpu " << runner.window_cpu_s() << "\n";
  std::cout << "done " << runner.latencies().size() << std::endl;
  return 0;
}
