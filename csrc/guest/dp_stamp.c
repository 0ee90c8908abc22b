#include "dp_stamp.h"

#include <string.h>

#include "dp_rand.h"
#include "dp_virtio.h"

#define SECTOR VIRTIO_BLK_SECTOR_SIZE
#define STAMP_MAGIC 0x3148434e45425044ull /* "DPBENCH1" */

/*
 * A stamped sector: magic, sector, generation, checksum, then 60 words of
 * payload derived from (sector, generation).  The checksum covers every word
 * but itself, so a torn or shifted sector fails it.
 */
static uint64_t stamp_sum(const uint64_t *w)
{
    uint64_t h = 0xcbf29ce484222325ull;

    for (unsigned i = 0; i < SECTOR / 8; i++) {
        if (i == 3)
            continue;
        h = (h ^ w[i]) * 0x100000001b3ull;
        h ^= h >> 29;
    }
    return h;
}

/* Built in a local and copied: guest buffers may sit at any address (--buf-align). */
void dp_drv_stamp(uintptr_t buf, uint64_t sector, uint64_t gen)
{
    uint64_t w[SECTOR / 8];
    uint64_t s = sector * 0x2545f4914f6cdd1dull ^ gen;

    w[0] = STAMP_MAGIC;
    w[1] = sector;
    w[2] = gen;
    for (unsigned i = 4; i < SECTOR / 8; i++)
        w[i] = dp_splitmix64(&s);
    w[3] = stamp_sum(w);
    memcpy((void *)buf, w, sizeof(w));
}

uint32_t dp_drv_check(uintptr_t buf, uint64_t sector, uint64_t gen, uint64_t *found_sector,
                      uint64_t *found_gen)
{
    uint64_t w[SECTOR / 8];

    memcpy(w, (const void *)buf, sizeof(w));
    *found_sector = w[1];
    *found_gen = w[2];
    if (w[0] != STAMP_MAGIC)
        return gen ? DP_VERIFY_NO_STAMP : DP_VERIFY_OK;
    if (w[1] != sector)
        return DP_VERIFY_SECTOR;
    if (gen && w[2] != gen)
        return DP_VERIFY_GEN;
    if (w[3] != stamp_sum(w))
        return DP_VERIFY_CHECKSUM;
    return DP_VERIFY_OK;
}
