#include "data/hh_rlhf.h"

#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "core/error.h"
#include "core/json.h"

namespace hh {

namespace {

constexpr size_t kChunkBytes = 1 << 16;
constexpr size_t kMaxLineBytes = size_t{256} << 20;  // a "line" this long is not jsonl

bool is_blank(std::string_view s) {
  for (char c : s) {
    if (c != ' ' && c != '\t' && c != '\r' && c != '\n') return false;
  }
  return true;
}

bool dir_exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace

// ---------------------------------------------------------------------------------------
// LineReader

LineReader::LineReader(const std::string& path) : path_(path), in_buf_(kChunkBytes) {
  file_ = std::fopen(path.c_str(), "rb");
  HH_CHECK(file_ != nullptr, path, ": cannot open: ", std::strerror(errno));
  // Sniff the first chunk: gzip starts with 1f 8b; anything else is read as plain text.
  in_len_ = std::fread(in_buf_.data(), 1, in_buf_.size(), file_);
  HH_CHECK(!std::ferror(file_), path, ": read error: ", std::strerror(errno));
  compressed_read_ = in_len_;
  gzip_ = in_len_ >= 2 && in_buf_[0] == 0x1f && in_buf_[1] == 0x8b;
  if (!gzip_) {
    pending_.assign(reinterpret_cast<const char*>(in_buf_.data()), in_len_);
    if (in_len_ < in_buf_.size()) eof_ = true;
    return;
  }
  auto* zs = new z_stream();
  // windowBits 15 + 16: gzip wrapper only, so the CRC and length trailer are checked.
  if (inflateInit2(zs, 15 + 16) != Z_OK) {
    delete zs;
    std::fclose(file_);
    HH_FAIL(path, ": zlib inflateInit2 failed");
  }
  zs->next_in = in_buf_.data();
  zs->avail_in = static_cast<uInt>(in_len_);
  zstream_ = zs;
}

LineReader::~LineReader() {
  if (zstream_) {
    auto* zs = static_cast<z_stream*>(zstream_);
    inflateEnd(zs);
    delete zs;
  }
  if (file_) std::fclose(file_);
}

// Appends the next decoded bytes to pending_. For gzip: inflate until some output comes,
// reading compressed input as needed; the input ending inside a member is a truncation.
bool LineReader::fill() {
  if (eof_) return false;
  if (!gzip_) {
    size_t n = std::fread(in_buf_.data(), 1, in_buf_.size(), file_);
    HH_CHECK(!std::ferror(file_), path_, ": read error: ", std::strerror(errno));
    if (n == 0) {
      eof_ = true;
      return false;
    }
    pending_.append(reinterpret_cast<const char*>(in_buf_.data()), n);
    return true;
  }
  auto* zs = static_cast<z_stream*>(zstream_);
  unsigned char out[kChunkBytes];
  for (;;) {
    if (zs->avail_in == 0) {
      size_t n = std::fread(in_buf_.data(), 1, in_buf_.size(), file_);
      HH_CHECK(!std::ferror(file_), path_, ": read error: ", std::strerror(errno));
      if (n == 0) {
        if (zstream_done_) {
          eof_ = true;
          return false;
        }
        HH_FAIL(path_, ": gzip stream cut short after ", compressed_read_, " compressed bytes (",
                line_number_, " complete lines read): the file is truncated; fetch it again");
      }
      compressed_read_ += n;
      zs->next_in = in_buf_.data();
      zs->avail_in = static_cast<uInt>(n);
    }
    if (zstream_done_) {  // more input after a member: the next gzip member
      // Anything else there is refused (gzip -d only warns about "trailing garbage"): bytes
      // appended to a download are as suspect as bytes missing from one.
      const uint64_t at = compressed_read_ - zs->avail_in;
      HH_CHECK(zs->next_in[0] == 0x1f && (zs->avail_in < 2 || zs->next_in[1] == 0x8b), path_,
               ": bytes after the end of the gzip data, from compressed byte ", at,
               ", are not another gzip member (trailing garbage; `gzip -t` warns of it too)");
      inflateReset(zs);
      zstream_done_ = false;
    }
    zs->next_out = out;
    zs->avail_out = sizeof(out);
    int rc = inflate(zs, Z_NO_FLUSH);
    size_t produced = sizeof(out) - zs->avail_out;
    if (rc == Z_STREAM_END) {
      zstream_done_ = true;
    } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
      HH_FAIL(path_, ": corrupt gzip data near compressed byte ", compressed_read_ - zs->avail_in,
              ": ", zs->msg ? zs->msg : "zlib error ", zs->msg ? "" : std::to_string(rc));
    }
    if (produced > 0) {
      pending_.append(reinterpret_cast<const char*>(out), produced);
      return true;
    }
  }
}

std::string LineReader::read_all() {
  while (fill()) {
  }
  pending_.erase(0, pending_pos_);  // in place: a corpus is not held twice
  pending_pos_ = 0;
  std::string rest = std::move(pending_);
  pending_.clear();  // the reader stays usable (at its end)
  return rest;
}

bool LineReader::next(std::string* line) {
  size_t scan_from = pending_pos_;
  for (;;) {
    size_t nl = pending_.find('\n', scan_from);
    bool last = false;
    if (nl == std::string::npos) {
      // Drop consumed bytes before growing the buffer.
      if (pending_pos_ > 0) {
        pending_.erase(0, pending_pos_);
        pending_pos_ = 0;
      }
      scan_from = pending_.size();
      HH_CHECK(pending_.size() <= kMaxLineBytes, path_, ":", line_number_ + 1,
               ": line longer than ", kMaxLineBytes, " bytes; not a jsonl text file?");
      if (fill()) continue;
      if (pending_.empty()) return false;
      nl = pending_.size();  // a last line without "\n"
      last = true;
    }
    line->assign(pending_, pending_pos_, nl - pending_pos_);
    if (!line->empty() && line->back() == '\r') line->pop_back();
    pending_pos_ = last ? pending_.size() : nl + 1;
    ++line_number_;
    return true;
  }
}

// ---------------------------------------------------------------------------------------
// Text

// The first byte where no well-formed UTF-8 sequence starts (core/json.h's rule).
size_t find_invalid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8_sequence_length(s, i);
    if (n == 0) return i;
    i += n;
  }
  return std::string_view::npos;
}

// Scans for the leftmost role marker; the text between two markers belongs to the first.
Dialogue parse_dialogue(std::string_view text) {
  Dialogue d;
  size_t pos = 0;
  bool have_role = false;
  Role role = Role::Human;
  for (;;) {
    size_t h = text.find(kHumanMarker, pos);
    size_t a = text.find(kAssistantMarker, pos);
    size_t next = std::min(h, a);
    std::string_view piece =
        text.substr(pos, next == std::string_view::npos ? text.size() - pos : next - pos);
    if (have_role) {
      d.turns.push_back(Turn{role, std::string(piece)});
    } else {
      d.preamble = std::string(piece);
    }
    if (next == std::string_view::npos) break;
    have_role = true;
    role = next == h ? Role::Human : Role::Assistant;
    pos = next + (next == h ? kHumanMarker.size() : kAssistantMarker.size());
  }
  return d;
}

// The prompt ends after the last "\n\nAssistant:" inside the common prefix, so both
// dialogues are exactly prompt + response even when one response spans several turns.
std::string split_pair(const std::string& chosen, const std::string& rejected, HhPair* pair) {
  size_t common = 0;
  size_t limit = std::min(chosen.size(), rejected.size());
  while (common < limit && chosen[common] == rejected[common]) ++common;
  std::string_view shared = std::string_view(chosen).substr(0, common);
  size_t marker = shared.rfind(kAssistantMarker);
  if (marker == std::string_view::npos) {
    return chosen.find(kAssistantMarker) == std::string::npos
               ? "\"chosen\" has no \"\\n\\nAssistant:\" turn"
               : "chosen and rejected share no prompt ending in \"\\n\\nAssistant:\"";
  }
  size_t end = marker + kAssistantMarker.size();
  pair->chosen = chosen;
  pair->rejected = rejected;
  pair->prompt = chosen.substr(0, end);
  pair->chosen_response = chosen.substr(end);
  pair->rejected_response = rejected.substr(end);
  auto has_turns = [](const std::string& s) {
    return s.find(kHumanMarker) != std::string::npos ||
           s.find(kAssistantMarker) != std::string::npos;
  };
  pair->prompts_differ = has_turns(pair->chosen_response) || has_turns(pair->rejected_response);
  return "";
}

std::string pair_problem(const HhPair& pair) {
  if (pair.chosen == pair.rejected) return "chosen and rejected are identical";
  if (is_blank(pair.chosen_response)) return "empty chosen response";
  if (is_blank(pair.rejected_response)) return "empty rejected response";
  return "";
}

// ---------------------------------------------------------------------------------------
// The reader

namespace {

// Strips the " [src/x.cpp:N]" location HH_FAIL appends, for a shorter per-line reason.
std::string without_location(std::string msg) {
  if (!msg.empty() && msg.back() == ']') {
    size_t open = msg.rfind(" [");
    if (open != std::string::npos) msg.erase(open);
  }
  return msg;
}

// Parses one jsonl line into *pair; "" on success, else why it is malformed.
std::string parse_line(const std::string& line, const std::string& where, HhPair* pair) {
  size_t bad = find_invalid_utf8(line);
  if (bad != std::string::npos) return str_cat("invalid UTF-8 at byte ", bad, " of the line");
  Json json;
  try {
    json = Json::parse(line, where);
  } catch (const Error& e) {
    return without_location(e.what());
  }
  if (!json.is_object()) return "not a JSON object";
  for (const char* key : {"chosen", "rejected"}) {
    const Json* v = json.find(key);
    if (!v) return str_cat("missing field \"", key, "\"");
    if (!v->is_string()) return str_cat("field \"", key, "\" is not a string");
  }
  return split_pair(json.at("chosen").as_string(), json.at("rejected").as_string(), pair);
}

}  // namespace

HhReadResult read_hh_pairs(const std::string& path, bool strict) {
  HhReadResult result;
  LineReader reader(path);
  std::string line;
  while (reader.next(&line)) {
    int64_t n = reader.line_number();
    result.lines = n;
    if (is_blank(line)) continue;
    HhPair pair;
    std::string where = str_cat(path, ":", n);
    std::string reason = parse_line(line, where, &pair);
    if (!reason.empty()) {
      HH_CHECK(!strict, where, ": ", reason, " (strict mode stops at malformed lines)");
      result.skipped.push_back(HhSkip{n, reason});
      continue;
    }
    pair.line = n;
    result.pairs.push_back(std::move(pair));
  }
  HH_CHECK(result.lines > 0, path, ": empty input (no lines)");
  HH_CHECK(!result.pairs.empty(), path, ": no usable pairs in ", result.lines, " lines (",
           result.skipped.size(), " malformed",
           result.skipped.empty()
               ? std::string()
               : str_cat("; line ", result.skipped[0].line, ": ", result.skipped[0].reason),
           ")");
  return result;
}

std::string find_shared_data_dir() {
  if (const char* env = std::getenv("HH_DATA_DIR")) {
    if (*env) return env;
  }
  std::vector<std::string> bases = {"."};
  char exe[4096];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n > 0) {
    std::string dir(exe, static_cast<size_t>(n));
    for (int up = 0; up < 3; ++up) {
      size_t slash = dir.rfind('/');
      if (slash == std::string::npos || slash == 0) break;
      dir.erase(slash);
      bases.push_back(dir);
    }
  }
  for (const std::string& base : bases) {
    std::string candidate = base + "/../shared/data";
    if (!dir_exists(candidate)) continue;
    char resolved[PATH_MAX];
    return realpath(candidate.c_str(), resolved) ? std::string(resolved) : candidate;
  }
  return "";
}

}  // namespace hh
