"""Delivery: package (data, codebook, manifest, signature), age encryption, transports, verification."""
