// The layout probe under the emulator: the same source as the GPU build.
#include "probe_layouts.cu"
