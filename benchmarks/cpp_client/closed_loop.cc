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
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/alarm.h>

#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;  // CLOCK_MONOTONIC on Linux, as Python's time.monotonic()

const char* kCodeNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                            "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                            "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
                            "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};

struct Options {
  std::string target, method, payload_path, latencies_path;
  int concurrency = 1, connections = 1;
  double warmup_s = 1.0, window_s = 4.0, timeout_s = 30.0;
};

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "closed_loop: " << why << "\n"
            << "usage: closed_loop --target HOST:PORT --method /pkg.Service/Method --payload FILE"
               " --latencies FILE [--concurrency N] [--connections N] [--warmup S] [--window S]"
               " [--timeout S]\n";
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; i += 2) {
    std::string key = argv[i];
    if (i + 1 >= argc) usage("missing value for " + key);
    std::string value = argv[i + 1];
    try {
      if (key == "--target") o.target = value;
      else if (key == "--method") o.method = value;
      else if (key == "--payload") o.payload_path = value;
      else if (key == "--latencies") o.latencies_path = value;
      else if (key == "--concurrency") o.concurrency = std::stoi(value);
      else if (key == "--connections") o.connections = std::stoi(value);
      else if (key == "--warmup") o.warmup_s = std::stod(value);
      else if (key == "--window") o.window_s = std::stod(value);
      else if (key == "--timeout") o.timeout_s = std::stod(value);
      else usage("unknown option " + key);
    } catch (const std::exception&) {
      usage("bad value for " + key + ": " + value);
    }
  }
  if (o.target.empty() || o.method.empty() || o.payload_path.empty() || o.latencies_path.empty())
    usage("--target, --method, --payload and --latencies are required");
  if (o.concurrency < 1 || o.connections < 1 || o.window_s <= 0 || o.warmup_s < 0 || o.timeout_s <= 0)
    usage("need concurrency >= 1, connections >= 1, window > 0, warmup >= 0, timeout > 0");
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

  // CPU seconds this process used in the window (from the first completion in it to the first after
  // it); 0 when the loop ended before the window did.
  double window_cpu_s() const { return cpu_window_s_ < 0 ? 0.0 : cpu_window_s_; }
  const std::vector<double>& latencies() const { return latencies_; }
  const std::vector<std::string>& errors() const { return errors_; }

 private:
  static double process_cpu_s() {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
  }

  static Clock::duration to_duration(double s) {
    return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
  }

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
};

}  // namespace

int main(int argc, char** argv) {
  Options o = parse(argc, argv);
  std::ifstream in(o.payload_path, std::ios::binary);
  if (!in) usage("cannot read payload file " + o.payload_path);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  grpc::Slice slice(bytes);
  grpc::ByteBuffer payload(&slice, 1);

  Runner runner(o, payload);
  auto [ok, first_error] = runner.open();
  std::cout << "ready " << ok << " " << first_error << std::endl;

  double t0_s;
  if (!(std::cin >> t0_s)) usage("expected the start time on stdin");
  Clock::time_point t0{std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(t0_s))};
  runner.run(t0);

  std::FILE* out = std::fopen(o.latencies_path.c_str(), "wb");
  if (out == nullptr) usage("cannot write latencies file " + o.latencies_path);
  const auto& lat = runner.latencies();
  if (!lat.empty() && std::fwrite(lat.data(), sizeof(double), lat.size(), out) != lat.size()) {
    std::cerr << "closed_loop: short write to " << o.latencies_path << "\n";
    return 1;
  }
  std::fclose(out);
  for (const auto& e : runner.errors()) std::cout << "error " << e << "\n";
  std::cout << "cpu " << runner.window_cpu_s() << "\n";
  std::cout << "done " << lat.size() << std::endl;
  return 0;
}
