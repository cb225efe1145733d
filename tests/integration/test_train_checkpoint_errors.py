"""A full disk while saving a checkpoint and a hostile pickle in a checkpoint's optimiser file are
user errors: `tunesmith train` exits 2 with a message saying what happened, no traceback."""

from __future__ import annotations

import os

import pytest
import torch

from tunesmith.cli import main


def _train(capsys, cfg, *extra: str) -> tuple[int, str]:
    args = [f"model={cfg.model.path}", f"data={cfg.data.path[0]}", f"output_dir={cfg.output_dir}",
            "train.max_steps=4", "train.save_every=2", "train.micro_batch_size=4", "train.max_seq_len=256",
            "lora.r=4"]
    with pytest.raises(SystemExit) as info:
        main(["train", *[a for s in args for a in ("--set", s)], *extra])
    return info.value.code or 0, capsys.readouterr().err


def test_a_full_disk_during_a_checkpoint_save_names_the_path_and_keeps_the_last_checkpoint(
        make_config, capsys, monkeypatch):
    cfg = make_config()
    real_save = torch.save
    calls = []

    def save_to_a_full_disk(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) > 1:
            # What torch raised when its writer came up short on a full device (measured by saving
            # to /dev/full; it does not fail reliably there, so the failure is replayed here).
            with open(f, "wb") as fh:
                fh.write(b"PK\x03\x04 partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_to_a_full_disk)
    code, err = _train(capsys, cfg)
    checkpoints = cfg.output_dir / "checkpoints"
    assert code == 2 and "Traceback" not in err, err
    assert f"the disk holding {checkpoints} is full" in err
    assert f"{checkpoints / 'step-0000002'}, is intact" in err
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-0000002"]  # the partial one is gone


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_whose_optimizer_file_is_a_hostile_pickle_is_refused(make_config, capsys, tmp_path):
    cfg = make_config()
    code, err = _train(capsys, cfg, "--set", "train.max_steps=2")
    assert code == 0, err
    optimizer_file = cfg.output_dir / "checkpoints" / "step-0000002" / "optimizer.pt"
    hostile = _RunsCode()
    hostile.marker = tmp_path / "code-ran"
    torch.save({"state": hostile, "param_groups": []}, optimizer_file)
    (cfg.output_dir / "adapter").rename(cfg.output_dir / "adapter-done")  # let the run be resumed
    code, err = _train(capsys, cfg, "--resume", "latest")
    assert code == 2 and "Traceback" not in err, err
    assert f"{optimizer_file} is refused" in err and "weights_only=True" in err
    assert "weights_only=False" not in err  # never advise the unsafe way out
    assert not hostile.marker.exists()
