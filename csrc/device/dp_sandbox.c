#define _GNU_SOURCE /* CLONE_THREAD */
#include "dp_sandbox.h"

#include <errno.h>
#include <sched.h>
#include <string.h>

#include <seccomp.h>

int dp_sandbox_load(const char *const *names, unsigned n, int log, int tsync, int *bad)
{
    scmp_filter_ctx ctx;
    int clone_nr = seccomp_syscall_resolve_name("clone");
    int rc = 0;

    if (bad)
        *bad = -1;
    ctx = seccomp_init(log ? SCMP_ACT_LOG : SCMP_ACT_KILL_PROCESS);
    if (!ctx)
        return -ENOMEM;
    if (tsync && (rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1)) < 0)
        goto out;
    /* A binary tree over the call numbers rather than one long chain of compares; calls
     * allowed whatever their arguments also land in the kernel's per-filter allow cache. */
    (void)seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2);
    for (unsigned i = 0; i < n; i++) {
        int nr = seccomp_syscall_resolve_name(names[i]);

        if (nr == __NR_SCMP_ERROR) {
            if (bad)
                *bad = (int)i;
            rc = -EINVAL;
            goto out;
        }
        if (nr == clone_nr)
            rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1,
                                  SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD));
        else
            rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0);
        if (rc < 0)
            goto out;
    }
    /* clone3's flags sit behind a pointer no filter reads: glibc falls back to clone. */
    rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), seccomp_syscall_resolve_name("clone3"), 0);
    if (rc < 0 && rc != -EEXIST)
        goto out;
    rc = seccomp_load(ctx);
out:
    seccomp_release(ctx);
    return rc < 0 ? rc : 0;
}
