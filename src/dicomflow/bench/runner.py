"""The phases of `dicomflow bench`, run in one invocation on one machine.

1. ingest: C-STORE throughput with DCMTK storescu into dicomflow, DCMTK storescp and Orthanc,
   1 and N parallel associations, interleaved (each repeat goes round every receiver, in a
   rotating order), medians of the repeats. Every run sends objects none of the receivers has
   seen. Before each timed run the page cache is flushed (``sync``) and dicomflow's pipeline
   has caught up, so that no receiver pays for another's deferred work.
2. searchable: acknowledgement-to-searchable latency during sustained full-rate ingest (see
   `SearchableTracker`), and the pipeline lag curve from /api/status.
3. query: QIDO-RS and C-FIND study-level latency at growing index sizes, filled through
   ``dicomflow import``; Orthanc filled with the same objects by storescu.
4. import: the bulk import rate of those fills (files/s, MB/s; durable, and searchable).
5. memory: peak RSS of every dicomflow process during each phase, and RSS as the index grows.
"""

import json
import math
import os
import random
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from rich.console import Console

from dicomflow.bench import procs
from dicomflow.bench.clients import (
    CALLING_AE,
    send_folders,
    storescu_command,
    storescu_env,
    study_identifier,
    timed_get,
)
from dicomflow.bench.data import (
    CASES,
    Template,
    flat_identities,
    patient_name,
    study_date,
    tree_identities,
    write_flat,
    write_tree,
)
from dicomflow.bench.findscu import FindNotSupported, RawFindClient
from dicomflow.bench.options import Options
from dicomflow.bench.receivers import (
    BenchError,
    DicomflowServer,
    HttpClient,
    OrthancServer,
    Receiver,
    StorescpServer,
    available_roles,
)
from dicomflow.bench.stats import latency_summary, median
from dicomflow.bench.tools import INSTALL_HINTS, Tool, describe_machine, find_dcmtk, find_orthanc
from dicomflow.bench.tools import versions as tool_versions
from dicomflow.bench.ui import measure_ui, ui_pages

SERIES_PER_STUDY = 2
INSTANCES_PER_SERIES = 10
INSTANCES_PER_STUDY = SERIES_PER_STUDY * INSTANCES_PER_SERIES
ORTHANC_MAX_INSTANCES = 100_000
QUERY_KINDS = ("PatientID", "PatientName prefix", "StudyDate", "AccessionNumber")


FILE_SYSTEM_SETTLE_S = 31.0
"""How long after deleting scratch data the bench starts no measurement.

A deletion slows the file creates that follow on some file systems: ext4 without a journal
(this project's test machines) skips every inode freed in the last 30 s when it allocates one,
and a create took 400 us instead of 40 us for that time. Every receiver creates a file per
object, so whichever ran next paid for the deletion of the one before.
"""


def sync_disks() -> None:
    os.sync()


class Bench:
    def __init__(self, options: Options, console: Console) -> None:
        self.options = options
        self.console = console
        self.work = options.work or Path(tempfile.mkdtemp(prefix="dicomflow-bench-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.run_tag = secrets.randbelow(10**8)
        self._deleted_at = -math.inf
        self.tools: dict[str, Tool | None] = {
            "storescu": find_dcmtk("storescu"),
            "storescp": find_dcmtk("storescp"),
            "orthanc": find_orthanc(),
        }
        self.roles, roles_problem = available_roles()
        self.notes: list[str] = []
        if roles_problem:
            self.notes.append(
                f"dicomflow runs with roles {','.join(self.roles)} only ({roles_problem})"
            )
        self.results: dict[str, Any] = {
            "schema_version": 1,
            "label": options.label,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": ["dicomflow", "bench", *options.argv],
            "options": options.to_json(),
            "machine": describe_machine(self.work),
            "versions": tool_versions(
                {
                    "dcmtk": self.tools["storescu"],
                    "orthanc": self.tools["orthanc"],
                }
            ),
            "dicomflow_roles": self.roles,
            "dicomflow_settings": options.overrides,
            "notes": self.notes,
        }
        self.memory: dict[str, dict[str, Any]] = {}
        self._generated = 0

    # -- helpers ---------------------------------------------------------------------------

    def delete(self, path: Path) -> None:
        """Delete scratch data; the next measurement waits for the file system to settle."""
        shutil.rmtree(path, ignore_errors=True)
        self._deleted_at = time.monotonic()

    def settle_file_system(self) -> None:
        """Wait until `FILE_SYSTEM_SETTLE_S` have passed since the last deletion."""
        wait = self._deleted_at + FILE_SYSTEM_SETTLE_S - time.monotonic()
        if wait > 0:
            self.say(f"  waiting {wait:.0f} s: scratch data was deleted (file creates are slower)")
            time.sleep(wait)

    def say(self, message: str) -> None:
        self.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {message}")

    def note(self, message: str) -> None:
        self.notes.append(message)
        self.say(f"[yellow]note[/]: {message}")

    def storescu(self) -> Tool:
        tool = self.tools["storescu"]
        if tool is None:
            raise BenchError(f"DCMTK's storescu is not installed: {INSTALL_HINTS['dcmtk']}")
        return tool

    def receivers_for(self, work: Path) -> list[Receiver]:
        wanted = self.options.receivers
        out: list[Receiver] = []
        if "dicomflow" in wanted:
            out.append(DicomflowServer(work / "dicomflow", self.options.overrides, self.roles))
        if "dicomflow-ingest" in wanted:
            alone = DicomflowServer(work / "dicomflow-ingest", self.options.overrides, ["ingest"])
            alone.name = "dicomflow-ingest"
            out.append(alone)
        if "dcmtk" in wanted:
            storescp = self.tools["storescp"]
            if storescp is None:
                self.note(f"DCMTK storescp not found ({INSTALL_HINTS['dcmtk']}): no DCMTK column")
            else:
                out.append(StorescpServer(work / "dcmtk", storescp))
        if "orthanc" in wanted:
            orthanc = self.tools["orthanc"]
            if orthanc is None:
                self.note(f"Orthanc not found ({INSTALL_HINTS['orthanc']}): no Orthanc column")
            else:
                out.append(OrthancServer(work / "orthanc", orthanc))
        return out

    @contextmanager
    def memory_of(
        self, phase: str, server: DicomflowServer, extra: Callable[[], list[int]] | None = None
    ) -> Iterator[None]:
        """Sample the RSS of the dicomflow processes (and `extra` roots) during a phase."""

        def roots() -> list[int]:
            return server.roots() + (extra() if extra else [])

        def label(pid: int) -> str:
            if pid in server.pids():
                return server.role_of(pid)
            return "import"

        sampler = procs.RssSampler(roots, label)
        with sampler:
            yield
        figures = sampler.result.to_json()
        previous = self.memory.get(phase)
        if previous is None or figures["sum_of_peaks_bytes"] > previous["sum_of_peaks_bytes"]:
            self.memory[phase] = figures

    def current_rss(self, server: DicomflowServer) -> dict[str, Any]:
        by_role: dict[str, int] = {}
        file_backed: dict[str, int] = {}
        for pid in server.pids():
            rss, _ = procs.read_memory(pid)
            role = server.role_of(pid)
            by_role[role] = by_role.get(role, 0) + rss
            file_backed[role] = file_backed.get(role, 0) + procs.read_file_backed_rss(pid)
        return {
            "total_bytes": sum(by_role.values()),
            "by_role_bytes": by_role,
            "file_backed_bytes": sum(file_backed.values()),
            "file_backed_by_role_bytes": file_backed,
        }

    # -- phase 1: ingest -------------------------------------------------------------------

    def phase_ingest(self) -> None:
        storescu = self.storescu()
        opts = self.options
        runs: list[dict[str, Any]] = []
        self.results["ingest"] = {"runs": runs, "summary": []}
        for case_name in opts.cases:
            case = CASES[case_name]
            template = Template(case)
            work = self.work / f"ingest-{case_name}"
            count = opts.count_for(case_name)
            plan: list[tuple[int, bool, int]] = [
                (assoc, True, r) for r in range(opts.repeats) for assoc in opts.associations
            ]
            if opts.nagle and case_name in ("ct", "tiny"):
                plan += [(1, False, r) for r in range(opts.nagle_repeats)]
            self.say(
                f"ingest {case.label}: generating {len(plan)} sets "
                f"({count} objects, {template.size / 1e6:.2f} MB each)"
            )
            sets: dict[tuple[int, bool, int], list[Path]] = {}
            for assoc, nodelay, r in [(1, True, -1), *plan]:
                n = count if nodelay else opts.nagle_instances
                if r < 0:
                    n = min(20, count)
                folder = work / "data" / f"a{assoc}-{'nodelay' if nodelay else 'nagle'}-r{r}"
                folders = [folder / f"f{k}" for k in range(assoc)]
                write_flat(template, self.run_tag, folders, flat_identities(n, self._generated))
                self._generated += n
                sets[(assoc, nodelay, r)] = folders
            sync_disks()
            self.settle_file_system()
            receivers = self.receivers_for(work)
            with ExitStack() as stack:
                for receiver in receivers:
                    self.say(f"  starting {receiver.name}")
                    stack.enter_context(receiver)
                dicomflow = next((r for r in receivers if r.name == "dicomflow"), None)
                if isinstance(dicomflow, DicomflowServer):
                    stack.enter_context(self.memory_of("ingest", dicomflow))
                for receiver in receivers:  # warm-up: first association, imports, caches
                    self._ingest_run(receiver, storescu, sets[(1, True, -1)], 20, True, template)
                for i, (assoc, nodelay, r) in enumerate(plan):
                    n = count if nodelay else opts.nagle_instances
                    order = receivers[i % len(receivers) :] + receivers[: i % len(receivers)]
                    for receiver in order:
                        run = self._ingest_run(
                            receiver, storescu, sets[(assoc, nodelay, r)], n, nodelay, template
                        )
                        run.update(case=case_name, associations=assoc, repeat=r)
                        runs.append(run)
                        self.say(
                            f"  {case_name} x{assoc} {'nodelay' if nodelay else 'Nagle  '} "
                            f"r{r} {receiver.name:9s} {run['rate']:8.1f}/s "
                            f"cpu {run['cpu_s']:.2f}s"
                            + (f" settle {run['settle_s']:.1f}s" if run["settle_s"] else "")
                            + f" steal {run['machine'].get('steal', 0):.0%}"
                            + ("" if run["ok"] else f" [red]LOST {n - run['stored']}[/]")
                        )
            self.delete(work)
        self.results["ingest"]["summary"] = summarize_ingest(runs)

    def _ingest_run(
        self,
        receiver: Receiver,
        storescu: Tool,
        folders: list[Path],
        count: int,
        nodelay: bool,
        template: Template,
    ) -> dict[str, Any]:
        before = receiver.count()
        ticks = procs.machine_ticks()
        cpu0 = cpu_by_pid(receiver)
        result = send_folders(
            storescu,
            receiver.port,
            receiver.ae_title,
            folders,
            nodelay,
            receiver.work / "storescu",
            timeout=120 + count / (2 if nodelay else 0.5),
        )
        cpu_roles = cpu_by_role_since(receiver, cpu0)
        machine = procs.contention(ticks, procs.machine_ticks())
        stored = receiver.count() - before
        settle = receiver.settle(timeout=600)
        receiver.after_run()
        sync_disks()
        return {
            "receiver": receiver.name,
            "nodelay": nodelay,
            "instances": count,
            "bytes": count * template.size,
            "seconds": result.seconds,
            "rate": count / result.seconds,
            "mb_per_s": count * template.size / 1e6 / result.seconds,
            "cpu_s": sum(cpu_roles.values()),
            "cpu_by_role_s": cpu_roles,
            "settle_s": settle,
            "machine": machine,
            "stored": stored,
            "ok": result.ok and stored == count,
            "storescu_returncodes": list(result.returncodes),
        }

    # -- phase 2: acknowledgement to searchable ------------------------------------------

    def phase_searchable(self) -> None:
        if "api" not in self.roles:
            self.results["searchable"] = {"status": "n/a (the API role cannot run yet)"}
            self.note("searchable phase skipped: the API role cannot run in this checkout")
            return
        storescu = self.storescu()
        opts = self.options
        case = CASES[opts.sustained_case]
        template = Template(case)
        work = self.work / "searchable"
        folders = [work / "data" / f"f{k}" for k in range(4)]
        write_flat(template, self.run_tag, folders, flat_identities(400, self._generated))
        self._generated += 400
        sync_disks()
        self.settle_file_system()
        server = DicomflowServer(work / "dicomflow", opts.overrides, self.roles)
        with server, self.memory_of("searchable", server):
            self._ingest_run(server, storescu, folders[:1], 100, True, template)  # warm-up
            tracker = SearchableTracker(server)
            lag_curve = LagCurve(server)
            self.say(
                f"searchable: {case.label}, 4 associations at full rate for "
                f"{opts.sustained_seconds:.0f} s, QIDO-RS polled per series"
            )
            received_before = server.count()
            with tracker, lag_curve:
                started = time.monotonic()
                sent = sustained_ingest(storescu, server, folders, opts.sustained_seconds)
                ingest_seconds = time.monotonic() - started
                ingest_end = time.time()
                lag_curve.mark("ingest_end")
                received = server.count() - received_before
                self.say(
                    f"  {received} objects acknowledged in {ingest_seconds:.1f} s "
                    f"({received / ingest_seconds:.0f}/s); waiting until all are searchable"
                )
                tracker.wait_all(received, timeout=max(120.0, opts.sustained_seconds * 4))
                drain = server.settle(timeout=60)
        latencies = tracker.latencies()
        summary = latency_summary(latencies)
        self.results["searchable"] = {
            "case": case.name,
            "associations": 4,
            "ingest_seconds": ingest_seconds,
            "acknowledged": received,
            "storescu_runs": sent,
            "rate": received / ingest_seconds,
            "latency": summary,
            "never_seen": received - len(latencies),
            "poll_round_s": tracker.round_summary(),
            "lag_curve": lag_curve.samples,
            "max_lag": max((s["lag"] for s in lag_curve.samples), default=None),
            "all_searchable_after_ingest_s": (
                tracker.last_seen - ingest_end if tracker.last_seen else None
            ),
            "drain_after_ingest_s": lag_curve.drain_seconds("ingest_end"),
            "extra_drain_s": drain,
            "method": (
                "acknowledgement time = timestamp of the durable 'received' record (taken just "
                "before its commit, so before the C-STORE response: latencies are upper bounds); "
                "searchable time = first QIDO-RS instance search of the series that returns the "
                "instance, polling the oldest 16 incomplete series in rounds"
            ),
        }
        self.delete(work)

    # -- phases 3 and 4: import, then query --------------------------------------------------

    def phase_fill_and_query(self, query: bool) -> None:
        opts = self.options
        work = self.work / "archive"
        template = Template(CASES["tiny"])
        overrides = {**opts.overrides, "processors": opts.archive_processors}
        server = DicomflowServer(work / "dicomflow", overrides, self.roles)
        orthanc: OrthancServer | None = None
        if query and "orthanc" in opts.receivers:
            if self.tools["orthanc"] is None:
                self.note(f"Orthanc not found ({INSTALL_HINTS['orthanc']}): no C-FIND reference")
            else:
                orthanc = OrthancServer(work / "orthanc", self.tools["orthanc"])
        levels: list[dict[str, Any]] = []
        self.results["archive"] = {"levels": levels}
        studies_done = 0
        importer: list[subprocess.Popen[bytes]] = []
        with ExitStack() as stack:
            stack.enter_context(server)
            if orthanc is not None:
                stack.enter_context(orthanc)
            for size in opts.sizes:
                studies = max(1, size // INSTANCES_PER_STUDY) - studies_done
                if studies <= 0:
                    continue
                level: dict[str, Any] = {
                    "instances": (studies_done + studies) * INSTANCES_PER_STUDY
                }
                tree = work / f"tree-{size}"
                self.say(
                    f"archive {level['instances']:,}: "
                    f"writing {studies * INSTANCES_PER_STUDY:,} files"
                )
                files = write_tree(
                    template,
                    self.run_tag,
                    tree,
                    tree_identities(studies_done, studies, SERIES_PER_STUDY, INSTANCES_PER_SERIES),
                )
                sync_disks()
                self.settle_file_system()
                with self.memory_of(
                    f"import {level['instances']:,}",
                    server,
                    lambda: [p.pid for p in importer if p.poll() is None],
                ):
                    level["import"] = self._import(server, tree, files, template.size, importer)
                self.say(
                    f"  import: {level['import']['files_per_s_durable']:.0f} files/s durable, "
                    f"{level['import']['files_per_s_searchable']:.0f} files/s searchable"
                )
                if orthanc is not None and level["instances"] > ORTHANC_MAX_INSTANCES:
                    # The issue compares C-FIND with Orthanc up to 100k; filling Orthanc to 1M
                    # through storescu would take longer than the rest of the run.
                    orthanc.stop()
                    orthanc = None
                    self.note(
                        f"Orthanc is filled and queried up to {ORTHANC_MAX_INSTANCES:,} instances"
                    )
                if orthanc is not None:
                    level["orthanc_fill"] = self._fill_orthanc(orthanc, tree, files, template.size)
                    self.say(f"  Orthanc fill (storescu x4): {level['orthanc_fill']['rate']:.0f}/s")
                self.delete(tree)
                studies_done += studies
                if query:
                    with self.memory_of(f"query {level['instances']:,}", server):
                        level.update(self._queries(server, orthanc, studies_done, size))
                if "ui" in opts.phases:
                    with self.memory_of(f"ui {level['instances']:,}", server):
                        level["ui"] = self._ui(server, studies_done, size)
                level["rss_after"] = self.current_rss(server)
                levels.append(level)
        self.delete(work)

    def _import(
        self,
        server: DicomflowServer,
        tree: Path,
        files: int,
        file_size: int,
        importer: list[subprocess.Popen[bytes]],
    ) -> dict[str, Any]:
        usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_cpu0 = cpu_by_pid(server)
        ticks = procs.machine_ticks()
        before = server.count()
        log = (server.work / "import.log").open("wb")
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "dicomflow.cli", "import", "--no-wait", str(tree)],
            env=server.env,
            cwd=server.work,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        importer.append(process)
        code = process.wait(timeout=7200)
        durable = time.monotonic() - started
        log.close()
        importer.clear()
        usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        settle = server.settle(timeout=7200)
        searchable = time.monotonic() - started
        machine = procs.contention(ticks, procs.machine_ticks())
        server_cpu = cpu_by_role_since(server, server_cpu0)
        command_cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
        imported = server.count() - before
        if code != 0 or imported != files:
            raise BenchError(
                f"dicomflow import exited {code} with {imported} of {files} files received:\n"
                + (server.work / "import.log").read_text(errors="replace")[-2000:]
            )
        size = files * file_size
        return {
            "files": files,
            "bytes": size,
            "seconds_durable": durable,
            "seconds_searchable": searchable,
            "files_per_s_durable": files / durable,
            "files_per_s_searchable": files / searchable,
            "mb_per_s_durable": size / 1e6 / durable,
            "mb_per_s_searchable": size / 1e6 / searchable,
            "import_command_cpu_s": command_cpu,
            "server_cpu_s": sum(server_cpu.values()),
            # Where the CPU of an import goes, by process: what bounds the rate until
            # searchable once both cores are busy (docs/performance.md).
            "cpu_ms_per_file_by_role": {
                role: round(1000 * cpu / files, 3)
                for role, cpu in {"import": command_cpu, **server_cpu}.items()
            },
            "machine": machine,
            "pipeline_after_import_s": settle,
        }

    def _fill_orthanc(
        self, orthanc: OrthancServer, tree: Path, files: int, file_size: int
    ) -> dict[str, Any]:
        before = orthanc.count()
        groups = sorted(p for p in tree.iterdir() if p.is_dir())
        result = send_folders(
            self.storescu(),
            orthanc.port,
            orthanc.ae_title,
            groups,
            True,
            orthanc.work / "storescu",
            timeout=7200,
        )
        stored = orthanc.count() - before
        if stored != files:
            self.note(f"Orthanc stored {stored} of {files} objects while filling")
        return {
            "files": files,
            "seconds": result.seconds,
            "rate": files / result.seconds,
            "mb_per_s": files * file_size / 1e6 / result.seconds,
            "stored": stored,
        }

    def _queries(
        self, server: DicomflowServer, orthanc: OrthancServer | None, studies: int, size: int
    ) -> dict[str, Any]:
        rng = random.Random(size)
        plan = [
            (kind, rng.randrange(studies))
            for _ in range(self.options.queries)
            for kind in QUERY_KINDS
        ]
        rng.shuffle(plan)
        http = HttpClient(server.http_port, headers=server.http_headers)
        out: dict[str, Any] = {}
        qido: dict[str, list[float]] = {kind: [] for kind in QUERY_KINDS}
        finds: dict[str, dict[str, list[float]]] = {}
        clients: dict[str, RawFindClient | str] = {}
        targets = [("dicomflow", server.port, server.ae_title)]
        if orthanc is not None:
            targets.append(("orthanc", orthanc.port, orthanc.ae_title))
        for name, port, ae in targets:
            try:
                clients[name] = RawFindClient(port, ae, CALLING_AE)
                finds[name] = {kind: [] for kind in QUERY_KINDS}
            except FindNotSupported as exc:
                clients[name] = f"n/a ({exc})"
        mismatches = 0
        try:
            for n, (kind, study) in enumerate([*plan[:8], *plan]):
                warm = n < 8
                criteria = query_criteria(kind, study)
                path = "/dicomweb/studies?" + urlencode(criteria, quote_via=quote) + "&limit=1000"
                seconds, found = timed_get(http, path)
                if not warm:
                    qido[kind].append(seconds)
                counts = {"qido": found}
                for name, client in clients.items():
                    if isinstance(client, str):
                        continue
                    try:
                        seconds, matches = client.find(study_identifier(criteria))
                    except FindNotSupported as exc:
                        clients[name] = f"n/a ({exc})"
                        finds.pop(name, None)
                        continue
                    counts[name] = matches
                    if not warm:
                        finds[name][kind].append(seconds)
                if len(set(counts.values())) > 1:
                    mismatches += 1
        finally:
            http.close()
            for client in clients.values():
                if not isinstance(client, str):
                    client.close()
        out["qido"] = summarize_queries(qido)
        for name, _, _ in targets:
            client = clients[name]
            out[f"cfind_{name}"] = (
                {"status": client} if isinstance(client, str) else summarize_queries(finds[name])
            )
        out["result_count_mismatches"] = mismatches
        if mismatches:
            self.note(f"{mismatches} queries at {size:,} gave different match counts")
        self.say(
            "  QIDO-RS p50/p95 "
            f"{_ms(out['qido']['all']['p50_s'])}/{_ms(out['qido']['all']['p95_s'])}"
            + "".join(
                f"; C-FIND {name} "
                + (
                    f"{_ms(out[f'cfind_{name}']['all']['p50_s'])}/"
                    f"{_ms(out[f'cfind_{name}']['all']['p95_s'])}"
                    if "all" in out[f"cfind_{name}"]
                    else out[f"cfind_{name}"]["status"]
                )
                for name, _, _ in targets
            )
        )
        return out

    def _ui(self, server: DicomflowServer, studies: int, size: int) -> dict[str, Any]:
        pages = ui_pages(server.http, studies, seed=size)
        figures = measure_ui(
            server.http_port, pages, self.options.ui_rounds, headers=server.http_headers
        )
        slowest = {
            how: max(
                (s["p95_s"] for s in figures[how].values() if s.get("p95_s") is not None),
                default=None,
            )
            for how in ("server", "browser")
            if "status" not in figures[how]
        }
        if "status" in figures["browser"]:
            self.note(f"UI in a browser not measured: {figures['browser']['status']}")
        self.say(
            "  UI slowest page p95: "
            + "; ".join(f"{how} {_ms(value)}" for how, value in slowest.items())
        )
        return figures

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        opts = self.options
        started = time.monotonic()
        self.say(f"scratch folder {self.work}; run tag {self.run_tag}")
        try:
            if "ingest" in opts.phases:
                self.phase_ingest()
            if "searchable" in opts.phases:
                self.phase_searchable()
            if {"query", "import", "ui"} & set(opts.phases):
                self.phase_fill_and_query(query="query" in opts.phases)
        except KeyboardInterrupt:
            self.note("interrupted: the results are partial")
        finally:
            if "memory" in opts.phases:
                self.results["memory"] = self.memory
            self.results["duration_s"] = time.monotonic() - started
            self.results["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            if not opts.keep:
                shutil.rmtree(self.work, ignore_errors=True)
        return self.results


def cpu_by_pid(receiver: Receiver) -> dict[int, float]:
    """CPU seconds so far of each of a receiver's processes."""
    return {pid: cpu for root in receiver.roots() for pid, cpu in procs.cpu_by_pid(root).items()}


def cpu_by_role_since(receiver: Receiver, before: dict[int, float]) -> dict[str, float]:
    """CPU seconds by role since `before` (a `cpu_by_pid` of the same receiver); a process that
    ended meanwhile is left out, one that started counts whole."""
    by_role: dict[str, float] = {}
    for pid, cpu in cpu_by_pid(receiver).items():
        role = receiver.role_of(pid)
        by_role[role] = by_role.get(role, 0.0) + cpu - before.get(pid, 0.0)
    return by_role


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def query_criteria(kind: str, study: int) -> dict[str, str]:
    """The matching keys of one study-level query about study number `study`."""
    if kind == "PatientID":
        return {"PatientID": f"BPID{study:08d}"}
    if kind == "PatientName prefix":
        return {"PatientName": patient_name(study)[:5] + "*"}
    if kind == "StudyDate":
        return {"StudyDate": study_date(study)}
    if kind == "AccessionNumber":
        return {"AccessionNumber": f"BACC{study % 10**8:08d}"}
    raise ValueError(f"unknown query kind {kind!r}")


def summarize_queries(samples: dict[str, list[float]]) -> dict[str, Any]:
    every = [s for values in samples.values() for s in values]
    out: dict[str, Any] = {"all": latency_summary(every)}
    for kind, values in samples.items():
        out[kind] = latency_summary(values)
    return out


def summarize_ingest(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median figures per (case, associations, nodelay, receiver), warm-ups excluded."""
    groups: OrderedDict[tuple[str, int, bool, str], list[dict[str, Any]]] = OrderedDict()
    for run in runs:
        key = (run["case"], run["associations"], run["nodelay"], run["receiver"])
        groups.setdefault(key, []).append(run)
    out = []
    for (case, assoc, nodelay, receiver), group in groups.items():
        rates = [r["rate"] for r in group]
        out.append(
            {
                "case": case,
                "associations": assoc,
                "nodelay": nodelay,
                "receiver": receiver,
                "runs": len(group),
                "rate": median(rates),
                "rate_min": min(rates),
                "rate_max": max(rates),
                "mb_per_s": median([r["mb_per_s"] for r in group]),
                "cpu_ms_per_object": median([1000 * r["cpu_s"] / r["instances"] for r in group]),
                "settle_s": median([r["settle_s"] for r in group]),
                "steal": median([r["machine"].get("steal", 0.0) for r in group]),
                "all_ok": all(r["ok"] for r in group),
            }
        )
    return out


def sustained_ingest(
    storescu: Tool, server: DicomflowServer, folders: list[Path], seconds: float
) -> int:
    """Send from every folder in parallel, again and again, until `seconds` have passed.

    storescu invents new UIDs for every object it sends (+IR 50: a new series every 50
    objects; +IS 2: a new study every 2 series), so each pass is new data for the archive.
    """
    deadline = time.monotonic() + seconds
    env = storescu_env(True)
    runs = [0]
    lock = threading.Lock()

    def loop(folder: Path) -> None:
        # New UIDs as it sends, so the folder's order does not matter: scanned, not listed.
        command = storescu_command(
            storescu,
            server.ae_title,
            server.port,
            ["+sd", "+r", str(folder)],
            options=("+IS", "2", "+IR", "50"),
        )
        while time.monotonic() < deadline:
            subprocess.run(
                command,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=600,
                check=False,
            )
            with lock:
                runs[0] += 1

    threads = [threading.Thread(target=loop, args=(f,), daemon=True) for f in folders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return runs[0]


class SearchableTracker:
    """Acknowledgement-to-searchable latency of every object received during a phase.

    One thread reads the new 'received' records of the event log (their timestamp is the
    acknowledgement time, to within the commit) and polls QIDO-RS
    ``/studies/{study}/series/{series}/instances`` for the oldest incomplete series (at most
    16 per round, the pipeline works in order); an object's latency is the time of the first
    answer that lists it minus its acknowledgement time.
    """

    MAX_SERIES_PER_ROUND = 16

    def __init__(self, server: DicomflowServer) -> None:
        self.server = server
        self.http = HttpClient(server.http_port, headers=server.http_headers)
        self._topic = "dicomflow.received"
        self._offset = server.bus().topic_sizes().get(self._topic, 0)
        self._pending: OrderedDict[tuple[str, str], dict[str, float]] = OrderedDict()
        self._latencies: list[float] = []
        self.last_seen = 0.0  # wall time of the last object found searchable
        self._rounds: list[float] = []
        self._seen_records = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="searchable", daemon=True)
        self.error: str = ""

    def _read_log(self) -> None:
        bus = self.server.bus()
        while True:
            records = bus.read(self._topic, self._offset, 2000)
            if not records:
                return
            for record in records:
                event = json.loads(record.value)
                ident = event["identity"]
                key = (ident["study_instance_uid"], ident["series_instance_uid"])
                self._pending.setdefault(key, {})[ident["sop_instance_uid"]] = record.timestamp
            self._offset = records[-1].offset + 1
            self._seen_records += len(records)

    def _poll(self) -> None:
        for key in list(self._pending)[: self.MAX_SERIES_PER_ROUND]:
            study, series = key
            status, body = self.http.get(
                f"/dicomweb/studies/{study}/series/{series}/instances?limit=10000"
            )
            now = time.time()
            if status != 200:
                continue
            waiting = self._pending[key]
            for item in json.loads(body):
                sop = item.get("00080018", {}).get("Value", [None])[0]
                acked = waiting.pop(sop, None)
                if acked is not None:
                    with self._lock:
                        self._latencies.append(now - acked)
                        self.last_seen = now
            if not waiting:
                del self._pending[key]

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._read_log()
                self._poll()
            except Exception as exc:  # reported with the figures, never hidden
                self.error = f"{type(exc).__name__}: {exc}"
                self._stop.wait(0.5)
            self._rounds.append(time.monotonic() - started)
            self._stop.wait(0.02)

    def wait_all(self, expected: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self._latencies) >= expected:
                    return
            time.sleep(0.2)

    def latencies(self) -> list[float]:
        with self._lock:
            return list(self._latencies)

    def round_summary(self) -> dict[str, Any]:
        return latency_summary(self._rounds)

    def __enter__(self) -> "SearchableTracker":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.http.close()


class LagCurve:
    """Samples /api/status twice a second: the pipeline lag over time."""

    def __init__(self, server: DicomflowServer, interval: float = 0.5) -> None:
        self.http = HttpClient(server.http_port, headers=server.http_headers)
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self.marks: dict[str, float] = {}
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lag-curve", daemon=True)

    def mark(self, name: str) -> None:
        self.marks[name] = time.monotonic() - self._t0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status = self.http.get_json("/api/status")
            except Exception:
                status = None
            if status is not None:
                processors = {p["name"]: int(p["lag"]) for p in status["processors"]}
                self.samples.append(
                    {
                        "t": round(time.monotonic() - self._t0, 2),
                        "lag": sum(processors.values()),
                        "by_processor": processors,
                        "received": status["topics"].get("dicomflow.received", 0),
                    }
                )
            self._stop.wait(self.interval)

    def drain_seconds(self, mark: str) -> float | None:
        """Seconds from a mark until the first sample with no lag."""
        at = self.marks.get(mark)
        if at is None:
            return None
        for sample in self.samples:
            if sample["t"] >= at and sample["lag"] == 0:
                return float(sample["t"] - at)
        return None

    def __enter__(self) -> "LagCurve":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.http.close()
