/* Corpus replay without libFuzzer: `replay_<target> FILE|DIR...` runs
 * LLVMFuzzerTestOneInput once per file (directories one level deep) and
 * fails on the first sanitizer report or broken invariant (the harness
 * aborts). Built with the ordinary compiler and -fsanitize=address,undefined
 * by `make fuzz-replay`, so CI needs no clang runtime. */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_common.h"

/* Bigger files are not fuzz inputs (libFuzzer -max_len stays far below). */
#define REPLAY_MAX_FILE (4 * 1024 * 1024)

static int
replay_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL) {
		fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
		return -1;
	}
	uint8_t *buf = malloc(REPLAY_MAX_FILE);
	if (buf == NULL)
		abort();
	size_t n = fread(buf, 1, REPLAY_MAX_FILE, f);
	int bad = ferror(f) || !feof(f);
	fclose(f);
	if (bad) {
		fprintf(stderr, "replay: %s: unreadable or larger than %d bytes\n", path, REPLAY_MAX_FILE);
		free(buf);
		return -1;
	}
	/* An exact-size copy, so ASan sees reads past the input. */
	uint8_t *copy = malloc(n ? n : 1);
	if (copy == NULL)
		abort();
	memcpy(copy, buf, n);
	free(buf);
	LLVMFuzzerTestOneInput(copy, n);
	free(copy);
	return 0;
}

static int
cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int
main(int argc, char **argv)
{
	unsigned files = 0;
	int status = 0;
	for (int i = 1; i < argc; i++) {
		struct stat st;
		if (stat(argv[i], &st) < 0) {
			fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
			status = 1;
			continue;
		}
		if (!S_ISDIR(st.st_mode)) {
			status |= replay_file(argv[i]) < 0;
			files++;
			continue;
		}
		DIR *d = opendir(argv[i]);
		if (d == NULL) {
			fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
			status = 1;
			continue;
		}
		char **names = NULL;
		size_t n = 0;
		for (struct dirent *e; (e = readdir(d)) != NULL;) {
			if (e->d_name[0] == '.')
				continue;
			names = realloc(names, (n + 1) * sizeof(*names));
			if (names == NULL)
				abort();
			size_t len = strlen(argv[i]) + strlen(e->d_name) + 2;
			names[n] = malloc(len);
			snprintf(names[n], len, "%s/%s", argv[i], e->d_name);
			n++;
		}
		closedir(d);
		qsort(names, n, sizeof(*names), cmp_str);
		for (size_t k = 0; k < n; k++) {
			status |= replay_file(names[k]) < 0;
			files++;
			free(names[k]);
		}
		free(names);
	}
	printf("replay %s: %u input(s)%s\n", argv[0], files, status ? ", with errors" : ", ok");
	return status;
}
