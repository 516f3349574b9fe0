"""Beam-free I/O clients: each talks to one real service and is tested against it (or its
emulator); ``transforms/`` wraps them in Beam composites."""
