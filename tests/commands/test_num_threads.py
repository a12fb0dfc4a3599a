"""VAL.num_threads / TEST.num_threads: the eval and test commands set the CPU
thread count before any work (0 keeps PyTorch's default)."""
from __future__ import annotations

import pytest
import torch

from mit_semseg.commands import eval as eval_cmd
from mit_semseg.commands import test as test_cmd


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("command, section, target", [
    (eval_cmd, "VAL", "mit_semseg.evaluation.evaluate"),
    (test_cmd, "TEST", "mit_semseg.prediction.run_test")])
def test_commands_apply_num_threads(command, section, target, threads, monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(target, lambda *a, **k: seen.append(torch.get_num_threads()))
    args = ["--cfg", "", "--gpus", "cpu"] + (["--imgs", "x.jpg"] if section == "TEST" else [])
    torch.set_num_threads(2)
    assert command.main([*args, f"{section}.num_threads", "1"]) == 0
    assert seen == [1]
    assert command.main(args) == 0  # 0: left as it is
    assert seen == [1, 1]
    assert command.main([*args, f"{section}.num_threads", "-1"]) == 1
    assert f"{section}.num_threads must be >= 0" in capsys.readouterr().err
