"""Mosaic's profile service: one unified profile per customer, with its whole history."""
