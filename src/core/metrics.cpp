#include "core/metrics.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "core/error.h"

namespace hh {

// Opens for appending (or truncating). If a previous run died mid-line, the partial line
// is ended first so every later record starts on its own line.
MetricsLogger::MetricsLogger(const std::string& path, bool truncate) : path_(path) {
  f_ = std::fopen(path.c_str(), truncate ? "w" : "a+");
  if (!f_) HH_FAIL(path, ": cannot open metrics log: ", std::strerror(errno));
  if (!truncate && std::fseek(f_, -1, SEEK_END) == 0) {
    int last = std::fgetc(f_);
    std::fseek(f_, 0, SEEK_END);
    if (last != '\n' && last != EOF) std::fputc('\n', f_);
  }
}

MetricsLogger::~MetricsLogger() {
  if (f_) std::fclose(f_);
}

// One compact JSON object per line, flushed so a crash loses at most the current line.
void MetricsLogger::log(const Json& record) {
  if (!f_) return;
  std::string line = record.dump();
  line += '\n';
  if (std::fwrite(line.data(), 1, line.size(), f_) != line.size() || std::fflush(f_) != 0) {
    HH_FAIL(path_, ": cannot write metrics log: ", std::strerror(errno));
  }
}

Progress::Progress(int64_t total_steps) : total_(total_steps), start_(Clock::now()) {}

void Progress::start(int64_t steps_done, double items_done) {
  start_step_ = steps_done;
  start_items_ = items_done;
  steps_ = steps_done;
  items_ = items_done;
  start_ = Clock::now();
}

void Progress::update(int64_t steps_done, double items_done) {
  steps_ = steps_done;
  items_ = items_done;
}

double Progress::elapsed_seconds() const {
  return std::chrono::duration<double>(Clock::now() - start_).count();
}

// (items now - items at start) / seconds since start.
double Progress::items_per_second() const {
  double elapsed = elapsed_seconds();
  return elapsed > 0 ? (items_ - start_items_) / elapsed : 0.0;
}

// Remaining steps × (seconds per step so far); negative while unknown (no step done yet).
double Progress::eta_seconds() const {
  int64_t base = start_step_ < 0 ? 0 : start_step_;
  int64_t done = steps_ - base;
  if (done <= 0) return -1.0;
  int64_t left = total_ - steps_;
  return left <= 0 ? 0.0 : elapsed_seconds() / static_cast<double>(done) * left;
}

std::string Progress::line(const char* item_unit) const {
  double rate = items_per_second();
  char rate_text[32];
  if (rate >= 1e6) {
    std::snprintf(rate_text, sizeof rate_text, "%.2fM", rate / 1e6);
  } else if (rate >= 1e3) {
    std::snprintf(rate_text, sizeof rate_text, "%.1fk", rate / 1e3);
  } else {
    std::snprintf(rate_text, sizeof rate_text, "%.1f", rate);
  }
  return str_cat("step ", steps_, "/", total_, " | ", rate_text, " ", item_unit, "/s | ",
                 format_duration(elapsed_seconds()), " elapsed | ETA ",
                 format_duration(eta_seconds()));
}

std::string format_gib(size_t bytes) {
  char s[48];
  std::snprintf(s, sizeof s, "%.2f GiB", static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
  return s;
}

// "H:MM:SS" from one hour up, "MM:SS" below; "--:--" when unknown (negative or not finite).
std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--";
  if (seconds > 1e9) seconds = 1e9;
  int64_t s = static_cast<int64_t>(std::llround(seconds));
  char buf[48];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%lld:%02d:%02d", static_cast<long long>(s / 3600),
                  static_cast<int>(s / 60 % 60), static_cast<int>(s % 60));
  } else {
    std::snprintf(buf, sizeof buf, "%02d:%02d", static_cast<int>(s / 60), static_cast<int>(s % 60));
  }
  return buf;
}

}  // namespace hh
