"""A damaged model folder is one message naming the file, from load_model and from `edgead eval`;
torch's advice to retry with weights_only=False never reaches the user."""

from __future__ import annotations

import io
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from edgead.cli import main
from edgead.errors import EdgeADError
from edgead.model.artifact import load_model
from edgead.model.weights import read_torch_file


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _reshaped(model_dir: Path) -> bytes:
    state = torch.load(model_dir / "students.pt", weights_only=True)
    key = next(k for k, v in state.items() if v.ndim == 4)
    state[key] = torch.zeros(1, 1, 1, 1)
    return _saved(state)


def _students(good: Path) -> dict:
    """What to write into students.pt, and the words the message must hold."""
    return {
        "pickled objects": (_saved({"w": torch.ones(1), "obj": os.environ.__class__}),
                            "holds a Python object (os._Environ)"),
        "plain pickle": (pickle.dumps({"a": {1, 2}}), "not a PyTorch weights file"),
        "text": (b"hello\n", "not a PyTorch weights file"),
        "random bytes": (os.urandom(3000), "not a PyTorch weights file"),
        "empty": (b"", "not a PyTorch weights file"),
        "truncated": ((good / "students.pt").read_bytes()[:50_000], "truncated or corrupt"),
        "a list": (_saved([torch.ones(1)]), "not a state_dict of tensors"),
        "other shapes": (_reshaped(good), "do not fit its config"),
    }


CONFIGS = {
    "bad YAML": (b"input: {height: 64\npairs: [\n", "is not valid YAML"),
    "not text": (bytes(range(128, 256)) * 4, "cannot read model config"),
    "a list": (b"- 1\n- 2\n", "is not one edgead wrote: 'config' must be a mapping, got list"),
    "bad value": (None, "is not one edgead wrote: 'train.lr' has a bad value -1.0"),
}


@pytest.fixture()
def broken(tmp_path, tiny_model):
    def make(file: str, content: bytes | None) -> Path:
        out = tmp_path / "model"
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(tiny_model, out)
        if content is None:                 # an edited value
            text = (out / "config.yaml").read_text()
            (out / "config.yaml").write_text(text.replace("lr: 0.001", "lr: -1"))
        else:
            (out / file).write_bytes(content)
        return out
    return make


def _assert_one_message(err: EdgeADError, path: Path, needle: str) -> None:
    text = f"{err.message}\n{err.hint}"
    assert str(path) in err.message and needle in err.message, err.message
    assert "weights_only" not in text and "Traceback" not in text and err.hint


def test_corrupt_students_are_one_message_each(tiny_model, broken):
    for name, (content, needle) in _students(tiny_model).items():
        model_dir = broken("students.pt", content)
        with pytest.raises(EdgeADError) as err:
            load_model(model_dir)
        _assert_one_message(err.value, model_dir, needle)


def test_corrupt_config_is_one_message_each(broken):
    for name, (content, needle) in CONFIGS.items():
        model_dir = broken("config.yaml", content)
        with pytest.raises(EdgeADError) as err:
            load_model(model_dir)
        _assert_one_message(err.value, model_dir / "config.yaml", needle)


def test_missing_or_broken_metadata_and_weights(broken):
    model_dir = broken("metadata.json", b"[1, 2]")
    with pytest.raises(EdgeADError, match="is not a JSON object"):
        load_model(model_dir)
    (model_dir / "metadata.json").write_text("{not json")
    with pytest.raises(EdgeADError, match="missing or unreadable"):
        load_model(model_dir)
    model_dir = broken("metadata.json", b"{}")
    (model_dir / "students.pt").unlink()
    with pytest.raises(EdgeADError, match="students.pt is missing"):
        load_model(model_dir)


def test_torch_advice_never_passes_through(tmp_path, recwarn):
    f = tmp_path / "w.pt"
    f.write_bytes(_saved({"obj": os.environ.__class__}))
    with pytest.raises(EdgeADError) as err:
        read_torch_file(f, "weights", "retrain")
    assert "weights_only" not in str(err.value) and err.value.__cause__ is None and err.value.__suppress_context__
    assert not [w for w in recwarn if "torch" in str(w.filename)]


@pytest.mark.parametrize("case", ["students: pickled objects", "students: truncated", "config: bad YAML",
                                  "config: bad value"])
def test_eval_on_a_damaged_model_is_exit_2_and_one_message(case, tiny_model, tiny_product, broken, tmp_path, capsys):
    kind, name = case.split(": ")
    content, needle = (_students(tiny_model) if kind == "students" else CONFIGS)[name]
    model_dir = broken("students.pt" if kind == "students" else "config.yaml", content)
    code = main(["eval", "--model", str(model_dir), "--data", str(tiny_product), "--out", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert code == 2 and needle in err
    assert "Traceback" not in err and "weights_only" not in err and "Warning" not in err
    assert [line.split(":")[0] for line in err.splitlines()] == ["edgead eval", "  hint"]
    assert not (tmp_path / "ev").exists()
