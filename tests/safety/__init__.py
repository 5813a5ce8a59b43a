"""The safety suite: every way the daemon could destroy what it does not own, run against the
real daemon on real loop devices and mounts, asserting the data is intact afterwards."""
