/* The mbox backend's own parts beyond store.h (store_mbox.c says how the
 * mbox, its lock, index and expunge journal work). */
#ifndef POPBOX_STORE_MBOX_H
#define POPBOX_STORE_MBOX_H

#include <stddef.h>
#include <stdint.h>

#include "server/store.h"

/* A message's UIDL from its identity digest (mbox_parse.h): 40 hex chars;
 * ordinal n > 0 for the n-th further copy of the same message. malloc'd. */
char *mbox_uidl_for(const unsigned char *digest, unsigned ordinal);

/* The part of a message's identity digest that the index keeps and that
 * messages are compared by (128 bits). */
#define MBOX_KEY_LEN 16

/* BASE.popbox-index, format 2 (docs/DESIGN.md "Storage (mbox)"); numbers
 * little-endian. Header (MBOX_IX_HEAD bytes):
 *   magic, quoting, message count, string area length, the mbox's identity
 *   (device, inode, size, mtime s/ns, ctime s/ns; with "known" 1) when the
 *   records describe the file exactly, checksums (mbox_index_sum) of the
 *   records (seed 2), of the string area (seed 3) and of the header before
 *   its own (seed 1);
 * then count records of MBOX_IX_REC bytes, the i-th message starting where
 * the one before ended (the first at 0): its end offset, data length, wire
 * size, From_ line length, its UIDL's offset and length in the string area,
 * the first MBOX_KEY_LEN bytes of its identity digest, popa3d's UIDL as 8
 * bytes, zeros; then the string area (each UIDL followed by a NUL); then
 * any number of MBOX_IX_APPEND records of our own appends: magic, the
 * identity before, the identity after, checksum (seed 4). */
#define MBOX_IX_MAGIC "popbox-mbxidx-2\n"
#define MBOX_IX_MAGIC_LEN 16
#define MBOX_IX_HEAD 128
#define MBOX_IX_QUOTING 16
#define MBOX_IX_COUNT 20
#define MBOX_IX_STRINGS_LEN 24
#define MBOX_IX_IDENT 32          /* 7 x 8 bytes */
#define MBOX_IX_KNOWN 88
#define MBOX_IX_RECS_SUM 96
#define MBOX_IX_STRINGS_SUM 104
#define MBOX_IX_HEAD_SUM 120
#define MBOX_IX_REC 64
#define MBOX_IX_REC_END 0
#define MBOX_IX_REC_DATA_LEN 8
#define MBOX_IX_REC_SIZE 16
#define MBOX_IX_REC_FROM_LEN 24
#define MBOX_IX_REC_UIDL_OFF 28
#define MBOX_IX_REC_KEY 32
#define MBOX_IX_REC_P3 48
#define MBOX_IX_REC_UIDL_LEN 56
#define MBOX_IX_APPEND 128
#define MBOX_IX_APPEND_MAGIC "pbmbxap2"
#define MBOX_IX_APPEND_PRE 8
#define MBOX_IX_APPEND_POST 64
#define MBOX_IX_APPEND_SUM 120

/* The index's checksum of len bytes (not cryptographic: damage and torn
 * writes; a change within one 8-byte word always changes it). */
uint64_t mbox_index_sum(const void *data, size_t len, uint64_t seed);

/* What the last store open of this thread read of the mbox (the same as
 * the debug log line "mbox PATH: parsed N bytes from offset O"; for tests). */
struct mbox_open_stats {
	uint64_t parsed_from;    /* where the parse began */
	uint64_t parsed_bytes;   /* 0: the index was the scan */
	uint32_t from_index;     /* messages taken from the index */
};
extern __thread struct mbox_open_stats mbox_last_open;

#endif
