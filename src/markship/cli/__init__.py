"""The command line: one module per command group, shared context and output."""
