"""relaxlab.relaxations."""
