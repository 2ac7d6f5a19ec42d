"""Features of an op key for the fallback regressor: MACs, params and memory traffic, computed from the key.

Block-vocabulary ops (``conv_kK``, ``ir_kK_eE[_gG]``, ``skip``, ``pool_fc``) are costed analytically; other
ops (transformer blocks from other spaces) use the MACs/params their table rows recorded, else a shape guess.
"""

from __future__ import annotations

import math

import numpy as np

from nas.blocks import mid_channels, parse_op
from nas.errors import ArchError
from nas.latency.opkey import OpKey

KINDS = ("conv", "ir", "skip", "pool_fc", "other")
FEATURE_NAMES = ("log_macs", "log_params", "log_traffic", "log_in", "log_out", "log_dw_macs", "log_pw_macs",
                 "kernel", "expansion", "groups", "stride", "log_resolution", "log_tokens", "bits",
                 "log_c_in", "log_c_out") + tuple(f"kind_{k}" for k in KINDS)


def analytic_cost(key: OpKey) -> dict:
    """MACs, params and bytes moved of a vocabulary op at batch 1 (fp32 bytes); ``kind`` "other" if unknown."""
    r, s = key.resolution, key.stride
    ro = math.ceil(r / s) if r else 0
    try:
        spec = parse_op(key.op)
    except ArchError:
        spec = None
    kind = spec.kind if spec else "other"
    out = {"kind": kind, "kernel": 1, "expansion": 1, "groups": 1, "dw_macs": 0, "pw_macs": 0}
    cin, cout = key.c_in, key.c_out
    if kind == "conv" or (kind == "skip"):
        k = spec.kernel if kind == "conv" else 1
        macs = k * k * cin * cout * ro * ro
        out |= {"kernel": k, "macs": macs, "pw_macs": macs, "params": k * k * cin * cout + cout,
                "traffic": 4 * (cin * r * r + cout * ro * ro)}
    elif kind == "ir":
        mid, g = mid_channels(spec, cin), spec.groups
        pw = cin * mid // g * r * r if mid != cin else 0
        dw = spec.kernel ** 2 * mid * ro * ro
        pwl = mid * cout // g * ro * ro
        params = (cin * mid // g + mid if mid != cin else 0) + spec.kernel ** 2 * mid + mid + mid * cout // g + cout
        traffic = 4 * (cin * r * r + (mid * r * r if mid != cin else 0) + mid * ro * ro + cout * ro * ro)
        out |= {"kernel": spec.kernel, "expansion": spec.expansion, "groups": g, "macs": pw + dw + pwl,
                "dw_macs": dw, "pw_macs": pw + pwl, "params": params, "traffic": traffic}
    elif kind == "pool_fc":
        out |= {"macs": cin * cout + cin * r * r, "params": cin * cout + cout, "traffic": 4 * cin * r * r}
    else:
        t = max(key.tokens, 1) * max(key.resolution, 1) ** 2 if key.tokens == 0 else key.tokens
        out |= {"macs": cin * cout * t, "params": cin * cout, "traffic": 4 * (cin + cout) * t}
    out["in_bytes"] = 4 * cin * (r * r if r else max(key.tokens, 1))
    out["out_bytes"] = 4 * cout * (ro * ro if r else max(key.tokens, 1))
    return out


def key_features(key: OpKey, row: dict | None = None) -> np.ndarray:
    """The regressor's feature vector for ``key`` (a measured row's MACs/params win for non-vocabulary ops)."""
    c = analytic_cost(key)
    if c["kind"] == "other" and row:
        c |= {k: row[k] for k in ("macs", "params") if row.get(k)}
        c |= {"in_bytes": row.get("in_bytes") or c["in_bytes"], "out_bytes": row.get("out_bytes") or c["out_bytes"]}
    lg = np.log1p
    values = [lg(c["macs"]), lg(c["params"]), lg(c["traffic"]), lg(c["in_bytes"]), lg(c["out_bytes"]),
              lg(c["dw_macs"]), lg(c["pw_macs"]), c["kernel"], c["expansion"], c["groups"], key.stride,
              lg(key.resolution), lg(key.tokens), key.bits / 32, lg(key.c_in), lg(key.c_out)]
    values += [1.0 if c["kind"] == k else 0.0 for k in KINDS]
    return np.asarray(values, dtype=np.float64)
