"""`handgrad check`: the rule table and the seed's example, on a subset of rules."""

from handgrad.cli import main


def test_check_prints_rule_table_and_seed_example(capsys):
  assert main(["check", "--rules", "dense,exp,softmax_cross_entropy"]) == 0
  out = capsys.readouterr().out
  lines = out.splitlines()
  assert lines[0].split()[:4] == ["rule", "float32", "float64", "fd"]
  rows = {l.split()[0]: l for l in lines[1:4]}
  assert set(rows) == {"dense", "exp", "softmax_cross_entropy"}
  assert all(r.endswith("ok") for r in rows.values())
  assert "3 rules" in out and "0 failed" in out
  assert "dL/dw = 8" in out and "dL/db = 4" in out and "dL/dx = 12" in out


def test_check_rejects_unknown_rule(capsys):
  assert main(["check", "--rules", "no_such_rule"]) == 2
  assert "no_such_rule" in capsys.readouterr().err


def test_bad_top_level_arguments_are_one_line(capsys):
  import pytest
  for argv in (["train", "--bogus"], ["frobnicate"]):
    with pytest.raises(SystemExit) as e:
      main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("handgrad: error:")
