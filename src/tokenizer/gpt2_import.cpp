// Import of GPT-2's encoder.json (token string -> id) and vocab.bpe (merges in rank
// order). GPT-2 writes bytes as printable code points (bytes_to_unicode); we map them back.
#include <string>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "core/fileio.h"
#include "core/json.h"
#include "tokenizer/tokenizer.h"

namespace hh {
namespace {

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes map to themselves, the other 68
// bytes to U+0100, U+0101, ... in byte order.
std::vector<uint32_t> gpt2_byte_code_points() {
  std::vector<uint32_t> cp(256, 0);
  std::vector<bool> printable(256, false);
  for (int b = '!'; b <= '~'; ++b) printable[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
  uint32_t next = 256;
  for (int b = 0; b < 256; ++b) cp[b] = printable[b] ? b : next++;
  return cp;
}

std::string utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// A GPT-2 token string back to its bytes; where names the source for errors.
std::string gpt2_token_bytes(const std::string& token, const std::vector<int>& cp_to_byte,
                             const std::string& where) {
  std::string out;
  for (size_t i = 0; i < token.size();) {
    uint8_t b0 = static_cast<uint8_t>(token[i]);
    uint32_t cp;
    size_t len;
    if (b0 < 0x80) {
      cp = b0;
      len = 1;
    } else if ((b0 & 0xE0) == 0xC0 && i + 1 < token.size()) {
      cp = ((b0 & 0x1Fu) << 6) | (static_cast<uint8_t>(token[i + 1]) & 0x3Fu);
      len = 2;
    } else {
      HH_FAIL(where, ": token '", token, "' has a character outside GPT-2's byte alphabet");
    }
    HH_CHECK(cp < cp_to_byte.size() && cp_to_byte[cp] >= 0, where, ": token '", token,
             "' has a character outside GPT-2's byte alphabet");
    out += static_cast<char>(cp_to_byte[cp]);
    i += len;
  }
  return out;
}

// The id encoder.json gives `token`: an integer, or an error naming the file and token.
int64_t token_id(const Json& id, const std::string& path, const std::string& token) {
  HH_CHECK(id.is_int32(), path, ": token '", token, "' has id ", id.dump(), ", not an integer id");
  return id.as_int();
}

}  // namespace

Tokenizer Tokenizer::import_gpt2(const std::string& encoder_json_path,
                                 const std::string& vocab_bpe_path,
                                 const std::vector<std::string>& extra_specials) {
  Json encoder = Json::parse(read_file_text(encoder_json_path), encoder_json_path);
  HH_CHECK(encoder.is_object(), encoder_json_path, ": expected a JSON object {token: id}");
  const Json::Object& enc = encoder.as_object();
  std::vector<uint32_t> byte_cp = gpt2_byte_code_points();
  std::vector<int> cp_to_byte(324, -1);
  for (int b = 0; b < 256; ++b) cp_to_byte[byte_cp[b]] = b;

  // Base tokens: the id GPT-2 gives each single byte.
  std::vector<uint8_t> id_to_byte(256);
  std::vector<bool> id_seen(256, false);
  std::unordered_map<std::string, int32_t> id_of_bytes;
  for (int b = 0; b < 256; ++b) {
    auto it = enc.find(utf8(byte_cp[b]));
    HH_CHECK(it != enc.end(), encoder_json_path, ": no token for byte ", b);
    int64_t id = token_id(it->second, encoder_json_path, it->first);
    HH_CHECK(id >= 0 && id < 256 && !id_seen[id], encoder_json_path, ": byte ", b, " has id ", id,
             "; expected a distinct id below 256");
    id_seen[id] = true;
    id_to_byte[id] = static_cast<uint8_t>(b);
    id_of_bytes[std::string(1, static_cast<char>(b))] = static_cast<int32_t>(id);
  }

  // Merges: line r+1 of vocab.bpe "left right" makes token 256 + r.
  std::string text = read_file_text(vocab_bpe_path);
  std::vector<std::pair<int32_t, int32_t>> merges;
  size_t line_no = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string::npos) eol = text.size();
    std::string line = text.substr(pos, eol - pos);
    pos = eol + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (line_no == 1 && line.rfind("#version", 0) == 0)) continue;
    std::string where = str_cat(vocab_bpe_path, ":", line_no);
    size_t space = line.find(' ');
    HH_CHECK(space != std::string::npos && space > 0 && space + 1 < line.size() &&
                 line.find(' ', space + 1) == std::string::npos,
             where, ": expected 'left right', got '", line, "'");
    std::string left = line.substr(0, space), right = line.substr(space + 1);
    std::string lb = gpt2_token_bytes(left, cp_to_byte, where);
    std::string rb = gpt2_token_bytes(right, cp_to_byte, where);
    auto li = id_of_bytes.find(lb), ri = id_of_bytes.find(rb);
    HH_CHECK(li != id_of_bytes.end() && ri != id_of_bytes.end(), where, ": merge '", line,
             "' uses a token no earlier merge made");
    int32_t id = 256 + static_cast<int32_t>(merges.size());
    auto e = enc.find(left + right);
    const int64_t got = e == enc.end() ? -1 : token_id(e->second, encoder_json_path, e->first);
    HH_CHECK(got == id, where, ": encoder.json gives '", left + right, "' id ", got, ", expected ",
             id, " (256 + merge rank)");
    merges.push_back({li->second, ri->second});
    id_of_bytes.emplace(lb + rb, id);
  }

  std::vector<std::string> specials = {kEndOfText};
  auto eot = enc.find(kEndOfText);
  int64_t expected_eot = 256 + static_cast<int64_t>(merges.size());
  HH_CHECK(eot != enc.end() && token_id(eot->second, encoder_json_path, eot->first) == expected_eot,
           encoder_json_path, ": expected ", kEndOfText, " with id ", expected_eot);
  HH_CHECK(enc.size() == static_cast<size_t>(expected_eot + 1), encoder_json_path, ": ", enc.size(),
           " tokens, but vocab.bpe's ", merges.size(), " merges give ", expected_eot + 1);
  for (const std::string& s : extra_specials)
    if (s != kEndOfText) specials.push_back(s);
  return from_parts(id_to_byte, merges, specials);
}

}  // namespace hh
