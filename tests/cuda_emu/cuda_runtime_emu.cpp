// cuda_runtime_emu.cpp - the CUDA runtime calls of the backend, on the host (test only).
//
// Device memory is host memory, so copies and sets are memcpy / memset. What matters for the
// tests is the bookkeeping around them: the per-thread current device and last error, which
// streams exist and on which device, and a log of where every call was issued.
#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "cuda_emu.h"

// The runtime's opaque stream type, given a body here: the device it belongs to.
struct CUstream_st {
    int device;
};

namespace {

thread_local int t_device = 0;
thread_local cudaError_t t_last_error = cudaSuccess;
thread_local std::vector<neat_emu_event> t_log;

std::mutex g_mutex; // guards the two below
std::set<cudaStream_t> g_streams;
std::string g_last_violation;
std::atomic<int> g_violations{0};
std::atomic<int> g_quiet{0};

bool special_stream(cudaStream_t s)
{
    return s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread;
}

cudaError_t fail(cudaError_t err)
{
    t_last_error = err;
    return err;
}

} // namespace

extern "C" {

// ---- the test-facing log (emu_log.h) ----------------------------------------------------------

void neat_emu_log_clear(void) { t_log.clear(); }
size_t neat_emu_log_size(void) { return t_log.size(); }
neat_emu_event neat_emu_log_at(size_t i) { return t_log.at(i); }

void neat_emu_log_push(neat_emu_kind kind, const char *name, cudaStream_t stream)
{
    t_log.push_back(neat_emu_event{kind, name, stream, t_device, 0, 0, 0});
}

void neat_emu_log_push_gemm(const char *name, cudaStream_t stream, int compute_type, int math_mode,
                            int aligned16)
{
    t_log.push_back(
        neat_emu_event{NEAT_EMU_BLAS, name, stream, t_device, compute_type, math_mode, aligned16});
}

int neat_emu_violations(void) { return g_violations.load(); }

const char *neat_emu_last_violation(void)
{
    // The string lives until the next violation; tests read it right after the call.
    std::lock_guard<std::mutex> lock(g_mutex);
    return g_last_violation.c_str();
}

void neat_emu_reset_violations(void)
{
    std::lock_guard<std::mutex> lock(g_mutex);
    g_violations = 0;
    g_last_violation.clear();
}

void neat_emu_set_quiet(int quiet) { g_quiet = quiet; }

void neat_emu_violation(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        g_last_violation = buf;
        ++g_violations;
    }
    if (!g_quiet) std::fprintf(stderr, "cuda_emu: VIOLATION: %s\n", buf);
}

int neat_emu_device_count(void)
{
    static const int count = [] {
        const char *env = std::getenv("NEAT_EMU_DEVICES");
        int n = env && *env ? std::atoi(env) : 2;
        return n < 1 ? 1 : n;
    }();
    return count;
}

int neat_emu_compute_capability(int device)
{
    static const std::vector<int> ccs = [] {
        std::vector<int> v;
        const char *env = std::getenv("NEAT_EMU_CC");
        const char *p = env && *env ? env : "80,90";
        while (*p) {
            char *end = nullptr;
            long cc = std::strtol(p, &end, 10);
            if (end == p) break;
            v.push_back(static_cast<int>(cc));
            p = *end == ',' ? end + 1 : end;
        }
        if (v.empty()) v.push_back(80);
        return v;
    }();
    if (device < 0) return 0;
    return ccs[static_cast<size_t>(device) < ccs.size() ? static_cast<size_t>(device) : ccs.size() - 1];
}

int neat_emu_stream_ok(const char *who, cudaStream_t stream)
{
    if (special_stream(stream)) return 1;
    bool known;
    {
        std::lock_guard<std::mutex> lock(g_mutex); // neat_emu_violation takes it too
        known = g_streams.count(stream) != 0;
    }
    if (!known) {
        neat_emu_violation("%s: stream %p was not created by cudaStreamCreate (or was destroyed)",
                           who, static_cast<void *>(stream));
        return 0;
    }
    if (stream->device != t_device) {
        neat_emu_violation("%s: stream %p belongs to device %d but device %d is current", who,
                           static_cast<void *>(stream), stream->device, t_device);
        return 0;
    }
    return 1;
}

// ---- CUDA runtime API ------------------------------------------------------------------------

cudaError_t cudaGetLastError(void)
{
    cudaError_t e = t_last_error;
    t_last_error = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void) { return t_last_error; }

const char *cudaGetErrorName(cudaError_t error)
{
    switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    default: return "cudaErrorUnknown (cuda_emu)";
    }
}

const char *cudaGetErrorString(cudaError_t error)
{
    switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    default: return "unknown error (cuda_emu)";
    }
}

cudaError_t cudaGetDeviceCount(int *count)
{
    if (!count) return fail(cudaErrorInvalidValue);
    *count = neat_emu_device_count();
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int *device)
{
    if (!device) return fail(cudaErrorInvalidValue);
    *device = t_device;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device)
{
    if (device < 0 || device >= neat_emu_device_count()) return fail(cudaErrorInvalidDevice);
    t_device = device;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attr, int device)
{
    if (!value) return fail(cudaErrorInvalidValue);
    if (device < 0 || device >= neat_emu_device_count()) return fail(cudaErrorInvalidDevice);
    const int cc = neat_emu_compute_capability(device);
    switch (attr) {
    case cudaDevAttrComputeCapabilityMajor: *value = cc / 10; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = cc % 10; return cudaSuccess;
    default:
        neat_emu_violation("cudaDeviceGetAttribute: attribute %d is not emulated", (int)attr);
        return fail(cudaErrorInvalidValue);
    }
}

cudaError_t cudaStreamCreate(cudaStream_t *stream)
{
    if (!stream) return fail(cudaErrorInvalidValue);
    cudaStream_t s = new CUstream_st{t_device};
    std::lock_guard<std::mutex> lock(g_mutex);
    g_streams.insert(s);
    *stream = s;
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream)
{
    if (special_stream(stream)) return fail(cudaErrorInvalidResourceHandle);
    std::lock_guard<std::mutex> lock(g_mutex);
    if (!g_streams.erase(stream)) return fail(cudaErrorInvalidResourceHandle);
    delete stream;
    return cudaSuccess;
}

cudaError_t cudaStreamQuery(cudaStream_t stream)
{
    return neat_emu_stream_ok("cudaStreamQuery", stream) ? cudaSuccess
                                                         : fail(cudaErrorInvalidResourceHandle);
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream)
{
    neat_emu_log_push(NEAT_EMU_SYNC, "cudaStreamSynchronize", stream);
    return neat_emu_stream_ok("cudaStreamSynchronize", stream) ? cudaSuccess
                                                               : fail(cudaErrorInvalidResourceHandle);
}

cudaError_t cudaDeviceSynchronize(void)
{
    neat_emu_log_push(NEAT_EMU_SYNC, "cudaDeviceSynchronize", nullptr);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind,
                            cudaStream_t stream)
{
    (void)kind; // one address space: every kind is a plain copy
    neat_emu_log_push(NEAT_EMU_COPY, "cudaMemcpyAsync", stream);
    if (!neat_emu_stream_ok("cudaMemcpyAsync", stream)) return fail(cudaErrorInvalidResourceHandle);
    if (count && (!dst || !src)) return fail(cudaErrorInvalidValue);
    if (count) std::memmove(dst, src, count);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *dst, int value, size_t count, cudaStream_t stream)
{
    neat_emu_log_push(NEAT_EMU_COPY, "cudaMemsetAsync", stream);
    if (!neat_emu_stream_ok("cudaMemsetAsync", stream)) return fail(cudaErrorInvalidResourceHandle);
    if (count && !dst) return fail(cudaErrorInvalidValue);
    if (count) std::memset(dst, value, count);
    return cudaSuccess;
}

// The synchronous forms block the host: logged as such, so a test can forbid them.
cudaError_t cudaMemcpy(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind)
{
    (void)kind;
    neat_emu_log_push(NEAT_EMU_SYNC, "cudaMemcpy", nullptr);
    if (count && (!dst || !src)) return fail(cudaErrorInvalidValue);
    if (count) std::memmove(dst, src, count);
    return cudaSuccess;
}

cudaError_t cudaMemset(void *dst, int value, size_t count)
{
    neat_emu_log_push(NEAT_EMU_SYNC, "cudaMemset", nullptr);
    if (count && !dst) return fail(cudaErrorInvalidValue);
    if (count) std::memset(dst, value, count);
    return cudaSuccess;
}

} // extern "C"

// ---- kernel launches (cuda_emu.h) -------------------------------------------------------------

void neat_emu::fail_launch(cudaError_t err) { fail(err); }

bool neat_emu::launch_begin(const char *kernel, dim3 grid, dim3 block, cudaStream_t stream)
{
    neat_emu_log_push(NEAT_EMU_KERNEL, kernel, stream);
    const unsigned long long threads = 1ull * block.x * block.y * block.z;
    // The limits of every GPU CUDA 13 supports (compute capability 7.5 and newer).
    if (grid.x < 1 || grid.y < 1 || grid.z < 1 || grid.x > 2147483647u || grid.y > 65535 ||
        grid.z > 65535 || block.x < 1 || block.y < 1 || block.z < 1 || block.x > 1024 ||
        block.y > 1024 || block.z > 64 || threads > 1024) {
        neat_emu_violation("launch of %s: invalid configuration grid (%u, %u, %u) block (%u, %u, %u)",
                           kernel, grid.x, grid.y, grid.z, block.x, block.y, block.z);
        fail(cudaErrorInvalidConfiguration);
        return false;
    }
    if (!neat_emu_stream_ok(kernel, stream)) {
        fail(cudaErrorInvalidResourceHandle);
        return false;
    }
    return true;
}
