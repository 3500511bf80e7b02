// test_block_emu.cpp - the block emulation itself (block_emu.cpp, docs/design.md §8.14): shared
// memory and __syncthreads between the fibers of a block give the device's results; a kernel with
// a barrier missing gives wrong ones (so the emulation can catch that bug); a divergent barrier is
// reported and fails the launch instead of hanging; the shared-memory limit is the device's; and a
// barrier in a grid-stride launch stops the test program with a message.
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "block.cuh"
#include "launch.cuh"

extern "C" {
#include "check.h"
}
#include "emu_log.h"
#include "emu_test.h"

using namespace neat_cuda;

namespace {

// Tree sum of each block's slice of in[0, n) in dynamic shared memory; broken = 1 leaves out the
// barrier inside the tree, broken = 2 the one after the loads.
__global__ void block_sum(const float *in, int64_t n, float *out, int broken)
{
    NEAT_SHARED_DYNAMIC(float, buf);
    const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const unsigned nt = blockDim.x * blockDim.y * blockDim.z;
    const int64_t i = static_cast<int64_t>(blockIdx.x) * nt + t;
    buf[t] = i < n ? in[i] : 0.0f;
    if (broken != 2) __syncthreads();
    for (unsigned half = nt / 2; half > 0; half /= 2) {
        if (t < half) buf[t] += buf[t + half];
        if (broken != 1) __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = buf[0];
}

// Reverses each block's 64-element slice through a static shared array (64 threads).
__global__ void block_reverse(const float *in, float *out)
{
    NEAT_SHARED_ARRAY(float, tile, 64);
    NEAT_SHARED_ARRAY(float, twice, 64); // a second array: its own storage
    const unsigned t = threadIdx.x;
    tile[t] = in[blockIdx.x * 64 + t];
    twice[t] = 2.0f * tile[t];
    __syncthreads();
    out[blockIdx.x * 64 + t] = tile[63 - t] + 0.0f * twice[63 - t];
}

// Reads a slot of shared memory nobody wrote.
__global__ void read_unwritten(float *out)
{
    NEAT_SHARED_DYNAMIC(float, buf);
    __syncthreads();
    out[threadIdx.x] = buf[threadIdx.x];
}

// mode 0: some threads skip the barrier; 1: threads wait at two different barriers; 2: some
// threads return before it
__global__ void divergent(int mode, int *after)
{
    if (mode == 0) {
        if (threadIdx.x < 5) __syncthreads();
    } else if (mode == 1) {
        if (threadIdx.x % 2) __syncthreads();
        else __syncthreads();
    } else {
        if (threadIdx.x == 3) return;
        __syncthreads();
    }
    after[threadIdx.x] = 1;
}

// A grid-stride kernel (no block cooperation) with a barrier in it.
__global__ void barrier_in_grid_stride(int *p) { __syncthreads(), p[0] = 1; }

// A backend call context for launching directly (default stream, nothing carved).
struct TestCtx : Ctx {
    TestCtx()
    {
        fn = "test_block_emu";
        dry = false;
    }
};

void sum_tests()
{
    // Last thread first, both missing barriers go unseen here: every thread reads only slots of
    // higher threads, which have run already (block_emu.cpp says why the sandbox runs both orders).
    const char *order = std::getenv("NEAT_EMU_FIBER_ORDER");
    const bool reverse = order && std::strcmp(order, "reverse") == 0;
    static const unsigned shapes[][3] = {{32, 1, 1}, {64, 1, 1}, {256, 1, 1}, {1024, 1, 1},
                                         {8, 4, 2}, {16, 16, 1}, {1, 1, 1}};
    const int64_t n = 3000;
    std::vector<float> in(n);
    for (int64_t i = 0; i < n; ++i) in[i] = static_cast<float>((i * 7919) % 101) - 50.0f;
    for (const auto &s : shapes) {
        const dim3 block(s[0], s[1], s[2]);
        const unsigned nt = s[0] * s[1] * s[2];
        const unsigned blocks = static_cast<unsigned>((n + nt - 1) / nt);
        for (int broken = 0; broken <= 2; ++broken) {
            std::vector<float> out(blocks, NAN);
            TestCtx ctx;
            neat_status st = launch_blocks(ctx, "block_sum", block_sum, dim3(blocks), block,
                                           nt * sizeof(float), in.data(), n, out.data(), broken);
            CHECK(st == NEAT_OK, "block (%u, %u, %u): %s", s[0], s[1], s[2], neat_last_error());
            int wrong = 0;
            for (unsigned b = 0; b < blocks; ++b) {
                double want = 0;
                for (int64_t i = b * int64_t(nt); i < n && i < (b + 1) * int64_t(nt); ++i) want += in[i];
                wrong += !(out[b] == static_cast<float>(want));
            }
            if (broken == 0)
                CHECK(wrong == 0, "block (%u, %u, %u): %d of %u block sums wrong", s[0], s[1], s[2],
                      wrong, blocks);
            else if (nt > 1 && !reverse) // the emulation shows the missing barrier
                CHECK(wrong > 0, "block (%u, %u, %u), barrier %d left out: every sum still right",
                      s[0], s[1], s[2], broken);
        }
    }
}

void static_shared_tests()
{
    std::vector<float> in(64 * 5), out(64 * 5, NAN);
    for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<float>(i);
    TestCtx ctx;
    CHECK(launch_blocks(ctx, "block_reverse", block_reverse, dim3(5), dim3(64), 0, in.data(),
                        out.data()) == NEAT_OK,
          "block_reverse: %s", neat_last_error());
    int wrong = 0;
    for (int b = 0; b < 5; ++b)
        for (int t = 0; t < 64; ++t) wrong += out[b * 64 + t] != in[b * 64 + 63 - t];
    CHECK(wrong == 0, "static shared arrays: %d of 320 elements wrong", wrong);

    std::vector<float> got(32, 0.0f);
    CHECK(launch_blocks(ctx, "read_unwritten", read_unwritten, dim3(2), dim3(32), 32 * sizeof(float),
                        got.data()) == NEAT_OK,
          "read_unwritten: %s", neat_last_error());
    int nans = 0;
    for (float v : got) nans += std::isnan(v);
    CHECK(nans == 32, "unwritten shared memory read as a number in %d of 32 threads", 32 - nans);
}

void divergence_tests()
{
    neat_emu_set_quiet(1);
    for (int mode = 0; mode <= 2; ++mode) {
        neat_emu_reset_violations();
        std::vector<int> after(64, 0);
        TestCtx ctx;
        neat_status st = launch_blocks(ctx, "divergent", divergent, dim3(3), dim3(64), 0, mode,
                                       after.data());
        CHECK(st == NEAT_ERR_BACKEND && std::strstr(neat_last_error(), "unspecified launch failure"),
              "divergent barrier (mode %d): status %d: %s", mode, (int)st, neat_last_error());
        CHECK(neat_emu_violations() == 1 &&
                  std::strstr(neat_emu_last_violation(), "divergent __syncthreads") &&
                  std::strstr(neat_emu_last_violation(), "test_block_emu.cpp:"),
              "divergent barrier (mode %d): %d violations, last: %s", mode, neat_emu_violations(),
              neat_emu_last_violation());
        CHECK(cudaGetLastError() == cudaSuccess, "the launch error was not taken back");
    }
    // beyond 48 KiB of dynamic shared memory the device refuses the launch
    neat_emu_reset_violations();
    std::vector<float> out(4);
    {
        TestCtx ctx;
        neat_status st = launch_blocks(ctx, "read_unwritten", read_unwritten, dim3(1), dim3(4),
                                       kMaxSharedBytes + 4, out.data());
        CHECK(st == NEAT_ERR_INTERNAL && std::strstr(neat_last_error(), "shared memory"),
              "%zu bytes of shared memory: status %d: %s", kMaxSharedBytes + 4, (int)st,
              neat_last_error());
    }
    cudaGetLastError();
    neat_emu::run_blocks("read_unwritten", dim3(1), dim3(4), neat_emu::kSharedLimit + 16, nullptr,
                         [&] { read_unwritten(out.data()); });
    CHECK(cudaGetLastError() == cudaErrorInvalidValue && neat_emu_violations() == 1,
          "the emulation took a block with %zu bytes of shared memory", neat_emu::kSharedLimit + 16);
    neat_emu_reset_violations();
    neat_emu_set_quiet(0);
}

// A barrier in a grid-stride launch cannot be emulated: the program stops with a message.
void grid_stride_barrier_test()
{
    std::fflush(nullptr);
    const pid_t pid = fork();
    if (pid == 0) {
        neat_emu_set_quiet(1);
        int v = 0;
        TestCtx ctx;
        (void)launch(ctx, "barrier_in_grid_stride", barrier_in_grid_stride, 1, &v);
        _exit(0); // not reached
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT,
          "a barrier in a grid-stride kernel did not stop the program (status %d)", status);
}

} // namespace

int main()
{
    sum_tests();
    static_shared_tests();
    divergence_tests();
    grid_stride_barrier_test();
    return emu_test_exit("test_block_emu");
}
