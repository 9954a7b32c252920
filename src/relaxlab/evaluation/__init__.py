"""relaxlab.evaluation."""
