/* Error reporting inside popbox fetch: every failing function fills a
 * struct fetch_error with a sysexits.h status and one human sentence, and
 * returns false. The status decides what cron sees:
 *   EX_TEMPFAIL 75  network, timeouts, the deadline, [IN-USE], [LOGIN-DELAY],
 *                   [SYS/TEMP]
 *   EX_NOPERM   77  credentials refused
 *   EX_CONFIG   78  configuration error, refusing to send a password in clear
 *   EX_IOERR    74  local delivery failed
 *   EX_UNAVAILABLE 69 certificate not trusted, [SYS/PERM]
 *   EX_PROTOCOL 76  the server broke the protocol, a message over
 *                   max_message_size, a SCRAM iteration count out of bounds
 */
#ifndef POPBOX_FETCH_ERROR_H
#define POPBOX_FETCH_ERROR_H

#include <stdbool.h>
#include <sysexits.h>

#include "common/util.h"

struct fetch_error {
	int code;          /* 0 = no error */
	char msg[1024];
	int resp_code;     /* the server's response code (enum pop3_resp_code) behind
	                    * the error, 0 when none (pop3c_fail) */
};

/* Set code and message (only the first error is kept); returns false so
 * callers can write `return fetch_error_set(...)`. */
bool fetch_error_set(struct fetch_error *err, int code, const char *fmt, ...)
    PRINTF_LIKE(3, 4);

/* Protocol trace (-v): every line to and from the server, secrets masked. */
extern bool fetch_trace;

#endif
