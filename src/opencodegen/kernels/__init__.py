"""Native CPU kernels for the spots where PyTorch's own are slow; `cpu_decode` is where the model picks them."""
