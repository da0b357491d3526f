"""Training, evaluation sweeps and diagnostics of the embedded ``shapes-t2v`` / ``shapes-ar`` models.

Not part of the installed ``vidaccel`` package: run from a source checkout (``python -m training.train``,
``vidaccel train-embedded``, ``python -m training.evaluate``). Nothing here writes into the installed package
unless its output folder is given explicitly.
"""
