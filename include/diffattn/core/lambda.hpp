// diffattn/core/lambda.hpp: the re-parameterised lambda of docs/SPEC.md. Host/device.
//
//   lambda = exp(<lq1, lk1>) - exp(<lq2, lk2>) + lambda_init
#pragma once

#include <cmath>
#include <cstdint>

#include "diffattn/core/config.hpp"

DIFFATTN_NAMESPACE_BEGIN

/// The two exponentials of lambda for one set of vectors (length d), in precision Acc.
template <class Acc>
struct LambdaTerms {
  Acc e1 = 0;  ///< exp(<lq1, lk1>)
  Acc e2 = 0;  ///< exp(<lq2, lk2>)
  DIFFATTN_HD Acc value(Acc lambda_init) const { return e1 - e2 + lambda_init; }
};

/// exp(<lq1,lk1>) and exp(<lq2,lk2>) for the vectors starting at the given pointers.
template <class Acc, class P>
DIFFATTN_HD LambdaTerms<Acc> lambda_terms(const P* lq1, const P* lk1, const P* lq2,
                                            const P* lk2, std::int64_t d) {
  Acc dot1 = 0, dot2 = 0;
  for (std::int64_t i = 0; i < d; ++i) {
    dot1 += static_cast<Acc>(lq1[i]) * static_cast<Acc>(lk1[i]);
    dot2 += static_cast<Acc>(lq2[i]) * static_cast<Acc>(lk2[i]);
  }
  using std::exp;
  LambdaTerms<Acc> t;
  t.e1 = exp(dot1);
  t.e2 = exp(dot2);
  return t;
}

DIFFATTN_NAMESPACE_END
