"""Mosaic's consent service: the consent ledger, and whether a use of a person's data is allowed."""
