"""Native CPU kernels for the spots where PyTorch's own are measurably slow (see each module)."""
