"""oversight: a JAX/Flax framework for scalable-oversight experiments."""

__version__ = "0.1.0"
