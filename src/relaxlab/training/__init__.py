"""relaxlab.training."""
