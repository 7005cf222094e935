"""weightspace: learning over the weights of trained networks."""

__version__ = "0.1.0"
