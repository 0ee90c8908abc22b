/*
 * Clocks and the spin-wait hint, for the loops that poll (the dataplane
 * thread, the bench driver and the ideal device).
 */
#ifndef DP_CPU_H
#define DP_CPU_H

#include <stdint.h>
#include <time.h>

/* The CPU's spin-wait hint: frees the sibling hyperthread and eases the exit from a spin. */
static inline void dp_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* clk in ns: CLOCK_MONOTONIC (vDSO, no syscall) or CLOCK_THREAD_CPUTIME_ID. */
static inline uint64_t dp_clock_ns(clockid_t clk)
{
    struct timespec ts;

    clock_gettime(clk, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline uint64_t dp_now_ns(void)
{
    return dp_clock_ns(CLOCK_MONOTONIC);
}

#endif
