"""A search space declared by a user's table: one CSV row per candidate, decision columns and metric columns.

``--space table:PATH.csv --objective COL --latency-column COL`` lets people search over benchmarks or
measurements they already have. The objective column is the expensive metric: a search reads it only through
``TableEvaluator.evaluate`` (a lookup), which counts against the budget exactly like training a model. The latency
columns (one per device) play the role of the LatencyModel: free, known for every row, used to filter by the
constraint. ``--proxy COL`` names further free columns (e.g. MACs) that the MLP predictor pretrains on.

Which columns are decisions: the ones named with ``--decision`` when any are; otherwise every column that is not
named as the objective, a latency, proxy or metric column and is not *result-like*: a numeric column whose name
contains ``accuracy``, ``latency``, ``loss``, ``seconds``, ``params``, ``macs``, ``flops``, ``error`` or ``steps``,
or ends in ``_ms`` (``RESULT_LIKE``). So a table's test accuracy, training time, MACs or another device's latency are
never decisions by accident, while recipe columns (lr, epochs, batch_size) are. ``TableSpace.decision_rule`` holds
the outcome (which columns are decisions, which are not and why); searches print it and record it in config.json.

Decision columns become decisions: text columns categorical, numeric columns with few distinct values ordinal,
other numeric columns a float range (log scale when positive and spanning two decades or more).
Rows with identical decisions are merged (their metrics averaged) and counted in ``warnings``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from nas.errors import SpaceError
from nas.search.blackbox.decisions import Decision, DecisionSpace

MAX_ORDINAL_VALUES = 24
RESULT_LIKE = re.compile(r"accuracy|latency|loss|seconds|params|macs|flops|error|steps|_ms$", re.IGNORECASE)


def infer_decisions(frame: pd.DataFrame, named: list[str]) -> tuple[list[str], dict[str, str]]:
    """The default rule: the columns of ``frame`` that are decisions, and why each other column is not one.
    ``named`` are the objective, latency, proxy and metric columns."""
    decisions, not_decisions = [], {}
    for column in frame.columns:
        if column in named:
            not_decisions[column] = "named"
        elif RESULT_LIKE.search(column) and pd.to_numeric(frame[column], errors="coerce").notna().all():
            not_decisions[column] = "result-like name"
        else:
            decisions.append(column)
    return decisions, not_decisions


def _numeric_column(frame: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce")
    bad = values.isna() | ~np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        cell = raw.iloc[i]
        what = "is empty" if pd.isna(cell) or str(cell).strip() == "" else f"{str(cell)!r} is not a number"
        raise SpaceError(f"{path}: metric column {column!r}, row {i + 1} (line {i + 2}): {what}")
    return values.to_numpy(dtype=float)


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"table not found: {path}")
    try:
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else \
            pd.read_csv(path, keep_default_na=False, na_values=[""])  # "n/a" is reported as text, not as empty
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as e:
        raise SpaceError(f"{path}: not a readable table ({str(e).strip().splitlines()[0]})") from None
    if frame.empty:
        raise SpaceError(f"{path}: the table has no rows")
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


class TableSpace(DecisionSpace):
    """The decision columns of a table as a decision space; its rows are the only candidates."""

    def __init__(self, path: str | Path, objective: str, latency_columns: list[str], *,
                 proxy_columns: list[str] = (), metric_columns: list[str] = (),
                 decision_columns: list[str] | None = None):
        self.path = Path(path)
        frame = read_table(self.path)
        self.objective = objective
        self.latency_columns = list(latency_columns)
        self.proxy_columns = list(proxy_columns)
        metric_columns = [c for c in metric_columns if c not in (objective, *latency_columns, *proxy_columns)]
        self.metric_columns = [objective, *metric_columns]
        measured = [objective, *self.latency_columns, *self.proxy_columns, *metric_columns]
        for column in measured + list(decision_columns or []):
            if column not in frame.columns:
                raise SpaceError(f"{self.path}: no column {column!r} (columns: {', '.join(frame.columns)})")
        if len(set(measured)) != len(measured):
            raise SpaceError(f"{self.path}: a column is named twice among the objective, latency, proxy and "
                             f"metric columns")
        numeric = {c: _numeric_column(frame, c, self.path) for c in measured}
        for c in self.latency_columns:
            if (numeric[c] < 0).any():
                row = int(np.flatnonzero(numeric[c] < 0)[0])
                raise SpaceError(f"{self.path}: latency column {c!r}, row {row + 1}: negative latency "
                                 f"{numeric[c][row]}")
        if decision_columns:
            names = list(decision_columns)
            not_decisions = {c: "not named by --decision" for c in frame.columns if c not in names}
        else:
            names, not_decisions = infer_decisions(frame, measured)
        self.decision_rule = {"rule": "--decision" if decision_columns else "inferred", "decisions": names,
                              "not_decisions": not_decisions}
        overlap = set(names) & set(measured)
        if overlap:
            raise SpaceError(f"{self.path}: column(s) {', '.join(sorted(overlap))} cannot be both a decision and "
                             f"a metric")
        decisions, columns, self.fixed = [], [], {}
        for name in names:
            decision, column = _decision(name, frame[name])
            if decision is None:
                self.fixed[name] = column[0]
                continue
            decisions.append(decision)
            columns.append(column)
        if not decisions:
            raise SpaceError(f"{self.path}: no decision column varies (decision columns: "
                             f"{', '.join(names) or 'none'}); name them with --decision COLUMN")
        super().__init__(decisions)
        genomes = np.column_stack(columns)
        # merge rows with identical decisions (e.g. repeated seeds): average their metrics
        sorted_ids = np.unique(np.round(genomes, 6), axis=0, return_inverse=True)[1].ravel()
        n_unique = int(sorted_ids.max()) + 1
        first_seen = np.full(n_unique, len(genomes))
        np.minimum.at(first_seen, sorted_ids, np.arange(len(genomes)))
        order = np.argsort(first_seen)  # candidates keep the order of their first row
        rank = np.empty(n_unique, dtype=int)
        rank[order] = np.arange(n_unique)
        keys = rank[sorted_ids]
        first = first_seen[order]
        self.warnings: list[str] = []
        if n_unique < len(genomes):
            self.warnings.append(f"{len(genomes) - n_unique} rows repeat the decisions of another row; "
                                 f"their metrics were averaged")
        counts = np.bincount(keys, minlength=n_unique)
        self.genomes = genomes[first]
        self.values = {c: np.bincount(keys, weights=v, minlength=n_unique) / counts for c, v in numeric.items()}
        self.rows = n_unique
        self.source_rows = first  # the first source row (0-based) of each candidate
        self._index = {k: i for i, k in enumerate(self.keys(self.genomes))}

    # ---- free columns --------------------------------------------------------------------------------------
    def decision_line(self) -> str:
        """The decision rule's outcome in one line (printed when a search starts)."""
        r = self.decision_rule
        skipped = [c for c, why in r["not_decisions"].items() if why == "result-like name"]
        return (f"decisions ({r['rule']}): {', '.join(r['decisions'])}"
                + (f"; not decisions (result-like): {', '.join(skipped)}" if skipped else ""))

    def latency_ms(self, rows: np.ndarray) -> np.ndarray:
        return np.column_stack([self.values[c][rows] for c in self.latency_columns]) if self.latency_columns \
            else np.zeros((len(rows), 0))

    def proxies(self, rows: np.ndarray) -> np.ndarray:
        return np.column_stack([self.values[c][rows] for c in self.proxy_columns]) if self.proxy_columns \
            else np.zeros((len(rows), 0))

    # ---- rows <-> genomes ------------------------------------------------------------------------------------
    def row_of(self, genomes: np.ndarray) -> np.ndarray:
        """Row index of each genome: exact when it is a row, else the nearest row in feature space."""
        genomes = np.atleast_2d(genomes)
        out = np.asarray([self._index.get(k, -1) for k in self.keys(genomes)])
        miss = out < 0
        if miss.any():
            out[miss] = self.nearest(genomes[miss])
        return out

    def nearest(self, genomes: np.ndarray, chunk: int = 2048, exclude=()) -> np.ndarray:
        """The nearest row of each genome in feature space, never one of the rows in ``exclude``."""
        table = self.encode(self.genomes).astype(np.float64)
        t2 = (table ** 2).sum(1)
        t2[list(exclude)] = np.inf
        out = []
        for i in range(0, len(genomes), chunk):
            x = self.encode(genomes[i:i + chunk]).astype(np.float64)
            d = t2[None, :] - 2 * x @ table.T
            out.append(d.argmin(1))
        return np.concatenate(out) if out else np.zeros(0, dtype=int)

    def untaken_row(self, genome: np.ndarray, taken: set[int]) -> int | None:
        """The row ``genome`` names, or when that row is in ``taken`` the nearest one that is not; None when
        every row is taken."""
        if len(taken) >= self.rows:
            return None
        row = int(self.row_of(genome[None, :])[0])
        return row if row not in taken else int(self.nearest(genome[None, :], exclude=taken)[0])

    def rows_of_keys(self, keys) -> set[int]:
        return {self._index[k] for k in keys if k in self._index}


def _decision(name: str, series: pd.Series) -> tuple[Decision | None, np.ndarray]:
    """A decision for one column and the genome entries of its rows (None when the column is constant)."""
    values = pd.to_numeric(series, errors="coerce")
    if values.notna().all() and np.isfinite(values.to_numpy(dtype=float)).all():
        v = values.to_numpy(dtype=float)
        uniq = np.unique(v)
        if len(uniq) == 1:
            return None, np.asarray([_plain(uniq[0])])
        if len(uniq) <= MAX_ORDINAL_VALUES:
            options = tuple(_plain(u) for u in uniq)
            return Decision(name, "ord", options), np.searchsorted(uniq, v).astype(float)
        low, high = float(uniq[0]), float(uniq[-1])
        log = low > 0 and high / low >= 100
        d = Decision(name, "float", low=low, high=high, log=log)
        return d, np.asarray([d.entry(x) for x in v])
    text = series.fillna("").astype(str).str.strip()
    uniq = sorted(set(text))
    if len(uniq) == 1:
        return None, np.asarray([uniq[0]], dtype=object)
    lookup = {u: i for i, u in enumerate(uniq)}
    return Decision(name, "cat", tuple(uniq)), text.map(lookup).to_numpy(dtype=float)


def _plain(v):
    f = float(v)
    return int(f) if f.is_integer() else f


class TableEvaluator:
    """An evaluation on a table space is a row lookup: the objective and the metric columns of that row.
    ``sleep_column``: each lookup also sleeps that column's value (e.g. ``train_seconds``) times ``sleep_scale``
    seconds, to rehearse a distributed search at the cost of real evaluations."""

    def __init__(self, table: TableSpace, sleep_column: str | None = None, sleep_scale: float = 1.0):
        self.table = table
        if sleep_column is not None and sleep_column not in table.values:
            raise SpaceError(f"{table.path}: the sleep column {sleep_column!r} is not a metric, latency or proxy "
                             f"column")
        self.sleep_column, self.sleep_scale = sleep_column, sleep_scale

    def evaluate(self, row: int) -> dict[str, float]:
        t = self.table
        if self.sleep_column is not None:
            time.sleep(max(0.0, float(t.values[self.sleep_column][row]) * self.sleep_scale))
        out = {c: float(t.values[c][row]) for c in t.metric_columns}
        out.update({c: float(t.values[c][row]) for c in t.latency_columns + t.proxy_columns})
        return out
