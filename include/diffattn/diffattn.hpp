// diffattn/diffattn.hpp: everything that runs on the CPU.
#pragma once

#include "diffattn/core/config.hpp"
#include "diffattn/core/dtype.hpp"
#include "diffattn/core/flops.hpp"
#include "diffattn/core/lambda.hpp"
#include "diffattn/core/mask.hpp"
#include "diffattn/core/params.hpp"
#include "diffattn/core/status.hpp"
#include "diffattn/core/validate.hpp"
#include "diffattn/cpu/backward.hpp"
#include "diffattn/cpu/forward.hpp"
#include "diffattn/reference/backward.hpp"
#include "diffattn/reference/forward.hpp"
