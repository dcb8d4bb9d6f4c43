"""lossbench: does a custom loss train exactly like PyTorch's, and what does it cost?

Each module under stages/ is either a DVC stage (a thin ``main()``) or a small
library it uses. Nothing here runs at import.
"""
