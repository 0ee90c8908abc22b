/*
 * Verify stamps (dataplane bench --verify): every written 512-byte sector
 * carries its sector number, the write's generation and a checksum, so a
 * read can tell a lost, stale, misplaced or torn write.
 */
#ifndef DP_STAMP_H
#define DP_STAMP_H

#include <stdint.h>

enum dp_drv_verify_reason {
    DP_VERIFY_OK = 0,
    DP_VERIFY_NO_STAMP = 1,   /* a block written in this run reads back without a stamp */
    DP_VERIFY_SECTOR = 2,     /* the stamp names another sector */
    DP_VERIFY_GEN = 3,        /* the stamp is from another write (lost or stale write) */
    DP_VERIFY_CHECKSUM = 4,   /* the stamp is torn or corrupted */
};

/* Stamp or check one 512-byte sector (also used by the Python tests). */
void dp_drv_stamp(uintptr_t buf, uint64_t sector, uint64_t gen);
/* DP_VERIFY_* for buf against sector and gen (gen 0: any generation, no stamp allowed). */
uint32_t dp_drv_check(uintptr_t buf, uint64_t sector, uint64_t gen, uint64_t *found_sector,
                      uint64_t *found_gen);

#endif
