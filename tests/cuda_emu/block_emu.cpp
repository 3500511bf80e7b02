// block_emu.cpp - block kernels on the host: a block's threads as cooperative fibers (test only).
//
// One host thread runs one block at a time. Every simulated thread of the block is a fiber with a
// stack of its own; the scheduler resumes each runnable fiber in turn, and a fiber
// runs until it calls __syncthreads() (it then waits at the barrier) or returns (it is done).
// When no fiber is runnable, either all are done (the block is finished) or some wait at a
// barrier: if every live thread waits at the same __syncthreads and none has exited, they are all
// released for the next phase; otherwise the barrier is divergent, which the device does not
// define (it may hang): a violation naming the kernel, the block and both sites, the waiting
// threads are released so the block still ends, and the launch fails.
//
// Fibers run in thread order (NEAT_EMU_FIBER_ORDER=reverse in the environment: last thread first).
// Within a phase a fiber runs to its next barrier before the next fiber starts, so a missing
// barrier shows in the results whenever the first thread to run depends on what another thread
// writes in the same phase: it reads a tile slot nobody has written yet (the 0xFF fill, NaN), runs
// ahead and overwrites a slot the others have not read yet, or adds up a tree reduction's partial
// sums before they are complete. This is not a race detector: a race whose outcome does not depend
// on the order goes unseen, and one that only the other order shows needs that order too (the
// kernel sandbox runs both).
//
// The switch: on x86-64 a few instructions of our own (callee-saved registers and the stack
// pointer, as a function call would leave them); elsewhere ucontext's swapcontext. The former
// matters for speed: glibc's swapcontext makes a system call for the signal mask on every switch,
// and ASan's interceptor of it clears the shadow of the whole target stack each time.
//
// AddressSanitizer: every switch is announced with __sanitizer_start_switch_fiber and completed
// with __sanitizer_finish_switch_fiber, so ASan knows which stack is live (no false reports about
// the fiber stacks, and use-after-return fake stacks are kept per fiber).
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

#include "cuda_emu.h"

#if defined(__SANITIZE_ADDRESS__)
#define NEAT_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define NEAT_EMU_ASAN 1
#endif
#endif
#ifdef NEAT_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if defined(__x86_64__)
// neat_emu_switch(save, to): saves the callee-saved registers on the current stack, stores the
// stack pointer in *save, loads `to` as the stack pointer and restores what is saved there.
extern "C" void neat_emu_switch(void **save, void *to);
asm(R"(
    .text
    .p2align 4
    .type neat_emu_switch, @function
neat_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size neat_emu_switch, .-neat_emu_switch
    .section .note.GNU-stack,"",@progbits
    .text
)");
#define NEAT_EMU_OWN_SWITCH 1
#endif

namespace {

// Kernel frames are small, but ASan's redzones and a vsnprintf in a violation message are not.
constexpr size_t kStackBytes = 256 * 1024;

void start_switch(void **fake_save, const void *bottom, size_t size)
{
#ifdef NEAT_EMU_ASAN
    __sanitizer_start_switch_fiber(fake_save, bottom, size);
#else
    (void)fake_save, (void)bottom, (void)size;
#endif
}

void finish_switch(void *fake_save, const void **bottom_old, size_t *size_old)
{
#ifdef NEAT_EMU_ASAN
    __sanitizer_finish_switch_fiber(fake_save, bottom_old, size_old);
#else
    (void)fake_save, (void)bottom_old, (void)size_old;
#endif
}

// A fiber stack: mmap'd with a PROT_NONE guard page below it, so an overflow faults.
struct Stack {
    void *map = nullptr;
    size_t map_bytes = 0;
    void *base = nullptr; // the usable part, above the guard
    size_t bytes = 0;
};

Stack make_stack()
{
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    Stack s;
    s.map_bytes = kStackBytes + page;
    s.map = mmap(nullptr, s.map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (s.map == MAP_FAILED) {
        std::fprintf(stderr, "cuda_emu: mmap of a fiber stack failed\n");
        std::abort();
    }
    mprotect(s.map, page, PROT_NONE);
    s.base = static_cast<char *>(s.map) + page;
    s.bytes = kStackBytes;
    return s;
}

// This host thread's fiber stacks, kept from launch to launch (a block of 1024 threads needs 1024).
struct StackPool {
    std::deque<Stack> stacks; // a deque: fibers keep pointers into it while it grows
    ~StackPool()
    {
        for (Stack &s : stacks) munmap(s.map, s.map_bytes);
    }
    Stack &at(size_t i)
    {
        while (stacks.size() <= i) stacks.push_back(make_stack());
        return stacks[i];
    }
};

thread_local StackPool t_stacks;

enum class State { Ready, AtBarrier, Done };

// Where a switched-out context continues: a saved stack pointer (own switch) or a ucontext.
struct Context {
#ifdef NEAT_EMU_OWN_SWITCH
    void *sp = nullptr;
#else
    ucontext_t uc;
#endif
};

void switch_to(Context *from, Context *to)
{
#ifdef NEAT_EMU_OWN_SWITCH
    neat_emu_switch(&from->sp, to->sp);
#else
    swapcontext(&from->uc, &to->uc);
#endif
}

struct Fiber {
    Context ctx;
    State state = State::Ready;
    uint3 tid{0, 0, 0};
    const char *file = nullptr; // the barrier it waits at
    int line = 0;
    void *fake_stack = nullptr; // ASan's fake stack of this fiber while it is switched out
    const Stack *stack = nullptr;
};

struct SharedArray {
    std::string site;
    size_t offset;
    size_t bytes;
};

struct Block {
    const char *kernel = nullptr;
    void (*entry)(void *) = nullptr;
    void *body = nullptr;
    std::vector<Fiber> fibers;
    Fiber *current = nullptr;
    Context sched;
    void *sched_fake = nullptr;
    const void *sched_bottom = nullptr; // the scheduler's stack, as ASan reports it
    size_t sched_size = 0;
    // shared memory: dynamic first, then the static arrays in the order first reached
    std::vector<unsigned char> shared;
    unsigned char *shared_base = nullptr;
    size_t dynamic_bytes = 0;
    size_t static_bytes = 0;
    std::vector<SharedArray> statics;
    bool failed = false;
    bool reverse = false;
};

thread_local Block *t_block = nullptr;

size_t align16(size_t n) { return (n + 15) / 16 * 16; }

void fiber_main()
{
    Block *b = t_block;
    finish_switch(nullptr, &b->sched_bottom, &b->sched_size);
    Fiber *f = b->current;
    b->entry(b->body);
    f->state = State::Done;
    // This fiber's stack is never resumed again: nullptr lets ASan drop its fake stack.
    start_switch(nullptr, b->sched_bottom, b->sched_size);
    // No local with its address taken here: ASan would poison redzones around it on this stack,
    // and nothing unwinds this frame to clear them for the next fiber on the same stack.
    switch_to(&f->ctx, &b->sched);
    std::abort(); // not reached: nothing resumes a finished fiber
}

void resume(Block *b, Fiber *f)
{
    b->current = f;
    threadIdx = f->tid;
    start_switch(&b->sched_fake, f->stack->base, f->stack->bytes);
    switch_to(&b->sched, &f->ctx);
    finish_switch(b->sched_fake, nullptr, nullptr);
}

const char *short_file(const char *file)
{
    const char *s = std::strrchr(file, '/');
    return s ? s + 1 : file;
}

#ifdef NEAT_EMU_OWN_SWITCH
// The first switch to a fiber "returns" into fiber_main with the stack aligned as after a call.
void prepare_fiber(Fiber *f, const Stack *stack)
{
    f->state = State::Ready;
    f->fake_stack = nullptr;
    f->stack = stack;
    uintptr_t top = (reinterpret_cast<uintptr_t>(stack->base) + stack->bytes) & ~uintptr_t(15);
#ifdef NEAT_EMU_ASAN
    // A stack is reused by the next block's fibers; whatever shadow a finished fiber left near the
    // top (fiber_main's frame never returns) must not flag the new one's first frames.
    __asan_unpoison_memory_region(reinterpret_cast<void *>(top - 4096), 4096);
#endif
    void **sp = reinterpret_cast<void **>(top);
    *--sp = nullptr;                                      // fiber_main's return address: none
    *--sp = reinterpret_cast<void *>(&fiber_main);        // where neat_emu_switch's ret goes
    for (int i = 0; i < 6; ++i) *--sp = nullptr;          // rbp, rbx, r12-r15
    --sp;                                                 // MXCSR and the x87 control word:
    uint32_t mxcsr;                                       // this thread's current ones
    uint16_t fpcw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpcw));
    std::memcpy(sp, &mxcsr, 4);
    std::memcpy(reinterpret_cast<char *>(sp) + 4, &fpcw, 2);
    f->ctx.sp = sp;
}
#else
// A function of its own: getcontext returns twice, and nothing of a caller's loop may live in
// registers across it (-Wclobbered).
__attribute__((noinline)) void prepare_fiber(Fiber *f, const Stack *stack)
{
    f->state = State::Ready;
    f->fake_stack = nullptr;
    f->stack = stack;
    getcontext(&f->ctx.uc);
    f->ctx.uc.uc_stack.ss_sp = stack->base;
    f->ctx.uc.uc_stack.ss_size = stack->bytes;
    f->ctx.uc.uc_link = nullptr;
    makecontext(&f->ctx.uc, fiber_main, 0);
}
#endif

// Runs one block to its end (all fibers done).
void run_block(Block *b)
{
    const size_t n = b->fibers.size();
    for (size_t i = 0; i < n; ++i) prepare_fiber(&b->fibers[i], &t_stacks.at(i));
    for (;;) {
        for (size_t k = 0; k < n; ++k) {
            Fiber &f = b->fibers[b->reverse ? n - 1 - k : k];
            if (f.state == State::Ready) resume(b, &f);
        }
        size_t waiting = 0, done = 0;
        const Fiber *first = nullptr, *other = nullptr;
        for (const Fiber &f : b->fibers) {
            if (f.state == State::Done) {
                ++done;
                continue;
            }
            ++waiting;
            if (!first) first = &f;
            else if (!other && (f.line != first->line || std::strcmp(f.file, first->file) != 0))
                other = &f;
        }
        if (waiting == 0) return;
        if (done > 0 || other) {
            const Fiber *gone = nullptr;
            for (const Fiber &f : b->fibers)
                if (f.state == State::Done && !gone) gone = &f;
            if (other)
                neat_emu_violation(
                    "kernel %s, block (%u, %u, %u): divergent __syncthreads: thread (%u, %u, %u) "
                    "waits at %s:%d, thread (%u, %u, %u) at %s:%d",
                    b->kernel, blockIdx.x, blockIdx.y, blockIdx.z, first->tid.x, first->tid.y,
                    first->tid.z, short_file(first->file), first->line, other->tid.x, other->tid.y,
                    other->tid.z, short_file(other->file), other->line);
            else
                neat_emu_violation(
                    "kernel %s, block (%u, %u, %u): divergent __syncthreads: %zu of %zu threads "
                    "wait at %s:%d, but thread (%u, %u, %u) has exited without reaching it",
                    b->kernel, blockIdx.x, blockIdx.y, blockIdx.z, waiting, n,
                    short_file(first->file), first->line, gone->tid.x, gone->tid.y, gone->tid.z);
            b->failed = true;
        }
        for (Fiber &f : b->fibers)
            if (f.state == State::AtBarrier) f.state = State::Ready;
    }
}

} // namespace

void neat_emu::run_blocks_impl(const char *kernel, dim3 grid, dim3 block, size_t dynamic_shared,
                               cudaStream_t stream, void (*entry)(void *), void *body)
{
    if (!launch_begin(kernel, grid, block, stream)) return;
    if (dynamic_shared > kSharedLimit) {
        neat_emu_violation("launch of %s: %zu bytes of dynamic shared memory, more than the %zu a "
                           "block gets without cudaFuncSetAttribute",
                           kernel, dynamic_shared, kSharedLimit);
        fail_launch(cudaErrorInvalidValue);
        return;
    }
    if (t_block) { // a kernel body never launches (no dynamic parallelism here)
        neat_emu_violation("launch of %s from inside kernel %s", kernel, t_block->kernel);
        fail_launch(cudaErrorLaunchFailure);
        return;
    }
    Block b;
    b.kernel = kernel;
    b.entry = entry;
    b.body = body;
    b.dynamic_bytes = align16(dynamic_shared);
    const char *order = std::getenv("NEAT_EMU_FIBER_ORDER");
    b.reverse = order && std::strcmp(order, "reverse") == 0;
    b.shared.resize(kSharedLimit + 16);
    b.shared_base = b.shared.data() + (16 - reinterpret_cast<uintptr_t>(b.shared.data()) % 16) % 16;
    b.fibers.resize(static_cast<size_t>(block.x) * block.y * block.z);
    size_t i = 0;
    for (unsigned tz = 0; tz < block.z; ++tz)
        for (unsigned ty = 0; ty < block.y; ++ty)
            for (unsigned tx = 0; tx < block.x; ++tx) b.fibers[i++].tid = uint3{tx, ty, tz};
    gridDim = grid;
    blockDim = block;
    t_block = &b;
    for (unsigned bz = grid.z; bz-- > 0 && !b.failed;)
        for (unsigned by = grid.y; by-- > 0 && !b.failed;)
            for (unsigned bx = grid.x; bx-- > 0 && !b.failed;) {
                blockIdx = uint3{bx, by, bz};
                std::memset(b.shared_base, 0xFF, kSharedLimit);
                b.static_bytes = 0;
                b.statics.clear();
                run_block(&b);
            }
    t_block = nullptr;
    if (b.failed) fail_launch(cudaErrorLaunchFailure);
}

void neat_emu::barrier(const char *file, int line)
{
    Block *b = t_block;
    if (!b) { // a grid-stride launch: its threads run one after another, a barrier cannot work
        neat_emu_violation("__syncthreads at %s:%d in a kernel started by launch() (grid-stride, "
                           "threads one after another); block kernels go through launch_blocks()",
                           short_file(file), line);
        std::abort();
    }
    Fiber *f = b->current;
    f->state = State::AtBarrier;
    f->file = file;
    f->line = line;
    start_switch(&f->fake_stack, b->sched_bottom, b->sched_size);
    switch_to(&f->ctx, &b->sched);
    finish_switch(f->fake_stack, &b->sched_bottom, &b->sched_size);
}

void *neat_emu::dynamic_shared(const char *file, int line)
{
    Block *b = t_block;
    if (!b) {
        neat_emu_violation("shared memory at %s:%d in a kernel started by launch() (grid-stride); "
                           "block kernels go through launch_blocks()",
                           short_file(file), line);
        std::abort();
    }
    return b->shared_base;
}

void *neat_emu::static_shared(const char *site, size_t bytes)
{
    Block *b = t_block;
    if (!b) {
        neat_emu_violation("shared array %s in a kernel started by launch() (grid-stride); block "
                           "kernels go through launch_blocks()",
                           site);
        std::abort();
    }
    for (const SharedArray &a : b->statics)
        if (a.site == site) return b->shared_base + a.offset;
    const size_t offset = b->dynamic_bytes + b->static_bytes;
    if (offset + bytes > kSharedLimit) {
        neat_emu_violation("kernel %s: shared array %s (%zu bytes) takes the block past %zu bytes of "
                           "shared memory (dynamic %zu, static %zu before it)",
                           b->kernel, site, bytes, kSharedLimit, b->dynamic_bytes, b->static_bytes);
        std::abort();
    }
    b->statics.push_back(SharedArray{site, offset, bytes});
    b->static_bytes += align16(bytes);
    return b->shared_base + offset;
}
