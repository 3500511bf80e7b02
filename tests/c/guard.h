/*
 * guard.h - buffers that fault on the first byte outside them: each lives in its own mapping
 * between two PROT_NONE regions (each at least as long as the buffer), flush with the one
 * right after its last byte (GUARD_BACK) or right before its first byte (GUARD_FRONT); the
 * other sits past the page-rounded slack on its side. Used by the fuzz test to hold kernels to the exact sizes they ask for.
 *
 * A page boundary can only sit at a page-aligned address, so a buffer whose start must have a
 * given alignment mod 64 (a deliberately misaligned workspace) may end a few bytes short of
 * the guard; under AddressSanitizer those bytes (and any other slack in the mapping) are
 * poisoned, so the bound stays exact there.
 */
#ifndef NEAT_TEST_GUARD_H
#define NEAT_TEST_GUARD_H

#include <stddef.h>

enum { GUARD_BACK = 0, GUARD_FRONT = 1 };

/* misalign value meaning "no alignment wanted beyond the element size": flush with the guard */
#define GUARD_FLUSH (-1)

typedef struct gbuf {
    void *p;      /* the buffer: bytes usable bytes */
    size_t bytes;
    void *map;    /* the whole mapping, guard page included */
    size_t map_bytes;
} gbuf;

/*
 * Maps a buffer of exactly `bytes` bytes against a guard page on side `side`: flush with it
 * (misalign == GUARD_FLUSH), or with its start congruent to `misalign` mod 64 and as close to
 * the guard as that allows (misalign in 0..63). With bytes == 0, p still points
 * at memory that faults or is poisoned, so a kernel that touches an empty buffer is caught.
 * Aborts if the mapping fails.
 */
gbuf guard_alloc(size_t bytes, int side, int misalign);
void guard_free(gbuf *g);

#endif /* NEAT_TEST_GUARD_H */
