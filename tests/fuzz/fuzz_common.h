/* Shared helpers for the libFuzzer harnesses in tests/fuzz/ (see README.md).
 * Every harness defines LLVMFuzzerTestOneInput; replay_main.c feeds corpus
 * files to it without libFuzzer, so the corpora replay under gcc + ASan. */
#ifndef POPBOX_FUZZ_COMMON_H
#define POPBOX_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* An invariant: on failure print where and why, then abort() so that
 * libFuzzer records the input as a crash. */
#define FUZZ_CHECK(cond, ...) do { \
	if (!(cond)) { \
		fprintf(stderr, "%s:%d: invariant failed: %s: ", __FILE__, __LINE__, #cond); \
		fprintf(stderr, __VA_ARGS__); \
		fputc('\n', stderr); \
		abort(); \
	} \
} while (0)

/* A NUL-terminated malloc'd copy of the input (parsers that take strings). */
static inline char *
fuzz_strndup(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);
	if (s == NULL)
		abort();
	for (size_t i = 0; i < size; i++)
		s[i] = (char)data[i];
	s[size] = '\0';
	return s;
}

#endif
