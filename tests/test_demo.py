"""The demo end to end on a tiny zoo (the real one is `make demo`), and its honest verdict."""

from __future__ import annotations

from paramgraph.tasks.demo import format_table, run_demo, verdict


def _row(method, tau):
    return {"method": method, "kendall_tau": tau, "r2": 0.5, "seconds": 1.0}


def test_verdict_names_the_winner_and_the_margin():
    rows = [_row("quasi", 0.80), _row("perm", 0.75), _row("statistics baseline", 0.78)]
    assert verdict(rows).startswith("quasi ranks the test networks best")
    assert "+0.020 over statistics baseline" in verdict(rows)
    rows[0]["kendall_tau"] = 0.70  # control: quasi behind is said as plainly
    text = verdict(rows)
    assert text.startswith("statistics baseline ranks") and "quasi is -0.080 behind" in text


def test_demo_runs_end_to_end_on_a_tiny_zoo(tmp_path, capsys):
    rows = run_demo(size=16, epochs=1, out=str(tmp_path / "runs"), zoo_dir=str(tmp_path / "zoo"),
                    workers=1)
    printed = capsys.readouterr().out
    assert [r["method"] for r in rows] == ["quasi", "perm", "strict", "statistics baseline"]
    assert "Kendall tau: agreement" in printed and format_table(rows) in printed
    # the metanets train with the tree prior by default, and the demo says what it scores alone
    assert "The trees alone, Kendall tau: quasi" in printed
    assert (tmp_path / "runs" / "demo.png").is_file()
    # every method is scored again on the same test networks moved along their orbits: the
    # exactly invariant metanets score the same (the rounding of one tied rank at most), perm
    # and the baseline read the moves
    assert (tmp_path / "zoo-moved4" / "zoo.json").is_file() and "moved: the same test" in printed
    tau = {r["method"]: (r["kendall_tau"], r["moved_tau"]) for r in rows}
    for method in ("quasi", "strict"):
        assert abs(tau[method][0] - tau[method][1]) < 1e-9
    assert tau["statistics baseline"][0] != tau["statistics baseline"][1]


def test_the_table_shows_the_moved_column_and_says_what_moving_changed():
    rows = [{**_row("quasi", 0.80), "moved_tau": 0.80}, {**_row("perm", 0.75), "moved_tau": 0.6}]
    assert format_table(rows).splitlines()[0].split()[-2:] == ["moved", "time"]
    assert "0.600" in format_table(rows) and "-" in format_table([_row("perm", 0.7)])
    from paramgraph.tasks.demo import moved_note

    assert "quasi +0.000, perm -0.150" in moved_note(rows)
