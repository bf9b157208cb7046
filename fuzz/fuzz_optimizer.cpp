// Optimizer state, as every --resume loads it: load_optimizer on a file of any bytes, for a
// fixed small model. Property: a state that loads saves to one that loads to the same step,
// moments and trainer state (rng, data cursor, extra values).
#include <memory>

#include "core/fileio.h"
#include "fuzz/fuzz.h"
#include "train/optimizer.h"

namespace {

hh::GPT& model() {
  static hh::GPT gpt = [] {
    hh::GPT m(hh::fuzz::cpu_backend(), hh::fuzz::small_gpt_config(), false);
    m.init_random(1);
    return m;
  }();
  return gpt;
}

std::vector<float> host(const hh::Buffer<float>& b) {
  std::vector<float> out(b.size());
  model().backend().copy_to_host(out.data(), b.data(), b.bytes());
  return out;
}

bool same(const hh::TrainState& a, const hh::TrainState& b) {
  return a.rng_state == b.rng_state && a.data_cursor == b.data_cursor && a.extra == b.extra &&
         a.extra_u64 == b.extra_u64;
}

}  // namespace

namespace hh::fuzz {

std::vector<Bytes> seeds() {
  AdamW opt(model(), AdamWConfig{});
  opt.step = 7;
  std::vector<float> m(opt.m.size()), v(opt.v.size());
  for (size_t i = 0; i < m.size(); i++)
    m[i] = 0.001f * float(i % 13) - 0.005f, v[i] = 1e-6f * float(i % 7);
  model().backend().copy_to_device(opt.m.data(), m.data(), opt.m.bytes());
  model().backend().copy_to_device(opt.v.data(), v.data(), opt.v.bytes());
  TrainState state;
  state.rng_state = {1, 2, 3, 0xffffffffffffffffull};
  state.data_cursor = {2, 17, 12345};
  state.extra = {{"kl_coef", 0.05}, {"reward_mean", -1.25e-3}};
  state.extra_u64 = {{"samples", 640}};
  const std::string path = scratch_file(nullptr, 0, "seed");
  save_optimizer(path, opt, state);
  return {read_file_bytes(path)};
}

}  // namespace hh::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = hh::fuzz::scratch_file(data, size);
  hh::AdamW opt(model(), hh::AdamWConfig{});
  hh::TrainState state;
  if (!hh::fuzz::returns_or_throws_hh_error([&] { hh::load_optimizer(path, opt, &state); }))
    return 0;
  const std::string resaved = hh::fuzz::scratch_file(nullptr, 0, "resaved");
  hh::save_optimizer(resaved, opt, state);
  hh::AdamW again(model(), hh::AdamWConfig{});
  hh::TrainState state_again;
  FUZZ_REQUIRE(hh::fuzz::returns_or_throws_hh_error(
                   [&] { hh::load_optimizer(resaved, again, &state_again); }),
               "the state it saved does not load");
  FUZZ_REQUIRE(again.step == opt.step, "step ", opt.step, " became ", again.step);
  FUZZ_REQUIRE(host(again.m) == host(opt.m) && host(again.v) == host(opt.v), "moments changed");
  FUZZ_REQUIRE(same(state, state_again), "trainer state changed");
  return 0;
}
