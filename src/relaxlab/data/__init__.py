"""relaxlab.data."""
