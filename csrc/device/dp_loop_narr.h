/*
 * The wording of a dataplane thread's --trace-requests narrative, in the words
 * of dataplane/device/narrate.py: the ring's steps as dp_vq reports them
 * (pop, descriptors, the notify decision) and the loop's own (dp_loop.c).
 */
#ifndef DP_LOOP_NARR_H
#define DP_LOOP_NARR_H

#include <stdint.h>

#include "dp_vq.h"

struct dp_thread;
struct dp_req;

/* The ring's steps in words, into the struct dp_narr given as the events' ctx. */
extern const struct dp_vq_events dp_loop_ring_narrator;

/* A narrated pop: its request number, or 0 (its lines dropped) once the budget ran out. */
uint32_t dp_loop_narrate_pop(struct dp_thread *t, unsigned index);
void dp_loop_narrate_parsed(struct dp_thread *t, unsigned index, const struct dp_req *r);
void dp_loop_narrate_submitted(struct dp_thread *t);
void dp_loop_narrate_complete(struct dp_thread *t, unsigned index, const struct dp_req *req,
                              int64_t result, int has_result, uint16_t used_at);
void dp_loop_narrate_released(struct dp_thread *t, unsigned index, const struct dp_req *req);
/* The notify decision of a publication that followed a traced completion, and the signal. */
void dp_loop_narrate_notify(struct dp_thread *t, unsigned index, int need);

#endif
