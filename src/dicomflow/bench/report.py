"""The results of a bench run: the targets of issue 6, one table, and the JSON file."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from dicomflow.bench.data import CASES
from dicomflow.bench.options import MILLION
from dicomflow.bench.stats import (
    Status,
    Target,
    fmt_bytes,
    fmt_rate,
    fmt_ratio,
    fmt_seconds,
    ratio,
)

INGEST_VS_ORTHANC = 1.5
CT4_VS_DCMTK = 0.7
SEARCHABLE_P95_S = 1.0
QIDO_P95_AT_1M_S = 0.030
CFIND_LATENCY_VS_ORTHANC_AT_100K = 0.1  # ten times faster
IMPORT_FILES_PER_S = 1000.0
RSS_GROWTH = 1.2
UI_PAGE_P95_S = 0.5  # "well under a second"


def _ingest_key(case: str, assoc: int, nodelay: bool) -> str:
    return f"{case}x{assoc}{'' if nodelay else '-nagle'}"


def ingest_label(case: str, assoc: int, nodelay: bool) -> str:
    label = CASES[case].label if case in CASES else case
    plural = "s" if assoc > 1 else ""
    return f"{label}, {assoc} association{plural}" + ("" if nodelay else ", Nagle client")


def ingest_table(results: dict[str, Any]) -> dict[tuple[str, int, bool], dict[str, Any]]:
    """Summary rows of the ingest phase by (case, associations, nodelay) then receiver."""
    out: dict[tuple[str, int, bool], dict[str, Any]] = {}
    for row in results.get("ingest", {}).get("summary", []):
        key = (row["case"], row["associations"], row["nodelay"])
        out.setdefault(key, {})[row["receiver"]] = row
    return out


def _level(results: dict[str, Any], instances: int) -> dict[str, Any] | None:
    for level in results.get("archive", {}).get("levels", []):
        if level["instances"] == instances:
            found: dict[str, Any] = level
            return found
    return None


def _p(summary: dict[str, Any] | None, key: str, pct: str) -> float | None:
    if not summary or key not in summary or "all" not in summary[key]:
        return None
    value = summary[key]["all"].get(pct)
    return None if value is None else float(value)


def compute_targets(results: dict[str, Any]) -> list[Target]:
    targets: list[Target] = []
    for (case, assoc, nodelay), by_receiver in ingest_table(results).items():
        dicomflow = by_receiver.get("dicomflow", {}).get("rate")
        orthanc = by_receiver.get("orthanc", {}).get("rate")
        dcmtk = by_receiver.get("dcmtk", {}).get("rate")
        key = _ingest_key(case, assoc, nodelay)
        targets.append(
            Target(
                f"ingest.{key}.vs_orthanc",
                f"ingest {ingest_label(case, assoc, nodelay)}: dicomflow/Orthanc",
                ratio(dicomflow, orthanc),
                INGEST_VS_ORTHANC,
                at_least=True,
            )
        )
        if case == "ct" and assoc >= 4 and nodelay:
            targets.append(
                Target(
                    f"ingest.{key}.vs_dcmtk",
                    f"ingest {ingest_label(case, assoc, nodelay)}: dicomflow/DCMTK storescp",
                    ratio(dicomflow, dcmtk),
                    CT4_VS_DCMTK,
                    at_least=True,
                )
            )
    searchable = results.get("searchable")
    if searchable is not None:
        p95 = searchable.get("latency", {}).get("p95_s")
        never = searchable.get("never_seen", 0)
        targets.append(
            Target(
                "searchable.p95",
                "acknowledgement to searchable (QIDO-RS), p95, sustained full-rate ingest",
                None if p95 is None else (float("inf") if never else float(p95)),
                SEARCHABLE_P95_S,
                at_least=False,
                note=f"{never} objects never became searchable" if never else "",
            )
        )
    levels = results.get("archive", {}).get("levels", [])
    if levels and any("qido" in level for level in levels):
        million = _level(results, MILLION)
        largest = max((lv for lv in levels if "qido" in lv), key=lambda lv: lv["instances"])
        targets.append(
            Target(
                "query.qido.p95_at_1m",
                "QIDO-RS study search p95 at 1M instances",
                _p(million, "qido", "p95_s"),
                QIDO_P95_AT_1M_S,
                at_least=False,
                note=""
                if million
                else f"1M not measured (--million); p95 at {largest['instances']:,}: "
                f"{fmt_seconds(_p(largest, 'qido', 'p95_s'))}",
            )
        )
        at_100k = _level(results, 100_000)
        dicomflow = _p(at_100k, "cfind_dicomflow", "p50_s")
        orthanc = _p(at_100k, "cfind_orthanc", "p50_s")
        note = ""
        if at_100k is None:
            note = "100k not measured"
        elif dicomflow is None:
            note = str(at_100k.get("cfind_dicomflow", {}).get("status", "not measured"))
        elif orthanc is None:
            note = "no Orthanc C-FIND figure"
        targets.append(
            Target(
                "query.cfind.vs_orthanc_at_100k",
                "C-FIND study search at 100k: dicomflow/Orthanc median latency",
                ratio(dicomflow, orthanc),
                CFIND_LATENCY_VS_ORTHANC_AT_100K,
                at_least=False,
                note=note,
            )
        )
    for level in levels:
        imp = level.get("import")
        if not imp:
            continue
        for kind in ("durable", "searchable"):
            targets.append(
                Target(
                    f"import.{level['instances']}.{kind}",
                    f"bulk import of {imp['files']:,} files ({kind}), files/s",
                    float(imp[f"files_per_s_{kind}"]),
                    IMPORT_FILES_PER_S,
                    at_least=True,
                )
            )
    for level in levels:
        slowest = ui_slowest_page(level.get("ui"))
        if slowest is not None:
            how, page, seconds = slowest
            targets.append(
                Target(
                    f"ui.{level['instances']}.slowest_page",
                    f"web UI at {level['instances']:,} instances: slowest page p95 ({how})",
                    seconds,
                    UI_PAGE_P95_S,
                    at_least=False,
                    note=page,
                )
            )
    if levels:
        first = levels[0]
        last = levels[-1]
        million = _level(results, MILLION)
        base = first["rss_after"]["total_bytes"]
        grown = million["rss_after"]["total_bytes"] if million else None
        targets.append(
            Target(
                "memory.rss_1m_vs_10k",
                f"RSS of dicomflow after 1M instances / after {first['instances']:,}",
                ratio(grown, base),
                RSS_GROWTH,
                at_least=False,
                note=""
                if million
                else f"1M not measured; after {last['instances']:,}: "
                f"{fmt_ratio(ratio(last['rss_after']['total_bytes'], base))}",
            )
        )
    return targets


def ui_slowest_page(figures: dict[str, Any] | None) -> tuple[str, str, float] | None:
    """(how, page, p95 seconds) of the slowest page, in the browser when it was measured."""
    if not figures:
        return None
    for how in ("browser", "server"):
        pages = figures.get(how) or {}
        timed = [
            (s["p95_s"], name)
            for name, s in pages.items()
            if isinstance(s, dict) and s.get("p95_s")
        ]
        if timed:
            seconds, page = max(timed)
            return how, page, float(seconds)
    return None


@dataclass(frozen=True)
class Row:
    section: str
    measure: str
    dicomflow: str = ""
    dcmtk: str = ""
    orthanc: str = ""
    vs_dcmtk: str = ""
    vs_orthanc: str = ""
    target: str = ""
    status: str = ""


def _status_text(targets: list[Target]) -> str:
    parts = []
    for target in targets:
        if target.status is Status.MISSED and target.shortfall is not None:
            parts.append(f"missed by {target.shortfall:.0%}")
        else:
            parts.append(target.status.value)
        if target.note:
            parts[-1] += f" ({target.note})"
    return "\n".join(parts)


def _ingest_cell(row: dict[str, Any] | None, alone: dict[str, Any] | None = None) -> str:
    if row is None:
        return "-"
    text = (
        f"{fmt_rate(row['rate'])}\n"
        f"{row['mb_per_s']:.0f} MB/s, CPU {row['cpu_ms_per_object']:.1f} ms/obj"
    )
    if not row["all_ok"]:
        text += "\n[objects lost!]"
    if alone is not None:
        text += f"\ningest role alone: {fmt_rate(alone['rate'])}"
    return text


def _import_cpu_text(imp: dict[str, Any]) -> str:
    """The import's CPU per file by process (results before the tenth session have none)."""
    by_role = {
        role: ms for role, ms in imp.get("cpu_ms_per_file_by_role", {}).items() if ms >= 0.01
    }
    if not by_role:
        return ""
    parts = ", ".join(f"{role} {ms:.2f}" for role, ms in by_role.items())
    return f"\nCPU ms/file: {parts} ({sum(by_role.values()):.2f} in all)"


def build_rows(results: dict[str, Any], targets: list[Target]) -> list[Row]:
    by_key = {t.key: t for t in targets}
    rows: list[Row] = []
    ingest = ingest_table(results)
    if ingest:
        runs = max((r["runs"] for g in ingest.values() for r in g.values()), default=0)
        section = f"C-STORE ingest (storescu; median of up to {runs} runs)"
        for (case, assoc, nodelay), by_receiver in ingest.items():
            key = _ingest_key(case, assoc, nodelay)
            row_targets = [
                t
                for t in (
                    by_key.get(f"ingest.{key}.vs_orthanc"),
                    by_key.get(f"ingest.{key}.vs_dcmtk"),
                )
                if t
            ]
            df = by_receiver.get("dicomflow", {}).get("rate")
            rows.append(
                Row(
                    section,
                    ingest_label(case, assoc, nodelay),
                    _ingest_cell(by_receiver.get("dicomflow"), by_receiver.get("dicomflow-ingest")),
                    _ingest_cell(by_receiver.get("dcmtk")),
                    _ingest_cell(by_receiver.get("orthanc")),
                    fmt_ratio(ratio(df, by_receiver.get("dcmtk", {}).get("rate"))),
                    fmt_ratio(ratio(df, by_receiver.get("orthanc", {}).get("rate"))),
                    "; ".join(
                        f">= {t.threshold}x {'DCMTK' if t.key.endswith('dcmtk') else 'Orthanc'}"
                        for t in row_targets
                    ),
                    _status_text(row_targets),
                )
            )
    searchable = results.get("searchable")
    if searchable is not None:
        section = "Acknowledgement to searchable (QIDO-RS)"
        if "latency" not in searchable:
            rows.append(Row(section, "latency", searchable.get("status", "n/a")))
        else:
            lat = searchable["latency"]
            target = by_key.get("searchable.p95")
            rows.append(
                Row(
                    section,
                    f"p50 / p95 / p99 at {searchable['rate']:.0f}/s ({searchable['case']}, "
                    f"{searchable['associations']} associations, "
                    f"{searchable['ingest_seconds']:.0f} s)",
                    " / ".join(fmt_seconds(lat[k]) for k in ("p50_s", "p95_s", "p99_s")),
                    target="p95 < 1 s",
                    status=_status_text([target]) if target else "",
                )
            )
            rows.append(
                Row(
                    section,
                    "pipeline lag: max / last object searchable after the ingest stopped",
                    f"{searchable['max_lag']} records / "
                    f"{fmt_seconds(searchable.get('all_searchable_after_ingest_s'))}",
                )
            )
    levels = results.get("archive", {}).get("levels", [])
    for level in levels:
        n = level["instances"]
        if "qido" in level:
            section = "Study-level search latency p50 / p95"
            target = by_key.get("query.qido.p95_at_1m") if n == MILLION else None
            rows.append(
                Row(
                    section,
                    f"QIDO-RS at {n:,} instances",
                    _p50_p95(level, "qido"),
                    target="p95 < 30 ms at 1M" if n == MILLION else "",
                    status=_status_text([target]) if target else "",
                )
            )
            target = by_key.get("query.cfind.vs_orthanc_at_100k") if n == 100_000 else None
            rows.append(
                Row(
                    section,
                    f"C-FIND at {n:,} instances",
                    _p50_p95(level, "cfind_dicomflow"),
                    orthanc=_p50_p95(level, "cfind_orthanc"),
                    vs_orthanc=fmt_ratio(
                        ratio(
                            _p(level, "cfind_dicomflow", "p50_s"),
                            _p(level, "cfind_orthanc", "p50_s"),
                        )
                    ),
                    target="<= 0.1x Orthanc (10x faster) at 100k" if n == 100_000 else "",
                    status=_status_text([target]) if target else "",
                )
            )
    for level in levels:
        imp = level.get("import")
        if not imp:
            continue
        section = "Bulk import (dicomflow import, tiny objects)"
        for kind in ("durable", "searchable"):
            target = by_key.get(f"import.{level['instances']}.{kind}")
            fill = level.get("orthanc_fill") if kind == "durable" else None
            rows.append(
                Row(
                    section,
                    f"{imp['files']:,} files up to {level['instances']:,}: until {kind}",
                    f"{fmt_rate(imp[f'files_per_s_{kind}'], ' files/s')}\n"
                    f"{imp[f'mb_per_s_{kind}']:.0f} MB/s"
                    + (_import_cpu_text(imp) if kind == "searchable" else ""),
                    orthanc=f"storescu x4: {fmt_rate(fill['rate'])}" if fill else "",
                    target=">= 1,000 files/s",
                    status=_status_text([target]) if target else "",
                )
            )
    for level in levels:
        ui = level.get("ui")
        if not ui:
            continue
        target = by_key.get(f"ui.{level['instances']}.slowest_page")
        browser = ui.get("browser") or {}
        for page, server in ui["server"].items():
            in_browser = browser.get(page)
            rows.append(
                Row(
                    f"Web UI page load at {level['instances']:,} instances "
                    "(p50 / p95: server HTML + fragments + images; browser until ready)",
                    page,
                    f"server {fmt_seconds(server['p50_s'])} / {fmt_seconds(server['p95_s'])}\n"
                    + (
                        f"browser {fmt_seconds(in_browser['p50_s'])} / "
                        f"{fmt_seconds(in_browser['p95_s'])}"
                        if in_browser
                        else f"browser {browser.get('status', 'n/a')}"
                    ),
                    target="slowest page p95 < 0.5 s",
                    status=_status_text([target]) if target and target.note == page else "",
                )
            )
    memory = results.get("memory") or {}
    for phase, figures in memory.items():
        roles = ", ".join(
            f"{role} {value / 2**20:.0f}"
            for role, value in sorted(figures["by_role_bytes"].items(), key=lambda kv: -kv[1])
        )
        rows.append(
            Row(
                "Peak RSS of the dicomflow processes (sum of per-process peaks)",
                f"during {phase}\n(MiB: {roles})",
                fmt_bytes(figures["sum_of_peaks_bytes"]),
            )
        )
    if levels:
        target = by_key.get("memory.rss_1m_vs_10k")
        rows.append(
            Row(
                "Memory as the index grows (RSS after filling)",
                " / ".join(f"{lv['instances']:,}" for lv in levels),
                " / ".join(fmt_bytes(lv["rss_after"]["total_bytes"]) for lv in levels),
                target="1M within 20% of 10k",
                status=_status_text([target]) if target else "",
            )
        )
    return rows


def _p50_p95(level: dict[str, Any], key: str) -> str:
    figures = level.get(key)
    if figures is None:
        return "-"
    if "all" not in figures:
        return str(figures.get("status", "n/a"))
    return f"{fmt_seconds(figures['all']['p50_s'])} / {fmt_seconds(figures['all']['p95_s'])}"


def render(console: Console, results: dict[str, Any], targets: list[Target]) -> None:
    machine = results.get("machine", {})
    table = Table(
        title=f"dicomflow bench - {machine.get('cpu_model', '?')}, "
        f"{machine.get('cores', '?')} cores, {machine.get('filesystem', '?')}",
        show_lines=True,
    )
    table.add_column("measure", min_width=30)
    for name in (
        "dicomflow",
        "DCMTK storescp",
        "Orthanc",
        "dicomflow / DCMTK",
        "dicomflow / Orthanc",
        "target",
        "status",
    ):
        table.add_column(name)
    section = None
    for row in build_rows(results, targets):
        if row.section != section:
            table.add_row(f"[bold]{row.section}[/]", end_section=False)
            section = row.section
        style = (
            "red"
            if row.status.startswith("missed")
            else ("green" if row.status.startswith("met") else None)
        )
        table.add_row(
            row.measure,
            row.dicomflow,
            row.dcmtk,
            row.orthanc,
            row.vs_dcmtk,
            row.vs_orthanc,
            row.target,
            row.status,
            style=style,
        )
    console.print(table)
    versions = results.get("versions", {})
    console.print(
        "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), highlight=False
    )
    for note in results.get("notes", []):
        console.print(f"note: {note}", highlight=False)


def write_json(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False, default=str) + "\n")
