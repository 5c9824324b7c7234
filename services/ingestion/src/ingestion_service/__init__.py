"""Mosaic's ingestion service: the front door for customer events."""
