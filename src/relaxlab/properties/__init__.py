"""relaxlab.properties."""
