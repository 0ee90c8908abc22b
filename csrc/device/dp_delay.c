#define _GNU_SOURCE
#include "dp_delay.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

struct held {
    struct dp_cqe cqe;
    uint64_t due; /* CLOCK_MONOTONIC ns */
};

struct dp_delay {
    unsigned every;
    uint64_t delay_ns;
    uint64_t seen; /* completions the engine reported */
    int epfd;
    int tfd;
    struct held *ring; /* FIFO: deadlines are all now + delay_ns */
    unsigned cap, head, n;
};

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void dp_delay_close(struct dp_delay *d)
{
    if (!d)
        return;
    if (d->epfd >= 0)
        close(d->epfd);
    if (d->tfd >= 0)
        close(d->tfd);
    free(d->ring);
    free(d);
}

static int watch(int epfd, int fd)
{
    struct epoll_event ev = {.events = EPOLLIN};

    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

struct dp_delay *dp_delay_open(unsigned every, uint64_t delay_ns, int inner_fd, unsigned depth,
                               int *err)
{
    struct dp_delay *d = calloc(1, sizeof(*d));

    *err = -ENOMEM;
    if (!d)
        return NULL;
    d->every = every ? every : 1;
    d->delay_ns = delay_ns;
    d->cap = depth ? depth : 1;
    d->ring = calloc(d->cap, sizeof(*d->ring));
    d->epfd = epoll_create1(EPOLL_CLOEXEC);
    d->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (!d->ring || d->epfd < 0 || d->tfd < 0) {
        *err = d->ring ? -errno : -ENOMEM;
        dp_delay_close(d);
        return NULL;
    }
    *err = watch(d->epfd, d->tfd);
    if (!*err && inner_fd >= 0)
        *err = watch(d->epfd, inner_fd);
    if (*err) {
        dp_delay_close(d);
        return NULL;
    }
    return d;
}

int dp_delay_fd(const struct dp_delay *d)
{
    return d->epfd;
}

unsigned dp_delay_held(const struct dp_delay *d)
{
    return d->n;
}

int dp_delay_due(const struct dp_delay *d)
{
    return d->n && d->ring[d->head].due <= now_ns();
}

unsigned dp_delay_release(struct dp_delay *d, struct dp_cqe *out, unsigned max)
{
    uint64_t now = d->n ? now_ns() : 0;
    unsigned k = 0;

    while (k < max && d->n && d->ring[d->head].due <= now) {
        out[k++] = d->ring[d->head].cqe;
        d->head = (d->head + 1) % d->cap;
        d->n--;
    }
    return k;
}

unsigned dp_delay_hold(struct dp_delay *d, struct dp_cqe *c, unsigned n)
{
    uint64_t due = now_ns() + d->delay_ns;
    unsigned kept = 0;

    for (unsigned i = 0; i < n; i++) {
        /* Never more held than requests can be outstanding; past that, pass it on. */
        if (++d->seen % d->every == 0 && d->n < d->cap) {
            d->ring[(d->head + d->n) % d->cap] = (struct held){c[i], due};
            d->n++;
        } else {
            c[kept++] = c[i];
        }
    }
    return kept;
}

int dp_delay_arm(struct dp_delay *d)
{
    struct itimerspec its = {0};
    uint64_t expirations;

    (void)!read(d->tfd, &expirations, sizeof(expirations)); /* EAGAIN when not fired */
    if (!d->n)
        return 0;
    if (dp_delay_due(d))
        return 1;
    its.it_value.tv_sec = (time_t)(d->ring[d->head].due / 1000000000ull);
    its.it_value.tv_nsec = (long)(d->ring[d->head].due % 1000000000ull);
    /* A deadline already past fires at once: no completion waits for a later wake-up. */
    if (timerfd_settime(d->tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0)
        return 1;
    return 0;
}
