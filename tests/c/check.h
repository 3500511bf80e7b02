/*
 * check.h - a tiny test reporter: CHECK records a failure with its location and keeps going,
 * so one run shows every broken case; check_exit turns the count into the process status.
 */
#ifndef NEAT_TEST_CHECK_H
#define NEAT_TEST_CHECK_H

#include <stdio.h>

extern int check_failures;
extern int check_count;

#define CHECK(cond, ...)                                                                       \
    do {                                                                                       \
        check_count++;                                                                         \
        if (!(cond)) {                                                                         \
            check_failures++;                                                                  \
            if (check_failures <= 50) {                                                        \
                fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                \
                fprintf(stderr, __VA_ARGS__);                                                  \
                fputc('\n', stderr);                                                           \
            }                                                                                  \
        }                                                                                      \
    } while (0)

/* Prints the summary and returns the exit status for main. */
int check_exit(const char *name);

#endif /* NEAT_TEST_CHECK_H */
