"""The `dicomflow` command: serve, import, processors."""

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dicomflow import __version__
from dicomflow.kernel.settings import Settings, get_settings

# soft_wrap: report lines (file paths) are never broken, so that logs can be grepped.
console = Console(soft_wrap=True)


def cmd_serve(args: argparse.Namespace) -> int:
    from dicomflow.roles import ALL_ROLES, configure_logging, run_role, serve_lock, supervise

    settings = get_settings()
    settings.check_secrets()
    configure_logging(settings)
    if args.role in (None, "ingest") and not _dicom_access_is_valid(settings):
        return 2
    if args.role in (None, "api"):
        _announce_http_access(settings)
    if args.role:
        if args.group and not args.role.startswith("processor:"):
            console.print("[red]--group needs a single processor role (--role processor:NAME)[/]")
            return 2
        run_role(args.role, group=args.group)
        return 0
    with serve_lock(settings.data_dir) as locked:
        if not locked:
            console.print(
                f"[red]another `dicomflow serve` already uses {settings.data_dir.resolve()}[/]"
            )
            return 1
        console.print(f"[bold]dicomflow {__version__}[/] serving")
        console.print(
            f"  DICOM SCP   AE title {settings.ae_title} on "
            f"{settings.dicom_host}:{settings.dicom_port} "
            "(C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET)"
        )
        if settings.dicom_tls_port:
            console.print(f"  DICOM TLS   on {settings.dicom_host}:{settings.dicom_tls_port}")
        console.print(
            f"  HTTP API    http://{settings.http_host}:{settings.http_port}/ "
            "(DICOMweb /dicomweb, search /api/search, docs /docs, health /healthz)"
        )
        console.print(
            f"  back ends   bus={settings.bus} index={settings.index} blobs={settings.blobs}"
        )
        console.print(f"  data        {settings.data_dir.resolve()}")
        console.print("  stop with Ctrl-C or SIGTERM")
        sys.stdout.flush()
        code = supervise(list(ALL_ROLES), settings)
        console.print("dicomflow stopped")
        return code


def _announce_http_access(settings: Settings) -> None:
    """Print the admin token made at the first start (once: only its hash is kept), or warn
    that the HTTP API is open (DICOMFLOW_HTTP_AUTH=false, dev mode only)."""
    from dicomflow.api.authn import check_auth_settings, first_start_admin_token
    from dicomflow.kernel.backends import open_blob_store

    check_auth_settings(settings)
    if not settings.http_auth:
        console.print(
            "[bold red]  HTTP API IS OPEN: DICOMFLOW_HTTP_AUTH=false (dev mode) lets anyone read "
            "identified data and administer this archive[/]"
        )
        return
    blobs = open_blob_store(settings)
    try:
        token = first_start_admin_token(settings, blobs)
    finally:
        blobs.close()
    if token is None:
        return
    host = "localhost" if settings.http_host in ("0.0.0.0", "::") else settings.http_host  # noqa: S104
    base = f"http://{host}:{settings.http_port}"
    console.print(
        "  admin token created at first start; it is shown this once (only its hash is kept),\n"
        "  keep it safe and make tokens for others with `dicomflow token create`:\n"
        f"    {token}\n"
        f'    curl -H "Authorization: Bearer {token}" {base}/api/status\n'
        f"    web UI: {base}/ui/login (paste the token)",
        markup=False,
        highlight=False,
    )


def audit_cli_change(settings: Settings, detail: str) -> None:
    """An administrative change made on this host's command line, in the audit trail."""
    import getpass
    import socket

    from dicomflow.kernel.audit import AuditAction, AuditEvent, open_audit_trail
    from dicomflow.kernel.backends import open_bus

    bus = open_bus(settings)
    trail = open_audit_trail(settings, bus)
    try:
        trail.record(
            AuditEvent(
                action=AuditAction.ADMIN_CHANGE,
                user=getpass.getuser(),
                source=socket.gethostname(),
                channel="cli",
                target="dicomflow token",
                detail=detail,
            )
        )
    finally:
        trail.close()
        bus.close()


def cmd_token(args: argparse.Namespace) -> int:
    """API tokens: create (printed once), list, revoke."""
    from dicomflow.api.tokens import InvalidTokenRequest, TokenRegistry
    from dicomflow.kernel.backends import open_blob_store

    settings = get_settings()
    blobs = open_blob_store(settings)
    try:
        registry = TokenRegistry(blobs)
        if args.action == "create":
            try:
                token, record = registry.create(args.name, args.role)
            except InvalidTokenRequest as exc:
                console.print(f"[red]{exc}[/]")
                return 2
            audit_cli_change(settings, f"created API token {record.id} ({record.name})")
            console.print(
                f"created token {record.id} ({record.name}; {', '.join(record.roles)}); "
                "it is shown this once:"
            )
            console.print(token, markup=False, highlight=False)
            return 0
        if args.action == "revoke":
            if registry.revoke(args.id):
                audit_cli_change(settings, f"revoked API token {args.id}")
                console.print(f"revoked token {args.id}")
                return 0
            console.print(f"[red]no token {args.id}[/]")
            return 1
        table = Table("id", "name", "roles", "created", "last used")
        for record in registry.list():
            table.add_row(
                record.id,
                record.name,
                ", ".join(record.roles),
                record.created_at.isoformat(timespec="seconds"),
                record.last_used_at.isoformat(timespec="seconds") if record.last_used_at else "",
            )
        console.print(table)
        return 0
    finally:
        blobs.close()


def _dicom_access_is_valid(settings: Settings) -> bool:
    """Check the AE allowlists and TLS files before any process starts (clear message)."""
    from dicomflow.ingest.access import AccessPolicy
    from dicomflow.ingest.exceptions import AccessConfigError
    from dicomflow.ingest.scp import tls_context

    try:
        AccessPolicy.from_settings(settings)
        tls_context(settings)
    except AccessConfigError as exc:
        console.print(f"[red]{exc}[/]")
        return False
    return True


def cmd_processors(args: argparse.Namespace) -> int:
    from dicomflow.processors.plugins import plugin_manager, processor_classes

    settings = get_settings()
    manager = plugin_manager(settings.plugins)
    classes = processor_classes(manager)
    enabled = {n.strip() for n in settings.processors.split(",") if n.strip()} or set(classes)
    table = Table("name", "topics", "module", "enabled", "description")
    for name, cls in classes.items():
        table.add_row(
            name,
            ", ".join(str(t) for t in cls.topics),
            cls.__module__,
            "yes" if name in enabled else "no",
            cls.description,
        )
    console.print(table)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from dicomflow.ingest.importer import run_import
    from dicomflow.roles import wait_until_processed

    settings = get_settings()
    report = run_import(
        settings,
        [Path(p) for p in args.paths],
        workers=args.workers,
        console=console,
        after_receive=None if args.no_wait else lambda p: wait_until_processed(settings, p),
    )
    return 0 if report.errors == 0 else 2


def cmd_bench(args: argparse.Namespace) -> int:
    from dicomflow.bench.main import run_bench

    return run_bench(args.bench_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicomflow",
        description="A DICOM archive built as an event-driven streaming pipeline.",
    )
    parser.add_argument("--version", action="version", version=f"dicomflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the archive (SCP, processors, API)")
    serve.add_argument(
        "--role",
        help="run one role alone: ingest, processors, processor:NAME or api (default: all)",
    )
    serve.add_argument(
        "--group",
        help="consumer group of a single processor role (a new group replays from the start, "
        "e.g. to rebuild an index)",
    )
    serve.set_defaults(func=cmd_serve)

    token = sub.add_parser("token", help="API tokens of the HTTP API: create, list, revoke")
    token_sub = token.add_subparsers(dest="action", required=True)
    create = token_sub.add_parser("create", help="create a token (printed once)")
    create.add_argument("--name", required=True, help="who or what uses it (in the audit trail)")
    create.add_argument(
        "--role",
        action="append",
        required=True,
        help="deid-reader, phi-reader, uploader or admin (repeat for several)",
    )
    token_sub.add_parser("list", help="list the tokens (never the tokens themselves)")
    revoke = token_sub.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("id", help="the token's id (from `dicomflow token list`)")
    token.set_defaults(func=cmd_token)

    processors = sub.add_parser("processors", help="list the installed processors")
    processors.set_defaults(func=cmd_processors)

    imp = sub.add_parser("import", help="bulk-import folders of DICOM files")
    imp.add_argument("paths", nargs="+", help="files or folders to import (recursively)")
    imp.add_argument("--workers", type=int, default=0, help="parser processes (0 = one per core)")
    imp.add_argument(
        "--no-wait",
        action="store_true",
        help="return once every object is durable, without waiting until it is searchable",
    )
    imp.set_defaults(func=cmd_import)

    bench = sub.add_parser(
        "bench",
        help="benchmark ingest and search side by side with DCMTK and Orthanc",
        add_help=False,
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        # argparse's REMAINDER drops a leading option (`bench --quick` would be refused), so the
        # bench's own arguments go to its own parser untouched.
        return cmd_bench(argparse.Namespace(bench_args=argv[1:]))
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
