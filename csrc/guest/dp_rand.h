/*
 * Random numbers for the bench's synthetic workloads and verify stamps:
 * splitmix64, small, fast and seedable, so a run repeats with --seed.
 */
#ifndef DP_RAND_H
#define DP_RAND_H

#include <stdint.h>

static inline uint64_t dp_splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A uniform value in [0, n): Lemire's multiply-high (bias is negligible here). */
static inline uint64_t dp_rand_below(uint64_t *s, uint64_t n)
{
    return (uint64_t)(((unsigned __int128)dp_splitmix64(s) * n) >> 64);
}

#endif
