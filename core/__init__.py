"""The pure core of the activation pipeline.

Nothing in this package imports Apache Beam: the condition language, per-user evaluation, window
arithmetic, file naming, CSV rows and message building live here so that the streaming pipeline, the
batch replay and the tests share one implementation.
"""
