// A small JSON value with a strict parser and a writer. Used for the safetensors header,
// JSONL inputs (HH-RLHF, prompts), GPT-2's encoder.json and the metrics log.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace hh {

class Json {
 public:
  enum class Type { Null, Bool, Number, String, Array, Object };
  using Array = std::vector<Json>;
  using Object = std::map<std::string, Json>;  // sorted keys: deterministic output

  Json() = default;
  Json(std::nullptr_t) {}
  Json(bool b) : type_(Type::Bool), bool_(b) {}
  // Integers keep their exact value beside the double (a double holds only 53 bits): a
  // seed or count past 2^53 is written, read and compared exactly.
  Json(int v) : type_(Type::Number), num_(v), exact_(true), int_(v) {}
  Json(int64_t v) : type_(Type::Number), num_(static_cast<double>(v)), exact_(true), int_(v) {}
  Json(uint64_t v)
      : type_(Type::Number),
        num_(static_cast<double>(v)),
        exact_(v <= static_cast<uint64_t>(INT64_MAX)),
        int_(exact_ ? static_cast<int64_t>(v) : 0) {}
  Json(double v) : type_(Type::Number), num_(v) {}
  Json(const char* s) : type_(Type::String), str_(s) {}
  Json(std::string s) : type_(Type::String), str_(std::move(s)) {}
  Json(Array a) : type_(Type::Array), arr_(std::move(a)) {}
  Json(Object o) : type_(Type::Object), obj_(std::move(o)) {}
  static Json array() { return Json(Array{}); }
  static Json object() { return Json(Object{}); }

  // Parses one JSON document. `what` names the source (file:line) in error messages,
  // which also give the byte offset of the problem.
  static Json parse(std::string_view text, const std::string& what = "json");

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::Null; }
  bool is_bool() const { return type_ == Type::Bool; }
  bool is_number() const { return type_ == Type::Number; }
  bool is_string() const { return type_ == Type::String; }
  bool is_array() const { return type_ == Type::Array; }
  bool is_object() const { return type_ == Type::Object; }

  // Typed access; throws hh::Error naming the expected type when it does not match.
  bool as_bool() const;
  double as_number() const;
  // Also checks the number is an integer: an exact one (written without a fraction or
  // exponent, or made from an integer), or a double below 2^53 with no fraction.
  int64_t as_int() const;
  // A number that as_int() reads and that fits an int (model dimensions, token ids).
  bool is_int32() const;
  const std::string& as_string() const;
  const Array& as_array() const;
  const Object& as_object() const;
  Array& as_array();
  Object& as_object();

  // Object helpers. at() throws naming the missing key; find() returns nullptr.
  bool contains(const std::string& key) const;
  const Json& at(const std::string& key) const;
  const Json* find(const std::string& key) const;
  Json& operator[](const std::string& key);  // makes a Null into an object
  void push_back(Json v);                    // makes a Null into an array
  size_t size() const;

  // Compact serialisation (no spaces). Numbers that are integers print without a
  // fraction; others with enough digits to round-trip a double.
  std::string dump() const;
  void dump_to(std::string& out) const;

 private:
  Type type_ = Type::Null;
  bool bool_ = false;
  double num_ = 0;
  bool exact_ = false;  // int_ holds the number exactly
  int64_t int_ = 0;
  std::string str_;
  Array arr_;  // value semantics: a copy is a deep copy
  Object obj_;
};

// Appends s to out as a quoted JSON string (escapes control characters; well-formed UTF-8
// is copied as it is, so it stays readable; any other byte becomes U+FFFD).
void json_escape(std::string& out, std::string_view s);

// Length of the well-formed UTF-8 sequence that starts at s[i] (1 for ASCII), or 0 when it
// is not one (RFC 3629: no overlong forms, no surrogates, nothing past U+10FFFF).
size_t utf8_sequence_length(std::string_view s, size_t i);

}  // namespace hh
