"""The state files: a person's choices survive, a damaged file is set aside whole."""

from __future__ import annotations

import json

from phyllod.model import Override, OverrideKind
from phyllod.state_store import load_answers, load_overrides, save_answers, save_overrides


def test_round_trip_of_overrides_and_answers(tmp_path):
    save_overrides(tmp_path, {"usb:1-2": Override(OverrideKind.ATTACH, "work")}, {})
    save_answers(tmp_path, {"usb:1050:0407:K1": "", "usb:1-3": "media"},
                 {"usb:1-3": "usb:1-3 (0627:0001)"})
    assert load_overrides(tmp_path) == {"usb:1-2": Override(OverrideKind.ATTACH, "work")}
    assert load_answers(tmp_path) == {"usb:1050:0407:K1": "", "usb:1-3": "media"}
    saved = json.loads((tmp_path / "answers.json").read_text())
    assert {"identity": "usb:1-3", "guest": "media", "device": "usb:1-3 (0627:0001)"} \
        in saved["answers"]


def test_a_file_with_one_bad_entry_is_set_aside_not_half_read(tmp_path):
    (tmp_path / "overrides.json").write_text(json.dumps({"version": 1, "overrides": [
        {"identity": "usb:1-2", "kind": "host"}, {"identity": "usb:1-3", "kind": "bogus"}]}))
    (tmp_path / "answers.json").write_text('{"version": 1, "answers": [{"guest": "x"}]}')
    assert load_overrides(tmp_path) == {}
    assert load_answers(tmp_path) == {}
    names = sorted(p.name.split("-")[0] for p in tmp_path.iterdir())
    assert names == ["answers.json.broken", "overrides.json.broken"]
