"""What every CLI command module shares: the lazily loaded config and repository, and the
journal entry each changing command writes (output is markship.cli.output's)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from markship import osuser
from markship.config import model as config_mod
from markship.config.model import Config
from markship.repository.backends import location_of, open_repository
from markship.repository.base import Repository


class Context:
    def __init__(self, config_path: str | None) -> None:
        from markship.repository.journal import invoking_user

        self.config_path = config_path
        self._config: Config | None = None
        self.user = invoking_user()  # before markship switches to the repository's OS user
        self.journal_objects: dict[str, str] = {}

    def note(self, **objects: object) -> None:
        """Object ids for this command's journal entry (set=…, mark=…)."""
        self.journal_objects.update({k: str(v) for k, v in objects.items()})

    def journal(self, command: str, outcome: str) -> None:
        """Append this command's entry; a journal that cannot be written is a warning.

        A command that failed because its config cannot be read has no repository to record
        into: its own error line says so, the same words again as a warning would not help."""
        from markship.errors import ConfigError, MarkshipError
        from markship.repository import journal

        if outcome.startswith("failed"):
            try:
                self.config  # noqa: B018 - loads it, raising what the command already reported
            except ConfigError:
                return
        try:
            journal.append(self.repository(), command, outcome, user=self.user,
                           objects=self.journal_objects)
        except ConfigError:
            return  # no repository to write to; the command's own error says why
        except MarkshipError as exc:
            click.echo(f"markship: warning: not recorded in the journal: {exc.one_line()}",
                       err=True)

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = config_mod.load(self.config_path)
        return self._config

    def repository(self) -> Repository:
        """Load the config, become the repository's OS user, open the repository."""
        osuser.switch_to(self.config.repository.os_user)
        return self.reading_repository()

    def reading_repository(self) -> Repository:
        """The repository, opened as the user markship runs as: for commands that only read
        it (so no object gets another owner) and still need root afterwards (e.g. to give
        restored files their owners back)."""
        encryption = self.config.encryption
        if encryption is None:
            return open_repository(location_of(self.config.repository))
        return open_repository(location_of(self.config.repository), [encryption.recipient],
                               encryption.identity_file, encryption.catalog_key_file)


pass_context = click.make_pass_decorator(Context)

_F = TypeVar("_F", bound=Callable[..., Any])


def journaled(name: str) -> Callable[[_F], _F]:
    """Record the command in the journal with its outcome (the function takes Context first).

    Put it below @pass_context. A failure is recorded and then raised as before: a
    MarkshipError with its message, anything else (a defect of markship) with its type, so
    that no change goes unrecorded however the command ended."""
    from markship.errors import MarkshipError

    def wrap(func: _F) -> _F:
        @functools.wraps(func)
        def inner(ctx: Context, *args: Any, **kwargs: Any) -> Any:
            try:
                result = func(ctx, *args, **kwargs)
            except MarkshipError as exc:
                ctx.journal(name, f"failed: {exc.message}")
                raise
            except SystemExit as exc:
                ctx.journal(name, "ok" if not exc.code else f"failed: exit status {exc.code}")
                raise
            except click.ClickException as exc:
                ctx.journal(name, f"failed: {exc.format_message()}")
                raise
            except Exception as exc:
                ctx.journal(name, f"failed: unexpected {type(exc).__name__}: {exc}"[:500])
                raise
            ctx.journal(name, "ok")
            return result

        return inner  # type: ignore[return-value]

    return wrap
