"""sslbench: self-supervised pretraining benchmark suite."""
__version__ = "0.1.0"
