// The one flag parser of every hh binary.
//
//   Flags f("hh-sft", "Train a language model on token datasets.");
//   f.add_int("steps", 1000, "optimizer steps");
//   f.add_string("data", "", "training dataset (from hh-prepare sft)");
//   f.parse(argc, argv);          // --help prints the generated help and exits 0
//   int steps = f.get_int("steps");
//
// Syntax: --key=value or --key value; booleans also as --key / --no-key. Unknown flags,
// malformed numbers, missing values and repeated flags throw hh::Error naming the flag.
// Arguments without -- are positional (returned by parse, in order; "--" ends flags) in a
// program that called takes_positional(); anywhere else they are an error, so that a
// stray word, or `--resume false` (a bare boolean means true), is not silently dropped.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace hh {

class Flags {
 public:
  Flags(std::string program, std::string description);

  void add_string(const std::string& name, const std::string& def, const std::string& help);
  void add_int(const std::string& name, int64_t def, const std::string& help);
  void add_float(const std::string& name, double def, const std::string& help);
  void add_bool(const std::string& name, bool def, const std::string& help);
  // A line shown in --help under the flags, e.g. usage of positional arguments.
  void add_usage(const std::string& line);
  // This program reads positional arguments (parse returns them); without it they fail.
  void takes_positional() { takes_positional_ = true; }

  // Parses argv[1..]. On --help/-h prints help() to stdout and calls exit(0).
  std::vector<std::string> parse(int argc, char** argv);
  std::vector<std::string> parse(const std::vector<std::string>& args);

  std::string get_string(const std::string& name) const;
  int64_t get_int(const std::string& name) const;
  // An int flag stored in an int: values past its range fail, naming the flag.
  int get_int32(const std::string& name) const;
  double get_float(const std::string& name) const;
  bool get_bool(const std::string& name) const;
  bool is_set(const std::string& name) const;  // given on the command line
  bool has(const std::string& name) const;     // declared (by any add_*)
  // Programmatic override, validated like a command-line value; does not change is_set().
  void set(const std::string& name, const std::string& value);
  // Changes a flag's default (what --help shows and what an unset flag reads), e.g. a
  // binary that shares add_*_flags but wants other defaults. Validated like set().
  void set_default(const std::string& name, const std::string& value);
  std::string help() const;
  // All flag values as a JSON object text (recorded in run directories and checkpoints).
  std::string to_json() const;

 private:
  enum class Kind { String, Int, Float, Bool };
  struct Flag {
    Kind kind;
    std::string value, def, help;
    bool set = false;
  };
  const Flag& find(const std::string& name, Kind kind) const;
  void assign(const std::string& name, const std::string& value);
  std::string program_, description_;
  std::vector<std::string> order_, usage_;
  std::map<std::string, Flag> flags_;
  bool takes_positional_ = false;
};

// Runs body() and turns an hh::Error (or any std::exception) into "program: error: ..."
// on stderr and exit code 1. Every main() is `return hh::run_main("hh-x", [&] {...});`.
int run_main(const char* program, const std::function<int()>& body);

// For distributed runs: errors printed by run_main name the rank (`label`, "rank 1 of 4"),
// and after printing, `abort_job` (when set) ends every rank of the job so none waits for
// this one. The communicator installs both; "" and nullptr restore the default.
void set_run_main_rank(const std::string& label, void (*abort_job)());

}  // namespace hh
