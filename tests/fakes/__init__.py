"""Stand-ins for outside services, run on loopback in tests."""
