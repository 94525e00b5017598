"""Built-in robustproto plugins, registered only through entry points."""
