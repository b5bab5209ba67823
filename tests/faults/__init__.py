"""The fault-injection suite: killed processes, broken repositories and configs, each case a
row of docs/reliability.md."""
