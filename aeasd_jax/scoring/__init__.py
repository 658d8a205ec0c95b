"""Anomaly scores: clips scored by reconstruction or Mahalanobis distance,
per group of models, with the thresholds that turn scores into decisions.
"""
