"""Chaos tests of the relay (issue #11): kills, outages, full disks, faults, bad input."""
