// What the benchmark's two C++ clients (closed_loop.cc for gRPC, http_closed_loop.cc for REST)
// share: the clock, CPU time, "--key value" options, the payload and records files, and reading
// the common start time from the parent (benchmarks/native_client.py).
#pragma once

#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <functional>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

namespace client_common {

using Clock = std::chrono::steady_clock;  // CLOCK_MONOTONIC on Linux, as Python's time.monotonic()

inline double process_cpu_s() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

inline Clock::duration to_duration(double s) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

// Calls set(key, value) for each "--key value" pair. Returns "" or what was wrong: a key without a
// value, a key set() does not know (it returns false), or a value it could not convert (it threw).
inline std::string parse_pairs(int argc, char** argv, const std::function<bool(const std::string&, const std::string&)>& set) {
  for (int i = 1; i < argc; i += 2) {
    std::string key = argv[i];
    if (i + 1 >= argc) return "missing value for " + key;
    std::string value = argv[i + 1];
    try {
      if (!set(key, value)) return "unknown option " + key;
    } catch (const std::exception&) {
      return "bad value for " + key + ": " + value;
    }
  }
  return "";
}

// The whole file; false when it cannot be read.
inline bool read_file(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  out->assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return true;
}

// The values as native float64; false when the file cannot be written in full.
inline bool write_doubles(const std::string& path, const std::vector<double>& values) {
  std::FILE* out = std::fopen(path.c_str(), "wb");
  if (out == nullptr) return false;
  bool ok = values.empty() || std::fwrite(values.data(), sizeof(double), values.size(), out) == values.size();
  return std::fclose(out) == 0 && ok;
}

// The start time the parent writes on stdin (seconds on CLOCK_MONOTONIC); false on bad input.
inline bool read_start_time(Clock::time_point* t0) {
  double seconds;
  if (!(std::cin >> seconds)) return false;
  *t0 = Clock::time_point{to_duration(seconds)};
  return true;
}

}  // namespace client_common
