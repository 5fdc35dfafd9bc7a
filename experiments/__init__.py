"""Plugin experiments: one file per experiment, each registered under the `oversight.experiments` entry points."""
