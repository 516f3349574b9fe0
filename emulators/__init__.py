"""Local stand-ins for the cloud services the pipeline delivers to, for tests and local runs.

Nothing here is used by a deployed pipeline; each emulator binds to loopback by default and uses
throwaway credentials.
"""
