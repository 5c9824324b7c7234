"""Mosaic's identity service: who is who."""
