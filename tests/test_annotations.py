"""The annotations log under faults (issue 16, case 1): concurrent sessions merge, duplicate
labels are counted once, a cut-short last line is reported and moved aside, never deleted."""

from __future__ import annotations

import json
import os
import stat
import warnings

import pytest

from covidlib.data.errors import DataError
from covidlib.widgets.annotations import Annotation, AnnotationStore

HEAD = {"dataset": "toy", "n_regions": 4}


def _bg(case: str, z: int) -> Annotation:
    return Annotation("background", case, z, (0, 16, 0, 16), label=0, time="t")


def _pt(case: str, z: int) -> Annotation:
    return Annotation("point", case, z, (0, 16, 16, 32), 5, 20, 1, "t")


def _label_lines(path) -> list[dict]:
    return [json.loads(s) for s in path.read_text().splitlines()[1:]]


def test_two_open_sessions_merge_instead_of_overwriting(tmp_path):
    path = tmp_path / "a.jsonl"
    one, two = AnnotationStore(path, HEAD), AnnotationStore(path, HEAD)
    for z in range(3):
        one.append(_bg("c0", z))
        two.append(_pt("c1", z))
    again = AnnotationStore(path, HEAD)
    assert len(again) == 6
    assert {a.case_id for a in again} == {"c0", "c1"}
    assert len(_label_lines(path)) == 6
    assert len(two) == 6  # the second session re-read the first one's labels before writing


def test_duplicate_label_is_ignored_not_counted(tmp_path):
    path = tmp_path / "a.jsonl"
    store = AnnotationStore(path, HEAD)
    a = _pt("c0", 1)
    assert store.append(a) is True
    assert store.append(a) is False  # idempotent: same label id
    assert len(store) == 1 and len(_label_lines(path)) == 1
    line = path.read_text().splitlines()[1]
    path.write_text(path.read_text() + line + "\n")  # a duplicated line (copy/paste, merge)
    assert len(AnnotationStore(path, HEAD)) == 1
    assert a.id == Annotation.from_json(json.loads(line), "x").id and len(a.id) == 16


def test_undo_is_appended_and_only_undoes_this_sessions_label(tmp_path):
    path = tmp_path / "a.jsonl"
    one, two = AnnotationStore(path, HEAD), AnnotationStore(path, HEAD)
    a, b = _bg("c0", 0), _bg("c1", 0)
    one.append(a)
    two.append(b)
    assert one.pop() == a  # not b, the other session's newer label
    assert list(AnnotationStore(path, HEAD)) == [b]
    assert len(path.read_text().splitlines()) == 4  # header, a, b, undo of a: nothing rewritten
    one.append(a)  # labelled again after the undo
    assert list(AnnotationStore(path, HEAD)) == [b, a]


def test_cut_short_last_line_is_reported_kept_and_moved_aside(tmp_path):
    path = tmp_path / "a.jsonl"
    store = AnnotationStore(path, HEAD)
    store.append(_bg("c0", 0))
    store.append(_bg("c0", 1))
    good = path.read_bytes()
    path.write_bytes(good + b'{"kind": "point", "case_id": "c0", "z"')  # killed mid-write
    with pytest.warns(UserWarning, match=r"a.jsonl: line 4 is cut short .*2 labels before it"):
        damaged = AnnotationStore(path, HEAD)
    assert len(damaged) == 2 and damaged.problem is not None
    aside = damaged.repair()
    assert aside is not None and aside.read_bytes() == b'{"kind": "point", "case_id": "c0", "z"'
    assert path.read_bytes() == good and damaged.problem is None
    # an append after a crash repairs by itself (saying so) and keeps the new label
    path.write_bytes(good + b'{"kind": ')
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = AnnotationStore(path, HEAD)
    with pytest.warns(UserWarning, match="moved the cut-short line"):
        s.append(_bg("c0", 2))
    assert len(AnnotationStore(path, HEAD)) == 3
    assert len(list(tmp_path.glob("a.jsonl.bad-*"))) == 2  # both tails kept, never deleted


def test_a_complete_bad_line_still_raises(tmp_path):
    path = tmp_path / "a.jsonl"
    AnnotationStore(path, HEAD).append(_bg("c0", 0))
    path.write_text(path.read_text() + "not json\n" + path.read_text().splitlines()[1] + "\n")
    with pytest.raises(DataError, match=r"a.jsonl: line 3: not JSON"):
        AnnotationStore(path, HEAD)


def test_stale_temp_files_are_removed_on_open(tmp_path):
    path = tmp_path / "a.jsonl"
    AnnotationStore(path, HEAD)
    (tmp_path / ".a.jsonl.x1y2.tmp").write_text("half")
    (tmp_path / ".other.jsonl.x1y2.tmp").write_text("not ours")
    AnnotationStore(path, HEAD)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.jsonl.x1y2.tmp", "a.jsonl"]


def test_file_mode_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        AnnotationStore(tmp_path / "a.jsonl", HEAD).append(_bg("c0", 0))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.jsonl").stat().st_mode) == 0o644


def test_old_files_written_by_whole_file_rewrites_still_open(tmp_path):
    path = tmp_path / "a.jsonl"
    head = {"format": "covidlib.annotations/1", **HEAD}
    lines = [head, _pt("c0", 1).to_json(), _bg("c0", 2).to_json()]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    store = AnnotationStore(path, HEAD)
    assert [a.z for a in store] == [1, 2]
    assert store.pop().z == 2  # undo after a reopen still removes the newest label
    assert [a.z for a in AnnotationStore(path, HEAD)] == [1]
