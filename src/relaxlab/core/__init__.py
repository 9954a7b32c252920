"""relaxlab.core."""
