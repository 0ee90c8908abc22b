"""The per-request work of a dataplane thread: the Python reference and the C datapath."""
