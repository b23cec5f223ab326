"""The version of genlab (genlab.__version__)."""
__version__ = "0.1.0"
