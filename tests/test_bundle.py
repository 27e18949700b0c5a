"""The verification bundle checked offline by `cemsd verify-bundle`: an untouched bundle
verifies and recomputes equal; a changed row (an hour of canonical form 1 or 2, a minute
under a form 2 hour, a production day, an audit entry), a changed manifest, a wrong key and
a missing chain link are each named. A day of stored hours and their minutes (one outlet
gap, substituted), its first hours sealed in form 1 (as cemsd wrote before form 2) and the
rest in form 2, on SQLite."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cemsd import chain, signing
from cemsd.cli import main
from cemsd.qaqc.substitution import plan_substitutions, substitution_rows
from cemsd.reduction.bundle import export_bundle, open_bundle, recompute
from cemsd.reduction.production import import_days
from cemsd.store import schema
from helpers import reduction_plant

TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 6, 1, tzinfo=TZ).timestamp()
T1 = T0 + 86400
H = 3600.0
INLET, OUTLET = "inlet.n2o_kg_h", "outlet.n2o_kg_h"


FORM1_THROUGH = T0 + 5 * H  # hours of the day before 06:00 plant time sealed in form 1


def _periods(channel: str, values: list[float | None], start: float, length: float,
             n: int) -> list[dict]:
    """Hours (length H, n = 60 minutes) or minutes (length 60 s, n = 12 readings), each
    written when it ended."""
    return [{"channel": channel, "ts": start + i * length, "value": v, "minimum": v,
             "maximum": v, "n_valid": n if v is not None else 0, "n_expected": n,
             "flag": "N" if v is not None else "B", "reason": None if v is not None else
             f"{n} of {n} invalid (B: no reply)", "unit": "kg/h",
             "created_at": start + (i + 1) * length} for i, v in enumerate(values)]


def _hours(channel: str, values: list[float | None], start: float) -> list[dict]:
    return _periods(channel, values, start, H, 60)


def _minutes(channel: str, values: list[float | None], start: float) -> list[dict]:
    """The minutes under each hour, each the hour's value (a silent hour: silent minutes)."""
    return _periods(channel, [v for v in values for _ in range(60)], start, 60.0, 12)


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("bundle")
    config, db = reduction_plant(tmp)
    before = T0 - 48 * H  # two days measured before, so the chain starts earlier
    inlet = [4700.0 + 3 * i for i in range(48 + 24 + 6)]
    outlet = [50.0 + (i % 5) for i in range(48 + 24 + 6)]
    outlet[48 + 9] = outlet[48 + 10] = None  # 09:00-11:00: the outlet analyzer silent
    db.insert_aggregates(schema.hours, _hours(INLET, inlet, before) + _hours(OUTLET, outlet,
                                                                           before))
    db.insert_aggregates(schema.minutes, _minutes(INLET, inlet[48:72], T0)
                         + _minutes(OUTLET, outlet[48:72], T0))
    subs, _ = plan_substitutions(db, OUTLET, [], T1, TZ)
    db.insert_aggregates(schema.substitutions, substitution_rows(OUTLET, "kg/h", subs, T1))
    import_days(db, [(date(2026, 6, 1), 420.0)], "test", T1 - 0.5 * H)
    with pytest.MonkeyPatch.context() as patch:  # links an earlier cemsd wrote (form 1)
        patch.setattr(chain, "FORM", 1)
        chain.seal_due(db, FORM1_THROUGH, T0 + 7 * H)
    chain.seal_due(db, T1 + 4 * H, T1 + 50 * H)
    path = tmp / "aa1-2026-06-01.tar.gz"
    manifest = export_bundle(db, config, T0, T1, T1 + 50 * H, path)
    db.close()
    key = signing.load_or_create(config.storage.state_dir)
    return {"tmp": tmp, "path": path, "manifest": manifest, "key": key, "subs": subs,
            "public": signing.raw(key.public_key()).hex()}


def verify(path: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["verify-bundle", str(path), *args])
    return result.exit_code, result.output


def rewrite(src: Path, dst: Path, edits: dict[str, Callable[[bytes], bytes]],
            resign: Ed25519PrivateKey | None = None) -> None:
    """A copy with files edited; with a key, the manifest's hashes are brought up to date
    and signed again (someone holding the plant's key)."""
    with tarfile.open(src) as archive:
        files = {m.name: archive.extractfile(m).read() for m in archive.getmembers()}
    for name, edit in edits.items():
        files[name] = edit(files[name])
    if resign is not None:
        manifest = json.loads(files["manifest.json"])
        for name in edits:
            manifest["files"][name] = hashlib.sha256(files[name]).hexdigest()
        files["manifest.json"] = json.dumps(manifest, indent=1, sort_keys=True).encode()
        files["manifest.sig"] = base64.b64encode(resign.sign(files["manifest.json"])) + b"\n"
    with tarfile.open(dst, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def test_an_untouched_bundle_verifies_and_recomputes_equal(plant: dict) -> None:
    code, out = verify(plant["path"], "--public-key", plant["public"])
    assert code == 0, out
    for name in ("files", "signature", "chain", "rows", "pinned", "recompute"):
        assert f"{name}: OK" in out
    assert "verified; the recomputed report equals report.json" in out
    bundle = open_bundle(plant["path"])
    again = recompute(bundle)
    assert again["result"] == bundle.report["result"]
    assert again["inputs_sha256"] == bundle.report["inputs_sha256"]
    # every hour and substitution of the day is sealed, and its link is in the bundle
    links = list(csv.DictReader(io.StringIO(bundle.text("chain/links.csv"))))
    sealed = {(r["record_table"], r["record_id"]) for r in links}
    for table, n in (("hours", 48), ("substitutions", 2)):
        rows = list(csv.DictReader(io.StringIO(bundle.text(f"data/{table}.csv"))))
        assert len(rows) == n and all((table, r["id"]) in sealed for r in rows)
    assert [int(r["seq"]) for r in links] == list(range(int(links[0]["seq"]),
                                                        int(links[-1]["seq"]) + 1))
    # both forms are in the bundle, and the rows check covered every sealed kind of record
    forms = {r["form"] for r in links if r["record_table"] == "hours"}
    assert forms == {"1", "2"}
    for table, n in (("production_days", 1), ("audit_log", 1)):
        assert sum(r["record_table"] == table for r in links) == n
    minutes = list(csv.DictReader(io.StringIO(bundle.text("data/minutes.csv"))))
    assert len(minutes) == 2 * 24 * 60
    assert ("checked against their links: 48 hours, 2 substitutions, 1 production_days, "
            "1 audit_log (2880 minutes under the hours)") in out
    assert "12 hours sealed in canonical form 1: their seal does not cover their minutes" in out
    assert bundle.manifest["signing"]["fingerprint"] == \
        signing.fingerprint(plant["key"].public_key())


def test_without_a_key_the_bundles_own_key_is_used_and_said_so(plant: dict) -> None:
    code, out = verify(plant["path"])
    assert code == 0, out
    assert "checked with the key the manifest names" in out


def test_readme_and_dictionary_describe_every_file_and_column(plant: dict) -> None:
    bundle = open_bundle(plant["path"])
    dictionary = bundle.text("DATA-DICTIONARY.md")
    readme = bundle.text("README.md")
    assert signing.fingerprint(plant["key"].public_key()) in readme
    for name in bundle.files:
        assert f"- `{name}`: " in dictionary, name
        line = next(x for x in dictionary.splitlines() if x.startswith(f"- `{name}`: "))
        assert line.split(": ", 1)[1].strip(), f"{name} is not described"
        if name.endswith(".csv"):
            header = next(csv.reader(io.StringIO(bundle.text(name))))
            section = dictionary.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
            for column in header:
                row = next(x for x in section.splitlines() if x.startswith(f"| `{column}` |"))
                assert row.split("|")[2].strip(), f"{name}: {column} is not described"
    assert "Asia/Shanghai" in dictionary and "`outlet.n2o_kg_h`: kg/h" in dictionary
    assert "`B`: communication fault" in dictionary
    method = plant["subs"][0].method
    assert f"`{method}`: HJ 75 substitute, project side" in dictionary


def test_plant_time_columns_stand_beside_utc(plant: dict) -> None:
    bundle = open_bundle(plant["path"])
    rows = list(csv.DictReader(io.StringIO(bundle.text("data/hours.csv"))))
    header = next(csv.reader(io.StringIO(bundle.text("data/hours.csv"))))
    assert header[header.index("ts") + 1] == "ts_local"
    first = min(rows, key=lambda r: r["ts"])
    assert first["ts"].startswith("2026-05-31T16:00:00") and first["ts_local"] == \
        "2026-06-01T00:00+08:00"


def test_a_changed_row_is_named(plant: dict) -> None:
    tmp = plant["tmp"]

    def one(data: bytes) -> bytes:  # 00:00 of the day (form 1): inlet 4844 kg -> 4845 kg
        assert b",4844.0," in data
        return data.replace(b",4844.0,", b",4845.0,", 1)

    changed = tmp / "changed-row.tar.gz"
    rewrite(plant["path"], changed, {"data/hours.csv": one})
    code, out = verify(changed, "--public-key", plant["public"])
    assert code == 1
    assert "files: FAILED" in out and "data/hours.csv: changed" in out
    assert "rows: FAILED" in out and "changed, does not hash to chain link" in out
    # someone with the plant's key re-signs: the files and signature pass, the chain does not
    resigned = tmp / "changed-row-resigned.tar.gz"
    rewrite(plant["path"], resigned, {"data/hours.csv": one}, resign=plant["key"])
    code, out = verify(resigned, "--public-key", plant["public"])
    assert code == 1 and "files: OK" in out and "signature: OK" in out
    [problem] = [x for x in out.splitlines() if x.startswith("  ! ")]
    assert "data/hours.csv line" in problem and "inlet.n2o_kg_h" in problem


def test_a_changed_manifest_is_named(plant: dict) -> None:
    changed = plant["tmp"] / "changed-manifest.tar.gz"
    rewrite(plant["path"], changed, {
        "manifest.json": lambda d: d.replace(b'"cemsd": "', b'"cemsd": "9', 1)})
    code, out = verify(changed, "--public-key", plant["public"])
    assert code == 1
    assert "signature: FAILED" in out and "manifest.json: changed after signing" in out


def test_a_wrong_key_is_named(plant: dict) -> None:
    other = signing.raw(Ed25519PrivateKey.generate().public_key()).hex()
    code, out = verify(plant["path"], "--public-key", other)
    assert code == 1 and "signature: FAILED" in out
    assert "wrong key: the bundle was signed by " + \
        signing.fingerprint(plant["key"].public_key()) in out
    # also when the whole bundle is re-signed with another key than the plant's
    forged = plant["tmp"] / "forged.tar.gz"
    rewrite(plant["path"], forged, {"README.md": lambda d: d + b"\n"},
            resign=Ed25519PrivateKey.generate())
    code, out = verify(forged, "--public-key", plant["public"])
    assert code == 1 and "signature: FAILED" in out and "changed after signing" in out


def test_a_missing_link_is_named(plant: dict) -> None:
    def drop_third(data: bytes) -> bytes:
        lines = data.decode().splitlines(keepends=True)
        return "".join(lines[:3] + lines[4:]).encode()

    links = open_bundle(plant["path"]).text("chain/links.csv").splitlines()
    gone = links[3].split(",")[0]
    missing = plant["tmp"] / "missing-link.tar.gz"
    rewrite(plant["path"], missing, {"chain/links.csv": drop_third}, resign=plant["key"])
    code, out = verify(missing, "--public-key", plant["public"])
    assert code == 1 and "chain: FAILED" in out
    assert f"chain link {gone} missing" in out
    assert "rows: FAILED" in out and "no chain link, though link" in out


def test_pinned_heads_are_compared(plant: dict) -> None:
    links = list(csv.DictReader(io.StringIO(open_bundle(plant["path"]).text("chain/links.csv"))))
    good = plant["tmp"] / "heads.jsonl"
    good.write_text(json.dumps({"seq": int(links[5]["seq"]), "chain_hash":
                                links[5]["chain_hash"]}) + "\n")
    code, out = verify(plant["path"], "--public-key", plant["public"], "--pinned", str(good))
    assert code == 0 and f"pinned head {links[5]['seq']}: matches" in out
    bad = plant["tmp"] / "bad-heads.json"
    bad.write_text(json.dumps([{"seq": int(links[5]["seq"]), "chain_hash": "0" * 64}]))
    code, out = verify(plant["path"], "--public-key", plant["public"], "--pinned", str(bad))
    assert code == 1 and "pinned: FAILED" in out and f"pinned head {links[5]['seq']}" in out


def _tampered(plant: dict, name: str, file: str, edit: Callable[[bytes], bytes]) -> list[str]:
    """verify-bundle on a copy with one file edited and re-signed by the plant's key (the
    files and the signature pass): the problems it names."""
    path = plant["tmp"] / name
    rewrite(plant["path"], path, {file: edit}, resign=plant["key"])
    code, out = verify(path, "--public-key", plant["public"])
    assert code == 1 and "files: OK" in out and "signature: OK" in out, out
    assert "rows: FAILED" in out, out
    return [x for x in out.splitlines() if x.startswith("  ! ")]


def _csv_edit(match: Callable[[dict[str, str]], bool], column: str, value: str
              ) -> Callable[[bytes], bytes]:
    """An edit of one CSV cell: `column` of the first row that matches."""
    def edit(data: bytes) -> bytes:
        rows = list(csv.reader(io.StringIO(data.decode())))
        header = rows[0]
        line = next(i for i, r in enumerate(rows[1:], 1) if match(dict(zip(header, r,
                                                                            strict=True))))
        assert rows[line][header.index(column)] != value
        rows[line][header.index(column)] = value
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(rows)
        return out.getvalue().encode()
    return edit


NOON_UTC = "2026-06-01T04:00:00+00:00"  # 12:00 plant time: an hour sealed in form 2


def test_a_changed_minute_names_its_hour(plant: dict) -> None:
    edit = _csv_edit(lambda r: r["channel"] == INLET and r["ts"] == "2026-06-01T04:17:00+00:00",
                     "value", "4000.0")
    [problem] = _tampered(plant, "changed-minute.tar.gz", "data/minutes.csv", edit)
    assert "data/hours.csv line" in problem and f"{INLET} {NOON_UTC}" in problem
    assert "minutes changed (data/minutes.csv)" in problem


def test_a_removed_minute_names_its_hour(plant: dict) -> None:
    def drop(data: bytes) -> bytes:
        lines = data.decode().splitlines(keepends=True)
        gone = next(i for i, x in enumerate(lines) if f",{OUTLET},2026-06-01T04:30:00" in x)
        return "".join(lines[:gone] + lines[gone + 1:]).encode()

    [problem] = _tampered(plant, "removed-minute.tar.gz", "data/minutes.csv", drop)
    assert f"{OUTLET} {NOON_UTC}" in problem and "minutes changed" in problem


def test_a_changed_form_2_hour_is_named(plant: dict) -> None:
    edit = _csv_edit(lambda r: r["channel"] == OUTLET and r["ts"] == NOON_UTC, "n_valid", "59")
    [problem] = _tampered(plant, "changed-hour-2.tar.gz", "data/hours.csv", edit)
    assert f"{OUTLET} {NOON_UTC}" in problem and "changed, does not hash to chain link" in problem


def test_a_changed_production_day_is_named(plant: dict) -> None:
    edit = _csv_edit(lambda r: r["day"] == "2026-06-01", "tonnes", "520.0")
    [problem] = _tampered(plant, "changed-day.tar.gz", "data/production_days.csv", edit)
    assert "data/production_days.csv line 2" in problem and "day 2026-06-01" in problem
    assert "changed, does not hash to chain link" in problem


def test_a_changed_audit_entry_is_named(plant: dict) -> None:
    def edit(data: bytes) -> bytes:
        lines = data.decode().splitlines(keepends=True)
        line = next(i for i, x in enumerate(lines) if '"production.import"' in x)
        entry = json.loads(lines[line])
        entry["actor"] = "someone else"
        lines[line] = json.dumps(entry, ensure_ascii=False) + "\n"
        return "".join(lines).encode()

    [problem] = _tampered(plant, "changed-audit.tar.gz", "data/audit.jsonl", edit)
    assert "data/audit.jsonl line" in problem and "production.import" in problem
    assert "changed, does not hash to chain link" in problem


def test_a_minute_moved_out_of_its_hour_is_named(plant: dict) -> None:
    def move(data: bytes) -> bytes:  # one minute of the noon hour moved to the file's end
        lines = data.decode().splitlines(keepends=True)
        moved = next(i for i, x in enumerate(lines) if f",{INLET},2026-06-01T04:20:00" in x)
        return "".join(lines[:moved] + lines[moved + 1:] + [lines[moved]]).encode()

    problems = _tampered(plant, "moved-minute.tar.gz", "data/minutes.csv", move)
    assert any(f"a minute of {INLET} 2026-06-01T04:00:00Z apart from the hour's other "
               "minutes" in x for x in problems), problems
    assert any(f"{INLET} {NOON_UTC}" in x and "minutes changed" in x for x in problems)
