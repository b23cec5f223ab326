"""Training: the shared loop (loop.py) and one small step file per family (vae.py, ...)."""
