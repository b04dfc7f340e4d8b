"""``handgrad --version``, help without reST markup, and library notices through the
``handgrad`` logger."""

import logging
import os
import sys

import jax
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import fault_helpers as fh  # noqa: E402

import handgrad  # noqa: E402
from handgrad import train  # noqa: E402
from handgrad.cli import main  # noqa: E402


def test_version(capsys):
  with pytest.raises(SystemExit) as e:
    main(["--version"])
  assert e.value.code == 0
  assert capsys.readouterr().out.strip() == f"handgrad {handgrad.__version__}"


@pytest.mark.parametrize("command", ["check", "train", "graph"])
def test_help_has_no_rest_markup(capsys, command):
  with pytest.raises(SystemExit):
    main([command, "--help"])
  assert "``" not in capsys.readouterr().out


def test_fit_notices_go_to_the_handgrad_logger(tmp_path, caplog):
  with caplog.at_level(logging.INFO, logger="handgrad"):
    tx, step, _ = fh.pieces()
    train_ds, _ = fh.data()
    train.fit(step, fh.fresh_state(), train_ds, epochs=1, batch_size=fh.BATCH,
              data_key=jax.random.key(0), out_dir=tmp_path, resume=True, progress=False,
              plot=False)
  assert any(r.name == "handgrad" and "starting from step 0" in r.getMessage()
             for r in caplog.records)
