// emu_test.h - small helpers shared by the emulated CUDA tests (test_cuda_emu, test_fused, test_block_emu).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "emu_log.h"
#include "neat.h"

extern "C" {
#include "check.h"
}

// v rounded to what dtype holds, the way the device rounds (the toolkit's own conversions).
inline double emu_round_to(neat_dtype d, double v)
{
    switch (d) {
    case NEAT_FLOAT64: return v;
    case NEAT_FLOAT32: return static_cast<float>(v);
    case NEAT_FLOAT16: return __half2float(__float2half_rn(static_cast<float>(v)));
    case NEAT_BFLOAT16: return __bfloat162float(__float2bfloat16_rn(static_cast<float>(v)));
    }
    return v;
}

// The test's exit status: its failed checks, and any block-emulation violation (a barrier not every
// thread reached, shared memory misuse) that a launch reported on the way.
inline int emu_test_exit(const char *name)
{
    CHECK(neat_emu_violations() == 0, "%d violations; last: %s", neat_emu_violations(),
          neat_emu_last_violation());
    return check_exit(name);
}
