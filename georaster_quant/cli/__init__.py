"""The ``georaster-quant`` command line: one module per command, shared options in ``options``."""
