"""What a workdir holds: its files, their formats, its lock, checkpoints, log.

Paths and file formats only; putting weights into a training state is
training's job, so this folder imports nothing from training/.
"""
