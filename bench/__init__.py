"""Benchmarks and the tooling that drives a running system from outside (also used by tests).

Not part of the installed package: the CLI's ``bench`` verbs import these modules lazily
from a repository checkout (:func:`interest_stream.core.benchmarks.load_bench`).
"""
