"""The benchmark report: ratios say which way rackfire compares, targets are judged on the
figures, and rewriting docs/benchmarks.md keeps everything outside the generated part."""

from __future__ import annotations

from pathlib import Path

from bench.report import BEGIN, END, Result, Row, load_all, ratio_target, render, write_doc


def result() -> Result:
    r = Result("start", "Instance start", "How it is measured.")
    r.add("50 at once", "rackfire", [2.0, 1.0, 3.0], "s")
    r.add("50 at once", "podman", [6.0, 5.0, 7.0], "s")
    r.add("50 at once", "bare runc", [0.5, 0.4, 0.6], "s")
    r.add("50 at once", "1. a step of ours", [0.1], "s", part=True)
    r.add("throughput", "rackfire", [3000.0], "placements/s", higher_is_better=True)
    r.add("throughput", "peer", [1000.0], "placements/s", higher_is_better=True)
    r.add("empty", "nobody", [], "s")  # no samples: no row
    return r


def test_tables_show_median_min_max_and_which_way_rackfire_compares() -> None:
    text = render([result()])
    assert "| 50 at once | rackfire | 2 s | 1 | 3 | 3 |  |" in text
    assert "| 50 at once | podman | 6 s | 5 | 7 | 3 | 3.00x faster |" in text
    assert "| 50 at once | bare runc | 0.5 s | 0.4 | 0.6 | 3 | 4.00x slower |" in text
    assert "| 50 at once | 1. a step of ours | 0.1 s | 0.1 | 0.1 | 1 |  |" in text
    assert "| throughput | peer | 1 000 placements/s | 1 000 | 1 000 | 1 | 3.00x faster |" \
        in text
    assert "nobody" not in text


def test_targets_are_judged_on_the_medians() -> None:
    r = result()
    assert ratio_target(r, "50 at once", "podman", 2, "2x podman").met is True
    within = ratio_target(r, "50 at once", "bare runc", 1 / 3, "within 3x of runc")
    assert (within.met, within.figure) == (False, "4.00x slower")
    missing = ratio_target(r, "50 at once", "docker", 2, "2x docker")
    assert (missing.met, missing.figure) == (None, "docker not measured")


def test_the_doc_keeps_what_is_written_around_the_generated_part(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nIntro.\n\n## Written by hand\n\nKept.\n")
    r = result()
    r.save(tmp_path)
    write_doc(load_all(tmp_path), doc)
    first = doc.read_text()
    assert first.index("Intro.") < first.index(BEGIN) < first.index(END) \
        < first.index("## Written by hand")
    assert load_all(tmp_path)[0].rows[1] == Row("50 at once", "podman", [6.0, 5.0, 7.0], "s")
    write_doc(load_all(tmp_path), doc)  # again: replaced in place, not added twice
    assert doc.read_text() == first and first.count(BEGIN) == 1


def test_a_measure_with_no_result_file_keeps_its_section(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    other = Result("snapshot", "Snapshot", "Run on another machine.")
    other.add("clone", "rackfire", [4.0], "s")
    other.save(tmp_path)
    write_doc(load_all(tmp_path), doc)
    (tmp_path / "snapshot.json").unlink()  # its result is not kept here
    result().save(tmp_path)
    write_doc(load_all(tmp_path), doc)
    text = doc.read_text()
    assert text.index("### Instance start") < text.index("### Snapshot") < text.index(END)
    assert "| clone | rackfire | 4 s |" in text
    write_doc(load_all(tmp_path), doc)
    assert doc.read_text() == text
