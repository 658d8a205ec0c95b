"""The networks as Flax NNX modules, and the registry that picks one by name."""
