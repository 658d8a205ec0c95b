"""Speed benchmarks of aeasd_jax and its peers; not in the installed package.

Run them as scripts, e.g. python benchmarks/train_speed.py; see RESULTS.md.
"""
