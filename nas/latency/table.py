"""Latency tables on disk: ``latency_tables/<device-id>/`` with a ``device.json`` manifest and ``table.csv``.

The table is an append-only CSV, one row per measured op key. Appends take an exclusive ``fcntl`` lock and
write each row with a single ``write`` on an ``O_APPEND`` descriptor, so two profilers writing the same
table never lose or tear rows, and a key measured by one is not appended again by the other. Every row
carries a CRC of its fields: a reader detects a truncated last row, a torn or edited row, and a wrong
header, and names the file and line. The base folder is ``$HWNAS_LATENCY_TABLES``, else ``./latency_tables``.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import platform
import re
import time
import zlib
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import onnxruntime as ort

from nas.arch.opkey import OpKey
from nas.errors import LatencyTableError
from nas.files import write_json
from nas.latency import remote_measure

TABLES_ENV = "HWNAS_LATENCY_TABLES"
TABLE_FILE = "table.csv"
MANIFEST_FILE = "device.json"
OPTIMIZATION_LEVELS = ("none", "basic", "extended", "all")
_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")

KEY_COLUMNS = ("key", "op", "c_in", "c_out", "stride", "resolution", "tokens", "bits", "extra")
STAT_COLUMNS = ("p50_ms", "p90_ms", "mean_ms", "std_ms", "count", "spread", "stable", "overhead_ms",
                "macs", "params", "in_bytes", "out_bytes", "timestamp")
COLUMNS = KEY_COLUMNS + STAT_COLUMNS + ("crc",)
_INT = {"c_in", "c_out", "stride", "resolution", "tokens", "bits", "count", "macs", "params", "in_bytes", "out_bytes"}
_FLOAT = {"p50_ms", "p90_ms", "mean_ms", "std_ms", "spread", "overhead_ms"}


def tables_root(tables_dir: str | Path | None = None) -> Path:
    root = Path(tables_dir or os.environ.get(TABLES_ENV) or "latency_tables")
    if root.exists() and not root.is_dir():
        raise LatencyTableError(f"the tables folder {root} is a file, not a folder; pass another --tables-dir "
                                f"(or ${TABLES_ENV})")
    return root


def check_device_id(device_id: str) -> str:
    if not _DEVICE_ID.fullmatch(device_id or ""):
        raise LatencyTableError(f"invalid device id {device_id!r}: use letters, digits, '.', '_', '+', '-' "
                                f"(it names the folder latency_tables/<device-id>/)")
    return device_id


def list_devices(tables_dir: str | Path | None = None) -> list[str]:
    root = tables_root(tables_dir)
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST_FILE).is_file()) if root.is_dir() else []


def device_dir(device_id: str, tables_dir: str | Path | None = None) -> Path:
    return tables_root(tables_dir) / check_device_id(device_id)


# ---- manifest -----------------------------------------------------------------------------------------------
@dataclass
class DeviceManifest:
    """Where and how a table was measured. ``remote`` tables were measured elsewhere from a bundle."""

    device_id: str
    provider: str = "CPUExecutionProvider"
    threads: int = 1
    graph_optimization: str = "all"
    clock: str = "wall"  # "wall": perf_counter; "cpu": the calling thread's CPU time (see timing.TimingConfig)
    cpu_model: str = ""
    cores: int = 0
    os: str = ""
    machine: str = ""
    python: str = ""
    onnxruntime_version: str = ""
    created: str = ""
    remote: bool = False
    notes: dict = field(default_factory=dict)
    batch: int = 1  # the batch size every model and block is timed at (their batch axis is dynamic)

    @classmethod
    def for_this_machine(cls, device_id: str, provider: str = "CPUExecutionProvider", threads: int = 1,
                         graph_optimization: str = "all", clock: str = "wall", batch: int = 1) -> "DeviceManifest":
        if graph_optimization not in OPTIMIZATION_LEVELS:
            raise LatencyTableError(f"graph optimisation level {graph_optimization!r} is not one of "
                                    f"{', '.join(OPTIMIZATION_LEVELS)}")
        if threads < 1:
            raise LatencyTableError(f"threads must be >= 1, got {threads}")
        if batch < 1:
            raise LatencyTableError(f"batch must be >= 1, got {batch}")
        return cls(check_device_id(device_id), provider, threads, graph_optimization, clock, remote_measure.cpu_model(),
                   os.cpu_count() or 0, f"{platform.system()} {platform.release()}", platform.machine(),
                   platform.python_version(), ort.__version__, time.strftime("%Y-%m-%dT%H:%M:%S%z"), batch=batch)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "DeviceManifest":
        known = set(cls.__dataclass_fields__)
        try:
            m = cls(**{k: v for k, v in d.items() if k in known})
            m.threads, m.batch = int(m.threads), int(m.batch)
        except (TypeError, ValueError) as e:
            raise LatencyTableError(f"{where}: not a device manifest ({e})") from None
        if not m.device_id or not m.provider:
            raise LatencyTableError(f"{where}: device manifest lacks device_id or provider")
        return m

    def same_setup(self, other: "DeviceManifest") -> list[str]:
        """Settings that differ between two manifests (they must match to add rows to one table)."""
        return [f"{k}: table has {getattr(self, k)!r}, now {getattr(other, k)!r}"
                for k in ("provider", "threads", "graph_optimization", "clock", "batch", "onnxruntime_version",
                          "cpu_model")
                if getattr(self, k) != getattr(other, k)]

    def version_warning(self) -> str | None:
        if not self.remote and self.onnxruntime_version and self.onnxruntime_version != ort.__version__:
            return (f"device {self.device_id!r} was measured with onnxruntime {self.onnxruntime_version}, "
                    f"this is onnxruntime {ort.__version__}: predictions may be off")
        return None


def manifest_path(device_id: str, tables_dir: str | Path | None = None) -> Path:
    """The device's ``device.json``; LatencyTableError naming the known devices when there is none."""
    path = device_dir(device_id, tables_dir) / MANIFEST_FILE
    if not path.is_file():
        known = list_devices(tables_dir)
        raise LatencyTableError(f"unknown device {device_id!r}: no {path} (known devices: "
                                f"{', '.join(known) or 'none'}; run `hwnas latency profile --device {device_id}`)")
    return path


def read_manifest(device_id: str, tables_dir: str | Path | None = None) -> DeviceManifest:
    return _read_manifest_file(manifest_path(device_id, tables_dir))


def _read_manifest_file(path: Path) -> DeviceManifest:
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LatencyTableError(f"{path}: corrupt device manifest ({e})") from None
    except OSError as e:
        raise LatencyTableError(f"{path}: cannot read device manifest ({e.strerror})") from None
    if not isinstance(d, dict):
        raise LatencyTableError(f"{path}: corrupt device manifest (not a JSON object)")
    return DeviceManifest.from_dict(d, str(path))


# ---- rows ---------------------------------------------------------------------------------------------------
def _crc(values: list[str]) -> str:
    return f"{zlib.crc32(','.join(values).encode()):08x}"


def encode_row(key: OpKey, stats: dict) -> str:
    """One CSV line (with newline) for ``key`` and its statistics, CRC included."""
    values = [str(key), key.op, key.c_in, key.c_out, key.stride, key.resolution, key.tokens, key.bits, key.extra]
    for col in STAT_COLUMNS:
        v = stats.get(col, 0 if col != "timestamp" else time.strftime("%Y-%m-%dT%H:%M:%S"))
        if col in _FLOAT:
            v = f"{float(v):.6g}"
        elif col == "stable":
            v = int(bool(v))
        elif col in _INT:
            v = int(v)
        values.append(v)
    values = [str(v) for v in values]
    values.append(_crc(values))
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


def _parse_rows(data: bytes, path: Path, *, first_line: int = 1, allow_torn_tail: bool = False,
                rows: dict[str, dict] | None = None) -> tuple[dict[str, dict], int]:
    """Parse table bytes (starting at line ``first_line``; line 1 is the header) into ``rows`` {key: row}.

    Returns (rows, number of bytes parsed). A last line without a newline is a torn row: an error, or, with
    ``allow_torn_tail``, left unparsed (the caller cuts it off).
    """
    rows = {} if rows is None else rows
    if not data:
        return rows, 0
    valid = len(data)
    if not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        if not allow_torn_tail:
            line_no = first_line + data.count(b"\n")
            raise LatencyTableError(f"{path}: truncated table, line {line_no} is incomplete "
                                    f"(rerun `hwnas latency profile` on this device to repair it)")
        data, valid = data[:cut], cut
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise LatencyTableError(f"{path}: corrupt table (not UTF-8 text)") from None
    for i, values in enumerate(csv.reader(io.StringIO(text)), start=first_line):
        if i == 1:
            if tuple(values) != COLUMNS:
                raise LatencyTableError(f"{path}: line 1 is not a latency table header "
                                        f"(expected {','.join(COLUMNS[:4])},...)")
            continue
        if len(values) != len(COLUMNS):
            raise LatencyTableError(f"{path}: corrupt table, line {i} has {len(values)} fields, "
                                    f"expected {len(COLUMNS)}")
        if _crc(values[:-1]) != values[-1]:
            raise LatencyTableError(f"{path}: corrupt table, line {i} fails its checksum (torn or edited row)")
        row = dict(zip(COLUMNS, values))
        try:
            for k in _INT:
                row[k] = int(row[k])
            for k in _FLOAT:
                row[k] = float(row[k])
            row["stable"] = row["stable"] == "1"
            OpKey.parse(row["key"])
        except ValueError as e:
            raise LatencyTableError(f"{path}: corrupt table, line {i}: {e}") from None
        rows.setdefault(row["key"], row)  # the first measurement of a key wins
    return rows, valid


_HEADER = (",".join(COLUMNS) + "\n").encode()


@contextmanager
def _locked(path: Path, exclusive: bool) -> Iterator[int]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)  # the umask decides, as for every other file
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield fd
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_from(fd: int, offset: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, size - offset, offset) if size > offset else b""


def read_csv_rows(path: Path) -> list[dict]:
    """The rows of a CSV file with a header (none when it does not exist)."""
    return list(csv.DictReader(io.StringIO(path.read_text()))) if path.is_file() else []


def append_unique_row(path: Path, columns: tuple[str, ...], row: dict, identity: tuple[str, ...]) -> bool:
    """Append one row under an exclusive lock, unless a row with the same ``identity`` columns is there."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([row[c] for c in columns])
    same = tuple(str(row[c]) for c in identity)
    with _locked(path, exclusive=True) as fd:
        data = _read_from(fd, 0)
        if data and not data.endswith(b"\n"):  # a writer killed mid-row: cut the torn row
            os.ftruncate(fd, data.rfind(b"\n") + 1)
            data = data[:data.rfind(b"\n") + 1]
        if not data:
            os.write(fd, (",".join(columns) + "\n").encode())
        elif any(tuple(r.get(c) for c in identity) == same for r in csv.DictReader(io.StringIO(data.decode()))):
            return False
        os.write(fd, buf.getvalue().encode())
    return True


# ---- the table ----------------------------------------------------------------------------------------------
class LatencyTable:
    """One device's measured table: ``rows`` maps key strings to row dicts (p50_ms, p90_ms, ...)."""

    def __init__(self, folder: Path, manifest: DeviceManifest, rows: dict[str, dict]):
        self.folder = folder
        self.manifest = manifest
        self.rows = rows
        self._offset = 0  # bytes of table.csv already parsed into rows
        self._lines = 0  # lines of table.csv already parsed

    @property
    def device_id(self) -> str:
        return self.manifest.device_id

    @property
    def path(self) -> Path:
        return self.folder / TABLE_FILE

    def __contains__(self, key: OpKey | str) -> bool:
        return str(key) in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, key: OpKey | str) -> dict | None:
        return self.rows.get(str(key))

    def keys(self) -> list[OpKey]:
        return [OpKey.parse(k) for k in self.rows]

    @classmethod
    def open(cls, device_id: str, tables_dir: str | Path | None = None) -> "LatencyTable":
        """Read a device's table; raise LatencyTableError if the device is unknown or the table corrupt."""
        return cls.open_folder(manifest_path(device_id, tables_dir).parent)  # names an unknown device

    @classmethod
    def open_folder(cls, folder: Path) -> "LatencyTable":
        """Read the table in ``folder`` (device.json + table.csv)."""
        folder = Path(folder)
        manifest = _read_manifest_file(folder / MANIFEST_FILE)
        path = folder / TABLE_FILE
        if not path.is_file():
            raise LatencyTableError(f"device {manifest.device_id!r} has no table yet ({path} is missing); "
                                    f"run `hwnas latency profile --device {manifest.device_id}`")
        data = path.read_bytes()
        if not data.startswith(_HEADER):
            raise LatencyTableError(f"{path}: corrupt table (missing or wrong header line)" if data
                                    else f"{path}: empty table (no header)")
        rows, parsed = _parse_rows(data, path)
        table = cls(folder, manifest, rows)
        table._offset, table._lines = parsed, data[:parsed].count(b"\n")  # ``refresh`` reads only what comes after
        return table

    @classmethod
    def open_for_writing(cls, manifest: DeviceManifest, tables_dir: str | Path | None = None) -> "LatencyTable":
        """Open (or create) a device table to add rows measured with ``manifest``'s setup.

        Refuses a device whose table was measured with another provider, thread count, optimisation level,
        onnxruntime version or CPU. A torn last row (a profiler killed mid-write) is cut off, to be remeasured.
        """
        folder = device_dir(manifest.device_id, tables_dir)
        manifest_path = folder / MANIFEST_FILE
        if manifest_path.is_file():
            stored = read_manifest(manifest.device_id, tables_dir)
            diff = stored.same_setup(manifest)
            if stored.remote:
                raise LatencyTableError(f"device {manifest.device_id!r} holds a table imported from a remote "
                                        f"device; profile this machine under another --device id")
            if stored.notes.get("adapted_from"):
                raise LatencyTableError(f"device {manifest.device_id!r} holds a table adapted from device "
                                        f"{stored.notes['adapted_from']!r} (`hwnas latency adapt`); profile its "
                                        f"blocks under another --device id")
            if diff:
                raise LatencyTableError(f"device {manifest.device_id!r} was measured with another setup "
                                        f"({'; '.join(diff)}); use another --device id")
            manifest = stored
        else:
            write_json(manifest_path, manifest.to_dict())  # creates the folder (OutputError if it cannot)
        table = cls(folder, manifest, {})
        table.refresh(repair=True)
        return table

    def _catch_up(self, fd: int, repair: bool) -> None:
        """Parse what other writers appended since the last read (fd locked); cut a torn tail if ``repair``."""
        data = _read_from(fd, self._offset)
        _, parsed = _parse_rows(data, self.path, first_line=self._lines + 1, allow_torn_tail=repair,
                                rows=self.rows)
        if parsed < len(data):
            os.ftruncate(fd, self._offset + parsed)
        self._offset += parsed
        self._lines += data[:parsed].count(b"\n")

    def refresh(self, repair: bool = False) -> None:
        """Re-read rows appended by any writer; ``repair`` cuts a torn last row (a writer killed mid-row)."""
        with _locked(self.path, exclusive=repair) as fd:
            self._catch_up(fd, repair)
            if repair and self._offset == 0:
                os.write(fd, _HEADER)
                self._offset, self._lines = len(_HEADER), 1

    def append(self, key: OpKey, stats: dict) -> bool:
        """Append one measured row unless another writer already has ``key``; True when written.

        Under an exclusive lock: catch up with other writers, then one ``write`` of the whole row.
        """
        line = encode_row(key, stats).encode("utf-8")
        with _locked(self.path, exclusive=True) as fd:
            self._catch_up(fd, repair=True)
            if self._offset == 0:
                os.write(fd, _HEADER)
                self._offset, self._lines = len(_HEADER), 1
            if str(key) in self.rows:
                return False
            os.write(fd, line)
            os.fsync(fd)
            self._catch_up(fd, repair=False)
        return True
