/*
 * emu_log.h - what the host emulation of the CUDA backend lets a test observe (C and C++).
 *
 * Every call that would reach the GPU (kernel launch, cuBLAS GEMM, async copy or set) and every
 * call that would block the host is appended to a per-thread log with the stream it was issued
 * on, so a test can assert where the work went and that nothing synchronised. Misuse of the CUDA
 * runtime or of cuBLAS (an argument cuBLAS documents as invalid, a handle on the wrong device, a
 * GEMM without the caller's workspace, ...) is a violation: the call fails with an error status,
 * the message goes to stderr, and it is counted here, so a backend that ignores a status still
 * fails its test.
 */
#ifndef NEAT_EMU_LOG_H
#define NEAT_EMU_LOG_H

#include <stddef.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum neat_emu_kind {
    NEAT_EMU_KERNEL = 0, /* a kernel launch */
    NEAT_EMU_BLAS = 1,   /* a cuBLAS routine that runs on the handle's stream */
    NEAT_EMU_COPY = 2,   /* an async memcpy / memset */
    NEAT_EMU_SYNC = 3    /* anything that blocks the host or the device */
} neat_emu_kind;

typedef struct neat_emu_event {
    neat_emu_kind kind;
    const char *name;    /* kernel or API name (static storage) */
    cudaStream_t stream; /* NULL: the default stream */
    int device;          /* the current device when it was issued */
    /* cuBLAS GEMMs only (0 for other events): */
    int compute_type;    /* the cublasComputeType_t it was called with */
    int math_mode;       /* the handle's cublasMath_t at the call */
    int aligned16;       /* 1: A, B and C start on 16 bytes and their leading dimensions are
                            multiples of 16 bytes (what cuBLAS's tensor-core kernels want) */
} neat_emu_event;

void neat_emu_log_clear(void);
size_t neat_emu_log_size(void);
/* Event i (0 <= i < size) of this thread's log. */
neat_emu_event neat_emu_log_at(size_t i);

/* Violations recorded on any thread since the last reset, and the latest message. */
int neat_emu_violations(void);
const char *neat_emu_last_violation(void);
void neat_emu_reset_violations(void);
/* Stops printing violations to stderr (for tests that provoke them on purpose). */
void neat_emu_set_quiet(int quiet);

/* Records a violation (printf-style); used by the runtime emulation and the cuBLAS double. */
void neat_emu_violation(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;
/* Appends to this thread's log. */
void neat_emu_log_push(neat_emu_kind kind, const char *name, cudaStream_t stream);
/* Appends a cuBLAS GEMM (kind NEAT_EMU_BLAS) with what it was called with. */
void neat_emu_log_push_gemm(const char *name, cudaStream_t stream, int compute_type, int math_mode,
                            int aligned16);

/* cuBLAS handles created and not destroyed, on every thread and device. */
int neat_emu_blas_live_handles(void);

/* 1 if stream may be used on the current device (NULL, the two special handles, or a stream
 * created by cudaStreamCreate on this device); otherwise records a violation naming `who`. */
int neat_emu_stream_ok(const char *who, cudaStream_t stream);
/* Number of emulated devices (NEAT_EMU_DEVICES in the environment, default 2). */
int neat_emu_device_count(void);
/* Compute capability of a device as 10 * major + minor: NEAT_EMU_CC in the environment, a comma
 * list per device (the last entry repeats), default "80,90": cuda:0 an A100, cuda:1 an H100. */
int neat_emu_compute_capability(int device);

#ifdef __cplusplus
}
#endif

#endif /* NEAT_EMU_LOG_H */
