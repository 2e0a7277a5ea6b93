"""Separation methods (one module per method) and the shared pieces they are built from."""
