/*
 * neat.h - the public C ABI of torch-neat.
 *
 * NEAT adapts a frozen linear layer y = x W^T + b with a small network fed by W itself
 * (docs/design.md §1):
 *
 *   Z_0 = A W, G_0 = act(Z_0)                                   (r, d_in)
 *   encoders i = 1..k:  push G;  G = act(H_i G)
 *   decoders j = 1..k:  G = act(H_{k+j} G) + pop()
 *   U = x G^T                                                    (N, r)
 *   linear:  y = x W^T + b + s U B^T                             (N, d_out)
 *   adapter: y = s U B^T
 *
 * Conventions of this header:
 *   - every symbol is prefixed neat_ / NEAT_; the header is C11 and C++-safe;
 *   - tensors cross as non-owning views (neat_tensor); strides are in elements;
 *   - outputs come first in argument lists; the caller owns every buffer;
 *   - scratch memory is "ask the size, caller allocates" (the *_workspace_size functions); the
 *     size depends on the shapes and on exec->num_threads, so pass the same exec to the size
 *     query and to the call; results never depend on the thread count (bit for bit), unless
 *     exec->gemm hands the large products to a host BLAS that does not promise that itself;
 *   - the workspace passed to a compute call, all of [workspace, workspace + workspace_bytes)
 *     (the library may use any of it, not only the size the query reported), must not share a
 *     byte with any input, dy or output of that call (NEAT_ERR_INVALID_ARGUMENT, naming the
 *     tensor); outputs must not share memory with inputs or each other either;
 *   - limits (NEAT_ERR_INVALID_ARGUMENT beyond them): every matrix a call reads, writes or
 *     forms, x (N, d_in), weight (d_out, d_in), y (N, d_out), A (r, d_out), G (r, d_in),
 *     U (N, r) and (r, r), has at most 2^40 elements (so r <= 2^20); a view's bytes from its
 *     data pointer to the end of its last element fit in PTRDIFF_MAX and do not wrap the
 *     address space; exec->num_threads <= 65536. They keep every size and offset the library
 *     computes far from integer overflow;
 *   - every function returns a neat_status; neat_last_error() holds a thread-local message
 *     naming the call and the offending argument (by the names in exec->names, if given);
 *   - CPU parallelism goes through an optional parallel-for hook in neat_exec, CUDA work
 *     runs on the stream in neat_exec and never synchronises the host.
 */
#ifndef NEAT_H
#define NEAT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#  if defined(NEAT_BUILDING)
#    define NEAT_API __declspec(dllexport)
#  else
#    define NEAT_API
#  endif
#else
#  define NEAT_API __attribute__((visibility("default")))
#endif

/* Bumped whenever a struct layout or a function signature below changes. */
#define NEAT_ABI_VERSION 5 /* 2: neat_exec.allow_tf32; 3: neat_exec.names (neat_names);
                             4: neat_exec.gemm, gemm_user (a host GEMM provider);
                             5: quantized frozen weights (neat_qweight, the neat_q* calls),
                                NEAT_ARG_QWEIGHT */

/* Most dims a view may have; the kernels themselves read rank 1 and 2 views. */
#define NEAT_MAX_DIMS 8

/* Most hidden r-by-r layers (depth 10 = A + 8 hidden + B). */
#define NEAT_MAX_HIDDEN 8

typedef enum neat_status {
    NEAT_OK = 0,
    NEAT_ERR_INVALID_ARGUMENT = 1, /* wrong shape, dtype, device, layout, count */
    NEAT_ERR_UNSUPPORTED = 2,      /* valid request this build cannot serve (e.g. CUDA absent) */
    NEAT_ERR_WORKSPACE = 3,        /* workspace missing or smaller than the size query said */
    NEAT_ERR_BACKEND = 4,          /* CUDA / cuBLAS reported an error */
    NEAT_ERR_INTERNAL = 5
} neat_status;

/*
 * Every tensor of a call has weight's dtype, except that on CUDA with a bfloat16 or float16
 * weight, A, B, hidden (their gradients, and G) may be float32: mixed precision, computed like
 * torch.autocast. A, B and hidden are rounded to weight's dtype before any product, products
 * accumulate in float32, and the r-by-r hidden stack runs in float32, so the results are exactly
 * those of the same call with A, B, hidden rounded to weight's dtype beforehand, except that
 * dA, dB, dhidden and a float32 G are written in float32 instead of rounded.
 */
typedef enum neat_dtype {
    NEAT_FLOAT32 = 0,
    NEAT_FLOAT64 = 1,
    NEAT_BFLOAT16 = 2,
    NEAT_FLOAT16 = 3
} neat_dtype;

typedef enum neat_device_type {
    NEAT_DEVICE_CPU = 0,
    NEAT_DEVICE_CUDA = 1
} neat_device_type;

typedef struct neat_device {
    neat_device_type type;
    int32_t index; /* CUDA ordinal; 0 on CPU */
} neat_device;

/*
 * A non-owning strided view. data may be NULL only when the view has zero elements. Every view
 * (weight included) needs 0..NEAT_MAX_DIMS dims (each entry point fixes the rank), sizes and
 * strides >= 0, and a byte extent that fits in PTRDIFF_MAX (see the limits above). Inputs may
 * repeat elements (stride 0 broadcasts, overlapping strides); an output may not: sorted by
 * stride, each dim of size > 1 must have a stride larger than the span of the dims with smaller
 * strides (every fresh or sliced PyTorch tensor satisfies this).
 */
typedef struct neat_tensor {
    void *data;
    neat_dtype dtype;
    int32_t ndim;
    int64_t sizes[NEAT_MAX_DIMS];
    int64_t strides[NEAT_MAX_DIMS]; /* in elements, >= 0; for outputs, no two elements alias */
    neat_device device;
} neat_tensor;

typedef enum neat_activation {
    NEAT_ACT_RELU = 0,
    NEAT_ACT_SIN = 1,
    NEAT_ACT_GELU = 2,      /* exact: 0.5 z (1 + erf(z / sqrt 2)) */
    NEAT_ACT_GELU_TANH = 3, /* tanh approximation (gelu_new, gelu_pytorch_tanh) */
    NEAT_ACT_SILU = 4,
    NEAT_ACT_TANH = 5,
    NEAT_ACT_IDENTITY = 6,
    NEAT_ACT_SIN2PI = 7 /* sin(2 pi z), the periodic activation of the paper's theory */
} neat_activation;
/* The highest neat_activation value (values run 0..NEAT_ACT_LAST; new ones are appended). */
#define NEAT_ACT_LAST NEAT_ACT_SIN2PI

/* Everything the forward pass reads. The same struct feeds the backward pass. */
typedef struct neat_args {
    const neat_tensor *x;      /* (N, d_in); N may be 0 */
    const neat_tensor *weight; /* (d_out, d_in) */
    const neat_tensor *bias;   /* (d_out) or NULL; must be NULL for the adapter entry points */
    const neat_tensor *A;      /* (r, d_out) */
    const neat_tensor *B;      /* (d_out, r) */
    const neat_tensor *hidden; /* array of num_hidden (r, r) views: encoders then decoders */
    int32_t num_hidden;        /* even, 0..NEAT_MAX_HIDDEN */
    neat_activation activation;
    double scale;
} neat_args;

/*
 * Gradient outputs. A NULL pointer (or, for dhidden[i], a view whose data is NULL) means "not
 * requested": that gradient is neither computed nor written. Requested outputs are overwritten,
 * never accumulated into, and must not share memory with any input or other output.
 */
typedef struct neat_grads {
    neat_tensor *dx;      /* (N, d_in) */
    neat_tensor *dweight; /* (d_out, d_in) */
    neat_tensor *dbias;   /* (d_out); linear only */
    neat_tensor *dA;      /* (r, d_out) */
    neat_tensor *dB;      /* (d_out, r) */
    neat_tensor *dhidden; /* array of num_hidden (r, r) views, or NULL */
} neat_grads;

/* Body of a parallel loop: process the iterations [begin, end). */
typedef void (*neat_parallel_body)(int64_t begin, int64_t end, void *ctx);

/*
 * A host-provided parallel for: run body over [begin, end) split into chunks of at least
 * grain iterations, possibly concurrently, and return when every chunk is done.
 */
typedef void (*neat_parallel_for_fn)(int64_t begin, int64_t end, int64_t grain,
                                     neat_parallel_body body, void *ctx, void *user);

/*
 * The arguments of the entry points below, as error messages name them. A caller whose users know
 * the call and its arguments by other names (a binding: the op "neat::linear" takes `input`, not
 * x) passes those in neat_exec.names, so its messages need no rewriting. Values run
 * 0..NEAT_ARG_LAST; new ones are appended.
 */
typedef enum neat_arg {
    NEAT_ARG_X = 0,
    NEAT_ARG_WEIGHT = 1,
    NEAT_ARG_BIAS = 2,
    NEAT_ARG_A = 3,
    NEAT_ARG_G = 4,
    NEAT_ARG_B = 5,
    NEAT_ARG_HIDDEN = 6, /* the list; element i is named "<name>[i]" */
    NEAT_ARG_NUM_HIDDEN = 7,
    NEAT_ARG_ACTIVATION = 8,
    NEAT_ARG_SCALE = 9,
    NEAT_ARG_DY = 10,
    NEAT_ARG_Y = 11,
    NEAT_ARG_DX = 12,
    NEAT_ARG_DWEIGHT = 13,
    NEAT_ARG_DBIAS = 14,
    NEAT_ARG_DA = 15,
    NEAT_ARG_DB = 16,
    NEAT_ARG_DHIDDEN = 17, /* the list, as hidden */
    NEAT_ARG_QWEIGHT = 18  /* ABI 5; its fields are named "<name>.<field>" */
} neat_arg;
#define NEAT_ARG_LAST NEAT_ARG_QWEIGHT

/* Room in neat_names.arg for arguments appended later, so that adding one keeps the layout. */
#define NEAT_NAMES_CAPACITY 32

/* Names for error messages; every NULL entry (or neat_exec.names == NULL) keeps the C name. */
typedef struct neat_names {
    const char *call;                     /* the message prefix, e.g. "neat::linear", instead
                                             of the C function's name */
    const char *arg[NEAT_NAMES_CAPACITY]; /* indexed by neat_arg, e.g. arg[NEAT_ARG_X] =
                                             "input"; entries past NEAT_ARG_LAST must be NULL */
} neat_names;

/*
 * A host-provided GEMM (a framework's BLAS), cblas-like on strided views, strides in elements:
 *
 *   C = alpha * A B + beta * C,   A: (M, K) at A[i*rsa + k*csa], B: (K, N) at B[k*rsb + j*csb],
 *                                 C: (M, N) at C[i*rsc + j*csc]
 *
 * dtype is NEAT_FLOAT32 or NEAT_FLOAT64. When beta == 0, C is never read (it may hold NaN). A and
 * B may repeat elements (stride 0); C's elements are distinct and share no byte with A or B.
 * Return 0 when C holds the result, nonzero to decline (any shape, strides or scalars the
 * provider does not take; also after a failure of its own): the library then computes the same
 * product with its own GEMM, so declining is always safe. The library calls it only on the CPU,
 * only from the thread that made the call (never from inside parallel_for), and only for the
 * large products of a call (every one of M, N, K above 16: x W^T, dy W, dy^T x); the rank-r
 * terms always run on the library's own code beside it. Results then depend on the provider:
 * bit-identity across thread counts holds only if the provider's own results do.
 */
typedef int (*neat_gemm_fn)(neat_dtype dtype, int64_t M, int64_t N, int64_t K, double alpha,
                            const void *A, int64_t rsa, int64_t csa, const void *B, int64_t rsb,
                            int64_t csb, double beta, void *C, int64_t rsc, int64_t csc,
                            void *user);

/* How to run a call. Zero-initialised means: sequential CPU, default CUDA stream, strict
 * float32, the C names in messages, the library's own GEMM. */
typedef struct neat_exec {
    neat_parallel_for_fn parallel_for; /* NULL: run sequentially */
    void *parallel_user;               /* passed back to parallel_for */
    int32_t num_threads;               /* most chunks parallel_for runs at once; <= 0 means 1;
                                          at most 65536 */
    void *stream;                      /* cudaStream_t for CUDA calls; ignored on CPU */
    int32_t allow_tf32;                /* CUDA float32 products: 0 strict float32 (default),
                                          1 inputs rounded to TF32 (10-bit mantissa) as
                                          torch.backends.cuda.matmul.allow_tf32 permits */
    const neat_names *names;           /* NULL: messages use the C names */
    neat_gemm_fn gemm;                 /* NULL: the library's own GEMM for every product */
    void *gemm_user;                   /* passed back to gemm */
} neat_exec;

/* ---- library information and errors ---- */

NEAT_API int neat_abi_version(void);
NEAT_API const char *neat_status_string(neat_status status);
/* Message of the last failing call on this thread ("" if none). */
NEAT_API const char *neat_last_error(void);
NEAT_API const char *neat_activation_name(neat_activation act);
/* Parses "relu", "sin", "gelu", "gelu_tanh", "silu", "tanh", "identity", "sin2pi". */
NEAT_API neat_status neat_activation_from_name(const char *name, neat_activation *out);
/* 1 when the library was built with the CUDA backend. */
NEAT_API int neat_has_cuda(void);

/* Builds a view of a contiguous row-major array (strides derived from sizes). */
NEAT_API neat_tensor neat_tensor_contiguous(void *data, neat_dtype dtype, int32_t ndim,
                                            const int64_t *sizes, neat_device device);

/* ---- the full layer: y = x W^T + b + s U B^T ---- */

NEAT_API neat_status neat_linear_forward_workspace_size(const neat_args *args,
                                                        const neat_exec *exec, size_t *bytes);
NEAT_API neat_status neat_linear_forward(neat_tensor *y, const neat_args *args,
                                         void *workspace, size_t workspace_bytes,
                                         const neat_exec *exec);

NEAT_API neat_status neat_linear_backward_workspace_size(const neat_grads *grads,
                                                         const neat_args *args,
                                                         const neat_exec *exec, size_t *bytes);
NEAT_API neat_status neat_linear_backward(const neat_grads *grads, const neat_tensor *dy,
                                          const neat_args *args, void *workspace,
                                          size_t workspace_bytes, const neat_exec *exec);

/* ---- the adapter term only: y = s U B^T (args->bias must be NULL) ---- */

NEAT_API neat_status neat_adapter_forward_workspace_size(const neat_args *args,
                                                         const neat_exec *exec, size_t *bytes);
NEAT_API neat_status neat_adapter_forward(neat_tensor *y, const neat_args *args,
                                          void *workspace, size_t workspace_bytes,
                                          const neat_exec *exec);

NEAT_API neat_status neat_adapter_backward_workspace_size(const neat_grads *grads,
                                                          const neat_args *args,
                                                          const neat_exec *exec, size_t *bytes);
NEAT_API neat_status neat_adapter_backward(const neat_grads *grads, const neat_tensor *dy,
                                           const neat_args *args, void *workspace,
                                           size_t workspace_bytes, const neat_exec *exec);

/*
 * ---- the adapted weight's low-rank factor ----
 * G = the hidden stack applied to act(A W), (r, d_in), in A's dtype. Used for merging
 * (W + s B G) and for caching G in inference. Never forms the d_out x d_in update. Reads only
 * args->weight, A, hidden, num_hidden and activation (x and B may be NULL).
 */
NEAT_API neat_status neat_compute_g_workspace_size(const neat_args *args, const neat_exec *exec,
                                                   size_t *bytes);
NEAT_API neat_status neat_compute_g(neat_tensor *G, const neat_args *args, void *workspace,
                                    size_t workspace_bytes, const neat_exec *exec);

/*
 * ---- inference with G kept: y = x W^T + b + s (x G^T) B^T ----
 * While the adapter is frozen, G (from neat_compute_g) can be kept and this call skips the pass
 * over W that forms it. The rank-r term rides on the main product as in neat_linear_forward, so
 * x and y are each passed once. Any low-rank pair fits (a LoRA's lora_A as G, lora_B as B).
 * Forward only. G and B follow A's dtype rule; bias may be NULL.
 */
typedef struct neat_lowrank_args {
    const neat_tensor *x;      /* (N, d_in); N may be 0 */
    const neat_tensor *weight; /* (d_out, d_in) */
    const neat_tensor *bias;   /* (d_out) or NULL */
    const neat_tensor *G;      /* (r, d_in) */
    const neat_tensor *B;      /* (d_out, r) */
    double scale;
} neat_lowrank_args;

NEAT_API neat_status neat_lowrank_forward_workspace_size(const neat_lowrank_args *args,
                                                         const neat_exec *exec, size_t *bytes);
NEAT_API neat_status neat_lowrank_forward(neat_tensor *y, const neat_lowrank_args *args,
                                          void *workspace, size_t workspace_bytes,
                                          const neat_exec *exec);

/*
 * ---- quantized frozen weights (ABI 5) ----
 *
 * The same calls with W given in a bitsandbytes quantized format instead of as a float view.
 * W is never formed: every product that needs it (x W^T, dy W, A W, dZ_0 W^T) turns one panel of
 * W at a time back into floats in the workspace, so the size queries count one panel (and one
 * per G-stack group), never anything the size of W (docs/design.md §5.2). Each neat_q* call
 * takes the arguments of its float twin plus qweight; args->weight (or args->weight of
 * neat_lowrank_args) must be NULL. A quantized weight is frozen: grads->dweight must be NULL.
 * On CPU and CUDA (bitsandbytes' CUDA layers hold the same arrays; on CUDA every array lives on
 * qweight->device, the call's device, and a library built without CUDA gives
 * NEAT_ERR_UNSUPPORTED as for any CUDA call). The dequantized values are float32 products,
 * exactly as bitsandbytes forms them, widened to double in float64 calls and rounded once to a
 * half compute dtype (CUDA) as bitsandbytes' dequantize rounds to its output dtype.
 */
typedef enum neat_qformat {
    /* 0 is no format, so that a zeroed descriptor fails on its format */
    NEAT_QFMT_NF4 = 1,     /* bitsandbytes Linear4bit, quant_type "nf4" */
    NEAT_QFMT_FP4 = 2,     /* quant_type "fp4": the NF4 layout with another code table */
    NEAT_QFMT_INT8_ROW = 3 /* Linear8bitLt (LLM.int8) with has_fp16_weights=False */
} neat_qformat;

/*
 * A quantized W (d_out, d_in). Unused fields must be zero / NULL (a set field that the format
 * does not read is refused, so that a half-filled descriptor is never misread).
 *
 * NEAT_QFMT_NF4, NEAT_QFMT_FP4: W flattened row-major, element e = i * d_in + k has a 4-bit code,
 *   two per byte of data, the high nibble first (element 2j is data[j] >> 4, element 2j + 1 is
 *   data[j] & 15; an odd d_out * d_in leaves the last low nibble unused), and
 *     W[e] = code[c_e] * absmax[e / blocksize]                   (float32 multiply)
 *   over nblocks = ceil(d_out * d_in / blocksize) blocks (the last one may be short). With
 *   nested = 1 (bitsandbytes' compress_statistics=True) absmax is itself quantized:
 *     absmax[j] = code2[absmax_q[j]] * absmax2[j / blocksize2] + offset   (float32)
 * NEAT_QFMT_INT8_ROW: data is CB, int8, d_out rows of d_in at row_stride elements apart, and
 *     W[i, k] = (CB[i, k] * scb[i]) * 7.874015718698502e-3f
 *   (float32; the constant is 1/127 rounded to float32, the factor bitsandbytes multiplies by).
 */
typedef struct neat_qweight {
    neat_qformat format;
    neat_dtype dtype;   /* the compute dtype (what W dequantizes to): every tensor of the call
                           has it; float32 or float64 on CPU, also bfloat16 and
                           float16 on CUDA (where A, B, hidden may then be float32) */
    neat_device device; /* where every array below lives */
    int64_t d_out, d_in;
    const void *data;   /* 4-bit: ceil(d_out * d_in / 2) bytes; int8: CB */
    /* NEAT_QFMT_NF4 / NEAT_QFMT_FP4 */
    int64_t blocksize;  /* a power of two >= 16 (bitsandbytes: 64 .. 4096) */
    const float *code;  /* 16 values: the NF4 or FP4 table (the caller's, e.g. quant_state.code) */
    const float *absmax;       /* nblocks values; NULL when nested */
    int32_t nested;            /* 0 or 1 */
    const uint8_t *absmax_q;   /* nested: nblocks codes */
    const float *code2;        /* nested: 256 values */
    const float *absmax2;      /* nested: ceil(nblocks / blocksize2) values */
    int64_t blocksize2;        /* nested: a power of two >= 16 (bitsandbytes: 256) */
    float offset;              /* nested: finite */
    /* NEAT_QFMT_INT8_ROW */
    int64_t row_stride;        /* >= d_in */
    const float *scb;          /* d_out values */
} neat_qweight;

NEAT_API neat_status neat_qlinear_forward_workspace_size(const neat_args *args,
                                                         const neat_qweight *qweight,
                                                         const neat_exec *exec, size_t *bytes);
NEAT_API neat_status neat_qlinear_forward(neat_tensor *y, const neat_args *args,
                                          const neat_qweight *qweight, void *workspace,
                                          size_t workspace_bytes, const neat_exec *exec);
NEAT_API neat_status neat_qlinear_backward_workspace_size(const neat_grads *grads,
                                                          const neat_args *args,
                                                          const neat_qweight *qweight,
                                                          const neat_exec *exec, size_t *bytes);
NEAT_API neat_status neat_qlinear_backward(const neat_grads *grads, const neat_tensor *dy,
                                           const neat_args *args, const neat_qweight *qweight,
                                           void *workspace, size_t workspace_bytes,
                                           const neat_exec *exec);
NEAT_API neat_status neat_qadapter_forward_workspace_size(const neat_args *args,
                                                          const neat_qweight *qweight,
                                                          const neat_exec *exec, size_t *bytes);
NEAT_API neat_status neat_qadapter_forward(neat_tensor *y, const neat_args *args,
                                           const neat_qweight *qweight, void *workspace,
                                           size_t workspace_bytes, const neat_exec *exec);
NEAT_API neat_status neat_qadapter_backward_workspace_size(const neat_grads *grads,
                                                           const neat_args *args,
                                                           const neat_qweight *qweight,
                                                           const neat_exec *exec,
                                                           size_t *bytes);
NEAT_API neat_status neat_qadapter_backward(const neat_grads *grads, const neat_tensor *dy,
                                            const neat_args *args, const neat_qweight *qweight,
                                            void *workspace, size_t workspace_bytes,
                                            const neat_exec *exec);
NEAT_API neat_status neat_qcompute_g_workspace_size(const neat_args *args,
                                                    const neat_qweight *qweight,
                                                    const neat_exec *exec, size_t *bytes);
NEAT_API neat_status neat_qcompute_g(neat_tensor *G, const neat_args *args,
                                     const neat_qweight *qweight, void *workspace,
                                     size_t workspace_bytes, const neat_exec *exec);
NEAT_API neat_status neat_qlowrank_forward_workspace_size(const neat_lowrank_args *args,
                                                          const neat_qweight *qweight,
                                                          const neat_exec *exec, size_t *bytes);
NEAT_API neat_status neat_qlowrank_forward(neat_tensor *y, const neat_lowrank_args *args,
                                           const neat_qweight *qweight, void *workspace,
                                           size_t workspace_bytes, const neat_exec *exec);

#ifdef __cplusplus
}
#endif

#endif /* NEAT_H */
