/* UIDLs of the server popboxd replaces (docs/DESIGN.md "UIDLs kept from the
 * old server"): with uidl_format = dovecot or courier, a message found in the
 * old server's list keeps the UIDL that server gave it, so clients that leave
 * mail on the server download nothing again after the switch.
 *
 * The old lists are input written by another program: every field is
 * checked, and anything the old server would not have served from is left
 * out (the message then gets a popbox UIDL). They are only ever read.
 *
 * dovecot-uidlist (Dovecot 2.x Maildir, version 3; version 1 accepted): a
 * header "3 V<uidvalidity> N<nextuid> [G<guid>] [other fields]", then one
 * line per message "<uid> [<ext fields>] :<file name>", where ext fields are
 * a capital letter and a value (P<pop3 uidl>: the stored UIDL, "P" alone
 * meaning the base file name; G<guid>); version 1 lines are
 * "<uid> <file name>". UIDs strictly increase; a file that breaks a rule
 * Dovecot also refuses is ignored whole, as Dovecot would have rebuilt it.
 * A file name's base (up to ':') identifies the message.
 *
 * courierpop3dsizelist (Courier pop3d since 0.43): a header "/V NEXTUID
 * UIDVALIDITY" with V 2 or 3, then lines "FILE SIZE UID:UIDVALIDITY[:UTF8]"
 * (the last two spaces separate the fields; a line Courier cannot read is
 * skipped, as Courier does); the UIDL is "UID<uid>-<uidvalidity>" ("UID<uid>"
 * when the UIDVALIDITY is 0). A message not in it, or a file of another
 * version, gets popbox's UIDL, the base file name: what the oldest Courier
 * served too, for names without space, quote or '+'. */
#ifndef POPBOX_UIDL_MIGRATE_H
#define POPBOX_UIDL_MIGRATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum uidl_format {
	UIDL_FORMAT_UNSET = 0,   /* per user: not given, the config's applies */
	UIDL_FORMAT_POPBOX,      /* the base file name (store.h), the default */
	UIDL_FORMAT_DOVECOT,     /* dovecot-uidlist, then the base file name */
	UIDL_FORMAT_COURIER,     /* courierpop3dsizelist, then the base file name */
	UIDL_FORMAT_POPA3D,      /* mbox: popa3d's UIDL from the headers (store_mbox.c) */
};
#define UIDL_FORMAT_MAX UIDL_FORMAT_POPA3D

/* Dovecot's default pop3_uidl_format: UID and UIDVALIDITY as 8 hex digits. */
#define UIDL_DOVECOT_DEFAULT_TEMPLATE "%08Xu%08Xv"
/* The file names in the maildrop. */
#define UIDL_DOVECOT_LIST_NAME "dovecot-uidlist"
#define UIDL_COURIER_LIST_NAME "courierpop3dsizelist"

/* "popbox", "dovecot", "courier" -> *format_r; false for anything else. */
bool uidl_format_parse(const char *name, enum uidl_format *format_r);
/* The name of a format ("unset" for UIDL_FORMAT_UNSET). */
const char *uidl_format_name(enum uidl_format format);

/* Check a Dovecot pop3_uidl_format against the subset popboxd computes:
 * literal characters (0x21..0x7E but '%'), "%%", and variables
 * %[0][WIDTH][L|U|X...]VAR with VAR one of u (uid), v (uidvalidity),
 * g (guid), f (filename) or their long forms %{uid}, %{uidvalidity},
 * %{guid}, %{filename}. As in Dovecot 2.3: X turns a number into lower-case
 * hex, L and U change case, a WIDTH after '0' pads with zeros, a WIDTH
 * without it truncates. %m (header MD5: Dovecot has none on Maildir),
 * offsets and other modifiers are refused. Returns false with *error_r
 * (malloc'd) naming the problem. */
bool uidl_dovecot_template_check(const char *template, char **error_r);

/* Why a message has no UIDL from the old list (migrate-uidls reports it). */
enum uidl_old_miss {
	UIDL_OLD_FOUND = 0,
	UIDL_OLD_NOT_LISTED,     /* not in the old list (delivered after it) */
	UIDL_OLD_INVALID,        /* listed, but its UIDL is not 1..70 of 0x21..0x7E */
	UIDL_OLD_NO_LIST,        /* there is no (usable) old list */
};

struct uidl_old_list;

/* Parse the text of a dovecot-uidlist (len octets, text[len] == '\0';
 * changed in place and kept by the list: the list owns it afterwards and
 * frees it). template is a checked pop3_uidl_format. Returns NULL with
 * *error_r for a file Dovecot would not have served from. */
struct uidl_old_list *uidl_dovecot_parse(char *text, size_t len, const char *template,
    char **error_r);
/* The same for courierpop3dsizelist. */
struct uidl_old_list *uidl_courier_parse(char *text, size_t len, char **error_r);

/* Read and parse the old list of format in the maildrop open on root_fd
 * (opened relative to it without following a link, regular files only, at
 * most POPBOXD_OLD_UIDLIST_MAX octets). Returns NULL when there is none
 * (*error_r NULL) or it cannot be used (*error_r set, for the log: the
 * maildrop's messages then get popbox UIDLs). */
struct uidl_old_list *uidl_old_load(int root_fd, enum uidl_format format,
    const char *template, char **error_r);

/* The UIDL the old server gave the message with base file name base (len
 * octets): malloc'd, valid for RFC 1939; NULL with *miss_r saying why not
 * (list may be NULL: UIDL_OLD_NO_LIST). */
char *uidl_old_lookup(const struct uidl_old_list *list, const char *base, size_t len,
    enum uidl_old_miss *miss_r);
/* How many messages the list names. */
size_t uidl_old_count(const struct uidl_old_list *list);
void uidl_old_free(struct uidl_old_list *list);

/* One message's UIDL while a maildrop's UIDLs are made unique. */
struct uidl_slot {
	char *uidl;          /* malloc'd, owned by the slot; may be replaced */
	const char *base;    /* the message's base file name, for a replacement */
	size_t base_len;
	int rank;            /* in a collision the lowest rank (then the first) keeps it */
	bool replaced;       /* out: uidl was replaced */
};

/* Make the UIDLs of slots[0..n) unique (RFC 1939 §7): of several messages
 * with one UIDL, the one of lowest rank, then the first, keeps it; each
 * other gets its base name's UIDL (store.h), or when that is taken too a
 * digest of the name (maildir_uidl_salted). Returns how many were replaced. */
size_t uidl_make_unique(struct uidl_slot *slots, size_t n);

/* 1..70 characters of 0x21..0x7E (RFC 1939 §7). */
bool uidl_is_valid(const char *uidl, size_t len);

#endif
