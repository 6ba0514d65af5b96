"""NAT traversal, sans-IO: candidates, the rendezvous client, connectivity checks (punching)."""
