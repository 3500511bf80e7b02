/*
 * guard.c - guard-page buffers (see guard.h).
 */
#define _DEFAULT_SOURCE /* mmap's MAP_ANONYMOUS and sysconf under -std=c11 */

#include "guard.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define GUARD_POISON(p, n) __asan_poison_memory_region((p), (n))
#define GUARD_UNPOISON(p, n) __asan_unpoison_memory_region((p), (n))
#else
#define GUARD_POISON(p, n) ((void)(p), (void)(n))
#define GUARD_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

static size_t page_size(void)
{
    static size_t ps;
    if (!ps) {
        long v = sysconf(_SC_PAGESIZE);
        ps = v > 0 ? (size_t)v : 4096;
    }
    return ps;
}

gbuf guard_alloc(size_t bytes, int side, int misalign)
{
    size_t ps = page_size();
    /* room for the buffer, the misalignment shift and at least one usable page */
    size_t body = (bytes + 64 + ps - 1) / ps * ps;
    /* A wrong offset is rarely off by a few bytes only: a lane's slice placed a whole slice
     * too far lands a buffer's length away. So the guard is as long as the buffer (16 pages at
     * least), and such a write faults instead of landing in the next mapping. PROT_NONE
     * address space costs no memory. */
    size_t guard = body > 16 * ps ? body : 16 * ps;
    gbuf g;
    g.bytes = bytes;
    /* guards on both sides: the buffer is flush with the one `side` names, and the other
     * still catches what runs past the page-rounded slack on its side */
    g.map_bytes = guard + body + guard;
    g.map = mmap(NULL, g.map_bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (g.map == MAP_FAILED) {
        fprintf(stderr, "guard_alloc: mmap of %zu bytes failed\n", g.map_bytes);
        abort();
    }
    char *lo = (char *)g.map + guard, *hi = lo + body; /* the usable part */
    if (mprotect(lo, body, PROT_READ | PROT_WRITE) != 0) {
        fprintf(stderr, "guard_alloc: mprotect failed\n");
        abort();
    }
    if (side == GUARD_FRONT) {
        g.p = lo + (misalign > 0 ? misalign % 64 : 0);
    } else {
        /* the highest start with the wanted residue that still ends at or before the guard */
        uintptr_t start = (uintptr_t)hi - bytes;
        if (misalign != GUARD_FLUSH)
            start -= (start - (uintptr_t)(misalign % 64)) % 64;
        g.p = (void *)start;
    }
    char *p = g.p;
    GUARD_POISON(lo, (size_t)(p - lo));
    GUARD_POISON(p + bytes, (size_t)(hi - (p + bytes)));
    return g;
}

void guard_free(gbuf *g)
{
    if (!g->map)
        return;
    /* the shadow outlives the mapping: a later mapping at this address must start clean */
    GUARD_UNPOISON(g->map, g->map_bytes);
    munmap(g->map, g->map_bytes);
    g->map = g->p = NULL;
}
