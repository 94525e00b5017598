"""Built-in heads (entry-point group robustproto.heads)."""
