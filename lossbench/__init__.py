"""lossbench: does a custom loss train exactly like PyTorch's, and what does it cost?

The library: model, losses and references, data, determinism, config, training
and timing, evidence (trajectory, gradients, weights), comparison across
commits. The DVC stages in ``stages/`` are thin entry points over it. Nothing
here runs at import.
"""
