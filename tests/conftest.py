"""Shared test settings."""

import torch

# One intra-op thread: on a 2-core machine two processes that each spin 2 OpenMP threads slow
# each other down by an order of magnitude; the tests' tensors are small anyway.
torch.set_num_threads(1)
