/* Small helpers both programs use: allocation that never returns NULL,
 * strict number parsing, safe string building. */
#ifndef POPBOX_UTIL_H
#define POPBOX_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))
#define NORETURN __attribute__((noreturn))
#define N_ELEMENTS(a) (sizeof(a) / sizeof((a)[0]))

/* Allocation failure is fatal: the process logs and exits(70). */
void *xmalloc(size_t size);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t size);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) PRINTF_LIKE(1, 2);

/* Strict decimal parsing: only [0-9]+, no sign, no spaces, no leading '+',
 * no trailing junk, value <= max. Returns true and sets *out on success. */
bool parse_u64(const char *s, uint64_t max, uint64_t *out);
bool parse_u32(const char *s, uint32_t max, uint32_t *out);

/* Wipe a secret in a way the compiler may not optimise away. */
void secure_wipe(void *p, size_t n);
/* Free a NUL-terminated secret string after wiping it; NULL is fine. */
void free_secret(char *s);

/* Constant-time comparison of two buffers of the same length. */
bool const_time_eq(const void *a, const void *b, size_t n);

/* Copy printable ASCII from src (len bytes) into dst (size >= 1), replacing
 * anything else with '?', truncating to size-1 bytes: for logging peer text. */
void str_sanitize(char *dst, size_t size, const char *src, size_t len);

/* fsync a directory by path; returns 0 or -1 with errno. */
int fsync_dir(const char *path);

/* Reading a whole file into memory, up to a limit: the one reader for the
 * config file, the TLS PEM files and the users file (their limits are in
 * src/server/limits_popboxd.h).
 * util_read_file_bounded reads the regular file open on fd from offset 0 to
 * its end (pread: the descriptor's offset is neither used nor moved, so a
 * descriptor handed over by another process reads the same). The size may
 * change while we read (an administrator rewriting the file in place): it
 * reads until end of file, growing the buffer, and fails once more than max
 * bytes came. *data_r is malloc'd with a NUL after the *len_r bytes read (the
 * data may contain NUL bytes of its own); len_r may be NULL. With
 * UTIL_READ_SECRET every buffer given up on the way (growth, failure) is
 * wiped first. Errors, in *error_r, start with name:
 *   "NAME: not a regular file", "NAME: cannot read: ERRNO TEXT",
 *   "NAME: file too large (more than MAX bytes)".
 * util_read_path_bounded opens path first ("PATH: cannot open: ...") and
 * names it in errors. Both return 0 or -1. */
#define UTIL_READ_SECRET 1u
int util_read_file_bounded(int fd, const char *name, size_t max, unsigned flags, char **data_r,
    size_t *len_r, char **error_r);
int util_read_path_bounded(const char *path, size_t max, unsigned flags, char **data_r,
    size_t *len_r, char **error_r);

#endif
