// diffattn/diffattn.cuh: everything, with the CUDA backend (compile with nvcc).
#pragma once

#include "diffattn/diffattn.hpp"
#include "diffattn/cuda/backward.cuh"
#include "diffattn/cuda/forward.cuh"
