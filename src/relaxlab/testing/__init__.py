"""relaxlab.testing."""
