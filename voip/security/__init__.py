"""Keys and their use: what a caller agrees with its rendezvous, and (next) with its peer."""
