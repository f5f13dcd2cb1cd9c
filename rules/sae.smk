# Sparse autoencoders on per-token activations (issue 3).
