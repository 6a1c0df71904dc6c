"""study: distributed hyperparameter studies of top-down attention in LeNet-style networks."""

__version__ = "0.1.0"
