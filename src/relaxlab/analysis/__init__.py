"""relaxlab.analysis."""
