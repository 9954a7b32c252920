"""An example relaxlab plugin distribution."""
