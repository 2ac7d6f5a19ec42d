"""Features of an op key for the fallback regressor: MACs, params and memory traffic, computed from the key.

Each op's registration (``nas.arch.ops``) gives its analytic cost (the block vocabulary's in ``nas.models.blocks``); ops
registered without one (transformer units, single quantised layers) use the MACs/params their table rows
recorded, else a shape guess. An unregistered op raises ``ArchError``.
"""

from __future__ import annotations

import math

import numpy as np

from nas.arch.opkey import OpKey
from nas.arch.ops import parse_op

KINDS = ("conv", "ir", "skip", "pool_fc", "other")  # one-hot of the op's kind; every other kind is "other"
FEATURE_NAMES = ("log_macs", "log_params", "log_traffic", "log_in", "log_out", "log_dw_macs", "log_pw_macs",
                 "kernel", "expansion", "groups", "stride", "log_resolution", "log_tokens", "bits",
                 "log_c_in", "log_c_out") + tuple(f"kind_{k}" for k in KINDS)


def analytic_cost(key: OpKey) -> dict:
    """MACs, params and bytes moved of ``key``'s op at batch 1 (fp32 bytes), from its registration's cost;
    ``analytic`` False where it has none (then a shape guess)."""
    spec = parse_op(key.op)
    r, cin, cout = key.resolution, key.c_in, key.c_out
    ro = math.ceil(r / key.stride) if r else 0
    out = {"kind": spec.kind if spec.kind in KINDS else "other", "kernel": spec.kernel, "expansion": spec.expansion,
           "groups": spec.groups, "dw_macs": 0, "pw_macs": 0}
    cost = spec.cost(key)
    out["analytic"] = cost is not None
    if cost is None:
        t = max(key.tokens, 1) * max(key.resolution, 1) ** 2 if key.tokens == 0 else key.tokens
        cost = {"macs": cin * cout * t, "params": cin * cout, "traffic": 4 * (cin + cout) * t}
    out |= cost
    out["in_bytes"] = 4 * cin * (r * r if r else max(key.tokens, 1))
    out["out_bytes"] = 4 * cout * (ro * ro if r else max(key.tokens, 1))
    return out


def key_features(key: OpKey, row: dict | None = None) -> np.ndarray:
    """The regressor's feature vector for ``key`` (a measured row's MACs/params win for ops without a cost)."""
    c = analytic_cost(key)
    if not c["analytic"] and row:
        c |= {k: row[k] for k in ("macs", "params") if row.get(k)}
        c |= {"in_bytes": row.get("in_bytes") or c["in_bytes"], "out_bytes": row.get("out_bytes") or c["out_bytes"]}
    lg = np.log1p
    values = [lg(c["macs"]), lg(c["params"]), lg(c["traffic"]), lg(c["in_bytes"]), lg(c["out_bytes"]),
              lg(c["dw_macs"]), lg(c["pw_macs"]), c["kernel"], c["expansion"], c["groups"], key.stride,
              lg(key.resolution), lg(key.tokens), key.bits / 32, lg(key.c_in), lg(key.c_out)]
    values += [1.0 if c["kind"] == k else 0.0 for k in KINDS]
    return np.asarray(values, dtype=np.float64)
