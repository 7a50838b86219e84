"""Training, evaluation and animation on top of the iwarp model library.

`iwarp train | evaluate | animate` (see `iwarp.training.cli`); the loop talks to experiment
tracking only through `iwarp.training.loggers.Logger`, so MLflow stays outside `iwarp/`.
"""
