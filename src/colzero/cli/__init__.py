"""The ``colzero`` command line."""
