"""shard_map, pmap and vmap programs with collectives: handgrad.grad against jax.grad.

Run by test_sharded_collectives.py in a subprocess on 8 CPU devices.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import handgrad as hg
from _cases import compare, main

N = 8
jax.config.update("jax_enable_x64", True)  # float64: reduction-order noise stays ~1e-15


def _rand(key, *shape):
  return jax.random.normal(jax.random.key(key), shape, dtype=jnp.float64)


def _both(f, *args, argnums=0):
  hand = jax.jit(hg.grad(f, argnums=argnums))(*args)
  ref = jax.jit(jax.grad(f, argnums=argnums))(*args)
  return compare(hand, ref)


def _mesh(*names, shape=None, explicit=False):
  kind = AxisType.Explicit if explicit else AxisType.Auto
  shape = shape or (N,)
  return jax.make_mesh(shape, names, axis_types=(kind,) * len(names))


# --- data parallel -------------------------------------------------------------------

def _mlp_loss(params, x, y):
  h = jnp.tanh(x @ params["W1"] + params["b1"])
  logits = h @ params["W2"]
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def _params():
  return {"W1": _rand(0, 6, 16), "b1": _rand(1, 16), "W2": _rand(2, 16, 5)}


def _data_parallel(check_vma):
  mesh = _mesh("data")
  x, y = _rand(3, 32, 6), jax.random.randint(jax.random.key(4), (32,), 0, 5)

  def loss(params, x, y):
    body = lambda p, x, y: lax.pmean(_mlp_loss(p, x, y), "data")
    return jax.shard_map(body, mesh=mesh, in_specs=(P(), P("data"), P("data")),
                         out_specs=P(), check_vma=check_vma)(params, x, y)
  return _both(loss, _params(), x, y)


def data_parallel_pmean():
  return _data_parallel(True)


def data_parallel_pmean_unchecked():
  return _data_parallel(False)


def data_parallel_explicit_mesh():
  mesh = _mesh("data", explicit=True)
  with jax.set_mesh(mesh):
    x = jax.device_put(_rand(3, 32, 6), NamedSharding(mesh, P("data")))
    y = jax.device_put(jax.random.randint(jax.random.key(4), (32,), 0, 5),
                       NamedSharding(mesh, P("data")))

    def loss(params, x, y):
      body = lambda p, x, y: lax.pmean(_mlp_loss(p, x, y), "data")
      return jax.shard_map(body, in_specs=(P(), P("data"), P("data")), out_specs=P())(
          params, x, y)
    return _both(loss, _params(), x, y)


# --- tensor parallel: column-parallel then row-parallel MLP, one psum ---------------------

def tensor_parallel_mlp():
  mesh = _mesh("model")
  x, w1, w2 = _rand(5, 4, 6), _rand(6, 6, 16), _rand(7, 16, 6)

  def loss(w1, w2, x):
    def body(w1, w2, x):
      h = jax.nn.gelu(x @ w1)          # [B, 16/8]: columns of w1 on each member
      return lax.psum(h @ w2, "model")  # rows of w2: partial sums, one psum
    y = jax.shard_map(body, mesh=mesh, in_specs=(P(None, "model"), P("model", None), P()),
                      out_specs=P())(w1, w2, x)
    return jnp.sum(jnp.sin(y))
  return _both(loss, w1, w2, x, argnums=(0, 1, 2))


# --- a ring: ppermute in a loop -----------------------------------------------------------

def ring_ppermute():
  mesh = _mesh("ring")
  x, w = _rand(8, N * 3, 4), _rand(9, 4, 4)

  def loss(w, x):
    def body(w, x):
      def step(carry, _):
        acc, block = carry
        acc = acc + jnp.tanh(block @ w)
        block = lax.ppermute(block, "ring", [(i, (i + 1) % N) for i in range(N)])
        return (acc, block), None
      (acc, _), _ = lax.scan(step, (jnp.zeros_like(x), x), None, length=N)
      return acc
    out = jax.shard_map(body, mesh=mesh, in_specs=(P(), P("ring")), out_specs=P("ring"))(w, x)
    return jnp.sum(out ** 2)
  return _both(loss, w, x, argnums=(0, 1))


def ppermute_partial():
  # Only some members send: the others receive zeros (and send no blame back).
  mesh = _mesh("i")
  x = _rand(10, N, 3)

  def loss(x):
    body = lambda x: lax.ppermute(jnp.sin(x), "i", [(0, 3), (3, 5), (5, 0)]) * x
    return jnp.sum(jax.shard_map(body, mesh=mesh, in_specs=P("i"), out_specs=P("i"))(x) ** 2)
  return _both(loss, x)


# --- sequence parallel attention with all_gather ----------------------------------------------

def sequence_parallel_attention():
  mesh = _mesh("seq")
  q, k, v = _rand(11, 2, N * 2, 4), _rand(12, 2, N * 2, 4), _rand(13, 2, N * 2, 4)

  def loss(q, k, v):
    def body(q, k, v):
      k_all = lax.all_gather(k, "seq", axis=1, tiled=True)  # every member sees all keys
      v_all = lax.all_gather(v, "seq", axis=1, tiled=True)
      s = jnp.einsum("bqd,bkd->bqk", q, k_all) / 2.0
      return jnp.einsum("bqk,bkd->bqd", jax.nn.softmax(s, axis=-1), v_all)
    spec = P(None, "seq")
    out = jax.shard_map(body, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec)(q, k, v)
    return jnp.sum(jnp.tanh(out))
  return _both(loss, q, k, v, argnums=(0, 1, 2))


def all_gather_stacked_and_psum_scatter():
  mesh = _mesh("d")
  x = _rand(14, N * 2, 8 * 2)

  def loss(x):
    def body(x):
      g = lax.all_gather(jnp.sin(x), "d", axis=0, tiled=False)      # [8, 2, 16]
      r = lax.psum_scatter(g * g, "d", scatter_dimension=2, tiled=True)  # [8, 2, 2]
      return r
    out = jax.shard_map(body, mesh=mesh, in_specs=P("d"), out_specs=P(None, None, "d"))(x)
    return jnp.sum(out * jnp.arange(out.size, dtype=out.dtype).reshape(out.shape))
  return _both(loss, x)


def psum_scatter_untiled():
  mesh = _mesh("d")
  x = _rand(15, N * N, 3)

  def loss(x):
    body = lambda x: lax.psum_scatter(jnp.cos(x), "d", scatter_dimension=0)  # [8,3]->[3]
    out = jax.shard_map(body, mesh=mesh, in_specs=P("d"), out_specs=P("d"))(x)
    return jnp.sum(out ** 3)
  return _both(loss, x)


def all_to_all_swap():
  mesh = _mesh("d")
  x = _rand(16, N * 2, N * 3)

  def loss(x):
    body = lambda x: lax.all_to_all(jnp.sin(x), "d", split_axis=1, concat_axis=0, tiled=True)
    out = jax.shard_map(body, mesh=mesh, in_specs=P("d"), out_specs=P(None, "d"))(x)
    return jnp.sum(out * jnp.arange(out.size, dtype=out.dtype).reshape(out.shape))
  return _both(loss, x)


def all_gather_invariant_tiled():
  # all_gather_invariant (varying -> invariant) transposes to this member's block.
  from jax._src.lax import parallel
  all_gather_invariant = (getattr(parallel, "all_gather_invariant", None)
                          or getattr(parallel, "_all_gather_invariant"))
  mesh = _mesh("d")
  x = _rand(17, N * 2, 3)

  def loss(x):
    def body(x):
      g = all_gather_invariant(jnp.sin(x), "d", axis=0, tiled=True)  # [16, 3], invariant
      return jnp.sum(g * jnp.arange(g.size, dtype=g.dtype).reshape(g.shape)) * x
    out = jax.shard_map(body, mesh=mesh, in_specs=P("d"), out_specs=P("d"))(x)
    return jnp.sum(out)
  return _both(loss, x)


def pcast_to_varying():
  mesh = _mesh("d")
  w, x = _rand(30, 3), _rand(31, N, 3)

  def loss(w, x):
    body = lambda w, x: lax.psum(jnp.sum(lax.pcast(jnp.exp(w), "d", to="varying") * x), "d")
    return jax.shard_map(body, mesh=mesh, in_specs=(P(), P("d")), out_specs=P())(w, x)
  return _both(loss, w, x, argnums=(0, 1))


def axis_index_scaling():
  mesh = _mesh("d")
  x = _rand(18, N, 3)

  def loss(x):
    body = lambda x: jnp.sin(x) * (lax.axis_index("d") + 1).astype(x.dtype)
    out = jax.shard_map(body, mesh=mesh, in_specs=P("d"), out_specs=P("d"))(x)
    return jnp.sum(out ** 2)
  return _both(loss, x)


def two_axis_mesh_psum_one_axis():
  # psum over one axis of a 4x2 mesh; the other axis stays manual and varying.
  mesh = _mesh("a", "b", shape=(4, 2))
  x, w = _rand(19, 8, 6), _rand(20, 6, 4)

  def loss(w, x):
    def body(w, x):
      return lax.psum(jnp.tanh(x @ w), "a")
    out = jax.shard_map(body, mesh=mesh, in_specs=(P(None, "b"), P("a")),
                        out_specs=P(None, "b"))(w, x)
    return jnp.sum(out ** 2)
  return _both(loss, w, x, argnums=(0, 1))


def nested_partial_manual():
  # shard_map over one axis only (axis_names={'a'}); 'b' stays automatic.
  mesh = _mesh("a", "b", shape=(4, 2))
  x = _rand(21, 8, 6)

  def loss(x):
    body = lambda x: lax.pmean(jnp.sin(x) ** 2, "a")
    out = jax.shard_map(body, mesh=mesh, in_specs=P("a"), out_specs=P(), axis_names={"a"})(x)
    return jnp.sum(out)
  return _both(loss, x)


def shard_map_unused_output_and_integer_input():
  # Two outputs, one unused (no cotangent reaches it); an integer input; an input that
  # is not differentiated.
  mesh = _mesh("d")
  x, w, c = _rand(36, N * 2, 3), _rand(37, 3), _rand(38, N * 2, 3)
  idx = jnp.arange(N * 2, dtype=jnp.int32)

  def loss(w, x):
    def body(w, x, c, i):
      h = jnp.sin(x * w) * i[:, None].astype(x.dtype)
      return lax.psum(jnp.sum(h * c), "d"), jnp.cos(x)
    used, unused = jax.shard_map(body, mesh=mesh, in_specs=(P(), P("d"), P("d"), P("d")),
                                 out_specs=(P(), P("d")))(w, x, c, idx)
    return used
  return _both(loss, w, x, argnums=(0, 1))


# --- pmap (traced to shard_map with check_vma=False) ------------------------------------------

def pmap_psum():
  w, x = _rand(22, 6, 4), _rand(23, N, 3, 6)

  def loss(w, x):
    body = lambda w, x: lax.psum(jnp.sum(jnp.tanh(x @ w)), "batch")
    return jnp.sum(jax.pmap(body, axis_name="batch", in_axes=(None, 0))(w, x))
  return _both(loss, w, x, argnums=(0, 1))


def pmap_pmean_ppermute_all_gather():
  w, x = _rand(24, 6, 4), _rand(25, N, 3, 6)

  def loss(w, x):
    def body(w, x):
      h = jnp.tanh(x @ w)
      h = lax.ppermute(h, "batch", [(i, (i + 1) % N) for i in range(N)])
      g = lax.all_gather(h, "batch")
      return lax.pmean(jnp.sum(g ** 2) + jnp.sum(h), "batch")
    return jnp.sum(jax.pmap(body, axis_name="batch", in_axes=(None, 0))(w, x))
  return _both(loss, w, x, argnums=(0, 1))


def pmap_flax_style_train_step():
  # The ImageNet example's shape: per-device grads, then pmean of the gradients; here
  # the whole step (loss and the pmean) is differentiated once more from outside.
  params = _params()
  x = _rand(26, N, 4, 6)
  y = jax.random.randint(jax.random.key(27), (N, 4), 0, 5)

  def loss(params, x, y):
    body = lambda p, x, y: lax.pmean(_mlp_loss(p, x, y), axis_name="batch")
    return jnp.mean(jax.pmap(body, axis_name="batch", in_axes=(None, 0, 0))(params, x, y))
  return _both(loss, params, x, y)


def pmap_grad_inside_then_pmean():
  # The flax ImageNet pattern: each device differentiates its own loss inside pmap and
  # the gradients are averaged with pmean; here the loss itself also calls psum.
  params = _params()
  x = _rand(32, N, 4, 6)
  y = jax.random.randint(jax.random.key(33), (N, 4), 0, 5)

  def step(grad):
    def body(p, x, y):
      def loss(p):
        local = _mlp_loss(p, x, y)
        return local + 0.1 * lax.psum(jnp.sum(p["W1"] ** 2), "batch")
      return lax.pmean(grad(loss)(p), axis_name="batch")
    return jax.pmap(body, axis_name="batch", in_axes=(None, 0, 0))
  return compare(step(hg.grad)(params, x, y), step(jax.grad)(params, x, y))


def shard_map_grad_inside():
  mesh = _mesh("data")
  x, y = _rand(34, 32, 6), jax.random.randint(jax.random.key(35), (32,), 0, 5)

  def step(grad):
    def body(p, x, y):
      return lax.pmean(grad(_mlp_loss)(p, x, y), "data")
    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P("data"), P("data")),
                                 out_specs=P()))
  return compare(step(hg.grad)(_params(), x, y), step(jax.grad)(_params(), x, y))


# --- vmap with axis_name -----------------------------------------------------------------------

def vmap_collectives_inside_grad():
  # hg.grad inside vmap: the collective rules bind psum/all_gather/ppermute under vmap.
  x = _rand(28, N, 5)

  def f(x):
    h = jnp.sin(x)
    s = lax.psum(h, "i")
    g = lax.all_gather(h, "i")
    p = lax.ppermute(h, "i", [(j, (j + 3) % N) for j in range(N)])
    return jnp.sum(s * h) + jnp.sum(g ** 2) + jnp.sum(p * x) + lax.pmean(jnp.sum(h), "i")
  hand = jax.jit(jax.vmap(hg.grad(f), axis_name="i"))(x)
  ref = jax.jit(jax.vmap(jax.grad(f), axis_name="i"))(x)
  return compare(hand, ref)


def vmap_collectives_outside_grad():
  # vmap applied first: its batching rules replace the collectives before handgrad sees
  # the jaxpr (a reduce_sum for psum, for instance).
  x = _rand(29, N, 5)

  def loss(x):
    f = lambda x: lax.pmean(jnp.sin(x) ** 2, "i") * x + lax.all_gather(x, "i")[3]
    return jnp.sum(jax.vmap(f, axis_name="i")(x) ** 2)
  return _both(loss, x)


CASES = {name: fn for name, fn in dict(globals()).items()
         if callable(fn) and not name.startswith("_") and getattr(fn, "__module__", "") == __name__}

if __name__ == "__main__":
  main(CASES)
