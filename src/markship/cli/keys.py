"""`markship key …`: the repository key (create, status, export/import, rotate) and the catalog
key production hosts read the catalog with."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from markship.cli import output
from markship.cli.context import Context, journaled, pass_context
from markship.errors import MarkshipError


@click.group("key")
def key_group() -> None:
    """The repository encryption key (age) and the catalog key: create, back up, rotate, check."""


@key_group.command("create")
@click.option("--identity-file", "path", required=True, type=click.Path(path_type=Path),
              help="Where to write the new identity (mode 0600; never overwritten).")
@pass_context
def key_create(ctx: Context, path: Path) -> None:
    """Create a new key: writes the identity file, prints the recipient for [encryption]."""
    from markship.config.file import locate
    from markship.errors import ConfigError
    from markship.repository.keys import create_identity

    created = create_identity(path)
    try:
        locate(ctx.config_path)  # a group to record it for (the first key may come before)
    except ConfigError:
        pass
    else:
        ctx.note(fingerprint=created.fingerprint, identity_file=created.path)
        ctx.journal("key create", "ok")
    click.echo(f"✓ key {created.fingerprint} written to {created.path} (mode 0600)\n"
               f"  put this in the config:\n\n[encryption]\n"
               f'recipient = "{created.recipient}"\n'
               f'identity_file = "{created.path}"   # only where restores run\n\n'
               "  keep a copy of the identity file off this host: without it no backup can "
               "be read\n  production hosts read the catalog with a catalog key: "
               "markship key catalog --to FILE")


@key_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def key_status_cmd(ctx: Context, as_json: bool) -> None:
    """Fingerprint of the repository key, whether the identity file opens it, and whether a
    backup of the key (key export) was recorded."""
    from markship.repository.keys import key_status

    status = key_status(ctx.config, ctx.repository())
    output.writer(as_json).key_status(status)
    if status.encrypted and status.problem:
        raise MarkshipError(status.problem, "fix the key file named above")


def _identity_path(ctx: Context, given: Path | None, what: str) -> Path:
    """--identity-file, else [encryption] identity_file; `what` names the use in the error."""
    encryption = ctx.config.encryption
    path = given or (encryption.identity_file if encryption else None)
    if path is None:
        raise MarkshipError(f"no identity file {what}",
                            "pass --identity-file, or set [encryption] identity_file")
    return path


def _passphrase(path: Path | None, confirm: bool) -> str:
    """From --passphrase-file (first line), else asked on the terminal; never an argument."""
    if path is not None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise MarkshipError(f"cannot read the passphrase file {path} ({exc.strerror})",
                                "give a readable file holding the passphrase") from None
        return text.splitlines()[0] if text else ""
    if not sys.stdin.isatty():
        raise MarkshipError("no terminal to ask for the passphrase",
                            "pass --passphrase-file FILE")
    return str(click.prompt("passphrase", hide_input=True, confirmation_prompt=confirm))


PASSPHRASE_FILE = click.option("--passphrase-file", type=click.Path(path_type=Path),
                               help="Read the passphrase from this file instead of asking.")


@key_group.command("catalog")
@click.option("--to", "target", required=True, type=click.Path(path_type=Path),
              help="The catalog key file to write (mode 0600; never overwritten).")
@pass_context
@journaled("key catalog")
def key_catalog(ctx: Context, target: Path) -> None:
    """Write the catalog key file production hosts read the catalog with (status, list, marks,
    journal, the agent's checks; never backups): the group's key, from the repository's copy
    where the identity is, or a new key when the group has none."""
    from markship.repository.encrypted import Encrypted
    from markship.repository.keys import catalog_key_file

    reading = ctx.reading_repository()  # as root: the file gets the repository user's name
    if not isinstance(reading, Encrypted):
        raise MarkshipError("the repository is not encrypted (no [encryption] in the config)",
                            "a catalog key belongs to an encrypted repository")
    created, new = catalog_key_file(reading, target, owner=ctx.config.repository.os_user)
    if new:
        repo = ctx.repository()
        assert isinstance(repo, Encrypted)
        repo.store_catalog_key(target.read_text())
    ctx.note(catalog_fingerprint=created.fingerprint, to=target, new=new)
    made = "new catalog key" if new else "the group's catalog key"
    click.echo(f"✓ {made} {created.fingerprint} written to {target} (mode 0600)\n"
               "  on every production host, copy it and set in [encryption]:\n\n"
               f'  catalog_key_file = "{target}"\n\n'
               "  records written from now on open with it; backups and WAL never do")


@key_group.command("export")
@click.option("--to", "target", required=True, type=click.Path(path_type=Path),
              help="The export file to write (age, passphrase-protected); FILE.hint is "
                   "written beside it.")
@click.option("--hint", required=True, help="A reminder of the passphrase, stored in clear.")
@PASSPHRASE_FILE
@click.option("--identity-file", type=click.Path(path_type=Path),
              help="The identity to export (default: [encryption] identity_file).")
@pass_context
@journaled("key export")
def key_export(ctx: Context, target: Path, hint: str, passphrase_file: Path | None,
               identity_file: Path | None) -> None:
    """Back up the repository key: a passphrase-protected copy plus a hint; the repository
    records (by fingerprint) that the backup exists."""
    from markship.repository.keys import export_key

    path = _identity_path(ctx, identity_file, "to export")
    secret = _passphrase(passphrase_file, confirm=True)
    record = export_key(ctx.repository(), path, target, secret, hint)
    ctx.note(fingerprints=",".join(record.fingerprints), to=target)
    click.echo(f"✓ key {', '.join(record.fingerprints)} exported to {target} (hint in "
               f"{target.name}.hint); keep both off this host, apart from the passphrase")


@key_group.command("import")
@click.option("--from", "source", required=True, type=click.Path(path_type=Path),
              help="The file `markship key export` wrote.")
@PASSPHRASE_FILE
@click.option("--identity-file", type=click.Path(path_type=Path),
              help="Where to write the identity (default: [encryption] identity_file).")
@pass_context
@journaled("key import")
def key_import(ctx: Context, source: Path, passphrase_file: Path | None,
               identity_file: Path | None) -> None:
    """Restore the repository key from an export (on the DR site, before anything else):
    shows the hint, asks for the passphrase, checks the key's fingerprint."""
    from markship.repository.keys import import_key, read_hint

    encryption = ctx.config.encryption
    target = _identity_path(ctx, identity_file, "to write")
    hint = read_hint(source)
    click.echo(f"hint: {hint}" if hint else "no hint file beside the export", err=True)
    secret = _passphrase(passphrase_file, confirm=False)
    fingerprints = import_key(encryption.recipient if encryption else None, source, secret,
                              target, owner=ctx.config.repository.os_user)
    ctx.note(fingerprints=",".join(fingerprints), identity_file=target)
    click.echo(f"✓ key {', '.join(fingerprints)} written to {target} (mode 0600)")


@key_group.command("rotate")
@click.option("--identity-file", type=click.Path(path_type=Path),
              help="The identity file (default: [encryption] identity_file).")
@pass_context
@journaled("key rotate")
def key_rotate(ctx: Context, identity_file: Path | None) -> None:
    """New key for new objects: adds a new identity at the top of the identity file and keeps
    the old ones, so everything written before stays readable. Prints the new recipient."""
    from markship.repository.keys import rotate

    created = rotate(_identity_path(ctx, identity_file, "to rotate"))
    ctx.note(new_fingerprint=created.fingerprint)
    click.echo(f"✓ new key {created.fingerprint} added to {created.path}; the old keys stay in it\n"
               f"  now set in the config of every host:\n\n"
               f'  recipient = "{created.recipient}"\n\n'
               "  then run markship key export again: older exports lack the new key")


COMMANDS = [key_group]
