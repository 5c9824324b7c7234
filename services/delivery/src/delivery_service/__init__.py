"""Mosaic's delivery service: sends to other systems when profiles enter segments, with consent."""
