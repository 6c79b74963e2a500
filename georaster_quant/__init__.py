"""georaster_quant: quantized scene classification of large multispectral rasters on CPUs.

Importing the package is cheap: torch and onnxruntime load only when a model is used.
"""

__version__ = "0.1.0"
