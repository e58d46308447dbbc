"""batchml: distributed batch scoring and monitoring of image classifiers."""

__version__ = "0.1.0"
