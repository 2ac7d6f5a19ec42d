"""Issue 28, item 4: no storage credential in any printed line, config.json, report.json or study attribute, in every
form a URL can carry one; and a password kept out of the URL (libpq's PGPASSWORD) works."""

import json
import os
import sqlite3
from urllib.parse import quote

import pytest
import torch

import nas.search.blackbox.study as study_module
from nas.search.blackbox.storage_url import hide_secrets, masked_url
from nas.search.blackbox.study import load_study, open_storage
from test_predict_fixtures import BENCH_TABLE, InProcess

# (URL, its secrets as written and decoded, what the masked URL keeps)
FORMS = [
    ("postgresql://alice:s3cretpw@db.example:5432/nas", ["s3cretpw"], "postgresql://alice:***@db.example:5432/nas"),
    ("postgresql://u2:SEC/RE?T#P%Wd@db.example/nas", ["SEC/RE?T#P%Wd", "SEC/RE", "T#P%Wd"],
     "postgresql://u2:***@db.example/nas"),
    ("postgresql://u3@db.example/nas?password=QRYSECRET", ["QRYSECRET"], "postgresql://u3@db.example/nas?password=***"),
    (f"postgresql://u4:{quote('p@ss/w?rd#1%', safe='')}@db.example/nas", ["p@ss/w?rd#1%", quote("p@ss/w?rd#1%", safe="")],
     "postgresql://u4:***@db.example/nas"),
    ("mysql+pymysql://u5:myPW123@db.example/nas?ssl_key=/k/KEYFILE&charset=utf8", ["myPW123", "/k/KEYFILE"],
     "mysql+pymysql://u5:***@db.example/nas?ssl_key=***&charset=utf8"),
    ("postgresql://db.example/nas?sslpassword=SSLSECRET&application_name=hw", ["SSLSECRET"],
     "postgresql://db.example/nas?sslpassword=***&application_name=hw"),
]


@pytest.fixture
def hwnas(capsys, monkeypatch):
    return InProcess(capsys, monkeypatch)


@pytest.mark.parametrize("url, secrets, shown", FORMS)
def test_every_credential_form_is_masked(url, secrets, shown):
    masked = masked_url(url)
    assert masked == shown
    assert not [s for s in secrets if s in masked]
    text = hide_secrets(f"connection to {url} failed: password {secrets[0]!r} rejected", url)
    assert not [s for s in secrets if s in text] and "db.example" in text, text


def test_a_password_with_a_raw_at_sign_is_refused_without_showing_any_part_of_it(hwnas):
    url = "postgresql://u5:PART1@PART2@127.0.0.1:1/nas"  # the driver would take PART2@127.0.0.1 for the host
    assert masked_url(url) == "postgresql://u5:***@127.0.0.1:1/nas"
    for args in (("search", "nars", "--space", f"table:{BENCH_TABLE}", "--objective", "val_accuracy",
                  "--latency-column", "latency_ms", "--storage", url), ("worker", "--storage", url)):
        r = hwnas(*args)
        assert r.returncode == 2 and "write it as %40" in r.stderr, r.stderr
        assert "PART1" not in r.stdout + r.stderr and "PART2" not in r.stdout + r.stderr, r.stderr


def test_a_url_that_does_not_parse_shows_no_credential():
    assert masked_url("postgresql:/u:pw!secret@host/db") == "***@host/db"
    assert masked_url("u:pw!secret@host/db?password=x") == "***@host/db?***"


@pytest.mark.parametrize("url, secrets, shown", FORMS[:4])
def test_an_unreachable_storage_error_shows_no_credential(hwnas, url, secrets, shown):
    url = url.replace("db.example", "127.0.0.1:1").replace(":1:5432", ":1")  # refused at once, no DNS
    r = hwnas("search", "nars", "--space", f"table:{BENCH_TABLE}", "--objective", "val_accuracy",
              "--latency-column", "latency_ms", "--target-ms", "0.07", "--budget", "4", "--storage", url)
    assert r.returncode == 2 and "127.0.0.1" in r.stderr, r.stderr
    assert not [s for s in secrets if s in r.stdout + r.stderr], r.stderr
    r = hwnas("worker", "--storage", url)
    assert r.returncode == 2 and not [s for s in secrets if s in r.stdout + r.stderr], r.stderr


def test_a_search_on_a_credentialed_storage_stores_and_prints_no_credential(hwnas, tmp_path, monkeypatch):
    """The storage's driver URL is redirected to a local SQLite file (no server here); everything the search prints
    and writes sees the credentialed URL."""
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    monkeypatch.setattr(study_module, "driver_url", lambda url: db)
    for i, (url, secrets, _) in enumerate(FORMS[:4]):
        out = tmp_path / f"run{i}"
        r = hwnas("search", "nars", "--space", f"table:{BENCH_TABLE}", "--objective", "val_accuracy",
                  "--latency-column", "latency_ms", "--target-ms", "0.07", "--budget", "4", "--init", "2",
                  "--storage", url, "--study", f"s{i}", "--out", out)
        assert r.returncode == 0, r.stderr
        written = {p.name: p.read_text() for p in [out / "config.json", out / "report.json"]}
        assert load_study(url, f"s{i}").user_attrs["hwnas_settings"]["storage"] == masked_url(url)
        with sqlite3.connect(tmp_path / "shared.db") as conn:
            stored = "\n".join(conn.iterdump())  # every study, trial and attribute the storage holds
        for where, text in [("stdout", r.stdout), ("stderr", r.stderr), *written.items(), ("study", stored)]:
            assert not [s for s in secrets if s in text], (url, where)
        assert json.loads(written["config.json"])["storage"] == masked_url(url)


@pytest.mark.skipif(not os.environ.get("HWNAS_TEST_POSTGRES_URL"), reason="needs a PostgreSQL server "
                    "(HWNAS_TEST_POSTGRES_URL; .ci/run starts one)")
def test_a_password_from_pgpassword_keeps_the_url_free_of_it(monkeypatch):
    from sqlalchemy.engine import make_url

    url = make_url(os.environ["HWNAS_TEST_POSTGRES_URL"])
    if not url.password:
        pytest.skip("the test server's URL has no password")
    monkeypatch.setenv("PGPASSWORD", url.password)
    bare = url.set(password=None).render_as_string(hide_password=False)
    assert url.password not in bare
    open_storage(bare)  # libpq reads PGPASSWORD (or ~/.pgpass) when the URL has no password


class Payload:
    """Stands for any Python object a pickle can carry (the weights-only reader refuses its global)."""


def test_a_checkpoint_holding_python_objects_is_refused_without_advice_to_unpickle_it(hwnas, tmp_path):
    from test_predict_fixtures import TINY_SPACE_YAML

    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE_YAML)
    args = ("train", space, "--resolution", "8", "--epochs", "1", "--out", tmp_path / "run")
    assert hwnas(*args).returncode == 0
    ckpt = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    torch.save({**state, "extra": Payload()}, ckpt)  # a tampered checkpoint: it unpickles an object
    r = hwnas(*args)  # the same command reads the checkpoint to resume
    assert r.returncode == 2, r.stderr
    line = " ".join(r.stderr.split("error: ")[1].split())
    assert f"{ckpt}: not a plain checkpoint (Unsupported global: GLOBAL test_secrets.Payload" in line, line
    for advice in ("weights_only", "arbitrary code", "trust", "safe_globals", "two options"):
        assert advice not in r.stderr, line
