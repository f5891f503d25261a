"""Test-session settings.

The tests use tiny matrices, for which torch's intra-op thread pool only costs time (on a
busy 2-core machine a 24x10 matmul took ~15 ms with 2 threads and ~6 us with 1), so the
whole suite runs single-threaded. Results do not depend on it.
"""
import torch

torch.set_num_threads(1)
