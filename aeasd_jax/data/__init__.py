"""Audio, DCASE layouts, log-mel features, their cache, and training windows.

The bottom of the library: it knows files and arrays, nothing of models.
"""
