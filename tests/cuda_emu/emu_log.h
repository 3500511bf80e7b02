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

/* 1 if stream may be used on the current device (NULL, the two special handles, or a stream
 * created by cudaStreamCreate on this device); otherwise records a violation naming `who`. */
int neat_emu_stream_ok(const char *who, cudaStream_t stream);
/* Number of emulated devices (NEAT_EMU_DEVICES in the environment, default 2). */
int neat_emu_device_count(void);

#ifdef __cplusplus
}
#endif

#endif /* NEAT_EMU_LOG_H */
