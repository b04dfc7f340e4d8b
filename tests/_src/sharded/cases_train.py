"""``handgrad train --mesh ...`` on 8 CPU devices against the single-device run.

Each case runs the command in this process (``handgrad.cli.main``) into a fresh
directory and reads the final train state back from its last checkpoint.  Run by
test_sharded_train.py in a subprocess on 8 CPU devices.
"""

from __future__ import annotations

import contextlib
import io
import pathlib
import shutil
import sys
import tempfile

import jax
import numpy as np

from handgrad import train
from handgrad._src.cli import train as train_cmd
from handgrad.cli import main as cli_main
from _cases import main, sharding_str

ROOT = pathlib.Path(tempfile.mkdtemp(prefix="hg-mesh-"))
COMMON = ["--subset", "256", "--batch-size", "32", "--no-progress"]
_runs: dict[tuple, pathlib.Path] = {}


def _run(name: str, *flags: str) -> pathlib.Path:
  """``handgrad train`` into ROOT/name; the directory (cached per flags)."""
  key = (name, flags)
  if key not in _runs:
    out = ROOT / name
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
      rc = cli_main(["train", *COMMON, *flags, "--out", str(out)])
    if rc != 0:
      raise RuntimeError(f"handgrad train {' '.join(flags)} exited {rc}: {err.getvalue()[-2000:]}")
    _runs[key] = out
  return _runs[key]


def _template(model: str, optimizer: str = "adam"):
  m = train_cmd._model(model)
  tx = train.make_optimizer(optimizer, 1e-3)
  return train.TrainState.create(m.init(jax.random.key(0)), tx, key=0)


def _final(out: pathlib.Path, model: str, optimizer: str = "adam"):
  with train.Checkpointer(out / "checkpoints") as ckpt:
    state, _ = ckpt.restore(_template(model, optimizer))
  return state


def _diff(a, b, skip: str | None = None) -> dict:
  """Max abs difference and max relative difference (|a-b| / max(|b|, 1e-6) over
  entries with |b| > 1e-3) over every parameter and optimizer-state leaf, but those
  whose path ends with ``skip``."""
  abs_err = rel_err = params_abs = 0.0
  worst = ""
  keep = lambda path: skip is None or not jax.tree_util.keystr(  # noqa: E731
      path, simple=True, separator="/").endswith(skip)
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a.params)[0],
                          jax.tree.leaves(b.params)):
    if not keep(path):
      continue
    d = float(np.max(np.abs(np.asarray(x, np.float64) - y)))
    if d > params_abs:
      params_abs, worst = d, jax.tree_util.keystr(path, simple=True, separator="/")
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path((a.params, a.opt_state))[0],
                          jax.tree.leaves((b.params, b.opt_state))):
    if not keep(path):
      continue
    x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
    d = np.abs(x64 - y64)
    abs_err = max(abs_err, float(d.max(initial=0.0)))
    big = np.abs(y64) > 1e-3
    if big.any():
      rel_err = max(rel_err, float((d[big] / np.abs(y64[big])).max()))
  return {"params_abs": params_abs, "worst": worst, "abs": abs_err, "rel": rel_err, "step": int(a.step), "ref_step": int(b.step)}


def _against_one_device(model: str, epochs: str, *flags: str, skip=None) -> dict:
  opt = flags[flags.index("--optimizer") + 1] if "--optimizer" in flags else "adam"
  single = flags[:flags.index("--mesh")]
  one = _final(_run(f"{model}-1dev-{epochs}-{'-'.join(single)}", "--model", model,
                    "--epochs", epochs, *single), model, opt)
  many = _final(_run(f"{model}-{'-'.join(flags)}-{epochs}", "--model", model,
                     "--epochs", epochs, *flags), model, opt)
  return _diff(many, one, skip)


def mlp_data8():
  return _against_one_device("mlp", "1", "--mesh", "data=8")


def mlp_fsdp8():
  return _against_one_device("mlp", "1", "--mesh", "data=8", "--sharding", "fsdp")


def mlp_data4_model2():
  return _against_one_device("mlp", "1", "--mesh", "data=4,model=2")


def transformer_data4_model2():
  # The key bias's gradient is zero in exact arithmetic (q·(k + b) shifts every score
  # of a query by q·b, which the softmax ignores): both runs' are float32 noise, which
  # Adam's m / sqrt(v) turns into steps of about lr.  Compared without it, and the
  # difference in it reported.
  out = _against_one_device("transformer", "1", "--mesh", "data=4,model=2",
                            skip="attn/k/b")
  out["key_bias_abs"] = _against_one_device("transformer", "1", "--mesh", "data=4,model=2")[
      "params_abs"]
  return out


def transformer_data4_model2_sgd():
  return _against_one_device("transformer", "1", "--optimizer", "sgd", "--lr", "0.1",
                             "--mesh", "data=4,model=2")


def step_shardings():
  """Where make_train_step(mesh=...) keeps the state: fsdp splits W along data,
  megatron splits q/k/v by columns along model, the moments follow their parameter."""
  out = {}
  for model, spec, sharding in (("mlp", "data=8", "fsdp"),
                                ("transformer", "data=4,model=2", "megatron")):
    m = train_cmd._model(model)
    tx = train.make_optimizer("adam", 1e-3)
    loss = train.classification_loss(m.apply)
    mesh = train.make_mesh(spec)
    step = train.make_train_step(loss, tx, mesh=mesh, sharding=sharding)
    state = step.place(train.TrainState.create(m.init(jax.random.key(0)), tx, key=0))
    x = np.zeros((16, 784), np.float32)
    from handgrad.data import Batch
    state, metrics = step(state, Batch(x, np.zeros(16, np.int32), np.ones(16, np.float32)))
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    out[sharding] = {jax.tree_util.keystr(p, simple=True, separator="/"): sharding_str(v)
                     for p, v in leaves}
    out[sharding + "_loss_finite"] = bool(np.isfinite(float(metrics["loss"])))
  return out


def _resume(src: pathlib.Path, name: str, model: str, *flags: str) -> pathlib.Path:
  dst = ROOT / name
  shutil.copytree(src, dst)
  err = io.StringIO()
  with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
    rc = cli_main(["train", *COMMON, "--model", model, "--epochs", "2", "--resume",
                   *flags, "--out", str(dst)])
  if rc != 0:
    raise RuntimeError(f"resume {flags} exited {rc}: {err.getvalue()[-2000:]}")
  return dst


def resume_on_other_meshes():
  """Saved on data=8 (FSDP: sharded params and moments), resumed for a second epoch on
  data=4,model=2 and on one device; each against two uninterrupted epochs on one device."""
  ref = _final(_run("mlp-1dev-2", "--model", "mlp", "--epochs", "2"), "mlp")
  saved = _run("mlp-fsdp8-1", "--model", "mlp", "--epochs", "1", "--mesh", "data=8",
               "--sharding", "fsdp")
  out = {}
  for name, flags in (("data4_model2", ("--mesh", "data=4,model=2", "--sharding", "fsdp")),
                      ("data8_data", ("--mesh", "data=8")),
                      ("one_device", ())):
    out[name] = _diff(_final(_resume(saved, "resume-" + name, "mlp", *flags), "mlp"), ref)
  return out


if __name__ == "__main__":
  try:
    main({name: fn for name, fn in list(globals().items())
          if callable(fn) and not name.startswith("_") and getattr(fn, "__module__", "") == "__main__"
          and name not in ("main", "sharding_str", "cli_main")})
  finally:
    shutil.rmtree(ROOT, ignore_errors=True)
