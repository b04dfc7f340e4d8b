"""gradient_stats against numpy on jax.grad gradients; health rules; history; the plot."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import handgrad as hg
from handgrad import inspect as hgi
from handgrad.inspect import GradStats


def _setup():
  k = jax.random.split(jax.random.key(0), 3)
  params = {"layers": [{"W": jax.random.normal(k[0], (5, 7)), "b": jnp.zeros(7)},
                       {"W": jax.random.normal(k[1], (7, 3)), "b": jnp.zeros(3)}],
            "scale": jnp.ones(())}
  x = jax.random.normal(k[2], (9, 5))
  y = jnp.arange(9) % 3

  def loss(p, x, y):
    with jax.named_scope("layers/0"):
      h = hg.ops.relu(hg.ops.dense(x, p["layers"][0]["W"], p["layers"][0]["b"]))
    with jax.named_scope("layers/1"):
      logits = hg.ops.dense(h, p["layers"][1]["W"], p["layers"][1]["b"]) * p["scale"]
    return hg.ops.softmax_cross_entropy(logits, y)

  return params, x, y, loss


def _numpy_stats(g):
  g = np.asarray(g, np.float64).ravel()
  std = np.std(g, ddof=1) if g.size > 1 else np.nan
  return (g.mean(), std, np.abs(g).max(), np.sqrt(np.sum(g ** 2)), np.isfinite(g).mean())


def test_stats_inside_jit_match_numpy_on_jax_grad():
  params, x, y, loss = _setup()

  @jax.jit
  def step(p, x, y):
    return hgi.gradient_stats(hg.grad(loss)(p, x, y))

  stats = step(params, x, y)
  ref = jax.grad(loss)(params, x, y)
  assert list(stats) == ["layers/0/W", "layers/0/b", "layers/1/W", "layers/1/b", "scale"]
  ref_named = {"layers/0/W": ref["layers"][0]["W"], "layers/0/b": ref["layers"][0]["b"],
               "layers/1/W": ref["layers"][1]["W"], "layers/1/b": ref["layers"][1]["b"],
               "scale": ref["scale"]}
  for name, s in stats.items():
    assert isinstance(s, GradStats)
    want = _numpy_stats(ref_named[name])
    for field, got, w in zip(GradStats._fields, s, want):
      if np.isnan(w):
        assert np.isnan(got), (name, field)
      else:
        np.testing.assert_allclose(got, w, rtol=2e-5, atol=1e-7, err_msg=f"{name}.{field}")


def test_std_is_unbiased_like_torch():
  g = jnp.array([1.0, 2.0, 4.0, 7.0])
  s = hgi.gradient_stats({"g": g})["g"]
  np.testing.assert_allclose(s.std, np.std(np.asarray(g), ddof=1), rtol=1e-6)
  assert not np.isclose(float(s.std), np.std(np.asarray(g)))
  # One element: 0/0 = NaN, as torch.tensor([3.]).std() and np.std(ddof=1).
  assert np.isnan(float(hgi.gradient_stats({"g": jnp.array([3.0])})["g"].std))


def test_nonfinite_and_low_precision_and_non_float_leaves():
  grads = {"a": jnp.array([1.0, jnp.nan, 2.0, jnp.inf]),
           "h": jnp.full((64, 64), 300.0, jnp.float16),  # Σg² overflows in float16
           "i": jnp.arange(3)}
  stats = jax.jit(hgi.gradient_stats)(grads)
  assert set(stats) == {"a", "h"}  # integer leaves carry no gradient
  np.testing.assert_allclose(stats["a"].finite_fraction, 0.5)
  assert np.isnan(float(stats["a"].mean)) and np.isnan(float(stats["a"].norm))
  assert stats["h"].norm.dtype == jnp.float32
  np.testing.assert_allclose(stats["h"].norm, 300.0 * 64, rtol=1e-6)


def _stats(**norms_and_max):
  out = {}
  for name, (norm, max_abs) in norms_and_max.items():
    out[name] = GradStats(jnp.float32(0), jnp.float32(0), jnp.float32(max_abs),
                          jnp.float32(norm), jnp.float32(1))
  return out


def test_check_health_seed_rules_and_messages():
  stats = _stats(ok=(1.0, 0.5), small=(1e-8, 1e-9), big=(500.0, 20.0), spiky=(5.0, 12.0))
  stats["nan"] = GradStats(*(jnp.float32(v) for v in (np.nan, np.nan, np.nan, np.nan, 0.75)))
  issues = hgi.check_health(stats)
  # Parameters in path order (a jitted step hands dicts back sorted by key anyway).
  assert issues == [
      "[EXPLODING] big: norm=5.00e+02",
      "[LARGE] big: max=2.00e+01",
      "[NONFINITE] nan: finite=0.75",
      "[VANISHING] small: norm=1.00e-08",
      "[LARGE] spiky: max=1.20e+01",
  ]
  assert hgi.check_health(_stats(a=(1.0, 0.5))) == ["All gradients healthy"]
  # Thresholds are configurable.
  assert hgi.check_health(_stats(a=(1.0, 0.5)), vanishing=2.0) == [
      "[VANISHING] a: norm=1.00e+00"]
  assert hgi.check_health(_stats(a=(1.0, 0.5)), exploding=0.5, large=0.1) == [
      "[EXPLODING] a: norm=1.00e+00", "[LARGE] a: max=5.00e-01"]


def test_monitor_history_from_a_jitted_step():
  params, x, y, loss = _setup()

  @jax.jit
  def step(p, x, y):
    g = hg.grad(loss)(p, x, y)
    p = jax.tree.map(lambda a, b: a - 0.1 * b, p, g)
    return p, hgi.gradient_stats(g)

  monitor = hgi.GradientMonitor(max_history=2)
  assert monitor.check_health() == ["No history"]
  norms = []
  for _ in range(3):
    g = jax.grad(loss)(params, x, y)
    norms.append(float(jnp.linalg.norm(g["layers"][0]["W"])))
    params, stats = step(params, x, y)
    host = monitor.log(stats)
    assert isinstance(host["scale"].norm, float)
  assert len(monitor.history) == 2 and monitor.steps == [1, 2]
  np.testing.assert_allclose(monitor.series("layers/0/W"), norms[1:], rtol=1e-5)
  assert monitor.check_health() == hgi.check_health(monitor.latest)
  # log_gradients (the seed's name) computes the statistics itself.
  g = jax.grad(loss)(params, x, y)
  logged = monitor.log_gradients(g, step=10)
  np.testing.assert_allclose(logged["scale"].norm, abs(float(g["scale"])), rtol=1e-6)
  assert monitor.steps[-1] == 10
  with pytest.raises(ValueError, match="unknown statistic"):
    monitor.series("scale", "median")


def test_host_order_is_parameter_order():
  grads = {"layers": [jnp.ones(2) * i for i in range(12)]}
  stats = jax.jit(hgi.gradient_stats)(grads)
  assert list(stats)[:3] == ["layers/0", "layers/1", "layers/10"]  # jit sorts keys
  names = [n for n, _ in hgi.bar_colours(stats)]
  assert names == [f"layers/{i}" for i in range(12)]


def test_bar_colours_pick_the_problem_layers():
  stats = _stats(**{"layers/0/W": (1e-9, 1e-10), "layers/0/b": (0.5, 0.1),
                    "layers/1/W": (250.0, 3.0), "layers/1/b": (2.0, 11.0)})
  stats["layers/2/W"] = stats["layers/0/b"]._replace(finite_fraction=jnp.float32(0.5))
  colours = dict(hgi.bar_colours(stats))
  assert colours == {"layers/0/W": "tab:purple", "layers/0/b": "tab:blue",
                     "layers/1/W": "tab:red", "layers/1/b": "tab:orange",
                     "layers/2/W": "black"}
  assert [n for n, _ in hgi.bar_colours(stats, layer_filter="layers/1")] == [
      "layers/1/W", "layers/1/b"]
  # Thresholds move the colours.
  assert dict(hgi.bar_colours(stats, exploding=1000.0))["layers/1/W"] == "tab:blue"


def test_plot_gradient_flow_writes_a_png(tmp_path):
  stats = _stats(**{"layers/0/W": (0.0, 0.0), "layers/0/b": (0.5, 0.1),
                    "layers/1/W": (250.0, 3.0)})
  stats["layers/1/b"] = GradStats(*(jnp.float32(v) for v in (np.nan,) * 4 + (0.0,)))
  path = hgi.plot_gradient_flow(stats, tmp_path / "flow.png")
  assert path == str(tmp_path / "flow.png")
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  monitor = hgi.GradientMonitor()
  monitor.log(stats)
  other = monitor.plot_gradient_flow(str(tmp_path / "m.png"), layer_filter="layers/0")
  with open(other, "rb") as f:
    assert f.read(4) == b"\x89PNG"
  with pytest.raises(ValueError, match="no parameter to plot"):
    hgi.plot_gradient_flow(stats, tmp_path / "x.png", layer_filter="nothing")


def test_a_gradient_with_one_nan_never_reads_finite_1_00():
  g = jnp.ones(100_000).at[3].set(jnp.nan)
  issues = hgi.check_health(hgi.gradient_stats({"g": g}))
  assert issues[0].startswith("[NONFINITE] g: finite=0.9999")
  assert "finite=1.00" not in issues[0]
  from handgrad._src.inspect.health import fraction_str
  for f in (0.75, 0.5, 0.995, 1 - 1 / 4096, 0.999999, 1 - 1e-12):
    shown = fraction_str(f)
    assert float(shown) < 1.0 and float(shown) <= f, (f, shown)
  assert fraction_str(0.75) == "0.75" and fraction_str(1.0) == "1.00"


def test_one_set_of_thresholds_and_statuses():
  from handgrad._src.inspect import exploding, health, plots
  stats = _stats(ok=(1.0, 0.5), small=(1e-8, 1e-9), big=(500.0, 20.0), spiky=(5.0, 12.0))
  status = hgi.classify(stats)
  assert status == {"big": "exploding", "ok": "ok", "small": "vanishing", "spiky": "large"}
  assert status["big"] is hgi.Status.EXPLODING
  # Statuses and thresholds have distinct names; plots and the ranking read health's.
  assert isinstance(health.EXPLODING_NORM, float) and health.Status.EXPLODING == "exploding"
  assert set(plots.COLOURS) == set(health.Status)
  assert exploding.status(1e3, 1.0) is health.Rank.EXPLODING
  assert health.norm_status(float("nan")) is health.Status.NONFINITE
  assert health.norm_status(1e-9) is health.Status.VANISHING


def test_health_imports_nothing_above_it():
  # health is the bottom of the inspection package: monitor -> plots -> health.
  import ast
  import pathlib
  from handgrad._src.inspect import health, plots
  for mod, banned in ((health, ("monitor", "plots", "exploding")), (plots, ("monitor",))):
    tree = ast.parse(pathlib.Path(mod.__file__).read_text())
    names = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [n for n in names if n and any(n.endswith("." + b) for b in banned)], names


def test_fused_stats_match_two_pass_references():
  key = jax.random.key(3)
  cases = {"normal": jax.random.normal(key, (300, 70)),
           "offset": 1e3 + jax.random.normal(key, (5000,)),  # large mean: shift matters
           "outlier_first": jnp.zeros(50_000).at[0].set(1e6),
           "constant": jnp.full((4097,), 0.1),
           "tiny": jnp.array([2.0, -1.0]),
           "bf16": jax.random.normal(key, (64, 33)).astype(jnp.bfloat16)}
  for name, g in cases.items():
    for fn in (hgi.gradient_stats, jax.jit(hgi.gradient_stats)):
      s = fn({"g": g})["g"]
      x = np.asarray(g, np.float64)
      np.testing.assert_allclose(s.mean, x.mean(), rtol=1e-5, atol=1e-6, err_msg=name)
      np.testing.assert_allclose(s.std, x.std(ddof=1), rtol=1e-4, atol=1e-6, err_msg=name)
      np.testing.assert_allclose(s.max_abs, np.abs(x).max(), rtol=1e-6, err_msg=name)
      np.testing.assert_allclose(s.norm, np.sqrt((x * x).sum()), rtol=1e-5, err_msg=name)
      assert float(s.finite_fraction) == 1.0


def test_one_leaf_needing_the_careful_branch_leaves_the_others_exact():
  # One lax.cond serves the whole tree: a leaf with a NaN (counted finite fraction) or
  # a large mean (two-pass variance) sends every leaf through the careful branch.
  key = jax.random.key(4)
  normal = jax.random.normal(key, (300, 70))
  for odd in (jnp.array([1.0, jnp.nan, 3.0]), 1e3 + jax.random.normal(key, (5000,))):
    both = jax.jit(hgi.gradient_stats)({"normal": normal, "odd": odd})
    alone = jax.jit(hgi.gradient_stats)({"normal": normal})
    x = np.asarray(normal, np.float64)
    s = both["normal"]
    np.testing.assert_allclose([s.mean, s.std, s.max_abs, s.norm],
                               [x.mean(), x.std(ddof=1), np.abs(x).max(),
                                np.sqrt((x * x).sum())], rtol=1e-5, atol=1e-6)
    assert float(s.finite_fraction) == 1.0
    np.testing.assert_allclose(np.array(both["normal"]), np.array(alone["normal"]),
                               rtol=1e-6)
    y = np.asarray(odd, np.float64)
    np.testing.assert_allclose(both["odd"].finite_fraction, np.isfinite(y).mean())
    if np.isfinite(y).all():
      np.testing.assert_allclose(both["odd"].std, y.std(ddof=1), rtol=1e-4)


def test_nan_in_a_long_gradient_shows_in_max_abs_and_finite_fraction():
  g = jnp.ones(100_000).at[3].set(jnp.nan).at[7].set(-jnp.inf)
  for fn in (hgi.gradient_stats, jax.jit(hgi.gradient_stats)):
    s = fn({"g": g})["g"]
    assert np.isnan(float(s.max_abs)) and np.isnan(float(s.norm))
    np.testing.assert_allclose(s.finite_fraction, 1 - 2 / 100_000, rtol=1e-7)
  s = hgi.gradient_stats({"g": jnp.ones(1000).at[5].set(jnp.inf)})["g"]
  assert float(s.max_abs) == np.inf and float(s.norm) == np.inf
  np.testing.assert_allclose(s.finite_fraction, 0.999, rtol=1e-7)


def test_gradient_stats_every_runs_on_monitored_steps_only():
  from handgrad._src.inspect.monitor import gradient_stats_every
  grads = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
  f = jax.jit(gradient_stats_every, static_argnums=2)
  want = hgi.gradient_stats(grads)
  for step in range(4):
    got = f(grads, jnp.int32(step), 2)
    if step % 2 == 0:
      chex.assert_trees_all_close(got, want)
    else:
      assert all(np.isnan(float(v)) for v in jax.tree.leaves(got))
  chex.assert_trees_all_close(gradient_stats_every(grads, 5, 1), want)
  with pytest.raises(ValueError, match="every >= 1"):
    gradient_stats_every(grads, 0, 0)


def test_every_k_steps_alternates_two_compiled_steps():
  from handgrad._src.inspect.monitor import EveryKSteps
  calls = []
  plain = lambda s, x: (calls.append("p"), s + x)[1]
  monitored = lambda s, x: (calls.append("m"), s + x)[1]
  step = EveryKSteps(plain, monitored, 3)
  state = 0
  flags = []
  for _ in range(7):  # steps 1..7: 3 and 6 are monitored
    state = step(state, 1)
    flags.append(step.last_monitored)
  assert state == 7 and "".join(calls) == "ppmppmp" and flags[2] and not flags[0]
  resumed = EveryKSteps(plain, monitored, 3, start=4)  # steps 5, 6, 7
  calls.clear()
  resumed(0, 1), resumed(0, 1), resumed(0, 1)
  assert "".join(calls) == "pmp"
  with pytest.raises(ValueError, match="every >= 1"):
    EveryKSteps(plain, monitored, 0)


def test_every_k_steps_reads_the_count_from_the_state_only_when_it_changed():
  from handgrad._src.inspect.monitor import EveryKSteps
  reads = []

  class Count:  # a step count that records when its value is read on the host
    def __init__(self, n):
      self.n = n

    def __array__(self, dtype=None, copy=None):
      reads.append(self.n)
      return np.asarray(self.n, dtype)

  calls = []

  def make(tag):
    def step(state, x):
      calls.append(tag)
      return Count(state.n + 1), x
    return step

  step = EveryKSteps(make("p"), make("m"), 2, steps_done=lambda s: s)
  state = Count(0)
  for _ in range(4):
    state, _ = step(state, None)
  assert "".join(calls) == "pmpm" and reads == [0]  # read once, then counted on the host
  step(Count(6), None)  # another state (e.g. resumed): step 7, read from it
  assert calls[-1] == "p" and reads == [0, 6]

  # Under an outer jit the count is traced: no host choice, the traced step or an error.
  plain, monitored = make("p"), make("m")
  fallback = lambda s, x: ("traced", x)  # noqa: E731
  chooser = EveryKSteps(plain, monitored, 2, steps_done=lambda s: s)
  with pytest.raises(ValueError, match="the state's step count is traced"):
    jax.jit(lambda n: chooser(n, None)[0])(jnp.int32(0))
  chooser = EveryKSteps(plain, monitored, 2, steps_done=lambda s: s, traced=fallback)
  out = []
  jax.jit(lambda n: out.append(chooser(n, 5)) or n)(jnp.int32(0))
  assert out == [("traced", 5)] and not chooser.last_monitored
