"""Which writer renders a command's result: JSON for --json (markship.cli.jsonoutput), text
for a person (markship.cli.textoutput)."""

from __future__ import annotations

from markship.cli.jsonoutput import JsonOutput
from markship.cli.textoutput import TextOutput

__all__ = ["JsonOutput", "TextOutput", "writer"]


def writer(as_json: bool) -> TextOutput:
    """The JSON writer for --json, else the one for a person."""
    return JsonOutput() if as_json else TextOutput()
