"""How instances run on a host: container (runc) or process. Only the agent uses this."""
