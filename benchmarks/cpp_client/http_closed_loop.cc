// A closed-loop HTTP/1.1 load client for the benchmark's REST cells, the counterpart of
// closed_loop.cc (gRPC): in C++ so that it takes little of the CPU it shares with the server under
// test (the Python aiohttp client costs ~100 us per request on this machine).
//
// It posts one pre-built body (read from a file) to one path over `concurrency` keep-alive
// connections, one request in flight on each, all driven by one epoll loop on one thread. Plain
// sockets, no HTTP library: requests are fixed bytes and responses are read by Content-Length.
//
// Protocol with the parent (benchmarks/native_client.py), as closed_loop.cc's:
//   1. one request on the first connection; prints "ready <ok> <first error>"
//   2. reads the start time t0 (seconds on CLOCK_MONOTONIC) from stdin
//   3. warm-up until t0 + warmup, then the window until t0 + warmup + window; only requests that
//      complete inside the window count; no request starts after the window ends
//   4. writes the window's latencies (float64 seconds) to --latencies, prints "error HTTP <code>:
//      <body>" (or "error <what>: ...") per failed request in the window, "cpu <seconds>", "done <n>"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "client_common.h"

namespace {

using client_common::Clock;
using client_common::process_cpu_s;
using client_common::to_duration;

struct Options {
  std::string host = "127.0.0.1", path, payload_path, latencies_path;
  std::vector<std::string> headers;
  int port = 0, concurrency = 1;
  double warmup_s = 1.0, window_s = 4.0, timeout_s = 30.0;
};

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "http_closed_loop: " << why << "\n"
            << "usage: http_closed_loop --port N --path /v2/... --payload FILE --latencies FILE"
               " [--host 127.0.0.1] [--header 'Name: value']... [--concurrency N] [--warmup S]"
               " [--window S] [--timeout S]\n";
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  std::string error = client_common::parse_pairs(argc, argv, [&o](const std::string& key, const std::string& value) {
    if (key == "--host") o.host = value;
    else if (key == "--port") o.port = std::stoi(value);
    else if (key == "--path") o.path = value;
    else if (key == "--header") o.headers.push_back(value);
    else if (key == "--payload") o.payload_path = value;
    else if (key == "--latencies") o.latencies_path = value;
    else if (key == "--concurrency") o.concurrency = std::stoi(value);
    else if (key == "--warmup") o.warmup_s = std::stod(value);
    else if (key == "--window") o.window_s = std::stod(value);
    else if (key == "--timeout") o.timeout_s = std::stod(value);
    else return false;
    return true;
  });
  if (!error.empty()) usage(error);
  if (o.port <= 0 || o.path.empty() || o.payload_path.empty() || o.latencies_path.empty())
    usage("--port, --path, --payload and --latencies are required");
  if (o.concurrency < 1 || o.window_s <= 0 || o.warmup_s < 0 || o.timeout_s <= 0)
    usage("need concurrency >= 1, window > 0, warmup >= 0, timeout > 0");
  return o;
}

// One keep-alive connection with at most one request in flight.
struct Conn {
  int fd = -1;
  size_t sent = 0;       // bytes of the request written so far
  std::string in;        // response bytes read so far
  Clock::time_point start;
  bool busy = false;
};

class Runner {
 public:
  Runner(const Options& o, const std::string& body) : o_(o) {
    request_ = "POST " + o.path + " HTTP/1.1\r\nHost: " + o.host + ":" + std::to_string(o.port) +
               "\r\nConnection: keep-alive\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
    for (const auto& h : o.headers) request_ += h + "\r\n";
    request_ += "\r\n" + body;
    epoll_ = epoll_create1(EPOLL_CLOEXEC);
    conns_.resize(o.concurrency);
  }

  // Step 1: one request on connection 0. Returns (ok count, first error or "").
  std::pair<int, std::string> open() {
    std::string error;
    if (!connect_(conns_[0], &error)) return {0, error};
    send_(conns_[0]);
    while (conns_[0].busy) {
      if (!wait_(1000)) return {0, "no answer within 1 s"};
    }
    if (!last_error_.empty()) return {0, last_error_};
    return {1, ""};
  }

  void run(Clock::time_point t0) {
    std::this_thread::sleep_until(t0);
    window_start_ = t0 + to_duration(o_.warmup_s);
    window_end_ = window_start_ + to_duration(o_.window_s);
    latencies_.reserve(1 << 20);
    std::string error;
    for (auto& c : conns_) {
      if (c.fd < 0 && !connect_(c, &error)) {
        errors_.push_back(error);
        continue;
      }
      send_(c);
    }
    running_ = true;
    while (busy_count() > 0) {
      if (!wait_(static_cast<int>(o_.timeout_s * 1000))) break;
    }
  }

  double window_cpu_s() const { return cpu_window_s_ < 0 ? 0.0 : cpu_window_s_; }
  const std::vector<double>& latencies() const { return latencies_; }
  const std::vector<std::string>& errors() const { return errors_; }

 private:
  int busy_count() const {
    int n = 0;
    for (const auto& c : conns_) n += c.busy ? 1 : 0;
    return n;
  }

  bool connect_(Conn& c, std::string* error) {
    c.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(o_.port));
    inet_pton(AF_INET, o_.host.c_str(), &addr.sin_addr);
    if (::connect(c.fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      *error = std::string("connect: ") + std::strerror(errno);
      close(c.fd);
      c.fd = -1;
      return false;
    }
    int one = 1;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = &c;
    epoll_ctl(epoll_, EPOLL_CTL_ADD, c.fd, &ev);
    return true;
  }

  void send_(Conn& c) {
    c.start = Clock::now();
    c.busy = true;
    c.in.clear();
    c.sent = 0;
    while (c.sent < request_.size()) {  // blocking socket: the kernel takes a request at once
      ssize_t n = write(c.fd, request_.data() + c.sent, request_.size() - c.sent);
      if (n <= 0) {
        fail_(c, std::string("write: ") + std::strerror(errno));
        return;
      }
      c.sent += static_cast<size_t>(n);
    }
  }

  // Waits for readable connections and handles them; false when nothing happened in timeout_ms.
  bool wait_(int timeout_ms) {
    epoll_event events[64];
    int n = epoll_wait(epoll_, events, 64, timeout_ms);
    if (n <= 0) return n < 0 && errno == EINTR;
    for (int i = 0; i < n; ++i) read_(*static_cast<Conn*>(events[i].data.ptr));
    return true;
  }

  void read_(Conn& c) {
    char buf[65536];
    ssize_t n = read(c.fd, buf, sizeof buf);
    if (n <= 0) {
      fail_(c, "connection closed by the server");
      return;
    }
    c.in.append(buf, static_cast<size_t>(n));
    size_t head_end = c.in.find("\r\n\r\n");
    if (head_end == std::string::npos) return;
    long length = content_length(c.in, head_end);
    if (length < 0) {
      fail_(c, "response without Content-Length");
      return;
    }
    if (c.in.size() < head_end + 4 + static_cast<size_t>(length)) return;
    int status = std::atoi(c.in.c_str() + 9);  // "HTTP/1.1 200 OK"
    std::string body = c.in.substr(head_end + 4, static_cast<size_t>(length));
    finish_(c, status >= 200 && status < 300 ? "" : "HTTP " + std::to_string(status) + ": " + body.substr(0, 160));
  }

  static long content_length(const std::string& in, size_t head_end) {
    size_t pos = 0;
    while (pos < head_end) {
      size_t eol = in.find("\r\n", pos);
      std::string line = in.substr(pos, eol - pos);
      if (line.size() > 15 && strncasecmp(line.c_str(), "content-length:", 15) == 0) return std::atol(line.c_str() + 15);
      pos = eol + 2;
    }
    return -1;
  }

  void fail_(Conn& c, const std::string& why) {
    epoll_ctl(epoll_, EPOLL_CTL_DEL, c.fd, nullptr);
    close(c.fd);
    c.fd = -1;
    finish_(c, why);
  }

  void finish_(Conn& c, const std::string& error) {
    c.busy = false;
    auto now = Clock::now();
    last_error_ = error;
    if (!running_) return;
    if (!counting_ && now >= window_start_) {
      counting_ = true;
      cpu_start_s_ = process_cpu_s();
    }
    if (counting_ && now > window_end_ && cpu_window_s_ < 0) cpu_window_s_ = process_cpu_s() - cpu_start_s_;
    if (now >= window_start_ && now <= window_end_) {
      if (error.empty()) latencies_.push_back(std::chrono::duration<double>(now - c.start).count());
      else errors_.push_back(error);
    }
    if (now >= window_end_) return;
    if (!error.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(5));  // no hot spin
    std::string why;
    if (c.fd < 0 && !connect_(c, &why)) {
      if (now >= window_start_) errors_.push_back(why);
      return;
    }
    send_(c);
  }

  const Options& o_;
  std::string request_;
  int epoll_ = -1;
  std::vector<Conn> conns_;
  bool running_ = false, counting_ = false;
  std::string last_error_;
  Clock::time_point window_start_, window_end_;
  double cpu_start_s_ = 0.0, cpu_window_s_ = -1.0;
  std::vector<double> latencies_;
  std::vector<std::string> errors_;
};

}  // namespace

int main(int argc, char** argv) {
  Options o = parse(argc, argv);
  std::string body;
  if (!client_common::read_file(o.payload_path, &body)) usage("cannot read payload file " + o.payload_path);

  Runner runner(o, body);
  auto [ok, first_error] = runner.open();
  std::cout << "ready " << ok << " " << first_error << std::endl;

  Clock::time_point t0;
  if (!client_common::read_start_time(&t0)) usage("expected the start time on stdin");
  runner.run(t0);

  if (!client_common::write_doubles(o.latencies_path, runner.latencies())) {
    std::cerr << "http_closed_loop: cannot write " << o.latencies_path << "\n";
    return 1;
  }
  for (const auto& e : runner.errors()) std::cout << "error " << e << "\n";
  std::cout << "cpu " << runner.window_cpu_s() << "\n";
  std::cout << "done " << runner.latencies().size() << std::endl;
  return 0;
}
