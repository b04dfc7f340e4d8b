"""The README's Python example runs and says what the README says it says."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(capsys):
  text = README.read_text()
  blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
  assert blocks, "README has no python example"
  namespace = {}
  exec(compile(blocks[0], "README.md", "exec"), namespace)
  out = capsys.readouterr().out.splitlines()
  assert out[0] == "8.0 4.0 12.0"
  assert out[1].replace(" ", "") in ("[-6.-3.3.6.]",), out[1]
  assert "ok" in out[2]


def test_readme_commands_exist_in_makefile():
  makefile = (README.parent / "Makefile").read_text()
  for target in re.findall(r"^make (\w+)", README.read_text(), flags=re.M):
    assert re.search(rf"^{target}:", makefile, flags=re.M), target
  ci = (README.parent / ".ci" / "run").read_text()
  assert "make test" in ci
