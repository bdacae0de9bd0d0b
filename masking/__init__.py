"""Masking: master and contract keys, canonicalisers, keyed pseudonyms, column treatments."""
