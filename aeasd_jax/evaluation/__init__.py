"""Evaluating a trained workdir: scores and decisions of the dev and eval sets,
the result files every DCASE year's tools read, plots, and new recordings.
"""
