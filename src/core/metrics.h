// Metrics: one JSON object per line in <run_dir>/metrics.jsonl (appended, flushed each
// line, so a resumed run continues the same file), and the progress line on stderr.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdio>
#include <string>

#include "core/json.h"

namespace hh {

class MetricsLogger {
 public:
  MetricsLogger() = default;  // disabled: log() does nothing (e.g. on ranks > 0)
  // Opens path for appending; `truncate` starts a fresh file instead.
  explicit MetricsLogger(const std::string& path, bool truncate = false);
  ~MetricsLogger();
  MetricsLogger(const MetricsLogger&) = delete;
  MetricsLogger& operator=(const MetricsLogger&) = delete;
  void log(const Json& record);
  bool enabled() const { return f_ != nullptr; }

 private:
  std::FILE* f_ = nullptr;
  std::string path_;
};

// Progress over `total` units of work: rate and ETA from the time since start().
//   Progress p(total_steps); ... p.update(step, tokens_done);
//   fprintf(stderr, "%s\n", p.line().c_str())
class Progress {
 public:
  explicit Progress(int64_t total_steps);
  // Restarts the clock with `steps_done`/`items_done` already done (e.g. a resumed run),
  // so the rate and ETA count only work from now on. The constructor starts from 0, 0.
  void start(int64_t steps_done = 0, double items_done = 0);
  // Marks `steps_done` steps and `items_done` items (tokens, pairs, ...) done so far.
  void update(int64_t steps_done, double items_done);
  double items_per_second() const;
  double eta_seconds() const;  // negative while unknown (no step done since start)
  double elapsed_seconds() const;
  // "step 120/1000 | 8.1k tok/s | 00:14 elapsed | ETA 01:42"
  std::string line(const char* item_unit = "tok") const;

 private:
  using Clock = std::chrono::steady_clock;
  int64_t total_, start_step_ = -1, steps_ = 0;
  double start_items_ = 0, items_ = 0;
  Clock::time_point start_;
};

std::string format_duration(double seconds);  // "1:02:03" or "02:03"; "--:--" if < 0
std::string format_gib(size_t bytes);         // "8.87 GiB"

}  // namespace hh
