// The host/device core headers compile under nvcc for every shipped architecture, and their
// DIFFATTN_HD functions are callable from device code.
#include <diffattn/core/lambda.hpp>
#include <diffattn/core/mask.hpp>
#include <diffattn/core/params.hpp>

__global__ void diffattn_core_device_smoke(diffattn::RowMask m, const float* lq, float* out) {
  const std::int64_t i = threadIdx.x;
  const auto t = diffattn::lambda_terms<float>(lq, lq, lq, lq, 4);
  out[i] = static_cast<float>(m.row_count(i)) + t.value(0.2f);
}
