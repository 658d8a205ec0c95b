"""AUC and pAUC, each DCASE year's official score, and tables built from them.

Pure functions of scores and labels: they read no files and know no model.
"""
