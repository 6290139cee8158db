"""The controller: reconcile loop, executor, health monitor. Talks to hosts only through the
Agent protocol (model/agent.py)."""
