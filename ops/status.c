/*
 * status.c - library information, status strings, the thread-local error message, activation
 * names and the contiguous-view helper.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "backend.h"

#define NEAT_ERROR_CAPACITY 512

/* The only mutable global: one message per thread, so concurrent calls never mix messages. */
static _Thread_local char neat_error_message[NEAT_ERROR_CAPACITY];

int neat_abi_version(void)
{
    return NEAT_ABI_VERSION;
}

const char *neat_status_string(neat_status status)
{
    switch (status) {
    case NEAT_OK: return "ok";
    case NEAT_ERR_INVALID_ARGUMENT: return "invalid argument";
    case NEAT_ERR_UNSUPPORTED: return "unsupported";
    case NEAT_ERR_WORKSPACE: return "workspace too small";
    case NEAT_ERR_BACKEND: return "backend error";
    case NEAT_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

const char *neat_last_error(void)
{
    return neat_error_message;
}

neat_status neat_set_error(neat_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(neat_error_message, sizeof neat_error_message, fmt, ap);
    va_end(ap);
    return status;
}

static const char *const neat_activation_names[] = {
    [NEAT_ACT_RELU] = "relu",         [NEAT_ACT_SIN] = "sin",   [NEAT_ACT_GELU] = "gelu",
    [NEAT_ACT_GELU_TANH] = "gelu_tanh", [NEAT_ACT_SILU] = "silu", [NEAT_ACT_TANH] = "tanh",
    [NEAT_ACT_IDENTITY] = "identity", [NEAT_ACT_SIN2PI] = "sin2pi",
};

#define NEAT_NUM_ACTIVATIONS ((int)(sizeof neat_activation_names / sizeof neat_activation_names[0]))
_Static_assert(NEAT_NUM_ACTIVATIONS == NEAT_ACT_LAST + 1, "a neat_activation has no name");

const char *neat_activation_name(neat_activation act)
{
    if ((int)act < 0 || (int)act >= NEAT_NUM_ACTIVATIONS)
        return "unknown";
    return neat_activation_names[act];
}

neat_status neat_activation_from_name(const char *name, neat_activation *out)
{
    if (!name || !out)
        return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                              "neat_activation_from_name: name and out must not be NULL");
    for (int i = 0; i < NEAT_NUM_ACTIVATIONS; i++) {
        if (strcmp(name, neat_activation_names[i]) == 0) {
            *out = (neat_activation)i;
            return NEAT_OK;
        }
    }
    return neat_set_error(NEAT_ERR_INVALID_ARGUMENT,
                          "neat_activation_from_name: unknown activation \"%.64s\"; expected one "
                          "of relu, sin, gelu, gelu_tanh, silu, tanh, identity, sin2pi",
                          name);
}

int neat_has_cuda(void)
{
#ifdef NEAT_WITH_CUDA
    return 1;
#else
    return 0;
#endif
}

neat_tensor neat_tensor_contiguous(void *data, neat_dtype dtype, int32_t ndim,
                                   const int64_t *sizes, neat_device device)
{
    neat_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dtype;
    t.device = device;
    if (ndim < 0)
        ndim = 0;
    if (ndim > NEAT_MAX_DIMS)
        ndim = NEAT_MAX_DIMS;
    t.ndim = ndim;
    int64_t stride = 1;
    for (int32_t i = ndim - 1; i >= 0; i--) {
        t.sizes[i] = sizes[i];
        t.strides[i] = stride;
        stride *= sizes[i] > 1 ? sizes[i] : 1;
    }
    return t;
}
