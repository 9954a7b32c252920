"""relaxlab.engine."""
