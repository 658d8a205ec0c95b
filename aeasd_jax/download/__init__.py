"""`python -m aeasd_jax.download`: a DCASE Task 2 year, ready to train on.

Fetches, checks and unpacks the official archives (prepare.py).
"""
