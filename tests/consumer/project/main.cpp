// Runs the reference forward on a tiny problem and checks one hand-computable output.
#include <cmath>
#include <cstdio>
#include <vector>

#include <diffattn/diffattn.hpp>

int main() {
  // one query, one key: P_1 = P_2 = 1, A = (1 - lambda) V, lambda = lambda_init (vectors 0)
  std::vector<float> q = {0.5f, -0.5f}, k = {1.0f, 2.0f}, v = {2.0f, -4.0f}, out(2, NAN), z(1, 0.f);
  diffattn::Params p = diffattn::make_official_params<float>(1, 1, 1, 1, 1, 1, q.data(), k.data(), v.data(), out.data());
  p.norm.kind = diffattn::NormKind::none;
  p.lambda = {z.data(), z.data(), z.data(), z.data(), false, 0.25};
  const diffattn::Status s = diffattn::reference::forward<double>(p);
  const float want0 = 0.75f * 0.75f * 2.0f;
  if (!s.ok() || std::fabs(out[0] - want0) > 1e-6f) {
    std::printf("consumer: FAILED (%s, out[0] = %g, want %g)\n", s.to_string().c_str(), out[0], want0);
    return 1;
  }
  std::printf("consumer: ok, out = (%g, %g)\n", out[0], out[1]);
  return 0;
}
