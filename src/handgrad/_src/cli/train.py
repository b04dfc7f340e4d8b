"""``handgrad train``: train the seed's MLP (or a small transformer) on MNIST.

With no arguments it trains the seed's ``MLP([784, 256, 128, 10])`` with ReLU on the
5,000 MNIST digits that ship with handgrad (4,000 train / 1,000 test), with
hand-written gradients (``--backend hand``), Adam at 1e-3, batches of 32, for 15 epochs,
and writes ``runs/mnist_mlp/{metrics.jsonl, curves.png, config.json, checkpoints/}``.
The arguments are defined in groups by ``add_parser``, one ``add_argument`` each.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import pathlib
import sys
import time
from typing import Callable

from handgrad._src.cli.errors import CommandError

DEFAULT_EPOCHS = {"mlp": 15, "transformer": 4, "cnn": 8}
MLP_DIMS = (784, 256, 128, 10)
TRANSFORMER_HEADS = 4
BACKEND_NAMES = {"hand": "hand-written VJP rules", "jax": "jax.grad"}
DESCRIPTION = """\
Train the seed's MLP (or a small transformer) on MNIST.

With no arguments: the seed's MLP [784, 256, 128, 10] with ReLU, on the 5,000 MNIST
digits that ship with handgrad (4,000 train / 1,000 test), hand-written gradients, Adam at
1e-3, batches of 32, 15 epochs; writes runs/mnist_mlp/metrics.jsonl, curves.png and
checkpoints/ (orbax).  --resume continues from the newest intact checkpoint and ends
with the parameters an uninterrupted run would have.

A directory that already holds a run is never replaced silently: without --resume (continue
it) or --overwrite (delete it and start afresh) an explicit --out DIR is refused and left
as it is, and the default directory gives way to the next free numbered one
(runs/mnist_mlp-2, ...).
One run at a time per directory (a lock file names the running process).  A step with a
non-finite loss or gradient is skipped and reported; --max-nonfinite such steps in a row
stop the run (--on-nonfinite stop: the first one does), and --debug-nans names the
equation and source line that made it (DIR/nonfinite.json).  SIGTERM or Ctrl-C stop after the current step with a checkpoint."""

MAX_SEED = 2 ** 63 - 1


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
  return value


def _positive_float(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
  if not value > 0 or value == float("inf"):
    raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text}")
  return value


def _seed(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
  if not 0 <= value <= MAX_SEED:
    raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**63 - 1], got {value}")
  return value


def _one_line_error(prog: str):
  def error(message: str):
    print(f"{prog}: error: {message} (see '{prog} --help')", file=sys.stderr)
    sys.exit(2)
  return error


def add_parser(sub) -> None:
  p = sub.add_parser(
      "train", help="train the seed's MLP on MNIST with hand-written gradients",
      description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.error = _one_line_error(p.prog)
  g = p.add_argument_group("model and data")
  g.add_argument("--model", choices=["mlp", "transformer", "cnn"], default="mlp",
                 help="mlp: the seed's [784, 256, 128, 10] ReLU MLP (default); "
                      "transformer: handgrad.nn.transformer_classifier over image rows; "
                      "cnn: handgrad.nn.cnn (two conv + max-pool blocks, dense head)")
  g.add_argument("--data-dir", metavar="DIR", default=None,
                 help="directory with the full MNIST IDX files (train-images-idx3-ubyte"
                      "[.gz], ...); default: the 5,000 digits that ship with handgrad")
  g.add_argument("--subset", type=_positive_int, metavar="N", default=None,
                 help="train on the first N training digits only")
  g = p.add_argument_group("optimization")
  g.add_argument("--epochs", type=_positive_int, default=None,
                 help=f"epochs (default: {DEFAULT_EPOCHS['mlp']} for mlp, "
                      f"{DEFAULT_EPOCHS['transformer']} for transformer, "
                      f"{DEFAULT_EPOCHS['cnn']} for cnn)")
  g.add_argument("--batch-size", type=_positive_int, default=32,
                 help="samples per optimizer step (default: 32)")
  g.add_argument("--optimizer", choices=["sgd", "momentum", "adam", "adamw"],
                 default="adam", help="optax optimizer (default: adam)")
  g.add_argument("--lr", type=_positive_float, default=1e-3,
                 help="learning rate (default: 1e-3)")
  g.add_argument("--backend", choices=["hand", "jax"], default="hand",
                 help="gradients by the hand-written rules (default) or by jax.grad")
  g.add_argument("--clip-norm", type=_positive_float, default=None, metavar="C",
                 help="clip the gradient's global norm to C (optax.clip_by_global_norm)")
  g.add_argument("--clip-value", type=_positive_float, default=None, metavar="V",
                 help="clip every gradient entry to [-V, V] (optax.clip)")
  g.add_argument("--accumulate", type=_positive_int, default=1, metavar="K",
                 help="split each batch into K micro-batches and average their "
                      "gradients (the batch size must be a multiple of K)")
  g.add_argument("--freeze", action="append", default=None, metavar="PREFIX",
                 help="freeze the parameters under PREFIX, e.g. layers/0 (repeatable)")
  g.add_argument("--seed", type=_seed, default=0,
                 help="seed for init and data order, 0 to 2**63 - 1 (default: 0)")
  g.add_argument("--precision", choices=["float32", "bf16", "fp16"], default="float32",
                 help="compute dtype (parameters and logits stay float32); fp16 adds "
                      "dynamic loss scaling")
  g.add_argument("--remat", action="store_true",
                 help="recompute each transformer block's attention and feed-forward in "
                      "the backward pass (jax.checkpoint; --model transformer)")
  g = p.add_argument_group("output")
  g.add_argument("--out", metavar="DIR", default=None,
                 help="output directory (default: runs/mnist_<model>; when that holds a "
                      "run and neither --resume nor --overwrite is given, the first free "
                      "runs/mnist_<model>-2, -3, ...)")
  g.add_argument("--resume", action="store_true",
                 help="continue the run in DIR from its newest intact checkpoint")
  g.add_argument("--overwrite", action="store_true",
                 help="delete the run already in DIR and start afresh (without --resume "
                      "or --overwrite, a DIR holding a run is refused and left intact)")
  g.add_argument("--checkpoint-every", type=_positive_int, default=None, metavar="STEPS",
                 help="also checkpoint every STEPS steps (default: after each epoch)")
  g.add_argument("--max-nonfinite", type=_positive_int, default=3, metavar="K",
                 help="stop after K consecutive steps with a non-finite loss or gradient "
                      "(each is skipped; default: 3)")
  g.add_argument("--on-nonfinite", choices=["stop", "skip"], default="skip",
                 help="at a step with a non-finite loss or gradient (skipped, parameters "
                      "and optimizer state unchanged): stop the run there, keeping the last "
                      "good checkpoint, or skip it and go on (default: skip, up to "
                      "--max-nonfinite in a row)")
  g.add_argument("--debug-nans", action="store_true",
                 help="re-run each non-finite step with handgrad.inspect.find_nonfinite: "
                      "print which equation made the first NaN or inf (forward or backward, "
                      "source line, layer, diagnosis) and append it to DIR/nonfinite.json")
  g.add_argument("--no-progress", action="store_true", help="no progress bar")
  g.add_argument("--monitor", type=_positive_int, default=None, metavar="N",
                 help="record per-parameter gradient statistics on every N-th step (the "
                      "others run the plain step); writes grad_stats.jsonl and "
                      "gradient_flow.png and prints a health check")
  _add_mesh_arguments(p)
  p.set_defaults(run=run)


# --- many devices and many hosts: --mesh, --sharding, jax.distributed ---------------

def _add_mesh_arguments(p) -> None:
  g = p.add_argument_group("many devices and hosts")
  g.add_argument("--mesh", metavar="AXES", default=None,
                 help="train on a device mesh over every device, e.g. data=8 or "
                      "data=4,model=2 (on CPU, set XLA_FLAGS="
                      "--xla_force_host_platform_device_count=N first)")
  g.add_argument("--sharding", choices=["data", "fsdp", "megatron"], default=None,
                 help="with --mesh: data parallel (default; megatron when the mesh has "
                      "a model axis), fsdp (parameters and optimizer state split along "
                      "data), megatron (transformer heads split along model)")
  g.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                 help="run as one of several processes (jax.distributed): process 0 "
                      "listens at HOST:PORT; 'auto' lets JAX find the cluster (SLURM, "
                      "Open MPI, TPU pod slices); also started by JAX_COORDINATOR_ADDRESS. "
                      "Every process is given the same command and the same --out, on a "
                      "filesystem all of them share (each writes its pieces of the "
                      "checkpoints; process 0 the other files)")
  g.add_argument("--num-processes", type=_positive_int, default=None, metavar="N",
                 help="number of processes (with --coordinator)")
  g.add_argument("--process-id", type=int, default=None, metavar="I",
                 help="this process's index in [0, N) (with --coordinator)")


def _distributed(args) -> None:
  """``jax.distributed.initialize`` from the flags (or JAX's environment variables),
  before anything touches a device.  Nothing to do for a single process."""
  import jax

  given = [args.coordinator, args.num_processes, args.process_id]
  env = os.environ.get("JAX_COORDINATOR_ADDRESS")
  if all(v is None for v in given) and not env:
    return
  if args.coordinator == "auto":
    if args.num_processes is not None or args.process_id is not None:
      raise CommandError("--coordinator auto finds the processes itself: drop "
                         "--num-processes and --process-id")
    args.coordinator = None
  elif any(v is None for v in given) and not all(v is None for v in given):
    raise CommandError("--coordinator, --num-processes and --process-id go together "
                       "(or set none and let JAX read its environment)")
  if args.process_id is not None and not 0 <= args.process_id < args.num_processes:
    raise CommandError(f"--process-id {args.process_id} is not in [0, "
                       f"{args.num_processes})")
  if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") is None:
    # CPU devices of several processes talk through gloo (the default on jax 0.10).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(coordinator_address=args.coordinator,
                               num_processes=args.num_processes,
                               process_id=args.process_id,
                               initialization_timeout=120)
  except Exception as e:  # noqa: BLE001 - jax raises RuntimeError/ValueError/XlaRuntimeError
    raise CommandError(f"jax.distributed.initialize failed: "
                       f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
                       ) from None


def _mesh(args):
  """The mesh of ``--mesh`` (``None`` without it), checked against the devices."""
  import math

  import jax

  from handgrad._src import parallel
  from handgrad._src.train import mesh as train_mesh

  if args.mesh is None:
    if args.sharding is not None:
      raise CommandError("--sharding needs --mesh (e.g. --mesh data=8)")
    return None
  try:
    axes = parallel.parse_mesh(args.mesh)
  except ValueError as e:
    raise CommandError(f"--mesh {args.mesh}: {str(e).removeprefix('mesh: ')}") from None
  need, have = math.prod(axes.values()), jax.device_count()
  if need != have:
    platform = jax.devices()[0].platform
    raise CommandError(
        f"--mesh {args.mesh} needs {need} devices, there are {have} ({platform}); on CPU "
        f"set XLA_FLAGS=--xla_force_host_platform_device_count={need} before running")
  if args.sharding is None:
    args.sharding = "megatron" if "model" in axes else "data"
  mesh = train_mesh.make_mesh(axes)
  try:
    train_mesh.check_strategy(mesh, args.sharding)
  except ValueError as e:
    raise CommandError(f"--sharding {args.sharding}: {e}") from None
  if args.batch_size % axes.get("data", 1) or (
      args.batch_size // args.accumulate) % axes.get("data", 1):
    raise CommandError(f"--batch-size {args.batch_size} (per micro-batch "
                       f"{args.batch_size // args.accumulate}) is not a multiple of the "
                       f"mesh's data axis ({axes.get('data', 1)})")
  return mesh


def _mesh_description(args) -> str:
  import jax
  hosts = jax.process_count()
  return (f"{args.mesh}, {args.sharding} sharding, {jax.device_count()} "
          f"{jax.devices()[0].platform} devices"
          + (f" in {hosts} processes (process 0 writes the run's files, all of them "
             f"the checkpoints)" if hosts > 1 else ""))


def _primary() -> bool:
  """Whether this process writes the run's files (process 0 of a jax.distributed job;
  the others train alongside and write only their pieces of the checkpoints)."""
  import jax
  return jax.process_index() == 0


def _out_dir(args) -> pathlib.Path:
  """``--out``, or the default directory; with several processes, process 0 chooses
  it (the next free ``runs/mnist_<model>-N`` is decided once) and tells the others."""
  if args.out is not None:
    return pathlib.Path(args.out)
  from handgrad._src.train import processes
  chosen = str(_default_out(args)) if _primary() else ""
  return pathlib.Path(processes.broadcast_text(chosen))


@dataclasses.dataclass
class _Model:
  name: str
  init: Callable  # key -> params
  apply: Callable  # (params, x [B, 784]) -> logits [B, 10]
  description: str


def _model(name: str, remat: bool = False) -> _Model:
  from handgrad._src.nn.cnn import cnn
  from handgrad._src.nn.mlp import mlp
  from handgrad._src.nn.transformer import transformer_classifier

  if name == "mlp":
    return _Model(name, lambda key: mlp.init(list(MLP_DIMS), key=key), mlp.apply,
                  f"MLP {list(MLP_DIMS)} (ReLU)")
  if name == "cnn":
    return _Model(name, lambda key: cnn.init(key=key), cnn.apply,
                  "CNN conv3x3(16)-pool-conv3x3(32)-pool-dense(10) (ReLU)")
  init = functools.partial(transformer_classifier.init, num_heads=TRANSFORMER_HEADS)
  apply = functools.partial(transformer_classifier.apply, num_heads=TRANSFORMER_HEADS,
                            remat=remat)
  return _Model(name, lambda key: init(key=key), apply,
                f"transformer classifier ({TRANSFORMER_HEADS} heads"
                + (", checkpointed blocks)" if remat else ")"))


def _config(args, data_name: str, n_train: int) -> dict:
  """The settings a resumed run must share with the run it continues."""
  return {"model": args.model, "data": data_name, "train_size": n_train,
          "batch_size": args.batch_size, "optimizer": args.optimizer, "lr": args.lr,
          "backend": args.backend, "clip_norm": args.clip_norm,
          "clip_value": args.clip_value, "accumulate": args.accumulate,
          "freeze": sorted(args.freeze) if args.freeze else None, "seed": args.seed,
          "precision": args.precision, "remat": args.remat}


def _validate(args, n_train: int) -> None:
  if args.resume and args.overwrite:
    raise CommandError("--resume continues the run in --out and --overwrite deletes it: "
                       "choose one")
  if args.batch_size % args.accumulate:
    raise CommandError(f"--batch-size {args.batch_size} is not a multiple of "
                       f"--accumulate {args.accumulate}")
  if args.remat and args.model != "transformer":
    raise CommandError("--remat checkpoints transformer blocks: use it with "
                       "--model transformer")
  if args.batch_size > n_train:
    raise CommandError(f"--batch-size {args.batch_size} is larger than the training set "
                       f"({n_train} digits)")


def _default_out(args) -> pathlib.Path:
  """``runs/mnist_<model>``, or, when it holds a run that this one neither resumes nor
  overwrites, the first ``runs/mnist_<model>-N`` (N = 2, 3, ...) that holds none."""
  from handgrad._src.train.loop import previous_run

  base = pathlib.Path(f"runs/mnist_{args.model}")
  if args.resume or args.overwrite or not base.is_dir() or not previous_run(base):
    return base
  n = 2
  while (candidate := base.with_name(f"{base.name}-{n}")).exists() and (
      not candidate.is_dir() or previous_run(candidate)):
    n += 1
  print(f"handgrad train: {base} holds a previous run; writing this one to {candidate} "
        f"(--resume continues {base}, --overwrite replaces it)", file=sys.stderr)
  return candidate


def _table(rows: list[list[str]], header: list[str]) -> str:
  widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
  line = lambda r: "  ".join(str(c).rjust(w) for c, w in zip(r, widths))  # noqa: E731
  return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _fmt(v, spec: str) -> str:
  return "-" if v is None else format(v, spec)


def _summary(result, args, model: _Model, data_desc: str, epochs: int, out: pathlib.Path,
             wall: float) -> str:
  rows = [[r["epoch"], r["step"], _fmt(r.get("train_loss"), ".4f"),
           _fmt(r.get("train_accuracy"), ".4f"), _fmt(r.get("test_loss"), ".4f"),
           _fmt(r.get("test_accuracy"), ".4f"), _fmt(r.get("time"), ".1f")]
          for r in result.history]
  epoch_table = _table(rows, ["epoch", "step", "train loss", "train acc", "test loss",
                              "test acc", "time s"])
  final = result.final
  pairs = [
      ("model", model.description),
      ("data", data_desc),
      ("backend", f"{args.backend} ({BACKEND_NAMES[args.backend]})"),
      ("optimizer", f"{args.optimizer}, lr {args.lr:g}, batch {args.batch_size}"
                    + (f" = {args.accumulate} x {args.batch_size // args.accumulate}"
                       if args.accumulate > 1 else "")
                    + (f", clip norm {args.clip_norm:g}" if args.clip_norm else "")
                    + (f", clip value {args.clip_value:g}" if args.clip_value else "")),
      ("frozen", ", ".join(args.freeze) if args.freeze else "none"),
      ("epochs / steps", f"{final.get('epoch', 0)} / {final.get('step', 0)}"
                         + (f" (resumed at step {result.start_step})"
                            if result.start_step else "")),
      ("final train loss", _fmt(final.get("train_loss"), ".4f")),
      ("test loss", _fmt(final.get("test_loss"), ".4f")),
      ("test accuracy", _fmt(final.get("test_accuracy"), ".4f")),
      ("wall time", f"{wall:.1f} s (this session, compilation and data loading included)"),
      ("precision", args.precision + (" (dynamic loss scaling)" if args.precision == "fp16"
                                      else "")),
      ("output", f"{out}/ (metrics.jsonl, curves.png, checkpoints/)"),
  ]
  if args.mesh is not None:
    pairs.insert(3, ("mesh", _mesh_description(args)))
  width = max(len(k) for k, _ in pairs)
  return epoch_table + "\n\n" + "\n".join(f"{k:<{width}}  {v}" for k, v in pairs)


def run(args: argparse.Namespace, out_stream=None) -> int:
  t0 = time.perf_counter()
  out_stream = out_stream or sys.stdout
  if args.out is not None and os.path.exists(args.out) and not os.path.isdir(args.out):
    raise CommandError(f"--out {args.out}: exists and is not a directory")
  if args.data_dir is not None and not os.path.isdir(args.data_dir):
    what = "not a directory" if os.path.exists(args.data_dir) else "no such directory"
    raise CommandError(f"--data-dir {args.data_dir}: {what}")

  import jax

  from handgrad._src.data import mnist as hg_data
  from handgrad._src.train import loop
  from handgrad._src.train.checkpoint import quiet_orbax
  from handgrad._src.train.mixed_precision import DynamicLossScale
  from handgrad._src.train.state import TrainState
  from handgrad._src.train.step import classification_eval
  from handgrad._src.train.step import classification_loss
  from handgrad._src.train.step import make_eval_step
  from handgrad._src.train.step import make_train_step
  from handgrad._src.train.transforms import frozen_mask
  from handgrad._src.train.transforms import make_optimizer

  _distributed(args)
  out = _out_dir(args)
  if out.exists() and not out.is_dir():
    raise CommandError(f"--out {out}: exists and is not a directory")
  quiet_orbax()
  train_ds, test_ds = hg_data.load_mnist(args.data_dir)
  if args.subset is not None:
    n = min(args.subset, len(train_ds))
    train_ds = hg_data.Dataset(train_ds.x[:n], train_ds.y[:n], train_ds.num_classes,
                               f"{train_ds.name}[:{n}]")
  _validate(args, len(train_ds))
  epochs = args.epochs if args.epochs is not None else DEFAULT_EPOCHS[args.model]

  mesh = _mesh(args)
  if jax.process_count() > 1 and mesh is None:
    raise CommandError(f"{jax.process_count()} processes need --mesh over all "
                       f"{jax.device_count()} devices (e.g. --mesh data={jax.device_count()})")
  model = _model(args.model, remat=args.remat)
  frozen = list(args.freeze) if args.freeze else None
  if frozen is not None:  # an unknown prefix fails here, naming the parameters
    frozen_mask(jax.eval_shape(model.init, jax.random.key(0)), frozen)
  tx = make_optimizer(args.optimizer, args.lr, clip_norm=args.clip_norm,
                            clip_value=args.clip_value, frozen=frozen)

  loss_scale = DynamicLossScale() if args.precision == "fp16" else None

  @jax.jit
  def initial(seed):
    # One compiled program for the whole initialisation (eager random ops would
    # compile one small program each).
    init_key, data_key, step_key = jax.random.split(jax.random.key(seed), 3)
    state = TrainState.create(model.init(init_key), tx, key=step_key,
                                    loss_scale=loss_scale)
    return state, jax.random.key_data(data_key)

  state, data_key = initial(args.seed)
  data_key = jax.random.wrap_key_data(data_key)
  step = make_train_step(
      classification_loss(model.apply, precision=args.precision), tx,
      backend=args.backend, accumulate=args.accumulate, frozen=frozen,
      loss_scale=loss_scale, monitor=args.monitor is not None,
      monitor_every=args.monitor or 1, mesh=mesh, sharding=args.sharding or "data")
  eval_step = make_eval_step(
      classification_eval(model.apply, precision=args.precision), mesh=mesh)
  monitor = None
  if args.monitor is not None:
    # The step computes the statistics on steps N, 2N, ... only (a second compiled
    # program); fit logs them.
    from handgrad._src.inspect.monitor import GradientMonitor
    monitor = GradientMonitor()
  config = _config(args, train_ds.name, len(train_ds))

  data_desc = (f"{train_ds.name} ({len(train_ds)} train / {len(test_ds)} test digits)")
  # fit validates everything, locks --out, refuses a previous run unless --resume or
  # --overwrite, and writes config.json once the run is accepted.
  try:
    result = loop.fit(
        step, state, train_ds, epochs=epochs, batch_size=args.batch_size, data_key=data_key,
        eval_step=eval_step, eval_ds=test_ds, num_classes=train_ds.num_classes,
        out_dir=out, resume=args.resume, overwrite=args.overwrite,
        checkpoint_every=args.checkpoint_every, max_nonfinite=args.max_nonfinite,
        on_nonfinite=args.on_nonfinite, debug_nans=args.debug_nans, config=config,
        progress=not args.no_progress and _primary(), monitor=monitor,
        plot_title=f"handgrad train: {model.description}, backend {args.backend}",
        mesh=mesh)
  except loop.RunExistsError as e:  # the refusal in the command line's own words
    raise CommandError(e.message("--resume", "--overwrite")) from None
  if not _primary():
    return 0
  monitor_report = _monitor_outputs(monitor, out, args.resume) if monitor is not None else ""
  print(_summary(result, args, model, data_desc, epochs, out, time.perf_counter() - t0)
        + monitor_report, file=out_stream)
  return 0


def _monitor_outputs(monitor, out: pathlib.Path, resume: bool) -> str:
  """Writes the gradient monitor's history and plot; returns its health report.  A
  resumed run keeps the earlier sessions' records of the steps before its own first one
  (the steps after it are the ones this session trained again)."""
  if not monitor.history:
    return "\n\ngradient monitor: no step recorded (fewer steps than --monitor)"
  from handgrad._src.train import loop
  path = out / loop.GRAD_STATS_FILE
  records = [{"step": step_number, "stats": {
      name: {field: float(v) for field, v in s._asdict().items()} for name, s in stats.items()}}
      for step_number, stats in zip(monitor.steps, monitor.history)]
  earlier = [r for r in loop.read_metrics(path) if r.get("step", math.inf) < monitor.steps[0]] \
      if resume else []
  loop.write_records(path, earlier + records)
  png = monitor.plot_gradient_flow(out / "gradient_flow.png",
                                   title=f"Gradient flow at step {monitor.steps[-1]}")
  health = "\n".join(f"  {line}" for line in monitor.check_health())
  return (f"\n\ngradient monitor ({len(monitor.history)} records, last at step "
          f"{monitor.steps[-1]}; {path}, {png}):\n{health}")
