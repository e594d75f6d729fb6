/* Failed-login penalty per source address (brute-force throttling).
 * After a failure from an address, the next answers to that address wait
 * AUTH_PENALTY_FIRST_MS, doubling per further failure up to AUTH_PENALTY_MAX_MS;
 * a success clears the address; an address quiet for AUTH_PENALTY_WINDOW
 * seconds is forgotten. The table has a fixed size: under a flood of
 * addresses the oldest entries are dropped, never memory grown. */
#ifndef POPBOX_AUTH_PENALTY_H
#define POPBOX_AUTH_PENALTY_H

#include <time.h>

#define AUTH_PENALTY_FIRST_MS 2000
#define AUTH_PENALTY_MAX_MS 15000
#define AUTH_PENALTY_WINDOW (15 * 60)
#define AUTH_PENALTY_SLOTS 8192

struct auth_penalty;

struct auth_penalty *auth_penalty_new(void);
void auth_penalty_free(struct auth_penalty *p);
/* How long to hold an answer to addr now (0 = no penalty). */
unsigned auth_penalty_delay_ms(const struct auth_penalty *p, const char *addr, time_t now);
void auth_penalty_failed(struct auth_penalty *p, const char *addr, time_t now);
void auth_penalty_succeeded(struct auth_penalty *p, const char *addr);
/* Forget addresses quiet for longer than the window. */
void auth_penalty_expire(struct auth_penalty *p, time_t now);

#endif
