"""relaxlab.discovery."""
