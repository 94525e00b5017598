"""Built-in backbones, registered with timm (entry-point group robustproto.backbones)."""
