"""Helpers shared by the test modules: groups of real servers and markship's command line
(servers), data written and compared (fingerprints, workloads, filesets), process control for
fault injection (processes), the checks tests end with (checks), and the reliability-table
plugin (reliability)."""
