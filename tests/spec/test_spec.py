"""The spec floor (dataplane/spec) against its C twin (csrc/spec/dp_virtio.h) and its enums.

C and Python each write the virtio constants and the request-kind order once;
these tests hold the two copies, in both extensions, to the same values.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dataplane.device.c import ffi as device_ffi
from dataplane.device.c import lib as device_lib
from dataplane.guest.clib import lib as guest_lib
from dataplane.spec import blk, kinds, latency, ring, trace

BOTH = pytest.mark.parametrize("lib", [device_lib, guest_lib], ids=["device", "guest"])
U16S = st.integers(0, 0xFFFF)


@BOTH
def test_c_wire_constants_are_the_spec_floor(lib):
    names = [n for n in dir(blk) if n.startswith(("VIRTIO_BLK_T_", "VIRTIO_BLK_S_"))]
    names += ["VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP", "VIRTIO_BLK_ID_BYTES"]
    assert len(names) == 11
    for n in names:
        assert getattr(lib, n) == getattr(blk, n), n
    for n in [
        n for n in dir(ring) if n.startswith(("VRING_DESC_F_", "VRING_AVAIL_F_", "VRING_USED_F_"))
    ]:
        assert getattr(lib, n) == getattr(ring, n), n
    assert lib.VRING_DESC_SIZE == ring.DESC_SIZE == ring.DESC.size
    assert blk.HEADER.size == lib.VIRTIO_BLK_HEADER_SIZE
    assert blk.DWZ_SEGMENT.size == lib.VIRTIO_BLK_DWZ_SEGMENT_SIZE
    assert lib.VIRTIO_BLK_SECTOR_SIZE == blk.SECTOR_SIZE == trace.SECTOR


@BOTH
@given(event=U16S, new=U16S, old=U16S)
def test_c_vring_need_event_is_the_spec_floor(lib, event, new, old):
    assert bool(lib.vring_need_event(event, new, old)) == ring.vring_need_event(event, new, old)


def test_vring_need_event_wraps():
    # Entries 0xfffe, 0xffff and 0 published since old 0xfffe: an event at any of them is due.
    assert [ring.vring_need_event(e, 1, 0xFFFE) for e in (0xFFFD, 0xFFFE, 0xFFFF, 0, 1)] == [
        False,
        True,
        True,
        True,
        False,
    ]


def test_stats_kinds_in_c_are_the_kind_table():
    lib = device_lib
    c_order = [lib.DP_KIND_READ, lib.DP_KIND_WRITE, lib.DP_KIND_FLUSH, lib.DP_KIND_DISCARD]
    c_order += [lib.DP_KIND_WRITE_ZEROES, lib.DP_KIND_GET_ID, lib.DP_KIND_OTHER]
    assert c_order == list(range(len(kinds.TABLE)))
    assert [k.name for k in kinds.TABLE] == [
        "read", "write", "flush", "discard", "write_zeroes", "get_id", "other",
    ]  # fmt: skip
    assert len(kinds.STAT_KINDS) == lib.DP_STAT_KINDS
    assert len(device_ffi.new("struct dp_qstats *").requests) == len(kinds.STAT_KINDS)
    for t in range(64):
        assert lib.dp_stat_kind_of(t) == kinds.kind_of(t), t


def test_driver_kinds_in_c_are_the_trace_kinds():
    lib = guest_lib
    c_order = [lib.DP_DRV_READ, lib.DP_DRV_WRITE, lib.DP_DRV_FLUSH, lib.DP_DRV_DISCARD]
    c_order += [lib.DP_DRV_WRITE_ZEROES]
    assert c_order == list(range(len(trace.KINDS))) and len(trace.KINDS) == lib.DP_DRV_NKINDS
    assert kinds.STAT_KINDS[: len(trace.KINDS)] == trace.KINDS
    sent_as = [lib.dp_drv_blk_type(i) for i in range(len(trace.KINDS) + 1)]
    assert sent_as == [k.virtio_type for k in kinds.TABLE[: len(trace.KINDS)]] + [2**32 - 1]
    assert trace.LETTERS == "RWFDZ"


def test_kind_table_maps_every_type_once():
    types = [k.virtio_type for k in kinds.TABLE if k.virtio_type is not None]
    assert sorted(types) == sorted(blk.TYPE_NAMES)
    assert kinds.kind_of(99) == kinds.KIND_OTHER and kinds.trace_kind_of(99) is None
    assert kinds.trace_kind_of(blk.VIRTIO_BLK_T_GET_ID) is None
    assert kinds.trace_kind_of(blk.VIRTIO_BLK_T_WRITE_ZEROES) == 4


def test_ring_sizes():
    assert ring.desc_table_size(256) == 4096
    assert ring.avail_ring_size(256) == 4 + 512 + 2
    assert ring.used_ring_size(256) == 4 + 2048 + 2
    assert ring.avail_ring_slot(4, 5) == 4 + 2 and ring.used_ring_slot(4, 5) == 4 + 8


@BOTH
@given(st.integers(0, 2**64 - 1), st.sampled_from([2, 6]))
def test_c_loglin_buckets_are_the_spec_floor(lib, v, sub_bits):
    i = lib.dp_loglin_index(v, sub_bits)
    assert i == latency.bucket_index(v, sub_bits)
    low, high = latency.bucket_range(i, sub_bits)
    assert low <= v < high


def test_layer_table_is_the_c_one():
    assert len(latency.HOST_LAYERS) == device_lib.DP_LAT_LAYERS
    assert device_lib.DP_LAYER_SUB_BITS == latency.LAYER_SUB_BITS
    assert latency.HOST_LAYERS.index("used_notify") == device_lib.DP_LAT_USED_NOTIFY
    # The guest's layers: its publish, then kick -> pop in place of the device's
    # wake -> pop, the device's others in order, then notify -> reap.
    assert latency.GUEST_LAYERS[2:-1] == latency.HOST_LAYERS[1:]
    # A log-linear bucket never straddles a power of two: its log2 projection is exact.
    for i in range(200):
        low, high = latency.bucket_range(i, latency.LAYER_SUB_BITS)
        assert low.bit_length() == (high - 1).bit_length()


def test_percentile_interpolates_inside_buckets():
    sub = latency.LAYER_SUB_BITS
    buckets: dict[int, int] = {}
    for v in range(1000, 101000, 1000):
        b = latency.bucket_index(v, sub)
        buckets[b] = buckets.get(b, 0) + 1
    assert latency.percentile(buckets, 50, sub) == pytest.approx(50_000, rel=0.15)
    assert latency.percentile(buckets, 99, sub) == pytest.approx(99_000, rel=0.15)
    assert latency.percentile({}, 50, sub) is None
    assert latency.clock_delta(5, 2**64 - 3) == 8 and latency.clock_delta(2**64 - 3, 5) == -8
