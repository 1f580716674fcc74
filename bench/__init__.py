"""faceapp's benchmark: ``python -m bench.run`` (``make bench``); not a test suite.

It prints ratios measured within one run (A and B interleaved, medians of repeats), never
absolute pass/fail thresholds: the machines it runs on are shared and noisy.
"""
