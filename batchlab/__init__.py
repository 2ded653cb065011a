"""batchlab: how inference time scales with batch size, measured and explained."""

__version__ = "0.1.0"
