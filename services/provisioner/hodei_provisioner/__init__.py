"""The provisioner service: creates workers through providers, exchanges bootstrap tokens,
and destroys workers once they are done."""
