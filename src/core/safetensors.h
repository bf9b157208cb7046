// safetensors: 8-byte little-endian header length N, N bytes of JSON header, raw data.
// Header: {"__metadata__": {str: str}, "name": {"dtype": "F32", "shape": [..],
// "data_offsets": [begin, end]}, ...}, offsets relative to the start of the data.
//
// The reader validates everything (it reads files from anywhere): header length within
// the file and below a cap, JSON well formed, known dtypes, offsets in bounds, ordered
// and non-overlapping, sizes = product(shape)·dtype size, no trailing garbage. Every
// error names the file and the problem.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace hh {

enum class DType { F32, F16, BF16, I32, I64, U8 };
size_t dtype_size(DType t);
const char* dtype_name(DType t);  // "F32", ...

struct TensorInfo {
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  size_t begin = 0, end = 0;  // byte offsets into the data section
  int64_t numel() const;
};

class SafeTensorsFile {
 public:
  // Reads and validates the whole file into memory. Throws hh::Error("<path>: ...").
  static SafeTensorsFile load(const std::string& path);
  static SafeTensorsFile parse(std::vector<uint8_t> bytes, const std::string& what);

  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;  // throws naming file and tensor

  // Raw bytes of one tensor.
  const uint8_t* data(const std::string& name) const;
  // A copy as float32 (F32, F16 and BF16 are converted). Checks the shape when given.
  std::vector<float> read_f32(const std::string& name,
                              const std::vector<int64_t>& expect_shape = {}) const;
  std::vector<int32_t> read_i32(const std::string& name) const;  // from I32 or I64
  const std::string& source() const { return what_; }

 private:
  std::string what_;
  std::vector<uint8_t> bytes_;
  size_t data_start_ = 0;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, TensorInfo> tensors_;
};

// Throws "<what>: tensor '<name>' holds a non-finite value ... at index i" (the first) when
// any of the n values is NaN or ±Inf: such weights or moments sample and train garbage,
// so loading refuses them. One pass; cheap next to reading the file.
void check_finite(const float* values, size_t n, const std::string& what, const std::string& name);

// Builds a safetensors file in memory; save() writes it atomically (see fileio.h).
class SafeTensorsWriter {
 public:
  void set_metadata(const std::string& key, const std::string& value);
  // Data is copied. Tensors are written in the order they were added.
  void add(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
           const void* data, size_t bytes);
  void add_f32(const std::string& name, const std::vector<int64_t>& shape, const float* data);
  std::vector<uint8_t> serialize() const;
  void save(const std::string& path) const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> data;
  };
  std::map<std::string, std::string> metadata_;
  std::vector<Entry> entries_;
};

}  // namespace hh
