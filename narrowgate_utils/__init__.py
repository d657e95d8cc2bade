"""narrowgate: a reproduction toolkit for "The Narrow Gate" (Serra et al., arXiv 2412.06646)."""
from .layout import Batch, TokenLayout

__version__ = "0.1.0"
__all__ = ["Batch", "TokenLayout", "__version__"]
