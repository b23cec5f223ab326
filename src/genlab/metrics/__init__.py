"""Metrics: the dataset classifier (classifier.py) and likelihood bounds (elbo.py)."""
