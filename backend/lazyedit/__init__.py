"""lazyedit: interactive local image editing whose cost follows the mask, not the image."""

__version__ = "0.1.0"
