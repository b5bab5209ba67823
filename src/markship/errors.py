"""One exception hierarchy. The CLI turns each into one clear line and an exit code."""

from __future__ import annotations


class MarkshipError(Exception):
    """A failure the user can act on: `message` says what is wrong, `hint` what to do."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The message and the hint on a single line, as the CLI prints it."""
        text = self.message.rstrip(".")
        return f"{text}: {self.hint}" if self.hint else text


class ConfigError(MarkshipError):
    """The configuration file is missing, unreadable or invalid."""

    exit_code = 2


class RepositoryError(MarkshipError):
    """The repository cannot be read or written as needed."""


class ObjectMissing(RepositoryError):
    """An object the catalog refers to is not in the repository."""


class CorruptObject(RepositoryError):
    """A stored object does not match its recorded checksum."""


class ConflictError(RepositoryError):
    """An object exists with different content; the stored one is kept."""


class LockedError(MarkshipError):
    """Another markship job holds the lock this job needs."""


class ServerError(MarkshipError):
    """A PostgreSQL server is unreachable or refused what markship asked."""


class BackupError(MarkshipError):
    """A base backup failed."""


class RestoreError(MarkshipError):
    """A restore cannot be done or failed."""


class KeyProblem(MarkshipError):
    """An encryption key is missing, unreadable, or does not open an object."""

    exit_code = 2


def first_line(exc: BaseException) -> str:
    """What to show of any exception on one line: a MarkshipError's message and hint, else the
    first line of its text, else its type's name (psycopg and OS errors can run to pages)."""
    if isinstance(exc, MarkshipError):
        return exc.one_line()
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
