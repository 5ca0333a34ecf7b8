"""Benchmarks of the plugin, the broker and fan-out, against their floor and peers.  See run.py."""
