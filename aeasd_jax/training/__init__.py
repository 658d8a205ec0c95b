"""Training: the state and the pure step, the fused kernels, placement on the
mesh, the epoch loop, and the checks a run passes before it starts.
"""
