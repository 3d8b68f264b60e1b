"""The package imports in one direction: from the app and the CLI down to the leaves.

Every module of kamengd/ is parsed (not imported) and each of its imports of
another kamengd module, at the top or inside a function, is an edge. Each
module sits in one layer below; a module may import from a lower layer, or
from its own layer inside its own package (the modules of one feature at one
level, e.g. orders.attention -> orders.services). Anything else is an upward
import and fails here, as does any circle of imports and any module no layer
names (place a new module explicitly).
"""
from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import kamengd

ROOT = Path(kamengd.__file__).resolve().parent

# Bottom first. Each layer: a name and the modules in it (fnmatch patterns on
# dotted names). A module belongs to the first layer that names it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("shared leaves", (
        "kamengd", "kamengd.version", "kamengd.database", "kamengd.errors", "kamengd.money", "kamengd.config",
        "kamengd.vault", "kamengd.extensions", "kamengd.context", "kamengd.validation", "kamengd.transaction",
        "kamengd.localtime",
        # The feature folders' (empty) packages: anything they imported would run before every module of theirs.
        "kamengd.accounts", "kamengd.agents", "kamengd.audit", "kamengd.backup", "kamengd.catalog",
        "kamengd.inventory", "kamengd.ledger", "kamengd.notifications", "kamengd.operations", "kamengd.orders",
        "kamengd.marketing", "kamengd.payments", "kamengd.reports", "kamengd.risk",
        "kamengd.scheduler", "kamengd.server", "kamengd.settings", "kamengd.storefront", "kamengd.suppliers",
        "kamengd.tickets", "kamengd.vouchers")),
    ("models", ("kamengd.*.models",)),
    ("the model registry (Alembic, tests)", ("kamengd.models",)),
    # Pieces of a feature that other features use and that need no other feature:
    # password rules, the key-file parser, the Epay protocol and the sandbox's, its key cache,
    # key rules and pay types, sealed files, Alembic, SQLite snapshots, the registry of
    # running servers.
    ("feature basics", (
        "kamengd.accounts.passwords", "kamengd.inventory.importer", "kamengd.payments.epay",
        "kamengd.payments.keycache", "kamengd.payments.strength", "kamengd.payments.methods",
        "kamengd.payments.sandbox", "kamengd.payments.paths", "kamengd.payments.gateways",
        "kamengd.payments.gateways.*",
        "kamengd.orders.reasons", "kamengd.agents.signing", "kamengd.vouchers.codes",
        "kamengd.backup.sealed", "kamengd.operations.schema", "kamengd.operations.snapshot",
        "kamengd.operations.processes", "kamengd.reports.xlsx")),
    # Then the features' services, in the order they use each other.
    ("audit", ("kamengd.audit.*",)),
    ("accounts and settings", ("kamengd.accounts.*", "kamengd.settings.*")),
    # Money first, then who owns it: agents open their ledger accounts and are credited through it.
    ("the ledger", ("kamengd.ledger.*",)),
    ("agents", ("kamengd.agents.services", "kamengd.agents.auth", "kamengd.agents.commission",
                "kamengd.agents.levels", "kamengd.agents.statements", "kamengd.agents.sites")),
    # The low half of notifications: events and queued mail are written in the
    # transaction of the change that causes them, by orders, payments and stock.
    ("catalog and the notification outbox", (
        "kamengd.catalog.*", "kamengd.notifications.events", "kamengd.notifications.outbox")),
    # Coupons: read and claimed by checkout, given back by expiry.
    ("marketing", ("kamengd.marketing.*",)),
    # Risk rules: asked by checkout and by payments, before either writes.
    ("risk rules", ("kamengd.risk.*",)),
    # Voucher terms, stores and redemption: orders make their codes redeemable and stop them.
    ("vouchers", ("kamengd.vouchers.services",)),
    # Which channel takes an order: read by checkout, kept by expiry, payments and their jobs.
    ("payment routing", ("kamengd.payments.routing",)),
    ("orders, the scheduler's lease", ("kamengd.orders.*", "kamengd.scheduler.lease")),
    ("inventory, payments, backup (each serves or records orders)", (
        "kamengd.inventory.*", "kamengd.payments.callbacks", "kamengd.payments.reconcile",
        "kamengd.payments.services", "kamengd.payments.settlement", "kamengd.payments.flow",
        "kamengd.payments.refunds", "kamengd.payments.balance", "kamengd.payments.points", "kamengd.backup.*",
        "kamengd.agents.checkout", "kamengd.agents.withdrawals", "kamengd.agents.overview",
        "kamengd.agents.webhooks", "kamengd.agents.batches", "kamengd.vouchers.stock")),
    # Docking: suppliers' products become ours, their keys deliver our orders (as an import would).
    ("suppliers", ("kamengd.suppliers.*",)),
    # After-sales: a ticket ends in a refund (through the channel) or a reissued key (from stock).
    ("after-sales tickets", ("kamengd.tickets.services",)),
    # The high half of notifications: sending reads the order's keys and flags orders.
    ("notification sending", ("kamengd.notifications.email", "kamengd.notifications.dispatch")),
    ("operations and reports", (
        "kamengd.operations.doctor", "kamengd.operations.history", "kamengd.operations.rotation",
        "kamengd.reports.events", "kamengd.reports.scheduler", "kamengd.reports.settlements",
        "kamengd.reports.shop", "kamengd.reports.summary", "kamengd.reports.figures", "kamengd.reports.charts",
        "kamengd.reports.exports", "kamengd.reports.export_jobs", "kamengd.vouchers.reports")),
    # Each report as a table (the stores' redemptions among them), for the panel and the CLI.
    ("report tables", ("kamengd.reports.tables",)),
    ("the scheduler's jobs", ("kamengd.scheduler.jobs", "kamengd.scheduler.runner")),
    # The visitor's language: the storefront's and the agent portal's pages say both texts.
    ("the visitor's language", ("kamengd.storefront.i18n",)),
    ("HTTP answers for errors, signed-in sessions", ("kamengd.http_errors", "kamengd.websession", "kamengd.substation")),
    # The APIs' OpenAPI description: reads the errors, statuses and signature rules it describes.
    ("the APIs' description", ("kamengd.openapi",)),
    ("views", (
        "kamengd.api", "kamengd.agents.views", "kamengd.agents.webhook_api", "kamengd.health", "kamengd.storefront.*", "kamengd.payments.views",
        "kamengd.panel",
        "kamengd.panel.*", "kamengd.portal", "kamengd.portal.*")),
    ("the app factory", ("kamengd.app",)),
    # These build an app: installing writes the first rows through it, gunicorn loads one per worker.
    ("installation and servers", ("kamengd.operations.installation", "kamengd.server.*")),
    ("the command line", ("kamengd.cli", "kamengd.cli.*")),
    ("python -m kamengd", ("kamengd.__main__",)),
]

# Imports that may close a circle, each with its reason: {(importer, imported): "why"}.
# None today; keep it that way.
CYCLE_ALLOWED: dict[tuple[str, str], str] = {}


def modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = ("kamengd",) + path.relative_to(ROOT).with_suffix("").parts
        if "migrations" in parts:
            continue   # Alembic's scripts, installed inside the package: not part of the layering
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def imports_of(name: str, path: Path, is_package: bool, known) -> list[tuple[str, int, bool]]:
    """(imported kamengd module, line, inside a function) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name.split(".") if is_package else name.split(".")[:-1]
    found = []

    def resolve(target: str) -> str | None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        return target or None

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package[:len(package) - child.level + 1] + ([base] if base else []))
                # `from .x import y` imports the module x.y when there is one, else x.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in child.names]
            for target in targets:
                module = resolve(target) if target.startswith("kamengd") else None
                if module is not None and module != name:
                    found.append((module, child.lineno, inside))
            visit(child, inside)

    visit(tree, False)
    return found


def layer_of(name: str) -> int | None:
    for rank, (_title, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            return rank
    return None


def package_of(name: str, is_package: bool) -> str:
    return name if is_package else name.rpartition(".")[0]


def graph() -> dict[str, list[tuple[str, int, bool]]]:
    known = modules()
    return {name: imports_of(name, path, is_package, known) for name, (path, is_package) in known.items()}


def test_every_module_has_a_layer():
    unplaced = sorted(name for name in modules() if layer_of(name) is None)
    assert not unplaced, f"put these modules in a layer of {__name__}.LAYERS: {unplaced}"


def test_no_module_imports_upward():
    known = modules()
    wrong = []
    for name, edges in graph().items():
        rank = layer_of(name)
        for target, line, inside in edges:
            other = layer_of(target)
            if rank is None or other is None:
                continue   # reported by test_every_module_has_a_layer
            same_feature = package_of(name, known[name][1]) == package_of(target, known[target][1])
            if other > rank or (other == rank and not same_feature):
                wrong.append(f"{name} ({LAYERS[rank][0]}) imports {target} ({LAYERS[other][0]}) "
                             f"at line {line}{' inside a function' if inside else ''}")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_no_import_circles():
    edges = {name: sorted({t for t, _line, _inside in found if (name, t) not in CYCLE_ALLOWED})
             for name, found in graph().items()}
    done: set[str] = set()
    circles = []

    def walk(name: str, path: list[str]):
        path = path + [name]
        for target in edges.get(name, []):
            if target in path:
                circles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in done:
                walk(target, path)
        done.add(name)

    for name in sorted(edges):
        if name not in done:
            walk(name, [])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_function_level_imports_say_why():
    """An import inside a function (a heavy or optional dependency) carries a comment saying why."""
    silent = []
    for name, (path, _is_package) in modules().items():
        lines = path.read_text(encoding="utf-8").splitlines()
        tree = ast.parse("\n".join(lines))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    here, above = lines[inner.lineno - 1], lines[inner.lineno - 2].strip()
                    if "#" not in here and not above.startswith("#"):
                        silent.append(f"{name}:{inner.lineno}: {here.strip()}")
    assert not silent, "function-level imports without a comment saying why:\n" + "\n".join(sorted(set(silent)))
