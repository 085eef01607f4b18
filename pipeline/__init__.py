"""CNN codes: cache frozen-backbone features once, train classifier heads on them in seconds."""
__version__ = "0.1.0"
