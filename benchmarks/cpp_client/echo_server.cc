// The transport floor of a native gRPC server on this machine: grpc++ (callback API, the same
// generic-service shape as the runtime's native frontend, serving_runtime/protocol/native/) answers
// every inference.GRPCInferenceService/ModelInfer with a canned ModelInferResponse, no inference.
//
// Per call it does what any server must and nothing more: read the request's bytes, find its
// model_name (field 1 of ModelInferRequest, read off the wire format: no protobuf objects), and
// write the canned response for that model (NOT_FOUND for another name). ServerLive and
// ServerReady answer "true"; other methods UNIMPLEMENTED.
//
//   echo_server --port P --response NAME=FILE [--response NAME=FILE ...]
// FILE holds a serialized ModelInferResponse (benchmarks/targets.py writes them). Prints
// "listening <port>" once serving; stops on SIGTERM or SIGINT.
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>

#include <csignal>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <chrono>
#include <vector>

namespace {

const std::string kService = "/inference.GRPCInferenceService/";
// ServerLiveResponse{live: true} and ServerReadyResponse{ready: true}: field 1, varint 1
const std::string kTrue("\x08\x01", 2);

bool read_varint(const std::string& b, size_t& pos, uint64_t& out) {
  out = 0;
  for (int shift = 0; pos < b.size() && shift < 64; shift += 7) {
    uint8_t byte = static_cast<uint8_t>(b[pos++]);
    out |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if (!(byte & 0x80)) return true;
  }
  return false;
}

// The message's field 1 when it is length-delimited (ModelInferRequest.model_name); false if absent.
bool field_one(const std::string& b, std::string& out) {
  size_t pos = 0;
  while (pos < b.size()) {
    uint64_t key, value;
    if (!read_varint(b, pos, key)) return false;
    switch (key & 7) {
      case 0:
        if (!read_varint(b, pos, value)) return false;
        break;
      case 1:
        pos += 8;
        break;
      case 5:
        pos += 4;
        break;
      case 2:
        if (!read_varint(b, pos, value) || value > b.size() - pos) return false;
        if ((key >> 3) == 1) {
          out.assign(b, pos, value);
          return true;
        }
        pos += value;
        break;
      default:
        return false;
    }
  }
  return false;
}

grpc::ByteBuffer to_buffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

class Call final : public grpc::ServerGenericBidiReactor {
 public:
  Call(const std::map<std::string, grpc::ByteBuffer>* responses, const grpc::ByteBuffer* answer)
      : responses_(responses), answer_(answer) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no request message"));
      return;
    }
    if (answer_ != nullptr) {  // ServerLive, ServerReady
      response_ = *answer_;
      StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
      return;
    }
    std::vector<grpc::Slice> slices;
    std::string bytes, name;
    if (request_.Dump(&slices).ok()) {
      for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
    field_one(bytes, name);
    auto found = responses_->find(name);
    if (found == responses_->end()) {
      Finish(grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown model '" + name + "'"));
      return;
    }
    response_ = found->second;  // shares the canned slices
    StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
  }

  void OnDone() override { delete this; }

 private:
  const std::map<std::string, grpc::ByteBuffer>* responses_;
  const grpc::ByteBuffer* answer_;
  grpc::ByteBuffer request_, response_;
};

class Refusal final : public grpc::ServerGenericBidiReactor {
 public:
  explicit Refusal(const std::string& method) {
    Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "the echo server does not implement " + method));
  }
  void OnDone() override { delete this; }
};

class Echo final : public grpc::CallbackGenericService {
 public:
  explicit Echo(std::map<std::string, grpc::ByteBuffer> responses)
      : responses_(std::move(responses)), true_(to_buffer(kTrue)) {}

  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    const std::string& method = ctx->method();
    if (method == kService + "ModelInfer") return new Call(&responses_, nullptr);
    if (method == kService + "ServerLive" || method == kService + "ServerReady") return new Call(nullptr, &true_);
    return new Refusal(method);
  }

 private:
  const std::map<std::string, grpc::ByteBuffer> responses_;
  const grpc::ByteBuffer true_;
};

volatile std::sig_atomic_t stop_requested = 0;

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "echo_server: " << why << "\nusage: echo_server --port P --response NAME=FILE [--response ...]\n";
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  int port = -1;
  std::map<std::string, grpc::ByteBuffer> responses;
  for (int i = 1; i < argc; i += 2) {
    if (i + 1 >= argc) usage(std::string("missing value for ") + argv[i]);
    std::string key = argv[i], value = argv[i + 1];
    if (key == "--port") {
      port = std::stoi(value);
    } else if (key == "--response") {
      auto eq = value.find('=');
      if (eq == std::string::npos) usage("--response wants NAME=FILE, got " + value);
      std::ifstream file(value.substr(eq + 1), std::ios::binary);
      if (!file) usage("cannot read " + value.substr(eq + 1));
      std::stringstream content;
      content << file.rdbuf();
      responses.emplace(value.substr(0, eq), to_buffer(content.str()));
    } else {
      usage("unknown option " + key);
    }
  }
  if (port < 0 || responses.empty()) usage("--port and at least one --response are required");

  Echo service(std::move(responses));
  grpc::ServerBuilder builder;
  int bound = 0;
  builder.AddListeningPort("127.0.0.1:" + std::to_string(port), grpc::InsecureServerCredentials(), &bound);
  builder.RegisterCallbackGenericService(&service);
  builder.SetMaxReceiveMessageSize(64 << 20);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || bound == 0) {
    std::cerr << "echo_server: cannot listen on 127.0.0.1:" << port << "\n";
    return 1;
  }
  std::signal(SIGTERM, [](int) { stop_requested = 1; });
  std::signal(SIGINT, [](int) { stop_requested = 1; });
  std::cout << "listening " << bound << std::endl;
  while (!stop_requested) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
  return 0;
}
