"""The papermill book runner: plan validation, failures reported by name, missing data."""

import json
from pathlib import Path

import nbformat
import pytest

from covidlib.report import book as book_mod
from covidlib.report.book import (
    BookError,
    PlanEntry,
    dask_spawn_keys,
    execute_plan,
    load_plan,
    longest_first,
    previous_seconds,
    report,
    restore_environ,
    worker_env,
)

REPO = Path(__file__).resolve().parents[1]


def _notebook(path: Path, code: str) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("profile = 'cpu'\nresults_dir = ''\ndevice = 'auto'\nx = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(code)]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def test_the_shipped_plan_is_valid_and_its_notebooks_exist():
    entries = load_plan(REPO / "book" / "plan.yml")
    toc = (REPO / "book" / "_toc.yml").read_text()
    for e in entries:
        assert (REPO / "notebooks" / f"{e.notebook}.ipynb").exists(), e.notebook
        assert f"_generated/{e.output}" in toc, f"{e.output} is not in book/_toc.yml"


@pytest.mark.parametrize(("text", "msg"), [
    ("[]", "non-empty list"),
    ("- {notebook: a, output: b}", "'title' must be"),
    ("- {notebook: a, output: b, title: t, colour: red}", "unknown keys"),
    ("- {notebook: a, output: b, title: t}\n- {notebook: c, output: b, title: u}", "used twice"),
    ("- [", "not valid YAML"),
])
def test_bad_plans_name_the_file_and_reason(tmp_path, text, msg):
    plan = tmp_path / "plan.yml"
    plan.write_text(text)
    with pytest.raises(BookError, match=msg) as err:
        load_plan(plan)
    assert str(plan) in str(err.value)


@pytest.mark.slow
def test_a_failing_notebook_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "plan.yml").write_text(
        "- {notebook: bad, output: bad_out, title: Bad}\n"
        "- {notebook: good, output: good_out, title: Good, parameters: {x: 41}}\n")
    _notebook(tmp_path / "notebooks" / "bad.ipynb", "raise ValueError('broken on purpose')")
    _notebook(tmp_path / "notebooks" / "good.ipynb",
              "import os\nprint('answer', x + 1, os.environ.get('MALLOC_TRIM_THRESHOLD_'))")
    outcomes = execute_plan(tmp_path, "cpu", tmp_path / "results", log=lambda s: None)
    assert [(o.entry.output, o.status) for o in outcomes] == [("bad_out", "failed"),
                                                              ("good_out", "ok")]
    assert "ValueError: broken on purpose" in outcomes[0].error
    text = report(outcomes)
    assert "bad_out (bad.ipynb) failed" in text and "broken on purpose" in text
    executed = nbformat.read(tmp_path / "book" / "_generated" / "good_out.ipynb", as_version=4)
    # the kernel ran on a Dask nanny's worker, without the nanny's malloc setting
    assert executed.cells[-1].outputs[0]["text"] == "answer 42 None\n"
    assert not (tmp_path / "book" / "_generated" / "bad_out.ipynb").exists()
    timings = json.loads((tmp_path / "results" / "book_timings_cpu.json").read_text())
    assert timings["good_out"]["status"] == "ok"
    assert timings["workers"] == 2
    assert timings["wall_seconds"] >= max(timings[k]["seconds"] for k in ("bad_out", "good_out"))
    # a partial re-run (--only; both chapters here, so that it runs on Dask again) updates its
    # chapters and keeps the rest, the last whole run's wall time included
    path = tmp_path / "results" / "book_timings_cpu.json"
    path.write_text(json.dumps({**timings, "other": {"status": "ok", "seconds": 1.5}}))
    execute_plan(tmp_path, "cpu", tmp_path / "results", only=["bad_out", "good_out"],
                 log=lambda s: None)
    again = json.loads(path.read_text())
    assert again["other"] == {"status": "ok", "seconds": 1.5}
    assert again["good_out"]["status"] == "ok"
    assert (again["wall_seconds"], again["date"]) == (timings["wall_seconds"], timings["date"])


def test_unknown_profile_and_chapter_are_refused(tmp_path):
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "plan.yml").write_text("- {notebook: a, output: a, title: A}\n")
    with pytest.raises(BookError, match="profile 'fast'"):
        execute_plan(tmp_path, "fast", tmp_path / "r")
    with pytest.raises(BookError, match="unknown chapters"):
        execute_plan(tmp_path, "cpu", tmp_path / "r", only=["zzz"])


def test_a_chapter_whose_data_is_absent_becomes_a_page_saying_so(tmp_path, monkeypatch):
    monkeypatch.setenv("COVIDLIB_DATA_PATH", str(tmp_path / "empty"))
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "plan.yml").write_text(
        "- {notebook: real, output: real_out, title: Real data, requires: covid-semiseg}\n")
    outcomes = execute_plan(tmp_path, "cpu", tmp_path / "results", log=lambda s: None)
    assert [o.status for o in outcomes] == ["missing-data"]
    page = nbformat.read(tmp_path / "book" / "_generated" / "real_out.ipynb", as_version=4)
    text = page.cells[0].source
    assert text.startswith("# Real data") and "not executed" in text
    assert "covid-semiseg" in text and str(tmp_path / "empty") in text
    # the same page next time is not rewritten (the HTML of a no-change rebuild stays fresh)
    stamp = (tmp_path / "book" / "_generated" / "real_out.ipynb").stat().st_mtime_ns
    execute_plan(tmp_path, "cpu", tmp_path / "results", log=lambda s: None)
    assert (tmp_path / "book" / "_generated" / "real_out.ipynb").stat().st_mtime_ns == stamp


def test_stage_must_be_a_non_negative_integer(tmp_path):
    plan = tmp_path / "plan.yml"
    plan.write_text("- {notebook: a, output: b, title: t, stage: -1}\n")
    with pytest.raises(BookError, match="'stage' must be an integer >= 0, got -1"):
        load_plan(plan)
    plan.write_text("- {notebook: a, output: b, title: t, stage: 2}\n")
    assert load_plan(plan)[0].stage == 2


def test_worker_env_gives_each_worker_its_gpu_and_thread_share():
    assert worker_env(3, 2, 2, cpus=16, environ={}) == {
        "CUDA_VISIBLE_DEVICES": "1", "OMP_NUM_THREADS": "8", "MKL_NUM_THREADS": "8"}
    assert worker_env(0, 3, 0, cpus=2, environ={}) == {"OMP_NUM_THREADS": "1",
                                                       "MKL_NUM_THREADS": "1"}
    # what the user fixed stays fixed
    assert worker_env(1, 2, 4, cpus=8, environ={"CUDA_VISIBLE_DEVICES": "3",
                                                "OMP_NUM_THREADS": "2"}) == {
        "MKL_NUM_THREADS": "4"}


def test_the_nanny_environment_is_put_back_as_the_client_had_it():
    assert {"MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS"} <= set(dask_spawn_keys())
    env = {"MALLOC_TRIM_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1", "PATH": "/bin"}
    restore_environ({"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "4"}, env)
    assert env == {"OMP_NUM_THREADS": "4", "PATH": "/bin"}
    # then each worker gets its share of the client's threads unless the client fixed them
    assert worker_env(0, 2, 0, cpus=2, environ=env) == {"MKL_NUM_THREADS": "1"}


def test_one_worker_runs_in_this_process_in_plan_order(tmp_path):
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "plan.yml").write_text(
        "- {notebook: n1, output: o1, title: One, stage: 1}\n"
        "- {notebook: n2, output: o2, title: Two}\n")
    outcomes = execute_plan(tmp_path, "cpu", tmp_path / "r", workers=1, log=lambda s: None)
    assert [(o.entry.output, o.status, o.worker) for o in outcomes] == [
        ("o1", "failed", "local"), ("o2", "failed", "local")]
    assert "n1.ipynb: notebook not found" in outcomes[0].error
    with pytest.raises(BookError, match="workers=0"):
        execute_plan(tmp_path, "cpu", tmp_path / "r", workers=0)


def test_a_bad_scheduler_address_is_refused(tmp_path, monkeypatch):
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "plan.yml").write_text("- {notebook: a, output: a, title: A}\n")
    monkeypatch.setenv("COVIDLIB_SCHEDULER", "localhost:8786")
    with pytest.raises(BookError, match="COVIDLIB_SCHEDULER='localhost:8786': expected"):
        execute_plan(tmp_path, "cpu", tmp_path / "r", log=lambda s: None)


@pytest.mark.slow
def test_an_existing_scheduler_runs_the_stages_in_order(tmp_path, monkeypatch):
    from distributed import LocalCluster

    # the workers run in this process here: keep their thread settings out of os.environ
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "plan.yml").write_text(
        "- {notebook: last, output: last_out, title: Last, stage: 1}\n"
        "- {notebook: first, output: first_out, title: First}\n"
        "- {notebook: bad, output: bad_out, title: Bad}\n")
    flag = tmp_path / "first.done"
    _notebook(tmp_path / "notebooks" / "first.ipynb",
              f"import time, pathlib\ntime.sleep(1)\npathlib.Path({str(flag)!r}).write_text('1')")
    _notebook(tmp_path / "notebooks" / "bad.ipynb", "1 / 0")
    _notebook(tmp_path / "notebooks" / "last.ipynb",
              f"import pathlib\nprint('first finished:', pathlib.Path({str(flag)!r}).exists())")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp://",
                      host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster:
        monkeypatch.setenv("COVIDLIB_SCHEDULER", cluster.scheduler_address)
        outcomes = execute_plan(tmp_path, "cpu", tmp_path / "results", log=lambda s: None)
        addresses = {w.address for w in cluster.workers.values()}
    assert [(o.entry.output, o.status) for o in outcomes] == [
        ("last_out", "ok"), ("first_out", "ok"), ("bad_out", "failed")]
    assert {o.worker for o in outcomes} <= addresses
    assert "ZeroDivisionError" in outcomes[2].error
    executed = nbformat.read(tmp_path / "book" / "_generated" / "last_out.ipynb", as_version=4)
    assert executed.cells[-1].outputs[0]["text"] == "first finished: True\n"
    timings = json.loads((tmp_path / "results" / "book_timings_cpu.json").read_text())
    assert timings["bad_out"]["status"] == "failed"
    assert timings["first_out"]["worker"] in addresses


def test_the_longest_chapters_are_submitted_first(tmp_path):
    (tmp_path / "book_timings_cpu.json").write_text(
        '{"a": {"status": "ok", "seconds": 5.0}, "b": {"status": "ok", "seconds": 50.0},'
        ' "c": {"status": "failed", "seconds": 5.0}}')
    seconds = previous_seconds(tmp_path, "cpu")
    assert seconds == {"a": 5.0, "b": 50.0, "c": 5.0}
    entries = [PlanEntry(n, n, n) for n in ("a", "b", "c", "new")]
    assert [e.output for e in longest_first(entries, seconds)] == ["new", "b", "a", "c"]
    assert previous_seconds(tmp_path, "gpu") == {}
    (tmp_path / "book_timings_gpu.json").write_text(
        '{"a": {"status": "ok", "seconds": 7.0}, "wall_seconds": 9.5, "workers": 2}')
    assert previous_seconds(tmp_path, "gpu") == {"a": 7.0}
    (tmp_path / "book_timings_gpu.json").write_text("[1, 2")
    assert previous_seconds(tmp_path, "gpu") == {}


# ------------------------------------------------------------------ incremental builds
class _FakeKernel:
    """Stands in for papermill: writes the executed copy (notebook text + parameters) and
    counts which chapters ran; ``fail`` names chapters that raise."""

    def __init__(self):
        self.ran: list[str] = []
        self.fail: set[str] = set()

    def __call__(self, entry, repo, profile, results_dir, device="auto", log=print):
        self.ran.append(entry.output)
        if entry.output in self.fail:
            return book_mod.RunOutcome(entry, "failed", 0.1, "boom")
        out = Path(repo) / "book" / "_generated" / f"{entry.output}.ipynb"
        out.parent.mkdir(parents=True, exist_ok=True)
        src = (Path(repo) / "notebooks" / f"{entry.notebook}.ipynb").read_text()
        out.write_text(json.dumps({"src": src, "params": entry.parameters,
                                   "profile": profile}))
        if entry.stage == 0:  # a chapter records its scorecard row (with the run's date)
            card = Path(results_dir) / "scorecard" / f"{entry.output}.json"
            card.parent.mkdir(parents=True, exist_ok=True)
            card.write_text(json.dumps({"run": len(self.ran)}))
        return book_mod.RunOutcome(entry, "ok", 0.5)


@pytest.fixture
def fake_book(tmp_path, monkeypatch):
    """A two-stage plan of three tiny notebooks, with papermill replaced by _FakeKernel."""
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "plan.yml").write_text(
        "- {notebook: a, output: a_out, title: A, parameters: {x: 1}}\n"
        "- {notebook: b, output: b_out, title: B, inputs: [bench/b.json]}\n"
        "- {notebook: card, output: card_out, title: Scorecard, stage: 1}\n")
    for name in ("a", "b", "card"):
        _notebook(tmp_path / "notebooks" / f"{name}.ipynb", f"print({name!r})")
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "b.json").write_text("{}")
    kernel = _FakeKernel()
    monkeypatch.setattr(book_mod, "run_entry", kernel)
    sources = {"digest": "v1"}
    monkeypatch.setattr(book_mod, "source_digest", lambda package=None: sources["digest"])

    def build(**kw):
        kernel.ran.clear()
        outcomes = execute_plan(tmp_path, "cpu", tmp_path / "results", workers=1,
                                log=lambda s: None, **kw)
        return sorted(kernel.ran), {o.entry.output: o.status for o in outcomes}

    return tmp_path, kernel, sources, build


def test_a_no_change_rebuild_executes_nothing(fake_book):
    repo, _, _, build = fake_book
    assert build()[0] == ["a_out", "b_out", "card_out"]
    ran, status = build()
    assert ran == [] and set(status.values()) == {"reused"}
    timings = json.loads((repo / "results" / "book_timings_cpu.json").read_text())
    # the whole build's wall time stays; the incremental one is recorded beside it
    assert timings["wall_seconds"] >= 0 and timings["a_out"]["status"] == "ok"
    assert timings["last_incremental"]["executed"] == 0
    assert timings["last_incremental"]["reused"] == 3
    assert previous_seconds(repo / "results", "cpu") == {"a_out": 0.5, "b_out": 0.5,
                                                         "card_out": 0.5}


def test_a_changed_notebook_reexecutes_that_chapter_and_the_later_stage(fake_book):
    repo, _, _, build = fake_book
    build()
    _notebook(repo / "notebooks" / "a.ipynb", "print('a, edited')")
    # a stage-1 chapter (the scorecard) reads what the earlier ones wrote: it runs again too
    assert build()[0] == ["a_out", "card_out"]
    assert build()[0] == []


def test_parameters_inputs_and_sources_are_part_of_the_key(fake_book):
    repo, _, sources, build = fake_book
    build()
    plan = repo / "book" / "plan.yml"
    plan.write_text(plan.read_text().replace("{x: 1}", "{x: 2}"))
    assert build()[0] == ["a_out", "card_out"]
    (repo / "bench" / "b.json").write_text('{"new": 1}')
    assert build()[0] == ["b_out", "card_out"]
    sources["digest"] = "v2"  # a covidlib file changed: every chapter imports the package
    assert build()[0] == ["a_out", "b_out", "card_out"]
    # another profile is another key
    kernel_runs, _ = build()
    assert kernel_runs == []
    execute_plan(repo, "gpu", repo / "results", workers=1, log=lambda s: None)
    assert build()[0] == ["a_out", "b_out", "card_out"]  # the gpu run replaced the copies


def test_changed_results_or_scorecard_entries_reexecute(fake_book):
    repo, _, _, build = fake_book
    build()
    results = repo / "results"
    (results / "p2").mkdir()
    (results / "p2" / "abc.json").write_text("{}")  # a result appeared (or was deleted)
    assert build()[0] == ["a_out", "b_out", "card_out"]
    assert build()[0] == []
    (results / "scorecard" / "P2-T2.json").write_text("{}")  # only the scorecard reads these
    assert build()[0] == ["card_out"]
    # claims, locks and the book's own files do not count as results
    (results / "p2" / "abc.lock").write_text("")
    (results / "p2" / ".tmp123").write_text("")
    assert build()[0] == []


def test_force_only_deleted_copies_and_failures(fake_book):
    repo, kernel, _, build = fake_book
    build()
    assert build(force=True)[0] == ["a_out", "b_out", "card_out"]
    ran, status = build(only=["b_out"])
    assert ran == ["b_out"] and status == {"b_out": "ok"}
    assert build()[0] == ["card_out"]  # b_out rewrote its scorecard entry
    (repo / "book" / "_generated" / "a_out.ipynb").unlink()
    assert build()[0] == ["a_out", "card_out"]
    kernel.fail = {"b_out"}
    build(force=True)
    kernel.fail = set()
    assert build()[0] == ["b_out", "card_out"]  # a failed chapter runs again next time


def test_stale_reason_says_what_changed(tmp_path):
    out = tmp_path / "x.ipynb"
    key = {"notebook": "n", "parameters": {"x": 1}, "sources": "s", "inputs": {},
           "results": "r", "scorecard": ""}
    assert book_mod.stale_reason(key, None, out) == "never executed with this profile"
    record = {"format": book_mod.CACHE_FORMAT, **key, "output": "nope"}
    assert book_mod.stale_reason(key, record, out) == "no executed copy (x.ipynb)"
    out.write_text("executed")
    assert book_mod.stale_reason(key, record, out) == "the executed copy is another run's"
    record["output"] = book_mod._sha(out)
    assert book_mod.stale_reason(key, record, out) is None
    assert book_mod.stale_reason({**key, "sources": "t"}, record,
                                 out) == "the covidlib sources changed"
    assert book_mod.stale_reason({**key, "results": "q"}, record,
                                 out) == "the results cache changed"


def test_source_digest_follows_the_package_files(tmp_path):
    pkg = tmp_path / "covidlib"
    (pkg / "__pycache__").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (tmp_path / "data_manifests").mkdir()
    (tmp_path / "data_manifests" / "d.yaml").write_text("name: d\n")
    first = book_mod.source_digest(pkg)
    (pkg / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    assert book_mod.source_digest(pkg) == first  # byte code does not count
    (tmp_path / "data_manifests" / "d.yaml").write_text("name: e\n")
    assert book_mod.source_digest(pkg) != first


def test_inputs_must_be_a_list_of_paths(tmp_path):
    plan = tmp_path / "plan.yml"
    plan.write_text("- {notebook: a, output: b, title: t, inputs: bench.json}\n")
    with pytest.raises(BookError, match="'inputs' must be a list of paths"):
        load_plan(plan)


@pytest.mark.slow
def test_a_real_kernel_run_is_reused_the_second_time(tmp_path, monkeypatch):
    monkeypatch.setattr(book_mod, "source_digest", lambda package=None: "fixed")
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "plan.yml").write_text(
        "- {notebook: tiny, output: tiny_out, title: Tiny, parameters: {x: 2}}\n")
    _notebook(tmp_path / "notebooks" / "tiny.ipynb", "print(x * 21)")
    first = execute_plan(tmp_path, "cpu", tmp_path / "r", workers=1, log=lambda s: None)
    assert [o.status for o in first] == ["ok"]
    executed = tmp_path / "book" / "_generated" / "tiny_out.ipynb"
    assert nbformat.read(executed, as_version=4).cells[-1].outputs[0]["text"] == "42\n"
    stamp = executed.stat().st_mtime_ns
    again = execute_plan(tmp_path, "cpu", tmp_path / "r", workers=1, log=lambda s: None)
    assert [o.status for o in again] == ["reused"] and executed.stat().st_mtime_ns == stamp


# ------------------------------------------------------------------ plumbing off the pages
@pytest.mark.parametrize(("source", "tags", "kind"), [
    ("profile = 'cpu'", ["parameters"], "remove-cell"),
    ("profile = 'gpu'", ["injected-parameters"], "remove-cell"),
    ("x = load()\nshow(x)", ["plumbing"], "remove-cell"),
    ("# plumbing: timings\nt0 = 1", [], "remove-cell"),
    ("from myst_nb import glue\nglue('n', 3, display=False)", [], "remove-cell"),
    ("scorecard.record(results_dir, 'P2-T2',\n                 paper=1, ours=2,\n"
     "                 provenance=run)", [], "remove-cell"),
    ("table = p2.table(runs)\nglue('dice', 0.5, display=False)\ntable", [], "remove-input"),
    ("minutes = (time.perf_counter() - t0) / 60\nprint(minutes)", [], "remove-input"),
    ("fig = p1.figure5(frame)", [], None),
])
def test_plumbing_cells_are_tagged_for_removal(source, tags, kind):
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = tags
    assert book_mod.plumbing_kind(cell) == kind
    assert book_mod.plumbing_kind(nbformat.v4.new_markdown_cell("glue(x)")) is None


def test_hide_plumbing_adds_the_tags_once():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("glue('a', 1, display=False)"),
                nbformat.v4.new_code_cell("frame")]
    assert book_mod.hide_plumbing(nb) == 1
    assert nb.cells[0].metadata["tags"] == ["remove-cell"]
    assert "tags" not in nb.cells[1].metadata
    assert book_mod.hide_plumbing(nb) == 0  # already tagged


# ------------------------------------------------------------------ API page, references
def test_the_api_page_documents_every_public_module():
    modules = book_mod.public_modules()
    assert {"covidlib.engine", "covidlib.report.book", "covidlib.data.manifest"} <= set(modules)
    assert not [m for m in modules if "._" in m or m.endswith("__main__")]
    text = book_mod.api_page_text()
    for name in modules:
        assert f".. automodule:: {name}\n   :members:\n   :undoc-members:" in text, name
    # packages re-export their modules' names: not indexed twice
    assert ".. automodule:: covidlib.data\n   :members:\n   :undoc-members:\n" \
           "   :show-inheritance:\n   :no-index:" in text
    config = (REPO / "book" / "_config.yml").read_text()
    assert "sphinx.ext.autodoc" in config and "sphinx.ext.napoleon" in config
    toc = (REPO / "book" / "_toc.yml").read_text()
    assert "file: api" in toc and "file: references" in toc


def test_the_api_page_indexes_what_a_package_defines_itself():
    # covidlib.report.paper_values defines its functions in its __init__: indexed once there
    assert book_mod.package_own_members("covidlib.report.paper_values") == [
        ("PaperValuesError", "class"), ("artifact", "function"), ("available", "function")]
    assert book_mod.package_own_members("covidlib.data") == []  # re-exports only
    text = book_mod.api_page_text(["covidlib.report.paper_values"])
    assert "   :no-index:\n   :exclude-members: PaperValuesError, artifact, available\n" in text
    assert "\n.. autofunction:: covidlib.report.paper_values.artifact\n" in text
    assert "\n.. autoclass:: covidlib.report.paper_values.PaperValuesError\n   :members:" in text


def test_references_and_citation_are_shipped():
    import yaml

    refs = (REPO / "book" / "references.md").read_text()
    for key in ("laradji2020regional", "laradji2021consistency", "rahimi_exorbitant_cost",
                "hussain_noisy_teacher", "ma2020dataset", "fan2020infnet", "yang2017lctsc",
                "an2020tcia", "medseg2020"):
        assert f"{{{key}," in refs, key
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["title"].startswith("covidlib")
    assert len(cff["references"]) == 4


def test_the_html_is_fresh_until_a_page_changes(tmp_path):
    import os

    book = tmp_path / "book"
    (book / "_generated").mkdir(parents=True)
    (book / "_build").mkdir()
    page = book / "_generated" / "a.ipynb"
    page.write_text("{}")
    stamp = book / "_build" / ".covidlib-layout"
    stamp.write_text("x")
    os.utime(page, ns=(1, 1))
    assert book_mod._html_fresh(book, stamp)
    (book / "_build" / "late.html").write_text("")  # the build's own output does not count
    assert book_mod._html_fresh(book, stamp)
    page.write_text("{ }")  # a chapter was executed again
    os.utime(page, ns=(stamp.stat().st_mtime_ns + 1,) * 2)
    assert not book_mod._html_fresh(book, stamp)


def test_result_tables_keep_mean_and_sd_on_one_line():
    config = (REPO / "book" / "_config.yml").read_text()
    assert "html_css_files: [covidlib.css]" in config
    css = (REPO / "book" / "_assets" / "covidlib.css").read_text()
    assert ".cell_output table td" in css and "white-space: nowrap" in css
    assert "url(" not in css  # offline: the stylesheet fetches nothing


def test_a_kernel_that_dies_at_start_is_started_again_but_a_cell_error_is_not(tmp_path,
                                                                              monkeypatch):
    """Two kernels started at once can pick the same free TCP port ("Address already in use",
    then "Kernel died before replying to kernel_info"): the chapter is run again, up to
    KERNEL_START_ATTEMPTS times, saying so; a notebook's own error is reported at once."""
    import papermill

    from covidlib.report.book import KERNEL_START_ATTEMPTS, run_entry

    _notebook(tmp_path / "notebooks" / "nb.ipynb", "print(1)")
    entry = PlanEntry(notebook="nb", output="nb_out", title="Nb")
    calls, logs = [], []

    def flaky(src, dst, **kwargs):
        calls.append(dst)
        if len(calls) == 1:
            raise RuntimeError("Kernel died before replying to kernel_info")
        nbformat.write(nbformat.read(src, as_version=4), dst)

    monkeypatch.setattr(papermill, "execute_notebook", flaky)
    out = run_entry(entry, tmp_path, "cpu", tmp_path / "results", log=logs.append)
    assert out.status == "ok" and len(calls) == 2
    assert any("kernel died while starting (attempt 1 of" in line for line in logs)
    assert (tmp_path / "book" / "_generated" / "nb_out.ipynb").exists()

    def always_dies(src, dst, **kwargs):
        calls.append(dst)
        raise RuntimeError("Kernel died before replying to kernel_info")

    calls.clear()
    monkeypatch.setattr(papermill, "execute_notebook", always_dies)
    out = run_entry(entry, tmp_path, "cpu", tmp_path / "results", log=logs.append)
    assert out.status == "failed" and len(calls) == KERNEL_START_ATTEMPTS
    assert "Kernel died before replying to kernel_info" in out.error

    class CellError(Exception):  # papermill's PapermillExecutionError carries ename/evalue
        ename, evalue, traceback = "ValueError", "broken on purpose", ["ValueError: broken"]

    def cell_fails(src, dst, **kwargs):
        calls.append(dst)
        raise CellError()

    calls.clear()
    monkeypatch.setattr(papermill, "execute_notebook", cell_fails)
    out = run_entry(entry, tmp_path, "cpu", tmp_path / "results", log=logs.append)
    assert out.status == "failed" and len(calls) == 1 and "broken on purpose" in out.error
