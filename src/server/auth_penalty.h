/* Failed-login penalty (brute-force throttling), kept by the auth process.
 *
 * Failures are counted under three keys, each forgotten after
 * AUTH_PENALTY_WINDOW seconds without a failure:
 *   - (source, user): one account's wrong passwords from one place; cleared
 *     when that user logs in from there;
 *   - user: guesses at one account from many places; cleared when that user
 *     logs in; counts from its AUTH_PENALTY_USER_FREE + 1-th failure, so
 *     the devices still polling with an old password after a password
 *     change do not slow the user's own logins;
 *   - source: password spraying (many accounts from one place); never
 *     cleared by a login (an attacker's logins to his own account must not
 *     reset it), counts from its AUTH_PENALTY_SOURCE_FREE + 1-th failure, so
 *     one user's typo does not slow the others behind the same NAT.
 * The source is the client's address, an IPv6 address aggregated to its
 * /prefix (default 64: one customer's network, which holds more addresses
 * than anyone could count one by one).
 * The final answer to a request waits the largest delay of its three keys:
 * AUTH_PENALTY_FIRST_MS for the first counted failure, doubling per further
 * failure up to AUTH_PENALTY_MAX_MS. The table has a fixed size and a keyed
 * hash: under a flood of keys the oldest entries of a neighbourhood are
 * dropped, never memory grown, and nobody can aim a flood at one entry. */
#ifndef POPBOX_AUTH_PENALTY_H
#define POPBOX_AUTH_PENALTY_H

#include <time.h>

#define AUTH_PENALTY_FIRST_MS 2000
#define AUTH_PENALTY_MAX_MS 15000
#define AUTH_PENALTY_WINDOW (15 * 60)
#define AUTH_PENALTY_SLOTS 8192
#define AUTH_PENALTY_USER_FREE 5
#define AUTH_PENALTY_SOURCE_FREE 4
/* Default IPv6 aggregation, and its bounds (config: auth_penalty_ipv6_prefix). */
#define AUTH_PENALTY_IPV6_PREFIX 64
#define AUTH_PENALTY_IPV6_PREFIX_MIN 32
#define AUTH_PENALTY_IPV6_PREFIX_MAX 128

struct auth_penalty;

/* ipv6_prefix: AUTH_PENALTY_IPV6_PREFIX_MIN..MAX bits. */
struct auth_penalty *auth_penalty_new(unsigned ipv6_prefix);
void auth_penalty_free(struct auth_penalty *p);
/* How long to hold the final answer to a login of user from addr (a
 * numeric IPv4 or IPv6 address; anything else counts as itself) now;
 * 0 = at once. user may be "" (not known yet). */
unsigned auth_penalty_delay_ms(const struct auth_penalty *p, const char *addr,
    const char *user, time_t now);
void auth_penalty_failed(struct auth_penalty *p, const char *addr, const char *user,
    time_t now);
/* user logged in from addr: clears (source, user) and user, not source. */
void auth_penalty_succeeded(struct auth_penalty *p, const char *addr, const char *user);
/* Forget keys quiet for longer than the window. */
void auth_penalty_expire(struct auth_penalty *p, time_t now);

#endif
