/* The counters of per-user session processes (src/server/metrics.c,
 * metrics_block_*) and the master's row of the per-address table
 * (src/server/iplimit.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/iplimit.h"
#include "server/metrics.h"

/* The value of one sample line of the text form, -1 when absent. */
static long long
sample(const struct metrics *m, const char *name)
{
	char *text;
	metrics_format(m, false, &text);
	long long v = -1;
	size_t n = strlen(name);
	for (char *line = text; line != NULL && *line != '\0';) {
		char *nl = strchr(line, '\n');
		if (strncmp(line, name, n) == 0 && line[n] == ' ')
			v = strtoll(line + n + 1, NULL, 10);
		line = nl != NULL ? nl + 1 : NULL;
	}
	free(text);
	return v;
}

/* A session process counts into its block; the master folds the growth
 * into its own row, once, and the process's sessions leave the gauge when
 * it is gone. */
static void
test_block_fold(void **state)
{
	struct metrics *m = metrics_new(2);
	assert_non_null(m);
	struct metrics_row *b = metrics_block_new();
	assert_non_null(b);
	struct metrics_row seen;
	memset(&seen, 0, sizeof(seen));

	/* the session process */
	metrics_attach_block(b);
	METRICS_INC(sessions[METRICS_STATE_TRANSACTION]);
	metrics_command("RETR", 4);
	metrics_command("retr", 4);
	metrics_command("XYZZY", 5);
	METRICS_INC(retrieved);
	METRICS_ADD(bytes_sent, 1234);
	METRICS_INC(logins[METRICS_MECH_PLAIN][METRICS_LOGIN_OK]);
	METRICS_INC(accepted);   /* not a session process's to count: not folded */

	/* the master */
	metrics_attach(m, METRICS_ROW_MASTER);
	metrics_block_fold(b, &seen, 1);
	assert_int_equal(sample(m, "popbox_commands_total{command=\"RETR\"}"), 2);
	assert_int_equal(sample(m, "popbox_commands_total{command=\"unknown\"}"), 1);
	assert_int_equal(sample(m, "popbox_messages_retrieved_total"), 1);
	assert_int_equal(sample(m, "popbox_sent_bytes_total"), 1234);
	assert_int_equal(sample(m,
	    "popbox_logins_total{mechanism=\"PLAIN\",result=\"ok\"}"), 1);
	assert_int_equal(sample(m, "popbox_sessions{state=\"transaction\"}"), 1);
	assert_int_equal(sample(m, "popbox_connections_accepted_total"), 0);
	/* folding again adds nothing */
	metrics_block_fold(b, &seen, 1);
	assert_int_equal(sample(m, "popbox_commands_total{command=\"RETR\"}"), 2);
	assert_int_equal(sample(m, "popbox_sessions{state=\"transaction\"}"), 1);

	/* more, and a counter the process set lower (ignored, and the
	 * growth from there counts only above what was folded) */
	b->commands[10] += 1;   /* RETR */
	b->deleted = 3;
	b->bytes_sent = 5;
	b->sessions[METRICS_STATE_TRANSACTION] = 0;
	b->sessions[METRICS_STATE_UPDATE] = 1;
	metrics_block_fold(b, &seen, 1);
	assert_int_equal(sample(m, "popbox_commands_total{command=\"RETR\"}"), 3);
	assert_int_equal(sample(m, "popbox_messages_deleted_total"), 3);
	assert_int_equal(sample(m, "popbox_sent_bytes_total"), 1234);
	assert_int_equal(sample(m, "popbox_sessions{state=\"transaction\"}"), 0);
	assert_int_equal(sample(m, "popbox_sessions{state=\"update\"}"), 1);
	b->bytes_sent = 1300;
	metrics_block_fold(b, &seen, 1);
	assert_int_equal(sample(m, "popbox_sent_bytes_total"), 1300);

	/* gauges are clamped to the process's open sessions */
	b->sessions[METRICS_STATE_TRANSACTION] = 1000000;
	b->sessions[METRICS_STATE_AUTHORIZATION] = -50;
	metrics_block_fold(b, &seen, 2);
	assert_int_equal(sample(m, "popbox_sessions{state=\"transaction\"}"), 2);
	assert_int_equal(sample(m, "popbox_sessions{state=\"authorization\"}"), 0);

	/* the process is gone: its sessions too, the counters stay */
	metrics_block_gone(&seen);
	assert_int_equal(sample(m, "popbox_sessions{state=\"transaction\"}"), 0);
	assert_int_equal(sample(m, "popbox_sessions{state=\"update\"}"), 0);
	assert_int_equal(sample(m, "popbox_commands_total{command=\"RETR\"}"), 3);

	metrics_block_free(b);
	metrics_detach(m);
}

/* The master's row counts for an address and in the total like a
 * worker's; a worker's reset leaves it alone. */
static void
test_iplimit_master_row(void **state)
{
	struct iplimit *l = iplimit_new(2);
	assert_non_null(l);
	iplimit_add(l, 0, "192.0.2.1", 1);
	iplimit_total_add(l, 0, 1);
	iplimit_add(l, IPLIMIT_MASTER, "192.0.2.1", 1);
	iplimit_total_add(l, IPLIMIT_MASTER, 1);
	iplimit_add(l, IPLIMIT_MASTER, "192.0.2.1", 1);
	iplimit_total_add(l, IPLIMIT_MASTER, 1);
	assert_int_equal(iplimit_count(l, "192.0.2.1"), 3);
	assert_int_equal(iplimit_total(l), 3);
	iplimit_reset_worker(l, 0);
	assert_int_equal(iplimit_count(l, "192.0.2.1"), 2);
	assert_int_equal(iplimit_total(l), 2);
	iplimit_add(l, IPLIMIT_MASTER, "192.0.2.1", -1);
	iplimit_total_add(l, IPLIMIT_MASTER, -1);
	assert_int_equal(iplimit_count(l, "192.0.2.1"), 1);
	assert_int_equal(iplimit_total(l), 1);
	/* no such slot: nothing */
	iplimit_add(l, 2, "192.0.2.1", 1);
	iplimit_total_add(l, 7, 1);
	assert_int_equal(iplimit_count(l, "192.0.2.1"), 1);
	assert_int_equal(iplimit_total(l), 1);
	iplimit_detach(l);
	/* the largest number of workers still has a master's row */
	l = iplimit_new(64);
	assert_non_null(l);
	iplimit_total_add(l, IPLIMIT_MASTER, 1);
	iplimit_total_add(l, 63, 1);
	assert_int_equal(iplimit_total(l), 2);
	iplimit_detach(l);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_block_fold),
		cmocka_unit_test(test_iplimit_master_row),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
