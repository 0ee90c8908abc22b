#define _GNU_SOURCE
#include "dp_sigbus.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

struct slot {
    uintptr_t start;
    uintptr_t end;   /* 0: free */
    uint64_t faults;
    uintptr_t fault_addr;
};

static struct slot slots[DP_SIGBUS_SLOTS];
static struct sigaction previous;
static int wake_fd = -1;
static int installed;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER; /* registration, not the handler */

static void pass_on(int sig, siginfo_t *si, void *uc)
{
    if (previous.sa_flags & SA_SIGINFO) {
        if (previous.sa_sigaction) {
            previous.sa_sigaction(sig, si, uc);
            return;
        }
    } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
        previous.sa_handler(sig);
        return;
    }
    /* Default action: restore it and return; the access faults again and kills. */
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGBUS, &dfl, NULL);
}

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
    uintptr_t addr = (uintptr_t)si->si_addr;
    int saved = errno;

    for (unsigned i = 0; i < DP_SIGBUS_SLOTS; i++) {
        struct slot *s = &slots[i];
        /* Acquire pairs with the release in dp_sigbus_register: end, then its start. */
        uintptr_t end = __atomic_load_n(&s->end, __ATOMIC_ACQUIRE);
        uintptr_t start = __atomic_load_n(&s->start, __ATOMIC_RELAXED);

        if (!end || addr < start || addr >= end)
            continue;
        if (mmap((void *)start, end - start, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
            break;
        __atomic_store_n(&s->fault_addr, addr, __ATOMIC_RELAXED);
        /* Release: whoever sees the count also sees the address. */
        __atomic_fetch_add(&s->faults, 1, __ATOMIC_RELEASE);
        int fd = __atomic_load_n(&wake_fd, __ATOMIC_RELAXED);
        if (fd >= 0) {
            uint64_t one = 1;
            ssize_t n = write(fd, &one, sizeof(one)); /* non-blocking: ours */
            (void)n;
        }
        errno = saved;
        return;
    }
    errno = saved;
    pass_on(sig, si, uc);
}

int dp_sigbus_install(void)
{
    struct sigaction sa;
    int ret = 0;

    pthread_mutex_lock(&lock);
    if (!installed) {
        memset(&sa, 0, sizeof(sa));
        sa.sa_sigaction = on_sigbus;
        sa.sa_flags = SA_SIGINFO | SA_RESTART;
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGBUS, &sa, &previous) < 0)
            ret = -errno;
        else
            installed = 1;
    }
    pthread_mutex_unlock(&lock);
    return ret;
}

void dp_sigbus_set_wake_fd(int fd)
{
    __atomic_store_n(&wake_fd, fd, __ATOMIC_RELAXED);
}

int dp_sigbus_register(uintptr_t start, uint64_t len)
{
    int ret = -ENOSPC;

    pthread_mutex_lock(&lock);
    for (unsigned i = 0; i < DP_SIGBUS_SLOTS; i++) {
        struct slot *s = &slots[i];

        if (__atomic_load_n(&s->end, __ATOMIC_RELAXED))
            continue;
        __atomic_store_n(&s->faults, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&s->fault_addr, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&s->start, start, __ATOMIC_RELAXED);
        /* Release: the handler that sees this end sees the start above. */
        __atomic_store_n(&s->end, start + len, __ATOMIC_RELEASE);
        ret = (int)i;
        break;
    }
    pthread_mutex_unlock(&lock);
    return ret;
}

void dp_sigbus_unregister(int slot)
{
    if (slot >= 0 && slot < DP_SIGBUS_SLOTS)
        __atomic_store_n(&slots[slot].end, 0, __ATOMIC_RELEASE);
}

uint64_t dp_sigbus_faults(int slot)
{
    return slot >= 0 && slot < DP_SIGBUS_SLOTS
               ? __atomic_load_n(&slots[slot].faults, __ATOMIC_ACQUIRE)
               : 0;
}

uintptr_t dp_sigbus_fault_addr(int slot)
{
    return slot >= 0 && slot < DP_SIGBUS_SLOTS
               ? __atomic_load_n(&slots[slot].fault_addr, __ATOMIC_RELAXED)
               : 0;
}
