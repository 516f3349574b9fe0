"""I/O clients without Beam composites: each talks to one real service and is tested against it
(or its emulator); ``transforms/`` wraps them in Beam composites that make them in ``setup()``.
Local files go through Beam's ``FileSystems`` (:mod:`transforms.outputs`), as every output does."""
