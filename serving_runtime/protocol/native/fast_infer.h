// The native fast path for ModelInfer (included by grpc_frontend.cc; see docs/serving.md,
// "Native gRPC frontend").
//
// A plain, valid ModelInferRequest for a registered model is parsed and checked here, on grpc's
// thread, and its tensors are appended to an open *group* of requests for the same model and the
// same item shapes (at most max_batch_size items). Python takes whole groups, runs each as one
// request of the dynamic batcher, and hands the outputs back; this code splits them per request,
// serializes each ModelInferResponse and queues it for the writer thread.
//
// One definition of the protocol's semantics: this code accepts only requests that the Python path
// (grpc_codec.fast_request) would accept too, and builds the same tensors from them. Anything else
// (parameters, shared memory, typed contents, unknown names, wrong shapes or sizes, non-ASCII
// strings, unknown or repeated fields) returns false from Parse and goes to the Python path as a
// plain message, which owns every error status and message.

#pragma once

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace fastinfer {

// -- protobuf wire format ---------------------------------------------------------------------

struct Reader {
  const uint8_t* p;
  const uint8_t* end;

  bool Varint(uint64_t* out) {
    uint64_t value = 0;
    for (int shift = 0; shift < 64 && p < end; shift += 7) {
      uint8_t byte = *p++;
      value |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if (!(byte & 0x80)) {
        *out = value;
        return true;
      }
    }
    return false;
  }
  bool Tag(uint32_t* field, uint32_t* wire) {
    uint64_t tag;
    if (!Varint(&tag) || tag > 0xffffffffu) return false;
    *field = static_cast<uint32_t>(tag >> 3);
    *wire = static_cast<uint32_t>(tag & 7);
    return *field != 0;
  }
  bool Bytes(std::string_view* out) {
    uint64_t size;
    if (!Varint(&size) || size > static_cast<uint64_t>(end - p)) return false;
    *out = std::string_view(reinterpret_cast<const char*>(p), size);
    p += size;
    return true;
  }
};

constexpr uint32_t kVarint = 0;
constexpr uint32_t kLen = 2;

inline bool Ascii(std::string_view s) {
  for (unsigned char c : s) {
    if (c & 0x80) return false;  // the Python path checks UTF-8 (and its error message)
  }
  return true;
}

// A string field seen at most once (protobuf keeps the last of repeated ones: leave those to Python).
inline bool String(Reader& r, uint32_t wire, bool* seen, std::string_view* out) {
  if (wire != kLen || *seen || !r.Bytes(out) || !Ascii(*out)) return false;
  *seen = true;
  return true;
}

// A repeated int64 field, packed or not.
inline bool Int64s(Reader& r, uint32_t wire, std::vector<int64_t>* out) {
  uint64_t v;
  if (wire == kVarint) {
    if (!r.Varint(&v)) return false;
    out->push_back(static_cast<int64_t>(v));
    return true;
  }
  std::string_view packed;
  if (wire != kLen || !r.Bytes(&packed)) return false;
  Reader inner{reinterpret_cast<const uint8_t*>(packed.data()),
               reinterpret_cast<const uint8_t*>(packed.data()) + packed.size()};
  while (inner.p < inner.end) {
    if (!inner.Varint(&v)) return false;
    out->push_back(static_cast<int64_t>(v));
  }
  return true;
}

inline void PutVarint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

inline size_t VarintSize(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

inline void PutBytes(std::string& out, uint32_t field, const void* data, size_t size) {
  PutVarint(out, (field << 3) | kLen);
  PutVarint(out, size);
  out.append(static_cast<const char*>(data), size);
}

// -- what a registered model accepts ------------------------------------------------------------

struct InputSpec {
  std::string name;
  std::string datatype;
  std::string dtype;          // numpy dtype string, e.g. "<f4"
  std::vector<int64_t> dims;  // without the batch dim; -1 = any size
  size_t itemsize = 0;
  bool optional = false;
  int64_t item_count = 0;  // elements per item when no dim is -1, else 0
};

struct ModelSig {
  int64_t handle = 0;          // Python's key for the served model object
  std::string response_name;   // model_name and model_version of every response
  std::string response_version;
  int64_t max_batch = 0;
  size_t max_requests = 0;  // requests per group at most (0: no limit; 1: the model does not batch)
  std::vector<InputSpec> inputs;
  std::vector<std::string> outputs;  // config order
  size_t required = 0;               // inputs that are not optional
};

// One parsed request, waiting in a group.
struct Request {
  uint64_t call_id = 0;
  grpc::Slice message;  // the whole request (kept for the Python path if the group falls back)
  std::string id;
  int64_t batch = 0;
  std::vector<int> outputs;  // model output indices, first mention first; empty = all
  int64_t arrival_ns = 0;
};

// The parsed tensors of one request: per model input, its bytes (null when absent) and shape.
struct Parsed {
  std::string_view model_name, model_version, id;
  std::vector<std::string_view> data;
  std::vector<std::vector<int64_t>> shapes;
  std::vector<int> outputs;
  int64_t batch = 0;
  std::vector<int64_t> key;  // what must be equal for two requests to share a group
};

// Parses the tensor list of a request message; false for anything the fast path does not take.
struct RawInput {
  std::string_view name, datatype;
  std::vector<int64_t> shape;
};

inline bool ParseInput(std::string_view bytes, RawInput* out) {
  Reader r{reinterpret_cast<const uint8_t*>(bytes.data()),
           reinterpret_cast<const uint8_t*>(bytes.data()) + bytes.size()};
  bool seen_name = false, seen_type = false;
  uint32_t field, wire;
  while (r.p < r.end) {
    if (!r.Tag(&field, &wire)) return false;
    switch (field) {
      case 1:
        if (!String(r, wire, &seen_name, &out->name)) return false;
        break;
      case 2:
        if (!String(r, wire, &seen_type, &out->datatype)) return false;
        break;
      case 3:
        if (!Int64s(r, wire, &out->shape)) return false;
        break;
      default:
        return false;  // parameters, contents, unknown fields: the Python path
    }
  }
  return true;
}

inline bool ParseOutputName(std::string_view bytes, std::string_view* name) {
  Reader r{reinterpret_cast<const uint8_t*>(bytes.data()),
           reinterpret_cast<const uint8_t*>(bytes.data()) + bytes.size()};
  bool seen = false;
  uint32_t field, wire;
  while (r.p < r.end) {
    if (!r.Tag(&field, &wire) || field != 1 || !String(r, wire, &seen, name)) return false;
  }
  return true;
}

// The first pass: the model key (name, version) of a request, or false when the message is not a
// candidate at all.
inline bool PeekModel(const uint8_t* data, size_t size, std::string_view* name, std::string_view* version) {
  Reader r{data, data + size};
  uint32_t field, wire;
  bool seen_name = false, seen_version = false;
  while (r.p < r.end) {
    if (!r.Tag(&field, &wire)) return false;
    std::string_view skip;
    if (field == 1) {
      if (!String(r, wire, &seen_name, name)) return false;
    } else if (field == 2) {
      if (!String(r, wire, &seen_version, version)) return false;
    } else if (wire == kLen && field >= 3 && field <= 7) {
      if (!r.Bytes(&skip)) return false;
    } else {
      return false;
    }
  }
  return seen_name;
}

// Parses and checks a request against ``sig`` (the conditions of grpc_codec.fast_request).
inline bool Parse(const ModelSig& sig, const uint8_t* data, size_t size, Parsed* out) {
  Reader r{data, data + size};
  uint32_t field, wire;
  bool seen_name = false, seen_version = false, seen_id = false;
  std::vector<RawInput> inputs;
  std::vector<std::string_view> raw;
  std::vector<std::string_view> outputs;
  while (r.p < r.end) {
    if (!r.Tag(&field, &wire)) return false;
    std::string_view bytes;
    switch (field) {
      case 1:
        if (!String(r, wire, &seen_name, &out->model_name)) return false;
        break;
      case 2:
        if (!String(r, wire, &seen_version, &out->model_version)) return false;
        break;
      case 3:
        if (!String(r, wire, &seen_id, &out->id)) return false;
        break;
      case 5:
        if (wire != kLen || !r.Bytes(&bytes)) return false;
        inputs.emplace_back();
        if (!ParseInput(bytes, &inputs.back())) return false;
        break;
      case 6:
        if (wire != kLen || !r.Bytes(&bytes)) return false;
        outputs.emplace_back();
        if (!ParseOutputName(bytes, &outputs.back())) return false;
        break;
      case 7:
        if (wire != kLen || !r.Bytes(&bytes)) return false;
        raw.push_back(bytes);
        break;
      default:
        return false;  // request parameters (4), unknown fields
    }
  }
  const size_t count = inputs.size();
  if (count == 0 || raw.size() != count || count > sig.inputs.size()) return false;
  out->data.assign(sig.inputs.size(), std::string_view());
  out->shapes.assign(sig.inputs.size(), std::vector<int64_t>());
  std::vector<bool> present(sig.inputs.size(), false);
  int64_t batch = 0;
  size_t required_seen = 0;
  for (size_t i = 0; i < count; ++i) {
    const RawInput& in = inputs[i];
    size_t index = 0;
    while (index < sig.inputs.size() && sig.inputs[index].name != in.name) ++index;
    if (index == sig.inputs.size() || present[index]) return false;
    const InputSpec& spec = sig.inputs[index];
    if (in.datatype != spec.datatype || in.shape.size() != spec.dims.size() + 1) return false;
    int64_t size_now = in.shape[0];
    if (size_now < 1 || size_now > sig.max_batch || (batch && size_now != batch)) return false;
    batch = size_now;
    int64_t elements = size_now;
    for (size_t d = 0; d < spec.dims.size(); ++d) {
      int64_t got = in.shape[d + 1];
      if (got < 0 || (spec.dims[d] >= 0 && got != spec.dims[d])) return false;
      if (got > 0 && elements > (int64_t{1} << 48) / got) return false;  // absurd sizes: the Python path
      elements *= got;
    }
    if (static_cast<uint64_t>(elements) * spec.itemsize != raw[i].size()) return false;
    present[index] = true;
    if (!spec.optional) ++required_seen;
    out->data[index] = raw[i];
    out->shapes[index] = in.shape;
  }
  if (required_seen != sig.required) return false;
  out->batch = batch;
  for (auto name : outputs) {
    size_t index = 0;
    while (index < sig.outputs.size() && sig.outputs[index] != name) ++index;
    if (index == sig.outputs.size()) return false;
    bool repeated = false;
    for (int seen : out->outputs) repeated |= seen == static_cast<int>(index);
    if (!repeated) out->outputs.push_back(static_cast<int>(index));
  }
  // Group key: per model input, present or not and its item shape.
  for (size_t index = 0; index < sig.inputs.size(); ++index) {
    if (!present[index]) {
      out->key.push_back(-2);
      continue;
    }
    out->key.push_back(static_cast<int64_t>(out->shapes[index].size()));
    out->key.insert(out->key.end(), out->shapes[index].begin() + 1, out->shapes[index].end());
  }
  return true;
}

// -- groups -----------------------------------------------------------------------------------

struct Group {
  std::shared_ptr<const ModelSig> sig;
  std::vector<int64_t> key;
  std::vector<std::vector<int64_t>> item_shapes;  // per model input (empty when absent)
  std::vector<bool> present;
  std::vector<std::string> data;  // per model input: the requests' bytes, one after another
  std::vector<Request> requests;
  int64_t items = 0;
};

// Appends a parsed request to ``group`` (same sig and key, room checked by the caller).
inline void Append(Group& group, const Parsed& parsed, Request&& request) {
  if (group.requests.empty()) {
    const size_t n = group.sig->inputs.size();
    group.data.resize(n);
    group.present.assign(n, false);
    group.item_shapes.resize(n);
    for (size_t i = 0; i < n; ++i) {
      if (parsed.shapes[i].empty()) continue;  // absent (an optional input)
      group.present[i] = true;
      group.item_shapes[i].assign(parsed.shapes[i].begin() + 1, parsed.shapes[i].end());
    }
  }
  for (size_t i = 0; i < group.data.size(); ++i) {
    if (group.present[i]) group.data[i].append(parsed.data[i].data(), parsed.data[i].size());
  }
  group.items += parsed.batch;
  group.requests.push_back(std::move(request));
}

// One output of a finished group, as Python hands it back: a C-contiguous array.
struct OutputView {
  std::string name;
  std::string datatype;
  const char* data = nullptr;
  std::vector<int64_t> shape;
  size_t row_bytes = 0;  // bytes per item (first dim) when the group holds several requests
};

// The ModelInferResponse of request ``r`` whose rows start at item ``start``.
// ``selected``: indices into ``outputs`` to send, in order.
inline std::string Response(const ModelSig& sig, const Request& r, int64_t start, bool whole,
                            const std::vector<OutputView>& outputs, const std::vector<int>& selected) {
  std::string out;
  size_t total = 64 + sig.response_name.size() + r.id.size();
  for (int j : selected) total += 64 + outputs[j].name.size() + (whole ? 0 : outputs[j].row_bytes * r.batch);
  out.reserve(total);
  PutBytes(out, 1, sig.response_name.data(), sig.response_name.size());
  if (!sig.response_version.empty()) PutBytes(out, 2, sig.response_version.data(), sig.response_version.size());
  if (!r.id.empty()) PutBytes(out, 3, r.id.data(), r.id.size());
  std::string tensor, shape;
  for (int j : selected) {
    const OutputView& o = outputs[j];
    tensor.clear();
    shape.clear();
    PutBytes(tensor, 1, o.name.data(), o.name.size());
    PutBytes(tensor, 2, o.datatype.data(), o.datatype.size());
    for (size_t d = 0; d < o.shape.size(); ++d) {
      PutVarint(shape, static_cast<uint64_t>(d == 0 && !whole ? r.batch : o.shape[d]));
    }
    if (!shape.empty()) PutBytes(tensor, 3, shape.data(), shape.size());
    PutBytes(out, 5, tensor.data(), tensor.size());
  }
  for (int j : selected) {
    const OutputView& o = outputs[j];
    if (whole) {
      size_t bytes = o.row_bytes;  // the whole array's size when ``whole``
      PutBytes(out, 6, o.data, bytes);
    } else {
      PutBytes(out, 6, o.data + o.row_bytes * start, o.row_bytes * r.batch);
    }
  }
  return out;
}

}  // namespace fastinfer
