"""The agent (`markship run`), its control socket and its event log."""
