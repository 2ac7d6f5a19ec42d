"""Optuna storage URLs: checked, parsed with SQLAlchemy's ``make_url``, and shown or stored with no credential.

``masked_url`` is the only form of a URL that is printed or written anywhere (config.json, report.json, study
attributes, messages): the password (also one holding ``/ ? # @ %`` or URL-encoded) and every secret-looking query
value (``?password=``, ``sslpassword``, ``token`` ...) become ``***``. ``hide_secrets`` scrubs a driver's message
the same way. Better still, keep the secret out of the URL: PostgreSQL's libpq (under psycopg) reads the password from
``PGPASSWORD`` or ``~/.pgpass`` when the URL has none, and PyMySQL from an option file
(``mysql://USER@HOST/DB?read_default_file=~/.my.cnf``).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from urllib.parse import unquote

from nas.errors import SearchError

# driver of each plain URL scheme, and the extra that installs it. SQLAlchemy 2.1 (the `postgres` extra's floor) opens
# a plain postgresql:// URL with psycopg 3, so the same URL works in hwnas, Optuna and optuna-dashboard.
DRIVERS = {"postgresql": ("postgresql+psycopg", "psycopg", "postgres"),
           "postgres": ("postgresql+psycopg", "psycopg", "postgres"),
           "mysql": ("mysql+pymysql", "pymysql", "mysql")}
SECRET_KEY = re.compile(r"pass|pwd|secret|token|key|auth|cred", re.IGNORECASE)  # query keys whose values are hidden
MASK = "***"


def _parsed(url: str):
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except (ArgumentError, ValueError, TypeError):
        return None


def masked_url(url: str) -> str:
    """``url`` with every credential replaced by ``***``, for showing or storing. A URL that does not parse keeps
    its scheme and what follows its last ``@`` (its host and database) only."""
    u = _parsed(url)
    if u is None:
        head, sep, rest = url.partition("://")
        if not sep:
            head, rest = "", url
        if "@" in rest:
            rest = f"{MASK}@{rest.rsplit('@', 1)[1]}"
        return f"{head}{sep}{rest.split('?')[0]}" + (f"?{MASK}" if "?" in rest else "")
    at_in_password = bool(u.host and "@" in u.host)  # an unencoded '@' in the password: make_url cut it there
    secret_query = any(SECRET_KEY.search(k) for k in u.query)
    if u.password is None and not at_in_password and not secret_query:
        return url
    u = u.set(password="x" if u.password is not None or at_in_password else None,
              host=u.host.rsplit("@", 1)[1] if at_in_password else u.host, query={})
    query = "&".join(f"{k}={MASK if SECRET_KEY.search(k) else _value(v)}" for k, v in _parsed(url).query.items())
    return u.render_as_string(hide_password=True) + (f"?{query}" if query else "")


def _value(v) -> str:
    return ",".join(v) if isinstance(v, tuple) else str(v)


def _secrets(url: str) -> list[str]:
    """Every credential string in ``url``, as written and decoded: the password, secret query values, and (when an
    unencoded '@' confuses the parser) everything between the user name and the last '@'."""
    found: list[str] = []
    u = _parsed(url)
    _, _, rest = url.partition("://")
    userinfo = rest.rsplit("@", 1)[0] if "@" in rest else ""
    if ":" in userinfo:
        found.append(userinfo.split(":", 1)[1])
    if u is not None:
        found.append(u.password or "")
        for k, v in u.query.items():
            if SECRET_KEY.search(k):
                found.extend(v if isinstance(v, tuple) else [v])
    found += [unquote(s) for s in found]
    found += [piece for s in found for piece in s.split("@")]  # a driver may show a part as a host name
    raw_query = re.findall(r"[?&]([^=&#]+)=([^&#]*)", url)
    found += [v for k, v in raw_query if SECRET_KEY.search(k)]
    return sorted({s for s in found if len(s) >= 3}, key=len, reverse=True)


def hide_secrets(text: str, url: str) -> str:
    """``text`` (a driver's message) with ``url`` shown masked and each of its credentials replaced by ``***``."""
    text = text.replace(url, masked_url(url))
    for secret in _secrets(url):
        text = text.replace(secret, MASK)
    return text


def storage_host(url: str) -> str:
    u = _parsed(url)
    host = (u.host or "") if u is not None else ""
    return host.rsplit("@", 1)[-1] or "localhost"


def check_storage_url(url: str, option: str = "--storage") -> None:
    """SearchError for a URL that cannot name a storage: empty, unparseable, or SQLite without a file."""
    if not url.strip():
        raise SearchError(f"{option} is empty; give an Optuna storage URL (sqlite:///PATH/study.db, "
                          f"postgresql://USER@HOST/DB, mysql://USER@HOST/DB)")
    u = _parsed(url)
    if u is None:
        raise SearchError(f"{option} {masked_url(url)!r} is not a storage URL (sqlite:///PATH/study.db, "
                          f"postgresql://USER@HOST/DB, mysql://USER@HOST/DB)")
    if u.host and "@" in u.host:  # make_url (and so the driver) ends the password at its first '@'
        raise SearchError(f"{option} {masked_url(url)!r}: its password holds an '@'; write it as %40 (URL-encoded), "
                          f"or keep the password out of the URL (PGPASSWORD or ~/.pgpass for PostgreSQL)")
    if u.get_backend_name() == "sqlite" and u.database in (None, "", ":memory:"):
        raise SearchError(f"{option} {masked_url(url)!r} names no SQLite file (an in-memory study is lost with its "
                          f"process and no worker can join it); give sqlite:///PATH/study.db")


def check_study_name(name: str, option: str = "--study") -> None:
    if not name.strip():
        raise SearchError(f"{option} is empty; name the study (the search's --study, 'hwnas' by default)")


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` URL; None for other storages."""
    u = _parsed(url)
    if u is None or u.get_backend_name() != "sqlite" or not u.database:
        return None
    return Path(u.database)


def default_storage_url(run_path: str | Path) -> str:
    return f"sqlite:///{Path(run_path).resolve() / 'study.db'}"


def driver_url(url: str) -> str:
    """``url`` with a plain ``postgresql://`` (or ``mysql://``) scheme mapped to its driver; SearchError naming
    the extra to install when that driver is missing."""
    scheme, sep, rest = url.partition("://")
    base = scheme.split("+")[0]
    if base not in DRIVERS or not sep:
        return url
    dialect, module, extra = DRIVERS[base]
    driver = scheme.split("+")[1] if "+" in scheme else module
    if importlib.util.find_spec(driver) is None:
        raise SearchError(f"storage {masked_url(url)!r} needs the {driver} driver: pip install 'hwnas[{extra}]'")
    return url if "+" in scheme else f"{dialect}://{rest}"
