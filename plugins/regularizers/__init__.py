"""Built-in regularizers (entry-point group robustproto.regularizers)."""
