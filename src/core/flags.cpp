#include "core/flags.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <new>

#include "core/error.h"
#include "core/json.h"

namespace hh {

namespace {

const char* kind_name(int kind) {
  static const char* names[] = {"string", "int", "float", "bool"};
  return names[kind];
}

// Parses a whole string as a base-10 int64; false on any leftover character or overflow.
bool parse_int64(const std::string& s, int64_t* out) {
  if (s.empty() || std::isspace(static_cast<unsigned char>(s[0]))) return false;
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(s.c_str(), &end, 10);
  if (errno != 0 || end != s.c_str() + s.size()) return false;
  *out = v;
  return true;
}

// Parses a whole string as a finite double (nan and inf are refused).
bool parse_double(const std::string& s, double* out) {
  if (s.empty() || std::isspace(static_cast<unsigned char>(s[0]))) return false;
  errno = 0;
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (errno == ERANGE || end != s.c_str() + s.size() || !std::isfinite(v)) return false;
  *out = v;
  return true;
}

bool parse_bool(const std::string& s, bool* out) {
  if (s == "true" || s == "1") {
    *out = true;
    return true;
  }
  if (s == "false" || s == "0") {
    *out = false;
    return true;
  }
  return false;
}

// Shortest decimal text that reads back as the same double ("0.0003", not 2.9999...e-4).
std::string format_double(double v) {
  char buf[64];
  if (v == std::floor(v) && std::fabs(v) < 1e15) {  // whole numbers as such: 600, not 6e+02
    std::snprintf(buf, sizeof buf, "%.0f", v);
    return buf;
  }
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

// Levenshtein distance (insertions, deletions, substitutions), for "did you mean".
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
      diagonal = up;
    }
  }
  return row[b.size()];
}

}  // namespace

Flags::Flags(std::string program, std::string description)
    : program_(std::move(program)), description_(std::move(description)) {}

void Flags::add_string(const std::string& name, const std::string& def, const std::string& help) {
  HH_CHECK(!name.empty() && flags_.count(name) == 0, "flag --", name, " defined twice");
  flags_[name] = Flag{Kind::String, def, def, help};
  order_.push_back(name);
}

void Flags::add_int(const std::string& name, int64_t def, const std::string& help) {
  HH_CHECK(!name.empty() && flags_.count(name) == 0, "flag --", name, " defined twice");
  flags_[name] = Flag{Kind::Int, std::to_string(def), std::to_string(def), help};
  order_.push_back(name);
}

void Flags::add_float(const std::string& name, double def, const std::string& help) {
  HH_CHECK(!name.empty() && flags_.count(name) == 0, "flag --", name, " defined twice");
  flags_[name] = Flag{Kind::Float, format_double(def), format_double(def), help};
  order_.push_back(name);
}

void Flags::add_bool(const std::string& name, bool def, const std::string& help) {
  HH_CHECK(!name.empty() && flags_.count(name) == 0, "flag --", name, " defined twice");
  const char* text = def ? "true" : "false";
  flags_[name] = Flag{Kind::Bool, text, text, help};
  order_.push_back(name);
}

void Flags::add_usage(const std::string& line) { usage_.push_back(line); }

std::vector<std::string> Flags::parse(int argc, char** argv) {
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) args.emplace_back(argv[i]);
  return parse(args);
}

// Walks the arguments left to right: "--" ends the flags, "--help"/"-h" prints help and
// exits, "--k=v" / "--k v" / "--k" (bool) / "--no-k" (bool) set flags, the rest are
// positional.
std::vector<std::string> Flags::parse(const std::vector<std::string>& args) {
  std::vector<std::string> positional;
  std::string bare_bool;  // the previous argument, when it was a bare boolean --name
  auto add_positional = [&](const std::string& arg) {
    bool ignored = false;
    HH_CHECK(bare_bool.empty() || !parse_bool(arg, &ignored), "flag --", bare_bool,
             " is a boolean: write --", bare_bool, "=", arg, " (a bare --", bare_bool,
             " means true; --no-", bare_bool, " means false)");
    HH_CHECK(takes_positional_, "unexpected argument '", arg,
             "': this program takes no positional arguments (flags are written --name=value; "
             "see --help)");
    positional.push_back(arg);
  };
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--") {
      bare_bool.clear();
      for (size_t j = i + 1; j < args.size(); ++j) add_positional(args[j]);
      break;
    }
    if (arg == "--help" || arg == "-h") {
      std::fputs(help().c_str(), stdout);
      std::fflush(stdout);
      std::exit(0);
    }
    if (arg.size() < 2 || arg[0] != '-') {  // "x" or "-" (stdin by convention)
      add_positional(arg);
      bare_bool.clear();
      continue;
    }
    bare_bool.clear();
    HH_CHECK(arg[1] == '-', "unknown flag '", arg, "': flags are written --name=value");
    std::string body = arg.substr(2);
    size_t eq = body.find('=');
    std::string name = body.substr(0, eq);
    HH_CHECK(!name.empty(), "malformed flag '", arg, "'");

    auto it = flags_.find(name);
    if (it == flags_.end() && name.compare(0, 3, "no-") == 0) {
      auto negated = flags_.find(name.substr(3));
      if (negated != flags_.end() && negated->second.kind == Kind::Bool) {
        HH_CHECK(eq == std::string::npos, "flag --", name, " takes no value (got '", arg, "')");
        HH_CHECK(!negated->second.set, "flag --", negated->first, " given twice");
        assign(negated->first, "false");
        negated->second.set = true;
        continue;
      }
    }
    if (it == flags_.end()) {
      std::string best;
      size_t best_distance = 3;
      for (const auto& known : order_) {
        size_t d = edit_distance(name, known);
        if (d < best_distance) {
          best_distance = d;
          best = known;
        }
      }
      if (!best.empty()) HH_FAIL("unknown flag --", name, " (did you mean --", best, "?)");
      HH_FAIL("unknown flag --", name, " (see --help)");
    }
    Flag& flag = it->second;
    HH_CHECK(!flag.set, "flag --", name, " given twice");
    std::string value;
    if (eq != std::string::npos) {
      value = body.substr(eq + 1);
    } else if (flag.kind == Kind::Bool) {
      value = "true";
      bare_bool = name;
    } else {
      HH_CHECK(i + 1 < args.size() && args[i + 1].compare(0, 2, "--") != 0, "flag --", name,
               " is missing its value (--", name, "=<", kind_name(static_cast<int>(flag.kind)),
               ">)");
      value = args[++i];
    }
    assign(name, value);
    flag.set = true;
  }
  return positional;
}

// Checks `value` against the flag's type and stores it (ints in canonical form).
void Flags::assign(const std::string& name, const std::string& value) {
  auto it = flags_.find(name);
  HH_CHECK(it != flags_.end(), "unknown flag --", name);
  Flag& flag = it->second;
  switch (flag.kind) {
    case Kind::String:
      flag.value = value;
      break;
    case Kind::Int: {
      int64_t v = 0;
      HH_CHECK(parse_int64(value, &v), "flag --", name, ": '", value, "' is not an integer");
      flag.value = std::to_string(v);
      break;
    }
    case Kind::Float: {
      double v = 0;
      HH_CHECK(parse_double(value, &v), "flag --", name, ": '", value, "' is not a finite number");
      flag.value = value;
      break;
    }
    case Kind::Bool: {
      bool v = false;
      HH_CHECK(parse_bool(value, &v), "flag --", name, ": '", value,
               "' is not a boolean (true/false/1/0)");
      flag.value = v ? "true" : "false";
      break;
    }
  }
}

const Flags::Flag& Flags::find(const std::string& name, Kind kind) const {
  auto it = flags_.find(name);
  HH_CHECK(it != flags_.end(), program_, ": no flag --", name, " is defined");
  HH_CHECK(it->second.kind == kind, program_, ": flag --", name, " is a ",
           kind_name(static_cast<int>(it->second.kind)), ", read as a ",
           kind_name(static_cast<int>(kind)));
  return it->second;
}

std::string Flags::get_string(const std::string& name) const {
  return find(name, Kind::String).value;
}

int64_t Flags::get_int(const std::string& name) const {
  int64_t v = 0;
  parse_int64(find(name, Kind::Int).value, &v);  // validated when assigned
  return v;
}

double Flags::get_float(const std::string& name) const {
  double v = 0;
  parse_double(find(name, Kind::Float).value, &v);
  return v;
}

int Flags::get_int32(const std::string& name) const {
  const int64_t v = get_int(name);
  HH_CHECK(v >= INT32_MIN && v <= INT32_MAX, "flag --", name, "=", v, " is out of range (",
           INT32_MIN, " to ", INT32_MAX, ")");
  return static_cast<int>(v);
}

bool Flags::get_bool(const std::string& name) const {
  return find(name, Kind::Bool).value == "true";
}

bool Flags::is_set(const std::string& name) const {
  auto it = flags_.find(name);
  HH_CHECK(it != flags_.end(), program_, ": no flag --", name, " is defined");
  return it->second.set;
}

// Overrides a value (validated like a command-line value); is_set() is not changed.
void Flags::set(const std::string& name, const std::string& value) { assign(name, value); }

bool Flags::has(const std::string& name) const { return flags_.count(name) != 0; }

void Flags::set_default(const std::string& name, const std::string& value) {
  assign(name, value);
  Flag& flag = flags_.at(name);
  flag.def = flag.value;
}

// "<program>: <description>", then "  --name=<type>  help (default: X)" per flag in the
// order they were added, then the usage lines.
std::string Flags::help() const {
  std::string out = program_ + ": " + description_ + "\n\nFlags:\n";
  std::vector<std::string> lefts;
  size_t width = 0;
  for (const auto& name : order_) {
    const Flag& flag = flags_.at(name);
    lefts.push_back("  --" + name + "=<" + kind_name(static_cast<int>(flag.kind)) + ">");
    width = std::max(width, lefts.back().size());
  }
  for (size_t i = 0; i < order_.size(); ++i) {
    const Flag& flag = flags_.at(order_[i]);
    std::string def = flag.kind == Kind::String ? "\"" + flag.def + "\"" : flag.def;
    out += lefts[i] + std::string(width - lefts[i].size() + 2, ' ') + flag.help +
           " (default: " + def + ")\n";
  }
  out += "  --help" + std::string(width > 6 ? width - 6 + 2 : 2, ' ') + "print this help\n";
  out += "\nBooleans may be given as --name, --no-name or --name=true/false/1/0.\n";
  if (!usage_.empty()) {
    out += "\nUsage:\n";
    for (const auto& line : usage_) out += "  " + line + "\n";
  }
  return out;
}

// {"name": value, ...} with numbers and booleans typed, so a run can be reproduced.
std::string Flags::to_json() const {
  Json obj = Json::object();
  for (const auto& [name, flag] : flags_) {
    switch (flag.kind) {
      case Kind::String:
        obj[name] = Json(flag.value);
        break;
      case Kind::Int:
        obj[name] = Json(get_int(name));
        break;
      case Kind::Float:
        obj[name] = Json(get_float(name));
        break;
      case Kind::Bool:
        obj[name] = Json(flag.value == "true");
        break;
    }
  }
  return obj.dump();
}

namespace {
std::string g_rank_label;
void (*g_abort_job)() = nullptr;
}  // namespace

void set_run_main_rank(const std::string& label, void (*abort_job)()) {
  g_rank_label = label;
  g_abort_job = abort_job;
}

int run_main(const char* program, const std::function<int()>& body) {
  const char* what = nullptr;
  std::string message;
  try {
    return body();
  } catch (const std::bad_alloc&) {
    what = "out of memory";
  } catch (const std::exception& e) {
    message = e.what();
    what = message.c_str();
  } catch (...) {
    what = "unknown exception";
  }
  std::fflush(stdout);
  if (g_rank_label.empty())
    std::fprintf(stderr, "%s: error: %s\n", program, what);
  else
    std::fprintf(stderr, "%s (%s): error: %s\n", program, g_rank_label.c_str(), what);
  std::fflush(stderr);
  if (g_abort_job) g_abort_job();
  return 1;
}

}  // namespace hh
