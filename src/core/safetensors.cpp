#include "core/safetensors.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/fileio.h"
#include "core/half.h"
#include "core/json.h"

namespace hh {

namespace {

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // as in the HF library

bool dtype_from_name(const std::string& s, DType* out) {
  static const std::pair<const char*, DType> table[] = {{"F32", DType::F32},   {"F16", DType::F16},
                                                        {"BF16", DType::BF16}, {"I32", DType::I32},
                                                        {"I64", DType::I64},   {"U8", DType::U8}};
  for (const auto& [name, t] : table) {
    if (s == name) {
      *out = t;
      return true;
    }
  }
  return false;
}

// bfloat16 is the top 16 bits of a float32.
float bf16_to_float(uint16_t b) {
  uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

// A non-negative integer from a JSON number, or false.
bool json_size(const Json& v, uint64_t* out) {
  if (!v.is_number()) return false;
  double d = v.as_number();
  if (!(d >= 0) || d >= 9.007199254740992e15 || d != static_cast<double>(static_cast<uint64_t>(d)))
    return false;
  *out = static_cast<uint64_t>(d);
  return true;
}

}  // namespace

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32:
      return 4;
    case DType::F16:
      return 2;
    case DType::BF16:
      return 2;
    case DType::I32:
      return 4;
    case DType::I64:
      return 8;
    case DType::U8:
      return 1;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32:
      return "F32";
    case DType::F16:
      return "F16";
    case DType::BF16:
      return "BF16";
    case DType::I32:
      return "I32";
    case DType::I64:
      return "I64";
    case DType::U8:
      return "U8";
  }
  return "?";
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafeTensorsFile SafeTensorsFile::load(const std::string& path) {
  return parse(read_file_bytes(path), path);
}

// Validates the layout described in the header (see safetensors.h); every error begins
// with `what` (the file path).
SafeTensorsFile SafeTensorsFile::parse(std::vector<uint8_t> bytes, const std::string& what) {
  SafeTensorsFile file;
  file.what_ = what;
  HH_CHECK(bytes.size() >= 8, what, ": file is ", bytes.size(),
           " bytes, too short for a safetensors header length (8 bytes)");
  uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= static_cast<uint64_t>(bytes[i]) << (8 * i);
  HH_CHECK(header_len <= kMaxHeaderBytes, what, ": header length ", header_len,
           " exceeds the limit of ", kMaxHeaderBytes, " bytes");
  HH_CHECK(8 + header_len <= bytes.size(), what, ": header length ", header_len,
           " runs past the end of the file (", bytes.size(), " bytes)");
  const size_t data_start = 8 + header_len;
  const size_t data_size = bytes.size() - data_start;

  std::string_view header_text(reinterpret_cast<const char*>(bytes.data() + 8), header_len);
  Json header = Json::parse(header_text, what + ": header");
  HH_CHECK(header.is_object(), what, ": header is not a JSON object");

  std::vector<std::pair<std::string, TensorInfo>> by_offset;
  for (const auto& [name, entry] : header.as_object()) {
    if (name == "__metadata__") {
      HH_CHECK(entry.is_object(), what, ": __metadata__ is not an object");
      for (const auto& [key, value] : entry.as_object()) {
        HH_CHECK(value.is_string(), what, ": __metadata__ value for '", key, "' is not a string");
        file.metadata_[key] = value.as_string();
      }
      continue;
    }
    HH_CHECK(entry.is_object(), what, ": tensor '", name, "': entry is not an object");
    const Json* dtype = entry.find("dtype");
    const Json* shape = entry.find("shape");
    const Json* offsets = entry.find("data_offsets");
    HH_CHECK(dtype && shape && offsets && entry.size() == 3, what, ": tensor '", name,
             "': entry must have exactly the keys dtype, shape and data_offsets");
    TensorInfo info;
    HH_CHECK(dtype->is_string() && dtype_from_name(dtype->as_string(), &info.dtype), what,
             ": tensor '", name, "': unknown dtype ", dtype->dump());
    HH_CHECK(shape->is_array(), what, ": tensor '", name, "': shape is not an array");
    uint64_t numel = 1;
    bool overflow = false;
    for (const Json& d : shape->as_array()) {
      uint64_t dim = 0;
      HH_CHECK(json_size(d, &dim), what, ": tensor '", name, "': shape ", shape->dump(),
               " has an entry that is not a non-negative integer");
      info.shape.push_back(static_cast<int64_t>(dim));
      overflow = overflow || __builtin_mul_overflow(numel, dim, &numel);
    }
    uint64_t nbytes = 0;
    overflow = overflow || __builtin_mul_overflow(numel, dtype_size(info.dtype), &nbytes);
    HH_CHECK(offsets->is_array() && offsets->size() == 2, what, ": tensor '", name,
             "': data_offsets must be [begin, end]");
    uint64_t begin = 0, end = 0;
    HH_CHECK(json_size(offsets->as_array()[0], &begin) && json_size(offsets->as_array()[1], &end),
             what, ": tensor '", name, "': data_offsets ", offsets->dump(),
             " are not non-negative integers");
    HH_CHECK(begin <= end, what, ": tensor '", name, "': data_offsets ", offsets->dump(),
             " end before they begin");
    HH_CHECK(!overflow && end - begin == nbytes, what, ": tensor '", name, "': data_offsets ",
             offsets->dump(), " span ", end - begin, " bytes but ", dtype_name(info.dtype), " ",
             shape_text(info.shape), " needs ",
             overflow ? "more than 2^64" : std::to_string(nbytes));
    HH_CHECK(end <= data_size, what, ": tensor '", name, "': data_offsets ", offsets->dump(),
             " run past the end of the data (", data_size, " bytes)");
    HH_CHECK(info.dtype != DType::F32 || begin % 4 == 0, what, ": tensor '", name,
             "': F32 data at offset ", begin, " is misaligned (not a multiple of 4)");
    info.begin = begin;
    info.end = end;
    by_offset.emplace_back(name, info);
  }

  // The tensors must tile the data section exactly: no overlaps, gaps or trailing bytes.
  std::sort(by_offset.begin(), by_offset.end(), [](const auto& a, const auto& b) {
    return a.second.begin != b.second.begin ? a.second.begin < b.second.begin
                                            : a.second.end < b.second.end;
  });
  size_t covered = 0;
  for (const auto& [name, info] : by_offset) {
    HH_CHECK(info.begin >= covered, what, ": tensor '", name, "' at [", info.begin, ",", info.end,
             "] overlaps the previous tensor (which ends at ", covered, ")");
    HH_CHECK(info.begin == covered, what, ": gap in the data: bytes [", covered, ",", info.begin,
             ") belong to no tensor");
    covered = info.end;
  }
  HH_CHECK(covered == data_size, what, ": ", data_size - covered,
           " trailing bytes after the last tensor (data section is ", data_size, " bytes)");

  for (auto& [name, info] : by_offset) file.tensors_[name] = info;
  file.data_start_ = data_start;
  file.bytes_ = std::move(bytes);
  return file;
}

const TensorInfo& SafeTensorsFile::info(const std::string& name) const {
  auto it = tensors_.find(name);
  HH_CHECK(it != tensors_.end(), what_, ": no tensor '", name, "'");
  return it->second;
}

const uint8_t* SafeTensorsFile::data(const std::string& name) const {
  return bytes_.data() + data_start_ + info(name).begin;
}

// Copies the tensor as float32; F16 and BF16 are widened exactly.
std::vector<float> SafeTensorsFile::read_f32(const std::string& name,
                                             const std::vector<int64_t>& expect_shape) const {
  const TensorInfo& t = info(name);
  HH_CHECK(expect_shape.empty() || expect_shape == t.shape, what_, ": tensor '", name,
           "' has shape ", shape_text(t.shape), ", expected ", shape_text(expect_shape));
  const uint8_t* p = data(name);
  size_t n = static_cast<size_t>(t.numel());
  std::vector<float> out(n);
  switch (t.dtype) {
    case DType::F32:
      if (n) std::memcpy(out.data(), p, n * 4);
      break;
    case DType::F16:
    case DType::BF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t v = static_cast<uint16_t>(p[2 * i] | (p[2 * i + 1] << 8));
        out[i] = t.dtype == DType::F16 ? half_to_float(v) : bf16_to_float(v);
      }
      break;
    default:
      HH_FAIL(what_, ": tensor '", name, "' has dtype ", dtype_name(t.dtype),
              ", expected F32, F16 or BF16");
  }
  return out;
}

void check_finite(const float* values, size_t n, const std::string& what, const std::string& name) {
  // A branch-free test of the exponent bits vectorises; the index is searched only after it
  // failed.
  uint32_t bad = 0;
  for (size_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, values + i, 4);
    bad |= (bits & 0x7f800000u) == 0x7f800000u;
  }
  if (!bad) return;
  size_t i = 0;
  while (std::isfinite(values[i])) ++i;
  HH_FAIL(what, ": tensor '", name, "' holds a non-finite value (", values[i], ") at index ", i,
          ", from a run that diverged or a damaged file");
}

// Copies an I32 tensor, or an I64 one whose values all fit in int32.
std::vector<int32_t> SafeTensorsFile::read_i32(const std::string& name) const {
  const TensorInfo& t = info(name);
  const uint8_t* p = data(name);
  size_t n = static_cast<size_t>(t.numel());
  std::vector<int32_t> out(n);
  if (t.dtype == DType::I32) {
    if (n) std::memcpy(out.data(), p, n * 4);
  } else if (t.dtype == DType::I64) {
    for (size_t i = 0; i < n; ++i) {
      int64_t v;
      std::memcpy(&v, p + 8 * i, 8);
      HH_CHECK(v >= INT32_MIN && v <= INT32_MAX, what_, ": tensor '", name, "' element ", i, " = ",
               v, " does not fit in int32");
      out[i] = static_cast<int32_t>(v);
    }
  } else {
    HH_FAIL(what_, ": tensor '", name, "' has dtype ", dtype_name(t.dtype),
            ", expected I32 or I64");
  }
  return out;
}

void SafeTensorsWriter::set_metadata(const std::string& key, const std::string& value) {
  metadata_[key] = value;
}

// Checks the name, shape and byte count, and that F32 data stays 4-byte aligned (our
// reader requires it), then copies the data.
void SafeTensorsWriter::add(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                            const void* data, size_t bytes) {
  HH_CHECK(name != "__metadata__", "safetensors: '__metadata__' cannot name a tensor");
  for (const auto& e : entries_)
    HH_CHECK(e.name != name, "safetensors: tensor '", name, "' added twice");
  uint64_t numel = 1;
  for (int64_t d : shape) {
    HH_CHECK(d >= 0, "safetensors: tensor '", name, "' has a negative dimension in ",
             shape_text(shape));
    numel *= static_cast<uint64_t>(d);
  }
  HH_CHECK(numel * dtype_size(dtype) == bytes, "safetensors: tensor '", name, "' ",
           dtype_name(dtype), " ", shape_text(shape), " needs ", numel * dtype_size(dtype),
           " bytes, got ", bytes);
  size_t offset = 0;
  for (const auto& e : entries_) offset += e.data.size();
  HH_CHECK(dtype != DType::F32 || offset % 4 == 0, "safetensors: F32 tensor '", name,
           "' would start at misaligned offset ", offset, "; add it before 2-byte tensors");
  const uint8_t* p = static_cast<const uint8_t*>(data);
  entries_.push_back(Entry{name, dtype, shape, std::vector<uint8_t>(p, p + bytes)});
}

void SafeTensorsWriter::add_f32(const std::string& name, const std::vector<int64_t>& shape,
                                const float* data) {
  uint64_t numel = 1;
  for (int64_t d : shape) numel *= static_cast<uint64_t>(d < 0 ? 0 : d);
  add(name, DType::F32, shape, data, numel * 4);
}

// 8-byte little-endian header length, JSON header (metadata first, tensors in insertion
// order, padded with spaces to a multiple of 8 bytes as the HF library does), then data.
std::vector<uint8_t> SafeTensorsWriter::serialize() const {
  std::string header = "{";
  if (!metadata_.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [key, value] : metadata_) {
      if (!first) header += ",";
      first = false;
      json_escape(header, key);
      header += ":";
      json_escape(header, value);
    }
    header += "}";
  }
  size_t offset = 0;
  for (const auto& e : entries_) {
    if (header.size() > 1) header += ",";
    json_escape(header, e.name);
    header += str_cat(":{\"dtype\":\"", dtype_name(e.dtype), "\",\"shape\":", shape_text(e.shape),
                      ",\"data_offsets\":[", offset, ",", offset + e.data.size(), "]}");
    offset += e.data.size();
  }
  header += "}";
  while (header.size() % 8 != 0) header += ' ';

  std::vector<uint8_t> out;
  out.reserve(8 + header.size() + offset);
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(n >> (8 * i)));
  out.insert(out.end(), header.begin(), header.end());
  for (const auto& e : entries_) out.insert(out.end(), e.data.begin(), e.data.end());
  return out;
}

void SafeTensorsWriter::save(const std::string& path) const {
  std::vector<uint8_t> bytes = serialize();
  write_file_atomic(path, bytes.data(), bytes.size());
}

}  // namespace hh
