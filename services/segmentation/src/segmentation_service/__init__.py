"""Mosaic's segmentation service: who is in which segment, kept up to date in real time."""
