"""Fitting DVR to posed images: configuration, trainer, checkpoints, the fitting pipeline."""
