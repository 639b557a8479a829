"""sslseg: what self-supervised pretraining buys a segmentation model at each label budget."""

__version__ = "0.1.0"
