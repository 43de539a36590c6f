// diffattn/simt/simt.hpp: everything CUDA kernels are written with (see simt/README.md).
#pragma once

#include "diffattn/simt/atomic.hpp"
#include "diffattn/simt/config.hpp"
#include "diffattn/simt/cp_async.hpp"
#include "diffattn/simt/launch.hpp"
#include "diffattn/simt/layout.hpp"
#include "diffattn/simt/math.hpp"
#include "diffattn/simt/mma.hpp"
#include "diffattn/simt/reduce.hpp"
#include "diffattn/simt/smem.hpp"
#include "diffattn/simt/thread.hpp"
#include "diffattn/simt/warp.hpp"
