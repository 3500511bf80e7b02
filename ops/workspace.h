/*
 * workspace.h - carving the caller's workspace into aligned pieces (internal).
 *
 * Size queries and compute calls walk the same carve sequence: a query runs it over a NULL base
 * and reads the total, a compute call runs it over the real buffer. One code path for both is
 * what keeps the reported size and the bytes actually used from drifting apart.
 */
#ifndef NEAT_WORKSPACE_H
#define NEAT_WORKSPACE_H

#include <stddef.h>
#include <stdint.h>

/* Cache-line alignment of every piece (also the widest vector load). */
#define NEAT_ALIGN 64

static inline size_t neat_align_up(size_t n)
{
    return (n + (NEAT_ALIGN - 1)) & ~(size_t)(NEAT_ALIGN - 1);
}

static inline void *neat_align_ptr(void *p)
{
    uintptr_t u = (uintptr_t)p;
    return (void *)((u + (NEAT_ALIGN - 1)) & ~(uintptr_t)(NEAT_ALIGN - 1));
}

/* The larger of two scratch sizes: pieces used one after the other share their bytes. */
static inline size_t neat_size_max(size_t a, size_t b)
{
    return a > b ? a : b;
}

typedef struct neat_carver {
    char *base;  /* NULL while sizing */
    size_t used; /* bytes from base, alignment padding included */
} neat_carver;

/* Starts carving; the NEAT_ALIGN slack covers a caller buffer that is not aligned itself. */
static inline neat_carver neat_carver_begin(void *workspace)
{
    neat_carver c;
    c.base = workspace ? (char *)neat_align_ptr(workspace) : NULL;
    c.used = NEAT_ALIGN;
    return c;
}

static inline void *neat_carve(neat_carver *c, size_t bytes)
{
    void *p = c->base ? c->base + (c->used - NEAT_ALIGN) : NULL;
    c->used += neat_align_up(bytes);
    return p;
}

#endif /* NEAT_WORKSPACE_H */
